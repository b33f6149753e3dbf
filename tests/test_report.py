"""The cost report: figures a user would check against the rows, the Markdown, the files."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from batchrunner.pricing import ModelPrice, PriceBook
from batchrunner.records import OUTCOME_SCHEMA, RETRYING, Outcome
from batchrunner.report import (
    REPORT_COLUMNS,
    OutcomeStats,
    build_report,
    format_ms,
    format_usd,
    render_markdown,
    retry_advice,
    unpriced_causes,
    write_reports,
)

OWN = ModelPrice(input=2.0, output=8.0, cached_input=0.5)
JOB = {
    "name": "nightly",
    "model": "gpt-4o-mini",
    "input": "data/products.csv",
    "output": "out/nightly",
    "started_at": "2026-01-02T03:04:05Z",
}


def table(outcomes: list[Outcome]) -> pa.Table:
    return pa.Table.from_pylist([o.as_dict() for o in outcomes], schema=OUTCOME_SCHEMA)


def ok_row(
    book: PriceBook,
    key: str,
    model: str,
    *,
    prompt: int = 1000,
    completion: int = 200,
    cached: int = 100,
    reasoning: int = 50,
    latency: float = 100.0,
    attempts: int = 1,
    rate_limited: int = 0,
    finish: str = "stop",
) -> Outcome:
    """A finished row, priced the way the runner prices it."""
    return Outcome(
        key=key,
        status="ok",
        content="text",
        finish_reason=finish,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
        cost_usd=book.cost(
            model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            reasoning_tokens=reasoning,
        ),
        latency_ms=latency,
        attempts=attempts,
        rate_limited=rate_limited,
        model=model,
    )


def failed_row(key: str, error_type: str, message: str, *, attempts: int = 1, **kw: Any) -> Outcome:
    return Outcome(
        key=key,
        status="failed",
        attempts=attempts,
        error_type=error_type,
        error_message=message,
        **kw,
    )


@pytest.fixture
def book() -> PriceBook:
    return PriceBook({"my-model": OWN})


@pytest.fixture
def mixed(book: PriceBook) -> list[Outcome]:
    rows = [
        ok_row(book, f"a{i}", "gpt-4o-mini", prompt=500 + i, completion=100 + i, latency=10.0 * i)
        for i in range(1, 21)
    ]
    rows += [ok_row(book, f"b{i}", "my-model", cached=i * 10, attempts=2) for i in range(10)]
    rows += [ok_row(book, "cut", "my-model", finish="length", completion=4096)]
    rows += [
        failed_row("f1", "rate_limited", "429 Too Many Requests", attempts=6, rate_limited=6),
        failed_row("f2", "rate_limited", "429 again", attempts=6, rate_limited=6),
        failed_row("f3", "http_400", "bad | request\nsecond line", model="gpt-4o-mini"),
    ]
    return rows


def test_totals_equal_the_sum_of_rows(book: PriceBook, mixed: list[Outcome]) -> None:
    report = build_report(table(mixed), prices=book, job=JOB, wall_s=120.0)

    assert report["rows"]["total"] == len(mixed)
    assert report["rows"]["by_status"] == {"ok": 31, "failed": 3}
    tokens = report["tokens"]
    assert tokens["prompt"] == sum(o.prompt_tokens or 0 for o in mixed)
    assert tokens["completion"] == sum(o.completion_tokens or 0 for o in mixed)
    assert tokens["cached"] == sum(o.cached_tokens or 0 for o in mixed)
    assert tokens["reasoning"] == sum(o.reasoning_tokens or 0 for o in mixed)
    assert tokens["total"] == sum(o.total_tokens or 0 for o in mixed)
    assert report["cost_usd"] == pytest.approx(math.fsum(o.cost_usd or 0 for o in mixed), abs=1e-9)
    assert report["cost_complete"] is True
    assert report["warnings"][0].startswith("1 row stopped at the token limit")

    by_model = report["by_model"]
    assert list(by_model) == ["gpt-4o-mini", "my-model", "(none)"]  # most rows first
    assert sum(m["rows"] for m in by_model.values()) == len(mixed)
    for col in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"):
        assert sum(m[col] for m in by_model.values()) == sum(getattr(o, col) or 0 for o in mixed)
    assert sum(m["cost_known_usd"] for m in by_model.values()) == pytest.approx(
        report["cost_usd"], abs=1e-9
    )
    mine = by_model["my-model"]
    assert mine["rows"] == mine["ok"] == 11
    assert mine["cost_usd"] == pytest.approx(
        math.fsum(o.cost_usd or 0 for o in mixed if o.model == "my-model"), abs=1e-12
    )
    assert mine["price_source"] == "job [prices]"
    assert mine["price"] == {"input": 2.0, "output": 8.0, "cached_input": 0.5}
    assert by_model["gpt-4o-mini"]["failed"] == 1
    assert by_model["gpt-4o-mini"]["price_source"].startswith("genai-prices ")


def test_cost_of_a_job_price_row_is_exact(book: PriceBook) -> None:
    rows = [ok_row(book, "x", "my-model", prompt=1000, completion=500, cached=400, reasoning=300)]
    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)
    assert report["cost_usd"] == 0.0054  # 600×$2 + 400×$0.5 + 500×$8 per 1M; reasoning inside
    assert report["by_model"]["my-model"]["cost_usd"] == 0.0054


def test_unknown_model_gives_null_cost_and_a_warning_never_zero(book: PriceBook) -> None:
    rows = [ok_row(book, f"k{i}", "my-model") for i in range(3)]
    rows += [ok_row(book, f"u{i}", "no-such-model-xyz") for i in range(2)]
    assert all(o.cost_usd is None for o in rows[3:])

    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)

    unknown = report["by_model"]["no-such-model-xyz"]
    assert unknown["cost_usd"] is None
    assert unknown["unpriced_rows"] == 2
    assert unknown["price"] is None and unknown["price_source"] == "unknown"
    assert report["cost_complete"] is False
    known = math.fsum(o.cost_usd or 0 for o in rows)
    assert report["cost_usd"] is None  # not the known part: not the job's cost
    assert known > 0 and report["cost_known_usd"] == pytest.approx(known, abs=1e-12)
    (warning,) = [w for w in report["warnings"] if "no-such-model-xyz" in w]
    assert "no price known" in warning and '[prices."no-such-model-xyz"]' in warning
    md = render_markdown(report)
    assert cell(md, "Cost (USD)") == (f"{format_usd(report['cost_known_usd'])}, and 2 rows "
                                      "without a cost (see warnings)")
    assert "no-such-model-xyz" in md


def test_a_failed_row_billed_at_an_unknown_price_is_unknown_never_zero(
        book: PriceBook) -> None:
    """Replies that failed (a 200 error body, a schema mismatch) but reported usage were paid
    for: at a model with no price, their cost is unknown. The report said $0.0000 for the
    model, beside its tokens, and called the job's cost complete."""
    rows = [ok_row(book, "k", "my-model")]
    rows += [failed_row(f"u{i}", "schema_mismatch", "no", model="no-such-model-xyz",
                        prompt_tokens=1000, completion_tokens=50, total_tokens=1050)
             for i in range(2)]
    rows += [failed_row("n", "http_400", "bad", model="no-such-model-xyz")]  # not billed
    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)
    unknown = report["by_model"]["no-such-model-xyz"]
    assert unknown["cost_usd"] is None and unknown["unpriced_rows"] == 2
    assert report["cost_complete"] is False and report["rows"]["cost_unknown"] == 2
    assert report["cost_usd"] is None and report["cost_known_usd"] == rows[0].cost_usd
    assert any("no price known, cost of 2 rows not counted" in w for w in report["warnings"])
    md = render_markdown(report)
    assert cell(md, "Cost (USD)") == (f"{format_usd(report['cost_known_usd'])}, and 2 rows "
                                      "without a cost (see warnings)")
    assert "unknown (2 rows)" in md


