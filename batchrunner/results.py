"""Results and reports from the compacted journal, in memory that does not grow with the job.

The journal is compacted sorted by input position (``Journal.compact`` with ``InputOrder``),
so the results file is a merge of two sorted streams: the input's record batches and the
compacted journal's row groups. Each input batch takes the journal rows whose positions fall
in it, scattered to their places (rows not done yet get empty outcome columns; a row to do
whose attempts were billed, its record ``retrying``, gets a null status beside their cost).
The reports are aggregated from the same row groups, one pass (``OutcomeStats``).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchrunner import compute as pc
from batchrunner import io
from batchrunner.arrow import (
    int64_array,
    is_value,
    null_scalar,
    python_values,
    scalar,
    string_array,
    to_numpy,
)
from batchrunner.errors import OutputError
from batchrunner.journal import Fresh, Journal, new_run_id
from batchrunner.progress import program
from batchrunner.records import (
    AUDIO_COLUMNS,
    JOURNAL_ONLY,
    OUTCOME_COLUMNS,
    OUTCOME_SCHEMA,
    REPEATED_COLUMNS,
    RETRYING,
)
from batchrunner.report import (
    OutcomeStats,
    audio_at_text_price,
    build_report,
    cached_at_input_price,
    choices_asked,
    sum_usd,
    unpriced_causes,
    write_reports,
)

if TYPE_CHECKING:
    from batchrunner.runner import Plan, RunSummary

__all__ = ["InputOrder", "key_strings", "rebuild_outputs", "recorded_changed_left",
           "result_name", "sorted_ids"]

_DIGITS = r"^[0-9]{1,18}$"
_NO = scalar(False, pa.bool_())


def sorted_ids(ids: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``ids`` sorted, and the input position (int64) of each."""
    order = pc.cast(pc.sort_indices(ids), pa.int64())
    return pc.take(ids, order), order


class InputOrder:
    """Maps row keys to input positions: the position itself for a job keyed by position,
    else the row of the id in the input's id column, found by binary search in the ids sorted
    once (``index``, as ``sorted_ids`` gives it: from the input when not given)."""

    def __init__(self, source: io.InputSource, key_column: str | None, total_rows: int,
                 fingerprint: str, index: tuple[pa.Array, pa.Array] | None = None) -> None:
        self.source = source
        self.key_column = key_column
        self.rows = total_rows
        self.tag = f"{fingerprint}:{key_column or ''}:{total_rows}"
        self._sorted = index  # ids sorted, their positions
        self._where: dict[str | None, int] | None = None  # id: position, no pc.search_sorted

    def positions(self, keys: pa.Array) -> pa.Array:
        """int64 input position of each key; null for a key the input does not have."""
        if self.key_column is None:
            digits = pc.match_substring_regex(keys, _DIGITS)
            pos = pc.cast(pc.if_else(digits, keys, null_scalar(pa.string())), pa.int64())
            return pc.if_else(pc.less(pos, scalar(self.rows, pa.int64())), pos,
                              null_scalar(pa.int64()))
        ids, order = self._index()
        if len(ids) == 0:
            return pa.nulls(len(keys), pa.int64())
        if pc.search_sorted is None:
            return self._looked_up(keys)
        at = pc.min_element_wise(pc.search_sorted(ids, keys), scalar(len(ids) - 1, pa.int64()))
        found = pc.fill_null(pc.equal(pc.take(ids, at), keys), scalar(False, pa.bool_()))
        return pc.if_else(found, pc.take(order, at), null_scalar(pa.int64()))

    def _looked_up(self, keys: pa.Array) -> pa.Array:
        """``positions`` with a pyarrow that has no ``search_sorted``: the ids in a dict, made
        once (an id given twice finds its first row, as the binary search does)."""
        if self._where is None:
            ids, order = self._index()
            self._where = dict(zip(reversed(ids.to_pylist()), reversed(order.to_pylist()),
                                   strict=True))
            self._where.pop(None, None)  # a null id is no row's key
        where = self._where
        pos = np.fromiter((where.get(k, -1) for k in keys.to_pylist()), np.int64, len(keys))
        return int64_array(pos, pos >= 0)

    def _index(self) -> tuple[pa.Array, pa.Array]:
        if self._sorted is None:
            self._sorted = sorted_ids(self._read_ids())
        return self._sorted

    def _read_ids(self) -> pa.Array:
        assert self.key_column is not None
        parts = [key_strings(b.column(0)) for b in self.source.batches(columns=[self.key_column])]
        return pa.concat_arrays(parts) if parts else pa.nulls(0, pa.string())


