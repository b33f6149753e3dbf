"""Search billed apart from tokens: Grok's live search sources (``usage.num_sources_used``)
and Anthropic's web searches (``usage.server_tool_use.web_search_requests``), recorded per row,
priced, and never left out of the cost silently."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from batchrunner.cli import main
from batchrunner.config import JobConfig, load_job
from batchrunner.errors import ConfigError
from batchrunner.journal import Journal
from batchrunner.pricing import PriceBook, parse_price_table
from batchrunner.report import format_usd
from batchrunner.runner import RunSummary, format_summary
from batchrunner.simulator import Simulator, SimulatorConfig, SimulatorThread
from tests.test_reply_fields import (
    KEY,
    job_for,
    make_csv,
    parse,
    reply,
    results,
    run,
    write_batch,
)

__all__ = ["KEY"]  # the key the job_env fixture sets

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd

# A Grok live search reply (search_parameters), and Claude's web search through a gateway
GROK_USAGE = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
              "num_sources_used": 7}
CLAUDE_USAGE = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
                "server_tool_use": {"web_search_requests": 3}}
SEARCH_TEXTS = ["news today [[sim:citations]]", "weather [[sim:web_search]]", "no search"]


def test_the_search_units_a_reply_reports_are_read() -> None:
    answer = {"role": "assistant", "content": "Here is the news."}
    grok = parse({**reply(answer), "usage": GROK_USAGE})
    assert (grok.sources_used, grok.web_searches) == (7, None)
    claude = parse({**reply(answer), "usage": CLAUDE_USAGE})
    assert (claude.sources_used, claude.web_searches) == (None, 3)
    plain = parse(reply(answer))
    assert (plain.sources_used, plain.web_searches) == (None, None)
    # Sent as text or a float by a gateway, as token counts sometimes are; nonsense is no count
    odd = parse({**reply(answer), "usage": {**GROK_USAGE, "num_sources_used": "4"}})
    assert odd.sources_used == 4
    bad = parse({**reply(answer), "usage": {**GROK_USAGE, "num_sources_used": -1}})
    assert bad.sources_used is None


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_search_units_are_recorded_per_row_streamed_or_not(tmp_path: Path,
                                                                 stream: bool) -> None:
    inp = make_csv(tmp_path / "in.csv", SEARCH_TEXTS)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, stream=stream or None))
    assert s.exit_code == 0
    df = results(tmp_path)
    assert df.loc["r0", "search_units"] == 2  # Grok: the sources it used
    assert df.loc["r1", "search_units"] == 1  # Anthropic: one web search
    assert pd.isna(df.loc["r2", "search_units"])  # not said: null, not 0


@pytest.mark.anyio
async def test_a_journal_written_before_search_units_reads_them_as_null(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", SEARCH_TEXTS)
    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp)
        await run(job)
        (seg,) = Journal(tmp_path / "out").segments()
        pq.write_table(pq.read_table(seg).drop_columns(["search_units"]), seg)
        Journal(tmp_path / "out").check()
        (tmp_path / "out" / "results.parquet").unlink()
        s = await run(job)
    assert s.sent == 0 and s.ok == 3
    assert results(tmp_path)["search_units"].isna().all()


# ----------------------------------------------------------------------------------------------
# Priced: the job's search_unit, else the library's price per web search; never a silent 0


def test_search_units_are_priced_by_the_job_or_the_library_or_not_at_all() -> None:
    own = parse_price_table({"grok-4": {"input": 3, "output": 15, "search_unit": 0.025}},
                            where="jobs/x.toml")
    book = PriceBook(own)
    tokens = (12 * 3 + 30 * 15) / 1_000_000
    assert book.cost("grok-4", prompt_tokens=12, completion_tokens=30) == pytest.approx(tokens)
    assert book.cost("grok-4", prompt_tokens=12, completion_tokens=30,
                     sources=7) == pytest.approx(tokens + 7 * 0.025)
    assert book.cost("grok-4", prompt_tokens=12, completion_tokens=30,
                     web_searches=3) == pytest.approx(tokens + 3 * 0.025)
    # The library lists a price per web search for Anthropic's models, and none per source
    lib = PriceBook()
    price = lib.price("claude-sonnet-4-5")
    assert price is not None and price.web_search is not None and price.search_unit is None
    plain = lib.cost("claude-sonnet-4-5", prompt_tokens=12, completion_tokens=30)
    assert plain is not None
    assert lib.cost("claude-sonnet-4-5", prompt_tokens=12, completion_tokens=30,
                    web_searches=3) == pytest.approx(plain + 3 * price.web_search)
    assert lib.cost("claude-sonnet-4-5", prompt_tokens=12, completion_tokens=30,
                    sources=3) is None
    assert lib.cost("grok-4", prompt_tokens=12, completion_tokens=30, sources=7) is None
    assert lib.cost("grok-4", prompt_tokens=12, completion_tokens=30, sources=0) is not None
    # ...answered again from the disk cache, as a later run reads it
    again = PriceBook().price("claude-sonnet-4-5")
    assert again is not None and again.web_search == price.web_search


@pytest.mark.parametrize(("entry", "fragment"), [
    ({"input": 1, "output": 2, "search_unit": "cheap"},
     "search_unit must be a number (USD per search unit)"),
    ({"input": 1, "output": 2, "search_unit": -0.01}, "search_unit must be a finite number >= 0"),
    ({"input": 1, "output": 2, "search": 0.01},
     "unknown key 'search' (expected input, output, cached_input, cache_write, "
     "cache_write_1h, input_audio, output_audio, search_unit, search_request)"),
    ({"input": 1, "output": 2, "search_request": "2.5c"},
     "search_request must be a number (USD per search request)"),
])
def test_a_bad_search_unit_price_is_refused_naming_it(entry: dict[str, Any],
                                                      fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_price_table({"grok-4": entry}, where="jobs/x.toml")
    assert "jobs/x.toml: [prices.grok-4]" in str(info.value) and fragment in str(info.value)


def search_job(tmp_path: Path, base_url: str, model: str, price: str = "",
               texts: list[str] = SEARCH_TEXTS, **over: Any) -> JobConfig:
    """A job over ``texts`` for ``model``, with ``price`` as its [prices] entry if any."""
    inp = make_csv(tmp_path / "in.csv", texts)
    job = tmp_path / "job.toml"
    job.write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "{model}"\n'
        f'prompt = "Q: {{text}}"\nmax_tokens = 64\n[output]\ndir = "out"\n'
        + (f'[prices."{model}"]\n{price}\n' if price else ""))
    return load_job(job, {"base_url": base_url, **over})


@pytest.mark.anyio
async def test_a_jobs_search_price_is_in_each_rows_cost(tmp_path: Path) -> None:
    price = "input = 3.0\noutput = 15.0\nsearch_unit = 0.025"
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(search_job(tmp_path, sim.base_url, "grok-4", price))
    assert s.exit_code == 0 and s.cost_usd is not None
    df = results(tmp_path)
    tokens = (df["prompt_tokens"] * 3.0 + df["completion_tokens"] * 15.0) / 1_000_000
    assert df["search_units"].fillna(0).tolist() == [2, 1, 0]
    assert (df["cost_usd"] - tokens).round(9).tolist() == [0.05, 0.025, 0.0]
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["cost_complete"] is True
    assert report["search_units"] == {"total": 3, "rows": 2, "unpriced_rows": 0}
    assert report["cost_usd"] == pytest.approx(df["cost_usd"].sum())


@pytest.mark.anyio
async def test_a_search_price_set_alone_takes_the_token_prices_from_the_library(
        tmp_path: Path) -> None:
    """The run's hint, 'set search_unit under [prices."grok-4"]', followed as printed: the
    entry was refused for want of input and output, which the library knows. The rows answered
    before it are priced at the next run, their tokens at the library's price."""
    known = PriceBook().price("grok-4")
    assert known is not None
    async with Simulator(SimulatorConfig()) as sim:
        first = await run(search_job(tmp_path, sim.base_url, "grok-4"))
        assert first.cost_usd is None and first.cost_unknown == 2
        assert 'set search_unit under [prices."grok-4"]' in format_summary(first)
        s = await run(search_job(tmp_path, sim.base_url, "grok-4", "search_unit = 0.025"))
        assert sim.stats()["requests"] == 3  # the rows answered before are priced, not sent
    assert s.exit_code == 0 and s.cost_usd is not None and not s.cost_unknown
    df = results(tmp_path)
    tokens = (df["prompt_tokens"] * known.input + df["completion_tokens"] * known.output) / 1e6
    assert (df["cost_usd"] - tokens).round(9).tolist() == [0.05, 0.025, 0.0]
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["cost_complete"] is True
    assert report["by_model"]["grok-4"]["price_source"].startswith("job [prices] and genai-prices")


