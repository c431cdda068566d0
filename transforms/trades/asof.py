"""The as-of join of trades with quotes, on Arrow record batches (no Beam here).

A trade is joined with the latest valid quote of its symbol *at or before* its timestamp, if that
quote is at most ``max_age_us`` old (``age == max_age`` still matches). Quotes with the same
``event_us`` are ordered by their arrival (``arrival_us``, then ``file``, ``line``): the one that
arrived last is the latest. Everything is vectorized: one ``np.searchsorted`` over the sorted
quote times finds every trade's quote at once.

* :func:`asof_positions`: the search itself;
* :func:`join_trades`: one symbol's trades and quotes -> enriched and unmatched trades;
* :func:`quote_points`: valid quote blocks -> per-symbol quote points (what the join needs);
* :func:`enriched_chunk` / :func:`unmatched_chunk`: ``trades_enriched.jsonl`` and
  ``unmatched_trades.jsonl`` lines, keyed by the trade's event time.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.arrays import string_offsets
from transforms.blocks import TextChunk
from transforms.quotes import columns
from transforms.quotes.midprice import split_by_latency
from transforms.trades import market

#: Codes of :func:`asof_positions`' second result.
MATCHED, NO_QUOTE, STALE_QUOTE = 0, 1, 2
_NO_QUOTE_DETAIL = "no quote of the symbol at or before the trade"

_KEY_WIDTH = 20  # the sort key of a keyed TextChunk line (see transforms.sinks.stage)


def asof_positions(quote_us_sorted: np.ndarray, trade_us: np.ndarray, max_age_us: int) -> tuple[np.ndarray, np.ndarray]:
    """For each trade, the index of the latest quote at or before it, and whether it matches.

    Args:
        quote_us_sorted: quote event times, ascending; among equal times the latest quote last.
        trade_us: trade event times (any order).
        max_age_us: the greatest quote age that still matches (inclusive).

    Returns:
        ``(positions, codes)``: ``positions`` (int64) is the as-of quote's index into
        ``quote_us_sorted``, -1 when no quote is at or before the trade (it is kept for a stale
        quote, whose age the caller may report); ``codes`` (int8) is :data:`MATCHED`,
        :data:`NO_QUOTE` or :data:`STALE_QUOTE`.
    """
    quote_us_sorted = np.asarray(quote_us_sorted, dtype=np.int64)
    trade_us = np.asarray(trade_us, dtype=np.int64)
    positions = np.searchsorted(quote_us_sorted, trade_us, side="right").astype(np.int64) - 1
    found = positions >= 0
    codes = np.full(len(trade_us), NO_QUOTE, dtype=np.int8)
    if len(quote_us_sorted):
        ages = trade_us - quote_us_sorted[np.maximum(positions, 0)]
        codes[found] = np.where(ages[found] <= max_age_us, MATCHED, STALE_QUOTE)
    return positions, codes


def quote_order(quotes: pa.RecordBatch) -> np.ndarray:
    """Indices sorting quotes by (event_us, arrival_us, file, line): the as-of order."""
    return np.lexsort(
        (
            quotes.column("line").to_numpy(zero_copy_only=False),
            quotes.column("file").to_numpy(zero_copy_only=False),
            quotes.column("arrival_us").to_numpy(zero_copy_only=False),
            quotes.column("event_us").to_numpy(zero_copy_only=False),
        )
    )


def trade_order(trades: pa.RecordBatch) -> np.ndarray:
    """Indices sorting trades by (event_us, file, line): the output order."""
    return np.lexsort(
        (
            trades.column("line").to_numpy(zero_copy_only=False),
            trades.column("file").to_numpy(zero_copy_only=False),
            trades.column("event_us").to_numpy(zero_copy_only=False),
        )
    )


def _is_sorted(rows: pa.RecordBatch, keys: tuple[str, ...]) -> bool:
    """True if ``rows`` are already in ascending ``keys`` order (a cheap check that saves a sort)."""
    if rows.num_rows < 2:
        return True
    undecided = np.ones(rows.num_rows - 1, dtype=bool)  # pairs equal on the keys so far
    for key in keys:
        step = np.diff(rows.column(key).to_numpy(zero_copy_only=False).astype(np.int64))
        if (undecided & (step < 0)).any():
            return False
        undecided &= step == 0
        if not undecided.any():
            return True
    return True


_QUOTE_KEYS = ("event_us", "arrival_us", "file", "line")
_TRADE_KEYS = ("event_us", "file", "line")


def sorted_quotes(quotes: pa.RecordBatch) -> pa.RecordBatch:
    """Quotes in as-of order (see :func:`quote_order`)."""
    if _is_sorted(quotes, _QUOTE_KEYS):
        return quotes
    return quotes.take(pa.array(quote_order(quotes), type=pa.int64()))


def sorted_trades(trades: pa.RecordBatch) -> pa.RecordBatch:
    """Trades in output order (see :func:`trade_order`)."""
    if _is_sorted(trades, _TRADE_KEYS):
        return trades
    return trades.take(pa.array(trade_order(trades), type=pa.int64()))


def seconds_text(micros: int) -> str:
    """``1532000`` -> ``"1.532s"`` (exact, no trailing zeros)."""
    return columns.decimal_texts(np.array([micros], dtype=np.int64), 6)[0].as_py() + "s"


def join_trades(
    trades: pa.RecordBatch, quotes: pa.RecordBatch, max_age_us: int, scale: int
) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """As-of join of one symbol's trades (:data:`~transforms.trades.market.TRADE_SCHEMA`) with its quotes
    (:data:`~transforms.trades.market.QUOTE_POINT_SCHEMA`, any order).

    Returns ``(enriched, unmatched)`` (:data:`~transforms.trades.market.ENRICHED_SCHEMA`,
    :data:`~transforms.trades.market.UNMATCHED_SCHEMA`), each sorted by (event_us, file, line).
    """
    trades = sorted_trades(trades)
    quotes = sorted_quotes(quotes)
    trade_us = trades.column("event_us").to_numpy(zero_copy_only=False)
    quote_us = quotes.column("event_us").to_numpy(zero_copy_only=False)
    positions, codes = asof_positions(quote_us, trade_us, max_age_us)

    matched = codes == MATCHED
    hit = trades.filter(pa.array(matched)) if not matched.all() else trades
    at = positions[matched]
    bid = quotes.column("bid").to_numpy(zero_copy_only=False)[at]
    ask = quotes.column("ask").to_numpy(zero_copy_only=False)[at]
    price = hit.column("price").to_numpy(zero_copy_only=False)
    quote_at = quote_us[at]
    unit = float(10**scale)
    doubled_mid = bid + ask  # < 2 * 10**18 for decimal(18, s): fits int64
    with np.errstate(divide="ignore", invalid="ignore"):
        effective = 2.0 * np.abs(2 * price - doubled_mid).astype(np.float64) / doubled_mid.astype(np.float64) * 1e4
    enriched = pa.RecordBatch.from_arrays(
        list(hit.columns)
        + [
            pa.array(quote_at, type=pa.int64()),
            quotes.column("timestamp").take(pa.array(at, type=pa.int64())),
            pa.array(bid, type=pa.int64()),
            pa.array(ask, type=pa.int64()),
            pa.array(doubled_mid.astype(np.float64) / (2.0 * unit), type=pa.float64()),
            pa.array((ask - bid).astype(np.float64) / unit, type=pa.float64()),
            pa.array(effective, type=pa.float64()),
            pa.array(trade_us[matched] - quote_at, type=pa.int64()),
        ],
        schema=market.ENRICHED_SCHEMA,
    )

    missed = ~matched
    miss = trades.filter(pa.array(missed))
    stale = codes[missed] == STALE_QUOTE
    reasons = pc.if_else(pa.array(stale, type=pa.bool_()), market.STALE_QUOTE, market.NO_QUOTE)
    if stale.any():  # a stale trade has a quote before it: every position is valid there
        ages = np.where(stale, trade_us[missed] - quote_us[np.maximum(positions[missed], 0)], 0)
        stale_detail = pc.binary_join_element_wise(
            "latest quote ",
            columns.decimal_texts(ages, 6),
            f"s before the trade, more than --max_quote_age {seconds_text(max_age_us)}",
            "",
        )
        details = pc.if_else(pa.array(stale), stale_detail, _NO_QUOTE_DETAIL)
    else:
        details = pa.repeat(pa.scalar(_NO_QUOTE_DETAIL), miss.num_rows)
    unmatched = pa.RecordBatch.from_arrays(
        list(miss.columns) + [reasons.cast(pa.string()), details.cast(pa.string())],
        schema=market.UNMATCHED_SCHEMA,
    )
    return enriched, unmatched


def late_trades(trades: pa.RecordBatch, detail: str) -> pa.RecordBatch:
    """Trades whose join was already closed (streaming), as unmatched :data:`~transforms.trades.market.LATE_TRADE` rows."""
    trades = sorted_trades(trades)
    count = trades.num_rows
    return pa.RecordBatch.from_arrays(
        list(trades.columns)
        + [pa.repeat(pa.scalar(market.LATE_TRADE), count), pa.repeat(pa.scalar(detail), count)],
        schema=market.UNMATCHED_SCHEMA,
    )


def quote_points(valid: pa.RecordBatch, latency_threshold_ms: int | None) -> list[tuple[str, pa.RecordBatch]]:
    """The quotes of a valid block (:data:`transforms.quotes.normalize.VALID_SCHEMA`) that make
    ``mid_prices.log`` (those :func:`~transforms.quotes.midprice.split_by_latency` does not filter), as
    :data:`~transforms.trades.market.QUOTE_POINT_SCHEMA` batches, one per symbol (sorted by symbol;
    rows in block order)."""
    late = split_by_latency(valid, latency_threshold_ms)
    rows = valid.filter(pa.array(~late)) if late.any() else valid
    if rows.num_rows == 0:
        return []
    points = pa.RecordBatch.from_arrays(
        [rows.column(field.name) for field in market.QUOTE_POINT_SCHEMA], schema=market.QUOTE_POINT_SCHEMA
    )
    encoded = pc.dictionary_encode(rows.column("symbol"))
    names = encoded.dictionary.to_pylist()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    if len(names) == 1:
        return [(names[0], points)]
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    result = []
    for code in sorted(range(len(names)), key=lambda code: names[code]):
        take = order[bounds[code] : bounds[code + 1]]
        result.append((names[code], points.take(pa.array(take, type=pa.int64()))))
    return result


# --------------------------------------------------------------------------- text


_NEEDS_ESCAPE = r'[\x00-\x1f"\\]'  # what JSON strings cannot hold as they are


def _may_need_escaping(values: pa.Array) -> bool:
    """False when no value holds a quote, a backslash or a control character (one scan of the data)."""
    data = values.buffers()[2]
    if data is None or len(values) == 0:
        return False
    offsets = string_offsets(values)
    raw = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]]
    if len(raw) == 0:
        return False
    return bool(raw.min() < 0x20 or (raw == ord('"')).any() or (raw == ord("\\")).any())


def json_string_parts(values: pa.Array) -> tuple:
    """Parts of :func:`columns.joined_lines` that write a string column as JSON strings, exactly as
    ``json.dumps(v, ensure_ascii=False)`` (null -> ``null``).

    Values without a quote, a backslash or a control character (one scan of the column's bytes
    tells) are written as they are between two quotes; only the others go through ``json.dumps``.
    """
    values = values.cast(pa.string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if _may_need_escaping(values):
        needs = pc.fill_null(pc.match_substring_regex(values, _NEEDS_ESCAPE), False)
        if pc.any(needs).as_py():
            escaped = [json.dumps(v, ensure_ascii=False)[1:-1] for v in values.filter(needs).to_pylist()]
            values = pc.replace_with_mask(values, needs, pa.array(escaped, type=pa.string()))
    if values.null_count:
        return (pc.fill_null(pc.binary_join_element_wise('"', values, '"', ""), "null"),)
    return ('"', values, '"')


def json_strings(values: pa.Array) -> pa.Array:
    """JSON string literals of a string column (see :func:`json_string_parts`)."""
    parts = json_string_parts(values)
    return parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "")


def json_floats(values: pa.Array) -> pa.Array:
    """JSON number literals of a float column (shortest round trip); null, NaN and infinities -> ``null``."""
    values = values.cast(pa.float64())
    text = pc.cast(values, pa.string())
    if values.null_count == 0 and np.isfinite(values.to_numpy(zero_copy_only=False)).all():
        return text
    return pc.if_else(pc.fill_null(pc.is_finite(values), False), text, "null")


def json_ints(values: pa.Array) -> pa.Array:
    """JSON number literals of an integer column (null -> ``null``)."""
    text = pc.cast(values, pa.string())
    return pc.fill_null(text, "null") if text.null_count else text


def _sort_keys(event_us: np.ndarray) -> pa.Array:
    return pc.utf8_lpad(pc.cast(pa.array(event_us, type=pa.int64()), pa.string()), _KEY_WIDTH, "0")


def _trade_fields(rows: pa.RecordBatch, scale: int, keyed: bool = True) -> list:
    """(Keyed: the sort key and a tab, then) the trade's fields of a line, up to (and including) ``"side":...``."""
    event_us = rows.column("event_us").to_numpy(zero_copy_only=False)
    return [
        *((_sort_keys(event_us), "\t") if keyed else ()),
        '{"trade_id":',
        *json_string_parts(rows.column("trade_id")),
        ',"timestamp":"',
        columns.format_timestamps(event_us, rows.column("timestamp")),
        '","symbol":',
        *json_string_parts(rows.column("symbol")),
        ',"price":',
        columns.decimal_texts(rows.column("price").to_numpy(zero_copy_only=False), scale),
        ',"size":',
        json_floats(rows.column("size")),
        ',"side":',
        *json_string_parts(rows.column("side")),
    ]


