"""The command line: exit codes, one-line usage errors, --help, and successful runs.

Most cases call ``beam_pipeline.cli.main`` in-process; a few run ``python -m beam_pipeline`` as a
real subprocess to check the process exit code and everything the process writes on stderr.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pytest

from beam_pipeline import cli
from beam_pipeline.config import bundled_sample
from tests.conftest import assert_one_line_usage_error, assert_usage_errors

REPO = Path(__file__).resolve().parents[2]
OUTPUT_FILES = ("mid_prices.log", "errors.log", "dead_letter.jsonl", "metrics.json")

WORKED_EXAMPLE = (
    "timestamp,bid,ask,latency\n"
    "2024-01-01 00:00:00,1.1,1.2,120\n"
    "2024-01-01 00:00:00.200,200,201,1\n"
    "2024-01-01 00:00:00.700,100,100.5,10\n"
)


def _write(tmp_path: Path, text: str, name: str = "quotes.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "beam_pipeline", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


# --- usage errors, in-process ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(["--latency_treshold_ms", "5"], ["unrecognized", "--latency_treshold_ms"], id="typo-flag"),
        pytest.param(["--latency", "5"], ["unrecognized", "--latency"], id="abbreviated-flag"),
        pytest.param(["stray"], ["unrecognized", "stray"], id="positional"),
        pytest.param(["--latency_threshold_ms", "abc"], ["--latency_threshold_ms", "abc"], id="non-integer"),
        pytest.param(["--latency_threshold_ms=5.5"], ["--latency_threshold_ms", "5.5"], id="non-integer-equals"),
        pytest.param(["--latency_threshold_ms", "-1"], ["--latency_threshold_ms", "-1"], id="negative"),
        pytest.param(["--symbol", ""], ["--symbol", "empty"], id="empty-symbol"),
        pytest.param(["--symbol", "   "], ["--symbol", "empty"], id="blank-symbol"),
        pytest.param(["--block_bytes", "10"], ["--block_bytes", "1024", "10"], id="small-block-bytes"),
        pytest.param(["--source", "live"], ["--source", "live"], id="live-source"),
        pytest.param(["--job", "other"], ["--job", "other"], id="unknown-job"),
        pytest.param(["--progress", "on"], ["--progress", "on"], id="bad-progress"),
        pytest.param(["--runner", "NoSuchRunner"], ["NoSuchRunner"], id="unknown-runner"),
        pytest.param(["--runner", "nosuchmodule.Runner"], ["nosuchmodule.Runner"], id="unknown-dotted-runner"),
        pytest.param(["--direct_num_workers", "abc"], ["--direct_num_workers", "abc"], id="bad-beam-option"),
        pytest.param(["--runner", "PortableRunner"], ["--job_endpoint", "embed"], id="portable-no-endpoint"),
        pytest.param(["--runner", "FlinkRunner"], ["--flink_master", "--environment_type"], id="flink-no-flags"),
        pytest.param(["--runner", "DataflowRunner"], ["--project", "--region", "--temp_location"], id="dataflow-no-flags"),
        pytest.param(
            ["--runner", "DataflowRunner", "--project", "my-project", "--region", "europe-west1",
             "--temp_location", "gs://my-bucket/tmp"],
            ["cannot read the bundled sample", "--output_dir"], id="dataflow-local-files",
        ),
        pytest.param(
            ["--runner", "DataflowRunner", "--project", "my-project", "--region", "europe-west1",
             "--temp_location", "gs://my-bucket/tmp", "--input", "gs://b/q.csv", "--output_dir", "gs://b/out",
             "--trades", "trades.csv"],
            ["--trades: the workers", "cannot read trades.csv"], id="dataflow-local-trades",
        ),
        pytest.param(["--runner", "DaskRunner"], ["--dask_address", "--dask_local_workers"], id="dask-no-cluster"),
        pytest.param(["--runner", "PrismRunner", "--prism_location", "/nonexistent/prism"], ["--prism_location"],
                     id="prism-missing-binary"),
        pytest.param(["--job", "products", "--mock", "--runner", "FlinkRunner"], ["--flink_master"],
                     id="products-job-runner-flags"),
    ],
)
def test_bad_usage_exits_2_with_a_line_a_problem(args, expected, tmp_path, capsys):
    out_dir = tmp_path / "out"
    rc = cli.main(["--output_dir", str(out_dir), "--progress", "off", *args])
    captured = capsys.readouterr()
    assert_usage_errors(rc, captured.err, expected)
    assert captured.out == ""
    assert not out_dir.exists(), "a usage error must not start the pipeline"


def test_every_problem_is_reported_at_once_each_on_its_own_line(tmp_path, capsys):
    """Values, the runner's flags and the input files are all judged before the exit: a user fixes
    them in one go, not one run at a time."""
    rc = cli.main(["--output_dir", str(tmp_path / "out"), "--symbol", " ", "--block_bytes", "10",
                   "--allowed_lateness", "1s", "--runner", "DaskRunner"])
    lines = assert_usage_errors(rc, capsys.readouterr().err)
    assert [line.split(": error: ", 1)[1].split(" ", 1)[0] for line in lines] == [
        "--allowed_lateness", "--symbol", "--block_bytes", "--runner",
    ], lines


def test_input_problems_are_reported_together(tmp_path, capsys):
    """With valid flags, every input file's problem is a line: a missing model, a wrong quote header."""
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    rc = cli.main(["--output_dir", str(tmp_path / "out"), "--input", str(bad), "--trades",
                   bundled_sample("trades_sample.csv"), "--model", str(tmp_path / "no_model.json")])
    lines = assert_usage_errors(rc, capsys.readouterr().err)
    assert len(lines) == 2, lines
    assert str(bad) in lines[0] and "no_model.json" in lines[1], lines
    assert not (tmp_path / "out").exists()


