"""ChatClient: one chat completion request → ``ChatResult``, or a ``RequestError``.

The only module that touches aiohttp. Every failure of the library below is translated here,
in ``_translate``, into the project's errors with a short stable ``error_type``. Messages are
built from the status, the error body's ``message`` and the exception class, never from request
headers, so the API key cannot leak into them.
"""

from __future__ import annotations

import asyncio
import base64
import difflib
import functools
import inspect
import math
import os
import re
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import orjson

from batchrunner.config import DEFAULT_PORTS, LONG_SECRET, Proxy
from batchrunner.errors import (
    AccountError,
    AuthError,
    BadResponseError,
    EndpointChanged,
    HTTPStatusError,
    QuotaError,
    RequestError,
    StopJob,
    TransportError,
    Unreachable,
    Usage,
)
from batchrunner.limiter import RATELIMIT_HEADERS
from batchrunner.retry import is_retryable_status
from batchrunner.tls import ca_loaded_when_first_used

with ca_loaded_when_first_used():  # aiohttp's default TLS contexts: the CA bundle read once used
    import aiohttp
    from aiohttp.helpers import TimerNoop
    from multidict import CIMultiDict
    from yarl import URL

__all__ = ["SIMULATOR_HEADER", "ChatClient", "ChatResult", "StreamAssembler"]

# Set on its answers by batchrunner's simulator served on its own (batchrunner simulate;
# batchrunner.simulator.ANNOUNCE_HEADER): they are not real.
SIMULATOR_HEADER = "x-batchrunner-simulator"
_MAX_MESSAGE = 300
# The longest stream line read (an image model's base64 answer can be megabytes; aiohttp's own
# readline stops at 128 KiB).
_MAX_EVENT = 64 << 20
_MAX_STRAY = 65536  # bytes of a stream's lines that are not SSE fields kept (an error body)
_SCAN = 16384  # bytes of an error body read for its message
# The aiohttp versions whose request, connector and response-handler calls ``ChatClient._post``
# makes were tested (CI installs the newest, and .ci/oldest.txt the oldest pyproject allows):
# with another, the session's own path is taken.
_POST_TESTED = ((3, 10), (3, 14))
_READ_BUFSIZE = 2**18  # a connection's read buffer (aiohttp's default since 3.12; 64 KiB before)
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_NO_TIMER = TimerNoop()  # the whole answer's timeout is the watchdog's (ChatClient._watch)
_JOINED_MAX = 1 << 16  # bytes of a body written in one piece with its request's head (_post)
# aiohttp 3.14 asks a response made without a body-writing task for the request's writer,
# only for how many bytes it wrote (``_Written``).
_RESPONSE_TAKES_WRITER = "stream_writer" in inspect.signature(aiohttp.ClientResponse).parameters
# Seconds a stream whose every choice finished is read on for what may follow (its [DONE], and
# its usage chunk when not asked for) before it is taken as whole: a server sends them at once
# (a quarter of the request's timeout at most, so that it ends first). A usage chunk asked for
# is waited for as the next chunk of an answer is (see ``ChatClient.complete``).
_AFTER_FINISH_S = 2.0
# Seconds a finished stream is read on for the usage chunk asked for (stream_options), or this
# many times the longest gap between the stream's chunks where longer (a slow upstream's), its
# timeout at most: OpenAI and vLLM send it right after the finish, a gateway a moment later; a
# server that never sends it (it ignores stream_options) and holds the stream open costs this
# once, not the whole timeout (see ``ChatClient._usage_held``).
_USAGE_WAIT_S = 2.0
_USAGE_GAPS_X = 4.0
# Once a finished stream was held open without its usage chunk, later ones are not waited on for
# theirs, but one stream is again after this many seconds, or this many times the wait it cost
# where longer (a server whose usage came back late, past what is read on for, is noticed): a
# server that never sends it costs one wait in that time, not one a stream.
_USAGE_RETRY_S = 30.0
_USAGE_RETRY_X = 15.0
# Finished streams held open without their usage chunk, none brought between, before later
# ones are not waited on for theirs: one alone may be a gateway's hiccup.
_USAGE_MISSES = 2
# Seconds a finished stream is read on for its [DONE] once a stream was held open without one
# (``ChatClient._held_open``): a server that holds them all open costs this a stream, one that
# held one open has the [DONE] of the next read and its connection kept.
_DONE_GRACE_S = 0.1
# A stream's timeout bounds the wait for its first byte and each gap between its chunks, not the
# whole answer (a thinking model streams for minutes); the whole is given this many times the
# timeout at most, so a stream that never ends (keep-alive comments forever) is still cut off;
# or, where longer, as long as the tokens it asked for (max_tokens, times n) take at the
# slowest rate a server that is answering streams them: an answer that sends its tokens ends.
STREAM_CAP_X = 10.0
_SLOWEST_TOKENS_S = 10.0
# A UTF-8 byte order mark, which some gateways put before a JSON body or a stream (orjson
# refuses it: every reply was an invalid_body, sent again and paid for again).
_BOM = b"\xef\xbb\xbf"
_TITLE = re.compile(rb"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)
# A UTF-16 surrogate written as a JSON escape (``\\ud83d``): JSON allows one alone, as a model
# that cut an emoji in two may answer, which orjson refuses and UTF-8 text cannot hold.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# The error words a gateway may pass on in a 200 instead of its upstream's status, and the
# status each stands for (an error a retry cannot fix is not retried; 401, 402 and 403 stop the
# job): OpenAI's error codes and types, Anthropic's error types, Google's canonical statuses
# (Gemini's ``error.status``), text-generation-inference's input ``validation``.
_ERROR_WORDS = {
    "invalid_request_error": 400, "context_length_exceeded": 400, "unsupported_parameter": 400,
    "unsupported_value": 400, "invalid_value": 400, "invalid_type": 400,
    "missing_required_parameter": 400, "invalid_api_key": 401, "model_not_found": 404,
    "rate_limit_exceeded": 429, "server_error": 500,
    "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "overloaded_error": 529, "validation": 422,
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}
# The finish_reason of an answer the server gave up on before it ended: vLLM's and SGLang's
# "abort" (the engine dropped the request: a restart, a preemption, an input too long; SGLang's
# an object with a ``message``), "error" as gateways say it. Its text stops wherever the
# server stopped.
_GAVE_UP = frozenset({"abort", "error"})
# aiohttp's refusal of a Content-Encoding it reads only with a package that is not installed
# ("Can not decode content-encoding: brotli (br). Please install `Brotli`").
_UNREADABLE_ENCODING = re.compile(
    r"content-encoding: [^(]*\((?P<encoding>[\w-]+)\)\. Please install `(?P<package>[\w.-]+)`",
    re.IGNORECASE)
# An error body that blames the account's money rather than the key.
_BALANCE = re.compile(r"balance|quota|credit|billing|payment|余额|额度", re.IGNORECASE)
# A 429 that is the account's money, not a rate: codes that say so (OpenAI's insufficient_quota,
# Moonshot's exceeded_current_quota_error, one-api gateways' insufficient_user_quota), or a
# message about a balance or credit (Zhipu's 1113, "欠费": in arrears). Not "quota", "billing" or
# "payment" alone: Gemini's per-minute 429 says "You exceeded your current quota", OpenAI's
# free tier's "add a payment method ... billing", and those are rate limits.
_NO_MONEY = frozenset({"insufficient_quota", "exceeded_current_quota_error",
                       "insufficient_user_quota"})
_NO_BALANCE = re.compile(r"\b(?:balance|credits?)\b|余额|欠费", re.IGNORECASE)
# A FAILED_PRECONDITION that is the account's (billing off, a region not served), not the row's
# (a file that is not ready, say).
_ACCOUNT = re.compile(r"billing|location|region|country|territor|free tier", re.IGNORECASE)
# A 403 for the place the request comes from (OpenAI's unsupported_country_region_territory,
# "Country, region, or territory not supported"), not for the key.
_UNSERVED_PLACE = re.compile(r"country|territor|unsupported.{0,20}region|region.{0,20}not "
                             r"supported", re.IGNORECASE)
# Google's reasons (an error's details) for a key it refuses with a 400 INVALID_ARGUMENT.
_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})


class _Direct(NamedTuple):
    """What ``ChatClient._post`` writes a request past the session with (``_direct_parts``)."""
    request: aiohttp.ClientRequest
    request_info: aiohttp.RequestInfo
    head: bytes  # the request line and headers up to Content-Length's value
    tail: bytes  # from the end of that value to the blank line that ends the head


async def _sent_whole(conn: aiohttp.connector.Connection) -> None:
    """The request's writer where the transport took its request only in part (past its
    high-water mark), as the session's request's task: done once the rest has gone out as the
    server reads it. Until then the response does not put the connection back in the pool,
    and when it cannot go out (the answer came first and was closed, which cancels this, or
    the connection broke), the connection is closed, not pooled with the body's rest still to
    be sent ahead of the next request."""
    protocol = conn.protocol
    assert protocol is not None
    transport = protocol.transport
    try:
        await protocol._drain_helper()
    except asyncio.CancelledError:
        # The rest is of no use now: dropped, where a close would hold the socket and the
        # rest until the server read it (for good, from one that neither reads nor closes).
        # The drain's waiter goes too: aiohttp 3.13 and older wait on it through a shield,
        # and the connection's loss would be left in it, unretrieved (logged).
        waiter = protocol._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
        if transport is not None:
            transport.abort()
        conn.close()
        raise
    except OSError as e:  # the connection lost: the answer's read fails with it
        conn.close()
        protocol.set_exception(aiohttp.ClientOSError(e.errno, str(e)), e)


class _Written:
    """The request's writer, to a response made without it (aiohttp 3.14): the bytes it
    wrote (``output_size``), all there is by then."""
    __slots__ = ("output_size",)

    def __init__(self, output_size: int) -> None:
        self.output_size = output_size


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
    tool_calls: str | None = None
    citations: str | None = None
    refusal: str | None = None  # why the model would not answer (``message.refusal``)
    # Search billed apart from tokens, as the usage reports it: web searches (Anthropic's
    # ``server_tool_use.web_search_requests``), sources (Grok's ``num_sources_used``).
    web_searches: int | None = None
    sources_used: int | None = None
    # Tokens written to the prompt cache (Anthropic's ``cache_creation_input_tokens``: part of
    # prompt_tokens, billed above the input price), and those of them kept an hour.
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    # Choice 0's log probabilities (``logprobs.content``: one ``{"token", "logprob", "bytes",
    # "top_logprobs"}`` a token, a stream's chunks' joined) as JSON text; None when it has none.
    logprobs: str | None = None
    # The service tier that answered (OpenAI's ``service_tier``: ``default``, ``flex``,
    # ``priority``), which its tokens are billed at; None when the reply does not say.
    service_tier: str | None = None
    # Audio tokens of the prompt (an ``input_audio`` part) and of the completion (a spoken
    # answer, ``modalities`` with ``audio``): part of prompt_tokens and completion_tokens,
    # billed at the audio prices (``*_tokens_details.audio_tokens``); None for none.
    audio_prompt_tokens: int | None = None
    audio_completion_tokens: int | None = None


class _Call:
    """One tool call of a stream, as its deltas arrive: id, type and name once, the arguments
    in pieces."""

    __slots__ = ("args", "id", "name", "type")

    def __init__(self) -> None:
        self.id: Any = None
        self.type: Any = None
        self.name: Any = None
        self.args: list[str] = []


class _Parts:
    """What the deltas of one choice of a stream carried."""

    __slots__ = ("annotations", "calls", "content", "content_size", "finish_reason",
                 "logprobs", "moved", "reasoning", "reasoning_size", "refusal", "transcript")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        # The characters of content and reasoning so far, kept with Qwen's whole-so-far chunks
        # only (``_so_far``).
        self.content_size = 0
        self.reasoning_size = 0
        self.refusal: list[str] = []
        self.finish_reason: str | None = None
        self.calls: dict[int, _Call] | None = None
        # The key of the call a stream's tool-call index now stands for, where another call
        # took the index over (see add_calls).
        self.moved: dict[int, int] | None = None
        self.annotations: list[Any] | None = None
        self.logprobs: list[Any] | None = None  # the tokens' log probabilities, in order
        # A spoken answer's words (``audio.transcript``), the content of one that has none
        self.transcript: list[str] | None = None

    def add_logprobs(self, logprobs: Any, whole_so_far: bool = False) -> None:
        """A chunk's ``logprobs``: its tokens' entries (``content``) follow those before. With
        ``whole_so_far`` (Qwen's ``incremental_output`` false), entries that repeat those so far
        (as many or more, the first and the last so far the same) replace them, as the
        chunk's text replaces the text before it; others (a server that sends only the new
        tokens' all the same) follow them."""
        tokens = _token_logprobs(logprobs)
        if tokens is not None:
            held = self.logprobs
            if held is None or (whole_so_far and len(tokens) >= len(held)
                                and tokens[0] == held[0] and tokens[len(held) - 1] == held[-1]):
                self.logprobs = list(tokens)
            else:
                held.extend(tokens)

    def add_calls(self, deltas: list[Any]) -> None:
        calls = self.calls
        if calls is None:
            calls = self.calls = {}
        for d in deltas:
            if type(d) is not dict:
                continue
            i = d.get("index")
            call_id = d.get("id")
            fn = d.get("function")
            if type(i) is not int:  # a provider that sends calls without an index
                if call_id:  # a new call, or a piece of one that repeats its id
                    i = next((k for k, c in calls.items() if c.id == call_id), len(calls))
                else:  # a piece of the last call
                    i = max(calls) if calls else 0
            else:
                index = i
                if self.moved is not None:
                    i = self.moved.get(index, index)
                call = calls.get(i)
                if (call is not None and call_id and call.id and call_id != call.id
                        and type(fn) is dict and fn.get("name")):
                    # Another call, its id and name its own, under the index of one begun: a
                    # gateway passing on Gemini's parallel calls gives each index 0. A call of
                    # its own (not one call of them all, its arguments run together), and the
                    # pieces that follow under that index its.
                    if self.moved is None:
                        self.moved = {}
                    self.moved[index] = i = max(calls) + 1
            call = calls.get(i)
            if call is None:
                call = calls[i] = _Call()
            if call_id:
                call.id = call_id
            if d.get("type"):
                call.type = d["type"]
            if type(fn) is dict:
                if call.name is None and fn.get("name"):
                    call.name = fn["name"]
                args = fn.get("arguments")
                if type(args) is str:
                    if args:
                        call.args.append(args)
                elif args is not None:  # a gateway that sends the arguments as an object
                    call.args.append(orjson.dumps(args).decode())

    def tool_calls(self) -> list[dict[str, Any]] | None:
        """The calls in the shape of a non-stream reply's ``message.tool_calls``."""
        if not self.calls:
            return None
        return [{"id": c.id, "type": c.type or "function",
                 "function": {"name": c.name, "arguments": "".join(c.args)}}
                for _, c in sorted(self.calls.items())]

    def text(self) -> str | None:
        """The content, or a spoken answer's transcript where it has none: None for a reply
        that only calls tools, as a non-stream reply has."""
        if not self.content and self.transcript:
            return "".join(self.transcript)
        return "".join(self.content) if self.content or not self.calls else None


