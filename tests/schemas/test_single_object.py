"""Avro single-object encoding: the bytes checked against the Apache ``avro`` library (an
independent implementation), round trips between quote versions, and every DecodeError reason."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import avro.io
import avro.schema
import fastavro
import pytest

from schemas import fingerprint, load_schema, schema_path
from schemas.single_object import DecodeError, SingleObjectDecoder, encode

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MARKER = bytes([0xC3, 0x01])  # the specification's single-object marker

SIMPLE = {
    "type": "record", "name": "Simple", "namespace": "t",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "score", "type": "double"},
        {"name": "ok", "type": "boolean"},
        {"name": "raw", "type": "bytes"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}
SIMPLE_DATUM = {"id": -1234567890123, "name": "héllo", "score": 2.5, "ok": True, "raw": b"\x00\xff\x10",
                "tags": ["a", "bc", ""], "note": "n"}

TS_MICROS = 1_704_164_645_678_901  # 2024-01-02T03:04:05.678901Z
TS = EPOCH + timedelta(microseconds=TS_MICROS)

V1_DATUM = {"timestamp": TS, "symbol": "EURUSD", "bid_price": Decimal("1.10000001"), "bid_size": None,
            "ask_price": Decimal("1.10000123"), "ask_size": 2.5, "latency_ms": 12}
V2_DATUM = {"timestamp": TS + timedelta(seconds=1), "symbol": "GBPUSD", "bid_price": Decimal("1.27000000"),
            "bid_size": 1_000_000.0, "ask_price": Decimal("1.27000009"), "ask_size": None,
            "arrival_latency_ms": 7, "tenant": "acme", "venue": "XLON"}


# --------------------------------------------------------------------------- the independent side


def avro_payload(schema_json: dict, datum: dict) -> bytes:
    """The Avro binary encoding of ``datum`` by the Apache ``avro`` library."""
    buffer = io.BytesIO()
    avro.io.DatumWriter(avro.schema.parse(json.dumps(schema_json))).write(datum, avro.io.BinaryEncoder(buffer))
    return buffer.getvalue()


def avro_read(schema_json: dict, payload: bytes) -> dict:
    return avro.io.DatumReader(avro.schema.parse(json.dumps(schema_json))).read(
        avro.io.BinaryDecoder(io.BytesIO(payload)))


def without_logical_types(node):
    """The schema with logical types reduced to their underlying type. The Parsing Canonical Form
    drops those attributes, so the fingerprint is the same; the ``avro`` library's own canonical
    form keeps ``{"type": "long"}`` for them, so it is given the stripped schema."""
    if isinstance(node, list):
        return [without_logical_types(n) for n in node]
    if isinstance(node, dict):
        if "logicalType" in node:
            return node["type"]
        return {k: without_logical_types(v) for k, v in node.items()}
    return node


def avro_fingerprint(schema_json: dict) -> bytes:
    """CRC-64-AVRO of the schema, by the ``avro`` library, in single-object (little-endian) order."""
    return avro.schema.parse(json.dumps(without_logical_types(schema_json))).fingerprint("CRC-64-AVRO")


def quote_json(version: int) -> dict:
    return json.loads(schema_path("quote", version).read_text())


def by_hand(schema_json: dict, datum: dict) -> bytes:
    """A single-object message built only with the ``avro`` library."""
    return MARKER + avro_fingerprint(schema_json) + avro_payload(schema_json, datum)


@pytest.fixture(scope="module")
def v1():
    return load_schema("quote", 1)


@pytest.fixture(scope="module")
def v2():
    return load_schema("quote", 2)


def reason_of(decoder: SingleObjectDecoder, message: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decoder.decode(message)
    assert str(info.value) == info.value.reason
    return info.value.reason


# --------------------------------------------------------------------------- encode


def test_the_avro_library_agrees_with_the_spec_test_vector():
    """Sanity check of the independent side: the specification's fingerprint of "null"."""
    assert avro.schema.parse('"null"').fingerprint("CRC-64-AVRO") == (0x63DD24E7CC258F8A).to_bytes(8, "little")


def test_encode_a_simple_record_is_marker_fingerprint_then_the_avro_binary():
    message = encode(SIMPLE_DATUM, fastavro.parse_schema(SIMPLE))
    assert message[:2] == b"\xc3\x01"
    assert message[2:10] == fingerprint(fastavro.parse_schema(SIMPLE)).to_bytes(8, "little")
    assert message[2:10] == avro_fingerprint(SIMPLE)
    assert message[10:] == avro_payload(SIMPLE, SIMPLE_DATUM)
    assert message == by_hand(SIMPLE, SIMPLE_DATUM)


