"""The PortableRunner writes what the DirectRunner writes, byte for byte.

Each test runs one job twice in this process through ``beam_pipeline.cli.main``: on the default
DirectRunner (the FnApiRunner) and on ``--runner PortableRunner --job_endpoint embed
--environment_type LOOPBACK`` (a job server in this process, SDK workers over the Fn API's gRPC, the
protocol Flink's and Dataflow's workers speak). Every output file must be identical, except what
names or times the run itself: ``metrics.json``'s ``run_seconds`` (and ``avro_output``, the folder
each run was given), Avro file names (they hold the run id) and the bytes of Avro containers (a
random sync marker; their schema, codec and records must match), and in the products job the
fetch times (``processed_at``, ``seconds``, ``processing_time_seconds``) and the run id.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import fastavro
import pytest
from apache_beam.runners.portability.portable_runner import PortableRunner

from beam_pipeline import cli
from beam_pipeline.config import bundled_sample
from beam_pipeline.devtools.mock_api import start_product_apis
from tests.beam_pipeline.test_avro_input import write_with_apache_avro
from tests.beam_pipeline.test_tenants import clean_rows, flood_rows, write

PORTABLE = ("--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "LOOPBACK")
#: metrics.json fields that differ from run to run whatever the runner.
RUN_FIELDS = ("run_seconds", "avro_output")
AVRO_NAME = re.compile(r"^(?P<name>[a-z_]+)-(?P<run_id>[0-9a-f]{12})-(?P<seq>.+)\.avro$")


@pytest.fixture
def portable_runs(monkeypatch) -> list[str]:
    """The runner class of each pipeline submitted to a job service, so a test knows the portable
    run did not quietly run somewhere else."""
    submitted: list[str] = []
    submit = PortableRunner.run_portable_pipeline

    def spy(self, pipeline, options):
        submitted.append(type(self).__name__)
        return submit(self, pipeline, options)

    monkeypatch.setattr(PortableRunner, "run_portable_pipeline", spy)
    return submitted


def run_both(tmp_path: Path, portable_runs: list[str], *args: str, avro: bool = False) -> tuple[Path, Path]:
    """Run the CLI with ``args`` on both runners; returns their output folders (``avro``: each run
    also gets ``--avro_output`` in ``<output folder>-avro``)."""
    folders = []
    for name, runner in (("direct", ()), ("portable", PORTABLE)):
        out = tmp_path / name
        extra = ("--avro_output", f"{out}-avro") if avro else ()
        before = len(portable_runs)
        assert cli.main([*args, *runner, *extra, "--output_dir", str(out), "--progress", "off"]) == 0, name
        if runner:
            assert len(portable_runs) == before + 1, "the portable run was not submitted to a job service"
        folders.append(out)
    return folders[0], folders[1]


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (staging leftovers included), by relative path."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_same_outputs(direct: Path, portable: Path) -> dict:
    """The same files with the same bytes, metrics.json apart from its run fields; returns the
    direct run's metrics."""
    ours, theirs = files_under(direct), files_under(portable)
    assert sorted(ours) == sorted(theirs)
    assert "metrics.json" in ours and len(ours) > 1
    for name in ours:
        if name == "metrics.json":
            continue
        assert ours[name] == theirs[name], f"{name} differs between the DirectRunner and the PortableRunner"
    metrics, other = (json.loads(files["metrics.json"]) for files in (ours, theirs))
    assert "run_seconds" in metrics
    assert without(metrics, RUN_FIELDS) == without(other, RUN_FIELDS)
    assert metrics["balanced"] and metrics["records_in"] > 0
    return metrics


def without(value, keys: tuple[str, ...]):
    """``value`` with every dict entry named in ``keys`` removed, at any depth."""
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def test_the_bundled_sample(tmp_path, portable_runs):
    direct, portable = run_both(tmp_path, portable_runs)
    metrics = assert_same_outputs(direct, portable)
    assert sorted(files_under(direct)) == ["dead_letter.jsonl", "errors.log", "metrics.json", "mid_prices.log"]
    assert metrics["mid_prices"] > 1000 and metrics["latency_filtered"] > 0 and metrics["dead_lettered"] > 0


def test_batch_sliding_windows(tmp_path, portable_runs):
    direct, portable = run_both(tmp_path, portable_runs, "--window", "sliding:10s,2s")
    metrics = assert_same_outputs(direct, portable)
    assert metrics["windows_emitted"] > 0 and metrics["windows_balanced"]
    assert (direct / "windows.jsonl").stat().st_size > 0


def test_trades_joined_featured_and_scored(tmp_path, portable_runs):
    trades = bundled_sample("trades_sample.csv")
    direct, portable = run_both(tmp_path, portable_runs, "--trades", trades)
    metrics = assert_same_outputs(direct, portable)
    assert metrics["trades_balanced"] and metrics["scores_balanced"]
    assert metrics["trades_enriched"] > 1000 and metrics["trades_unmatched"] > 0 and metrics["windows_scored"] > 0