@pytest.mark.anyio
async def test_claudes_web_searches_are_priced_at_the_librarys_price(tmp_path: Path) -> None:
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(search_job(tmp_path, sim.base_url, "claude-sonnet-4-5"))
    df = results(tmp_path)
    price = PriceBook().price("claude-sonnet-4-5")
    assert price is not None and price.web_search
    assert df.loc["r1", "search_units"] == 1
    tokens = PriceBook().cost("claude-sonnet-4-5", prompt_tokens=int(df.loc["r1", "prompt_tokens"]),
                              completion_tokens=int(df.loc["r1", "completion_tokens"]))
    assert tokens is not None
    assert df.loc["r1", "cost_usd"] == pytest.approx(tokens + price.web_search)
    # Grok-shaped sources under a Claude model: no price per source, so no cost, not a silent 0
    assert pd.isna(df.loc["r0", "cost_usd"]) and df.loc["r0", "search_units"] == 2
    assert s.cost_usd is None and s.cost_unknown == 1


@pytest.mark.anyio
async def test_search_with_no_price_leaves_the_cost_incomplete_and_says_what_to_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Simulator(SimulatorConfig()) as sim:
        job = search_job(tmp_path, sim.base_url, "grok-4")
        s = await run(job)
    assert s.exit_code == 0
    df = results(tmp_path)
    # Neither its sources nor its web search has a price: unknown, not the tokens' alone
    assert df["cost_usd"].isna().tolist() == [True, True, False]
    assert s.cost_usd is None and s.cost_unknown == 2
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["cost_complete"] is False and report["rows"]["cost_unknown"] == 2
    assert report["search_units"] == {"total": 3, "rows": 2, "unpriced_rows": 2}
    assert report["by_model"]["grok-4"]["search_unpriced_rows"] == 2
    warning = next(w for w in report["warnings"] if "search" in w)
    assert ("model 'grok-4': 2 rows used search billed apart from tokens (3 search units in "
            "all: sources or web searches)") in warning
    assert 'set search_unit (USD per unit) in the job file under [prices."grok-4"]' in warning
    md = (tmp_path / "out" / "cost_report.md").read_text()
    assert ", and 2 rows without a cost (see warnings) |" in md
    assert "Search units (sources, web searches) | 3" in md
    assert main(["status", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert ("(plus 2 rows without a cost: search with no price when answered (search_unit in "
            "[prices]))") in out


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_rehearsal_of_groks_live_search_bills_its_sources_as_grok_does(
        tmp_path: Path, stream: bool) -> None:
    """The gateway reference's Grok examples, search_parameters in mode "auto" and "on", were
    answered by the simulator with no sources and no citations: a rehearsal showed search as
    free, its cost the tokens' alone. They are answered as Grok does, with citations and the
    sources billed (num_sources_used); mode "off", and another model, search nothing."""
    modes = {"auto": True, "on": True, "off": False}
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps({
        "custom_id": f"{model} {mode}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "max_tokens": 64, "stream": stream,
                 "messages": [{"role": "user", "content": "What are the latest tech news?"}],
                 "search_parameters": {"mode": mode, "return_citations": True}}}) + "\n"
        for model in ("grok-4", "gpt-4o") for mode in modes))
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "batch.jsonl"\n[output]\ndir = "out"\n'
        '[prices."grok-4"]\ninput = 3.0\noutput = 15.0\nsearch_unit = 0.025\n')
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(load_job(tmp_path / "job.toml", {"base_url": sim.base_url}))
    assert s.exit_code == 0
    df = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("custom_id")
    searched = [f"grok-4 {mode}" for mode, search in modes.items() if search]
    assert df.index[df["search_units"].fillna(0) > 0].tolist() == searched
    assert df.index[df["citations"].notna()].tolist() == searched
    grok = df.loc[[f"grok-4 {mode}" for mode in modes]]
    tokens = (grok["prompt_tokens"] * 3.0 + grok["completion_tokens"] * 15.0) / 1_000_000
    assert (grok["cost_usd"] - tokens).round(9).tolist() == [
        round(0.025 * units, 9) for units in grok["search_units"].fillna(0)]


