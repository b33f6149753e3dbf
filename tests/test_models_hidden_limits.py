"""Mixed-model jobs (a model column) whose models' limits are each their own, said by headers
for some models and by 429s alone for others (a gateway's per model): each model is paced at
its own, and the rows of one model waiting for its permits leave the workers to the others.
Runs against small servers on 127.0.0.1; what is asserted is counted by the server (requests,
429s, the order of its answers), never the run's wall time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiohttp import web

from batchrunner import runner
from batchrunner.limiter import Limiter, TokenBucket
from batchrunner.runner import _Run
from tests.test_limits_real import learnt_paces, random_429s
from tests.test_ratelimit_headers import Counted, completion, per_model_limits, run_against

# A key in the environment, tmp_path as cwd; paced: each checks a pace against the clock.
pytestmark = [pytest.mark.usefixtures("job_env"), pytest.mark.paced]

KEY = "sk-test-models-hidden-0123456789"


def models_input(tmp_path: Path, models: list[str]) -> str:
    """An input of a row for each of ``models``, in turn (columns id, model, text)."""
    inp = tmp_path / "models.csv"
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(len(models))], "model": models,
                  "text": [f"row {i}" for i in range(len(models))]}).to_csv(inp, index=False)
    return str(inp)


def watch_splits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that has an item for each time a run splits its job's pace by model."""
    splits: list[int] = []
    split = _Run._split

    def recorded(self: _Run, *args: Any) -> None:
        splits.append(1)
        split(self, *args)

    monkeypatch.setattr(_Run, "_split", recorded)
    return splits


def in_order(answer: Any, seen: list[str]) -> Any:
    """``answer``, recording the model of each reply that is not a 429, in order; each request
    answered after 10 ms (a few are in flight at once)."""

    async def recorded(counted: Counted, body: dict[str, Any]) -> web.Response:
        await asyncio.sleep(0.01)
        resp: web.Response = await answer(counted, body)
        if resp.status == 200:
            seen.append(body["model"])
        return resp

    return recorded


@pytest.mark.anyio
async def test_a_model_with_no_limit_does_not_keep_the_others_rows_in_the_workers(
        tmp_path: Path) -> None:
    """A split job (two models report limits of their own: 120 and 6,000 a minute) with a
    third model whose answers report none (a server of one's own behind the same gateway).
    While any model had no pace, no row was parked: each worker that took a slow row waited
    in it for the slow model's permit, and at concurrency 4 the other models' rows went at
    the slow one's pace (17 of its 20 answers came before the others' last). The slow rows
    wait in their model's queue now, once the third model has answered and drawn no 429
    for a second."""
    seen: list[str] = []
    answer = in_order(per_model_limits({"slow": 120.0, "fast": 6000.0}, []), seen)
    rows = 100
    models = ["slow" if i % 5 == 0 else ("fast", "free")[i % 2] for i in range(rows)]
    summary, counted = await run_against(tmp_path, answer, rows,
                                         input=models_input(tmp_path, models), model=None,
                                         model_column="model", concurrency=4)
    assert (summary.ok, summary.failed) == (rows, 0)
    assert len(seen) == rows and counted.requests == rows + counted.too_many
    last_other = max(i for i, model in enumerate(seen) if model != "slow")
    slow_before = seen[:last_other].count("slow")
    # 17 of 20 before; a few now: the free model runs free once it has answered and drawn
    # no 429 for a second, the slow model's rows kept in the workers until then.
    assert slow_before <= 8, slow_before


@pytest.mark.anyio
@pytest.mark.parametrize(("tune_s", "fast_every"), [(None, 3), (1.5, 3), (None, 8)],
                         ids=["sampled-as-ever", "sampled-late", "fast-thinned"])
