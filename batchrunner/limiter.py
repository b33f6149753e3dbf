"""Request and token pacing that fills the rate limit without storming it.

``Limiter`` is the interface the runner uses (a cluster-wide limiter can implement the same):

* ``acquire(tokens)`` before each request: waits for a pause to end, for a request permit and
  for ``tokens`` from the token budget. Both budgets queue requests rather than reject them.
* ``settle(charged, used)`` when the usage is known: the token charge is corrected (refunded
  when the request used less, charged more when it used more).
* ``observe(headers)`` on every response: ``x-ratelimit-limit-*`` set the rates, within the
  job's own (a limit raised mid-run is followed up to them); ``x-ratelimit-remaining-*`` at
  zero pause new sends for a moment.
* ``pause(seconds)`` after a 429: new sends wait until then (plus a little jitter), and are then
  let out at the limiter's rate, not all at once.
* ``sample(now, answered, refused)`` a few times a second, the run's counts of requests
  answered and answered 429: while no request rate is known, or only one a header says, a
  storm of 429s (a limit no header reports, or one higher than the server enforces) sets a
  pace a little under the rate answers were accepted at, raised slowly while no 429 comes
  (``guessed``), and lowered again where 429s keep coming at it, window after window (a pace
  learnt over the limit); the limit said is then followed again only once said lower.

The runner paces a job with one; a job whose models report limits of their own (OpenAI's are
per model) with one more for each model (``reported_limits`` tells them apart).

Requests and tokens are each paced by a ``TokenBucket`` holding one second's worth, so a run
starts at a burst a server accepts rather than a minute's worth at once; a request bigger than
the token bucket goes through by taking it into debt, so the long-run rate is exact whatever the
request sizes. A rate changed (a limit raised or lowered) is the bucket's, and the requests
already waiting in it wait for the new one.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime

import anyio

__all__ = ["RATELIMIT_HEADERS", "Limiter", "TokenBucket", "reported_limits", "reset_seconds"]

# The longest an empty budget holds new requests when no rate is known: a reset said to be
# further off (a daily limit's) is left to the 429s' retry-after, which stop the job if it is.
MAX_RESET_WAIT_S = 60.0
# A minute's limit is whole again within a minute: a reset said to be further off than this
# (a second's rounding and a slow answer's allowed) says the limit is over a longer period,
# no rate a minute (Groq's x-ratelimit-limit-requests is a day's, reset in "2m59.56s" when 30
# of its 14,400 are used). Such a limit paces nothing; none of it left stops the job. Read so
# of a requests limit only (see ``_over_a_minute``).
MINUTE_RESET_S = 65.0
# A limit higher than the pace is followed once the answers have said it, and nothing else, this
# long: a key's tier raised is taken within seconds, while answers that differ among themselves
# (servers behind one address, each reporting its own) keep the lower, as they did before a
# raise was followed at all (a new rate is a new bucket, with a burst of its own: following
# each answer's drew 510 429s for 200 rows from a server whose answers said 600 and 590 in turn).
RAISE_AFTER_S = 5.0
# A pace learnt from 429s, when no request rate is known (``Limiter.sample``). The rate requests
# were accepted at is measured over the last STORM_WINDOW_S, and over PACE_MIN_SPAN_S at least:
# a second or more holds a burst and the pause that follows it (measured over the half second
# of the burst alone, a 600-a-minute limit looked like 1,200), several seconds average out
# the bursts and pauses that come after.
STORM_WINDOW_S = 5.0
PACE_MIN_SPAN_S = 1.0
# A storm: over the window, at least STORM_SHARE of the requests answered were 429s, and
# STORM_COUNT at least. A server's random 429s are a few percent of its answers (2 % in the
# benchmark's faults), where a limit overrun refuses most of each burst (64 requests sent at
# a limit of 10 a second: 54); and a handful (one 429 and its twins in flight) makes no pace.
# The rate is of the time requests could be sent, less a long pause's beyond its first
# PAUSE_PACED_S: a retry-after of a second or so after each burst is part of the pace (how a
# bucket of a second's worth says its rate, however many 429s renew it), a longer one is time
# the server's bucket stood full (after a retry-after of 20 s, a window four parts pause to one
# of sending set a fifth of the rate).
PAUSE_PACED_S = 2.0
STORM_SHARE = 0.2
STORM_COUNT = 10
# The pace is set this far under the rate measured, and raised by PACE_RAISE at each sample
# (every 0.5 s: some 2 % a second) while no 429 has come for a window and requests go out at
# the pace (PACE_BINDS of it at least: it holds them back): a passing overload does not slow
# the rest of the night. A 429 at a pace so raised takes it back by PACE_BACK (about a
# window's raises), not below the storm's: kept just over the limit, every pause ended in a
# burst that drew one more 429.
PACE_UNDER = 0.9
PACE_RAISE = 1.01
PACE_BINDS = 0.8
PACE_BACK = 1.1
# The storm's pace itself over the limit (a second's ten answers accepted, measured one or two
# over: 645 a minute learnt behind a limit of 600) draws a 429 every second or so, each taking
# the pace back to where it is, and too few for a storm: a whole window at that pace with
# FLOOR_COUNT 429s, FLOOR_SHARE of its answers at least, the pace binding (PACE_BINDS of it
# accepted: not a rate too few rows asked), sets it and the storm's anew, under the rate accepted
# over the window (5-7 % of the requests were 429'd to the job's end), when FLOOR_WINDOWS such
# windows come in a row. A pace under the limit draws none but a server's random few, and those
# fill one window now and then: 2 % of the 45 answers of a window at 540 a minute are three or
# more in one window of seventeen, and lowered at each, a pace learnt at 540 behind a limit of
# 600 fell to 250-340 in an hour; two in a row come once in some 300.
FLOOR_COUNT = 3
FLOOR_SHARE = 0.03
FLOOR_WINDOWS = 2
# A 429 that asks a long pause (over PAUSE_PACED_S: a gateway's fixed 20 s) at a learnt pace
# sets it back to the storm's, and it is not raised for RAISE_HOLD_S: raised 2 % a second
# again, it was past the limit within seconds, and each 429 there held every request 20 s.
RAISE_HOLD_S = 300.0
# What a pause the rate-limit headers ask for is said to be (the progress line shows it).
_NONE_LEFT = "an x-ratelimit-remaining-* header of 0"

_NAMES = tuple((kind, f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}",
                f"x-ratelimit-reset-{kind}") for kind in ("requests", "tokens"))
#: The headers ``Limiter.observe`` reads, for the client to keep of each reply.
RATELIMIT_HEADERS = tuple(name for _, *names in _NAMES for name in names)
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

class TokenBucket:
    """Continuously refilled bucket of ``rate`` units a second, holding at most ``capacity``."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self._t = time.monotonic()
        self._lock = anyio.Lock()
        self._queued = 0
        self._queued_units = 0.0  # what those waiting in ``acquire`` are to take, together
        self._given: anyio.Event | None = None  # set when units are given back or the rate set

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    def set_rate(self, rate: float, capacity: float) -> None:
        self._refill()
        self.rate, self.capacity = rate, capacity
        self.level = min(self.level, capacity)
        # The one waiting slept for the old rate's time: it looks again (a limit raised from
        # 6 to 60,000 a minute left each request waiting its 10 s).
        self._wake()

    def can_take(self, n: float) -> bool:
        """Whether ``n`` units are there now and nobody waits before."""
        if self._queued:
            return False
        self._refill()
        return self.level >= min(n, self.capacity)

    def take(self, n: float) -> bool:
        """Take ``n`` units if they are there now and nobody waits before: True, else False
        (nothing taken)."""
        if not self.can_take(n):
            return False
        self.level -= n
        return True

    def wait_s(self, n: float) -> float:
        """Seconds until ``n`` units could be taken (0: now): those waiting in ``acquire``
        take theirs first."""
        self._refill()
        return max(0.0, (self._queued_units + min(n, self.capacity) - self.level) / self.rate)

    async def acquire(self, n: float) -> None:
        if self.take(n):  # nobody waiting, and it is there: at once
            return
        self._queued += 1
        self._queued_units += n
        try:
            async with self._lock:  # first come, first served
                while True:
                    self._refill()
                    need = min(n, self.capacity)
                    if self.level >= need:
                        self.level -= n
                        return
                    # Until refilled, or until units are given back: a request refused
                    # before the server counted it (larger than a minute's budget, say) left
                    # the next one asleep for its whole charge, 64 s a row at 30,000 a minute.
                    given = self._given = anyio.Event()
                    with anyio.move_on_after((need - self.level) / self.rate):
                        await given.wait()
        finally:
            self._queued -= 1
            self._queued_units = self._queued_units - n if self._queued else 0.0

    def open(self) -> None:
        """No pace any more: what waits in the bucket, and what comes, goes at once."""
        self.capacity = self.level = math.inf
        self._wake()

    def adjust(self, n: float) -> None:
        """Give back ``n`` units (or take ``-n`` more); the level may go negative (debt)."""
        self._refill()
        self.level = min(self.capacity, self.level + n)
        if n > 0:
            self._wake()

    def _wake(self) -> None:
        if self._given is not None:
            self._given.set()
            self._given = None


