"""Token usage → cost in USD.

Prices come from two places, looked up in this order:

1. the job's ``[prices]`` table, parsed by :func:`parse_price_table`: the exact model name, or
   a dated snapshot of it, the name an API answers with (``gpt-4o-mini-2024-07-18`` is priced
   as ``gpt-4o-mini``, ``claude-sonnet-4-5-20250929`` as ``claude-sonnet-4-5``), or a gateway's
   name of either, in another case or behind a provider (``openai/gpt-4o``), or with a
   gateway's thinking-mode suffix, as the library's lookup drops it (``gemini-2.5-flash-thinking``
   is priced as ``gemini-2.5-flash``, unless the library prices it as a model of its own:
   ``Kimi-K2-Thinking`` is not ``kimi-k2``); a name the job
   prices behind a provider (``x/gpt-4o``, a gateway's price) prices that spelling only, not
   the plain name (``gpt-4o``) nor another provider's; an entry that leaves out ``input`` or
   ``output`` (a search price alone) takes what it leaves out from the library's price for its
   model, looked up when the table is parsed;
2. the ``genai-prices`` library, a maintained offline price table that matches dated and
   suffixed model names (``gpt-4o-2024-08-06``, ``claude-sonnet-4-5-20250929``,
   ``gemini-3-pro-preview-thinking``) and, as a fallback here, gateway spellings such as
   ``openai/gpt-4o`` or ``claude-sonnet-4-5-20250929-thinking``.

A model found in neither is *unknown*: its cost is ``None``, never 0, so a report can say the
total is incomplete instead of silently under-counting.

Billing rules, for one OpenAI-style ``usage`` object:

* ``prompt_tokens - cached_tokens - cache_write_tokens`` at the input price, ``cached_tokens``
  at the cached-input price (the input price when the model has none), ``cache_write_tokens``
  (Anthropic's cache writes, part of the prompt) at the cache-write price, those of them kept an
  hour at the 1-hour one (the input price when the model has none: OpenAI's cache writes are
  not billed apart);
* ``completion_tokens`` at the output price. Reasoning tokens are billed as output, and OpenAI's
  ``completion_tokens`` already *includes* ``completion_tokens_details.reasoning_tokens``, so
  ``reasoning_tokens`` is accepted but never added a second time;
* audio tokens (a spoken answer or an audio input: ``modalities`` with ``audio``, OpenAI's
  ``gpt-audio``), which OpenAI counts in ``prompt_tokens`` and ``completion_tokens`` and
  again in ``*_tokens_details.audio_tokens``: the prompt's at the input-audio price, the
  completion's at the output-audio price (the library's ``input_audio_mtok`` and
  ``output_audio_mtok``, the job's ``input_audio`` and ``output_audio``), several times the
  text prices; at the text price where the model has none (``PriceBook.audio_unpriced``: the
  reports say so, the cost is then low);
* search billed apart from tokens, per unit the usage reports: Anthropic's web searches
  (``server_tool_use.web_search_requests``) at the job's ``search_unit`` price, else, for a
  model the library finds at Anthropic, at its web search price (``web_searches_kcount``, per
  1,000 searches; the library's prices per search of other providers are for units of their
  own: OpenAI's Responses tool calls, Gemini's grounded prompts); Grok's live search sources
  (``num_sources_used``) at the job's ``search_unit`` price only (the library has no price per
  source, and its price per search is not one). A reply that reports search units with no
  price for them has an unknown cost (``None``), as an unknown model's has;
* search the usage does not report (:func:`search_requested`: OpenAI's search models and
  ``web_search_options`` (not Claude's, whose searches are tool calls, their results prompt
  tokens, or web searches its reply reports), Gemini's ``googleSearch`` tool, Qwen's
  ``enable_search``), per request that asked for it, at the job's ``search_request`` price only
  (the library's prices per search are per tool call or grounded prompt of other APIs, and it
  lists none for the search models): a request whose reply's usage reports no search units is
  one. With no such price its cost is unknown (``None``).

Simplifications of the library's richer price model, all resolved once per model:

* Long-context prices (a higher rate once a request's prompt passes e.g. 200k tokens, the
  library's tiered prices) are followed as the library bills them: a request whose
  ``prompt_tokens`` (cached and written to the cache included) pass a tier's start pays that
  tier's rate for all its tokens of each kind (input, cached, cache write, output), the highest
  tier it passes; exactly at the start, the rate below (``ModelPrice.tiers``). A service tier's
  price has long-context tiers of its own (``gpt-5.4`` at ``flex``). The job's own prices are
  flat, and so is an entry that takes the prices it leaves out from the library.
* A service tier (OpenAI's ``service_tier``: ``flex`` at about half the standard price,
  ``priority`` at about twice) takes the library's price for that tier, where the model has one
  (``PriceBook.cost``'s ``service_tier``); the job's own prices hold for every tier. A library
  too old to price tiers gives the standard price.
* Prices that change by date use the price in force on the day of the lookup.
* Daily time-of-day windows (off-peak discounts) are not followed request by request: the highest
  price listed for the day is used, so a report errs high rather than low.

``PriceBook.cost`` runs once per finished row, so each model's price is resolved on first use and
kept in a dict; later calls are one dict lookup plus arithmetic and never call into the library.

Importing the library and its first answer cost about 0.2 s of CPU, more than a short run's own
work, so what it answered is also kept on disk, in ``prices.json`` under ``$BATCHRUNNER_CACHE_DIR``
(else ``$XDG_CACHE_HOME/batchrunner``, else ``~/.cache/batchrunner``): per model name as asked,
its price (with its long-context tiers) and source or "unknown", and its context window. The
file holds one UTC day's answers (prices change by date) of one installed library (its version
and the size and mtime of its data module, read without importing it) and of this module; any
other file is ignored and replaced at the next answer. A run whose models were all answered
before never imports the library. The job's prices are never written there and win over it. A
missing, corrupt or unwritable file only means asking the library, as without a cache; it is
written whole to a temporary file and renamed, so concurrent runs never see a torn file.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import json
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time
from decimal import Decimal
from functools import partial
from types import MappingProxyType, ModuleType
from typing import Any, TypeVar

from batchrunner.config import cache_dir, gemini_named
from batchrunner.errors import ConfigError

__all__ = ["LIBRARY_NAME", "PRICED_TIERS", "SEARCH_FIELDS", "ModelPrice", "PriceBook",
           "live_search_asked", "parse_price_table", "preload", "search_requested", "tier_asked"]

LIBRARY_NAME = "genai-prices"
SOURCE_JOB = "job [prices]"
SOURCE_UNKNOWN = "unknown"
# A dated snapshot of a model, as an API names the model that answered: a date (2024-07-18,
# 20250929, or 250324 as some gateways write it) or a version number (0125, 001) after the name
# asked for.
_SNAPSHOT = re.compile(r"(.+)-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{6}|\d{3,4})")
# The source of a model's costs in a report when the model has no price of its own: a gateway
# answered with its name, and the reply was priced as the model asked for.
SOURCE_ASKED = "priced as the model asked for"

_PER_TOKENS = 1_000_000
_WHOLE_BELOW = 2.0**52  # a double holds every whole number below it, and its fraction
_PRICE_KEYS = ("input", "output", "cached_input", "cache_write", "cache_write_1h",  # per 1M tokens
               "input_audio", "output_audio")
_SEARCH_KEY = "search_unit"  # USD per search unit a reply's usage reports
_REQUEST_KEY = "search_request"  # USD per request asking for search its usage does not report
_TABLE_KEYS = (*_PRICE_KEYS, _SEARCH_KEY, _REQUEST_KEY)
# A gateway's thinking-mode suffix the library may not match by itself:
# "-thinking", "-nothinking", "-thinking-8192", "-thinking-high".
_GATEWAY_SUFFIX = re.compile(r"-(?:no)?thinking(?:-[a-z0-9]+)?$", re.IGNORECASE)
# The numbers in a model's name: a close name with others is another version of a model
# (deepseek-v3p2, DeepSeek V3.2, for deepseek-v3, a model of its own), not a misspelling of it.
_NUMBERS = re.compile(r"\d+")
# A local model's tag, as Ollama names them ("deepseek-r1:7b", "qwen2.5:7b-instruct-q4_K_M",
# "llama3.1:latest"): run on the user's own hardware, never at an API's price (the library
# matches "deepseek-r1:7b" to DeepSeek's deepseek-reasoner).
_LOCAL_TAG = re.compile(r"^[^:/\s]+:(?:latest|\d+(?:\.\d+)?[bmk](?:[-_.][\w.-]*)?)$", re.IGNORECASE)
# DeepSeek's R1 distilled into another family's model without "distill" in its name
# (DeepSeek-R1-0528-Qwen3-8B): the family, which a price found for it must name too.
_DISTILLED = re.compile(r"\br1\b.*?\b(qwen|llama)")
# Sample points (UTC, every 15 minutes) used to find the day's highest time-of-day price.
_DAY_SAMPLES = tuple(time(hour=m // 60, minute=m % 60) for m in range(0, 24 * 60, 15))
# The disk cache of the library's answers: its file name, and the version of its layout.
_CACHE_FILE = "prices.json"
_CACHE_FORMAT = 5
# The provider whose price per web search the library lists for the searches a reply's usage
# counts (``server_tool_use.web_search_requests`` is Anthropic's own field).
_WEB_SEARCH_PROVIDER = "anthropic"
# The service tiers billed at prices of their own (OpenAI's); any other (``default``, ``auto``,
# ``scale``, a gateway's word) is billed at the model's standard price.
PRICED_TIERS = ("flex", "priority")
# The prices a library answer holds, as the cache keeps them (and, under "tiers", those of each
# long-context tier: [start, prices]).
_CACHED_KEYS = (*_PRICE_KEYS, "web_search")
_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelPrice:
    """A model's price in USD per 1M tokens. ``cached_input=None`` means the input price;
    ``cache_write=None`` (a prompt's tokens written to the cache) the input price, and
    ``cache_write_1h=None`` (those kept an hour) the cache-write price; ``input_audio`` and
    ``output_audio`` (audio tokens of the prompt and the completion) ``None``: no audio price,
    priced at the input and output price.

    Search billed apart from tokens, in USD per unit: ``search_unit`` (the job's) prices every
    unit a reply's usage reports, a web search or a source; ``web_search`` (the library's)
    prices web searches only; ``search_request`` (the job's) each request that asked for search
    its usage does not report. ``None``: no price for them."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    cache_write_1h: float | None = None
    input_audio: float | None = None
    output_audio: float | None = None
    search_unit: float | None = None
    web_search: float | None = None
    search_request: float | None = None
    # A job's entry that leaves out input or output: the source of the library's price it takes
    # the prices it leaves out from (``parse_price_table``); ``None``: a whole price.
    based_on: str | None = None
    # The library's long-context prices: (start, price) by start ascending, the price of a
    # request whose prompt passes ``start`` tokens (and no later start), for all its tokens;
    # ``()``: one price whatever the prompt (every job's own price).
    tiers: tuple[tuple[int, ModelPrice], ...] = ()

    @property
    def effective_cached_input(self) -> float:
        """The price of a cached prompt token."""
        return self.input if self.cached_input is None else self.cached_input

    @property
    def cache_at_input(self) -> bool:
        """Whether it sets no ``cached_input`` beside an input price that is not 0: its cached
        prompt tokens cost the input price, which APIs that cache bill lower (a price of 0, a
        server of the job's own, has no cheaper cache). What the pre-run warning
        (``PriceBook.uncached_warnings``) and the reports (``report.uncached_price``) ask of a
        job's entry; not of one that takes its cached price from the library (``based_on``)."""
        return self.cached_input is None and self.input != 0 and self.based_on is None

    def as_dict(self) -> dict[str, Any]:
        """``{"input", "output", "cached_input"}`` with the cached price resolved, and
        ``cache_write``, ``cache_write_1h``, ``input_audio``, ``output_audio`` (USD per 1M
        tokens), ``search_unit``, ``web_search`` and ``search_request`` (USD each) where the
        price has them; ``long_context``, where it has tiers: a list of ``{"over": start}``
        and the same prices, of a prompt over ``start`` tokens."""
        out: dict[str, Any] = {
            "input": self.input,
            "output": self.output,
            "cached_input": self.effective_cached_input,
        }
        if self.cache_write is not None:
            out["cache_write"] = self.cache_write
        if self.cache_write_1h is not None:
            out["cache_write_1h"] = self.cache_write_1h
        if self.input_audio is not None:
            out["input_audio"] = self.input_audio
        if self.output_audio is not None:
            out["output_audio"] = self.output_audio
        if self.search_unit is not None:
            out["search_unit"] = self.search_unit
        if self.web_search is not None:
            out["web_search"] = self.web_search
        if self.search_request is not None:
            out["search_request"] = self.search_request
        if self.tiers:
            out["long_context"] = [{"over": start, **price.as_dict()}
                                   for start, price in self.tiers]
        return out


# The rates of one model: input, cached input and output in USD per 1M tokens; then a source,
# a web search and a request that asked for search in USD each (None: no price for them); then
# a token written to the cache, and one kept there an hour, then an audio token of the prompt
# and of the completion (the input and output price where the model has no audio price), in
# USD per 1M tokens; last, the long-context tiers, (start, rates) by start descending, the
# rates of a prompt over start tokens (``()`` for a flat price: one falsy test per reply).
_Rates = tuple[float, float, float, float | None, float | None, float | None, float, float,
               float, float, tuple[tuple[int, "_Rates"], ...]]


class PriceBook:
    """Model name → price, with the job's overrides first and ``genai-prices`` second.

    Meant to be shared by the tasks of one run. Two threads looking up a new model at the same
    time both resolve it, to the same result; nothing else changes after construction.
    The library's answers come from the disk cache when it has them (see the module docstring).
    """

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self._overrides: dict[str, ModelPrice] = dict(overrides or {})
        # The job's names as a gateway may spell them, in lower case (``_spelling``): a name
        # with no provider behind any provider, one behind a provider (``x/gpt-4o``, a
        # gateway's price) behind that provider only → the name priced, for spellings one
        # name of the job's only comes to.
        spelt: dict[str, str | None] = {}
        for name in self._overrides:
            key = _spelling(name)
            spelt[key] = None if key in spelt else name
        self._spelt = {key: name for key, name in spelt.items() if name is not None}
        self._prices: dict[str, ModelPrice | None] = {}
        self._sources: dict[str, str] = {}
        self._rates: dict[str, _Rates | None] = {}
        # (model, service tier) → its price at that tier, and its rates (``_tier``)
        self._tier_prices: dict[tuple[str, str], ModelPrice | None] = {}
        self._tier_rates: dict[tuple[str, str], _Rates | None] = {}
        self._windows: dict[str, int | None] = {}
        self._as_asked: dict[tuple[str, str], bool] = {}  # as_asked's answers
        self._suffixed: dict[str, str | None] = {}  # _suffixed_name's answers
        self._answers: _Answers | None = None  # the disk cache, read on the first library question
        self._answers_lock = threading.Lock()

    @property
    def library_version(self) -> str:
        """The installed ``genai-prices`` version."""
        with self._answers_lock:
            answers = self._current_answers()
            version = answers.version
        if version is None:
            version = str(_library().__version__)
            with self._answers_lock:
                answers.version = version
                _write_answers(answers)
        return version

    @property
    def overrides(self) -> Mapping[str, ModelPrice]:
        """The job's own prices, read-only."""
        return MappingProxyType(self._overrides)

    def cost(  # arguments by position too: the runner's call for each reply names none
        self,
        model: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cached_tokens: int | None = 0,
        reasoning_tokens: int | None = 0,
        web_searches: int | None = None,
        sources: int | None = None,
        search_requests: int | None = None,
        cache_write_tokens: int | None = None,
        cache_write_1h_tokens: int | None = None,
        service_tier: str | None = None,
        audio_prompt_tokens: int | None = None,
        audio_completion_tokens: int | None = None,
        long_context: bool = True,
    ) -> float | None:
        """The cost of one request in USD; ``None`` if the model or the token counts are unknown,
        or if the reply reports search units (``web_searches``, Grok's ``sources``) that have no
        price, or if ``search_requests`` (requests that asked for search the usage does not
        report, :func:`search_requested`) have none. ``service_tier``: the tier that answered
        (``flex``, ``priority``), priced at the library's price for it where the model has one.

        ``reasoning_tokens`` is part of ``completion_tokens`` (OpenAI's convention) and is not
        added again; it is accepted so callers can pass a usage record through unchanged. So
        are ``cached_tokens`` and ``cache_write_tokens`` (of which ``cache_write_1h_tokens`` were
        kept an hour) part of ``prompt_tokens``, and ``audio_prompt_tokens`` (priced at the
        input-audio price) of its tokens not cached; ``audio_completion_tokens`` (at the
        output-audio price) part of ``completion_tokens``.

        A prompt over a long-context tier's start is priced at that tier's rates (the library's
        ``ModelPrice.tiers``); ``long_context=False`` prices it at the base rates whatever its
        size: for a sum of many prompts each under the start (``estimate``'s per model).
        """
        if model is None or prompt_tokens is None or completion_tokens is None:
            return None
        if service_tier in PRICED_TIERS:
            rates = self._tier(model, service_tier)
        else:
            try:
                rates = self._rates[model]
            except KeyError:
                self._resolve(model)
                rates = self._rates[model]
        if rates is None:
            return None
        # Counts below 0 count as 0, and no more tokens cached than prompted: by comparisons,
        # not min() and max(): those five calls were 6,000 instructions of a reply's 14,000 here.
        prompt = prompt_tokens if prompt_tokens > 0 else 0
        if rates[10] and long_context:  # the tier is the whole prompt's, cached tokens too
            for start, over in rates[10]:
                if prompt > start:
                    rates = over
                    break
        cached = cached_tokens if cached_tokens and cached_tokens > 0 else 0
        if cached > prompt:
            cached = prompt
        uncached = prompt - cached
        output = completion_tokens if completion_tokens > 0 else 0
        usd = (uncached * rates[0] + cached * rates[1] + output * rates[2]) / _PER_TOKENS
        if cache_write_tokens:  # at their price, not the input's
            written = min(max(cache_write_tokens, 0), uncached)
            hour = min(max(cache_write_1h_tokens or 0, 0), written)
            usd += ((written - hour) * (rates[6] - rates[0])
                    + hour * (rates[7] - rates[0])) / _PER_TOKENS
        if audio_prompt_tokens or audio_completion_tokens:  # at the audio prices, not the text's
            heard = min(max(audio_prompt_tokens or 0, 0), uncached)
            spoken = min(max(audio_completion_tokens or 0, 0), output)
            usd += (heard * (rates[8] - rates[0]) + spoken * (rates[9] - rates[2])) / _PER_TOKENS
        if web_searches:
            if rates[4] is None:
                return None
            usd += web_searches * rates[4]
        if sources:
            if rates[3] is None:
                return None
            usd += sources * rates[3]
        if search_requests:
            if rates[5] is None:
                return None
            usd += search_requests * rates[5]
        # To a trillionth of a dollar: 0.0000144, not 0.000014400000000000001, in the results.
        # round(usd, 12) goes through decimal digits (2,800 instructions, a reply's most costly
        # step here); the same double comes from whole trillionths. usd * 1e12 is within half a
        # unit in its last place (under 1e-15 of it) of the exact product, so, further than
        # that from a half, it rounds to the exact product's integer, which divided by 1e12 is
        # the double nearest that many trillionths: round()'s answer. Else round() itself.
        scaled = usd * 1e12
        if 0.0 < scaled < _WHOLE_BELOW:
            below = scaled // 1.0
            frac = scaled - below
            margin = scaled * 1e-15
            if frac < 0.5 - margin:
                return below / 1e12
            if frac > 0.5 + margin:
                return (below + 1.0) / 1e12
        return round(usd, 12)

    def price(self, model: str) -> ModelPrice | None:
        """The price used for ``model``, or ``None`` when the model is unknown."""
        if model not in self._prices:
            self._resolve(model)
        return self._prices[model]

    def unused_warnings(self, models: Collection[str] | None) -> list[str]:
        """The job's entries that price none of ``models``, the models the job asks for where
        they are known before sending (``None``: they are not, the rows name them), said
        before the run: a misspelt name (``claude-opus-4.6`` for ``claude-opus-4-6``) whose
        price would be used for nothing."""
        if not models:
            return []
        asked = ", ".join(models)
        return [f'[prices."{name}"] prices no model this job asks ({asked}): check its name'
                for name in self._unused(models)]

    def unused_by_replies(self, answered: Mapping[str, str]) -> list[str]:
        """The job's entries that priced none of the rows answered, where ``answered`` (each
        model rows were priced as: its price's ``source``) has rows priced from the library:
        a gateway that routes the name the job priced (an alias, "auto") answers as the model
        it routed to, priced at that model's library price, and the job's price for the name
        goes unused, unsaid (a gateway that bills the alias at its own price is billed
        otherwise)."""
        library = [m for m, source in answered.items() if not source.startswith("job")]
        if not library:
            return []
        them = ", ".join(library)
        return [f'[prices."{name}"] priced no row answered so far: the replies named other '
                f"models ({them}), priced at the price library's prices; a gateway that routes "
                f'"{name}" answers as the model it routed to — to price those rows at the '
                f"job's price, add the same entry under the name the replies give"
                for name in self._unused(list(answered))]

    def uncached_warnings(self, models: Collection[str] | None = None) -> list[str]:
        """The job's entries that set no ``cached_input`` for a model the library bills
        cached prompt tokens lower for (OpenAI's, Anthropic's, DeepSeek's...): their cached
        tokens would cost the input price, said before the run. Not those that price none of
        ``models`` (``unused_warnings``), where they are known."""
        out = []
        unused = self._unused(models) if models else []
        for name, price in self._overrides.items():
            if not price.cache_at_input or name in unused:
                continue
            entry = self._answer(lambda a: a.prices, name, partial(_library_entry, name))
            known = entry[0] if entry is not None else None
            if known is None or known.cached_input is None or known.cached_input >= known.input:
                continue
            out.append(f'[prices."{name}"] sets no cached_input: the cached prompt tokens its '
                       f"replies report will be priced at its input price ({price.input:g} "
                       f"USD per 1M tokens), where {LIBRARY_NAME} lists {known.cached_input:g} "
                       f"for them (input {known.input:g}): add cached_input to it")
        return out

    def _unused(self, models: Collection[str]) -> list[str]:
        """The job's entries that price none of ``models`` (``_job_name``) nor a name a reply
        to one of them may give its model as (``as_asked``: ``gpt-4o-2024-08-06`` or
        ``openai/gpt-4o`` for ``gpt-4o``, ``gemini-2.5-flash`` for
        ``gemini-2.5-flash-thinking-8192``), priced by its entry when the reply names it."""
        priced = {self._job_name(model) for model in models}
        bases = {_model_base(name) for model in models
                 for name in (model, _unsuffixed(model)) if name is not None}
        return [name for name in self._overrides
                if name not in priced and _model_base(name) not in bases]

    def source(self, model: str) -> str:
        """Where the price comes from: ``job [prices]`` (``job [prices] (name)`` for a dated
        snapshot of a name the job prices), ``genai-prices X (provider/id)``, or ``unknown``."""
        if model not in self._sources:
            self._resolve(model)
        return self._sources[model]

    def context_window(self, model: str) -> int | None:
        """The model's context window in tokens, from the price library, if it says."""
        if model not in self._windows:
            self._windows[model] = self._answer(
                lambda a: a.windows, model, lambda: _library_window(model))
        return self._windows[model]

    def close_names(self, model: str) -> list[str]:
        """The model names, the job's and the price library's, closest to ``model`` (a typo of
        one of them), best first; none close enough: ``[]``. A local model's tag has none: it
        is no API's model misspelt; nor is a name whose numbers differ (``_NUMBERS``) one meant.
        Loads the library."""
        asked = model.strip().lower()
        if _LOCAL_TAG.match(asked):
            return []
        numbers = _NUMBERS.findall(asked)
        names = {name.lower(): name for name in self._overrides}
        for provider in importlib.import_module("genai_prices.data").providers:
            for info in provider.models:
                names.setdefault(info.id.lower(), info.id)
        close = difflib.get_close_matches(asked, names, n=3, cutoff=0.9)
        return [names[name] for name in close if _NUMBERS.findall(name) == numbers]

    def recorded_cost(self, record: Mapping[str, Any]) -> float | None:
        """What a reply cost at the job's own prices, from its usage as the journal records it
        (``model``, the token counts, audio ones too, ``search_units``, ``search_requests``);
        ``None`` when the job does not price its model (the library is not asked for its price,
        only, for a name with a thinking-mode suffix, whether that is the model the job prices
        without it: ``_suffixed_name``), or the
        price does not tell the cost exactly from the record: cache writes of a model whose
        1-hour writes are priced apart (the record keeps their sum only), or search with no
        price. Priced as its ``priced_as``, else (a record written before it) its ``model``."""
        model = record.get("priced_as") or record.get("model")
        if not model or self._job_name(model) is None:
            return None
        written = record.get("cache_write_tokens")
        price = self.price(model)
        if written and price is not None and price.cache_write_1h is not None and (
                price.cache_write_1h != price.cache_write):
            return None
        return self.cost(model, prompt_tokens=record.get("prompt_tokens"),
                         completion_tokens=record.get("completion_tokens"),
                         cached_tokens=record.get("cached_tokens"),
                         sources=record.get("search_units"),
                         search_requests=record.get("search_requests"),
                         cache_write_tokens=written,
                         audio_prompt_tokens=record.get("audio_prompt_tokens"),
                         audio_completion_tokens=record.get("audio_completion_tokens"))

    def as_asked(self, asked: str, answered: str) -> bool:
        """Whether a reply to a request for ``asked`` that ``answered`` names is priced as the
        model asked for, the job's price for it: ``answered`` is a name of that model, as APIs
        and gateways name the model that answered (a dated snapshot of it, the same in another
        case or behind a provider: ``gpt-4o-2024-08-06``, ``openai/gpt-4o`` for ``gpt-4o`` and
        for ``x/gpt-4o``), not another model a gateway routed it to, and the job prices
        ``asked``. (The library's price for a snapshot is its own: ``gpt-4o-2024-05-13``'s is
        not ``gpt-4o``'s.) A gateway's name of the model without its thinking-mode suffix is
        one too (``gemini-2.5-flash`` for ``gemini-2.5-flash-thinking-8192``), unless the
        library prices the suffixed name as a model of its own (``_same_model``)."""
        try:
            return self._as_asked[asked, answered]
        except KeyError:
            pass
        named = _model_base(answered)
        base = _unsuffixed(asked)
        same = _model_base(asked) == named or (base is not None and _model_base(base) == named)
        if same:
            same = self.source(asked).startswith(SOURCE_JOB) and (
                _model_base(asked) == named or base is None or self._same_model(asked, base))
        self._as_asked[asked, answered] = same
        return same

    def _job_name(self, model: str) -> str | None:
        """The name in the job's ``[prices]`` that prices ``model``: the same, a dated snapshot
        of it, or a gateway's name of either (``_another_name``), else one of these with a
        gateway's thinking-mode suffix (``_suffixed_name``); ``None`` if none does."""
        if model in self._overrides:
            return model
        if (snapshot := _SNAPSHOT.fullmatch(model)) and snapshot[1] in self._overrides:
            return snapshot[1]
        if not self._spelt:
            return None
        return self._another_name(model) or self._suffixed_name(model)

    def _suffixed_name(self, model: str) -> str | None:
        """The name the job prices that ``model`` is with a gateway's thinking-mode suffix
        (``gemini-2.5-flash-thinking-8192``, ``claude-opus-4-6-thinking``: ``_unsuffixed``), as
        the library's lookup drops it: unless the library prices the name with its suffix as a
        model of its own (``Kimi-K2-Thinking`` is not ``kimi-k2``, ``_same_model``). ``None``
        when there is none."""
        try:
            return self._suffixed[model]
        except KeyError:
            pass
        base = _unsuffixed(model)
        named = None if base is None else self._job_name(base)
        if named is not None and base is not None and not self._same_model(model, base):
            named = None
        self._suffixed[model] = named
        return named

    def _same_model(self, model: str, base: str) -> bool:
        """Whether the library's lookup takes ``model`` for ``base``, the name without its
        thinking-mode suffix: it has no price for ``model`` (it would look up ``base``), or
        finds the same model for both."""
        own = self._answer(lambda a: a.prices, model, partial(_library_entry, model))
        if own is None:
            return True
        found = self._answer(lambda a: a.prices, base, partial(_library_entry, base))
        return found is not None and found[1] == own[1]

    def _resolve(self, model: str) -> None:
        price: ModelPrice | None
        if (named := self._job_name(model)) is not None:
            price = self._overrides[named]
            source = SOURCE_JOB if named == model else f"{SOURCE_JOB} ({named})"
            if price.based_on is not None:
                source = f"{source} and {price.based_on}"
        else:
            entry = self._answer(lambda a: a.prices, model, lambda: _library_entry(model))
            price, source = entry if entry is not None else (None, SOURCE_UNKNOWN)
        self._prices[model] = price
        self._sources[model] = source
        self._rates[model] = None if price is None else _rates(price)

    def tier_price(self, model: str, tier: str) -> ModelPrice | None:
        """The price of ``model`` answered at service tier ``tier`` (one of ``PRICED_TIERS``):
        the library's price for that tier, else (a job's own price, a model with no such tier,
        a library that prices no tiers) the model's own."""
        self._tier(model, tier)
        return self._tier_prices[model, tier]

    def _tier(self, model: str, tier: str) -> _Rates | None:
        """The rates of ``tier_price``."""
        try:
            return self._tier_rates[model, tier]
        except KeyError:
            pass
        price = self.price(model)
        rates = self._rates[model]
        if price is not None and not self._sources[model].startswith(SOURCE_JOB):
            # Cached beside the model's own answer, under a name no model has (a tab in it)
            entry = self._answer(lambda a: a.prices, f"{model}\tservice_tier={tier}",
                                 lambda: _library_entry(model, tier))
            if entry is not None:
                price = entry[0]
                rates = _rates(price)
        self._tier_prices[model, tier] = price
        self._tier_rates[model, tier] = rates
        return rates

    def _another_name(self, model: str) -> str | None:
        """The name the job prices that ``model`` is a gateway's name of: the same name, or a
        dated snapshot of it, in another case or, for a name with no provider, behind one
        (``openai/gpt-4o``, ``GPT-4o-2024-08-06`` for ``gpt-4o``; ``X/gpt-4o-2024-08-06``
        for ``x/gpt-4o``, but not ``gpt-4o``); ``None`` when there is none."""
        spelt = self._spelt
        full = _spelling(model)
        for key in (full, _plain(model)) if "/" in full else (full,):
            if (named := spelt.get(key)) is not None:
                return named
            if (snapshot := _SNAPSHOT.fullmatch(key)) and (named := spelt.get(snapshot[1])):
                return named
        return None

    def _answer(self, table: Callable[[_Answers], dict[str, _T]], model: str,
                ask: Callable[[], _T]) -> _T:
        """The disk cache's answer for ``model`` in ``table``, else ``ask()``'s, then cached."""
        with self._answers_lock:
            answers = self._current_answers()
            if model in table(answers):
                return table(answers)[model]
        value = ask()
        version = str(_library().__version__)
        with self._answers_lock:
            answers.version = version
            table(answers)[model] = value
            _write_answers(answers)
        return value

    def _current_answers(self) -> _Answers:
        """The disk cache, read on first use and again once the UTC day changed. Caller locks."""
        if self._answers is None or self._answers.day != _today():
            self._answers = _read_answers()
        return self._answers


def _rates(price: ModelPrice) -> _Rates:
    """A price's rates, in ``_Rates``' order."""
    write = price.input if price.cache_write is None else price.cache_write
    return (price.input, price.effective_cached_input, price.output, price.search_unit,
            price.web_search if price.search_unit is None else price.search_unit,
            price.search_request, write,
            write if price.cache_write_1h is None else price.cache_write_1h,
            price.input if price.input_audio is None else price.input_audio,
            price.output if price.output_audio is None else price.output_audio,
            tuple((start, _rates(over)) for start, over in reversed(price.tiers)))


def _plain(model: str) -> str:
    """A model's name without the provider a gateway puts before it, in lower case:
    ``openai/GPT-4o`` → ``gpt-4o``."""
    return model.rpartition("/")[2].strip().lower()


def _spelling(model: str) -> str:
    """A model's name as a job's price for it matches a gateway's spelling: in lower case,
    behind its provider when it has one (``X/GPT-4o`` → ``x/gpt-4o``)."""
    return model.strip().lower()


def _unsuffixed(model: str) -> str | None:
    """``model`` without a gateway's thinking-mode suffix (``_GATEWAY_SUFFIX``), as the
    library's lookup tries it when the whole name fails (``_candidates``):
    ``gemini-2.5-flash-thinking-8192`` → ``gemini-2.5-flash``; ``None`` when it has none, or is
    a local model's tag (``_LOCAL_TAG``, priced by no API's name)."""
    name = model.strip()
    if _LOCAL_TAG.match(name):
        return None
    base = _GATEWAY_SUFFIX.sub("", name)
    return base if base and base != name else None


def same_model(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one model, but for a provider, a case or a date:
    ``gpt-4o-mini-2024-07-18`` and ``gpt-4o-mini``."""
    return _model_base(a) == _model_base(b)


def _model_base(model: str) -> str:
    """A model's name without a provider, a case or a date: ``openai/GPT-4o-2024-08-06`` →
    ``gpt-4o``."""
    plain = _plain(model)
    snapshot = _SNAPSHOT.fullmatch(plain)
    return plain if snapshot is None else snapshot[1]


def parse_price_table(table: Mapping[str, Any], *, where: str) -> dict[str, ModelPrice]:
    """Check the job's ``[prices]`` table and turn it into ``{model: ModelPrice}``.

    ``{"my-model": {"input": 0.15, "output": 0.6, "cached_input": 0.075}}``, USD per 1M tokens;
    ``input`` and ``output``, then ``cached_input`` (optional), as are ``cache_write``
    and ``cache_write_1h`` (a prompt's tokens written to the cache, and kept an hour: Anthropic
    bills them at 1.25 and 2 times the input price), ``input_audio`` and ``output_audio`` (audio
    tokens of the prompt and of the completion: OpenAI's gpt-audio), ``search_unit``
    (USD per search unit a reply reports: a source of Grok's live search, a web search) and
    ``search_request`` (USD per request that asks for search its reply does not report).

    An entry with ``input`` and ``output`` is the model's whole price. One that leaves either
    out (``{"grok-4": {"search_unit": 0.025}}``: a search price only) takes every price it leaves
    out from the library's price for that model, which it overrides where it sets one
    (``based_on`` names the library's price); a model the library has no price for needs both.

    Raises ``ConfigError`` with one line naming ``where``, the model and the key at fault.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: [prices] must be a table of models, got {table!r}")
    result: dict[str, ModelPrice] = {}
    library: PriceBook | None = None  # the library's prices, for an entry that leaves some out
    for model, entry in table.items():
        head = f"{where}: [prices.{_toml_key(model)}]"
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"{where}: [prices] model names must be non-empty strings")
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"{head} must be a table like {{ input = 0.15, output = 0.6 }}, got {entry!r}"
            )
        for key in entry:
            if key not in _TABLE_KEYS:
                raise ConfigError(f"{head} unknown key {key!r} (expected {', '.join(_TABLE_KEYS)})")
        values: dict[str, float] = {}
        for key in _TABLE_KEYS:
            unit = ("USD per search unit" if key == _SEARCH_KEY else "USD per search request"
                    if key == _REQUEST_KEY else "USD per 1M tokens")
            if key not in entry:
                continue
            v = entry[key]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f"{head} {key} must be a number ({unit}), got {v!r}")
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"{head} {key} must be a finite number >= 0, got {v!r}")
            values[key] = float(v)
        if "input" not in values or "output" not in values:
            # A search price (or another) set alone, over the token prices the library knows:
            # the library is asked here, once, so a model it lacks is refused before a run.
            if library is None:
                library = PriceBook()
            known = library.price(model)
            if known is None:
                missing = "input" if "input" not in values else "output"
                raise ConfigError(f"{head} missing key {missing!r} (USD per 1M tokens; "
                                  f"{LIBRARY_NAME} has no price for this model to take it from)")
            # Flat, as every job's price: its own prices hold whatever the prompt, and the
            # library's long-context rates of those it sets would not be the job's.
            result[model] = replace(known, **values, based_on=library.source(model), tiers=())
            continue
        result[model] = ModelPrice(
            input=values["input"],
            output=values["output"],
            cached_input=values.get("cached_input"),
            cache_write=values.get("cache_write"),
            cache_write_1h=values.get("cache_write_1h"),
            input_audio=values.get("input_audio"),
            output_audio=values.get("output_audio"),
            search_unit=values.get(_SEARCH_KEY),
            search_request=values.get(_REQUEST_KEY),
        )
    return result


# Gemini's Google Search tool, by the names gateways take it under (lower case).
_GOOGLE_SEARCH = frozenset({"googlesearch", "google_search", "google_search_retrieval"})
# The body fields that can ask for search billed per request, besides the model's name.
_SEARCH_FIELDS = frozenset({"web_search_options", "enable_search", "parameters", "tools",
                            "extra_body"})
# Every body field that can ask for search (search_requested, live_search_asked): a row that
# sets one of its own may ask for other search than its job's settings.
SEARCH_FIELDS = frozenset({"model", "search_parameters", *_SEARCH_FIELDS})


def tier_asked(body: Mapping[str, Any]) -> str | None:
    """The service tier a request body asks for (``service_tier``), which prices its reply
    when the reply does not say the tier that answered; None when it asks for none."""
    tier = body.get("service_tier")
    return tier if type(tier) is str else None


def audio_asked(body: Mapping[str, Any]) -> bool:
    """Whether a request asks for a spoken answer (``modalities`` with ``audio``): its
    completion tokens are mostly audio ones, billed at the output-audio price, at which the
    budget holds it and the estimate prices it (at most: the transcript's are text)."""
    modalities = body.get("modalities")
    return type(modalities) is list and "audio" in modalities


def search_requested(body: Mapping[str, Any]) -> str | None:
    """What in a request ``body`` asks for search that is billed per request and that the
    reply's usage does not count, named as the body has it: OpenAI's ``web_search_options``
    and search models (``gpt-4o-search-preview``), Qwen's ``enable_search`` (at the top level or
    in ``parameters``), Gemini's Google Search tool (in ``tools`` or
    ``extra_body.google.tools``); ``None`` when nothing does. Grok's ``search_parameters`` and
    Anthropic's web search tool are not: their replies count the sources and searches. Nor is
    a Claude model's ``web_search_options``: a gateway's Claude searches by tool calls, whose
    results are prompt tokens, and bills no fee a request; a web search its reply reports is
    priced per search.

    One set test and the model's name for a body that asks for none: it runs once per billed
    reply (a body with a forced function's ``tools``: about 0.5 µs)."""
    model = body.get("model")
    name = model.lower() if isinstance(model, str) else ""
    if "-search" in name:
        return f"model {model}"
    if _SEARCH_FIELDS.isdisjoint(body):
        return None
    if body.get("web_search_options") is not None and "claude" not in name:
        return "web_search_options"
    if body.get("enable_search") is True:
        return "enable_search"
    params = body.get("parameters")
    if isinstance(params, dict) and params.get("enable_search") is True:
        return "parameters.enable_search"
    gemini = gemini_named(name)
    tools = body.get("tools")
    if tools and (found := _google_search(tools, gemini)) is not None:
        return f"tools: {found}"
    extra = body.get("extra_body")
    if extra and isinstance(extra, dict):
        google = extra.get("google")
        if isinstance(google, dict) and (found := _google_search(google.get("tools"), True)):
            return f"extra_body.google.tools: {found}"
    return None


def live_search_asked(body: Mapping[str, Any]) -> bool:
    """Whether a request ``body`` asks for Grok's live search: ``search_parameters`` in mode
    ``"on"`` or ``"auto"`` (xAI's default, when it names none). Its reply counts the sources
    it used, billed at the job's ``search_unit`` only."""
    params = body.get("search_parameters")
    return isinstance(params, Mapping) and params.get("mode", "auto") in ("on", "auto")


def _google_search(tools: object, gemini: bool) -> str | None:
    """The Google Search tool among ``tools``, as named there: a tool of that type, a
    ``{"googleSearch": {}}`` entry, or, for a Gemini model (``gemini``), a function so named,
    as gateways take it. For another model such a function is the job's own (a tool the
    model calls and the job runs), no search anyone bills."""
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if isinstance(kind, str) and kind.lower() in _GOOGLE_SEARCH:
            return kind
        if kind == "function":
            function = tool.get("function")
            if gemini and isinstance(function, dict):
                name = function.get("name")
                if isinstance(name, str) and name.lower() in _GOOGLE_SEARCH:
                    return name
            continue
        for key in tool:
            if isinstance(key, str) and key.lower() in _GOOGLE_SEARCH:
                return key
    return None


def _library() -> ModuleType:
    """The genai-prices module, imported on first use: it costs about 0.2 s of CPU, which a
    command that prices nothing (``status``, a refused job) should not pay."""
    import genai_prices

    return genai_prices


def preload() -> None:
    """Import genai-prices in a background thread, while a run's first requests are out; not
    when the disk cache holds today's answers of the installed library (a model it lacks is
    then looked up when first priced).

    Not a daemon thread: interpreter exit waits for the import to finish rather than cut it."""
    if "genai_prices" not in sys.modules and _read_answers().version is None:
        threading.Thread(target=_library, name="batchrunner-preload-prices").start()


def _toml_key(name: object) -> str:
    s = str(name)
    return s if re.fullmatch(r"[A-Za-z0-9_-]+", s) else '"' + s.replace('"', '\\"') + '"'


def _library_price(model: str, tier: str | None = None) -> tuple[ModelPrice, str] | None:
    """Ask ``genai-prices`` for ``model`` (answered at service tier ``tier``, when given); try
    the gateway spellings it does not match itself.
    A distilled model (DeepSeek-R1-Distill-Qwen-7B, or DeepSeek-R1-0528-Qwen3-8B, which does not
    say so) takes only a distill's price, never that of the model it was distilled from (the
    library matches both to deepseek-reasoner)."""
    lower = model.lower()
    distill = ("distill" if "distill" in lower
               else None if (base := _DISTILLED.search(lower)) is None else base[1])
    for ref, provider_id in _candidates(model):
        found = _library_lookup(ref, provider_id, tier)
        if found is not None and (distill is None or distill in found[1].lower()):
            return found
    return None


def _candidates(model: str) -> list[tuple[str, str | None]]:
    """(model_ref, provider_id) pairs to try, most specific first, without duplicates.

    ``provider/model`` names are tried as OpenRouter ids (that is their namespace), then as
    ``model`` at ``provider``, then as ``model`` at whichever provider the library picks.
    A thinking-mode suffix is dropped only after the full name failed. A local model's tag
    (``_LOCAL_TAG``) has none: it has no API's price.
    """
    name = model.strip()
    if _LOCAL_TAG.match(name):
        return []
    out: list[tuple[str, str | None]] = []
    for n in (name, _GATEWAY_SUFFIX.sub("", name)):
        out.append((n, None))
        provider, _, rest = n.partition("/")
        if rest:
            out += [(n, "openrouter"), (rest, provider), (rest, None)]
    unique: list[tuple[str, str | None]] = []
    for c in out:
        if c[0] and c not in unique:
            unique.append(c)
    return unique


def _library_entry(model: str, tier: str | None = None) -> tuple[ModelPrice, str] | None:
    """``genai-prices``' price for ``model`` (at service tier ``tier``, when given) and its
    source, as the cache keeps them."""
    found = _library_price(model, tier)
    if found is None:
        return None
    return found[0], f"{LIBRARY_NAME} {_library().__version__} ({found[1]})"


def _library_window(model: str) -> int | None:
    """The context window ``genai-prices`` gives for ``model``, if any."""
    genai_prices = _library()
    for ref, provider_id in _candidates(model):
        try:
            calc = genai_prices.calc_price(
                genai_prices.Usage(input_tokens=1, output_tokens=1), ref, provider_id=provider_id
            )
        except Exception:
            continue
        cw = calc.model.context_window
        return cw if isinstance(cw, int) and cw > 0 else None
    return None


def _library_lookup(ref: str, provider_id: str | None, tier: str | None = None
                    ) -> tuple[ModelPrice, str] | None:
    genai_prices = _library()
    # The price of a service tier is a price variant of the model's (pyproject asks for 0.2 or
    # later, the first to take price_context); a tier with no variant is priced as the model.
    context = None if tier is None else {"service_tier": tier}
    try:
        calc = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1, output_tokens=1), ref, provider_id=provider_id,
            **({} if context is None else {"price_context": context}),
        )
    except Exception:  # LookupError for an unknown name; anything else the library raises
        return None  # means the same to us: no usable price.
    model_info = calc.model
    # Find the highest price listed for today (time-of-day windows), with the date-dependent
    # price in force today.
    today = datetime.now(UTC).date()
    best: _LibraryRates | None = None
    best_price: object = None
    for t in _DAY_SAMPLES:
        ts = datetime.combine(today, t, tzinfo=UTC)
        try:
            mp = (model_info.get_prices(ts) if context is None
                  else model_info.get_prices(ts, context))
        except Exception:
            mp = calc.model_price
        rates = _rates_of(mp)
        if rates is not None and (best is None or rates[0] + rates[1] > best[0] + best[1]):
            best, best_price = rates, mp
    if best is None:
        return None
    # Anthropic's web search is the one whose searches the usage counts (its own field)
    searches = calc.provider.id == _WEB_SEARCH_PROVIDER
    # Each start any of its prices is tiered at, with every price at the tier in force past it
    tiers = tuple((start, _library_model_price(over, searches))
                  for start in _tier_starts(best_price)
                  if (over := _rates_of(best_price, start)) is not None)
    price = replace(_library_model_price(best, searches), tiers=tiers)
    return price, f"{calc.provider.id}/{model_info.id}"