async def test_models_whose_limits_only_429s_say_are_each_paced_at_their_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tune_s: float | None,
        fast_every: int) -> None:
    """A gateway limiting each model on its own (600 and 6,000 a minute, from buckets of a
    second's worth) and saying so with 429s alone, which name no limit but come for the
    row's model. The job never split: its one pace, the pauses and the pace learnt from the
    slow model's 429s, held the fast model's rows too (all 100 of the slow model's answers
    came before the fast model's last; 429 429s). The slow model's storm, with the fast
    model's requests answered meanwhile, splits the job now, the slow model paced at a pace
    of its own learnt from it (some 24 before; 200-270 429s). Its 429s to requests sent
    before the split counted as refusals of none sent, and its next storm's pace fell to a
    fraction of its limit (24 to 150 a minute), the run taking 30 to 60 s where 10 do.
    Sampled late (every 1.5 s, as a busy machine's ticks come), the 429s before a model's
    first sample were its window's start: the storm was measured a second later, when the
    job's pauses held the fast model's answers under twenty a window, and the job never
    split (4 runs of 4). So, with a fast row in eight, were the fast model's answers between
    the pauses: its few requests are weighed against the slow model's storm's share now (at
    four fifths of them refused, 8 with one refused at most are no limit the models share).
    Beside busy loops (load 10-12 on 2 cores) the split itself came late, after 27 to 40 of
    the slow model's answers (2 to 6.5 s in; one slow answer to two fast till then, as
    unsplit), and 29 to 52 came before the fast model's last, 2 to 9 of them after the
    split: the bound is the unsplit job's 100 less a third."""
    if tune_s is not None:
        monkeypatch.setattr(runner, "TUNE_EVERY_S", tune_s)
    splits = watch_splits(monkeypatch)
    paces = learnt_paces(monkeypatch)
    seen: list[str] = []
    answer = in_order(per_model_limits({"slow": 600.0, "fast": 6000.0}, [], hidden=True), seen)
    if fast_every == 3:
        rows = 300
        models = ["slow" if i % 3 == 0 else "fast" for i in range(rows)]
    else:  # a fast row in eight
        rows = 120
        models = ["fast" if i % fast_every == 0 else "slow" for i in range(rows)]
    summary, counted = await run_against(tmp_path, answer, rows,
                                         input=models_input(tmp_path, models), model=None,
                                         model_column="model")
    assert (summary.ok, summary.failed) == (rows, 0)
    assert len(seen) == rows and counted.too_many > 0
    assert splits, "not split"
    last_fast = max(i for i, model in enumerate(seen) if model == "fast")
    slow_before = seen[:last_fast].count("slow")
    assert slow_before <= 65, slow_before  # all 100 before; some 24 now, 52 on a busy machine
    assert paces and min(paces) >= 300.0, paces  # none far under the slow model's 600