@pytest.mark.anyio
async def test_the_budget_stops_at_search_it_cannot_price(tmp_path: Path) -> None:
    """A budget cannot be kept over search it cannot count: the first reply that reports
    search units with no price stops the job (resumable) rather than spend past max_cost_usd
    unseen."""
    price = "input = 3.0\noutput = 15.0"  # tokens priced, search not
    texts = [f"news {i} [[sim:citations]]" for i in range(40)]
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(search_job(tmp_path, sim.base_url, "grok-4", price, texts,
                                 max_cost_usd=50.0, concurrency=1))
        assert sim.stats()["requests"] < 40
    assert s.exit_code == 4 and s.stopped
    assert "max_cost_usd is set but model 'grok-4' answers with search" in s.stopped
    assert 'add search_unit (USD per unit) to [prices."grok-4"]' in s.stopped


# ----------------------------------------------------------------------------------------------
# The estimate cannot count search the replies count: it says so. Search billed per request
# it counts, at the job's search_request price, or says what to set.


def estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, extra: str, *,
             max_tokens: int, prices: str = "") -> str:
    """What ``batchrunner estimate`` prints for a job of two rows asking ``model`` with
    ``extra`` in its [request.extra] and ``prices`` as the model's [prices] entry, if any."""
    inp = make_csv(tmp_path / "in.csv", ["latest AI news", "weather in Guangzhou"])
    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "{model}"\n'
        f'prompt = "{{text}}"\nmax_tokens = {max_tokens}\n[request.extra]\n{extra}\n'
        '[endpoint]\nbase_url = "http://127.0.0.1:9/v1"\n[output]\ndir = "out"\n'
        + (f'[prices."{model}"]\n{prices}\n' if prices else ""))
    assert main(["estimate", str(tmp_path / "job.toml")]) == 0
    return str(capsys.readouterr().out)


@pytest.mark.parametrize(("extra", "said", "per_request"), [
    ('search_parameters = { mode = "auto" }', "(search_parameters)", False),
    ('web_search_options = { search_context_size = "medium" }', "(web_search_options)", True),
    ('tools = [{ googleSearch = {} }]', "(tools: googleSearch)", True),
    # grok-4's function of that name is the job's own: it runs the search
    ('tools = [{ type = "function", function = { name = "googleSearch" } }]', None, False),
    ('parameters = { enable_search = true }', "(parameters.enable_search)", True),
    ('search_parameters = { mode = "off" }', None, False),
    ('temperature = 0.2', None, False),
])
def test_the_estimate_warns_that_search_is_not_in_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, said: str | None,
        per_request: bool) -> None:
    out = estimate(tmp_path, capsys, "grok-4", extra, max_tokens=64)
    warning = ("  warning: 2 rows ask for search " + (said or "") + ": it is billed apart from "
               "tokens, by the sources or searches each reply uses, and is not in this estimate")
    assert (warning in out) is (said is not None and not per_request), out
    priced = ("  warning: 2 rows ask for search billed per request " + (said or "")
              + '; set search_request (USD per request) under [prices."grok-4"] in a job file '
              "for its cost to be known")
    assert (priced in out) is per_request, out
    # grok-4's tokens have the library's price: the estimate gives it, the search apart
    assert ("and the search each row asks for, which has no price: set search_request (below)"
            in out) is per_request, out
    assert "estimated cost: unknown" not in out, out
    assert said is not None or "search" not in out


