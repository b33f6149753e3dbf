"""Usage → cost: the job's prices, the price library, and the billing arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import genai_prices
import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    # Overrides match the exact name only; a dated name still goes to the library.
    assert book.source("gpt-4o-mini-2024-07-18").startswith("genai-prices")


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


def test_tiered_prices_use_the_base_tier() -> None:
    # claude-sonnet-4-5 costs more per token once a prompt passes 200k tokens; we use the base.
    book = PriceBook()
    small = book.cost("claude-sonnet-4-5-20250929", prompt_tokens=1000, completion_tokens=0)
    large = book.cost("claude-sonnet-4-5-20250929", prompt_tokens=300_000, completion_tokens=0)
    assert small is not None and large is not None
    assert large == pytest.approx(small * 300)


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
    with pytest.raises(ConfigError, match=r'\[prices\."glm-4\.7"\] missing key'):
        parse_price_table({"glm-4.7": {"input": 1}}, where="job.toml")
