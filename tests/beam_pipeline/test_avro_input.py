"""--input *.avro: Avro quote files replayed like CSVs, resolved to --reader_schema_version."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import avro.datafile
import avro.io
import avro.schema
import fastavro
import pytest

from beam_pipeline import cli
from schemas import SCHEMA_DIR, load_schema
from tests.conftest import assert_one_line_usage_error
from transforms.sources.avro_input import open_avro_quotes, quote_csv_chunks, quote_row

UTC = dt.timezone.utc
# (timestamp, symbol, bid, ask, latency): one over the threshold, one crossed, one sub-millisecond.
QUOTES = [
    ("2024-01-01 00:00:00.000", "EURUSD", "1.1", "1.2", 120),
    ("2024-01-01 00:00:00.200", "EURUSD", "200", "201", 1),
    ("2024-01-01 00:00:00.700", "GBPUSD", "100", "100.5", 10),
    ("2024-01-01 00:00:00.900", "GBPUSD", "2", "1", 0),
    ("2024-01-01 00:00:01.000250", "EURUSD", "1.00000001", "1.00000002", 3),
]


def csv_text() -> str:
    lines = ["timestamp,symbol,bid_price,ask_price,latency_ms"]
    lines += [f"{ts},{sym},{bid},{ask},{lat}" for ts, sym, bid, ask, lat in QUOTES]
    return "\n".join(lines) + "\n"


def v1_records() -> list[dict]:
    return [
        {"timestamp": dt.datetime.fromisoformat(ts).replace(tzinfo=UTC), "symbol": sym,
         "bid_price": Decimal(bid).quantize(Decimal("1e-8")), "bid_size": None,
         "ask_price": Decimal(ask).quantize(Decimal("1e-8")), "ask_size": None, "latency_ms": lat}
        for ts, sym, bid, ask, lat in QUOTES
    ]


def write_with_apache_avro(path: Path) -> Path:
    schema = avro.schema.parse((SCHEMA_DIR / "quote.v1.avsc").read_text())
    with avro.datafile.DataFileWriter(open(path, "wb"), avro.io.DatumWriter(), schema, codec="deflate") as writer:
        for record in v1_records():
            writer.append(record)
    return path


def run(tmp_path: Path, name: str, *args: str) -> dict[str, str]:
    out = tmp_path / name
    assert cli.main([*args, "--output_dir", str(out), "--progress", "off"]) == 0
    return {f: (out / f).read_text() for f in ("mid_prices.log", "errors.log", "dead_letter.jsonl")}


def test_v1_files_from_the_apache_library_replay_like_the_same_csv(tmp_path):
    avro_file = write_with_apache_avro(tmp_path / "quotes.avro")  # read with v2, the default
    csv_file = tmp_path / "quotes.csv"
    csv_file.write_text(csv_text())
    from_avro = run(tmp_path, "from_avro", "--input", str(avro_file))
    from_csv = run(tmp_path, "from_csv", "--input", str(csv_file))
    assert from_avro["mid_prices.log"] == from_csv["mid_prices.log"] == (
        "2024-01-01 00:00:00.200, 200.5\n2024-01-01 00:00:00.700, 100.25\n"
        "2024-01-01 00:00:01.000250, 1.000000015\n")
    assert from_avro["errors.log"] == from_csv["errors.log"]
    assert '"reason": "crossed_quote' in from_avro["dead_letter.jsonl"]


def test_our_own_avro_output_replays_to_the_same_lines(tmp_path):
    csv_file = tmp_path / "quotes.csv"
    csv_file.write_text(csv_text())
    first = run(tmp_path, "first", "--input", str(csv_file), "--avro_output", str(tmp_path / "avro"))
    again = run(tmp_path, "again", "--input", str(tmp_path / "avro" / "quotes-*.avro"))
    assert again["mid_prices.log"] == first["mid_prices.log"]
    assert again["errors.log"] == first["errors.log"]
    assert again["dead_letter.jsonl"] == ""  # only valid quotes were written


def test_an_old_reader_cannot_see_a_renamed_field(tmp_path):
    """quote v2 renamed latency_ms; a v1 reader does not know the new name, gets its default (null),
    and a historical quote without latency is a dead letter: why docs/sources.md (Avro input) says to
    read with the latest version."""
    path = tmp_path / "v2.avro"
    with open(path, "wb") as stream:
        fastavro.writer(stream, load_schema("quote", 2), [{**v1_records()[1], "arrival_latency_ms": 1}])
    result = run(tmp_path, "old", "--input", str(path), "--reader_schema_version", "1")
    assert '"reason": "missing_latency' in result["dead_letter.jsonl"] and result["mid_prices.log"] == ""


def test_rows_are_exact_text():
    record = {"timestamp": dt.datetime(2024, 1, 1, 0, 0, 0, 250, tzinfo=UTC), "symbol": "A,B",
              "bid_price": Decimal("1.10000000"), "bid_size": 3.5, "ask_price": Decimal("2.00000000"),
              "ask_size": None, "arrival_latency_ms": 7, "tenant": "acme"}
    assert quote_row(record) == [
        "2024-01-01 00:00:00.000250", "A,B", "1.10000000", "3.5", "2.00000000", "", "7", "acme"]
    v1_record = {**record, "latency_ms": record["arrival_latency_ms"]}
    del v1_record["tenant"], v1_record["arrival_latency_ms"]
    assert quote_row(v1_record)[-2:] == ["7", ""]  # no tenant in v1: empty, the default tenant
    text = b"".join(quote_csv_chunks([record] * 5, rows_per_chunk=2)).decode()
    assert text.count('"A,B"') == 5 and text.startswith("timestamp,symbol,bid_price")


def test_an_avro_file_streams_as_csv_lines(tmp_path):
    path = write_with_apache_avro(tmp_path / "q.avro")
    with open_avro_quotes(str(path), load_schema("quote", 2), open_file=lambda p: open(p, "rb")) as stream:
        lines = stream.read().decode().splitlines()
    assert len(lines) == 1 + len(QUOTES)
    assert lines[2].split(",")[-2:] == ["1", "default"]  # latency through the alias; tenant's default


@pytest.mark.parametrize(
    "setup, args, expected",
    [
        (lambda d: None, ["--reader_schema_version", "1"], "applies to .avro inputs"),
        (lambda d: write_with_apache_avro(d / "q.avro"), ["--reader_schema_version", "9"], "no version 9"),
        (lambda d: (d / "q.avro").write_text("not avro"), [], "not a readable Avro"),
    ],
    ids=["no-avro-input", "unknown-version", "not-avro"],
)
def test_avro_input_usage_errors(tmp_path, capsys, setup, args, expected):
    setup(tmp_path)
    inputs = ["--input", str(tmp_path / "q.avro")] if (tmp_path / "q.avro").exists() else []
    rc = cli.main([*inputs, *args, "--output_dir", str(tmp_path / "out")])
    assert expected in assert_one_line_usage_error(rc, capsys.readouterr().err)


def test_a_file_the_reader_cannot_resolve_is_a_usage_error(tmp_path, capsys):
    other = {"type": "record", "name": "Quote", "namespace": "beam_pipeline.quotes",
             "fields": [{"name": "timestamp", "type": "string"}]}
    path = tmp_path / "q.avro"
    with open(path, "wb") as stream:
        fastavro.writer(stream, fastavro.parse_schema(other), [{"timestamp": "x"}])
    rc = cli.main(["--input", str(path), "--output_dir", str(tmp_path / "out")])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert "Quote.timestamp" in line and "cannot read" in line
