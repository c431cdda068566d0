"""Trade CSVs as normalized, deduplicated, arrival-ordered trades (:data:`transforms.trades.market.TRADE_SCHEMA`).

A trade file has the header ``timestamp,symbol,price,size,side,trade_id[,latency_ms]`` (columns in
any order, names case-insensitive, ``latency``/``arrival_latency_ms`` accepted for ``latency_ms``,
other columns ignored). :func:`stream_trades` reads the files block by block, splits the lines as
the quote reader does (Arrow's CSV parser, the ``csv`` module for blocks Arrow cannot split) and
checks each row, in the trade schema's field order (``schemas/trade.v1.avsc``):

* ``timestamp``: as a quote's (ISO 8601 or ``YYYY-MM-DD HH:MM:SS[.ffffff]``, UTC);
* ``symbol``: not empty (white space trimmed);
* ``price``: a positive decimal that fits the schema's decimal(precision, scale);
* ``size``: a positive, finite number;
* ``side``: ``buy`` or ``sell``, any case, stored lowercase;
* ``trade_id``: not empty (white space trimmed);
* ``latency_ms``: when the file has the column, non-negative milliseconds with at most 3 decimals
  (kept exactly, in microseconds), as a quote's.

A row that breaks a rule is dead-lettered with the first rule it breaks; the reason has the form
``"<code>: <explanation>"`` of :mod:`transforms.quotes.rules`, with the quote codes where the rule is
the same and the codes of :data:`TRADE_REJECT_CODES` for what only trades have.

Every row then takes its arrival time, ``timestamp + latency_ms`` (the timestamp without
latency), and all rows of all files are put in arrival order: a stable sort by (arrival, file,
line). A :class:`transforms.sources.dedup.Deduplicator` runs in that order and drops a row whose key was
kept within ``horizon_us`` before: a valid trade's key is its ``trade_id`` (a venue's identifier
of the trade), a rejected row's its raw line (all a broken row has). A row's time is its arrival
when its timestamp and latency can be read, even if another rule rejects it (a copy has the same
time as the original, as for valid rows); otherwise the arrival of the nearest such row before it
in its file (0 when there is none), which is where a copy of the file puts its copy too.
Duplicates are counted, never dead-lettered, so ``records_in == valid + dead letters + duplicates``.

Arrival order and deduplication need every file, the rows themselves do not: :func:`stream_trades`
yields each block's valid trades as soon as it is checked and keeps only what the verdicts need
(the dead rows, a hash of each valid trade's id); once every file is read it names the valid trades
that are duplicates, by file and line, for the consumer to drop (:func:`without_rows`).
:func:`read_trades` gathers the stream whole: the valid trades without the duplicates, in arrival
order.

``ReadTrades`` is the Beam source: one ``DoFn`` call reads every file and emits the valid trades
per symbol (whole, or with ``blocks=True`` block by block with the duplicates named apart), the
dead letters as one ``trades_dead_letter.jsonl`` chunk and one dict of counts.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import SchemaError, field_rules, load_schema
from transforms.arrays import members, repeated, string_hashes
from transforms.quotes import columns
from transforms.sources.csv_blocks import (
    CsvLayout,
    SplitLines,
    line_blocks,
    map_header,
    read_header,
    split_lines,
)
from transforms.sources.dedup import Deduplicator
from transforms.sources.replay import open_local
from transforms.trades.market import TRADE_SCHEMA, concat, empty

LOG = logging.getLogger(__name__)

#: Canonical trade columns; the last is optional.
FIELDS = ("timestamp", "symbol", "price", "size", "side", "trade_id", "latency_ms")
REQUIRED = FIELDS[:-1]
ALIASES = {"latency": "latency_ms", "arrival_latency_ms": "latency_ms"}
SIDES = ("buy", "sell")

#: Reject codes only trades have (the others are :data:`transforms.quotes.rules.REJECT_CODES`).
TRADE_REJECT_CODES = {
    "missing_size": "the size field is empty",
    "non_positive_size": "the size is zero",
    "missing_side": "the side field is empty",
    "bad_side": "the side is not buy or sell",
    "missing_trade_id": "the trade_id field is empty",
}

#: Columns of a dead trade row: what :func:`transforms.quotes.normalize.dead_letter_chunk` takes.
DEAD_SCHEMA = pa.schema(
    [pa.field("file", pa.int32()), pa.field("line", pa.int64()), pa.field("raw", pa.string()),
     pa.field("reject", pa.string())]
)

TRADES, DEAD_LETTERS, COUNTS, DROPPED = "trades", "dead_letters", "counts", "dropped"
DEFAULT_BLOCK_BYTES = 1 << 20


class TradeInputError(ValueError):
    """A trade file cannot be read as trades (its header lacks a column, ...)."""


def trade_reason(code: str, detail: str) -> str:
    """A reject reason ``"<code>: <detail>"`` for a code of :data:`TRADE_REJECT_CODES`."""
    if code not in TRADE_REJECT_CODES:
        raise KeyError(f"unknown trade reject code {code!r}")
    return f"{code}: {detail}"


# --------------------------------------------------------------------------- schema and header


@dataclass(frozen=True)
class TradeRules:
    """What the trade schema fixes: the price's decimal."""

    precision: int
    scale: int


