"""Every way an endpoint can fail: each is named in its row, retried when it may pass, counted in
the report, and never hangs the job.

Runs in-process (``run_job``) against the simulator's fault markers and rates, and against two
small servers written here for what the simulator does not do: ``FaultServer`` (aiohttp, answers
what a test tells it, request by request) and ``SilentServer`` (accepts connections, never
answers). Everything listens on 127.0.0.1 on a random port. Backoff is 10 ms so retries are
quick; every run is bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import pandas as pd
import pytest
from aiohttp import web

from batchrunner.client import ChatClient
from batchrunner.config import JobConfig, load_job
from batchrunner.errors import TransportError
from batchrunner.journal import Journal
from batchrunner.report import format_usd
from batchrunner.retry import RetryPolicy
from batchrunner.runner import (
    RunOptions,
    RunSummary,
    format_summary,
    plan_from_output,
    prepare,
    rebuild_outputs,
    run_job,
)
from batchrunner.simulator import Simulator, SimulatorConfig, SimulatorThread, prompt_key
from batchrunner.status import format_status
from tests.servers import serve_on_loopback
from tests.test_limits_real import learnt_paces

KEY = "sk-test-faults-0123456789"
TEMPLATE = "Q: {text}"
RUN_LIMIT_S = 60


pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def make_csv(path: Path, texts: list[str]) -> Path:
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(len(texts))], "text": texts}).to_csv(
        path, index=False)
    return path


def job_for(tmp_path: Path, base_url: str, inp: Path, **over: Any) -> JobConfig:
    overrides: dict[str, Any] = {
        "input": str(inp), "id_column": "id", "prompt": TEMPLATE, "model": "gpt-4o-mini",
        "max_tokens": 64, "base_url": base_url, "output": str(tmp_path / "out"),
        "concurrency": 8,
    }
    overrides.update(over)
    return load_job(None, overrides)


def options(max_attempts: int = 3) -> RunOptions:
    return RunOptions(retry=RetryPolicy(base_s=0.01, max_attempts=max_attempts),
                      progress="none", handle_signals=False)


async def run(job: JobConfig, max_attempts: int = 3) -> RunSummary:
    with anyio.fail_after(RUN_LIMIT_S):  # the job must never hang
        return await run_job(job, options(max_attempts))


def results(tmp_path: Path) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("id")


def report(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    return data


def failed_by_type(rep: dict[str, Any]) -> dict[str, int]:
    return {k: v["rows"] for k, v in rep["by_error_type"].items()}


def seen_by_type(rep: dict[str, Any]) -> dict[str, int]:
    return {k.removeprefix("error_"): v for k, v in rep["counters"].items()
            if k.startswith("error_")}


# ----------------------------------------------------------------------------------------------
# Servers


def completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-fault", "object": "chat.completion", "created": 0,
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"Echo: {text}"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}


def error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": None}}


Fault = Callable[["FaultServer", web.BaseRequest, dict[str, Any]],
                 Awaitable[web.StreamResponse | None]]


class FaultServer:
    """A chat completions endpoint that answers each request with ``fault`` (while it returns a
    response, for the first ``times`` requests of each prompt, or always) or a normal reply.

    ``requests`` counts every request, ``by_prompt`` counts them by ``prompt_key`` of the last
    user message (as the simulator does); ``healthy = True`` turns the faults off.
    """

    def __init__(self, fault: Fault | None = None, *, times: int | None = None) -> None:
        self.fault = fault
        self.times = times
        self.healthy = False
        self.closing = asyncio.Event()  # set when the server stops: ends stalled answers
        self.requests = 0
        self.by_prompt: Counter[str] = Counter()
        self.port = 0
        self._runner: web.ServerRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FaultServer:
        self._runner, self.port = await serve_on_loopback(self._handle)
        return self

    async def held(self, response: web.StreamResponse) -> web.StreamResponse:
        """``response``, left open until the server stops (30 s at most): an answer that
        stalls."""
        with anyio.move_on_after(30):
            await self.closing.wait()
        return response

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._runner is not None
        self.closing.set()
        await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST":  # a chat endpoint only: no model list (GET /models)
            return web.json_response(error_body("Not found", "invalid_request_error", None),
                                     status=404)
        self.requests += 1
        body = json.loads(await request.read())
        text = str([m for m in body["messages"] if m["role"] == "user"][-1]["content"])
        pk = prompt_key(text)
        self.by_prompt[pk] += 1
        if self.fault is not None and not self.healthy and (
                self.times is None or self.by_prompt[pk] <= self.times):
            response = await self.fault(self, request, body)
            if response is not None:
                return response
        return web.json_response(completion(body, text))


class SilentServer:
    """Accepts TCP connections and never reads or answers anything."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)  # held open, silent, until the server closes

    async def __aenter__(self) -> SilentServer:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()


class ClosingServer(SilentServer):
    """Accepts TCP connections and closes each at once, unanswered (a box whose port is up and
    whose server is not)."""

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()


@pytest.mark.anyio
async def test_a_stop_for_connections_closed_says_how_many_requests_the_rows_took(
        tmp_path: Path) -> None:
    """Every connection taken and closed: the stop said "no more rows were sent" beside a
    summary of 1,109 requests sent (walked, 240 rows): they were the retries of the rows
    started, which the line did not say. It says how many requests were sent by then, how
    many tries a row gets, and how many rows were in flight or waiting to retry, left to do."""
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(60)])
    async with ClosingServer() as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, concurrency=8))
    assert s.exit_code == 4 and s.stopped is not None and s.failed >= 20
    assert s.sent > 20 * 2 and srv.accepted >= s.sent  # each row's tries, not a request a row
    # The cut as aiohttp tells it: the server's close (aiohttp 3.14), or the connection reset
    # by it (3.10): both connection_reset, retried alike.
    said = re.search(r"none succeeded \((?:the server closed the connection|the connection "
                     r"broke) mid-request(?: \(Connection reset by peer\))?\), "
                     r"(\d+) requests sent by then, a row tried up to 3 times; none was sent "
                     r"after( \(the (\d+|one) in flight let finish\))?(, and the (\d+) rows? "
                     r"waiting to retry were left to do)? — ", s.stopped)
    assert said is not None, s.stopped
    assert int(said[1]) == s.sent  # none after, indeed
    assert int(said[5] or 0) <= s.pending  # the rows left to do: those, and rows never sent
    assert "no more rows were sent" not in s.stopped


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------
# The simulator's fault markers, with and without streaming


# kind → (error_type, error_type when streamed, retried?)
MARKER_FAULTS: dict[str, tuple[str, str, bool]] = {
    "408": ("http_408", "http_408", True),
    "409": ("http_409", "http_409", True),
    "500": ("http_500", "http_500", True),
    "502": ("http_502", "http_502", True),
    "503": ("http_503", "http_503", True),
    "504": ("http_504", "http_504", True),
    "529": ("http_529", "http_529", True),
    "reset": ("connection_reset", "connection_reset", True),
    "corrupt": ("invalid_body", "invalid_body", True),
    "truncated": ("invalid_body", "truncated_body", True),  # streamed: the connection drops
    "html": ("http_502", "http_502", True),  # a gateway's HTML 502 page
    "no_choices": ("no_choices", "no_choices", True),
    "cut": ("invalid_body", "truncated_body", True),  # streamed: dropped before [DONE]
    "no_done": ("no_choices", "stream_cut", True),  # streamed: ends cleanly, no [DONE]
    "error_200": ("error_body", "error_body", True),  # a gateway's error in a 200 body
    "400": ("http_400", "http_400", False),
    "404": ("http_404", "http_404", False),
    "422": ("http_422", "http_422", False),
}


GATEWAY_TYPES = frozenset({"http_502", "http_503", "http_504"})


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_every_fault_is_named_retried_and_counted(tmp_path: Path, stream: bool) -> None:
    """For each fault kind one row fails once (a retry succeeds, unless the kind is not
    retryable) and one row fails every time (failed after 3 attempts, or 1)."""
    texts = [f"clean row {i}" for i in range(10)]
    for kind in MARKER_FAULTS:
        texts += [f"{kind} once [[sim:{kind}*1]]", f"{kind} always [[sim:{kind}]]"]
    inp = make_csv(tmp_path / "in.csv", texts)
    config = SimulatorConfig(fault_retry_after_s=0.0, reply_tokens_mean=20)
    async with Simulator(config) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, stream=True if stream else None))
        requests = sim.stats()["requests"]
    assert s.exit_code == 3
    df = results(tmp_path)
    assert len(df) == len(texts)
    assert (df.iloc[:10]["status"] == "ok").all()
    failed_rows: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for i, kind in enumerate(MARKER_FAULTS):
        plain_type, stream_type, retried = MARKER_FAULTS[kind]
        etype = stream_type if stream else plain_type
        once, always = df.iloc[10 + 2 * i], df.iloc[11 + 2 * i]
        if retried:
            assert (once["status"], once["attempts"]) == ("ok", 2), (kind, once.to_dict())
            # A gateway's 502/503/504 while rows are left to start is a try of its row only
            # when a request sent since its last one was answered (it may be a server away):
            # on a busy machine a retry can go before any such answer, and is not counted.
            extra = int(always["attempts"]) - 3
            # Streamed, three rows are cut each time (reset, truncated, cut): cut together,
            # they are taken for the server's falls, one of them is sent alone and fails as
            # what brings it down, and the tries the others spent in the falls it was cut in
            # are given back to them, one for each such fall (a row cut again and again
            # before an answer began a new fall was given back every one of those tries, and
            # retried for ever); the falls the culprits were cut in bound them.
            cut = stream and etype in ("connection_reset", "truncated_body")
            assert extra in (range(3) if etype in GATEWAY_TYPES else range(7) if cut
                             else (0,)), (kind, extra)
            assert (always["status"], always["error_type"]) == ("failed", etype), (
                kind, always.to_dict())
            failed_rows[etype] += 1
            seen[etype] += 1 + 3 + extra
        else:  # not retried: the one-time fault fails its row too
            for row in (once, always):
                assert (row["status"], row["error_type"], row["attempts"]) == (
                    "failed", etype, 1), (kind, row.to_dict())
            failed_rows[etype] += 2
            seen[etype] += 2
        assert always["error_message"], kind
    assert "HTML" in df.iloc[11 + 2 * list(MARKER_FAULTS).index("html")]["error_message"]
    # A reset while the gateways' 502/503/504 had the server look away (rows left to start) is
    # waited out as a restart's cut, not a try of its row: seen, and told apart.
    seen["connection_reset"] += s.cut_unanswered
    rep = report(tmp_path)
    assert failed_by_type(rep) == dict(failed_rows)
    assert s.error_types == dict(failed_rows)
    assert seen_by_type(rep) == dict(seen)
    # Every request is accounted for: a try of its row, or a cut waited out.
    assert rep["counters"]["attempts"] + s.cut_unanswered == requests
    assert rep["rows"]["by_status"] == {"ok": len(texts) - sum(failed_rows.values()),
                                        "failed": sum(failed_rows.values())}


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_reply_without_usage_is_ok_with_tokens_and_cost_unknown(tmp_path: Path,
                                                                     stream: bool) -> None:
    inp = make_csv(tmp_path / "in.csv", ["fine", "no usage [[sim:no_usage]]"])
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, stream=True if stream else None))
    assert s.exit_code == 0
    assert s.cost_usd is None  # unknown, not zero
    assert s.cost_unknown == 1 and s.cost_known_usd > 0
    said = format_summary(s)  # the known part is shown, with the rows it leaves out and
    # their estimate (journaled, for the next runs' budgets)
    assert s.unreported_rows == 1 and s.unreported_usd > 0
    assert (f"cost: at least {format_usd(s.cost_known_usd)}, and 1 row without a cost (no "
            "usage reported by gpt-4o-mini), plus tries of 1 row that may have been billed "
            f"with no usage reported, estimated at {format_usd(s.unreported_usd)}") in said
    assert ("(plus 1 row without a cost: no price known, or no usage reported)"
            in format_status(tmp_path / "out"))
    assert " + unknown (1 row) |" in (tmp_path / "out" / "cost_report.md").read_text()
    row = results(tmp_path).loc["r0001"]
    assert row["status"] == "ok" and row["content"].startswith("Echo:")
    for col in ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"):
        assert pd.isna(row[col]), col
    rep = report(tmp_path)
    assert rep["cost_complete"] is False
    assert any("no token usage" in w for w in rep["warnings"])


@pytest.mark.anyio
async def test_random_fault_rates_reconcile_with_the_counters(tmp_path: Path) -> None:
    """With ~23 % of requests failing at random, every fault the server injected is counted
    under its error type, and requests sent = attempts + 429s."""
    rates = {"500": 0.04, "503": 0.03, "429": 0.04, "reset": 0.02, "corrupt": 0.02,
             "truncated": 0.02, "no_choices": 0.02, "html": 0.02, "slow": 0.02}
    n = 300
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    config = SimulatorConfig(faults=rates, seed=11, fault_retry_after_s=0.0, slow_ms=50,
                             reply_tokens_mean=20)
    async with Simulator(config) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, concurrency=16), max_attempts=6)
        stats = sim.stats()
    faults = Counter(stats["faults"])
    df = results(tmp_path)
    assert len(df) == n and s.ok + s.failed == n
    failed = df[df["status"] == "failed"]
    assert failed["error_type"].notna().all()
    rep = report(tmp_path)
    seen = seen_by_type(rep)
    expected = {"http_500": faults["500"], "http_503": faults["503"],
                "rate_limited": faults["429"], "connection_reset": faults["reset"],
                "invalid_body": faults["corrupt"] + faults["truncated"],
                "no_choices": faults["no_choices"], "http_502": faults["html"]}
    assert seen == {k: v for k, v in expected.items() if v}
    assert sum(expected.values()) > 30  # the rates did inject faults
    assert rep["counters"]["http_429"] == faults["429"]
    # A reset with no request sent after it answered, another row's cut meanwhile, is
    # waited out as a server restarting (cut_unanswered), not a try of its row.
    assert stats["requests"] == (rep["counters"]["attempts"] + rep["counters"]["http_429"]
                                 + rep["counters"].get("cut_unanswered", 0)), rep["counters"]
    assert s.sent == rep["counters"]["sent"] == stats["requests"]
    assert sum(failed_by_type(rep).values()) == len(failed)


# ----------------------------------------------------------------------------------------------
# 429s


