"""A nightly job against a self-hosted vLLM (or SGLang, llama.cpp's server, Ollama): replies,
errors and settings as such a server gives them, each test run as a job against a server
written here (``FaultServer``, on 127.0.0.1 at a random port)."""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pandas as pd
import pytest
from aiohttp import web

from batchrunner import status as status_module
from batchrunner.client import _thought_apart
from batchrunner.config import JobConfig, load_job
from batchrunner.errors import ConfigError
from batchrunner.progress import Counts, _postfix
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunSummary, _remember_endpoint, run_job
from batchrunner.simulator import (
    Simulator,
    SimulatorConfig,
    SimulatorThread,
    add_arguments,
    config_from_args,
)
from batchrunner.status import format_status
from tests.processes import reaped
from tests.servers import serve_on_loopback
from tests.test_cli import cli, job_args, one_error_line
from tests.test_faults import (
    RUN_LIMIT_S,
    FaultServer,
    closed_port,
    job_for,
    make_csv,
    options,
    report,
    results,
    run,
    sse,
)
from tests.test_secrets import leaks_in_files

KEY = "sk-test-vllm-SECRET-a81c3e"  # the needle test_secrets.leaks_in_files looks for

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd

MODEL = "Qwen/Qwen3-8B"  # served under its Hugging Face path, as vLLM serves by default
ANSWER = '{"label": "billing"}'
SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}},
          "required": ["label"]}


def vllm_reply(body: dict[str, Any], content: str, finish: str = "stop") -> dict[str, Any]:
    """A non-stream completion as vLLM sends it: its own fields beside OpenAI's, the model
    under the name it serves, ``reasoning_content`` null (no reasoning parser) and
    ``prompt_tokens_details`` null."""
    return {"id": "chatcmpl-5f0e", "object": "chat.completion", "created": 1764614400,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                                 "refusal": None, "annotations": None,
                                                 "audio": None, "function_call": None,
                                                 "tool_calls": [], "reasoning_content": None},
                         "logprobs": None, "finish_reason": finish, "stop_reason": None}],
            "service_tier": None, "system_fingerprint": None,
            "usage": {"prompt_tokens": 17, "total_tokens": 57, "completion_tokens": 40,
                      "prompt_tokens_details": None},
            "prompt_logprobs": None, "kv_transfer_params": None}


def vllm_stream(body: dict[str, Any], pieces: list[str]) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-5f0e", "object": "chat.completion.chunk",
                "created": 1764614400, "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in pieces]
    events.append(chunk({"content": ""}, "stop"))
    usage = {"id": "chatcmpl-5f0e", "object": "chat.completion.chunk", "created": 1764614400,
             "model": body["model"], "choices": [],
             "usage": {"prompt_tokens": 17, "total_tokens": 57, "completion_tokens": 40}}
    return b"".join(sse(e) for e in [*events, usage]) + b"data: [DONE]\n\n"


# A reasoning model served without --reasoning-parser: its thinking comes inside the content.
# Qwen3 writes both tags; DeepSeek-R1's distills (and Qwen3's -Thinking models) have the
# opening tag put in the prompt by their chat template, so the content has only the closing one.
THOUGHT = "The ticket is about a charge.\nSo: billing."
IN_TAGS = f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"
OPENED_BY_TEMPLATE = f"{THOUGHT}\n</think>\n\n{ANSWER}"


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("content", [IN_TAGS, OPENED_BY_TEMPLATE], ids=["tags", "template"])
async def test_thinking_in_the_content_is_kept_apart_from_the_answer(
        tmp_path: Path, stream: bool, content: str) -> None:
    """A reasoning model (Qwen3, DeepSeek-R1-Distill) served by vLLM without a reasoning
    parser answers with its thinking before the answer, in the content. A non-stream reply
    kept it there: the content began with the thinking, and the schema's check of it failed
    every row (paid for) as invalid_json; a thinking whose opening tag the chat template had
    put in the prompt was not taken out of a stream either. The thinking is now the row's
    reasoning_content and the answer its content, checked and spread into json_ columns."""
    inp = make_csv(tmp_path / "in.csv", ["refund please", "charged twice"])
    (tmp_path / "label.schema.json").write_text(json.dumps(SCHEMA))

    async def answer(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse:
        if stream:
            cut = len(content) // 3  # the tags split across chunks, as tokens come
            data = vllm_stream(body, [content[:cut], content[cut:2 * cut], content[2 * cut:]])
            return web.Response(body=data, content_type="text/event-stream")
        return web.json_response(vllm_reply(body, content))

    async with FaultServer(answer) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model=MODEL,
                              schema_file=str(tmp_path / "label.schema.json"),
                              stream=stream or None))
    df = results(tmp_path)
    assert s.exit_code == 0, df["error_message"].tolist()
    assert list(df["content"]) == [ANSWER] * 2
    assert list(df["reasoning_content"]) == [THOUGHT] * 2
    assert list(df["json_label"]) == ["billing"] * 2
    assert list(df["model"]) == [MODEL] * 2
    assert not leaks_in_files(tmp_path / "out")


def test_a_closing_think_tag_within_a_sentence_is_the_answers() -> None:
    """Only a "</think>" that ends the thinking on a line of its own, as the chat template's
    form does, parts it from the answer: an answer that mentions the tag keeps all its words."""
    prose = "R1 ends its thinking with </think> and then answers."
    assert _thought_apart(prose, None) == (prose, None)
    assert _thought_apart(f"{THOUGHT}\n</think>\n\n{ANSWER}", None) == (ANSWER, THOUGHT)
    assert _thought_apart(f"{THOUGHT}</think>\r\n{ANSWER}", None) == (ANSWER, THOUGHT)


DISTILL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"


