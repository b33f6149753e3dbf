"""Progress display behind a small interface; tqdm is imported only when a bar is shown."""

from __future__ import annotations

import errno
import math
import os
import select
import shlex
import shutil
import stat
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

__all__ = [
    "Counts",
    "LogProgress",
    "NullProgress",
    "Progress",
    "TqdmProgress",
    "duration",
    "flush_outputs",
    "leave_terminal",
    "make_progress",
    "output_lost",
    "program",
    "program_words",
    "say",
    "shell_quote",
    "started_as",
]


@dataclass(slots=True)
class Counts:
    ok: int = 0  # the whole job's rows, earlier runs' included
    failed: int = 0
    retrying: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    cost_unknown: int = 0
    projected_usd: float = 0.0  # the whole job's cost at this run's rate so far
    rate_limited: int = 0
    in_flight: int = 0  # requests sent and not answered yet
    paused_s: float = 0.0  # how much longer a 429's retry-after holds new requests
    paused_by: str = "a 429's retry-after"  # what asked for it (a gateway's 503, say)
    learnt_rpm: float = 0.0  # a pace learnt from a storm of 429s (no limit said), a minute
    # A split job's: each model's own pace learnt so (model, a minute), of those with one.
    learnt_models: tuple[tuple[str, float], ...] = ()
    unreachable_s: float = 0.0  # how long no request could connect (none answered since)
    unreachable_by: str = ""  # a gateway's latest answer meanwhile ("HTTP 503: ..."), if any
    unreachable_cut: bool = False  # its connections taken, then closed unanswered, meanwhile
    outage_s: float = 0.0  # how long the job waits out such answers before it stops
    only_429s_s: float = 0.0  # how long every answer has been a 429, none other since
    only_429s_stop_s: float = 0.0  # how long of that stops the job
    # Refused connections too are waited out (outage_s): the endpoint answered in this run or
    # an earlier one. Else a row's attempts refused stop the job.
    connect_wait: bool = False
    concurrency: int = 0  # lowered to this many in flight (0: not lowered), from ...
    concurrency_from: int = 0  # ... this many, because ...
    concurrency_why: str = ""  # ... of this ("3 requests timed out while 29 were answered")
    rows_out: int = 0  # the rows started may be out, no more: the server fails everything
    server_errors: int = 0  # the server errors in a row, none ok since, that said so
    resumed: bool = False  # earlier runs finished rows: ok/failed are the job's, the rest not
    job_limits: str = ""  # the job's own limits ("1 request a minute"), which a quiet log names
    extra: dict[str, int] = field(default_factory=dict)


class Progress(Protocol):
    def start(self, total: int | None, done: int, limited: int = 0) -> None:
        """``total`` rows, ``done`` of them before this run; ``limited``: rows to do that
        --limit leaves for a later run (not in ``total``: the bar runs to this run's end)."""
    def update(self, counts: Counts, finished: int) -> None: ...
    def write(self, line: str) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    def start(self, total: int | None, done: int, limited: int = 0) -> None:
        pass

    def write(self, line: str) -> None:
        say(line)

    def update(self, counts: Counts, finished: int) -> None:
        pass

    def close(self) -> None:
        pass


