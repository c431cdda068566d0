"""The sample generator, and that the bundled samples are what it documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from beam_pipeline.config import bundled_sample
from beam_pipeline.devtools.samples import generate, with_malformed
from transforms.quotes import rules as quotes


def rows(data: bytes) -> list[list[str]]:
    return [line.split(",") for line in data.decode().splitlines()[1:]]


def test_bundled_samples_are_reproducible_from_the_documented_commands():
    assert Path(bundled_sample()).read_bytes() == with_malformed(generate(5000, 7), 7)
    assert Path(bundled_sample("live_sample.csv")).read_bytes() == generate(2000, 11, live=True)


def test_generated_quotes_are_realistic():
    table = rows(generate(5000, 3))
    stamps = [quotes.parse_timestamp(r[0]) for r in table]
    latency = np.array([int(r[6]) for r in table])
    assert stamps == sorted(stamps)
    assert {r[1] for r in table} == {"EURUSD", "AAPL", "BTCUSD"}
    assert all(quotes.parse_price(r[2], "b", 18, 8) < quotes.parse_price(r[4], "a", 18, 8) for r in table)
    assert np.mean(latency <= 20) > 0.9 and 100 < latency.max() <= 421
    arrivals = [s + lat * 1000 for s, lat in zip(stamps, latency.tolist())]
    assert arrivals != sorted(arrivals)  # arrival order differs from timestamp order


def test_latency_decimals_change_only_the_latencies():
    whole = [line.split(",") for line in generate(3000).decode().splitlines()[1:]]
    fine = [line.split(",") for line in generate(3000, latency_decimals=3).decode().splitlines()[1:]]
    assert [row[:-1] for row in fine] == [row[:-1] for row in whole]
    micros = [quotes.parse_latency_us(row[-1]) for row in fine]
    assert all(len(row[-1].partition(".")[2]) == 3 for row in fine)
    assert [m // 1000 for m in micros] == [int(row[-1]) for row in whole]
    assert len({m % 1000 for m in micros}) > 500  # the microseconds vary
    with pytest.raises(ValueError, match="0 to 3"):
        generate(10, latency_decimals=4)


def test_live_sample_has_no_latency():
    assert generate(10, 1, live=True).decode().splitlines()[0] == "timestamp,symbol,bid_price,bid_size,ask_price,ask_size"


# --------------------------------------------------------------------------- trades

TRADE_CODES = ["bad_price", "bad_side", "bad_size", "bad_timestamp", "missing_trade_id", "wrong_field_count"]


def documented_trades_command() -> list[str]:
    import beam_pipeline.devtools.samples as samples

    lines = [line.strip() for line in samples.__doc__.splitlines() if "--trades-from" in line and "python -m" in line]
    assert len(lines) == 1, lines
    return lines[0].split()[3:]  # after "python -m beam_pipeline.devtools.samples"


def reference_quotes(path: str) -> dict[str, list[int]]:
    """Event times of the quotes the row-by-row reference accepts, per symbol (sorted)."""
    from beam_pipeline.devtools.reference import Counts, _arrival_ordered

    times: dict[str, list[int]] = {}
    for _arrival, _file, _line, quote in _arrival_ordered(path, 0, "UNKNOWN", Counts(dead_letters=[[]])):
        times.setdefault(quote.symbol, []).append(quote.event_us)
    return {symbol: sorted(values) for symbol, values in times.items()}


def test_bundled_trades_are_what_the_documented_command_writes(tmp_path):
    from beam_pipeline.devtools.samples import main

    args = documented_trades_command()
    assert args[-1] == "beam_pipeline/data/trades_sample.csv"
    out = tmp_path / "trades.csv"
    assert main(args[:-1] + [str(out)]) == 0
    assert out.read_bytes() == Path(bundled_sample("trades_sample.csv")).read_bytes()


def test_bundled_trades_read_with_one_dead_letter_of_each_kind_and_fifteen_unmatched():
    import bisect

    from transforms.trades.read import read_trades

    path = bundled_sample("trades_sample.csv")
    read = read_trades([path], precision=18, scale=8, horizon_us=1_000_000)
    assert read.records_in == 1500 and read.duplicates == 0
    assert sorted(quotes.reject_code(r) for r in read.dead.column("reject").to_pylist()) == TRADE_CODES
    assert read.valid.num_rows == 1500 - len(TRADE_CODES)
    # Unmatched by design: no quote of the symbol within the 1 s before the trade.
    quoted = reference_quotes(bundled_sample())
    unmatched = {"no_symbol": 0, "after_last": 0, "before_first": 0}
    for symbol, event_us in zip(read.valid.column("symbol").to_pylist(), read.valid.column("event_us").to_pylist()):
        times = quoted.get(symbol)
        if times is None:
            unmatched["no_symbol"] += 1
            continue
        before = bisect.bisect_right(times, event_us)
        if before and event_us - times[before - 1] <= 1_000_000:
            continue
        unmatched["after_last" if before == len(times) else "before_first" if before == 0 else "gap"] += 1
    assert unmatched == {"no_symbol": 5, "after_last": 5, "before_first": 5}


def test_generated_trades_are_realistic(tmp_path):
    from beam_pipeline.devtools.samples import make_trades

    data = make_trades(bundled_sample(), 3000, seed=2)
    table = rows(data)
    assert data.decode().splitlines()[0] == "timestamp,symbol,price,size,side,trade_id,latency_ms"
    stamps = [quotes.parse_timestamp(r[0]) for r in table]
    assert stamps == sorted(stamps) and all(s % 1000 == 0 for s in stamps)
    assert [r[5] for r in table] == [f"T{i:07d}" for i in range(1, 3001)]
    sizes = np.array([int(r[3]) for r in table])
    assert sizes.min() >= 1 and sizes.max() <= 500
    latency = np.array([int(r[6]) for r in table])
    assert np.mean(latency <= 30) > 0.9 and latency.min() >= 0
    assert {r[4] for r in table} == {"buy", "sell"}
    # A trade is 0-800 ms after a quote, mostly at its bid or ask; at an ask it is mostly a buy.
    recent = _recent_quotes(bundled_sample())
    at_touch = 0
    sides = {"ask": [], "bid": []}
    for r, stamp in zip(table, stamps):
        price = quotes.parse_price(r[2], "price", 18, 8)
        bids = {bid for _, bid, _ in recent(r[1], stamp - 800_000, stamp)}
        asks = {ask for _, _, ask in recent(r[1], stamp - 800_000, stamp)}
        at_touch += price in bids or price in asks
        if price in asks and price not in bids:
            sides["ask"].append(r[4] == "buy")
        elif price in bids and price not in asks:
            sides["bid"].append(r[4] == "sell")
    assert at_touch / len(table) > 0.85
    assert np.mean(sides["ask"]) > 0.75 and np.mean(sides["bid"]) > 0.75
    assert make_trades(bundled_sample(), 3000, seed=2) == data  # reproducible


def _recent_quotes(path: str):
    """A function (symbol, start, end) -> the reference quotes (time, bid, ask) in [start, end]."""
    import bisect

    from beam_pipeline.devtools.reference import Counts, _arrival_ordered

    by_symbol: dict[str, list[tuple[int, int, int]]] = {}
    for _arrival, _file, _line, quote in _arrival_ordered(path, 0, "UNKNOWN", Counts(dead_letters=[[]])):
        by_symbol.setdefault(quote.symbol, []).append((quote.event_us, quote.bid, quote.ask))
    for values in by_symbol.values():
        values.sort()

    def find(symbol: str, start: int, end: int) -> list[tuple[int, int, int]]:
        values = by_symbol[symbol]
        return values[bisect.bisect_left(values, (start,)):bisect.bisect_right(values, (end, 2**63, 2**63))]

    return find


def test_a_million_trades_take_seconds(tmp_path):
    import time

    from beam_pipeline.devtools.samples import make_trades

    path = tmp_path / "quotes.csv"
    path.write_bytes(generate(200_000, 3))
    began = time.perf_counter()
    data = make_trades(str(path), 1_000_000, seed=1, malformed=True)
    assert time.perf_counter() - began < 15
    assert data.count(b"\n") == 1_000_001
