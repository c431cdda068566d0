"""The batch analytics by event-time range: the as-of join and the sliding features of every symbol,
one fixed range of event time at a time (no Beam here).

Holding each symbol whole (one element per symbol) makes memory grow with the input; cutting the
time axis into fixed ranges ``[r * R, (r + 1) * R)`` (``R`` = :attr:`RangePlan.range_us`, a multiple
of the feature period) bounds each element, and the results stay exactly those of the
whole-symbol functions (:func:`transforms.trades.asof.join_trades`,
:func:`transforms.trades.features.sliding_features`), byte for byte:

* **Rows.** Range ``r`` holds every quote and trade with ``event_us`` in ``[lo_r, hi_r)``, where
  ``hi_r = (r + 1) * R`` and ``lo_r = r * R - W``, ``W`` = :attr:`RangePlan.lookback_us` = feature
  size - period. A row at ``t`` goes to ranges ``t // R`` to ``(t + W) // R`` (:func:`split_rows`):
  the last ``W`` of a range are copied into the next one.
* **Join.** A trade at ``t >= lo_r`` meets the latest quote at or before it: one of the range's
  own quotes in ``[lo_r, t]``, or else the latest quote of the symbol before ``lo_r``, however old
  (the *witness*). The witness comes from a small table, the last quote (in as-of order) of each
  symbol and *cell*, cell ``c`` being ``[c * R - W, (c + 1) * R - W)`` (:func:`last_quotes_by_cell`);
  range ``r``'s witness is the entry of the latest cell ``< r``. With it, every trade of the range
  gets the quote, reason (``stale_quote`` with its age, ``no_quote``) and detail of the
  whole-symbol join. A range emits the trades of ``[r * R, hi_r)``; the copies before ``r * R``
  are joined only for the features.
* **Features.** A window ``[s, s + size)`` belongs to the range holding its last period,
  ``(s + size - period) // R`` (:func:`window_range`), so each window is computed once; its rows
  ``[s, s + size)`` all lie in ``[lo_r, hi_r)`` (``R`` is a multiple of the period). The window's
  values are reduced over exactly its rows, in the same order, as in the whole-symbol function.

Outputs of one range (:func:`analyse_range`) are in the order of the merged files: trades by
``(event_us, symbol_seq, file, line)``, windows by ``(window_end, symbol_seq)``, where
``symbol_seq`` is :func:`transforms.trades.market.symbol_seq` (how the sink broke ties between
symbols' keyed chunks). The ranges' text is then concatenated in range order, without merge keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.trades import asof, market
from transforms.trades.features import check_windows, sliding_features
from transforms.trades.market import ENRICHED_SCHEMA, FEATURE_SCHEMA, QUOTE_POINT_SCHEMA, UNMATCHED_SCHEMA

#: The default range: 10 minutes of event time (a few tens of thousands of rows per range at a
#: million rows over the generated 5.5 hours; fewer, larger ranges pay Beam's per-element cost less).
DEFAULT_RANGE_US = 600_000_000

#: ``(symbol, cell, QUOTE_POINT columns)``: the last quote of each symbol and cell (see the module doc).
WITNESS_SCHEMA = pa.schema([pa.field("symbol", pa.string()), pa.field("cell", pa.int64())] + list(QUOTE_POINT_SCHEMA))


@dataclass(frozen=True)
class RangePlan:
    """How event time is cut: ranges of ``range_us``, each with ``lookback_us`` of the previous one.

    Use :func:`plan_ranges` to make one from the feature windows.
    """

    range_us: int
    lookback_us: int
    size_us: int
    period_us: int

    def __post_init__(self):
        check_windows(self.size_us, self.period_us)
        if self.range_us <= 0 or self.range_us % self.period_us:
            raise ValueError(f"the range ({self.range_us} us) must be a positive multiple of the period ({self.period_us} us)")
        if self.lookback_us != self.size_us - self.period_us:
            raise ValueError("the lookback must be the feature window size minus its period")

    def bounds(self, r: int) -> tuple[int, int, int]:
        """``(lo, start, hi)`` of range ``r``: rows from ``lo``, emitted trades from ``start``, up to ``hi`` (exclusive)."""
        start = r * self.range_us
        return start - self.lookback_us, start, start + self.range_us


def plan_ranges(size_us: int, period_us: int, range_us: int = DEFAULT_RANGE_US) -> RangePlan:
    """The :class:`RangePlan` of these feature windows, ``range_us`` rounded up to a multiple of the period."""
    check_windows(size_us, period_us)
    range_us = -(-max(range_us, 1) // period_us) * period_us
    return RangePlan(range_us, size_us - period_us, size_us, period_us)


def row_ranges(event_us: np.ndarray, plan: RangePlan) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, ranges)``: each row index repeated for every range that holds it (see :func:`split_rows`)."""
    event_us = np.asarray(event_us, dtype=np.int64)
    first = event_us // plan.range_us
    last = (event_us + plan.lookback_us) // plan.range_us
    copies = last - first + 1
    rows = np.repeat(np.arange(len(event_us), dtype=np.int64), copies)
    offsets = np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(copies) - copies, copies)
    return rows, first[rows] + offsets