def _loads(data: bytes) -> Any:
    """A reply's JSON (``orjson.loads``), or, where it holds a UTF-16 surrogate escaped alone
    (``"\\ud83d"``, which JSON allows and orjson refuses), the value the json module reads,
    each lone surrogate made U+FFFD: otherwise a whole answer, billed, would be an invalid_body
    sent again and paid for again. Raises ValueError for what is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        if _SURROGATE_ESCAPE.search(data) is None:
            raise
    import json  # only here: a rare reply

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")  # NaN, Infinity: refused as orjson does

    try:
        value = json.loads(data, parse_constant=constant)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    return _surrogates_replaced(value)


def _surrogates_replaced(value: Any) -> Any:
    """``value`` (parsed JSON) with each lone surrogate in its text made U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_surrogates_replaced(v) for v in value]
    if isinstance(value, dict):
        return {_surrogates_replaced(k): _surrogates_replaced(v) for k, v in value.items()}
    return value


def _so_far(pieces: list[str], text: str, size: int) -> int:
    """Take ``text``, a stream's chunk that carries the whole text so far (Qwen's
    ``incremental_output`` false), into ``pieces``, whose text is ``size`` characters long:
    it replaces them when it starts with them; one that does not (a server that sends only
    what is new all the same) is added. Returns the new size. The pieces are joined only for
    a chunk as long as they are, so a server that sends what is new costs time in proportion
    to its answer, not to its square."""
    if len(text) >= size and text.startswith("".join(pieces)):
        pieces[:] = (text,)
        return len(text)
    pieces.append(text)
    return size + len(text)


def _error_of(event: dict[str, Any]) -> dict[str, Any] | None:
    """The error object of a stream's chunk, ``{"error": {...}}``; or of one whose error is
    text (a gateway's upstream failure; text-generation-inference's, its kind in
    ``error_type`` beside it); None when it has none."""
    error = event.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str) and error:
        return {"message": error, "type": event.get("error_type")}
    return None


def _thought_apart(text: str | None, reasoning: str | None) -> tuple[str | None, str | None]:
    """A reply's content and reasoning, with reasoning put inside the content before the answer
    taken out of it: in ``<think>`` tags (a gateway's ``nebula_thinking_to_content``, a
    reasoning model served by vLLM or SGLang without a reasoning parser), or ended by
    ``</think>`` alone (DeepSeek-R1's and Qwen3 -Thinking models' chat templates put the
    opening tag in the prompt). The answer is the content (empty when it was cut inside its
    thinking)."""
    if reasoning or not text:
        return text, reasoning
    head = text.lstrip()
    if head.startswith("<think>"):
        thought, _, answer = head[7:].partition("</think>")
    elif ((end := text.find("</think>")) >= 0 and "<think>" not in text[:end]
          and text.startswith(("\n", "\r"), end + 8)):
        # the template's form ends the thinking on a line of its own: a "</think>" within a
        # sentence (an answer about such models) is the answer's
        thought, answer = text[:end], text[end + 8:]
    else:
        return text, reasoning
    return answer.lstrip(), thought.strip() or None


def _whole_so_far(body: dict[str, Any]) -> bool:
    """Whether a stream request asked for Qwen's ``incremental_output`` false (at the top level
    or in ``parameters``, where gateways take Qwen's options)."""
    params = body.get("parameters")
    return body.get("incremental_output") is False or (
        type(params) is dict and params.get("incremental_output") is False)


class _EventTooLong(Exception):
    """A stream line, or event, longer than ``_MAX_EVENT``."""


class StreamAssembler:
    """Builds one completion from the ``data:`` lines of a chat completion SSE stream.

    The deltas of each choice (by ``index``) are gathered apart: content and reasoning
    (``reasoning_content`` or ``reasoning``) joined, tool calls assembled by their index (id,
    type and name once, arguments in pieces), ``annotations`` collected; ``finish_reason`` is
    the last one a choice chunk carried. ``content``, ``reasoning`` and ``finish_reason`` are
    choice 0's. ``usage`` comes from whichever chunk has it (the final ``choices: []`` chunk
    with ``stream_options.include_usage``, or a last choice chunk, as some providers send), and
    top-level ``citations`` (Grok) likewise. ``done`` is set by ``data: [DONE]``.

    ``whole_so_far``: the request asked for Qwen's ``incremental_output`` false, whose chunks
    each carry the whole content (or reasoning) so far: one replaces the text before it that
    it starts with, rather than being added to it.
    """

    __slots__ = ("_after_cr", "_begun", "_cr_only", "_head", "_partial", "_partial_size",
                 "_pending", "_pending_size", "_stray_size", "cited", "done", "error", "event",
                 "first", "first_token_at", "id", "model", "others", "service_tier", "stray",
                 "usage", "usage_so_far", "whole_so_far")

    def __init__(self, *, whole_so_far: bool = False) -> None:
        self.whole_so_far = whole_so_far
        self.first = _Parts()  # choice 0
        self.others: dict[int, _Parts] | None = None  # with n > 1
        self.cited: Any = None
        self.usage: dict[str, Any] | None = None
        # A usage came in a chunk whose choices had not finished: the server sends the counts
        # so far in every chunk, so a usage is no sign that the stream's last chunk came.
        self.usage_so_far = False
        self.model: str | None = None
        self.service_tier: str | None = None  # read from the first chunk and the usage's
        self.id: str | None = None
        self.done = False
        self.error: dict[str, Any] | None = None
        self.first_token_at: float | None = None
        self.event: bytes | None = None  # the current event's ``event:`` field
        # Lines that are not SSE fields (a JSON error body sent as a stream, say), kept up to
        # _MAX_STRAY bytes to read once the stream ends.
        self.stray: list[bytes] | None = None
        self._stray_size = 0
        self._partial: list[bytes] = []  # the start of a line not ended yet (feed_bytes)
        self._pending: list[bytes] | None = None  # an event's data lines, read when it ends
        self._pending_size = 0
        self._partial_size = 0
        self._cr_only = False  # a lone CR ended a line: line ends are made LF (feed_bytes)
        self._after_cr = False  # the last piece ended with a CR (its LF may start the next)
        self._begun = False  # a piece was fed (a BOM is read only before the first)
        self._head = b""  # the first pieces while they are the start of a BOM

    def feed_bytes(self, chunk: bytes) -> None:
        """A piece of the stream as it arrived: its whole lines are fed (up to ``[DONE]``), and
        the start of a line not ended yet is kept for the next piece (``end`` feeds it). Raises
        ``_EventTooLong`` for a line longer than ``_MAX_EVENT``, ValueError as ``feed``.

        Lines end with LF, CRLF or a lone CR, as SSE allows: a stream holding a CR not followed
        by LF has its line ends made LF (a CRLF split between two pieces counted once). A
        UTF-8 byte order mark that starts the stream is dropped, as SSE says."""
        if not self._begun:
            chunk = self._head + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):  # the rest may come next
                self._head = chunk
                return
            self._begun, self._head = True, b""
            chunk = chunk.removeprefix(_BOM)
        if self._cr_only:
            chunk = self._lf_ends(chunk)
        elif (b"\r" in chunk or self._partial) and self._lone_cr(chunk):
            self._cr_only = True
            if self._partial:  # kept as it came, before a lone CR was seen: made LF with it
                chunk = b"".join(self._partial) + chunk
                self._partial, self._partial_size = [], 0
            chunk = self._lf_ends(chunk)
        start = 0
        if self._partial:
            nl = chunk.find(b"\n")
            if nl < 0:
                self._keep(chunk)
                return
            self._partial.append(chunk[:nl + 1])
            line = b"".join(self._partial)
            self._partial, self._partial_size = [], 0
            self.feed(line)
            start = nl + 1
        while not self.done and (nl := chunk.find(b"\n", start)) >= 0:
            # The common line, a chunk's JSON on one data: line, read at once (as ``feed``
            # does): its one copy, not four, where each chunk carries the whole answer so far.
            if (chunk.startswith(b"data: {", start) and self._pending is None
                    and self.event is None):
                try:  # orjson's own: what it refuses, feed reads (_loads: a lone surrogate)
                    event = orjson.loads(chunk[start + 6:nl])
                except ValueError:
                    self.feed(chunk[start:nl + 1])  # JSON over several data: lines, or none
                else:
                    self._chunk(event)
            else:
                self.feed(chunk[start:nl + 1])
            start = nl + 1
        if start < len(chunk) and not self.done:
            self._keep(chunk[start:])

    def _lone_cr(self, chunk: bytes) -> bool:
        """Whether a CR ends a line on its own: one in ``chunk`` not followed by LF (its last
        byte aside: the next piece tells), or one that ended the line kept from the last piece
        when ``chunk`` does not start with LF."""
        if self._partial and self._partial[-1].endswith(b"\r") and chunk[:1] != b"\n":
            return True
        at = chunk.find(b"\r")
        while 0 <= at < len(chunk) - 1:
            if chunk[at + 1] != 0x0A:
                return True
            at = chunk.find(b"\r", at + 2)
        return False

    def _lf_ends(self, chunk: bytes) -> bytes:
        """``chunk`` with its line ends (CR, CRLF) made LF."""
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the LF of a CRLF whose CR ended the last piece
        self._after_cr = chunk[-1:] == b"\r"
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _keep(self, part: bytes) -> None:
        self._partial.append(part)
        self._partial_size += len(part)
        if self._partial_size > _MAX_EVENT:
            raise _EventTooLong

    def end(self) -> None:
        """The stream ended: feed a last line that had no line break, and end its event."""
        if self._head:  # the stream was the start of a BOM and no more
            self._partial, self._head = [self._head], b""
        if self._partial:
            line = b"".join(self._partial)
            self._partial, self._partial_size = [], 0
            self.feed(line)
        self._event_end()

    def _hold(self, data: bytes) -> None:
        """Keep a data line of an event read when it ends (``_event_end``)."""
        if self._pending is None:
            self._pending = []
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > _MAX_EVENT:
            raise _EventTooLong

    def _event_end(self) -> None:
        """The end of an event (its blank line, [DONE] or the end of the stream): the data of
        an error event, or one of another kind, is read now; JSON spread over data lines that
        never parsed is refused."""
        pending, name = self._pending, self.event
        self.event = None
        if pending is None:
            return
        self._pending, self._pending_size = None, 0
        if name == b"error":
            self._error_event(b"\n".join(pending))
        elif name is not None:
            self._other_event(b"\n".join(pending))
        else:
            raise ValueError("a stream event whose data lines are not JSON")

    @property
    def begun(self) -> bool:
        """Whether a byte of the stream came."""
        return self._begun or bool(self._head)

    @property
    def answering(self) -> bool:
        """Whether some of the answer came: text, reasoning or a tool call (which set
        ``first_token_at``), a refusal or a finish. Comments, pings and chunks that carry none
        of it (a proxy's role-only first chunk, sent before its upstream answers) do not
        count."""
        if self.first_token_at is not None or self.first.finish_reason or self.first.refusal:
            return True
        return any(p.finish_reason or p.refusal for p in (self.others or {}).values())

    @property
    def content(self) -> list[str]:
        return self.first.content

    @property
    def reasoning(self) -> list[str]:
        return self.first.reasoning

    @property
    def finish_reason(self) -> str | None:
        return self.first.finish_reason

    def feed(self, line: bytes) -> None:
        """One line of the stream; raises ValueError on an event that is not JSON."""
        if line.startswith(b"data: {") and self._pending is None and self.event is None:
            # The common line, a chunk's JSON, read at once: a line cut out, stripped and its
            # data cut out and stripped was four copies of it, a cost in proportion to the
            # answer so far in each chunk where each carries it whole.
            try:
                event = orjson.loads(line[6:])
            except ValueError:
                pass  # JSON over several data: lines, or none, or a lone surrogate: as below
            else:
                self._chunk(event)
                return
        line = line.strip()
        if line.startswith(b"data:"):
            data = line[5:].strip()
        elif line == b"data":  # a field without a colon: the line its name, its value empty
            data = b""
        elif line:
            self._field(line)  # comments (": keep-alive"), event:/id: fields, stray lines
            return
        else:
            self._event_end()
            return
        if data == b"[DONE]":
            self._event_end()
            self.done = True
            return
        if self.event is not None:  # ``event: error``, or another kind: read when it ends
            self._hold(data)
            return
        if self._pending is None:
            try:
                event = _loads(data)
            except ValueError:
                if not data:
                    return  # an event with no data (SSE dispatches none): no chunk
                if data[:1] != b"{":
                    raise
                self._hold(data)  # one event's JSON over several data: lines, as SSE allows
                return
        else:
            self._hold(data)
            if not data.endswith(b"}"):
                return  # more to come
            try:
                event = _loads(b"\n".join(self._pending))  # SSE joins them so
            except ValueError:
                return  # more to come; the end of the event refuses it
            self._pending, self._pending_size = None, 0
        self._chunk(event)

    def _chunk(self, event: Any) -> None:
        """A chunk of the stream, its JSON read; raises ValueError when it is no object."""
        if not isinstance(event, dict):
            raise ValueError("stream event is not a JSON object")
        if "error" in event and (error := _error_of(event)) is not None:
            self.error = error
            return
        # The first not empty: Azure's first chunk (its prompt filter's) has both empty.
        if self.model is None and (model := event.get("model")) and isinstance(model, str):
            self.model = model
            if type(tier := event.get("service_tier")) is str and tier:
                self.service_tier = tier
        if self.id is None and (rid := event.get("id")) and isinstance(rid, str):
            self.id = rid
        usage = event.get("usage")
        if usage and isinstance(usage, dict):  # an empty one (a gateway's in every chunk): none
            self.usage = usage
            if type(tier := event.get("service_tier")) is str and tier:
                self.service_tier = tier
            if not self.usage_so_far and (choices := event.get("choices")) and not any(
                    type(c) is dict and c.get("finish_reason") for c in choices):
                # usage beside an answer not finished: the counts so far, sent in every chunk
                self.usage_so_far = True
        cited = event.get("citations")
        if cited:
            self.cited = cited  # sent once, in a late chunk
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if index == 0:
                parts = self.first
            elif type(index) is int:
                others = self.others
                if others is None:
                    others = self.others = {}
                parts = others.get(index) or others.setdefault(index, _Parts())
            else:
                continue
            delta = choice.get("delta")
            if type(delta) is dict:
                text = delta.get("content")
                if type(text) is str and text:
                    if self.whole_so_far:
                        parts.content_size = _so_far(parts.content, text, parts.content_size)
                    else:
                        parts.content.append(text)
                    if self.first_token_at is None:
                        self.first_token_at = time.perf_counter()
                if type(text) is not str or len(delta) > 1:  # not the common content-only delta
                    self._more(parts, delta)
            if choice.get("finish_reason"):
                parts.finish_reason = _finish_reason(choice["finish_reason"])
            if choice.get("logprobs"):  # asked for: with the tokens of the chunk's delta
                parts.add_logprobs(choice["logprobs"], self.whole_so_far)

    def _field(self, line: bytes) -> None:
        """A line that is neither ``data:`` nor blank: an event's name, an ``error:`` field
        (llama.cpp's server sends an error that comes once its stream has begun so, the
        error object on the line itself), a field or comment of no use here, or a stray line
        (kept: see ``stray_body``)."""
        if line.startswith(b"event:") or line == b"event":
            # An empty name (or none) is SSE's default, ``message``: the chunks' own events.
            name = line[6:].strip()
            self.event = None if name in (b"", b"message") else name
        elif line.startswith(b"error:"):
            self._error_event(line[6:].strip())
        elif (not line.startswith((b":", b"id:", b"retry:"))
              and self._stray_size + len(line) <= _MAX_STRAY):
            if self.stray is None:
                self.stray = []
            self.stray.append(line)
            self._stray_size += len(line)

    def _error_event(self, data: bytes) -> None:
        """The data of an ``event: error``: ``{"error": {...}}``, a bare error object
        (``{"message", "code"}``), or plain text."""
        try:
            value = _loads(data)
        except ValueError:
            value = data.decode("utf-8", "replace")
        if isinstance(value, dict):
            self.error = _error_of(value) or value
        else:
            self.error = {"message": str(value)}

    def _other_event(self, data: bytes) -> None:
        """The data of an event of another kind than ``message`` and ``error`` (a ping, a
        gateway's notice, Anthropic's ``message_delta`` passed through): SSE gives a message
        listener none of it, and its ``usage`` or ``model`` is not the answer's. One that is a
        chunk by its shape (``choices``, if empty) is read as one, as the OpenAI SDK reads the
        data of any event; of another an error object is the stream's error."""
        try:
            value = _loads(data)
        except ValueError:
            return  # a ping whose data is the time (sse-starlette before 2.0), say
        if not isinstance(value, dict):
            return
        if type(value.get("choices")) is list:
            self._chunk(value)
        elif (error := _error_of(value)) is not None:
            self.error = error

    def stray_body(self) -> dict[str, Any] | None:
        """The JSON object a server sent with a stream's content type but not as events (the
        stray lines, read as one document): an ``{"error": ...}`` body, or a whole completion
        from a proxy that gave it a type of its own; None if there is none."""
        if not self.stray:
            return None
        try:
            value = _loads(b"\n".join(self.stray))
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def finished(self, choices: int) -> bool:
        """Each of the ``choices`` asked for (``n``) has its ``finish_reason``: the answer is
        whole, with or without the ``[DONE]`` that should follow it. Once ``usage`` came (in
        the last chunk a server sends), every choice sent is enough: a server that ignores
        ``n`` sends one. Not from a server that sends the usage so far in every chunk
        (``usage_so_far``): its choices may come one after another, the next begun after
        the last finished."""
        others = self.others or {}
        return (self.first.finish_reason is not None
                and (len(others) + 1 >= choices
                     or (self.usage is not None and not self.usage_so_far))
                and all(p.finish_reason is not None for p in others.values()))

    def closed_whole(self, choices: int) -> bool:
        """The stream closed without its ``[DONE]`` is whole: ``finished``, where usage sent
        in every chunk counts as the last one's too, as nothing more comes (a server that
        ignores ``n`` and sends the usage so far in every chunk has sent its one choice)."""
        others = self.others or {}
        return (self.first.finish_reason is not None
                and (len(others) + 1 >= choices or self.usage is not None)
                and all(p.finish_reason is not None for p in others.values()))

    def ended(self, choices: int) -> bool:
        """Nothing more is needed of the stream: every choice finished (``finished``), or an
        error came (what follows it, a usage chunk at most, is read while it comes at once;
        a gateway that holds the stream open after its error is not waited for until the
        timeout, which would lose the error)."""
        return self.error is not None or self.finished(choices)

    def _more(self, parts: _Parts, delta: dict[str, Any]) -> None:
        """The rarer parts of a delta: content as a list of parts, reasoning, tool calls,
        annotations, a refusal."""
        thought = delta.get("reasoning_content") or delta.get("reasoning")
        refusal = delta.get("refusal")
        if type(refusal) is str and refusal:
            parts.refusal.append(refusal)
        content = delta.get("content")
        if type(content) is list:  # Mistral's Magistral: text and thinking parts
            text, thinking = _content_parts(content)
            if text:
                if self.whole_so_far:
                    parts.content_size = _so_far(parts.content, text, parts.content_size)
                else:
                    parts.content.append(text)
            thought = thought or thinking
            if text and self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        if isinstance(thought, str) and thought:
            if self.whole_so_far:
                parts.reasoning_size = _so_far(parts.reasoning, thought,
                                              parts.reasoning_size)
            else:
                parts.reasoning.append(thought)
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        calls = delta.get("tool_calls")
        if calls and type(calls) is list:
            parts.add_calls(calls)
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        audio = delta.get("audio")  # a spoken answer (modalities audio): its words' pieces
        if type(audio) is dict and type(words := audio.get("transcript")) is str and words:
            if parts.transcript is None:
                parts.transcript = []
            parts.transcript.append(words)
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        notes = delta.get("annotations")
        if notes and type(notes) is list:
            if parts.annotations is None:
                parts.annotations = []
            parts.annotations.extend(notes)

    def all_choices(self) -> str:
        """Every choice as JSON text, as ``choices`` of a non-stream reply."""
        parts = sorted([(0, self.first), *(self.others or {}).items()], key=lambda ip: ip[0])
        return orjson.dumps([
            _choice_entry(i, _thought_apart(p.text(), "".join(p.reasoning) or None)[0],
                          p.finish_reason, p.tool_calls(), p.logprobs,
                          "".join(p.refusal) or None)
            for i, p in parts]).decode()