def test_a_cost_no_row_has_reads_unknown_in_the_markdown_never_zero(book: PriceBook) -> None:
    """Rows of a model with no price, and no other: cost_report.md's totals said
    ``$0.0000 (incomplete, see warnings)`` (the JSON's known part, which is 0), where the run's
    summary and status say the cost is unknown. They say it as the summary does, the spend
    with earlier attempts added too. The JSON's cost_usd, which was that known part, 0.0 (free,
    to a script), is null, as a model's is; the known part is its cost_known_usd."""
    rows = [ok_row(book, f"u{i}", "no-such-model-xyz") for i in range(3)]
    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)
    assert report["cost_usd"] is None and report["cost_complete"] is False
    assert report["cost_known_usd"] == 0.0 and report["rows"]["cost_unknown"] == 3
    md = render_markdown(report)
    assert cell(md, "Cost (USD)") == "unknown: 3 rows without a cost (see warnings)"
    (line,) = [x for x in md.splitlines() if x.startswith("| no-such-model-xyz ")]
    assert "unknown (3 rows)" in line and "$0.0000" not in line

    rows[0].earlier_cost_usd = 2.5e-6  # a try billed before, at a price since unknown
    md = render_markdown(build_report(table(rows), prices=book, job=JOB, wall_s=None))
    assert cell(md, "Cost (USD)") == "unknown: 3 rows without a cost (see warnings)"
    assert cell(md, "Spent in all (USD)") == "$0.0000025, and 3 rows without a cost (see warnings)"


def test_failed_rows_billed_at_no_known_price_read_unknown_not_zero(book: PriceBook) -> None:
    """Failed rows whose replies were billed (usage reported, a reply that did not match the
    schema) at a model with no price: "of which billed for failed rows" said $0.0000. It says
    they have no cost, beside the known part of the others' where there is one."""
    def failed(key: str, model: str) -> Outcome:
        row = ok_row(book, key, model)
        row.status, row.error_type, row.error_message = "failed", "schema_mismatch", "no JSON"
        return row

    rows = [failed("f1", "no-such-model-xyz"), failed("f2", "no-such-model-xyz"),
            ok_row(book, "k1", "gpt-4o-mini")]
    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)
    assert report["rows"]["cost_unknown"] == 2 and report["rows"]["cost_unknown_failed"] == 2
    md = render_markdown(report)
    assert cell(md, "of which billed for failed rows") == "unknown: 2 rows without a cost"
    rows.append(failed("f3", "gpt-4o-mini"))
    md = render_markdown(build_report(table(rows), prices=book, job=JOB, wall_s=None))
    assert cell(md, "of which billed for failed rows") == (
        f"{format_usd(rows[3].cost_usd)}, and 2 rows without a cost")


def test_tries_with_no_usage_beside_rows_without_a_cost_say_no_sum_of_none(
        book: PriceBook) -> None:
    """Rows with no usage reported (a stream with neither usage nor finish_reason) whose tries
    have an estimate: the markdown said ``at least $0.0000 (incomplete, see warnings), plus
    unknown (see warnings)`` and its warning ``the cost is at least $0.0000 plus theirs``.
    Both now say it as the run's summary does, and a known part where there is one."""
    rows = [Outcome(key=f"n{i}", status="ok", content="Echo", model="my-model", attempts=1,
                    unreported_usd=0.0025) for i in range(3)]
    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)
    md = render_markdown(report)
    assert cell(md, "Cost (USD)") == ("unknown: 3 rows without a cost, plus tries of 3 rows "
                                      "that may have been billed with no usage reported (see "
                                      "warnings)")
    (warning,) = [w for w in report["warnings"] if "had tries" in w]
    assert ("the cost is unknown (3 rows without a cost), and theirs is estimated at $0.0075"
            in warning)

    rows.append(ok_row(book, "k", "my-model"))
    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)
    known = format_usd(report["cost_known_usd"])
    assert cell(render_markdown(report), "Cost (USD)") == (
        f"at least {known}, and 3 rows without a cost, plus tries of 3 rows that may have been "
        "billed with no usage reported (see warnings)")
    (warning,) = [w for w in report["warnings"] if "had tries" in w]
    assert (f"the cost is at least {known}, and 3 rows without a cost, plus theirs, estimated "
            "at $0.0075" in warning)


def test_earlier_unpriced_rows_counts_no_row_of_a_model_with_no_price(book: PriceBook) -> None:
    """A model with no price, every row tried once: its entry said 3 rows had an earlier try
    billed at a cost not known (its rows' usage reported, their cost null, no search: what a
    priced model's rows with such a try look like). A model with no price counts none; a
    priced model's row with no cost though its usage was reported still counts."""
    rows = [ok_row(book, f"u{i}", "no-such-model-xyz") for i in range(3)]
    earlier = ok_row(book, "e", "my-model", attempts=2)
    earlier.cost_usd = None  # its first try billed with no usage reported: the row's unknown
    rows += [earlier, ok_row(book, "k", "my-model")]
    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)
    assert report["by_model"]["no-such-model-xyz"]["earlier_unpriced_rows"] == 0
    assert report["by_model"]["my-model"]["earlier_unpriced_rows"] == 1
    assert report["rows"]["cost_unknown"] == 4
    said = [w for w in report["warnings"] if "had a try before" in w]
    assert len(said) == 1 and said[0].startswith("model 'my-model': 1 row had a try")
    assert unpriced_causes(report["by_model"]).startswith("no price for no-such-model-xyz")


def test_rows_of_a_misspelt_model_with_no_price_name_the_model_meant(book: PriceBook) -> None:
    """The summary and reports said to add [prices."gpt-4o-mni"] to the job file, as for a
    model of one's own: a typo of a priced name says the one meant, as the budget's refusal
    and the estimate do."""
    rows = [failed_row(f"u{i}", "schema_mismatch", "no", model="gpt-4o-mni",
                       prompt_tokens=1000, completion_tokens=50, total_tokens=1050)
            for i in range(2)]
    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)
    assert ("model 'gpt-4o-mni': no price known (did you mean 'gpt-4o-mini'?), cost of 2 rows "
            "not counted; fix the model name, or add [prices.\"gpt-4o-mni\"]") in "\n".join(
                report["warnings"])
    # The run's summary line too, which told only to price the misspelt name.
    assert unpriced_causes(report["by_model"]) == (
        "no price for gpt-4o-mni (did you mean gpt-4o-mini?): fix the model name, or add "
        '[prices."gpt-4o-mni"] with input and output (USD per 1M tokens), to a job file')


