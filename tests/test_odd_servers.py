"""Real servers answering in odd ways: gateways, proxies and self-hosted servers that bend the
Chat Completions format. Each test runs a job over a few rows against a server written here
(``FaultServer``, on 127.0.0.1 at a random port) and checks that the run ends, that every row
has an outcome a user can act on, that a rerun finishes what failed, the exit code, and that
the key is nowhere in what the run left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import socket
import time
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anyio
import pandas as pd
import pytest
from aiohttp import web

from batchrunner.client import _retry_after
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, RunSummary, run_job
from batchrunner.simulator import prompt_key
from tests.servers import serve_streams_on_loopback
from tests.test_faults import (
    RUN_LIMIT_S,
    Fault,
    FaultServer,
    completion,
    error_body,
    job_for,
    make_csv,
    results,
    run,
    sse,
)
from tests.test_secrets import leaks_in_files

KEY = "sk-test-SECRET-5f3a9c"  # the needle test_secrets.leaks_in_files looks for

pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def reply(body: dict[str, Any], **choice: Any) -> dict[str, Any]:
    """A completion whose choice 0 is ``choice`` (merged over a normal one)."""
    data = completion(body, "x")
    data["choices"] = [{**data["choices"][0], **choice}]
    return data


def stream_of(*events: dict[str, Any], done: bool = True) -> bytes:
    return b"".join(sse(e) for e in events) + (b"data: [DONE]\n\n" if done else b"")


def delta(content: Any = None, finish: Any = None, **more: Any) -> dict[str, Any]:
    d = {"content": content, **more} if content is not None else dict(more)
    return {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


async def sse_response(request: web.BaseRequest, data: bytes) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(data)
    await response.write_eof()
    return response


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_finish_reason_that_is_not_text_is_kept_as_json(tmp_path: Path,
                                                                stream: bool) -> None:
    """A gateway's ``finish_reason`` as a list or an object was handed to the journal as it
    came: its write failed (ArrowTypeError), the run crashed with exit 1 and lost the answers
    it had paid for. It is kept as its JSON text."""
    inp = make_csv(tmp_path / "in.csv", ["as a list", "as an object", "as text"])
    odd: dict[str, Any] = {"as a list": ["stop"], "as an object": {"type": "stop"},
                           "as text": "stop"}

    async def fault(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse:
        finish = next(v for k, v in odd.items() if k in json.dumps(body))
        if stream:
            return await sse_response(request, stream_of(delta("Echo"), delta(None, finish)))
        return web.json_response(reply(body, finish_reason=finish))

    async with FaultServer(fault) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=stream or None))
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["status"]) == ["ok"] * 3
    assert list(df["finish_reason"]) == ['["stop"]', '{"type":"stop"}', "stop"]
    assert not leaks_in_files(tmp_path / "out")


MAGISTRAL_PARTS = [{"type": "thinking", "thinking": [{"type": "text", "text": "Let me see. "},
                                                     {"type": "text", "text": "Yes."}]},
                   {"type": "text", "text": "Echo: "}, {"type": "text", "text": "parts"}]


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_content_sent_as_a_list_of_parts_is_read(tmp_path: Path, stream: bool) -> None:
    """Mistral's reasoning models (Magistral) send ``content`` as a list of text and thinking
    parts, whole or in a stream's deltas. Read as a string only, every row was ok with no
    content: the answers paid for were lost without a word."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])

    async def fault(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse:
        if stream:
            return await sse_response(request, stream_of(
                *(delta([part]) for part in MAGISTRAL_PARTS), delta(None, "stop")))
        return web.json_response(reply(body, message={"role": "assistant",
                                                      "content": MAGISTRAL_PARTS}))

    async with FaultServer(fault) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=stream or None))
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["content"]) == ["Echo: parts"] * 2
    assert list(df["reasoning_content"]) == ["Let me see. Yes."] * 2
    assert not leaks_in_files(tmp_path / "out")


def test_retry_after_is_read_in_seconds_or_as_a_date_and_infinity_is_no_advice() -> None:
    soon = formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (_retry_after({"retry-after": soon}) or 0) <= 30
    assert _retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past
    assert _retry_after({"retry-after": "1.5"}) == 1.5
    assert _retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    for garbage in ("inf", "1e999", "nan", "soon", ""):
        assert _retry_after({"retry-after": garbage}) is None, garbage
        assert _retry_after({"retry-after-ms": garbage}) is None, garbage


def too_many(retry_after: str, only: tuple[str, ...] = ()) -> Any:
    """A fault: 429 with ``retry-after`` (for the rows whose prompt holds one of ``only``, or
    all)."""
    async def limited(srv: FaultServer, request: web.BaseRequest,
                      body: dict[str, Any]) -> web.StreamResponse | None:
        if only and not any(word in json.dumps(body) for word in only):
            return None
        return web.json_response(error_body("Rate limit reached", "requests", "rate_limit_"
                                            "exceeded"), status=429,
                                 headers={"retry-after": retry_after})
    return limited


LONG_WAITS = RunOptions(retry=RetryPolicy(base_s=0.01, max_attempts=3, max_retry_after_s=0.2),
                        progress="none", handle_signals=False)


@pytest.mark.anyio
async def test_one_429_asking_for_an_hour_pauses_the_job_no_longer_than_it_waits(
        tmp_path: Path) -> None:
    """The first 429 of a row paused every request of the job for its ``retry-after`` as
    given: an hour's. The pause is held to the longest wait a row's retry takes
    (``max_retry_after_s``), and such a 429 with an answer after it does not stop the job."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two", "three"])
    async with FaultServer(too_many("3600", only=("one", "three")), times=1) as srv:
        with anyio.fail_after(10):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, concurrency=1), LONG_WAITS)
    assert s.exit_code == 0 and s.ok == 3
    assert results(tmp_path)["rate_limited"].tolist() == [1, 0, 1]


@pytest.mark.anyio
async def test_429s_asking_for_an_hour_to_requests_in_flight_together_pause_the_job(
        tmp_path: Path) -> None:
    """Requests in flight together that all meet the one 429 asking for an hour (a gateway
    turning away everything for a moment) are answered by one pause, not two 429s in a row:
    they were sent before the first said to wait. The job stopped (exit 4) where a job sending
    one request at a time went on."""
    words = [f"w{i}" for i in range(12)]
    inp = make_csv(tmp_path / "in.csv", words)
    async with FaultServer(too_many("3600", only=("w3", "w4", "w5", "w6")), times=1) as srv:
        with anyio.fail_after(10):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, concurrency=8), LONG_WAITS)
    assert s.stopped is None and s.exit_code == 0 and s.ok == 12
    assert results(tmp_path)["rate_limited"].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]


@pytest.mark.anyio
async def test_429s_in_a_row_asking_for_longer_than_the_job_waits_stop_it(
        tmp_path: Path) -> None:
    """A daily limit: every request is answered "come back in an hour". The job stops at the
    second such 429 (exit 4) saying until when, rather than send every row 30 times and fail
    it; the rows are left to do, and a rerun finishes them."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two", "three"])
    async with FaultServer(too_many("3600")) as srv:
        with anyio.fail_after(10):
            s = await run_job(job_for(tmp_path, srv.base_url, inp), LONG_WAITS)
        assert s.exit_code == 4 and s.stopped is not None and s.pending == 3
        assert s.stopped.startswith("the endpoint asks to wait 60 min before the next request "
                                    "(retry-after 3,600 s, until ")
        assert "Rate limit reached" in s.stopped and "rerun then to resume" in s.stopped
        assert srv.requests <= 3 * 2  # each row once, and once more after the pause
        srv.healthy = True
        s = await run_job(job_for(tmp_path, srv.base_url, inp), LONG_WAITS)
    assert s.exit_code == 0 and s.ok == 3