# A 404 for a model the server does not serve names this many of those it does, and waits
# this long for its list.
_SERVED_SHOWN = 5
_SERVED_WAIT_S = 10.0

# The shortest part of a long secret taken out of a library's message (its first characters,
# "sk-proj-", say, are no secret).
_FRAGMENT = 8


def _written_forms(secret: str) -> set[str]:
    """``secret`` as a server may echo it in its text: as it is, URL-encoded (a query string's)
    and JSON-escaped (a body's JSON quoted in its message; twice, in a tool call's arguments)."""
    escaped = orjson.dumps(secret).decode()[1:-1]
    twice = orjson.dumps(escaped).decode()[1:-1]
    return {secret, quote(secret, safe=""), quote(secret), escaped, escaped.replace("/", "\\/"),
            twice}


def _encoded_forms(secret: str) -> set[str]:
    """``secret`` base64-encoded (standard and URL-safe), as in an echoed ``Basic`` header or
    a gateway's encoded copy of the request: whole, and, wherever it starts in the bytes
    encoded (``Bearer <key>``, say), the characters that it alone decides (a few at either end
    also depend on the bytes around it)."""
    data = secret.encode()
    forms = {base64.b64encode(data).decode()}
    for lead in range(3):
        encoded = base64.b64encode(b"\0" * lead + data).decode()
        forms.add(encoded[4 if lead else 0:(lead + len(data)) // 3 * 4])
    return forms | {f.replace("+", "-").replace("/", "_") for f in forms}


def _long_secrets_pattern(secrets: Iterable[str], header: str | None = None
                          ) -> re.Pattern[str] | None:
    """The secrets in every form a server may echo them in (written as they are or escaped,
    base64-encoded) that is LONG_SECRET characters or more, in upper or lower case too (a
    shorter key's base64, "dG9rZW4tYWJjMTIz", is as plain a copy of it); and the ``header``
    that carries the key, base64-encoded whole (else its first characters, "Bearer s", would
    stay; a short key's, "QmVhcmVyIEVNUFRZ" for "Bearer EMPTY", is that header too)."""
    forms = {f for s in secrets for f in (*_written_forms(s), *_encoded_forms(s))
             if len(f) >= LONG_SECRET}
    if header is not None:
        whole = base64.b64encode(header.encode()).decode()
        forms |= {whole, whole.replace("+", "-").replace("/", "_")}
    if not forms:
        return None
    alternatives = sorted({re.escape(f) for f in forms}, key=len, reverse=True)
    return re.compile("|".join(alternatives), re.IGNORECASE)


def _secrets_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """The short secrets, each where no letter, digit, "_" or "-" touches it; the letter or
    digit that ends an escape before it (``%20``, ``%3D`` URL-encoded, ``\\n``, ``\\u0020`` in
    JSON text) does not count: it stands alone there."""
    alternatives = sorted({re.escape(s) for s in secrets}, key=len, reverse=True)
    if not alternatives:
        return None
    return re.compile(rf"(?:(?<![\w-])|(?<=%[0-9A-Fa-f]{{2}})|(?<=\\[bfnrt])"
                      rf"|(?<=\\u[0-9A-Fa-f]{{4}}))(?:{'|'.join(alternatives)})(?![\w-])")


# The shortest run of a long secret taken out where a text holds it in part (a server that
# echoed "AUDIT-SECRET-123456" or "sk-AUDIT-SECRET-12" of "sk-AUDIT-SECRET-123456"): as long
# as a secret must be to be taken out wherever it stands. The beginnings keys share are shorter
# ("sk-", "sk-proj-", "sk-or-v1-", "sk-ant-api03-": 13 characters at most), as is what OpenAI's
# masked form shows of a key ("sk-proj-", "****" and its last 4); and an error's words and ids
# match 16 characters in a row of a random key (each one of 62 letters and digits) by chance
# once in 62**16, about 5e28.
# A setting of job.json with a run taken out still matches its job file's (``_same_setting``
# reads "[redacted]" as LONG_SECRET characters or more). A shorter secret ("sk-123", "test") is
# taken out whole only.
_PART = LONG_SECRET
# A text is looked up in a secret's runs by its chunks of _CHUNK characters, one every _EVERY
# from its start: a run of _PART characters holds one of them whole (one starts in its first
# _EVERY).
_CHUNK = 6
_EVERY = _PART - _CHUNK + 1
# The most models and finish_reasons a client keeps as holding no run (``_in_reply``): a server
# naming each reply's model anew is looked through every time.
_RUNLESS_KEPT = 64
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class _SecretRuns:
    """Where a text holds a run of _PART characters or more of one of ``forms`` (a secret as a
    server may write it, ``_written_forms``), in upper or lower case (an ASCII letter's):
    each run as far as it goes on matching, both ways. The text's chunks of _CHUNK characters
    that start at a multiple of _EVERY are looked up among the forms' own; a run is grown from
    each chunk found."""

    def __init__(self, forms: Iterable[str]) -> None:
        written = [f for f in dict.fromkeys(forms) if len(f) >= _PART]
        # The forms' chunks as written, for ``seen``; and, in lower case, each one's places
        # (the form, and where in it), for ``found``.
        self._chunks = frozenset(f[i:i + _CHUNK] for f in written
                                 for i in range(len(f) - _CHUNK + 1))
        self._forms = tuple(dict.fromkeys(f.translate(_ASCII_LOWER) for f in written))
        self._places: dict[str, list[tuple[int, int]]] = {}
        for n, form in enumerate(self._forms):
            for i in range(len(form) - _CHUNK + 1):
                self._places.setdefault(form[i:i + _CHUNK], []).append((n, i))

    def seen(self, text: str) -> bool:
        """Whether ``text`` may hold a run, as written (not in another case): one of its
        chunks is a form's."""
        if len(text) < _PART:
            return False
        chunks = self._chunks
        for at in range(0, len(text) - _CHUNK + 1, _EVERY):
            if text[at:at + _CHUNK] in chunks:
                return True
        return False

    def found(self, text: str) -> list[tuple[int, int]]:
        """The runs of _PART characters or more ``text`` holds, as (start, end) in it."""
        low = text.translate(_ASCII_LOWER)
        places, forms = self._places, self._forms
        runs: list[tuple[int, int]] = []
        # Where the last run grown for a form at an offset in the text ends: a later chunk of
        # it is not grown again.
        ends: dict[tuple[int, int], int] = {}
        for at in range(0, len(low) - _CHUNK + 1, _EVERY):
            for n, i in places.get(low[at:at + _CHUNK], ()):
                shift = at - i  # where the form would start in the text
                if ends.get((n, shift), -1) > at:
                    continue
                form = forms[n]
                start, end = at, at + _CHUNK
                while start > max(shift, 0) and low[start - 1] == form[start - 1 - shift]:
                    start -= 1
                stop = min(len(low), shift + len(form))
                while end < stop and low[end] == form[end - shift]:
                    end += 1
                ends[(n, shift)] = end
                if end - start >= _PART:
                    runs.append((start, end))
        return runs

    def cut(self, text: str) -> str:
        """``text`` with each run (``found``), or runs that overlap or touch, replaced by
        ``[redacted]``."""
        runs = self.found(text)
        if not runs:
            return text
        runs.sort()
        out: list[str] = []
        done = 0
        start, end = runs[0]
        for s, e in runs[1:]:
            if s > end:
                out += (text[done:start], "[redacted]")
                done, start, end = end, s, e
            elif e > end:
                end = e
        out += (text[done:start], "[redacted]", text[end:])
        return "".join(out)


def holds_secret(text: str, secret: str) -> bool:
    """Whether ``text`` holds ``secret`` as the client's redaction finds it: a long one
    anywhere, or a run of _PART characters or more of it, in any case; a short one (a local
    server's stand-in key, "x" or "ollama") where it stands alone, not inside a longer word
    ("ollama_rows.csv")."""
    if len(secret) >= LONG_SECRET:
        return secret in text or bool(_runs_of(secret).found(text))
    pattern = _secrets_pattern([secret])
    return pattern is not None and pattern.search(text) is not None


def without_secret(text: str, secret: str) -> str:
    """``text`` with a long ``secret``, and every run of _PART characters or more of it, in
    any case, replaced by ``[redacted]`` (``holds_secret``)."""
    return _runs_of(secret).cut(text)


@functools.lru_cache(maxsize=4)
def _runs_of(secret: str) -> _SecretRuns:
    """``secret``'s runs, for each of the texts of a job's settings looked through."""
    return _SecretRuns([secret])


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
        key_origin: str | None = None,
        key_hint: str = "",
        model_setting: str = "the job's model",
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        # What sets the model the requests ask for, for a 404 naming the models served.
        self._model_setting = model_setting
        # Where the key was read, for a refused key's message; with no key, the variable that
        # would hold it, and (``key_hint``) another that holds one, for the message to name.
        self._key_origin = key_origin
        self._key_hint = key_hint
        # A completion came from batchrunner's own simulator served on its own (batchrunner
        # simulate), which says so in a header: the run's answers are not real. The first
        # completion says which (or ``expect_simulator`` does before it); one that says the
        # other raises EndpointChanged, not kept (another server at the URL now). Error
        # answers do not tell (``_tell_kind``).
        self.simulator_answered = False
        self._ask_simulator = True  # until the first completion
        # Any answer said to be batchrunner simulate's, an error's too: its URL is kept in no
        # record of endpoints that answered (a rehearsal's port, not a server that reboots).
        self.simulator_seen = False
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._keyless = not api_key
        self._proxy = proxy
        self._proxy_url = proxy.url if proxy else None
        proxy_secrets = proxy.secrets if proxy else ()
        self._secrets = tuple(s for s in (api_key, *secrets, *proxy_secrets) if s)
        self._short_secrets = _secrets_pattern(s for s in self._secrets if len(s) < LONG_SECRET)
        long = [s for s in self._secrets if len(s) >= LONG_SECRET]
        self._long_secrets = _long_secrets_pattern(
            self._secrets, f"Bearer {api_key}" if api_key else None)
        # The short secrets a header carries, where an answer repeats that header ("Bearer x",
        # a proxy's "Basic YWxpY2U6cHc="): taken out there only, as elsewhere a short key is a
        # word of the answer. The words that show a header, the secrets, and the pattern.
        headed = {word: secret for word, secret in (
            ("Bearer", api_key), ("Basic", proxy.credentials if proxy else None))
            if secret and len(secret) < LONG_SECRET}
        self._headed: tuple[tuple[str, ...], re.Pattern[str]] | None = None
        if headed:
            self._headed = (
                tuple(word.lower() for word in headed),
                re.compile(rf"(?<![\w-])((?:{'|'.join(headed)})(?:\s+|%20|\\u0020))"
                           rf"({'|'.join(re.escape(s) for s in headed.values())})(?![\w-])",
                           re.IGNORECASE))
        # A long secret's every run of _FRAGMENT characters, for a library's message that cut
        # the line it quotes (see ``_library_message``).
        self._fragments = frozenset(s[i:i + _FRAGMENT] for s in long
                                    for i in range(len(s) - _FRAGMENT + 1))
        # What a reply's text is searched for (a plain search, a fraction of a microsecond a
        # field; the pattern above costs tens of them): a long secret as it is written.
        self._written = tuple({f for s in long for f in _written_forms(s)})
        # The runs of _PART characters or more of those, for a server's text that holds one in
        # part (an error's, a reply's request id, model or finish_reason).
        self._runs = _SecretRuns(self._written) if self._written else None
        # The models and finish_reasons replies gave that hold no such run: replies give the
        # same few, each looked through once (a reply's request id is not: ``_in_reply``).
        self._runless: set[str] = set()
        # The timeout is kept by a watchdog (``_watch``), not by aiohttp: aiohttp arms and
        # cancels a timer for every request, 6 µs of CPU each (a twentieth of a request's
        # total); the watchdog looks at the requests in flight a few times a second. Each has a
        # deadline: its whole answer's, or a stream's, pushed on by every chunk (see
        # ``complete``).
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
        # The loop the client runs in: asyncio.current_task() and get_running_loop() ask the
        # kernel for the process id on each call (a getpid system call), current_task(loop) and
        # this don't.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._connector: aiohttp.TCPConnector | None = None
        # A completion is posted by ``_post``, not by the session's ``post``, where that sends
        # the same request: to a URL of http or https with no credentials in it, with no
        # proxy, under an aiohttp version it was tested with (``_postable``), once an answer
        # came to one posted by the session without a redirect. None: the session's.
        self._target: URL | None = None
        self._postable: URL | None = None
        self._direct: _Direct | None = None  # how (_direct_parts), where _postable is set
        self._request_headers: CIMultiDict[str] = CIMultiDict(self._headers)
        # Finished streams were held open for the whole wait for their usage chunk, which never
        # came (``_USAGE_MISSES`` of them): the server sends none (it ignores stream_options, or
        # a gateway's other upstream does), so later streams are not waited on for one until
        # this loop time, when one is (``_usage_waited``); None while they are. A stream that
        # brings its usage makes them all waited on again.
        self._usage_held: float | None = None
        self._usage_misses = 0  # finished streams held open so since the last usage chunk
        # A finished stream was held open past what may follow its answer, no [DONE] coming:
        # later streams are taken once nothing but it is to come (their usage in hand, or
        # none coming: ``_usage_held``) and ``_DONE_GRACE_S`` has passed, not read on for
        # ``_AFTER_FINISH_S`` each; until a stream's [DONE] comes.
        self._held_open = False
        # The models (as asked for) whose streams came with a finish_reason: a [DONE] without
        # one is then a cut (a gateway closing a broken upstream so), not a server's way; and
        # those whose streams end without one (two did before any had one): such a [DONE] is
        # their way. Until one or the other is known, a stream that ends so while others are in
        # flight waits for the next of the model's to end (``_told``), on its event here; one
        # with none to wait for is taken as cut, and the model is noted (``_untold``): the next
        # of its streams to end so tells that it is the endpoint's way.
        self._finishing: set[str | None] = set()
        self._unfinishing: set[str | None] = set()
        self._telling: dict[str | None, asyncio.Event] = {}
        self._untold: set[str | None] = set()
        # The models whose streams, taken whole without a finish_reason (``_unfinishing``),
        # came with the usage chunk asked for: one of theirs that ends so without it is cut (a
        # gateway that closed a broken upstream's stream, with no usage to send).
        self._usage_whole: set[str | None] = set()
        # The streams in flight of each model not yet known either way: only another of the
        # same model can tell (a mixed job's other models' streams cannot).
        self._flying: dict[str | None, int] = {}
        # The models the endpoint lists, asked for on the first 404 that names the model.
        self._served: asyncio.Future[list[str] | None] | None = None

    async def __aenter__(self) -> ChatClient:
        self._loop = loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._watch_every, self._watch)
        self._connector = connector = aiohttp.TCPConnector(limit=self._connections,
                                                           ttl_dns_cache=300)
        # No cookie jar: requests carry no state between them, and a gateway's cookies (a CDN's
        # bot-management cookie, say) would otherwise be parsed and matched on every request.
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(), read_bufsize=_READ_BUFSIZE,
        )
        self._target = self._postable = self._direct = None
        try:
            target = URL(self.url)
            version = tuple(int(v) for v in aiohttp.__version__.split(".")[:2])
        except ValueError:  # a URL the session's post refuses in its own words
            return self
        if (self._proxy_url is None and target.scheme in ("http", "https") and target.raw_host
                and target.raw_user is None and target.raw_password is None
                and _POST_TESTED[0] <= version <= _POST_TESTED[1]):
            self._direct = self._direct_parts(target)
            if self._direct is not None:
                self._postable = target
        return self

    def _direct_parts(self, target: URL) -> _Direct | None:
        """What ``_post`` posts a completion past the session with: a request to take a
        connection from the pool with (its key, its TLS settings), never sent, the
        request_info its answers carry, and the head the session's request would write, in
        two parts around its Content-Length. The head is that request's headers, written as
        aiohttp writes them. None where aiohttp would write another kind of head (one it
        chunks, or a header it refuses: a line break in the key, say): the session's post."""
        request = aiohttp.ClientRequest(
            "POST", target, headers=self._request_headers, data=b"{}", loop=self._loop,
            response_class=aiohttp.ClientResponse, timer=_NO_TIMER, session=self._session,
            traces=[])
        items = list(request.headers.items())
        names = [k.lower() for k, _ in items]
        if (names.count("content-length") != 1 or "content-type" not in names
                or "transfer-encoding" in names or "connection" in names
                or request.version != aiohttp.HttpVersion11
                or any("\r" in k or "\n" in k or "\r" in v or "\n" in v for k, v in items)):
            return None
        cut = names.index("content-length")
        before = "".join(f"{k}: {v}\r\n" for k, v in items[:cut])
        after = "".join(f"{k}: {v}\r\n" for k, v in items[cut + 1:])
        return _Direct(request, request.request_info,
                       f"POST {target.raw_path_qs} HTTP/1.1\r\n{before}{items[cut][0]}: ".encode(),
                       f"\r\n{after}\r\n".encode())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._served is not None:
            self._served.cancel()  # a list still being asked for when the run stopped
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._connector = None
            self._target = self._postable = self._direct = None

    def _watch(self) -> None:
        """Cancel the requests past their deadline (``complete`` turns that into a timeout)."""
        now = time.monotonic()
        for task, deadline in self._deadlines.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        assert self._loop is not None
        self._watchdog = self._loop.call_later(self._watch_every, self._watch)

    def redact(self, text: str) -> str:
        """``text`` (a server's error, a message quoting it) with the secrets taken out: a long
        one in every form ``_long_secrets_pattern`` knows, and any run of _PART characters or
        more of it as a server may write it, in any case (``_SecretRuns``); a short one where it
        stands alone; a short key after ``Bearer``."""
        if self._long_secrets is not None:
            text = self._long_secrets.sub("[redacted]", text)
        if self._runs is not None:
            text = self._runs.cut(text)
        if self._short_secrets is not None:
            text = self._short_secrets.sub("[redacted]", text)
        if self._headed is not None:  # a header in upper case, "BEARER EMPTY"
            text = self._headed[1].sub(r"\1[redacted]", text)
        return text

    def _library_message(self, e: BaseException) -> str:
        """``e``'s text, redacted: aiohttp's own messages quote what the server sent, cut (the
        first 100 bytes of a line too long), so a secret may be in it only in part. Any run of
        _FRAGMENT characters or more of a long secret is taken out too."""
        text = self.redact(f"{type(e).__name__}: {e}")
        cut = [False] * len(text)
        for i in range(len(text) - _FRAGMENT + 1):
            if text[i:i + _FRAGMENT] in self._fragments:
                cut[i:i + _FRAGMENT] = [True] * _FRAGMENT
        if not any(cut):
            return text
        out: list[str] = []
        for i, c in enumerate(text):
            if not cut[i]:
                out.append(c)
            elif i == 0 or not cut[i - 1]:
                out.append("[redacted]")
        return "".join(out)

    def _scrub(self, text: str | None, *, answer: bool = False, runs: bool = True
               ) -> str | None:
        """A reply's field, redacted: its id, model or finish_reason wholly (short secrets
        too, and, but for ``runs`` False, a long one's runs of _PART characters, as a server
        may write part of it);
        an answer's text (``answer``) of the long secrets written in it whole, as a model told
        the request's headers may repeat them (a short key, a local server's placeholder such
        as "x", is a word of the answer: it is taken out only after "Bearer", a proxy's short
        credentials after "Basic"). An answer is not looked through for a long secret's runs:
        that is a lookup every _EVERY characters, ten times the search above, on every answer;
        and its model never sees the key, which reaches it only where the request's headers
        were put in its prompt, whole."""
        if not text:
            return text
        if self._long_secrets is not None:
            for f in self._written:  # a loop, not any(): a generator costs more than the search
                if f in text:
                    text = self._long_secrets.sub("[redacted]", text)
                    break
        if runs and not answer and (found := self._runs) is not None and found.seen(text):
            text = found.cut(text)
        if answer and self._headed is not None:
            text = self._unheaded(self._headed, text)
        if not answer and self._short_secrets is not None:
            text = self._short_secrets.sub("[redacted]", text)
        return text

    @staticmethod
    def _unheaded(headed: tuple[tuple[str, ...], re.Pattern[str]], text: str) -> str:
        """``text`` with the secrets of the headers ``headed`` holds taken out where it repeats
        one, in any case ("BeArEr x"), as its pattern finds them. The pattern is tried only
        where a word of one starts (a plain search of the text made lower case): searched for
        all through, it cost 20 µs a kilobyte, and a short key's answer may often say
        "bearer"."""
        low = text.lower()
        if len(low) != len(text):  # a letter lower case in two ("İ"): the places moved
            return headed[1].sub(r"\1[redacted]", text)
        found: list[re.Match[str]] = []
        for word in headed[0]:
            at = low.find(word)
            while at >= 0:
                if (header := headed[1].match(text, at)) is not None:
                    found.append(header)
                at = low.find(word, at + 1)
        if not found:
            return text
        found.sort(key=lambda m: m.start())
        out: list[str] = []
        done = 0
        for header in found:
            if header.start() >= done:
                out += (text[done:header.end(1)], "[redacted]")
                done = header.end()
        out.append(text[done:])
        return "".join(out)

    def _in_reply(self, res: ChatResult) -> bool:
        """Whether a long secret is written in one of ``res``'s fields, or a run of it
        (``_SecretRuns``) in its model or finish_reason, as ``_scrub`` takes them out (loops,
        not ``any``: a microsecond less a reply). Not its request id, new each reply: looked
        through for runs, it was most of a microsecond a reply, and a server names its
        requests by its own ids."""
        for f in self._written:
            for v in (res.content, res.request_id, res.model, res.finish_reason,
                      res.reasoning_content, res.choices, res.tool_calls, res.citations,
                      res.logprobs):
                if v and f in v:
                    return True
        if (runs := self._runs) is not None:
            runless = self._runless
            for v in (res.model, res.finish_reason):
                if v and v not in runless:
                    if runs.seen(v) and runs.found(v):
                        return True
                    if len(runless) < _RUNLESS_KEPT:
                        runless.add(v)
        return False

    def _scrubbed(self, res: ChatResult) -> ChatResult:
        """``res`` with its fields scrubbed (``_scrub``); at once when no secret is in them."""
        if not self._secrets:
            return res
        ranked = res.logprobs is not None or bool(res.choices and '"logprobs"' in res.choices)
        if self._short_secrets is None:
            if not self._in_reply(res):
                return res
            found = True
        else:
            found = ranked and self._in_reply(res)
        if found and ranked:
            # The answer wrote a secret: its tokens' log probabilities spell it a token at a
            # time, where no search finds it, so they are not kept.
            res.logprobs = None
            if res.choices:
                choices = orjson.loads(res.choices)
                for c in choices:
                    c.pop("logprobs", None)
                res.choices = orjson.dumps(choices).decode()
        res.request_id = self._scrub(res.request_id)
        res.model = self._scrub(res.model)
        res.finish_reason = self._scrub(res.finish_reason)
        for name in ("content", "reasoning_content", "choices", "tool_calls", "citations",
                     "logprobs"):
            setattr(res, name, self._scrub(getattr(res, name), answer=True))
        return res

    async def complete(self, body: dict[str, Any], timeout_s: float | None = None) -> ChatResult:
        """Send ``body``. ``timeout_s`` (default: the client's) bounds the whole answer, or,
        when the answer is a stream, the wait for its first byte and each gap between its
        chunks, the whole stream given ``STREAM_CAP_X`` times as long at most (or the time its
        max_tokens take at ``_SLOWEST_TOKENS_S``, where longer)."""
        loop = self._loop
        assert self._session is not None and loop is not None, (
            "use ChatClient as an async context manager")
        try:
            data = orjson.dumps(body)
        except TypeError as e:  # a batch row's integer past 64 bits, say
            raise RequestError("invalid_request", f"the request body cannot be sent as JSON "
                               f"({e})", retryable=False) from None
        streaming = body.get("stream") is True
        n = body.get("n")
        choices = n if type(n) is int and n > 1 else 1
        task = asyncio.current_task(loop)
        assert task is not None
        cancelling = task.cancelling()
        start = time.perf_counter()
        limit = timeout_s or self.timeout_s
        deadlines = self._deadlines
        sent = time.monotonic()
        deadlines[task] = sent + limit
        cap = math.inf  # the whole stream's deadline, once the answer is a stream
        status = 0  # no answer yet
        stream: StreamAssembler | None = None
        usage_due = False  # a finished stream's usage chunk is waited for
        usage_wait = 0.0  # for that long
        usage_asked = False  # a stream's usage chunk was asked for (stream_options)
        usage_waited = False  # and is waited for once its answer finished (_usage_waited)
        counted = False  # counted in ``_flying``
        if streaming:
            model = body.get("model")
            name = model if type(model) is str else None
            if name not in self._finishing and name not in self._unfinishing:
                flying = self._flying
                flying[name] = flying.get(name, 0) + 1
                counted = True
        try:
            async with await self._post(data) as resp:
                if resp.history and (stop := self._redirected(resp)):
                    raise stop
                status = resp.status
                headers = resp.headers
                if status != 200 and SIMULATOR_HEADER in headers:
                    self.simulator_seen = True  # an error of its (a completion: _tell_kind)
                # A gateway may answer a stream request with a plain JSON body (an error, as a
                # rule): read it as a non-stream reply; and a request that did not ask for a
                # stream with one (a model it only streams): read as the stream it is.
                kind = headers.get("Content-Type", "")
                if status == 200 and (kind.startswith("text/event-stream") or (
                        streaming and not kind.startswith(("application/json", "text/html")))):
                    stream = StreamAssembler(whole_so_far=_whole_so_far(body))
                    content = resp.content
                    after_finish = min(_AFTER_FINISH_S, limit / 4)
                    options = body.get("stream_options")
                    usage_asked = (streaming and isinstance(options, dict)
                                   and options.get("include_usage") is True)
                    usage_waited = usage_asked and self._usage_waited(loop)
                    # Progress tells: the timeout now bounds each wait for the next bytes
                    # (keep-alive comments count), its deadline pushed on by every chunk and
                    # kept by the watchdog, up to the cap on the whole.
                    now = time.monotonic()
                    cap = sent + _stream_cap(body, limit, choices)
                    deadlines[task] = now + limit if now + limit < cap else cap
                    finished_by = math.inf  # when what may follow the answer is read until
                    last = math.inf  # when the last chunk came (none yet)
                    gap = 0.0  # the longest wait between two of its chunks
                    try:
                        while True:
                            if stream.ended(choices):
                                # The answer is whole (or an error came). The usage chunk
                                # asked for may come late (a gateway in front of a slow
                                # upstream): it is waited for _USAGE_WAIT_S from the finish,
                                # or _USAGE_GAPS_X times the longest gap between the stream's
                                # chunks, the timeout at most, pings not counting. The rest
                                # ([DONE]) comes at once: a server that holds the stream open
                                # without it is not waited for until the timeout (and the
                                # answer paid for again), nor is one that sends keep-alive
                                # comments on: after_finish in all.
                                if finished_by == math.inf:
                                    usage_due = (usage_waited and stream.usage is None
                                                 and stream.error is None)
                                    usage_wait = min(limit, max(_USAGE_WAIT_S,
                                                                _USAGE_GAPS_X * gap))
                                    finished_by = loop.time() + (
                                        usage_wait if usage_due else after_finish)
                                elif usage_due and stream.usage is not None:
                                    usage_due = False
                                    finished_by = min(finished_by, after_finish + loop.time())
                                if not usage_due and self._held_open and (
                                        stream.usage is not None
                                        or self._usage_held is not None):
                                    # Only the [DONE] is to come, which it held back: a moment
                                    # for it (read, it tells that the server sends it).
                                    finished_by = min(finished_by, loop.time() + _DONE_GRACE_S)
                                try:
                                    async with asyncio.timeout_at(finished_by):
                                        chunk = await content.readany()
                                except TimeoutError:
                                    if usage_due:
                                        self._usage_missed(loop, usage_wait)
                                    self._held_open = True
                                    break
                            else:
                                chunk = await content.readany()
                            if not chunk:
                                stream.end()
                                break
                            now = time.monotonic()
                            deadlines[task] = now + limit if now + limit < cap else cap
                            if now - last > gap:
                                gap = now - last
                            last = now
                            stream.feed_bytes(chunk)
                            if stream.done:
                                self._held_open = False  # the server sends its [DONE]
                                break
                    except _EventTooLong:
                        raise BadResponseError(
                            "invalid_body", f"a stream event longer than {_MAX_EVENT >> 20} MiB",
                            retryable=False, status=200,
                            request_id=self._scrub(headers.get("x-request-id")),
                        ) from None
                    except ValueError:
                        raise BadResponseError(
                            "invalid_body", "a stream event that is not JSON", retryable=True,
                            status=200, request_id=self._scrub(headers.get("x-request-id")),
                        ) from None
                    raw = b""
                else:
                    raw = await resp.read()
        except RequestError as e:  # a stream event that cannot be read
            if stream is not None:
                e.answer_begun = stream.answering
            raise
        except StopJob:
            raise
        except asyncio.CancelledError:
            # The watchdog's cancellation, and nobody else's: a timeout, not a stop.
            if not (task in self._expired and task.uncancel() <= cancelling):
                raise
            if stream is None or not stream.ended(choices):
                timeout = TransportError(
                    "timeout", self._timed_out(limit, streaming and not status, stream,
                                               cap - sent if deadlines[task] >= cap else None),
                    retryable=True, usage=_billed_usage(stream.usage) if stream else None)
                timeout.answer_begun = stream is not None and stream.answering
                raise timeout from None
            # Its every choice finished (or an error came) before the deadline, which came
            # while what may follow was waited for (an answer that finished late, held open):
            # whole, taken (the error read).
            if usage_due:
                self._usage_missed(loop, usage_wait)
            self._held_open = True
            raw = b""
        except Exception as e:
            if not (stream is not None and stream.ended(choices)
                    and isinstance(e, aiohttp.ClientError | OSError)):
                error = self._translate(e)
                if stream is not None and isinstance(error, RequestError):
                    # A stream cut after it reported usage (a gateway that sends the usage so
                    # far in every chunk) was billed that much, as one that ended cleanly is.
                    error.usage = _billed_usage(stream.usage)
                    error.answer_begun = stream.answering
                raise error from None
            # Its every choice finished (or an error came) before the connection broke (a
            # proxy that closed it without the body's last chunk): whole, taken, as a stream
            # that ends cleanly without its [DONE] is, not paid for again (the error read).
            raw = b""
        finally:
            del deadlines[task]
            self._expired.discard(task)
            if counted:
                if (left := self._flying[name] - 1) > 0:
                    self._flying[name] = left
                else:
                    del self._flying[name]
        # To the microsecond: the clock's nanoseconds are noise, and a CSV showed all 14 digits.
        latency_ms = round((time.perf_counter() - start) * 1000.0, 3)
        request_id = self._scrub(headers.get("x-request-id"), runs=False)  # every reply's
        if status != 200:
            error = self._status_error(status, raw, headers, request_id, body.get("model"))
            if status == 400 and "stream_options" in body and "stream_options" in error.message:
                if not streaming:  # sent with no stream (a batch file's body): streams' only
                    error.message += (" — stream_options is only for streamed requests: leave "
                                      "it out of the body, or set \"stream\": true")
                else:
                    # An endpoint that does not know the field (Azure's older API versions):
                    # the user never set it, and can leave it out.
                    error.message += (" — stream_options asks for the stream's usage; to send "
                                      "none (tokens and cost then unknown), set stream_options "
                                      "= { include_usage = false } in [request.extra] (in a "
                                      "batch file, \"stream_options\": {\"include_usage\": "
                                      "false} in each body)")
                error.args = (error.message,)
            elif status in (404, 503):
                await self._check_served(error, body.get("model"))
            raise error
        hdrs = _ratelimit_headers(headers)
        if stream is None and raw.removeprefix(_BOM).lstrip()[:5] == b"data:":
            # a stream under another content type, read whole
            stream = _read_stream(raw, _whole_so_far(body))
        if stream is not None:
            if stream.usage is not None and (self._usage_held is not None
                                             or self._usage_misses):
                self._usage_held = None  # the server sends it (again): waited for
                self._usage_misses = 0
            model = body.get("model")
            name = model if type(model) is str else None
            if (stream.done and stream.first.finish_reason is None and stream.error is None
                    and name not in self._finishing and name not in self._unfinishing):
                await self._told(name, limit)
            try:
                res = self._from_stream(stream, request_id, start, latency_ms, hdrs, choices,
                                        name, usage_asked)
            except RequestError as e:
                e.answer_begun = stream.answering
                if e.said_status == 404:
                    await self._check_served(e, body.get("model"))
                raise
        else:
            try:
                res = self._parse(raw, request_id, latency_ms, hdrs, choices)
            except RequestError as e:
                if e.said_status == 404:  # a gateway's 200 {"error": model_not_found}
                    await self._check_served(e, body.get("model"))
                raise
        self._tell_kind(SIMULATOR_HEADER in headers, res)
        return self._scrubbed(res)

    async def _check_served(self, error: RequestError, model: object) -> None:
        """``error``, a 404 naming ``model`` (or a gateway's 503 "No available channel for
        model ...", as for an upstream away, or its 200 with ``model_not_found``): where the
        endpoint's /models (asked once) does not list it, the error names the models it does
        serve and is marked ``model_not_served`` (vLLM serves its --served-model-name, else the
        Hugging Face path it loaded). A 503 for a model it lists is its upstream's outage,
        waited out."""
        if type(model) is not str or not model or model not in error.message:
            return
        served = await self._served_models()
        if served and model not in served:
            # Redacted before it is cut, on one line, as the server's own words are.
            names, more = _served_shown(model, served)
            shown = " ".join(self.redact(", ".join(names)).split())[:_MAX_MESSAGE] + more
            error.message += (f" — the endpoint serves {shown}: set "
                              f"{self._model_setting} to one of them")
            error.args = (error.message,)
            error.model_not_served = True

    def _tell_kind(self, said: bool, res: ChatResult) -> None:
        """A completion (``res``) came, ``said`` to be batchrunner simulate's or not: the first
        tells the endpoint's kind, and one of the other kind after it raises EndpointChanged
        (it is not kept; ``res`` goes with it, for what it cost). Only a completion tells: an
        error answer (a proxy's 502 page, a gateway's 429) may come from what stands in front
        of either kind, and is retried as any."""
        if self._ask_simulator:
            self._ask_simulator = False
            self.simulator_answered = said
        elif said != self.simulator_answered:
            raise EndpointChanged(self.redact(
                f"the endpoint at {self.url} answers as "
                f"{'batchrunner simulate' if said else 'a real endpoint'} now, and as "
                f"{'a real endpoint' if said else 'batchrunner simulate'} before"),
                simulator=said, answer=res)

    def _usage_missed(self, loop: asyncio.AbstractEventLoop, waited: float) -> None:
        """A finished stream was held open for the whole wait (``waited`` s) for the usage
        chunk it asked for, which never came: once ``_USAGE_MISSES`` have been so with none
        brought between, later streams are not waited on for theirs (``_usage_held``). One
        alone was a gateway's hiccup as often as a server that sends none: a server whose
        usage came 0.5 s after every finish but one lost it for the next 30 s (294 rows of 400
        at concurrency 1, their cost unknown)."""
        self._usage_misses += 1
        if self._usage_misses >= _USAGE_MISSES:
            self._usage_held = loop.time() + max(_USAGE_RETRY_S, _USAGE_RETRY_X * waited)

    def _usage_waited(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a stream that asked for its usage chunk is waited on for it: always, but
        after one held open without it (``_usage_held``), until the time set then has come;
        the stream that finds it come waits again, and the others do not for as long again
        (it tells whether the server sends it now)."""
        held = self._usage_held
        if held is None:
            return True
        now = loop.time()
        if now < held:
            return False
        self._usage_held = now + _USAGE_RETRY_S
        return True

    async def _told(self, model: str | None, limit: float) -> None:
        """A stream for ``model`` ended with its ``[DONE]`` before a finish_reason, and no
        stream of the model has yet told whether the endpoint sends one: wait (``limit`` at
        most) for the next to end, when others of the model are in flight. One that comes with a
        finish_reason (``_from_stream``) makes this one a cut; one that ends as this one did
        makes both whole, and the model's later such streams are taken at once. With nothing
        in flight to tell (concurrency 1, say), or nothing told in time, this one is taken as
        cut (``_from_stream``): sent again, the next stream tells, and the model is noted in
        ``_untold`` so that the next to end so makes it the endpoint's way."""
        waiting = self._telling.get(model)
        if waiting is not None or model in self._untold:
            # a second stream ended so: the endpoint's way
            self._unfinishing.add(model)
            if waiting is not None:
                waiting.set()
            return
        if not self._flying.get(model):  # no other stream of the model in flight to tell
            self._untold.add(model)
            return
        told = self._telling[model] = asyncio.Event()
        try:
            try:
                async with asyncio.timeout(limit):
                    await told.wait()
            except TimeoutError:
                self._untold.add(model)
        finally:
            if self._telling.get(model) is told:
                del self._telling[model]

    @staticmethod
    def _timed_out(limit: float, unanswered: bool, stream: StreamAssembler | None,
                   capped: float | None) -> str:
        """What a request that timed out after ``limit`` seconds waited for: the first byte
        of an answer to a stream request (``unanswered``), a whole answer that is no stream,
        the next bytes of a stream, or its end past the cap (``capped``: its seconds)."""
        if stream is None:
            return (f"no byte of the answer within {limit:g} s" if unanswered
                    else f"no complete answer within {limit:g} s")
        if capped is not None:
            why = (f"{STREAM_CAP_X:g} × its {limit:g} s timeout"
                   if capped <= limit * STREAM_CAP_X else
                   f"its max_tokens at {_SLOWEST_TOKENS_S:g} tokens a second")
            return (f"the stream was still sending at {capped:g} s, the most a streamed answer "
                    f"is given ({why})")
        if not stream.begun:
            return f"the stream sent nothing within {limit:g} s of its headers"
        if not stream.answering:
            return f"the stream stalled before its answer began: nothing came for {limit:g} s"
        return f"the stream stalled: nothing came for {limit:g} s mid-answer"

    def _from_stream(self, st: StreamAssembler, request_id: str | None, start: float,
                     latency_ms: float, headers: dict[str, str], choices: int,
                     model: str | None = None, usage_asked: bool = False) -> ChatResult:
        billed = _billed_usage(st.usage)
        if st.error is not None:  # read like an error body: its words may stop the job
            raise self._error_in_200({"error": st.error, "usage": st.usage}, request_id,
                                     kind="stream_error")
        if not st.done and not st.closed_whole(choices):
            # Closed without its [DONE] before its answer finished (with fewer choices than
            # ``n`` and no usage, one finished choice may be a cut stream's first).
            if not st.begun:  # not a byte came
                raise BadResponseError("invalid_body", "HTTP 200 with an empty body",
                                       retryable=True, status=200, request_id=request_id)
            body = st.stray_body()
            if body is not None and body.get("error"):  # an error body, not a stream
                raise self._error_in_200(body, request_id)
            if body is not None and body.get("choices") and st.stray:
                # A whole completion, not a stream (a proxy that sent it as text/plain, say):
                # read as one, not retried as a cut stream and paid for again.
                return self._parse(b"\n".join(st.stray), request_id, latency_ms, headers,
                                   choices)
            # A stream whose every choice finished is whole without its [DONE] (a server or
            # proxy that leaves it out): taken, not paid for twice.
            raise TransportError("stream_cut", "the stream ended before its answer did (no "
                                 "finish_reason, no [DONE])", retryable=True,
                                 request_id=request_id, usage=billed)
        first = st.first
        if first.finish_reason is not None:
            self._finishing.add(model)
            if self._telling and (waiting := self._telling.pop(model, None)) is not None:
                waiting.set()  # a stream that ended without one is a cut
        if (why := _gave_up(first.finish_reason)) is not None:
            raise self._aborted(why, request_id, billed)
        calls = first.tool_calls()
        if first.finish_reason is None and not first.content and calls is None:
            raise BadResponseError("no_choices", "a stream without choices", retryable=True,
                                   status=200, request_id=request_id, usage=billed)
        if first.finish_reason is None and model not in self._finishing and (
                model not in self._unfinishing):
            # Its [DONE] came before a finish_reason, and no other stream of the model told
            # whether the endpoint sends one (``_told``): taken as cut, sent again; the next
            # stream tells. A half answer is not taken as whole on a guess.
            raise TransportError("stream_cut", "the stream ended ([DONE]) before its answer "
                                 "did: no finish_reason, and no other answer of the model yet "
                                 "to tell whether the endpoint sends one", retryable=True,
                                 request_id=request_id, usage=billed)
        if first.finish_reason is None and usage_asked and model not in self._finishing:
            # The endpoint's way for the model (``_unfinishing``), but for its usage chunk:
            # one that came with it tells that the endpoint sends it; then one without it is
            # cut (a gateway that closed a broken upstream's stream knew no usage to send).
            if st.usage is not None:
                self._usage_whole.add(model)
            elif model in self._usage_whole:
                raise TransportError("stream_cut", "the stream ended ([DONE]) before its answer "
                                     "did: no finish_reason, as the endpoint's answers for the "
                                     "model have none, but no usage chunk either, which they "
                                     "had", retryable=True, request_id=request_id, usage=billed)
        if model in self._finishing and (first.finish_reason is None or (
                st.others is not None
                and any(p.finish_reason is None for p in st.others.values()))):
            # Its [DONE] came before its answer finished, where the endpoint's other answers
            # for the model had their finish_reason: a gateway that closed a broken upstream
            # so (its answer cut). A server that never sends one has its answers taken whole.
            raise TransportError("stream_cut", "the stream ended ([DONE]) before its answer "
                                 "did: no finish_reason, which the endpoint's other answers "
                                 "for the model had", retryable=True, request_id=request_id,
                                 usage=billed)
        (pt, ct, tt, cached, reasoning, searches, sources, written, written_1h, heard,
         spoken) = _usage(st.usage)
        text, thought = _thought_apart(first.text(), "".join(first.reasoning) or None)
        return ChatResult(
            content=text or None, finish_reason=first.finish_reason, prompt_tokens=pt,
            completion_tokens=ct, total_tokens=tt, cached_tokens=cached,
            reasoning_tokens=reasoning, model=st.model, request_id=request_id or st.id,
            latency_ms=latency_ms, headers=headers,
            reasoning_content=thought,
            ttft_ms=round((st.first_token_at - start) * 1000.0, 3) if st.first_token_at else None,
            choices=st.all_choices() if st.others or choices > 1 else None,
            tool_calls=orjson.dumps(calls).decode() if calls else None,
            citations=_citations(first.annotations, st.cited)
            if first.annotations or st.cited else None,
            refusal="".join(first.refusal) or None,
            web_searches=searches, sources_used=sources,
            cache_write_tokens=written, cache_write_1h_tokens=written_1h,
            logprobs=orjson.dumps(first.logprobs).decode() if first.logprobs else None,
            service_tier=st.service_tier,
            audio_prompt_tokens=heard, audio_completion_tokens=spoken,
        )

    async def _served_models(self) -> list[str] | None:
        """The models the endpoint lists (``GET /models``), asked once a run however many
        requests want them; None when it lists none or cannot be asked."""
        if self._served is None:
            self._served = asyncio.ensure_future(self._list_models())
        return await asyncio.shield(self._served)

    async def _list_models(self) -> list[str] | None:
        assert self._session is not None
        try:
            async with asyncio.timeout(min(_SERVED_WAIT_S, self.timeout_s)):
                async with self._session.get(
                        self.url.removesuffix("/chat/completions") + "/models",
                        proxy=self._proxy_url) as resp:
                    if resp.status != 200:
                        return None
                    listed = orjson.loads(await resp.read())
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None
        data = listed.get("data") if type(listed) is dict else None
        if type(data) is not list:
            return None
        return [m["id"] for m in data if type(m) is dict and type(m.get("id")) is str] or None

    def _aborted(self, why: str, request_id: str | None, usage: Usage | None
                 ) -> BadResponseError:
        """The error for an answer the server gave up on (``_gave_up``): retried, as another
        try may be answered whole, its billed ``usage`` kept."""
        return BadResponseError(
            "answer_aborted",
            self.redact(" ".join(f"the server gave up on the answer before it ended "
                                 f"(finish_reason {why})".split()))[:_MAX_MESSAGE],
            retryable=True, status=200, request_id=request_id, usage=usage)

    def expect_simulator(self) -> None:
        """Take only batchrunner simulate's completions (the job's rows done are its answers
        at this URL): from the first on, one without its header raises EndpointChanged."""
        self._ask_simulator = False
        self.simulator_answered = True

    async def _post(self, data: bytes) -> aiohttp.ClientResponse:
        """The answer to ``data`` posted to the endpoint, its headers read.

        Where ``_target`` is set, the request is written to a connection from the connector's
        pool: the head the session's request would write, made once (``_direct_parts``), its
        Content-Length, and ``data``; aiohttp's response reads the answer. That skips what
        the session does around a request that a completion needs none of (its cookie jar,
        tracing, middlewares, per-request timer, and the thirty-odd options it merges with
        its own), and what aiohttp's request does to build and write one: its headers merged
        and written anew, its body's payload, and on Python 3.11 a task to write the body.
        About 30 µs of CPU a request (benchmarks/README.md). Until
        then, and for good once a request so posted is redirected by a 307 or 308 on the same
        host, requests are the session's (which follows it); another redirect stops the job,
        or fails the request, unsent again."""
        session = self._session
        target = self._target
        assert session is not None
        if target is None:
            # proxy= only where there is one: the keyword, None, is matched against aiohttp's
            # thirty-odd parameters on every request (some 1,000 instructions).
            if self._proxy_url is not None:
                return await session.post(self.url, data=data, proxy=self._proxy_url)
            resp = await session.post(self.url, data=data)
            if not resp.history:
                self._target = self._postable  # answered where it was sent
            return resp
        connector = self._connector
        direct = self._direct
        assert connector is not None and direct is not None
        request, request_info, head, tail = direct
        try:
            try:
                conn = await connector.connect(request, traces=[], timeout=self._timeout)
            except TimeoutError as e:  # sock_connect's, as the session's post words it
                raise aiohttp.ConnectionTimeoutError(
                    f"Connection timeout to host {request.url}") from e
            try:
                protocol = conn.protocol
                transport = conn.transport
                assert protocol is not None
                if transport is None or transport.is_closing():  # as aiohttp's writer words it
                    raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
                protocol.set_response_params(timer=_NO_TIMER, read_until_eof=True,
                                             read_bufsize=_READ_BUFSIZE)
                length = b"%d" % len(data)
                # write(), never writelines(): Python's own loop's writelines did not pause
                # the protocol past the high-water mark before 3.12.9 and 3.13.2 (aiohttp
                # keeps off it there), and in some versions lacks write's check for a lost
                # connection (CPython gh-127655, gh-136234). A body up to
                # _JOINED_MAX goes with its head in one write (one send); a bigger one is
                # written after it, not copied whole into a joined one.
                if len(data) <= _JOINED_MAX:
                    transport.write(b"".join((head, length, tail, data)))
                else:
                    transport.write(b"".join((head, length, tail)))
                    transport.write(data)
                # Most requests go out whole at once; a big body's rest goes as the server
                # reads it (``_sent_whole``: the response waits for it, or closes the
                # connection when it cannot be sent). Not over TLS, whose layer takes the
                # whole body and never pauses the protocol: there, as with the session's
                # request, a big body answered early and unread leaves its rest ahead of the
                # next request on the connection, which fails (connection_reset, retried).
                writer = (request.loop.create_task(_sent_whole(conn)) if protocol._paused
                          else None)
                if _RESPONSE_TAKES_WRITER:
                    written = _Written(len(head) + len(length) + len(tail) + len(data))
                    resp = aiohttp.ClientResponse(
                        "POST", target, writer=writer, continue100=None, timer=_NO_TIMER,
                        request_info=request_info, traces=[], loop=request.loop,
                        session=session, stream_writer=written)  # type: ignore[arg-type]
                else:  # aiohttp 3.13 and older
                    resp = aiohttp.ClientResponse(  # type: ignore[call-arg]
                        "POST", target, writer=writer, continue100=None, timer=_NO_TIMER,
                        request_info=request_info, traces=[], loop=request.loop,
                        session=session)
                try:
                    await resp.start(conn)
                except BaseException:
                    resp.close()
                    raise
            except BaseException:
                conn.close()
                raise
        except aiohttp.ClientError:
            raise
        except OSError as e:  # as the session's post turns them
            if e.errno is None and isinstance(e, TimeoutError):
                raise
            raise aiohttp.ClientOSError(*e.args) from e
        if resp.status in _REDIRECTS and (
                (location := resp.headers.get("Location") or resp.headers.get("URI"))
                is not None):
            # The session would follow it: as a GET without the body after a 301, 302 or 303
            # (the request may have been carried out: a 303 says so), or to another host, which
            # is not sent the key; either stops the job (_redirected), stopped here unsent. A
            # 307 or 308 the server did not carry out is sent again by the session, which
            # follows it and every later redirect.
            resp.release()
            # A Location that is no http(s) URL: the session's error for it, not sent again.
            end: URL | None
            try:
                end = target.join(URL(location))
            except ValueError:
                end = None
            if end is not None and end.scheme not in ("http", "https"):
                raise aiohttp.NonHttpUrlRedirectClientError(location)
            try:
                if end is not None:
                    end.origin()
            except ValueError:
                end = None
            if end is None:
                raise aiohttp.InvalidUrlRedirectClientError(
                    location, "Server attempted redirecting to a location that does not look "
                    "like a URL")
            stop = self._redirect_stop(resp.status, target,
                                       "POST" if resp.status in (307, 308) else "GET", end)
            if stop is not None:
                raise stop
            self._target = self._postable = None
            return await session.post(self.url, data=data)
        return resp  # a redirect with nowhere to go, not followed, as the session's

    def _redirected(self, resp: aiohttp.ClientResponse) -> StopJob | None:
        """The error that stops the job when the endpoint redirected the request where it
        cannot be answered (every request would go the same way): a 301, 302 or 303 turns the
        POST into a GET without its body (the server's answer to it, a 405 or a 404, failed
        every row as if the rows were wrong), and a redirect to another host (``http://`` to
        ``https://``, say) is not sent the API key (a 401 then blamed the key). None for a
        307 or 308 on the same host, or to another when no key is sent (a server on this
        machine that wants none), followed as it should be."""
        first = resp.history[0]
        return self._redirect_stop(first.status, first.url, resp.method, resp.url)

    def _redirect_stop(self, status: int, start: URL, method: str, end: URL) -> StopJob | None:
        """``_redirected``'s error for a request sent to ``start``, redirected (HTTP
        ``status``) to ``end``, where it is sent as ``method``."""
        if method == "POST" and (self._keyless or end.origin() == start.origin()):
            return None
        why = ("another host is not sent the API key" if end.origin() != start.origin()
               else f"the redirect turns the POST into a {method} without its body")
        to = str(end.with_query(None).with_fragment(None))
        base = to.removesuffix("/chat/completions") if to.endswith("/chat/completions") \
            else None
        fix = f"set the base URL to {base}" if base else "check the base URL"
        return Unreachable(self.redact(
            f"the endpoint redirected the request (HTTP {status} to {to}): {why} — "
            f"{fix}, then rerun to resume"))

    def _translate(self, e: BaseException) -> RequestError | StopJob:
        if isinstance(e, aiohttp.TooManyRedirects):  # a loop: every request would go round it
            return Unreachable(self.redact(
                f"the endpoint redirected the request {len(e.history)} times without answering "
                f"(from {self.url}) — check the base URL, then rerun to resume"))
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
                "connection_reset",
                self.redact(f"the connection broke mid-request ({_reason(e)})"),
                retryable=True,
            )
        if isinstance(e, aiohttp.ClientResponseError) and (
                m := _UNREADABLE_ENCODING.search(str(e.message))):
            # An encoding the request did not offer, which aiohttp reads only with a package
            # not installed: every answer would be billed and thrown away.
            return Unreachable(self.redact(
                f"the endpoint sent its answer compressed as {m['encoding']} (Content-Encoding), "
                f"which the request did not offer and this installation cannot read — install "
                f"the {m['package']} package where batchrunner runs (pip install "
                f"{m['package']}), or have the proxy or server send it uncompressed, then "
                "rerun to resume"))
        if isinstance(e, aiohttp.ClientError):
            return TransportError(
                "client_error", self._library_message(e)[:_MAX_MESSAGE],
                retryable=True,
            )
        return TransportError(
            "client_error", self._library_message(e)[:_MAX_MESSAGE], retryable=False
        )

    def _status_error(
        self, status: int, raw: bytes, headers: Any, request_id: str | None,
        model: Any = None,
    ) -> RequestError:
        code: str | None = None
        etype: str | None = None
        message: str
        gstatus: str | None = None
        refused_key = False
        try:
            payload = _loads(raw.removeprefix(_BOM))
            if isinstance(payload, list) and payload:  # Gemini's OpenAI endpoint: [{"error"}]
                payload = payload[0]
            err = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(err, dict):
                message = str(err.get("message") or "")
                code = err.get("code") if isinstance(err.get("code"), str) else None
                etype = err.get("type") if isinstance(err.get("type"), str) else None
                gstatus = err.get("status") if isinstance(err.get("status"), str) else None
                if status == 400 and type(details := err.get("details")) is list and any(
                        type(d) is dict and d.get("reason") in _KEY_REASONS for d in details):
                    refused_key = True  # Gemini's 400 "API key not valid": the key's, as a 401
            elif isinstance(err, str):
                message = err
            elif isinstance(payload, dict) and isinstance(
                    said := payload.get("message") or payload.get("detail"), str):
                # vLLM's {"object": "error", "message"}, FastAPI's {"detail"}: not the body's
                # JSON text, cut at _MAX_MESSAGE, but what it says
                message = said
            else:
                message = raw[:_SCAN].decode("utf-8", "replace")
        except (ValueError, AttributeError):
            if (title := _html_title(raw)) is not None:
                message = f"HTML error page from the gateway ({title})"
            else:
                message = raw[:_SCAN].decode("utf-8", "replace")
        # Redact before cutting, so a key that straddles the cut cannot survive in part.
        message = self.redact(" ".join(message.split()))[:_MAX_MESSAGE] or f"HTTP {status}"
        if status == 404 and "model" not in message.lower() and (
                (code is None and etype is None) or message.startswith("Invalid URL")):
            # Not an API's error (no code or type, no model named), or OpenAI's own for a path
            # it has not ("Invalid URL (POST /chat/completions)", gateways' alike): a wrong path.
            message += (f" — nothing at {self.redact(self.url)}: check the base URL (most "
                        "end in /v1)")
        elif status == 501 and code is None and etype is None:
            # Not an API's error: a web server that takes no POST there (a static file server).
            message += (f" — no chat completions at {self.redact(self.url)}: check the base "
                        "URL (most end in /v1)")
        retry_after = _retry_after(headers)
        if status == 407 and (stop := self._proxy_refused(status, message)):
            raise stop
        if halt := _stop_job(401 if refused_key else status, f"HTTP {status}", code, etype,
                             message, gstatus,
                             key_origin=self._key_origin, keyless=self._keyless,
                             key_hint=self._key_hint,
                             model=self.redact(model) if isinstance(model, str) else None):
            raise halt
        if status == 429 and "request too large for" in message.lower():
            # OpenAI's 429 for one request larger than the tokens-per-minute limit: no wait
            # lets it through; the row's prompt or max_tokens must be made smaller.
            return HTTPStatusError(
                "request_too_large", message, retryable=False, status=status,
                request_id=request_id)
        if status == 429:
            return HTTPStatusError(
                "rate_limited", message, retryable=True, retry_after=retry_after, status=status,
                request_id=request_id, headers=_ratelimit_headers(headers),
            )
        return HTTPStatusError(
            f"http_{status}", message, retryable=is_retryable_status(status),
            retry_after=retry_after, status=status, request_id=request_id,
        )

    def _error_in_200(self, payload: dict[str, Any], request_id: str | None,
                      kind: str = "error_body") -> RequestError:
        """A 200 whose body is ``{"error": {...}}`` (or a stream's error event, ``kind``
        ``stream_error``): a gateway passing on its upstream's failure. Retried like the failure
        it names: a numeric ``code``, or a known error word in ``code``, ``type`` or ``status``
        (``_ERROR_WORDS``), is read as that HTTP status (a 400 is not retried, a 401 stops the
        job); anything else is a server-side failure, retried."""
        err = payload["error"]
        names = ("code", "type", "status")
        if isinstance(err, dict):
            text = str(err.get("message") or "")
            code, etype, gstatus = (err.get(f) for f in names)
        else:
            text = str(err)
            code = etype = gstatus = None
        fields = list(zip(names, (code, etype, gstatus), strict=True))
        text = " ".join(text.split())
        message = self.redact(text)[:_MAX_MESSAGE] or "no message"
        status = code if type(code) is int else (
            int(code) if isinstance(code, str) and code.isascii() and code.isdigit() else None)
        if status is not None and not 400 <= status < 600:
            status = None
        # The field the message names: the word that decided the status, else the first given.
        shown = next(((f, v) for f, v in fields if v is not None and v != ""), None)
        if status is None:
            for f, v in fields:
                if isinstance(v, str) and v in _ERROR_WORDS:
                    status, shown = _ERROR_WORDS[v], (f, v)
                    break
        # Everything from the body is redacted before it is cut, the code and type included.
        named = self.redact(" ".join(str(shown[1]).split()))[:80] if shown else ""
        if stop := _stop_job(status or 200, self.redact(f"HTTP 200 with error {named}".strip()),
                             code if isinstance(code, str) else None,
                             etype if isinstance(etype, str) else None, message,
                             gstatus if isinstance(gstatus, str) else None,
                             key_origin=self._key_origin, keyless=self._keyless,
                             key_hint=self._key_hint):
            raise stop
        if shown is not None and named not in text:
            message = self.redact(f"{text or 'no message'} ({shown[0]} {named})")[:_MAX_MESSAGE]
        if status == 429:  # the upstream's rate limit: paced like a 429, not a failure
            return BadResponseError("rate_limited", message, retryable=True, status=200,
                                    request_id=request_id)
        error = BadResponseError(
            kind, message,
            retryable=status is None or is_retryable_status(status),
            status=200, request_id=request_id, usage=_billed_usage(payload.get("usage")),
        )
        error.said_status = status
        return error

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
        # Redacted before it is cut: a proxy's reason phrase comes here whole.
        said = " ".join(self.redact(message).split())[:_MAX_MESSAGE]
        return AuthError(self.redact(
            f"the proxy {self._proxy_shown()} refused the request (HTTP {status} {said}) — {fix}"))

    def _parse(
        self, raw: bytes, request_id: str | None, latency_ms: float, headers: dict[str, str],
        asked: int = 1,
    ) -> ChatResult:
        """A whole reply's body as a ``ChatResult``; ``asked``: the choices the request asked
        for (``n``): more than one gives ``choices`` however many came."""
        try:
            try:  # a call less on every reply than _loads, which orjson's refusals go to
                payload = orjson.loads(raw.removeprefix(_BOM))
            except ValueError:
                payload = _loads(raw.removeprefix(_BOM))
        except ValueError:
            if not raw.strip():
                said = "HTTP 200 with an empty body"
            elif (title := _html_title(raw)) is not None:
                # Every request meets it: a network's or a proxy's sign-in page, or a web
                # page where the base URL points.
                said = self.redact(
                    f"HTTP 200 with an HTML page, not JSON ({title}): a sign-in page of the "
                    "network or a proxy, or a web page at the base URL?")[:_MAX_MESSAGE]
            else:
                said = "HTTP 200 with a body that is not JSON"
            error = BadResponseError("invalid_body", said, retryable=True, status=200,
                                     request_id=request_id)
            # A JSON object begun, cut or garbled on its way (a proxy): an answer, generated
            # and billed, which a sign-in page or an empty body is not.
            error.answer_begun = raw.lstrip()[:1] == b"{"
            raise error from None
        if not isinstance(payload, dict):
            raise BadResponseError(
                "invalid_body", "HTTP 200 with a JSON body that is not an object", retryable=True,
                status=200, request_id=request_id,
            )
        choices = payload.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            if payload.get("error"):
                raise self._error_in_200(payload, request_id)
            raise BadResponseError(
                "no_choices", "HTTP 200 without choices", retryable=True, status=200,
                request_id=request_id, usage=_billed_usage(payload.get("usage")),
            )
        choice = choices[0]
        finish = choice.get("finish_reason")
        usual = finish in _USUAL_FINISH  # read as they are, without a call
        if not usual and (why := _gave_up(finish)) is not None:
            raise self._aborted(why, request_id, _billed_usage(payload.get("usage")))
        message = choice.get("message")
        if not isinstance(message, dict):
            if not finish:
                raise BadResponseError(
                    "no_choices", "HTTP 200 with a choice that has no message", retryable=True,
                    status=200, request_id=request_id,
                    usage=_billed_usage(payload.get("usage")),
                )
            message = {}
        content = message.get("content")
        (pt, ct, tt, cached, reasoning, searches, sources, written, written_1h, heard,
         spoken) = _usage(payload.get("usage"))
        thought = message.get("reasoning_content") or message.get("reasoning")
        if type(content) is list:  # Mistral's Magistral: text and thinking parts
            content, thinking = _content_parts(content)
            thought = thought or thinking
        elif not thought and type(content) is str and "think>" in content:
            content, thought = _thought_apart(content, None)  # no reasoning parser (vLLM's)
        calls = message.get("tool_calls")
        if content == "" and calls:
            content = None  # a reply that only calls tools, as a stream's (and OpenAI's) is
        elif not content:
            content = _transcript(message)  # a spoken answer's words, where it has no text
        refusal = message.get("refusal")  # structured output the model would not give
        notes = message.get("annotations")  # OpenAI's web search: url_citation
        cited = payload.get("citations")  # Grok's live search, Perplexity: URLs
        model = payload.get("model")
        tokens = _token_logprobs(choice.get("logprobs")) if choice.get("logprobs") else None
        # Every field by position, in ChatResult's order: a call naming its 20 arguments cost
        # some 8,700 instructions more a reply (matching the names), a seventieth of a request.
        return ChatResult(
            content if isinstance(content, str) and content else None,  # content: null if none
            finish if usual else _finish_reason(finish),  # finish_reason
            pt, ct, tt, cached, reasoning,  # prompt, completion, total, cached, reasoning tokens
            model if isinstance(model, str) else None,  # model
            request_id or (rid if isinstance(rid := payload.get("id"), str) else None),
            latency_ms,
            headers,
            thought if isinstance(thought, str) and thought else None,  # reasoning_content
            None,  # ttft_ms: a stream's
            _all_choices(choices) if asked > 1 or len(choices) > 1 else None,  # choices
            orjson.dumps(calls).decode() if calls and type(calls) is list else None,  # tool_calls
            _citations(notes, cited) if notes or cited else None,  # citations
            refusal if isinstance(refusal, str) and refusal else None,  # refusal
            searches,  # web_searches
            sources,  # sources_used
            written,  # cache_write_tokens
            written_1h,  # cache_write_1h_tokens
            orjson.dumps(tokens).decode() if tokens else None,  # logprobs
            tier if type(tier := payload.get("service_tier")) is str and tier else None,
            heard,  # audio_prompt_tokens
            spoken,  # audio_completion_tokens
        )