def test_a_model_a_gateway_answered_with_is_shown_priced_as_the_one_asked_for(
        book: PriceBook) -> None:
    # The job asked for my-model; the gateway answered as a name with no price of its own, and
    # the runner priced the replies as my-model: the report says so, not "unknown" beside a cost.
    rows = [ok_row(book, f"k{i}", "my-model") for i in range(2)]
    for o in rows:
        o.model = "gw-routed-xyz"
    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)
    entry = report["by_model"]["gw-routed-xyz"]
    assert entry["price"] is None and entry["unpriced_rows"] == 0
    assert entry["price_source"] == "priced as the model asked for"
    assert entry["cost_usd"] == pytest.approx(sum(o.cost_usd or 0 for o in rows), abs=1e-12)
    assert report["cost_complete"] is True
    assert not [w for w in report["warnings"] if "gw-routed-xyz" in w]
    assert "priced as the model asked for" in render_markdown(report)


def test_ok_rows_without_usage_make_the_cost_incomplete(book: PriceBook) -> None:
    rows = [ok_row(book, "a", "my-model"), Outcome(key="b", status="ok", model="my-model")]
    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)
    assert report["cost_complete"] is False
    assert report["by_model"]["my-model"]["cost_usd"] is None
    assert report["by_model"]["my-model"]["cost_known_usd"] == rows[0].cost_usd
    assert any("reported no token usage" in w for w in report["warnings"])


def test_job_prices_win_in_the_report() -> None:
    book = PriceBook({"gpt-4o-mini": OWN})
    report = build_report(table([ok_row(book, "a", "gpt-4o-mini")]), prices=book, job=JOB, wall_s=1)
    entry = report["by_model"]["gpt-4o-mini"]
    assert entry["price_source"] == "job [prices]"
    assert entry["price"] == OWN.as_dict()
    assert report["pricing"]["job_prices"] == ["gpt-4o-mini"]


def test_latency_percentiles_over_ok_rows(book: PriceBook) -> None:
    rows = [ok_row(book, f"r{i}", "my-model", latency=float(i)) for i in range(1, 101)]
    rows.append(failed_row("slow", "timeout", "timed out", latency_ms=99_999.0))
    report = build_report(table(rows), prices=book, job=JOB, wall_s=60.0)
    lat = report["latency_ms"]
    values = np.arange(1, 101, dtype=float)
    assert lat["rows"] == 100
    for q in (50, 95, 99):
        assert lat[f"p{q}"] == pytest.approx(np.percentile(values, q), abs=0.051)
    assert lat["max"] == 100.0 and lat["mean"] == 50.5


def test_latency_by_model_for_comparing_models(book: PriceBook) -> None:
    """A job comparing models gave one latency for all its rows (p50 of a fast model's, p95 of
    a slow one's): each model's is in by_model, over its ok rows, and cost_report.md's by-model
    table shows its p50 / p95 where there are models to compare."""
    book = PriceBook({"fast": OWN, "slow": OWN})
    rows = [ok_row(book, f"f{i}", "fast", latency=float(i)) for i in range(1, 101)]
    rows += [ok_row(book, f"s{i}", "slow", latency=1000.0 + i) for i in range(1, 51)]
    rows.append(failed_row("x", "timeout", "timed out", latency_ms=99_999.0, model="slow"))
    untimed = ok_row(book, "untimed", "slow")
    untimed.latency_ms = None  # no latency: left out
    rows.append(untimed)
    stats = OutcomeStats()
    for part in (rows[:70], rows[70:]):  # as the journal reads it, a table at a time
        stats.add(table(part))
    report = build_report(stats, prices=book, job=JOB, wall_s=60.0)
    fast, slow = (report["by_model"][m]["latency_ms"] for m in ("fast", "slow"))
    assert fast["rows"] == 100 and fast["max"] == 100.0 and fast["mean"] == 50.5
    assert fast["p50"] == pytest.approx(np.percentile(np.arange(1, 101), 50), abs=0.051)
    assert slow["rows"] == 50 and slow["p50"] == pytest.approx(1025.5, abs=0.051)
    assert slow["max"] == 1050.0  # not the failed row's
    assert report["latency_ms"]["rows"] == 150
    md = render_markdown(report)
    assert "| Latency p50 / p95 |" in md
    by_model = md.split("## By model")[1].split("\n\n")[1]
    assert re.search(r"\| fast +\|.*\| +50\.5 ms / 95 ms \|", by_model), by_model
    assert re.search(r"\| slow +\|.*\| +1\.03 s / 1\.05 s \|", by_model), by_model
    one = build_report(table(rows[:100]), prices=book, job=JOB, wall_s=60.0)
    assert one["by_model"]["fast"]["latency_ms"] == one["latency_ms"]
    assert "Latency p50 / p95 |" not in render_markdown(one)  # the totals' line says it


def test_a_job_price_a_gateways_route_left_unused_is_warned_of() -> None:
    """The job priced "smart", a gateway's alias, and the gateway answered its rows as the
    model it routed them to, priced at that model's library price: the job's price went
    unused, unsaid. The report says so, with what to add; not where every entry priced rows
    (the control), nor for rows that failed."""
    book = PriceBook({"smart": OWN})
    routed = "claude-sonnet-4-5-20250929"
    rows = [ok_row(book, f"r{i}", routed) for i in range(3)]
    report = build_report(table(rows), prices=book, job=JOB, wall_s=None)
    said = [w for w in report["warnings"] if w.startswith('[prices."smart"]')]
    assert said == ['[prices."smart"] priced no row answered so far: the replies named other '
                    f"models ({routed}), priced at the price library's prices; a gateway that "
                    'routes "smart" answers as the model it routed to — to price those rows '
                    "at the job's price, add the same entry under the name the replies give"]
    both = PriceBook({"smart": OWN, routed: OWN})
    rows = [ok_row(both, "a", routed), ok_row(both, "b", "smart")]
    assert not [w for w in build_report(table(rows), prices=both, job=JOB,
                                        wall_s=None)["warnings"] if "priced no row" in w]
    failed = [failed_row("x", "http_500", "boom", model=routed)]
    assert not [w for w in build_report(table(failed), prices=book, job=JOB,
                                        wall_s=None)["warnings"] if "priced no row" in w]


def test_length_finish_reasons_and_failures(book: PriceBook, mixed: list[Outcome]) -> None:
    report = build_report(table(mixed), prices=book, job=JOB, wall_s=None)
    assert report["rows"]["cut_at_length"] == 1
    assert report["by_finish_reason"] == {"stop": 30, "length": 1}
    assert any("finish_reason=length" in w for w in report["warnings"])
    assert report["by_error_type"] == {
        "rate_limited": {"rows": 2, "example": "429 Too Many Requests"},
        "http_400": {"rows": 1, "example": "bad | request second line"},
    }
    assert any(w.startswith("3 rows failed") for w in report["warnings"])