def key_strings(values: pa.Array) -> pa.Array:
    """Id values as the strings rows are keyed by: Python's ``str`` of each value (of a date
    past 9999, its text: ``python_values``)."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return pc.cast(values, pa.string())
    return string_array([None if v is None else str(v) for v in python_values(values)])


def result_name(column: str, input_columns: set[str]) -> str:
    """Result columns never shadow an input column: ``status`` is ``result_status`` beside an
    input's ``status``, ``result2_status`` beside ``result_status`` too (an earlier job's
    results as the input), and so on. Names are compared in any case, as Spark, DuckDB and
    BigQuery read them: beside an input's ``Status`` too (DuckDB read the file's ``status``
    as ``status_1``, and ``status`` as the input's ``Status``; Spark refused the file)."""
    taken = {c.casefold() for c in input_columns}
    if column.casefold() not in taken:
        return column
    name, n = f"result_{column}", 1
    while name.casefold() in taken:
        n += 1
        name = f"result{n}_{column}"
    return name


class _Outcomes:
    """The compacted journal's rows with a known position, handed out by position range."""

    def __init__(self, journal: Journal, order: InputOrder) -> None:
        self._groups = journal.iter_compacted()
        self._order = order
        self._rows = pa.Table.from_batches([], OUTCOME_SCHEMA)
        self._pos = np.empty(0, np.int64)
        self._done = False

    def _read_group(self) -> None:
        """Take in the compacted journal's next row group, or find there is none."""
        group = next(self._groups, None)
        if group is None:
            self._done = True
            return
        pos = self._order.positions(group["key"].combine_chunks())
        known = int(len(pos) - pos.null_count)
        if known < len(pos):  # rows the input does not have sort last: none follow
            self._done = True
            group, pos = group.slice(0, known), pos.slice(0, known)
        self._rows = pa.concat_tables([self._rows, group])
        self._pos = np.concatenate([self._pos, to_numpy(pos)])

    def left(self) -> bool:
        """Whether rows are left to hand out."""
        while not self._done and len(self._pos) == 0:
            self._read_group()
        return len(self._pos) > 0

    def take_below(self, end: int) -> tuple[pa.Table, np.ndarray]:
        """The rows with position < ``end`` not handed out yet, and their positions."""
        while not self._done and (len(self._pos) == 0 or self._pos[-1] < end):
            self._read_group()
        cut = int(np.searchsorted(self._pos, end, side="left"))
        taken, taken_pos = self._rows.slice(0, cut), self._pos[:cut]
        self._rows, self._pos = self._rows.slice(cut), self._pos[cut:]
        return taken, taken_pos


