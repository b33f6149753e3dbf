"""Cost report + outcome rows → one self-contained ``report.html`` with inline SVG charts.

``render_html(report, outcomes)`` returns the whole page as a string; ``outcomes`` is the
``OutcomeStats`` the report was built from (or the whole outcome table, read as one chunk).

The page loads nothing: no scripts, no fonts, no images from anywhere; its CSS is inline, its
charts are SVG drawn here, and a Content-Security-Policy of ``default-src 'none'`` makes the
browser refuse any load that might slip in. Every string taken from the data (job name, model
names, keys, contents, error messages) is HTML-escaped.

What it shows: a header (job, rows ok/failed, cost with its unknown part, tokens, wall time,
throughput, latency percentiles, retries and 429s, price sources, warnings), then charts of

- rows finished per second over the run, and 429s per second (bucketed by ``finished_at``);
- the latency histogram of ok rows, with the report's p50 / p95 / p99;
- tokens and cost by model (from ``report["by_model"]``);
- rows by status and by finish_reason;

and tables of the 10 slowest and the 10 most expensive rows, the failures by type and the
per-model prices.

The page stays light whatever the number of rows: it reads only what ``OutcomeStats`` keeps
(aggregates, the running top-10 rows, and finish time, status, 429s and ok latency per row as
numpy arrays), the per-row work is vectorised numpy, long runs are drawn in wider time buckets
(at most ``MAX_TIME_BUCKETS``; a run shorter than ``MIN_TIME_SLOTS`` seconds in sub-second
ones), histograms have at most ``MAX_LATENCY_BINS`` bins, and bar charts show at most
``MAX_CATEGORIES`` bars, the rest summed into one.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from batchrunner.pricing import SOURCE_ASKED, SOURCE_UNKNOWN
from batchrunner.progress import short_number
from batchrunner.report import (
    _BAD_CHARS,
    NO_VALUE,
    OPTIONAL_REPORT_COLUMNS,
    REPORT_COLUMNS,
    OutcomeStats,
    _as_stats,
    _counted,
    _duration,
    _model_cost,
    _model_price,
    _num,
    _searched,
    audio_lines,
    count_rows,
    format_ms,
    format_usd,
    job_details,
    known_cost,
    search_shown,
    search_unpriced,
    tier_lines,
)

__all__ = ["MAX_CATEGORIES", "MAX_LATENCY_BINS", "MAX_TIME_BUCKETS", "render_html"]

MAX_TIME_BUCKETS = 200  # bars per series in the timeline (three series: ok, failed, 429)
MIN_TIME_SLOTS = 20  # buckets in the timeline of a short run (sub-second ones, if need be)
MAX_LATENCY_BINS = 60
MAX_CATEGORIES = 15  # bars in a by-model / by-status / by-finish_reason chart
_PREVIEW_CHARS = 120
_KEY_CHARS = 40
_LABEL_CHARS = 21
_TITLE_CHARS = 500
_MARK_CHAR_W = 8.0  # a latency marker's label, 11px bold: about 7 units a character, and room
_SLICE = 65_536  # rows per step of the per-row work

# What a table given instead of an OutcomeStats must hold (REPORT_COLUMNS), in this order in
# the error message.
_NEEDED = (
    "key",
    "status",
    "content",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "latency_ms",
    "rate_limited",
    "error_type",
    "error_message",
    "model",
    "finished_at",
    "cached_tokens",
    "reasoning_tokens",
    "attempts",
)
assert sorted(_NEEDED) == sorted(set(REPORT_COLUMNS) - set(OPTIONAL_REPORT_COLUMNS))
# Nice widths, in seconds, for time buckets and time-axis ticks.
_TIME_STEPS = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip
# And below a second: the buckets of a run shorter than MIN_TIME_SLOTS seconds, its ticks.
_SUB_SECOND_STEPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)

Num = float | int
F64 = npt.NDArray[np.float64]


def render_html(report: Mapping[str, Any], outcomes: pa.Table | OutcomeStats) -> str:
    """The whole ``report.html`` page for ``report`` (from ``build_report``) and its rows.

    ``outcomes`` is the ``OutcomeStats`` the report was built from, or the whole outcome table
    (``OUTCOME_SCHEMA``; extra columns are ignored). Raises ``ValueError`` if the rows lack a
    column the page needs.
    """
    stats = _as_stats(outcomes, _NEEDED)
    if stats.missing_columns:
        raise ValueError(f"outcome table lacks column(s) {', '.join(stats.missing_columns)}")
    job: Mapping[str, Any] = report.get("job") or {}
    name = str(job.get("name") or "")
    title = f"Batch report: {name}" if name else "Batch report"

    body = [
        _header(report, title),
        "<section><h2>Over the run</h2>",
        _timeline(stats),
        "</section>",
        "<section><h2>Latency</h2>",
        _latency(stats, report),
        "</section>",
        '<section><h2>By model</h2><div class="cols">',
        *_model_charts(report),
        "</div>",
        _model_table(report),
        "</section>",
        '<section><h2>Rows</h2><div class="cols">',
        _category_chart(
            "Rows by status",
            "rows by status",
            _as_counts(report.get("rows", {}).get("by_status")),
            _STATUS_CLASS,
        ),
        _category_chart(
            "Rows by finish_reason",
            "rows by finish reason (ok rows, and failed rows that recorded one)",
            _as_counts(report.get("by_finish_reason")),
            _FINISH_CLASS,
        ),
        "</div>",
        _errors_table(report),
        "</section>",
        _top_table(
            stats.top_rows("latency_ms"),
            "latency_ms",
            "The 10 slowest rows",
            "By latency_ms of the last attempt, over all rows that recorded one.",
        ),
        _top_table(
            stats.top_rows("cost_usd"),
            "cost_usd",
            "The 10 most expensive rows",
            "By cost_usd; rows with an unknown cost are not ranked.",
        ),
        _footer(report),
    ]
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n"
        '<link rel="icon" href="data:,">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------------------------
# Header, footer and tables


def _header(report: Mapping[str, Any], title: str) -> str:
    job: Mapping[str, Any] = report.get("job") or {}
    rows: Mapping[str, Any] = report.get("rows") or {}
    tokens: Mapping[str, Any] = report.get("tokens") or {}
    lat: Mapping[str, Any] = report.get("latency_ms") or {}
    by_status = _as_counts(rows.get("by_status"))
    total = _int(rows.get("total"))
    ok = by_status.get("ok", 0)
    failed = total - ok

    cost = format_usd(known_cost(report))
    cost_note = "sum of the rows' cost_usd"
    if (searched := _searched(report)) is not None:
        cost_note += f", of which {format_usd(searched)} search billed apart from tokens"
    cost_class = ""
    if report.get("cost_complete") is False:
        unpriced = [
            (m, _int(e.get("unpriced_rows")))
            for m, e in _by_model(report).items()
            if _int(e.get("unpriced_rows"))
        ]
        n = sum(k for _, k in unpriced)
        # As the run's summary says it: no sum shown where no row paid for has a cost.
        cost = f"{cost} + unknown" if _float(known_cost(report)) else "unknown"
        models = ", ".join(m for m, _ in unpriced[:3]) + (" …" if len(unpriced) > 3 else "")
        cost_note = f"cost unknown for {count_rows(n)} paid for" + (
            f" ({models})" if models else ""
        )
        cost_class = " warn"
    earlier = report.get("cost_earlier_attempts_usd")
    if isinstance(earlier, int | float) and earlier > 0:
        to_do_usd = report.get("cost_to_do_attempts_usd")
        to_do_usd = to_do_usd if isinstance(to_do_usd, int | float) else 0.0
        billed_to_do = report.get("rows", {}).get("billed_to_do") or 0
        if not billed_to_do or round(earlier - to_do_usd, 10) > 0:
            cost_note += (f"; plus {format_usd(earlier - to_do_usd)} for earlier attempts of "
                          "rows sent again")
        if billed_to_do:
            cost_note += (f"; plus {format_usd(to_do_usd)} for earlier attempts of "
                          f"{count_rows(billed_to_do)} still to do")

    unreported = report.get("cost_unreported") or {}
    if _int(unreported.get("rows")):
        # The tries' cost is unknown too: at least the known part, where there is one.
        if report.get("cost_complete") is not False:
            cost = f"at least {cost} + unknown"
        elif _float(known_cost(report)):
            cost = f"at least {cost}"  # "$X + unknown" already
        cost_note += (f"; plus tries of {count_rows(_int(unreported['rows']))} that may have "
                      "been billed with no usage reported, estimated at "
                      f"{format_usd(unreported.get('estimated_usd'))}")
        cost_class = " warn"

    latency = "n/a"
    if lat.get("p50") is not None:
        latency = " / ".join(format_ms(lat.get(k)) for k in ("p50", "p95", "p99"))
    throughput = "n/a"
    if report.get("requests_per_min") is not None:
        throughput = f"{_num(report['requests_per_min'])} rows/min"

    cached = f"{short_number(_int(tokens.get('cached')))} cached"
    if not _said(report, "cached") and total:
        cached = "cached not reported"
    if _wrote(report):
        cached += f", {short_number(_int(tokens.get('cache_write')))} written to the cache"
    cards = [
        _card(
            "Rows",
            _num(total),
            f"{_num(ok)} ok · {_num(failed)} failed"
            + (f" · {_num(to_do)} to do" if (to_do := _int(rows.get("to_do"))) else ""),
            " bad" if failed else "",
        ),
        _card("Cost (USD)", cost, cost_note, cost_class),
        _card(
            "Tokens",
            short_number(_int(tokens.get("total"))),
            f"{short_number(_int(tokens.get('prompt')))} prompt ({cached}) · "
            f"{short_number(_int(tokens.get('completion')))} completion",
        ),
        _card("Wall time, last run that sent", _duration(report.get("wall_s")), throughput),
        _card("Latency p50 / p95 / p99", latency,
              f"over {_counted(_int(lat.get('rows')), 'ok row', 'ok rows')}"),
        _requests_card(report),
    ]
    details = [
        f"<dt>{_e(k)}</dt><dd>{_e(_short(v, 200))}</dd>" for k, v in job_details(job)
    ]
    out = [
        f"<header><h1>{_e(title)}</h1>",
        f'<dl class="job">{"".join(details)}</dl>' if details else "",
        f'<div class="cards">{"".join(cards)}</div>',
        f'<p class="prices"><b>Prices:</b> {_price_sources(report)}</p>',
    ]
    warnings = [str(w) for w in report.get("warnings") or []]
    if warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
        out.append(f'<div class="warnings"><b>Warnings</b><ul>{items}</ul></div>')
    out.append("</header>")
    return "\n".join(out)


def _requests_card(report: Mapping[str, Any]) -> str:
    """The requests of the last run that sent any, as its summary counts them ("248 requests
    sent this run (7 retried after an error: ...; 1 answered 429 ...)"): the report's
    counters' ``sent``, ``retries`` and ``http_429``. A request answered 429 is sent again
    without using up a try of its row, so the rows' attempts (``requests.attempts``) leave it
    out; a report with no counters of a run that sent shows those, named as what they are."""
    counters: Mapping[str, Any] = report.get("counters") or {}
    if sent := _int(counters.get("sent")):
        return _card(
            "Requests, last run that sent",
            f"{_num(sent)} sent",
            f"{_num(_int(counters.get('retries')))} retried after an error · "
            f"{_num(_int(counters.get('http_429')))} answered 429",
        )
    req: Mapping[str, Any] = report.get("requests") or {}
    return _card(
        "Requests, the rows' latest attempts",
        _counted(_int(req.get("attempts")), "attempt", "attempts"),
        f"{_counted(_int(req.get('retries')), 'retry', 'retries')} · "
        f"{_num(_int(req.get('http_429')))} × 429",
    )


def _said(entry: Mapping[str, Any], name: str) -> bool:
    """Whether some reply of the report's (or a model's) rows gave its ``name`` token count
    (``cached``, ``reasoning``): with none, a sum of 0 is "not reported", as cost_report.md
    says, not a measured 0 (a report from before the count existed: its figure is shown)."""
    reported = entry.get("tokens_reported_by_rows")
    return not isinstance(reported, Mapping) or reported.get(name) != 0


def _wrote(entry: Mapping[str, Any]) -> bool:
    """Whether some reply of the report's (or a model's) rows said how many prompt tokens it
    wrote to the cache (Anthropic's cache_creation_input_tokens): only such servers' rows
    show them."""
    reported = entry.get("tokens_reported_by_rows")
    return isinstance(reported, Mapping) and bool(reported.get("cache_write"))


def _card(label: str, value: str, note: str, cls: str = "") -> str:
    return (
        f'<div class="card{cls}"><div class="label">{_e(label)}</div>'
        f'<div class="value">{_e(value)}</div><div class="note">{_e(note)}</div></div>'
    )


def _price_sources(report: Mapping[str, Any]) -> str:
    """Models by price source: ``gpt-4o-mini from genai-prices 0.0.35 · mine from job
    [prices]`` (a source names the library's version where it is the library's)."""
    pricing: Mapping[str, Any] = report.get("pricing") or {}
    by_source: dict[str, list[str]] = {}
    for model, entry in _by_model(report).items():
        if model == NO_VALUE:
            continue
        by_source.setdefault(str(entry.get("price_source") or "unknown"), []).append(model)
    parts = []
    for source, models in by_source.items():
        shown = ", ".join(_short(m, 40) for m in models[:4])
        more = f" and {len(models) - 4} more" if len(models) > 4 else ""
        how = ("no price known" if source == SOURCE_UNKNOWN
               else source if source == SOURCE_ASKED else f"from {source}")
        parts.append(f"{_e(shown + more)} {_e(how)}")
    units = str(pricing.get("units") or "USD per 1M tokens")
    return (" · ".join(parts) or "no model named") + f' <span class="dim">({_e(units)})</span>'


def _model_table(report: Mapping[str, Any]) -> str:
    by_model = _by_model(report)
    if not by_model:
        return ""
    wrote = _wrote(report)  # a column of cache writes where some reply said them
    search = _searched(report) is not None  # and of search's cost where some row had any
    head = (
        "<tr><th>Model</th><th class=n>Rows</th><th class=n>Ok</th><th class=n>Failed</th>"
        "<th class=n>Prompt</th><th class=n>Cached</th>"
        + ("<th class=n>Written to the cache</th>" if wrote else "")
        + "<th class=n>Completion</th>"
        "<th class=n>Cost</th>" + ("<th class=n>Search</th>" if search else "")
        + "<th class=n>Price in / cached / out</th><th>Source</th></tr>"
    )
    body = []
    for model, m in list(by_model.items())[:50]:
        price = _model_price(m)
        cost = _model_cost(m)
        cached = _num(_int(m.get("cached_tokens"))) if _said(m, "cached") else "not reported"
        written = (_num(_int(m.get("cache_write_tokens"))) if _wrote(m) else "not reported")
        body.append(
            "<tr>"
            f'<td class="model">{_e(_short(model, 60))}</td>'
            f"<td class=n>{_num(_int(m.get('rows')))}</td>"
            f"<td class=n>{_num(_int(m.get('ok')))}</td>"
            f"<td class=n>{_num(_int(m.get('failed')))}</td>"
            f"<td class=n>{_num(_int(m.get('prompt_tokens')))}</td>"
            f"<td class=n>{cached}</td>"
            + (f"<td class=n>{written}</td>" if wrote else "")
            + f"<td class=n>{_num(_int(m.get('completion_tokens')))}</td>"
            f"<td class=n>{_e(cost)}</td>"
            + (f"<td class=n>{_e(search_shown(m.get('search_cost_usd'), search_unpriced(m)))}"
               "</td>" if search else "")
            + f"<td class=n>{_e(price)}</td>"
            f"<td>{_e(m.get('price_source') or '')}</td>"
            "</tr>"
        )
    more = "".join(f'<p class="dim">{_e(line)}</p>'
                   for line in (*tier_lines(by_model), *audio_lines(by_model)))
    if len(by_model) > 50:
        more += f'<p class="dim">{len(by_model) - 50} more models in cost_report.json.</p>'
    return (
        '<div class="scroll"><table><caption>Prices in USD per 1M tokens</caption>'
        f"<thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>{more}"
    )


def _errors_table(report: Mapping[str, Any]) -> str:
    errors: Mapping[str, Any] = report.get("by_error_type") or {}
    if not errors:
        return ""
    body = "".join(
        f"<tr><td>{_e(k)}</td><td class=n>{_num(_int(v.get('rows')))}</td>"
        f'<td class="preview">{_e(_short(_one_line(v.get("example") or ""), 200))}</td></tr>'
        for k, v in list(errors.items())[:30]
        if isinstance(v, Mapping)
    )
    return (
        '<h3>Failures by type</h3><div class="scroll"><table><thead><tr><th>Error type</th>'
        f"<th class=n>Rows</th><th>Example</th></tr></thead><tbody>{body}</tbody></table></div>"
    )


def _top_table(rows: list[dict[str, Any]], column: str, title: str, note: str) -> str:
    """The ``TOP_ROWS`` rows with the largest finite ``column``, largest first (ties by key),
    from ``OutcomeStats.top_rows``."""
    head = (
        "<tr><th class=n>#</th><th>Key</th><th>Status</th><th>Model</th><th class=n>Latency</th>"
        "<th class=n>Tokens in → out</th><th class=n>Cost</th><th>Finish</th>"
        "<th>Content</th></tr>"
    )
    if not rows:
        return (
            f'<section><h2>{_e(title)}</h2><p class="dim">No row has a {_e(column)}.</p></section>'
        )
    body = []
    for n, r in enumerate(rows, 1):
        status = str(r["status"] or "")
        if status == "ok":
            preview = _short(_one_line(r["content"] or ""), _PREVIEW_CHARS)
            preview_cell = f'<td class="preview">{_e(preview)}</td>'
        else:
            err = f"{r['error_type'] or 'error'}: {r['error_message'] or ''}"
            preview_cell = (
                f'<td class="preview err">{_e(_short(_one_line(err), _PREVIEW_CHARS))}</td>'
            )
        key = str(r["key"] if r["key"] is not None else "")
        tokens = (
            f"{_num(_int(r['prompt_tokens']))} → {_num(_int(r['completion_tokens']))}"
            if r["prompt_tokens"] is not None or r["completion_tokens"] is not None
            else "–"
        )
        if r["cost_usd"] is not None:
            cost = format_usd(r["cost_usd"])
        else:  # an answer whose price or usage is unknown; a failure with none was not billed
            cost = "unknown" if status == "ok" or tokens != "–" else "–"
        body.append(
            "<tr>"
            f"<td class=n>{n}</td>"
            f'<td class="rk" title="{_e(_short(key, _TITLE_CHARS))}">'
            f"{_e(_short(key, _KEY_CHARS))}</td>"
            f'<td class="st-{"ok" if status == "ok" else "failed"}">{_e(status)}</td>'
            f'<td class="model">{_e(_short(r["model"] or "", 40))}</td>'
            f"<td class=n>{_e(format_ms(r['latency_ms']))}</td>"
            f"<td class=n>{_e(tokens)}</td>"
            f"<td class=n>{_e(cost)}</td>"
            f"<td>{_e(r['finish_reason'] or '')}</td>"
            f"{preview_cell}"
            "</tr>"
        )
    return (
        f'<section><h2>{_e(title)}</h2><p class="dim">{_e(note)}</p>'
        f'<div class="scroll"><table class="rows"><thead>{head}</thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></section>"
    )


def _footer(report: Mapping[str, Any]) -> str:
    generated = report.get("generated_at") or ""
    return (
        f"<footer>Generated by batchrunner {('at ' + _e(generated)) if generated else ''}. "
        "The same figures are in cost_report.json; every row is in the results file. "
        "This page loads nothing from the network.</footer>"
    )


# --------------------------------------------------------------------------------------------
# Charts


def _timeline(stats: OutcomeStats) -> str:
    """Rows finished per second (ok and failed stacked), and 429s per second, over the run."""
    label = "Rows finished per second and 429 responses per second over the run"
    # Rows with a positive finish time are drawn; if none has one, rows with any finite time.
    # Three passes over the rows in slices, so no step holds a copy of every row.
    n_rows = 0
    positive = False
    for at, _, _ in stats.row_slices():
        n_rows += at.size
        positive = positive or bool(np.any(np.isfinite(at) & (at > 0)))

    def drawn(at: F64) -> npt.NDArray[np.bool_]:
        finite = np.isfinite(at)
        return finite & (at > 0) if positive else finite

    n_drawn, start, last = 0, math.inf, -math.inf
    for at, _, _ in stats.row_slices():
        used = at[drawn(at)]
        if used.size:
            n_drawn += used.size
            start, last = min(start, float(used.min())), max(last, float(used.max()))
    legend = _legend([("b-ok", "ok rows"), ("b-failed", "failed rows"), ("b-429", "429s")])
    if not n_drawn:
        return _figure("Rows finished and 429s per second", legend, _no_data(label), "No rows.")
    width = _bucket_width(last - start)
    nb = math.floor((last - start) / width) + 1
    n_ok = np.zeros(nb, dtype=np.int64)
    n_failed = np.zeros(nb, dtype=np.int64)
    n_429 = np.zeros(nb, dtype=np.float64)
    for at, ok, limited in stats.row_slices():
        use = drawn(at)
        is_ok = ok[use]
        idx = np.minimum(((at[use] - start) // width).astype(np.int64), nb - 1)
        n_ok += np.bincount(idx[is_ok], minlength=nb)
        n_failed += np.bincount(idx[~is_ok], minlength=nb)
        n_429 += np.bincount(idx, weights=limited[use], minlength=nb)
    ok_rate = n_ok / width
    failed_rate = n_failed / width
    rate_429 = n_429 / width

    w, left, right = 1000, 64, 20
    top1, h1 = 22, 190
    top2, h2 = top1 + h1 + 38, 90
    height = top2 + h2 + 44
    pw = w - left - right
    # The axis spans the run: a run shorter than MIN_TIME_SLOTS seconds is drawn in sub-second
    # buckets, MIN_TIME_SLOTS of them or more, not as a few 1-second bars at the start of an
    # axis of MIN_TIME_SLOTS seconds (the last bar, a fraction of a second's rows, read as a
    # slowdown at the end). Only rows finished within 0.2 s of each other leave it part empty.
    slots = max(nb, MIN_TIME_SLOTS)
    bw = pw / slots
    gap = 1.0 if bw >= 4 else 0.0
    parts: list[str] = []

    def x_of(i: int) -> float:
        return left + i * bw

    # Panel 1: rows finished per second.
    total_rate = ok_rate + failed_rate
    top_v, step = _nice_scale(float(total_rate.max()), integer=width <= 1)
    parts += _y_axis(left, w - right, top1, top1 + h1, top_v, step, short_number)
    parts.append(_text(left, top1 - 8, "rows finished / s", "axis-title"))
    span_name = _span_name(width)
    for i in np.flatnonzero(total_rate > 0).tolist():
        y_base: float = top1 + h1
        when = f"{_clock(i * width)}–{_clock((i + 1) * width)}"
        for value, cls, what in (
            (float(ok_rate[i]), "b-ok", "ok"),
            (float(failed_rate[i]), "b-failed", "failed"),
        ):
            if value <= 0:
                continue
            bh = h1 * value / top_v
            y_base -= bh
            parts.append(
                _rect(
                    x_of(i) + gap / 2,
                    y_base,
                    bw - gap,
                    bh,
                    cls,
                    f"{when}: {short_number(value)} {what} rows/s{span_name}",
                )
            )
    # Panel 2: 429s per second.
    top_r, step_r = _nice_scale(float(rate_429.max()), ticks=2, integer=width <= 1)
    parts += _y_axis(left, w - right, top2, top2 + h2, top_r, step_r, short_number)
    parts.append(
        _text(left, top2 - 8, "429 responses / s (at the finish of their row)", "axis-title")
    )
    for i in np.flatnonzero(rate_429 > 0).tolist():
        value = float(rate_429[i])
        bh = h2 * value / top_r
        when = f"{_clock(i * width)}–{_clock((i + 1) * width)}"
        parts.append(
            _rect(
                x_of(i) + gap / 2,
                top2 + h2 - bh,
                bw - gap,
                bh,
                "b-429",
                f"{when}: {short_number(value)} 429s/s{span_name}",
            )
        )
    # Shared time axis, under panel 2.
    total_s = slots * width
    tick = _time_tick(total_s)
    for k in range(math.floor(total_s / tick + 1e-9) + 1):
        s = k * tick
        x = left + pw * s / total_s
        parts.append(_line(x, top2 + h2, x, top2 + h2 + 4, "axis"))
        parts.append(_text(x, top2 + h2 + 17, _clock(s), "tick", "middle"))
    parts.append(
        _text(
            left + pw / 2, height - 6, "time since the first row finished", "axis-title", "middle"
        )
    )
    parts.append(_line(left, top1 + h1, w - right, top1 + h1, "axis"))
    parts.append(_line(left, top2 + h2, w - right, top2 + h2, "axis"))

    n_left_out = n_rows - n_drawn
    started = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    caption = (
        f"Rows finished per second by their finished_at, in {_bucket_name(width)} buckets from the "
        f"first row finished ({started if start > 0 else 'time not recorded'})"
        + (", averaged over each bucket" if width != 1 else "")
        + ". A row's 429s are its rate_limited count, all put at the second the row finished, "
        "not at the moments the 429s arrived; rows retried over several runs count all their "
        "429s. A resumed job shows the gaps between its runs."
        + (f" {count_rows(n_left_out)} without a finish time are left out." if n_left_out else "")
    )
    svg = _svg(w, height, label, parts)
    return _figure("Rows finished and 429s per second", legend, svg, caption)


def _latency(stats: OutcomeStats, report: Mapping[str, Any]) -> str:
    """Histogram of ok rows' latency_ms, with the report's p50 / p95 / p99 as markers."""
    label = "Histogram of the latency of ok rows, with p50, p95 and p99 markers"
    all_ok = stats.ok_latency_ms()

    def valid() -> Iterator[F64]:
        """The finite, non-negative latencies, in slices (so no step copies them all)."""
        for start in range(0, all_ok.size, _SLICE):
            part = all_ok[start : start + _SLICE]
            yield part[np.isfinite(part) & (part >= 0)]

    n_lat, vmin, vmax = 0, math.inf, -math.inf
    for part in valid():
        if part.size:
            n_lat += part.size
            vmin, vmax = min(vmin, float(part.min())), max(vmax, float(part.max()))
    title = "Latency of ok rows"
    if n_lat == 0:
        return _figure(title, "", _no_data(label, "no ok row with a latency"), "")
    rep: Mapping[str, Any] = report.get("latency_ms") or {}
    marks = [(k, _float(rep.get(k))) for k in ("p50", "p95", "p99")]
    p99 = _float(rep.get("p99"))
    if p99 is None or p99 <= 0:
        p99 = float(np.percentile(np.concatenate(list(valid())), 99))
    hi = vmax
    if p99 > 0 and vmax > 2 * p99:  # a long tail: the slowest go into one overflow bar
        hi = _nice_ceil(p99 * 1.5)
    lo = 0.0 if vmin <= 0.25 * hi else vmin
    if hi - lo <= 1e-9 * max(1.0, hi):  # one value: centre it
        pad = max(abs(hi) * 0.1, 1.0)
        lo, hi = max(0.0, lo - pad), hi + pad
    # Round bins (1, 2, 2.5 or 5 × 10^k ms) from a round start, 10 to MAX_LATENCY_BINS of them.
    target = int(min(MAX_LATENCY_BINS, max(10, round(2 * math.sqrt(n_lat)))))
    bin_ms = _nice_step((hi - lo) / target)
    lo = math.floor(lo / bin_ms) * bin_ms
    nbins = max(1, min(MAX_LATENCY_BINS, math.ceil((hi - lo) / bin_ms - 1e-9)))
    hi = lo + nbins * bin_ms
    counts = np.zeros(nbins, dtype=np.int64)
    n_inside = 0
    for part in valid():
        inside = part[part <= hi]
        counts += np.histogram(inside, bins=nbins, range=(lo, hi))[0]
        n_inside += inside.size
    overflow = n_lat - n_inside
    keys = [("b-lat", "ok rows")] + ([("b-over", "slower than the last bin")] if overflow else [])
    legend = _legend(keys)

    w, left, right, top, h = 1000, 64, 20, 56, 200
    height = top + h + 44
    slots = nbins + (2 if overflow else 0)  # a one-bin gap, then the overflow bar
    pw = w - left - right
    bw = pw / slots
    gap = 1.0 if bw >= 4 else 0.0
    ymax = max(int(counts.max()) if counts.size else 0, overflow)
    top_v, step = _nice_scale(float(ymax), integer=True)
    parts = _y_axis(left, w - right, top, top + h, top_v, step, short_number)
    parts.append(_text(left, top - 44, "rows", "axis-title"))
    edges = np.linspace(lo, hi, nbins + 1)
    for i in np.flatnonzero(counts > 0).tolist():
        c = int(counts[i])
        bh = h * c / top_v
        parts.append(
            _rect(
                left + i * bw + gap / 2,
                top + h - bh,
                bw - gap,
                bh,
                "b-lat",
                f"{format_ms(float(edges[i]))}–{format_ms(float(edges[i + 1]))}: {count_rows(c)}",
            )
        )
    if overflow:
        bh = h * overflow / top_v
        x = left + (slots - 1) * bw
        parts.append(
            _rect(
                x + gap / 2,
                top + h - bh,
                bw - gap,
                bh,
                "b-over",
                f"slower than {format_ms(hi)}: {count_rows(overflow)} (max {format_ms(vmax)})",
            )
        )
        parts.append(_text(x + bw / 2, top + h + 17, f"> {format_ms(hi)}", "tick", "end"))
    span = hi - lo
    scale_w = nbins * bw

    def x_of(v: float) -> float:
        return left + scale_w * (v - lo) / span

    step_x = _nice_step(span / 6)
    v = math.ceil(lo / step_x) * step_x
    while v <= hi + 1e-9 * span:
        x = x_of(v)
        parts.append(_line(x, top + h, x, top + h + 4, "axis"))
        if not overflow or x < left + scale_w - 30:
            parts.append(_text(x, top + h + 17, format_ms(v), "tick", "middle"))
        v += step_x
    parts.append(_line(left, top + h, w - right, top + h, "axis"))
    parts.append(
        _text(left + pw / 2, height - 6, "latency of the last attempt", "axis-title", "middle")
    )
    shown = [
        (name, x_of(min(max(value, lo), hi)) if value <= hi else left + (slots - 0.5) * bw,
         f"{name} {format_ms(value)}")
        for name, value in marks
        if value is not None
    ]
    for (name, x, text), (row, anchor) in zip(
        shown, _mark_labels([(x, text) for _, x, text in shown], w), strict=True
    ):
        y = top - 34 + 13 * row
        parts.append(_line(x, y + 3, x, top + h, f"mark m-{name}"))
        dx = -4 if anchor == "end" else 4
        parts.append(_text(x + dx, y, text, f"mark-label m-{name}", anchor))
    caption = (
        f"{_counted(n_lat, 'ok row', 'ok rows')} in {nbins} bins of {format_ms(bin_ms)}"
        + (
            f"; {count_rows(overflow)} slower than {format_ms(hi)} in the last bar "
            f"(max {format_ms(vmax)})"
            if overflow
            else ""
        )
        + ". Markers: the report's p50, p95 and p99."
    )
    return _figure(title, legend, _svg(w, height, label, parts), caption)


def _mark_labels(marks: Sequence[tuple[float, str]], w: float) -> list[tuple[int, str]]:
    """Where the latency markers' labels go: (row, text-anchor) for each of ``marks`` (the
    marker's x, its label), the rows counted from the top, one a label.

    A marker's line starts under its label and runs down through the rows below: with p95 and
    p99 a few ms apart at the right edge, p99's label, left of its line, would be cut by p95's
    line in the row under p95's. The layout is the first, in order of preference (p50, p95,
    p99 from the top, then each label right of its line rather than left), that keeps every
    label inside the chart and clear of the lines through its row.
    """

    def span(i: int, anchor: str) -> tuple[float, float]:
        x, text = marks[i]
        width = _MARK_CHAR_W * len(text)
        return (x + 4, x + 4 + width) if anchor == "start" else (x - 4 - width, x - 4)

    n = len(marks)
    for order in itertools.permutations(range(n)):
        for anchors in itertools.product(("start", "end"), repeat=n):
            spans = [span(i, anchors[i]) for i in order]
            if all(
                a >= 0 and b <= w and not any(a - 2 <= marks[j][0] <= b + 2 for j in order[:row])
                for row, (a, b) in enumerate(spans)
            ):
                return [(order.index(i), anchors[i]) for i in range(n)]
    # None clear (a chart too narrow for its labels): each in its row, towards the middle.
    return [(i, "start" if x < w / 2 else "end") for i, (x, _) in enumerate(marks)]


def _model_charts(report: Mapping[str, Any]) -> list[str]:
    by_model = _by_model(report)
    items = list(by_model.items())
    if len(items) > MAX_CATEGORIES:
        rest = items[MAX_CATEGORIES - 1 :]
        merged: dict[str, Any] = {}
        for _, m in rest:
            for k in (
                "prompt_tokens",
                "cached_tokens",
                "cache_write_tokens",
                "completion_tokens",
                "cost_known_usd",
                "unpriced_rows",
                "rows",
            ):
                merged[k] = merged.get(k, 0) + (_float(m.get(k)) or 0)
        merged["cost_usd"] = None if merged["unpriced_rows"] else merged["cost_known_usd"]
        items = [*items[: MAX_CATEGORIES - 1], (f"({len(rest)} other models)", merged)]

    token_rows: list[_Bar] = []
    cost_rows: list[_Bar] = []
    for model, m in items:
        prompt = _float(m.get("prompt_tokens")) or 0.0
        cached = min(_float(m.get("cached_tokens")) or 0.0, prompt)
        written = min(_float(m.get("cache_write_tokens")) or 0.0, prompt - cached)
        new = prompt - cached - written
        completion = _float(m.get("completion_tokens")) or 0.0
        token_rows.append(
            _Bar(
                model,
                [
                    (new, "b-prompt", f"{_num(int(new))} uncached prompt"
                     + (" not written to the cache" if written else "")),
                    (written, "b-written", f"{_num(int(written))} prompt written to the cache"),
                    (cached, "b-cached", f"{_num(int(cached))} cached prompt"),
                    (completion, "b-completion", f"{_num(int(completion))} completion"),
                ],
                short_number(prompt + completion),
            )
        )
        known = _float(m.get("cost_known_usd"))
        if known is None:
            known = _float(m.get("cost_usd")) or 0.0
        unpriced = int(_float(m.get("unpriced_rows")) or 0)
        if m.get("cost_usd") is None and unpriced:
            text = (
                f"{format_usd(known)} + ?" if known else "unknown"
            ) + f" ({count_rows(unpriced)} unpriced)"
            cls = "b-partial"
        else:
            text, cls = format_usd(known), "b-cost"
        cost_rows.append(_Bar(model, [(known, cls, f"{text}")], text))

    tokens = _figure(
        "Tokens by model",
        _legend(
            [("b-prompt", "prompt"),
             *([("b-written", "prompt written to the cache")] if _wrote(report) else []),
             ("b-cached", "cached prompt"), ("b-completion", "completion")]
        ),
        _hbars("Tokens by model: prompt, cached prompt and completion", token_rows),
        "Reasoning tokens are part of completion tokens.",
    )
    cost = _figure(
        "Cost by model (USD)",
        _legend(
            [("b-cost", "cost")]
            + (
                [("b-partial", "known part; some rows unpriced")]
                if any(v > 0 and c == "b-partial" for b in cost_rows for v, c, _ in b.segments)
                else []
            )
        ),
        _hbars("Cost in USD by model", cost_rows),
        "Sum of the rows' cost_usd; a model with unpriced rows shows its known part.",
    )
    return [tokens, cost]


def _category_chart(
    title: str, label: str, counts: Mapping[str, int], classes: Mapping[str, str]
) -> str:
    items = list(counts.items())
    if len(items) > MAX_CATEGORIES:
        rest = items[MAX_CATEGORIES - 1 :]
        items = [*items[: MAX_CATEGORIES - 1], (f"({len(rest)} others)", sum(v for _, v in rest))]
    total = sum(v for _, v in items) or 1
    bars = [
        _Bar(
            k,
            [(float(v), classes.get(k, "b-other"), f"{count_rows(v)}")],
            f"{_num(v)} ({100 * v / total:.3g}%)",
        )
        for k, v in items
    ]
    return _figure(title, "", _hbars(label, bars), "")


class _Bar:
    """One row of a horizontal bar chart: a name, stacked segments, the text after the bar."""

    __slots__ = ("name", "segments", "text")

    def __init__(self, name: str, segments: Sequence[tuple[float, str, str]], text: str) -> None:
        self.name = name
        self.segments = segments
        self.text = text


def _hbars(label: str, bars: Sequence[_Bar]) -> str:
    w, left, row_h, bar_h, top = 520, 168, 26, 16, 8
    if not bars:
        return _no_data(label, "no rows", w)
    # Room on the right for the longest value text (about 6.5 units a character at 11px).
    right = min(230, max(60, round(6.5 * max(len(b.text) for b in bars)) + 14))
    height = top + row_h * len(bars) + 8
    pw = w - left - right
    vmax = max(sum(max(0.0, v) for v, _, _ in b.segments) for b in bars)
    scale = pw / vmax if vmax > 0 else 0.0
    parts: list[str] = [_line(left, top - 2, left, height - 6, "axis")]
    for n, b in enumerate(bars):
        y = top + n * row_h
        parts.append(
            f'<text class="cat" x="{left - 6}" y="{y + bar_h - 3}" text-anchor="end">'
            f"<title>{_e(_short(b.name, _TITLE_CHARS))}</title>{_e(_short(b.name, _LABEL_CHARS))}"
            "</text>"
        )
        x = float(left)
        for v, cls, tip in b.segments:
            if v <= 0:
                continue
            bw = v * scale
            parts.append(_rect(x, y, max(bw, 1.0), bar_h, cls, f"{b.name}: {tip}"))
            x += bw
        parts.append(_text(x + 6, y + bar_h - 3, b.text, "value"))
    return _svg(w, height, label, parts)


# --------------------------------------------------------------------------------------------
# SVG and HTML pieces


def _svg(w: int, h: int, label: str, parts: Sequence[str]) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{_e(label)}" viewBox="0 0 {w} {h}" '
        f'width="{w}" height="{h}">' + "".join(parts) + "</svg>"
    )


def _no_data(label: str, text: str = "no data", w: int = 1000) -> str:
    return _svg(w, 60, f"{label}: {text}", [_text(w / 2, 35, text, "empty", "middle")])


def _figure(title: str, legend: str, svg: str, caption: str) -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure><h3>{_e(title)}</h3>{legend}{svg}{cap}</figure>"


def _legend(items: Sequence[tuple[str, str]]) -> str:
    keys = "".join(f'<span class="key"><i class="{cls}"></i>{_e(t)}</span>' for cls, t in items)
    return f'<div class="legend">{keys}</div>'


def _rect(x: float, y: float, w: float, h: float, cls: str, tip: str) -> str:
    return (
        f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.5):.1f}" '
        f'height="{max(h, 0.5):.1f}"><title>{_e(tip)}</title></rect>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, cls: str) -> str:
    return f'<line class="{cls}" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}"/>'


def _text(x: float, y: float, s: str, cls: str, anchor: str = "start") -> str:
    a = "" if anchor == "start" else f' text-anchor="{anchor}"'
    return f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}"{a}>{_e(s)}</text>'


def _y_axis(
    x0: float,
    x1: float,
    y_top: float,
    y_bottom: float,
    top_value: float,
    step: float,
    fmt: Callable[[float], str],
) -> list[str]:
    parts = []
    n = max(1, round(top_value / step))
    for i in range(n + 1):
        v = i * step
        y = y_bottom - (y_bottom - y_top) * v / top_value
        parts.append(_line(x0, y, x1, y, "gl"))
        parts.append(_text(x0 - 6, y + 4, fmt(v), "tick", "end"))
    return parts


# --------------------------------------------------------------------------------------------
# Scales and formats


def _nice_step(raw: float, *, integer: bool = False) -> float:
    if not math.isfinite(raw) or raw <= 0:
        return 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    factors = (1.0, 2.0, 5.0, 10.0) if integer and mag < 10 else (1.0, 2.0, 2.5, 5.0, 10.0)
    step = next(f * mag for f in factors if f * mag >= raw * (1 - 1e-9))
    return max(1.0, step) if integer else step


def _nice_scale(vmax: float, *, ticks: int = 4, integer: bool = False) -> tuple[float, float]:
    """(axis top, tick step) for values from 0 to ``vmax``."""
    if not math.isfinite(vmax) or vmax <= 0:
        return 1.0, 1.0
    step = _nice_step(vmax / ticks, integer=integer)
    return step * math.ceil(vmax / step - 1e-9), step


def _nice_ceil(v: float) -> float:
    step = _nice_step(v / 10)
    return step * math.ceil(v / step)


def _bucket_width(span_s: float) -> float:
    """Seconds per timeline bucket for rows finished over ``span_s`` seconds: the narrowest
    nice width that makes at most ``MAX_TIME_BUCKETS`` buckets, and for a run shorter than
    ``MIN_TIME_SLOTS`` seconds the widest sub-second one that still makes ``MIN_TIME_SLOTS``
    (0.01 s at the narrowest). Rows all finished at one time (a job of one row) are one bucket
    of a second: in one of 0.01 s, one row would be a rate of 100 rows/s."""
    if span_s <= 0:
        return 1
    if span_s < MIN_TIME_SLOTS:
        fit = [s for s in _SUB_SECOND_STEPS if s * MIN_TIME_SLOTS <= span_s]
        return fit[-1] if fit else _SUB_SECOND_STEPS[0]
    need = (math.floor(span_s) + 1) / MAX_TIME_BUCKETS
    for s in _TIME_STEPS:
        if s >= need:
            return s
    return 86400 * math.ceil(need / 86400)


def _time_tick(total_s: float) -> float:
    need = total_s / 8
    for s in (*_SUB_SECOND_STEPS, *_TIME_STEPS):
        if s >= need:
            return s
    return 86400 * math.ceil(need / 86400)


def _bucket_name(width: float) -> str:
    return f"{width:g}-second" if width < 60 else _clock(width).replace(" ", "")


def _span_name(width: float) -> str:
    return "" if width == 1 else f" (mean over {_clock(width)})"


def _clock(s: float) -> str:
    """Seconds as a short duration: 0.2s, 45s, 2m05s, 1h30m, 2d04h."""
    if (r := round(s, 2)) < 59.5 and r != round(r):  # a sub-second bucket's edge
        return f"{r:g}s"
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        m, sec = divmod(s, 60)
        return f"{m}m{sec:02d}s" if sec else f"{m}m"
    if s < 86400:
        h, rem = divmod(s, 3600)
        m = rem // 60
        return f"{h}h{m:02d}m" if m else f"{h}h"
    d, rem = divmod(s, 86400)
    h = rem // 3600
    return f"{d}d{h:02d}h" if h else f"{d}d"


def _one_line(v: Any) -> str:
    return " ".join(str(v).split())


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _e(v: Any) -> str:
    """HTML-escape ``v`` for text and attribute values; invalid characters become U+FFFD."""
    return html.escape(_BAD_CHARS.sub("\ufffd", str(v)), quote=True)


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def _float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def _as_counts(v: Any) -> dict[str, int]:
    return {str(k): _int(n) for k, n in v.items()} if isinstance(v, Mapping) else {}


def _by_model(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    v = report.get("by_model")
    if not isinstance(v, Mapping):
        return {}
    return {str(k): m for k, m in v.items() if isinstance(m, Mapping)}


_STATUS_CLASS = {"ok": "b-ok", "failed": "b-failed"}
_FINISH_CLASS = {
    "stop": "b-ok",
    "length": "b-length",
    "content_filter": "b-filter",
    "tool_calls": "b-tools",
    "function_call": "b-tools",
    NO_VALUE: "b-other",
}

_CSS = """
:root{color-scheme:light;--ok:#3b78c4;--failed:#d1495b;--r429:#e8892b;--ink:#1f2933;
--dim:#667085;--line:#d0d5dd;--bg:#f7f8fa}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1080px;margin:0 auto;padding:24px 20px 40px}
h1{font-size:24px;margin:0 0 6px;overflow-wrap:anywhere}
h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:14px;margin:0 0 6px}
section,header{margin-bottom:12px}
.dim{color:var(--dim)}
dl.job{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0 0 14px;
color:var(--dim);font-size:13px}
dl.job dt{font-weight:600}dl.job dd{margin:0;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:10px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card .label{font-size:12px;color:var(--dim);text-transform:uppercase;letter-spacing:.03em}
.card .value{font-size:18px;font-weight:600;margin:2px 0;overflow-wrap:anywhere}
.card .note{font-size:12px;color:var(--dim)}
.card.warn{border-color:#e8a33d;background:#fff8eb}.card.bad .note{color:var(--failed)}
.prices{font-size:13px;margin:12px 0 0;overflow-wrap:anywhere}
.warnings{margin-top:12px;background:#fff8eb;border:1px solid #e8a33d;border-radius:8px;
padding:8px 12px;font-size:13px}.warnings ul{margin:4px 0 0;padding-left:20px}
figure{margin:0 0 16px;background:#fff;border:1px solid var(--line);border-radius:8px;
padding:12px;min-width:0}
figcaption{font-size:12px;color:var(--dim);margin-top:6px}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:16px}
svg.chart{display:block;width:100%;height:auto}
svg text{font-size:12px;fill:var(--ink)}
svg .tick,svg .value{fill:#475467;font-size:11px}
svg .axis-title{fill:var(--dim);font-size:11px}
svg .empty{fill:var(--dim);font-size:14px}
svg .gl{stroke:#eaecf0;stroke-width:1}
svg .axis{stroke:#98a2b3;stroke-width:1}
svg .mark{stroke-width:1.5;stroke-dasharray:4 3}
svg .mark-label{font-size:11px;font-weight:600;stroke:none}
.m-p50{stroke:#12805c;fill:#12805c}.m-p95{stroke:#b5470b;fill:#b5470b}
.m-p99{stroke:#9b1c31;fill:#9b1c31}
.b-ok{fill:var(--ok);background:var(--ok)}.b-failed{fill:var(--failed);background:var(--failed)}
.b-429{fill:var(--r429);background:var(--r429)}
.b-lat{fill:#5b8fd1;background:#5b8fd1}.b-over{fill:#98a2b3;background:#98a2b3}
.b-prompt{fill:#3b78c4;background:#3b78c4}.b-cached{fill:#9cc3ee;background:#9cc3ee}
.b-written{fill:#1f4f8a;background:#1f4f8a}
.b-completion{fill:#2f9e77;background:#2f9e77}
.b-cost{fill:#7a5af8;background:#7a5af8}.b-partial{fill:#c4b5fd;background:#c4b5fd}
.b-length{fill:var(--r429);background:var(--r429)}
.b-filter{fill:#9b1c31;background:#9b1c31}
.b-tools{fill:#2f9e77;background:#2f9e77}.b-other{fill:#98a2b3;background:#98a2b3}
.legend{font-size:12px;color:var(--dim);margin:0 0 6px}
.legend .key{margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;
vertical-align:-1px}
.scroll{overflow-x:auto;background:#fff;border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%;font-size:13px}
caption{caption-side:bottom;text-align:left;font-size:12px;color:var(--dim);padding:6px 8px}
th,td{padding:5px 8px;border-bottom:1px solid #eaecf0;text-align:left;vertical-align:top}
th{background:#f2f4f7;font-weight:600;white-space:nowrap}
td.n,th.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.preview{color:#344054;min-width:220px;overflow-wrap:anywhere}
td.rk{white-space:nowrap}td.model{min-width:110px;overflow-wrap:anywhere}
td.err,.st-failed{color:var(--failed)}.st-ok{color:#12805c}
tbody tr:last-child td{border-bottom:0}
footer{margin-top:28px;color:var(--dim);font-size:12px}
"""