def test_requests_retries_429s_and_throughput(book: PriceBook, mixed: list[Outcome]) -> None:
    counters = {"http_429": 5, "attempts": 999, "retries": 7}
    report = build_report(table(mixed), prices=book, job=JOB, wall_s=120.0, counters=counters)
    attempts = sum(o.attempts for o in mixed)
    assert report["requests"] == {
        "attempts": attempts,
        "rows_attempted": len(mixed),
        "retries": attempts - len(mixed),
        "http_429": 12,  # the run's 429s are also in its rows: never counted twice
        "http_429_in_rows": 12,
        "http_429_this_run": 5,
    }
    assert report["counters"] == {"attempts": 999, "http_429": 5, "retries": 7}
    assert report["wall_s"] == 120.0
    assert report["requests_per_min"] == pytest.approx(len(mixed) / 2.0, abs=0.05)

    # 429s of rows not finished yet are known only to the run's counters.
    report = build_report(table(mixed), prices=book, job=JOB, wall_s=1.0, counters={"http_429": 40})
    assert report["requests"]["http_429"] == 40


def test_throughput_counts_only_the_rows_of_the_timed_run(book: PriceBook) -> None:
    earlier = [ok_row(book, f"e{i}", "my-model") for i in range(50)]
    for o in earlier:
        o.finished_at = 1_000.0  # finished by a run a day before
    latest = [ok_row(book, f"n{i}", "my-model") for i in range(30)]
    for i, o in enumerate(latest):
        o.finished_at = 90_000.0 + i
    report = build_report(table(earlier + latest), prices=book, job=JOB, wall_s=60.0)
    assert report["rows"]["total"] == 80
    assert report["requests_per_min"] == 30.0


def test_job_fields_are_kept_and_the_key_order_is_stable(book: PriceBook) -> None:
    job = {**JOB, "output": Path("out/nightly")}
    report = build_report(table([ok_row(book, "a", "my-model")]), prices=book, job=job, wall_s=2)
    assert report["job"] == JOB  # a Path becomes its string
    assert list(report) == [
        "report_version",
        "generated_at",
        "job",
        "rows",
        "tokens",
        "tokens_reported_by_rows",
        "search_units",
        "search_requests",
        "search_cost_usd",
        "cost_usd",
        "cost_known_usd",
        "cost_failed_usd",
        "cost_failed_with_choices_usd",
        "cost_earlier_attempts_usd",
        "cost_to_do_attempts_usd",
        "cost_complete",
        "cost_unreported",
        "pricing",
        "by_model",
        "by_finish_reason",
        "by_error_type",
        "requests",
        "latency_ms",
        "wall_s",
        "requests_per_min",
        "counters",
        "stopped",
        "warnings",
    ]
    assert report["pricing"]["library"] == "genai-prices"
    assert report["pricing"]["library_version"] == book.library_version


def test_json_round_trip(book: PriceBook, mixed: list[Outcome]) -> None:
    report = build_report(table(mixed), prices=book, job=JOB, wall_s=30.0, counters={"x": 1})
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_empty_table(book: PriceBook) -> None:
    report = build_report(table([]), prices=book, job={}, wall_s=0.0)
    assert report["rows"] == {"total": 0, "by_status": {"ok": 0, "failed": 0}, "cut_at_length": 0,
                              "cut_at_length_usd": 0.0, "cut_at_length_tokens": None, "to_do": None,
                              "billed_to_do": 0, "changed_to_send": 0, "cost_unknown": 0,
                              "cost_unknown_failed": 0, "fewer_choices": 0,
                              "failed_with_choices": 0}
    assert report["cost_usd"] == 0.0 and report["cost_complete"] is True
    assert report["latency_ms"]["p50"] is None
    assert report["requests_per_min"] is None and report["wall_s"] is None
    assert render_markdown(report).startswith("# Cost report\n")


def test_missing_column_is_reported(book: PriceBook) -> None:
    with pytest.raises(ValueError, match="cost_usd"):
        build_report(table([]).drop_columns(["cost_usd"]), prices=book, job={}, wall_s=None)


def test_markdown_summary(book: PriceBook, mixed: list[Outcome]) -> None:
    md = render_markdown(build_report(table(mixed), prices=book, job=JOB, wall_s=754.0))
    assert md.startswith("# Cost report: nightly\n")
    for heading in (
        "## Totals",
        "## By model",
        "## Rows by status",
        "## Finish reasons",
        "## Failures by type",
        "## Warnings",
    ):
        assert f"\n{heading}\n" in md
    assert "- input: data/products.csv" in md
    assert "| my-model " in md and "job [prices]" in md
    assert "bad \\| request second line" in md  # a pipe in a message does not break the table
    assert "12m 34s" in md
    # Every row of a table is as wide as its header, so it lines up on a terminal.
    for block in md.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.startswith("|")]
        assert len({len(ln) for ln in lines}) <= 1, block


def test_server_text_in_the_markdown_is_text(book: PriceBook) -> None:
    """An error message, model name or finish_reason is the server's text: in cost_report.md it
    reads as that text, on a terminal (``cat``: no escape sequence clears the screen or sets
    the title) and in a Markdown viewer (no tag or image is rendered, nothing is loaded)."""
    tricks = "\x1b[2J\x1b]0;owned\x07 <img src=https://x.test/t.png> ![t](https://x.test/i.png)"
    model = f"<b>m</b>\x9b31m{tricks}"
    rows = [ok_row(book, "a", model, finish=f"stop{tricks}"),
            failed_row("b", "http_400", f"bad {tricks}", model=model)]
    job = {**JOB, "name": f"nightly {tricks}", "note": tricks}
    md = render_markdown(build_report(table(rows), prices=book, job=job, wall_s=1.0))
    assert not any(c in md for c in "\x1b\x07\x9b")
    assert not re.search(r"(?<!\\)<", md) and "![" not in md  # each escaped: \<, !\[
    assert "\\<img src=https://x.test/t.png> !\\[t](https://x.test/i.png)" in md
    example = md[md.index("| http_400 "):].splitlines()[0]
    assert "bad \ufffd[2J\ufffd]0;owned\ufffd \\<img" in example


