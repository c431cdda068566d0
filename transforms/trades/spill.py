"""Range parts spilled to files, so that the shuffle by range carries paths, not rows (no Beam here).

The FnApiRunner (what DirectRunner runs) keeps a ``GroupByKey``'s whole input in memory until the
next stage starts: decoded as it arrives, then encoded once more, all of it, when the next stage
reads it. Sent through it, the range parts of every quote and trade were resident two or three
times over, and the peak grew by about 450 MB per million quotes and trades. Written to a file
where they are made (fused with the range split) and read back by the range that groups them,
only ``(range, (kind, symbol, path))`` goes through the shuffle.

A part's file name is a digest of its content (and of its range, kind and symbol), so a retried
bundle rewrites the same file with the same bytes, and two equal parts share one file: reading a
path twice gives the same rows twice, as the two elements would have. Parts are not deleted by the
range that reads them: a runner that retries a failed bundle (Flink, Dataflow) hands the range the
same paths again, so they stay until the sink deletes the staging folder they live in, when it
publishes. (The shuffle is a barrier anyway: every part is on disk before the first range is read.)
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

#: The folder for the parts, inside the sink's staging folder of the run.
SPILL_FOLDER = "ranges"


def encode_part(rows: pa.RecordBatch) -> bytes:
    """Rows as an Arrow IPC stream (schema included)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_batch(rows)
    return sink.getvalue().to_pybytes()


def decode_part(data: bytes) -> pa.RecordBatch:
    """The rows of :func:`encode_part` (one batch; an empty stream is not a part)."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_next_batch()


def part_name(r: int, kind: int, symbol: str, data: bytes) -> str:
    """The file name of a part: its range, kind and a digest of its symbol and bytes."""
    digest = hashlib.blake2b(symbol.encode("utf-8") + b"\0", digest_size=16)
    digest.update(data)
    return f"{r:010d}-{kind}-{digest.hexdigest()}.arrow"


def write_part(directory: str, r: int, kind: int, symbol: str, rows: pa.RecordBatch) -> str:
    """Write one part of range ``r`` into ``directory`` (which must exist); its path."""
    data = encode_part(rows)
    path = FileSystems.join(directory, part_name(r, kind, symbol, data))
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        stream.write(data)
    return path


def read_part(path: str) -> pa.RecordBatch:
    """The rows :func:`write_part` wrote to ``path``."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        return decode_part(stream.read())


def ensure_folder(directory: str) -> None:
    """Create ``directory`` unless it exists (several workers may race: losing is fine)."""
    if not FileSystems.exists(directory):
        try:
            FileSystems.mkdirs(directory)
        except OSError:  # another worker made it first (Beam raises IOError, an OSError)
            if not FileSystems.exists(directory):
                raise