@pytest.mark.anyio
async def test_429_with_retry_after_zero_from_the_simulator(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", [f"row {i} [[sim:429*2]]" for i in range(6)])
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp))
        assert sim.stats()["requests"] == 18
    assert s.exit_code == 0 and s.sent == 18  # the 429'd requests were sent too
    df = results(tmp_path)
    assert (df["attempts"] == 1).all() and (df["rate_limited"] == 2).all()  # not attempts
    rep = report(tmp_path)
    assert rep["counters"]["http_429"] == rep["counters"]["error_rate_limited"] == 12
    assert rep["requests"]["http_429"] == 12


@pytest.mark.anyio
async def test_a_storm_of_429s_saying_retry_after_zero_is_waited_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """429s with "retry-after: 0" for 2.5 s: taken at its word on every 429, a row's 30
    rate-limit retries went by in under a second and it failed. A row 429'd again backs off
    more each time, so the storm passes and every row is ok. The job sets no rate, and no pace
    is learnt from a storm that refused everything (one of 54 a minute was, from a request in
    flight among its 429s, and one of 21 from the few rows answered as it ended: the 8 rows
    took 8 to 25 s, a big job would have crawled), and each wait is capped at a second (the
    policy's 30 s let a row's last draw wait seconds past the storm): a row's 30 retries still
    span far more."""
    paces = learnt_paces(monkeypatch)
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(8)])
    ends = time.monotonic() + 2.5

    async def storm(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse | None:
        if time.monotonic() > ends:
            return None
        return web.json_response(
            error_body("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
            status=429, headers={"retry-after": "0"})

    async with FaultServer(storm) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp),
                              RunOptions(retry=RetryPolicy(base_s=0.05, cap_s=1.0, max_attempts=3),
                                         progress="none", handle_signals=False))
        assert srv.requests < 8 * 30  # not every row's 30 retries at once
    assert s.exit_code == 0 and (s.ok, s.failed) == (8, 0)
    assert (results(tmp_path)["rate_limited"] > 1).all()
    assert paces == []


def too_many_requests(headers: dict[str, str]) -> Fault:
    async def fault(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response(
            error_body("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
            status=429, headers=headers)
    return fault


@pytest.mark.anyio
@pytest.mark.parametrize("headers", [{}, {"retry-after-ms": "5"}, {"retry-after": "0"},
                                     {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}],
                         ids=["none", "retry-after-ms", "retry-after", "http-date"])
async def test_429_with_and_without_retry_after(tmp_path: Path, headers: dict[str, str]) -> None:
    n = 6
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    async with FaultServer(too_many_requests(headers), times=2) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp))
        assert srv.requests == 3 * n
    assert s.exit_code == 0
    df = results(tmp_path)
    assert (df["status"] == "ok").all()
    assert (df["attempts"] == 1).all() and (df["rate_limited"] == 2).all()
    rep = report(tmp_path)
    assert rep["counters"]["http_429"] == rep["counters"]["error_rate_limited"] == 2 * n


@pytest.mark.anyio
async def test_endless_429s_end_the_row_not_the_job(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", ["always limited", "fine"])

    async def first_row_limited(srv: FaultServer, request: web.BaseRequest,
                                body: dict[str, Any]) -> web.StreamResponse | None:
        if "always limited" in json.dumps(body):
            return await too_many_requests({"retry-after-ms": "1"})(srv, request, body)
        return None

    async with FaultServer(first_row_limited) as srv:
        # A row 429'd again backs off more each time: capped short here.
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp), RunOptions(
                retry=RetryPolicy(base_s=0.001, cap_s=0.005, max_attempts=3), progress="none",
                handle_signals=False))
    assert s.exit_code == 3
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["error_type"]) == ("failed", "rate_limited")
    assert row["rate_limited"] > 1
    assert failed_by_type(report(tmp_path)) == {"rate_limited": 1}


@pytest.mark.anyio
async def test_a_request_larger_than_the_token_limit_fails_at_once(tmp_path: Path) -> None:
    """OpenAI answers a request larger than the tokens-per-minute limit with a 429 that no
    wait cures: the row fails on its first try (request_too_large), told to shrink it."""
    inp = make_csv(tmp_path / "in.csv", ["huge prompt", "fine"])
    said = ("Request too large for gpt-4o-mini in organization org-x on tokens per min (TPM): "
            "Limit 30000, Requested 50000. The input or output tokens must be reduced in order "
            "to run successfully.")

    async def too_large(srv: FaultServer, request: web.BaseRequest,
                        body: dict[str, Any]) -> web.StreamResponse | None:
        if "huge" not in json.dumps(body):
            return None
        return web.json_response(error_body(said, "tokens", "rate_limit_exceeded"), status=429)

    async with FaultServer(too_large) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp))
        assert srv.requests == 2
    assert s.exit_code == 3 and (s.ok, s.failed) == (1, 1)
    row = results(tmp_path).loc["r0000"]
    assert (row["error_type"], row["attempts"], row["rate_limited"]) == (
        "request_too_large", 1, 0)
    assert row["error_message"] == said
    assert ("shrink the prompt or max_tokens of the 1 row larger than the tokens-per-minute "
            "limit (request_too_large), then rerun with --retry-failed") in format_summary(s)


# ----------------------------------------------------------------------------------------------
# Connections: refused, silent, hung, cut


@pytest.mark.anyio
async def test_an_endpoint_refusing_connections_stops_the_job_with_nothing_recorded(
        tmp_path: Path) -> None:
    # A wrong port, host or proxy: the first row's retries find out, the rest are left to do.
    n = 400
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    port = closed_port()
    s = await run(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp))
    assert s.exit_code == 4 and s.stopped and s.failed == 0 and s.pending == n
    assert s.stopped.startswith("no connection to the endpoint for ")
    assert "3 attempts" in s.stopped
    assert f"cannot connect to 127.0.0.1:{port} (Connection refused)" in s.stopped
    assert "check the base URL, the network and any proxy" in s.stopped
    assert KEY not in s.stopped
    assert Journal(tmp_path / "out").read().num_rows == 0  # a rerun sends every row
    # The morning after: the report and status say why, and what is left.
    rep = report(tmp_path)
    assert rep["stopped"] == s.stopped and rep["rows"]["to_do"] == n
    assert rep["warnings"][:2] == [
        f"the run stopped early: {s.stopped}",
        f"{n} rows of the input not done yet: rerun the job to send them"]
    assert "| 0 (0 ok, 0 failed, 400 to do)" in (tmp_path / "out" / "cost_report.md").read_text()
    assert "0 failed · 400 to do" in (tmp_path / "out" / "report.html").read_text()
    assert "  last run: stopped 20" in format_status(tmp_path / "out")
    shown = format_status(tmp_path / "out").splitlines()  # the stop, then the command
    assert shown[-2].endswith(s.stopped) and shown[-1].startswith(
        f"  to finish, {n} rows to do: batchrunner run --input {inp} ")
    # `batchrunner report` rebuilds the reports from the journal and keeps the stop.
    rebuild_outputs(plan_from_output(tmp_path / "out"), RunSummary(name="in"))
    assert report(tmp_path)["stopped"] == s.stopped
    # While the endpoint looked down no new row was started: the rows in flight (8, the
    # concurrency) tried again, not every row of the input once.
    assert 3 <= s.sent <= 8 * 3 * 2, s.sent


@pytest.mark.anyio
async def test_an_endpoint_whose_connections_hang_stops_the_job(tmp_path: Path) -> None:
    # A firewall that drops packets: connects neither succeed nor fail. Here a listener whose
    # one-place accept queue is full, so the kernel drops every further SYN.
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(100)])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)):  # fills the queue
            s = await run(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, timeout_s=1),
                          max_attempts=2)
    assert s.exit_code == 4 and s.stopped and s.pending == 100
    # Connects are given half of timeout_s, so they fail as connection errors, not timeouts.
    assert f"cannot connect to 127.0.0.1:{port} (no answer within 0.5 s)" in s.stopped
    assert s.sent <= 8 * 2


async def outage(tmp_path: Path, n: int, down_s: float | None, outage_s: float,
                 progress: str = "none") -> tuple[RunSummary, float]:
    """A job whose endpoint goes away after 100 answers, and comes back on the same port
    ``down_s`` later (``None``: never); the run's summary and how long it was down."""
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    port = closed_port()
    sim = Simulator(SimulatorConfig(latency_ms=5), port=port)
    await sim.start()
    gone = math.inf
    try:
        job = job_for(tmp_path, sim.base_url, inp, concurrency=4)

        async def go_away() -> None:
            nonlocal gone
            # The simulator has no event for it; run() fails after RUN_LIMIT_S.
            while sim.stats()["completions"] < 100:  # noqa: ASYNC110
                await anyio.sleep(0.005)
            await sim.stop()
            gone = time.monotonic()
            if down_s is not None:
                await anyio.sleep(down_s)
                await sim.start()

        async with anyio.create_task_group() as tg:
            tg.start_soon(go_away)
            with anyio.fail_after(RUN_LIMIT_S):
                s = await run_job(job, RunOptions(
                    retry=RetryPolicy(base_s=0.05, max_attempts=3), progress=progress,
                    handle_signals=False, outage_s=outage_s))
        return s, time.monotonic() - gone
    finally:
        await sim.stop()


@pytest.mark.anyio
async def test_an_endpoint_that_goes_away_mid_job_stops_it_keeping_what_finished(
        tmp_path: Path) -> None:
    """Gone for longer than outage_s: the job stops once that much time has passed, the rows
    not answered left to do (none failed; those whose request was cut once sent, which the
    server may have billed, with a ``retrying`` record that holds its estimate)."""
    n = 400
    s, waited = await outage(tmp_path, n, None, outage_s=1.0)
    assert s.exit_code == 4 and s.stopped and s.failed == 0
    assert s.stopped.startswith("no connection to the endpoint for 1.")
    assert "no answer to any request since it last answered" in s.stopped
    assert waited >= 1.0
    state = Journal(tmp_path / "out").read()
    records = state.select(["status", "unreported_usd"]).to_pylist()
    ok = sum(r["status"] == "ok" for r in records)
    cut = [r for r in records if r["status"] != "ok"]
    assert 100 <= ok < n and all(r["status"] == "retrying" and r["unreported_usd"] > 0
                                 for r in cut)
    assert s.ok == ok and s.pending == n - ok


@pytest.mark.anyio
async def test_while_the_endpoint_is_away_the_log_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A run waiting out an outage said only 'no row finished for 60 s; 0 requests in
    flight', as a hung one would."""
    from batchrunner import progress

    monkeypatch.setattr(progress.LogProgress.__init__, "__defaults__", (0.0,))  # every second
    s, _ = await outage(tmp_path, 400, None, outage_s=2.5, progress="log")
    assert s.stopped and s.stopped.startswith("no connection to the endpoint for ")
    lines = [line for line in capsys.readouterr().err.splitlines() if " rows  ok=" in line]
    away = [line for line in lines if line.endswith(
        "; the job waits 2.5 s for it to come back, then stops)") and
            "(no connection to the endpoint for " in line]
    assert away, lines
    assert "(no connection to the endpoint for" not in lines[0]  # before it went away
    assert max(int(line.split("(no connection to the endpoint for ")[1].split()[0])
               for line in away) >= 1


@pytest.mark.anyio
async def test_while_a_gateway_answers_for_a_server_away_the_log_says_what_it_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A gateway with no server for the job's model (a model name mistyped) answers 503 with
    the reason: the job waits it out as an outage, and its log said "no connection to the
    endpoint" all the while, sending the user to check a network that was fine."""
    from batchrunner import progress

    monkeypatch.setattr(progress.LogProgress.__init__, "__defaults__", (0.0,))  # every second
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(20)])
    said = "No available channel for model gpt-4o-mni under group default"

    async def no_channel(srv: FaultServer, request: web.BaseRequest,
                         body: dict[str, Any]) -> web.StreamResponse | None:
        return web.json_response({"error": {"message": said, "type": "new_api_error"}},
                                 status=503)

    async with FaultServer(no_channel) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp), RunOptions(
                retry=RetryPolicy(base_s=0.05, max_attempts=3), progress="log",
                handle_signals=False, outage_s=2.5))
    assert s.exit_code == 4 and s.failed == 0 and s.stopped, s
    lines = [line for line in capsys.readouterr().err.splitlines() if " rows  ok=" in line]
    away = [line for line in lines if "(no answer from the endpoint for " in line]
    assert away and not any("no connection" in line for line in lines), lines
    assert f"only its gateway's HTTP 503: {said}; the job stops after 2.5 s of these)" \
        in away[-1]


@pytest.mark.anyio
async def test_the_outage_stop_counts_the_rows_refusals_since_the_endpoint_last_answered(
        tmp_path: Path) -> None:
    """A row refused three times, then (the endpoint back) others answered, then refused twice
    more: the stop message counts the two of the outage, not all five."""
    from batchrunner.limiter import Limiter
    from batchrunner.progress import NullProgress
    from batchrunner.runner import _Run, _Work

    inp = make_csv(tmp_path / "in.csv", ["row 0"])
    run = _Run(prepare(job_for(tmp_path, "http://127.0.0.1:9/v1", inp), options()), options(),
               None, Limiter(None, None), NullProgress(), None,  # no client: not sent
               max_concurrency=1, fixed_concurrency=True)
    item = _Work(key="0", body={}, model="", prompt_estimate=1, completion_max=1)
    for _ in range(3):
        run._refused(item)
    run._answered(time.perf_counter())  # another row's request, sent after those, answered
    for _ in range(2):
        run._refused(item)
    error = TransportError("connection_error", "cannot connect", retryable=True)
    run._unreachable(item, error, run.outage_from)
    assert item.refusals == 5 and run.stop_error is not None
    assert "(2 attempts at row 0, no answer to any request since it last answered)" in str(
        run.stop_error)


@pytest.mark.anyio
async def test_the_progress_shows_an_outage_only_while_nothing_answers(tmp_path: Path) -> None:
    """unreachable=Ns beside the bar: a refused connection with no answer since is shown; one
    among long requests that go on being answered (sent before it) is not."""
    from batchrunner.limiter import Limiter
    from batchrunner.progress import NullProgress
    from batchrunner.runner import _Run, _Work

    inp = make_csv(tmp_path / "in.csv", ["row 0"])
    run = _Run(prepare(job_for(tmp_path, "http://127.0.0.1:9/v1", inp), options()), options(),
               None, Limiter(None, None), NullProgress(), None,  # no client: not sent
               max_concurrency=1, fixed_concurrency=True)
    item = _Work(key="0", body={}, model="", prompt_estimate=1, completion_max=1)
    assert run._unreachable_s() == 0.0
    sent_before = time.perf_counter()
    run._refused(item)
    assert run._unreachable_s() > 0.0  # refused, nothing answered since
    run._answered(sent_before)  # a long request sent before the refusal, answered after it
    assert run._unreachable_s() == 0.0
    run._refused(item)  # refused again, after that answer: out of reach again
    assert run._unreachable_s() > 0.0


