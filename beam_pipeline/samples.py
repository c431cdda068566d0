"""Generate quote CSVs: the bundled samples and the benchmark inputs.

The bundled files were made with::

    python -m beam_pipeline.samples --rows 5000 --seed 7 --malformed beam_pipeline/data/historical_sample.csv
    python -m beam_pipeline.samples --rows 2000 --seed 11 --live beam_pipeline/data/live_sample.csv

Quotes: three symbols, each a random walk of its mid in ticks with a spread of 1-5 ticks and
sizes of 1-999; timestamps sorted, 0-40 ms apart, at millisecond precision; latencies mostly
0-20 ms with an exponential tail up to a few hundred ms, so arrival order differs from timestamp
order. ``--malformed`` replaces a handful of rows with one of each kind of bad row.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms import columns

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
    "{ts},AAPL,194.50,10,194.52,10,2.5",
    "{ts},AAPL,194.50,10,194.52,10",
    "{ts},AAPL,194.50,10,194.52,10,5,extra",
    "{ts},,194.50,10,194.52,10,5",
    "2024-06-03 06:00:00.000,AAPL,194.50,10,194.52,10,5",
)


def generate(rows: int, seed: int = 7, live: bool = False) -> bytes:
    """A CSV of ``rows`` quotes (with header) as bytes."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.samples", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="CSV file to write")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--live", action="store_true", help="no latency_ms column (a live feed's rows)")
    parser.add_argument("--malformed", action="store_true", help="include one row of each kind of bad row")
    args = parser.parse_args(argv)
    data = generate(args.rows, args.seed, args.live)
    if args.malformed:
        data = with_malformed(data, args.seed)
    with open(args.output, "wb") as out:
        out.write(data)
    print(f"wrote {args.rows:,} rows to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
