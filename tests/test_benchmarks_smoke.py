"""The benchmarks run (``--smoke``): every scenario starts, finishes and prints its figures.

Only that they run is checked, never how fast: timings on a shared machine are not a test.
``bench_simulator.py --smoke`` is run by ``tests/test_simulator.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_pacing.py"
SCENARIOS = (
    "overhead",
    "latency-bound",
    "request-limited",
    "token-limited",
    "token-short-replies",
    "limit-unknown",
    "limit-too-high",
    "models-own-limits",
    "models-hidden-limits",
    "limit-hidden",
    "faults",
    "memory",
)


# The scenarios wait on rate limits and latencies more than they compute, so the smoke runs
# them in three tests, four scenarios each (one process of --smoke --only's, its own simulators
# and temporary directory), which pytest-xdist runs beside the others: the overhead scenario
# with the ones whose waits are shortest. None checks a pace, so none need run alone (its
# only bound is time: the three at once in the paced pass took 180 s and more at load 15);
# a group took 54-65 s beside another and two busy loops on a 2-core VM at load 10, and has
# 180 s of its own.
SMOKE_GROUPS = (
    ("models-hidden-limits", "limit-too-high", "overhead", "request-limited"),
    ("limit-hidden", "faults", "token-short-replies", "latency-bound"),
    ("models-own-limits", "limit-unknown", "token-limited", "memory"),
)


def test_the_smoke_groups_hold_every_scenario_once() -> None:
    assert sorted(n for group in SMOKE_GROUPS for n in group) == sorted(SCENARIOS)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses os.wait4 and /proc")
@pytest.mark.timeout(200)  # the process's own 180 s, not the suite's 120 s, bound it
@pytest.mark.parametrize("group", SMOKE_GROUPS, ids=lambda group: group[0])
def test_bench_pacing_smoke(group: tuple[str, ...]) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--smoke", *(f"--only={name}" for name in group)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,  # its simulators and runners: killed with it
    )
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    for name in group:
        assert f"== {name}:" in out, f"scenario {name} did not run\n{out[-3000:]}"
        assert f"| {name} |" in out, f"scenario {name} has no figure in the summary\n{out[-3000:]}"
    assert "ERROR" not in out
    if "overhead" in group:
        # The overhead scenario's kernel side: CPU split into user and system time, and page
        # faults, each a request, for both clients (system calls: not in --smoke, see below).
        assert "  kernel side, a request: runner user " in out, out[-3000:]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_bench_pacing_counts_system_calls(tmp_path: Path) -> None:
    """The overhead scenario's system calls a request are read from ``strace -c``'s table."""
    from benchmarks import bench_pacing

    script = "import os\nfor _ in range(500): os.getpid()\n"
    try:
        calls = bench_pacing.count_syscalls([sys.executable, "-c", script], workdir=tmp_path,
                                            name="getpid", timeout_s=60)
    except bench_pacing.BenchError as e:  # ptrace not allowed (a container), say
        pytest.skip(f"strace cannot trace here: {e}")
    assert calls is not None
    assert calls["getpid"] >= 500, calls


def test_bench_pacing_knows_every_scenario() -> None:
    from benchmarks import bench_pacing

    assert tuple(bench_pacing.SCENARIOS) == SCENARIOS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pins cores, as bench_pacing")
def test_count_instructions_smoke() -> None:
    """The commands it counts run (without valgrind in smoke mode), and when valgrind is
    installed its count of a trivial process is read from valgrind's output."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "count_instructions.py"), "--smoke"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    for name in ("bare", "runner"):
        for n in (5, 15):
            assert f"  {name} {n} requests, run 1: ran (not counted)" in out, out
    if shutil.which("valgrind"):
        assert re.search(r"^true under callgrind: \d[\d,]* instructions$", out, re.M), out


def test_bench_status_smoke() -> None:
    """``status`` on each journal it builds (a run in progress, one retrying failed rows, a
    finished one) answers, and the figures are printed."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_status.py"), "--smoke"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    for name in ("mid-run", "after", "mid-run, retrying"):
        assert f"== {name}: wall " in out, out
    assert out.count("20,000 of 20,000 rows finished (20,000 ok, 0 failed, 0 to do)") == 3, out


def test_bench_stream_smoke() -> None:
    """Each recorded stream is assembled whole, in both piece sizes, by this checkout's
    ``StreamAssembler`` and by the one ``--against`` names (here this one again)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_stream.py"), "--smoke",
         "--against", str(ROOT)], capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    for name in ("openai 500 tokens", "vllm 500 tokens", "whole-so-far 2,000 tokens"):
        assert out.count(name) == 2, out
    assert "against ms" in out, out
