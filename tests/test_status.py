"""``batchrunner status``: its figures are the reports' figures, from the same journal."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from batchrunner.cli import main
from batchrunner.journal import Journal, outcomes_table, write_segment
from batchrunner.records import RETRYING, Outcome
from batchrunner.report import format_usd
from batchrunner.status import format_status


def simulated_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int) -> Path:
    """A job of ``rows`` rows (keys r0, r1, ...) run against the built-in simulator."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text(
        "id,text\n" + "".join(f"r{i},text {i}\n" for i in range(rows)))
    assert main(["run", "--input", "in.csv", "--id-column", "id", "--prompt", "X {text}",
                 "--model", "gpt-4o-mini", "--simulator", "--progress", "none", "--output",
                 "out"]) == 0
    return tmp_path / "out"


def status_cost(out: Path) -> tuple[str, str]:
    """The cost and the earlier attempts' cost status shows."""
    line = next(x for x in format_status(out).splitlines() if "cost so far" in x)
    m = re.search(r"cost so far (\S+)(?: \(plus (\S+) for earlier attempts)?", line)
    assert m, line
    return m[1], m[2] or format_usd(0.0)


@pytest.mark.parametrize("costs", [
    [float("inf"), 0.25],  # a cost past what a float holds, as a job's absurd price gives it
    [1e308, 1e308, 0.25],  # costs whose sum is past it
], ids=["infinite", "overflowing"])
def test_status_shows_the_cost_the_report_shows_whatever_the_costs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, costs: list[float]) -> None:
    """status summed the costs one way (math.fsum, the non-finite left out) and the reports
    another (exact sums, a non-finite cost making the figure 0): on such a journal status said
    another cost than the report, or stopped with an OverflowError. Both now sum alike."""
    out = simulated_job(tmp_path, monkeypatch, 4)
    later = time.time() + 1
    write_segment(Journal(out).directory, "seg-29990101T000000-ffffff-w0-000000.parquet",
                  outcomes_table([
                      *(Outcome(key=f"r{i}", status="ok", content="again", cost_usd=c,
                                earlier_cost_usd=c, prompt_tokens=1, completion_tokens=1,
                                total_tokens=2, model="gpt-4o-mini", finished_at=later)
                        for i, c in enumerate(costs)),
                      Outcome(key="r3", status=RETRYING, earlier_cost_usd=0.5,
                              finished_at=later)]))
    shown = status_cost(out)
    assert main(["report", "out"]) == 0
    report = json.loads((out / "cost_report.json").read_text())
    assert shown == (format_usd(report["cost_usd"]),
                     format_usd(report["cost_earlier_attempts_usd"]))
    assert status_cost(out) == shown  # the compacted journal says the same
    tokens = re.search(r"tokens ([\d,]+);", format_status(out))
    assert tokens and int(tokens[1].replace(",", "")) == report["tokens"]["total"]