def _postfix(c: Counts, *, compact: bool = False) -> str:
    """The counts, for a log line; ``compact``, beside the bar: counts that are 0 are left
    out, tokens shortened (``TqdmProgress`` leaves out more where the terminal is narrow)."""
    if compact:
        return " ".join(text for _, text in _compact_parts(c))
    cost = _cost(c)
    if c.projected_usd:
        cost += f" (~{_about_usd(c.projected_usd)} job)"
    counts = (("ok", c.ok), ("failed", c.failed), ("retrying", c.retrying))
    # A 429's pause of a second or more: a run that looks stuck is waiting, and says so.
    paused = [f"paused={c.paused_s:.0f}s"] if c.paused_s >= 1 else []
    parts = [f"{name}={n:,}" for name, n in counts]
    parts += [f"{'this run: ' if c.resumed else ''}tokens={c.tokens:,}", f"cost={cost}"]
    if c.rate_limited:
        parts.append(f"429s={c.rate_limited:,}")
    if paused:
        parts.append(f"(new requests held {c.paused_s:.0f} s more by {c.paused_by})")
    if c.learnt_rpm or c.learnt_models:  # a run slower than it could be says why
        paces = [f"{c.learnt_rpm:,.0f} requests a minute"] if c.learnt_rpm else []
        for model, rpm in c.learnt_models:
            unit = "" if paces else " requests a minute"
            paces.append(f"{rpm:,.0f}{unit} for {printable(model, 40)}")
        parts.append(f"(paced at {', '.join(paces)}, learnt from a storm of 429s: the server "
                     "reports no limit)")
    if c.concurrency:  # a run slower than it could be says why
        parts.append(f"(concurrency lowered to {c.concurrency:,} from {c.concurrency_from:,}: "
                     f"{c.concurrency_why})")
    if c.rows_out:
        parts.append(f"({c.server_errors:,} server errors in a row, no row ok since: a new row "
                     f"starts only as one of the {c.rows_out:,} started finishes)")
    if c.unreachable_s >= 1:  # a run that looks stuck is waiting for the endpoint
        if c.unreachable_by:  # its gateway answers for it: say what, not "no connection"
            limit = f"; the job stops after {duration(c.outage_s)} of these" \
                if c.outage_s else ""
            parts.append(f"(no answer from the endpoint for {c.unreachable_s:.0f} s, only "
                         f"its gateway's {printable(c.unreachable_by, 120)}{limit})")
        else:
            limit = (f"; the job waits {duration(c.outage_s)} for it to come back, then stops"
                     if c.outage_s and c.connect_wait else "")
            parts.append(
                f"(no answer from the endpoint for {c.unreachable_s:.0f} s, its connections "
                f"taken, then closed unanswered{limit})" if c.unreachable_cut else
                f"(no connection to the endpoint for {c.unreachable_s:.0f} s{limit})")
    return " ".join(parts)


def _compact_parts(c: Counts) -> list[tuple[int, str]]:
    """The counts beside the bar, in the order shown, each with its rank: where the terminal
    is too narrow for all of them, those ranked last are left out first (the cost stays, then
    rows ok: the bar counts the rows done)."""
    parts = [(1, f"ok={c.ok:,}")]
    parts += [(rank, f"{name}={n:,}") for rank, name, n in (
        (2, "failed", c.failed), (5, "retrying", c.retrying), (3, "429s", c.rate_limited)) if n]
    if c.paused_s >= 1:  # a 429's pause: a run that looks stuck is waiting, and says so
        parts.append((3, f"paused={c.paused_s:.0f}s"))
    if c.learnt_rpm or c.learnt_models:
        paces = [f"{c.learnt_rpm:,.0f}/min"] if c.learnt_rpm else []
        paces += [f"{rpm:,.0f}/min({printable(model, 24)})" for model, rpm in c.learnt_models]
        parts.append((4, f"pace={','.join(paces)}"))
    if c.concurrency:
        parts.append((4, f"concurrency={c.concurrency:,}"))
    if c.rows_out:
        parts.append((3, f"failing={c.server_errors:,}"))
    if c.unreachable_s >= 1:  # as it is while the endpoint cannot be reached
        # What answers for it: its gateway's status, or its connections cut unanswered.
        status = c.unreachable_by.split(":", 1)[0].removeprefix("HTTP ") or (
            "cut" if c.unreachable_cut else "")
        parts.append((3, f"unreachable={c.unreachable_s:.0f}s" + (f" ({status})" if status
                                                                   else "")))
    parts.append((6, f"tokens={short_number(c.tokens)}"))
    parts.append((0, f"cost={_cost(c)}"))
    if c.projected_usd:
        parts.append((4, f"(~{_about_usd(c.projected_usd)} job)"))
    return parts


def printable(text: str, width: int) -> str:
    """A server's text for a terminal line: control characters (an escape sequence in a
    gateway's error page) as ``?``, cut at ``width`` characters with an ellipsis."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= width else text[:width - 1] + "…"


def duration(seconds: float) -> str:
    """``5 min``, ``90 s``, ``1.5 s``."""
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:g} s"


def _cost(c: Counts) -> str:
    """The run's cost as the reports show it: a cost under $0.00005 is not ``$0.0000``."""
    from batchrunner.report import format_usd  # report imports this module

    return format_usd(c.cost_usd) + ("+?" if c.cost_unknown else "")


