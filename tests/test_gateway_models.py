"""One job over many models through one gateway URL, as the gateways' references have it: a
model column mixing providers, one of which the gateway cannot serve."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pandas as pd
import pytest
from aiohttp import web

from batchrunner import runner as runner_module
from batchrunner.cli import main
from batchrunner.config import load_job
from batchrunner.pricing import search_requested
from batchrunner.runner import RunSummary, run_job
from batchrunner.simulator import Simulator, SimulatorConfig
from batchrunner.template import body_warnings
from tests.servers import serve_on_loopback
from tests.test_faults import (
    KEY,  # the job_env fixture reads the module's KEY
    RUN_LIMIT_S,
    Fault,
    FaultServer,
    completion,
    error_body,
    job_for,
    models_csv,
    options,
    results,
    run,
)

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd

MISSING = "qwen3-coder-plus"


def estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str], models: list[str],
             setting: str = "") -> str:
    """What ``batchrunner estimate`` prints for a job over ``models`` (a row each, a model
    column) through a gateway, with one more [request] ``setting`` line if given."""
    inp = models_csv(tmp_path / "in.csv", models)
    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel_column = "model"\n'
        f'prompt = "{{text}}"\n{setting}\n[endpoint]\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[output]\ndir = "out"\n')
    assert main(["estimate", str(tmp_path / "job.toml")]) == 0
    return capsys.readouterr().out


async def no_channel_for_one_model(srv: FaultServer, request: web.BaseRequest,
                                   body: dict[str, Any]) -> web.StreamResponse | None:
    """A gateway with no channel for one model: its 503 ``model_not_found`` (as a gateway
    words it), and answers for the other models."""
    if body.get("model") != MISSING:
        await asyncio.sleep(0.05)  # an answer takes a while; the gateway's refusal does not
        return None
    return web.json_response(error_body(
        f"No available channel for model {MISSING} under group default (request id: 20251201)",
        "new_api_error", "model_not_found"), status=503)


@pytest.mark.anyio
async def test_a_model_the_gateway_has_no_channel_for_holds_back_no_other_models_rows(
        tmp_path: Path) -> None:
    """A gateway's 503 for one model of a mixed job, while its other models are answered, is
    that model's, not a server away: its rows are tried max_attempts times each and fail, and
    the other models' rows go on, each sent once. Its 503s shut the job's sends to one probe at
    a time (a 1,000-row job, a tenth of its rows asking for that model, took 248 s where its
    900 others take 2) and its rows' tries under that wait were not counted (up to 13 tries of
    a row with max_attempts 6)."""
    models = [MISSING if i % 10 == 3 else ("gpt-4o", "claude-opus-4-6")[i % 2]
              for i in range(200)]
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(no_channel_for_one_model) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=32),
                      max_attempts=3)
        sent = srv.requests
    assert s.exit_code == 3 and not s.stopped, s.stopped
    df = results(tmp_path)
    missing = df[df["model"] == MISSING]
    assert len(missing) == 20 and (missing["status"] == "failed").all()
    assert set(missing["error_type"]) == {"http_503"}
    assert missing["error_message"].str.contains(f"No available channel for model {MISSING}").all()
    assert (missing["attempts"] == 3).all(), missing["attempts"].value_counts()
    others = df[df["model"] != MISSING]
    assert (others["status"] == "ok").all() and (others["attempts"] == 1).all()
    assert sent == 180 + 20 * 3


@pytest.mark.anyio
async def test_a_gateways_outage_that_names_every_model_is_waited_out_in_a_mixed_job(
        tmp_path: Path) -> None:
    """A gateway whose upstreams are all away for a while answers "no channel for model X" for
    every model, the ones that answered before included: an outage, not each model's own (its
    message names the row's model, as a missing model's does). Nothing is answered meanwhile, so
    it is waited out as a gateway's 503 is, and every row is ok once the upstreams are back;
    taken for the models' own, their rows failed after max_attempts within the outage."""
    models = [("gpt-4o", "claude-opus-4-6")[i % 2] for i in range(120)]
    inp = models_csv(tmp_path / "in.csv", models)
    away: dict[str, float] = {}

    async def away_for_a_while(srv: FaultServer, request: web.BaseRequest,
                               body: dict[str, Any]) -> web.StreamResponse | None:
        if srv.requests <= 20:
            return None  # both models answered
        now = asyncio.get_running_loop().time()
        if now - away.setdefault("from", now) > 1.5:
            return None  # back
        return web.json_response(error_body(
            f"No available channel for model {body.get('model')} under group default",
            "new_api_error", "model_not_found"), status=503)

    async with FaultServer(away_for_a_while) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model"))
    assert s.exit_code == 0 and not s.stopped, s.stopped
    df = results(tmp_path)
    assert (df["status"] == "ok").all(), df["error_message"].value_counts()


def one_model_down(down: str, *, after: int = 0,
                   answer_s: tuple[float, float] = (0.1, 0.1)) -> Any:
    """A gateway whose upstream for model ``down`` fails (a 503 that names no model, as a
    proxy in front of a dead upstream words it) after that model's first ``after`` answers,
    and whose other models answer, each after a while (drawn from ``answer_s``)."""
    answered = {"n": 0}
    rng = random.Random(7)

    async def fault(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse | None:
        if body.get("model") == down:
            if answered["n"] < after:
                answered["n"] += 1
                return None
            return web.json_response(error_body("upstream connect error or disconnect/reset "
                                                "before headers", "upstream_error", None),
                                     status=503)
        # An answer takes a while; the dead upstream's 503 does not.
        await asyncio.sleep(rng.uniform(*answer_s))
        return None

    return fault


@pytest.mark.anyio
async def test_one_models_upstream_down_fails_its_rows_and_the_others_go_on(
        tmp_path: Path) -> None:
    """One model's upstream went down mid-run, its gateway answering 503 with a message that
    names no model: its 503s were taken for the gateway away, which shut the job to one probe
    at a time, the probe nearly always one of its rows; no other model was asked, nor
    answered, until the outage's wait ran out and stopped the job with the other models' rows
    unsent (146 ok of 300). Its rows now fail as http_503 after their tries, and the other
    models' rows are all answered."""
    down = "deepseek-chat"
    models = [("gpt-4o", "claude-opus-4-6", down)[i % 3] for i in range(60)]
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(one_model_down(down, after=3)) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=4))
    assert s.exit_code == 3 and not s.stopped, s.stopped
    df = results(tmp_path)
    others = df[df["model"] != down]
    assert len(others) == 40 and (others["status"] == "ok").all(), others["status"]
    failed = df[df["status"] == "failed"]
    assert set(failed["model"]) == {down} and set(failed["error_type"]) == {"http_503"}
    assert len(failed) == 17


