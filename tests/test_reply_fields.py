"""What a reply holds beyond its content: tool calls, search citations, every choice of a
stream, an error inside a 200, reasoning under either name, and a 402 that stops the job."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest

from batchrunner.client import ChatClient, StreamAssembler
from batchrunner.config import JobConfig, load_job
from batchrunner.errors import (
    AccountError,
    AuthError,
    BadResponseError,
    QuotaError,
    RequestError,
)
from batchrunner.journal import Journal
from batchrunner.results import rebuild_outputs
from batchrunner.retry import RetryPolicy
from batchrunner.runner import (
    RunOptions,
    RunSummary,
    iter_rows,
    make_work,
    plan_from_output,
    prepare,
    run_job,
)
from batchrunner.simulator import Simulator, SimulatorConfig, prompt_key

KEY = "sk-test-fields-0123456789"
FAST = RunOptions(retry=RetryPolicy(base_s=0.0, max_attempts=3), progress="none",
                  handle_signals=False)
TEMPLATE = "Q: {text}"
PRODUCT = {"type": "object",
           "properties": {"name": {"type": "string"}, "price": {"type": "number"}},
           "required": ["name", "price"], "additionalProperties": False}
TOOLS = [{"type": "function",
          "function": {"name": "record_product", "parameters": PRODUCT}}]


pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def make_csv(path: Path, texts: list[str]) -> Path:
    pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).to_csv(
        path, index=False)
    return path


def job_for(tmp_path: Path, base_url: str, inp: Path, out: str = "out", *,
            extra: dict[str, Any] | None = None, **over: Any) -> JobConfig:
    overrides: dict[str, Any] = {
        "input": str(inp), "id_column": "id", "prompt": TEMPLATE, "model": "gpt-4o-mini",
        "max_tokens": 64, "base_url": base_url, "output": str(tmp_path / out),
        "concurrency": 4}
    overrides.update(over)
    job = load_job(None, overrides)
    if extra:
        job = replace(job, request=replace(job.request, extra=extra))
    return job


async def run(job: JobConfig) -> RunSummary:
    with anyio.fail_after(60):
        return await run_job(job, FAST)


def results(tmp_path: Path, out: str = "out") -> pd.DataFrame:
    return pd.read_parquet(tmp_path / out / "results.parquet").set_index("id")


def feed(events: list[dict[str, Any]]) -> StreamAssembler:
    st = StreamAssembler()
    for e in events:
        st.feed(b"data: " + orjson.dumps(e) + b"\n")
    st.feed(b"data: [DONE]\n")
    return st


def delta(index: int, d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "model": "m", "choices": [{"index": index, "delta": d,
                                                  "finish_reason": finish}]}


def client() -> ChatClient:
    return ChatClient("http://127.0.0.1:9/v1", KEY, timeout_s=5, connections=1)


def parse(body: dict[str, Any]) -> Any:
    return client()._parse(orjson.dumps(body), "req-1", 1.0, {})


# ----------------------------------------------------------------------------------------------
# The stream parser on recorded shapes


def test_a_stream_cut_anywhere_into_pieces_reads_the_same() -> None:
    """Network pieces split lines anywhere (a 600 KB event arrives in many): the stream cut
    into pieces of 1 byte (every boundary), 7, 100, 4,096 bytes or whole gives the same answer
    as its lines fed one by one, the last line without a break."""
    events = [delta(0, {"content": "Hel"}), delta(0, {"content": "lo " + "x" * 3000}),
              delta(0, {}, "stop"),
              {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}]
    raw = b"".join(b"event: message\n: keep-alive\ndata: " + orjson.dumps(e) + b"\r\n\n"
                   for e in events) + b"data: [DONE]"
    whole = StreamAssembler()
    for line in raw.split(b"\n"):
        whole.feed(line)
    for size in (1, 7, 100, 4096, len(raw)):
        st = StreamAssembler()
        for at in range(0, len(raw), size):
            st.feed_bytes(raw[at:at + size])
        st.end()
        assert st.done and st.first.text() == whole.first.text() == "Hello " + "x" * 3000
        assert st.usage == whole.usage and st.finish_reason == "stop"


def test_a_byte_order_mark_cut_between_pieces_is_still_dropped() -> None:
    """A stream that starts with a UTF-8 BOM, its three bytes split between the first network
    pieces: the BOM was dropped only from a first piece holding all of it, so the first line
    read as a field named "\\ufeffdata" and its event (here the whole answer) was lost."""
    raw = (b"\xef\xbb\xbfdata: " + orjson.dumps(delta(0, {"content": "Hi"}, "stop")) + b"\n\n"
           b"data: [DONE]\n\n")
    for size in (1, 2, 3, 4, len(raw)):
        st = StreamAssembler()
        for at in range(0, len(raw), size):
            st.feed_bytes(raw[at:at + size])
        st.end()
        assert st.done and st.first.text() == "Hi" and st.finish_reason == "stop", size


@pytest.mark.parametrize("eol", [b"\r", b"\r\n", b"\n"], ids=["cr", "crlf", "lf"])
def test_lines_ended_by_a_lone_cr_read_as_by_lf(eol: bytes) -> None:
    """SSE lets lines end with CR, CRLF or LF: a stream of each, pretty-printed events over
    several data lines among them, cut into pieces anywhere, reads the same."""
    pretty = json.dumps(delta(0, {"content": "lo"}), indent=2).splitlines()
    lines = [b": keep-alive", b"data: " + orjson.dumps(delta(0, {"content": "Hel"})), b"",
             *(b"data: " + line.encode() for line in pretty), b"",
             b"data: " + orjson.dumps(delta(0, {}, "stop")), b"",
             b"data: " + orjson.dumps({"id": "c", "choices": [], "usage": {"prompt_tokens": 3}}),
             b"", b"data: [DONE]", b""]
    raw = eol.join(lines)
    for size in (1, 2, 3, 7, 100, len(raw)):
        st = StreamAssembler()
        for at in range(0, len(raw), size):
            st.feed_bytes(raw[at:at + size])
        st.end()
        assert st.done and st.first.text() == "Hello" and st.finish_reason == "stop", size
        assert st.usage == {"prompt_tokens": 3}


def test_an_event_whose_json_spans_several_data_lines_is_read() -> None:
    """SSE joins an event's data: lines with line breaks: pretty-printed JSON is one event."""
    st = StreamAssembler()
    pretty = json.dumps(delta(0, {"content": "hi"}, "stop"), indent=2).encode()
    for line in pretty.split(b"\n"):
        st.feed(b"data: " + line + b"\n")
    st.feed(b"\n")
    assert st.first.text() == "hi" and st.finish_reason == "stop"
    broken = StreamAssembler()
    broken.feed(b"data: {not json\n")
    broken.feed(b"data: still not}\n")
    with pytest.raises(ValueError):
        broken.feed(b"\n")  # the event ends and its data is not JSON
    # Data lines that cannot start a JSON object are refused at once, as before.
    with pytest.raises(ValueError):
        StreamAssembler().feed(b"data: some plain text\n")
    # An event cut short is refused at [DONE], or at the end of the stream, not dropped.
    for last in (b"data: [DONE]\n", None):
        cut = StreamAssembler()
        cut.feed_bytes(b"data: " + orjson.dumps(delta(0, {"content": "a"}, "stop")) + b"\n\n"
                       + b'data: {"id": "c", "choices": [],\ndata:  "usage": {"prompt_')
        with pytest.raises(ValueError):
            cut.feed_bytes(b'tokens": 3}\n' + last) if last else cut.end()


