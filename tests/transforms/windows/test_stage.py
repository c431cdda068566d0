"""WindowStampedQuotes (the streaming core of the window stage) on a streaming runner: TestStream-driven watermarks, triggers and allowed lateness.

Every pipeline runs on the BundleBasedDirectRunner with ``streaming=True``, the only local runner
that plays a ``TestStream`` and applies watermarks, triggers and lateness. A :class:`QuoteStream`
adds one quote per TestStream event (so each quote is its own bundle: count triggers fire at
bundle boundaries) and stamps it with the stream's current watermark, as a live source would.

Each test says what a naive batch run (no triggers, no lateness: every quote in one ON_TIME pane
of its window) would give instead; the assertions are written so that they would fail on it.
Expected pane statistics are computed by :func:`stats`, an oracle written here independently of
``transforms.windows.logic`` (min/max over quotes), or spelled out literally.
"""

from __future__ import annotations

from collections import Counter

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing import test_stream
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to, equal_to_per_window
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.windows.logic import (
    Pane,
    PaneStats,
    StampedQuote,
    WindowConfig,
    WindowingError,
    parse_trigger,
    parse_window,
)
from transforms.windows.stage import WindowStampedQuotes

T0 = 1_717_398_000_000_000  # 2024-06-03T07:00:00Z in epoch micros, a whole second
MS = 1_000
S = 1_000_000
ANY = -1  # the home of a quote of a fixed or session window ("its window")


# --------------------------------------------------------------------------- helpers


class QuoteStream:
    """Builds a TestStream of StampedQuotes; tracks the watermark and stamps each quote with it."""

    def __init__(self):
        self._stream = test_stream.TestStream()
        self.watermark_us: int | None = None  # None until the first advance
        self._line = 0

    def add(self, offset_us: int, bid: int, ask: int, symbol: str = "EURUSD", file: int = 0) -> StampedQuote:
        """One quote at T0 + offset_us, in its own add_elements event (its own bundle).

        Event times here are whole milliseconds, so the element timestamp (event_us) is also the
        millisecond ``window_time`` that :class:`transforms.windows.stage.StampQuotes` would give it.
        """
        assert offset_us % 1000 == 0, "keep event times on the millisecond (see windowing.window_time)"
        self._line += 1
        event_us = T0 + offset_us
        arrival_us = event_us if self.watermark_us is None else max(event_us, self.watermark_us)
        quote = StampedQuote(symbol, event_us, arrival_us, self.watermark_us, bid, ask, file, self._line)
        self._stream.add_elements([window.TimestampedValue(quote, Timestamp(micros=event_us))])
        return quote

    def watermark_to(self, offset_us: int) -> None:
        micros = T0 + offset_us
        assert micros % 1000 == 0, "TestStream watermarks are whole milliseconds"
        self.watermark_us = micros
        self._stream.advance_watermark_to(Timestamp(micros=micros))

    def processing_time_by(self, micros: int) -> None:
        self._stream.advance_processing_time(Duration(micros=micros))

    def done(self) -> test_stream.TestStream:
        return self._stream.advance_watermark_to_infinity()


def streaming_pipeline() -> beam.Pipeline:
    return beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions(streaming=True))


def config(window_text: str, trigger: str = "watermark", accumulation: str = "discarding", lateness_us: int = 0):
    return WindowConfig(parse_window(window_text), parse_trigger(trigger), accumulation, lateness_us)


def win(start_off_us: int, end_off_us: int) -> window.IntervalWindow:
    return window.IntervalWindow(Timestamp(micros=T0 + start_off_us), Timestamp(micros=T0 + end_off_us))