@pytest.mark.anyio
async def test_429s_asking_to_wait_past_any_date_stop_the_job(tmp_path: Path) -> None:
    """A retry-after too large for the clock to tell when it ends (1e20 s) crashed the run
    (OverflowError, exit 1) where it should stop it."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two", "three"])
    async with FaultServer(too_many("99999999999999999999")) as srv:
        with anyio.fail_after(10):
            s = await run_job(job_for(tmp_path, srv.base_url, inp), LONG_WAITS)
    assert s.exit_code == 4 and s.stopped is not None and s.pending == 3
    assert "(retry-after 100,000,000,000,000,000,000 s; Rate limit reached)" in s.stopped


@pytest.mark.anyio
async def test_nothing_but_429s_for_minutes_stops_the_job_saying_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway whose key is out of its daily quota and says so with a short retry-after
    answers every request 429: the job went on for an hour and more, each row backing off
    longer and longer until its 30th 429, the log saying only that no row finished. Nothing
    but 429s for ONLY_429S_STOP_S (here 1.5 s) with nothing answered stops it, resumable,
    saying what came; rows answered now and then between 429s keep it going."""
    import batchrunner.runner

    monkeypatch.setattr(batchrunner.runner, "ONLY_429S_STOP_S", 1.5)
    inp = make_csv(tmp_path / "in.csv", ["one", "two", "three"])
    opts = RunOptions(retry=RetryPolicy(base_s=0.05, max_attempts=3), progress="none",
                      handle_signals=False, outage_s=0.0)
    async with FaultServer(too_many("0.2")) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp), opts)
        sent = srv.requests
    assert s.exit_code == 4 and s.stopped is not None and s.pending == 3 and s.failed == 0, s
    assert re.fullmatch(r"every answer for \d s was a 429 \(rate limited; \d+ of them, no "
                        r"other answer between; the latest: Rate limit reached\) — the key's limit "
                        r"or quota looks used up for now \(a daily quota\?\): rerun later to "
                        r"resume, or check the account's limits", s.stopped), s.stopped
    assert sent < 3 * 30

    # One request in two answered: the rows go on, each to its end.
    refused = too_many("0.2")

    async def now_and_then(srv: FaultServer, request: web.BaseRequest,
                           body: dict[str, Any]) -> web.StreamResponse | None:
        return None if srv.requests % 2 == 0 else await refused(srv, request, body)

    inp = make_csv(tmp_path / "in2.csv", [f"row {i}" for i in range(6)])
    async with FaultServer(now_and_then) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, output=str(tmp_path / "o2")),
                              opts)
    assert s.exit_code == 0 and s.ok == 6 and not s.stopped, s


@pytest.mark.anyio
async def test_the_log_says_while_every_answer_is_a_429(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """While nothing but 429s comes, the log said only that no row finished, with the
    requests in flight and the rows waiting: it says how long every answer has been a 429,
    and when the job stops for it."""
    import batchrunner.runner
    from batchrunner import progress

    monkeypatch.setattr(batchrunner.runner, "ONLY_429S_STOP_S", 3.0)
    monkeypatch.setattr(progress.LogProgress.__init__, "__defaults__", (1.0,))  # every second
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])
    opts = RunOptions(retry=RetryPolicy(base_s=0.05, max_attempts=3), progress="log",
                      handle_signals=False, outage_s=0.0)
    async with FaultServer(too_many("0.2")) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp), opts)
    assert s.exit_code == 4 and s.stopped is not None and s.stopped.startswith("every answer")
    lines = [line for line in capsys.readouterr().err.splitlines() if "no row finished" in line]
    # A line a second: which seconds of the 3 a loaded machine writes them at varies.
    assert any(re.search(r"\(no row finished for \d+ s: every answer for [1-3] s a 429; the job "
                         r"stops at 3 s of only 429s; ", line) for line in lines), lines
    # Each row is in flight or waits to retry: a row 429'd waiting out the pause a 429 began
    # was neither ("0 requests in flight, 1 row waiting to retry" of the 2, or none waiting).
    for line in lines:
        m = re.search(r"; (\d+) requests? in flight(?:, (\d+) rows? waiting to retry)?\)$", line)
        assert m and int(m[1]) + int(m[2] or 0) == 2, line


