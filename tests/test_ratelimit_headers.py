"""Rate-limit headers as providers and gateways send them, and the pacing made of them.

Unit tests of ``Limiter.observe`` and the client's header reading, and runs against small
servers on 127.0.0.1 that send the headers chosen here. No wall-clock time is asserted: runs are
bounded by ``anyio.fail_after``, and what is counted is requests and 429s.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pandas as pd
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from batchrunner.client import _ratelimit_headers
from batchrunner.config import load_job
from batchrunner.limiter import Limiter, reset_seconds
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


# ----------------------------------------------------------------------------------------------
# An empty budget with no limit said


@pytest.mark.parametrize(("value", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0s", 0.0),
    ("8.64s", 8.64), ("30", 30.0), ("1.5", 1.5), (" 2s ", 2.0),
])
def test_reset_durations_are_read(value: str, seconds: float) -> None:
    assert reset_seconds(value) == pytest.approx(seconds)


def test_reset_times_are_read_as_seconds_from_now() -> None:
    now = time.time()
    for value in (f"{now + 30:.0f}", f"{(now + 30) * 1000:.0f}",  # Unix time: s, ms
                  (datetime.now(UTC) + timedelta(seconds=30)).isoformat(),
                  (datetime.now(UTC) + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")):
        assert 25 <= (reset_seconds(value) or 0) <= 31, value
    assert reset_seconds("2020-01-01T00:00:00Z") == 0.0  # past: now
    for garbage in ("", "soon", "1s2", "s", "-3", "inf", "nan", "12 minutes"):
        assert reset_seconds(garbage) is None, garbage


def test_an_empty_budget_pauses_when_the_server_says_no_limit() -> None:
    """Azure sends x-ratelimit-remaining-* without the limit: a remaining of 0 was ignored, the
    requests sent on into 429s. It pauses until the reset when one is said, else a second;
    with a rate known (the job's), for a request's worth of it."""
    lim = Limiter(None, None)
    lim.observe({"x-ratelimit-remaining-requests": "0"})
    assert 1.0 <= lim.paused_s <= 1.5
    lim = Limiter(None, None)
    lim.observe({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20s"})
    assert 19.0 <= lim.paused_s <= 23.0
    lim = Limiter(None, None)
    lim.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1d"})
    assert 0.5 <= lim.paused_s <= 1.5  # no reset read: a second
    lim = Limiter(6.0, None)  # the job's 6 a minute: one comes back in 10 s
    lim.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "50s"})
    assert 9.0 <= lim.paused_s <= 12.0
    lim = Limiter(None, None)
    lim.observe({"x-ratelimit-remaining-requests": "3", "x-ratelimit-remaining-tokens": "900"})
    assert lim.paused_s == 0.0


@pytest.mark.anyio
async def test_requests_wait_when_the_remaining_count_alone_says_none_are_left(
        tmp_path: Path) -> None:
    """A server that says how many requests are left but not its limit (Azure's headers), and
    answers 429 without retry-after once none are: the requests went on at once into 429s,
    each row backing off on its own (7 or more 429s here). Now a remaining of 0 holds new
    requests a second."""
    budget = 10
    refused_until: list[float] = []

    async def counted_down(counted: Counted, body: dict[str, Any]) -> web.Response:
        now = time.monotonic()
        if not refused_until:  # the 10th request takes the last one, for 1.5 s
            left = budget - counted.requests
            if left == 0:
                refused_until.append(now + 1.5)
        elif now < refused_until[0]:
            return web.json_response(
                {"error": {"message": "Rate limit is exceeded.", "type": "rate_limit_error"}},
                status=429, headers={"x-ratelimit-remaining-requests": "0"})
        else:
            left = 100
        return web.json_response(completion(body),
                                 headers={"x-ratelimit-remaining-requests": str(left)})

    summary, counted = await run_against(tmp_path, counted_down, 20, concurrency=1)
    assert summary.exit_code == 0
    assert counted.too_many <= 3


# ----------------------------------------------------------------------------------------------
# Limits under other names


def learnt(headers: list[tuple[str, str]], rpm: float | None = None) -> Limiter:
    """A limiter that has seen a reply with ``headers``, read as the client reads them."""
    lim = Limiter(rpm, None)
    lim.observe(_ratelimit_headers(CIMultiDictProxy(CIMultiDict(headers))))
    return lim


def test_anthropic_limits_are_learnt() -> None:
    """Anthropic's OpenAI-compatible endpoint (and gateways passing its headers through) says
    its limits as anthropic-ratelimit-*: a job that set none ran unpaced into 429s. The token
    budget is the input tokens' limit, if said, else the tokens' (the tighter of the two)."""
    reset = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lim = learnt([
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "49"),
        ("anthropic-ratelimit-requests-reset", reset),
        ("anthropic-ratelimit-tokens-limit", "8000"),
        ("anthropic-ratelimit-tokens-remaining", "8000"),
        ("anthropic-ratelimit-tokens-reset", reset),
        ("anthropic-ratelimit-input-tokens-limit", "30000"),
        ("anthropic-ratelimit-input-tokens-remaining", "29000"),
        ("anthropic-ratelimit-input-tokens-reset", reset),
        ("anthropic-ratelimit-output-tokens-limit", "8000"),
        ("anthropic-ratelimit-output-tokens-remaining", "8000"),
        ("anthropic-ratelimit-output-tokens-reset", reset),
        ("request-id", "req_1")])
    assert (lim.requests_per_minute, lim.tokens_per_minute) == (50.0, 30000.0)
    assert lim.paused_s == 0.0
    lim = learnt([("Anthropic-RateLimit-Requests-Limit", "50"),
                  ("Anthropic-RateLimit-Requests-Remaining", "0"),
                  ("Anthropic-RateLimit-Tokens-Limit", "8000"),
                  ("Anthropic-RateLimit-Tokens-Remaining", "5000")])
    assert (lim.requests_per_minute, lim.tokens_per_minute) == (50.0, 8000.0)
    assert lim.paused_s >= 1.0  # none left: a request's worth of 50 a minute
    lim = learnt([("anthropic-ratelimit-requests-limit", "50"),
                  ("anthropic-ratelimit-requests-remaining", "49")], rpm=500)  # lowered
    assert lim.requests_per_minute == 50.0


def test_limits_named_with_their_period_are_learnt_per_minute_only() -> None:
    """Cerebras names its limits with their period: the per-minute one is the pace, the daily
    one a quota that is not."""
    lim = learnt([("x-ratelimit-limit-requests-day", "14400"),
                  ("x-ratelimit-limit-tokens-minute", "60000"),
                  ("x-ratelimit-remaining-requests-day", "14399"),
                  ("x-ratelimit-remaining-tokens-minute", "59000"),
                  ("x-ratelimit-reset-requests-day", "33011.38"),
                  ("x-ratelimit-reset-tokens-minute", "11.38")])
    assert (lim.requests_per_minute, lim.tokens_per_minute) == (None, 60000.0)


def test_openai_names_are_read_in_any_case_and_first() -> None:
    lim = learnt([("X-RateLimit-Limit-Requests", "500"), ("X-RATELIMIT-LIMIT-TOKENS", "9000"),
                  ("anthropic-ratelimit-requests-limit", "5"),
                  ("anthropic-ratelimit-requests-remaining", "5")])
    assert (lim.requests_per_minute, lim.tokens_per_minute) == (500.0, 9000.0)
    assert learnt([("server", "vllm"), ("content-type", "application/json")]
                  ).requests_per_minute is None


@pytest.mark.anyio
async def test_a_job_with_no_limits_is_paced_to_anthropics(tmp_path: Path) -> None:
    """A server that allows 600 requests a minute (10 a second, from a bucket of 20) and says so
    in Anthropic's headers, answering 429 with retry-after past it: the job, which set no limit,
    never learnt it and sent at its concurrency, into 429 after 429. Paced now."""
    bucket = {"level": 20.0, "t": time.monotonic()}

    async def anthropic(counted: Counted, body: dict[str, Any]) -> web.Response:
        now = time.monotonic()
        bucket["level"] = min(20.0, bucket["level"] + (now - bucket["t"]) * 10.0)
        bucket["t"] = now
        ok = bucket["level"] >= 1.0
        if ok:
            bucket["level"] -= 1.0
        headers = {"anthropic-ratelimit-requests-limit": "600",
                   "anthropic-ratelimit-requests-remaining": str(int(bucket["level"])),
                   "anthropic-ratelimit-requests-reset": datetime.now(UTC).isoformat()}
        if not ok:
            headers["retry-after"] = "1"
            return web.json_response({"type": "error", "error": {
                "type": "rate_limit_error", "message": "Number of requests has exceeded your "
                "per-minute rate limit"}}, status=429, headers=headers)
        await asyncio.sleep(0.02)
        return web.json_response(completion(body), headers=headers)

    summary, counted = await run_against(tmp_path, anthropic, 60, concurrency=8)
    assert summary.exit_code == 0
    assert counted.too_many <= 2


# ----------------------------------------------------------------------------------------------
# Limits of each model's own


def per_model_limits(limits: dict[str, float], answered: list[float], *,
                     hidden: bool = False) -> Any:
    """Replies from a server that allows each model ``limits[model]`` requests a minute (from a
    bucket of a second's worth), says so in OpenAI's headers (``hidden``: says it with 429s
    alone, a gateway's per model), and answers 429 past it; a model not in ``limits`` has no
    limit, and none said. The time of each reply that is not a 429 is appended to
    ``answered`` (the server's clock)."""
    buckets: dict[str, tuple[float, float]] = {}

    async def answer(counted: Counted, body: dict[str, Any]) -> web.Response:
        model, now = body["model"], time.monotonic()
        if model not in limits:
            answered.append(now)
            return web.json_response(completion(body))
        per_s = limits[model] / 60.0
        level, then = buckets.get(model, (per_s, now))
        level = min(per_s, level + (now - then) * per_s)
        headers = {} if hidden else {"x-ratelimit-limit-requests": f"{limits[model]:.0f}"}
        if level < 1.0:
            buckets[model] = (level, now)
            headers["retry-after-ms"] = f"{(1.0 - level) / per_s * 1000:.0f}"
            return web.json_response({"error": {"message": "Rate limit reached"}}, status=429,
                                     headers=headers)
        buckets[model] = (level - 1.0, now)
        answered.append(now)
        return web.json_response(completion(body), headers=headers)

    return answer


@pytest.mark.anyio
async def test_models_whose_limits_differ_are_each_paced_at_their_own(tmp_path: Path) -> None:
    """A job asking two models whose limits are their own (OpenAI's are: 300 and 6,000 a
    minute here) was paced at the lower for both: 500 rows of which 100 asked the slow model
    took 93 s where 19 s would do. Each model is paced at its own now: the server answers the
    job's rows far faster than the slow model's limit would let them all go, and 429s stay
    few."""
    answered: list[float] = []
    rows = 150  # every 5th asks the slow model
    inp = tmp_path / "models.csv"  # the input, in place of run_against's
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(rows)],
                  "model": ["slow" if i % 5 == 0 else "fast" for i in range(rows)],
                  "text": [f"row {i}" for i in range(rows)]}).to_csv(inp, index=False)
    summary, counted = await run_against(
        tmp_path, per_model_limits({"slow": 300.0, "fast": 6000.0}, answered), rows,
        input=str(inp), model=None, model_column="model")
    assert (summary.ok, summary.failed) == (rows, 0)
    assert counted.too_many <= 8, counted.too_many  # the first burst's, before any limit known
    # At the slow model's pace, 5 a second after a burst of 5: 150 rows in 29 s. Its own 30
    # rows take 5 s at it; the fast model's 120 go meanwhile.
    pace = (rows - 5) / (answered[-1] - answered[0])
    assert pace > 2 * 300.0 / 60.0, pace


@pytest.mark.anyio
async def test_a_model_whose_answers_report_no_limit_is_not_paced_at_anothers(
        tmp_path: Path) -> None:
    """A gateway that limits one model of two (300 a minute, said in its answers) and says
    nothing for the other, as `batchrunner simulate --model-rpm` does: the one limit said was
    taken for every model's, and the other model's rows went at its pace too (60 a minute for
    one of two models: 150 rows of each in 267 s, not a 429 among them). Each model is paced
    at its own now, the model with no limit said free."""
    answered: list[float] = []
    rows = 150  # every 5th asks the slow model
    inp = tmp_path / "models.csv"
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(rows)],
                  "model": ["slow" if i % 5 == 0 else "free" for i in range(rows)],
                  "text": [f"row {i}" for i in range(rows)]}).to_csv(inp, index=False)
    summary, counted = await run_against(
        tmp_path, per_model_limits({"slow": 300.0}, answered), rows,
        input=str(inp), model=None, model_column="model")
    assert (summary.ok, summary.failed) == (rows, 0)
    assert counted.too_many <= 8, counted.too_many
    # At the slow model's pace, 5 a second: 150 rows in 29 s. Its own 30 rows take 5 s at it;
    # the other model's 120 go meanwhile.
    pace = (rows - 5) / (answered[-1] - answered[0])
    assert pace > 2 * 300.0 / 60.0, pace


