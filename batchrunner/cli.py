"""The ``batchrunner`` command: a thin argparse shell around the runner.

Exit codes: 0 every row ok (with --limit, every row done so far); 2 bad usage, job file, input
or output directory (nothing sent); 3 finished with failed rows; 4 stopped early (auth, quota,
budget, unreachable, all failing, interrupted) and resumable; 5 another run holds the output
directory (nothing done); 1 output not written.
``report`` exits 0, 3 or 4 (rows left to do) as the journal stands (after a run that ended as
--limit asked, as that run did), or 1, 2 or 5 as a run would; ``status`` and ``estimate`` exit 0,
or 2.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import difflib
import gc
import importlib.util
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio

from batchrunner import __version__
from batchrunner.config import BODY_FIELDS, LONG_SECRET, OUTPUT_FORMATS, secrets_known
from batchrunner.errors import (
    BatchrunnerError,
    InputError,
    Interrupted,
    JournalError,
    OutputBusy,
    OutputError,
    StopJob,
    UsageError,
    leaf,
)
from batchrunner.eventloop import loop_factory
from batchrunner.progress import flush_outputs, logged, program, say, shell_quote

__all__ = ["before_imports", "main"]

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter

EPILOG = """\
exit codes: 0 all rows ok (with --limit, all done so far) · 2 bad job,
            option, input or output directory (nothing sent) · 3 finished with
            failed rows · 4 stopped early (auth, quota, billing or region,
            budget, endpoint unreachable or silent, every request failing,
            Ctrl-C, SIGTERM or SIGHUP, the input replaced while it ran), rerun
            to resume; from report: rows are left to do (after a --limit
            run, as that run exited) · 5 another run is using the output
            directory (nothing done): run again once it ends · 1 output could
            not be written (disk full) · status, estimate: 0 or 2
