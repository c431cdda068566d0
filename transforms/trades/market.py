"""Arrow schemas of the analytics stages (trades, the as-of join, features, scores).

Every stage of the analytics path moves Arrow record batches, keyed by symbol, as the quote path
does (one element per block and symbol, never one per row). This module only names the columns,
so that the stages agree on them:

* :data:`TRADE_SCHEMA`: a normalized trade (``transforms.trades.read``);
* :data:`QUOTE_POINT_SCHEMA`: what the join and the features need of a valid quote;
* :data:`ENRICHED_SCHEMA` / :data:`UNMATCHED_SCHEMA`: a trade with the prevailing quote, or
  with the reason it has none (``transforms.trades.stage``);
* :data:`FEATURE_SCHEMA`: one sliding window of one symbol (``transforms.trades.features``);
* :data:`SCORE_SCHEMA`: a window's model score (``transforms.trades.scoring``).

Prices are scaled integers (``price * 10**scale``, the schemas' decimal scale), times are
microseconds since the epoch (UTC), as in :data:`transforms.quotes.normalize.VALID_SCHEMA`.
"""

from __future__ import annotations

import zlib
from typing import Iterable

import pyarrow as pa

TRADE_SCHEMA = pa.schema(
    [
        pa.field("file", pa.int32()),  # index into the run's trade sources
        pa.field("line", pa.int64()),  # physical line in that file (header = 1)
        pa.field("timestamp", pa.string()),  # the timestamp as written
        pa.field("event_us", pa.int64()),
        pa.field("arrival_us", pa.int64()),  # event_us + latency (event_us without latency_ms)
        pa.field("latency_us", pa.int64()),  # µs (the file's ms, exactly), null without a latency_ms column
        pa.field("symbol", pa.string()),
        pa.field("price", pa.int64()),  # scaled
        pa.field("size", pa.float64()),
        pa.field("side", pa.string()),  # "buy" or "sell"
        pa.field("sign", pa.int8()),  # +1 buy, -1 sell
        pa.field("trade_id", pa.string()),
    ]
)

QUOTE_POINT_SCHEMA = pa.schema(
    [
        pa.field("event_us", pa.int64()),
        pa.field("arrival_us", pa.int64()),
        pa.field("file", pa.int32()),
        pa.field("line", pa.int64()),
        pa.field("timestamp", pa.string()),
        pa.field("bid", pa.int64()),  # scaled
        pa.field("ask", pa.int64()),  # scaled
    ]
)

ENRICHED_SCHEMA = pa.schema(
    list(TRADE_SCHEMA)
    + [
        pa.field("quote_us", pa.int64()),  # event time of the quote joined
        pa.field("quote_timestamp", pa.string()),
        pa.field("bid", pa.int64()),  # scaled, of that quote
        pa.field("ask", pa.int64()),
        pa.field("mid", pa.float64()),  # (bid + ask) / 2, in price units
        pa.field("spread", pa.float64()),  # ask - bid, in price units
        pa.field("effective_spread_bps", pa.float64()),  # 2 |price - mid| / mid * 1e4
        pa.field("quote_age_us", pa.int64()),  # trade event_us - quote_us (>= 0)
    ]
)

#: Reasons a trade has no quote (``reason`` column of :data:`UNMATCHED_SCHEMA`).
NO_QUOTE = "no_quote"  # no quote of the symbol at or before the trade
STALE_QUOTE = "stale_quote"  # the latest one is older than --max_quote_age
LATE_TRADE = "late_trade"  # streaming: the trade came after its join was closed (beyond allowed lateness)
UNMATCHED_REASONS = (NO_QUOTE, STALE_QUOTE, LATE_TRADE)

UNMATCHED_SCHEMA = pa.schema(
    list(TRADE_SCHEMA) + [pa.field("reason", pa.string()), pa.field("detail", pa.string())]
)

FEATURE_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string()),
        pa.field("window_start_us", pa.int64()),
        pa.field("window_end_us", pa.int64()),  # exclusive
        pa.field("quotes", pa.int64()),
        pa.field("trades", pa.int64()),
        pa.field("mid_log_return", pa.float64()),  # ln(last mid / first mid); null without quotes
        pa.field("realized_vol", pa.float64()),  # sqrt(sum of squared consecutive mid log returns)
        pa.field("mean_spread", pa.float64()),  # price units; null without quotes
        pa.field("max_spread", pa.float64()),
        pa.field("mean_spread_bps", pa.float64()),  # mean of (ask - bid) / mid * 1e4
        pa.field("volume", pa.float64()),  # sum of trade sizes
        pa.field("buy_volume", pa.float64()),
        pa.field("sell_volume", pa.float64()),
        pa.field("imbalance", pa.float64()),  # (buy - sell) / (buy + sell); null without volume
        pa.field("vwap", pa.float64()),  # null without volume
        pa.field("mean_effective_spread_bps", pa.float64()),  # over joined trades; null without any
    ]
)

SCORE_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string()),
        pa.field("window_start_us", pa.int64()),
        pa.field("window_end_us", pa.int64()),
        pa.field("score", pa.float64()),
        pa.field("anomaly", pa.bool_()),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.string()),
    ]
)


def symbol_seq(symbol: str) -> int:
    """A stable block position for one symbol's output chunk (``TextChunk.seq`` must be unique per
    file; chunks of keyed output are merged by their sort keys, so the value only needs to be stable)."""
    return zlib.crc32(symbol.encode("utf-8"))


def empty(schema: pa.Schema) -> pa.RecordBatch:
    """A record batch of ``schema`` with no rows."""
    return pa.RecordBatch.from_pylist([], schema=schema)


def concat(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> pa.RecordBatch:
    """One batch of ``schema`` from ``batches`` (each with its columns), empty ones skipped."""
    batches = [batch for batch in batches if batch.num_rows]
    if not batches:
        return empty(schema)
    if len(batches) == 1:
        return batches[0]
    return pa.concat_batches([batch.select(schema.names) for batch in batches])
