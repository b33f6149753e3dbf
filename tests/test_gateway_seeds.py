"""What a gateway's reference says of Claude, Gemini, Grok and Qwen behind one URL, as its
readers meet it in a run: what is billed, and how the replies are read."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiohttp import web

from batchrunner.pricing import PriceBook, search_requested
from batchrunner.runner import RunSummary, format_summary
from batchrunner.simulator import Simulator, SimulatorConfig
from tests.servers import serve_on_loopback
from tests.test_reply_fields import KEY, job_for, make_csv, results, run
from tests.test_search_costs import estimate, search_job

__all__ = ["KEY"]  # the key the job_env fixture sets

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd

CLAUDE = "claude-opus-4-6"
# The reference's Claude web search example: "Claude models do not support enabling web search
# functionality through the web_search_options parameter, so it can only be implemented through
# tool calls" (their results, sent back as tool messages, are prompt tokens).
CLAUDE_SEARCH = 'web_search_options = { search_context_size = "medium" }'


def test_claudes_web_search_options_ask_for_no_search_billed_per_request() -> None:
    body = {"model": CLAUDE, "web_search_options": {"search_context_size": "medium"}}
    assert search_requested(body) is None
    assert search_requested({**body, "model": "anthropic/claude-sonnet-4-5"}) is None
    # OpenAI's own search, through the same field, is billed per request
    assert search_requested({**body, "model": "gpt-4o"}) == "web_search_options"


@pytest.mark.anyio
async def test_a_budgeted_claude_job_with_web_search_options_is_priced_by_its_tokens(
        tmp_path: Path) -> None:
    """A budgeted Claude job with web_search_options, as the reference's example sends it,
    stopped at its first reply (exit 4, "asked for search billed per request"), every row's
    cost unknown: the gateway bills Claude no fee a request for it. Its rows cost their
    tokens, and a web search a reply reports (Anthropic's server_tool_use) its price per
    search."""
    async with Simulator(SimulatorConfig()) as sim:
        job = search_job(tmp_path, sim.base_url, CLAUDE,
                         texts=["latest AI news", "weather [[sim:web_search]]", "who won"],
                         max_cost_usd=5.0)
        job = replace(job, request=replace(job.request, extra={"web_search_options": {
            "search_context_size": "medium"}}))
        s = await run(job)
    assert s.exit_code == 0 and not s.stopped and s.cost_usd is not None
    df = results(tmp_path)
    assert df["search_requests"].isna().all()
    book = PriceBook()
    price = book.price(CLAUDE)
    assert price is not None and price.web_search
    for key in df.index:
        tokens = book.cost(CLAUDE, prompt_tokens=int(df.loc[key, "prompt_tokens"]),
                           completion_tokens=int(df.loc[key, "completion_tokens"]))
        assert tokens is not None
        searches = 0 if pd.isna(df.loc[key, "search_units"]) else df.loc[key, "search_units"]
        assert df.loc[key, "cost_usd"] == pytest.approx(tokens + searches * price.web_search)
    assert df.loc["r1", "search_units"] == 1
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["cost_complete"] is True


def test_the_estimate_of_claudes_web_search_options_asks_for_no_search_request_price(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = estimate(tmp_path, capsys, CLAUDE, CLAUDE_SEARCH, max_tokens=100)
    assert "search_request" not in out, out
    assert "estimated cost: $" in out and "+ search" not in out, out
    # The web searches a reply may report are priced per search, which no estimate can count
    assert ("warning: 2 rows ask for search (web_search_options): it is billed apart from "
            "tokens, by the sources or searches each reply uses, and is not in this estimate"
            in out), out


# ----------------------------------------------------------------------------------------------
# A gateway that passes on the upstream's own finish reasons and usage (one-api's forks map
# Claude's and Gemini's only in part): each row's text is the reply's "finish_reason", and
# "usage" a JSON usage object to answer with.


async def gateway(tmp_path: Path, texts: list[str], *, stream: bool = False,
                  model: str = CLAUDE, prices: dict[str, Any] | None = None, **over: Any
                  ) -> tuple[RunSummary, pd.DataFrame]:
    """Run a job over ``texts`` against a gateway answering each row as its text says: a
    finish reason, or ``usage {...}``; streamed or not; ``prices``: the job's [prices];
    ``over``: the job's other options."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        said = body["messages"][-1]["content"].removeprefix("Q: ")
        finish, usage = "end_turn", {"prompt_tokens": 10, "completion_tokens": 5,
                                     "total_tokens": 15}
        if said.startswith("usage "):
            usage = json.loads(said.removeprefix("usage "))
        else:
            finish = said
        # Claude's refusal: no words, or some before the classifier stopped it
        content = "" if finish == "refusal" else "An answer."
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish}], "usage": usage})
        chunks = [{"index": 0, "delta": {"role": "assistant", "content": content},
                   "finish_reason": None}, {"index": 0, "delta": {}, "finish_reason": finish}]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for c in chunks:
            await resp.write(b"data: " + json.dumps(
                {"id": "c", "model": body["model"], "choices": [c]}).encode() + b"\n\n")
        await resp.write(b"data: " + json.dumps(
            {"id": "c", "model": body["model"], "choices": [], "usage": usage}).encode()
            + b"\n\ndata: [DONE]\n\n")
        return resp

    runner, port = await serve_on_loopback(handler)
    try:
        inp = make_csv(tmp_path / "in.csv", texts)
        job = job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, model=model,
                      stream=stream or None, **over)
        s = await run(replace(job, prices=prices) if prices else job)
    finally:
        await runner.cleanup()
    return s, results(tmp_path)


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_claudes_refusal_and_geminis_blocks_read_as_the_content_filter(
        tmp_path: Path, stream: bool) -> None:
    """Claude's stop_reason "refusal" (its safety classifier stopped the answer) and Gemini's
    blocked finishReasons, passed on by a gateway, were kept as sent: ok rows with no
    content and no word in the summary or the report, and missed by --rerun-where
    "finish_reason == 'content_filter'". They read as OpenAI's content_filter. Claude's
    "pause_turn" (its server tools ran to their limit before the answer), which OpenAI has no
    word for, is kept as sent: an ok row whose unfinished content was said nowhere."""
    texts = ["end_turn", "refusal", "RECITATION", "PROHIBITED_CONTENT", "SAFETY", "stop",
             "pause_turn"]
    s, df = await gateway(tmp_path, texts, stream=stream)
    assert s.exit_code == 0
    assert df["finish_reason"].tolist() == ["stop", *["content_filter"] * 4, "stop",
                                            "pause_turn"]
    paused = ("1 row paused before its answer (finish_reason=pause_turn: Claude's server "
              "tools, such as web search, ran to their limit): its content is unfinished; to "
              "send it again, rerun with --rerun-where \"finish_reason == 'pause_turn'\"")
    assert pd.isna(df.loc["r1", "content"])
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["by_finish_reason"]["content_filter"] == 4
    assert "4 rows stopped by the content filter" in report["warnings"]
    assert paused in report["warnings"], report["warnings"]
    summary = format_summary(s)
    assert ("  warning: 4 rows stopped by the content filter (finish_reason=content_filter): "
            "their content is cut short or empty\n") in summary, summary
    assert f"  warning: {paused}\n" in summary, summary


