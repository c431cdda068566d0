"""Rate limit, Retry-After and circuit breaker logic, driven by a hand-moved clock."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, TokenBucket, retry_after_seconds


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def send_times(bucket: TokenBucket, clock: FakeClock, arrivals: list[float]) -> list[float]:
    """When each request goes, asked for at ``arrivals`` (sorted) and waiting as told."""
    times = []
    for at in arrivals:
        clock.now = max(clock.now, at)
        times.append(clock.now + bucket.reserve())
    return times


def most_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + window - 1e-9) for t in times)


# --------------------------------------------------------------------------- TokenBucket


def test_bucket_spaces_a_burst_at_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(5.0, clock=clock)
    assert send_times(bucket, clock, [100.0] * 6) == pytest.approx([100.0, 100.2, 100.4, 100.6, 100.8, 101.0])


def test_bucket_capacity_allows_a_burst_then_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(2.0, capacity=3, clock=clock)
    clock.now = 110.0  # idle long enough to fill the bucket
    assert send_times(bucket, clock, [110.0] * 5) == pytest.approx([110.0, 110.0, 110.0, 110.5, 111.0])


def test_bucket_does_not_save_up_beyond_capacity():
    clock = FakeClock()
    bucket = TokenBucket(1.0, capacity=1, clock=clock)
    clock.now = 1000.0
    assert send_times(bucket, clock, [1000.0, 1000.0]) == pytest.approx([1000.0, 1001.0])


def test_wait_time_does_not_take_a_token():
    clock = FakeClock()
    bucket = TokenBucket(4.0, clock=clock)
    bucket.reserve()
    assert bucket.wait_time() == pytest.approx(0.25)
    assert bucket.wait_time() == pytest.approx(0.25)
    assert bucket.reserve() == pytest.approx(0.25)


def test_pause_until_holds_every_token_back():
    clock = FakeClock()
    bucket = TokenBucket(10.0, capacity=5, clock=clock)
    clock.now = 200.0
    bucket.pause_until(203.0)
    assert bucket.reserve() == pytest.approx(3.0)
    bucket.pause_until(150.0)  # an earlier pause changes nothing
    assert bucket.reserve() == pytest.approx(3.1), "the paused bucket restarts empty: no burst after a 429"


@pytest.mark.parametrize("rate, capacity", [(0, 1), (-1, 1), (1, 0.5)])
def test_bucket_refuses_nonsense(rate, capacity):
    with pytest.raises(ValueError):
        TokenBucket(rate, capacity)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([1.0, 2.0, 5.0, 7.5]),
    gaps=st.lists(st.floats(min_value=0, max_value=0.7), min_size=1, max_size=60),
)
def test_bucket_of_one_never_exceeds_the_rate_in_any_window(rate, gaps):
    clock = FakeClock()
    bucket = TokenBucket(rate, capacity=1, clock=clock)
    arrivals, at = [], 100.0
    for gap in gaps:
        at += gap
        arrivals.append(at)
    times = send_times(bucket, clock, arrivals)
    assert all(sent >= asked for sent, asked in zip(times, arrivals))
    assert most_in_window(times) <= math.ceil(rate)


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize("header, seconds", [("3", 3.0), (" 0 ", 0.0), ("1.5", 1.5), ("-4", 0.0), ("7200", 60.0)])
def test_retry_after_delta_seconds(header, seconds):
    assert retry_after_seconds(header) == seconds


@pytest.mark.parametrize("header", [None, "", "soon", "nan"])
def test_retry_after_unreadable_waits_the_default(header):
    assert retry_after_seconds(header, default=2.5) == 2.5


def test_retry_after_http_date():
    now = datetime(2026, 1, 5, 12, 0, 0, tzinfo=timezone.utc).timestamp()
    header = format_datetime(datetime(2026, 1, 5, 12, 0, 7, tzinfo=timezone.utc), usegmt=True)
    assert retry_after_seconds(header, now_epoch=now) == pytest.approx(7.0)
    assert retry_after_seconds(header, now_epoch=now + 60) == 0.0


# --------------------------------------------------------------------------- CircuitBreaker


def test_breaker_opens_after_consecutive_failures_only():
    breaker = CircuitBreaker(failure_threshold=3, cooldown=2.0, clock=FakeClock())
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # a success in between resets the count
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN and breaker.opened == 1
    assert not breaker.allow()


def test_breaker_probes_once_after_the_cooldown_and_closes_on_success():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=2.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.5
    assert not breaker.allow() and breaker.retry_in() == pytest.approx(0.5)
    clock.now += 0.5
    assert breaker.allow() and breaker.state == HALF_OPEN and breaker.probes == 1
    assert not breaker.allow(), "only one probe while half-open"
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()


def test_failed_probe_opens_the_breaker_again_for_a_full_cooldown():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=3.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 3.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN and breaker.opened == 2
    assert breaker.retry_in() == pytest.approx(3.0)
    clock.now += 3.0
    assert breaker.allow() and breaker.probes == 2


def test_breaker_refuses_nonsense():
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(cooldown=-1)