@pytest.mark.anyio
async def test_an_endpoint_restarted_mid_job_is_waited_for(tmp_path: Path) -> None:
    """Down for a moment mid-job (a restart, a deploy): the rows in flight try again, beyond
    their max_attempts, and the job finishes with every row ok; no row fails for it."""
    n = 300
    s, _ = await outage(tmp_path, n, 1.5, outage_s=60.0)
    assert s.exit_code == 0 and not s.stopped and (s.ok, s.failed) == (n, 0)
    assert s.not_connected >= 4  # the rows in flight were refused while it was down
    # While it was down, new rows were not started: only the rows in flight tried again.
    assert s.sent < n + 4 * 40, s.sent


def _run_retrying_a_row(tmp_path: Path, concurrency: int) -> tuple[Any, Any]:
    """A run that sends nothing (no client), of ``concurrency`` workers, and a row of it
    waiting to be tried again, as a worker leaves it (``_Run._work``)."""
    from batchrunner.limiter import Limiter
    from batchrunner.progress import NullProgress
    from batchrunner.runner import _Run, _Work

    inp = make_csv(tmp_path / "in.csv", ["row 0"])
    run = _Run(prepare(job_for(tmp_path, "http://127.0.0.1:9/v1", inp), options()), options(),
               None, Limiter(None, None), NullProgress(), None,
               max_concurrency=concurrency, fixed_concurrency=True)
    item = _Work(key="0", body={}, model="", prompt_estimate=1, completion_max=1)
    run.outstanding = run.counts.retrying = 1
    return run, item


@pytest.mark.anyio
async def test_the_first_answer_after_an_outage_wakes_the_rows_waiting_it_out(
        tmp_path: Path) -> None:
    """A row refused in an outage (two refusals or more, nothing answered between) waits for
    its retry until an answer comes to a request sent after the latest refusal (the server
    back), not to one sent before (a restarting server still answering what it took before):
    its retry is then due at once."""
    from batchrunner.runner import _Work

    run, item = _run_retrying_a_row(tmp_path, 1)
    sent_before = time.perf_counter()
    run._refused(item)
    run._refused(_Work(key="1", body={}, model="", prompt_estimate=1,
                       completion_max=1))  # another row
    with anyio.fail_after(RUN_LIMIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run._requeue, item, 1e6)  # a backoff that would never end
            await anyio.wait_all_tasks_blocked()
            run._answered(sent_before)  # sent before the refusal: no sign it is back
            await anyio.wait_all_tasks_blocked()
            assert not run.retries and run.counts.retrying == 1
            run._answered(time.perf_counter())  # sent after it: back
    assert list(run.retries) == [item] and run.counts.retrying == 0


@pytest.mark.anyio
async def test_a_retry_coming_due_wakes_one_idle_worker(tmp_path: Path) -> None:
    """A retry due is work for one worker: each woke every idle worker, all but one to find
    nothing to do and sleep again. With no worker idle, the keeper of the parked rows' time
    is woken to send it."""
    run, item = _run_retrying_a_row(tmp_path, 8)
    idle = [anyio.Event() for _ in range(7)]
    run.idle.extend(idle)
    run.keeper = keeper = anyio.Event()
    with anyio.fail_after(RUN_LIMIT_S):
        await run._requeue(item, 0.0)
    assert list(run.retries) == [item] and run.counts.retrying == 0
    assert [wake.is_set() for wake in idle] == [True] + [False] * 6
    assert not keeper.is_set()
    run.idle.clear()
    run.counts.retrying = 1
    with anyio.fail_after(RUN_LIMIT_S):
        await run._requeue(item, 0.0)
    assert keeper.is_set()
    # Over the target (the concurrency lowered), a worker woken ends rather than send it:
    # waking one alone left the retry with nobody to send it. Every idle worker is woken.
    idle = [anyio.Event() for _ in range(3)]
    run.idle.extend(idle)
    run.workers, run.target_workers = 5, 2
    run.counts.retrying = 1
    with anyio.fail_after(RUN_LIMIT_S):
        await run._requeue(item, 0.0)
    assert all(wake.is_set() for wake in idle)


async def gateway_outage(tmp_path: Path, n: int, down_s: float, outage_s: float,
                         texts: list[str] | None = None) -> tuple[RunSummary, FaultServer]:
    """A job behind a gateway whose server goes away after 100 requests: for ``down_s`` every
    request gets the gateway's 502 page (as nginx answers while vLLM restarts)."""
    inp = make_csv(tmp_path / "in.csv", texts or [f"row {i}" for i in range(n)])
    since: list[float] = []

    async def bad_gateway(srv: FaultServer, request: web.BaseRequest,
                          body: dict[str, Any]) -> web.StreamResponse | None:
        if "always" in json.dumps(body):  # a row the server fails for itself
            return web.Response(status=502, text="<html>502 Bad Gateway</html>",
                                content_type="text/html")
        if srv.requests <= 100:
            return None
        since.append(since[0] if since else time.monotonic())
        if time.monotonic() - since[0] < down_s:
            return web.Response(status=502, text="<html>502 Bad Gateway</html>",
                                content_type="text/html")
        return None

    async with FaultServer(bad_gateway) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, concurrency=8),
                              RunOptions(retry=RetryPolicy(base_s=0.05, cap_s=0.4,
                                                           max_attempts=2),
                                         progress="none", handle_signals=False,
                                         outage_s=outage_s))
    return s, srv


@pytest.mark.anyio
async def test_a_server_restarting_behind_a_gateway_mid_job_fails_no_row(
        tmp_path: Path) -> None:
    """502s from a gateway for 1.5 s mid-job, longer than the rows' two attempts last: the
    rows in flight try again until the server is back, new rows wait, and no row fails."""
    n = 300
    s, srv = await gateway_outage(tmp_path, n, 1.5, outage_s=60.0)
    assert s.exit_code == 0 and not s.stopped and (s.ok, s.failed) == (n, 0), s.error_examples
    assert srv.requests > n + 8  # the rows in flight were answered 502, more than once
    # Only those and the next row of each worker: once a row started after the last answer is
    # refused, no new row is started until the server is back.
    waited = sum(1 for c in srv.by_prompt.values() if c > 1)
    assert 8 <= waited <= 2 * 8, waited
    rep = report(tmp_path)
    assert rep["counters"]["attempts"] == srv.requests  # each 502 is a try of its row
    assert seen_by_type(rep)["http_502"] == srv.requests - n


@pytest.mark.anyio
@pytest.mark.parametrize("then", ["503", "502"])
async def test_a_server_away_whose_gateway_asks_for_a_wait_is_asked_one_request_at_a_time(
        tmp_path: Path, then: str) -> None:
    """503s with "retry-after: 1" from a gateway for 2.5 s mid-job, at concurrency 32: new
    sends wait as asked, and then one request at a time asks again until one is answered. The
    outage costs the requests in flight as it began and a probe a second, not every row in flight
    asking again each second (each on its own backoff: about 190 503s here); no row fails.
    Once the first 40 answers asked for the wait, the gateway may answer 502 with no
    retry-after: a probe a second still, not one probe right after another."""
    n, conc = 300, 32
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    since: list[float] = []
    away: list[int] = []

    async def unavailable(srv: FaultServer, request: web.BaseRequest,
                          body: dict[str, Any]) -> web.StreamResponse | None:
        if srv.requests <= 100:
            return None
        since.append(since[0] if since else time.monotonic())
        if time.monotonic() - since[0] < 2.5:
            away.append(srv.requests)
            if then == "502" and len(away) > 40:
                return web.Response(status=502, text="<html>502 Bad Gateway</html>",
                                    content_type="text/html")
            return web.Response(status=503, text="upstream unavailable",
                                headers={"retry-after": "1"})
        return None

    async with FaultServer(unavailable) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, concurrency=conc),
                              RunOptions(progress="none", handle_signals=False))
    assert s.exit_code == 0 and (s.ok, s.failed) == (n, 0), s.error_examples
    assert away and len(away) <= 3 * conc, len(away)
    seen = seen_by_type(report(tmp_path))
    assert seen["http_503"] + seen.get("http_502", 0) == len(away)


@pytest.mark.anyio
async def test_a_503_of_one_request_while_the_others_are_answered_holds_no_other_row(
        tmp_path: Path) -> None:
    """A gateway that turns a request away at once now and then ("overloaded", retry-after:
    3) while it answers every other: the server is there, so the wait is that row's own. It
    held every new send of the job for the wait, then let one request through at a time, each
    time such a 503 came back before another answer did (a 503 in 20 with retry-after made a
    job three times slower). The other rows are answered meanwhile."""
    n = 40
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    turned_away = {prompt_key(f"Q: row {i}") for i in (15, 25)}
    answered: list[str] = []
    answered_then: dict[str, int] = {}  # when the row turned away was asked again

    async def overloaded_now_and_then(srv: FaultServer, request: web.BaseRequest,
                                      body: dict[str, Any]) -> web.StreamResponse | None:
        text = str(body["messages"][-1]["content"])
        pk = prompt_key(text)
        if pk in turned_away:
            if srv.by_prompt[pk] == 1:
                return web.Response(status=503, text="overloaded", headers={"retry-after": "3"})
            answered_then[pk] = len(answered)
            return None
        await asyncio.sleep(0.1)
        answered.append(pk)
        return None

    async with FaultServer(overloaded_now_and_then) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, concurrency=4), max_attempts=3)
    assert s.exit_code == 0 and (s.ok, s.failed) == (n, 0), s.error_examples
    assert srv.requests == n + 2
    # Each waited its own 3 s; the other 38 rows (a second's work) were answered meanwhile.
    assert answered_then == dict.fromkeys(turned_away, n - 2), answered_then


@pytest.mark.anyio
async def test_a_gateway_answering_502_for_longer_than_outage_s_stops_the_job(
        tmp_path: Path) -> None:
    n = 300
    s, _ = await gateway_outage(tmp_path, n, math.inf, outage_s=1.0)
    assert s.exit_code == 4 and s.stopped and s.failed == 0, s.stopped
    # Stopped at the first probe's refusal past outage_s (1 s): probes go every 0.8 s, which a
    # busy machine (the suite's workers beside it) stretches, so 1.x s or 2.x s.
    waited = re.match(r"no answer from the endpoint for (\d+\.\d) s", s.stopped)
    assert waited and 1.0 <= float(waited[1]) < 3.0, s.stopped
    assert "only http_502 from what stands in front of it" in s.stopped
    assert s.stopped.endswith("wait for the endpoint (or its gateway or proxy) to be back, then "
                              "rerun to resume")
    assert 100 - 8 <= s.ok <= 100 and s.pending == n - s.ok


@pytest.mark.anyio
async def test_a_row_a_gateway_always_fails_still_fails_after_max_attempts(
        tmp_path: Path) -> None:
    """Others answered between its tries: the 502s are the row's own, not a server away."""
    n = 200
    texts = [f"row {i}" for i in range(n)]
    texts[120] = "row 120 always"
    s, srv = await gateway_outage(tmp_path, n, 0.0, outage_s=60.0, texts=texts)
    assert s.exit_code == 3 and not s.stopped and (s.ok, s.failed) == (n - 1, 1)
    row = results(tmp_path).loc["r0120"]
    assert (row["error_type"], row["attempts"]) == ("http_502", 2)
    assert srv.requests == n + 1


@pytest.mark.anyio
async def test_an_endpoint_down_for_a_moment_at_the_start_costs_no_row(tmp_path: Path) -> None:
    n = 300
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    port = closed_port()
    job = job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, concurrency=8)
    sim = Simulator(SimulatorConfig(), port=port)

    async def come_up() -> None:
        await anyio.sleep(0.3)
        await sim.start()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(come_up)
            with anyio.fail_after(RUN_LIMIT_S):
                # Six tries 0.2 s apart and doubling: a row gives up after 3 s on average.
                s = await run_job(job, RunOptions(retry=RetryPolicy(base_s=0.2, max_attempts=6),
                                                  progress="none", handle_signals=False))
    finally:
        await sim.stop()
    assert s.exit_code == 0 and s.ok == n
    # While it was down only the rows already started tried again: not a failed try per row.
    assert s.sent < n + 8 * 6, s.sent


@pytest.mark.anyio
async def test_with_one_attempt_a_row_an_endpoint_that_refuses_still_stops_the_job(
        tmp_path: Path) -> None:
    # max_attempts = 1: a refused request never reached a server, so it is tried once more
    # while nothing answers; the second refusal stops the job with every row left to do.
    n = 100
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    s = await run(job_for(tmp_path, f"http://127.0.0.1:{closed_port()}/v1", inp,
                          max_attempts=1), max_attempts=1)
    assert s.exit_code == 4 and s.stopped and s.failed == 0 and s.pending == n
    assert s.stopped.startswith("no connection to the endpoint for ")
    assert "2 attempts" in s.stopped
    assert s.sent <= 8 * 2, s.sent  # the rows in flight, twice each at most
    # Not "16 requests sent this run (none could connect)": none of them was sent
    assert s.not_connected == s.sent and (
        f"{s.sent} requests tried this run, none could connect") in format_summary(s)


def test_a_rehearsal_none_of_whose_requests_connected_says_no_answers_are_not_real() -> None:
    """A rehearsal's rerun once its `batchrunner simulate` was stopped: none of its requests
    connected, so no answer came, real or not (it said "(to the built-in simulator: the answers
    are not real)" after "none could connect")."""
    s = RunSummary(name="rehearsal", rows=10, pending=10, sent=11, not_connected=11, ran=True,
                   simulated=True, wall_s=5.0)
    said = format_summary(s)
    assert "11 requests tried this run, none could connect\n" in said, said
    assert "not real" not in said
    s.not_connected = 3  # some answered: those answers are the simulator's
    assert "(3 could not connect; to the built-in simulator: the answers are not real)" in (
        format_summary(s))