@pytest.mark.anyio
async def test_a_model_down_mid_run_among_slow_answers_is_tried_max_attempts_times(
        tmp_path: Path) -> None:
    """A model that answered, then went down (503s naming no model), while the other models
    answer in 0.5-1.5 s: its refusals were taken for the gateway's, whose tries count only
    once a request sent since the row's last refusal is answered, which slow answers seldom
    are; at concurrency 8 its rows were sent up to 13 times of 3. Once another model has
    answered a request sent after its refusals began, they are its own and count."""
    down = "deepseek-chat"
    models = [down if i % 3 == 2 else ("gpt-4o", "claude-opus-4-6")[i % 2] for i in range(90)]
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(one_model_down(down, after=3, answer_s=(0.5, 1.5))) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, model_column="model",
                                      concurrency=8), replace(options(3), outage_s=20.0))
        sent = srv.by_prompt
    assert s.exit_code == 3 and not s.stopped, s.stopped
    df = results(tmp_path)
    assert (df.loc[df["model"] != down, "status"] == "ok").all()
    failed = df[df["status"] == "failed"]
    assert set(failed["model"]) == {down} and len(failed) == 27
    # Tries sent before any request sent after the first refusal is answered (0.5 s or more)
    # are not told from a gateway away: a few rows may be sent once or twice more.
    assert failed["attempts"].max() <= 5, failed["attempts"].value_counts()
    assert (failed["attempts"] == 3).sum() >= 20, failed["attempts"].value_counts()
    assert sum(sent.values()) == 63 + failed["attempts"].sum()


@pytest.mark.anyio
@pytest.mark.parametrize("order", ["interleaved", "last"])
async def test_a_model_with_no_channel_whose_503s_name_no_model_fails_after_its_tries(
        tmp_path: Path, order: str) -> None:
    """A model the gateway has no channel for, its 503s at once and naming no model ("upstream
    connect error"), the other models answered meanwhile, or all done before its rows, last in
    the input: its rows fail after max_attempts tries. A rule that wanted another model's
    request sent after the refused one answered before calling a 503 the model's own never
    saw one (the 503 comes first), so the rows' tries were free (up to 15 of 3), and with its
    rows last the job waited them out as the gateway away and stopped, every rerun alike (a
    helper's stress test)."""
    down = "deepseek-chat"
    others = [("gpt-4o", "claude-opus-4-6")[i % 2] for i in range(40)]
    models = ([down if i % 5 == 2 else m for i, m in enumerate(others)] if order != "last"
              else sorted(others) + [down] * 20)
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(one_model_down(down)) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, model_column="model",
                                      concurrency=8), replace(options(3), outage_s=20.0))
    assert s.exit_code == 3 and not s.stopped, s.stopped
    df = results(tmp_path)
    failed = df[df["model"] == down]
    assert (failed["status"] == "failed").all() and set(failed["error_type"]) == {"http_503"}
    assert (failed["attempts"] <= 4).all(), failed["attempts"].value_counts()
    assert (df.loc[df["model"] != down, "status"] == "ok").all()


@pytest.mark.anyio
@pytest.mark.parametrize("concurrency", [1, 4])
async def test_one_models_upstream_down_with_its_rows_first_fails_them_and_the_others_go_on(
        tmp_path: Path, concurrency: int) -> None:
    """An input sorted by model whose first model's upstream is down from the start, its
    gateway answering 503 with a message that names no model: nothing had answered, so its
    503s were the gateway away, waited out one probe at a time, every probe one of its rows;
    no other model was asked, and at the outage's end the job stopped, every row left to do
    (and the rerun met the same rows first). A row of the next model is now asked beside the
    probes: answered, the down model's rows fail as http_503 after their tries, and the
    other models' rows are answered."""
    down = "deepseek-chat"
    models = [down] * 30 + ["gpt-4o"] * 20 + ["claude-opus-4-6"] * 20
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(one_model_down(down)) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, model_column="model",
                                      concurrency=concurrency),
                              replace(options(3), outage_s=20.0))
    assert s.exit_code == 3 and not s.stopped, s.stopped
    df = results(tmp_path)
    assert (df.loc[df["model"] != down, "status"] == "ok").all(), df["status"].value_counts()
    failed = df[df["model"] == down]
    assert len(failed) == 30 and (failed["status"] == "failed").all()
    assert set(failed["error_type"]) == {"http_503"}


@pytest.mark.anyio
async def test_rows_a_scout_went_past_are_left_to_do_at_a_stop_and_sent_by_the_rerun(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The down model's block longer than a scout goes past (``PASS_MAX_ROWS``): no other
    model asked, its outage is waited out and the job stops, as before scouts. The rows the
    scout went past, read from the input and never sent, are left to do, not lost: the rerun,
    the upstream back, sends them and every other row once."""
    monkeypatch.setattr(runner_module, "PASS_MAX_ROWS", 5)
    down = "deepseek-chat"
    inp = models_csv(tmp_path / "in.csv", [down] * 30 + ["gpt-4o"] * 10)
    async with FaultServer(one_model_down(down)) as srv:
        job = job_for(tmp_path, srv.base_url, inp, model_column="model", concurrency=2)
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job, replace(options(3), outage_s=1.0))
        assert s.exit_code == 4 and s.stopped and down in s.stopped, s.stopped
        assert (s.ok, s.failed, s.pending) == (0, 0, 40)
        srv.healthy, sent = True, srv.requests
        s = await run(job)
        assert s.exit_code == 0 and (s.ok, s.pending) == (40, 0)
        assert srv.requests - sent == 40


@pytest.mark.anyio
@pytest.mark.parametrize("models", ["one", "sorted", "sorted, away from the start",
                                    "sorted, one at a time"])
async def test_a_gateway_away_a_while_is_waited_out_when_one_model_is_refused_at_a_time(
        tmp_path: Path, models: str) -> None:
    """The gateway away for a while, answering 503 for every model, while the rows refused
    are of one model at a time: a job whose rows all ask one model through a model column
    (or an OpenAI batch file), or an input sorted by model. No other model answers meanwhile
    (the row of the next model sent beside the probes is refused too), so it is the gateway
    away, waited out, every row ok; taken for that model's upstream alone, new rows went on
    starting through the outage and rows failed (18 of 200). The scout's refusal is the
    gateway's, whatever the rule for a model that has not answered yet says: taken for its
    model's own, one at concurrency 1 was sent after another into the outage, the next
    model's rows failing as http_503 (6 runs of 7, in a helper's stress test)."""
    names = (["gpt-4o"] * 60 if models == "one"
             else sorted(("gpt-4o", "claude-opus-4-6", "deepseek-chat")[i % 3]
                         for i in range(60)))
    inp = models_csv(tmp_path / "in.csv", names)
    away: dict[str, float] = {}
    answered_first = 0 if models.endswith("start") else 12
    alone = models.endswith("one at a time")
    away_s = 3.0 if alone else 1.5
    during: Counter[str] = Counter()

    async def away_a_while(srv: FaultServer, request: web.BaseRequest,
                           body: dict[str, Any]) -> web.StreamResponse | None:
        now = asyncio.get_running_loop().time()
        if srv.requests > answered_first and now - away.setdefault("from", now) < away_s:
            during[body["model"]] += 1
            return web.json_response(error_body("upstream connect error or disconnect/reset "
                                                "before headers", "upstream_error", None),
                                     status=503)
        await asyncio.sleep(0.05)
        return None

    async with FaultServer(away_a_while) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, model_column="model",
                                      concurrency=1 if alone else 4),
                              replace(options(3), outage_s=30.0))
    assert away, "the gateway never went away"
    assert s.exit_code == 0 and not s.stopped, (s.stopped, s.error_types, during)
    assert (results(tmp_path)["status"] == "ok").all()
    if alone:  # the probes, one model's rows, and one scout of the next model's, retried
        assert len(during) == 2 and min(during.values()) <= 3, during


def test_the_estimate_names_each_model_it_has_no_price_for_and_what_to_add(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job over the gateway's models, two of which no price is known for under the names the
    gateway uses: the estimate's cost line gave "unknown for some models (add
    [prices."MODEL"] ...)", naming none of them, nor what an entry holds, nor what the priced
    ones come to. It now gives the priced models' cost and names each model to price."""
    models = ["gpt-4o", "deepseek-v3-1-250821", "claude-opus-4-6", MISSING] * 2
    out = estimate(tmp_path, capsys, models, "max_tokens = 100")
    line = next(x for x in out.splitlines() if x.startswith("  estimated cost: "))
    # gpt-4o: 2 rows × (10 prompt tokens at $2.50 + 100 completion at $10) per 1M tokens;
    # claude-opus-4-6: 2 × (10 at $5 + 100 at $25)
    version = importlib.metadata.version("genai-prices")
    assert line == (f"  estimated cost: $0.00715 for the models priced (genai-prices {version}); "
                    "unknown for deepseek-v3-1-250821 and qwen3-coder-plus: add "
                    '[prices."deepseek-v3-1-250821"] and [prices."qwen3-coder-plus"], each with '
                    "input and output (USD per 1M tokens), to a job file"), out