@pytest.mark.anyio
async def test_random_429s_in_a_job_of_many_models_neither_split_it_nor_pace_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 % of the answers 429 at random (retry-after 0) from a server with no limit, in a job
    whose rows ask two models: a model's share of them is no storm, so the job is not split
    and no pace is learnt."""
    splits = watch_splits(monkeypatch)
    paces = learnt_paces(monkeypatch)
    rows = 1500
    models = ["slow" if i % 5 == 0 else "fast" for i in range(rows)]
    summary, counted = await run_against(tmp_path, random_429s(), rows,
                                         input=models_input(tmp_path, models), model=None,
                                         model_column="model")
    assert (summary.ok, summary.failed) == (rows, 0)
    assert counted.too_many >= 15, counted.too_many
    assert splits == [] and paces == []


@pytest.mark.anyio
async def test_a_row_parked_again_after_a_429_gives_back_the_jobs_request_permit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A split job that sets its own requests_per_minute: a row answered 429 takes the job's
    permit again and waits for its model's parked, giving back the tokens it took but not
    the request permit, so each such 429 cost the job one request of its rate, never sent.
    Every request the server is sent now takes one permit of the job's, and no more."""
    buckets: dict[int, list[int]] = {}  # id of a bucket: [permits taken, given back]
    acquire, adjust = TokenBucket.acquire, TokenBucket.adjust

    async def counted_acquire(self: TokenBucket, n: float) -> None:
        await acquire(self, n)
        buckets.setdefault(id(self), [0, 0])[0] += 1

    def counted_adjust(self: TokenBucket, n: float) -> None:
        adjust(self, n)
        buckets.setdefault(id(self), [0, 0])[1] += 1

    monkeypatch.setattr(TokenBucket, "acquire", counted_acquire)
    monkeypatch.setattr(TokenBucket, "adjust", counted_adjust)
    jobs: list[Limiter] = []
    init = Limiter.__init__

    def made(self: Limiter, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if args[0] == 6000:  # the job's own
            jobs.append(self)

    monkeypatch.setattr(Limiter, "__init__", made)
    # 10 slow rows: the 429s that park a row again come in the first burst (with the permit
    # not given back, 5 permits over at 100 rows, as at 50)
    rows = 50
    models = ["slow" if i % 5 == 0 else "fast" for i in range(rows)]
    summary, counted = await run_against(
        tmp_path, per_model_limits({"slow": 120.0, "fast": 6000.0}, []), rows,
        input=models_input(tmp_path, models), model=None, model_column="model",
        requests_per_minute=6000)
    assert (summary.ok, summary.failed) == (rows, 0)
    assert counted.too_many > 0
    assert len(jobs) == 1 and jobs[0]._requests is not None
    taken, given = buckets[id(jobs[0]._requests)]
    assert taken - given == counted.requests, (taken, given, counted.requests)


@pytest.mark.anyio
async def test_idle_workers_wake_when_a_parked_rows_permit_is_due_not_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A split job whose fast model's rows are done while the slow model's (600 a minute,
    its own) wait parked for their permits, 16 workers idle meanwhile. Each idle worker
    looked again every 20 ms at most, and all of them when a permit was due: hundreds of
    wake-ups that found nothing to send. One worker sleeps until the next permit is due
    now, the others until there is work: about two wake-ups a parked row."""
    looks = [0, 0]  # the workers' looks for a row to send: all, and those that found none
    next_item = _Run._next_item

    def counted(self: _Run) -> Any:
        item = next_item(self)
        looks[0] += 1
        looks[1] += item is None
        return item

    monkeypatch.setattr(_Run, "_next_item", counted)
    rows = 60
    models = ["slow" if i % 2 == 0 else "fast" for i in range(rows)]
    summary, _ = await run_against(
        tmp_path, per_model_limits({"slow": 600.0, "fast": 60_000.0}, []), rows,
        input=models_input(tmp_path, models), model=None, model_column="model",
        concurrency=16)
    assert (summary.ok, summary.failed) == (rows, 0)
    slow = rows // 2
    assert looks[1] <= 4 * slow, looks


@pytest.mark.anyio
async def test_a_models_first_request_goes_past_the_pace_another_models_answers_taught(
        tmp_path: Path) -> None:
    """Rows sorted by model, the slow model's first (80 at 600 a minute, its answers say),
    then the fast model's (6,000 a minute): the job's one pace, learnt from the slow model's
    answers, held the fast model's rows behind the slow one's until they were all through,
    its own limit unheard of till then. A model's first request goes past that pace now:
    its answer says its limit, and its rows go at their own pace beside the slow one's."""
    seen: list[str] = []
    limits = {"slow": 600.0, "fast": 6000.0}

    async def answer(counted: Any, body: dict[str, Any]) -> web.Response:
        # A bucket that starts full (a minute's worth, as OpenAI's and the simulator's): no
        # 429 for these few rows, the headers alone say each model's limit.
        return web.json_response(completion(body), headers={
            "x-ratelimit-limit-requests": f"{limits[body['model']]:.0f}"})

    rows = 120
    models = ["slow" if i < 80 else "fast" for i in range(rows)]
    summary, counted = await run_against(tmp_path, in_order(answer, seen), rows,
                                         input=models_input(tmp_path, models), model=None,
                                         model_column="model", concurrency=32)
    assert (summary.ok, summary.failed) == (rows, 0)
    assert counted.too_many == 0
    # All 80 slow answers came first; the first fast one after the first wave of 32 and a
    # second's worth of the slow model's pace now (42).
    assert seen.index("fast") <= 50, seen.index("fast")