@pytest.mark.anyio
async def test_a_stop_lets_go_of_the_rows_waiting_out_a_429(tmp_path: Path) -> None:
    """A row waits out an hour's retry-after (the job allows it) when another row's 401 stops
    the job: the run ends now, not an hour later, the waiting row left to do."""
    inp = make_csv(tmp_path / "in.csv", ["wait", "refuse"])

    async def fault(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse:
        if "refuse" in json.dumps(body):
            await anyio.sleep(0.3)  # after the other row's 429 has paused the job
            return web.json_response(error_body("Incorrect API key provided", "invalid_request_"
                                                "error", "invalid_api_key"), status=401)
        return web.json_response(error_body("Rate limit reached", "requests", "rate_limit_"
                                            "exceeded"), status=429,
                                 headers={"retry-after": "3600"})

    hour = RunOptions(retry=RetryPolicy(base_s=0.01, max_attempts=3, max_retry_after_s=7200),
                      progress="none", handle_signals=False)
    async with FaultServer(fault) as srv:
        with anyio.fail_after(20):  # an hour without the fix
            s = await run_job(job_for(tmp_path, srv.base_url, inp), hour)
    assert s.exit_code == 4 and s.stopped is not None and "refused the API key" in s.stopped
    assert s.pending == 2 and srv.requests == 2


@pytest.mark.anyio
async def test_a_429_asking_to_wait_for_ever_is_no_advice(tmp_path: Path) -> None:
    """``retry-after: inf`` paused every request of the job for good (the run never ended):
    it is ignored, the row backs off as without it."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two", "three"])
    async with FaultServer(too_many("inf"), times=1) as srv:
        with anyio.fail_after(10):
            s = await run_job(job_for(tmp_path, srv.base_url, inp), LONG_WAITS)
    assert s.exit_code == 0 and s.ok == 3
    assert (results(tmp_path)["rate_limited"] == 1).all()


def redirecting(status: int, to: str) -> Any:
    """A server whose /v1 redirects (``status``) to ``to`` (``{port}`` filled in) and whose
    /v2 answers; a GET (what a 301 makes of a POST) is refused with 405, and a request without
    the key with 401, as real servers do."""
    async def handle(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse | None:
        if request.path.startswith("/v1/"):
            return web.Response(status=status, headers={"Location": to.format(port=srv.port)})
        return None
    return handle


class RedirectServer(FaultServer):
    """``FaultServer`` that also answers what a followed redirect sends: a GET (405) and a
    request without the key (401)."""

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, text="405: Method Not Allowed")
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response(error_body("Missing bearer authentication in header",
                                                "invalid_request_error", None), status=401)
        return await super()._handle(request)


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "to", "says"), [
    (301, "/v2/chat/completions", "turns the POST into a GET"),
    (302, "/v2/chat/completions", "turns the POST into a GET"),
    (307, "http://localhost:{port}/v2/chat/completions", "another host is not sent the API key"),
], ids=["301", "302", "307-other-host"])
async def test_a_redirect_the_request_cannot_follow_stops_the_job_naming_the_url(
        tmp_path: Path, status: int, to: str, says: str) -> None:
    """A 301/302 turned the POST into a GET (the server's 405 failed every row, "fix what the
    endpoint refused", the redirect unsaid), and a redirect to another host (``http://`` to
    ``https://``, say) dropped the key (a 401: "check the key"). The job stops at once naming
    the URL to use; rows are left to do, and a run with that base URL finishes them."""
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(6)])
    async with RedirectServer(redirecting(status, to)) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, concurrency=2))
        assert s.exit_code == 4 and s.stopped
        target = to.format(port=srv.port).removesuffix("/chat/completions")
        if target.startswith("/"):
            target = f"http://127.0.0.1:{srv.port}{target}"
        assert says in s.stopped and f"set the base URL to {target}," in s.stopped
        assert srv.requests <= 2 + 2  # stopped at once: the redirected request and its twin
        again = await run(job_for(tmp_path, target, inp, concurrency=2))
    assert again.exit_code == 0 and again.ok == 6
    assert not leaks_in_files(tmp_path / "out")


@pytest.mark.anyio
async def test_a_307_to_another_path_of_the_same_server_is_followed(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])
    async with RedirectServer(redirecting(307, "/v2/chat/completions")) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp))
    assert s.exit_code == 0 and list(results(tmp_path)["status"]) == ["ok", "ok"]


@pytest.mark.anyio
async def test_a_307_to_another_host_is_followed_when_no_key_is_sent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no key to lose (a server on this machine, OPENAI_API_KEY unset), a 307 to another
    host (here another port) carries the whole request: followed, not a stop."""
    monkeypatch.delenv("OPENAI_API_KEY")
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])
    async with FaultServer() as there:
        async def moved(srv: FaultServer, request: web.BaseRequest,
                        body: dict[str, Any]) -> web.StreamResponse:
            return web.Response(status=307, headers={
                "Location": f"{there.base_url}/chat/completions"})

        async with FaultServer(moved) as here:
            s = await run(job_for(tmp_path, here.base_url, inp))
        assert (here.requests, there.requests) == (2, 2)
    assert s.exit_code == 0 and list(results(tmp_path)["status"]) == ["ok", "ok"]


@pytest.mark.anyio
@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream"])
async def test_a_stream_request_answered_with_a_whole_completion_is_read(
        tmp_path: Path, content_type: str) -> None:
    """A proxy that answers a stream request with the whole completion as one JSON body under
    a type of its own: every attempt was a cut stream, sent again and paid for again, and the
    row failed. The completion is read as one."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])

    async def whole(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse:
        reply = completion(body, body["messages"][-1]["content"])
        return web.Response(body=json.dumps(reply, indent=2),  # on many lines, as some send it
                            headers={"Content-Type": content_type})

    async with FaultServer(whole) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=True))
        assert srv.requests == 2  # each row sent once
    assert s.exit_code == 0
    df = results(tmp_path)
    assert (df["attempts"] == 1).all() and df["content"].str.contains("one|two").all()
    assert df["total_tokens"].notna().all()


@pytest.mark.anyio
async def test_a_redirect_loop_stops_the_job(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])
    async with RedirectServer(redirecting(307, "/v1/chat/completions")) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp))
    assert s.exit_code == 4 and s.stopped and "redirected the request 10 times" in s.stopped


@pytest.mark.anyio
@pytest.mark.parametrize("usage", [True, False], ids=["with-usage", "no-usage"])
async def test_a_stream_held_open_after_its_answer_without_done_is_taken(
        tmp_path: Path, usage: bool) -> None:
    """A server that sends the whole answer (and its usage, or none, as vLLM without
    ``stream_options``) and then holds the connection open with no ``[DONE]``: each attempt
    waited until the timeout and was sent again (and paid for again), and the row failed as
    ``timeout``. The answer is taken once nothing more comes."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])
    usage_chunk = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}

    async def held_open(srv: FaultServer, request: web.BaseRequest,
                        body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = [delta("Echo: "), delta("held"), delta(None, "stop")]
        await response.write(stream_of(*events, *([usage_chunk] if usage else []), done=False))
        return await srv.held(response)

    async with FaultServer(held_open) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=True, timeout_s=2))
        assert srv.requests == 2  # each row sent once
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["content"]) == ["Echo: held"] * 2 and (df["attempts"] == 1).all()
    assert list(df["total_tokens"].fillna(-1)) == [13 if usage else -1] * 2


