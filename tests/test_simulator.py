"""The simulator, checked with the official ``openai`` SDK as the reference client."""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import selectors
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, cast

import aiohttp
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

from batchrunner.config import openai_reasoning
from batchrunner.errors import ConfigError
from batchrunner.estimate import _thinking as thinking_asked
from batchrunner.simulator import (
    FAULT_KINDS,
    Simulator,
    SimulatorConfig,
    SimulatorThread,
    add_arguments,
    config_from_args,
    count_prompt_tokens,
    count_tokens,
    format_duration,
    model_limits,
    parse_duration,
    prompt_key,
)

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-sim-test-key"
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d{1,3})?s|\d+ms)$")


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


@asynccontextmanager
async def running(
    config: SimulatorConfig | None = None, **kwargs: Any
) -> AsyncIterator[tuple[Simulator, AsyncOpenAI]]:
    async with Simulator(config or SimulatorConfig(), host="127.0.0.1", port=0, **kwargs) as sim:
        client = AsyncOpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0, timeout=10)
        async with client:
            yield sim, client


async def post_raw(
    base_url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    hdrs.update(headers or {})
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(base_url + "/chat/completions", data=data, headers=hdrs) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.read()


# ---------------------------------------------------------------------------- pure functions


@given(st.text(max_size=200))
def test_count_tokens_is_a_quarter_of_the_characters_rounded_up(text: str) -> None:
    assert count_tokens(text) == math.ceil(len(text) / 4)
    assert (count_tokens(text) >= 1) == bool(text)


def test_count_prompt_tokens_counts_text_parts_images_and_overhead() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "abcd" * 10},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "abcdefgh"},
                {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
            ],
        },
    ]
    assert count_prompt_tokens(messages) == 3 + (3 + 10) + (3 + 2 + 85)


def test_the_simulator_bills_an_image_as_openai_bills_its_model() -> None:
    # A 1024 × 1024 PNG at auto detail: 765 tokens on GPT-4o, 2,833 + 4 × 5,667 on GPT-4o mini,
    # its 1,024 patches times 1.62 on GPT-4.1 mini; 85 (and 2,833) by URL, its size unknown.
    png = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 1024, 1024)
           + b"\x08\x02\x00\x00\x00")
    photo = "data:image/png;base64," + base64.b64encode(png).decode()
    for url, model, tokens in [(photo, "gpt-4o", 765), (photo, "gpt-4o-mini", 2833 + 4 * 5667),
                               (photo, "gpt-4.1-mini", 1659), ("https://a.test/", "gpt-4o", 85),
                               ("https://a.test/", "gpt-4o-mini", 2833)]:
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
        assert count_prompt_tokens(messages, model) == 3 + 3 + tokens, model


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.017, "17ms"), (0.12, "120ms"), (1, "1s"), (8.64, "8.64s"), (360, "6m0s"),
     (59.9996, "1m0s"), (3723.5, "1h2m3.5s"), (0.0001, "1ms")],
)  # fmt: skip
def test_format_duration_speaks_openais_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert DURATION.match(text)


@given(st.floats(min_value=0, max_value=100_000, allow_nan=False))
def test_format_duration_round_trips_to_the_millisecond(seconds: float) -> None:
    text = format_duration(seconds)
    assert DURATION.match(text), text
    back = parse_duration(text)
    assert back >= seconds - 1e-6
    assert back - seconds <= 0.001 + 1e-6


def test_parse_duration_rejects_junk() -> None:
    with pytest.raises(ValueError):
        parse_duration("soon")
    with pytest.raises(ValueError):
        parse_duration("1s junk")


def test_prompt_key_is_short_stable_and_distinct() -> None:
    assert prompt_key("row 4711") == prompt_key("row 4711")
    assert prompt_key("row 4711") != prompt_key("row 4712")
    assert re.fullmatch(r"[0-9a-f]{16}", prompt_key("x"))


# ---------------------------------------------------------------------------- configuration


def test_config_defaults_have_no_limits_faults_latency_or_key() -> None:
    config = SimulatorConfig()
    assert config.api_key is None and config.models is None
    assert config.rpm is None and config.tpm is None
    assert dict(config.faults) == {} and config.latency_ms == 0 and config.ms_per_token == 0
    assert "deepseek-r1" in config.reasoning_models


def test_from_mapping_builds_a_config() -> None:
    config = SimulatorConfig.from_mapping(
        {"rpm": 100, "models": ["gpt-4o"], "faults": {"503": 0.25}, "latency_ms": 5}
    )
    assert config.rpm == 100 and config.models == ("gpt-4o",)
    assert dict(config.faults) == {"503": 0.25}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"rpn": 5}, "unknown simulator setting 'rpn'"),
        ({"rpm": -5}, "'rpm' must be a positive integer"),
        ({"rpm": True}, "'rpm'"),
        ({"latency_ms": "fast"}, "'latency_ms'"),
        ({"faults": {"teapot": 0.1}}, "fault kind 'teapot'"),
        ({"faults": {"500": 1.5}}, "faults.500"),
        ({"faults": {"500": 0.6, "503": 0.6}}, "add up to at most 1"),
        ({"models": []}, "at least one model"),
        ({"models": 3}, "'models'"),
        ({"reply_tokens_mean": 1000}, "reply_tokens_min <= reply_tokens_mean"),
        ({"prompt_caching": "yes"}, "'prompt_caching'"),
    ],
)
def test_from_mapping_names_the_bad_setting(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(match)) as info:
        SimulatorConfig.from_mapping(data)
    assert "\n" not in str(info.value)


def test_cli_arguments_make_a_config(tmp_path: Path) -> None:
    toml = tmp_path / "job.toml"
    toml.write_text('[simulator]\nrpm = 50\nlatency_ms = 7\n[simulator.faults]\n"500" = 0.1\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(
        ["--config", str(toml), "--rpm", "600", "--tpm", "90000", "--models", "gpt-4o, o3-mini",
         "--fault", "503=0.02", "--fault", "reset=0.01", "--seed", "7", "--api-key", "k",
         "--quota-exhausted-key", "dead"]
    )  # fmt: skip
    assert (ns.host, ns.port) == ("127.0.0.1", 8000)
    config = config_from_args(ns)
    assert config.rpm == 600 and config.tpm == 90000 and config.latency_ms == 7
    assert config.models == ("gpt-4o", "o3-mini")
    assert dict(config.faults) == {"500": 0.1, "503": 0.02, "reset": 0.01}
    assert config.seed == 7 and config.api_key == "k" and config.quota_exhausted_keys == ("dead",)
    with pytest.raises(ConfigError, match="KIND=RATE"):
        config_from_args(parser.parse_args(["--fault", "503"]))
    with pytest.raises(ConfigError, match="'bogus'"):
        config_from_args(parser.parse_args(["--fault", "bogus=0.1"]))


# ---------------------------------------------------------------------------- replies


