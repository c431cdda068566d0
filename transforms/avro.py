"""Avro in and out: files read with a reader schema, single-object messages, quotes written as Avro.

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
* ``WriteAvroBlocks``: quote blocks as Avro container files (deflate), with the records
  :func:`quote_records` or :func:`mid_price_records` make of them.
"""

from __future__ import annotations

import base64
import logging
from decimal import Decimal
from typing import Callable, Iterable, Iterator, Sequence

import apache_beam as beam
import fastavro
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas import SchemaError
from transforms.midprice import split_by_latency
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


# --------------------------------------------------------------------------- Avro out


def _decimals(unscaled, exponent: int) -> list:
    return [Decimal(int(value)).scaleb(exponent) for value in unscaled]


def quote_records(valid: pa.RecordBatch, scale: int, tenant: str = "default") -> list[dict]:
    """Valid quotes (:data:`transforms.normalize.VALID_SCHEMA`) as ``quote`` v2 records."""
    columns = valid.to_pydict()
    bids = _decimals(columns["bid"], -scale)
    asks = _decimals(columns["ask"], -scale)
    return [
        {
            "timestamp": columns["event_us"][i],
            "symbol": columns["symbol"][i],
            "bid_price": bids[i],
            "bid_size": columns["bid_size"][i],
            "ask_price": asks[i],
            "ask_size": columns["ask_size"][i],
            "arrival_latency_ms": columns["latency"][i],
            "tenant": tenant,
            "venue": None,
        }
        for i in range(valid.num_rows)
    ]


def mid_price_records(valid: pa.RecordBatch, scale: int, latency_threshold_ms: int | None = None) -> list[dict]:
    """``mid_price`` v1 records of the valid quotes that get a mid (those not latency-filtered,
    as in ``mid_prices.log``). The mid has one more decimal place than the prices, so
    ``(bid + ask) / 2`` is exact."""
    filtered = split_by_latency(valid, latency_threshold_ms)
    if filtered.any():
        valid = valid.filter(pa.array(~filtered))
    columns = valid.to_pydict()
    doubled = [bid + ask for bid, ask in zip(columns["bid"], columns["ask"])]
    mids = _decimals([value * 5 for value in doubled], -(scale + 1))
    return [
        {"timestamp": columns["event_us"][i], "symbol": columns["symbol"][i], "mid": mids[i],
         "mode": columns["mode"][i]}
        for i in range(valid.num_rows)
    ]


def check_mid_scale(mid_schema: dict, price_scale: int) -> None:
    """The mid_price schema's decimal must hold a mid of prices with ``price_scale`` exactly."""
    mid = next(f for f in mid_schema["fields"] if f["name"] == "mid")["type"]
    if mid.get("scale") != price_scale + 1:
        raise SchemaError(f"mid_price.mid must have scale {price_scale + 1} for prices of scale {price_scale}, "
                          f"has {mid.get('scale')}")


class _WriteAvroFn(beam.DoFn):
    def __init__(self, directory: str, name: str, schema: dict, to_records: Callable, run_id: str):
        self._directory = directory
        self._name = name
        self._schema = schema
        self._to_records = to_records
        self._run_id = run_id
        self._written = Metrics.counter(self.__class__, f"avro_{name}_written")

    def process(self, block) -> Iterator[str]:
        records = self._to_records(block.batch)
        if not records:
            return
        path = FileSystems.join(self._directory, f"{self._name}-{self._run_id}-{block.seq:06d}.avro")
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
            fastavro.writer(stream, self._schema, records, codec="deflate")
        self._written.inc(len(records))
        yield path


class WriteAvroBlocks(beam.PTransform):
    """Quote blocks -> one Avro container file (deflate) per block: ``<name>-<run id>-<seq>.avro``.

    ``to_records`` turns a block's batch into records of ``schema`` (see :func:`quote_records`).
    Outputs the paths written. Each file is complete on its own, so a live run's files can be
    read while it goes on, and a run never overwrites another's (the run id).
    """

    def __init__(self, directory: str, name: str, schema: dict, to_records: Callable, run_id: str):
        super().__init__()
        self._fn = _WriteAvroFn(directory, name, schema, to_records, run_id)

    def expand(self, blocks):
        return blocks | "WriteAvro" >> beam.ParDo(self._fn)
