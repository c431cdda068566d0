"""Beam YAML: examples/quotes.yaml (beam_pipeline.yaml_transforms) writes what the CLI writes.

Every output file must be byte-identical to the one ``beam_pipeline.cli.main`` writes for the same
settings, and metrics.json equal apart from ``run_seconds``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pytest
import yaml
from apache_beam.yaml import main as yaml_main
from apache_beam.yaml.yaml_transform import YamlTransform, expand_jinja

from beam_pipeline import cli, yaml_transforms
from beam_pipeline.config import bundled_sample

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quotes.yaml"
RUNNER = "--runner=beam_pipeline.yaml_transforms.QuotesRunner"
FILES = ("mid_prices.log", "errors.log", "dead_letter.jsonl")
WINDOW_FILES = ("windows.jsonl", "late.jsonl")

WORKED_EXAMPLE = (
    "timestamp,bid,ask,latency\n"
    "2024-01-01 00:00:00,1.1,1.2,120\n"
    "2024-01-01 00:00:00.200,200,201,1\n"
    "2024-01-01 00:00:00.700,100,100.5,10\n"
    "2024-01-01 00:00:00.800,101,100,3\n"
)


def run_example(output_dir: Path, **variables) -> None:
    """examples/quotes.yaml in this process, through Beam YAML's own entry point."""
    yaml_main.run([
        f"--yaml_pipeline_file={EXAMPLE}", RUNNER,
        "--jinja_variables=" + json.dumps({"output_dir": str(output_dir), **variables}),
    ])


def run_cli(output_dir: Path, *args: str) -> None:
    assert cli.main(["--output_dir", str(output_dir), "--progress", "off", *args]) == 0


def assert_same_outputs(yaml_dir: Path, cli_dir: Path, files=FILES) -> dict:
    """Same files, byte for byte; the same metrics.json but for run_seconds. Returns its metrics."""
    assert sorted(p.name for p in yaml_dir.iterdir()) == sorted(p.name for p in cli_dir.iterdir())
    for name in files:
        assert (yaml_dir / name).read_bytes() == (cli_dir / name).read_bytes(), name
    metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (yaml_dir, cli_dir))
    assert isinstance(metrics.pop("run_seconds"), float) and isinstance(expected.pop("run_seconds"), float)
    assert metrics == expected
    return metrics


def test_the_example_run_by_beam_yaml_main_writes_what_the_default_cli_job_writes(tmp_path):
    """The command examples/README.md gives, as a process of its own."""
    result = subprocess.run(
        [sys.executable, "-m", "apache_beam.yaml.main", f"--yaml_pipeline_file={EXAMPLE}", RUNNER,
         "--jinja_variables=" + json.dumps({"output_dir": str(tmp_path / "yaml")})],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_cli(tmp_path / "cli")
    metrics = assert_same_outputs(tmp_path / "yaml", tmp_path / "cli", FILES)
    assert metrics["inputs"] == [bundled_sample()] and metrics["latency_threshold_ms"] == 20
    assert metrics["balanced"] and metrics["records_in"] == 5000 and metrics["latency_filtered"] > 0
    assert "windowing" not in metrics


def test_the_window_stage_writes_what_cli_window_writes(tmp_path):
    run_example(tmp_path / "yaml", window="sliding:2s,1s", allowed_lateness="1s")
    run_cli(tmp_path / "cli", "--window", "sliding:2s,1s", "--allowed_lateness", "1s")
    metrics = assert_same_outputs(tmp_path / "yaml", tmp_path / "cli", FILES + WINDOW_FILES)
    assert metrics["windowing"]["window"] == "sliding:2s,1s" and metrics["windows_emitted"] > 0
    assert metrics["windows_balanced"] and metrics["balanced"]


def test_input_and_threshold_reach_the_files_and_metrics(tmp_path):
    quotes = tmp_path / "quotes.csv"
    quotes.write_text(WORKED_EXAMPLE)
    run_example(tmp_path / "yaml", input=str(quotes), latency_threshold_ms=5)
    run_cli(tmp_path / "cli", "--input", str(quotes), "--latency_threshold_ms", "5")
    metrics = assert_same_outputs(tmp_path / "yaml", tmp_path / "cli")
    assert (metrics["mid_prices"], metrics["latency_filtered"], metrics["dead_lettered"]) == (1, 2, 1)
    # The comparison sees a wrong threshold: the default one (20) files one error fewer.
    run_cli(tmp_path / "cli20", "--input", str(quotes))
    with pytest.raises(AssertionError):
        assert_same_outputs(tmp_path / "yaml", tmp_path / "cli20")


def test_the_providers_block_lists_every_transform():
    spec = yaml.safe_load(expand_jinja(EXAMPLE.read_text(), {}))
    (provider,) = spec["providers"]
    assert (provider["type"], provider["config"]) == ("python", {})
    names = {name: f"{t.__module__}.{t.__qualname__}" for name, t in yaml_transforms.TRANSFORMS.items()}
    assert provider["transforms"] == names


def test_providers_for_the_python_api(tmp_path):
    """A YAML spec without a providers block, given yaml_transforms.providers() from Python."""
    quotes = tmp_path / "quotes.csv"
    quotes.write_text(WORKED_EXAMPLE)
    spec = f"""
    type: composite
    transforms:
      - {{type: ReadQuotes, name: Read, config: {{input: "{quotes}"}}}}
      - {{type: NormalizeQuotes, name: Normalize, input: Read.blocks}}
      - {{type: ComputeMidPrices, name: MidPrices, input: Normalize.valid}}
      - type: WriteQuoteOutputs
        input: {{mid_prices: MidPrices.mid_prices, errors: MidPrices.errors,
                 dead_letters: Normalize.dead_letters, counts: Read.counts}}
        config: {{output_dir: "{tmp_path / 'yaml'}"}}
    """
    with beam.Pipeline(runner=yaml_transforms.QuotesRunner()) as pipeline:
        _ = pipeline | YamlTransform(spec, providers=yaml_transforms.providers())
    run_cli(tmp_path / "cli", "--input", str(quotes))
    assert_same_outputs(tmp_path / "yaml", tmp_path / "cli")


@pytest.mark.parametrize(
    "variables, message",
    [
        pytest.param({"latency_threshold_ms": -1}, "--latency_threshold_ms must be from 0", id="negative-threshold"),
        pytest.param({"input": "/no/such/quotes.csv"}, "no such file", id="missing-input"),
        pytest.param({"window": "hourly"}, "--window", id="bad-window"),
    ],
)
def test_a_bad_setting_fails_before_the_run_with_the_cli_message(variables, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        run_example(tmp_path / "out", **variables)
    assert not (tmp_path / "out").exists()


def test_write_quote_outputs_names_missing_inputs(tmp_path):
    spec = """
    type: composite
    transforms:
      - {type: ReadQuotes, name: Read}
      - {type: NormalizeQuotes, name: Normalize, input: Read.blocks}
      - {type: WriteQuoteOutputs, input: {dead_letters: Normalize.dead_letters, counts: Read.counts}}
    """
    with pytest.raises(ValueError, match=r"missing \['errors', 'mid_prices'\]"):
        with beam.Pipeline(runner=yaml_transforms.QuotesRunner()) as pipeline:
            _ = pipeline | YamlTransform(spec, providers=yaml_transforms.providers())
