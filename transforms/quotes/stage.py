"""The quote stages' composites: normalize (validate, dead-letter) and mid price.

* ``NormalizeQuotes(prices)``: raw quote blocks -> ``valid`` blocks and ``dead_letters`` chunks, each
  rejected row with its reason (:func:`transforms.quotes.normalize.normalize_batch`);
* ``ComputeMidPrices(scale, threshold_ms)``: valid blocks -> ``mid_prices`` chunks, and ``errors``
  chunks for the quotes whose latency is over the threshold in historical mode
  (:mod:`transforms.quotes.midprice`).

Both move one Arrow block per element; the rules themselves are the pure modules'.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import apache_beam as beam
import pyarrow as pa

from schemas import FieldRule
from transforms import telemetry
from transforms.accounting import RECORDS_CHECK, Accounting, Check, Output
from transforms.blocks import QuoteBlock, TextChunk
from transforms.quotes.midprice import ERRORS, latency_error_text, mid_price_text, split_by_latency
from transforms.quotes.normalize import DEAD_LETTERS, dead_letter_chunks, normalize_batch, price_rule
from transforms.quotes.rules import PriceRule
from transforms.quotes.tenants import split_by_tenant
from transforms.tracing import TracedDoFn


class _NormalizeFn(TracedDoFn):
    STAGE = "normalize"

    def __init__(self, prices: PriceRule, partitioned: bool):
        self._prices = prices
        self._partitioned = partitioned
        self._valid = telemetry.counter(self.__class__, "valid_quotes")
        self._dead = telemetry.counter(self.__class__, "dead_lettered")

    def process(self, block: QuoteBlock) -> Iterator[QuoteBlock | beam.pvalue.TaggedOutput]:
        valid, dead = normalize_batch(block.batch, self._prices)
        self._valid.inc(valid.num_rows)
        if dead.num_rows:
            self._dead.inc(dead.num_rows)
            for chunk in dead_letter_chunks(block.seq, dead, block.sources, self._partitioned):
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, chunk)
        if valid.num_rows:
            yield QuoteBlock(block.seq, valid, block.sources, block.watermark_us)


class NormalizeQuotes(beam.PTransform):
    """Validate replayed quote blocks; outputs ``valid`` (QuoteBlock) and ``dead_letters`` (TextChunk).

    Args:
        rules: the quote schema compiled with :func:`schemas.field_rules`.
        partition_by_tenant: dead letters in one chunk per tenant (``tenant=<t>`` partitions).
    """

    #: Every rejected row is a line of dead_letter.jsonl with its reason: a term of the quotes' balance.
    ACCOUNTING = Accounting(
        outputs=(Output("dead_letter.jsonl", "dead_lettered", "dead letters",
                        "{dead_lettered:,} rejected rows, each with its reason"),),
        checks=(Check(RECORDS_CHECK, ("dead_lettered",)),),
        set_aside=("dead_lettered",),
    )

    def __init__(self, rules: Mapping[str, FieldRule], partition_by_tenant: bool = False):
        super().__init__()
        self._prices = price_rule(rules)
        self._partitioned = partition_by_tenant

    def expand(self, blocks):
        return blocks | "CheckSchemaAndRules" >> (
            beam.ParDo(_NormalizeFn(self._prices, self._partitioned))
            .with_output_types(QuoteBlock)
            .with_outputs(DEAD_LETTERS, main="valid")
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

    #: Each valid quote is a mid price or a latency error: with the dead letters, every quote read.
    ACCOUNTING = Accounting(
        outputs=(
            Output("mid_prices.log", "mid_prices", "mid prices", "{mid_prices:,} mid prices"),
            Output("errors.log", "latency_filtered", "latency filtered (> {latency_threshold_ms} ms)",
                   "{latency_filtered:,} quotes over the {latency_threshold_ms} ms latency threshold"),
        ),
        checks=(Check(RECORDS_CHECK, ("mid_prices", "latency_filtered"), label="mid-price counts"),),
        set_aside=("latency_filtered",),
    )

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
