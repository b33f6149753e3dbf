"""Nothing lost, nothing leaked: kills, signals, damaged files and a full disk.

* SIGKILL at many moments of a real ``python -m batchrunner run`` (the harness is
  ``benchmarks/crash_soak.py``; its long soak is run by hand), then a rerun: every row exactly
  once, no row recorded ok ever sent again, report totals equal to the result rows.
* A second Ctrl-C while draining stops at once, with the journal intact.
* A damaged journal segment, ``job.json`` or results file is refused (one line, exit 2, nothing
  sent) or rebuilt; leftover temp files are removed.
* A full disk (RLIMIT_FSIZE in the child) stops the run with one error line; the journal stays
  usable and a rerun finishes every row without resending an ok one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrunner import journal as journal_module
from batchrunner import runner
from batchrunner.cli import main
from batchrunner.io import InputSource
from batchrunner.journal import Journal, write_segment
from batchrunner.records import RETRYING
from batchrunner.report import format_usd
from batchrunner.simulator import SimulatorConfig, SimulatorThread
from batchrunner.status import format_status
from benchmarks.crash_soak import WAIT_S, CrashHarness, Kill, _wait
from tests.processes import reaped

KEY = "sk-test-crash-0123456789"
TEMPLATE = "Summarise: {text}"


pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def make_csv(path: Path, n: int, marker: dict[int, str] | None = None,
             pad: int = 0) -> Path:
    marker = marker or {}
    rows = [{"id": f"r{i:04d}", "text": f"row {i} about topic {i * 7 % 13}{marker.get(i, '')}",
             **({"pad": os.urandom(pad).hex()} if pad else {})} for i in range(n)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def run_args(inp: Path, base_url: str, out: Path, *extra: str) -> list[str]:
    return ["run", "--input", str(inp), "--id-column", "id", "--prompt", TEMPLATE,
            "--model", "gpt-4o-mini", "--max-tokens", "48", "--base-url", base_url,
            "--output", str(out), "--progress", "none", *extra]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """stderr holds exactly one line, an error, and no traceback."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("batchrunner: error: "), lines[0]
    return lines[0]


def ok_keys(out: Path) -> set[str]:
    state = Journal(out).read(columns=["status"])
    return {k for k, s in zip(state["key"].to_pylist(), state["status"].to_pylist(),
                              strict=True) if s == "ok"}


def texts_of(inp: Path) -> dict[str, str]:
    df = pd.read_csv(inp, dtype=str)
    return dict(zip(df["id"], df["text"], strict=True))


def child_env() -> dict[str, str]:
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    env.pop("OPENAI_BASE_URL", None)
    return env


# ----------------------------------------------------------------------------------------------
# SIGKILL at many moments


CRASH_PLAN = ("startup", "job-json-tmp", "segment-tmp", "mid-batch", "last-completion",
              "compaction", "results-tmp", "report-tmp")


def kill_in(harness: CrashHarness, point: str, rng: random.Random) -> Kill:
    """Kill the job's run at ``point``; a moment a run ended before is tried again, a few
    times."""
    for _ in range(3):
        kill = harness.kill_at(point, rng)
        # Neither the moment nor the run's end came: the harness waited its limit in vain.
        assert kill.hit or kill.exit_code is not None, \
            f"waited {WAIT_S:.0f} s for the moment {point} in vain"
        if kill.hit or harness.epoch.finished:
            break
    assert kill.hit, (f"never killed at {point}: the run exited {kill.exit_code} first "
                      f"({[(k.point, k.hit, k.exit_code) for k in harness.epoch.kills]})")
    return kill


def test_sigkill_at_many_moments_then_every_row_once(tmp_path: Path) -> None:
    """Eight kills: while importing, writing job.json, writing a journal segment, mid-batch,
    right after the last completion, compacting, writing results and writing the report.
    After each the journal must be readable; the last rerun must give every row once, resend
    no row recorded ok at any kill, and a report whose totals are the result rows' sums."""
    rng = random.Random(5)
    config = SimulatorConfig(latency_ms=40, jitter_ms=60, reply_tokens_mean=30, seed=3)
    with SimulatorThread(config) as sim:
        harness = CrashHarness(tmp_path, sim, 300, concurrency=8)
        for point in CRASH_PLAN:
            kill_in(harness, point, rng)
        assert not harness.epoch.violations, harness.epoch.violations
        assert harness.epoch.kills[0].ok_rows == 0
        assert any(0 < k.ok_rows < 300 for k in harness.epoch.kills), \
            "no kill left a partly done journal to resume from"
        final = harness.finish()
        assert harness.check(final) == []
        assert harness.sim.stats()["completions"] >= 300


def test_sigkill_of_a_batch_file_run_keeps_its_rows_checks(tmp_path: Path) -> None:
    """A batch file whose rows ask for one schema: killed mid-run, job.json already records
    their checks; the rerun's results hold every row once, checked, with the schema's
    json_ columns filled."""
    rng = random.Random(11)
    config = SimulatorConfig(latency_ms=40, jitter_ms=60, reply_tokens_mean=30, seed=4)
    with SimulatorThread(config) as sim:
        harness = CrashHarness(tmp_path, sim, 200, concurrency=8, batch=True)
        for point in ("job-json-tmp", "mid-batch", "segment-tmp", "results-tmp"):
            kill = kill_in(harness, point, rng)
            if point == "mid-batch":
                assert 0 < kill.ok_rows < 200, kill
                meta = json.loads((harness.out_dir / "job.json").read_text())
                assert meta["batch_checks"]["mixed"] is False
                assert meta["batch_checks"]["settings"]["response_format"]["type"] == (
                    "json_schema")
        assert not harness.epoch.violations, harness.epoch.violations
        final = harness.finish()
        assert harness.check(final) == []
    df = pd.read_parquet(harness.out_dir / "results.parquet")
    assert df["json_topic"].notna().all() and df["json_score"].notna().all()


def test_sigkill_after_a_billed_attempt_keeps_its_cost(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Row 3's first reply is a 200 with usage and no choices (billed, no answer) and its
    retry hangs: the run is killed (SIGKILL) once the billed attempt is journaled. Before,
    that cost was in no record: `status`, `report` and the next run's budget never counted it.
    Now `status` and the report count it as earlier attempts' cost, the row is to do, and the
    rerun sends it: the row's cost is both attempts', counted once."""
    n, billed_row = 30, "r0003"
    make_csv(tmp_path / "in.csv", n, {3: " [[sim:no_choices*1]][[sim:hang*1]]"})
    seen: list[int] = [0]
    journaled: list[bool] = [False]

    def billed_journaled(out: Path, sim: SimulatorThread) -> bool:
        # ... and its retry hung at the simulator: killed before the retry was sent (its
        # backoff not over, on a loaded machine), the row's one hang would be the rerun's, and
        # the rerun would wait out the hang (an hour) instead of answering the row.
        if not journaled[0]:
            segs = len(Journal(out).segments())  # read only once a segment is added
            if segs == seen[0]:
                return False
            seen[0] = segs
            state = Journal(out).read(columns=["status"])
            journaled[0] = RETRYING in state["status"].to_pylist()
        return journaled[0] and sim.stats()["hangs"] >= 1

    with SimulatorThread(SimulatorConfig(latency_ms=20, seed=3)) as sim:
        harness = CrashHarness(tmp_path, sim, n, concurrency=4)  # runs over the in.csv above
        out = harness.out_dir
        proc = harness.spawn()
        with reaped(proc):
            hit = _wait(proc, lambda: billed_journaled(out, sim))
        assert hit and proc.returncode == -signal.SIGKILL
        state = Journal(out).read().to_pylist()
        (billed,) = [r for r in state if r["key"] == billed_row]
        assert billed["status"] == RETRYING and billed["attempts"] == 1
        earlier = billed["earlier_cost_usd"]
        assert earlier > 0 and billed["cost_usd"] is None and billed["content"] is None
        finished = sum(r["status"] != RETRYING for r in state)
        status = format_status(out)
        assert f"{finished} of {n} rows finished" in status
        assert f"(plus {format_usd(earlier)} for earlier attempts" in status
        code, _, _ = cli(capsys, "report", str(out))
        assert code == 4  # rows to do, the billed one among them
        report = json.loads((out / "cost_report.json").read_text())
        assert report["cost_earlier_attempts_usd"] == pytest.approx(earlier)
        assert report["rows"]["total"] == finished and report["rows"]["to_do"] == n - finished
        row = pd.read_parquet(out / "results.parquet").set_index("id").loc[billed_row]
        assert pd.isna(row["status"]) and row["earlier_cost_usd"] == pytest.approx(earlier)
        final = harness.finish()
        assert harness.check(final) == []
    df = pd.read_parquet(out / "results.parquet").set_index("id")
    # The same reply twice: the billed attempt's cost is the answer's, counted once.
    assert df.loc[billed_row, "earlier_cost_usd"] == pytest.approx(earlier)
    assert df.loc[billed_row, "cost_usd"] == pytest.approx(earlier)
    assert df["earlier_cost_usd"].notna().sum() == 1
    report = json.loads((out / "cost_report.json").read_text())
    assert report["cost_earlier_attempts_usd"] == pytest.approx(earlier)


# ----------------------------------------------------------------------------------------------
# Ctrl-C twice


def wait_for_hangs(sim: SimulatorThread, proc: subprocess.Popen[bytes], n: int,
                   hangs: int) -> None:
    """Wait (60 s at most) until the simulator holds ``hangs`` hung requests and has answered
    the other ``n - hangs``; fail if the process ends first or the time runs out."""
    deadline = time.monotonic() + 60
    while True:
        st = sim.stats()
        if st["hangs"] >= hangs and st["completions"] >= n - hangs:
            return
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) first: {st}"
        assert time.monotonic() < deadline, f"waited 60 s for {hangs} hangs, {n - hangs} " \
            f"answers: {st}"
        time.sleep(0.02)


@contextlib.contextmanager
def cli_process(tmp_path: Path, args: list[str]
                ) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """``batchrunner`` run with ``args`` in a process, its stderr and stdout written to files
    (the process, and the two files' paths); killed if it is still running at the end."""
    err_path, out_path = tmp_path / "stderr.txt", tmp_path / "stdout.txt"
    with err_path.open("w") as err_file, out_path.open("w") as out_file:
        proc = subprocess.Popen([sys.executable, "-m", "batchrunner", *args], env=child_env(),
                                stdout=out_file, stderr=err_file)
        with reaped(proc):
            yield proc, err_path, out_path


def test_second_ctrl_c_while_draining_stops_at_once(tmp_path: Path) -> None:
    """Hanging requests keep the drain busy; a second SIGINT ends the run within seconds, exit
    4, with every answered row in the journal and nothing recorded as failed."""
    n, hangs = 40, 4
    inp = make_csv(tmp_path / "in.csv", n, {i: " [[sim:hang]]" for i in range(hangs)})
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=30)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "8")
        with cli_process(tmp_path, args) as (proc, err_path, out_path):
            wait_for_hangs(sim, proc, n, hangs)
            assert proc.poll() is None, err_path.read_text()
            proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 20
            while "(up to 5 s; Ctrl-C again to stop now)" not in err_path.read_text():
                assert time.monotonic() < deadline, err_path.read_text()
                assert proc.poll() is None, err_path.read_text()
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            # The drain would wait drain_s (5 s) for the hung requests; the second SIGINT
            # must end it well before.
            code = proc.wait(timeout=3)
        err = err_path.read_text()
        assert code == 4, err
        assert "Traceback" not in err
        assert "stopped: interrupted by Ctrl-C (SIGINT); finished rows are saved — run the " \
            "same command to resume" in out_path.read_text() + err
        lines = err.splitlines()  # not a terminal: no blank line before the signal's
        said = next(i for i, line in enumerate(lines) if "SIGINT: finishing requests" in line)
        assert said == 0 or lines[said - 1].strip(), err
        state = Journal(out).read()
        # The hung rows are not failures: rows to do, each with its cut-off try (which the
        # server may bill) at its estimate.
        hung = {f"r{i:04d}" for i in range(hangs)}
        records = state.to_pylist()
        cut = [r for r in records if r["status"] == "retrying"]
        assert {r["key"] for r in cut} == hung and [r["unknown_tries"] for r in cut] == [
            1] * hangs
        answered = [r for r in records if r["status"] == "ok"]
        assert len(answered) == len(records) - hangs == sim.stats()["completions"] == n - hangs
        df = pd.read_parquet(out / "results.parquet")
        assert len(df) == n and (df["status"] == "ok").sum() == n - hangs


