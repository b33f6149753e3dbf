"""Streaming: the SSE parser on recorded provider shapes, and stream jobs against the simulator."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pandas as pd
import pytest
from aiohttp import web

from batchrunner import client as client_module
from batchrunner.client import ChatClient, StreamAssembler
from batchrunner.config import load_job
from batchrunner.errors import ConfigError, TransportError
from batchrunner.pricing import PriceBook
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, run_job
from batchrunner.simulator import Simulator, SimulatorConfig, prompt_key
from tests.test_faults import (
    Fault,
    FaultServer,
    SilentServer,
    completion,
    error_body,
    job_for,
    make_csv,
    report,
    results,
    seen_by_type,
    sse,
)
from tests.test_faults import chunk as stream_chunk
from tests.test_faults import run as fault_run

FAST = RunOptions(retry=RetryPolicy(base_s=0.0, max_attempts=4), progress="none",
                  handle_signals=False)


def feed(lines: list[str]) -> StreamAssembler:
    st = StreamAssembler()
    for line in lines:
        st.feed(line.encode())
    return st


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: dict[str, Any] | None = None, choices: bool = True) -> str:
    event: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                             "model": "m-1"}
    event["choices"] = ([{"index": 0, "delta": delta or {}, "finish_reason": finish}]
                        if choices else [])
    if usage is not None:
        event["usage"] = usage
    return "data: " + json.dumps(event) + "\n"


USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
         "completion_tokens_details": {"reasoning_tokens": 2}}


def test_openai_shape_usage_chunk_with_empty_choices() -> None:
    st = feed([chunk({"role": "assistant", "content": ""}), "\n", chunk({"content": "Hel"}),
               chunk({"content": "lo"}), chunk({}, "stop"), chunk(usage=USAGE, choices=False),
               "data: [DONE]\n"])
    assert st.done and "".join(st.content) == "Hello" and st.finish_reason == "stop"
    assert st.usage == USAGE and st.model == "m-1"
    assert st.first_token_at is not None


def test_final_chunk_with_finish_reason_and_usage_together() -> None:
    st = feed([": keep-alive\n", chunk({"content": "a"}), chunk({"content": "b"}, "length",
                                                               usage=USAGE), "data: [DONE]"])
    assert "".join(st.content) == "ab" and st.finish_reason == "length" and st.usage == USAGE


def test_reasoning_deltas_are_collected_apart() -> None:
    st = feed([chunk({"reasoning_content": "think "}), chunk({"reasoning_content": "more"}),
               chunk({"content": "answer"}), chunk({}, "stop"), "data: [DONE]"])
    assert "".join(st.reasoning) == "think more" and "".join(st.content) == "answer"
    assert st.usage is None


def test_error_event_and_bad_json() -> None:
    st = feed(['data: {"error": {"message": "overloaded", "type": "server_error"}}'])
    assert st.error == {"message": "overloaded", "type": "server_error"}
    with pytest.raises(ValueError):  # at the blank line that ends the event
        feed(["data: {not json", ""])


def make_input(tmp_path: Path, texts: list[str]) -> Path:
    path = tmp_path / "in.csv"
    pd.DataFrame({"id": [f"s{i}" for i in range(len(texts))], "text": texts}).to_csv(
        path, index=False)
    return path


@pytest.mark.anyio
async def test_stream_job_matches_non_stream_and_records_ttft(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    texts = [f"stream row {i}" for i in range(20)]
    texts[3] += " [[sim:cut*1]]"
    texts[5] += " [[sim:no_usage]]"
    inp = make_input(tmp_path, texts)
    results = {}
    for stream in (False, True):  # a simulator each: marker counts start afresh
        async with Simulator(SimulatorConfig(ms_per_token=0.2)) as sim:
            out = tmp_path / f"out-{stream}"
            job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                                  "model": "gpt-4o-mini", "max_tokens": 50,
                                  "base_url": sim.base_url, "output": str(out),
                                  "stream": stream or None})
            s = await run_job(job, FAST)
            assert s.failed == 0
            results[stream] = pd.read_parquet(out / "results.parquet").set_index("id")
    plain, streamed = results[False], results[True]
    assert list(streamed["content"]) == list(plain["content"])
    assert list(streamed["finish_reason"]) == list(plain["finish_reason"])
    ok = streamed.drop(index="s5")
    assert list(ok["completion_tokens"]) == list(plain.drop(index="s5")["completion_tokens"])
    assert ok["ttft_ms"].notna().all() and (ok["ttft_ms"] <= ok["latency_ms"]).all()
    assert plain["ttft_ms"].isna().all()
    assert streamed.loc["s3", "attempts"] == 2  # the cut stream was retried
    assert pd.isna(streamed.loc["s5", "completion_tokens"])  # no usage: unknown, not guessed
    assert pd.isna(streamed.loc["s5", "cost_usd"])


@pytest.mark.anyio
async def test_reasoning_model_stream_fills_reasoning_column(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    inp = make_input(tmp_path, ["why is the sky blue", "what is rain"])
    prices = PriceBook()
    async with Simulator(SimulatorConfig()) as sim:
        for model, stream in itertools.product(("deepseek-r1", "o4-mini"), (None, True)):
            out = tmp_path / f"out-{model}-{stream}"
            job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                                  "model": model, "base_url": sim.base_url,
                                  "output": str(out), "stream": stream})
            await run_job(job, FAST)
            df = pd.read_parquet(out / "results.parquet")
            assert (df["reasoning_tokens"] > 0).all()
            assert (df["completion_tokens"] > df["reasoning_tokens"]).all()
            if model == "o4-mini":  # OpenAI returns no reasoning text, only its tokens' count
                assert df["reasoning_content"].isna().all() and df["cost_usd"].gt(0).all()
                for row in df.itertuples():  # and bills them, as output
                    assert row.cost_usd == prices.cost(model, prompt_tokens=row.prompt_tokens,
                                                       completion_tokens=row.completion_tokens)
            else:
                assert df["reasoning_content"].str.len().gt(0).all()


@pytest.mark.anyio
async def test_a_qwen_stream_whose_chunks_repeat_the_text_so_far_is_read_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Qwen asked for ``incremental_output: false`` (in ``parameters``, as a gateway's guide
    shows it) sends in each chunk the whole text so far, reasoning and content apart. The
    pieces were joined: every row's content and reasoning repeated themselves ("HelHello
    woHello world"). Each chunk now replaces what came before it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pieces, whole = await _thinking_streams(tmp_path, "parameters = { incremental_output = true }",
                                            "parameters = { incremental_output = false }")
    _same_answers(whole, pieces)


@pytest.mark.anyio
async def test_reasoning_a_gateway_streams_inside_the_content_is_recorded_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway asked for ``nebula_thinking_to_content`` (its guide's way to see Qwen's
    thinking in clients that show only the content) streams the reasoning inside the content,
    in ``<think>`` tags before the answer. It was recorded so: every row's content began with
    the model's thinking, and a schema's check of it failed. The thinking is now recorded as
    ``reasoning_content`` and the answer as the content, as without the option."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    apart, inlined = await _thinking_streams(tmp_path, "nebula_thinking_to_content = false",
                                             "nebula_thinking_to_content = true")
    _same_answers(inlined, apart)


async def _thinking_streams(tmp_path: Path, *extras: str) -> list[pd.DataFrame]:
    """The results of one streamed job of a thinking Qwen model over three rows against the
    simulator, run once with each of ``extras`` (a line of its ``[request.extra]``)."""
    inp = make_input(tmp_path, ["why is the sky blue", "what is rain", "name three rivers"])
    got = []
    async with Simulator(SimulatorConfig()) as sim:
        for i, extra in enumerate(extras):
            out = tmp_path / f"out-{i}"
            job_file = tmp_path / f"job-{i}.toml"
            job_file.write_text(
                '[request]\nmodel = "qwen3-omni-flash"\nprompt = "{text}"\nstream = true\n'
                f"[request.extra]\nenable_thinking = true\n{extra}\n")
            job = load_job(job_file, {"input": str(inp), "id_column": "id",
                                      "base_url": sim.base_url, "output": str(out)})
            s = await run_job(job, FAST)
            assert s.failed == 0
            got.append(pd.read_parquet(out / "results.parquet").set_index("id"))
    return got


def _same_answers(odd: pd.DataFrame, usual: pd.DataFrame) -> None:
    """The rows of a stream sent the odd way (``odd``) hold what the usual way's do."""
    assert odd["content"].str.startswith("Echo: [").all()
    assert odd["reasoning_content"].str.len().gt(0).all()
    for column in ("content", "reasoning_content", "completion_tokens", "finish_reason"):
        assert list(odd[column]) == list(usual[column]), column


@pytest.mark.anyio
async def test_n_choices_and_image_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": ["a", "b", "c", "d"], "text": ["one", "two", "three", "four"],
                  "img": ["cat.png", "https://example.invalid/x.jpg", "", "missing.png"]}
                 ).to_csv(inp, index=False)
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "Describe {text}",
                              "model": "gpt-4o", "base_url": sim.base_url,
                              "image_column": "img", "output": str(tmp_path / "out")})
        job = replace(job, request=replace(job.request, extra={"n": 3}))
        s = await run_job(job, FAST)
        assert sim.stats()["requests"] == 3  # the row with a missing image file is not sent
    df = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("id")
    assert s.error_types == {"invalid_row": 1} and "missing.png" in df.loc["d", "error_message"]
    for key in "abc":
        choices = json.loads(df.loc[key, "choices"])
        assert [c["index"] for c in choices] == [0, 1, 2]
        assert choices[0]["content"] == df.loc[key, "content"]
        assert len({c["content"] for c in choices}) == 3
    # An image part is billed as prompt tokens by the simulator (85 each).
    assert df.loc["a", "prompt_tokens"] > df.loc["c", "prompt_tokens"] + 80


