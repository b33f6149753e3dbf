"""Outcome table → cost report (a JSON-able dict), its Markdown summary, and the files on disk.

``build_report`` aggregates the journal's latest outcome per row (``OUTCOME_SCHEMA``) with
vectorised pyarrow compute and group-bys, so a million rows take well under a second and no
Python code runs per row. The report's figures are sums of the rows as recorded: the cost total is
the sum of the rows' ``cost_usd`` and never re-derived, so it always matches the results file.

Top-level keys, in this order::

    report_version    1
    generated_at      ISO 8601 UTC time of the report
    job               the job's descriptive fields, as given
    rows              {"total", "by_status": {status: rows}, "cut_at_length"}
    tokens            {"prompt", "completion", "cached", "reasoning", "total"}
    cost_usd          sum of the rows' cost_usd (the known part if cost_complete is false)
    cost_failed_usd   the part of cost_usd billed for rows that still failed (e.g. a reply
                      that did not match the schema)
    cost_complete     false when some ok row has no cost (unknown price or no usage reported)
    pricing           {"library", "library_version", "units", "job_prices": [model, ...]}
    by_model          {model: {"rows", "ok", "failed", tokens..., "cost_usd" (null when
                      incomplete), "cost_known_usd", "unpriced_rows", "price_source", "price"}}
    by_finish_reason  {finish_reason: rows}; ok rows without one count as "(none)"
    by_error_type     {error_type: {"rows", "example"}} over failed rows
    requests          {"attempts", "rows_attempted", "retries", "http_429", "http_429_in_rows",
                      "http_429_this_run"}; attempts as the rows record them
    latency_ms        {"rows", "p50", "p95", "p99", "mean", "max"} over ok rows (null if none)
    wall_s            the run's wall time in seconds, or null
    requests_per_min  rows finished during the timed run / wall minutes, or null
    counters          the run-level counters, as given, sorted by name
    warnings          one line each, for a human

Counts in dicts are ordered by count (descending) then name, so the same journal always gives
the same report apart from ``generated_at``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batchrunner.pricing import LIBRARY_NAME, SOURCE_UNKNOWN, PriceBook

__all__ = [
    "REPORT_HTML",
    "REPORT_JSON",
    "REPORT_MD",
    "build_report",
    "render_markdown",
    "write_reports",
]

REPORT_VERSION = 1
REPORT_JSON = "cost_report.json"
REPORT_MD = "cost_report.md"
REPORT_HTML = "report.html"
NO_VALUE = "(none)"  # the group name of a missing model, finish_reason or error_type
_FILE_MODE = 0o600
_EXAMPLE_CHARS = 200
_COLUMNS = (
    "status",
    "finish_reason",
    "finished_at",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms",
    "attempts",
    "rate_limited",
    "error_type",
    "error_message",
    "model",
)
_TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


def build_report(
    outcomes: pa.Table,
    *,
    prices: PriceBook,
    job: Mapping[str, Any],
    wall_s: float | None,
    counters: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Aggregate one outcome per row into the cost report (see the module docstring).

    ``counters`` are the run's own counts, reported as given. Its ``http_429`` (every 429 this
    run saw) overlaps the rows' ``rate_limited`` sum (every 429 of every finished row, all runs):
    ``requests.http_429`` is the larger of the two, so no 429 is counted twice.

    ``wall_s`` is the wall time of the run that just ended; ``requests_per_min`` counts the rows
    finished in the last ``wall_s`` seconds before the newest ``finished_at``, so rows finished
    by an earlier run of a resumed job do not inflate it.
    """
    missing = [c for c in _COLUMNS if c not in outcomes.column_names]
    if missing:
        raise ValueError(f"outcome table lacks column(s) {', '.join(missing)}")
    counters = dict(counters or {})
    t = outcomes.select(list(_COLUMNS))
    n_rows = t.num_rows
    warnings: list[str] = []

    status = t["status"]
    is_ok = pc.fill_null(pc.equal(status, "ok"), False)
    is_failed = pc.invert(is_ok)
    no_cost = pc.is_null(t["cost_usd"])
    unpriced_ok = pc.and_(is_ok, no_cost)
    finish = t["finish_reason"]
    is_length = pc.fill_null(pc.equal(finish, "length"), False)

    by_status = _counts(status)
    n_ok = _count(is_ok)
    n_failed = n_rows - n_ok
    n_length = _count(is_length)

    # Tokens: plain column sums; a row without total_tokens counts prompt + completion.
    token_sums = {c: _int_sum(t[c]) for c in _TOKEN_COLUMNS}
    total_tokens = _int_sum(
        pc.coalesce(t["total_tokens"], pc.add(t["prompt_tokens"], t["completion_tokens"]))
    )
    cost_usd = _usd(pc.sum(t["cost_usd"]).as_py())
    cost_failed = _usd(pc.sum(pc.if_else(is_failed, t["cost_usd"], None)).as_py())
    n_unpriced = _count(unpriced_ok)

    by_model = _by_model(t, is_ok, unpriced_ok, prices)
    for model, entry in by_model.items():
        k = entry["unpriced_rows"]
        if not k:
            continue
        if model == NO_VALUE:
            warnings.append(
                f"{_rows(k)} with status ok do not name their model; their cost is not counted"
            )
        elif entry["price"] is None:
            warnings.append(
                f"model {model!r}: no price known, cost of {_rows(k)} not counted; "
                f'set it in the job file under [prices."{model}"] (USD per 1M tokens)'
            )
        else:
            warnings.append(
                f"model {model!r}: {_rows(k)} with status ok reported no token usage; "
                "their cost is not counted"
            )

    # Finish reasons: every ok row, and any other row that recorded one.
    keep = pc.or_(is_ok, pc.is_valid(finish))
    by_finish = _counts(pc.fill_null(pc.filter(finish, keep), NO_VALUE))
    if n_length:
        warnings.append(
            f"{_rows(n_length)} stopped at the token limit (finish_reason=length): their content "
            "is cut off; raise max_tokens to get whole answers"
        )
    n_filtered = by_finish.get("content_filter", 0)
    if n_filtered:
        warnings.append(f"{_rows(n_filtered)} stopped by the content filter")

    by_error = _by_error_type(t.filter(is_failed))
    if n_failed:
        warnings.append(
            f"{_rows(n_failed)} failed (see failures by type); a rerun can retry failed rows"
        )

    attempts = _int_sum(t["attempts"])
    rows_attempted = _count(pc.fill_null(pc.greater(t["attempts"], 0), False))
    in_rows_429 = _int_sum(t["rate_limited"])
    run_429 = int(counters.get("http_429", 0))

    latency = _latency(pc.drop_null(pc.filter(t["latency_ms"], is_ok)))
    wall = _finite(wall_s)
    per_min = None
    if wall and n_rows:
        finished_at = t["finished_at"]
        newest = pc.max(finished_at).as_py() or 0.0
        in_run = _count(pc.fill_null(pc.greater_equal(finished_at, newest - wall), False))
        per_min = round(in_run / (wall / 60.0), 1)

    return {
        "report_version": REPORT_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "job": {str(k): _jsonable(v) for k, v in job.items()},
        "rows": {"total": n_rows, "by_status": by_status, "cut_at_length": n_length},
        "tokens": {
            "prompt": token_sums["prompt_tokens"],
            "completion": token_sums["completion_tokens"],
            "cached": token_sums["cached_tokens"],
            "reasoning": token_sums["reasoning_tokens"],
            "total": total_tokens,
        },
        "cost_usd": cost_usd,
        "cost_failed_usd": cost_failed,
        "cost_complete": n_unpriced == 0,
        "pricing": {
            "library": LIBRARY_NAME,
            "library_version": prices.library_version,
            "units": "USD per 1M tokens",
            "job_prices": sorted(prices.overrides),
        },
        "by_model": by_model,
        "by_finish_reason": by_finish,
        "by_error_type": by_error,
        "requests": {
            "attempts": attempts,
            "rows_attempted": rows_attempted,
            "retries": max(attempts - rows_attempted, 0),
            "http_429": max(in_rows_429, run_429),
            "http_429_in_rows": in_rows_429,
            "http_429_this_run": run_429,
        },
        "latency_ms": latency,
        "wall_s": None if wall is None else round(wall, 3),
        "requests_per_min": per_min,
        "counters": {str(k): int(counters[k]) for k in sorted(counters)},
        "warnings": warnings,
    }


