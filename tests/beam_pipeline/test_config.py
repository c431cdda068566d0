"""``beam_pipeline.config.resolve``: flags -> every problem, or frozen configs that build the pipeline."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import StandardOptions

from beam_pipeline.config import (
    DEFAULT_GROUP,
    OptionsError,
    ProductsJob,
    QuotesJob,
    bundled_sample,
    resolve,
)
from beam_pipeline.options import QuoteOptions, parse_options
from beam_pipeline.pipeline import build_pipeline
from tests.conftest import WORKED_EXAMPLE


def resolved(*argv: str):
    return resolve(parse_options(list(argv)))


def test_the_default_job_reads_the_bundled_sample_with_the_schema_rules():
    job = resolved("--output_dir", "out")
    assert isinstance(job, QuotesJob)
    assert job.source.inputs == (bundled_sample(),)
    assert (job.source.kind, job.source.streaming, job.source.watermark_lag_us) == ("historical", False, None)
    assert job.window is None and job.analytics is None and job.trade_inputs == ()
    assert (job.deliver.output_dir, job.quotes.latency_threshold_ms, job.quotes.scale) == ("out", 20, 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.quotes.latency_threshold_ms = 0  # type: ignore[misc]


def test_flags_become_their_configs(tmp_path):
    trades = bundled_sample("trades_sample.csv")
    job = resolved("--output_dir", str(tmp_path), "--window", "sliding:10s,2s", "--allowed_lateness", "1s",
                   "--trades", trades, "--model", "none", "--symbol", " XY ", "--latency_threshold_ms", "7")
    assert (job.window.window.kind, job.window.allowed_lateness_us) == ("sliding", 1_000_000)
    assert job.analytics.model is None and job.trade_inputs == (trades,)
    assert job.source.dedup_horizon_us == 600_000_000  # --trades turns the duplicate horizon on (10m)
    assert (job.source.default_symbol, job.quotes.latency_threshold_ms) == ("XY", 7)


def test_a_queue_consumer_writes_to_its_own_folder_in_the_output_dir(tmp_path):
    job = resolved("--source", "redis://127.0.0.1:6390/quotes", "--consumer", "c1", "--output_dir", str(tmp_path))
    assert job.source.unbounded and job.source.streaming
    # the job's own Beam options say so too, for any runner it is handed to (not only the CLI's)
    assert job.options.view_as(StandardOptions).streaming is True
    assert (job.source.group, job.source.consumer) == (DEFAULT_GROUP, "c1")
    assert job.deliver.output_dir == str(tmp_path / "consumer=c1") and job.deliver.root_dir == str(tmp_path)
    assert job.source.inputs == ()  # a consumer reads no files


def test_the_products_job_resolves_to_its_own_config():
    job = resolved("--job", "products", "--endpoints", "http://127.0.0.1:9/catalog/products",
                   "--max_retries", "5")
    assert isinstance(job, ProductsJob)
    assert [endpoint.name for endpoint in job.endpoints] == ["catalog"] and job.fetch.max_retries == 5


def test_every_value_problem_at_once_and_the_files_only_once_the_values_are_right(tmp_path):
    with pytest.raises(OptionsError) as raised:
        resolved("--symbol", "", "--block_bytes", "1", "--input", str(tmp_path / "missing.csv"))
    assert [problem.split(" ", 1)[0] for problem in raised.value.problems] == ["--symbol", "--block_bytes"]
    with pytest.raises(OptionsError) as raised:
        resolved("--input", str(tmp_path / "missing.csv"), "--trades", str(tmp_path / "no_trades.csv"))
    assert raised.value.problems == [f"--input {tmp_path / 'missing.csv'}: no such file",
                                     f"--trades {tmp_path / 'no_trades.csv'}: no such file"]


def test_the_pipeline_is_built_from_the_job_alone(tmp_path, write_csv):
    """Flags changed after resolving do not reach the pipeline: build_pipeline reads only the job."""
    source = write_csv(WORKED_EXAMPLE)
    options = parse_options(["--input", str(source), "--output_dir", str(tmp_path / "out"), "--progress", "off"])
    job = resolve(options)
    options.view_as(QuoteOptions).latency_threshold_ms = 0
    options.view_as(QuoteOptions).output_dir = str(tmp_path / "elsewhere")
    build_pipeline(job).run().wait_until_finish()
    metrics = json.loads(Path(tmp_path / "out" / "metrics.json").read_text())
    assert metrics["latency_threshold_ms"] == 20 and not (tmp_path / "elsewhere").exists()


def test_a_stage_whose_declaration_misses_a_file_it_wires_fails_the_build(tmp_path, monkeypatch):
    from transforms.accounting import Accounting
    from transforms.quotes.stage import ComputeMidPrices

    declared = ComputeMidPrices.ACCOUNTING
    monkeypatch.setattr(ComputeMidPrices, "ACCOUNTING", Accounting(declared.outputs[:1], declared.checks))
    with pytest.raises(RuntimeError, match="errors.log"):
        build_pipeline(resolved("--output_dir", str(tmp_path)))