@pytest.mark.anyio
async def test_rows_waiting_for_a_slow_models_permit_leave_the_workers_to_other_models(
        tmp_path: Path) -> None:
    """A job of 100 rows, every 5th asking a model limited to 120 requests a minute and the
    rest one limited to 6,000, at concurrency 4. Each worker that took a slow row waited in it
    for the slow model's permit, so the workers were soon all waiting for it and the fast
    model's rows went at the slow one's pace: 17 of the slow model's 20 answers came before
    the fast model's last. The slow rows wait for their permits in a queue of their model's
    now, the workers going on with the fast rows: every row answered once, never more
    requests out than the concurrency."""
    answered: list[float] = []
    reported = per_model_limits({"slow": 120.0, "fast": 6000.0}, answered)
    seen: list[str] = []  # the models of the answers that were not 429s, in order
    out = {"now": 0, "most": 0}

    async def answer(counted: Counted, body: dict[str, Any]) -> web.Response:
        out["now"] += 1
        out["most"] = max(out["most"], out["now"])
        try:
            await asyncio.sleep(0.01)
            resp: web.Response = await reported(counted, body)
        finally:
            out["now"] -= 1
        if resp.status == 200:
            seen.append(body["model"])
        return resp

    rows = 100
    inp = tmp_path / "models.csv"
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(rows)],
                  "model": ["slow" if i % 5 == 0 else "fast" for i in range(rows)],
                  "text": [f"row {i}" for i in range(rows)]}).to_csv(inp, index=False)
    summary, counted = await run_against(tmp_path, answer, rows, input=str(inp), model=None,
                                         model_column="model", concurrency=4)
    assert (summary.ok, summary.failed) == (rows, 0)
    assert len(seen) == rows and counted.requests == rows + counted.too_many
    assert out["most"] <= 4, out
    last_fast = max(i for i, model in enumerate(seen) if model == "fast")
    slow_before = seen[:last_fast].count("slow")
    assert slow_before <= 5, slow_before  # 17 of 20 before