def test_a_data_line_without_a_colon_is_a_data_field_with_no_value() -> None:
    """SSE reads a line without a colon as a field named by the whole line, its value empty:
    a bare ``data`` line adds an empty line to its event's data (an event of it alone is not
    dispatched), and a bare ``event`` names the default kind, ``message``. Both were kept as
    stray lines, as if the body were no stream, which ``stray_body`` then read them into."""
    pretty = json.dumps(delta(0, {"content": "hi"}, "stop"), indent=2).encode().split(b"\n")
    st = StreamAssembler()
    st.feed_bytes(b"data\n\nevent\n" + b"".join(b"data: " + line + b"\n" for line in pretty[:2])
                  + b"data\n" + b"".join(b"data: " + line + b"\n" for line in pretty[2:])
                  + b"\ndata: [DONE]\n\n")
    st.end()
    assert st.done and st.first.text() == "hi" and st.finish_reason == "stop"
    assert st.stray is None


def test_an_error_event_is_read_whole_whatever_its_shape() -> None:
    st = StreamAssembler()
    pretty = json.dumps({"error": {"message": "bad key", "code": 401}}, indent=2).encode()
    st.feed_bytes(b"event: error\n" + b"".join(b"data: " + line + b"\n"
                                                for line in pretty.split(b"\n")) + b"\n")
    assert st.error == {"message": "bad key", "code": 401}
    at_end = StreamAssembler()
    at_end.feed_bytes(b"event: error\ndata: upstream timed out")  # no line break, then EOF
    at_end.end()
    assert at_end.error == {"message": "upstream timed out"}


def test_what_follows_done_is_not_read_and_a_line_too_long_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from batchrunner import client as client_module

    st = StreamAssembler()
    st.feed_bytes(b"data: " + orjson.dumps(delta(0, {"content": "a"}, "stop")) + b"\n\n"
                  + b"data: [DONE]\n\ndata: {junk after the end")
    assert st.done and st.first.text() == "a"
    monkeypatch.setattr(client_module, "_MAX_EVENT", 100)
    long = StreamAssembler()
    long.feed_bytes(b"data: " + b"x" * 60)
    with pytest.raises(client_module._EventTooLong):  # across pieces
        long.feed_bytes(b"x" * 60)
    spread = StreamAssembler()
    with pytest.raises(client_module._EventTooLong):  # an event over many data lines
        for _ in range(20):
            spread.feed(b'data: {"a": "' + b"y" * 10 + b'",\n')


def test_a_stream_is_whole_once_every_choice_asked_for_finished() -> None:
    st = StreamAssembler()
    st.feed(b"data: " + orjson.dumps(delta(0, {"content": "a"}, "stop")) + b"\n")
    assert st.finished(1) and not st.finished(2)  # n = 2: the second choice never came
    st.feed(b"data: " + orjson.dumps(delta(1, {"content": "b"})) + b"\n")
    assert not st.finished(2)
    st.feed(b"data: " + orjson.dumps(delta(1, {}, "length")) + b"\n")
    assert st.finished(2)


def test_stream_tool_call_deltas_are_assembled_per_index() -> None:
    """OpenAI's shape: id, type and name once per call, the arguments in pieces, two calls
    side by side."""
    st = feed([
        delta(0, {"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]}),
        delta(0, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        delta(0, {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                  "function": {"name": "get_time", "arguments": '{"tz"'}}]}),
        delta(0, {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        delta(0, {"tool_calls": [{"index": 1, "function": {"arguments": ': "CET"}'}}]}),
        delta(0, {}, "tool_calls"),
    ])
    assert st.first.tool_calls() == [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function",
         "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
    ]
    assert st.finish_reason == "tool_calls" and st.first.text() is None
    assert st.first_token_at is not None


def test_stream_tool_call_arguments_sent_as_an_object_are_kept_as_json() -> None:
    st = feed([delta(0, {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                         "function": {"name": "f", "arguments": {"a": 1}}}]}),
               delta(0, {}, "tool_calls")])
    assert st.first.tool_calls() == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]


def test_a_stream_error_event_is_read_like_an_error_body() -> None:
    c = client()

    def fail(error: dict[str, Any]) -> None:
        st = feed([delta(0, {"content": "a"}), {"error": error}])
        c._from_stream(st, "req-1", 0.0, 1.0, {}, 1)

    with pytest.raises(AuthError, match="UNAUTHENTICATED"):
        fail({"message": "API key not valid", "status": "UNAUTHENTICATED"})
    with pytest.raises(BadResponseError) as info:
        fail({"message": "prompt is too long", "type": "request_too_large"})
    assert info.value.error_type == "stream_error" and not info.value.retryable
    assert info.value.message == "prompt is too long (type request_too_large)"
    with pytest.raises(BadResponseError) as info:
        fail({"message": "upstream broke"})
    assert info.value.error_type == "stream_error" and info.value.retryable


def test_stream_keeps_every_choice_apart() -> None:
    st = feed([delta(0, {"content": "a"}), delta(1, {"content": "x"}), delta(0, {"content": "b"}),
               delta(1, {"content": "y"}, "length"), delta(0, {}, "stop")])
    assert "".join(st.content) == "ab" and st.finish_reason == "stop"
    assert json.loads(st.all_choices() or "") == [
        {"index": 0, "content": "ab", "finish_reason": "stop"},
        {"index": 1, "content": "xy", "finish_reason": "length"}]


def test_stream_annotations_and_top_level_citations_are_kept() -> None:
    note = {"type": "url_citation", "url_citation": {"url": "https://a.example/x", "title": "A",
                                                     "start_index": 0, "end_index": 4}}
    st = feed([delta(0, {"content": "text"}), delta(0, {"annotations": [note]}),
               delta(0, {}, "stop"),
               {"id": "c", "choices": [], "citations": ["https://b.example/y"]}])
    assert st.first.annotations == [note] and st.cited == ["https://b.example/y"]


# ----------------------------------------------------------------------------------------------
# Non-stream parsing


def reply(message: dict[str, Any], finish: str = "stop", **top: Any) -> dict[str, Any]:
    return {"id": "x", "model": "m", "choices": [{"index": 0, "message": message,
                                                 "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}, **top}


def test_reasoning_is_read_under_either_name() -> None:
    for name in ("reasoning_content", "reasoning"):
        res = parse(reply({"role": "assistant", "content": "4", name: "2+2 is 4"}))
        assert res.reasoning_content == "2+2 is 4", name


def test_tool_calls_are_recorded_as_the_api_gives_them() -> None:
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "f", "arguments": '{"a": 1}'}}]
    res = parse(reply({"role": "assistant", "content": None, "tool_calls": calls},
                      "tool_calls"))
    assert res.content is None and res.finish_reason == "tool_calls"
    assert json.loads(res.tool_calls) == calls and res.citations is None