@pytest.mark.anyio
async def test_completion_has_openais_shape_and_headers() -> None:
    async with running() as (_, client):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=user("Describe product 4711, a red kettle.")
        )
        assert raw.headers["x-request-id"]
        completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-") and completion.created > 0
    assert completion.model == "gpt-4o-mini" and completion.system_fingerprint
    (choice,) = completion.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    content = choice.message.content
    assert content is not None
    assert content.startswith("Echo: [" + prompt_key("Describe product 4711, a red kettle.") + "]")
    assert "Describe product 4711" in content
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == count_prompt_tokens(user("Describe product 4711, a red kettle."))
    assert usage.completion_tokens == count_tokens(content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.anyio
async def test_replies_are_deterministic_and_land_on_their_prompt() -> None:
    async with running(SimulatorConfig(reply_tokens_mean=40)) as (_, client):
        contents: dict[str, str] = {}
        for i in range(30):
            text = f"Row {i}: write a description"
            first = await client.chat.completions.create(model="gpt-4o", messages=user(text))
            again = await client.chat.completions.create(model="gpt-4o", messages=user(text))
            assert first.choices[0].message.content == again.choices[0].message.content
            content = first.choices[0].message.content
            assert content is not None
            assert prompt_key(text) in content and f"Row {i}:" in content
            contents[text] = content
    assert len(set(contents.values())) == 30
    lengths = {count_tokens(c) for c in contents.values()}
    assert len(lengths) > 3  # lengths follow a distribution


@pytest.mark.anyio
async def test_fixed_reply_length_and_the_same_reply_in_another_simulator() -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Product 12, blue"}]},
    ]
    replies = []
    for _ in range(2):
        async with running(SimulatorConfig(reply_tokens=50)) as (_, client):
            completion = await client.chat.completions.create(model="m", messages=messages)
            replies.append(completion.choices[0].message.content)
            assert completion.usage is not None and completion.usage.completion_tokens == 50
    assert replies[0] == replies[1]


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_length_cut_at_max_tokens(field: str) -> None:
    async with running(SimulatorConfig(reply_tokens=200)) as (_, client):
        full = await client.chat.completions.create(model="gpt-4o", messages=user("cut me"))
        if field == "max_tokens":
            cut = await client.chat.completions.create(
                model="gpt-4o", messages=user("cut me"), max_tokens=7
            )
        else:
            cut = await client.chat.completions.create(
                model="gpt-4o", messages=user("cut me"), max_completion_tokens=7
            )
    assert full.choices[0].finish_reason == "stop"
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 7
    content = cut.choices[0].message.content
    full_content = full.choices[0].message.content
    assert content is not None and full_content is not None
    assert full_content.startswith(content) and count_tokens(content) == 7


@pytest.mark.anyio
async def test_stop_sequence_cuts_the_reply() -> None:
    async with running(SimulatorConfig(reply_tokens=100)) as (_, client):
        full = await client.chat.completions.create(model="gpt-4o", messages=user("stop test"))
        content = full.choices[0].message.content
        assert content is not None
        word = content.split()[-5]
        stopped = await client.chat.completions.create(
            model="gpt-4o", messages=user("stop test"), stop=[" " + word + " ", "\u2603"]
        )
    text = stopped.choices[0].message.content
    assert text is not None and stopped.choices[0].finish_reason == "stop"
    assert content.startswith(text) and len(text) < len(content)
    assert f" {word} " not in text
    assert stopped.usage is not None and stopped.usage.completion_tokens == count_tokens(text)


@pytest.mark.anyio
async def test_n_gives_distinct_deterministic_choices() -> None:
    async with running() as (_, client):
        one = await client.chat.completions.create(model="gpt-4o", messages=user("hi"), n=3)
        two = await client.chat.completions.create(model="gpt-4o", messages=user("hi"), n=3)
    contents = [c.message.content for c in one.choices]
    assert [c.index for c in one.choices] == [0, 1, 2]
    assert len(set(contents)) == 3
    assert contents == [c.message.content for c in two.choices]
    assert one.usage is not None
    assert one.usage.completion_tokens == sum(count_tokens(c or "") for c in contents)