def _header_float(headers: Mapping[str, str], name: str) -> float | None:
    v = headers.get(name)
    if v is None:
        return None
    try:
        return float(v)
    except ValueError:
        return None


def _limit(headers: Mapping[str, str], name: str) -> float | None:
    """A ``x-ratelimit-limit-*`` a pace can be made of, else None: not 0, a fraction (a pace
    of one request an age), "inf" or "nan" (a concurrency of infinity crashed the run)."""
    limit = _header_float(headers, name)
    return limit if limit is not None and 1.0 <= limit < math.inf else None


def reported_limits(headers: Mapping[str, str]) -> tuple[float | None, float | None] | None:
    """The requests and tokens a minute an answer's ``x-ratelimit-limit-*`` headers give (None
    for one not given), or None when they give neither."""
    if not headers:
        return None
    limits = (_limit(headers, _NAMES[0][1]), _limit(headers, _NAMES[1][1]))
    return None if limits == (None, None) else limits


def reset_seconds(value: str | None) -> float | None:
    """Seconds until a ``x-ratelimit-reset-*`` time, as servers write it: a duration (OpenAI's
    ``6m0s``, ``20ms``, ``1h2m3.5s``), a number of seconds, a Unix time in seconds or
    milliseconds, or an RFC 3339 timestamp (Anthropic's); None if it is none of these."""
    if not value:
        return None
    text = value.strip()
    try:
        n = float(text)
    except ValueError:
        pos, total = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos and pos == len(text):
            return total
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    if not math.isfinite(n) or n < 0:
        return None
    if n >= 1e12:  # a Unix time in milliseconds
        n /= 1000.0
    if n >= 1e9:  # a Unix time (2001 on): seconds from now
        return max(0.0, n - time.time())
    return n