def test_the_estimate_of_a_priced_model_whose_search_has_no_price_says_what_to_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model the job prices, asked for search billed per request without a search_request
    price: the estimate's cost line said to add [prices."MODEL"], which the job has, and hid
    what its tokens cost; it now gives that, and names what is missing."""
    out = estimate(tmp_path, capsys, "gpt-4o-mini",
                   'web_search_options = { search_context_size = "low" }', max_tokens=100,
                   prices="input = 0\noutput = 10")
    assert "add [prices" not in out, out
    assert ("estimated cost: $0.002 and the search each row asks for, which has no price: set "
            'search_request (below)') in out, out
    assert 'set search_request (USD per request) under [prices."gpt-4o-mini"]' in out, out


def test_the_estimate_of_a_batch_file_warns_of_its_rows_search(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [("what happened today", {"model": "gpt-4o-mini-search-preview"}),
            ("news about AI", {"model": "claude-sonnet-4-5",
                   "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            ("a haiku", {"model": "gpt-4o-mini"})]
    path = write_batch(tmp_path / "batch.jsonl", rows)
    assert main(["estimate", "--input", str(path), "--base-url", "http://127.0.0.1:9/v1",
                 "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "warning: 1 row asks for search (tools: web_search_20250305): it is billed" in out
    assert ("warning: 1 row asks for search billed per request (model "
            "gpt-4o-mini-search-preview); set search_request (USD per request) under "
            '[prices."gpt-4o-mini-search-preview"]') in out


def test_the_estimates_search_warnings_name_every_way_the_rows_ask_for_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A batch file whose rows ask for search in different ways (the seeds' Grok
    search_parameters, Claude's web_search_options; Qwen's enable_search in parameters, a
    search model): each warning named the first row's way only, as if every row asked so."""
    rows = [("news", {"model": "grok-4", "search_parameters": {"mode": "auto"}}),
            ("weather", {"model": "claude-opus-4-6",
                         "web_search_options": {"search_context_size": "medium"}}),
            ("more news", {"model": "grok-4", "search_parameters": {"mode": "on"}}),
            ("Fermat", {"model": "qwen3-omni-flash", "stream": True,
                        "parameters": {"enable_search": True}}),
            ("today", {"model": "gpt-4o-mini-search-preview"})]
    path = write_batch(tmp_path / "batch.jsonl", rows)
    assert main(["estimate", "--input", str(path), "--base-url", "http://127.0.0.1:9/v1",
                 "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert ("warning: 3 rows ask for search (search_parameters for 2, web_search_options for "
            "1): it is billed apart from tokens") in out, out
    assert ("warning: 2 rows ask for search billed per request (parameters.enable_search for "
            "1, model gpt-4o-mini-search-preview for 1); set search_request") in out, out


# Rows answered before search_unit was set: two in one try, one after a connection reset once
# sent (a try that may have been billed with no usage said), and one without search.
BEFORE_THE_PRICE = [*SEARCH_TEXTS, "sports [[sim:reset*1]][[sim:citations]]"]
TOKEN_PRICE = "input = 3.0\noutput = 15.0"


@pytest.mark.anyio
async def test_once_search_is_priced_the_report_no_longer_asks_to_price_it(
        tmp_path: Path) -> None:
    """The budget stop says to set search_unit; once set, the report does not ask for the price
    the job now has, and says why the row it still cannot price has no cost."""
    async with Simulator(SimulatorConfig()) as sim:
        await run(search_job(tmp_path, sim.base_url, "grok-4", TOKEN_PRICE,
                             texts=BEFORE_THE_PRICE))
        again = await run(search_job(tmp_path, sim.base_url, "grok-4",
                                     TOKEN_PRICE + "\nsearch_unit = 0.025",
                                     texts=BEFORE_THE_PRICE))
    assert again.sent == 0 and again.cost_unknown == 1
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["cost_complete"] is False  # the row reset once sent: not priced since
    (warning,) = [w for w in report["warnings"] if "search" in w]
    assert "1 row used search" in warning and "when it had no price, cost not counted" in warning
    assert "set search_unit" not in warning


@pytest.mark.anyio
async def test_rows_answered_before_their_search_price_was_set_are_priced_by_the_next_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job answered with no search_unit, then rerun once it is set: the rows answered before
    kept no cost, so the results, the reports, status and the next run's budget left their
    search and tokens out of the job's cost. The rerun prices each from its usage as the
    journal records it, where no other try of the row may have been billed (the row whose
    first try's connection was reset once sent may have been: its cost stays unknown), and all
    four read that cost."""
    async with Simulator(SimulatorConfig()) as sim:
        first = await run(search_job(tmp_path, sim.base_url, "grok-4", TOKEN_PRICE,
                                     texts=BEFORE_THE_PRICE))
        assert first.cost_unknown == 3
        again = await run(search_job(tmp_path, sim.base_url, "grok-4",
                                     TOKEN_PRICE + "\nsearch_unit = 0.025",
                                     texts=BEFORE_THE_PRICE))
        assert again.sent == 0 and again.cost_unknown == 1
        df = results(tmp_path)
        tokens = (df["prompt_tokens"] * 3.0 + df["completion_tokens"] * 15.0) / 1_000_000
        searched = (df["cost_usd"] - tokens).round(9)
        assert searched.tolist()[:3] == [0.05, 0.025, 0.0] and pd.isna(df["cost_usd"].iloc[3])
        report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
        assert report["cost_usd"] is None  # a row without a cost
        assert report["cost_known_usd"] == pytest.approx(df["cost_usd"].sum())
        # At least: the row reset once sent may have been billed, with no usage said.
        assert (f"cost: at least {format_usd(report['cost_known_usd'])} for the job"
                in format_summary(again))
        assert main(["status", str(tmp_path / "out")]) == 0
        shown = (f"cost so far at least {format_usd(report['cost_known_usd'])} (of which search "
                 f"{format_usd(report['search_cost_usd'])}) (plus 1 row without a cost")
        assert shown in capsys.readouterr().out
        # The budget holds what the job has cost, and the reset try's estimate: a new row
        # could pass a budget of that much.
        spent = report["cost_known_usd"] + report["cost_unreported"]["estimated_usd"]
        assert report["cost_unreported"]["rows"] == 1 and spent > report["cost_known_usd"]
        stopped = await run(search_job(tmp_path, sim.base_url, "grok-4",
                                       TOKEN_PRICE + "\nsearch_unit = 0.025",
                                       texts=[*BEFORE_THE_PRICE, "one more"],
                                       max_cost_usd=report["cost_known_usd"] + 1e-6))
    assert stopped.sent == 0 and stopped.exit_code == 4
    assert f"({format_usd(spent)} spent when it stopped)" in str(stopped.stopped)


@pytest.mark.anyio
async def test_rows_priced_by_a_run_started_in_the_second_the_last_one_did_keep_their_cost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows a rerun prices are written again with their cost, as they were otherwise: the
    copy wins over the record it repeats by its segment's place after it. A run id is its
    second and a random tag, so a rerun in the same second (a short job rerun at once, or a
    clock set back) had its copy sort before the last run's segment half the time: the rows
    kept no cost, and the job's prices, now recorded, never priced them again. The ids here
    are such a pair."""
    ids = iter(["20260101T020000-ffffff", "20260101T020000-000000", "20260101T020000-000001"])
    monkeypatch.setattr("batchrunner.runner.new_run_id", lambda: next(ids))
    async with Simulator(SimulatorConfig()) as sim:
        first = await run(search_job(tmp_path, sim.base_url, "grok-4", TOKEN_PRICE))
        assert first.cost_unknown == 2
        again = await run(search_job(tmp_path, sim.base_url, "grok-4",
                                     TOKEN_PRICE + "\nsearch_unit = 0.025"))
    assert again.sent == 0 and again.cost_unknown == 0
    df = results(tmp_path)
    tokens = (df["prompt_tokens"] * 3.0 + df["completion_tokens"] * 15.0) / 1_000_000
    assert (df["cost_usd"] - tokens).round(9).tolist() == [0.05, 0.025, 0.0]


@pytest.mark.anyio
async def test_the_budget_holds_the_search_of_the_requests_in_flight(tmp_path: Path) -> None:
    """Each reply's sources cost $2 and its tokens next to nothing: once a reply has shown what
    search costs, each request sent holds that much of the budget too, so the replies of the
    requests in flight do not carry the spend past max_cost_usd."""
    price = "input = 0.001\noutput = 0.001\nsearch_unit = 1.0"  # 2 sources a reply: $2
    texts = [f"news {i} [[sim:citations]]" for i in range(40)]
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(search_job(tmp_path, sim.base_url, "grok-4", price, texts,
                                 max_cost_usd=20.0, concurrency=4))
    assert s.exit_code == 4 and s.stopped and s.stopped.startswith("budget reached")
    assert s.cost_usd is not None and 8.0 <= s.cost_usd <= 20.0
    assert results(tmp_path)["cost_usd"].sum() == pytest.approx(s.cost_usd)


# ----------------------------------------------------------------------------------------------
# Odd usage: counts no journal column can hold, search units reported twice over


async def _serve_usage(tmp_path: Path, usages: dict[str, dict[str, Any]], price: str,
                       **over: Any) -> Any:
    """Run a job over ``usages``' rows (their text) against a server whose reply to each
    carries that usage; the run's summary."""
    from aiohttp import web

    from tests.servers import serve_on_loopback

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        text = body["messages"][-1]["content"].removeprefix("Q: ")
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "grok-4",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": usages[text]})

    runner, port = await serve_on_loopback(handler)
    try:
        return await run(search_job(tmp_path, f"http://127.0.0.1:{port}/v1", "grok-4", price,
                                    list(usages), **over))
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_a_count_past_64_bits_is_no_count_and_the_rows_are_kept(tmp_path: Path) -> None:
    """A gateway that reports -1 as an unsigned 64-bit number (18446744073709551615) sent a
    count no int64 column holds: the journal's write raised, and the run ended in a traceback
    with the answers of its last second unsaved. Such a count is no count (null), as text or
    a float too large for one is."""
    u64 = 2 ** 64 - 1
    usages = {"a": {**GROK_USAGE, "num_sources_used": u64},
              "b": {**CLAUDE_USAGE, "server_tool_use": {"web_search_requests": u64}},
              "c": {**GROK_USAGE, "completion_tokens": u64, "total_tokens": u64},
              "d": GROK_USAGE}
    s = await _serve_usage(tmp_path, usages, "input = 3.0\noutput = 15.0\nsearch_unit = 0.025")
    assert s.exit_code == 0 and s.ok == 4
    df = results(tmp_path)
    assert df["search_units"].isna().tolist() == [True, True, False, False]
    assert pd.isna(df.loc["r2", "completion_tokens"]) and pd.isna(df.loc["r2", "cost_usd"])
    assert df.loc["r3", "search_units"] == 7


@pytest.mark.anyio
async def test_a_reply_reporting_both_kinds_of_search_is_priced_as_its_row_records_it(
        tmp_path: Path) -> None:
    """A gateway that passes on both fields (Anthropic's web searches, 0 when none, beside
    Grok's sources) had its row record one count and its cost price the two: a cost the row's
    search_units and the report's total did not explain, the sources counted as 0 searches.
    The row's search units are its web searches when it made any, else its sources; its cost
    prices those."""
    usages = {"a": {**GROK_USAGE, "server_tool_use": {"web_search_requests": 3}},
              "b": {**GROK_USAGE, "server_tool_use": {"web_search_requests": 0}},
              "c": {**GROK_USAGE, "num_sources_used": 0,
                    "server_tool_use": {"web_search_requests": 0}}}
    s = await _serve_usage(tmp_path, usages, "input = 3.0\noutput = 15.0\nsearch_unit = 0.025")
    assert s.exit_code == 0
    df = results(tmp_path)
    assert df["search_units"].tolist() == [3, 7, 0]
    tokens = (df["prompt_tokens"] * 3.0 + df["completion_tokens"] * 15.0) / 1_000_000
    assert ((df["cost_usd"] - tokens) / 0.025).round(6).tolist() == [3, 7, 0]
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["search_units"] == {"total": 10, "rows": 2, "unpriced_rows": 0}



async def gives_up_first(tmp_path: Path, usage: dict[str, Any], price: str, texts: list[str],
                         *, when: Callable[[str], bool] = bool, **over: Any
                         ) -> tuple[RunSummary, dict[str, int]]:
    """Run a grok-4 job over ``texts`` priced by ``price`` against a server that gives up on
    the first try of each row whose text is ``when`` (finish_reason error) with ``usage``
    (billed, no usable answer), and otherwise answers, using no sources: the run's summary,
    and the tries by prompt."""
    from aiohttp import web

    from tests.servers import serve_on_loopback

    tries: dict[str, int] = {}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        text = body["messages"][-1]["content"]
        tries[text] = tries.get(text, 0) + 1
        gave_up = tries[text] == 1 and when(text)
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "grok-4",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "error" if gave_up else "stop"}],
            "usage": usage if gave_up else {**GROK_USAGE, "num_sources_used": 0}})

    runner, port = await serve_on_loopback(handler)
    try:
        s = await run(search_job(tmp_path, f"http://127.0.0.1:{port}/v1", "grok-4", price,
                                 texts, **over))
    finally:
        await runner.cleanup()
    return s, tries