def stats(*quotes: StampedQuote, homes: tuple[tuple[int, int], ...] | None = None) -> PaneStats:
    """The expected PaneStats of a pane holding exactly ``quotes`` (oracle, independent of the code)."""

    def key(q):
        return (q.event_us, q.file, q.line)

    first, last = min(quotes, key=key), max(quotes, key=key)
    mids = [q.bid + q.ask for q in quotes]
    spreads = [q.ask - q.bid for q in quotes]
    return PaneStats(
        count=len(quotes),
        first=key(first),
        open2=first.bid + first.ask,
        last=key(last),
        close2=last.bid + last.ask,
        high2=max(mids),
        low2=min(mids),
        spread_sum=sum(spreads),
        spread_max=max(spreads),
        homes=homes if homes is not None else ((ANY, len(quotes)),),
    )


def pane(start_off_us, end_off_us, timing, index, *quotes, symbol="EURUSD", homes=None) -> Pane:
    return Pane(symbol, T0 + start_off_us, T0 + end_off_us, timing, index, stats(*quotes, homes=homes))


def assert_panes(panes, expected: dict, label: str = "panes") -> None:
    """Exactly these panes in exactly these windows (no other window, no other pane)."""
    assert_that(panes, equal_to_per_window(expected), label=label, use_global_window=False)


def summed_to(expected: dict):
    """Matcher: the per-bundle ``counts`` dicts add up to ``expected``."""

    def match(actual):
        total = Counter()
        for counts in actual:
            total.update(counts)
        if dict(total) != expected:
            raise BeamAssertException(f"counts {dict(total)} != {expected}")

    return match


def matches(predicate, description: str):
    def match(actual):
        if not predicate(actual):
            raise BeamAssertException(f"{description}: {actual}")

    return match


# --------------------------------------------------------------------------- 1. on-time panes


def test_fixed_windows_fire_one_on_time_pane_per_window():
    # Control case: nothing is late and there are no early panes, so a naive batch run gives the
    # same panes. It checks that the streaming set-up, the stamps (a quote stamped with a watermark
    # before its window's end is on time) and the stats are right before the other tests rely on it.
    s = QuoteStream()
    a = s.add(100 * MS, 100, 102)
    b = s.add(300 * MS, 104, 105)
    s.watermark_to(500 * MS)
    c = s.add(700 * MS, 98, 102)  # stamped T0+500ms: still on time for [T0, T0+1s)
    s.watermark_to(1000 * MS)  # fires [T0, T0+1s)
    d = s.add(1200 * MS, 110, 111)
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("fixed:1s"))
        assert_panes(out["panes"], {
            win(0, 1 * S): [pane(0, 1 * S, "ON_TIME", 0, a, b, c)],
            win(1 * S, 2 * S): [pane(1 * S, 2 * S, "ON_TIME", 0, d)],
        })
        assert_that(out["late"], equal_to([]), label="late")
    # the oracle, spelled out for the first window: open = a, close = c, high = b, low = c
    assert stats(a, b, c) == PaneStats(3, (a.event_us, 0, 1), 202, (c.event_us, 0, 3), 200, 209, 200, 7, 4, ((ANY, 3),))


def test_sliding_windows_put_each_quote_in_size_over_period_windows():
    # sliding:3s,1s -> every quote is in 3 windows; its home is the earliest (nothing expired).
    # A naive batch run gives the same panes (control case); the test pins window assignment and
    # the home bookkeeping that lets a sliding run count each quote once.
    s = QuoteStream()
    a = s.add(500 * MS, 100, 102)  # windows [-2s,1s), [-1s,2s), [0,3s); home -2s
    b = s.add(1500 * MS, 101, 103)  # windows [-1s,2s), [0,3s), [1s,4s); home -1s
    home_a, home_b = T0 - 2 * S, T0 - 1 * S
    both = ((home_a, 1), (home_b, 1))
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("sliding:3s,1s"))
        assert_panes(out["panes"], {
            win(-2 * S, 1 * S): [pane(-2 * S, 1 * S, "ON_TIME", 0, a, homes=((home_a, 1),))],
            win(-1 * S, 2 * S): [pane(-1 * S, 2 * S, "ON_TIME", 0, a, b, homes=both)],
            win(0, 3 * S): [pane(0, 3 * S, "ON_TIME", 0, a, b, homes=both)],
            win(1 * S, 4 * S): [pane(1 * S, 4 * S, "ON_TIME", 0, b, homes=((home_b, 1),))],
        })
        assert_that(out["panes"], matches(lambda ps: sum(p.stats.count for p in ps) == 2 * 3,
                                           "each quote in size/period = 3 windows"), label="memberships")
        assert_that(out["panes"], matches(lambda ps: sum(p.home_count for p in ps) == 2,
                                           "home_count sums to the quotes"), label="home counts")