@pytest.mark.anyio
async def test_a_job_whose_endpoint_fails_every_try_is_told_to_wait_not_to_fix(
        tmp_path: Path) -> None:
    """The first rows all failing with a server error after every retry is the endpoint's
    trouble, not the job's: the stop message says to wait, not to fix something."""
    inp = make_csv(tmp_path / "in.csv", [f"row {i} [[sim:500]]" for i in range(60)])
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp), max_attempts=2)
    assert s.exit_code == 4 and s.stopped
    assert s.stopped.startswith("the first 20 rows to finish all failed with http_500")
    assert s.stopped.endswith(
        "wait for the endpoint to recover (a server error on every try: nothing in the job to "
        "fix), then run the job again with --retry-failed")
    # status says so too: it told to fix what stopped it, which said there was nothing to fix.
    finish = next(x for x in format_status(tmp_path / "out").splitlines()
                  if x.startswith("  to finish, "))
    assert finish.startswith(f"  to finish, {s.pending} rows to do and {s.failed} failed: wait "
                             "for the endpoint to recover (what stopped it, above), then: "
                             "batchrunner run "), finish
    assert finish.endswith(" --retry-failed") and "fix" not in finish


@pytest.mark.anyio
async def test_a_gateway_that_never_answered_but_503_is_waited_out_then_stops_no_row_failed(
        tmp_path: Path) -> None:
    """Every request 503'd from the start (a gateway whose upstream is away, with
    "retry-after: 1"): no row is failed by it. One request at a time asks, as the answers ask,
    and after outage_s of that the job stops with every row left to do (a rerun resumes)."""
    n = 60
    inp = make_csv(tmp_path / "in.csv", [f"row {i} [[sim:503]]" for i in range(n)])
    async with Simulator(SimulatorConfig()) as sim:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, sim.base_url, inp),
                              replace(options(2), outage_s=2.0))
        sent = sim.stats()["requests"]
    assert s.exit_code == 4 and s.failed == 0 and s.pending == n, s
    assert s.stopped.startswith("no answer from the endpoint for 2."), s.stopped
    assert "only http_503 from what stands in front of it" in s.stopped
    assert sent <= 8 + 5, sent  # the concurrency's first tries, then a probe a second


@pytest.mark.anyio
async def test_a_row_a_gateway_always_turns_away_fails_at_concurrency_1(tmp_path: Path) -> None:
    """At concurrency 1 a row whose every try nginx answers 503 (the server behind it fails
    on that row, say) was waited out as an outage, no other request out to show the server
    there: the job stopped after outage_s with the rows after it unsent, and a rerun met that
    row first again. A new row now starts beside it; answered, the row fails as any row the
    server fails for itself, after max_attempts, and the job goes on."""
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(5)])

    async def turned_away(srv: FaultServer, request: web.BaseRequest,
                          body: dict[str, Any]) -> web.StreamResponse | None:
        if "row 1" in json.dumps(body):
            return await gateway_html_503(srv, request, body)
        return None

    async with FaultServer(turned_away) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp, concurrency=1),
                              replace(options(3), outage_s=30.0))
        sent = srv.requests
    assert s.exit_code == 3 and not s.stopped, s.stopped
    assert (s.ok, s.failed, s.pending) == (4, 1, 0)
    # Row 1's max_attempts, each after another row's answer but the first: a try counts when a
    # request sent since the row's previous one was answered, so under load one that came back
    # before the row beside it was answered is not counted (as in the gateway tests above).
    assert 4 + 3 <= sent <= 4 + 3 + 2
    row = results(tmp_path).loc["r0001"]
    assert row["error_type"] == "http_503" and row["attempts"] == sent - 4


@pytest.mark.anyio
async def test_a_server_still_loading_its_model_is_waited_for(tmp_path: Path) -> None:
    """llama.cpp's server answers 503 "Loading model" (no retry-after) until its model is
    loaded: a job started with it (a nightly script starting both) waits, one request at a
    time, instead of failing its first rows and stopping (20 rows failed in 8 s before)."""
    n = 40
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    started: list[float] = []
    loading: list[int] = []

    async def still_loading(srv: FaultServer, request: web.BaseRequest,
                            body: dict[str, Any]) -> web.StreamResponse | None:
        started.append(started[0] if started else time.monotonic())
        if time.monotonic() - started[0] < 2.0:
            loading.append(srv.requests)
            return web.json_response({"error": {"code": 503, "message": "Loading model",
                                                "type": "unavailable_error"}}, status=503)
        return None

    async with FaultServer(still_loading) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp), max_attempts=2)
    assert s.exit_code == 0 and (s.ok, s.failed) == (n, 0), s.error_examples
    assert loading and len(loading) <= 8 + 2.0 / 0.8 + 3, len(loading)


@pytest.mark.anyio
async def test_rows_too_long_for_the_model_first_in_the_input_do_not_stop_the_job(
        tmp_path: Path) -> None:
    """An input sorted by length, its 25 longest documents first, each over gpt-4o-mini's
    context: the first 20 rows to finish all failed with http_400, and the job stopped (exit
    4) with 173 short rows unsent and "fix what it names" where there was nothing to fix, night
    after night. A prompt over the model's context is the row's own failure, as the README
    says: the others are sent and answered."""
    n = 200
    texts = ["word " * 130_000 if i < 25 else f"short doc {i}" for i in range(n)]
    inp = make_csv(tmp_path / "in.csv", texts)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp))
    assert (s.exit_code, s.ok, s.failed, s.stopped) == (3, n - 25, 25, None), s
    failed = results(tmp_path).query("status != 'ok'")
    assert set(failed["error_type"]) == {"http_400"}
    assert failed["error_message"].str.contains("maximum context length is 128000 tokens").all()


@pytest.mark.anyio
async def test_rows_a_content_filter_refuses_first_in_the_input_do_not_stop_the_job(
        tmp_path: Path) -> None:
    """Azure's content filter refusing 25 rows (400, "content management policy") sorted
    first: the first 20 rows to finish all failed alike and the job stopped, the rows after
    them unsent, each night only some 50 rows further. A refusal of the row's content is the
    row's own failure: the others are sent and answered."""
    texts = [f"flagged {i}" for i in range(25)] + [f"fine {i}" for i in range(50)]
    inp = make_csv(tmp_path / "in.csv", texts)

    async def content_filter(srv: FaultServer, request: web.BaseRequest,
                             body: dict[str, Any]) -> web.StreamResponse | None:
        if "flagged" not in body["messages"][-1]["content"]:
            return None
        return web.json_response({"error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
                       "content management policy. Please modify your prompt and retry.",
            "type": None, "param": "prompt", "code": "content_filter", "status": 400}},
            status=400)

    async with FaultServer(content_filter) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp))
    assert (s.exit_code, s.ok, s.failed, s.stopped) == (3, 50, 25, None), s


@pytest.mark.anyio
async def test_a_job_whose_every_request_is_refused_stops_after_its_first_rows(
        tmp_path: Path) -> None:
    # A parameter the model rejects, a model the gateway does not have: every row would fail.
    n = 300
    inp = make_csv(tmp_path / "in.csv", [f"row {i} [[sim:400]]" for i in range(n)])
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp))
        sent = sim.stats()["requests"]
    assert s.exit_code == 4 and s.stopped
    assert s.stopped.startswith(
        "the first 20 rows to finish all failed with http_400 and none succeeded ")
    assert s.stopped.endswith("fix what it names, then run the job again with --retry-failed")
    assert "Simulated bad request." in s.stopped
    assert 20 <= s.failed <= 20 + 8 and s.pending == n - s.failed  # 8: the concurrency
    assert sent == s.failed
    # A 400 is not retried: a request a row, and no word of a row's tries.
    assert f"(Simulated bad request.), {sent} requests sent by then; none was sent after" in \
        s.stopped, s.stopped
    # status named the same command to finish the job, whose rows would fail alike and which
    # left the failed rows failed: it says to fix the cause first, and resend those too.
    finish = next(x for x in format_status(tmp_path / "out").splitlines()
                  if x.startswith("  to finish, "))
    assert finish.startswith(f"  to finish, {s.pending} rows to do and {s.failed} failed: fix "
                             "what stopped it (above), then: batchrunner run "), finish
    assert finish.endswith(" --retry-failed")
    # A job whose last rows were the ones failing: nothing to do, the failed rows to retry.
    small = make_csv(tmp_path / "small.csv", [f"row {i} [[sim:400]]" for i in range(20)])
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, small, output=str(tmp_path / "small")))
    assert s.exit_code == 4 and s.stopped and (s.failed, s.pending) == (20, 0), s
    finish = next(x for x in format_status(tmp_path / "small").splitlines()
                  if x.startswith("  to finish, "))
    assert finish.startswith("  to finish, the 20 failed rows to retry: fix what stopped it "
                             "(above), then: batchrunner run "), finish
    assert finish.endswith(" --retry-failed")
    # A rehearsal meets what the real night would: max_tokens for a reasoning model (a warning,
    # sent anyway) is refused as OpenAI refuses it, and the job stops alike.
    plain = make_csv(tmp_path / "plain.csv", [f"row {i}" for i in range(n)])
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, plain, model="o4-mini",
                              output=str(tmp_path / "o4")))
    assert s.exit_code == 4 and s.stopped and 20 <= s.failed <= 20 + 8, s
    assert ("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
            "'max_completion_tokens' instead.") in s.stopped
    # ... and a max_tokens over the model's output limit (gpt-4o-mini's 16,384), which the
    # simulator answered: refused, the job stops naming OpenAI's message.
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, plain, max_tokens=20_000,
                              output=str(tmp_path / "big")))
    assert s.exit_code == 4 and s.stopped and 20 <= s.failed <= 20 + 8, s
    assert ("max_tokens is too large: 20000. This model supports at most 16384 completion "
            "tokens, whereas you provided 20000.") in s.stopped


@pytest.mark.anyio
@pytest.mark.parametrize("says", ["plain", "api"])
async def test_a_base_url_without_its_v1_says_to_check_it(tmp_path: Path, says: str) -> None:
    """A base URL that misses /v1 gets the server's 404 for every row, plain (as aiohttp and
    others say it) or as an API error of its own type (OpenAI's, and gateways' that copy it:
    "Invalid URL (POST /chat/completions)"): the stop says where the requests went and to check
    the base URL, not to fix a model or a setting."""
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(40)])

    async def only_v1(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/v1/chat/completions":
            return web.json_response(completion(await request.json(), "hi"))
        if says == "api":
            return web.json_response({"error": {
                "message": f"Invalid URL (POST {request.path})", "type": "invalid_request_error",
                "param": None, "code": None}}, status=404)
        return web.Response(status=404, text="404: Not Found")

    runner, port = await serve_on_loopback(only_v1)
    try:
        root = f"http://127.0.0.1:{port}"
        s = await run(job_for(tmp_path, root, inp))
    finally:
        await runner.cleanup()
    assert s.exit_code == 4 and s.stopped
    assert s.stopped.startswith("the first 20 rows to finish all failed with http_404")
    assert f"nothing at {root}/chat/completions: check the base URL (most end in /v1)" \
        in s.stopped


@pytest.mark.anyio
async def test_a_base_url_at_a_web_server_that_takes_no_post_says_to_check_it(
        tmp_path: Path) -> None:
    """A base URL at a web server that takes no POST (``python -m http.server``: 501 and its
    HTML error page) was a server error like any other: every row tried 6 times (289 requests
    of a 3,000-row input), then a stop saying to wait for the endpoint to recover, nothing in
    the job to fix. A 501 is no outage: the rows fail at once and the job stops, saying to
    check the base URL."""
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(60)])
    posts = 0

    async def files_only(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal posts
        posts += 1
        return web.Response(status=501, content_type="text/html", text=(
            "<!DOCTYPE HTML><html><head><title>Error response</title></head><body>"
            "<h1>Error response</h1><p>Error code: 501</p>"
            "<p>Message: Unsupported method ('POST').</p></body></html>"))

    runner, port = await serve_on_loopback(files_only)
    try:
        s = await run(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp))
    finally:
        await runner.cleanup()
    assert s.exit_code == 4 and s.stopped
    assert s.stopped.startswith("the first 20 rows to finish all failed with http_501"), s.stopped
    assert (f"no chat completions at http://127.0.0.1:{port}/v1/chat/completions: check the "
            "base URL (most end in /v1)") in s.stopped
    assert posts < 40 and s.pending > 0, s.stopped


@pytest.mark.anyio
async def test_first_rows_failing_do_not_stop_a_job_once_one_is_ok(tmp_path: Path) -> None:
    n = 60
    texts = [f"row {i} [[sim:400]]" if i != 10 and i < 40 else f"row {i}" for i in range(n)]
    inp = make_csv(tmp_path / "in.csv", texts)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, concurrency=1))
    assert s.exit_code == 3 and not s.stopped
    assert s.failed == 39 and s.ok == 21


@pytest.mark.anyio
async def test_first_rows_failing_in_different_ways_do_not_stop_the_job(tmp_path: Path) -> None:
    n = 50
    kinds = ["400", "404"]
    texts = [f"row {i} [[sim:{kinds[i % 2]}]]" for i in range(40)] + [
        f"row {i}" for i in range(40, n)]
    inp = make_csv(tmp_path / "in.csv", texts)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, concurrency=1))
    assert s.exit_code == 3 and not s.stopped and s.failed == 40 and s.ok == 10


@pytest.mark.anyio
async def test_a_graceful_restart_mid_job_fails_no_row(tmp_path: Path) -> None:
    """A server restarting gracefully stops listening but finishes the requests it took:
    those late answers are to requests sent before it went away, so they do not make the
    refusals meanwhile the rows' own: no row fails. (Each late answer lets the idle workers
    try a new row; refused, it is tried again later.)"""
    n = 80
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    rng = random.Random(7)

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.json()
        await asyncio.sleep(rng.uniform(0.1, 0.6))
        return web.json_response(completion(body, "hi"), headers={"Connection": "close"})

    async def serve(port: int) -> tuple[web.ServerRunner, web.TCPSite]:
        runner = web.ServerRunner(web.Server(slow), handler_cancellation=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        return runner, site

    port = closed_port()
    runner, first = await serve(port)
    runners = [runner]

    async def restart() -> None:
        await anyio.sleep(1.0)
        assert first._server is not None
        first._server.close()  # no new connections; the requests taken go on
        await anyio.sleep(1.5)
        runners.append((await serve(port))[0])

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(restart)
            with anyio.fail_after(RUN_LIMIT_S):
                s = await run_job(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp),
                                  RunOptions(retry=RetryPolicy(base_s=0.05, max_attempts=2),
                                             progress="none", handle_signals=False))
    finally:
        for runner in runners:
            await runner.cleanup()
    assert s.exit_code == 0 and (s.ok, s.failed) == (n, 0), s.error_examples
    assert s.not_connected > 0 and s.sent == n + s.not_connected


