"""transforms.windows.logic: durations, flag parsers, window assignment against Beam, the lateness rule,
mergeable pane statistics and the ``windows.jsonl`` / ``late.jsonl`` formats.

Window assignment and the expiry rule are compared with Beam itself (``FixedWindows``,
``SlidingWindows``, ``Sessions`` assigning the element timestamp the pipeline gives a quote,
``window_time(event_us)``, and ``GeneralTriggerDriver``'s ``input_watermark > window.end +
allowed_lateness``); statistics and numbers with oracles written from the docstrings (exact
fractions, plain lists). ``TestFoundBugs`` pins what the properties found (all fixed).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from apache_beam.transforms.window import FixedWindows, IntervalWindow, Sessions, SlidingWindows, WindowFn
from apache_beam.utils.timestamp import Duration, Timestamp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from transforms.windows import format as fmt
from transforms.windows import logic as w
from transforms.windows.logic import (
    ANY_WINDOW,
    INFINITE,
    Pane,
    PaneQuote,
    StampedQuote,
    TriggerSpec,
    WindowConfig,
    WindowingError,
    WindowSpec,
)

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=60)

MS, S, MIN = 1_000, 1_000_000, 60_000_000
T0 = 1_717_398_000_000_000  # 2024-06-03 07:00:00 UTC
EPOCH = datetime(1970, 1, 1)


# --------------------------------------------------------------------------- durations


class TestDurations:
    @pytest.mark.parametrize(
        "text, micros",
        [
            ("100ms", 100 * MS),
            ("1.5s", 1_500 * MS),
            ("2m", 2 * MIN),
            ("1.25m", 75 * S),
            ("0.001s", 1 * MS),
            ("0.0005m", 30 * MS),
            ("0ms", 0),
            ("1.000s", S),
            ("007s", 7 * S),
            (" 2 M ", 2 * MIN),
            ("\t250 ms\n", 250 * MS),
            ("3S", 3 * S),
            ("10MS", 10 * MS),
        ],
    )
    def test_valid_spellings(self, text, micros):
        value = w.parse_duration(text, "--flag")
        assert value == micros and type(value) is int

    @pytest.mark.parametrize("text", ["0.5ms", "1.5ms", "1.0005s", "0.0000001m", "0.000001s", "1.0001s"])
    def test_sub_millisecond_values_are_rejected(self, text):
        with pytest.raises(WindowingError, match=r"^--flag: .* is not a whole number of milliseconds$"):
            w.parse_duration(text, "--flag")

    @pytest.mark.parametrize(
        "text",
        ["", " ", "ms", "1", "1h", "1e3ms", "1,5s", "s1", ".5s", "1.s", "1 .5s", "-1s", "+1s", "1ss", "nan",
         "1.5.0s", "1us", "1 000ms", "0x10ms", "inf", "infinite", "-inf", "∞"],
    )
    def test_garbage_and_negative_are_rejected_naming_the_flag(self, text):
        with pytest.raises(WindowingError, match=r"^--flag: .* is not a duration such as 50ms, 2s or 1m$"):
            w.parse_duration(text, "--flag")

    @pytest.mark.parametrize("text", ["inf", " INF ", "Infinite", "infinite\n"])
    def test_infinity_only_when_allowed(self, text):
        assert w.parse_duration(text, "--lag", allow_infinite=True) == math.inf
        with pytest.raises(WindowingError, match="^--lag: "):
            w.parse_duration(text, "--lag")

    @pytest.mark.parametrize("text", ["-inf", "inf ms", "1inf", "-1s", "nan"])
    def test_allowing_infinity_still_rejects_garbage_and_says_so(self, text):
        with pytest.raises(WindowingError, match=r"is not a duration such as 50ms, 2s or 1m, or inf$"):
            w.parse_duration(text, "--lag", allow_infinite=True)

    @SETTINGS
    @given(
        st.integers(0, 10**9),
        st.text("0123456789", max_size=9),
        st.sampled_from(["ms", "s", "m"]),
        st.sampled_from(["", " ", "\t"]),
    )
    def test_decimal_spellings_match_an_exact_fraction_oracle(self, whole, digits, unit, pad):
        text = f"{pad}{whole}{'.' + digits if digits else ''}{pad}{unit}{pad}"
        exact = Fraction(f"{whole}.{digits or '0'}") * {"ms": MS, "s": S, "m": MIN}[unit]
        if exact.denominator == 1 and exact % 1000 == 0:
            assert w.parse_duration(text, "--flag") == exact
        else:
            with pytest.raises(WindowingError, match="not a whole number of milliseconds"):
                w.parse_duration(text, "--flag")

    @SETTINGS
    @given(st.one_of(st.integers(0, w.MAX_DURATION_US // MS), st.integers(0, 10**6).map(lambda n: n * 60_000)))
    def test_duration_text_round_trips_in_the_largest_exact_unit(self, millis):
        micros = millis * MS
        text = w.duration_text(micros)
        number, unit = re.fullmatch(r"(\d+)(ms|s|m)", text).groups()
        assert w.parse_duration(text, "--x") == micros
        assert w.parse_duration(text, "--x", allow_infinite=True) == micros
        assert not (len(number) > 1 and number.startswith("0"))
        if micros:  # never spelt in a smaller unit than one that divides it
            assert unit == ("m" if micros % MIN == 0 else "s" if micros % S == 0 else "ms")

    def test_duration_text_examples_and_infinity(self):
        assert [w.duration_text(v) for v in (1_500_000, 0, 60 * S, 90 * S, 1 * MS, 120 * MIN)] == [
            "1500ms", "0ms", "1m", "90s", "1ms", "120m"]
        assert w.duration_text(INFINITE) == "inf"
        assert w.parse_duration(w.duration_text(INFINITE), "--x", allow_infinite=True) == INFINITE


# --------------------------------------------------------------------------- flag parsers


class TestParseWindow:
    @pytest.mark.parametrize(
        "text, spec",
        [
            ("fixed:1s", WindowSpec("fixed", size_us=S)),
            ("FIXED:1.5m", WindowSpec("fixed", size_us=90 * S)),
            ("sliding:10s,1s", WindowSpec("sliding", size_us=10 * S, period_us=S)),
            (" Sliding : 10s , 250ms ", WindowSpec("sliding", size_us=10 * S, period_us=250 * MS)),
            ("sliding:1s,1s", WindowSpec("sliding", size_us=S, period_us=S)),
            ("sliding:1s,300ms", WindowSpec("sliding", size_us=S, period_us=300 * MS)),
            ("session:500ms", WindowSpec("session", gap_us=500 * MS)),
            ("session:1ms", WindowSpec("session", gap_us=MS)),
        ],
    )
    def test_valid_forms(self, text, spec):
        assert w.parse_window(text) == spec

    @pytest.mark.parametrize(
        "text",
        [
            "", "fixed", "fixed:", "fixed:1s,2s", "fixed:1s,", "sliding:10s", "sliding:10s,", "sliding:10s,1s,1s",
            "session:", "session:1s,1s", "tumbling:1s", ":1s", "global", "fixed:1x", "fixed:-1s", "fixed:inf",
            "session:inf", "fixed:0.5ms", "fixed:0s", "session:0ms", "sliding:0s,0s", "sliding:10s,0ms",
            "sliding:1s,2s", "fixed;1s", "fixed=1s",
        ],
    )
    def test_every_invalid_form_names_the_flag(self, text):
        with pytest.raises(WindowingError, match="--window"):
            w.parse_window(text)

    @SETTINGS
    @given(st.integers(1, 10**7), st.integers(1, 10**7), st.sampled_from(w.KINDS))
    def test_text_parses_back_to_the_same_spec(self, a, b, kind):
        if kind == "fixed":
            spec = WindowSpec("fixed", size_us=a * MS)
        elif kind == "sliding":
            spec = WindowSpec("sliding", size_us=max(a, b) * MS, period_us=min(a, b) * MS)
        else:
            spec = WindowSpec("session", gap_us=a * MS)
        assert w.parse_window(spec.text()) == spec

    @pytest.mark.parametrize(
        "kwargs",
        [dict(kind="hopping", size_us=S), dict(kind="fixed"), dict(kind="sliding", size_us=S),
         dict(kind="sliding", size_us=S, period_us=2 * S), dict(kind="session"), dict(kind="session", gap_us=-1)],
    )
    def test_spec_validation(self, kwargs):
        with pytest.raises(WindowingError):
            WindowSpec(**kwargs)


class TestParseTrigger:
    @pytest.mark.parametrize(
        "text, spec",
        [
            ("watermark", TriggerSpec()),
            (" WaterMark ", TriggerSpec()),
            ("early:100", TriggerSpec(early_count=100)),
            ("early:1", TriggerSpec(early_count=1)),
            ("early: 7 ", TriggerSpec(early_count=7)),
            ("early:1s", TriggerSpec(early_delay_us=S)),
            ("EARLY:2S", TriggerSpec(early_delay_us=2 * S)),
            ("early:3000ms", TriggerSpec(early_delay_us=3 * S)),
            ("early:1.5m", TriggerSpec(early_delay_us=90 * S)),
        ],
    )
    def test_valid_forms(self, text, spec):
        assert w.parse_trigger(text) == spec
        assert w.parse_trigger(spec.text()) == spec

    @pytest.mark.parametrize(
        "text",
        ["", "early", "early:", "early:0", "early:-1", "early:1x", "early:inf", "early:0.5ms", "early:1.5",
         "late:1", "watermark:1", "always", "early:1s,2s", "early=5", "early:1e3",
         # delays travel to Beam's AfterProcessingTime in whole seconds
         "early:0ms", "early:0s", "early:0.000m", "early:500ms", "early:1.5s", "early:1001ms"],
    )
    def test_every_invalid_form_names_the_flag(self, text):
        with pytest.raises(WindowingError, match="--trigger"):
            w.parse_trigger(text)

    def test_spec_validation_and_early_panes(self):
        with pytest.raises(WindowingError):
            TriggerSpec(early_count=2, early_delay_us=S)
        for delay in (-S, 0, MS, 1_500 * MS):
            with pytest.raises(WindowingError):
                TriggerSpec(early_delay_us=delay)
        assert not TriggerSpec().has_early_panes
        assert TriggerSpec(early_count=1).has_early_panes and TriggerSpec(early_delay_us=S).has_early_panes


class TestWindowConfig:
    def test_validation_and_dict(self):
        with pytest.raises(WindowingError, match="--accumulation"):
            WindowConfig(WindowSpec("fixed", size_us=S), accumulation="retracting")
        with pytest.raises(WindowingError):
            WindowConfig(WindowSpec("fixed", size_us=S), allowed_lateness_us=-1)
        config = WindowConfig(w.parse_window("sliding:10s,1s"), w.parse_trigger("early:1s"), "accumulating", 90 * S)
        assert config.as_dict() == {
            "window": "sliding:10s,1s", "trigger": "early:1s", "accumulation": "accumulating",
            "allowed_lateness": "90s"}

    def test_deadline_is_last_window_end_plus_lateness(self):
        # 12.5 s: fixed [12 s, 13 s); sliding 10s,1s: [3 s, 13 s) .. [12 s, 22 s); session [12.5 s, 13 s)
        assert WindowConfig(WindowSpec("fixed", size_us=S), allowed_lateness_us=2 * S).deadline(12_500 * MS) == 15 * S
        sliding = WindowSpec("sliding", size_us=10 * S, period_us=S)
        assert WindowConfig(sliding, allowed_lateness_us=2 * S).deadline(12_500 * MS) == 24 * S
        session = WindowSpec("session", gap_us=500 * MS)
        assert WindowConfig(session).deadline(12_500 * MS) == 13 * S


# --------------------------------------------------------------------------- window assignment vs Beam


@st.composite
def window_specs(draw, kinds=w.KINDS):
    kind = draw(st.sampled_from(kinds))
    millis = st.one_of(st.integers(1, 5), st.integers(1, 100_000), st.sampled_from([1000, 60_000, 86_400_000]))
    if kind == "fixed":
        return WindowSpec("fixed", size_us=draw(millis) * MS)
    if kind == "sliding":
        period = draw(millis)  # at most 20 windows a quote, some sizes not a multiple of the period
        size = draw(st.one_of(st.just(period), st.integers(1, 20).map(lambda k: k * period),
                              st.integers(period, 20 * period)))
        return WindowSpec("sliding", size_us=size * MS, period_us=period * MS)
    return WindowSpec("session", gap_us=draw(millis) * MS)


@st.composite
def event_times(draw, spec: WindowSpec):
    """Any time, or one at or next to a window boundary (a multiple of the size or period)."""
    unit = spec.period_us or spec.size_us or spec.gap_us
    near = st.builds(lambda k, d: k * unit + d, st.integers(-(10**6), 10**6), st.sampled_from([0, 1, -1, 999, 1000]))
    return draw(st.one_of(st.integers(-(10**17), 10**17), st.integers(-(10**7), 10**7), near, st.just(0)))


def beam_windows(spec: WindowSpec, event_us: int, *, to_the_ms: bool = True) -> list[tuple[int, int]]:
    """Beam's windows for a quote at ``event_us``: by default at the element timestamp the pipeline
    gives it (``window_time``: down to the millisecond, see ``transforms.windows.stage._StampFn``)."""
    timestamp = Timestamp(micros=w.window_time(event_us) if to_the_ms else event_us)
    if spec.kind == "fixed":
        fn = FixedWindows(Duration(micros=spec.size_us))
    elif spec.kind == "sliding":
        fn = SlidingWindows(Duration(micros=spec.size_us), Duration(micros=spec.period_us))
    else:
        fn = Sessions(Duration(micros=spec.gap_us))
    return [(win.start.micros, win.end.micros) for win in fn.assign(WindowFn.AssignContext(timestamp))]


class TestWindowsMatchBeam:
    @SETTINGS
    @given(st.data())
    def test_windows_and_last_end_are_beams(self, data):
        spec = data.draw(window_specs())
        event_us = data.draw(event_times(spec))
        windows = spec.windows(event_us)
        assert windows == beam_windows(spec, event_us)
        assert spec.last_end(event_us) == max(end for _, end in windows)
        if spec.kind != "session":  # whole-ms sizes: the millisecond does not matter to the windows
            assert windows == beam_windows(spec, event_us, to_the_ms=False)
        # each window holds the quote's millisecond, end exclusive; the count is what the shape implies
        ms = w.window_time(event_us)
        assert all(start <= ms < end and end - start == (spec.size_us or spec.gap_us) and start % MS == 0
                   for start, end in windows)
        if spec.kind == "sliding":
            assert len(windows) in (spec.size_us // spec.period_us, -(-spec.size_us // spec.period_us))
        else:
            assert len(windows) == 1

    @pytest.mark.parametrize(
        "spec, event_us, expected",
        [
            (WindowSpec("fixed", size_us=S), 0, [(0, S)]),
            (WindowSpec("fixed", size_us=S), S - 1, [(0, S)]),
            (WindowSpec("fixed", size_us=S), S, [(S, 2 * S)]),
            (WindowSpec("fixed", size_us=S), -1, [(-S, 0)]),
            (WindowSpec("sliding", size_us=3 * MS, period_us=2 * MS), -2500, [(-4000, -1000)]),
            (WindowSpec("sliding", size_us=3 * MS, period_us=2 * MS), 2500, [(2000, 5000), (0, 3000)]),
            (WindowSpec("session", gap_us=5 * MS), -2500, [(-3000, 2000)]),
            (WindowSpec("session", gap_us=5 * MS), -2000, [(-2000, 3000)]),
            (WindowSpec("session", gap_us=S), T0 + 322_001, [(T0 + 322_000, T0 + 1_322_000)]),
        ],
    )
    def test_hand_worked_assignments(self, spec, event_us, expected):
        assert spec.windows(event_us) == expected == beam_windows(spec, event_us)

    @pytest.mark.parametrize(
        "micros, expected", [(0, 0), (999, 0), (1000, 1000), (T0 + 322_001, T0 + 322_000), (-1, -1000), (-1000, -1000),
                             (-1001, -2000)])
    def test_window_time_is_the_millisecond_below(self, micros, expected):
        assert w.window_time(micros) == expected

    @SETTINGS
    @given(st.integers(-(10**17), 10**17))
    def test_window_time_floors(self, micros):
        ms = w.window_time(micros)
        assert ms % MS == 0 and ms <= micros < ms + MS


# --------------------------------------------------------------------------- the lateness rule


class TestLatenessRule:
    @pytest.mark.parametrize("lateness", [0, 1 * MS, 90 * S])
    def test_expiry_boundary(self, lateness):
        end = T0 + S
        assert not w.is_expired(end, end + lateness, lateness)
        assert w.is_expired(end, end + lateness + 1, lateness)
        assert not w.is_expired(end, end - 1, lateness)
        assert not w.is_expired(end, None, lateness)

    @SETTINGS
    @given(st.integers(-(10**15), 10**15), st.integers(-(10**15), 10**15), st.integers(0, 10**12))
    def test_expiry_is_beams_trigger_driver_rule(self, end, watermark, lateness):
        beam_drops = Timestamp(micros=watermark) > IntervalWindow(Timestamp(micros=end - 1), Timestamp(micros=end)).end + Duration(micros=lateness)
        assert w.is_expired(end, watermark, lateness) == beam_drops

    def test_dropped_uses_the_last_sliding_window(self):
        config = WindowConfig(WindowSpec("sliding", size_us=10 * S, period_us=S), allowed_lateness_us=2 * S)
        t = 12_500 * MS  # windows [3 s, 13 s) .. [12 s, 22 s)
        assert not w.is_dropped(t, 15 * S + 1, config)  # first window expired, the others not
        assert w.missed_windows(t, 15 * S + 1, config) == 1
        assert not w.is_dropped(t, 24 * S, config)  # last window: end 22 s + 2 s, exactly
        assert w.is_dropped(t, 24 * S + 1, config)
        assert w.missed_windows(t, 24 * S + 1, config) == 10
        assert not w.is_dropped(t, None, config) and w.missed_windows(t, None, config) == 0

    def test_home_window_and_missed_windows_worked_example(self):
        config = WindowConfig(WindowSpec("sliding", size_us=10 * S, period_us=S))
        t = 12_500 * MS  # ends 13 .. 22 s; a watermark of 16.5 s has passed 13, 14, 15, 16 s
        assert w.missed_windows(t, 16_500 * MS, config) == 4
        assert w.home_window_start(t, 16_500 * MS, config) == 7 * S
        assert w.home_window_start(t, None, config) == 3 * S
        assert w.home_window_start(t, 13 * S, config) == 3 * S  # end == watermark: not expired
        with pytest.raises(ValueError):
            w.home_window_start(t, 22 * S + 1, config)

    @FEWER
    @given(st.data())
    def test_dropped_home_and_missed_against_the_window_list(self, data):
        spec = data.draw(window_specs())
        config = WindowConfig(spec, allowed_lateness_us=data.draw(st.sampled_from([0, MS, 5 * S])))
        event_us = data.draw(event_times(spec))
        ends = [end for _, end in beam_windows(spec, event_us)]
        watermark = data.draw(st.one_of(
            st.none(), st.sampled_from(ends).flatmap(
                lambda end: st.integers(-2, 2).map(lambda d: end + config.allowed_lateness_us + d)),
            st.integers(event_us - 10 * spec.last_end(0) - S, event_us + 10 * spec.last_end(0) + S)))
        alive = [(s, e) for s, e in beam_windows(spec, event_us)
                 if watermark is None or watermark <= e + config.allowed_lateness_us]
        assert w.is_dropped(event_us, watermark, config) == (not alive)
        assert w.missed_windows(event_us, watermark, config) == len(ends) - len(alive)
        if spec.kind != "sliding":
            assert w.home_window_start(event_us, watermark, config) == ANY_WINDOW == -1
        elif alive:
            assert w.home_window_start(event_us, watermark, config) == min(s for s, _ in alive)
        else:
            with pytest.raises(ValueError):
                w.home_window_start(event_us, watermark, config)


class TestWatermarkAfter:
    @pytest.mark.parametrize(
        "arrival, lag, expected",
        [
            (1_234_567, 0, 1_234_000),
            (1_234_000, 0, 1_234_000),
            (1_000_000, 1000, 999_000),
            (1_000_999, 1, 1_000_000),
            (1_000_000, 1, 999_000),
            (1500, 2000, -1000),
            (-1, 0, -1000),
            (-1000, 0, -1000),
            (-1001, 0, -2000),
            (T0 + 120_500, 100 * MS, T0 + 20 * MS),
            (5000, INFINITE, None),
            (-(10**15), INFINITE, None),
        ],
    )
    def test_examples(self, arrival, lag, expected):
        assert w.watermark_after(arrival, lag) == expected

    @SETTINGS
    @given(st.integers(-(10**17), 10**17), st.integers(0, 10**12))
    def test_floors_to_whole_milliseconds(self, arrival, lag_ms):
        stamp = w.watermark_after(arrival, lag_ms * MS)
        assert stamp % 1000 == 0
        assert stamp <= arrival - lag_ms * MS < stamp + 1000
        assert stamp == (arrival - lag_ms * MS) // 1000 * 1000


# --------------------------------------------------------------------------- pane statistics


_QUOTE_FIELDS = st.tuples(
    st.integers(0, 3),  # file
    st.one_of(st.sampled_from([T0, T0 + 1, T0 + 500 * MS]), st.integers(T0 - S, T0 + S)),  # event: ties often
    st.integers(1, 10**12),  # bid
    st.integers(0, 10**6),  # spread
    st.sampled_from([ANY_WINDOW, T0 - S, T0, T0 + S]),  # home
)


def pane_quotes(min_size=1, max_size=20):
    """PaneQuotes with distinct (file, line) keys (lines distinct, in scrambled order); event times
    collide often, to exercise the ties."""
    return st.lists(_QUOTE_FIELDS, min_size=min_size, max_size=max_size).map(
        lambda rows: [
            PaneQuote.of(StampedQuote("X", event, event, None, bid, bid + spread, file, 2 + i * 7919 % 1009), home)
            for i, (file, event, bid, spread, home) in enumerate(rows)
        ])


def oracle_stats(quotes: list[PaneQuote]) -> w.PaneStats:
    """Straight from the list: open/close by (event_us, file, line), homes counted."""
    by_key = sorted(quotes, key=lambda q: (q.event_us, q.file, q.line))
    first, last = by_key[0], by_key[-1]
    return w.PaneStats(
        count=len(quotes),
        first=(first.event_us, first.file, first.line),
        open2=first.mid2,
        last=(last.event_us, last.file, last.line),
        close2=last.mid2,
        high2=max(q.mid2 for q in quotes),
        low2=min(q.mid2 for q in quotes),
        spread_sum=sum(q.spread for q in quotes),
        spread_max=max(q.spread for q in quotes),
        homes=tuple(sorted(Counter(q.home for q in quotes).items())),
    )


def fold(quotes, stats=None):
    for quote in quotes:
        stats = w.add_quote(stats, quote)
    return stats


class TestPaneStats:
    def test_pane_quote_of(self):
        quote = StampedQuote("EURUSD", T0, T0 + 5, T0, bid=110, ask=125, file=2, line=9)
        assert PaneQuote.of(quote, 7) == PaneQuote(T0, 2, 9, 235, 15, 7)
        assert w.stats_of(PaneQuote.of(quote, 7)) == w.PaneStats(1, (T0, 2, 9), 235, (T0, 2, 9), 235, 235, 235, 15, 15,
                                                                ((7, 1),))

    @FEWER
    @given(pane_quotes(), st.randoms(use_true_random=False))
    def test_add_order_does_not_matter(self, quotes, random):
        shuffled = list(quotes)
        random.shuffle(shuffled)
        assert fold(quotes) == fold(shuffled) == oracle_stats(quotes)

    @FEWER
    @given(pane_quotes(min_size=3), st.data())
    def test_merge_is_associative_and_commutative(self, quotes, data):
        cut1 = data.draw(st.integers(1, len(quotes) - 2))
        cut2 = data.draw(st.integers(cut1 + 1, len(quotes) - 1))
        a, b, c = fold(quotes[:cut1]), fold(quotes[cut1:cut2]), fold(quotes[cut2:])
        expected = oracle_stats(quotes)
        assert w.merge_stats(w.merge_stats(a, b), c) == w.merge_stats(a, w.merge_stats(b, c)) == expected
        assert w.merge_stats(a, b) == w.merge_stats(b, a) == oracle_stats(quotes[:cut2])
        assert w.merge_stats(c, w.merge_stats(a, b)) == expected
        assert w.merge_stats(a, None) == w.merge_stats(None, a) == a
        assert w.merge_stats(None, None) is None

    @FEWER
    @given(pane_quotes(max_size=30), st.randoms(use_true_random=False))
    def test_any_merge_tree_gives_the_oracle(self, quotes, random):
        random.shuffle(quotes)
        parts = [w.stats_of(q) for q in quotes] + [None] * random.randint(0, 2)
        while len(parts) > 1:  # merge random pairs, in random argument order
            i, j = random.sample(range(len(parts)), 2)
            merged = w.merge_stats(parts[i], parts[j])
            parts = [p for k, p in enumerate(parts) if k not in (i, j)] + [merged]
        assert parts[0] == oracle_stats(quotes)

    def test_ties_in_event_time_go_by_file_then_line(self):
        q = lambda file, line, bid: PaneQuote.of(StampedQuote("X", T0, T0, None, bid, bid + 2, file, line), ANY_WINDOW)
        quotes = [q(1, 2, 300), q(0, 9, 100), q(0, 3, 200), q(1, 1, 400)]
        for order in (quotes, quotes[::-1], quotes[1:] + quotes[:1]):
            stats = fold(order)
            assert (stats.first, stats.open2) == ((T0, 0, 3), 402)
            assert (stats.last, stats.close2) == ((T0, 1, 2), 602)
            assert (stats.high2, stats.low2, stats.spread_sum, stats.spread_max, stats.homes) == (
                802, 202, 8, 2, ((ANY_WINDOW, 4),))

    def test_home_count_of_a_sliding_pane(self):
        stats = w.PaneStats(6, (T0, 0, 2), 2, (T0, 0, 7), 2, 2, 2, 0, 0, ((T0 - S, 1), (T0, 3), (T0 + S, 2)))
        assert Pane("X", T0, T0 + 10 * S, "ON_TIME", 0, stats).home_count == 3
        assert Pane("X", T0 + 2 * S, T0 + 12 * S, "ON_TIME", 0, stats).home_count == 0

    def test_session_pane_of_a_quote_one_microsecond_before_the_epoch(self):
        # home_count adds homes[ANY_WINDOW] (-1) and homes[start_us]: a window starting at -1 us would
        # count its quotes twice. Windows start on the millisecond (window_time), so none does.
        spec = WindowSpec("session", gap_us=S)
        (start, end), = spec.windows(-1)
        assert (start, end) == (-MS, S - MS)
        home = w.home_window_start(-1, None, WindowConfig(spec))
        stats = w.stats_of(PaneQuote.of(StampedQuote("X", -1, 0, None, 1, 2), home))
        assert Pane("X", start, end, "ON_TIME", 0, stats).home_count == 1

    @FEWER
    @given(pane_quotes().map(lambda qs: [q._replace(home=ANY_WINDOW) for q in qs]), st.integers(0, 10**17))
    def test_home_count_of_a_fixed_or_session_pane_is_its_count(self, quotes, start):
        stats = fold(quotes)
        assert Pane("X", start, start + S, "LATE", 1, stats).home_count == stats.count == len(quotes)


# --------------------------------------------------------------------------- output formats


def _mid_oracle(mid2: int, scale: int) -> Decimal:
    return Decimal(mid2) / 2 / Decimal(10) ** scale  # exact: few digits


def _half_even(value: Fraction, places: int) -> Decimal:
    return Decimal(round(value * 10**places)).scaleb(-places)  # round() on a Fraction is half-even


class TestFormats:
    @pytest.mark.parametrize(
        "micros, text",
        [
            (0, "1970-01-01T00:00:00.000Z"),
            (T0 + 100 * MS, "2024-06-03T07:00:00.100Z"),
            (T0 + 100 * MS + 1, "2024-06-03T07:00:00.100001Z"),
            (T0 + 999_999, "2024-06-03T07:00:00.999999Z"),
            (-1, "1969-12-31T23:59:59.999999Z"),
            (-MS, "1969-12-31T23:59:59.999Z"),
        ],
    )
    def test_iso_utc_examples(self, micros, text):
        assert fmt.iso_utc(micros) == text

    @SETTINGS
    @given(st.integers(-(2 * 10**15), 4 * 10**15))
    def test_iso_utc_reads_back(self, micros):
        text = fmt.iso_utc(micros)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.(\d{3}|\d{6})Z", text)
        assert len(text.split(".")[1]) == (4 if micros % 1000 == 0 else 7)
        assert datetime.fromisoformat(text[:-1]) == EPOCH + timedelta(microseconds=micros)

    @pytest.mark.parametrize(
        "total, count, scale, text",
        [
            (1, 8, 0, "0.12"),  # 0.125 -> even
            (3, 8, 0, "0.38"),  # 0.375 -> even
            (5, 8, 0, "0.62"),
            (1, 3, 0, "0.33"),
            (2, 3, 0, "0.67"),
            (1, 8, 8, "0.0000000012"),
            (3, 8, 8, "0.0000000038"),
            (10**8, 1, 8, "1"),
            (15 * 10**6, 2, 8, "0.075"),
            (0, 4, 8, "0"),
        ],
    )
    def test_mean_text_rounds_half_even(self, total, count, scale, text):
        assert fmt.mean_text(total, count, scale) == text

    @SETTINGS
    @given(st.integers(0, 10**15), st.integers(1, 10**5), st.integers(0, 10), st.integers(0, 4))
    def test_mean_text_matches_exact_fraction(self, total, count, scale, extra):
        text = fmt.mean_text(total, count, scale, extra)
        assert re.fullmatch(r"\d+(\.\d*[1-9])?", text)
        assert Decimal(text) == _half_even(Fraction(total, count * 10**scale), scale + extra)

    def _worked_pane(self):
        scale = 8
        quotes = [
            StampedQuote("EURUSD", T0 + 100 * MS, T0 + 220 * MS, T0, 110_000_000, 120_000_000, 0, 2),
            StampedQuote("EURUSD", T0 + 700 * MS + 5, T0 + 710 * MS, T0, 110_000_001, 120_000_000, 0, 3),
            StampedQuote("EURUSD", T0 + 200 * MS, T0 + 201 * MS, T0, 100_000_000, 130_000_000, 0, 4),
        ]
        stats = fold([PaneQuote.of(q, ANY_WINDOW) for q in quotes])
        return Pane("EURUSD", T0, T0 + S, "ON_TIME", 0, stats, "acme"), scale

    def test_pane_json_worked_example_is_exact(self):
        pane, scale = self._worked_pane()
        line = fmt.pane_json(pane, scale)
        # mids 1.15, 1.150000005, 1.15; spreads 0.1, 0.09999999, 0.3 -> mean 0.49999999/3 = 0.1666666633..
        assert line == (
            '{"tenant": "acme", "symbol": "EURUSD", "window_start": "2024-06-03T07:00:00.000Z", '
            '"window_end": "2024-06-03T07:00:01.000Z", "timing": "ON_TIME", "pane_index": 0, "count": 3, '
            '"open": 1.15, "high": 1.150000005, "low": 1.15, "close": 1.150000005, '
            '"mean_spread": 0.1666666633, "max_spread": 0.3, '
            '"first_quote": "2024-06-03T07:00:00.100Z", "last_quote": "2024-06-03T07:00:00.700005Z"}'
        )
        assert json.loads(line)["open"] == 1.15

    @FEWER
    @given(
        pane_quotes(), st.integers(0, 12), st.sampled_from(w.TIMINGS), st.integers(0, 5), st.text(max_size=8),
        st.text(max_size=8),
    )
    def test_pane_json_is_json_with_exact_numbers(self, quotes, scale, timing, index, symbol, tenant):
        stats = fold(quotes)
        pane = Pane(symbol, T0, T0 + S, timing, index, stats, tenant)
        line = fmt.pane_json(pane, scale)
        assert "\n" not in line and "e" not in re.sub(r'"(?:[^"\\]|\\.)*"', "", line).lower()
        fields = json.loads(line, parse_float=Decimal)
        oracle = oracle_stats(quotes)
        assert fields == {
            "tenant": tenant,
            "symbol": symbol,
            "window_start": fmt.iso_utc(T0),
            "window_end": fmt.iso_utc(T0 + S),
            "timing": timing,
            "pane_index": index,
            "count": len(quotes),
            "open": _mid_oracle(oracle.open2, scale),
            "high": _mid_oracle(oracle.high2, scale),
            "low": _mid_oracle(oracle.low2, scale),
            "close": _mid_oracle(oracle.close2, scale),
            "mean_spread": _half_even(Fraction(oracle.spread_sum, len(quotes) * 10**scale), scale + 2),
            "max_spread": Decimal(oracle.spread_max).scaleb(-scale),
            "first_quote": fmt.iso_utc(oracle.first[0]),
            "last_quote": fmt.iso_utc(oracle.last[0]),
        }

    def test_pane_sort_key_orders_by_window_tenant_symbol_index(self):
        stats = w.stats_of(PaneQuote(T0, 0, 2, 2, 0, ANY_WINDOW))
        panes = [
            Pane("B", T0, T0 + S, "ON_TIME", 0, stats),
            Pane("A", T0, T0 + S, "LATE", 1, stats),
            Pane("A", T0 - S, T0, "LATE", 3, stats),
            Pane("A", T0, T0 + 2 * S, "EARLY", 0, stats),
            Pane("A", T0, T0 + S, "EARLY", 0, stats),
            Pane("A", T0, T0 + S, "ON_TIME", 0, stats, "zeta"),
            Pane("Z", T0, T0 + S, "ON_TIME", 0, stats, "acme"),
        ]
        ordered = sorted(panes, key=fmt.pane_sort_key)
        assert [(p.start_us - T0, p.end_us - T0, p.tenant, p.symbol, p.index) for p in ordered] == [
            (-S, 0, "default", "A", 3), (0, S, "acme", "Z", 0), (0, S, "default", "A", 0), (0, S, "default", "A", 1),
            (0, S, "default", "B", 0), (0, S, "zeta", "A", 0), (0, 2 * S, "default", "A", 0)]

    def test_late_json_fields_and_reason(self):
        config = WindowConfig(WindowSpec("fixed", size_us=S), allowed_lateness_us=500 * MS)
        quote = StampedQuote("EURUSD", T0 + 100 * MS, T0 + 2 * S, T0 + 1_600 * MS, 110_000_000, 120_000_050, 1, 42, "acme")
        assert w.is_dropped(quote.event_us, quote.watermark_us, config)
        line = fmt.late_json(quote, "quotes.csv", config, 8)
        fields = json.loads(line, parse_float=Decimal)
        reason = (
            "late: arrived when the watermark was 2024-06-03T07:00:01.600Z, past its last window's end "
            "2024-06-03T07:00:01.000Z + allowed lateness 500ms (2024-06-03T07:00:01.500Z)"
        )
        assert fields == {
            "source": "quotes.csv",
            "line": 42,
            "tenant": "acme",
            "symbol": "EURUSD",
            "timestamp": "2024-06-03T07:00:00.100Z",
            "arrival": "2024-06-03T07:00:02.000Z",
            "watermark": "2024-06-03T07:00:01.600Z",
            "window_end": "2024-06-03T07:00:01.000Z",
            "deadline": "2024-06-03T07:00:01.500Z",
            "bid": Decimal("1.1"),
            "ask": Decimal("1.2000005"),
            "reason": reason,
        }
        assert fmt.late_reason(quote, config) == reason
        assert '"bid": 1.1, "ask": 1.2000005,' in line

    @FEWER
    @given(st.data())
    def test_late_json_is_json_for_any_dropped_quote(self, data):
        spec = data.draw(window_specs())
        config = WindowConfig(spec, allowed_lateness_us=data.draw(st.sampled_from([0, MS, 90 * S])))
        event_us = data.draw(st.integers(T0 - 10**12, T0 + 10**12))
        watermark = config.deadline(event_us) + data.draw(st.integers(1, 10**9))
        assume(w.is_dropped(event_us, watermark, config))
        bid = data.draw(st.integers(1, 10**17))
        quote = StampedQuote(data.draw(st.text(max_size=6)), event_us, watermark + 7, watermark, bid, bid + 1, 0, 3)
        fields = json.loads(fmt.late_json(quote, 'a "b".csv', config, 8), parse_float=Decimal)
        assert fields["window_end"] == fmt.iso_utc(spec.last_end(event_us))
        assert fields["deadline"] == fmt.iso_utc(spec.last_end(event_us) + config.allowed_lateness_us)
        assert Decimal(fields["bid"]) == Decimal(bid).scaleb(-8) and fields["source"] == 'a "b".csv'
        for key in ("watermark", "window_end", "deadline"):
            assert fields[key] in fields["reason"]
        assert f"allowed lateness {w.duration_text(config.allowed_lateness_us)} " in fields["reason"]


# --------------------------------------------------------------------------- found bugs


class TestFoundBugs:
    """What the tests above found, kept as regression tests."""

    def test_superscript_digit_count_is_a_windowing_error(self):
        with pytest.raises(WindowingError, match="--trigger"):
            w.parse_trigger("early:²")

    def test_huge_duration_is_a_windowing_error(self):
        with pytest.raises(WindowingError, match="^--flag: "):
            w.parse_duration("1" + "0" * 31 + "s", "--flag")

    def test_long_sub_millisecond_fraction_is_rejected(self):
        with pytest.raises(WindowingError, match="not a whole number of milliseconds"):
            w.parse_duration("0.0010000000000000000000000000001s", "--flag")

    def test_mean_text_double_rounding_with_huge_inputs(self):
        count = 10**11 + 1
        total = 10**17 * count + count * 25 // 1000 + 1  # mean = 10**17 + 0.025 + 0.975/count
        assert fmt.mean_text(total, count, 0) == "100000000000000000.03"


# --------------------------------------------------------------------------- batch pre-aggregation


class TestBucketWidth:
    def test_bucket_width_is_where_no_window_boundary_falls(self):
        assert w.bucket_width(w.parse_window("fixed:250ms")) == 250 * MS
        assert w.bucket_width(w.parse_window("sliding:1s,300ms")) == 100 * MS
        assert w.bucket_width(w.parse_window("session:5s")) == MS