def test_a_spoken_answers_transcript_is_its_content_streamed_or_not() -> None:
    """Asked for ``modalities`` with audio, OpenAI answers with a null content and the words
    spoken in ``message.audio.transcript`` (a stream's in pieces of ``delta.audio``, between
    those of the audio's data): such a row was ok with no content at all."""
    spoken = {"id": "audio_1", "data": "UklGRiQA", "expires_at": 1, "transcript": "Yes, both."}
    res = parse(reply({"role": "assistant", "content": None, "audio": spoken}))
    assert res.content == "Yes, both."
    res = parse(reply({"role": "assistant", "content": "Text.", "audio": spoken}))
    assert res.content == "Text."  # a text answer beside it is the content
    choices = [{"index": i, "finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "audio": {**spoken, "transcript": f"No. {i}"}}}
        for i in range(2)]
    res = client()._parse(orjson.dumps({"id": "x", "model": "m", "choices": choices}),
                          "req-1", 1.0, {}, 2)
    assert res.content == "No. 0"
    assert [c["content"] for c in json.loads(res.choices)] == ["No. 0", "No. 1"]
    st = feed([delta(0, {"role": "assistant", "content": None}),
               delta(0, {"content": None, "audio": {"id": "audio_1", "transcript": "Yes, "}}),
               delta(0, {"audio": {"data": "UklGRiQA"}}),
               delta(0, {"audio": {"transcript": "both."}}),
               delta(0, {"audio": {"expires_at": 1}}, "stop")])
    res = client()._from_stream(st, "req-1", 0.0, 1.0, {}, 1)
    assert res.content == "Yes, both." and res.ttft_ms is not None


def test_citations_from_annotations_and_from_grok_share_one_shape() -> None:
    note = {"type": "url_citation", "url_citation": {"url": "https://a.example/x", "title": "A",
                                                     "start_index": 3, "end_index": 9}}
    res = parse(reply({"role": "assistant", "content": "see [1]", "annotations": [note]},
                      citations=["https://b.example/y"]))
    assert json.loads(res.citations) == [
        {"url": "https://a.example/x", "title": "A", "start_index": 3, "end_index": 9},
        {"url": "https://b.example/y", "title": None, "start_index": None, "end_index": None}]
    plain = parse(reply({"role": "assistant", "content": "hi", "annotations": []}))
    assert plain.citations is None and plain.tool_calls is None


@pytest.mark.parametrize(("error", "retryable"), [
    ({"message": "upstream timed out", "type": "upstream_error"}, True),
    ({"message": "bad upstream status", "code": 502}, True),
    ({"message": "max_tokens is too large", "code": "400"}, False),
    ({"message": "prompt too long", "code": "context_length_exceeded"}, False),
    ({"message": "unknown parameter", "type": "invalid_request_error"}, False),
    ({"message": "upstream gave 502", "code": "bad_response_status_code"}, True),
    ("upstream failed", True),
    # Anthropic's error types and Google's canonical statuses, as gateways pass them on
    ({"message": "prompt is too long", "type": "request_too_large"}, False),
    ({"message": "temperature is not supported", "code": "unsupported_value"}, False),
    ({"message": "Request contains an invalid argument.", "code": 0,
      "status": "INVALID_ARGUMENT"}, False),
    ({"message": "Model not found.", "status": "NOT_FOUND"}, False),
    ({"message": "no such status word", "status": "invalid_argument"}, True),
])
def test_an_error_inside_a_200_keeps_its_message(error: Any, retryable: bool) -> None:
    with pytest.raises(BadResponseError) as info:
        parse({"error": error})
    e = info.value
    assert e.error_type == "error_body" and e.retryable is retryable and e.status == 200
    text = error["message"] if isinstance(error, dict) else error
    assert text in e.message


def test_an_error_inside_a_200_names_the_word_that_decided() -> None:
    with pytest.raises(BadResponseError) as info:
        parse({"error": {"message": "Bad argument.", "code": 0, "status": "INVALID_ARGUMENT"}})
    assert info.value.message == "Bad argument. (status INVALID_ARGUMENT)"
    with pytest.raises(BadResponseError) as info:
        parse({"error": {"message": "upstream failed", "code": 0}})
    assert info.value.message == "upstream failed (code 0)" and info.value.retryable


@pytest.mark.parametrize("error", [
    {"message": "x", "code": f"bad_key_{KEY}"},
    {"message": "x", "type": f"invalid_{KEY}", "code": 401},
    {"message": f"key {KEY} is wrong", "code": "\u00b2"},  # a digit, but not one int() reads
])
def test_an_error_inside_a_200_never_shows_the_key(error: dict[str, Any]) -> None:
    with pytest.raises((BadResponseError, AuthError)) as info:
        parse({"error": error})
    assert KEY not in str(info.value)
    if isinstance(info.value, BadResponseError):
        assert KEY not in info.value.message and info.value.retryable


@pytest.mark.parametrize("error", [{"message": "upstream rate limit", "code": 429},
                                   {"message": "slow down", "code": "rate_limit_exceeded"},
                                   {"message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}])
def test_an_error_inside_a_200_that_names_a_429_is_paced_like_one(error: dict[str, Any]) -> None:
    with pytest.raises(BadResponseError) as info:
        parse({"error": error})
    assert info.value.error_type == "rate_limited" and info.value.retryable


def test_an_error_inside_a_200_that_names_a_stop_stops() -> None:
    with pytest.raises(QuotaError, match="top up"):
        parse({"error": {"message": "You exceeded your current quota",
                         "code": "insufficient_quota"}})
    with pytest.raises(AuthError):
        parse({"error": {"message": "invalid key", "code": 401}})
    with pytest.raises(AuthError, match="UNAUTHENTICATED"):
        parse({"error": {"message": "API key not valid", "status": "UNAUTHENTICATED"}})
    with pytest.raises(AuthError, match="PERMISSION_DENIED"):
        parse({"error": {"message": "no access", "code": 0, "status": "PERMISSION_DENIED"}})
    with pytest.raises(QuotaError, match="top up"):
        parse({"error": {"message": "Your credit balance is too low", "type": "billing_error"}})


def test_401_and_403_advice_names_the_balance_when_the_body_does() -> None:
    c = client()
    body = orjson.dumps({"error": {"message": "Insufficient account balance", "code": None}})
    with pytest.raises(AuthError, match="top up the balance"):
        c._status_error(403, body, {}, None)
    body = orjson.dumps({"error": {"message": "Incorrect API key provided"}})
    with pytest.raises(AuthError, match="check the key") as info:
        c._status_error(401, body, {}, None)
    assert "balance" not in str(info.value)
    with pytest.raises(QuotaError, match="top up the balance"):
        c._status_error(402, orjson.dumps({"error": {"message": "Insufficient Balance"}}), {},
                        None)


def test_a_key_gemini_refuses_with_a_400_and_a_place_openai_does_not_serve_say_which() -> None:
    """Gemini's OpenAI endpoint refuses a bad key with a 400 INVALID_ARGUMENT whose details say
    API_KEY_INVALID: every row failed as an http_400, the advice to fix a request setting.
    OpenAI refuses a country it does not serve with a 403 unsupported_country_region_territory:
    the stop said to check the key and its access to the model. The first stops the job as a
    refused key does; the second as the account's, naming the place."""
    c = client()
    error = {"code": 400, "message": "API key not valid. Please pass a valid API key.",
             "status": "INVALID_ARGUMENT", "details": [{
                 "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                 "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}
    with pytest.raises(AuthError, match=r"^the endpoint refused the API key \(HTTP 400: API key "
                       r"not valid\. Please pass a valid API key\.\) — check the key") as key:
        c._status_error(400, orjson.dumps([{"error": error}]), {}, None)
    assert key.value.status == 401 and not key.value.model_access
    other = [{"error": {**error, "message": "Invalid JSON payload",
                        "details": [{"reason": "BAD_FIELD"}]}}]
    assert c._status_error(400, orjson.dumps(other), {}, None).error_type == "http_400"
    region = {"error": {"code": "unsupported_country_region_territory",
                        "message": "Country, region, or territory not supported",
                        "param": None, "type": "request_forbidden"}}
    with pytest.raises(AccountError, match=r"^the endpoint does not serve requests from where "
                       r"this runs \(HTTP 403 unsupported_country_region_territory: Country, "
                       r"region, or territory not supported\) — run the job from a country or "
                       r"region it serves"):
        c._status_error(403, orjson.dumps(region), {}, None)
    access = {"error": {"message": "Project `proj_1` does not have access to model `gpt-4o`",
                        "type": "invalid_request_error", "code": "model_not_found"}}
    with pytest.raises(AuthError, match="its access to"):
        c._status_error(403, orjson.dumps(access), {}, "gpt-4o")


def test_failed_precondition_stops_the_job_in_any_shape() -> None:
    """Gemini's FAILED_PRECONDITION (billing off, a region not served) is the account's, not
    the row's: a 400 with it, the list Gemini's OpenAI endpoint sends, or a 200 passing it on
    stops the job; a plain 400 fails only its row."""
    c = client()
    error = {"code": 400, "message": "User location is not supported for the API use.",
             "status": "FAILED_PRECONDITION"}
    for body in ({"error": error}, [{"error": error}]):
        with pytest.raises(AccountError, match=r"^the endpoint refused the request for the "
                           r"account, not the row \(HTTP 400 FAILED_PRECONDITION: User location"
                           ) as info:
            c._status_error(400, orjson.dumps(body), {}, None)
        assert "enable billing" in str(info.value)
    with pytest.raises(AccountError, match="HTTP 200 with error 400 FAILED_PRECONDITION"):
        parse({"error": error})
    with pytest.raises(AccountError, match=r"\(HTTP 200 with error FAILED_PRECONDITION: "):
        parse({"error": {"message": "Please enable billing", "status": "FAILED_PRECONDITION"}})
    plain = c._status_error(400, orjson.dumps(
        [{"error": {**error, "status": "INVALID_ARGUMENT"}}]), {}, None)
    assert plain.error_type == "http_400" and not plain.retryable
    assert plain.message == "User location is not supported for the API use."
    # About the row (a file not ready), or a 5xx: not the account's.
    row = c._status_error(400, orjson.dumps({"error": {
        "code": 400, "message": "The File abc is not in an ACTIVE state",
        "status": "FAILED_PRECONDITION"}}), {}, None)
    assert row.error_type == "http_400" and not row.retryable
    server = c._status_error(503, orjson.dumps({"error": {**error, "code": 503}}), {}, None)
    assert server.error_type == "http_503" and server.retryable


# ----------------------------------------------------------------------------------------------
# Jobs against the simulator


@pytest.mark.anyio
async def test_every_field_of_an_answer_lands_in_its_own_column(tmp_path: Path) -> None:
    """A reply whose every field has a value of its own, through the run to the results: the
    runner builds each row's Outcome by position (a call naming its 27 fields cost 2 % of a
    request), so two fields swapped would show here."""
    from aiohttp import web

    from tests.servers import serve_on_loopback

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        message = {"role": "assistant", "content": "the answer", "reasoning_content": "a thought",
                   "tool_calls": [{"id": "c1", "type": "function", "function": {
                       "name": "f", "arguments": "{}"}}],
                   "annotations": [{"type": "url_citation", "url_citation": {
                       "url": "https://example.org/a", "title": "A"}}]}
        return web.json_response({
            "id": "chatcmpl-every", "object": "chat.completion", "created": 0,
            "model": "answered-model",
            "choices": [{"index": 0, "finish_reason": "length", "message": message},
                        {"index": 1, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "the second"}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 13, "total_tokens": 29,
                      "prompt_tokens_details": {"cached_tokens": 5},
                      "completion_tokens_details": {"reasoning_tokens": 7},
                      "num_sources_used": 3},
        }, headers={"x-request-id": "req-every", "openai-model": str(body.get("model"))})

    runner, port = await serve_on_loopback(answer)
    try:
        inp = make_csv(tmp_path / "in.csv", ["one"])
        s = await run(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, extra={"n": 2}))
    finally:
        await runner.cleanup()
    assert (s.ok, s.failed) == (1, 0), s.error_examples
    row = results(tmp_path).loc["r0"]
    assert (row["status"], row["content"], row["reasoning_content"]) == (
        "ok", "the answer", "a thought")
    assert json.loads(row["tool_calls"])[0]["id"] == "c1"
    assert "https://example.org/a" in row["citations"]
    assert [c["content"] for c in json.loads(row["choices"])] == ["the answer", "the second"]
    assert row["finish_reason"] == "length"
    assert [row[c] for c in ("prompt_tokens", "completion_tokens", "total_tokens",
                             "cached_tokens", "reasoning_tokens", "search_units")] == [
        11, 13, 29, 5, 7, 3]
    assert pd.isna(row["search_requests"]) and pd.isna(row["earlier_cost_usd"])
    assert pd.isna(row["cost_usd"])  # the answering model has no price, nor its sources
    assert row["latency_ms"] > 0 and pd.isna(row["ttft_ms"])
    assert (row["attempts"], row["rate_limited"]) == (1, 0)
    assert pd.isna(row["error_type"]) and pd.isna(row["error_message"])
    assert (row["model"], row["request_id"]) == ("answered-model", "req-every")
    assert row["finished_at"] is not None and not pd.isna(row["finished_at"])


@pytest.mark.anyio
async def test_tool_call_rows_are_ok_with_their_calls_streamed_or_not(tmp_path: Path) -> None:
    texts = ["a red kettle [[sim:tool_calls]]", "plain row", "a blue mug [[sim:tool_calls]]"]
    inp = make_csv(tmp_path / "in.csv", texts)
    (tmp_path / "product.json").write_text(json.dumps(PRODUCT))
    frames = {}
    async with Simulator(SimulatorConfig()) as sim:
        for stream in (False, True):
            out = f"out-{stream}"
            # response_format is set too: a reply that only calls a tool has no content to check
            job = job_for(tmp_path, sim.base_url, inp, out, extra={"tools": TOOLS},
                          stream=stream or None, schema_file=str(tmp_path / "product.json"))
            s = await run(job)
            assert s.exit_code == 0 and s.ok == 3, s
            frames[stream] = results(tmp_path, out)
    plain, streamed = frames[False], frames[True]
    for df in (plain, streamed):
        for key in ("r0", "r2"):
            row = df.loc[key]
            assert row["status"] == "ok" and row["finish_reason"] == "tool_calls"
            assert pd.isna(row["content"])
            (call,) = json.loads(row["tool_calls"])
            pk = prompt_key(TEMPLATE.format(text=texts[int(key[1:])]))
            assert call["id"] == f"call_{pk}_0" and call["type"] == "function"
            assert call["function"]["name"] == "record_product"
            args = json.loads(call["function"]["arguments"])
            assert set(args) == {"name", "price"} and isinstance(args["price"], float)
            assert pd.isna(row["json_name"])  # content-only columns stay empty
        assert pd.isna(df.loc["r1", "tool_calls"]) and df.loc["r1", "status"] == "ok"
        assert isinstance(df.loc["r1", "json_price"], float)
    assert list(streamed["tool_calls"]) == list(plain["tool_calls"])


@pytest.mark.anyio
async def test_a_forced_function_fills_the_json_columns_from_its_arguments(
        tmp_path: Path) -> None:
    """Structured output through function calling: tool_choice forces record_product, and its
    arguments are checked against its parameters and spread into json_ columns."""
    texts = ["a red kettle", "a blue mug", "a green lamp"]
    inp = make_csv(tmp_path / "in.csv", texts)
    lookup = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}
    # the simulator's arguments follow the schema's types but not a pattern: every row mismatches
    strict = {**PRODUCT, "properties": {**PRODUCT["properties"],
                                        "name": {"type": "string", "pattern": "^SKU-[0-9]+$"}}}
    frames = {}
    async with Simulator(SimulatorConfig()) as sim:
        for stream in (False, True):
            out = f"out-{stream}"
            forced = {"type": "function", "function": {"name": "record_product"}}
            s = await run(job_for(tmp_path, sim.base_url, inp, out, stream=stream or None,
                                  extra={"tools": [lookup, *TOOLS], "tool_choice": forced}))
            assert s.exit_code == 0 and s.ok == 3, s
            frames[stream] = results(tmp_path, out)
        bad = await run(job_for(tmp_path, sim.base_url, inp, "out-strict", extra={
            "tools": [{"type": "function", "function": {"name": "record_product",
                                                        "parameters": strict}}],
            "tool_choice": "required"}))
        allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
            {"type": "function", "function": {"name": "record_product"}}]}}
        s = await run(job_for(tmp_path, sim.base_url, inp, "out-allowed",
                              extra={"tools": [lookup, *TOOLS], "tool_choice": allowed}))
        assert s.ok == 3, s
        assert results(tmp_path, "out-allowed")["json_price"].map(type).eq(float).all()
    for df in frames.values():
        assert list(df["status"]) == ["ok"] * 3 and df["content"].isna().all()
        assert [json.loads(c)[0]["function"]["name"] for c in df["tool_calls"]] == [
            "record_product"] * 3
        assert df["json_name"].map(type).eq(str).all()
        assert df["json_price"].map(type).eq(float).all()
        args = [json.loads(json.loads(c)[0]["function"]["arguments"]) for c in df["tool_calls"]]
        assert list(df["json_name"]) == [a["name"] for a in args]
    assert list(frames[True]["json_name"]) == list(frames[False]["json_name"])
    assert bad.failed == 3 and bad.error_types == {"schema_mismatch": 3}
    assert bad.error_examples["schema_mismatch"].startswith("name: ")
    assert "does not match '^SKU-[0-9]+$'" in bad.error_examples["schema_mismatch"]


@pytest.mark.anyio
async def test_a_forced_function_not_called_or_called_with_broken_json_fails_the_row(
        tmp_path: Path) -> None:
    texts = ["a red kettle [[sim:citations]]", "a blue mug [[sim:no_call]]",
             "a green lamp [[sim:bad_arguments]]"]
    inp = make_csv(tmp_path / "in.csv", texts)
    async with Simulator(SimulatorConfig()) as sim:
        for stream in (False, True):
            out = f"out-{stream}"
            s = await run(job_for(tmp_path, sim.base_url, inp, out, stream=stream or None,
                                  extra={"tools": TOOLS, "tool_choice": "required"}))
            assert s.exit_code == 3 and s.ok == 1, s
            assert s.error_types == {"no_tool_call": 1, "invalid_json": 1}
            df = results(tmp_path, out)
            assert list(df["status"]) == ["ok", "failed", "failed"]
            assert list(df["error_type"].fillna("")) == ["", "no_tool_call", "invalid_json"]
            assert df.loc["r1", "error_message"] == "the reply did not call record_product"
            assert df.loc["r1", "content"].startswith("Echo")  # the billed reply is kept
            assert df.loc["r2", "error_message"].startswith(
                "the arguments of record_product are not JSON")
            assert df["cost_usd"].notna().all() and df["json_name"].notna().tolist() == [
                True, False, False]


@pytest.mark.anyio
async def test_batch_rows_are_checked_against_their_own_structured_output(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An OpenAI batch file's rows each carry their response_format or forced function: each
    reply is checked against its own row's; a row whose settings cannot be checked is not
    sent."""
    strict = {**PRODUCT, "properties": {**PRODUCT["properties"],
                                        "name": {"type": "string", "pattern": "^SKU-[0-9]+$"}}}
    schema = {"type": "json_schema", "json_schema": {"name": "product", "schema": PRODUCT}}
    forced = {"tools": TOOLS, "tool_choice": "required"}
    loose = [{"type": "function", "function": {"name": "f", "parameters": {"type": "OBJECT"}}}]
    rows: list[tuple[str, dict[str, Any]]] = [
        ("a red kettle", {"response_format": schema}),
        ("a blue mug", {"response_format": {"type": "json_schema", "json_schema": {
            "name": "product", "schema": strict}}}),
        ("a green lamp", forced),
        ("a grey sofa [[sim:no_call]]", forced),
        ("a tall vase", {"tools": TOOLS, "tool_choice": {"type": "function",
                                                         "function": {"name": "lookup"}}}),
        ("a plain question", {}),
        ("a white desk [[sim:no_call]]", {**forced, "response_format": {"type": "text"}}),
        ("a black chair", {"tools": loose, "tool_choice": "required"}),
        ("a brown stool", {"tools": loose, "tool_choice": "required", "enable_thinking": True}),
    ]
    inp = tmp_path / "batch.jsonl"
    inp.write_text("".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": 64,
                 "messages": [{"role": "user", "content": text}], **more}}) + "\n"
        for i, (text, more) in enumerate(rows)))
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "base_url": sim.base_url,
                              "output": str(tmp_path / "out"), "concurrency": 4})
        s = await run(job)
    assert s.exit_code == 3 and s.ok == 4, s
    # the simulator reads the upper-case OBJECT as no type it knows, and calls f with a string
    assert s.error_types == {"schema_mismatch": 1, "no_tool_call": 1, "invalid_row": 1,
                             "invalid_json": 2}
    df = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("custom_id")
    assert list(df["status"]) == ["ok", "failed", "ok", "failed", "failed", "ok", "ok",
                                  "failed", "failed"]
    assert df.loc["r7", "error_message"] == "the arguments of f are JSON but not an object"
    assert json.loads(df.loc["r0", "content"]).keys() == {"name", "price"}
    assert "does not match '^SKU-[0-9]+$'" in df.loc["r1", "error_message"]
    assert json.loads(df.loc["r2", "tool_calls"])[0]["function"]["name"] == "record_product"
    assert df.loc["r3", "error_message"] == "the reply did not call record_product"
    assert df.loc["r4", "error_message"] == (
        "not sent: the body's tool_choice names the function 'lookup', which is not among the "
        "tools ('record_product')")
    assert pd.isna(df.loc["r4", "request_id"]) and pd.isna(df.loc["r4", "cost_usd"])
    assert pd.isna(df.loc["r6", "tool_calls"])  # response_format text: no check
    assert not [c for c in df.columns if c.startswith("json_")]  # rows ask for different ones
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if "are not a JSON schema batchrunner can check" in line]
    assert len(warned) == 1 and warned[0].startswith("batchrunner: warning: row r")
    assert [line for line in err if "enable_thinking" in line] == [
        "batchrunner: warning: row r8: the body's enable_thinking works only with streaming "
        '(gateways drop it otherwise, with no error): set "stream": true in the body']


@pytest.mark.anyio
async def test_rows_own_settings_that_a_gateway_drops_are_warned_about(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model from a column, body fields from columns: a row asking for what a gateway drops
    without streaming (a -thinking Gemini's reasoning, Qwen's enable_thinking) is warned
    about once, naming the column, as the job's own settings are (here given by options, as
    on a command line: named as its options)."""
    inp = tmp_path / "in.csv"
    inp.write_text("id,text,model,flag\na,x,gpt-4o-mini,\nb,y,gemini-2.5-flash-thinking,\n"
                   "c,z,gpt-4o-mini,true\nd,w,gemini-2.5-flash-thinking,true\n")
    async with Simulator(SimulatorConfig()) as sim:
        job = load_job(None, {"input": str(inp), "id_column": "id", "prompt": "{text}",
                              "model_column": "model", "base_url": sim.base_url,
                              "from_columns": {"enable_thinking": "flag"},
                              "output": str(tmp_path / "out"), "concurrency": 1})
        s = await run(job)
    assert s.exit_code == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert err == [
        "batchrunner: warning: row b: model (column 'model') gemini-2.5-flash-thinking gives "
        "its reasoning (reasoning_content) only in a stream, though its thinking is billed: "
        "pass --stream to record it",
        "batchrunner: warning: row c: --from-column enable_thinking=flag works only with "
        "streaming (gateways drop it otherwise, with no error): pass --stream"]


def write_batch(path: Path, rows: list[tuple[str, dict[str, Any]]]) -> Path:
    path.write_text("".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": 64,
                 "messages": [{"role": "user", "content": text}], **more}}) + "\n"
        for i, (text, more) in enumerate(rows)))
    return path


