"""--metrics_port: a long-running run serves its Beam counters as they grow, in Prometheus' format."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from beam_pipeline import cli
from tests.beam_pipeline.test_webhook import ENDPOINT_LINE, REPO, TOKEN, get, lines_of, post, quote
from tests.conftest import assert_one_line_usage_error
from tests.waiting import wait_for
from transforms import telemetry

METRICS_LINE = re.compile(r"^beam_pipeline: metrics endpoint (http://127\.0\.0\.1:\d+/metrics) ", re.MULTILINE)


def counters(url: str) -> dict[str, float]:
    """``beam_pipeline_*`` counters summed over their namespaces (parsed by prometheus_client)."""
    status, text = get(url)
    assert status == 200
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("beam_pipeline_") and sample.name.endswith("_total"):
                totals[sample.name] = totals.get(sample.name, 0) + sample.value
    return totals


def test_a_webhook_run_serves_its_counters_while_it_runs(tmp_path, processes):
    out = tmp_path / "out"
    stderr_path = tmp_path / "run.stderr"
    with open(tmp_path / "run.stdout", "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "beam_pipeline", "--source", "webhook", "--port", "0", "--metrics_port", "0",
             "--webhook_token", TOKEN, "--output_dir", str(out)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    processes.append(process)
    wait_for(lambda: (ENDPOINT_LINE.search(stderr_path.read_text()) and METRICS_LINE.search(stderr_path.read_text()))
             or process.poll() is not None, 30, "the endpoint lines on stderr")
    text = stderr_path.read_text()
    assert process.poll() is None, text
    url, metrics_url = ENDPOINT_LINE.search(text).group(1), METRICS_LINE.search(text).group(1)

    assert post(url, [quote(i) for i in range(40)])[0] == 202
    wait_for(lambda: len(lines_of(out / "mid_prices.log")) >= 40, 30, "40 mid prices")
    seen = counters(metrics_url)
    assert seen["beam_pipeline_mid_prices_total"] == 40
    assert seen["beam_pipeline_records_in_total"] == 40
    assert seen.get("beam_pipeline_dead_lettered_total", 0) == 0

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, stderr_path.read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mid_prices"] == seen["beam_pipeline_mid_prices_total"]


def test_the_counters_are_beam_counters_and_a_tally():
    telemetry.reset()
    counter = telemetry.counter("tests.Fn", "quotes seen")
    counter.inc(3)
    counter.inc()
    assert telemetry.snapshot() == {("tests.Fn", "quotes seen"): 4}
    [family] = telemetry.BeamCounters().collect()
    assert family.name == "beam_pipeline_quotes_seen" and family.samples[0].value == 4
    telemetry.reset()
    assert telemetry.snapshot() == {}


@pytest.mark.parametrize("args, expected", [
    (["--metrics_port", "0"], "--metrics_port needs a long-running source"),
    (["--source", "webhook", "--port", "0", "--metrics_port", "70000"], "--metrics_port must be from 0 to 65535"),
])
def test_metrics_port_usage_errors(args, expected, tmp_path, capsys):
    rc = cli.main(["--output_dir", str(tmp_path / "out"), *args])
    assert expected in assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
