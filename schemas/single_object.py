"""Avro single-object encoding: one message = marker, writer fingerprint, binary datum.

    C3 01 | CRC-64-AVRO fingerprint of the writer schema, 8 bytes little-endian | Avro binary

A consumer looks the fingerprint up among the writer schemas it knows and resolves the datum to
its own reader schema, so producers can move to a new schema version without telling anyone.
:func:`decode` raises :class:`DecodeError` with a reason (not a crash deep in fastavro) for a
message that is too short, lacks the marker, names an unknown schema, or does not resolve.
"""

from __future__ import annotations

import io
import struct
from typing import Any, Iterable, Mapping

import fastavro

from schemas import fingerprint
from schemas.compat import can_read

MARKER = b"\xc3\x01"
_HEADER = struct.Struct("<2sQ")


class DecodeError(ValueError):
    """A message that cannot be decoded; ``reason`` starts with a stable code."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.reason = f"{code}: {detail}"


def single_object_header(schema: dict) -> bytes:
    """The 10 bytes every message written with ``schema`` starts with: marker, then fingerprint."""
    return _HEADER.pack(MARKER, fingerprint(schema))


class SingleObjectEncoder:
    """Encodes data with one writer ``schema``: the header and the parsed schema are worked out
    once (per message that is ~12 µs instead of ~380 µs)."""

    def __init__(self, schema: dict):
        self._header = single_object_header(schema)
        self._parsed = fastavro.parse_schema(schema)

    def encode(self, datum: Mapping[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._header)
        fastavro.schemaless_writer(buffer, self._parsed, datum)
        return buffer.getvalue()


def encode(datum: Mapping[str, Any], schema: dict) -> bytes:
    """``datum`` as a single-object message written with ``schema`` (for many messages, keep a
    :class:`SingleObjectEncoder`)."""
    return SingleObjectEncoder(schema).encode(datum)


class SingleObjectDecoder:
    """Decode messages written with any of ``writer_schemas`` into ``reader_schema``.

    Writers the reader cannot resolve are refused here, with the checker's reasons, rather than
    at the first message.
    """

    def __init__(self, reader_schema: dict, writer_schemas: Iterable[dict]):
        self.reader_schema = reader_schema
        self.writers: dict[int, dict] = {}
        for writer in writer_schemas:
            problems = can_read(reader_schema, writer)
            if problems:
                raise ValueError(
                    f"the reader schema cannot read {writer.get('name')}: " + "; ".join(map(str, problems))
                )
            self.writers[fingerprint(writer)] = fastavro.parse_schema(writer)
        self._reader_fingerprint = fingerprint(reader_schema)
        self._parsed_reader = fastavro.parse_schema(reader_schema)

    def decode(self, message: bytes) -> dict:
        if len(message) < _HEADER.size:
            raise DecodeError("not_single_object", f"{len(message)} bytes is shorter than the 10-byte header")
        marker, writer_fingerprint = _HEADER.unpack_from(message)
        if marker != MARKER:
            raise DecodeError("not_single_object", f"starts with {marker.hex()}, not the marker c301")
        writer = self.writers.get(writer_fingerprint)
        if writer is None:
            raise DecodeError("unknown_schema", f"no known writer schema has fingerprint {writer_fingerprint:016x}")
        payload = message[_HEADER.size:]
        try:
            # First in the writer's own shape, which reads every byte: resolving to the reader
            # alone would skip writer-only fields without checking they are all there. When the
            # writer is the reader, that one read is the datum.
            stream = io.BytesIO(payload)
            datum = fastavro.schemaless_reader(stream, writer, None)  # raises EOFError when cut short
            if stream.read(1):
                raise DecodeError("bad_avro", "bytes left over after the datum")
            if writer_fingerprint == self._reader_fingerprint:
                return datum
            return fastavro.schemaless_reader(io.BytesIO(payload), writer, self._parsed_reader)
        except DecodeError:
            raise
        except Exception as exc:  # truncated or corrupt payloads fail in many ways inside fastavro  # noqa: BLE001
            raise DecodeError("bad_avro", f"the payload does not decode ({type(exc).__name__}: {exc})") from None