@pytest.mark.anyio
async def test_a_structured_row_stopped_by_the_content_filter_says_so(tmp_path: Path) -> None:
    """A job with a schema whose row Claude refused (no words) failed as "the reply is not
    JSON", as if the model had answered badly: the failure now says the content filter
    stopped it, as a reply cut at max_tokens says it was cut."""
    schema = tmp_path / "answer.schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}))
    s, df = await gateway(tmp_path, ["refusal", "pause_turn"], schema_file=str(schema))
    assert s.exit_code == 3
    assert df.loc["r0", "error_type"] == "invalid_json"
    assert df.loc["r0", "error_message"].startswith(
        "the reply was stopped by the content filter (finish_reason=content_filter): "), \
        df.loc["r0", "error_message"]
    # So does a reply Claude paused before its answer (its words so far are not the JSON)
    assert df.loc["r1", "error_message"].startswith(
        "the turn was paused before its answer (finish_reason=pause_turn): "), \
        df.loc["r1", "error_message"]


# Gemini through the gateway: "thinking budget counts toward output tokens", and a gateway that
# maps Gemini's usage with its thoughts in the total only (thoughtsTokenCount beside
# candidatesTokenCount, no reasoning_tokens) leaves the completion with the answer's alone.
GEMINI = "gemini-2.5-flash"
HIDDEN = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 415}