# ----------------------------------------------------------------------------------------------
# Streams that break in the ways real servers and networks break them, run as jobs against a
# server that answers what each test says (``FaultServer``, on 127.0.0.1).

KEY = "sk-test-stream-7c41d2e9b0"  # for ``job_env``


def cut_here(request: web.BaseRequest) -> None:
    """Drop the connection mid-response: the chunked body never gets its last chunk."""
    assert request.transport is not None
    request.transport.close()


async def stream_reply(request: web.BaseRequest, *parts: bytes, drop: bool = False,
                       hold: bool = False) -> web.StreamResponse:
    """An SSE response of ``parts``, ended cleanly, cut off after them (``drop``) or left open
    (``hold``: the caller ends it)."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    if drop:
        cut_here(request)
    elif not hold:
        await response.write_eof()
    return response


FINISHED = (sse(stream_chunk("Echo: ")), sse(stream_chunk("whole", "stop")))
USAGE_CHUNK = sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
@pytest.mark.parametrize("usage", [True, False], ids=["after-usage", "after-finish"])
async def test_a_finished_stream_whose_connection_drops_before_done_is_taken(
        tmp_path: Path, usage: bool) -> None:
    """A stream whose answer finished, then lost its connection before its ``[DONE]`` (a proxy
    closing it without the last chunk) was a ``truncated_body``: the whole answer was thrown
    away, sent again and paid for again, and the row failed if every try ended so. It is
    whole, as one that ends cleanly without its ``[DONE]`` is: taken, once."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])

    async def finish_then_drop(srv: FaultServer, request: web.BaseRequest,
                               body: dict[str, Any]) -> web.StreamResponse:
        return await stream_reply(request, *FINISHED, *([USAGE_CHUNK] if usage else []),
                                  drop=True)

    async with FaultServer(finish_then_drop) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True))
        assert srv.requests == 2  # none sent again
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["status"]) == ["ok", "ok"] and list(df["attempts"]) == [1, 1]
    assert list(df["content"]) == ["Echo: whole"] * 2 and list(df["finish_reason"]) == ["stop"] * 2
    if usage:
        assert list(df["total_tokens"]) == [13, 13] and df["cost_usd"].gt(0).all()


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_an_error_chunk_given_as_text_fails_the_try_not_records_half_an_answer(
        tmp_path: Path) -> None:
    """A gateway whose upstream failed mid-answer may say so in a chunk whose ``error`` is
    text, not an object, then end the stream with its ``[DONE]``. That chunk was passed over:
    the row was ok with half an answer and no finish_reason, and never sent again. It is a
    ``stream_error`` with the gateway's words, retried as an error event is."""
    inp = make_csv(tmp_path / "in.csv", ["breaks once", "breaks always"])

    async def error_as_text(srv: FaultServer, request: web.BaseRequest,
                            body: dict[str, Any]) -> web.StreamResponse | None:
        text = str(body["messages"][-1]["content"])
        if "always" in text or srv.by_prompt[prompt_key(text)] == 1:
            return await stream_reply(request, sse(stream_chunk("Echo: half")),
                                      sse({"error": "upstream timed out"}), b"data: [DONE]\n\n")
        return await stream_reply(request, *FINISHED, USAGE_CHUNK, b"data: [DONE]\n\n")

    async with FaultServer(error_as_text) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True))
        assert srv.requests == 2 + 3
    assert s.exit_code == 3
    df = results(tmp_path)
    once, always = df.loc["r0000"], df.loc["r0001"]
    assert (once["status"], once["attempts"], once["content"]) == ("ok", 2, "Echo: whole")
    assert (always["status"], always["error_type"], always["attempts"]) == (
        "failed", "stream_error", 3)
    assert "upstream timed out" in always["error_message"]


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_an_error_event_whose_error_is_text_says_the_gateway_s_words(
        tmp_path: Path) -> None:
    """An ``event: error`` whose data is ``{"error": "<text>"}`` (an upstream's failure as
    text, as an error chunk may give it) was read as an error object of no message: the row
    failed as ``stream_error`` saying only "no message". Its words are the message now, as in
    an error chunk without the event name."""
    inp = make_csv(tmp_path / "in.csv", ["one"])

    async def error_event_as_text(srv: FaultServer, request: web.BaseRequest,
                                  body: dict[str, Any]) -> web.StreamResponse:
        return await stream_reply(
            request, sse(stream_chunk("Echo: half")),
            b'event: error\ndata: {"error": "upstream timed out", "error_type": "overloaded"}'
            b"\n\n")

    async with FaultServer(error_event_as_text) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True))
        assert srv.requests == 3
    assert s.exit_code == 3
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["error_type"]) == ("failed", "stream_error")
    assert row["error_message"] == "upstream timed out (type overloaded)"


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
@pytest.mark.parametrize("between", [
    b"event: ping\r\ndata: 2026-12-01 02:00:15.007252\r\n\r\n",
    b"data:\n\n",
    b"data: \r\n\r\n",
], ids=["ping-event", "empty-data", "empty-data-crlf"])
async def test_events_that_carry_no_chunk_are_passed_over(tmp_path: Path, between: bytes) -> None:
    """Events that are no chunk of the answer: a ping under its own event name whose data is a
    time, not JSON (a server built on sse-starlette before 2.0 sends one every 15 s of a long
    answer), and an event whose data is empty (which SSE does not dispatch). Each failed its
    try as an invalid_body: every long answer from such a server was paid for on every try and
    its row failed."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])

    async def pinging(srv: FaultServer, request: web.BaseRequest,
                      body: dict[str, Any]) -> web.StreamResponse:
        return await stream_reply(request, between, FINISHED[0], between, FINISHED[1],
                                  USAGE_CHUNK, b"data: [DONE]\n\n")

    async with FaultServer(pinging) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True))
        assert srv.requests == 2
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["content"]) == ["Echo: whole"] * 2 and list(df["total_tokens"]) == [13, 13]


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_events_of_another_kind_lend_the_answer_no_usage_but_their_errors_count(
        tmp_path: Path) -> None:
    """An event named other than ``message`` or ``error`` is none of the chunks, by SSE (a
    message listener gets none of it): a gateway that passes Anthropic's own events through
    beside the chunks sent ``event: message_delta`` with its usage, ``{"output_tokens": 15}``,
    after the usage chunk; it was read as a chunk and the row's usage was its, not the
    answer's. A chunk under a name of the server's own is still read (the OpenAI SDK reads the
    data of any event), and an error in another kind of event fails the try with its words."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])
    passed_through = (b'event: message_delta\ndata: {"type": "message_delta", "delta": '
                      b'{"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}\n\n'
                      b'event: ping\ndata: {"type": "ping"}\n\n')

    async def anthropic_events_beside(srv: FaultServer, request: web.BaseRequest,
                                      body: dict[str, Any]) -> web.StreamResponse:
        if "two" in json.dumps(body["messages"]):  # its chunks under the server's own name
            return await stream_reply(request, *(b"event: completion\n" + part for part in (
                *FINISHED, USAGE_CHUNK)), passed_through, b"data: [DONE]\n\n")
        return await stream_reply(request, *FINISHED, USAGE_CHUNK, passed_through,
                                  b"data: [DONE]\n\n")

    async with FaultServer(anthropic_events_beside) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True))
        assert srv.requests == 2
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["content"]) == ["Echo: whole"] * 2
    assert list(df["completion_tokens"]) == [4, 4] and list(df["total_tokens"]) == [13, 13]

    failing = tmp_path / "failing"
    failing.mkdir()
    inp = make_csv(failing / "in.csv", ["one"])

    async def overloaded_notice(srv: FaultServer, request: web.BaseRequest,
                                body: dict[str, Any]) -> web.StreamResponse:
        return await stream_reply(request, sse(stream_chunk("Echo: half")),
                                  b'event: upstream\ndata: {"error": {"message": "upstream '
                                  b'overloaded", "type": "overloaded_error"}}\n\n')

    async with FaultServer(overloaded_notice) as srv:
        s = await fault_run(job_for(failing, srv.base_url, inp, stream=True))
    row = results(failing).loc["r0000"]
    assert (row["status"], row["error_type"]) == ("failed", "stream_error")
    assert row["error_message"].startswith("upstream overloaded")


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_an_error_event_in_a_stream_held_open_is_read_not_timed_out(
        tmp_path: Path) -> None:
    """A gateway that sends an error event and then holds the stream open (neither [DONE] nor
    a close) was waited on until the timeout: the row failed as a ``timeout``, with the error's
    words lost, and one a retry cannot fix (a prompt past the context window) was sent again
    and again, each try given longer. The error is read once what may follow it has had its
    moment."""
    inp = make_csv(tmp_path / "in.csv", ["too long a prompt"])

    async def error_then_hold(srv: FaultServer, request: web.BaseRequest,
                              body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(status=200,
                                      headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(stream_chunk("Echo: ")) + sse({"error": {
            "message": "This model's maximum context length is 8192 tokens",
            "type": "invalid_request_error", "code": "context_length_exceeded"}}))
        return await srv.held(response)

    async with FaultServer(error_then_hold) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, timeout_s=2))
        assert srv.requests == 1
    assert s.exit_code == 3
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["error_type"], row["attempts"]) == ("failed", "stream_error", 1)
    assert "maximum context length" in row["error_message"]


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
@pytest.mark.parametrize("cut", ["dropped", "stalls"])
async def test_a_stream_cut_after_reporting_its_usage_keeps_what_that_try_was_billed(
        tmp_path: Path, cut: str) -> None:
    """A gateway that reports the usage so far in every chunk bills a stream cut midway for
    what it reported. Cut by a dropped connection or a stall past the timeout, that usage was
    lost: the row's earlier tries cost nothing in its results and reports, though a stream
    that ended cleanly at the same point kept its usage. It is kept the same way now."""
    inp = make_csv(tmp_path / "in.csv", ["cut once"])
    so_far = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}

    async def cut_after_usage(srv: FaultServer, request: web.BaseRequest,
                              body: dict[str, Any]) -> web.StreamResponse:
        if cut == "dropped":
            return await stream_reply(request, sse({**stream_chunk("Echo: "), "usage": so_far}),
                                      drop=True)
        response = await stream_reply(request, sse({**stream_chunk("Echo: "), "usage": so_far}),
                                      hold=True)
        return await srv.held(response)

    async with FaultServer(cut_after_usage, times=1) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, timeout_s=1))
        assert srv.requests == 2
    assert s.exit_code == 0
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["attempts"]) == ("ok", 2)
    assert row["earlier_cost_usd"] > 0  # the cut try's 9 + 2 tokens
    assert report(tmp_path)["cost_earlier_attempts_usd"] > 0