def _served_shown(model: str, served: list[str]) -> tuple[list[str], str]:
    """The models of ``served`` a 404 for ``model`` names, and what it says of the others:
    all of a few; of a gateway's many (hundreds), those whose names are closest to the one
    asked for (a typo's, a version's spelling: ``claude-sonnet-4.5``), those that begin as it
    does first, else the first listed."""
    if len(served) <= _SERVED_SHOWN:
        return served, ""
    asked = _name_key(model)
    keys: dict[str, str] = {}
    for name in served:
        keys.setdefault(_name_key(name), name)
    close = difflib.get_close_matches(asked, keys, 4 * _SERVED_SHOWN, 0.5)
    if not close:
        return served[:_SERVED_SHOWN], f" and {len(served) - _SERVED_SHOWN} more"
    close.sort(key=lambda k: -_same_start(asked, k))  # stable: by likeness next
    return ([keys[k] for k in close[:_SERVED_SHOWN]],
            f" (the closest to {model} of its {len(served)} models)")


def _same_start(a: str, b: str) -> int:
    """How many characters ``a`` and ``b`` begin with alike."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _name_key(model: str) -> str:
    """A model's name as names are compared: lower case, its dots and underscores dashes."""
    return model.lower().replace(".", "-").replace("_", "-")


def _stream_cap(body: dict[str, Any], limit: float, choices: int) -> float:
    """The seconds a whole stream is given: ``STREAM_CAP_X`` times its timeout, or, where
    longer, the time the tokens it asks for (``max_tokens``, or ``max_completion_tokens``,
    times the ``choices``: a gateway may stream them one after another) take at
    ``_SLOWEST_TOKENS_S``."""
    cap = limit * STREAM_CAP_X
    tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    if type(tokens) is int and tokens * choices > cap * _SLOWEST_TOKENS_S:
        return tokens * choices / _SLOWEST_TOKENS_S
    return cap