"""


def _run_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run (or resume) a job",
        description="Run a job file, or a job given entirely by options. Rerunning the same "
        "command\nresumes: rows already ok are never sent again.",
        epilog="examples:\n"
        "  batchrunner run jobs/tickets.toml\n"
        "  batchrunner run --input x.csv --id-column id --prompt 'Summarise: {text}' \\\n"
        "      --model gpt-4o-mini --output out/x\n"
        "add --simulator to rehearse with no key and no network, --limit 20 to try the\n"
        "prompt on 20 rows first\n\n"
        "request fields with no option here (n, seed, reasoning_effort, tools,\n"
        "response_format, a gateway's thinking or search settings) go in a job file's\n"
        "[request.extra], sent into every body as written (README: The job file)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _job_arguments(p)
    g = p.add_argument_group("rerun")
    g.add_argument("--retry-failed", action="store_true", help="also resend rows that failed")
    g.add_argument("--rerun-where", metavar="EXPR",
                   help="also resend rows whose recorded outcome matches, "
                   "e.g. \"finish_reason == 'length'\" (\"True\": every row)")
    g.add_argument("--force", action="store_true",
                   help="go on although the input, its id column, the request settings or "
                   "the endpoint (the simulator or a real one) changed since the last run")
    _limit_argument(p, "send at most N rows this run, the first to do in input order (try a "
                    "prompt on a few rows: a rerun without it sends the rest)")
    p.add_argument("--dry-run", action="store_true",
                   help="estimate rows, tokens, cost and time, and send nothing")
    p.add_argument("--progress", choices=("auto", "bar", "log", "none"), default="auto",
                   help="progress display (auto: a bar on a terminal, log lines otherwise)")
    p = sub.add_parser(
        "estimate",
        help="estimate a job's rows, tokens, cost and time without sending anything",
        description="Read the input, render every request a run would send, and print "
        "estimated tokens and cost per model and the time the rate limits imply.",
    )
    _job_arguments(p)
    g = p.add_argument_group("rerun")
    g.add_argument("--retry-failed", action="store_true", help="count failed rows as to send")
    g.add_argument("--rerun-where", metavar="EXPR", help="count matching rows as to send")
    g.add_argument("--force", action="store_true", help="as for run")
    _limit_argument(p, "count at most N rows to send, as run --limit sends")


def _limit_argument(p: argparse.ArgumentParser, help: str) -> None:
    def rows(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise UsageError(f"--limit takes a whole number of rows, 1 or more, got {text!r}")
        return n

    p.add_argument("--limit", type=rows, metavar="N", help=help)


def _job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", nargs="?", help="job file (TOML); options below override its fields")
    g = p.add_argument_group("input")
    g.add_argument("--input", metavar="PATH",
                   help=".csv, .tsv, .parquet, .jsonl, or a Parquet folder; an OpenAI batch "
                        ".jsonl (custom_id, method, url, body) is sent as it is, with no "
                        "request options")
    g.add_argument("--id-column", metavar="COL", help="column with a unique id for each row")
    g = p.add_argument_group("request")
    g.add_argument("--model", help="model name, e.g. gpt-4o-mini")
    g.add_argument("--prompt", metavar="TEMPLATE", help="prompt template, e.g. 'Summarise: {text}'")
    g.add_argument("--prompt-column", metavar="COL", help="column holding the whole prompt")
    g.add_argument("--system", metavar="TEXT", help="system message")
    _typed(g, "--temperature", float, "a number from 0 to 2", metavar="X",
           help="sampling temperature, 0 to 2 (default: the model's)")
    _typed(g, "--max-tokens", int, "a whole number of tokens", metavar="N",
           help="most tokens per reply (default: the model's)")
    _typed(g, "--max-completion-tokens", int, "a whole number of tokens", metavar="N",
           help="the same, sent as max_completion_tokens: what OpenAI's reasoning models "
           "(o-series, GPT-5) take instead of max_tokens, their reasoning included")
    _typed(g, "--top-p", float, "a number from 0 to 1", metavar="P",
           help="nucleus sampling: the top probability mass to draw from, 0 to 1 "
           "(default: the model's)")
    g.add_argument("--stop", action="append", metavar="SEQ", help="stop sequence (repeatable)")
    g.add_argument("--model-column", metavar="COL", help="column with a per-row model")
    g.add_argument("--image-column", metavar="COL",
                   help="column with an image URL or file path, for vision models")
    g.add_argument("--from-column", dest="from_columns", action="append", type=_field_column,
                   metavar="FIELD=COL", help="set a body field from a column, e.g. "
                   "user=customer_id (repeatable; replaces the job file's from_columns)")
    g.add_argument("--schema-file", metavar="FILE",
                   help="JSON Schema the replies must match (spread into json_* columns)")
    g.add_argument("--stream", action="store_const", const=True, default=None,
                   help="read replies as SSE streams (records time to first token)")
    g = p.add_argument_group("endpoint")
    g.add_argument("--base-url", metavar="URL", help="default: $OPENAI_BASE_URL")
    g.add_argument("--base-url-env", metavar="VAR", help="variable holding the URL when "
                   "--base-url is not given (default OPENAI_BASE_URL; .env is read)")
    g.add_argument("--api-key-env", metavar="VAR", help="variable holding the key "
                   "(default OPENAI_API_KEY; .env is read)")
    g.add_argument("--simulator", action="store_const", const=True, default=None,
                   help="run against the built-in simulator (no key, no network)")
    g = p.add_argument_group("limits")
    _typed(g, "--rpm", float, "a number of requests per minute", dest="requests_per_minute",
           metavar="N", help="requests per minute (default: none, the server's "
           "x-ratelimit-* headers pace the run)")
    _typed(g, "--tpm", float, "a number of tokens per minute", dest="tokens_per_minute",
           metavar="N", help="tokens per minute (default: none, as for --rpm)")
    _typed(g, "--concurrency", int, "a whole number of requests", metavar="N",
           help="requests in flight (default: sized from the rate limit and latency)")
    _typed(g, "--timeout", float, "a number of seconds", dest="timeout_s", metavar="S",
           help="seconds a request's answer may take (default 120); a streamed one's: "
           "its first byte and each gap between its chunks, the whole 10 × as long at most "
           "(or max_tokens at 10 tokens a second)")
    _typed(g, "--max-attempts", int, "a whole number of attempts", metavar="N",
           help="attempts per row (default 6)")
    _typed(g, "--max-cost", float, "an amount in US dollars (e.g. 2.50)", dest="max_cost_usd",
           metavar="USD", help="stop before the job's total spend could pass this many US "
           "dollars (default: no budget)")
    _typed(g, "--outage-wait", float, "a number of seconds", dest="outage_wait_s", metavar="S",
           help="seconds to wait for an endpoint that answered before (in this run or an "
           "earlier one) and now cannot be reached: a restart, a reboot and its model's load "
           "(default 300; 0: stop at once)")
    g = p.add_argument_group("output")
    g.add_argument("--output", metavar="DIR", help="output directory (journal, results, report)")
    g.add_argument("--format", choices=OUTPUT_FORMATS, help="results format (default parquet)")
    g.add_argument("--name", help="job name shown in progress and reports (default: the job "
                   "file's name, else the input's)")


_T = TypeVar("_T")


def _typed(g: Any, option: str, kind: Callable[[str], _T], takes: str, **kwargs: Any) -> None:
    """Add ``option``, read with ``kind``: a value it cannot read is refused in one line naming
    the option and what it ``takes`` (its range is checked with the job's other settings)."""

    def read(text: str) -> _T:
        try:
            return kind(text)
        except ValueError:
            raise UsageError(f"{option} takes {takes}, got {text!r}") from None

    g.add_argument(option, type=read, **kwargs)


class _Parser(argparse.ArgumentParser):
    """Refuses a bad command line in one line, as every other usage error is (exit 2), instead
    of argparse's usage block. ``commands``: the subcommands' parsers, on the top-level one."""

    commands: Mapping[str, argparse.ArgumentParser]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No option taken by its first letters: --n (the request field n) read as --name, or
        # --top as --top-p, would run a job other than the one asked for, without a word.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        if "invalid choice" not in message:  # a choice's message lists what it takes
            message += f" — see {_named(self.prog)} --help"
        raise UsageError(message)


def build_parser(simulate_options: bool = True) -> _Parser:
    """The whole CLI; ``simulate_options=False`` skips importing the simulator (start-up)."""
    parser = _Parser(
        prog="batchrunner",
        description="Run large batches of OpenAI-compatible chat completion requests: "
        "rate-limited,\nretried, resumable, with a cost report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchrunner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="what to do (batchrunner COMMAND --help: its options)")
    parser.commands = sub.choices
    _run_parser(sub)

    where = "a run's output directory (its --output), or its job file"
    p = sub.add_parser(
        "status", help="progress, failures and cost of an output directory",
        description="Rows done, failures by type and cost so far, from the journal; for a run "
        "in progress, its pace and time left; else how the last run ended. Safe during a run.")
    p.add_argument("out_dir", metavar="OUT_DIR", help=where)
    p.add_argument("--json", action="store_true",
                   help="print it as one JSON object, for a script to read (status_version, "
                   "state, rows, failed_by_type, tokens, cost_usd, input, last_run)")
    p = sub.add_parser(
        "report", help="rebuild results and reports from the journal",
        description="Write the results file and the cost reports again from the journal: "
        "after a run was killed, or to see a stopped run's rows so far. Not during a run.")
    p.add_argument("out_dir", metavar="OUT_DIR", help=where)

    p = sub.add_parser(
        "simulate",
        help="serve the built-in OpenAI-compatible simulator",
        description="An OpenAI-compatible chat completions server for rehearsals and tests: "
        "deterministic replies, rate limits, latency and faults. No key, no network.",
    )
    if simulate_options:
        from batchrunner import simulator

        simulator.add_arguments(p)
    return parser


def _field_column(text: str) -> tuple[str, str]:
    name, eq, column = text.partition("=")
    if not (eq and name.strip() and column.strip()):
        raise UsageError(f"--from-column takes FIELD=COLUMN, e.g. user=customer_id, got {text!r}")
    return name.strip(), column.strip()


def _parse(parser: _Parser, args: list[str]) -> argparse.Namespace:
    """``args`` parsed; an argument nothing takes is refused by the (sub)command given it."""
    # The top level takes no option with a value: its first other argument is the command.
    given = next((a for a in args if not a.startswith("-")), None)
    if given is not None and given not in parser.commands:
        if given.lower().endswith(".toml"):  # the job file, "run" left out (the options
            more = " ..." if len(args) > 1 else ""  # after it not shown: one may be a key)
            raise UsageError(f"{given!r} is not a command: to run that job file, "
                             f"{program()} run {shell_quote(given)}{more}")
        close = difflib.get_close_matches(given, list(parser.commands), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"no command {given!r}{hint} — the commands: "
                         f"{', '.join(parser.commands)} ({_named(parser.prog)} --help)")
    ns, extras = parser.parse_known_args(args)
    if error := _input_pattern_expanded(ns, extras):
        raise error
    if extras:
        # The top level's only options are -h and --version: its first other argument is the
        # command, and what comes before it is the top level's.
        command = next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))
        full = build_parser()  # simulate's options too, to tell an option of simulate's
        if ns.command is None or args.index(extras[0]) < command:
            raise _unknown(full, extras, full.commands)
        raise _unknown(full.commands[ns.command], extras, full.commands)
    return ns