def test_tool_call_deltas_without_an_index_that_repeat_their_id_are_one_call_each() -> None:
    """A server that leaves out the tool calls' ``index`` and repeats each call's id on every
    piece of its arguments: each piece was taken for a call of its own, so a row had calls
    with no name and arguments cut in two (a forced function's arguments, broken JSON, failed
    the row). The id tells the calls apart, as the index would."""
    def call(call_id: str, args: str, name: str | None = None) -> dict[str, Any]:
        fn = {"arguments": args, **({"name": name} if name else {})}
        return {"tool_calls": [{"id": call_id, "type": "function", "function": fn}]}

    st = feed([chunk(call("call_a", '{"city": ', "get_weather")), chunk(call("call_a", '"Paris"}')),
               chunk(call("call_b", '{"tz": ', "get_time")), chunk(call("call_b", '"CET"}')),
               chunk({}, "tool_calls"), "data: [DONE]\n"])
    assert st.first.tool_calls() == [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function",
         "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
    ]


def refusing_stream_options(sent: list[dict[str, Any]]) -> Fault:
    """An endpoint that does not know ``stream_options`` (Azure OpenAI before its 2024-09 API
    versions): a 400 naming it, else a whole stream; every body it gets is put in ``sent``."""
    async def answer(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse:
        sent.append(body)
        if "stream_options" in body:
            return web.json_response(error_body(
                "Unrecognized request argument supplied: stream_options",
                "invalid_request_error", None), status=400)
        return await stream_reply(request, *FINISHED, b"data: [DONE]\n\n")
    return answer


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_an_endpoint_that_refuses_stream_options_is_told_how_to_send_none(
        tmp_path: Path) -> None:
    """A stream job asks for the usage chunk with ``stream_options``; an endpoint that does not
    know the field (Azure OpenAI before its 2024-09 API versions) refuses every request with a
    400 naming it. The job stopped telling its user to fix what it names, a field they never
    set, and ``stream_options = { include_usage = false }`` in ``[request.extra]`` still sent
    it: no setting let the job run. That setting now sends no ``stream_options``, and the 400
    says so."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])
    sent: list[dict[str, Any]] = []

    async with FaultServer(refusing_stream_options(sent)) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True))
        assert s.exit_code == 3
        message = results(tmp_path)["error_message"].iloc[0]
        assert message.startswith("Unrecognized request argument supplied: stream_options")
        assert "stream_options = { include_usage = false } in [request.extra]" in message
        job_file = tmp_path / "job.toml"
        job_file.write_text("[request.extra]\nstream_options = { include_usage = false }\n")
        job = load_job(job_file, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                                  "model": "gpt-4o-mini", "stream": True,
                                  "base_url": srv.base_url, "output": str(tmp_path / "out2")})
        s = await fault_run(job)
    assert s.exit_code == 0
    assert "stream_options" not in sent[-1] and sent[-1]["stream"] is True
    df = pd.read_parquet(tmp_path / "out2" / "results.parquet")
    assert list(df["content"]) == ["Echo: whole"] * 2


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_a_batch_file_refused_its_stream_options_is_told_how_to_send_none(
        tmp_path: Path) -> None:
    """A batch file whose bodies stream is sent asking for the usage chunk, and an endpoint
    that does not know ``stream_options`` refuses every row. Its 400 told the user to set
    ``[request.extra]``, which a batch file's job cannot have (request options are refused
    with one): it now also says what to put in each body, which is then sent without the
    field."""
    sent: list[dict[str, Any]] = []

    def batch(path: Path, options: dict[str, Any] | None) -> Path:
        extra = {} if options is None else {"stream_options": options}
        path.write_text("".join(json.dumps({
            "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "stream": True, **extra,
                     "messages": [{"role": "user", "content": f"hello {i}"}]}}) + "\n"
            for i in range(2)))
        return path

    async with FaultServer(refusing_stream_options(sent)) as srv:
        inp = batch(tmp_path / "in.jsonl", None)
        job = load_job(None, {"input": str(inp), "base_url": srv.base_url,
                              "output": str(tmp_path / "out")})
        s = await fault_run(job)
        assert s.exit_code == 3
        df = pd.read_parquet(tmp_path / "out" / "results.parquet")
        message = df["error_message"].iloc[0]
        assert message.startswith("Unrecognized request argument supplied: stream_options")
        advice = '"stream_options": {"include_usage": false} in each body'
        assert advice in message, message
        inp = batch(tmp_path / "in2.jsonl", {"include_usage": False})
        job = load_job(None, {"input": str(inp), "base_url": srv.base_url,
                              "output": str(tmp_path / "out2")})
        s = await fault_run(job)
    assert s.exit_code == 0
    assert "stream_options" not in sent[-1] and sent[-1]["stream"] is True


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_stream_options_without_a_stream_are_refused_before_sending(
        tmp_path: Path) -> None:
    """``stream_options`` in ``[request.extra]`` of a job that does not stream: OpenAI answers
    every row 400 ("only allowed when 'stream' is enabled"), and the 400's advice was to set
    ``include_usage = false``, which does not help. The job is refused before sending, saying
    what does; a batch file's body so made is told the same by its 400."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])
    job_file = tmp_path / "job.toml"
    job_file.write_text("[request.extra]\nstream_options = { include_usage = true }\n")
    options = {"input": str(inp), "id_column": "id", "prompt": "{text}",
               "model": "gpt-4o-mini", "output": str(tmp_path / "out")}
    with pytest.raises(ConfigError) as refused:
        load_job(job_file, options)
    assert str(refused.value) == (
        f"job file {job_file}: [request.extra] stream_options is only for streamed requests, "
        "and this job's are not (APIs refuse every row so) — set stream = true in [request] "
        "(or --stream), or leave it out")
    assert load_job(job_file, {**options, "stream": True}).request.stream is True

    sent: list[dict[str, Any]] = []

    async def openai_like(srv: FaultServer, request: web.BaseRequest,
                          body: dict[str, Any]) -> web.StreamResponse:
        sent.append(body)
        if "stream_options" in body and body.get("stream") is not True:
            return web.json_response(error_body(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "invalid_request_error", "stream_options"), status=400)
        return web.json_response(completion(body, "fine"))

    batch = tmp_path / "in.jsonl"
    batch.write_text(json.dumps({
        "custom_id": "r0", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "stream_options": {"include_usage": True},
                 "messages": [{"role": "user", "content": "hello"}]}}) + "\n")
    async with FaultServer(openai_like) as srv:
        s = await fault_run(load_job(None, {"input": str(batch), "base_url": srv.base_url,
                                            "output": str(tmp_path / "out2")}))
    assert s.exit_code == 3 and len(sent) == 1
    message = pd.read_parquet(tmp_path / "out2" / "results.parquet")["error_message"].iloc[0]
    assert message.endswith("— stream_options is only for streamed requests: leave it out of "
                            'the body, or set "stream": true'), message


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_a_first_chunk_with_an_empty_model_and_id_does_not_hide_the_answers(
        tmp_path: Path) -> None:
    """Azure OpenAI's stream begins with a chunk of its prompt filter's results whose ``model``
    and ``id`` are empty; the chunks of the answer name the model that answered. The empty ones
    were taken: the row showed the model asked for (``gpt-4o``), not the snapshot that answered
    and whose price it pays (``gpt-4o-2024-05-13``), and an empty request id. The first model
    and id that are not empty are taken."""
    inp = make_csv(tmp_path / "in.csv", ["one"])
    snapshot = "gpt-4o-2024-05-13"

    def answered(event: dict[str, Any]) -> bytes:
        return sse({**event, "id": "chatcmpl-az", "object": "chat.completion.chunk",
                    "model": snapshot})

    async def azure(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse:
        return await stream_reply(
            request,
            sse({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                 "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}),
            answered(stream_chunk("Echo: ")), answered(stream_chunk("whole", "stop")),
            answered({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4,
                                               "total_tokens": 13}}),
            b"data: [DONE]\n\n")

    async with FaultServer(azure) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, model="gpt-4o"))
    assert s.exit_code == 0
    row = results(tmp_path).loc["r0000"]
    assert (row["content"], row["model"], row["request_id"]) == (
        "Echo: whole", snapshot, "chatcmpl-az")
    assert list(report(tmp_path)["by_model"]) == [snapshot]


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_parallel_tool_calls_a_gateway_streams_all_at_index_0_are_calls_each(
        tmp_path: Path) -> None:
    """A gateway that passes on Gemini's parallel function calls gives each of them
    ``index: 0`` (with an id and a name of its own). They were taken for pieces of one call:
    the row had a single call with the last call's id, the first call's name and the
    arguments of all of them run together (``{"city": "Paris"}{"tz": "CET"}``: broken JSON).
    A call that comes with an id and a name of its own under an index another call has is a
    call of its own; the pieces that follow under that index are its."""
    inp = make_csv(tmp_path / "in.csv", ["two calls"])

    def call(args: str, call_id: str | None = None, name: str | None = None) -> bytes:
        head = {"id": call_id, "type": "function"} if call_id else {}
        fn = {"arguments": args, **({"name": name} if name else {})}
        return sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "gemini",
                    "choices": [{"index": 0, "finish_reason": None, "delta": {
                        "tool_calls": [{"index": 0, **head, "function": fn}]}}]})

    async def gemini_calls(srv: FaultServer, request: web.BaseRequest,
                           body: dict[str, Any]) -> web.StreamResponse:
        return await stream_reply(
            request, call('{"city": ', "call_a", "get_weather"), call('"Paris"}'),
            call('{"tz": "CET"}', "call_b", "get_time"),
            sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            USAGE_CHUNK, b"data: [DONE]\n\n")

    async with FaultServer(gemini_calls) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True))
    assert s.exit_code == 0
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["finish_reason"]) == ("ok", "tool_calls")
    assert json.loads(row["tool_calls"]) == [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function",
         "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
    ]


