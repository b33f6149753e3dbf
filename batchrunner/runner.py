"""Run a job: the only module that owns task groups; it wires the others together.

N workers share one queue: rows whose retry backoff is over first, then the next input row,
read and rendered on demand. They send through the limiter and the client, and record each
outcome in the journal's buffer, which a flusher task writes out as a segment every second::

    input rows ─┐
                ├─► workers ×N ──► limiter ──► client ──► journal buffer ──(1 s)──► segment
    retries ────┘      ▲                           │
                       └──── backoff (per row) ◄───┘

At the end the journal is compacted and the results file and cost report are rebuilt from it.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import math
import os
import random
import re
import signal
import sys
import time
import tokenize
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, closing, contextmanager, suppress
from dataclasses import dataclass, field
from io import StringIO
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa

from batchrunner import compute as pc
from batchrunner import io
from batchrunner import limiter as limiter_module
from batchrunner.arrow import (
    int64_array,
    prompt_text,
    python_rows,
    python_values,
    scalar,
    string_array,
    to_numpy,
    unknown_zone,
)
from batchrunner.client import ChatClient, ChatResult, holds_secret, without_secret
from batchrunner.config import (
    DEFAULT_API_KEY_ENV,
    KEY_VARIABLE_ENDINGS,
    LONG_SECRET,
    OUTPUT_FORMATS,
    OVERRIDES,
    URL_VARIABLE_ENDINGS,
    JobConfig,
    RequestConfig,
    cache_dir,
    check_api_key,
    check_base_url,
    environment,
    is_loopback,
    option_name,
    origin,
    proxy_for,
    set_instead,
    set_instead_hint,
    settings_changed,
    settings_fingerprint,
    shown_url,
    unread_dotenv_line,
)
from batchrunner.errors import (
    AccountError,
    AllFailing,
    AuthError,
    BatchrunnerError,
    BudgetExceeded,
    ConfigError,
    EndpointChanged,
    InputError,
    Interrupted,
    JournalError,
    OutputError,
    QuotaError,
    RequestError,
    SettingRefused,
    StopJob,
    Unreachable,
    UsageError,
    leaf,
)
from batchrunner.journal import (
    Fresh,
    Journal,
    JournalWriter,
    Latest,
    new_run_id,
)
from batchrunner.limiter import Limiter, reported_limits
from batchrunner.pricing import (
    SEARCH_FIELDS,
    PriceBook,
    audio_asked,
    live_search_asked,
    parse_price_table,
    same_model,
    search_requested,
    tier_asked,
)
from batchrunner.pricing import preload as preload_prices
from batchrunner.progress import (
    Counts,
    Progress,
    duration,
    job_limits,
    leave_terminal,
    logged,
    make_progress,
    printable,
    program,
    program_words,
    say,
    shell_quote,
)
from batchrunner.records import JOURNAL_ONLY, OUTCOME_COLUMNS, RETRYING, Outcome
from batchrunner.report import (
    CHOICE_CUT,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_MD,
    changed_warning,
    count_rows,
    fewer_choices_warning,
    format_budget,
    format_span,
    format_usd,
    paused_warning,
    resend_choices_note,
    retry_advice,
    utc_timestamp,
)
from batchrunner.results import (
    InputOrder,
    key_strings,
    result_name,
    sorted_ids,
)
from batchrunner.results import rebuild_outputs as _rebuild_outputs
from batchrunner.retry import RetryPolicy, backoff
from batchrunner.status import (
    FULL_DISK_BYTES,
    KEY_HELD_BACK,
    cut_advice,
    cut_warning,
    free_bytes,
    job_budget,
    lock_holder,
    plus_earlier,
    read_meta,
    rerun_command,
    resume_advice,
)
from batchrunner.structured import (
    EMPTY_REPLY,
    StructuredOutput,
    strict_warnings,
    structured_output,
    unfenced,
)
from batchrunner.template import (
    RequestBuilder,
    ask_for_usage,
    body_prompt_tokens,
    body_warnings,
    column_list,
    json_mode_warnings,
    request_warnings,
    system_warnings,
)

__all__ = ["EXIT_FAILED_ROWS", "EXIT_OK", "EXIT_STOPPED", "EXIT_USAGE", "RunOptions",
           "RunSummary", "prepare", "rebuild_outputs", "run_job"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILED_ROWS = 3
EXIT_STOPPED = 4

FLUSH_EVERY_S = 1.0
TUNE_EVERY_S = 0.5  # the concurrency is sized again this often
FLUSH_EVERY_ROWS = 2000
# A pause of new requests this long or longer (a 429's retry-after) is told to status
# (job.json's last_run.paused): one that looks stalled is waiting, and says what for.
PAUSE_TOLD_S = 20.0
MAX_RATE_LIMIT_RETRIES = 30
# 429s in a row (no answer between) whose retry-after asks for a longer wait than the job
# waits (RetryPolicy.max_retry_after_s): a daily limit, say. The job stops; one such 429 alone
# (a server's fluke) only pauses it.
LONG_WAITS_TO_STOP = 2
# Nothing but 429s this long (or the job's outage wait, where longer), no other answer
# between: the key's limit or quota is used up for now (a gateway's daily quota that says
# "retry-after: 1"), and the job stops, resumable, rather than trying every row 30 times.
ONLY_429S_STOP_S = 300.0
MAX_ROW_WARNINGS = 5
DEFAULT_COMPLETION_ESTIMATE = 256
LEARN_OVER = 20  # the token estimates learn a reply's 1/LEARN_OVER once they have that many
DEFAULT_CONCURRENCY = 64  # in flight when no rate limit is known
INITIAL_CONCURRENCY = 32  # automatic sizing starts here, then follows Little's law
MAX_AUTO_CONCURRENCY = 512
# A structured reply that fails its check for being stopped short says so, not the model's fault.
_STOPPED_SHORT = {
    "length": "the reply was cut at max_tokens (finish_reason=length)",
    "content_filter": "the reply was stopped by the content filter (finish_reason=content_filter)",
    "pause_turn": "the turn was paused before its answer (finish_reason=pause_turn)",
}
MIN_CONTEXT_WINDOW = 4096  # no chat model has a smaller one
MAX_SUMMARY_EXAMPLES = 3  # error types whose message the run summary shows
# A run whose first rows sent all fail with one error type, none ok, stops after this many.
FAIL_FAST_ROWS = 20
MAX_MODELS_KEPT = 1000  # models answered, recorded in job.json for the next run
# Endpoints that answered, kept in the cache directory for jobs whose output directory is new
# (see _endpoints_path): the most recent this many.
ENDPOINTS_FILE = "endpoints.json"
ENDPOINTS_KEPT = 1000
# An endpoint not answered for this many days is no longer waited for (a URL retired), and
# the next write drops it.
ENDPOINTS_EXPIRE_DAYS = 30
# Writers of endpoints.json take turns (a flock on endpoints.json.lock), each adding to what the
# file holds then: a writer that cannot have the lock in this many tries, 10 ms apart, writes
# nothing (it is only a cache).
ENDPOINTS_LOCK_TRIES = 200
# Sets of columns rows' hashes were made of (earlier request settings'), kept in job.json.
HASHED_COLUMNS_KEPT = 8
# Rows of models the key was refused for (403) held, before any model answered, until one does
# (see _Run.held): past this many the job stops as for a key refused outright.
HOLD_MAX_ROWS = 10_000
# Rows a scout goes past in the input (_Run._scout), kept in memory till the job goes on: this
# many at most, and prompts of this many estimated tokens (some 16 MB of text) in all.
PASS_MAX_ROWS = HOLD_MAX_ROWS
PASS_MAX_TOKENS = 4_000_000
# A split job's rows whose model's own permit is not there yet wait in a queue of the model's
# (_Run.parked), this many at most, rather than in a worker the other models' rows could use.
PARKED_MAX_ROWS = 1_000
# One idle worker (_Run.keeper) sleeps until the soonest parked row's permit is due, the others
# until there is work; this is the least it sleeps, so a permit said to be due that is not there
# yet (a rounding) never makes it loop.
PARKED_RECHECK_S = 0.001
# A job split by its models' reported limits: a 429 within this long of another model's is one
# the models drew together, each paced under its own limit (a limit they share: a gateway that
# says a limit per model and enforces the key's); a storm of such 429s teaches the job's limiter
# a pace for all (_sample_pace).
TOGETHER_S = 1.0
# A row whose request timed out is given timeout_s × 1.5 on its next attempt, × 2.25 on the one
# after, and so on up to × 3: a long answer (a thinking model's) gets the time it needs, where
# the same timeout would cut it off, and bill it, on every attempt.
TIMEOUT_GROWTH = 1.5
MAX_TIMEOUT_X = 3.0
# While an outage is waited out, the rows refused in it (or turned away by a gateway) wait
# for their next try no longer, on average, than this many seconds times their number: their
# tries together come about this often whatever their count, not 30 s apart each (a job at
# a low concurrency found the server back only that long after), nor faster than one row's
# would (many rows: their own backoff). The first answer after it wakes them all (_answered).
OUTAGE_RETRY_S = 1.0
# A gateway's answers for a server behind it that is away: ridden out like a refused connection.
GATEWAY_STATUSES = frozenset({502, 503, 504})
# While a gateway's 502/503/504 holds the job (_shut_gate), probes are sent as far apart as the
# answers ask (retry-after), and this far at least when one asks for nothing: under a second,
# so the progress, which shows a pause of a second or more as a server's asked-for wait, does
# not show it as one (it shows the outage).
PROBE_EVERY_S = 0.8
# Server errors (HTTP 500 and the like, not a gateway's for a server away) answered in a row,
# with no row ok since: the server fails whatever it is sent (an engine that died, a proxy
# whose upstream is gone), and new rows start only as the rows started finish (_server_error).
# Fewer in a row are rows the server fails for themselves, or a random few.
SERVER_ERRORS_IN_A_ROW = 8
# A 400 naming the model's context length (vLLM's --max-model-len, OpenAI's): a max_tokens
# not under it leaves no room for any prompt (_Run._under_context).
_CONTEXT_LENGTH = re.compile(r"maximum context length is (\d[\d,]*) tokens")
# A 400 for a prompt over the model's context (OpenAI's, vLLM's, Anthropic's, Gemini's words,
# or the code), or one a content filter refused (Azure's "content management policy", OpenAI's
# "safety system"): the row's own failure, not the job's setting, so not one of the first rows
# failing alike that stop the job (an input sorted by length, its longest rows first).
_ROWS_OWN_400 = re.compile(
    r"context_length_exceeded|maximum context length|prompt is too long|input is too long|"
    r"longer than the maximum model length|exceeds? the maximum number of tokens|"
    r"exceed context limit|content management policy|content[_ ]polic|content[_ ]filter|"
    r"safety system", re.IGNORECASE)
# The failures of a try that reached the server and got no whole answer from it, which may
# have been billed although no usage says so: a provider goes on with a request whose client
# has gone (a timeout, a connection broken once the request was sent), and one whose body was
# cut, or that gave up on its answer, had generated it. Under a budget each counts at its
# estimate (``_unbilled_try``), as does any try whose answer had begun (``answer_begun``). A
# refused connection, a proxy's refusal and an error answer (a status, a 429, an error body)
# were not billed, and count nothing.
MAYBE_BILLED = frozenset({"timeout", "connection_reset", "truncated_body", "stream_cut",
                          "answer_aborted"})
# A request cut by its connection breaking: a server that went down (crashed, restarted) cuts
# every request it holds so, the one that brought it down and those beside it alike.
CUT_KINDS = frozenset({"connection_reset", "truncated_body"})
# A row whose requests were cut in this many of the server's falls (``_Work.falls``), each of
# them cutting other rows' too, is sent only while no other such row is out: a row that brings
# the server down each time it is sent then falls alone, where the rows sent again beside it
# each time (their backoffs drawn alike) used up their tries with it. A cut of one row alone
# (a flaky network's) is no fall of the server.
ALONE_AFTER_FALLS = 2
# A row sent alone and cut in this many of the server's falls fails then, its tries left or
# not: it is what brings the server down (each fall a model reloaded, on a GPU box). The tries
# the rows beside it spent in the falls it was cut in are given back (``_Falls.charged``).
ALONE_FALLS_TO_FAIL = 2


@dataclass(kw_only=True)
class RunOptions:
    retry_failed: bool = False
    rerun_where: str | None = None
    limit: int | None = None  # send at most this many rows (the first to do, in input order)
    force: bool = False
    progress: str = "auto"
    retry: RetryPolicy | None = None
    drain_s: float = 5.0
    handle_signals: bool = True
    # An endpoint that answered in this run and then refuses connections (a restart, a network
    # blip) is waited for this long before the job stops, its rows left to do; None: as long
    # as the job's [limits] outage_wait_s says.
    outage_s: float | None = None
    # ``estimate``: sends nothing, so a rerun's answers that would mix with the rows done (the
    # simulator's and a real endpoint's) are a warning that the run is refused, not a refusal.
    estimating: bool = False


@dataclass(kw_only=True)
class RunSummary:
    name: str
    rows: int = 0
    ok: int = 0
    failed: int = 0
    pending: int = 0
    # Rows whose text changed since they were sent, not sent again yet (counted in ok and
    # failed: their outcomes are the earlier text's).
    changed_left: int = 0
    changed_exact: bool = True  # False: at most changed_left (found by a run that then crashed)
    sent: int = 0
    length_cut: int = 0
    cut_failed: int = 0  # of them, rows failed (a structured reply cut short)
    filtered: int = 0  # rows stopped by the content filter (finish_reason content_filter)
    paused: int = 0  # rows whose turn Claude paused (finish_reason pause_turn): unfinished
    # Models whose cached prompt tokens the job priced at the input price (no cached_input)
    cached_at_input_price: list[str] = field(default_factory=list)
    # Models whose audio tokens were priced as text for want of an audio price (cost low)
    audio_at_text_price: list[str] = field(default_factory=list)
    fewer_choices: int = 0  # ok rows answered with fewer choices than the n asked
    choices_asked: int = 1  # the n the job asked
    # Failed rows answered with choices (n > 1), which --retry-failed asks all n again of, and
    # what their answers cost (None: not known)
    failed_choices: int = 0
    failed_choices_usd: float | None = None
    # A row was cut at max_tokens in a choice but choice 0 (rows of a column's n > 1, say)
    choice_cut: bool = False
    cut_usd: float | None = None  # what the rows cut cost (None: one of them has no cost)
    cut_tokens: int | None = None  # the most tokens one of them (n = 1) used
    # What to do about the rows cut at max_tokens (length_cut): what to change, or why the
    # command that sends them again with a larger one (cut_command) sets it so (_cut_advice).
    cut_advice: str = ""
    cut_command: str = ""
    batch_input: bool = False  # an OpenAI batch file: its rows' bodies set their max_tokens
    error_types: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)  # a message of each type
    cost_usd: float | None = 0.0
    earlier_cost_usd: float = 0.0  # earlier billed attempts of rows sent again, not in cost_usd
    billed_to_do: int = 0  # rows to do whose attempts were billed at a cost (``retrying``)
    billed_to_do_usd: float = 0.0  # what they cost: part of earlier_cost_usd
    # Rows with tries billed, maybe, with no usage reported, and those tries' estimated cost:
    # not in the costs above (what servers reported), counted by the budget.
    unreported_rows: int = 0
    unreported_usd: float = 0.0
    wall_s: float = 0.0
    results_path: Path | None = None
    report_paths: list[Path] = field(default_factory=list)
    stopped: str | None = None
    warnings: list[str] = field(default_factory=list)
    ran: bool = True  # False: the outputs were rebuilt (`report`), no run happened
    nothing_to_do: bool = False  # earlier runs had done every row: none was to be sent
    simulated: bool = False  # the answers came from the built-in simulator
    # Of ``sent``, the requests a real endpoint answered at a rehearsal's URL: billed, not kept
    real_unkept: int = 0
    not_connected: int = 0  # of ``sent``, the requests that found no connection
    # Of ``sent``, the requests cut with no answer while the endpoint answered nothing (a box
    # restarting), waited out as those refused are.
    cut_unanswered: int = 0
    # Of those, the ones whose rows the run stopped before sending again: the next run's.
    cut_left: int = 0
    # Of ``sent``, the requests of rows cut in ALONE_AFTER_FALLS of the server's falls, each
    # sent while no other such row's was out.
    sent_alone: int = 0
    rate_limited: int = 0  # of ``sent``, the requests answered 429 (rate limited)
    # Of ``sent``, the requests that got an error (a 5xx, a timeout...) and were tried again,
    # by error type, 429s apart.
    request_errors: dict[str, int] = field(default_factory=dict)
    cost_known_usd: float = 0.0  # cost_usd, or its known part when some rows have none
    budget_usd: float | None = None  # the job's max_cost_usd, if any
    # Rows paid for without a cost: ok with no price known or no usage reported, or failed
    # with usage reported (billed) and no price known.
    cost_unknown: int = 0
    unpriced: str = "see report"  # why they have none and what to set (``unpriced_causes``)
    cut_off: int = 0  # requests in flight when the run ended (a stop's drain ran out)
    limit: int | None = None  # --limit, when it held rows back
    limited: int = 0  # rows to do that --limit left for a later run
    # What this run's requests were billed, retries billed without an answer included, on a
    # rerun (cost_usd is the job's answers, earlier runs' included); None on a first run.
    run_cost_usd: float | None = None
    # A run stopped by a write that failed (a full disk): what is saved and what to do, each a
    # line of its own (``stopped_unwritten``).
    unwritten: list[str] = field(default_factory=list)
    # ``report`` after a stop the same command would meet again (a budget, rows failing
    # alike): what to do before rerunning, and whether the failed rows go with --retry-failed.
    first: str = ""
    retry_failed: bool = False

    @property
    def exit_code(self) -> int:
        # Rows left to do: a rerun goes on with them. Rows --limit left are what was asked.
        if self.stopped or ((self.pending or self.changed_left) and not self.limited):
            return EXIT_STOPPED
        return EXIT_FAILED_ROWS if self.failed else EXIT_OK


@dataclass(slots=True)
class _Work:
    key: str
    body: dict[str, Any]
    prompt_estimate: int
    completion_max: int  # max_tokens (0: not set, charge the running mean)
    # The model its body asks for (its "model" as text, "" if none): given by the caller, as
    # a __post_init__ working it out cost some 700 instructions a row more.
    model: str
    n: int = 1
    attempts: int = 0
    rate_limited: int = 0
    started: float = 0.0
    earlier_usd: float = 0.0  # what earlier billed attempts of the row cost (this run and before)
    # An earlier billed attempt of the row in this run had no cost (search with no price): the
    # row's cost is unknown, which earlier_usd cannot carry.
    earlier_unknown: bool = False
    # Its tries that may have been billed at a cost not known (``Outcome.unknown_tries``), and
    # what those with no usage reported may have cost, estimated (``Outcome.unreported_usd``).
    unknown_tries: int = 0
    unreported_usd: float = 0.0
    refused_at: float = 0.0  # when an attempt of the row first failed to connect
    refusals: int = 0  # its attempts that failed to connect
    last_refusal: float = 0.0  # when its latest attempt failed to connect
    lonely: int = 0  # its later refusals with a request sent since the one before answered
    # When its later tries turned away as the gateway's, nothing answered since the one
    # before, were sent (``_outage_tries``); None for none.
    turned_away: list[float] | None = None
    streak: int = 0  # its latest refusals: since a request sent after one was answered
    timeouts: int = 0  # its attempts that timed out: each gives the next one longer
    resent: bool = False  # sent again for its record (--retry-failed, ...), not changed text
    # Its latest request was cut unanswered in an outage (``cut_unanswered``), and the row has
    # not been sent again nor finished since: ``cut_left`` counts the rows so.
    cut: bool = False
    falls: _Falls | None = None  # its part in the server's falls, once it is cut in one
    checks: StructuredOutput | None = None  # what its reply must hold (structured output)
    held: bool = False  # in _Run.held: its model was refused before any model answered
    row_hash: int | None = None  # of the row's values (row_hasher), recorded with its outcome
    # The tokens its model's own permit was taken for, when let out of _Run.parked (split).
    permit: int | None = None
    parked: bool = False  # in _Run.parked, sent back there by ``attempt``


@dataclass(slots=True)
class _Falls:
    """A row's part in the server's falls (``_Run.fall``): the falls its requests were cut
    in; how long they had been out when the first of each fall was cut, in all (a request
    that brings the server down is cut at once); the falls in which a cut was a try of it
    (not waited out as a restart's); and the falls it was cut in while sent alone."""

    cut_in: list[int] = field(default_factory=list)
    out_till_cut: float = 0.0
    charged: list[int] = field(default_factory=list)
    alone: int = 0


# ----------------------------------------------------------------------------------------------
# Planning: everything that can be checked before a request is sent


@dataclass
class DoneRows:
    """The input positions whose rows are not sent this run (done, or failed and not retried)."""

    mask: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass(kw_only=True)
class Plan:
    job: JobConfig
    source: io.InputSource
    builder: RequestBuilder | None
    key_column: str | None
    total_rows: int
    done: DoneRows
    # The rows done before whose values changed since (sent again): their positions and
    # row_hash now. Compaction at the end of the run prefers their records made with these.
    fresh: Fresh | None = None
    # Of those, the rows no run has sent with their values now (positions, sorted): sent as
    # new rows are. The others a killed run sent again already: resent for their record.
    untried: npt.NDArray[np.int64] | None = None
    out_dir: Path
    job_meta: dict[str, Any]
    prices: PriceBook
    warnings: list[str]
    structured: StructuredOutput | None = None
    # Forced to send to the other kind of endpoint (the simulator or a real one) than the
    # rows done were answered by: job.json says "mixed" from this run's first answer on.
    mixes: bool = False
    # The rows done were answered by a real endpoint (job.json says so): answers from
    # batchrunner's simulator served on its own would mix with them (_Run._served_by_simulator).
    real_answers: bool = False
    # The rows done are batchrunner simulate's answers at this run's URL (a rehearsal's rerun):
    # only its answers are taken (ChatClient.expect_simulator).
    rehearsal: bool = False
    prior_cost: float = 0.0
    # The estimated cost of the input's rows' tries billed, maybe, with no usage reported
    # (``unreported_usd``), counted by the budget with ``prior_cost``; and that of each row
    # with one, by key, carried into the row's next record when it is sent again.
    prior_unreported: float = 0.0
    unreported: dict[str, float] | None = None
    prior_ok: int = 0  # rows done before this run, ok and failed (not sent again): the
    prior_failed: int = 0  # progress display counts the whole job's
    resent: int = 0  # rows with a recorded outcome sent again (retried, rerun, or changed)
    limited: int = 0  # rows to do that --limit holds back (in ``done``: not sent this run)
    # A --retry-failed or --rerun-where run: what it sends again (``_selection``), and since
    # when its rows sent again count as done by it (``_selection_since``).
    selection: dict[str, Any] | None = None
    selection_since: float | None = None
    # Rows asking for models of their own: the models asked for that earlier runs got answers
    # from (job.json's answered_models), to tell a key that lacks one model.
    answered_models: frozenset[str] = frozenset()
    order: InputOrder | None = None  # journal keys → input positions
    # The input's files as prepare found them (InputSource.stamp): the end of a run checks
    # that the rows it merges with the journal are still those it read.
    input_stamp: io.Stamp | None = None
    # The journal's newest finished_at as prepare read it: a run's records finish after it
    # (JournalWriter's not_before), whatever the clock did since.
    newest_at: float = -math.inf
    # What each input row has cost so far (NaN: nothing recorded), carried into the row's next
    # record when it is sent again; or only which rows have a record, when none sent has a cost.
    spent: npt.NDArray[np.float64] | npt.NDArray[np.bool_] | None = None
    # The rows to send whose only records are ``retrying`` ones (billed, then stopped before
    # their retry), when there are any: they have a cost, but no outcome is sent again.
    unfinished: npt.NDArray[np.bool_] | None = None
    # Batch input (or a job whose columns set them): the checks each distinct response_format
    # / tools / tool_choice of the rows' bodies asks for, or why they cannot be had (a few
    # entries, see _row_checks).
    row_checks: dict[bytes, tuple[StructuredOutput | None, str]] = field(default_factory=dict)
    # Batch input: the checks every row sent asked for, this run and before (``batch_key``:
    # their ``key``, b"" for none; None before the first row), unless they differ (``mixed``).
    # When all rows asked for the same ones, the results get their json_ columns.
    batch_key: bytes | None = None
    batch_checks: StructuredOutput | None = None
    batch_mixed: bool = False
    batch_unrecorded: bool = False  # they changed since job_meta last recorded them

    def row(self, key: str) -> str:
        """A row as messages name it: by its id, or (no id column) its number from 1, as the
        input's own errors count rows."""
        return f"row {key}" if self.key_column is not None else f"row {int(key) + 1:,}"


def _endpoint_id(url: str, model: str | None = None) -> str:
    """What job.json records of the endpoint that answered a run (``answered_endpoint``): a
    hash of its URL, which may hold a secret; with ``model``, of the URL and the model its
    answers came for (endpoints.json's, for a job writing to a fresh directory each night)."""
    text = url if model is None else f"{url}\n{model}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _command_kept(job: JobConfig) -> dict[str, Any]:
    """What job.json keeps of the command that ran the job, for ``status`` to name the one
    that resumes it: the options given (no option takes a key or a header; ``_without_key``
    holds back one that holds the key), the directory it ran in (its relative paths', and
    its .env's) and how the run names the program in the commands it prints
    (``program_words``: ``batchrunner``, or its absolute path where this PATH does not find
    it so, a crontab's, which ``status`` then names too)."""
    return {"cwd": str(Path.cwd()), "options": dict(job.options), "program": program_words()}


def _without_key(command: dict[str, Any], api_key: str | None) -> None:
    """Hold back in ``command`` (``_command_kept``) the options whose value holds ``api_key``
    (a long one's run of 16 characters or more too; a short one, a local server's stand-in, as
    a word of its own: ``holds_secret``), and the program's path if that does."""
    options = command.get("options")
    if api_key and isinstance(options, dict):
        for name, value in options.items():
            if _holds_key(value, api_key):
                options[name] = KEY_HELD_BACK
    kept = command.get("program")
    if api_key and isinstance(kept, list) and _holds_key(kept, api_key):
        del command["program"]  # a path with the key in it: status names the program anew


def _holds_key(value: Any, api_key: str) -> bool:
    """Whether an option's ``value`` (text, a number, or a list or table of them) holds
    ``api_key``, each text as it is (as JSON, a key with a quote or a backslash in it was
    escaped, not found, and kept)."""
    if isinstance(value, dict):
        return any(_holds_key(v, api_key) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_key(v, api_key) for v in value)
    return holds_secret(value if isinstance(value, str) else str(value), api_key)


def _settings_without_key(value: Any, api_key: str | None, *, headers: bool = False,
                          credential: bool = False) -> Any:
    """``value`` (job.json's request settings) with a long ``api_key`` written in it, in
    ``[request.extra]`` say (an ``Authorization`` header in ``extra_headers``, as the OpenAI
    SDK takes it, or a gateway's body field), or a run of 16 characters or more of it
    (``without_secret``), replaced by ``[redacted]``. A short one, a local server's stand-in
    ("x"), is a word of a prompt or a model's name: left. A header whose name says it carries
    credentials (``credential``: ``Authorization``, ``x-api-key``, in an ``extra_headers``
    table) has them redacted too, whatever key they are (another gateway's), past their scheme
    ("Bearer "), where LONG_SECRET characters or more."""
    if isinstance(value, dict):
        return {k: _settings_without_key(
            v, api_key, headers=k in _HEADER_TABLES,
            credential=headers and isinstance(k, str) and bool(_CREDENTIAL_HEADER.search(k)))
            for k, v in value.items()}
    if isinstance(value, list):
        return [_settings_without_key(v, api_key) for v in value]
    if isinstance(value, str):
        if credential and (m := _CREDENTIALS.fullmatch(value)) is not None:
            return (m.group(1) or "") + "[redacted]"
        if api_key and len(api_key) >= LONG_SECRET:
            return without_secret(value, api_key)
    return value


# The request settings' tables of HTTP headers, the names of those that carry credentials, and
# such a value: its scheme, kept, and what follows it.
_HEADER_TABLES = ("extra_headers", "headers")
_CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret|password|cookie", re.IGNORECASE)
_CREDENTIALS = re.compile(rf"((?:Bearer|Basic|Token)\s+)?(.{{{LONG_SECRET},}})",
                          re.IGNORECASE | re.DOTALL)


def _endpoints_path() -> str | None:
    """``endpoints.json`` in the cache directory: the endpoints (``_endpoint_id``) that answered
    a run on this machine, each with the UTC day it last did. A job writing to a fresh output
    directory each night (``--output out/$(date +%F)``) has no job.json of its own to say so."""
    directory = cache_dir()
    return None if directory is None else os.path.join(directory, ENDPOINTS_FILE)


def _endpoints_answered(path: str) -> dict[str, str]:
    """What ``path`` holds; nothing when it is missing or damaged (it is only a cache)."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    answered = doc.get("answered") if isinstance(doc, dict) else None
    if not isinstance(answered, dict):
        return {}
    return {k: v for k, v in answered.items() if isinstance(k, str) and isinstance(v, str)}


def _endpoints_expired() -> str:
    """The UTC day before which an endpoint's last answer is too old to wait for it."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() - ENDPOINTS_EXPIRE_DAYS * 86400))


def _answered_here(endpoint: str) -> bool:
    """``endpoint`` answered a run on this machine (of any job, into any output directory) in
    the last ENDPOINTS_EXPIRE_DAYS days."""
    path = _endpoints_path()
    return path is not None and _endpoints_answered(path).get(
        endpoint, "") >= _endpoints_expired()


@contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (made if missing) while in the block; OSError if it
    cannot be had in ENDPOINTS_LOCK_TRIES tries. None on Windows, which has no flock, nor on a
    file system that takes none (ENOLCK, EOPNOTSUPP: some NFS and FUSE mounts)."""
    if sys.platform == "win32":
        yield
        return
    import fcntl
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for _ in range(ENDPOINTS_LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.01)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                break  # no locks here: written unlocked, as before there was one
        else:
            raise TimeoutError(f"{path} is locked")
        yield
    finally:
        os.close(fd)  # the lock goes with it


def _remember_endpoint(*endpoints: str) -> None:
    """Keep ``endpoints`` in ``endpoints.json`` as answering today, the newest ENDPOINTS_KEPT
    at most, those not answered for ENDPOINTS_EXPIRE_DAYS dropped; read and written under a
    lock, so that a run ending at the same moment keeps its own. A file that cannot be written
    is left as it is."""
    path = _endpoints_path()
    if path is None:
        return
    today = time.strftime("%Y-%m-%d", time.gmtime())
    before = _endpoints_answered(path)
    if all(before.get(endpoint) == today for endpoint in endpoints):
        return
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _locked(f"{path}.lock"):
            answered = _endpoints_answered(path)  # as the writer before this one left it
            answered.update(dict.fromkeys(endpoints, today))
            expired = _endpoints_expired()
            kept = dict(sorted(((k, v) for k, v in answered.items() if v >= expired),
                               key=itemgetter(1), reverse=True)[:ENDPOINTS_KEPT])
            with open(temp, "w", encoding="utf-8") as f:
                json.dump({"answered": kept}, f)
            os.replace(temp, path)
    except OSError:
        with suppress(OSError):
            os.remove(temp)


def prepare(job: JobConfig, options: RunOptions, *, tidy: bool = True) -> Plan:
    """Check the job, input, output directory and journal; raise UsageError on anything wrong.

    With ``tidy``, the temporary files a crashed run left are removed: only for the run that
    holds the output directory's lock (``estimate`` looks while another run may be writing)."""
    warnings: list[str] = []
    out_dir = job.output.dir
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output {out_dir} is a file, not a directory — choose another --output")
    io.check_utf8_path(out_dir, "output")
    source = io.open_input(job.input.path)
    stamp = source.stamp()  # before the input is read: a change from here on is seen
    where = f"input {source.path.name}"
    prices = PriceBook(parse_price_table(job.prices, where=f"job file {job.source}: [prices]"))
    # The job's one model, as its bodies carry it ([request.extra]'s over [request]'s); none
    # known before sending where the rows name theirs (a batch file's bodies, model_column).
    model = (None if source.kind == "openai_batch" or job.request.model_column
             else job.request.extra.get("model", job.request.model))
    models = [model] if isinstance(model, str) and model.strip() else None
    warnings.extend(prices.unused_warnings(models))
    warnings.extend(prices.uncached_warnings(models))

    builder: RequestBuilder | None = None
    if source.kind == "openai_batch":
        key_column: str | None = "custom_id"
        _check_no_request_settings(job, where)  # before the file is read through
        source.refuse_unsendable = True  # its lines every API would refuse: named as read
    else:
        by_options = job.source == "command line"
        builder = RequestBuilder(job.request, source.columns, where,
                                 base_dir=source.path if source.path.is_dir()
                                 else source.path.parent, by_options=by_options,
                                 options=job.options.keys())
        _check_model_column(job, source, where)
        key_column = job.input.id_column
        if key_column is not None and key_column not in source.columns:
            pandas = (" — it is the index pandas wrote the file with, which it keeps as a "
                      "range in the file's metadata rather than as a column: write the file "
                      "with df.reset_index().to_parquet(...)" if key_column in source.range_index
                      else "")
            raise ConfigError(
                f"id_column {key_column!r} is not a column of {where} "
                f"({column_list(source.columns, key_column)}){pandas}"
            )
        _check_zones(source, [*builder.needed_columns, *([key_column] if key_column else [])],
                     where)
        warnings.extend(request_warnings(job.request, by_options=by_options,
                                         options=job.options.keys()))
        if builder.template is not None:
            warnings.extend(builder.template.warnings(source.columns))
        warnings.extend(system_warnings(job.request.system, source.columns))
        warnings.extend(json_mode_warnings(job.request, builder.template))
        bounded = {"max_tokens", "max_completion_tokens"}
        if job.limits.max_cost_usd is not None and job.request.max_tokens is None and not (
                bounded & (job.request.extra.keys() | job.request.from_columns.keys())):
            warnings.append(_unbounded_budget("max_tokens is not", "max_tokens"))

    # A --limit run decodes only the ids (or counts the rows): the rows it does not send are
    # read, and their damage found, by the run that sends them. A JSONL file's every record
    # was parsed and checked when it was opened: its ids are all there is to read again. A
    # Parquet file's columns are decoded each on its own, and the results file holds them all:
    # every one is read now, so that a damaged page in a column no request uses stops the run
    # here, not once every row is sent and paid for, when the results are written.
    total, index = _scan_keys(source, key_column, where,
                            () if options.limit is not None or source.rows_checked
                            else source.columns if source.kind == "parquet"
                            else builder.needed_columns if builder is not None else ("body",))
    if total == 0:
        raise InputError(f"{where}: has no rows")

    request_settings = (
        {"openai_batch": True} if builder is None else job.request.settings()
    )
    structured = structured_output(request_settings)  # None for batch input: see batch_checks
    if structured is not None and structured.warning:
        warnings.append(structured.warning)
    warnings.extend(strict_warnings(request_settings))
    fingerprint = source.fingerprint()
    meta: dict[str, Any] = {
        "name": job.name,
        "input_path": str(source.path),
        "input_fingerprint": fingerprint,
        # The stamp of the input read and its kind: `status` looks at the input by its stamp,
        # reading it through (its fingerprint, with its kind) only where that differs.
        "input_stamp": stamp,
        "input_kind": source.kind,
        "id_column": key_column,
        # The id column's type: one read otherwise since (int64 re-exported as double, say)
        # keys its rows by other text ('1.0', not '1'), which no row done would match.
        "id_type": (str(source.schema.field(key_column).type)
                    if key_column is not None and key_column in source.columns else None),
        "request_fingerprint": settings_fingerprint(request_settings),
        "request": request_settings,
        "total_rows": total,
        "output_format": job.output.format,
        "prices": job.prices,
        # Paths as they are (JSON escapes a name's bytes that are not UTF-8): status quotes
        # them into the commands it names, and the reports show them (io.shown_path).
        "job_file": (job.source if job.source == "command line"
                     else str(Path(job.source).resolve())),
        "simulator": job.endpoint.simulator,  # the answers are the built-in simulator's
        "command": _command_kept(job),
    }
    journal = Journal(out_dir)
    meta_path = out_dir / "job.json"
    old_meta = read_meta(out_dir) if meta_path.exists() else None
    if old_meta is not None:
        _check_same_job(old_meta, meta, meta_path, options)  # before tidying
        for key in ("last_run", "timed_run"):
            if isinstance(old_meta.get(key), dict):
                meta[key] = old_meta[key]
        if isinstance(old_meta.get("answered_models"), list):  # kept if this run is killed
            meta["answered_models"] = old_meta["answered_models"]
        if isinstance(old_meta.get("answered_endpoint"), str):  # the same (see _endpoint_id)
            meta["answered_endpoint"] = old_meta["answered_endpoint"]
            if isinstance(old_meta.get("endpoint_models"), list):
                meta["endpoint_models"] = old_meta["endpoint_models"]
    elif journal.segments():
        raise JournalError(
            f"{out_dir} holds a journal but no job.json (deleted, or not a batchrunner output "
            "directory) — restore its job.json to resume there, or use another --output "
            "directory"
        )
    elif taken := [name for name in (*(f"results.{f}" for f in OUTPUT_FORMATS), REPORT_JSON,
                                     REPORT_MD, REPORT_HTML) if (out_dir / name).exists()]:
        # Files of those names that no job here wrote (another tool's, or a job's whose
        # job.json was deleted): the run would write over them.
        raise JournalError(
            f"{out_dir} holds {' and '.join(taken[:2])}{' ...' if len(taken) > 2 else ''} but "
            "no job.json: not a batchrunner job's output directory, and the run would write "
            "over them — use another --output directory, or move them away"
        )
    if tidy:
        journal.remove_temp_files()
        io.remove_stale_temp_files(out_dir)
    journal.check()
    if tidy and old_meta is not None and old_meta.get("prices") != job.prices:
        # Prices set since the rows were answered: those that had none have a cost now.
        journal.price_unpriced(prices.recorded_cost, new_run_id())
    order = InputOrder(source, key_column, total, fingerprint, index)
    # The rows done are compared with the input's (row_hash) unless the last run left them
    # all matching this very input (job.json's rows_checked): after the input changed, and
    # after a run that did not finish sending the rows that had changed (a crash, a stop).
    checked = old_meta is None or old_meta.get("rows_checked") == fingerprint
    selection = _selection(options, meta["request_fingerprint"])
    since = _selection_since(old_meta, selection)
    latest = journal.latest(order, cost=True, hashes=not checked, tried_since=since)
    # Not sent again: ok rows, and failed ones unless retried, unless their values changed.
    # Nor, where this run goes on with a --retry-failed or --rerun-where that a run before
    # left unfinished (--limit, a stop, a kill), the rows it sent again since it began.
    again = latest.tried if latest.tried is not None else np.zeros_like(latest.ok, np.bool_)
    done = (latest.ok == 1) | again if options.retry_failed else latest.ok >= 0
    fresh = untried = None
    hashed = _hashed_columns(builder, old_meta, source.columns, where)
    meta["row_hash_columns"] = hashed
    if latest.row_hash is not None:
        assert old_meta is not None
        tried: list[npt.NDArray[np.int64]] = []
        fresh, said = _resend_changed(
            source, builder, key_column, latest.row_hash, done,
            input_changed=old_meta.get("input_fingerprint") != fingerprint,
            sent=lambda f: _sent_again(journal, order, f, latest, options.retry_failed, tried),
            earlier=[(h["columns"], h["text"]) for h in hashed[1:]
                     if set(h["columns"]) <= set(source.columns)])
        warnings.extend(said)
        if fresh is not None:
            untried = np.setdiff1d(fresh[0], tried[0]) if tried else fresh[0]
    meta["rows_checked"] = fingerprint if fresh is None else None
    if options.retry_failed and np.any(latest.ok == 1) and not np.any(latest.ok == 0):
        warnings.append("--retry-failed: no row of the input has failed: it has nothing to "
                        "resend")
    if fresh is not None:  # how many are to be sent again; at the run's end, how many are left
        meta["rows_changed"] = {"found": len(fresh[0]), "left": None}
    if options.rerun_where:
        # Refuses a bad expression on a first run.
        checks = structured if builder is not None else _batch_columns(
            old_meta.get("batch_checks") if old_meta is not None else None)
        picked = _select(journal, options.rerun_where, source.columns, checks)
        both = sorted(_names(options.rerun_where) & set(source.columns)
                      & (set(OUTCOME_COLUMNS) - {"key", *JOURNAL_ONLY}))
        if both:
            named = ", ".join(both)
            warnings.append(
                f"--rerun-where names {named}, which the input has too: it filters on the "
                f"recorded outcome's {named} (the results' "
                f"{', '.join(result_name(c, set(source.columns)) for c in both)}), not the "
                "input's")
        pos = to_numpy(pc.drop_null(order.positions(string_array(sorted(picked)))))
        done[pos[~again[pos]]] = False
        if not len(pos) and np.any(latest.ok >= 0):
            numeric = re.search(r"\bkey\s*(==|!=|<=?|>=?|in\b)\s*[\[(]?\s*-?\d",
                                options.rerun_where)
            hint = ("; key is text: quote the ids, as in \"key in ['1', '2']\"" if numeric
                    else "")
            if not hint and "model" in _names(options.rerun_where):
                # OpenAI's replies name a dated snapshot (gpt-4o-mini-2024-07-18), never the
                # model asked for: "model == 'gpt-4o-mini'" picks none of its rows.
                answered = sorted(journal.answered_models())
                asked = re.fullmatch(r"\s*model\s*==\s*(['\"])(.+?)\1\s*", options.rerun_where)
                snapshots = [m for m in answered if asked and same_model(m, asked[2])]
                if answered:
                    hint = (f"; model is the name each reply gave ({', '.join(answered[:3])}"
                            f"{', ...' if len(answered) > 3 else ''})"
                            + (f", as in \"model in {snapshots!r}\"" if snapshots else ""))
            warnings.append(f"--rerun-where {options.rerun_where!r} matched no row of the "
                            f"input: none is sent again{hint}")
    held = np.zeros_like(done)
    if options.limit is not None:  # the first rows to do, in input order, are sent
        held[np.flatnonzero(~done)[options.limit:]] = True
        done |= held
        if source.kind == "parquet":
            # Its results hold every column of the rows up to the last one with a record, and
            # the ids alone were decoded: those rows are read through now, as a full run's are.
            marked = np.flatnonzero(~done | (latest.loc >= 0))
            _read_through(source, int(marked[-1]) + 1 if len(marked) else 0)
    if old_meta is not None and latest.others.num_rows and not np.any(latest.loc >= 0):
        _check_same_id_type(old_meta, meta, out_dir, options, warnings,
                            recorded=latest.others["key"][0].as_py(),
                            now=None if index is None else index[0][0].as_py(),
                            rows=latest.others.num_rows)
    if latest.others.num_rows:  # an id-keyed input that lost rows: ``status`` leaves them out
        others_ok = to_numpy(latest.others["ok"])
        meta["not_in_input"] = {"ok": int(np.count_nonzero(others_ok == 1)),
                                "failed": int(np.count_nonzero(others_ok == 0))}
        warnings.append(
            f"{count_rows(latest.others.num_rows)} recorded in {_show(out_dir)} by earlier runs "
            f"{'is' if latest.others.num_rows == 1 else 'are'} not in this input: the results "
            "and reports hold this input's rows only (the journal keeps the others); to keep "
            "each input's results, give each its own --output (out/2026-11-30, say)")
    mixes = real_answers = rehearsal = False
    if old_meta is not None:
        any_ok = bool(np.any(latest.ok == 1) or np.any(to_numpy(latest.others["ok"]) == 1))
        _check_same_request(old_meta, meta, meta_path, options, warnings, any_ok=any_ok,
                            to_send=total - int(np.count_nonzero(done)))
        mixes, rehearsal = _check_same_endpoint(old_meta, meta, meta_path, options, warnings,
                                                any_ok=any_ok, url=_configured_url(job))
        real_answers = any_ok and old_meta.get("simulator") is False
    # Kept for the run only when a row to send has a record already: what each row has cost
    # so far, NaN where nothing is recorded (8 bytes a row), or, when no row to send has cost
    # anything, which rows have a record (1 byte a row). A row to do whose attempts were
    # billed (only ``retrying`` records) has a cost to carry, though no outcome to resend.
    recorded = latest.ok >= 0
    resent = ~done & recorded  # rows with a record that are sent again
    carried = latest.loc >= 0  # rows with a record, an outcome or not
    spent = latest.cost
    if spent is not None:
        if not np.any(~done & carried):
            spent = None
        elif np.any(~done & carried & ~np.isnan(spent)):
            spent[carried & np.isnan(spent)] = 0.0
        else:  # no row sent again has cost anything: which are sent again is enough (1 byte)
            spent = carried
    unfinished = ~done & carried & ~recorded
    unreported = None
    guessed = latest.unreported
    if guessed is not None and np.any(~done & (guessed > 0)):
        unreported = journal.unreported_costs()
    plan = Plan(job=job, source=source, builder=builder, key_column=key_column, total_rows=total,
                done=DoneRows(done), fresh=fresh, untried=untried, out_dir=out_dir,
                job_meta=meta, prices=prices, warnings=warnings, structured=structured, mixes=mixes,
                real_answers=real_answers, rehearsal=rehearsal,
                prior_cost=latest.prior_cost(), order=order, spent=spent,
                prior_unreported=latest.prior_unreported(), unreported=unreported,
                unfinished=unfinished if np.any(unfinished) else None,
                prior_ok=int(np.count_nonzero(done & ~held & (latest.ok == 1))),
                prior_failed=int(np.count_nonzero(done & ~held & (latest.ok == 0))),
                resent=int(np.count_nonzero(resent)), limited=int(np.count_nonzero(held)),
                selection=selection, selection_since=since,
                input_stamp=stamp, newest_at=latest.newest_at)
    known: Any = meta.get("answered_models")  # carried over from old_meta
    if isinstance(known, list):
        plan.answered_models = frozenset(m for m in known if isinstance(m, str))
    elif (builder is None or job.request.model_column) and np.any(latest.ok == 1):
        # Not recorded (a first run killed before its end): the journal's answers tell.
        plan.answered_models = journal.answered_models()
    if old_meta is not None and source.kind == "openai_batch":
        checks_seen = old_meta.get("batch_checks")
        if checks_seen is None and (np.any(latest.ok >= 0) or latest.others.num_rows):
            checks_seen = {"settings": None, "mixed": True}  # rows sent by an older batchrunner
        _restore_batch_checks(plan, checks_seen)
    return plan


def _check_model_column(job: JobConfig, source: io.InputSource, where: str) -> None:
    """A model_column of numbers (a Parquet or JSONL file's ids, say) names no model: each row
    would be sent asking for model "1", "2", ... and the run end advising to price them."""
    column = job.request.model_column
    if column is None or (i := source.schema.get_field_index(column)) < 0:
        return
    kind = source.schema.field(i).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
            or str(kind) == "string_view"):
        raise ConfigError(f"model_column {column!r} of {where} holds {kind} values, not model "
                          "names: name the column of text that gives each row's model")