async def run_against_a_box(tmp_path: Path, box: Callable[[web.BaseRequest],
                            Awaitable[web.StreamResponse]], inp: Path,
                            max_attempts: int = 3) -> RunSummary:
    """``inp`` run against the handler ``box`` on 127.0.0.1, four at a time, ``max_attempts``
    tries a row on a short backoff."""
    runner, port = await serve_on_loopback(box)
    try:
        with anyio.fail_after(RUN_LIMIT_S):
            return await run_job(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp,
                                         concurrency=4),
                                 RunOptions(retry=RetryPolicy(base_s=0.05,
                                                              max_attempts=max_attempts),
                                            progress="none", handle_signals=False))
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_a_box_restarting_with_requests_in_its_queue_spends_no_try_of_theirs(
        tmp_path: Path) -> None:
    """vLLM answers a few requests at a time and queues the rest. It restarted with requests
    in its queue that had been sent before its latest answer arrived: "nothing answered since
    it was sent" did not hold for them, so each cut was a try of its row, where the README
    says a restart's cuts are waited out (a night of restarts failed rows as
    connection_reset). Nothing sent after them was answered: they are waited out, and no row
    spends a try on the restart."""
    n = 30
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    turn = asyncio.Semaphore(1)  # one answered at a time; the others wait their turn
    held: set[asyncio.BaseTransport] = set()
    answered = 0
    down_until: float | None = None

    def restart() -> None:
        nonlocal down_until
        down_until = time.monotonic() + 1.0
        for transport in list(held):
            transport.abort()

    async def box(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal answered
        transport = request.transport
        assert transport is not None
        body = await request.json()
        if down_until is not None and time.monotonic() < down_until:
            transport.abort()  # taken, then closed, until the model is loaded
            raise web.HTTPServiceUnavailable()
        held.add(transport)
        try:
            async with turn:
                if transport.is_closing():
                    raise web.HTTPServiceUnavailable()
                await asyncio.sleep(0.05)
                if transport.is_closing():  # cut by the restart
                    raise web.HTTPServiceUnavailable()
                answered += 1
                if answered == 8:  # once this answer is read: the queue is cut
                    asyncio.get_running_loop().call_later(0.03, restart)
                return web.json_response(completion(body, "hi"))
        finally:
            held.discard(transport)

    s = await run_against_a_box(tmp_path, box, inp)
    assert down_until is not None
    assert s.exit_code == 0 and (s.ok, s.failed) == (n, 0), s.error_examples
    # The first cut read of the restart's is a try of its row, as in the test below (none
    # before it was recorded to be cut with it); the queue's three were too.
    assert s.cut_unanswered >= 4 and s.sent - n - s.cut_unanswered <= 1, s
    assert (results(tmp_path)["attempts"] > 1).sum() <= 1


@pytest.mark.anyio
async def test_a_box_restarting_behind_a_port_that_takes_and_drops_connections_fails_no_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A vLLM box restarting in a container: the requests in flight are cut, and until the
    model is loaded its published port takes each connection and closes it (no HTTP answer).
    Each such cut used up a try of the row on the ordinary backoff (half a second, doubling),
    so its max_attempts ran out long before the box was back, and rows failed with
    connection_reset that a rerun then had to retry. Cut with nothing answered since it was
    sent, a request is waited out as a refused one is: no row fails, and the summary counts
    the requests the endpoint did not answer."""
    n = 60
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    answered = 0
    down_until: float | None = None  # from the 20th answer on: the restart
    down_s = 1.5
    in_flight: set[asyncio.BaseTransport] = set()

    async def box(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal answered, down_until
        transport = request.transport
        assert transport is not None
        body = await request.json()
        if down_until is not None and time.monotonic() < down_until:
            transport.abort()  # taken, then closed: no answer
            raise web.HTTPServiceUnavailable()  # not sent: the connection is gone
        in_flight.add(transport)
        try:
            await asyncio.sleep(0.01)
        finally:
            in_flight.discard(transport)
        if transport.is_closing():  # cut as the restart began
            raise web.HTTPServiceUnavailable()
        answered += 1
        if answered == 20:  # the restart begins: the requests in flight are cut, and none
            down_until = time.monotonic() + down_s  # is answered until it is over
            for other in list(in_flight):
                other.abort()
        return web.json_response(completion(body, "hi"))

    s = await run_against_a_box(tmp_path, box, inp)
    assert down_until is not None
    assert s.exit_code == 0 and (s.ok, s.failed) == (n, 0), s.error_examples
    # Beyond those, only the cuts of the requests in flight as the restart began (sent before
    # the 20th answer came, 3 of the 4 workers') were tries of their rows. The first cut after
    # them, of a row sent into the restart, was a try too while those were not recorded as
    # cuts (4 in 10 runs of 10). (The box once answered the requests in flight after the
    # restart began, so a cut after each such answer was a try too, 5 on a loaded machine,
    # and 21 to 23 rows were ok where the stop below counts 20, 2 runs of 6 at load 19.)
    assert s.cut_unanswered > 0 and 0 <= s.sent - n - s.cut_unanswered <= 3, s
    assert f"{s.cut_unanswered} cut unanswered while the endpoint answered nothing, and sent " \
        "again" in format_summary(s)
    # A box that does not come back within outage_wait_s: the stop, and the log meanwhile,
    # say what its requests met, connections taken and closed, where they said there was no
    # connection to it.
    from batchrunner import progress

    monkeypatch.setattr(progress.LogProgress.__init__, "__defaults__", (0.0,))  # every second
    capsys.readouterr()
    down_until, down_s = None, math.inf  # from the 20th answer on, for good
    answered = 0
    runner, port = await serve_on_loopback(box)
    try:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp,
                                      concurrency=4, outage_wait_s=2.5,
                                      output=str(tmp_path / "gone")),
                              RunOptions(retry=RetryPolicy(base_s=0.05, max_attempts=3),
                                         progress="log", handle_signals=False))
    finally:
        await runner.cleanup()
    assert s.exit_code == 4 and s.stopped and s.failed == 0 and s.pending == n - 20, s
    assert s.stopped.startswith("no answer from the endpoint for "), s.stopped
    assert "(its connections taken, then closed unanswered; " in s.stopped, s.stopped
    lines = [line for line in capsys.readouterr().err.splitlines() if " rows  ok=" in line]
    assert any(line.endswith(", its connections taken, then closed unanswered; the job waits "
                             "2.5 s for it to come back, then stops)") for line in lines), lines
    assert not any("no connection" in line for line in lines), lines
    # Stopped on that outage, the run sent its last cut requests' rows no more: the next run
    # sends them (the summary said every one was "sent again").
    said = format_summary(s)
    assert 0 < s.cut_left <= min(s.pending, s.cut_unanswered), s
    assert f"{s.cut_unanswered} cut unanswered while the endpoint answered nothing" in said
    assert (f"{'its row is' if s.cut_left == 1 else 'their rows are'} sent on the next run"
            in said and ", and sent again)" not in said), said


@pytest.mark.anyio
async def test_a_sigterm_while_a_box_cuts_its_connections_says_what_it_did(
        tmp_path: Path) -> None:
    """The box restarting behind a port that takes connections and closes them unanswered,
    and the scheduler's SIGTERM while the job waits for it: the stop said "no connection to
    it", and so did status beside the run meanwhile, where the endpoint took every
    connection; and the summary said the cut requests were "sent again", where the last ones'
    rows were left to the next run. Each now says what the endpoint did, as the progress
    does."""
    n = 40
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    out = tmp_path / "out"
    answered = 0

    async def box(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal answered
        body = await request.json()
        if answered >= 10:  # down for good: taken, then closed, no answer
            assert request.transport is not None
            request.transport.abort()
            raise web.HTTPServiceUnavailable()  # not sent: the connection is gone
        answered += 1
        return web.json_response(completion(body, "hi"))

    runner, port = await serve_on_loopback(box)
    shown = ""
    summary: list[RunSummary] = []

    async def nightly() -> None:
        summary.append(await run_job(
            job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp, concurrency=4,
                    outage_wait_s=120),
            RunOptions(retry=RetryPolicy(base_s=0.05, max_attempts=3), progress="none",
                       drain_s=1.0)))

    try:
        with anyio.fail_after(RUN_LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(nightly)
                for _ in range(RUN_LIMIT_S * 20):  # until status shows the outage (~1 s)
                    await anyio.sleep(0.05)
                    if (out / "job.json").exists() and "has not answered" in (
                            shown := format_status(out)):
                        break
                else:
                    raise AssertionError(shown)
                os.kill(os.getpid(), signal.SIGTERM)
    finally:
        await runner.cleanup()
    line = next(x for x in shown.splitlines() if "has not answered" in x)
    assert re.fullmatch(r"  the endpoint has not answered for \d+ s \(its connections taken, "
                        r"then closed unanswered\): the \d+ rows? to do wait for it, up to 2 "
                        r"min, then the run stops", line), line
    s = summary[0]
    assert s.exit_code == 4 and s.stopped and (s.ok, s.failed) == (10, 0), s
    assert re.fullmatch(r"interrupted by SIGTERM while the endpoint was waited for: no answer "
                        r"from it for \d+\.\d s, its connections taken, then closed "
                        r"unanswered \(it answered in this run, so it was waited for, 2 min at "
                        r"most\); finished rows are saved — run the same command to resume",
                        s.stopped), s.stopped
    said = format_summary(s)
    assert 0 < s.cut_left <= min(s.pending, s.cut_unanswered), s
    assert ", and sent again)" not in said and "sent on the next run" in said, said
    shown = format_status(out)
    assert f"stopped {json.loads((out / 'job.json').read_text())['last_run']['finished_at']}: " \
        f"{s.stopped}" in shown, shown


@pytest.mark.anyio
@pytest.mark.parametrize("max_attempts", [3, 6])
async def test_a_row_that_crashes_the_box_each_time_it_is_sent_fails_alone(
        tmp_path: Path, max_attempts: int) -> None:
    """A request that brings the box down (a vLLM crash on one input): every request in flight
    is cut, the port drops connections while it restarts, then the rows are sent again, and the
    same row brings it down again. Cuts of many rows at once are waited out as an outage, and a
    row's own cuts are tries of it; the rows sent again into each restart beside the crashing
    row (their backoffs drawn alike) were cut with it each time and failed with it: 0 to 2 of
    39 in 20 runs. Rows cut in two of the box's falls are sent one at a time since: the
    crashing row falls alone, and the others are answered. Only it fails, and the summary says
    what was sent alone and why. Sent alone, it was tried until its tries ran out: 7 crashes of
    a vLLM box (each a model reloaded) at the default 6 tries. It fails at its second fall
    alone, and the tries the rows beside it spent in the falls are given back to them."""
    n = 40
    texts = [f"row {i}" for i in range(n)]
    texts[5] = "poison"
    rows = {f"Q: {text}": f"r{i:04d}" for i, text in enumerate(texts)}
    inp = make_csv(tmp_path / "in.csv", texts)
    crashes = 0
    down_until = 0.0
    in_flight: dict[asyncio.Transport, str] = {}
    cut_in: dict[str, set[int]] = {}  # the restarts (crash numbers) each row was cut in

    async def box(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal crashes, down_until
        transport = request.transport
        assert transport is not None
        body = await request.json()
        row = rows[body["messages"][-1]["content"]]
        if time.monotonic() < down_until:
            cut_in.setdefault(row, set()).add(crashes)
            transport.abort()  # restarting: taken, then closed
            raise web.HTTPServiceUnavailable()
        if row == "r0005":
            crashes += 1
            down_until = time.monotonic() + 0.2
            for other, other_row in list(in_flight.items()):
                cut_in.setdefault(other_row, set()).add(crashes)
                other.abort()  # the crash cuts every request in flight
            transport.abort()
            raise web.HTTPServiceUnavailable()
        in_flight[transport] = row
        try:
            await asyncio.sleep(0.02)
        finally:
            in_flight.pop(transport, None)
        return web.json_response(completion(body, "hi"))

    s = await run_against_a_box(tmp_path, box, inp, max_attempts)
    assert (s.ok, s.failed) == (n - 1, 1), (s.error_examples, cut_in)
    failed = pd.read_parquet(tmp_path / "out" / "results.parquet").query("status != 'ok'")
    assert list(failed["id"]) == ["r0005"] and list(failed["error_type"]) == [
        "connection_reset"], failed
    said = re.fullmatch(r"the server closed the connection mid-request — cut in (\d+) of the "
                        r"server's falls, the last ([12]) of them sent alone: this row may be "
                        r"what brings the server down", failed["error_message"].iloc[0])
    # Every fall it was cut in, those it was alone in too (it said 2, the falls shared with
    # other rows, after 7 crashes of a vLLM box)
    assert said is not None and 3 <= int(said[1]) <= crashes, (failed, crashes)
    # Bounded: two falls beside other rows (more where it was not among the rows cut first),
    # then two alone, whatever its tries. A fall holds more than one crash where nothing was
    # answered between them: on a loaded machine the box's restart met the row again before
    # any other, its sends into one fall not tries (7 or 8 crashes in 2 of 180 runs, in 4
    # falls, as in every run).
    assert int(said[1]) <= 5 and crashes <= 10, (failed, crashes)
    assert s.sent_alone >= 1, s
    said = format_summary(s)
    assert (f"{s.sent_alone:,} sent alone: rows cut each time the server went down, sent one "
            "at a time to tell a row that brings it down from those beside it") in said, said


@pytest.mark.anyio
async def test_a_row_cut_again_and_again_alone_is_not_sent_alone(tmp_path: Path) -> None:
    """A connection reset of one request at a time, answers between (a flaky link, or a row
    the server drops by itself): no fall of the server, so nothing is held back to be sent one
    at a time; the row is answered on its third try, beside the others."""
    n = 12
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    tries = 0

    async def box(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal tries
        body = await request.json()
        if body["messages"][-1]["content"] == "Q: row 3" and (tries := tries + 1) <= 2:
            assert request.transport is not None
            request.transport.abort()
            raise web.HTTPServiceUnavailable()  # not sent: the connection is gone
        await asyncio.sleep(0.02)
        return web.json_response(completion(body, "hi"))

    s = await run_against_a_box(tmp_path, box, inp)
    assert (s.ok, s.failed, tries) == (n, 0, 3), (s.error_examples, tries)
    assert s.sent_alone == 0 and "sent alone" not in format_summary(s), s


@pytest.mark.anyio
async def test_a_partial_outage_with_slow_answers_does_not_stop_the_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One server of two refusing (every other connect fails, for the first 100 requests)
    while the other answers, each answer slower than outage_s: answers keep coming, so the job
    is not taken for cut off from its endpoint, and the refused requests are tried again."""
    n = 80
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    calls = itertools.count()
    send = ChatClient.complete

    async def complete(self: ChatClient, body: dict[str, Any],
                       timeout_s: float | None = None) -> Any:
        if (call := next(calls)) % 2 and call < 100:
            raise TransportError("connection_error", "cannot connect to x:1 (refused)",
                                 retryable=True)
        return await send(self, body, timeout_s)

    async def slow(srv: FaultServer, request: web.BaseRequest,
                   body: dict[str, Any]) -> web.StreamResponse | None:
        await asyncio.sleep(0.4)
        return None

    monkeypatch.setattr(ChatClient, "complete", complete)
    async with FaultServer(slow) as srv:
        with anyio.fail_after(RUN_LIMIT_S):
            s = await run_job(job_for(tmp_path, srv.base_url, inp),
                              RunOptions(retry=RetryPolicy(base_s=0.05, max_attempts=6),
                                         progress="none", handle_signals=False, outage_s=0.3))
    assert not s.stopped and s.ok + s.failed == n and s.exit_code in (0, 3), s.stopped
    assert s.ok >= n - 3 and s.not_connected == 50  # a row refused on every try may fail


@pytest.mark.anyio
@pytest.mark.parametrize("always", [False, True], ids=["once", "every-time"])
async def test_a_refused_connection_is_not_a_try_of_the_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, always: bool) -> None:
    """Two 500s, then a refused connection on the row's last attempt, while the endpoint
    answers every other row: the request reached no server, so the row is tried again (ok).
    A row refused on every try while others are answered (one server of several down) fails
    after max_attempts refusals, the endpoint not taken for down."""
    n = 400
    texts = [f"row {i}" for i in range(n)]
    texts[5] = "row 5 flaky [[sim:500*2]]"
    inp = make_csv(tmp_path / "in.csv", texts)
    tries: Counter[str] = Counter()
    send = ChatClient.complete

    async def complete(self: ChatClient, body: dict[str, Any],
                       timeout_s: float | None = None) -> Any:
        if "flaky" in json.dumps(body):
            tries["flaky"] += 1
            if tries["flaky"] == 3 or (always and tries["flaky"] > 3):
                raise TransportError("connection_error", "cannot connect to x:1 (refused)",
                                     retryable=True)
        return await send(self, body, timeout_s)

    monkeypatch.setattr(ChatClient, "complete", complete)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp))
    assert not s.stopped
    if always:
        assert s.exit_code == 3 and (s.ok, s.failed) == (n - 1, 1)
        assert results(tmp_path).loc["r0005", "error_type"] == "connection_error"
        # Two 500s, a first refusal, then max_attempts (3) refusals with others answered.
        assert tries["flaky"] == 2 + 1 + 3
    else:
        assert s.exit_code == 0 and (s.ok, s.failed) == (n, 0) and tries["flaky"] == 4