def test_empty_output_dir_is_a_usage_error(capsys):
    rc = cli.main(["--output_dir", "", "--progress", "off"])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert "--output_dir" in line


def test_input_matching_nothing(tmp_path, capsys):
    pattern = str(tmp_path / "nothing-here-*.csv")
    rc = cli.main(["--input", pattern, "--output_dir", str(tmp_path / "out")])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert pattern in line


@pytest.mark.parametrize("where, message", [("a-file", "not a directory"), ("a-file/below", "cannot create it")])
def test_output_dir_that_cannot_be_a_directory_fails_before_the_run(where, message, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    rc = cli.main(["--output_dir", str(tmp_path / where), "--progress", "off"])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert message in line and str(tmp_path / where) in line


def test_output_dir_is_created(tmp_path, capsys):
    out = tmp_path / "new" / "nested"
    assert cli.main(["--output_dir", str(out), "--progress", "off"]) == 0
    assert (out / "metrics.json").exists()


def test_input_that_is_a_directory_matches_nothing(tmp_path, capsys):
    rc = cli.main(["--input", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert str(tmp_path) in line


@pytest.mark.parametrize(
    "header, missing",
    [
        ("timestamp,bid,latency", "ask_price"),
        ("timestamp,ask_price,latency_ms", "bid_price"),
        ("time,bid,ask", "timestamp"),
    ],
)
def test_header_lacking_a_required_column(header, missing, tmp_path, capsys):
    path = _write(tmp_path, f"{header}\n2024-01-01 00:00:00,1,2\n")
    rc = cli.main(["--input", str(path), "--output_dir", str(tmp_path / "out")])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert missing in line
    assert str(path) in line


def test_one_bad_file_among_several_is_named(tmp_path, capsys):
    _write(tmp_path, WORKED_EXAMPLE, "a.csv")
    bad = _write(tmp_path, "timestamp,bid\n2024-01-01 00:00:00,1\n", "b.csv")
    rc = cli.main(["--input", str(tmp_path / "*.csv"), "--output_dir", str(tmp_path / "out")])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert str(bad) in line and "ask_price" in line
    assert not (tmp_path / "out").exists()


def test_empty_input_file(tmp_path, capsys):
    path = _write(tmp_path, "")
    rc = cli.main(["--input", str(path), "--output_dir", str(tmp_path / "out")])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert str(path) in line


# --- --help ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_our_flags_not_beams(flag, capsys):
    assert cli.main([flag]) == 0
    captured = capsys.readouterr()
    for name in ("--input", "--output_dir", "--latency_threshold_ms", "--symbol"):
        assert name in captured.out
    assert "--dataflow_endpoint" not in captured.out
    assert "--temp_location" not in captured.out
    assert captured.err == ""


def test_help_wins_over_other_errors(capsys):
    assert cli.main(["--latency_treshold_ms", "5", "--help"]) == 0
    assert "--latency_threshold_ms" in capsys.readouterr().out


# --- successful runs, in-process -------------------------------------------------------------


class _PythonOnly(beam.PTransform):
    """A Python-only primitive: no URN a portable runner knows."""

    def expand(self, pcoll):
        return beam.pvalue.PCollection(pcoll.pipeline, is_bounded=True)


def test_a_transform_flink_cannot_run_is_refused_before_submitting(tmp_path, capsys, monkeypatch):
    real_build = cli.build_pipeline

    def build_with_python_only_step(job, **kwargs):
        pipeline = real_build(job, **kwargs)
        _ = pipeline | "Seed" >> beam.Create([1]) | "PythonOnly" >> _PythonOnly()
        return pipeline

    monkeypatch.setattr(cli, "build_pipeline", build_with_python_only_step)
    rc = cli.main(["--runner", "FlinkRunner", "--flink_master", "localhost:8081", "--environment_type", "LOOPBACK",
                   "--output_dir", str(tmp_path / "out"), "--progress", "off"])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert "--runner FlinkRunner cannot run PythonOnly" in line


@pytest.mark.local_runner
def test_prism_offline_runs_on_the_local_runner_after_one_warning(tmp_path, capsys, caplog, monkeypatch):
    from runners import prism

    monkeypatch.setattr(prism, "_warned", set())
    monkeypatch.setattr(prism, "local_binary", lambda options: None)
    monkeypatch.setattr(prism, "reachable", lambda url: False)  # offline, without trying the network
    caplog.set_level(logging.INFO)
    path = _write(tmp_path, WORKED_EXAMPLE)
    rc = cli.main(["--runner", "PrismRunner", "--input", str(path), "--output_dir", str(tmp_path / "out"),
                   "--progress", "off"])
    assert rc == 0, capsys.readouterr().err
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING and "PrismRunner" in r.getMessage()]
    assert "FnApiRunner" in warning.getMessage()
    assert (tmp_path / "out" / "mid_prices.log").read_text().count("\n") == 2


def _run_worked_example(tmp_path: Path, threshold: str, capsys) -> tuple[Path, str]:
    path = _write(tmp_path, WORKED_EXAMPLE)
    out_dir = tmp_path / f"out-{threshold}"
    rc = cli.main(
        ["--input", str(path), "--output_dir", str(out_dir), "--progress", "off", "--latency_threshold_ms", threshold]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return out_dir, captured.out


def test_worked_example(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)  # Beam logs its Prism attempt at INFO only
    out_dir, summary = _run_worked_example(tmp_path, "20", capsys)
    assert not [r for r in caplog.records if "prism" in r.getMessage().lower()], "DirectRunner tried Prism"
    assert (out_dir / "mid_prices.log").read_text() == (
        "2024-01-01 00:00:00.200, 200.5\n2024-01-01 00:00:00.700, 100.25\n"
    )
    assert (out_dir / "errors.log").read_text() == (
        "No mid price at 2024-01-01 00:00:00.000 as latency 120ms is bigger than 20ms\n"
    )
    assert (out_dir / "dead_letter.jsonl").read_text() == ""
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["records_in"] == 3
    assert (metrics["mid_prices"], metrics["latency_filtered"], metrics["dead_lettered"]) == (2, 1, 0)
    assert metrics["balanced"] is True
    assert metrics["latency_threshold_ms"] == 20
    for name in OUTPUT_FILES:
        assert str(out_dir / name) in summary
    assert "balance" in summary and "DO NOT BALANCE" not in summary


def test_latency_equal_to_threshold_is_kept(tmp_path, capsys):
    out_dir, _ = _run_worked_example(tmp_path, "120", capsys)
    assert (out_dir / "mid_prices.log").read_text() == (
        "2024-01-01 00:00:00.000, 1.15\n2024-01-01 00:00:00.200, 200.5\n2024-01-01 00:00:00.700, 100.25\n"
    )
    assert (out_dir / "errors.log").read_text() == ""
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert (metrics["records_in"], metrics["mid_prices"], metrics["latency_filtered"]) == (3, 3, 0)
    assert metrics["balanced"] is True


def test_threshold_beyond_int64_is_a_usage_error(tmp_path, capsys):
    path = _write(tmp_path, WORKED_EXAMPLE)
    rc = cli.main(
        ["--input", str(path), "--output_dir", str(tmp_path / "out"), "--progress", "off",
         "--latency_threshold_ms", str(2**63)]
    )
    assert_one_line_usage_error(rc, capsys.readouterr().err)


# --- real subprocesses -----------------------------------------------------------------------


def test_subprocess_default_run(tmp_path):
    result = _run_cli("--output_dir", str(tmp_path), "--progress", "off")
    assert result.returncode == 0, result.stderr
    for name in OUTPUT_FILES:
        assert (tmp_path / name).is_file(), name
        assert str(tmp_path / name) in result.stdout
    assert "balance" in result.stdout and "DO NOT BALANCE" not in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["balanced"] is True and metrics["records_in"] > 0
    assert metrics["records_in"] == metrics["mid_prices"] + metrics["latency_filtered"] + metrics["dead_lettered"]
    assert "apitools not found" not in result.stderr + result.stdout
    assert "prism" not in (result.stderr + result.stdout).lower()
    assert "Traceback" not in result.stderr


def test_subprocess_typo_flag(tmp_path):
    result = _run_cli("--output_dir", str(tmp_path / "out"), "--latency_treshold_ms", "5")
    line = assert_one_line_usage_error(result.returncode, result.stderr)
    assert "--latency_treshold_ms" in line
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_subprocess_bad_header(tmp_path):
    path = _write(tmp_path, "timestamp,bid\n2024-01-01 00:00:00,1\n")
    result = _run_cli("--input", str(path), "--output_dir", str(tmp_path / "out"))
    line = assert_one_line_usage_error(result.returncode, result.stderr)
    assert "ask_price" in line and str(path) in line


def test_an_output_folder_another_process_creates_first_is_fine(tmp_path, monkeypatch):
    """Consumers of one queue group start together and share --output_dir: losing the race to
    create it is not an error (it was, now and then, in CI)."""
    from apache_beam.io.filesystems import FileSystems

    target = tmp_path / "shared"
    real_mkdirs = FileSystems.mkdirs

    def racing_mkdirs(path):
        real_mkdirs(path)  # the other process wins...
        raise OSError(17, "File exists", path)  # ...so ours fails

    monkeypatch.setattr(FileSystems, "mkdirs", staticmethod(racing_mkdirs))
    cli.prepare_output_dir(str(target))
    assert target.is_dir()
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(cli.UsageError, match="not a directory"):
        cli.prepare_output_dir(str(blocked))


def test_the_summary_has_a_row_for_every_file_the_stages_declare(tmp_path, capsys):
    """The rows, their counts and the balance lines come from the stages' declarations."""
    from beam_pipeline.config import resolve
    from beam_pipeline.options import parse_options
    from beam_pipeline.pipeline import run_accounting
    from transforms.accounting import combine

    argv = ["--output_dir", str(tmp_path / "out"), "--progress", "off", "--window", "fixed:1s",
            "--trades", bundled_sample("trades_sample.csv")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    declared = combine(run_accounting(resolve(parse_options(argv))))
    assert len(declared.outputs) == 10  # mid prices, errors, dead letters, windows, late, 4 trade files, scores
    for output in declared.outputs:
        row = next(line for line in out.splitlines() if f"{output.file} " in line)
        assert f"{metrics[output.metric]:,}" in row, row
    for check in ("mid-price counts", "window counts", "trade counts", "score counts"):
        assert f"{check} balance: " in out
    assert "Read 1,500 trades from 1 file(s)" in out