def _check_zones(source: io.InputSource, columns: Sequence[str], where: str) -> None:
    """Refuse times, in ``columns``, in a time zone this machine's time zone database does not
    have: a request or id shows them in their zone, which cannot be done (a traceback at the
    first row, before)."""
    for name in dict.fromkeys(columns):
        zone = unknown_zone(source.schema.field(name).type)
        if zone is not None:
            raise InputError(
                f"{where}: column {name!r} holds times in the time zone {zone!r}, which this "
                "machine's time zone database does not have — write them with a zone it has "
                "(Europe/Paris, UTC) or an offset (+02:00), or, for a zone newer than the "
                "database, update it (the tzdata package)")


def _model_setting(plan: Plan) -> str:
    """What sets the model a job's requests ask for, as a message names it."""
    if plan.builder is None:
        return 'the "model" of the bodies'
    if plan.job.request.model_column:
        return f"the values of column {plan.job.request.model_column!r}"
    return "the job's model"


def _unbounded_budget(unset: str, to_set: str) -> str:
    """The warning for a budget over requests that set no bound on a reply's length."""
    return (f"max_cost_usd is set but {unset}: with no bound on a reply's length, each request "
            "is held against the budget at the replies' mean length so far "
            f"({DEFAULT_COMPLETION_ESTIMATE} tokens to start), so the spend may pass the budget "
            "by up to the requests in flight, the concurrency's worth, each as long as its reply "
            "runs (a thinking model's reasoning is output too) — set "
            f"{to_set} to make the budget a bound")


def _check_no_request_settings(job: JobConfig, where: str) -> None:
    """A batch file's rows carry their whole requests: settings that would shape the requests
    (or pick the rows' ids) are refused, not silently left unused."""
    settings = job.request.settings()
    if "schema_file" in settings:
        settings.pop("response_format", None)  # read from the schema file
    request = [k for k, v in settings.items() if v not in ([], "")]
    extra = settings.get("extra")
    if isinstance(extra, dict) and "max_completion_tokens" in job.options:
        # Given as --max-completion-tokens, it is the option to leave out, not "extra".
        request.remove("extra")
        request += ["max_completion_tokens"] + (["extra"] if len(extra) > 1 else [])
    unused = request + (["id_column"] if job.input.id_column not in (None, "custom_id") else [])
    if unused:
        named = [f"{k} ({option_name(k)})" if k in OVERRIDES else k for k in unused]
        raise ConfigError(
            f"{where} is an OpenAI batch file: each row carries its whole request (body) and "
            f"its id (custom_id), so {', '.join(named)} would not be used — leave "
            f"{'it' if len(unused) == 1 else 'them'} out (of the options, or of the job file)"
            + (" and set what the requests need in the bodies" if request else ""))


def _batch_columns(recorded: Any) -> StructuredOutput | None:
    """The checks every batch row sent so far asked for, as ``job.json`` records them (their
    json_ columns); None when they differ, ask for none or cannot be read."""
    if not isinstance(recorded, dict) or recorded.get("mixed") is not False:
        return None
    settings = recorded.get("settings")
    if not isinstance(settings, dict):
        return None
    try:
        return structured_output(settings, body=True)
    except ConfigError:
        return None


def _restore_batch_checks(plan: Plan, recorded: Any) -> None:
    """Start from the checks the earlier runs' batch rows asked for (``job.json``)."""
    if not isinstance(recorded, dict):
        return  # none recorded (no row sent yet, or by a batchrunner that did not check them)
    settings = recorded.get("settings")
    checks = None
    if isinstance(settings, dict):
        try:
            checks = structured_output(settings, body=True)
        except ConfigError:  # refused by this version: what they asked for is not known
            plan.batch_mixed = True
    plan.batch_key = b"" if checks is None else checks.key
    plan.batch_checks = checks
    plan.batch_mixed = plan.batch_mixed or recorded.get("mixed") is not False
    _settle_batch_checks(plan)


def _settle_batch_checks(plan: Plan) -> None:
    """Record in ``job.json`` the checks the batch rows sent asked for; when all asked for the
    same, the results get their json_ columns."""
    if plan.source.kind != "openai_batch" or plan.batch_key is None:
        return
    checks = plan.batch_checks
    plan.job_meta["batch_checks"] = {"settings": None if checks is None else checks.settings,
                                     "mixed": plan.batch_mixed}
    plan.batch_unrecorded = False
    plan.structured = None if plan.batch_mixed else checks


def _check_same_job(old: dict[str, Any], new: dict[str, Any], path: Path,
                    options: RunOptions) -> None:
    """Refuse another job's output directory, and a rerun whose rows would not match (rows
    whose values changed are sent again: see ``_resend_changed``)."""
    if old.get("input_path") != new["input_path"] and old.get("name") != new["name"]:
        raise JournalError(
            f"{path.parent} holds the journal of job {old.get('name')!r} over "
            f"{old.get('input_path')}; use another --output directory"
        )
    if old.get("id_column") != new["id_column"] and not options.force:
        def keys(column: Any) -> str:
            return "by position" if column is None else f"by column {column!r}"

        raise UsageError(
            f"rows were keyed {keys(old.get('id_column'))} in {path.parent}, and this run keys "
            f"them {keys(new['id_column'])}: no row done would match, and every row would be "
            "sent again — use another --output directory (or pass --force to do that here)"
        )
    if (old.get("input_fingerprint") != new["input_fingerprint"] and new["id_column"] is None
            and not options.force):
        raise UsageError(
            f"the input file changed since the last run in {path.parent}, and rows are keyed "
            "by position: if rows were only added at its end, pass --force (the rows done keep "
            "their positions; any whose text changed is sent again); else every row after a "
            "row added or removed would be sent again — use another --output directory with an "
            "id column (--id-column)"
        )


def _check_same_id_type(old: dict[str, Any], new: dict[str, Any], out_dir: Path,
                        options: RunOptions, warnings: list[str], *, recorded: Any, now: Any,
                        rows: int) -> None:
    """Refuse, unless forced, a rerun whose input matches none of the rows done when its id
    column's type changed since (``id_type``): ids of another type are other text (an int64
    column re-exported as double reads ``1.0``, not ``1``), so every row would be sent again
    and paid for again. A job.json from before the type was recorded has none: not checked."""
    was, is_now = old.get("id_type"), new.get("id_type")
    if (not isinstance(was, str) or is_now is None or _key_kind(was) == _key_kind(is_now)
            or options.force):
        return
    def shown(key: Any) -> str:
        text = str(key)
        return repr(text if len(text) <= 40 else text[:40] + "…")

    column = new["id_column"]
    example = (f": its ids read as {shown(now)} where the journal has {shown(recorded)}"
               if now is not None else "")
    refused = (f"the id column {column!r} was {was} in the last run in {_show(out_dir)} and is "
               f"{is_now} in this input{example}, so none of the {count_rows(rows)} done would "
               f"be found, and every row would be sent again — write the column as {was} again "
               "(or pass --force to send every row again there, or use another --output "
               "directory)")
    _refuse_unforced(refused, options, warnings)


def _refuse_unforced(refused: str, options: RunOptions, warnings: list[str]) -> None:
    """Refuse a run not given --force (``refused``: why, and what to do); an estimate, which
    sends nothing, is of the forced run's rows, and says the run would be refused."""
    if not options.estimating:
        raise UsageError(refused)
    warnings.append(f"the run is refused unless given --force: {refused}")


def _key_kind(type_name: str) -> str:
    """An id column's Arrow type (``id_type``) as the kind of text its ids are keyed by: text
    (string, large_string, dictionary-encoded or not: pandas 3 writes large_string where pandas
    2 wrote string), integers of any width, else the type itself."""
    values = re.fullmatch(r"dictionary<values=(\w+), .*", type_name)
    name = values.group(1) if values else type_name
    if name in ("string", "large_string", "string_view"):
        return "text"
    return "integer" if re.fullmatch(r"u?int(8|16|32|64)", name) else name


def _hashed_columns(builder: RequestBuilder | None, old_meta: dict[str, Any] | None,
                    columns: Sequence[str], where: str) -> list[dict[str, list[str]]]:
    """The sets of columns the journal's ``row_hash`` values are made of (``row_hasher``):
    the requests' now first, then those of earlier request settings (a forced change of the
    prompt's columns, say), whose rows keep their answers, most recent first (job.json's
    ``row_hash_columns``; a job.json from before it was recorded: its request's). Each is
    ``{"columns": [...], "text": [...]}``: the columns in the hash's order, and those of them
    hashed as the prompt shows them (the prompt's columns; not a model, image or
    ``from_columns`` column, hashed as it is)."""
    sets = [_hash_set(builder)]
    if old_meta is None:
        return sets
    recorded = old_meta.get("row_hash_columns")
    if not isinstance(recorded, list):
        recorded = []
        settings = old_meta.get("request")
        if builder is not None and isinstance(settings, dict):
            with suppress(TypeError, ValueError, BatchrunnerError):  # their columns are gone
                recorded.append(_hash_set(RequestBuilder(RequestConfig(**settings), columns,
                                                         where)))
    for entry in recorded:
        if isinstance(entry, list):  # the columns alone, as first recorded: the prompt's
            entry = {"columns": entry, "text": entry}
        if not isinstance(entry, dict):
            continue
        cols, text = entry.get("columns"), entry.get("text")
        if (isinstance(cols, list) and cols and all(isinstance(c, str) for c in cols)
                and isinstance(text, list) and all(isinstance(c, str) for c in text)):
            kept = {"columns": cols, "text": [c for c in cols if c in text]}
            if kept not in sets:
                sets.append(kept)
    return sets[:HASHED_COLUMNS_KEPT]


def _hash_set(builder: RequestBuilder | None) -> dict[str, list[str]]:
    """The columns ``row_hasher(builder)`` hashes, and those of them shown as text."""
    if builder is None:
        return {"columns": ["body"], "text": []}
    return {"columns": list(builder.needed_columns), "text": list(builder.text_columns)}


def _resend_changed(source: io.InputSource, builder: RequestBuilder | None,
                    key_column: str | None, recorded: npt.NDArray[np.int64],
                    done: npt.NDArray[np.bool_], *, input_changed: bool,
                    earlier: Sequence[tuple[Sequence[str], Collection[str]]] = (),
                    sent: Callable[[Fresh], tuple[npt.NDArray[np.int64],
                                                  npt.NDArray[np.int64]]] | None = None
                    ) -> tuple[Fresh | None, list[str]]:
    """The rows done whose values (``row_hash``) changed since they were recorded are sent
    again (cleared in ``done``): their positions and hashes now (None: no row changed), and
    what to say about it. ``earlier``: as in ``changed_rows``. ``sent``: of those, the rows
    not to send, and the rows sent again already with their values now (not said to be sent
    again as changed), as ``_sent_again`` finds them."""
    fresh = changed_rows(source, builder, key_column, np.where(done, recorded, -1),
                         earlier=earlier)
    done[fresh[0]] = False
    n = len(fresh[0])
    if sent is not None and n:
        again = sent(fresh)
        done[again[0]] = True
        n -= len(again[1])
    unknown = int(np.count_nonzero(done & (recorded < 0))) if input_changed else 0
    said = []
    by = "by id" if key_column is not None else "by position, as --force allows"
    if n:
        said.append(f"{count_rows(n)} done before {'has' if n == 1 else 'have'} changed in the "
                    f"input since {'it was' if n == 1 else 'they were'} sent (rows are matched "
                    f"{by}): {'it is' if n == 1 else 'they are'} sent again")
    elif key_column is None and input_changed:
        said.append(f"the input file changed since the last run; rows are matched {by}")
    if unknown:
        said.append(
            f"{count_rows(unknown)} done by an earlier batchrunner, which kept no record of "
            f"{'its' if unknown == 1 else 'their'} text, keep{'s' if unknown == 1 else ''} "
            f"{'its answer' if unknown == 1 else 'their answers'} even if it changed (send such "
            "rows again with --rerun-where, e.g. \"key in ['a1', 'b7']\")")
    return (fresh if len(fresh[0]) else None), said


