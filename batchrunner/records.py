"""The per-row outcome record: what the journal stores and the results file shows.

One ``Outcome`` per finished row. ``OUTCOME_SCHEMA`` is its Arrow schema, shared by the journal
segments, the results file (after the input columns) and the reports. ``ADDED_COLUMNS`` are the
columns journals written before them lack; reading fills them with nulls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import pyarrow as pa

__all__ = ["ADDED_COLUMNS", "AUDIO_COLUMNS", "JOURNAL_ONLY", "OUTCOME_COLUMNS", "OUTCOME_SCHEMA",
           "REPEATED_COLUMNS", "RETRYING", "Outcome"]

# The status of a journal record that is no outcome: an attempt of a row still to do was billed
# (a reply with usage but no usable answer) and the row is to be sent again. It keeps what the
# row's billed attempts cost (``earlier_cost_usd``) should the job stop before the row's
# outcome comes; it ranks below any ``ok`` or ``failed`` record of its row, and a row whose
# latest record is one is a row to do (its results ``status`` null).
RETRYING = "retrying"


@dataclass(slots=True)
class Outcome:
    """What happened to one row. Token counts are ``None`` when the server did not say."""

    key: str
    # "ok" | "failed"; in the journal also RETRYING: no outcome, what billed attempts of a row
    # still to do cost (earlier_cost_usd, with attempts, rate_limited, model, priced_as,
    # finished_at, row_hash, unknown_tries and unreported_usd; the other fields None).
    status: str
    content: str | None = None
    reasoning_content: str | None = None
    choices: str | None = None  # with n > 1: every choice, as JSON text
    # The reply's tool calls as JSON text, in the API's shape ([{"id", "type", "function":
    # {"name", "arguments"}}]); None when it made none.
    tool_calls: str | None = None
    # Search citations as JSON text ([{"url", "title", "start_index", "end_index"}]); None
    # when the reply cited nothing.
    citations: str | None = None
    # The log probabilities of the answer's tokens, as JSON text: the API's
    # ``logprobs.content`` of choice 0 ([{"token", "logprob", "bytes", "top_logprobs"}]), or a
    # refusal's ``logprobs.refusal``; those of every choice are in ``choices``. None when the
    # request did not ask for them.
    logprobs: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    # Of prompt_tokens, those written to the prompt cache (Anthropic's
    # ``cache_creation_input_tokens``), billed above the input price.
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    # Search billed apart from tokens, as the reply's usage counted it: Grok's live search
    # sources (``num_sources_used``) or Anthropic's web searches
    # (``server_tool_use.web_search_requests``); None when the reply did not say.
    search_units: int | None = None
    # Search billed per request that the reply's usage does not count (OpenAI's search models and
    # web_search_options, Gemini's Google Search tool, Qwen's enable_search:
    # ``pricing.search_requested``): 1 when the row's billed request asked for it, else None.
    search_requests: int | None = None
    cost_usd: float | None = None
    # What the row's earlier attempts that were paid for cost: a reply billed and then sent
    # again, in this run (a 200 without a usable answer) or by a later run's --retry-failed or
    # --rerun-where. Not part of cost_usd; None when there were none.
    earlier_cost_usd: float | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    attempts: int = 0
    rate_limited: int = 0
    error_type: str | None = None
    error_message: str | None = None
    model: str | None = None
    # The model whose price the row's cost is at: the model asked for, or the one a gateway
    # routed it to (the model that answered, when its price is known and its name is not one
    # of the model asked for: a dated snapshot, a gateway's spelling). Null in records
    # written before it (priced as ``model``).
    priced_as: str | None = None
    request_id: str | None = None
    finished_at: float = 0.0
    # A CRC-32 of the row's values that make its request (``runner.row_hasher``), to tell at a
    # rerun a row whose text changed since it was answered. In the journal only.
    row_hash: int | None = None
    # The row's tries that may have been billed at a cost not known, the one whose usage the
    # record holds not among them: a try that got no whole answer and no usage (timed out once
    # sent, its connection broken, its body or stream cut) and one billed with no price (search
    # without one) that was retried. An error status (a 429, a 503) is not billed and counts
    # none. In the journal only; null in records written before it.
    unknown_tries: int = 0
    # What the row's tries that got no whole answer and no usage (of ``unknown_tries``), and a
    # reply without usage, may have
    # cost, estimated as the budget holds a request (its prompt and max_tokens at its price),
    # this run's and earlier runs': the reports' cost leaves them out (they report what servers
    # reported), the budget counts them. None when there were none, or no price to estimate at.
    unreported_usd: float | None = None
    # The choices (``n``) the row's request asked for, when its body set ``n`` (a job's
    # [request.extra], a column's, a batch file's row's); None when it did not (one). In the
    # journal only; null in records written before it (the job's ``n``).
    choices_asked: int | None = None
    # The service tier the row's reply was priced at: the one it says answered it (OpenAI's
    # ``service_tier``: default, flex, priority), else the one its request asked for; None for
    # neither. Null in records written before it.
    service_tier: str | None = None
    # Of prompt_tokens and completion_tokens, the audio tokens (an ``input_audio`` part; a
    # spoken answer, ``modalities`` with ``audio``: ``*_tokens_details.audio_tokens``), billed
    # at the model's audio prices; None for none. Null in records written before them; in the
    # results only when some row has them.
    audio_prompt_tokens: int | None = None
    audio_completion_tokens: int | None = None
    # When the row was last tried, where later than ``finished_at``: a compacted journal keeps
    # a row's ok record over a newer failure (a rerun that failed keeps the answer), and this
    # the failure's time, which a --retry-failed or --rerun-where that goes on reads. In the
    # journal only; None where the record is the row's newest outcome.
    tried_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


OUTCOME_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("content", pa.string()),
        ("reasoning_content", pa.string()),
        ("choices", pa.string()),
        ("tool_calls", pa.string()),
        ("citations", pa.string()),
        ("logprobs", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("cache_write_tokens", pa.int64()),
        ("reasoning_tokens", pa.int64()),
        ("search_units", pa.int64()),
        ("search_requests", pa.int64()),
        ("cost_usd", pa.float64()),
        ("earlier_cost_usd", pa.float64()),
        ("latency_ms", pa.float64()),
        ("ttft_ms", pa.float64()),
        ("attempts", pa.int64()),
        ("rate_limited", pa.int64()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("model", pa.string()),
        ("priced_as", pa.string()),
        ("request_id", pa.string()),
        ("finished_at", pa.float64()),
        ("row_hash", pa.int64()),
        ("unknown_tries", pa.int64()),
        ("unreported_usd", pa.float64()),
        ("choices_asked", pa.int64()),
        ("service_tier", pa.string()),
        ("audio_prompt_tokens", pa.int64()),
        ("audio_completion_tokens", pa.int64()),
        ("tried_at", pa.float64()),
    ]
)

OUTCOME_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Outcome))
# The audio token counts: shown in the results only when some record has them.
AUDIO_COLUMNS: tuple[str, ...] = ("audio_prompt_tokens", "audio_completion_tokens")
assert tuple(OUTCOME_SCHEMA.names) == OUTCOME_COLUMNS

ADDED_COLUMNS: frozenset[str] = frozenset({"earlier_cost_usd", "tool_calls", "citations",
                                           "row_hash", "search_units", "search_requests",
                                           "cache_write_tokens", "unknown_tries",
                                           "priced_as", "unreported_usd", "logprobs",
                                           "choices_asked", "service_tier",
                                           "tried_at", *AUDIO_COLUMNS})

# The outcome columns the journal keeps for itself: not shown in the results.
JOURNAL_ONLY: frozenset[str] = frozenset({"row_hash", "unknown_tries", "unreported_usd",
                                          "choices_asked", "tried_at"})

# The outcome columns whose values repeat from row to row, the ones Parquet files
# dictionary-encode. For text that is unique a row (answers, keys, request ids) a dictionary is
# built, found too big and dropped: a third of the time a segment takes to write, for nothing.
REPEATED_COLUMNS: tuple[str, ...] = ("status", "finish_reason", "error_type", "model",
                                     "priced_as", "service_tier")