@pytest.mark.anyio
async def test_the_budget_stops_at_a_billed_try_whose_search_it_cannot_price(
        tmp_path: Path) -> None:
    """A try billed without a usable answer (the server gave up on it: finish_reason error)
    that reported sources with no price for them cost what the budget cannot count, as an
    answer's does; it went uncounted (its cost unknown, so not carried), and the job ran on
    under max_cost_usd. It now stops the job as such an answer does, its tokens counted."""
    s, tries = await gives_up_first(tmp_path, GROK_USAGE, "input = 3.0\noutput = 15.0",
                                    [f"q{i}" for i in range(20)], max_cost_usd=50.0,
                                    concurrency=1)
    assert s.exit_code == 4 and s.stopped
    assert "max_cost_usd is set but model 'grok-4' answers with search" in s.stopped
    assert len(tries) < 20


@pytest.mark.anyio
async def test_a_billed_try_teaches_the_budget_what_search_costs(tmp_path: Path) -> None:
    """Each row's first try is billed without a usable answer (the server gave up on it) for
    2 sources at $1 each; its second is answered, using none. The budget's hold learnt what
    search costs from answers only, so the requests in flight were held next to nothing and
    their billed tries carried the spend past max_cost_usd. A billed try teaches the hold as
    an answer does: the job stops with the spend within the budget."""
    s, _ = await gives_up_first(tmp_path, {**GROK_USAGE, "num_sources_used": 2},
                                "input = 0.001\noutput = 0.001\nsearch_unit = 1.0",
                                [f"q{i}" for i in range(40)], max_cost_usd=20.0, concurrency=4)
    assert s.exit_code == 4 and s.stopped and s.stopped.startswith("budget reached")
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    spent = report["cost_usd"] + report["cost_earlier_attempts_usd"]
    assert 8.0 <= spent <= 20.0


# ----------------------------------------------------------------------------------------------
# Search billed per request that the usage does not count: OpenAI's search models and
# web_search_options, Gemini's Google Search tool, Qwen's enable_search