def _sent_again(journal: Journal, order: InputOrder, fresh: Fresh, latest: Latest,
                retry_failed: bool, tried: list[npt.NDArray[np.int64]]
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Of the rows whose values changed (``fresh``), those a killed run sent again already
    and that are done as their outcome stands (a failure is resent by --retry-failed only),
    and all it sent again (appended to ``tried`` too: a failure resent by --retry-failed is
    resent for its record, not as a new row): ``latest`` then holds their outcomes, which the
    run's compaction keeps."""
    again = journal.sent_again(order, fresh, latest)
    tried.append(again)
    return (again[latest.ok[again] == 1] if retry_failed else again), again


def _changed_for_report(plan: Plan) -> None:
    """``report`` after a run that did not leave the journal checked against its input (one
    killed or stopped while sending the rows whose values changed): the rows whose latest
    record was made with other values than theirs now (``plan.fresh``, as ``prepare`` finds
    them), so that the compaction ranks a record made with their values now first, as the next
    run would, and the report counts those still to send again."""
    meta = plan.job_meta
    where = f"input {plan.source.path.name}"
    builder = None
    if plan.source.kind != "openai_batch":
        settings = meta.get("request")
        if not isinstance(settings, dict):
            return
        try:
            builder = RequestBuilder(RequestConfig(**settings), plan.source.columns, where,
                                     base_dir=plan.source.path.parent)
        except (TypeError, ValueError, BatchrunnerError):  # the columns are gone: not compared
            return
    order = InputOrder(plan.source, plan.key_column, plan.total_rows,
                       str(meta.get("input_fingerprint", "")))
    latest = Journal(plan.out_dir).latest(order, hashes=True)
    if latest.row_hash is None:
        return
    hashed = _hashed_columns(builder, meta, plan.source.columns, where)
    fresh = changed_rows(plan.source, builder, plan.key_column,
                         np.where(latest.ok >= 0, latest.row_hash, -1),
                         earlier=[(h["columns"], h["text"]) for h in hashed[1:]
                                  if set(h["columns"]) <= set(plan.source.columns)])
    plan.order = order
    plan.fresh = fresh if len(fresh[0]) else None


def _check_same_request(old: dict[str, Any], new: dict[str, Any], path: Path,
                        options: RunOptions, warnings: list[str], *, any_ok: bool,
                        to_send: int) -> None:
    """Refuse a rerun that would mix answers made with different request settings, unless
    forced or no row has an answer yet. ``to_send``: the rows this run would send."""
    if old.get("request_fingerprint") != new["request_fingerprint"]:
        before = old.get("request", {})
        changed = settings_changed(before, new["request"])
        if not changed:  # the same, as sent (a limit's name the product changed, say)
            return
        if not any_ok:  # nothing answered yet (a wrong model, say): nothing to mix with
            warnings.append(f"request settings changed ({', '.join(changed)}); going on, as "
                            "no row has an answer made with the old ones")
        elif not options.force:
            said = (f"the request settings changed since the last run in {path.parent} "
                    f"({', '.join(changed)})")
            refused = (f"{said}; pass --force to send the {count_rows(to_send)} left to send "
                       "with the new ones (the rows it does not send keep their answers), or use "
                       "another --output directory to answer every row with them" if to_send
                       else f"{said}, and every row is done: to answer rows again with the new "
                       "ones, pass --force with --rerun-where (\"True\" picks every row), or use "
                       "another --output directory")
            _refuse_unforced(refused, options, warnings)
        else:
            warnings.append(f"request settings changed ({', '.join(changed)}); going on (--force)")


def _configured_url(job: JobConfig) -> str | None:
    """The URL of the chat completions endpoint ``job`` is sent to (its answers' endpoint, as
    ``_endpoint_id`` hashes it), when a URL is given and reads as one; None for the built-in
    simulator."""
    if job.endpoint.simulator:
        return None
    url = job.endpoint.base_url or environment(job).get(job.endpoint.base_url_env)
    if not url:
        return None
    try:
        return check_base_url(url, "base URL").rstrip("/") + "/chat/completions"
    except ConfigError:  # refused, saying why, when the run opens its endpoint
        return None


def _check_same_endpoint(old: dict[str, Any], new: dict[str, Any], path: Path,
                         options: RunOptions, warnings: list[str], *, any_ok: bool,
                         url: str | None = None) -> tuple[bool, bool]:
    """Refuse a rerun that would mix the built-in simulator's answers with real ones, unless
    forced or no row has an answer yet. A job.json from before it was recorded has none:
    nothing is known to mix. Returns (mixes, rehearsal). ``mixes``, when forced: ``simulator``
    keeps its old value until the run's first answer makes it "mixed" for good
    (``_Run._mixed``). ``url``: the endpoint this run sends to (``_configured_url``); when the
    simulator's answers came from it (batchrunner simulate), the run is the rehearsal's rerun
    (``rehearsal``, unless forced): it goes on while batchrunner simulate answers there."""
    was = old.get("simulator")
    if was == "mixed":
        new["simulator"] = "mixed"
    if not isinstance(was, bool) or was == new["simulator"] or not any_ok:
        return False, False
    if was and url is not None and old.get("answered_endpoint") == _endpoint_id(url):
        # A rehearsal resumed at the URL of batchrunner simulate that answered it: its
        # answers are taken, and the first that is not its stops the run unkept (_Run).
        new["simulator"] = was
        if not options.force:
            return False, True
        warnings.append(f"the rows done in {path.parent} were answered by batchrunner simulate "
                        "at this run's URL: going on (--force); while the simulator serves it, "
                        "its answers stay the simulator's, and a real endpoint's mix with them")
        return True, False
    answers = {True: "the built-in simulator", False: "a real endpoint"}
    said = (f"the rows done in {path.parent} were answered by {answers[was]}, and this run "
            f"would use {answers[new['simulator']]}")
    if not options.force:
        # An endpoint given by URL may be the simulator served on its own, which only its
        # answers tell: forced, they are recorded as the simulator's (_served_by_simulator).
        served = (" (if the URL is batchrunner simulate's, --force keeps every answer the "
                  "simulator's)" if was else "")
        refused = (f"{said}: their answers would mix — use another --output directory, or "
                   f"pass --force to mix them{served}")
        _refuse_unforced(refused, options, warnings)
        return False, False
    warnings.append(f"{said}; their answers mix (--force)")
    new["simulator"] = was
    return True, False


def _selection(options: RunOptions, request: str) -> dict[str, Any] | None:
    """What a run sends again of the rows with an outcome: ``--retry-failed``'s failed rows,
    ``--rerun-where``'s matches, with the request settings they are sent with (``request``,
    their fingerprint: a setting changed since, --force, begins the selection again, the
    failed rows sent again with it too); None for a run that sends neither."""
    if not options.retry_failed and not options.rerun_where:
        return None
    return {"retry_failed": options.retry_failed, "rerun_where": options.rerun_where,
            "request_fingerprint": request}


def _selection_since(meta: dict[str, Any] | None, selection: dict[str, Any] | None
                     ) -> float | None:
    """When the ``selection`` this run sends again began, where the last run sent the same
    and left it unfinished: held back by --limit, stopped, or killed. Its rows sent again since
    then are done by it: the same command sends the next, not those again (rows that failed
    once more, or match the expression still, were sent again each time, --limit's the same
    first ones every run). None: the selection begins with this run, as it does after a stop
    for rows failing alike (``stop_kind``): their failures were the job's setting's, or the
    endpoint's, and are sent again once that is fixed."""
    last = meta.get("last_run") if meta is not None else None
    if selection is None or not isinstance(last, dict) or (
            last.get("stop_kind") in ("fix_first", "wait_first")):
        return None
    earlier = last.get("selection")
    if not isinstance(earlier, dict) or {k: earlier.get(k) for k in selection} != selection:
        return None
    since = earlier.get("since_s")
    if isinstance(since, bool) or not isinstance(since, int | float):
        return None
    unfinished = (not last.get("finished_at") or bool(last.get("stopped"))
                  or type(last.get("limit")) is int)
    return float(since) if unfinished else None


# Text compared with a number, as pandas words it: "Invalid comparison between dtype=str and int"
# where text has a dtype of its own (pandas 3), and Python's "'>=' not supported between
# instances of 'str' and 'int'" where it is held as objects (pandas 2).
_TEXT_COMPARED = re.compile(r"Invalid comparison between dtype=str"
                            r"|not supported between instances of 'str' and '")


def _select(journal: Journal, where: str, input_columns: Sequence[str] = (),
            structured: StructuredOutput | None = None) -> set[str]:
    """The keys of the rows ``where`` (a pandas query over the latest outcomes) picks. An
    outcome column is also known by its name in the results beside an input column of the
    same name (``result_status``, say); with ``structured``, its ``json_`` columns are known
    as the results name them, spread from the outcomes only when ``where`` names one."""
    import pandas as pd

    shown = ", ".join(c for c in OUTCOME_COLUMNS if c not in JOURNAL_ONLY)
    names = _names(where)
    inputs = set(input_columns)
    aliases = {name: c for c in OUTCOME_COLUMNS if c not in JOURNAL_ONLY and c != "key"
               and (name := result_name(c, inputs)) != c and name in names}
    spread = {result_name(col, inputs): col for _, col, _ in
              (structured.columns if structured is not None else ())}
    if spread:
        shown += f" and {', '.join(spread)}"
    columns = f"the recorded outcome's columns: {shown}, where key is the row's id"
    named = {name: col for name, col in spread.items() if name in where}  # `json_a b` too
    also = set(aliases.values()) | ({"status", structured.column}
                                    if named and structured is not None else set())
    table = journal.read(_where_columns(where, also))
    df = table.to_pandas()
    if named and structured is not None:
        values = structured.spread(table[structured.column].to_pylist(),
                                   [s == "ok" for s in table["status"].to_pylist()])
        for name, col in named.items():
            df[name] = values[col].to_pandas()
    # As the results show it: a UTC time (naive, so that "finished_at > '2026-11-30 18:00'"
    # compares), not the journal's seconds.
    df["finished_at"] = pd.to_datetime(df["finished_at"], unit="s")
    for name, column in aliases.items():
        df[name] = df[column]
    try:
        picked = df.eval(where, engine="python")
    except Exception as e:
        if "Invalid comparison between dtype=datetime64" in str(e):
            raise UsageError(f"--rerun-where {where!r}: finished_at is a UTC time without a "
                             "zone: compare it with one, as in \"finished_at > '2026-11-30 "
                             "18:00'\" (no Z or +00:00)") from None
        if _TEXT_COMPARED.search(str(e)) and "key" in names:
            # The ids are kept as text ("007" stays "007"), whatever the input column's type.
            raise UsageError(f"--rerun-where {where!r}: key is the row's id as text: compare "
                             "it with text (key == '1100'), or as a number with "
                             "key.astype('int64') >= 1100") from None
        if type(e).__name__ == "UndefinedVariableError":  # pandas: "name 'x' is not defined"
            name = m[1] if (m := re.search(r"'([^']*)'", str(e))) else "?"
            raise UsageError(f"--rerun-where {where!r}: no column {name!r}; it filters on "
                             f"{columns} (the input's columns are not among them)") from None
        kind = f"{type(e).__name__}: " if type(e).__module__ == "builtins" else ""
        # A syntax error's text ends with where Python met it: "(<unknown>, line 1)".
        detail = e.msg if isinstance(e, SyntaxError) and e.msg else _first_line(e)
        raise UsageError(f"--rerun-where {where!r}: {kind}{detail} ({columns})") from None
    if isinstance(picked, bool | np.bool_):  # "True": every row recorded; "False": none
        return set(df["key"].astype(str)) if picked else set()
    if not (isinstance(picked, pd.Series) and pd.api.types.is_bool_dtype(picked)):
        raise UsageError(
            f"--rerun-where {where!r} is not a condition on each row; compare a column, "
            "e.g. \"finish_reason == 'length'\" or \"status == 'failed' and attempts > 2\""
        )
    return set(df["key"][picked.fillna(False).astype(bool)].astype(str))


def _where_columns(where: str, also: Collection[str] = ()) -> list[str] | None:
    """The outcome columns ``where`` names, and ``also`` (None: all of them, when it cannot be
    read), so a filter on ``status`` or ``error_type`` does not load every reply's text."""
    names = _names(where)
    return [c for c in OUTCOME_COLUMNS if c in names or c in also] if names else None


def _names(where: str) -> set[str]:
    """The names in ``where`` that are not inside a string, after a dot (a method) or before
    a lone ``=`` (a keyword argument); empty when it cannot be read (pandas then says what is
    wrong)."""
    try:
        tokens = list(tokenize.generate_tokens(StringIO(where).readline))
    except (tokenize.TokenError, SyntaxError):
        return set()
    return {t.string for i, t in enumerate(tokens) if t.type == tokenize.NAME
            and not (i and tokens[i - 1].string == ".")
            and not (i + 1 < len(tokens) and tokens[i + 1].string == "=")}


def _estimated_from(item: _Work) -> str:
    """What a request's estimated cost is made of (``_Run._tokens``), for a warning."""
    if item.completion_max:
        return "the prompt and max_tokens"
    return "the prompt, and the answers' mean length so far, as it sets no max_tokens"


def _why(e: BaseException) -> str:
    """What ended a run by raising, in one line, for ``job.json``'s last run."""
    e = leaf(e)
    if isinstance(e, KeyboardInterrupt | SystemExit | asyncio.CancelledError):
        return "interrupted"
    return "ended by an error: " + (_first_line(e) if isinstance(e, BatchrunnerError)
                                    else type(e).__name__)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _scan_keys(source: io.InputSource, key_column: str | None, where: str,
               columns: Sequence[str] = ()) -> tuple[int, tuple[pa.Array, pa.Array] | None]:
    """Count rows and decode ``columns`` (every column a request needs), so damage is found
    before anything is sent; with an id column, refuse null or duplicate ids and return the
    ids, as the strings rows are keyed by, sorted (``sorted_ids``: sorting them finds a repeated
    id, and keys rows to input positions)."""
    total = 0
    if key_column is None and source.num_rows is not None and (source.rows_checked
                                                               or not columns):
        # Every row was parsed and counted when it was opened, or none is to be decoded now
        # and the file's metadata counts them (Parquet).
        return source.num_rows, None
    if key_column is None:
        for batch in source.batches(columns=list(columns) or [source.columns[0]]):
            total += batch.num_rows
        return total, None
    parts: list[pa.Array] = []
    blank = scalar("", pa.string())
    for batch in source.batches(columns=list(dict.fromkeys([key_column, *columns]))):
        col = batch.column(0)
        keys = key_strings(col) if not col.null_count else None
        if keys is None or pc.any(pc.equal(keys, blank)).as_py():  # null, or "" in a CSV
            first = next(i for i, v in enumerate(python_values(col)) if v is None or v == "")
            raise InputError(f"{where}: {source.where_rows(total + first)} has no value in id "
                             f"column {key_column!r}; give every row an id of its own")
        parts.append(keys)
        total += batch.num_rows
    ids = pa.concat_arrays(parts) if parts else pa.nulls(0, pa.string())
    index = sorted_ids(ids)
    dup = _first_duplicate(ids, index[0])
    if dup is not None:
        first, second = np.flatnonzero(to_numpy(pc.equal(ids, scalar(dup, pa.string()))))[:2]
        raise InputError(f"{where}: id {dup!r} appears more than once in column "
                         f"{key_column!r} ({source.where_rows(int(first), int(second))}); "
                         "ids must be unique")
    return total, index


def _read_through(source: io.InputSource, stop: int) -> None:
    """Decode every column of the input's rows before position ``stop``, a batch at a time:
    damage there raises ``InputError``."""
    if stop <= 0:
        return
    position = 0
    with closing(source.batches()) as batches:
        for batch in batches:
            position += batch.num_rows
            if position >= stop:
                return


def _first_duplicate(ids: pa.Array, in_order: pa.Array | None = None) -> str | None:
    """The first id, in row order, that repeats an earlier one (``in_order``: ``ids``
    sorted, if they are at hand)."""
    if in_order is None:
        in_order = sorted_ids(ids)[0]
    n = len(in_order)
    if n < 2 or not pc.any(pc.equal(in_order.slice(0, n - 1), in_order.slice(1))).as_py():
        return None
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"),
                         pc.greater(counts.field("counts"), scalar(1, pa.int64())))
    seen: set[str] = set()
    for v in pc.filter(ids, pc.is_in(ids, value_set=repeated)).to_pylist():
        if v in seen:
            return str(v)
        seen.add(v)
    return None  # pragma: no cover - the sorted ids hold a repeat


def iter_rows(plan: Plan) -> Iterator[tuple[str, dict[str, Any], float]]:
    """(key, row, what the row has cost so far) for every input row to send this run
    (``plan.done`` skipped), in order; the cost is NaN for a row with no record yet."""
    for key, row, cost, _ in rows_to_send(plan):
        yield key, row, cost


def rows_to_send(plan: Plan) -> Iterator[tuple[str, dict[str, Any], float, bool]]:
    """``iter_rows``'s rows, each with whether it is sent again for its own sake: it has an
    outcome (ok or failed) from an earlier run, not only billed tries (``Plan.unfinished``),
    and it is not a row whose text changed that no run has sent with its text now
    (``Plan.untried``). The estimate takes such a row's earlier answer as its own."""
    kc = plan.key_column
    unfinished = plan.unfinished
    # Rows whose text changed are sent for their new text, as new rows are (positions sorted),
    # unless a killed run sent them with it already.
    changed = plan.untried if plan.untried is not None and len(plan.untried) else None
    stop = None
    if plan.limited:  # --limit: the rows past the last one it sends are not read
        to_send = np.flatnonzero(~plan.done.mask)
        stop = int(to_send[-1]) + 1 if len(to_send) else 0
    for at, rows in _input_rows(plan.source, plan.builder, kc, plan.done.mask, stop=stop):
        spent = _spent_of(plan.spent, at)
        resent = [not math.isnan(cost) for cost in spent]
        if unfinished is not None:
            known = at[at < len(unfinished)]  # the input grew: the new rows have no record
            for i in np.flatnonzero(unfinished[known]).tolist():
                resent[i] = False
        if changed is not None:
            found = np.minimum(np.searchsorted(changed, at), len(changed) - 1)
            for i in np.flatnonzero(changed[found] == at).tolist():
                resent[i] = False
        keys = (str(i) for i in at.tolist()) if kc is None else (str(row[kc]) for row in rows)
        yield from zip(keys, rows, spent, resent, strict=True)


def _input_rows(source: io.InputSource, builder: RequestBuilder | None, key_column: str | None,
                skip: npt.NDArray[np.bool_], extra: Mapping[str, tuple[str, bool]] | None = None,
                *, stop: int | None = None
                ) -> Iterator[tuple[npt.NDArray[np.int64], list[dict[str, Any]]]]:
    """The input's rows but those ``skip`` marks (rows past its end are not skipped: the input
    grew since it was checked), a batch at a time: their positions, and the columns their
    requests are made of and the key column, the prompt's columns as the prompt shows them
    (and each of ``extra``, field name → (column, shown as a prompt shows it), besides).
    With ``stop``, reading ends once the rows before that position are read."""
    position = 0
    text: list[str] = []  # the prompt's columns (not the key: it keys the row as it is)
    extra = extra or {}
    if builder is None:
        cols: list[str] | None = ["custom_id", "body"]
    else:
        cols = list(dict.fromkeys([*builder.needed_columns, *([key_column] if key_column else []),
                                   *(name for name, _ in extra.values())]))
        text = [c for c in builder.text_columns if c != key_column]
    if stop is not None and stop <= 0:
        return
    with closing(source.batches(columns=cols)) as batches:
        for batch in batches:
            n = batch.num_rows
            skipped = skip[position:position + n]
            if len(skipped) < n:
                skipped = np.concatenate([skipped, np.zeros(n - len(skipped), dtype=np.bool_)])
            todo = np.flatnonzero(~skipped)
            if len(todo):
                if len(todo) < n:  # only the rows to send are shown as text
                    batch = pc.take(batch, int64_array(todo))
                yield position + todo, python_rows(_shown(batch, text, extra))
            position += n
            if stop is not None and position >= stop:
                return


def _shown(batch: pa.RecordBatch, text: Sequence[str],
           extra: Mapping[str, tuple[str, bool]]) -> pa.RecordBatch:
    """``batch`` with its ``text`` columns as a prompt shows them, and ``extra``'s appended."""
    besides = [(field_name, prompt_text(values) if shown else values)
               for field_name, (name, shown) in extra.items()
               for values in [batch.column(batch.schema.get_field_index(name))]]
    for name in text:
        i = batch.schema.get_field_index(name)
        values = batch.column(i)
        shown = prompt_text(values)
        if shown is not values:
            batch = batch.set_column(i, name, shown)
    for field_name, values in besides:
        batch = batch.append_column(field_name, values)
    return batch


def _differ(a: tuple[float | None, ...], b: tuple[float | None, ...]) -> bool:
    """Two models' reported limits differ: in a kind both report."""
    return any(x is not None and y is not None and x != y for x, y in zip(a, b, strict=True))


def row_hasher(builder: RequestBuilder | None) -> Callable[[dict[str, Any]], int]:
    """A row's ``row_hash``: a CRC-32 of the JSON array of its values in the columns its
    request is made of (see ``hash_values``); a batch row's, of its body with its keys in
    order (``_body_hash``)."""
    if builder is None:
        return _body_hash
    # Never empty: a builder refuses a prompt that names no column unless rows have a model or
    # body fields of their own, which are columns too.
    return _columns_hasher(builder.needed_columns)


def _body_hash(row: dict[str, Any]) -> int:
    """A batch row's ``row_hash``: a CRC-32 of ``[body]`` with the body's keys sorted, at every
    depth, so that a batch file written again with its keys in another order (another
    script's dict, a tool that sorts them) has the same rows, not every row changed and paid
    for again. Journals from before hashed the body's text as written (``_columns_hasher``
    over ``body``): ``changed_rows`` takes either."""
    body = row["body"]
    try:
        return zlib.crc32(orjson.dumps((orjson.loads(body),), option=orjson.OPT_SORT_KEYS))
    except (orjson.JSONDecodeError, TypeError):  # not JSON orjson reads (an integer past 64
        return hash_values((body,))              # bits): its text, as written


def _columns_hasher(columns: Sequence[str]) -> Callable[[dict[str, Any]], int]:
    """``row_hasher`` over ``columns`` (not empty)."""
    get = itemgetter(*columns)
    if len(columns) == 1:
        return lambda row: hash_values((get(row),))
    return lambda row: hash_values(get(row))


def hash_values(values: tuple[Any, ...]) -> int:
    """A CRC-32 of ``values`` (a row's, as ``_input_rows`` gives them) as a JSON array:
    recorded with the row's outcome, so that a rerun over a changed input can tell the rows
    whose request would differ from the one answered. Stable across runs and versions (a value
    orjson cannot write is hashed as its text)."""
    try:
        return zlib.crc32(orjson.dumps(values, default=str))
    except TypeError:  # an integer past 64 bits, say
        return zlib.crc32(repr(list(values)).encode("utf-8", "surrogatepass"))


def changed_rows(source: io.InputSource, builder: RequestBuilder | None,
                 key_column: str | None, recorded: npt.NDArray[np.int64],
                 earlier: Sequence[tuple[Sequence[str], Collection[str]]] = ()) -> Fresh:
    """The rows whose recorded ``row_hash`` (by input position; -1: none, not compared)
    differs from their values' now: their positions, in order, and their hashes now. A row
    whose recorded hash is that of its values in one of the ``earlier`` sets of columns (the
    columns of request settings since changed with --force, whose rows kept their answers:
    the input's columns all, each with those of them hashed as the prompt shows them) has not
    changed either."""
    positions, hashes = [], []
    digest = row_hasher(builder)
    olds = []
    extra: dict[str, tuple[str, bool]] = {}  # a row's field → (column, shown as text)
    for cols, text in earlier:
        names = []
        for c in cols:
            shown = c in text and c != key_column  # as ``_input_rows`` shows the prompt's
            names.append(field_name := f"{c}\0{'text' if shown else 'value'}")
            extra[field_name] = (c, shown)
        olds.append(_columns_hasher(names))
    if builder is None:  # a batch row's body hashed as written, as journals from before did
        olds.append(_columns_hasher(("body",)))
    for at, rows in _input_rows(source, builder, key_column, recorded < 0, extra):
        at = at[at < len(recorded)]
        rows = rows[:len(at)]
        now = np.fromiter(map(digest, rows), np.int64, len(at))
        was = recorded[at]
        differ = now != was
        for old in olds:
            which = np.flatnonzero(differ)
            if not len(which):
                break
            same = np.fromiter((old(rows[i]) for i in which.tolist()), np.int64,
                               len(which)) == was[which]
            differ[which[same]] = False
        positions.append(at[differ])
        hashes.append(now[differ])
    if not positions:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(positions), np.concatenate(hashes)


def _spent_of(spent: npt.NDArray[np.float64] | npt.NDArray[np.bool_] | None,
              at: npt.NDArray[np.int64]) -> list[float]:
    """What the rows at input positions ``at`` have cost so far (NaN: nothing recorded);
    ``spent`` as ``Plan.spent``."""
    if spent is None:
        return [math.nan] * len(at)
    known = at < len(spent)  # the input grew since it was checked: the new rows have no record
    out = np.full(len(at), np.nan, dtype=np.float64)
    got = spent[at[known]]
    out[known] = np.where(got, 0.0, np.nan) if got.dtype == np.bool_ else got
    return out.tolist()


def make_work(plan: Plan, key: str, row: dict[str, Any]) -> tuple[_Work | None, str]:
    """The request for one row, or ``(None, why it cannot be sent)``."""
    if plan.builder is None:
        try:
            body = json.loads(row["body"])
        except (TypeError, ValueError):
            body = None
        if not isinstance(body, dict):
            return None, "the body is not a JSON object"
        checks, why = _row_checks(plan, body)
        if why:
            return None, why
        if body.get("stream") is True:
            ask_for_usage(body)
        seen = b"" if checks is None else checks.key
        if plan.batch_key is None:
            plan.batch_key, plan.batch_checks, plan.batch_unrecorded = seen, checks, True
        elif seen != plan.batch_key and not plan.batch_mixed:
            plan.batch_mixed = plan.batch_unrecorded = True
        prompt_tokens = body_prompt_tokens(body)
    else:
        body, prompt = plan.builder.build(row)
        if body is None:
            return None, prompt
        prompt_tokens = plan.builder.prompt_tokens(body, prompt)
        checks = plan.structured
        if not _ROW_SET_CHECKS.isdisjoint(plan.job.request.from_columns):
            # A column sets what the reply must hold: the row's own settings are checked, as
            # a batch row's (the json_ columns stay the job's own schema's, if any).
            checks, why = _row_checks(plan, body)
            if why:
                return None, why
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    n = body.get("n")
    completion = max_tokens if isinstance(max_tokens, int) else 0
    # By position (key, body, prompt_estimate, completion_max, model, n), not by keyword: a call
    # naming its arguments matches each name, some 500 instructions a name, every row.
    model = body.get("model")
    item = _Work(key, body, prompt_tokens + 8, completion,
                 model if type(model) is str else str(model or ""),
                 n if isinstance(n, int) and n > 0 else 1)
    if checks is not None:
        item.checks = checks
    return item, ""


_ROW_CHECKS_KEPT = 256  # distinct structured-output settings remembered from batch rows
# The body fields that say what a reply must hold (structured output)
_ROW_SET_CHECKS = frozenset({"response_format", "tools", "tool_choice"})


def _row_checks(plan: Plan, body: dict[str, Any]) -> tuple[StructuredOutput | None, str]:
    """The structured output a batch row's body asks for (its ``response_format``, or the
    function its ``tool_choice`` forces), or ``(None, why it cannot be checked)``. Rows
    share their settings as a rule: each distinct one is built once (checking a schema takes
    a few ms; a file with a schema of its own on every row pays that for each)."""
    fmt, choice = body.get("response_format"), body.get("tool_choice")
    if fmt is None and choice is None:
        return None, ""
    settings = {"response_format": fmt, "tools": body.get("tools"), "tool_choice": choice}
    try:
        key = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)
    except TypeError as e:  # an integer past 64 bits, say
        return None, f"the body cannot be sent as JSON ({e})"
    known = plan.row_checks.get(key)
    if known is None:
        try:
            known = structured_output(settings, body=True), ""
        except ConfigError as e:
            known = None, str(e)
        if len(plan.row_checks) >= _ROW_CHECKS_KEPT:
            del plan.row_checks[next(iter(plan.row_checks))]  # the oldest
        plan.row_checks[key] = known
    return known


# ----------------------------------------------------------------------------------------------
# The run