@pytest.mark.anyio
@pytest.mark.parametrize("model", [DISTILL, "DeepSeek-R1-Distill-Llama-8B"])
async def test_a_distilled_model_is_not_priced_as_the_api_model_it_was_distilled_from(
        tmp_path: Path, model: str) -> None:
    """A DeepSeek-R1 distill (a 7B Qwen or an 8B Llama) served on the user's own GPU, under its
    Hugging Face path or a name of its own, was priced as DeepSeek's API model
    deepseek-reasoner (the 671B R1): the report claimed a cost of $0.55 / $2.19 per 1M tokens
    for a box that bills none, and a budget stopped the job on it. Its price is now unknown (the
    report says to set it), and a job that prices it at 0 has a cost of 0."""
    inp = make_csv(tmp_path / "in.csv", ["refund please", "charged twice"])

    async def answer(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response(vllm_reply(body, ANSWER))

    async with FaultServer(answer) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model=model))
        assert s.exit_code == 0
        df = results(tmp_path)
        assert df["cost_usd"].isna().all()
        md = (tmp_path / "out" / "cost_report.md").read_text()
        assert "deepseek-reasoner" not in md and f'[prices."{model}"]' in md

        job_file = tmp_path / "priced.toml"
        job_file.write_text(f'[prices."{model}"]\ninput = 0\noutput = 0\n')
        job = load_job(job_file, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                                  "model": model, "base_url": srv.base_url,
                                  "output": str(tmp_path / "priced")})
        s = await run(job)
    assert s.exit_code == 0
    priced = pd.read_parquet(tmp_path / "priced" / "results.parquet")
    assert list(priced["cost_usd"]) == [0.0, 0.0]


def vllm_error(status: int, message: str, kind: str) -> web.Response:
    """An error as vLLM (and SGLang) send it: at the top level, its code the HTTP status."""
    return web.json_response({"object": "error", "message": message, "type": kind,
                              "param": None, "code": status}, status=status)


@pytest.mark.anyio
async def test_a_model_name_the_server_does_not_serve_names_the_ones_it_does(
        tmp_path: Path) -> None:
    """vLLM serves its model under --served-model-name, else the Hugging Face path it loaded:
    a job asking for another name (qwen3 for Qwen/Qwen3-8B) was told "The model `qwen3` does
    not exist." by every row and stopped saying only that, the name to set left to be found.
    The stop now says what the endpoint serves (asked once, from its /v1/models)."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(60)])
    asked = {"chat": 0, "models": 0}
    runner, port = await serve_on_loopback(served_only(MODEL, asked))
    try:
        s = await run(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, model="qwen3"))
    finally:
        await runner.cleanup()
    assert s.exit_code == 4 and s.ok == 0
    assert s.stopped is not None and "The model `qwen3` does not exist." in s.stopped
    assert f"the endpoint serves {MODEL}" in s.stopped
    assert asked["models"] == 1
    assert not leaks_in_files(tmp_path / "out")


def served_only(model: str, asked: dict[str, int]) -> Any:
    """A vLLM server serving ``model`` only: its /v1/models lists it, a chat request for
    another name is answered 404 "The model `name` does not exist." (``asked`` counts both)."""
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/v1/models":
            asked["models"] += 1
            return web.json_response({"object": "list", "data": [
                {"id": model, "object": "model", "owned_by": "vllm", "root": model,
                 "max_model_len": 8192}]})
        asked["chat"] += 1
        body = json.loads(await request.read())
        if body["model"] != model:
            return vllm_error(404, f"The model `{body['model']}` does not exist.",
                              "NotFoundError")
        return web.json_response(vllm_reply(body, ANSWER))
    return handle


@pytest.mark.anyio
async def test_a_model_the_server_does_not_serve_stops_the_job_with_no_row_failed(
        tmp_path: Path) -> None:
    """A colleague restarted the box under another --served-model-name: the night's job asking
    for the old name failed its first 20 rows and more (every request in flight: 51 of 300 in
    a real run) before the stop, and the rerun with the right name sent only the rows not
    failed, the failed ones waiting for --retry-failed. A 404 saying the model does not exist,
    where the endpoint's /v1/models lists others, now stops the job at that answer, naming
    what it serves, no row failed: the rerun with the right name sends every row."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(300)])
    asked = {"chat": 0, "models": 0}
    runner, port = await serve_on_loopback(served_only(MODEL, asked))
    try:
        url = f"http://127.0.0.1:{port}/v1"
        s = await run(job_for(tmp_path, url, inp, model="qwen3"))
        assert s.exit_code == 4 and (s.ok, s.failed, s.pending) == (0, 0, 300)
        assert s.stopped is not None and s.stopped.startswith(
            "The model `qwen3` does not exist. — the endpoint serves Qwen/Qwen3-8B: set the "
            "job's model to one of them")
        assert asked["chat"] <= 8 and asked["models"] == 1  # the first answers, at concurrency 8
        assert not results(tmp_path)["status"].notna().any()
        # status named the same command, model and all, as the one that finishes the job: it
        # says to fix what stopped it first.
        finish = next(x for x in format_status(tmp_path / "out").splitlines()
                      if x.startswith("  to finish, "))
        assert finish.startswith("  to finish, 300 rows to do: fix what stopped it (above), "
                                 "then: batchrunner run "), finish
        s = await run(job_for(tmp_path, url, inp, model=MODEL), max_attempts=3)
    finally:
        await runner.cleanup()
    assert s.exit_code == 0 and s.ok == 300
    assert not leaks_in_files(tmp_path / "out")


def router_restarting(other: str, asked: dict[str, int], away_s: float = 1.5,
                      at: int = 30) -> Any:
    """A router in front of two vLLM boxes, MODEL's and ``other``'s: from the ``at``-th chat
    request, MODEL's box restarts for ``away_s``, and meanwhile the router answers its requests
    404 "model not found" and lists only ``other`` (``asked``: the chat requests)."""
    away_from = [0.0]

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        restarting = away_from[0] and time.monotonic() - away_from[0] < away_s
        if request.method == "GET" and request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [
                {"id": m, "object": "model"} for m in (
                    (other,) if restarting else (MODEL, other))]})
        asked["chat"] += 1
        if asked["chat"] == at:
            away_from[0] = time.monotonic()
            restarting = True
        body = json.loads(await request.read())
        if body["model"] not in (MODEL, other) or restarting:
            return web.json_response({"error": {
                "message": f"Model {body['model']} not found", "type": "not_found_error",
                "code": 404}}, status=404)
        return web.json_response(vllm_reply(body, ANSWER))
    return handle