# ----------------------------------------------------------------------------------------------
# What timeout_s bounds for a stream: the wait for its first byte and the gaps between its
# chunks, not the whole answer (10 × timeout_s at most).

STREAM_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
               "stream": True}


async def keep_alive_then_finish(srv: FaultServer, request: web.BaseRequest,
                                 body: dict[str, Any]) -> web.StreamResponse:
    """A first chunk, SSE comments alone (a gateway's keep-alive while the model thinks) for
    longer than the job's timeout_s of 1 s, then the rest of the answer."""
    response = await stream_reply(request, sse(stream_chunk("Echo: ")), hold=True)
    for _ in range(8):
        await anyio.sleep(0.2)
        await response.write(b": keep-alive\n\n")
    await response.write(FINISHED[1] + USAGE_CHUNK + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
@pytest.mark.parametrize("sends", ["tokens", "keep-alive"])
async def test_a_stream_still_sending_past_timeout_s_finishes_in_one_try(
        tmp_path: Path, sends: str) -> None:
    """A reasoning model streaming a long answer, its chunks (or a gateway's keep-alive
    comments) still coming, was cut off at timeout_s however alive the stream was, and each
    try was paid for (longer tries too, 2.25 × at most, all cut off again if the answer took
    longer). A stream is timed out when it stalls, not while it sends."""
    inp = make_csv(tmp_path / "in.csv", ["think long", "think long too"])
    if sends == "tokens":  # 20 reasoning and 20 answer chunks, 60 ms apart: some 2.4 s each
        async with Simulator(SimulatorConfig(reply_tokens=20, ms_per_token=60)) as sim:
            s = await fault_run(job_for(tmp_path, sim.base_url, inp, stream=True, timeout_s=1,
                                        model="deepseek-r1"))
            assert sim.stats()["requests"] == 2
    else:
        async with FaultServer(keep_alive_then_finish) as srv:
            s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, timeout_s=1))
            assert srv.requests == 2
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["status"]) == ["ok", "ok"] and list(df["attempts"]) == [1, 1]
    if sends == "tokens":
        assert (df["reasoning_tokens"] == 20).all() and df["content"].str.len().gt(0).all()
    else:
        assert list(df["content"]) == ["Echo: whole"] * 2 and (df["total_tokens"] == 13).all()
    assert seen_by_type(report(tmp_path)) == {}


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_a_stream_that_stalls_after_sending_past_timeout_s_times_out_its_usage_kept(
        tmp_path: Path) -> None:
    """Chunks for longer than timeout_s, each with the usage so far, then nothing: the try
    times out once the stall passes timeout_s, billed for what it reported; the retry is
    whole."""
    inp = make_csv(tmp_path / "in.csv", ["stalls once"])
    so_far = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}

    async def sends_then_stalls(srv: FaultServer, request: web.BaseRequest,
                                body: dict[str, Any]) -> web.StreamResponse:
        response = await stream_reply(request, hold=True)
        for _ in range(7):  # 1.4 s of chunks
            await response.write(sse({**stream_chunk("Echo: "), "usage": so_far}))
            await anyio.sleep(0.2)
        return await srv.held(response)

    async def first_stalls(srv: FaultServer, request: web.BaseRequest,
                           body: dict[str, Any]) -> web.StreamResponse:
        if srv.requests == 1:
            return await sends_then_stalls(srv, request, body)
        return await stream_reply(request, *FINISHED, USAGE_CHUNK, b"data: [DONE]\n\n")

    async with FaultServer(first_stalls) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, timeout_s=1))
        assert srv.requests == 2
    assert s.exit_code == 0
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["attempts"], row["content"]) == ("ok", 2, "Echo: whole")
    assert row["earlier_cost_usd"] > 0  # the stalled try's 9 + 2 tokens
    assert seen_by_type(report(tmp_path)) == {"timeout": 1}


@pytest.mark.anyio
async def test_what_a_stream_s_timeout_bounds(job_env: str) -> None:
    """A streamed request times out when no byte of its answer comes within timeout_s, when
    it stalls mid-answer for timeout_s, and when it is still sending at 10 × timeout_s; each
    says which."""
    async def stalls(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse:
        response = await stream_reply(request, sse(stream_chunk("Echo: ")), hold=True)
        return await srv.held(response)

    async def never_ends(srv: FaultServer, request: web.BaseRequest,
                         body: dict[str, Any]) -> web.StreamResponse:
        response = await stream_reply(request, sse(stream_chunk("Echo: ")), hold=True)
        with anyio.move_on_after(30):
            while not srv.closing.is_set():
                await anyio.sleep(0.02)
                await response.write(b": keep-alive\n\n")
        return response

    said: dict[str, TransportError] = {}
    with anyio.fail_after(25):
        async with SilentServer() as silent, ChatClient(silent.base_url, job_env,
                                                        timeout_s=0.3, connections=4) as client:
            with pytest.raises(TransportError) as caught:
                await client.complete(STREAM_BODY)
            said["silent"] = caught.value
        for name, fault in (("stalls", stalls), ("never_ends", never_ends)):
            async with FaultServer(fault) as srv, ChatClient(srv.base_url, job_env,
                                                             timeout_s=0.3,
                                                             connections=4) as client:
                with pytest.raises(TransportError) as caught:
                    await client.complete(STREAM_BODY)
                said[name] = caught.value
                if fault is stalls:  # a retry's longer timeout (1.5 × timeout_s) is the one named
                    with pytest.raises(TransportError) as caught:
                        await client.complete(STREAM_BODY, 0.45)
                    said["stalls_again"] = caught.value
                assert not client._deadlines and not client._expired
    assert {e.error_type for e in said.values()} == {"timeout"}
    assert all(e.retryable for e in said.values())
    assert said["silent"].message == "no byte of the answer within 0.3 s"
    assert said["stalls"].message == "the stream stalled: nothing came for 0.3 s mid-answer"
    assert said["stalls_again"].message == ("the stream stalled: nothing came for 0.45 s "
                                            "mid-answer")
    assert said["never_ends"].message == ("the stream was still sending at 3 s, the most a "
                                          "streamed answer is given (10 × its 0.3 s timeout)")


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_a_finished_stream_held_open_with_pings_is_taken_without_waiting_out_its_cap(
        tmp_path: Path) -> None:
    """A server that finishes the answer, leaves out its [DONE] and holds the stream open,
    sending a keep-alive comment every fraction of a second (a gateway's pings): each comment
    came within the moment what may follow a finished answer is read for, so the row waited
    until the stream's timeout ran out — now 10 × timeout_s, 20 minutes at the defaults —
    for an answer it had. What follows the finish is read for that moment in all."""
    inp = make_csv(tmp_path / "in.csv", ["one row"])

    async def finished_then_pings(srv: FaultServer, request: web.BaseRequest,
                                  body: dict[str, Any]) -> web.StreamResponse:
        response = await stream_reply(request, *FINISHED, USAGE_CHUNK, hold=True)
        with anyio.move_on_after(90):
            while not srv.closing.is_set():
                await anyio.sleep(0.1)
                await response.write(b": ping\n\n")
        return response

    async with FaultServer(finished_then_pings) as srv:
        with anyio.fail_after(30):  # far less than the stream's cap of 600 s
            s = await run_job(job_for(tmp_path, srv.base_url, inp, stream=True, timeout_s=60),
                              FAST)
        assert srv.requests == 1
    assert s.exit_code == 0
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["attempts"], row["content"]) == ("ok", 1, "Echo: whole")
    assert row["total_tokens"] == 13


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_a_stream_begun_that_outlasts_the_timeout_twice_does_not_stop_the_job(
        tmp_path: Path) -> None:
    """A long answer streamed past timeout_s twice, first thing in the run (a thinking model's
    stream that takes longer than the timeout): the endpoint answered, its stream began and
    reported usage, so its row is tried again with a longer timeout, as a row's own timeouts
    are, and each cut try's billed usage is kept; the job is not stopped as one whose endpoint
    takes connections and answers nothing."""
    inp = make_csv(tmp_path / "in.csv", ["slow answer"])
    so_far = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}

    async def outlasts(srv: FaultServer, request: web.BaseRequest,
                       body: dict[str, Any]) -> web.StreamResponse:
        response = await stream_reply(request, sse({**stream_chunk("Echo: "), "usage": so_far}),
                                      hold=True)
        return await srv.held(response)

    async with FaultServer(outlasts, times=2) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, timeout_s=0.5),
                            max_attempts=6)
        assert srv.requests == 3
    assert s.exit_code == 0, s.stopped
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["attempts"]) == ("ok", 3)
    rep = report(tmp_path)
    assert rep["cost_earlier_attempts_usd"] == pytest.approx(row["earlier_cost_usd"])
    one_try = float(row["earlier_cost_usd"]) / 2  # the two cut tries' 9 + 2 tokens each
    assert one_try > 0


