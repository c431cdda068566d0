"""Generate quote and trade CSVs: the bundled samples and the benchmark inputs.

The bundled files were made with::

    python -m beam_pipeline.devtools.samples --rows 5000 --seed 7 --malformed beam_pipeline/data/historical_sample.csv
    python -m beam_pipeline.devtools.samples --rows 2000 --seed 11 --live beam_pipeline/data/live_sample.csv
    python -m beam_pipeline.devtools.samples --trades-from beam_pipeline/data/historical_sample.csv --rows 1500 --seed 13 --malformed beam_pipeline/data/trades_sample.csv

Quotes: three symbols, each a random walk of its mid in ticks with a spread of 1-5 ticks and
sizes of 1-999; timestamps sorted, 0-40 ms apart, at millisecond precision; latencies mostly
0-20 ms with an exponential tail up to a few hundred ms, so arrival order differs from timestamp
order. ``--malformed`` replaces a handful of rows with one of each kind of bad row.

Trades (``--trades-from QUOTES.csv``, :func:`make_trades`) are drawn from the quote file's valid
quotes (what the replay and normalize stages accept): a trade happens 0-800 ms after a random
quote (millisecond precision, output sorted by timestamp), mostly at its bid or ask, sometimes
inside the spread, occasionally a tick outside; its side is buy when the price is at or above the
mid, with 10% noise; sizes 1-500; ids ``T0000001``, ... in time order; latencies mostly 0-30 ms.
With ``--malformed``, :data:`UNMATCHED_PER_KIND` trades of each kind a join cannot match are
added (a symbol without quotes, 1.5-3 s after the symbol's last quote, before its first quote),
and one row of each kind of bad trade row (:data:`MALFORMED_TRADES`); ``--rows`` counts them all.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.quotes import columns
from transforms.quotes.normalize import normalize_batch
from transforms.quotes.rules import PriceRule
from transforms.sources.replay import HistoricalReplay

HEADER = "timestamp,symbol,bid_price,bid_size,ask_price,ask_size,latency_ms"
LIVE_HEADER = "timestamp,symbol,bid_price,bid_size,ask_price,ask_size"
START_US = 1_717_398_000_000_000  # 2024-06-03 07:00:00 UTC


@dataclass(frozen=True)
class Instrument:
    symbol: str
    start: int  # mid in ticks
    tick_scale: int  # decimal places of a tick


INSTRUMENTS = (
    Instrument("EURUSD", 108_500, 5),
    Instrument("AAPL", 19_450, 2),
    Instrument("BTCUSD", 6_780_000, 2),
)

#: One of each kind of bad row, with what makes it bad (``{ts}`` is a nearby valid timestamp).
MALFORMED = (
    "not-a-time,EURUSD,1.08500,100,1.08510,100,5",
    ",AAPL,194.50,10,194.52,10,5",
    "{ts},AAPL,,10,194.52,10,5",
    "{ts},AAPL,abc,10,194.52,10,5",
    "{ts},AAPL,194.50,10,NaN,10,5",
    "{ts},AAPL,0,10,194.52,10,5",
    "{ts},AAPL,-194.50,10,194.52,10,5",
    "{ts},EURUSD,1.085001234,100,1.08510,100,5",
    "{ts},AAPL,194.55,10,194.52,10,5",
    "{ts},AAPL,194.50,-3,194.52,10,5",
    "{ts},AAPL,194.50,10,194.52,10,-7",
    "{ts},AAPL,194.50,10,194.52,10,2.5001",  # finer than a microsecond
    "{ts},AAPL,194.50,10,194.52,10",
    "{ts},AAPL,194.50,10,194.52,10,5,extra",
    "{ts},,194.50,10,194.52,10,5",
    "2024-06-03 06:00:00.000,AAPL,194.50,10,194.52,10,5",
)


def generate(rows: int, seed: int = 7, live: bool = False, latency_decimals: int = 0) -> bytes:
    """A CSV of ``rows`` quotes (with header) as bytes.

    ``latency_decimals`` (0 to 3) gives every latency that many decimals (``20.517`` for 3), drawn
    from a generator of its own so the rest of the file is the same as with whole milliseconds.
    """
    if not 0 <= latency_decimals <= 3:
        raise ValueError(f"latency_decimals must be 0 to 3 (microseconds), not {latency_decimals}")
    rng = np.random.default_rng(seed)
    event_us = START_US + np.cumsum(rng.integers(0, 41, rows)) * 1000
    which = rng.integers(0, len(INSTRUMENTS), rows)
    bid_parts, ask_parts, index_parts = [], [], []
    for number, instrument in enumerate(INSTRUMENTS):
        picked = np.flatnonzero(which == number)
        mid = instrument.start + np.cumsum(rng.integers(-3, 4, len(picked)))
        spread = rng.integers(1, 6, len(picked))
        bid = mid - spread // 2
        ask = bid + spread
        bid_parts.append(_fixed(bid, instrument.tick_scale))
        ask_parts.append(_fixed(ask, instrument.tick_scale))
        index_parts.append(picked)
    order = np.argsort(np.concatenate(index_parts), kind="stable")
    bid_text = pa.concat_arrays(bid_parts).take(pa.array(order))
    ask_text = pa.concat_arrays(ask_parts).take(pa.array(order))
    symbols = pa.array([i.symbol for i in INSTRUMENTS]).take(pa.array(which))
    sizes = [pc.cast(pa.array(rng.integers(1, 1000, rows)), pa.string()) for _ in range(2)]
    parts: list = [columns.format_timestamps(event_us), ",", symbols, ",", bid_text, ",", sizes[0], ",",
                   ask_text, ",", sizes[1]]
    if not live:
        tail = np.minimum(rng.exponential(60.0, rows), 400).astype(np.int64) + 21
        latency = np.where(rng.random(rows) < 0.94, rng.integers(0, 21, rows), tail)
        if latency_decimals:
            fraction = np.random.default_rng([seed, 1]).integers(0, 10**latency_decimals, rows)
            parts += [",", _fixed(latency * 10**latency_decimals + fraction, latency_decimals)]
        else:
            parts += [",", pc.cast(pa.array(latency), pa.string())]
    body = columns.joined_lines(*parts)
    return ((LIVE_HEADER if live else HEADER) + "\n").encode() + body


def _fixed(ticks: np.ndarray, scale: int) -> pa.Array:
    """Prices with exactly ``scale`` decimals (``194.50``), as a feed would print them."""
    whole, fraction = np.divmod(ticks, 10**scale)
    return pc.binary_join_element_wise(
        pc.cast(pa.array(whole), pa.string()),
        pc.utf8_lpad(pc.cast(pa.array(fraction), pa.string()), scale, "0"),
        ".",
    )


def with_malformed(csv_bytes: bytes, seed: int = 7) -> bytes:
    """Replace rows spread over the file with the rows of :data:`MALFORMED`."""
    lines = csv_bytes.decode().splitlines()
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(np.arange(10, len(lines) - 1), size=len(MALFORMED), replace=False))
    for position, template in zip(positions.tolist(), MALFORMED):
        lines[position] = template.format(ts=lines[position].split(",", 1)[0])
    return ("\n".join(lines) + "\n").encode()


# --------------------------------------------------------------------------- trades

TRADE_HEADER = "timestamp,symbol,price,size,side,trade_id,latency_ms"
SCALE = 8  # the schemas' price scale: quote and trade prices are handled as integers * 10**8
QUOTE_PRICES = PriceRule(18, SCALE)
#: A symbol that has trades but no quotes (with --malformed): its price in ticks and tick decimals.
NO_QUOTE_SYMBOL = Instrument("MSFT", 41_525, 2)
#: With --malformed: trades of each kind a join cannot match (no quote, stale quote, before any quote).
UNMATCHED_PER_KIND = 5
#: With --malformed: one row of each kind of bad trade row, as (column, text replacing a good value).
MALFORMED_TRADES = (
    ("timestamp", "not-a-time"),
    ("price", "abc"),
    ("size", "-5"),
    ("side", "hold"),
    ("trade_id", ""),
    ("latency_ms", "5,extra"),  # one field too many
)
TRADE_EXTRAS = 3 * UNMATCHED_PER_KIND + len(MALFORMED_TRADES)


def valid_quotes(path: str) -> pa.Table:
    """The quotes of a CSV file that the replay and normalize stages accept (VALID_SCHEMA)."""
    batches = [normalize_batch(batch, QUOTE_PRICES)[0] for batch in HistoricalReplay([path])]
    return pa.Table.from_batches(batches).select(["event_us", "symbol", "bid", "ask"])


def price_ticks(codes: np.ndarray, count: int, bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """Each symbol's tick (scaled), by symbol code: the largest power of ten dividing its prices."""
    ticks = np.ones(count, dtype=np.int64)
    for code in range(count):
        mine = codes == code
        common = int(np.gcd.reduce(np.concatenate([bid[mine], ask[mine]])))
        while ticks[code] < 10**SCALE and common % (ticks[code] * 10) == 0:
            ticks[code] *= 10
    return ticks


