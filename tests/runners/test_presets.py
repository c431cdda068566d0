"""Runner presets: the flags each runner needs, the ones a preset adds, and its one-line problems."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    DebugOptions,
    PipelineOptions,
    PortableOptions,
    PrismRunnerOptions,
    SetupOptions,
)
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
from apache_beam.runners.portability.prism_runner import PrismRunner

import runners
from runners import RunnerError, dataflow, flink, portable, prism
from runners.common import environment_problems, host_port_problem

DATAFLOW_OK = ("--runner", "DataflowRunner", "--project", "my-project", "--region", "europe-west1",
               "--temp_location", "gs://my-bucket/tmp")


def _options(*flags: str) -> PipelineOptions:
    return PipelineOptions(list(flags))


@pytest.mark.parametrize("preset", runners.PRESETS, ids=lambda m: m.NAMES[0])
def test_every_preset_answers_to_its_names_in_any_case(preset):
    for name in preset.NAMES:
        assert runners.preset_for(name) is preset
        assert runners.preset_for(name.upper()) is preset


def test_a_name_without_preset_is_left_to_beam():
    assert runners.preset_for("SparkRunner") is None
    assert runners.check(_options("--runner", "SparkRunner")) == []


def test_default_runner_is_the_direct_preset():
    assert runners.preset_for(None) is runners.direct
    assert runners.is_direct(None) and not runners.is_direct("PrismRunner")


def test_make_runner_reports_every_problem_on_one_line():
    with pytest.raises(RunnerError) as raised:
        runners.make_runner(_options("--runner", "DataflowRunner"))
    message = str(raised.value)
    assert "\n" not in message
    for flag in ("--project", "--region", "--temp_location"):
        assert flag in message


def test_negative_direct_workers_is_a_problem():
    assert runners.check(_options("--direct_num_workers", "-1"))
    assert runners.check(_options("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")) == []


# --- host:port ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["localhost:8099", "10.0.0.1:80", "http://flink:8081", "[::1]:50000"])
def test_host_port_accepts(value):
    assert host_port_problem("--x", value) is None


@pytest.mark.parametrize("value", ["localhost", "8099", "host:port", "host:70000", "host:80/extra", ""])
def test_host_port_rejects(value):
    assert host_port_problem("--x", value)


# --- PortableRunner -------------------------------------------------------------------------


def test_portable_needs_a_job_endpoint():
    (problem,) = portable.check(_options("--runner", "PortableRunner"))
    assert "--job_endpoint" in problem and "embed" in problem


def test_portable_embed_gets_loopback():
    options = _options("--runner", "PortableRunner", "--job_endpoint", "embed")
    assert portable.check(options) == []
    assert options.view_as(PortableOptions).environment_type == "LOOPBACK"


def test_portable_keeps_the_users_environment():
    options = _options("--job_endpoint", "embed", "--environment_type", "EXTERNAL", "--environment_config", "localhost:50000")
    assert portable.check(options) == []
    assert options.view_as(PortableOptions).environment_type == "EXTERNAL"


def test_portable_remote_job_server_needs_an_environment_type():
    (problem,) = portable.check(_options("--job_endpoint", "localhost:8099"))
    assert "--environment_type" in problem and "LOOPBACK" in problem


def test_portable_rejects_a_malformed_endpoint():
    (problem,) = portable.check(_options("--job_endpoint", "localhost"))
    assert "HOST:PORT" in problem


def test_docker_on_an_embedded_job_server_needs_docker(monkeypatch):
    monkeypatch.setattr("runners.common.shutil.which", lambda name: None)
    (problem,) = portable.check(_options("--job_endpoint", "embed", "--environment_type", "DOCKER"))
    assert "docker" in problem and "LOOPBACK" in problem
    monkeypatch.setattr("runners.common.shutil.which", lambda name: "/usr/bin/docker")
    assert portable.check(_options("--job_endpoint", "embed", "--environment_type", "DOCKER")) == []


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--environment_type", "VM"), "must be one of"),
        (("--environment_type", "PROCESS"), "worker command"),
        (("--environment_type", "PROCESS", "--environment_config", "not json"), "must be JSON"),
        (("--environment_type", "EXTERNAL"), "worker pool"),
        (("--environment_type", "EXTERNAL", "--environment_config", "pool"), "HOST:PORT"),
    ],
)
def test_environment_problems(flags, fragment):
    (problem,) = environment_problems(_options(*flags), "FlinkRunner")
    assert fragment in problem


@pytest.mark.parametrize(
    "flags",
    [
        ("--environment_type", "LOOPBACK"),
        ("--environment_type", "loopback"),
        ("--environment_type", "PROCESS", "--environment_config", '{"command": "/opt/apache/beam/boot"}'),
        ("--environment_type", "PROCESS", "--environment_options", "process_command=/opt/apache/beam/boot"),
        ("--environment_type", "EXTERNAL", "--environment_options", "external_service_address=localhost:50000"),
    ],
)
def test_environments_that_can_start(flags):
    assert environment_problems(_options(*flags), "FlinkRunner") == []


# --- FlinkRunner ----------------------------------------------------------------------------


def test_flink_needs_a_master_and_an_environment():
    problems = flink.check(_options("--runner", "FlinkRunner"))
    assert len(problems) == 2
    assert "--flink_master" in problems[0] and "--environment_type" in problems[1]


def test_flink_master_given_as_beams_default_still_counts_as_missing():
    """Beam's default is [auto]; only a value the user gives is accepted as a choice."""
    assert any("--flink_master" in p for p in flink.check(_options("--environment_type", "LOOPBACK")))