ROLE_ONLY = sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None}]})
THINKING = sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "deepseek-r1",
                "choices": [{"index": 0, "delta": {"reasoning_content": "Let me think"},
                             "finish_reason": None}]})


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
@pytest.mark.parametrize("first", [ROLE_ONLY, b": PROCESSING\n\n", THINKING],
                         ids=["role-only", "comment", "reasoning"])
async def test_a_stream_answers_once_it_carries_some_of_the_answer(
        tmp_path: Path, first: bytes) -> None:
    """A proxy that sends a first chunk at once (a role-only delta, with the id and model, or
    an SSE comment) and then nothing: a role-only chunk counted as an answer begun, so the job
    was not stopped as one whose endpoint answers nothing, and every row failed through six
    ever longer timeouts instead. A stream answers once it carries some of the answer (text,
    reasoning, a tool call, a finish): a thinking model's reasoning chunks do, and its rows
    are tried again with longer timeouts; the others stop the job at a row's second
    timeout."""
    inp = make_csv(tmp_path / "in.csv", ["row a", "row b"])

    async def first_then_hangs(srv: FaultServer, request: web.BaseRequest,
                               body: dict[str, Any]) -> web.StreamResponse:
        response = await stream_reply(request, first, hold=True)
        return await srv.held(response)

    async with FaultServer(first_then_hangs, times=None if first != THINKING else 2) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, timeout_s=0.5),
                            max_attempts=6)
    if first == THINKING:
        assert s.exit_code == 0, s.stopped
        df = results(tmp_path)
        assert list(df["status"]) == ["ok", "ok"] and list(df["attempts"]) == [3, 3]
        return
    assert s.exit_code == 4 and (s.ok, s.failed, s.pending) == (0, 0, 2), s
    assert s.stopped.startswith("no answer to any request since the run began: 2 attempts at ")
    assert "(the stream stalled before its answer began: nothing came for 0.75 s)" in s.stopped
    assert srv.requests <= 4


@pytest.mark.anyio
async def test_a_usage_chunk_that_comes_late_is_waited_for_as_a_chunk_is(job_env: str) -> None:
    """OpenAI sends the usage chunk after the one with the finish_reason; a gateway in front of
    a slow upstream may send it seconds later. What followed a finished answer was read for
    2 s at most, so a later usage chunk was lost and the row's cost unknown. The usage chunk
    is waited for (2 s, timeout_s at most; pings not counting); then the [DONE] only for a
    moment. A server that holds a finished stream open without ever
    sending its usage costs that wait once: the client's later streams are read on for the
    moment only, losing a usage that would come later."""
    body = {**STREAM_BODY, "stream_options": {"include_usage": True}}

    async def usage_late(srv: FaultServer, request: web.BaseRequest,
                         body: dict[str, Any]) -> web.StreamResponse:
        response = await stream_reply(request, *FINISHED, hold=True)
        if srv.requests in (2, 3):  # held open with pings, no usage ever
            with anyio.move_on_after(30):
                while not srv.closing.is_set():
                    await response.write(b": ping\n\n")
                    await anyio.sleep(0.1)
            return response
        await anyio.sleep(1.25)  # past the 0.5 s a finished stream was read on for
        with contextlib.suppress(ConnectionResetError):  # the client may have gone
            await response.write(USAGE_CHUNK + b"data: [DONE]\n\n")
            await response.write_eof()
        return response

    with anyio.fail_after(25):
        async with FaultServer(usage_late) as srv, ChatClient(srv.base_url, job_env,
                                                              timeout_s=2,
                                                              connections=4) as client:
            late = await client.complete(body)
            held = await client.complete(body)
            assert (held.content, held.finish_reason, held.total_tokens) == (
                "Echo: whole", "stop", None)
            held_again = await client.complete(body)
            lost = await client.complete(body)
            unasked = await client.complete(STREAM_BODY)
    assert (late.content, late.finish_reason, late.total_tokens) == ("Echo: whole", "stop", 13)
    assert held_again.total_tokens is None and lost.total_tokens is None
    assert unasked.total_tokens is None  # not asked for: not waited for


@pytest.mark.anyio
async def test_a_server_whose_usage_comes_back_has_it_waited_for_again(
        job_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finished streams held open without their usage chunk (a gateway's failover to an
    upstream that sends none) made the client wait for no later stream's usage for the rest of
    the run: once the usage came back, late as before, every row's tokens and cost were lost.
    A stream that brings its usage makes later ones waited on for theirs again; one held open
    alone, a hiccup, stops no later one's wait (the usage of every stream but one came 0.5 s
    after its finish, and the 30 s after that one lost it: 294 rows of 400 at concurrency 1);
    and while none is waited on, after two, one is again after a while (``_USAGE_RETRY_S``,
    made short here), which finds it come back. A server that keeps holding them costs one
    wait in that while."""
    monkeypatch.setattr(client_module, "_USAGE_RETRY_S", 1.5)
    monkeypatch.setattr(client_module, "_USAGE_RETRY_X", 0.0)
    body = {**STREAM_BODY, "stream_options": {"include_usage": True}}
    held_at = (1, 4, 6, 7)  # the requests held open with pings and no usage
    at_once = 2  # its usage and [DONE] right after the finish; the others' 1.2 s after it

    async def failover(srv: FaultServer, request: web.BaseRequest,
                       body: dict[str, Any]) -> web.StreamResponse:
        response = await stream_reply(request, *FINISHED, hold=True)
        if srv.requests in held_at:
            with anyio.move_on_after(30):
                while not srv.closing.is_set():
                    await response.write(b": ping\n\n")
                    await anyio.sleep(0.1)
            return response
        if srv.requests != at_once:
            await anyio.sleep(1.2)  # past the 0.5 s a finished stream is read on for
        with contextlib.suppress(ConnectionResetError):  # the client may have gone
            await response.write(USAGE_CHUNK + b"data: [DONE]\n\n")
            await response.write_eof()
        return response

    with anyio.fail_after(30):
        async with FaultServer(failover) as srv, ChatClient(srv.base_url, job_env, timeout_s=2,
                                                            connections=2) as client:
            tokens = [(await client.complete(body)).total_tokens for _ in range(8)]
            await anyio.sleep(1.5)
            tokens += [(await client.complete(body)).total_tokens for _ in range(2)]
    # held; at once (the usage back); late, waited for again; held, alone; late, waited for
    # still; held twice; late, not waited for; late, waited for once a while passed; late,
    # waited for as before
    assert tokens == [None, 13, 13, None, 13, None, None, None, 13, 13]


@pytest.mark.anyio
async def test_a_usage_chunk_is_waited_for_as_long_as_the_stream_s_chunks_took_not_the_timeout(
        job_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The usage chunk asked for was waited for the whole timeout_s after the finish: a server
    that holds its finished streams open without one cost each run's first wave that long (16
    rows at once took 6.0 s at timeout_s = 6). It is waited for a moment (``_USAGE_WAIT_S``,
    made short here), or four times the longest gap between the stream's chunks where longer:
    a slow upstream's usage, 1 s after the finish of chunks 0.4 s apart, is read; a fast
    stream's is not waited for that long."""
    monkeypatch.setattr(client_module, "_USAGE_WAIT_S", 0.3)
    body = {**STREAM_BODY, "stream_options": {"include_usage": True}}

    async def usage_late(srv: FaultServer, request: web.BaseRequest,
                         body: dict[str, Any]) -> web.StreamResponse:
        slow = srv.requests == 1
        response = await stream_reply(request, FINISHED[0], hold=True)
        for part in (sse(stream_chunk("who")), sse(stream_chunk("le", "stop"))):
            if slow:
                await anyio.sleep(0.4)
            await response.write(part)
        with anyio.move_on_after(1.0):
            await srv.closing.wait()
        with contextlib.suppress(ConnectionResetError):  # the client may have gone
            await response.write(USAGE_CHUNK + b"data: [DONE]\n\n")
            await response.write_eof()
        return response

    with anyio.fail_after(20):
        async with FaultServer(usage_late) as srv, ChatClient(srv.base_url, job_env, timeout_s=6,
                                                              connections=2) as client:
            slow = await client.complete(body)
            fast = await client.complete(body)
    assert (slow.content, slow.finish_reason, slow.total_tokens) == ("Echo: whole", "stop", 13)
    assert (fast.content, fast.finish_reason, fast.total_tokens) == ("Echo: whole", "stop", None)