@dataclass
class _Draft:
    """Trades being made: one entry per trade, prices scaled by 10**SCALE."""

    event_us: np.ndarray
    symbol: np.ndarray  # code: index into the symbol names
    price: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    tick: np.ndarray

    @staticmethod
    def concat(parts: list[_Draft]) -> _Draft:
        return _Draft(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                        ("event_us", "symbol", "price", "bid", "ask", "tick")))


def _prices_near(rng: np.random.Generator, bid: np.ndarray, ask: np.ndarray, tick: np.ndarray) -> np.ndarray:
    """45% at the bid, 45% at the ask, 7% inside (or at either side), 3% one tick outside."""
    u = rng.random(len(bid))
    inside = bid + tick * rng.integers(0, (ask - bid) // tick + 1)
    price = np.select([u < 0.45, u < 0.90, u < 0.97, u < 0.985], [bid, ask, inside, bid - tick], ask + tick)
    return np.maximum(price, tick)


def _near_quotes(rng, event_us, bid, ask, tick, symbol, offset_us) -> _Draft:
    return _Draft(event_us + offset_us, symbol, _prices_near(rng, bid, ask, tick), bid, ask, tick)


def _unmatched(rng: np.random.Generator, event_us: np.ndarray, codes: np.ndarray, bid: np.ndarray,
               ask: np.ndarray, ticks: np.ndarray) -> list[_Draft]:
    """Trades a join cannot match: a symbol without quotes (code ``len(ticks)``), 1.5-3 s after the
    symbol's last quote, and before its first (the quotes come sorted by event time)."""
    n = UNMATCHED_PER_KIND
    mine = np.arange(n) % len(ticks)
    first = np.array([np.flatnonzero(codes == code)[0] for code in mine.tolist()])
    last = np.array([np.flatnonzero(codes == code)[-1] for code in mine.tolist()])
    tick = ticks[mine]
    other = NO_QUOTE_SYMBOL
    other_tick = 10 ** (SCALE - other.tick_scale)
    other_bid = (other.start + rng.integers(-3, 4, n)) * other_tick
    other_times = event_us[rng.integers(0, len(event_us), n)] // 1000 * 1000
    no_quote = _near_quotes(rng, other_times, other_bid, other_bid + other_tick, np.full(n, other_tick),
                            np.full(n, len(ticks)), 0)
    stale = _near_quotes(rng, event_us[last] // 1000 * 1000, bid[last], ask[last], tick, mine,
                         rng.integers(1500, 3001, n) * 1000)
    early = _near_quotes(rng, event_us[first] // 1000 * 1000, bid[first], ask[first], tick, mine,
                         -rng.integers(1, 1001, n) * 1000)
    return [no_quote, stale, early]


def _price_texts(price: np.ndarray, tick: np.ndarray) -> pa.Array:
    """Prices with as many decimals as their tick has (``194.50``)."""
    parts, where = [], []
    for one in np.unique(tick).tolist():
        rows = np.flatnonzero(tick == one)
        decimals = SCALE - len(str(one)) + 1
        ticks = price[rows] // one
        parts.append(_fixed(ticks, decimals) if decimals else pc.cast(pa.array(ticks), pa.string()))
        where.append(rows)
    order = np.argsort(np.concatenate(where), kind="stable")
    return pa.concat_arrays(parts).take(pa.array(order))


def make_trades(quotes: pa.Table | str, rows: int, seed: int = 13, malformed: bool = False) -> bytes:
    """A trade CSV (with header) of ``rows`` rows drawn from valid quotes (see the module docstring).

    Args:
        quotes: normalized quotes (columns ``event_us``, ``symbol``, ``bid``, ``ask``; prices
            scaled by 10**8, sorted by ``event_us``), or the path of a quote CSV to take them from.
        rows: how many data rows to write (with ``malformed``, :data:`TRADE_EXTRAS` of them are
            the unmatched and bad rows).
        seed: the random generator's seed.
        malformed: add the unmatched and bad rows.
    """
    table = valid_quotes(quotes) if isinstance(quotes, str) else quotes
    by_time = np.argsort(table.column("event_us").to_numpy(), kind="stable")
    event_us, bid, ask = (table.column(name).to_numpy()[by_time] for name in ("event_us", "bid", "ask"))
    encoded = pc.dictionary_encode(table.column("symbol").combine_chunks())
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)[by_time]
    names = encoded.dictionary.to_pylist() + [NO_QUOTE_SYMBOL.symbol]
    if not len(event_us):
        raise ValueError("the quotes have no valid rows to draw trades from")
    extras = TRADE_EXTRAS if malformed else 0
    if rows < extras:
        raise ValueError(f"--malformed needs at least {extras} rows")
    rng = np.random.default_rng(seed)
    ticks = price_ticks(codes, len(names) - 1, bid, ask)
    normal = rows - extras + len(MALFORMED_TRADES) * malformed  # the bad rows start as normal trades
    pick = rng.integers(0, len(event_us), normal)
    parts = [_near_quotes(rng, event_us[pick] // 1000 * 1000, bid[pick], ask[pick], ticks[codes[pick]], codes[pick],
                          rng.integers(0, 801, normal) * 1000)]
    if malformed:
        parts += _unmatched(rng, event_us, codes, bid, ask, ticks)
    draft = _Draft.concat(parts)
    count = len(draft.event_us)
    buy = 2 * draft.price >= draft.bid + draft.ask
    buy ^= rng.random(count) < 0.1
    size = rng.integers(1, 501, count)
    latency = np.where(rng.random(count) < 0.95, rng.integers(0, 31, count), rng.integers(31, 301, count))
    order = np.argsort(draft.event_us, kind="stable")
    texts = {
        "timestamp": columns.format_timestamps(draft.event_us[order]),
        "symbol": pa.array(names, type=pa.string()).take(pa.array(draft.symbol[order])),
        "price": _price_texts(draft.price[order], draft.tick[order]),
        "size": pc.cast(pa.array(size[order]), pa.string()),
        "side": pc.if_else(pa.array(buy[order]), "buy", "sell"),
        "trade_id": _trade_ids(count),
        "latency_ms": pc.cast(pa.array(latency[order]), pa.string()),
    }
    if malformed:
        # The bad rows: normal trades (the first ones drawn) with one field spoiled each.
        position = np.empty(count, dtype=np.int64)
        position[order] = np.arange(count)
        for number, (name, text) in enumerate(MALFORMED_TRADES):
            spoiled = np.zeros(count, dtype=bool)
            spoiled[position[number]] = True
            texts[name] = pc.if_else(pa.array(spoiled), pa.scalar(text), texts[name])
    parts_text: list = []
    for name in TRADE_HEADER.split(","):
        parts_text += [texts[name], ","]
    return (TRADE_HEADER + "\n").encode() + columns.joined_lines(*parts_text[:-1])


def _trade_ids(count: int) -> pa.Array:
    width = max(7, len(str(count)))
    numbers = pc.utf8_lpad(pc.cast(pa.array(np.arange(1, count + 1)), pa.string()), width, "0")
    return pc.binary_join_element_wise("T", numbers, "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.devtools.samples", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="CSV file to write")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--live", action="store_true", help="no latency_ms column (a live feed's rows)")
    parser.add_argument("--latency-decimals", type=int, default=0, choices=range(4),
                        help="decimals of every latency_ms (default 0: whole milliseconds)")
    parser.add_argument("--malformed", action="store_true", help="include one row of each kind of bad row")
    parser.add_argument("--trades-from", metavar="QUOTES.csv",
                        help="write trades drawn from this quote CSV's valid quotes instead of quotes")
    args = parser.parse_args(argv)
    if args.trades_from:
        data = make_trades(args.trades_from, args.rows, args.seed, args.malformed)
    else:
        data = generate(args.rows, args.seed, args.live, args.latency_decimals)
        if args.malformed:
            data = with_malformed(data, args.seed)
    with open(args.output, "wb") as out:
        out.write(data)
    print(f"wrote {args.rows:,} rows to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
