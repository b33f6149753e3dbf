"""report.html: a self-contained page with SVG charts, safe with any content, light at any size."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import batchrunner.cli
from batchrunner.pricing import ModelPrice, PriceBook
from batchrunner.records import OUTCOME_SCHEMA, Outcome
from batchrunner.report import (
    REPORT_COLUMNS,
    REPORT_HTML,
    OutcomeStats,
    build_report,
    format_usd,
    render_markdown,
    write_reports,
)
from batchrunner.report_html import (
    MAX_CATEGORIES,
    MAX_LATENCY_BINS,
    MAX_TIME_BUCKETS,
    render_html,
)
from tests.test_report import CHUNK_SIZES, cell, chunked, varied_rows

OWN = ModelPrice(input=2.0, output=8.0, cached_input=0.5)
T0 = 1_767_322_800.0  # 2026-01-02 03:00:00 UTC
XSS = "<script>alert(1)</script>"
CHARTS = 6  # timeline, latency, tokens by model, cost by model, by status, by finish_reason
CHROMIUM = "/usr/bin/chromium"


def table(outcomes: list[Outcome]) -> pa.Table:
    return pa.Table.from_pylist([o.as_dict() for o in outcomes], schema=OUTCOME_SCHEMA)


def ok_row(
    book: PriceBook,
    key: str,
    model: str,
    *,
    at: float,
    latency: float = 400.0,
    prompt: int = 800,
    completion: int = 120,
    cached: int = 0,
    rate_limited: int = 0,
    finish: str = "stop",
    content: str = "A red kettle with a wooden handle.",
) -> Outcome:
    return Outcome(
        key=key,
        status="ok",
        content=content,
        finish_reason=finish,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=cached,
        reasoning_tokens=0,
        cost_usd=book.cost(
            model, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached
        ),
        latency_ms=latency,
        attempts=1 + rate_limited,
        rate_limited=rate_limited,
        model=model,
        finished_at=at,
    )


def failed_row(key: str, *, at: float, error_type: str = "timeout", **kw: Any) -> Outcome:
    return Outcome(
        key=key,
        status="failed",
        attempts=6,
        error_type=error_type,
        error_message=kw.pop("message", "timed out after 120 s"),
        finished_at=at,
        **kw,
    )


@pytest.fixture
def book() -> PriceBook:
    return PriceBook({"my-model": OWN})


@pytest.fixture
def mixed(book: PriceBook) -> list[Outcome]:
    rows = [
        ok_row(
            book,
            f"a{i}",
            "gpt-4o-mini",
            at=T0 + i * 0.25,
            latency=100.0 + 7.0 * i,
            rate_limited=1 if i % 10 == 0 else 0,
            finish="length" if i % 17 == 0 else "stop",
        )
        for i in range(120)
    ]
    rows += [
        ok_row(book, f"b{i}", "my-model", at=T0 + 3 + i, cached=200, latency=900.0 + i)
        for i in range(20)
    ]
    rows += [ok_row(book, f"u{i}", "no-such-model-xyz", at=T0 + 10 + i) for i in range(5)]
    rows += [
        failed_row("f1", at=T0 + 5, latency_ms=120_000.0),
        failed_row("f2", at=T0 + 6, error_type="rate_limited", message="429", rate_limited=6),
    ]
    return rows


def page_of(rows: list[Outcome], book: PriceBook, **kw: Any) -> str:
    t = table(rows)
    job = {"name": kw.pop("name", "nightly"), "input": "data/products.csv"}
    report = build_report(t, prices=book, job=job, wall_s=kw.pop("wall_s", 60.0))
    return render_html(report, t)


def svgs(page: str) -> dict[str, str]:
    """Each chart's SVG markup, by its aria-label."""
    found = re.findall(r'<svg class="chart" role="img" aria-label="([^"]*)"[^>]*>(.*?)</svg>', page)
    return dict(found)