@pytest.mark.anyio
async def test_a_router_answering_model_not_found_while_its_box_restarts_is_waited_out(
        tmp_path: Path) -> None:
    """A router in front of vLLM boxes answers 404 "model not found" for a model whose box is
    restarting. A job of that one model, served a moment before, stopped at the first such
    answer (exit 4, "set the job's model to one of them"), as for a name mistyped. A 404
    naming the job's one model after rows of this run were answered with it is now waited out
    as a gateway's 503 is; a name never answered still stops the job at its first answer."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(100)])
    other = "meta-llama/Llama-3.1-8B-Instruct"
    asked = {"chat": 0}
    runner, port = await serve_on_loopback(router_restarting(other, asked))
    try:
        url = f"http://127.0.0.1:{port}/v1"
        s = await run(job_for(tmp_path, url, inp, model=MODEL, concurrency=4))
        assert s.exit_code == 0 and (s.ok, s.failed) == (100, 0), s.stopped
        waited = asked["chat"]
        assert waited > 100  # the box's 404s, waited out
        s = await run(job_for(tmp_path, url, inp, model="qwen3", concurrency=4,
                              output=str(tmp_path / "wrong")))
    finally:
        await runner.cleanup()
    assert s.exit_code == 4 and (s.ok, s.failed, s.pending) == (0, 0, 100)
    assert s.stopped is not None and s.stopped.startswith(
        f"Model qwen3 not found — the endpoint serves {MODEL}, {other}: set the job's model")
    assert asked["chat"] - waited <= 4  # the first answers, at concurrency 4


@pytest.mark.anyio
@pytest.mark.parametrize("fresh", [False, True], ids=["same-directory", "fresh-directory"])
async def test_a_cron_start_while_the_router_says_model_not_found_waits_for_the_box(
        tmp_path: Path, price_cache_dir: Path, fresh: bool) -> None:
    """A router in front of vLLM boxes answers 404 "model not found" while the model's box
    restarts. A cron run started then stopped at its first answer (exit 4, "set the job's
    model to one of them"), the night's rows unsent, though last night's run of the job got
    that model's answers from this endpoint. Such a 404 is now waited out (outage_wait_s) as
    a restart is, whether tonight's run writes where last night's did (job.json says so) or to
    a fresh directory (``--output out/$(date +%F)``: the cache directory's endpoints.json keeps
    a hash of each endpoint and model answered, never the URL, the model or the key); a name
    no run got answers for here, new or --forced, still stops the job at its first answer."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(40)])
    other = "meta-llama/Llama-3.1-8B-Instruct"
    asked = {"chat": 0}
    runner, port = await serve_on_loopback(router_restarting(other, asked, at=11))
    night = iter(["2026-12-01", "2026-12-02", "2026-12-03"] if fresh else ["out"] * 3)

    def nightly(model: str) -> JobConfig:
        return job_for(tmp_path, url, inp, model=model, concurrency=4,
                       output=str(tmp_path / next(night)))

    try:
        url = f"http://127.0.0.1:{port}/v1"
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(nightly(MODEL), replace(options(3), limit=10))
        assert s.exit_code == 0 and s.ok == 10 and asked["chat"] == 10
        s = await run(nightly(MODEL))
        assert s.exit_code == 0 and (s.ok, s.failed, s.pending) == (40, 0, 0), s.stopped
        assert asked["chat"] > 41  # the box's 404s, waited out
        before = asked["chat"]
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(nightly("qwen3"),
                              replace(options(3), force=True, rerun_where="True"))
    finally:
        await runner.cleanup()
    assert s.exit_code == 4 and s.stopped is not None and s.stopped.startswith(
        f"Model qwen3 not found — the endpoint serves {MODEL}, {other}: set the job's model")
    assert asked["chat"] - before <= 4  # the first answers, at concurrency 4
    kept = (price_cache_dir / "endpoints.json").read_text()
    assert "127.0.0.1" not in kept and MODEL not in kept and KEY not in kept


@pytest.mark.anyio
async def test_a_box_behind_a_router_that_does_not_come_back_stops_the_job_saying_what_to_set(
        tmp_path: Path) -> None:
    """The router's 404 for the job's model goes on past outage_wait_s: the stop says the
    model was waited for as a server restarting behind a router, what the router serves, and
    what to set for a longer wait; no row failed."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(30)])
    other = "meta-llama/Llama-3.1-8B-Instruct"
    runner, port = await serve_on_loopback(router_restarting(other, {"chat": 0}, 1e9, at=11))
    try:
        job = job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, model=MODEL, concurrency=4)
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job, replace(options(3), limit=10))
            assert s.exit_code == 0 and s.ok == 10
            s = await run_job(job, replace(options(3), outage_s=1.0))
    finally:
        await runner.cleanup()
    assert s.exit_code == 4 and (s.ok, s.failed, s.pending) == (10, 0, 20), s.stopped
    assert s.stopped is not None and s.stopped.startswith(
        f"{MODEL} not served by the endpoint for 1."), s.stopped
    assert (f"Model {MODEL} not found — the endpoint serves {other}: set the job's model to one "
            "of them — it was waited for as a server restarting behind a router, as an earlier "
            "run of the job got its answers from this endpoint, 1 s at most: if that server "
            "takes longer to come back, set outage_wait_s in [limits] (or --outage-wait)"
            ) in s.stopped


@pytest.mark.anyio
async def test_the_simulator_answers_one_batch_at_a_time_as_a_gpu_server_does(
        tmp_path: Path) -> None:
    """A server of one's own answers at most one batch of requests at once (vLLM's
    --max-num-seqs) and queues the rest, the wait counted in their latency and so in
    timeout_s: ``max_running`` (``batchrunner simulate --max-running``) rehearses it. The
    simulator answered every request at once, however many."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--max-running", "32"])).max_running == 32
    with pytest.raises(ConfigError, match="max_running"):
        SimulatorConfig(max_running=0)
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(30)])
    async with Simulator(SimulatorConfig(max_running=3, latency_ms=20)) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, model=MODEL, concurrency=10))
        stats = sim.stats()
    assert s.exit_code == 0 and s.ok == 30
    assert stats["running_peak"] == 3 and stats["queued"] > 0


