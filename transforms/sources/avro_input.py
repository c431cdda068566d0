"""Avro in: files read with a reader schema, and single-object messages (output: :mod:`transforms.sinks.avro_output`).

Beam's ``ReadFromAvro`` reads every file with its own writer schema; a pipeline whose records
must have *one* shape, whatever version wrote them, needs the reader schema too. These read with
fastavro, which applies Avro's resolution rules (defaults, aliases, unions, promotions). This
module holds the reading and decoding; :mod:`transforms.sources.stage` wires it into

* ``ReadAvro(pattern, reader_schema)``: records of every matching container file, each file read
  by one worker (files are spread out with a reshuffle). A file whose writer schema the reader
  cannot resolve fails the run with the checker's reasons (:mod:`schemas.compat`), before any
  record of it is read.
* ``DecodeAvroMessages(reader_schema, writer_schemas, source)``: single-object messages
  (:mod:`schemas.single_object`) -> ``records``, and ``dead_letters`` (``dead_letter`` schema
  dicts with the message in base64 and the reason) for messages that do not decode, e.g. from an
  unknown writer schema.

Avro files of quotes become CSV bytes (:func:`open_avro_quotes`) so the replay reads them as it
reads any other input (:class:`InputOpener`).
"""

from __future__ import annotations

import base64
import csv
import io
import logging
from datetime import datetime, timezone
from decimal import Decimal
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol

import fastavro
from apache_beam.io.filesystems import FileSystems

from schemas import SchemaError, load_schema
from schemas.compat import can_read
from transforms.quotes.rules import latency_text

LOG = logging.getLogger(__name__)
DEAD_LETTERS = "dead_letters"


def read_avro_file(path: str, reader_schema: dict, open_file: Callable = FileSystems.open) -> Iterator[dict]:
    """The records of one Avro container file, resolved to ``reader_schema``; raises SchemaError
    when the file's writer schema cannot be read with it."""
    with open_file(path) as stream:
        yield from _resolved_records(stream, path, reader_schema)


def _resolved_records(stream, path: str, reader_schema: dict) -> Iterator[dict]:
    """A reader over an open container file; checks the writer schema before the first record."""
    try:
        reader = fastavro.reader(stream, reader_schema=reader_schema)
    except Exception as exc:  # not an Avro file, or a broken header  # noqa: BLE001
        raise SchemaError(f"{path}: not a readable Avro container file ({exc})") from None
    problems = can_read(reader_schema, fastavro.parse_schema(reader.writer_schema))
    if problems:
        raise SchemaError(f"{path}: written with a schema the reader schema cannot read: "
                          + "; ".join(map(str, problems)))
    return reader


# --------------------------------------------------------------------------- Avro quotes as replay input

AVRO_SUFFIX = ".avro"
#: The CSV header an Avro quote file is replayed under (the canonical column names).
QUOTE_COLUMNS = ("timestamp", "symbol", "bid_price", "bid_size", "ask_price", "ask_size", "latency_ms", "tenant")


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return str(value)


def quote_row(record: dict) -> list[str]:
    """A ``quote`` record (any version, as resolved) as CSV fields in :data:`QUOTE_COLUMNS` order.

    The timestamp is written to the microsecond (output lines still show milliseconds unless the
    quote has sub-millisecond precision); prices keep their exact decimals; a null is empty (a v1
    record has no tenant: empty, which normalize reads as the default tenant). The latency is the
    exact ``arrival_latency_us`` (v3) as milliseconds (``20.5``) when the record has it, else the
    whole ``arrival_latency_ms`` (older data, or a reader older than v3).
    """
    fields = {name: record.get(name) for name in QUOTE_COLUMNS}
    if record.get("arrival_latency_us") is not None:
        fields["latency_ms"] = latency_text(record["arrival_latency_us"])
    else:
        fields["latency_ms"] = record.get("arrival_latency_ms", record.get("latency_ms"))
    return [_text(fields[name]) for name in QUOTE_COLUMNS]


def quote_csv_chunks(records: Iterable[dict], rows_per_chunk: int = 4096) -> Iterator[bytes]:
    """The header line, then the records as CSV, in chunks of bytes."""
    yield (",".join(QUOTE_COLUMNS) + "\n").encode("utf-8")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    count = 0
    for record in records:
        writer.writerow(quote_row(record))
        count += 1
        if count == rows_per_chunk:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
            count = 0
    if count:
        yield buffer.getvalue().encode("utf-8")


class _ChunkStream(io.RawIOBase):
    """A read-only binary stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes], on_close: Callable[[], None]):
        super().__init__()
        self._chunks = chunks
        self._pending = b""
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        if not self.closed:
            self._on_close()
        super().close()


def open_avro_quotes(path: str, reader_schema: dict, open_file: Callable = FileSystems.open) -> BinaryIO:
    """An Avro quote file, opened as the CSV the historical replay reads (streamed, not loaded).

    So Avro input gets everything a CSV gets: arrival order, the domain rules, dead letters. A
    dead letter's ``line`` is the record's number plus one (the header counts as line 1).
    Raises SchemaError at once if the file cannot be read with ``reader_schema``.
    """
    stream = open_file(path)
    try:
        records = _resolved_records(stream, path, reader_schema)
    except Exception:
        stream.close()
        raise
    return io.BufferedReader(_ChunkStream(quote_csv_chunks(records), stream.close), buffer_size=1 << 16)


class CsvFormats(Protocol):
    """What turns other file formats into quote CSV: the application's normalizer plugins
    (:class:`beam_pipeline.plugins.PluginFormats`). Picklable: it travels to the workers."""

    def to_csv_for(self, path: str) -> Callable[[BinaryIO, str], Iterator[bytes]] | None:
        """The converter of ``path`` (stream, source name -> CSV chunks), or None for a plain file."""


class InputOpener:
    """Opens replay inputs: ``.avro`` files as CSV (with the ``quote`` reader schema of
    ``reader_version``), files one of ``formats`` converts as the CSV it makes of them, anything
    else as it is. Picklable, for the replay's ``open_file``.
    """

    def __init__(self, reader_version: int, formats: CsvFormats | None = None):
        self.reader_version = reader_version
        self.formats = formats

    def __call__(self, path: str) -> BinaryIO:
        if path.endswith(AVRO_SUFFIX):
            return open_avro_quotes(path, load_schema("quote", self.reader_version))
        to_csv = self.formats.to_csv_for(path) if self.formats is not None else None
        if to_csv is not None:
            return open_converted(path, to_csv)
        return FileSystems.open(path)


def open_converted(path: str, to_csv: Callable[[BinaryIO, str], Iterator[bytes]],
                   open_file: Callable = FileSystems.open) -> BinaryIO:
    """A file opened as the CSV ``to_csv(stream, path)`` makes of it, streamed; what the converter
    raises comes out of ``read``."""
    stream = open_file(path)
    chunks = iter(to_csv(stream, path))

    def close() -> None:
        try:
            getattr(chunks, "close", lambda: None)()  # a generator's: its finally blocks run
        finally:
            stream.close()

    return io.BufferedReader(_ChunkStream(chunks, close), buffer_size=1 << 16)


def match_files(pattern: str) -> list[str]:
    """Files matching a path or glob, sorted; ValueError when there is none."""
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not paths:
        raise ValueError(f"{pattern}: no such file")
    return paths


def dead_letter(source: str, index: int, message: bytes, reason: str) -> dict:
    """A ``dead_letter`` record for a message that did not decode (its bytes in base64)."""
    return {"source": source, "line": index, "raw": base64.b64encode(message).decode("ascii"), "reason": reason}


# --------------------------------------------------------------------------- Avro out


