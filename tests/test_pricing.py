"""Usage → cost: the job's prices, the price library, and the billing arithmetic."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrunner import pricing
from batchrunner.errors import ConfigError
from batchrunner.pricing import ModelPrice, PriceBook, parse_price_table

OWN = ModelPrice(input=2.0, output=8.0, cached_input=0.5)


def library_total(model: str, **usage: int) -> float:
    """What the price library itself charges for a small request (no tiers involved)."""
    return float(genai_prices.calc_price(genai_prices.Usage(**usage), model).total_price)


# ---------------------------------------------------------------------------------------------
# Billing arithmetic


def test_cached_and_reasoning_billing_is_exact_for_a_job_price() -> None:
    book = PriceBook({"my-model": OWN})
    cost = book.cost(
        "my-model",
        prompt_tokens=1000,
        completion_tokens=500,
        cached_tokens=400,
        reasoning_tokens=300,
    )
    # 600 uncached at $2, 400 cached at $0.5, 500 completion (reasoning included) at $8, per 1M.
    assert cost == (600 * 2.0 + 400 * 0.5 + 500 * 8.0) / 1_000_000 == 0.0054


def test_reasoning_tokens_are_not_billed_twice() -> None:
    book = PriceBook({"my-model": OWN})
    without = book.cost("my-model", prompt_tokens=10, completion_tokens=900, reasoning_tokens=0)
    with_reasoning = book.cost(
        "my-model", prompt_tokens=10, completion_tokens=900, reasoning_tokens=800
    )
    assert with_reasoning == without == (10 * 2.0 + 900 * 8.0) / 1_000_000


def test_no_cached_price_means_the_input_price() -> None:
    book = PriceBook({"plain": ModelPrice(input=1.0, output=3.0)})
    assert book.cost("plain", prompt_tokens=100, completion_tokens=0, cached_tokens=100) == (
        100 * 1.0 / 1_000_000
    )
    price = book.price("plain")
    assert price is not None and price.as_dict() == {
        "input": 1.0,
        "output": 3.0,
        "cached_input": 1.0,
    }


def test_an_entry_prices_its_cache_at_input_when_it_sets_no_cached_input_beside_a_price(
) -> None:
    """The one test the pre-run warning and the reports ask of a job's entry: no cached_input
    beside an input price that is not 0 (a price of 0, a server of the job's own, has no cheaper
    cache; one that sets cached_input to the input price says so)."""
    assert ModelPrice(input=1.0, output=3.0).cache_at_input
    assert not ModelPrice(input=1.0, output=3.0, cached_input=0.1).cache_at_input
    assert not ModelPrice(input=1.0, output=3.0, cached_input=1.0).cache_at_input
    assert not ModelPrice(input=0.0, output=0.0).cache_at_input
    book = PriceBook({"gpt-4o-mini": ModelPrice(input=0.15, output=0.6),
                      "free": ModelPrice(input=0.0, output=0.0)})
    assert [w.split(" sets ")[0] for w in book.uncached_warnings()] == ['[prices."gpt-4o-mini"]']


def test_cache_writes_are_priced_at_the_cache_write_prices() -> None:
    """Anthropic bills a prompt token written to the cache at 1.25 times the input price, 2
    times when kept an hour; they were billed as plain input."""
    table = parse_price_table({"claude-gw": {"input": 4.0, "output": 20.0, "cached_input": 0.4,
                                             "cache_write": 5.0, "cache_write_1h": 8.0}},
                              where="jobs/x.toml")
    book = PriceBook(table)
    usage = {"prompt_tokens": 10_000, "completion_tokens": 100, "cached_tokens": 1_000}
    # 2,000 new at $4, 1,000 read at $0.40, 5,000 written for 5 minutes at $5 and 2,000 for an
    # hour at $8, 100 out at $20
    assert book.cost("claude-gw", **usage, cache_write_tokens=7_000,
                     cache_write_1h_tokens=2_000) == pytest.approx(
        (2_000 * 4 + 1_000 * 0.4 + 5_000 * 5 + 2_000 * 8 + 100 * 20) / 1e6)
    price = book.price("claude-gw")
    assert price is not None and price.as_dict()["cache_write"] == 5.0
    # No cache-write price: the input price, as without cache writes (OpenAI bills none).
    plain = PriceBook({"m": ModelPrice(input=1.0, output=3.0)})
    assert plain.cost("m", prompt_tokens=1_000, completion_tokens=0, cache_write_tokens=500,
                      cache_write_1h_tokens=500) == pytest.approx(1_000 / 1e6)
    # The library's prices for Claude: 1.25× and 2× its input price.
    claude = PriceBook().price("claude-sonnet-4-5")
    assert claude is not None and claude.cache_write == pytest.approx(claude.input * 1.25)
    assert claude.cache_write_1h == pytest.approx(claude.input * 2)


def test_audio_tokens_are_priced_at_the_audio_prices() -> None:
    """A spoken answer's tokens (modalities audio: OpenAI's gpt-audio) are part of
    completion_tokens, and an audio input's of prompt_tokens, but billed at the audio prices,
    several times the text ones; they were priced as text."""
    book = PriceBook()
    usage = {"prompt_tokens": 1_000, "completion_tokens": 2_000}
    audio = {"audio_prompt_tokens": 400, "audio_completion_tokens": 1_500}
    # The library's own sum: 600 text in at $2.50, 400 audio in at $32, 500 text out at $10,
    # 1,500 audio out at $64
    assert book.cost("gpt-audio", **usage, **audio) == pytest.approx(library_total(
        "gpt-audio", input_tokens=1_000, output_tokens=2_000, input_audio_tokens=400,
        output_audio_tokens=1_500))
    assert book.cost("gpt-audio", **usage, **audio) == pytest.approx(
        (600 * 2.5 + 400 * 32 + 500 * 10 + 1_500 * 64) / 1e6)
    price = book.price("gpt-audio")
    assert price is not None and price.as_dict()["output_audio"] == 64.0
    assert price.as_dict()["input_audio"] == 32.0
    # A model the library has no audio price for: priced as text, as before
    preview = book.price("gpt-4o-audio-preview")
    assert preview is not None and preview.output_audio is None
    assert "output_audio" not in preview.as_dict()
    assert book.cost("gpt-4o-audio-preview", **usage, **audio) == book.cost(
        "gpt-4o-audio-preview", **usage)
    # No more audio tokens priced than the prompt's uncached tokens and the completion hold
    assert book.cost("gpt-audio", prompt_tokens=100, completion_tokens=100, cached_tokens=50,
                     audio_prompt_tokens=900, audio_completion_tokens=900) == pytest.approx(
        (50 * 32 + 50 * price.effective_cached_input + 100 * 64) / 1e6)
    # A job's own audio prices, checked as its others are
    table = parse_price_table({"my-audio": {"input": 2.0, "output": 8.0, "input_audio": 40,
                                            "output_audio": 80.0}}, where="jobs/x.toml")
    own = PriceBook(table)
    assert own.cost("my-audio", **usage, **audio) == pytest.approx(
        (600 * 2 + 400 * 40 + 500 * 8 + 1_500 * 80) / 1e6)
    mine = own.price("my-audio")
    assert mine is not None and mine.as_dict()["input_audio"] == 40.0
    assert own.recorded_cost({"model": "my-audio", **usage, **audio}) == own.cost(
        "my-audio", **usage, **audio)
    for bad, said in (("a lot", "output_audio must be a number (USD per 1M tokens)"),
                      (-1, "output_audio must be a finite number >= 0")):
        with pytest.raises(ConfigError, match=r"\[prices.m\] " + said.replace("(", r"\(")
                           .replace(")", r"\)")):
            parse_price_table({"m": {"input": 1, "output": 2, "output_audio": bad}},
                              where="jobs/x.toml")


def test_missing_cached_count_is_zero_and_cached_is_capped_at_prompt() -> None:
    book = PriceBook({"my-model": OWN})
    assert book.cost("my-model", prompt_tokens=100, completion_tokens=0, cached_tokens=None) == (
        100 * 2.0 / 1_000_000
    )
    # A server claiming more cached tokens than prompt tokens is billed for the prompt only.
    assert book.cost("my-model", prompt_tokens=100, completion_tokens=0, cached_tokens=500) == (
        100 * 0.5 / 1_000_000
    )


@pytest.mark.parametrize(
    ("prompt", "completion"), [(None, 10), (10, None), (None, None)], ids=["p", "c", "both"]
)
def test_unknown_token_counts_give_no_cost(prompt: int | None, completion: int | None) -> None:
    assert (
        PriceBook({"m": OWN}).cost("m", prompt_tokens=prompt, completion_tokens=completion) is None
    )


@given(
    prompt=st.integers(0, 10**7),
    completion=st.integers(0, 10**6),
    cached_share=st.floats(0, 1),
    reasoning=st.integers(0, 10**6),
)
def test_cost_follows_the_formula(
    prompt: int, completion: int, cached_share: float, reasoning: int
) -> None:
    cached = int(prompt * cached_share)
    cost = PriceBook({"m": OWN}).cost(
        "m",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
    )
    expected = ((prompt - cached) * 2.0 + cached * 0.5 + completion * 8.0) / 1_000_000
    assert cost == pytest.approx(expected, rel=1e-12, abs=0)
    assert cost is not None and cost >= 0


@given(
    prompt=st.integers(-10**6, 10**7),
    completion=st.integers(-10**6, 10**6),
    cached=st.none() | st.integers(-10**6, 2 * 10**7),
)
def test_counts_below_zero_count_as_zero_and_cached_at_most_the_prompt(
    prompt: int, completion: int, cached: int | None
) -> None:
    # A gateway's odd counts (a -1, more cached than prompted) are priced as 0 and as the
    # prompt, to the last bit of the cost.
    cost = PriceBook({"m": OWN}).cost(
        "m", prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached
    )
    hit = min(max(cached or 0, 0), max(prompt, 0))
    expected = ((max(prompt, 0) - hit) * 2.0 + hit * 0.5 + max(completion, 0) * 8.0) / 1_000_000
    assert cost == round(expected, 12)


@given(
    prompt=st.integers(0, 10**7),
    completion=st.integers(0, 10**6),
    input_price=st.floats(0, 1_000),
    output_price=st.floats(0, 1_000),
)
def test_a_cost_is_rounded_as_round_does_it(
    prompt: int, completion: int, input_price: float, output_price: float
) -> None:
    book = PriceBook({"m": ModelPrice(input=input_price, output=output_price)})
    cost = book.cost("m", prompt_tokens=prompt, completion_tokens=completion)
    assert cost == round((prompt * input_price + completion * output_price) / 1_000_000, 12)


@pytest.mark.parametrize("price", [0.0000005, 0.0000015, 0.0000025, 0.5e-6 / 3])
def test_a_cost_at_half_a_trillionth_is_rounded_as_round_does_it(price: float) -> None:
    # Costs a hair either side of half a trillionth of a dollar: where usd * 1e12 alone cannot
    # tell which whole trillionth is nearest, round() decides.
    book = PriceBook({"m": ModelPrice(input=price, output=0.0)})
    for prompt in range(1, 3_000):
        cost = book.cost("m", prompt_tokens=prompt, completion_tokens=0)
        assert cost == round(prompt * price / 1_000_000, 12), prompt


# ---------------------------------------------------------------------------------------------
# Where prices come from


def test_unknown_model_has_no_price_and_no_cost_never_zero() -> None:
    book = PriceBook()
    assert book.price("no-such-model-xyz") is None
    assert book.source("no-such-model-xyz") == "unknown"
    assert book.cost("no-such-model-xyz", prompt_tokens=10, completion_tokens=10) is None
    assert book.cost(None, prompt_tokens=10, completion_tokens=10) is None


def test_job_prices_win_over_the_library() -> None:
    book = PriceBook({"gpt-4o-mini": OWN})
    assert book.price("gpt-4o-mini") == OWN
    assert book.source("gpt-4o-mini") == "job [prices]"
    assert book.cost("gpt-4o-mini", prompt_tokens=1_000_000, completion_tokens=0) == 2.0
    # A dated snapshot of the name, as the API names the model that answered, is the same
    # model: the job's price holds for it too.
    for snapshot in ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-20240718", "gpt-4o-mini-240718",
                     "gpt-4o-mini-0718"):
        assert book.price(snapshot) == OWN
        assert book.source(snapshot) == "job [prices] (gpt-4o-mini)"
    # Another model whose name starts the same is not.
    assert book.source("gpt-4o-mini-search-preview").startswith("genai-prices")
    assert PriceBook({"gpt-4o": OWN}).source("gpt-4o-mini").startswith("genai-prices")


def test_a_gateways_name_of_a_model_the_job_prices_has_the_jobs_price() -> None:
    """A gateway answers with its own name of the model asked for (its provider before it,
    another case, a snapshot of it): the job's price for the model holds, not the library's
    price for that name."""
    book = PriceBook({"gpt-4o": OWN, "anthropic/claude-sonnet-4-5": OWN})
    for name in ("openai/gpt-4o", "GPT-4o", "azure/gpt-4o-2024-08-06",
                 "Anthropic/Claude-Sonnet-4-5", "anthropic/claude-sonnet-4-5-20250929"):
        assert book.price(name) == OWN, name
    assert book.source("openai/gpt-4o") == "job [prices] (gpt-4o)"
    assert book.source("anthropic/claude-sonnet-4-5-20250929") == (
        "job [prices] (anthropic/claude-sonnet-4-5)")
    # A reply to the gateway's name that names the model its own way is priced as asked.
    assert book.as_asked("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5-20250929")
    # Another model is not: a gateway that routed an alias to it.
    assert book.source("openai/gpt-4o-mini").startswith("genai-prices")
    # Two names the job prices that a gateway's name could be: neither is guessed.
    both = PriceBook({"openai/gpt-4o": OWN, "azure/gpt-4o": OWN})
    assert both.source("gpt-4o").startswith("genai-prices")


def test_a_price_for_a_gateways_name_is_not_the_plain_names() -> None:
    """A job prices a gateway's route (x/gpt-4o, at the gateway's price) and asks some rows
    for gpt-4o itself: those were priced at the route's price too (source "job [prices]
    (x/gpt-4o)"), where the job set no price for gpt-4o. The entry prices its own spelling
    (another case, a dated snapshot of it); the plain name, and the name behind another
    provider, take the library's price."""
    book = PriceBook({"x/gpt-4o": OWN, "anthropic/claude-sonnet-4-5": OWN})
    for name in ("gpt-4o", "GPT-4o", "gpt-4o-2024-08-06", "y/gpt-4o", "claude-sonnet-4-5",
                 "claude-sonnet-4-5-20250929"):
        assert book.source(name).startswith("genai-prices"), name
        assert book.price(name) != OWN, name
    assert book.source("X/GPT-4o-2024-08-06") == "job [prices] (x/gpt-4o)"
    # Two routes of one model, each priced: each its own price, the plain name neither.
    other = ModelPrice(input=3.0, output=4.0)
    both = PriceBook({"x/gpt-4o": OWN, "y/gpt-4o": other})
    assert (both.price("X/gpt-4o"), both.price("y/GPT-4o")) == (OWN, other)
    assert both.source("gpt-4o").startswith("genai-prices")