def claude_usage(usage: dict[str, Any]) -> Fault:
    """A gateway answering every request with ``usage``, as it maps Claude's."""
    async def answer(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse:
        reply = completion(body, "ok")
        reply["usage"] = usage
        return web.json_response(reply)
    return answer


async def claude_rows(tmp_path: Path, usage: dict[str, Any]) -> pd.DataFrame:
    """The results of two claude-opus-4-6 rows run through a gateway answering with ``usage``
    (``claude_usage``), the run checked ok."""
    inp = models_csv(tmp_path / "in.csv", ["claude-opus-4-6"] * 2)
    async with FaultServer(claude_usage(usage)) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model"))
    assert s.exit_code == 0, s.stopped
    return results(tmp_path)


@pytest.mark.anyio
@pytest.mark.parametrize("usage", [
    # The prompt's new tokens and the cache read apart (more of it than of them), as
    # Anthropic's input_tokens and cache_read_input_tokens are: the total is the three's...
    {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 1150,
     "prompt_tokens_details": {"cached_tokens": 1000}},
    # ... or the prompt's new tokens and the completion's only
    {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
     "prompt_tokens_details": {"cached_tokens": 1000}},
    # Anthropic's own fields passed through beside OpenAI's counts, the prompt's whole
    {"prompt_tokens": 1100, "completion_tokens": 50, "total_tokens": 1150,
     "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 0},
    # and the same, the prompt's new tokens apart from the cache read, as Anthropic counts them
    {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
     "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 0},
    # OpenAI's own shape, for reference
    {"prompt_tokens": 1100, "completion_tokens": 50, "total_tokens": 1150,
     "prompt_tokens_details": {"cached_tokens": 1000}},
])
async def test_claude_cache_reads_through_a_gateway_are_priced_as_cached(
        tmp_path: Path, usage: dict[str, Any]) -> None:
    """A Claude reply through a gateway whose prompt read 1,000 tokens from the cache and 100
    new ones: whether the gateway counts the cache read in prompt_tokens (OpenAI's way) or
    apart from it (Anthropic's input_tokens, as gateways map it: told by the cache read
    outnumbering the prompt), and names it cached_tokens or
    passes on Anthropic's cache_read_input_tokens, the row has 1,100 prompt tokens, 1,000 of
    them cached, and costs 100 at the input price, 1,000 at the cached one and 50 at the output
    one. The cache read apart from prompt_tokens was clamped to it (100 tokens, all cached:
    $0.00130 where $0.00225 was billed), and Anthropic's field was not read (every prompt token
    at the input price: $0.00675)."""
    df = await claude_rows(tmp_path, usage)
    assert df["prompt_tokens"].tolist() == [1100, 1100]
    assert df["cached_tokens"].tolist() == [1000, 1000]
    assert df["completion_tokens"].tolist() == [50, 50]
    assert df["total_tokens"].tolist() == [1150, 1150]
    # claude-opus-4-6: $5 input, $0.50 cached input, $25 output per 1M tokens
    assert df["cost_usd"].tolist() == pytest.approx([0.00225, 0.00225])


@pytest.mark.anyio
@pytest.mark.parametrize("usage", [
    # The cache read apart from the prompt's new tokens, as Anthropic counts them, told by the
    # total that adds the three...
    {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1650,
     "cache_read_input_tokens": 600, "cache_creation_input_tokens": 0},
    # ... or by Anthropic's own input_tokens passed on beside, which prompt_tokens copies
    {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050, "input_tokens": 1000,
     "output_tokens": 50, "cache_read_input_tokens": 600, "cache_creation_input_tokens": 0},
    # The prompt's whole, as OpenAI counts it: the same row
    {"prompt_tokens": 1600, "completion_tokens": 50, "total_tokens": 1650,
     "cache_read_input_tokens": 600, "cache_creation_input_tokens": 0},
    {"prompt_tokens": 1600, "completion_tokens": 50, "total_tokens": 1650, "input_tokens": 1000,
     "output_tokens": 50, "cache_read_input_tokens": 600},
])
async def test_a_cache_read_smaller_than_the_prompt_counted_apart_is_added_to_it(
        tmp_path: Path, usage: dict[str, Any]) -> None:
    """1,000 new prompt tokens and 600 read from the cache, counted apart as Anthropic does: a
    cache read that did not outnumber the prompt was taken as part of it, OpenAI's way, so the
    row had 1,000 prompt tokens, 600 of them cached, and cost $0.00455 where $0.00655 was
    billed. The total that adds the three, or Anthropic's input_tokens equal to prompt_tokens,
    says the read is apart."""
    df = await claude_rows(tmp_path, usage)
    assert df["prompt_tokens"].tolist() == [1600, 1600]
    assert df["cached_tokens"].tolist() == [600, 600]
    assert df["total_tokens"].tolist() == [1650, 1650]
    # claude-opus-4-6: $5 input, $0.50 cached input, $25 output per 1M tokens
    assert df["cost_usd"].tolist() == pytest.approx([0.00655, 0.00655])


WRITES = {"cache_creation_input_tokens": 10_000,
          "cache_creation": {"ephemeral_5m_input_tokens": 6_000,
                             "ephemeral_1h_input_tokens": 4_000}}


@pytest.mark.anyio
@pytest.mark.parametrize("usage", [
    # Anthropic's way: the prompt's new tokens apart from those written to the cache
    {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050, "input_tokens": 1000,
     "cache_read_input_tokens": 0, **WRITES},
    {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 11050, **WRITES},
    # OpenAI's: the prompt's whole, its writes among them
    {"prompt_tokens": 11000, "completion_tokens": 50, "total_tokens": 11050, **WRITES},
])
async def test_claude_cache_writes_are_priced_as_cache_writes_and_reported(
        tmp_path: Path, usage: dict[str, Any]) -> None:
    """A Claude reply that wrote 10,000 prompt tokens to the cache, 4,000 of them for an hour:
    Anthropic bills them at 1.25 and 2 times the input price. They were priced as plain input,
    or, counted apart from prompt_tokens as Anthropic counts them, not at all ($0.00625 a row
    where $0.08375 was billed), and no report showed them."""
    df = await claude_rows(tmp_path, usage)
    assert df["prompt_tokens"].tolist() == [11000, 11000]
    assert df["cache_write_tokens"].tolist() == [10000, 10000]
    assert df["total_tokens"].tolist() == [11050, 11050]
    # claude-opus-4-6 per 1M tokens: $5 input, $6.25 a 5-minute cache write, $10 a 1-hour one,
    # $25 output: 1,000 × 5 + 6,000 × 6.25 + 4,000 × 10 + 50 × 25
    assert df["cost_usd"].tolist() == pytest.approx([0.08375, 0.08375])
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["tokens"]["cache_write"] == 20000
    assert report["by_model"]["claude-opus-4-6"]["price"]["cache_write"] == 6.25
    md = (tmp_path / "out" / "cost_report.md").read_text()
    assert re.search(r"\| Prompt tokens written to the cache +\| 20,000 +\|", md), md


@pytest.mark.anyio
@pytest.mark.parametrize(("usage", "cost"), [
    # new-api's OpenAI shape of Claude's usage (the gateways built on it): the writes in
    # prompt_tokens_details, those kept an hour beside them, the prompt their whole...
    ({"prompt_tokens": 11000, "completion_tokens": 50, "total_tokens": 11050,
      "prompt_tokens_details": {"cached_tokens": 0, "cached_creation_tokens": 10_000,
                                "text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
      "claude_cache_creation_5_m_tokens": 6_000, "claude_cache_creation_1_h_tokens": 4_000},
     0.08375),
    # ... or Anthropic's input_tokens alone, the writes apart
    ({"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
      "prompt_tokens_details": {"cached_tokens": 0, "cached_creation_tokens": 10_000},
      "claude_cache_creation_5_m_tokens": 6_000, "claude_cache_creation_1_h_tokens": 4_000},
     0.08375),
    # OpenRouter's: cache_write_tokens, no split by how long they are kept (5 minutes)
    ({"prompt_tokens": 11000, "completion_tokens": 50, "total_tokens": 11050,
      "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 10_000,
                                "audio_tokens": 0}},
     0.06875),
])
async def test_claude_cache_writes_a_gateway_counts_in_the_prompt_details_are_priced(
        tmp_path: Path, usage: dict[str, Any], cost: float) -> None:
    """A gateway that passes Claude's cache writes on in OpenAI's prompt_tokens_details, as
    new-api's gateways (``cached_creation_tokens``, with ``claude_cache_creation_1_h_tokens``)
    and OpenRouter (``cache_write_tokens``) do: the 10,000 tokens written were priced at the
    input price ($0.05625 a row where $0.08375 or $0.06875 was billed), or, counted apart
    from the prompt, not at all, and no report showed them."""
    df = await claude_rows(tmp_path, usage)
    assert df["prompt_tokens"].tolist() == [11000, 11000]
    assert df["cache_write_tokens"].tolist() == [10000, 10000]
    assert df["cached_tokens"].tolist() == [0, 0]
    # claude-opus-4-6 per 1M tokens: $5 input, $6.25 a 5-minute cache write, $10 a 1-hour one,
    # $25 output
    assert df["cost_usd"].tolist() == pytest.approx([cost, cost])
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["tokens"]["cache_write"] == 20000


@pytest.mark.anyio
async def test_qwen_explicit_cache_writes_are_priced_as_cache_writes(tmp_path: Path) -> None:
    """Qwen's explicit cache (a ``cache_control`` block) through a gateway, its writes billed
    at 125 % of the input price and counted, as DashScope's OpenAI-compatible usage gives them,
    in ``prompt_tokens_details.cache_creation_input_tokens``: they were priced as plain input
    and no report showed them, the job's ``cache_write`` price unused."""
    usage = {"prompt_tokens": 3000, "completion_tokens": 100, "total_tokens": 3100,
             "prompt_tokens_details": {
                 "cached_tokens": 0, "cache_creation_input_tokens": 2048,
                 "cache_type": "ephemeral",
                 "cache_creation": {"ephemeral_5m_input_tokens": 2048}}}
    inp = models_csv(tmp_path / "in.csv", [MISSING] * 2)
    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel_column = "model"\n'
        'prompt = "{text}"\nmax_tokens = 100\n[output]\ndir = "out"\n'
        f'[prices."{MISSING}"]\ninput = 1.0\noutput = 5.0\ncache_write = 1.25\n')
    async with FaultServer(claude_usage(usage)) as srv:
        job = load_job(tmp_path / "job.toml", {"base_url": srv.base_url})
        s = await run(job)
    assert s.exit_code == 0, s.stopped
    df = results(tmp_path)
    assert df["prompt_tokens"].tolist() == [3000, 3000]
    assert df["cache_write_tokens"].tolist() == [2048, 2048]
    # 952 new tokens at $1, 2,048 written at $1.25, 100 out at $5 per 1M
    assert df["cost_usd"].tolist() == pytest.approx([0.004012, 0.004012])


# A gateway's model list, as its /v1/models gives it: its providers' models, then many more.
GATEWAY_MODELS = [
    "gpt-3.5-turbo", "gpt-4", "gpt-4-turbo", "gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini",
    "gpt-5.1", "gpt-5.2", "o3-mini", "o4-mini", "claude-3-5-sonnet-20241022",
    "claude-sonnet-4-20250514", "claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001",
    "claude-opus-4-6", "deepseek-v3-1-250821", "deepseek-r1", "grok-4", "grok-4-fast-reasoning",
    "gemini-3-pro-preview", "gemini-3-flash-preview", "glm-4.7", "qwen3-coder-plus",
    "kimi-k2.5", *(f"vendor-model-{i}" for i in range(100))]


def listing_gateway(models: list[str], away: set[str] | None = None, *,
                    no_channel: bool = False, in_200: bool = False) -> Any:
    """A gateway serving ``models``: listed by its /v1/models, less those ``away`` (none
    taken away unless given); a chat request for another name answered 404 naming it, as the
    ai-nebula reference words it, or (``no_channel``) 503 "No available channel for model
    ...", as new-api answers it, and its upstreams' outage too, or (``in_200``) the 404's body
    in a 200, as gateways that pass on their upstream's error do."""
    gone = away if away is not None else set()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response({"object": "list", "data": [
                {"id": m, "object": "model", "owned_by": "gateway"} for m in models
                if m not in gone]})
        body = await request.json()
        if body["model"] in models and body["model"] not in gone:
            return web.json_response(completion(body, "ok"))
        if no_channel:
            return web.json_response(error_body(
                f"No available channel for model {body['model']} under group default",
                "new_api_error", "model_not_found"), status=503)
        return web.json_response(error_body(
            f"Model {body['model']} does not exist or is not supported",
            "invalid_request_error", "model_not_found"), status=200 if in_200 else 404)
    return handle


async def run_at(tmp_path: Path, handle: Any, inp: Path, model: str) -> RunSummary:
    """The job of ``inp``'s rows asking ``model``, four at a time, run against a server on
    loopback answering with ``handle``."""
    runner, port = await serve_on_loopback(handle)
    try:
        with anyio.fail_after(RUN_LIMIT_S):
            return await run(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, model=model,
                                     concurrency=4))
    finally:
        await runner.cleanup()


def assert_stopped_naming_models(s: RunSummary, start: str) -> None:
    """``s`` stopped at its first answer, no row failed, its stop beginning with ``start``
    and ending with what to set."""
    assert s.exit_code == 4 and s.failed == 0 and s.ok == 0 and s.stopped is not None, s
    assert s.stopped.startswith(start), s.stopped
    assert s.stopped.endswith("set the job's model to one of them, then rerun (no row was "
                              "failed for it)"), s.stopped


@pytest.mark.anyio
async def test_a_mistyped_model_names_the_gateways_closest_models(tmp_path: Path) -> None:
    """A model name mistyped (claude-sonnet-4.5 for claude-sonnet-4-5-20250929) on a gateway
    that lists 125 models: the stop named the first five it lists (gpt-3.5-turbo, gpt-4, ...),
    none of them the one meant. It names those closest to the name asked for."""
    inp = models_csv(tmp_path / "in.csv", ["claude-sonnet-4.5"] * 3)
    s = await run_at(tmp_path, listing_gateway(GATEWAY_MODELS), inp, "claude-sonnet-4.5")
    assert s.exit_code == 4 and s.stopped is not None
    said = s.stopped.partition(" — the endpoint serves ")[2]
    assert said.startswith("claude-sonnet-4-5-20250929, "), s.stopped
    assert "gpt-3.5-turbo" not in said and "of its 125 models" in said, s.stopped
    assert said.endswith("set the job's model to one of them, then rerun (no row was failed "
                         "for it)"), s.stopped


@pytest.mark.anyio
async def test_a_mistyped_model_a_gateway_answers_in_a_200_names_its_models(
        tmp_path: Path) -> None:
    """A gateway that passes its upstream's error on in a 200 ({"error": {"code":
    "model_not_found", ...}}) for a model name mistyped: every row failed as an error_body
    until every request failing stopped the job, with no word of the models it serves. It
    stops at the first answer, no row failed, naming them, as for the 404 itself."""
    inp = models_csv(tmp_path / "in.csv", ["claude-sonnet-4.5"] * 20)
    s = await run_at(tmp_path, listing_gateway(GATEWAY_MODELS, in_200=True), inp,
                     "claude-sonnet-4.5")
    assert_stopped_naming_models(s, "Model claude-sonnet-4.5 does not exist or is not "
                                 "supported (code model_not_found) — the endpoint serves "
                                 "claude-sonnet-4-5-20250929, ")


@pytest.mark.anyio
async def test_a_mistyped_model_a_gateway_answers_503_for_stops_at_once_naming_its_models(
        tmp_path: Path) -> None:
    """A gateway in new-api's way answers a model name mistyped (gpt-4o-mni) with a 503, "No
    available channel for model gpt-4o-mni", as it answers for an upstream away: the job took
    it for an outage, waited the whole 5 minutes, sending a request a second or so, then said
    to wait for the endpoint to be back. The name is not in the gateway's /v1/models: the job
    stops at its first answer, no row failed, naming the models it serves."""
    inp = models_csv(tmp_path / "in.csv", ["gpt-4o-mni"] * 20)
    s = await run_at(tmp_path, listing_gateway(GATEWAY_MODELS, no_channel=True), inp,
                     "gpt-4o-mni")
    assert_stopped_naming_models(s, "No available channel for model gpt-4o-mni under group "
                                 "default — the endpoint serves gpt-4o-mini, ")


@pytest.mark.anyio
async def test_a_gateways_503_for_a_model_that_answered_the_job_is_waited_out(
        tmp_path: Path) -> None:
    """The same 503 for a model that answered the job and is then gone from the gateway's
    list a while (its channels disabled, then back) is its upstreams away, not a name
    mistyped: waited out as before, every row ok."""
    inp = models_csv(tmp_path / "in.csv", ["gpt-4o"] * 40)
    away: set[str] = set()
    listed = listing_gateway(GATEWAY_MODELS, away, no_channel=True)
    answers = 0
    loop = asyncio.get_running_loop()
    gone: dict[str, float] = {}

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal answers
        now = loop.time()
        if request.method == "POST":
            if answers >= 10 and "from" not in gone:
                gone["from"] = now  # gone from the list, after 10 answers, for 1 s
                away.add("gpt-4o")
            elif "from" in gone and now - gone["from"] > 1.0:
                away.discard("gpt-4o")
        response = await listed(request)
        if request.method == "POST" and response.status == 200:
            answers += 1
        return response

    s = await run_at(tmp_path, handle, inp, "gpt-4o")
    assert gone, "the model was never taken off the list"
    assert s.exit_code == 0 and s.ok == 40 and not s.stopped, s


async def no_such_model(srv: FaultServer, request: web.BaseRequest,
                        body: dict[str, Any]) -> web.StreamResponse | None:
    """A gateway that does not have one model: 404 for it, naming it; answers for the others."""
    if body.get("model") != MISSING:
        return None
    return web.json_response(error_body(
        f"Model {MISSING} does not exist or is not supported", "invalid_request_error",
        "model_not_found"), status=404)


@pytest.mark.anyio
async def test_a_model_the_gateway_does_not_have_first_in_the_input_stops_no_other_model(
        tmp_path: Path) -> None:
    """A mixed job's input that lists the rows of a model the gateway does not have first (an
    export sorted by model): its first 20 rows to finish all failed, none ok, and the whole job
    stopped (exit 4), every other model's rows left unsent, night after night. Now that model's
    rows are held, unsent, until another model answers, then sent: each fails once, naming its
    model, and the others go on."""
    models = [MISSING] * 30 + ["gpt-4o", "claude-opus-4-6"] * 40
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(no_such_model) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=4))
        sent = srv.requests
    assert s.exit_code == 3 and not s.stopped, s.stopped
    df = results(tmp_path)
    missing = df[df["model"] == MISSING]
    assert len(missing) == 30 and (missing["status"] == "failed").all()
    assert set(missing["error_type"]) == {"http_404"} and (missing["attempts"] == 1).all()
    assert missing["error_message"].str.contains(f"Model {MISSING} does not exist").all()
    assert (df.loc[df["model"] != MISSING, "status"] == "ok").all()
    assert sent == 110  # each row once


