"""The samples the README points at run as it says: the demo job, and the batch file whose rows
ask for a schema (their fields spread into json_ columns)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from batchrunner import cli

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-test-samples-0123456789"

pytestmark = pytest.mark.usefixtures("job_env")  # no .env of the machine, tmp_path as cwd


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli.main(["run", *argv, "--progress", "none"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_the_demo_job_runs_against_the_simulator(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, str(REPO / "jobs" / "demo.toml"), "--output", str(tmp_path / "demo"))
    assert "240 rows: 240 ok, 0 failed" in out
    df = pd.read_parquet(tmp_path / "demo" / "results.parquet")
    assert len(df) == 240 and df["sku"].is_unique and df["content"].notna().all()


def test_the_batch_sample_gets_its_schemas_columns(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--input", str(REPO / "sample_data" / "reviews_batch.jsonl"),
              "--simulator", "--output", str(tmp_path / "reviews"))
    assert "8 rows: 8 ok, 0 failed" in out
    df = pd.read_parquet(tmp_path / "reviews" / "results.parquet")
    assert df["custom_id"].tolist() == [f"review-{i:03d}" for i in range(1, 9)]
    assert set(df["json_sentiment"]) <= {"positive", "negative", "mixed"}
    assert df["json_summary"].notna().all() and df["json_topics"].str.startswith("[").all()
