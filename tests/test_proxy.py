"""Requests go through the proxy the environment names (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY,
NO_PROXY), as they do with curl and the OpenAI SDK.

``ForwardProxy`` is a small HTTP proxy on 127.0.0.1: it sends every absolute-form request on to
the simulator, whatever host it names, so a job whose base URL names a host that does not exist
finishes only if its requests went through the proxy. CONNECT (https:// endpoints) is answered
with a refusal, or piped to a TLS endpoint (``tunnel_to``); the proxy itself may speak TLS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

import aiohttp
import anyio
import pandas as pd
import pytest
import trustme
from aiohttp import web

from batchrunner.client import _reason
from batchrunner.config import load_job, proxy_for
from batchrunner.errors import ConfigError
from batchrunner.journal import Journal
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunOptions, RunSummary, format_summary, run_job
from batchrunner.simulator import Simulator, SimulatorConfig
from tests.servers import serve_on_loopback
from tests.test_faults import closed_port

KEY = "sk-test-proxy-0123456789"
PASSWORD = "s3cret-proxy-pass"
# A host that does not resolve (.test is reserved): only the proxy can reach "it".
NOWHERE = "api.batchrunner.test"
RUN_LIMIT_S = 60


pytestmark = pytest.mark.usefixtures("job_env")  # KEY as the key, tmp_path as cwd


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class ForwardProxy:
    """An HTTP forward proxy on 127.0.0.1. Absolute-form requests go on to ``upstream_port``;
    CONNECT is answered ``connect_status``; with ``auth``, a request without that
    Proxy-Authorization is answered 407 (with ``echo``, a page that quotes the header it had).
    ``seen`` holds (method, target, Proxy-Authorization)."""

    def __init__(self, upstream_port: int, *, auth: str | None = None,
                 connect_status: int = 403, tunnel_to: int | None = None,
                 tls: ssl.SSLContext | None = None, echo: bool = False) -> None:
        self.upstream_port = upstream_port
        self.echo = echo
        self.tls = tls
        self.auth = auth
        self.connect_status = connect_status
        self.tunnel_to = tunnel_to
        self.seen: list[tuple[str, str, str | None]] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ForwardProxy:
        self._session = aiohttp.ClientSession()
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0, ssl=self.tls)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._server is not None and self._session is not None
        self._server.close()
        await self._server.wait_closed()
        await self._session.close()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to close."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in head[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.seen.append((method, target, headers.get("proxy-authorization")))
        if self.auth is not None and headers.get("proxy-authorization") != self.auth:
            page = f"not {headers.get('proxy-authorization')}".encode() if self.echo else b""
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=\"test\"\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(page), page))
            await writer.drain()
            return False
        if method == "CONNECT" and self.tunnel_to is not None:
            await self._tunnel(reader, writer)
            return False
        if method == "CONNECT":
            writer.write(f"HTTP/1.1 {self.connect_status} Refused\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
            return False
        assert self._session is not None
        forwarded = {k: v for k, v in headers.items() if k in ("authorization", "content-type")}
        async with self._session.post(
                f"http://127.0.0.1:{self.upstream_port}{urlsplit(target).path}", data=body,
                headers=forwarded) as r:
            data = await r.read()
            status = r.status
        writer.write(f"HTTP/1.1 {status} Forwarded\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        return True


    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pipe the connection to ``tunnel_to``, both ways, until either side closes."""
        assert self.tunnel_to is not None
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.tunnel_to)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class TLSEndpoint:
    """A chat completions endpoint over TLS on 127.0.0.1, its certificate issued for ``host`` by
    a test CA (``ca_file``, a PEM file a client can trust through SSL_CERT_FILE)."""

    def __init__(self, host: str, directory: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = directory / "test-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._ssl = self.server_context(host)
        self.requests = 0
        self.port = 0
        self._runner: web.ServerRunner | None = None

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server's TLS context, its certificate for ``host`` issued by the test CA."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(host).configure_cert(context)
        return context

    async def __aenter__(self) -> TLSEndpoint:
        self._runner, self.port = await serve_on_loopback(self._handle, ssl_context=self._ssl)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests += 1
        body = json.loads(await request.read())
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        return web.json_response({
            "id": f"chatcmpl-{self.requests}", "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "fine"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        })


def make_input(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "in.csv"
    pd.DataFrame({"id": [f"r{i:03d}" for i in range(n)],
                  "text": [f"row {i}" for i in range(n)]}).to_csv(path, index=False)
    return path


async def run(tmp_path: Path, base_url: str, n: int = 20, max_attempts: int = 3) -> RunSummary:
    job = load_job(None, {
        "input": str(make_input(tmp_path, n)), "id_column": "id", "prompt": "Q: {text}",
        "model": "gpt-4o-mini", "max_tokens": 16, "base_url": base_url,
        "output": str(tmp_path / "out"), "concurrency": 4,
    })
    with anyio.fail_after(RUN_LIMIT_S):
        return await run_job(job, RunOptions(
            retry=RetryPolicy(base_s=0.01, max_attempts=max_attempts), progress="none",
            handle_signals=False))


def written(tmp_path: Path) -> str:
    """Every file of the output directory, as text (bytes decoded leniently)."""
    return "".join(p.read_bytes().decode("latin-1")
                   for p in (tmp_path / "out").rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------
# Choosing the proxy


@pytest.mark.parametrize(("url", "env", "expected"), [
    ("https://api.openai.com/v1", {}, None),
    ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
    ("https://api.openai.com/v1", {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2"},
     "http://low:1"),
    ("https://api.openai.com/v1", {"HTTP_PROXY": "http://p:3128"}, None),  # http:// only
    ("http://gw.internal/v1", {"HTTP_PROXY": "http://p:3128"}, "http://p:3128"),
    ("https://api.openai.com/v1", {"ALL_PROXY": "http://all:8080"}, "http://all:8080"),
    ("https://api.openai.com/v1", {"HTTPS_PROXY": "proxy.corp:3128"}, "http://proxy.corp:3128"),
    ("https://api.openai.com/v1", {"HTTPS_PROXY": " "}, None),
    # NO_PROXY: a domain and its subdomains, *, a port, an address, a network
    ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "openai.com"}, None),
    ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:1", "no_proxy": ".openai.com"}, None),
    ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None),
    ("https://notopenai.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "openai.com"},
     "http://p:1"),
    ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "a.b, api.openai.com"},
     None),
    ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.openai.com:443"},
     None),
    ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.openai.com:8443"},
     "http://p:1"),
    ("http://10.1.2.3:8000/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "10.1.2.3"}, None),
    ("http://10.1.2.3:8000/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, None),
    ("http://192.168.1.9/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"},
     "http://p:1"),
    # loopback endpoints (vLLM on this machine, the built-in simulator) never use a proxy
    ("http://127.0.0.1:8000/v1", {"HTTP_PROXY": "http://p:1"}, None),
    ("http://localhost:8000/v1", {"HTTP_PROXY": "http://p:1"}, None),
    ("http://[::1]:8000/v1", {"HTTP_PROXY": "http://p:1"}, None),
    ("http://[2001:db8::5]:8443/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "[2001:db8::5]:8443"},
     None),
    ("http://[2001:db8::5]:8443/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "2001:db8::5"},
     None),
    ("http://[2001:db8::5]:8443/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "[2001:db8::5]:1"},
     "http://p:1"),
    ("https://api.openai.com./v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "openai.com"}, None),
    # an address matches itself or a network, never as a suffix
    ("http://10.1.2.3/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "2.3"}, "http://p:1"),
    ("http://[2001:db8::5]/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "2001:db8:0::5"}, None),
    ("http://[2001:db8::5]:443/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "[2001:db8::5]443"},
     "http://p:1"),
    ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.openai.com."},
     None),
])
def test_proxy_is_chosen_as_curl_chooses_it(url: str, env: dict[str, str],
                                            expected: str | None) -> None:
    proxy = proxy_for(url, env)
    assert (proxy.url if proxy else None) == expected


def test_proxy_credentials_are_kept_for_the_proxy_and_never_shown() -> None:
    proxy = proxy_for("https://api.openai.com/v1",
                      {"HTTPS_PROXY": "http://me:pa%40ss@proxy.corp:3128"})
    assert proxy is not None
    assert proxy.url == "http://me:pa%40ss@proxy.corp:3128"
    assert proxy.shown == "http://proxy.corp:3128" and proxy.variable == "HTTPS_PROXY"
    # the password, and the header that carries it; a user name is no secret
    assert set(proxy.secrets) == {"pa%40ss", "pa@ss", basic("me", "pa@ss").removeprefix("Basic ")}
    assert "pa%40ss" not in repr(proxy) and "pa@ss" not in repr(proxy)


@pytest.mark.parametrize(("value", "says"), [
    ("socks5://me:hunter22@proxy.corp:1080", "ALL_PROXY is socks5://proxy.corp:1080"),
    ("http://", "ALL_PROXY is not a proxy URL"),
    ("http://proxy.corp:notaport", "ALL_PROXY is not a proxy URL"),
])
def test_a_proxy_that_cannot_be_used_is_refused(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        proxy_for("https://api.openai.com/v1", {"ALL_PROXY": value})
    assert says in str(e.value) and "hunter22" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# Through a real proxy


@pytest.mark.anyio
async def test_requests_go_through_the_proxy_with_its_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Simulator(SimulatorConfig(api_key=KEY)) as sim, \
            ForwardProxy(sim.port, auth=basic("me", PASSWORD)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://me:{PASSWORD}@127.0.0.1:{proxy.port}")
        s = await run(tmp_path, f"http://{NOWHERE}/v1", n=20)
    assert s.exit_code == 0 and s.ok == 20
    assert len(proxy.seen) == 20
    assert {(m, t) for m, t, _ in proxy.seen} == {
        ("POST", f"http://{NOWHERE}/v1/chat/completions")}
    assert {a for _, _, a in proxy.seen} == {basic("me", PASSWORD)}
    assert PASSWORD not in written(tmp_path)


@pytest.mark.anyio
async def test_requests_go_through_the_proxy_with_aiohttp_3_10(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp 3.10 (pyproject allows it) has no ClientSession(proxy=...): each request names
    the proxy instead."""
    session = aiohttp.ClientSession

    def session_of_3_10(*args: object, **kwargs: object) -> aiohttp.ClientSession:
        if "proxy" in kwargs:
            raise TypeError("ClientSession.__init__() got an unexpected keyword argument "
                            "'proxy'")
        return session(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(aiohttp, "ClientSession", session_of_3_10)
    async with Simulator(SimulatorConfig(api_key=KEY)) as sim, ForwardProxy(sim.port) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        s = await run(tmp_path, f"http://{NOWHERE}/v1", n=5)
    assert s.exit_code == 0 and s.ok == 5
    assert {(m, t) for m, t, _ in proxy.seen} == {
        ("POST", f"http://{NOWHERE}/v1/chat/completions")}
    assert len(proxy.seen) == 5


@pytest.mark.anyio
async def test_loopback_endpoints_never_go_through_the_proxy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    async with Simulator(SimulatorConfig(api_key=KEY)) as sim:
        s = await run(tmp_path, sim.base_url, n=5)
    assert s.exit_code == 0 and s.ok == 5


@pytest.mark.anyio
async def test_a_proxy_asking_for_credentials_stops_the_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Simulator(SimulatorConfig(api_key=KEY)) as sim, \
            ForwardProxy(sim.port, auth=basic("me", PASSWORD)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        s = await run(tmp_path, f"http://{NOWHERE}/v1", n=20)
    assert s.exit_code == 4 and s.stopped
    assert "407" in s.stopped and "put them in HTTP_PROXY" in s.stopped
    assert len(proxy.seen) <= 4 + 1  # stopped at the first answers, not retried row by row
    assert Journal(tmp_path / "out").read().num_rows == 0  # nothing recorded as failed


@pytest.mark.anyio
@pytest.mark.parametrize("password", ["hunter2", "p%40ss%2Fw%23rd-longer-than-16"])
async def test_a_proxy_quoting_its_authorization_header_does_not_get_it_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    """The header is the user name and password in base64: a 407 page that quotes it showed
    the password to anyone who decodes it."""
    async with Simulator(SimulatorConfig(api_key=KEY)) as sim, \
            ForwardProxy(sim.port, auth=basic("me", "another"), echo=True) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://me:{password}@127.0.0.1:{proxy.port}")
        s = await run(tmp_path, f"http://{NOWHERE}/v1", n=4)
    sent = basic("me", unquote(password))
    assert {a for _, _, a in proxy.seen} == {sent}
    assert s.exit_code == 4 and s.stopped and "407 not Basic [redacted]" in s.stopped
    shown = format_summary(s) + written(tmp_path)
    assert sent.removeprefix("Basic ") not in shown and unquote(password) not in shown


@pytest.mark.anyio
@pytest.mark.parametrize(("auth", "status", "says"), [
    (None, 403, "does not let requests through"),
    (basic("me", "right-password"), 407, "check the user name and password in HTTPS_PROXY"),
])
async def test_https_endpoints_ask_the_proxy_for_a_tunnel_and_a_refusal_stops_the_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str | None, status: int,
        says: str) -> None:
    async with ForwardProxy(closed_port(), auth=auth, connect_status=status) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://me:{PASSWORD}@127.0.0.1:{proxy.port}")
        s = await run(tmp_path, f"https://{NOWHERE}/v1", n=10)
    assert s.exit_code == 4 and s.stopped
    assert f"HTTP {status}" in s.stopped and says in s.stopped
    assert PASSWORD not in s.stopped
    assert proxy.seen[0][:2] == ("CONNECT", f"{NOWHERE}:443")


@pytest.mark.anyio
async def test_an_endpoint_the_proxy_cannot_reach_stops_the_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy answers CONNECT with 502: the endpoint behind it is down or misnamed.
    async with ForwardProxy(closed_port(), connect_status=502) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        s = await run(tmp_path, f"https://{NOWHERE}/v1", n=30, max_attempts=2)
    assert s.exit_code == 4 and s.stopped and s.pending == 30
    assert (f"cannot connect through the proxy (the proxy http://127.0.0.1:{proxy.port} "
            "(from HTTPS_PROXY) answered HTTP 502") in s.stopped


@pytest.mark.anyio
async def test_an_unreachable_proxy_stops_the_job_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://me:{PASSWORD}@127.0.0.1:{port}")
    s = await run(tmp_path, f"https://{NOWHERE}/v1", n=3, max_attempts=2)
    assert s.exit_code == 4 and s.stopped and s.pending == 3
    assert (f"cannot connect to the proxy http://127.0.0.1:{port} (from HTTPS_PROXY) "
            "(Connection refused)") in s.stopped
    assert PASSWORD not in s.stopped + format_summary(s) + written(tmp_path)


async def cli_run_through(tmp_path: Path, n: int, proxy_url: str, ca_file: Path,
                          **env: str) -> None:
    """``batchrunner run`` of ``n`` rows to https://NOWHERE through ``proxy_url``, trusting
    ``ca_file``; it must finish ok."""
    with anyio.fail_after(RUN_LIMIT_S):
        proc = await anyio.run_process(
            [sys.executable, "-m", "batchrunner", "run", "--input",
             str(make_input(tmp_path, n)), "--prompt", "Q: {text}", "--model", "gpt-4o-mini",
             "--base-url", f"https://{NOWHERE}/v1", "--output", str(tmp_path / "out"),
             "--progress", "none", "--concurrency", "4"],
            env={**os.environ, "HTTPS_PROXY": proxy_url, "SSL_CERT_FILE": str(ca_file), **env},
            check=False)
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.mark.anyio
async def test_https_endpoints_go_through_the_proxys_tunnel_and_trust_ssl_cert_file(
        tmp_path: Path) -> None:
    # The whole path a corporate network takes: CONNECT through the proxy, TLS inside the
    # tunnel to the endpoint's name, its certificate checked against the CA in SSL_CERT_FILE.
    async with TLSEndpoint(NOWHERE, tmp_path) as endpoint, \
            ForwardProxy(0, tunnel_to=endpoint.port) as proxy:
        await cli_run_through(tmp_path, 12, f"http://127.0.0.1:{proxy.port}", endpoint.ca_file)
    assert endpoint.requests == 12
    assert {(m, t) for m, t, _ in proxy.seen} == {("CONNECT", f"{NOWHERE}:443")}
    assert len(proxy.seen) <= 4  # one tunnel a connection, kept alive


@pytest.mark.anyio
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_an_https_proxy_carries_the_tunnel_inside_its_own_tls(tmp_path: Path,
                                                                    loop: str) -> None:
    # HTTPS_PROXY=https://...: TLS to the proxy, and the endpoint's TLS inside that (TLS in
    # TLS), both certificates checked against SSL_CERT_FILE.
    async with TLSEndpoint(NOWHERE, tmp_path) as endpoint, \
            ForwardProxy(0, tunnel_to=endpoint.port,
                         tls=endpoint.server_context("127.0.0.1")) as proxy:
        await cli_run_through(tmp_path, 8, f"https://127.0.0.1:{proxy.port}", endpoint.ca_file,
                              BATCHRUNNER_EVENT_LOOP=loop)
    assert endpoint.requests == 8
    assert {(m, t) for m, t, _ in proxy.seen} == {("CONNECT", f"{NOWHERE}:443")}


@pytest.mark.anyio
async def test_an_untrusted_certificate_stops_the_job_at_once_saying_what_to_do(
        tmp_path: Path) -> None:
    async with TLSEndpoint("127.0.0.1", tmp_path) as endpoint:
        s = await run(tmp_path, f"https://127.0.0.1:{endpoint.port}/v1", n=20)
    assert s.exit_code == 4 and s.stopped and s.pending == 20
    assert s.stopped == (
        f"cannot connect to 127.0.0.1:{endpoint.port}: its TLS certificate is not trusted "
        "(unable to get local issuer certificate) — if your network re-signs TLS (a company "
        "proxy, say), point SSL_CERT_FILE at its CA bundle, then rerun to resume")
    assert s.sent <= 4  # the requests in flight: no retries


@pytest.mark.anyio
async def test_https_to_a_plain_http_server_says_so(tmp_path: Path) -> None:
    async with Simulator(SimulatorConfig(api_key=KEY)) as sim:
        s = await run(tmp_path, f"https://127.0.0.1:{sim.port}/v1", n=5, max_attempts=2)
    assert s.exit_code == 4 and s.stopped
    assert (f"cannot connect to 127.0.0.1:{sim.port} (it does not answer in TLS: is the "
            "endpoint http://, not https://?)") in s.stopped


@pytest.mark.anyio
async def test_http_to_a_tls_server_says_to_check_the_scheme(tmp_path: Path) -> None:
    """A server that speaks TLS only (vLLM started with --ssl-keyfile, say) closes a plain-HTTP
    connection without a word: every row failed as connection_reset, and the stop said to wait
    for the endpoint to recover, as for a server error. It now says to check the scheme."""
    async with TLSEndpoint("127.0.0.1", tmp_path) as endpoint:
        s = await run(tmp_path, f"http://127.0.0.1:{endpoint.port}/v1", n=30, max_attempts=2)
    assert s.exit_code == 4 and s.stopped, s.stopped
    assert "failed with connection_reset" in s.stopped
    assert s.stopped.endswith(
        "— if the endpoint serves HTTPS, its base URL must start with https:// (a server that "
        "speaks TLS closes a plain-HTTP connection so); else wait for it to recover, then run "
        "the job again with --retry-failed"), s.stopped


@pytest.mark.anyio
async def test_a_proxy_whose_connections_hang_stops_the_job_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # its one place filled below: further connects hang
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)):
            monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
            job = load_job(None, {
                "input": str(make_input(tmp_path, 10)), "prompt": "Q: {text}",
                "model": "gpt-4o-mini", "base_url": f"https://{NOWHERE}/v1",
                "output": str(tmp_path / "out"), "concurrency": 4, "timeout_s": 1,
            })
            with anyio.fail_after(RUN_LIMIT_S):
                s = await run_job(job, RunOptions(
                    retry=RetryPolicy(base_s=0.01, max_attempts=2), progress="none",
                    handle_signals=False))
    assert s.exit_code == 4 and s.stopped
    assert (f"cannot connect to the proxy http://127.0.0.1:{port} (from HTTPS_PROXY) or "
            "through it (no answer within 0.5 s)") in s.stopped


def test_cli_refuses_a_socks_proxy_in_one_line_before_sending(tmp_path: Path) -> None:
    inp = make_input(tmp_path, 3)
    proc = subprocess.run(
        [sys.executable, "-m", "batchrunner", "run", "--input", str(inp), "--prompt", "Q: {text}",
         "--model", "gpt-4o-mini", "--base-url", f"https://{NOWHERE}/v1", "--output",
         str(tmp_path / "out"), "--progress", "none"],
        env={**os.environ, "ALL_PROXY": f"socks5h://me:{PASSWORD}@127.0.0.1:1080"},
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ALL_PROXY is socks5h://127.0.0.1:1080" in lines[0], proc.stderr
    assert "NO_PROXY" in lines[0] and PASSWORD not in proc.stderr + proc.stdout


@pytest.mark.parametrize(("error", "reason"), [
    (ConnectionRefusedError(111, "Connect call failed ('10.0.0.1', 443)"), "Connection refused"),
    (socket.gaierror(-2, "Name or service not known"), "Name or service not known"),
    (socket.gaierror(8, "nodename nor servname provided, or not known"),  # macOS numbers
     "nodename nor servname provided, or not known"),
    (OSError("no errno"), "no errno"),
])
def test_connection_failures_say_why_as_the_os_says_it(error: OSError, reason: str) -> None:
    assert _reason(error) == reason


def test_a_proxy_refusal_is_redacted_before_it_is_cut() -> None:
    """A CONNECT refusal's reason phrase was cut to 300 characters before it was redacted: a
    header quoted across the cut left the start of its base64 in the message."""
    from batchrunner.client import ChatClient

    proxy = proxy_for("https://api.openai.com/v1",
                      {"HTTPS_PROXY": f"http://me:{PASSWORD}@proxy.corp:3128"})
    client = ChatClient("https://api.openai.com/v1", KEY, timeout_s=1, connections=1,
                        proxy=proxy)
    header = basic("me", PASSWORD)
    refused = client._proxy_refused(407, "x" * 280 + f" not {header}")
    assert refused is not None
    assert header[6:14] not in str(refused) and "not Basic [redacted" in str(refused)