def test_library_knows_gpt_4o_mini() -> None:
    book = PriceBook()
    price = book.price("gpt-4o-mini")
    assert price is not None and price.input > 0 and price.output > price.input
    assert book.source("gpt-4o-mini") == (
        f"genai-prices {genai_prices.__version__} (openai/gpt-4o-mini)"
    )
    cost = book.cost("gpt-4o-mini", prompt_tokens=1000, completion_tokens=500, cached_tokens=400)
    expected = library_total(
        "gpt-4o-mini", input_tokens=1000, cache_read_tokens=400, output_tokens=500
    )
    assert cost == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("model", ["claude-sonnet-4-5-20250929", "claude-opus-4-6"])
def test_library_knows_the_gateways_claude_models(model: str) -> None:
    book = PriceBook()
    assert book.price(model) is not None
    assert "(anthropic/claude-" in book.source(model)
    cost = book.cost(model, prompt_tokens=1000, completion_tokens=100)
    assert cost == pytest.approx(library_total(model, input_tokens=1000, output_tokens=100))


def library_price(model: str, prompt: int, completion: int, **usage: int) -> float:
    """What the price library itself charges for a request, tiers and all."""
    return float(genai_prices.calc_price(genai_prices.Usage(
        input_tokens=prompt, output_tokens=completion, **usage), model).total_price)