_INPUT_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json")


def _input_pattern_expanded(ns: argparse.Namespace,
                            extras: list[str]) -> UsageError | None:
    """The error for ``--input parts/*.parquet``, the pattern expanded by the shell into
    several files: the first was --input's, the second was taken for the job file ("looks like
    an input file, not a job file — pass it as --input", dropping the first) and the others
    for arguments nothing takes ("run takes no argument ...")."""
    given = getattr(ns, "input", None)
    files = [f for f in (getattr(ns, "job", None), *extras) if f is not None]
    if given is None or not files or not all(
            Path(f).suffix.lower() in _INPUT_SUFFIXES for f in files):
        return None
    every = [given, *files]
    folders = {os.path.dirname(f) or "." for f in every}
    fix = (f"give their directory, --input {shell_quote(folders.pop())} (every .parquet file in "
           "it is read)" if len(folders) == 1 and all(
               f.lower().endswith(".parquet") for f in every)
           else "give one file, or a directory of .parquet files")
    shown = ", ".join(every[:2]) + (", ..." if len(every) > 2 else "")
    return UsageError(f"--input takes one file or a directory, and was given {len(every)} files "
                      f"({shown}: a pattern the shell expanded?) — {fix}")


# A variable's setting, as the shell takes one before a command (OPENAI_API_KEY=sk-...).
_SETTING = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# A key by the way providers begin theirs (OpenAI's and most gateways' sk-, xAI's, Groq's,
# Google's, Hugging Face's, NVIDIA's), 16 characters and more, with no path in it.
_KEY_SHAPE = re.compile(r"(?:sk-|sk_|xai-|gsk_|AIza|hf_|nvapi-)[\w-]{12,}")


