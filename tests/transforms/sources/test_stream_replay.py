"""transforms.sources.stream_replay.plan_steps: rows in arrival order -> rows, watermark and clock steps.

The properties are the docstring's promises, checked by playing the steps in order (the watermark
and clock in force when each row is added):

* the rows come back exactly, in order;
* the watermark only moves forward, in whole milliseconds, to the stamp of the quote it precedes;
* exactness: every quote meets the same fired/unfired windows as under its own stamp (fixed and
  sliding: its own windows; sessions: every proto-session of its symbol so far), and minimality:
  no watermark step that no quote needed. Sessions are checked with whole-millisecond and with
  microsecond event times (windows are assigned on the millisecond: a regression test);
* processing time moves at the first quote and whenever an earlier arrival + delay has passed;
* an infinite lag without early panes, or no window, leaves the batches untouched.
"""

from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from transforms.sources.stream_replay import Step, StreamPlan, plan_steps
from transforms.windows.logic import INFINITE, WindowSpec, watermark_after

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MS, S = 1_000, 1_000_000
T0 = 1_717_398_000_000_000  # 2024-06-03 07:00:00 UTC

SCHEMA = pa.schema([
    pa.field("symbol", pa.string()),
    pa.field("event_us", pa.int64()),
    pa.field("arrival_us", pa.int64()),
    pa.field("line", pa.int64()),
])


class Row(NamedTuple):
    symbol: str | None
    event_us: int | None
    arrival_us: int | None
    line: int


def make_batch(symbols, events, arrivals, lines=None) -> pa.RecordBatch:
    """A replay-like block from lists (None: null); ``line`` numbers the rows unless given."""
    lines = list(range(len(symbols))) if lines is None else lines
    return pa.RecordBatch.from_arrays(
        [pa.array(symbols, pa.string()), pa.array(events, pa.int64()), pa.array(arrivals, pa.int64()),
         pa.array(lines, pa.int64())],
        schema=SCHEMA,
    )


def batch_of(rows: list[Row]) -> pa.RecordBatch:
    return make_batch(*(list(column) for column in zip(*rows)) if rows else ([], [], [], []))


def rows_in(batch: pa.RecordBatch) -> list[Row]:
    columns = batch.to_pydict()
    return [Row(*values) for values in zip(columns["symbol"], columns["event_us"], columns["arrival_us"],
                                           columns["line"])]


class Played(NamedTuple):
    row: Row
    watermark: int | None  # the watermark in force when the row's step is played
    clock: int | None


def play(steps: list[Step]) -> list[Played]:
    watermark = clock = None
    played = []
    for step in steps:
        if step.kind == "watermark":
            watermark = step.micros
        elif step.kind == "clock":
            clock = step.micros
        else:
            assert step.kind == "rows" and step.micros == 0
            assert step.rows.schema == SCHEMA
            played.extend(Played(row, watermark, clock) for row in rows_in(step.rows))
    return played


def following_rows(steps: list[Step], index: int) -> pa.RecordBatch:
    """The rows step a watermark or clock step at ``index`` was emitted for (skipping the other kind)."""
    for step in steps[index + 1:]:
        if step.kind == "rows":
            return step.rows
    raise AssertionError(f"step {index} ({steps[index]}) is not followed by rows")


def late_for(stamp: int | None, end: int) -> bool:
    return stamp is not None and stamp >= end


# --------------------------------------------------------------------------- generated streams


@st.composite
def streams(draw, rejected=True, whole_ms=False):
    """Valid quotes (two symbols) in arrival order, rejected rows (all null) among them, cut into batches.

    Event times have microseconds unless ``whole_ms``; latencies are any number of microseconds."""
    base = draw(st.sampled_from([T0, -2 * S, 0]))
    # a few whole milliseconds often, so that stamps land exactly on window ends
    offsets = st.one_of(st.integers(0, 3000), st.integers(0, 60)).map(lambda ms: ms * MS)
    if not whole_ms:
        offsets = st.one_of(st.integers(0, 3 * S), offsets)
    latencies = st.one_of(st.integers(0, 600 * MS), st.integers(0, 600).map(lambda ms: ms * MS),
                          st.integers(0, 30).map(lambda ms: ms * MS))
    quotes = draw(st.lists(st.tuples(st.sampled_from("AB"), offsets, latencies), max_size=25))
    valid = sorted(((sym, base + off, base + off + lat) for sym, off, lat in quotes), key=lambda q: q[2])
    rows = list(valid)
    if rejected:
        for _ in range(draw(st.integers(0, 4))):
            rows.insert(draw(st.integers(0, len(rows))), (draw(st.sampled_from([None, "A"])), None, None))
    rows = [Row(*row, line) for line, row in enumerate(rows)]
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=4)))
    bounds = [0, *cuts, len(rows)]
    return [batch_of(rows[a:b]) for a, b in zip(bounds, bounds[1:])]