@pytest.mark.anyio
async def test_batch_rows_that_all_ask_for_one_schema_get_its_json_columns(
        tmp_path: Path) -> None:
    """Across runs too: a resume that sends rows asking for another schema takes them away,
    and `batchrunner report` rebuilds the same results."""
    schema = {"type": "json_schema", "json_schema": {"name": "product", "schema": PRODUCT}}
    forced = {"tools": [{"type": "function", "function": {"name": "lookup"}}, *TOOLS],
              "tool_choice": {"type": "function", "function": {"name": "record_product"}}}
    async with Simulator(SimulatorConfig()) as sim:
        frames = {}
        for name, more in (("format", {"response_format": schema}), ("function", forced)):
            inp = write_batch(tmp_path / f"{name}.jsonl", [
                ("a red kettle", more), ("a blue mug [[sim:400]]", more),
                ("a green lamp [[sim:no_call]]", more)])
            job = load_job(None, {"input": str(inp), "base_url": sim.base_url,
                                  "output": str(tmp_path / name), "concurrency": 2})
            first = await run(job)
            assert first.ok == 2 - (name == "function"), first
            meta = json.loads((tmp_path / name / "job.json").read_text())
            assert meta["batch_checks"]["mixed"] is False
            frames[name] = pd.read_parquet(tmp_path / name / "results.parquet")
        # A rerun of the 400 row asking for another schema: the rows no longer agree.
        inp = write_batch(tmp_path / "format.jsonl", [
            ("a red kettle", {"response_format": schema}), ("a blue mug", {}),
            ("a green lamp [[sim:no_call]]", {"response_format": schema})])
        job = load_job(None, {"input": str(inp), "base_url": sim.base_url,
                              "output": str(tmp_path / "format"), "concurrency": 2})
        again = await run_job(job, RunOptions(retry=FAST.retry, progress="none",
                                              handle_signals=False, retry_failed=True,
                                              force=True))
        assert again.sent == 1 and again.ok == 3, again
    for df in frames.values():
        assert df["json_name"].notna().tolist() == df["status"].eq("ok").tolist()
        ok = df[df["status"] == "ok"]
        assert ok["json_price"].map(type).eq(float).all()
    assert frames["format"]["status"].tolist() == ["ok", "failed", "ok"]
    assert frames["function"]["status"].tolist() == ["ok", "failed", "failed"]
    assert frames["function"]["error_type"].tolist()[2] == "no_tool_call"
    mixed = pd.read_parquet(tmp_path / "format" / "results.parquet")
    assert not [c for c in mixed.columns if c.startswith("json_")]
    assert json.loads((tmp_path / "format" / "job.json").read_text())["batch_checks"][
        "mixed"] is True
    rebuild_outputs(plan_from_output(tmp_path / "function"), RunSummary(name="function"))
    rebuilt = pd.read_parquet(tmp_path / "function" / "results.parquet")
    assert rebuilt.drop(columns="finished_at").equals(
        frames["function"].drop(columns="finished_at"))
    # Rows sent by a batchrunner that did not record their checks (or killed before it could):
    # what they asked for is not known, so no row gets json_ columns.
    meta_path = tmp_path / "function" / "job.json"
    meta = json.loads(meta_path.read_text())
    del meta["batch_checks"]
    meta_path.write_text(json.dumps(meta))
    rebuild_outputs(plan_from_output(tmp_path / "function"), RunSummary(name="function"))
    assert "json_name" not in pd.read_parquet(tmp_path / "function" / "results.parquet").columns
    job = load_job(None, {"input": str(tmp_path / "function.jsonl"), "output": str(
        tmp_path / "function"), "base_url": "http://127.0.0.1:9/v1"})
    plan = prepare(job, FAST)
    assert plan.structured is None and plan.batch_mixed