def _setting_given(arg: str, command: str) -> UsageError | None:
    """The error for ``arg`` where it is a variable's setting, or a key, given after the
    command, where it is an argument (a job file not found, or one too many), its value never
    shown: a key (OPENAI_API_KEY=sk-...) was printed whole in that error, into a crontab's
    log."""
    if os.path.exists(arg):  # a file or directory of that name, as odd as it is
        return None

    def where(name: str) -> str:
        return (f"put it before the command ({name}=... {program()} {command} ...), export "
                "it, or write it in a .env file (beside the job file, or in the current "
                "directory)")
    if _SETTING.match(arg):
        name = arg.partition("=")[0]
        return UsageError(f"{name}=... is a variable's setting, not an argument of "
                          f"{command}: {where(name)}")
    if "{" in arg and "}" in arg:
        # --prompt Describe: {name}, unquoted: the shell split the template into words.
        return UsageError(f"{arg!r} looks like part of a prompt template: put the whole "
                          "--prompt in quotes (--prompt 'Describe: {name}')")
    if _KEY_SHAPE.fullmatch(arg):
        return UsageError(f"an argument of {command} looks like an API key (not shown): set it "
                          "in OPENAI_API_KEY, or the variable api_key_env names — "
                          f"{where('OPENAI_API_KEY')}")
    return None