def windows(kinds=("fixed", "sliding", "session")):
    millis = st.one_of(st.integers(1, 1000), st.integers(1, 20))
    options = {
        "fixed": millis.map(lambda ms: WindowSpec("fixed", size_us=ms * MS)),
        "sliding": st.tuples(millis, st.integers(1, 6)).map(
            lambda pk: WindowSpec("sliding", size_us=pk[0] * pk[1] * MS, period_us=pk[0] * MS)),
        "session": millis.map(lambda ms: WindowSpec("session", gap_us=ms * MS)),
    }
    return st.one_of(*(options[kind] for kind in kinds))


FINITE_LAGS = st.one_of(st.just(0), st.integers(0, 800).map(lambda ms: ms * MS), st.integers(0, 20).map(lambda ms: ms * MS))
LAGS = st.one_of(FINITE_LAGS, st.just(INFINITE))
DELAYS = st.one_of(st.none(), st.integers(1, 300).map(lambda ms: ms * MS))


def all_rows(batches) -> list[Row]:
    return [row for batch in batches for row in rows_in(batch)]


# --------------------------------------------------------------------------- rows


class TestRows:
    @SETTINGS
    @given(streams(), LAGS, st.one_of(st.none(), windows()), DELAYS)
    def test_rows_come_back_exactly_in_order(self, batches, lag, window, delay):
        steps = list(plan_steps(batches, lag, window, delay))
        assert {step.kind for step in steps} <= {"rows", "watermark", "clock"}
        assert [p.row for p in play(steps)] == all_rows(batches)

    @SETTINGS
    @given(streams(), LAGS, DELAYS)
    def test_no_window_passes_the_batches_through(self, batches, lag, delay):
        steps = list(plan_steps(batches, lag, None, delay))
        assert len(steps) == len(batches)
        assert all(step.kind == "rows" and step.rows is batch and step.micros == 0
                   for step, batch in zip(steps, batches))

    @SETTINGS
    @given(streams(), windows())
    def test_infinite_lag_without_early_panes_passes_the_batches_through(self, batches, window):
        steps = list(plan_steps(batches, INFINITE, window))
        assert steps == [Step("rows", batch, 0) for batch in batches]
        assert all(step.rows is batch for step, batch in zip(steps, batches))

    @SETTINGS
    @given(streams(), windows(), st.integers(1, 300).map(lambda ms: ms * MS))
    def test_infinite_lag_with_early_panes_moves_only_the_clock(self, batches, window, delay):
        steps = list(plan_steps(batches, INFINITE, window, delay))
        assert "watermark" not in {step.kind for step in steps}
        has_quotes = any(row.arrival_us is not None for row in all_rows(batches))
        assert ("clock" in {step.kind for step in steps}) == has_quotes

    @SETTINGS
    @given(streams(rejected=False), LAGS, windows(), DELAYS, st.data())
    def test_rejected_rows_never_cause_steps(self, batches, lag, window, delay, data):
        rows = all_rows(batches)
        with_rejects = list(rows)
        for _ in range(data.draw(st.integers(1, 6))):
            with_rejects.insert(data.draw(st.integers(0, len(with_rejects))), Row(None, None, None, -1))
        cut = data.draw(st.integers(0, len(with_rejects)))
        other = [batch_of(with_rejects[:cut]), batch_of(with_rejects[cut:])]

        def moves(steps):
            return [(s.kind, s.micros) for s in steps if s.kind != "rows"]

        plain, mixed = list(plan_steps(batches, lag, window, delay)), list(plan_steps(other, lag, window, delay))
        assert moves(mixed) == moves(plain)
        assert [p.row for p in play(mixed)] == with_rejects

    def test_a_block_of_rejected_rows_is_one_rows_step(self):
        batch = make_batch([None, "A", None], [None, None, None], [None, None, None])
        steps = list(plan_steps([batch], 0, WindowSpec("fixed", size_us=S), 10 * MS))
        assert [(s.kind, rows_in(s.rows)) for s in steps] == [("rows", rows_in(batch))]

    def test_stream_plan_counts_steps(self):
        batch = make_batch(["A", "A"], [T0 + 900 * MS, T0 + 950 * MS], [T0 + 1200 * MS, T0 + 1300 * MS])
        plan = StreamPlan(tuple(plan_steps([batch], 0, WindowSpec("fixed", size_us=S))), {"records_in": 2})
        assert (plan.watermark_steps, plan.row_steps) == (1, 1)


