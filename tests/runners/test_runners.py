"""Runner presets: which Beam runner each --runner name gives (no pipeline is run here)."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner, SwitchingDirectRunner
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
from apache_beam.runners.portability.portable_runner import PortableRunner

import runners
from runners import RunnerError, direct_runner, make_runner


def _runner(*flags: str):
    return make_runner(PipelineOptions(list(flags)))


@pytest.mark.local_runner
@pytest.mark.parametrize(
    "flags",
    [
        pytest.param((), id="default"),
        pytest.param(("--runner", "DirectRunner"), id="DirectRunner"),
        pytest.param(("--runner=DirectRunner",), id="DirectRunner-equals"),
        *(pytest.param(("--runner", name), id=name) for name in runners.DIRECT_NAMES),
    ],
)
def test_direct_batch_is_the_fn_api_runner(flags):
    runner = _runner(*flags)
    assert isinstance(runner, FnApiRunner)
    assert not isinstance(runner, SwitchingDirectRunner)


def test_direct_runner_hands_the_options_to_the_harness():
    runner = direct_runner(PipelineOptions(["--direct_num_workers", "3"]))
    assert isinstance(runner, FnApiRunner)
    encoded = runner._provision_info.provision_info.pipeline_options  # pylint: disable=protected-access
    assert "3" in str(encoded) and "direct_num_workers" in str(encoded)


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(("--streaming",), id="default"),
        pytest.param(("--runner", "DirectRunner", "--streaming"), id="DirectRunner"),
    ],
)
def test_direct_streaming_is_the_bundle_based_runner(flags):
    runner = _runner(*flags)
    assert isinstance(runner, BundleBasedDirectRunner)
    assert not isinstance(runner, (FnApiRunner, SwitchingDirectRunner))


def test_an_unbounded_source_runs_on_the_fn_api_runner_even_when_streaming():
    """A live feed's splittable DoFn never returns: the FnApiRunner runs the stages fused after it
    element by element, while the BundleBasedDirectRunner would wait for it."""
    runner = make_runner(PipelineOptions(["--streaming"]), unbounded_source=True)
    assert isinstance(runner, FnApiRunner)
    assert not isinstance(runner, BundleBasedDirectRunner)


def test_portable_runner_is_beams():
    assert isinstance(_runner("--runner", "PortableRunner", "--job_endpoint", "embed"), PortableRunner)


@pytest.mark.parametrize("name", ["NoSuchRunner", "nosuchmodule.NoSuchRunner"])
def test_unknown_runner_raises_runner_error(name):
    with pytest.raises(RunnerError, match=name):
        _runner("--runner", name)


def test_runner_error_is_a_value_error():
    assert issubclass(RunnerError, ValueError)


def test_unknown_class_in_existing_module_raises_runner_error():
    with pytest.raises(RunnerError, match="os.NoSuchRunner"):
        _runner("--runner", "os.NoSuchRunner")


@pytest.mark.local_runner
@pytest.mark.parametrize("name", ["Directrunner", "DIRECT", "directRunner"])
def test_direct_runner_name_in_any_case_is_the_fn_api_runner(name):
    assert isinstance(_runner("--runner", name), FnApiRunner)
