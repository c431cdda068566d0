"""--log_format json: every stderr line is a JSON object with the run's id, its stage and counts."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipeline import logs
from beam_pipeline.config import bundled_sample

REPO = Path(__file__).resolve().parents[2]
KEYS = {"timestamp", "level", "logger", "message", "run_id", "stage"}


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipeline", "--progress", "off", "--output_dir", str(out), *args],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return result, json.loads((out / "metrics.json").read_text())


def test_json_logs_parse_line_by_line_and_carry_the_run_and_the_counts(tmp_path):
    result, metrics = _run(tmp_path, "--log_format", "json", "--trades", bundled_sample("trades_sample.csv"))
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line is one JSON object
    assert records and all(KEYS <= set(record) for record in records)
    run_ids = {record["run_id"] for record in records}
    assert len(run_ids) == 1 and None not in run_ids
    [set_aside] = [r for r in records if r["level"] == "WARNING" and r.get("counts")]
    assert set_aside["stage"] == "run"
    assert set_aside["counts"] == {
        name: metrics[name] for name in ("dead_lettered", "latency_filtered", "trades_dead_lettered", "trades_unmatched")
    }
    # One line for the whole run, not one per record.
    assert len(records) < 20 and metrics["dead_lettered"] + metrics["latency_filtered"] > 20


def test_text_logs_stay_text(tmp_path):
    result, metrics = _run(tmp_path)
    lines = result.stderr.splitlines()
    assert lines and not any(line.startswith("{") for line in lines)
    assert any(f"{metrics['latency_filtered']:,} latency_filtered" in line for line in lines)


def test_the_formatter_keeps_extras_and_exceptions():
    logs.set_run_id("abc123")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            record = logging.getLogger("transforms.trades.read").makeRecord(
                "transforms.trades.read", logging.ERROR, __file__, 1, "bad %s", ("thing",), sys.exc_info(),
                extra={"counts": {"dead": 2}},
            )
        doc = json.loads(logs.JsonFormatter().format(record))
    finally:
        logs.set_run_id(None)
    assert doc["message"] == "bad thing" and doc["stage"] == "trades" and doc["run_id"] == "abc123"
    assert doc["counts"] == {"dead": 2} and "ValueError: boom" in doc["exception"]
    assert doc["timestamp"].endswith("Z")


def test_the_format_is_read_from_the_command_line_before_parsing():
    assert logs.format_from_argv(["--log_format", "json"]) == "json"
    assert logs.format_from_argv(["--x", "--log_format=json"]) == "json"
    assert logs.format_from_argv(["--output_dir", "o"]) == "text"


@pytest.mark.parametrize("logger, stage", [
    ("transforms.trades.read", "trades"),  # a stage module: its stage subpackage
    ("transforms.sinks.deliver", "sinks"),
    ("transforms.progress", "progress"),  # a shared module: itself
    ("beam_pipeline.cli", "cli"),
    ("root", "root"),
])
def test_a_records_stage_is_the_stage_subpackage_its_logger_is_in(logger, stage):
    assert logs.stage_of(logger) == stage