@pytest.mark.anyio
async def test_rows_sent_again_that_fail_for_themselves_do_not_fail_fast(tmp_path: Path) -> None:
    # A third of the rows are bad (400 every time); --retry-failed sends those 30 again first.
    n = 90
    texts = [f"row {i} [[sim:400]]" if i % 3 == 0 else f"row {i}" for i in range(n)]
    inp = make_csv(tmp_path / "in.csv", texts)
    async with Simulator(SimulatorConfig()) as sim:
        first = await run(job_for(tmp_path, sim.base_url, inp, concurrency=1))
        assert first.exit_code == 3 and first.failed == 30
        with anyio.fail_after(RUN_LIMIT_S):
            again = await run_job(job_for(tmp_path, sim.base_url, inp, concurrency=1),
                                  RunOptions(retry=RetryPolicy(base_s=0.01, max_attempts=3),
                                             progress="none", handle_signals=False,
                                             retry_failed=True))
    assert again.exit_code == 3 and not again.stopped and again.failed == 30


@pytest.mark.anyio
async def test_server_that_accepts_and_never_answers(tmp_path: Path) -> None:
    """Not a byte back on any connection: a row's second timeout, nothing answered in the
    run, stops the job with its rows left to do (as a wedged server's does, below)."""
    inp = make_csv(tmp_path / "in.csv", ["row a", "row b"])
    async with SilentServer() as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, timeout_s=1))
        assert srv.accepted >= 2
    assert s.exit_code == 4 and (s.failed, s.pending) == (0, 2)
    assert s.stopped.startswith("no answer to any request since the run began: 2 attempts at ")
    assert seen_by_type(report(tmp_path)) == {"timeout": 4}


@pytest.mark.anyio
async def test_hung_request_times_out_and_the_rest_finish(tmp_path: Path) -> None:
    texts = ["hangs [[sim:hang]]", "hangs once [[sim:hang*1]]"] + [f"row {i}" for i in range(8)]
    inp = make_csv(tmp_path / "in.csv", texts)
    async with Simulator(SimulatorConfig(hang_s=30)) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, timeout_s=1))
        assert sim.stats()["hangs"] == 3 + 1
    assert s.exit_code == 3
    assert format_summary(s).endswith("rerun with --retry-failed to send the failed rows again "
                                      "(rows that timed out may need a longer --timeout)")
    df = results(tmp_path)
    assert (df.loc["r0000", "status"], df.loc["r0000", "error_type"],
            df.loc["r0000", "attempts"]) == ("failed", "timeout", 3)
    assert (df.loc["r0001", "status"], df.loc["r0001", "attempts"]) == ("ok", 2)
    assert (df.iloc[2:]["status"] == "ok").all()
    assert seen_by_type(report(tmp_path)) == {"timeout": 4}


@pytest.mark.anyio
async def test_an_endpoint_that_takes_connections_and_never_answers_stops_the_job(
        tmp_path: Path) -> None:
    """A server wedged after accepting: each row's attempts time out (half an hour a row at
    the defaults, and the job stopped only once 20 rows had failed so). Two timeouts of a row
    (the second given longer) with nothing answered in the run stop it, no row failed."""
    n = 40
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])

    async def wedged(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse | None:
        await srv.closing.wait()
        return None

    async with FaultServer(wedged) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, timeout_s=0.5), max_attempts=6)
    assert s.exit_code == 4 and (s.ok, s.failed, s.pending) == (0, 0, n), s
    assert s.stopped.startswith("no answer to any request since the run began: 2 attempts at "
                                "row "), s.stopped
    assert s.stopped.endswith("answers nothing in time; check it, or raise timeout_s "
                              "(--timeout) if its answers take longer, then rerun to resume")
    assert srv.requests <= 8 * 4, srv.requests  # the first rows' two tries, and the next rows


@pytest.mark.anyio
async def test_a_row_that_timed_out_gets_longer_on_its_next_attempt(tmp_path: Path) -> None:
    # Its answer takes 1.3 s, past timeout_s = 1: the retry is given 1.5 s, and finishes.
    inp = make_csv(tmp_path / "in.csv", ["a long answer [[sim:slow]]", "row b"])
    async with Simulator(SimulatorConfig(slow_ms=1300)) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, timeout_s=1))
        assert sim.stats()["requests"] == 3
    assert s.exit_code == 0
    df = results(tmp_path)
    assert (df.loc["r0000", "status"], df.loc["r0000", "attempts"]) == ("ok", 2)
    assert seen_by_type(report(tmp_path)) == {"timeout": 1}


async def cut_body(srv: FaultServer, request: web.BaseRequest,
                   body: dict[str, Any]) -> web.StreamResponse:
    """200 with a Content-Length, half the body, then the connection closes."""
    full = json.dumps(completion(body, "cut")).encode()
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(full)
    await response.prepare(request)
    await response.write(full[: len(full) // 2])
    assert request.transport is not None
    request.transport.close()
    return response


async def html_200(srv: FaultServer, request: web.BaseRequest,
                   body: dict[str, Any]) -> web.StreamResponse:
    """A proxy's sign-in page, served with 200."""
    return web.Response(status=200, content_type="text/html",
                        text="<!DOCTYPE html><html><head><title>Sign in</title></head>"
                             "<body>Please sign in to continue</body></html>")


async def no_choices(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse:
    return web.json_response({"id": "x", "object": "chat.completion", "choices": [],
                              "usage": {"prompt_tokens": 5, "completion_tokens": 0}})


async def gateway_html_503(srv: FaultServer, request: web.BaseRequest,
                           body: dict[str, Any]) -> web.StreamResponse:
    return web.Response(status=503, content_type="text/html",
                        text="<html><head><title>503 Service Temporarily Unavailable</title>"
                             "</head><body><center><h1>503</h1></center><hr>nginx</body></html>")


@pytest.mark.anyio
@pytest.mark.parametrize(("fault", "etype"), [
    (cut_body, "truncated_body"),
    (html_200, "invalid_body"),
    (no_choices, "no_choices"),
    (gateway_html_503, "http_503"),
], ids=["truncated-body", "html-200", "empty-choices", "nginx-503"])
async def test_bad_200s_and_gateway_pages(tmp_path: Path, fault: Fault, etype: str) -> None:
    """Each fault once for rows 0-2 (a retry succeeds), always for row 3 (failed, 3 attempts)."""
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(4)])

    async def faulty(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse | None:
        if "row 3" in json.dumps(body) or srv.by_prompt[prompt_key(
                str(body["messages"][-1]["content"]))] == 1:
            return await fault(srv, request, body)
        return None

    async with FaultServer(faulty) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp))
        # A gateway's 503 before any answer is waited out as an outage, not a try of its row:
        # row 3 gets a try more for each of its 503s that came before any other row's
        # answer, which the machine's speed decides (a busy one: 10 requests).
        extra = srv.requests - (3 * 2 + 3)
        assert extra in ((0, 1, 2) if fault is gateway_html_503 else (0,)), srv.requests
    assert s.exit_code == 3
    df = results(tmp_path)
    assert (df.iloc[:3]["status"] == "ok").all() and (df.iloc[:3]["attempts"] == 2).all()
    last = df.loc["r0003"]
    assert (last["status"], last["error_type"], last["attempts"]) == ("failed", etype, 3 + extra)
    if fault is gateway_html_503:
        assert "HTML error page" in last["error_message"] and "503" in last["error_message"]
    rep = report(tmp_path)
    assert failed_by_type(rep) == {etype: 1}
    assert seen_by_type(rep) == {etype: 3 + 3 + extra}


@pytest.mark.anyio
async def test_a_failed_rows_latency_is_its_last_attempts(tmp_path: Path) -> None:
    """latency_ms is the last attempt's, for a failed row as for an ok one: the first attempt
    here takes a second, the last fails at once."""
    inp = make_csv(tmp_path / "in.csv", ["fails"])

    async def slow_then_fast_500(srv: FaultServer, request: web.BaseRequest,
                                 body: dict[str, Any]) -> web.StreamResponse:
        if srv.requests == 1:
            await asyncio.sleep(1.0)
        return web.json_response(error_body("upstream failed", "server_error", None),
                                 status=500)

    async with FaultServer(slow_then_fast_500) as srv:
        await run(job_for(tmp_path, srv.base_url, inp), max_attempts=2)
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["attempts"]) == ("failed", 2)
    assert row["latency_ms"] < 1000.0  # not the row's whole time, the first attempt included


@pytest.mark.anyio
async def test_choice_without_message_is_not_ok(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", ["empty choice"])

    async def empty_choice(srv: FaultServer, request: web.BaseRequest,
                           body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"id": "x", "object": "chat.completion",
                                  "choices": [{"index": 0}]})

    async with FaultServer(empty_choice, times=1) as srv:
        await run(job_for(tmp_path, srv.base_url, inp))
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["attempts"]) == ("ok", 2), row.to_dict()
    assert seen_by_type(report(tmp_path)) == {"no_choices": 1}


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


async def stream_head(request: web.BaseRequest) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(sse(chunk("Echo: ")) + sse(chunk("half a")))
    return response


async def stream_error_event(srv: FaultServer, request: web.BaseRequest,
                             body: dict[str, Any]) -> web.StreamResponse:
    """Two chunks, then an error event (as OpenAI sends when a stream fails server-side)."""
    response = await stream_head(request)
    await response.write(sse(error_body("The server had an error while processing your "
                                        "request.", "server_error", None)))
    await response.write_eof()
    return response


async def stream_dropped(srv: FaultServer, request: web.BaseRequest,
                         body: dict[str, Any]) -> web.StreamResponse:
    """Two chunks, then the connection drops."""
    response = await stream_head(request)
    assert request.transport is not None
    request.transport.close()
    return response


async def stream_stalls(srv: FaultServer, request: web.BaseRequest,
                        body: dict[str, Any]) -> web.StreamResponse:
    """Two chunks, then nothing more until the server closes."""
    response = await stream_head(request)
    return await srv.held(response)


async def stream_ends_unfinished(srv: FaultServer, request: web.BaseRequest,
                                 body: dict[str, Any]) -> web.StreamResponse:
    """Two chunks, then the stream ends cleanly: no finish chunk, no ``data: [DONE]``."""
    response = await stream_head(request)
    await response.write_eof()
    return response


