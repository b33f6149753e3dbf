"""A prompt over a model's long-context threshold (gemini-2.5-pro's and claude-sonnet-4-5's
200,000 tokens) is billed at the higher rate for all its tokens: in a run's results, its
reports and the estimate, as the price library bills it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import genai_prices
import pandas as pd
import pytest
from aiohttp import web

from batchrunner.cli import main
from batchrunner.pricing import PriceBook
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions
from tests.servers import run_job_file

FAST = RunOptions(retry=RetryPolicy(base_s=0.0, max_attempts=3), progress="none",
                  handle_signals=False)
KEY = "sk-test"
pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd

# Row key → the prompt tokens its reply's usage counts (1,000 completion tokens each).
PROMPTS = {"short": 100_000, "at": 200_000, "long": 300_000}


def library_total(model: str, prompt: int, completion: int) -> float:
    return float(genai_prices.calc_price(
        genai_prices.Usage(input_tokens=prompt, output_tokens=completion), model).total_price)


def usage_handler(model: str) -> Any:
    """A server whose replies count the prompt tokens ``PROMPTS`` gives their row."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        prompt = PROMPTS[body["messages"][-1]["content"]]
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "model": model,
            "usage": {"prompt_tokens": prompt, "completion_tokens": 1_000,
                      "total_tokens": prompt + 1_000},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}]})

    return handler


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["gemini-2.5-pro", "claude-sonnet-4-5"])
async def test_a_row_over_the_threshold_costs_the_long_context_price(
        tmp_path: Path, model: str) -> None:
    """A 300,000-token prompt to gemini-2.5-pro cost $0.385 in the results (all at the base
    $1.25 / $10) where Google bills $0.765 ($2.50 / $15 over 200,000 prompt tokens)."""
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"{k},{k}\n" for k in PROMPTS))
    job = tmp_path / "job.toml"
    job.write_text(f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "{model}"\n'
                   'prompt = "{text}"\n[output]\ndir = "out"\n')
    s = await run_job_file(usage_handler(model), job, FAST)
    out = tmp_path / "out"
    df = pd.read_parquet(out / "results.parquet").set_index("id")
    assert s.exit_code == 0
    expected = {k: library_total(model, p, 1_000) for k, p in PROMPTS.items()}
    assert df["cost_usd"].to_dict() == {k: pytest.approx(v) for k, v in expected.items()}
    base = PriceBook().price(model)
    assert base is not None
    # exactly at the threshold: the base price; over it, more than the base for every token
    assert expected["at"] == pytest.approx((200_000 * base.input + 1_000 * base.output) / 1e6)
    assert expected["long"] > 1.5 * (300_000 * base.input + 1_000 * base.output) / 1e6
    assert s.cost_usd == pytest.approx(sum(expected.values()))
    report = json.loads((out / "cost_report.json").read_text())
    assert report["cost_usd"] == pytest.approx(sum(expected.values()))
    over = report["by_model"][model]["price"]["long_context"]
    assert [tier["over"] for tier in over] == [200_000]
    if model == "gemini-2.5-pro":
        assert over[0]["input"] == 2.5 and over[0]["output"] == 15.0
        assert "1.25 / 0.125 / 10 (over 200,000 prompt tokens 2.5 / 0.25 / 15)" in (
            out / "cost_report.md").read_text()


def estimated(out: str, model: str) -> tuple[int, int, float]:
    """The prompt and completion tokens and the cost the estimate's table gives ``model``."""
    row = next(line.split() for line in out.splitlines() if line.strip().startswith(model))
    return int(row[2].replace(",", "")), int(row[3].replace(",", "")), float(row[4][1:])


def test_the_estimate_prices_each_row_at_its_own_prompts_tier(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The estimate prices a model's rows summed: 300 short prompts of 1,000 tokens are no
    300,000-token one (the base price), while a prompt of its own over 200,000 tokens is."""
    base = PriceBook().price("gemini-2.5-pro")
    assert base is not None and base.tiers
    over = base.tiers[0][1]
    for name, rows in (("short", ["word " * 800] * 300), ("long", ["word " * 220_000])):
        inp = tmp_path / f"{name}.csv"
        inp.write_text("id,text\n" + "".join(f"{i},{text}\n" for i, text in enumerate(rows)))
        job = tmp_path / f"{name}.toml"
        job.write_text(f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\n'
                       'model = "gemini-2.5-pro"\nprompt = "{text}"\n'
                       f'[output]\ndir = "out-{name}"\n')
        capsys.readouterr()
        assert main(["estimate", str(job), "--max-tokens", "100"]) == 0
        prompt, completion, cost = estimated(capsys.readouterr().out, "gemini-2.5-pro")
        price = base if name == "short" else over
        assert prompt > 200_000, name
        assert cost == pytest.approx((prompt * price.input + completion * price.output) / 1e6,
                                     abs=0.01), name