def _by_model(
    t: pa.Table, is_ok: pa.ChunkedArray, unpriced_ok: pa.ChunkedArray, prices: PriceBook
) -> dict[str, dict[str, Any]]:
    """Per-model sums, one group-by over the whole table."""
    g = pa.table(
        {
            "model": t["model"],
            "ok": pc.cast(is_ok, pa.int64()),
            "unpriced": pc.cast(unpriced_ok, pa.int64()),
            "total": pc.coalesce(
                t["total_tokens"], pc.add(t["prompt_tokens"], t["completion_tokens"])
            ),
            "cost_usd": t["cost_usd"],
            **{c: t[c] for c in _TOKEN_COLUMNS},
        }
    )
    sums = ["ok", "unpriced", *_TOKEN_COLUMNS, "total", "cost_usd"]
    grouped = g.group_by("model").aggregate(
        [("ok", "count", pc.CountOptions(mode="all"))] + [(c, "sum") for c in sums]
    )
    # One dict per model: model, ok_count (every row: mode="all"), ok_sum, …_sum.
    groups = grouped.to_pylist()
    groups.sort(key=lambda r: (-r["ok_count"], r["model"] is None, r["model"] or ""))

    out: dict[str, dict[str, Any]] = {}
    for r in groups:
        model: str | None = r["model"]
        name = NO_VALUE if model is None else model
        price = None if model is None else prices.price(model)
        known = _usd(r["cost_usd_sum"])
        unpriced = int(r["unpriced_sum"] or 0)
        n, ok = int(r["ok_count"]), int(r["ok_sum"] or 0)
        out[name] = {
            "rows": n,
            "ok": ok,
            "failed": n - ok,
            **{c: int(r[f"{c}_sum"] or 0) for c in _TOKEN_COLUMNS},
            "total_tokens": int(r["total_sum"] or 0),
            "cost_usd": None if unpriced else known,
            "cost_known_usd": known,
            "unpriced_rows": unpriced,
            "price_source": SOURCE_UNKNOWN if model is None else prices.source(model),
            "price": None if price is None else price.as_dict(),
        }
    return out