async def healthy_stream(srv: FaultServer, request: web.BaseRequest,
                         body: dict[str, Any]) -> web.StreamResponse:
    response = await stream_head(request)
    await response.write(sse(chunk(" reply", "stop")) + sse(
        {"id": "chatcmpl-s", "object": "chat.completion.chunk", "choices": [],
         "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})
        + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.mark.anyio
@pytest.mark.parametrize(("fault", "etype"), [
    (stream_error_event, "stream_error"),
    (stream_dropped, "truncated_body"),
    (stream_stalls, "timeout"),
    (stream_ends_unfinished, "stream_cut"),
], ids=["error-event", "dropped", "stalls", "unfinished"])
async def test_streams_that_break(tmp_path: Path, fault: Fault, etype: str) -> None:
    """Row 0 breaks once (the retry's stream is whole), row 1 every time."""
    inp = make_csv(tmp_path / "in.csv", ["breaks once", "breaks always"])

    async def faulty(srv: FaultServer, request: web.BaseRequest,
                     body: dict[str, Any]) -> web.StreamResponse | None:
        assert body.get("stream") is True
        text = str(body["messages"][-1]["content"])
        if "always" in text or srv.by_prompt[prompt_key(text)] == 1:
            return await fault(srv, request, body)
        return await healthy_stream(srv, request, body)

    async with FaultServer(faulty) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, stream=True, timeout_s=1))
        assert srv.requests == 2 + 3
    assert s.exit_code == 3
    df = results(tmp_path)
    once, always = df.loc["r0000"], df.loc["r0001"]
    assert (once["status"], once["attempts"], once["content"]) == ("ok", 2, "Echo: half a reply")
    assert once["total_tokens"] == 13
    assert (always["status"], always["error_type"], always["attempts"]) == ("failed", etype, 3)
    rep = report(tmp_path)
    assert failed_by_type(rep) == {etype: 1}
    assert seen_by_type(rep) == {etype: 1 + 3}


async def stream_finished_no_done(request: web.BaseRequest) -> web.StreamResponse:
    """A whole reply with its finish chunk and usage, but no ``data: [DONE]``."""
    response = await stream_head(request)
    await response.write(sse(chunk(" reply", "stop")) + sse(
        {"id": "chatcmpl-s", "object": "chat.completion.chunk", "choices": [],
         "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}))
    await response.write_eof()
    return response


async def stream_long_event(request: web.BaseRequest) -> web.StreamResponse:
    """One event of 600 KB (an image model's base64 answer), whole."""
    response = await stream_head(request)
    await response.write(sse(chunk(" " + "A" * 600_000, "stop")) + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def stream_named_error(request: web.BaseRequest) -> web.StreamResponse:
    """``event: error`` with a bare error object, as some gateways send a refusal."""
    response = await stream_head(request)
    await response.write(b"event: error\ndata: " + json.dumps(
        {"message": "context too long for this model", "code": 400}).encode() + b"\n\n")
    await response.write_eof()
    return response


async def stream_named_error_text(request: web.BaseRequest) -> web.StreamResponse:
    response = await stream_head(request)
    await response.write(b"event: error\ndata: upstream timed out\n\n")
    await response.write_eof()
    return response


async def error_body_as_stream(request: web.BaseRequest) -> web.StreamResponse:
    """A JSON error body, pretty-printed, sent with a stream's content type."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(json.dumps({"error": {
        "message": "The model `gpt-9` does not exist", "type": "invalid_request_error",
        "code": "model_not_found"}}, indent=2).encode())
    await response.write_eof()
    return response


@pytest.mark.anyio
@pytest.mark.parametrize(("answer", "status", "error_type", "attempts", "said"), [
    (stream_finished_no_done, "ok", None, 1, None),
    (stream_long_event, "ok", None, 1, None),
    (stream_named_error, "failed", "stream_error", 1, "context too long for this model"),
    (stream_named_error_text, "failed", "stream_error", 3, "upstream timed out"),
    (error_body_as_stream, "failed", "error_body", 1, "The model `gpt-9` does not exist"),
], ids=["finished-no-done", "long-event", "error-event-bare", "error-event-text",
        "error-body-as-stream"])
async def test_streams_in_less_common_shapes(tmp_path: Path, answer: Any, status: str,
                                            error_type: str | None, attempts: int,
                                            said: str | None) -> None:
    """A whole stream without its [DONE] is taken, not paid for twice; an event of any size is
    read; an error event in any shape, or an error body sent as a stream, is read as the error
    it names (a 400 or a missing model is not retried)."""
    inp = make_csv(tmp_path / "in.csv", ["one row"])

    async def fault(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse:
        return await answer(request)

    async with FaultServer(fault) as srv:
        await run(job_for(tmp_path, srv.base_url, inp, stream=True))
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["attempts"]) == (status, attempts)
    assert (None if pd.isna(row["error_type"]) else row["error_type"]) == error_type
    if status == "ok":
        assert row["content"].startswith("Echo: half a ") and row["finish_reason"] == "stop"
    else:
        assert said in row["error_message"]
    if answer is stream_finished_no_done:
        assert row["total_tokens"] == 13


@pytest.mark.anyio
@pytest.mark.parametrize(("usage", "status", "attempts"), [(True, "ok", 1),
                                                          (False, "failed", 3)],
                         ids=["usage-ends-it", "no-usage"])
async def test_a_stream_that_ignores_n_and_leaves_out_done(tmp_path: Path, usage: bool,
                                                          status: str, attempts: int) -> None:
    """A server that ignores ``n`` sends one choice; without its [DONE], the usage chunk (the
    last one sent) tells the answer is whole: taken, not paid for again. Without usage either,
    one finished choice of the three asked for may be a cut stream: tried again."""
    inp = make_csv(tmp_path / "in.csv", ["one row"])

    async def one_choice(srv: FaultServer, request: web.BaseRequest,
                         body: dict[str, Any]) -> web.StreamResponse:
        assert body["n"] == 3
        response = await stream_head(request)
        await response.write(sse(chunk(" reply", "stop")))
        if usage:
            await response.write(sse({"id": "chatcmpl-s", "choices": [], "usage": {
                "prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}))
        await response.write_eof()
        return response

    async with FaultServer(one_choice) as srv:
        job = job_for(tmp_path, srv.base_url, inp, stream=True)
        await run(replace(job, request=replace(job.request, extra={"n": 3})))
    row = results(tmp_path).loc["r0000"]
    assert (row["status"], row["attempts"]) == (status, attempts)
    if usage:
        assert row["content"] == "Echo: half a reply" and row["total_tokens"] == 13
        assert json.loads(row["choices"]) == [  # the one choice that came, as a list
            {"index": 0, "content": "Echo: half a reply", "finish_reason": "stop"}]
    else:
        assert row["error_type"] == "stream_cut"


# ----------------------------------------------------------------------------------------------
# Errors that stop the job: 401/403, insufficient_quota


def test_a_refused_key_says_where_it_was_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A 401 names the variable and the .env file the key came from (not the key), so a
    stale .env line is found at once."""
    from batchrunner.cli import main

    monkeypatch.delenv("OPENAI_API_KEY")
    (tmp_path / ".env").write_text('OPENAI_API_KEY="sk-stale-0123456789"  # old key\n')
    inp = make_csv(tmp_path / "in.csv", ["one"])
    with SimulatorThread(SimulatorConfig(api_key=KEY)) as sim:
        code = main(["run", "--input", str(inp), "--prompt", TEMPLATE, "--model", "gpt-4o-mini",
                     "--base-url", sim.base_url, "--output", str(tmp_path / "out"),
                     "--progress", "none"])
    out = capsys.readouterr()
    assert code == 4
    assert f"check the key (OPENAI_API_KEY from {tmp_path / '.env'})" in out.out + out.err
    assert "sk-stale-0123456789" not in out.out + out.err


async def refuse_one_model(srv: FaultServer, request: web.BaseRequest,
                           body: dict[str, Any]) -> web.StreamResponse | None:
    """A key with no access to the model "claude-x": 403 for it, answers for the others."""
    if body.get("model") != "claude-x":
        return None
    return web.json_response(error_body("You do not have access to model claude-x",
                                        "permission_error", "model_not_allowed"), status=403)


def models_csv(path: Path, models: list[str]) -> Path:
    """An input whose row i asks for ``models[i]`` (id r0000…, a text of its own)."""
    pd.DataFrame({"id": [f"r{i:04d}" for i in range(len(models))],
                  "text": [f"row {i}" for i in range(len(models))], "model": models}
                 ).to_csv(path, index=False)
    return path


@pytest.mark.anyio
async def test_a_key_refused_for_one_of_the_rows_models_fails_those_rows_only(
        tmp_path: Path) -> None:
    """In a job whose rows ask for several models, a 403 for a model no reply has come from
    fails that model's rows (model_refused) once another model answers, and the others go on;
    the job is not stopped for it, even when the refused model's row comes first."""
    models = ["claude-x" if i % 3 == 0 else "gpt-4o-mini" for i in range(12)]
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(refuse_one_model) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=1))  # one at a time: row 0 is refused first
        sent = srv.requests
    assert s.exit_code == 3 and not s.stopped, s.stopped
    assert sent == 12  # each row sent once: the rows held meanwhile too
    df = results(tmp_path)
    assert (df["status"] == "ok").sum() == 8
    refused = df[df["status"] == "failed"]
    assert refused.index.tolist() == ["r0000", "r0003", "r0006", "r0009"]
    assert set(refused["error_type"]) == {"model_refused"}
    assert refused["error_message"].str.startswith(
        "the key is refused for claude-x, while other models answered it").all()
    assert (refused["attempts"] == 1).all() and (refused["model"] == "claude-x").all()


@pytest.mark.anyio
async def test_a_refusal_that_comes_back_before_any_answer_does_not_stop_the_job(
        tmp_path: Path) -> None:
    """A 403 comes back sooner than an answer: with many rows in flight, the refused model's
    first refusals arrive while no model has answered yet. Its rows are held, not failed nor
    sent again, until the other model's answers show the key works for it."""
    async def slow_answers(srv: FaultServer, request: web.BaseRequest,
                           body: dict[str, Any]) -> web.StreamResponse | None:
        if body.get("model") == "claude-x":
            return await refuse_one_model(srv, request, body)
        await asyncio.sleep(0.3)
        return None

    models = ["claude-x" if i % 2 else "gpt-4o-mini" for i in range(40)]
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(slow_answers) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=16))
        assert s.exit_code == 3 and not s.stopped, s.stopped
        assert srv.requests == 40  # every row once, held or not
        assert max(srv.by_prompt.values()) == 1
    df = results(tmp_path)
    assert df.loc[df["model"] == "gpt-4o-mini", "status"].eq("ok").all()
    refused = df[df["status"] == "failed"]
    assert len(refused) == 20 and set(refused["error_type"]) == {"model_refused"}
    assert failed_by_type(report(tmp_path)) == {"model_refused": 20}


@pytest.mark.anyio
async def test_a_key_refused_for_every_model_stops_the_job_having_sent_little(
        tmp_path: Path) -> None:
    """A 403 for each model the rows ask for, and no answer: the key is refused outright.
    The job stops naming the models; nothing is recorded, so a rerun sends every row."""
    async def refuse_all(srv: FaultServer, request: web.BaseRequest,
                         body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response(error_body(f"You do not have access to model {body['model']}",
                                            "permission_error", "model_not_allowed"), status=403)

    models = [("claude-x", "gemini-y", "grok-z")[i % 3] for i in range(300)]
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(refuse_all) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=4))
        sent = srv.requests
    assert s.exit_code == 4 and s.stopped
    assert "the key was refused for claude-x, gemini-y, grok-z, and no model answered it" \
        in s.stopped
    assert 3 <= sent <= 3 + 4  # a request or so for each model, not one for each row
    assert Journal(tmp_path / "out").read().num_rows == 0


