"""Crash soak: SIGKILL ``batchrunner run`` at many random moments, rerun it each time.

A real job (``python -m batchrunner run ...`` as a subprocess) runs against the built-in simulator
(a ``SimulatorThread`` in this process, with latency). Each run is killed with SIGKILL at one of
the moments below, chosen by a seeded RNG, and run again; a run that gets to the end on its own
closes an *epoch*, which is then checked (so does an unkilled run after a few kills that found
nothing left to send). Each epoch has its own output directory and its own prompts (the epoch
number is in the template), so the simulator's per-prompt request counts tell the epochs
apart. ::

    python benchmarks/crash_soak.py                 # 50 kills, 2,000 rows an epoch (~3 min)
    python benchmarks/crash_soak.py --kills 10 --rows 300 --seed 7
    python benchmarks/crash_soak.py --batch         # an OpenAI batch file, rows with a schema

Kill moments (``POINTS``):

==================  ============================================================================
startup             a random moment in the first 0.3 s: the interpreter is still importing
job-json-tmp        while ``job.json`` is being written (its temp file exists)
first-request       as the simulator receives this run's first request
random-time         a random moment 0–4 s after the spawn
mid-batch           after a random number (1–300) of this run's completions
segment-renamed     right after a new journal segment has been renamed into place
segment-tmp         while a journal segment is being written (its temp file exists)
last-completion     right after the simulator answered the run's last row
compaction          while the journal is compacted (its temp file, or the compacted segment
                    next to the old ones, exists)
results-tmp         while ``results.parquet`` is being written (its temp file exists)
report-tmp          while a report file is being written (its temp file exists)
==================  ============================================================================

The moments that poll for a temporary file run the child on a *slow disk*: ``os.fsync`` sleeps
30 ms first, so the temp file lives long enough to be seen, and the fsync of the temp file the
moment waits for is held until the kill (``WAIT_S`` at most), so that a poll the machine's load
delays past those 30 ms still sees it; the others run ``python -m batchrunner`` unchanged.

At every kill the journal must be readable; the rows it records ``ok`` and the simulator's
per-prompt request counts are kept. When the epoch's last run exits 0: every input row appears
exactly once in ``results.parquet`` (all ``ok``), no row recorded ``ok`` at a kill was ever sent
again, the cost report's ``cost_usd`` and token totals equal the sums of the result rows, one
compacted segment and no temp file is left in ``journal/``. Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from batchrunner.journal import Journal
from batchrunner.records import RETRYING
from batchrunner.simulator import SimulatorConfig, SimulatorThread, prompt_key

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-crash-soak-0123456789"
MODEL = "gpt-4o-mini"
WAIT_S = 60.0  # the longest any one moment is waited for
POLL_S = 0.001
SLOW_FSYNC_S = 0.03
MAX_IDLE_KILLS = 4  # kills of runs with nothing left to send before an epoch is finished

POINTS: dict[str, float] = {  # moment → weight in the soak's random choice
    "startup": 0.06,
    "job-json-tmp": 0.04,
    "first-request": 0.05,
    "random-time": 0.25,
    "mid-batch": 0.15,
    "segment-renamed": 0.08,
    "segment-tmp": 0.10,
    "last-completion": 0.06,
    "compaction": 0.07,
    "results-tmp": 0.08,
    "report-tmp": 0.06,
}
# With --batch: what every row of the batch file asks for (checked, spread into json_ columns).
BATCH_FORMAT = {"type": "json_schema", "json_schema": {"name": "topic", "schema": {
    "type": "object", "properties": {"topic": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["topic", "score"], "additionalProperties": False}}}
# The moments that are a temporary file's life, by its name (in OUT_DIR, or journal/ for ".seg-").
TEMP_FILES: dict[str, str] = {
    "job-json-tmp": r"^(?=\.job\.json\.)(?=.*\.tmp)",
    "segment-tmp": r"^(?=\.seg-)(?=.*\.tmp-)(?!.*-compact-)",
    "compaction": r"^(?=\.seg-)(?=.*\.tmp-)(?=.*-compact-)",
    "results-tmp": r"^(?=\.results\.)(?=.*\.tmp)",
    "report-tmp": r"^(?=\.(cost_report|report)\.)(?=.*\.tmp)",
}
SLOW_DISK_POINTS = frozenset(TEMP_FILES)
HOLD_VARIABLE = "CRASH_SOAK_HOLD"  # the slow disk's: the TEMP_FILES pattern to hold the fsync of
SENDING_POINTS = frozenset({"first-request", "mid-batch", "segment-renamed", "segment-tmp",
                            "last-completion"})  # need rows left to send

# The child on a slow disk: every fsync waits first, so temporary files live long enough to
# be seen (and killed in), and the fsync of a file named as HOLD_VARIABLE says waits for the
# kill (/proc names an fd's file). Everything else is ``python -m batchrunner`` as it is.
SLOW_DISK = f"""\
import os, re, sys, time
_fsync = os.fsync
_hold = re.compile(os.environ.get({HOLD_VARIABLE!r}) or "(?!)")
def _slow_fsync(fd):
    time.sleep({SLOW_FSYNC_S})
    try:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{{fd}}"))
    except OSError:
        name = ""
    if _hold.search(name):
        time.sleep({WAIT_S})
    _fsync(fd)