@pytest.mark.anyio
async def test_a_stream_that_finishes_near_its_timeout_and_is_held_open_is_taken(
        tmp_path: Path) -> None:
    """The answer finished in the last quarter of the timeout, then the server held the
    stream open without ``[DONE]``: the timeout came while what may follow was waited for,
    and the whole answer was thrown away, sent again and paid for again."""
    inp = make_csv(tmp_path / "in.csv", ["one"])

    async def late(srv: FaultServer, request: web.BaseRequest,
                   body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(stream_of(delta("Echo: "), done=False))
        await anyio.sleep(1.7)  # of the 2 s the request has: after_finish is 0.5 s
        await response.write(stream_of(delta("late"), delta(None, "stop"), done=False))
        return await srv.held(response)

    async with FaultServer(late) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=True, timeout_s=2))
        assert srv.requests == 1
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["content"]) == ["Echo: late"] and list(df["attempts"]) == [1]


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_body_that_starts_with_a_byte_order_mark_is_read(tmp_path: Path,
                                                                 stream: bool) -> None:
    """A gateway that puts a UTF-8 BOM before its JSON (or its stream): every reply was an
    ``invalid_body`` ("not JSON"), sent again and paid for again, and every row failed; its
    error bodies lost their message. The BOM is dropped, as JSON and SSE readers do."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two", "refused"])
    bom = b"\xef\xbb\xbf"

    async def with_bom(srv: FaultServer, request: web.BaseRequest,
                       body: dict[str, Any]) -> web.StreamResponse:
        if "refused" in json.dumps(body):
            return web.Response(status=400, content_type="application/json", body=bom + json.dumps(
                error_body("max_tokens is too large", "invalid_request_error", None)).encode())
        if stream:
            return await sse_response(request, bom + stream_of(delta("Echo: bom", "stop")))
        return web.Response(body=bom + json.dumps(completion(body, "bom")).encode(),
                            content_type="application/json")

    async with FaultServer(with_bom) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=stream or None))
        assert srv.requests == 3
    assert s.exit_code == 3
    df = results(tmp_path)
    assert list(df["status"]) == ["ok", "ok", "failed"]
    assert list(df["content"][:2]) == ["Echo: bom"] * 2
    assert df["error_message"].iloc[2] == "max_tokens is too large"


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_an_answer_with_half_an_emoji_escaped_alone_is_kept(tmp_path: Path,
                                                                 stream: bool) -> None:
    """An answer cut in the middle of an emoji, its first UTF-16 half escaped alone
    (``"\\ud83d"``, valid JSON, as servers that count text in UTF-16 write it): the reply was
    "a body that is not JSON", sent again and paid for again up to max_attempts, and the row
    failed. It is read, the lone half made U+FFFD, the rest of the text as sent."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])
    cut = "Echo: cut \ud83d"  # a high surrogate with no low one after it
    whole = "Echo: whole \U0001f600"  # a pair, escaped as two halves by json.dumps

    async def halves(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse:
        text = cut if "one" in json.dumps(body) else whole
        if stream:
            return await sse_response(request, stream_of(delta(text, "length")))
        data = completion(body, "")
        data["choices"][0]["message"]["content"] = text
        return web.Response(body=json.dumps(data).encode(), content_type="application/json")

    async with FaultServer(halves) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=stream or None))
        assert srv.requests == 2
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["content"]) == ["Echo: cut \ufffd", "Echo: whole \U0001f600"]


@pytest.mark.anyio
@pytest.mark.parametrize("refusal", [
    {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
     "message": "This model's maximum context length is 4096 tokens. However, you requested "
                "5000 tokens (4000 in the messages, 1000 in the completion). Please reduce the "
                "length of the messages or completion."},
    {"detail": "This model's maximum context length is 4096 tokens. However, you requested "
               "5000 tokens (4000 in the messages, 1000 in the completion). Please reduce the "
               "length of the messages or completion."},
], ids=["vllm", "fastapi"])
async def test_a_400_without_an_error_object_fails_its_row_with_what_it_says(
        tmp_path: Path, refusal: dict[str, Any]) -> None:
    """vLLM (before it took OpenAI's shape) and FastAPI servers put the message at the top of
    their error body: the row's error_message was the body's JSON text, cut at 300
    characters. It is the message; the other rows are done."""
    inp = make_csv(tmp_path / "in.csv", ["one", "too long", "three"])

    async def refuse(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse | None:
        return web.json_response(refusal, status=400) if "too long" in json.dumps(body) else None

    async with FaultServer(refuse) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp))
    assert s.exit_code == 3
    df = results(tmp_path)
    assert list(df["status"]) == ["ok", "failed", "ok"]
    assert df["error_type"].iloc[1] == "http_400"
    assert df["error_message"].iloc[1].startswith("This model's maximum context length is 4096 "
                                                  "tokens. However,")
    assert df["error_message"].iloc[1].endswith("of the messages or completion.")


async def first_row_fails_its_stream_at_once(tmp_path: Path, inp: Path, fault: Fault,
                                             said: str) -> None:
    """Stream the job's two rows from a server answering with ``fault``: its first row fails
    at its first try as ``stream_error`` whose message holds ``said``, the second is retried
    once and ok."""
    async with FaultServer(fault) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=True))
        assert srv.requests == 1 + 2
    assert s.exit_code == 3
    df = results(tmp_path)
    row = df.loc["r0000"]
    assert (row["status"], row["error_type"], row["attempts"]) == ("failed", "stream_error", 1)
    assert said in row["error_message"]
    assert (df.loc["r0001", "status"], df.loc["r0001", "attempts"]) == ("ok", 2)


async def run_with_usages(tmp_path: Path, inp: Path, usages: dict[str, dict[str, Any]],
                          stream: bool) -> RunSummary:
    """Run the job over ``inp`` against a server whose reply to the row ``Q: <name>`` carries
    ``usages[name]`` as its usage (in a stream's last chunk, with ``stream``)."""

    async def answer(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse:
        usage = next(v for k, v in usages.items() if f"Q: {k}" in json.dumps(body))
        if stream:
            return await sse_response(request, stream_of(
                delta("Echo"), delta(None, "stop"),
                {"id": "chatcmpl-s", "model": "gpt-4o-mini", "choices": [], "usage": usage}))
        data = reply(body)
        data["usage"] = usage
        return web.json_response(data)

    async with FaultServer(answer) as srv:
        return await run(job_for(tmp_path, srv.base_url, inp, stream=stream or None))


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_thinking_reported_beside_the_completion_is_billed_as_output(
        tmp_path: Path, stream: bool) -> None:
    """A gateway translating Gemini's usage may count its thinking apart from
    ``completion_tokens`` (which then holds the visible answer only, or 0) while
    ``total_tokens`` and ``reasoning_tokens`` count it. The thinking is billed as output, but
    was priced at nothing: a cost too low by the whole thinking budget. Where the reasoning
    tokens are what the total has beyond prompt and completion (or more than the completion
    itself), they are counted in the completion, as OpenAI's usage counts them."""
    inp = make_csv(tmp_path / "in.csv", ["apart", "nothing visible", "openai", "grok"])
    usages: dict[str, dict[str, Any]] = {
        "apart": {"prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 120,
                  "completion_tokens_details": {"reasoning_tokens": 60}},
        "nothing visible": {"prompt_tokens": 21, "completion_tokens": 0,
                            "completion_tokens_details": {"reasoning_tokens": 60}},
        # OpenAI's (and Grok's) convention: the completion already holds the reasoning
        "openai": {"prompt_tokens": 20, "completion_tokens": 100, "total_tokens": 120,
                   "completion_tokens_details": {"reasoning_tokens": 60}},
        "grok": {"prompt_tokens": 100, "completion_tokens": 500, "total_tokens": 600,
                 "completion_tokens_details": {"reasoning_tokens": 300}},
    }
    s = await run_with_usages(tmp_path, inp, usages, stream)
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["completion_tokens"]) == [100, 60, 100, 500]
    assert list(df["reasoning_tokens"]) == [60, 60, 60, 300]
    assert list(df["total_tokens"]) == [120, 81, 120, 600]
    # gpt-4o-mini: $0.15 in, $0.60 out per 1M tokens
    assert list(df["cost_usd"]) == pytest.approx(
        [(20 * 0.15 + 100 * 0.6) / 1e6, (21 * 0.15 + 60 * 0.6) / 1e6,
         (20 * 0.15 + 100 * 0.6) / 1e6, (100 * 0.15 + 500 * 0.6) / 1e6])