@pytest.mark.anyio
async def test_too_many_rows_held_for_a_refused_model_stop_the_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of a refused model are held only so many at a time: an input whose first
    thousands of rows ask for it stops (as for a refused key), saying what to do."""
    import batchrunner.runner as runner_module

    monkeypatch.setattr(runner_module, "HOLD_MAX_ROWS", 5)
    models = ["claude-x"] * 10 + ["gpt-4o-mini"] * 5
    inp = models_csv(tmp_path / "in.csv", models)
    async with FaultServer(refuse_one_model) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=1))
        assert srv.requests == 1
    assert s.exit_code == 4 and s.stopped
    assert "its access to claude-x" in s.stopped
    assert ("(5 rows asking for claude-x were held, and no other model answered: if the key "
            "lacks it only, leave those rows out of the input, then rerun)") in s.stopped
    assert Journal(tmp_path / "out").read().num_rows == 0


@pytest.mark.anyio
async def test_a_403_about_the_balance_stops_a_job_of_several_models(tmp_path: Path) -> None:
    """A 403 that says the balance is used up is the account's, not one model's: the job
    stops even though another model has answered."""
    async def broke(srv: FaultServer, request: web.BaseRequest,
                    body: dict[str, Any]) -> web.StreamResponse | None:
        if body.get("model") != "claude-x":
            return None
        return web.json_response(error_body("Your account balance is insufficient",
                                            "permission_error", None), status=403)

    inp = models_csv(tmp_path / "in.csv", ["gpt-4o-mini", "claude-x", "gpt-4o-mini"])
    async with FaultServer(broke) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=1))
    assert s.exit_code == 4 and s.stopped and "balance" in s.stopped
    state = Journal(tmp_path / "out").read()
    assert state["key"].to_pylist() == ["r0000"]


@pytest.mark.anyio
@pytest.mark.parametrize(("concurrency", "models"), [
    (1, ["claude-x", "gpt-4o-mini", "gpt-4o-mini"]),
    (4, ["claude-x"] * 4 + ["gpt-4o-mini"] * 6),
])
async def test_rows_held_for_a_refused_model_while_the_endpoint_came_up_finish(
        tmp_path: Path, concurrency: int, models: list[str]) -> None:
    """The endpoint is down for a moment at the start, and the rows in flight then are the
    refused model's: held rows are not in flight, so a next row is started to find out whether
    the endpoint is back, and the job finishes (it used to wait for ever)."""
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        body = json.loads(await request.read())
        response = await refuse_one_model(None, request, body)  # type: ignore[arg-type]
        if response is not None:  # not `or`: aiohttp 3.10 makes a response falsy (len 0)
            return response
        return web.json_response(completion(body, body["messages"][-1]["content"]))

    inp = models_csv(tmp_path / "in.csv", models)
    port = closed_port()
    server = web.ServerRunner(web.Server(handle))
    await server.setup()

    async def come_up() -> None:
        await anyio.sleep(0.3)
        await web.TCPSite(server, "127.0.0.1", port).start()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(come_up)
            with anyio.fail_after(RUN_LIMIT_S):
                s = await run_job(job_for(tmp_path, f"http://127.0.0.1:{port}/v1", inp,
                                          model_column="model", concurrency=concurrency),
                                  RunOptions(retry=RetryPolicy(base_s=0.2, max_attempts=6),
                                             progress="none", handle_signals=False))
    finally:
        await server.cleanup()
    assert s.exit_code == 3 and not s.stopped, s.stopped
    df = results(tmp_path)
    assert set(df.loc[df["model"] == "claude-x", "error_type"]) == {"model_refused"}
    assert df.loc[df["model"] == "gpt-4o-mini", "status"].eq("ok").all()


@pytest.mark.anyio
async def test_a_held_row_refused_for_a_model_that_then_answers_is_sent_again(
        tmp_path: Path) -> None:
    """A 403 for one row of a model (a refusal of that request, not of the model), then an
    answer from the same model: the refused row is not failed as model_refused, it is sent
    again."""
    async def once_refused(srv: FaultServer, request: web.BaseRequest,
                           body: dict[str, Any]) -> web.StreamResponse | None:
        if body["messages"][-1]["content"].endswith("row 0"):
            return web.json_response(error_body("Request refused", "permission_error", None),
                                     status=403)
        await asyncio.sleep(0.2)  # answers come after the refusal
        return None

    inp = models_csv(tmp_path / "in.csv", ["claude-x"] * 4)
    async with FaultServer(once_refused, times=1) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, model_column="model",
                              concurrency=2))
        assert srv.requests == 5
    assert s.exit_code == 0 and s.ok == 4, s.stopped
    assert results(tmp_path).loc["r0000", "attempts"] == 2


@pytest.mark.anyio
async def test_a_rerun_knows_the_models_earlier_runs_were_answered_by(tmp_path: Path) -> None:
    """A rerun left with the rows of a model the key lacks only (the others done before):
    the earlier answers show the key works, so those rows fail as model_refused instead of
    stopping every rerun."""
    async def claude_down(srv: FaultServer, request: web.BaseRequest,
                          body: dict[str, Any]) -> web.StreamResponse | None:
        if body.get("model") != "claude-x":
            return None
        return web.json_response(error_body("overloaded", "server_error", None), status=500)

    inp = models_csv(tmp_path / "in.csv", ["gpt-4o-mini"] * 3 + ["claude-x"] * 3)
    async with FaultServer(claude_down) as srv:
        job = job_for(tmp_path, srv.base_url, inp, model_column="model", concurrency=1)
        first = await run(job, max_attempts=1)
    assert (first.ok, first.failed) == (3, 3)
    meta = json.loads((tmp_path / "out" / "job.json").read_text())
    assert meta["answered_models"] == ["gpt-4o-mini"]
    # Carried into the job.json a run writes as it starts, so a run killed keeps it.
    assert prepare(job, RunOptions(retry_failed=True)).job_meta["answered_models"] == [
        "gpt-4o-mini"]
    async with FaultServer(refuse_one_model) as srv:
        job = job_for(tmp_path, srv.base_url, inp, model_column="model", concurrency=1)
        with anyio.fail_after(RUN_LIMIT_S):
            again = await run_job(job, RunOptions(retry_failed=True, progress="none",
                                                  handle_signals=False))
        assert srv.requests == 3
    assert again.exit_code == 3 and not again.stopped, again.stopped
    assert failed_by_type(report(tmp_path)) == {"model_refused": 3}


@pytest.mark.anyio
async def test_body_fields_from_the_rows_columns_reach_the_server(tmp_path: Path) -> None:
    """from_columns: each request carries its row's user and max_tokens (CSV text read as
    the integer max_tokens takes); a row whose value cannot be one is not sent, and says
    why; a row with no value keeps the job's max_tokens."""
    seen: dict[str, dict[str, Any]] = {}

    async def capture(srv: FaultServer, request: web.BaseRequest,
                      body: dict[str, Any]) -> web.StreamResponse | None:
        seen[body["messages"][-1]["content"]] = body
        return None

    inp = tmp_path / "in.csv"
    inp.write_text("id,text,customer,budget\nr1,one,c-001,10\nr2,two,c-002,\nr3,three,,lots\n")
    async with FaultServer(capture) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp,
                              from_columns={"user": "customer", "max_tokens": "budget"}))
    assert (s.ok, s.failed) == (2, 1)
    one, two = (seen[TEMPLATE.format(text=t)] for t in ("one", "two"))
    assert (one["user"], one["max_tokens"]) == ("c-001", 10)
    assert (two["user"], two["max_tokens"]) == ("c-002", 64)  # the job's max_tokens
    df = results(tmp_path)
    assert df.loc["r3", "error_type"] == "invalid_row"
    assert df.loc["r3", "error_message"] == ("not sent: column 'budget' holds 'lots', not an "
                                             "integer for max_tokens")


def test_401_on_the_first_request_exits_4_having_sent_little(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(50)])
    with SimulatorThread(SimulatorConfig(api_key=KEY)) as sim:
        wrong = "sk-wrong-key-ABCDEFGHIJ"
        proc = subprocess.run(
            [sys.executable, "-m", "batchrunner", "run", "--input", str(inp), "--id-column",
             "id", "--prompt", TEMPLATE, "--model", "gpt-4o-mini", "--base-url", sim.base_url,
             "--output", str(tmp_path / "out"), "--concurrency", "4", "--progress", "none"],
            env={**os.environ, "OPENAI_API_KEY": wrong}, capture_output=True, text=True,
            timeout=60)
        sent = sim.stats()["requests"]
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "refused the API key" in proc.stdout + proc.stderr
    assert wrong not in proc.stdout + proc.stderr
    assert 1 <= sent <= 4 + 1
    assert Journal(tmp_path / "out").read().num_rows == 0  # nothing recorded as failed


@pytest.mark.anyio
async def test_403_mid_job_stops_it(tmp_path: Path) -> None:
    texts = [f"row {i}" for i in range(30)]
    texts[5] = "forbidden [[sim:403]]"
    inp = make_csv(tmp_path / "in.csv", texts)
    async with Simulator(SimulatorConfig()) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, concurrency=2))
    assert s.exit_code == 4 and s.stopped and "403" in s.stopped
    state = Journal(tmp_path / "out").read()
    assert set(state["status"].to_pylist()) == {"ok"} and "r0005" not in state["key"].to_pylist()


@pytest.mark.anyio
async def test_a_stop_lets_go_of_the_rows_waiting_for_the_rate_limit(tmp_path: Path) -> None:
    """A job paced to a low rate (a free tier's 2 requests a minute) whose first request is
    refused stops then, not once every worker queued for a request permit has had its turn
    (a minute and more each, nothing to send once it comes)."""
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(20)])
    async with Simulator(SimulatorConfig(api_key="sk-the-right-key-0123456789")) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, requests_per_minute=2,
                              concurrency=8))
        sent = sim.stats()["requests"]
    assert s.exit_code == 4 and s.stopped and "refused the API key" in s.stopped
    assert sent == 1  # the one the rate let out; those waiting for their turn were not sent
    assert s.ok == s.failed == 0


async def unauthorized_after_1000(srv: FaultServer, request: web.BaseRequest,
                                  body: dict[str, Any]) -> web.StreamResponse | None:
    if srv.requests <= 1000:
        return None
    return web.json_response(error_body("Incorrect API key provided.", "invalid_request_error",
                                        "invalid_api_key"), status=401)


@pytest.mark.anyio
async def test_401_after_1000_successes_keeps_them_and_a_rerun_finishes(tmp_path: Path) -> None:
    n = 1300
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(n)])
    async with FaultServer(unauthorized_after_1000) as srv:
        job = job_for(tmp_path, srv.base_url, inp, concurrency=16)
        s = await run(job)
        assert s.exit_code == 4 and s.stopped and "401" in s.stopped
        assert srv.requests <= 1000 + 16 + 1  # stopped at once
        state = Journal(tmp_path / "out").read()
        assert state.num_rows == 1000  # every answered request journaled...
        assert set(state["status"].to_pylist()) == {"ok"}  # ...and the refused ones not
        ok_then = set(state["key"].to_pylist())
        counts_then = dict(srv.by_prompt)
        srv.healthy = True
        again = await run(job)
        assert again.exit_code == 0 and again.ok == n
        assert srv.requests - sum(counts_then.values()) == n - 1000
    df = results(tmp_path)
    texts = dict(zip(df.index, df["text"], strict=True))
    for key in ok_then:
        pk = prompt_key(TEMPLATE.format(text=texts[key]))
        assert srv.by_prompt[pk] == counts_then[pk] == 1, f"row {key} was sent again"


@pytest.mark.anyio
async def test_insufficient_quota_stops_and_a_rerun_finishes(tmp_path: Path) -> None:
    texts = [f"row {i}" for i in range(40)]
    texts[10] = "out of credit [[sim:quota*1]]"
    inp = make_csv(tmp_path / "in.csv", texts)
    async with Simulator(SimulatorConfig()) as sim:
        job = job_for(tmp_path, sim.base_url, inp, concurrency=2)
        s = await run(job)
        assert s.exit_code == 4 and s.stopped and "quota" in s.stopped
        state = Journal(tmp_path / "out").read()
        assert set(state["status"].to_pylist()) == {"ok"}
        ok_then = set(state["key"].to_pylist())
        assert 0 < len(ok_then) < 40
        counts_then = dict(sim.stats(per_prompt=True)["requests_by_prompt"])
        again = await run(job)
        assert again.exit_code == 0 and again.ok == 40
        final = sim.stats(per_prompt=True)["requests_by_prompt"]
    for key in ok_then:
        pk = prompt_key(TEMPLATE.format(text=texts[int(key[1:])]))
        assert final[pk] == counts_then[pk], f"row {key} was sent again"


@pytest.mark.anyio
async def test_quota_exhausted_key_stops_at_once(tmp_path: Path) -> None:
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(40)])
    async with Simulator(SimulatorConfig(quota_exhausted_keys=(KEY,))) as sim:
        s = await run(job_for(tmp_path, sim.base_url, inp, concurrency=4))
        assert sim.stats()["requests"] <= 4 + 1
    assert s.exit_code == 4 and s.stopped and "insufficient_quota" in s.stopped
    assert Journal(tmp_path / "out").read().num_rows == 0


def in_flight_counter() -> tuple[Fault, dict[str, int]]:
    """A fault that answers normally after 50 ms, counting requests in flight and their peak."""
    seen = {"now": 0, "peak": 0}

    async def slow(srv: FaultServer, request: web.BaseRequest,
                   body: dict[str, Any]) -> web.StreamResponse | None:
        seen["now"] += 1
        seen["peak"] = max(seen["peak"], seen["now"])
        try:
            await asyncio.sleep(0.05)
        finally:
            seen["now"] -= 1
        return None

    return slow, seen


@pytest.mark.anyio
async def test_concurrency_set_by_the_job_is_exactly_the_number_in_flight(tmp_path: Path) -> None:
    slow, seen = in_flight_counter()
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(60)])
    async with FaultServer(slow) as srv:
        s = await run(job_for(tmp_path, srv.base_url, inp, concurrency=5))
    assert s.exit_code == 0 and s.ok == 60
    assert seen["peak"] == 5


@pytest.mark.anyio
async def test_automatic_concurrency_starts_small_and_grows(tmp_path: Path) -> None:
    """No concurrency and no rate known: 32 in flight at first, 64 once the tuner has run."""
    slow, seen = in_flight_counter()
    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(1500)])
    async with FaultServer(slow) as srv:
        peaks = []

        async def watch() -> None:
            for _ in range(200):  # bounded: 10 s at most
                peaks.append(seen["now"])
                await asyncio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            s = await run(job_for(tmp_path, srv.base_url, inp, concurrency=None))
            tg.cancel_scope.cancel()
    assert s.exit_code == 0 and s.ok == 1500
    assert max(peaks[:5]) <= 32  # the first 0.25 s, before the tuner's first look
    assert seen["peak"] == 64


@pytest.mark.anyio
async def test_cookies_a_gateway_sets_are_not_sent_back(tmp_path: Path) -> None:
    """Each request stands alone: a CDN's cookie is neither kept nor sent with the next one."""
    cookies_seen: list[str | None] = []

    async def sets_cookie(srv: FaultServer, request: web.BaseRequest,
                          body: dict[str, Any]) -> web.StreamResponse:
        cookies_seen.append(request.headers.get("Cookie"))
        text = str(body["messages"][-1]["content"])
        return web.json_response(completion(body, text),
                                 headers={"Set-Cookie": "__cf_bm=abc123; Path=/; HttpOnly"})

    inp = make_csv(tmp_path / "in.csv", [f"row {i}" for i in range(6)])
    async with FaultServer(sets_cookie) as srv:
        # By name: a cookie jar keeps no cookies from a bare IP address.
        base_url = srv.base_url.replace("127.0.0.1", "localhost")
        s = await run(job_for(tmp_path, base_url, inp, concurrency=1))
    assert s.exit_code == 0
    assert cookies_seen == [None] * 6


@pytest.mark.anyio
async def test_timeouts_are_per_request_and_cancellation_is_not_a_timeout() -> None:
    """The client's watchdog times out a request that outlives timeout_s, and never turns a
    cancellation from outside into a timeout."""
    from batchrunner.client import ChatClient
    from batchrunner.errors import TransportError

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with SilentServer() as silent, Simulator(SimulatorConfig(latency_ms=20)) as sim:
        async with ChatClient(silent.base_url, KEY, timeout_s=0.3, connections=8) as client:
            started = anyio.current_time()
            with pytest.raises(TransportError) as caught:
                await client.complete(body)
            assert caught.value.error_type == "timeout"
            assert 0.3 <= anyio.current_time() - started < 5.0
            with anyio.move_on_after(0.1) as scope:  # cancelled before the deadline
                await client.complete(body)
            assert scope.cancelled_caught
            assert not client._deadlines and not client._expired
        async with ChatClient(sim.base_url, KEY, timeout_s=0.3, connections=8) as client:
            for _ in range(3):  # each well within its own deadline
                assert (await client.complete(body)).finish_reason == "stop"
                await anyio.sleep(0.15)
            assert not client._deadlines and not client._expired


@pytest.mark.anyio
async def test_a_cancel_in_the_instant_of_a_timeout_stays_a_cancel() -> None:
    from batchrunner.client import ChatClient
    from batchrunner.errors import TransportError

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    seen: list[str] = []
    async with SilentServer() as silent:
        client = ChatClient(silent.base_url, KEY, timeout_s=0.2, connections=8)
        client._watch_every = 3600.0  # the test runs the watchdog itself
        async with client:
            async def request(scope: anyio.CancelScope) -> None:
                with scope:
                    try:
                        await client.complete(body)
                    except TransportError as e:
                        seen.append(e.error_type)
                seen.append("cancelled" if scope.cancelled_caught else "finished")

            scope = anyio.CancelScope()
            async with anyio.create_task_group() as tg:
                tg.start_soon(request, scope)
                with anyio.fail_after(5):
                    while not client._deadlines:  # noqa: ASYNC110 - polls the client
                        await anyio.sleep(0.01)
                await anyio.sleep(0.3)  # past the deadline
                scope.cancel()  # in the same step as the watchdog's cancellation
                client._watch()
    assert seen == ["cancelled"]
