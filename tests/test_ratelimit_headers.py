"""Rate-limit headers as providers and gateways send them, and the pacing made of them.

Unit tests of ``Limiter.observe`` and the client's header reading, and runs against small
servers on 127.0.0.1 that send the headers chosen here. No wall-clock time is asserted: runs are
bounded by ``anyio.fail_after``, and what is counted is requests and 429s.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import pandas as pd
import pytest
from aiohttp import web

from batchrunner.config import load_job
from batchrunner.limiter import Limiter
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, RunSummary, run_job
from tests.servers import serve_on_loopback

pytestmark = pytest.mark.usefixtures("job_env")  # a key in the environment, tmp_path as cwd

KEY = "sk-test-ratelimit-0123456789"
RUN_LIMIT_S = 60


def completion(body: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-rl", "object": "chat.completion", "created": 0,
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}


class Counted:
    """What a test server was sent: requests, and the 429s it answered."""

    def __init__(self) -> None:
        self.requests = 0
        self.too_many = 0


async def run_against(tmp_path: Path, answer: Any, rows: int, **over: Any
                      ) -> tuple[RunSummary, Counted]:
    """Run a job of ``rows`` rows against a server whose replies ``answer(counted, body)``
    makes."""
    counted = Counted()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        counted.requests += 1
        resp: web.Response = await answer(counted, body)
        if resp.status == 429:
            counted.too_many += 1
        return resp

    server, port = await serve_on_loopback(handler)
    try:
        inp = tmp_path / "in.csv"
        pd.DataFrame({"id": [f"r{i:04d}" for i in range(rows)],
                      "text": [f"row {i}" for i in range(rows)]}).to_csv(inp, index=False)
        settings: dict[str, Any] = {
            "input": str(inp), "id_column": "id", "prompt": "Q: {text}", "model": "gpt-4o-mini",
            "max_tokens": 16, "base_url": f"http://127.0.0.1:{port}/v1",
            "output": str(tmp_path / "out")}
        settings.update(over)
        with anyio.fail_after(RUN_LIMIT_S):
            summary = await run_job(load_job(None, settings), RunOptions(
                retry=RetryPolicy(base_s=0.01), progress="none", handle_signals=False))
    finally:
        await server.cleanup()
    return summary, counted


# ----------------------------------------------------------------------------------------------
# Limits that are no pace


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "0", "-5", "0.5", "1e-9", "many"])
def test_a_limit_that_is_no_pace_is_not_learnt(value: str) -> None:
    for kind in ("requests", "tokens"):
        lim = Limiter(None, None)
        lim.observe({f"x-ratelimit-limit-{kind}": value})
        assert (lim.requests_per_minute, lim.tokens_per_minute) == (None, None), kind
    lim = Limiter(None, None)
    lim.observe({"x-ratelimit-limit-requests": "1", "x-ratelimit-limit-tokens": "1"})
    assert (lim.requests_per_minute, lim.tokens_per_minute) == (1.0, 1.0)


@pytest.mark.anyio
async def test_an_infinite_limit_header_does_not_crash_the_run(tmp_path: Path) -> None:
    """A gateway saying "x-ratelimit-limit-requests: inf" (no limit) to a job that set none:
    the limiter took infinity for the rate and sizing the concurrency from it crashed the run
    (OverflowError) once the first replies were in."""

    async def unlimited(counted: Counted, body: dict[str, Any]) -> web.Response:
        await asyncio.sleep(0.05)
        return web.json_response(completion(body), headers={
            "x-ratelimit-limit-requests": "inf", "x-ratelimit-remaining-requests": "inf"})

    summary, counted = await run_against(tmp_path, unlimited, 300)
    assert summary.exit_code == 0
    assert counted.requests == 300