def _html_title(raw: bytes) -> str | None:
    """The title of the HTML page ``raw`` is ("no title" if it has none), on one line; None
    if it is not one."""
    head = raw[:2048].lower()
    if b"<html" not in head and b"<!doctype" not in head:
        return None
    m = _TITLE.search(raw[:4096])
    return " ".join(m.group(1).decode("utf-8", "replace").split()) if m else "no title"


def _read_stream(raw: bytes, whole_so_far: bool) -> StreamAssembler | None:
    """``raw`` read as a whole SSE stream; None if it is not one (``_parse`` then says so)."""
    st = StreamAssembler(whole_so_far=whole_so_far)
    try:
        st.feed_bytes(raw)
        st.end()
    except (ValueError, _EventTooLong):
        return None
    return st


# RATELIMIT_HEADERS's limits under other names, looked for when a reply has none of those:
# Anthropic's (its OpenAI-compatible endpoint, and gateways that pass them through), whose token
# budget the limiter takes from its input tokens' (its one budget is charged mostly with input),
# else its tokens' (the tighter of input and output); and limits named with their period
# (Cerebras's x-ratelimit-limit-tokens-minute; a -day limit is a quota, no pace).
_OTHER_RATELIMIT_HEADERS = tuple(
    (f"{prefix}{what}{suffix}", f"x-ratelimit-{what}-{kind}")
    for prefix, kind, suffix in (
        ("anthropic-ratelimit-requests-", "requests", ""),
        ("anthropic-ratelimit-tokens-", "tokens", ""),
        ("anthropic-ratelimit-input-tokens-", "tokens", ""),  # later: taken over tokens-
        ("x-ratelimit-", "requests", "-requests-minute"),
        ("x-ratelimit-", "tokens", "-tokens-minute"))
    for what in ("limit", "remaining", "reset"))