@pytest.mark.parametrize("master", ["localhost:8081", "flink-jobmanager:8081", "[local]"])
def test_flink_accepts(master):
    assert flink.check(_options("--flink_master", master, "--environment_type", "LOOPBACK")) == []


def test_flink_rejects_a_master_without_port():
    (problem,) = flink.check(_options("--flink_master", "flink-jobmanager", "--environment_type", "LOOPBACK"))
    assert "HOST:PORT" in problem


# --- DataflowRunner -------------------------------------------------------------------------


def test_dataflow_with_the_required_flags_gets_this_repos_setup_file():
    options = _options(*DATAFLOW_OK)
    assert dataflow.check(options) == []
    assert Path(options.view_as(SetupOptions).setup_file) == dataflow.REPO_SETUP
    assert dataflow.is_this_package(dataflow.REPO_SETUP)


@pytest.mark.parametrize(
    "replace, value, fragment",
    [
        ("--project", "x", "not a Google Cloud project id"),
        ("--region", "europe", "not a Google Cloud region"),
        ("--temp_location", "/tmp/beam", "must be a gs://"),
        ("--temp_location", "gs://", "must be a gs://"),
    ],
)
def test_dataflow_rejects_bad_values(replace, value, fragment):
    flags = list(DATAFLOW_OK)
    flags[flags.index(replace) + 1] = value
    (problem,) = dataflow.check(_options(*flags))
    assert fragment in problem and replace in problem


def test_dataflow_rejects_a_bad_job_name_and_staging_location():
    problems = dataflow.check(_options(*DATAFLOW_OK, "--job_name", "Quotes_1", "--staging_location", "s3://b/x"))
    assert len(problems) == 2


def test_dataflow_setup_file_must_be_this_packages(tmp_path):
    other = tmp_path / "setup.py"
    other.write_text('from setuptools import setup\nsetup(name="something_else")\n')
    (problem,) = dataflow.check(_options(*DATAFLOW_OK, "--setup_file", str(other)))
    assert "must be the setup.py of beam_pipeline" in problem
    (problem,) = dataflow.check(_options(*DATAFLOW_OK, "--setup_file", str(tmp_path / "missing.py")))
    assert "no such file" in problem
    assert dataflow.check(_options(*DATAFLOW_OK, "--setup_file", str(dataflow.REPO_SETUP))) == []


def test_dataflow_custom_image_needs_no_setup_file(monkeypatch, tmp_path):
    monkeypatch.setattr(dataflow, "REPO_SETUP", tmp_path / "setup.py")  # an installed package: no checkout
    (problem,) = dataflow.check(_options(*DATAFLOW_OK))
    assert "--setup_file" in problem and "--sdk_container_image" in problem
    options = _options(*DATAFLOW_OK, "--sdk_container_image", "europe-docker.pkg.dev/p/r/quotes:1")
    assert dataflow.check(options) == []
    assert options.view_as(SetupOptions).setup_file is None


def test_dataflow_without_the_gcp_extra_is_a_runner_error(monkeypatch):
    monkeypatch.setattr(dataflow.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RunnerError, match=r"pip install '\.\[dataflow\]'"):
        runners.make_runner(_options(*DATAFLOW_OK))


# --- PrismRunner ----------------------------------------------------------------------------


def test_prism_uses_a_local_binary(tmp_path):
    binary = tmp_path / "prism"
    binary.write_bytes(b"\x7fELF")
    options = _options("--runner", "PrismRunner", "--prism_location", str(binary))
    assert prism.local_binary(options) == str(binary)
    assert isinstance(prism.create(options, can_download=pytest.fail), PrismRunner)


def test_prism_uses_beams_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(prism, "BUILD_ROOT", str(tmp_path / "not-built"))
    options = _options("--runner", "PrismRunner")
    assert prism.local_binary(options, cache=str(tmp_path)) is None
    (tmp_path / Path(prism.release_url()).name).write_bytes(b"PK")
    assert prism.local_binary(options, cache=str(tmp_path)) == str(tmp_path / Path(prism.release_url()).name)