def models_run(**limits: Any) -> Any:
    """A run of a job whose rows ask models of their own (a model column), nothing sent."""
    from batchrunner.progress import NullProgress
    from batchrunner.runner import _Run, prepare

    inp = Path("in.csv")
    pd.DataFrame({"id": ["r1"], "model": ["a"], "text": ["hi"]}).to_csv(inp, index=False)
    job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                          "model_column": "model", "base_url": "http://127.0.0.1:9/v1",
                          "output": "out", **limits})
    options = RunOptions(progress="none", handle_signals=False)
    lim = job.limits
    return _Run(prepare(job, options), options, None,  # type: ignore[arg-type]
                Limiter(lim.requests_per_minute, lim.tokens_per_minute), NullProgress(),
                None, max_concurrency=8, fixed_concurrency=True)  # type: ignore[arg-type]


def said(rpm: str, tpm: str | None = None) -> dict[str, str]:
    headers = {"x-ratelimit-limit-requests": rpm, "x-ratelimit-remaining-requests": "100"}
    if tpm is not None:
        headers["x-ratelimit-limit-tokens"] = tpm
    return headers


def test_one_limit_that_every_model_reports_paces_them_all_together() -> None:
    """A gateway's limit for the key, the same in every model's answers: one pace for all
    (a limiter for each would send each model at the key's whole rate)."""
    from batchrunner.runner import _Work

    run = models_run()
    for model in ("a", "b", "c"):
        run._observe(_Work(key=model, body={"model": model}, model=model, prompt_estimate=1,
                           completion_max=1), said("600", "90000"))
    run._observe(_Work(key="d", body={"model": "d"}, model="d", prompt_estimate=1,
                       completion_max=1), said("600"))  # no token limit said: nothing differs
    assert run.split is None
    assert (run.limiter.requests_per_minute, run.limiter.tokens_per_minute) == (600.0, 90000.0)