async def cron_start_while_loading(tmp_path: Path, up_after_s: float | None,
                                   outage_s: float | None = 300.0, tonight: str | None = None,
                                   policy: RetryPolicy | None = None,
                                   **over: Any) -> tuple[RunSummary, float]:
    """Last night's run answered (its first 10 rows, by --limit); tonight's starts while the
    box is rebooting: its port refuses connections, as vLLM's does while it loads its model,
    and it comes up ``up_after_s`` later (None: never). Tonight's summary, and how long it
    ran. ``outage_s`` None: the job's own wait (``over``: its settings); ``tonight``: the
    output directory tonight's run writes to, a fresh one (else last night's); ``policy``:
    tonight's retries (else a 10 ms backoff)."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(60)])
    port = closed_port()
    sim = Simulator(SimulatorConfig(latency_ms=5), port=port)
    job = job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, model=MODEL, **over)
    await sim.start()
    try:
        s = await run_job(job, replace(options(3), limit=10))
        assert s.ok == 10 and s.exit_code == 0
    finally:
        await sim.stop()
    if tonight is not None:
        job = replace(job, output=replace(job.output, dir=tmp_path / tonight))
    started = time.monotonic()

    async def come_up() -> None:
        if up_after_s is not None:
            await anyio.sleep(up_after_s)
            await sim.start()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(come_up)
            with anyio.fail_after(RUN_LIMIT_S):
                tonights = options(3) if policy is None else replace(options(3), retry=policy)
                s = await run_job(job, replace(tonights, outage_s=outage_s)
                                  if outage_s is not None else tonights)
    finally:
        await sim.stop()
    return s, time.monotonic() - started


@pytest.mark.anyio
async def test_a_cron_start_while_the_server_that_answered_last_night_loads_waits_for_it(
        tmp_path: Path) -> None:
    """The GPU box rebooted at night: at 02:00 vLLM was still loading its model, its port
    refusing connections, and the job stopped at 02:00:01 ("no connection to the endpoint for
    2.2 s"), the night's rows unsent. An endpoint that answered an earlier run of the job is
    now waited for as in an outage (outage_s), and the job finishes once it is up."""
    s, _ = await cron_start_while_loading(tmp_path, up_after_s=1.5)
    assert s.stopped is None and s.exit_code == 0, s.stopped
    assert (s.ok, s.failed, s.pending) == (60, 0, 0)
    assert s.not_connected > 0


@pytest.mark.anyio
async def test_a_server_that_answered_before_and_never_comes_up_stops_the_job_in_time(
        tmp_path: Path) -> None:
    """The wait is bounded (outage_s, 5 minutes by default): a box that stays down stops the
    job then, saying what it waited for, every row left to do, and what to set to wait longer
    (it said to check the base URL, as for a URL that never answered); the progress says how
    long it waits."""
    s, ran_s = await cron_start_while_loading(tmp_path, up_after_s=None, outage_s=1.0)
    assert s.exit_code == 4 and (s.ok, s.failed, s.pending) == (10, 0, 50)
    assert ran_s >= 1.0
    assert s.stopped is not None and s.stopped.startswith("no connection to the endpoint for 1.")
    assert "it answered an earlier run of the job, so it was waited for" in s.stopped
    assert "(Connection refused)" in s.stopped
    # Not a wrong URL, as the stop said of it: the server that answered did not come back.
    assert "check the base URL" not in s.stopped
    assert s.stopped.endswith(
        "— the server did not come back in 1 s: check that it is up and reachable (a reboot and "
        "a large model's load can take 10 to 15 minutes: set outage_wait_s in [limits], or "
        "--outage-wait, to wait longer), then rerun to resume"), s.stopped
    line = _postfix(Counts(unreachable_s=42.4, outage_s=300.0, connect_wait=True))
    assert line.endswith("(no connection to the endpoint for 42 s; the job waits 5 min for it "
                         "to come back, then stops)")
    assert _postfix(Counts(unreachable_s=42.4, outage_s=300.0)).endswith(
        "(no connection to the endpoint for 42 s)")  # a row's attempts stop it: no wait


@pytest.mark.anyio
async def test_a_run_none_of_whose_requests_connected_keeps_the_reports_figures_of_the_one_before(
        tmp_path: Path) -> None:
    """The reports' wall time, throughput and requests are those of the last run that sent
    requests. A run none of whose requests could connect counted as one: after last night's
    10 rows, tonight's stop on a box that stayed down had the reports say "Wall time 1.0 s,
    11 sent, 10 retried after an error" of requests that never left, and a job whose first
    run reached nothing showed a wall time and requests sent as if it had run. They now keep
    the run before's figures, or none; the stop says why the rows are still to do."""
    s, _ = await cron_start_while_loading(tmp_path, up_after_s=None, outage_s=0.3)
    assert s.exit_code == 4 and s.sent > 0 and s.not_connected == s.sent
    rep = report(tmp_path)
    assert rep["counters"]["sent"] == 10 and "not_connected" not in rep["counters"]
    assert rep["wall_s"] is not None and rep["wall_s"] < 0.3  # last night's 10 rows
    assert rep["rows"]["to_do"] == 50 and "no connection to the endpoint" in rep["stopped"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert re.search(r"Requests, last run that sent</div><div class=\"value\">10 sent<", page)

    first = tmp_path / "first"  # a job whose only run reached nothing
    first.mkdir()
    inp = make_csv(first / "in.csv", ["a", "b", "c"])
    s = await run(job_for(first, f"http://127.0.0.1:{closed_port()}/v1", inp, model=MODEL))
    assert s.exit_code == 4 and s.sent > 0 and s.not_connected == s.sent
    rep = report(first)
    assert rep["wall_s"] is None and rep["requests_per_min"] is None and rep["counters"] == {}
    assert rep["rows"]["to_do"] == 3 and rep["stopped"].startswith("no connection to the ")
    page = (first / "out" / "report.html").read_text()
    assert not re.search(r'class="value">\d+ sent<', page)
    assert "Requests, the rows&#x27; latest attempts" in page
    md = (first / "out" / "cost_report.md").read_text()
    assert "| Wall time (the last run that sent)   | n/a " in md


@pytest.mark.anyio
async def test_rows_waiting_for_the_server_to_come_up_are_sent_as_soon_as_it_is_up(
        tmp_path: Path) -> None:
    """The rows refused while the box loaded backed off as any retry does, up to 30 s apart:
    a run whose box came up after 10 s took 31 s for 200 rows, idle most of the time after.
    While an outage is waited out, their waits are now short together (a retry about every
    second among them all, as for one row), and the first answer after it sends them all
    again: here with a backoff that would otherwise never end."""
    s, _ = await cron_start_while_loading(
        tmp_path, up_after_s=1.5, policy=RetryPolicy(base_s=1e6, cap_s=1e6, max_attempts=3))
    assert s.stopped is None and s.exit_code == 0, s.stopped
    assert (s.ok, s.failed, s.pending) == (60, 0, 0) and s.not_connected > 0


@pytest.mark.anyio
async def test_a_cron_job_writing_to_a_fresh_output_directory_each_night_waits_for_the_server(
        tmp_path: Path, price_cache_dir: Path) -> None:
    """``--output out/$(date +%F)``: tonight's output directory has no job.json saying the
    endpoint answered last night, and the job stopped in two seconds while vLLM loaded. The
    cache directory keeps a hash of each endpoint that answered (never its URL, nor the key),
    and tonight's run waits for it; a URL that never answered still stops in seconds."""
    s, _ = await cron_start_while_loading(tmp_path, up_after_s=1.5, tonight="2026-12-02")
    assert s.stopped is None and s.exit_code == 0, s.stopped
    assert (s.ok, s.failed, s.pending) == (60, 0, 0) and s.not_connected > 0
    kept = (price_cache_dir / "endpoints.json").read_text()
    assert "127.0.0.1" not in kept and KEY not in kept
    assert not leaks_in_files(price_cache_dir)
    wrong = closed_port()  # a port no server ever answered on
    with anyio.fail_after(RUN_LIMIT_S):
        s = await run_job(job_for(tmp_path, f"http://127.0.0.1:{wrong}/v1", tmp_path / "in.csv",
                                  model=MODEL, output=str(tmp_path / "2026-12-03")), options(3))
    assert s.exit_code == 4 and s.stopped is not None and s.ok == 0
    assert "no answer to any request meanwhile" in s.stopped and "waited" not in s.stopped


@pytest.mark.anyio
async def test_a_rehearsals_port_is_not_waited_for_when_a_job_is_sent_there_later(
        tmp_path: Path, price_cache_dir: Path) -> None:
    """A rehearsal against batchrunner simulate at a port, then a job whose URL is mistyped to
    that port once the simulator is gone: endpoints.json had kept the port as an endpoint that
    answered, and the job waited outage_wait_s for it ("it answered an earlier run on this
    machine"), where a URL never answered stops in seconds. A rehearsal's answers are not kept
    there: the job stops after a row's attempts, saying the URL never answered here; the
    rehearsal's own rerun into its directory still waits for it (job.json says it answered)."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(30)])
    port = closed_port()
    url = f"http://127.0.0.1:{port}/v1"
    sim = Simulator(SimulatorConfig(announce=True), port=port)  # as batchrunner simulate
    await sim.start()
    try:
        s = await run_job(job_for(tmp_path, url, inp, model=MODEL, output=str(tmp_path / "a")),
                          replace(options(3), limit=10))
    finally:
        await sim.stop()
    assert s.ok == 10 and s.simulated
    with anyio.fail_after(RUN_LIMIT_S):
        s = await run_job(job_for(tmp_path, url, inp, model=MODEL, output=str(tmp_path / "b")),
                          replace(options(3), outage_s=600.0))
    assert s.exit_code == 4 and s.stopped is not None and s.ok == 0
    assert "waited" not in s.stopped and s.stopped.endswith(
        "check the base URL, the network and any proxy (no run on this machine has had an "
        "answer from this URL: is its port or host mistyped, or its server not started yet?), "
        "then rerun to resume"), s.stopped
    with anyio.fail_after(RUN_LIMIT_S):  # the rehearsal's own rerun: waited for, 0.3 s here
        s = await run_job(job_for(tmp_path, url, inp, model=MODEL, output=str(tmp_path / "a")),
                          replace(options(3), outage_s=0.3))
    assert s.stopped is not None and "it answered an earlier run of the job, so it was " \
        "waited for" in s.stopped, s.stopped


@pytest.mark.anyio
@pytest.mark.parametrize(("models", "path"), [
    (("another-model",), "/v1"),  # the rehearsal's model refused: 404s of its chat answers
    (None, "/nowhere/v1"),  # a mistyped path: the simulator's 404 page
])
async def test_a_rehearsal_that_got_only_errors_keeps_no_port_waited_for_later(
        tmp_path: Path, price_cache_dir: Path, models: tuple[str, ...] | None,
        path: str) -> None:
    """A rehearsal whose every answer was an error of batchrunner simulate's (its model
    refused, a mistyped path): an error tells no kind, so the run was not simulated, and its
    port went into endpoints.json as a real endpoint's; a job mistyped to that port later
    waited 5 minutes for it (38.7 s seen before it was stopped). Any answer the simulator
    marks keeps its URL out of the record."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(30)])
    port = closed_port()
    url = f"http://127.0.0.1:{port}{path}"
    sim = Simulator(SimulatorConfig(announce=True, models=models), port=port)
    await sim.start()
    try:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, url, inp, model=MODEL,
                                      output=str(tmp_path / "a")), replace(options(1), limit=4))
    finally:
        await sim.stop()
    assert s.ok == 0 and s.failed + s.pending == 30 and s.sent > 0, s
    with anyio.fail_after(RUN_LIMIT_S):
        s = await run_job(job_for(tmp_path, url, inp, model=MODEL, output=str(tmp_path / "b")),
                          replace(options(3), outage_s=600.0))
    assert s.exit_code == 4 and s.stopped is not None and s.ok == 0
    assert "waited" not in s.stopped and "no run on this machine has had an answer from this " \
        "URL" in s.stopped, s.stopped


