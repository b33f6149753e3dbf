"""Rate limits as real servers change and refuse them mid-run: a limit raised (a key's tier, a
gateway's reloaded limits) and 429s that are no rate limit. Runs against small servers on
127.0.0.1; what is asserted is counted by the server (requests, 429s, its own clock's pace),
never the run's wall time."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pandas as pd
import pytest
from aiohttp import web

from batchrunner import limiter
from batchrunner.config import load_job
from batchrunner.limiter import Limiter
from batchrunner.progress import Counts, _postfix
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, _Work, run_job
from batchrunner.simulator import Simulator, SimulatorConfig
from tests.test_ratelimit_headers import (
    RUN_LIMIT_S,
    Counted,
    completion,
    models_run,
    per_model_limits,
    run_against,
    said,
)

pytestmark = pytest.mark.usefixtures("job_env")  # a key in the environment, tmp_path as cwd

KEY = "sk-test-limits-real-0123456789"


# ----------------------------------------------------------------------------------------------
# A limit raised mid-run


def test_a_raised_limit_is_followed_within_the_jobs_own(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setattr(limiter, "RAISE_AFTER_S", 0.0)  # followed at its second saying
    lim = Limiter(None, None)
    lim.observe(said("120", "30000"))
    lim.observe(said("1200", "450000"))  # the key's tier raised
    assert (lim.requests_per_minute, lim.tokens_per_minute) == (120.0, 30000.0)
    lim.observe(said("1200", "450000"))
    assert (lim.requests_per_minute, lim.tokens_per_minute) == (1200.0, 450000.0)
    lim.observe(said("600"))  # and lowered again: at once
    assert lim.requests_per_minute == 600.0
    lim = Limiter(500, None)  # the job's --rpm bounds what is learnt
    lim.observe(said("300"))
    assert lim.requests_per_minute == 300.0
    lim.observe(said("5000"))
    lim.observe(said("5000"))
    assert lim.requests_per_minute == 500.0


def test_answers_that_say_different_limits_in_turn_keep_the_lower() -> None:
    """Servers behind one address, each saying its own limit: following each answer's made a
    new bucket, with a burst of its own, at every answer (510 429s for 200 rows from a server
    whose answers said 600 and 590 in turn, where keeping the lower drew 27)."""
    lim = Limiter(None, None)
    lim.observe(said("600"))
    lim.observe(said("590"))
    bucket = lim._requests
    for _ in range(20):
        lim.observe(said("600"))
        lim.observe(said("590"))
    assert lim.requests_per_minute == 590.0
    assert lim._requests is bucket  # the same bucket, no burst of a new one at each answer


def test_a_gateways_limit_reloaded_for_every_model_keeps_one_pace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One limit for the key, raised while a job of several models runs: the first model to
    report the new limit differed from the others' old reports, and split the job into a
    limiter for each model, each at the key's whole limit once its answers said so."""
    monkeypatch.setattr(limiter, "RAISE_AFTER_S", 0.0)
    run = models_run()

    def item(model: str) -> _Work:
        return _Work(key=model, body={"model": model}, model=model, prompt_estimate=1,
                     completion_max=1)

    for model in ("a", "b"):
        run._observe(item(model), said("600", "90000"))
    run._observe(item("a"), said("1200", "90000"))  # reloaded: a answers first
    run._observe(item("b"), said("1200", "90000"))
    assert run.split is None
    assert run.limiter.requests_per_minute == 1200.0
    run._observe(item("c"), said("300"))  # a model whose limit is its own: split, as ever
    assert run.split is not None
    assert run.split["a"].requests_per_minute == 1200.0
    assert run.split["c"].requests_per_minute == 300.0
    for _ in range(2):  # and each model's limiter follows its own
        run._observe(item("c"), said("3000"))
    assert run.split["c"].requests_per_minute == 3000.0


def test_a_split_jobs_models_reporting_one_limit_again_are_paced_together_at_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Split by a lagging report (a said 600, b 1,200 of one limit for the key), each model
    was paced at its own until its limiter followed the higher one RAISE_AFTER_S later, the
    two together over the key's limit. Once every model's latest answer says the same, the
    job's limiter paces them all together at it; reports that differ now and then keep it,
    and it is let go only once they have differed for RAISE_AFTER_S."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    run = models_run()

    def item(model: str) -> _Work:
        return _Work(key=model, body={"model": model}, model=model, prompt_estimate=1,
                     completion_max=1)

    run._observe(item("a"), said("600"))
    run._observe(item("b"), said("1200"))
    assert run.split is not None and run.limiter.requests_per_minute is None
    run._observe(item("a"), said("1200"))  # the key's own, in every model's answers now
    assert run.limiter.requests_per_minute == 1200.0  # all together, at once
    assert run.split["a"].requests_per_minute == 600.0  # its own follows the raise later
    for _ in range(5):  # a's answers say 600 and 1,200 in turn: the pace for all holds
        clock[0] += 1.0
        run._observe(item("a"), said("600"))
        assert run.limiter.requests_per_minute == 1200.0
        run._observe(item("a"), said("1200"))
    assert run.split is not None  # nor did the job split and merge again and again
    clock[0] += 1.0
    run._observe(item("a"), said("600"))
    clock[0] += limiter.RAISE_AFTER_S
    run._observe(item("b"), said("1200"))  # differed for RAISE_AFTER_S: each its own
    assert run.limiter.requests_per_minute is None
    assert run.split["a"].requests_per_minute == 600.0


