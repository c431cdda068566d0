"""transforms.trades.ranges: the join and features by event-time range give exactly the whole-symbol results.

The reference is the whole-symbol path (:func:`asof.join_trades` and :func:`sliding_features` once per
symbol, the lines keyed per symbol and merged by :func:`transforms.sinks.files.merge_keyed` in
``symbol_seq`` order, as the sink does); the range path is run the way the pipeline runs it (rows
split per block, witness tables merged from several parts, one :func:`analyse_range` per range, the
ranges' text concatenated in range order).
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from transforms.sinks.files import merge_keyed
from transforms.trades import asof, market, ranges
from transforms.trades.features import feature_chunk, feature_range_chunk, sliding_features

T0 = 1_717_398_000_000_000  # 2024-06-03 07:00:00 UTC
MS = 1_000
S = 1_000_000
SCALE = 4


def quote_rb(rows) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{k: r[k] for k in market.QUOTE_POINT_SCHEMA.names} for r in rows],
                                      schema=market.QUOTE_POINT_SCHEMA)


def trade_rb(rows) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=market.TRADE_SCHEMA)


def quote(symbol, at, line, bid=10_000, spread=10, arrival=None):
    return dict(symbol=symbol, event_us=at, arrival_us=at if arrival is None else arrival, file=0, line=line,
                timestamp=f"q{line}", bid=bid, ask=bid + spread)


def trade(symbol, at, line, price=10_005, size=10.0, side="buy"):
    return dict(file=0, line=line, timestamp=f"t{line}", event_us=at, arrival_us=at, latency_us=None, symbol=symbol,
                price=price, size=size, side=side, sign=1 if side == "buy" else -1, trade_id=f"T{line:06d}")


def random_market(seed: int, n_quotes: int = 600, n_trades: int = 1500):
    """Three symbols over ~60 s with ties, bursts and a long quote gap (witnesses from far back)."""
    rng = random.Random(seed)
    quotes, trades = [], []
    for line in range(1, n_quotes + 1):
        at = T0 + rng.randrange(0, 60_000, 50) * MS
        if 20 * S < at - T0 < 35 * S and rng.random() < 0.9:  # a gap: stale trades, old witnesses
            continue
        quotes.append(quote(rng.choice("AB"), at, line, bid=rng.randrange(10_000, 20_000), spread=rng.randrange(0, 50),
                            arrival=at + rng.randrange(0, 3) * MS))
    for line in range(1, n_trades + 1):
        at = T0 + rng.randrange(-2_000, 62_000, 10) * MS
        trades.append(trade(rng.choice("ABC"), at, line, price=rng.randrange(10_000, 20_050),
                            size=float(rng.randrange(1, 500)), side=rng.choice(["buy", "sell"])))
    return quotes, trades


def by_symbol(rows, make):
    grouped: dict[str, list] = {}
    for row in rows:
        grouped.setdefault(row["symbol"], []).append(row)
    return {symbol: make(items) for symbol, items in grouped.items()}


def whole_symbol(quotes, trades, *, max_age_us, size_us, period_us):
    """The reference: (enriched, unmatched, features) file bytes of the whole-symbol path."""
    q, t = by_symbol(quotes, quote_rb), by_symbol(trades, trade_rb)
    chunks = {"enriched": [], "unmatched": [], "features": []}
    for symbol in sorted(set(q) | set(t)):
        qs = q.get(symbol, market.empty(market.QUOTE_POINT_SCHEMA))
        enriched, unmatched = asof.join_trades(t.get(symbol, market.empty(market.TRADE_SCHEMA)), qs, max_age_us, SCALE)
        features = sliding_features(symbol, qs, enriched, unmatched, size_us=size_us, period_us=period_us, scale=SCALE)
        chunks["enriched"].append(asof.enriched_chunk(symbol, enriched, SCALE))
        chunks["unmatched"].append(asof.unmatched_chunk(symbol, unmatched, SCALE))
        chunks["features"].append(feature_chunk(symbol, features))
    return {name: merge_keyed(b"".join(c.data for c in sorted(parts, key=lambda c: c.seq)))
            for name, parts in chunks.items()}


def by_range(quotes, trades, plan, *, max_age_us, block=97):
    """The range path, as the pipeline runs it; returns the files' bytes and the ranges' results."""
    elements: dict[int, dict[str, dict[str, list]]] = {}
    witness_parts = []
    for kind, rows, make in (("quotes", quotes, quote_rb), ("trades", trades, trade_rb)):
        for start in range(0, len(rows), block):  # blocks, as the sources emit them
            for symbol, batch in by_symbol(rows[start:start + block], make).items():
                if kind == "quotes":
                    witness_parts.append(ranges.last_quotes_by_cell(symbol, batch, plan))
                for r, part in ranges.split_rows(batch, plan):
                    elements.setdefault(r, {"quotes": {}, "trades": {}})[kind].setdefault(symbol, []).append(part)
    witnesses = ranges.Witnesses(ranges.merge_witnesses(
        [ranges.merge_witnesses(witness_parts[i:i + 5]) for i in range(0, len(witness_parts), 5)]))
    results = {r: ranges.analyse_range(r, e["quotes"], e["trades"], witnesses.before, plan, max_age_us=max_age_us,
                                       scale=SCALE)
               for r, e in sorted(elements.items())}
    files = {
        "enriched": b"".join(asof.enriched_range_chunk(r, res.enriched, SCALE).data for r, res in results.items()),
        "unmatched": b"".join(asof.unmatched_range_chunk(r, res.unmatched, SCALE).data for r, res in results.items()),
        "features": b"".join(feature_range_chunk(r, res.features).data for r, res in results.items()),
    }
    return files, results


PLANS = [  # (range, size, period): ranges longer than the lookback, equal to it, shorter (rows in 3+ ranges)
    (5 * S, 3 * S, 1 * S),
    (2 * S, 3 * S, 1 * S),
    (1 * S, 4 * S, 1 * S),
    (10 * S, 10 * S, 1 * S),
    (3 * S, 500 * MS, 500 * MS),
]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("range_us,size_us,period_us", PLANS)
def test_ranges_give_the_whole_symbol_files_byte_for_byte(seed, range_us, size_us, period_us):
    quotes, trades = random_market(seed)
    max_age_us = 700 * MS
    plan = ranges.plan_ranges(size_us, period_us, range_us)
    want = whole_symbol(quotes, trades, max_age_us=max_age_us, size_us=size_us, period_us=period_us)
    got, results = by_range(quotes, trades, plan, max_age_us=max_age_us)
    assert got == want
    assert len(results) > 3  # the data really spans several ranges
    assert b"stale_quote" in want["unmatched"] and b"no_quote" in want["unmatched"]  # both reasons are exercised


def test_every_trade_and_window_comes_out_of_exactly_one_range():
    quotes, trades = random_market(7)
    plan = ranges.plan_ranges(4 * S, S, 2 * S)
    _, results = by_range(quotes, trades, plan, max_age_us=S)
    ids = [i for res in results.values() for b in (res.enriched, res.unmatched) for i in b.column("trade_id").to_pylist()]
    assert sorted(ids) == sorted(t["trade_id"] for t in trades)
    windows = [(s, st) for res in results.values()
               for s, st in zip(res.features.column("symbol").to_pylist(), res.features.column("window_start_us").to_pylist())]
    assert len(windows) == len(set(windows))
    for r, res in results.items():  # each window is computed in the range holding its last period
        starts = res.features.column("window_start_us").to_numpy(zero_copy_only=False)
        assert (ranges.window_range(starts, plan) == r).all()


def _one_symbol(quotes, trades, plan, max_age_us):
    got, _ = by_range(quotes, trades, plan, max_age_us=max_age_us, block=1)
    want = whole_symbol(quotes, trades, max_age_us=max_age_us, size_us=plan.size_us, period_us=plan.period_us)
    assert got == want
    return got


def test_a_trade_just_after_a_range_start_meets_its_quote_from_the_previous_range():
    plan = ranges.plan_ranges(3 * S, S, 10 * S)  # ranges [T0 + 10k s, ...), lookback 2 s
    start = T0 + 10 * S - T0 % (10 * S)
    quotes = [quote("A", start - 2 * S - 1, 1, bid=11_000)]  # before lo: the witness, not a row of the range
    trades = [trade("A", start, 2), trade("A", start + 1, 3)]
    got = _one_symbol(quotes, trades, plan, max_age_us=3 * S)
    assert got["enriched"].count(b"\n") == 2 and got["enriched"].count(b'"mid":1.1005,') == 2


def test_the_witness_is_the_latest_quote_however_far_back_so_stale_reports_its_age():
    plan = ranges.plan_ranges(2 * S, S, 5 * S)
    start = T0 + 5 * S - T0 % (5 * S)
    quotes = [quote("A", start - 60 * S, 1), quote("A", start - 31 * S, 2), quote("A", start - 31 * S, 3, arrival=start)]
    trades = [trade("A", start + 2 * S, 4), trade("B", start + 2 * S, 5)]  # B never quotes
    got = _one_symbol(quotes, trades, plan, max_age_us=S)
    assert b"latest quote 33s before the trade" in got["unmatched"] and b'"no_quote"' in got["unmatched"]


@pytest.mark.parametrize("age_us,matched", [(S, True), (S + 1, False)])
def test_a_quote_exactly_max_age_before_across_a_range_boundary_still_matches(age_us, matched):
    plan = ranges.plan_ranges(2 * S, S, 4 * S)
    start = T0 + 4 * S - T0 % (4 * S)
    quotes = [quote("A", start - age_us + 300 * MS, 1)]  # previous range, inside the lookback
    trades = [trade("A", start + 300 * MS, 2)]
    got = _one_symbol(quotes, trades, plan, max_age_us=S)
    assert (got["enriched"].count(b"\n"), got["unmatched"].count(b"\n")) == ((1, 0) if matched else (0, 1))


def test_a_window_spanning_two_ranges_is_computed_once_with_all_its_rows():
    plan = ranges.plan_ranges(4 * S, S, 3 * S)
    start = T0 + 3 * S - T0 % (3 * S)
    quotes = [quote("A", start - 2500 * MS, 1, bid=10_000), quote("A", start + 500 * MS, 2, bid=10_100)]
    trades = [trade("A", start - 2 * S, 3, size=2.0), trade("A", start + 800 * MS, 4, size=3.0)]
    got = _one_symbol(quotes, trades, plan, max_age_us=10 * S)
    window = [line for line in got["features"].splitlines() if b'"quotes":2,"trades":2' in line]
    assert len(window) == 1 and b'"volume":5,' in window[0]  # [start - 3 s, start + 1 s): its rows from both ranges


def test_equal_times_across_symbols_keep_the_sinks_symbol_order():
    plan = ranges.plan_ranges(2 * S, S, 4 * S)
    names = ["A", "B", "C", "D"]
    quotes = [quote(s, T0, i) for i, s in enumerate(names)]
    trades = [trade(s, T0 + S, 10 + i) for i, s in enumerate(names)]
    got, _ = by_range(quotes, trades, plan, max_age_us=2 * S)
    order = [line.split(b'"symbol":"')[1][:1].decode() for line in got["enriched"].splitlines()]
    assert order == sorted(names, key=market.symbol_seq)


def test_split_rows_copies_the_lookback_into_the_next_ranges():
    plan = ranges.plan_ranges(3 * S, S, 2 * S)  # lookback 2 s = one range
    rows = quote_rb([quote("A", at, i) for i, at in enumerate([0, S, 2 * S - 1, 2 * S, 5 * S])])
    parts = {r: b.column("event_us").to_pylist() for r, b in ranges.split_rows(rows, plan)}
    assert parts == {0: [0, S, 2 * S - 1], 1: [0, S, 2 * S - 1, 2 * S], 2: [2 * S, 5 * S], 3: [5 * S]}


def test_plan_rounds_the_range_to_the_period_and_refuses_bad_windows():
    assert ranges.plan_ranges(12 * S, 3 * S, 5 * S).range_us == 6 * S
    with pytest.raises(ValueError):
        ranges.plan_ranges(10 * S, 3 * S, 60 * S)
    with pytest.raises(ValueError):
        ranges.RangePlan(7 * S + 1, 9 * S, 10 * S, S)  # not a multiple of the period
    with pytest.raises(ValueError):
        ranges.RangePlan(7 * S, 8 * S, 10 * S, S)  # the lookback must be size - period


def test_witness_tables_keep_the_last_quote_of_each_cell_in_as_of_order():
    plan = ranges.plan_ranges(2 * S, S, 4 * S)  # cell c = [4c - 1, 4c + 3) s
    a = ranges.last_quotes_by_cell("A", quote_rb([quote("A", 2 * S, 1), quote("A", 2 * S, 2, arrival=2 * S + 5)]), plan)
    b = ranges.last_quotes_by_cell("A", quote_rb([quote("A", 2 * S, 3, arrival=2 * S + 1), quote("A", 3 * S, 4)]), plan)
    table = ranges.merge_witnesses([b, a])
    assert list(zip(table.column("cell").to_pylist(), table.column("line").to_pylist())) == [(0, 2), (1, 4)]
    witnesses = ranges.Witnesses(table)
    assert witnesses.before("A", 1).column("line").to_pylist() == [2]
    assert witnesses.before("A", 5).column("line").to_pylist() == [4]
    assert witnesses.before("A", 0).num_rows == 0 and witnesses.before("Z", 9).num_rows == 0
    assert np.array_equal(ranges.window_range(np.array([-3 * S, -S]), plan), [-1, 0])


# --------------------------------------------------------------------------- AnalyseRanges on Beam


def _analyse_on_beam(quotes, trades, spill_dir, expected, dropped=None, block=97):
    """Runs AnalyseRanges on the quotes and trades (in blocks of ``block`` rows, per symbol) and
    checks that each text output, its chunks in range order, is ``expected[name]``."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
    from apache_beam.testing.util import assert_that

    from transforms.trades.stage import RANGE_TEXT, AnalyseRanges

    def elements(rows, make):
        return [(symbol, batch) for start in range(0, len(rows), block)
                for symbol, batch in sorted(by_symbol(rows[start:start + block], make).items())]

    def is_file(data):
        def check(chunks):
            got = b"".join(c.data for c in sorted(chunks, key=lambda c: c.seq))
            assert got == data, (len(got), len(data))
        return check

    with BeamTestPipeline() as pipeline:
        inputs = {"quotes": pipeline | "Q" >> beam.Create(elements(quotes, quote_rb)),
                  "trades": pipeline | "T" >> beam.Create(elements(trades, trade_rb))}
        if dropped is not None:
            inputs["dropped"] = pipeline | "D" >> beam.Create([dropped])
        out = inputs | AnalyseRanges(400 * MS, feature_size_us=3 * S, feature_period_us=S, scale=SCALE,
                                     range_us=5 * S, spill_dir=spill_dir)
        for name, tag in (("enriched", RANGE_TEXT["enriched"]), ("unmatched", RANGE_TEXT["unmatched"]),
                          ("features", RANGE_TEXT["features"])):
            assert_that(out[tag], is_file(expected[name]), label=f"Check{name}")