def test_write_reports_atomically_with_mode_0600(
    tmp_path: Path, book: PriceBook, mixed: list[Outcome]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "cost_report.json"
    stale.write_text("{}")
    stale.chmod(0o644)
    report = build_report(table(mixed), prices=book, job=JOB, wall_s=10.0)

    paths = write_reports(report, out)

    assert paths == [out / "cost_report.json", out / "cost_report.md"]
    assert sorted(os.listdir(out)) == ["cost_report.json", "cost_report.md"]  # no temp files
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert json.loads(paths[0].read_text(encoding="utf-8")) == report
    assert paths[1].read_text(encoding="utf-8") == render_markdown(report)


def test_a_failed_write_leaves_no_temp_file(
    tmp_path: Path, book: PriceBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = build_report(table([]), prices=book, job={}, wall_s=None)

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    from batchrunner.errors import OutputError

    with pytest.raises(OutputError, match="disk full"):
        write_reports(report, tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_200k_row_report_builds(book: PriceBook) -> None:
    models = ["gpt-4o-mini", "my-model", "no-such-model-xyz", "claude-opus-4-6"]
    block = [
        ok_row(book, str(i), models[i % 4], prompt=100 + i, latency=float(i % 97))
        if i % 50
        else failed_row(str(i), "http_500", "server error", model=models[i % 4])
        for i in range(1000)
    ]
    big = pa.concat_tables([table(block)] * 200)
    assert big.num_rows == 200_000

    report = build_report(big, prices=book, job=JOB, wall_s=600.0, counters={"http_429": 1})

    assert report["rows"]["total"] == 200_000
    assert report["rows"]["by_status"] == {"ok": 196_000, "failed": 4_000}
    assert report["tokens"]["prompt"] == 200 * sum(o.prompt_tokens or 0 for o in block)
    assert report["cost_usd"] is None and report["cost_known_usd"] == pytest.approx(
        200 * math.fsum(o.cost_usd or 0 for o in block), rel=1e-9
    )
    assert report["by_model"]["no-such-model-xyz"]["cost_usd"] is None
    assert report["requests_per_min"] == 20_000.0
    render_markdown(report)


# --------------------------------------------------------------------------------------------
# Chunks: the report of rows fed in chunks is the report of the whole table


def varied_rows(book: PriceBook) -> list[Outcome]:
    """Rows with every case a chunk boundary could get wrong, spread over the table."""
    t0 = 1_767_322_800.0
    models = ["gpt-4o-mini", "my-model", None, "no-such-model-xyz", "my-model"]
    rows: list[Outcome] = []
    for i in range(60):
        model = models[i % len(models)]
        if model is None:  # no model: the runner cannot price it
            row = Outcome(key=f"n{i:02d}", status="ok", content=f"unpriced {i}", model=None)
            row.prompt_tokens, row.completion_tokens = 10 + i, 5
        else:
            row = ok_row(
                book,
                f"r{59 - i:02d}",  # keys run backwards: ties must go to the smaller key
                model,
                prompt=400 + 7 * (i % 3),  # repeated token counts: ties in cost
                completion=100,
                latency=[250.0, 5_000.0, 12.5][i % 3],  # ties in latency, across chunks
                attempts=1 + i % 2,
                rate_limited=i % 4,
                finish="length" if i % 9 == 0 else "stop",
            )
            row.content = f"answer {i}\n  with   spaces"
        if i % 11 == 0:
            row.latency_ms = None
        row.finished_at = t0 + (i * 13) % 97 + 0.5 * (i % 2)
        rows.append(row)
    errors = [
        ("http_500", None),  # the first of its type has no message: the next one is the example
        ("timeout", "timed out after 120 s"),
        ("http_500", "server error  \n first message of its type"),
        (None, "no type"),
        ("http_500", "server error, a later message"),
        ("timeout", "timed out, a later message"),
        ("rate_limited", "429 " + "x" * 300),
        ("http_500", "server error, the last message"),
    ]
    for j, (error_type, message) in enumerate(errors):
        row = failed_row(
            f"f{j}",
            error_type,
            message,  # type: ignore[arg-type]
            attempts=6,
            rate_limited=j,
            model=models[j % len(models)],
            latency_ms=[5_000.0, None, 90_000.0][j % 3],
            cost_usd=[None, 0.25][j % 2],  # a failed row billed for its reply
            finished_at=t0 + 5 * j,
        )
        rows.insert(7 * j + 3, row)  # failures in several chunks, whatever the size
    rows[20].status = "pending"
    rows[21].finished_at = 0.0
    return rows


def chunked(t: pa.Table, size: int) -> OutcomeStats:
    """``t`` fed to an ``OutcomeStats`` in chunks of ``size`` rows, with empty chunks between and
    every other chunk as a record batch."""
    stats = OutcomeStats()
    for n, start in enumerate(range(0, t.num_rows, size)):
        chunk = t.slice(start, size)
        stats.add(chunk.to_batches()[0] if n % 2 else chunk)
        stats.add(t.slice(0, 0))
    return stats


CHUNK_SIZES = [1, 3, 7, 65_536]


def _masked(report: dict[str, Any]) -> str:
    """The report without its time, as JSON text: the order of keys counts too."""
    return json.dumps({**report, "generated_at": "-"}, indent=1)


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_chunking_does_not_change_the_report(book: PriceBook, size: int) -> None:
    t = table(varied_rows(book))
    whole = build_report(t, prices=book, job=JOB, wall_s=60.0, counters={"http_429": 2})
    stats = chunked(t.select(list(REPORT_COLUMNS)), size)
    assert stats.rows == t.num_rows
    report = build_report(stats, prices=book, job=JOB, wall_s=60.0, counters={"http_429": 2})

    assert _masked(report) == _masked(whole)
    assert render_markdown({**report, "generated_at": ""}) == render_markdown(
        {**whole, "generated_at": ""}
    )
    # Figures that only come out right if every chunk is counted, in row order.
    assert report["by_error_type"] == {
        "http_500": {"rows": 4, "example": "server error first message of its type"},
        "timeout": {"rows": 2, "example": "timed out after 120 s"},
        "(none)": {"rows": 2, "example": "no type"},  # and the pending row
        "rate_limited": {"rows": 1, "example": "429 " + "x" * 195 + "…"},
    }
    assert list(report["by_model"]) == [
        "my-model",
        "gpt-4o-mini",
        "(none)",
        "no-such-model-xyz",
    ]
    assert report["rows"]["by_status"] == {"ok": 59, "failed": 8, "pending": 1}
    assert report["cost_failed_usd"] == 1.0
    assert report["latency_ms"]["rows"] == 43 and report["latency_ms"]["max"] == 5_000.0
    assert report["requests_per_min"] == 39.0  # rows finished in the last 60 s before the newest


def test_chunks_need_the_report_columns(book: PriceBook) -> None:
    stats = OutcomeStats()
    with pytest.raises(ValueError, match="cost_usd"):
        stats.add(table([]).drop_columns(["cost_usd"]))
    stats.add(table([ok_row(book, "a", "my-model")]).drop_columns(["key", "content"]))
    assert stats.missing_columns == ("key", "content")  # report.html needs them; the report not
    assert build_report(stats, prices=book, job={}, wall_s=None)["rows"]["total"] == 1


def test_group_figures_match_pyarrow_group_by(book: PriceBook) -> None:
    """Per-model sums, exact cost sums per model and error counts and examples, gathered with
    numpy, equal pyarrow's group_by over random rows: many models (so the cost groups are
    numbered sparsely), null models and error types, costs from 5e-324 to 1e300, NaN and
    infinity."""
    rng = np.random.default_rng(5)
    n = 3_000
    models = [f"m{i}" for i in range(60)]
    costs = np.where(rng.random(n) < 0.5, 10.0 ** rng.integers(-300, 300, n), rng.random(n))
    costs[rng.random(n) < 0.01] = math.nan
    costs[rng.random(n) < 0.005] = math.inf
    costs[:3] = [5e-324, 1e300, 0.0]
    t = pa.table({
        "model": pa.array([None if i % 61 == 60 else models[i % 61] for i in
                           rng.integers(0, 61, n).tolist()], pa.string()),
        "status": pa.array(np.where(rng.random(n) < 0.7, "ok", "failed")),
        "cost_usd": pa.array(costs, mask=rng.random(n) < 0.1),
        "error_type": pa.array(rng.choice(["a", "b", "c"], n), mask=rng.random(n) < 0.2),
        "error_message": pa.array([f"message {i}" for i in range(n)], mask=rng.random(n) < 0.5),
        **{c: pa.array(rng.integers(0, 10**6, n), mask=rng.random(n) < 0.1)
           for c in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
                     "reasoning_tokens")},
    })
    stats = OutcomeStats()
    for start in range(0, n, 1_000):
        stats.add(_complete(t.slice(start, 1_000)))

    by_model = t.group_by("model").aggregate(
        [("model", "count", pa.compute.CountOptions(mode="all")),
         *((c, "sum") for c in ("prompt_tokens", "completion_tokens", "cached_tokens",
                                "reasoning_tokens"))])
    for r in by_model.to_pylist():
        acc = stats._models[r["model"]]
        assert acc[0] == r["model_count"]
        assert acc[3:7] == [r[f"{c}_sum"] or 0 for c in ("prompt_tokens", "completion_tokens",
                                                         "cached_tokens", "reasoning_tokens")]
    assert len(stats._models) == by_model.num_rows

    failed = t.filter(pa.compute.not_equal(t["status"], "ok"))
    errors = failed.group_by("error_type", use_threads=False).aggregate(
        [("error_type", "count", pa.compute.CountOptions(mode="all")), ("error_message", "first")])
    assert {("(none)" if r["error_type"] is None else r["error_type"]):
            [r["error_type_count"], r["error_message_first"]]
            for r in errors.to_pylist()} == stats._errors

    # Cost sums are exact: the sum of the rows' costs as fractions, per (model, failed).
    exact: dict[tuple[str | None, bool], Fraction] = {}
    bad: set[tuple[str | None, bool]] = set()
    for model, status, cost in zip(t["model"].to_pylist(), t["status"].to_pylist(),
                                   t["cost_usd"].to_pylist(), strict=True):
        key = (model, status != "ok")
        if cost is None:
            continue
        if math.isfinite(cost):
            exact[key] = exact.get(key, Fraction(0)) + Fraction(cost)
        else:
            bad.add(key)
    assert stats._cost_bad == bad
    assert {k: Fraction(v, 1 << 1126) for k, v in stats._cost.items()} == exact


def _complete(t: pa.Table) -> pa.Table:
    """``t`` with the report's other columns, null."""
    return pa.table({c: t[c] if c in t.column_names
                     else pa.nulls(t.num_rows, OUTCOME_SCHEMA.field(c).type)
                     for c in REPORT_COLUMNS})


def test_cached_and_reasoning_tokens_not_reported_are_not_shown_as_zero(book: PriceBook) -> None:
    silent = [ok_row(book, k, "gpt-4o-mini") for k in "ab"]
    for o in silent:  # a server that gives prompt and completion tokens only
        o.cached_tokens = o.reasoning_tokens = None
    report = build_report(table(silent), prices=book, job=JOB, wall_s=1.0)
    assert report["tokens_reported_by_rows"] == {"cached": 0, "reasoning": 0, "cache_write": 0}
    assert cell(render_markdown(report), "Reasoning tokens (in completion)") == (
        "not reported by the server")
    assert cell(render_markdown(report), "Cached prompt tokens") == "not reported by the server"

    said = [ok_row(book, "c", "gpt-4o-mini", cached=0, reasoning=0), *silent]
    report = build_report(table(said), prices=book, job=JOB, wall_s=1.0)
    assert report["tokens_reported_by_rows"] == {"cached": 1, "reasoning": 1, "cache_write": 0}
    assert cell(render_markdown(report), "Reasoning tokens (in completion)") == "0"
    assert cell(render_markdown(report), "Cached prompt tokens") == "0"
    # A report written before the count existed shows the totals as it did.
    del report["tokens_reported_by_rows"]
    assert cell(render_markdown(report), "Reasoning tokens (in completion)") == "0"


def cell(md: str, label: str) -> str:
    """The value beside ``label`` in the markdown report's tables."""
    (line,) = [x for x in md.splitlines() if x.startswith(f"| {label} ")]
    return line.split("|")[2].strip()


# --------------------------------------------------------------------------------------------
# What the Markdown shows people: no Python values, the summary's advice, alike figures


def test_job_fields_are_shown_for_people_and_kept_as_given_in_the_json(book: PriceBook) -> None:
    rows = table([ok_row(book, "a", "my-model")])
    for value, shown in ((True, "yes"), (False, "no"), ("some rows", "some rows")):
        job = {**JOB, "simulator": value, "tags": ["a", "b"], "limits": {"rpm": 60},
               "note": None, "empty": ""}
        report = build_report(rows, prices=book, job=job, wall_s=1.0)
        assert report["job"]["simulator"] == value  # the JSON keeps the value
        md = render_markdown(report)
        details = md.split("## Totals", 1)[0]
        assert f"- simulator: {shown}\n" in details
        assert "- tags: a, b\n" in details and "- limits: rpm: 60\n" in details
        assert "note" not in details and "empty" not in details  # fields with no value
        for python in ("True", "False", "None", "[", "{", "'"):
            assert python not in details, (python, details)


@pytest.mark.parametrize(
    "failures",
    [
        {"invalid_row": 2},
        {"http_400": 1, "invalid_row": 1},
        {"timeout": 2, "invalid_row": 1},
        {"timeout": 3},
        {"request_too_large": 1, "model_refused": 1},
    ],
)
def test_failed_rows_advice_is_the_summarys(book: PriceBook, failures: dict[str, int]) -> None:
    from batchrunner.runner import RunSummary, format_summary

    rows = [ok_row(book, "a", "my-model")]
    rows += [failed_row(f"{t}{i}", t, f"{t} message") for t, n in failures.items()
             for i in range(n)]
    report = build_report(table(rows), prices=book, job=JOB, wall_s=1.0)
    error_types = {k: v["rows"] for k, v in report["by_error_type"].items()}
    n = sum(failures.values())
    summary = format_summary(RunSummary(name="nightly", rows=n + 1, ok=1, failed=n,
                                        error_types=error_types))
    advice = summary.splitlines()[-1].strip()  # the summary's last line: what to do
    assert advice == retry_advice(error_types)
    (warning,) = [w for w in report["warnings"] if " failed (see failures by type)" in w]
    assert warning.endswith(f": {advice}")
    md = render_markdown(report)
    assert f"- {warning}\n" in md and "a rerun can retry" not in md
    if "invalid_row" in failures:
        assert "fix the input of the" in warning and "--retry-failed" in warning


def test_the_summarys_advice_is_the_reports_function() -> None:
    from batchrunner import runner

    assert runner.retry_advice is retry_advice
    assert retry_advice({"invalid_row": 2}) == (
        "fix the input of the 2 rows that could not be sent (invalid_row: the error_message of "
        "each says why), then rerun with --retry-failed to send them")


def test_latency_and_wall_time_read_alike_in_markdown(book: PriceBook) -> None:
    report = build_report(table([ok_row(book, "a", "my-model")]), prices=book, job=JOB,
                          wall_s=0.032)
    report["latency_ms"].update(p50=8.4, p95=12.3, p99=22.7)
    md = render_markdown(report)
    assert cell(md, "Latency p50 / p95 / p99") == "8.4 ms / 12.3 ms / 22.7 ms"
    assert cell(md, "Wall time (the last run that sent)") == "0.032 s"  # not 0.0 s
    for wall, shown in ((0.0, "< 0.001 s"), (0.05, "0.05 s"), (5.432, "5.43 s"), (42.14, "42.1 s"),
                        (59.96, "1m 00s"), (754.0, "12m 34s"), (None, "n/a")):
        report["wall_s"] = wall
        assert cell(render_markdown(report), "Wall time (the last run that sent)") == shown


def test_latencies_have_three_significant_digits() -> None:
    cases = {None: "–", 0.0: "0 ms", 0.25: "0.25 ms", 8.4: "8.4 ms", 12.3: "12.3 ms",
             512.3: "512 ms", 999.4: "999 ms", 999.7: "1 s", 1234.0: "1.23 s",
             60_000.0: "1 min", 75_000.0: "1.25 min", 3_600_000.0: "1 h"}
    assert {v: format_ms(v) for v in cases} == cases


def test_costs_below_a_cent_are_never_shown_as_zero(book: PriceBook) -> None:
    cases = {None: "unknown", 0.0: "$0.0000", 1.44e-5: "$0.0000144", 1e-7: "$0.0000001",
             0.005: "$0.005", 0.00999: "$0.00999", 0.0099996: "$0.0100", 0.5: "$0.5000",
             12.3456: "$12.3456", 99.99999: "$100.00", 1234.567: "$1,234.57"}
    assert {v: format_usd(v) for v in cases} == cases

    row = ok_row(book, "a", "my-model")
    row.cost_usd, row.earlier_cost_usd = 1.44e-5, 2.5e-6
    report = build_report(table([row]), prices=book, job=JOB, wall_s=1.0)
    assert report["cost_usd"] == 1.44e-5 and report["cost_earlier_attempts_usd"] == 2.5e-6
    md = render_markdown(report)
    assert cell(md, "Cost (USD)") == "$0.0000144"
    assert cell(md, "Earlier attempts, sent again (USD)") == "$0.0000025"
    assert cell(md, "Spent in all (USD)") == "$0.0000169"
    (model_line,) = [x for x in md.splitlines() if x.startswith("| my-model ")]
    assert "$0.0000144" in model_line
    assert cell(md, "of which billed for failed rows") == "$0.0000"  # zero, and only zero


def test_spent_in_all_says_when_a_cost_is_not_known(book: PriceBook) -> None:
    """The job's spend, earlier attempts added, leaves out what rows at an unknown price cost
    as the cost does, and says so as the cost does: not a whole figure."""
    row = ok_row(book, "a", "my-model")
    row.cost_usd, row.earlier_cost_usd = 1.44e-5, 2.5e-6
    rows = [row, ok_row(book, "u", "no-such-model-xyz")]
    md = render_markdown(build_report(table(rows), prices=book, job=JOB, wall_s=1.0))
    assert cell(md, "Cost (USD)") == "$0.0000144, and 1 row without a cost (see warnings)"
    assert cell(md, "Spent in all (USD)") == "$0.0000169, and 1 row without a cost (see warnings)"


def test_a_row_to_do_whose_attempts_were_billed_counts_only_their_cost(book: PriceBook) -> None:
    """A ``retrying`` record (billed attempts of a row still to do) is no row of the report:
    not in the rows, statuses, models or latencies; its cost is earlier attempts' cost, and
    its attempts are requests sent. The same in one chunk or row by row."""
    rows = [ok_row(book, "a", "my-model", attempts=2),
            Outcome(key="b", status=RETRYING, earlier_cost_usd=0.25, attempts=3,
                    rate_limited=1, model="my-model", finished_at=5.0)]
    one = build_report(table(rows), prices=book, job=JOB, wall_s=1.0, to_do=1)
    stats = OutcomeStats()
    for row in rows:
        stats.add(table([row]))
    chunked = build_report(stats, prices=book, job=JOB, wall_s=1.0, to_do=1)
    alone = build_report(table(rows[:1]), prices=book, job=JOB, wall_s=1.0, to_do=1)
    for report in (one, chunked):
        assert report["rows"]["total"] == 1
        assert report["rows"]["by_status"] == {"ok": 1, "failed": 0}
        assert report["by_model"]["my-model"]["rows"] == 1
        assert report["cost_usd"] == alone["cost_usd"]
        assert report["cost_earlier_attempts_usd"] == 0.25
        assert report["requests"]["attempts"] == 5 and report["requests"]["retries"] == 3
        assert report["requests"]["http_429_in_rows"] == 1
        assert report["latency_ms"] == alone["latency_ms"]


async def run_with_a_long_system_prompt(tmp_path: Path, model: str, texts: list[str],
                                        prices: str) -> None:
    """A job of ``texts`` (rows a, b, c, ...) asking ``model`` under a system prompt long
    enough to be cached, priced by the TOML lines ``prices``, run against the simulator into
    ``tmp_path / "out"``; it must exit 0."""
    from batchrunner.config import load_job
    from batchrunner.retry import RetryPolicy
    from batchrunner.runner import RunOptions, run_job
    from batchrunner.simulator import Simulator, SimulatorConfig

    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"{chr(97 + i)},{t}\n" for i, t in enumerate(texts)))
    job = tmp_path / "job.toml"
    job.write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "{model}"\n'
        f'system = "{"You are a careful product copywriter. " * 200}"\n'
        'prompt = "Describe {text}"\nmax_tokens = 50\n[output]\ndir = "out"\n'
        f'[prices."{model}"]\n{prices}')
    async with Simulator(SimulatorConfig()) as sim:
        s = await run_job(load_job(job, {"base_url": sim.base_url}),
                          RunOptions(retry=RetryPolicy(base_s=0.0), progress="none",
                                     handle_signals=False))
    assert s.exit_code == 0


