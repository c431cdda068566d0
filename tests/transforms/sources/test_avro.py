"""Avro in: container files read with a reader schema (written by the Apache ``avro`` library and
by fastavro), ReadAvro over a glob of mixed versions, and DecodeAvroMessages with dead letters."""

from __future__ import annotations

import base64
import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import apache_beam as beam
import avro.datafile
import avro.io
import avro.schema
import fastavro
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from runners import make_runner
from schemas import SchemaError, load_schema, schema_path
from transforms.sources.avro_input import DEAD_LETTERS, read_avro_file
from transforms.sources.stage import DecodeAvroMessages, ReadAvro

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MARKER = b"\xc3\x01"


def at(seconds: float) -> datetime:
    return datetime(2024, 1, 2, tzinfo=timezone.utc) + timedelta(seconds=seconds)


def v1_quote(symbol: str, seconds: float, bid: str, ask: str, latency: int | None, bid_size=None) -> dict:
    return {"timestamp": at(seconds), "symbol": symbol, "bid_price": Decimal(bid), "bid_size": bid_size,
            "ask_price": Decimal(ask), "ask_size": 3.5, "latency_ms": latency}


def v2_quote(symbol: str, seconds: float, bid: str, ask: str, latency: int | None, tenant: str,
             venue: str | None) -> dict:
    return {"timestamp": at(seconds), "symbol": symbol, "bid_price": Decimal(bid), "bid_size": 10.0,
            "ask_price": Decimal(ask), "ask_size": None, "arrival_latency_ms": latency, "tenant": tenant,
            "venue": venue}


def as_v2(v1: dict) -> dict:
    """What the v2 reader should make of v1 data: the rename followed, the new fields defaulted."""
    out = {k: v for k, v in v1.items() if k != "latency_ms"}
    out.update(arrival_latency_ms=v1["latency_ms"], tenant="default", venue=None)
    return out


def as_v1(v2: dict) -> dict:
    """What the v1 reader should make of v2 data: it does not know the new name, so the default."""
    out = {k: v for k, v in v2.items() if k not in ("arrival_latency_ms", "tenant", "venue")}
    out["latency_ms"] = None
    return out


V1_RECORDS = [
    v1_quote("EURUSD", 0, "1.10000001", "1.10000123", 12, bid_size=1e6),
    v1_quote("EURUSD", 0.25, "1.10000002", "1.10000100", None),
    v1_quote("USDJPY", 1, "141.12345678", "141.12400000", 3),
]
V1_MORE = [v1_quote("AUDUSD", 2, "0.65000000", "0.65000010", 40)]
V2_RECORDS = [
    v2_quote("GBPUSD", 3, "1.27000000", "1.27000009", 7, "acme", "XLON"),
    v2_quote("GBPUSD", 4, "-0.00000001", "0.00000001", None, "default", None),
]


def quote_json(version: int) -> dict:
    return json.loads(schema_path("quote", version).read_text())


def write_with_avro_library(path, records, version=1, codec="deflate"):
    schema = avro.schema.parse(json.dumps(quote_json(version)))
    with open(path, "wb") as stream:
        writer = avro.datafile.DataFileWriter(stream, avro.io.DatumWriter(), schema, codec=codec)
        for record in records:
            writer.append(record)
        writer.close()
    return path


def write_with_fastavro(path, records, schema):
    with open(path, "wb") as stream:
        fastavro.writer(stream, schema, records)
    return path


def key(record: dict):
    return record["symbol"], record["timestamp"]


def sorted_equal_to(expected: list[dict]):
    """A matcher for assert_that: the same records, compared as lists sorted by (symbol, timestamp)."""
    want = sorted(expected, key=key)

    def check(actual):
        got = sorted(actual, key=key)
        if got != want:
            raise BeamAssertException(f"got {got}, want {want}")

    return check


def pipeline() -> beam.Pipeline:
    return beam.Pipeline(runner=make_runner(PipelineOptions([])))


# --------------------------------------------------------------------------- read_avro_file


def test_a_deflate_file_from_the_avro_library_read_with_v2(tmp_path):
    path = write_with_avro_library(tmp_path / "v1.avro", V1_RECORDS)
    with open(path, "rb") as stream:  # the file really is what the test says
        header = avro.datafile.DataFileReader(stream, avro.io.DatumReader())
        assert header.get_meta("avro.codec") == b"deflate"
        header.close()
    read = list(read_avro_file(str(path), load_schema("quote", 2)))
    assert read == [as_v2(r) for r in V1_RECORDS]
    assert read[0]["arrival_latency_ms"] == 12 and read[0]["tenant"] == "default" and read[0]["venue"] is None
    assert read[2]["bid_price"] == Decimal("141.12345678")