@pytest.mark.anyio
async def test_stream_matches_the_non_streamed_reply() -> None:
    async with running(SimulatorConfig(reply_tokens=30)) as (_, client):
        plain = await client.chat.completions.create(model="gpt-4o", messages=user("stream me"))
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=user("stream me"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump() if plain.usage else False
    assert len(chunks) > 10  # token by token


@pytest.mark.anyio
async def test_latency_and_time_per_token_keep_the_reply() -> None:
    config = SimulatorConfig(reply_tokens=12, latency_ms=5, jitter_ms=5, ms_per_token=1)
    async with running(config) as (_, client):
        plain = await client.chat.completions.create(model="o3-mini", messages=user("paced"))
        stream = await client.chat.completions.create(
            model="o3-mini",
            messages=user("paced"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage is not None and plain.usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens == 24


@pytest.mark.anyio
async def test_raw_stream_format_ends_with_done() -> None:
    async with running(SimulatorConfig(reply_tokens=10)) as (sim, _):
        status, headers, body = await post_raw(
            sim.base_url,
            {"model": "gpt-4o", "messages": user("raw"), "stream": True},
        )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [e for e in body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert all("usage" not in p for p in payloads)  # no include_usage, no usage key
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.anyio
async def test_reasoning_models_report_and_stream_reasoning() -> None:
    async with running(SimulatorConfig(reply_tokens=20)) as (_, client):
        done = await client.chat.completions.create(model="o4-mini", messages=user("think"))
        assert done.usage is not None and done.usage.completion_tokens_details is not None
        reasoning = done.usage.completion_tokens_details.reasoning_tokens
        assert reasoning == 20
        assert done.usage.completion_tokens == reasoning + count_tokens(
            done.choices[0].message.content or ""
        )
        stream = await client.chat.completions.create(
            model="deepseek-r1", messages=user("think"), stream=True
        )
        kinds = []
        async for chunk in stream:
            if chunk.choices:
                delta = chunk.choices[0].delta.model_dump()
                if delta.get("reasoning_content"):
                    kinds.append("r")
                elif delta.get("content"):
                    kinds.append("c")
        assert kinds and kinds == sorted(kinds, reverse=True)  # all reasoning before content
        assert "r" in kinds and "c" in kinds
        cut = await client.chat.completions.create(
            model="o3-mini", messages=user("think"), max_completion_tokens=10
        )
        assert cut.choices[0].finish_reason == "length" and cut.choices[0].message.content == ""
        assert cut.usage is not None and cut.usage.completion_tokens == 10
        plain = await client.chat.completions.create(model="gpt-4o", messages=user("think"))
        assert plain.usage is not None and plain.usage.completion_tokens_details is not None
        assert plain.usage.completion_tokens_details.reasoning_tokens == 0
        thinking = await client.chat.completions.create(
            model="deepseek-v3-1-250821",
            messages=user("think"),
            extra_body={"thinking": {"type": "enabled"}},
        )
        assert thinking.usage is not None and thinking.usage.completion_tokens_details is not None
        assert thinking.usage.completion_tokens_details.reasoning_tokens == 20
        # Qwen's enable_thinking reasons only in a stream: without one, gateways turn it off.
        qwen = await client.chat.completions.create(
            model="qwen3-omni-flash", messages=user("think"),
            extra_body={"enable_thinking": True})
        assert qwen.usage is not None and qwen.usage.completion_tokens_details is not None
        assert qwen.usage.completion_tokens_details.reasoning_tokens == 0
        streamed = await client.chat.completions.create(
            model="qwen3-omni-flash", messages=user("think"), stream=True,
            stream_options={"include_usage": True}, extra_body={"enable_thinking": True})
        usage = [c.usage async for c in streamed if c.usage is not None]
        assert usage and usage[-1].completion_tokens_details is not None
        assert usage[-1].completion_tokens_details.reasoning_tokens == 20


@pytest.mark.anyio
async def test_openai_reasoning_models_bill_reasoning_and_return_no_text() -> None:
    """OpenAI's Chat Completions returns no reasoning text for its reasoning models (o-series,
    GPT-5), plain or dated: only the count in the usage. The simulator gave
    them ``reasoning_content``, so a rehearsal filled a column the real night leaves empty.
    Models that do return their reasoning (DeepSeek's reasoner) keep returning it."""
    async with running(SimulatorConfig(reply_tokens=20, ms_per_token=0.01)) as (sim, _):
        for model in ("o4-mini", "gpt-5-mini", "o3-2025-04-16", "openai/o3", "deepseek-reasoner"):
            for stream in (False, True):
                body: dict[str, Any] = {"model": model, "messages": user("think"),
                                        "stream": stream}
                if stream:
                    body["stream_options"] = {"include_usage": True}
                status, _, raw = await post_raw(sim.base_url, body)
                assert status == 200, (model, stream)
                if stream:
                    chunks = [json.loads(e[6:]) for e in raw.decode().split("\n\n")
                              if e.startswith("data: {")]
                    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
                    text = "".join(d.get("reasoning_content") or "" for d in deltas)
                    content = "".join(d.get("content") or "" for d in deltas)
                    usage = chunks[-1]["usage"]
                else:
                    reply = json.loads(raw)
                    message = reply["choices"][0]["message"]
                    text, content = message.get("reasoning_content") or "", message["content"]
                    usage = reply["usage"]
                reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
                assert reasoning == 20, (model, stream)
                assert usage["completion_tokens"] == reasoning + count_tokens(content)
                assert content.startswith("Echo: ["), (model, stream)
                assert bool(text) is (model == "deepseek-reasoner"), (model, stream)
        cut = await post_raw(sim.base_url, {"model": "o4-mini", "messages": user("think"),
                                            "max_completion_tokens": 10})
        reply = json.loads(cut[2])
        assert reply["choices"][0] == {**reply["choices"][0], "finish_reason": "length",
                                       "message": {**reply["choices"][0]["message"],
                                                   "content": ""}}
        assert "reasoning_content" not in reply["choices"][0]["message"]
        assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == 10
        assert sim.stats()["reasoning_tokens"] == 10 * 20 + 10


# Each family's names, as OpenAI and the gateways spell them: whether it reasons, whether it
# returns its reasoning text (OpenAI's and Grok 4's bill it and return none), and whether OpenAI
# refuses it max_tokens and a temperature other than 1 (its reasoning models).
REASONING_FAMILIES: list[tuple[str, bool, bool, bool]] = [
    ("o1", True, False, True), ("o3-mini-2025-01-31", True, False, True),
    ("o4-mini", True, False, True), ("gpt-5", True, False, True),
    ("gpt-5-mini", True, False, True), ("gpt-5-nano", True, False, True),
    ("gpt-5.1", True, False, True), ("gpt-5.1-mini", True, False, True),
    ("openai/gpt-5.2", True, False, True), ("gpt-5.2-pro", True, False, True),
    ("gpt-5-codex", True, False, True), ("gpt-5.1-codex-max", True, False, True),
    ("codex-mini-latest", True, False, True),
    ("gpt-5-chat-latest", False, False, False), ("gpt-5.1-chat-latest", False, False, False),
    ("openai/gpt-5-chat", False, False, False), ("gpt-4o", False, False, False),
    ("gpt-4.1-mini", False, False, False),
    ("grok-4", True, False, False), ("grok-4-fast-reasoning", True, False, False),
    ("grok-4-fast-non-reasoning", False, False, False), ("grok-3-mini", True, True, False),
    ("grok-3", False, False, False), ("deepseek-reasoner", True, True, False),
    ("claude-opus-4-6", False, False, False), ("grok-code-fast-1", True, True, False),
    ("gpt-oss-120b", True, True, False), ("openai/gpt-oss-20b", True, True, False),
    ("qwq-32b", True, True, False), ("qwen3-32b-non-thinking", False, False, False),
    ("qwen3-32b-thinking", True, True, False),
    # Gemini thinks unless told not to; unstreamed, its thoughts are billed without their text.
    ("gemini-2.5-flash", True, False, False), ("gemini-2.5-pro", True, False, False),
    ("gemini-3-pro-preview", True, False, False), ("gemini-2.5-flash-lite", False, False, False),
    ("gemini-2.5-flash-nothinking", False, False, False), ("gemini-2.0-flash", False, False, False),
]


@pytest.mark.anyio
async def test_every_reasoning_family_reasons_and_is_refused_as_openai_refuses_it() -> None:
    """Dotted GPT-5 names (gpt-5.1, openai/gpt-5.2) and codex names answered with no reasoning
    tokens, a rehearsal pricing them below the night, while their max_tokens was refused: the
    simulator's own list matched gpt-5 and gpt-5-... only (and so made gpt-5-chat-latest, which
    does not reason, reason). Now one rule (config.openai_reasoning) says both, for each family;
    reasoning_effort "none" turns it off. The estimate warns of thinking for the same models:
    it left out grok-3-mini, grok-code-fast and gpt-oss, which the simulator made reason, and
    the simulator made a -non-thinking name reason, which the estimate did not."""
    async with running(SimulatorConfig(reply_tokens=20)) as (sim, _):
        for model, reasons, with_text, refused in REASONING_FAMILIES:
            assert openai_reasoning(model) is refused, model
            assert (thinking_asked({"model": model})[0] is not None) is reasons, model
            status, _, raw = await post_raw(sim.base_url, {"model": model,
                                                           "messages": user("think")})
            assert status == 200, model
            reply = json.loads(raw)
            reasoning = reply["usage"]["completion_tokens_details"]["reasoning_tokens"]
            assert reasoning == (20 if reasons else 0), model
            text = reply["choices"][0]["message"].get("reasoning_content")
            assert bool(text) is with_text, model
            for extra in ({"max_tokens": 50}, {"temperature": 0.2}):
                status, _, raw = await post_raw(sim.base_url, {
                    "model": model, "messages": user("think"), **extra})
                assert (status == 400) is refused, (model, extra)
        status, _, raw = await post_raw(sim.base_url, {
            "model": "gpt-5.1", "messages": user("think"), "reasoning_effort": "none",
            "temperature": 0.2})
        assert status == 200
        assert json.loads(raw)["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


@pytest.mark.anyio
async def test_cached_tokens_for_a_long_shared_system_prompt() -> None:
    system: ChatCompletionMessageParam = {
        "role": "system",
        "content": "policy " * 800,
    }  # 5600 chars = 1400 tokens
    async with running() as (_, client):
        completion = await client.chat.completions.create(
            model="gpt-4o", messages=[system, *user("row 1")]
        )
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    cached = completion.usage.prompt_tokens_details.cached_tokens
    assert cached == 1280 and cached % 128 == 0 and cached <= completion.usage.prompt_tokens


@pytest.mark.anyio
async def test_claude_writes_a_long_prefix_to_the_cache_then_reads_it() -> None:
    """A Claude model behind a gateway bills the first request with a long shared prefix for
    writing it to the cache (1.25 times the input price), the later ones for reading it; the
    simulator reported every such request as a cache read, so a rehearsal never priced a
    cache write. Now the first request answered with a prefix writes it, in the shape of
    new-api's gateways (``prompt_tokens_details.cached_creation_tokens``), and the others,
    within five minutes, read all of it; another prefix, or another model, writes again."""
    system = {"role": "system", "content": "policy " * 800}  # 5600 characters: 1400 tokens
    now = [1000.0]
    async with running(clock=lambda: now[0]) as (sim, _):
        async def usage(model: str, system_text: str = system["content"]) -> dict[str, Any]:
            status, _, raw = await post_raw(sim.base_url, {"model": model, "messages": [
                {"role": "system", "content": system_text}, *user("row 1")]})
            assert status == 200
            return cast(dict[str, Any], json.loads(raw)["usage"])

        first = await usage("claude-sonnet-4-5")
        prefix = 3 + 1400  # the message overhead and its text
        assert first["prompt_tokens_details"]["cached_creation_tokens"] == prefix
        assert first["prompt_tokens_details"]["cached_tokens"] == 0
        assert first["claude_cache_creation_5_m_tokens"] == prefix
        assert first["claude_cache_creation_1_h_tokens"] == 0
        assert first["prompt_tokens"] > prefix  # the prompt counts them, as OpenAI's does
        again = await usage("claude-sonnet-4-5")
        assert again["prompt_tokens_details"]["cached_tokens"] == prefix
        assert again["prompt_tokens_details"]["cached_creation_tokens"] == 0
        other = await usage("anthropic/claude-opus-4-6")  # the cache is the model's
        assert other["prompt_tokens_details"]["cached_creation_tokens"] == prefix
        changed = await usage("claude-sonnet-4-5", "Policy " * 800)
        assert changed["prompt_tokens_details"]["cached_creation_tokens"] == prefix
        short = await usage("claude-sonnet-4-5", "be brief")
        assert short["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0,
                                                  "cached_creation_tokens": 0}
        now[0] += 301  # past the cache's five minutes: written again
        assert (await usage("claude-sonnet-4-5"))["prompt_tokens_details"][
            "cached_creation_tokens"] == prefix
        gpt = await usage("gpt-4o")  # OpenAI's cache: no writes said
        assert gpt["prompt_tokens_details"] == {"cached_tokens": 1280, "audio_tokens": 0}
        assert "claude_cache_creation_5_m_tokens" not in gpt
        stats = sim.stats()
    assert stats["cache_write_tokens"] == 4 * prefix
    assert stats["cached_tokens"] == prefix + 1280


class Dimensions(BaseModel):
    width_cm: float
    height_cm: int


class Product(BaseModel):
    title: str
    category: Literal["kitchen", "garden", "toys"]
    tags: list[str]
    in_stock: bool
    dimensions: Dimensions
    note: str | None


@pytest.mark.anyio
async def test_json_schema_reply_parses_into_the_model() -> None:
    async with running() as (_, client):
        parsed = await client.chat.completions.parse(
            model="gpt-4o", messages=user("Describe product 9"), response_format=Product
        )
        again = await client.chat.completions.parse(
            model="gpt-4o", messages=user("Describe product 9"), response_format=Product
        )
        obj = await client.chat.completions.create(
            model="gpt-4o",
            messages=user("Describe product 9"),
            response_format={"type": "json_object"},
        )
    product = parsed.choices[0].message.parsed
    assert isinstance(product, Product)
    assert product.category in ("kitchen", "garden", "toys")
    assert prompt_key("Describe product 9") in product.title
    assert again.choices[0].message.parsed == product
    data = json.loads(obj.choices[0].message.content or "")
    assert isinstance(data, dict) and prompt_key("Describe product 9") in data["echo"]


class Node(BaseModel):
    name: str
    children: list[Node]
    parent: Node | None


@pytest.mark.anyio
async def test_json_schema_reply_for_a_recursive_model() -> None:
    async with running() as (_, client):
        for i in range(5):
            parsed = await client.chat.completions.parse(
                model="gpt-4o", messages=user(f"tree {i}"), response_format=Node
            )
            assert isinstance(parsed.choices[0].message.parsed, Node)


@pytest.mark.anyio
async def test_json_schema_bounds_enums_and_arrays_by_hand() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "label": {"enum": ["a", "b"]},
            "items": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "short": {"type": "string", "maxLength": 5},
        },
        "required": ["score", "ratio", "label", "items", "short"],
        "additionalProperties": False,
    }
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    async with running() as (_, client):
        for i in range(10):
            done = await client.chat.completions.create(
                model="gpt-4o",
                messages=user(f"rate {i}"),
                response_format=fmt,
            )
            data = json.loads(done.choices[0].message.content or "")
            assert set(data) == set(schema["properties"])
            assert isinstance(data["score"], int) and 1 <= data["score"] <= 5
            assert isinstance(data["ratio"], float) and 0 < data["ratio"] <= 1
            assert data["label"] in ("a", "b")
            assert len(data["items"]) >= 2 and all(isinstance(x, str) for x in data["items"])
            assert len(data["short"]) <= 5


class Parcel(BaseModel):
    size: tuple[float, float, Literal["cm", "in"]]
    codes: tuple[int, ...]


@pytest.mark.anyio
async def test_json_schema_reply_fills_tuples_position_by_position() -> None:
    """A tuple is prefixItems in Pydantic's schema, "items": [...] in draft-07's: each
    position has its own type. Filled from "items" alone, every reply broke the schema."""
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
              "properties": {"pair": {"type": "array", "minItems": 2, "maxItems": 2,
                                      "items": [{"type": "integer"}, {"type": "boolean"}]}},
              "required": ["pair"]}
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "p", "schema": draft7}}
    async with running() as (_, client):
        for i in range(5):
            parsed = await client.chat.completions.parse(
                model="gpt-4o", messages=user(f"parcel {i}"), response_format=Parcel)
            parcel = parsed.choices[0].message.parsed
            assert isinstance(parcel, Parcel) and parcel.size[2] in ("cm", "in")
            done = await client.chat.completions.create(
                model="gpt-4o", messages=user(f"pair {i}"), response_format=fmt)
            pair = json.loads(done.choices[0].message.content or "")["pair"]
            assert isinstance(pair[0], int) and isinstance(pair[1], bool), pair