class _Checker(HTMLParser):
    """Fails on tags closed out of order or left open (void and self-closed tags aside)."""

    VOID = frozenset({"meta", "link", "br", "hr", "img", "input", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()


def assert_well_formed(page: str) -> None:
    assert page.startswith("<!doctype html>")
    assert '<meta charset="utf-8">' in page
    assert re.search(r"<title>[^<]+</title>", page)
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    charts = svgs(page)
    assert page.count('<svg class="chart"') == CHARTS == len(charts)
    assert all(label for label in charts)


def external_refs(page: str) -> list[str]:
    """Anything that would make a browser fetch from a network address."""
    patterns = [
        r"""(?:src|href|xlink:href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//""",
        r"""url\(\s*["']?\s*(?:https?:)?//""",
        r"@import",
        r"<script[^>]+src",
    ]
    return [m.group(0) for p in patterns for m in re.finditer(p, page, re.IGNORECASE)]


# --------------------------------------------------------------------------------------------
# Content


def test_page_shows_the_report(book: PriceBook, mixed: list[Outcome]) -> None:
    page = page_of(mixed, book)
    assert_well_formed(page)
    assert "<title>Batch report: nightly</title>" in page
    assert "147" in page and "145 ok · 2 failed" in page
    assert "+ unknown" in page  # no-such-model-xyz has no price
    assert "cost unknown for 5 rows paid for (no-such-model-xyz)" in page
    assert "my-model from job [prices]" in page and "no-such-model-xyz no price known" in page
    assert "1m 00s" in page or "60.0 s" in page  # wall time
    charts = svgs(page)
    timeline = next(s for k, s in charts.items() if k.startswith("Rows finished per second"))
    assert 'class="b-ok"' in timeline and 'class="b-failed"' in timeline
    assert 'class="b-429"' in timeline
    latency = next(s for k, s in charts.items() if k.startswith("Histogram of the latency"))
    assert latency.count('class="b-lat"') >= 5
    for q in ("p50", "p95", "p99"):
        assert f'class="mark m-{q}"' in latency and f">{q} " in latency
    tokens = next(s for k, s in charts.items() if k.startswith("Tokens by model"))
    assert all(m in tokens for m in ("gpt-4o-mini", "my-model", "no-such-model-xyz"))
    cost = next(s for k, s in charts.items() if k.startswith("Cost in USD"))
    assert "unknown (5 rows unpriced)" in cost  # nothing known: no bar, the text says so
    assert "429s are its rate_limited count" in page  # the caption says how 429s are placed
    assert "The 10 slowest rows" in page and "The 10 most expensive rows" in page
    slowest = page.split("The 10 slowest rows", 1)[1].split("The 10 most expensive rows", 1)[0]
    assert slowest.index(">f1<") < slowest.index(">b19<")  # 120 s failed row first
    assert slowest.count("<tr>") == 1 + 10  # head + ten rows


def test_timeline_buckets_by_second_from_the_first_row(book: PriceBook) -> None:
    at = [0.0, 0.2, 0.9, 1.5, 4.0, 4.99, 24.5]  # 20 s or more: 1-second buckets
    rows = [ok_row(book, f"r{i}", "my-model", at=T0 + a) for i, a in enumerate(at)]
    rows[4].rate_limited = 3
    page = page_of(rows, book)
    timeline = next(s for k, s in svgs(page).items() if k.startswith("Rows finished"))
    titles = re.findall(r'<rect class="b-ok"[^>]*><title>([^<]*)</title>', timeline)
    assert titles == [
        "0s–1s: 3 ok rows/s", "1s–2s: 1 ok rows/s", "4s–5s: 2 ok rows/s", "24s–25s: 1 ok rows/s"
    ]
    assert re.findall(r'<rect class="b-429"[^>]*><title>([^<]*)</title>', timeline) == [
        "4s–5s: 3 429s/s"
    ]
    assert "in 1-second buckets" in page and "2026-01-02 03:00:00 UTC" in page


def time_ticks(timeline: str) -> list[str]:
    """The time axis's tick labels, left to right."""
    return re.findall(r'<text class="tick" x="[^"]*" y="[^"]*" text-anchor="middle">([^<]*)<',
                      timeline)


def test_a_short_run_spans_the_axis_in_sub_second_buckets(book: PriceBook) -> None:
    # 3 s of rows, 20 a second (two in each tenth of a second, off its edges): the axis ends
    # at 3 s, not at 20 one-second buckets' 20 s with three bars at its start.
    at = [k / 10 + d for k in range(30) for d in (0.03, 0.07)]
    at[0] = 0.0  # the first row finished: the axis's 0
    rows = [ok_row(book, f"r{i}", "my-model", at=T0 + a) for i, a in enumerate(at)]
    page = page_of(rows, book)
    timeline = next(s for k, s in svgs(page).items() if k.startswith("Rows finished"))
    assert time_ticks(timeline) == ["0s", "0.5s", "1s", "1.5s", "2s", "2.5s", "3s"]
    titles = re.findall(r'<rect class="b-ok"[^>]*><title>([^<]*)</title>', timeline)
    assert len(titles) == 30
    assert titles[0] == "0s–0.1s: 20 ok rows/s (mean over 0.1s)"
    assert titles[-1] == "2.9s–3s: 20 ok rows/s (mean over 0.1s)"
    assert "in 0.1-second buckets" in page and "averaged over each bucket" in page

    # A job of one row: one bucket of a second (in 0.01 s, one row would be 100 rows/s).
    page = page_of(rows[:1], book)
    timeline = next(s for k, s in svgs(page).items() if k.startswith("Rows finished"))
    titles = re.findall(r'<rect class="b-ok"[^>]*><title>([^<]*)</title>', timeline)
    assert titles == ["0s–1s: 1 ok rows/s"] and "in 1-second buckets" in page


def test_long_runs_are_drawn_in_wider_buckets(book: PriceBook) -> None:
    rows = [ok_row(book, f"r{i}", "my-model", at=T0 + i * 37.0) for i in range(3000)]  # 31 h
    page = page_of(rows, book)
    timeline = next(s for k, s in svgs(page).items() if k.startswith("Rows finished"))
    assert 10 < timeline.count('class="b-ok"') <= MAX_TIME_BUCKETS
    assert "in 10m buckets" in page and "averaged over each bucket" in page


@pytest.mark.parametrize(
    "p50, p95, p99",
    [
        (200.0, 290.0, 293.0),  # p95 and p99 a few ms apart, at the right edge
        (296.0, 297.0, 298.5),  # all three there
        (200.0, 201.0, 203.0),  # all three in the middle
        (101.0, 102.0, 104.0),  # at the left edge
        (105.0, 290.0, 292.0),  # p50 at the left edge, p95 and p99 at the right one
    ],
)
def test_latency_marker_labels_stay_clear_when_close(
    book: PriceBook, p50: float, p95: float, p99: float
) -> None:
    rows = [ok_row(book, f"r{i}", "my-model", at=T0 + i, latency=100 + i / 5) for i in range(1000)]
    t = table(rows)
    report = build_report(t, prices=book, job={"name": "close"}, wall_s=60.0)
    report["latency_ms"].update(p50=p50, p95=p95, p99=p99)  # the histogram spans 100-300 ms
    latency = next(s for k, s in svgs(render_html(report, t)).items() if k.startswith("Histogram"))
    marks = re.findall(r'<line class="mark m-(p\d\d)" x1="([^"]*)" y1="([^"]*)"', latency)
    lines = {q: (float(x), float(y1)) for q, x, y1 in marks}
    labels = re.findall(
        r'<text class="mark-label m-(p\d\d)" x="([^"]*)" y="([^"]*)"(?: text-anchor="(end)")?>'
        r"([^<]*)</text>",
        latency,
    )
    assert sorted(lines) == sorted(q for q, *_ in labels) == ["p50", "p95", "p99"]
    assert len({y for _, _, y, _, _ in labels}) == 3  # a row each
    for q, x, y, end, text in labels:
        assert text.startswith(f"{q} ") and text.endswith(" ms")
        line_x, line_y1 = lines[q]
        assert float(x) == pytest.approx(line_x + (-4 if end else 4), abs=0.1)  # beside its line,
        assert line_y1 == pytest.approx(float(y) + 3, abs=0.1)  # which starts at its foot
        # No other marker's line passes through the label: a line starting above the label's
        # baseline is on the far side of its anchor or further than the text can reach (11px
        # bold: no character wider than 11 units).
        reach = 11 * len(text)
        text_from, text_to = (float(x) - reach, float(x)) if end else (float(x), float(x) + reach)
        for other, (other_x, other_y1) in lines.items():
            if other != q and other_y1 < float(y):
                assert not text_from < other_x < text_to, (q, other, labels)
    # At the right edge a label is drawn left of its line, inside the chart.
    assert all(end for q, _, _, end, _ in labels if {"p50": p50, "p95": p95, "p99": p99}[q] > 290)


# --------------------------------------------------------------------------------------------
# Safety


def test_data_is_escaped_everywhere(book: PriceBook) -> None:
    evil_model = '<img src=x onerror="alert(2)">'
    rows = [
        ok_row(book, "<b>key</b>", "my-model", at=T0, latency=9_000.0, content=XSS * 3),
        ok_row(book, "plain", evil_model, at=T0 + 1, content="fine"),
        failed_row("bad", at=T0 + 2, error_type="<i>x</i>", message=XSS, latency_ms=8_000.0),
        Outcome(
            key="ctl", status="ok", content="a\x00b\x1bc", finish_reason=XSS, finished_at=T0 + 3
        ),
    ]
    page = page_of(rows, book, name=f'"><svg onload=alert(3)>{XSS}')
    assert_well_formed(page)
    assert XSS not in page and "<script" not in page.lower()
    assert "<img" not in page and "<svg onload" not in page and 'onerror="' not in page
    assert "<b>key</b>" not in page and "<i>x</i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text
    assert "&lt;b&gt;key&lt;/b&gt;" in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    assert "\x00" not in page and "\x1b" not in page
    assert external_refs(page) == []


def test_no_network_resources(book: PriceBook, mixed: list[Outcome]) -> None:
    mixed[0].content = 'see https://example.com/x.png and <a href="http://evil.test/">here</a>'
    mixed[0].latency_ms = 50_000.0  # among the slowest: its content is on the page, as text
    page = page_of(mixed, book)
    assert "https://example.com/x.png" in page  # text is text
    assert external_refs(page) == []
    assert "default-src 'none'" in page  # the browser refuses any load anyway
    # Without URLs in the data there is no network address on the page at all.
    clean = page_of(mixed[1:], book)
    assert "http://" not in clean and "https://" not in clean


# --------------------------------------------------------------------------------------------
# Edge cases


def test_edge_cases_render(book: PriceBook) -> None:
    cases: dict[str, list[Outcome]] = {
        "no rows": [],
        "all failed": [failed_row(f"f{i}", at=T0 + i) for i in range(5)],
        "one row": [ok_row(book, "only", "my-model", at=T0)],
        "no finish times": [ok_row(book, f"r{i}", "my-model", at=0.0) for i in range(3)],
        "unknown costs only": [ok_row(book, f"u{i}", "no-such-model-xyz", at=T0) for i in range(3)],
        "no usage": [Outcome(key="x", status="ok", model="my-model", finished_at=T0)],
        "no model": [Outcome(key="x", status="ok", content="hi", finished_at=T0, latency_ms=5.0)],
        "same latency": [ok_row(book, f"s{i}", "my-model", at=T0, latency=250.0) for i in range(9)],
        "zero latency": [ok_row(book, "z", "my-model", at=T0, latency=0.0)],
    }
    for name, rows in cases.items():
        page = page_of(rows, book, wall_s=None)
        assert_well_formed(page)
        assert "nightly" in page, name
    empty = page_of([], book)
    assert "No rows." in empty and "no ok row with a latency" in empty
    assert "No row has a latency_ms" in empty and "No row has a cost_usd" in empty
    unknown = page_of(cases["unknown costs only"], book)
    assert card(unknown, "Cost (USD)")[0] == "unknown"  # no row has a cost: no "$0.0000 +"
    assert "unknown (3 rows unpriced)" in unknown
    assert "No row has a cost_usd" in unknown


def test_many_models_and_finish_reasons_are_capped(book: PriceBook) -> None:
    rows = [
        ok_row(book, f"r{i}", f"model-{i % 40}", at=T0 + i, finish=f"reason-{i % 30}")
        for i in range(400)
    ]
    charts = svgs(page_of(rows, book))
    tokens = next(s for k, s in charts.items() if k.startswith("Tokens by model"))
    assert tokens.count('<text class="cat"') == MAX_CATEGORIES
    assert "(26 other models)" in tokens
    finish = next(s for k, s in charts.items() if k.startswith("rows by finish reason"))
    assert finish.count('<text class="cat"') == MAX_CATEGORIES and "(16 others)" in finish


# Python calls (and calls into C) render_html makes for a million rows: 31,751 at 53c0b9d.
CALLS_BOUND = 100_000
# And the Python lines it runs (a loop over the rows in bytecode alone calls nothing): 58,962 at
# 9f01e1c.
LINES_BOUND = 300_000


def test_a_million_rows_stay_fast_and_light() -> None:
    n = 1_000_000
    rng = np.random.default_rng(7)
    ok = rng.random(n) < 0.97
    latency = rng.lognormal(6.5, 0.7, n)
    latency[:10] = 600_000.0  # a long tail goes into one overflow bar
    cols: dict[str, pa.Array] = {
        "key": pa.array(np.arange(n)).cast(pa.string()),
        "status": pa.array(np.where(ok, "ok", "failed")),
        "content": pa.array(np.full(n, "an answer", dtype=object)),
        "finish_reason": pc.if_else(pa.array(ok), "stop", pa.scalar(None, pa.string())),
        "prompt_tokens": pa.array(rng.integers(10, 1000, n)),
        "completion_tokens": pa.array(rng.integers(1, 300, n)),
        "cost_usd": pa.array(np.where(ok, latency * 1e-7, np.nan), from_pandas=True),
        "latency_ms": pa.array(latency),
        "attempts": pa.array(np.ones(n, dtype=np.int64)),
        "rate_limited": pa.array(rng.poisson(0.05, n)),
        "model": pa.array(np.where(rng.random(n) < 0.5, "gpt-4o-mini", "my-model")),
        "finished_at": pa.array(T0 + np.sort(rng.random(n)) * 3 * 86_400),  # three days
    }
    t = pa.table(
        [cols.get(f.name, pa.nulls(n, f.type)) for f in OUTCOME_SCHEMA], schema=OUTCOME_SCHEMA
    )
    report = build_report(t, prices=PriceBook({"my-model": OWN}), job={"name": "big"}, wall_s=9.0)

    calls = lines = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        lines += event == "line"
        return trace

    sys.setprofile(count)  # counted, not timed: a loaded machine's clock says nothing
    sys.settrace(trace)  # and the lines run: a loop of bytecode alone makes no call
    try:
        page = render_html(report, t)
    finally:
        sys.settrace(None)
        sys.setprofile(None)

    # Fast: whole columns at a time (pyarrow's compute), no step a row in Python, which would
    # be a million calls or lines or more.
    assert calls < CALLS_BOUND, calls
    assert lines < LINES_BOUND, lines
    assert_well_formed(page)
    assert len(page) < 400_000
    bound = 3 * MAX_TIME_BUCKETS + MAX_LATENCY_BINS + 1 + 4 * 3 * MAX_CATEGORIES
    assert page.count("<rect") <= bound
    assert "in 30m buckets" in page
    assert re.search(r"[\d,]+ rows slower than [^<]+ in the last bar \(max 10 min\)", page)


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_chunking_does_not_change_the_page(book: PriceBook, size: int) -> None:
    t = table(varied_rows(book))
    job = {"name": "chunks"}
    whole = build_report(t, prices=book, job=job, wall_s=60.0)
    stats = chunked(t.select(list(REPORT_COLUMNS)), size)
    report = {**build_report(stats, prices=book, job=job, wall_s=60.0)}
    report["generated_at"] = whole["generated_at"]

    page = render_html(report, stats)
    assert page == render_html(whole, t)
    assert_well_formed(page)
    assert "43 ok rows in " in page and " 1 row without a finish time " in page
    slowest, expensive = page.split("The 10 slowest rows", 1)[1].split("The 10 most expensive", 1)
    # Largest first; ties (90 s twice, 5 s many times, over many chunks) by key.
    keys = re.findall(r'<td class="rk" title="[^"]*">([^<]*)</td>', slowest)
    assert keys == ["f2", "f5", "f0", "f3", "f6", "r01", "r10", "r13", "r16", "r19"]
    keys = re.findall(r'<td class="rk" title="[^"]*">([^<]*)</td>', expensive)
    assert keys[:4] == ["f1", "f3", "f5", "f7"] and len(keys) == 10


def test_page_needs_key_and_content(book: PriceBook) -> None:
    t = table([ok_row(book, "a", "my-model", at=T0)])
    stats = OutcomeStats.of(t.drop_columns(["content"]))
    report = build_report(stats, prices=book, job={}, wall_s=None)
    with pytest.raises(ValueError, match="content"):
        render_html(report, stats)


def test_missing_columns_are_named(book: PriceBook) -> None:
    t = table([ok_row(book, "a", "my-model", at=T0)])
    report = build_report(t, prices=book, job={}, wall_s=None)
    with pytest.raises(ValueError, match="latency_ms"):
        render_html(report, t.drop_columns(["latency_ms"]))


# --------------------------------------------------------------------------------------------
# Files


def test_write_reports_adds_report_html(
    book: PriceBook, mixed: list[Outcome], tmp_path: Path
) -> None:
    t = table(mixed)
    report = build_report(t, prices=book, job={"name": "nightly"}, wall_s=60.0)

    paths = write_reports(report, tmp_path / "a")
    assert [p.name for p in paths] == ["cost_report.json", "cost_report.md"]
    assert not (tmp_path / "a" / REPORT_HTML).exists()

    paths = write_reports(report, tmp_path / "b", outcomes=t)
    assert [p.name for p in paths] == ["cost_report.json", "cost_report.md", "report.html"]
    html_path = paths[2]
    assert stat.S_IMODE(html_path.stat().st_mode) == 0o600
    assert html_path.read_text(encoding="utf-8") == render_html(report, t)

    stats = OutcomeStats.of(t)
    paths = write_reports(report, tmp_path / "c", outcomes=stats)
    assert paths[2].read_text(encoding="utf-8") == render_html(report, t)
    assert sorted(p.name for p in html_path.parent.iterdir()) == sorted(p.name for p in paths)


# --------------------------------------------------------------------------------------------
# A real browser


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # The page is a file: nothing the browser might fetch leaves the machine (no name is
        # resolved, any request goes to a closed port on 127.0.0.1).
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        f"--user-data-dir={profile}",
        *args,
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} not installed (Debian/Ubuntu: apt-get install -y chromium)",
)
def test_chromium_renders_the_page(book: PriceBook, mixed: list[Outcome], tmp_path: Path) -> None:
    assert shutil.which(CHROMIUM)
    mixed[0].content = XSS
    mixed[0].latency_ms = 60_000.0
    t = table(mixed)
    report = build_report(t, prices=book, job={"name": "browser"}, wall_s=60.0)
    (path,) = [
        p for p in write_reports(report, tmp_path / "out", outcomes=t) if p.suffix == ".html"
    ]
    url = path.resolve().as_uri()

    dom = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<svg class="chart" role="img"') == CHARTS
    assert dom.stdout.count("<rect") > 50 and "<line" in dom.stdout
    assert "Batch report: browser" in dom.stdout
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout and XSS not in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not [c for c in console if "Uncaught" in c], console
    assert not [c for c in console if "Content Security Policy" in c], console  # no load tried

    png = tmp_path / "page.png"
    shot = _chromium(tmp_path, f"--screenshot={png}", "--window-size=1200,2000", url)
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000