@pytest.mark.anyio
async def test_a_body_json_cannot_carry_is_refused_not_raised(tmp_path: Path) -> None:
    """An integer past 64 bits (the input readers make it a float, but a body may come from
    elsewhere) cannot be sent as JSON: a request error that is not retried, and a batch row
    whose checks would be read from one is not sent."""
    big = 2 ** 70
    async with Simulator(SimulatorConfig()) as sim, ChatClient(
            sim.base_url, KEY, timeout_s=10, connections=1) as c:
        with pytest.raises(RequestError) as info:
            await c.complete({"model": "gpt-4o-mini", "seed": big,
                              "messages": [{"role": "user", "content": "hi"}]})
    assert info.value.error_type == "invalid_request" and not info.value.retryable
    assert str(info.value).startswith("invalid_request: the request body cannot be sent as JSON")
    inp = write_batch(tmp_path / "b.jsonl", [("a red kettle", {})])
    plan = prepare(load_job(None, {"input": str(inp), "base_url": "http://127.0.0.1:9/v1",
                                   "output": str(tmp_path / "out")}), FAST)
    work, why = make_work(plan, "r0", {"custom_id": "r0", "body": json.dumps({
        "model": "m", "messages": [], "response_format": {"type": "json_schema", "json_schema": {
            "name": "p", "schema": {"type": "object", "maximum": big}}}})})
    assert work is None and why.startswith("the body cannot be sent as JSON")