@pytest.mark.anyio
async def test_a_rehearsal_of_a_claude_job_prices_its_cache_write(tmp_path: Path) -> None:
    """A Claude job's shared system prompt is written to the cache by its first request (1.25
    times the input price) and read by the others: the simulator said every row read it, so
    a rehearsal priced no cache write and showed none. Its rows now have the write, priced at
    the job's cache_write price, and the reports show it."""
    import pandas as pd

    await run_with_a_long_system_prompt(
        tmp_path, "claude-sonnet-4-5", ["kettle", "tent", "lamp"],
        "input = 3.0\noutput = 15.0\ncached_input = 0.3\ncache_write = 3.75\n")
    out = tmp_path / "out"
    df = pd.read_parquet(out / "results.parquet")
    prefix = 3 + len("You are a careful product copywriter. " * 200) // 4
    assert sorted(df["cache_write_tokens"].fillna(0).tolist()) == [0, 0, prefix]
    assert sorted(df["cached_tokens"].tolist()) == [0, prefix, prefix]
    new = df["prompt_tokens"] - df["cached_tokens"] - df["cache_write_tokens"].fillna(0)
    cost = (new * 3.0 + df["cached_tokens"] * 0.3 + df["cache_write_tokens"].fillna(0) * 3.75
            + df["completion_tokens"] * 15.0) / 1_000_000
    assert df["cost_usd"].tolist() == pytest.approx(cost.tolist())
    report = json.loads((out / "cost_report.json").read_text())
    assert report["tokens"]["cache_write"] == prefix
    assert report["cost_usd"] == pytest.approx(cost.sum())
    md = (out / "cost_report.md").read_text()
    assert re.search(rf"\| Prompt tokens written to the cache +\| {prefix:,} +\|", md), md


