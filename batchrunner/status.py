"""``batchrunner status``: what a job's journal and ``job.json`` say of it, read beside a run
in progress every few minutes. Apart from the runner, so that ``status`` imports neither the
HTTP client nor anything else a run needs (0.3 s of a call on a small job)."""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from batchrunner import compute as pc
from batchrunner import io
from batchrunner.arrow import is_value, scalar, to_numpy
from batchrunner.config import (
    OVERRIDES,
    JobConfig,
    load_job,
    option_name,
    settings_changed,
    settings_fingerprint,
)
from batchrunner.errors import InputError, JournalError, UsageError
from batchrunner.journal import Journal
from batchrunner.pricing import PriceBook, parse_price_table
from batchrunner.progress import (
    duration,
    program,
    program_words,
    shell_quote,
    utc_timestamp,
)
from batchrunner.records import AUDIO_COLUMNS, RETRYING
from batchrunner.report import (
    NO_VALUE,
    AudioSum,
    CutRows,
    SearchSum,
    UsdSum,
    asks_choices,
    audio_at_text_price,
    changed_warning,
    choices_asked,
    count_fewer_choices,
    count_rows,
    failed_with_choices,
    fewer_choices_warning,
    format_usd,
    paused_warning,
    resend_choices_note,
    retry_advice,
)
from batchrunner.results import recorded_changed_left

__all__ = ["FULL_DISK_BYTES", "Rerun", "budget_to_raise", "cut_advice", "cut_warning",
           "format_status", "free_bytes", "input_moved", "job_budget", "lock_holder",
           "option_given",
           "plus_earlier", "read_meta", "rerun_command", "resume_advice", "round_up",
           "run_in_progress"]


# What to do of a damaged job.json: its journal holds answers paid for, which deleting the
# directory would lose (a backup's job.json, or the directory moved aside, keeps them).
_DAMAGED = ("restore it from a backup, or move the output directory aside (its journal holds the "
            "answers paid for) and run the job into a new one")