def _library_model_price(rates: _LibraryRates, searches: bool) -> ModelPrice:
    """A ``ModelPrice`` of a library price's rates; its web search price where ``searches``."""
    return ModelPrice(input=rates[0], output=rates[1], cached_input=rates[2],
                      web_search=rates[3] if searches else None, cache_write=rates[4],
                      cache_write_1h=rates[5], input_audio=rates[6], output_audio=rates[7])


def _tier_starts(mp: object) -> list[int]:
    """The starts of a library price's tiers, of any of its prices, ascending."""
    starts: set[int] = set()
    for value in getattr(mp, "__dict__", {}).values():
        for tier in getattr(value, "tiers", None) or ():
            if type(start := getattr(tier, "start", None)) is int:
                starts.add(start)
    return sorted(starts)


# (input, output, cached input, web search, cache write, 1-hour cache write, input audio, output
# audio) of a library price: USD per 1M tokens, a web search's in USD a search.
_LibraryRates = tuple[float, float, float | None, float | None, float | None, float | None,
                      float | None, float | None]


def _rates_of(mp: object, past: int | None = None) -> _LibraryRates | None:
    """The rates of a library price object (``_LibraryRates``), of a prompt past ``past``
    tokens (``None``: the base rates); ``None`` if not token-priced."""
    base = partial(_base, past=past)
    inp = base(getattr(mp, "input_mtok", None))
    out = base(getattr(mp, "output_mtok", None))
    if inp is None or out is None:
        return None
    per_k = base(getattr(mp, "web_searches_kcount", None))
    return (inp, out, base(getattr(mp, "cache_read_mtok", None)),
            None if per_k is None else per_k / 1000,
            base(getattr(mp, "cache_write_mtok", None)),
            base(getattr(mp, "cache_write_1h_mtok", None)),
            base(getattr(mp, "input_audio_mtok", None)),
            base(getattr(mp, "output_audio_mtok", None)))