@pytest.mark.anyio
async def test_the_reports_show_search_cost_apart_and_cache_tokens_by_model(
        tmp_path: Path) -> None:
    """A Grok job whose search is most of its cost ($0.10 of $0.106: four sources at $0.025)
    showed the search units and the total, not what the search cost; and the by-model table
    of cost_report.md had no cache columns (5,376 of the 5,748 prompt tokens were read from
    the cache). The search cost is now its own figure in the JSON (the job's and each
    model's), both reports' totals and their by-model tables, and the Markdown table shows
    the cached tokens, where any row has them."""
    await run_with_a_long_system_prompt(
        tmp_path, "grok-4", ["kettle [[sim:citations]]", "tent [[sim:citations]]", "lamp"],
        "input = 3.0\noutput = 15.0\ncached_input = 0.75\nsearch_unit = 0.025\n")
    out = tmp_path / "out"
    report = json.loads((out / "cost_report.json").read_text())
    units = report["search_units"]["total"]
    assert units == 4
    assert report["search_cost_usd"] == pytest.approx(units * 0.025)
    grok = report["by_model"]["grok-4"]
    assert grok["search_cost_usd"] == pytest.approx(units * 0.025)
    cached = grok["cached_tokens"]
    assert cached > 0
    md = (out / "cost_report.md").read_text()
    assert cell(md, "of which search") == format_usd(units * 0.025)
    head = next(x for x in md.splitlines() if x.startswith("| Model "))
    row = next(x for x in md.splitlines() if x.startswith("| grok-4 "))
    columns = dict(zip([c.strip() for c in head.split("|")],
                       [c.strip() for c in row.split("|")], strict=True))
    assert columns["Cached"] == f"{cached:,}"
    assert columns["Search"] == format_usd(units * 0.025)
    html = (out / "report.html").read_text()
    assert f"of which {format_usd(units * 0.025)} search" in html
    assert "<th class=n>Search</th>" in html
    assert f"<td class=n>{format_usd(units * 0.025)}</td>" in html
    # A job without search or cache reads has no such columns.
    plain = build_report(table([ok_row(PriceBook({"my-model": OWN}), "a", "my-model",
                                       cached=0)]), prices=PriceBook({"my-model": OWN}),
                         job=JOB, wall_s=1.0)
    assert plain["search_cost_usd"] == 0.0
    head = next(x for x in render_markdown(plain).splitlines() if x.startswith("| Model "))
    assert "Cached" not in head and "Search" not in head