@pytest.mark.anyio
@pytest.mark.parametrize("job_rpm", [None, 6000.0])
async def test_requests_waiting_at_a_pace_the_job_limiter_unlearns_go_on_at_the_jobs(
        job_rpm: float | None) -> None:
    """A split job's limiter goes back to the job's rates: the requests already waiting in it
    at the rate the first model's answers said (a slow model's rows first in the input) went
    on waiting at that rate in a bucket no longer used, 3 s each at 20 a minute, while
    those that came after went at once. They go on at the job's rate now, or at once."""
    lim = Limiter(job_rpm, None)
    lim.learn(20.0, 10_000.0)  # 3 s a request, 10,000 tokens a minute
    await lim.acquire(150)  # the bucket's burst: a request, 150 tokens
    done: list[int] = []

    async def waiter(i: int) -> None:
        await lim.acquire(150)
        done.append(i)

    with anyio.fail_after(3):  # the learnt rate: 9 s for the three
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(waiter, i)
            await anyio.sleep(0.05)
            assert done == []  # waiting at the learnt pace
            lim.unlearn()  # 3 at 6,000 a minute: 10 ms each
    assert done == [0, 1, 2]
    assert lim.requests_per_minute == job_rpm and lim.tokens_per_minute is None


def test_limits_that_differ_between_models_give_each_its_own_limiter() -> None:
    """Within the job's own limits: the job's limiter keeps the rate the job set (and learns
    no more); each model's learns its own; a 429's pause holds the model's requests only, and
    the progress names the model."""
    from batchrunner.runner import _Work

    run = models_run(requests_per_minute=5000)

    def item(model: str) -> _Work:
        return _Work(key=model, body={"model": model}, model=model, prompt_estimate=1,
                     completion_max=1)

    run._observe(item("a"), said("300", "30000"))
    assert run.split is None and run.limiter.requests_per_minute == 300.0
    run._observe(item("b"), said("10000", "30000"))
    assert run.split is not None and set(run.split) == {"a", "b"}
    assert run.limiter.requests_per_minute == 5000.0  # the job's, no longer lowered
    assert run.limiter.tokens_per_minute is None
    assert (run.split["a"].requests_per_minute, run.split["b"].requests_per_minute) == (
        300.0, 10000.0)
    run._observe(item("c"), said("60"))  # a model first heard from after the split
    assert run.split["c"].requests_per_minute == 60.0
    assert run.limiter.requests_per_minute == 5000.0
    assert run._requests_per_second() == 5000.0 / 60.0  # within the job's: 10,360 together
    run.split["a"].pause(3.0)
    run._show_pause()
    assert run.counts.paused_s >= 2.9 and run.counts.paused_by == "a 429's retry-after, for a"
    assert run.limiter.paused_s == 0.0 and run.split["b"].paused_s == 0.0


