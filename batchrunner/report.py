"""Outcome rows → cost report (a JSON-able dict), its Markdown summary, and the files on disk.

The rows are the journal's latest outcome per row (``OUTCOME_SCHEMA``). They are read once, in
chunks of any size, into an ``OutcomeStats``: vectorised pyarrow / numpy work per chunk, no
Python code per row, and only aggregates plus a few numbers per row kept (see ``OutcomeStats``),
so a million rows take about a second and a few tens of MB whatever the row count::

    stats = OutcomeStats()
    for chunk in chunks:            # pa.Table or pa.RecordBatch, REPORT_COLUMNS at least
        stats.add(chunk)
    report = build_report(stats, prices=..., job=..., wall_s=..., counters=...)
    write_reports(report, out_dir, outcomes=stats)   # + report.html

``build_report``, ``render_html`` and ``write_reports`` also take a whole outcome table, read as
one chunk (``OutcomeStats.of``). The report is the same however the rows are chunked.

The report's figures are sums of the rows as recorded: the cost total is the sum of the rows'
``cost_usd`` and never re-derived, so it always matches the results file. Sums of costs are
exact (correctly rounded from the exact sum, then rounded to 1e-10 USD), so they do not depend
on the order or chunking of the rows.

Top-level keys, in this order::

    report_version    2 (in 1, cost_usd was the known part where cost_complete is false:
                      0.0 where no row had a cost)
    generated_at      ISO 8601 UTC time of the report
    job               the job's descriptive fields, as given
    rows              {"total", "by_status": {status: rows, "ok" and "failed" always},
                      "cut_at_length",
                      "cut_at_length_usd", "cut_at_length_tokens", "to_do", "billed_to_do",
                      "changed_to_send", "cost_unknown", "cost_unknown_failed",
                      "fewer_choices", "failed_with_choices"};
                      total counts the rows with an outcome, cut_at_length_usd what the rows
                      cut at max_tokens cost (null when one of them has no cost),
                      cut_at_length_tokens the most completion tokens one of them that asked
                      one choice used (the largest max_tokens they were given; null: none
                      said), to_do the
                      input's rows without
                      one (null when not given), billed_to_do those of them whose attempts
                      so far were billed without an answer at a cost reported (``retrying``
                      records with an earlier_cost_usd; a cut try's estimate is
                      cost_unreported's),
                      changed_to_send the rows whose text changed since they were sent and
                      that are not sent again yet (their outcomes are to the earlier text),
                      cost_unknown the rows paid for without a cost: ok rows (unknown price,
                      or no usage reported) and failed rows whose reply reported usage at a
                      price not known, cost_unknown_failed those of them failed (their cost
                      not in cost_failed_usd), fewer_choices the ok rows whose choices hold fewer
                      than the n the job asked (a server that ignores n; 0 when n is 1),
                      failed_with_choices the failed rows answered with n > 1 choices (one
                      failed a check), which --retry-failed sends asking every choice again
    tokens            {"prompt", "completion", "cached", "reasoning", "cache_write", "total"};
                      cache_write: of the prompt, the tokens written to the cache (Anthropic's
                      cache_creation_input_tokens, billed above the input price)
    search_units      {"total", "rows", "unpriced_rows"}: search billed apart from tokens, as
                      the replies' usage counted it (Grok's sources, web searches), the rows
                      that reported any, and the rows paid for whose cost is unknown for want
                      of a price for them (among cost_unknown)
    search_requests   {"rows", "unpriced_rows"}: search billed per request that the usage does
                      not count (search models, web_search_options, a Google Search tool,
                      enable_search): the rows whose billed request asked for it, and those
                      whose cost is unknown for want of a search_request price (among
                      cost_unknown)
    search_cost_usd   the part of cost_usd that is search billed apart from tokens (units and
                      requests of the rows with a cost, at their models' prices); 0 without
    tokens_reported_by_rows
                      {"cached", "reasoning", "cache_write"}: the rows whose replies gave the
                      count (0: no server said, and the sum above is 0 for want of a figure)
    cost_usd          sum of the rows' cost_usd; null when cost_complete is false (some row
                      paid for has no cost: rows.cost_unknown counts them)
    cost_known_usd    sum of the rows' cost_usd that are known: cost_usd, or its known part
    cost_failed_usd   the part of cost_known_usd billed for rows that still failed (e.g. a
                      reply that did not match the schema)
    cost_failed_with_choices_usd
                      the part of cost_failed_usd of the rows failed_with_choices counts: what
                      --retry-failed pays about again for them (null when one has no cost)
    cost_earlier_attempts_usd
                      sum of the rows' earlier_cost_usd: replies billed and then sent again
                      (retried in a run, or resent by --retry-failed / --rerun-where), those
                      of rows still to do included (``retrying`` records: not rows with an
                      outcome, not in total); not part of cost_usd, so the job's spend is the
                      two added
    cost_to_do_attempts_usd
                      the part of cost_earlier_attempts_usd billed for rows still to do
    cost_complete     false when some row paid for has no cost (cost_unknown is not 0)
    pricing           {"library", "library_version", "units", "job_prices": [model, ...]}
    by_model          {model: {"rows", "ok", "failed", tokens... (cache_write_tokens
                      among them), "tokens_reported_by_rows"
                      (as the top-level one, for the model's rows), "cost_usd" (null when
                      incomplete), "cost_known_usd", "unpriced_rows", "search_units",
                      "search_unpriced_rows", "search_requests", "search_request_unpriced_rows",
                      "search_cost_usd" (as the top-level one; null when the model's price is
                      not known), "earlier_unpriced_rows" (rows whose cost is unknown for an
                      earlier try billed at a cost not known; 0 for a model with no price,
                      whose rows' cost is unknown for want of it), "price_source", "price",
                      "latency_ms" (as the top-level one, over the model's ok rows), and,
                      where rows were answered at a service tier of its own price,
                      "service_tiers": {tier: {"rows", "price"}}, and, where rows' replies
                      counted audio tokens (a spoken answer, an audio input), "audio_tokens":
                      {"rows", "prompt", "completion" (of prompt_tokens and completion_tokens,
                      priced at the audio prices), "at_text_price": ["prompt", "completion"],
                      those of them priced as text tokens for want of an audio price (the
                      cost is then low)}}}
    by_finish_reason  {finish_reason: rows}; ok rows without one count as "(none)"
    by_error_type     {error_type: {"rows", "example"}} over failed rows; the example is the
                      first message in row order
    requests          {"attempts", "rows_attempted", "retries", "http_429", "http_429_in_rows",
                      "http_429_this_run"}; attempts as the rows record them
    latency_ms        {"rows", "p50", "p95", "p99", "mean", "max"} over ok rows (null if none)
    wall_s            the wall time of the last run that sent requests, in seconds, or null
    requests_per_min  rows finished during the timed run / wall minutes, or null
    counters          that run's counters, as given, sorted by name
    stopped           why the run stopped before every row was done, or null
    warnings          one line each, for a human; the stop, if any, first

Counts in dicts are ordered by count (descending) then name, so the same journal always gives
the same report apart from ``generated_at``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from batchrunner import compute as pc
from batchrunner.arrow import (
    float64_array,
    group_codes,
    int64_array,
    is_value,
    scalar,
    to_numpy,
)
from batchrunner.pricing import (
    LIBRARY_NAME,
    PRICED_TIERS,
    SOURCE_ASKED,
    SOURCE_JOB,
    SOURCE_UNKNOWN,
    ModelPrice,
    PriceBook,
)
from batchrunner.progress import utc_timestamp
from batchrunner.records import AUDIO_COLUMNS, RETRYING

__all__ = [
    "CHOICE_CUT",
    "OPTIONAL_REPORT_COLUMNS",
    "REPORT_COLUMNS",
    "REPORT_HTML",
    "REPORT_JSON",
    "REPORT_MD",
    "AudioSum",
    "CutRows",
    "OutcomeStats",
    "UsdSum",
    "audio_at_text_price",
    "audio_lines",
    "build_report",
    "changed_warning",
    "count_rows",
    "fails_again",
    "format_budget",
    "format_ms",
    "format_span",
    "format_usd",
    "job_details",
    "known_cost",
    "render_markdown",
    "retry_advice",
    "search_shown",
    "search_unpriced",
    "sum_usd",
    "utc_timestamp",
    "write_reports",
]

REPORT_VERSION = 2
REPORT_JSON = "cost_report.json"
REPORT_MD = "cost_report.md"
REPORT_HTML = "report.html"
NO_VALUE = "(none)"  # the group name of a missing model, finish_reason or error_type
TOP_ROWS = 10  # rows in report.html's "slowest" and "most expensive" tables
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
_HTML_COLUMNS = ("key", "content")  # report.html's top-10 tables need these as well
# Read when a chunk has it (a journal written before it existed reads it as nulls).
OPTIONAL_REPORT_COLUMNS: tuple[str, ...] = ("earlier_cost_usd", "search_units", "search_requests",
                                           "cache_write_tokens", "choices", "priced_as",
                                           "unreported_usd", "choices_asked", "service_tier",
                                           "audio_prompt_tokens", "audio_completion_tokens")
REPORT_COLUMNS: tuple[str, ...] = (*_COLUMNS, *OPTIONAL_REPORT_COLUMNS, *_HTML_COLUMNS)
"""Every column ``build_report`` and ``render_html`` read; a chunk may hold more."""
_TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")
_DETAIL_COLUMNS = ("cached_tokens", "reasoning_tokens")  # counts a reply may leave out
# The columns report.html's top-10 tables show, and the columns they are ranked by.
_TOP_COLUMNS = (
    "key",
    "status",
    "model",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "finish_reason",
    "content",
    "error_type",
    "error_message",
)
_RANKED = ("latency_ms", "cost_usd")
# Largest value first, then by key; a full tie goes to the earlier row.
_TOP_ORDER = [("_v", "descending"), ("key", "ascending"), ("_i", "ascending")]
_SLICE = 65_536  # add() works through bigger chunks in slices of this many rows
# Exact sums of float64: value = m · 2**(e - 53) with m = frexp mantissa · 2**53, an integer of
# at most 53 bits; e - 53 ≥ -1126, so a sum scaled by 2**1126 is a (big) Python int.
_SCALE_BITS = 1126
_HALF_BITS = 26  # m is summed as two halves, so an int64 sum cannot overflow

# C0/C1 controls and lone surrogates are not text: a terminal reads ESC or CSI as a command, and
# a document cannot hold them. Shown as U+FFFD in the Markdown, as in report.html.
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# What a Markdown viewer would act on in a line of the data's text: a tag (raw HTML, a comment,
# an autolink), an image (loaded when the file is viewed), a table cell's end; and the
# backslashes before them, which would escape the escape. ("< 0.001 s" is no tag.)
_MD_ACTIVE = re.compile(r"(\\*)(<(?=[A-Za-z/!?])|!\[|\|)")

# A choice cut at max_tokens in a row's ``choices`` (orjson's text: a content that says so
# has its quotes escaped).
CHOICE_CUT = '"finish_reason":"length"'
# Where each choice of a row's ``choices`` begins (its first key; inside a string a quote is
# escaped, so the text cannot hold it elsewhere).
CHOICE_START = '{"index":'
_FALSE = scalar(False, pa.bool_())
_NO_VALUE = scalar(NO_VALUE, pa.string())
_GroupKey = tuple[str | None, bool]  # (model, failed): the groups exact cost sums are kept by
F64 = npt.NDArray[np.float64]


class OutcomeStats:
    """Everything the report and report.html need, gathered in one pass over outcome chunks.

    ``add`` takes the rows chunk by chunk (``pa.Table`` or ``pa.RecordBatch`` of any size, in row
    order, with at least the columns of ``REPORT_COLUMNS``; ``key`` and ``content`` are only
    needed for report.html). The work per chunk is vectorised; the chunk itself is not kept.

    Kept, whatever the row count (small: one entry per model, status, finish_reason or error
    type):

    - counts and integer sums (rows, ok rows, tokens, attempts, 429s, unpriced rows, …);
    - per model: row, ok and unpriced counts and token sums;
    - cost sums per (model, failed), exact (as big integers, see ``_exact_parts``);
    - per status / finish_reason / error type: a count; per error type the first non-null
      message in row order, already cut to the report's example length;
    - the newest ``finished_at``;
    - for report.html, the ``TOP_ROWS`` slowest and most expensive rows so far: only the
      columns those tables show, at most ``2 × TOP_ROWS`` rows at any time.

    Kept per row, as numpy arrays in blocks of 65,536 rows or more (small chunks are merged;
    never a Python number per row):

    - ``finished_at`` of every row (float64, NaN when null): 8 bytes;
    - whether the row is ok (bool) and its ``rate_limited`` (the smallest integer type that
      holds the chunk's values, 1 byte in practice): 2 bytes;
    - ``latency_ms`` of ok rows that have one (float64, NaN kept as the report counts it):
      8 bytes per ok row.

    That is about 18 bytes a row: 18 MB for a million rows. float32 latencies would halve the
    last part but change the report's mean and, at times, its percentiles. The latencies are
    concatenated once, for the percentiles (which need them all, as does pyarrow's quantile,
    which copies them: about 16 bytes per ok row for a moment); everything else reads the
    per-row arrays in slices of 65,536 rows.

    ``choices`` is the ``n`` the job asked (``choices_asked``): above 1, or where rows asked
    their own above 1 (the ``choices_asked`` column), the ok rows whose ``choices`` hold fewer
    than they asked are counted (their lengths read, nothing kept), and the failed rows that
    have ``choices`` (answered, a choice failing a check), with their cost; else the column is
    not read.

    ``rows`` is the number of rows added so far. Ties in the top-10 tables are broken by key,
    then by row order (the earlier row first).
    """

    __slots__ = (
        "_attempts",
        "_audio",
        "_choices",
        "_cost",
        "_cost_bad",
        "_cut",
        "_earlier",
        "_earlier_bad",
        "_errors",
        "_failed_choices",
        "_failed_choices_usd",
        "_finish",
        "_latency",
        "_latency_model",
        "_latency_models",
        "_missing",
        "_models",
        "_n_fewer",
        "_n_ok",
        "_n_unpriced",
        "_n_unpriced_failed",
        "_newest",
        "_per_row",
        "_rate_limited",
        "_reported",
        "_rows_attempted",
        "_search",
        "_status",
        "_tiers",
        "_to_do",
        "_to_do_bad",
        "_to_do_billed",
        "_tokens",
        "_top",
        "_total_tokens",
        "_unreported",
        "_written",
        "_written_said",
        "rows",
    )

    def __init__(self, *, choices: int = 1) -> None:
        self.rows = 0
        self._n_ok = 0
        self._choices = choices  # the n asked: ok rows answered with fewer are _n_fewer
        self._n_fewer = 0
        # Failed rows answered with choices (n > 1), which --retry-failed asks all n again of,
        # and what their answers cost.
        self._failed_choices = 0
        self._failed_choices_usd = UsdSum()
        self._cut = CutRows(choices=choices)  # the rows cut at max_tokens
        self._n_unpriced = 0
        self._n_unpriced_failed = 0  # of them, failed rows (billed, at a price not known)
        self._tokens: dict[str, int] = dict.fromkeys(_TOKEN_COLUMNS, 0)
        # Rows whose reply gave the count at all: many servers leave out cached and reasoning
        # tokens, and a sum of 0 would read as "none" where it is "not said".
        self._reported: dict[str, int] = dict.fromkeys(_DETAIL_COLUMNS, 0)
        self._total_tokens = 0
        # Prompt tokens written to the cache (Anthropic's), and the rows whose reply said.
        self._written = 0
        self._written_said = 0
        self._attempts = 0
        self._rows_attempted = 0
        self._rate_limited = 0
        self._status: dict[str, int] = {}
        self._finish: dict[str, int] = {}
        # model → [rows, ok, unpriced, *token sums, total tokens, *rows that reported the
        # _DETAIL_COLUMNS, search units, rows that reported any, unpriced rows among them,
        # search requests (rows), unpriced rows among them, unpriced rows whose reply reported
        # its tokens and no search: an earlier billed try's cost was not known]
        self._models: dict[str | None, list[int]] = {}
        self._search = SearchSum()  # the search units and requests of the rows with a cost
        # (model priced as, service tier) → rows answered at a tier priced apart (flex, ...)
        self._tiers: dict[tuple[str, str], int] = {}
        self._audio = AudioSum()  # the audio tokens, by the model priced as
        self._cost: dict[_GroupKey, int] = {}
        self._cost_bad: set[_GroupKey] = set()  # groups with a NaN or infinite cost
        # The same for earlier_cost_usd: earlier billed attempts of rows sent again.
        self._earlier: dict[_GroupKey, int] = {}
        self._earlier_bad: set[_GroupKey] = set()
        # Of those, the rows still to do (``retrying`` records): how many, and their cost.
        self._to_do_billed = 0
        self._to_do: dict[_GroupKey, int] = {}
        self._to_do_bad: set[_GroupKey] = set()
        # unreported_usd: the estimated cost of tries billed, maybe, with no usage reported (a
        # timeout once sent, a cut answer), and the rows (outcomes or to do) that had any.
        self._unreported = UsdSum()
        self._errors: dict[str, list[Any]] = {}  # error type → [rows, example or None]
        self._newest: float | None = None
        self._per_row = _PerRow(3)  # finished_at, is ok, rate_limited
        self._latency = _PerRow(1)  # latency_ms of ok rows
        # Their model (priced as), while they are of one (``_NOT_YET`` before any): a job of
        # one model keeps no more. From a second model on, each model's apart too.
        self._latency_model: Any = _NOT_YET
        self._latency_models: dict[Any, _PerRow] | None = None
        self._top: dict[str, pa.Table | None] = dict.fromkeys(_RANKED)
        self._missing: set[str] = set()

    @classmethod
    def of(cls, table: pa.Table | pa.RecordBatch) -> OutcomeStats:
        """The stats of one table, read as one chunk."""
        stats = cls()
        stats.add(table)
        return stats

    def add(self, chunk: pa.Table | pa.RecordBatch) -> None:
        """Take the next rows. Raises ``ValueError`` if the chunk lacks a column the report needs
        (a missing ``key`` or ``content`` only fails ``render_html``)."""
        names = set(chunk.schema.names)
        missing = [c for c in _COLUMNS if c not in names]
        if missing:
            raise ValueError(f"outcome table lacks column(s) {', '.join(missing)}")
        self._missing.update(c for c in _HTML_COLUMNS if c not in names)
        if isinstance(chunk, pa.RecordBatch):
            chunk = pa.Table.from_batches([chunk])
        for start in range(0, chunk.num_rows, _SLICE):
            self._add(chunk.slice(start, _SLICE))

    # ---------------------------------------------------------------------------------------
    # What build_report and render_html read

    @property
    def missing_columns(self) -> tuple[str, ...]:
        """Columns report.html needs that some chunk lacked."""
        return tuple(c for c in _HTML_COLUMNS if c in self._missing)

    def row_slices(self) -> Iterator[tuple[F64, npt.NDArray[np.bool_], F64]]:
        """Every row, in row order, in slices of at most 65,536 rows: ``finished_at`` (NaN where
        null), whether the status is ok, and ``rate_limited`` (0 where null) as float64."""
        for finished_at, is_ok, limited in self._per_row.slices():
            yield finished_at, is_ok, limited.astype(np.float64)

    def ok_latency_ms(self) -> F64:
        """``latency_ms`` of the ok rows that have one, in row order (NaN kept), as one array
        (concatenated on the first call)."""
        (latency,) = self._latency.whole()
        return cast(F64, latency)

    def ok_latency_by_model(self) -> dict[Any, F64]:
        """``ok_latency_ms``, each model's apart (by the model the rows were priced as)."""
        if self._latency_models is None:
            one = self._latency_model
            return {} if one is _NOT_YET else {one: self.ok_latency_ms()}
        return {model: cast(F64, part.whole()[0]) for model, part in self._latency_models.items()}

    def _add_latency(self, latency: F64, codes: npt.NDArray[np.int64], names: list[Any]) -> None:
        """The ok rows' ``latency``, whose models are ``names[codes]``."""
        # The codes present, by a count of each: np.unique imports numpy.ma on its first call
        # (NumPy 2.4), 7 ms of every run's end.
        present = np.flatnonzero(np.bincount(codes, minlength=len(names))).tolist()
        split = self._latency_models
        if split is None:
            used = [names[c] for c in present]
            one = self._latency_model
            if len(used) <= 1 and (one is _NOT_YET or not used or used[0] == one):
                if used:
                    self._latency_model = used[0]
                self._latency.append(latency)
                return
            # A second model: each model's apart from now on, the first one's from those kept.
            split = self._latency_models = {}
            if one is not _NOT_YET:
                part = _PerRow(1)
                part.append(self.ok_latency_ms())
                split[one] = part
        self._latency.append(latency)
        for code in present:
            split.setdefault(names[code], _PerRow(1)).append(latency[codes == code])

    @property
    def cut(self) -> CutRows:
        """The rows cut at max_tokens."""
        return self._cut

    def top_rows(self, column: str) -> list[dict[str, Any]]:
        """The ``TOP_ROWS`` rows with the largest finite ``column`` (``latency_ms`` or
        ``cost_usd``), largest first, with the columns report.html shows."""
        top = self._top[column]
        return [] if top is None else top.select(list(_TOP_COLUMNS)).to_pylist()

    # ---------------------------------------------------------------------------------------

    def _add(self, t: pa.Table) -> None:
        retrying = pc.fill_null(is_value(t["status"], RETRYING), _FALSE)
        if pc.any(retrying).as_py():
            self._add_to_do(pc.filter(t, retrying))
            t = pc.filter(t, pc.invert(retrying))
        n = t.num_rows
        if n == 0:
            return
        offset = self.rows
        self.rows += n
        status = t["status"]
        is_ok = pc.fill_null(is_value(status, "ok"), _FALSE)
        is_failed = pc.invert(is_ok)
        cost = t["cost_usd"]
        # Rows paid for whose cost is not known: ok rows without one, and failed rows whose
        # reply reported usage (billed) that could not be priced (a model with no price).
        billed = pc.or_(is_ok, pc.is_valid(t["prompt_tokens"]))
        unpriced = pc.and_(billed, pc.is_null(cost))
        finish = t["finish_reason"]
        self._n_ok += _count(is_ok)
        self._cut.add(t, is_failed)
        asked = t["choices_asked"] if "choices_asked" in t.column_names else None
        if "choices" in t.column_names and asks_choices(self._choices, asked):  # a server
            # that ignores n
            self._n_fewer += count_fewer_choices(t["choices"], is_ok, self._choices, asked)
            answered = failed_with_choices(t["choices"], status)
            if k := _count(answered):
                self._failed_choices += k
                self._failed_choices_usd.add(pc.filter(cost, answered))
        if k := _count(unpriced):
            self._n_unpriced += k
            self._n_unpriced_failed += _count(pc.and_(unpriced, is_failed))
        if "search_units" in t.column_names:  # a journal written before it has nulls
            units = t["search_units"]
        else:
            units = pa.chunked_array([pa.nulls(n, pa.int64())])
        searched = pc.fill_null(pc.greater(units, scalar(0, pa.int64())), _FALSE)
        if "search_requests" in t.column_names:  # a journal written before it has nulls
            requests = t["search_requests"]
        else:
            requests = pa.chunked_array([pa.nulls(n, pa.int64())])
        asked = pc.fill_null(pc.greater(requests, scalar(0, pa.int64())), _FALSE)
        _merge_counts(self._status, _counts(status))
        keep = pc.or_(is_ok, pc.is_valid(finish))
        _merge_counts(self._finish, _counts(pc.fill_null(pc.filter(finish, keep), _NO_VALUE)))

        for c in _TOKEN_COLUMNS:
            self._tokens[c] += _int_sum(t[c])
        for c in _DETAIL_COLUMNS:
            self._reported[c] += len(t[c]) - t[c].null_count
        total = pc.coalesce(t["total_tokens"], pc.add(t["prompt_tokens"], t["completion_tokens"]))
        self._total_tokens += _int_sum(total)
        if "cache_write_tokens" in t.column_names:  # a journal written before it has nulls
            written = t["cache_write_tokens"]
            if said := len(written) - written.null_count:
                self._written += _int_sum(written)
                self._written_said += said
        self._attempts += _int_sum(t["attempts"])
        attempted = pc.greater(t["attempts"], scalar(0, pa.int64()))
        self._rows_attempted += _count(pc.fill_null(attempted, _FALSE))
        self._rate_limited += _int_sum(t["rate_limited"])

        reported = pc.and_(pc.is_valid(t["prompt_tokens"]), pc.is_valid(t["completion_tokens"]))
        earlier = pc.and_(pc.and_(unpriced, reported), pc.invert(pc.or_(searched, asked)))
        priced = _priced_as(t)
        self._add_models(t, priced, is_ok, unpriced, total, units, pc.and_(unpriced, searched),
                         requests, pc.and_(unpriced, asked), earlier)
        if "service_tier" in t.column_names and t["service_tier"].null_count < n:
            for tier in PRICED_TIERS:
                at = pc.fill_null(is_value(t["service_tier"], tier), _FALSE)
                if _count(at):
                    for model, k in _counts(pc.filter(priced, at)).items():
                        self._tiers[model, tier] = self._tiers.get((model, tier), 0) + k
        if "audio_prompt_tokens" in t.column_names:  # a journal written before has nulls
            self._audio.add_priced(priced, t["audio_prompt_tokens"],
                                   t["audio_completion_tokens"])
        if units.null_count < n or requests.null_count < n:
            self._search.add_costed(priced, pc.is_valid(cost), units, requests)
        ok_np = _np_bool(is_ok)
        models = group_codes(priced)
        _add_exact(self._cost, self._cost_bad, models, ~ok_np, cost)
        if "earlier_cost_usd" in t.column_names:  # a journal written before it has nulls
            _add_exact(self._earlier, self._earlier_bad, models, ~ok_np, t["earlier_cost_usd"])
        self._add_errors(pc.filter(t.select(["error_type", "error_message"]), is_failed))
        if "unreported_usd" in t.column_names:  # a journal written before it has nulls
            self._unreported.add(t["unreported_usd"])

        finished_at = t["finished_at"]
        newest = pc.max(finished_at).as_py()
        self._newest = _max_of(self._newest, None if newest is None else float(newest))
        self._per_row.append(_np_float(finished_at), ok_np, _np_small_int(t["rate_limited"]))
        timed = pc.fill_null(pc.and_(is_ok, pc.is_valid(t["latency_ms"])), _FALSE)
        self._add_latency(_np_float(pc.filter(t["latency_ms"], timed)),
                          models[0][_np_bool(timed)], models[1])
        if not self._missing:
            self._add_top(t, offset)

    def _add_to_do(self, t: pa.Table) -> None:
        """Rows to do whose attempts were billed (``retrying`` records): no outcome, so not
        among the rows; what those attempts cost is earlier attempts' cost, and the requests
        they record count."""
        if "unreported_usd" in t.column_names:
            self._unreported.add(t["unreported_usd"])
        if "earlier_cost_usd" in t.column_names:
            # Rows whose billed attempts have a cost: not a cut try's estimate alone.
            self._to_do_billed += len(t) - t["earlier_cost_usd"].null_count
            models = group_codes(_priced_as(t))
            none_failed = np.zeros(t.num_rows, dtype=np.bool_)
            for sums, bad in ((self._earlier, self._earlier_bad), (self._to_do, self._to_do_bad)):
                _add_exact(sums, bad, models, none_failed, t["earlier_cost_usd"])
        self._attempts += _int_sum(t["attempts"])
        attempted = pc.greater(t["attempts"], scalar(0, pa.int64()))
        self._rows_attempted += _count(pc.fill_null(attempted, _FALSE))
        self._rate_limited += _int_sum(t["rate_limited"])

    def _add_models(
        self,
        t: pa.Table,
        priced: pa.ChunkedArray,
        is_ok: pa.ChunkedArray,
        unpriced: pa.ChunkedArray,
        total: pa.ChunkedArray,
        units: pa.ChunkedArray,
        unpriced_search: pa.ChunkedArray,
        requests: pa.ChunkedArray,
        unpriced_requests: pa.ChunkedArray,
        unpriced_earlier: pa.ChunkedArray,
    ) -> None:
        group, models = group_codes(priced)
        if "cache_write_tokens" in t.column_names:  # a journal written before it has nulls
            written = t["cache_write_tokens"]
        else:
            written = pa.chunked_array([pa.nulls(t.num_rows, pa.int64())])
        columns = [is_ok, unpriced, *(t[c] for c in _TOKEN_COLUMNS), total,
                   *(pc.is_valid(t[c]) for c in _DETAIL_COLUMNS), written,
                   pc.is_valid(written), units,
                   pc.greater(units, scalar(0, pa.int64())), unpriced_search, requests,
                   unpriced_requests, unpriced_earlier]
        rows = np.bincount(group, minlength=len(models)).tolist()
        sums = [_group_sums(group, len(models), c) for c in columns]
        for j, model in enumerate(models):
            acc = self._models.setdefault(model, [0] * (1 + len(sums)))
            acc[0] += rows[j]
            for i, s in enumerate(sums, 1):
                acc[i] += s[j]

    def _add_errors(self, failed: pa.Table) -> None:
        if failed.num_rows == 0:
            return
        group, types = group_codes(pc.fill_null(failed["error_type"], _NO_VALUE))
        rows = np.bincount(group, minlength=len(types)).tolist()
        # Each type's first row with a message (none: past the last row).
        messages = failed["error_message"]
        with_message = np.flatnonzero(to_numpy(pc.is_valid(messages)))
        first = np.full(len(types), failed.num_rows, dtype=np.int64)
        np.minimum.at(first, group[with_message], with_message)
        for j, error_type in enumerate(types):
            acc = self._errors.setdefault(error_type, [0, None])
            acc[0] += rows[j]
            if acc[1] is None and first[j] < failed.num_rows:  # the first in row order wins
                acc[1] = _example(messages[int(first[j])].as_py())

    def _add_top(self, t: pa.Table, offset: int) -> None:
        """Merge this chunk's top rows into the running top-``TOP_ROWS`` tables."""
        index = int64_array(np.arange(offset, offset + t.num_rows, dtype=np.int64))
        for column in _RANKED:
            values = pc.cast(t[column], pa.float64())
            mask = pc.fill_null(pc.is_finite(values), _FALSE)
            small = pc.filter(pa.table({"_v": values, "key": t["key"], "_i": index}), mask)
            if small.num_rows == 0:
                continue
            order = pc.select_k_unstable(
                small, k=min(TOP_ROWS, small.num_rows), sort_keys=_TOP_ORDER
            )
            best = pc.take(small, order)
            at = pc.subtract(best["_i"], scalar(offset, pa.int64()))
            picked = pc.take(t.select(list(_TOP_COLUMNS)), at)
            picked = picked.append_column("_v", best["_v"]).append_column("_i", best["_i"])
            previous = self._top[column]
            if previous is not None:
                picked = pa.concat_tables([previous, picked], promote_options="permissive")
                order = pc.select_k_unstable(
                    picked, k=min(TOP_ROWS, picked.num_rows), sort_keys=_TOP_ORDER
                )
                picked = pc.take(picked, order)
            self._top[column] = picked.combine_chunks()

    # ---------------------------------------------------------------------------------------
    # Sums for build_report

    def _cost_sum(self, keep: Callable[[_GroupKey], bool], *, earlier: bool = False,
                  to_do: bool = False) -> float:
        """The cost (with ``earlier``: the earlier attempts' cost; ``to_do``: those of rows
        still to do) of the (model, failed) groups ``keep`` picks, as the report shows it:
        rounded to 1e-10, and 0.0 if a NaN or infinite cost is in it (as the float sum, NaN or
        inf, would be shown)."""
        sums, bad = ((self._to_do, self._to_do_bad) if to_do
                     else (self._earlier, self._earlier_bad) if earlier
                     else (self._cost, self._cost_bad))
        return _shown_sum(sums, bad, keep)


def _add_exact(
    sums: dict[_GroupKey, int], bad_groups: set[_GroupKey],
    groups: tuple[npt.NDArray[np.int64], list[Any]], failed: npt.NDArray[np.bool_],
    cost: pa.ChunkedArray | pa.Array,
) -> None:
    """Add ``cost`` to exact sums per (model, failed) (``groups``: each row's model, as
    ``group_codes`` gives them); groups with a NaN or infinite cost are marked."""
    values = _np_float(cost)
    finite = np.isfinite(values)
    bad = _np_bool(pc.is_valid(cost)) & ~finite
    if not bad.any() and not finite.any():
        return
    group, models = groups
    if bad.any():
        for g, f in set(zip(group[bad].tolist(), failed[bad].tolist(), strict=True)):
            bad_groups.add((models[g], f))
    if not finite.any():
        return
    exp, hi, lo = _exact_parts(values[finite])
    # One group per (model, failed, exp), numbered (model · 2 + failed) · span + exp - low
    # (span: the exponents' range in this chunk, a few dozen in practice). When those
    # numbers would be many more than the rows, only the numbers in use are kept.
    # hi and lo summed per group are exact in int64.
    low = int(exp.min())
    span = int(exp.max()) - low + 1
    slots = ((group[finite] << 1) | failed[finite]) * span + (exp - low)
    used: npt.NDArray[np.int64] | None = None
    size = len(models) * 2 * span
    if size > max(len(slots), 1 << 16):
        used, slots = np.unique(slots, return_inverse=True)
        size = len(used)
    hi_sums = np.zeros(size, dtype=np.int64)
    lo_sums = np.zeros(size, dtype=np.int64)
    np.add.at(hi_sums, slots, hi)
    np.add.at(lo_sums, slots, lo)
    for i in np.flatnonzero(np.bincount(slots, minlength=size)).tolist():
        g2, e = divmod(i if used is None else int(used[i]), span)
        key = (models[g2 >> 1], bool(g2 & 1))
        m = (int(hi_sums[i]) << _HALF_BITS) + int(lo_sums[i])
        sums[key] = sums.get(key, 0) + (m << (e + low - 53 + _SCALE_BITS))


def _shown_sum(sums: Mapping[_GroupKey, int], bad: set[_GroupKey],
               keep: Callable[[_GroupKey], bool]) -> float:
    """The exact sum of the groups ``keep`` picks, as the reports show it (``_cost_sum``)."""
    keys = {k for k in (*sums, *bad) if keep(k)}
    if keys & bad:
        return 0.0
    total = sum(sums[k] for k in keys)
    try:
        return _usd(total / (1 << _SCALE_BITS))
    except OverflowError:
        return 0.0


class CutRows:
    """The rows cut at max_tokens (finish_reason length; with n > 1, any of their choices),
    added a table of outcomes at a time, as the reports count them: how many (``rows``), of
    them ``failed`` (a structured reply cut short fails its check: sent again at the same
    max_tokens, cut again), what they cost (``usd``), the most completion tokens one of them
    that asked one choice used (``tokens``: the largest max_tokens they were given; None: none
    said), and whether one was cut in a choice but choice 0 (``in_choice``: counted cut, and
    not by its finish_reason)."""

    __slots__ = ("_choices", "failed", "in_choice", "rows", "tokens", "usd")

    def __init__(self, *, choices: int = 1) -> None:
        self._choices = choices  # the n the job asked
        self.rows = self.failed = 0
        self.usd = UsdSum()
        self.tokens: int | None = None
        self.in_choice = False

    def add(self, t: pa.Table | pa.RecordBatch, failed: pa.ChunkedArray | pa.Array) -> None:
        """Add the outcomes ``t``, ``failed`` true where a row of them failed."""
        length = pc.fill_null(is_value(t["finish_reason"], "length"), _FALSE)
        cut = length
        if "choices" in t.column_names:  # n > 1: cut when any choice is, not the first alone
            cut = pc.or_(cut, pc.fill_null(pc.match_substring(t["choices"], CHOICE_CUT), _FALSE))
        k = _count(cut)
        if not k:
            return
        self.rows += k
        self.failed += _count(pc.and_(cut, failed))
        self.in_choice = self.in_choice or k > _count(length)
        self.usd.add(pc.filter(t["cost_usd"], cut))
        # Of rows that asked one choice: a reply's usage counts all of its n together, cut and
        # finished, which tells no one choice's limit.
        asked = t["choices_asked"] if "choices_asked" in t.column_names else None
        used = to_numpy(pc.filter(t["completion_tokens"], cut), fill=-1)
        each = (to_numpy(pc.filter(asked, cut), fill=self._choices) if asked is not None
                else np.full(len(used), self._choices))
        if (one := used[each == 1]).size and (most := int(one.max())) > 0:
            self.tokens = max(most, self.tokens or 0)


class UsdSum:
    """A cost column's sum, added a chunk at a time, as the reports sum costs (``OutcomeStats``:
    exact, then rounded to 1e-10 USD; 0.0 with a NaN or infinite cost in it, or past what a
    float holds), so that another place showing it (``status``) shows the same figure. Keeps
    a few integers, whatever the row count; ``rows`` counts the values added that are not
    null."""

    __slots__ = ("_bad", "_sums", "rows")

    def __init__(self) -> None:
        self._sums: dict[_GroupKey, int] = {}
        self._bad: set[_GroupKey] = set()
        self.rows = 0

    def add(self, cost: pa.ChunkedArray | pa.Array) -> None:
        n = len(cost)
        self.rows += n - cost.null_count
        _add_exact(self._sums, self._bad, (np.zeros(n, dtype=np.int64), [None]),
                   np.zeros(n, dtype=np.bool_), cost)

    @property
    def usd(self) -> float:
        return _shown_sum(self._sums, self._bad, _every)

    def of(self, rows: int) -> float | None:
        """The sum, where each of ``rows`` rows added has a cost; None where one has none."""
        return self.usd if self.rows == rows else None


class AudioSum:
    """The audio tokens of the prompt and of the completion (a spoken answer, an audio input)
    of the rows whose replies counted any, by the model they are priced as, added a table of
    outcome records at a time: the reports' ``OutcomeStats`` keeps one, and ``status``
    another. Tables need ``COLUMNS`` (``retrying`` records have none)."""

    COLUMNS = ("status", "model", "priced_as", *AUDIO_COLUMNS)
    __slots__ = ("_sums",)

    def __init__(self) -> None:
        # model priced as → [rows, audio tokens of the prompt, of the completion]
        self._sums: dict[str | None, list[int]] = {}

    def add(self, t: pa.Table) -> None:
        self.add_priced(_priced_as(t), t["audio_prompt_tokens"], t["audio_completion_tokens"])

    def add_priced(self, priced: pa.ChunkedArray, heard: pa.ChunkedArray,
                   spoken: pa.ChunkedArray) -> None:
        """The audio tokens of the prompt (``heard``) and the completion (``spoken``) of the
        rows whose replies counted any, by the model each is ``priced`` as."""
        n = len(heard)
        if heard.null_count == n and spoken.null_count == n:
            return
        some = pc.or_(pc.is_valid(heard), pc.is_valid(spoken))
        group, models = group_codes(pc.filter(priced, some))
        rows = np.bincount(group, minlength=len(models)).tolist()
        sums = [_group_sums(group, len(models), pc.filter(c, some)) for c in (heard, spoken)]
        for j, model in enumerate(models):
            acc = self._sums.setdefault(model, [0, 0, 0])
            acc[0] += rows[j]
            acc[1] += sums[0][j]
            acc[2] += sums[1][j]

    def models(self) -> list[str | None]:
        return list(self._sums)

    def entry(self, model: str | None, price: ModelPrice | None) -> dict[str, Any] | None:
        """``{"rows", "prompt", "completion", "at_text_price"}`` of ``model``'s rows at
        ``price`` (its price, None when not known): ``at_text_price`` names the parts whose
        audio tokens it has no audio price for, priced as text; None when no row of it
        counted audio tokens."""
        acc = self._sums.get(model)
        if acc is None:
            return None
        return {"rows": acc[0], "prompt": acc[1], "completion": acc[2],
                "at_text_price": [part for part, n, key in (
                    ("prompt", acc[1], "input_audio"), ("completion", acc[2], "output_audio"))
                    if n and price is not None and getattr(price, key) is None]}


class SearchSum:
    """Search billed apart from tokens, added a table of outcome records at a time: the
    reports' ``OutcomeStats`` keeps one, and ``status`` another, so both show the same figure.
    Whether a row's usage counted search units or its request asked for search billed per
    request (``searched``), and, per model the rows are priced as, the units and requests of
    the rows with a cost. Tables need ``COLUMNS``; ``retrying`` records (rows to do) are left
    out, as the reports leave them out. A few integers a model."""

    COLUMNS = ("status", "model", "priced_as", "cost_usd", "search_units", "search_requests")
    __slots__ = ("_sums", "searched")

    def __init__(self) -> None:
        self._sums: dict[str | None, list[int]] = {}
        self.searched = False

    def add(self, t: pa.Table) -> None:
        units, requests = t["search_units"], t["search_requests"]
        if units.null_count == len(units) and requests.null_count == len(requests):
            return  # no search in these rows (nor a journal written before the columns)
        outcome = pc.fill_null(pc.invert(is_value(t["status"], RETRYING)), _FALSE)
        zero = scalar(0, pa.int64())
        asked = pc.or_(pc.fill_null(pc.greater(units, zero), _FALSE),
                       pc.fill_null(pc.greater(requests, zero), _FALSE))
        self.searched = self.searched or bool(pc.any(pc.and_(outcome, asked)).as_py())
        self.add_costed(_priced_as(t), pc.and_(outcome, pc.is_valid(t["cost_usd"])), units,
                        requests)

    def add_costed(self, priced: pa.ChunkedArray, costed: pa.ChunkedArray,
                   units: pa.ChunkedArray, requests: pa.ChunkedArray) -> None:
        """Add the search ``units`` and ``requests`` of the rows ``costed`` says have a cost,
        by the model each is ``priced`` as (outcome rows only: the caller leaves the rest out)."""
        group, models = group_codes(priced)
        none = pa.scalar(None, pa.int64())
        sums = [_group_sums(group, len(models), pc.if_else(costed, c, none))
                for c in (units, requests)]
        for j, model in enumerate(models):
            acc = self._sums.setdefault(model, [0, 0])
            acc[0] += sums[0][j]
            acc[1] += sums[1][j]

    def cost(self, model: str | None, price: ModelPrice | None) -> float | None:
        """What the search of ``model``'s rows with a cost cost at ``price`` (``search_cost``)."""
        return search_cost(price, *self._sums.get(model, (0, 0)))

    def usd(self, prices: PriceBook) -> float:
        """What it cost, at ``prices``, as the reports' ``search_cost_usd``."""
        return sum_search_costs(self.cost(model, None if model is None else prices.price(model))
                                for model in self._sums)


def search_cost(price: ModelPrice | None, units: int, requests: int) -> float | None:
    """What the search of a model's rows with a cost cost: their ``units`` at ``price``'s
    ``search_unit``, else the library's per web search, and their ``requests`` at its
    ``search_request`` (as ``PriceBook.cost`` prices them); None when they searched and the
    price is not known (priced as asked, by a journal written before ``priced_as``)."""
    if not (units or requests):
        return 0.0
    if price is None:
        return None
    unit = price.web_search if price.search_unit is None else price.search_unit
    return round(units * (unit or 0.0) + requests * (price.search_request or 0.0), 12)


def sum_search_costs(costs: Iterable[float | None]) -> float:
    """The models' ``search_cost`` summed (those not known left out), as the reports show it."""
    return round(sum(c or 0.0 for c in costs), 12)


def _every(key: _GroupKey) -> bool:
    return True


def _priced_as(t: pa.Table) -> pa.ChunkedArray:
    """The model each row's cost is priced as, which the report groups rows by: its
    ``priced_as``, else (a record written before it) the model that answered."""
    if "priced_as" not in t.column_names:
        return t["model"]
    priced = t["priced_as"]
    return t["model"] if priced.null_count == len(priced) else pc.coalesce(priced, t["model"])


def _as_stats(
    outcomes: pa.Table | pa.RecordBatch | OutcomeStats, needed: tuple[str, ...]
) -> OutcomeStats:
    if isinstance(outcomes, OutcomeStats):
        return outcomes
    missing = [c for c in needed if c not in outcomes.schema.names]
    if missing:
        raise ValueError(f"outcome table lacks column(s) {', '.join(missing)}")
    return OutcomeStats.of(outcomes)


def build_report(
    outcomes: pa.Table | OutcomeStats,
    *,
    prices: PriceBook,
    job: Mapping[str, Any],
    wall_s: float | None,
    counters: Mapping[str, int] | None = None,
    to_do: int | None = None,
    stopped: str | None = None,
    not_in_input: int = 0,
    changed_left: int = 0,
    changed_exact: bool = True,
) -> dict[str, Any]:
    """Aggregate one outcome per row into the cost report (see the module docstring).

    ``outcomes`` is an ``OutcomeStats`` fed with every row, or the whole outcome table
    (``OUTCOME_SCHEMA``; extra columns are ignored). Raises ``ValueError`` if the table lacks a
    column the report needs.

    ``counters`` are the run's own counts, reported as given. Its ``http_429`` (every 429 this
    run saw) overlaps the rows' ``rate_limited`` sum (every 429 of every finished row, all runs):
    ``requests.http_429`` is the larger of the two, so no 429 is counted twice.

    ``to_do`` is how many of the input's rows have no outcome yet; ``stopped`` why the run
    stopped early; ``not_in_input`` how many rows the journal holds that the input no longer
    has (left out of ``outcomes``); ``changed_left`` how many rows changed in the input since
    they were sent and are not sent again yet (``changed_exact`` false: at most that many, as
    found by a run that ended before it could count them), whose outcomes are their earlier
    text's.

    ``wall_s`` is the wall time of the last run that sent requests; ``requests_per_min`` counts
    the rows finished in the last ``wall_s`` seconds before the newest ``finished_at``, so rows
    finished by an earlier run of a resumed job do not inflate it.
    """
    stats = _as_stats(outcomes, _COLUMNS)
    counters = dict(counters or {})
    n_rows = stats.rows
    warnings: list[str] = []
    if stopped:
        warnings.append(f"the run stopped early: {stopped}")
    if to_do:
        warnings.append(f"{count_rows(to_do)} of the input not done yet: rerun the job to send "
                        "them")
    if changed_left:
        warnings.append(changed_warning(changed_left, exact=changed_exact))
    if not_in_input:
        warnings.append(f"{count_rows(not_in_input)} recorded by earlier runs not in the input "
                        "any more: left out of these figures and the results")

    # ok and failed always there, 0 where no row is: a script reading by_status["failed"]
    # met a KeyError on the night every row went well.
    by_status = _sorted_counts({"ok": 0, "failed": 0, **stats._status})
    n_ok = stats._n_ok
    n_failed = n_rows - n_ok
    n_length = stats._cut.rows
    n_unpriced = stats._n_unpriced
    known_usd = stats._cost_sum(lambda k: True)

    by_model = _by_model(stats, prices)
    warnings.extend(prices.unused_by_replies({
        model: str(entry["price_source"]) for model, entry in by_model.items()
        if entry["ok"] and model != NO_VALUE and entry["price"] is not None}))
    warnings.extend(cached_at_input_price(by_model, prices))
    warnings.extend(audio_at_text_price(by_model))
    for model, entry in by_model.items():
        k = entry["unpriced_rows"]
        if not k:
            continue
        searched = entry["search_unpriced_rows"]
        price = entry["price"]
        if searched and price is not None:
            used = (f"model {model!r}: {count_rows(searched)} used search billed apart from "
                    f"tokens ({_num(entry['search_units'])} search units in all: sources or web "
                    "searches)")
            if "search_unit" in price or "web_search" in price:
                # Priced since, but not of this row: a run prices such rows where it can.
                warnings.append(
                    f"{used} when it had no price, cost not counted (a run with the search "
                    f"price set since {_SINCE})")
            else:
                warnings.append(
                    f"{used} with no price known for it, cost not counted; set search_unit "
                    f'(USD per unit) in the job file under [prices."{model}"]'
                )
            k -= searched
            if not k:
                continue
        asked = entry["search_request_unpriced_rows"]
        if asked and price is not None:
            used = (f"model {model!r}: {count_rows(asked)} asked for search billed per request "
                    "(a search model, web_search_options, a Google Search tool, enable_search)")
            if "search_request" in price:
                warnings.append(
                    f"{used} when it had no price, cost not counted (a run with the search "
                    f"price set since {_SINCE})")
            else:
                warnings.append(
                    f"{used} with no price known for it, cost not counted; set search_request "
                    f'(USD per request) in the job file under [prices."{model}"]'
                )
            k -= asked
            if not k:
                continue
        if model == NO_VALUE:
            warnings.append(
                f"{count_rows(k)} paid for do not name their model; their cost is not counted"
            )
        elif entry["price"] is None:
            close = entry.get("typo_of")
            meant = f" (did you mean {close!r}?)" if close else ""
            warnings.append(
                f"model {model!r}: no price known{meant}, cost of {count_rows(k)} not counted; "
                f"{'fix the model name, or ' if close else ''}"
                f'add [prices."{model}"] with input and output (USD per 1M tokens) to the job '
                "file"
            )
        else:
            earlier = entry["earlier_unpriced_rows"]
            if earlier:  # priced, its tokens reported, no search of its own: an earlier try's
                warnings.append(
                    f"model {model!r}: {count_rows(earlier)} had a try before "
                    f"{'its' if earlier == 1 else 'their'} last that may have been billed at a "
                    "cost not known (no usage reported: a timeout once sent, a broken "
                    "connection, a cut answer; or search with no price), cost not counted")
                k -= earlier
            if k:
                warnings.append(
                    f"model {model!r}: {count_rows(k)} with status ok reported no token usage; "
                    "their cost is not counted"
                )

    if stats._unreported.rows:
        # Worded as the run's summary words it: no sum shown where no row paid for has a cost.
        known = stats._cost_sum(lambda k: True)
        without = _rows_without_cost(n_unpriced)
        cost = (f"unknown ({without}), and theirs is" if without and not known
                else f"at least {format_usd(known)}"
                + (f", and {without}," if without else "") + " plus theirs,")
        warnings.append(
            f"{count_rows(stats._unreported.rows)} had tries that may have been billed with no "
            "usage reported (timed out once sent, a broken connection, a cut answer, a reply "
            f"without usage): the cost is {cost} estimated "
            f"at {format_usd(stats._unreported.usd)} (their prompts and max_tokens at the "
            "price, as max_cost_usd counts them)")

    # Finish reasons: every ok row, and any other row that recorded one.
    by_finish = _sorted_counts(stats._finish)
    if n_length:
        warnings.append(
            f"{count_rows(n_length)} stopped at the token limit (finish_reason=length): their "
            "content is cut off; raise max_tokens to get whole answers"
        )
    n_filtered = by_finish.get("content_filter", 0)
    if n_filtered:
        warnings.append(f"{count_rows(n_filtered)} stopped by the content filter")
    n_paused = by_finish.get("pause_turn", 0)
    if n_paused:
        warnings.append(paused_warning(n_paused))
    if stats._n_fewer:
        warnings.append(fewer_choices_warning(stats._n_fewer, stats._choices))

    errors = sorted(stats._errors.items(), key=lambda kv: (-kv[1][0], kv[0]))
    by_error = {k: {"rows": v[0], "example": v[1]} for k, v in errors}
    if n_failed:
        advice = retry_advice({k: v["rows"] for k, v in by_error.items()},
                              cut=stats._cut.failed)
        warnings.append(f"{count_rows(n_failed)} failed (see failures by type): {advice}")
    # What the failed rows answered with choices cost: None where a row of them has none.
    resent_usd = stats._failed_choices_usd.of(stats._failed_choices)
    if stats._failed_choices:
        warnings.append(resend_choices_note(stats._failed_choices, resent_usd, stats._choices))

    attempts = stats._attempts
    rows_attempted = stats._rows_attempted
    in_rows_429 = stats._rate_limited
    run_429 = int(counters.get("http_429", 0))

    latency = _latency(float64_array(stats.ok_latency_ms()))
    wall = _finite(wall_s)
    per_min = None
    if wall and n_rows:
        since = (stats._newest or 0.0) - wall
        in_run = sum(int(np.count_nonzero(at >= since)) for at, _, _ in stats.row_slices())
        per_min = round(in_run / (wall / 60.0), 1)

    return {
        "report_version": REPORT_VERSION,
        "generated_at": utc_timestamp(),
        "job": {str(k): _jsonable(v) for k, v in job.items()},
        "rows": {"total": n_rows, "by_status": by_status, "cut_at_length": n_length,
                 "cut_at_length_usd": stats._cut.usd.of(n_length),
                 "cut_at_length_tokens": stats._cut.tokens,
                 "to_do": to_do, "billed_to_do": stats._to_do_billed,
                 "changed_to_send": changed_left, "cost_unknown": n_unpriced,
                 "cost_unknown_failed": stats._n_unpriced_failed,
                 "fewer_choices": stats._n_fewer,
                 "failed_with_choices": stats._failed_choices},
        "tokens": {
            "prompt": stats._tokens["prompt_tokens"],
            "completion": stats._tokens["completion_tokens"],
            "cached": stats._tokens["cached_tokens"],
            "reasoning": stats._tokens["reasoning_tokens"],
            "cache_write": stats._written,
            "total": stats._total_tokens,
        },
        # How many rows' replies gave these counts (0: the server never said; the sums above
        # are then 0 for want of a figure, not a measured 0).
        "tokens_reported_by_rows": {"cached": stats._reported["cached_tokens"],
                                    "reasoning": stats._reported["reasoning_tokens"],
                                    "cache_write": stats._written_said},
        "search_units": {
            "total": sum(acc[-6] for acc in stats._models.values()),
            "rows": sum(acc[-5] for acc in stats._models.values()),
            "unpriced_rows": sum(acc[-4] for acc in stats._models.values()),
        },
        "search_requests": {
            "rows": sum(acc[-3] for acc in stats._models.values()),
            "unpriced_rows": sum(acc[-2] for acc in stats._models.values()),
        },
        "search_cost_usd": sum_search_costs(e["search_cost_usd"] for e in by_model.values()),
        # Null where some row paid for has no cost: a script reading 0.0 (no row priced) took
        # the job for free. The known part is cost_known_usd, as by_model's.
        "cost_usd": known_usd if n_unpriced == 0 else None,
        "cost_known_usd": known_usd,
        "cost_failed_usd": stats._cost_sum(lambda k: k[1]),
        "cost_failed_with_choices_usd": resent_usd,
        "cost_earlier_attempts_usd": stats._cost_sum(lambda k: True, earlier=True),
        "cost_to_do_attempts_usd": stats._cost_sum(lambda k: True, to_do=True),
        "cost_complete": n_unpriced == 0,
        "cost_unreported": {"rows": stats._unreported.rows,
                            "estimated_usd": stats._unreported.usd},
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
        "stopped": stopped,
        "warnings": warnings,
    }


def cached_at_input_price(by_model: Mapping[str, Mapping[str, Any]], prices: PriceBook
                          ) -> list[str]:
    """What the reports and the run's summary say of each model whose rows' cached prompt
    tokens were priced at the input price for want of the job's ``cached_input``."""
    return [f"model {model!r}: {entry['cached_tokens']:,} cached prompt tokens priced at the "
            f"input price, as {said}" for model, entry in by_model.items()
            if entry.get("cached_tokens") and (said := uncached_price(prices, model)) is not None]


def audio_at_text_price(by_model: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What the reports and the run's summary say of each model whose rows' audio tokens
    (a spoken answer, an audio input) were priced as text tokens for want of an audio price:
    their cost is low (OpenAI bills audio several times the text price)."""
    out = []
    for model, entry in by_model.items():
        audio = entry.get("audio_tokens")
        if not isinstance(audio, Mapping) or not (parts := audio.get("at_text_price")):
            continue
        counts = _and([f"{_num(audio.get(part, 0))} of the {part}" for part in parts])
        keys = _and([f"{'input' if part == 'prompt' else 'output'}_audio" for part in parts])
        out.append(f"model {model!r}: {counts} audio tokens priced as text tokens, no audio "
                   f"price known for it: their cost is low (audio is billed several times "
                   f'the text price); add {keys} (USD per 1M tokens) to [prices."{model}"] in '
                   "the job file")
    return out


def audio_lines(by_model: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line a model whose rows' replies counted audio tokens, under the reports' table of
    models: how many and the audio prices they were priced at, or that they had none."""
    out = []
    for model, m in by_model.items():
        audio = m.get("audio_tokens")
        if not isinstance(audio, Mapping):
            continue
        counts = _and([f"{_num(n)} of the {part}" for part in ("prompt", "completion")
                       if (n := audio.get(part))])
        p = m.get("price")
        prices = ([f"{_num(v)} {'in' if key == 'input_audio' else 'out'}"
                   for part, key in (("prompt", "input_audio"), ("completion", "output_audio"))
                   if audio.get(part) and (v := p.get(key)) is not None]
                  if isinstance(p, Mapping) else [])
        text = audio.get("at_text_price") or []
        if not text:
            said = f"priced at its audio price{'s' if len(prices) > 1 else ''}: " + (
                " / ".join(prices))
        elif not prices:
            said = "priced as text tokens: no audio price known, the cost is low"
        else:  # one part priced as audio, the other as text
            said = (f"the {'completion' if text == ['prompt'] else 'prompt'}'s priced at its "
                    f"audio price ({prices[0]}), the {text[0]}'s as text tokens: no audio "
                    "price known, the cost is low")
        out.append(f"{model}: {count_rows(audio.get('rows', 0))} with audio tokens ({counts}), "
                   f"{said}.")
    return out


def uncached_price(prices: PriceBook, model: str) -> str | None:
    """Where ``model``'s price is the job's ``[prices]`` entry with no ``cached_input`` (its
    cached prompt tokens then cost the input price, which APIs that cache bill lower: OpenAI
    a half to a tenth, Anthropic and DeepSeek a tenth), what to say of it; else None."""
    price = prices.price(model)
    source = prices.source(model)
    if price is None or not price.cache_at_input or not source.startswith(SOURCE_JOB):
        return None
    named = source[len(SOURCE_JOB) + 2:-1] if source != SOURCE_JOB else model
    return (f'[prices."{named}"] sets no cached_input: add it (USD per 1M tokens) where the '
            "API bills cached tokens lower (most list a cached-input price)")


def _by_model(stats: OutcomeStats, prices: PriceBook) -> dict[str, dict[str, Any]]:
    """Per-model sums, most rows first, then by name, the unnamed model last among equals."""
    groups = sorted(stats._models.items(), key=lambda kv: (-kv[1][0], kv[0] is None, kv[0] or ""))
    latency = stats.ok_latency_by_model()
    out: dict[str, dict[str, Any]] = {}
    for model, acc in groups:
        (n, ok, unpriced, *tokens, total, cached_said, reasoning_said, written, written_said,
         units, _, unpriced_search, requests, unpriced_requests, unpriced_earlier) = acc
        name = NO_VALUE if model is None else model
        price = None if model is None else prices.price(model)
        search = stats._search.cost(model, price)
        known = stats._cost_sum(partial(_of_model, model))
        out[name] = {
            "rows": n,
            "ok": ok,
            "failed": n - ok,
            **dict(zip(_TOKEN_COLUMNS, tokens, strict=True)),
            "cache_write_tokens": written,
            "total_tokens": total,
            "tokens_reported_by_rows": {"cached": cached_said, "reasoning": reasoning_said,
                                        "cache_write": written_said},
            "cost_usd": None if unpriced else known,
            "cost_known_usd": known,
            "unpriced_rows": unpriced,
            "search_units": units,
            "search_unpriced_rows": unpriced_search,
            "search_requests": requests,
            "search_request_unpriced_rows": unpriced_requests,
            "search_cost_usd": search,
            # A model with no price: its rows' cost is unknown for want of it, whatever their
            # earlier tries were; the count is of a priced model's rows only.
            "earlier_unpriced_rows": 0 if price is None else unpriced_earlier,
            "price_source": SOURCE_UNKNOWN if model is None
            else SOURCE_ASKED if price is None and ok > unpriced else prices.source(model),
            "price": None if price is None else price.as_dict(),
            "latency_ms": _latency(float64_array(latency.get(model, np.empty(0)))),
        }
        if price is None and model is not None and (close := prices.close_names(model)):
            out[name]["typo_of"] = close[0]  # a priced name it misspells: the one meant
        tiers = {tier: {"rows": k, "price": None if (p := prices.tier_price(model, tier)) is None
                        else p.as_dict()}
                 for tier in PRICED_TIERS
                 if model is not None and (k := stats._tiers.get((name, tier)))}
        if tiers:
            out[name]["service_tiers"] = tiers
        if (audio := stats._audio.entry(model, price)) is not None:
            out[name]["audio_tokens"] = audio
    return out


# Why a row answered before its search price was set still has no cost once it is set.
_SINCE = ("prices a row answered before it from its answer's usage; a row with an earlier try "
          "that may have been billed with no usage reported, or with search of no price, keeps "
          "no cost")


def unpriced_causes(by_model: Mapping[str, Mapping[str, Any]]) -> str:
    """Why the rows paid for without a cost have none, per model, and what to set, in one line
    for the run's summary (the report's warnings say it at length): the models with no price,
    the search with none (or none when it was answered), the models whose replies reported no
    usage."""
    no_price: list[str] = []
    meant: dict[str, str] = {}
    search: list[str] = []
    since: list[str] = []
    no_usage: list[str] = []
    unnamed = 0
    for model, entry in by_model.items():
        left = entry["unpriced_rows"]
        if not left:
            continue
        if model == NO_VALUE:
            unnamed += left
            continue
        price = entry["price"]
        if price is None:
            no_price.append(model)
            if close := entry.get("typo_of"):  # a misspelt name: the one meant
                meant[model] = close
            continue
        for rows, key, priced in (
                (entry["search_unpriced_rows"], "search_unit", ("search_unit", "web_search")),
                (entry["search_request_unpriced_rows"], "search_request", ("search_request",))):
            if rows:
                left -= rows
                if not any(k in price for k in priced):
                    search.append(f'{key} under [prices."{model}"]')
                elif model not in since:  # priced since: a row's cost is its answer's
                    since.append(model)
        left -= entry["earlier_unpriced_rows"]
        if left > 0:
            no_usage.append(model)
    parts = []
    if no_price:
        each = ", each" if len(no_price) > 1 else ""
        tables = _and([f'[prices."{model}"]' for model in no_price])
        named = _and([f"{m} (did you mean {meant[m]}?)" if m in meant else m for m in no_price])
        fix = "fix the model name, or " if meant else ""
        parts.append(f"no price for {named}: {fix}add {tables}{each} with input and output "
                     "(USD per 1M tokens), to a job file")
    if search:
        parts.append(f"search with no price: set {_and(search)} in a job file")
    if since:
        parts.append(f"search answered before its price was set, by {_and(since)}")
    if no_usage:
        parts.append(f"no usage reported by {_and(no_usage)}")
    if unnamed:
        parts.append(f"{count_rows(unnamed)} name no model")
    return "; ".join(parts) or "see report"


def _and(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _of_model(model: str | None, key: _GroupKey) -> bool:
    return key[0] == model


def _example(message: Any) -> Any:
    """An error message as the report's example: on one line, at most ``_EXAMPLE_CHARS``."""
    if isinstance(message, str):
        message = " ".join(message.split())
        if len(message) > _EXAMPLE_CHARS:
            message = message[: _EXAMPLE_CHARS - 1] + "…"
    return message


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


def _p50_p95(latency: Any) -> str:
    """A model's ``latency_ms`` (``_latency``'s) as the by-model table shows it."""
    if not isinstance(latency, Mapping) or latency.get("p50") is None:
        return "n/a"
    return " / ".join(format_ms(latency.get(k)) for k in ("p50", "p95"))


def _counts(values: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """``{value: count}``; a null value counts as "(none)"."""
    merged: dict[str, int] = {}
    for d in pc.value_counts(values).to_pylist():
        k = NO_VALUE if d["values"] is None else str(d["values"])
        merged[k] = merged.get(k, 0) + int(d["counts"])
    return merged


def _merge_counts(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v


def _sorted_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Most frequent first, then by name."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _group_sums(group: npt.NDArray[np.int64], groups: int,
                values: pa.ChunkedArray | pa.Array) -> list[int]:
    """The sum of a boolean or numeric column over each group (``group`` holds each row's),
    nulls skipped, as integers (a float sum cut to one, as the report shows it)."""
    typ = values.type
    data: npt.NDArray[Any]
    if pa.types.is_boolean(typ):
        data = to_numpy(values, fill=False).astype(np.int64)
    elif pa.types.is_unsigned_integer(typ):
        data = to_numpy(pc.cast(values, pa.uint64()), fill=0)
    elif pa.types.is_integer(typ) or pa.types.is_null(typ):
        data = to_numpy(pc.cast(values, pa.int64()), fill=0)
    else:
        data = to_numpy(pc.cast(values, pa.float64()), fill=0.0)
    sums = np.zeros(groups, dtype=data.dtype)
    np.add.at(sums, group, data)
    return [int(x) for x in sums.tolist()]


def _count(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def _int_sum(values: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(values).as_py() or 0)


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) and x > 0 else None


def sum_usd(values: pa.ChunkedArray | pa.Array) -> float:
    """The sum of a cost column (nulls skipped) as the reports show their sums (``UsdSum``)."""
    total = UsdSum()
    total.add(values)
    return total.usd


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


def _max_of(a: float | None, b: float | None) -> float | None:
    """The larger, as pyarrow's max over both would give: nulls skipped, NaN only if alone."""
    if a is None or math.isnan(a):
        return b if b is not None else a
    if b is None or math.isnan(b):
        return a
    return max(a, b)


def _exact_parts(
    values: F64,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Finite float64 values as ``(hi · 2**26 + lo) · 2**(exp - 53)`` with integer parts, so
    sums of ``hi`` and ``lo`` per ``exp`` are exact in int64 (up to 2**36 values)."""
    mantissa, exp = np.frexp(values)
    m = (mantissa * float(1 << 53)).astype(np.int64)
    return exp.astype(np.int32), m >> _HALF_BITS, m & ((1 << _HALF_BITS) - 1)


class _PerRow:
    """Parallel numpy columns kept per row, appended chunk by chunk. Small pieces are merged
    into blocks of at least ``_SLICE`` rows, so many tiny chunks cost no more than a few big
    ones; no Python number is kept per row."""

    __slots__ = ("_blocks", "_columns", "_pending", "_pending_rows")

    def __init__(self, columns: int) -> None:
        self._columns = columns
        self._blocks: list[tuple[npt.NDArray[Any], ...]] = []
        self._pending: list[tuple[npt.NDArray[Any], ...]] = []
        self._pending_rows = 0

    def append(self, *columns: npt.NDArray[Any]) -> None:
        self._pending.append(columns)
        self._pending_rows += len(columns[0])
        if self._pending_rows >= _SLICE:
            self._flush()

    def _flush(self) -> None:
        if len(self._pending) == 1:
            self._blocks.append(self._pending[0])
        elif self._pending:
            self._blocks.append(tuple(np.concatenate(c) for c in zip(*self._pending, strict=True)))
        self._pending = []
        self._pending_rows = 0

    def slices(self) -> Iterator[tuple[npt.NDArray[Any], ...]]:
        """The columns, in row order, as views of at most ``_SLICE`` rows each."""
        self._flush()
        for block in self._blocks:
            for start in range(0, len(block[0]), _SLICE):
                yield tuple(c[start : start + _SLICE] for c in block)

    def whole(self) -> tuple[npt.NDArray[Any], ...]:
        """The columns as single arrays; concatenated once, then kept that way."""
        self._flush()
        if len(self._blocks) != 1:
            if not self._blocks:
                return tuple(np.empty(0) for _ in range(self._columns))
            self._blocks = [tuple(np.concatenate(c) for c in zip(*self._blocks, strict=True))]
        return self._blocks[0]


_NOT_YET = object()  # no model yet (``OutcomeStats._latency_model``; a model may be None)


def _np_float(col: pa.ChunkedArray | pa.Array) -> F64:
    """A column as a new float64 array (owning its memory), NaN where null."""
    values = to_numpy(pc.cast(col, pa.float64()), fill=math.nan)
    return np.array(values, dtype=np.float64, copy=True)


def _np_bool(col: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.bool_]:
    return np.array(to_numpy(col, fill=False), dtype=np.bool_, copy=True)


def _np_small_int(col: pa.ChunkedArray | pa.Array) -> npt.NDArray[Any]:
    """An integer count column in the smallest integer type that holds it, 0 where null;
    a float column as float64, with NaN and infinities as 0."""
    if not pa.types.is_integer(col.type):
        values = _np_float(col)
        values[~np.isfinite(values)] = 0.0
        return values
    values = to_numpy(col, fill=0)
    if values.size == 0:
        return np.empty(0, dtype=np.int8)
    lo, hi = int(values.min()), int(values.max())
    dtype = np.result_type(np.min_scalar_type(lo), np.min_scalar_type(hi))
    return values.astype(dtype, copy=True)


# --------------------------------------------------------------------------------------------
# Markdown


def render_markdown(report: Mapping[str, Any]) -> str:
    """A short human summary of ``report``; plain enough to read on a terminal."""
    job: Mapping[str, Any] = report.get("job") or {}
    rows: Mapping[str, Any] = report.get("rows") or {}
    tokens: Mapping[str, Any] = report.get("tokens") or {}
    req: Mapping[str, Any] = report.get("requests") or {}
    search: Mapping[str, Any] = report.get("search_units") or {}
    asked: Mapping[str, Any] = report.get("search_requests") or {}
    lat: Mapping[str, Any] = report.get("latency_ms") or {}
    pricing: Mapping[str, Any] = report.get("pricing") or {}
    by_status: Mapping[str, int] = rows.get("by_status") or {}
    warnings: list[str] = list(report.get("warnings") or [])

    title = f"# Cost report: {_md(job['name'])}" if job.get("name") else "# Cost report"
    out: list[str] = [title, ""]
    details = job_details(job)
    if details:
        out += [f"- {_md(k)}: {_md(v)}" for k, v in details]
        out.append("")

    ok, failed = by_status.get("ok", 0), rows.get("total", 0) - by_status.get("ok", 0)
    earlier = report.get("cost_earlier_attempts_usd") or 0.0
    to_do_usd = report.get("cost_to_do_attempts_usd") or 0.0
    billed_to_do = rows.get("billed_to_do") or 0
    unreported = report.get("cost_unreported") or {}
    cost = _cost_cell(report, known_cost(report))
    latency = "n/a"
    if lat.get("p50") is not None:
        latency = " / ".join(format_ms(lat.get(k)) for k in ("p50", "p95", "p99"))
    throughput = "n/a"
    if report.get("requests_per_min") is not None:
        throughput = f"{_num(report['requests_per_min'])} rows/min"
    totals = [
        ["Rows", f"{_num(rows.get('total', 0))} ({_num(ok)} ok, {_num(failed)} failed"
                 + (f", {_num(rows['to_do'])} to do)" if rows.get("to_do") else ")")],
        ["Prompt tokens", _num(tokens.get("prompt", 0))],
        ["Cached prompt tokens", _detail(report, "cached")],
        *([["Prompt tokens written to the cache", _num(tokens["cache_write"])]]
          if (report.get("tokens_reported_by_rows") or {}).get("cache_write") else []),
        ["Completion tokens", _num(tokens.get("completion", 0))],
        ["Reasoning tokens (in completion)", _detail(report, "reasoning")],
        ["Total tokens", _num(tokens.get("total", 0))],
        *([["Search units (sources, web searches)", _num(search["total"])]]
          if isinstance(search.get("total"), int) and search["total"] else []),
        *([["Search requests (billed per request)", _num(asked["rows"])]]
          if isinstance(asked.get("rows"), int) and asked["rows"] else []),
        ["Cost (USD)", cost],
        *([["  of which search", search_shown(searched, search_unpriced(report))]]
          if (searched := _searched(report)) is not None else []),
        ["  of which billed for failed rows", _known_part(
            report.get("cost_failed_usd") or 0.0, _rows_without_cost(rows.get(
                "cost_unknown_failed")))],
        *([[f"Tries with no usage reported, {_counted(unreported['rows'], 'row', 'rows')} "
            "(USD, estimated, not in the cost)", format_usd(unreported.get("estimated_usd"))]]
          if unreported.get("rows") else []),
        *([["Earlier attempts, sent again (USD)", format_usd(earlier - to_do_usd)]]
          if round(earlier - to_do_usd, 10) > 0 else []),
        *([[f"Earlier attempts, {_counted(billed_to_do, 'row', 'rows')} still to do (USD)",
            format_usd(to_do_usd)]] if billed_to_do else []),
        *([["Spent in all (USD)",
            _cost_cell(report, (known_cost(report) or 0.0) + earlier, tries=False)]]
          if earlier else []),
        [
            "Requests (the rows' latest attempts)",
            f"{_counted(req.get('attempts', 0), 'attempt', 'attempts')}, "
            f"{_counted(req.get('retries', 0), 'retry', 'retries')}, "
            f"{_num(req.get('http_429', 0))} × 429",
        ],
        ["Latency p50 / p95 / p99", latency],
        ["Wall time (the last run that sent)", _duration(report.get("wall_s"))],
        ["Throughput (the last run that sent)", throughput],
    ]
    out += ["## Totals", "", *_table(["", "Value"], totals, right=set()), ""]

    by_model: Mapping[str, Mapping[str, Any]] = report.get("by_model") or {}
    if by_model:
        # Columns of cache reads, cache writes and search where some row has them.
        cached = bool(tokens.get("cached"))
        wrote = bool((report.get("tokens_reported_by_rows") or {}).get("cache_write"))
        searches = _searched(report) is not None
        # And of failed rows where some model has any: a model every row of which failed (a
        # setting it refuses) showed its rows with no tokens and a cost of 0, as if answered.
        failed = any(m.get("failed") for m in by_model.values())
        # Each model's latency, where there are models to compare (one: the totals' above).
        timed = len(by_model) > 1
        body = []
        for model, m in by_model.items():
            said = m.get("tokens_reported_by_rows") or {}
            body.append(
                [
                    model,
                    _num(m.get("rows", 0)),
                    *([_num(m.get("failed", 0))] if failed else []),
                    _num(m.get("prompt_tokens", 0)),
                    *([_num(m.get("cached_tokens", 0)) if said.get("cached", 1)
                       else "not reported"] if cached else []),
                    *([_num(m.get("cache_write_tokens", 0)) if said.get("cache_write")
                       else "not reported"] if wrote else []),
                    _num(m.get("completion_tokens", 0)),
                    _model_cost(m),
                    *([search_shown(m.get("search_cost_usd"), search_unpriced(m))]
                      if searches else []),
                    *([_p50_p95(m.get("latency_ms"))] if timed else []),
                    _model_price(m),
                    str(m.get("price_source") or ""),
                ]
            )
        head = ["Model", "Rows", *(["Failed"] if failed else []), "Prompt",
                *(["Cached"] if cached else []),
                *(["Written to the cache"] if wrote else []), "Completion", "Cost",
                *(["Search"] if searches else []),
                *(["Latency p50 / p95"] if timed else []), "Price in/cached/out", "Source"]
        out += ["## By model", "", *_table(head, body, right=set(range(1, len(head) - 2))),
                ""]
        out.append(
            f"Prices in {pricing.get('units', 'USD per 1M tokens')}; library: "
            f"{pricing.get('library', LIBRARY_NAME)} {pricing.get('library_version', '')}."
        )
        tiers = [*tier_lines(by_model), *audio_lines(by_model)]
        out += ["", *(f"- {line}" for line in tiers)] if tiers else []
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
        out += ["## Warnings", "", *(f"- {_md(w)}" for w in warnings), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def known_cost(report: Mapping[str, Any]) -> Any:
    """The report's ``cost_known_usd``: its rows' cost, or the known part of it (a report
    written before that key: its ``cost_usd``, which was that)."""
    return report.get("cost_known_usd", report.get("cost_usd"))


def _cost_cell(report: Mapping[str, Any], known: Any, *, tries: bool = True) -> str:
    """A cost as cost_report.md's totals show it, worded as the run's summary words it: the
    known part (``known``, of the report's rows' cost); where rows paid for have no cost,
    ``unknown: 3 rows without a cost`` when no part is known, else the known part ``, and 3
    rows without a cost``; ``at least`` the known part, plus the tries that may have been
    billed with no usage reported (with ``tries``, where the report counts any)."""
    rows: Mapping[str, Any] = report.get("rows") or {}
    n = rows.get("cost_unknown")
    unpriced = ""
    if report.get("cost_complete") is False:
        unpriced = _rows_without_cost(n) or "rows without a cost"
    shown = _float_or_none(known)
    cost = _known_part(known, unpriced)
    untold = (report.get("cost_unreported") or {}).get("rows") if tries else None
    if isinstance(untold, int) and untold:
        cost = (f"{'' if unpriced and not shown else 'at least '}{cost}, plus tries of "
                f"{count_rows(untold)} that may have been billed with no usage reported")
    return f"{cost} (see warnings)" if unpriced or untold else cost


def _known_part(known: Any, unpriced: str) -> str:
    """A cost shown with the rows it leaves out (``unpriced``, "3 rows without a cost", or
    ""): ``unknown: 3 rows without a cost`` where no part is known, else the known part and
    ``, and 3 rows without a cost``."""
    if unpriced and not _float_or_none(known):
        return f"unknown: {unpriced}"
    return format_usd(known) + (f", and {unpriced}" if unpriced else "")


def _rows_without_cost(n: Any) -> str:
    """``3 rows without a cost`` for a count ``n`` above 0; else ""."""
    return f"{count_rows(n)} without a cost" if isinstance(n, int) and n > 0 else ""


def _searched(report: Mapping[str, Any]) -> float | None:
    """The report's cost of search billed apart from tokens, where some row's usage counted
    search units or its request asked for search billed per request; else (or in a report
    written before the figure) ``None``."""
    units = (report.get("search_units") or {}).get("total")
    asked = (report.get("search_requests") or {}).get("rows")
    usd = report.get("search_cost_usd")
    return usd if isinstance(usd, int | float) and (units or asked) else None


def search_unpriced(entry: Mapping[str, Any]) -> int:
    """The rows of a report (or of a model's entry in it) paid for whose search has no price,
    their cost unknown: search units with no price, and requests that asked for search billed
    per request with none."""
    units, requests = entry.get("search_units"), entry.get("search_requests")
    if isinstance(units, Mapping):  # the report's own: {"total", "rows", "unpriced_rows"}
        counts = [units.get("unpriced_rows"),
                  requests.get("unpriced_rows") if isinstance(requests, Mapping) else None]
    else:  # a model's
        counts = [entry.get("search_unpriced_rows"), entry.get("search_request_unpriced_rows")]
    return sum(n for n in counts if isinstance(n, int))


def search_shown(usd: float | None, unpriced: int) -> str:
    """What search billed apart from tokens cost, as the reports show it: the rows' with a
    price, and how many rows' search has none (not ``$0.0000`` for search with no price)."""
    if not unpriced:
        return format_usd(usd)
    priced = f"{format_usd(usd)} + " if usd else ""
    return f"{priced}no price ({count_rows(unpriced)})"


def tier_lines(by_model: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line a (model, service tier) whose rows were priced at that tier's price (flex,
    priority): ``gpt-5: 12 rows answered at service tier flex, priced at its price: ...``."""
    return [f"{model}: {count_rows(at.get('rows', 0))} answered at service tier {tier}, "
            f"priced at its price: {_model_price({**m, **at})}."
            for model, m in by_model.items()
            for tier, at in (m.get("service_tiers") or {}).items()]


def _model_price(m: Mapping[str, Any]) -> str:
    """A model's price as the reports show it: input / cached / output (USD per 1M tokens),
    the base one, then those of a prompt over each long-context tier's start (billed for all
    its tokens), the cache-write prices where its rows wrote to the cache, and search's (USD
    each)."""
    p = m.get("price")
    if not isinstance(p, Mapping):
        return "unknown"
    price = f"{_num(p.get('input'))} / {_num(p.get('cached_input'))} / {_num(p.get('output'))}"
    for tier in p.get("long_context") or ():
        price += (f" (over {_num(tier.get('over'))} prompt tokens {_num(tier.get('input'))} / "
                  f"{_num(tier.get('cached_input'))} / {_num(tier.get('output'))})")
    write = p.get("cache_write", p.get("input"))
    if m.get("cache_write_tokens") and write is not None:
        hour = p.get("cache_write_1h", write)
        price += f" + {_num(write)} written to the cache" + (
            f" ({_num(hour)} kept an hour)" if hour != write else "")
    per_unit = p.get("search_unit", p.get("web_search"))
    if per_unit is not None:
        price += f" + {_num(per_unit)} a search unit"
    if (per_request := p.get("search_request")) is not None:
        price += f" + {_num(per_request)} a search request"
    return price


def _model_cost(m: Mapping[str, Any]) -> str:
    """A model's cost for the table: the known part and how many rows have none."""
    unpriced = m.get("unpriced_rows")
    if m.get("cost_usd") is not None or not isinstance(unpriced, int) or not unpriced:
        return format_usd(m.get("cost_usd"))
    known = m.get("cost_known_usd")
    known_part = f"{format_usd(known)} + " if isinstance(known, int | float) and known else ""
    return f"{known_part}unknown ({count_rows(unpriced)})"


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
    return _md(v)


def _md(v: Any) -> str:
    """``v`` (the data's text: a model name, an error message) on one line of Markdown that
    reads as that text, in a viewer and on a terminal: controls as U+FFFD, and ``<``, ``![``
    and ``|`` escaped, so no tag, image or table cell comes of it."""
    text = _BAD_CHARS.sub("\ufffd", _one_line(v))
    return _MD_ACTIVE.sub(lambda m: m[1] * 2 + ("!\\[" if m[2] == "![" else "\\" + m[2]), text)


def count_rows(n: int) -> str:
    """``1 row``, ``2,000 rows``."""
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def _counted(n: Any, one: str, many: str) -> str:
    """``1 attempt``, ``7 retries``: a report's count (``n/a`` when unknown) and its noun."""
    return f"{_num(n)} {one if n == 1 else many}"


def choices_asked(request: Mapping[str, Any]) -> int:
    """The choices (``n``) a job's request settings (``RequestConfig.settings()``, job.json's
    ``request``) ask for each row: ``n`` in ``[request.extra]``, else 1."""
    extra = request.get("extra")
    n = extra.get("n") if isinstance(extra, Mapping) else None
    return n if type(n) is int and n > 1 else 1


def count_fewer_choices(choices: pa.ChunkedArray | pa.Array,
                        ok: pa.ChunkedArray | pa.Array, n: int,
                        asked: pa.ChunkedArray | pa.Array | None = None) -> int:
    """The rows (``ok``: those to count) whose ``choices`` hold fewer than the ``n`` asked
    (each row's own, ``asked``: the journal's ``choices_asked``, where it has one), by where
    each choice begins (``CHOICE_START``); a null ``choices`` is not counted."""
    came = pc.cast(pc.count_substring(choices, CHOICE_START), pa.int64())
    want = scalar(n, pa.int64()) if asked is None else pc.fill_null(asked, scalar(n, pa.int64()))
    fewer = pc.fill_null(pc.less(came, want), _FALSE)
    return _count(pc.and_(ok, fewer))


def asks_choices(n: int, asked: pa.ChunkedArray | pa.Array | None) -> bool:
    """Whether rows of the job's ``n`` and their own ``asked`` (``choices_asked``) ask more
    than one choice: their choices are then counted (``count_fewer_choices``)."""
    return n > 1 or (asked is not None and (pc.max(asked).as_py() or 0) > 1)


def failed_with_choices(choices: pa.ChunkedArray | pa.Array,
                        status: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Which rows failed with ``choices`` (answered with n > 1 choices, of which one failed a
    check: a schema, a forced function, a refusal): ``--retry-failed`` asks all their choices
    again."""
    return pc.and_(pc.fill_null(is_value(status, "failed"), _FALSE), pc.is_valid(choices))


def resend_choices_note(rows: int, usd: float | None, n: int) -> str:
    """What the summary, the reports and ``status`` say of ``rows`` failed rows answered with
    choices (``failed_with_choices``) of the ``n`` the job asked (1: the rows' own): a retry
    asks every choice again, and pays about what their answers cost (``usd``; None: unknown)
    again."""
    what = f"n = {n} choices" if n > 1 else "the n choices each asked"
    their = "its" if rows == 1 else "their"
    cost = f"about {format_usd(usd)}, " if usd is not None else ""
    return (f"--retry-failed asks again for all {what} of the {count_rows(rows)} that failed "
            f"by a choice, not only for the choices that failed: {their} usable choices are "
            f"replaced, not kept, and paid for again ({cost}what {their} answers cost; the "
            "cost so far is kept in earlier_cost_usd)")


def fewer_choices_warning(rows: int, n: int) -> str:
    """What the summary, the reports and ``status`` say of ``rows`` answered with fewer
    choices than the ``n`` asked (the job's; 1: the rows' own, a batch file's, say)."""
    asked = f"the n = {n} asked" if n > 1 else "the n their requests asked"
    return (f"{count_rows(rows)} got fewer choices than {asked} (the server ignores "
            "n?): their choices column holds those that came")


_RERUN_PAUSED = "--rerun-where \"finish_reason == 'pause_turn'\""


def paused_warning(rows: int, rerun: str = "") -> str:
    """What the summary, the reports and ``status`` say of ``rows`` whose turn Claude paused
    (its ``stop_reason`` ``pause_turn``, which gateways pass on as the finish_reason): the
    turn's server tools (web search) ran to their limit before the answer. A chat completion
    cannot hand the turn back to go on, so the row is ok with what it said so far. ``rerun``:
    the command that runs the job on (``status``'s), which the option that sends them is
    added to."""
    them = "it" if rows == 1 else "them"
    again = f": {rerun} {_RERUN_PAUSED}" if rerun else f", rerun with {_RERUN_PAUSED}"
    return (f"{count_rows(rows)} paused before {'its' if rows == 1 else 'their'} answer "
            "(finish_reason=pause_turn: Claude's server tools, such as web search, ran to their "
            f"limit): {'its' if rows == 1 else 'their'} content is unfinished; to send {them} "
            f"again{again}")


def changed_warning(n: int, *, exact: bool = True) -> str:
    """What to say of ``n`` rows whose text changed since they were sent and that are not sent
    again yet (not ``exact``: at most ``n``, as found by a run that ended before it could
    count them)."""
    one = n == 1
    if exact:
        return (f"{count_rows(n)} that changed in the input since "
                f"{'it was' if one else 'they were'} sent {'has' if one else 'have'} not been "
                "sent again yet: the results show "
                f"{'its answer' if one else 'their answers'} to the earlier text — rerun the "
                f"job to send {'it' if one else 'them'}")
    if one:
        return ("the job's last run ended before it could send again the row changed in the "
                "input: its result may show the answer to the earlier text — rerun the job to "
                "send it")
    return (f"the job's last run ended before it could send again all of the {n:,} rows "
            "changed in the input: some results may show answers to the earlier text — rerun "
            "the job to send them")


def retry_advice(failed_by_type: Mapping[str, int], command: str = "", *, cut: int = 0) -> str:
    """What to do about the failed rows: resend them, and first fix what a resend alone would
    fail on again: the input rows that could not be sent (``invalid_row``), and what the
    endpoint refused (a model it does not have, a setting it rejects: a 4xx); ending with
    ``command``, the one that resends them, where it is known. ``cut`` of them were cut at
    max_tokens (a structured reply cut short): sent again at the same max_tokens they are cut
    again, so they are answered first with a larger one, as the warning of the rows cut says;
    where every failed row was, that is all there is to do (no ``command``)."""
    if cut:
        they, them = ("it", "it") if cut == 1 else ("they", "them")
        first = (f"the {count_rows(cut)} that failed for being cut at max_tokens "
                 f"need{'s' if cut == 1 else ''} a larger one, as the warning of the rows cut "
                 f"says (--retry-failed would send {them} at the same max_tokens, to be cut "
                 "again and paid for again)")
        if cut >= sum(failed_by_type.values()):
            return first
        advice = _retry_advice(failed_by_type, cut)
        return (f"{first}; once {they} {'is' if cut == 1 else 'are'} answered, "
                f"{advice}" + (f": {command}" if command else ""))
    advice = _retry_advice(failed_by_type)
    return f"{advice}: {command}" if command else advice


def _retry_advice(failed_by_type: Mapping[str, int], cut: int = 0) -> str:
    """``retry_advice``'s, of the failed rows but the ``cut`` (said apart)."""
    rows = "the other failed rows" if cut else "the failed rows"
    unsendable = failed_by_type.get("invalid_row", 0)
    too_large = failed_by_type.get("request_too_large", 0)
    refused = {t: n for t, n in failed_by_type.items()
               if t not in ("invalid_row", "request_too_large") and fails_again(t)}
    steps = []
    if unsendable:
        steps.append(f"fix the input of the {count_rows(unsendable)} that could not be sent "
                     f"(invalid_row: {'its' if unsendable == 1 else 'the'} error_message"
                     f"{'' if unsendable == 1 else ' of each'} says why)")
    if too_large:
        steps.append(f"shrink the prompt or max_tokens of the {count_rows(too_large)} larger "
                     "than the tokens-per-minute limit (request_too_large)")
    if refused:
        n = sum(refused.values())
        steps.append(f"fix what the endpoint refused in the {count_rows(n)} that failed with "
                     f"{', '.join(refused)} (a model name, a request setting, a prompt longer "
                     "than the model's context: the error_message says), or "
                     f"{'it fails' if n == 1 else 'they fail'} again")
    timeouts = (" (rows that timed out may need a longer --timeout)"
                if failed_by_type.get("timeout") else "")
    if not steps:
        return f"rerun with --retry-failed to send {rows} again{timeouts}"
    fixable = unsendable + too_large + sum(refused.values())
    if fixable == sum(failed_by_type.values()) - cut:
        return (f"{'; and '.join(steps)}, then rerun with --retry-failed to send "
                f"{'it' if fixable == 1 else 'them'}")
    return (f"rerun with --retry-failed to send {rows} again{timeouts}; first "
            f"{'; and '.join(steps)}")


def fails_again(error_type: str) -> bool:
    """Whether rows that failed with ``error_type`` fail the same way when sent as they are: the
    endpoint refused the request itself (a 4xx other than a timeout, conflict or rate limit),
    or its key lacks the model."""
    return error_type in ("invalid_request", "model_refused", "client_error",
                          "request_too_large") or (
        error_type.startswith("http_4") and error_type not in ("http_408", "http_409", "http_429"))


def _num(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.0f}" if abs(v) >= 100_000 else f"{v:,.6g}"


def _detail(report: Mapping[str, Any], name: str) -> str:
    """A cached or reasoning token total, or "not reported" when no reply gave the count (a
    report from before ``tokens_reported_by_rows`` shows the total)."""
    reported = (report.get("tokens_reported_by_rows") or {}).get(name)
    if reported == 0 and (report.get("rows") or {}).get("total"):
        return "not reported by the server"
    return _num((report.get("tokens") or {}).get(name, 0))


def format_usd(v: Any) -> str:
    """A cost for people: ``$1,234.57`` from $100 up, ``$12.3456`` from a cent up, and below a
    cent three significant digits without an exponent (``$0.0000144``, ``$0.005``), so a cost
    that is not zero never shows as zero; zero is ``$0.0000``, no cost ``unknown``."""
    x = _float_or_none(v)
    if x is None:
        return "unknown"
    sign, x = ("-" if x < 0 else ""), abs(x)
    # Each form goes by the value as it would show: $99.99999 is $100.00, $0.0099996 $0.0100.
    if round(x, 4) >= 100:
        return f"{sign}${x:,.2f}"
    if x == 0 or float(f"{x:.3g}") >= 0.01:
        return f"{sign}${x:,.4f}"
    return f"{sign}${_sig3(x)}"


def format_budget(usd: float) -> str:
    """A budget as its owner wrote it: ``$25.00``, ``$0.0000001`` (not ``$1e-07``)."""
    return f"${usd:,.2f}" if usd >= 1 else format_usd(usd)


def _sig3(x: float) -> str:
    """``x`` to three significant digits, without an exponent (``0.0312``, ``12.3``, ``512``)."""
    if x == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{x:,.0f}"


def format_span(seconds: float) -> str:
    """A stretch of time ahead, roughly, for people: ``45 s``, ``12 min``, ``5.6 h`` (a job's
    time at its limits, a wait a server asks for)."""
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h"


def format_ms(v: Any) -> str:
    """A latency in milliseconds for people, to three significant digits, in ms below a second,
    then in s, min and h: ``8.4 ms``, ``12.3 ms``, ``512 ms``, ``1.23 s``, ``2.5 min``;
    ``–`` when there is none. The Markdown report and report.html both show latencies so."""
    x = _float_or_none(v)
    if x is None:
        return "–"
    # The unit goes by the value as shown: 999.7 ms is 1 s, not 1000 ms.
    for unit, size, limit in (("ms", 1.0, 1000.0), ("s", 1e3, 60.0), ("min", 6e4, 60.0)):
        if abs(float(f"{x / size:.3g}")) < limit:
            return f"{_sig3(x / size)} {unit}"
    return f"{_sig3(x / 3.6e6)} h"


def _duration(s: Any) -> str:
    """A wall time for people: three significant digits in seconds below a minute (``0.031 s``,
    ``5.43 s``, ``42.1 s``; ``< 0.001 s`` below a millisecond, which the report's rounding to
    the millisecond may leave as 0), then ``12m 34s`` and ``1h 02m 03s``."""
    secs = _float_or_none(s)
    if secs is None:
        return "n/a"
    if secs < 0.001:
        return "< 0.001 s"
    if float(f"{secs:.3g}") < 60:
        return f"{_sig3(secs)} s"
    m, sec = divmod(round(secs), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _float_or_none(v: Any) -> float | None:
    """``v`` as a finite float, or None (missing, not a number, NaN or infinite)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def job_details(job: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The job's fields for people, its name left out (the title shows it) and so are fields
    with no value: ``True`` / ``False`` as ``yes`` / ``no`` (the ``simulator`` field is
    ``yes``, ``no`` or ``some rows``), lists as ``a, b``, mappings as ``k: v, …``."""
    return [(str(k), _field_text(v)) for k, v in job.items()
            if k != "name" and v is not None and v != "" and v != [] and v != {}]


def _field_text(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "n/a"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {_field_text(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ", ".join(_field_text(x) for x in v)
    return _one_line(v)


# --------------------------------------------------------------------------------------------
# Files


def write_reports(
    report: Mapping[str, Any],
    out_dir: Path,
    *,
    outcomes: pa.Table | OutcomeStats | None = None,
) -> list[Path]:
    """Write ``cost_report.json`` and ``cost_report.md`` into ``out_dir``, each atomically.

    Given ``outcomes`` (the ``OutcomeStats`` or the table the report was built from), also
    ``report.html``: the same report with charts, one self-contained page (see
    ``batchrunner.report_html``). Returns the paths written, in that order.

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
