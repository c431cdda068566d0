"""Shared fixtures: small CSV files and in-process pipeline runs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import pytest

from beam_pipeline.config import expand_inputs, resolve
from beam_pipeline.options import parse_options
from beam_pipeline.pipeline import build_pipeline
from tests.redis_server import in_ci, redis_server, redis_url  # noqa: F401  (fixtures)

WORKED_EXAMPLE = (
    "timestamp,bid,ask,latency\n"
    "2024-01-01 00:00:00,1.1,1.2,120\n"
    "2024-01-01 00:00:00.200,200,201,1\n"
    "2024-01-01 00:00:00.700,100,100.5,10\n"
)


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    """``write_csv(text, name="quotes.csv")`` writes a file under tmp_path and returns its path."""

    def write(text: str | bytes, name: str = "quotes.csv") -> Path:
        path = tmp_path / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    return write


@pytest.fixture
def run_quotes(tmp_path: Path) -> Callable[..., dict]:
    """Run the quotes pipeline in-process; returns ``{file name: text}`` plus ``"metrics"``."""

    def run(*inputs: Path | str, args: tuple[str, ...] = (), output_dir: Path | None = None) -> dict:
        out = output_dir or tmp_path / "out"
        argv = ["--output_dir", str(out), "--progress", "off", *args]
        job = resolve(parse_options(argv))
        sources = tuple(p for pattern in inputs for p in expand_inputs(str(pattern)))
        build_pipeline(replace(job, source=replace(job.source, inputs=sources))).run().wait_until_finish()
        files = {name: (out / name).read_text() for name in ("mid_prices.log", "errors.log", "dead_letter.jsonl")}
        files["metrics"] = json.loads((out / "metrics.json").read_text())
        return files

    return run


@pytest.fixture(scope="session")
def prism_binary() -> str:
    """The Prism binary ``make prism`` built for this Beam version: skipped without it, failed
    under CI (``.ci/run`` runs ``make prism``, so a missing binary there is a broken CI)."""
    from runners.prism import built_binary

    path = built_binary()
    if path:
        return path
    if in_ci():
        pytest.fail("CI must have Prism: .ci/run runs make prism", pytrace=False)
    pytest.skip("Prism is not built: make prism (needs Go and the Go module proxy)")


USAGE_ERROR_PREFIX = "beam_pipeline: error:"


def assert_usage_errors(rc: int, err: str, mentions: Sequence[str] = ()) -> list[str]:
    """The contract of a bad usage: exit 2, one stderr line a problem, each with the prefix, no
    traceback; each of ``mentions`` in one of the lines. Returns the lines."""
    assert rc == 2, err
    lines = err.splitlines()
    assert lines and all(line.startswith(USAGE_ERROR_PREFIX) for line in lines), err
    assert "Traceback" not in err
    for text in mentions:
        assert any(text in line for line in lines), (text, lines)
    return lines


def assert_one_line_usage_error(rc: int, err: str) -> str:
    """A bad usage with exactly one problem (see :func:`assert_usage_errors`): its line."""
    lines = assert_usage_errors(rc, err)
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def empty_stdin(monkeypatch):
    """A replay run reads ``mode ...`` commands from stdin; in-process runs get an empty one."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))


@pytest.fixture
def processes():
    """Subprocesses started by a test; killed (by their own handle) if the test leaves them running."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


# --- the suite on the PortableRunner --------------------------------------------------------


def pytest_addoption(parser):
    parser.addoption(
        "--portable", action="store_true",
        help="run every batch pipeline the DirectRunner would run on the PortableRunner instead "
        "(--job_endpoint embed --environment_type LOOPBACK: the Fn API over gRPC); TestStream and "
        "live-feed pipelines stay on their local runners",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--portable"):
        skip = pytest.mark.skip(reason="asserts the DirectRunner preset's own runner, which --portable replaces")
        for item in items:
            if "local_runner" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _portable_runner(request):
    """With ``--portable``: the DirectRunner preset's batch runner becomes the PortableRunner."""
    if not request.config.getoption("--portable"):
        yield
        return
    from apache_beam.options.pipeline_options import PortableOptions, StandardOptions
    from apache_beam.runners.portability.portable_runner import PortableRunner

    from runners import direct

    class EmbeddedPortableRunner(PortableRunner):
        def run_pipeline(self, pipeline, options):
            portable = options.view_as(PortableOptions)
            portable.job_endpoint, portable.environment_type = "embed", "LOOPBACK"
            return super().run_pipeline(pipeline, options)

    local = direct.create

    def create(options, unbounded_source=False):
        if unbounded_source or options.view_as(StandardOptions).streaming:
            return local(options, unbounded_source)
        return EmbeddedPortableRunner()

    patch = pytest.MonkeyPatch()
    patch.setattr(direct, "create", create)
    yield
    patch.undo()