@pytest.mark.parametrize(("model", "before", "after"), [
    ("gemini-2.5-pro", 0.385, 0.765), ("claude-sonnet-4-5", 0.915, 1.8225)])
def test_a_prompt_over_the_long_context_threshold_is_billed_at_its_tier(
        model: str, before: float, after: float) -> None:
    """Both bill all of a request's tokens higher once its prompt passes 200,000 tokens
    (Google $2.50 / $15 for gemini-2.5-pro's $1.25 / $10); the base tier was used whatever the
    prompt: $0.385 for 300,000 + 1,000 tokens where Google bills $0.765."""
    book = PriceBook()
    long = book.cost(model, prompt_tokens=300_000, completion_tokens=1_000)
    assert long == pytest.approx(library_price(model, 300_000, 1_000)) == after
    assert long != pytest.approx(before)
    # under the threshold and exactly at it ("> start", as the library): the base price
    for prompt in (100_000, 200_000):
        base = book.cost(model, prompt_tokens=prompt, completion_tokens=1_000)
        assert base == pytest.approx(library_price(model, prompt, 1_000))
    # the tier is the whole prompt's, cached and cache-written tokens too, each at its rate
    assert book.cost(model, prompt_tokens=300_000, completion_tokens=1_000,
                     cached_tokens=150_000, cache_write_tokens=60_000) == pytest.approx(
        library_price(model, 300_000, 1_000, cache_read_tokens=150_000,
                      cache_write_tokens=60_000))
    # the estimate's sum of short prompts is no long one
    assert book.cost(model, 300_000, 1_000, long_context=False) == pytest.approx(before)


def test_a_long_context_tier_of_a_service_tiers_price() -> None:
    """gpt-5.4's flex price has a long-context tier of its own (272,000 tokens)."""
    book = PriceBook()
    usage = {"prompt_tokens": 300_000, "completion_tokens": 1_000}
    if "price_context" not in inspect.signature(genai_prices.calc_price).parameters:
        pytest.skip("a genai-prices that prices no service tiers")
    flex = float(genai_prices.calc_price(
        genai_prices.Usage(input_tokens=300_000, output_tokens=1_000), "gpt-5.4",
        price_context={"service_tier": "flex"}).total_price)
    assert book.cost("gpt-5.4", **usage, service_tier="flex") == pytest.approx(flex)
    assert flex < library_price("gpt-5.4", 300_000, 1_000)


