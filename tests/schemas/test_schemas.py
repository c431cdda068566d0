"""The quote schema: rules compiled from it agree with fastavro's own validation."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import fastavro
import pytest
from fastavro.validation import validate

import schemas
from beam_pipeline.devtools.reference import PRICES
from transforms.quotes import rules as quotes
from transforms.quotes.normalize import price_rule

SCHEMA = schemas.load_schema("quote")
RULES = schemas.field_rules(SCHEMA)


def test_rules_compiled_from_the_avsc():
    assert {name: (r.kind, r.nullable) for name, r in RULES.items()} == {
        "timestamp": ("timestamp_micros", False),
        "symbol": ("string", False),
        "bid_price": ("decimal", False),
        "bid_size": ("double", True),
        "ask_price": ("decimal", False),
        "ask_size": ("double", True),
        "latency_ms": ("long", True),
    }
    assert price_rule(RULES) == PRICES  # the reference implementation uses the same decimal


def avro_record(fields, latency="5"):
    """A quote the row rules accept, as the Avro record it stands for."""
    symbol, bid, ask, bid_size, ask_size, _tenant = quotes.parse_content(fields, PRICES)
    scale = Decimal(10) ** -PRICES.scale
    return {
        "timestamp": quotes.parse_timestamp("2024-01-01 00:00:00.5"),
        "symbol": symbol,
        "bid_price": Decimal(bid) * scale,
        "bid_size": bid_size,
        "ask_price": Decimal(ask) * scale,
        "ask_size": ask_size,
        "latency_ms": quotes.parse_latency_us(latency) // 1000,  # v1 holds whole milliseconds
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"symbol": "A", "bid_price": "1.1", "ask_price": "1.2"},
        {"symbol": "A", "bid_price": "0.00000001", "ask_price": "9999999999.99999999", "bid_size": "3"},
        {"symbol": "BTC-USD", "bid_price": "1e2", "ask_price": "100.5", "ask_size": "0.25"},
    ],
)
def test_accepted_records_pass_fastavro_and_round_trip(fields):
    record = avro_record(fields)
    assert validate(record, SCHEMA)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMA, record)
    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, SCHEMA)
    assert read.pop("timestamp") == quotes.EPOCH + timedelta(microseconds=record.pop("timestamp"))
    assert read == record  # prices come back as the same exact decimals


def test_what_the_rules_reject_fastavro_rejects_too():
    record = avro_record({"symbol": "A", "bid_price": "1.1", "ask_price": "1.2"})
    with pytest.raises(ValueError, match="Scale"):  # more decimals than the schema's scale
        validate({**record, "bid_price": Decimal("1.123456789")}, SCHEMA)
    assert not validate({**record, "symbol": None}, SCHEMA, raise_errors=False)
    assert not validate({**record, "bid_price": 1.1}, SCHEMA, raise_errors=False)


def test_rules_are_stricter_than_fastavro_on_precision():
    # fastavro does not check a decimal's precision; the rules do (prices up to 10 integer digits).
    with pytest.raises(quotes.Rejected, match="price_range"):
        quotes.parse_price("12345678901.1", "bid_price", PRICES.precision, PRICES.scale)


def test_missing_schema_is_a_clear_error():
    with pytest.raises(schemas.SchemaError, match=r"quote\.v99\.avsc"):
        schemas.load_schema("quote", 99)


def test_unsupported_types_are_refused():
    with pytest.raises(schemas.SchemaError, match="not supported"):
        schemas.field_rules({"fields": [{"name": "x", "type": "boolean"}]})
    with pytest.raises(schemas.SchemaError, match="unions"):
        schemas.field_rules({"fields": [{"name": "x", "type": ["null", "long", "string"]}]})
