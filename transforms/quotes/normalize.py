"""normalize: check every row against the quote schema and the domain rules.

``NormalizeQuotes`` takes replayed :class:`~transforms.blocks.QuoteBlock` s (raw string fields,
see :data:`transforms.sources.replay.BLOCK_SCHEMA`) and splits each into

* ``valid``: a block of typed quotes (:data:`VALID_SCHEMA`), in the same (arrival) order;
* ``dead_letters``: :class:`~transforms.blocks.TextChunk` s of ``dead_letter.jsonl`` lines, one
  per rejected row with its source, line number, raw text and reason.

The schema (``schemas/quote.v1.avsc``) fixes which fields are required and the prices' decimal
precision and scale; the domain rules add positive prices, ``bid <= ask`` and non-negative sizes.
Rows already rejected by the replay (unparsable timestamp, out of order, ...) pass straight to
the dead letters. Checks run in schema field order; a row's reason is the first rule it breaks.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa

from schemas import FieldRule, SchemaError
from transforms.arrays import numpy
from transforms.blocks import TextChunk
from transforms.quotes import columns
from transforms.quotes.rules import PriceRule, dead_letter_json, reject_code
from transforms.quotes.tenants import dead_letter_tenants, split_by_tenant

VALID_SCHEMA = pa.schema(
    [
        pa.field("file", pa.int32()),
        pa.field("line", pa.int64()),
        pa.field("timestamp", pa.string()),
        pa.field("event_us", pa.int64()),
        pa.field("arrival_us", pa.int64()),
        pa.field("latency_us", pa.int64()),
        pa.field("symbol", pa.string()),
        pa.field("bid", pa.int64()),
        pa.field("ask", pa.int64()),
        pa.field("bid_size", pa.float64()),
        pa.field("ask_size", pa.float64()),
        pa.field("mode", pa.string()),
        pa.field("tenant", pa.string()),
    ]
)

DEAD_LETTERS = "dead_letters"


def price_rule(rules: Mapping[str, FieldRule]) -> PriceRule:
    """The decimal both prices must fit; the schema must give them the same one (the mid needs it)."""
    bid, ask = rules.get("bid_price"), rules.get("ask_price")
    if bid is None or ask is None or bid.kind != "decimal" or ask.kind != "decimal":
        raise SchemaError("the quote schema must declare bid_price and ask_price as decimals")
    if (bid.precision, bid.scale) != (ask.precision, ask.scale):
        raise SchemaError("bid_price and ask_price must have the same decimal precision and scale")
    if bid.precision > 18:
        raise SchemaError("prices wider than decimal(18, s) do not fit the 64-bit fast path")
    return PriceRule(bid.precision, bid.scale)


def normalize_batch(batch: pa.RecordBatch, prices: PriceRule) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """Split replayed rows into valid typed quotes and rejected rows (``file, line, raw, reject``)."""
    pre_rejected = numpy(batch.column("reject").is_valid())
    rows = batch.filter(pa.array(~pre_rejected)) if pre_rejected.any() else batch
    count = rows.num_rows
    reasons: dict[int, str] = {}

    def first(rejects: dict[int, str]) -> None:
        for index, reason in rejects.items():
            reasons.setdefault(index, reason)

    symbol, rejects = columns.parse_symbols(rows.column("symbol"))
    first(rejects)
    bid, rejects = columns.parse_prices(rows.column("bid_price"), "bid_price", prices.precision, prices.scale)
    first(rejects)
    bid_size, rejects = _sizes(rows.column("bid_size"), "bid_size")
    first(rejects)
    ask, rejects = columns.parse_prices(rows.column("ask_price"), "ask_price", prices.precision, prices.scale)
    first(rejects)
    ask_size, rejects = _sizes(rows.column("ask_size"), "ask_size")
    first(rejects)
    tenant, rejects = columns.parse_tenants(rows.column("tenant"))
    first(rejects)
    ok = np.ones(count, dtype=bool)
    ok[list(reasons)] = False
    # Only rows with two valid prices can be crossed; the others already have a reason.
    bid_or_zero, ask_or_zero = np.where(ok, bid, 0), np.where(ok, ask, 0)
    first(columns.crossed_rejects(bid_or_zero, ask_or_zero, rows.column("bid_price"), rows.column("ask_price")))
    ok[list(reasons)] = False

    valid = pa.RecordBatch.from_arrays(
        [
            rows.column("file"),
            rows.column("line"),
            rows.column("timestamp"),
            rows.column("event_us"),
            rows.column("arrival_us"),
            rows.column("latency_us"),
            symbol,
            pa.array(bid),
            pa.array(ask),
            pa.array(bid_size, from_pandas=True),
            pa.array(ask_size, from_pandas=True),
            rows.column("mode"),
            tenant,
        ],
        schema=VALID_SCHEMA,
    )
    dead_parts = []
    if pre_rejected.any():
        rejected = batch.filter(pa.array(pre_rejected))
        dead_parts.append(_dead(rejected, rejected.column("reject")))
    if reasons:
        valid = valid.filter(pa.array(ok))
        indices = sorted(reasons)
        why = pa.array([reasons[i] for i in indices], type=pa.string())
        dead_parts.append(_dead(rows.take(pa.array(indices, pa.int64())), why))
    if not dead_parts:
        dead_parts.append(_dead(batch.slice(0, 0), pa.array([], type=pa.string())))
    dead = pa.concat_batches(dead_parts)
    return valid, dead


def _sizes(column: pa.Array, field: str) -> tuple[np.ndarray, dict[int, str]]:
    if column.null_count == len(column):  # the file has no such column
        return np.full(len(column), np.nan), {}
    return columns.parse_sizes(column, field)


def _dead(rows: pa.RecordBatch, reasons: pa.Array) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [rows.column("file"), rows.column("line"), rows.column("raw"), reasons, dead_letter_tenants(rows)],
        names=["file", "line", "raw", "reject", "tenant"],
    )


def dead_letter_chunks(
    seq: int, dead: pa.RecordBatch, sources: tuple[str, ...], partitioned: bool = False
) -> Iterator[TextChunk]:
    """:func:`dead_letter_chunk` s of a block's dead letters: one, or one per tenant (see
    :func:`transforms.quotes.tenants.dead_letter_tenants`) when ``partitioned``."""
    for partition, rows in split_by_tenant(dead, partitioned):
        yield dead_letter_chunk(seq, rows, sources, partition)


def dead_letter_chunk(seq: int, dead: pa.RecordBatch, sources: tuple[str, ...], partition: str = "") -> TextChunk:
    """``dead_letter.jsonl`` lines sorted by (file, line), keyed so the sink can merge parts."""
    order = np.lexsort((numpy(dead.column("line")), numpy(dead.column("file"))))
    files = numpy(dead.column("file"))[order].tolist()
    lines = numpy(dead.column("line"))[order].tolist()
    raws = dead.column("raw").take(pa.array(order)).to_pylist()
    reasons = dead.column("reject").take(pa.array(order)).to_pylist()
    text = "".join(
        f"{file:08d}{line:012d}\t{dead_letter_json(sources[file], line, raw or '', reason)}\n"
        for file, line, raw, reason in zip(files, lines, raws, reasons)
    )
    tally = tuple(sorted(Counter(reject_code(reason) for reason in reasons).items()))
    return TextChunk(seq, text.encode("utf-8"), len(lines), tally, keyed=True, partition=partition)