def _stop_job(status: int, said: str, code: str | None, etype: str | None, message: str,
              gstatus: str | None = None, *, key_origin: str | None = None,
              keyless: bool = False, key_hint: str = "",
              model: str | None = None) -> StopJob | None:
    """The error that stops the job for an answer every other request would get too: a
    refused key (401/403: ``key_origin`` says where it was read, ``model`` what was asked
    for; ``keyless``: none was sent, ``key_origin`` names the variable, ``key_hint`` another
    that holds one), no money left (402, 429 ``insufficient_quota``), an account that cannot
    use the API (Google's ``FAILED_PRECONDITION``, ``gstatus``); else None."""
    if ("FAILED_PRECONDITION" in (code, etype, gstatus) and status < 500
            and _ACCOUNT.search(message)):
        said = said if said.endswith("FAILED_PRECONDITION") else f"{said} FAILED_PRECONDITION"
        return AccountError(
            f"the endpoint refused the request for the account, not the row ({said}: "
            f"{message}) — Gemini answers this when billing is not enabled for the project or "
            "the API is not offered in the caller's region: enable billing (or call from a "
            "region it serves), then rerun to resume")
    if status == 403 and _UNSERVED_PLACE.search(f"{code} {etype} {message}"):
        # OpenAI's unsupported_country_region_territory: the caller's place, not the key.
        said = f"{said} {code}" if code and not said.endswith(code) else said
        return AccountError(
            f"the endpoint does not serve requests from where this runs ({said}: {message}) "
            "— run the job from a country or region it serves (or through a gateway there), "
            "then rerun to resume")
    if status in (401, 403):
        balance = bool(_BALANCE.search(message))
        # (FastAPI's HTTPBearer answers a request without a key with 403 Not authenticated.)
        if keyless and (status == 401 or not balance):
            return AuthError(f"the endpoint wants an API key ({said}: {message}) — none was "
                             f"sent: set {key_origin or 'OPENAI_API_KEY'} in the environment "
                             f"or a .env file{key_hint}, then rerun to resume", status=status)
        if balance:
            fix = ("the account's balance or quota looks used up: top up the balance (or raise "
                   "the key's quota), then rerun to resume")
        else:
            key = f"the key ({key_origin})" if key_origin else "the key"
            # A 401 is the key's own (unknown, revoked, expired); a 403 may be its access to
            # the model asked for only.
            fix = (f"check {key}, then rerun to resume" if status == 401
                   else f"check {key} and its access to {model or 'this model'}")
        return AuthError(f"the endpoint refused the API key ({said}: {message}) — {fix}",
                         status=status, model_access=status == 403 and not balance)
    if status == 402:
        return QuotaError(f"the account is out of balance ({said} Payment Required: {message}) "
                          "— top up the balance, then rerun to resume")
    if (named := code if code in _NO_MONEY else etype if etype in _NO_MONEY else None) or (
            status == 429 and _NO_BALANCE.search(message)):
        said = f"{said} {named}" if named and not said.endswith(named) else said
        return QuotaError(f"the account is out of quota or balance ({said}: {message}) — top "
                          "up the balance or raise the quota, then rerun to resume")
    return None


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
    """The ``x-ratelimit-*`` headers the limiter learns from (names in lower case), or their
    like under another name (Anthropic's ...), given the ``x-ratelimit-*`` name."""
    found = {name: v for name in RATELIMIT_HEADERS if (v := headers.get(name)) is not None}
    if found or ("anthropic-ratelimit-requests-remaining" not in headers
                 and "x-ratelimit-remaining-tokens-minute" not in headers):
        return found
    return {name: v for other, name in _OTHER_RATELIMIT_HEADERS
            if (v := headers.get(other)) is not None}