# One writer of endpoints.json, in a process of its own: waits for the ``go`` file (a second
# at most), then keeps 50 endpoints of its own, one write each.
ENDPOINT_WRITER = """
import os, sys, time
from batchrunner.runner import _remember_endpoint
for _ in range(1000):
    if os.path.exists(sys.argv[2]):
        break
    time.sleep(0.001)
for i in range(50):
    _remember_endpoint(f"{sys.argv[1]}-{i:03d}")
"""


def test_runs_finishing_at_the_same_moment_keep_each_others_endpoints(
        tmp_path: Path, price_cache_dir: Path) -> None:
    """Two nightly jobs ending at the same moment each read endpoints.json, added their own
    endpoint and wrote it back: the later write dropped the other's entry, and that job's
    next fresh output directory was not waited for. Writers now take turns (a lock beside
    the file), each adding to what the file holds then: 4 writers of 50 entries keep 200
    (unlocked, some 55 were left)."""
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(  # conftest's loopback guard first
        [*filter(None, [os.environ.get("PYTHONPATH")]), *sys.path])}
    writers = [subprocess.Popen([sys.executable, "-c", ENDPOINT_WRITER, f"w{n}", str(go)],
                                env=env) for n in range(4)]
    with reaped(*writers):
        time.sleep(0.5)  # the writers' imports
        go.touch()
        assert [w.wait(RUN_LIMIT_S) for w in writers] == [0] * 4
    kept = json.loads((price_cache_dir / "endpoints.json").read_text())["answered"]
    assert len(kept) == 200


