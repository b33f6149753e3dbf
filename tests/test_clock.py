"""The wall clock set back between runs (an NTP step, a machine whose clock ran ahead): the
journal's newest record of a row is still the one the latest run wrote."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from batchrunner.cli import main
from batchrunner.journal import Journal


def test_answers_of_a_rerun_after_the_clock_was_set_back_are_the_rows_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows cut at a small max_tokens are sent again with a larger one, after the clock was
    set back an hour (last night's run ran with it an hour ahead): the journal took the newest
    record by its finished_at, so the earlier, cut answers won, the new ones were paid for
    and dropped, and the run's warning asked for the same rerun again. The rerun's records now
    finish after every record the journal holds, and its answers are the rows' answers."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text(
        "id,text\n" + "".join(f"r{i},text {i}\n" for i in range(12)))
    args = ["run", "--input", "in.csv", "--id-column", "id", "--prompt", "X {text}",
            "--model", "gpt-4o-mini", "--simulator", "--progress", "none", "--output", "out"]
    assert main([*args, "--max-tokens", "5"]) == 0
    first = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert (first["finish_reason"] == "length").all()
    newest = max(first["finished_at"])
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() - 3600.0)
    assert main([*args, "--max-tokens", "60", "--force",
                 "--rerun-where", "finish_reason == 'length'"]) == 0
    again = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert (again["completion_tokens"] > 5).all(), again["completion_tokens"].tolist()
    assert (again["finished_at"] > newest).all()
    latest = Journal(tmp_path / "out").read(["completion_tokens"])
    assert min(latest["completion_tokens"].to_pylist()) > 5
