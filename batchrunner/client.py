"""ChatClient: one chat completion request → ``ChatResult``, or a ``RequestError``.

The only module that touches aiohttp. Every failure of the library below is translated here,
in ``_translate``, into the project's errors with a short stable ``error_type``. Messages are
built from the status, the error body's ``message`` and the exception class, never from request
headers, so the API key cannot leak into them.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from batchrunner.config import DEFAULT_PORTS, Proxy
from batchrunner.errors import (
    AuthError,
    BadResponseError,
    HTTPStatusError,
    QuotaError,
    RequestError,
    StopJob,
    TransportError,
    Unreachable,
    Usage,
)
from batchrunner.retry import is_retryable_status

__all__ = ["ChatClient", "ChatResult", "StreamAssembler"]

_MAX_MESSAGE = 300
_SCAN = 16384  # bytes of an error body read for its message
_TITLE = re.compile(rb"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


@dataclass(slots=True)
class ChatResult:
    content: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    model: str | None
    request_id: str | None
    latency_ms: float
    headers: dict[str, str]
    reasoning_content: str | None = None
    ttft_ms: float | None = None
    choices: str | None = None


class StreamAssembler:
    """Builds one completion from the ``data:`` lines of a chat completion SSE stream.

    Content and ``reasoning_content`` deltas of choice 0 are joined; ``finish_reason`` is the
    last one a choice chunk carried; ``usage`` comes from whichever chunk has it (the final
    ``choices: []`` chunk with ``stream_options.include_usage``, or a last choice chunk, as some
    providers send). ``done`` is set by ``data: [DONE]``.
    """

    __slots__ = ("content", "done", "error", "finish_reason", "first_token_at", "id", "model",
                 "reasoning", "usage")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.id: str | None = None
        self.done = False
        self.error: dict[str, Any] | None = None
        self.first_token_at: float | None = None

    def feed(self, line: bytes) -> None:
        """One line of the stream; raises ValueError on an event that is not JSON."""
        line = line.strip()
        if not line.startswith(b"data:"):
            return  # blank separators, comments (": keep-alive"), event:/id: fields
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
        event = orjson.loads(data)
        if not isinstance(event, dict):
            raise ValueError("stream event is not a JSON object")
        if isinstance(event.get("error"), dict):
            self.error = event["error"]
            return
        if self.model is None and isinstance(event.get("model"), str):
            self.model = event["model"]
        if self.id is None and isinstance(event.get("id"), str):
            self.id = event["id"]
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                text = delta.get("content")
                if isinstance(text, str) and text:
                    self.content.append(text)
                    if self.first_token_at is None:
                        self.first_token_at = time.perf_counter()
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(thought, str) and thought:
                    self.reasoning.append(thought)
                    if self.first_token_at is None:
                        self.first_token_at = time.perf_counter()
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]


class ChatClient:
    """Posts chat completion bodies to ``base_url`` over one aiohttp session."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float,
        connections: int,
        secrets: tuple[str, ...] = (),
        proxy: Proxy | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._proxy = proxy
        proxy_secrets = proxy.secrets if proxy else ()
        self._secrets = tuple(s for s in (api_key, *secrets, *proxy_secrets) if s)
        # The total timeout is kept by a watchdog (``_watch``), not by aiohttp: aiohttp arms and
        # cancels a timer for every request, 6 µs of CPU each (a twentieth of a request's
        # total); the watchdog looks at the requests in flight a few times a second.
        self.timeout_s = timeout_s
        # A connection not made in half the total (30 s at most) is not coming: failing it as
        # a connection error lets an unreachable endpoint (a firewall dropping packets) stop
        # the job rather than time out row after row.
        self._connect_s = min(timeout_s / 2, 30.0)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_s)
        self._watch_every = min(1.0, max(0.05, timeout_s / 10))
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ChatClient:
        self._watchdog = asyncio.get_running_loop().call_later(self._watch_every, self._watch)
        connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300)
        # No cookie jar: requests carry no state between them, and a gateway's cookies (a CDN's
        # bot-management cookie, say) would otherwise be parsed and matched on every request.
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(), proxy=self._proxy.url if self._proxy else None,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _watch(self) -> None:
        """Cancel the requests past their deadline (``complete`` turns that into a timeout)."""
        now = time.monotonic()
        for task, deadline in self._deadlines.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._watchdog = asyncio.get_running_loop().call_later(self._watch_every, self._watch)

    def redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "[redacted]")
        return text

    async def complete(self, body: dict[str, Any]) -> ChatResult:
        assert self._session is not None, "use ChatClient as an async context manager"
        data = orjson.dumps(body)
        streaming = body.get("stream") is True
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        start = time.perf_counter()
        self._deadlines[task] = time.monotonic() + self.timeout_s
        stream: StreamAssembler | None = None
        try:
            async with self._session.post(self.url, data=data) as resp:
                status = resp.status
                headers = resp.headers
                if status == 200 and streaming:
                    stream = StreamAssembler()
                    try:
                        async for line in resp.content:
                            stream.feed(line)
                            if stream.done:
                                break
                    except ValueError:
                        raise BadResponseError(
                            "invalid_body", "a stream event that is not JSON", retryable=True,
                            status=200, request_id=headers.get("x-request-id"),
                        ) from None
                    raw = b""
                else:
                    raw = await resp.read()
        except RequestError:
            raise
        except asyncio.CancelledError:
            # The watchdog's cancellation, and nobody else's: a timeout, not a stop.
            if task in self._expired and task.uncancel() <= cancelling:
                raise TransportError("timeout", "no complete answer within timeout_s",
                                     retryable=True) from None
            raise
        except Exception as e:
            raise self._translate(e) from None
        finally:
            del self._deadlines[task]
            self._expired.discard(task)
        latency_ms = (time.perf_counter() - start) * 1000.0
        request_id = headers.get("x-request-id")
        if status != 200:
            raise self._status_error(status, raw, headers, request_id)
        hdrs = _ratelimit_headers(headers)
        if stream is not None:
            return self._from_stream(stream, request_id, start, latency_ms, hdrs)
        return self._parse(raw, request_id, latency_ms, hdrs)

    def _from_stream(self, st: StreamAssembler, request_id: str | None, start: float,
                     latency_ms: float, headers: dict[str, str]) -> ChatResult:
        billed = _billed_usage(st.usage)
        if st.error is not None:
            message = self.redact(" ".join(str(st.error.get("message") or "").split()))
            raise BadResponseError("stream_error", message[:_MAX_MESSAGE] or "error event",
                                   retryable=True, status=200, request_id=request_id,
                                   usage=billed)
        if not st.done:
            raise TransportError("stream_cut", "the stream ended before [DONE]", retryable=True,
                                 request_id=request_id, usage=billed)
        if st.finish_reason is None and not st.content:
            raise BadResponseError("no_choices", "a stream without choices", retryable=True,
                                   status=200, request_id=request_id, usage=billed)
        pt, ct, tt, cached, reasoning = _usage(st.usage)
        return ChatResult(
            content="".join(st.content), finish_reason=st.finish_reason, prompt_tokens=pt,
            completion_tokens=ct, total_tokens=tt, cached_tokens=cached,
            reasoning_tokens=reasoning, model=st.model, request_id=request_id or st.id,
            latency_ms=latency_ms, headers=headers,
            reasoning_content="".join(st.reasoning) or None,
            ttft_ms=(st.first_token_at - start) * 1000.0 if st.first_token_at else None,
        )

    def _translate(self, e: BaseException) -> RequestError | StopJob:
        if isinstance(e, aiohttp.ConnectionTimeoutError):  # before the TimeoutError it also is
            where = urlsplit(self.url)
            to = (f"the proxy {self._proxy_shown()} or through it" if self._proxy
                  else f"{where.hostname}:{where.port or DEFAULT_PORTS.get(where.scheme)}")
            return TransportError(
                "connection_error",
                self.redact(f"cannot connect to {to} (no answer within {self._connect_s:g} s)"),
                retryable=True)
        if isinstance(e, asyncio.TimeoutError | TimeoutError):
            return TransportError("timeout", "no complete answer within timeout_s", retryable=True)
        if isinstance(e, aiohttp.ServerDisconnectedError):
            return TransportError(
                "connection_reset", "the server closed the connection mid-request", retryable=True
            )
        if isinstance(e, aiohttp.ClientPayloadError):
            return TransportError(
                "truncated_body", "the response body was cut short", retryable=True
            )
        if isinstance(e, aiohttp.ClientHttpProxyError):  # the proxy refused a CONNECT tunnel
            if stop := self._proxy_refused(e.status, e.message):
                return stop
            said = f"the proxy {self._proxy_shown()} answered HTTP {e.status} {e.message}"
            if e.status in (502, 503, 504):  # it could not reach the endpoint: no answer from it
                return TransportError(
                    "connection_error", self.redact(f"cannot connect through the proxy ({said})"
                                                    )[:_MAX_MESSAGE], retryable=True)
            return TransportError("proxy_error", self.redact(said)[:_MAX_MESSAGE],
                                  retryable=True)
        if isinstance(e, aiohttp.ClientProxyConnectionError):
            return TransportError(
                "connection_error",
                self.redact(f"cannot connect to the proxy {self._proxy_shown()} "
                            f"({_reason(e.os_error)})"),
                retryable=True,
            )
        if isinstance(e, aiohttp.ClientConnectorCertificateError):
            # The same certificate meets every request: nothing to retry.
            why = e.certificate_error
            detail = getattr(why, "verify_message", None) or str(why)
            return Unreachable(self.redact(
                f"cannot connect to {e.host}:{e.port}: its TLS certificate is not trusted "
                f"({detail}) — if your network re-signs TLS (a company proxy, say), point "
                "SSL_CERT_FILE at its CA bundle, then rerun to resume"))
        if isinstance(e, aiohttp.ClientConnectorError):
            return TransportError(
                "connection_error",
                self.redact(f"cannot connect to {e.host}:{e.port} ({_reason(e.os_error)})"),
                retryable=True,
            )
        if isinstance(e, aiohttp.ClientOSError | ConnectionError):
            return TransportError(
                "connection_reset", self.redact(f"connection error: {type(e).__name__}"),
                retryable=True,
            )
        if isinstance(e, aiohttp.ClientError):
            return TransportError(
                "client_error", self.redact(f"{type(e).__name__}: {e}")[:_MAX_MESSAGE],
                retryable=True,
            )
        return TransportError(
            "client_error", self.redact(f"{type(e).__name__}: {e}")[:_MAX_MESSAGE], retryable=False
        )

    def _status_error(
        self, status: int, raw: bytes, headers: Any, request_id: str | None
    ) -> RequestError:
        code: str | None = None
        etype: str | None = None
        message: str
        try:
            payload = orjson.loads(raw)
            err = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(err, dict):
                message = str(err.get("message") or "")
                code = err.get("code") if isinstance(err.get("code"), str) else None
                etype = err.get("type") if isinstance(err.get("type"), str) else None
            elif isinstance(err, str):
                message = err
            else:
                message = raw[:_SCAN].decode("utf-8", "replace")
        except (ValueError, AttributeError):
            if b"<html" in raw[:2048].lower() or b"<!doctype" in raw[:2048].lower():
                m = _TITLE.search(raw[:4096])
                title = m.group(1).decode("utf-8", "replace").strip() if m else "no title"
                message = f"HTML error page from the gateway ({title})"
            else:
                message = raw[:_SCAN].decode("utf-8", "replace")
        # Redact before cutting, so a key that straddles the cut cannot survive in part.
        message = self.redact(" ".join(message.split()))[:_MAX_MESSAGE] or f"HTTP {status}"
        retry_after = _retry_after(headers)
        if status == 407 and (stop := self._proxy_refused(status, message)):
            raise stop
        if status in (401, 403):
            raise AuthError(
                f"the endpoint refused the API key (HTTP {status}: {message}) — "
                "check the key and its access to this model"
            )
        if status == 429 and (code == "insufficient_quota" or etype == "insufficient_quota"):
            raise QuotaError(
                f"the account is out of quota (HTTP 429 insufficient_quota: {message})"
            )
        if status == 429:
            return HTTPStatusError(
                "rate_limited", message, retryable=True, retry_after=retry_after, status=status,
                request_id=request_id, headers=_ratelimit_headers(headers),
            )
        return HTTPStatusError(
            f"http_{status}", message, retryable=is_retryable_status(status),
            retry_after=retry_after, status=status, request_id=request_id,
        )

    def _proxy_shown(self) -> str:
        p = self._proxy
        return f"{p.shown} (from {p.variable})" if p else "(none)"

    def _proxy_refused(self, status: int, message: str) -> AuthError | None:
        """The error that stops the job when the proxy refuses us (every request would meet the
        same answer), or None."""
        p = self._proxy
        if p is None or status not in (403, 407):
            return None
        if status == 403:
            fix = "the proxy does not let requests through to this endpoint; ask its admin, or " \
                  "add the endpoint's host to NO_PROXY if it can be reached directly"
        elif urlsplit(p.url).username:
            fix = f"check the user name and password in {p.variable}"
        else:
            fix = f"put them in {p.variable} as http://USER:PASSWORD@host:port"
        return AuthError(self.redact(
            f"the proxy {self._proxy_shown()} refused the request (HTTP {status} "
            f"{' '.join(message.split())[:_MAX_MESSAGE]}) — {fix}"))

    def _parse(
        self, raw: bytes, request_id: str | None, latency_ms: float, headers: dict[str, str]
    ) -> ChatResult:
        try:
            payload = orjson.loads(raw)
        except ValueError:
            raise BadResponseError(
                "invalid_body", "HTTP 200 with a body that is not JSON", retryable=True,
                status=200, request_id=request_id,
            ) from None
        if not isinstance(payload, dict):
            raise BadResponseError(
                "invalid_body", "HTTP 200 with a JSON body that is not an object", retryable=True,
                status=200, request_id=request_id,
            )
        choices = payload.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise BadResponseError(
                "no_choices", "HTTP 200 without choices", retryable=True, status=200,
                request_id=request_id, usage=_billed_usage(payload.get("usage")),
            )
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            if not choice.get("finish_reason"):
                raise BadResponseError(
                    "no_choices", "HTTP 200 with a choice that has no message", retryable=True,
                    status=200, request_id=request_id,
                    usage=_billed_usage(payload.get("usage")),
                )
            message = {}
        content = message.get("content")
        pt, ct, tt, cached, reasoning = _usage(payload.get("usage"))
        thought = message.get("reasoning_content")
        model = payload.get("model")
        return ChatResult(
            content=content if isinstance(content, str) else None,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=pt,
            completion_tokens=ct,
            total_tokens=tt,
            cached_tokens=cached,
            reasoning_tokens=reasoning,
            model=model if isinstance(model, str) else None,
            request_id=request_id or (rid if isinstance(rid := payload.get("id"), str) else None),
            latency_ms=latency_ms,
            headers=headers,
            reasoning_content=thought if isinstance(thought, str) and thought else None,
            choices=_all_choices(choices) if len(choices) > 1 else None,
        )