def test_session_windows_close_after_the_gap():
    # session:500ms: quotes 200 ms apart share a session; a 700 ms silence closes it. The first
    # session fires when the watermark passes its end, while the second is still open. A naive
    # batch run gives the same two panes (control case).
    s = QuoteStream()
    a = s.add(0, 100, 102)
    b = s.add(200 * MS, 101, 105)
    s.watermark_to(700 * MS)  # == end of [T0, T0+700ms): its on-time pane fires
    c = s.add(1000 * MS, 99, 100)  # stamped 700 ms: a new session, not late
    d = s.add(1300 * MS, 102, 103)
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("session:500ms"))
        assert_panes(out["panes"], {
            win(0, 700 * MS): [pane(0, 700 * MS, "ON_TIME", 0, a, b)],
            win(1000 * MS, 1800 * MS): [pane(1000 * MS, 1800 * MS, "ON_TIME", 0, c, d)],
        })
        assert_that(out["late"], equal_to([]), label="late")


# --------------------------------------------------------------------------- 2. late panes


@pytest.mark.parametrize("accumulation", ["discarding", "accumulating"])
def test_late_quotes_within_allowed_lateness_fire_late_panes(accumulation):
    # fixed:1s, allowed lateness 2s. Two quotes on time; the watermark passes the window end (the
    # ON_TIME pane fires); then two quotes of that window arrive, each in its own bundle: each
    # fires a LATE pane (late trigger AfterCount(1)).
    # Naive batch: one ON_TIME pane of 4 quotes, no LATE pane at all.
    s = QuoteStream()
    a = s.add(100 * MS, 100, 102)
    b = s.add(400 * MS, 104, 106)
    s.watermark_to(1000 * MS)
    c = s.add(700 * MS, 90, 92)  # stamped T0+1s <= end + 2s: admitted, late
    s.watermark_to(1500 * MS)
    d = s.add(800 * MS, 95, 97)  # stamped T0+1.5s: admitted, late
    s.watermark_to(2000 * MS)
    if accumulation == "discarding":
        # each late pane holds only the new quote
        late1, late2 = pane(0, S, "LATE", 1, c), pane(0, S, "LATE", 2, d)
        assert (late1.stats.count, late1.stats.open2, late2.stats.count, late2.stats.open2) == (1, 182, 1, 192)
    else:
        # each late pane holds every quote of the window so far: count = previous + 1; the open
        # stays a (earliest event), the close is the latest event time in the pane
        late1, late2 = pane(0, S, "LATE", 1, a, b, c), pane(0, S, "LATE", 2, a, b, c, d)
        assert (late1.stats.count, late1.stats.open2, late1.stats.close2) == (3, 202, 182)
        assert (late2.stats.count, late2.stats.open2, late2.stats.close2, late2.stats.low2) == (4, 202, 192, 182)
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("fixed:1s", accumulation=accumulation, lateness_us=2 * S))
        assert_panes(out["panes"], {win(0, S): [pane(0, S, "ON_TIME", 0, a, b), late1, late2]})
        assert_that(out["late"], equal_to([]), label="late")
        assert_that(out["counts"], summed_to({"windowed_quotes": 4}), label="counts")


# --------------------------------------------------------------------------- 3. past lateness