def test_a_jobs_price_is_flat_whatever_the_prompt() -> None:
    """The job's prices have no tiers, nor an entry that takes the library's token prices."""
    own = PriceBook({"claude-sonnet-4-5": OWN})
    assert own.cost("claude-sonnet-4-5", prompt_tokens=300_000, completion_tokens=0) == 0.6
    table = parse_price_table({"claude-sonnet-4-5": {"search_unit": 0.01}}, where="job.toml")
    price = table["claude-sonnet-4-5"]
    assert price.tiers == () and "long_context" not in price.as_dict()
    assert PriceBook(table).cost("claude-sonnet-4-5", 300_000, 0) == pytest.approx(
        300_000 * price.input / 1e6)


def test_time_of_day_prices_use_the_highest_of_the_day() -> None:
    # DeepSeek lists off-peak discounts by time of day; the book never assumes the discount.
    price = PriceBook().price("deepseek-r1")
    assert price is not None
    day = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for hour in range(24):
        at = day.replace(hour=hour)
        calc = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1000, output_tokens=1000),
            "deepseek-r1",
            genai_request_timestamp=at,
        )
        assert float(calc.total_price) <= (price.input + price.output) * 1000 / 1e6 + 1e-12


@pytest.mark.parametrize(
    "alias", ["gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini", "GPT-4o-mini", " gpt-4o-mini "]
)
def test_gateway_spellings_reach_the_library(alias: str) -> None:
    book = PriceBook()
    assert book.price(alias) == book.price("gpt-4o-mini")


@pytest.mark.parametrize("local", ["deepseek-r1:7b", "deepseek-r1:latest", "deepseek-r1:671b",
                                   "DeepSeek-R1:1.5B", "deepseek-r1:8b-llama-distill-q4_K_M"])
def test_a_local_models_tag_has_no_api_price(local: str) -> None:
    """Ollama's deepseek-r1:7b (a distilled model on the user's own hardware) was priced as
    DeepSeek's API deepseek-reasoner; its cost is unknown unless the job prices it."""
    book = PriceBook()
    assert book.price("deepseek-r1") is not None  # the API's model keeps its price
    assert book.price(local) is None and book.cost(local, prompt_tokens=10,
                                                   completion_tokens=10) is None
    mine = ModelPrice(input=0.0, output=0.0)
    assert PriceBook({local: mine}).price(local) == mine
    # Not a local tag: a fine-tune's name, a gateway spelling.
    for name in ("ft:gpt-4o-mini-2024-07-18:org:name:abc123", "openai/gpt-4o-mini:free"):
        assert not pricing._LOCAL_TAG.match(name), name


@pytest.mark.parametrize("distill", [
    "deepseek-r1-0528-qwen3-8b", "DeepSeek-R1-0528-Qwen3-8B",
    "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B", "deepseek-r1-distill-qwen-32b",
    "DeepSeek-R1-Distill-Llama-8B"])
def test_a_distill_is_never_priced_as_the_api_model_it_was_distilled_from(distill: str) -> None:
    """DeepSeek's R1-0528 distilled into Qwen3-8B has no "distill" in its name: the library
    matched it to deepseek-reasoner (the 671B R1, 0.55 / 2.19 USD per 1M tokens)."""
    book = PriceBook()
    assert "deepseek-reasoner" not in book.source(distill)
    price = book.price(distill)
    assert price is None or price.input < 0.2, book.source(distill)


def test_library_version() -> None:
    assert PriceBook().library_version == genai_prices.__version__


def test_prices_are_resolved_once_then_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    book = PriceBook()
    first = book.cost("gpt-4o", prompt_tokens=10, completion_tokens=10)
    assert book.cost("nonexistent-model-q", prompt_tokens=1, completion_tokens=1) is None

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the price library was called on the hot path")

    monkeypatch.setattr(genai_prices, "calc_price", boom)
    for _ in range(100):
        assert book.cost("gpt-4o", prompt_tokens=10, completion_tokens=10) == first
        assert book.cost("nonexistent-model-q", prompt_tokens=1, completion_tokens=1) is None


# ---------------------------------------------------------------------------------------------
# The job's [prices] table