def test_a_failed_row_never_billed_has_no_cost_not_an_unknown_one(book: PriceBook) -> None:
    rows = [failed_row("f1", at=T0, latency_ms=9_000.0),  # an HTTP error: no answer, no bill
            ok_row(book, "u1", "no-such-model-xyz", at=T0 + 1, latency=5_000.0)]
    page = page_of(rows, book)
    slowest = page[page.index("The 10 slowest rows"):]
    cells = dict(re.findall(r'title="(f1|u1)">.*?</td>(?:<td[^>]*>.*?</td>){4}'
                            r'<td class=n>([^<]*)</td>', slowest))
    assert cells == {"f1": "–", "u1": "unknown"}


# --------------------------------------------------------------------------------------------
# The same figures as cost_report.md, read the same way


def card(page: str, label: str) -> tuple[str, str]:
    """The value and note of the header card labelled ``label``."""
    found = re.search(rf'<div class="label">{re.escape(label)}</div><div class="value">([^<]*)'
                      r'</div><div class="note">([^<]*)</div>', page)
    assert found, label
    return found[1], found[2]


def test_the_cost_card_says_unknown_where_no_row_has_a_cost_as_the_summary_does(
        book: PriceBook) -> None:
    """Rows of a model with no price: the card read ``$0.0000 + unknown`` (the known part, 0),
    where the run's summary says the cost is unknown; with tries that may have been billed
    with no usage reported, ``at least $0.0000 + unknown + unknown``. It says unknown where no
    row has a cost, and the known part plus unknown where some have, at least so with such
    tries; the model's cells and bar say unknown too, never $0.0000."""
    unpriced = [ok_row(book, f"u{i}", "no-such-model-xyz", at=T0 + i) for i in range(3)]
    page = page_of(unpriced, book)
    cost, note = card(page, "Cost (USD)")
    assert cost == "unknown" and note == "cost unknown for 3 rows paid for (no-such-model-xyz)"
    models = page[page.index("<caption>Prices in USD per 1M tokens"):]
    assert "<td class=n>unknown (3 rows)</td>" in models
    assert "$0.0000" not in page

    untold = [Outcome(key=f"n{i}", status="ok", content="Echo", model="my-model", attempts=1,
                      unreported_usd=0.0025, finished_at=T0 + i) for i in range(3)]
    cost, note = card(page_of(unpriced + untold, book), "Cost (USD)")
    assert cost == "unknown" and "estimated at $0.0075" in note

    known = [ok_row(book, "k", "my-model", at=T0)]
    t = table(unpriced + known)
    report = build_report(t, prices=book, job={"name": "nightly"}, wall_s=None)
    shown = format_usd(report["cost_known_usd"])
    assert card(render_html(report, t), "Cost (USD)")[0] == f"{shown} + unknown"
    assert cell(render_markdown(report), "Cost (USD)") == (f"{shown}, and 3 rows without a cost "
                                                          "(see warnings)")
    assert card(page_of(unpriced + known + untold, book), "Cost (USD)")[0] == (
        f"at least {shown} + unknown")