@pytest.mark.anyio
async def test_a_limiter_made_for_requests_already_going_out_starts_with_no_burst() -> None:
    lim = Limiter(600, 6000, burst=False)
    assert lim._tokens is not None and lim._tokens.level == 0.0
    await lim.acquire(0)
    assert lim._requests is not None and not lim._requests.can_take(1)
    lim = Limiter(600, 6000)  # a job's own: its first second's worth at once
    await lim.acquire(0)
    assert lim._requests is not None and lim._requests.can_take(9)


# ----------------------------------------------------------------------------------------------
# A limit over more than a minute (Groq's requests a day)


def groq(remaining: int, reset: str, limit: int = 14400) -> dict[str, str]:
    """Groq's headers: the requests' limit is a day's (its reset the time until the day's
    budget is whole again), the tokens' a minute's."""
    return {"x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": reset, "x-ratelimit-limit-tokens": "18000",
            "x-ratelimit-remaining-tokens": "17990", "x-ratelimit-reset-tokens": "33ms"}


def test_a_requests_limit_whose_reset_is_minutes_away_is_no_rate_a_minute() -> None:
    """Groq's 14,400 requests a day were paced as 14,400 a minute (240 a second: no pace at
    all), and none remaining held new sends 4 ms. A reset further off than a minute says the
    limit is no minute's: the tokens' (a minute's) pace the job, and a day's used up is said."""
    lim = Limiter(None, None)
    assert lim.observe(groq(14370, "2m59.56s")) is None
    assert lim.requests_per_minute is None and lim.tokens_per_minute == 18000.0
    lim = Limiter(None, None)
    assert lim.observe(groq(14399, "6s")) is None  # as a minute's might say: learnt
    assert lim.requests_per_minute == 14400.0
    assert lim.observe(groq(0, "23h59m54s")) is not None  # none left, a day away: no minute's
    assert lim.requests_per_minute is None and lim.tokens_per_minute == 18000.0
    lim = Limiter(None, None)
    used_up = lim.observe(groq(0, "23h59m54s"))
    assert used_up is not None and used_up[:2] == ("requests", 14400.0), used_up
    assert used_up[2] == pytest.approx(86394.0)
    assert lim.requests_per_minute is None
    lim = Limiter(None, None)  # OpenAI's documented answer: its tokens a minute's all the same
    lim.observe({"x-ratelimit-limit-requests": "60", "x-ratelimit-limit-tokens": "150000",
                 "x-ratelimit-remaining-requests": "59", "x-ratelimit-remaining-tokens": "149984",
                 "x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"})
    assert (lim.requests_per_minute, lim.tokens_per_minute) == (60.0, 150000.0)
    lim = Limiter(None, None)  # none left, its budget back within a minute: waited for
    assert lim.observe(groq(5, "3m0s", limit=100)) is None
    assert lim.observe(groq(0, "50s", limit=100)) is None
    assert lim.paused_s >= 49.0