def test_a_signal_while_a_stopped_job_finishes_its_requests_in_flight_lets_them_finish(
        tmp_path: Path) -> None:
    """The job stopped by itself (its first 20 rows all failed the same way) and waits for the
    requests it had in flight, answers that take 3 s; a scheduler's SIGTERM comes meanwhile.
    It is the first signal, not the second that stops at once: those requests still finish
    within the drain (5 s) and are journaled, as when a first signal stops a job."""
    failing = 20
    inp = make_csv(tmp_path / "in.csv", 40, {i: " [[sim:400]]" if i < failing else " [[sim:slow]]"
                                             for i in range(40)})
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(slow_ms=3000)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "8")
        with cli_process(tmp_path, args) as (proc, err_path, out_path):
            deadline = time.monotonic() + 60
            seen, still = 0, 0
            while still < 10:  # the stop: no request sent for 0.2 s, slow ones in flight
                assert time.monotonic() < deadline and proc.poll() is None, \
                    err_path.read_text()
                now = sim.stats()["requests"]
                still = still + 1 if now == seen and now > failing else 0
                seen = now
                time.sleep(0.02)
            assert sim.stats()["completions"] == 0  # the slow answers are still to come
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        err = err_path.read_text() + out_path.read_text()
        assert code == 4, err
        assert "Traceback" not in err and "all failed with http_400" in err, err
        # What it does after the drain, in seconds for a big job, is said: a scheduler's
        # operator who heard nothing sent a second signal, which left them unwritten.
        assert "batchrunner: in: writing the results and reports of 40 rows" in err, err
        in_flight = seen - failing
        assert in_flight > 0
        assert len(ok_keys(out)) == sim.stats()["completions"] == in_flight, err


