"""Every exception batchrunner raises on purpose.

    BatchrunnerError                  base class; ``str(e)`` is one line a user can act on
    ├── UsageError                    bad job file, option, input or output directory (exit 2)
    │   ├── ConfigError               the job's settings
    │   └── InputError                the input file or its rows
    ├── JournalError                  the output directory's journal cannot be trusted
    ├── OutputError                   results, reports or the journal cannot be written (exit 1)
    ├── StopJob                       the whole job must stop now, resumable (exit 4)
    │   ├── AuthError                 401/403: the key is wrong or lacks access
    │   ├── QuotaError                402, 429 insufficient_quota: the account is out of credit
    │   │                             (or 429s asking to wait past what the job waits)
    │   ├── AccountError              the account cannot use the API: billing off, region not served
    │   ├── BudgetExceeded            the next request could pass max_cost_usd
    │   ├── Unreachable               no connection to the endpoint through a row's retries
    │   ├── AllFailing                the run's first rows all failed the same way, none ok
    │   ├── SettingRefused            a setting of every row refused: a model not served, ...
    │   ├── EndpointChanged           batchrunner simulate answers at the URL, and then not (or
    │   │                             the other way round): the answers would mix
    │   └── Interrupted               Ctrl-C, SIGTERM or SIGHUP
    └── RequestError                  one request failed; carries ``error_type`` and retryability
        ├── HTTPStatusError           a non-2xx answer
        ├── TransportError            connection refused/reset, timeout, a cut stream
        └── BadResponseError          a 2xx whose body is not a usable completion (or an error)

Messages never contain the API key: the client builds them from the status, the error body's
``message`` and the exception class, and ``redact`` scrubs anything that slips through.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AccountError",
    "AllFailing",
    "AuthError",
    "BadResponseError",
    "BatchrunnerError",
    "BudgetExceeded",
    "ConfigError",
    "EndpointChanged",
    "HTTPStatusError",
    "InputError",
    "Interrupted",
    "JournalError",
    "OutputBusy",
    "OutputError",
    "QuotaError",
    "RequestError",
    "SettingRefused",
    "StopJob",
    "TransportError",
    "Unreachable",
    "Usage",
    "UsageError",
    "leaf",
]


# (prompt, completion, total, cached, reasoning) tokens of a reply, as the client reads them,
# then its search units: web searches (Anthropic's ``server_tool_use.web_search_requests``) and
# sources (Grok's live search, ``num_sources_used``), then the tokens written to the prompt
# cache and those of them kept an hour (Anthropic's), then the audio tokens of the prompt and of
# the completion (``*_tokens_details.audio_tokens``: billed at the audio prices), each None when
# the reply did not say (the audio ones when it said 0, too).
Usage = tuple[int | None, int | None, int | None, int | None, int | None, int | None, int | None,
              int | None, int | None, int | None, int | None]


class BatchrunnerError(Exception):
    """Base class of batchrunner's own errors."""


class UsageError(BatchrunnerError):
    """The user must fix something before anything is sent (exit 2)."""


class ConfigError(UsageError):
    """A job setting is missing, unknown or out of range."""


class InputError(UsageError):
    """The input file cannot be read, or a row cannot be turned into a request."""


class JournalError(BatchrunnerError):
    """The journal in the output directory is damaged or belongs to another job."""


class OutputBusy(BatchrunnerError):
    """Another run holds the output directory: nothing was done; run again once it ends
    (exit 5)."""


class OutputError(BatchrunnerError):
    """Writing the journal, results or reports failed (a full disk, say) after the run began.
    ``errno``: the system's error number of the write that failed, where one did (``ENOSPC``: a
    full disk). ``summary``: when it stopped a run, that run's summary (a ``runner.RunSummary``:
    rows done, cost, what is saved and the command that resumes), which the command line prints
    before the error's line."""

    errno: int | None = None
    summary: Any = None


class StopJob(BatchrunnerError):
    """Stop the whole job now; what is finished stays recorded and a rerun resumes (exit 4).
    ``summary``: where it ended a run without its results (its input changed meanwhile), that
    run's summary (a ``runner.RunSummary``), which the command line prints before its line."""

    summary: Any = None


