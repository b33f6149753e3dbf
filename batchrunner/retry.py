"""Retry policy: which failures are worth another attempt, and how long to wait first.

Pure functions, no I/O. ``backoff`` is exponential with full jitter (a uniform draw between 0
and ``min(cap, base * 2**attempt)``); a server's ``retry-after`` replaces the draw when it is
longer. ``RetryPolicy(base_s=0)`` zeroes every computed wait, for tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["NEVER_SERVED_STATUSES", "RETRYABLE_STATUSES", "RetryPolicy", "backoff",
           "is_retryable_status"]

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
# 5xx that say the request can never be served as sent: 501 Not Implemented (a web server that
# takes no POST at the URL, a static file server), 505 HTTP Version Not Supported.
NEVER_SERVED_STATUSES = frozenset({501, 505})


def is_retryable_status(status: int) -> bool:
    """429, 408, 409 and every 5xx but 501 and 505 are transient; other 4xx (400, 404, 422
    ...) are not."""
    return status in RETRYABLE_STATUSES or (status >= 500
                                            and status not in NEVER_SERVED_STATUSES)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    max_retry_after_s: float = 120.0


def backoff(
    attempt: int,
    policy: RetryPolicy,
    retry_after: float | None = None,
    rng: random.Random | None = None,
    cap_s: float | None = None,
) -> float:
    """Seconds to wait before attempt number ``attempt + 1`` (``attempt`` counts from 1);
    ``cap_s``: a cap of this wait's own, where it is lower than the policy's."""
    ceiling = min(policy.cap_s, policy.base_s * 2 ** (attempt - 1))
    if cap_s is not None and cap_s < ceiling:
        ceiling = cap_s
    wait = (rng or random).uniform(0.0, ceiling) if ceiling > 0 else 0.0
    if retry_after is not None and retry_after > wait:
        wait = min(retry_after, policy.max_retry_after_s)
    return wait