def test_the_search_a_request_asks_for_per_request_is_told_from_its_body() -> None:
    from batchrunner.pricing import search_requested

    assert search_requested({"model": "gpt-4o-search-preview"}) == "model gpt-4o-search-preview"
    assert search_requested({"model": "x", "web_search_options": {}}) == "web_search_options"
    assert search_requested({"model": "x", "enable_search": True}) == "enable_search"
    assert search_requested({"model": "qwen3-omni-flash", "parameters": {
        "enable_search": True}}) == "parameters.enable_search"
    assert search_requested({"model": "gemini-3-pro-preview", "tools": [
        {"type": "function", "function": {"name": "googleSearch"}}]}) == "tools: googleSearch"
    assert search_requested({"model": "x", "extra_body": {"google": {"tools": [
        {"googleSearch": {}}]}}}) == "extra_body.google.tools: googleSearch"
    # Search whose replies count it (search units), or none at all
    assert search_requested({"model": "grok-4", "search_parameters": {"mode": "on"}}) is None
    assert search_requested({"model": "claude-sonnet-4-5", "tools": [
        {"type": "web_search_20250305", "name": "web_search"}]}) is None
    assert search_requested({"model": "x", "parameters": {"enable_search": False},
                             "tools": [{"type": "function", "function": {"name": "f"}}]}) is None
    # A function of the job's own named so, for a model that is not Gemini: the job runs it
    # (every row's cost was unknown, and a budget job stopped at its first reply)
    own = [{"type": "function", "function": {"name": "google_search", "parameters": {}}}]
    assert search_requested({"model": "gpt-4o-mini", "tools": own}) is None
    assert search_requested({"model": "gemini-2.5-flash", "tools": own}) == "tools: google_search"
    assert search_requested({"model": "x", "tools": [{"type": "google_search"}]}) == \
        "tools: google_search"
    book = PriceBook(parse_price_table(
        {"gpt-4o-search-preview": {"input": 2.5, "output": 10, "search_request": 0.03}},
        where="jobs/x.toml"))
    tokens = (12 * 2.5 + 30 * 10) / 1_000_000
    assert book.cost("gpt-4o-search-preview", prompt_tokens=12, completion_tokens=30,
                     search_requests=1) == pytest.approx(tokens + 0.03)
    # The library has no such price: unknown, never the tokens' alone
    assert PriceBook().cost("gpt-4o", prompt_tokens=12, completion_tokens=30,
                            search_requests=1) is None


def _report(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "out" / "cost_report.json").read_text()))


@pytest.mark.anyio
async def test_a_search_models_requests_are_priced_per_request_in_rows_and_reports(
        tmp_path: Path) -> None:
    model = "gpt-4o-mini-search-preview"
    price = "input = 0.15\noutput = 0.6\nsearch_request = 0.0275"
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(search_job(tmp_path, sim.base_url, model, price, ["news", "weather"]))
    assert s.exit_code == 0 and s.cost_usd is not None
    df = results(tmp_path)
    tokens = (df["prompt_tokens"] * 0.15 + df["completion_tokens"] * 0.6) / 1_000_000
    assert df["search_requests"].tolist() == [1, 1]
    assert (df["cost_usd"] - tokens).round(9).tolist() == [0.0275, 0.0275]
    report = _report(tmp_path)
    assert report["cost_complete"] is True
    assert report["search_requests"] == {"rows": 2, "unpriced_rows": 0}
    assert report["cost_usd"] == pytest.approx(df["cost_usd"].sum()) == s.cost_usd
    md = (tmp_path / "out" / "cost_report.md").read_text()
    assert "Search requests (billed per request) | 2" in md
    assert "0.15 / 0.15 / 0.6 + 0.0275 a search request" in md


@pytest.mark.anyio
async def test_search_per_request_with_no_price_leaves_the_cost_unknown_and_says_what_to_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job through a gateway asking Gemini for its Google Search tool, Qwen for
    enable_search or OpenAI for web_search_options paid a fee a request that no cost showed:
    the rows' costs were their tokens' alone, the report's total complete. Without a price
    for it, each such row's cost is unknown, and the reports say what to set."""
    inp = make_csv(tmp_path / "in.csv", ["weather in Guangzhou", "news"])
    extra = {"tools": [{"googleSearch": {}}]}  # as Gemini's API takes it, whatever the model
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, extra=extra))
    assert s.exit_code == 0 and s.cost_usd is None and s.cost_unknown == 2
    df = results(tmp_path)
    assert df["cost_usd"].isna().all() and df["search_requests"].tolist() == [1, 1]
    report = _report(tmp_path)
    assert report["cost_complete"] is False and report["rows"]["cost_unknown"] == 2
    assert report["search_requests"] == {"rows": 2, "unpriced_rows": 2}
    assert report["by_model"]["gpt-4o-mini"]["search_request_unpriced_rows"] == 2
    (warning,) = [w for w in report["warnings"] if "search" in w]
    assert warning == (
        "model 'gpt-4o-mini': 2 rows asked for search billed per request (a search model, "
        "web_search_options, a Google Search tool, enable_search) with no price known for it, "
        'cost not counted; set search_request (USD per request) in the job file under '
        '[prices."gpt-4o-mini"]')
    assert "| unknown: 2 rows without a cost (see warnings) |" in (
        tmp_path / "out" / "cost_report.md").read_text()
    assert main(["status", str(tmp_path / "out")]) == 0
    assert ("cost so far unknown: 2 rows without a cost (search with no price when answered "
            "(search_request in [prices]))") in capsys.readouterr().out


@pytest.mark.anyio
async def test_search_the_reply_counts_is_priced_per_unit_not_per_request(
        tmp_path: Path) -> None:
    """web_search_options to Claude through a gateway: its reply counts the searches it made
    (search units), priced per unit; the request is not charged a second time per request,
    nor one whose reply says it made none."""
    inp = make_csv(tmp_path / "in.csv", ["weather [[sim:web_search]]", "no search"])
    prices = {"gpt-4o-mini": {"input": 0.15, "output": 0.6, "search_unit": 0.01,
                              "search_request": 5.0}}
    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp, extra={"web_search_options": {}})
        s = await run(replace(job, prices=prices))
    assert s.exit_code == 0
    df = results(tmp_path)
    assert df.loc["r0", "search_units"] == 1 and pd.isna(df.loc["r0", "search_requests"])
    assert pd.isna(df.loc["r1", "search_units"]) and df.loc["r1", "search_requests"] == 1
    tokens = (df["prompt_tokens"] * 0.15 + df["completion_tokens"] * 0.6) / 1_000_000
    assert (df["cost_usd"] - tokens).round(9).tolist() == [0.01, 5.0]