def test_parse_price_table() -> None:
    table = {
        "my-model": {"input": 0.15, "output": 0.6, "cached_input": 0.075},
        "other": {"input": 1, "output": 2},
    }
    assert parse_price_table(table, where="jobs/x.toml") == {
        "my-model": ModelPrice(input=0.15, output=0.6, cached_input=0.075),
        "other": ModelPrice(input=1.0, output=2.0),
    }
    assert parse_price_table({}, where="jobs/x.toml") == {}


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"my-model": {"input": 1, "output": 2, "cache": 1}}, "unknown key 'cache'"),
        ({"my-model": {"input": 1}}, "missing key 'output'"),
        ({"my-model": {"input": "cheap", "output": 2}}, "input must be a number"),
        ({"my-model": {"input": True, "output": 2}}, "input must be a number"),
        ({"my-model": {"input": 1, "output": -2}}, "output must be a finite number >= 0"),
        ({"my-model": {"input": float("nan"), "output": 2}}, "input must be a finite number"),
        ({"my-model": 0.15}, "must be a table"),
    ],
)
def test_bad_price_tables_name_the_file_model_and_key(table: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_price_table(table, where="jobs/x.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("jobs/x.toml: [prices.my-model]")
    assert fragment in message


def test_model_names_with_dots_are_quoted_in_errors() -> None:
    with pytest.raises(ConfigError, match=r'\[prices\."glm-4\.7"\] unknown key'):
        parse_price_table({"glm-4.7": {"input": 1, "output": 2, "cache": 1}}, where="job.toml")


def test_an_entry_that_leaves_out_token_prices_takes_them_from_the_library() -> None:
    """A search price set alone ([prices."grok-4"] with search_unit) was refused for want of
    input and output, which the library knows: it now takes every price it leaves out from the
    library's price for the model, and overrides the ones it sets."""
    known = PriceBook().price("grok-4")
    assert known is not None and known.cached_input is not None
    table = parse_price_table({"grok-4": {"search_unit": 0.025},
                               "gpt-4o": {"output": 20, "search_request": 0.03}},
                              where="jobs/x.toml")
    grok = table["grok-4"]
    assert (grok.input, grok.output, grok.cached_input) == (
        known.input, known.output, known.cached_input)
    assert grok.search_unit == 0.025 and grok.based_on is not None
    assert grok.based_on.startswith("genai-prices ")
    library_4o = PriceBook().price("gpt-4o")
    assert library_4o is not None
    assert (table["gpt-4o"].input, table["gpt-4o"].output) == (library_4o.input, 20.0)
    assert table["gpt-4o"].search_request == 0.03
    book = PriceBook(table)
    # A snapshot, a gateway's spelling: the job's entry, its source naming both
    assert book.source("grok-4-0709") == f"job [prices] (grok-4) and {grok.based_on}"
    assert book.source("grok-4") == f"job [prices] and {grok.based_on}"
    tokens = (12 * known.input + 30 * known.output) / 1_000_000
    assert book.cost("grok-4", prompt_tokens=12, completion_tokens=30,
                     sources=4) == pytest.approx(tokens + 4 * 0.025)
    # Its cached price is the library's: no warning to add one
    assert not grok.cache_at_input and book.uncached_warnings() == []
    # An entry with input and output is the whole price, as before
    whole = parse_price_table({"grok-4": {"input": 1, "output": 2}}, where="jobs/x.toml")
    assert whole["grok-4"] == ModelPrice(input=1.0, output=2.0)


@pytest.mark.parametrize(("entry", "missing"), [
    ({"search_unit": 0.025}, "input"), ({"input": 1}, "output"), ({"output": 1}, "input")])
def test_an_entry_of_a_model_the_library_lacks_needs_input_and_output(
        entry: dict[str, Any], missing: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_price_table({"my-model": entry}, where="jobs/x.toml")
    assert str(info.value) == (
        f"jobs/x.toml: [prices.my-model] missing key {missing!r} (USD per 1M tokens; "
        "genai-prices has no price for this model to take it from)")


# ---------------------------------------------------------------------------------------------
# The disk cache of the library's answers (conftest points it at a fresh directory per test)

# A fresh interpreter: what it resolves for argv[1], and whether it had to import the library.
FRESH_PROCESS = """
import json, sys, threading
from batchrunner import pricing
pricing.preload()
book = pricing.PriceBook()
model = sys.argv[1]
price = book.price(model)
print(json.dumps({
    "price": None if price is None else [price.input, price.output, price.cached_input],
    "source": book.source(model),
    "window": book.context_window(model),
    "version": book.library_version,
    "imported": "genai_prices" in sys.modules,
    "threads": threading.active_count(),
}))
"""


def fresh_process(model: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, model], capture_output=True,
                          text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def cached(directory: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((directory / "prices.json").read_text())
    return doc


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models the price library is asked about (prices and context windows)."""
    calls: list[str] = []
    real_price, real_window = pricing._library_price, pricing._library_window

    def price(model: str, tier: str | None = None) -> tuple[ModelPrice, str] | None:
        calls.append(model if tier is None else f"{model} at {tier}")
        return real_price(model, tier)

    def window(model: str) -> int | None:
        calls.append(model)
        return real_window(model)

    monkeypatch.setattr(pricing, "_library_price", price)
    monkeypatch.setattr(pricing, "_library_window", window)
    return calls


def test_a_warm_cache_prices_a_fresh_process_without_the_library() -> None:
    cold = fresh_process("gpt-4o-mini")
    assert cold["imported"]
    assert cold["source"] == f"genai-prices {genai_prices.__version__} (openai/gpt-4o-mini)"
    assert cold["window"] and cold["version"] == genai_prices.__version__
    warm = fresh_process("gpt-4o-mini")
    assert not warm["imported"]
    assert warm["threads"] == 1  # preload() started no import either
    for key in ("price", "source", "window", "version"):
        assert warm[key] == cold[key]


def test_a_run_whose_models_are_cached_never_imports_the_library(tmp_path: Path) -> None:
    (tmp_path / "one.csv").write_text("id,text\n1,hello\n")
    script = (
        "import sys\n"
        "from batchrunner.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('genai_prices' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    reports = []
    for out in ("cold", "warm"):
        done = subprocess.run(
            [sys.executable, "-c", script, "run", "--simulator", "--input",
             str(tmp_path / "one.csv"), "--prompt", "Classify: {text}", "--model", "gpt-4o-mini",
             "--output", str(tmp_path / out), "--progress", "none"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == ("True" if out == "cold" else "False")
        reports.append(json.loads((tmp_path / out / "cost_report.json").read_text()))
    cold, warm = reports
    assert warm["pricing"] == cold["pricing"]
    untimed = [{model: {k: v for k, v in entry.items() if k != "latency_ms"}  # two runs'
                for model, entry in report["by_model"].items()} for report in (warm, cold)]
    assert untimed[0] == untimed[1]
    assert warm["cost_usd"] == cold["cost_usd"] > 0


def test_unknown_models_are_cached_as_unknown(price_cache_dir: Path, asked: list[str]) -> None:
    assert PriceBook().price("no-such-model-xyz") is None
    assert cached(price_cache_dir)["prices"] == {"no-such-model-xyz": None}
    book = PriceBook()
    assert book.source("no-such-model-xyz") == "unknown"
    assert book.cost("no-such-model-xyz", prompt_tokens=1, completion_tokens=1) is None
    assert asked == ["no-such-model-xyz"]


def test_cached_prices_are_the_librarys_exactly(price_cache_dir: Path, asked: list[str]) -> None:
    models = ["gpt-4o-mini", "claude-sonnet-4-5-20250929", "deepseek-r1", "openai/gpt-4o"]
    first = PriceBook()
    answers = [(first.price(m), first.source(m)) for m in models]
    again = PriceBook()
    assert [(again.price(m), again.source(m)) for m in models] == answers
    assert asked == models
    assert cached(price_cache_dir)["version"] == genai_prices.__version__


def test_long_context_tiers_are_cached(price_cache_dir: Path, asked: list[str]) -> None:
    first = PriceBook().price("gemini-2.5-pro")
    assert first is not None and [start for start, _ in first.tiers] == [200_000]
    entry = cached(price_cache_dir)["prices"]["gemini-2.5-pro"]
    assert entry["tiers"][0][0] == 200_000 and entry["tiers"][0][1]["input"] == 2.5
    again = PriceBook()
    assert again.price("gemini-2.5-pro") == first
    assert again.cost("gemini-2.5-pro", 300_000, 1_000) == pytest.approx(0.765)
    assert asked == ["gemini-2.5-pro"]


def test_context_windows_are_cached(price_cache_dir: Path, asked: list[str]) -> None:
    window = PriceBook().context_window("gpt-4o")
    assert window is not None and window > 0
    assert PriceBook().context_window("no-such-model-xyz") is None
    assert cached(price_cache_dir)["windows"] == {"gpt-4o": window, "no-such-model-xyz": None}
    book = PriceBook()
    assert book.context_window("gpt-4o") == window
    assert book.context_window("no-such-model-xyz") is None
    assert asked == ["gpt-4o", "no-such-model-xyz"]


def test_another_day_asks_the_library_again(
    price_cache_dir: Path, asked: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    price = PriceBook().price("gpt-4o-mini")
    monkeypatch.setattr(pricing, "_today", lambda: "2031-01-02")
    assert PriceBook().price("gpt-4o-mini") == price
    assert asked == ["gpt-4o-mini", "gpt-4o-mini"]
    assert cached(price_cache_dir)["day"] == "2031-01-02"  # rewritten for the new day


def test_a_book_that_outlives_the_day_reads_the_new_days_cache(
    price_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = PriceBook()
    book.price("gpt-4o-mini")
    monkeypatch.setattr(pricing, "_today", lambda: "2031-01-02")
    book.price("gpt-4o")
    doc = cached(price_cache_dir)
    assert doc["day"] == "2031-01-02" and set(doc["prices"]) == {"gpt-4o"}


def test_an_answer_is_not_written_once_the_day_changed(
    price_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = pricing._read_answers()
    answers.version = genai_prices.__version__
    answers.prices["no-such-model-xyz"] = None
    monkeypatch.setattr(pricing, "_today", lambda: "2031-01-02")
    pricing._write_answers(answers)  # the answer may be of either day
    assert not (price_cache_dir / "prices.json").exists()


def test_another_library_asks_the_library_again(
    price_cache_dir: Path, asked: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    price = PriceBook().price("gpt-4o-mini")
    PriceBook().price("gpt-4o-mini")
    assert asked == ["gpt-4o-mini"]
    other = [["genai_prices-99.0.dist-info"], 1, 2, 3, 4]
    monkeypatch.setattr(pricing, "_library_stamp", lambda: other)
    assert PriceBook().price("gpt-4o-mini") == price
    assert asked == ["gpt-4o-mini", "gpt-4o-mini"]
    assert cached(price_cache_dir)["stamp"] == other


def test_the_stamp_follows_the_installed_library_without_importing_it(tmp_path: Path) -> None:
    """A stand-in ``genai_prices`` first on the path: its version and data file make the stamp."""
    package = tmp_path / "site" / "genai_prices"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "data.py").write_text("DATA = 1\n")
    (tmp_path / "site" / "genai_prices-1.0.dist-info").mkdir()
    script = (
        "import json, os, sys\n"
        "from batchrunner import pricing\n"
        "data = os.path.join(sys.argv[1], 'genai_prices', 'data.py')\n"
        "stamps = [pricing._library_stamp()]\n"
        "os.utime(data, ns=(1, 1))\n"
        "stamps.append(pricing._library_stamp())\n"
        "os.rename(os.path.join(sys.argv[1], 'genai_prices-1.0.dist-info'),\n"
        "          os.path.join(sys.argv[1], 'genai_prices-1.1.dist-info'))\n"
        "stamps.append(pricing._library_stamp())\n"
        "print(json.dumps([stamps, 'genai_prices' in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path / "site"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "site")], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    stamps, imported = json.loads(done.stdout)
    assert not imported
    assert stamps[0][0] == ["genai_prices-1.0.dist-info"] and stamps[0][1] == len("DATA = 1\n")
    assert stamps[2][0] == ["genai_prices-1.1.dist-info"]
    assert len({json.dumps(s) for s in stamps}) == 3


@pytest.mark.parametrize(
    "spoil",
    [
        lambda doc: b"not json",
        lambda doc: b"\xff\xfe{}",
        lambda doc: b"[]",
        lambda doc: json.dumps({**doc, "prices": []}).encode(),
        lambda doc: json.dumps({**doc, "version": 3}).encode(),
        lambda doc: json.dumps({**doc, "windows": {"gpt-4o": "big"}}).encode(),
        lambda doc: json.dumps({**doc, "windows": {"gpt-4o": True}}).encode(),
        lambda doc: json.dumps({**doc, "prices": {"gpt-4o-mini": {"input": "0.15"}}}).encode(),
        lambda doc: json.dumps(
            {**doc, "prices": {"gpt-4o-mini": {**doc["prices"]["gpt-4o-mini"], "output": -1.0}}}
        ).encode(),
        lambda doc: json.dumps(
            {**doc, "prices": {"gpt-4o-mini": {**doc["prices"]["gpt-4o-mini"], "input": "NaN"}}}
        ).encode().replace(b'"NaN"', b"NaN"),
        lambda doc: json.dumps(
            {**doc, "prices": {"gpt-4o-mini": {**doc["prices"]["gpt-4o-mini"], "source": None}}}
        ).encode(),
    ],
    ids=["text", "binary", "list", "prices-list", "version", "window-str", "window-bool",
         "price-shape", "negative", "nan", "source"],
)
def test_a_corrupt_cache_is_ignored_and_rewritten(
    price_cache_dir: Path, asked: list[str], spoil: Any
) -> None:
    book = PriceBook()
    price, source = book.price("gpt-4o-mini"), book.source("gpt-4o-mini")
    book.context_window("gpt-4o")
    good = cached(price_cache_dir)
    (price_cache_dir / "prices.json").write_bytes(spoil(good))
    again = PriceBook()
    assert (again.price("gpt-4o-mini"), again.source("gpt-4o-mini")) == (price, source)
    assert asked == ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]
    assert cached(price_cache_dir)["prices"] == {"gpt-4o-mini": good["prices"]["gpt-4o-mini"]}


def test_an_unreadable_or_unwritable_cache_is_ignored(
    tmp_path: Path, asked: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = PriceBook().price("gpt-4o-mini")
    (tmp_path / "a-file").write_text("")
    # Under a file: nothing can be created there, whoever runs the tests.
    monkeypatch.setenv("BATCHRUNNER_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    book = PriceBook()
    assert book.price("gpt-4o-mini") == expected
    assert book.context_window("gpt-4o") is not None
    assert book.library_version == genai_prices.__version__
    # A directory where the file should be: it can be neither read nor replaced.
    (tmp_path / "cache" / "prices.json").mkdir(parents=True)
    monkeypatch.setenv("BATCHRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    assert PriceBook().price("gpt-4o-mini") == expected
    assert asked == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]
    assert os.listdir(tmp_path / "cache") == ["prices.json"]  # no temporary file left behind


def test_job_prices_win_over_the_cache_and_are_not_written(
    price_cache_dir: Path, asked: list[str]
) -> None:
    PriceBook({"my-model": OWN}).price("my-model")
    assert not (price_cache_dir / "prices.json").exists()
    library = PriceBook().price("gpt-4o-mini")
    before = cached(price_cache_dir)
    book = PriceBook({"gpt-4o-mini": OWN, "my-model": OWN})
    assert book.price("gpt-4o-mini") == OWN and book.source("gpt-4o-mini") == "job [prices]"
    assert book.price("my-model") == OWN
    assert book.cost("gpt-4o-mini", prompt_tokens=1_000_000, completion_tokens=0) == 2.0
    assert cached(price_cache_dir) == before
    assert PriceBook().price("gpt-4o-mini") == library
    assert asked == ["gpt-4o-mini"]


def test_answers_written_by_another_run_are_kept(price_cache_dir: Path) -> None:
    one, two = PriceBook(), PriceBook()
    one.price("no-such-model-a")
    two.price("no-such-model-b")  # read after one wrote, written after
    one.price("gpt-4o-mini")  # one has not seen b: it must not drop it
    assert set(cached(price_cache_dir)["prices"]) == {
        "no-such-model-a", "no-such-model-b", "gpt-4o-mini"
    }
    assert os.listdir(price_cache_dir) == ["prices.json"]


def test_where_the_cache_lives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BATCHRUNNER_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    assert pricing._cache_path() == str(tmp_path / "mine" / "prices.json")
    monkeypatch.delenv("BATCHRUNNER_CACHE_DIR")
    assert pricing._cache_path() == str(tmp_path / "xdg" / "batchrunner" / "prices.json")
    home_cache = str(tmp_path / "home" / ".cache" / "batchrunner" / "prices.json")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # ignored, as the XDG spec says
    assert pricing._cache_path() == home_cache
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert pricing._cache_path() == home_cache
    # A home that is not there (cron's HOME=/nonexistent, root's crontab): no cache, rather
    # than a directory made at the top of the file system.
    monkeypatch.setenv("HOME", str(tmp_path / "nonexistent"))
    assert pricing._cache_path() is None


def test_a_recorded_reply_is_priced_again_at_the_jobs_prices_only_where_exact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a run prices the rows answered before their price was set with: a journal record's
    usage at the job's own price (a dated snapshot of the name too), as the reply was priced;
    never at the library's (not asked), nor where the record does not tell the cost: cache
    writes of a model whose 1-hour writes are priced apart (the record keeps their sum)."""
    monkeypatch.setattr(pricing, "_library", lambda: pytest.fail("the library was asked"))
    book = PriceBook(parse_price_table({
        "grok-4": {"input": 3.0, "output": 15.0, "search_unit": 0.025},
        "claude-gw": {"input": 4.0, "output": 20.0, "cache_write": 5.0, "cache_write_1h": 8.0},
        "claude-5m": {"input": 4.0, "output": 20.0, "cache_write": 5.0}}, where="job.toml"))
    record = {"model": "grok-4-0709", "prompt_tokens": 1_000, "completion_tokens": 100,
              "cached_tokens": 200, "cache_write_tokens": None, "search_units": 4,
              "search_requests": None}
    assert book.recorded_cost(record) == pytest.approx(
        (800 * 3 + 200 * 3 + 100 * 15) / 1e6 + 4 * 0.025)
    assert book.recorded_cost({**record, "model": "gpt-4o-mini"}) is None  # not the job's
    assert book.recorded_cost({**record, "model": None}) is None
    written = {**record, "search_units": None, "cache_write_tokens": 500}
    assert book.recorded_cost({**written, "model": "claude-gw"}) is None
    assert book.recorded_cost({**written, "model": "claude-5m"}) == pytest.approx(
        (300 * 4 + 200 * 4 + 500 * 5 + 100 * 20) / 1e6)
    assert book.recorded_cost({**written, "model": "claude-gw", "cache_write_tokens": 0}) == (
        pytest.approx((1_000 * 4 + 100 * 20) / 1e6))


def test_a_reply_naming_the_model_asked_for_is_priced_at_the_jobs_price_for_it() -> None:
    """Two models a job prices may answer with one name (a gateway's route and the model
    itself): each reply is priced as the model asked for when it names that model. Another
    model is a gateway's routing, and a model the job does not price has the library's price
    for the snapshot that answered."""
    book = PriceBook({"x/gpt-4o": OWN, "gpt-4o-mini": OWN})
    assert book.as_asked("x/gpt-4o", "gpt-4o-2024-08-06")
    assert book.as_asked("x/gpt-4o", "openai/GPT-4o")
    assert book.as_asked("gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    assert not book.as_asked("x/gpt-4o", "gpt-4o-mini-2024-07-18")  # routed to another model
    assert not PriceBook().as_asked("gpt-4o", "gpt-4o-2024-05-13")  # the library's own price


def test_a_service_tier_is_priced_at_the_librarys_price_for_it() -> None:
    """OpenAI's flex tier bills about half the standard price and its priority tier about
    twice: a flex or priority reply was priced at the standard price. A job's own price holds
    for every tier; a library too old to price tiers (no price_context) gives the standard."""
    book = PriceBook()
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}
    standard = book.cost("gpt-5", **usage)
    assert standard is not None
    for tier in ("default", "auto", "scale", None):
        assert book.cost("gpt-5", **usage, service_tier=tier) == standard
    tiers_priced = "price_context" in inspect.signature(genai_prices.calc_price).parameters
    for tier in ("flex", "priority"):
        if tiers_priced:
            library = float(genai_prices.calc_price(
                genai_prices.Usage(input_tokens=1_000_000, output_tokens=1_000_000), "gpt-5",
                price_context={"service_tier": tier}).total_price)
        else:
            library = standard
        assert book.cost("gpt-5", **usage, service_tier=tier) == pytest.approx(library)
        assert book.cost("gpt-5-2025-08-07", **usage, service_tier=tier) == pytest.approx(
            library)  # a snapshot's name, as the reply gives it
        assert PriceBook({"gpt-5": OWN}).cost("gpt-5", **usage, service_tier=tier) == 10.0
    if tiers_priced:
        assert (book.cost("gpt-5", **usage, service_tier="flex") or 0) < standard < (
            book.cost("gpt-5", **usage, service_tier="priority") or 0)
    # A model with no price of its own for the tier: its standard price
    assert book.cost("claude-sonnet-4-5", **usage, service_tier="flex") == book.cost(
        "claude-sonnet-4-5", **usage)


def test_a_service_tiers_price_is_cached_beside_the_models(asked: list[str]) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 1000, "service_tier": "flex"}
    flex = PriceBook().cost("gpt-5", **usage)
    assert asked == ["gpt-5", "gpt-5 at flex"]
    asked.clear()
    assert PriceBook().cost("gpt-5", **usage) == flex
    assert asked == []


def test_a_jobs_price_holds_for_its_models_names_with_a_gateways_thinking_suffix() -> None:
    """A job asked for gemini-2.5-flash-thinking-8192 (a gateway's thinking-mode name) and
    priced gemini-2.5-flash: the estimate, the budget and a reply naming the suffixed model
    took the library's price (0.3 / 2.5, where the job says 0.1 / 0.2), a reply naming
    gemini-2.5-flash the job's. The job's entry prices the names the library's lookup takes
    for its model; an entry for the longer name, or the library's own model of that name,
    still wins."""
    cheap = ModelPrice(input=0.1, output=0.2, cached_input=0.01)
    book = PriceBook({"gemini-2.5-flash": cheap, "claude-opus-4-6": OWN, "x/gpt-4o": OWN})
    for name in ("gemini-2.5-flash-thinking-8192", "gemini-2.5-flash-nothinking",
                 "Gemini-2.5-Flash-Thinking-High", "google/gemini-2.5-flash-thinking",
                 " gemini-2.5-flash-thinking "):
        assert book.price(name) == cheap, name
        assert book.source(name) == "job [prices] (gemini-2.5-flash)", name
    assert book.cost("gemini-2.5-flash-thinking-8192", 1_000_000, 1_000_000) == 0.3
    for name in ("claude-opus-4-6-thinking", "anthropic/claude-opus-4-6-thinking"):
        assert book.source(name) == "job [prices] (claude-opus-4-6)", name  # the library's too
    # A journal's record of such a reply is priced again at the job's price
    assert book.recorded_cost({"model": "gemini-2.5-flash-thinking-8192", "prompt_tokens": 10,
                               "completion_tokens": 10}) == pytest.approx(3e-6)
    # A name priced behind a provider prices that spelling only
    assert book.source("X/gpt-4o-thinking") == "job [prices] (x/gpt-4o)"
    assert not book.source("gpt-4o-thinking").startswith("job [prices]")
    # An entry for the longer name wins, and a reply to it naming the model without the
    # suffix is priced as asked
    both = PriceBook({"gemini-2.5-flash": cheap, "gemini-2.5-flash-thinking-8192": OWN})
    assert both.price("gemini-2.5-flash-thinking-8192") == OWN
    assert both.source("gemini-2.5-flash-thinking-8192") == "job [prices]"
    assert both.as_asked("gemini-2.5-flash-thinking-8192", "gemini-2.5-flash")
    assert not both.as_asked("gemini-2.5-flash-thinking-8192", "gemini-2.5-pro")
    # A model of its own in the library is not the one without the suffix
    kimi = PriceBook({"kimi-k2": cheap})
    assert kimi.source("Kimi-K2-Thinking").startswith("genai-prices")
    assert not PriceBook({"kimi-k2-thinking": OWN}).as_asked("kimi-k2-thinking", "kimi-k2")
    # A local model's tag keeps its suffix, as in the library's lookup
    assert PriceBook({"qwen3:8b": cheap}).price("qwen3:8b-thinking") is None


def test_an_entry_that_prices_no_model_the_job_asks_is_warned_of_not_for_its_cache() -> None:
    """[prices."claude-opus-4.6"] in a job asking claude-opus-4-6 (a typo) was taken silently,
    and the warning of its missing cached_input spoke of it as if it priced the job's model.
    Where the job's models are known, such an entry is said to price none of them; an entry
    for a name its replies may give (a snapshot, the model without a thinking suffix) is not."""
    price = ModelPrice(input=5.0, output=25.0)
    typo = PriceBook({"claude-opus-4.6": price, "claude-opus-4-6-thinking": price})
    assert typo.unused_warnings(["claude-opus-4-6"]) == [
        f'[prices."{name}"] prices no model this job asks (claude-opus-4-6): check its name'
        for name in ("claude-opus-4.6", "claude-opus-4-6-thinking")]
    assert typo.uncached_warnings(["claude-opus-4-6"]) == []
    assert typo.uncached_warnings()  # models not known: as before
    assert typo.unused_warnings(None) == []
    for entry, asked in (("claude-opus-4-6", "claude-opus-4-6"),
                         ("claude-opus-4-6", "claude-opus-4-6-thinking"),
                         ("gemini-2.5-flash", "gemini-2.5-flash-thinking-8192"),
                         ("gpt-4o-2024-08-06", "gpt-4o"), ("openai/gpt-4o", "gpt-4o"),
                         ("gpt-4o", "openai/GPT-4o")):
        book = PriceBook({entry: price})
        assert book.unused_warnings([asked]) == [], (entry, asked)
        # its cache warning kept, as where the models are not known (whether there is one is
        # the library's data: genai-prices 0.1.0 has no cached price for openai/gpt-4o)
        assert book.uncached_warnings([asked]) == book.uncached_warnings(), (entry, asked)
    assert PriceBook({"claude-opus-4-6": price}).uncached_warnings(["claude-opus-4-6"])
