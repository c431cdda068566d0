"""The quotes pipeline end to end on the FnApiRunner, against hand-checked lines and the reference."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from apache_beam.metrics.metric import MetricsFilter

from beam_pipeline.config import bundled_sample, resolve
from beam_pipeline.devtools.reference import run_reference
from beam_pipeline.devtools.samples import MALFORMED, generate
from beam_pipeline.options import parse_options
from beam_pipeline.pipeline import build_pipeline
from tests.conftest import WORKED_EXAMPLE

#: The default job's output files (besides metrics.json), as docs/contract.md gives them.
OUTPUTS = ("mid_prices.log", "errors.log", "dead_letter.jsonl")

#: The reason code each row of samples.MALFORMED must get, in the same order.
MALFORMED_CODES = [
    "bad_timestamp", "missing_timestamp", "missing_price", "bad_price", "bad_price", "non_positive_price",
    "non_positive_price", "price_precision", "crossed_quote", "bad_size", "bad_latency", "bad_latency",
    "wrong_field_count", "wrong_field_count", "missing_symbol", "out_of_order",
]


def reference_files(sources, out: Path, threshold: int = 20, symbol: str = "UNKNOWN") -> dict[str, str]:
    run_reference([str(s) for s in sources], str(out), threshold, symbol)
    return {name: (out / name).read_text() for name in OUTPUTS}


class TestBundledSample:
    @pytest.fixture(scope="class")
    def outputs(self, tmp_path_factory):
        out = tmp_path_factory.mktemp("sample")
        build_pipeline(resolve(parse_options(["--output_dir", str(out), "--progress", "off"]))).run().wait_until_finish()
        files = {name: (out / name).read_text() for name in OUTPUTS}
        return files, json.loads((out / "metrics.json").read_text()), out

    def test_first_lines_match_the_hand_checked_rows(self, outputs):
        files, _, _ = outputs
        # Sample lines 2-5: .038 BTCUSD 60 ms and .063 AAPL 35 ms are over 20 ms; .091 BTCUSD
        # 67799.98/67799.99 (17 ms, arrives .108) and .127 AAPL 194.48/194.52 (6 ms, arrives .133).
        assert files["errors.log"].splitlines()[:2] == [
            "No mid price at 2024-06-03 07:00:00.038 as latency 60ms is bigger than 20ms",
            "No mid price at 2024-06-03 07:00:00.063 as latency 35ms is bigger than 20ms",
        ]
        assert files["mid_prices.log"].splitlines()[:2] == [
            "2024-06-03 07:00:00.091, 67799.985",
            "2024-06-03 07:00:00.127, 194.5",
        ]

    def test_every_deliberately_malformed_row_is_dead_lettered_with_its_reason(self, outputs):
        files, metrics, _ = outputs
        letters = [json.loads(line) for line in files["dead_letter.jsonl"].splitlines()]
        assert [letter["reason"].split(":")[0] for letter in letters] == MALFORMED_CODES
        assert [letter["line"] for letter in letters] == sorted(letter["line"] for letter in letters)
        sample = Path(bundled_sample()).read_text().splitlines()
        assert all(sample[letter["line"] - 1] == letter["raw"] for letter in letters)
        assert metrics["dead_lettered"] == len(MALFORMED)

    def test_counts_balance(self, outputs):
        files, metrics, _ = outputs
        assert metrics["records_in"] == 5000
        assert metrics["mid_prices"] == files["mid_prices.log"].count("\n")
        assert metrics["latency_filtered"] == files["errors.log"].count("\n")
        assert metrics["records_in"] == metrics["mid_prices"] + metrics["latency_filtered"] + metrics["dead_lettered"]
        assert metrics["balanced"] is True

    def test_identical_to_the_plain_python_reference(self, outputs, tmp_path):
        files, _, _ = outputs
        assert files == reference_files([bundled_sample()], tmp_path)

    def test_no_staging_files_are_left(self, outputs):
        _, _, out = outputs
        assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, "metrics.json"])


def test_worked_example(write_csv, run_quotes):
    files = run_quotes(write_csv(WORKED_EXAMPLE), args=("--latency_threshold_ms", "20"))
    assert files["mid_prices.log"] == "2024-01-01 00:00:00.200, 200.5\n2024-01-01 00:00:00.700, 100.25\n"
    assert files["errors.log"] == "No mid price at 2024-01-01 00:00:00.000 as latency 120ms is bigger than 20ms\n"


FRACTIONAL = (
    "timestamp,symbol,bid,ask,latency_ms\n"
    "2024-01-01 00:00:00.000,A,1.1,1.2,20.5\n"     # arrives at .0205: after the next one
    "2024-01-01 00:00:00.020,A,1.1,1.3,0.001\n"    # arrives at .020001
    "2024-01-01 00:00:00.040,A,1.1,1.4,20.500\n"
    "2024-01-01 00:00:00.060,A,1.1,1.5,20.1234\n"  # finer than a microsecond
    "2024-01-01 00:00:00.080,A,1.1,1.6,20\n"
    "2024-01-01 00:00:00.090,A,1.1,1.6,2e1\n"     # an exponent
    "2024-01-01 00:00:00.100,A,1.1,1.7,nan\n"
    "2024-01-01 00:00:00.120,A,1.1,1.8,-0.5\n"
    "2024-01-01 00:00:00.140,A,1.1,1.9,\n"
)


@pytest.mark.parametrize("threshold", [20, 21])
def test_fractional_latencies_end_to_end_as_the_reference(write_csv, run_quotes, tmp_path, threshold):
    source = write_csv(FRACTIONAL)
    files = run_quotes(source, args=("--latency_threshold_ms", str(threshold)))
    assert {k: v for k, v in files.items() if k != "metrics"} == reference_files([source], tmp_path / "ref", threshold)
    if threshold == 20:
        assert files["errors.log"] == (
            "No mid price at 2024-01-01 00:00:00.000 as latency 20.5ms is bigger than 20ms\n"
            "No mid price at 2024-01-01 00:00:00.040 as latency 20.5ms is bigger than 20ms\n")
        assert files["mid_prices.log"] == "2024-01-01 00:00:00.020, 1.2\n2024-01-01 00:00:00.080, 1.35\n"
    else:  # arrival order: .020001 before .0205
        assert files["errors.log"] == ""
        assert files["mid_prices.log"].splitlines() == [
            "2024-01-01 00:00:00.020, 1.2", "2024-01-01 00:00:00.000, 1.15",
            "2024-01-01 00:00:00.040, 1.25", "2024-01-01 00:00:00.080, 1.35"]
    reasons = [json.loads(line)["reason"] for line in files["dead_letter.jsonl"].splitlines()]
    assert reasons == [
        "bad_latency: latency_ms '20.1234' has more than 3 decimal places",
        "bad_latency: latency_ms '2e1' has an exponent: write it in plain digits",
        "bad_latency: latency_ms 'nan' is not a finite number",
        "bad_latency: latency_ms '-0.5' is negative",
        "missing_latency: latency_ms is empty",
    ]
    assert files["metrics"]["balanced"] and files["metrics"]["records_in"] == 9


def test_fractional_latencies_survive_avro_output_replayed_as_input(write_csv, run_quotes, tmp_path):
    source = write_csv(FRACTIONAL)
    first = run_quotes(source, args=("--avro_output", str(tmp_path / "avro")), output_dir=tmp_path / "csv_run")
    quotes_avro = sorted((tmp_path / "avro").glob("quotes-*.avro"))
    again = run_quotes(*quotes_avro, output_dir=tmp_path / "avro_run")
    assert again["errors.log"] == first["errors.log"] != ""
    assert again["mid_prices.log"] == first["mid_prices.log"]


def test_threshold_equal_to_latency_keeps_the_quote(write_csv, run_quotes):
    files = run_quotes(write_csv(WORKED_EXAMPLE), args=("--latency_threshold_ms", "120"))
    assert files["errors.log"] == ""
    assert files["mid_prices.log"].splitlines() == [
        "2024-01-01 00:00:00.000, 1.15", "2024-01-01 00:00:00.200, 200.5", "2024-01-01 00:00:00.700, 100.25"]


#: Rows the fast path refuses but the rules accept (same time as the row they replace: in order).
ODD_BUT_VALID = [
    "{date}T{time}Z,ODD,1.5,1,1.6,1,3",
    "{date} {time}001,ODD,1.5,1,1.6,1,3",
    "{date} {time}, ODD ,  1.5 ,1, 1.60 ,,+3",
    "{date}T{time}+00:00,ODD,1.5e0,1e1,16E-1,0,3.0",
    '"{date} {time}",ODD,"1.5",1,1.6,1,3',
    "{date} {time},FRAC,1.5,1,1.6,1,2.5",  # fractional latencies: exact, around the threshold of 15
    "{date} {time},FRAC,1.5,1,1.6,1,15.001",
    "{date} {time},FRAC,1.5,1,1.6,1,15.000",
    "{date} {time},FRAC,1.5,1,1.6,1,0.001",
]


def mixed_file(seed: int, rows: int) -> bytes:
    """Generated quotes with malformed, odd-but-valid and blank lines spread through them."""
    lines = generate(rows, seed).decode().splitlines()
    rng = random.Random(seed)
    for index in rng.sample(range(5, len(lines) - 1), 40):
        stamp = lines[index].split(",", 1)[0]
        date, time = stamp.split(" ")
        template = rng.choice([*MALFORMED, *ODD_BUT_VALID, ""])
        lines[index] = template.format(ts=stamp, date=date, time=time)
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("block_bytes", ["1024", "65536"])
def test_identical_to_the_reference_on_messy_files_and_several_inputs(write_csv, run_quotes, tmp_path, block_bytes):
    sources = [write_csv(mixed_file(seed, 3000), f"part{seed}.csv") for seed in (1, 2)]
    files = run_quotes(*sources, args=("--block_bytes", block_bytes, "--latency_threshold_ms", "15"))
    assert {k: v for k, v in files.items() if k != "metrics"} == reference_files(sources, tmp_path / "ref", 15)
    assert files["metrics"]["balanced"] and files["metrics"]["records_in"] > 5900


def test_beam_counters_agree_with_metrics_json(tmp_path):
    out = tmp_path / "out"
    result = build_pipeline(resolve(parse_options(["--output_dir", str(out), "--progress", "off"]))).run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed for r in result.metrics().query(MetricsFilter())["counters"]}
    metrics = json.loads((out / "metrics.json").read_text())
    assert counters["records_in"] == metrics["records_in"]
    assert counters["mid_prices"] == metrics["mid_prices"]
    assert counters["latency_filtered"] == metrics["latency_filtered"]
    assert counters["dead_lettered"] == metrics["dead_lettered"]