def _base(value: object, past: int | None = None) -> float | None:
    """A library price as float: a plain price, or of a tiered price the rate of a prompt past
    ``past`` tokens: its last tier starting at or below it (the library's tier applies over its
    start), else (or ``past=None``) its base."""
    if isinstance(value, Decimal | int | float) and not isinstance(value, bool):
        return float(value)
    rate = getattr(value, "base", None)  # tiered price: the rate below the first tier
    if past is not None:
        for tier in getattr(value, "tiers", None) or ():
            start = getattr(tier, "start", None)
            if type(start) is int and start <= past:
                rate = getattr(tier, "price", None)
    if isinstance(rate, Decimal | int | float) and not isinstance(rate, bool):
        return float(rate)
    return None


# ---------------------------------------------------------------------------------------------
# The disk cache of the library's answers


@dataclass(slots=True)
class _Answers:
    """What the library answered, for one library stamp and one UTC day. ``prices`` maps a model
    name as asked to its price and source, ``None`` when unknown; ``windows`` to its context
    window. ``version`` is the library's, ``None`` until it is known (a file read back always has
    one). ``stamp=None``: the library was not found, nothing is read or written."""

    stamp: list[Any] | None
    day: str
    version: str | None = None
    prices: dict[str, tuple[ModelPrice, str] | None] = field(default_factory=dict)
    windows: dict[str, int | None] = field(default_factory=dict)