def trade_rules(schema: Mapping[str, Any] | None = None) -> TradeRules:
    """The price decimal of the trade schema (default ``trade`` v1), checking its ``side`` enum.

    :func:`schemas.field_rules` does not compile enums, so only the price field is compiled.
    """
    schema = schema or load_schema("trade", 1)
    fields = {f["name"]: f for f in schema["fields"]}
    if "price" not in fields or "side" not in fields:
        raise SchemaError("the trade schema must declare price and side")
    price = field_rules({"fields": [fields["price"]]})["price"]
    if price.kind != "decimal" or price.precision > 18:
        raise SchemaError("the trade price must be a decimal of at most 18 digits")
    side = fields["side"]["type"]
    if not isinstance(side, dict) or side.get("type") != "enum" or tuple(side.get("symbols", ())) != SIDES:
        raise SchemaError(f"the trade side must be an enum of {SIDES}")
    return TradeRules(price.precision, price.scale)


#: Where the trade columns sit in a file (the quote files' layout type, with the trade fields).
TradeLayout = CsvLayout
#: A block of trade lines split into string columns (see :func:`transforms.sources.csv_blocks.split_lines`).
SplitTrades = SplitLines


def parse_trade_header(line: str, source: str) -> TradeLayout:
    """Map a trade file's header line to a :class:`TradeLayout`; raises :class:`TradeInputError`."""
    return map_header(line, source, fields=FIELDS, required=REQUIRED, aliases=ALIASES, error=TradeInputError,
                      what="trade header")


def read_trade_header(stream: BinaryIO, source: str) -> TradeLayout:
    """Read and parse the first line of an open trade file."""
    return read_header(stream, source, parse_trade_header, TradeInputError)


def check_trade_headers(paths: Sequence[str], open_file: Callable[[str], BinaryIO] = open_local) -> None:
    """Read every file's header now, before a pipeline starts; raises :class:`TradeInputError`."""
    for path in paths:
        stream = open_file(path)
        try:
            read_trade_header(stream, path)
        finally:
            stream.close()


# --------------------------------------------------------------------------- the rules, by column


Rejects = dict[int, str]


def parse_trade_sizes(column: pa.Array) -> tuple[np.ndarray, Rejects]:
    """Sizes as float64: a finite number above zero (empty, zero or negative are rejected)."""
    sizes, rejects = columns.parse_sizes(column, "size")
    for index in np.flatnonzero(np.isnan(sizes) | (sizes == 0)).tolist():
        if index in rejects:
            continue
        if np.isnan(sizes[index]):
            rejects[index] = trade_reason("missing_size", "size is empty")
        else:
            rejects[index] = trade_reason("non_positive_size", f"size {column[index].as_py()!r} is not positive")
    return sizes, rejects