@pytest.mark.anyio
async def test_an_endpoint_not_answered_for_30_days_is_not_waited_for(
        tmp_path: Path, price_cache_dir: Path) -> None:
    """endpoints.json kept an endpoint for good: a URL that answered once, months ago, and
    was since retired, had every fresh output directory's run wait outage_wait_s for it. An
    entry not answered for 30 days is now let go (and dropped at the next write)."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(10)])
    port = closed_port()
    url = f"http://127.0.0.1:{port}/v1"
    endpoint = hashlib.sha256(f"{url}/chat/completions".encode()).hexdigest()[:16]
    day = 86400
    (price_cache_dir / "endpoints.json").write_text(json.dumps({"answered": {
        endpoint: time.strftime("%Y-%m-%d", time.gmtime(time.time() - 31 * day)),
        "29-days-ago": time.strftime("%Y-%m-%d", time.gmtime(time.time() - 29 * day))}}))
    with anyio.fail_after(RUN_LIMIT_S):
        s = await run_job(job_for(tmp_path, url, inp, model=MODEL, output=str(tmp_path / "new")),
                          replace(options(3), outage_s=10.0))
    assert s.exit_code == 4 and s.stopped is not None and s.ok == 0
    assert "no answer to any request meanwhile" in s.stopped and "waited" not in s.stopped
    _remember_endpoint("today")
    kept = json.loads((price_cache_dir / "endpoints.json").read_text())["answered"]
    assert sorted(kept) == ["29-days-ago", "today"]


def test_an_endpoint_is_kept_where_the_cache_directory_takes_no_lock(
        price_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache directory on a file system that takes no flock (ENOLCK on an NFS mount without
    its lock daemon, EOPNOTSUPP on some FUSE ones) had no endpoint kept at all, so every
    fresh output directory's run against a box coming up stopped in seconds: written unlocked
    there, as on Windows."""
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    _remember_endpoint("unlocked")
    kept = json.loads((price_cache_dir / "endpoints.json").read_text())["answered"]
    assert list(kept) == ["unlocked"]