def _cache_path() -> str | None:
    """``prices.json`` in ``$BATCHRUNNER_CACHE_DIR``, else ``$XDG_CACHE_HOME/batchrunner``, else
    ``~/.cache/batchrunner``; ``None`` when there is no home directory to put it in."""
    directory = cache_dir()
    return None if directory is None else os.path.join(directory, _CACHE_FILE)


def _today() -> str:
    """The UTC day the library's answers hold for (prices change by date)."""
    return datetime.now(UTC).date().isoformat()


def _library_stamp() -> list[Any] | None:
    """What the library's answers depend on, found without importing it (0.1-0.2 ms): the
    installed version (its ``.dist-info`` directory), the size and mtime of its data module, and
    the size and mtime of this module, which turns answers into prices. ``None`` when the
    library or its data module is not found."""
    try:
        spec = importlib.util.find_spec("genai_prices")
        if spec is None or spec.origin is None:
            return None
        package = os.path.dirname(spec.origin)
        data = os.stat(os.path.join(package, "data.py"))
        dists = sorted(
            name
            for name in os.listdir(os.path.dirname(package))
            if name.startswith("genai_prices-") and name.endswith(".dist-info")
        )
        own = os.stat(__file__)
    except (ImportError, ValueError, OSError):
        return None
    return [dists, data.st_size, data.st_mtime_ns, own.st_size, own.st_mtime_ns]