class _Run:
    """One run's state. Workers take rows straight from the input iterator (retries first), and
    record outcomes straight into the journal buffer; a flusher task writes the buffer out."""

    def __init__(self, plan: Plan, options: RunOptions, client: ChatClient, limiter: Limiter,
                 progress: Progress, journal: JournalWriter, *, max_concurrency: int,
                 fixed_concurrency: bool) -> None:
        self.plan = plan
        self.options = options
        self.client = client
        self.limiter = limiter
        self.progress = progress
        self.journal = journal
        lim = plan.job.limits
        self.policy = options.retry or RetryPolicy(max_attempts=lim.max_attempts)
        # An endpoint that answered in this run (or an earlier one), then refuses connections
        # (or answers only through a gateway's 502/503/504), is waited for this long before
        # the job stops: a restart, or a reboot and a model's load, is ridden out; an endpoint
        # gone for good stops the job by morning. 0: an outage stops the job at once.
        self.outage_s = lim.outage_wait_s if options.outage_s is None else options.outage_s
        self.counts = Counts(ok=plan.prior_ok, failed=plan.prior_failed,  # the job's, shown
                             resumed=bool(plan.prior_ok or plan.prior_failed),
                             outage_s=self.outage_s,
                             only_429s_stop_s=max(self.outage_s, ONLY_429S_STOP_S),
                             job_limits=job_limits(lim.requests_per_minute,
                                                   lim.tokens_per_minute))
        self.counters: Counter[str] = Counter()
        self.errors_seen: Counter[str] = Counter()
        self.failed_kinds: Counter[str | None] = Counter()  # this run's failed rows, by error
        self.stop_error: StopJob | None = None
        self.stopping = False
        self.stopped = anyio.Event()
        # Requests waiting for the limiter's permit: a stop cancels their wait (stop), or a
        # low rate would hold the run's end until each had its turn, with nothing to send.
        self.pacing: set[anyio.CancelScope] = set()
        self.rng = random.Random()
        # The replies' completion tokens for each choice their request asked (n), a running
        # mean: a request asking n is charged n times it (the rows of a batch file, or of a
        # column's n, ask for different n); a server that ignores n and sends one choice is
        # learnt at a choice's n-th, so its requests are charged what they get.
        self.completion_estimate = float(DEFAULT_COMPLETION_ESTIMATE)
        self.prompt_ratio = 1.0
        # Replies the two estimates have learnt from, up to LEARN_OVER: the first weigh as
        # much as a mean of those so far (a prompt 3 times the estimate was charged short for
        # some 50 replies at 5 % each), then each 1/LEARN_OVER.
        self.learnt_prompts = self.learnt_completions = 0
        self.latency_s = 1.0
        self.last_answer = -math.inf  # perf_counter() of the latest HTTP answer, of any status
        # In a job whose rows ask models of their own, each model's (``_answered_since``).
        self.model_answered: dict[str, float] = {}
        # When the latest request that got an answer was sent: answers to requests sent before
        # an outage began (a server draining them as it restarts) do not make the refusals
        # meanwhile the rows' own, nor end the outage.
        self.answered_sent = -math.inf
        # When the endpoint started to look down (a connection refused with no answer since its
        # row started); it is down while this is later than last_answer.
        self.refused_since = -math.inf
        # A refusal after which no request sent has been answered: an outage began (attempt).
        self.outage_from = -math.inf
        self.last_refusal = -math.inf  # the latest refused connection, any row's
        self.refused_item: _Work | None = None  # the row it was (_fresh_probe)
        # When each row was last cut with no answer (connection_reset): another row's, since
        # the latest answer, tells an endpoint away from a row that the server drops alone.
        self.cuts: dict[str, float] = {}
        # The server's falls: cuts (CUT_KINDS) after an answer begin the next one, so that the
        # requests cut as it went down and those sent into it while it is down are one fall;
        # the rows the latest cut, and the falls that cut more than one row.
        self.fall = 0
        self.fall_after = -math.inf  # the latest answer before the fall began
        self.fall_rows = 0
        self.shared_falls: set[int] = set()
        self.forgiven = 0  # the falls up to this one: a row sent alone brought them (culprit)
        # The falls such rows were cut in: the tries other rows spent in them are given back.
        self.blamed: set[int] = set()
        # Rows cut in ALONE_AFTER_FALLS falls or more are sent one at a time: the one out
        # (until it is done with: sent again after a backoff, it is still out), and those
        # waiting for it.
        self.alone: _Work | None = None
        self.alone_waiting: deque[_Work] = deque()
        # What the latest refusal was, for the progress: "" a connection that failed, else
        # the gateway's answer ("HTTP 503: no available channel for ...").
        self.refused_by = ""
        # The latest refusal was a cut (connection_reset): the endpoint's port takes
        # connections and closes them unanswered, which the stop says (not "no connection").
        self.refused_cut = False
        # The outage job.json's last_run says the run waits out (its ``outage_from``), for
        # ``status`` read beside the run: recorded by the flusher (_record_outage) when the
        # progress starts to show it, and dropped when a request sent since is answered.
        self.outage_recorded: float | None = None
        # What answered for the endpoint then (refused_by), and whether it cut (refused_cut).
        self.outage_recorded_by: tuple[str, bool] = ("", False)
        # When the pause job.json's last_run says holds new requests ends (_record_pause).
        self.pause_recorded = 0.0
        # Shut while a gateway's 502/503/504 says the server is away (_turned_away): no
        # request is sent but one at a time (the probe), each after the wait asked for (or
        # PROBE_EVERY_S), until a request sent since ``gate_from`` is answered (_answered).
        self.gate: anyio.Event | None = None
        self.gate_from = -math.inf
        self.probing = False  # a probe is out (or waiting out the pause to be sent)
        self.turned_away_at = -math.inf  # the latest such answer (_turned_away)
        # In a job whose rows ask models of their own: the models of the rows refused since
        # the latest answer (None for a refusal no model's: a connection refused, a cut), as
        # of ``last_refusal`` (_one_model_away).
        self.refused_models: set[str | None] = set()
        # When each model's refusals began: its first since it last answered (its answer
        # takes it out).
        self.model_refused_from: dict[str, float] = {}
        # For each of those: the earliest another model's answered request was sent since
        # then, from which it is turned away alone (``_turned_away_alone``).
        self.alone_from: dict[str, float] = {}
        # Refusals (connections, or a gateway's 502/503/504) since the latest answer to a
        # request sent after one: two or more, and the endpoint is away (an outage), not
        # turning one request away now and then while it answers the others (whose wait, a
        # retry-after, is the row's own).
        self.refused_unanswered = 0
        # The waits for their next try of the rows refused since the latest request answered
        # was sent (_requeue): in an outage, an answer to one sent after the latest refusal
        # ends them.
        self.refused_waits: set[anyio.CancelScope] = set()
        # The endpoint answered an earlier run of the job (job.json's answered_endpoint), or
        # of any job on this machine (the cache directory's endpoints.json): its refused
        # connections before any answer in this run are a server coming up (a GPU box
        # rebooted, vLLM still loading its model, which refuses connections meanwhile), waited
        # for as an outage is (outage_s), not a wrong URL or port, which stops the job after
        # a row's attempts. With no wait for outages, they stop it so too. What the stop says
        # it answered ("" if not).
        self.answered_before = ""
        # No run on this machine had an answer from the URL: its refusals, which stop the job
        # after a row's attempts, say it may be mistyped (a port, a host) or not started.
        self.never_answered = False
        if client is not None:
            endpoint = _endpoint_id(client.url)
            if plan.job_meta.get("answered_endpoint") == endpoint:
                answered = "an earlier run of the job"
            elif _answered_here(endpoint):
                answered = "an earlier run on this machine"
            else:
                answered = ""
            self.never_answered = not answered
            if self.outage_s > 0:
                self.answered_before = answered
        # A job of one model whose rows an earlier run of the job got answers for from this
        # endpoint (job.json's endpoint_models): a router's 404 naming it, before any row of
        # this run is answered, is its server away (restarting), waited out as a 503 is. A
        # new or --forced name, never answered here, is a name mistyped: it stops the job.
        # A job writing to a fresh output directory each night has no job.json to say so:
        # the cache directory's endpoints.json keeps the endpoint and model answered too.
        # What got its answers here, for the stop to say ("" if none).
        model = plan.job.request.model
        self.model_answered_by = ""
        if (self.answered_before and client is not None and plan.builder is not None
                and not plan.job.request.model_column and model):
            if (self.answered_before == "an earlier run of the job"
                    and model in (plan.job_meta.get("endpoint_models") or ())):
                self.model_answered_by = "an earlier run of the job"
            elif _answered_here(_endpoint_id(client.url, model)):
                self.model_answered_by = "an earlier run on this machine"
        self.model_answered_here = bool(self.model_answered_by)
        self.max_concurrency = max_concurrency
        self.fixed_concurrency = fixed_concurrency
        # Too many in flight for the server (``_queued_too_long``): the concurrency at most,
        # inf when not lowered. ``late`` counts the timeouts that lowered it since the latest
        # tune tick, which sets ``cut_at``: requests sent before a cut time out for the
        # concurrency before it, and lower it no more. ``ok_seen``: the rows ok at that tick.
        self.ceiling = math.inf
        self.late = 0
        self.cut_at = -math.inf
        self.ok_seen = self.counts.ok
        # Server errors since the latest row ok (``_server_error``), and while there are
        # SERVER_ERRORS_IN_A_ROW of them, the rows that may be out (started, not finished):
        # a new row only as one finishes; sys.maxsize when any number may.
        self.server_errors = 0
        self.ok_at_error = self.counts.ok
        self.rows_out = sys.maxsize
        # The worker count is the concurrency: the tuner adds workers, and makes the surplus
        # ones end after their current request. No per-request gate.
        self.target_workers = (max_concurrency if fixed_concurrency
                               else min(max_concurrency, INITIAL_CONCURRENCY))
        self.workers = 0
        self.rows: Iterator[tuple[str, dict[str, Any], float, bool]] = rows_to_send(plan)
        self.row_hash = row_hasher(plan.builder)
        self.input_done = False  # the input iterator is exhausted (or broke)
        self.rows_done = False  # and no row a scout went past is left (``passed``)
        # While one model's rows are refused by the gateway and nothing else answers: the row
        # of another model sent to tell its upstream from the gateway (``_scout``), and the
        # rows it went past in the input, to start before the rows after it.
        self.scout: _Work | None = None
        self.passed: deque[_Work] = deque()
        self.passed_tokens = 0  # their prompts' estimated tokens
        self.retries: deque[_Work] = deque()  # rows whose backoff is over, sent before new rows
        # Split: the rows of each model waiting for its own permit (_park), and how many.
        self.parked: dict[str, deque[_Work]] = {}
        self.parked_rows = 0
        # Rows are parked (split) while every model has a pace or runs free, answered and not
        # refused for a second (_sample_pace): the workers freed would send all their rows at
        # once to a model behind a limit no header says.
        self.parking = False
        self.outstanding = 0  # rows taken from the input and not finished yet
        # The idle workers, each waiting for its own event to be set (_idle): all of them
        # look again at _wake_workers, one at _wake_one; and, while rows are parked, the one
        # that sleeps until the soonest parked row's permit is due (keeper, due when).
        self.idle: deque[anyio.Event] = deque()
        self.keeper: anyio.Event | None = None
        self.keeper_due = math.inf
        self.flush_wanted = anyio.Event()
        self.tasks: anyio.abc.TaskGroup | None = None  # workers and retry timers
        self.sent_through = False  # the workers are done: what is left is to write it down
        self.signalled = False  # a signal asked the run to stop
        self.budget = plan.job.limits.max_cost_usd
        # The whole job's, earlier runs included, and their tries of cost not reported at
        # their estimates.
        self.spent = plan.prior_cost + plan.prior_unreported
        self.reserved = 0.0  # estimated cost of the requests in flight
        self.recorded = 0
        # The job's rows to do, those --limit leaves for later runs too: what the progress's
        # projection of the job's cost spreads this run's cost per row over.
        self.to_do = max(1, plan.total_rows - len(plan.done) + plan.limited)
        # Until a row is ok: how many rows sent have failed, by error type.
        self.failing: Counter[str] | None = Counter()
        self.failing_models: set[str] = set()  # the models they asked for (models_vary)
        # Models whose rows' failures are their own, other models having answered: not counted.
        self.own_failures: set[str] = set()
        self.long_waits = 0  # 429s in a row asking to wait longer than the job waits
        # When the last of them came: one to a request sent before it (in flight at the time,
        # its twin) is not another in a row.
        self.long_wait_at = -math.inf
        # When the first 429 since the latest other answer came (inf: none since), and how
        # many since: nothing but 429s for ONLY_429S_STOP_S stops the job (_only_429s).
        self.only_429s_from = math.inf
        self.only_429s = 0
        self.transient: set[str] = set()  # error types rows failed with after every retry
        self.warned: set[str] = set()  # the warnings about batch rows said so far
        self.warned_unpriced = False  # about a reply without usage, under a budget
        self.warned_search = False  # about a reply citing sources its usage does not count
        self.warned_cut = False  # about a try that may be billed without usage (budget)
        self.routed: dict[str, str] = {}  # model asked for → the priced one that answered
        # Model asked for → the most a reply's search (sources, web searches) has cost in this
        # run: billed apart from tokens, so a request's estimate holds it too, under a budget.
        self.search_usd: dict[str, float] = {}
        # Rows ask for models of their own (a model column, a batch file): the models a reply
        # came from so far, to tell a key that lacks one model from a key refused outright.
        self.models_vary = plan.builder is None or bool(plan.job.request.model_column)
        self.answered_models: set[str] = set(plan.answered_models)
        # The models requests were sent for in this run, unsplit: a model's first goes past a
        # pace learnt from another's answers (attempt), its answer saying its own limit.
        self.sent_models: set[str] = set()
        # The limits each model's answers report (x-ratelimit-limit-requests and -tokens):
        # while they are the same for all, one limiter paces them all; once two differ, the
        # limits are each model's own, and ``split`` holds a limiter for each (``_observe``).
        self.model_limits: dict[str, tuple[float | None, float | None]] = {}
        # The models answered ok with no limit reported, that never reported one: not paced at
        # the limits another model's answers report (a gateway that limits some models only).
        self.unlimited: set[str] = set()
        self.split: dict[str, Limiter] | None = None
        # Split by the limits reported: each model's latest report, the limits the job's
        # limiter paces every model at together while those agree (``_share``), and since
        # when they have not agreed (inf: they do, or no such pace is held).
        self.reports: dict[str, tuple[float | None, float | None]] = {}
        self.shared: tuple[float | None, float | None] | None = None
        self.differ_since = math.inf
        # Split by the limits reported: when each model was last answered 429, and the run's
        # 429s so far, counting after the split only those drawn together (TOGETHER_S).
        self.refused_at: dict[str, float] = {}
        self.refused_together = self.together_from = 0
        # Where no answer reports a limit, from the first 429 on: each model's requests answered
        # (ok or 429) and answered 429, sampled by a limiter of its own (``_split_by_429s``),
        # which paces nothing until a storm of one model's 429s, beside another's answered,
        # splits the job.
        self.probes: dict[str, Limiter] | None = None
        self.probes_from = 0.0  # when the first was made (time.monotonic())
        # Before any model answered, a 403 for one cannot tell a key that lacks that model from
        # a key refused outright (and a refusal comes back sooner than an answer). Its rows are
        # held (each with its model_refused outcome, or None: not sent yet) while the rows asking
        # for other models go on: an answer to one of those fails the refused rows and sends the
        # held ones (see _release_held); no answer, and the job stops (_refused_outright). So
        # are a model's rows when its first rows to finish all failed alike (_fail_fast) before
        # any model answered: the job's setting or that model (one the gateway lacks)?
        self.held_models: dict[str, AuthError | AllFailing] = {}  # model → its first refusal
        self.held: list[tuple[_Work, Outcome | None]] = []  # outstanding, not sent meanwhile
        self.mixes = plan.mixes  # job.json is to say "mixed" at the first answer
        # The endpoint said it is batchrunner's simulator (batchrunner simulate): its answers
        # are not real (``simulated``), and are dropped (``drop_simulated``) where they would
        # mix with real ones unasked.
        self.simulated = plan.job.endpoint.simulator or plan.rehearsal
        self.drop_simulated = False
        if plan.rehearsal and client is not None:
            client.expect_simulator()
        self.write_error: OutputError | None = None  # a journal segment could not be written

    # -- the work queue: retries first, then the next rows of the input

    def _wake_workers(self) -> None:
        idle = self.idle
        while idle:
            idle.popleft().set()
        if self.keeper is not None:
            self.keeper.set()

    def _wake_one(self) -> None:
        if self.idle:
            self.idle.popleft().set()

    async def _idle(self) -> None:
        """Wait for work: until ``_wake_workers`` or ``_wake_one``; or, the keeper, until
        the soonest parked row's permit is due, or may be sooner (_time_permits).
        Polling instead (every 20 ms, each idle worker) woke the workers 5,000 times for
        300 rows of a split job."""
        wake = anyio.Event()
        if self.parked_rows and self.keeper is None:
            wait = self._parked_ready_in()
            self.keeper, self.keeper_due = wake, time.monotonic() + wait
            try:
                with anyio.move_on_after(wait):
                    await wake.wait()
            finally:
                if self.keeper is wake:
                    self.keeper, self.keeper_due = None, math.inf
            return
        self.idle.append(wake)
        try:
            await wake.wait()
        finally:
            if not wake.is_set():  # cancelled: the run is over
                self.idle.remove(wake)

    def _time_permits(self, due: float = 0.0) -> None:
        """A parked row's permit may be due ``due`` (time.monotonic(); 0: sooner than any):
        the keeper looks again if it sleeps past that, or an idle worker becomes the keeper."""
        if self.keeper is None:
            self._wake_one()
        elif due < self.keeper_due:
            self.keeper.set()

    @property
    def _looks_down(self) -> bool:
        """A connection was refused after the latest answer (see ``_refused``)."""
        return self.refused_since > self.last_answer

    def _finished_one(self) -> None:
        self.outstanding -= 1
        held = len(self.held)
        if held:
            self._check_held()
        if ((self.outstanding == held and (self.rows_done or self._looks_down))
                or self.rows_out < sys.maxsize):
            # Nothing left but rows held (the idle workers end), or no row in flight to probe
            # the endpoint that looks down with (the next row does), or a row out fewer while
            # the server fails everything (the next row may start).
            self._wake_workers()

    def stop(self, error: StopJob) -> None:
        """Stop taking rows; what is in flight may finish, nothing new is sent."""
        if self.stop_error is None:
            self.stop_error = error
        self.stopping = True
        self.stopped.set()
        self.limiter.lift_pause()  # the rows waiting out a 429 are left to do, now
        for limiter in (self.split or {}).values():
            limiter.lift_pause()
        for scope in self.pacing:  # and those waiting for the rate's next permit
            scope.cancel()
        self._open_gate()  # and those waiting on a probe
        self._wake_workers()

    # -- a server away behind its gateway: one probe at a time

    async def _through_gate(self) -> bool:
        """Wait while the gate is shut and another request probes; True if this one is the
        probe (the caller then calls ``_probe_back`` when it is done, whatever its end)."""
        while (gate := self.gate) is not None and not self.stopping:
            if not self.probing:
                self.probing = True
                return True
            await gate.wait()
        return False

    def _turned_away(self, status: int, retry_after: float | None, sent_at: float) -> None:
        """A gateway's 502/503/504, nothing answered since its request was sent at
        ``sent_at``. The server is away (``_shut_gate``) when nothing has answered in the run
        yet, or when another such answer came since the latest answer. One alone, turned away
        at once while the others are answered (a gateway's "overloaded"), is its row's own:
        the row waits its retry-after, not the job."""
        if (self.gate is not None or self.last_answer == -math.inf
                or self.last_answer < self.turned_away_at) and not self._one_model_away():
            self._shut_gate(status, retry_after, sent_at)
        self.turned_away_at = time.perf_counter()

    def _one_model_away(self) -> bool:
        """In a job whose rows ask models of their own, whether every refusal since the
        latest answer was a gateway's 502/503/504 to rows of one model, and another model has
        answered a request sent since that model's refusals began (not one sent before, which
        a gateway going away answers after): its upstream away, not the gateway, whose
        other models go on being asked (``_turned_away``, ``_fresh_probe``). Taken for the
        server away, its rows shut the job to one probe at a time, the probe nearly always one
        of them, so no other model was asked, nor answered: a job whose one model went down
        mid-run sent nothing else after, and stopped at the outage's end with the other
        models' rows unsent. Without another model answering (a job whose rows all ask one,
        an input sorted by model), the gateway is away: its outage is waited out."""
        model = self._lone_refused_model()
        return model is not None and self._others_answered_since(model)

    def _lone_refused_model(self) -> str | None:
        """In a job whose rows ask models of their own, the one model every refusal since the
        latest answer was for (a gateway's 502/503/504 to its rows); None for none, several,
        or a refusal no model's (a connection refused)."""
        models = self.refused_models
        if not (self.models_vary and self.last_refusal > self.last_answer
                and len(models) == 1):
            return None
        (model,) = models
        return model

    def _others_answered_since(self, model: str) -> bool:
        """Whether another model has answered a request sent since ``model``'s refusals
        began (not one sent before, which a gateway going away answers after): its
        ``alone_from``, kept by ``_answered``."""
        return model in self.alone_from

    def _shut_gate(self, status: int, retry_after: float | None, sent_at: float) -> None:
        """A gateway's 502/503/504 (asking for ``retry_after`` s, or not), and nothing sent
        since the request at ``sent_at`` was answered: the server is away. Every new send
        waits as asked, and then one request goes at a time until one is answered
        (``_probe_back`` spaces them), rather than every row in flight and every new one
        asking again each time (a 4 s outage at concurrency 64 drew 500 503s for 300 rows)."""
        if retry_after is not None:
            self.limiter.pause(min(retry_after, self.policy.max_retry_after_s),
                               f"a {status}'s retry-after")
        if self.gate is None:
            self.gate = anyio.Event()
            self.gate_from = sent_at

    def _probe_back(self) -> None:
        """The probe is done. Unless it was answered (which opened the gate), the next
        request in line probes, after the pause its answer renewed, or ``PROBE_EVERY_S`` when
        it renewed none (a 502 without a retry-after, a refused connection, a timeout): never
        one right after another."""
        self.probing = False
        if (gate := self.gate) is not None:
            if self.limiter.paused_s <= 0.0:
                self.limiter.pause(PROBE_EVERY_S, "the wait between probes of a server away")
            self.gate = anyio.Event()
            gate.set()

    def _open_gate(self) -> None:
        if (gate := self.gate) is not None:
            self.gate = None
            gate.set()

    def _next_item(self) -> _Work | None:
        """The next request to send, or None when there is none now."""
        if self.retries:
            return self.retries.popleft()
        if self.parked_rows and (item := self._unpark()) is not None:
            return item
        if self.outstanding > len(self.held) and self._looks_down:
            if (scout := self._scout()) is not None:
                self.outstanding += 1
                return scout
            if not self._fresh_probe():
                return None  # the endpoint looks down: the rows started find out when it is back
        if self.outstanding - len(self.held) >= self.rows_out:
            return None  # the server fails everything: the rows started go on (_server_error)
        if self.passed:  # rows a scout went past, first
            item = self.passed.popleft()
            self.passed_tokens -= item.prompt_estimate
            if not self.passed and self.input_done:
                self._rows_ended()
        elif (item := self._read_row()) is None:
            return None
        self.outstanding += 1
        return item

    def _rows_ended(self) -> None:
        self.rows_done = True
        if self.held:
            self._check_held()

    def _scout(self) -> _Work | None:
        """In a job whose rows ask models of their own, while a gateway's 502/503/504 to rows
        of one model alone and nothing answered since hold the job to one probe at a time
        (the server taken for away): the next row of another model, sent beside the probes
        (``_work``), the rows of that model it goes past kept in their order (``passed``) for
        when the job goes on. Answered, the refusals were that model's upstream away, not the
        gateway (``_one_model_away``); refused too, the gateway is away, waited out. An input
        sorted by model whose first model was down was waited out with every probe one of its
        rows, no other model asked, and stopped at the outage's end with every row left to
        do (the rerun met the same rows first). One scout at a time, at most
        ``PASS_MAX_ROWS`` rows (``PASS_MAX_TOKENS``) gone past; None when there is none to
        send."""
        if self.scout is not None or self.input_done:
            return None
        model = self._lone_refused_model()
        if model is None or self._others_answered_since(model):
            return None  # not one model's alone, or known to be (new rows start)
        passed = self.passed
        while (len(passed) < PASS_MAX_ROWS and self.passed_tokens < PASS_MAX_TOKENS
               and (item := self._read_row()) is not None):
            if item.model != model:
                self.scout = item
                return item
            passed.append(item)
            self.passed_tokens += item.prompt_estimate
        return None

    def _read_row(self) -> _Work | None:
        """The next row of the input to send, its invalid rows recorded as failed on the way;
        None at the input's end (``input_done``), or where it broke (the job stops)."""
        plan = self.plan
        while not self.input_done:
            try:
                key, row, spent, resent = next(self.rows)
            except StopIteration:
                self.input_done = True
                if not self.passed:
                    self._rows_ended()
                break
            except BatchrunnerError as e:
                # The input broke mid-run: finish and save what is in flight, then stop.
                self.input_done = True
                self._rows_ended()
                self.stop(StopJob(f"{e}; the rows finished so far are saved"))
                break
            if math.isnan(spent):  # no record from an earlier run
                spent = 0.0
            guessed = plan.unreported.get(key, 0.0) if plan.unreported else 0.0
            digest = self.row_hash(row)
            item, reason = make_work(plan, key, row)
            if plan.batch_unrecorded:
                self._batch_checks_changed()
            if item is None:
                self.record(Outcome(key=key, status="failed", error_type="invalid_row",
                                    error_message=f"not sent: {reason}",
                                    earlier_cost_usd=spent or None, finished_at=time.time(),
                                    row_hash=digest, unreported_usd=guessed or None))
                continue
            item.earlier_usd = spent
            item.unreported_usd = guessed
            item.resent = resent
            item.row_hash = digest
            if item.prompt_estimate + item.completion_max > MIN_CONTEXT_WINDOW:
                self._check_context(item)  # may not fit: the model's window looked up
            if plan.builder is None:  # a batch row: its body's own settings
                if item.checks is not None and item.checks.warning:
                    self._warn_row(key, item.checks.warning)
                for warning in body_warnings(item.body):
                    self._warn_row(key, warning)
                if not item.completion_max and plan.job.limits.max_cost_usd is not None:
                    self._warn_row(key, _unbounded_budget(
                        "the body sets no max_completion_tokens (or max_tokens)",
                        "max_completion_tokens in the bodies"))
            elif plan.builder.rows_vary:  # a model, body fields of the row's own
                for warning in plan.builder.row_warnings(item.body):
                    self._warn_row(key, warning)
            return item
        return None

    def add_workers(self) -> None:
        """Start workers up to ``target_workers``; none once the run is over for them (what
        ends a worker: see ``_work``), or their group has ended."""
        if self.tasks is None or self.stopping or (self.rows_done and self.outstanding == 0):
            return
        while self.workers < self.target_workers:
            self.workers += 1
            self.tasks.start_soon(self.work)

    async def work(self) -> None:
        try:
            await self._work()
        finally:
            self.workers -= 1
            if self.parked_rows and self.keeper is None:
                self._time_permits()  # it was the keeper, or would have been

    async def _work(self) -> None:
        woken = False
        while not self.stopping and self.workers <= self.target_workers:
            item = self._next_item()
            if woken:  # off to work, it may have been the keeper (or woken to be): another is
                woken = False
                if item is not None and self.parked_rows and self.keeper is None:
                    self._time_permits()
            if item is None:
                if self.stopping or (self.rows_done and self.outstanding == 0):
                    return
                # Rows are in flight, waiting out a backoff or parked: until there is work.
                await self._idle()
                woken = True
                continue
            if self.held_models and item.model in self.held_models:
                if item is self.alone:  # held: the turn goes on, not kept while it waits
                    self._alone_back(culprit=False)
                self._hold(item, None)  # its model was refused: not sent until it is known why
                if len(self.held) % 256 == 0:
                    await anyio.lowlevel.checkpoint()  # the rows in flight are answered meanwhile
                continue
            if (self.parking and item.permit is None
                    and (item := self._park(item)) is None):  # parked: the worker goes on
                if self.parked_rows % 256 == 0:
                    await anyio.lowlevel.checkpoint()
                continue
            alone = item.falls is not None and self._fell_often(item)
            if alone:
                if self.alone is None:
                    self.alone = item
                elif self.alone is not item:  # another row cut in the server's falls is out
                    self.alone_waiting.append(item)
                    self.counts.retrying += 1
                    continue
                sent = self.counters["sent"]  # its requests are counted apart too
            reserved = self._reserve(item) if self.budget is not None else 0.0
            if reserved is None:
                if alone:
                    self._alone_back(culprit=False)
                continue
            probe = False
            outcome = retry_in = None
            try:
                if self.gate is not None and item is not self.scout:  # a scout goes beside
                    probe = await self._through_gate()
                outcome, retry_in = await self.attempt(item)
            finally:
                self.reserved -= reserved
                if probe:
                    self._probe_back()
                if item is self.scout:
                    self.scout = None
                if alone:
                    self.counters["sent_alone"] += self.counters["sent"] - sent
                    if retry_in is None:  # done with, as far as this run goes
                        self._alone_back(culprit=outcome is not None and outcome.status != "ok"
                                         and outcome.error_type in CUT_KINDS)
            if outcome is not None:
                if item.cut:  # failed at its cut (a try of its own): not to send again
                    item.cut = False
                    self.counters["cut_left"] -= 1
                self.spent += outcome.cost_usd or 0.0
                self.record(outcome)
                self._finished_one()
                if self.failing is not None:
                    self._fail_fast(outcome, item)
            elif retry_in is not None and not self.stopping:
                assert self.tasks is not None
                self.counts.retrying += 1
                self.tasks.start_soon(self._requeue, item, retry_in)
            elif not item.held and not item.parked:
                self.counters["attempts"] += item.attempts
                self._finished_one()  # abandoned: the job is stopping

    def record(self, o: Outcome) -> None:
        """Buffer one finished row for the journal and count it."""
        journal = self.journal
        journal.add(o)
        counts = self.counts
        self.recorded += 1
        counts.tokens += o.total_tokens or 0
        counts.cost_usd += o.cost_usd or 0.0
        if o.cost_usd is None and (o.status == "ok" or o.prompt_tokens is not None):
            counts.cost_unknown += 1  # paid for (ok, or billed: its reply reported usage)
        if o.status == "ok":
            counts.ok += 1
            if o.finish_reason == "length" or (o.choices and CHOICE_CUT in o.choices):
                self.counters["length"] += 1
        else:
            counts.failed += 1
            self.failed_kinds[o.error_type] += 1
        counts.projected_usd = self.plan.prior_cost + counts.cost_usd / self.recorded * self.to_do
        self.progress.update(counts, 1)
        if len(journal) >= FLUSH_EVERY_ROWS:
            self.flush_wanted.set()

    def _fail_fast(self, o: Outcome, item: _Work) -> None:
        """Stop when the run's first rows sent all fail the same way and none is ok: a setting
        of the job is wrong, and the rest of the input would fail alike. Rows sent again
        (``--retry-failed``, ``--rerun-where``) do not count: they may have failed for
        themselves. Rows sent again as their text changed count, as new rows do: their
        requests are new, made as the job's settings make them. A prompt over the model's
        context, or one a content filter refused (``_ROWS_OWN_400``), is the row's own. In a
        job whose rows ask models of their own, failures of one model may be that model's (one
        the gateway does not have): its rows are held until another model answers, as a
        refused model's are, and the job stops only if none does, or if another model's first
        rows fail alike too."""
        assert self.failing is not None
        if o.status == "ok":
            self.failing = None  # something works: failures from here on are the rows'
            return
        model = item.model
        if item.resent or model in self.held_models or model in self.own_failures or (
                o.error_type == "http_400" and _ROWS_OWN_400.search(o.error_message or "")):
            return
        failing = self.failing
        failing[o.error_type or "failed"] += 1
        if self.models_vary:
            self.failing_models.add(model)
        if len(failing) == 1 and failing.total() >= FAIL_FAST_ROWS:
            self.failing = None
            down = False  # the endpoint's error, nothing in the job to fix
            if o.error_type == "timeout":
                fix = ("raise --timeout (timeout_s) if answers take longer than it allows, or "
                       "wait for the endpoint to recover")
            elif o.error_type == "rate_limited":
                fix = "lower the rate (--rpm, --concurrency), or wait for the limit to reset"
            elif (o.error_type == "connection_reset" and self.last_answer == -math.inf
                  and self.client.url.startswith("http://")):
                # Nothing ever answered, every connection closed: a server of TLS's only.
                fix = ("if the endpoint serves HTTPS, its base URL must start with https:// (a "
                       "server that speaks TLS closes a plain-HTTP connection so); else wait "
                       "for it to recover")
            elif o.error_type in self.transient:
                down = True
                fix = ("wait for the endpoint to recover (a server error on every try: nothing "
                       "in the job to fix)")
            else:
                fix = "fix what it names"
            first = f"the first {failing.total()} rows to finish"
            if self.own_failures:  # the rows counted are the other models'
                first = (f"the rows of {', '.join(sorted(self.own_failures))} failed as that "
                         f"model's own, then the first {failing.total()} other rows to finish")
            # What had been sent: the rows' retries too, which outnumber the rows failed.
            sent, flying = self.counters["sent"], self.counts.in_flight
            tries = self.policy.max_attempts
            sent_said = f"{sent:,} request{'' if sent == 1 else 's'} sent by then"
            if o.attempts > 1:  # retried: the requests outnumber the rows
                sent_said += f", a row tried up to {tries} time{'' if tries == 1 else 's'}"
            left = "; none was sent after"
            if flying:
                left += (f" (the {flying:,} in flight let finish)" if flying > 1
                         else " (the one in flight let finish)")
            if self.counts.retrying:
                left += (f", and the {count_rows(self.counts.retrying)} waiting to retry were "
                         "left to do")
            stop = AllFailing(
                f"{first} all failed with {o.error_type} and "
                f"none succeeded ({o.error_message}), {sent_said}{left} — {fix}, then run "
                "the job again with --retry-failed",
                endpoint_down=down)
            if len(self.failing_models) == 1 and not self.held_models and not self.own_failures:
                # Counted afresh for the other models: their first rows failing alike too is
                # the job's setting, not a model's.
                self.failing, self.failing_models = Counter(), set()
                if self.answered_models - {model}:  # this run's or an earlier one's
                    self.own_failures.add(model)  # other models answer: its rows' own failures
                    return
                self.held_models[model] = stop  # until a model answers (_release_held)
                self._check_held()
                return
            self.stop(stop)

    def _check_context(self, item: _Work) -> None:
        """Warn (before sending) about a prompt that looks too long for the model."""
        need = item.prompt_estimate + item.completion_max
        if need <= MIN_CONTEXT_WINDOW:
            return  # fits any chat model: no lookup
        model = item.model
        window = self.plan.prices.context_window(model)
        if window and need > window:
            self.counters["over_context"] += 1
            if self.counters["over_context"] <= MAX_ROW_WARNINGS:
                self.progress.write(
                    f"batchrunner: warning: {self.plan.row(item.key)}: about {need:,} tokens with "
                    f"max_tokens, more than {model}'s context window ({window:,}); the "
                    "server will likely refuse it")

    def _batch_checks_changed(self) -> None:
        """The first batch row taken, or the first that asks for other checks: recorded in
        ``job.json`` before it is sent, so a run killed later leaves the record true."""
        _settle_batch_checks(self.plan)
        _write_meta(self.plan)

    def _warn_row(self, key: str, warning: str) -> None:
        """Say once (before sending) what a batch row's settings leave out."""
        if warning in self.warned or len(self.warned) >= MAX_ROW_WARNINGS:
            return
        self.warned.add(warning)
        self.progress.write(f"batchrunner: warning: {self.plan.row(key)}: {warning}")

    def _estimated_cost(self, item: _Work) -> float | None:
        """What the request will cost at most, as far as it can be told before the reply: at
        the price of the model asked for, or of the one a gateway answered it with so far, at
        the service tier it asks for, with
        the fee of a request that asks for search billed per request (``search_requested``)
        where the job prices it, and the most a reply's search units have cost so far; a
        spoken answer's tokens at the output-audio price (``audio_asked``)."""
        prompt, completion = self._tokens(item)
        model = item.model
        priced = self.routed.get(model, model)
        prices = self.plan.prices
        cost = prices.cost(priced, prompt_tokens=prompt, completion_tokens=completion,
                           service_tier=tier_asked(item.body),
                           audio_completion_tokens=completion if audio_asked(item.body) else None)
        if cost is None:
            return None
        if search_requested(item.body) is not None:
            # Unpriced, the first reply that needs the fee stops the job (_unpriced_search);
            # one whose usage counts search units instead is priced per unit.
            price = prices.price(priced)
            if price is not None and price.search_request is not None:
                cost += price.search_request
        search = self.search_usd.get(model) if self.search_usd else None
        return cost if search is None else cost + search

    def _reserve(self, item: _Work) -> float | None:
        """Hold the request's estimated cost against the budget; None (and stop) if it won't fit."""
        assert self.budget is not None
        model = item.model
        est = self._estimated_cost(item)
        if est is None:
            self.stop(BudgetExceeded(
                f"max_cost_usd is set but no price is known for model {model!r}; add "
                f"[prices.\"{model}\"] to a job file (prices are set only there) so the "
                "budget can be kept", price_missing=True))
        elif self.spent + self.reserved + est > self.budget:
            held = (f" and {format_usd(self.reserved)} held for the requests in flight"
                    if self.reserved else "")
            # Given on the command line, it is what to raise: the job file's is overridden.
            where = ("--max-cost" if "max_cost_usd" in self.plan.job.options
                     else "it (or --max-cost)")
            self.stop(BudgetExceeded(
                "budget reached: the next request could pass max_cost_usd "
                f"{format_budget(self.budget)} ({format_usd(self.spent)} spent{held} when it "
                f"stopped); raise {where} and rerun to continue",
                # The room a rerun needs beside its spend: as many requests in flight as the
                # run sends at once now, each held at its most, as this one.
                held_usd=max(self.reserved + est, est * self.target_workers)))
        else:
            self.reserved += est
            return est
        self.counters["attempts"] += item.attempts  # a retry not sent: its earlier tries were
        self._finished_one()
        return None

    async def _requeue(self, item: _Work, delay: float) -> None:
        with anyio.move_on_after(delay) as wait:
            if item.last_refusal > self.answered_sent:  # waiting out an outage: _answered
                self.refused_waits.add(wait)
            await self.stopped.wait()
        self.refused_waits.discard(wait)
        self.counts.retrying -= 1
        if self.stopping:
            self.counters["attempts"] += item.attempts
            self._finished_one()
        else:
            self._due(item)

    def _due(self, item: _Work) -> None:
        """``item`` is to be sent again now, before new rows."""
        self.retries.append(item)
        # One worker sends it: each retry due woke every idle worker, all but one to find
        # nothing to do; with none idle, the keeper (a busy worker takes it otherwise). Over
        # the target (the concurrency lowered), a worker woken ends instead: all are.
        if self.workers > self.target_workers:
            self._wake_workers()
        elif self.idle:
            self._wake_one()
        elif self.keeper is not None:
            self.keeper.set()

    def _alone_back(self, *, culprit: bool) -> None:
        """The row sent alone (cut in the server's falls) is done with: the next one waiting
        goes, the one cut in the most falls first (a row that brings the server down is cut
        in every fall it brings), of those the one whose requests were cut soonest after they
        were sent (it is cut as soon as the server has it; the rows beside it had been out a
        while, but those sent with it); or, when it failed cut again (the ``culprit``: alone,
        it brought the server down), all of them, every fall so far forgiven. (Rows sent alone
        go one after another, beside the others: a short job of rows cut in two restarts with
        no row to blame, 46 of 200 at 1 s an answer, took 51 s where it took 13 s and failed 10
        of them; letting them all go after two answered failed 19 beside a crashing row.)"""
        if culprit:
            self.forgiven = self.fall  # the rows cut beside it, in flight or waiting
            if self.alone is not None and self.alone.falls is not None:
                self.blamed.update(self.alone.falls.cut_in)
        self.alone = None
        waiting = self.alone_waiting
        if not waiting or self.stopping:
            return
        if culprit:
            self.counts.retrying -= len(waiting)
            while waiting:
                self._due(waiting.popleft())
            return
        most = max(waiting, key=lambda w: (self._shared(w), -w.falls.out_till_cut
                                           if w.falls is not None else 0.0))
        waiting.remove(most)
        self.counts.retrying -= 1
        self._due(most)

    def _cut_in_fall(self, item: _Work, sent_at: float) -> None:
        """``item``'s request, sent at ``sent_at``, was cut by its connection breaking
        (CUT_KINDS): a fall of the server, the same one as the cuts before it unless an answer
        came since them."""
        if self.last_answer > self.fall_after:
            self.fall += 1
            self.fall_after = self.last_answer
            self.fall_rows = 0
        falls = item.falls
        if falls is None:
            falls = item.falls = _Falls()
        if not falls.cut_in or falls.cut_in[-1] != self.fall:
            falls.out_till_cut += time.perf_counter() - sent_at  # not those sent into the fall
            falls.cut_in.append(self.fall)
            if item is self.alone:
                falls.alone += 1
            self.fall_rows += 1
            if self.fall_rows == 2:
                self.shared_falls.add(self.fall)

    def _fell_often(self, item: _Work) -> bool:
        """``item``'s requests were cut in ALONE_AFTER_FALLS falls of the server or more
        that cut other rows too."""
        assert item.falls is not None
        return (self.policy.max_attempts > ALONE_AFTER_FALLS
                and self._shared(item) >= ALONE_AFTER_FALLS)

    def _shared(self, item: _Work) -> int:
        """The falls ``item``'s requests were cut in that cut other rows' too, since the
        latest a row sent alone was found to bring (``forgiven``)."""
        shared, forgiven = self.shared_falls, self.forgiven
        return sum(f > forgiven and f in shared for f in item.falls.cut_in) if item.falls else 0

    def _tries_given_back(self, item: _Work) -> int:
        """``item``'s tries cut in falls that a row sent alone was since found to bring
        (``blamed``: those it was cut in too): not the row's own, so not counted against
        max_attempts. (A row whose requests are cut by themselves, a stream broken for it
        each time, gets as many more tries as it spent in such falls.)"""
        falls, blamed = item.falls, self.blamed
        if falls is None or not blamed:
            return 0
        return sum(f in blamed for f in falls.charged)

    def _tokens(self, item: _Work) -> tuple[int, int]:
        """The request's estimated prompt tokens, and its completion tokens at most: its
        max_tokens for each of its ``n`` choices, else the replies' running mean for a choice
        asked (``completion_estimate``) times its ``n``, else a guess."""
        if item.completion_max:
            completion = item.completion_max * item.n
        elif self.learnt_completions:
            completion = int(self.completion_estimate * item.n)
        else:
            completion = DEFAULT_COMPLETION_ESTIMATE * item.n
        return int(item.prompt_estimate * self.prompt_ratio), completion

    def _charge(self, item: _Work) -> int:
        prompt, completion = self._tokens(item)
        return prompt + completion

    async def attempt(self, item: _Work) -> tuple[Outcome | None, float | None]:
        """One try at ``item``: its outcome, or the delay before the next try."""
        while True:  # loops only on 429s, which wait on the limiter, not on a backoff
            if self.stopped.is_set():  # a 429'd row after a stop: left to do, not paused
                return None, None
            permitted, item.permit = item.permit, None  # its model's permit taken (_park)
            charge = self._charge(item) if permitted is None else permitted
            # A model's first request goes past the pace learnt from the others' answers: a
            # job whose slow model's 50 rows came first sent its fast model's rows at the slow
            # one's pace until they were through (10 s), its own limit unheard of till then.
            first = (self.models_vary and self.split is None
                     and item.model not in self.sent_models)
            if first:
                self.sent_models.add(item.model)
            # A row tried before waits here to retry (a 429's pause, the pace), as the log says:
            # it said "0 requests in flight" of a job's 2 rows 429'd, waiting out the pause.
            again = bool(item.attempts or item.rate_limited or item.refusals)
            if again:
                self.counts.retrying += 1
            try:
                if self.split is not None or self.limiter.paces:  # a wait a stop cancels
                    with anyio.CancelScope() as pacing:
                        self.pacing.add(pacing)
                        try:
                            if first:
                                await self.limiter.go_past(charge)
                            else:
                                await self.limiter.acquire(charge)
                            if self.split is not None:  # and the model's own limiter's
                                own = self._model_limiter(item)
                                if permitted is None and not own.take(charge):
                                    # Rows that waited here as the job split, or a row 429'd:
                                    # they wait for the model's permit parked, not in a worker.
                                    if self.parking and own.paces and self._park_again(item):
                                        self.limiter.give_back(charge)  # taken again when sent
                                        return None, None
                                    await own.acquire(charge)
                        finally:
                            self.pacing.discard(pacing)
                elif self.limiter.paused_s > 0.0:  # no rate: a 429's pause, which a stop lifts
                    await self.limiter.acquire(charge)  # (no scope a request, nor a call unpaused)
                if self.stopping:
                    self._refund(item, charge)
                    return None, None
            finally:
                if again:
                    self.counts.retrying -= 1
            item.attempts += 1
            # Every request, 429'd or cut off at a stop included; a 429 says which it was.
            self.counters["sent"] += 1
            if item.cut:  # sent again after a cut
                item.cut = False
                self.counters["cut_left"] -= 1
            sent_at = time.perf_counter()
            if not item.started:
                item.started = sent_at
            counts = self.counts
            counts.in_flight += 1  # what is left of it when the run ends was cut off
            try:
                try:
                    res = await self.client.complete(item.body, None if not item.timeouts else (
                        self.client.timeout_s * min(TIMEOUT_GROWTH ** item.timeouts,
                                                    MAX_TIMEOUT_X)))
                finally:
                    if self.client.simulator_answered and not self.simulated:
                        self._served_by_simulator()
            except asyncio.CancelledError:
                # Cut off at a stop, the time given to the requests in flight over: the server
                # may bill it (the summary says so), and the row is sent again by the next run.
                # Counted at its estimate, as a try cut in an outage is, for the reports and
                # the next runs' budgets (the run's end writes the record).
                self._maybe_billed(item)
                raise
            except StopJob as e:
                counts.in_flight -= 1
                self._refund(item, charge)
                if self.drop_simulated:
                    return None, None  # left to do
                if isinstance(e, EndpointChanged):
                    if not e.simulator:  # a real endpoint's answer, not kept: billed
                        self.counters["real_unkept"] += 1
                        self._unkept_answer(item, e.answer)
                    self.stop(self._endpoint_changed(e))
                    return None, None  # left to do
                model = item.model
                if not (self.models_vary and isinstance(e, AuthError) and e.model_access
                        and model and model not in self.answered_models):
                    self.stop(e)
                    return None, None
                # A 403 for a model no reply has come from: the key may lack that model only.
                refused = Outcome(
                    key=item.key, status="failed", attempts=item.attempts,
                    rate_limited=item.rate_limited, error_type="model_refused",
                    error_message=f"the key is refused for {model}, while other models "
                    f"answered it: {e}", earlier_cost_usd=item.earlier_usd or None,
                    latency_ms=round((time.perf_counter() - sent_at) * 1000.0, 3), model=model,
                    finished_at=time.time(), row_hash=item.row_hash,
                    unknown_tries=item.unknown_tries,
                    unreported_usd=item.unreported_usd or None,
                )
                self._answered(sent_at)  # an HTTP answer: the endpoint is reachable
                if not self.answered_models:
                    self.held_models.setdefault(model, e)
                    self._hold(item, refused)
                    return None, None
                self.counters["attempts"] += item.attempts
                return refused, None
            except RequestError as e:
                counts.in_flight -= 1
                self._refund(item, charge)
                if self.drop_simulated:
                    return None, None  # left to do
                if e.status is not None and e.error_type != "rate_limited":
                    self.only_429s_from = math.inf  # an answer, not a 429 (_only_429s)
                # A row sent alone, cut in ALONE_FALLS_TO_FAIL falls: the one that brings the
                # server down, failed now, not waited out as a restart's cut nor tried again.
                culprit = False
                if e.error_type in CUT_KINDS:
                    self._cut_in_fall(item, sent_at)
                    culprit = (item is self.alone and item.falls is not None
                               and item.falls.alone >= ALONE_FALLS_TO_FAIL)
                # A 404 naming the job's one model after rows of this run were answered with
                # it: a router whose server for the model is away (restarting), as some answer
                # rather than with a 502 or 503, not a name mistyped, which no row was ever
                # answered with: waited out as a gateway's 503 is.
                away = (e.status == 404 and not self.models_vary
                        and (self.counts.ok > self.plan.prior_ok or self.model_answered_here)
                        and bool(item.model) and _names_model(item.model, e.message))
                if away:
                    e.retryable = True  # the last rows too are tried as for a 503
                elif e.model_not_served and not self.models_vary and (
                        e.status != 503 or not (self.counts.ok > self.plan.prior_ok
                                                or self.model_answered_here)):
                    # The job's one model is not among those the endpoint serves (a box
                    # restarted under another --served-model-name; a gateway's 503 "no
                    # channel" for a name mistyped): every row would fail so, or wait out an
                    # outage that is none. Stopped at the first such answer, no row failed:
                    # the rerun with the right name sends them all. A gateway's 503 for a
                    # model that has answered the job is its upstreams away: waited out.
                    self._answered(sent_at)
                    self.stop(SettingRefused(
                        f"{e.message}, then rerun (no row was failed for it)"))
                    return None, None
                if e.status == 400 and (window := self._under_context(e.message)):
                    # The job's max_tokens alone fills the model's context (vLLM's
                    # --max-model-len): no row can be answered, whatever its prompt.
                    self._answered(sent_at)
                    self.stop(SettingRefused(
                        f"{e.message} — max_tokens ({self.plan.job.request.max_tokens:,}) is "
                        f"not under the model's context length ({window:,}): lower max_tokens "
                        "(--max-tokens), then rerun (no row was failed for it)"))
                    return None, None
                self.errors_seen[e.error_type] += 1
                # A gateway's 502/503/504 while rows are left to start, or before any answer:
                # the server behind it may be away (restarting, still loading its model), as
                # when a connection is refused. Once the endpoint has answered and the input
                # is read through, the rows left are all there is to tell a server away from
                # rows it fails, so they are counted as ever. Nor is one that is the row's
                # model's own, in a job of many (_models_own).
                # A scout's is the gateway's, whatever its model's answers say: it asks
                # whether the gateway serves another model (``_scout``).
                gateway = (e.status in GATEWAY_STATUSES or away) and (
                    self.last_answer == -math.inf or not self.rows_done) and not (
                    self.models_vary and item is not self.scout
                    and self._models_own(item.model, e, sent_at))
                cut = False  # cut with no answer in an outage (a connection_reset)
                if e.status in GATEWAY_STATUSES or away:  # not the endpoint's: no end of an outage
                    if gateway:
                        lonely, later = item.lonely, item.last_refusal > 0
                        self._refused(item, model=item.model or None)
                        if later and item.lonely == lonely:  # nothing answered between
                            if item.turned_away is None:
                                item.turned_away = []
                            item.turned_away.append(sent_at)
                        self.refused_by = f"HTTP {e.status}: {e.message}"
                elif e.status is not None:
                    self._answered(sent_at, item)
                    if e.status >= 500:
                        self._server_error()
                elif e.error_type == "connection_error":
                    self.counters["not_connected"] += 1  # counted as sent: it was tried
                    self._refused(item)
                    self.refused_by = ""
                    self.refused_cut = False
                elif (e.error_type == "connection_reset" and not culprit
                        and (self.last_answer > -math.inf or self.answered_before)
                        and self._cut_with_others(item.key)  # recorded, even a row's own
                        and self.answered_sent < sent_at):
                    # Cut with no request sent after it answered (answers to requests sent
                    # before it, a queue ahead of it, do not count: vLLM answers a few at a time
                    # and queues the rest), by an endpoint that answered before, as another row
                    # was: a box restarting (its requests in flight cut,
                    # then its port, a container's, taking connections and closing them until
                    # the model is loaded), waited out as a refusal is. A row's own cut (while
                    # others are answered, or it alone is cut) is a try of it, as ever, and is
                    # recorded too: the restart's next cut, of a row sent into it, is one of
                    # many then, where it was taken for that row's own try as well.
                    cut = True
                    self.counters["cut_unanswered"] += 1
                    item.cut = True  # until it is sent again
                    self.counters["cut_left"] += 1
                    self._refused(item)
                    self.refused_by = ""
                    self.refused_cut = True
                elif e.error_type == "timeout":
                    item.timeouts += 1
                    if e.answer_begun:  # its stream had begun: the endpoint answers, slowly
                        self._answered(sent_at)
                    elif sent_at > self.cut_at and self._answered_since(item, sent_at):
                        self._queued_too_long()
                if item.falls is not None and not cut and e.error_type in CUT_KINDS:
                    # A try of it, given back if the fall is blamed: once a fall, however many
                    # times it is cut before an answer begins the next (a row whose own cuts
                    # came after the culprit failed was given each one back, and retried on).
                    charged = item.falls.charged
                    if not charged or charged[-1] != self.fall:
                        charged.append(self.fall)
                billed, searched = self._billed(item, e)
                if e.usage is None and (e.answer_begun or e.error_type in MAYBE_BILLED):
                    self._unbilled_try(item, e)
                if gateway:
                    if e.status and self.last_answer < sent_at:
                        self._turned_away(e.status, e.retry_after, sent_at)
                    # A try of the row (the gateway answered), but only those made while other
                    # requests were answered count against max_attempts: a row the server
                    # fails for itself fails as ever, while rows waiting out a restart do not.
                    if self._outage_over(item):
                        self._unreachable(item, e, self.outage_from)
                        return None, None  # not a failure of the row: left to do
                    if item.lonely < self.policy.max_attempts - 1:
                        self.counters["retries"] += 1
                        return None, backoff(item.refusals, self.policy, e.retry_after,
                                             self.rng, self._outage_cap())
                elif (e.error_type == "connection_error" or cut) and (
                        self.last_answer > -math.inf or self.answered_before):
                    # The endpoint answered in this run (or an earlier one), so it is there: a
                    # restart or a network blip is ridden out, and the request, which reached
                    # no server, is not a try of the row. Only a row refused again and again
                    # while others are answered fails (one server of several down, say).
                    item.attempts -= 1
                    if self._outage_over(item):
                        self._unreachable(item, e, self.outage_from)
                        return None, None  # not a failure of the row: left to do
                    if item.lonely < self.policy.max_attempts:
                        self.counters["retries"] += 1
                        return None, backoff(item.refusals, self.policy, None, self.rng,
                                             self._outage_cap())
                    item.attempts += 1
                elif e.error_type == "rate_limited":
                    self._observe(item, e.headers)
                    item.attempts -= 1  # 429s do not use up the error-retry budget
                    item.rate_limited += 1
                    self.counts.rate_limited += 1
                    self.counters["http_429"] += 1
                    if self.split is not None:
                        # Counted as answered, as its ok answers are: a request sent before
                        # the split (unsplit, counted nowhere) answered 429 after it counted a
                        # refusal with no request, and the storm's pace, learnt from the
                        # requests accepted, fell to a fraction of the limit (600 a minute:
                        # 24 learnt, raised 2 % a second from there).
                        own = self._model_limiter(item)
                        own.requests_sent += 1
                        own.requests_refused += 1
                        if self.reports:
                            self._refused_together(item.model)
                        if not own.paces:  # a limit no header says: a storm to learn from
                            self.parking = False
                    elif self.models_vary and not self.model_limits:
                        probe = self._probe(item)  # whose 429s are they? (_split_by_429s)
                        probe.requests_sent += 1
                        probe.requests_refused += 1
                    if (e.retry_after is not None and e.retry_after > self.policy.max_retry_after_s
                            and sent_at > self.long_wait_at):
                        self.long_waits += 1
                        self.long_wait_at = time.perf_counter()
                        if self.long_waits >= LONG_WAITS_TO_STOP:
                            self._wait_too_long(e, e.retry_after)
                            return None, None  # not a failure of the row: left to do
                    if self._only_429s(e):
                        return None, None  # not a failure of the row: left to do
                    # Every request waits out the server's advice, up to the longest wait a
                    # row's retry takes (an hour's "retry-after: 3600" held the whole job).
                    wait = min(e.retry_after, self.policy.max_retry_after_s) \
                        if e.retry_after is not None else backoff(1, self.policy, None, self.rng)
                    (self.limiter if self.split is None else self._model_limiter(item)).pause(
                        wait, "a 429's retry-after" if e.retry_after is not None
                        else "a 429 (no retry-after: a backoff)")
                    if item.rate_limited == 1:
                        continue
                    if item.rate_limited <= MAX_RATE_LIMIT_RETRIES:
                        # 429'd again: the advice did not do (a storm that says "retry-after:
                        # 0"). The row backs off on its own, more each time, so its retries
                        # span minutes, not the instant "0" in a loop takes; the others go on.
                        return None, backoff(item.rate_limited - 1, self.policy, e.retry_after,
                                             self.rng)
                    item.attempts += 1
                elif (e.error_type == "timeout" and item.timeouts >= 2
                        and self.last_answer == -math.inf):
                    self._silent(item, e)
                    return None, None  # not a failure of the row: left to do
                elif e.retryable and not culprit and (
                        item.attempts - self._outage_tries(item) < self.policy.max_attempts
                        or (item.falls is not None and item.attempts - self._tries_given_back(item)
                            < self.policy.max_attempts)):
                    self.counters["retries"] += 1
                    if billed:  # paid for, and sent again: spent now, and carried
                        self._billed_retry(item, billed)
                    elif billed is None and e.usage is not None:  # paid for, at a cost unknown
                        item.earlier_unknown = True
                        item.unknown_tries += 1
                    return None, backoff(item.attempts, self.policy, e.retry_after, self.rng)
                if (e.error_type == "connection_error" and item.refusals == 1
                        and self.last_answer < item.started):
                    # Its one refusal came on its last attempt (max_attempts = 1, say) and
                    # nothing has answered since it started: the request never reached a
                    # server, so it is tried once more, and a second refusal with nothing
                    # answering meanwhile tells an endpoint that is down from a failed row.
                    self.counters["retries"] += 1
                    return None, backoff(item.attempts, self.policy, None, self.rng)
                if (e.error_type == "connection_error" and item.refusals >= 2
                        and self.last_answer < item.refused_at):
                    self._unreachable(item, e, item.refused_at)
                    return None, None  # not a failure of the row: left to do
                self.counters["attempts"] += item.attempts
                if e.retryable:
                    self.transient.add(e.error_type)
                usage = e.usage or (None,) * 11
                said = e.message
                if item is self.alone and e.error_type in CUT_KINDS and item.falls is not None:
                    # Every fall it was cut in, those it was alone in too (_shared counts
                    # those that cut other rows, since the last forgiven: 2 of 7 crashes)
                    falls = item.falls
                    said += (f" — cut in {len(falls.cut_in)} of the server's falls, the last "
                             f"{falls.alone} of them sent alone: this row may be what brings "
                             "the server down")
                return Outcome(
                    key=item.key, status="failed", attempts=item.attempts,
                    rate_limited=item.rate_limited, error_type=e.error_type,
                    error_message=said, prompt_tokens=usage[0],
                    completion_tokens=usage[1], total_tokens=usage[2], cached_tokens=usage[3],
                    cache_write_tokens=usage[7], reasoning_tokens=usage[4],
                    audio_prompt_tokens=usage[9], audio_completion_tokens=usage[10],
                    search_units=_search_units(usage[5], usage[6]), search_requests=searched,
                    cost_usd=None if item.earlier_unknown else billed,
                    earlier_cost_usd=item.earlier_usd or None,
                    # the last attempt's
                    latency_ms=round((time.perf_counter() - sent_at) * 1000.0, 3),
                    model=item.model or None, priced_as=item.model or None,
                    request_id=e.request_id, finished_at=time.time(), row_hash=item.row_hash,
                    unknown_tries=item.unknown_tries,
                    unreported_usd=item.unreported_usd or None,
                ), None
            counts.in_flight -= 1
            if self.drop_simulated:
                return None, None  # left to do
            self._answered(sent_at, item)
            self.long_waits = 0
            self.only_429s_from = math.inf
            return self._success(item, res, charge), None

    def _under_context(self, message: str) -> int | None:
        """The context length a 400's ``message`` names ("This model's maximum context length
        is 8192 tokens", as vLLM and OpenAI word it) when the job's one max_tokens, set for
        every row of its one model, is not under it; else None (the row's prompt too long)."""
        request = self.plan.job.request
        if (self.models_vary or not request.max_tokens
                or "max_tokens" in request.from_columns):
            return None
        said = _CONTEXT_LENGTH.search(message)
        window = int(said[1].replace(",", "")) if said else 0
        return window if 0 < window <= request.max_tokens else None

    def _hold(self, item: _Work, refused: Outcome | None) -> None:
        """Keep ``item`` (refused: its outcome; None: not sent) until a model answers."""
        item.held = True
        self.held.append((item, refused))
        self._check_held()

    def _check_held(self) -> None:
        """Stop when no answer can come any more to tell why the held rows' models were
        refused: nothing else is in flight or waiting and the input is read through, or too
        many rows are held."""
        held = len(self.held)
        if not self.stopping and (held >= HOLD_MAX_ROWS
                                  or (self.rows_done and self.outstanding == held)):
            self._refused_outright()

    def _refused_outright(self) -> None:
        models = list(self.held_models)
        first = self.held_models[models[0]]
        if isinstance(first, AllFailing):  # its first rows failed alike, and nothing answered
            self.stop(first)
            return
        names = ", ".join(models)
        why = str(first)
        if len(self.held) >= HOLD_MAX_ROWS:
            why += (f" ({len(self.held):,} rows asking for {names} were held, and no other "
                    f"model answered: if the key lacks {'it' if len(models) == 1 else 'them'} "
                    "only, leave those rows out of the input, then rerun)")
        elif len(models) > 1:
            why += f" (the key was refused for {names}, and no model answered it)"
        self.stop(AuthError(why, status=first.status))

    def _release_held(self) -> None:
        """A model answered: the key lacks the held rows' models only. The rows refused fail
        as ``model_refused``; the others are sent now (each gets its own answer), and so are
        the refused ones of a model that has answered since (their 403 was not the model's)."""
        held, self.held = self.held, []
        self.held_models.clear()
        for item, refused in held:
            item.held = False
            if refused is None or item.model in self.answered_models:
                self.retries.append(item)
            else:
                self.counters["attempts"] += item.attempts
                self.record(refused)
                self._finished_one()
        self._wake_workers()

    def count_held(self) -> None:
        """The end of a run: the attempts of rows still held, parked or waiting to be sent
        alone (the job stopped) are counted."""
        for item, _ in self.held:
            self.counters["attempts"] += item.attempts
        for queue in (*self.parked.values(), self.alone_waiting):
            for item in queue:
                self.counters["attempts"] += item.attempts

    def _answered(self, sent_at: float, item: _Work | None = None) -> None:
        """An HTTP answer (of any status) arrived to a request sent at ``sent_at`` (for
        ``item``, where its model's answers are counted): the endpoint is reachable, or was
        when it was sent."""
        down = self.refused_since > self.last_answer  # _looks_down, without its call
        self.last_answer = time.perf_counter()
        if item is not None and self.models_vary:
            self.model_answered[item.model] = self.last_answer
            if refused := self.model_refused_from:  # models turned away: alone?
                alone = self.alone_from
                if item.model in refused:  # answered: its refusals are over
                    del refused[item.model]
                    alone.pop(item.model, None)
                for other, since in refused.items():
                    if since < sent_at < alone.get(other, math.inf):
                        alone[other] = sent_at
        if sent_at > self.answered_sent:  # every answer: no max() call
            self.answered_sent = sent_at
        if self.gate is not None and sent_at >= self.gate_from:
            self._open_gate()  # the server is back
        if self.refused_unanswered and sent_at > self.last_refusal:
            if self.refused_unanswered > 1:  # back from an outage: the tries waiting are due
                for wait in self.refused_waits:
                    wait.cancel()
                self.refused_waits.clear()
            self.refused_unanswered = 0
        if down:
            self._wake_workers()  # new rows may be started again
        if self.mixes:
            self._mixed()

    def _served_by_simulator(self) -> None:
        """The first answer that says it comes from batchrunner's simulator served on its own,
        to a job sent to a URL: recorded in job.json before any answer of it is journaled, as
        for --simulator; a job whose rows done are a real endpoint's stops instead (their
        answers would mix), unless forced."""
        self.simulated = True
        plan = self.plan
        meta = plan.job_meta
        if self.mixes:  # forced from the simulator's answers to a URL: the simulator's too
            self.mixes = False
        elif meta["simulator"] is False:
            if plan.real_answers and not self.options.force:
                self.drop_simulated = True
                self.stop(StopJob(
                    f"the endpoint at {self._endpoint_shown()} is "
                    "batchrunner's simulator (batchrunner simulate), and the rows done in "
                    f"{_show(plan.out_dir)} were answered by a real endpoint: their answers "
                    "would mix, and none of its was kept — use another --output directory, "
                    "or pass --force to mix them"))
                return
            meta["simulator"] = "mixed" if plan.real_answers else True
        else:
            return
        # The URL it answered at, for a rerun to resume the rehearsal there (a run killed
        # before its end records no other).
        meta["answered_endpoint"] = _endpoint_id(self.client.url)
        _write_meta(plan)

    def _endpoint_shown(self) -> str:
        """The endpoint's base URL for a message: its password, query and fragment hidden
        (``shown_url``), and the API key, where the URL holds it, redacted."""
        return self.client.redact(shown_url(self.client.url.removesuffix("/chat/completions")))

    def _endpoint_changed(self, e: EndpointChanged) -> EndpointChanged:
        """What stops the run at an answer from another kind of endpoint than those before it
        (``e``), which is not kept: the same command stops again while that one serves."""
        plan = self.plan
        at = f"the endpoint at {self._endpoint_shown()}"
        if not e.simulator and plan.job_meta["simulator"] is True:
            said = (f"{at} no longer answers as batchrunner simulate, which answered the rows "
                    f"done in {_show(plan.out_dir)}: none of its answers now was kept (their rows "
                    "are left to do; what it billed for them counts in the job's cost) — to "
                    "run the job there, start afresh with another --output directory, or pass "
                    "--force to mix its answers with the simulator's")
        else:
            now, before = (("batchrunner simulate", "a real endpoint") if e.simulator
                           else ("a real endpoint", "batchrunner simulate"))
            said = (f"{at} answers as {now} now, where {before} answered this run before: "
                    "none of its answers now was kept (their rows are left to do) — rerun the "
                    "job once the endpoint it is meant for serves that URL")
        return EndpointChanged(said, simulator=e.simulator)

    def _mixed(self) -> None:
        """The first answer of a run forced to the other kind of endpoint: recorded before the
        answer is (journaled later), so job.json never says less than the journal holds."""
        self.mixes = False
        self.plan.job_meta["simulator"] = "mixed"
        _write_meta(self.plan)

    def _models_own(self, model: str, e: RequestError, sent_at: float) -> bool:
        """Whether a gateway's 502/503/504 to a row asking ``model`` (sent at ``sent_at``), in
        a job whose rows ask models of their own, is that model's, not a server away behind
        the gateway: when no reply has come from the model while the run's answers show other
        models served, unless the gateway is taken for away meanwhile (the gate shut by the
        refusals of models that answered, or of the scout: in an input sorted by model whose
        next model's rows met a whole outage, the scout's among them, they failed as its
        own); or when its message names the model (no channel for it), unless nothing has
        answered since it was sent after earlier answers: an outage's, then, whatever it says
        (a gateway whose upstreams are all away for a while says "no channel" for every model,
        and the models that answered before are waited for); or when the model is turned away
        alone (``_turned_away_alone``). Its rows' tries are then their own, and the other
        models' rows go on."""
        named = bool(model) and _names_model(model, e.message)
        if self.last_answer == -math.inf:
            return named
        if model not in self.answered_models and self.answered_models and self.gate is None:
            return True
        return (self.last_answer > sent_at and named) or self._turned_away_alone(model)

    def _turned_away_alone(self, model: str) -> bool:
        """Whether ``model``'s rows are turned away while the others' are answered: it has
        not answered since its refusals began, no other model's row was refused since the
        latest answer, and another model has answered a request sent since then (so not one
        a gateway going away answered after). A model that answered and then went down
        mid-run, while the other models answered slowly (1-3 s), had its rows' refusals
        taken for the gateway's, whose tries count only once a request sent since the row's
        last refusal is answered: at concurrency 8 its rows were sent up to 13 times of 3."""
        return self._others_answered_since(model) and not (
            self.last_refusal > self.last_answer and self.refused_models != {model})

    def _outage_tries(self, item: _Work) -> int:
        """``item``'s later tries turned away as the gateway's (a 502/503/504) with nothing
        answered since its try before (``turned_away``), sent before its model was seen
        turned away alone (another model's request sent later answered), or all of them
        while it is not: the gateway's outage, not the row's own, so not counted against
        max_attempts. After a whole outage whose models came back one at a time, the last
        one's rows failed at their first refusal after it, their probes in the outage
        counted."""
        sends = item.turned_away
        if not sends:
            return 0
        alone = self.alone_from.get(item.model, math.inf)
        return sum(1 for sent in sends if sent < alone)

    def _fresh_probe(self) -> bool:
        """One row alone is out, refused twice or more with nothing answered since (a job at
        concurrency 1, say): a new row starts, to tell a server away from a row its gateway
        turns away. Answered, the server is there, and the row's refusals count against its
        attempts; without it, a row the gateway always refused held the job for the outage's
        5 minutes, then stopped it with every later row unsent (and the rerun met that row
        first again). So, in a job whose rows ask models of their own, while the gateway has
        turned away one model's rows alone (``_one_model_away``): the others are asked."""
        item = self.refused_item
        return (item is not None and item.streak >= 2
                and self.outstanding - len(self.held) == 1) or self._one_model_away()

    def _cut_with_others(self, key: str) -> bool:
        """Record a cut of row ``key``'s request (no answer); whether another row's request
        was cut or refused since the latest answer too."""
        last = self.last_answer
        cuts = self.cuts
        if len(cuts) > 64:  # those before the latest answer tell nothing more
            for old in [k for k, at in cuts.items() if at <= last]:
                del cuts[old]
        cuts[key] = time.perf_counter()
        return (any(at > last for k, at in cuts.items() if k != key)
                or (self.last_refusal > last and self.refused_item is not None
                    and self.refused_item.key != key))

    def _refused(self, item: _Work, *, model: str | None = None) -> None:
        """An attempt of ``item`` could not connect (or its gateway turned it away, for its
        ``model`` where the job's rows ask models of their own)."""
        now = time.perf_counter()
        self.refused_item = item
        if self.models_vary:
            if self.last_answer > self.last_refusal:  # the one before this
                self.refused_models.clear()
            self.refused_models.add(model)
            if model is not None and model not in self.model_refused_from:
                self.model_refused_from[model] = now
        if item.last_refusal and self.answered_sent > item.last_refusal:
            item.lonely += 1  # a request sent since its previous refusal was answered
            item.streak = 0
        item.refusals += 1
        item.streak += 1
        self.refused_unanswered += 1
        item.last_refusal = self.last_refusal = now
        if not item.refused_at:
            item.refused_at = now
        if self.outage_from <= self.answered_sent:
            self.outage_from = now
        if self.last_answer < item.started and self.refused_since <= self.last_answer:
            # Nothing answered since the row started: the endpoint looks down. Until it
            # answers, no new row is started (the rows started retry on their own backoff),
            # or the workers would run through the input in failed first tries.
            self.refused_since = now

    def _outage_cap(self) -> float | None:
        """The longest wait for its next try of a row refused in an outage: OUTAGE_RETRY_S
        twice (full jitter draws half of it on average) for each row waiting it out. None
        (the row's own backoff) for a refusal alone among answers."""
        if self.refused_unanswered < 2:
            return None
        return 2.0 * OUTAGE_RETRY_S * (len(self.refused_waits) + 1)

    def _unreachable_s(self) -> float:
        """How long the endpoint has been out of reach, for the progress: in an outage (see
        ``outage_from``) and refused since the latest answer, since that answer or the outage's
        start (0: not). Answers to requests sent before the outage count here: a connection
        dropped among long requests that go on being answered is no outage to show."""
        if self.outage_from > self.answered_sent and self.last_refusal > self.last_answer:
            return time.perf_counter() - max(self.outage_from, self.last_answer)
        return 0.0

    def _outage_said(self) -> str:
        """What a stop says of an outage it comes in (a signal while the job waits for a server
        down): how long the endpoint has not been reached, and what it answered; "" if none."""
        down_s = self._unreachable_s()
        if not down_s:
            return ""
        if self.refused_by:  # its gateway answers for it
            what = (f"no answer from it for {down_s:.1f} s, only its gateway's "
                    f"{self.refused_by}")
        elif self.refused_cut:  # its port takes connections and closes them
            what = (f"no answer from it for {down_s:.1f} s, its connections taken, then "
                    "closed unanswered")
        else:
            what = f"no connection to it for {down_s:.1f} s"
        if self.outage_s and (self.last_answer > -math.inf or self.answered_before):
            when = "in this run" if self.last_answer > -math.inf else self.answered_before
            what += (f" (it answered {when}, so it was waited for, "
                     f"{duration(self.outage_s)} at most)")
        return f" while the endpoint was waited for: {what}"

    def _outage_over(self, item: _Work) -> bool:
        """``item``'s latest refusal came ``outage_s`` into an outage (refusals, and nothing
        sent since it began answered) and as long after the latest answer."""
        return (self.outage_from > self.answered_sent
                and item.last_refusal - self.outage_from >= self.outage_s
                and item.last_refusal - self.last_answer >= self.outage_s)

    def _unreachable(self, item: _Work, e: RequestError, since: float) -> None:
        """Stop the job: no request got an answer since ``since``, while ``item``'s attempts
        failed to connect (or, after an answer, got only a gateway's 502/503/504), so every
        other row would fail the same way. Before anything has
        answered in this run, that is two or more of the row's attempts, its last among them
        (one refusal proves little: a single one on a row's last attempt while the endpoint
        answers everyone else is a row that failed); after, ``outage_s`` of refusals."""
        silent_s = time.perf_counter() - since
        if self.last_answer > -math.inf:
            what = (f"{item.streak} attempts at {self.plan.row(item.key)}, no answer to any "
                    "request since it last answered")
        elif self.answered_before and e.status is None:
            what = (f"{item.streak} attempts at {self.plan.row(item.key)}, no answer to any "
                    f"request since the run began; it answered {self.answered_before}, so "
                    f"it was waited for, {duration(self.outage_s)} at most")
        else:
            what = (f"{item.attempts} attempts at {self.plan.row(item.key)}, no answer to any "
                    "request meanwhile")
        model = item.model
        if self.models_vary and model:  # whose server to look at, of those behind a gateway
            shown = self.client.redact(model) if self.client is not None else model
            what += (f"; asking for {shown}, which answered before"
                     if model in self.answered_models else
                     f"; asking for {shown}, which has not answered this job")
        if e.status == 404:  # a router's "model not found" for the job's one model
            shown = self.client.redact(model) if self.client is not None else model
            why = ("when rows of the run were answered with it" if self.last_answer > -math.inf
                   else f"as {self.model_answered_by} got its answers from this endpoint")
            self.stop(Unreachable(
                f"{shown} not served by the endpoint for {silent_s:.1f} s ({what}): "
                f"{e.message} — it was waited for as a server restarting behind a router, "
                f"{why}, {duration(self.outage_s)} at most: if that server takes longer to "
                "come back, set outage_wait_s in [limits] (or --outage-wait) to wait longer, "
                "then rerun to resume"))
            return
        if e.status is not None:  # a gateway's 502/503/504
            self.stop(Unreachable(
                f"no answer from the endpoint for {silent_s:.1f} s, only {e.error_type} from "
                f"what stands in front of it ({what}): {e.message} — wait for the endpoint (or "
                "its gateway or proxy) to be back, then rerun to resume"))
            return
        if self.outage_s and (self.last_answer > -math.inf or self.answered_before):
            # It answered (in this run or an earlier one): not a wrong URL, a server down.
            advice = (f"the server did not come back in {duration(self.outage_s)}: check that "
                      "it is up and reachable (a reboot and a large model's load can take 10 to "
                      "15 minutes: set outage_wait_s in [limits], or --outage-wait, to wait "
                      "longer)")
        else:
            advice = "check the base URL, the network and any proxy"
            if self.never_answered and self.last_answer == -math.inf:
                advice += (" (no run on this machine has had an answer from this URL: is its "
                           "port or host mistyped, or its server not started yet?)")
        head = "no connection to the endpoint"
        if self.refused_cut:  # its port takes connections and closes them: not "no connection"
            head = "no answer from the endpoint"
            what = f"its connections taken, then closed unanswered; {what}"
        self.stop(Unreachable(
            f"{head} for {silent_s:.1f} s ({what}): {e.message} — {advice}, then rerun to "
            "resume"))

    def _silent(self, item: _Work, e: RequestError) -> None:
        """Stop the job: ``item`` timed out twice (the second time given longer) and no request
        has been answered in this run: the endpoint takes connections and answers nothing, or
        its answers all take longer than the timeout. Every other row would wait out its every
        attempt the same way (half an hour a row, at the defaults)."""
        self.stop(Unreachable(
            f"no answer to any request since the run began: {item.attempts} attempts at "
            f"{self.plan.row(item.key)} timed out ({e.message}) — the endpoint takes "
            "connections but answers nothing in time; check it, or raise timeout_s (--timeout) "
            "if its answers take longer, then rerun to resume"))

    def _wait_too_long(self, e: RequestError, wait_s: float) -> None:
        """Stop the job: 429s in a row ask for a longer wait than the job waits (a daily
        limit, say), so every row would be refused until then."""
        try:
            until = time.strftime(", until %Y-%m-%d %H:%M UTC",
                                  time.gmtime(time.time() + wait_s))
        except (OverflowError, OSError, ValueError):  # past any date (retry-after: 1e20)
            until = ""
        self.stop(QuotaError(
            f"the endpoint asks to wait {format_span(wait_s)} before the next request (retry-after "
            f"{wait_s:,.0f} s{until}; {e.message}), longer than the job waits "
            f"({self.policy.max_retry_after_s:g} s): rerun then to resume"))

    def _only_429s(self, e: RequestError) -> bool:
        """Count a 429 (``e``); stop the job, and say so, once nothing but 429s has come for
        ``ONLY_429S_STOP_S`` (or the job's outage wait, where longer), no other answer between:
        every row would be refused until the key's limit or quota is whole again."""
        now = time.perf_counter()
        if self.only_429s_from == math.inf:
            self.only_429s_from, self.only_429s = now, 0
        self.only_429s += 1
        if now - self.only_429s_from < self.counts.only_429s_stop_s or self.stopping:
            return False
        self.stop(QuotaError(
            f"every answer for {format_span(now - self.only_429s_from)} was a 429 (rate limited; "
            f"{self.only_429s:,} of them, no other answer between; the latest: {e.message}) — "
            "the key's limit or quota looks used up for now (a daily quota?): rerun later to "
            "resume, or check the account's limits"))
        return True

    def _billed_retry(self, item: _Work, billed: float) -> None:
        """An attempt of ``item`` was billed and the row is to be sent again: the cost is spent
        now, carried into the row's outcome, and journaled at once in a ``retrying`` record
        (every billed attempt of the row so far; written with the next segment, within
        FLUSH_EVERY_S, as an outcome is), so that a job stopped before the outcome, or killed
        after that, still counts it."""
        item.earlier_usd += billed
        self.spent += billed
        self.counts.cost_usd += billed
        self._journal_retrying(item, item.earlier_usd)

    def _journal_retrying(self, item: _Work, earlier_usd: float | None) -> None:
        """Journal a ``retrying`` record of ``item``, a row still to do: what its tries billed
        so far cost (``earlier_usd``), and the estimates of those billed with no usage."""
        journal = self.journal
        journal.add(Outcome(
            key=item.key, status=RETRYING, earlier_cost_usd=earlier_usd,
            attempts=item.attempts, rate_limited=item.rate_limited,
            model=item.model or None, priced_as=item.model or None, finished_at=time.time(),
            row_hash=item.row_hash, unknown_tries=item.unknown_tries,
            unreported_usd=item.unreported_usd or None))
        if len(journal) >= FLUSH_EVERY_ROWS:
            self.flush_wanted.set()

    # -- pacing: one limiter for the job, and one for each model once their limits differ

    def _observe(self, item: _Work, headers: Mapping[str, str]) -> None:
        """Learn the server's limits from an answer's ``x-ratelimit-*`` headers. While every
        model's answers report the same limits (one limit for the key, as a gateway's, or the
        same for each model: one pace for all is safe either way), the job's limiter learns
        them; once two models report different ones (OpenAI's are each model's own), each
        model is paced by a limiter of its own, and the job's keeps the rates the job set: a
        job asking gpt-4o-mini and gpt-4o was paced at the lower model's rate for both."""
        if self.split is None:
            used_up = self.limiter.observe(headers)
        elif (keeper := self.keeper) is None:
            used_up = self._model_limiter(item).observe(headers)
        else:  # a limit raised lets the parked rows' permits come sooner than it sleeps
            own = self._model_limiter(item)
            paces = own.requests_per_minute, own.tokens_per_minute
            used_up = own.observe(headers)
            if (own.requests_per_minute, own.tokens_per_minute) != paces:
                keeper.set()
        if used_up is not None:
            # A limit over more than a minute (Groq's requests a day) has none left.
            kind, limit, wait_s = used_up
            self.stop(QuotaError(
                f"the endpoint's x-ratelimit-limit-{kind} {limit:,.0f} is over more than a "
                f"minute (a day's, as Groq's requests are) and none remain; it is whole again "
                f"in {format_span(wait_s)}: rerun then to resume"))
            return
        if self.split is not None:
            if self.reports and (limits := reported_limits(headers)) is not None:
                self._share(item.model, limits)
            return
        if self.models_vary and (limits := reported_limits(headers)) is not None:
            model = item.model
            self.unlimited.discard(model)
            before = self.model_limits.get(model)
            if before is not None and _differ(limits, before):
                # The model's own limits changed (a gateway's reloaded, the key's tier raised):
                # the others' reports are from before, to be compared again as they answer.
                self.model_limits = {model: limits}
                return
            self.model_limits[model] = limits
            if self.unlimited or any(map(_differ, repeat(limits), self.model_limits.values())):
                self._split()

    def _unlimited_model(self, item: _Work) -> None:
        """Unsplit, ``item``'s model answered ok with no limit reported. A model whose answers
        never report one is not paced at the limits another's report: once both are seen, each
        model is paced at its own, this one free until its own 429s teach it a pace (a
        simulator limiting one model of two, 60 a minute, held the other's 150 rows at that
        pace: 267 s for rows it answered in under a second)."""
        model = item.model
        if model in self.model_limits:
            return  # it reported limits before: an answer that omits them changes nothing
        self.unlimited.add(model)
        if self.model_limits:
            self._split()

    def _split(self, limiters: dict[str, Limiter] | None = None) -> None:
        """Each model's own limiter from here on (``limiters``, or new ones), at the limits its
        answers reported, with no burst (requests have been going out); the job's back to the
        rates the job set (a pause it holds runs out)."""
        self.split = {} if limiters is None else limiters
        self.probes = None
        self.reports = dict(self.model_limits)  # split by them: empty, split by 429s
        self.shared, self.differ_since = None, math.inf
        self.refused_at = {}
        self.refused_together = self.together_from = self.counters["http_429"]
        for model, limits in self.model_limits.items():
            # Learnt, not set: a limit its answers raise later is followed.
            limiter = self.split[model] = Limiter(None, None, burst=False)
            limiter.learn(*limits)
        self.limiter.unlearn()
        self.parking = True

    def _share(self, model: str, limits: tuple[float | None, float | None]) -> None:
        """Split by the limits its models' answers reported, ``model``'s latest answer said
        ``limits``: while every model's latest says the same, the job's limiter paces them all
        together at them (within the job's own), as before the split, each model's own limiter
        pacing it too; the models' limiters agree only a while later (a higher limit is
        followed once said for RAISE_AFTER_S), and the job is one again (``_merge``). Once
        the latest reports have not agreed for RAISE_AFTER_S, the job's limiter is back to the
        job's rates: reports that differ now and then (servers behind one address) keep the
        pace for all. A gateway whose answers for one of two models sharing 1,200 a minute
        said 600 for their first second paced each model at its own, together over the limit,
        until the merge (600 rows: 80 429s; 22 now)."""
        reports = self.reports
        before = reports.get(model)
        reports[model] = limits
        if before == limits and self.shared is None:
            return  # what it said before, with no pace for all: nothing changes
        split = self.split
        assert split is not None
        agreed = all((said := reports.get(other)) is not None and not _differ(said, limits)
                     for other in split)
        if agreed:
            self.shared, self.differ_since = limits, math.inf
            self.limiter.relearn(*limits)  # a higher one once said for RAISE_AFTER_S
        elif self.shared is not None:
            now = time.monotonic()
            if self.differ_since == math.inf:
                self.differ_since = now
            elif now - self.differ_since >= limiter_module.RAISE_AFTER_S:
                self.shared, self.differ_since = None, math.inf
                self.limiter.unlearn()

    def _refused_together(self, model: str) -> None:
        """Split by the limits reported, a request of ``model`` was answered 429: counted as
        drawn together when another model's was within TOGETHER_S."""
        now = time.monotonic()
        if any(now - at <= TOGETHER_S for other, at in self.refused_at.items()
               if other != model):
            self.refused_together += 1
        self.refused_at[model] = now

    def _merge(self) -> bool:
        """A job split by the limits its models' answers reported: one pace for all again
        (True) once every model's limiter paces at the same limits (each following its
        answers, a higher limit once they have said it and nothing else for RAISE_AFTER_S),
        none learnt from 429s. The limit is the key's, as before the split, and the longest
        pause a model's limiter holds is the job's: a gateway whose answers for one of two
        models sharing 1,200 a minute said 600 for their first second split the job, each
        model paced at the whole limit for good (600 rows: 319 429s of 919 requests; 80 now,
        19 with no lag). The parked rows go back to the workers, first, in their order."""
        split = self.split
        assert split is not None
        said: list[float | None] = [None, None]
        for limiter in split.values():
            if limiter.guessed:
                return False
            paces = (limiter.requests_per_minute, limiter.tokens_per_minute)
            if paces == (None, None):
                return False  # a model whose answers report no limit is paced apart
            for kind, pace in enumerate(paces):
                if pace is not None:
                    if said[kind] is None:
                        said[kind] = pace
                    elif said[kind] != pace:
                        return False
        requests, tokens = said
        self.split = None
        self.reports, self.shared, self.differ_since = {}, None, math.inf
        self.parking = False
        self.model_limits = {model: (limiter.requests_per_minute, limiter.tokens_per_minute)
                             for model, limiter in split.items()}
        self.unlimited -= split.keys()  # each reported its limits since
        self.limiter.relearn(requests, tokens)
        if (paused := max(split.values(), key=lambda limiter: limiter.paused_s)).paused_s:
            self.limiter.pause(paused.paused_s, paused.paused_by)  # a 429's, held on
        parked = [item for queue in self.parked.values() for item in queue]
        self.parked.clear()
        self.parked_rows = 0
        for item in parked:
            item.parked = False
        self.retries.extendleft(reversed(parked))
        self._wake_workers()
        return True

    def _probe(self, item: _Work) -> Limiter:
        """The limiter counting ``item``'s model's requests and 429s, unsplit (``probes``),
        each sampled from the first 429 on: nothing of its model's was counted before its
        first answer since. Sampled from its first tune only, a model's 429s before it were
        the window's start, not in it: a storm in the first half second, and the fast
        model's answers meanwhile, were never compared, and a job whose pauses then held the
        fast model's answers under twenty a window never split."""
        if (probes := self.probes) is None:
            probes = self.probes = {}
            self.probes_from = time.monotonic()
        model = item.model
        if (probe := probes.get(model)) is None:
            probe = probes[model] = Limiter(None, None)
            probe.sample(self.probes_from, 0, 0, latest=False)
        return probe

    def _split_by_429s(self, now: float) -> bool:
        """Where no answer reports a limit, 429s alone say them (a gateway's, each model's
        own): sample each model's requests and 429s, and split the job (True) when one
        model's are a storm, which teaches its limiter a pace, while another's requests were
        answered over the same seconds with few 429s or none, against the storm's share of
        them (``Limiter.answered_freely``: a limit the models share refuses each model's
        requests alike; random 429s are no storm). The models' limiters are these from then
        on. One pace for all, learnt from the slow model's 429s, held the fast model's rows
        at the slow one's pace (1,000 rows, a fifth asking a model limited to 120 a minute
        and the rest one limited to 3,000: the fast model's last answer came at 47 s, after
        the slow one's; at 8 s now)."""
        assert self.probes is not None
        probes = self.probes
        stormed = [probe.sample(now, probe.requests_sent, probe.requests_refused, latest=False)
                   for probe in probes.values()]
        if not any(stormed):
            return False
        pairs = list(zip(probes.values(), stormed, strict=True))
        share = max(probe.storm_share for probe, storm in pairs if storm)
        if any(probe.answered_freely(share) for probe, storm in pairs if not storm):
            self._split(probes)
            return True
        return False

    def _model_limiter(self, item: _Work) -> Limiter:
        """The limiter of ``item``'s model (``split``; one that reported no limits yet runs
        free, as a job's does, until its answers say)."""
        assert self.split is not None
        model = item.model
        if (limiter := self.split.get(model)) is None:
            limiter = self.split[model] = Limiter(None, None)
            self.parking = False  # until it has answered, or has a pace (_sample_pace)
        return limiter

    def _park(self, item: _Work) -> _Work | None:
        """Split: ``item`` with its model's own permit taken, to send now; or None, parked
        in its model's queue until a permit is there (``_unpark``), the worker free for rows
        of other models (a worker waiting for a slow model's permit held its place: 8 of them
        at 20 requests a minute starved a fast model's rows). A model's rows leave in the
        order they came; with its queue full, the worker sends its oldest, waiting for it.
        A model with no pace yet has no rows parked (a pause at most holds them). Nothing is
        parked while such a model has not answered yet or was refused over the last second
        or more (``parking``): the workers freed would all send its rows at once, a burst of
        429s from a limit no header says (a split job's model behind a gateway's drew 124
        429s of 224 requests, not some 28 of 128, before a pace was learnt from them). One that
        runs free (answered, and not refused) holds nothing up: kept in the workers until
        every model had a pace, a slow model's rows held the others' at its pace for good
        where one model never reports a limit (a server of one's own behind the gateway)."""
        model = item.model
        queue = self.parked.get(model)
        if not queue:
            own = self._model_limiter(item)
            if not own.paces:  # a pause at most: its end lets them all out, as from workers
                return item
            charge = self._charge(item)
            if own.take(charge):
                item.permit = charge
                return item
            if queue is None:
                queue = self.parked[model] = deque()
        queue.append(item)
        if len(queue) > PARKED_MAX_ROWS:
            oldest = queue.popleft()
            oldest.parked = False  # out now: a stop finishes it (``_work``)
            return oldest
        self._parked_one(item, len(queue) == 1)
        return None

    def _park_again(self, item: _Work) -> bool:
        """Park ``item``, taken before the rows parked, first in its model's queue: True, or
        False when the queue is full."""
        queue = self.parked.setdefault(item.model, deque())
        if len(queue) >= PARKED_MAX_ROWS:
            return False
        queue.appendleft(item)
        item.parked = True
        self._parked_one(item, True)
        return True

    def _parked_one(self, item: _Work, first: bool) -> None:
        """``item`` was parked, ``first`` in its model's queue: its permit may be due before
        the keeper wakes, or nobody keeps the time yet (_time_permits)."""
        self.parked_rows += 1
        if first:
            if self.keeper is None:
                self._wake_one()
            else:
                assert self.split is not None
                self._time_permits(time.monotonic() + self.split[item.model].ready_in(
                    self._charge(item)))

    def _unpark(self) -> _Work | None:
        """A parked row whose model's own permit is there now (taken), else None."""
        assert self.split is not None
        for model, queue in self.parked.items():
            if queue and self.split[model].take(charge := self._charge(queue[0])):
                item = queue.popleft()
                self.parked_rows -= 1
                item.permit, item.parked = charge, False
                return item
        return None

    def _parked_ready_in(self) -> float:
        """Seconds until a parked row's model may have its permit (rows waiting for it in its
        limiter take theirs first), PARKED_RECHECK_S at least."""
        assert self.split is not None
        wait = min(self.split[model].ready_in(self._charge(queue[0]))
                   for model, queue in self.parked.items() if queue)
        return max(wait, PARKED_RECHECK_S)

    def _refund(self, item: _Work, charge: int) -> None:
        """A request refused or failed before the server counted it: its tokens back."""
        self.limiter.refund(charge)
        if self.split is not None:
            self._model_limiter(item).refund(charge)
            self._given_back(item)

    def _given_back(self, item: _Work) -> None:
        """Split, tokens were given back to ``item``'s model's limiter: its parked rows'
        permit may be due sooner than the keeper sleeps (_time_permits), where it slept out
        the time it was told."""
        if self.keeper is not None and (queue := self.parked.get(item.model)):
            assert self.split is not None
            self._time_permits(time.monotonic() + self.split[item.model].ready_in(
                self._charge(queue[0])))

    def _requests_per_second(self) -> float | None:
        """The pace requests go out at, if known, for sizing the concurrency: split, the
        models' together (unknown while one's is), within the job's own rate."""
        job = self.limiter.requests_per_second
        if self.split is None:
            return job
        rates = [limiter.requests_per_second for limiter in self.split.values()]
        if None in rates:
            return job
        together = sum(r for r in rates if r is not None)
        return together if job is None else min(job, together)

    def _show_pause(self) -> None:
        """The pause that holds new requests longest, for the progress: the job's, or a
        model's (named); and the paces learnt from 429s, the job's or each model's (named)."""
        counts, limiter = self.counts, self.limiter
        counts.paused_s, counts.paused_by = limiter.paused_s, limiter.paused_by
        counts.learnt_rpm = (limiter.requests_per_minute or 0.0) if limiter.guessed else 0.0
        learnt = []
        for model, limiter in (self.split or {}).items():
            if limiter.paused_s > counts.paused_s:
                counts.paused_s = limiter.paused_s
                counts.paused_by = f"{limiter.paused_by}, for {model}"
            if limiter.guessed:  # a model's own pace learnt from its 429s, named
                learnt.append((model, limiter.requests_per_minute or 0.0))
        counts.learnt_models = tuple(learnt)

    def _billed(self, item: _Work, e: RequestError) -> tuple[float | None, int | None]:
        """What a failed attempt was billed, when its answer reported usage (a 200 without a
        usable completion, a stream cut after its usage), and its search requests (``_cost``)."""
        if e.usage is None:
            return None, None
        pt, ct, _, cached, reasoning, searches, sources, written, written_1h, heard, spoken = (
            e.usage)
        return self._cost(item, item.model, pt, ct, cached, reasoning,
                          searches, sources, written, written_1h, heard=heard, spoken=spoken)

    def _reply_cost(self, item: _Work, model: str, res: ChatResult
                    ) -> tuple[float | None, int | None]:
        """``_cost`` of a reply's usage, priced as ``model``."""
        return self._cost(item, model, res.prompt_tokens, res.completion_tokens,
                          res.cached_tokens, res.reasoning_tokens, res.web_searches,
                          res.sources_used, res.cache_write_tokens, res.cache_write_1h_tokens,
                          res.service_tier, res.audio_prompt_tokens, res.audio_completion_tokens)

    def _cost(self, item: _Work, model: str, prompt: int | None, completion: int | None,
              cached: int | None, reasoning: int | None, searches: int | None,
              sources: int | None, written: int | None = None, written_1h: int | None = None,
              tier: str | None = None, heard: int | None = None, spoken: int | None = None
              ) -> tuple[float | None, int | None]:
        """What a billed reply of ``item`` cost (an answer, or a try billed without a usable
        one), priced as ``model`` at the service tier that answered (``tier``, else the one its
        request asked for), its audio tokens (``heard``, the prompt's; ``spoken``, the
        completion's) at the audio prices, and its search requests: 1 when its request asked
        for search billed per request and its usage counts no search units
        (``search_requested``), else None. Under a budget, what its search units cost beyond
        its tokens is held for the next requests of the model asked for (the largest so far),
        and one that cannot be priced still counts: its tokens, stopping the job, when its
        search has no price; its estimate when its tokens have none."""
        prices = self.plan.prices
        requests = (1 if searches is None and sources is None
                    and search_requested(item.body) is not None else None)
        if tier is None:
            tier = tier_asked(item.body)
        # By position, in cost()'s order: naming the 12 arguments matched each name, some
        # 900 instructions a reply.
        cost = prices.cost(model, prompt, completion, cached, reasoning, searches, sources,
                           requests, written, written_1h, tier, heard, spoken)
        if cost is None and (prompt is None or completion is None):
            # No usage to price (a gateway that leaves it out), billed all the same: its
            # estimate is carried with the row (unreported_usd), as a cut try's is, for the
            # reports and the next runs' budgets; this run's counts it now.
            estimate = self._estimated_cost(item)
            if estimate is not None:
                item.unreported_usd += estimate
                if self.budget is not None:
                    self._unpriced_reply(item, estimate)
            return cost, requests
        if self.budget is not None and (cost is None or searches or sources or requests):
            tokens = prices.cost(model, prompt_tokens=prompt, completion_tokens=completion,
                                 cached_tokens=cached, cache_write_tokens=written,
                                 cache_write_1h_tokens=written_1h, service_tier=tier,
                                 audio_prompt_tokens=heard, audio_completion_tokens=spoken)
            if cost is not None and tokens is not None:
                requested = item.model
                # A fee per request is held in each request's estimate from the first send.
                if not requests and cost - tokens > self.search_usd.get(requested, 0.0):
                    self.search_usd[requested] = cost - tokens
            elif tokens is not None:  # its search has no price
                self._unpriced_search(model, tokens, per_request=requests is not None)
        return cost, requests

    def _success(self, item: _Work, res: ChatResult, charge: int) -> Outcome:
        self.counters["attempts"] += item.attempts
        if res.headers or self.split is not None:  # a split job's model gets its limiter
            self._observe(item, res.headers)  # (an answer with no x-ratelimit-* teaches none)
        if self.models_vary and self.split is None and reported_limits(res.headers) is None:
            self._unlimited_model(item)
        # Servers charge max_tokens, not what the reply used, against the token limit.
        used = res.prompt_tokens + item.completion_max * item.n \
            if item.completion_max and res.prompt_tokens is not None else res.total_tokens
        self.limiter.settle(charge, used)
        if self.split is not None:
            own = self._model_limiter(item)
            own.settle(charge, used)
            own.requests_sent += 1  # answered (as its 429s are counted)
            if used is not None and used < charge:
                self._given_back(item)
        if res.prompt_tokens:
            if (n := self.learnt_prompts) < LEARN_OVER:
                n = self.learnt_prompts = n + 1
            self.prompt_ratio += (res.prompt_tokens / item.prompt_estimate
                                  - self.prompt_ratio) / n
        if res.completion_tokens is not None:
            if (n := self.learnt_completions) < LEARN_OVER:
                n = self.learnt_completions = n + 1
            self.completion_estimate += (res.completion_tokens / item.n
                                         - self.completion_estimate) / n
        self.latency_s += 0.05 * (res.latency_ms / 1000.0 - self.latency_s)
        requested = item.model
        if self.models_vary:
            self.answered_models.add(requested)
            if self.probes is not None:  # and answered (_split_by_429s)
                self._probe(item).requests_sent += 1
            if self.held and not self.stopping:  # after a stop, held rows are left to do
                self._release_held()
        prices = self.plan.prices
        # Priced as the model that answered, when its price is known (a gateway may route; the
        # library prices a dated snapshot as its own), but at the job's price for the model
        # asked for when it names that model (a snapshot, a gateway's spelling): two models
        # the job prices may answer with one name (a gateway's route x/gpt-4o and gpt-4o
        # itself, both gpt-4o-2024-08-06), each at its own price.
        answered = res.model
        model = (requested if not answered or answered == requested
                 or prices.price(answered) is None or prices.as_asked(requested, answered)
                 else answered)
        if model != requested and self.budget is not None:
            self.routed[requested] = model  # the budget holds the next ones at its price
        cost, searched = self._reply_cost(item, model, res)
        if (res.citations and res.sources_used is None and res.web_searches is None
                and not self.warned_search and live_search_asked(item.body)):
            self._uncounted_search(item)
        checks = item.checks
        content = res.content
        choices = res.choices
        error = None
        if checks is not None:
            error = checks.check_reply(content, res.tool_calls)
            finish, which = res.finish_reason, None
            if error is None and res.choices is not None:  # n > 1: every choice is checked
                failed = checks.check_choices(res.choices)
                if failed is not None:
                    which, finish, error = failed
            if error is None and checks.tool is None:
                if content and res.tool_calls is None:
                    content = unfenced(content) or content  # the JSON, without a block's
                    # fence or the words around it
                if choices is not None:  # each choice's too (n > 1)
                    choices = checks.unfenced_choices(choices)
            elif error is not None and finish == "length" and error[1] == EMPTY_REPLY:
                # Cut before any answer: a thinking model's reasoning used up max_tokens.
                reasoned = (f" (this one reasoned for {res.reasoning_tokens:,} tokens)"
                            if which is None and res.reasoning_tokens else "")
                error = error[0], ("the reply was cut at max_tokens before its answer began "
                                   "(finish_reason=length): it is empty, as a thinking model's "
                                   f"is when its reasoning uses all of max_tokens{reasoned}")
            elif error is not None and finish in _STOPPED_SHORT:  # why: not the model's
                error = error[0], f"{_STOPPED_SHORT[finish]}: {error[1]}"
            if which is not None and error is not None:
                error = error[0], f"choice {which}: {error[1]}"[:300]
        if res.refusal is not None and not res.content and res.tool_calls is None:
            # No answer, but why: not a reply that is not JSON, nor an ok row with no content
            error = "refusal", f"the model refused: {res.refusal}"[:300]
        # Every field by position, in Outcome's order: a call naming its 28 arguments cost
        # some 14,000 instructions more a reply (matching the names), 2 % of a request.
        return Outcome(
            item.key,  # key
            "ok" if error is None else "failed",  # status
            content,
            res.reasoning_content,
            choices,
            res.tool_calls,
            res.citations,
            res.logprobs,
            res.finish_reason,
            res.prompt_tokens, res.completion_tokens, res.total_tokens, res.cached_tokens,
            res.cache_write_tokens, res.reasoning_tokens,
            # search_units (``_search_units``): its web searches, else its sources
            res.web_searches if res.web_searches is not None else res.sources_used,
            searched,  # search_requests
            None if item.earlier_unknown else cost,  # cost_usd
            item.earlier_usd or None,  # earlier_cost_usd
            res.latency_ms, res.ttft_ms,
            item.attempts, item.rate_limited,
            error[0] if error else None, error[1] if error else None,  # error_type, _message
            res.model or requested or None,  # model
            model or None,  # priced_as
            res.request_id,
            time.time(),  # finished_at
            item.row_hash,
            item.unknown_tries,
            item.unreported_usd or None,
            item.n if "n" in item.body else None,  # choices_asked
            res.service_tier or tier_asked(item.body),  # service_tier
            res.audio_prompt_tokens,
            res.audio_completion_tokens,
        )

    def _unpriced_search(self, model: str, tokens_usd: float, *, per_request: bool) -> None:
        """A reply whose search (sources, web searches; ``per_request``: search billed per
        request that asked for it) has no price: what it cost beyond its tokens cannot be
        counted, so the budget cannot be kept. Its tokens count, and the job stops (the
        requests in flight finish) until the job prices the search."""
        self.spent += tokens_usd
        if per_request:
            what = ("is asked for search billed per request (a search model, "
                    "web_search_options, a Google Search tool, enable_search)")
            price = "search_request (USD per request)"
        else:
            what = "answers with search billed apart from tokens (sources or web searches)"
            price = "search_unit (USD per unit)"
        self.stop(BudgetExceeded(
            f"max_cost_usd is set but model {model!r} {what} and no price is known for it; "
            f"add {price} to [prices.\"{model}\"] in a job file so the budget can be kept",
            price_missing=True))

    def _unpriced_reply(self, item: _Work, estimate: float) -> None:
        """A reply with no usage to price (a gateway that leaves it out): it was paid for all
        the same, so the budget counts it at its ``estimate`` and still holds."""
        self.spent += estimate
        if not self.warned_unpriced:
            self.warned_unpriced = True
            self.progress.write(
                f"batchrunner: warning: {self.plan.row(item.key)}: the reply has no usage (token "
                "counts), so its cost is unknown; max_cost_usd counts such replies at their "
                f"estimated cost ({_estimated_from(item)})")

    def _uncounted_search(self, item: _Work) -> None:
        """A reply to Grok's live search (``search_parameters``) cites sources, which its usage
        does not count (``num_sources_used``: a gateway that leaves it out): what they cost
        is in no cost, nor the budget's. Said once: the cost was said complete."""
        self.warned_search = True
        self.progress.write(
            f"batchrunner: warning: {self.plan.row(item.key)}: the reply cites sources of "
            "its live search (search_parameters), but its usage counts none "
            "(num_sources_used): what they cost is not in the row's cost, nor in the reports' "
            "or max_cost_usd's; such replies are priced at their tokens only")

    def _maybe_billed(self, item: _Work) -> float | None:
        """A try of ``item`` the server may have billed, its usage not known: counted at its
        estimate, carried by the row (``unreported_usd``) and journaled at once (a
        ``retrying`` record, written with the next segment) for the budgets of this run and
        the next; the estimate, None where the job has no budget (only the reports count
        it)."""
        estimate = self._estimated_cost(item) or 0.0
        item.unknown_tries += 1
        item.unreported_usd += estimate
        self._journal_retrying(item, item.earlier_usd or None)
        if self.budget is None:
            return None
        self.spent += estimate
        return estimate

    def _unkept_answer(self, item: _Work, res: ChatResult | None) -> None:
        """A real endpoint's answer the run stops at, not kept (``EndpointChanged``), billed
        all the same: priced from its usage and carried by the row as an earlier try's cost
        (``_billed_retry``); with no usage or no price, counted at its estimate
        (``_maybe_billed``)."""
        cost = None
        if res is not None and res.prompt_tokens is not None and (
                res.completion_tokens is not None):
            cost, _ = self._reply_cost(item, item.model, res)
        if cost is not None:
            self._billed_retry(item, cost)
        else:
            self._maybe_billed(item)

    def _unbilled_try(self, item: _Work, e: RequestError) -> None:
        """A try that may have been billed with no usage reported (``MAYBE_BILLED``, or its
        answer had begun): counted at its estimate, which the row carries
        (``unreported_usd``) and a ``retrying`` record journals at once, so that the budget
        of this run and the next ones counts it (the reports show it apart from the usage
        servers reported)."""
        if self._maybe_billed(item) is None:
            return
        if not self.warned_cut:
            self.warned_cut = True
            what = ("a streamed answer was cut" if e.answer_begun and item.body.get("stream")
                    else f"a try sent got no whole answer ({e.error_type}: {e.message})")
            self.progress.write(
                f"batchrunner: warning: {self.plan.row(item.key)}: {what} with no usage "
                "reported, so what that try cost is unknown; max_cost_usd counts such tries, "
                f"which the server may bill, at their estimated cost ({_estimated_from(item)})")

    def _sample_pace(self) -> None:
        """The counts of requests sent and answered 429 so far, for the job's limiter to learn
        a pace from a storm of 429s when no rate is known (``Limiter.sample``); split, each
        model's own counts for its own limiter (a model whose answers report no limits, behind
        a gateway's, ran free)."""
        now = time.monotonic()
        if self.split is None:
            if self.probes is None or not self._split_by_429s(now):
                counters = self.counters  # answers: those in flight are neither, yet
                self.limiter.sample(now, counters["sent"] - self.counts.in_flight,
                                    counters["http_429"])
                return
        else:
            for limiter in self.split.values():
                pace = limiter.requests_per_minute
                limiter.sample(now, limiter.requests_sent, limiter.requests_refused)
                if limiter.requests_per_minute != pace and self.parked_rows:
                    self._time_permits()  # a pace raised (or set) may let a row out sooner
            if self.reports and self.refused_together > self.together_from:
                # The 429s two models drew together, each paced under the limit its answers
                # report, are a limit they share: a storm of them teaches the job's limiter a
                # pace for all (a gateway saying 1,000 a minute for one model and 800 for
                # another, and enforcing 1,200 for the key, paced them at 1,800 together).
                # Sampled from the first such 429 on: the seconds before, under the limit's
                # burst, set a pace over it.
                self.limiter.sample(now, self.counters["sent"] - self.counts.in_flight,
                                    self.refused_together, split=True)
            if self.model_limits and self._merge():
                return
        answered, split = self.answered_models, self.split
        assert split is not None
        self.parking = all(limiter.paces or (limiter.runs_free and model in answered)
                           for model, limiter in split.items())

    async def tune_concurrency(self) -> None:
        """Little's law: in flight = rate × latency; sized with headroom, within the cap (a
        concurrency the job set is kept), and within the ceiling requests timing out set
        (``_overloaded``). And the pace learnt from 429s is sampled."""
        self._sample_pace()
        while True:
            await anyio.sleep(TUNE_EVERY_S)
            self._sample_pace()
            if self.fixed_concurrency:
                target = self.max_concurrency
            elif (rate := self._requests_per_second()) is None:
                target = max(4, min(self.max_concurrency, DEFAULT_CONCURRENCY))
            else:
                target = max(4, min(self.max_concurrency,
                                    math.ceil(rate * self.latency_s * 1.5) + 4))
            self._overloaded(target)
            if self.ceiling < target:
                target = int(self.ceiling)
            self.target_workers = target
            self.add_workers()

    def _answered_since(self, item: _Work, sent_at: float) -> bool:
        """A request of the server ``item`` was sent to was answered after ``sent_at``: of its
        model, in a job whose rows ask models of their own. A model slower than timeout_s
        timing out beside another model's answers is no queue at one server: it took the
        concurrency down to 1 for every model (150 rows of a model answered in 7 ms, beside
        one answered in 3 s at timeout_s = 2, took over 5 minutes)."""
        if not self.models_vary:
            return self.last_answer > sent_at
        return self.model_answered.get(item.model, -math.inf) > sent_at

    def _queued_too_long(self) -> None:
        """A request timed out while others sent to the same server were answered: it was
        queued behind more than the server runs at once (a GPU server's batch), where the
        requests answered in time were not. Its worker ends: of the requests in flight, as
        many as were answered in time go on (the concurrency falls by the share that timed
        out), never fewer than one."""
        self.late += 1
        if self.target_workers > 1:
            self.target_workers -= 1
            self.ceiling = self.target_workers

    def _server_error(self) -> None:
        """A server error answered (HTTP 500, say). Once SERVER_ERRORS_IN_A_ROW came with no
        row ok since, the server fails whatever it is sent (an engine that died): no new row
        starts but as one of the rows out finishes (each fails after its attempts, or is ok),
        rather than every worker starting new rows while those started back off, each to be
        tried max_attempts times; the fail-fast stop (``_fail_fast``) comes after few requests.
        A row ok lifts it (``_overloaded``)."""
        if self.counts.ok != self.ok_at_error:
            self.ok_at_error = self.counts.ok
            self.server_errors = 0
        self.server_errors += 1
        if self.server_errors == SERVER_ERRORS_IN_A_ROW:
            self.rows_out = max(1, self.outstanding - len(self.held))

    def _overloaded(self, target: int) -> None:
        """The rows out while the server fails everything (``_server_error``), until a row is
        ok; and the ceiling requests that queued too long set (``_queued_too_long``): requests
        sent from now on lower it again if they time out too; while answers come in time and
        none times out, it rises by one a latency (an answer's time), and is lifted when it
        reaches ``target``, the concurrency sized otherwise. Both are shown in the progress."""
        counts = self.counts
        ok = counts.ok
        answered, self.ok_seen = ok - self.ok_seen, ok
        if self.rows_out < sys.maxsize and ok != self.ok_at_error:
            self.rows_out = sys.maxsize  # a row ok: the server works
            self._wake_workers()
        counts.rows_out = self.rows_out if self.rows_out < sys.maxsize else 0
        counts.server_errors = self.server_errors
        if late := self.late:
            self.late = 0
            self.cut_at = time.perf_counter()
            counts.concurrency = int(self.ceiling)
            counts.concurrency_from = target
            counts.concurrency_why = (
                f"{late:,} request{'' if late == 1 else 's'} timed out while others were "
                "answered: the server queues what it cannot run at once (or hangs on some)")
        elif answered and self.ceiling < math.inf:
            self.ceiling += TUNE_EVERY_S / max(self.latency_s, TUNE_EVERY_S)
            if self.ceiling >= target:
                self.ceiling = math.inf
                counts.concurrency = counts.concurrency_from = 0
            else:
                counts.concurrency = int(self.ceiling)

    async def flush_journal(self) -> None:
        """Write the buffered outcomes every second, or sooner when many are waiting."""
        journal = self.journal
        while True:
            with anyio.move_on_after(FLUSH_EVERY_S):
                await self.flush_wanted.wait()
            self.flush_wanted = anyio.Event()
            self._show_pause()
            self._record_pause()
            self.counts.unreachable_s = self._unreachable_s()
            if (since := self.only_429s_from) != math.inf:
                self.counts.only_429s_s = time.perf_counter() - since
            elif self.counts.only_429s_s:
                self.counts.only_429s_s = 0.0
            self.counts.connect_wait = bool(self.answered_before) or self.last_answer > -math.inf
            self.counts.unreachable_by = self.refused_by
            self.counts.unreachable_cut = self.refused_cut
            self._record_outage(self.counts.unreachable_s)
            self.progress.update(self.counts, 0)  # a log line is due even if no row finishes
            rows = journal.take()
            if rows:
                with anyio.CancelScope(shield=True):  # once taken, rows are written
                    try:
                        await anyio.to_thread.run_sync(journal.write, rows)
                    except OutputError as e:
                        # A disk full, say. The rows are kept, and so are the answers to the
                        # requests in flight (paid for): no new row is sent, and the end of
                        # the run writes what fits of them all, then fails with this error.
                        journal.put_back(rows)
                        self.write_error = e
                        self.stop(StopJob(str(e)))
                        return

    def _record_pause(self) -> None:
        """job.json's last_run says, for ``status`` in another process, that a pause of
        ``PAUSE_TOLD_S`` or more (a 429's retry-after, a gateway's 503's) holds new requests:
        until when, and what asked for it. Written when one begins or is made longer by 10 s
        or more, and when it ends: not every flush."""
        paused_s, now, recorded = self.counts.paused_s, time.time(), self.pause_recorded
        last_run = self.plan.job_meta.get("last_run")
        if not isinstance(last_run, dict):
            return
        if paused_s >= PAUSE_TOLD_S and now + paused_s >= recorded + 10.0:
            self.pause_recorded = now + paused_s
            last_run["paused"] = {"until_s": round(now + paused_s, 3),
                                  "by": printable(self.counts.paused_by, 120)}
        elif recorded and (now >= recorded or paused_s < 1.0):  # over, or lifted (a stop)
            self.pause_recorded = 0.0
            last_run.pop("paused", None)
        else:
            return
        with suppress(BatchrunnerError, OSError):  # a full disk: the journal's write says so
            _write_meta(self.plan)

    def _record_outage(self, down_s: float) -> None:
        """job.json's last_run says, for ``status`` in another process, that the endpoint has
        been out of reach for ``down_s`` (``_unreachable_s``): since when, what answers for it
        (its gateway's 502/503/504, or nothing: ``cut``, its connections taken and closed
        unanswered, or none made) and how long the run waits for it (None: its rows' own
        attempts stop the job). Written when the progress starts to show an outage and when a
        request sent since it began is answered: twice an outage, not per request, and once
        more each time what answers for it changes (a gateway's 503, then its 502, or no
        connection at all), at most once a flush."""
        recorded = self.outage_recorded
        if recorded is not None and (self.outage_from != recorded
                                     or self.answered_sent >= recorded):
            self.outage_recorded = None  # over (or another began, recorded below)
        if self.outage_recorded is None and down_s >= 1.0:
            self.outage_recorded = self.outage_from
        by = (self.refused_by, self.refused_cut)
        if self.outage_recorded == recorded and (recorded is None
                                                 or by == self.outage_recorded_by):
            return
        self.outage_recorded_by = by
        last_run = self.plan.job_meta.get("last_run")
        if not isinstance(last_run, dict):
            return
        if self.outage_recorded is None:
            last_run.pop("outage", None)
            # For status's pace: the rows of the outage's minutes, none, would tell too slow a
            # one for minutes after it ends (111 rows/min, where 600 came).
            last_run["back_s"] = round(time.time(), 3)
        else:
            waits = self.outage_s > 0 and (bool(self.refused_by) or self.counts.connect_wait)
            last_run["outage"] = {"since_s": round(time.time() - down_s, 3),
                                  "by": printable(self.refused_by, 120),
                                  "cut": self.refused_cut,
                                  "wait_s": self.outage_s if waits else None}
        with suppress(BatchrunnerError, OSError):  # a full disk: the journal's write says so
            _write_meta(self.plan)

    async def watch_signals(self, scope: anyio.CancelScope) -> None:
        watched: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # ignored: under nohup
            watched += (signal.SIGHUP,)
        before = {sig: signal.getsignal(sig) for sig in watched}
        try:
            with anyio.open_signal_receiver(*watched) as signals:
                await self._on_signals(signals, scope)
        finally:
            # The event loop leaves a signal it stops watching to the system's default (a
            # SIGTERM would kill the process on the spot): the handlers from before are put
            # back, so that one while the last rows are journaled and the results written
            # stops the run as the command line says (exit 4), those rows saved.
            for sig, handler in before.items():
                if handler is not None:
                    signal.signal(sig, handler)

    async def _on_signals(self, signals: AsyncIterator[int], scope: anyio.CancelScope) -> None:
        hung_up = False
        asked = False  # a signal asked the run to stop: another one stops it now
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:  # its terminal closed, most likely: write no more to it
                leave_terminal()
            if asked and (hung_up or signum == signal.SIGHUP):
                # A SIGHUP sent with a SIGTERM (systemd's SendSIGHUP), in either order, is not
                # a second request to stop now: the requests in flight still finish.
                continue
            hung_up = hung_up or signum == signal.SIGHUP
            if not asked:  # the first, though the run may be stopping already (its budget)
                asked = self.signalled = True
                by = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else name
                cause = f"interrupted by {by}{self._outage_said()}"
                self.stop(Interrupted(  # the run's own reason, if it had one, is kept
                    f"{cause}; finished rows are saved — run the same command to resume",
                    cause=cause))
                lead = "\n" if sys.stderr.isatty() else ""  # off the line ^C was echoed on
                again = "Ctrl-C" if signum == signal.SIGINT else name
                self.progress.write(f"{lead}batchrunner: {name}: finishing requests in "
                                    f"flight (up to {self.options.drain_s:.0f} s; {again} again "
                                    "to stop now)")
                scope.deadline = min(scope.deadline,
                                     anyio.current_time() + self.options.drain_s)
            else:
                scope.cancel()