def test_thoughts_in_the_total_only_are_counted_as_reasoning_in_the_completion() -> None:
    from tests.test_reply_fields import parse, reply

    answer = {"role": "assistant", "content": "An answer."}
    res = parse({**reply(answer), "usage": HIDDEN})
    assert (res.prompt_tokens, res.completion_tokens, res.total_tokens,
            res.reasoning_tokens) == (10, 405, 415, 400)
    # Counts that add up, or a reasoning count the gateway gave, are read as they are
    plain = parse({**reply(answer), "usage": {**HIDDEN, "total_tokens": 15}})
    assert (plain.completion_tokens, plain.reasoning_tokens) == (5, None)
    said = parse({**reply(answer), "usage": {**HIDDEN, "completion_tokens_details": {
        "reasoning_tokens": 0}}})
    assert (said.completion_tokens, said.reasoning_tokens) == (5, 0)
    # A cache read counted apart, the total adding it: no thoughts
    cached = parse({**reply(answer), "usage": {**HIDDEN, "total_tokens": 1015,
                                               "prompt_tokens_details": {"cached_tokens": 1000}}})
    assert (cached.completion_tokens, cached.reasoning_tokens) == (5, None)
    within = parse({**reply(answer), "usage": {"prompt_tokens": 1000, "completion_tokens": 50,
                                               "total_tokens": 1650, "prompt_tokens_details": {
                                                   "cached_tokens": 600}}})
    assert (within.completion_tokens, within.reasoning_tokens) == (50, None)
    # ... and counted in the prompt, which left them out: its 1,000 new tokens were priced as
    # 400 (the 600 read taken from them), the row's cost short by 600 at the input price.
    assert (within.prompt_tokens, within.cached_tokens, within.total_tokens) == (1600, 600, 1650)
    # Anthropic's counts, the total adding the cache reads but not the writes: no thoughts
    reads = parse({**reply(answer), "usage": {
        "prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1650,
        "cache_read_input_tokens": 600, "cache_creation_input_tokens": 200}})
    assert (reads.completion_tokens, reads.reasoning_tokens) == (50, None)
    assert (reads.prompt_tokens, reads.total_tokens) == (1600, 1650)


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_geminis_thoughts_in_the_total_only_are_priced_as_output(
        tmp_path: Path, stream: bool) -> None:
    """A Gemini reply whose 400 thinking tokens a gateway counted in total_tokens only was
    priced at its 5 completion tokens: a row's cost some 80 times too low, and a budget
    that let the job spend past it unseen. The gap is the thinking, billed as output."""
    s, df = await gateway(tmp_path, ["usage " + json.dumps(HIDDEN), "usage " + json.dumps(
        {**HIDDEN, "total_tokens": 15})], stream=stream, model=GEMINI)
    assert s.exit_code == 0
    assert df["completion_tokens"].tolist() == [405, 5]
    assert df["reasoning_tokens"].tolist()[0] == 400 and pd.isna(df.loc["r1", "reasoning_tokens"])
    assert df["total_tokens"].tolist() == [415, 15]
    book = PriceBook()
    assert df["cost_usd"].tolist() == pytest.approx([
        book.cost(GEMINI, prompt_tokens=10, completion_tokens=405),
        book.cost(GEMINI, prompt_tokens=10, completion_tokens=5)])


# The reference's Gemini thinking examples, rehearsed against the simulator: its reasoning
# (billed as output) shows in the rows, as the gateway would bill it.
GEMINI_BUDGET = {"extra_body": {"google": {"thinking_config": {
    "thinking_budget": 6000, "include_thoughts": True}}}}
GEMINI_LEVEL = {"generationConfig": {"thinkingConfig": {"thinkingLevel": "LOW"}}}


BUDGET_0 = {"extra_body": {"google": {"thinking_config": {"thinking_budget": 0}}}}


@pytest.mark.anyio
@pytest.mark.parametrize(("model", "extra", "stream", "thinks"), [
    ("gemini-2.0-flash", GEMINI_BUDGET, True, True),
    ("gemini-2.0-flash", GEMINI_BUDGET, False, False),  # "requires stream: true"
    ("gemini-2.0-flash", {}, True, False),
    ("gemini-2.5-flash-lite", {"google": GEMINI_BUDGET["extra_body"]["google"]}, True, True),
    ("gemini-2.5-flash-lite", GEMINI_LEVEL, True, True),
    # Gemini 3 ("thinking_level ... default HIGH") and 2.5 Pro and Flash think unasked...
    ("gemini-3-pro-preview", {}, False, True),
    ("gemini-3-flash-preview", {}, True, True),
    ("gemini-2.5-flash", {}, False, True),
    ("google/gemini-2.5-pro", {}, True, True),
    ("gemini-3-flash-preview", BUDGET_0, False, True),  # the budget is a stream's only
    # ...unless told not to: "0 disable", "-nothinking disable", reasoning_effort "none"
    ("gemini-3-flash-preview", BUDGET_0, True, False),
    ("gemini-2.5-flash", {"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}},
     True, False),
    ("gemini-2.5-flash-nothinking", {}, True, False),
    ("gemini-2.5-flash", {"reasoning_effort": "none"}, True, False),
], ids=["budget", "budget-not-streamed", "not-asked", "top-level", "level", "3-pro-default",
        "3-flash-default", "2.5-flash-default", "2.5-pro-default", "budget-0-not-streamed",
        "budget-0", "level-off", "nothinking", "effort-none"])
async def test_the_simulator_thinks_as_a_gemini_model_and_its_request_say(
        tmp_path: Path, model: str, extra: dict[str, object], stream: bool,
        thinks: bool) -> None:
    """Gemini 2.5 Pro and Flash and Gemini 3 think unless told not to, as the estimate prices
    them: the simulator made them think only when the request asked, and a rehearsal priced
    their replies without the thinking the night bills as output."""
    inp = make_csv(tmp_path / "in.csv", ["Give a geometry problem and analyze it"])
    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp, model=model,
                      stream=stream or None, max_tokens=None)
        s = await run(replace(job, request=replace(job.request, extra=extra)))
    assert s.exit_code == 0
    df = results(tmp_path)
    reasoning = df.loc["r0", "reasoning_tokens"]
    assert bool(reasoning > 0) is thinks, reasoning
    assert bool(pd.notna(df.loc["r0", "reasoning_content"])) is (thinks and stream)