@pytest.mark.parametrize("timestamp", [TS, TS_MICROS], ids=["datetime", "int-micros"])
def test_encode_a_v1_quote_matches_the_avro_library(v1, timestamp):
    """Decimals with 8 places and a timestamp-micros given as an aware datetime or as an int (the
    ``avro`` library only takes a datetime, so it always gets the equivalent datetime)."""
    message = encode({**V1_DATUM, "timestamp": timestamp}, v1)
    assert message[:2] == MARKER
    assert message[2:10] == fingerprint(v1).to_bytes(8, "little") == avro_fingerprint(quote_json(1))
    assert message[10:] == avro_payload(quote_json(1), V1_DATUM)
    assert len(message) == 10 + len(avro_payload(quote_json(1), V1_DATUM))


def test_encode_a_v2_quote_matches_the_avro_library(v2):
    assert encode(V2_DATUM, v2) == by_hand(quote_json(2), V2_DATUM)


def test_the_avro_library_reads_back_the_encoded_payload(v1):
    read = avro_read(quote_json(1), encode(V1_DATUM, v1)[10:])
    assert read == V1_DATUM  # aware datetimes compare by instant, whatever the tzinfo object


def test_different_versions_have_different_fingerprints(v1, v2):
    assert encode(V1_DATUM, v1)[2:10] != encode(V2_DATUM, v2)[2:10]


# --------------------------------------------------------------------------- round trips


def test_round_trip_v1_to_v1(v1):
    decoded = SingleObjectDecoder(v1, [v1]).decode(encode(V1_DATUM, v1))
    assert decoded == V1_DATUM
    assert decoded["timestamp"] == TS and decoded["timestamp"].utcoffset() == timedelta(0)
    assert isinstance(decoded["bid_price"], Decimal) and decoded["bid_price"] == Decimal("1.10000001")


def test_round_trip_int_timestamp_comes_back_as_the_same_instant(v1):
    decoded = SingleObjectDecoder(v1, [v1]).decode(encode({**V1_DATUM, "timestamp": TS_MICROS}, v1))
    assert decoded["timestamp"] == TS


def test_round_trip_v2_to_v2(v2):
    assert SingleObjectDecoder(v2, [v2]).decode(encode(V2_DATUM, v2)) == V2_DATUM


def test_v1_message_read_with_v2_gets_defaults_and_the_renamed_field(v1, v2):
    decoded = SingleObjectDecoder(v2, [v1, v2]).decode(encode(V1_DATUM, v1))
    expected = {k: v for k, v in V1_DATUM.items() if k != "latency_ms"}
    expected.update(arrival_latency_ms=12, tenant="default", venue=None)
    assert decoded == expected
    assert list(decoded) == [f["name"] for f in quote_json(2)["fields"]]


def test_v2_message_read_with_v1_loses_the_renamed_field_and_the_new_ones(v1, v2):
    """Aliases work from the reader's side only: a v1 reader does not know arrival_latency_ms."""
    decoded = SingleObjectDecoder(v1, [v1, v2]).decode(encode(V2_DATUM, v2))
    expected = {k: v for k, v in V2_DATUM.items() if k not in ("arrival_latency_ms", "tenant", "venue")}
    expected["latency_ms"] = None
    assert decoded == expected
    assert list(decoded) == [f["name"] for f in quote_json(1)["fields"]]


def test_the_decoder_picks_the_writer_by_fingerprint(v1, v2):
    decoder = SingleObjectDecoder(v2, [v1, v2])
    assert decoder.decode(encode(V2_DATUM, v2)) == V2_DATUM
    assert decoder.decode(encode(V1_DATUM, v1))["tenant"] == "default"


# --------------------------------------------------------------------------- messages made by the avro library


@pytest.mark.parametrize("version, datum", [(1, V1_DATUM), (2, V2_DATUM)], ids=["v1", "v2"])
def test_messages_built_with_the_avro_library_decode(v1, v2, version, datum):
    message = by_hand(quote_json(version), datum)
    same = SingleObjectDecoder(load_schema("quote", version), [v1, v2]).decode(message)
    assert same == datum
    to_v2 = SingleObjectDecoder(v2, [v1, v2]).decode(message)
    assert to_v2["symbol"] == datum["symbol"] and to_v2["ask_price"] == datum["ask_price"]
    assert to_v2["arrival_latency_ms"] == datum.get("latency_ms", datum.get("arrival_latency_ms"))


def test_a_simple_message_built_with_the_avro_library_decodes():
    schema = fastavro.parse_schema(SIMPLE)
    assert SingleObjectDecoder(schema, [schema]).decode(by_hand(SIMPLE, SIMPLE_DATUM)) == SIMPLE_DATUM


# --------------------------------------------------------------------------- DecodeError reasons