def shared_limit(per_minute: float, lagging: str, lag_s: float) -> Any:
    """Replies from a gateway whose key has one limit of ``per_minute`` for every model (a
    bucket of a second's worth), said in OpenAI's headers; the answers for model ``lagging``
    say half of it for ``lag_s`` from the first request (its limits reloaded a moment after the
    others')."""
    per_s = per_minute / 60.0
    bucket = {"level": per_s, "t": -1.0, "start": -1.0}

    async def answer(counted: Counted, body: dict[str, Any]) -> web.Response:
        now = time.monotonic()
        if bucket["start"] < 0:
            bucket["start"] = bucket["t"] = now
        bucket["level"] = min(per_s, bucket["level"] + (now - bucket["t"]) * per_s)
        bucket["t"] = now
        said_limit = per_minute / 2 if (body["model"] == lagging
                                        and now - bucket["start"] < lag_s) else per_minute
        headers = {"x-ratelimit-limit-requests": f"{said_limit:.0f}"}
        if bucket["level"] < 1.0:
            headers["retry-after-ms"] = f"{(1.0 - bucket['level']) / per_s * 1000:.0f}"
            return web.json_response({"error": {"message": "Rate limit reached"}}, status=429,
                                     headers=headers)
        bucket["level"] -= 1.0
        await asyncio.sleep(0.05)
        return web.json_response(completion(body), headers=headers)

    return answer


@pytest.mark.anyio
@pytest.mark.paced
async def test_models_split_by_a_lagging_report_of_a_shared_limit_are_paced_as_one_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two models sharing the key's one limit (3,000 a minute), the answers for one saying
    half of it for their first second (a gateway whose limits for that model were reloaded a
    moment late): the reports differed, the job split, and each model was paced at the whole
    limit for good, twice what the key allows (1,200 a minute, 600 rows: 319 429s of 919
    requests, 19 with no lag). Once every model's limiter paces at the same limits again, the
    job is paced as one again; and from when every model's answers say the same, the job's
    limiter paces them all together at it, where each model's own paced it alone until its
    limiter followed the higher report (42 and 78 429s of some 660 requests here, none now)."""
    monkeypatch.setattr(limiter, "RAISE_AFTER_S", 3.0)  # a higher limit followed after 3 s
    # The 429s come in the first seconds (the lag, then RAISE_AFTER_S): 300 rows tell them
    # apart as well as 600 (none as it is; 33-36 of some 335 with the job's limiter not pacing
    # the models together, 29 of 629 at 600 rows, where the bound is 3 %).
    rows = 300
    inp = tmp_path / "models.csv"
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(rows)],
                  "model": ["ab"[i % 2] for i in range(rows)],
                  "text": [f"row {i}" for i in range(rows)]}).to_csv(inp, index=False)
    summary, counted = await run_against(tmp_path, shared_limit(3000.0, "a", 1.0), rows,
                                         input=str(inp), model=None, model_column="model")
    assert (summary.ok, summary.failed) == (rows, 0)
    assert counted.too_many <= 0.03 * counted.requests, (counted.too_many, counted.requests)


@pytest.mark.anyio
@pytest.mark.paced
async def test_a_limit_the_models_share_behind_limits_said_per_model_is_learnt_from_429s(
        tmp_path: Path) -> None:
    """A gateway enforcing the key's one limit (3,000 a minute, from a bucket of a second's
    worth) while its answers say a limit per model (2,500 a minute for a, 2,000 for b): the
    reports differ, the job splits, and each model was paced at its own, 4,500 a minute
    together, a third of the requests refused to the end (125 and 143 429s of some 530
    requests). The 429s both models draw at once, each under its own limit, are a limit they
    share: a storm of them teaches the job's limiter a pace for all (32 to 40 of some 435)."""
    rows = 400
    inp = tmp_path / "models.csv"
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(rows)],
                  "model": ["ab"[i % 2] for i in range(rows)],
                  "text": [f"row {i}" for i in range(rows)]}).to_csv(inp, index=False)
    async with Simulator(SimulatorConfig(rpm=3000, said_model_rpm={"a": 2500, "b": 2000},
                                         limit_burst_s=1.0, latency_ms=50)) as sim:
        job = load_job(None, {
            "input": str(inp), "id_column": "id", "prompt": "Q: {text}", "model_column": "model",
            "max_tokens": 16, "base_url": sim.base_url, "output": str(tmp_path / "out")})
        with anyio.fail_after(RUN_LIMIT_S):
            summary = await run_job(job, RunOptions(retry=RetryPolicy(base_s=0.01),
                                                    progress="none", handle_signals=False))
        stats = sim.stats()
    assert (summary.ok, summary.failed) == (rows, 0)
    assert stats["rate_limited_total"] <= 0.15 * stats["requests"], (
        stats["rate_limited_total"], stats["requests"])