def parse_sides(column: pa.Array) -> tuple[pa.Array, np.ndarray, Rejects]:
    """Sides lowercased (``buy``/``sell``, any case, white space trimmed) and their signs (+1/-1)."""
    side = pc.utf8_lower(pc.utf8_trim_whitespace(column))
    buy = pc.fill_null(pc.equal(side, SIDES[0]), False).to_numpy(zero_copy_only=False)
    sell = pc.fill_null(pc.equal(side, SIDES[1]), False).to_numpy(zero_copy_only=False)
    rejects: Rejects = {}
    for index in np.flatnonzero(~(buy | sell)).tolist():
        text = column[index].as_py() or ""
        if not text.strip():
            rejects[index] = trade_reason("missing_side", "side is empty")
        else:
            rejects[index] = trade_reason("bad_side", f"side {text!r} is not buy or sell")
    return side, np.where(buy, 1, -1).astype(np.int8), rejects


def parse_trade_ids(column: pa.Array) -> tuple[pa.Array, Rejects]:
    """Trade ids with white space trimmed; an empty one is rejected."""
    trimmed = pc.utf8_trim_whitespace(column)
    empty_ids = pc.fill_null(pc.equal(pc.utf8_length(trimmed), 0), True).to_numpy(zero_copy_only=False)
    reason = trade_reason("missing_trade_id", "trade_id is empty")
    return trimmed, {index: reason for index in np.flatnonzero(empty_ids).tolist()}


@dataclass
class ParsedTrades:
    """Every split row checked: typed columns (meaningless where rejected) and the first reasons."""

    event_us: np.ndarray
    latency: np.ndarray  # µs (the file's ms, exactly); 0 where the file has no latency column
    has_latency: np.ndarray  # bool: the row's file has a latency column
    symbol: pa.Array
    price: np.ndarray
    size: np.ndarray
    side: pa.Array
    sign: np.ndarray
    trade_id: pa.Array
    reasons: Rejects
    timed: np.ndarray  # bool: timestamp and latency parse, so the row has an arrival time

    @property
    def arrival_us(self) -> np.ndarray:
        return self.event_us + self.latency


def parse_trade_columns(rows: Mapping[str, pa.Array], has_latency: np.ndarray, rules: TradeRules) -> ParsedTrades:
    """Check string columns (:data:`FIELDS`; ``latency_ms`` is read where ``has_latency``) by the
    trade rules, in schema order; a row's reason is the first rule it breaks."""
    count = len(rows["timestamp"])
    reasons: Rejects = {}

    def first(rejects: Rejects) -> None:
        for index, reason in rejects.items():
            reasons.setdefault(index, reason)

    event_us, timestamp_rejects = columns.parse_timestamps(rows["timestamp"])
    first(timestamp_rejects)
    symbol, rejects = columns.parse_symbols(rows["symbol"])
    first(rejects)
    price, rejects = columns.parse_prices(rows["price"], "price", rules.precision, rules.scale)
    first(rejects)
    size, rejects = parse_trade_sizes(rows["size"])
    first(rejects)
    side, sign, rejects = parse_sides(rows["side"])
    first(rejects)
    trade_id, rejects = parse_trade_ids(rows["trade_id"])
    first(rejects)
    latency = np.zeros(count, dtype=np.int64)
    latency_rejects: Rejects = {}
    with_column = np.flatnonzero(has_latency)
    if len(with_column):
        values, rejects = columns.parse_latencies(rows["latency_ms"].take(pa.array(with_column)))
        latency[with_column] = values
        latency_rejects = {int(with_column[index]): reason for index, reason in rejects.items()}
        first(latency_rejects)
    timed = np.ones(count, dtype=bool)
    timed[list(timestamp_rejects) + list(latency_rejects)] = False
    return ParsedTrades(event_us, latency, has_latency, symbol, price, size, side, sign, trade_id, reasons, timed)


# --------------------------------------------------------------------------- ordering


def fill_times(file: np.ndarray, line: np.ndarray, time_us: np.ndarray, timed: np.ndarray) -> np.ndarray:
    """Each timed row's own time; for a row without one, the time of the nearest timed row before
    it (by line) in its file, 0 if there is none. Rows may come in any order."""
    order = np.lexsort((line, file))
    sorted_file, sorted_timed = file[order], timed[order]
    positions = np.arange(len(order))
    last_timed = np.maximum.accumulate(np.where(sorted_timed, positions, -1)) if len(order) else positions
    file_start = np.searchsorted(sorted_file, sorted_file, side="left")
    has_earlier = last_timed >= file_start
    filled = np.where(has_earlier, time_us[order][np.maximum(last_timed, 0)], 0)
    result = np.empty_like(time_us)
    result[order] = filled
    return result