@pytest.mark.anyio
async def test_a_mixed_job_whose_every_model_fails_alike_still_stops_early(
        tmp_path: Path) -> None:
    """Every model of a mixed job refused the same way (a setting every model rejects): the
    first rows' failures still stop the job early, having sent few of its rows."""
    async def reject_all(srv: FaultServer, request: web.BaseRequest,
                         body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response(error_body("Unrecognized request argument supplied: thinking",
                                            "invalid_request_error", None), status=400)

    models = [MISSING] * 30 + ["gpt-4o", "claude-opus-4-6"] * 100
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(reject_all) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=4))
        sent = srv.requests
    assert s.exit_code == 4 and s.stopped
    assert "rows to finish all failed with http_400 and none succeeded" in s.stopped
    assert sent < 100


@pytest.mark.anyio
async def test_a_mixed_job_whose_only_model_is_missing_stops_early(tmp_path: Path) -> None:
    """Rows that ask, through a model column, for one model only, which the gateway does not
    have: the job stops early, as a job of that model does, its rows held or unsent."""
    inp = models_csv(tmp_path / "in.csv", [MISSING] * 300)
    async with FaultServer(no_such_model) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=4))
        sent = srv.requests
    assert s.exit_code == 4 and s.stopped
    assert s.stopped.startswith("the first 20 rows to finish all failed with http_404 and none "
                                f"succeeded (Model {MISSING} does not exist"), s.stopped
    assert sent < 30
    assert s.pending >= 270


