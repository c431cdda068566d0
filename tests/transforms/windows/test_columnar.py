"""The batch window path in columns (transforms.windows.columnar) against quotes added one by one.

Oracles: every quote added to every window it falls in (:func:`transforms.windows.logic.add_quote`),
and for sessions Beam's own ``Sessions.merge`` over every quote's proto-window; the columnar path
pre-aggregates blocks cut anywhere, in any order, and merges them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from apache_beam.transforms.window import IntervalWindow, Sessions, WindowFn
from apache_beam.utils.timestamp import Duration, Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.windows import columnar as c
from transforms.windows import format as fmt
from transforms.windows import logic as w

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MS, S = 1_000, 1_000_000
T0 = 1_717_398_000_000_000  # 2024-06-03 07:00:00 UTC
SCALE = 8

QUOTE_ROWS = st.lists(
    st.tuples(
        st.sampled_from(["A", "B"]),
        st.integers(T0, T0 + 5 * S),  # microseconds: several quotes share a millisecond or a bucket
        st.integers(0, 1),
        st.integers(2, 10_000),
        st.integers(100, 200),
        st.integers(0, 5),
    ),
    min_size=1,
    max_size=60,
    unique_by=lambda row: (row[2], row[3]),  # (file, line) names one quote
)
SPECS = st.sampled_from(["fixed:250ms", "fixed:1s", "sliding:1s,250ms", "sliding:1s,300ms", "session:1ms",
                         "session:20ms", "session:300ms"])


def _one_by_one(window: w.WindowSpec, rows) -> dict:
    """Oracle: ``(symbol, start, end) -> PaneStats`` with every quote added to each of its windows."""
    if window.kind == "session":
        return _sessions_by_beam(window, rows)
    panes = {}
    for symbol, event, file, line, bid, spread in rows:
        windows = window.windows(event)
        home = windows[-1][0] if window.kind == "sliding" else w.ANY_WINDOW
        quote = w.PaneQuote(event, file, line, 2 * bid + spread, spread, home)
        for start, end in windows:
            panes[(symbol, start, end)] = w.add_quote(panes.get((symbol, start, end)), quote)
    return panes


def _sessions_by_beam(window: w.WindowSpec, rows) -> dict:
    expected = {}
    for symbol in {r[0] for r in rows}:
        mine = [r for r in rows if r[0] == symbol]
        proto = {IntervalWindow(Timestamp(micros=s), Timestamp(micros=e)) for r in mine for s, e in window.windows(r[1])}
        merged = {}

        class Context(WindowFn.MergeContext):
            def merge(self, to_be_merged, merge_result):
                for old in to_be_merged:
                    merged[old] = merge_result

        Sessions(Duration(micros=window.gap_us)).merge(Context(proto))
        for r in mine:
            (start, end), = window.windows(r[1])
            target = merged.get(IntervalWindow(Timestamp(micros=start), Timestamp(micros=end)))
            key = (symbol, target.start.micros, target.end.micros) if target else (symbol, start, end)
            quote = w.PaneQuote(r[1], r[2], r[3], 2 * r[4] + r[5], r[5], w.ANY_WINDOW)
            expected[key] = w.add_quote(expected.get(key), quote)
    return expected


def _block_spans(window, block, object_values=False) -> dict:
    symbols, events, files, lines, bids, spreads = (list(column) for column in zip(*block))
    codes, keys = c.key_codes(pa.array(["default"] * len(block)), pa.array(symbols))
    bids = np.array(bids, dtype=object if object_values else np.int64)
    asks = bids + np.array(spreads, dtype=bids.dtype)
    spans = c.quote_spans(window, codes, np.array(events), np.array(files), np.array(lines), bids, asks)
    return {keys[code][1]: part for code, part in spans.items()}


def _columnar(window, blocks, object_values=False) -> dict:
    per_symbol: dict[str, list] = {}
    for block in filter(None, blocks):
        for symbol, spans in _block_spans(window, block, object_values).items():
            per_symbol.setdefault(symbol, []).append(spans)
    got = {}
    for symbol, parts in per_symbol.items():
        for pane in c.panes(window, ("default", symbol), c.merge_spans(window, parts)):
            got[(symbol, pane.start_us, pane.end_us)] = pane
    return got


def _cut(rows, data) -> list:
    order = data.draw(st.permutations(range(len(rows))))  # blocks come in arrival order, not event order
    shuffled = [rows[i] for i in order]
    cut = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=4)))
    return [shuffled[a:b] for a, b in zip([0, *cut], [*cut, len(rows)])]


def _same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, pane in got.items():
        want = expected[key]
        assert pane.stats._replace(homes=()) == want._replace(homes=()), key
        oracle = w.Pane(key[0], key[1], key[2], "ON_TIME", 0, want)
        assert pane.home_count == oracle.home_count, key


@SETTINGS
@given(QUOTE_ROWS, SPECS, st.data())
def test_blocks_cut_anywhere_in_any_order_give_the_panes_of_adding_quotes_one_by_one(rows, spec, data):
    window = w.parse_window(spec)
    _same(_columnar(window, _cut(rows, data)), _one_by_one(window, rows))


@settings(SETTINGS, max_examples=40)
@given(QUOTE_ROWS, SPECS, st.data())
def test_python_integer_values_give_the_same_panes(rows, spec, data):
    window = w.parse_window(spec)
    _same(_columnar(window, _cut(rows, data), object_values=True), _one_by_one(window, rows))


def test_prices_too_large_for_int64_sums_stay_exact():
    big = 4 * 10**18  # bid + ask overflows int64
    window = w.parse_window("fixed:1s")
    rows = [("A", T0 + i * MS, 0, 2 + i, big + i, 3) for i in range(5)]
    spans = _block_spans(window, rows)["A"]
    assert spans.open2.dtype == object
    (pane,) = c.panes(window, ("default", "A"), c.merge_spans(window, [spans]))
    assert pane.stats.high2 == 2 * (big + 4) + 3 and pane.stats.spread_sum == 15


def test_touching_sessions_stay_apart_overlapping_ones_merge():
    window = w.parse_window("session:1ms")
    touching = _columnar(window, [[("A", T0, 0, 2, 100, 1)], [("A", T0 + MS, 0, 3, 100, 1)]])
    assert sorted(touching) == [("A", T0, T0 + MS), ("A", T0 + MS, T0 + 2 * MS)]
    window = w.parse_window("session:2ms")
    overlapping = _columnar(window, [[("A", T0 + MS, 0, 3, 100, 1)], [("A", T0, 0, 2, 100, 1)]])
    assert sorted(overlapping) == [("A", T0, T0 + 3 * MS)]


@SETTINGS
@given(QUOTE_ROWS, SPECS)
def test_pane_lines_in_columns_are_pane_json_byte_for_byte(rows, spec):
    window = w.parse_window(spec)
    for symbol, spans in _block_spans(window, rows).items():
        merged = c.merge_spans(window, [spans])
        panes = list(c.panes(window, ("default", symbol), merged))
        lines = c.pane_lines(window, ("default", symbol), merged, SCALE, None)  # None: must not fall back
        assert lines.data == "".join(fmt.pane_json(p, SCALE) + "\n" for p in panes).encode()
        assert lines.quotes_in_panes == sum(p.home_count for p in panes)
        fallback = c.PaneLines.of(("default", symbol), panes, lambda p: fmt.pane_json(p, SCALE))
        assert fallback.data == lines.data and fallback.offsets.tolist() == lines.offsets.tolist()


def test_joined_pane_lines_sort_by_window_then_tenant_then_symbol():
    def part(tenant, symbol, starts):
        lines = [f"{tenant} {symbol} {start}\n".encode() for start in starts]
        offsets = np.cumsum([0] + [len(line) for line in lines])
        return c.PaneLines(tenant, symbol, np.array(starts), np.array(starts) + 10, offsets, b"".join(lines), 0)

    joined = c.joined_pane_lines([part("t", "B", [0, 20]), part("t", "A", [20]), part("s", "Z", [20, 30])])
    assert joined.decode().splitlines() == ["t B 0", "s Z 20", "t A 20", "t B 20", "s Z 30"]
    assert c.joined_pane_lines([]) == b""
