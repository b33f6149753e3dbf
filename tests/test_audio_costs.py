"""Audio tokens (a spoken answer, ``modalities`` with ``audio``; an ``input_audio`` part) are
priced at the model's audio prices, carried in the results and named in the reports."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from batchrunner.cli import main
from batchrunner.config import load_job
from batchrunner.journal import Journal
from batchrunner.pricing import PriceBook
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, format_summary, run_job
from batchrunner.simulator import Simulator, SimulatorConfig
from batchrunner.status import format_status
from tests.servers import run_job_file

FAST = RunOptions(retry=RetryPolicy(base_s=0.0, max_attempts=3), progress="none",
                  handle_signals=False)
KEY = "sk-test"
pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd

# Row key → (prompt audio tokens, completion audio tokens) its reply counts.
AUDIO = {"a": (0, 800), "b": (300, 1_600), "c": (0, 0)}
TRANSCRIPT = "Hello there, here is your answer."


def audio_handler(model: str, stream: bool) -> Any:
    """A server answering as OpenAI's gpt-audio does: a spoken answer (message.audio, content
    null; a stream's delta.audio), its usage counting audio tokens in the details."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        assert body["modalities"] == ["text", "audio"]
        heard, spoken = AUDIO[body["messages"][-1]["content"]]
        usage = {"prompt_tokens": 1_000, "completion_tokens": 2_000, "total_tokens": 3_000,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": heard},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": spoken,
                                               "text_tokens": 2_000 - spoken}}
        head = {"id": "chatcmpl-1", "model": model}
        audio = {"id": "audio_1", "data": "UklGRg==", "expires_at": 1_900_000_000,
                 "transcript": TRANSCRIPT}
        if not stream:
            return web.json_response({
                **head, "object": "chat.completion", "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None,
                                                     "audio": audio},
                             "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        words = [TRANSCRIPT[:10], TRANSCRIPT[10:]]
        for chunk in ({"choices": [{"index": 0, "delta": {"role": "assistant", "audio": {
                          "id": "audio_1", "data": "UklGRg==", "transcript": words[0]}}}]},
                      {"choices": [{"index": 0, "delta": {"audio": {"transcript": words[1]}}}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                      {"choices": [], "usage": usage}):
            await resp.write(b"data: " + json.dumps({**head, **chunk}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return handler


def audio_job(tmp_path: Path, model: str, stream: bool, prices: str = "") -> Path:
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"{k},{k}\n" for k in AUDIO))
    job = tmp_path / "job.toml"
    job.write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "{model}"\n'
        f'prompt = "{{text}}"\nstream = {str(stream).lower()}\n[request.extra]\n'
        'modalities = ["text", "audio"]\naudio = { voice = "alloy", format = "wav" }\n'
        f'[output]\ndir = "out"\n{prices}')
    return job


def expected(book: PriceBook, model: str) -> list[float]:
    out = []
    for heard, spoken in AUDIO.values():
        cost = book.cost(model, prompt_tokens=1_000, completion_tokens=2_000,
                         audio_prompt_tokens=heard, audio_completion_tokens=spoken)
        assert cost is not None
        out.append(cost)
    return out


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
async def test_a_spoken_answer_is_priced_at_the_audio_prices(tmp_path: Path,
                                                             stream: bool) -> None:
    """A gpt-audio job (modalities text and audio) was priced as text: its spoken tokens at
    $10 per 1M where OpenAI bills $64, the job's cost, the budget and the reports about a fifth
    of what was billed. Each row is now priced at the audio prices; the results carry the
    audio counts, cost_report.json each model's, and both reports say the prices used."""
    s = await run_job_file(audio_handler("gpt-audio", stream),
                           audio_job(tmp_path, "gpt-audio", stream), FAST)
    book = PriceBook()
    costs = expected(book, "gpt-audio")
    text = book.cost("gpt-audio", prompt_tokens=1_000, completion_tokens=2_000)
    assert text is not None and costs[0] > 2.5 * text  # 800 of 2,000 tokens spoken: 2.9x
    out = tmp_path / "out"
    df = pd.read_parquet(out / "results.parquet")
    assert s.exit_code == 0 and df["status"].tolist() == ["ok"] * 3
    assert df["content"].tolist() == [TRANSCRIPT] * 3  # the transcript, the content null
    assert df["cost_usd"].tolist() == [pytest.approx(c) for c in costs]
    assert s.cost_usd == pytest.approx(sum(costs))
    assert pd.isna(df["audio_prompt_tokens"][0]) and df["audio_prompt_tokens"][1] == 300
    assert df["audio_completion_tokens"][0] == 800 and df["audio_completion_tokens"][1] == 1_600
    assert pd.isna(df["audio_completion_tokens"][2])  # audio_tokens 0: no audio
    report = json.loads((out / "cost_report.json").read_text())
    assert report["cost_usd"] == pytest.approx(sum(costs))
    m = report["by_model"]["gpt-audio"]
    assert m["audio_tokens"] == {"rows": 2, "prompt": 300, "completion": 2_400,
                                 "at_text_price": []}
    assert m["price"]["input_audio"] == 32.0 and m["price"]["output_audio"] == 64.0
    line = ("gpt-audio: 2 rows with audio tokens (300 of the prompt and 2,400 of the "
            "completion), priced at its audio prices: 32 in / 64 out.")
    assert f"- {line}" in (out / "cost_report.md").read_text()
    assert html.escape(line) in (out / "report.html").read_text()
    assert not any("audio" in w for w in report["warnings"])


@pytest.mark.anyio
async def test_audio_tokens_of_a_model_with_no_audio_price_are_said_to_be_priced_as_text(
        tmp_path: Path) -> None:
    """gpt-4o-audio-preview has no audio price in the price library: its audio tokens are
    priced as text, as before, but the summary, status and reports say so and what to set,
    where they said nothing of a cost several times too low."""
    s = await run_job_file(audio_handler("gpt-4o-audio-preview", False),
                           audio_job(tmp_path, "gpt-4o-audio-preview", False), FAST)
    book = PriceBook()
    costs = expected(book, "gpt-4o-audio-preview")
    assert costs[0] == book.cost("gpt-4o-audio-preview", prompt_tokens=1_000,
                                 completion_tokens=2_000)
    out = tmp_path / "out"
    assert pd.read_parquet(out / "results.parquet")["cost_usd"].tolist() == [
        pytest.approx(c) for c in costs]
    report = json.loads((out / "cost_report.json").read_text())
    m = report["by_model"]["gpt-4o-audio-preview"]
    assert m["audio_tokens"]["at_text_price"] == ["prompt", "completion"]
    said = ("model 'gpt-4o-audio-preview': 300 of the prompt and 2,400 of the completion audio "
            "tokens priced as text tokens, no audio price known for it")
    fix = 'add input_audio and output_audio (USD per 1M tokens) to [prices."gpt-4o-audio-preview"]'
    assert [w for w in report["warnings"] if said in w and fix in w]
    assert said in (out / "cost_report.md").read_text()
    assert said in format_summary(s)
    status = format_status(out)
    assert "gpt-4o-audio-preview" in status and "priced as text" in status
    line = ("gpt-4o-audio-preview: 2 rows with audio tokens (300 of the prompt and 2,400 of the "
            "completion), priced as text tokens: no audio price known, the cost is low.")
    assert f"- {line}" in (out / "cost_report.md").read_text()


@pytest.mark.anyio
async def test_a_job_s_own_audio_prices_price_the_audio_tokens(tmp_path: Path) -> None:
    """A job's [prices] entry takes input_audio and output_audio: the audio tokens of a model
    the library has no audio price for are priced at them, and nothing is said to be low."""
    prices = ('[prices."gpt-4o-audio-preview"]\ninput = 2.5\noutput = 10\ninput_audio = 40\n'
              "output_audio = 80\n")
    s = await run_job_file(audio_handler("gpt-4o-audio-preview", True),
                           audio_job(tmp_path, "gpt-4o-audio-preview", True, prices), FAST)
    # 1,000 prompt tokens (300 of them audio) and 2,000 completion tokens (1,600 audio)
    assert s.cost_usd == pytest.approx(
        (1_000 * 2.5 + 2_000 * 10 + (1_000 * 2.5 + 800 * 70 + 2_000 * 10)
         + (700 * 2.5 + 300 * 40 + 400 * 10 + 1_600 * 80)) / 1e6)
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["by_model"]["gpt-4o-audio-preview"]["audio_tokens"]["at_text_price"] == []
    assert not any("audio" in w for w in report["warnings"])


@pytest.mark.anyio
async def test_the_simulator_answers_a_request_for_audio_with_a_spoken_answer(
        tmp_path: Path) -> None:
    """``modalities`` with audio: message.audio with the transcript, content null, and audio
    tokens among the completion's, streamed or not; priced at gpt-audio's audio price."""
    for stream in (False, True):
        (here := tmp_path / f"stream-{stream}").mkdir()
        job = audio_job(here, "gpt-audio", stream)
        async with Simulator(SimulatorConfig(reply_tokens=40)) as sim:
            s = await run_job(load_job(job, {"base_url": sim.base_url}), FAST)
        df = pd.read_parquet(here / "out" / "results.parquet")
        assert s.exit_code == 0 and df["status"].eq("ok").all()
        assert df["content"].str.startswith("Echo: ").all()  # the transcript
        assert df["audio_completion_tokens"].tolist() == [32] * 3  # 4/5 of 40
        book = PriceBook()
        assert df["cost_usd"].tolist() == [pytest.approx(book.cost(
            "gpt-audio", prompt_tokens=p, completion_tokens=40, audio_completion_tokens=32))
            for p in df["prompt_tokens"]]


@pytest.mark.anyio
async def test_a_journal_written_before_the_audio_columns_is_read_resumed_and_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An output directory of a version before the audio columns: status, report, a resume and
    a rerun (--rerun-where) read it (the columns as nulls), beside new records that have
    them."""
    job = audio_job(tmp_path, "gpt-audio", False)
    first = await run_job_file(audio_handler("gpt-audio", False), job,
                               RunOptions(retry=FAST.retry, progress="none",
                                          handle_signals=False, limit=2))
    assert first.ok == 2
    out = tmp_path / "out"
    for seg in Journal(out).segments():
        table = pq.read_table(seg)
        pq.write_table(table.drop_columns(["audio_prompt_tokens", "audio_completion_tokens"]),
                       seg)
    assert "2 of 3 rows finished" in format_status(out)
    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    report = json.loads((out / "cost_report.json").read_text())
    assert "audio_tokens" not in report["by_model"]["gpt-audio"]
    assert "audio_completion_tokens" not in pd.read_parquet(out / "results.parquet").columns
    s = await run_job_file(audio_handler("gpt-audio", False), job, FAST)
    assert s.exit_code == 0 and s.sent == 1 and s.ok == 3
    # row c's reply said 0, the old records nothing: no row has audio tokens to show
    assert "audio_completion_tokens" not in pd.read_parquet(out / "results.parquet").columns
    again = await run_job_file(audio_handler("gpt-audio", False), job, RunOptions(
        retry=FAST.retry, progress="none", handle_signals=False, rerun_where="key == 'a'",
        force=True))
    assert again.exit_code == 0 and again.sent == 1
    df = pd.read_parquet(out / "results.parquet")
    assert df["audio_completion_tokens"].tolist()[0] == 800
    assert pd.isna(df["audio_completion_tokens"][1])  # its old record, read as null
    report = json.loads((out / "cost_report.json").read_text())
    assert report["by_model"]["gpt-audio"]["audio_tokens"]["rows"] == 1


def test_the_estimate_prices_a_spoken_answer_at_the_audio_price(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job asking for spoken answers was estimated at the text output price: gpt-audio's
    $10 per 1M where its audio costs $64, a sixth of what it would cost."""
    job = audio_job(tmp_path, "gpt-audio", False)
    capsys.readouterr()
    assert main(["estimate", str(job), "--max-tokens", "1000", "--simulator"]) == 0
    out = capsys.readouterr().out
    shown = float(out.split("estimated cost: $", 1)[1].split()[0])
    price = PriceBook().price("gpt-audio")
    assert price is not None and price.output_audio is not None
    at_audio = 3 * 1_000 * price.output_audio / 1e6  # three rows' completions, all audio
    assert at_audio <= shown < at_audio + 0.01, out


@pytest.mark.anyio
async def test_the_budget_holds_a_request_for_a_spoken_answer_at_the_audio_price(
        tmp_path: Path) -> None:
    """The budget held a request for a spoken answer at the text output price (gpt-audio's
    $10 per 1M, its audio $64): three went out at once under a budget that had room for one
    at the audio price, and the spend passed the budget. Each is held at the audio price."""
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\n" + "".join(f"{k},{k}\n" for k in AUDIO))
    sent: list[str] = []
    handler = audio_handler("gpt-audio", False)

    async def counting(request: web.BaseRequest) -> web.StreamResponse:
        sent.append((await request.json())["messages"][-1]["content"])
        return await handler(request)

    (tmp_path / "job.toml").write_text(
        f'[input]\npath = "{inp}"\nid_column = "id"\n[request]\nmodel = "gpt-audio"\n'
        'prompt = "{text}"\nmax_tokens = 1000\n[request.extra]\n'
        'modalities = ["text", "audio"]\naudio = { voice = "alloy", format = "wav" }\n'
        '[limits]\nmax_cost_usd = 0.1\nconcurrency = 3\n[output]\ndir = "out"\n')
    s = await run_job_file(counting, tmp_path / "job.toml", FAST)
    # Held at $0.064 each (1,000 tokens at $64 per 1M), one fits; the next after its answer
    # ($0.066 spent) would pass $0.1.
    assert s.exit_code == 4 and s.stopped is not None and "budget reached" in s.stopped
    assert sent == ["a"], sent