@pytest.mark.anyio
async def test_a_streamed_batch_row_asks_for_its_usage(tmp_path: Path) -> None:
    """A body that streams is sent asking for the usage chunk, as a job's stream is, so its
    tokens and cost are recorded; one that says include_usage false is left as it says."""
    inp = write_batch(tmp_path / "b.jsonl", [
        ("a red kettle", {"stream": True}),
        ("a blue mug", {"stream": True, "stream_options": {"include_usage": False}}),
        ("a green lamp", {"stream": True, "stream_options": {}})])
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(load_job(None, {"input": str(inp), "base_url": sim.base_url,
                                      "output": str(tmp_path / "out")}))
    assert s.ok == 3, s
    df = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("custom_id")
    assert df["ttft_ms"].notna().all()
    assert df["prompt_tokens"].notna().tolist() == [True, False, True]
    assert df["cost_usd"].notna().tolist() == [True, False, True]


@pytest.mark.anyio
async def test_a_stream_asked_for_in_request_extra_is_a_streaming_job(tmp_path: Path) -> None:
    """A gateway's guide writes ``"stream": true`` among the body fields (Qwen's
    enable_thinking beside it), and its reader puts it in [request.extra]: the job streams,
    so it asks for the usage chunk (without it, every row's tokens and cost were unknown) and
    is not told that its streaming settings need a stream."""
    make_csv(tmp_path / "in.csv", ["a red kettle", "a blue mug"])
    async with Simulator(SimulatorConfig()) as sim:
        (tmp_path / "job.toml").write_text(
            '[input]\npath = "in.csv"\nid_column = "id"\n[request]\nmodel = "gpt-4o-mini"\n'
            'prompt = "Q: {text}"\n[request.extra]\nstream = true\nenable_thinking = true\n'
            f'[endpoint]\nbase_url = "{sim.base_url}"\n[output]\ndir = "out"\n')
        s = await run(load_job(tmp_path / "job.toml", {}))
    assert s.ok == 2, s
    assert not [w for w in s.warnings if "works only with streaming" in w], s.warnings
    df = results(tmp_path)
    assert df["ttft_ms"].notna().all()
    assert df["prompt_tokens"].notna().all() and df["cost_usd"].notna().all()