@pytest.mark.anyio
@pytest.mark.parametrize("content_type", ["text/event-stream", "text/plain", "application/json"])
async def test_a_stream_sent_to_a_request_that_asked_for_none_is_read(
        tmp_path: Path, content_type: str) -> None:
    """A gateway that only streams some models (thinking models it serves as streams) may
    answer a request without ``stream`` with an SSE stream. Read as JSON, the whole answer
    was an invalid_body, retried and paid for on every attempt, and the row failed. It is read
    as the stream it is: content, usage and cost as for a streamed job."""
    inp = make_csv(tmp_path / "in.csv", ["one", "two"])

    async def answer(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse:
        assert "stream" not in body
        return web.Response(status=200, content_type=content_type, body=stream_of(
            delta("Echo"), delta(": x", "stop"),
            {"id": "chatcmpl-s", "model": "gpt-4o-mini", "choices": [],
             "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}))

    async with FaultServer(answer) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp))
        assert srv.requests == 2
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["content"]) == ["Echo: x"] * 2
    assert list(df["finish_reason"]) == ["stop"] * 2
    assert list(df["attempts"]) == [1, 1]
    assert list(df["completion_tokens"]) == [7, 7]
    assert df["cost_usd"].notna().all()


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_reply_that_calls_tools_is_ok_whatever_its_content_says(
        tmp_path: Path, stream: bool) -> None:
    """Models behind gateways (Claude's, as a rule) call a tool with ``content: ""``, or with
    a sentence before the call ("I'll search for that."). Under a ``response_format`` that
    content was checked as the JSON answer: the row failed as invalid_json (and a
    --retry-failed paid for the same again), where a reply whose content was null was ok.
    A reply that calls tools is not the answer the format asks for: ok, its calls recorded,
    an empty content null as a stream gives it, a sentence kept."""
    inp = make_csv(tmp_path / "in.csv", ["empty", "preamble", "answer"])
    (tmp_path / "answer.json").write_text(json.dumps(
        {"type": "object", "properties": {"summary": {"type": "string"}},
         "required": ["summary"]}))
    call = {"id": "toolu_1", "type": "function",
            "function": {"name": "WebSearch", "arguments": '{"query": "x"}'}}
    said = {"empty": "", "preamble": "I'll search for that.", "answer": '{"summary": "s"}'}

    async def answer(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse:
        key = next(k for k in said if f"Q: {k}" in json.dumps(body))
        calls = [] if key == "answer" else [call]
        if stream:
            return await sse_response(request, stream_of(
                delta(said[key], **({"tool_calls": [{"index": 0, **call}]} if calls else {})),
                delta(None, "tool_calls" if calls else "stop")))
        return web.json_response(reply(body, finish_reason="tool_calls" if calls else "stop",
                                       message={"role": "assistant", "content": said[key],
                                                **({"tool_calls": calls} if calls else {})}))

    tools = [{"type": "function", "function": {
        "name": "WebSearch", "parameters": {"type": "object",
                                            "properties": {"query": {"type": "string"}}}}}]
    async with FaultServer(answer) as srv:
        job = job_for(tmp_path, srv.base_url, inp, stream=stream or None,
                      schema_file=str(tmp_path / "answer.json"))
        job = replace(job, request=replace(job.request, extra={"tools": tools}))
        s = await run(job)
    assert s.exit_code == 0, s.error_examples
    df = results(tmp_path)
    assert list(df["status"]) == ["ok"] * 3
    assert pd.isna(df["content"].iloc[0])
    assert df["content"].iloc[1] == "I'll search for that."
    assert [json.loads(c)[0]["id"] for c in df["tool_calls"].iloc[:2]] == ["toolu_1"] * 2
    assert pd.isna(df["json_summary"].iloc[0]) and pd.isna(df["json_summary"].iloc[1])
    assert df["json_summary"].iloc[2] == "s"


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_an_answer_the_server_gave_up_on_is_retried_not_ok(tmp_path: Path,
                                                                 stream: bool) -> None:
    """vLLM and SGLang end an answer they gave up on (the engine aborted the request: a
    restart, a preemption, an input too long) with ``finish_reason: "abort"`` (SGLang's an
    object with a message), a gateway with ``"error"``: the text stops wherever the server
    stopped. Such a row was ok with its cut answer (or none) and exit 0. It is retried, its
    billed usage kept, and fails as ``answer_aborted`` with the server's words if it never
    gets a whole answer."""
    inp = make_csv(tmp_path / "in.csv", ["aborted once", "error always", "sglang always"])
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    gave_up: dict[str, Any] = {
        "aborted once": "abort", "error always": "error",
        "sglang always": {"type": "abort", "message": "Input length 9000 exceeds 8192"}}

    async def fault(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse | None:
        key = next(k for k in gave_up if f"Q: {k}" in json.dumps(body))
        if key == "aborted once" and srv.by_prompt[prompt_key(f"Q: {key}")] > 1:
            return None  # answered whole
        if stream:
            return await sse_response(request, stream_of(
                delta("Echo: par"), delta(None, gave_up[key]),
                {"id": "chatcmpl-s", "model": "gpt-4o-mini", "choices": [], "usage": usage}))
        data = reply(body, finish_reason=gave_up[key],
                     message={"role": "assistant", "content": "Echo: par"})
        data["usage"] = usage
        return web.json_response(data)

    async with FaultServer(fault) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=stream or None))
        assert srv.requests == 2 + 3 + 3
    assert s.exit_code == 3
    df = results(tmp_path)
    once = df.loc["r0000"]
    assert (once["status"], once["attempts"], once["finish_reason"]) == ("ok", 2, "stop")
    assert once["content"] == "Echo: Q: aborted once"
    assert once["earlier_cost_usd"] == pytest.approx((12 * 0.15 + 3 * 0.6) / 1e6)
    for row, said in (("r0001", "finish_reason error"), ("r0002", "Input length 9000")):
        failed = df.loc[row]
        assert (failed["status"], failed["error_type"], failed["attempts"]) == (
            "failed", "answer_aborted", 3)
        assert said in failed["error_message"]
    assert not leaks_in_files(tmp_path / "out")


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_token_counts_sent_as_text_or_as_whole_floats_are_counted(
        tmp_path: Path, stream: bool) -> None:
    """Gateways that pass usage through another language's JSON may send its counts as
    strings ("12") or as floats (12.0). They were taken as no count at all: the rows had no
    tokens, their cost was unknown and the budget held them at an estimate. A whole number,
    as text or as a float, is counted; what is not one (12.5, "many", true) is still not."""
    inp = make_csv(tmp_path / "in.csv", ["text", "floats", "not counts"])
    usages: dict[str, dict[str, Any]] = {
        "text": {"prompt_tokens": "12", "completion_tokens": "7", "total_tokens": "19",
                 "prompt_tokens_details": {"cached_tokens": "4"}},
        "floats": {"prompt_tokens": 12.0, "completion_tokens": 7.0,
                   "completion_tokens_details": {"reasoning_tokens": 2.0}},
        "not counts": {"prompt_tokens": 12.5, "completion_tokens": "many",
                       "total_tokens": True},
    }
    s = await run_with_usages(tmp_path, inp, usages, stream)
    assert s.exit_code == 0
    df = results(tmp_path)
    assert list(df["prompt_tokens"].iloc[:2]) == [12, 12]
    assert list(df["completion_tokens"].iloc[:2]) == [7, 7]
    assert list(df["total_tokens"].iloc[:2]) == [19, 19]
    assert df["cached_tokens"].iloc[0] == 4 and df["reasoning_tokens"].iloc[1] == 2
    # gpt-4o-mini: $0.15 in ($0.075 cached), $0.60 out per 1M tokens
    assert list(df["cost_usd"].iloc[:2]) == pytest.approx(
        [(8 * 0.15 + 4 * 0.075 + 7 * 0.6) / 1e6, (12 * 0.15 + 7 * 0.6) / 1e6])
    odd = df.loc["r0002"]
    assert pd.isna(odd["prompt_tokens"]) and pd.isna(odd["completion_tokens"])
    assert pd.isna(odd["total_tokens"]) and pd.isna(odd["cost_usd"])


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_200_with_a_web_page_or_nothing_says_what_came(tmp_path: Path,
                                                               stream: bool) -> None:
    """A network's or a proxy's sign-in page (a captive portal), or a web page at a wrong base
    URL, comes as a 200 with HTML; a broken gateway may answer 200 with no body at all. The
    rows failed saying "a body that is not JSON" (a stream request: "the stream ended before
    its answer did"), which gave no clue. They say what came: an HTML page and its title, or
    an empty body."""
    inp = make_csv(tmp_path / "in.csv", ["sign in", "nothing"])

    async def odd(srv: FaultServer, request: web.BaseRequest,
                  body: dict[str, Any]) -> web.StreamResponse:
        if "Q: sign in" in json.dumps(body):
            return web.Response(status=200, content_type="text/html", text=(
                "<!DOCTYPE html>\n<html><head><title>Guest Wi-Fi - Sign in</title></head>"
                "<body><form>...</form></body></html>"))
        return web.Response(status=200, body=b"")

    async with FaultServer(odd) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=stream or None))
    assert s.exit_code == 3
    df = results(tmp_path)
    assert list(df["error_type"]) == ["invalid_body"] * 2
    page, nothing = df["error_message"]
    assert "HTML page" in page and "(Guest Wi-Fi - Sign in)" in page
    assert nothing == "HTTP 200 with an empty body"