@asynccontextmanager
async def _endpoint(job: JobConfig, env: dict[str, str]) -> AsyncIterator[tuple[str, str | None]]:
    """Yield (base_url, api_key): the job's endpoint, or a built-in simulator it asked for."""
    if job.endpoint.simulator:
        from batchrunner.simulator import Simulator, SimulatorConfig

        try:
            # Not counting requests per prompt unless asked: nothing reads the counts, a map
            # of every row's prompt (150 MB for 1,000,000 rows).
            config = SimulatorConfig.from_mapping({"track_prompts": False, **job.simulator})
        except ConfigError as e:
            raise ConfigError(f"job file {job.source}: [simulator]: {e}") from None
        async with Simulator(config, host="127.0.0.1", port=0) as sim:
            key = check_api_key(env.get(job.endpoint.api_key_env, ""), job.endpoint.api_key_env)
            yield sim.base_url, key or getattr(config, "api_key", None)
        return
    variable = job.endpoint.base_url_env
    base_url = job.endpoint.base_url or env.get(variable)
    if not job.endpoint.base_url and base_url and base_url == env.get(job.endpoint.api_key_env):
        raise ConfigError(f"{variable} holds the API key, not the endpoint's URL — set it to a "
                          "URL like https://api.openai.com/v1, or name another --base-url-env")
    if not base_url:
        in_file = "" if job.source == "command line" else " ([endpoint] base_url)"
        if others := set_instead(job, variable, URL_VARIABLE_ENDINGS, url=True):
            raise ConfigError(
                f"no endpoint: {variable} is not set; to read the URL from another variable, "
                f"pass {set_instead_hint(job, others, '--base-url-env')}, or pass --base-url "
                f"URL{in_file} (or --simulator to rehearse against the built-in simulator)")
        raise ConfigError(
            f"no endpoint: pass --base-url URL{in_file}, or set {variable} in the environment "
            "or .env (or pass --simulator to rehearse against the built-in simulator)"
        )
    base_url = check_base_url(base_url, variable if not job.endpoint.base_url
                              else "[endpoint] base_url")
    variable = job.endpoint.api_key_env
    key = check_api_key(env.get(variable, ""), variable)
    if variable == DEFAULT_API_KEY_ENV and variable not in env and is_loopback(
            (urlsplit(base_url).hostname or "").lower().rstrip(".")):
        # A server on this machine (vLLM started without --api-key, `batchrunner simulate`)
        # may want no key: with none set, none is sent, and a 401 says to set one. (A variable
        # set to nothing, or one the job names that is not set, is refused below, as anywhere:
        # it looks like a mistake.)
        yield base_url, None
        return
    if not key:
        if variable in env:  # set, but to nothing (an environment variable wins over .env)
            wins = (" (set in the environment, even empty, it wins over a .env file)"
                    if variable in os.environ else "")
            raise ConfigError(f"no API key: {origin(job, variable)} is empty — set it to the "
                              f"key{wins}")
        if others := set_instead(job, variable, KEY_VARIABLE_ENDINGS):
            raise ConfigError(
                f"no API key: {variable} is not set; to read the key from another variable, "
                f"pass {set_instead_hint(job, others, '--api-key-env')}, or set {variable} in "
                "the environment or in a .env file (for a server that checks none, a vLLM or "
                f"Ollama started without one, any value: {variable}=none)")
        if unread := unread_dotenv_line(job, variable):
            raise ConfigError(f"no API key: {unread}")
        raise ConfigError(f"no API key: set {variable} in the environment or in a .env file "
                          f"(for a server that checks none, a vLLM or Ollama started without "
                          f"one, any value: {variable}=none)")
    yield base_url, key