@pytest.mark.anyio
async def test_a_model_with_no_channel_first_in_the_input_is_not_waited_out_as_an_outage(
        tmp_path: Path) -> None:
    """A mixed job's input that lists first the rows of a model the gateway has no channel
    for: its 503s, naming the model, came before any answer and were waited out as a server
    away, one probe at a time, the rows of the other models never started; after outage_s
    (5 minutes) the job stopped, every row left to do, and the rerun met the same rows first.
    A 503 that names the row's model is that model's: its rows fail after max_attempts tries
    and the others go on."""
    models = [MISSING] * 40 + ["gpt-4o", "claude-opus-4-6"] * 40
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(no_channel_for_one_model) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, model_column="model",
                                      concurrency=8), replace(options(3), outage_s=5.0))
        sent = srv.requests
    assert s.exit_code == 3 and not s.stopped, s.stopped
    df = results(tmp_path)
    missing = df[df["model"] == MISSING]
    assert (missing["status"] == "failed").all() and set(missing["error_type"]) == {"http_503"}
    assert (missing["attempts"] == 3).all(), missing["attempts"].value_counts()
    assert (df.loc[df["model"] != MISSING, "status"] == "ok").all()
    assert sent == 80 + 40 * 3


@pytest.mark.anyio
async def test_a_key_the_gateway_does_not_know_is_told_as_the_keys_fault_not_a_models(
        tmp_path: Path) -> None:
    """A 401 (the gateway knows no such key: mistyped, revoked) in a job of many models: the
    stop said to "check the key ... and its access to gpt-4o", the model of whichever row was
    answered first, as if the key lacked that model. It names the key alone, and never shows
    the key."""
    async def bad_key(srv: FaultServer, request: web.BaseRequest,
                      body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response(error_body("Invalid token (request id: 20251201)",
                                            "new_api_error", "invalid_api_key"), status=401)

    inp = models_csv(tmp_path / "in.csv", ["gpt-4o", "claude-opus-4-6", MISSING] * 10)
    async with FaultServer(bad_key) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model"))
    assert s.exit_code == 4 and s.stopped
    assert s.stopped == ("the endpoint refused the API key (HTTP 401: Invalid token (request "
                         "id: 20251201)) — check the key (OPENAI_API_KEY from the environment), "
                         "then rerun to resume"), s.stopped
    assert KEY not in s.stopped


def test_the_estimate_counts_a_thinking_budget_and_warns_of_thinking_it_cannot_bound(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows with no max_tokens asking the gateway's thinking models: each was estimated at the
    guess of 256 completion tokens, though a -thinking-8192 model may think for 8,192 more,
    billed as output, and the estimate said nothing of deepseek-r1's thinking. A budget the
    request gives is now added to the guess, and thinking with none is warned about."""
    models = ["gemini-2.5-flash-thinking-8192", "deepseek-r1", "gpt-4o"]
    out = estimate(tmp_path, capsys, models * 2, "stream = true")
    table = {line.split()[0]: line.split()[1:4] for line in out.splitlines()
             if line.startswith("  ") and line.split()[0] in models}
    assert table == {"gemini-2.5-flash-thinking-8192": ["2", "20", "16,896"],
                     "deepseek-r1": ["2", "20", "512"], "gpt-4o": ["2", "20", "512"]}, out
    assert ("  completion tokens from: a guess of 256 tokens (set max_tokens for a bound); and "
            "the thinking budget of the 2 rows that set one, on top") in out, out
    assert ("  warning: 2 rows ask for thinking (model deepseek-r1) with no max_tokens: the "
            "reasoning, billed as output, can run to thousands of tokens a reply, past the guess "
            "of 256; set max_tokens for a bound, or send a few rows first (--limit 20): the "
            "estimate then takes their answers' mean") in out, out


def test_the_estimate_warns_of_no_thinking_for_models_named_as_not_thinking(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """xAI's grok-4-fast-non-reasoning and a gateway's -non-thinking variant do not think; the
    estimate warned that their rows, with no max_tokens, ask for thinking that can run to
    thousands of tokens, as it does for grok-4-fast-reasoning's (its -reasoning read into the
    name that says non-reasoning). Only the model that thinks is warned about; of GPT-5's,
    gpt-5.1 (a dotted name the estimate took for one that does not think) and not
    gpt-5-chat-latest, which does not."""
    models = ["grok-4-fast-non-reasoning", "qwen3-32b-non-thinking", "grok-4-fast-reasoning",
              "gpt-5-chat-latest", "openai/gpt-5.1"]
    out = estimate(tmp_path, capsys, models)
    warned = [line for line in out.splitlines() if "for thinking" in line]
    assert len(warned) == 1 and warned[0].startswith(  # both models, each with its rows
        "  warning: 2 rows ask for thinking (model grok-4-fast-reasoning for 1, model "
        "openai/gpt-5.1 for 1) with no max_tokens"), out


# The gateway reference's model names (and served forms of them: a provider prefix, Ollama's
# tag, a Hugging Face name's capitals), each with whether it reasons unasked.
SEEDS_REASONING = {
    "deepseek-reasoner": True, "deepseek/deepseek-reasoner": True, "deepseek-r1": True,
    "deepseek-r1:7b": True, "grok-4": True, "grok-4-fast-reasoning": True,
    "grok-4-1-fast-reasoning": True, "xai/grok-4-fast-reasoning": True, "qwq-plus": True,
    "Kimi-K2-Thinking": True, "gemini-2.5-flash-thinking-8192": True,
    "gemini-3-pro-preview-thinking-low": True, "gemini-3-flash-preview": True,
    "o4-mini": True, "o3-mini": True, "gpt-5.2": True, "gpt-5.1": True,
    # Zhipu's GLM-4.7 and Moonshot's Kimi K2.5 think unless told not to, as does Gemini 3 Pro
    # Image, which ai-nebula lists as nano-banana-pro with Gemini's -nothinking names.
    "glm-4.7": True, "kimi-k2.5": True, "nano-banana-pro": True,
    "nano-banana-pro-nothinking": False,
    "grok-4-fast-non-reasoning": False, "gemini-2.5-flash-nothinking": False,
    "qwen3-32b-no-thinking": False, "claude-opus-4-6": False, "deepseek-v3-1-250821": False,
    "deepseek-v3": False, "grok-3": False, "grok-3-fast": False, "gpt-4o": False,
    "gpt-5-chat-latest": False, "qwen3-coder-plus": False, "qwen3-omni-flash": False,
}


@pytest.mark.anyio
async def test_the_estimate_warns_of_the_thinking_of_the_models_the_simulator_makes_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One rule says which models reason unasked, for the estimate's warning and the
    simulator's rehearsal: they differed beyond the list they share and Gemini's rule. The
    estimate warned of the thinking of any name holding "reasoner" or "-reasoning", QwQ's and
    Ollama's deepseek-r1:7b, where the simulator rehearsed them without reasoning; the
    simulator read "-thinking" in lower case only, and both took -no-thinking for thinking."""
    async with Simulator(SimulatorConfig(reply_tokens=20)) as sim, aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {KEY}"}) as session:
        reasoned = {}
        for model in SEEDS_REASONING:
            async with session.post(f"{sim.base_url}/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": "think"}]}) as r:
                assert r.status == 200, (model, await r.text())
                usage = (await r.json())["usage"]
            reasoned[model] = usage["completion_tokens_details"]["reasoning_tokens"] > 0
    assert reasoned == SEEDS_REASONING
    out = estimate(tmp_path, capsys, list(SEEDS_REASONING))
    thinking = sum(SEEDS_REASONING.values()) - 1  # but the one whose name sets a budget (8192)
    assert "the thinking budget of the 1 row that set one, on top" in out, out
    assert (f"  warning: {thinking} rows ask for thinking (model deepseek-reasoner for 1, model "
            "deepseek/deepseek-reasoner for 1, model deepseek-r1 for 1, and "
            f"{thinking - 3} rows in other ways) with no max_tokens") in out, out


