"""A first try on a big input: what a --limit run reads of it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from batchrunner import io as bio
from batchrunner.config import load_job
from batchrunner.estimate import estimate
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, prepare, run_job
from batchrunner.simulator import Simulator, SimulatorConfig

FAST = RunOptions(retry=RetryPolicy(base_s=0.0, max_attempts=4), progress="none",
                  handle_signals=False)
KEY = "sk-test-0123456789abcdef"
ROWS = 5 * bio.DEFAULT_BATCH_SIZE

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def write_input(path: Path) -> Path:
    """ROWS rows: an id, the prompt's text and a column no request uses."""
    n = ROWS
    table = pa.table({"id": [f"t{i:06d}" for i in range(n)],
                      "text": [f"ticket {i} says the parcel came late" for i in range(n)],
                      "region": ["north"] * n})
    if path.suffix == ".csv":
        pa_csv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return path


class Reads:
    """The rows each pass over the input read, by the columns it asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.passes: list[tuple[tuple[str, ...] | None, list[int]]] = []
        batches = bio.InputSource.batches

        def counted(source: bio.InputSource, columns: Sequence[str] | None = None
                    ) -> Iterator[pa.RecordBatch]:
            read = [0]
            self.passes.append((None if columns is None else tuple(columns), read))
            inner = batches(source, columns)

            def rows() -> Iterator[pa.RecordBatch]:
                try:
                    for batch in inner:
                        read[0] += batch.num_rows
                        yield batch
                finally:
                    inner.close()
            return rows()

        monkeypatch.setattr(bio.InputSource, "batches", counted)

    def of_prompt(self) -> int:
        """Rows of the prompt's column read, but by the pass over every column that writes the
        results."""
        return sum(n[0] for columns, n in self.passes
                   if columns is not None and "text" in columns and "region" not in columns)


@pytest.mark.anyio
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
@pytest.mark.parametrize("id_column", ["id", None])
async def test_a_limited_run_reads_the_rows_it_sends_not_the_whole_input(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str,
        id_column: str | None) -> None:
    """--limit 20 over a big input reads the prompt's column as far as its 20 rows (a batch),
    not through: time in proportion to the rows tried; the rerun with it sends the next 20."""
    inp = write_input(tmp_path / f"in{suffix}")
    reads = Reads(monkeypatch)
    options = replace(FAST, limit=20)
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "id_column": id_column,
                              "prompt": "Classify: {text}", "model": "gpt-4o-mini",
                              "max_tokens": 8, "base_url": sim.base_url,
                              "output": str(tmp_path / "out"), "concurrency": 4})
        for run in (1, 2):
            reads.passes.clear()
            summary = await run_job(job, options)
            assert (summary.ok, summary.sent, summary.limited) == (20 * run, 20, ROWS - 20 * run)
            assert summary.exit_code == 0
            assert 0 < reads.of_prompt() <= bio.DEFAULT_BATCH_SIZE, reads.passes
            # The results hold the rows up to the last one done: the input is read no further,
            # there and (Parquet) where those rows' every column is read before sending.
            whole = [n[0] for columns, n in reads.passes if columns is None]
            assert len(whole) == (2 if suffix == ".parquet" else 1), reads.passes
            assert all(0 < n <= bio.DEFAULT_BATCH_SIZE for n in whole), reads.passes
            # The ids (when rows have them) are read through, and checked unique, as the
            # rerun that maps the journal's rows to the input's needs them.
            if id_column is not None:
                assert ((("id",), [ROWS]) in reads.passes), reads.passes
        reads.passes.clear()
        assert estimate(prepare(job, options)).to_send == 20
        assert 0 < reads.of_prompt() <= bio.DEFAULT_BATCH_SIZE, reads.passes
    done = pq.read_table(tmp_path / "out" / "results.parquet", columns=["text", "status"])
    assert done["text"].to_pylist() == [f"ticket {i} says the parcel came late"
                                        for i in range(40)]
    assert done["status"].to_pylist() == ["ok"] * 40


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_limited_runs_results_end_at_its_last_row_done_and_report_keeps_them_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        fmt: str) -> None:
    """A --limit run over a big input writes the rows up to the last one done, not a copy of
    the whole input; `report` rebuilds the same file and counts the rows left as the run did."""
    from batchrunner.cli import main

    inp = write_input(tmp_path / "in.csv")
    args = ["run", "--input", str(inp), "--id-column", "id", "--prompt", "Classify: {text}",
            "--model", "gpt-4o-mini", "--max-tokens", "8", "--simulator", "--output",
            str(tmp_path / "out"), "--progress", "none", "--format", fmt]
    assert main([*args, "--limit", "5"]) == 0
    assert main([*args, "--limit", "20"]) == 0
    shown = capsys.readouterr().out
    assert f"--limit 20 left {ROWS - 25:,} rows to do" in shown

    def results() -> list[tuple[str, str | None]]:
        path = tmp_path / "out" / f"results.{fmt}"
        table = (pq.read_table(path) if fmt == "parquet"
                 else pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
                     column_types={"status": pa.string()}, strings_can_be_null=True)))
        return list(zip(table["id"].to_pylist(), table["status"].to_pylist(), strict=True))

    assert results() == [(f"t{i:06d}", "ok") for i in range(25)]
    assert main(["report", str(tmp_path / "out")]) == 0
    assert f"--limit 20 left {ROWS - 25:,} rows to do" in capsys.readouterr().out
    assert results() == [(f"t{i:06d}", "ok") for i in range(25)]


@pytest.mark.anyio
async def test_a_limited_run_still_refuses_repeated_ids(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids are checked unique through the whole input, past the rows a --limit run sends:
    a rerun maps the journal's rows to the input's by them."""
    from batchrunner.errors import InputError

    inp = write_input(tmp_path / "in.parquet")
    table = pq.read_table(inp)
    ids = table["id"].to_pylist()
    ids[ROWS - 1] = ids[3]
    pq.write_table(table.set_column(0, "id", pa.array(ids)), inp)
    job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "Classify: {text}",
                          "model": "gpt-4o-mini", "simulator": True,
                          "output": str(tmp_path / "out")})
    with pytest.raises(InputError, match=f"rows 4 and {ROWS:,}|rows 4 and {ROWS}"):
        prepare(job, replace(FAST, limit=20))


@pytest.mark.anyio
async def test_a_jsonl_run_parses_its_text_once_before_sending(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JSONL file's records are all parsed and checked when it is opened: the ids' check reads
    the ids alone, not the prompt's column again (one pass fewer of its text)."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(f'{{"id": "t{i}", "text": "ticket {i}", "region": "north"}}\n'
                           for i in range(50)))
    reads = Reads(monkeypatch)
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "id_column": "id",
                              "prompt": "Classify: {text}", "model": "gpt-4o-mini",
                              "max_tokens": 8, "base_url": sim.base_url,
                              "output": str(tmp_path / "out"), "concurrency": 4})
        summary = await run_job(job, FAST)
    assert summary.ok == 50
    assert reads.of_prompt() == 50, reads.passes  # the rows sent, read once
    assert (("id",), [50]) in reads.passes
