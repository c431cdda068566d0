"""Prism (Beam's Go runner, built by ``make prism``) writes what the DirectRunner writes, byte for byte.

Each test runs one job through ``beam_pipeline.cli.main`` on the default DirectRunner and on
``--runner PrismRunner``, which finds the binary ``make prism`` built (no download, no
``--prism_location``) and runs the SDK workers in this process (LOOPBACK). The outputs must match as
for the PortableRunner (:func:`tests.runners.test_portable.assert_same_outputs`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from beam_pipeline import cli
from beam_pipeline.config import bundled_sample
from tests.runners.test_portable import assert_same_outputs, portable_runs  # noqa: F401  (fixture)

PRISM = ("--runner", "PrismRunner")


def run_both(tmp_path: Path, submitted: list[str], *args: str) -> tuple[Path, Path]:
    folders = []
    for name, runner in (("direct", ()), ("prism", PRISM)):
        out = tmp_path / name
        assert cli.main([*args, *runner, "--output_dir", str(out), "--progress", "off"]) == 0, name
        folders.append(out)
    assert submitted == ["PrismRunner"], "the Prism run was not submitted to Prism's job service"
    return folders[0], folders[1]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((), id="sample"),
        pytest.param(("--window", "fixed:1s"), id="fixed-windows"),
        pytest.param(("--window", "session:500ms"), id="session-windows"),
        pytest.param(("--trades", str(Path(bundled_sample()).with_name("trades_sample.csv"))), id="trades"),
    ],
)
def test_batch_quotes_job_on_prism_writes_what_the_direct_runner_writes(args, tmp_path, prism_binary, portable_runs):
    direct, on_prism = run_both(tmp_path, portable_runs, "--input", bundled_sample(), *args)
    metrics = assert_same_outputs(direct, on_prism)
    assert metrics["records_in"] == 5000
