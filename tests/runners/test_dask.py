"""runners.dask: the historical job on a local ``distributed`` cluster, byte for byte what the
DirectRunner writes, and the fixes to Beam's DaskRunner that make it so.

One 2-worker cluster serves the module (``--dask_address``); one test starts and stops its own
(``--dask_local_workers 2``).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import apache_beam as beam
import fastavro
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, GlobalWindow, TimestampedValue
from apache_beam.utils.windowed_value import WindowedValue

import runners.dask as dask_preset
from beam_pipeline.config import bundled_sample, resolve
from beam_pipeline.options import parse_options
from beam_pipeline.pipeline import build_pipeline
from runners.common import RunnerError
from tests.beam_pipeline.test_tenants import clean_rows, flood_rows, write
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
RUN_ID = "dasktest0001"  # the same on both runners: the Avro file names contain it


@pytest.fixture(scope="module")
def scheduler() -> str:
    """The address of one 2-worker cluster on 127.0.0.1 for the whole module."""
    with dask_preset.local_cluster(2) as cluster:
        yield cluster.scheduler_address


def dask_flags(address: str) -> list[str]:
    return ["--runner", "DaskRunner", "--dask_address", address]


def run_job(out: Path, args: list[str], runner_flags: list[str] = ()) -> None:
    """The quotes job as the CLI builds it, on the DirectRunner or (``runner_flags``) on Dask."""
    options = parse_options(["--output_dir", str(out), "--progress", "off", *args, *runner_flags])
    runner = dask_preset.create(options) if runner_flags else None
    build_pipeline(resolve(options), runner=runner, run_id=RUN_ID).run().wait_until_finish()


def output_files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` but metrics.json and Avro files (random sync markers), by relative path."""
    return {
        str(path.relative_to(out)): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name != "metrics.json" and path.suffix != ".avro"
    }


def avro_records(out: Path) -> dict[str, list[dict]]:
    records = {}
    for path in sorted(out.rglob("*.avro")):
        with path.open("rb") as stream:
            records[str(path.relative_to(out))] = list(fastavro.reader(stream))
    return records


def counts(out: Path) -> dict:
    """metrics.json without its timing, ``<out>`` for the output folder (--avro_output is in it)."""
    metrics = json.loads((out / "metrics.json").read_text().replace(str(out), "<out>"))
    metrics.pop("run_seconds")
    return metrics


@pytest.fixture(scope="module")
def tenant_inputs(tmp_path_factory) -> Path:
    """Three files: two clean tenants and a malformed flood (every kind of dead letter)."""
    folder = tmp_path_factory.mktemp("tenants")
    write(folder / "acme.csv", clean_rows("acme", 1, 300))
    write(folder / "zeta.csv", clean_rows("zeta", 2, 300))
    span = max(ms for ms, _ in clean_rows("acme", 1, 300))
    write(folder / "mallory.csv", flood_rows(3, 900, span, far_future=True))
    return folder


JOBS = {
    "bundled-sample": [],
    "sample-sessions": ["--window", "session:30ms"],
    "sample-trades": ["--trades", bundled_sample("trades_sample.csv")],
    "tenants-windows-avro": ["--partition_by_tenant", "--window", "fixed:100ms", "--allowed_lateness", "20ms",
                             "--block_bytes", "4096", "--avro_output", "{out}/avro"],
}


@pytest.mark.parametrize("job", JOBS)
def test_the_job_writes_what_the_direct_runner_writes(job, scheduler, tenant_inputs, tmp_path):
    args = list(JOBS[job])
    if job.startswith("tenants"):
        args += ["--input", str(tenant_inputs / "*.csv")]
    outs = {}
    for name, flags in {"direct": [], "dask": dask_flags(scheduler)}.items():
        outs[name] = out = tmp_path / name
        run_job(out, [arg.replace("{out}", str(out)) for arg in args], flags)
    direct, dask = outs["direct"], outs["dask"]
    assert output_files(dask) == output_files(direct)
    assert avro_records(dask) == avro_records(direct)
    assert counts(dask) == counts(direct)
    metrics = counts(dask)
    assert metrics["balanced"] and metrics["records_in"] > 0
    if job.startswith("tenants"):
        assert metrics["windows_emitted"] and len(metrics["partitions"]) == 4
        assert len(avro_records(dask)) >= 8  # quotes and mid prices per tenant, several blocks


def test_local_workers_start_a_cluster_and_stop_it_after_the_run(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="runners.dask")
    out = tmp_path / "out"
    run_job(out, [], ["--runner", "DaskRunner", "--dask_local_workers", "2"])
    assert counts(out)["balanced"] and (out / "mid_prices.log").stat().st_size > 0
    (address,) = [r.args[0] for r in caplog.records if r.getMessage().startswith("started a local Dask cluster")]
    assert address.startswith("tcp://127.0.0.1:")
    assert_refused(address)