def _about_usd(usd: float) -> str:
    """An estimate in dollars: to the cent from $1 up, else to two significant digits
    (``$0.0084``, where cents would read ``$0.00`` beside a cost already spent above it)."""
    if usd >= 0.995:
        return f"${usd:,.2f}"
    whole, _, cents = f"{usd:.{max(2, 1 - math.floor(math.log10(usd)))}f}".partition(".")
    return f"${whole}.{cents[:2]}{cents[2:].rstrip('0')}"


def short_number(v: float) -> str:
    """Three significant digits and a unit: ``950``, ``35.9k``, ``1M`` (for 999,950), ``3.4B``."""
    for div, suffix in ((1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "B")):
        shown = float(f"{v / div:.3g}")
        if abs(shown) < 1000 or suffix == "B":
            return f"{shown:g}{suffix}"
    raise AssertionError("unreachable")  # pragma: no cover


class TqdmProgress:
    """A tqdm bar on stderr: rows done out of total, with ok/failed/retrying, tokens and cost."""

    def __init__(self, desc: str) -> None:
        self._desc = desc
        self._bar: Any = None
        self._counts: Counts | None = None

    def start(self, total: int | None, done: int, limited: int = 0) -> None:
        from tqdm import tqdm

        if limited and total is not None:
            self.write(f"{self._desc}: {_limited(total - done, limited)}")
        for _ in range(2):  # a second time, drawn nowhere, if its reader is gone
            try:
                # Sized to the terminal as it changes; one that says no size (--progress bar
                # on it) is drawn 80 wide (tqdm reads its 0 rows as -1, and draws nothing). A
                # file or a pipe (--progress bar into a log) takes the whole line, as ever.
                sized = _columns() > 0 or not sys.stderr.isatty()
                self._bar = tqdm(total=total, initial=done, desc=self._desc, unit="row",
                                 dynamic_ncols=sized, ncols=None if sized else 80,
                                 nrows=None if sized else 24, smoothing=0.1, file=sys.stderr)
                return
            except OSError as e:
                output_lost(e)

    def update(self, counts: Counts, finished: int) -> None:
        bar = self._bar
        if bar is None:
            return
        self._counts = counts
        if time.time() - bar.last_print_t >= bar.mininterval:
            # tqdm may redraw in this update: the counts beside the bar are made current first,
            # or they would lag the bar's own count.
            bar.set_postfix_str(self._fit(counts, finished), refresh=False)
        try:
            bar.update(finished)
        except OSError as e:  # its reader gone: the bar goes on, drawn nowhere
            output_lost(e)

    def _fit(self, counts: Counts, finished: int = 0) -> str:
        """The counts beside the bar, as many as the terminal's width leaves room for with a
        bar of about 10 characters (``finished`` rows are about to be added to its count):
        tqdm cuts a line too long at its end, where the cost is, and shrinks the bar to one
        character."""
        parts = _compact_parts(counts)
        shown = " ".join(text for _, text in parts)
        bar = self._bar
        meter = bar.format_dict
        width = meter.get("ncols")
        if not width:
            return shown
        # The line at its natural length, a bar of 10 (the rate and times are the last
        # drawn: a character or two off, which the bar takes up).
        meter = {**meter, "ncols": None, "n": meter["n"] + finished}
        while len(parts) > 1 and len(bar.format_meter(**{**meter, "postfix": shown})) > width:
            parts.remove(max(parts, key=lambda p: p[0]))
            shown = " ".join(text for _, text in parts)
        return shown

    def write(self, line: str) -> None:
        """A message above the bar, without breaking it."""
        if self._bar is None:
            say(line)
            return
        try:
            self._bar.write(line, file=sys.stderr)
        except OSError as e:
            output_lost(e)

    def close(self) -> None:
        bar = self._bar
        if bar is None:
            return
        try:
            if self._counts is not None:
                bar.set_postfix_str(self._fit(self._counts), refresh=True)
        except OSError as e:
            output_lost(e)
        try:
            bar.close()
        except OSError as e:
            output_lost(e)
        finally:
            self._bar = None


def _limited(sending: int, limited: int) -> str:
    """What a run under --limit sends: ``sending 20 of the 240 rows to do (--limit)``."""
    return f"sending {sending:,} of the {sending + limited:,} rows to do (--limit)"