def rebuild_outputs(plan: Plan, summary: RunSummary, *, run_id: str | None = None,
                    limited: bool | None = None) -> RunSummary:
    """Compact the journal, then write the results and reports from it; fill the summary's
    row counts. The report's wall time and counters are those of the job's last run that sent
    requests, as ``job.json`` records them. ``limited``: the results are a ``--limit`` run's,
    which end at the last input row with a record (default: whether ``plan`` holds rows back
    for a later run)."""
    job = plan.job
    journal = Journal(plan.out_dir)
    order = plan.order or InputOrder(plan.source, plan.key_column, plan.total_rows,
                                     str(plan.job_meta.get("input_fingerprint", "")))
    journal.compact(run_id or new_run_id(), order, fresh=plan.fresh)
    summary.changed_left, summary.changed_exact = (
        (_changed_left(journal, order, plan.fresh), True) if plan.fresh is not None
        else recorded_changed_left(plan.job_meta))
    results_path = plan.out_dir / f"results.{job.output.format}"
    asked = choices_asked(plan.job_meta.get("request") or {})
    stats = OutcomeStats(choices=asked)
    try:
        statuses, billed_usd = _write_results(
            plan, journal, order, results_path,
            bool(plan.limited) if limited is None else limited, stats)
    except OutputError as e:
        raise _saved(e, plan.job_meta) from None
    summary.rows = sum(statuses.values())
    summary.ok = statuses.get("ok", 0)
    summary.failed = statuses.get("failed", 0)
    # Rows to do: without a record, or whose latest is ``retrying`` (billed, not answered).
    summary.pending = statuses.get(None, 0) + statuses.get(RETRYING, 0)
    # Of them, those whose billed attempts have a cost (not a cut try's estimate alone).
    summary.billed_to_do = sum(len(c) - c.null_count for c in billed_usd)
    summary.billed_to_do_usd = sum_usd(pa.chunked_array(billed_usd, pa.float64()))
    summary.results_path = results_path

    # The compacted journal holds the input's rows first, in its order, then rows the input
    # no longer has (an id-keyed input that lost rows): the figures are the input's.
    in_input = summary.ok + summary.failed + statuses.get(RETRYING, 0)
    recorded = journal.compacted_rows() if journal.segments() else 0
    last_run, wall_s, counters = _last_runs(plan.job_meta)
    report = build_report(
        stats, prices=plan.prices,
        job={"name": job.name, "input": str(plan.source.path), "output": str(plan.out_dir),
             "model": job.request.model,
             "job_file": io.shown_path(str(plan.job_meta.get("job_file") or job.source)),
             "simulator": _simulated(plan.job_meta.get("simulator"))},
        wall_s=wall_s, counters=counters, to_do=summary.pending,
        changed_left=summary.changed_left, changed_exact=summary.changed_exact,
        stopped=summary.stopped or last_run.get("stopped"),
        not_in_input=max(0, recorded - in_input),
    )
    try:
        summary.report_paths = write_reports(report, plan.out_dir, outcomes=stats)
    except OutputError as e:
        raise _saved(e, plan.job_meta) from None
    summary.error_types = {k: v["rows"] for k, v in report["by_error_type"].items()}
    summary.error_examples = {k: v["example"] for k, v in report["by_error_type"].items()
                              if v.get("example")}
    summary.length_cut = report["rows"]["cut_at_length"]
    summary.cut_usd = report["rows"]["cut_at_length_usd"]
    summary.cut_tokens = report["rows"]["cut_at_length_tokens"]
    summary.cut_failed = stats.cut.failed
    # Rows cut in a choice but choice 0: counted cut, and not by their finish_reason (choice 0's)
    summary.choice_cut = summary.length_cut > report["by_finish_reason"].get("length", 0)
    summary.filtered = report["by_finish_reason"].get("content_filter", 0)
    summary.paused = report["by_finish_reason"].get("pause_turn", 0)
    summary.fewer_choices, summary.choices_asked = report["rows"]["fewer_choices"], asked
    summary.failed_choices = report["rows"]["failed_with_choices"]
    summary.failed_choices_usd = report["cost_failed_with_choices_usd"]
    summary.batch_input = plan.source.kind == "openai_batch"
    summary.cost_usd = report["cost_usd"]  # null where some row has no cost
    summary.cost_known_usd = report["cost_known_usd"]
    summary.cost_unknown = report["rows"]["cost_unknown"]
    if summary.cost_unknown:
        summary.unpriced = unpriced_causes(report["by_model"])
    summary.cached_at_input_price = cached_at_input_price(report["by_model"], plan.prices)
    summary.audio_at_text_price = audio_at_text_price(report["by_model"])
    summary.earlier_cost_usd = report["cost_earlier_attempts_usd"]
    summary.unreported_rows = report["cost_unreported"]["rows"]
    summary.unreported_usd = report["cost_unreported"]["estimated_usd"]
    if plan.fresh is not None:  # for job.json (the caller writes it): how many are left
        plan.job_meta["rows_changed"] = {"found": len(plan.fresh[0]),
                                          "left": summary.changed_left}
        if not summary.changed_left:
            # Every row that had changed was sent again, and the compaction kept its new
            # record: the journal matches this input (a crash before job.json is written
            # leaves it to be checked).
            plan.job_meta["rows_checked"] = plan.job_meta["input_fingerprint"]
    return summary