def test_job_fields_are_shown_for_people(book: PriceBook) -> None:
    rows = [ok_row(book, "a", "my-model", at=T0)]
    for value, shown in ((True, "yes"), (False, "no"), ("some rows", "some rows")):
        job = {"name": "nightly", "input": "in.csv", "simulator": value, "tags": ["a", "b"],
               "note": None}
        report = build_report(table(rows), prices=book, job=job, wall_s=1.0)
        page = render_html(report, table(rows))
        (details,) = re.findall(r'<dl class="job">(.*?)</dl>', page)
        assert f"<dt>simulator</dt><dd>{shown}</dd>" in details
        assert "<dt>tags</dt><dd>a, b</dd>" in details and "note" not in details
        assert "True" not in details and "False" not in details and "None" not in details
        md = render_markdown(report)
        assert f"- simulator: {shown}\n" in md


def test_latency_wall_time_and_costs_read_as_in_the_markdown(book: PriceBook) -> None:
    rows = [ok_row(book, f"r{i}", "my-model", at=T0 + i, latency=8.0 + i) for i in range(3)]
    for r in rows:
        r.cost_usd = 1.44e-5
    rows[0].earlier_cost_usd = 2.5e-6
    t = table(rows)
    report = build_report(t, prices=book, job={"name": "nightly"}, wall_s=0.032)
    report["latency_ms"].update(p50=8.4, p95=12.3, p99=22.7)
    page, md = render_html(report, t), render_markdown(report)

    latency, _ = card(page, "Latency p50 / p95 / p99")
    assert latency == "8.4 ms / 12.3 ms / 22.7 ms" == cell(md, "Latency p50 / p95 / p99")
    wall, _ = card(page, "Wall time, last run that sent")
    assert wall == "0.032 s" == cell(md, "Wall time (the last run that sent)")
    cost, note = card(page, "Cost (USD)")
    assert cost == "$0.0000432" == cell(md, "Cost (USD)")
    assert "plus $0.0000025 for earlier attempts" in note
    priciest = page[page.index("The 10 most expensive rows"):]
    assert priciest.count("<td class=n>$0.0000144</td>") == 3  # each row's own cost
    models = page[page.index("<caption>Prices in USD per 1M tokens"):]
    assert "<td class=n>$0.0000432</td>" in models
    assert "$0.0000<" not in page and "$0.000000" not in page