# ---------------------------------------------------------------------------- protocol errors


@pytest.mark.anyio
async def test_api_key_is_checked() -> None:
    async with running(SimulatorConfig(api_key=KEY)) as (sim, client):
        assert (await client.chat.completions.create(model="m", messages=user("x"))).choices
        wrong = AsyncOpenAI(base_url=sim.base_url, api_key="sk-wrong", max_retries=0)
        async with wrong:
            with pytest.raises(openai.AuthenticationError) as info:
                await wrong.chat.completions.create(model="m", messages=user("x"))
            with pytest.raises(openai.AuthenticationError):
                await wrong.models.list()
        assert info.value.code == "invalid_api_key"
        assert "sk-wrong" not in str(info.value)
        status, headers, body = await post_raw(
            sim.base_url, {"model": "m", "messages": user("x")}, {"Authorization": ""}
        )
        assert status == 401 and headers["x-request-id"]
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.anyio
async def test_bad_requests_get_400() -> None:
    async with running() as (sim, client):
        status, headers, body = await post_raw(sim.base_url, b"{not json")
        assert status == 400 and headers["x-request-id"]
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        for bad in (
            {"model": "m"},
            {"model": "m", "messages": []},
            {"model": "m", "messages": "hi"},
            {"messages": user("x")},
            {"model": "m", "messages": user("x"), "max_tokens": 0},
            {"model": "m", "messages": user("x"), "n": "two"},
            {"model": "m", "messages": [{"content": "no role"}]},
            {"model": "m", "messages": user("[[sim:nosuchkind]]")},
        ):
            status, _, body = await post_raw(sim.base_url, bad)
            assert status == 400, bad
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="m", messages=[])
        # unknown fields are accepted
        done = await client.chat.completions.create(
            model="m", messages=user("x"), extra_body={"nebula_thinking_to_content": True}
        )
        assert done.choices