def _saved(e: OutputError, meta: dict[str, Any]) -> OutputError:
    """``e`` (a results file or report not written) saying what is kept and what to do, of
    the job whose job.json is ``meta``."""
    saved = OutputError(f"{e}; the rows finished are saved in the journal: rerun once it can "
                        f"be written (a full disk: free space), or run {program(meta)} report")
    saved.errno = e.errno
    return saved


def _changed_left(journal: Journal, order: InputOrder, fresh: Fresh) -> int:
    """How many of the rows whose values changed (``fresh``) are not sent again yet: their
    latest record, in the compacted journal, was made with other values."""
    positions, now = fresh
    recorded = journal.latest(order, hashes=True).row_hash
    if recorded is None:
        return len(positions)
    return int(np.count_nonzero(recorded[positions] != now))


def recorded_changed_left(meta: dict[str, Any]) -> tuple[int, bool]:
    """How many rows that changed the job's last run left unsent, as ``job.json``'s
    ``rows_changed`` records it, and whether that is exact: a run that ended before it could
    count them (a crash, an error) left the number it found at its start, at most that many."""
    changed = meta.get("rows_changed")
    if not isinstance(changed, dict):
        return 0, True
    left, found = changed.get("left"), changed.get("found")
    if type(left) is int:
        return max(left, 0), True
    return (found, False) if type(found) is int and found > 0 else (0, True)