os.fsync = _slow_fsync
from batchrunner.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Kill:
    point: str
    hit: bool  # the moment came and the run was killed in it
    exit_code: int | None = None  # the run ended by itself first (then not killed)
    ok_rows: int = 0  # rows ok in the journal right after the kill
    sent: int = 0  # requests the simulator received during this run


@dataclass
class Epoch:
    """One output directory, driven by kills until a run finishes on its own."""

    number: int
    rows: int
    kills: list[Kill] = field(default_factory=list)
    snapshots: list[tuple[set[str], dict[str, int]]] = field(default_factory=list)
    finished: bool = False
    violations: list[str] = field(default_factory=list)


class CrashHarness:
    """Runs one job as a subprocess against ``sim``; kills it at chosen moments; checks it."""

    def __init__(self, workdir: Path, sim: SimulatorThread, rows: int, *, concurrency: int = 8,
                 epoch: int = 0, batch: bool = False) -> None:
        self.workdir = workdir
        self.sim = sim
        self.rows = rows
        self.batch = batch
        self.epoch = Epoch(number=epoch, rows=rows)
        self.out_dir = workdir / f"out-{epoch}"
        self.journal_dir = self.out_dir / "journal"
        self.template = f"Epoch {epoch}. Summarise: {{text}}"
        self.id_column = "custom_id" if batch else "id"
        self.ids: list[str] = [f"r{i:05d}" for i in range(rows)]
        texts = [f"row {i} about topic {i * 7 % 13}" for i in range(rows)]
        self.input = workdir / (f"in-{epoch}.jsonl" if batch else "in.csv")
        if not batch and self.input.exists():  # --keep: the rows of the run kept
            kept = pd.read_csv(self.input, dtype=str)
            self.ids, texts = list(kept["id"]), list(kept["text"])
        self.prompt_of = {k: prompt_key(self.template.format(text=t))
                          for k, t in zip(self.ids, texts, strict=True)}
        endpoint = ["--base-url", sim.base_url, "--output", str(self.out_dir),
                    "--concurrency", str(concurrency), "--progress", "none"]
        if batch:  # an OpenAI batch file, every row asking for BATCH_FORMAT's schema
            self.input.write_text("".join(json.dumps({
                "custom_id": k, "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": MODEL, "max_tokens": 200, "response_format": BATCH_FORMAT,
                         "messages": [{"role": "user", "content": self.template.format(text=t)}]},
            }) + "\n" for k, t in zip(self.ids, texts, strict=True)))
            self.args = ["run", "--input", str(self.input), *endpoint]
        else:
            if not self.input.exists():
                pd.DataFrame({"id": self.ids, "text": texts}).to_csv(self.input, index=False)
            self.args = ["run", "--input", str(self.input), "--id-column", "id",
                         "--prompt", self.template, "--model", MODEL, "--max-tokens", "48",
                         *endpoint]
        self.env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                                str(ROOT)]))}
        self.env.pop("OPENAI_BASE_URL", None)

    # -- processes

    def spawn(self, *, slow_disk: bool = False, hold: str = "") -> subprocess.Popen[bytes]:
        """The job's run; on a slow disk, the fsync of a temporary file ``hold`` matches
        waits for the kill."""
        head = ["-c", SLOW_DISK] if slow_disk else ["-m", "batchrunner"]
        return subprocess.Popen([sys.executable, *head, *self.args],
                                env={**self.env, HOLD_VARIABLE: hold},
                                cwd=self.workdir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def finish(self) -> subprocess.CompletedProcess[str]:
        """Run to the end without a kill."""
        return subprocess.run([sys.executable, "-m", "batchrunner", *self.args], env=self.env,
                              cwd=self.workdir, capture_output=True, text=True, timeout=300)

    # -- what the moments look at

    def _names(self, directory: Path) -> list[str]:
        try:
            return os.listdir(directory)
        except FileNotFoundError:
            return []

    def segments(self) -> list[str]:
        return [n for n in self._names(self.journal_dir)
                if n.startswith("seg-") and n.endswith(".parquet")]

    def _temp(self, point: str) -> bool:
        """Whether the temporary file of moment ``point`` (TEMP_FILES) is there."""
        pattern = re.compile(TEMP_FILES[point])
        where = self.journal_dir if point in ("segment-tmp", "compaction") else self.out_dir
        return any(pattern.search(n) for n in self._names(where))

    def _compacting(self) -> bool:
        if self._temp("compaction"):
            return True
        segs = self.segments()
        return len(segs) > 1 and any("-compact-" in n for n in segs)

    def ok_keys(self) -> set[str]:
        state = Journal(self.out_dir).read(columns=["status"])
        return {k for k, s in zip(state["key"].to_pylist(), state["status"].to_pylist(),
                                  strict=True) if s == "ok"}

    def journaled(self) -> int:
        """Rows with an outcome in the journal (``retrying`` records are rows to do)."""
        status = Journal(self.out_dir).read(columns=["status"])["status"]
        return sum(s != RETRYING for s in status.to_pylist())

    # -- kills

    def kill_at(self, point: str, rng: random.Random) -> Kill:
        """Start a run, kill it with SIGKILL at ``point``, record the journal and the counts."""
        if point not in POINTS:
            raise ValueError(f"unknown kill point {point!r}; known: {', '.join(POINTS)}")
        stats = self.sim.stats()
        requests0, completions0 = stats["requests"], stats["completions"]
        to_send = self.rows - self.journaled()
        segments0 = len(self.segments())
        proc = self.spawn(slow_disk=point in SLOW_DISK_POINTS, hold=TEMP_FILES.get(point, ""))

        def sim_stat(name: str) -> int:
            return int(self.sim.stats()[name])

        cond: Callable[[], bool]
        if point == "startup":
            cond = _after(rng.uniform(0.0, 0.3))
        elif point == "random-time":
            cond = _after(rng.uniform(0.0, 4.0))
        elif point == "first-request":
            cond = lambda: sim_stat("requests") > requests0  # noqa: E731
        elif point == "mid-batch":
            k = rng.randint(1, max(1, min(300, to_send - 1)))
            cond = lambda: sim_stat("completions") >= completions0 + k  # noqa: E731
        elif point == "segment-renamed":
            cond = lambda: len(self.segments()) > segments0  # noqa: E731
        elif point == "last-completion":
            cond = lambda: sim_stat("completions") >= completions0 + to_send  # noqa: E731
        elif point == "compaction":
            cond = self._compacting
        else:  # a temporary file's life: job-json-tmp, segment-tmp, results-tmp, report-tmp
            cond = lambda: self._temp(point)  # noqa: E731
        hit = _wait(proc, cond)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=30)
        kill = Kill(point=point, hit=hit and code == -signal.SIGKILL,
                    exit_code=None if code == -signal.SIGKILL else code,
                    sent=sim_stat("requests") - requests0)
        try:
            ok = self.ok_keys()
        except Exception as e:  # the journal must be readable after any kill
            self.epoch.violations.append(f"after a kill at {point}: journal unreadable: {e}")
            ok = set()
        kill.ok_rows = len(ok)
        counts = dict(self.sim.stats(per_prompt=True)["requests_by_prompt"])
        self.epoch.snapshots.append((ok, counts))
        self.epoch.kills.append(kill)
        if kill.exit_code == 0:
            self.epoch.finished = True
        elif kill.exit_code is not None:
            self.epoch.violations.append(f"a run to be killed at {point} exited "
                                         f"{kill.exit_code} by itself")
        return kill

    # -- the checks

    def check(self, final: subprocess.CompletedProcess[str] | None = None) -> list[str]:
        """Every row once, no ok row resent, report totals = result rows, journal clean."""
        v = self.epoch.violations
        if final is not None and final.returncode != 0:
            v.append(f"the last run exited {final.returncode}: {final.stderr.strip()[-500:]}")
            return v
        results = self.out_dir / "results.parquet"
        try:
            df = pd.read_parquet(results)
        except Exception as e:
            v.append(f"{results} unreadable: {type(e).__name__}: {e}")
            return v
        ids = list(df[self.id_column])
        if len(ids) != len(set(ids)):
            dup = [k for k, c in Counter(ids).items() if c > 1][:5]
            v.append(f"rows appear more than once in results: {dup}")
        if sorted(ids) != sorted(self.ids):
            missing = sorted(set(self.ids) - set(ids))[:5]
            v.append(f"results hold {len(ids)} rows, not the input's {len(self.ids)} "
                     f"(missing e.g. {missing})")
        not_ok = df[df["status"] != "ok"]
        if len(not_ok):
            v.append(f"{len(not_ok)} rows are not ok: {list(not_ok[self.id_column][:5])}")
        if self.batch:  # every row asked for one schema: its columns, filled, and recorded
            meta = json.loads((self.out_dir / "job.json").read_text())
            if (meta.get("batch_checks") or {}).get("mixed") is not False:
                v.append(f"job.json records the rows' checks as {meta.get('batch_checks')}")
            for column in ("json_topic", "json_score"):
                if column not in df.columns or df[column].isna().any():
                    v.append(f"results lack {column} for some rows")
        final_counts = self.sim.stats(per_prompt=True)["requests_by_prompt"]
        resent: set[str] = set()
        for ok_then, counts_then in self.epoch.snapshots:
            for key in ok_then:
                pk = self.prompt_of[key]
                if final_counts.get(pk, 0) != counts_then.get(pk, 0):
                    resent.add(key)
        if resent:
            v.append(f"{len(resent)} rows recorded ok at a kill were sent again: "
                     f"{sorted(resent)[:5]}")
        report = json.loads((self.out_dir / "cost_report.json").read_text())
        cost_sum = float(df["cost_usd"].sum())
        if abs(report["cost_usd"] - cost_sum) > 1e-9 * max(1.0, cost_sum):
            v.append(f"cost report says ${report['cost_usd']}, the rows sum to ${cost_sum}")
        for name, column in (("prompt", "prompt_tokens"), ("completion", "completion_tokens"),
                             ("total", "total_tokens")):
            if report["tokens"][name] != int(df[column].sum()):
                v.append(f"cost report {name} tokens {report['tokens'][name]} != the rows' "
                         f"{int(df[column].sum())}")
        if report["rows"]["total"] != self.rows:
            v.append(f"cost report counts {report['rows']['total']} rows, not {self.rows}")
        leftovers = [n for n in self._names(self.journal_dir) if ".tmp" in n]
        if leftovers:
            v.append(f"temp files left in journal/: {leftovers}")
        if len(self.segments()) != 1:
            v.append(f"{len(self.segments())} segments left after the last run, not 1")
        return v

    def out_dir_leftovers(self) -> list[str]:
        """Temp files the writers left in OUT_DIR (not journal/)."""
        return sorted(n for n in self._names(self.out_dir) if n.startswith(".") and ".tmp" in n)