def utc_timestamp(at: float | None = None) -> str:
    """Now (or ``at``, a Unix time), as the outputs and log lines write times: ISO 8601 UTC
    to the second, e.g. ``2026-11-30T02:00:01Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


class LogProgress:
    """For logs (no terminal): one line every ``every_s`` seconds, rows finishing or not (the
    runner calls ``update`` with ``finished=0`` every second), so a quiet log is a dead run.
    Each line starts with the UTC time, so that nights appended to one log tell apart."""

    def __init__(self, desc: str, every_s: float = 30.0) -> None:
        self._desc = desc
        self._every = every_s
        self._total: int | None = None
        self._done = 0
        self._last = self._last_finished = time.monotonic()

    def start(self, total: int | None, done: int, limited: int = 0) -> None:
        self._total, self._done = total, done
        line = f"{self._desc}: started"
        if total is not None and limited:
            line += f", {_limited(total - done, limited)}"
        elif total is not None:
            line += f", {total - done:,} of {total:,} rows to do"
        if self._every and total != done:  # none to do: the summary follows at once
            line += f"; a line every {self._every:g} s"
        self.write(line)

    def update(self, counts: Counts, finished: int) -> None:
        now = time.monotonic()
        if finished:
            self._done += finished
            self._last_finished = now
        if now - self._last >= self._every:
            self._last = now
            done = f"{self._done:,}"
            if self._total:
                # Rounded down: 239 of 240 rows is 99 %, not 100 %.
                done += f"/{self._total:,} ({100 * self._done // self._total} %)"
            idle = now - self._last_finished
            flying = f"{counts.in_flight:,} request{'' if counts.in_flight == 1 else 's'}"
            # Rows waiting out their backoff are not in flight: a run with none in flight is
            # not hung while some are.
            waiting = (f", {counts.retrying:,} row{'' if counts.retrying == 1 else 's'} waiting "
                       "to retry" if counts.retrying else "")
            # Beside an outage (the counts say how long the endpoint has not answered), no
            # note that no row finishes: the outage says why, in the line's one account of it.
            # A job held back by its own limits (--rpm 1) says so, not only that it is quiet.
            limits = f"; the job's limits: {counts.job_limits}" if counts.job_limits else ""
            note = (f"  (no row finished for {idle:.0f} s{_only_429s(counts)}; {flying} in "
                    f"flight{waiting}{limits})"
                    if self._every and idle >= self._every and counts.unreachable_s < 1
                    else "")
            self.write(f"{self._desc}: {done} rows  {_postfix(counts)}{note}")

    def write(self, line: str) -> None:
        say(f"{utc_timestamp()} {line}")

    def close(self) -> None:
        pass


def job_limits(requests_per_minute: float | None, tokens_per_minute: float | None) -> str:
    """The limits a job sets, as a log line names them: ``1 request, 10,000 tokens a minute``;
    "" for none."""
    said = [f"{n:,.{0 if n == int(n) else 2}f} {unit}{'' if n == 1 else 's'}"
            for n, unit in ((requests_per_minute, "request"), (tokens_per_minute, "token"))
            if n is not None]
    return f"{', '.join(said)} a minute" if said else ""


def _only_429s(counts: Counts) -> str:
    """What a log line says of a run whose every answer has been a 429 for a while (a key's
    quota used up): how long, and when the job stops for it; nothing otherwise."""
    if counts.only_429s_s < 1:
        return ""
    return (f": every answer for {counts.only_429s_s:.0f} s a 429; the job stops at "
            f"{duration(counts.only_429s_stop_s)} of only 429s")


def leave_terminal() -> None:
    """Point stdout and stderr that go to a terminal at /dev/null: after a SIGHUP the terminal
    is most likely gone (an ssh session closed), and writing to it fails (EIO), which would end
    the run with a traceback instead of its own stop. Files and pipes (a log) are kept."""
    # A hung-up terminal is no longer a tty to isatty(), but still a character device.
    _to_null(lambda fd, st: stat.S_ISCHR(st.st_mode))


def _gone(fd: int, st: os.stat_result) -> bool:
    """Whether ``fd``'s reader is gone: a pipe or socket whose other end is closed (a ``tee``
    killed, ``| head -1`` done reading), a terminal hung up."""
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))


def _to_null(leave: Callable[[int, os.stat_result], bool]) -> None:
    """Point stdout and stderr, where ``leave`` says so, at /dev/null."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        null_device = os.fstat(null).st_rdev
        for fd in (1, 2):
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == null_device) and leave(fd, st):
                os.dup2(null, fd)
    finally:
        os.close(null)


