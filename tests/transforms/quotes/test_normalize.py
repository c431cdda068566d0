"""NormalizeQuotes: every malformed-row class goes to the dead letters with its reason."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest

from schemas import FieldRule, SchemaError, field_rules, load_schema
from transforms.quotes.normalize import VALID_SCHEMA, dead_letter_chunk, normalize_batch, price_rule
from transforms.sources.replay import HistoricalReplay

HEADER = "timestamp,symbol,bid_price,bid_size,ask_price,ask_size,latency_ms\n"
GOOD = "2024-01-01 00:00:00.000,AAPL,194.50,10,194.52,12,5"
PRICES = price_rule(field_rules(load_schema("quote")))

#: One row per malformed class, and the reason code it must get.
MALFORMED = [
    ("2024-01-01 00:00:01,AAPL,194.50,10,194.52,12", "wrong_field_count"),
    ("2024-01-01 00:00:01,AAPL,194.50,10,194.52,12,5,x", "wrong_field_count"),
    ("nope,AAPL,194.50,10,194.52,12,5", "bad_timestamp"),
    (",AAPL,194.50,10,194.52,12,5", "missing_timestamp"),
    ("2024-01-01 00:00:01,AAPL,194.50,10,194.52,12,", "missing_latency"),
    ("2024-01-01 00:00:01,AAPL,194.50,10,194.52,12,-3", "bad_latency"),
    ("2024-01-01 00:00:01,AAPL,194.50,10,194.52,12,2.5001", "bad_latency"),
    ("2024-01-01 00:00:01,,194.50,10,194.52,12,5", "missing_symbol"),
    ("2024-01-01 00:00:01,AAPL,,10,194.52,12,5", "missing_price"),
    ("2024-01-01 00:00:01,AAPL,abc,10,194.52,12,5", "bad_price"),
    ("2024-01-01 00:00:01,AAPL,194.50,10,inf,12,5", "bad_price"),
    ("2024-01-01 00:00:01,AAPL,0,10,194.52,12,5", "non_positive_price"),
    ("2024-01-01 00:00:01,AAPL,-1,10,194.52,12,5", "non_positive_price"),
    ("2024-01-01 00:00:01,AAPL,194.123456789,10,194.52,12,5", "price_precision"),
    ("2024-01-01 00:00:01,AAPL,12345678901,10,194.52,12,5", "price_range"),
    ("2024-01-01 00:00:01,AAPL,194.53,10,194.52,12,5", "crossed_quote"),
    ("2024-01-01 00:00:01,AAPL,194.50,-1,194.52,12,5", "bad_size"),
    ("2024-01-01 00:00:01,AAPL,194.50,10,194.52,many,5", "bad_size"),
    ('2024-01-01 00:00:01,"AAPL,194.50,10,194.52,12,5', "bad_csv"),
    ("1999-01-01 00:00:00,AAPL,194.50,10,194.52,12,5", "out_of_order"),
]


def replayed(text: bytes):
    return pa.concat_batches(list(HistoricalReplay(["f.csv"], open_file=lambda _: io.BytesIO(text))))


@pytest.mark.parametrize("row, code", MALFORMED, ids=[code + str(i) for i, (_, code) in enumerate(MALFORMED)])
def test_each_malformed_class_is_dead_lettered_with_its_reason(row, code):
    text = (HEADER + GOOD + "\n" + row + "\n" + GOOD.replace("00.000", "02.000") + "\n").encode()
    valid, dead = normalize_batch(replayed(text), PRICES)
    assert valid.schema == VALID_SCHEMA
    assert valid.column("line").to_pylist() == [2, 4]  # the run goes on around the bad row
    assert dead.column("line").to_pylist() == [3]
    assert dead.column("reject")[0].as_py().startswith(code + ": ")


def test_invalid_utf8_is_dead_lettered():
    text = HEADER.encode() + b"2024-01-01 00:00:01,AA\xffPL,194.50,10,194.52,12,5\n" + GOOD.encode() + b"\n"
    valid, dead = normalize_batch(replayed(text), PRICES)
    assert dead.column("reject")[0].as_py().startswith("bad_encoding: ")
    assert valid.num_rows == 1


def test_valid_rows_are_typed_and_keep_their_order():
    text = (HEADER + GOOD + "\n" + "2024-01-01 00:00:00.500, MSFT ,1.1,,1.2,,0\n").encode()
    valid, dead = normalize_batch(replayed(text), PRICES)
    assert dead.num_rows == 0
    assert valid.column("symbol").to_pylist() == ["AAPL", "MSFT"]
    assert valid.column("bid").to_pylist() == [19_450_000_000, 110_000_000]
    assert valid.column("ask_size").to_pylist() == [12.0, None]


def test_dead_letter_chunk_is_the_contract_json_sorted_by_line():
    text = (HEADER + "x,A,1,1,2,1,1\n" + GOOD + "\n" + "2024-01-01 00:00:01,A,3,1,2,1,1\n").encode()
    _, dead = normalize_batch(replayed(text), PRICES)
    chunk = dead_letter_chunk(7, dead, ("f.csv",))
    keyed = chunk.data.decode().splitlines()
    records = [json.loads(line.split("\t", 1)[1]) for line in keyed]
    assert [r["line"] for r in records] == [2, 4]
    assert list(records[0]) == ["source", "line", "raw", "reason"]
    assert records[0] == {"source": "f.csv", "line": 2, "raw": "x,A,1,1,2,1,1",
                          "reason": records[0]["reason"]}
    assert dict(chunk.tally) == {"bad_timestamp": 1, "crossed_quote": 1}
    assert chunk.keyed and chunk.lines == 2 and chunk.seq == 7


def test_price_rule_comes_from_the_schema():
    assert (PRICES.precision, PRICES.scale) == (18, 8)
    with pytest.raises(SchemaError, match="same decimal"):
        price_rule({"bid_price": FieldRule("bid_price", "decimal", precision=18, scale=8),
                    "ask_price": FieldRule("ask_price", "decimal", precision=18, scale=4)})
