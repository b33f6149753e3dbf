"""One job over many models through one gateway URL, as the gateways' references have it: a
model column mixing providers, one of which the gateway cannot serve."""

from __future__ import annotations

import asyncio
import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batchrunner.cli import main
from tests.test_faults import (
    KEY,  # noqa: F401  (the job_env fixture reads the module's KEY)
    FaultServer,
    error_body,
    job_for,
    models_csv,
    results,
    run,
)

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd

MISSING = "qwen3-coder-plus"


async def no_channel_for_one_model(srv: FaultServer, request: web.BaseRequest,
                                   body: dict[str, Any]) -> web.StreamResponse | None:
    """A gateway with no channel for one model: its 503 ``model_not_found`` (as a gateway
    words it), and answers for the other models."""
    if body.get("model") != MISSING:
        await asyncio.sleep(0.05)  # an answer takes a while; the gateway's refusal does not
        return None
    return web.json_response(error_body(
        f"No available channel for model {MISSING} under group default (request id: 20251201)",
        "new_api_error", "model_not_found"), status=503)


@pytest.mark.anyio
async def test_a_model_the_gateway_has_no_channel_for_holds_back_no_other_models_rows(
        tmp_path: Path) -> None:
    """A gateway's 503 for one model of a mixed job, while its other models are answered, is
    that model's, not a server away: its rows are tried max_attempts times each and fail, and
    the other models' rows go on, each sent once. Its 503s shut the job's sends to one probe at
    a time (a 1,000-row job, a tenth of its rows asking for that model, took 248 s where its
    900 others take 2) and its rows' tries under that wait were not counted (up to 13 tries of
    a row with max_attempts 6)."""
    models = [MISSING if i % 10 == 3 else ("gpt-4o", "claude-opus-4-6")[i % 2]
              for i in range(200)]
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(no_channel_for_one_model) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=32),
                      max_attempts=3)
        sent = srv.requests
    assert s.exit_code == 3 and not s.stopped, s.stopped
    df = results(tmp_path)
    missing = df[df["model"] == MISSING]
    assert len(missing) == 20 and (missing["status"] == "failed").all()
    assert set(missing["error_type"]) == {"http_503"}
    assert missing["error_message"].str.contains(f"No available channel for model {MISSING}").all()
    assert (missing["attempts"] == 3).all(), missing["attempts"].value_counts()
    others = df[df["model"] != MISSING]
    assert (others["status"] == "ok").all() and (others["attempts"] == 1).all()
    assert sent == 180 + 20 * 3


def test_the_estimate_names_each_model_it_has_no_price_for_and_what_to_add(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job over the gateway's models, two of which no price is known for under the names the
    gateway uses: the estimate's cost line gave "unknown for some models (add
    [prices."MODEL"] ...)", naming none of them, nor what an entry holds, nor what the priced
    ones come to. It now gives the priced models' cost and names each model to price."""
    models = ["gpt-4o", "deepseek-v3-1-250821", "claude-opus-4-6", MISSING] * 2
    inp = models_csv(tmp_path / "in.csv", models)
    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel_column = "model"\n'
        'prompt = "{text}"\nmax_tokens = 100\n[endpoint]\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[output]\ndir = "out"\n')
    assert main(["estimate", str(tmp_path / "job.toml")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("  estimated cost: "))
    # gpt-4o: 2 rows × (10 prompt tokens at $2.50 + 100 completion at $10) per 1M tokens;
    # claude-opus-4-6: 2 × (10 at $5 + 100 at $25)
    version = importlib.metadata.version("genai-prices")
    assert line == (f"  estimated cost: $0.00715 for the models priced (genai-prices {version}); "
                    "unknown for deepseek-v3-1-250821 and qwen3-coder-plus: add "
                    '[prices."deepseek-v3-1-250821"] and [prices."qwen3-coder-plus"], each with '
                    "input and output (USD per 1M tokens), to a job file"), out
