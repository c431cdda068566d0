"""mid-price: ``mid = 0.5 * (bid + ask)`` per quote, and the historical latency filter.

``ComputeMidPrices`` turns valid quote blocks into two outputs of
:class:`~transforms.blocks.TextChunk` s, in the blocks' (arrival) order:

* ``mid_prices``: ``YYYY-MM-DD HH:MM:SS.fff, <mid>`` per quote, the mid exact and without
  trailing zeros (bid 1.1, ask 1.2 -> ``1.15``);
* ``errors`` (historical quotes only): ``No mid price at <timestamp> as latency <L>ms is bigger than
  <T>ms`` instead of a mid for every quote whose latency is strictly greater than the threshold
  (compared exactly, in microseconds; ``<L>`` is the latency in ms without trailing zeros: ``20.5``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.arrays import numpy
from transforms.quotes import columns
from transforms.quotes.rules import HISTORICAL, LATENCY_SCALE

ERRORS = "errors"


def split_by_latency(valid: pa.RecordBatch, threshold_ms: int | None) -> np.ndarray:
    """Mask of quotes filtered out for latency: historical ones with ``latency > threshold``.

    A live quote is never filtered, nor is a quote without a latency.
    """
    if threshold_ms is None:
        return np.zeros(valid.num_rows, dtype=bool)
    # Exact: the latency is in integer microseconds, the threshold whole milliseconds.
    over = pc.greater(valid.column("latency_us"), pa.scalar(threshold_ms * 10**LATENCY_SCALE, pa.int64()))
    late = pc.and_(over, pc.equal(valid.column("mode"), pa.scalar(HISTORICAL, pa.string())))
    return numpy(pc.fill_null(late, False))


def mid_price_text(valid: pa.RecordBatch, scale: int) -> bytes:
    """``mid_prices.log`` lines for every row of a valid block."""
    if valid.num_rows == 0:
        return b""
    times = columns.format_timestamps(numpy(valid.column("event_us")), valid.column("timestamp"))
    mids = columns.mid_texts(numpy(valid.column("bid")), numpy(valid.column("ask")), scale)
    return columns.joined_lines(times, ", ", mids)


def latency_error_text(late: pa.RecordBatch, threshold_ms: int) -> bytes:
    """``errors.log`` lines for every row of a block of too-late quotes."""
    if late.num_rows == 0:
        return b""
    times = columns.format_timestamps(numpy(late.column("event_us")), late.column("timestamp"))
    latency = columns.decimal_texts(numpy(late.column("latency_us")), LATENCY_SCALE)  # 20500 µs: 20.5
    return columns.joined_lines(
        "No mid price at ", times, " as latency ", latency, f"ms is bigger than {threshold_ms}ms"
    )