def test_a_sigterm_while_the_server_is_waited_for_says_it_was_down(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The box was down at 02:00 and the scheduler's SIGTERM came while the job waited for it:
    the cron mail and status said only "interrupted by SIGTERM", and the on-call engineer
    looked for what had killed a healthy run. The stop now says both: the signal, and that
    the endpoint had not been reached for so long, waited for as it answered last night."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(30)])
    port = closed_port()
    out = tmp_path / "out"
    args = ["--input", str(inp), "--id-column", "id", "--prompt", "{text}", "--model", MODEL,
            "--base-url", f"http://127.0.0.1:{port}/v1", "--output", str(out),
            "--progress", "none"]
    with SimulatorThread(SimulatorConfig(), port=port):
        code, _, err = cli(capsys, "run", *args, "--limit", "5")
    assert code == 0, err
    started = (out / "job.json").stat().st_mtime_ns
    night = subprocess.Popen([sys.executable, "-m", "batchrunner", "run", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(RUN_LIMIT_S * 50):  # until it has begun (job.json says so)
            if (out / "job.json").stat().st_mtime_ns != started or night.poll() is not None:
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"the run did not begin within {RUN_LIMIT_S} s")
        time.sleep(1.0)  # refused meanwhile, again and again
        night.send_signal(signal.SIGTERM)
        said, _ = night.communicate(timeout=RUN_LIMIT_S)
    finally:
        if night.poll() is None:
            night.kill()
            night.wait()
    assert night.returncode == 4, said
    stop = ("interrupted by SIGTERM while the endpoint was waited for: no connection to it for ")
    assert stop in said, said
    assert "(it answered an earlier run of the job, so it was waited for, 5 min at most)" in said
    code, shown, _ = cli(capsys, "status", str(out))
    assert code == 0 and "last run: stopped " in shown and stop in shown, shown


@pytest.mark.anyio
@pytest.mark.parametrize("away", ["refused", "gateway"])
async def test_status_beside_a_run_waiting_for_its_endpoint_says_so_until_it_answers(
        tmp_path: Path, away: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The box went down mid-run at 02:00 (its port refusing connections, or its gateway
    answering 503 for it) and the run waited for it, as its progress said; ``status`` beside
    it said only "no row finished in the last 60 s". The run now records the outage in
    job.json when it starts to wait it out and when the endpoint answers again, and status
    says how long the endpoint has not answered, what its gateway answers, and how long the
    run waits; nothing once it is back. Meanwhile its pace line tells no time left (it said
    the rows to do "would take about 2 min" at the pace before the outage), and a gateway whose
    answer changes during the outage (503, then 502) is shown with its latest (it showed the
    first)."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(200)])
    out = tmp_path / "out"
    down = anyio.Event()  # the gateway's upstream is away from this until ``up``
    bad = anyio.Event()  # and from this, the gateway answers 502
    up = anyio.Event()
    answered = 0

    async def gateway(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal answered
        body = json.loads(await request.read())
        if down.is_set() and not up.is_set():
            if bad.is_set():
                return web.Response(status=502, text="upstream connect error")
            return web.Response(status=503, text="no healthy upstream")
        await anyio.sleep(0.05)
        answered += 1
        return web.json_response(vllm_reply(body, ANSWER))

    port = closed_port()
    sim = Simulator(SimulatorConfig(latency_ms=50), port=port)
    if away == "refused":
        await sim.start()
        served = None
    else:
        served, port = await serve_on_loopback(gateway)

    def answers() -> int:
        return sim.stats()["completions"] if served is None else answered

    async def status_until(said: bool, saying: str = "the endpoint has not answered for"
                           ) -> str:
        """status, once it says (or no longer says) ``saying``."""
        for _ in range(400):  # 20 s: the flusher records it within 2 s
            shown = format_status(out)
            if (saying in shown) == said:
                return shown
            await anyio.sleep(0.05)
        raise AssertionError(shown)

    # status reads the run as started 30 s before it did: a pace over its rows before the
    # outage, not "not known yet (the run started seconds ago)" (a night's run sends for
    # minutes before one; this one's outage comes in its first seconds).
    started_at = status_module._epoch
    monkeypatch.setattr(status_module, "_epoch",
                        lambda last: None if (at := started_at(last)) is None else at - 30.0)
    # The run's process is this one, which may have started less than those 30 s before it:
    # read so early, the run's start would make its pid another process's, no run in progress.
    monkeypatch.setattr(status_module, "_process_started_after", lambda pid, when: False)
    summary: list[RunSummary] = []

    async def nightly() -> None:
        job = job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, model=MODEL, concurrency=2)
        summary.append(await run_job(job, options(3)))

    try:
        with anyio.fail_after(RUN_LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(nightly)
                while answers() < 20:  # noqa: ASYNC110 - rows answered: the endpoint was there
                    await anyio.sleep(0.01)
                if served is None:
                    await sim.stop()
                else:
                    down.set()
                shown = await status_until(True)
                assert "a run is in progress (pid " in shown, shown
                line = next(x for x in shown.splitlines() if "has not answered" in x)
                by = ("(only its gateway, with HTTP 503: no healthy upstream)"
                      if away == "gateway" else "(no connection to it)")
                assert re.fullmatch(r"  the endpoint has not answered for \d+ s "
                                    + re.escape(by) + r": the 1\d\d rows to do wait for it, "
                                    "up to 5 min, then the run stops", line), line
                # The one line says what is happening: no pace of the rows before beside it,
                # which tells no time left (nor, as "no row has finished for", why).
                assert shown.splitlines()[-1] == line, shown
                assert "pace" not in shown and "no row" not in shown, shown
                if served is not None:  # the gateway's answer changes: status shows the latest
                    bad.set()
                    shown = await status_until(True, "with HTTP 502: upstream connect error)")
                    assert "HTTP 503" not in shown, shown
                # What a SIGKILL now leaves: job.json's outage record, and no run holding the
                # directory. status says the run did not finish and how to resume, no outage.
                killed = tmp_path / "killed"
                killed.mkdir()
                shutil.copy2(out / "job.json", killed / "job.json")
                assert "outage" in json.loads((killed / "job.json").read_text())["last_run"]
                shown = format_status(killed)
                assert "did not finish (killed, or the machine stopped): run the job again to " \
                       "resume" in shown and "has not answered" not in shown, shown
                assert "pace" not in shown and "wait for the endpoint" not in shown, shown
                if served is None:
                    await sim.start()
                else:
                    up.set()
                shown = await status_until(False)
                assert "a run is in progress (pid " in shown, shown  # back: the run goes on
                assert "waits up to" not in shown, shown
                # Its pace is of the rows since the endpoint is back, not of the 30 s and
                # more before, most of them the outage's, with no row.
                pace = next(x for x in shown.splitlines() if "pace" in x or "no row" in x)
                window = re.search(r"over the last (\d+) s", pace)
                assert (pace == "  pace: not known yet (the endpoint answered again seconds "
                        "ago)" or (window and int(window[1]) < 20)), pace
    finally:
        await sim.stop()
        if served is not None:
            await served.cleanup()
    s = summary[0]
    assert s.exit_code == 0 and (s.ok, s.failed) == (200, 0), s.stopped
    assert "outage" not in json.loads((out / "job.json").read_text())["last_run"]
    assert "the endpoint has not answered" not in format_status(out)
    assert not leaks_in_files(out)


def test_runs_against_the_built_in_simulator_are_not_kept_as_endpoints_that_answered(
        tmp_path: Path, price_cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The simulator serves each run on a port of its own: kept, each run of a rehearsal
    added an entry no run would ever wait for."""
    code, _, err = cli(capsys, *job_args(tmp_path))
    assert code == 0, err
    assert (tmp_path / "out" / "job.json").exists()
    assert not (price_cache_dir / "endpoints.json").exists()


@pytest.mark.anyio
async def test_how_long_a_server_coming_up_is_waited_for_is_the_jobs_to_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The wait was a fixed 5 minutes, where a reboot and a 70B model's load take 10 to 15: a
    nightly job stopped while its box was still loading. ``[limits] outage_wait_s`` (or
    ``--outage-wait``) sets it, 0 turns it off (refusals stop the job as for a new URL), and a
    bad value is refused in one line before anything is sent."""
    for night in ("a", "b"):
        (tmp_path / night).mkdir()
    s, ran_s = await cron_start_while_loading(tmp_path / "a", None, None, outage_wait_s=1.0)
    assert s.exit_code == 4 and (s.ok, s.failed, s.pending) == (10, 0, 50)
    assert ran_s >= 1.0 and s.stopped is not None
    assert "it answered an earlier run of the job, so it was waited for, 1 s at most" in s.stopped
    s, _ = await cron_start_while_loading(tmp_path / "b", None, None, outage_wait_s=0)
    assert s.exit_code == 4 and (s.ok, s.failed, s.pending) == (10, 0, 50)
    assert s.stopped is not None and "no answer to any request meanwhile" in s.stopped
    assert load_job(None, {"input": "in.csv", "prompt": "{text}", "model": MODEL,
                           "output": "out", "outage_wait_s": 900}).limits.outage_wait_s == 900
    for value, said in (("-5", "--outage-wait must not be negative, got -5"),
                        ("soon", "--outage-wait takes a number of seconds, got 'soon'"),
                        ("inf", "--outage-wait must be a finite number, got inf")):
        code, _, err = cli(capsys, *job_args(tmp_path, "--outage-wait", value))
        assert code == 2 and one_error_line(err) == said
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "in.csv"\n[request]\nmodel = "m"\nprompt = "{text}"\n'
        '[limits]\noutage_wait_s = "15 min"\n[output]\ndir = "out"\n')
    code, _, err = cli(capsys, "run", str(tmp_path / "job.toml"))
    assert code == 2 and one_error_line(err).endswith(
        "[limits] outage_wait_s must be a number, got '15 min'")


@pytest.mark.anyio
async def test_an_outage_stop_in_a_job_of_many_models_names_the_model_never_answered(
        tmp_path: Path) -> None:
    """Two vLLM boxes behind one proxy, a model each, the job's rows asking for both (a model
    column): the proxy answers 503 for everything (both boxes away at 02:00). After outage_s
    the stop named a row and the proxy's words ("Service Unavailable"), not the model whose
    server never answered, which is the box to go and look at. It names it now."""
    other = "meta-llama/Llama-3.1-8B-Instruct"
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(20)], "text": [f"t {i}" for i in range(20)],
                  "model": [(MODEL, other)[i % 2] for i in range(20)]}).to_csv(inp, index=False)

    async def away(srv: FaultServer, request: web.BaseRequest,
                   body: dict[str, Any]) -> web.StreamResponse:
        return web.Response(status=503, text="Service Unavailable")

    async with FaultServer(away) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, model_column="model"),
                              replace(options(3), outage_s=1.0))
    assert s.exit_code == 4 and s.failed == 0 and s.stopped is not None, s
    assert s.stopped.startswith("no answer from the endpoint for 1."), s.stopped
    named = [m for m in (MODEL, other)
             if f"; asking for {m}, which has not answered this job)" in s.stopped]
    assert len(named) == 1, s.stopped