def test_a_failing_run_raises_and_still_stops_its_cluster(caplog):
    caplog.set_level(logging.INFO, logger="runners.dask")
    options = PipelineOptions(["--dask_local_workers", "1"])
    pipeline = beam.Pipeline(runner=dask_preset.create(options), options=options)
    _ = pipeline | beam.Create([1, 0]) | "Divide" >> beam.Map(lambda x: 1 // x)
    with pytest.raises(ZeroDivisionError, match="Divide"):
        pipeline.run().wait_until_finish()
    (address,) = [r.args[0] for r in caplog.records if r.getMessage().startswith("started a local Dask cluster")]
    assert_refused(address)


def assert_refused(address: str) -> None:
    port = int(address.rsplit(":", 1)[1])

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused, 10, f"the cluster at {address} to stop")


# --- Beam's DaskRunner bugs, each on a small pipeline ------------------------------------------


class _SplitEvenOdd(beam.DoFn):
    def process(self, number: int):
        yield number if number % 2 == 0 else beam.pvalue.TaggedOutput("odd", number)


class _CountInFinishBundle(beam.DoFn):
    def start_bundle(self):
        self._count = 0

    def process(self, element):
        self._count += 1

    def finish_bundle(self):
        yield WindowedValue(self._count, 0, [GlobalWindow()])


class _AppendToFile(beam.DoFn):
    """Appends a line per element to a file: how many times an upstream stage really ran."""

    def __init__(self, path: str):
        self._path = path

    def process(self, element):
        with open(self._path, "a", encoding="utf-8") as log:
            log.write(f"{element}\n")
        yield element


def dask_pipeline(address: str) -> beam.Pipeline:
    options = PipelineOptions(["--dask_address", address])
    return beam.Pipeline(runner=dask_preset.create(options), options=options)


def test_each_tagged_output_gets_only_its_own_elements(scheduler):
    with dask_pipeline(scheduler) as pipeline:
        parts = pipeline | beam.Create(range(10)) | beam.ParDo(_SplitEvenOdd()).with_outputs("odd", main="even")
        assert_that(parts.even, equal_to([0, 2, 4, 6, 8]), label="Even")
        assert_that(parts.odd, equal_to([1, 3, 5, 7, 9]), label="Odd")


def test_every_branch_runs_and_a_shared_stage_runs_once(scheduler, tmp_path):
    shared, left, right = (tmp_path / name for name in ("shared.txt", "left.txt", "right.txt"))
    with dask_pipeline(scheduler) as pipeline:
        numbers = pipeline | beam.Create(range(5)) | "Shared" >> beam.ParDo(_AppendToFile(str(shared)))
        _ = numbers | "Left" >> beam.ParDo(_AppendToFile(str(left)))
        _ = numbers | "Right" >> beam.ParDo(_AppendToFile(str(right)))
    assert sorted(left.read_text().split()) == sorted(right.read_text().split()) == list("01234")
    assert sorted(shared.read_text().split()) == list("01234")


def test_finish_bundle_outputs_side_inputs_and_windows(scheduler):
    with dask_pipeline(scheduler) as pipeline:
        numbers = pipeline | "Numbers" >> beam.Create(range(10))
        counted = numbers | beam.ParDo(_CountInFinishBundle()) | "SumCounts" >> beam.CombineGlobally(sum)
        assert_that(counted, equal_to([10]), label="FinishBundle")
        total = numbers | "Total" >> beam.CombineGlobally(sum)
        shares = numbers | beam.Map(lambda n, whole: (n, whole), beam.pvalue.AsSingleton(total))
        assert_that(shares, equal_to([(n, 45) for n in range(10)]), label="SideInput")
        windowed = (
            pipeline
            | "Stamped" >> beam.Create([("a", 1), ("a", 2), ("a", 11), ("b", 12)])
            | beam.Map(lambda kv: TimestampedValue(kv, kv[1]))
            | beam.WindowInto(FixedWindows(10))
            | beam.GroupByKey()
            | beam.MapTuple(lambda key, values: (key, sorted(values)))
        )
        assert_that(windowed, equal_to([("a", [1, 2]), ("a", [11]), ("b", [12])]), label="Windows")


def test_run_bundle_keeps_finish_bundle_outputs_and_starts_fresh_each_bundle():
    node = SimpleNamespace(
        transform=beam.ParDo(_CountInFinishBundle()), full_label="Count", side_inputs=(),
        inputs=(SimpleNamespace(windowing=beam.Windowing(beam.window.GlobalWindows())),),
    )
    spec = dask_preset.bundle_spec(node)
    items = [WindowedValue(n, 0, [GlobalWindow()]) for n in range(3)]
    for _ in range(2):  # a second bundle does not see the first one's outputs
        assert [(tag, wv.value) for tag, wv in dask_preset.run_bundle(items, spec)] == [(None, 3)]


def test_select_tag_keeps_one_output_unwrapped():
    items = [(None, "a"), ("dead_letters", "b"), (None, "c"), ("counts", "d")]
    assert dask_preset.select_tag(items, None) == ["a", "c"]
    assert dask_preset.select_tag(items, "dead_letters") == ["b"]
    assert dask_preset.select_tag(items, "other") == []