def test_the_seeds_gateway_models_have_their_published_limits() -> None:
    """(context window, output limit) of the models the gateways' references name: a model
    the table does not know gets a 128,000-token window and no output limit of its own."""
    limits = {m: model_limits(m) for m in (
        "gpt-4o-mini", "gpt-5.2", "o4-mini", "gpt-5-chat", "claude-opus-4-6",
        "claude-haiku-4-5-20251001", "claude-3-5-sonnet-20241022", "deepseek-v3-1-250821",
        "deepseek-r1", "grok-4-fast-reasoning", "grok-3", "gemini-3-pro-preview",
        "qwen3-coder-plus", "kimi-k2.5", "glm-4.7", "nano-banana-pro", "openai/GPT-4.1")}
    assert limits == {
        "gpt-4o-mini": (128_000, 16_384), "gpt-5.2": (400_000, 128_000),
        "o4-mini": (200_000, 100_000), "gpt-5-chat": (128_000, 16_384),
        "claude-opus-4-6": (200_000, 64_000), "claude-haiku-4-5-20251001": (200_000, 64_000),
        "claude-3-5-sonnet-20241022": (200_000, 8_192),
        "deepseek-v3-1-250821": (128_000, 8_192), "deepseek-r1": (128_000, 65_536),
        "grok-4-fast-reasoning": (2_000_000, 0), "grok-3": (131_072, 0),
        "gemini-3-pro-preview": (1_048_576, 65_536), "qwen3-coder-plus": (1_000_000, 65_536),
        "kimi-k2.5": (262_144, 0), "glm-4.7": (200_000, 0), "nano-banana-pro": (128_000, 0),
        "openai/GPT-4.1": (1_047_576, 32_768)}


@pytest.mark.anyio
async def test_the_answer_says_the_service_tier_asked_for() -> None:
    """A request for OpenAI's flex or priority tier was answered as served in "default", so a
    rehearsal's records could not show the tier the night runs in. The answer says the tier
    asked for, "default" for "auto" or none, streamed or not."""
    async with running() as (sim, _):
        for asked, said in ((None, "default"), ("auto", "default"), ("flex", "flex"),
                            ("priority", "priority")):
            body: dict[str, Any] = {"model": "o4-mini", "messages": user("tier")}
            if asked is not None:
                body["service_tier"] = asked
            status, _, raw = await post_raw(sim.base_url, body)
            assert status == 200 and json.loads(raw)["service_tier"] == said, asked
            status, _, raw = await post_raw(sim.base_url, {**body, "stream": True})
            chunks = [json.loads(e[6:]) for e in raw.decode().split("\n\n")
                      if e.startswith("data: {")]
            assert chunks and {c["service_tier"] for c in chunks} == {said}, asked