# Errors writing a file that has no room: a log on a full disk or over its quota, or past
# the size limit (ulimit -f) of the files the process writes.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def output_lost(error: OSError, stream: TextIO | None = None, line: str = "") -> None:
    """After ``error`` writing to ``stream`` (stderr by default), stdout or stderr: where it
    is a reader gone (EPIPE, or EIO from a terminal hung up), the outputs gone are pointed at
    /dev/null, and where it is a file with no room (a log on a full disk), ``stream`` is, the
    other output then told so, and given ``line``, the line that was not written; batchrunner
    goes on writing nowhere (what was to be read there is lost; the run's work is not). Any
    other error is raised again."""
    if error.errno in _NO_ROOM:
        stream = sys.stderr if stream is None else stream
        try:
            fd = stream.fileno()
        except (OSError, ValueError):  # not a file of its own (a test's StringIO)
            raise error from None
        _to_null(lambda at, st: at == fd)
        other = sys.stdout if fd == 2 else sys.stderr
        name = "stdout" if fd == 1 else "stderr" if fd == 2 else f"file descriptor {fd}"
        say(logged(f"batchrunner: warning: {name} cannot be written "
                   f"({os.strerror(error.errno)}): going on without writing there", other), other)
        if line:
            say(line, other)
        return
    if error.errno not in (errno.EPIPE, errno.EIO, errno.ECONNRESET):
        raise error
    _to_null(_gone)


def flush_outputs() -> None:
    """Flush stdout and stderr as the interpreter does at exit, where an output that cannot
    be written would end the process with exit code 120 whatever the run did: one lost as
    ``output_lost`` says is written nowhere."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError as e:
            with suppress(OSError):
                output_lost(e, stream)


def logged(line: str, file: TextIO | None = None) -> str:
    """``line`` as written to ``file`` (stderr): after the UTC time where that is a file (a
    log that nights are appended to, ``>> cron.log 2>&1``), as the progress lines are there,
    so that a night's error, stop or warning tells when it came; as it is on a terminal or a
    pipe (cron's mail, journald's socket: each run's own, or stamped by the reader)."""
    try:
        to_file = stat.S_ISREG(os.fstat((sys.stderr if file is None else file).fileno()).st_mode)
    except (OSError, ValueError):  # no descriptor of its own (a test's StringIO), or closed
        to_file = False
    return f"{utc_timestamp()} {line}" if to_file else line


def say(line: str, file: TextIO | None = None) -> None:
    """Print ``line`` on ``file`` (stderr), or nowhere if its reader is gone."""
    out = sys.stderr if file is None else file
    try:
        print(line, file=out, flush=True)
    except OSError as e:
        output_lost(e, out, line)


# What a shell reads inside double quotes (bash's history expansion, !, too).
_DOUBLE_QUOTED = frozenset('"$`\\!')


def shell_quote(text: str) -> str:
    """``text`` (a path, an option's value) as a POSIX shell reads it back as one word:
    ``shlex.quote``'s, in double quotes where the text holds a single quote and nothing a
    shell reads in double quotes (``"finish_reason == 'length'"`` rather than shlex's
    ``'finish_reason == '"'"'length'"'"''``), or, for text a terminal would not show as it
    is (a name in Latin-1 bytes, which Python holds as lone surrogates, or a control
    character), ``printf``'s output with those bytes as octal escapes,
    ``"$(printf 'caf\\351')"``, which every POSIX shell reads back to the bytes (cron's
    /bin/sh among them, where bash's ``$'...'`` is not read).
    The one quoting of every command batchrunner prints (its program named by ``program``)."""
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:  # a surrogate no file name has (job.json edited by hand)
        raw = text.encode("utf-8", "surrogatepass")
    try:
        shown = raw.decode("utf-8")
    except UnicodeDecodeError:
        shown = None
    if shown is not None and shown.isprintable():
        if "'" in shown and not _DOUBLE_QUOTED.intersection(shown):
            return f'"{shown}"'
        return shlex.quote(shown)
    if raw.endswith(b"\n"):
        # A command substitution drops trailing newlines: bash's form keeps them.
        return "$'" + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b"\\'" else
                              f"\\x{b:02x}" for b in raw) + "'"
    return "\"$(printf '" + "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in b"\\'%" else f"\\{b:03o}" for b in raw
    ) + "')\""


