"""Being polite to, and resilient against, remote services: pure logic, no I/O, no Beam.

* :class:`TokenBucket`: a client-side rate limit (at most ``rate`` requests a second);
* :func:`backoff_delay`: exponential backoff with jitter between retries;
* :func:`retry_after_seconds`: a server's ``Retry-After`` header, as seconds to wait;
* :class:`CircuitBreaker`: stop calling a service that keeps failing, probe it after a cool-down.

Every clock is injected (``clock`` returns seconds, monotonic), so tests drive time by hand;
callers do the sleeping.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Callable

Clock = Callable[[], float]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def backoff_delay(attempt: int, initial: float, maximum: float, unit_random: float, factor: float = 2.0) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): exponential, capped, "equal jitter".

    Half the capped delay is fixed and half is random (``unit_random`` in [0, 1)), so clients that
    lost the same server do not all come back at the same instant, and none retries at once.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    # Compare exponents, not powers: factor ** attempt overflows a float long before any cap matters.
    exponent = attempt - 1
    if initial <= 0 or factor <= 1 or exponent * math.log(factor) < math.log(maximum / initial):
        capped = min(maximum, initial * factor**exponent)
    else:
        capped = maximum
    return capped / 2 + capped / 2 * unit_random


def retry_after_seconds(value: str | None, now_epoch: float | None = None, default: float = 1.0,
                        maximum: float = 60.0) -> float:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    A missing or unreadable header waits ``default``; a date in the past waits 0; nothing waits
    more than ``maximum`` (a server asking for an hour is treated as asking for the cap).
    """
    if value is None or not value.strip():
        return default
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return default
        if when is None:
            return default
        seconds = when.timestamp() - (time.time() if now_epoch is None else now_epoch)
    if math.isnan(seconds):
        return default
    return min(max(seconds, 0.0), maximum)


class TokenBucket:
    """At most ``rate`` requests a second, with bursts of up to ``capacity`` requests.

    Kept in its "virtual scheduling" form: the bucket remembers when the next token is due, which
    is exact and needs no refill loop. :meth:`reserve` takes a token and says how long to wait
    before using it, so concurrent callers each sleep their own delay and go in order, never more
    than ``rate`` a second over any stretch once the first ``capacity`` have gone.
    """

    def __init__(self, rate: float, capacity: float = 1.0, clock: Clock = time.monotonic):
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._clock = clock
        self._interval = 1.0 / self.rate
        self._tolerance = (self.capacity - 1.0) * self._interval
        self._due = clock()  # when the next token is due, if the bucket had no burst room

    def reserve(self) -> float:
        """Take a token; the seconds to wait before the request may go (0: go now)."""
        now = self._clock()
        send_at = max(now, self._due - self._tolerance)
        self._due = max(self._due, send_at) + self._interval
        return send_at - now

    def wait_time(self) -> float:
        """Seconds until a token is available, without taking it."""
        return max(0.0, self._due - self._tolerance - self._clock())

    def pause_until(self, when: float) -> None:
        """No token before ``when`` (clock time): a server said ``Retry-After``."""
        self._due = max(self._due, when + self._tolerance)


@dataclass
class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive failures → one half-open probe after
    ``cooldown`` seconds → closed again if it succeeds, open again if it fails.

    Callers ask :meth:`allow` before each request and report the outcome with
    :meth:`record_success` or :meth:`record_failure`. Only one probe is let through while half-open.
    ``opened`` counts how many times the breaker opened, and ``probes`` the probes it let through.
    """

    failure_threshold: int = 3
    cooldown: float = 5.0
    clock: Clock = field(default=time.monotonic, repr=False)
    state: str = CLOSED
    failures: int = 0
    opened: int = 0
    probes: int = 0
    _opened_at: float = field(default=0.0, repr=False)
    _probing: bool = field(default=False, repr=False)

    def __post_init__(self):
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {self.failure_threshold}")
        if self.cooldown < 0:
            raise ValueError(f"cooldown must not be negative, got {self.cooldown}")

    def allow(self) -> bool:
        """May a request go now? While half-open, only the probe may."""
        if self.state == OPEN and self.clock() - self._opened_at >= self.cooldown:
            self.state = HALF_OPEN
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN and not self._probing:
            self._probing = True
            self.probes += 1
            return True
        return False

    def retry_in(self) -> float:
        """Seconds until a request could be allowed (0 when closed or ready to probe)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self.clock())

    def record_success(self) -> None:
        self.state = CLOSED
        self.failures = 0
        self._probing = False

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.failure_threshold):
            self._open()

    def _open(self) -> None:
        self.state = OPEN
        self.opened += 1
        self._opened_at = self.clock()
        self._probing = False