def test_nano_banana_pro_is_a_gemini_model_to_its_search_tool_and_its_thinking_names() -> None:
    """ai-nebula lists nano-banana-pro (Gemini 3 Pro Image) among its Gemini models, with their
    -thinking names and Google Search tool: its googleSearch function was taken for the job's
    own function (search billed per request, unpriced and unestimated), and its -thinking
    name without a stream drew no warning that the reasoning comes in a stream only."""
    search = [{"type": "function", "function": {"name": "googleSearch"}}]
    assert search_requested({"model": "nano-banana-pro", "tools": search}) == "tools: googleSearch"
    assert search_requested({"model": "gpt-4o", "tools": search}) is None  # the job's own
    warned = body_warnings({"model": "nano-banana-pro-thinking", "messages": []})
    assert [w for w in warned if "only in a stream" in w] == [
        "the body's model nano-banana-pro-thinking gives its reasoning (reasoning_content) only "
        'in a stream, though its thinking is billed: set "stream": true in the body to record '
        "it"], warned
    assert not body_warnings({"model": "nano-banana-pro-thinking", "stream": True,
                              "messages": []})


@pytest.mark.anyio
async def test_thinking_disabled_turns_off_the_thinking_of_models_that_think_unasked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GLM-4.7 and Kimi K2.5 think unless a request sends thinking = {"type": "disabled"}: the
    estimate warned of the thinking of rows that turn it off, and the simulator rehearsed them
    thinking (it did not know either model thought at all: no warning, no reasoning)."""
    off = '[request.extra]\nthinking = { type = "disabled" }'
    out = estimate(tmp_path, capsys, ["glm-4.7", "kimi-k2.5"])
    assert ("  warning: 2 rows ask for thinking (model glm-4.7 for 1, model kimi-k2.5 for 1) "
            "with no max_tokens") in out, out
    out = estimate(tmp_path, capsys, ["glm-4.7", "kimi-k2.5"], off)
    assert "for thinking" not in out, out
    async with Simulator(SimulatorConfig(reply_tokens=20)) as sim, aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {KEY}"}) as session:
        for model in ("glm-4.7", "kimi-k2.5"):
            reasoned = []
            for extra in ({}, {"thinking": {"type": "disabled"}},
                          {"thinking": {"type": "enabled"}}):
                async with session.post(f"{sim.base_url}/chat/completions", json={
                        "model": model, "messages": [{"role": "user", "content": "think"}],
                        **extra}) as r:
                    assert r.status == 200, (model, await r.text())
                    usage = (await r.json())["usage"]
                reasoned.append(usage["completion_tokens_details"]["reasoning_tokens"] > 0)
            assert reasoned == [True, False, True], model


def test_the_estimate_warns_of_gpt_oss_thinking_as_the_simulator_rehearses_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """gpt-oss reasons before it answers (vLLM returns it as reasoning_content, counted in the
    completion tokens) and the simulator rehearses it so; the estimate, with no max_tokens,
    took its replies for 256 tokens without a word of the thinking billed beside them."""
    out = estimate(tmp_path, capsys, ["gpt-oss-120b", "openai/gpt-oss-20b", "gpt-4o"])
    warned = [line for line in out.splitlines() if "for thinking" in line]
    assert len(warned) == 1 and warned[0].startswith(
        "  warning: 2 rows ask for thinking (model gpt-oss-120b for 1, model openai/gpt-oss-20b "
        "for 1) with no max_tokens"), out


def test_the_estimate_reads_geminis_thinking_config_in_a_stream_only_as_the_simulator_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway reference's thinking_config "requires stream: true" (the simulator, and the
    pre-run warning, take it so): the estimate read a budget of 0 in an unstreamed request as
    thinking turned off, and warned of no thinking for gemini-2.5-flash, which thinks unless
    told not to; in a stream, or in the SDK's top-level google, it turns it off."""
    off = "[request.extra]\nextra_body = { google = { thinking_config = { thinking_budget = 0 } } }"
    for setting, warned in ((off, True), (f"stream = true\n{off}", False),
                            ('stream = true\n[request.extra]\n'
                             'google = { thinking_config = { thinking_budget = 0 } }', False)):
        out = estimate(tmp_path, capsys, ["gemini-2.5-flash"], setting)
        assert ("warning: 1 row asks for thinking (model gemini-2.5-flash)" in out) is warned, out