def enriched_text(rows: pa.RecordBatch, scale: int) -> bytes:
    """Keyed ``trades_enriched.jsonl`` lines of :data:`~transforms.trades.market.ENRICHED_SCHEMA` rows."""
    return enriched_lines(sorted_trades(rows), scale, keyed=True)


def enriched_lines(rows: pa.RecordBatch, scale: int, keyed: bool = False) -> bytes:
    """``trades_enriched.jsonl`` lines of :data:`~transforms.trades.market.ENRICHED_SCHEMA` rows, in their
    order (with ``keyed``, each behind its sort key and a tab)."""
    if rows.num_rows == 0:
        return b""
    bid = rows.column("bid").to_numpy(zero_copy_only=False)
    ask = rows.column("ask").to_numpy(zero_copy_only=False)
    quote_us = rows.column("quote_us").to_numpy(zero_copy_only=False)
    return columns.joined_lines(
        *_trade_fields(rows, scale, keyed),
        ',"sign":',
        json_ints(rows.column("sign")),
        ',"mid":',
        columns.mid_texts(bid, ask, scale),
        ',"spread":',
        columns.decimal_texts(ask - bid, scale),
        ',"effective_spread_bps":',
        json_floats(rows.column("effective_spread_bps")),
        ',"quote_timestamp":"',
        columns.format_timestamps(quote_us, rows.column("quote_timestamp")),
        '","quote_age_ms":',
        columns.decimal_texts(rows.column("quote_age_us").to_numpy(zero_copy_only=False), 3),
        "}",
    )