def test_batch_rows_checks_are_built_once_each_and_only_so_many_kept(tmp_path: Path) -> None:
    order = [*range(300), *range(290, 300), 0]  # 300 settings; the latest 10 again; the first
    rows = [(f"q{i}", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "p", "schema": {"type": "object", "properties": {f"f{i}": {}}}}}})
        for i in order]
    inp = write_batch(tmp_path / "b.jsonl", rows)
    plan = prepare(load_job(None, {"input": str(inp), "base_url": "http://127.0.0.1:9/v1",
                                   "output": str(tmp_path / "out")}), FAST)
    built = [make_work(plan, key, row)[0] for key, row, _ in iter_rows(plan)]
    checks = [w.checks for w in built if w is not None]
    assert len(checks) == 311 and len(plan.row_checks) == 256 and plan.batch_mixed
    assert all(checks[300 + k] is checks[290 + k] for k in range(10))  # kept: built once
    assert checks[310] is not checks[0] and checks[310].key == checks[0].key  # dropped: again


def test_parameters_batchrunner_cannot_check_are_warned_before_the_run(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", ["a red kettle"])
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "OBJECT"}}}]
    plan = prepare(job_for(tmp_path, "http://127.0.0.1:9/v1", inp,
                           extra={"tools": tools, "tool_choice": "required"}), FAST)
    assert any("'f' are not a JSON schema batchrunner can check" in w for w in plan.warnings)


@pytest.mark.anyio
async def test_citations_are_recorded_streamed_or_not(tmp_path: Path) -> None:
    texts = ["news today [[sim:citations]]", "web search [[sim:annotations]]", "no search"]
    inp = make_csv(tmp_path / "in.csv", texts)
    frames = {}
    async with Simulator(SimulatorConfig()) as sim:
        for stream in (False, True):
            out = f"out-{stream}"
            s = await run(job_for(tmp_path, sim.base_url, inp, out, stream=stream or None))
            assert s.exit_code == 0
            frames[stream] = results(tmp_path, out)
    for df in frames.values():
        grok = json.loads(df.loc["r0", "citations"])
        pk = prompt_key(TEMPLATE.format(text=texts[0]))
        assert [c["url"] for c in grok] == [f"https://example.com/sim/{pk}/{i}" for i in (1, 2)]
        assert all(c["title"] is None and c["start_index"] is None for c in grok)
        openai = json.loads(df.loc["r1", "citations"])
        assert [c["title"] for c in openai] == [f"Source {i} for "
                                                f"{prompt_key(TEMPLATE.format(text=texts[1]))}"
                                                for i in (1, 2)]
        assert openai[0]["start_index"] == 0 and openai[1]["end_index"] == 20
        assert pd.isna(df.loc["r2", "citations"])
    assert list(frames[True]["citations"]) == list(frames[False]["citations"])


@pytest.mark.anyio
async def test_n_choices_streamed_match_non_stream(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", ["one", "two", "three"])
    frames = {}
    async with Simulator(SimulatorConfig()) as sim:
        for stream in (False, True):
            out = f"out-{stream}"
            s = await run(job_for(tmp_path, sim.base_url, inp, out, extra={"n": 3},
                                  stream=stream or None))
            assert s.exit_code == 0
            frames[stream] = results(tmp_path, out)
    for key in ("r0", "r1", "r2"):
        streamed = json.loads(frames[True].loc[key, "choices"])
        assert streamed == json.loads(frames[False].loc[key, "choices"])
        assert [c["index"] for c in streamed] == [0, 1, 2]
        assert streamed[0]["content"] == frames[True].loc[key, "content"]
        assert len({c["content"] for c in streamed}) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_200_carrying_an_error_is_retried_and_named(tmp_path: Path,
                                                            stream: bool) -> None:
    inp = make_csv(tmp_path / "in.csv", ["fine", "flaky [[sim:error_200*1]]",
                                         "broken [[sim:error_200]]"])
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, stream=stream or None))
    df = results(tmp_path)
    assert s.exit_code == 3
    assert (df.loc["r1", "status"], df.loc["r1", "attempts"]) == ("ok", 2)
    row = df.loc["r2"]
    assert (row["status"], row["error_type"], row["attempts"]) == ("failed", "error_body", 3)
    assert "upstream provider did not answer" in row["error_message"]