def test_failed_rows_advice_is_on_the_page(book: PriceBook) -> None:
    rows = [ok_row(book, "a", "my-model", at=T0),
            failed_row("bad", at=T0 + 1, error_type="invalid_row", message="no text")]
    page = page_of(rows, book)
    assert ("1 row failed (see failures by type): fix the input of the 1 row that could not be "
            "sent (invalid_row: its error_message says why), then rerun with "
            "--retry-failed to send it") in page
    assert "a rerun can retry" not in page


def test_cached_tokens_no_reply_gave_are_not_reported_not_zero(book: PriceBook) -> None:
    """As in cost_report.md: a server that never says how many prompt tokens were cached has
    not said none were, so the page does not show 0 cached, for the job or for that model."""
    silent = [ok_row(book, f"s{i}", "my-model", at=T0 + i) for i in range(3)]
    for r in silent:
        r.cached_tokens = r.reasoning_tokens = None
    said = [ok_row(book, "c", "gpt-4o-mini", at=T0 + 5, cached=0)]
    t = table(silent)
    report = build_report(t, prices=book, job={"name": "nightly"}, wall_s=1.0)
    assert report["by_model"]["my-model"]["tokens_reported_by_rows"] == {
        "cached": 0, "reasoning": 0, "cache_write": 0}
    page = render_html(report, t)
    _, note = card(page, "Tokens")
    assert note == "2.4k prompt (cached not reported) · 360 completion"
    models = page[page.index("<caption>Prices in USD per 1M tokens"):]
    assert "<td class=n>2,400</td><td class=n>not reported</td>" in models

    t = table([*silent, *said])
    report = build_report(t, prices=book, job={"name": "nightly"}, wall_s=1.0)
    page = render_html(report, t)
    _, note = card(page, "Tokens")
    assert note == "3.2k prompt (0 cached) · 480 completion"  # one reply said: none
    models = page[page.index("<caption>Prices in USD per 1M tokens"):]
    assert "<td class=n>2,400</td><td class=n>not reported</td>" in models
    assert "<td class=n>800</td><td class=n>0</td>" in models