@pytest.mark.parametrize(("model", "prices", "warned"), [
    ("gpt-4o", "input = 2.5\noutput = 10", True),
    ("gpt-4o", "input = 2.5\noutput = 10\ncached_input = 1.25", False),
    ("my-gateway-model", "input = 0.15\noutput = 0.6", False),  # not known to cache
    ("gpt-4o", "input = 0\noutput = 0", False),  # served by a box of the job's own: free
])
def test_a_price_entry_without_cached_input_for_a_model_that_caches_is_warned_about(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, prices: str,
        warned: bool) -> None:
    """The README's [prices] example, copied without its cached_input line for a model whose
    API bills cached prompt tokens at half the input price, priced them at the input price
    with no word before the run."""
    out = estimate(tmp_path, capsys, model, "", max_tokens=20, prices=prices)
    said = (f'warning: [prices."{model}"] sets no cached_input: the cached prompt tokens its '
            "replies report will be priced at its input price (2.5 USD per 1M tokens), where "
            "genai-prices lists 1.25 for them (input 2.5): add cached_input to it")
    assert (said in out) is warned, out
    assert ("cached_input" in out) is warned, out


@pytest.mark.anyio
async def test_the_summary_names_a_model_whose_cached_tokens_cost_the_input_price(
        tmp_path: Path) -> None:
    """A gateway's model the job prices without cached_input, whose replies report cache
    reads (OpenAI's prompt_tokens_details): the summary said nothing of their price."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 5, "total_tokens": 1005,
             "prompt_tokens_details": {"cached_tokens": 800}}
    s, df = await gateway(tmp_path, ["usage " + json.dumps(usage), "end_turn"],
                          model="my-gateway-model",
                          prices={"my-gateway-model": {"input": 0.15, "output": 0.6}})
    assert s.exit_code == 0 and df["cached_tokens"].tolist()[0] == 800
    said = ("  warning: model 'my-gateway-model': 800 cached prompt tokens priced at the input "
            'price, as [prices."my-gateway-model"] sets no cached_input: add it (USD per 1M '
            "tokens) where the API bills cached tokens lower (most list a cached-input price)\n")
    summary = format_summary(s)
    assert said in summary, summary


@pytest.mark.anyio
@pytest.mark.parametrize(("model", "extra", "stream", "budget"), [
    ("gemini-2.5-flash-thinking-16", {}, True, 16),
    ("gemini-2.5-flash", {"extra_body": {"google": {"thinking_config": {
        "thinking_budget": 20, "include_thoughts": True}}}}, True, 20),
    ("gemini-2.5-flash", {"generationConfig": {"thinkingConfig": {"thinkingBudget": 24}}},
     False, 24),
    ("claude-sonnet-4-5", {"thinking": {"type": "enabled", "budget_tokens": 12}}, False, 12),
    ("gemini-2.5-flash", {"extra_body": {"google": {"thinking_config": {
        "thinking_budget": -1}}}}, True, None),  # dynamic: no bound
], ids=["name-suffix", "thinking_budget", "thinkingBudget", "budget_tokens", "dynamic"])
async def test_the_simulator_thinks_within_the_requests_budget(
        tmp_path: Path, model: str, extra: dict[str, object], stream: bool,
        budget: int | None) -> None:
    """A thinking budget bounds what a model thinks ("-thinking-<number> precise budget",
    "thinking_budget ... >0 specific budget"). The simulator thought the same 52 tokens
    whatever the budget, so a rehearsal's reasoning tokens and cost could pass what the
    estimate, bounding them by the budget, had said."""
    inp = make_csv(tmp_path / "in.csv", ["Give a geometry problem and analyze it"])
    async with Simulator(SimulatorConfig(reasoning_ratio=4.0)) as sim:
        job = job_for(tmp_path, sim.base_url, inp, model=model,
                      stream=stream or None, max_tokens=None)
        s = await run(replace(job, request=replace(job.request, extra=extra)))
    assert s.exit_code == 0
    reasoning = int(results(tmp_path).loc["r0", "reasoning_tokens"])
    if budget is None:
        assert reasoning > 40, reasoning
    else:
        assert reasoning == budget