def _check_no_key_named(job: JobConfig, api_key: str | None) -> None:
    """Refuse a job whose name or model holds the API key (pasted in the wrong place), before
    anything is written or sent: the name heads the progress, the summary and the reports, the
    model every result row and the cost report, where the key would be written as it is. A
    short key (``LONG_SECRET``), a local server's stand-in ("EMPTY"), may be any word."""
    if not api_key or len(api_key) < LONG_SECRET:
        return
    for what, value in (("the job's name (name in the job file, or --name)", job.name),
                        ("the model (model in [request], or --model)", job.request.model)):
        if value and _holds_key(value, api_key):
            raise ConfigError(f"{what} holds the API key: set it to the name it should have "
                              "(the key is read from the environment or .env only)")


def _check_budget_priced(plan: Plan) -> None:
    """Under a budget, the job's model must have a price, or the budget cannot be kept: the
    first request would stop the job. So must the search the job's settings ask for: billed per
    request (``search_requested``: a Google Search tool, ``web_search_options``...) at
    ``search_request``, Grok's live search (``live_search_asked``) at ``search_unit``, where
    the first reply would stop the job after a wave of requests was sent. Refused before any
    is sent, saying what to set (and the name meant, for a typo of one the price library
    knows). A job whose rows name their models (``model_column``, batch input) is held at each
    model's first request instead, and one whose rows set a field that can ask for search
    (``from_columns``) at the first reply whose search has no price."""
    job = plan.job
    model = job.request.model
    if (job.limits.max_cost_usd is None or plan.builder is None or job.request.model_column
            or not model or plan.total_rows == len(plan.done)):
        return
    price = plan.prices.price(model)
    if price is None:
        close = plan.prices.close_names(model)
        meant = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"max_cost_usd is set but no price is known for model {model!r}{meant}, so the "
            f"budget cannot be kept: {'fix the model name, or ' if close else ''}add "
            f'[prices."{model}"] with input and output (USD per 1M tokens) to a job file (a '
            "model on a server of your own, which bills no tokens, takes input = 0 and "
            "output = 0)")
    if not SEARCH_FIELDS.isdisjoint(job.request.from_columns):
        return
    # Every row's body has the job's settings' search fields, and no other (from_columns
    # sets none of them): the job's model and [request.extra] say what each row asks for.
    body = {"model": model, **job.request.extra}
    if (asked := search_requested(body)) is not None and price.search_request is None:
        what, key = f"search billed per request ({asked})", "search_request (USD per request)"
    elif live_search_asked(body) and price.search_unit is None:
        what = "search billed per source its replies report (search_parameters)"
        key = "search_unit (USD per unit)"
    else:
        return
    raise ConfigError(
        f"max_cost_usd is set but model {model!r} is asked for {what} and no price is known "
        f'for it, so the budget cannot be kept: add {key} to [prices."{model}"] in a job file')