def _unknown(parser: argparse.ArgumentParser, extras: list[str],
             commands: Mapping[str, argparse.ArgumentParser]) -> UsageError:
    """One line for the arguments ``parser`` does not take: an option like one it has is
    suggested; one that another command has is said to be that command's."""
    name = parser.prog.split()[-1]
    options = [e.partition("=")[0] for e in extras if e.startswith("-") and e != "-"]
    if not options:
        if error := next(filter(None, (_setting_given(e, name) for e in extras)), None):
            return error
        shown = ", ".join(repr(e) for e in extras)
        return UsageError(f"{name} takes no argument {shown} — see {_named(parser.prog)} "
                          "--help")
    own = [o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")]
    notes = []
    for option in options:
        elsewhere = [c for c, p in commands.items() if p is not parser
                     and any(option in a.option_strings for a in p._actions)]
        # The start of one of ours (--top: options are not taken by their first letters), a
        # near miss (--max_tokens), or one of ours with a word before it (--results-format).
        starting = [o for o in own if o.startswith(option)]
        close = starting[:1] if len(starting) == 1 else (
            difflib.get_close_matches(option, own, n=1, cutoff=0.75)
            or [o for o in own if o.startswith("--") and option.endswith(f"-{o[2:]}")][:1])
        field = option.lstrip("-").replace("-", "_")
        if option.replace("_", "-") in own:  # --max_tokens: one of ours, spelt as the field
            notes.append(f"{option} (did you mean {option.replace('_', '-')}?)")
        elif name in ("run", "estimate") and field == "response_format":
            notes.append(f"{option} (replies are checked against --schema-file, or a job "
                         "file's [request] response_format)")
        elif name in ("run", "estimate") and field in ("max_retries", "retries"):
            # The OpenAI SDK's setting, as the gateways' guides set it (max_retries=2)
            notes.append(f"{option} (the OpenAI SDK's max_retries N is --max-attempts N+1 "
                         "here: the first try and N retries)")
        elif name in ("run", "estimate") and field in ("api_key", "key"):
            # The OpenAI SDK's api_key, as a guide's reader passes it (simulate's is the key
            # the simulator asks for)
            notes.append(f"{option} (the key is read from OPENAI_API_KEY, in the environment "
                         "or a .env file, never from an option; --api-key-env names another "
                         "variable)")
        elif name in ("run", "estimate") and field in BODY_FIELDS:  # --n 3, --seed 7
            notes.append(f"{option} (the request field {field}: set it in a job file's "
                         f"[request.extra], or per row with --from-column {field}=COLUMN)")
        elif elsewhere:
            notes.append(f"{option} (an option of {' and '.join(elsewhere)})")
        elif close:
            notes.append(f"{option} (did you mean {close[0]}?)")
        else:
            notes.append(option)
    shown = f"option {notes[0]}" if len(notes) == 1 else f"options {', '.join(notes)}"
    return UsageError(f"{name} has no {shown} — see {_named(parser.prog)} --help")


def _named(prog: str) -> str:
    """A parser's ``prog`` (``batchrunner run``) as a command printed names it: the program
    as ``progress.program`` names it."""
    return program() + prog.removeprefix("batchrunner")


def _overrides(ns: argparse.Namespace) -> dict[str, Any]:
    from batchrunner.config import OVERRIDES

    out = {k: getattr(ns, k, None) for k in OVERRIDES}
    stop = out.get("stop")
    if isinstance(stop, list) and len(stop) == 1:
        out["stop"] = stop[0]
    pairs = out.get("from_columns")
    if pairs is not None:
        out["from_columns"] = dict(pairs)
    return out


def _cmd_run(ns: argparse.Namespace) -> int:
    if getattr(ns, "dry_run", False) or ns.command == "estimate":
        return _cmd_estimate(ns)
    try:
        from batchrunner.config import load_job
        from batchrunner.runner import RunOptions, format_summary, run_job

        job = load_job(ns.job, _overrides(ns))
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) while the run starts
        raise Interrupted("interrupted while starting, before any request: nothing was sent "
                          "— run the same command to start again") from None
    options = RunOptions(retry_failed=ns.retry_failed, rerun_where=ns.rerun_where,
                         force=ns.force, progress=ns.progress, limit=ns.limit)
    _tune_gc()
    started = time.time()
    try:
        summary = anyio.run(run_job, job, options, backend_options=event_loop_options())
    except BaseException as e:
        if isinstance(leaf(e), KeyboardInterrupt) and _writing_when_stopped(job.output.dir,
                                                                            started):
            global _writing_stopped
            _writing_stopped = True
            out = shell_quote(str(job.output.dir))
            raise Interrupted(
                "interrupted while the results and reports were written: they may be missing, "
                "or an earlier run's; finished rows are saved — write them with: "
                f"{program()} report {out}, or run the same command again (it resumes, and "
                "writes them)"
            ) from None
        raise
    say(format_summary(summary), sys.stdout)
    return summary.exit_code


# A signal stopped the run as it wrote its results and reports (``main`` leaves them).
_writing_stopped = False


def _writing_when_stopped(out_dir: Path, since: float) -> bool:
    """Whether the run started at ``since`` into ``out_dir`` was stopped writing its results
    and reports, as its ``job.json`` says (its rows sent, the outputs not written, the end of
    its run recorded or not yet): a signal then is no run cut short, but outputs to write."""
    from batchrunner.status import read_meta

    try:
        last = read_meta(out_dir).get("last_run")
    except BatchrunnerError:  # none, or damaged: nothing to tell by
        return False
    if not isinstance(last, dict):
        return False
    started = last.get("started_s")
    # This run's (to the millisecond it records), not the run before's: one stopped before it
    # wrote its own job.json leaves that run's.
    return (isinstance(started, int | float) and started >= since - 0.001
            and last.get("pid") == os.getpid() and last.get("results_written") is False)