def test_a_file_from_the_avro_library_read_with_its_own_schema(tmp_path):
    path = write_with_avro_library(tmp_path / "v1.avro", V1_RECORDS, codec="null")
    assert list(read_avro_file(str(path), load_schema("quote", 1))) == V1_RECORDS


def test_a_fastavro_v2_file_read_with_v1(tmp_path):
    path = write_with_fastavro(tmp_path / "v2.avro", V2_RECORDS, load_schema("quote", 2))
    read = list(read_avro_file(str(path), load_schema("quote", 1), open_file=lambda p: open(p, "rb")))
    assert read == [as_v1(r) for r in V2_RECORDS]
    assert all(set(r) == {f["name"] for f in quote_json(1)["fields"]} for r in read)


def test_the_avro_library_reads_what_it_wrote(tmp_path):
    """Sanity check of the independent side, so the expectations above rest on a working writer."""
    path = write_with_avro_library(tmp_path / "v1.avro", V1_RECORDS)
    with open(path, "rb") as stream:
        reader = avro.datafile.DataFileReader(stream, avro.io.DatumReader())
        assert list(reader) == V1_RECORDS
        reader.close()


def test_an_incompatible_writer_schema_is_a_schema_error_with_the_field_path(tmp_path):
    writer = fastavro.parse_schema({"type": "record", "name": "R", "namespace": "t",
                                    "fields": [{"name": "a", "type": "string"}]})
    reader = fastavro.parse_schema({"type": "record", "name": "R", "namespace": "t",
                                    "fields": [{"name": "a", "type": "long"}]})
    path = write_with_fastavro(tmp_path / "bad.avro", [{"a": "1"}], writer)
    records = read_avro_file(str(path), reader)
    with pytest.raises(SchemaError, match=r"R\.a: type changed from string to long") as info:
        next(records)  # refused before the first record
    assert str(path) in str(info.value)


def test_a_quote_file_missing_a_required_field_is_refused(tmp_path):
    fields = [f for f in quote_json(1)["fields"] if f["name"] != "ask_price"]
    writer = fastavro.parse_schema({**quote_json(1), "fields": fields})
    record = {k: v for k, v in V1_RECORDS[0].items() if k != "ask_price"}
    path = write_with_fastavro(tmp_path / "old.avro", [record], writer)
    with pytest.raises(SchemaError, match=r"Quote\.ask_price: .*without a default"):
        list(read_avro_file(str(path), load_schema("quote", 2)))


# --------------------------------------------------------------------------- ReadAvro (2 Beam runs)


def test_read_avro_over_a_glob_of_mixed_versions(tmp_path):
    write_with_avro_library(tmp_path / "a.avro", V1_RECORDS)
    write_with_fastavro(tmp_path / "b.avro", V1_MORE, load_schema("quote", 1))
    write_with_fastavro(tmp_path / "c.avro", V2_RECORDS, load_schema("quote", 2))
    write_with_fastavro(tmp_path / "d.avro", [], load_schema("quote", 2))  # an empty file adds nothing
    (tmp_path / "notes.txt").write_text("not avro, not matched")
    pattern = str(tmp_path / "*.avro")
    with pipeline() as p:
        as_2 = p | "ReadV2" >> ReadAvro(pattern, load_schema("quote", 2))
        as_1 = p | "ReadV1" >> ReadAvro(pattern, load_schema("quote", 1))
        assert_that(as_2, sorted_equal_to([as_v2(r) for r in V1_RECORDS + V1_MORE] + V2_RECORDS), label="v2")
        assert_that(as_1, sorted_equal_to(V1_RECORDS + V1_MORE + [as_v1(r) for r in V2_RECORDS]), label="v1")


def test_read_avro_pattern_matching_nothing_fails_the_run(tmp_path):
    pattern = str(tmp_path / "missing" / "*.avro")
    with pytest.raises(Exception, match="no such file") as info:
        with pipeline() as p:
            p | ReadAvro(pattern, load_schema("quote", 2))
    assert pattern in str(info.value)


# --------------------------------------------------------------------------- DecodeAvroMessages (1 Beam run)


def single_object(version: int, datum: dict) -> bytes:
    """A message built only with the ``avro`` library (logical types stripped for the fingerprint:
    the Parsing Canonical Form drops them; the library's own canonical form does not)."""
    schema_json = quote_json(version)
    stripped = json.loads(json.dumps(schema_json), object_hook=lambda d: d["type"] if "logicalType" in d else d)
    payload = io.BytesIO()
    avro.io.DatumWriter(avro.schema.parse(json.dumps(schema_json))).write(datum, avro.io.BinaryEncoder(payload))
    return MARKER + avro.schema.parse(json.dumps(stripped)).fingerprint("CRC-64-AVRO") + payload.getvalue()


