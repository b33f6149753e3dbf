"""``batchrunner run``, ``report`` and ``status`` never import pandas (about 0.2 s of CPU and
35 MB): pyarrow imports it for many conversions of Python and numpy values, so a conversion
slipping back into the product code shows here. Nor ``pyarrow.compute`` (35–40 ms): pyarrow's
``Array.take``, ``Table.filter``, ``.cast`` and the like import it, where ``batchrunner.compute``
does not. Nor ``numpy.ma`` (7 ms), which ``np.unique`` imports on its first call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from batchrunner.simulator import SimulatorConfig, SimulatorThread

# Runs each command line (a JSON list of argument lists) through the CLI in this one process
# and stops at the first after which pandas, pyarrow.compute or numpy.ma is loaded, naming it.
# numpy 1 (1.23, the oldest allowed) imports numpy.ma with itself, which the product imports
# anyway: a module ``import numpy`` alone loads is no call of the product's, and is not watched.
_RUNNER = """
import json, sys
import numpy
watched = [m for m in ("pandas", "pyarrow.compute", "numpy.ma") if m not in sys.modules]
from batchrunner.cli import main
for args in json.loads(sys.argv[1]):
    code = main(args)
    for module in watched:
        if module in sys.modules:
            print(module + " imported by: " + " ".join(args))
            sys.exit(99)
    print("exit", code, " ".join(args[:1]))
"""


def _inputs(tmp_path: Path) -> dict[str, Path]:
    """The same 12 rows as CSV, Parquet and JSONL; rows 3 and 8 fail (a 404 every time)."""
    rows = [{"id": f"r{i:02d}", "text": f"row {i}" + (" [[sim:404]]" if i in (3, 8) else "")}
            for i in range(12)]
    csv = tmp_path / "in.csv"
    csv.write_text("id,text\n" + "".join(f"{r['id']},{r['text']}\n" for r in rows))
    parquet = tmp_path / "in.parquet"  # its text column dictionary-encoded, as pandas writes
    table = pa.Table.from_pylist(rows)  # a category column
    pq.write_table(table.set_column(1, "text", table["text"].dictionary_encode()), parquet)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return {"csv": csv, "parquet": parquet, "jsonl": jsonl}


def test_run_report_and_status_never_import_pandas_or_pyarrow_compute(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["label"], "properties": {
        "label": {"type": "string"}, "score": {"type": "number"}, "n": {"type": "integer"},
        "flag": {"type": "boolean"}}}))
    with SimulatorThread(SimulatorConfig()) as sim:
        def run(inp: Path, out: str, *extra: str) -> list[str]:
            return ["run", "--input", str(inp), "--prompt", "Classify: {text}",
                    "--model", "gpt-4o-mini", "--base-url", sim.base_url, "--output",
                    str(tmp_path / out), "--progress", "none", *extra]

        commands = [
            run(inputs["csv"], "a"),  # fresh: results and reports with failed rows
            run(inputs["csv"], "a"),  # resumed: nothing to send
            run(inputs["csv"], "a", "--retry-failed"),
            run(inputs["parquet"], "b", "--id-column", "id", "--format", "csv"),
            run(inputs["parquet"], "b", "--id-column", "id", "--format", "csv",
                "--retry-failed"),
            run(inputs["jsonl"], "c", "--format", "jsonl"),
            run(inputs["jsonl"], "c", "--format", "jsonl"),
            run(inputs["csv"], "d", "--schema-file", str(schema)),  # typed json_* columns
            run(inputs["csv"], "d", "--schema-file", str(schema), "--dry-run"),
            ["report", str(tmp_path / "a")],
            ["status", str(tmp_path / "a")],
            ["report", str(tmp_path / "b")],
            ["status", str(tmp_path / "c")],
        ]
        env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
        done = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(commands)], env=env,
                              capture_output=True, text=True, timeout=120)
        sent = sim.stats()["requests"]
    assert done.returncode == 0, done.stdout + done.stderr
    # Every command ran to its end: failed rows (exit 3), then report and status.
    assert done.stdout.count("exit 3 run") == 8 and "exit 0 status" in done.stdout, done.stdout
    assert sent == 12 * 4 + 2 * 2  # four fresh runs, two retries of the two failed rows
    assert pq.read_schema(tmp_path / "d" / "results.parquet").field("json_n").type == pa.int64()
    for name, fmt in (("a", "parquet"), ("b", "csv"), ("c", "jsonl"), ("d", "parquet")):
        assert (tmp_path / name / f"results.{fmt}").is_file()
        report = json.loads((tmp_path / name / "cost_report.json").read_text())
        assert report["rows"]["by_status"] == {"ok": 10, "failed": 2}


_JOURNAL = """
import sys, tempfile
from pathlib import Path
import pyarrow as pa
from batchrunner.journal import Journal, JournalWriter
from batchrunner.records import Outcome

class NoPositions:  # every key is one the input lacks
    tag, rows = "none", 0
    def positions(self, keys):
        return pa.nulls(len(keys), pa.int64())

