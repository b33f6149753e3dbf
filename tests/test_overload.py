"""How many requests a job keeps in flight when the server cannot take them all: a GPU server
that queues what its batch cannot hold, a server that answers every request with an error.
Each test runs a job in-process against the simulator (or a small server of its own) on
127.0.0.1 at a random port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pandas as pd
import pytest
from aiohttp import web

from batchrunner import runner
from batchrunner.config import load_job
from batchrunner.progress import Counts, LogProgress, Progress, _postfix
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, run_job
from batchrunner.simulator import Simulator, SimulatorConfig
from tests.servers import serve_on_loopback
from tests.test_faults import RUN_LIMIT_S, job_for, make_csv, results, run
from tests.test_ratelimit_headers import completion

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
    assert "timed out while others were answered: the server queues what it cannot" in err


@pytest.mark.anyio
async def test_a_model_slower_than_the_timeout_leaves_the_concurrency_to_the_others(
        tmp_path: Path) -> None:
    """A job whose rows ask two models, one of which answers past timeout_s (a reasoning
    model thinking long) while the other answers at once: each timeout came while the other
    model's requests were answered, was taken for a queue at one server, and lowered the
    concurrency, down to 1 for every model (150 rows answered in 7 ms each, beside 150 timing
    out, took over 5 minutes). Only the model's own answers tell its requests queued now: the
    fast model's rows go on at the job's concurrency."""
    out = {"now": 0, "late": 0, "answered": 0}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        if body["model"] == "slow":
            await asyncio.sleep(1.0)  # past timeout_s
        out["now"] += 1
        try:
            if out["answered"] >= 60:  # how many are out once the slow rows have timed out
                out["late"] = max(out["late"], out["now"])
            await asyncio.sleep(0.05)
        finally:
            out["now"] -= 1
        out["answered"] += 1
        return web.json_response(completion(body))

    rows = 160  # every 4th asks the slow model
    inp = tmp_path / "models.csv"
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(rows)],
                  "model": ["slow" if i % 4 == 0 else "fast" for i in range(rows)],
                  "text": [f"row {i}" for i in range(rows)]}).to_csv(inp, index=False)
    server, port = await serve_on_loopback(handler)
    try:
        job = load_job(None, {
            "input": str(inp), "id_column": "id", "prompt": "Q: {text}", "model_column": "model",
            "base_url": f"http://127.0.0.1:{port}/v1", "output": str(tmp_path / "out"),
            "concurrency": 8, "timeout_s": 0.3})
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job, backoff_of(0.01, 1))
    finally:
        await server.cleanup()
    assert (s.ok, s.failed, s.error_types) == (120, 40, {"timeout": 40})
    assert out["late"] >= 4, out  # 1 as it was


def test_the_progress_says_why_the_concurrency_was_lowered() -> None:
    line = _postfix(Counts(concurrency=31, concurrency_from=64,
                           concurrency_why="33 requests were queued past the timeout"))
    assert "(concurrency lowered to 31 from 64: 33 requests were queued past the timeout)" in line
    assert "concurrency" not in _postfix(Counts())
    line = _postfix(Counts(rows_out=40, server_errors=8))
    assert ("(8 server errors in a row, no row ok since: a new row starts only as one of the 40 "
            "started finishes)") in line


def backoff_of(base_s: float, max_attempts: int) -> RunOptions:
    return RunOptions(retry=RetryPolicy(base_s=base_s, max_attempts=max_attempts),
                      progress="none", handle_signals=False)


@pytest.mark.anyio
async def test_a_server_failing_every_request_is_not_sent_new_rows_faster_than_rows_fail(
        tmp_path: Path) -> None:
    """A server that answers 500 to everything (vLLM's engine dead, a proxy whose upstream is
    gone): every worker started new rows while those started backed off, so that some 300 of
    1,000 rows were touched, each to be tried up to max_attempts times, in some 1,100 to 1,600
    requests before the first 20 rows had failed and the job stopped. Once the server errors
    come in a row with no row ok, a new row starts only as one of those started finishes:
    the stop, saying what it said, comes after few rows and requests."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(1000)])
    async with Simulator(SimulatorConfig(faults={"500": 1.0})) as sim:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, sim.base_url, inp, concurrency=64),
                              backoff_of(0.05, 6))
        stats = sim.stats(per_prompt=True)
    assert s.exit_code == 4 and s.stopped and s.ok == 0
    assert s.stopped.startswith("the first 20 rows to finish all failed with http_500 and none "
                                "succeeded")
    assert "wait for the endpoint to recover" in s.stopped
    assert len(stats["requests_by_prompt"]) < 120  # rows touched
    assert stats["requests"] == s.sent < 600


@pytest.mark.anyio
@pytest.mark.parametrize("concurrency", [1, 8])
async def test_rows_a_server_fails_for_themselves_fail_after_their_attempts_the_rest_go_on(
        tmp_path: Path, concurrency: int) -> None:
    """Two rows side by side that the server answers 500 every time (twice as many errors in
    a row as the rule above counts, at concurrency 1) fail after max_attempts as ever; every
    other row is answered."""
    texts = [f"ticket {i}" for i in range(40)]
    texts[3] = texts[4] = "crashes the model [[sim:500]]"
    inp = make_csv(tmp_path / "in.csv", texts)
    async with Simulator(SimulatorConfig()) as sim:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, sim.base_url, inp, concurrency=concurrency),
                              backoff_of(0.001, 6))
    df = results(tmp_path)
    assert s.exit_code == 3 and s.ok == 38 and s.failed == 2
    assert list(df.loc[["r0003", "r0004"], "attempts"]) == [6, 6]
    assert set(df.loc[["r0003", "r0004"], "error_type"]) == {"http_500"}
