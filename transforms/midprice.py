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

from typing import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms import columns, telemetry
from transforms.blocks import QuoteBlock, TextChunk
from transforms.quotes import LATENCY_SCALE
from transforms.replay import HISTORICAL
from transforms.tenants import split_by_tenant
from transforms.tracing import TracedDoFn

ERRORS = "errors"


def split_by_latency(valid: pa.RecordBatch, threshold_ms: int | None) -> np.ndarray:
    """Mask of quotes filtered out for latency: historical ones with ``latency > threshold``.

    A live quote is never filtered, nor is a quote without a latency.
    """
    if threshold_ms is None:
        return np.zeros(valid.num_rows, dtype=bool)
    # Exact: the latency is in integer microseconds, the threshold whole milliseconds.
    over = pc.greater(valid.column("latency_us"), threshold_ms * 10**LATENCY_SCALE)
    late = pc.and_(over, pc.equal(valid.column("mode"), HISTORICAL))
    return pc.fill_null(late, False).to_numpy(zero_copy_only=False)


def mid_price_text(valid: pa.RecordBatch, scale: int) -> bytes:
    """``mid_prices.log`` lines for every row of a valid block."""
    if valid.num_rows == 0:
        return b""
    times = columns.format_timestamps(valid.column("event_us").to_numpy(), valid.column("timestamp"))
    mids = columns.mid_texts(valid.column("bid").to_numpy(), valid.column("ask").to_numpy(), scale)
    return columns.joined_lines(times, ", ", mids)


def latency_error_text(late: pa.RecordBatch, threshold_ms: int) -> bytes:
    """``errors.log`` lines for every row of a block of too-late quotes."""
    if late.num_rows == 0:
        return b""
    times = columns.format_timestamps(late.column("event_us").to_numpy(), late.column("timestamp"))
    latency = columns.decimal_texts(late.column("latency_us").to_numpy(), LATENCY_SCALE)  # 20500 µs: 20.5
    return columns.joined_lines(
        "No mid price at ", times, " as latency ", latency, f"ms is bigger than {threshold_ms}ms"
    )


class _MidPriceFn(TracedDoFn):
    STAGE = "midprice"

    def __init__(self, threshold_ms: int | None, scale: int, partitioned: bool):
        self._threshold_ms = threshold_ms
        self._scale = scale
        self._partitioned = partitioned
        self._mids = telemetry.counter(self.__class__, "mid_prices")
        self._filtered = telemetry.counter(self.__class__, "latency_filtered")

    def process(self, block: QuoteBlock) -> Iterator[TextChunk | beam.pvalue.TaggedOutput]:
        for partition, rows in split_by_tenant(block.batch, self._partitioned):
            yield from self._chunks(block.seq, rows, partition)

    def _chunks(self, seq: int, rows: pa.RecordBatch, partition: str):
        late = split_by_latency(rows, self._threshold_ms)
        if late.any():
            too_late = rows.filter(pa.array(late))
            self._filtered.inc(too_late.num_rows)
            text = latency_error_text(too_late, self._threshold_ms)
            yield beam.pvalue.TaggedOutput(ERRORS, TextChunk(seq, text, too_late.num_rows, partition=partition))
            on_time = rows.filter(pa.array(~late))
        else:
            on_time = rows
        if on_time.num_rows:
            self._mids.inc(on_time.num_rows)
            yield TextChunk(seq, mid_price_text(on_time, self._scale), on_time.num_rows, partition=partition)


class ComputeMidPrices(beam.PTransform):
    """Valid quote blocks -> ``mid_prices`` and ``errors`` TextChunks.

    Args:
        latency_threshold_ms: historical quotes (``mode`` column) with a greater latency go to
            ``errors``; live quotes are never filtered. None: no filter at all.
        scale: the prices' decimal scale (from the schema).
        partition_by_tenant: one chunk per tenant of each block (``tenant=<t>`` partitions).
    """

    def __init__(self, latency_threshold_ms: int | None, scale: int = 8, partition_by_tenant: bool = False):
        super().__init__()
        if latency_threshold_ms is not None and latency_threshold_ms < 0:
            raise ValueError(f"latency_threshold_ms must be >= 0, got {latency_threshold_ms}")
        self._threshold_ms = latency_threshold_ms
        self._scale = scale
        self._partitioned = partition_by_tenant

    def expand(self, valid_blocks):
        return valid_blocks | "MidOrLatencyError" >> (
            beam.ParDo(_MidPriceFn(self._threshold_ms, self._scale, self._partitioned))
            .with_output_types(TextChunk)
            .with_outputs(ERRORS, main="mid_prices")
        )
