"""Quotes and mid prices as Avro records (the ``--output_format avro`` files), pure.

:func:`quote_records` turns a valid quote batch into ``quote`` records of the latest schema and
:func:`mid_price_records` the priced ones into ``mid_price`` records; :func:`check_mid_scale` refuses
a price scale the ``mid_price`` schema cannot hold before the run starts. The writer composite is
``WriteAvroBlocks`` in :mod:`transforms.sinks.stage`.
"""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa

from schemas import SchemaError
from transforms.quotes.midprice import split_by_latency
from transforms.quotes.rules import whole_latency_ms


def _decimals(unscaled, exponent: int) -> list:
    return [Decimal(int(value)).scaleb(exponent) for value in unscaled]


def quote_records(valid: pa.RecordBatch, scale: int) -> list[dict]:
    """Valid quotes (:data:`transforms.quotes.normalize.VALID_SCHEMA`) as ``quote`` v3 records."""
    columns = valid.to_pydict()
    bids = _decimals(columns["bid"], -scale)
    asks = _decimals(columns["ask"], -scale)
    return [
        {
            "timestamp": columns["event_us"][i],
            "symbol": columns["symbol"][i],
            "bid_price": bids[i],
            "bid_size": columns["bid_size"][i],
            "ask_price": asks[i],
            "ask_size": columns["ask_size"][i],
            "arrival_latency_ms": whole_latency_ms(columns["latency_us"][i]),
            "tenant": columns["tenant"][i],
            "venue": None,
            "arrival_latency_us": columns["latency_us"][i],
        }
        for i in range(valid.num_rows)
    ]


def mid_price_records(valid: pa.RecordBatch, scale: int, latency_threshold_ms: int | None = None) -> list[dict]:
    """``mid_price`` v2 records of the valid quotes that get a mid (those not latency-filtered,
    as in ``mid_prices.log``). The mid has one more decimal place than the prices, so
    ``(bid + ask) / 2`` is exact."""
    filtered = split_by_latency(valid, latency_threshold_ms)
    if filtered.any():
        valid = valid.filter(pa.array(~filtered))
    columns = valid.to_pydict()
    doubled = [bid + ask for bid, ask in zip(columns["bid"], columns["ask"])]
    mids = _decimals([value * 5 for value in doubled], -(scale + 1))
    return [
        {"timestamp": columns["event_us"][i], "symbol": columns["symbol"][i], "mid": mids[i],
         "mode": columns["mode"][i], "tenant": columns["tenant"][i]}
        for i in range(valid.num_rows)
    ]


def check_mid_scale(mid_schema: dict, price_scale: int) -> None:
    """The mid_price schema's decimal must hold a mid of prices with ``price_scale`` exactly."""
    mid = next(f for f in mid_schema["fields"] if f["name"] == "mid")["type"]
    if mid.get("scale") != price_scale + 1:
        raise SchemaError(f"mid_price.mid must have scale {price_scale + 1} for prices of scale {price_scale}, "
                          f"has {mid.get('scale')}")


