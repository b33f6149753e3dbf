"""An OpenAI-compatible Chat Completions server for rehearsals, tests and benchmarks.

The simulator answers ``POST /v1/chat/completions`` the way OpenAI, an OpenAI-compatible gateway
(GPT, Claude, DeepSeek, Grok, Gemini, Qwen behind one URL) or vLLM does, closely enough that a job
run against it goes down every path a real endpoint can send it down: replies, length cuts,
streams, rate limits, quota errors, server errors, dropped connections, hangs and broken bodies.

Three ways to run it::

    batchrunner simulate --rpm 500 --tpm 200000 --fault 503=0.01     # CLI (see add_arguments)
    python -m batchrunner.simulator --port 0                          # the same, standalone
    async with Simulator(config, host="127.0.0.1", port=0) as sim:   # in-process, async
        sim.base_url                                                  # "http://127.0.0.1:PORT/v1"
    with SimulatorThread(config) as sim:                              # background thread, sync
        sim.stats()

Endpoints
    ``POST /v1/chat/completions``   the completion endpoint (stream and non-stream)
    ``GET  /v1/models``             the configured models (a default list when any model goes)
    ``GET  /v1/models/{model}``     one model, or 404 ``model_not_found``
    ``GET  /v1/simulator/stats``    counters as JSON; ``?per_prompt=1`` adds the per-prompt maps
    ``POST /v1/simulator/reset``    zeroes the counters (not the rate-limit buckets or markers)
    ``GET  /health``                200 ``ok``

Statistics (``GET /v1/simulator/stats``, ``Simulator.stats()``, ``SimulatorThread.stats()``)
    ``started_at`` (epoch seconds), ``uptime_s``, ``requests`` (every chat request received),
    ``responses_by_status`` (``{"200": n, "429": n, ...}``), ``completions`` (200s carrying a
    whole reply; faulty 200s are not counted), ``rate_limited`` (429s by type: ``requests``,
    ``tokens``, ``insufficient_quota``) and ``rate_limited_total``, ``prompt_tokens``,
    ``completion_tokens``, ``cached_tokens``, ``cache_write_tokens``, ``reasoning_tokens``
    (summed over completions),
    ``faults`` (by kind), ``connections_reset``, ``hangs``, ``queued`` and ``running_peak``
    (with ``max_running``), ``completions_per_second`` (overall),
    and ``per_second``: ``{"first_second": s, "completions": [...], "rate_limited": [...]}``,
    counts for each second since the start (the last ``stats_seconds`` of them). With
    ``per_prompt`` also ``requests_by_prompt`` (every parsed request) and
    ``completions_by_prompt``, keyed by ``prompt_key(last user message)``.

A request whose ``modalities`` hold ``"audio"`` (OpenAI's gpt-audio) is answered with a spoken
answer as OpenAI gives one: ``message.audio`` (``id``, ``data``: a few base64 bytes standing for
the sound, ``expires_at``, ``transcript``: the reply's text) and a null ``content``, streamed as
``delta.audio`` pieces of the transcript; four fifths of its completion tokens are counted as
``completion_tokens_details.audio_tokens`` (the rest ``text_tokens``).

Replies are deterministic: the same messages give the same reply. Every reply starts with
``Echo: [KEY] EXCERPT`` where KEY is ``prompt_key(last user message)`` and EXCERPT its first
40 characters (whitespace collapsed), followed by filler words up to the reply's length in
tokens. The length is drawn, seeded by a hash of the messages, from a roughly exponential
distribution between ``reply_tokens_min`` and ``reply_tokens_max`` with mean about
``reply_tokens_mean`` (or fixed with ``reply_tokens``); short of a max_tokens or stop cut, a
reply is never shorter than its echo header. ``n`` > 1 gives n distinct replies (``#i`` is
added to the header). A ``response_format`` of ``json_object`` gives a JSON object;
``json_schema`` gives JSON that validates against the schema (objects, strings, numbers,
integers, booleans, enums, consts, arrays, tuples, ``$ref``/``$defs``, ``anyOf``, nullable types,
common string formats, numeric bounds); its first string field holds the echo header, and its
length is that of the JSON.

Token counting (exported, the runner uses the same estimate)
    ``count_tokens(text) = ceil(len(text) / 4)``;
    ``count_prompt_tokens(messages) = 3 + Σ (3 + count_tokens(text) + image tokens)`` over the
    messages, where text is the message's string content or its text parts joined by newlines,
    and an image is billed as OpenAI bills the model (85 by URL, by its tiles from a ``data:``
    URL at high detail; GPT-4o mini's own rate, ...: ``template.image_tokens``).
    A reply's ``completion_tokens`` is ``count_tokens(content)`` plus its reasoning tokens.
    ``max_completion_tokens`` (or ``max_tokens``) cuts a reply: ``finish_reason`` is ``length``
    and ``completion_tokens == max_tokens``. A ``stop`` sequence cuts it before the sequence.

Reasoning
    OpenAI's reasoning models by one rule, ``config.openai_reasoning`` (the one its refusals
    below follow): the o-series, GPT-5 plain, dotted and suffixed (``gpt-5.1``,
    ``gpt-5.1-mini``, ``gpt-5.2-pro``, ``gpt-5.1-codex-max``), ``codex-mini-latest``, also
    behind a gateway's provider prefix (``openai/gpt-5.2``), but not its chat models
    (``gpt-5-chat-latest``, ``gpt-5.1-chat-latest``), whatever ``reasoning_models`` says; other
    models listed in ``reasoning_models`` (an entry matches the name itself or the name followed
    by ``-``, ``.`` or ``:`` and more, behind a provider prefix too; not a name with
    ``non-reasoning``: ``grok-4`` is not ``grok-4-fast-non-reasoning``), any model whose name
    says it reasons (``deepseek-reasoner``, ``grok-4-fast-reasoning``, ``kimi-k2-thinking``;
    not ``-non-reasoning``, ``-nothinking``, ``-non-thinking``), Gemini 2.5 Pro and Flash (not
    Flash-Lite) and Gemini 3 (``nano-banana-pro`` too), which think unless told not to (a
    ``-nothinking`` name, a thinking budget of 0 as below, or ``reasoning_effort``
    ``"none"``): one rule,
    ``config.reasoning_model``, the one the estimate warns of thinking by; and any request with
    ``"thinking": {"type": "enabled"}``, Gemini's
    ``generationConfig.thinkingConfig`` or (streamed: gateways turn them off otherwise)
    ``"enable_thinking": true`` and Gemini's
    ``extra_body.google.thinking_config`` (a budget of 0 turns Gemini's off) reason first:
    ``ceil(reply tokens × reasoning_ratio)`` reasoning tokens (the request's thinking budget at
    most: a ``-thinking-<budget>`` model, ``thinking.budget_tokens``, Gemini's
    ``thinking_budget``), counted inside
    ``completion_tokens`` (and the max_tokens budget) and reported in
    ``usage.completion_tokens_details.reasoning_tokens``; the text is returned as
    ``message.reasoning_content`` and streamed as ``reasoning_content`` deltas before the content.
    ``"reasoning_effort": "none"`` turns a model's reasoning off (GPT-5.1 and later take it),
    and so does ``"thinking": {"type": "disabled"}`` (GLM's and Kimi's, which think unasked).
    OpenAI's own reasoning models and xAI's Grok 4 (``grok-4``, ``grok-4-fast-reasoning``; xAI
    returns the text of grok-3-mini's alone) return no reasoning text, as their APIs do:
    their reasoning tokens are counted and billed alike, the reply holds the answer alone, and
    a stream with ``ms_per_token`` waits for the hidden reasoning before its first content.
    Gemini's thoughts come through a gateway in a stream only: an unstreamed Gemini reply is
    billed its thinking without its text.
    A stream asked for with Qwen's ``"incremental_output": false`` (at the top level or in
    ``parameters``) carries in each chunk the whole reasoning or content so far, not its new
    characters, as Qwen streams it so; one asked for with ``"nebula_thinking_to_content":
    true`` streams the reasoning inside the content, in ``<think>`` tags before the answer,
    as that gateway does.

Refusals
    What OpenAI answers 400 is answered 400 with its message, ``param`` and ``code``:
    ``max_tokens`` beside ``max_completion_tokens`` (``invalid_parameter_combination``);
    ``max_tokens`` for a reasoning model, o-series or GPT-5, not ``gpt-5-chat``
    (``unsupported_parameter``); a temperature other than 1 for one, unless
    ``reasoning_effort`` is ``"none"`` (``unsupported_value``); ``temperature`` (0 to 2),
    ``top_p`` (0 to 1), ``frequency_penalty`` or ``presence_penalty`` (-2 to 2) out of range
    (``decimal_above_max_value``, ``decimal_below_min_value``) or not a number
    (``invalid_type``); ``stream_options`` without ``"stream": true``; a ``service_tier`` other
    than ``auto``, ``default``, ``flex``, ``scale`` or ``priority`` (``invalid_value``; an
    answer says the tier asked for, ``default`` for ``auto`` or none, in every chunk of a
    stream too). These follow OpenAI's model names whatever ``reasoning_models`` says.

    A ``max_tokens`` (or ``max_completion_tokens``) over the model's output limit ("max_tokens
    is too large: 20000. This model supports at most 16384 completion tokens, whereas you
    provided 20000.", ``invalid_value``), a prompt over its context window, or the prompt and
    ``max_tokens`` together over it ("This model's maximum context length is 8192 tokens.
    However, your messages resulted in ... / you requested ... tokens (... in the messages, ...
    in the completion)", ``context_length_exceeded``); a Claude model's in Anthropic's words, as
    gateways pass them on ("max_tokens: 100000 > 64000, which is the maximum allowed number of
    output tokens for ...", "prompt is too long: N tokens > 200000 maximum", "input length and
    `max_tokens` exceed context limit: ..."). The limits are ``MODEL_LIMITS``' (OpenAI's,
    Anthropic's, DeepSeek's, xAI's and Google's published figures, by name prefix); any other
    model has a window of ``DEFAULT_CONTEXT_WINDOW`` (128,000) and no output limit of its own.
    ``model_limits = false`` (``--no-model-limits``) answers them all.

Cached tokens
    Deterministic but for Claude's: when the leading system/developer messages come to at
    least 1024 prompt tokens, ``cached_tokens`` is that prefix rounded down to a multiple of
    128 (as OpenAI's prompt cache does from the second request on; here from the first).
    Otherwise 0.
    A Claude model's (a name with ``claude``) such prefix is written to the cache by the first
    request answered with it, which reports it as ``prompt_tokens_details.cached_creation_tokens``
    and ``claude_cache_creation_5_m_tokens`` (``claude_cache_creation_1_h_tokens`` 0), the
    prompt counting them, as new-api's gateways pass Claude's usage on (billed at the
    cache-write price); the requests answered with the same model and prefix within 5 minutes
    of its last use (``CLAUDE_CACHE_TTL_S``) read all of it (``cached_tokens``). Anthropic's
    cache needs ``cache_control`` on the prefix and counts it a little after the first answer
    has begun; the simulator caches it as a gateway that adds the marker does, from the first
    answer. ``prompt_caching = false`` turns both off.

Rate limits (per API key, like OpenAI's)
    Two buckets, requests (``rpm``) and tokens (``tpm``), each holding up to its per-minute limit
    (``limit_burst_s`` seconds of it instead, when set) and refilling continuously at limit/60
    per second. A request is charged 1 request and
    ``prompt_tokens + (max_completion_tokens or max_tokens or default_max_tokens or the reply's
    own length) × n`` tokens when it is admitted; a refused request is not charged. Responses
    past the limiter carry ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (durations
    in OpenAI's format: ``17ms``, ``1s``, ``8.64s``, ``6m0s``) for each configured limit, unless
    ``limit_headers`` is off (a gateway whose 429s are the only sign of its limits). Over a
    limit: 429 ``rate_limit_exceeded`` with type ``requests`` or ``tokens``, ``retry-after``
    (whole seconds, rounded up) and ``retry-after-ms`` (``limit_retry_after_s`` instead, when
    set; neither with ``limit_retry_after`` off, as some gateways answer). Keys in
    ``quota_exhausted_keys`` (or every key with ``quota_exhausted``) get 429
    ``insufficient_quota``. A model in ``model_rpm`` has buckets of its own, its requests
    limited to its rate (as OpenAI limits each model), its tokens to ``tpm``. A model in
    ``said_model_rpm`` draws on the key's buckets while its answers say that requests limit (a
    gateway that reports a limit per model and enforces one for the key).

A server of one's own (``max_running``)
    A GPU server answers one batch of requests at a time (vLLM's ``--max-num-seqs``) and
    queues the rest: with ``max_running = N`` at most N requests are answered at once, each
    after its latency, and the others wait their turn, the wait counted in their latency (a
    request whose client went away leaves the queue, as vLLM aborts it).

Faults
    Random faults: ``faults = {"503": 0.01, "reset": 0.001, ...}``, each a fraction of requests,
    drawn from a RNG seeded with ``seed`` (deterministic for a given order of requests).

    Marker faults: put ``[[sim:KIND]]`` anywhere in any message's text and every request with
    that prompt fails that way; ``[[sim:KIND*N]]`` fails only the first N requests with that
    exact prompt (all message texts), later ones are answered normally, so retries can be
    tested. Several markers in one prompt apply in turn: ``[[sim:503*2]][[sim:reset*1]]`` gives
    503, 503, a reset, then a reply. ``slow`` markers are not failures and apply on top. Only
    requests that pass authentication and the rate limiter count towards N. An unknown KIND is a
    400. KIND is one of:

    ``400`` ``401`` ``403`` ``404`` ``408`` ``409`` ``422`` ``500`` ``502`` ``504``
        that status with an OpenAI-style error body
    ``429``        429 ``rate_limit_exceeded`` (type ``requests``) with ``retry-after: 0``
    ``503``        503 with ``retry-after`` (``fault_retry_after_s``)
    ``529``        529 with Anthropic's ``{"type": "error", "error": {"type": "overloaded_error"}}``
    ``quota``      429 ``insufficient_quota``
    ``reset``      the connection is reset, no response
    ``hang``       no response for ``hang_s`` seconds (default 3600; ends when the server stops)
    ``corrupt``    200 whose body is not JSON (streamed: an event with broken JSON)
    ``truncated``  200 whose JSON body is cut in half (streamed: like ``cut``)
    ``html``       502 with an HTML error page (``text/html``), as a gateway sends
    ``no_usage``   200 without ``usage`` (streamed: no usage chunk)
    ``no_choices`` 200 without ``choices``
    ``cut``        streamed: the connection drops half-way, before ``[DONE]``;
                   not streamed: like ``truncated``
    ``no_done``    streamed: the stream ends cleanly without a finish chunk or ``[DONE]``;
                   not streamed: like ``no_choices``
    ``slow``       ``slow_ms`` (default 2000) more latency, then a normal reply
    ``402``        402 ``insufficient_balance`` (payment required: the balance is used up)
    ``error_200``  200 whose body is ``{"error": {...}}`` (type ``upstream_error``), as a gateway
                   answers when its upstream failed (streamed too: a JSON body, not events)

    Reply shapes: these markers are not failures (the reply is counted as a completion); they
    change what a reply holds, streamed or not, as the APIs that have them send it:

    ``tool_calls``   every choice calls a tool: ``content`` null, ``finish_reason`` ``tool_calls``,
                     ``message.tool_calls`` one call of the request's first tool (``extract``
                     without ``tools``) whose ``arguments`` are JSON valid against its
                     ``parameters`` schema (streamed: id, type and name once, then the arguments
                     in pieces, per index). A request whose ``tool_choice`` forces a call
                     (``"required"``, a function by name: that one, or ``allowed_tools`` in
                     mode ``"required"``: the first listed) gets this shape without the
                     marker, as the APIs answer it.
    ``bad_arguments`` like ``tool_calls``, with the arguments' JSON cut off half-way
    ``no_call``      a text reply even when ``tool_choice`` forces a call, as from a gateway
                     that drops ``tool_choice``
    ``citations``    a top-level ``citations`` list of URLs, as Grok's live search sends it
                     (streamed: in a last chunk without choices), and the sources it used
                     (one a URL) in ``usage.num_sources_used``, as Grok bills them; the
                     shape of every Grok request whose ``search_parameters`` ask for search
                     (mode ``"on"`` or ``"auto"``, the default), without the marker
    ``web_search``   ``usage.server_tool_use.web_search_requests`` of 1, as a gateway passes on
                     Anthropic's web search (billed per search)
    ``annotations``  ``message.annotations`` of type ``url_citation`` (url, title, start and end
                     index), as OpenAI's web search sends them (streamed: a delta of their own)

Every response carries ``x-request-id``; with ``announce`` (on for ``batchrunner simulate``),
every chat answer ``x-batchrunner-simulator: 1`` too, so that a run knows its answers are not
real, as with ``--simulator``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import itertools
import math
import os
import random
import re
import socket
import struct
import sys
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType, TracebackType
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from batchrunner.config import (
    REASONING_MODELS,
    THINKING_BUDGET_SUFFIX,
    gemini_named,
    gemini_thinking,
    openai_reasoning,
    reasoning_model,
    reasoning_turned_off,
)
from batchrunner.errors import ConfigError, UsageError

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_LISTED_MODELS",
    "DEFAULT_REASONING_MODELS",
    "FAULT_KINDS",
    "MESSAGE_OVERHEAD_TOKENS",
    "MODEL_LIMITS",
    "REPLY_PRIMING_TOKENS",
    "Simulator",
    "SimulatorConfig",
    "SimulatorThread",
    "add_arguments",
    "config_from_args",
    "count_prompt_tokens",
    "count_tokens",
    "format_duration",
    "main",
    "message_text",
    "model_limits",
    "parse_duration",
    "prompt_key",
    "serve",
]

# The header a simulator that announces itself sets on its chat answers (the client reads it
# by the same name, batchrunner.client.SIMULATOR_HEADER).
ANNOUNCE_HEADER: Final = "x-batchrunner-simulator"

FAULT_KINDS: Final[tuple[str, ...]] = (
    "400",
    "401",
    "403",
    "404",
    "408",
    "409",
    "422",
    "429",
    "500",
    "502",
    "503",
    "504",
    "529",
    "quota",
    "reset",
    "hang",
    "corrupt",
    "truncated",
    "html",
    "no_usage",
    "no_choices",
    "cut",
    "no_done",
    "slow",
    "402",
    "error_200",
    "tool_calls",
    "bad_arguments",
    "no_call",
    "citations",
    "annotations",
    "web_search",
)
# Marker kinds that shape a reply rather than fail it.
_SHAPES: Final = frozenset({"tool_calls", "bad_arguments", "no_call", "citations",
                            "annotations", "web_search"})

# Other providers' reasoning models (OpenAI's own follow ``config.openai_reasoning``).
DEFAULT_REASONING_MODELS: Final[tuple[str, ...]] = REASONING_MODELS
# Reasoning models that return no reasoning text, only its count in the usage: OpenAI's
# (``config.openai_reasoning``) and xAI's Grok 4 (grok-4, grok-4-fast-reasoning, ...; xAI
# returns ``reasoning_content`` for grok-3-mini and grok-code-fast only).
_HIDDEN_REASONING = re.compile(r"(?:^|/)grok-4(?:[-.]|$)", re.IGNORECASE)

# What ``GET /v1/models`` lists when any model name is accepted.
DEFAULT_LISTED_MODELS: Final[tuple[str, ...]] = (
    "gpt-4o",
    "gpt-4o-mini",
    "o4-mini",
    "claude-opus-4-6",
    "deepseek-r1",
    "grok-4-fast-reasoning",
    "gemini-3-flash-preview",
    "qwen3-coder-plus",
)

MESSAGE_OVERHEAD_TOKENS: Final = 3
REPLY_PRIMING_TOKENS: Final = 3

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8000
DEFAULT_REPLY_TOKENS_MIN: Final = 1
DEFAULT_REPLY_TOKENS_MEAN: Final = 64.0
DEFAULT_REPLY_TOKENS_MAX: Final = 512
DEFAULT_HANG_S: Final = 3600.0
DEFAULT_SLOW_MS: Final = 2000.0
DEFAULT_STATS_SECONDS: Final = 3600
CACHE_MIN_TOKENS: Final = 1024
CACHE_BLOCK_TOKENS: Final = 128
# A Claude prompt prefix written to the cache is read for this long after its last use
# (Anthropic's default, 5-minute cache); at most this many prefixes are kept.
CLAUDE_CACHE_TTL_S: Final = 300.0
CLAUDE_CACHE_KEPT: Final = 100_000
SYSTEM_FINGERPRINT: Final = "fp_batchrunner_sim"
MAX_N: Final = 128
MAX_STOP: Final = 4
MAX_TOP_LOGPROBS: Final = 20  # as OpenAI allows
EXCERPT_CHARS: Final = 40
LISTEN_BACKLOG: Final = 4096  # connections waiting to be accepted (the kernel may cap it)
SHUTDOWN_TIMEOUT_S: Final = 0.5
MAX_BODY: Final = 64 * 1024 * 1024
MAX_SCHEMA_DEPTH: Final = 12

_MARKER_OPEN: Final = "[[sim:"
_MARKER_RE: Final = re.compile(r"\[\[sim:([A-Za-z0-9_]+)(?:\*(\d+))?\]\]")
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s)")
_MASK64: Final = (1 << 64) - 1
_SAFE_INT: Final = (1 << 53) - 1
_SHALLOW_DEPTH: Final = 3  # below this, schema replies use empty arrays and nulls where allowed
_GOLDEN: Final = 0x9E3779B97F4A7C15
_WORD_LIST: Final = (
    "the and for are but not you all any can had her was one our out day get has him his how "
    "man new now old see two way who boy did its let put say she too use act add age ago air "
    "arm art ask bad bag bed big bit box bus buy car cat cup cut dog dry due ear eat egg end "
    "eye far few fit fly fun gas god gun hat hit hot ice job key kid lab law lay leg lie lot "
    "low map mix net oil pay pen per pet pie pop pot raw red rid row run sea set sit six sky "
    "son sun tax tea ten tie tip toe top toy try war wet win yes yet"
)
_WORDS: Final[tuple[str, ...]] = tuple(_WORD_LIST.split())


# --------------------------------------------------------------------------------------------
# Token counting, prompt keys, durations


def count_tokens(text: str) -> int:
    """The project's token estimate: ``ceil(len(text) / 4)`` (0 for "", at least 1 otherwise)."""
    return (len(text) + 3) // 4


