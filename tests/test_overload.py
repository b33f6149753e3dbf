"""How many requests a job keeps in flight when the server cannot take them all: a GPU server
that queues what its batch cannot hold, a server that answers every request with an error.
Each test runs a job in-process against the simulator on 127.0.0.1 at a random port."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrunner import runner
from batchrunner.progress import Counts, LogProgress, Progress, _postfix
from batchrunner.simulator import Simulator, SimulatorConfig
from tests.test_faults import job_for, make_csv, results, run

KEY = "sk-test-overload-5e7a91"

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def log_lines_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's progress as log lines, one every half second (30 s in a real run)."""
    def make(desc: str, mode: str = "auto") -> Progress:
        return LogProgress(desc, every_s=0.5)
    monkeypatch.setattr(runner, "make_progress", make)


@pytest.mark.anyio
async def test_requests_queued_past_the_timeout_lower_the_concurrency(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A GPU server (vLLM) runs one batch at a time and queues the rest, the wait counted in
    timeout_s. With answers taking over half the timeout, every request queued behind a batch
    timed out, was sent again and queued again: 60 rows at concurrency 16 against a batch of 4
    took some 148 requests, and rows failed after their attempts. A request that times out
    while others are answered now lowers the concurrency (the progress says so), and the job
    sends few more requests than rows."""
    log_lines_often(monkeypatch)
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(60)])
    async with Simulator(SimulatorConfig(max_running=4, latency_ms=250)) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, concurrency=16, timeout_s=0.4))
        stats = sim.stats()
    assert s.exit_code == 0 and s.ok == 60
    assert results(tmp_path)["status"].eq("ok").all()
    assert stats["requests"] == s.sent < 100
    err = capsys.readouterr().err
    assert "(concurrency lowered to " in err and " from 16: " in err
    assert "queued past the timeout while others were answered" in err


def test_the_progress_says_why_the_concurrency_was_lowered() -> None:
    line = _postfix(Counts(concurrency=31, concurrency_from=64,
                           concurrency_why="33 requests were queued past the timeout"))
    assert "(concurrency lowered to 31 from 64: 33 requests were queued past the timeout)" in line
    assert "concurrency" not in _postfix(Counts())