@pytest.mark.anyio
async def test_a_stream_with_no_finish_reason_is_cut_without_its_usage_while_none_is_waited_for(
        job_env: str) -> None:
    """A gateway whose streams for one model have no finish_reason (as ai-nebula's reference
    shows them) but their usage chunk, asked for: one that ends with its [DONE] and no usage
    is cut (a broken upstream's, closed by the gateway). Once another model's finished stream
    was held open without its usage (the usage then not waited for, for 30 s), such a cut
    stream was taken whole, its half answer recorded ok: not waiting for the usage was read as
    not having asked for it."""
    options = {"stream_options": {"include_usage": True}}
    unfinished = (sse(stream_chunk("Echo: ")), sse(stream_chunk("half")))

    async def gateway(srv: FaultServer, request: web.BaseRequest,
                      body: dict[str, Any]) -> web.StreamResponse:
        if body["model"] == "gpt-4o-mini":  # finished, then held open without its usage
            return await srv.held(await stream_reply(request, *FINISHED, hold=True))
        usage = (USAGE_CHUNK,) if srv.requests <= 2 else ()
        return await stream_reply(request, *unfinished, *usage, b"data: [DONE]\n\n")

    kimi = {**STREAM_BODY, **options, "model": "kimi-k2.5"}
    with anyio.fail_after(25):
        async with FaultServer(gateway) as srv, ChatClient(srv.base_url, job_env, timeout_s=2,
                                                           connections=2) as client:
            with pytest.raises(TransportError, match="no other answer of the model yet"):
                await client.complete(kimi)  # none yet to tell the endpoint's way: cut
            told = await client.complete(kimi)  # the endpoint's way, with its usage
            held = await client.complete({**STREAM_BODY, **options})
            with pytest.raises(TransportError, match="no usage chunk either") as cut:
                await client.complete(kimi)
    assert (told.content, told.finish_reason, told.total_tokens) == ("Echo: half", None, 13)
    assert (held.content, held.finish_reason, held.total_tokens) == ("Echo: whole", "stop", None)
    assert cut.value.error_type == "stream_cut" and cut.value.retryable


@pytest.mark.anyio
async def test_streams_after_one_held_open_without_usage_are_not_read_on_for_a_done(
        job_env: str) -> None:
    """A server that holds a finished stream open with no usage chunk and no ``[DONE]`` costs
    the wait for the usage once; every later stream was still read on for what may follow
    (0.5 s each at timeout_s = 2: 16 rows at concurrency 4 took 3.9 s, 10.9 s at 6, where
    2.8 s and 6.5 s now), for a ``[DONE]`` the server holds back. Once a stream was held
    open so, a later one is taken a moment after its usage (``_DONE_GRACE_S``): here the
    server sends it 0.2 s after the finish, then more 0.3 s after that, which the stream is no
    longer read on for."""
    body = {**STREAM_BODY, "stream_options": {"include_usage": True}}
    more = sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": 90, "total_tokens": 99}})

    async def held(srv: FaultServer, request: web.BaseRequest,
                   body: dict[str, Any]) -> web.StreamResponse:
        response = await stream_reply(request, *FINISHED, hold=True)
        if srv.requests == 2:
            with contextlib.suppress(ConnectionResetError):  # the client may have gone
                await anyio.sleep(0.2)  # its usage, waited for (one stream held open alone)
                await response.write(USAGE_CHUNK)
                await anyio.sleep(0.3)  # within the 0.5 s a finished stream was read on for
                await response.write(more)
        return await srv.held(response)

    with anyio.fail_after(25):
        async with FaultServer(held) as srv, ChatClient(srv.base_url, job_env, timeout_s=2,
                                                        connections=4) as client:
            first = await client.complete(body)
            later = await client.complete(body)
    assert (first.content, first.finish_reason, first.total_tokens) == (
        "Echo: whole", "stop", None)
    assert (later.content, later.finish_reason, later.total_tokens) == (
        "Echo: whole", "stop", 13)


@pytest.mark.anyio
async def test_a_server_that_held_one_stream_open_has_the_done_of_later_ones_read(
        job_env: str) -> None:
    """One finished stream held open once (a gateway's hiccup), and every later stream of the
    run was closed as soon as its usage came, its ``[DONE]`` not read: the server's writes of
    it failed on a closing connection, and each request opened a connection of its own (a TLS
    handshake a row on a remote endpoint). A later stream's ``[DONE]`` that comes a moment
    after its usage is read, and tells that the server sends it: its connection is kept."""
    body = {**STREAM_BODY, "stream_options": {"include_usage": True}}
    peers: list[int] = []
    lost = []

    async def held_once(srv: FaultServer, request: web.BaseRequest,
                        body: dict[str, Any]) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername")[1])
        if srv.requests == 1:
            return await srv.held(await stream_reply(request, *FINISHED, USAGE_CHUNK, hold=True))
        response = await stream_reply(request, *FINISHED, USAGE_CHUNK, hold=True)
        await anyio.sleep(0.002)  # written apart, as a server's last event often is
        try:
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:  # the client had gone
            lost.append(srv.requests)
        return response

    with anyio.fail_after(25):
        async with FaultServer(held_once) as srv, ChatClient(srv.base_url, job_env, timeout_s=2,
                                                            connections=4) as client:
            replies = [await client.complete(body) for _ in range(8)]
    assert [(r.content, r.finish_reason, r.total_tokens) for r in replies] == [
        ("Echo: whole", "stop", 13)] * 8
    assert lost == []
    assert len(set(peers[1:])) < 7, peers  # a connection each, not kept, before


@pytest.mark.anyio
async def test_an_empty_usage_object_in_every_chunk_is_no_usage(job_env: str) -> None:
    """A gateway that sends ``"usage": {}`` in every chunk until the last (as Higress passes on
    Claude's stream) had its empty object taken for the usage: a usage chunk asked for and sent
    late was not waited for, so the row's tokens and cost were lost; and with ``n`` = 2 the
    answer was taken as whole once choice 0 finished, before choice 1 began, dropping it. An
    empty usage object is no usage."""
    body = {**STREAM_BODY, "stream_options": {"include_usage": True}}

    def part(text: str, finish: str | None = None, index: int = 0) -> bytes:
        return sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "usage": {},
                    "choices": [{"index": index, "delta": {"content": text},
                                 "finish_reason": finish}]})

    async def empty_usage(srv: FaultServer, request: web.BaseRequest,
                          body: dict[str, Any]) -> web.StreamResponse:
        response = await stream_reply(request, part("Echo: "), part("whole", "stop"), hold=True)
        await anyio.sleep(1.25)  # past the 0.5 s a finished stream is read on for
        rest = [part("Echo: other", "stop", 1)] if body.get("n") == 2 else []
        with contextlib.suppress(ConnectionResetError):  # the client may have gone
            await response.write(b"".join([*rest, USAGE_CHUNK, b"data: [DONE]\n\n"]))
            await response.write_eof()
        return response

    with anyio.fail_after(25):
        async with FaultServer(empty_usage) as srv, ChatClient(srv.base_url, job_env,
                                                               timeout_s=2,
                                                               connections=4) as client:
            one = await client.complete(body)
            two = await client.complete({**body, "n": 2})
    assert (one.content, one.finish_reason, one.total_tokens) == ("Echo: whole", "stop", 13)
    assert two.total_tokens == 13
    assert two.choices is not None
    assert [c["content"] for c in json.loads(two.choices)] == ["Echo: whole", "Echo: other"]


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
@pytest.mark.parametrize("gateway", ["finishes", "never-finishes"])
async def test_a_done_without_a_finish_reason_is_a_cut_where_answers_have_one(
        tmp_path: Path, gateway: str) -> None:
    """A gateway whose upstream breaks mid-answer may close the stream with its usage so far
    and a ``[DONE]``, no finish_reason: the row was ok with half an answer, never sent again.
    Where the endpoint's other answers for the model came with a finish_reason, such a stream
    is cut: retried, its billed usage kept. A gateway that never sends one (its reference's
    example stream has none before its ``[DONE]``) has its answers taken whole, their
    finish_reason null."""
    inp = make_csv(tmp_path / "in.csv", ["whole", "cut once", "whole too"])
    texts = (stream_chunk("Echo: "), stream_chunk("half"))

    async def upstream_breaks(srv: FaultServer, request: web.BaseRequest,
                              body: dict[str, Any]) -> web.StreamResponse:
        text = str(body["messages"][-1]["content"])
        if gateway == "never-finishes":
            return await stream_reply(request, *map(sse, texts), USAGE_CHUNK, b"data: [DONE]\n\n")
        if "cut" in text and srv.by_prompt[prompt_key(text)] == 1:
            return await stream_reply(request, *map(sse, texts), USAGE_CHUNK, b"data: [DONE]\n\n")
        return await stream_reply(request, *FINISHED, USAGE_CHUNK, b"data: [DONE]\n\n")

    async with FaultServer(upstream_breaks) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, concurrency=1))
    assert s.exit_code == 0
    df = results(tmp_path)
    if gateway == "never-finishes":
        # The first stream, with no other to tell, is sent again once (see the next test).
        assert srv.requests == 4 and list(df["content"]) == ["Echo: half"] * 3
        assert df["finish_reason"].isna().all() and list(df["attempts"]) == [2, 1, 1]
        return
    assert srv.requests == 4
    assert list(df["content"]) == ["Echo: whole"] * 3
    assert list(df["finish_reason"]) == ["stop"] * 3 and list(df["attempts"]) == [1, 2, 1]
    assert df.loc["r0001", "earlier_cost_usd"] > 0  # the cut try's 9 + 4 tokens
    assert seen_by_type(report(tmp_path)) == {"stream_cut": 1}


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_a_done_without_a_finish_reason_with_no_other_stream_to_tell_is_sent_again(
        tmp_path: Path) -> None:
    """The rules above need another stream of the model to tell whether the endpoint sends a
    finish_reason: at concurrency 1 (or with nothing else in flight) a run's first stream that
    a gateway closed with its usage so far and a ``[DONE]``, no finish_reason, was ok with half
    an answer, never sent again. It is taken as cut and sent again: the next stream tells (a
    finish_reason: it was a cut; none again: the endpoint's way, above, one request more)."""
    inp = make_csv(tmp_path / "in.csv", ["cut once", "whole", "whole too"])
    half = (sse(stream_chunk("Echo: ")), sse(stream_chunk("half")))

    async def upstream_breaks(srv: FaultServer, request: web.BaseRequest,
                              body: dict[str, Any]) -> web.StreamResponse:
        text = str(body["messages"][-1]["content"])
        if "cut" in text and srv.by_prompt[prompt_key(text)] == 1:
            return await stream_reply(request, *half, USAGE_CHUNK, b"data: [DONE]\n\n")
        return await stream_reply(request, *FINISHED, USAGE_CHUNK, b"data: [DONE]\n\n")

    async with FaultServer(upstream_breaks) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, concurrency=1))
        assert srv.requests == 4
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["content"]) == ["Echo: whole"] * 3 and (df["finish_reason"] == "stop").all()
    assert list(df["attempts"]) == [2, 1, 1] and df.loc["r0000", "earlier_cost_usd"] > 0
    assert seen_by_type(report(tmp_path)) == {"stream_cut": 1}