def message_text(content: Any, model: Any = None) -> tuple[str, int]:
    """The text of a message's ``content`` (a string, ``None`` or a list of parts) and the
    prompt tokens of its image parts, billed as OpenAI bills ``model`` (``image_tokens``: for
    most models, 85 and 170 a 512-pixel tile at high detail, the size read from a ``data:``
    URL; 85 by an ``http(s)`` URL). Text parts are joined with newlines; other parts are
    ignored."""
    if isinstance(content, str):
        return content, 0
    if content is None:
        return "", 0
    if not isinstance(content, list):
        raise ValueError("content must be a string, null or an array of content parts")
    texts: list[str] = []
    images = 0
    for part in content:
        if not isinstance(part, dict):
            raise ValueError("each content part must be an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ValueError("a text content part needs a string 'text'")
            texts.append(text)
        elif kind == "image_url":
            from batchrunner.template import image_tokens  # only for a message with images

            images += image_tokens(part.get("image_url"), model)
    return "\n".join(texts), images


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]], model: Any = None) -> int:
    """Prompt tokens as the simulator reports them for ``model``:
    ``3 + Σ (3 + count_tokens(text) + image tokens)`` over the messages (``message_text``)."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        text, images = message_text(message.get("content"), model)
        total += MESSAGE_OVERHEAD_TOKENS + count_tokens(text) + images
    return total


def prompt_key(text: str) -> str:
    """A stable short hash (16 hex digits) of a prompt text, e.g. the last user message."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _format_seconds(ms: int) -> str:
    whole, frac = divmod(ms, 1000)
    if frac == 0:
        return f"{whole}s"
    return f"{whole}.{frac:03d}".rstrip("0") + "s"