def endpoint_warnings(base_url: str) -> list[str]:
    parts = urlsplit(base_url)
    if parts.scheme == "http" and not is_loopback((parts.hostname or "").lower().rstrip(".")):
        return [f"the API key will be sent unencrypted over plain http:// to {parts.hostname}"]
    return []


async def run_job(job: JobConfig, options: RunOptions | None = None) -> RunSummary:
    """Run (or resume) ``job`` to the end, or until it must stop; return what happened."""
    out_dir = job.output.dir
    # One run at a time in an output directory.
    with io.RunLock(out_dir, holder=lambda: lock_holder(out_dir)) as lock:
        return await _run_job(job, options or RunOptions(), lock)


async def _run_job(job: JobConfig, options: RunOptions, lock: io.RunLock) -> RunSummary:
    started = time.monotonic()
    existed = job.output.dir.is_dir()
    # Leftover temporary files are removed only by the lock's holder (where locks work): in a
    # directory that did not exist, a run that got ahead may be writing them.
    try:
        plan = prepare(job, options, tidy=lock.held or (existed and lock.unsupported))
        _check_budget_priced(plan)
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) before the run's own handler is up
        raise Interrupted("interrupted while the input was read, before any request: nothing "
                          "was sent — run the same command to start again") from None
    env = environment(job)
    summary = RunSummary(name=job.name, warnings=list(plan.warnings),
                         simulated=job.endpoint.simulator, limited=plan.limited,
                         limit=options.limit if plan.limited else None,
                         budget_usd=job.limits.max_cost_usd)
    out_dir = plan.out_dir
    run_id = new_run_id()
    async with _endpoint(job, env) as (base_url, api_key):
        _check_no_key_named(job, api_key)
        proxy = proxy_for(base_url, env)
        summary.warnings.extend(endpoint_warnings(base_url))
        for w in summary.warnings:
            say(logged(f"batchrunner: warning: {w}"))
        try:
            out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise ConfigError(f"cannot create the output directory {out_dir} "
                              f"({e.strerror or type(e).__name__}) — choose another --output"
                              ) from None
        lock.acquire()  # a new directory: taken now (an existing one was before prepare)
        if not existed and (out_dir / "job.json").exists():
            plan = prepare(job, options)  # another run made it and wrote to it meanwhile
        journal = Journal(out_dir)
        _check_writable(out_dir, journal.directory)
        journal.create()
        remaining = plan.total_rows - len(plan.done)
        summary.nothing_to_do = remaining == 0 and not plan.limited
        # started_s: the start to the millisecond (started_at is to the second), so that
        # `status` tells this run's rows from those a run just before finished in its second.
        last_run: dict[str, Any] = {"run_id": run_id, "pid": os.getpid(),
                                    "started_at": utc_timestamp(),
                                    "started_s": round(time.time(), 3), "finished_at": None,
                                    "stopped": None, "to_send": remaining}
        if plan.limited:
            last_run["limit"] = options.limit
        if options.retry_failed:  # not an option job.json's command keeps: status adds it
            last_run["retry_failed"] = True
        if plan.selection is not None:  # a run that goes on with it, unfinished, takes since_s
            # Its records finish after both its start and the journal's newest record (the
            # writer's not_before, where the clock was set back); every older record before.
            since = (max(last_run["started_s"] - 0.001, plan.newest_at + 0.001)
                     if plan.selection_since is None else plan.selection_since)
            last_run["selection"] = {**plan.selection, "since_s": since}
        plan.job_meta["last_run"] = last_run
        _without_key(plan.job_meta["command"], api_key)
        plan.job_meta["request"] = _settings_without_key(plan.job_meta["request"], api_key)
        _write_meta(plan)
        lim = job.limits
        limiter = Limiter(lim.requests_per_minute, lim.tokens_per_minute)
        progress = make_progress(job.name, options.progress)
        fixed = lim.concurrency is not None
        cap = lim.concurrency or MAX_AUTO_CONCURRENCY
        # Where the key was read, for a refused key's message; with none sent, its variable.
        key_origin: str | None = job.endpoint.api_key_env
        key_hint = ""  # with none sent: a variable of another name that holds one
        if job.endpoint.simulator:
            key_origin = None
        elif api_key:
            key_origin = origin(job, job.endpoint.api_key_env)
        elif others := set_instead(job, job.endpoint.api_key_env, KEY_VARIABLE_ENDINGS):
            key_hint = f", or pass {set_instead_hint(job, others, '--api-key-env')}"
        elif unread := unread_dotenv_line(job, job.endpoint.api_key_env):
            key_hint = f" ({unread})"
        async with ChatClient(base_url, api_key, timeout_s=lim.timeout_s, connections=cap,
                              proxy=proxy, key_origin=key_origin, key_hint=key_hint,
                              model_setting=_model_setting(plan)) as client:
            run = _Run(plan, options, client, limiter, progress,
                       JournalWriter(journal.directory, run_id,
                                     not_before=plan.newest_at),
                       max_concurrency=cap,
                       fixed_concurrency=fixed)
            # --limit: the bar runs to the rows this run sends, not to the input's.
            progress.start(plan.total_rows - plan.limited,
                           plan.total_rows - plan.limited - remaining, plan.limited)
            preload_prices()  # while the first requests are out
            try:
                await _pipeline(run)
            except BaseException as e:  # a full disk, say: `status` should not call it killed
                if isinstance(e, OutputError):  # the summary, as far as it needs no disk
                    summary.wall_s = time.monotonic() - started
                    e.summary = stopped_unwritten(summary, run, e, journal_failed=True)
                last_run.pop("outage", None)  # waited out no more: the stop says it
                last_run.pop("paused", None)
                last_run.update(finished_at=utc_timestamp(), stopped=_why(e),
                                sent=run.counters["sent"])
                if isinstance(leaf(e), KeyboardInterrupt) and run.sent_through:
                    # A second signal as the journal's last rows were written, the run's own
                    # handler down: its results and reports are to write (the command line
                    # and `status` say so, as for one while they are written).
                    last_run["results_written"] = False
                _settle_batch_checks(plan)
                with suppress(BatchrunnerError, OSError):  # best effort: the disk may be full
                    _write_meta(plan)
                raise
            finally:
                progress.close()
        # Sent through, the run's signal handler down: a signal from here on (a scheduler's
        # second SIGTERM) stops it with its results and reports to write, which the command
        # line and `status` then say (it said "finished rows are saved", and status nothing).
        last_run["results_written"] = False
        with suppress(BatchrunnerError, OSError):  # a full disk: the writes below say so
            _write_meta(plan)
        run.count_held()
        _sending_told(summary, run)
        if run.counts.resumed:  # the job's cost holds earlier runs' rows: this run's apart
            summary.run_cost_usd = run.counts.cost_usd
        summary.stopped = str(run.stop_error) if run.stop_error else None
        summary.real_unkept = run.counters["real_unkept"]
        summary.wall_s = time.monotonic() - started
        moved = await anyio.to_thread.run_sync(_input_moved, plan)
        if moved:
            # What to do next is the changed input's: a signal that stopped the run too is
            # said before it (a scheduler's SIGTERM, in its log).
            stop = run.stop_error
            if isinstance(stop, Interrupted) and stop.cause:
                moved = f"{stop.cause}, and {moved}"
            elif isinstance(stop, BudgetExceeded | AllFailing | SettingRefused
                            | EndpointChanged):
                # What the same command meets again (the budget spent, the rows failing
                # alike): said first, or the next run stops for it at once, where the stop
                # named only the input.
                moved = f"{stop}; and {moved}"
            summary.stopped = moved
        # Until the results and reports are written: a run killed meanwhile left none (or
        # last night's), which `status` says rather than that the run went through.
        last_run.pop("outage", None)  # waited out no more: the stop says it
        last_run.pop("paused", None)
        last_run.update(finished_at=utc_timestamp(), stopped=summary.stopped, sent=summary.sent,
                        results_written=False)
        if moved:  # the results are not written, nor to be: `report` refuses a changed input
            last_run["stop_kind"] = "input_changed"
        elif isinstance(run.stop_error, BudgetExceeded | AllFailing | SettingRefused
                        | EndpointChanged):
            # The same command stops again (the job's spend counts against the budget; the
            # rows fail, or are refused, as those were): status says what to do first.
            # A price missing for the budget is a fix, not a budget to raise.
            error = run.stop_error
            last_run["stop_kind"] = (
                "budget" if isinstance(error, BudgetExceeded) and not error.price_missing
                else "wait_first" if isinstance(error, AllFailing) and error.endpoint_down
                else "fix_first")
            if isinstance(error, BudgetExceeded) and error.held_usd:  # room status's command
                last_run["held_usd"] = round(error.held_usd, 10)  # leaves for them
        elif isinstance(run.stop_error, AuthError | QuotaError | AccountError | Unreachable):
            # Told apart for a script that watches the job (status --json): the key to fix,
            # the account (its quota, its billing), the endpoint to wait for or to check.
            last_run["stop_kind"] = (
                "key_refused" if isinstance(run.stop_error, AuthError)
                else "unreachable" if isinstance(run.stop_error, Unreachable) else "account")
        if summary.sent > summary.not_connected:
            # The report's wall time and counters: of the last run that sent requests, which
            # a run none of whose requests could connect is not (the run before's are kept).
            counters = dict(run.counters)
            counters.update({f"error_{k}": v for k, v in run.errors_seen.items()})
            plan.job_meta["timed_run"] = {"run_id": run_id, "wall_s": round(summary.wall_s, 3),
                                          "counters": counters}
        # Its refusals are waited for next time (_Run); not the built-in simulator's, served
        # by the run on a port of its own: a later server given that port by chance (another
        # job's batchrunner simulate) would be taken for this rehearsal's.
        if run.last_answer > -math.inf and not plan.job.endpoint.simulator:
            endpoint = _endpoint_id(client.url)
            models: list[str] = []  # the job's one model, answered here (model_answered_here)
            if plan.job_meta.get("answered_endpoint") == endpoint:
                models = [m for m in plan.job_meta.get("endpoint_models") or ()
                          if isinstance(m, str)]
            model = plan.job.request.model
            if not run.models_vary and model and run.counts.ok > plan.prior_ok and (
                    model not in models):
                models = [*models, model][-MAX_MODELS_KEPT:]
            plan.job_meta["answered_endpoint"] = endpoint
            plan.job_meta["endpoint_models"] = models
            # Not the built-in simulator's (a port of its own each run), nor batchrunner
            # simulate's: a rehearsal's port is no server that reboots, and a job whose URL
            # is later mistyped to it would wait outage_wait_s for it.
            if not (run.simulated or client.simulator_seen):
                answered = [endpoint]
                if not run.models_vary and model and run.counts.ok > plan.prior_ok:
                    answered.append(_endpoint_id(client.url, model))
                await anyio.to_thread.run_sync(_remember_endpoint, *answered)
        if run.answered_models:  # as the rows asked for them, for the next run (see Plan)
            plan.job_meta["answered_models"] = sorted(run.answered_models)[:MAX_MODELS_KEPT]
        _settle_batch_checks(plan)
        _write_meta(plan)
    if moved:
        stop = StopJob(moved)
        stop.summary = _counted(summary, run)  # the rows and cost, as far as counted
        stop.summary.stopped = "the input changed while the job ran (the line below)"
        raise stop
    if run.signalled or plan.total_rows >= WRITING_SAID_ROWS:
        # Seconds of writing (8 s at 2,000,000 rows) after the run's last line: said, or the
        # sender of a signal, hearing nothing, sends another, which leaves them to write.
        progress.write(f"batchrunner: {job.name}: writing the results and reports of "
                       f"{count_rows(plan.total_rows)}")
    try:
        await anyio.to_thread.run_sync(lambda: rebuild_outputs(plan, summary, run_id=run_id))
    except BaseException as e:  # a full disk, say: `status` should not say the run went well
        if isinstance(e, OutputError):  # the summary, as far as it needs no disk
            e.summary = stopped_unwritten(summary, run, e, journal_failed=False)
        last_run.update(stopped=_why(e))
        with suppress(BatchrunnerError, OSError):  # best effort: the disk may be full
            _write_meta(plan)
        raise
    last_run["results_written"] = True  # and rows_changed and rows_checked, as rebuilt
    _write_meta(plan)
    return summary


