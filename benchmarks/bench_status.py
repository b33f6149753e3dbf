"""What ``batchrunner status`` costs on a big job: wall time, CPU time and peak RSS.

Builds an output directory whose journal is what a run of ROWS rows leaves (segments of 2,000
outcomes with 300-character answers, as the run's flusher writes them), then runs
``python -m batchrunner status`` on it as a user would, from another process, three times each:

* ``mid-run``: the segments, with the directory locked as a run holds it (``status`` then reads
  the pace too);
* ``mid-run, retrying``: the same, 10 % of the rows failed in an earlier run's compacted
  segment and sent again by this one (``--retry-failed``): keys recorded twice;
* ``after``: the journal compacted, as a finished run leaves it.

::

    python benchmarks/bench_status.py                 # 1,000,000 rows
    python benchmarks/bench_status.py --rows 200000
    python benchmarks/bench_status.py --smoke         # 20,000 rows, one run each, built here

Figures are medians of the runs; the machine's load average is printed beside them, as a shared
machine's figures move with it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEGMENT_ROWS = 2_000  # a run's flusher writes a segment every 2,000 rows (or second)
ANSWER = "x" * 300


def outcome(i: int, rows: int, now: float, *, failed: bool = False) -> Any:
    from batchrunner.records import Outcome

    if failed:
        return Outcome(key=f"r{i:08d}", status="failed", error_type="server_error",
                       error_message="HTTP 503", attempts=6, finished_at=now - 3600 + i * 1e-4)
    return Outcome(key=f"r{i:08d}", status="ok", content=ANSWER, finish_reason="stop",
                   prompt_tokens=20, completion_tokens=64, total_tokens=84,
                   cost_usd=round((20 * 0.15 + 64 * 0.6) / 1e6 * (1 + i % 7), 12),
                   latency_ms=120.0, attempts=1, model="gpt-4o-mini",
                   finished_at=now - 60 + 60 * i / rows)


def make_job(out: Path, rows: int, *, retrying: bool) -> None:
    """A journal of ``rows`` rows in 2,000-row segments; with ``retrying``, an earlier run's
    compacted segment where every tenth row failed, those rows then answered by this run."""
    from batchrunner.journal import Journal, outcomes_table, write_segment

    journal = Journal(out)
    journal.create()
    now = time.time()
    if retrying:
        first = [outcome(i, rows, now, failed=i % 10 == 0) for i in range(rows)]
        for start in range(0, rows, SEGMENT_ROWS):
            write_segment(journal.directory, f"seg-20260101T000000-aaaaaa-w0-{start:09d}.parquet",
                          outcomes_table(first[start:start + SEGMENT_ROWS]))
        journal.compact("20260101T000000-aaaaaa")
        todo = [i for i in range(rows) if i % 10 == 0]
    else:
        todo = list(range(rows))
    run = "20260102T000000-bbbbbb"
    for n, start in enumerate(range(0, len(todo), SEGMENT_ROWS)):
        part = [outcome(i, rows, now) for i in todo[start:start + SEGMENT_ROWS]]
        write_segment(journal.directory, f"seg-{run}-w0-{n:06d}.parquet", outcomes_table(part))
    meta = {"name": "bench", "input_path": str(out / "in.parquet"), "id_column": "id",
            "request": {"model": "gpt-4o-mini"}, "total_rows": rows, "output_format": "parquet",
            "prices": {}, "job_file": "command line",
            "last_run": {"run_id": run, "pid": os.getpid(),
                         "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                     time.gmtime(now - 300)),
                         "to_send": len(todo)}}
    (out / "job.json").write_text(json.dumps(meta), encoding="utf-8")


def finish(out: Path) -> None:
    """The journal as a finished run leaves it: compacted, the last run ended."""
    from batchrunner.journal import Journal

    Journal(out).compact("20260102T000000-cccccc")
    meta = json.loads((out / "job.json").read_text(encoding="utf-8"))
    meta["last_run"]["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["last_run"]["sent"] = meta["last_run"]["to_send"]
    (out / "job.json").write_text(json.dumps(meta), encoding="utf-8")


def status_once(out: Path) -> tuple[float, float, float, str]:
    """One ``batchrunner status`` in a process of its own: wall s, CPU s, peak RSS MB, output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "batchrunner", "status", str(out)],
                                stdout=stdout, stderr=stderr, env=env)
        _, code, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(code)
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode:
            raise SystemExit(f"ERROR: status exited {proc.returncode}: "
                             f"{stderr.read().decode()[-2000:]}")
        return (wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                stdout.read().decode())


def measure(name: str, out: Path, runs: int) -> None:
    figures = [status_once(out) for _ in range(runs)]
    wall, cpu, rss = (sorted(f[i] for f in figures)[len(figures) // 2] for i in range(3))
    print(f"== {name}: wall {wall:.2f} s, CPU {cpu:.2f} s, peak RSS {rss:.0f} MB "
          f"(load {os.getloadavg()[0]:.1f})")
    print("   " + figures[-1][3].strip().replace("\n", "\n   "))


def prepare(out: Path, rows: int, step: str, *, smoke: bool) -> None:
    """``make_job`` or ``finish`` in a process of its own: the peak RSS a child reports counts
    its parent's memory at the fork, so this one is kept small. With ``smoke``, whose figures
    are not read, in this one: three start-ups of Python and pyarrow fewer."""
    if smoke:
        if step == "finish":
            finish(out)
        else:
            make_job(out, rows, retrying=step == "make-retrying")
        return
    subprocess.run([sys.executable, __file__, "--rows", str(rows), f"--{step}", str(out)],
                   check=True, timeout=1800)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="20,000 rows, one run each")
    ap.add_argument("--make", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--make-retrying", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--finish", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make or args.make_retrying:
        make_job(args.make or args.make_retrying, args.rows, retrying=bool(args.make_retrying))
        return
    if args.finish:
        finish(args.finish)
        return
    rows, runs = (20_000, 1) if args.smoke else (args.rows, args.runs)
    print(f"{rows:,} rows, {runs} run(s) each, {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="bench-status-"))
    try:
        for retrying in (False, True):
            out = tmp / ("retrying" if retrying else "plain")
            out.mkdir()
            prepare(out, rows, "make-retrying" if retrying else "make", smoke=args.smoke)
            meta = json.loads((out / "job.json").read_text(encoding="utf-8"))
            meta["last_run"]["pid"] = os.getpid()  # the run holding the lock: this process
            (out / "job.json").write_text(json.dumps(meta), encoding="utf-8")
            fd = os.open(out, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)  # as the run holds it
            try:
                measure("mid-run, retrying" if retrying else "mid-run", out, runs)
            finally:
                os.close(fd)
            if not retrying:
                prepare(out, rows, "finish", smoke=args.smoke)
                measure("after", out, runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