def format_duration(seconds: float) -> str:
    """A duration in OpenAI's rate-limit header format: ``0s``, ``17ms``, ``1s``, ``8.64s``,
    ``6m0s``, ``1h2m3s``. Rounded up to the millisecond."""
    if not seconds > 0:
        return "0s"
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms < 1000:
        return f"{max(ms, 1)}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    if hours:
        return f"{hours}h{minutes}m{_format_seconds(rest)}"
    if minutes:
        return f"{minutes}m{_format_seconds(rest)}"
    return _format_seconds(rest)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``6m0s``, ``8.64s`` or ``120ms``; ``ValueError`` if bad."""
    pos = 0
    total = 0.0
    text = text.strip()
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * scale[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"not a duration: {text!r}")
    return total


# --------------------------------------------------------------------------------------------
# Configuration


def _bad(name: str, what: str, value: object) -> ConfigError:
    return ConfigError(f"simulator setting '{name}' must be {what}, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class SimulatorConfig:
    """How the simulator behaves. The defaults: any key and model, no limits, no faults, no
    latency. Load a job file's ``[simulator]`` table with :meth:`from_mapping`."""

    api_key: str | None = None
    """When set, requests must carry ``Authorization: Bearer <api_key>`` (or a key listed in
    ``quota_exhausted_keys``); otherwise any key, or none, is accepted."""
    quota_exhausted: bool = False
    """Every key gets 429 ``insufficient_quota``."""
    quota_exhausted_keys: tuple[str, ...] = ()
    """These keys get 429 ``insufficient_quota``."""
    models: tuple[str, ...] | None = None
    """The accepted model names; ``None`` accepts any name (gateway style)."""
    reasoning_models: tuple[str, ...] = DEFAULT_REASONING_MODELS
    """Other providers' models that reason before answering (OpenAI's follow
    ``config.openai_reasoning``; see the module docstring)."""
    rpm: int | None = None
    """Requests per minute per key; ``None`` means no request limit."""
    tpm: int | None = None
    """Tokens per minute per key; ``None`` means no token limit."""
    limit_headers: bool = True
    """Send the ``x-ratelimit-*`` headers; off, the limits are hidden (429s alone say them)."""
    limit_retry_after: bool = True
    """Say in a limit's 429 when to retry (``retry-after``); off, it says nothing of it."""
    limit_retry_after_s: float | None = None
    """The ``retry-after`` of a limit's 429, whatever the limit's bucket says (a gateway's
    fixed wait); None: the time until the bucket allows the request."""
    model_rpm: Mapping[str, int] = field(default_factory=dict)
    """Requests per minute per key for each of these models, in buckets of the model's own."""
    said_model_rpm: Mapping[str, int] = field(default_factory=dict)
    """The requests limit these models' answers say, where their requests draw on the key's
    own ``rpm`` (a gateway that says a limit per model and enforces one for the key)."""
    limit_burst_s: float = 60.0
    """Seconds of its limit a rate-limit bucket holds, full at the start (a minute's)."""
    default_max_tokens: int | None = None
    """The max_tokens assumed when a request sets none (cut and rate-limit charge)."""
    reply_tokens: int | None = None
    """A fixed reply length in tokens, instead of the distribution below."""
    reply_tokens_min: int = DEFAULT_REPLY_TOKENS_MIN
    reply_tokens_mean: float = DEFAULT_REPLY_TOKENS_MEAN
    reply_tokens_max: int = DEFAULT_REPLY_TOKENS_MAX
    reasoning_ratio: float = 1.0
    """Reasoning tokens per reply token, for reasoning models."""
    latency_ms: float = 0.0
    """Added before every admitted request is answered."""
    jitter_ms: float = 0.0
    """Uniform random extra latency, 0..jitter_ms."""
    ms_per_token: float = 0.0
    """Time per streamed token."""
    max_running: int | None = None
    """At most this many requests are answered at once, as a GPU server runs one batch of
    them (vLLM's ``--max-num-seqs``); the others wait their turn, the wait counted in their
    latency. None: no bound."""
    slow_ms: float = DEFAULT_SLOW_MS
    """Extra latency of the ``slow`` fault."""
    hang_s: float = DEFAULT_HANG_S
    """How long the ``hang`` fault holds a request (it ends early when the server stops)."""
    fault_retry_after_s: float = 1.0
    """The ``retry-after`` of the 503 fault."""
    faults: Mapping[str, float] = field(default_factory=dict)
    """Random fault rates by kind (see ``FAULT_KINDS``), each 0..1, summing to at most 1."""
    seed: int = 0
    """Seeds the random faults and latency jitter."""
    model_limits: bool = True
    """Refuse (400, as the provider words it) a prompt over the model's context window or a
    ``max_tokens`` over its output limit (``MODEL_LIMITS``; see the module docstring)."""
    prompt_caching: bool = True
    """Report cached tokens for long system prompts, and a Claude model's cache writes (see
    the module docstring)."""
    track_prompts: bool = True
    """Count requests and completions per prompt key (``stats(per_prompt=True)``)."""
    announce: bool = False
    """Mark every chat answer with the header ``x-batchrunner-simulator: 1``, so that a run
    sent to it knows its answers are not real (``batchrunner simulate`` turns it on; a test's
    simulator standing in for a real endpoint leaves it off)."""
    stats_seconds: int = DEFAULT_STATS_SECONDS
    """How many seconds the per-second histogram keeps."""

    def __post_init__(self) -> None:
        for name in ("quota_exhausted_keys", "reasoning_models"):
            object.__setattr__(self, name, _str_tuple(name, getattr(self, name)))
        if self.models is not None:
            models = _str_tuple("models", self.models)
            if not models:
                raise ConfigError(
                    "simulator setting 'models' must list at least one model "
                    "(leave it out to accept any model)"
                )
            object.__setattr__(self, "models", models)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise _bad("api_key", "a non-empty string", self.api_key)
        for name in ("rpm", "tpm", "default_max_tokens", "reply_tokens", "max_running"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise _bad(name, "a positive integer", value)
        for name in ("reply_tokens_min", "reply_tokens_max", "stats_seconds"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise _bad(name, "a positive integer", value)
        if not _is_int(self.seed):
            raise _bad("seed", "an integer", self.seed)
        for name in (
            "reply_tokens_mean",
            "reasoning_ratio",
            "latency_ms",
            "jitter_ms",
            "ms_per_token",
            "slow_ms",
            "hang_s",
            "fault_retry_after_s",
        ):
            value = getattr(self, name)
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                raise _bad(name, "a number >= 0", value)
            object.__setattr__(self, name, float(value))
        if not self.reply_tokens_min <= self.reply_tokens_mean <= self.reply_tokens_max:
            raise ConfigError(
                "simulator settings must satisfy reply_tokens_min <= reply_tokens_mean <= "
                f"reply_tokens_max, got {self.reply_tokens_min}, {self.reply_tokens_mean}, "
                f"{self.reply_tokens_max}"
            )
        if self.limit_retry_after_s is not None:
            value = self.limit_retry_after_s
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                raise _bad("limit_retry_after_s", "a number >= 0", value)
            object.__setattr__(self, "limit_retry_after_s", float(value))
        for name in ("quota_exhausted", "prompt_caching", "track_prompts", "announce",
                     "limit_headers", "limit_retry_after", "model_limits"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, "true or false", getattr(self, name))
        for name in ("model_rpm", "said_model_rpm"):
            table = getattr(self, name)
            if not isinstance(table, Mapping):
                raise _bad(name, "a table of MODEL = N", table)
            for model, rpm in table.items():
                if not _is_int(rpm) or rpm < 1:
                    raise _bad(f"{name}.{model}", "a positive integer", rpm)
            object.__setattr__(self, name, MappingProxyType(dict(table)))
        if not _is_number(self.limit_burst_s) or not 0.0 < self.limit_burst_s <= 3600.0:
            raise _bad("limit_burst_s", "seconds between 0 and 3600", self.limit_burst_s)
        if not isinstance(self.faults, Mapping):
            raise _bad("faults", "a table of KIND = RATE", self.faults)
        faults: dict[str, float] = {}
        for kind, rate in self.faults.items():
            if kind not in FAULT_KINDS:
                raise ConfigError(
                    f"simulator fault kind {kind!r} is unknown (known: {', '.join(FAULT_KINDS)})"
                )
            if not _is_number(rate) or not 0.0 <= rate <= 1.0:
                raise _bad(f"faults.{kind}", "a rate between 0 and 1", rate)
            if rate > 0:
                faults[kind] = float(rate)
        if sum(faults.values()) > 1.0 + 1e-9:
            raise ConfigError(
                f"simulator fault rates must add up to at most 1, got {sum(faults.values()):g}"
            )
        object.__setattr__(self, "faults", MappingProxyType(faults))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SimulatorConfig:
        """Build a config from a plain mapping (a TOML table); raises ``ConfigError`` with one
        line naming any unknown key or bad value."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"simulator settings must be a table, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(
                    f"unknown simulator setting {key!r} (known: {', '.join(sorted(known))})"
                )
            if key in ("models", "reasoning_models", "quota_exhausted_keys"):
                if isinstance(value, str):
                    value = (value,)
                elif isinstance(value, list | tuple):
                    value = tuple(value)
                elif not (key == "models" and value is None):
                    raise _bad(key, "a list of strings", value)
            kwargs[key] = value
        return cls(**kwargs)


def _str_tuple(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise _bad(name, "a list of strings", value)
    if not all(isinstance(v, str) and v for v in value):
        raise _bad(name, "a list of non-empty strings", value)
    return tuple(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Rate limiting and statistics


class _Bucket:
    """A token bucket of ``per_minute`` (its limit) holding up to ``capacity``, ``burst_s``
    seconds of it (a minute's by default), and refilling at per_minute/60 per second."""

    __slots__ = ("capacity", "level", "limit", "rate", "stamp")

    def __init__(self, per_minute: int, now: float, burst_s: float = 60.0) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (a full refill if it never fits)."""
        if amount > self.capacity:
            return self.capacity / self.rate
        return max(0.0, (amount - self.level) / self.rate)

    def headers(self, suffix: str, out: dict[str, str]) -> None:
        out["x-ratelimit-limit-" + suffix] = str(self.limit)
        out["x-ratelimit-remaining-" + suffix] = str(int(self.level))
        out["x-ratelimit-reset-" + suffix] = format_duration(
            (self.capacity - self.level) / self.rate
        )


class _Stats:
    """Counters behind ``GET /v1/simulator/stats``."""

    def __init__(self, now: float, keep_seconds: int) -> None:
        self.t0 = now
        self.started_at = time.time()
        self.keep = keep_seconds
        self.requests = 0
        self.completions = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cache_write_tokens = 0
        self.reasoning_tokens = 0
        self.by_status: dict[int, int] = {}
        self.rate_limited: dict[str, int] = {"requests": 0, "tokens": 0, "insufficient_quota": 0}
        self.faults: dict[str, int] = {}
        self.connections_reset = 0
        self.hangs = 0
        self.queued = 0  # requests that waited for one of the max_running places
        self.running = 0
        self.running_peak = 0
        self.requests_by_prompt: dict[str, int] = {}
        self.completions_by_prompt: dict[str, int] = {}
        self.hist_base = 0
        self.hist_completions: list[int] = []
        self.hist_429: list[int] = []

    def slot(self, now: float) -> int:
        idx = int(now - self.t0) - self.hist_base
        size = len(self.hist_completions)
        if idx >= size:
            grow = idx - size + 1
            self.hist_completions.extend([0] * grow)
            self.hist_429.extend([0] * grow)
            over = len(self.hist_completions) - self.keep
            if over > 0:
                del self.hist_completions[:over]
                del self.hist_429[:over]
                self.hist_base += over
                idx -= over
        return max(idx, 0)

    def status(self, status: int) -> None:
        by = self.by_status
        by[status] = by.get(status, 0) + 1

    def limited(self, kind: str, now: float) -> None:
        self.rate_limited[kind] = self.rate_limited.get(kind, 0) + 1
        self.hist_429[self.slot(now)] += 1

    def fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def snapshot(self, now: float, per_prompt: bool) -> dict[str, Any]:
        self.slot(now)
        uptime = max(now - self.t0, 1e-9)
        out: dict[str, Any] = {
            "started_at": self.started_at,
            "uptime_s": round(uptime, 6),
            "requests": self.requests,
            "responses_by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "completions": self.completions,
            "rate_limited": dict(self.rate_limited),
            "rate_limited_total": sum(self.rate_limited.values()),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "faults": dict(self.faults),
            "connections_reset": self.connections_reset,
            "hangs": self.hangs,
            "queued": self.queued,
            "running_peak": self.running_peak,
            "completions_per_second": self.completions / uptime,
            "per_second": {
                "first_second": self.hist_base,
                "completions": list(self.hist_completions),
                "rate_limited": list(self.hist_429),
            },
        }
        if per_prompt:
            out["requests_by_prompt"] = dict(self.requests_by_prompt)
            out["completions_by_prompt"] = dict(self.completions_by_prompt)
        return out


# --------------------------------------------------------------------------------------------
# Replies


def _mix(x: int) -> int:
    """splitmix64: a well-spread 64-bit value from any integer."""
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _filler(words: int) -> str:
    rng = random.Random(20240611)
    return " ".join(rng.choices(_WORDS, k=words)) + " "


@dataclass(slots=True)
class _Choice:
    content: str
    reasoning: str
    content_tokens: int
    reasoning_tokens: int
    finish_reason: str
    tool_call: tuple[str, str, str] | None = None  # (id, name, arguments)


@dataclass(slots=True)
class _Request:
    model: str
    n: int
    stream: bool
    include_usage: bool
    max_tokens: int | None
    stop: tuple[str, ...]
    response_format: str  # "text" | "json_object" | "json_schema"
    schema: Any
    reasoning: bool
    prompt_tokens: int
    cached_tokens: int
    digest: int
    last_user: str
    markers: tuple[tuple[str, int | None], ...]
    tools: Any = None
    forced_tool: str | None = None  # the function tool_choice makes every reply call
    whole_so_far: bool = False  # streamed with Qwen's incremental_output false
    think_inline: bool = False  # streamed with nebula_thinking_to_content: reasoning in content
    hidden_reasoning: bool = False  # reasoning tokens billed, no reasoning text (OpenAI's)
    thinking_budget: int | None = None  # the most reasoning tokens the request allows
    # With logprobs: true, the top_logprobs asked for (0 without it); None when not asked.
    top_logprobs: int | None = None
    # A Claude model's cacheable prompt prefix: (model, digest of the prefix, its tokens), its
    # cache read or write decided when answered (_Server.claude_cache); None for others.
    claude_prefix: tuple[str, bytes, int] | None = None
    cache_write_tokens: int = 0
    claude: bool = False  # a Claude model: its usage says its cache writes (0 or more)
    service_tier: str = "default"  # the tier that answers (OpenAI's "auto" is "default")
    live_search: bool = False  # Grok asked to search (search_parameters): its sources billed
    audio: bool = False  # modalities asks for audio: a spoken answer (message.audio)


def _not_incremental(body: dict[str, Any]) -> bool:
    """Whether a request asks for Qwen's ``incremental_output`` false (at the top level or in
    ``parameters``, as gateways take Qwen's options): each chunk of its stream then carries
    the whole text so far, not what is new."""
    params = body.get("parameters")
    return body.get("incremental_output") is False or (
        isinstance(params, dict) and params.get("incremental_output") is False)


def _live_search(model: str, search: Any) -> bool:
    """Whether a request asks Grok to search (``search_parameters`` in mode ``"on"`` or
    ``"auto"``, xAI's default, as the gateway reference recommends it): answered as the
    ``citations`` shape, its sources cited and billed (``num_sources_used``)."""
    return ("grok" in model.lower() and type(search) is dict
            and search.get("mode", "auto") in ("on", "auto"))


def _forced_tool(tools: Any, choice: Any) -> str | None:
    """The function a request's ``tool_choice`` makes the reply call: the one it names, with
    ``"required"`` the first tool (``extract`` when there are none), or with ``allowed_tools``
    in mode ``"required"`` the first it lists; None when the reply may answer in text."""
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools")
        if not isinstance(allowed, dict) or allowed.get("mode") != "required":
            return None
        return _forced_tool(allowed.get("tools"), "required")
    if choice == "required":
        first = tools[0] if isinstance(tools, list) and tools else None
        fn = first.get("function") if isinstance(first, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        return name if isinstance(name, str) and name else "extract"
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        return name if isinstance(name, str) and name else None
    return None


class _SchemaFaker:
    """Deterministic JSON values that validate against a JSON schema."""

    def __init__(self, root: Any, seed: int, head: str, filler: str) -> None:
        self.root = root
        self.state = seed
        self.head = head
        self.filler = filler
        self.head_used = False

    def next(self) -> int:
        self.state = _mix(self.state)
        return self.state

    def words(self, count: int) -> str:
        span = len(self.filler) // 4 - count - 1
        start = (self.next() % max(span, 1)) * 4
        return self.filler[start : start + 4 * count - 1]

    def resolve(self, schema: Any) -> Any:
        for _ in range(32):
            if not isinstance(schema, dict) or "$ref" not in schema:
                return schema
            ref = schema["$ref"]
            target: Any = self.root
            if not isinstance(ref, str) or not ref.startswith("#"):
                return {}
            for part in ref[1:].split("/"):
                if not part:
                    continue
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, dict) else None
            schema = target if target is not None else {}
        return {}

    def value(self, schema: Any, depth: int = 0) -> Any:
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return self.string({})
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self.next() % len(enum)]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                nulls = [o for o in options if _schema_type(self.resolve(o)) == "null"]
                if nulls and depth >= _SHALLOW_DEPTH:
                    return None  # stop recursive schemas where they allow it
                chosen = [o for o in options if o not in nulls]
                return self.value((chosen or options)[0], depth + 1)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            merged: dict[str, Any] = {}
            for part in all_of:
                resolved = self.resolve(part)
                if isinstance(resolved, dict):
                    merged.update(resolved)
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            merged.update(rest)
            return self.value(merged, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if kinds else "null"
        if kind is None:
            if "properties" in schema:
                kind = "object"
            elif "items" in schema:
                kind = "array"
            else:
                kind = "string"
        if depth > MAX_SCHEMA_DEPTH:
            return {"object": {}, "array": []}.get(kind, self.scalar(kind))
        if kind == "object":
            props = schema.get("properties")
            if isinstance(props, dict) and props:
                return {name: self.value(sub, depth + 1) for name, sub in props.items()}
            if schema.get("additionalProperties") is False:
                return {}
            return {"echo": self.string({})}
        if kind == "array":
            lo = schema.get("minItems", 0)
            hi = schema.get("maxItems", 3)
            lo = lo if _is_int(lo) else 0
            hi = hi if _is_int(hi) and hi >= lo else lo + 3
            items = schema.get("items", {})
            # A tuple: a type for each position (prefixItems; draft-07's "items": [...]),
            # the rest of "items" (or draft-07's additionalItems)
            prefix = schema.get("prefixItems", items if isinstance(items, list) else [])
            prefix = prefix if isinstance(prefix, list) else []
            rest = schema.get("additionalItems", {}) if isinstance(items, list) else items
            count = max(lo, min(hi, len(prefix) if prefix else
                                1 + self.next() % 3 if depth < _SHALLOW_DEPTH else 0))
            return [self.value(prefix[i] if i < len(prefix) else rest, depth + 1)
                    for i in range(count)]
        if kind == "string":
            return self.string(schema)
        return self.scalar(kind, schema)

    def scalar(self, kind: str, schema: Mapping[str, Any] | None = None) -> Any:
        schema = schema or {}
        if kind == "integer":
            lo, hi = _bounds(schema, integer=True)
            return int(lo + self.next() % (int(hi) - int(lo) + 1))
        if kind == "number":
            lo, hi = _bounds(schema, integer=False)
            return round(lo + (self.next() % 1000) / 1000 * (hi - lo), 3)
        if kind == "boolean":
            return bool(self.next() & 1)
        if kind == "null":
            return None
        return self.string(schema)

    def string(self, schema: Mapping[str, Any]) -> str:
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2024-01-01T00:00:00Z"
        if fmt == "date":
            return "2024-01-01"
        if fmt == "time":
            return "00:00:00"
        if fmt == "email":
            return "sim@example.com"
        if fmt in ("uri", "url"):
            return "https://example.com/sim"
        if fmt == "uuid":
            h = f"{self.next():016x}{self.next():016x}"
            return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"
        if not self.head_used:
            self.head_used = True
            text = self.head
        else:
            text = self.words(2 + self.next() % 6)
        min_len = schema.get("minLength", 0)
        max_len = schema.get("maxLength")
        if isinstance(min_len, int) and len(text) < min_len:
            pad = self.words(32) + " "
            text = (text + " " + pad * (min_len // len(pad) + 1))[:min_len]
        if isinstance(max_len, int) and len(text) > max_len:
            text = text[:max_len]
        return text


def _bounds(schema: Mapping[str, Any], *, integer: bool) -> tuple[float, float]:
    lo: float | None = None
    hi: float | None = None
    step = 1 if integer else 0.001
    if _is_number(schema.get("minimum")):
        lo = schema["minimum"]
    if _is_number(schema.get("exclusiveMinimum")):
        lo = schema["exclusiveMinimum"] + step
    if _is_number(schema.get("maximum")):
        hi = schema["maximum"]
    if _is_number(schema.get("exclusiveMaximum")):
        hi = schema["exclusiveMaximum"] - step
    if integer:
        lo = math.ceil(lo) if lo is not None else None
        hi = math.floor(hi) if hi is not None else None
    if lo is None:
        lo = 0 if hi is None or hi >= 0 else hi - 100
    if hi is None or hi < lo:
        hi = lo + 100
    # Keep integers within what every JSON parser reads exactly.
    lo = min(max(lo, -_SAFE_INT), _SAFE_INT)
    hi = min(max(hi, lo), _SAFE_INT)
    return lo, hi


def _schema_type(schema: Any) -> Any:
    return schema.get("type") if isinstance(schema, dict) else None


# --------------------------------------------------------------------------------------------
# The server


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


# Models' context windows and output limits, in tokens, as their providers publish them
# (gateways pass the same models on): a model matches the longest entry that its name, behind
# a provider prefix (openai/gpt-4o) and lowercased, is or starts with followed by "-", "." or
# ":" (gpt-4 is gpt-4-0613's entry, not gpt-4o's). An output limit of 0 means none but the
# window's. Any other model: DEFAULT_CONTEXT_WINDOW, no output limit.
MODEL_LIMITS: Final[tuple[tuple[str, int, int], ...]] = (
    ("gpt-3.5-turbo", 16_385, 4_096),
    ("gpt-4", 8_192, 8_192),
    ("gpt-4-turbo", 128_000, 4_096),
    ("gpt-4-0125", 128_000, 4_096),
    ("gpt-4-1106", 128_000, 4_096),
    ("gpt-4.5", 128_000, 16_384),
    ("gpt-4o", 128_000, 16_384),
    ("gpt-4.1", 1_047_576, 32_768),
    ("gpt-5", 400_000, 128_000),
    ("gpt-5-chat", 128_000, 16_384),
    ("gpt-5.1-chat", 128_000, 16_384),
    ("gpt-5.2-chat", 128_000, 16_384),
    ("o1", 200_000, 100_000),
    ("o1-mini", 128_000, 65_536),
    ("o3", 200_000, 100_000),
    ("o4-mini", 200_000, 100_000),
    ("codex-mini", 200_000, 100_000),
    ("claude", 200_000, 64_000),
    ("claude-opus-4-1", 200_000, 32_000),
    ("claude-opus-4-20250514", 200_000, 32_000),
    ("claude-3-7-sonnet", 200_000, 64_000),
    ("claude-3-5", 200_000, 8_192),
    ("claude-3-opus", 200_000, 4_096),
    ("claude-3-haiku", 200_000, 4_096),
    ("deepseek-chat", 128_000, 8_192),
    ("deepseek-v3", 128_000, 8_192),
    ("deepseek-reasoner", 128_000, 65_536),
    ("deepseek-r1", 128_000, 65_536),
    ("grok-3", 131_072, 0),
    ("grok-4", 256_000, 0),
    ("grok-4-fast", 2_000_000, 0),
    ("grok-4-1-fast", 2_000_000, 0),
    ("gemini", 1_048_576, 65_536),
    ("gemini-2.0", 1_048_576, 8_192),
    ("qwen3-coder-plus", 1_000_000, 65_536),
    ("kimi-k2", 262_144, 0),
    ("glm-4.6", 200_000, 0),
    ("glm-4.7", 200_000, 0),
)
DEFAULT_CONTEXT_WINDOW: Final = 128_000
_LIMITS_BY_LENGTH: Final = tuple(sorted(MODEL_LIMITS, key=lambda e: -len(e[0])))


def model_limits(model: str) -> tuple[int, int]:
    """``model``'s (context window, output limit) in tokens (``MODEL_LIMITS``; an output limit
    of 0: none but the window)."""
    name = model.rsplit("/", 1)[-1].lower()
    for prefix, window, most in _LIMITS_BY_LENGTH:
        if name.startswith(prefix) and name[len(prefix):len(prefix) + 1] in ("", "-", ".", ":"):
            return window, most
    return DEFAULT_CONTEXT_WINDOW, 0


def _check_size(model: str, limits: tuple[int, int], prompt: int, asked: int | None,
                param: str) -> None:
    """Refuse a prompt over ``model``'s context window, a ``max_tokens`` (``asked``, named
    ``param``) over its output limit, or both together over the window, as the provider
    words it: Anthropic's messages for a Claude model, OpenAI's for any other (gateways and
    vLLM word the window's as OpenAI does)."""
    window, most = limits
    if asked is not None and most and asked > most:
        if "claude" in model.lower():
            raise _BadRequest(f"max_tokens: {asked} > {most}, which is the maximum allowed "
                              f"number of output tokens for {model}")
        raise _BadRequest(f"{param} is too large: {asked}. This model supports at most {most} "
                          f"completion tokens, whereas you provided {asked}.", param,
                          "invalid_value")
    if prompt > window:
        if "claude" in model.lower():
            raise _BadRequest(f"prompt is too long: {prompt} tokens > {window} maximum")
        raise _BadRequest(f"This model's maximum context length is {window} tokens. However, "
                          f"your messages resulted in {prompt} tokens. Please reduce the length "
                          "of the messages.", "messages", "context_length_exceeded")
    if asked is not None and prompt + asked > window:
        if "claude" in model.lower():
            raise _BadRequest(f"input length and `max_tokens` exceed context limit: {prompt} + "
                              f"{asked} > {window}, decrease input length or `max_tokens` and "
                              "try again")
        raise _BadRequest(f"This model's maximum context length is {window} tokens. However, "
                          f"you requested {prompt + asked} tokens ({prompt} in the messages, "
                          f"{asked} in the completion). Please reduce the length of the "
                          "messages or completion.", "messages", "context_length_exceeded")


# The service tiers a request may ask for, and be answered in, besides "auto" ("default").
_SERVICE_TIERS: Final = frozenset({"default", "flex", "scale", "priority"})

# Sampling settings' ranges, as OpenAI checks them whatever the model (name: low, high).
_RANGES: Final[tuple[tuple[str, float, float], ...]] = (
    ("temperature", 0.0, 2.0),
    ("top_p", 0.0, 1.0),
    ("frequency_penalty", -2.0, 2.0),
    ("presence_penalty", -2.0, 2.0),
)


_JSON_KINDS: Final[dict[type, str]] = {str: "a string", bool: "a boolean", list: "an array"}


def _check_limits(body: dict[str, Any], model: str) -> None:
    """Refuse what OpenAI refuses of a request's token limit and sampling settings, with its
    status, message, ``param`` and ``code``: both ``max_tokens`` and
    ``max_completion_tokens``; ``max_tokens``, or a temperature other than 1, for a reasoning
    model (o-series, GPT-5: ``config.openai_reasoning``; a temperature with
    ``reasoning_effort: "none"``, as GPT-5.1 and later take it); a sampling setting out of its
    range."""
    if body.get("max_tokens") is not None:
        if body.get("max_completion_tokens") is not None:
            raise _BadRequest("Setting 'max_tokens' and 'max_completion_tokens' at the same time "
                              "is not supported.", "max_tokens", "invalid_parameter_combination")
        if openai_reasoning(model):
            raise _BadRequest("Unsupported parameter: 'max_tokens' is not supported with this "
                              "model. Use 'max_completion_tokens' instead.", "max_tokens",
                              "unsupported_parameter")
    for name, low, high in _RANGES:
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value):
            got = _JSON_KINDS.get(type(value), "an object")
            raise _BadRequest(f"Invalid type for '{name}': expected a decimal, but got {got} "
                              "instead.", name, "invalid_type")
        if value > high:
            raise _BadRequest(f"Invalid '{name}': decimal above maximum value. Expected a value "
                              f"<= {high:g}, but got {value} instead.", name,
                              "decimal_above_max_value")
        if value < low:
            raise _BadRequest(f"Invalid '{name}': decimal below minimum value. Expected a value "
                              f">= {low:g}, but got {value} instead.", name,
                              "decimal_below_min_value")
    temperature = body.get("temperature")
    if (temperature is not None and temperature != 1 and openai_reasoning(model)
            and body.get("reasoning_effort") != "none"):
        raise _BadRequest(f"Unsupported value: 'temperature' does not support {temperature} with "
                          "this model. Only the default (1) value is supported.", "temperature",
                          "unsupported_value")


_JSON = "application/json"
_SSE = "text/event-stream"
_ERROR_KINDS: Final[dict[str, tuple[int, str, str | None, str]]] = {
    "400": (400, "invalid_request_error", None, "Simulated bad request."),
    "401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    "403": (403, "invalid_request_error", None, "You are not allowed to sample from this model."),
    "404": (404, "invalid_request_error", "model_not_found", "The model does not exist."),
    "408": (408, "invalid_request_error", "request_timeout", "Request timed out."),
    "409": (409, "invalid_request_error", "conflict", "The request conflicted; try again."),
    "422": (422, "invalid_request_error", None, "Unprocessable entity."),
    "429": (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached on requests per min (RPM). Please try again in 0s.",
    ),
    "500": (
        500,
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "502": (502, "server_error", None, "Bad gateway."),
    "503": (
        503,
        "server_error",
        None,
        "The engine is currently overloaded, please try again later.",
    ),
    "504": (504, "server_error", None, "Gateway timeout."),
    "402": (402, "invalid_request_error", "insufficient_balance", "Insufficient Balance."),
    "quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
}
_OVERLOADED_BODY: Final = orjson.dumps(
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
)
_HTML_BODY: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_DONE: Final = b"data: [DONE]\n\n"
# A spoken answer's sound, as message.audio.data carries it (base64 of a WAV file's first bytes)
_AUDIO_DATA: Final = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA="
_LINGER_RST: Final = struct.pack("ii", 1, 0)


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return orjson.dumps({"error": error})


_UPSTREAM_ERROR_BODY: Final = _error_body(
    "The upstream provider did not answer (simulated gateway error).", "upstream_error", None
)


def _gemini_thinks(body: dict[str, Any], stream: bool, default: bool) -> bool:
    """Whether Gemini thinks for a request as a gateway takes it (``gemini_thinking``), else
    as the model does by ``default``."""
    thinks = gemini_thinking(body, stream)[1]
    return default if thinks is None else thinks


def _thinking_budget(body: dict[str, Any], model: str, thinking: Any, gemini: bool,
                     stream: bool) -> int | None:
    """The most reasoning tokens a request that thinks allows, where it says: a
    ``-thinking-<budget>`` model, ``thinking.budget_tokens`` (Anthropic's, DeepSeek's), or
    Gemini's ``thinking_budget`` / ``thinkingBudget`` (``gemini_thinking``; -1 is dynamic: no
    bound). A model thinks up to its budget, not past it."""
    if (m := THINKING_BUDGET_SUFFIX.search(model)) is not None:
        return int(m[1])
    if isinstance(thinking, dict) and type(b := thinking.get("budget_tokens")) is int and b > 0:
        return b
    if gemini and type(b := gemini_thinking(body, stream)[2]) is int and b > 0:
        return b
    return None


def _search_usage(usage: dict[str, Any], shape: str | None) -> None:
    """Add to ``usage`` the search units a search shape's reply is billed: Grok's sources (one
    a cited URL), or Anthropic's web searches."""
    if shape == "citations":
        usage["num_sources_used"] = len(_Server.citation_urls(""))
    elif shape == "web_search":
        usage["server_tool_use"] = {"web_search_requests": 1}


def _reset_connection(request: web.BaseRequest) -> None:
    """Drop the connection with a TCP reset, sending nothing."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


class _Server:
    """The request handlers and all mutable state of one running simulator."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.stats = _Stats(clock(), config.stats_seconds)
        self.rng = random.Random(config.seed)
        # By key, or by key and model for a model with a limit of its own (model_rpm).
        self.buckets: dict[str | tuple[str, str], tuple[_Bucket | None, _Bucket | None]] = {}
        self.marker_counts: dict[int, int] = {}
        self.stopping = asyncio.Event()
        self.ids = itertools.count(1)
        self.id_prefix = f"{random.getrandbits(32):08x}"
        longest = config.reply_tokens or config.reply_tokens_max
        longest = math.ceil(longest * max(1.0, config.reasoning_ratio)) + 8
        self.filler = _filler(longest + 4096)
        self.filler_span = 4096
        self.models = frozenset(config.models) if config.models is not None else None
        self.reasoning_models = config.reasoning_models
        self.reasoning_cache: dict[str, bool] = {}
        self.limits_cache: dict[str, tuple[int, int]] = {}
        # Claude prompt prefixes in the cache: (model, prefix digest) -> until when.
        self.claude_prefixes: dict[tuple[str, bytes], float] = {}
        keys = set(config.quota_exhausted_keys)
        self.quota_keys = frozenset(keys)
        self.accepted_keys = (
            frozenset(keys | {config.api_key}) if config.api_key is not None else None
        )
        fault_table: list[tuple[float, str]] = []
        acc = 0.0
        for kind, rate in config.faults.items():
            acc += rate
            fault_table.append((acc, kind))
        self.fault_table = tuple(fault_table)
        self.base_latency = config.latency_ms / 1000.0
        self.jitter = config.jitter_ms / 1000.0
        self.token_delay = config.ms_per_token / 1000.0
        self.places = (asyncio.Semaphore(config.max_running)
                       if config.max_running is not None else None)
        self.routes: dict[
            tuple[str, str], Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
        ] = {}

    # ---------------------------------------------------------------- helpers

    def new_id(self) -> str:
        return f"req_{self.id_prefix}{next(self.ids):010x}"

    def respond(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str],
        content_type: str = _JSON,
    ) -> web.Response:
        self.stats.status(status)
        headers["Content-Type"] = content_type
        return web.Response(status=status, body=body, headers=headers)

    def error(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        headers: dict[str, str],
        param: str | None = None,
    ) -> web.Response:
        return self.respond(status, _error_body(message, type_, code, param), headers)

    def is_reasoning(self, model: str) -> bool:
        cached = self.reasoning_cache.get(model)
        if cached is None:
            cached = reasoning_model(model, self.reasoning_models)  # the estimate's rule too
            if len(self.reasoning_cache) < 10_000:
                self.reasoning_cache[model] = cached
        return cached

    def check_key(self, request: web.BaseRequest, headers: dict[str, str]) -> web.Response | str:
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if self.accepted_keys is not None and key not in self.accepted_keys:
            if not key:
                return self.error(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error",
                    None,
                    headers,
                )
            return self.error(
                401,
                "Incorrect API key provided. You can find your API key in your account settings.",
                "invalid_request_error",
                "invalid_api_key",
                headers,
            )
        return key

    # ---------------------------------------------------------------- parsing

    def parse(self, raw: bytes) -> _Request:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _BadRequest(
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)"
            ) from None
        if not isinstance(body, dict):
            raise _BadRequest("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("you must provide a model parameter", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest(
                "'messages' is a required property"
                if messages is None
                else "'messages' must be a non-empty array",
                "messages",
            )
        n = body.get("n")
        if n is None:
            n = 1
        elif not _is_int(n) or not 1 <= n <= MAX_N:
            raise _BadRequest(f"'n' must be an integer between 1 and {MAX_N}.", "n")
        max_tokens = body.get("max_completion_tokens")
        param = "max_completion_tokens"
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
            param = "max_tokens"
        if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
            raise _BadRequest(f"'{param}' must be a positive integer.", param)
        asked = max_tokens
        if max_tokens is None:
            max_tokens = self.config.default_max_tokens
        _check_limits(body, model)
        tier = body.get("service_tier")
        if tier is None or tier == "auto":
            tier = "default"
        elif tier not in _SERVICE_TIERS:
            raise _BadRequest(f"Invalid value: {orjson.dumps(tier).decode()}. Supported values "
                              "are: 'auto', 'default', 'flex', 'scale', and 'priority'.",
                              "service_tier", "invalid_value")
        logprobs = body.get("logprobs")
        top_logprobs = body.get("top_logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise _BadRequest("'logprobs' must be a boolean.", "logprobs")
        if top_logprobs is not None and (not _is_int(top_logprobs)
                                         or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS):
            raise _BadRequest(f"'top_logprobs' must be an integer between 0 and "
                              f"{MAX_TOP_LOGPROBS}.", "top_logprobs")
        if top_logprobs is not None and logprobs is not True:
            raise _BadRequest("'logprobs' must be true when 'top_logprobs' is set.", "logprobs")
        stream = body.get("stream") is True
        if not stream and body.get("stream_options") is not None:
            raise _BadRequest("The 'stream_options' parameter is only allowed when 'stream' is "
                              "enabled.", "stream_options")
        include_usage = False
        if stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
        stop_value = body.get("stop")
        stop: tuple[str, ...] = ()
        if isinstance(stop_value, str):
            stop = (stop_value,) if stop_value else ()
        elif isinstance(stop_value, list):
            if len(stop_value) > MAX_STOP or not all(isinstance(s, str) for s in stop_value):
                raise _BadRequest(f"'stop' must be a string or up to {MAX_STOP} strings.", "stop")
            stop = tuple(s for s in stop_value if s)
        elif stop_value is not None:
            raise _BadRequest(f"'stop' must be a string or up to {MAX_STOP} strings.", "stop")
        fmt = "text"
        schema: Any = None
        response_format = body.get("response_format")
        if response_format is not None:
            kind = response_format.get("type") if isinstance(response_format, dict) else None
            if kind == "json_schema":
                spec = response_format.get("json_schema")
                schema = spec.get("schema") if isinstance(spec, dict) else None
                fmt = "json_schema" if isinstance(schema, dict) else "json_object"
            elif kind == "json_object":
                fmt = "json_object"
            elif kind != "text":
                raise _BadRequest(
                    "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
                    "response_format",
                )
        thinking = body.get("thinking")
        reasoning = self.is_reasoning(model) and not reasoning_turned_off(body)
        gemini = gemini_named(model)
        if reasoning:
            if gemini:  # thinks by default, unless its budget is 0
                reasoning = _gemini_thinks(body, stream, True)
        else:
            # Qwen's enable_thinking is turned off, not refused, without a stream.
            reasoning = (body.get("enable_thinking") is True and stream) or (
                isinstance(thinking, dict) and thinking.get("type") == "enabled"
            ) or _gemini_thinks(body, stream, False)
        budget = _thinking_budget(body, model, thinking, gemini, stream) if reasoning else None

        digest = hashlib.blake2b(digest_size=16)
        tokens = REPLY_PRIMING_TOKENS
        prefix_tokens = 0
        in_prefix = True
        claude = "claude" in model.lower()  # cache writes reported, as the gateways pass them on
        prefix_digest = b""
        last_user = ""
        marker_parts: list[str] | None = None
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise _BadRequest(f"'messages.{index}' must be an object.", f"messages.{index}")
            role = message.get("role")
            if not isinstance(role, str):
                raise _BadRequest(
                    f"'messages.{index}.role' is a required property.", f"messages.{index}.role"
                )
            content = message.get("content")
            if isinstance(content, str):
                text = content
                images = 0
            else:
                try:
                    text, images = message_text(content, model)
                except ValueError as exc:
                    raise _BadRequest(
                        f"'messages.{index}.content': {exc}.", f"messages.{index}.content"
                    ) from None
            cost = MESSAGE_OVERHEAD_TOKENS + (len(text) + 3) // 4 + images
            tokens += cost
            if in_prefix:
                if role == "system" or role == "developer":
                    prefix_tokens += cost
                else:
                    in_prefix = False
                    if claude:
                        prefix_digest = digest.digest()
            if role == "user":
                last_user = text
            if _MARKER_OPEN in text:
                if marker_parts is None:
                    marker_parts = []
                marker_parts.append(text)
            digest.update(text.encode("utf-8", "surrogatepass"))
            digest.update(b"\x1e")
        markers: tuple[tuple[str, int | None], ...] = ()
        if marker_parts is not None:
            found = _MARKER_RE.findall("\n".join(marker_parts))
            for kind, _ in found:
                if kind not in FAULT_KINDS:
                    raise _BadRequest(
                        f"unknown simulator marker [[sim:{kind}]] (kinds: {', '.join(FAULT_KINDS)})"
                    )
            markers = tuple((kind, int(times) if times else None) for kind, times in found)
        if self.config.model_limits:
            limits = self.limits_cache.get(model)
            if limits is None:
                limits = model_limits(model)
                if len(self.limits_cache) < 10_000:
                    self.limits_cache[model] = limits
            _check_size(model, limits, tokens, asked, param)
        cached = 0
        claude_prefix: tuple[str, bytes, int] | None = None
        if self.config.prompt_caching and prefix_tokens >= CACHE_MIN_TOKENS:
            if claude:  # read or written: decided when answered
                claude_prefix = (model, prefix_digest if not in_prefix else digest.digest(),
                                 prefix_tokens)
            else:
                cached = prefix_tokens - prefix_tokens % CACHE_BLOCK_TOKENS
        return _Request(
            model=model,
            n=n,
            stream=stream,
            include_usage=include_usage,
            max_tokens=max_tokens,
            stop=stop,
            response_format=fmt,
            schema=schema,
            reasoning=reasoning,
            thinking_budget=budget,
            # Gemini's thoughts come through a gateway in a stream only ("use stream: true to
            # view reasoning_content"), billed alike.
            hidden_reasoning=reasoning and ((gemini and not stream) or openai_reasoning(model)
                                            or _HIDDEN_REASONING.search(model) is not None),
            prompt_tokens=tokens,
            cached_tokens=cached,
            digest=int.from_bytes(digest.digest(), "little"),
            last_user=last_user,
            markers=markers,
            tools=body.get("tools"),
            forced_tool=_forced_tool(body.get("tools"), body.get("tool_choice")),
            whole_so_far=stream and _not_incremental(body),
            think_inline=stream and body.get("nebula_thinking_to_content") is True,
            top_logprobs=(top_logprobs or 0) if logprobs is True else None,
            claude_prefix=claude_prefix,
            claude=claude,
            service_tier=tier,
            live_search=_live_search(model, body.get("search_parameters")),
            audio=type(modes := body.get("modalities")) is list and "audio" in modes,
        )

    # ---------------------------------------------------------------- reply content

    def reply_tokens(self, seed: int) -> int:
        config = self.config
        if config.reply_tokens is not None:
            return config.reply_tokens
        low = config.reply_tokens_min
        spread = config.reply_tokens_mean - low
        if spread <= 0:
            return low
        u = (seed >> 11) / 9007199254740992.0
        return min(config.reply_tokens_max, low + int(-math.log1p(-u) * spread + 0.5))

    def choice_seed(self, req: _Request, index: int) -> int:
        return _mix(req.digest ^ ((index * _GOLDEN) & _MASK64))

    def token_logprobs(self, req: _Request, index: int, text: str) -> list[dict[str, Any]]:
        """The log probabilities of choice ``index``'s ``text``, a token each 4 characters (as
        a stream sends it, and as usage counts it): ``{"token", "logprob", "bytes",
        "top_logprobs"}``, the chosen token's logprob drawn (most near 0, a few as low as -4)
        from the request's digest, so the same request gets the same values; its
        ``top_logprobs`` are the chosen token and other filler words below it."""
        seed = self.choice_seed(req, index)
        top = req.top_logprobs or 0
        out: list[dict[str, Any]] = []
        for j in range(0, len(text), 4):
            token = text[j : j + 4]
            v = _mix(seed ^ ((j + 1) * _GOLDEN & _MASK64))
            logprob = round(-4.0 * ((v >> 11) / 9007199254740992.0) ** 3, 6)
            ranked = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
            for k in range(1, top):
                other = self.filler_text((v >> 13) + k, 4)
                ranked.append({"token": other, "logprob": round(logprob - 1.5 * k - 0.25, 6),
                               "bytes": list(other.encode())})
            out.append({**ranked[0], "top_logprobs": ranked if top else []})
        return out

    def choice_logprobs(self, req: _Request, index: int, c: _Choice) -> dict[str, Any] | None:
        """A choice's ``logprobs`` as a non-stream reply has it; None when not asked."""
        if req.top_logprobs is None:
            return None
        tokens = self.token_logprobs(req, index, c.content) if c.tool_call is None else None
        return {"content": tokens, "refusal": None}

    def filler_text(self, seed: int, chars: int) -> str:
        """``chars`` characters of filler words starting at a word boundary."""
        start = (seed % self.filler_span) * 4
        return self.filler[start : start + chars]

    def make_choice(self, req: _Request, index: int, head: str) -> _Choice:
        seed = self.choice_seed(req, index)
        target = self.reply_tokens(seed)
        if req.n > 1:
            head = f"{head} #{index}"
        if req.response_format == "text":
            words = (4 * target - len(head) - 1) // 4
            content = head
            if words > 0:
                content += " " + self.filler_text(seed >> 7, 4 * words - 1)
        elif req.response_format == "json_object":
            words = max(1, (4 * target - len(head) - 24) // 4)
            text = self.filler_text(seed >> 7, 4 * words - 1)
            content = orjson.dumps({"echo": head, "text": text}).decode()
        else:
            faker = _SchemaFaker(req.schema, seed, head, self.filler)
            try:
                content = orjson.dumps(faker.value(req.schema)).decode()
            except (RecursionError, TypeError, ValueError, orjson.JSONEncodeError):
                content = orjson.dumps({"echo": head}).decode()  # a schema beyond the faker
        reasoning = ""
        reasoning_tokens = 0
        if req.reasoning:
            reasoning_tokens = math.ceil(target * self.config.reasoning_ratio)
            if req.thinking_budget is not None and reasoning_tokens > req.thinking_budget:
                reasoning_tokens = req.thinking_budget
            if reasoning_tokens and not req.hidden_reasoning:
                reasoning = (
                    "Thinking about the request. "
                    + self.filler_text(seed >> 13, 4 * reasoning_tokens)
                )[: 4 * reasoning_tokens - 1]
        finish = "stop"
        if req.stop:
            cut = -1
            for s in req.stop:
                at = content.find(s)
                if at >= 0 and (cut < 0 or at < cut):
                    cut = at
            if cut >= 0:
                content = content[:cut]
        content_tokens = (len(content) + 3) // 4
        limit = req.max_tokens
        if limit is not None and reasoning_tokens + content_tokens > limit:
            finish = "length"
            if reasoning_tokens >= limit:
                reasoning_tokens = limit
                reasoning = reasoning[: 4 * limit]
                content = ""
                content_tokens = 0
            else:
                content_tokens = limit - reasoning_tokens
                content = content[: 4 * content_tokens]
        return _Choice(content, reasoning, content_tokens, reasoning_tokens, finish)

    def make_choices(self, req: _Request, key: str) -> list[_Choice]:
        text = req.last_user
        excerpt = text[:EXCERPT_CHARS]
        if not excerpt.isprintable() or "  " in excerpt:
            excerpt = " ".join(text[: EXCERPT_CHARS * 4].split())[:EXCERPT_CHARS]
        head = f"Echo: [{key}] {excerpt}" if excerpt else f"Echo: [{key}]"
        return [self.make_choice(req, i, head) for i in range(req.n)]

    def tool_call_choices(self, req: _Request, key: str, *, cut: bool = False) -> list[_Choice]:
        """The ``tool_calls`` shape: each choice calls the function ``tool_choice`` forces, or
        else the request's first tool."""
        name, params = "extract", None
        tools = req.tools
        if isinstance(tools, list) and tools and isinstance(tools[0], dict):
            fn = tools[0].get("function")
            for tool in tools if req.forced_tool is not None else ():
                called = tool.get("function") if isinstance(tool, dict) else None
                if isinstance(called, dict) and called.get("name") == req.forced_tool:
                    fn = called
            if isinstance(fn, dict):
                if isinstance(fn.get("name"), str) and fn["name"]:
                    name = fn["name"]
                if isinstance(fn.get("parameters"), dict):
                    params = fn["parameters"]
        head = f"Echo: [{key}]"
        out = []
        for i in range(req.n):
            seed = self.choice_seed(req, i)
            value: Any = {"echo": head}
            if params is not None:
                with contextlib.suppress(RecursionError, TypeError, ValueError):
                    value = _SchemaFaker(params, seed, head, self.filler).value(params)
            args = orjson.dumps(value).decode()
            if cut:  # the bad_arguments shape: JSON cut off half-way
                args = args[: len(args) // 2]
            call = (f"call_{key}_{i}", name, args)
            out.append(_Choice("", "", count_tokens(args), 0, "tool_calls", call))
        return out

    @staticmethod
    def citation_urls(key: str) -> list[str]:
        return [f"https://example.com/sim/{key}/{i}" for i in (1, 2)]

    def annotations(self, key: str, content: str) -> list[dict[str, Any]]:
        return [{"type": "url_citation",
                 "url_citation": {"url": url, "title": f"Source {i} for {key}",
                                  "start_index": 0, "end_index": min(len(content), 10 * i)}}
                for i, url in enumerate(self.citation_urls(key), 1)]

    def charge(self, req: _Request) -> int:
        if req.max_tokens is not None:
            per_choice = req.max_tokens * req.n
        else:
            per_choice = 0
            for i in range(req.n):
                target = self.reply_tokens(self.choice_seed(req, i))
                if req.reasoning:
                    target += math.ceil(target * self.config.reasoning_ratio)
                per_choice += target
        return req.prompt_tokens + per_choice

    # ---------------------------------------------------------------- faults

    def marker_fault(self, req: _Request) -> tuple[str | None, bool]:
        """The failure kind a marker in the prompt asks for (or None), and whether to be slow."""
        count = self.marker_counts.get(req.digest, 0)
        self.marker_counts[req.digest] = count + 1
        slow = False
        failure: str | None = None
        position = count
        for kind, times in req.markers:
            if kind == "slow":
                slow = slow or times is None or count < times
                continue
            if failure is not None:
                continue
            if times is None or position < times:
                failure = kind
            else:
                position -= times
        return failure, slow

    def random_fault(self) -> str | None:
        u = self.rng.random()
        for edge, kind in self.fault_table:
            if u < edge:
                return kind
        return None

    # ---------------------------------------------------------------- handlers

    async def chat(self, request: web.BaseRequest) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        headers = {"x-request-id": self.new_id()}
        if self.config.announce:
            headers[ANNOUNCE_HEADER] = "1"
        key = self.check_key(request, headers)
        if not isinstance(key, str):
            return key
        config = self.config
        if config.quota_exhausted or key in self.quota_keys:
            stats.limited("insufficient_quota", self.clock())
            _, type_, code, message = _ERROR_KINDS["quota"]
            return self.error(429, message, type_, code, headers)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self.error(
                413, "The request body is too large.", "invalid_request_error", None, headers
            )
        try:
            req = self.parse(raw)
            if self.models is not None and req.model not in self.models:
                return self.error(
                    404,
                    f"The model `{req.model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    "model_not_found",
                    headers,
                    "model",
                )
        except _BadRequest as exc:
            return self.error(400, exc.message, "invalid_request_error", exc.code, headers,
                              exc.param)
        pk = prompt_key(req.last_user)
        if config.track_prompts:
            by_prompt = stats.requests_by_prompt
            by_prompt[pk] = by_prompt.get(pk, 0) + 1
        if config.rpm is not None or config.tpm is not None or config.model_rpm:
            refused = self.admit(key, req, headers)
            if refused is not None:
                return refused
        failure: str | None = None
        slow = False
        if req.markers:
            failure, slow = self.marker_fault(req)
        if failure is None and self.fault_table:
            failure = self.random_fault()
            if failure == "slow":
                failure, slow = None, True
        shape: str | None = None
        if failure is not None and failure in _SHAPES:
            shape, failure = failure, None
        if req.forced_tool is not None and shape not in ("bad_arguments", "no_call"):
            shape = "tool_calls"  # a forced call is made, whatever else the prompt asks
        elif req.live_search and shape is None:
            shape = "citations"  # Grok's live search: its sources cited and billed
        if self.places is None:
            return await self.answer(request, req, headers, pk, failure, slow, shape)
        if self.places.locked():
            stats.queued += 1
        async with self.places:  # a place in the batch, or a wait in the queue for one
            stats.running += 1
            stats.running_peak = max(stats.running_peak, stats.running)
            try:
                return await self.answer(request, req, headers, pk, failure, slow, shape)
            finally:
                stats.running -= 1

    async def answer(self, request: web.BaseRequest, req: _Request, headers: dict[str, str],
                     pk: str, failure: str | None, slow: bool, shape: str | None
                     ) -> web.StreamResponse:
        """The answer to an admitted request, after its latency: a fault, or its reply."""
        config = self.config
        stats = self.stats
        delay = self.base_latency
        if self.jitter:
            delay += self.rng.random() * self.jitter
        if slow:
            delay += config.slow_ms / 1000.0
            stats.fault("slow")
        if delay > 0:
            await asyncio.sleep(delay)
        if failure is not None:
            self.stats.fault(failure)
            early = await self.early_fault(request, failure, req, headers)
            if early is not None:
                return early
        if req.claude_prefix is not None:
            self.claude_cache(req)
        if shape in ("tool_calls", "bad_arguments"):
            choices = self.tool_call_choices(req, pk, cut=shape == "bad_arguments")
        else:
            choices = self.make_choices(req, pk)
        if req.stream:
            return await self.stream(request, req, choices, headers, failure, pk, shape)
        return self.complete(req, choices, headers, failure, pk, shape)

    def claude_cache(self, req: _Request) -> None:
        """A Claude request's prompt prefix read from the cache (``cached_tokens``: all of it)
        when a request answered in the last ``CLAUDE_CACHE_TTL_S`` seconds had it, else written
        to it (``cache_write_tokens``), as Anthropic's prompt cache does."""
        assert req.claude_prefix is not None
        model, prefix, tokens = req.claude_prefix
        key = (model, prefix)
        now = self.clock()
        cache = self.claude_prefixes
        if cache.get(key, -math.inf) > now:
            req.cached_tokens = tokens
        else:
            req.cache_write_tokens = tokens
            if len(cache) >= CLAUDE_CACHE_KEPT:
                for old in [k for k, until in cache.items() if until <= now]:
                    del cache[old]
                if len(cache) >= CLAUDE_CACHE_KEPT:
                    cache.clear()
        cache[key] = now + CLAUDE_CACHE_TTL_S

    def admit(self, key: str, req: _Request, headers: dict[str, str]) -> web.Response | None:
        now = self.clock()
        config = self.config
        rpm = config.model_rpm.get(req.model)
        held = key if rpm is None else (key, req.model)  # a model limited on its own
        buckets = self.buckets.get(held)
        if buckets is None:
            rpm = config.rpm if rpm is None else rpm
            burst = config.limit_burst_s
            buckets = (
                _Bucket(rpm, now, burst) if rpm is not None else None,
                _Bucket(config.tpm, now, burst) if config.tpm is not None else None,
            )
            self.buckets[held] = buckets
        requests, tokens = buckets
        cost = self.charge(req) if tokens is not None else 0
        refused: str | None = None
        wait = 0.0
        if requests is not None:
            requests.refill(now)
            if requests.level < 1.0:
                refused = "requests"
                wait = requests.wait_for(1.0)
        if tokens is not None:
            tokens.refill(now)
            if refused is None and tokens.level < cost:
                refused = "tokens"
                wait = tokens.wait_for(cost)
        if refused is None:
            if requests is not None:
                requests.level -= 1.0
            if tokens is not None:
                tokens.level -= cost
        if self.config.limit_headers:
            if requests is not None:
                requests.headers("requests", headers)
                if (said := config.said_model_rpm.get(req.model)) is not None:
                    headers["x-ratelimit-limit-requests"] = str(said)
            if tokens is not None:
                tokens.headers("tokens", headers)
        if refused is None:
            return None
        self.stats.limited(refused, now)
        if refused == "requests":
            assert requests is not None
            limit = requests.limit
            used = int(requests.capacity - requests.level)
            message = (
                f"Rate limit reached for {req.model} on requests per min (RPM): Limit {limit}, "
                f"Used {used}, Requested 1. Please try again in {format_duration(wait)}."
            )
        else:
            assert tokens is not None
            limit = tokens.limit
            used = int(tokens.capacity - tokens.level)
            if cost > tokens.capacity:
                message = (
                    f"Request too large for {req.model} on tokens per min (TPM): Limit {limit}, "
                    f"Requested {cost}. The input or output tokens must be reduced in order to "
                    "run successfully."
                )
            else:
                message = (
                    f"Rate limit reached for {req.model} on tokens per min (TPM): Limit {limit}, "
                    f"Used {used}, Requested {cost}. Please try again in "
                    f"{format_duration(wait)}."
                )
        if self.config.limit_retry_after:
            if self.config.limit_retry_after_s is not None:
                wait = self.config.limit_retry_after_s
            headers["retry-after"] = str(max(1, math.ceil(wait - 1e-9)))
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000 - 1e-6)))
        return self.error(429, message, refused, "rate_limit_exceeded", headers)

    async def early_fault(
        self, request: web.BaseRequest, kind: str, req: _Request, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        """Faults that replace the reply entirely; None for faults that alter a reply."""
        spec = _ERROR_KINDS.get(kind)
        if spec is not None:
            status, type_, code, message = spec
            if kind == "429":
                headers["retry-after"] = "0"
                headers["retry-after-ms"] = "0"
                self.stats.limited("requests", self.clock())
            elif kind == "quota":
                self.stats.limited("insufficient_quota", self.clock())
            elif kind == "503":
                retry = self.config.fault_retry_after_s
                headers["retry-after"] = str(math.ceil(retry))
                headers["retry-after-ms"] = str(math.ceil(retry * 1000))
            return self.error(status, message, type_, code, headers)
        if kind == "529":
            return self.respond(529, _OVERLOADED_BODY, headers)
        if kind == "error_200":
            return self.respond(200, _UPSTREAM_ERROR_BODY, headers)
        if kind == "html":
            return self.respond(502, _HTML_BODY, headers, "text/html")
        if kind == "reset":
            self.stats.connections_reset += 1
            _reset_connection(request)
            return web.Response(status=204)
        if kind == "hang":
            self.stats.hangs += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.config.hang_s)
            _reset_connection(request)
            return web.Response(status=204)
        return None

    def record(self, req: _Request, usage: dict[str, Any], pk: str) -> None:
        """Count one served completion."""
        stats = self.stats
        stats.completions += 1
        stats.prompt_tokens += req.prompt_tokens
        stats.completion_tokens += usage["completion_tokens"]
        stats.cached_tokens += req.cached_tokens
        stats.cache_write_tokens += req.cache_write_tokens
        stats.reasoning_tokens += usage["completion_tokens_details"]["reasoning_tokens"]
        stats.hist_completions[stats.slot(self.clock())] += 1
        if self.config.track_prompts:
            done = stats.completions_by_prompt
            done[pk] = done.get(pk, 0) + 1

    @staticmethod
    def usage(req: _Request, choices: list[_Choice]) -> dict[str, Any]:
        completion = 0
        reasoning = 0
        for c in choices:
            completion += c.content_tokens + c.reasoning_tokens
            reasoning += c.reasoning_tokens
        details: dict[str, int] = {"cached_tokens": req.cached_tokens, "audio_tokens": 0}
        usage: dict[str, Any] = {
            "prompt_tokens": req.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": req.prompt_tokens + completion,
            "prompt_tokens_details": details,
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        if req.audio:  # a spoken answer: most of its tokens are the sound's
            spoken = (completion - reasoning) * 4 // 5
            usage["completion_tokens_details"]["audio_tokens"] = spoken
            usage["completion_tokens_details"]["text_tokens"] = completion - reasoning - spoken
        if req.claude:
            # Claude's cache writes as new-api's gateways pass them on: among the prompt's
            # details, those kept 5 minutes and an hour beside them (the prompt their whole).
            written = req.cache_write_tokens
            details["cached_creation_tokens"] = written
            usage["claude_cache_creation_5_m_tokens"] = written
            usage["claude_cache_creation_1_h_tokens"] = 0
        return usage

    def complete(
        self,
        req: _Request,
        choices: list[_Choice],
        headers: dict[str, str],
        fault: str | None,
        pk: str,
        shape: str | None = None,
    ) -> web.Response:
        messages: list[dict[str, Any]] = []
        for i, c in enumerate(choices):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": c.content,
                "refusal": None,
                "annotations": [],
            }
            if c.reasoning:
                message["reasoning_content"] = c.reasoning
            if c.tool_call is not None:
                call_id, name, args = c.tool_call
                message["content"] = None
                message["tool_calls"] = [{"id": call_id, "type": "function",
                                          "function": {"name": name, "arguments": args}}]
            elif shape == "annotations":
                message["annotations"] = self.annotations(pk, c.content)
            if req.audio and c.tool_call is None:  # spoken: the words are the transcript
                message["content"] = None
                message["audio"] = {"id": f"audio_{headers['x-request-id'][4:]}_{i}",
                                    "data": _AUDIO_DATA, "expires_at": int(time.time()) + 3600,
                                    "transcript": c.content}
            messages.append(
                {"index": i, "message": message, "logprobs": self.choice_logprobs(req, i, c),
                 "finish_reason": c.finish_reason}
            )
        body: dict[str, Any] = {
            "id": "chatcmpl-" + headers["x-request-id"][4:],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": messages,
            "usage": None,
            "service_tier": req.service_tier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        usage = self.usage(req, choices)
        _search_usage(usage, shape)
        body["usage"] = usage
        if shape == "citations":
            body["citations"] = self.citation_urls(pk)
        if fault is None:
            self.record(req, usage, pk)
            return self.respond(200, orjson.dumps(body), headers)
        if fault == "no_usage":
            del body["usage"]
        elif fault in ("no_choices", "no_done"):
            del body["choices"]
        data = orjson.dumps(body)
        if fault in ("truncated", "cut"):
            data = data[: len(data) // 2]
        elif fault == "corrupt":
            data = data[: len(data) // 3] + b"\x00<<corrupt>>\xff" + data[len(data) // 2 :]
        return self.respond(200, data, headers)

    async def stream(
        self,
        request: web.BaseRequest,
        req: _Request,
        choices: list[_Choice],
        headers: dict[str, str],
        fault: str | None,
        pk: str,
        shape: str | None = None,
    ) -> web.StreamResponse:
        rid = headers["x-request-id"]
        created = int(time.time())
        model = orjson.dumps(req.model)
        top = (
            b'"id":"chatcmpl-'
            + rid[4:].encode()
            + b'","object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + model
            + b',"service_tier":"'
            + req.service_tier.encode()
            + b'","system_fingerprint":"'
            + SYSTEM_FINGERPRINT.encode()
            + b'"'
        )
        if req.think_inline:  # the gateway's inlining of the reasoning into the content
            for c in choices:
                if c.reasoning:
                    c.content = f"<think>\n{c.reasoning}\n</think>\n\n{c.content}"
                    c.reasoning = ""
        pre = b"data: {" + top + b',"choices":[{"index":'
        post = b',"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        if not req.include_usage:
            post = b',"logprobs":null,"finish_reason":null}]}\n\n'
        dumps = orjson.dumps
        headers["Cache-Control"] = "no-cache"
        if (fault is None and not self.token_delay and shape is None and not req.whole_so_far
                and req.top_logprobs is None and not req.audio):
            # The hot path: the whole stream as one body, built with few allocations.
            usage = self.usage(req, choices)
            self.record(req, usage, pk)
            body: list[bytes] = []
            tail = b"}" + post
            for i, c in enumerate(choices):
                start = pre + str(i).encode()
                body.append(start + b',"delta":{"role":"assistant","content":"","refusal":null}')
                body.append(post)
                for key, text in ((b"reasoning_content", c.reasoning), (b"content", c.content)):
                    if text:
                        part = start + b',"delta":{"' + key + b'":'
                        body.append(part)
                        body.append(
                            (tail + part).join(
                                [dumps(text[j : j + 4]) for j in range(0, len(text), 4)]
                            )
                        )
                        body.append(tail)
                body.append(
                    start
                    + b',"delta":{},"logprobs":null,"finish_reason":"'
                    + c.finish_reason.encode()
                    + (b'"}],"usage":null}\n\n' if req.include_usage else b'"}]}\n\n')
                )
            if req.include_usage:
                body.append(b"data: {" + top + b',"choices":[],"usage":' + dumps(usage) + b"}\n\n")
            body.append(_DONE)
            return self.respond(200, b"".join(body), headers, _SSE)
        events: list[bytes] = []
        delays: list[int] = []  # tokens carried by each event
        for i, c in enumerate(choices):
            idx = str(i).encode()
            events.append(
                pre + idx + b',"delta":{"role":"assistant","content":"","refusal":null}' + post
            )
            # OpenAI's hidden reasoning: its time passes before the first content.
            delays.append(c.reasoning_tokens if req.hidden_reasoning else 0)
            opening = len(events) - 1
            if fault == "no_choices":
                events[-1] = b"data: {" + top + b"}\n\n"
                continue
            # Each piece: the next 4 characters, or with incremental_output false the text so far.
            since = 0 if req.whole_so_far else 1
            ranked = (self.token_logprobs(req, i, c.content)
                      if req.top_logprobs is not None and c.tool_call is None else None)
            for key, text in ((b"reasoning_content", c.reasoning), (b"content", c.content)):
                part = pre + idx + b',"delta":{"' + key + b'":'
                close = b"}"
                if req.audio and key == b"content" and c.tool_call is None:
                    # a spoken answer: its transcript in pieces of delta.audio
                    part = pre + idx + b',"delta":{"audio":{"transcript":'
                    close = b"}}"
                for j in range(0, len(text), 4):
                    after = post
                    if ranked is not None and key == b"content":  # the piece's token's
                        after = post.replace(b'"logprobs":null', b'"logprobs":{"content":['
                                             + dumps(ranked[j // 4]) + b'],"refusal":null}', 1)
                    events.append(part + dumps(text[j * since : j + 4]) + close + after)
                    delays.append(1)
            if c.tool_call is not None:
                call_id, name, args = c.tool_call
                head = {"index": 0, "id": call_id, "type": "function",
                        "function": {"name": name, "arguments": ""}}
                events[opening] = (pre + idx + b',"delta":{"role":"assistant","content":null,'
                              b'"tool_calls":[' + dumps(head) + b"]}" + post)
                for j in range(0, len(args), 8):
                    piece = {"index": 0, "function": {"arguments": args[j : j + 8]}}
                    events.append(pre + idx + b',"delta":{"tool_calls":[' + dumps(piece)
                                  + b"]}" + post)
                    delays.append(2)
            elif shape == "annotations":
                events.append(pre + idx + b',"delta":{"annotations":'
                              + dumps(self.annotations(pk, c.content)) + b"}" + post)
                delays.append(0)
            if fault == "no_done":
                continue
            events.append(
                pre
                + idx
                + b',"delta":{},"logprobs":null,"finish_reason":"'
                + c.finish_reason.encode()
                + (b'"}],"usage":null}\n\n' if req.include_usage else b'"}]}\n\n')
            )
            delays.append(0)
        usage = self.usage(req, choices)
        _search_usage(usage, shape)
        if fault is None:
            self.record(req, usage, pk)
        if shape == "citations":
            events.append(b"data: {" + top + b',"choices":[],"citations":'
                          + dumps(self.citation_urls(pk)) + b"}\n\n")
            delays.append(0)
        if req.include_usage and fault not in ("no_usage", "no_done", "no_choices"):
            events.append(b"data: {" + top + b',"choices":[],"usage":' + dumps(usage) + b"}\n\n")
            delays.append(0)
        if fault == "corrupt":
            at = max(1, len(events) // 2)
            events.insert(at, b"data: {" + top + b',"choices":[{"index":0,"delta":{"content":"\n\n')
            delays.insert(at, 0)
        if fault != "no_done":
            events.append(_DONE)
            delays.append(0)
        cut = fault in ("cut", "truncated")
        if not cut and not self.token_delay:
            return self.respond(200, b"".join(events), headers, _SSE)
        self.stats.status(200)
        headers["Content-Type"] = _SSE
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        stop_at = max(2, len(events) // 2) if cut else len(events)
        pending = 0.0
        for event, tokens in zip(events[:stop_at], delays[:stop_at], strict=True):
            await response.write(event)
            if tokens and self.token_delay:
                pending += self.token_delay * tokens
                if pending >= 0.002:
                    await asyncio.sleep(pending)
                    pending = 0.0
        if cut:
            self.stats.connections_reset += 1
            _reset_connection(request)
            return response
        await response.write_eof()
        return response

    async def models_list(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = {"x-request-id": self.new_id()}
        checked = self.check_key(request, headers)
        if not isinstance(checked, str):
            return checked
        names = self.config.models if self.config.models is not None else DEFAULT_LISTED_MODELS
        created = int(self.stats.started_at)
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "batchrunner"}
            for name in names
        ]
        return self.respond(200, orjson.dumps({"object": "list", "data": data}), headers)

    async def model_get(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        headers = {"x-request-id": self.new_id()}
        checked = self.check_key(request, headers)
        if not isinstance(checked, str):
            return checked
        if self.models is not None and name not in self.models:
            return self.error(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
                headers,
                "model",
            )
        body = {
            "id": name,
            "object": "model",
            "created": int(self.stats.started_at),
            "owned_by": "batchrunner",
        }
        return self.respond(200, orjson.dumps(body), headers)

    async def stats_get(self, request: web.BaseRequest) -> web.StreamResponse:
        per_prompt = request.query.get("per_prompt", "") not in ("", "0", "false", "no")
        body = orjson.dumps(self.snapshot(per_prompt=per_prompt))
        return web.Response(
            body=body, headers={"x-request-id": self.new_id(), "Content-Type": _JSON}
        )

    async def stats_reset(self, request: web.BaseRequest) -> web.StreamResponse:
        self.reset()
        return web.Response(
            body=b'{"ok":true}', headers={"x-request-id": self.new_id(), "Content-Type": _JSON}
        )

    async def health(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="ok", headers={"x-request-id": self.new_id()})

    async def not_found(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = {"x-request-id": self.new_id()}
        if self.config.announce:  # a run sent to a mistyped path of it knows it too
            headers[ANNOUNCE_HEADER] = "1"
        return self.error(
            404,
            f"Invalid URL ({request.method} {request.path})",
            "invalid_request_error",
            None,
            headers,
        )

    def snapshot(self, *, per_prompt: bool = False) -> dict[str, Any]:
        return self.stats.snapshot(self.clock(), per_prompt)

    def reset(self) -> None:
        self.stats = _Stats(self.clock(), self.config.stats_seconds)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route a request (aiohttp's low-level server: no router or middleware layers)."""
        method = request.method
        path = request.path
        if method == "POST" and (path == "/v1/chat/completions" or path == "/chat/completions"):
            return await self.chat(request)
        route = self.routes.get((method, path.rstrip("/")))
        if route is not None:
            return await route(request)
        if method == "GET" and path.startswith("/v1/models/") and len(path) > 11:
            return await self.model_get(request, path[11:])
        return await self.not_found(request)

    def make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return web.BaseRequest(
            message, payload, protocol, writer, task, task.get_loop(), client_max_size=MAX_BODY
        )

    def server(self) -> web.Server:
        self.routes = {
            ("GET", "/v1/models"): self.models_list,
            ("GET", "/models"): self.models_list,
            ("GET", "/v1/simulator/stats"): self.stats_get,
            ("POST", "/v1/simulator/reset"): self.stats_reset,
            ("GET", "/health"): self.health,
        }
        return web.Server(
            self.handle,
            request_factory=self.make_request,
            handler_cancellation=True,
            access_log=None,
        )


# --------------------------------------------------------------------------------------------
# Running it


class Simulator:
    """The simulator on the current event loop::

        async with Simulator(SimulatorConfig(rpm=600), host="127.0.0.1", port=0) as sim:
            client = AsyncOpenAI(base_url=sim.base_url, api_key="sk-test")

    ``clock`` (seconds, monotonic) drives the rate limiter and statistics; tests may pass a
    fake one.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.host = host
        self._requested_port = port
        self._clock = clock if clock is not None else time.monotonic
        self._server: _Server | None = None
        self._runner: web.BaseRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not running")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        server = _Server(self.config, self._clock)
        runner = web.ServerRunner(
            server.server(), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        # A deep accept queue, as an API's front end has: with the default of 128, a client
        # opening hundreds of connections at once has some refused, and each refused one is
        # retried by the kernel a whole second later.
        site = web.TCPSite(runner, self.host, self._requested_port, backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        addresses = runner.addresses
        self._port = int(addresses[0][1]) if addresses else self._requested_port
        self._server = server
        self._runner = runner

    async def stop(self) -> None:
        runner, server = self._runner, self._server
        self._runner = None
        if server is not None:
            server.stopping.set()
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _live(self) -> _Server:
        if self._server is None:
            raise RuntimeError("the simulator has not been started")
        return self._server

    def stats(self, *, per_prompt: bool = False) -> dict[str, Any]:
        """The counters ``GET /v1/simulator/stats`` returns."""
        return self._live().snapshot(per_prompt=per_prompt)

    def reset_stats(self) -> None:
        """Zero the counters (rate-limit buckets and marker counts are kept)."""
        self._live().reset()

    def set_latency(self, ms: float) -> None:
        """Answer the requests that come from now on after ``ms`` (``latency_ms``'s meaning):
        a slow spell, or its end."""
        self._live().base_latency = ms / 1000.0


class SimulatorThread:
    """The simulator on its own event loop in a background thread, for synchronous code::

    with SimulatorThread(SimulatorConfig()) as sim:
        subprocess.run([..., "--base-url", sim.base_url], check=True)
        assert sim.stats()["completions"] == 100
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        start_timeout: float = 30.0,
    ) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.host = host
        self._port = port
        self._start_timeout = start_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._sim: Simulator | None = None
        self._ready = threading.Event()
        self._errors: list[BaseException] = []

    @property
    def port(self) -> int:
        return self._running().port

    @property
    def base_url(self) -> str:
        return self._running().base_url

    def _running(self) -> Simulator:
        if self._sim is None:
            raise RuntimeError("the simulator thread is not running")
        return self._sim

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the simulator thread is already running")
        self._ready.clear()
        self._errors.clear()
        thread = threading.Thread(target=self._run, name="batchrunner-simulator", daemon=True)
        self._thread = thread
        thread.start()
        if not self._ready.wait(self._start_timeout):
            raise RuntimeError("the simulator thread did not start in time")
        if self._errors:
            self._thread = None
            thread.join(self._start_timeout)
            raise self._errors[0]

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._errors.append(exc)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        async with Simulator(self.config, host=self.host, port=self._port) as sim:
            self._sim = sim
            self._ready.set()
            await self._stop_event.wait()

    def _call(self, fn: Callable[[], Any]) -> Any:
        loop = self._loop
        if loop is None or self._sim is None:
            raise RuntimeError("the simulator thread is not running")

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(self._start_timeout)

    def stats(self, *, per_prompt: bool = False) -> dict[str, Any]:
        sim = self._running()
        result: dict[str, Any] = self._call(lambda: sim.stats(per_prompt=per_prompt))
        return result

    def reset_stats(self) -> None:
        sim = self._running()
        self._call(sim.reset_stats)

    def set_latency(self, ms: float) -> None:
        sim = self._running()
        self._call(lambda: sim.set_latency(ms))

    def stop(self) -> None:
        thread, loop, event = self._thread, self._loop, self._stop_event
        self._thread = None
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        if thread is not None:
            thread.join(self._start_timeout)
        self._sim = None
        self._loop = None

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Command line


def _port(text: str) -> int:
    """``--port``'s value: a TCP port, or 0 for any free one."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535 (0: any free one), "
                                         f"got {text!r}")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``batchrunner simulate``."""
    add = parser.add_argument
    add("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    add("--port", type=_port, default=DEFAULT_PORT,
        help="port, 0 for any (default: %(default)s)")
    add(
        "--config",
        metavar="TOML",
        help="read settings from a TOML file's [simulator] table (or its top level); "
        "options given here override them",
    )
    add("--api-key", dest="api_key", metavar="KEY",
        help="require this key (default: accept any key, or none)")
    add("--models", metavar="NAMES",
        help="comma-separated model names to accept (default: any)")
    add("--reasoning-models", dest="reasoning_models", metavar="NAMES",
        help="comma-separated models of other providers' that answer with reasoning tokens "
        "(default: deepseek-r1, grok-4 and the like; OpenAI's o-series and GPT-5, and names "
        "that say so, such as deepseek-reasoner or -thinking and -reasoning ones, always do)")
    add("--rpm", type=int, metavar="N", help="requests per minute per key (default: unlimited)")
    add("--tpm", type=int, metavar="N", help="tokens per minute per key (default: unlimited)")
    add("--no-model-limits", dest="model_limits", action="store_const", const=False,
        default=None, help="answer prompts over a model's context window and max_tokens over "
        "its output limit (default: refused 400, as the provider words it)")
    add("--no-limit-headers", dest="limit_headers", action="store_const", const=False,
        default=None, help="send no x-ratelimit-* headers: the limits are hidden, 429s alone "
        "say them (a gateway's)")
    add("--no-limit-retry-after", dest="limit_retry_after", action="store_const", const=False,
        default=None, help="a limit's 429 says no retry-after (some gateways')")
    add("--limit-retry-after", dest="limit_retry_after_s", type=float, metavar="S",
        help="a limit's 429 asks S seconds in its retry-after, whatever its bucket says "
        "(default: the time until the request would be allowed)")
    add("--model-rpm", dest="model_rpm_spec", action="append", metavar="MODEL=N",
        help="requests per minute per key for MODEL, limited on its own as OpenAI limits each "
        "model (repeatable; default: none)")
    add(
        "--default-max-tokens",
        dest="default_max_tokens",
        type=int,
        metavar="N",
        help="max_tokens assumed when a request sets none (default: none)",
    )
    add("--reply-tokens", dest="reply_tokens", type=int, metavar="N",
        help="every reply this many tokens (default: drawn, below)")
    add(
        "--reply-tokens-min",
        dest="reply_tokens_min",
        type=int,
        metavar="N",
        help=f"shortest drawn reply (default: {DEFAULT_REPLY_TOKENS_MIN})",
    )
    add(
        "--reply-tokens-mean",
        dest="reply_tokens_mean",
        type=float,
        metavar="N",
        help=f"mean drawn reply (default: {DEFAULT_REPLY_TOKENS_MEAN:g})",
    )
    add(
        "--reply-tokens-max",
        dest="reply_tokens_max",
        type=int,
        metavar="N",
        help=f"longest drawn reply (default: {DEFAULT_REPLY_TOKENS_MAX})",
    )
    add(
        "--reasoning-ratio",
        dest="reasoning_ratio",
        type=float,
        metavar="X",
        help="reasoning tokens per reply token for reasoning models (default: 1)",
    )
    add("--latency-ms", dest="latency_ms", type=float, metavar="MS",
        help="milliseconds before each request is answered (default: 0)")
    add("--jitter-ms", dest="jitter_ms", type=float, metavar="MS",
        help="up to this many milliseconds more, drawn uniformly (default: 0)")
    add("--ms-per-token", dest="ms_per_token", type=float, metavar="MS",
        help="milliseconds between a stream's tokens (default: 0)")
    add("--max-running", dest="max_running", type=int, metavar="N",
        help="answer at most N requests at once, the others queued, as a GPU server's batch "
        "(vLLM's --max-num-seqs; default: no bound)")
    add(
        "--slow-ms",
        dest="slow_ms",
        type=float,
        metavar="MS",
        help=f"milliseconds the slow fault adds (default: {DEFAULT_SLOW_MS:g})",
    )
    add(
        "--hang-s",
        dest="hang_s",
        type=float,
        metavar="S",
        help=f"seconds the hang fault holds a request (default: {DEFAULT_HANG_S:g})",
    )
    add(
        "--fault",
        dest="fault",
        action="append",
        metavar="KIND=RATE",
        help="the share of requests, 0 to 1, given fault KIND at random (503=0.02: 2 %%; "
        f"repeatable; default: none); KIND is one of {', '.join(FAULT_KINDS)}",
    )
    add("--seed", type=int, metavar="N", help="seeds random faults and jitter (default: 0)")
    add(
        "--quota-exhausted",
        dest="quota_exhausted",
        action="store_true",
        default=None,
        help="answer every key with 429 insufficient_quota",
    )
    add(
        "--quota-exhausted-key",
        dest="quota_exhausted_keys",
        action="append",
        metavar="KEY",
        help="answer this key with 429 insufficient_quota (repeatable)",
    )


def config_from_args(ns: argparse.Namespace) -> SimulatorConfig:
    """The config the options in ``ns`` describe (a ``--config`` file first, options on top).
    A simulator served on its own announces itself, unless the file says ``announce = false``
    (to stand in for a real endpoint)."""
    data: dict[str, Any] = {"announce": True}
    path = getattr(ns, "config", None)
    if path:
        try:
            with open(path, "rb") as fh:
                loaded = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        table = loaded.get("simulator", loaded)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [simulator] must be a table")
        data.update(table)
    names = {f.name for f in fields(SimulatorConfig)}
    for name in names:
        value = getattr(ns, name, None)
        if value is None:
            continue
        if name in ("models", "reasoning_models") and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        data[name] = value
    specs = getattr(ns, "fault", None) or []
    if specs:
        faults: dict[str, float] = dict(data.get("faults") or {})
        for spec in specs:
            kind, sep, rate = spec.partition("=")
            try:
                faults[kind.strip()] = float(rate)
            except ValueError:
                sep = ""
            if not sep:
                raise ConfigError(f"--fault must look like KIND=RATE (e.g. 503=0.01), got {spec!r}")
            if kind.strip() not in FAULT_KINDS:
                raise ConfigError(f"--fault {spec}: unknown kind {kind.strip()!r} (kinds: "
                                  f"{', '.join(FAULT_KINDS)})")
            if not 0.0 <= faults[kind.strip()] <= 1.0:
                raise ConfigError(f"--fault {spec}: the rate must be between 0 and 1 (a share "
                                  "of requests: 0.01 is 1 %)")
        data["faults"] = faults
    for spec in getattr(ns, "model_rpm_spec", None) or []:
        model, sep, rpm = spec.rpartition("=")
        if not sep or not model.strip() or not rpm.strip().isdigit() or int(rpm) < 1:
            raise ConfigError(f"--model-rpm must look like MODEL=N (e.g. gpt-4o=500), got {spec!r}")
        data["model_rpm"] = {**(data.get("model_rpm") or {}), model.strip(): int(rpm)}
    return SimulatorConfig.from_mapping(data)


async def _serve(config: SimulatorConfig, host: str, port: int) -> None:
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        sim = Simulator(config, host=host, port=port)
        await sim.start()
    except OSError as exc:
        # asyncio's message repeats the address as a tuple: the errno's own text is enough (a
        # host name not found has a negative one, and its own text).
        why = (os.strerror(exc.errno) if exc.errno and exc.errno > 0
               else exc.strerror or str(exc))
        if exc.errno == errno.EADDRINUSE:
            why += " (another server is on it: stop that one, or give another --port)"
        raise UsageError(f"cannot listen on {host}:{port}: {why}") from None
    try:
        print(f"batchrunner simulator listening on {sim.base_url} (Ctrl-C to stop)", flush=True)
        await stop.wait()
    finally:
        await sim.stop()


def serve(config: SimulatorConfig, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Run the simulator until Ctrl-C or SIGTERM; prints one line with its URL."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, host, port))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m batchrunner.simulator [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m batchrunner.simulator",
        description="An OpenAI-compatible Chat Completions simulator.",
        allow_abbrev=False,  # options taken whole: --reply-tokens-m is none of three
    )
    add_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        serve(config_from_args(ns), ns.host, ns.port)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