@pytest.mark.anyio
async def test_a_days_requests_used_up_stop_the_job_with_one_line(tmp_path: Path) -> None:
    """A key with 30 of its 14,400 requests a day left, Groq's headers saying so (the budget
    refills one request every 6 s, its reset the time until it is whole): the job went on at
    one request every 6 s, each 429 storm of the workers waiting, 3 hours for 2,000 rows. It
    stops when none remain, saying why and until when."""
    day = 14400
    left = {"n": 30}

    async def groq_day(counted: Counted, body: dict[str, Any]) -> web.Response:
        used = day - left["n"]
        if left["n"] < 1:
            return web.json_response({"error": {"message": "Rate limit reached on requests "
                                                "per day (RPD)", "type": "requests",
                                                "code": "rate_limit_exceeded"}},
                                     status=429, headers={"retry-after": "6", **groq(0, "1d")})
        left["n"] -= 1
        used += 1
        reset = f"{used * 6 // 3600}h{used * 6 % 3600 // 60}m{used * 6 % 60}s"
        await asyncio.sleep(0.01)
        return web.json_response(completion(body), headers=groq(left["n"], reset))

    summary, counted = await run_against(tmp_path, groq_day, 2000, concurrency=8)
    assert summary.exit_code == 4 and summary.stopped, summary.stopped
    assert "x-ratelimit-limit-requests 14,400" in summary.stopped, summary.stopped
    assert summary.ok == 30
    assert counted.too_many <= 8, counted.too_many  # those in flight at most


@pytest.mark.anyio
async def test_a_row_parked_again_then_sent_from_a_full_queue_is_no_longer_parked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A split job's row answered 429 waits for its model's permit first in its model's queue
    (``_park_again``); with the queue full, the next row parked makes the worker send that
    oldest row itself. It is then out, not parked: a stop while it is out counts its
    attempts and finishes it (a row still marked parked was neither, its tries missing from
    the report's attempts). In an event loop, as in a run: parking wakes the workers (an
    anyio Event, which anyio 4.4 sets only there)."""
    from batchrunner import runner
    from batchrunner.runner import _Work

    monkeypatch.setattr(runner, "PARKED_MAX_ROWS", 2)
    run = models_run()
    run.split = {"a": Limiter(60, None, burst=False)}  # no permit now: rows are parked

    def work(key: str) -> _Work:
        return _Work(key=key, body={"model": "a"}, model="a", prompt_estimate=1, completion_max=1)

    answered_429 = work("r0")
    answered_429.attempts = 1
    assert run._park_again(answered_429) and answered_429.parked
    assert run._park(work("r1")) is None
    assert run._park(work("r2")) is answered_429  # the queue full: its oldest is sent
    assert not answered_429.parked
    assert run.parked_rows == 2


@pytest.mark.anyio
async def test_tokens_given_back_to_a_model_with_rows_parked_wake_the_keeper() -> None:
    """A split job's rows parked for their model's tokens: the keeper sleeps until the
    soonest is due. Tokens given back (a request refused before the server counted it, a
    reply that used fewer than it was charged) make it due sooner: the keeper looks again,
    where it slept out the time it was told."""
    from batchrunner.runner import _Work

    run = models_run()
    run.split = {"a": Limiter(None, 600, burst=False)}  # 10 tokens a second, none there now
    run.parking = True

    def work(key: str) -> _Work:
        return _Work(key=key, body={"model": "a"}, model="a", prompt_estimate=2, completion_max=2)

    assert run._park(work("r1")) is None
    keeper = run.keeper = anyio.Event()  # asleep until r1's tokens are due, or woken
    run.keeper_due = time.monotonic() + run.split["a"].ready_in(run._charge(work("r1")))
    run._refund(work("r0"), 10)  # its tokens back: r1's are there now
    assert keeper.is_set()