@pytest.mark.anyio
async def test_what_openai_refuses_is_refused_with_its_message() -> None:
    """A rehearsal must fail where the real night would: each body OpenAI answers 400 is
    answered 400 with its message, param and code; the nearby bodies it takes are taken. A
    prompt over the model's context window, or a max_tokens over its output limit, was
    answered (OpenAI's and Anthropic's messages, as gateways pass them on, now)."""
    long = user("w " * 20_000)  # 10,000 tokens: 10,006 with the priming and overhead
    half = user("w " * 12_000)  # 6,006
    refused: dict[str, tuple[str, str | None, str]] = {  # what: param, code, message
        "max_tokens": ("max_tokens", "unsupported_parameter", "Unsupported parameter: "
                       "'max_tokens' is not supported with this model. Use "
                       "'max_completion_tokens' instead."),
        "both": ("max_tokens", "invalid_parameter_combination", "Setting 'max_tokens' and "
                 "'max_completion_tokens' at the same time is not supported."),
        "temperature": ("temperature", "unsupported_value", "Unsupported value: 'temperature' "
                        "does not support 0.2 with this model. Only the default (1) value is "
                        "supported."),
        "above": ("frequency_penalty", "decimal_above_max_value", "Invalid 'frequency_penalty': "
                  "decimal above maximum value. Expected a value <= 2, but got 3 instead."),
        "below": ("temperature", "decimal_below_min_value", "Invalid 'temperature': decimal "
                  "below minimum value. Expected a value >= 0, but got -0.5 instead."),
        "type": ("top_p", "invalid_type", "Invalid type for 'top_p': expected a decimal, but got "
                 "a string instead."),
        "stream_options": ("stream_options", None, "The 'stream_options' parameter is only "
                           "allowed when 'stream' is enabled."),
        "output": ("max_tokens", "invalid_value", "max_tokens is too large: 20000. This model "
                   "supports at most 16384 completion tokens, whereas you provided 20000."),
        "output_gpt5": ("max_completion_tokens", "invalid_value", "max_completion_tokens is too "
                        "large: 200000. This model supports at most 128000 completion tokens, "
                        "whereas you provided 200000."),
        "context": ("messages", "context_length_exceeded", "This model's maximum context length "
                    "is 8192 tokens. However, your messages resulted in 10006 tokens. Please "
                    "reduce the length of the messages."),
        "context_asked": ("messages", "context_length_exceeded", "This model's maximum context "
                          "length is 8192 tokens. However, you requested 10006 tokens (6006 in "
                          "the messages, 4000 in the completion). Please reduce the length of "
                          "the messages or completion."),
        "claude_output": (None, None, "max_tokens: 100000 > 64000, which is the maximum allowed "
                          "number of output tokens for anthropic/claude-sonnet-4-5"),
        "claude_context": (None, None, "prompt is too long: 200006 tokens > 200000 maximum"),
        "tier": ("service_tier", "invalid_value", "Invalid value: \"fast\". Supported values "
                 "are: 'auto', 'default', 'flex', 'scale', and 'priority'."),
    }
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"model": "o4-mini", "max_tokens": 50}, "max_tokens"),
        ({"model": "gpt-5.2", "max_tokens": 50}, "max_tokens"),
        ({"model": "openai/o3-mini-2025-01-31", "max_tokens": 50}, "max_tokens"),
        ({"model": "gpt-4.1", "max_tokens": 50, "max_completion_tokens": 50}, "both"),
        ({"model": "o3", "temperature": 0.2}, "temperature"),
        ({"model": "gpt-4o", "frequency_penalty": 3}, "above"),
        ({"model": "gpt-4o", "temperature": -0.5}, "below"),
        ({"model": "gpt-4o", "top_p": "0.9"}, "type"),
        ({"model": "gpt-4o", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": "gpt-4o", "stream": False, "stream_options": {}}, "stream_options"),
        ({"model": "o4-mini", "max_completion_tokens": 50, "temperature": 1}, None),
        ({"model": "gpt-5-chat-latest", "max_tokens": 50, "temperature": 0.2}, None),
        ({"model": "gpt-5.2", "temperature": 0.2, "reasoning_effort": "none"}, None),
        ({"model": "gpt-4o", "max_tokens": 50, "temperature": 2, "presence_penalty": -2}, None),
        ({"model": "deepseek-r1", "max_tokens": 50, "temperature": 0.6}, None),
        ({"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}}, None),
        ({"model": "gpt-4o-2024-08-06", "max_tokens": 20_000}, "output"),
        ({"model": "gpt-4o", "max_tokens": 16_384}, None),
        ({"model": "gpt-5.1", "max_completion_tokens": 200_000}, "output_gpt5"),
        ({"model": "gpt-4", "messages": long}, "context"),
        ({"model": "gpt-4", "messages": half, "max_tokens": 4000}, "context_asked"),
        ({"model": "gpt-4", "messages": half, "max_tokens": 2000}, None),
        ({"model": "gpt-4o", "messages": long, "max_tokens": 16_000}, None),
        ({"model": "anthropic/claude-sonnet-4-5", "max_tokens": 100_000}, "claude_output"),
        ({"model": "claude-sonnet-4-5", "messages": user("w " * 400_000)}, "claude_context"),
        ({"model": "my-own-model", "max_tokens": 100_000}, None),  # no output limit known
        ({"model": "gpt-4o", "service_tier": "fast"}, "tier"),
    ]
    async with running() as (sim, _):
        for fields, what in cases:
            status, _, body = await post_raw(sim.base_url, {"messages": user("x"), **fields})
            if what is None:
                assert status == 200, (fields, body)
                continue
            param, code, message = refused[what]
            assert status == 400, fields
            assert json.loads(body)["error"] == {
                "message": message, "type": "invalid_request_error", "param": param,
                "code": code}, fields
    async with running(SimulatorConfig(model_limits=False)) as (sim, _):
        status, _, body = await post_raw(sim.base_url, {"model": "gpt-4", "messages": long,
                                                        "max_tokens": 20_000})
        assert status == 200, body


@pytest.mark.anyio
async def test_models_list_and_unknown_model() -> None:
    config = SimulatorConfig(models=("gpt-4o", "claude-opus-4-6"))
    async with running(config) as (_, client):
        listed = [m.id async for m in client.models.list()]
        assert listed == ["gpt-4o", "claude-opus-4-6"]
        assert (await client.models.retrieve("gpt-4o")).id == "gpt-4o"
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="gpt-9", messages=user("x"))
        assert info.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-9")
    async with running() as (_, client):  # any model by default
        done = await client.chat.completions.create(model="claude-opus-4-6", messages=user("x"))
        assert done.model == "claude-opus-4-6"
        assert [m.id async for m in client.models.list()]


# ---------------------------------------------------------------------------- faults


@pytest.mark.anyio
async def test_marker_with_count_fails_exactly_n_times() -> None:
    prompt = "Row 7 [[sim:503*2]]"
    async with running() as (_, client):
        for _ in range(2):
            with pytest.raises(openai.InternalServerError) as info:
                await client.chat.completions.create(model="m", messages=user(prompt))
            assert info.value.status_code == 503
            assert info.value.response.headers["retry-after"] == "1"
        for _ in range(2):
            done = await client.chat.completions.create(model="m", messages=user(prompt))
            assert done.choices[0].finish_reason == "stop"
        # another prompt with the same marker has its own count
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=user("Row 8 [[sim:503*2]]"))


@pytest.mark.anyio
async def test_markers_apply_in_turn() -> None:
    prompt = "[[sim:500*1]] [[sim:429*1]] then fine"
    async with running() as (_, client):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=user(prompt))
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=user(prompt))
        assert info.value.response.headers["retry-after"] == "0"
        assert info.value.code == "rate_limit_exceeded"
        assert (await client.chat.completions.create(model="m", messages=user(prompt))).choices


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("400", openai.BadRequestError, 400),
        ("401", openai.AuthenticationError, 401),
        ("403", openai.PermissionDeniedError, 403),
        ("404", openai.NotFoundError, 404),
        ("409", openai.ConflictError, 409),
        ("422", openai.UnprocessableEntityError, 422),
        ("429", openai.RateLimitError, 429),
        ("500", openai.InternalServerError, 500),
        ("502", openai.InternalServerError, 502),
        ("504", openai.InternalServerError, 504),
        ("529", openai.InternalServerError, 529),
        ("html", openai.InternalServerError, 502),
        ("quota", openai.RateLimitError, 429),
    ],
)
async def test_marker_statuses_raise_the_matching_sdk_error(
    kind: str, error: type[openai.APIStatusError], status: int
) -> None:
    async with running() as (_, client):
        with pytest.raises(error) as info:
            await client.chat.completions.create(
                model="m", messages=[{"role": "system", "content": f"[[sim:{kind}]]"}, *user("x")]
            )
    assert info.value.status_code == status
    assert info.value.response.headers["x-request-id"]
    if kind == "quota":
        assert info.value.code == "insufficient_quota"
        assert isinstance(info.value.body, dict) and info.value.body["type"] == "insufficient_quota"
    if kind == "529":
        assert info.value.response.json()["error"]["type"] == "overloaded_error"
    if kind == "html":
        assert info.value.response.headers["content-type"].startswith("text/html")


@pytest.mark.anyio
async def test_broken_bodies() -> None:
    async with running() as (sim, client):
        for kind in ("corrupt", "truncated", "cut"):
            status, headers, body = await post_raw(
                sim.base_url, {"model": "m", "messages": user(f"[[sim:{kind}]]")}
            )
            assert status == 200 and headers["Content-Type"] == "application/json"
            with pytest.raises(ValueError):
                json.loads(body)
        status, _, body = await post_raw(
            sim.base_url, {"model": "m", "messages": user("[[sim:no_usage]]")}
        )
        assert status == 200 and "usage" not in json.loads(body)
        status, _, body = await post_raw(
            sim.base_url, {"model": "m", "messages": user("[[sim:no_choices]]")}
        )
        assert status == 200 and "choices" not in json.loads(body)
        with pytest.raises((openai.APIResponseValidationError, ValueError)):
            await client.chat.completions.create(model="m", messages=user("[[sim:corrupt]]"))