def _cmd_estimate(ns: argparse.Namespace) -> int:
    from batchrunner.config import NoOutputDir, load_job
    from batchrunner.estimate import estimate, format_estimate
    from batchrunner.runner import RunOptions, prepare

    options = RunOptions(retry_failed=ns.retry_failed, rerun_where=ns.rerun_where,
                         force=ns.force, limit=ns.limit, estimating=True)
    overrides = _overrides(ns)
    try:
        job = load_job(ns.job, overrides)
    except NoOutputDir:
        # No output directory: a job that never ran, every row to do. The one named here is
        # never made.
        with tempfile.TemporaryDirectory() as tmp:
            job = load_job(ns.job, {**overrides, "output": os.path.join(tmp, "never-made")})
            plan = prepare(job, options, tidy=False)
    else:
        plan = prepare(job, options, tidy=False)  # tidy=False: a run may be writing
    say(format_estimate(estimate(plan)), sys.stdout)
    return 0


def _cmd_report(ns: argparse.Namespace) -> int:
    from batchrunner.io import RunLock
    from batchrunner.runner import (
        RunSummary,
        format_summary,
        plan_from_output,
        rebuild_outputs,
        record_rebuilt,
    )
    from batchrunner.status import budget_to_raise, lock_holder

    out_dir = _out_dir(ns.out_dir)
    with RunLock(out_dir, holder=lambda: lock_holder(out_dir)):  # not during a run
        try:
            plan = plan_from_output(out_dir)
        except InputError as e:
            raise _input_gone(out_dir, e) from None
        if plan.source.fingerprint() != plan.job_meta.get("input_fingerprint"):
            raise UsageError(f"{plan.source.path} changed since the job's last run: its rows "
                             "may no longer match the journal's — run the job again instead "
                             "(it resumes, and rebuilds the results and reports)")
        last = plan.job_meta.get("last_run")
        limit = (int(last["limit"]) if isinstance(last, dict) and type(last.get("limit")) is int
                 else None)
        # Its results end at the last row done, as the --limit run's did.
        summary = rebuild_outputs(plan, RunSummary(name=plan.job.name, ran=False),
                                  limited=limit is not None)
        record_rebuilt(plan)
    if limit is not None and isinstance(last, dict) and last.get("finished_at") \
            and not last.get("stopped"):
        # The last run ended as --limit asked: the rows it left are what was asked, not rows
        # a stop or a crash left (their exit, 4), and report exits as that run did.
        summary.limit, summary.limited = limit, summary.pending
    kind = last.get("stop_kind") if isinstance(last, dict) and last.get("finished_at") else None
    if kind in _FIRST:  # the same command stops again until this is done: status's advice
        status = f"{program(plan.job_meta)} status {shell_quote(ns.out_dir)}"
        summary.first = _FIRST[kind].format(status=status, budget=budget_to_raise(plan.job_meta))
        summary.retry_failed = kind != "budget" and summary.failed > 0
    say(format_summary(summary), sys.stdout)
    return summary.exit_code


# What to do before rerunning a job whose last run stopped so (job.json's last_run stop_kind).
_FIRST = {
    "budget": "raise {budget}, which the job's cost so far counts against and "
              "the last run stopped at ({status} names the command, with it raised to what the "
              "rows left cost at the job's cost a row so far)",
    "fix_first": "fix what stopped the last run ({status} says what, and names the command)",
    "wait_first": "wait for the endpoint to recover from what stopped the last run ({status} says "
                  "what, and names the command)",
}


def _input_gone(out_dir: Path, error: InputError) -> UsageError:
    """``error`` (the job's input cannot be opened) as report meets it: when the input is no
    longer where the job read it, say that report needs it there."""
    from batchrunner.status import read_meta

    path = Path(str(read_meta(out_dir).get("input_path")))
    if path.exists():
        return error  # there, but unreadable: its own message says why
    return UsageError(f"the job's input {path} is gone: report rebuilds the results from it — "
                      "put it back at that path, or run the job again with --input naming "
                      "where it is now (it resumes, and rebuilds the results and reports)")


def _cmd_status(ns: argparse.Namespace) -> int:
    from batchrunner.status import format_status, status_json

    out_dir = _out_dir(ns.out_dir)
    if ns.json:
        say(json.dumps(status_json(out_dir), indent=2, allow_nan=False), sys.stdout)
    else:
        say(format_status(out_dir), sys.stdout)
    return 0