j = Journal(Path(tempfile.mkdtemp()))
j.create()
runs = [[Outcome(key="a", status="ok", cost_usd=1.0, finished_at=1)],
        [Outcome(key="a", status="failed", cost_usd=0.5, earlier_cost_usd=1.0, finished_at=2)]]
for i, records in enumerate(runs):
    w = JournalWriter(j.directory, f"2026010{i + 1}T000000-aaaaaa")
    for o in records:
        w.add(o)
    w.flush()
assert j.read()["earlier_cost_usd"].to_pylist() == [0.5]  # status reads this way
latest = j.latest(NoPositions(), cost=True)
assert latest.others["cost"].to_pylist() == [1.5]
assert latest.prior_cost() == 0.0  # the input's rows only: it has none
j.compact("run3", NoPositions())
print("pandas" in sys.modules, "pyarrow.compute" in sys.modules)
"""


def test_carrying_a_rows_cost_over_its_records_needs_no_pandas_or_pyarrow_compute() -> None:
    # The in-memory merge (status) and the index of keys the input lacks (compaction) each
    # find a row's largest carried cost; Table.group_by would import pandas.
    done = subprocess.run([sys.executable, "-c", _JOURNAL], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False"


def test_status_imports_neither_the_runner_nor_the_http_client(tmp_path: Path) -> None:
    """``status``, run every few minutes beside a night's run, spent 0.3 s of each call
    importing the runner and aiohttp, which it does not use."""
    out = tmp_path / "out"
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\na,one\nb,two\n")
    with SimulatorThread(SimulatorConfig()) as sim:
        done = subprocess.run(
            [sys.executable, "-m", "batchrunner", "run", "--input", str(inp), "--prompt",
             "{text}", "--model", "gpt-4o-mini", "--base-url", sim.base_url, "--output",
             str(out), "--progress", "none"],
            env={**os.environ, "OPENAI_API_KEY": "sk-test"}, capture_output=True, text=True,
            timeout=120)
    assert done.returncode == 0, done.stderr
    check = ("import sys\nfrom batchrunner.cli import main\ncode = main(['status', sys.argv[1]])\n"
             "print(code, *(m in sys.modules for m in ('aiohttp', 'batchrunner.runner', "
             "'batchrunner.client')))")
    done = subprocess.run([sys.executable, "-c", check, str(out)], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.splitlines()[-1] == "0 False False False", done.stdout + done.stderr


def test_a_pandas_datetime_column_in_a_prompt_needs_no_pandas(tmp_path: Path) -> None:
    """pandas writes its datetimes to Parquet as timestamp[ns], which pyarrow turns into pandas
    Timestamps: a prompt naming such a column (``Ordered on {ordered_at}``) imported pandas
    for every run, as did one naming times with a zone to the second, milli- or microsecond.
    Their text is made without it (the same text: see test_io's
    test_pandas_datetimes_read_in_a_prompt_as_before and
    test_zoned_times_to_the_microsecond_read_in_a_prompt_as_pyarrow_makes_them)."""
    ns = [1704110400123456789, 1706745600000000000, -500_000_000, None]
    table = pa.table({"id": ["a", "b", "c", "d"],
                      "ordered_at": pa.array(ns, pa.int64()).cast(pa.timestamp("ns")),
                      "shipped_at": pa.array(ns, pa.int64()).cast(
                          pa.timestamp("ns", tz="Europe/Paris")),
                      # Zoned times to the milli- and microsecond, and the second: pyarrow
                      # imports pandas to make each a Python datetime.
                      "paid_at": pa.array([v and v // 10**6 for v in ns], pa.int64()).cast(
                          pa.timestamp("ms", tz="America/New_York")),
                      "seen_at": pa.array([v and v // 1000 for v in ns], pa.int64()).cast(
                          pa.timestamp("us", tz="+05:30")),
                      "due_at": pa.array([v and v // 10**9 for v in ns], pa.int64()).cast(
                          pa.timestamp("s", tz="UTC"))})
    pq.write_table(table, tmp_path / "in.parquet")
    with SimulatorThread(SimulatorConfig()) as sim:
        commands = [["run", "--input", str(tmp_path / "in.parquet"), "--id-column", "id",
                     "--prompt", "Ordered on {ordered_at}, shipped on {shipped_at}, paid on "
                     "{paid_at}, seen on {seen_at}, due on {due_at}",
                     "--model", "gpt-4o-mini",
                     "--base-url", sim.base_url, "--output", str(tmp_path / "out"),
                     "--progress", "none"]]
        # And its results as JSONL, whose times are written by their text.
        commands.append([*commands[0][:-4], "--output", str(tmp_path / "jsonl"), "--format",
                         "jsonl", "--progress", "none"])
        done = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(commands)],
                              env={**os.environ, "OPENAI_API_KEY": "sk-test"},
                              capture_output=True, text=True, timeout=120)
        sent = sim.stats()["requests"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("exit 3 run") == 2
    assert sent == 6  # the row without a time is not sent