@pytest.mark.anyio
async def test_the_budget_holds_when_streams_are_cut_without_usage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A stream cut midway (a dropped connection) after some of its answer came, with no
    usage reported, was billed all the same, but its try counted for nothing against
    max_cost_usd: a job whose every row was cut once sent all 30 rows twice under a budget of
    1 USD, its cut tries' prompts and half answers (some 0.6 USD) besides the 0.9 reported.
    Such a try counts at its estimate (the prompt and max_tokens), as a reply without usage
    does, with a warning, and the reports still show only the usage servers reported."""
    from tests.test_cost_control import costly_job

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    inp = make_input(tmp_path, [f"item {i} [[sim:cut*1]]" for i in range(30)])
    costly_job(tmp_path, inp, max_tokens=100, concurrency=1)
    async with Simulator(SimulatorConfig(reply_tokens=20)) as sim:
        job = load_job(tmp_path / "job.toml", {"base_url": sim.base_url, "max_cost_usd": 1.0,
                                               "stream": True})
        s = await run_job(job, FAST)
        sent = sim.stats()["requests"]
    # A cut try is estimated at ~0.1 USD (100 completion tokens at 1000 USD per 1M, plus the
    # prompt), a whole one costs ~0.03: some eight rows fit under 1 USD, not all 30.
    assert s.exit_code == 4 and s.stopped and "max_cost_usd" in s.stopped
    assert sent <= 20 and s.ok < 10
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert df["earlier_cost_usd"].isna().all()  # no usage reported for the cut tries
    err = capsys.readouterr().err
    assert err.count("streamed answer was cut") == 1


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_n_choices_with_usage_in_every_chunk_wait_for_a_choice_that_starts_late(
        tmp_path: Path) -> None:
    """A server that sends the usage so far in every chunk (vLLM asked for
    ``continuous_usage_stats``, a gateway passing its upstream's counts on) and streams the
    ``n`` choices one after another: once choice 0 finished, the usage already seen was taken
    for the last chunk's, so every choice asked for counted as sent, and the stream was read
    on for a moment only. A choice that began later was dropped, its row ok with one choice
    of two. Usage sent before the answer finished says nothing of its end: the stream is read
    until every choice asked for finished."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])

    def part(text: str, index: int, tokens: int, finish: str | None = None) -> bytes:
        return sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "m",
                    "usage": {"prompt_tokens": 9, "completion_tokens": tokens,
                              "total_tokens": 9 + tokens},
                    "choices": [{"index": index, "delta": {"content": text},
                                 "finish_reason": finish}]})

    async def one_choice_after_another(srv: FaultServer, request: web.BaseRequest,
                                       body: dict[str, Any]) -> web.StreamResponse:
        assert body.get("n") == 2
        response = await stream_reply(request, part("Echo: ", 0, 2), part("first", 0, 4, "stop"),
                                      hold=True)
        await anyio.sleep(1.0)  # past the 0.5 s a finished stream is read on for
        with contextlib.suppress(ConnectionResetError):  # the client may have gone
            await response.write(part("Echo: ", 1, 6) + part("second", 1, 8, "stop")
                                 + b"data: [DONE]\n\n")
            await response.write_eof()
        return response

    async with FaultServer(one_choice_after_another) as srv:
        job = job_for(tmp_path, srv.base_url, inp, stream=True, timeout_s=2)
        s = await fault_run(replace(job, request=replace(job.request, extra={"n": 2})))
        assert srv.requests == 2
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["content"]) == ["Echo: first"] * 2 and list(df["total_tokens"]) == [17, 17]
    for choices in df["choices"]:
        assert [(c["index"], c["content"], c["finish_reason"]) for c in json.loads(choices)] == [
            (0, "Echo: first", "stop"), (1, "Echo: second", "stop")]


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_a_server_that_ignores_n_and_sends_no_done_has_its_one_choice_taken(
        tmp_path: Path) -> None:
    """A server that ignores ``n``, sends the usage so far in every chunk and closes the
    stream without a ``[DONE]``: its one choice finished, but with usage in every chunk the
    other choices asked for might still have come, so the clean end was a ``stream_cut``,
    sent again and paid for on every try, and the row failed. Once the stream has ended
    nothing more comes: an answer whose every choice sent finished is whole, as after a
    ``[DONE]``."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])

    def part(text: str, tokens: int, finish: str | None = None) -> bytes:
        return sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "m",
                    "usage": {"prompt_tokens": 9, "completion_tokens": tokens,
                              "total_tokens": 9 + tokens},
                    "choices": [{"index": 0, "delta": {"content": text},
                                 "finish_reason": finish}]})

    async def ignores_n(srv: FaultServer, request: web.BaseRequest,
                        body: dict[str, Any]) -> web.StreamResponse:
        assert body.get("n") == 2
        return await stream_reply(request, part("Echo: ", 2), part("one", 4, "stop"))

    async with FaultServer(ignores_n) as srv:
        job = job_for(tmp_path, srv.base_url, inp, stream=True)
        s = await fault_run(replace(job, request=replace(job.request, extra={"n": 2})))
        assert srv.requests == 2
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["status"]) == ["ok", "ok"] and list(df["content"]) == ["Echo: one"] * 2
    assert list(df["total_tokens"]) == [13, 13]
    assert list(df["choices"]) == [  # n asked for: the one choice that came, as a list
        '[{"index":0,"content":"Echo: one","finish_reason":"stop"}]'] * 2


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_a_stream_that_ignores_incremental_output_false_is_read_in_linear_time(
        tmp_path: Path) -> None:
    """A request that asks for Qwen's ``incremental_output`` false, sent to a server that
    ignores it and streams only what is new: each chunk joined every piece before it to see
    whether it repeated them, work that grew with the square of the answer (3 s of CPU for
    a 20,000-token answer, 12 s for 40,000). The pieces are joined only when a chunk is long
    enough to repeat them: counted here, the joins of text while the answer streams."""
    inp = make_csv(tmp_path / "in.csv", ["long answer"])
    words = [f" w{i % 10}" for i in range(3000)]
    events = [*(sse(stream_chunk(w)) for w in words), sse(stream_chunk("", "stop")), USAGE_CHUNK,
              b"data: [DONE]\n\n"]

    async def ignores_it(srv: FaultServer, request: web.BaseRequest,
                         body: dict[str, Any]) -> web.StreamResponse:
        assert body["parameters"] == {"incremental_output": False}
        return await stream_reply(request, *events)

    joins = 0

    def count_joins(frame: Any, event: str, arg: Any) -> None:
        nonlocal joins
        if event == "c_call" and getattr(arg, "__name__", "") == "join" and (
                getattr(arg, "__self__", None) == ""):
            joins += 1

    async with FaultServer(ignores_it) as srv:
        job = job_for(tmp_path, srv.base_url, inp, stream=True)
        job = replace(job, request=replace(job.request,
                                           extra={"parameters": {"incremental_output": False}}))
        sys.setprofile(count_joins)
        try:
            s = await fault_run(job)
        finally:
            sys.setprofile(None)
    assert s.exit_code == 0
    assert results(tmp_path).loc["r0000", "content"] == "".join(words)
    assert joins < 100  # not one a chunk (3,000)


def _token(word: str, logprob: float) -> dict[str, Any]:
    return {"token": word, "logprob": logprob, "bytes": list(word.encode()), "top_logprobs": []}


@pytest.mark.anyio
@pytest.mark.parametrize("repeats", [True, False], ids=["all-so-far", "new-only"])
async def test_logprobs_of_a_qwen_stream_that_repeats_them_so_far_are_counted_once(
        job_env: str, repeats: bool) -> None:
    """Qwen's ``incremental_output`` false repeats the whole text so far in each chunk, and a
    server that repeats the tokens' logprobs so far beside it had each chunk's appended: a
    20-token answer recorded 210 entries (its memory growing with the square of the answer).
    Entries that repeat those so far replace them, as the text does; a server that sends only
    the new tokens' beside the whole text has them follow one another, as before."""
    words = [f"w{i} " for i in range(20)]
    tokens = [_token(w, -0.01 * (i + 1)) for i, w in enumerate(words)]
    events = []
    for i in range(len(words)):
        lp = tokens[:i + 1] if repeats else tokens[i:i + 1]
        event = stream_chunk("".join(words[:i + 1]), "stop" if i == len(words) - 1 else None)
        event["choices"][0]["logprobs"] = {"content": lp}
        events.append(sse(event))

    async def whole_so_far(srv: FaultServer, request: web.BaseRequest,
                           body: dict[str, Any]) -> web.StreamResponse:
        return await stream_reply(request, *events, USAGE_CHUNK, b"data: [DONE]\n\n")

    body = {**STREAM_BODY, "logprobs": True, "parameters": {"incremental_output": False}}
    with anyio.fail_after(20):
        async with FaultServer(whole_so_far) as srv, ChatClient(
                srv.base_url, job_env, timeout_s=5, connections=1) as client:
            res = await client.complete(body)
    assert res.content == "".join(words)
    assert res.logprobs is not None and json.loads(res.logprobs) == tokens


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
@pytest.mark.parametrize("gateway", ["finishes", "never-finishes"])
async def test_a_done_without_a_finish_reason_in_the_first_streams_waits_to_be_told(
        tmp_path: Path, gateway: str) -> None:
    """The rule above needs an answer of the model with its finish_reason first: with rows in
    flight together (concurrency 8), a stream cut so before any other had finished was ok
    with half an answer, never sent again. Such a stream, while others are in flight, waits
    for the next of the model's to end: one with a finish_reason makes it a cut; one without
    (a gateway that sends none) makes both whole, and later ones are taken at once."""
    inp = make_csv(tmp_path / "in.csv", ["cut once"] + [f"whole {i}" for i in range(7)])
    half = (sse(stream_chunk("Echo: ")), sse(stream_chunk("half")))

    async def upstream_breaks(srv: FaultServer, request: web.BaseRequest,
                              body: dict[str, Any]) -> web.StreamResponse:
        text = str(body["messages"][-1]["content"])
        if gateway == "never-finishes":
            await anyio.sleep(0.1 if "cut" in text else 0.3)
            return await stream_reply(request, *half, USAGE_CHUNK, b"data: [DONE]\n\n")
        if "cut" in text and srv.by_prompt[prompt_key(text)] == 1:
            return await stream_reply(request, *half, USAGE_CHUNK, b"data: [DONE]\n\n")
        await anyio.sleep(0.3)  # the cut stream ends first
        return await stream_reply(request, *FINISHED, USAGE_CHUNK, b"data: [DONE]\n\n")

    async with FaultServer(upstream_breaks) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, concurrency=8))
    assert s.exit_code == 0
    df = results(tmp_path)
    if gateway == "never-finishes":
        assert srv.requests == 8 and list(df["content"]) == ["Echo: half"] * 8
        assert df["finish_reason"].isna().all() and (df["attempts"] == 1).all()
        return
    assert srv.requests == 9
    assert list(df["content"]) == ["Echo: whole"] * 8 and (df["finish_reason"] == "stop").all()
    assert df.loc["r0000", "attempts"] == 2
    assert seen_by_type(report(tmp_path)) == {"stream_cut": 1}


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_a_done_without_a_finish_reason_or_the_usage_the_endpoint_sends_is_a_cut(
        tmp_path: Path) -> None:
    """A gateway that sends no finish_reason but the usage chunk asked for (its reference's
    example stream, whose last chunk "usually contains usage statistics") has its answers
    taken whole; one whose upstream broke, closed with a ``[DONE]`` and no usage, was ok with
    half an answer, its tokens and cost unknown. Where the endpoint's whole answers for the
    model came with their usage, one without it is cut: sent again."""
    inp = make_csv(tmp_path / "in.csv", ["whole", "whole too", "cut once"])
    half = (sse(stream_chunk("Echo: ")), sse(stream_chunk("half")))

    async def no_finish_reasons(srv: FaultServer, request: web.BaseRequest,
                                body: dict[str, Any]) -> web.StreamResponse:
        assert body["stream_options"] == {"include_usage": True}
        text = str(body["messages"][-1]["content"])
        if "cut" in text and srv.by_prompt[prompt_key(text)] == 1:
            return await stream_reply(request, *half, b"data: [DONE]\n\n")
        return await stream_reply(request, FINISHED[0], sse(stream_chunk("whole")), USAGE_CHUNK,
                                  b"data: [DONE]\n\n")

    async with FaultServer(no_finish_reasons) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, concurrency=1))
        assert srv.requests == 5  # the first sent again to tell (above), the cut one again
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["content"]) == ["Echo: whole"] * 3 and df["finish_reason"].isna().all()
    assert list(df["attempts"]) == [2, 1, 2] and list(df["total_tokens"]) == [13] * 3
    assert seen_by_type(report(tmp_path)) == {"stream_cut": 2}


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_a_done_without_a_finish_reason_does_not_wait_on_other_models_streams(
        tmp_path: Path) -> None:
    """In a job of several models, a stream of a model with one row, ended by a ``[DONE]``
    with no finish_reason, waited for the next stream of its model to tell it while other
    models' streams were in flight: none came, and its worker was held for timeout_s. Only
    streams of the same model are waited on: with none in flight it is cut at once and sent
    again. Here the other model's streams are held until the row's second request comes (3 s
    at most), which it does before they end."""
    inp = tmp_path / "in.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(5)], "text": [f"t{i}" for i in range(5)],
                  "model": ["one-row"] + ["many"] * 4}).to_csv(inp, index=False)
    half = (sse(stream_chunk("Echo: ")), sse(stream_chunk("half")))
    sent_again = anyio.Event()
    held_until_sent_again = []

    async def upstream_breaks(srv: FaultServer, request: web.BaseRequest,
                              body: dict[str, Any]) -> web.StreamResponse:
        if body["model"] == "one-row":
            if srv.by_prompt[prompt_key(str(body["messages"][-1]["content"]))] == 1:
                await anyio.sleep(0.1)  # the other model's streams are in flight
                return await stream_reply(request, *half, USAGE_CHUNK, b"data: [DONE]\n\n")
            sent_again.set()
            return await stream_reply(request, *FINISHED, USAGE_CHUNK, b"data: [DONE]\n\n")
        response = await stream_reply(request, FINISHED[0], hold=True)
        with anyio.move_on_after(3):
            await sent_again.wait()
        held_until_sent_again.append(sent_again.is_set())
        with contextlib.suppress(ConnectionResetError):
            await response.write(FINISHED[1] + USAGE_CHUNK + b"data: [DONE]\n\n")
            await response.write_eof()
        return response

    async with FaultServer(upstream_breaks) as srv:
        s = await fault_run(job_for(tmp_path, srv.base_url, inp, stream=True, model_column="model",
                                    timeout_s=6))
        assert srv.requests == 6
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["content"]) == ["Echo: whole"] * 5 and list(df["attempts"]) == [2, 1, 1, 1, 1]
    assert held_until_sent_again == [True] * 4  # not the 3 s: the row was not held