@pytest.mark.anyio
async def test_an_error_field_in_a_stream_is_read_as_the_error_it_is(tmp_path: Path) -> None:
    """llama.cpp's server sends an error that comes once its stream has begun (a prompt longer
    than its context, the most common) as an SSE line of its own, ``error: {"code", "message",
    "type"}``. Taken for a stray line, it was a stream_cut, "the stream ended before its answer
    did", retried to max_attempts though no retry could fix it, and the server's words were
    lost. It is read as a stream_error: a 400 fails its row at once with what the server said,
    a 500 is retried."""
    inp = make_csv(tmp_path / "in.csv", ["too long", "fails once"])
    too_long = {"code": 400, "message": "the request exceeds the available context size, try "
                "increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": 9000,
                "n_ctx": 8192}
    failed = {"code": 500, "message": "slot unavailable", "type": "server_error"}

    async def llama_cpp(srv: FaultServer, request: web.BaseRequest,
                        body: dict[str, Any]) -> web.StreamResponse | None:
        if "Q: fails once" in json.dumps(body) and srv.by_prompt[
                prompt_key("Q: fails once")] > 1:
            return await sse_response(request, stream_of(delta("Echo"), delta(None, "stop")))
        error = too_long if "Q: too long" in json.dumps(body) else failed
        return await sse_response(request, b"error: " + json.dumps(error).encode() + b"\n\n")

    await first_row_fails_its_stream_at_once(tmp_path, inp, llama_cpp,
                                             "exceeds the available context size")


@pytest.mark.anyio
async def test_an_answer_compressed_in_a_way_that_cannot_be_read_stops_the_job(
        tmp_path: Path) -> None:
    """A proxy that compresses answers as br (or zstd) though the request did not offer it
    (this installation reads neither without its package) made every reply a client_error
    quoting the library: each row was answered, billed and thrown away on every one of its
    attempts, and then failed. Every reply would be the same: the job stops at once, rows
    left to do, saying what to install."""
    from aiohttp import compression_utils
    HAS_BROTLI = compression_utils.HAS_BROTLI
    HAS_ZSTD = getattr(compression_utils, "HAS_ZSTD", False)  # aiohttp 3.10 reads no zstd
    if HAS_BROTLI and HAS_ZSTD:
        pytest.skip("this installation reads every encoding a server may send")
    encoding = "zstd" if HAS_BROTLI else "br"
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(6)])

    async def compressing(srv: FaultServer, request: web.BaseRequest,
                          body: dict[str, Any]) -> web.StreamResponse:
        return web.Response(body=json.dumps(reply(body)).encode(), headers={
            "Content-Type": "application/json", "Content-Encoding": encoding})

    async with FaultServer(compressing) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, concurrency=2))
        assert srv.requests <= 2 + 2  # stopped at once
    assert s.exit_code == 4 and s.stopped
    assert f"compressed as {encoding}" in s.stopped and "install" in s.stopped, s.stopped
    assert s.ok == 0 and s.failed == 0
    assert not leaks_in_files(tmp_path / "out")


