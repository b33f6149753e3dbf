"""The overhead scenario counted in instructions, not seconds: repeatable on a noisy machine.

Wall and CPU times on a shared VM move by 10–30 % from run to run, more than most changes to the
per-request path are worth, so an A/B of such a change by time needs many interleaved rounds and
can still mislead. ``valgrind --tool=callgrind`` counts the instructions a process executes, which
does not depend on what else the machine is doing. This script counts them for the bare aiohttp
loop (``bench_pacing.py``'s baseline, the same bodies) and for ``batchrunner run`` over the same
rows, each at two sizes, and splits each count into a fixed part (start-up and finish) and a part
per request::

    python benchmarks/count_instructions.py                    # 500 and 1,500 requests, ~4 min
    python benchmarks/count_instructions.py --runs 3           # median of 3 runs at each size
    python benchmarks/count_instructions.py --only runner      # the runner only (A/B a change)
    PYTHONPATH=/path/to/other/checkout python benchmarks/count_instructions.py --only runner
    python benchmarks/count_instructions.py --smoke            # checks it runs: no valgrind

The simulator runs at full speed in its own process (pinned to the first core, as in
``bench_pacing.py``); only the measured process runs under valgrind, about 50 times slower than
usual, so every reply is waiting when it reads: the event loop batches more than in a real run.
The counts are for comparing versions of the same code on the same machine: instructions are not
time (a cache miss costs more than an add). The runner's journal is flushed every 50 s instead
of every second (``RUNNER_FLUSHED_BY_ROWS``), so that it writes its segments by rows, as a real
run does. Three runs of each were within 0.4 % of each other; take the median of ``--runs 3``.
The runner is run once, not counted, before the counted runs (a first run of the day fills the
price cache), and a split whose larger size did next to nothing more than the smaller is refused.

``--smoke`` runs the same commands at a few rows without valgrind, and counts the instructions of
``true`` under valgrind when it is installed, so the tests check the plumbing and the parsing in
seconds (a Python process that imports aiohttp and pyarrow takes half a minute to start under
callgrind, and even ``python -c pass`` 7 s).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_pacing import (
    MODEL,
    BenchError,
    SimProcess,
    child_env,
    pin_cores,
    runner_argv,
    warm_up,
    write_bodies,
    write_input,
)

BENCH = Path(__file__).resolve().parent / "bench_pacing.py"
COLLECTED_RE = re.compile(r"Collected : (\d+)")
CONCURRENCY = 64
MAX_TOKENS = 256
AT_20K = 20_000  # the overhead scenario's size, for the projected ratio
# ``batchrunner run`` with its journal flushed every 50 s rather than every second: under
# valgrind a run is about 50 times slower, and flushed each second it would write a segment every
# few dozen rows, where a real run writes one every 2,000 (FLUSH_EVERY_ROWS), and what a segment
# costs would count some 50 times over. ``cli.before_imports`` is done first, as ``cli.main``
# does it, before pyarrow and numpy are imported.
RUNNER_FLUSHED_BY_ROWS = """
import sys
from batchrunner import cli
cli.before_imports()
import batchrunner.runner
batchrunner.runner.FLUSH_EVERY_S = 50.0
sys.exit(cli.main())
"""


def count(argv: Sequence[str], *, valgrind: bool, workdir: Path, timeout_s: float) -> int | None:
    """Run ``argv`` (under callgrind when ``valgrind``); the instructions it executed, or None
    when not counted. A run that did not answer every row raises BenchError: a run whose rows
    failed (exit 3: timed out under valgrind on a loaded machine) sent fewer requests than it
    is counted for, and split() would make a figure of it that is not the runner's."""
    cmd = list(argv)
    if valgrind:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=workdir,
                          timeout=timeout_s, check=False)
    if proc.returncode != 0:
        said = "rows failed, " if proc.returncode == 3 else ""
        raise BenchError(f"{' '.join(argv[:3])}… exited {proc.returncode} ({said}not counted): "
                         f"{proc.stderr.strip()[-800:]}")
    if not valgrind:
        return None
    found = COLLECTED_RE.findall(proc.stderr)
    if not found:
        raise BenchError(f"no instruction count in valgrind's output: {proc.stderr[-800:]}")
    return int(found[-1])


