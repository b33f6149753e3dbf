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

from tests.test_ratelimit_headers import Counted, per_model_limits, run_against

pytestmark = pytest.mark.usefixtures("job_env")  # a key in the environment, tmp_path as cwd

KEY = "sk-test-models-hidden-0123456789"


def models_input(tmp_path: Path, models: list[str]) -> str:
    """An input of a row for each of ``models``, in turn (columns id, model, text)."""
    inp = tmp_path / "models.csv"
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(len(models))], "model": models,
                  "text": [f"row {i}" for i in range(len(models))]}).to_csv(inp, index=False)
    return str(inp)


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