def test_decode_avro_messages_splits_records_and_dead_letters():
    unknown = MARKER + b"\x01\x02\x03\x04\x05\x06\x07\x08" + b"\x00"
    good_v2 = single_object(2, V2_RECORDS[0])
    messages = [
        (10, single_object(1, V1_RECORDS[0])),
        (11, good_v2),
        (12, unknown),
        (13, b"garbage, not avro"),
        (14, single_object(1, V1_RECORDS[2])),
        (15, good_v2[:-2]),  # truncated inside the venue the v2 reader reads
        (16, b""),
    ]
    good = [as_v2(V1_RECORDS[0]), V2_RECORDS[0], as_v2(V1_RECORDS[2])]
    bad = {12: "unknown_schema", 13: "not_single_object", 15: "bad_avro", 16: "not_single_object"}
    expected_dead = [("feed", i, base64.b64encode(m).decode("ascii"), bad[i]) for i, m in messages if i in bad]
    dead_letter_schema = load_schema("dead_letter", 1)

    def shape(dead: dict):
        assert set(dead) == {"source", "line", "raw", "reason"}
        assert fastavro.validation.validate(dead, dead_letter_schema)
        code, sep, detail = dead["reason"].partition(": ")
        assert sep and detail, dead["reason"]
        return dead["source"], dead["line"], dead["raw"], code

    p = pipeline()
    out = (p | beam.Create(messages) | DecodeAvroMessages(load_schema("quote", 2), [load_schema("quote", 1),
                                                                                     load_schema("quote", 2)], "feed"))
    assert_that(out.records, sorted_equal_to(good), label="records")
    assert_that(out[DEAD_LETTERS] | beam.Map(shape), equal_to(expected_dead), label="dead")
    assert_that((out.records, out.dead_letters) | beam.Flatten() | beam.combiners.Count.Globally(),
                equal_to([len(messages)]), label="balance")
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("dead_lettered"))["counters"]
    assert sum(c.committed for c in counters) == len(bad)
    assert len(good) + len(bad) == len(messages)


def test_decode_avro_messages_refuses_an_unreadable_writer_at_construction():
    incompatible = fastavro.parse_schema({**quote_json(1), "fields": [
        {"name": "timestamp", "type": "string"}, *quote_json(1)["fields"][1:]]})
    with pytest.raises(ValueError, match="Quote.timestamp"):
        DecodeAvroMessages(load_schema("quote", 1), [load_schema("quote", 2), incompatible], "feed")


def v3_quote(seconds: float, latency_us: int | None) -> dict:
    whole_ms = None if latency_us is None else -(-latency_us // 1000)
    return {**v2_quote("X", seconds, "1.00000000", "2.00000000", whole_ms, "default", None),
            "arrival_latency_us": latency_us}


def test_v3_keeps_the_exact_latency_and_older_readers_get_it_rounded_up(tmp_path):
    from transforms.sources.avro_input import QUOTE_COLUMNS, quote_row

    records = [v3_quote(1, 20_500), v3_quote(2, 20_000), v3_quote(3, 1), v3_quote(4, None)]
    path = write_with_fastavro(tmp_path / "v3.avro", records, load_schema("quote", 3))
    as_v3 = list(read_avro_file(str(path), load_schema("quote", 3), open_file=lambda p: open(p, "rb")))
    latency = QUOTE_COLUMNS.index("latency_ms")
    assert [quote_row(r)[latency] for r in as_v3] == ["20.5", "20", "0.001", ""]
    # A v2 reader sees whole milliseconds, rounded up: 20.5 > 20 stays true for whole thresholds.
    as_v2 = list(read_avro_file(str(path), load_schema("quote", 2), open_file=lambda p: open(p, "rb")))
    assert [quote_row(r)[latency] for r in as_v2] == ["21", "20", "1", ""]


def test_v2_data_read_with_v3_has_no_exact_latency_and_uses_the_milliseconds(tmp_path):
    from transforms.sources.avro_input import QUOTE_COLUMNS, quote_row

    path = write_with_fastavro(tmp_path / "v2.avro", V2_RECORDS, load_schema("quote", 2))
    read = list(read_avro_file(str(path), load_schema("quote", 3), open_file=lambda p: open(p, "rb")))
    assert all(r["arrival_latency_us"] is None for r in read)
    assert [quote_row(r)[QUOTE_COLUMNS.index("latency_ms")] for r in read] == [
        "" if r["arrival_latency_ms"] is None else str(r["arrival_latency_ms"]) for r in V2_RECORDS]
