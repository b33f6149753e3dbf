"""Request and token rate limiting.

``Limiter`` is the interface the runner uses: ``acquire(tokens)`` before a request, ``settle``
when its usage is known, ``pause`` after a 429. Requests are paced by aiolimiter's leaky bucket
(capacity one second's worth, so a run starts at a burst the server accepts rather than a
minute's worth at once); tokens by ``TokenBucket``, which lets a request bigger than the bucket
through by going into debt, so the long-run rate is exact whatever the request sizes.
"""

from __future__ import annotations

import random
import time

import anyio
from aiolimiter import AsyncLimiter

__all__ = ["Limiter", "TokenBucket"]


class TokenBucket:
    """Continuously refilled bucket of ``rate`` units a second, holding at most ``capacity``."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self._t = time.monotonic()
        self._lock = anyio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    async def acquire(self, n: float) -> None:
        async with self._lock:  # first come, first served
            need = min(n, self.capacity)
            while True:
                self._refill()
                if self.level >= need:
                    self.level -= n
                    return
                await anyio.sleep((need - self.level) / self.rate)

    def refund(self, n: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + n)


class Limiter:
    """Paces requests to ``requests_per_minute`` and tokens to ``tokens_per_minute``.

    ``None`` switches a limit off.
    """

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self._requests: AsyncLimiter | None = None
        if requests_per_minute:
            per_s = requests_per_minute / 60.0
            burst = max(1.0, per_s)
            self._requests = AsyncLimiter(burst, burst / per_s)
        self._tokens: TokenBucket | None = None
        if tokens_per_minute:
            per_s = tokens_per_minute / 60.0
            self._tokens = TokenBucket(per_s, max(1.0, per_s))
        self._paused_until = 0.0
        self._rng = random.Random()

    async def acquire(self, tokens: int) -> None:
        while (wait := self._paused_until - time.monotonic()) > 0:  # noqa: ASYNC110
            await anyio.sleep(wait)
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None:
            await self._tokens.acquire(tokens)

    def settle(self, charged: int, used: int | None) -> None:
        """Give back what a request was charged and did not use."""
        if self._tokens is not None and used is not None and used < charged:
            self._tokens.refund(charged - used)

    def pause(self, seconds: float) -> None:
        """Hold every new request for ``seconds`` (plus a little jitter), e.g. after a 429."""
        until = time.monotonic() + seconds + self._rng.uniform(0.0, 0.1 + seconds * 0.1)
        self._paused_until = max(self._paused_until, until)
