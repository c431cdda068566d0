"""Event-time windowing of quotes, as plain data and pure functions (no Beam needed to test them).

* :class:`WindowConfig` (window kind, trigger, accumulation, allowed lateness) and the parsers
  of its command-line spelling: ``fixed:1s``, ``sliding:10s,1s``, ``session:500ms``,
  ``watermark``, ``early:100``, ``early:1s``; durations in ``ms``, ``s`` or ``m``.
* The lateness rule. Beam drops an element from a window when the watermark at the grouping step
  is past ``window end + allowed lateness`` (``apache_beam/transforms/trigger.py``,
  ``GeneralTriggerDriver.process_elements``), and says nothing. Here every quote carries the
  watermark its source emitted it under, and :func:`is_dropped` applies the same rule to that
  stamp, before the grouping, so a dropped quote becomes a ``late`` record instead of a loss. A
  runner's watermark at the grouping step can lag the source's, never lead it, so Beam cannot drop
  a quote this rule admitted; the answer depends only on the stamp, so it is the same on every
  runner.
* :class:`PaneStats`, the one-pass, mergeable statistics of a pane (count, OHLC of the mid, spread,
  first and last quote), and the ``windows.jsonl`` / ``late.jsonl`` line formats.

All times are integer microseconds since the epoch, UTC. Prices are integers scaled by
``10**scale`` (see :mod:`transforms.quotes.rules`); a mid is kept doubled (``bid + ask``) so it stays exact.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

from transforms.quotes.rules import DEFAULT_TENANT

KINDS = ("fixed", "sliding", "session")
ACCUMULATION_MODES = ("discarding", "accumulating")
TIMINGS = ("EARLY", "ON_TIME", "LATE")
INFINITE = math.inf
#: Home window of a quote that is in one window only (fixed and session windows).
ANY_WINDOW = -1

_UNITS_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m)\s*$")
#: About 10,000 years: durations stay far inside Beam's timestamp range (int64 microseconds).
MAX_DURATION_US = 10_000 * 365 * 86_400 * 1_000_000


class WindowingError(ValueError):
    """A windowing flag has an invalid value, or flags do not go together."""


# --------------------------------------------------------------------------- durations


def parse_duration(text: str, flag: str, *, allow_infinite: bool = False) -> int | float:
    """``100ms``, ``1.5s``, ``2m`` -> microseconds (whole milliseconds only); ``inf`` if allowed.

    Whole milliseconds because that is the granularity of watermarks in Beam's runner API.
    """
    value = text.strip().lower()
    if allow_infinite and value in ("inf", "infinite"):
        return INFINITE
    match = _DURATION.match(value)
    if not match:
        hint = ", or inf" if allow_infinite else ""
        raise WindowingError(f"{flag}: {text!r} is not a duration such as 50ms, 2s or 1m{hint}")
    whole, _, fraction = match.group(1).partition(".")
    micros = Fraction(int(whole + fraction), 10 ** len(fraction)) * _UNITS_US[match.group(2)]
    if micros % 1000:
        raise WindowingError(f"{flag}: {text!r} is not a whole number of milliseconds")
    if micros > MAX_DURATION_US:
        raise WindowingError(f"{flag}: {text!r} is longer than Beam's timestamps can represent")
    return int(micros)


def duration_text(micros: int | float) -> str:
    """The shortest spelling :func:`parse_duration` reads back (``1500000`` -> ``1500ms``)."""
    if micros == INFINITE:
        return "inf"
    for unit in ("m", "s"):
        if micros and micros % _UNITS_US[unit] == 0:
            return f"{micros // _UNITS_US[unit]}{unit}"
    return f"{micros // 1000}ms"


# --------------------------------------------------------------------------- configuration


def window_time(event_us: int) -> int:
    """The event time windows are assigned by: the quote's timestamp, down to the millisecond.

    Beam's portable runners carry timestamps and windows in milliseconds (the FnApiRunner turns
    a session starting at ``.322001`` into one starting at ``.322``), so the quote's element
    timestamp is set to the millisecond on every runner and windows agree everywhere. The quote
    keeps its full timestamp for ordering and for the outputs.
    """
    return event_us - event_us % 1000


@dataclass(frozen=True)
class WindowSpec:
    """Which windows a quote falls in. ``size_us``: fixed and sliding; ``period_us``: sliding;
    ``gap_us``: session. Windows are aligned to the epoch (offset 0), as Beam's are by default."""

    kind: str
    size_us: int = 0
    period_us: int = 0
    gap_us: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise WindowingError(f"window kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind in ("fixed", "sliding") and self.size_us <= 0:
            raise WindowingError(f"{self.kind} windows need a size above 0")
        if self.kind == "sliding" and not 0 < self.period_us <= self.size_us:
            raise WindowingError("a sliding window's period must be above 0 and at most its size")
        if self.kind == "session" and self.gap_us <= 0:
            raise WindowingError("session windows need a gap above 0")

    def windows(self, event_us: int) -> list[tuple[int, int]]:
        """The ``(start, end)`` windows a quote at ``event_us`` is assigned to, end exclusive.

        For sessions this is the quote's own proto-window ``[t, t + gap)``, before merging: the
        window Beam's lateness check looks at. Times are taken to the millisecond (see
        :func:`window_time`).
        """
        event_us = window_time(event_us)
        if self.kind == "session":
            return [(event_us, event_us + self.gap_us)]
        period = self.size_us if self.kind == "fixed" else self.period_us
        latest = event_us - event_us % period
        return [(start, start + self.size_us) for start in range(latest, event_us - self.size_us, -period)]

    def last_end(self, event_us: int) -> int:
        """The end of the last window the quote falls in: after it, no window wants the quote."""
        event_us = window_time(event_us)
        if self.kind == "session":
            return event_us + self.gap_us
        period = self.size_us if self.kind == "fixed" else self.period_us
        return event_us - event_us % period + self.size_us

    def text(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{duration_text(self.size_us)}"
        if self.kind == "sliding":
            return f"sliding:{duration_text(self.size_us)},{duration_text(self.period_us)}"
        return f"session:{duration_text(self.gap_us)}"


def parse_window(text: str) -> WindowSpec:
    """``fixed:SIZE``, ``sliding:SIZE,PERIOD`` or ``session:GAP``."""
    kind, _, args = text.strip().partition(":")
    kind = kind.strip().lower()
    parts = [part for part in args.split(",")] if args else []
    expected = {"fixed": 1, "sliding": 2, "session": 1}
    if kind not in expected or len(parts) != expected[kind]:
        raise WindowingError(
            f"--window: {text!r} is not one of fixed:SIZE, sliding:SIZE,PERIOD, session:GAP "
            "(e.g. fixed:1s, sliding:10s,1s, session:500ms)"
        )
    durations = [parse_duration(part, "--window") for part in parts]
    try:
        if kind == "fixed":
            return WindowSpec("fixed", size_us=durations[0])
        if kind == "sliding":
            return WindowSpec("sliding", size_us=durations[0], period_us=durations[1])
        return WindowSpec("session", gap_us=durations[0])
    except WindowingError as exc:
        raise WindowingError(f"--window {text}: {exc}") from None


@dataclass(frozen=True)
class TriggerSpec:
    """When panes fire: always an on-time pane when the watermark passes the window's end and one
    late pane per late quote; optionally early panes every ``early_count`` quotes or
    ``early_delay_us`` of processing time after a pane's first quote."""

    early_count: int | None = None
    early_delay_us: int | None = None

    def __post_init__(self):
        if self.early_count is not None and self.early_delay_us is not None:
            raise WindowingError("choose early panes by count or by delay, not both")
        if self.early_count is not None and self.early_count < 1:
            raise WindowingError("early panes need a count of at least 1")
        if self.early_delay_us is not None and (self.early_delay_us <= 0 or self.early_delay_us % 1_000_000):
            # Beam's AfterProcessingTime travels through the runner API in whole seconds.
            raise WindowingError("early panes by time need a whole number of seconds above 0 (e.g. early:1s)")

    @property
    def has_early_panes(self) -> bool:
        return self.early_count is not None or self.early_delay_us is not None

    def text(self) -> str:
        if self.early_count is not None:
            return f"early:{self.early_count}"
        if self.early_delay_us is not None:
            return f"early:{duration_text(self.early_delay_us)}"
        return "watermark"


def parse_trigger(text: str) -> TriggerSpec:
    """``watermark`` (default), ``early:N`` (every N quotes) or ``early:DURATION``."""
    value = text.strip().lower()
    if value == "watermark":
        return TriggerSpec()
    kind, _, arg = value.partition(":")
    if kind == "early" and re.fullmatch(r"[0-9]+", arg.strip()):
        try:
            return TriggerSpec(early_count=int(arg))
        except WindowingError as exc:
            raise WindowingError(f"--trigger {text}: {exc}") from None
    if kind == "early" and arg:
        try:
            return TriggerSpec(early_delay_us=parse_duration(arg, f"--trigger {text}"))
        except WindowingError as exc:
            message = str(exc)
            raise WindowingError(message if message.startswith("--") else f"--trigger {text}: {message}") from None
    raise WindowingError(f"--trigger: {text!r} is not one of watermark, early:N, early:DURATION (e.g. early:100, early:1s)")


@dataclass(frozen=True)
class WindowConfig:
    """Everything :class:`transforms.windows.stage.WindowQuotes` needs to know."""

    window: WindowSpec
    trigger: TriggerSpec = field(default_factory=TriggerSpec)
    accumulation: str = "discarding"
    allowed_lateness_us: int = 0

    def __post_init__(self):
        if self.accumulation not in ACCUMULATION_MODES:
            raise WindowingError(
                f"--accumulation must be one of {', '.join(ACCUMULATION_MODES)}, got {self.accumulation!r}"
            )
        if self.allowed_lateness_us < 0:
            raise WindowingError("allowed lateness must not be negative")

    def deadline(self, event_us: int) -> int:
        """The last watermark under which a quote at ``event_us`` still joins some window."""
        return self.window.last_end(event_us) + self.allowed_lateness_us

    def as_dict(self) -> dict:
        return {
            "window": self.window.text(),
            "trigger": self.trigger.text(),
            "accumulation": self.accumulation,
            "allowed_lateness": duration_text(self.allowed_lateness_us),
        }


# --------------------------------------------------------------------------- the lateness rule


def is_expired(window_end_us: int, watermark_us: int | None, allowed_lateness_us: int) -> bool:
    """Beam's rule: a window takes no more data once the watermark is past end + allowed lateness.

    ``watermark_us`` None means no watermark yet (batch, or an infinite lag): nothing expires.
    """
    return watermark_us is not None and watermark_us > window_end_us + allowed_lateness_us


def is_dropped(event_us: int, watermark_us: int | None, config: WindowConfig) -> bool:
    """True when every window of the quote has expired under the watermark it was emitted with."""
    return is_expired(config.window.last_end(event_us), watermark_us, config.allowed_lateness_us)


def home_window_start(event_us: int, watermark_us: int | None, config: WindowConfig) -> int:
    """Start of the first window that still takes the quote (where it is counted once).

    Only meaningful for sliding windows, where a quote is in several windows; for fixed and
    session windows a quote has one window and this returns ``-1`` ("its window").
    """
    if config.window.kind != "sliding":
        return ANY_WINDOW
    for start, end in reversed(config.window.windows(event_us)):
        if not is_expired(end, watermark_us, config.allowed_lateness_us):
            return start
    raise ValueError("a dropped quote has no home window")


def missed_windows(event_us: int, watermark_us: int | None, config: WindowConfig) -> int:
    """How many of the quote's windows have expired (sliding windows can miss some, not all)."""
    return sum(
        is_expired(end, watermark_us, config.allowed_lateness_us) for _, end in config.window.windows(event_us)
    )


def watermark_after(arrival_us: int, lag_us: int | float) -> int | None:
    """The watermark of a replay once a quote has arrived: arrival - lag, in whole milliseconds.

    Beam's runner API carries watermarks in milliseconds, so the stamp is rounded down to one.
    An infinite lag means the watermark never moves (None).
    """
    if lag_us == INFINITE:
        return None
    watermark = arrival_us - int(lag_us)
    return watermark - watermark % 1000


# --------------------------------------------------------------------------- elements


class StampedQuote(NamedTuple):
    """A valid quote, as the window stage sees it, stamped with its source's watermark.

    Prices are scaled integers; ``file`` indexes the run's sources; ``watermark_us`` is the
    watermark when the source emitted the quote (None: no watermark yet, nothing is late).
    """

    symbol: str
    event_us: int
    arrival_us: int
    watermark_us: int | None
    bid: int
    ask: int
    file: int = 0
    line: int = 0
    tenant: str = DEFAULT_TENANT

    @property
    def key(self) -> tuple[str, str]:
        """What windows are kept per: ``(tenant, symbol)``."""
        return self.tenant, self.symbol


class PaneQuote(NamedTuple):
    """What a window keeps of a quote: ordering key, doubled mid, spread, and its home window."""

    event_us: int
    file: int
    line: int
    mid2: int
    spread: int
    home: int

    @classmethod
    def of(cls, quote: StampedQuote, home: int) -> "PaneQuote":
        return cls(quote.event_us, quote.file, quote.line, quote.bid + quote.ask, quote.ask - quote.bid, home)


class PaneStats(NamedTuple):
    """Statistics of the quotes in a pane; :func:`add_quote` and :func:`merge_stats` build it.

    ``open``/``close`` are the quotes first/last in event time (ties by file, then line), so the
    result does not depend on the order quotes were added or partial results merged. Mids are
    doubled (``bid + ask``), exact. ``homes`` counts quotes by home window start (see
    :func:`home_window_start`), so a pane can say how many quotes it is the home of.
    """

    count: int
    first: tuple[int, int, int]
    open2: int
    last: tuple[int, int, int]
    close2: int
    high2: int
    low2: int
    spread_sum: int
    spread_max: int
    homes: tuple[tuple[int, int], ...]


def stats_of(quote: PaneQuote) -> PaneStats:
    key = (quote.event_us, quote.file, quote.line)
    return PaneStats(
        1, key, quote.mid2, key, quote.mid2, quote.mid2, quote.mid2, quote.spread, quote.spread, ((quote.home, 1),)
    )


def merge_stats(a: PaneStats | None, b: PaneStats | None) -> PaneStats | None:
    """The stats of both panes' quotes together (None is the empty pane)."""
    if a is None:
        return b
    if b is None:
        return a
    first, open2 = (a.first, a.open2) if a.first <= b.first else (b.first, b.open2)
    last, close2 = (a.last, a.close2) if a.last >= b.last else (b.last, b.close2)
    homes = dict(a.homes)
    for home, count in b.homes:
        homes[home] = homes.get(home, 0) + count
    return PaneStats(
        a.count + b.count,
        first,
        open2,
        last,
        close2,
        max(a.high2, b.high2),
        min(a.low2, b.low2),
        a.spread_sum + b.spread_sum,
        max(a.spread_max, b.spread_max),
        tuple(sorted(homes.items())),
    )


def add_quote(stats: PaneStats | None, quote: PaneQuote) -> PaneStats:
    return merge_stats(stats, stats_of(quote))


def bucket_width(window: WindowSpec) -> int:
    """The widest time buckets whose quotes all fall in exactly the same windows.

    Window starts and ends are multiples of the period (fixed: the size) and of the size, so
    within a bucket of their greatest common divisor no boundary is crossed. Sessions depend on
    the data, so only quotes of the same millisecond share one.
    """
    if window.kind == "fixed":
        return window.size_us
    if window.kind == "sliding":
        return math.gcd(window.size_us, window.period_us)
    return 1000


class Pane(NamedTuple):
    """One fired pane of one tenant's symbol's window: a ``windows.jsonl`` line."""

    symbol: str
    start_us: int
    end_us: int
    timing: str
    index: int
    stats: PaneStats
    tenant: str = DEFAULT_TENANT

    @property
    def home_count(self) -> int:
        """Quotes counted in this window and no other (all of them, but for sliding windows)."""
        homes = dict(self.stats.homes)
        return homes.get(ANY_WINDOW, 0) + homes.get(self.start_us, 0)