# How this process was started, as its entry point told it (``started_as``): the words that
# name it from anywhere (the console script's absolute path, or this interpreter's with ``-m
# batchrunner``), and the console script that is this program. None: not told (``cli.main``
# called from Python, a test's or a program's), and commands name it ``batchrunner``.
_started: tuple[tuple[str, ...], str] | None = None


def started_as(argv0: str, *, module: bool) -> None:
    """Tell how this process was started (``batchrunner.__main__`` does, before the CLI
    runs): as the console script ``argv0`` (``sys.argv[0]``: ``.venv/bin/batchrunner``, as
    the shell or cron found it), or, with ``module``, as ``python -m batchrunner``, whose
    console script is the one installed beside this interpreter."""
    global _started
    if module:
        python = os.path.abspath(sys.executable) if sys.executable else ""
        _started = ((python, "-m", "batchrunner"),
                    os.path.join(os.path.dirname(python), "batchrunner")) if python else None
    else:
        script = os.path.abspath(argv0)
        _started = ((script,), script) if os.path.isfile(script) else None


def program_words(meta: Mapping[str, Any] | None = None) -> list[str]:
    """How to name batchrunner at the start of a command printed for the user to paste,
    word by word: ``batchrunner`` where that name, looked up on the PATH, is the program
    running now (the same file as its console script, resolved), else the absolute path of
    its console script (``/srv/enrich/.venv/bin/batchrunner``: cron's PATH, /usr/bin:/bin,
    finds no ``batchrunner``), or ``/abs/python -m batchrunner`` when it was started so.
    Of a job (``meta``, its job.json), the program its last run named itself by
    (``command.program``) where that is such an absolute path and is still there: a run
    whose PATH did not find it by name (a crontab's) is resumed by a command that works
    pasted into the crontab, and into a shell with the venv active alike. Not started by its
    entry point (``cli.main`` called from Python): ``batchrunner``."""
    kept = _kept_program(meta)
    if kept is not None:
        return kept
    if _started is None:
        return ["batchrunner"]
    words, script = _started
    found = shutil.which("batchrunner")
    if found is not None and os.path.realpath(found) == os.path.realpath(script):
        return ["batchrunner"]
    return list(words)


def program(meta: Mapping[str, Any] | None = None) -> str:
    """``program_words`` quoted as a shell reads them back: how every command batchrunner
    prints begins."""
    return " ".join(shell_quote(word) for word in program_words(meta))


def _kept_program(meta: Mapping[str, Any] | None) -> list[str] | None:
    """The program job.json says the job's last run named itself by, where it is an
    absolute path (its console script's, or an interpreter's with ``-m batchrunner``) that
    can still be run; else None."""
    command = meta.get("command") if meta is not None else None
    kept = command.get("program") if isinstance(command, Mapping) else None
    if not (isinstance(kept, list) and kept and all(isinstance(w, str) for w in kept)):
        return None
    if len(kept) != 1 and kept[1:] != ["-m", "batchrunner"]:
        return None  # not a form a run writes (job.json edited by hand)
    path = kept[0]
    if not (os.path.isabs(path) and os.path.isfile(path) and os.access(path, os.X_OK)):
        return None  # ["batchrunner"] (found by name), or gone since (the venv made anew)
    return list(kept)


def make_progress(desc: str, mode: str = "auto") -> Progress:
    """``auto``: a bar on a terminal, periodic lines otherwise; ``bar``; ``log``; ``none``."""
    if mode == "none":
        return NullProgress()
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty() and _columns() > 0):
        return TqdmProgress(desc)
    return LogProgress(desc)


def _columns() -> int:
    """The terminal's width on stderr; 0 where it says none (a pseudo-terminal no window was
    given a size for: ``docker exec -t`` in a script, ``script`` without a terminal), on which
    a bar sized to it draws nothing."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 0