def test_prompt_tokens_written_to_the_cache_are_shown_where_cached_ones_are(
        book: PriceBook) -> None:
    """Claude's cache writes (cache_write_tokens, at 1.25 or 2 times the input price) are in
    cost_report.md and the results: the page showed the cache reads alone. The tokens card,
    the table of models (with the write prices) and the tokens chart show them now, for the
    models whose replies counted them; a job with none has no such column."""
    claude = PriceBook({"claude-x": ModelPrice(input=3.0, output=15.0, cached_input=0.3,
                                               cache_write=3.75, cache_write_1h=6.0)})
    rows = [ok_row(claude, f"c{i}", "claude-x", at=T0 + i, prompt=3000, completion=100,
                   cached=1000) for i in range(2)]
    for r in rows:
        r.cache_write_tokens = 1500
    rows.append(ok_row(claude, "g", "gpt-4o-mini", at=T0 + 3, prompt=500, completion=50))
    page = page_of(rows, claude)
    _, note = card(page, "Tokens")
    assert note == "6.5k prompt (2k cached, 3k written to the cache) · 250 completion"
    models = page[page.index("<caption>Prices in USD per 1M tokens"):]
    assert "<th class=n>Cached</th><th class=n>Written to the cache</th>" in models
    assert ("<td class=n>6,000</td><td class=n>2,000</td><td class=n>3,000</td>"
            "<td class=n>200</td>") in models
    assert "<td class=n>3 / 0.3 / 15 + 3.75 written to the cache (6 kept an hour)</td>" in models
    assert "<td class=n>500</td><td class=n>0</td><td class=n>not reported</td>" in models
    tokens = svgs(page)["Tokens by model: prompt, cached prompt and completion"]
    assert "claude-x: 3,000 prompt written to the cache" in tokens
    assert "claude-x: 1,000 uncached prompt not written to the cache" in tokens
    assert '<i class="b-written"></i>prompt written to the cache' in page  # the legend

    plain = page_of([ok_row(book, "a", "my-model", at=T0, cached=200)], book)
    assert "written to the cache" not in plain and "Written to the cache" not in plain