class AuthError(StopJob):
    """The endpoint refused the key (401/403; ``status``, when an HTTP status said so).
    ``model_access``: a 403 that may be about the model asked for only (the key lacks access
    to it), not about the key or the account as a whole."""

    def __init__(self, message: str, *, status: int | None = None,
                 model_access: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.model_access = model_access


class QuotaError(StopJob):
    """The account has no quota or balance left (402, 429 insufficient_quota), or 429s ask for
    a longer wait than the job waits (a daily limit)."""


class AccountError(StopJob):
    """The account or project cannot use the API as it stands: billing not enabled, a region
    the API does not serve (Google's ``FAILED_PRECONDITION``)."""


class BudgetExceeded(StopJob):
    """Sending more could pass the job's ``max_cost_usd``. ``price_missing``: the budget
    cannot be kept, as a model (or its search) has no price: the job needs one, not a larger
    budget. ``held_usd``: what the requests in flight could be held against it at their most,
    which a larger budget needs room for beside the spend."""

    def __init__(self, message: str, *, price_missing: bool = False,
                 held_usd: float = 0.0) -> None:
        super().__init__(message)
        self.price_missing = price_missing
        self.held_usd = held_usd


class Unreachable(StopJob):
    """A row's every attempt failed to connect and nothing answered meanwhile: a wrong URL, no
    network, a proxy down; or, after the endpoint answered, nothing but refusals and a
    gateway's 502/503/504 for ``outage_s``. Every other row would fail the same way."""


class AllFailing(StopJob):
    """The run's first rows all failed with one error type and none succeeded: a setting of
    the job (a parameter the model rejects, a wrong model or path), not the rows.
    ``endpoint_down``: the error is the endpoint's (a server error on every try), nothing in
    the job to fix: the rerun waits for it to recover."""

    def __init__(self, message: str, *, endpoint_down: bool = False) -> None:
        super().__init__(message)
        self.endpoint_down = endpoint_down


class SettingRefused(StopJob):
    """The endpoint refused what every row of the job asks alike (a model it does not serve,
    a ``max_tokens`` past the model's context), stopped at its first answer with no row
    failed for it: fixed in the job, a rerun sends them all."""


class EndpointChanged(StopJob):
    """A completion says another kind of endpoint serves the URL than the completions before
    it, or than the job's rows done were answered by: batchrunner simulate, or not
    (``simulator``, what it says now). It is not kept: its row is left to do, and the same
    command stops again while that endpoint serves the URL. An error answer tells no kind
    (a proxy's 502 page is neither's)."""

    def __init__(self, message: str, *, simulator: bool, answer: Any = None) -> None:
        super().__init__(message)
        self.simulator = simulator
        self.answer = answer  # the completion not kept (a ChatResult), for what it cost


class Interrupted(StopJob):
    """The user or the system asked the run to stop; ``cause``, where given, says who and
    when, without what to do ("interrupted by SIGTERM"), for a message that says both."""

    def __init__(self, message: str, *, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause


class RequestError(BatchrunnerError):
    """One request failed.

    ``error_type`` is a short stable name recorded in the row (``http_500``, ``rate_limited``,
    ``timeout``, ``connection_reset``, ``invalid_body`` ...). ``retryable`` says whether another
    attempt may succeed; ``retry_after`` is the server's wait hint in seconds, if any.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        self.request_id = request_id
        self.headers = headers or {}  # the x-ratelimit-* headers of the answer, if any
        # The usage of an answer that reported one although it was not a usable completion:
        # what the attempt was billed for.
        self.usage = usage
        # A stream that failed once its answer had begun (it carried some of the answer: text,
        # reasoning, a tool call): the endpoint answers (a timeout's only not in the time
        # given), and the try was billed, for what its usage says or, without one, unknown.
        self.answer_begun = False
        # A 404 (or a gateway's 503) naming a model the endpoint's /models does not list
        # (vLLM serving another name, a name mistyped): no request asking it can be answered.
        self.model_not_served = False
        # The HTTP status a 200's error body stands for (its code, or its error words), if any.
        self.said_status: int | None = None

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


class HTTPStatusError(RequestError):
    """The endpoint answered with a non-2xx status."""


class TransportError(RequestError):
    """The request did not complete: refused, reset, timed out, or a stream cut short."""


class BadResponseError(RequestError):
    """A 2xx answer whose body is not a usable chat completion."""


def leaf(e: BaseException) -> BaseException:
    """The first error inside an exception group (a task group wraps what its tasks raise)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e