def _utc_time(seconds: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Seconds since the epoch (the journal's ``finished_at``) as a UTC timestamp to the
    millisecond, as a results file shows it (pandas reads a datetime; CSV, ISO 8601 text)."""
    # A Python number given to pyarrow.compute would import pandas (pa.scalar): ours does not.
    millis = pc.cast(pc.round(pc.multiply(seconds, scalar(1000.0, pa.float64()))), pa.int64())
    return pc.cast(millis, pa.timestamp("ms", tz="UTC"))


def _simulated(recorded: Any) -> bool | str:
    """Whether the built-in simulator answered: ``True``, ``False``, or ``"some rows"`` (a
    rerun forced to mix its answers with a real endpoint's)."""
    return "some rows" if recorded == "mixed" else recorded is True


def _last_runs(meta: dict[str, Any]) -> tuple[dict[str, Any], float | None, dict[str, int]]:
    """From ``job.json``: the last run, and the wall time and counters of the last run that
    sent requests (what a hand-edited or damaged file holds that is not a number is left out)."""
    last_run = meta.get("last_run")
    timed = meta.get("timed_run")
    timed = timed if isinstance(timed, dict) else {}
    wall_s = timed.get("wall_s")
    counters = timed.get("counters")
    return (
        last_run if isinstance(last_run, dict) else {},
        float(wall_s) if isinstance(wall_s, int | float) and not isinstance(wall_s, bool)
        and math.isfinite(wall_s) else None,
        {str(k): v for k, v in counters.items() if type(v) is int}
        if isinstance(counters, dict) else {},
    )


def _logprobs_kept(plan: Plan, journal: Journal) -> bool:
    """Whether the results have a ``logprobs`` column: the job asks for them (``logprobs =
    true`` in ``[request.extra]``), or a row's record holds some (a batch file's rows that
    asked, a setting from a row's column)."""
    extra = (plan.job_meta.get("request") or {}).get("extra")
    return (isinstance(extra, dict) and extra.get("logprobs") is True) or journal.holds(
        "logprobs")


def _write_results(plan: Plan, journal: Journal, order: InputOrder, path: Path, limited: bool,
                   stats: OutcomeStats) -> tuple[Counter[str | None], list[pa.Array]]:
    """Write the results file, and add the input's records to ``stats`` on the way; return
    the rows by their journal status (None: no record), and the ``earlier_cost_usd`` of those
    whose record is ``retrying``. Such a row (counted as such) is a row to do: its ``status``
    and ``finished_at`` are null, as for a row never sent, and its ``attempts`` and
    ``earlier_cost_usd`` say what its billed attempts cost.

    ``limited`` (a ``--limit`` run's results): the file ends at the last input row with a
    record, and the input is read no further; the rows after it count as rows with none."""
    outcomes = _Outcomes(journal, order) if journal.segments() else None
    audio = any(journal.holds(c) for c in AUDIO_COLUMNS)  # a job with audio tokens
    outcome_cols = [c for c in OUTCOME_COLUMNS if c != "key" and c not in JOURNAL_ONLY
                    and (c != "logprobs" or _logprobs_kept(plan, journal))
                    and (audio or c not in AUDIO_COLUMNS)]
    empty = pa.Table.from_batches([], OUTCOME_SCHEMA)
    writer: io.ResultWriter | None = None
    statuses: Counter[str | None] = Counter()
    billed_usd: list[pa.Array] = []
    start = 0
    batches = plan.source.batches()
    try:
        for batch in batches:
            n = batch.num_rows
            rows, pos = (outcomes.take_below(start + n) if outcomes
                         else (empty, np.empty(0, np.int64)))
            if rows.num_rows:
                stats.add(rows)
            last = limited and not (outcomes and outcomes.left())
            if last:  # the rows after the last one done are not written
                n = int(pos[-1]) + 1 - start if len(pos) else 0
                batch = batch.slice(0, n)
            index = np.full(n, -1, np.int64)
            index[pos - start] = np.arange(len(pos))
            part = pc.take(rows, int64_array(index, index >= 0))
            retrying = pc.fill_null(is_value(part["status"], RETRYING), _NO)
            billed = int(pc.sum(retrying).as_py() or 0)
            if billed:  # billed attempts of rows to do: no outcome, nor a time it came
                for c, kind in (("status", pa.string()), ("finished_at", pa.float64())):
                    part = part.set_column(part.schema.get_field_index(c), c, pc.if_else(
                        retrying, null_scalar(kind), part[c]))
                billed_usd.extend(pc.filter(part["earlier_cost_usd"], retrying).chunks)
            start += n
            table = pa.Table.from_batches([batch])
            names = set(table.column_names)
            for c in outcome_cols:
                column = part[c] if c != "finished_at" else _utc_time(part[c])
                table = table.append_column(result_name(c, names), column)
            st = table.column(result_name("status", names))
            if plan.structured is not None and plan.structured.columns:
                checked = table.column(result_name(plan.structured.column, names)).to_pylist()
                spread = plan.structured.spread(checked, [x == "ok" for x in st.to_pylist()])
                for col_name, arr in spread.items():
                    table = table.append_column(result_name(col_name, names), arr)
            for entry in pc.value_counts(st).to_pylist():
                statuses[entry["values"]] += entry["counts"]
            if billed:  # counted apart from the rows with no record
                statuses[None] -= billed
                statuses[RETRYING] += billed
            if writer is None:
                # Dictionaries for the input's columns, the structured fields and the outcome
                # columns whose values repeat; not for answers, keys and ids.
                unique = {result_name(c, names) for c in outcome_cols
                          if c not in REPEATED_COLUMNS}
                writer = io.ResultWriter(path, plan.job.output.format, table.schema, dictionary=[
                    c for c in table.column_names if c not in unique])
            writer.write(table)
            del part, rows
            if last:
                statuses[None] += plan.total_rows - start
                break
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        batches.close()
    return statuses, billed_usd