def _since(start: tuple[float, int, int, float], answered: int, refused: int, now: float,
           paused: float) -> tuple[int, int, float]:
    """From the sample ``start`` to ``now``: the requests answered, those refused, and the
    seconds requests could be sent in (the long pauses' held time left out)."""
    then, answered_then, refused_then, paused_then = start
    return answered - answered_then, refused - refused_then, now - then - (paused - paused_then)


def _accepted(start: tuple[float, int, int, float], end: tuple[float, int, int, float]) -> int:
    """The answers not 429s from the sample ``start`` to the sample ``end``."""
    return (end[1] - start[1]) - (end[2] - start[2])


def _over(samples: deque[tuple[float, int, int, float]], start: int) -> bool:
    """Whether ``samples[start]`` on saw 429s over two samples or more and no answer accepted,
    then answers accepted and no 429 after them (to the samples' grain): a storm that refused
    everything, then ended. One sample's 429s before the answers are a burst's, whose answers
    accepted come a latency after its 429s (a pause of a second after each burst, and a
    split model's pace behind a hidden limit came a burst or more late)."""
    first, refused = samples[start], samples[-1][2]
    refusing = 0  # the samples before the first answers accepted that saw 429s
    for i in range(start + 1, len(samples)):
        if _accepted(first, samples[i]) > 0:
            return refusing >= 2 and samples[i][2] == refused
        refusing += samples[i][2] > samples[i - 1][2]
    return True


def _storm(sends: int, refusals: int) -> bool:
    """Whether ``refusals`` 429s of ``sends`` requests are a storm (STORM_SHARE, STORM_COUNT)."""
    return refusals >= STORM_COUNT and refusals >= STORM_SHARE * sends