def _read_answers() -> _Answers:
    """The disk cache if it holds today's answers of the installed library, else empty answers."""
    answers = _Answers(_library_stamp(), _today())
    path = _cache_path()
    if answers.stamp is None or path is None:
        return answers
    return _read_file(path, answers.stamp, answers.day) or answers


def _read_file(path: str, stamp: list[Any], day: str) -> _Answers | None:
    """The answers in ``path`` if it is a well-formed cache for ``stamp`` and ``day``."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):  # missing, unreadable, not JSON, not UTF-8
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != _CACHE_FORMAT
        or doc.get("stamp") != stamp
        or doc.get("day") != day
        or not isinstance(doc.get("version"), str)
        or not isinstance(doc.get("prices"), dict)
        or not isinstance(doc.get("windows"), dict)
    ):
        return None
    answers = _Answers(stamp, day, doc["version"])
    for model, entry in doc["prices"].items():
        if entry is None:
            answers.prices[model] = None
            continue
        if not isinstance(entry, dict) or set(entry) != {*_CACHED_KEYS, "source", "tiers"}:
            return None
        price, source, tiers = _cached_price(entry), entry["source"], entry["tiers"]
        if price is None or not isinstance(source, str) or not isinstance(tiers, list):
            return None
        over: list[tuple[int, ModelPrice]] = []
        for tier in tiers:
            if not (isinstance(tier, list) and len(tier) == 2 and type(tier[0]) is int
                    and tier[0] >= 0 and isinstance(tier[1], dict)
                    and set(tier[1]) == set(_CACHED_KEYS)
                    and (at := _cached_price(tier[1])) is not None
                    and (not over or over[-1][0] < tier[0])):
                return None
            over.append((tier[0], at))
        answers.prices[model] = replace(price, tiers=tuple(over)), source
    for model, window in doc["windows"].items():
        if window is not None and (type(window) is not int or window <= 0):
            return None
        answers.windows[model] = window
    return answers


def _cached_price(entry: Mapping[str, Any]) -> ModelPrice | None:
    """The price of a cache entry's ``_CACHED_KEYS``, if each is a rate (the cached ones, the
    cache writes, the audio ones and the web search's may be ``None``)."""
    rates = [entry[k] for k in _CACHED_KEYS]
    if (not all(_is_rate(v) for v in rates[:2])
            or not all(v is None or _is_rate(v) for v in rates[2:])):
        return None
    return ModelPrice(input=rates[0], output=rates[1], cached_input=rates[2],
                      cache_write=rates[3], cache_write_1h=rates[4], input_audio=rates[5],
                      output_audio=rates[6], web_search=rates[7])