@pytest.mark.anyio
@pytest.mark.paced
async def test_a_limit_raised_mid_run_is_followed(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that allows 60 requests a minute (from a bucket of a second's worth) for its
    first 4 answers, then 6,000 (the key's tier raised), saying so in OpenAI's headers: the
    job, which set no limit, learnt 60 and kept it to the end, one request a second where a
    hundred were allowed. It follows the raise now, once the answers have said it for
    RAISE_AFTER_S (5 s; 2 s here, each of them a request at the old limit: a pace of some 18
    a second from the 5th answer on, 8 at 5 s, 1.0 with the raise never followed)."""
    monkeypatch.setattr(limiter, "RAISE_AFTER_S", 2.0)
    answered: list[float] = []
    state = {"limit": 60.0, "level": 1.0, "t": time.monotonic()}

    async def raised(counted: Counted, body: dict[str, Any]) -> web.Response:
        now = time.monotonic()
        per_s = state["limit"] / 60.0
        state["level"] = min(max(per_s, 1.0), state["level"] + (now - state["t"]) * per_s)
        state["t"] = now
        headers = {"x-ratelimit-limit-requests": f"{state['limit']:.0f}",
                   "x-ratelimit-remaining-requests": f"{state['level']:.0f}"}
        if state["level"] < 1.0:
            headers["retry-after-ms"] = f"{(1.0 - state['level']) / per_s * 1000:.0f}"
            return web.json_response({"error": {"message": "Rate limit reached",
                                                 "code": "rate_limit_exceeded"}},
                                     status=429, headers=headers)
        state["level"] -= 1.0
        answered.append(now)
        if len(answered) == 4:
            state["limit"] = 6000.0
        return web.json_response(completion(body), headers=headers)

    rows = 50
    summary, counted = await run_against(tmp_path, raised, rows, concurrency=4)
    assert (summary.ok, summary.failed) == (rows, 0)
    assert counted.too_many <= 6, counted.too_many  # the first burst's, before any limit known
    # At the old limit, a request a second: 45 rows in 45 s; some 2.5 s now.
    pace = (len(answered) - 5) / (answered[-1] - answered[4])
    assert pace > 3.0, pace


# ----------------------------------------------------------------------------------------------
# A limit no header reports: its 429s alone say it


def learnt_paces(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The paces limiters learn from 429s in a run, in turn."""
    paces: list[float] = []
    learn = Limiter._set_guess

    def recorded(self: Limiter, per_minute: float) -> None:
        paces.append(per_minute)
        learn(self, per_minute)

    monkeypatch.setattr(Limiter, "_set_guess", recorded)
    return paces


class HiddenLimit:
    """A limit of ``per_s`` requests a second, from a bucket of a second's worth, that a server
    says only with its 429s (a gateway's in front of a server of one's own); ``per_s`` may be
    raised mid-run."""

    def __init__(self, per_s: float) -> None:
        self.per_s = self.level = per_s
        self.t = time.monotonic()

    def take(self) -> bool:
        """One request's permit if the bucket has one now (taken), else False."""
        now = time.monotonic()
        self.level = min(self.per_s, self.level + (now - self.t) * self.per_s)
        self.t = now
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True


def too_many(retry_after: str) -> web.Response:
    """A 429 as a limit's, asking ``retry_after`` seconds."""
    return web.json_response({"error": {"message": "Rate limit exceeded",
                                        "type": "rate_limit_error"}},
                             status=429, headers={"retry-after": retry_after})


def random_429s(share: float = 0.02, seed: int = 7
                ) -> Callable[[Counted, dict[str, Any]], Awaitable[web.Response]]:
    """A server with no limit that answers ``share`` of requests 429 at random, with a
    ``retry-after`` of 0 (the benchmark's faults): no storm, only 429s here and there."""
    rng = random.Random(seed)

    async def flaky(counted: Counted, body: dict[str, Any]) -> web.Response:
        if rng.random() < share:
            return too_many("0")
        await asyncio.sleep(0.02)
        return web.json_response(completion(body))

    return flaky


@pytest.mark.anyio
@pytest.mark.paced
async def test_a_storm_behind_a_limit_no_header_reports_teaches_a_pace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway allowing 600 requests a minute (from a bucket of a second's worth) in front of
    a server, saying so only with 429s and their retry-after (many one-api gateways, a proxy in
    front of vLLM). With no rate known, every pause ended with every request waiting sent at
    once: 1,030 429s for 300 rows (78 % of the requests). The storm now sets a pace a little
    under the rate answers were accepted at: some 25 429s for 300 rows (8 %), 22 for the 200
    here (10 %)."""
    paces = learnt_paces(monkeypatch)
    bucket = HiddenLimit(10.0)

    async def hidden(counted: Counted, body: dict[str, Any]) -> web.Response:
        if not bucket.take():
            return too_many(str(math.ceil((1.0 - bucket.level) / bucket.per_s)))
        await asyncio.sleep(0.2)
        return web.json_response(completion(body))

    rows = 200
    summary, counted = await run_against(tmp_path, hidden, rows)
    assert (summary.ok, summary.failed) == (rows, 0)
    assert counted.too_many <= 0.15 * counted.requests, (counted.too_many, counted.requests)
    assert paces and min(paces) <= 600.0, paces  # learnt, and at the limit or under it
    # The progress names it.
    assert "paced at 540 requests a minute, learnt from a storm of 429s" in _postfix(
        Counts(learnt_rpm=540.0))
    assert "pace=540/min" in _postfix(Counts(learnt_rpm=540.0), compact=True)


def test_a_pace_learnt_from_429s_is_raised_slowly_and_gives_way_to_a_rate_said() -> None:
    """Samples of a run's counts, as the runner takes them every half second: a storm (30 of 40
    requests 429'd over a second) paces at 0.9 × the 10 a second accepted; quiet windows raise
    it; a 429 takes it back a step, not below the storm's; a limit a header says replaces it at
    once (until a storm at it), and a job's own rate is never replaced."""
    lim = Limiter(None, None)
    lim.sample(0.0, 0, 0)
    lim.sample(0.5, 20, 15)
    assert not lim.guessed and not lim.paces
    lim.sample(1.0, 40, 30)
    assert lim.guessed and lim.paces and lim.requests_per_minute == pytest.approx(540.0)
    t, sent = 1.0, 40
    for _ in range(9):  # under a window at the pace, no 429: not raised yet
        t, sent = t + 0.5, sent + 5
        lim.sample(t, sent, 30)
    assert lim.requests_per_minute == pytest.approx(540.0)
    for _ in range(4):  # from a whole window on, a step at each sample
        t, sent = t + 0.5, sent + 5
        lim.sample(t, sent, 30)
    assert lim.requests_per_minute == pytest.approx(540.0 * limiter.PACE_RAISE ** 4)
    lim.sample(t + 0.5, sent + 5, 31)  # one 429: a step back, not below the storm's pace
    assert lim.requests_per_minute == pytest.approx(540.0)
    lim.observe(said("1200"))  # a limit said wins, at once
    assert lim.requests_per_minute == 1200.0 and not lim.guessed
    # A storm at it then says it is higher than the server enforces: paced under it again
    # (the test below), where a rate said was kept whatever 429s it drew.
    lim.sample(t + 1.0, sent + 45, 71)
    assert lim.guessed and lim.requests_per_minute < 1200.0
    lim = Limiter(300, None)
    for i in range(4):
        lim.sample(i * 0.5, i * 20, i * 15)
    assert lim.requests_per_minute == 300.0 and not lim.guessed


def test_a_storms_pace_is_judged_by_the_answers_accepted_in_the_window_from_it() -> None:
    """A minute's bucket drained by the job's first burst: the storm sets a pace, too high (the
    burst's answers in its window), and the window from there judges it by the answers in it,
    whatever request they answer: 190 429s, most of them to requests sent before the pace,
    and 16 accepted in a second, which lower the pace to 0.9 × that. (Counted by requests
    sent, the 429s to those sent before outnumbered those sent since, 110 to 96, and no rate
    was measured.)"""
    lim = Limiter(None, None)
    lim.sample(0.0, 0, 0)
    lim.sample(0.5, 700, 60)
    lim.sample(1.0, 800, 175)  # the burst's storm: 625 accepted in a second
    assert lim.requests_per_minute == pytest.approx(625 * 60 * 0.9)
    lim.sample(1.5, 948, 315)  # 110 429s to the burst's requests, 30 to those since, 8 ok
    lim.sample(2.0, 1006, 365)  # 50 429s, 8 ok
    assert lim.requests_per_minute == pytest.approx(16 * 60 * 0.9)


def test_a_storm_that_refused_everything_teaches_no_pace_from_the_rows_answered_as_it_ends(
        ) -> None:
    """429s with "retry-after: 0" to every request for 2.5 s, then none: the job's 8 rows,
    answered as it ended, are no rate (a storm's pace of 21 a minute was learnt from them, and
    the job crawled at it), nor is a request in flight among the 429s (54 a minute). Counts
    as the runner gives them, answers: every one a 429 to 2.5 s, then the rows' oks."""
    lim = Limiter(None, None)
    samples = [(0.0, 0, 0), (0.5, 30, 30), (1.0, 47, 47), (1.5, 48, 48), (2.0, 49, 49),
               (2.5, 49, 49), (3.0, 51, 50), (3.5, 53, 50), (4.0, 55, 50), (4.5, 57, 50),
               (5.0, 57, 50), (5.5, 57, 50), (6.0, 57, 50)]
    for t, answered, refused in samples:
        assert not lim.sample(t, answered, refused)
        assert not lim.paces, t


def test_a_storms_pace_learnt_over_the_limit_is_lowered_by_the_429s_it_draws() -> None:
    """Behind a limit of 600 a minute no header says, a second's twelve answers accepted set a
    pace of 648: over the limit, it draws a 429 every second or so, each too few for a storm
    and the pace already the storm's (5-7 % of the requests 429'd to the job's end). A whole
    window of them twice in a row lowers it under the rate accepted; a 429 now and then at a
    pace under the limit (a server's random few) does not."""
    lim = Limiter(None, None)
    for t, answered, refused in [(0.0, 0, 0), (0.5, 60, 54), (1.0, 120, 108)]:
        lim.sample(t, answered, refused)
    assert lim.requests_per_minute == pytest.approx(12 * 60 * 0.9)  # 648
    t, answered, refused = 1.0, 120, 108
    paces = []
    for i in range(1, 31):  # 15 s at the pace: 10.8 answers a second, 10 of them accepted
        t += 0.5
        answered += 5 if i % 5 in (1, 3) else 6  # 27 in 2.5 s
        refused += i % 3 == 0  # a 429 every 1.5 s
        lim.sample(t, answered, refused)
        paces.append(lim.requests_per_minute)
    assert paces[0] == pytest.approx(648.0)  # not at its first 429s
    assert paces[12] == pytest.approx(648.0)  # nor at its first window of them
    pace = lim.requests_per_minute
    assert pace is not None and 500.0 < pace < 600.0, paces
    for _ in range(20):  # 10 s under the limit, 9 a second, with one 429 in them
        t, answered = t + 0.5, answered + 4
        refused += _ == 10
        lim.sample(t, answered, refused)
    assert lim.requests_per_minute == pytest.approx(pace)


def test_a_servers_random_429s_do_not_wear_a_pace_under_the_limit_down() -> None:
    """A pace learnt at 540 a minute behind a limit of 600, and a server that answers 2 % of
    the requests 429 at random: three or more come in one window of 45 answers in some one of
    seventeen. Lowered at each, the pace fell to 250-340 a minute in an hour; it holds now
    (an hour of samples, seeded)."""
    rng = random.Random(7)
    lim = Limiter(None, None)
    for t, answered, refused in [(0.0, 0, 0), (0.5, 50, 45), (1.0, 100, 90)]:
        lim.sample(t, answered, refused)
    assert lim.requests_per_minute == pytest.approx(540.0)
    t, answered, refused, carry = 1.0, 100, 90, 0.0
    lowest = 540.0
    for _ in range(7200):  # an hour, a sample each 0.5 s
        t += 0.5
        pace = lim.requests_per_minute or 600.0
        carry += min(pace, 720.0) / 120  # what the pace sends in 0.5 s
        n = int(carry)
        carry -= n
        over = max(0.0, pace - 600.0) / pace  # the limit's share refused, over it
        answered += n
        refused += sum(rng.random() < 0.02 + over for _ in range(n))
        lim.sample(t, answered, refused)
        lowest = min(lowest, lim.requests_per_minute or 0.0)
    assert lowest > 420.0


@pytest.mark.parametrize("samples", [
    [(0.0, 0, 0), (0.5, 10, 10), (1.0, 20, 20), (1.5, 30, 30), (2.0, 40, 40), (2.5, 50, 50),
     (3.0, 58, 50), (3.5, 66, 50)],
    [(0.0, 0, 0), (0.5, 10, 10), (1.0, 20, 20), (1.5, 30, 30), (2.0, 40, 40), (2.5, 48, 48),
     (3.0, 56, 50), (3.5, 64, 50)],  # it ends between two samples
    [(0.0, 0, 0), (0.8, 16, 16), (1.6, 32, 32), (2.4, 48, 48), (3.3, 56, 50), (4.1, 64, 50)],
], ids=["sampled-each-0.5-s", "ending-mid-sample", "sampled-late"])
def test_a_storm_that_refused_everything_teaches_no_pace_from_its_latest_second(
        samples: list[tuple[float, int, int]]) -> None:
    """Every request 429'd until 2.5 s, then every one answered: over the window the storm is
    over (its 429s all came before its first answers accepted), and its latest second holds
    too few samples to tell so: taken for a storm there, it taught 190-432 a minute from the
    rows answered as it ended (sampled late, as under load, the likelier)."""
    lim = Limiter(None, None)
    assert not any(lim.sample(t, answered, refused) for t, answered, refused in samples)
    assert lim.requests_per_minute is None


def test_a_short_jobs_storm_after_its_burst_is_paced_from_its_latest_second() -> None:
    """A minute's bucket drained by a burst of 700 requests, and a short job's last rows 429'd
    again and again: 60 429s of the 760 sent over the window are no storm, and the job went
    unpaced until the window slid past the burst. Over the latest second (120 sent, 60
    refused) they are one: paced at 0.9 × the 60 a second accepted there."""
    lim = Limiter(None, None)
    for t, sent, refused in [(0.0, 0, 0), (0.5, 320, 0), (1.0, 640, 0), (1.5, 700, 20)]:
        lim.sample(t, sent, refused)
    assert not lim.paces
    assert lim.sample(2.0, 760, 60)
    assert lim.requests_per_minute == pytest.approx(60 * 60 * 0.9)


def test_a_models_probe_storms_over_its_whole_window_only() -> None:
    """A split weighs one model's probe against another's whole window: a probe storming over
    its latest second alone, beside one whose 429s a quiet start dilutes, would split models
    a shared limit refuses alike. The same counts as the short job's above set no pace."""
    lim = Limiter(None, None)
    for t, sent, refused in [(0.0, 0, 0), (0.5, 320, 0), (1.0, 640, 0), (1.5, 700, 20)]:
        lim.sample(t, sent, refused, latest=False)
    assert not lim.sample(2.0, 760, 60, latest=False)
    assert not lim.paces


@pytest.mark.anyio
@pytest.mark.paced
async def test_random_429s_teach_no_pace(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """2 % of the answers 429 with a retry-after of 0, at random, from a server with no limit
    (the benchmark's faults): no storm, no pace learnt; the run sends as it did."""
    paces = learnt_paces(monkeypatch)
    rows = 2000
    summary, counted = await run_against(tmp_path, random_429s(), rows)
    assert (summary.ok, summary.failed) == (rows, 0)
    assert counted.too_many >= 20, counted.too_many  # enough to make a storm of, were it one
    assert counted.requests <= rows * 1.05, counted.requests
    assert paces == []


# ----------------------------------------------------------------------------------------------
# 429s that are no rate limit


@pytest.mark.anyio
@pytest.mark.parametrize("error", [
    # Moonshot's: its own type for a balance used up
    {"message": "Your account org-abc <ak-xyz> is suspended, please check your plan and billing "
                "details", "type": "exceeded_current_quota_error"},
    # Zhipu's 1113: "your account is in arrears, top it up and try again"
    {"code": "1113", "message": "您的账户已欠费，请充值后重试。"},
    # a gateway's own
    {"message": "Insufficient balance: your credits are exhausted", "type": "upstream_error"},
    {"message": "user quota is not enough", "type": "new_api_error",
     "code": "insufficient_user_quota"},
])
async def test_a_429_for_the_accounts_money_stops_the_job(tmp_path: Path,
                                                          error: dict[str, str]) -> None:
    """A 429 that says the balance is used up is no rate limit: it was retried as one, each
    row 30 times, until the first 20 rows had failed as rate_limited (Moonshot's: 5,405
    requests over 316 s, then a stop that said to lower the rate), where a rerun after a
    top-up is what it needs."""

    async def broke(counted: Counted, body: dict[str, Any]) -> web.Response:
        return web.json_response({"error": error}, status=429)

    summary, counted = await run_against(tmp_path, broke, 40, concurrency=4)
    assert summary.exit_code == 4 and summary.stopped, summary.stopped
    assert "top up the balance" in summary.stopped
    assert counted.requests <= 4 + 1, counted.requests
    assert summary.ok == summary.failed == 0


@pytest.mark.anyio
@pytest.mark.parametrize("error", [
    # OpenAI's free tier's rate limit, which names billing and a payment method
    {"message": "Rate limit reached for gpt-3.5-turbo in organization org-abc on requests per "
                "min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Please add "
                "a payment method to your account to increase your rate limit. Visit "
                "https://platform.openai.com/account/billing to add a payment method.",
     "type": "requests", "code": "rate_limit_exceeded"},
    # Gemini's per-minute limit, which says "quota"
    {"code": 429, "message": "You exceeded your current quota, please check your plan and "
                             "billing details.", "status": "RESOURCE_EXHAUSTED"},
])
async def test_a_rate_limit_that_names_billing_is_waited_out(tmp_path: Path,
                                                             error: dict[str, Any]) -> None:
    async def limited_once(counted: Counted, body: dict[str, Any]) -> web.Response:
        if counted.requests == 1:
            return web.json_response({"error": error}, status=429,
                                     headers={"retry-after-ms": "50"})
        return web.json_response(completion(body))

    summary, counted = await run_against(tmp_path, limited_once, 10, concurrency=1)
    assert summary.exit_code == 0 and summary.ok == 10, summary.stopped
    assert counted.too_many == 1


# ----------------------------------------------------------------------------------------------
# Counts that are no count


def test_azures_minus_one_counts_hold_nothing() -> None:
    """Azure OpenAI answers with "x-ratelimit-limit-tokens: -1" and "remaining-tokens: -1"
    (requests' too): no limit said. The -1 left was read as a budget used up, and every answer
    held new requests a moment (3,000 rows took 59 s against a server that took 4.5 s without
    those headers)."""
    azure = {"x-ratelimit-limit-tokens": "-1", "x-ratelimit-remaining-tokens": "-1",
             "x-ratelimit-reset-tokens": "0", "x-ratelimit-limit-requests": "-1",
             "x-ratelimit-remaining-requests": "-1"}
    for rates in ((None, None), (600, 30000)):
        lim = Limiter(*rates)
        lim.observe(azure)
        assert lim.paused_s == 0.0, rates
        assert (lim.requests_per_minute, lim.tokens_per_minute) == rates
    # A bucket in debt beside its limit is still one with nothing left.
    lim = Limiter(None, None)
    lim.observe({"x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "-200"})
    assert lim.paused_s > 0.0


# ----------------------------------------------------------------------------------------------
# A request larger than a minute's tokens


@pytest.mark.anyio
async def test_requests_larger_than_a_minutes_tokens_fail_without_waiting_a_minute_each(
        tmp_path: Path) -> None:
    """OpenAI's tier 1 (30,000 tokens a minute for gpt-4.1) and max_tokens 32,000 (under
    gpt-4.1's output limit, 32,768; gpt-4o's 16,384 is refused 400 first): each request
    is refused at once (429, "Request too large"), its charge given back, but the next request,
    asleep for the whole charge's refill, went a minute later: 64 s a row, 21 minutes to the
    stop after the first 20 rows. The refund now wakes it."""
    rows = 12
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": [f"r{i:02d}" for i in range(rows)],
                  "text": [f"row {i}" for i in range(rows)]}).to_csv(inp, index=False)
    async with Simulator(SimulatorConfig(rpm=500, tpm=30000)) as sim:
        job = load_job(None, {
            "input": str(inp), "id_column": "id", "prompt": "Q: {text}", "model": "gpt-4.1",
            "max_tokens": 32000, "base_url": sim.base_url, "output": str(tmp_path / "out"),
            "requests_per_minute": 500, "tokens_per_minute": 30000})
        with anyio.fail_after(RUN_LIMIT_S):
            summary = await run_job(job, RunOptions(retry=RetryPolicy(base_s=0.01),
                                                    progress="none", handle_signals=False))
        assert sim.stats()["requests"] == rows
    assert (summary.ok, summary.failed) == (0, rows)
    assert summary.error_types == {"request_too_large": rows}


# ----------------------------------------------------------------------------------------------
# A limit raised while requests wait at the old one


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["requests", "tokens"])
async def test_a_raised_limit_lets_out_the_requests_waiting_at_the_old_one(
        monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Requests already waiting for a permit at a limit of 6 requests (or 60 tokens, a request's
    10 each) a minute when the key's tier is raised to 60,000: each waited its turn at the old
    rate, 10 s apiece (64 workers waiting held the run some 10 minutes after the raise); they
    go at the new one now."""
    monkeypatch.setattr(limiter, "RAISE_AFTER_S", 0.0)
    old, new = (said("6"), said("60000")) if kind == "requests" else (
        {"x-ratelimit-limit-tokens": "60"}, {"x-ratelimit-limit-tokens": "60000"})
    lim = Limiter(None, None)
    lim.observe(old)
    done: list[int] = []
    all_done = anyio.Event()

    async def send(i: int) -> None:
        await lim.acquire(10)
        done.append(i)
        if len(done) == 4:
            all_done.set()

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(send, i)
        await anyio.sleep(0.2)
        assert len(done) == 1  # the bucket's first, at once; the others wait
        lim.observe(new)
        lim.observe(new)  # said twice: followed
        with anyio.fail_after(5):  # at the old rate: 30 s more
            await all_done.wait()


def _stormed(at: float) -> tuple[Limiter, float, int, int]:
    """A limiter that knows no rate, sampled at ``at`` and through a storm of 429s after it: 20
    sent a half second for a second, 15 of them refused. It paces at 540 a minute, 0.9 × the
    10 a second accepted. Returns it, the time and the counts of requests sent and refused."""
    lim = Limiter(None, None)
    t, sent, refused = at, 0, 0
    lim.sample(t, sent, refused)
    for _ in range(2):
        t, sent, refused = t + 0.5, sent + 20, refused + 15
        lim.sample(t, sent, refused)
    assert lim.requests_per_minute == pytest.approx(540.0)
    return lim, t, sent, refused


def test_a_pace_learnt_after_a_long_retry_after_counts_the_time_sent_not_the_pause(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway whose 429s ask 20 s: a storm at the pace learnt from the first came one
    second after the pause, its window four parts pause to one of sending, and the pace was
    set to a fifth of the rate accepted (and raised 2 % a second from there). The time the
    limiter held requests is its own to leave out."""
    clock = [1000.0]
    monkeypatch.setattr(limiter.time, "monotonic", lambda: clock[0])
    lim, t, sent, refused = _stormed(clock[0])
    clock[0] = t
    lim.pause(20.0)  # the 429s ask 20 s
    while lim.paused_s > 0.5:  # nothing sent meanwhile
        clock[0] += 0.5
        lim.sample(clock[0], sent, refused)
    t = clock[0] + lim.paused_s  # sent from the pause's end on
    for _ in range(2):  # sending again, and a storm at 10 a second accepted again
        t, sent, refused = t + 0.5, sent + 20, refused + 15
        clock[0] = t
        lim.sample(t, sent, refused)
    assert lim.requests_per_minute == pytest.approx(540.0, rel=0.15)
    # A pace raised since, and a 429 in a window all pause: the pace is taken back a step
    # all the same (kept, each such 429 cost every request 20 s more).
    # A whole second to start from: from a clock just under 1,024 (the pause's jitter is
    # random), two half seconds later measured a span a rounding under one second, too short.
    clock[0] = math.ceil(clock[0])
    lim, t, sent, refused = _stormed(clock[0])
    for _ in range(10):
        t, sent = t + 0.5, sent + 5
        clock[0] = t
        lim.sample(t, sent, refused)
    lim._set_guess(650.0)
    lim.pause(20.0)
    for _ in range(12):
        clock[0] = t = t + 0.5
        lim.sample(t, sent, refused)
    raised = lim.requests_per_minute
    assert raised is not None and raised >= 650.0
    lim.sample(t + 0.5, sent, refused + 1)
    assert lim.requests_per_minute == pytest.approx(raised / limiter.PACE_BACK)


def test_a_429_asking_a_long_pause_at_a_learnt_pace_sets_it_back_and_holds_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway whose 429s ask a fixed 20 s: a pace learnt from its storm, raised 2 % a
    second while no 429 came, was past the limit within seconds; its 429 took it back one
    step, and the raises went on past the limit again, each 429 there holding every request
    20 s. Such a 429 sets the pace back to the storm's now, and it is not raised for a while
    (a short retry-after's 429 takes it back a step, as before)."""
    clock = [1000.0]
    monkeypatch.setattr(limiter.time, "monotonic", lambda: clock[0])
    lim, t, sent, refused = _stormed(clock[0])

    def at_the_pace(seconds: float) -> None:
        nonlocal t, sent
        for _ in range(int(seconds * 2)):  # sent at the pace, none refused
            t = clock[0] = t + 0.5
            if not lim.paused_s:
                sent += round((lim.requests_per_minute or 0.0) / 120)
            lim.sample(t, sent, refused)

    at_the_pace(20.0)
    raised = lim.requests_per_minute
    assert raised is not None and raised > 600.0  # past the limit
    t = clock[0] = t + 0.5
    lim.pause(20.0)  # its 429 asks 20 s
    refused += 1
    lim.sample(t, sent, refused)
    assert lim.requests_per_minute == pytest.approx(540.0)  # the storm's (590 one step back)
    at_the_pace(120.0)  # two minutes more at the pace, and no 429
    assert lim.requests_per_minute == pytest.approx(540.0)  # not raised past the limit again
    at_the_pace(limiter.RAISE_HOLD_S)
    assert (lim.requests_per_minute or 0.0) > 600.0  # raised again in the end: a limit raised
    # is found


@pytest.mark.anyio
@pytest.mark.paced
async def test_a_model_behind_a_hidden_limit_in_a_split_job_learns_a_pace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job asking three models: two report limits of their own (so each is paced by its own
    limiter), the third is behind a limit of 10 a second that only its 429s say (a gateway's
    in front of a server of one's own). No pace was learnt for a model's own limiter: the
    third ran free, every pause ending with all its requests sent at once (187 429s for its
    100 rows, 65 % of its requests). Its storm teaches its limiter a pace now (some 25 %, the
    first storm's most of them)."""
    paces = learnt_paces(monkeypatch)
    answered: list[float] = []
    reported = per_model_limits({"a": 600.0, "b": 6000.0}, answered)
    bucket = HiddenLimit(10.0)
    hidden = {"requests": 0, "too_many": 0}

    async def answer(counted: Counted, body: dict[str, Any]) -> web.Response:
        if body["model"] != "c":
            return await reported(counted, body)
        hidden["requests"] += 1
        if not bucket.take():
            hidden["too_many"] += 1
            return too_many("1")
        await asyncio.sleep(0.2)
        return web.json_response(completion(body))

    rows = 300
    inp = tmp_path / "models.csv"
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(rows)],
                  "model": ["c" if i % 3 == 0 else "ab"[i % 2] for i in range(rows)],
                  "text": [f"row {i}" for i in range(rows)]}).to_csv(inp, index=False)
    summary, _ = await run_against(tmp_path, answer, rows, input=str(inp), model=None,
                                   model_column="model")
    assert (summary.ok, summary.failed) == (rows, 0)
    assert paces and min(paces) <= 600.0, paces  # learnt, at the limit or under it
    assert hidden["too_many"] <= 0.35 * hidden["requests"], hidden  # 65 % before



def test_the_progress_names_each_models_pace_learnt_from_its_429s() -> None:
    """A split job's model that learnt a pace of its own from a storm of its 429s: the
    progress showed the job's limiter's pace only, none, and the run looked slower than it
    should for no reason said. Each model's is shown now, named."""
    run = models_run()
    for model, rpm in (("a", "600"), ("b", "6000")):
        run._observe(_Work(key=model, body={"model": model}, model=model, prompt_estimate=1,
                           completion_max=1), said(rpm))
    assert run.split is not None
    hidden = run._model_limiter(_Work(key="c", body={"model": "c"}, model="c", prompt_estimate=1,
                                      completion_max=1))
    t = time.monotonic()
    hidden.sample(t, 0, 0)
    hidden.sample(t + 1.5, 100, 60)  # a storm: 40 accepted in 1.5 s
    assert hidden.guessed and hidden.requests_per_minute == pytest.approx(1440.0)
    run._show_pause()
    assert "(paced at 1,440 requests a minute for c, learnt from a storm of 429s" in _postfix(
        run.counts)
    assert "pace=1,440/min(c)" in _postfix(run.counts, compact=True)
    run.split["d"] = Limiter(None, None)
    run.split["d"].sample(t, 0, 0)
    run.split["d"].sample(t + 1.5, 50, 40)
    run._show_pause()
    assert "paced at 1,440 requests a minute for c, 360 for d," in _postfix(run.counts)
    assert "pace=1,440/min(c),360/min(d)" in _postfix(run.counts, compact=True)


def test_prompts_longer_than_estimated_are_charged_as_long_after_a_few_replies() -> None:
    """Prompts whose real token counts are 4 times the estimate (a language the estimate
    under-counts), under a token limit: the estimate learnt 5 % a reply, so requests were
    charged a fraction of what the server counted for some 50 replies (84 429s for 200 rows
    at 60,000 tokens a minute, concurrency 8). The first replies weigh as a mean of those so
    far now, and from the 20th on each weighs a twentieth, as before: no jitter later."""
    from batchrunner.client import ChatResult

    run = models_run()
    item = _Work(key="r1", body={"model": "a"}, model="a", prompt_estimate=15, completion_max=16)

    def reply(prompt: int, completion: int) -> None:
        run._success(item, ChatResult("ok", "stop", prompt, completion, prompt + completion,
                                      None, None, "a", None, 100.0, {}), 31)

    for _ in range(3):
        reply(60, 7)
    assert run.prompt_ratio == pytest.approx(4.0)  # 1.43 at 5 % a reply
    assert run.completion_estimate == pytest.approx(7.0)  # from the 256 assumed
    for _ in range(40):
        reply(60, 7)
    reply(120, 47)  # one reply twice as long: a twentieth of the difference
    assert run.prompt_ratio == pytest.approx(4.0 + 4.0 / 20)
    assert run.completion_estimate == pytest.approx(7.0 + 40.0 / 20)


@pytest.mark.anyio
@pytest.mark.paced
async def test_a_hidden_limit_raised_mid_run_is_followed_after_the_hold_not_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway whose 429s ask a fixed 3 s (over PAUSE_PACED_S) in front of a limit of 10
    requests a second that only they say, raised to 40 a second once its first 429s are
    past. The pace learnt from the storm is not raised for RAISE_HOLD_S (8 s here, longer
    than the STORM_WINDOW_S with no 429 every raise waits for) after such a 429: raised
    sooner, it was past the limit again within seconds, each 429 there holding every
    request 3 s. The storm's own 429s set no hold (the first sample after them, too soon to
    measure a storm, let their long pause go): raised 5 s after them. Then it is raised (10 %
    a sample here) past the old limit, following the new one. Every time is the limiter's
    clock (time.monotonic), the server's too, never the run's wall time."""
    monkeypatch.setattr(limiter, "RAISE_HOLD_S", 8.0)
    monkeypatch.setattr(limiter, "PACE_RAISE", 1.1)
    paces: list[tuple[float, float]] = []  # (when, a pace learnt from 429s)
    learn = Limiter._set_guess

    def recorded(self: Limiter, per_minute: float) -> None:
        paces.append((time.monotonic(), per_minute))
        learn(self, per_minute)

    monkeypatch.setattr(Limiter, "_set_guess", recorded)
    refused_at: list[float] = []
    bucket = HiddenLimit(10.0)

    async def hidden(counted: Counted, body: dict[str, Any]) -> web.Response:
        if not bucket.take():
            refused_at.append(bucket.t)
            if len(refused_at) >= 10:  # its storm is past: the limit raised
                bucket.per_s = 40.0
            return too_many("3")
        await asyncio.sleep(0.1)
        return web.json_response(completion(body))

    # The raise past 600 comes some 70 rows in (the storm, its 3 s asked, the 8 s hold): 67
    # of 140 rows answered after it (128 of 200), and a raise within the hold is seen in
    # the first 70.
    rows = 140
    summary, _ = await run_against(tmp_path, hidden, rows)
    assert (summary.ok, summary.failed) == (rows, 0)
    assert refused_at and paces, (refused_at, paces)
    assert paces[0][1] <= 600.0, paces  # the storm's: under the old limit
    raises = [(t, pace) for (t, pace), (_, before) in zip(paces[1:], paces, strict=False)
              if pace > before]
    # Not raised within the hold of the latest 429 before (each asked 3 s).
    for t, pace in raises:
        latest = max(r for r in refused_at if r <= t)
        assert t - latest >= limiter.RAISE_HOLD_S, (t - latest, pace, paces)
    # And raised after it, past the old limit: the new one is followed.
    assert max(pace for _, pace in paces) > 600.0, paces


# ----------------------------------------------------------------------------------------------
# Limits said higher than the server enforces


def test_a_storm_at_a_limit_said_too_high_teaches_a_pace_the_header_does_not_undo() -> None:
    """Answers saying 1,200 requests a minute where the server enforces far fewer: a storm at
    the pace said (12 of 20 answers a second 429'd) paces at 0.9 × the 8 a second accepted.
    The same limit said again (or higher) leaves that pace; a lower one replaces it. A storm
    at the job's own rate teaches nothing, as before."""
    lim = Limiter(None, None)
    lim.observe(said("1200", "24000"))
    assert lim.requests_per_minute == 1200.0 and not lim.guessed
    lim.sample(0.0, 0, 0)
    lim.sample(0.5, 10, 6)
    assert lim.sample(1.0, 20, 12)
    assert lim.guessed and lim.requests_per_minute == pytest.approx(8 * 60 * 0.9)
    lim.observe(said("1200", "24000"))
    lim.observe(said("1500", "24000"))
    assert lim.guessed and lim.requests_per_minute == pytest.approx(8 * 60 * 0.9)
    assert lim.tokens_per_minute == 24000.0
    lim.observe(said("300"))  # said lower than the pace: taken at once
    assert lim.requests_per_minute == 300.0 and not lim.guessed
    lim = Limiter(1200, None)  # the job's own rate
    lim.observe(said("1200"))
    for t, answered, refused in [(0.0, 0, 0), (0.5, 10, 6), (1.0, 20, 12), (1.5, 30, 18)]:
        assert not lim.sample(t, answered, refused)
    assert lim.requests_per_minute == 1200.0 and not lim.guessed


@pytest.mark.anyio
@pytest.mark.paced
async def test_both_limits_said_higher_than_enforced_are_learnt_from_429s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server enforcing 10 requests and 200 tokens a second (buckets of a second's worth;
    each request charged 26 tokens, so the tokens bind at 7.7 a second) whose answers say
    twice both (1,200 requests and 24,000 tokens a minute): the job paced at what was said,
    and every pause ended in a burst of 429s to the end (300 rows: 502 of 802 requests
    429'd, 348 of them from 10 s on). The storm at the pace said teaches a pace under the
    rate accepted (66 of 366, 3 from 10 s on)."""
    paces = learnt_paces(monkeypatch)
    per_s, tokens_per_s, cost = 10.0, 200.0, 26
    requests, tokens = HiddenLimit(per_s), HiddenLimit(tokens_per_s)

    async def overstated(counted: Counted, body: dict[str, Any]) -> web.Response:
        now = time.monotonic()
        tokens.level = min(tokens_per_s, tokens.level + (now - tokens.t) * tokens_per_s)
        tokens.t = now
        headers = {"x-ratelimit-limit-requests": f"{2 * per_s * 60:.0f}",
                   "x-ratelimit-limit-tokens": f"{2 * tokens_per_s * 60:.0f}"}
        if tokens.level < cost or not requests.take():
            wait = max((cost - tokens.level) / tokens_per_s, 0.0)
            headers["retry-after-ms"] = f"{wait * 1000:.0f}"
            return web.json_response({"error": {"message": "Rate limit reached",
                                                 "code": "rate_limit_exceeded"}},
                                     status=429, headers=headers)
        tokens.level -= cost
        await asyncio.sleep(0.05)
        reply = completion(body)
        reply["usage"] = {"prompt_tokens": 10, "completion_tokens": 16, "total_tokens": cost}
        return web.json_response(reply, headers=headers)

    rows = 200
    summary, counted = await run_against(tmp_path, overstated, rows)
    assert (summary.ok, summary.failed) == (rows, 0)
    assert paces and min(paces) <= 0.9 * per_s * 60, paces  # learnt, under the limit said
    assert counted.too_many <= 0.4 * counted.requests, (counted.too_many, counted.requests)