def test_multi_tenant_partitions_from_several_files(tmp_path, portable_runs):
    """Three files (two clean tenants and a malformed flood), windows per tenant, partitioned output."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(inputs / "acme.csv", clean_rows("acme", 1, 150))
    write(inputs / "zeta.csv", clean_rows("zeta", 2, 150))
    span = max(ms for ms, _ in clean_rows("acme", 1, 150))
    write(inputs / "mallory.csv", flood_rows(3, 300, span, far_future=True))
    direct, portable = run_both(tmp_path, portable_runs, "--input", str(inputs / "*.csv"), "--partition_by_tenant",
                                "--window", "fixed:100ms", "--allowed_lateness", "20ms")
    metrics = assert_same_outputs(direct, portable)
    assert len(metrics["inputs"]) == 3
    assert {"tenant=acme", "tenant=zeta", "tenant=mallory"} <= set(metrics["partitions"])
    assert (direct / "tenant=acme" / "mid_prices.log").stat().st_size > 0


def test_csv_and_avro_files_merged_in_arrival_order(tmp_path, portable_runs):
    """A glob of two CSV halves of the sample and an Avro file: several inputs, both readers, and
    small blocks (many chunks to put back in order)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    header, *rows = Path(bundled_sample()).read_text().splitlines(keepends=True)
    (inputs / "a.csv").write_text(header + "".join(rows[::2]))
    (inputs / "b.csv").write_text(header + "".join(rows[1::2]))
    write_with_apache_avro(inputs / "c.avro")
    direct, portable = run_both(tmp_path, portable_runs, "--input", str(inputs / "*"), "--block_bytes", "8192")
    metrics = assert_same_outputs(direct, portable)
    assert [Path(p).name for p in metrics["inputs"]] == ["a.csv", "b.csv", "c.avro"]


def avro_contents(folder: Path) -> dict[str, tuple]:
    """Each Avro file by name without its run id: (writer schema, codec, records)."""
    contents = {}
    for path in sorted(folder.rglob("*.avro")):
        match = AVRO_NAME.match(path.name)
        assert match, path.name
        key = str(path.parent.relative_to(folder) / f"{match['name']}-{match['seq']}.avro")
        with path.open("rb") as stream:
            reader = fastavro.reader(stream)
            contents[key] = (reader.writer_schema, reader.codec, list(reader))
    return contents


def test_avro_output(tmp_path, portable_runs):
    """--avro_output, per tenant: the same Avro files (by name without the run id), schemas, codecs
    and records."""
    direct, portable = run_both(tmp_path, portable_runs, "--partition_by_tenant", avro=True)
    assert_same_outputs(direct, portable)
    ours, theirs = avro_contents(Path(f"{direct}-avro")), avro_contents(Path(f"{portable}-avro"))
    assert sorted(ours) == sorted(theirs)
    assert any("quotes-" in name for name in ours) and any("mid_prices-" in name for name in ours)
    assert sum(len(records) for _, _, records in ours.values()) > 1000
    for name in ours:
        assert ours[name] == theirs[name], f"{name}: schema, codec or records differ"


# --------------------------------------------------------------------------- products job

#: What differs from run to run in the products job, whatever the runner: fetch times and the run id.
PRODUCT_TIMES = ("processed_at",)


def test_products_job(tmp_path, portable_runs):
    """Both runs fetch from the same mock APIs (no injected failures, no rate limit, so the same
    pages in every run); ``--mock`` would start new servers on new ports per run."""
    with start_product_apis(failure_rate=0.0, rate_limit=None, seed=7) as servers:
        urls = ",".join(server.url for server in servers)
        direct, portable = run_both(tmp_path, portable_runs, "--job", "products", "--endpoints", urls)
    ours, theirs = files_under(direct), files_under(portable)
    assert sorted(ours) == sorted(theirs) == ["dead_letter.jsonl", "products.jsonl", "summary.json"]
    assert ours["dead_letter.jsonl"] == theirs["dead_letter.jsonl"] and ours["dead_letter.jsonl"]
    products = [[without(json.loads(line), PRODUCT_TIMES) for line in files["products.jsonl"].splitlines()]
                for files in (ours, theirs)]
    assert products[0] == products[1] and len(products[0]) > 300
    run_fields = (*PRODUCT_TIMES, "seconds", "processing_time_seconds", "run_id")
    summaries = [without(json.loads(files["summary.json"]), run_fields) for files in (ours, theirs)]
    assert summaries[0] == summaries[1]
    assert summaries[0]["counts"]["balanced"] and summaries[0]["errors"] == []