def _cache_entry(price: ModelPrice) -> dict[str, float | None]:
    """A price's ``_CACHED_KEYS`` as the cache writes them."""
    return {key: getattr(price, key) for key in _CACHED_KEYS}


def _is_rate(value: object) -> bool:
    """A price as the cache writes it: a finite float >= 0."""
    return type(value) is float and math.isfinite(value) and value >= 0


def _write_answers(answers: _Answers) -> None:
    """Write ``answers`` to the disk cache, with what another run wrote there meanwhile for the
    same library and day; atomically (temporary file, then rename). Failures are ignored: the
    cache only saves time. Nothing is written once the day has changed since ``answers`` were
    read: the new answer may then be for either day."""
    path = _cache_path()
    if answers.stamp is None or path is None or answers.version is None:
        return
    if answers.day != _today():
        return
    other = _read_file(path, answers.stamp, answers.day)
    if other is not None:
        for model, entry in other.prices.items():
            answers.prices.setdefault(model, entry)
        for model, window in other.windows.items():
            answers.windows.setdefault(model, window)
    doc = {
        "format": _CACHE_FORMAT,
        "stamp": answers.stamp,
        "day": answers.day,
        "version": answers.version,
        "prices": {
            model: None
            if entry is None
            else {
                **_cache_entry(entry[0]),
                "source": entry[1],
                "tiers": [[start, _cache_entry(over)] for start, over in entry[0].tiers],
            }
            for model, entry in answers.prices.items()
        },
        "windows": answers.windows,
    }
    temp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(temp, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, allow_nan=False))
        os.replace(temp, path)
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            os.remove(temp)