_RATELIMIT_HEADERS = tuple(f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset")
                           for kind in ("requests", "tokens"))


def _reason(e: OSError) -> str:
    """Why a connection failed, as the OS says it ("Connection refused"); asyncio's own text
    ("Connect call failed (...)") repeats the address. TLS errors say what TLS found."""
    if isinstance(e, socket.gaierror):  # the resolver's own numbers and words
        return e.strerror or str(e)
    if isinstance(e, ssl.SSLError):  # its errno is OpenSSL's, not the OS's
        if e.reason == "WRONG_VERSION_NUMBER":
            return "it does not answer in TLS: is the endpoint http://, not https://?"
        return f"TLS: {e.reason or e.strerror or e}"
    if e.errno and e.errno > 0:  # the OS's own error number
        return os.strerror(e.errno)
    return e.strerror or str(e) or type(e).__name__


def _ratelimit_headers(headers: Any) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers the limiter learns from (names in lower case)."""
    return {name: v for name in _RATELIMIT_HEADERS if (v := headers.get(name)) is not None}


def _all_choices(choices: list[Any]) -> str:
    """Every choice of an ``n > 1`` reply as JSON text: index, content, finish_reason."""
    out = []
    for c in choices:
        if isinstance(c, dict):
            m = c.get("message")
            out.append({"index": c.get("index"),
                        "content": m.get("content") if isinstance(m, dict) else None,
                        "finish_reason": c.get("finish_reason")})
    return orjson.dumps(out).decode()


def _usage(usage: Any) -> Usage:
    """(prompt, completion, total, cached, reasoning) tokens; all None without a usage object."""
    if type(usage) is not dict:
        return None, None, None, None, None
    get = usage.get
    # Counts are ints, not bools or floats: anything else is not a count.
    pt = v if type(v := get("prompt_tokens")) is int else None
    ct = v if type(v := get("completion_tokens")) is int else None
    tt = v if type(v := get("total_tokens")) is int else None
    if tt is None and pt is not None and ct is not None:
        tt = pt + ct
    ptd = get("prompt_tokens_details")
    cached = v if type(ptd) is dict and type(v := ptd.get("cached_tokens")) is int else None
    ctd = get("completion_tokens_details")
    reasoning = v if type(ctd) is dict and type(v := ctd.get("reasoning_tokens")) is int else None
    if pt is not None:
        cached = cached or 0
        reasoning = reasoning or 0
    return pt, ct, tt, cached, reasoning


def _billed_usage(usage: Any) -> Usage | None:
    """The usage an answer that is not a usable completion reported, if it reported one."""
    counts = _usage(usage)
    return counts if counts[0] is not None else None


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds; an HTTP date is ignored)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    s = headers.get("retry-after")
    if s is not None:
        try:
            return max(0.0, float(s))
        except ValueError:
            return None
    return None