def _after(seconds: float) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


def _wait(proc: subprocess.Popen[bytes], cond: Callable[[], bool]) -> bool:
    """Poll ``cond`` until it holds (True), or the process ends or WAIT_S pass (False)."""
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(POLL_S)
    return False


# ----------------------------------------------------------------------------------------------
# The soak


def soak(kills: int, rows: int, seed: int, workdir: Path, *, batch: bool = False) -> int:
    rng = random.Random(seed)
    points, weights = list(POINTS), list(POINTS.values())
    config = SimulatorConfig(latency_ms=40, jitter_ms=60, reply_tokens_mean=30, seed=seed)
    started = time.monotonic()
    epochs: list[CrashHarness] = []
    violations: list[str] = []
    with SimulatorThread(config) as sim:
        harness = CrashHarness(workdir, sim, rows, concurrency=8, epoch=0, batch=batch)
        epochs.append(harness)
        idle = 0  # kills in a row with every row already journaled
        for i in range(kills):
            if idle >= MAX_IDLE_KILLS:
                # Enough kills at the start and end of runs with nothing to send: finish the
                # epoch unkilled, check it, and start the next one with rows to send.
                final = harness.finish()
                violations += [f"epoch {harness.epoch.number}: {x}"
                               for x in harness.check(final)]
                print(f"          epoch {harness.epoch.number}  finished by an unkilled run "
                      f"(exit {final.returncode})", flush=True)
                harness = CrashHarness(workdir, sim, rows, concurrency=8,
                                       epoch=harness.epoch.number + 1, batch=batch)
                epochs.append(harness)
                idle = 0
            point = rng.choices(points, weights)[0]
            if harness.journaled() >= rows:
                # Nothing left to send: only the start and the end of a run remain to hit, and
                # compaction only while there is more than one segment.
                idle += 1
                left = set(points) - SENDING_POINTS
                if len(harness.segments()) <= 1:
                    left.discard("compaction")
                if point not in left:
                    point = rng.choice(sorted(left))
            k = harness.kill_at(point, rng)
            state = ("killed" if k.hit else
                     f"exited {k.exit_code}" if k.exit_code is not None else "killed late")
            print(f"kill {i + 1:3d}  epoch {harness.epoch.number}  {point:<16} {state:<10} "
                  f"{k.ok_rows:6,} rows ok in the journal, {k.sent:5,} requests this run",
                  flush=True)
            if harness.epoch.finished:
                violations += [f"epoch {harness.epoch.number}: {x}" for x in harness.check()]
                harness = CrashHarness(workdir, sim, rows, concurrency=8,
                                       epoch=harness.epoch.number + 1, batch=batch)
                epochs.append(harness)
                idle = 0
        final = harness.finish()
        violations += [f"epoch {harness.epoch.number}: {x}" for x in harness.check(final)]
        requests = sim.stats()["requests"]
    wall = time.monotonic() - started

    all_kills = [k for h in epochs for k in h.epoch.kills]
    print("\n== crash soak summary")
    print(f"seed {seed}; {kills} kills over {len(epochs)} epoch(s) of {rows:,} rows; "
          f"wall {wall:,.0f} s")
    print("| moment | tried | killed in it | ended first |")
    print("| --- | --- | --- | --- |")
    for point in POINTS:
        ks = [k for k in all_kills if k.point == point]
        if ks:
            print(f"| {point} | {len(ks)} | {sum(k.hit for k in ks)} | "
                  f"{sum(k.exit_code is not None for k in ks)} |")
    finished_rows = len(epochs) * rows
    print(f"requests sent {requests:,} for {finished_rows:,} rows "
          f"({requests / finished_rows:.3f} a row; rows in flight or not yet journaled at a "
          "kill are sent again)")
    leftovers = sorted({n for h in epochs for n in h.out_dir_leftovers()})
    if leftovers:
        print(f"note: temp files left in OUT_DIR by killed writers: {len(leftovers)} "
              f"(e.g. {', '.join(leftovers[:3])})")
    if violations:
        print(f"FAIL: {len(violations)} violation(s)")
        for x in violations:
            print(f"  {x}")
        return 1
    print("PASS: every row exactly once, no ok row sent again, report totals = result rows")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs in all (default 50)")
    parser.add_argument("--rows", type=int, default=2000, help="rows an epoch (default 2,000)")
    parser.add_argument("--seed", type=int, default=20240605, help="seeds the kill moments")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    parser.add_argument("--batch", action="store_true",
                        help="an OpenAI batch file whose rows ask for a JSON schema, not a CSV")
    ns = parser.parse_args(argv)
    if ns.kills < 0 or ns.rows < 2:
        parser.error("--kills must be >= 0 and --rows >= 2")
    if ns.keep:
        workdir = Path(ns.keep)
        workdir.mkdir(parents=True, exist_ok=True)
        return soak(ns.kills, ns.rows, ns.seed, workdir, batch=ns.batch)
    with tempfile.TemporaryDirectory(prefix="crash-soak-") as tmp:
        return soak(ns.kills, ns.rows, ns.seed, Path(tmp), batch=ns.batch)


if __name__ == "__main__":
    sys.exit(main())