def context_limited(window: int) -> Any:
    """vLLM serving MODEL with --max-model-len ``window``: a request whose max_tokens and
    prompt (17 tokens, 6,000 for a row that says "long") do not fit is answered 400 as vLLM
    words it."""
    async def answer(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse:
        asked = int(body.get("max_tokens") or 0)
        prompt = 6000 if "long" in json.dumps(body["messages"]) else 17
        if asked + prompt > window:
            return vllm_error(
                400, f"This model's maximum context length is {window} tokens. However, you "
                f"requested {asked + prompt} tokens ({prompt} in the messages, {asked} in the "
                "completion). Please reduce the length of the messages or completion.",
                "BadRequestError")
        return web.json_response(vllm_reply(body, ANSWER))
    return answer


@pytest.mark.anyio
async def test_a_max_tokens_over_the_models_context_length_stops_the_job_with_no_row_failed(
        tmp_path: Path) -> None:
    """max_tokens = 10000 for a model served with --max-model-len 8192: vLLM refuses every
    request with a 400 naming the context length, and the job failed its first 20 rows and
    those in flight before the fail-fast stop, to be sent again with --retry-failed. When the
    job's own max_tokens is not under the context length the 400 names, no row can be
    answered: the job stops at that answer, saying to lower max_tokens, no row failed."""
    inp = make_csv(tmp_path / "in.csv", [f"ticket {i}" for i in range(200)])
    async with FaultServer(context_limited(8192)) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model=MODEL, max_tokens=10000))
        assert s.exit_code == 4 and (s.ok, s.failed, s.pending) == (0, 0, 200), s
        assert s.stopped is not None and s.stopped.startswith(
            "This model's maximum context length is 8192 tokens."), s.stopped
        assert ("max_tokens (10,000) is not under the model's context length (8,192): lower "
                "max_tokens (--max-tokens), then rerun") in s.stopped
        assert srv.requests <= 8
        s = await run(job_for(tmp_path, srv.base_url, inp, model=MODEL, max_tokens=512))
    assert s.exit_code == 0 and s.ok == 200


@pytest.mark.anyio
async def test_a_row_too_long_for_the_context_fails_on_its_own(tmp_path: Path) -> None:
    """A max_tokens under the context length: the 400 is the row's, its prompt too long, and
    that row fails while the others are answered."""
    texts = [f"ticket {i}" for i in range(30)]
    texts[4] = "a long ticket"
    inp = make_csv(tmp_path / "in.csv", texts)
    async with FaultServer(context_limited(8192)) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model=MODEL, max_tokens=4000))
    assert s.exit_code == 3 and (s.ok, s.failed) == (29, 1) and not s.stopped
    assert results(tmp_path).loc["r0004", "error_type"] == "http_400"