@pytest.fixture(scope="module")
def decoder(v1, v2):
    return SingleObjectDecoder(v2, [v1, v2])


@pytest.mark.parametrize("message", [b"", b"\xc3", b"\xc3\x01", MARKER + b"\x00" * 7],
                         ids=["empty", "one-byte", "marker-only", "nine-bytes"])
def test_shorter_than_the_header_is_not_single_object(decoder, message):
    reason = reason_of(decoder, message)
    assert reason.startswith("not_single_object: ")
    assert f"{len(message)} bytes" in reason


def test_wrong_marker_is_not_single_object(decoder, v1):
    good = encode(V1_DATUM, v1)
    for marker in (b"\xc3\x02", b"\x01\xc3", b"Ob"):
        reason = reason_of(decoder, marker + good[2:])
        assert reason.startswith("not_single_object: ")
        assert marker.hex() in reason


def test_a_container_file_or_text_is_not_single_object(decoder):
    assert reason_of(decoder, b"Obj\x01" + b"\x00" * 20).startswith("not_single_object: ")
    assert reason_of(decoder, b'{"symbol": "EURUSD"}').startswith("not_single_object: ")


def test_unknown_fingerprint_is_unknown_schema(decoder):
    message = by_hand(SIMPLE, SIMPLE_DATUM)
    reason = reason_of(decoder, message)
    assert reason.startswith("unknown_schema: ")
    assert f"{int.from_bytes(avro_fingerprint(SIMPLE), 'little'):016x}" in reason


def test_only_the_given_writers_are_known(v1, v2):
    """The reader schema is not implicitly a writer: v1 data is unknown to a v2-only decoder."""
    assert reason_of(SingleObjectDecoder(v2, [v2]), encode(V1_DATUM, v1)).startswith("unknown_schema: ")


@pytest.mark.parametrize("version, datum", [(1, V1_DATUM), (2, V2_DATUM)], ids=["v1", "v2"])
def test_every_truncation_of_the_payload_is_bad_avro(decoder, version, datum):
    message = encode(datum, load_schema("quote", version))
    for cut in range(10, len(message)):
        assert reason_of(decoder, message[:cut]).startswith("bad_avro: "), cut


def test_trailing_bytes_are_bad_avro(decoder, v1):
    for extra in (b"\x00", b"\x02\x04junk"):
        reason = reason_of(decoder, encode(V1_DATUM, v1) + extra)
        assert reason.startswith("bad_avro: ") and "left over" in reason


def test_a_corrupt_union_index_is_bad_avro():
    schema_json = {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["null", "long"]}]}
    schema = fastavro.parse_schema(schema_json)
    message = MARKER + avro_fingerprint(schema_json) + b"\x08"  # branch 4 of a 2-branch union
    assert reason_of(SingleObjectDecoder(schema, [schema]), message).startswith("bad_avro: ")


def test_decode_error_is_a_value_error():
    assert issubclass(DecodeError, ValueError)


def test_truncation_inside_a_skipped_field_is_bad_avro(v1, v2):
    message = encode(V2_DATUM, v2)
    # The payload ends with venue: union index 2, length 8 (zigzag of 4), then b"XLON".
    assert message.endswith(b"\x02\x08XLON")
    decoder = SingleObjectDecoder(v1, [v1, v2])
    for cut in range(1, 5):  # drop 1..4 bytes of "XLON"
        with pytest.raises(DecodeError, match="^bad_avro: "):
            decoder.decode(message[:-cut])


# --------------------------------------------------------------------------- unreadable writers


def test_the_decoder_refuses_a_writer_the_reader_cannot_read(v1):
    incompatible = fastavro.parse_schema({
        "type": "record", "name": "Quote", "namespace": "beam_pipeline.quotes",
        "fields": [{"name": "timestamp", "type": "string"}, *quote_json(1)["fields"][1:]],
    })
    with pytest.raises(ValueError, match="Quote.timestamp") as info:
        SingleObjectDecoder(v1, [v1, incompatible])
    assert "cannot promote" in str(info.value)
    assert not isinstance(info.value, DecodeError)


def test_the_decoder_refuses_a_writer_missing_a_required_field():
    reader = fastavro.parse_schema({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "long"}, {"name": "b", "type": "string"}]})
    writer = fastavro.parse_schema({"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]})
    with pytest.raises(ValueError, match=r"R\.b: .*without a default"):
        SingleObjectDecoder(reader, [writer])


def test_the_decoder_refuses_a_writer_record_of_another_name(v1):
    other = fastavro.parse_schema({**quote_json(1), "name": "Trade"})
    with pytest.raises(ValueError, match="Trade"):
        SingleObjectDecoder(v1, [other])