def read_meta(out_dir: Path) -> dict[str, Any]:
    """``OUT_DIR/job.json``, or one line saying why it cannot be used."""
    meta_path = out_dir / "job.json"
    if not meta_path.is_file():
        # The folder the runs' output directories are in (out/ of out/try, out/nightly):
        # named, as the one meant is most likely among them.
        try:
            runs = sorted(d.name for d in out_dir.iterdir() if (d / "job.json").is_file())
        except OSError:
            runs = []
        inside = ""
        if runs:
            shown = ", ".join(str(out_dir / name) for name in runs[:5])
            inside = (f"; it holds the output directories {shown}"
                      + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
                      + ": give one of them")
        raise UsageError(f"{out_dir} is not a batchrunner output directory (no job.json)"
                         f"{inside}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise ValueError("not a job description")
    except (ValueError, OSError) as e:
        raise JournalError(
            f"{meta_path} is damaged ({type(e).__name__}); {_DAMAGED}"
        ) from None
    total = meta.get("total_rows", 0)
    for field_name, ok in (("input_path", isinstance(meta.get("input_path"), str)),
                           ("id_column", isinstance(meta.get("id_column"), str | None)),
                           ("request", isinstance(meta.get("request", {}), dict)),
                           ("total_rows", type(total) is int and 0 <= total < 1 << 48)):
        if not ok:  # edited by hand, say: every command reads these
            raise JournalError(
                f"{meta_path} is damaged (its {field_name} is not what batchrunner wrote); "
                f"{_DAMAGED}")
    return meta


def run_in_progress(out_dir: Path, *, ending: bool = False) -> str:
    """The run that holds ``out_dir``'s lock, as its ``job.json`` names it ("pid 123, started
    ..."), or "" if it does not say. With ``ending``, the run that holds it once its requests
    are done, as it writes its results and reports (its ``last_run`` finished, its results not
    written yet), instead."""
    try:
        last = json.loads((out_dir / "job.json").read_text(encoding="utf-8")).get("last_run")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(last, dict) or bool(last.get("finished_at")) != ending or (
            ending and last.get("results_written") is not False):
        return ""
    return _live_run(last)


def _live_run(last: Any) -> str:
    """The run ``last`` (job.json's last_run) names, "pid 123, started ...", where its process
    is alive and is that run's (not a later process given its pid); else ""."""
    if not isinstance(last, dict) or not last.get("pid"):
        return ""
    try:
        os.kill(int(last["pid"]), 0)  # the holder may not have written its own yet
    except ProcessLookupError:
        return ""  # a run that was killed: not the holder
    except (PermissionError, ValueError, OverflowError):
        pass
    started = _epoch(last)
    if started is not None and _process_started_after(last["pid"], started + 1.0):
        return ""  # a killed run's pid, another process's since (a new run starting has it)
    return f"pid {last['pid']}, started {last.get('started_at')}"


def lock_holder(out_dir: Path) -> str:
    """Who holds ``out_dir``'s lock, for a run or ``report`` it refuses: the run in progress,
    or one that has sent its requests and writes its results and reports (seconds for a big
    job); "" where job.json does not say."""
    if holder := run_in_progress(out_dir):
        return holder
    if holder := run_in_progress(out_dir, ending=True):
        return f"{holder}, writing its results and reports"
    return ""


def _process_started_after(pid: Any, when: float) -> bool:
    """Whether the process ``pid`` started after ``when`` (a Unix time, to within a second:
    the boot time is to the second), as Linux's /proc says; False where it does not."""
    try:
        fields = Path(f"/proc/{int(pid)}/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
        with open("/proc/stat", encoding="ascii") as stat:
            boot = next(int(line.split()[1]) for line in stat if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK") > when
    except (OSError, ValueError, IndexError, StopIteration):
        return False


def plus_earlier(usd: float | None, to_do: int = 0, to_do_usd: float = 0.0) -> str:
    """What earlier attempts cost, to follow a cost (empty if nothing): of rows sent again,
    and (``to_do_usd`` of ``usd``) of ``to_do`` rows still to do, billed without an answer
    and not sent again yet."""
    if not usd:
        return ""
    resent = round(usd - to_do_usd, 10)  # the sums are to 1e-10 USD: no float noise
    parts = []
    if not to_do or resent > 0:
        parts.append(f"{format_usd(resent)} for earlier attempts of rows sent again")
    if to_do:
        parts.append(f"{format_usd(to_do_usd)}{'' if parts else ' for earlier attempts'} of "
                     f"{count_rows(to_do)} still to do")
    return f" (plus {' and '.join(parts)})"


def _audio_lines(out_dir: Path, meta: dict[str, Any]) -> list[str]:
    """The audio tokens replies counted (a spoken answer, an audio input), priced at the audio
    prices, and a warning for each model with none (priced as text: the cost is low); none
    when no record has any (told from the segments' statistics: nothing more is read)."""
    journal = Journal(out_dir)
    if not any(journal.holds(c) for c in AUDIO_COLUMNS):
        return []
    audio = journal.fold_latest(AudioSum.COLUMNS, AudioSum)
    prices = PriceBook(parse_price_table(meta.get("prices") or {},
                                         where=f"{out_dir / 'job.json'}: prices"))
    entries = {model: {"audio_tokens": entry} for model in audio.models() if model is not None
               and (entry := audio.entry(model, prices.price(model))) is not None}
    heard = sum(e["audio_tokens"]["prompt"] for e in entries.values())
    spoken = sum(e["audio_tokens"]["completion"] for e in entries.values())
    parts = " and ".join(f"{n:,} of the {what}" for n, what in ((heard, "prompt"),
                                                               (spoken, "completion")) if n)
    return ([f"  audio tokens: {parts}, priced at the audio prices"] if parts else []) + [
        f"  warning: {said}" for said in audio_at_text_price(entries)]


@dataclass(slots=True)
class _Counted:
    """What ``status`` reads first, its text and its JSON alike: job.json, whether a process
    holds the directory, the journal's latest records tallied, and the rows they count."""

    meta: dict[str, Any]
    locked: bool
    asked: int
    state: _Tally
    total: int
    ok: int
    failed: int
    gone_ok: int
    gone_failed: int
    last: Any  # job.json's last_run, as found there
    moved: str  # input_moved's, for no run in progress ("" beside one)


def _counted(out_dir: Path) -> _Counted:
    meta = read_meta(out_dir)
    locked = io.is_locked(out_dir)
    asked = choices_asked(meta["request"]) if "request" in meta else 1
    # A --retry-failed run's: its failed rows sent again since it began (the rest, a run that
    # goes on with it sends: runner's _selection_since).
    last_run = meta.get("last_run")
    selected = last_run.get("selection") if isinstance(last_run, dict) else None
    since = selected.get("since_s") if isinstance(selected, dict) else None
    state = Journal(out_dir).fold_latest(
        (*_Tally.COLUMNS, "choices"),
        lambda: _Tally(times=locked, choices=asked, since=_finite(since)))
    total = int(meta.get("total_rows") or 0)
    ok, failed = state.ok, state.failed
    # The journal's rows the input no longer has (an id-keyed input that lost rows since they
    # were done), as the last run found them: not the input's, so not counted as its.
    gone = meta.get("not_in_input")
    gone_ok, gone_failed = ((gone.get("ok"), gone.get("failed")) if isinstance(gone, dict)
                            else (None, None))
    if type(gone_ok) is int and type(gone_failed) is int:
        ok, failed = max(0, ok - gone_ok), max(0, failed - gone_failed)
    else:  # recorded by an older batchrunner: the excess is what can be told
        gone_ok, gone_failed = max(0, ok + failed - total) if total else 0, 0
    last = meta.get("last_run")
    # The input replaced since the last run read it (or while it ran, which stopped it): the
    # counts are of the rows it read, not of the input a run reads now (not counted here:
    # that reads the whole input). Beside a run in progress, said of that run, below.
    moved = input_moved(meta) if not locked and isinstance(last, dict) and last.get(
        "started_at") else ""
    if moved == "changed":  # rows written into it as the run read it were read, and sent
        total = max(total, ok + failed)
    return _Counted(meta=meta, locked=locked, asked=asked, state=state, total=total, ok=ok,
                    failed=failed, gone_ok=gone_ok, gone_failed=gone_failed, last=last,
                    moved=moved)


# What `status --json` prints, for a script (a nightly job's monitor) to read; raised when a
# field changes meaning or goes, not when one is added.
STATUS_VERSION = 1
# Its "state": the run in progress (or writing its results and reports, its requests done), a
# process holding the directory that says nothing of itself (a run starting, a report), no run
# recorded yet, the last run killed before its end was recorded, stopped, or run to its end (or
# its --limit): none of them says that the job is done, which its rows to do and failed say.
STATES = ("running", "writing_results", "busy", "not_run", "did_not_finish", "stopped",
          "finished")


def status_json(out_dir: Path) -> dict[str, Any]:
    """What ``format_status`` tells, as data: the rows (finished, ok, failed, to do), the
    failures by type, the tokens and cost, where the job is (``STATES``), how its last run
    ended and whether its input changed since. The money as the reports name it: cost_usd,
    null where a row paid for has no cost (cost_known_usd holds the known part); the earlier
    attempts' cost and the estimates of tries that may have been billed apart from it."""
    c = _counted(out_dir)
    meta, state, last = c.meta, c.state, c.last
    ran = isinstance(last, dict) and bool(last.get("started_at"))
    moved = c.moved
    where = ""
    if c.locked:  # told from the job.json read once: read again, a run ending between the
        # reads was "busy" for a moment (its results written, its lock not yet let go)
        moved = input_moved(meta) if ran else ""  # the text says it beside the run too
        if not _live_run(last):
            where = "busy"
        elif not last.get("finished_at"):
            where = "running"
        elif last.get("results_written") is False:
            where = "writing_results"
        # else its results are written and it lets go of the directory: as it ended, below
    if not where:
        where = ("not_run" if not ran else "did_not_finish" if not last.get("finished_at")
                 else "stopped" if last.get("stopped") else "finished")
    known = state.cost.usd
    last_run = None
    written = False  # no run's results (or none since the last run began)
    if ran:
        last_run = {key: _plain(last.get(key)) for key in (
            "run_id", "pid", "started_at", "finished_at", "stopped", "stop_kind", "sent",
            "limit", "retry_failed")}
        last_run["stop_kind"] = last_run["stop_kind"] if last_run["stopped"] else None
        last_run["retry_failed"] = last_run["retry_failed"] is True
        # As the text tells it: written by the run, or rebuilt by `report` since it ended.
        rebuilt = meta.get("rebuilt_at")
        written = bool(last.get("finished_at")) and (
            last.get("results_written") is not False
            or (isinstance(rebuilt, str) and rebuilt >= str(last["finished_at"])))
    return {
        "status_version": STATUS_VERSION,
        "name": meta["name"],
        "output_dir": str(out_dir.resolve()),
        "state": where,
        "results_written": written,
        "rows": {"total": c.total, "finished": c.ok + c.failed, "ok": c.ok,
                 "failed": c.failed, "to_do": max(0, c.total - c.ok - c.failed),
                 "not_in_input": c.gone_ok + c.gone_failed},
        "failed_by_type": dict(state.failed_by_type.most_common()),
        "tokens": state.tokens,
        "cost_usd": None if state.unpriced else known,
        "cost_known_usd": known,
        "cost_unknown_rows": state.unpriced,
        "cost_earlier_attempts_usd": state.earlier.usd,
        "cost_unreported_usd": state.unreported.usd,
        # What the budget counts (_raise_budget's spend), and the budget, where one is set.
        # (Finite, or null: no strict JSON holds an infinity, which absurd prices may sum to.)
        "spent_usd": _finite(round(known + state.earlier.usd + state.unreported.usd, 10)),
        "max_cost_usd": _finite(job_budget(meta)),
        "input": {"path": meta["input_path"],
                  # "changed", "gone" or "unreadable" since the last run (or the run in
                  # progress) read it; null: the same
                  "since_last_run": moved or None},
        "last_run": last_run,
    }


def _plain(value: Any) -> str | int | bool | None:
    """A job.json value as status's JSON gives it: a string, an integer or a boolean as it
    is; anything else (a float, a NaN a hand's edit left, which no strict JSON holds) null."""
    return value if isinstance(value, str | int) else None


def format_status(out_dir: Path) -> str:
    """Progress, failures by type and cost so far, from the journal alone."""
    c = _counted(out_dir)
    meta, locked, asked, state, total, ok, failed, last, moved = (
        c.meta, c.locked, c.asked, c.state, c.total, c.ok, c.failed, c.last, c.moved)
    gone_ok, gone_failed = c.gone_ok, c.gone_failed
    lines = [f"{meta['name']}: {ok + failed:,} of {total:,} rows finished "
             f"({ok:,} ok, {failed:,} failed, {max(0, total - ok - failed):,} to do)"
             + (" in the input as the last run read it, which has changed since"
                if moved == "changed" else "")]
    if gone_ok or gone_failed:
        gone = gone_ok + gone_failed
        lines.append(f"  the journal also holds {count_rows(gone)} the input no longer has "
                     f"(removed from it since {'it was' if gone == 1 else 'they were'} done; "
                     "the results and reports leave them out, the failures and cost below "
                     "count them)")
    failed_by_type = state.failed_by_type
    for etype, n in failed_by_type.most_common():
        lines.append(f"  failed {etype}: {n:,}")
    # Every row's cost, as the reports sum it: a failed row's billed reply (a schema mismatch,
    # an error body with usage) was paid for too.
    known = state.cost.rows > 0 or not state.unpriced  # else no row paid for has a cost
    cost = format_usd(state.cost.usd) if known else "unknown"
    if known and state.searched and (  # search billed apart from tokens, at the job's prices
            search := Journal(out_dir).fold_latest(SearchSum.COLUMNS, SearchSum)).searched:
        # A second read, of the model columns too, for a job with search only: every status
        # of a big job reading them cost a third more CPU once it was compacted.
        prices = PriceBook(parse_price_table(meta.get("prices") or {},
                                             where=f"{out_dir / 'job.json'}: prices"))
        usd = search.usd(prices)
        # Rows whose search had no price have no cost: counted below, not as search's $0.
        cost += (" (search has no price)" if not usd and (
            state.unpriced_search or state.unpriced_requests)
                 else f" (of which search {format_usd(usd)})")
    if state.unpriced:  # rows paid for without a cost, as the reports count them
        searched = state.unpriced_search + state.unpriced_requests
        keys = " or ".join(k for k, n in (("search_unit", state.unpriced_search),
                                          ("search_request", state.unpriced_requests)) if n)
        if not searched:
            why = "no price known, or no usage reported"
        elif searched == state.unpriced:
            why = f"search with no price when answered ({keys} in [prices])"
        else:
            why = "no price known for the model or its search, or no usage reported"
        cost += (f" (plus {count_rows(state.unpriced)} without a cost: {why})" if known
                 else f": {count_rows(state.unpriced)} without a cost ({why})")
    # Of the rows to do, those whose billed attempts have a cost (not a cut try's estimate).
    cost += plus_earlier(state.earlier.usd, state.to_do_earlier.rows, state.to_do_earlier.usd)
    if state.unreported.rows:  # "at least" a known part: not "at least unknown"
        cost = (f"{'at least ' if known else ''}{cost}, plus tries of "
                f"{count_rows(state.unreported.rows)} that may "
                "have been billed with no usage reported, estimated at "
                f"{format_usd(state.unreported.usd)}")
    lines.append(f"  tokens {state.tokens:,}; cost so far {cost}")
    # Of the prompt, the tokens read from the cache and written to it (Anthropic's cache
    # writes, billed above the input price), where replies counted any.
    cache = [f"{n:,} {what}" for n, what in (
        (state.cached, "read from the cache"),
        (state.written, "written to it" if state.cached else "written to the cache")) if n]
    if cache:
        lines.append(f"  of the prompt tokens, {' and '.join(cache)}")
    lines += _audio_lines(out_dir, meta)
    if state.fewer_choices:
        lines.append(f"  {fewer_choices_warning(state.fewer_choices, asked)}")
    if state.failed_choices:
        lines.append("  " + resend_choices_note(
            state.failed_choices, state.failed_choices_usd.of(state.failed_choices), asked))
    # The command that runs the job on, for every line that names one: its job file read once.
    rerun = Rerun(meta, out_dir)
    # The request settings a run of that command is refused for, where a row has an answer
    # (a prompt edited in the job file since last night): said below, with what --force does,
    # and every command shown given it. Else, those a run of the job file
    # without the last run's request options is refused for (a one-off --model, the crontab's
    # line refused from then on).
    changed_now: list[str] = []
    own_changed: list[str] = []
    if not locked and state.ok and isinstance(last, dict) and last.get("started_at"):
        changed_now = _changed_since(meta, rerun.job)
        # Not where --force would let through more than the settings (rows keyed otherwise,
        # another endpoint's answers mixed): said, and left to whoever reads it.
        besides = _forced_too(meta, rerun.job) if changed_now else []
        rerun.force = bool(changed_now) and not besides
        if not changed_now and _request_options(rerun.given):
            own_changed = _changed_since(meta, _job_as_run(meta, own=True))
    if state.paused:  # with the command that sends them again, once no run is in progress
        again = "" if locked or rerun.held else rerun.command()
        lines.append(f"  {paused_warning(state.paused, again)}")
    changed, exact = recorded_changed_left(meta)
    if changed and not locked:
        lines.append(f"  {changed_warning(changed, exact=exact)}")
    if locked:
        running = run_in_progress(out_dir)
        # A run that sent its last request writes its results and reports: for a big job,
        # seconds to minutes, which read as "a run starting" here.
        ending = "" if running else run_in_progress(out_dir, ending=True)
        lines.append(f"  a run is in progress ({running})" if running else
                     f"  a run is writing its results and reports ({ending}): it sends no "
                     "more requests" if ending else
                     "  in use by another batchrunner process (a run starting, or a report)")
        if running:
            finished_at = (np.concatenate(state.finished_at) if state.finished_at
                           else np.empty(0, np.float64))
            started = _epoch(last)
            to_send = last.get("to_send") if isinstance(last, dict) else None
            if type(to_send) is int and started is not None:  # retried rows included
                to_do = max(0, to_send - int(np.count_nonzero(finished_at >= started)))
            else:
                to_do = max(0, total - ok - failed)
            now = time.time()
            # While the endpoint is away, the outage is what is happening: one line, in place
            # of a pace of the rows before, which tells no time left (nor that no row
            # finishes: the outage says why). Once it is back, the pace is of the rows since.
            outage = (_outage(last.get("outage"), now, to_do) if isinstance(last, dict)
                      else "")
            back = _finite(last.get("back_s")) if isinstance(last, dict) else None
            if back is not None and (started is None or back <= started):
                back = None
            lines.append(outage or _pace(finished_at, to_do, now,
                                         started if back is None else back,
                                         back=back is not None))
            if not outage and isinstance(last, dict) and (
                    paused := _paused(last.get("paused"), now)):
                lines.append(paused)
            if moved := input_moved(meta):  # the run stops at its end without results
                lines.append(_input_line(moved, meta, rerun, running=True))
    elif isinstance(last, dict) and last.get("started_at"):
        # The command that finishes the job, for whoever did not write it (only its crontab
        # knew): the job file's run, or the options, that job.json keeps. After a stop for rows
        # failing, or refused, alike, with the failed rows to send again once that is fixed.
        to_do = max(0, total - ok - failed)
        kind = last.get("stop_kind") if last.get("finished_at") else None
        # The rows cut at max_tokens: what to do about them, as the run's summary says it (a
        # failed one sent again by --retry-failed is cut again at the same max_tokens).
        cut = _cut_lines(meta, out_dir, state, asked, to_do)
        fix_first = bool(to_do or failed) and kind in ("fix_first", "wait_first")
        # A --retry-failed run that did not finish them (killed, interrupted, stopped) leaves
        # failed rows its command sends again: without the option, it sends nothing of them.
        # (One that ran through says what to do of the rows that failed again: retry_advice.)
        # So does one that --limit held back (the same command sends the next rows), and a
        # --rerun-where run its expression: the rows it sent again since it began are done.
        cut_short = not last.get("finished_at") or bool(last.get("stopped"))
        held_back = cut_short or type(last.get("limit")) is int
        retry = bool(failed) and (fix_first or (held_back and last.get("retry_failed") is True))
        selection = last.get("selection")
        where = selection.get("rerun_where") if isinstance(selection, dict) else None
        rerun_left = isinstance(where, str) and held_back
        # A run that goes on with a selection is given all of it, or it begins it again:
        # --retry-failed beside --rerun-where even with no failed row left.
        extra: tuple[str, ...] = RETRY if retry or (
            rerun_left and last.get("retry_failed") is True) else ()
        if rerun_left:
            extra += ("--rerun-where", str(where))
        if not last.get("finished_at") and type(limit_given := last.get("limit")) is int:
            # A trial of a few rows killed: resumed as it was run, not with the whole input
            # (the same command sends that many more of the rows left). One stopped says what
            # finishes the job, as one that ran through does.
            extra += ("--limit", str(limit_given))
        # A run is refused (exit 2) over an input keyed by position that changed, unless
        # given --force, which the input's line says, with its command, and when to use it.
        by_position = moved == "changed" and meta.get("id_column") is None
        command = "" if by_position else rerun.command(extra)
        at = len(lines) + 1  # after the last run's line: what its commands are refused for
        # What that command sends: the rows to do, and the failed ones again (nothing left to
        # send, its last rows the ones failing: the failed to retry).
        left = (f"{count_rows(to_do)} to do" + (f" and {failed:,} failed" if retry else "")
                if to_do else f"the {failed:,} failed row{'' if failed == 1 else 's'} to retry"
                if retry else "")
        if retry and held_back and not fix_first and isinstance(selection, dict):
            # It goes on with the failed rows that run had not sent again (runner's
            # _selection_since): not those that failed again.
            unsent = failed - state.failed_since
            failed_left = (f"the {unsent:,} failed row{'' if unsent == 1 else 's'} it had not "
                           "sent again" if state.failed_since else
                           f"the {failed:,} failed row{'' if failed == 1 else 's'} to retry")
            if not unsent:  # every failed row sent again: the rows to do are left
                failed_left = ""
            left = (f"{count_rows(to_do)} to do" + (f" and {failed_left}" if failed_left
                                                     else "")) if to_do else failed_left
        if rerun_left:
            picked = f"the rows --rerun-where {where!r} picks that it has not sent again yet"
            left = f"{left} and {picked}" if left else picked
        if not last.get("finished_at"):
            free = free_bytes(out_dir)
            # A full disk stopped it, unsaid (job.json could not be written either), or a file
            # system gone read-only (a disk error, a remount): the one thing to do before its
            # command, said in the same line.
            full = free is not None and free < FULL_DISK_BYTES
            why = (f": the disk holding {out_dir} is full ({free:,} bytes free): free space, "
                   "then " if full else f": the file system holding {out_dir} is read-only "
                   "(a disk error, or remounted so): make it writable, then "
                   if _read_only(out_dir) else " (killed, or the machine stopped): ")
            lines.append(f"  last run: started {last['started_at']}, did not finish{why}"
                         + resume_advice(command))
            command = ""  # said
            lines += cut
            if (earlier := _outputs_before(out_dir, last)) is not None:
                # A results file that looks current, last night's: read in the morning as if
                # it were tonight's.
                lines.append(f"  the results and reports there are from before it ({earlier}), "
                             "without the rows it finished: the command above writes them, or "
                             f"{program(meta)} report {shell_quote(str(out_dir))} now")
        elif last.get("stopped"):
            lines.append(f"  last run: stopped {last['finished_at']}: {last['stopped']}")
            rebuilt = meta.get("rebuilt_at")
            if isinstance(rebuilt, str) and rebuilt >= str(last["finished_at"]):
                # The results and reports it could not write (a full disk) were written since.
                lines.append(f"  results and reports rebuilt by batchrunner report at {rebuilt}")
            elif last.get("results_written") is False and kind != "input_changed" and (
                    " changed while the job ran " not in str(last["stopped"])):  # an older run's
                # Stopped as it wrote them (Ctrl-C, SIGTERM, a full disk): the results file
                # there may be the run before's, looking current. "May": after a signal, the
                # thread writing them may still finish them. A changed input's stop says what
                # to do itself (report refuses that input).
                lines.append("  the results and reports may not have been written, or not all "
                             "(the run was stopped while writing them) — write them with: "
                             f"{program(meta)} report {shell_quote(str(out_dir))}")
            lines += cut
            if failed and not (to_do or retry):  # no command below: the failed rows are left
                lines.append("  " + retry_advice(failed_by_type, rerun.command(RETRY),
                                                 cut=state.cut.failed))
        else:
            sent = last.get("sent")
            rebuilt = meta.get("rebuilt_at")
            unwritten = last.get("results_written") is False and not (
                isinstance(rebuilt, str) and rebuilt >= str(last["finished_at"]))
            limit = last.get("limit")
            lines.append(f"  last run: {last['started_at']} to {last['finished_at']}"
                         + (f", {sent:,} request{'' if sent == 1 else 's'} sent"
                            if type(sent) is int else "")
                         + (f" (--limit {limit:,})" if type(limit) is int else ""))
            if unwritten:  # killed between its last row and its outputs
                lines.append("  the results and reports were not written: the run was killed "
                             "while writing them, or the machine stopped — write them with: "
                             f"{program(meta)} report {shell_quote(str(out_dir))}")
            lines += cut
            if failed:
                lines.append("  " + retry_advice(failed_by_type, rerun.command(RETRY),
                                                 cut=state.cut.failed))
        if command and left and kind == "budget":
            # The same command stops again at once: the job's spend so far counts. What the
            # rows --rerun-where has left cost, the estimate tells (status does not read the
            # expression's matches); of the failed rows, those not sent again yet are left.
            spent = state.cost.usd + state.earlier.usd + state.unreported.usd
            unsent = failed - state.failed_since if isinstance(selection, dict) else failed
            lines.append(f"  to finish, {left}: " + _raise_budget(
                meta, rerun, spent, state.ok, to_do + (unsent if retry else 0), extra,
                untold="which rows --rerun-where still picks, the estimate reads"
                if rerun_left else ""))
        elif command and fix_first:
            # Its rows failed, or were refused, alike: sent as they are, the rows left fail
            # so too. The endpoint's errors (a server error on every try) leave nothing to fix.
            first = ("wait for the endpoint to recover (what stopped it, above)"
                     if kind == "wait_first" else "fix what stopped it (above)")
            lines.append(f"  to finish, {left}: {first}, then: {command}")
        elif told := bool(command and left):
            lines.append(f"  to finish, {left}: {command}")
        # Tonight's export over last night's input: not the rows counted above. A run that
        # met that as it ended said so in its stop, above, but not the command that sends
        # them, nor that the rows done above may not be the input's now.
        if moved:
            lines.append(_input_line(moved, meta, rerun, running=False,
                                     stopped=kind == "input_changed", above=told))
        # A night's run refused at its start leaves job.json as the night before left it: said
        # whatever is left, a job done refused as well (the crontab's next night).
        left_any = bool(to_do or failed or moved == "changed")
        # A command shown: the rows left's, the paused rows', a killed run's to resume.
        shown = left_any or bool(state.paused) or not last.get("finished_at")
        if changed_now:
            lines.insert(at, "  the job file's request settings changed since the last run "
                         f"({', '.join(changed_now)}): {_refused(left_any)}"
                         + (f"; the commands here do not give --force, which would let through "
                            f"too {' and '.join(besides)}" if besides
                            else "; the commands here give --force" if shown else ""))
        elif own_changed:
            given = _option_args(_request_options(rerun.given))
            it = "it" if sum(a.startswith("--") for a in given) == 1 else "them"
            lines.insert(at, f"  the last run was given {' '.join(map(shell_quote, given))}, "
                         f"which the job file sets otherwise ({', '.join(own_changed)} without "
                         f"{it}): without {it} (the job file alone, a crontab's line, say), "
                         f"{_refused(left_any)}"
                         + (f"; the commands here give {it} again" if shown else ""))
    return "\n".join(lines)


def _cut_lines(meta: dict[str, Any], out_dir: Path, state: _Tally, asked: int,
               to_do: int) -> list[str]:
    """The warning of the rows cut at max_tokens (``state.cut``), as the run's summary words
    it, with the command that answers them again with a larger one; none where no row was."""
    cut = state.cut
    if not cut.rows:
        return []
    request = meta.get("request")
    advice, command = cut_advice(
        meta, out_dir, rows=cut.rows, every_choice=asked > 1 or cut.in_choice, tokens=cut.tokens,
        usd=cut.usd.of(cut.rows), pending=to_do,
        spent=state.cost.usd + state.earlier.usd + state.unreported.usd, budget=job_budget(meta),
        batch_input=isinstance(request, dict) and request.get("openai_batch") is True)
    return ["  warning: " + cut_warning(cut.rows, asked, cut.in_choice, advice, command)]


def _refused(left: bool) -> str:
    """What a run whose request settings changed since the rows done were answered does
    (runner's ``_check_same_request``), and what --force does: ``left``, whether it has rows
    to send (to do, failed, new or changed in the input), else every row is done."""
    if left:
        return ("a run is refused (exit 2) unless given --force, which sends the rows left "
                "with the new ones (the rows done keep their answers, made with the old ones); "
                "to answer every row with the new ones, use another --output directory")
    return ("a run is refused (exit 2) unless given --force; every row is done: with --force "
            "a run sends only the rows new or changed in the input, with the new ones (the rows "
            "done keep their answers, made with the old ones), and to answer rows again with the "
            "new ones, pass --force with --rerun-where (\"True\" picks every row), or use "
            "another --output directory")


def _forced_too(meta: dict[str, Any], job: JobConfig | None) -> list[str]:
    """What else --force would let a run of ``job`` do that it is refused without (runner's
    ``_check_same_job`` and ``_check_same_endpoint``): its rows keyed otherwise than the rows
    done (every row sent again), its answers from another endpoint than theirs (mixed)."""
    if job is None:
        return []

    def keys(column: Any) -> str:
        return "by position" if column is None else f"by column {column!r}"

    said = []
    if (was := meta.get("id_column")) != job.input.id_column:
        said.append(f"rows keyed {keys(job.input.id_column)}, the rows done {keys(was)} (every "
                    "row sent again)")
    if isinstance(sim := meta.get("simulator"), bool) and sim != job.endpoint.simulator:
        said.append("answers of a real endpoint mixed with the built-in simulator's"
                    if sim else "answers of the built-in simulator mixed with a real endpoint's")
    return said


def _request_options(options: dict[str, Any]) -> dict[str, Any]:
    """Of ``options`` (OVERRIDES' names), those that set a request setting: --model,
    --prompt, --max-tokens, ..."""
    return {k: v for k, v in options.items()
            if k in OVERRIDES and OVERRIDES[k][0].startswith("request") and v is not None
            and v is not False}


def input_moved(meta: dict[str, Any]) -> str:
    """What became of the job's input since its last run read it: "" (the same bytes, or not
    to be told cheaply), "changed", "gone" or "unreadable". Cheap, for a status beside a run
    every few minutes: each file's stamp (``io.stamp_of``) against the one the run recorded,
    a changed size a change; the input read through (its fingerprint) only where a stamp
    differs with every size the same (touched, or copied back the same), as the run's own end
    reads it (runner's ``_input_moved``). For a job.json from before the stamp was recorded,
    read through only where a file was modified after the last run started."""
    path = Path(meta["input_path"])
    try:
        files = io.input_files(path)
    except UsageError:  # a directory that cannot be listed (InputError), or its names
        return "unreadable"
    stamp = io.stamp_of(files)
    if not stamp:  # a file that cannot be looked at, or a directory's Parquet files all gone
        return "unreadable" if stamp is None and path.exists() else "gone"
    if not all(os.access(f, os.R_OK) for f in files):
        return "unreadable"
    recorded = meta.get("input_stamp")
    if isinstance(recorded, list) and all(
            isinstance(s, list) and len(s) == 4 and all(type(v) is int for v in s)
            for s in recorded):
        then = tuple(tuple(s) for s in recorded)
        if stamp == then:
            return ""
        if [s[2] for s in stamp] != [s[2] for s in then]:
            return "changed"  # another size: other bytes
    else:  # an older batchrunner's job.json: the input as that run started, if not modified
        started = _epoch(meta.get("last_run"))
        if started is None or max(s[3] for s in stamp) < started * 1e9:
            return ""
    kind = meta.get("input_kind")
    try:
        now = (io.fingerprint_of(path, kind, files) if isinstance(kind, str)
               else io.open_input(path).fingerprint())
    except InputError:
        return "unreadable"
    return "" if now == meta.get("input_fingerprint") else "changed"


def _input_line(moved: str, meta: dict[str, Any], rerun: Rerun, *, running: bool,
                stopped: bool = False, above: bool = False) -> str:
    """What ``input_moved`` found (``moved``), and what to do, as a run would meet it: an
    id-keyed input's new and changed rows are sent by the same command; a position-keyed
    one's change is refused unless --force (runner's ``_check_same_job``). ``running``: of a
    run in progress, which stops at its end without writing the results then; ``stopped``:
    of a run that so stopped, whose results the next run writes; ``above``: the command that
    sends the rows left to do is on the line above (an id-keyed input's)."""
    path = meta["input_path"]
    since = "the run in progress" if running else "the last run"
    stops = "the run stops at its end without writing the results"
    if moved == "gone":
        return (f"  input {path} is gone since {since} read it: "
                + (stops if running else "a run cannot read it") + " — put it back at that "
                "path, or run the job again with --input naming where it is now")
    if moved == "unreadable":
        return (f"  input {path} cannot be read now (its permissions, or a file of it): a run "
                "cannot read it — make it readable again")
    if meta.get("id_column") is not None:  # not counted: that reads the whole input
        if above:
            return (f"  input {path} changed since {since} read it: the command above sends "
                    "the rows that are new or changed too"
                    + (", and writes the results" if stopped else ""))
        command = rerun.command()
        return (f"  input {path} changed since {since} read it"
                + (f": {stops}; then running the job again sends the rows that are new or "
                   "changed, and writes them" if running else
                   ": running the job again sends the rows that are new or changed"
                   + (", and writes the results" if stopped else ""))
                + (f": {command}" if command else ""))
    command = rerun.command(("--force",))
    return (f"  input {path} changed since {since} read it, and rows are keyed by position: "
            + (f"{stops}; then" if running else "running the job again is refused (exit 2) "
               "unless given --force —")
            + " if a row was inserted or removed, every row after it would be sent again: use "
            "another --output directory with an id column (--id-column); if rows were only "
            "added at its end or changed in place, --force sends them (the rows done keep "
            "their positions)" + (f": {command}" if command else ""))


def _raise_budget(meta: dict[str, Any], rerun: Rerun, spent: float, paid: int,
                  to_do: int, extra: tuple[str, ...] = (), *, untold: str = "") -> str:
    """What to do after a budget stop, ``spent`` (USD) spent on the job so far, ``paid`` rows
    answered, ``to_do`` rows left (the failed ones too, sent again by ``extra``'s
    ``--retry-failed``): the command that finishes it, its ``--max-cost`` raised to the spend
    plus what the rows left cost at the job's cost a row so far, with room for the requests in
    flight, which the run holds at their most (what they were held at when it stopped, else a
    tenth more), rounded up; where no row has a cost to tell that, the estimate's command,
    which does, as it does where ``untold`` says why the rows left are not known here."""
    budget = budget_to_raise(meta)
    if untold or not (paid and spent > 0 and math.isfinite(spent)):
        return (f"raise {budget}, which the job's cost so far counts against, above what the "
                f"rows left cost ({untold or 'no row has a cost yet to tell it'}): "
                f"{rerun.command(extra, verb='estimate')} tells it")
    per_row = spent / paid
    left = to_do * per_row
    last = meta.get("last_run")
    held = _finite(last.get("held_usd")) if isinstance(last, dict) else None
    if held is not None and held > 0:
        room = f"plus {format_usd(held)} for the requests in flight (held at their most)"
    else:
        held = (spent + left) / 10
        room = "and a tenth more for the requests in flight"
    raised = round_up(spent + left + held)
    return (f"this command raises {budget} to {_option_args({'max_cost_usd': raised})[-1]}, "
            f"which the job's cost so far counts against: the {format_usd(spent)} spent plus "
            f"{format_usd(left)} for the rows left at the job's {format_usd(per_row)} a row so "
            f"far, {room}, rounded up (batchrunner estimate tells what the rows left cost "
            f"too): {rerun.command(extra, options={'max_cost_usd': raised})}")


def round_up(usd: float) -> float:
    """``usd`` (above 0) rounded up to two significant figures: 11.15 → 12, 0.01231 → 0.013."""
    exponent = math.floor(math.log10(usd)) - 1
    return float(Decimal(math.ceil(Decimal(repr(usd)).scaleb(-exponent))).scaleb(exponent))


# The rows cut at max_tokens, as --rerun-where picks them; with n > 1 (True) those of which any
# choice was (its finish_reason in ``choices``), not choice 0 alone.
_CUT_WHERE = {False: "finish_reason == 'length'",
              True: "finish_reason == 'length' or choices.str.contains('reason.:.length')"}


def cut_advice(meta: dict[str, Any], out_dir: Path, *, rows: int, every_choice: bool,
               tokens: int | None, usd: float | None, pending: int, spent: float,
               budget: float | None, batch_input: bool) -> tuple[str, str]:
    """How to answer again, with a larger max_tokens, the ``rows`` cut at it (of the job whose
    job.json is ``meta``; ``every_choice``: asked n > 1, or one cut in a choice but choice 0;
    ``tokens``, the most one of them used, ``usd`` what they cost, ``pending`` the rows not
    done yet, ``spent`` the job's spend so far, against its ``budget``): the command that sends
    them with twice the max_tokens the job gave them (they used all of it; how much more they
    need, no answer says), with why it is twice; or, where each row's limit is in its body or
    a column, or the job set none (the server's own cut them), what to raise, in words. The
    run's summary and ``status`` say it alike (``cut_warning``)."""
    they, their = ("it", "its") if rows == 1 else ("they", "their")
    them = "it" if rows == 1 else "them"
    if batch_input:
        return (f"raise max_completion_tokens (or max_tokens) in {their} "
                f"{'body' if rows == 1 else 'bodies'} and rerun: rows whose body "
                "changed are sent again"), ""
    request: dict[str, Any] = meta.get("request") or {}
    extra: dict[str, Any] = request.get("extra") or {}
    columns: dict[str, Any] = request.get("from_columns") or {}
    column = columns.get("max_completion_tokens") or columns.get("max_tokens")
    if isinstance(column, str):
        return (f"raise {their} values in column {shell_quote(column)} (each row's max_tokens) "
                "and rerun: rows whose values changed are sent again"), ""
    where = ("--rerun-where", _CUT_WHERE[every_choice])
    asked = next((v for v in (request.get("max_tokens"), extra.get("max_completion_tokens"),
                              extra.get("max_tokens")) if type(v) is int and v > 0), None)
    if asked is None:  # how far the server's own limit let them go, the results say
        flags = " ".join(shell_quote(a) for a in ("--force", *where))
        return (f"rerun the job with a --max-tokens above the completion_tokens {they} used "
                f"(no max_tokens was asked: the server's own limit cut {them}), and "
                f"{flags}"), ""
    # Under the name the job gives it: --max-tokens beside --max-completion-tokens is refused,
    # and a --max-tokens the last run was given (renamed over the file's max_completion_tokens)
    # is what to raise.
    limit = ("max_completion_tokens" if asked == extra.get("max_completion_tokens")
             and request.get("max_tokens") is None
             and option_given(meta, "max_tokens") is None else "max_tokens")
    why = (f"twice the job's {limit} of {asked:,}, the most {they} "
           f"{'was' if rows == 1 else 'were'} given")
    if tokens is not None and tokens > asked:
        # Cut by an earlier run's larger limit (the job's lowered since): twice the job's now
        # would send them with no more than they had, and pay for the same cut answers.
        why = (f"twice the {tokens:,} tokens some of {them} were cut at by an earlier "
               f"run (the job's {limit} is {asked:,} now)")
        asked = tokens
    larger = 2 * asked
    if pending:  # its command now would meet the stop (a budget) or the rows left first
        done = "is" if pending == 1 else "are"
        return (f"once the {count_rows(pending)} not done yet {done} done, the run's summary "
                f"names the command, with {why}"), ""
    options: dict[str, Any] = {limit: larger}
    if budget is not None:
        # The budget counts the job's whole cost: kept as it was, the command stopped at it
        # after a few rows, or at once.
        if usd is None or not math.isfinite(spent) or not math.isfinite(usd):
            why += (f"; the budget counts the job's {format_usd(spent)} spent so far: raise "
                    f"--max-cost (max_cost_usd) above it by what the {count_rows(rows)} "
                    "cost again")
        elif (need := spent + 2.2 * usd) > 0 and (raised := round_up(need)) > budget:
            options["max_cost_usd"] = raised
            why += (f"; and --max-cost raised to {format_usd(raised)}: the budget counts the "
                    f"job's {format_usd(spent)} spent so far, plus twice the "
                    f"{format_usd(usd)} {they} cost for answers up to twice as long, and "
                    "a tenth more, rounded up")
    rerun = Rerun(meta, out_dir)
    command = rerun.command(("--force", *where), options=options)
    # The job's later runs asking for less would stop at the change of its request settings
    # (a crontab's line exits 2, its new rows unsent): said, with where to raise it.
    if command and rerun.job_file is not None and option_given(meta, limit) is None:
        why += (f"; and set {limit} = {larger} in {shell_quote(rerun.job_file)} for the job's "
                "later runs, which stop at a change of its request settings otherwise")
    elif command:
        why += (f"; and give the job's later runs {option_name(limit)} {larger}, which stop "
                "at a change of its request settings otherwise")
    if not command:  # a job.json from before the options were kept
        args = [a for name, value in options.items() for a in (option_name(name), str(value))]
        flags = " ".join(shell_quote(a) for a in (*args, "--force", *where))
        return f"rerun the job with {why}: {flags}", ""
    return why, command


def cut_warning(rows: int, choices: int, choice_cut: bool, advice: str, command: str) -> str:
    """The warning of the ``rows`` cut at max_tokens, with what ``cut_advice`` says to do
    (``advice``, and ``command``, where it names one); ``choices``, the n asked, and
    ``choice_cut``, one cut in a choice but choice 0: resent as a whole, not a choice alone."""
    them = "it" if rows == 1 else "them"
    whole, n = "", ""
    if choices > 1 or choice_cut:
        n = f"n = {choices} " if choices > 1 else ""
        whole = f"which asks for all {n}choices of {them} again, not only those cut"
    again = f"to answer {them} again with a larger one"
    if command:
        why = advice + (f"; all {n}choices of {them} are asked for again, not only "
                        "those cut" if whole else "")
        how = f"{again} ({why}), run: {command}"
    else:
        how = f"{again}, {advice}" + (f", {whole}" if whole else "")
    return f"{count_rows(rows)} cut at max_tokens (finish_reason=length): {how}"


def job_budget(meta: dict[str, Any], budget: float | None = None) -> float | None:
    """The job's budget (max_cost_usd): ``budget``, a run's; else the --max-cost its last run
    was given (job.json's ``meta``), else its job file's, if it still reads; else None."""
    if budget is not None:
        return budget
    given = option_given(meta, "max_cost_usd")
    if isinstance(given, int | float) and not isinstance(given, bool):
        return float(given)
    job_file = meta.get("job_file")
    if not isinstance(job_file, str) or not os.path.isfile(job_file):
        return None  # given by options alone ("command line"), or gone
    try:
        return load_job(job_file, {}).limits.max_cost_usd
    except (UsageError, OSError, ValueError):
        return None


def budget_to_raise(meta: dict[str, Any]) -> str:
    """The budget a budget stop's rerun must raise: the command's ``--max-cost`` where the
    last run was given one (it overrides the job file's), else ``max_cost_usd``."""
    given = option_given(meta, "max_cost_usd")
    return ("max_cost_usd (--max-cost)" if given is None else
            f"the command's --max-cost {_option_args({'max_cost_usd': given})[-1]}")


def option_given(meta: dict[str, Any], name: str) -> Any:
    """The value of the option ``name`` (OVERRIDES') the job's last run was given, or None."""
    command = meta.get("command")
    options = command.get("options") if isinstance(command, dict) else None
    return options.get(name) if isinstance(options, dict) else None


def _changed_since(meta: dict[str, Any], job: JobConfig | None) -> list[str]:
    """The request settings ``job`` (the job's file as a run reads it: ``_job_as_run``) sets
    otherwise than job.json says the rows done were sent with (a model renamed in it since
    last night), as a run's refusal names them; none where that cannot be told (a job given by
    options alone, the file gone or broken, an OpenAI batch file's)."""
    before = meta.get("request")
    if job is None or not isinstance(before, dict) or before.get("openai_batch"):
        return []
    try:
        settings = job.request.settings()
        if settings_fingerprint(settings) == meta.get("request_fingerprint"):
            return []  # as a run finds them (job.json's may have a key [redacted] in them)
        now = json.loads(json.dumps(settings, default=str))  # as job.json holds them
    except (UsageError, OSError, ValueError, TypeError):
        return []
    return settings_changed(before, now)


def _job_as_run(meta: dict[str, Any], *, own: bool = False) -> JobConfig | None:
    """The job's file, with the options its last run was given, as a run of them reads it
    now, its options' relative paths read from the directory it was started in (a
    crontab's); None where that cannot be told (a job given by options alone, the file gone
    or broken, that directory not recorded, an option held back). ``own``: with those options
    but the request settings' (a one-off --model), as the job file alone sets them."""
    job_file, command = meta.get("job_file"), meta.get("command")
    if not isinstance(job_file, str) or job_file == "command line":
        return None
    options = command.get("options") if isinstance(command, dict) else None
    options = {k: v for k, v in options.items() if k in OVERRIDES} if isinstance(
        options, dict) else {}
    if own:
        options = {k: v for k, v in options.items() if k not in _request_options(options)}
    cwd = command.get("cwd") if isinstance(command, dict) else None
    for name in _PATH_OPTIONS:  # read relative to the directory the run was started in
        value = options.get(name)
        if isinstance(value, str) and value and not value.startswith("~") and not (
                os.path.isabs(value)):
            if not isinstance(cwd, str):
                return None  # that directory not known (an older batchrunner's job.json)
            options[name] = os.path.join(cwd, value)
    if any(v == KEY_HELD_BACK for v in options.values()):
        return None
    try:
        return load_job(job_file, options)
    except (UsageError, OSError, ValueError, TypeError):
        return None


# The options whose value is a path, which a run reads relative to the current directory.
_PATH_OPTIONS = ("input", "output", "schema_file")
RETRY = ("--retry-failed",)  # status's commands that send the failed rows again add it
# What job.json keeps of an option whose value holds the API key (a URL's path, say).
KEY_HELD_BACK = "<not kept: it holds the API key>"
# What status says for a job with such an option, in place of a command that would not resume it
# ("run the job file F again (from D) with the options it was given" for a job file's).
_AGAIN = "run the job "


def resume_advice(rerun: str) -> str:
    """What to do to resume a job whose ``rerun_command`` is ``rerun``: "run the job again to
    resume: CMD" (without the command where none is known), or what ``rerun`` says when an
    option it needs was held back."""
    if rerun.startswith(_AGAIN):
        return rerun
    return "run the job again to resume" + (f": {rerun}" if rerun else "")


def rerun_command(meta: dict[str, Any], out_dir: Path, *, extra: tuple[str, ...] = ()) -> str:
    """The command that runs the job on into ``out_dir`` (``Rerun``'s), with ``extra``
    arguments added (``--retry-failed``); "" where none is known."""
    return Rerun(meta, out_dir).command(extra)


class Rerun:
    """The command that runs the job on into ``out_dir``: its job file with the options the
    last run was given (job.json's ``command``), or those options alone for a job given by
    options (none known, before job.json kept them: ""); with ``--output`` unless the job file
    writes there itself (a run given --output, a nightly out/$(date +%F): the file's own
    directory holds none of its rows, and every row would be sent, and paid for, again). From
    the directory the run was started in, where that is not this one: its relative paths, and
    its .env, are that directory's. An option held back (its value holds the API key) is
    named instead: a command without it would not resume the job. Built once (the job file
    read once), then shown as each line needs it (``command``). The program is named as
    ``program_words`` names it for the job: by the absolute path its last run was started by
    where that run's PATH did not find it as ``batchrunner`` (cron's)."""

    def __init__(self, meta: dict[str, Any], out_dir: Path) -> None:
        self.out_dir = out_dir
        self.program = program_words(meta)
        job_file = meta.get("job_file")
        self.job_file = (job_file if isinstance(job_file, str) and job_file != "command line"
                         else None)
        command = meta.get("command")
        if not isinstance(command, dict):
            command = {}
        cwd = command.get("cwd")
        self.cwd = cwd if isinstance(cwd, str) else None
        options = command.get("options")
        self.given: dict[str, Any] = options if isinstance(options, dict) else {}
        self.held = [option_name(k) for k, v in self.given.items() if v == KEY_HELD_BACK]
        self.meta = meta
        # Given --force: the request settings changed since the rows done were answered, and
        # the command would be refused without it (status says so beside it).
        self.force = False

    @cached_property
    def job(self) -> JobConfig | None:
        """Its job file as a run of it reads it now (``_job_as_run``; read once, when first
        needed), or None."""
        return _job_as_run(self.meta)

    @cached_property
    def options(self) -> dict[str, Any]:
        """The options it is given: the last run's, with ``--output`` where the job file
        does not write to the output directory itself (read once, when first needed: the
        file as the run read it, whose directory no option but --output sets)."""
        if self.job_file is None or "output" in self.given:
            return self.given
        own_job = self.job
        if own_job is None:
            try:
                own_job = load_job(self.job_file, {})
            except (UsageError, OSError):  # moved, changed, or naming no directory
                own_job = None
        if own_job is not None and own_job.output.dir.resolve() == self.out_dir.resolve():
            return self.given
        return {**self.given, "output": str(self.out_dir.resolve())}

    def command(self, extra: tuple[str, ...] = (), *, verb: str = "run",
                options: dict[str, Any] | None = None) -> str:
        """The command, ``batchrunner VERB`` (``run``; ``estimate``; the program named as
        ``program_words`` names it), with ``extra`` arguments added and ``options``
        (OVERRIDES' names) set in place of the last run's."""
        changed = options or {}
        if self.force and "--force" not in extra:
            extra = (*extra, "--force")
        if self.held:
            # No command to show, but its job file and directory, and what to add to its
            # options (given after them, an option's value replaces theirs).
            added = [shell_quote(a) for a in (*extra, *_option_args(changed))]
            what = "again" if self.job_file is None else (
                f"file {shell_quote(self.job_file)} again" + (
                    f" (from {shell_quote(self.cwd)})" if self.cwd is not None and not _here(
                        self.cwd) else ""))
            held = self.held
            return (f"{_AGAIN}{what} with the options it was given"
                    f"{' and ' + ' '.join(added) if added else ''} "
                    f"({' and '.join(held)} {'is' if len(held) == 1 else 'are'} not kept: "
                    f"{'its value holds' if len(held) == 1 else 'their values hold'} the API "
                    "key)")
        if self.job_file is None and not self.given:
            return ""
        args = [*self.program, verb, *(() if self.job_file is None else (self.job_file,))]
        args += _option_args({**self.options, **changed})
        args += extra
        shown = " ".join(shell_quote(a) for a in args)
        return shown if self.cwd is None or _here(self.cwd) else (
            f"cd {shell_quote(self.cwd)} && {shown}")


def _here(cwd: str) -> bool:
    """Whether ``cwd`` is the current directory."""
    return os.path.realpath(cwd) == os.path.realpath(os.getcwd())


def _option_args(options: dict[str, Any]) -> list[str]:
    """The command-line arguments of ``options`` (OVERRIDES' names → the values the CLI read),
    which parse back to them: a value that starts with "-" joined to its option by "="."""
    args: list[str] = []

    def add(flag: str, value: Any) -> None:
        if isinstance(value, float):
            value = str(int(value)) if value.is_integer() else repr(value)
        text = str(value)
        args.extend([f"{flag}={text}"] if text.startswith("-") else [flag, text])

    for name, value in options.items():
        if name not in OVERRIDES or value is None or value is False:
            continue  # a newer version's, or not set
        flag = option_name(name)
        if value is True:  # --simulator, --stream
            args.append(flag)
        elif isinstance(value, list):
            for one in value:
                add(flag, one)
        elif isinstance(value, dict):  # --from-column FIELD=COL
            for field, column in value.items():
                add(flag, f"{field}={column}")
        else:
            add(flag, value)
    return args


# Less free than this under the output directory: a run stopped by the full disk, which could
# not record its end in job.json either (too little free at its start for its reserve).
FULL_DISK_BYTES = 1 << 20


def free_bytes(directory: Path) -> int | None:
    """What the user may still write on the disk holding ``directory`` (None: not known, as
    on Windows)."""
    try:
        disk = os.statvfs(directory)
    except (OSError, AttributeError):
        return None
    return disk.f_bavail * disk.f_frsize


def _read_only(directory: Path) -> bool:
    """Whether the file system holding ``directory`` is mounted read-only."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


_FALSE = scalar(False, pa.bool_())


class _Tally:
    """What ``status`` shows of the journal's latest records, added a table of them at a
    time, as the reports count them (``OutcomeStats``): the costs summed exactly
    (``UsdSum``), the tokens a row's total (else its prompt and completion tokens); with
    ``times``, their ``finished_at`` too (the pace of a run in progress). A row whose latest
    record is ``retrying`` is a row to do: counted neither ok nor failed, its billed attempts'
    cost among the earlier attempts'. With ``choices`` (the n the job asked) above 1, or rows
    that asked their own (``choices_asked``), the ok rows answered with fewer choices than
    they asked are counted (from ``choices``, which the tables then hold), and the failed rows
    answered with choices, with their cost (what ``--retry-failed`` pays about again)."""

    COLUMNS = ("error_type", "cost_usd", "earlier_cost_usd", "total_tokens", "prompt_tokens",
               "completion_tokens", "search_units", "search_requests", "cached_tokens",
               "cache_write_tokens", "unreported_usd", "choices_asked", "finish_reason")

    def __init__(self, *, times: bool, choices: int = 1, since: float | None = None) -> None:
        self.choices = choices
        self.since = since
        self.failed_since = 0  # failed rows whose failure finished at ``since`` or later
        self.fewer_choices = 0  # ok rows whose choices hold fewer than ``choices``
        self.failed_choices = 0  # failed rows answered with choices (failed_with_choices)
        self.failed_choices_usd = UsdSum()  # what their answers cost
        self.paused = 0  # rows whose turn Claude paused (finish_reason pause_turn), as reported
        self.cut = CutRows(choices=choices)  # rows cut at max_tokens, as reported
        self.ok = self.failed = self.unpriced = self.unpriced_search = self.tokens = 0
        self.unpriced_requests = 0  # of search billed per request (search_requests)
        self.cached = self.written = 0  # prompt tokens read from the cache and written to it
        self.cost = UsdSum()
        self.searched = False  # a search count in a record (SearchSum reads them then)
        self.earlier = UsdSum()
        self.unreported = UsdSum()  # estimates of tries billed, maybe, with no usage reported
        self.to_do_earlier = UsdSum()  # earlier_cost_usd of rows whose latest is ``retrying``
        self.failed_by_type: Counter[str] = Counter()
        self.finished_at: list[npt.NDArray[np.float64]] | None = [] if times else None

    def add(self, part: pa.Table) -> None:
        failed = 0
        for entry in pc.value_counts(part["status"]).to_pylist():
            if entry["values"] == "ok":
                self.ok += entry["counts"]
            elif entry["values"] == "failed":
                failed = entry["counts"]
            elif entry["values"] == RETRYING:
                self.to_do_earlier.add(pc.filter(part["earlier_cost_usd"],
                                                 is_value(part["status"], RETRYING)))
        if failed:
            self.failed += failed
            if self.since is not None:
                when = pc.filter(part["finished_at"], is_value(part["status"], "failed"))
                self.failed_since += int(np.count_nonzero(to_numpy(when, fill=0.0)
                                                          >= self.since))
            errors = pc.filter(part["error_type"], is_value(part["status"], "failed"))
            for entry in pc.value_counts(errors).to_pylist():
                # A row with none (a journal another tool wrote): "(none)", as the reports say.
                etype = entry["values"]
                self.failed_by_type[NO_VALUE if etype is None else etype] += entry["counts"]
        cost = part["cost_usd"]
        self.cost.add(cost)
        if not self.searched:
            n = len(part)
            self.searched = (part["search_units"].null_count < n
                             or part["search_requests"].null_count < n)
        self.earlier.add(part["earlier_cost_usd"])
        self.unreported.add(part["unreported_usd"])
        # Paid for: ok, or a failed row whose reply reported usage (billed).
        paid = pc.or_(pc.fill_null(is_value(part["status"], "ok"), scalar(False, pa.bool_())),
                      pc.is_valid(part["prompt_tokens"]))
        self.unpriced += pc.filter(cost, paid).null_count
        searched = pc.fill_null(pc.greater(part["search_units"], scalar(0, pa.int64())),
                                scalar(False, pa.bool_()))
        self.unpriced_search += pc.filter(cost, pc.and_(paid, searched)).null_count
        asked = pc.fill_null(pc.greater(part["search_requests"], scalar(0, pa.int64())),
                             scalar(False, pa.bool_()))
        self.unpriced_requests += pc.filter(cost, pc.and_(paid, asked)).null_count
        asked = part["choices_asked"]
        if asks_choices(self.choices, asked):  # as the reports count them (OutcomeStats)
            ok = pc.fill_null(is_value(part["status"], "ok"), _FALSE)
            self.fewer_choices += count_fewer_choices(part["choices"], ok, self.choices, asked)
            answered = failed_with_choices(part["choices"], part["status"])
            if k := pc.sum(answered).as_py():
                self.failed_choices += k
                self.failed_choices_usd.add(pc.filter(cost, answered))
        self.paused += pc.sum(is_value(part["finish_reason"], "pause_turn")).as_py() or 0
        retrying = pc.fill_null(is_value(part["status"], RETRYING), _FALSE)
        outcomes = pc.filter(part, pc.invert(retrying)) if pc.any(retrying).as_py() else part
        self.cut.add(outcomes, pc.fill_null(is_value(outcomes["status"], "failed"), _FALSE))
        total = pc.coalesce(part["total_tokens"],
                            pc.add(part["prompt_tokens"], part["completion_tokens"]))
        self.tokens += pc.sum(total).as_py() or 0
        self.cached += pc.sum(part["cached_tokens"]).as_py() or 0
        self.written += pc.sum(part["cache_write_tokens"]).as_py() or 0
        if self.finished_at is not None:  # of rows finished: not of ``retrying`` records
            finished = pc.filter(part["finished_at"], pc.invert(is_value(part["status"],
                                                                         RETRYING)))
            self.finished_at.append(to_numpy(finished, fill=0.0))


# How far back `status` looks for the pace of a run in progress: the later half of the run so
# far (since the endpoint answered again, after an outage), this long at most. The first half
# holds the start's burst (a server's bucket of a minute's worth, drained in seconds), then the
# storm of 429s that taught the pace, neither of which the run can hold: counted, a run that
# finished 600 rows in its first 2 s, then 10 a second, read 1,180 rows a minute at 60 s.
PACE_WINDOW_S = 120.0
# No row finished for this long (and three times the window's mean gap between rows): `status`
# says so, not when the run would end.
STALLED_S = 30.0


def _outputs_before(out_dir: Path, last_run: dict[str, Any]) -> str | None:
    """When the reports in ``out_dir`` were written (UTC, to the second), where that was
    before ``last_run`` started: an earlier run's (or ``report``'s), not the last run's."""
    started = _epoch(last_run)
    try:
        written = (out_dir / "cost_report.json").stat().st_mtime
    except OSError:
        return None
    if started is None or written >= started:
        return None
    return utc_timestamp(written)


def _finite(value: Any) -> float | None:
    """``value`` read from job.json where it is a finite number (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _epoch(last_run: Any) -> float | None:
    """When ``last_run`` started, as a Unix time (None if job.json does not say): its
    ``started_s``, to the millisecond, else (written by an older batchrunner) its
    ``started_at``, to the second."""
    if not isinstance(last_run, dict):
        return None
    if (exact := _finite(last_run.get("started_s"))) is not None:
        return exact
    started = last_run.get("started_at")
    if not isinstance(started, str):
        return None
    try:
        at = datetime.fromisoformat(started)
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _paused(paused: Any, now: float) -> str:
    """The line for job.json's ``last_run.paused`` (the runner's ``_record_pause``): new
    requests held, for how much longer and by what; "" for none, or one over."""
    if not isinstance(paused, dict):
        return ""
    until, by = _finite(paused.get("until_s")), paused.get("by")
    if until is None or until <= now:
        return ""
    what = by if isinstance(by, str) and by else "a 429's retry-after"
    return (f"  new requests held {duration(round(until - now))} more by {what}, as the "
            "server asked: the requests in flight go on")


def _outage(outage: Any, now: float, to_do: int = 0) -> str:
    """What job.json says of the outage a run in progress waits out (its last_run's
    ``outage``, there from when the run starts to show one until the endpoint answers again):
    how long the endpoint has not answered, what its gateway answers meanwhile (or that its
    connections are taken and closed unanswered: ``cut``), the ``to_do`` rows that wait for
    it, and how long the run waits for it; "" if none."""
    if not isinstance(outage, dict):
        return ""
    since, by, wait_s = _finite(outage.get("since_s")), outage.get("by"), outage.get("wait_s")
    if since is None:
        return ""
    line = (f"  the endpoint has not answered for {max(0.0, now - since):.0f} s "
            + (f"(only its gateway, with {by})" if isinstance(by, str) and by
               else "(its connections taken, then closed unanswered)"
               if outage.get("cut") is True else "(no connection to it)"))
    waits = (duration(wait_s) if isinstance(wait_s, int | float) and not isinstance(wait_s, bool)
             and wait_s > 0 else "")
    if to_do:
        line += f": the {count_rows(to_do)} to do wait for it" + (
            f", up to {waits}, then the run stops" if waits else "")
    elif waits:
        line += f"; the run waits up to {waits} for it, then stops"
    return line


def _pace(finished_at: npt.NDArray[np.float64], to_do: int, now: float,
          started: float | None, *, back: bool = False) -> str:
    """How fast a run in progress is finishing rows, over the later half of the time since it
    started (``back``: since its endpoint answered again after an outage), the last
    ``PACE_WINDOW_S`` seconds at most, from the journal (up to a second behind), and when it
    would be done at that pace."""
    # A start in the future (a clock set back), or none known: the whole window.
    since = 2 * PACE_WINDOW_S if started is None or started > now else now - started
    window = min(PACE_WINDOW_S, since / 2)
    if window < 5.0:
        return ("  pace: not known yet (the endpoint answered again seconds ago)" if back
                else "  pace: not known yet (the run started seconds ago)")
    recent = int(np.count_nonzero(finished_at >= now - window))
    if not recent:
        return f"  no row finished in the last {window:.0f} s"
    per_min = recent * 60.0 / window
    pace = f"{per_min:,.0f}" if per_min >= 10 else f"{per_min:.1f}"
    line = f"  pace: {pace} rows/min over the last {window:.0f} s"
    idle = now - float(finished_at.max())
    if idle >= max(STALLED_S, 3 * window / recent):  # far longer than rows have taken apart
        # The window's rows came before it stopped finishing them: no time left to tell.
        return f"{line}, but no row has finished for {idle:.0f} s"
    if to_do:
        left_min = to_do / per_min
        left = ("under a minute" if left_min < 1 else f"about {left_min:.0f} min"
                if left_min < 120 else f"about {left_min / 60:.1f} h")
        line += f"; the {count_rows(to_do)} to do would take {left}"
    return line