def _by_error_type(failed: pa.Table) -> dict[str, dict[str, Any]]:
    """Failed rows per error type, with one example message each."""
    if failed.num_rows == 0:
        return {}
    g = pa.table(
        {
            "error_type": pc.fill_null(failed["error_type"], NO_VALUE),
            "error_message": failed["error_message"],
        }
    )
    grouped = g.group_by("error_type", use_threads=False).aggregate(
        [
            ("error_type", "count", pc.CountOptions(mode="all")),
            ("error_message", "first"),
        ]
    )
    rows = grouped.to_pylist()
    rows.sort(key=lambda r: (-r["error_type_count"], r["error_type"]))
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        example = r["error_message_first"]
        if isinstance(example, str):
            example = " ".join(example.split())
            if len(example) > _EXAMPLE_CHARS:
                example = example[: _EXAMPLE_CHARS - 1] + "…"
        out[r["error_type"]] = {"rows": int(r["error_type_count"]), "example": example}
    return out


def _latency(values: pa.ChunkedArray | pa.Array) -> dict[str, Any]:
    if len(values) == 0:
        return {"rows": 0, "p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    q = pc.quantile(values, q=[0.5, 0.95, 0.99]).to_pylist()
    return {
        "rows": len(values),
        "p50": _ms(q[0]),
        "p95": _ms(q[1]),
        "p99": _ms(q[2]),
        "mean": _ms(pc.mean(values).as_py()),
        "max": _ms(pc.max(values).as_py()),
    }


def _counts(values: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """``{value: count}``, most frequent first, then by name; a null value counts as "(none)"."""
    pairs = [
        (NO_VALUE if d["values"] is None else str(d["values"]), int(d["counts"]))
        for d in pc.value_counts(values).to_pylist()
    ]
    merged: dict[str, int] = {}
    for k, v in pairs:
        merged[k] = merged.get(k, 0) + v
    return dict(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0])))