def test_the_markdown_by_model_table_counts_each_models_failed_rows() -> None:
    """A comparison of two models, one of which refused every row (a temperature a reasoning
    model does not take): cost_report.md's table of models showed that model's rows with no
    tokens and a cost of $0.0000, as if answered, where report.html and the JSON count them
    failed. The table has a Failed column now, where some row failed."""
    book = PriceBook({"my-model": OWN, "other-model": OWN})
    refused = [failed_row(f"b{i}", "http_400", "Unsupported value: 'temperature'",
                          model="other-model", priced_as="other-model") for i in range(3)]
    report = build_report(table([ok_row(book, "a", "my-model"), *refused]), prices=book,
                          job=JOB, wall_s=1.0)
    assert report["by_model"]["other-model"]["failed"] == 3
    md = render_markdown(report)
    head = next(x for x in md.splitlines() if x.startswith("| Model "))
    for model, rows, failed in (("my-model", "1", "0"), ("other-model", "3", "3")):
        row = next(x for x in md.splitlines() if x.startswith(f"| {model} "))
        columns = dict(zip([c.strip() for c in head.split("|")],
                           [c.strip() for c in row.split("|")], strict=True))
        assert (columns["Rows"], columns["Failed"]) == (rows, failed)
    # A job with no failed row has no such column.
    plain = build_report(table([ok_row(book, "a", "my-model")]), prices=book, job=JOB,
                         wall_s=1.0)
    head = next(x for x in render_markdown(plain).splitlines() if x.startswith("| Model "))
    assert "Failed" not in head


def test_cached_tokens_priced_at_the_input_price_of_a_job_entry_without_cached_input() -> None:
    # A [prices] entry as the README's, without its cached_input line: the cached tokens the
    # replies reported cost the input price, and nothing said so.
    book = PriceBook({"my-gateway-model": ModelPrice(input=0.15, output=0.6), "my-model": OWN,
                      "Qwen/Qwen3-8B": ModelPrice(input=0, output=0)})  # a server of its own
    rows = [ok_row(book, "a", "my-gateway-model", cached=300),
            ok_row(book, "b", "my-gateway-model-2025-01-01", cached=40),
            ok_row(book, "c", "my-model", cached=100), ok_row(book, "d", "Qwen/Qwen3-8B")]
    report = build_report(table(rows), prices=book, job=JOB, wall_s=1.0)
    said = ('cached prompt tokens priced at the input price, as [prices."my-gateway-model"] '
            "sets no cached_input: add it (USD per 1M tokens) where the API bills cached tokens "
            "lower (most list a cached-input price)")
    assert [w for w in report["warnings"] if "cached_input" in w] == [
        f"model 'my-gateway-model': 300 {said}",
        f"model 'my-gateway-model-2025-01-01': 40 {said}"], report["warnings"]
    # No cached tokens, no word of it
    none = build_report(table([ok_row(book, "a", "my-gateway-model", cached=0)]), prices=book,
                        job=JOB, wall_s=1.0)
    assert not [w for w in none["warnings"] if "cached_input" in w]