@pytest.mark.anyio
async def test_a_stream_event_whose_error_is_text_is_read_as_the_error_it_is(
        tmp_path: Path) -> None:
    """Hugging Face's text-generation-inference sends an error met once its stream has begun
    (an input longer than the model takes, checked as generation starts) as an event
    ``{"error": "<message>", "error_type": "validation"}``: the error as text, not an object.
    The event was passed over: the row was a stream_cut, retried to max_attempts although no
    retry could fix it, the server's words lost. It is a stream_error: a validation error
    fails its row at once with what the server said, another is retried."""
    inp = make_csv(tmp_path / "in.csv", ["too long", "fails once"])

    async def tgi(srv: FaultServer, request: web.BaseRequest,
                  body: dict[str, Any]) -> web.StreamResponse | None:
        if "Q: fails once" in json.dumps(body):
            if srv.by_prompt[prompt_key("Q: fails once")] > 1:
                return await sse_response(request, stream_of(delta("Echo"), delta(None, "stop")))
            error = {"error": "Request failed during generation: Server error: CUDA out of "
                     "memory", "error_type": "generation"}
        else:
            error = {"error": "Input validation error: `inputs` tokens + `max_new_tokens` must "
                     "be <= 4096. Given: 5000 `inputs` tokens and 64 `max_new_tokens`",
                     "error_type": "validation"}
        return await sse_response(request, sse(error))

    await first_row_fails_its_stream_at_once(tmp_path, inp, tgi, "must be <= 4096")


# The requests ChatClient posts past the session (ChatClient._post, once an answer came to one
# the session posted): the same bytes on the wire, the same errors, redirects still followed.

def _posts_past_the_session() -> bool:
    import aiohttp

    from batchrunner.client import _POST_TESTED
    return _POST_TESTED[0] <= tuple(map(int, aiohttp.__version__.split(".")[:2])) \
        <= _POST_TESTED[1]