def _count(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def _int_sum(values: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(values).as_py() or 0)


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) and x > 0 else None


def _usd(x: float | None) -> float:
    """A sum of costs, rounded to 1e-10 USD so float noise does not show; missing → 0.0."""
    if x is None or not math.isfinite(x):
        return 0.0
    return round(float(x), 10)


def _ms(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 1)


def _jsonable(v: Any) -> Any:
    """Job fields as given, with paths, datetimes and other objects as strings."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return str(v)


# --------------------------------------------------------------------------------------------
# Markdown


def render_markdown(report: Mapping[str, Any]) -> str:
    """A short human summary of ``report``; plain enough to read on a terminal."""
    job: Mapping[str, Any] = report.get("job") or {}
    rows: Mapping[str, Any] = report.get("rows") or {}
    tokens: Mapping[str, Any] = report.get("tokens") or {}
    req: Mapping[str, Any] = report.get("requests") or {}
    lat: Mapping[str, Any] = report.get("latency_ms") or {}
    pricing: Mapping[str, Any] = report.get("pricing") or {}
    by_status: Mapping[str, int] = rows.get("by_status") or {}
    warnings: list[str] = list(report.get("warnings") or [])

    title = f"# Cost report: {job['name']}" if job.get("name") else "# Cost report"
    out: list[str] = [title, ""]
    details = [(k, v) for k, v in job.items() if k != "name" and v not in (None, "")]
    if details:
        out += [f"- {k}: {_one_line(v)}" for k, v in details]
        out.append("")

    ok, failed = by_status.get("ok", 0), rows.get("total", 0) - by_status.get("ok", 0)
    cost = _money(report.get("cost_usd"))
    if report.get("cost_complete") is False:
        cost += " (incomplete, see warnings)"
    latency = "n/a"
    if lat.get("p50") is not None:
        latency = f"{_num(lat.get('p50'))} / {_num(lat.get('p95'))} / {_num(lat.get('p99'))} ms"
    throughput = "n/a"
    if report.get("requests_per_min") is not None:
        throughput = f"{_num(report['requests_per_min'])} rows/min"
    totals = [
        ["Rows", f"{_num(rows.get('total', 0))} ({_num(ok)} ok, {_num(failed)} failed)"],
        ["Prompt tokens", _num(tokens.get("prompt", 0))],
        ["Cached prompt tokens", _num(tokens.get("cached", 0))],
        ["Completion tokens", _num(tokens.get("completion", 0))],
        ["Reasoning tokens (in completion)", _num(tokens.get("reasoning", 0))],
        ["Total tokens", _num(tokens.get("total", 0))],
        ["Cost (USD)", cost],
        ["  of which billed for failed rows", _money(report.get("cost_failed_usd") or 0.0)],
        [
            "Requests",
            f"{_num(req.get('attempts', 0))} attempts, {_num(req.get('retries', 0))} retries, "
            f"{_num(req.get('http_429', 0))} × 429",
        ],
        ["Latency p50 / p95 / p99", latency],
        ["Wall time", _duration(report.get("wall_s"))],
        ["Throughput", throughput],
    ]
    out += ["## Totals", "", *_table(["", "Value"], totals, right=set()), ""]

    by_model: Mapping[str, Mapping[str, Any]] = report.get("by_model") or {}
    if by_model:
        body = []
        for model, m in by_model.items():
            p = m.get("price")
            price = (
                "unknown"
                if not p
                else f"{_num(p['input'])} / {_num(p['cached_input'])} / {_num(p['output'])}"
            )
            body.append(
                [
                    model,
                    _num(m.get("rows", 0)),
                    _num(m.get("prompt_tokens", 0)),
                    _num(m.get("completion_tokens", 0)),
                    _money(m.get("cost_usd")),
                    price,
                    str(m.get("price_source", "")),
                ]
            )
        head = ["Model", "Rows", "Prompt", "Completion", "Cost", "Price in/cached/out", "Source"]
        out += ["## By model", "", *_table(head, body, right={1, 2, 3, 4}), ""]
        out.append(
            f"Prices in {pricing.get('units', 'USD per 1M tokens')}; library: "
            f"{pricing.get('library', LIBRARY_NAME)} {pricing.get('library_version', '')}."
        )
        out.append("")

    if by_status:
        body = [[k, _num(v)] for k, v in by_status.items()]
        out += ["## Rows by status", "", *_table(["Status", "Rows"], body, right={1}), ""]
    by_finish: Mapping[str, int] = report.get("by_finish_reason") or {}
    if by_finish:
        body = [[k, _num(v)] for k, v in by_finish.items()]
        out += ["## Finish reasons", "", *_table(["Finish reason", "Rows"], body, right={1}), ""]
    by_error: Mapping[str, Mapping[str, Any]] = report.get("by_error_type") or {}
    if by_error:
        body = [[k, _num(e.get("rows", 0)), e.get("example") or ""] for k, e in by_error.items()]
        head = ["Error type", "Rows", "Example"]
        out += ["## Failures by type", "", *_table(head, body, right={1}), ""]
    if warnings:
        out += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _table(head: list[str], body: list[list[str]], *, right: set[int]) -> list[str]:
    """A pipe table padded to column width, so it lines up on a terminal as well."""
    cells = [[_cell(c) for c in head]] + [[_cell(c) for c in r] for r in body]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(head))]

    def line(r: list[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)
        )
        + "|"
    )
    return [line(cells[0]), rule, *(line(r) for r in cells[1:])]


def _one_line(v: Any) -> str:
    return " ".join(str(v).split())


def _cell(v: Any) -> str:
    return _one_line(v).replace("|", "\\|")


def _rows(n: int) -> str:
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.0f}" if abs(v) >= 100_000 else f"{v:,.6g}"


def _money(v: Any) -> str:
    if v is None:
        return "unknown"
    x = float(v)
    return f"${x:,.2f}" if abs(x) >= 100 else f"${x:,.4f}" if abs(x) >= 1 else f"${x:.6f}"


def _duration(s: Any) -> str:
    if s is None:
        return "n/a"
    secs = float(s)
    if secs < 60:
        return f"{secs:.1f} s"
    m, sec = divmod(round(secs), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


# --------------------------------------------------------------------------------------------
# Files


def write_reports(
    report: Mapping[str, Any], out_dir: Path, *, outcomes: pa.Table | None = None
) -> list[Path]:
    """Write ``cost_report.json`` and ``cost_report.md`` into ``out_dir``, each atomically.

    Given ``outcomes`` (the table the report was built from), also ``report.html``: the same
    report with charts, one self-contained page (see ``batchrunner.report_html``). Returns the
    paths written, in that order.

    Each file is written to a temporary name in the same directory, fsynced and renamed over
    the old one, so a reader sees the old report or the new one, never half of one. Mode 0600.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    paths = [out_dir / REPORT_JSON, out_dir / REPORT_MD]
    _write_atomic(paths[0], text)
    _write_atomic(paths[1], render_markdown(report))
    if outcomes is not None:
        # Imported here: report_html builds on this module's formatting helpers.
        from batchrunner.report_html import render_html

        paths.append(out_dir / REPORT_HTML)
        _write_atomic(paths[2], render_html(report, outcomes))
    _fsync_dir(out_dir)
    return paths


def _write_atomic(path: Path, text: str) -> None:
    from batchrunner.io import write_atomic_bytes

    write_atomic_bytes(path, text.encode("utf-8"))


def _fsync_dir(path: Path) -> None:
    """Make the renames durable; not every platform can open a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