@pytest.mark.anyio
async def test_the_budget_stops_at_search_per_request_it_cannot_price(tmp_path: Path) -> None:
    """A batch file's rows each ask in a body of their own: the budget stops the job at the
    first reply whose search has no price (a template job is refused before it sends, below)."""
    model = "gpt-4o-mini-search-preview"
    write_batch(tmp_path / "batch.jsonl", [(f"news {i}", {"model": model}) for i in range(40)])
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "batch.jsonl"\n[output]\ndir = "out"\n'
        f'[prices."{model}"]\ninput = 0.15\noutput = 0.6\n')
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(load_job(tmp_path / "job.toml", {
            "base_url": sim.base_url, "max_cost_usd": 50.0, "concurrency": 1}))
        assert sim.stats()["requests"] < 40
    assert s.exit_code == 4 and s.stopped
    assert ("max_cost_usd is set but model 'gpt-4o-mini-search-preview' is asked for search "
            "billed per request") in s.stopped
    assert 'add search_request (USD per request) to [prices."gpt-4o-mini-search-preview"]' \
        in s.stopped


def budget_job(tmp_path: Path, model: str, extra: str, price: str) -> Path:
    """A job file of 20 rows asking ``model`` with ``extra`` in its [request.extra] under a
    budget, with ``price`` as its [prices] entry if any."""
    inp = make_csv(tmp_path / "in.csv", [f"latest news {i}" for i in range(20)])
    job = tmp_path / "job.toml"
    job.write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "{model}"\n'
        f'prompt = "{{text}}"\nmax_tokens = 64\n[request.extra]\n{extra}\n'
        '[limits]\nmax_cost_usd = 1.0\n[output]\ndir = "out"\n'
        + (f'[prices."{model}"]\n{price}\n' if price else ""))
    return job


@pytest.mark.parametrize(("model", "extra", "said"), [
    # Gemini's Google Search tool: a wave of requests went out before the first reply stopped
    # the job (exit 4); the job says what it asks for, so it is refused before any is sent
    ("gemini-3-pro-preview", "tools = [{ googleSearch = {} }]",
     "is asked for search billed per request (tools: googleSearch)"),
    ("gemini-3-pro-preview", '[request.extra.extra_body.google]\ntools = [{ google_search = {} }]',
     "is asked for search billed per request (extra_body.google.tools: google_search)"),
    ("gpt-4o-mini", 'web_search_options = { search_context_size = "low" }',
     "is asked for search billed per request (web_search_options)"),
    ("gpt-4o-mini-search-preview", "",
     "is asked for search billed per request (model gpt-4o-mini-search-preview)"),
    ("qwen-plus", "enable_search = true", "is asked for search billed per request "
     "(enable_search)"),
    # Grok's live search, on or left to the model: each reply's sources have no price
    ("grok-4", 'search_parameters = { mode = "on" }',
     "is asked for search billed per source its replies report (search_parameters)"),
    ("grok-4", 'search_parameters = { mode = "auto", return_citations = true }',
     "is asked for search billed per source its replies report (search_parameters)"),
    ("grok-4", "search_parameters = { return_citations = true }",  # xAI's default: "auto"
     "is asked for search billed per source its replies report (search_parameters)"),
])
def test_a_budget_refuses_search_it_cannot_price_before_any_request(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, extra: str,
        said: str) -> None:
    """Under a budget, search the job's settings ask for and no price covers: refused as a
    model with no price is, one line naming the field to add, exit 2, nothing sent."""
    price = "input = 0\noutput = 0" if PriceBook().price(model) is None else ""
    job = budget_job(tmp_path, model, extra, price)
    key = "search_unit (USD per unit)" if model == "grok-4" else "search_request (USD per request)"
    with SimulatorThread(SimulatorConfig()) as sim:
        code = main(["run", str(job), "--base-url", sim.base_url, "--progress", "none"])
        assert sim.stats()["requests"] == 0
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip() == (
        f"batchrunner: error: max_cost_usd is set but model {model!r} {said} and no price is "
        f"known for it, so the budget cannot be kept: add {key} to [prices.\"{model}\"] in a "
        "job file"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("model", "extra", "price"), [
    # The search priced, set alone as the refusal says: the tokens at the library's price
    ("gemini-3-pro-preview", "tools = [{ googleSearch = {} }]", "search_request = 0.001"),
    ("grok-4", 'search_parameters = { mode = "on" }', "search_unit = 0.001"),
    # No search asked for, or search its replies count that is priced (Claude's web search)
    ("grok-4", 'search_parameters = { mode = "off" }', ""),
    ("gpt-4o-mini", 'tools = [{ type = "function", function = { name = "googleSearch" } }]', ""),
    ("claude-sonnet-4-5", 'web_search_options = { search_context_size = "low" }', ""),
])
def test_a_budget_runs_search_it_can_price(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, extra: str,
        price: str) -> None:
    job = budget_job(tmp_path, model, extra, price)
    with SimulatorThread(SimulatorConfig(reply_tokens=5)) as sim:
        code = main(["run", str(job), "--base-url", sim.base_url, "--progress", "none"])
        assert sim.stats()["requests"] == 20
    assert code == 0, capsys.readouterr().err