@pytest.mark.parametrize(
    "lateness_us, watermark_off_us, admitted",
    [
        pytest.param(0, 1000 * MS, True, id="lateness0-watermark-at-end-is-late-pane"),
        pytest.param(0, 1001 * MS, False, id="lateness0-1ms-past-end-is-dropped"),
        pytest.param(500 * MS, 1500 * MS, True, id="lateness500ms-at-deadline-is-late-pane"),
        pytest.param(500 * MS, 1501 * MS, False, id="lateness500ms-1ms-past-deadline-is-dropped"),
    ],
)
def test_lateness_deadline_boundary(lateness_us, watermark_off_us, admitted):
    # window [T0, T0+1s). A quote stamped with watermark <= end + lateness makes a LATE pane;
    # 1 ms more and it goes to `late`, in no pane.
    # Naive batch: the quote would simply be in the single ON_TIME pane with the first one.
    s = QuoteStream()
    a = s.add(100 * MS, 100, 102)
    s.watermark_to(watermark_off_us)
    b = s.add(200 * MS, 100, 104)
    s.watermark_to(3000 * MS)
    expected = [pane(0, S, "ON_TIME", 0, a)]
    if admitted:
        expected.append(pane(0, S, "LATE", 1, b))
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("fixed:1s", lateness_us=lateness_us))
        assert_panes(out["panes"], {win(0, S): expected})
        assert_that(out["late"], equal_to([] if admitted else [b]), label="late")
        counts = {"windowed_quotes": 2} if admitted else {"windowed_quotes": 1}  # the other is in `late`
        assert_that(out["counts"], summed_to(counts), label="counts")


def test_quote_past_deadline_goes_to_late_output_and_leaves_panes_alone():
    # accumulating, lateness 1s: a late quote inside the lateness is in the LATE pane; one after
    # end + lateness is only in `late` - it does not appear in any pane, nor in later accumulated
    # panes of that window. The next window is unaffected.
    # Naive batch: one ON_TIME pane of all 4 quotes in [T0, T0+1s), nothing in `late`.
    s = QuoteStream()
    a = s.add(100 * MS, 100, 102)
    s.watermark_to(1000 * MS)
    b = s.add(200 * MS, 101, 103)  # admitted: LATE pane
    s.watermark_to(2001 * MS)  # > end 1s + lateness 1s
    dropped = s.add(300 * MS, 50, 60)
    dropped2 = s.add(999 * MS, 50, 60)
    c = s.add(2500 * MS, 120, 121)  # another window, on time
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("fixed:1s", accumulation="accumulating", lateness_us=1 * S))
        assert_panes(out["panes"], {
            win(0, S): [pane(0, S, "ON_TIME", 0, a), pane(0, S, "LATE", 1, a, b)],
            win(2 * S, 3 * S): [pane(2 * S, 3 * S, "ON_TIME", 0, c)],
        })
        assert_that(out["late"], equal_to([dropped, dropped2]), label="late")
        assert_that(out["counts"], summed_to({"windowed_quotes": 3}), label="counts")


# --------------------------------------------------------------------------- 4. early panes


@pytest.mark.parametrize("accumulation", ["discarding", "accumulating"])
def test_early_panes_by_count(accumulation):
    # early:2, 5 quotes in [T0, T0+1s), one per bundle: EARLY after the 2nd and 4th quote, then
    # the ON_TIME pane at the watermark with the rest (discarding) or everything (accumulating).
    # Naive batch: a single ON_TIME pane, index 0, of 5 quotes.
    s = QuoteStream()
    q = [s.add(i * 100 * MS, 100 + i, 102 + i) for i in range(5)]
    s.watermark_to(1000 * MS)
    if accumulation == "discarding":
        expected = [pane(0, S, "EARLY", 0, q[0], q[1]), pane(0, S, "EARLY", 1, q[2], q[3]),
                    pane(0, S, "ON_TIME", 2, q[4])]
    else:
        expected = [pane(0, S, "EARLY", 0, *q[:2]), pane(0, S, "EARLY", 1, *q[:4]),
                    pane(0, S, "ON_TIME", 2, *q)]
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("fixed:1s", trigger="early:2", accumulation=accumulation))
        assert_panes(out["panes"], {win(0, S): expected})