@pytest.mark.anyio
async def test_stream_faults() -> None:
    async with running(SimulatorConfig(reply_tokens=40)) as (sim, _):
        with pytest.raises(aiohttp.ClientPayloadError):
            await post_raw(
                sim.base_url, {"model": "m", "messages": user("[[sim:cut]]"), "stream": True}
            )
        status, _, body = await post_raw(
            sim.base_url, {"model": "m", "messages": user("[[sim:no_done]]"), "stream": True}
        )
        assert status == 200 and b"[DONE]" not in body and b'finish_reason":"stop' not in body
        assert body.endswith(b"\n\n") and body.count(b"data: ") > 5
        status, _, body = await post_raw(
            sim.base_url,
            {
                "model": "m",
                "messages": user("[[sim:no_usage]]"),
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert status == 200 and body.endswith(b"data: [DONE]\n\n") and b'"choices":[]' not in body
        status, _, body = await post_raw(
            sim.base_url, {"model": "m", "messages": user("[[sim:corrupt]]"), "stream": True}
        )
        events = [e[6:] for e in body.decode().split("\n\n") if e and e != "data: [DONE]"]
        bad = 0
        for event in events:
            try:
                json.loads(event)
            except ValueError:
                bad += 1
        assert bad == 1


@pytest.mark.anyio
async def test_reset_closes_the_connection() -> None:
    async with running() as (sim, client):
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="m", messages=user("[[sim:reset]]"))
        with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
            await post_raw(sim.base_url, {"model": "m", "messages": user("[[sim:reset]]")})
        assert sim.stats()["connections_reset"] == 2
        # the server is fine afterwards
        assert (await client.chat.completions.create(model="m", messages=user("ok"))).choices


@pytest.mark.anyio
async def test_hang_outlasts_the_client_timeout_and_stops_with_the_server() -> None:
    async with running() as (sim, client):
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(
                model="m", messages=user("[[sim:hang]]"), timeout=0.3
            )
        assert sim.stats()["hangs"] == 1
    # leaving the block returned although the hang lasts an hour: it ended with the server


@pytest.mark.anyio
async def test_slow_marker_still_answers() -> None:
    async with running(SimulatorConfig(slow_ms=50)) as (sim, client):
        done = await client.chat.completions.create(model="m", messages=user("[[sim:slow*1]]"))
        assert done.choices[0].finish_reason == "stop"
        assert sim.stats()["faults"] == {"slow": 1}


@pytest.mark.anyio
async def test_random_faults_follow_the_rate_and_the_seed() -> None:
    config = SimulatorConfig(faults={"500": 0.3, "503": 0.2}, seed=42)
    outcomes: list[list[int]] = []
    for _ in range(2):
        async with running(config) as (sim, _):
            statuses = []
            for i in range(200):
                status, _, _ = await post_raw(
                    sim.base_url, {"model": "m", "messages": user(f"row {i}")}
                )
                statuses.append(status)
            outcomes.append(statuses)
            stats = sim.stats()
            assert stats["faults"]["500"] == statuses.count(500)
    assert outcomes[0] == outcomes[1]
    statuses = outcomes[0]
    assert 30 <= statuses.count(500) <= 90 and 15 <= statuses.count(503) <= 65
    assert statuses.count(200) + statuses.count(500) + statuses.count(503) == 200


# ---------------------------------------------------------------------------- rate limits


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_rate_limit_headers_in_openai_format() -> None:
    async with running(SimulatorConfig(rpm=600, tpm=100_000)) as (_, client):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=user("x"), max_tokens=100
        )
    headers = raw.headers
    assert headers["x-ratelimit-limit-requests"] == "600"
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(headers["x-ratelimit-remaining-requests"]) in (598, 599)
    prompt = count_prompt_tokens(user("x"))
    assert 100_000 - prompt - 100 - 1 <= int(headers["x-ratelimit-remaining-tokens"]) <= 100_000
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert DURATION.match(headers[name]), headers[name]
    assert parse_duration(headers["x-ratelimit-reset-requests"]) <= 0.2


@pytest.mark.anyio
async def test_request_bucket_bursts_then_refills_with_a_fake_clock() -> None:
    clock = FakeClock()
    async with running(SimulatorConfig(rpm=60), clock=clock) as (sim, client):
        for _ in range(60):
            await client.chat.completions.create(model="m", messages=user("x"))
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=user("x"))
        error = info.value
        assert error.code == "rate_limit_exceeded"
        assert isinstance(error.body, dict) and error.body["type"] == "requests"
        assert error.response.headers["retry-after"] == "1"
        assert error.response.headers["retry-after-ms"] == "1000"
        assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert error.response.headers["x-ratelimit-reset-requests"] == "1m0s"
        clock.now += 2.5  # 2.5 requests refilled
        accepted = 0
        for _ in range(5):
            try:
                await client.chat.completions.create(model="m", messages=user("x"))
                accepted += 1
            except openai.RateLimitError:
                pass
        assert accepted == 2
        # another key has its own buckets
        other = AsyncOpenAI(base_url=sim.base_url, api_key="sk-other", max_retries=0)
        async with other:
            assert (await other.chat.completions.create(model="m", messages=user("x"))).choices
        stats = sim.stats()
        assert stats["rate_limited"]["requests"] == 4
        assert stats["responses_by_status"]["429"] == 4


@pytest.mark.anyio
async def test_a_model_with_a_limit_of_its_own_has_buckets_of_its_own() -> None:
    """model_rpm: the model's requests are limited at its rate, and say so in their headers,
    apart from the key's other models (as OpenAI limits each model)."""
    clock = FakeClock()
    async with running(SimulatorConfig(rpm=600, model_rpm={"slow": 2}), clock=clock) as (
            _, client):
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(
                model="slow", messages=user("x"))
            assert raw.headers["x-ratelimit-limit-requests"] == "2"
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="slow", messages=user("x"))
        assert "Rate limit reached for slow on requests per min (RPM): Limit 2" in str(info.value)
        for _ in range(5):  # the key's other models: the key's bucket
            raw = await client.chat.completions.with_raw_response.create(
                model="fast", messages=user("x"))
            assert raw.headers["x-ratelimit-limit-requests"] == "600"


def test_model_rpm_is_read_from_the_command_line_and_checked() -> None:
    from batchrunner.simulator import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(["--model-rpm", "gpt-4o=500", "--model-rpm", "o3=20"])
    assert dict(config_from_args(ns).model_rpm) == {"gpt-4o": 500, "o3": 20}
    with pytest.raises(ConfigError, match="--model-rpm must look like MODEL=N"):
        config_from_args(parser.parse_args(["--model-rpm", "gpt-4o"]))
    with pytest.raises(ConfigError, match=r"model_rpm\.o3"):
        SimulatorConfig.from_mapping({"model_rpm": {"o3": 0}})


@pytest.mark.anyio
async def test_limits_can_be_hidden_behind_429s_alone() -> None:
    """--no-limit-headers: a gateway whose limit its answers do not say, only its 429s."""
    from batchrunner.simulator import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--no-limit-headers"])).limit_headers is False
    assert config_from_args(parser.parse_args([])).limit_headers is True
    clock = FakeClock()
    async with running(SimulatorConfig(rpm=1, tpm=100_000, limit_headers=False),
                       clock=clock) as (_, client):
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=user("x"))
        assert not [h for h in raw.headers if h.lower().startswith("x-ratelimit-")]
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=user("x"))
        headers = info.value.response.headers
        assert headers["retry-after"] == "60"
        assert not [h for h in headers if h.lower().startswith("x-ratelimit-")]


@pytest.mark.anyio
@pytest.mark.parametrize(("args", "retry_after"), [
    (["--no-limit-retry-after"], None), (["--limit-retry-after", "20"], "20")])
async def test_a_limits_429_can_say_no_retry_after_or_a_fixed_one(
        args: list[str], retry_after: str | None) -> None:
    """Gateways' 429s: some say no retry-after, some a fixed wait, whatever the limit's bucket."""
    from batchrunner.simulator import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # 60 a minute: the bucket's own wait for its next request would be 1 s, never 20.
    config = config_from_args(parser.parse_args(["--rpm", "60", *args]))
    async with running(config, clock=FakeClock()) as (_, client):
        for _ in range(60):  # the minute's bucket
            await client.chat.completions.create(model="m", messages=user("x"))
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=user("x"))
        headers = info.value.response.headers
        assert headers.get("retry-after") == retry_after
        assert (headers.get("retry-after-ms") is None) == (retry_after is None)


@pytest.mark.anyio
async def test_token_bucket_charges_prompt_plus_max_tokens_times_n() -> None:
    clock = FakeClock()
    messages = user("abcd" * 25)  # 3 + 3 + 25 = 31 prompt tokens
    async with running(SimulatorConfig(tpm=1000), clock=clock) as (sim, client):
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=messages, max_tokens=100, n=2
        )
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(1000 - 31 - 200)
        await client.chat.completions.create(model="m", messages=messages, max_tokens=100, n=2)
        await client.chat.completions.create(model="m", messages=messages, max_tokens=100, n=2)
        with pytest.raises(openai.RateLimitError) as info:  # 1000 - 3 * 231 = 307 < 431
            await client.chat.completions.create(model="m", messages=messages, max_tokens=200, n=2)
        assert isinstance(info.value.body, dict) and info.value.body["type"] == "tokens"
        assert info.value.response.headers["retry-after-ms"] == str(math.ceil(124 * 60))
        with pytest.raises(openai.RateLimitError) as info:  # never fits
            await client.chat.completions.create(model="m", messages=messages, max_tokens=2000)
        assert "too large" in info.value.message
        assert sim.stats()["rate_limited"]["tokens"] == 2


