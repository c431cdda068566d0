"""--avro_output: valid quotes and mid prices as Avro files that other readers understand."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import avro.datafile
import avro.io
import pyarrow as pa
import pytest

from beam_pipeline import cli
from schemas import load_schema
from tests.conftest import WORKED_EXAMPLE, assert_one_line_usage_error
from transforms.quotes.normalize import VALID_SCHEMA
from transforms.sinks.avro_output import mid_price_records, quote_records
from transforms.sources.avro_input import read_avro_file


def read_with_apache_avro(paths: list[Path]) -> tuple[list[dict], set[bytes]]:
    """Every record of the files, read by the Apache reference library, and the codecs used."""
    records, codecs = [], set()
    for path in paths:
        with avro.datafile.DataFileReader(open(path, "rb"), avro.io.DatumReader()) as reader:
            codecs.add(reader.meta.get("avro.codec"))
            records.extend(reader)
    return records, codecs


MESSY = WORKED_EXAMPLE + (
    "2024-01-01 00:00:01,1.00000001,1.00000002,0\n"  # a mid needing the ninth decimal place
    "2024-01-01 00:00:02,2,1,0\n"  # crossed: a dead letter, not an Avro record
)


@pytest.fixture
def avro_run(tmp_path, write_csv):
    source = write_csv(MESSY)
    out, avro_dir = tmp_path / "out", tmp_path / "avro"
    rc = cli.main(["--input", str(source), "--output_dir", str(out), "--avro_output", str(avro_dir),
                   "--progress", "off"])
    assert rc == 0
    return out, avro_dir


def test_mid_price_files_hold_exactly_the_mid_prices_log(avro_run):
    out, avro_dir = avro_run
    records, codecs = read_with_apache_avro(sorted(avro_dir.glob("mid_prices-*.avro")))
    lines = (out / "mid_prices.log").read_text().splitlines()
    assert [r["mid"] for r in records] == [Decimal(line.split(", ")[1]) for line in lines]
    assert Decimal("1.000000015") in [r["mid"] for r in records]  # exact, on the ninth place
    assert {r["mode"] for r in records} == {"historical"}
    assert codecs == {b"deflate"}


def test_quote_files_hold_every_valid_quote_in_the_latest_schema(avro_run):
    out, avro_dir = avro_run
    records, _ = read_with_apache_avro(sorted(avro_dir.glob("quotes-*.avro")))
    # 4 valid quotes (one of them over the latency threshold), the crossed one is not there.
    assert [(r["bid_price"], r["arrival_latency_ms"]) for r in records] == [
        (Decimal("1.1"), 120), (Decimal("200"), 1), (Decimal("100"), 10), (Decimal("1.00000001"), 0)]
    assert all(r["tenant"] == "default" and r["venue"] is None for r in records)


def test_an_old_reader_reads_the_new_files(avro_run):
    _, avro_dir = avro_run
    (path,) = sorted(avro_dir.glob("quotes-*.avro"))
    records = list(read_avro_file(str(path), load_schema("quote", 1), open_file=lambda p: open(p, "rb")))
    assert len(records) == 4 and all(r["latency_ms"] is None and "tenant" not in r for r in records)


def test_records_of_an_empty_block_are_empty():
    batch = pa.RecordBatch.from_pylist([], schema=VALID_SCHEMA)
    assert quote_records(batch, 8) == [] and mid_price_records(batch, 8, latency_threshold_ms=20) == []


def test_an_unusable_avro_output_is_a_usage_error(tmp_path, write_csv, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = cli.main(["--input", str(write_csv(WORKED_EXAMPLE)), "--output_dir", str(tmp_path / "out"),
                   "--avro_output", str(blocker)])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert "--avro_output" in line