class Limiter:
    """Paces requests to ``requests_per_minute`` and tokens to ``tokens_per_minute``.

    ``None`` means the job set no limit: the limiter then runs free until a response tells it
    the server's limits. With ``adaptive`` off, response headers are ignored.
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        adaptive: bool = True,
        headroom: float = 1.0,
        burst: bool = True,
    ) -> None:
        self.adaptive = adaptive
        self.headroom = headroom
        self.requests_per_minute: float | None = None
        self.tokens_per_minute: float | None = None
        self._requests: TokenBucket | None = None
        self._tokens: TokenBucket | None = None
        self._paused_until = 0.0
        # Long pauses past their first PAUSE_PACED_S: the latest stretch held, and the seconds
        # of those before it (``sample`` leaves them out of a rate).
        self._held_from = self._held_until = self._held_before = 0.0
        self._raising: dict[str, tuple[float, float]] = {}  # kind: a higher limit said, since
        self._long: dict[str, float] = {}  # kind: a limit said to be over more than a minute
        self.paused_by = "a 429's retry-after"  # what asked for the pause (see ``pause``)
        self._unpaused: anyio.Event | None = None  # set when a pause is lifted (lift_pause)
        self._rng = random.Random()
        # A request pace learnt from 429s (``sample``): its bucket, and the samples measured.
        self.guessed = False
        self._guess: TokenBucket | None = None
        self._samples: deque[tuple[float, int, int, float]] = deque()
        self._storm_pace = 0.0  # the pace the latest storm set
        # A requests limit the headers said that a storm of 429s at it showed higher than the
        # server enforces: said again (or higher), it leaves the pace learnt as it is.
        self._said_over = math.inf
        self._floor_from = 0.0  # since when the pace has been the storm's
        self._floor_windows = 0  # windows in a row with the 429s of a pace over the limit
        self.storm_share = 0.0  # the share of the requests the latest storm refused
        self._refused = 0  # 429s counted at the latest sample
        # A pause over PAUSE_PACED_S asked since the latest sample that could act on it.
        self._long_asked = False
        self._raise_from = 0.0  # no raise before this (RAISE_HOLD_S)
        # A model's own limiter's requests answered (ok or 429) and answered 429, counted by
        # the runner (its ``_split``) for ``sample``; a job's limiter is sampled with the
        # run's counts.
        self.requests_sent = 0
        self.requests_refused = 0
        self._configured = (requests_per_minute, tokens_per_minute)
        # Without ``burst``, the rates' buckets start empty: a limiter made for requests
        # already going out at the server's pace (the runner's ``_split``), whose server-side
        # buckets are not full.
        self._spent = not burst
        if requests_per_minute:
            self._set_requests(requests_per_minute)
        if tokens_per_minute:
            self._set_tokens(tokens_per_minute)

    # -- rates

    def _set_requests(self, per_minute: float) -> None:
        # A rate said wins over one learnt from 429s, whose bucket (and the requests waiting
        # in it) it takes over.
        bucket = self._requests or self._guess
        self.guessed, self._guess = False, None
        self.requests_per_minute = per_minute
        self._requests = self._bucket(bucket, per_minute)

    def _set_tokens(self, per_minute: float) -> None:
        self.tokens_per_minute = per_minute
        self._tokens = self._bucket(self._tokens, per_minute)

    def _bucket(self, bucket: TokenBucket | None, per_minute: float) -> TokenBucket:
        """``bucket`` at ``per_minute``, or a new one (full, or empty without ``burst``)."""
        per_s = per_minute * self.headroom / 60.0
        if bucket is None:
            bucket = TokenBucket(per_s, max(1.0, per_s))
            if self._spent:
                bucket.level = 0.0
        else:
            bucket.set_rate(per_s, max(1.0, per_s))
        return bucket

    @property
    def paused_s(self) -> float:
        """How much longer a 429's pause holds new requests (0: none)."""
        left = self._paused_until - time.monotonic()  # read for every request: no max() call
        return left if left > 0.0 else 0.0

    @property
    def paces(self) -> bool:
        """Whether ``acquire`` may wait for a rate's permit (a rate is set or learnt)."""
        return self._requests is not None or self._tokens is not None or self._guess is not None

    @property
    def runs_free(self) -> bool:
        """Whether no pace holds requests and none was refused (a 429) over ``sample``'s
        window, a second of it at least: no limit, or one not met."""
        samples = self._samples
        return (not self.paces and len(samples) > 1 and samples[-1][2] == samples[0][2]
                and samples[-1][0] - samples[0][0] >= PACE_MIN_SPAN_S)

    def answered_freely(self, share: float = STORM_SHARE) -> bool:
        """Whether ``sample``'s window, of a second at least, saw requests answered 429 at a
        quarter of ``share`` (another model's storm's, STORM_SHARE at least) at most, and
        enough of them that at that share half a storm's count would have been: refused
        alike (a limit shared), 25 requests at a share of a fifth would have drawn 5 429s,
        8 at four fifths 6. Counted by the share, not by the requests alone (twice STORM_COUNT
        a window): the pauses a storm of the other's 429s asks of all, on a busy machine,
        held a model answered freely under that, and the job was not split."""
        samples = self._samples
        if len(samples) < 2 or samples[-1][0] - samples[0][0] < PACE_MIN_SPAN_S:
            return False
        sent, refused = samples[-1][1] - samples[0][1], samples[-1][2] - samples[0][2]
        alike = sent * max(share, STORM_SHARE)  # its 429s, were they refused alike
        return alike >= STORM_COUNT / 2 and refused <= alike / 4

    @property
    def requests_per_second(self) -> float | None:
        """The pace requests are let out at, if known (for sizing concurrency)."""
        return self.requests_per_minute / 60.0 if self.requests_per_minute else None

    def relearn(self, requests_per_minute: float | None, tokens_per_minute: float | None
                ) -> None:
        """``unlearn`` undone: pace at the limits a server reports (``learn``), within the
        job's own, and learn from headers again; buckets made now start empty (requests have
        been going out at these limits, paced by the models' limiters)."""
        self.adaptive = True
        self._spent = True
        self.learn(requests_per_minute, tokens_per_minute)

    def unlearn(self) -> None:
        """Back to the rates the job set, and learn no more from headers: the limits the
        server reports are each model's own, paced by limiters of their own (the runner's
        ``_split``)."""
        self.adaptive = False
        self._samples.clear()  # a storm of the models' 429s drawn together is measured anew
        requests, tokens = self._configured
        # The requests waiting in a bucket go on at the job's rate, or at once where it sets
        # none: a bucket dropped from under them kept them at the rate learnt, in a job whose
        # slow model's rows came first the fast model's rows waited at the slow one's pace
        # (8 s for the 8 in flight at a limit of 60 a minute).
        if requests:
            self._set_requests(requests)
        else:
            for bucket in (self._requests, self._guess):
                if bucket is not None:
                    bucket.open()
            self.requests_per_minute, self._requests = None, None
            self.guessed, self._guess = False, None
        if tokens:
            self._set_tokens(tokens)
        else:
            if self._tokens is not None:
                self._tokens.open()
            self.tokens_per_minute, self._tokens = None, None

    # -- the interface

    async def acquire(self, tokens: int) -> None:
        if self._paused_until > time.monotonic():
            await self._pause_over()
        if self._requests is not None:
            await self._requests.acquire(1)
        elif self._guess is not None:
            await self._guess.acquire(1)
        if self._tokens is not None:
            await self._tokens.acquire(tokens)

    async def _pause_over(self) -> None:
        while (wait := self._paused_until - time.monotonic()) > 0:
            if self._unpaused is None or self._unpaused.is_set():
                self._unpaused = anyio.Event()
            with anyio.move_on_after(wait):
                await self._unpaused.wait()

    async def go_past(self, tokens: int) -> None:
        """``acquire(tokens)`` for a request that goes past a pace learnt from the server
        (a model's first, whose answer says its own limit): it waits out a pause, and takes its
        permit and tokens at once, in debt, so the pace after it is as exact. Where the job
        set a limit of its own, it waits as ``acquire`` does."""
        if self._configured != (None, None):
            await self.acquire(tokens)
            return
        if self._paused_until > time.monotonic():
            await self._pause_over()
        if (requests := self._requests or self._guess) is not None:
            requests.adjust(-1.0)
        if self._tokens is not None:
            self._tokens.adjust(-tokens)

    def take(self, tokens: int) -> bool:
        """``acquire(tokens)`` if it would not wait (no pause, a permit and the tokens there,
        nobody waiting before): True, else False with nothing taken."""
        if self._paused_until > time.monotonic():
            return False
        requests = self._requests or self._guess
        if self._tokens is not None and not self._tokens.can_take(tokens):
            return False
        if requests is not None and not requests.take(1):
            return False
        return self._tokens is None or self._tokens.take(tokens)  # there: checked above

    def ready_in(self, tokens: int) -> float:
        """Seconds until ``take(tokens)`` could be True (0: it may be now)."""
        wait = self._paused_until - time.monotonic()
        if (requests := self._requests or self._guess) is not None:
            wait = max(wait, requests.wait_s(1))
        if self._tokens is not None:
            wait = max(wait, self._tokens.wait_s(tokens))
        return max(0.0, wait)

    def settle(self, charged: int, used: int | None) -> None:
        """Correct a request's token charge once its real usage is known."""
        if self._tokens is not None and used is not None and used != charged:
            self._tokens.adjust(charged - used)

    def refund(self, charged: int) -> None:
        """A request that was refused or failed before the server counted it."""
        if self._tokens is not None:
            self._tokens.adjust(charged)

    def give_back(self, charged: int) -> None:
        """What ``acquire(charged)`` took, for a request not sent after all: its tokens and its
        request permit."""
        self.refund(charged)
        if (requests := self._requests or self._guess) is not None:
            requests.adjust(1.0)

    def lift_pause(self) -> None:
        """End a pause now: the run stops, and what waits on the pause is let go (to find
        that nothing more is sent) instead of holding the run's end up to its length."""
        self._paused_until = 0.0
        self._held_until = min(self._held_until, time.monotonic())
        if self._unpaused is not None:
            self._unpaused.set()

    def pause(self, seconds: float, by: str = "a 429's retry-after") -> None:
        """Hold every new request for ``seconds`` plus a little jitter, e.g. after a 429;
        ``by`` says what asked for it (``paused_by``: the pause that ends last)."""
        now = time.monotonic()
        until = now + seconds + self._rng.uniform(0.0, 0.05 + seconds * 0.1)
        if until > self._paused_until:
            self._paused_until = until
            self.paused_by = by
        if seconds > PAUSE_PACED_S:
            self._long_asked = True
        if seconds > PAUSE_PACED_S and until > (start := now + PAUSE_PACED_S):
            if start >= self._held_until:  # a new stretch: the one before is over
                self._held_before = self._held_total(start)
                self._held_from = start
            self._held_until = max(self._held_until, until)

    def _held_total(self, now: float) -> float:
        """The seconds long pauses held new requests, past their first PAUSE_PACED_S, from
        the start up to ``now``."""
        return self._held_before + max(0.0, min(now, self._held_until) - self._held_from)

    def learn(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        """Pace at the limits a server reports (None: not reported), within the job's own."""
        if requests_per_minute is not None:
            self._learn("requests", requests_per_minute)
        if tokens_per_minute is not None:
            self._learn("tokens", tokens_per_minute)

    def _learn(self, kind: str, limit: float) -> None:
        # The server's limit as it is now, up or down (a key's tier raised, a gateway's limits
        # reloaded): a pace that only ever went down kept a raised limit's job at the old one.
        if kind == "requests":
            cap, current, set_rate = self._configured[0], self.requests_per_minute, \
                self._set_requests
        else:
            cap, current, set_rate = self._configured[1], self.tokens_per_minute, \
                self._set_tokens
        rate = limit if not cap else min(limit, cap)
        if kind == "requests" and self.guessed:
            if rate >= self._said_over:
                return  # the limit its 429s showed too high: the pace they taught holds
            current = None  # a limit said replaces one learnt from 429s at once
        if current is not None and rate > current:
            said, since = self._raising.get(kind, (None, 0.0))
            now = time.monotonic()
            if said != rate:
                self._raising[kind] = (rate, now)
                return
            if now - since < RAISE_AFTER_S:
                return
        if self._raising:
            self._raising.pop(kind, None)
        if rate != current:
            set_rate(rate)

    def observe(self, headers: Mapping[str, str]) -> tuple[str, float, float] | None:
        """Learn the server's limits from a response's ``x-ratelimit-*`` headers. None, or
        when a limit over more than a minute (a day's) has none left and is whole again only
        after a wait longer than a pause: its kind, the limit and the seconds until then (the
        job is to stop)."""
        if not self.adaptive or not headers:
            return None
        for kind, limit_h, remaining_h, reset_h in _NAMES:
            limit = _limit(headers, limit_h)
            current = self.requests_per_minute if kind == "requests" else self.tokens_per_minute
            # The usual answer says the limit paced at already: nothing to learn (_learn is a
            # call and a dozen reads more, on every answer).
            if limit is not None and (limit != current or self._raising or self.guessed):
                if self._over_a_minute(kind, limit, headers.get(reset_h)):
                    current = None  # none a minute
                else:
                    self._learn(kind, limit)
                    current = self.requests_per_minute if kind == "requests" \
                        else self.tokens_per_minute
            remaining = _header_float(headers, remaining_h)
            if remaining is None or remaining >= 1 or (remaining < 0 and limit is None):
                # A negative count beside no limit is none: Azure OpenAI's "-1"s on every answer
                # (limit and remaining) mean no limit said; read as a budget used up, they held
                # every new request after each answer (3,000 rows took 59 s, 4.5 s without).
                continue
            # None left: a limit over more than a minute (its reset says so now, as a day's
            # whose first answers looked like a minute's) is waited for until whole again, or
            # the job stopped if that is further off than a pause.
            if limit is not None and self._over_a_minute(kind, limit, headers.get(reset_h)):
                whole_in = reset_seconds(headers.get(reset_h)) or 0.0
                if whole_in > MAX_RESET_WAIT_S:
                    return kind, limit, whole_in
                self.pause(whole_in, _NONE_LEFT)
                continue
            if rate := limit or current:
                # The bucket is empty: wait for one request's worth of refill (the reset
                # header says when it is full again, far longer than needed).
                self.pause(60.0 / rate * (1 if kind == "requests" else 100), _NONE_LEFT)
            else:
                # Empty, and no rate known to tell when a request's worth is back (Azure sends
                # the remaining count alone): until the reset, if it is said, else a second.
                reset = reset_seconds(headers.get(reset_h))
                self.pause(1.0 if reset is None else min(reset, MAX_RESET_WAIT_S), _NONE_LEFT)
        return None

    def _over_a_minute(self, kind: str, limit: float, reset: str | None) -> bool:
        """Whether ``limit`` is over a period longer than a minute: it was said so before,
        or its reset is further off than a minute's can be. A rate a minute learnt from it
        (its reset was near at first, as a day's is while little of it is used) is unlearnt.
        A requests limit only: OpenAI's own example of its headers says a minute's tokens
        reset in "6m0s", and Groq's tokens limit is a minute's."""
        if kind != "requests":
            return False
        if self._long.get(kind) == limit:
            return True
        if reset is None or (seconds := reset_seconds(reset)) is None or seconds <= MINUTE_RESET_S:
            return False
        self._long[kind] = limit
        cap = self._configured[0 if kind == "requests" else 1]
        learnt = self.requests_per_minute if kind == "requests" else self.tokens_per_minute
        if learnt is not None and learnt == min(limit, cap or limit) != cap:
            self._raising.pop(kind, None)
            if cap:  # back to the job's own
                (self._set_requests if kind == "requests" else self._set_tokens)(cap)
            elif kind == "requests":
                self.requests_per_minute, self._requests = None, None
            else:
                self.tokens_per_minute, self._tokens = None, None
        return True

    def sample(self, now: float, answered: int, refused: int, *, split: bool = False,
               latest: bool = True) -> bool:
        """The run's requests ``answered`` so far and those of them ``refused`` (answered 429),
        at ``now``: while no request rate is known (none set, none reported), or only one the
        headers said (the server's answers may say more than it enforces: both its limits
        said at twice theirs, 502 of 802 requests were 429'd, 12 a second to the end, and
        66 of 366 now), a storm of 429s paces requests a little under the rate answers were
        accepted at over the last few seconds, or before any pace over the latest second (or
        lower a pace so learnt), where each 429's pause ended with every request waiting sent
        at once; the pace is raised slowly while no 429 comes. Counts taken a few times a
        second, not a time for each answer: nothing on a request's way. True when a storm set
        the pace (learnt or lowered) now. ``split``: a job's limiter that learns no more from
        headers (``unlearn``), sampled with the 429s its models drew together, learns from them
        all the same.
        ``latest=False``: a storm over the whole window only, for a model's probe that a split
        weighs against another's whole window (a storm over one's latest second, against the
        other's diluted by a quiet start, split models refused alike by a limit they share: 31
        of 200 scripted jobs).

        Answers, not requests sent: a request in flight is neither accepted nor refused yet.
        Counted as accepted when sent, those in flight at the end of a second's window put it
        one or two over the limit (652-716 a minute measured behind a limit of 600), and a
        storm that refused every request taught 54 a minute from the one in flight. Nor does
        a storm whose 429s all came before its first answers accepted teach a rate: the few
        rows answered as a storm that refused everything ended (8 rows, 429'd with retry-after
        0 for 2.5 s) are answers of a storm over (21 a minute was learnt from them)."""
        said = self._requests is not None  # a rate a header said, or the job's own
        if not (self.adaptive or split) or (said and self.requests_per_minute
                                            == self._configured[0]):
            return False  # the job's own rate is kept
        samples = self._samples
        paused = self._held_total(now)
        samples.append((now, answered, refused, paused))
        while len(samples) > 2 and now - samples[1][0] >= STORM_WINDOW_S:
            samples.popleft()
        span = now - samples[0][0]
        if span < PACE_MIN_SPAN_S:
            return False  # the 429s since the last, and a long pause asked, are the next's
        new_refusals, self._refused = refused - self._refused, refused  # since the last
        answers, refusals, sending = _since(samples[0], answered, refused, now, paused)
        measured = sending >= PACE_MIN_SPAN_S  # enough of it to measure a rate over
        current = self.requests_per_minute if self.guessed or said else None
        # A storm over (its 429s all before its answers accepted) over the window is over in
        # its latest second too: a second holds too few samples to tell it (a pace of 190 to
        # 432 a minute was learnt from the rows answered as a storm refusing everything ended).
        over = _over(samples, 0)
        stormy = measured and _storm(answers, refusals) and not over
        if latest and not stormy and not over and current is None:
            # Its latest second or so, where no pace is known yet: a short job's storm (60
            # rows 429'd again and again) is none over a window holding the burst before it
            # (80 429s of 704 sent), which left it unpaced for 3 s.
            second = next(i for i in range(len(samples) - 1, -1, -1)
                          if now - samples[i][0] >= PACE_MIN_SPAN_S)
            if second:
                tail = _since(samples[second], answered, refused, now, paused)
                if tail[2] >= PACE_MIN_SPAN_S and _storm(*tail[:2]) and not _over(samples,
                                                                                   second):
                    answers, refusals, sending = tail
                    stormy = True
        accepted = (answers - refusals) / max(sending, PACE_MIN_SPAN_S) * 60.0
        if stormy:
            self.storm_share = refusals / max(1, answers)
            stormed = False
            if accepted >= 1.0 and (current is None or accepted * PACE_UNDER < current):
                self._storm_pace = accepted * PACE_UNDER
                self._set_guess(self._storm_pace)
                self._floor_from = now
                # The next storm is one at this pace: measured from here on, not lowered
                # again for the 429s that taught it.
                samples.clear()
                samples.append((now, answered, refused, paused))
                stormed = True
            # Its 429s asked a long pause: held from the start. The pause was asked before
            # the storm could be measured (its first half second, the pause itself), and held
            # nothing when that sample let it go: raised from 5 s on, the pace was past the
            # limit again within seconds.
            if self._long_asked and self.guessed:
                self._raise_from = now + RAISE_HOLD_S
                self._long_asked = False
            return stormed
        if not self.guessed or current is None:
            return False  # a long pause asked is the storm's that sets a pace
        long_asked, self._long_asked = self._long_asked, False
        if new_refusals and long_asked:  # a long pause asked: back to the storm's, and held
            if current > self._storm_pace:
                self._set_guess(self._storm_pace)
                self._floor_from = now
            self._raise_from = now + RAISE_HOLD_S
        elif new_refusals and current > self._storm_pace:
            if (back := current / PACE_BACK) <= self._storm_pace:
                back, self._floor_from = self._storm_pace, now
            self._set_guess(back)
        elif (new_refusals and measured and span >= STORM_WINDOW_S
              and samples[0][0] >= self._floor_from and refusals >= FLOOR_COUNT
              and refusals >= FLOOR_SHARE * answers and accepted >= current * PACE_BINDS
              and accepted * PACE_UNDER < current):
            # The storm's own pace over the limit: a 429 a second, each too few to lower it;
            # the next window measured afresh, and lowered at the FLOOR_WINDOWS-th in a row.
            samples.clear()
            samples.append((now, answered, refused, paused))
            self._floor_windows += 1
            if self._floor_windows >= FLOOR_WINDOWS:
                self._storm_pace = accepted * PACE_UNDER
                self._set_guess(self._storm_pace)
                self._floor_from = now
            return False
        if span >= STORM_WINDOW_S and refusals < FLOOR_COUNT:
            self._floor_windows = 0  # a whole window without them
        if (measured and not refusals and span >= STORM_WINDOW_S and now >= self._raise_from
              and accepted >= current * PACE_BINDS):
            self._set_guess(current * PACE_RAISE)
        return False

    def _set_guess(self, per_minute: float) -> None:
        if self._requests is not None:
            # A limit said, which a storm at it showed too high: its bucket, and the requests
            # waiting in it, go on at the pace learnt.
            self._said_over = self.requests_per_minute or math.inf
            self._guess, self._requests = self._requests, None
        self.requests_per_minute, self.guessed = per_minute, True
        self._floor_windows = 0  # counted afresh at each pace
        per_s = per_minute * self.headroom / 60.0
        if self._guess is None:
            # Empty: the server's bucket is too, and refills during the pause a 429 asked.
            self._guess = TokenBucket(per_s, max(1.0, per_s))
            self._guess.level = 0.0
        else:
            self._guess.set_rate(per_s, max(1.0, per_s))