def test_the_prices_on_the_page_and_in_the_markdown_price_all_a_models_cost(
        book: PriceBook) -> None:
    """A finance reader checks each model's cost against its price: the page showed the token
    prices alone, so a Grok row's $0.1280 (its sources at $0.025 each) read against 3 / 3 / 15,
    and the Markdown left out the cache-write prices of a model whose rows wrote to the cache.
    Both show the same price now: tokens, cache writes where there were any, search."""
    prices = PriceBook({
        "grok-x": ModelPrice(input=3.0, output=15.0, search_unit=0.025),
        "claude-x": ModelPrice(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75,
                               cache_write_1h=6.0, search_unit=0.01),
        "search-x": ModelPrice(input=2.5, output=10.0, search_request=0.03)})
    rows = [ok_row(prices, "g", "grok-x", at=T0), ok_row(prices, "c", "claude-x", at=T0 + 1),
            ok_row(prices, "c2", "claude-x", at=T0 + 2),
            ok_row(prices, "s", "search-x", at=T0 + 3)]
    rows[1].cache_write_tokens = 100
    t = table(rows)
    report = build_report(t, prices=prices, job={"name": "nightly"}, wall_s=1.0)
    page, md = render_html(report, t), render_markdown(report)
    shown = {"grok-x": "3 / 3 / 15 + 0.025 a search unit",
             "claude-x": "3 / 0.3 / 15 + 3.75 written to the cache (6 kept an hour) + 0.01 a "
                         "search unit",
             "search-x": "2.5 / 2.5 / 10 + 0.03 a search request"}
    for model, price in shown.items():
        assert f"<td class=n>{price}</td>" in page, model
        (line,) = [x for x in md.splitlines() if x.startswith(f"| {model} ")]
        assert f"| {price} " in line, line
    # No cache writes: no cache-write price, whatever the model's price has.
    rows[1].cache_write_tokens = None
    t = table(rows)
    page = render_html(build_report(t, prices=prices, job={"name": "nightly"}, wall_s=1.0), t)
    assert "<td class=n>3 / 0.3 / 15 + 0.01 a search unit</td>" in page