def _fake_binary(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF")
    path.chmod(mode)
    return path


def test_prism_uses_the_binary_make_prism_built(tmp_path, monkeypatch):
    monkeypatch.setattr(prism, "BUILD_ROOT", str(tmp_path))
    options = _options("--runner", "PrismRunner")
    assert prism.local_binary(options, cache=str(tmp_path / "beam")) is None
    built = _fake_binary(tmp_path / f"v{prism.BEAM_VERSION}" / "prism")
    _fake_binary(tmp_path / "v2.0.0" / "prism")  # another Beam version's: never taken
    assert prism.local_binary(options, cache=str(tmp_path / "beam")) == str(built)
    runner = prism.create(options, can_download=pytest.fail)
    assert isinstance(runner, PrismRunner)
    # Beam reads only --prism_location: it must name the binary found, or Beam would download one
    assert options.view_as(PrismRunnerOptions).prism_location == str(built)
    # and the run gets a job server of its own, not Beam's process-wide one (see prism.own_job_server)
    assert options.view_as(DebugOptions).lookup_experiment(prism.OWN_JOB_SERVER)


def test_prism_location_wins_over_the_built_binary(tmp_path, monkeypatch):
    monkeypatch.setattr(prism, "BUILD_ROOT", str(tmp_path))
    _fake_binary(tmp_path / f"v{prism.BEAM_VERSION}" / "prism")
    mine = _fake_binary(tmp_path / "mine" / "prism")
    assert prism.local_binary(_options("--prism_location", str(mine))) == str(mine)


def test_a_built_file_that_is_not_executable_is_not_taken(tmp_path):
    _fake_binary(tmp_path / f"v{prism.BEAM_VERSION}" / "prism", mode=0o644)
    assert prism.built_binary(root=str(tmp_path)) is None


def test_make_prism_builds_the_go_command_the_preset_names_at_beams_version():
    script = (Path(__file__).parents[2] / "scripts" / "build_prism.sh").read_text()
    module, package = prism.GO_PACKAGE.split("/go/cmd/")[0], prism.GO_PACKAGE
    assert f"module={module}\n" in script and "package=$module/go/cmd/prism " in script
    assert package == "github.com/apache/beam/sdks/v2/go/cmd/prism"
    assert 'go install "$package@v$version"' in script and "go build -o \"$target/prism\" ./go/cmd/prism" in script
    assert "from apache_beam.version import __version__" in script


def test_prism_release_url_names_this_beam_version():
    assert prism.release_url().startswith("https://github.com/apache/beam/releases/download/v2.77.0/")


def test_prism_missing_local_location_is_a_problem(tmp_path):
    (problem,) = prism.check(_options("--prism_location", str(tmp_path / "prism")))
    assert "no such file" in problem


def test_prism_downloads_when_the_host_answers(monkeypatch, tmp_path):
    monkeypatch.setattr(prism, "BIN_CACHE", str(tmp_path))
    monkeypatch.setattr(prism, "BUILD_ROOT", str(tmp_path / "not-built"))
    asked = []
    runner = prism.create(_options("--runner", "PrismRunner"), can_download=lambda url: asked.append(url) or True)
    assert isinstance(runner, PrismRunner)
    assert asked == [prism.release_url()]


@pytest.mark.local_runner
def test_prism_offline_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(prism, "_warned", set())
    monkeypatch.setattr(prism, "local_binary", lambda options: None)
    caplog.set_level(logging.WARNING, logger="runners.prism")
    for _ in range(3):
        runner = prism.create(_options("--runner", "PrismRunner"), can_download=lambda url: False)
        assert isinstance(runner, FnApiRunner)
    (record,) = caplog.records
    assert "unreachable" in record.getMessage() and "FnApiRunner" in record.getMessage()


def test_prism_probe_of_a_closed_port_is_quick_and_false():
    import socket

    with socket.socket() as sock:  # bound, not listening: connections are refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert prism.reachable(f"https://127.0.0.1:{port}/prism.zip", timeout=1) is False


def _load_no_spin():
    import importlib.util

    path = Path(__file__).parents[2] / "scripts" / "prism" / "no-spin.py"
    spec = importlib.util.spec_from_file_location("no_spin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prism_fix_stops_the_spin_once_and_refuses_changed_source(tmp_path):
    no_spin = _load_no_spin()
    stage = tmp_path / no_spin.STAGE
    stage.parent.mkdir(parents=True)
    loop = "\tfor {\n\t\tselect {\n" + no_spin.BEFORE + "\t\t}\n\t}\n"
    stage.write_text(loop)
    assert no_spin.main(str(tmp_path)) == 0
    patched = stage.read_text()
    assert "dataReady = nil" in patched and patched.count("dataFinished = true") == 1
    assert no_spin.main(str(tmp_path)) == 0 and stage.read_text() == patched  # applied once
    stage.write_text(loop.replace("dataFinished = true", "finished = true"))
    assert no_spin.main(str(tmp_path)) == 1  # Beam changed the loop: say so, do not build a guess