@pytest.mark.anyio
@pytest.mark.usefixtures("job_env")
async def test_a_stream_within_what_max_tokens_takes_is_not_cut_at_ten_timeouts(
        tmp_path: Path) -> None:
    """The whole of a stream was given 10 × timeout_s, whatever it asked for: a long answer
    still streaming its tokens at that point (a thinking model's 32,000 tokens at 25 a second
    take 21 minutes, past the 20 of the default timeout's) was cut, billed, and sent again.
    The cap is there for a stream that never ends (keep-alive comments forever); an answer
    that sends its tokens ends within its max_tokens (times n). The whole is given as long as
    those take at 10 tokens a second, where that is longer: here 40 tokens 0.1 s apart, 4 s,
    past 10 × the 0.3 s timeout, with max_tokens 64 (6.4 s)."""
    inp = make_csv(tmp_path / "in.csv", ["long answer", "long answer too"])
    async with Simulator(SimulatorConfig(reply_tokens=40, ms_per_token=100)) as sim:
        s = await fault_run(job_for(tmp_path, sim.base_url, inp, stream=True, timeout_s=0.3,
                                    max_tokens=64))
        assert sim.stats()["requests"] == 2
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["status"]) == ["ok", "ok"] and list(df["attempts"]) == [1, 1]
    assert (df["completion_tokens"] == 40).all()