def test_leaf_transforms_are_those_nobody_reads():
    def node(name, inputs=(), sides=(), outputs=1):
        return SimpleNamespace(name=name, inputs=tuple(inputs), outputs={i: object() for i in range(outputs)},
                               side_inputs=tuple(SimpleNamespace(pvalue=pcoll) for pcoll in sides))

    source = node("source", outputs=2)  # two tagged outputs
    main, tagged = source.outputs.values()
    counts_only = node("counts")
    middle = node("middle", [main])
    last_visited = node("last", [tagged], sides=[counts_only.outputs[0]])
    branch = node("branch", [middle.outputs[0]])
    nodes = [source, counts_only, middle, branch, last_visited]
    assert [n.name for n in dask_preset.leaf_transforms(nodes)] == ["branch", "last"]


def test_unsupported_dofns_are_refused_before_anything_runs():
    class Stateful(beam.DoFn):
        STATE = beam.transforms.userstate.CombiningValueStateSpec("n", sum)

        def process(self, kv, state=beam.DoFn.StateParam(STATE)):
            yield kv

    node = SimpleNamespace(transform=beam.ParDo(Stateful()), full_label="Stateful", side_inputs=(),
                           inputs=(SimpleNamespace(windowing=None),))
    with pytest.raises(RunnerError, match="Stateful.*stateful"):
        dask_preset.bundle_spec(node)


# --- the preset: flags and checks -----------------------------------------------------------


@pytest.mark.parametrize(
    "flags, expected",
    [
        pytest.param([], "--dask_address HOST:PORT (a running scheduler) or --dask_local_workers N", id="neither"),
        pytest.param(["--dask_address", "127.0.0.1:8786", "--dask_local_workers", "2"], "exactly one of", id="both"),
        pytest.param(["--dask_local_workers", "0"], "--dask_local_workers must be 1 or more, got 0", id="zero"),
        pytest.param(["--dask_local_workers", "-3"], "--dask_local_workers must be 1 or more, got -3", id="negative"),
        pytest.param(["--dask_address", "127.0.0.1"], "--dask_address must be HOST:PORT", id="no-port"),
        pytest.param(["--dask_address", "127.0.0.1:99999"], "--dask_address must be HOST:PORT", id="bad-port"),
        pytest.param(["--dask_address", "tls://127.0.0.1:8786"], "--dask_address must be HOST:PORT", id="scheme"),
        pytest.param(["--dask_address", "10.1.2.3:8786"], "only a scheduler on 127.0.0.1", id="not-local"),
        pytest.param(["--dask_local_workers", "2", "--dask_partitions", "0"], "--dask_partitions must be 1 or more",
                     id="partitions"),
    ],
)
def test_check_reports_bad_flags_in_one_line(flags, expected):
    (problem,) = dask_preset.check(PipelineOptions(flags))
    assert expected in problem and "\n" not in problem
    with pytest.raises(RunnerError, match="dask"):
        dask_preset.create(PipelineOptions(flags))


@pytest.mark.parametrize("flags", [["--dask_local_workers", "1"], ["--dask_address", "tcp://127.0.0.1:8786"],
                                   ["--dask_address", "localhost:8786"]])
def test_check_accepts_good_flags(flags):
    assert dask_preset.check(PipelineOptions(flags)) == []


def test_addresses_are_normalized_to_loopback_tcp():
    assert dask_preset.parse_address("localhost:8786") == "tcp://127.0.0.1:8786"
    assert dask_preset.parse_address(" tcp://127.0.0.1:9000/ ") == "tcp://127.0.0.1:9000"


def test_without_dask_installed_check_says_how_to_install(monkeypatch):
    monkeypatch.setattr(dask_preset, "dask_installed", lambda: False)
    assert dask_preset.check(PipelineOptions(["--dask_local_workers", "2"])) == [
        "DaskRunner needs the dask extra: pip install '.[dask]'"]


def test_streaming_and_unbounded_sources_are_refused():
    with pytest.raises(RunnerError, match="batch"):
        dask_preset.create(PipelineOptions(["--dask_local_workers", "2", "--streaming"]))
    with pytest.raises(RunnerError, match="batch"):
        dask_preset.create(PipelineOptions(["--dask_local_workers", "2"]), unbounded_source=True)


def test_names_and_options_follow_the_preset_interface():
    assert dask_preset.NAMES[0] == "DaskRunner" and "dask" in dask_preset.NAMES
    parsed = parse_options(["--dask_local_workers", "3", "--dask_partitions", "4"]).view_as(
        dask_preset.DaskRunnerOptions)
    assert (parsed.dask_local_workers, parsed.dask_partitions, parsed.dask_address) == (3, 4, None)
    runner = dask_preset.create(PipelineOptions(["--dask_local_workers", "3"]))
    from apache_beam.runners.dask.dask_runner import DaskRunner

    assert isinstance(runner, DaskRunner)


def test_importing_the_preset_does_not_import_dask():
    code = "import sys, runners.dask; print('dask' in sys.modules, 'distributed' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