def _content_parts(content: list[Any]) -> tuple[str | None, str | None]:
    """The text and the thinking of a message's (or a delta's) content given as a list of parts,
    as Mistral's reasoning models (Magistral) send it: ``{"type": "text", "text"}`` parts are
    the content, ``{"type": "thinking", "thinking": [{"type": "text", "text"}]}`` parts the
    reasoning; each joined, None where there is none. Read as a string only, such an answer was
    an ok row with no content."""
    text: list[str] = []
    thought: list[str] = []
    for part in content:
        if type(part) is not dict:
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(t := part.get("text"), str):
            text.append(t)
        elif kind == "thinking":
            inner = part.get("thinking")
            if isinstance(inner, str):
                thought.append(inner)
            elif type(inner) is list:
                thought.extend(t for p in inner
                               if type(p) is dict and isinstance(t := p.get("text"), str))
    return "".join(text) if text else None, "".join(thought) if thought else None


# The finish_reasons of nearly every reply, which neither ``_gave_up`` nor ``_finish_reason``
# changes: compared first, they save the two calls (some 2,800 instructions a reply). A tuple,
# as a reason may be a value that cannot be hashed (an object).
_USUAL_FINISH = ("stop", "length", "tool_calls", None)


# Anthropic's stop_reasons and Gemini's finishReasons, which a gateway that maps them only in
# part passes on (one-api's forks give Claude's "max_tokens", "end_turn" and "tool_use" as
# they are), as OpenAI names them: a reply cut at max_tokens is a "length" one, and one its
# safety checks stopped (Claude's "refusal", Gemini's blocks) a "content_filter" one, whatever
# the gateway.
_FINISH_NAMES = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "tool_use": "tool_calls", "refusal": "content_filter", "STOP": "stop",
                 "MAX_TOKENS": "length", "SAFETY": "content_filter",
                 "RECITATION": "content_filter", "PROHIBITED_CONTENT": "content_filter",
                 "BLOCKLIST": "content_filter", "SPII": "content_filter"}