@pytest.mark.anyio
async def test_rate_limiter_lets_through_what_it_says_in_real_time() -> None:
    """rpm=600: a burst of 600, then 10 a second. Counts are checked against the elapsed time."""
    async with running(SimulatorConfig(rpm=600)) as (sim, _):
        timeout = aiohttp.ClientTimeout(total=10)
        body = json.dumps({"model": "m", "messages": user("x")}).encode()
        url = sim.base_url + "/chat/completions"
        accepted = refused = 0
        first_done = last_sent = max_gap = 0.0
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(20_000):
                now = time.monotonic()
                if last_sent:
                    max_gap = max(max_gap, now - last_sent)
                last_sent = now
                async with session.post(url, data=body) as response:
                    await response.read()
                    assert response.status in (200, 429)
                    if response.status == 200:
                        accepted += 1
                    else:
                        refused += 1
                if not first_done:
                    first_done = time.monotonic()
                if refused >= 20 and time.monotonic() - started > 1.5:
                    break
        elapsed = time.monotonic() - started
    assert refused >= 20
    # What refilled while requests kept coming was taken (but for what refilled in the longest
    # pause between two requests); nothing more was let through.
    assert accepted >= 600 + 10 * (last_sent - first_done) - 10 * max_gap - 2
    assert accepted <= 600 + 10 * elapsed + 1


@pytest.mark.anyio
async def test_insufficient_quota_for_listed_keys() -> None:
    config = SimulatorConfig(quota_exhausted_keys=("sk-broke",))
    async with running(config) as (sim, client):
        assert (await client.chat.completions.create(model="m", messages=user("x"))).choices
        broke = AsyncOpenAI(base_url=sim.base_url, api_key="sk-broke", max_retries=0)
        async with broke:
            with pytest.raises(openai.RateLimitError) as info:
                await broke.chat.completions.create(model="m", messages=user("x"))
        assert info.value.code == "insufficient_quota"
        assert "retry-after" not in info.value.response.headers
        assert sim.stats()["rate_limited"]["insufficient_quota"] == 1
    async with running(SimulatorConfig(quota_exhausted=True)) as (_, client):
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=user("x"))
        assert info.value.code == "insufficient_quota"


# ---------------------------------------------------------------------------- statistics


@pytest.mark.anyio
async def test_stats_count_what_happened_and_reset() -> None:
    async with running(SimulatorConfig(reply_tokens=10)) as (sim, client):
        for i in range(5):
            await client.chat.completions.create(model="m", messages=user(f"row {i}"))
        await client.chat.completions.create(model="m", messages=user("row 0"))
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=user("[[sim:500]]"))
        stats = sim.stats()
        assert stats["requests"] == 7 and stats["completions"] == 6
        assert stats["responses_by_status"] == {"200": 6, "500": 1}
        assert stats["completion_tokens"] == 60
        assert stats["prompt_tokens"] == sum(
            count_prompt_tokens(user(f"row {i}")) for i in (0, 1, 2, 3, 4, 0)
        )
        assert stats["faults"] == {"500": 1}
        assert sum(stats["per_second"]["completions"]) == 6
        assert stats["completions_per_second"] > 0 and stats["uptime_s"] > 0
        assert "requests_by_prompt" not in stats
        per_prompt = sim.stats(per_prompt=True)
        assert per_prompt["requests_by_prompt"][prompt_key("row 0")] == 2
        assert per_prompt["requests_by_prompt"][prompt_key("row 4")] == 1
        assert per_prompt["completions_by_prompt"][prompt_key("row 0")] == 2
        assert prompt_key("[[sim:500]]") not in per_prompt["completions_by_prompt"]
        async with aiohttp.ClientSession() as session:
            async with session.get(sim.base_url + "/simulator/stats?per_prompt=1") as response:
                remote = await response.json()
                assert response.headers["x-request-id"]
            assert remote["requests_by_prompt"] == per_prompt["requests_by_prompt"]
            assert remote["requests"] == 7
            async with session.post(sim.base_url + "/simulator/reset") as response:
                assert response.status == 200
        stats = sim.stats(per_prompt=True)
        assert stats["requests"] == 0 and stats["completions"] == 0
        assert stats["requests_by_prompt"] == {} and stats["responses_by_status"] == {}
        sim.reset_stats()
        assert sim.stats()["requests"] == 0


@pytest.mark.anyio
async def test_unknown_url_is_a_json_404_with_a_request_id() -> None:
    async with running() as (sim, _), aiohttp.ClientSession() as session:
        async with session.get(sim.base_url + "/nope") as response:
            assert response.status == 404 and response.headers["x-request-id"]
            assert (await response.json())["error"]["type"] == "invalid_request_error"
        async with session.get(sim.base_url.removesuffix("/v1") + "/health") as response:
            assert response.status == 200


# ---------------------------------------------------------------------------- ways to run it


def test_simulator_thread_serves_synchronous_clients() -> None:
    with SimulatorThread(SimulatorConfig(reply_tokens=5)) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0, timeout=10)
        with client:
            done = client.chat.completions.create(model="m", messages=user("thread"))
        assert done.usage is not None and done.usage.completion_tokens >= 5
        assert sim.base_url == f"http://127.0.0.1:{sim.port}/v1"
        assert sim.stats()["completions"] == 1
        sim.reset_stats()
        assert sim.stats()["completions"] == 0


def test_simulator_thread_reports_a_port_in_use() -> None:
    with SimulatorThread() as first, pytest.raises(OSError):
        SimulatorThread(port=first.port).start()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_its_url_and_stops_cleanly_on_a_signal(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrunner.simulator", "--port", "0", "--rpm", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        line = _read_line(proc, 30)
        match = re.fullmatch(
            r"batchrunner simulator listening on (http://127\.0\.0\.1:(\d+)/v1) "
            r"\(Ctrl-C to stop\)\n",
            line,
        )
        assert match, line
        client = openai.OpenAI(base_url=match.group(1), api_key=KEY, max_retries=0, timeout=10)
        with client:
            raw = client.chat.completions.with_raw_response.create(model="m", messages=user("x"))
        assert raw.headers["x-ratelimit-limit-requests"] == "100"
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_main_reports_bad_options_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "batchrunner.simulator", "--port", "0", "--fault", "503=2"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "--fault 503=2: the rate must be between 0 and 1" in done.stderr


def test_an_option_is_not_taken_by_its_first_letters() -> None:
    # Taken so, --por 0 would serve on port 0 until the timeout.
    done = subprocess.run(
        [sys.executable, "-m", "batchrunner.simulator", "--por", "0"],
        capture_output=True, text=True, env=_env(), timeout=30,
    )
    assert done.returncode == 2
    assert "unrecognized arguments: --por 0" in done.stderr


def test_fault_kinds_are_all_documented() -> None:
    import batchrunner.simulator as module

    doc = module.__doc__ or ""
    for kind in FAULT_KINDS:
        assert f"``{kind}``" in doc, kind


def test_benchmark_smoke_run() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_simulator.py"), "--smoke"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "non-stream" in done.stdout and "requests/s" in done.stdout