def unmatched_text(rows: pa.RecordBatch, scale: int) -> bytes:
    """Keyed ``unmatched_trades.jsonl`` lines of :data:`~transforms.trades.market.UNMATCHED_SCHEMA` rows."""
    return unmatched_lines(sorted_trades(rows), scale, keyed=True)


def unmatched_lines(rows: pa.RecordBatch, scale: int, keyed: bool = False) -> bytes:
    """``unmatched_trades.jsonl`` lines of :data:`~transforms.trades.market.UNMATCHED_SCHEMA` rows, in their
    order (with ``keyed``, each behind its sort key and a tab)."""
    if rows.num_rows == 0:
        return b""
    return columns.joined_lines(
        *_trade_fields(rows, scale, keyed),
        ',"reason":',
        *json_string_parts(rows.column("reason")),
        ',"detail":',
        *json_string_parts(rows.column("detail")),
        "}",
    )


def enriched_chunk(symbol: str, rows: pa.RecordBatch, scale: int) -> TextChunk:
    """One symbol's ``trades_enriched.jsonl`` lines, keyed by the trade's event time."""
    return TextChunk(market.symbol_seq(symbol), enriched_text(rows, scale), rows.num_rows, keyed=True)


def _reason_tally(rows: pa.RecordBatch) -> tuple[tuple[str, int], ...]:
    reasons = pc.value_counts(rows.column("reason")).to_pylist() if rows.num_rows else []
    return tuple(sorted((item["values"], item["counts"]) for item in reasons))


def unmatched_chunk(symbol: str, rows: pa.RecordBatch, scale: int) -> TextChunk:
    """One symbol's ``unmatched_trades.jsonl`` lines, keyed by the trade's event time; tally by reason."""
    return TextChunk(market.symbol_seq(symbol), unmatched_text(rows, scale), rows.num_rows, _reason_tally(rows),
                     keyed=True)


def enriched_range_chunk(r: int, rows: pa.RecordBatch, scale: int) -> TextChunk:
    """``trades_enriched.jsonl`` lines of range ``r`` (rows already in file order, see
    :mod:`transforms.trades.ranges`), unkeyed: the sink concatenates ranges in ``seq`` = ``r`` order."""
    return TextChunk(r, enriched_lines(rows, scale), rows.num_rows)


def unmatched_range_chunk(r: int, rows: pa.RecordBatch, scale: int) -> TextChunk:
    """``unmatched_trades.jsonl`` lines of range ``r`` (as :func:`enriched_range_chunk`); tally by reason."""
    return TextChunk(r, unmatched_lines(rows, scale), rows.num_rows, _reason_tally(rows))