@pytest.mark.parametrize("trigger, delay_us", [("early:1s", 1 * S), ("early:2s", 2 * S)])
def test_early_panes_by_processing_time(trigger, delay_us):
    # early:DELAY: an EARLY pane DELAY of processing time after a pane's first quote. Half the delay
    # after the first quote nothing fires; at 1.5x delay the EARLY pane fires with both quotes; the
    # third quote (its own delay not reached) is in the ON_TIME pane.
    # Naive batch: one ON_TIME pane, index 0, of 3 quotes.
    s = QuoteStream()
    a = s.add(100 * MS, 100, 102)
    s.processing_time_by(delay_us // 2)
    b = s.add(200 * MS, 101, 103)
    s.processing_time_by(delay_us)  # 1.5 x delay since a
    c = s.add(300 * MS, 102, 104)
    s.processing_time_by(delay_us // 2)  # 0.5 x delay since c
    s.watermark_to(1000 * MS)
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("fixed:1s", trigger=trigger))
        assert_panes(out["panes"], {win(0, S): [pane(0, S, "EARLY", 0, a, b), pane(0, S, "ON_TIME", 1, c)]})


def test_early_panes_by_processing_time_need_whole_seconds():
    # Beam's AfterProcessingTime crosses the runner API in whole seconds: a 500 ms delay would
    # become a crash (a float) or 0 s, so it is refused when the flag is read.
    with pytest.raises(WindowingError, match="whole number of seconds"):
        parse_trigger("early:500ms")


# --------------------------------------------------------------------------- 5. session merge


@pytest.mark.parametrize("accumulation", ["discarding", "accumulating"])
def test_late_quote_bridging_two_fired_sessions_merges_them(accumulation):
    # session:500ms, lateness 5s. Sessions [0,700ms) (a, b) and [1s,1.5s) (c) both fire ON_TIME.
    # Then d at 600ms arrives late (watermark 2s): its proto-session [600ms,1.1s) overlaps both,
    # so Beam merges all three into [0, 1.5s) and fires a LATE pane of the merged window.
    # Beam does not carry pane indexes across a merge, so that pane's index is 0 again.
    # Discarding: a, b, c were already emitted, the merged pane holds d only; accumulating: all 4.
    # Naive batch: a single ON_TIME pane of [0, 1.5s) with 4 quotes and no separate sessions.
    s = QuoteStream()
    a = s.add(0, 100, 102)
    b = s.add(200 * MS, 100, 104)
    c = s.add(1000 * MS, 100, 106)
    s.watermark_to(2000 * MS)
    d = s.add(600 * MS, 100, 108)
    s.watermark_to(2100 * MS)
    merged = pane(0, 1500 * MS, "LATE", 0, *((d,) if accumulation == "discarding" else (a, b, c, d)))
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("session:500ms", accumulation=accumulation, lateness_us=5 * S))
        assert_panes(out["panes"], {
            win(0, 700 * MS): [pane(0, 700 * MS, "ON_TIME", 0, a, b)],
            win(1000 * MS, 1500 * MS): [pane(1000 * MS, 1500 * MS, "ON_TIME", 0, c)],
            win(0, 1500 * MS): [merged],
        })
        assert_that(out["late"], equal_to([]), label="late")
    if accumulation == "accumulating":
        assert (merged.stats.count, merged.stats.open2, merged.stats.close2, merged.stats.high2) == (4, 202, 206, 208)


# --------------------------------------------------------------------------- 6. symbols