def test_the_requests_card_counts_the_requests_sent_as_the_summary_does(
        book: PriceBook) -> None:
    """The card showed the rows' attempts (247 in the demo) under "Requests", where the run's
    summary said "248 requests sent this run (7 retried after an error ...; 1 answered 429":
    a request answered 429 is sent again without using up a try of its row. It shows the
    requests the report's counters say the last run that sent sent, as the summary does."""
    rows = [ok_row(book, f"r{i}", "my-model", at=T0 + i) for i in range(240)]
    for r in rows[:7]:
        r.attempts = 2  # retried after a 503
    t = table(rows)
    counters = {"sent": 248, "attempts": 247, "retries": 7, "http_429": 1, "error_http_503": 7,
                "error_rate_limited": 1}
    report = build_report(t, prices=book, job={"name": "demo"}, wall_s=4.3, counters=counters)
    assert report["requests"]["attempts"] == 247
    page = render_html(report, t)
    assert card(page, "Requests, last run that sent") == (
        "248 sent", "7 retried after an error · 1 answered 429")

    # A report with no counters of a run that sent: the rows' attempts, named so.
    page = render_html(build_report(t, prices=book, job={"name": "demo"}, wall_s=None), t)
    assert card(page, "Requests, the rows&#x27; latest attempts") == (
        "247 attempts", "7 retries · 0 × 429")


def test_the_requests_card_and_the_run_summary_agree(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run through the built-in simulator (on 127.0.0.1) answering some requests 503 and
    some 429: the card's figures are the summary's."""
    rows = "\n".join(f"k{i},item {i}" for i in range(60))
    (tmp_path / "in.csv").write_text(f"id,text\n{rows}\n")
    (tmp_path / "job.toml").write_text(
        'name = "agree"\n'
        '[input]\npath = "in.csv"\nid_column = "id"\n'
        '[request]\nmodel = "gpt-4o-mini"\nprompt = "Describe {text}"\nmax_tokens = 20\n'
        "[endpoint]\nsimulator = true\n"
        "[limits]\nmax_attempts = 10\nconcurrency = 8\n"
        '[output]\ndir = "out"\n'
        '[simulator]\nfault_retry_after_s = 0\nfaults = { "503" = 0.1, "429" = 0.1 }\n'
    )
    capsys.readouterr()
    code = batchrunner.cli.main(["run", str(tmp_path / "job.toml"), "--progress", "none"])
    out, err = capsys.readouterr()
    assert code == 0, err
    said = re.search(r"; ([\d,]+) requests sent this run \(([\d,]+) retried after an error: "
                     r"[^;]*; ([\d,]+) answered 429", out)
    assert said, out
    sent, retried, limited = said.groups()
    assert int(limited) > 0  # some 429s: the rows' attempts are fewer than the requests sent
    page = (tmp_path / "out" / "report.html").read_text()
    assert card(page, "Requests, last run that sent") == (
        f"{sent} sent", f"{retried} retried after an error · {limited} answered 429")
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["counters"]["sent"] == int(sent.replace(",", ""))
    assert report["requests"]["attempts"] < report["counters"]["sent"]