@pytest.mark.anyio
async def test_402_stops_the_job_saying_to_top_up(tmp_path: Path) -> None:
    texts = [f"row {i}" for i in range(30)]
    texts[5] = "out of money [[sim:402*1]]"
    inp = make_csv(tmp_path / "in.csv", texts)
    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp, concurrency=2)
        s = await run(job)
        assert s.exit_code == 4 and s.stopped and "top up the balance" in s.stopped
        assert "402" in s.stopped
        state = Journal(tmp_path / "out").read()
        assert set(state["status"].to_pylist()) == {"ok"}  # the 402 row is left to do
        assert "r5" not in state["key"].to_pylist()
        again = await run(job)
    assert again.exit_code == 0 and again.ok == 30


@pytest.mark.anyio
@pytest.mark.parametrize("dropped", [["tool_calls", "citations"],
                                     ["earlier_cost_usd", "tool_calls", "citations"]])
async def test_a_journal_written_before_tool_calls_is_read_with_nulls(
        tmp_path: Path, dropped: list[str]) -> None:
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(6)])
    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp)
        await run(job)
        (seg,) = Journal(tmp_path / "out").segments()
        pq.write_table(pq.read_table(seg).drop_columns(dropped), seg)
        Journal(tmp_path / "out").check()
        (tmp_path / "out" / "results.parquet").unlink()
        s = await run(job)
        assert s.sent == 0 and s.ok == 6
        df = results(tmp_path)
        assert df["tool_calls"].isna().all() and df["citations"].isna().all()
        # A rerun over the old records writes new ones beside them: both are read.
        opts = RunOptions(rerun_where="key == 'r1'", force=True, retry=FAST.retry,
                          progress="none", handle_signals=False)
        assert (await run_job(job, opts)).ok == 6
        assert results(tmp_path)["status"].eq("ok").all()


@pytest.mark.parametrize("search", [{"server_tool_use": {"web_search_requests": 6}},
                                    {"num_sources_used": 7}], ids=["web_searches", "sources"])
def test_a_reply_s_every_field_lands_in_its_own(search: dict[str, Any]) -> None:
    """A reply whose every field has a value no other has: each is read into its own field of
    the result (the counts too, which are all numbers)."""
    notes = [{"type": "url_citation", "url_citation": {"url": "https://e.x/a", "title": "A"}}]
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "f", "arguments": "{}"}}]
    message = {"role": "assistant", "content": "the answer", "reasoning_content": "thought",
               "refusal": "no thanks", "annotations": notes, "tool_calls": calls}
    body = {"id": "chatcmpl-9", "model": "gpt-x", "choices": [
        {"index": 0, "message": message, "finish_reason": "length"},
        {"index": 1, "message": {"content": "other"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 34,
                  "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 5}, **search}}
    res = client()._parse(orjson.dumps(body), None, 12.5, {"x-ratelimit-limit-requests": "9"})
    assert (res.content, res.finish_reason, res.model, res.request_id) == (
        "the answer", "length", "gpt-x", "chatcmpl-9")
    assert (res.prompt_tokens, res.completion_tokens, res.total_tokens, res.cached_tokens,
            res.reasoning_tokens) == (11, 22, 34, 4, 5)
    assert res.latency_ms == 12.5 and res.headers == {"x-ratelimit-limit-requests": "9"}
    assert (res.reasoning_content, res.refusal, res.ttft_ms) == ("thought", "no thanks", None)
    assert json.loads(res.tool_calls or "") == calls
    assert [c["url"] for c in json.loads(res.citations or "")] == ["https://e.x/a"]
    assert [c["content"] for c in json.loads(res.choices or "")] == ["the answer", "other"]
    assert (res.web_searches, res.sources_used) == (
        (6, None) if "server_tool_use" in search else (None, 7))


@pytest.mark.parametrize(("finish", "read"), [
    ("stop", "stop"), ("length", "length"), ("tool_calls", "tool_calls"), (None, None),
    ("content_filter", "content_filter"), ("Stop", "Stop"), (["stop"], '["stop"]'),
    ({"type": "stop", "matched": 7}, '{"type":"stop","matched":7}'), (3, "3"),
    ("abort", None), ("ERROR", None), ({"type": "abort", "message": "preempted"}, None)])
def test_a_reply_s_finish_reason_is_read_as_text_or_gives_up(finish: Any, read: str | None
                                                             ) -> None:
    """The usual finish_reasons are kept as they are, any other value as its text or JSON, and
    an engine's abort or error is no answer, whatever its case or shape."""
    body = {"model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    if read is None and finish is not None:
        with pytest.raises(RequestError):
            parse(body)
    else:
        assert parse(body).finish_reason == read


@pytest.mark.anyio
@pytest.mark.parametrize("server_says", [None, ""], ids=["null", "empty"])
async def test_a_reply_with_no_text_has_a_null_content_streamed_or_not(
        tmp_path: Path, server_says: str | None) -> None:
    """A thinking model cut at max_tokens before its answer began has no text. Asked without a
    stream, vLLM (its reasoning parser on) says ``"content": null``, OpenAI ``""``; a stream
    of either carries no text at all, and was recorded as ``""``: the same row's content was
    null or empty by the way it was asked for, and a ``--rerun-where "content.isna()"``
    found only some of them. A reply with no text has a null content, streamed or not."""
    from aiohttp import web

    from tests.servers import serve_on_loopback

    def event(d: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({
            "id": "c1", "object": "chat.completion.chunk", "model": "qwq",
            "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}) + b"\n\n"

    usage = {"prompt_tokens": 9, "completion_tokens": 64, "total_tokens": 73}

    async def thinks_to_the_end(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({
                "id": "c1", "object": "chat.completion", "model": "qwq", "usage": usage,
                "choices": [{"index": 0, "finish_reason": "length", "message": {
                    "role": "assistant", "content": server_says,
                    "reasoning_content": "Let me think"}}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(event({"role": "assistant", "content": ""})
                             + event({"reasoning_content": "Let me think"})
                             + event({}, "length") + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    runner, port = await serve_on_loopback(thinks_to_the_end)
    try:
        inp = make_csv(tmp_path / "in.csv", ["one"])
        for stream in (False, True):
            s = await run(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, f"out-{stream}",
                                  model="qwq", stream=stream or None))
            assert s.exit_code == 0
            row = results(tmp_path, f"out-{stream}").loc["r0"]
            assert (row["status"], row["finish_reason"]) == ("ok", "length")
            assert row["reasoning_content"] == "Let me think"
            assert pd.isna(row["content"]), (stream, row["content"])
    finally:
        await runner.cleanup()
