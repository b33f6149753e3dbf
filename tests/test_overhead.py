"""What a run costs the kernel for each request, counted rather than timed (timings on a shared
machine are not a test): the system calls a run makes (``strace -c``, where installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from batchrunner.simulator import SimulatorConfig, SimulatorThread

KEY = "sk-test-overhead-0123456789abcdef"

pytestmark = [
    pytest.mark.usefixtures("job_env"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's system calls"),
]


def _syscalls(base_url: str, tmp_path: Path, rows: int) -> Counter[str]:
    """The system calls of ``batchrunner run`` over ``rows`` rows, by name (every thread)."""
    work = tmp_path / f"n{rows}"
    work.mkdir()
    inp = work / "in.csv"
    inp.write_text("id,text\n" + "".join(f"r{i},product {i}\n" for i in range(rows)))
    counts = work / "strace.txt"
    proc = subprocess.run(
        ["strace", "-f", "-c", "-o", str(counts), sys.executable, "-m", "batchrunner", "run",
         "--input", str(inp), "--id-column", "id", "--prompt", "Describe {text}",
         "--model", "gpt-4o-mini", "--base-url", base_url, "--output", str(work / "out"),
         "--concurrency", "16", "--progress", "none"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    if "ptrace" in proc.stderr and proc.returncode != 0:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls: Counter[str] = Counter()
    for line in counts.read_text().splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_request_asks_the_kernel_for_the_process_id_once(tmp_path: Path) -> None:
    """Asking for the current task without naming the loop makes asyncio check the process id
    (a ``getpid`` system call) each time; aiohttp's request path does so once a request, and
    the client's watchdog, which keeps a deadline for each request's task, no more."""
    with SimulatorThread(SimulatorConfig()) as sim:
        small = _syscalls(sim.base_url, tmp_path, 40)
        large = _syscalls(sim.base_url, tmp_path, 240)
    per_request = (large["getpid"] - small["getpid"]) / 200
    assert per_request <= 1.1, (small, large)