def test_a_budget_with_search_set_by_the_rows_is_held_at_the_first_reply(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows that set a field that can ask for search (from_columns) may ask otherwise than the
    job: not refused up front, the first reply whose search has no price stops the job."""
    inp = tmp_path / "in.csv"
    inp.write_text("id,text,search\n" + "".join(f'r{i},news {i},"{{""mode"": ""on""}}"\n'
                                                 for i in range(20)))
    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "grok-4"\n'
        'prompt = "{text}"\nmax_tokens = 64\n'
        '[request.from_columns]\nsearch_parameters = "search"\n'
        '[limits]\nmax_cost_usd = 1.0\nconcurrency = 1\n[output]\ndir = "out"\n')
    with SimulatorThread(SimulatorConfig()) as sim:
        code = main(["run", str(tmp_path / "job.toml"), "--base-url", sim.base_url,
                     "--progress", "none"])
        assert 0 < sim.stats()["requests"] < 20
    err = capsys.readouterr().err
    assert code == 4, err


@pytest.mark.anyio
async def test_the_budget_holds_the_search_fee_of_the_requests_in_flight(tmp_path: Path) -> None:
    price = "input = 0.001\noutput = 0.001\nsearch_request = 2.0"
    texts = [f"news {i}" for i in range(40)]
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(search_job(tmp_path, sim.base_url, "gpt-4o-mini-search-preview", price,
                                 texts, max_cost_usd=20.0, concurrency=4))
    assert s.exit_code == 4 and s.stopped and s.stopped.startswith("budget reached")
    assert s.cost_usd is not None and 8.0 <= s.cost_usd <= 20.0


@pytest.mark.anyio
async def test_the_estimate_counts_search_per_request_at_its_price(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = estimate(tmp_path, capsys, "qwen-plus", "parameters = { enable_search = true }",
                   max_tokens=10, prices="input = 0\noutput = 0\nsearch_request = 0.004")
    assert "estimated cost: $0.008 (job [prices])" in out
    assert ("search: 2 rows ask for search billed per request (parameters.enable_search), in "
            "the estimate at search_request") in out


@pytest.mark.anyio
async def test_a_journal_written_before_search_requests_reads_them_as_null(
        tmp_path: Path) -> None:
    async with Simulator(SimulatorConfig()) as sim:
        job = search_job(tmp_path, sim.base_url, "gpt-4o-mini-search-preview",
                         "input = 0.15\noutput = 0.6\nsearch_request = 0.0275", ["a", "b"])
        await run(job)
        (seg,) = Journal(tmp_path / "out").segments()
        pq.write_table(pq.read_table(seg).drop_columns(["search_requests"]), seg)
        Journal(tmp_path / "out").check()
        (tmp_path / "out" / "results.parquet").unlink()
        s = await run(job)
    assert s.sent == 0 and s.ok == 2
    df = results(tmp_path)
    assert df["search_requests"].isna().all() and df["cost_usd"].notna().all()
    assert _report(tmp_path)["search_requests"] == {"rows": 0, "unpriced_rows": 0}


@pytest.mark.anyio
async def test_a_billed_try_whose_search_has_no_price_leaves_its_rows_cost_unknown(
        tmp_path: Path) -> None:
    """Without a budget, each row's first try was billed without a usable answer for sources
    with no price (its cost unknown, so not carried in earlier_cost_usd); the answer that
    followed used none, and the row's cost was that answer's tokens: complete, to the row and
    the report. The row's cost is now unknown, and the report's total incomplete, saying
    why."""
    s, _ = await gives_up_first(tmp_path, {**GROK_USAGE, "num_sources_used": 2},
                                "input = 3.0\noutput = 15.0", ["a", "b"],
                                when=lambda text: text.endswith("a"))
    assert s.exit_code == 0 and s.ok == 2
    df = results(tmp_path)
    assert df["attempts"].tolist() == [2, 1]
    assert pd.isna(df.loc["r0", "cost_usd"]) and df.loc["r1", "cost_usd"] > 0
    assert s.cost_usd is None and s.cost_unknown == 1
    report = _report(tmp_path)
    assert report["cost_complete"] is False and report["rows"]["cost_unknown"] == 1
    (warning,) = [w for w in report["warnings"] if "grok-4" in w]
    assert warning == ("model 'grok-4': 1 row had a try before its last that may have been "
                       "billed at a cost not known (no usage reported: a timeout once sent, a "
                       "broken connection, a cut answer; or search with no price), cost not "
                       "counted")


@pytest.mark.anyio
async def test_the_first_requests_in_flight_hold_their_search_fee(tmp_path: Path) -> None:
    """The fee per request that asks for search (search_request) is the job's own price,
    known before anything is sent, but the budget learnt it from the first reply: the first 16
    requests in flight were each held at their tokens only (next to nothing), and their $2
    fees carried the spend to $32 under a budget of $10.50. Each request now holds its fee from
    the first send."""
    price = "input = 0.001\noutput = 0.001\nsearch_request = 2.0"
    texts = [f"news {i}" for i in range(40)]
    async with Simulator(SimulatorConfig(latency_ms=50)) as sim:
        s = await run(search_job(tmp_path, sim.base_url, "gpt-4o-mini-search-preview", price,
                                 texts, max_cost_usd=10.5, concurrency=16))
        sent = sim.stats()["requests"]
    assert s.exit_code == 4 and s.stopped and s.stopped.startswith("budget reached")
    assert sent == 5  # $2 each, held from the first send: five fit in $10.50
    assert s.cost_usd is not None and 10.0 <= s.cost_usd <= 10.5


@pytest.mark.anyio
async def test_the_summary_names_search_answered_before_its_price_was_set(
        tmp_path: Path) -> None:
    """A rerun after search_unit was added to [prices]: a row answered before it that it cannot
    price (tried twice) keeps no cost, and the summary, which named what to set the first time,
    then said only "see report". It says why its cost stays unknown."""
    async with Simulator(SimulatorConfig()) as sim:
        first = await run(search_job(tmp_path, sim.base_url, "grok-4", TOKEN_PRICE,
                                     texts=BEFORE_THE_PRICE))
        again = await run(search_job(tmp_path, sim.base_url, "grok-4",
                                     TOKEN_PRICE + "\nsearch_unit = 0.025",
                                     texts=BEFORE_THE_PRICE))
    assert 'set search_unit under [prices."grok-4"] in a job file' in format_summary(first)
    assert again.cost_unknown == 1
    assert ("1 row without a cost (search answered before its price was set, by grok-4)"
            in format_summary(again)), format_summary(again)


@pytest.mark.anyio
async def test_cited_sources_a_reply_does_not_count_are_warned_of(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Grok's live search asked for (search_parameters, mode "on"), and a gateway's replies
    citing sources with a usage that counts none (no num_sources_used): the rows were priced
    at their tokens, the report said the cost complete, and nothing was said. It is said once,
    at the first such reply: what they cost is in no cost."""
    from aiohttp import web

    from tests.servers import serve_on_loopback

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "grok-4",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "news"},
                         "finish_reason": "stop"}],
            "citations": ["https://example.com/a", "https://example.com/b"],
            "usage": {"prompt_tokens": 25, "completion_tokens": 100, "total_tokens": 125}})

    inp = make_csv(tmp_path / "in.csv", ["latest AI news", "weather today"])
    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "grok-4"\n'
        'prompt = "{text}"\nmax_tokens = 64\n[request.extra]\n'
        'search_parameters = { mode = "on", return_citations = true }\n[output]\ndir = "out"\n'
        '[prices."grok-4"]\ninput = 3.0\noutput = 15.0\nsearch_unit = 0.025\n')
    runner, port = await serve_on_loopback(handler)
    try:
        capsys.readouterr()
        s = await run(load_job(tmp_path / "job.toml",
                               {"base_url": f"http://127.0.0.1:{port}/v1"}))
    finally:
        await runner.cleanup()
    assert s.exit_code == 0 and s.ok == 2
    said = [line for line in capsys.readouterr().err.splitlines() if "cites sources" in line]
    assert len(said) == 1, said
    assert "its usage counts none (num_sources_used): what they cost is not in the row's " \
        "cost" in said[0]