def test_analyse_ranges_spilled_or_shuffled_gives_the_whole_symbol_files(tmp_path):
    import os

    quotes, trades = random_market(4)
    reference = whole_symbol(quotes, trades, max_age_us=400 * MS, size_us=3 * S, period_us=S)
    spill_dir = str(tmp_path / "ranges")
    assert all(reference.values())
    _analyse_on_beam(quotes, trades, spill_dir, reference)
    # The parts stay for a retried bundle (the sink deletes the folder when it publishes): a second
    # run over the same folder, as a retry would, rewrites the same names and gives the same files.
    parts = sorted(os.listdir(spill_dir))
    assert parts and all(name.endswith(".arrow") for name in parts)
    _analyse_on_beam(quotes, trades, spill_dir, reference)
    assert sorted(os.listdir(spill_dir)) == parts
    _analyse_on_beam(quotes, trades, None, reference)


def test_analyse_ranges_leaves_out_the_dropped_trades(tmp_path):
    from transforms.trades.read import DROPPED_SCHEMA

    quotes, trades = random_market(5)
    gone = trades[::7]
    kept = [t for t in trades if t not in gone]
    dropped = pa.RecordBatch.from_pylist([{"file": t["file"], "line": t["line"]} for t in gone], schema=DROPPED_SCHEMA)
    reference = whole_symbol(quotes, kept, max_age_us=400 * MS, size_us=3 * S, period_us=S)
    assert reference != whole_symbol(quotes, trades, max_age_us=400 * MS, size_us=3 * S, period_us=S)
    _analyse_on_beam(quotes, trades, str(tmp_path), reference, dropped)
    _analyse_on_beam(quotes, trades, None, reference, dropped)
