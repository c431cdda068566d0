"""transforms.trades.features: the vectorized sliding-window features against a naive per-window reference."""

from __future__ import annotations

import json
import math
import random
import statistics

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that

from transforms.trades import market
from transforms.trades.features import (
    feature_chunk,
    feature_lines,
    parse_features,
    read_feature_lines,
    sliding_features,
)
from transforms.trades.market import ENRICHED_SCHEMA, FEATURE_SCHEMA, QUOTE_POINT_SCHEMA, UNMATCHED_SCHEMA
from transforms.trades.stage import ComputeFeatures
from transforms.windows.logic import WindowingError

SCALE = 4
SECOND = 1_000_000
T0 = 1_717_398_000_000_000  # 2024-06-03 07:00:00 UTC


# --------------------------------------------------------------------------- building inputs


def quote_rows(rows: list[dict]) -> pa.RecordBatch:
    """QUOTE_POINT rows from dicts with event_us, bid, ask (and optionally arrival_us, file, line)."""
    full = [
        {
            "event_us": row["event_us"],
            "arrival_us": row.get("arrival_us", row["event_us"]),
            "file": row.get("file", 0),
            "line": row.get("line", index + 2),
            "timestamp": "",
            "bid": row["bid"],
            "ask": row["ask"],
        }
        for index, row in enumerate(rows)
    ]
    return pa.RecordBatch.from_pylist(full, schema=QUOTE_POINT_SCHEMA)


def _trade(row: dict, index: int) -> dict:
    sign = row.get("sign", 1)
    return {
        "file": 0,
        "line": index + 2,
        "timestamp": "",
        "event_us": row["event_us"],
        "arrival_us": row["event_us"],
        "latency_us": None,
        "symbol": row.get("symbol", "X"),
        "price": row["price"],
        "size": row["size"],
        "side": "buy" if sign > 0 else "sell",
        "sign": sign,
        "trade_id": f"t{index}",
    }


def enriched_rows(rows: list[dict]) -> pa.RecordBatch:
    """ENRICHED rows from dicts with event_us, price, size, sign, bps (effective_spread_bps)."""
    full = []
    for index, row in enumerate(rows):
        trade = _trade(row, index)
        trade.update(
            quote_us=row["event_us"],
            quote_timestamp="",
            bid=row["price"] - 1,
            ask=row["price"] + 1,
            mid=row["price"] / 10**SCALE,
            spread=2 / 10**SCALE,
            effective_spread_bps=row["bps"],
            quote_age_us=0,
        )
        full.append(trade)
    return pa.RecordBatch.from_pylist(full, schema=ENRICHED_SCHEMA)


def unmatched_rows(rows: list[dict]) -> pa.RecordBatch:
    full = []
    for index, row in enumerate(rows):
        trade = _trade(row, index)
        trade.update(reason=market.NO_QUOTE, detail="")
        full.append(trade)
    return pa.RecordBatch.from_pylist(full, schema=UNMATCHED_SCHEMA)