def split_rows(batch: pa.RecordBatch, plan: RangePlan) -> list[tuple[int, pa.RecordBatch]]:
    """``(r, rows)`` for every range ``r`` with rows of ``batch`` (any schema with ``event_us``), ranges
    ascending; rows keep their order in ``batch``. A row at ``t`` goes to ranges ``t // R`` to
    ``(t + lookback) // R``."""
    if batch.num_rows == 0:
        return []
    rows, ranges = row_ranges(batch.column("event_us").to_numpy(zero_copy_only=False), plan)
    if len(rows) == batch.num_rows and (ranges == ranges[0]).all():
        return [(int(ranges[0]), batch)]
    order = np.argsort(ranges, kind="stable")
    ranges, rows = ranges[order], rows[order]
    cuts = np.flatnonzero(np.diff(ranges)) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(rows)]))
    return [
        (int(ranges[a]), batch.take(pa.array(rows[a:b], type=pa.int64()))) for a, b in zip(starts.tolist(), ends.tolist())
    ]


def window_range(window_start_us: np.ndarray, plan: RangePlan) -> np.ndarray:
    """The range each window is computed in: the one holding its last period."""
    return (np.asarray(window_start_us, dtype=np.int64) + plan.lookback_us) // plan.range_us


# --------------------------------------------------------------------------- witnesses


def last_quotes_by_cell(symbol: str, quotes: pa.RecordBatch, plan: RangePlan) -> pa.RecordBatch:
    """The last quote, in as-of order, of each cell ``(t + lookback) // R`` of one symbol's quotes
    (:data:`~transforms.trades.market.QUOTE_POINT_SCHEMA`), as :data:`WITNESS_SCHEMA` rows by cell."""
    if quotes.num_rows == 0:
        return market.empty(WITNESS_SCHEMA)
    quotes = asof.sorted_quotes(quotes.select(QUOTE_POINT_SCHEMA.names))
    cells = (quotes.column("event_us").to_numpy(zero_copy_only=False) + plan.lookback_us) // plan.range_us
    last = np.flatnonzero(np.append(np.diff(cells) != 0, True))  # cells ascend with as-of order
    rows = quotes.take(pa.array(last, type=pa.int64()))
    return pa.RecordBatch.from_arrays(
        [pa.repeat(pa.scalar(symbol, pa.string()), len(last)), pa.array(cells[last], type=pa.int64()), *rows.columns],
        schema=WITNESS_SCHEMA,
    )


def merge_witnesses(parts: Iterable[pa.RecordBatch]) -> pa.RecordBatch:
    """Several :func:`last_quotes_by_cell` tables as one: per (symbol, cell) the last quote in as-of
    order, sorted by (symbol, cell)."""
    table = market.concat(list(parts), WITNESS_SCHEMA)
    if table.num_rows == 0:
        return table
    rank = pc.rank(table.column("symbol"), sort_keys="ascending", tiebreaker="dense").to_numpy(zero_copy_only=False)

    def column(name: str) -> np.ndarray:
        return table.column(name).to_numpy(zero_copy_only=False)

    order = np.lexsort((column("line"), column("file"), column("arrival_us"), column("event_us"), column("cell"), rank))
    rank, cells = rank[order], column("cell")[order]
    last = np.flatnonzero(np.append((np.diff(rank) != 0) | (np.diff(cells) != 0), True))
    return table.take(pa.array(order[last], type=pa.int64()))