def _out_dir(given: str) -> Path:
    """The output directory named, or the one a job file names."""
    path = Path(given)
    if path.suffix.lower() == ".toml" and path.is_file():
        from batchrunner.config import load_job

        out = load_job(path, {}).output.dir
        if not (out / "job.json").is_file():
            raise UsageError(f"job file {path} has not run yet ({out} holds no job.json): "
                             f"run it with: {program()} run {shell_quote(str(path))}")
        return out
    if not path.exists():
        if path.suffix.lower() == ".toml":  # a job file, as load_job says of one not found
            raise UsageError(f"job file {path}: not found — check the path")
        raise UsageError(f"{path}: no such directory — give a run's output directory (its "
                         "--output), or its job file")
    if path.name == "job.json" and path.is_file():  # the output directory's own record
        return path.parent
    if path.is_file():  # the input, the results file: not what a run writes its state to
        raise UsageError(f"{path} is a file, not a run's output directory — give the directory "
                         "the run wrote to (its --output, holding job.json), or its job file "
                         "(.toml)")
    return path


def _cmd_simulate(ns: argparse.Namespace) -> int:
    from batchrunner import simulator

    simulator.serve(simulator.config_from_args(ns), ns.host, ns.port)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    if signum == signal.SIGHUP:  # its terminal closed, most likely
        from batchrunner.progress import leave_terminal

        leave_terminal()
    raise KeyboardInterrupt  # before the run's own handler is up: stop like Ctrl-C (exit 4)


def _tune_memory() -> None:
    """Keep the process's memory near what it uses, before pyarrow is imported.

    Arrow buffers come from jemalloc on Linux where pyarrow has it (``_has_jemalloc``), else
    from the C allocator, rather than mimalloc, Arrow's default (which keeps freed memory for
    reuse); and glibc maps blocks of 256 KiB and up on their own and unmaps them when freed,
    instead of raising that threshold as big blocks come and go and then keeping them in a heap
    that can only shrink from the top. A 1M-row job's results and reports then need about 50 MB
    above what sending needed, where they needed about 100 MB. jemalloc, as pyarrow configures
    it, gives the pages it frees back to the kernel within a second or so rather than at once,
    so the big blocks that compaction's columns and Parquet's pages and builders take and free
    are not faulted in afresh each time, as glibc's mapped blocks are: a 20,000-row run at 0 ms
    took 0.64 page faults a request with it, 1.14 without; peak RSS 1 MB higher (137 MB), and
    5 MB at 100,000 rows (150 MB, the median of 3 runs each). Both are plain settings: the
    environment can override the first (``ARROW_DEFAULT_MEMORY_POOL``), and a libc without
    ``mallopt`` is left as it is."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        spec = importlib.util.find_spec("pyarrow") if sys.platform.startswith("linux") else None
        jemalloc = spec is not None and _has_jemalloc(spec.submodule_search_locations or ())
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc" if jemalloc else "system"
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 256 * 1024)


def _has_jemalloc(package_dirs: Iterable[str]) -> bool:
    """Whether the pyarrow in ``package_dirs`` was built with jemalloc, as the build settings
    it ships say (``include/arrow/util/config.h``): read without importing pyarrow, whose pool
    is chosen as it is imported, and which names a pool it lacks in a warning and then takes
    mimalloc. A pyarrow that ships no such file gets the C allocator."""
    for directory in package_dirs:
        try:
            settings = (Path(directory) / "include" / "arrow" / "util" / "config.h").read_text(
                errors="replace")
        except OSError:
            continue
        return "\n#define ARROW_JEMALLOC\n" in settings
    return False


def event_loop_options() -> dict[str, Any]:
    """anyio's options for the run's event loop (see ``batchrunner.eventloop``)."""
    factory = loop_factory()
    return {} if factory is None else {"loop_factory": factory}


def _tune_gc() -> None:
    """Spare the cyclic garbage collector work that finds nothing, once the modules are loaded.

    Its full passes walk every live object, and after start-up most of them are modules,
    classes and functions that live as long as the process: freezing them keeps them out of
    those walks. A run allocates a few dozen short-lived objects a request, nearly all freed by
    reference counting, so the youngest generation is collected every 10,000 allocations
    rather than every 700. Measured: 5–9 % less CPU for a 20,000-request run at 0 ms latency."""
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


def before_imports() -> None:
    """What must be set before pyarrow and numpy are imported (``main`` does it first)."""
    if "pyarrow" not in sys.modules:
        _tune_memory()
    if "numpy" not in sys.modules:
        # numpy's BLAS starts a thread per core as it is imported, and each spins for a while:
        # 0.1 s of CPU on two cores, more on bigger machines. Nothing here multiplies matrices.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """The command line: its exit code. SIGTERM and SIGHUP stop a run as Ctrl-C does while it
    runs, and Ctrl-C before the run's own handler is up stops it where it is (the input read);
    the handlers found are put back on return, for a program that calls it in-process. The
    program itself (``exiting``) ignores them from then on instead: its exit code is told,
    and a second SIGTERM from a scheduler as it exits killed it with 143 where it said 4."""
    found: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        found[signal.SIGTERM] = signal.signal(signal.SIGTERM, _interrupt)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored (&)
            # Ctrl-C raises where the run is, as SIGTERM does, not where asyncio's runner
            # would cancel it: at its first await after the input is read through (a minute
            # for millions of rows), saying nothing of what was done.
            found[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt)
        else:  # left ignored, and put back so: an event loop's close resets it to Ctrl-C's
            found[signal.SIGINT] = signal.getsignal(signal.SIGINT)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # ignored: under nohup
            found[signal.SIGHUP] = signal.signal(signal.SIGHUP, _interrupt)
    try:
        code = _main(argv)
    finally:
        flush_outputs()  # a log with no room left: exit code 120 else, whatever the run did
        for sig, handler in found.items():
            if exiting:
                signal.signal(sig, signal.SIG_IGN)
            elif handler is not None:  # None: set outside Python, and not to be put back
                signal.signal(sig, handler)
    if exiting and _writing_stopped:
        # A signal stopped the run as it wrote its results and reports, as said: the thread
        # writing them is not waited for (the interpreter would, writing them all seconds
        # after the run said they were left for `report`, job.json saying they were not).
        # Each file is written whole or not at all, every answer is in the journal.
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    before_imports()
    commands = {"run": _cmd_run, "estimate": _cmd_estimate, "status": _cmd_status,
                "report": _cmd_report, "simulate": _cmd_simulate}
    args: list[str] = []
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        parser = build_parser(simulate_options="simulate" in args)
        ns = _parse(parser, args)
        if ns.command is None:
            parser.print_help()
            return 2
        for given in (getattr(ns, "job", None), getattr(ns, "out_dir", None)):
            if isinstance(given, str) and (error := _setting_given(given, ns.command)):
                raise error
        return commands[ns.command](ns)
    except SystemExit:
        raise
    except BaseException as e:  # mapped to one line and an exit code, or re-raised
        return _report(e, args)


def _one_line(text: object) -> str:
    """Messages are one line: a scheduler's log keeps them whole and a grep finds them."""
    return " ".join(str(text).split())


