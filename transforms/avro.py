"""Avro in: container files read with a reader schema, and single-object messages decoded.

Beam's ``ReadFromAvro`` reads every file with its own writer schema; a pipeline whose records
must have *one* shape, whatever version wrote them, needs the reader schema too. These read with
fastavro, which applies Avro's resolution rules (defaults, aliases, unions, promotions):

* ``ReadAvro(pattern, reader_schema)``: records of every matching container file, each file read
  by one worker (files are spread out with a reshuffle). A file whose writer schema the reader
  cannot resolve fails the run with the checker's reasons (:mod:`schemas.compat`), before any
  record of it is read.
* ``DecodeAvroMessages(reader_schema, writer_schemas, source)``: single-object messages
  (:mod:`schemas.single_object`) -> ``records``, and ``dead_letters`` (``dead_letter`` schema
  dicts with the message in base64 and the reason) for messages that do not decode, e.g. from an
  unknown writer schema.
"""

from __future__ import annotations

import base64
import logging
from typing import Callable, Iterable, Iterator, Sequence

import apache_beam as beam
import fastavro
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas import SchemaError
from schemas.compat import can_read
from schemas.single_object import DecodeError, SingleObjectDecoder

LOG = logging.getLogger(__name__)
DEAD_LETTERS = "dead_letters"


def read_avro_file(path: str, reader_schema: dict, open_file: Callable = FileSystems.open) -> Iterator[dict]:
    """The records of one Avro container file, resolved to ``reader_schema``; raises SchemaError
    when the file's writer schema cannot be read with it."""
    with open_file(path) as stream:
        reader = fastavro.reader(stream, reader_schema=reader_schema)
        writer_schema = fastavro.parse_schema(reader.writer_schema)
        problems = can_read(reader_schema, writer_schema)
        if problems:
            raise SchemaError(f"{path}: written with a schema the reader schema cannot read: "
                              + "; ".join(map(str, problems)))
        yield from reader


def match_files(pattern: str) -> list[str]:
    """Files matching a path or glob, sorted; ValueError when there is none."""
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not paths:
        raise ValueError(f"{pattern}: no such file")
    return paths


class _ReadFileFn(beam.DoFn):
    def __init__(self, reader_schema: dict):
        self._reader_schema = reader_schema
        self._records = Metrics.counter(self.__class__, "avro_records_in")

    def process(self, path: str) -> Iterator[dict]:
        count = 0
        for record in read_avro_file(path, self._reader_schema):
            count += 1
            yield record
        self._records.inc(count)
        LOG.info("read %s records from %s", count, path)


class ReadAvro(beam.PTransform):
    """Records of the Avro files matching ``pattern``, every one in ``reader_schema``'s shape."""

    def __init__(self, pattern: str, reader_schema: dict):
        super().__init__()
        self._pattern = pattern
        self._reader_schema = reader_schema

    def expand(self, pbegin):
        return (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])
            | "MatchFiles" >> beam.FlatMap(match_files)
            | "OneFilePerWorker" >> beam.Reshuffle()
            | "ReadFile" >> beam.ParDo(_ReadFileFn(self._reader_schema))
        )


def dead_letter(source: str, index: int, message: bytes, reason: str) -> dict:
    """A ``dead_letter`` record for a message that did not decode (its bytes in base64)."""
    return {"source": source, "line": index, "raw": base64.b64encode(message).decode("ascii"), "reason": reason}


class _DecodeFn(beam.DoFn):
    def __init__(self, reader_schema: dict, writer_schemas: Sequence[dict], source: str):
        self._reader_schema = reader_schema
        self._writer_schemas = tuple(writer_schemas)
        self._source = source
        self._decoder = None
        self._dead = Metrics.counter(self.__class__, "dead_lettered")

    def setup(self):
        self._decoder = SingleObjectDecoder(self._reader_schema, self._writer_schemas)

    def process(self, element: tuple[int, bytes]) -> Iterator[dict | beam.pvalue.TaggedOutput]:
        index, message = element
        try:
            yield self._decoder.decode(message)
        except DecodeError as exc:
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(self._source, index, message, exc.reason))


class DecodeAvroMessages(beam.PTransform):
    """``(index, message bytes)`` -> ``records`` and ``dead_letters`` (see the module docstring).

    ``index`` is where the message sits in its source (a queue offset, a frame's seq), reported
    as the dead letter's ``line``.
    """

    def __init__(self, reader_schema: dict, writer_schemas: Iterable[dict], source: str):
        super().__init__()
        self._reader_schema = reader_schema
        self._writer_schemas = tuple(writer_schemas)
        self._source = source
        SingleObjectDecoder(reader_schema, self._writer_schemas)  # refuse unreadable writers now

    def expand(self, messages):
        return messages | "Decode" >> beam.ParDo(
            _DecodeFn(self._reader_schema, self._writer_schemas, self._source)
        ).with_outputs(DEAD_LETTERS, main="records")
