"""The elements that travel between stages, and their coders.

Elements are *blocks* of thousands of rows, never one Python object per quote: Beam's per-element
cost (~25 µs here) would otherwise dominate. A :class:`QuoteBlock` holds an Arrow record batch
and encodes as Arrow IPC; a :class:`TextChunk` holds finished output lines.

Both carry ``seq``, the block's position in the replay. Sinks write chunks in ``seq`` order, so
output order never depends on how a runner schedules bundles.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa


@dataclass(frozen=True)
class QuoteBlock:
    """A batch of quote rows at position ``seq`` of the replay.

    Attributes:
        seq: position of the block in the replay; output order follows it.
        batch: the rows (schema depends on the stage: raw, normalized, ...).
        sources: the input names, indexed by the batch's ``file`` column.
        watermark_us: the watermark its source had reported when it emitted the block (a source
            whose watermark advances between bundles, :func:`transforms.sources.watermarks.interval_pieces`),
            which the window stage routes late quotes by; None: each quote's own
            (:func:`transforms.windows.logic.watermark_after` its arrival).
    """

    seq: int
    batch: pa.RecordBatch
    sources: tuple[str, ...]
    watermark_us: int | None = None

    @property
    def num_rows(self) -> int:
        return self.batch.num_rows


@dataclass(frozen=True)
class TextChunk:
    """Finished lines for one output file, from block ``seq``.

    Attributes:
        seq: the block the lines come from; parts are concatenated in this order.
        data: ``\\n``-terminated lines. When ``keyed``, each line starts with a fixed-width sort
            key and a tab, lines are sorted by it, and the sink merges parts by key and drops it.
        lines: how many lines ``data`` holds.
        tally: (name, count) pairs summed into ``metrics.json`` (e.g. dead letters per reason).
        keyed: see ``data``.
        partition: the sub-directory of the output directory the lines go to (``tenant=<t>`` with
            ``--partition_by_tenant``, see :mod:`transforms.quotes.tenants`); ``""``: the output directory.
    """

    seq: int
    data: bytes
    lines: int
    tally: tuple[tuple[str, int], ...] = ()
    keyed: bool = False
    partition: str = ""


_HEADER = struct.Struct("<qIq")
_NO_WATERMARK = -(2**63)


class QuoteBlockCoder(beam.coders.Coder):
    """Arrow IPC for the batch, with ``seq``, ``sources`` and ``watermark_us`` in a small header."""

    def encode(self, value: QuoteBlock) -> bytes:
        sources = json.dumps(value.sources).encode("utf-8")
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.batch.schema) as writer:
            writer.write_batch(value.batch)
        watermark = _NO_WATERMARK if value.watermark_us is None else value.watermark_us
        return _HEADER.pack(value.seq, len(sources), watermark) + sources + sink.getvalue().to_pybytes()

    def decode(self, encoded: bytes) -> QuoteBlock:
        seq, size, watermark = _HEADER.unpack_from(encoded)
        start = _HEADER.size
        sources = tuple(json.loads(encoded[start : start + size]))
        reader = pa.ipc.open_stream(pa.py_buffer(encoded)[start + size :])
        return QuoteBlock(seq, reader.read_next_batch(), sources, None if watermark == _NO_WATERMARK else watermark)

    def is_deterministic(self) -> bool:
        return True

    def estimate_size(self, value: QuoteBlock) -> int:
        return value.batch.nbytes

    def to_type_hint(self):
        return QuoteBlock


beam.coders.registry.register_coder(QuoteBlock, QuoteBlockCoder)