def arrival_order(time_us: np.ndarray, file: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Indices in arrival order: a stable sort by (time, file, line)."""
    return np.lexsort((line, file, time_us))


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TradeRead:
    """What :func:`read_trades` found.

    Attributes:
        valid: normalized trades (:data:`transforms.trades.market.TRADE_SCHEMA`), in arrival order.
        dead: rejected rows (:data:`DEAD_SCHEMA`: file, line, raw, reject), in arrival order.
        records_in: data rows read (blank lines are not rows).
        duplicates: rows dropped as copies of a row kept within the horizon.
    """

    valid: pa.RecordBatch
    dead: pa.RecordBatch
    records_in: int
    duplicates: int

    def counts(self) -> dict[str, int]:
        return {"trades_in": self.records_in, "trades_duplicates": self.duplicates}


#: A dead row of one block, with the time deduplication and arrival order use (see :func:`parse_trade_block`).
TIMED_DEAD_SCHEMA = pa.schema(list(DEAD_SCHEMA) + [pa.field("time_us", pa.int64())])

#: The valid trades that deduplication drops, by where they were read (see :func:`without_rows`).
DROPPED_SCHEMA = pa.schema([pa.field("file", pa.int32()), pa.field("line", pa.int64())])


@dataclass(frozen=True)
class TradeBlock:
    """One block of one file, checked (:func:`parse_trade_block`).

    Attributes:
        valid: the rows that pass every rule (:data:`~transforms.trades.market.TRADE_SCHEMA`), in file order;
            duplicates are not dropped yet (that needs every file).
        dead: the rows that break a rule or cannot be split (:data:`TIMED_DEAD_SCHEMA`), any order.
        records: data rows in the block (blank lines are not rows).
        carry: the time of the block's last timed row (by line), else the ``carry`` it was given.
    """

    valid: pa.RecordBatch
    dead: pa.RecordBatch
    records: int
    carry: int | None


def parse_trade_block(file: int, layout: TradeLayout, split: SplitTrades, rules: TradeRules,
                      carry: int | None = None) -> TradeBlock:
    """Check one block of a file's split lines (:func:`transforms.sources.csv_blocks.split_lines`).

    ``carry`` is the time of the last timed row of the file's earlier blocks (None: there is none),
    which a row of this block without a time of its own takes when no timed row precedes it here
    (:func:`fill_times` over the whole file gives the same). The rules are row by row, so checking a
    file block by block gives each row the verdict and reason of checking it whole.
    """
    count = len(split.line)
    fields = {name: split.fields.get(name, pa.nulls(count, pa.string())) for name in FIELDS}
    has_latency = np.full(count, layout.has("latency_ms"))
    parsed = parse_trade_columns(fields, has_latency, rules)
    ok = np.ones(count, dtype=bool)
    ok[list(parsed.reasons)] = False
    files = np.full(count, file, dtype=np.int32)
    line = split.line.astype(np.int64)
    valid = _valid_batch(parsed, files, line, fields["timestamp"], np.flatnonzero(ok))

    unsplit = len(split.rejected_lines)
    all_line = np.concatenate([line, np.array(split.rejected_lines, dtype=np.int64)])
    timed = np.concatenate([parsed.timed, np.zeros(unsplit, dtype=bool)])
    own = np.concatenate([np.where(parsed.timed, parsed.arrival_us, 0), np.zeros(unsplit, dtype=np.int64)])
    before = [] if carry is None else [carry]  # a timed row ahead of the block (line 0) stands for the carry
    time_us = fill_times(np.zeros(len(before) + len(all_line), dtype=np.int32),
                         np.concatenate([np.zeros(len(before), dtype=np.int64), all_line]),
                         np.concatenate([np.array(before, dtype=np.int64), own]),
                         np.concatenate([np.ones(len(before), dtype=bool), timed]))[len(before):]
    if timed.any():
        carry = int(own[np.flatnonzero(timed)[np.argmax(all_line[timed])]])

    bad = np.flatnonzero(~ok)
    reasons = [parsed.reasons[i] for i in bad.tolist()] + list(split.rejected_reasons)
    dead_rows = np.concatenate([bad, np.arange(count, count + unsplit)])
    raw = pc.utf8_rtrim(split.raw.take(pa.array(bad, type=pa.int64())), "\r\n")
    dead = pa.RecordBatch.from_arrays(
        [pa.array(np.full(len(dead_rows), file, dtype=np.int32)), pa.array(all_line[dead_rows]),
         pa.concat_arrays([raw, pc.utf8_rtrim(pa.array(split.rejected_raw, type=pa.string()), "\r\n")]),
         pa.array(reasons, type=pa.string()), pa.array(time_us[dead_rows], type=pa.int64())],
        schema=TIMED_DEAD_SCHEMA,
    )
    return TradeBlock(valid, dead, count + unsplit, carry)


def find_duplicates(keys: pa.Array, time_us: np.ndarray, order: np.ndarray, horizon_us: int | None) -> np.ndarray:
    """Rows (in input positions) that :class:`Deduplicator` drops when fed in ``order``.

    A key's verdicts depend on that key's rows alone, so only the rows whose key occurs more than
    once are fed to the deduplicator (in ``order``); a key seen once is never a duplicate. With every
    key distinct (the usual case), nothing goes through it.
    """
    duplicate = np.zeros(len(keys), dtype=bool)
    deduplicator = Deduplicator(horizon_us)
    if not deduplicator.enabled or not len(order):
        return duplicate
    encoded = pc.dictionary_encode(keys)
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    repeated = np.bincount(codes, minlength=len(encoded.dictionary)) > 1
    candidates = order[repeated[codes[order]]]  # in order, the rows of repeated keys only
    if len(candidates):
        duplicate[candidates] = deduplicator.duplicates(
            keys.take(pa.array(candidates)).to_pylist(), time_us[candidates]
        )
    return duplicate


@dataclass
class TradeTally:
    """What :func:`stream_trades` found, complete once its blocks are all read.

    Attributes:
        records_in: data rows read (blank lines are not rows).
        valid: valid trades kept (not duplicates).
        dead: the dead letters kept (:data:`DEAD_SCHEMA`), in arrival order.
        dropped: the valid trades that are duplicates (:data:`DROPPED_SCHEMA`), to drop from the blocks.
        duplicates: rows dropped as copies (valid ones and dead ones).
    """

    records_in: int = 0
    valid: int = 0
    dead: pa.RecordBatch = field(default_factory=lambda: empty(DEAD_SCHEMA))
    dropped: pa.RecordBatch = field(default_factory=lambda: empty(DROPPED_SCHEMA))
    duplicates: int = 0

    def counts(self) -> dict[str, int]:
        return {"trades_in": self.records_in, "trades_duplicates": self.duplicates}


def stream_trades(
    sources: Sequence[str],
    tally: TradeTally,
    *,
    open_file: Callable[[str], BinaryIO] = open_local,
    precision: int,
    scale: int,
    horizon_us: int | None = 0,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Iterator[pa.RecordBatch]:
    """The valid trades of every file, block by block as read (file order), duplicates included;
    once exhausted, ``tally`` holds the counts, the dead letters and which valid trades are
    duplicates (see the module docstring for the rules and the order).

    Only what arrival order and deduplication need stays in memory until the end: the dead rows,
    and (when the horizon is on) a 64-bit hash of each valid trade's id. Ids whose hash occurs
    more than once (copies, or distinct ids that share a hash) are looked at again, with their
    arrival, file and line, in a second read of the files (:func:`duplicate_trades`); without such
    ids (the usual case) the files are read once.
    """
    read = functools.partial(trade_blocks, sources, open_file=open_file, rules=TradeRules(precision, scale),
                             block_bytes=block_bytes)
    deduplicating = Deduplicator(horizon_us).enabled
    dead_parts: list[pa.RecordBatch] = []
    hashes: list[np.ndarray] = []
    for block in read():
        tally.records_in += block.records
        if block.dead.num_rows:
            dead_parts.append(block.dead)
        if block.valid.num_rows:
            if deduplicating:
                hashes.append(string_hashes(block.valid.column("trade_id")))
            yield block.valid
        tally.valid += block.valid.num_rows

    dead = concat(dead_parts, TIMED_DEAD_SCHEMA)
    dead_time = dead.column("time_us").to_numpy(zero_copy_only=False)
    dead_file, dead_line = (dead.column(name).to_numpy(zero_copy_only=False) for name in ("file", "line"))
    order = arrival_order(dead_time, dead_file, dead_line)
    duplicate = find_duplicates(dead.column("raw"), dead_time, order, horizon_us)
    kept = order[~duplicate[order]]
    tally.dead = dead.select(DEAD_SCHEMA.names).take(pa.array(kept, type=pa.int64()))
    tally.duplicates = int(duplicate.sum())

    if hashes:
        all_hashes = np.concatenate(hashes)
        del hashes
        wanted = np.unique(all_hashes[repeated(all_hashes)])
        del all_hashes
        if len(wanted):
            LOG.info("%s trade ids may repeat: reading the trade files again for their arrivals", len(wanted))
            tally.dropped = duplicate_trades((block.valid for block in read()), wanted, horizon_us)
            tally.duplicates += tally.dropped.num_rows
            tally.valid -= tally.dropped.num_rows


def trade_blocks(sources: Sequence[str], *, open_file: Callable[[str], BinaryIO], rules: TradeRules,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[TradeBlock]:
    """Every block of every file (``file`` = its index in ``sources``), checked, in file order."""
    for index, source in enumerate(sources):
        stream = open_file(source)
        try:
            layout = read_trade_header(stream, source)
            next_line, carry = 2, None  # the header is line 1
            for data in line_blocks(stream, block_bytes):
                block = parse_trade_block(index, layout, split_lines(data, next_line, layout), rules, carry)
                next_line += data.count(b"\n")
                carry = block.carry
                yield block
        finally:
            stream.close()


def duplicate_trades(valid_blocks: Iterable[pa.RecordBatch], wanted: np.ndarray,
                     horizon_us: int | None) -> pa.RecordBatch:
    """The valid trades (:data:`DROPPED_SCHEMA`) that :class:`Deduplicator` drops when fed every
    trade in arrival order by trade id: what :func:`find_duplicates` finds over them all, holding less.

    ``wanted`` holds the id hashes (:func:`transforms.arrays.string_hashes`) that occur more than
    once, sorted. A trade whose id's hash occurs once has an id that occurs once, so it is never a
    duplicate; only the trades with a wanted hash are kept from ``valid_blocks`` and fed, with their
    ids themselves (a shared hash is not a shared id), in arrival order.
    """
    picked = []
    for valid in valid_blocks:
        rows = np.flatnonzero(members(string_hashes(valid.column("trade_id")), wanted))
        if len(rows):
            picked.append(valid.select(["file", "line", "arrival_us", "trade_id"]).take(pa.array(rows, type=pa.int64())))
    if not picked:
        return empty(DROPPED_SCHEMA)
    rows = pa.concat_batches(picked)
    file, line, arrival = (rows.column(name).to_numpy(zero_copy_only=False) for name in ("file", "line", "arrival_us"))
    duplicate = find_duplicates(rows.column("trade_id"), arrival, arrival_order(arrival, file, line), horizon_us)
    return pa.RecordBatch.from_arrays(
        [pa.array(file[duplicate], type=pa.int32()), pa.array(line[duplicate], type=pa.int64())], schema=DROPPED_SCHEMA)


def row_keys(file: np.ndarray, line: np.ndarray) -> np.ndarray:
    """One int64 per (file, line) (lines below 2**40, files below 2**23)."""
    return (np.asarray(file, dtype=np.int64) << 40) | np.asarray(line, dtype=np.int64)


class DroppedRows:
    """The rows a :data:`DROPPED_SCHEMA` batch names, sorted once, for :func:`without_rows` to look
    up (a binary search per row) however many batches it filters."""

    def __init__(self, dropped: pa.RecordBatch):
        self.keys = np.unique(row_keys(*(dropped.column(name).to_numpy(zero_copy_only=False)
                                         for name in ("file", "line"))))

    def __len__(self) -> int:
        return len(self.keys)

    def named(self, file: np.ndarray, line: np.ndarray) -> np.ndarray:
        """A mask: True where ``(file, line)`` is one of the rows named."""
        return members(row_keys(file, line), self.keys)


def without_rows(trades: pa.RecordBatch, dropped: pa.RecordBatch | DroppedRows) -> pa.RecordBatch:
    """``trades`` (any schema with ``file`` and ``line``) without the rows named in ``dropped``
    (:data:`DROPPED_SCHEMA`, or its :class:`DroppedRows`); the others keep their order."""
    if not len(dropped) or not trades.num_rows:
        return trades
    if not isinstance(dropped, DroppedRows):
        dropped = DroppedRows(dropped)
    gone = dropped.named(*(trades.column(name).to_numpy(zero_copy_only=False) for name in ("file", "line")))
    return trades.filter(pa.array(~gone)) if gone.any() else trades


def read_trades(
    sources: Sequence[str],
    *,
    open_file: Callable[[str], BinaryIO] = open_local,
    precision: int,
    scale: int,
    horizon_us: int | None = 0,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> TradeRead:
    """Read, check, order and deduplicate every trade file (see the module docstring), all in memory:
    :func:`stream_trades` with its blocks gathered, the duplicates dropped and the rows in arrival order.

    Args:
        sources: file paths; a row's ``file`` is its file's index here (ties break in this order).
        open_file: opens a path for binary reading.
        precision, scale: the price decimal (:func:`trade_rules`).
        horizon_us: deduplication horizon in microseconds (0 or None: no deduplication).
        block_bytes: about how much CSV is split at a time.
    """
    tally = TradeTally()
    blocks = list(stream_trades(sources, tally, open_file=open_file, precision=precision, scale=scale,
                                horizon_us=horizon_us, block_bytes=block_bytes))
    valid = without_rows(concat(blocks, TRADE_SCHEMA), tally.dropped)
    order = arrival_order(*(valid.column(name).to_numpy(zero_copy_only=False) for name in ("arrival_us", "file", "line")))
    valid = valid.take(pa.array(order, type=pa.int64())) if valid.num_rows else valid
    return TradeRead(valid, tally.dead, tally.records_in, tally.duplicates)


def _valid_batch(parsed: ParsedTrades, file: np.ndarray, line: np.ndarray, timestamp: pa.Array,
                 rows: np.ndarray) -> pa.RecordBatch:
    if not len(rows):
        return empty(TRADE_SCHEMA)
    take = pa.array(rows, type=pa.int64())
    return pa.RecordBatch.from_arrays(
        [
            pa.array(file[rows], type=pa.int32()),
            pa.array(line[rows], type=pa.int64()),
            timestamp.take(take),
            pa.array(parsed.event_us[rows], type=pa.int64()),
            pa.array(parsed.arrival_us[rows], type=pa.int64()),
            pa.array(parsed.latency[rows], type=pa.int64(), mask=~parsed.has_latency[rows]),
            parsed.symbol.take(take),
            pa.array(parsed.price[rows], type=pa.int64()),
            pa.array(parsed.size[rows], type=pa.float64()),
            parsed.side.take(take),
            pa.array(parsed.sign[rows], type=pa.int8()),
            parsed.trade_id.take(take),
        ],
        schema=TRADE_SCHEMA,
    )


def by_symbol(trades: pa.RecordBatch) -> list[tuple[str, pa.RecordBatch]]:
    """The trades of each symbol (in the order they come, i.e. arrival order), symbols sorted."""
    if not trades.num_rows:
        return []
    encoded = pc.dictionary_encode(trades.column("symbol"))
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    symbols = encoded.dictionary.to_pylist()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(symbols) + 1))
    parts = [(symbols[code], trades.take(pa.array(order[bounds[code]:bounds[code + 1]])))
             for code in range(len(symbols))]
    return sorted(parts, key=lambda part: part[0])


# --------------------------------------------------------------------------- Beam