def _finish_reason(value: Any) -> str | None:
    """A choice's ``finish_reason`` as text, in OpenAI's words (``_FINISH_NAMES``): a server's
    odd value (a list, an object, a number) is kept as its JSON text, as the journal's column
    holds text only (one such reply would otherwise fail the journal's write, and the run with
    it)."""
    if value is None:
        return value
    if isinstance(value, str):
        return _FINISH_NAMES.get(value, value)
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # not JSON (cannot come from a parsed body): its text
        return str(value)


def _gave_up(value: Any) -> str | None:
    """What a choice's ``finish_reason`` says when the server gave up on its answer
    (``_GAVE_UP``; an object's ``type`` and ``message``, as SGLang sends them, as the object or
    its JSON text), else None."""
    if isinstance(value, str):
        if value.lower() in _GAVE_UP:
            return value
        if not value.startswith("{"):
            return None
        try:  # an object kept as its JSON text (a stream's, ``_finish_reason``)
            value = orjson.loads(value)
        except ValueError:
            return None
    if type(value) is not dict:
        return None
    kind = value.get("type")
    if not (isinstance(kind, str) and kind.lower() in _GAVE_UP):
        return None
    said = value.get("message")
    return f"{kind}: {said}" if isinstance(said, str) and said else kind


def _transcript(message: dict[str, Any]) -> str | None:
    """The words of a spoken answer (``modalities`` with ``audio``: OpenAI's
    ``message.audio.transcript``, the content null); None for a message with none."""
    audio = message.get("audio")
    if type(audio) is dict and type(words := audio.get("transcript")) is str and words:
        return words
    return None


def _choice_entry(index: Any, content: Any, finish_reason: Any, tool_calls: Any,
                  logprobs: list[Any] | None = None, refusal: Any = None) -> dict[str, Any]:
    entry = {"index": index, "content": content or None, "finish_reason": finish_reason}
    if tool_calls:
        entry["tool_calls"] = tool_calls
    if logprobs:
        entry["logprobs"] = logprobs
    if type(refusal) is str and refusal:  # why the model would not answer (message.refusal)
        entry["refusal"] = refusal
    return entry


def _token_logprobs(logprobs: Any) -> list[Any] | None:
    """The tokens' entries of a choice's ``logprobs`` (its ``content``: ``{"token",
    "logprob", "bytes", "top_logprobs"}`` a token, as the API and vLLM give them), or, with
    none, those of a refusal's words (``logprobs.refusal``, in the same shape: a refused row's
    error_message holds the words); None when it has neither."""
    if type(logprobs) is dict:
        tokens = logprobs.get("content")
        if type(tokens) is list and tokens:
            return tokens
        tokens = logprobs.get("refusal")
        if type(tokens) is list and tokens:
            return tokens
    return None


def _all_choices(choices: list[Any]) -> str:
    """Every choice of an ``n > 1`` reply as JSON text: index, content, finish_reason, and
    tool_calls when the choice made any, logprobs (its tokens') when it has them, refusal
    when the model refused."""
    out = []
    for c in choices:
        if isinstance(c, dict):
            m = c.get("message")
            if not isinstance(m, dict):
                m = {}
            content = m.get("content")
            if type(content) is list:
                content = _content_parts(content)[0]
            elif type(content) is str and not (m.get("reasoning_content") or m.get("reasoning")):
                content = _thought_apart(content, None)[0]
            calls = m.get("tool_calls")
            if not content and not calls:
                content = _transcript(m)
            finish = c.get("finish_reason")
            if type(finish) is str:
                finish = _FINISH_NAMES.get(finish, finish)
            out.append(_choice_entry(c.get("index"), content, finish, calls,
                                     _token_logprobs(c.get("logprobs")), m.get("refusal")))
    return orjson.dumps(out).decode()


def _citations(annotations: Any, citations: Any) -> str | None:
    """Search citations as JSON text: a list of ``{"url", "title", "start_index",
    "end_index"}`` (null where the API does not say), from a message's ``url_citation``
    annotations (OpenAI) and then a reply's top-level ``citations`` (Grok, Perplexity: URLs,
    or objects with a ``url``). None when there are none."""
    out: list[dict[str, Any]] = []
    if type(annotations) is list:
        for a in annotations:
            if type(a) is dict and a.get("type") == "url_citation":
                c = a.get("url_citation")
                out.extend(_citation(c if type(c) is dict else a))
    if type(citations) is list:
        for c in citations:
            if isinstance(c, str):
                out.append({"url": c, "title": None, "start_index": None, "end_index": None})
            elif type(c) is dict:
                out.extend(_citation(c))
    return orjson.dumps(out).decode() if out else None


def _citation(c: dict[str, Any]) -> list[dict[str, Any]]:
    url = c.get("url")
    if not isinstance(url, str):
        return []
    title = c.get("title")
    start, end = c.get("start_index"), c.get("end_index")
    return [{"url": url, "title": title if isinstance(title, str) else None,
             "start_index": start if type(start) is int else None,
             "end_index": end if type(end) is int else None}]


def _usage(usage: Any) -> Usage:
    """(prompt, completion, total, cached, reasoning) tokens, then web searches and sources
    (search billed apart from tokens), then the tokens written to the cache and those of them
    kept an hour (Anthropic's), then the audio tokens of the prompt and of the completion
    (OpenAI's ``*_tokens_details.audio_tokens``, None for 0); all None without a usage
    object. A count as large as
    ``_MAX_COUNT`` either way (a -1 a gateway sent as an unsigned 64-bit number) is no count:
    the journal's int64 columns hold none past 2**63, and no reply uses that many."""
    if type(usage) is not dict:
        return None, None, None, None, None, None, None, None, None, None, None
    get = usage.get
    big = _MAX_COUNT
    pt = v if type(v := get("prompt_tokens")) is int and -big < v < big else _count(v)
    ct = v if type(v := get("completion_tokens")) is int and -big < v < big else _count(v)
    tt = v if type(v := get("total_tokens")) is int and -big < v < big else _count(v)
    ptd = get("prompt_tokens_details")
    cached = (v if type(v := ptd.get("cached_tokens")) is int and -big < v < big else _count(v)
              ) if type(ptd) is dict else None
    # Audio tokens (an input_audio part; a spoken answer, below), billed at the audio prices:
    # OpenAI's details say 0 for most replies, read by one lookup and a test of it.
    heard = spoken = None
    if type(ptd) is dict and (v := ptd.get("audio_tokens")):
        heard = v if type(v) is int and 0 < v < big else _units(v) or None
    if cached is None and (v := get("prompt_cache_hit_tokens")) is not None:
        # DeepSeek's name for them (its prompt_tokens counts them, as OpenAI's does)
        cached = v if type(v) is int and -big < v < big else _count(v)
    apart = False  # Anthropic's cache counts, which its input_tokens leave out
    if cached is None and (v := get("cache_read_input_tokens")) is not None:
        # Anthropic's name for them, passed on by a gateway beside OpenAI's counts
        cached = v if type(v) is int and -big < v < big else _count(v)
        apart = True
    # Cache writes, Anthropic's (billed above the input price): all of them, and those kept
    # an hour (``cache_creation.ephemeral_1h_input_tokens``, billed higher still).
    written = written_1h = None
    if (v := get("cache_creation_input_tokens")) is not None:
        written, written_1h = _cache_writes(v, get("cache_creation"))
        apart = True
    elif type(ptd) is dict and ((v := ptd.get("cached_creation_tokens")) is not None
                                or (v := ptd.get("cache_write_tokens")) is not None
                                or (v := ptd.get("cache_creation_input_tokens")) is not None):
        # Writes among OpenAI's prompt details: Claude's as new-api's gateways put them (those
        # kept an hour beside them, claude_cache_creation_1_h_tokens) and OpenRouter does,
        # Qwen's explicit cache's as DashScope does
        written = _units(v)
        if written is not None and (
                hour := _units(get("claude_cache_creation_1_h_tokens"))) is not None:
            written_1h = min(hour, written)
    if (cached or written) and pt is not None:
        new = (cached or 0) + (written or 0)
        if new > pt or (apart and (
                (ct is not None and tt == pt + ct + new) or get("input_tokens") == pt)):
            # A gateway that counts the prompt's new tokens apart from those read from and
            # written to the cache (Anthropic's input_tokens, as it maps Claude's usage): told
            # by more of them than the prompt holds, or, for Anthropic's fields, a total that
            # adds them all or Anthropic's input_tokens passed on as the prompt. The prompt is
            # all of them, as OpenAI's usage (and the pricing) has it.
            if ct is not None and tt == pt + ct:
                tt += new
            pt += new
    ctd = get("completion_tokens_details")
    reasoning = (v if type(v := ctd.get("reasoning_tokens")) is int and -big < v < big
                 else _count(v)) if type(ctd) is dict else None
    if type(ctd) is dict and (v := ctd.get("audio_tokens")):
        spoken = v if type(v) is int and 0 < v < big else _units(v) or None
    if reasoning and pt is not None and ct is not None and (
            ct < reasoning or tt == pt + ct + reasoning):
        # A gateway that counts the thinking apart from the completion (Gemini's thoughts
        # mapped beside the answer's tokens): billed as output, so counted in the completion,
        # as OpenAI's usage (and the pricing) has it.
        ct += reasoning
    elif reasoning is None and tt is not None and pt is not None and ct is not None and (
            tt > pt + ct):
        gap = tt - pt - ct
        if gap in (cached, written, (cached or 0) + (written or 0)):
            # The gap is the cache counts (or either of them) the total adds apart from the
            # prompt (a gateway's prompt_tokens that leaves out the cache reads it passes on):
            # the prompt is all of them, as above, or its new tokens would be priced short.
            pt += gap
        else:
            # Tokens the total counts beyond the prompt and the completion, with no reasoning
            # count: Gemini's thoughts, which a gateway maps into total_tokens only (its
            # thoughtsTokenCount beside candidatesTokenCount). Billed as output ("thinking
            # budget counts toward output tokens"), so counted in the completion, and named
            # reasoning.
            reasoning = gap
            ct = tt - pt
    if tt is None and pt is not None and ct is not None:
        tt = pt + ct
    # Search billed per unit: Anthropic's web searches (through a gateway, as its own API puts
    # them), Grok's live search sources.
    stu = get("server_tool_use")
    searches = _units(stu.get("web_search_requests")) if type(stu) is dict else None
    sources = None if (v := get("num_sources_used")) is None else _units(v)
    if searches is not None and sources is not None:
        # Both said (a gateway passing on both fields): the units billed are one kind, the web
        # searches when it made any, else the sources, as the row records them and is priced.
        if searches:
            sources = None
        else:
            searches = None
    # A count the server did not give is None, not 0.
    return pt, ct, tt, cached, reasoning, searches, sources, written, written_1h, heard, spoken


def _cache_writes(total: Any, detail: Any) -> tuple[int | None, int | None]:
    """Anthropic's cache writes: all of them (``cache_creation_input_tokens``), and those kept
    an hour (``cache_creation.ephemeral_1h_input_tokens``)."""
    written = _units(total)
    if type(detail) is not dict or written is None:
        return written, None
    hour = _units(detail.get("ephemeral_1h_input_tokens"))
    return written, None if hour is None else min(hour, written)


def _units(value: Any) -> int | None:
    """A count of search units: a whole number >= 0 (as ``_count`` reads one), else None."""
    if type(value) is int:
        return value if 0 <= value < _MAX_COUNT else None
    return None if value is None else _count(value)


# The bound of a count a reply's usage may give: what 18 digits hold. Sums of three such
# counts (a completion's reasoning added to it, a total made of both) still fit an int64.
_MAX_COUNT = 10 ** 18


def _count(value: Any) -> int | None:
    """A token count that is not an int: a whole number a gateway sent as a float (12.0) or as
    text ("12"), as JSON from another language's numbers may have it; None for anything else
    (a bool, 12.5, "many", a number too large for a count)."""
    if type(value) is float:
        return int(value) if value.is_integer() and 0 <= value < _MAX_COUNT else None
    if type(value) is str:
        value = value.strip()
        return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None
    return None


def _billed_usage(usage: Any) -> Usage | None:
    """The usage an answer that is not a usable completion reported, if it reported one."""
    counts = _usage(usage)
    return counts if counts[0] is not None else None


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds, or an HTTP date). A value
    that is not a finite number of seconds (``inf``, garbage) is no advice: ``inf`` held every
    request of the job for good."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            wait = float(ms) / 1000.0
        except ValueError:
            pass
        else:
            if math.isfinite(wait):
                return max(0.0, wait)
    s = headers.get("retry-after")
    if s is None:
        return None
    try:
        wait = float(s)
    except ValueError:
        try:  # RFC 9110 allows an HTTP date ("Wed, 21 Oct 2026 07:28:00 GMT")
            when = parsedate_to_datetime(s)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, as HTTP dates are
            when = when.replace(tzinfo=UTC)
        wait = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, wait) if math.isfinite(wait) else None