def random_symbol_inputs(rng: random.Random, size_us: int = 10 * SECOND) -> tuple[list[dict], list[dict], list[dict]]:
    """Quotes, enriched and unmatched trades of one symbol, in clusters about as wide as a window
    separated by gaps from 1 us to several windows.

    Clusters have quotes and trades, quotes only, or trades only; event times are drawn from a
    few values per cluster (ties), some on whole milliseconds; rows come shuffled.
    """
    quotes, enriched, unmatched = [], [], []
    start = T0 + rng.randrange(0, 5 * SECOND)
    moment = start
    price = rng.randrange(900_000, 1_100_000)
    for _ in range(12):
        kind = rng.choice(["both", "both", "quotes", "trades"])
        times = [moment + rng.randrange(0, size_us) for _ in range(rng.randrange(1, 12))]
        times = sorted({t - t % 1000 if rng.random() < 0.5 and t % 1000 else t for t in times} | {moment})
        for _ in range(rng.randrange(1, 30)):
            t = rng.choice(times)
            if kind != "trades" and rng.random() < 0.6:
                price = max(10, price + rng.randrange(-500, 501))
                half_spread = rng.randrange(0, 300)
                quotes.append({
                    "event_us": t,
                    "arrival_us": t + rng.randrange(0, 3) * 1000,
                    "file": rng.randrange(0, 2),
                    "line": rng.randrange(2, 10_000),
                    "bid": price - half_spread,
                    "ask": price + half_spread + rng.randrange(0, 2),
                })
            if kind != "quotes" and rng.random() < 0.6:
                trade = {
                    "event_us": t,
                    "price": price + rng.randrange(-200, 201),
                    "size": rng.choice([0.0, 0.5, 1.0, 2.5, 100.0, float(rng.randrange(1, 1000))]),
                    "sign": rng.choice([1, -1]),
                    "bps": rng.choice([None, rng.uniform(0.0, 50.0), rng.uniform(0.0, 5.0)]),
                }
                (enriched if rng.random() < 0.6 else unmatched).append(trade)
        moment = max(times) + rng.choice([1, size_us // 20, size_us // 2, size_us * 3 // 2, 4 * size_us])
    rng.shuffle(quotes)
    rng.shuffle(enriched)
    rng.shuffle(unmatched)
    return quotes, enriched, unmatched


# --------------------------------------------------------------------------- the naive reference


def reference_features(symbol, quotes, enriched, unmatched, size_us, period_us, scale) -> list[dict]:
    """Feature rows by the definitions, one candidate window start at a time."""
    unit = 10**scale
    ordered = sorted(quotes, key=lambda q: (q["event_us"], q["arrival_us"], q["file"], q["line"]))
    trades = [dict(t, joined=True) for t in enriched] + [dict(t, joined=False) for t in unmatched]
    times = [q["event_us"] for q in quotes] + [t["event_us"] for t in trades]
    if not times:
        return []
    rows = []
    start = (min(times) - size_us) // period_us * period_us
    while start <= max(times):
        end = start + size_us
        inside = [start <= q["event_us"] < end for q in ordered]
        qs = [q for q, i in zip(ordered, inside) if i]
        ts = [t for t in trades if start <= t["event_us"] < end]
        start += period_us
        if not qs and not ts:
            continue
        mids = [(q["bid"] + q["ask"]) / 2 / unit for q in qs]
        row = {
            "symbol": symbol,
            "window_start_us": end - size_us,
            "window_end_us": end,
            "quotes": len(qs),
            "trades": len(ts),
            "mid_log_return": None,
            "realized_vol": None,
            "mean_spread": None,
            "max_spread": None,
            "mean_spread_bps": None,
        }
        if qs:
            squares = []
            for i in range(1, len(ordered)):
                if inside[i - 1] and inside[i]:
                    a = (ordered[i - 1]["bid"] + ordered[i - 1]["ask"]) / 2 / unit
                    b = (ordered[i]["bid"] + ordered[i]["ask"]) / 2 / unit
                    squares.append(math.log(b / a) ** 2)
            row.update(
                mid_log_return=math.log(mids[-1] / mids[0]),
                realized_vol=math.sqrt(math.fsum(squares)),
                mean_spread=statistics.mean((q["ask"] - q["bid"]) / unit for q in qs),
                max_spread=max((q["ask"] - q["bid"]) / unit for q in qs),
                mean_spread_bps=statistics.mean(
                    (q["ask"] - q["bid"]) / ((q["bid"] + q["ask"]) / 2) * 1e4 for q in qs
                ),
            )
        buy = math.fsum(t["size"] for t in ts if t["sign"] > 0)
        sell = math.fsum(t["size"] for t in ts if t["sign"] < 0)
        volume = math.fsum(t["size"] for t in ts)
        spreads = [t["bps"] for t in ts if t["joined"] and t["bps"] is not None]
        row.update(
            volume=volume,
            buy_volume=buy,
            sell_volume=sell,
            imbalance=(buy - sell) / (buy + sell) if volume else None,
            vwap=math.fsum(t["price"] / unit * t["size"] for t in ts) / volume if volume else None,
            mean_effective_spread_bps=statistics.mean(spreads) if spreads else None,
        )
        rows.append(row)
    return rows


def assert_rows_match(actual: list[dict], expected: list[dict]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert list(got) == FEATURE_SCHEMA.names
        for name in FEATURE_SCHEMA.names:
            value, wanted = got[name], want[name]
            context = f"{name} of window {want['window_start_us']} of {want['symbol']}"
            if wanted is None or isinstance(wanted, (str, int)):
                assert value == wanted, context
            else:
                assert value is not None and math.isfinite(value), context
                assert value == pytest.approx(wanted, rel=1e-9, abs=1e-300), context


def features_of(symbol, quotes, enriched, unmatched, size_us, period_us, scale=SCALE) -> pa.RecordBatch:
    return sliding_features(
        symbol,
        quote_rows(quotes),
        enriched_rows(enriched),
        unmatched_rows(unmatched),
        size_us=size_us,
        period_us=period_us,
        scale=scale,
    )


# --------------------------------------------------------------------------- sliding_features


@pytest.mark.parametrize(
    "seed, size_us, period_us",
    [
        (1, 10 * SECOND, SECOND),
        (2, 10 * SECOND, SECOND),
        (3, 3 * SECOND, 3 * SECOND),  # tumbling
        (4, 5 * SECOND, SECOND),
        (5, 6_000, 2_000),  # sub-second windows, microsecond times
        (6, 20 * SECOND, 5 * SECOND),
    ],
)
def test_matches_the_naive_reference(seed, size_us, period_us):
    rng = random.Random(seed)
    every = []
    for symbol in ("AAPL", "MSFT", "ÉTÉ\"x"):
        quotes, enriched, unmatched = random_symbol_inputs(rng, size_us)
        rb = features_of(symbol, quotes, enriched, unmatched, size_us, period_us)
        assert rb.schema == FEATURE_SCHEMA
        expected = reference_features(symbol, quotes, enriched, unmatched, size_us, period_us, SCALE)
        assert len(expected) > 5
        assert_rows_match(rb.to_pylist(), expected)
        every += expected
    # The random data has every kind of window the definitions single out.
    assert any(row["quotes"] and not row["trades"] for row in every)
    assert any(row["trades"] and not row["quotes"] for row in every)
    assert any(row["quotes"] == 1 for row in every)
    assert any(row["quotes"] > 3 and row["trades"] > 3 for row in every)
    assert any(row["trades"] and row["volume"] == 0 for row in every)


def test_windows_follow_beams_sliding_assignment():
    # t exactly on a window start belongs to it; t equal to a window end does not.
    rb = features_of("S", [{"event_us": T0 + 10 * SECOND, "bid": 100, "ask": 102}], [], [], 3 * SECOND, SECOND)
    assert rb.column("window_start_us").to_pylist() == [T0 + 8 * SECOND, T0 + 9 * SECOND, T0 + 10 * SECOND]
    assert rb.column("window_end_us").to_pylist() == [T0 + 11 * SECOND, T0 + 12 * SECOND, T0 + 13 * SECOND]
    # Two elements far apart: their windows only, no empty ones in between.
    rb = features_of(
        "S",
        [{"event_us": T0 + 500_000, "bid": 100, "ask": 102}],
        [{"event_us": T0 + 60 * SECOND, "price": 101, "size": 1.0, "sign": 1, "bps": 1.0}],
        [],
        2 * SECOND,
        SECOND,
    )
    starts = [start - T0 for start in rb.column("window_start_us").to_pylist()]
    assert starts == [-SECOND, 0, 59 * SECOND, 60 * SECOND]
    assert rb.column("quotes").to_pylist() == [1, 1, 0, 0]
    assert rb.column("trades").to_pylist() == [0, 0, 1, 1]


def test_single_quote_and_no_trades():
    rb = features_of("S", [{"event_us": T0 + 1_500_000, "bid": 1_000_000, "ask": 1_000_200}], [], [], 10 * SECOND, SECOND)
    rows = rb.to_pylist()
    assert len(rows) == 10
    for row in rows:
        assert row["quotes"] == 1 and row["trades"] == 0
        assert row["mid_log_return"] == 0.0 and row["realized_vol"] == 0.0
        assert row["mean_spread"] == pytest.approx(0.02) and row["max_spread"] == pytest.approx(0.02)
        assert row["mean_spread_bps"] == pytest.approx(200 / 1_000_100 * 1e4)
        assert (row["volume"], row["buy_volume"], row["sell_volume"]) == (0.0, 0.0, 0.0)
        assert row["imbalance"] is None and row["vwap"] is None and row["mean_effective_spread_bps"] is None


def test_unmatched_only_trades():
    trades = [
        {"event_us": T0, "price": 1_000_000, "size": 3.0, "sign": 1},
        {"event_us": T0 + 100, "price": 1_010_000, "size": 1.0, "sign": -1},
    ]
    rows = features_of("S", [], [], trades, SECOND, SECOND).to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert (row["quotes"], row["trades"]) == (0, 2)
    assert all(row[name] is None for name in ("mid_log_return", "realized_vol", "mean_spread", "max_spread", "mean_spread_bps"))
    assert (row["volume"], row["buy_volume"], row["sell_volume"]) == (4.0, 3.0, 1.0)
    assert row["imbalance"] == pytest.approx(0.5)
    assert row["vwap"] == pytest.approx((100.0 * 3 + 101.0) / 4)
    assert row["mean_effective_spread_bps"] is None


def test_zero_volume_trades_have_no_ratios():
    trades = [{"event_us": T0, "price": 1_000_000, "size": 0.0, "sign": 1, "bps": 2.0}]
    row = features_of("S", [], trades, [], SECOND, SECOND).to_pylist()[0]
    assert row["trades"] == 1 and row["volume"] == 0.0
    assert row["imbalance"] is None and row["vwap"] is None
    assert row["mean_effective_spread_bps"] == 2.0


def test_quote_order_breaks_ties_by_arrival_file_line():
    # Same event time: arrival decides, then file, then line, whatever the input order.
    quotes = [
        {"event_us": T0, "arrival_us": T0 + 5, "file": 0, "line": 2, "bid": 300, "ask": 300},
        {"event_us": T0, "arrival_us": T0 + 1, "file": 1, "line": 9, "bid": 200, "ask": 200},
        {"event_us": T0, "arrival_us": T0 + 1, "file": 1, "line": 3, "bid": 100, "ask": 100},
    ]
    row = features_of("S", quotes, [], [], SECOND, SECOND).to_pylist()[0]
    assert row["mid_log_return"] == pytest.approx(math.log(3.0))
    assert row["realized_vol"] == pytest.approx(math.sqrt(math.log(2.0) ** 2 + math.log(1.5) ** 2))


def test_realized_vol_only_counts_pairs_inside_the_window():
    quotes = [
        {"event_us": T0, "bid": 100, "ask": 100},
        {"event_us": T0 + SECOND, "bid": 200, "ask": 200},
        {"event_us": T0 + SECOND + 1, "bid": 100, "ask": 100},
    ]
    rows = {row["window_start_us"] - T0: row for row in features_of("S", quotes, [], [], 2 * SECOND, SECOND).to_pylist()}
    assert rows[-SECOND]["realized_vol"] == 0.0  # the first quote alone
    assert rows[0]["realized_vol"] == pytest.approx(math.sqrt(2) * math.log(2))
    assert rows[SECOND]["realized_vol"] == pytest.approx(math.log(2))  # not the pair across its start
    assert rows[SECOND]["mid_log_return"] == pytest.approx(-math.log(2))


def test_no_input_gives_no_windows():
    rb = sliding_features(
        "S", market.empty(QUOTE_POINT_SCHEMA), market.empty(ENRICHED_SCHEMA), market.empty(UNMATCHED_SCHEMA),
        size_us=SECOND, period_us=SECOND, scale=SCALE,
    )
    assert rb.num_rows == 0 and rb.schema == FEATURE_SCHEMA


@pytest.mark.parametrize("size_us, period_us", [(10 * SECOND, 3 * SECOND), (SECOND, 2 * SECOND), (SECOND, 0)])
def test_size_must_be_a_multiple_of_the_period(size_us, period_us):
    with pytest.raises(ValueError, match="period"):
        features_of("S", [{"event_us": T0, "bid": 1, "ask": 2}], [], [], size_us, period_us)
    with pytest.raises(ValueError, match="period"):
        ComputeFeatures(size_us, period_us, scale=SCALE)


def test_parse_features():
    assert parse_features("sliding:10s,1s") == (10 * SECOND, SECOND)
    assert parse_features(" sliding:1m,500ms ") == (60 * SECOND, 500_000)
    for text in ("fixed:1s", "session:1s", "sliding:10s", "sliding:10x,1s", "", "sliding:1s,2s"):
        with pytest.raises(WindowingError, match="--features"):
            parse_features(text)
    with pytest.raises(WindowingError, match="multiple of its period"):
        parse_features("sliding:10s,3s")


# --------------------------------------------------------------------------- features.jsonl


def _sample_features() -> pa.RecordBatch:
    rng = random.Random(7)
    batches = []
    for symbol in ("AAPL", "MS\"FT\\ü"):
        quotes, enriched, unmatched = random_symbol_inputs(rng)
        batches.append(features_of(symbol, quotes, enriched, unmatched, 10 * SECOND, SECOND))
    return pa.concat_batches(batches)


def test_feature_lines_format():
    trades = [{"event_us": T0 + 2 * SECOND, "price": 1_000_000, "size": 3.0, "sign": 1, "bps": 1.25}]
    quotes = [{"event_us": T0 + 1_000, "bid": 1_000_000, "ask": 1_000_200}]
    rb = features_of("AAPL", quotes, trades, [], 10 * SECOND, 10 * SECOND)
    chunk = feature_chunk("AAPL", rb)
    assert chunk.keyed and chunk.lines == 1 and chunk.seq == market.symbol_seq("AAPL")
    assert chunk.data == (
        b"00001717398010000000\t"
        b'{"symbol":"AAPL","window_start":"2024-06-03 07:00:00.000","window_end":"2024-06-03 07:00:10.000",'
        b'"quotes":1,"trades":1,"mid_log_return":0,"realized_vol":0,"mean_spread":0.02,"max_spread":0.02,'
        b'"mean_spread_bps":1.9998000199980004,"volume":3,"buy_volume":3,"sell_volume":0,"imbalance":1,'
        b'"vwap":100,"mean_effective_spread_bps":1.25}\n'
    )


def test_feature_chunk_lines_are_json_keyed_by_window_end():
    rb = _sample_features()
    symbol_rows = rb.filter(pa.compute.equal(rb.column("symbol"), "AAPL"))
    chunk = feature_chunk("AAPL", symbol_rows)
    text = chunk.data.decode("utf-8")
    assert "NaN" not in text and "Infinity" not in text and "inf" not in text
    lines = text.splitlines()
    assert chunk.lines == len(lines) == symbol_rows.num_rows
    keys = [line.split("\t", 1)[0] for line in lines]
    assert keys == [f"{end:020d}" for end in symbol_rows.column("window_end_us").to_pylist()]
    assert keys == sorted(keys)
    expected_keys = ["symbol", "window_start", "window_end"] + FEATURE_SCHEMA.names[3:]
    for line, row in zip(lines, symbol_rows.to_pylist()):
        obj = json.loads(line.split("\t", 1)[1])
        assert list(obj) == expected_keys
        assert obj["symbol"] == "AAPL"
        for name in FEATURE_SCHEMA.names[3:]:
            assert obj[name] == row[name]  # shortest round-trip text: exact
    assert any(json.loads(line.split("\t", 1)[1])["mid_log_return"] is None for line in lines)


def test_read_feature_lines_inverts_feature_lines(tmp_path):
    rb = _sample_features()
    assert rb.column("imbalance").null_count and rb.column("mean_spread").null_count
    path = tmp_path / "features.jsonl"
    path.write_bytes(feature_lines(rb))
    back = read_feature_lines(path)
    assert back.schema == FEATURE_SCHEMA
    assert back.equals(rb)
    assert back.to_pylist() == rb.to_pylist()
    # Lines still carrying the sort key read the same.
    keyed = tmp_path / "keyed.jsonl"
    keyed.write_bytes(feature_lines(rb, keyed=True))
    assert read_feature_lines(keyed).equals(rb)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert read_feature_lines(empty).num_rows == 0


def test_sub_millisecond_windows_round_trip(tmp_path):
    rb = features_of("S", [{"event_us": T0 + 1_234, "bid": 10, "ask": 12}], [], [], 1_500, 500)
    assert rb.num_rows == 3
    path = tmp_path / "features.jsonl"
    path.write_bytes(feature_lines(rb))
    assert read_feature_lines(path).equals(rb)


# --------------------------------------------------------------------------- Beam


def _split(batch: pa.RecordBatch, parts: int) -> list[pa.RecordBatch]:
    step = max(1, -(-batch.num_rows // parts))
    return [batch.slice(offset, step) for offset in range(0, batch.num_rows, step)]


def test_compute_features_matches_the_pure_function():
    rng = random.Random(11)
    size_us, period_us = 10 * SECOND, SECOND
    inputs = {"quotes": [], "enriched": [], "unmatched": []}
    expected = {}
    for symbol in ("AAPL", "MSFT", "QUOTES_ONLY", "TRADES_ONLY"):
        quotes, enriched, unmatched = random_symbol_inputs(rng)
        if symbol == "QUOTES_ONLY":
            enriched, unmatched = [], []
        if symbol == "TRADES_ONLY":
            quotes = []
        batches = {"quotes": quote_rows(quotes), "enriched": enriched_rows(enriched), "unmatched": unmatched_rows(unmatched)}
        for name, batch in batches.items():
            inputs[name] += [(symbol, part) for part in _split(batch, 3)]
        expected[symbol] = sliding_features(
            symbol, *batches.values(), size_us=size_us, period_us=period_us, scale=SCALE
        ).to_pylist()

    def check(actual):
        got = {symbol: rb.to_pylist() for symbol, rb in actual}
        assert len(got) == len(actual) == len(expected)
        assert got == expected

    pipeline = BeamTestPipeline()
    pcolls = {name: pipeline | f"Create{name}" >> beam.Create(elements) for name, elements in inputs.items()}
    features = pcolls | ComputeFeatures(size_us, period_us, scale=SCALE)
    assert_that(features, check)
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("feature_windows"))["counters"]
    assert sum(counter.committed for counter in counters) == sum(len(rows) for rows in expected.values())