def test_the_estimate_warns_of_geminis_thinking_as_the_gateway_reference_asks_for_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Gemini 2.5 Pro and Flash and Gemini 3 think unless told not to, and the ai-nebula
    reference asks Gemini 3 Pro for it in generationConfig.thinkingConfig (thinkingLevel) and
    gives a budget as thinkingBudget there too: the estimate, with no max_tokens, took their
    replies for 256 tokens without a word of the thinking, billed as output, beside them."""
    models = ["gemini-3-pro-preview", "gemini-2.5-flash", "gemini-2.5-flash-lite",
              "gemini-2.5-flash-nothinking", "gemini-2.0-flash"]
    out = estimate(tmp_path, capsys, models)
    warned = [line for line in out.splitlines() if "for thinking" in line]
    assert len(warned) == 1 and warned[0].startswith(
        "  warning: 2 rows ask for thinking (model gemini-3-pro-preview for 1, model "
        "gemini-2.5-flash for 1) with no max_tokens"), out
    out = estimate(tmp_path, capsys, ["my-gemini"], "stream = true\n[request.extra]\n"
                   'generationConfig = { thinkingConfig = { thinkingLevel = "LOW" } }')
    assert ("  warning: 1 row asks for thinking (generationConfig.thinkingConfig) with no "
            "max_tokens") in out, out
    out = estimate(tmp_path, capsys, ["gemini-2.5-flash"], "stream = true\n[request.extra]\n"
                   "generationConfig = { thinkingConfig = { thinkingBudget = 4096 } }")
    table = {line.split()[0]: line.split()[1:4] for line in out.splitlines()
             if line.startswith("  gemini")}
    assert table == {"gemini-2.5-flash": ["1", "10", "4,352"]}, out  # 256 and the budget
    out = estimate(tmp_path, capsys, ["gemini-2.5-flash"], "stream = true\n[request.extra]\n"
                   "extra_body = { google = { thinking_config = { thinking_budget = 0 } } }")
    assert "for thinking" not in out, out


@pytest.mark.anyio
async def test_the_cost_report_says_what_to_add_for_a_model_with_no_price(
        tmp_path: Path) -> None:
    """A gateway's model the price library does not know under the gateway's name: the cost
    report said to "set it" under [prices."deepseek-v3-1-250821"], not what the entry holds."""
    inp = models_csv(tmp_path / "in.csv", ["deepseek-v3-1-250821", "gpt-4o"])
    async with FaultServer() as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model"))
    assert s.exit_code == 0
    md = (tmp_path / "out" / "cost_report.md").read_text()
    assert ("- model 'deepseek-v3-1-250821': no price known, cost of 1 row not counted; add "
            '[prices."deepseek-v3-1-250821"] with input and output (USD per 1M tokens) to the '
            "job file\n") in md, md


@pytest.mark.anyio
@pytest.mark.parametrize("tonight", [["gpt-4o"] * 100,
                                     ["gpt-4o"] * 100 + ["claude-opus-4-6"] * 100])
async def test_a_mixed_jobs_rerun_whose_new_rows_all_fail_alike_stops_early(
        tmp_path: Path, tonight: list[str]) -> None:
    """A nightly mixed job whose models answered last night, tonight refused the same way (a
    setting the gateway now rejects): the models that answered last night are no sign that the
    failures are one model's own. Its new rows, all of one model (the model that answered
    itself), or sorted by model, stop the job early as a first run's would, not fail one by
    one."""
    refuse = False

    async def refuse_tonight(srv: FaultServer, request: web.BaseRequest,
                             body: dict[str, Any]) -> web.StreamResponse | None:
        if not refuse:
            return None
        return web.json_response(error_body("Unrecognized request argument supplied: thinking",
                                            "invalid_request_error", None), status=400)

    last_night = sorted(set(tonight)) * 5
    inp = models_csv(tmp_path / "in.csv", last_night)
    async with FaultServer(refuse_tonight) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=4))
        assert s.exit_code == 0, s.stopped
        refuse = True
        models_csv(inp, last_night + tonight)  # the same rows, and tonight's new ones
        before = srv.requests
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=4))
        sent = srv.requests - before
    assert s.exit_code == 4 and s.stopped
    assert "rows to finish all failed with http_400 and none succeeded" in s.stopped
    assert sent < len(tonight) - 50, sent  # the second model's first rows stop it
    if len(set(tonight)) > 1:  # the message counts the rows it names
        assert s.stopped.startswith("the rows of gpt-4o failed as that model's own, then the "
                                    "first 20 other rows to finish all failed"), s.stopped
    assert s.pending >= 50


@pytest.mark.parametrize(("model", "extra", "thinks"), [
    # include_thoughts alone turns no thinking on: the simulator made Flash-Lite think
    ("gemini-2.5-flash-lite", {"extra_body": {"google": {"thinking_config": {
        "include_thoughts": True}}}}, False),
    # the SDK's top-level google read beside an extra_body.google without thinking_config:
    # the estimate read extra_body's alone and warned of no thinking
    ("gemini-2.0-flash", {"extra_body": {"google": {"safety_settings": []}},
                          "google": {"thinking_config": {"thinking_budget": 1024}}}, True),
    ("gemini-2.5-flash", {"extra_body": {"google": {"thinking_config": {
        "thinking_budget": 0}}}}, False),
    ("gemini-2.5-flash", {"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}},
     False),
    ("gemini-2.0-flash", {"generationConfig": {"thinkingConfig": {"thinkingLevel": "LOW"}}},
     True),
    ("gemini-2.5-pro", {}, True),
])
def test_the_estimate_and_the_simulator_read_geminis_thinking_by_one_rule(
        model: str, extra: dict[str, Any], thinks: bool) -> None:
    """The estimate and the simulator each read Gemini's thinking settings in a request, and
    disagreed where their readings differed (both cases above): one rule reads them now."""
    from batchrunner.config import gemini_thinks
    from batchrunner.estimate import _thinking
    from batchrunner.simulator import _gemini_thinks

    body = {"model": model, "stream": True, "messages": [], **extra}
    assert _gemini_thinks(body, True, gemini_thinks(model)) is thinks
    assert (_thinking(body)[0] is not None) is thinks


FLASH_THINKING = "gemini-2.5-flash-thinking-8192"
FLASH_PRICE = {"input": 0.1, "output": 0.2, "cached_input": 0.01}  # the library's: 0.3 / 2.5


def priced_job(tmp_path: Path, request: str, prices: dict[str, dict[str, float]]) -> Path:
    """A job file over two rows with ``request`` as its [request] lines and ``prices`` as its
    [prices] entries, through a gateway nothing is sent to."""
    inp = models_csv(tmp_path / "in.csv", [FLASH_THINKING, "claude-opus-4-6"])
    entries = "".join(f'[prices."{name}"]\n' + "".join(f"{k} = {v}\n" for k, v in p.items())
                      for name, p in prices.items())
    job = tmp_path / "job.toml"
    job.write_text(f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\n{request}\n'
                   'prompt = "{text}"\nmax_tokens = 1000\n[endpoint]\n'
                   'base_url = "http://127.0.0.1:9/v1"\n[output]\ndir = "out"\n' + entries)
    return job


def test_the_estimate_prices_a_gateways_thinking_name_at_the_jobs_price_for_its_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """[prices."gemini-2.5-flash"] in a job asking gemini-2.5-flash-thinking-8192: the
    estimate priced the rows at the library's price (genai-prices), 9 times the job's."""
    job = priced_job(tmp_path, f'model = "{FLASH_THINKING}"', {"gemini-2.5-flash": FLASH_PRICE})
    assert main(["estimate", str(job)]) == 0
    out = capsys.readouterr().out
    # 2 rows of at most 1,000 completion tokens each and 10 prompt tokens, at 0.1 / 0.2
    assert "  estimated cost: $0.000402 (job [prices])\n" in out, out
    assert "prices no model" not in out and "cached_input" not in out, out


def test_a_price_entry_for_no_model_the_job_asks_is_warned_of_where_its_models_are_known(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """[prices."claude-opus-4.6"] in a job asking claude-opus-4-6 was taken silently, and the
    warning of its missing cached_input spoke of it as if it priced the job's model. A job
    whose rows name their models (model_column) is not warned: its models are not known
    before the rows are read."""
    typo = {"claude-opus-4.6": {"input": 5.0, "output": 25.0}}
    said = ('  warning: [prices."claude-opus-4.6"] prices no model this job asks '
            "(claude-opus-4-6): check its name\n")
    for request, warned in (('model = "claude-opus-4-6"', True),
                            ('model_column = "model"', False)):
        job = priced_job(tmp_path, request, typo)
        assert main(["estimate", str(job)]) == 0
        out = capsys.readouterr().out
        assert (said in out) is warned, out
        assert ("sets no cached_input" in out) is not warned, out


@pytest.mark.anyio
@pytest.mark.parametrize("echoed", [FLASH_THINKING, "gemini-2.5-flash"])
async def test_a_gateways_thinking_name_is_priced_and_budgeted_at_the_jobs_price_for_its_model(
        tmp_path: Path, echoed: str) -> None:
    """The same job, the same tokens: a reply naming gemini-2.5-flash-thinking-8192 (the model
    asked for) was priced at the library's price for gemini-2.5-flash, one naming
    gemini-2.5-flash at the job's, 9 times less; and the budget held each request at the
    library's price (2.5 USD per 1M output tokens: 1,000 of them are more than this budget)."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        return web.json_response({**completion(body, "hi"), "model": echoed})

    server, port = await serve_on_loopback(handler)
    try:
        inp = models_csv(tmp_path / "in.csv", [FLASH_THINKING] * 3)
        job = job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, model=FLASH_THINKING,
                      max_tokens=1000, max_cost_usd=0.002)
        s = await run(replace(job, prices={"gemini-2.5-flash": FLASH_PRICE}))
    finally:
        await server.cleanup()
    assert s.exit_code == 0, s
    df = results(tmp_path)
    assert df["cost_usd"].tolist() == [pytest.approx((12 * 0.1 + 7 * 0.2) / 1e6)] * 3
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert {m["price_source"] for m in report["by_model"].values()} <= {
        "job [prices]", "job [prices] (gemini-2.5-flash)"}, report["by_model"]