class Witnesses:
    """Looks up the witness of a symbol's range in a :func:`merge_witnesses` table."""

    def __init__(self, table: pa.RecordBatch):
        self._by_symbol: dict[str, tuple[np.ndarray, pa.RecordBatch]] = {}
        if table.num_rows == 0:
            return
        symbols = table.column("symbol").to_pylist()
        cells = table.column("cell").to_numpy(zero_copy_only=False)
        points = table.select(QUOTE_POINT_SCHEMA.names)
        start = 0
        for end in range(1, len(symbols) + 1):
            if end == len(symbols) or symbols[end] != symbols[start]:
                self._by_symbol[symbols[start]] = (cells[start:end], points.slice(start, end - start))
                start = end

    def before(self, symbol: str, r: int) -> pa.RecordBatch:
        """The latest quote of ``symbol`` in a cell before ``r`` (i.e. before range ``r``'s ``lo``); 0 or 1 row."""
        found = self._by_symbol.get(symbol)
        if found is None:
            return market.empty(QUOTE_POINT_SCHEMA)
        cells, points = found
        at = int(np.searchsorted(cells, r, side="left")) - 1
        return points.slice(at, 1) if at >= 0 else market.empty(QUOTE_POINT_SCHEMA)


# --------------------------------------------------------------------------- one range


@dataclass(frozen=True)
class RangeResult:
    """What one range gives: its trades and windows of every symbol, in the files' order."""

    enriched: pa.RecordBatch
    unmatched: pa.RecordBatch
    features: pa.RecordBatch


def _merge_symbols(parts: Sequence[tuple[str, pa.RecordBatch]], schema: pa.Schema, time_column: str) -> pa.RecordBatch:
    """Per-symbol batches (each sorted within) as one, sorted by (time, symbol_seq), stable."""
    parts = [(symbol, rows) for symbol, rows in parts if rows.num_rows]
    if not parts:
        return market.empty(schema)
    if len(parts) == 1:
        return parts[0][1]
    rows = pa.concat_batches([rows for _, rows in parts])
    seqs = np.concatenate([np.full(batch.num_rows, market.symbol_seq(symbol), dtype=np.int64) for symbol, batch in parts])
    order = np.lexsort((seqs, rows.column(time_column).to_numpy(zero_copy_only=False)))
    return rows.take(pa.array(order, type=pa.int64()))


def analyse_range(
    r: int,
    quotes: Mapping[str, Sequence[pa.RecordBatch]],
    trades: Mapping[str, Sequence[pa.RecordBatch]],
    witness: Callable[[str, int], pa.RecordBatch],
    plan: RangePlan,
    *,
    max_age_us: int,
    scale: int,
) -> RangeResult:
    """Join and features of range ``r`` (see the module docstring).

    Args:
        r: the range index.
        quotes: per symbol, its :data:`~transforms.trades.market.QUOTE_POINT_SCHEMA` rows of the range (any order).
        trades: per symbol, its :data:`~transforms.trades.market.TRADE_SCHEMA` rows of the range.
        witness: ``(symbol, r)`` -> the latest quote before the range's ``lo`` (:meth:`Witnesses.before`).
        plan: the ranges and the feature windows.
        max_age_us, scale: as for :func:`transforms.trades.asof.join_trades`.
    """
    _, start, _ = plan.bounds(r)
    enriched_parts, unmatched_parts, feature_parts = [], [], []
    for symbol in sorted(set(quotes) | set(trades)):
        own_quotes = market.concat(quotes.get(symbol, ()), QUOTE_POINT_SCHEMA)
        own_trades = market.concat(trades.get(symbol, ()), market.TRADE_SCHEMA)
        enriched, unmatched = market.empty(ENRICHED_SCHEMA), market.empty(UNMATCHED_SCHEMA)
        if own_trades.num_rows:
            held = market.concat([witness(symbol, r), own_quotes], QUOTE_POINT_SCHEMA)
            enriched, unmatched = asof.join_trades(own_trades, held, max_age_us, scale)
        features = sliding_features(
            symbol, own_quotes, enriched, unmatched, size_us=plan.size_us, period_us=plan.period_us, scale=scale
        )
        mine = window_range(features.column("window_start_us").to_numpy(zero_copy_only=False), plan) == r
        feature_parts.append((symbol, features if mine.all() else features.filter(pa.array(mine))))
        enriched_parts.append((symbol, _from(enriched, start)))
        unmatched_parts.append((symbol, _from(unmatched, start)))
    return RangeResult(
        _merge_symbols(enriched_parts, ENRICHED_SCHEMA, "event_us"),
        _merge_symbols(unmatched_parts, UNMATCHED_SCHEMA, "event_us"),
        _merge_symbols(feature_parts, FEATURE_SCHEMA, "window_end_us"),
    )


def _from(rows: pa.RecordBatch, start_us: int) -> pa.RecordBatch:
    """The rows (sorted by event time) at or after ``start_us``."""
    event_us = rows.column("event_us").to_numpy(zero_copy_only=False)
    first = int(np.searchsorted(event_us, start_us, side="left"))
    return rows.slice(first) if first else rows
