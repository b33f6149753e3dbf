"""The samples the README points at run as it says: the demo job, the batch file whose rows ask
for a schema (their fields spread into json_ columns), and the Makefile's first step."""

from __future__ import annotations

import shutil
import subprocess
import sys
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


# What make finds as python3 on a machine whose Python is 3.10 (Ubuntu 22.04's): this
# interpreter, with the version 3.10 has; nothing else (a venv, a pip) is made of it.
OLD_PYTHON = f"""#!/bin/sh
if [ "$1" = "--version" ]; then echo "Python 3.10.12"; exit 0; fi
if [ "$1" = "-c" ]; then
    exec {sys.executable} -c "import sys; sys.version_info = (3, 10, 12); $2"
fi
echo "a Python 3.10 would have made a .venv here (asked: $*)" >&2; exit 1
"""


def make(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_with_a_python_too_old_says_which_to_name_and_makes_no_venv(tmp_path: Path) -> None:
    """README: it needs Python 3.11 or later as python3, else name one (make demo PY=...). An
    older python3 made a .venv that every later make used, PY named or not, each failing in
    pip's words; make now says what to name before it makes anything, and a .venv an older
    Python made says to make clean first."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    old = tmp_path / "python3.10"
    old.write_text(OLD_PYTHON)
    old.chmod(0o755)

    done = make(tmp_path, "demo", f"PY={old}")
    assert done.returncode != 0
    assert (f"batchrunner needs Python 3.11 or later, and {old} is Python 3.10.12: name one "
            "that is, as in make demo PY=python3.12") in done.stderr
    assert not (tmp_path / ".venv").exists()

    done = make(tmp_path, "test", "PY=python3.99-not-installed")
    assert done.returncode != 0
    assert "and python3.99-not-installed is not found: name one that is" in done.stderr

    # A .venv an older Python made (before this check, or by hand): no install into it.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(old, tmp_path / ".venv" / "bin" / "python")
    done = make(tmp_path, "demo", f"PY={sys.executable}")
    assert done.returncode != 0
    assert (".venv was made with Python 3.10.12, and batchrunner needs Python 3.11 or later: "
            "make clean, then make demo PY=python3.12 (say)") in done.stderr
    assert not (tmp_path / ".venv" / ".installed").exists()