def _counted(summary: RunSummary, run: _Run, lost_ok: int = 0, lost_failed: int = 0
             ) -> RunSummary:
    """``summary`` of a run whose results and reports were not written, its rows and cost from
    the run's own counts (less the answers ``lost_ok`` and ``lost_failed`` the journal could
    not save), as far as the results and reports did not count them."""
    plan, counts = run.plan, run.counts
    if summary.results_path is None and not summary.rows:  # not counted by rebuild_outputs
        summary.rows = plan.total_rows
        summary.ok = counts.ok - lost_ok
        summary.failed = counts.failed - lost_failed
        summary.pending = max(0, summary.rows - summary.ok - summary.failed)
    if not summary.report_paths:  # the cost, which the reports would have summed
        summary.cost_known_usd = plan.prior_cost + counts.cost_usd
        summary.cost_unknown = counts.cost_unknown
        summary.cost_usd = None if counts.cost_unknown else summary.cost_known_usd
        summary.unpriced = "no price known for the model, or no usage reported"
        if counts.resumed:
            summary.run_cost_usd = counts.cost_usd
    return summary


def stopped_unwritten(summary: RunSummary, run: _Run, error: OutputError, *,
                      journal_failed: bool) -> RunSummary:
    """``summary`` of a run stopped by a write that failed (``error``: a full disk, say), as
    far as it can be told without writing: the rows and cost from the run's own counts (where
    the results were not written to count them), whether the journal holds every answer
    received, the disk's free space, and the commands that resume the job and write its
    results and reports."""
    plan = run.plan
    unsaved = run.journal.take() if journal_failed else []  # records the journal lacks
    # Each row's latest record of those: an answer (ok or failed), which the run counted, or
    # ``retrying``, a billed try of a row still to do, which it did not. A row may have both
    # (a billed try, then its answer): counted once, by its answer.
    lost = {o.key: o.status for o in unsaved}
    lost_ok = sum(1 for status in lost.values() if status == "ok")
    lost_failed = sum(1 for status in lost.values() if status == "failed")
    tries = len(lost) - lost_ok - lost_failed  # rows still to do whose billed tries are lost
    _counted(summary, run, lost_ok, lost_failed)
    if journal_failed:
        if run.stop_error is not None and str(run.stop_error) != str(run.write_error):
            summary.stopped = str(run.stop_error)  # a stop (SIGTERM, say) came first
        _sending_told(summary, run)
    out_dir = plan.out_dir
    free = free_bytes(out_dir)
    # Full: no room said the write. What is free now may be the disk the run held for its
    # last write (JournalWriter.reserve), which it used as far as its rows needed.
    full = error.errno in (errno.ENOSPC, errno.EDQUOT) or (
        free is not None and free < FULL_DISK_BYTES)
    shown = "" if free is None else f"{free:,} bytes free"
    disk = (f": the disk holding {out_dir} filled up" + (f" ({shown} now)" if shown else "")
            if full else f"; {shown} on its disk now" if shown else "")
    unwritten = "the journal" if journal_failed else (
        "the reports" if summary.results_path else "the results and reports")
    why = f"{unwritten} could not be written (the error below){disk}"
    summary.stopped = f"{summary.stopped}; then {why}" if summary.stopped else why
    lines = summary.unwritten
    if lost_ok + lost_failed:
        saved = (f"the answers to {count_rows(lost_ok + lost_failed)} could not be saved in the "
                 "journal: the next run sends them again")
    else:
        saved = ("every answer received (paid for) is saved in the journal: the next run sends "
                 "none of them again")
    if tries:  # their cost is spent, but only this summary counts it: not status, nor budgets
        saved += (f"; the billed tries of {count_rows(tries)} still to do could not be saved: "
                  "the cost above counts them, the journal does not")
    lines.append(saved)
    # A --retry-failed run's failed rows not sent again yet are sent only with it too.
    rerun = resume_advice(rerun_command(
        plan.job_meta, out_dir, extra=("--retry-failed",) if run.options.retry_failed else ()))
    report = f"{program(plan.job_meta)} report {shell_quote(str(out_dir))}"
    once = "space is freed" if full else "the disk can be written"
    what = "reports were" if summary.results_path else "results and reports were"
    lines.append(f"the {what} not written: once {once}, {rerun} (it writes them too), or write "
                 f"them from the journal with: {report}" if summary.pending else
                 f"the {what} not written: once {once}, write them from the journal with: "
                 f"{report}")
    return summary


def _input_moved(plan: Plan) -> str:
    """Why the results cannot be written from the input now, or "": it was replaced or
    rewritten since the run read it (tonight's export over last night's), so its rows may not
    be where the journal's answers were sent from. Its bytes are read again only when its
    files' stamp changed."""
    if plan.input_stamp is not None and plan.source.stamp() == plan.input_stamp:
        return ""
    try:
        if plan.source.fingerprint() == plan.job_meta.get("input_fingerprint"):
            return ""
    except InputError:
        pass  # removed, or no longer readable
    if plan.key_column is None:  # the next run refuses a changed input until told (--force)
        rerun = ("rows are keyed by position: if rows were only added at its end or changed "
                 "in place, run the same command again with --force to send the rows that "
                 "changed and write the results, else use another --output directory with an "
                 "id column (--id-column)")
    else:
        rerun = "run the same command again to send the rows that changed and write the results"
    return (f"input {plan.source.path} changed while the job ran (replaced, rewritten or "
            "removed): the results and reports were not written from it, as its rows may no "
            f"longer be those sent; finished rows are saved — {rerun}")


def _check_writable(*directories: Path) -> None:
    """Refuse (exit 2, nothing sent) an output directory that cannot be written at all: on a
    read-only file system, or not the user's to write. Found later, it would be a write that
    failed mid-run (exit 1: rows finished, the disk full)."""
    effective = os.access in os.supports_effective_ids  # the user the run writes as
    for directory in directories:
        if not directory.is_dir() or os.access(directory, os.W_OK | os.X_OK,
                                               effective_ids=effective):
            continue
        try:
            read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):  # no statvfs: not on Windows
            read_only = False
        why = ("on a read-only file system" if read_only
               else "no permission to write in it")
        raise ConfigError(f"cannot write in the output directory {directory} ({why}) — "
                          "choose another --output, or make it writable")


def record_rebuilt(plan: Plan) -> None:
    """``batchrunner report`` wrote the results and reports from the journal: ``job.json``
    says when, so that ``status`` does not leave a last run that could not write them (a full
    disk) as the last word. Best effort: the outputs are written already."""
    plan.job_meta["rebuilt_at"] = utc_timestamp()
    with suppress(BatchrunnerError, OSError):
        _write_meta(plan)


def _write_meta(plan: Plan) -> None:
    """``OUT_DIR/job.json``: the job's fingerprints, and its last run (``status`` shows it)."""
    io.write_atomic_bytes(plan.out_dir / "job.json",
                          json.dumps(plan.job_meta, indent=2, default=str).encode())


async def _pipeline(run: _Run) -> None:
    """Workers (new rows and retries from one queue) and the journal flusher, until every row
    is done or the run stops; then whatever is still buffered is written (into the disk held
    for it if the disk filled up meanwhile)."""
    run.journal.reserve()
    try:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                if run.options.handle_signals and _main_thread():
                    tg.start_soon(run.watch_signals, scope)
                tg.start_soon(run.tune_concurrency)
                tg.start_soon(run.flush_journal)
                async with anyio.create_task_group() as tasks:
                    run.tasks = tasks
                    run.add_workers()
                # Every row is done: stop the helpers. One whose sleep ended just now still
                # runs a step before its cancellation is delivered: it starts no worker.
                run.tasks = None
                run.sent_through = True
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(run.journal.flush)
    if run.write_error is not None:  # everything buffered was written since: the run fails
        raise run.write_error


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def plan_from_output(out_dir: Path) -> Plan:
    """Rebuild enough of a run's plan from ``OUT_DIR/job.json`` to rebuild its outputs."""
    from batchrunner.config import EndpointConfig, InputConfig, Limits, OutputConfig, RequestConfig

    out_dir = out_dir.absolute()  # as a run shows it in the reports
    meta_path = out_dir / "job.json"
    meta = read_meta(out_dir)
    io.remove_stale_temp_files(out_dir)  # the caller holds the output directory's lock
    Journal(out_dir).remove_temp_files()
    model = (meta.get("request") or {}).get("model")
    job = JobConfig(
        name=meta["name"],
        input=InputConfig(path=Path(meta["input_path"]), id_column=meta.get("id_column")),
        request=RequestConfig(model=model if isinstance(model, str) else None),
        endpoint=EndpointConfig(),
        limits=Limits(),
        output=OutputConfig(dir=out_dir, format=meta.get("output_format", "parquet")),
        prices=meta.get("prices") or {},
        source=str(meta.get("job_file") or meta_path),
    )
    source = io.open_input(job.input.path)
    if source.kind == "openai_batch":
        key_column: str | None = "custom_id"
    else:
        key_column = job.input.id_column
    prices = PriceBook(parse_price_table(job.prices, where=f"{meta_path}: prices"))
    plan = Plan(job=job, source=source, builder=None, key_column=key_column,
                total_rows=int(meta.get("total_rows") or 0),
                done=DoneRows(np.zeros(0, dtype=np.bool_)),
                out_dir=out_dir, job_meta=meta, prices=prices, warnings=[],
                structured=_structured_or_none(meta.get("request") or {}))
    if source.kind == "openai_batch":
        _restore_batch_checks(plan, meta.get("batch_checks"))
    if meta.get("rows_checked") != meta.get("input_fingerprint"):
        _changed_for_report(plan)
    return plan


# From this many rows on, a run says it is writing its results and reports (whatever stopped
# it): some 4 µs a row, a second at this size.
WRITING_SAID_ROWS = 250_000


def rebuild_outputs(plan: Plan, summary: RunSummary, *, run_id: str | None = None,
                    limited: bool | None = None) -> RunSummary:
    """``results.rebuild_outputs``, with what the summary says to do about rows cut at
    max_tokens (``_cut_advice``)."""
    _rebuild_outputs(plan, summary, run_id=run_id, limited=limited)
    if summary.length_cut:
        summary.cut_advice, summary.cut_command = _cut_advice(plan, summary)
    return summary


def _sending_told(summary: RunSummary, run: _Run) -> None:
    """What the summary says of the requests the run sent, from its counts."""
    counters = run.counters
    summary.cut_off = run.counts.in_flight
    summary.sent = counters["sent"]
    summary.not_connected = counters["not_connected"]
    summary.cut_unanswered = counters["cut_unanswered"]
    summary.cut_left = counters["cut_left"]
    summary.sent_alone = counters["sent_alone"]
    summary.rate_limited = counters["http_429"]
    # The errors retried: 429s, the requests that found no connection or were cut in an
    # outage (told apart: the notes beside it), and the rows' last tries, which failed them
    # (the failures line), left out.
    errors = run.errors_seen.copy()
    errors.subtract({"rate_limited": errors["rate_limited"],
                     "connection_error": counters["not_connected"],
                     "connection_reset": counters["cut_unanswered"]})
    errors.subtract({kind: n for kind, n in run.failed_kinds.items() if kind is not None})
    summary.request_errors = {kind: n for kind, n in sorted(errors.items(),
                                                             key=lambda kv: (-kv[1], kv[0]))
                              if n > 0}  # most first, then by name
    summary.simulated = run.simulated


def _cut_advice(plan: Plan, s: RunSummary) -> tuple[str, str]:
    """What the summary says to do about the rows ``s`` counts cut at max_tokens: status's
    ``cut_advice``, with the job's budget as the run has it."""
    return cut_advice(plan.job_meta, plan.out_dir, rows=s.length_cut,
                      every_choice=s.choices_asked > 1 or s.choice_cut, tokens=s.cut_tokens,
                      usd=s.cut_usd, pending=s.pending,
                      spent=s.cost_known_usd + s.earlier_cost_usd + s.unreported_usd,
                      budget=job_budget(plan.job_meta, plan.job.limits.max_cost_usd),
                      batch_input=s.batch_input)


def _structured_or_none(settings: dict[str, Any]) -> StructuredOutput | None:
    """The structured output of a job's recorded settings; None (no ``json_`` columns) when
    this version refuses them, so that the results can still be rebuilt."""
    try:
        return structured_output(settings)
    except ConfigError:
        return None


def _show(path: Path) -> str:
    """``path`` relative to the current directory when it is below it, but for ``/`` (a
    systemd timer's, a container's), below which every path is: "tmp/out/results.parquet" in
    a log read later looked relative to some other directory."""
    cwd = Path.cwd()
    if cwd == cwd.parent:
        return str(path)
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def _names_model(model: str, message: str) -> bool:
    """Whether ``message`` names ``model``, as a word of its own."""
    return re.search(rf"(?<![\w.:/-]){re.escape(model)}(?![\w.:/-])", message) is not None


def _search_units(web_searches: int | None, sources: int | None) -> int | None:
    """A reply's search units as the row records them: its web searches, else its sources."""
    return web_searches if web_searches is not None else sources


def _over_budget(s: RunSummary) -> str:
    """Where the job's spend passed its max_cost_usd (the requests in flight when the budget
    stopped it answered at more than they were held at), by how much: a budget stop's line
    gives the spend when it stopped, under the budget, and nothing else said so."""
    if s.budget_usd is None or not s.sent:  # a rerun that sent nothing passed nothing
        return ""
    answers = s.cost_known_usd if s.cost_usd is None else s.cost_usd
    spend = answers + s.earlier_cost_usd + s.unreported_usd
    if spend <= s.budget_usd + 5e-5:  # as shown, to the hundredth of a cent
        return ""
    return (f"the job's spend, {format_usd(spend)}, passed max_cost_usd "
            f"{format_budget(s.budget_usd)} by {format_usd(spend - s.budget_usd)}: the requests "
            "in flight as it stopped cost more than they were held at (prompts longer in "
            "tokens than estimated, a pricier model answering, replies with no max_tokens)")


def format_summary(s: RunSummary) -> str:
    lines = []
    head = f"batchrunner: {s.name} — {count_rows(s.rows)}: {s.ok:,} ok, {s.failed:,} failed"
    if s.pending:
        head += f", {s.pending:,} not done yet"
    lines.append(head)
    if s.error_types:
        lines.append("  failures: " + ", ".join(f"{k} {v:,}" for k, v in s.error_types.items()))
        for etype in list(s.error_types)[:MAX_SUMMARY_EXAMPLES]:
            if example := s.error_examples.get(etype):
                lines.append(f"    {etype}: {example}")
    if s.changed_left:
        lines.append(f"  warning: {changed_warning(s.changed_left, exact=s.changed_exact)}")
    if s.length_cut:
        lines.append("  warning: " + cut_warning(s.length_cut, s.choices_asked, s.choice_cut,
                                                 s.cut_advice, s.cut_command))
    if s.filtered:
        lines.append(f"  warning: {count_rows(s.filtered)} stopped by the content filter "
                     f"(finish_reason=content_filter): {'its' if s.filtered == 1 else 'their'} "
                     "content is cut short or empty")
    if s.paused:
        lines.append(f"  warning: {paused_warning(s.paused)}")
    lines.extend(f"  warning: {said}" for said in s.cached_at_input_price)
    lines.extend(f"  warning: {said}" for said in s.audio_at_text_price)
    if s.fewer_choices:
        lines.append(f"  warning: {fewer_choices_warning(s.fewer_choices, s.choices_asked)}")
    answers = s.cost_known_usd if s.cost_usd is None else s.cost_usd
    # A rerun's own spend: what its requests were billed, retries included. Beside it, the
    # job's counted alike: its rows' answers plus their earlier billed attempts.
    idle = s.ran and s.nothing_to_do and not s.stopped
    this_run = s.run_cost_usd if s.ran and not idle else None
    unpriced = (f"{count_rows(s.cost_unknown)} without a cost ({s.unpriced})"
                if s.cost_usd is None and s.cost_unknown else "")
    if unpriced and not answers:  # no row's cost is known: no sum of them to show
        cost = f"unknown: {unpriced}"
    else:
        cost = format_usd(answers)
        if this_run is not None and not s.earlier_cost_usd:
            cost += f" for the job, {format_usd(this_run)} of it this run"
        elif idle and s.run_cost_usd is not None and not s.earlier_cost_usd:
            cost += " for the job"  # a rerun's: none of it this run's
        if unpriced:
            cost += f", and {unpriced}"
    cost += plus_earlier(s.earlier_cost_usd, s.billed_to_do, s.billed_to_do_usd)
    if this_run is not None and s.earlier_cost_usd:
        cost += (f"; {format_usd(answers + s.earlier_cost_usd)} spent in all, "
                 f"{format_usd(this_run)} of it this run")
    if s.unreported_rows:
        cost = (f"{'' if unpriced and not answers else 'at least '}{cost}, plus tries of "
                f"{count_rows(s.unreported_rows)} that may have "
                f"been billed with no usage reported, estimated at "
                f"{format_usd(s.unreported_usd)}")
    if idle:
        if s.simulated:
            cost += " (to the built-in simulator: the answers are not real)"
    elif s.ran:
        sent = f"{s.sent:,} request" + ("" if s.sent == 1 else "s")
        notes = []
        if s.sent and s.not_connected == s.sent:  # none reached the endpoint: none was sent
            cost += f"; wall {s.wall_s:,.1f} s; {sent} tried this run, none could connect"
        else:
            cost += f"; wall {s.wall_s:,.1f} s; {sent} sent this run"
            if s.not_connected:
                notes.append(f"{s.not_connected:,} could not connect")
        if s.cut_unanswered:
            cut = f"{s.cut_unanswered:,} cut unanswered while the endpoint answered nothing"
            rows = "its row is" if s.cut_left == 1 else "their rows are"
            if not s.cut_left:
                cut += ", and sent again"
            elif s.cut_left < s.cut_unanswered:
                cut += (f", and sent again but the last {s.cut_left:,}: {rows} sent on the "
                        "next run")
            else:
                cut += f": {rows} sent on the next run"
            notes.append(cut)
        if s.sent_alone:
            notes.append(f"{s.sent_alone:,} sent alone: rows cut each time the server went "
                         "down, sent one at a time to tell a row that brings it down from those "
                         "beside it")
        if s.request_errors:  # the retries, beside the rows' failures (their own line)
            kinds = list(s.request_errors.items())
            shown = ", ".join(f"{kind} {n:,}" for kind, n in kinds[:3])
            notes.append(f"{sum(s.request_errors.values()):,} retried after an error: {shown}"
                         + (", ..." if len(kinds) > 3 else ""))
        if s.rate_limited:  # a slow run says why: a storm of 429s, waited out
            notes.append(f"{s.rate_limited:,} answered 429, rate limited")
        if s.simulated and s.real_unkept:
            notes.append(f"{s.real_unkept:,} answered by a real endpoint now: billed, not kept"
                         + ("; the others' answers, the built-in simulator's, are not real"
                            if s.real_unkept < s.sent else ""))
        elif s.simulated and s.not_connected < s.sent:  # some answered: the simulator
            notes.append("to the built-in simulator: the answers are not real")
        if notes:
            cost += f" ({'; '.join(notes)})"
    lines.append(f"  cost: {cost}")
    if over := _over_budget(s):
        lines.append(f"  warning: {over}")
    if idle:
        done = f"the {count_rows(s.rows)}" if s.rows > 1 else "the row"
        lines.append(f"  nothing to do: earlier runs did {done}"
                     + (f" ({s.failed:,} failed)" if s.failed else "") + ", so none was sent")
    if s.results_path:
        lines.append(f"  results: {_show(s.results_path)}")
        for fmt in OUTPUT_FORMATS:  # a results file of another format is an earlier run's
            other = s.results_path.with_suffix(f".{fmt}")
            if other != s.results_path and other.exists():
                lines.append(f"  note: {_show(other)} is from an earlier run with --format "
                             f"{fmt} and is not updated")
    if s.report_paths:
        lines.append(f"  report:  {', '.join(_show(p) for p in s.report_paths)}")
    if s.stopped:
        lines.append(f"  stopped: {s.stopped}")
        if s.cut_off:
            lines.append(f"  {s.cut_off:,} request{'s were' if s.cut_off > 1 else ' was'} still "
                         "in flight and cut off: the server may bill them, and their rows are "
                         "sent again on the next run")
        lines.extend(f"  {line}" for line in s.unwritten)
    elif s.pending and not s.limited:
        lines.append(f"  {s.first + ', then ' if s.first else ''}rerun the job"
                     f"{' with --retry-failed' if s.retry_failed else ''} to send the rows not "
                     "done yet" + (" and the failed rows again" if s.retry_failed else ""))
    elif s.failed and s.retry_failed:
        lines.append(f"  {s.first}, then rerun the job with --retry-failed to send the failed "
                     "rows again")
    elif s.failed:
        lines.append(f"  {retry_advice(s.error_types, cut=s.cut_failed)}")
    if s.failed_choices:
        note = resend_choices_note(s.failed_choices, s.failed_choices_usd, s.choices_asked)
        lines.append(f"  {note}")
    if s.limited and s.limit and not s.stopped:
        rows = "row" if s.limit == 1 else f"{s.limit:,} rows"
        lines.append(f"  --limit {s.limit:,} left {count_rows(s.limited)} to do: the same command "
                     f"sends the next {rows}, without --limit all of them")
    return "\n".join(lines)