@pytest.mark.anyio
async def test_requests_posted_past_the_session_are_sent_as_the_session_sends_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first request goes through the session; once it is answered the rest are posted
    by the client itself. The server sees the same method, path and headers either way."""
    import aiohttp
    if not _posts_past_the_session():
        pytest.skip(f"aiohttp {aiohttp.__version__}: every request is the session's")
    by_session = 0
    post = aiohttp.ClientSession.post

    def counted(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> Any:
        nonlocal by_session
        by_session += 1
        return post(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "post", counted)
    seen: list[tuple[str, str, list[tuple[str, str]]]] = []

    async def recorded(srv: FaultServer, request: web.BaseRequest,
                       body: dict[str, Any]) -> web.StreamResponse | None:
        headers = [(k, "<length>" if k == "Content-Length" else v)
                   for k, v in request.headers.items()]
        seen.append((request.method, request.path, headers))
        return None

    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(4)])
    async with FaultServer(recorded) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, concurrency=1))
    assert s.exit_code == 0 and (results(tmp_path)["status"] == "ok").all()
    assert by_session == 1 and len(seen) == 4
    assert seen[1:] == [seen[0]] * 3
    assert dict(seen[0][2])["Authorization"] == f"Bearer {KEY}"


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "to", "says"), [
    (307, "/v2/chat/completions", None),
    (302, "/v2/chat/completions", "turns the POST into a GET"),
    (303, "/v2/chat/completions", "turns the POST into a GET"),
    (307, "http://localhost:{port}/v2/chat/completions", "another host is not sent the API key"),
], ids=["307-followed", "302-stops", "303-stops", "307-other-host-stops"])
async def test_an_endpoint_that_starts_redirecting_mid_run(
        tmp_path: Path, status: int, to: str, says: str | None) -> None:
    """Answered at first, then redirected (a gateway moved mid-run). A 307 on the same
    server is sent again by the session, which follows it, as it does every later request:
    every row answered. A redirect the session would follow as a GET without the body (a 303
    says the POST was carried out), or to another host, which is not sent the key, stops the
    job naming the URL, as from the first request, and the request is not sent again."""
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(6)])
    answered_here = 0

    async def moves(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse | None:
        nonlocal answered_here
        if request.path.startswith("/v1/") and answered_here >= 2:
            return web.Response(status=status, headers={"Location": to.format(port=srv.port)})
        if request.path.startswith("/v1/"):
            answered_here += 1
        return None

    async with RedirectServer(moves) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, concurrency=1))
    df = results(tmp_path)
    if says is None:
        assert s.exit_code == 0 and (df["status"] == "ok").all() and (df["attempts"] == 1).all()
        # 2 answered at /v1; then each of 4 redirected (the first twice) and answered at /v2.
        assert srv.requests == 2 + 1 + 4 * 2
    else:
        assert s.exit_code == 4 and s.stopped and says in s.stopped, s.stopped
        base = to.format(port=srv.port).removesuffix("/chat/completions")
        if base.startswith("/"):
            base = f"http://127.0.0.1:{srv.port}{base}"
        assert f"(HTTP {status} to {base}/chat/completions)" in s.stopped
        assert f"set the base URL to {base}," in s.stopped
        assert list(df["status"]).count("ok") == 2
        assert srv.requests == 3  # the redirected request not sent again, nor followed


async def _closes_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.close()


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["refused", "connect-hangs", "closed-unanswered"])
async def test_a_request_posted_past_the_session_fails_as_the_sessions_would(
        fault: str) -> None:
    """The same connection faults, the same errors (type, words, retryable), whichever posts
    the request. (A pooled connection the server closes as the next request goes out on it
    fails that request as connection_reset, retried, either way, in other words: the
    session's request writes its body a loop turn later and fails at that write; the direct
    one writes it whole at once and fails at the answer's read.)"""
    import aiohttp

    from batchrunner.client import ChatClient
    from batchrunner.errors import TransportError
    if not _posts_past_the_session():
        pytest.skip(f"aiohttp {aiohttp.__version__}: every request is the session's")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with contextlib.ExitStack() as stack:
        server: asyncio.Server | None = None
        if fault == "closed-unanswered":
            server = await asyncio.start_server(_closes_at_once, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
        else:
            listener = stack.enter_context(socket.socket())
            listener.bind(("127.0.0.1", 0))
            port = listener.getsockname()[1]
            if fault == "connect-hangs":  # a one-place accept queue, filled: SYNs dropped
                listener.listen(0)
                stack.enter_context(socket.create_connection(("127.0.0.1", port)))
        errors = []
        for past_session in (False, True):
            async with ChatClient(f"http://127.0.0.1:{port}/v1", KEY, timeout_s=0.6,
                                  connections=1) as client:
                assert client._postable is not None
                client._target = client._postable if past_session else None
                with anyio.fail_after(10), pytest.raises(TransportError) as caught:
                    await client.complete(body)
                e = caught.value
                errors.append((e.error_type, str(e), e.retryable))
        if server is not None:
            server.close()
            await server.wait_closed()
    assert errors[0] == errors[1], errors
    assert errors[0][0] == ("connection_reset" if fault == "closed-unanswered"
                            else "connection_error")


_ANSWER = json.dumps({"id": "c", "object": "chat.completion", "model": "m", "choices": [{
    "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "fine"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
_TOO_LARGE = b'{"error": {"message": "too large", "type": "invalid_request_error"}}'


@pytest.mark.anyio
async def test_a_body_answered_before_it_was_all_sent_leaves_no_connection_behind_it() -> None:
    """A server that answers a big body at its head (a 413, its body limit) and closes,
    unread: the body's rest was still to go out when the answer came. Whichever posts the
    request, the connection is not put back in the pool with it ahead of the next request,
    which goes on a new connection and is answered."""
    import aiohttp

    from batchrunner.client import ChatClient
    from batchrunner.errors import RequestError
    if not _posts_past_the_session():
        pytest.skip(f"aiohttp {aiohttp.__version__}: every request is the session's")
    connections = 0

    async def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            for _ in range(10):
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"(?i)content-length: (\d+)", head)
                assert found is not None
                if int(found[1]) > 1 << 20:
                    writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: "
                                 b"application/json\r\nContent-Length: %d\r\n\r\n%b"
                                 % (len(_TOO_LARGE), _TOO_LARGE))
                    await writer.drain()
                    break
                await reader.readexactly(int(found[1]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(_ANSWER), _ANSWER))
                await writer.drain()
        writer.close()

    # aiohttp 3.10 leaves the "Connection lost" of a body cut short unretrieved in a drain
    # waiter of the session's request: logged, not raised, so not a failure here.
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()

    def unretrieved_loss_ignored(loop: asyncio.AbstractEventLoop,
                                 context: dict[str, Any]) -> None:
        if (context.get("message") == "Future exception was never retrieved"
                and type(context.get("exception")) is ConnectionError):
            return
        if handler is not None:
            handler(loop, context)
        else:
            loop.default_exception_handler(context)

    small = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    big = {"model": "m", "messages": [{"role": "user", "content": "y" * (8 << 20)}]}
    loop.set_exception_handler(unretrieved_loss_ignored)
    try:
        async with serve_streams_on_loopback(limited) as port:
            for past_session in (False, True):
                connections = 0
                async with ChatClient(f"http://127.0.0.1:{port}/v1", KEY, timeout_s=10,
                                      connections=4) as client:
                    await client.complete(small)  # the session's: the rest may go past it
                    if not past_session:
                        client._target = client._postable = None
                    with anyio.fail_after(20):
                        with pytest.raises(RequestError) as refused:
                            await client.complete(big)
                        assert refused.value.error_type == "http_413"
                        assert (await client.complete(small)).content == "fine"
                    assert (client._target is not None) == past_session
                assert connections == 2, past_session
    finally:
        gc.collect()  # the waiters' complaints, if any, made now
        loop.set_exception_handler(handler)


@pytest.mark.anyio
async def test_the_rest_of_a_body_answered_early_is_dropped_not_sent() -> None:
    """A server that answers a big body at its head and then reads nothing: once the answer
    is read, the rest of the body waiting to go out is dropped with its connection, not
    held (a socket and megabytes for as long as the server neither reads nor closes) and
    sent when the server reads again."""
    import aiohttp

    from batchrunner.client import ChatClient
    from batchrunner.errors import RequestError
    if not _posts_past_the_session():
        pytest.skip(f"aiohttp {aiohttp.__version__}: every request is the session's")
    size = 32 << 20  # more than the kernel's buffers on both sides hold
    answered, ended = asyncio.Event(), asyncio.Event()
    received = 0

    async def refuses_unread(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        nonlocal received
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"(?i)content-length: (\d+)", head)
            assert found is not None
            if int(found[1]) < size:  # the first, the session's
                await reader.readexactly(int(found[1]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(_ANSWER), _ANSWER))
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            writer.transport.pause_reading()
            writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json"
                         b"\r\nContent-Length: %d\r\n\r\n%b" % (len(_TOO_LARGE), _TOO_LARGE))
            await writer.drain()
            await answered.wait()
            writer.transport.resume_reading()
            while chunk := await reader.read(1 << 20):
                received += len(chunk)
        writer.close()
        ended.set()

    async with (serve_streams_on_loopback(refuses_unread) as port,
                ChatClient(f"http://127.0.0.1:{port}/v1", KEY, timeout_s=10,
                           connections=1) as client):
        await client.complete({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert client._target is not None
        big = {"model": "m", "messages": [{"role": "user", "content": "y" * size}]}
        with anyio.fail_after(20):
            with pytest.raises(RequestError) as refused:
                await client.complete(big)
            assert refused.value.error_type == "http_413"
            answered.set()
            await ended.wait()
    assert received < size  # what the kernel held, not the rest


@pytest.mark.anyio
@pytest.mark.parametrize("location", ["http://[bad/v2", "mailto:x@y", "http://:80/v2"])
async def test_a_redirect_to_no_http_url_fails_as_the_sessions_would_and_is_not_sent_again(
        location: str) -> None:
    """A 303 to a Location that is no http(s) URL: the session's own error (a client_error),
    whichever posts the request, and the request not sent again (a 303 says it was carried
    out)."""
    import aiohttp

    from batchrunner.client import ChatClient
    from batchrunner.errors import TransportError
    if not _posts_past_the_session():
        pytest.skip(f"aiohttp {aiohttp.__version__}: every request is the session's")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    async def moved(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse | None:
        if srv.requests % 2 == 0:  # each client's second request
            return web.Response(status=303, headers={"Location": location})
        return None

    errors = []
    async with FaultServer(moved) as srv:
        for past_session in (False, True):
            async with ChatClient(srv.base_url, KEY, timeout_s=5, connections=1) as client:
                await client.complete(body)  # answered: the client may post past the session
                assert (client._target is not None) == (client._postable is not None)
                if not past_session:
                    client._target = None
                with anyio.fail_after(10), pytest.raises(TransportError) as caught:
                    await client.complete(body)
                e = caught.value
                errors.append((e.error_type, str(e), e.retryable))
            assert srv.requests == (2 if not past_session else 4)
    assert errors[0] == errors[1] and errors[0][0] == "client_error", errors