def test_symbols_do_not_interfere():
    # accumulating, lateness 2s: EURUSD and GBPUSD share [T0, T0+1s) but are separate panes; a late
    # EURUSD quote fires a LATE pane of EURUSD's quotes only (GBPUSD gets no extra pane, and its
    # quotes are not in EURUSD's panes); a dropped EURUSD quote goes to `late` and touches neither.
    # Naive batch: one ON_TIME pane per symbol, EURUSD with 3 quotes, no LATE pane, nothing dropped.
    s = QuoteStream()
    e1 = s.add(100 * MS, 100, 102, symbol="EURUSD")
    g1 = s.add(150 * MS, 200, 204, symbol="GBPUSD")
    e2 = s.add(500 * MS, 101, 103, symbol="EURUSD")
    g2 = s.add(600 * MS, 199, 201, symbol="GBPUSD")
    s.watermark_to(1000 * MS)
    e3 = s.add(900 * MS, 90, 91, symbol="EURUSD")  # late, admitted
    s.watermark_to(3001 * MS)
    e4 = s.add(950 * MS, 90, 91, symbol="EURUSD")  # past the deadline: dropped
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("fixed:1s", accumulation="accumulating", lateness_us=2 * S))
        assert_panes(out["panes"], {
            win(0, S): [
                pane(0, S, "ON_TIME", 0, e1, e2, symbol="EURUSD"),
                pane(0, S, "LATE", 1, e1, e2, e3, symbol="EURUSD"),
                pane(0, S, "ON_TIME", 0, g1, g2, symbol="GBPUSD"),
            ],
        })
        assert_that(out["late"], equal_to([e4]), label="late")


# --------------------------------------------------------------------------- 7. counts


def test_counts_add_up_and_sliding_partially_late_quotes_are_counted():
    # sliding:2s,1s, lateness 0. a, b, c on time. d (1.6s) arrives stamped 2.5s: its window
    # [0,2s) expired, [1s,3s) did not -> windowed, counted partially_late, home [1s,3s), and
    # absent from [0,2s). e (1.8s) stamped 3.5s: both its windows expired -> `late`.
    # windowed_quotes + quotes in `late` = 4 + 1 = 5 quotes in.
    # Naive batch: d in both [0,2s) and [1s,3s), e in both too, nothing partially late or dropped:
    # [0,2s) would have 5 quotes and [1s,3s) 4.
    s = QuoteStream()
    a = s.add(500 * MS, 100, 102)  # [-1s,1s), [0,2s); home -1s
    b = s.add(1500 * MS, 101, 103)  # [0,2s), [1s,3s); home 0
    c = s.add(1700 * MS, 102, 104)  # [0,2s), [1s,3s); home 0
    s.watermark_to(2500 * MS)  # fires [-1s,1s) and [0,2s)
    d = s.add(1600 * MS, 110, 112)
    s.watermark_to(3500 * MS)
    e = s.add(1800 * MS, 120, 122)
    h_prev, h0, h1 = T0 - S, T0, T0 + S
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("sliding:2s,1s"))
        assert_panes(out["panes"], {
            win(-S, S): [pane(-S, S, "ON_TIME", 0, a, homes=((h_prev, 1),))],
            win(0, 2 * S): [pane(0, 2 * S, "ON_TIME", 0, a, b, c, homes=((h_prev, 1), (h0, 2)))],
            win(S, 3 * S): [pane(S, 3 * S, "ON_TIME", 0, b, c, d, homes=((h0, 2), (h1, 1)))],
        })
        assert_that(out["late"], equal_to([e]), label="late")
        assert_that(out["counts"], summed_to({"windowed_quotes": 4, "partially_late": 1}),
                    label="counts")
        assert_that(out["panes"], matches(lambda ps: sum(p.home_count for p in ps) == 4,
                                           "home_count sums to windowed_quotes"), label="home counts")


# --------------------------------------------------------------------------- 8. event-time OHLC


