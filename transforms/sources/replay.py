"""Historical replay without Beam: read quote CSVs and yield row blocks in arrival order.

:class:`HistoricalReplay` reads one or more files sorted by timestamp, splits them into blocks
(:mod:`transforms.sources.csv_blocks`), parses each row's timestamp and latency (:mod:`transforms.quotes.columns`)
and releases rows through a :class:`transforms.sources.arrival.BlockArrivalBuffer`. Rows that cannot be
placed in arrival order (unsplittable line, bad timestamp or latency, out of order) travel in the
same blocks with a ``reject`` reason, so that the next stage can route them to the dead letters.

Splitting and parsing a block depends only on its file (:func:`parse_block`), so by default a thread
per file does it a couple of blocks ahead (:mod:`transforms.sources.read_ahead`) while the caller
orders and processes the blocks before; ordering needs the replay's state and stays in the caller.

The files are read in turns, always the one whose newest timestamp is oldest, so the watermark
(the oldest of those newest timestamps) moves forward for all files together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.arrays import numpy
from transforms.quotes import columns
from transforms.quotes.rules import DEFAULT_TENANT, HISTORICAL
from transforms.sources.arrival import (
    ALL_READ,
    NOTHING_READ,
    BlockArrivalBuffer,
    arrival_order,
    out_of_order_mask,
    out_of_order_reason,
)
from transforms.sources.csv_blocks import (
    SPLIT_SCHEMA,
    CsvLayout,
    SplitBlock,
    line_blocks,
    read_header,
    split_block,
)
from transforms.sources.dedup import Deduplicator
from transforms.sources.read_ahead import ReadAhead

#: The rows the replay yields: the raw fields, where they came from, and what ordering needs.
BLOCK_SCHEMA = pa.schema(
    [pa.field("file", pa.int32())]
    + list(SPLIT_SCHEMA)
    + [
        pa.field("event_us", pa.int64()),
        pa.field("latency_us", pa.int64()),  # µs (the input's ms, exactly); null without latency_ms
        pa.field("arrival_us", pa.int64()),
        pa.field("reject", pa.string()),
        pa.field("mode", pa.string()),
    ]
)

DEFAULT_BLOCK_BYTES = 1 << 20
DEFAULT_READ_AHEAD = 2  # blocks per file (see HistoricalReplay.read_ahead)
DEFAULT_READ_AHEAD_FILES = 8


def open_local(path: str) -> BinaryIO:
    return open(path, "rb")


@dataclass
class ReplayStats:
    """What the replay has read so far."""

    records_in: int = 0
    blank_lines: int = 0
    bytes_read: int = 0
    files: int = 0
    max_held_rows: int = 0
    duplicates: int | None = None  # rows dropped as copies; None when deduplication is off

    def as_dict(self) -> dict[str, int]:
        return {name: value for name, value in self.__dict__.items() if value is not None}


@dataclass
class ParsedBlock:
    """One block of a file, split into rows and with their times parsed: the part of the work
    that depends only on the file (:func:`parsed_blocks`), which can run ahead of the ordering."""

    size: int  # bytes of CSV
    split: SplitBlock
    event_us: np.ndarray
    latency_us: np.ndarray  # zeros without a latency column
    reasons: dict[int, str]  # row -> why its timestamp or latency is unusable
    order: np.ndarray | None  # sorts the rows by (arrival, line); None: they already are
    sorted_rows: pa.RecordBatch  # split.rows in that order (the same batch when order is None)


def parse_block(data: bytes, first_line: int, layout: CsvLayout, default_symbol: str) -> ParsedBlock:
    """Split one block of whole lines (the first is line ``first_line``) and parse its times."""
    split = split_block(data, first_line, layout, default_symbol)
    rows = split.rows
    event_us, reasons = columns.parse_timestamps(rows.column("timestamp"))
    if layout.has("latency_ms"):
        latency, latency_reasons = columns.parse_latencies(rows.column("latency_ms"))
        for index, reason in latency_reasons.items():
            reasons.setdefault(index, reason)
    else:
        latency = np.zeros(rows.num_rows, dtype=np.int64)
    # Sorted here, ahead, so that the arrival buffer only has to merge blocks (rows with bad
    # times land anywhere: they are taken out before the buffer).
    count = rows.num_rows
    order = arrival_order(event_us + latency, np.zeros(count, dtype=np.int8), np.arange(count))
    sorted_rows = rows if order is None else rows.take(pa.array(order))
    return ParsedBlock(len(data), split, event_us, latency, reasons, order, sorted_rows)


def parsed_blocks(stream: BinaryIO, layout: CsvLayout, block_bytes: int, default_symbol: str) -> Iterator[ParsedBlock]:
    """:func:`parse_block` of each block of the rest of ``stream`` (after its header line)."""
    next_line = 2  # the header is line 1
    for data in line_blocks(stream, block_bytes):
        yield parse_block(data, next_line, layout, default_symbol)
        next_line += data.count(b"\n")


@dataclass
class _Cursor:
    index: int
    source: str
    stream: BinaryIO
    layout: CsvLayout
    blocks: Iterator[ParsedBlock]
    newest_us: int = NOTHING_READ
    done: bool = False

    def close(self) -> None:
        """Stop reading ahead (if it does), then close the file."""
        if isinstance(self.blocks, ReadAhead):
            self.blocks.close()
        self.stream.close()


@dataclass
class HistoricalReplay:
    """Iterate over arrival-ordered :data:`BLOCK_SCHEMA` record batches of the given files.

    Attributes:
        sources: file paths, in the order that breaks ties ("file order" across files).
        default_symbol: symbol for files without a symbol column.
        block_bytes: about how many bytes of CSV make one block.
        open_file: opens a path for binary reading (Beam's FileSystems.open in the pipeline).
        on_block: called with the byte count after each block is read (progress reporting).
        dedup_horizon_us: drop a row whose raw line was released within this many microseconds
            (of arrival) before, and count it in ``stats.duplicates`` (0: off, nothing changes).
            A quote delivered twice is the same CSV line: its content is its identity, so the key
            is the line's text (a hash of source and position would not see the same data
            arriving from two files). Rows are checked in release order, each at its arrival
            time; a row rejected before it has one (unsplittable, bad timestamp, ...) is checked
            at the latest arrival seen so far (see :class:`QuoteDeduplicator`).
        read_ahead: blocks per file to split and parse ahead, in a thread per file, while the
            current block is ordered and the ones before it are processed downstream (0: none,
            all in the caller's thread). Only when there are at most ``read_ahead_files`` files,
            so that many files do not mean many threads and blocks held. The rows and their
            order are the same either way.
    """

    sources: Sequence[str]
    default_symbol: str = "UNKNOWN"
    block_bytes: int = DEFAULT_BLOCK_BYTES
    open_file: Callable[[str], BinaryIO] = open_local
    on_block: Callable[[int], None] | None = None
    stats: ReplayStats = field(default_factory=ReplayStats)
    dedup_horizon_us: int = 0
    read_ahead: int = DEFAULT_READ_AHEAD
    read_ahead_files: int = DEFAULT_READ_AHEAD_FILES

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        ahead = self.read_ahead if len(self.sources) <= self.read_ahead_files else 0
        cursors: list[_Cursor] = []
        try:
            for index, source in enumerate(self.sources):
                cursors.append(self._open(index, source, ahead))
        except BaseException:
            for cursor in cursors:
                cursor.close()
            raise
        self.stats.files = len(cursors)
        buffer = BlockArrivalBuffer()
        dedup = QuoteDeduplicator(self.dedup_horizon_us) if self.dedup_horizon_us else None
        if dedup is not None:
            self.stats.duplicates = 0
        try:
            while True:
                active = [c for c in cursors if not c.done]
                if not active:
                    break
                cursor = min(active, key=lambda c: (c.newest_us, c.index))
                parsed = next(cursor.blocks, None)
                rejected = None
                if parsed is None:
                    cursor.done = True
                    cursor.close()
                else:
                    accepted, rejected = self._read_block(cursor, parsed)
                    buffer.add(accepted)
                    if dedup is not None:
                        dedup.saw(accepted)
                    self.stats.max_held_rows = max(self.stats.max_held_rows, buffer.held_rows)
                watermark = min((c.newest_us for c in cursors if not c.done), default=ALL_READ)
                released = buffer.release_before(watermark)
                parts = [b for b in (released, rejected) if b is not None and b.num_rows]
                if parts:
                    batch = parts[0] if len(parts) == 1 else pa.concat_batches(parts)
                    if dedup is not None:
                        batch, dropped = dedup.drop_duplicates(batch)
                        self.stats.duplicates += dropped
                    if batch.num_rows:
                        yield batch
        finally:
            for cursor in cursors:
                if not cursor.done:
                    cursor.close()

    def _open(self, index: int, source: str, ahead: int) -> _Cursor:
        stream = self.open_file(source)
        try:
            layout = read_header(stream, source)
        except Exception:
            stream.close()
            raise
        blocks = parsed_blocks(stream, layout, self.block_bytes, self.default_symbol)
        if ahead:
            blocks = ReadAhead(blocks, ahead, name=f"replay-read-ahead-{index}")
        return _Cursor(index, source, stream, layout, blocks)

    def _read_block(self, cursor: _Cursor, parsed: ParsedBlock) -> tuple[pa.RecordBatch, pa.RecordBatch | None]:
        split, event_us, latency, reasons = parsed.split, parsed.event_us, parsed.latency_us, parsed.reasons
        rows = split.rows
        count = rows.num_rows
        self.stats.bytes_read += parsed.size
        self.stats.blank_lines += split.blank_lines
        self.stats.records_in += count + len(split.rejected_lines)
        if self.on_block is not None:
            self.on_block(parsed.size)

        arrival_us = event_us + latency
        ok = np.ones(count, dtype=bool)
        ok[list(reasons)] = False
        candidates = np.flatnonzero(ok)
        late = out_of_order_mask(event_us[candidates], arrival_us[candidates], cursor.newest_us)
        for index in candidates[late].tolist():
            reasons[index] = out_of_order_reason(int(arrival_us[index]), self._newest_before(cursor, event_us, ok, index))
            ok[index] = False
        if ok.any():
            cursor.newest_us = max(cursor.newest_us, int(event_us[ok].max()))

        order = parsed.order
        keep = None if not reasons else (ok if order is None else ok[order])
        in_order = parsed.sorted_rows if keep is None else parsed.sorted_rows.filter(pa.array(keep))
        timing = []
        for values in (event_us, latency, arrival_us):
            values = values if order is None else values[order]
            timing.append(pa.array(values if keep is None else values[keep]))
        if not cursor.layout.has("latency_ms"):
            timing[1] = pa.nulls(in_order.num_rows, pa.int64())
        accepted = _block(cursor.index, in_order, timing, pa.nulls(in_order.num_rows, pa.string()))
        rejected_parts = []
        if reasons:  # in file order, without times
            bad = np.flatnonzero(~ok)
            failed = rows.take(pa.array(bad))
            none = [pa.nulls(len(bad), pa.int64())] * 3
            rejected_parts.append(_block(cursor.index, failed, none, pa.array([reasons[i] for i in bad.tolist()],
                                                                              type=pa.string())))
        if split.rejected_lines:
            rejected_parts.append(
                _unsplit_rows(
                    cursor.index, split.rejected_lines, split.rejected_raw, split.rejected_reasons,
                    # A file without a tenant column is all the default tenant's, its broken lines too.
                    None if cursor.layout.has("tenant") else DEFAULT_TENANT,
                )
            )
        return accepted, pa.concat_batches(rejected_parts) if rejected_parts else None

    @staticmethod
    def _newest_before(cursor: _Cursor, event_us: np.ndarray, ok: np.ndarray, index: int) -> int:
        """The newest accepted timestamp before row ``index`` of this block (for the reason text)."""
        earlier = event_us[:index][ok[:index]]
        return max(cursor.newest_us, int(earlier.max())) if len(earlier) else cursor.newest_us


class QuoteDeduplicator:
    """:class:`transforms.sources.dedup.Deduplicator` over replayed blocks, keyed by each row's raw line.

    A row's time is its ``arrival_us``. A row without one (rejected before it was timed) takes the
    latest arrival seen so far: the newest arrival of the rows *read* (:meth:`saw`), 0 before any.
    Rows are read ahead of their release, so that time is where the row was found in the files,
    the same for a copy of a file read alongside; it may be a little ahead of the rows released
    next (by at most the read-ahead, i.e. the largest latency), which a horizon longer than the
    largest latency covers.
    """

    def __init__(self, horizon_us: int):
        self._dedup = Deduplicator(horizon_us)
        self._latest_us = 0

    def saw(self, read: pa.RecordBatch) -> None:
        """Note the arrivals of rows just read (before they are released)."""
        newest = pc.max(read.column("arrival_us")).as_py()
        if newest is not None:
            self._latest_us = max(self._latest_us, newest)

    def times(self, batch: pa.RecordBatch) -> np.ndarray:
        """The time each row is checked at (see the class docstring)."""
        arrival = batch.column("arrival_us")
        known = numpy(arrival.is_valid())
        return np.where(known, numpy(arrival.fill_null(0)), self._latest_us)

    def drop_duplicates(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, int]:
        """The batch without its duplicate rows, and how many were dropped."""
        keys = pc.utf8_rtrim(batch.column("raw"), "\r\n").to_pylist()
        duplicate = self._dedup.duplicates(keys, self.times(batch))
        dropped = int(duplicate.sum())
        return (batch.filter(pa.array(~duplicate)) if dropped else batch), dropped


def mode_column(mode: str, count: int) -> pa.Array:
    """The ``mode`` column of ``count`` records from one source. Built from its buffers:
    ``pa.repeat`` of a string takes a millisecond per block, 2% of a replay."""
    text = mode.encode("utf-8")
    offsets = np.arange(0, (count + 1) * len(text), len(text), dtype=np.int32) if text else np.zeros(count + 1, np.int32)
    return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(text * count)])


def _block(file_index: int, rows: pa.RecordBatch, timing: list[pa.Array], reasons: pa.Array) -> pa.RecordBatch:
    """A :data:`BLOCK_SCHEMA` batch: split rows of one file with their times and reject reasons."""
    count = rows.num_rows
    return pa.RecordBatch.from_arrays(
        [pa.array(np.full(count, file_index, dtype=np.int32))] + rows.columns + timing
        + [reasons, mode_column(HISTORICAL, count)],
        schema=BLOCK_SCHEMA,
    )


def _unsplit_rows(
    file_index: int, lines: list[int], raws: list[str], reasons: list[str], tenant: str | None
) -> pa.RecordBatch:
    count = len(lines)
    arrays = {
        "tenant": pa.array([tenant] * count, type=pa.string()),
        "file": pa.array(np.full(count, file_index, dtype=np.int32)),
        "line": pa.array(lines, type=pa.int64()),
        "raw": pa.array(raws, type=pa.string()),
        "reject": pa.array(reasons, type=pa.string()),
        "mode": mode_column(HISTORICAL, count),
    }
    return pa.RecordBatch.from_arrays(
        [arrays.get(f.name, pa.nulls(count, f.type)) for f in BLOCK_SCHEMA], schema=BLOCK_SCHEMA
    )