def split(small: int, large: int, n_small: int, n_large: int) -> tuple[float, float]:
    """(fixed, per request) from the counts at two sizes."""
    per = (large - small) / (n_large - n_small)
    return small - per * n_small, per


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", default="500,1500", metavar="A,B",
                        help="the two sizes, in requests (default 500,1500)")
    parser.add_argument("--runs", type=int, default=1, help="runs at each size; the median counts")
    parser.add_argument("--only", choices=("bare", "runner"), action="append",
                        help="measure only this (repeatable; default both)")
    parser.add_argument("--smoke", action="store_true",
                        help="run everything at a few rows without valgrind (checks it runs)")
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(x) for x in args.rows.split(",")})
    except ValueError:
        parser.error(f"--rows takes two numbers of requests, like 500,1500 (got {args.rows!r})")
    if len(sizes) != 2 or sizes[0] < 1:
        parser.error(f"--rows takes two different positive numbers, like 500,1500 "
                     f"(got {args.rows!r})")
    if args.runs < 1:
        parser.error("--runs takes a positive number")
    valgrind = shutil.which("valgrind") is not None
    if args.smoke:
        sizes, args.runs = [5, 15], 1
    elif not valgrind:
        print("count_instructions: valgrind is not installed (Debian: apt-get install valgrind)",
              file=sys.stderr)
        return 2
    what = args.only or ["bare", "runner"]
    cores = pin_cores()
    with tempfile.TemporaryDirectory(prefix="count-instr-") as tmp_name:
        tmp = Path(tmp_name)
        # A price cache of its own, warmed once: a run that finds none from today imports
        # genai-prices (about 560 M instructions), as the first run after midnight UTC would.
        os.environ["BATCHRUNNER_CACHE_DIR"] = str(tmp / "cache")
        warm_up(Path(__file__).resolve().parent.parent / "batchrunner")
        if args.smoke and valgrind:
            n = count(["true"], valgrind=True, workdir=tmp, timeout_s=120)
            print(f"true under callgrind: {n:,} instructions")
        print(f"{MODEL}, concurrency {CONCURRENCY}, max_tokens {MAX_TOKENS}, 64-token replies; "
              f"{sizes[0]:,} and {sizes[1]:,} requests, {args.runs} run(s) each; "
              f"{cores.describe()}")
        counts: dict[str, list[int | None]] = {}
        with SimProcess(["--reply-tokens", "64"], cores.simulator, tmp / "sim") as sim:
            if "runner" in what and valgrind and not args.smoke:
                # One run not counted first: whatever a first run of the day does once (the
                # price cache's answers for the day written, genai-prices imported for them:
                # some 600 M instructions) is done before the counted runs, or the first of them
                # counts it and the split is skewed (with one run at each size, the 500-row run
                # alone did it: 11,673 instructions a request where it is ~600,000).
                rows = write_input(tmp / "warm.csv", sizes[0])
                count(runner_argv(sim.base_url, rows, tmp / "warm-out", extra=[
                    "--max-tokens", str(MAX_TOKENS), "--concurrency", str(CONCURRENCY)]),
                    valgrind=False, workdir=tmp, timeout_s=120)
            for n in sizes:
                bodies = write_bodies(tmp / f"bodies{n}.jsonl", n, max_tokens=MAX_TOKENS)
                rows = write_input(tmp / f"input{n}.csv", n)
                for name in what:
                    runs = []
                    for r in range(args.runs):
                        if name == "bare":
                            cmd = [sys.executable, str(BENCH), "--baseline-client", str(bodies),
                                   "--url", sim.base_url, "--concurrency", str(CONCURRENCY)]
                        else:
                            out = tmp / f"out{n}-{r}"
                            cmd = runner_argv(sim.base_url, rows, out, extra=[
                                "--max-tokens", str(MAX_TOKENS),
                                "--concurrency", str(CONCURRENCY)])
                            assert cmd[1:3] == ["-m", "batchrunner"]
                            cmd[1:3] = ["-c", RUNNER_FLUSHED_BY_ROWS]
                        got = count(cmd, valgrind=valgrind and not args.smoke, workdir=tmp,
                                    timeout_s=60 if args.smoke else 1800)
                        runs.append(got)
                        shown = "ran (not counted)" if got is None else f"{got:,} instructions"
                        print(f"  {name} {n:,} requests, run {r + 1}: {shown}", flush=True)
                    counts.setdefault(name, []).append(
                        None if None in runs else int(statistics.median(
                            x for x in runs if x is not None)))
    figures: dict[str, tuple[float, float]] = {}
    for name, (small, large) in counts.items():
        if small is None or large is None:
            continue
        fixed, per = split(small, large, sizes[0], sizes[1])
        if fixed < 0 or per < fixed / (10 * sizes[1]):
            # The larger size did next to nothing more than the smaller: one of the runs did
            # work the other skipped (a cache filled, modules compiled), and no split of the two
            # is the cost of a request.
            raise BenchError(f"{name}: {small:,} instructions at {sizes[0]:,} requests and "
                             f"{large:,} at {sizes[1]:,}: one run did work the other did not "
                             "(a cache filled?); run again, or with --runs 3")
        figures[name] = (fixed, per)
        print(f"{name:6s}: {per:,.0f} instructions a request, fixed {fixed / 1e6:,.0f} M")
    if "bare" in figures and "runner" in figures:
        (fb, pb), (fr, pr) = figures["bare"], figures["runner"]
        total = (fr + AT_20K * pr) / (fb + AT_20K * pb)
        print(f"runner / bare: {pr / pb:.2f}× a request; {total:.2f}× for {AT_20K:,} requests "
              "with the fixed parts")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"count_instructions: {e}", file=sys.stderr)
        sys.exit(1)