def test_open_and_close_follow_event_time_not_arrival_order():
    # accumulating, lateness 2s. Arrival order: x(500ms), y(800ms), z(200ms), w(600ms): z arrives
    # third but is the earliest, so it is the open; y is the close. After the ON_TIME pane, a late
    # quote v at 50ms (file 1) and u at 50ms (file 0, arriving after v) are earlier still: the LATE
    # panes open with v, then with u (same instant, lower file wins the tie), close still y.
    # Naive batch: one ON_TIME pane with open u and 6 quotes; an arrival-order OHLC would open with x.
    s = QuoteStream()
    x = s.add(500 * MS, 100, 102)  # mid2 202
    y = s.add(800 * MS, 104, 106)  # mid2 210
    z = s.add(200 * MS, 90, 92)  # mid2 182
    w = s.add(600 * MS, 120, 124)  # mid2 244, spread 4
    s.watermark_to(1000 * MS)
    v = s.add(50 * MS, 80, 81, file=1)  # mid2 161
    u = s.add(50 * MS, 70, 72, file=0)  # mid2 142
    on_time = Pane("EURUSD", T0, T0 + S, "ON_TIME", 0, PaneStats(
        4, (z.event_us, 0, 3), 182, (y.event_us, 0, 2), 210, 244, 182, 2 + 2 + 2 + 4, 4, ((ANY, 4),)))
    late1 = Pane("EURUSD", T0, T0 + S, "LATE", 1, PaneStats(
        5, (v.event_us, 1, 5), 161, (y.event_us, 0, 2), 210, 244, 161, 11, 4, ((ANY, 5),)))
    late2 = Pane("EURUSD", T0, T0 + S, "LATE", 2, PaneStats(
        6, (u.event_us, 0, 6), 142, (y.event_us, 0, 2), 210, 244, 142, 13, 4, ((ANY, 6),)))
    # the literal panes agree with the oracle
    assert (on_time, late1, late2) == (pane(0, S, "ON_TIME", 0, x, y, z, w), pane(0, S, "LATE", 1, x, y, z, w, v),
                                       pane(0, S, "LATE", 2, x, y, z, w, v, u))
    with streaming_pipeline() as p:
        out = p | s.done() | WindowStampedQuotes(config("fixed:1s", accumulation="accumulating", lateness_us=2 * S))
        assert_panes(out["panes"], {win(0, S): [on_time, late1, late2]})


# --------------------------------------------------------------------------- portability


@pytest.mark.parametrize(
    "spec, urn",
    [
        ("fixed:1s", "beam:window_fn:fixed_windows:v1"),
        ("sliding:10s,1s", "beam:window_fn:sliding_windows:v1"),
        ("session:500ms", "beam:window_fn:session_windows:v1"),
    ],
)
@pytest.mark.parametrize("trigger, early", [("watermark", None), ("early:100", "element_count"), ("early:2s", "after_processing_time")])
def test_windowing_is_standard_runner_api_that_flink_and_dataflow_understand(spec, urn, trigger, early):
    # Flink and Dataflow run the grouping themselves: the window fn and trigger must be Beam's
    # standard protos, not pickled Python. A Python-only WindowFn or a float trigger delay (the
    # early:500ms bug) would fail or fall back to pickling here.
    from apache_beam.portability.api import beam_runner_api_pb2

    p = beam.Pipeline(options=PipelineOptions(streaming=True))
    _ = p | beam.Create([]) | WindowStampedQuotes(config(spec, trigger=trigger, accumulation="accumulating", lateness_us=2 * S))
    components = p.to_runner_api().components
    (window_into,) = [t for t in components.transforms.values() if t.unique_name.endswith("WindowStampedQuotes/Window")]
    (output,) = window_into.outputs.values()
    strategy = components.windowing_strategies[components.pcollections[output].windowing_strategy_id]
    assert strategy.window_fn.urn == urn
    assert strategy.allowed_lateness == 2000  # milliseconds
    assert strategy.accumulation_mode == beam_runner_api_pb2.AccumulationMode.ACCUMULATING
    after_end = strategy.trigger.after_end_of_window
    # Beam stores the repeated sub-triggers of AfterWatermark unwrapped (they repeat by definition).
    assert after_end.late_firings.element_count.element_count == 1
    if early is None:
        assert not after_end.HasField("early_firings")
    else:
        assert after_end.early_firings.WhichOneof("trigger") == early