# --------------------------------------------------------------------------- watermark


class TestWatermark:
    def test_fixed_window_worked_example(self):
        # lag 0, fixed 1 s windows from T0. A is on time; B (window ends T0+1s) arrives at T0+1.2s,
        # so the watermark must be at T0+1.2s before it; C is late too, but the watermark already
        # is; D is in the next window, on time. A's stamp T0+150ms passes no window end.
        batch = make_batch(
            ["A", "A", "A", "A"],
            [T0 + 100 * MS, T0 + 900 * MS, T0 + 950 * MS, T0 + 1100 * MS],
            [T0 + 150 * MS + 7, T0 + 1200 * MS + 999, T0 + 1300 * MS, T0 + 1350 * MS],
        )
        steps = list(plan_steps([batch], 0, WindowSpec("fixed", size_us=S)))
        assert [(s.kind, s.micros, s.rows and rows_in(s.rows)) for s in steps] == [
            ("rows", 0, rows_in(batch)[:1]),
            ("watermark", T0 + 1200 * MS, None),  # rounded down to the millisecond
            ("rows", 0, rows_in(batch)[1:]),
        ]

    def test_stamp_exactly_at_the_window_end_is_late(self):
        # end exclusive: a stamp equal to the window's end means the on-time pane has fired
        batch = make_batch(["A", "A"], [T0 + 900 * MS, T0 + 999 * MS], [T0 + 999 * MS + 999, T0 + S])
        steps = list(plan_steps([batch], 0, WindowSpec("fixed", size_us=S)))
        assert [(s.kind, s.micros) for s in steps] == [("rows", 0), ("watermark", T0 + S), ("rows", 0)]
        assert rows_in(steps[2].rows) == rows_in(batch)[1:]

    def test_lag_delays_the_step_to_a_later_quote(self):
        # lag 250 ms. A (event +900ms): stamp +950ms, on time. B (event +1000ms): stamp +1050ms is past
        # A's window end +1s, but B's own window is [+1s, +2s): only the quote's own windows count.
        # C (event +990ms): stamp +1060ms is past its window's end +1s, so the watermark moves first.
        batch = make_batch(["A", "A", "A"], [T0 + 900 * MS, T0 + 1000 * MS, T0 + 990 * MS],
                           [T0 + 1200 * MS, T0 + 1300 * MS, T0 + 1310 * MS])
        steps = list(plan_steps([batch], 250 * MS, WindowSpec("fixed", size_us=S)))
        assert [(s.kind, s.micros) for s in steps] == [("rows", 0), ("watermark", T0 + 1060 * MS), ("rows", 0)]
        assert rows_in(steps[2].rows) == rows_in(batch)[2:]

    def test_session_watermark_is_conservative_across_the_symbols_sessions(self):
        # gap 100 ms, lag 0. A1's session [T0, T0+100ms) ends before A2 arrives at T0+150ms, and A2
        # could have merged into it (if it were earlier), so the watermark moves before A2 although
        # A2's own proto-window [T0+120ms, T0+220ms) is still open. B is another symbol: no step.
        batch = make_batch(["A", "B", "A"], [T0, T0 + 130 * MS, T0 + 120 * MS],
                           [T0 + 10 * MS, T0 + 140 * MS, T0 + 150 * MS])
        steps = list(plan_steps([batch], 0, WindowSpec("session", gap_us=100 * MS)))
        assert [(s.kind, s.micros) for s in steps] == [("rows", 0), ("watermark", T0 + 150 * MS), ("rows", 0)]
        assert [r.symbol for r in rows_in(steps[2].rows)] == ["A"]

    @SETTINGS
    @given(streams(), FINITE_LAGS, windows(), DELAYS)
    def test_watermark_steps_increase_are_whole_ms_and_are_the_next_quotes_stamp(self, batches, lag, window, delay):
        steps = list(plan_steps(batches, lag, window, delay))
        marks = [(i, s.micros) for i, s in enumerate(steps) if s.kind == "watermark"]
        assert all(a < b for (_, a), (_, b) in zip(marks, marks[1:]))
        for index, micros in marks:
            assert micros % 1000 == 0
            first = rows_in(following_rows(steps, index))[0]
            assert first.arrival_us is not None and watermark_after(first.arrival_us, lag) == micros

    @SETTINGS
    @given(streams(), FINITE_LAGS, windows(["fixed"]), DELAYS)
    def test_step_right_before_each_quote_late_for_its_fixed_window(self, batches, lag, window, delay):
        steps = list(plan_steps(batches, lag, window, delay))
        watermark = None  # the stream's watermark so far
        for index, step in enumerate(steps):
            if step.kind != "rows":
                continue
            moves = []  # the watermark/clock steps right before this rows step
            for earlier in reversed(steps[:index]):
                if earlier.kind == "rows":
                    break
                moves.append(earlier)
            marks = [s.micros for s in moves if s.kind == "watermark"]
            for position, row in enumerate(rows_in(step.rows)):
                if row.arrival_us is None:
                    continue
                stamp = watermark_after(row.arrival_us, lag)
                (_, end), = window.windows(row.event_us)
                # late for its window (stamp >= end), and the stream's watermark not yet past the end
                needs_step = stamp >= end and (watermark is None or watermark < end)
                if needs_step:
                    assert position == 0 and marks == [stamp], (row, end, watermark)
                    watermark = stamp
                elif position == 0:
                    assert marks == [], (row, end, watermark)

    @SETTINGS
    @given(streams(), windows(["fixed", "sliding"]), st.data())
    def test_no_watermark_step_when_every_quote_is_on_time(self, batches, window, data):
        valid = [r for r in all_rows(batches) if r.arrival_us is not None]
        # the smallest whole-ms lag keeping every stamp before the first end of the quote's windows
        needed = max([r.arrival_us - min(e for _, e in window.windows(r.event_us)) + 1 for r in valid], default=0)
        lag = max(0, -(-needed // MS) * MS) + data.draw(st.sampled_from([0, MS, S]))
        assert all(watermark_after(r.arrival_us, lag) < min(e for _, e in window.windows(r.event_us)) for r in valid)
        steps = list(plan_steps(batches, lag, window))
        assert [s.kind for s in steps] == ["rows"] * sum(b.num_rows > 0 for b in batches)
        assert [rows_in(s.rows) for s in steps] == [rows_in(b) for b in batches if b.num_rows]

    @SETTINGS
    @given(streams(), FINITE_LAGS, windows(["fixed", "sliding"]), DELAYS)
    def test_exact_and_minimal_for_fixed_and_sliding_windows(self, batches, lag, window, delay):
        steps = list(plan_steps(batches, lag, window, delay))
        played = [p for p in play(steps) if p.row.arrival_us is not None]
        for p in played:  # exact: the watermark in force judges every window like the quote's stamp
            stamp = watermark_after(p.row.arrival_us, lag)
            for _, end in window.windows(p.row.event_us):
                assert late_for(p.watermark, end) == late_for(stamp, end), (p, end)
        previous = None
        for index, step in enumerate(steps):  # minimal: each step was needed by the quote it precedes
            if step.kind == "watermark":
                quote = rows_in(following_rows(steps, index))[0]
                ends = [end for _, end in window.windows(quote.event_us)]
                assert any((previous is None or previous < end) and end <= step.micros for end in ends)
                previous = step.micros

    @staticmethod
    def _check_sessions(batches, lag, window, delay):
        steps = list(plan_steps(batches, lag, window, delay))
        played = [p for p in play(steps) if p.row.arrival_us is not None]
        proto_ends: dict[str | None, list[int]] = {}
        for p in played:
            ends = proto_ends.setdefault(p.row.symbol, [])
            (_, own_end), = window.windows(p.row.event_us)
            ends.append(own_end)
            stamp = watermark_after(p.row.arrival_us, lag)
            assert late_for(p.watermark, own_end) == late_for(stamp, own_end), (p, own_end)
            for end in ends:  # conservative: any session of the symbol the quote might merge into
                assert late_for(p.watermark, end) == late_for(stamp, end), (p, end)
        return steps

    @SETTINGS
    @given(streams(whole_ms=True), FINITE_LAGS, windows(["session"]), DELAYS)
    def test_exact_and_minimal_for_sessions_with_the_conservative_rule(self, batches, lag, window, delay):
        steps = self._check_sessions(batches, lag, window, delay)
        # minimal: the quote after each watermark step has a proto end of its symbol (its own or an
        # earlier quote's) after the previous watermark and not after the new one
        seen: dict[str | None, list[int]] = {}
        previous = pending = None
        for step in steps:
            if step.kind == "watermark":
                pending = step.micros
            elif step.kind == "rows":
                for row in rows_in(step.rows):
                    if row.arrival_us is None:
                        continue
                    seen.setdefault(row.symbol, []).append(window.windows(row.event_us)[0][1])
                    if pending is not None:
                        assert any((previous is None or previous < end) and end <= pending for end in seen[row.symbol])
                        previous, pending = pending, None

    @SETTINGS
    @given(streams(), FINITE_LAGS, windows(["session"]), DELAYS)
    @example([make_batch(["A"], [T0 + 1], [T0 + MS])], 0, WindowSpec("session", gap_us=MS), None)
    def test_exact_for_sessions_with_microsecond_event_times(self, batches, lag, window, delay):
        self._check_sessions(batches, lag, window, delay)

    def test_session_quote_whose_stamp_is_its_millisecond_proto_window_end(self):
        # event T0+1us: its window time is T0, its proto-session [T0, T0+1ms). It arrives at T0+1ms
        # (lag 0): stamp T0+1ms >= end, so under the true watermark the session's on-time pane has
        # fired and the quote belongs in a late pane (not dropped: T0+1ms is not past end + 0).
        # plan_steps compares the stamp with event_us + gap = T0+1.001ms and moves no watermark.
        window = WindowSpec("session", gap_us=MS)
        assert window.windows(T0 + 1) == [(T0, T0 + MS)] and watermark_after(T0 + MS, 0) == T0 + MS
        batch = make_batch(["A"], [T0 + 1], [T0 + MS])
        steps = list(plan_steps([batch], 0, window))
        assert [(s.kind, s.micros) for s in steps] == [("watermark", T0 + MS), ("rows", 0)]


# --------------------------------------------------------------------------- processing time


class TestClock:
    def test_worked_example(self):
        # delay 10 ms: first quote at 0; 12 passes 0+10; 16 passes 5+10 (not yet passed at 12);
        # 20 passes nothing new (12+10 = 22 > 20); 40 passes 16+10 and 20+10.
        arrivals = [T0 + ms * MS for ms in (0, 5, 12, 16, 20, 40)]
        batch = make_batch(["A"] * 6, arrivals, arrivals)
        steps = list(plan_steps([batch], INFINITE, WindowSpec("fixed", size_us=S), 10 * MS))
        assert [s.micros - T0 for s in steps if s.kind == "clock"] == [0, 12 * MS, 16 * MS, 40 * MS]
        assert [rows_in(s.rows)[0].line for s in steps if s.kind == "rows"] == [0, 2, 3, 5]

    def test_exactly_delay_later_counts_as_passed(self):
        arrivals = [T0, T0 + 10 * MS - 1, T0 + 10 * MS]
        batch = make_batch(["A"] * 3, arrivals, arrivals)
        steps = list(plan_steps([batch], INFINITE, WindowSpec("fixed", size_us=S), 10 * MS))
        assert [s.micros for s in steps if s.kind == "clock"] == [T0, T0 + 10 * MS]

    def test_watermark_and_clock_before_the_same_quote(self):
        batch = make_batch(["A"], [T0 + 900 * MS], [T0 + 1200 * MS])
        steps = list(plan_steps([batch], 0, WindowSpec("fixed", size_us=S), 10 * MS))
        assert sorted((s.kind, s.micros) for s in steps[:-1]) == [("clock", T0 + 1200 * MS),
                                                                   ("watermark", T0 + 1200 * MS)]
        assert steps[-1].kind == "rows" and rows_in(steps[-1].rows) == rows_in(batch)

    @SETTINGS
    @given(streams(), LAGS, windows(), st.integers(1, 300).map(lambda ms: ms * MS))
    def test_clock_moves_at_the_first_quote_and_when_an_arrival_plus_delay_has_passed(
        self, batches, lag, window, delay
    ):
        steps = list(plan_steps(batches, lag, window, delay))
        clocks = [(i, s.micros) for i, s in enumerate(steps) if s.kind == "clock"]
        assert all(a < b for (_, a), (_, b) in zip(clocks, clocks[1:]))
        for index, micros in clocks:
            first = rows_in(following_rows(steps, index))[0]
            assert first.arrival_us == micros
        played = [p for p in play(steps) if p.row.arrival_us is not None]
        if played:
            assert clocks and played[0].clock == played[0].row.arrival_us
        previous_clock = None
        for i, p in enumerate(played):
            dues = [q.row.arrival_us + delay for q in played[:i]]
            # every earlier arrival + delay reached by this arrival has been passed by the clock
            assert all(p.clock >= due for due in dues if due <= p.row.arrival_us)
            if p.clock != previous_clock and i > 0:  # the clock moved here: something was due
                assert p.clock == p.row.arrival_us
                assert any(previous_clock < due <= p.row.arrival_us for due in dues)
            previous_clock = p.clock

    @SETTINGS
    @given(streams(), FINITE_LAGS, windows())
    def test_no_clock_without_early_delay(self, batches, lag, window):
        assert "clock" not in {s.kind for s in plan_steps(batches, lag, window)}