def _report(exc: BaseException, args: Sequence[str] = ()) -> int:
    """Print ``exc`` as one line on stderr and return its exit code; re-raise what is not ours.
    A key (``secrets_known``, or an argument shaped as one) given where an argument goes, a
    job file's or an output directory's or an option's value, is not shown in it."""
    hidden = secrets_known(args) if any(len(a) >= LONG_SECRET for a in args) else []
    # An argument shaped as a key (--rpm sk-..., pasted after the wrong option), with no key
    # in the environment to know it by, was echoed whole into the log: not shown either.
    hidden += sorted((a for a in args if _KEY_SHAPE.fullmatch(a)), key=len, reverse=True)

    def tell(line: str) -> None:
        for secret in hidden:
            line = line.replace(secret, "[redacted]")
        say(logged(line))

    e = leaf(exc)
    if isinstance(e, UsageError | JournalError):
        tell(f"batchrunner: error: {_one_line(e)}")
        return 2
    if isinstance(e, StopJob):
        if e.summary is not None:  # a run its input changed under: what it did, then why
            from batchrunner.runner import format_summary

            say(format_summary(e.summary), sys.stdout)
        tell(f"batchrunner: stopped: {_one_line(e)}")
        return 4
    if isinstance(e, OutputBusy):
        tell(f"batchrunner: error: {_one_line(e)}")
        return 5
    if isinstance(e, KeyboardInterrupt):  # before a run's own handler is up, or after
        command = next((a for a in args if not a.startswith("-")), "")
        tell({"run": "batchrunner: interrupted; finished rows are saved — run the same command "
                     "to resume",
              "report": "batchrunner: interrupted — run the same command again to rebuild the "
                        "results and reports"}.get(command, "batchrunner: interrupted"))
        return 4
    if isinstance(e, OutputError) and e.summary is not None:  # a run a full disk stopped
        from batchrunner.runner import format_summary

        say(format_summary(e.summary), sys.stdout)  # what was done, and what to do; then why
    if isinstance(e, BatchrunnerError):
        tell(f"batchrunner: error: {_one_line(e)}")
        return 1
    if isinstance(e, OSError):
        text = f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
        tell(f"batchrunner: error: {_one_line(text)}")
        return 1
    raise exc