def held_at_last_flush_cmd(marker: Path, args: list[str]) -> list[str]:
    """The CLI in a child whose last journal write (every row answered, the signal watcher
    gone) touches ``marker``, then waits until it is removed: the moment a scheduler's SIGTERM
    meets at the end of a long job."""
    code = ("import os, sys, time\n"
            "from batchrunner.journal import JournalWriter\n"
            "flush = JournalWriter.flush\n"
            "def held(self):\n"
            f"    open({str(marker)!r}, 'w').close()\n"
            "    for _ in range(6000):\n"
            f"        if not os.path.exists({str(marker)!r}):\n"
            "            break\n"
            "        time.sleep(0.01)\n"
            "    flush(self)\n"
            "JournalWriter.flush = held\n"
            "from batchrunner.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return [sys.executable, "-c", code, *args]


def test_sigterm_while_the_last_rows_are_journaled_saves_them_and_exits_4(
        tmp_path: Path) -> None:
    """The pipeline is over (every row answered) and its last rows are being written when the
    scheduler's SIGTERM comes: the run is not killed on the spot, losing them; it ends with
    exit 4 and its message, every answer in the journal."""
    n = 40
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    marker = tmp_path / "flushing"
    with SimulatorThread(SimulatorConfig(reply_tokens=20)) as sim:
        proc = subprocess.Popen(held_at_last_flush_cmd(marker, run_args(inp, sim.base_url, out)),
                                env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        with reaped(proc):
            deadline = time.monotonic() + 60
            while not marker.exists():
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            assert proc.stderr is not None
            said = proc.stderr.readline()  # the run's word on it, or nothing: killed
            marker.unlink()
            _, err = proc.communicate(timeout=60)
            err = said + err
        assert proc.returncode == 4, (proc.returncode, err)
        assert "Traceback" not in err and "interrupted" in err, err
        assert "run the same command to resume" in err, err
        assert len(ok_keys(out)) == sim.stats()["requests"] == n


def test_sighup_of_a_closed_terminal_stops_the_run_as_sigterm_does(tmp_path: Path) -> None:
    """The job was started in an ssh session that closed: SIGHUP, and the terminal its bar was
    drawn on gone. The run lets go of the terminal at once (writing its last lines there
    would fail) and stops as for SIGTERM: the answers in flight saved, exit 4, and `status`
    says how it ended."""
    n, hangs = 40, 4
    inp = make_csv(tmp_path / "in.csv", n, {i: " [[sim:hang]]" for i in range(hangs)})
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=30)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "8", "--progress", "bar")
        terminal, side = os.openpty()
        try:
            proc = subprocess.Popen(hangup_cmd(args), env=child_env(),
                                    stdin=subprocess.DEVNULL, stdout=side, stderr=side)
        finally:
            os.close(side)

        def show() -> None:  # the terminal, until no process has it open
            with contextlib.suppress(OSError):
                while os.read(terminal, 4096):
                    pass

        shown = threading.Thread(target=show, daemon=True)
        shown.start()
        with reaped(proc):
            wait_for_hangs(sim, proc, n, hangs)
            assert proc.poll() is None
            proc.send_signal(signal.SIGHUP)
            shown.join(timeout=30)
            assert not shown.is_alive()
            assert proc.poll() is None  # it let go of the terminal, and drains its requests
            os.close(terminal)  # the terminal is gone
            code = proc.wait(timeout=60)
        assert code == 4
        state = Journal(out).read()
        statuses = state["status"].to_pylist()
        assert statuses.count("ok") == sim.stats()["completions"] == n - hangs
        assert statuses.count("retrying") == hangs == len(statuses) - statuses.count("ok")
    assert "stopped" in format_status(out) and "interrupted by SIGHUP" in format_status(out)


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGHUP])
def test_sighup_with_sigterm_still_lets_the_requests_in_flight_finish(
        tmp_path: Path, first: signal.Signals) -> None:
    """A service manager that sends SIGHUP with its SIGTERM (systemd's SendSIGHUP=yes; the
    two may be handled in either order): the second is not a request to stop now, which would
    cut off the requests in flight (paid for); they finish and are journaled, exit 4."""
    n = 300
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=200, jitter_ms=50)) as sim:
        proc = subprocess.Popen(hangup_cmd(run_args(inp, sim.base_url, out, "--concurrency", "8")),
                                env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        with reaped(proc):
            deadline = time.monotonic() + 60
            while sim.stats()["completions"] < 20:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            proc.send_signal(first)
            proc.send_signal(signal.SIGHUP if first == signal.SIGTERM else signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 4, err
        journaled = Journal(out).read()
        assert set(journaled["status"].to_pylist()) == {"ok"}
        assert journaled.num_rows == sim.stats()["requests"] < n  # none cut off


def test_a_run_under_nohup_goes_on_through_sighup(tmp_path: Path) -> None:
    """Started with nohup (SIGHUP ignored), a run is not stopped by its session closing."""
    n = 60
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    code = ("import signal, sys\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "from batchrunner.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    with SimulatorThread(SimulatorConfig(latency_ms=50)) as sim:
        proc = subprocess.Popen([sys.executable, "-c", code,
                                 *run_args(inp, sim.base_url, out, "--concurrency", "2")],
                                env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        with reaped(proc):
            deadline = time.monotonic() + 60
            while not (out / "journal").is_dir() or not list((out / "journal").glob("seg-*")):
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
                time.sleep(0.01)
            proc.send_signal(signal.SIGHUP)
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(ok_keys(out)) == n


def input_open_by(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    except OSError:  # an fd closed while looking, or the process ended
        return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="watches /proc/PID/fd")
@pytest.mark.parametrize("sig", [
    signal.SIGINT,
    signal.SIGTERM,
])
def test_signal_while_the_input_is_scanned_exits_4(tmp_path: Path, sig: signal.Signals) -> None:
    """A signal that arrives before any request (prepare() is reading a large input) ends the
    run at once with exit 4 and nothing sent, in one line that says so. Ctrl-C was taken by
    asyncio's runner, which cancelled the run only at its first await, once the whole input
    was read, and the line said "finished rows are saved" where nothing had been sent."""
    n = 300_000
    inp = tmp_path / "big.csv"
    with inp.open("w") as f:
        f.write("id,text\n")
        f.writelines(f"r{i:07d},row {i} about topic {i * 7 % 13}\n" for i in range(n))
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig()) as sim:
        proc = subprocess.Popen([sys.executable, "-m", "batchrunner",
                                 *run_args(inp, sim.base_url, out)],
                                env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        with reaped(proc):
            deadline = time.monotonic() + 30
            while not input_open_by(proc.pid, inp):
                assert time.monotonic() < deadline and proc.poll() is None, "never read input"
                time.sleep(0.001)
            proc.send_signal(sig)
            out_text, err = proc.communicate(timeout=10)
        assert sim.stats()["requests"] == 0
    assert proc.returncode == 4, (proc.returncode, err)
    assert out_text == "" and err == (
        "batchrunner: stopped: interrupted while the input was read, before any request: "
        "nothing was sent — run the same command to start again\n")


def test_ctrl_c_while_the_input_is_scanned_stops_the_scan_where_it_is(
        tmp_path: Path, sim: SimulatorThread, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C as start-up scans the input stops it there, as SIGTERM does. Left to Python's
    own handler, Ctrl-C was taken over by the event loop, which only cancelled the run's task:
    the scan read the whole input first (1.2-1.4 s for 300,000 rows where SIGTERM stopped in
    0.03-0.09 s, load 14; over 10 s on a busier machine), a large file's for a minute."""
    inp = make_csv(tmp_path / "in.csv", 30_000)  # 8 batches to scan (8,192 rows at most)
    scanned: list[int] = []
    scan_keys = runner._scan_keys

    def interrupted(source: InputSource, *args: Any, **kwargs: Any) -> Any:
        batches = source.batches

        def each(*a: Any, **k: Any) -> Iterator[pa.RecordBatch]:
            for batch in batches(*a, **k):
                scanned.append(batch.num_rows)
                if len(scanned) == 1:
                    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the scan begins
                yield batch

        monkeypatch.setattr(source, "batches", each)
        return scan_keys(source, *args, **kwargs)

    monkeypatch.setattr(runner, "_scan_keys", interrupted)
    found = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C
    try:
        code, _, err = cli(capsys, *run_args(inp, sim.base_url, tmp_path / "out"))
    finally:
        signal.signal(signal.SIGINT, found)
    assert code == 4, err
    assert err.splitlines() == [
        "batchrunner: stopped: interrupted while the input was read, before any request: "
        "nothing was sent — run the same command to start again"], err
    assert len(scanned) == 1, scanned  # all 8 were read before it stopped
    assert sim.stats()["requests"] == 0


# ----------------------------------------------------------------------------------------------
# Damaged files


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig()) as s:
        yield s


def first_run(tmp_path: Path, sim: SimulatorThread,
              capsys: pytest.CaptureFixture[str]) -> tuple[Path, list[str]]:
    """40 rows: 30 ok, r0030..r0039 failed once with a 400 (a --retry-failed rerun would send
    them, so "nothing sent" means something)."""
    inp = make_csv(tmp_path / "in.csv", 40, {i: " [[sim:400*1]]" for i in range(30, 40)})
    out = tmp_path / "out"
    args = run_args(inp, sim.base_url, out, "--retry-failed")
    code, _, err = cli(capsys, *args)
    assert code == 3, err
    assert len(ok_keys(out)) == 30
    return out, args


def the_segment(out: Path) -> Path:
    segs = Journal(out).segments()
    assert len(segs) == 1
    return segs[0]


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda b: b[: len(b) // 2],
    "garbage appended": lambda b: b + b"\x00garbage\xff" * 10,
    "empty": lambda b: b"",
    "not parquet": lambda b: os.urandom(len(b)),
    "footer cut": lambda b: b[:-5],
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_segment_is_refused_naming_it(tmp_path: Path, sim: SimulatorThread,
                                              capsys: pytest.CaptureFixture[str],
                                              damage: str) -> None:
    out, args = first_run(tmp_path, sim, capsys)
    seg = the_segment(out)
    bad = DAMAGES[damage](seg.read_bytes())
    seg.write_bytes(bad)
    sent = sim.stats()["requests"]
    for argv in (args, ["status", str(out)], ["report", str(out)]):
        code, _, err = cli(capsys, *argv)
        assert code == 2, (argv[0], err)
        line = one_error_line(err)
        assert seg.name in line and "cannot be read" in line, line
    assert sim.stats()["requests"] == sent  # nothing sent
    assert seg.read_bytes() == bad  # left as it was, for the user to look at


def test_the_damaged_one_of_several_segments_is_named(tmp_path: Path, sim: SimulatorThread,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out, args = first_run(tmp_path, sim, capsys)
    seg = the_segment(out)
    table = pq.read_table(seg)
    first = write_segment(seg.parent, "seg-20200101T000000-aaaaaa-w0-000000.parquet",
                          table.slice(0, 20))
    second = write_segment(seg.parent, "seg-20200101T000000-aaaaaa-w0-000001.parquet",
                           table.slice(20))
    seg.unlink()
    second.write_bytes(second.read_bytes()[:100])
    sent = sim.stats()["requests"]
    code, _, err = cli(capsys, *args)
    assert code == 2
    line = one_error_line(err)
    assert second.name in line and first.name not in line
    assert sim.stats()["requests"] == sent


def test_status_while_a_run_compacts_the_journal_reads_it_again(
        tmp_path: Path, sim: SimulatorThread, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``status`` (or ``estimate``) lists the segments while a run ends: the run's compaction
    may remove one listed before it is opened. That read as a damaged journal ('cannot be
    read (FileNotFoundError); move it aside to resend its rows', exit 2); now the journal is
    listed again, its records being in the compacted segment."""
    out, args = first_run(tmp_path, sim, capsys)
    gone = out / "journal" / "seg-20261201T000000-abcdef-w0-000000.parquet"  # compacted away
    listed = Journal.segments
    listings = []

    def segments(self: Journal) -> list[Path]:
        listings.append(1)
        return listed(self) + ([gone] if len(listings) == 1 else [])

    monkeypatch.setattr(Journal, "segments", segments)
    assert format_status(out).startswith("in: 40 of 40 rows finished (30 ok, 10 failed")
    listings.clear()
    code, _, err = cli(capsys, *args, "--dry-run")
    assert code == 0, err
    assert len(listings) > 1


def test_status_waits_for_a_compaction_to_finish_removing_segments(
        tmp_path: Path, sim: SimulatorThread, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's end compaction removes the segments it merged one after another (thousands of
    them: seconds). ``status`` listed the journal again at once each time it found one gone,
    found the next one gone each time, and failed after five listings ('was removed while it
    was read ... try again'), as a monitoring script polled it. It now pauses before listing
    again; here the segments are being removed until a second of its pauses has passed."""
    out, _ = first_run(tmp_path, sim, capsys)
    gone = out / "journal" / "seg-20261201T000000-abcdef-w0-000000.parquet"  # being removed
    listed = Journal.segments
    paused: list[float] = []

    def segments(self: Journal) -> list[Path]:
        return listed(self) + ([gone] if sum(paused) < 1.0 else [])

    monkeypatch.setattr(Journal, "segments", segments)
    monkeypatch.setattr(journal_module, "time", SimpleNamespace(sleep=paused.append))
    assert format_status(out).startswith("in: 40 of 40 rows finished (30 ok, 10 failed")
    assert sum(paused) >= 1.0


def test_a_segment_there_that_cannot_be_opened_is_named_not_read_as_compacted(
        tmp_path: Path, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]) -> None:
    """A segment that is a dangling link is listed and cannot be opened (FileNotFoundError),
    as one a compaction removed is: it is damage, to move aside, not 'removed while it was
    read ... try again', which no try mends (the journal was read five times to say so)."""
    out, args = first_run(tmp_path, sim, capsys)
    seg = out / "journal" / "seg-20261201T000000-abcdef-w0-000000.parquet"
    seg.symlink_to(tmp_path / "elsewhere.parquet")
    sent = sim.stats()["requests"]
    for code, err in (cli(capsys, "status", str(out))[::2], cli(capsys, *args)[::2]):
        assert code == 2
        line = one_error_line(err)
        assert f"{seg.name} cannot be read (FileNotFoundError); move it aside" in line, line
        assert "try again" not in line
    assert sim.stats()["requests"] == sent


def test_segment_with_another_schema_is_refused(tmp_path: Path, sim: SimulatorThread,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out, args = first_run(tmp_path, sim, capsys)
    seg = the_segment(out)
    table = pq.read_table(seg)
    i = table.schema.get_field_index("attempts")
    foreign = table.set_column(i, "attempts",
                               pa.array([str(x) for x in table["attempts"].to_pylist()]))
    odd = seg.with_name("seg-20200101T000000-bbbbbb-w0-000000.parquet")
    pq.write_table(foreign, odd)
    sent = sim.stats()["requests"]
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert odd.name in one_error_line(err)
    assert sim.stats()["requests"] == sent


def test_leftover_journal_temp_file_is_removed_and_never_trusted(
        tmp_path: Path, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]) -> None:
    """A temp segment a killed writer left (here: a whole, valid one saying the 10 failed rows
    are ok) is deleted, not read: the rerun sends those rows."""
    out, args = first_run(tmp_path, sim, capsys)
    state = Journal(out).read()
    failed = state.filter(pa.compute.equal(state["status"], "failed"))
    fake = failed.set_column(failed.schema.get_field_index("status"), "status",
                             pa.array(["ok"] * failed.num_rows))
    tmp = out / "journal" / ".seg-20200101T000000-cccccc-w0-000000.parquet.tmp-4242"
    pq.write_table(fake, tmp)
    junk = out / "journal" / ".seg-20200101T000000-cccccc-w0-000001.parquet.tmp-4243"
    junk.write_bytes(b"half a segm")
    sent = sim.stats()["requests"]
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert not tmp.exists() and not junk.exists()
    assert sim.stats()["requests"] == sent + 10  # the failed rows, and only them
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 40 and (df["status"] == "ok").all()


def test_leftover_temp_files_in_out_dir_are_removed(tmp_path: Path, sim: SimulatorThread,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out, args = first_run(tmp_path, sim, capsys)
    names = [".results.parquet.tmp-4242", ".job.json.tmp-4242", ".cost_report.json.k2j3h4.tmp",
             ".report.html.a8s7d6.tmp"]
    for name in names:
        (out / name).write_bytes(b"part of a file a killed run was writing")
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert [n for n in names if (out / n).exists()] == []


@pytest.mark.parametrize("how", ["run", "report"])
def test_truncated_results_file_is_rewritten(tmp_path: Path, sim: SimulatorThread,
                                             capsys: pytest.CaptureFixture[str],
                                             how: str) -> None:
    out, args = first_run(tmp_path, sim, capsys)
    results = out / "results.parquet"
    results.write_bytes(results.read_bytes()[: results.stat().st_size // 2])
    with pytest.raises(Exception):  # noqa: B017 - pyarrow's error type is not the point
        pd.read_parquet(results)
    sent = sim.stats()["requests"]
    code, _, err = cli(capsys, *(args[:-1] if how == "run" else ["report", str(out)]))
    assert code == 3, err  # the 10 failed rows stay failed (no --retry-failed)
    assert sim.stats()["requests"] == sent
    df = pd.read_parquet(results)
    assert sorted(df["id"]) == [f"r{i:04d}" for i in range(40)]
    assert (df["status"] == "ok").sum() == 30
    report = json.loads((out / "cost_report.json").read_text())
    assert report["cost_usd"] == pytest.approx(float(df["cost_usd"].sum()), rel=1e-9)


JOB_JSON_DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "not an object": lambda b: b"[1, 2, 3]",
    "no name": lambda b: b'{"input_path": "x"}',
    "binary": lambda b: b"\xff\xfe\x00garbage" * 8,
}


@pytest.mark.parametrize("damage", list(JOB_JSON_DAMAGES))
def test_damaged_job_json_is_refused(tmp_path: Path, sim: SimulatorThread,
                                     capsys: pytest.CaptureFixture[str], damage: str) -> None:
    out, args = first_run(tmp_path, sim, capsys)
    meta = out / "job.json"
    bad = JOB_JSON_DAMAGES[damage](meta.read_bytes())
    meta.write_bytes(bad)
    sent = sim.stats()["requests"]
    for argv in (args, ["status", str(out)], ["report", str(out)]):
        code, _, err = cli(capsys, *argv)
        assert code == 2, (argv[0], err)
        line = one_error_line(err)
        assert "job.json" in line and "damaged" in line, line
    assert sim.stats()["requests"] == sent
    assert meta.read_bytes() == bad  # not overwritten by the refused run


def test_missing_job_json_next_to_a_journal_is_refused(tmp_path: Path, sim: SimulatorThread,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out, args = first_run(tmp_path, sim, capsys)
    (out / "job.json").unlink()
    sent = sim.stats()["requests"]
    code, _, err = cli(capsys, *args)
    assert code == 2
    line = one_error_line(err)
    assert "no job.json" in line
    # What to do, not that it is another job's (it is this one's, its job.json deleted).
    assert "restore its job.json" in line and "another --output" in line
    assert "not this job's" not in line
    assert sim.stats()["requests"] == sent


# ----------------------------------------------------------------------------------------------
# A full disk


def limited_cmd(limit: int, args: list[str]) -> list[str]:
    """The CLI in a child whose files cannot grow past ``limit`` bytes (EFBIG, no SIGXFSZ).

    The limit is set by the child's first statements rather than a ``preexec_fn``: the test
    process runs the simulator thread, and forking a threaded process to run Python is unsafe.
    """
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from batchrunner.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return [sys.executable, "-c", code, *args]


def check_stop_summary(out_text: str, inp: Path, out: Path, ok: int, *, rows: int,
                       full: bool = False, results: bool = False) -> None:
    """The summary a run stopped by a write that failed prints on stdout, as every other stop
    prints one (the cron mail holds it above the error line): the rows done and left and the
    cost so far; why it stopped (the disk's free space; a full one said to be full); that the
    journal holds every answer received; and the commands that resume the job and that write
    the results and reports it could not write."""
    lines = out_text.splitlines()
    assert lines[0].startswith(f"batchrunner: in — {rows:,} rows: {ok:,} ok, 0 failed"), out_text
    assert (ok == rows) == ("not done yet" not in lines[0]), out_text
    assert re.match(r"  cost: \$0\.\d+; wall [\d.]+ s; [\d,]+ requests sent this run",
                    lines[1]), out_text
    unwritten = "results and reports" if results else "journal"
    assert lines[2].startswith(f"  stopped: the {unwritten} could not be written (the error "
                               "below)"), out_text
    assert (f"the disk holding {out} filled up (" in lines[2]) == full, out_text
    assert "every answer received (paid for) is saved in the journal: the next run sends none "\
        "of them again" in out_text
    if ok < rows:  # the command that resumes, or the report that writes what is done
        rerun = f"run the job again to resume: batchrunner run --input {inp}"
        assert rerun in out_text and f"--output {out} (it writes them too)" in out_text, out_text
        assert lines[-1].endswith(f", or write them from the journal with: batchrunner report "
                                  f"{out}"), out_text
    else:
        assert "batchrunner run" not in out_text, out_text
        assert lines[-1].endswith(f"write them from the journal with: batchrunner report {out}")
    assert ("once space is freed" in out_text) == full, out_text
    assert KEY not in out_text


def plain_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "batchrunner", *args]


def hangup_cmd(args: list[str]) -> list[str]:
    """``batchrunner`` with SIGHUP at its default, whatever the test's own process has: a child
    inherits an ignored SIGHUP (the suite started under nohup, or by a runner that ignores it),
    and the run keeps an ignored SIGHUP ignored, so a test of what SIGHUP does would not send
    one the run sees."""
    code = ("import signal, sys\n"
            "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
            "from batchrunner.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return [sys.executable, "-c", code, *args]


def test_disk_full_while_journaling(tmp_path: Path) -> None:
    """The first segment (20 fast rows, ~7 KB) fits, the next (280 slow rows, ~18 KB) does
    not: it is written in smaller segments, so every answer is saved; the end of the run
    (the compacted journal, as large) fails with one error line, and a rerun without the limit
    finishes, sending none of the rows again."""
    n, fast = 300, 20
    inp = make_csv(tmp_path / "in.csv", n, {i: " [[sim:slow]]" for i in range(fast, n)})
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(slow_ms=1500, reply_tokens=20)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "300")
        full = subprocess.run(limited_cmd(12 * 1024, args), env=child_env(), capture_output=True,
                              text=True, timeout=60)
        assert full.returncode not in (0, 3, 4), full.stderr
        line = one_error_line(full.stderr)
        assert "too large" in line.lower(), line
        assert not [p for p in (out / "journal").iterdir() if ".tmp" in p.name]
        assert len(ok_keys(out)) == n  # the journal is readable, and holds every answer
        assert len(list((out / "journal").glob("seg-*.parquet"))) > 2
        done = subprocess.run(plain_cmd(args), env=child_env(), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert sim.stats()["requests"] == n  # nothing sent again
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == n and (df["status"] == "ok").all()


def test_disk_full_mid_run_keeps_the_answers_in_flight_and_stops(tmp_path: Path) -> None:
    """A segment cannot be written while rows are still to send (files limited to 12 KB, a
    second's rows ~40 KB; one row's segment is 9.1 KB, 11.4 KB as pyarrow 16 writes it, and
    each row more 0.2 KB): no new row is sent, the answers to the requests in flight (paid
    for) are kept with the second's rows and written in segments that fit, and the run fails
    with one error line that `status` shows the morning after. Every answer the server gave
    is in the journal; a rerun sends only the rows never sent."""
    n = 1000
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=20, reply_tokens=20)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "4")
        full = subprocess.run(limited_cmd(12 * 1024, args), env=child_env(), capture_output=True,
                              text=True, timeout=60)
        assert full.returncode == 1, full.stderr
        line = one_error_line(full.stderr)
        assert "cannot write journal segment" in line and "too large" in line.lower(), line
        # Freeing space does not lift a file-size limit: the line says what does.
        assert "ulimit -f" in line and "free space" not in line, line
        assert not [p for p in (out / "journal").iterdir() if ".tmp" in p.name]
        answered = sim.stats()["requests"]
        saved = ok_keys(out)
        assert len(saved) == answered < n / 2  # every answer saved, and it stopped early
        check_stop_summary(full.stdout, inp, out, answered, rows=n)  # a file size limit: not full
        status = format_status(out)
        assert "  last run: stopped 20" in status, status
        assert "ended by an error: cannot write journal segment" in status
        faster = [*args[:-1], "32"]  # the rest at a higher concurrency
        done = subprocess.run(plain_cmd(faster), env=child_env(), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert sim.stats()["requests"] == n  # the rows saved were not sent again
        # Not one segment fits (3 KB): the summary does not say the answers are saved.
        few = make_csv(tmp_path / "few.csv", 20)
        lost = subprocess.run(limited_cmd(3 * 1024, run_args(few, sim.base_url, tmp_path / "o2")),
                              env=child_env(), capture_output=True, text=True, timeout=60)
        assert lost.returncode == 1 and one_error_line(lost.stderr), lost.stderr
        assert lost.stdout.startswith("batchrunner: few — 20 rows: 0 ok, 0 failed, 20 not done "
                                      "yet\n"), lost.stdout
        assert "  the answers to 20 rows could not be saved in the journal: the next run sends " \
            "them again\n" in lost.stdout and "is saved" not in lost.stdout, lost.stdout
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == n and (df["status"] == "ok").all()


def test_a_full_disk_counts_rows_not_the_records_it_could_not_save(tmp_path: Path) -> None:
    """Not one segment fits (3 KB), and rows were billed for tries before their answers (a 200
    without choices, then sent again): the journal lacks those ``retrying`` records too. The
    summary read "3,000 rows: 2,987 ok, -4 failed, 17 not done yet" and "the answers to 12
    rows" (records, a row's billed try and its answer apart), where `status` read 2,987 ok, 0
    failed, 13 to do. Now a row is counted once, by its latest record: its answer (lost, so
    to do), or its billed tries alone (a row still to do, whose cost is lost)."""
    n, once, always = 20, range(5), 5
    markers = {i: " [[sim:no_choices*1]]" for i in once} | {always: " [[sim:no_choices]]"}
    inp = make_csv(tmp_path / "in.csv", n, markers)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=20, reply_tokens=20)) as sim:
        # Row 5 is billed on every try, and tried more than the run lasts: it is still to do.
        args = run_args(inp, sim.base_url, out, "--max-attempts", "40")
        lost = subprocess.run(limited_cmd(3 * 1024, args), env=child_env(), capture_output=True,
                              text=True, timeout=60)
        assert lost.returncode == 1 and one_error_line(lost.stderr), lost.stderr
    assert lost.stdout.startswith(f"batchrunner: in — {n} rows: 0 ok, 0 failed, {n} not done "
                                  "yet\n"), lost.stdout
    said = re.search(r"  the answers to (\d+) rows? could not be saved in the journal: the next "
                     r"run sends them again; the billed tries of (\d+) rows? still to do could "
                     r"not be saved: the cost above counts them, the journal does not\n",
                     lost.stdout)
    assert said, lost.stdout
    answers, tries = int(said[1]), int(said[2])
    assert answers >= n - len(once) - 1 and tries >= 1 and answers + tries <= n, lost.stdout
    assert f"0 of {n} rows finished (0 ok, 0 failed, {n} to do)" in format_status(out)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 300 MB file system of its own (tmpfs: in memory), to be filled up; skipped where one
    cannot be mounted (not root, or no CAP_SYS_ADMIN). A run holds its reserve on a disk with
    256 MB free."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def fill_up(disk: Path) -> Path:
    """Write a file until ``disk`` has not a byte left."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(bytes(size))
    return filler


def run_until_a_segment_then(args: list[str], out: Path, act: Callable[[], object]
                              ) -> tuple[int, str]:
    """Run the job (``args``) in a process, ``act`` once its first journal segment is there,
    and wait for it to end: its exit code and stderr."""
    return run_until_a_segment_then_out(args, out, act)[::2]


def run_until_a_segment_then_out(args: list[str], out: Path, act: Callable[[], object]
                                  ) -> tuple[int, str, str]:
    """``run_until_a_segment_then``'s run: its exit code, stdout and stderr."""
    proc = subprocess.Popen(plain_cmd(args), env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with reaped(proc):
        deadline = time.monotonic() + 60
        while not list((out / "journal").glob("seg-*.parquet")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.01)
        act()
        stdout, err = proc.communicate(timeout=60)
    return proc.returncode, stdout, err


def test_a_disk_filled_up_mid_run_still_takes_the_last_answers(
        tmp_path: Path, small_disk: Path) -> None:
    """Another program fills the disk while the job runs: the next segment cannot be written,
    nor any smaller one. The disk the run held for its last write (JournalWriter.reserve) is
    freed, and every answer the server gave, paid for, is in the journal when the run fails."""
    n = 1200
    inp = make_csv(tmp_path / "in.csv", n)
    out = small_disk / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=20, reply_tokens=20)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "4")
        filler = small_disk / "filler"
        returncode, stdout, err = run_until_a_segment_then_out(
            args, out, lambda: fill_up(small_disk))
        assert returncode == 1, err
        line = one_error_line(err)
        assert "cannot write journal segment" in line, line
        answered = sim.stats()["requests"]
        assert len(ok_keys(out)) == answered < n  # every answer saved, and it stopped early
        # The disk the run held for its last write is used up by it: the disk is full again.
        check_stop_summary(stdout, inp, out, answered, rows=n, full=True)
        assert not list((out / "journal").glob(".reserve-*"))
        filler.unlink()
        done = subprocess.run(plain_cmd([*args[:-1], "32"]), env=child_env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert sim.stats()["requests"] == n  # the rows saved were not sent again
        assert not list((out / "journal").glob(".reserve-*"))


def test_status_of_a_run_that_could_not_record_its_end_on_a_full_disk_says_the_disk_is_full(
        tmp_path: Path, small_disk: Path) -> None:
    """A disk full to the last block stops the run (exit 1, its one line in the cron mail), and
    job.json, which says how the run ended, may not be written either (on a disk with too
    little free at the start for the run's reserve, as seen with a 3 MB one): `status` said the
    run "did not finish (killed, or the machine stopped): run the job again to resume", which
    fails again until space is freed. It now says the disk holding the output directory is
    full, and to free space first; with space freed, it says no more of it. The run's end is
    left unrecorded here, as such a run leaves it."""
    inp = make_csv(tmp_path / "in.csv", 20)
    out = small_disk / "out"
    with SimulatorThread(SimulatorConfig()) as sim:
        done = subprocess.run(plain_cmd([*run_args(inp, sim.base_url, out), "--limit", "5"]),
                              env=child_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    meta = json.loads((out / "job.json").read_text())
    meta["last_run"].update(finished_at=None, stopped=None)
    (out / "job.json").write_text(json.dumps(meta))
    filler = fill_up(small_disk)
    status = format_status(out)
    # One line: what stopped it, what to do first, and the command (it guessed "killed, or
    # the machine stopped" first, and told of the disk on a line of its own after the command).
    line = next(x for x in status.splitlines() if "did not finish" in x)
    assert re.fullmatch(f"  last run: started [^ ]+, did not finish: the disk holding "
                        f"{re.escape(str(out))} is full \\(0 bytes free\\): free space, then run "
                        "the job again to resume: batchrunner run .*", line), status
    assert "killed" not in status, status
    filler.unlink()
    status = format_status(out)
    assert "is full" not in status and "did not finish (killed, or the machine stopped): run " \
        "the job again to resume: batchrunner run " in status, status
    # A file system gone read-only (a disk error, a remount) stops a run as unsaid: it was
    # called killed too.
    ro = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True,
                        text=True, timeout=30)
    assert ro.returncode == 0, ro.stderr
    try:
        line = next(x for x in format_status(out).splitlines() if "did not finish" in x)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], timeout=30)
    assert re.fullmatch(f"  last run: started [^ ]+, did not finish: the file system holding "
                        f"{re.escape(str(out))} is read-only \\(a disk error, or remounted "
                        "so\\): make it writable, then run the job again to resume: "
                        "batchrunner run .*", line), line


def test_a_disk_gone_read_only_mid_run_names_the_journal_and_a_rerun_finishes(
        tmp_path: Path, small_disk: Path) -> None:
    """The file system under the output directory turns read-only while the job runs (a disk
    error, a remount): the run stops with exit 1 and one line naming the journal segment it
    could not write and why, not the disk it held for its last write, nor "free space"; once
    the disk is writable again, a rerun finishes."""
    n = 1200
    inp = make_csv(tmp_path / "in.csv", n)
    out = small_disk / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=20, reply_tokens=20)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "4")
        returncode, err = run_until_a_segment_then(args, out, lambda: subprocess.run(
            ["mount", "-o", "remount,ro", str(small_disk)], check=True, capture_output=True,
            timeout=30))
        assert returncode == 1, err
        line = one_error_line(err)
        assert "cannot write journal segment" in line and "read-only" in line.lower(), line
        assert ".reserve" not in line and "free space" not in line, line
        saved = ok_keys(out)
        assert 0 < len(saved) < n
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True,
                       capture_output=True, timeout=30)
        done = subprocess.run(plain_cmd([*args[:-1], "32"]), env=child_env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert not list((out / "journal").glob(".reserve-*"))
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == n and (df["status"] == "ok").all()


@pytest.mark.parametrize("removed", ["out", "out/journal"])
def test_a_journal_removed_mid_run_is_named_as_removed_not_said_to_be_saved(
        tmp_path: Path, removed: str) -> None:
    """The output directory, or its journal, is deleted while the job runs (a clean-up job, a
    hand in the wrong terminal): the run stopped saying "rows finished before are saved —
    rerun once it can be written", where they were gone with the directory and nothing stood
    in the way of a rerun. The one line now says the directory was removed and its rows with
    it, and the rerun, which sends them again, finishes the job."""
    n = 1200
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=20, reply_tokens=20)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "4")
        returncode, err = run_until_a_segment_then(
            args, out, lambda: shutil.rmtree(tmp_path / removed))
        assert returncode == 1, err
        line = one_error_line(err)
        assert f"cannot write journal segment {out / 'journal'}" in line, line
        assert (f"{out / 'journal'} was removed while the job ran, and with it the rows "
                "finished before — rerun to send them again") in line, line
        assert "saved" not in line, line
        done = subprocess.run(plain_cmd([*args[:-1], "32"]), env=child_env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == n and (df["status"] == "ok").all()


@pytest.mark.parametrize("resumed", [False, True])
def test_an_output_directory_that_cannot_be_written_is_a_bad_output_exit_2(
        tmp_path: Path, small_disk: Path, resumed: bool) -> None:
    """The output directory is there but cannot be written (its file system read-only, or not
    the user's to write): a bad --output, refused in one line with exit 2 before anything is
    sent, as README's exit codes say, not exit 1, which tells a scheduler that rows were
    finished and the disk is full."""
    inp = make_csv(tmp_path / "in.csv", 20)
    out = small_disk / "out"
    with SimulatorThread(SimulatorConfig()) as sim:
        args = run_args(inp, sim.base_url, out)
        if resumed:
            done = subprocess.run(plain_cmd([*args, "--limit", "5"]), env=child_env(),
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        else:
            out.mkdir()
        sent = sim.stats()["requests"]
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True,
                       capture_output=True, timeout=30)
        refused = subprocess.run(plain_cmd(args), env=child_env(), capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode == 2, refused.stderr
        line = one_error_line(refused.stderr)
        assert f"cannot write in the output directory {out}" in line, line
        assert "read-only" in line and "--output" in line, line
        assert sim.stats()["requests"] == sent


RESULTS_LIMIT = 96 * 1024  # the journal (~30 KB) fits, results with a 1 KB pad a row do not


def run_results_disk_full(tmp_path: Path, check_rerun: bool) -> subprocess.CompletedProcess[str]:
    n = 300
    inp = make_csv(tmp_path / "in.csv", n, pad=500)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(reply_tokens=20)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "16")
        full = subprocess.run(limited_cmd(RESULTS_LIMIT, args), env=child_env(),
                              capture_output=True, text=True, timeout=60)
        if not check_rerun:
            return full
        assert full.returncode not in (0, 3, 4), full.stderr
        line = one_error_line(full.stderr)
        assert "results.parquet" in line and "too large" in line.lower(), line
        # As the journal's message does: the finished rows are saved, and what to do.
        assert line.endswith("; the rows finished are saved in the journal: rerun once it "
                             "can be written (a full disk: free space), or run batchrunner "
                             "report"), line
        assert len(ok_keys(out)) == n  # every row is in the journal
        assert not (out / "results.parquet").exists()
        check_stop_summary(full.stdout, inp, out, n, rows=n, results=True)
        assert "the results and reports were not written" in full.stdout
        sent = sim.stats()["requests"]
        done = subprocess.run(plain_cmd(args), env=child_env(), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert sim.stats()["requests"] == sent == n  # nothing sent again
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == n and (df["status"] == "ok").all()
    return full


def test_disk_full_while_writing_results(tmp_path: Path) -> None:
    run_results_disk_full(tmp_path, check_rerun=True)


def test_disk_full_while_writing_results_is_not_exit_2(tmp_path: Path) -> None:
    full = run_results_disk_full(tmp_path, check_rerun=False)
    assert full.returncode not in (0, 2), full.stderr


def test_status_after_the_results_could_not_be_written_says_so(tmp_path: Path) -> None:
    """Every row was answered and journaled, then the results file did not fit: the morning's
    `status` says the run ended by that error, not that it ran through (last night's results
    file, if any, would still be there, looking current)."""
    full = run_results_disk_full(tmp_path, check_rerun=False)
    assert full.returncode == 1, full.stderr
    status = format_status(tmp_path / "out")
    assert "  last run: stopped 20" in status, status
    assert "ended by an error: " in status and "results.parquet" in status, status
    assert "rebuilt" not in status
    assert "  the results and reports may not have been written, or not all (the run was stopped " \
        f"while writing them) — write them with: batchrunner report {tmp_path / 'out'}" in status
    # Space freed, `batchrunner report` writes them: status says so, not only the error.
    assert main(["report", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "results.parquet").exists()
    rebuilt = format_status(tmp_path / "out").splitlines()
    said = next(i for i, line in enumerate(rebuilt) if line.startswith("  last run: stopped"))
    assert rebuilt[said + 1].startswith("  results and reports rebuilt by batchrunner report "
                                        "at 20"), rebuilt


def killed_writing_results_cmd(args: list[str]) -> list[str]:
    """The CLI in a child killed (SIGKILL) as it starts to write the results file: every row
    answered and journaled, the run's end recorded in job.json, no results or reports."""
    code = ("import os, signal, sys\n"
            "from batchrunner import results\n"
            "def killed(*args, **kwargs):\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "results._write_results = killed\n"
            "from batchrunner.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return [sys.executable, "-c", code, *args]


def test_status_after_a_run_killed_writing_its_results_says_they_were_not_written(
        tmp_path: Path) -> None:
    """Every row was answered and journaled, then the run was killed as it wrote the results
    (a scheduler's SIGKILL, the OOM killer, a reboot): `status` said the last run went from its
    start to its end with its requests sent, as for a run that wrote them, while last night's
    results file, if any, was still there, looking current. It now says the results and
    reports were not written and the command that writes them; once run, it no longer does."""
    n = 30
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(reply_tokens=20)) as sim:
        args = run_args(inp, sim.base_url, out)
        killed = subprocess.run(killed_writing_results_cmd(args), env=child_env(),
                                capture_output=True, text=True, timeout=60)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert len(ok_keys(out)) == sim.stats()["requests"] == n
    assert not (out / "results.parquet").exists()
    status = format_status(out).splitlines()
    said = next(i for i, line in enumerate(status) if line.startswith("  last run: "))
    assert status[said + 1] == (
        "  the results and reports were not written: the run was killed while writing them, or "
        f"the machine stopped — write them with: batchrunner report {out}"), status
    assert main(["report", str(out)]) == 0
    assert (out / "results.parquet").exists()
    assert "not written" not in format_status(out)


def signalled_writing_results_cmd(args: list[str], sig: signal.Signals) -> list[str]:
    """The CLI in a child sent ``sig`` (Ctrl-C's SIGINT, a scheduler's SIGTERM) as it starts
    to write the results file: every row answered and journaled, the run's end recorded in
    job.json. The thread writing them goes on after a short wait: the signal is handled
    meanwhile."""
    code = ("import os, signal, sys, time\n"
            "from batchrunner import results\n"
            "write = results._write_results\n"
            "def signalled(*args, **kwargs):\n"
            f"    os.kill(os.getpid(), signal.{sig.name})\n"
            "    time.sleep(0.5)\n"
            "    return write(*args, **kwargs)\n"
            "results._write_results = signalled\n"
            "from batchrunner.cli import main\n"
            "sys.exit(main(sys.argv[1:], exiting=True))\n")
    return [sys.executable, "-c", code, *args]


def test_a_second_sigterm_as_the_sending_ends_says_the_results_are_to_write(
        tmp_path: Path) -> None:
    """A scheduler's second SIGTERM, a quarter of a second after the first, came after the
    run's own handler was down (every row sent) and before the run's end was recorded in
    job.json: the run said only "interrupted; finished rows are saved — run the same command
    to resume", no results were written, and `status` said the run had ended. The run says
    they are to write, with the command that writes them, as for a signal while they are
    written, and `status` that it did not finish, with the command that resumes it."""
    inp = make_csv(tmp_path / "in.csv", 10)
    out = tmp_path / "out"
    code = ("import os, signal, sys, time\n"
            "from batchrunner import runner\n"
            "moved = runner._input_moved\n"
            "def signalled(*args, **kwargs):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(0.5)\n"
            "    return moved(*args, **kwargs)\n"
            "runner._input_moved = signalled\n"
            "from batchrunner.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    with SimulatorThread(SimulatorConfig(reply_tokens=20)) as sim:
        stopped = subprocess.run([sys.executable, "-c", code,
                                  *run_args(inp, sim.base_url, out)],
                                 env=child_env(), capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 4, stopped.stderr
    assert stopped.stderr.startswith(
        "batchrunner: stopped: interrupted while the results and reports were written: they "
        "may be missing, or an earlier run's; finished rows are saved — write them with: "
        f"batchrunner report {out}"), stopped.stderr
    assert not (out / "results.parquet").exists()
    status = format_status(out)  # a run that did not finish: the rerun writes them too
    assert "did not finish (killed, or the machine stopped): run the job again to resume: " \
        "batchrunner run " in status, status
    assert main(["report", str(out)]) == 0
    assert len(pd.read_parquet(out / "results.parquet")) == 10


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_results_are_written_is_said_and_status_says_to_write_them(
        tmp_path: Path, sig: signal.Signals) -> None:
    """Every row was sent (a --limit run's, 20 of 30), then Ctrl-C or SIGTERM came as the run
    wrote its results: the run said only "interrupted; finished rows are saved — run the same
    command to resume", and `status` said how the run stopped, but nothing of the results
    file, which may be missing or last night's, looking current (as it says after a SIGKILL
    then). Now both say the results and reports may not have been written, with the `report`
    command that writes them, and status the command that finishes the job too; once
    `report` has written them, status says so instead. The run stops then, as it says: the
    thread writing them was waited for at the interpreter's exit, and wrote them all seconds
    after the run said they were left for `report`, job.json saying they were not."""
    n, limit = 30, 20
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(reply_tokens=20)) as sim:
        args = run_args(inp, sim.base_url, out, "--limit", str(limit))
        stopped = subprocess.run(signalled_writing_results_cmd(args, sig), env=child_env(),
                                 capture_output=True, text=True, timeout=60)
        assert len(ok_keys(out)) == sim.stats()["requests"] == limit
    assert stopped.returncode == 4, stopped.stderr
    assert stopped.stderr == (
        "batchrunner: stopped: interrupted while the results and reports were written: they "
        "may be missing, or an earlier run's; finished rows are saved — write them with: "
        f"batchrunner report {out}, or run the same command again (it resumes, and writes "
        "them)\n"), stopped.stderr
    assert not (out / "results.parquet").exists()
    status = format_status(out).splitlines()
    said = next(i for i, line in enumerate(status) if line.startswith("  last run: "))
    assert status[said].startswith("  last run: stopped 20") and status[said].endswith(
        ": interrupted"), status
    assert status[said + 1] == (
        "  the results and reports may not have been written, or not all (the run was stopped "
        f"while writing them) — write them with: batchrunner report {out}"), status
    assert status[said + 2].startswith(f"  to finish, {n - limit} rows to do: batchrunner run "
                                       f"--input {inp} "), status
    assert main(["report", str(out)]) == 4  # rows left to do
    status = format_status(out).splitlines()
    assert status[said + 1].startswith("  results and reports rebuilt by batchrunner report at "
                                       "20"), status
    assert not any("not have been written" in line for line in status), status
    # A run stopped for its input changed writes no results, and `report` refuses that input:
    # not told to write them, though an older version's job.json has no stop_kind to say so.
    meta = json.loads((out / "job.json").read_text())
    meta.pop("rebuilt_at", None)
    meta["last_run"].pop("stop_kind", None)
    meta["last_run"].update(stopped=f"input {inp} changed while the job ran (replaced, "
                                    "rewritten or appended to)", results_written=False)
    (out / "job.json").write_text(json.dumps(meta))
    status = format_status(out).splitlines()
    assert "changed while the job ran" in status[said], status
    assert not any("not have been written" in line for line in status), status


def test_a_signal_before_a_run_writes_its_job_json_is_not_said_to_be_the_results(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run that stopped as it wrote its results (job.json: finished, results not written),
    then another interrupted before it wrote its own job.json: the second says it was
    interrupted, not that it was writing its results (job.json is the first run's)."""
    n = 10
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(reply_tokens=20)) as sim:
        args = run_args(inp, sim.base_url, out, "--limit", "5")
        stopped = subprocess.run(signalled_writing_results_cmd(args, signal.SIGTERM),
                                 env=child_env(), capture_output=True, text=True, timeout=60)
        assert "while the results and reports were written" in stopped.stderr, stopped.stderr
        meta = json.loads((out / "job.json").read_text())
        meta["last_run"]["pid"] = os.getpid()  # as an in-process run's would be
        (out / "job.json").write_text(json.dumps(meta))

        def interrupted(*_: Any, **__: Any) -> None:
            raise KeyboardInterrupt

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(runner, "_write_meta", interrupted)
            code, _, err = cli(capsys, *run_args(inp, sim.base_url, out))
    assert code == 4
    assert err == "batchrunner: interrupted; finished rows are saved — run the same command to " \
        "resume\n", err


def test_disk_full_while_journaling_names_the_journal(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", 300)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(reply_tokens=20)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "16")
        full = subprocess.run(limited_cmd(4096, args), env=child_env(), capture_output=True,
                              text=True, timeout=60)
    line = one_error_line(full.stderr)
    assert "journal" in line, line


def test_changed_rows_a_killed_run_sent_again_are_not_sent_once_more(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows done, then edited so that the endpoint refuses them: the rerun that sends them
    again is killed once their failures are journaled, before its compaction (the old ok
    records beside them would win but for their text). The next run does not send them a
    third time (a failed row is resent by --retry-failed only), and its results show their
    failures, not the answers to their old text."""
    n, changed, hangs = 30, 5, 4
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    refused = {i: " [[sim:400]]" for i in range(changed)}
    with SimulatorThread(SimulatorConfig(latency_ms=30)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", str(hangs))
        code, _, err = cli(capsys, *args)
        assert code == 0, err
        make_csv(inp, n + hangs, {**refused, **{n + i: " [[sim:hang]]" for i in range(hangs)}})
        with cli_process(tmp_path, args) as (proc, err_path, _):
            deadline = time.monotonic() + 60
            failed = 0
            while time.monotonic() < deadline and proc.poll() is None:
                failed = sum(pq.read_table(seg, columns=["status"])["status"].to_pylist()
                             .count("failed")
                             for seg in Journal(out).segments())  # ok wins over them: not read()
                if failed == changed:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, err_path.read_text()
            assert failed == changed, f"the rerun journaled {failed} failures"
            proc.kill()
            proc.wait()
        make_csv(inp, n + hangs, refused)  # tonight's new rows answer now
        sent = sim.stats()["requests"]
        code, _, err = cli(capsys, *args)
        assert sim.stats()["requests"] - sent == hangs, err  # the new rows only
    assert code == 3, err
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == n + hangs
    assert df["status"][:changed].eq("failed").all() and df["status"][changed:].eq("ok").all()
    assert df["error_type"][:changed].eq("http_400").all()
    assert Journal(out).latest(None, hashes=True).row_hash is not None


def test_report_after_a_killed_changed_rows_rerun_shows_what_it_journaled(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows done, then edited: the rerun sends them again, journals their new outcomes (five
    refused, five answered) and is killed before its compaction. `report` then kept the
    refused rows' answers to their old text (an ok wins over a failure, but for the rows'
    text now, which only a run compared), and said no row was left to send again. It now
    shows the outcomes journaled for the text now, as the next run would."""
    n, refused, edited, hangs = 30, 5, 5, 4
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    changes = {**{i: " [[sim:400]]" for i in range(refused)},
               **{i: " edited" for i in range(refused, refused + edited)}}
    with SimulatorThread(SimulatorConfig(latency_ms=30)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", str(hangs))
        code, _, err = cli(capsys, *args)
        assert code == 0, err
        before = pd.read_parquet(out / "results.parquet").set_index("id")["content"]
        make_csv(inp, n + hangs, {**changes, **{n + i: " [[sim:hang]]" for i in range(hangs)}})
        # The rerun's segments are those the first run did not leave: by name they may sort
        # before the first run's (a run's id starts with the second it started in).
        first = set(Journal(out).segments())
        with cli_process(tmp_path, args) as (proc, err_path, _):
            deadline = time.monotonic() + 60
            journaled = 0
            while time.monotonic() < deadline and proc.poll() is None:
                journaled = sum(pq.read_metadata(seg).num_rows
                                for seg in Journal(out).segments() if seg not in first)
                if journaled == refused + edited:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, err_path.read_text()
            assert journaled == refused + edited, f"the rerun journaled {journaled} rows"
            proc.kill()
            proc.wait()
    code, _, err = cli(capsys, "report", str(out))
    assert code == 4, err  # the new rows are to do
    df = pd.read_parquet(out / "results.parquet").set_index("id")
    assert len(df) == n + hangs and df["status"].iloc[n:].isna().all()
    assert df["error_type"].iloc[:refused].eq("http_400").all()
    assert df["content"].iloc[:refused].isna().all()
    again = df.iloc[refused:refused + edited]
    assert again["status"].eq("ok").all()
    assert (again["content"] != before.iloc[refused:refused + edited]).all()
    assert df["status"].iloc[refused + edited:n].eq("ok").all()
    report = json.loads((out / "cost_report.json").read_text())
    assert report["rows"]["by_status"] == {"ok": n - refused, "failed": refused}
    assert report["rows"]["changed_to_send"] == 0
    status = format_status(out)
    assert f"{n - refused} ok, {refused} failed" in status
    assert "earlier text" not in status, status  # report found none left to send again


def test_retry_failed_after_a_killed_changed_rows_rerun_is_not_stopped_by_its_retries(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows done, then edited so that the endpoint refuses them: the rerun sends them again
    (after an edited row answered, so it goes on), journals their failures and is killed.
    The next night's run with --retry-failed sends those failures again; they were counted as
    rows never tried, so their failing again stopped the job (exit 4) before the new rows were
    sent, where rows sent again by --retry-failed are not to stop it. It now finishes (exit 3),
    the new rows answered."""
    n, refused, new = 40, 30, 4
    inp = make_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out"
    changes = {0: " edited", **{i: " [[sim:400]]" for i in range(1, refused + 1)}}
    with SimulatorThread(SimulatorConfig(latency_ms=20)) as sim:
        args = run_args(inp, sim.base_url, out)
        code, _, err = cli(capsys, *args, "--concurrency", "4")
        assert code == 0, err
        make_csv(inp, n + new, {**changes, **{n + i: " [[sim:hang]]" for i in range(new)}})
        # The rerun's segments are those the first run did not leave: by name they may sort
        # before the first run's (a run's id starts with the second it started in).
        first = set(Journal(out).segments())
        with cli_process(tmp_path, [*args, "--concurrency", "1"]) as (proc, err_path, _):
            deadline = time.monotonic() + 60
            failed = 0
            while time.monotonic() < deadline and proc.poll() is None:
                failed = sum(pq.read_table(seg, columns=["status"])["status"].to_pylist()
                             .count("failed") for seg in Journal(out).segments()
                             if seg not in first)
                if failed == refused:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, err_path.read_text()
            assert failed == refused, f"the rerun journaled {failed} failures"
            proc.kill()
            proc.wait()
        make_csv(inp, n + new, changes)  # the new rows answer now
        code, stdout, err = cli(capsys, *args, "--concurrency", "4", "--retry-failed")
    assert code == 3, stdout + err
    df = pd.read_parquet(out / "results.parquet")
    assert df["status"].iloc[1:refused + 1].eq("failed").all()
    assert df["status"].drop(index=range(1, refused + 1)).eq("ok").all()


def test_a_rerun_after_a_killed_first_run_knows_the_models_it_was_answered_by(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job of two models, the key refused for one: the first run is killed once the other
    model's rows are answered, before it recorded in job.json which models answered (at its
    end). The rerun, left with the refused model's rows, held them as if no model had ever
    answered the key and stopped (exit 4, "check the key"), as every rerun would; the answers
    in the journal show the key works. Those rows now fail as model_refused (exit 3)."""
    n = 10

    def write_input(marker: str) -> Path:
        pd.DataFrame({"id": [f"r{i:04d}" for i in range(2 * n)],
                      "text": [f"row {i}" + (marker if i >= n else "") for i in range(2 * n)],
                      "model": ["gpt-4o-mini"] * n + ["claude-x"] * n}
                     ).to_csv(tmp_path / "in.csv", index=False)
        return tmp_path / "in.csv"

    inp, out = write_input(" [[sim:hang]]"), tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=20)) as sim:
        args = ["run", "--input", str(inp), "--id-column", "id", "--prompt", TEMPLATE,
                "--model-column", "model", "--base-url", sim.base_url, "--output", str(out),
                "--progress", "none", "--concurrency", "2"]
        with cli_process(tmp_path, args) as (proc, err_path, _):
            assert _wait(proc, lambda: len(ok_keys(out)) == n), err_path.read_text()
            proc.kill()
            proc.wait()
        assert "answered_models" not in json.loads((out / "job.json").read_text())
        write_input(" [[sim:403]]")
        code, stdout, err = cli(capsys, *args)
    assert code == 3, stdout + err
    df = pd.read_parquet(out / "results.parquet")
    assert df["status"].iloc[:n].eq("ok").all()
    assert df["error_type"].iloc[n:].eq("model_refused").all()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["killed", "interrupted"])
def test_status_after_a_retry_failed_run_cut_short_names_a_command_that_retries_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], sig: signal.Signals) -> None:
    """A --retry-failed run killed, or stopped by Ctrl-C, with failed rows it had not sent
    again yet (their retries hang): `status` named the job's command without --retry-failed
    ("did not finish (killed, ...): run the job again to resume: batchrunner run ..."), which
    sends nothing ("nothing to do", exit 3), or, after Ctrl-C, no command at all (0 to do).
    Now it names the command with --retry-failed, which finishes the job."""
    n, retried, hung = 30, range(10, 13), range(13, 16)
    markers = {i: " [[sim:500*1]]" for i in retried} | {
        i: " [[sim:500*1]][[sim:hang*1]]" for i in hung}
    inp = make_csv(tmp_path / "in.csv", n, markers)
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=20)) as sim:
        args = run_args(inp, sim.base_url, out, "--concurrency", "4")
        code, _, err = cli(capsys, *args, "--max-attempts", "1")
        assert code == 3, err
        with cli_process(tmp_path, [*args, "--retry-failed"]) as (proc, err_path, _):
            deadline = time.monotonic() + 60
            while not (sim.stats()["hangs"] >= len(hung)
                       and len(ok_keys(out)) == n - len(hung)):
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, (sim.stats(), err_path.read_text())
                time.sleep(0.05)
            proc.send_signal(sig)
            code = proc.wait(timeout=30)
        assert code == (-sig if sig == signal.SIGKILL else 4), err_path.read_text()
        lines = format_status(out).splitlines()
        assert lines[0].endswith(f"({n - len(hung)} ok, {len(hung)} failed, 0 to do)"), lines
        if sig == signal.SIGKILL:
            said = next(x for x in lines if "did not finish" in x)
            command = said.partition("run the job again to resume: ")[2]
        else:
            assert any(x.startswith("  last run: stopped 20") and "interrupted by Ctrl-C" in x
                       for x in lines), lines
            said = next(x for x in lines if x.startswith("  to finish"))
            command = said.partition(f"  to finish, the {len(hung)} failed rows to retry: ")[2]
        assert command.startswith("batchrunner run ") and command.endswith(
            " --retry-failed"), lines
        code, _, err = cli(capsys, *shlex.split(command)[1:])
    assert code == 0, err
    assert len(ok_keys(out)) == n
    assert "to finish" not in format_status(out)


def test_a_retry_failed_run_the_journal_could_not_hold_names_the_command_with_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --retry-failed run stopped by a write that failed (not one segment fits: 3 KB): its
    summary's command to resume had no --retry-failed, and sent none of the failed rows."""
    n, failing = 20, range(5, 8)
    inp = make_csv(tmp_path / "in.csv", n, {i: " [[sim:500*1]]" for i in failing})
    out = tmp_path / "out"
    with SimulatorThread(SimulatorConfig(latency_ms=20)) as sim:
        args = run_args(inp, sim.base_url, out)
        code, _, err = cli(capsys, *args, "--max-attempts", "1")
        assert code == 3, err
        lost = subprocess.run(limited_cmd(3 * 1024, [*args, "--retry-failed"]),
                              env=child_env(), capture_output=True, text=True, timeout=60)
    assert lost.returncode == 1 and one_error_line(lost.stderr), lost.stderr
    assert f"the answers to {len(failing)} rows could not be saved" in lost.stdout, lost.stdout
    assert re.search(r"run the job again to resume: batchrunner run .* --retry-failed \(it "
                     r"writes them too\)", lost.stdout), lost.stdout
