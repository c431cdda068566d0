"""Our pipelines translate to a portable proto that Flink, Spark or Dataflow could run.

Nothing is run here: each pipeline is built, translated the way the PortableRunner translates it
(:func:`runners.portability.portable_proto`: Beam's Python SDK image as the environment) and
walked by :func:`runners.portability.non_portable_transforms`, whose module docstring says which
URNs are allowed and why. The negative tests are what make an empty answer mean something: a
Python-only primitive, a primitive Read of a Python source, TestStream, a Python-only WindowFn, a
DoFn or environment that is not Python's are each reported by name.

Passing this check is necessary, not sufficient: the live, replay and webhook sources translate
to portable URNs too (a splittable DoFn), yet they stop on signals, a control endpoint and an inbox
that live in the CLI's process, which is why the CLI runs them on the DirectRunner only.
"""

from __future__ import annotations

import socket
from collections import Counter

import apache_beam as beam
import pytest
from apache_beam import pvalue
from apache_beam.coders.coders import IntervalWindowCoder
from apache_beam.io import iobase
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.portable_runner import PortableRunner
from apache_beam.runners.worker.bundle_processor import BeamTransformFactory
from apache_beam.testing import test_stream
from apache_beam.transforms import window

from beam_pipeline.config import bundled_sample, resolve
from beam_pipeline.options import parse_options
from beam_pipeline.pipeline import build_pipeline
from beam_pipeline.products import build_products_pipeline
from runners.portability import (
    PORTABLE_URNS,
    RUNNER_URNS,
    SDK_URNS,
    NonPortable,
    non_portable_transforms,
    portable_proto,
)
from tests.beam_pipeline.test_avro_input import write_with_apache_avro

PAR_DO = common_urns.primitives.PAR_DO.urn
GROUP_BY_KEY = common_urns.primitives.GROUP_BY_KEY.urn
IMPULSE = common_urns.primitives.IMPULSE.urn
TEST_STREAM = common_urns.primitives.TEST_STREAM.urn
READ = common_urns.deprecated_primitives.READ.urn
#: Ports nothing listens on; building must not try them (see ``no_network``).
ENDPOINTS = "http://127.0.0.1:9/catalog/products,http://127.0.0.1:9/market/items,http://127.0.0.1:9/shop/v2/listing"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a name while building fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"building a pipeline tried the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def leaf_urns(proto: beam_runner_api_pb2.Pipeline) -> Counter:
    return Counter(t.spec.urn for t in proto.components.transforms.values() if not t.subtransforms)


def assert_portable(pipeline: beam.Pipeline, options: PipelineOptions) -> Counter:
    """No finding in the proto as translated, nor in the proto the PortableRunner submits (after
    its combiner lifting); returns the leaf URNs, so a test can see what was walked."""
    proto = portable_proto(pipeline, options)
    assert non_portable_transforms(proto) == []
    assert non_portable_transforms(PortableRunner.get_proto_pipeline(pipeline, options)) == []
    urns = leaf_urns(proto)
    assert urns[PAR_DO] >= 5 and urns[IMPULSE] >= 1, urns  # a real pipeline was walked
    return urns


def quotes(tmp_path, *args: str) -> tuple[beam.Pipeline, PipelineOptions]:
    options = parse_options(["--output_dir", str(tmp_path / "out"), "--progress", "off", *args])
    return build_pipeline(resolve(options)), options


# --------------------------------------------------------------------------- our pipelines


@pytest.mark.parametrize("args", [
    pytest.param((), id="default"),
    pytest.param(("--window", "fixed:1s"), id="tumbling"),
    pytest.param(("--window", "sliding:10s,2s"), id="sliding"),
    pytest.param(("--window", "session:5s", "--allowed_lateness", "1s", "--accumulation", "accumulating"),
                 id="session"),
    pytest.param(("--avro_output", "AVRO"), id="avro_output"),
    pytest.param(("--partition_by_tenant", "--window", "fixed:100ms"), id="partition_by_tenant"),
    pytest.param(("--trades", "TRADES"), id="trades"),
])
def test_the_batch_quotes_job_is_portable(tmp_path, no_network, args):
    named = {"AVRO": str(tmp_path / "avro"), "TRADES": bundled_sample("trades_sample.csv")}
    args = tuple(named.get(arg, arg) for arg in args)
    urns = assert_portable(*quotes(tmp_path, *args))
    assert urns[GROUP_BY_KEY] >= 1


def test_an_avro_input_is_portable(tmp_path, no_network):
    source = write_with_apache_avro(tmp_path / "quotes.avro")
    assert_portable(*quotes(tmp_path, "--input", str(source), "--window", "fixed:1s"))


@pytest.mark.parametrize("deliver_url", [None, "http://127.0.0.1:9/ingest"], ids=["summary", "deliver"])
def test_the_products_job_is_portable_and_building_it_contacts_nothing(tmp_path, no_network, deliver_url):
    options = parse_options(["--job", "products", "--endpoints", ENDPOINTS, "--output_dir", str(tmp_path)])
    pipeline = build_products_pipeline(resolve(options), deliver_url=deliver_url)
    assert_portable(pipeline, options)
    names = {t.unique_name for t in portable_proto(pipeline, options).components.transforms.values()}
    assert ("DeliverToApi" in names) == bool(deliver_url)


def test_the_streaming_replay_is_flagged_as_direct_runner_only(tmp_path, no_network):
    """``--streaming`` replays history through TestStream: DirectRunner only (Flink translates
    TestStream for Beam's own tests, Dataflow not at all); on a cluster, WindowQuotes would read a
    real unbounded source instead."""
    pipeline, options = quotes(tmp_path, "--streaming", "--window", "fixed:1s")
    assert non_portable_transforms(portable_proto(pipeline, options)) == [
        NonPortable("ReplayHistoricalStream/ReplayWithWatermarks", TEST_STREAM,
                    "TestStream: only the DirectRunner replays it"),
    ]


# --------------------------------------------------------------------------- the allowed URNs


def test_every_sdk_urn_allowed_is_one_the_python_harness_builds():
    known = set(BeamTransformFactory._known_urns)  # pylint: disable=protected-access
    assert SDK_URNS <= known
    assert not RUNNER_URNS & SDK_URNS and PORTABLE_URNS == RUNNER_URNS | SDK_URNS
    assert not {TEST_STREAM, READ, python_urns.PICKLED_TRANSFORM} & PORTABLE_URNS


# --------------------------------------------------------------------------- what must be reported


class PythonOnlyPrimitive(beam.PTransform):
    """A "primitive" only the Python DirectRunner could evaluate: it applies nothing and makes a
    new PCollection, so a portable runner gets a leaf with no portable URN."""

    def expand(self, pcoll):
        return pvalue.PCollection(pcoll.pipeline, is_bounded=True)


class Wrapper(beam.PTransform):
    """A composite around it, to show the report names the leaf by its full path."""

    def expand(self, pcoll):
        return pcoll | "Inner" >> PythonOnlyPrimitive() | "AfterInner" >> beam.Map(str)


class LegacyRead(beam.PTransform):
    """``beam.io.Read`` as it was before splittable DoFns: a primitive Read of a pickled Python
    source, which a Java runner cannot open."""

    def __init__(self, source):
        super().__init__()
        self.source = source

    def expand(self, pbegin):
        return pvalue.PCollection(pbegin.pipeline, is_bounded=True)

    def get_windowing(self, unused_inputs):
        return beam.transforms.core.Windowing(window.GlobalWindows())

    def to_runner_api_parameter(self, context):
        return READ, beam_runner_api_pb2.ReadPayload(
            source=self.source.to_runner_api(context), is_bounded=beam_runner_api_pb2.IsBounded.BOUNDED)


class EvenOdd(window.NonMergingWindowFn):
    """A custom WindowFn: pickled Python, which no Java runner can group by."""

    def assign(self, context):
        start = context.timestamp - context.timestamp % 2
        return [window.IntervalWindow(start, start + 2)]

    def get_window_coder(self):
        return IntervalWindowCoder()


def translate(build) -> list[NonPortable]:
    pipeline = beam.Pipeline(options=PipelineOptions([]))
    build(pipeline)
    return non_portable_transforms(portable_proto(pipeline))


def test_a_clean_pipeline_is_clean():
    """The baseline of the cases below: Create, Map, a combine, a BoundedSource Read (a ``read``
    composite whose leaves are an impulse and a splittable DoFn)."""

    def build(p):
        _ = p | "Numbers" >> beam.Create([1, 2, 3]) | "Sum" >> beam.CombineGlobally(sum)
        _ = p | "Source" >> beam.Create([1, 2]).as_read() | "Twice" >> beam.Map(lambda x: x * 2)

    assert translate(build) == []


def test_a_python_only_primitive_is_reported_by_name():
    findings = translate(lambda p: p | "Numbers" >> beam.Create([1, 2]) | "Outer" >> Wrapper())
    assert [(f.name, f.urn) for f in findings] == [("Outer/Inner", python_urns.PICKLED_TRANSFORM)]


def test_a_primitive_read_of_a_python_source_is_reported():
    source = beam.Create([1, 2]).as_read().source
    assert isinstance(source, iobase.BoundedSource)
    findings = translate(lambda p: p | "OldRead" >> LegacyRead(source) | beam.Map(str))
    assert [(f.name, f.urn) for f in findings] == [("OldRead", READ)]


def test_test_stream_is_reported():
    def build(p):
        stream = test_stream.TestStream().add_elements([1, 2]).advance_watermark_to_infinity()
        _ = p | "Replay" >> stream | "Show" >> beam.Map(str)

    assert [(f.name, f.urn) for f in translate(build)] == [("Replay", TEST_STREAM)]


def test_a_python_only_window_fn_is_reported_where_it_starts():
    def build(p):
        _ = (p | beam.Create([1, 2]) | "Stamp" >> beam.Map(lambda x: window.TimestampedValue((x % 2, x), x))
             | "EvenOdd" >> beam.WindowInto(EvenOdd()) | "Group" >> beam.GroupByKey() | "Show" >> beam.Map(str))

    assert [(f.name, f.urn) for f in translate(build)] == [("EvenOdd", python_urns.PICKLED_WINDOWFN)]


# Proto-level breakage of our real pipeline: what the Python API does not let one build.


@pytest.fixture(scope="module")
def quotes_proto(tmp_path_factory) -> beam_runner_api_pb2.Pipeline:
    pipeline, options = quotes(tmp_path_factory.mktemp("proto"), "--window", "fixed:1s")
    proto = portable_proto(pipeline, options)
    assert non_portable_transforms(proto) == []
    return proto


def par_dos(proto: beam_runner_api_pb2.Pipeline) -> list[beam_runner_api_pb2.PTransform]:
    return sorted((t for t in proto.components.transforms.values() if t.spec.urn == PAR_DO and not t.subtransforms),
                  key=lambda t: t.unique_name)


def copy(proto: beam_runner_api_pb2.Pipeline) -> beam_runner_api_pb2.Pipeline:
    result = beam_runner_api_pb2.Pipeline()
    result.CopyFrom(proto)
    return result


def test_a_par_do_without_an_environment_is_reported(quotes_proto):
    proto = copy(quotes_proto)
    victim = par_dos(proto)[3]
    victim.environment_id = ""
    assert [(f.name, f.urn) for f in non_portable_transforms(proto)] == [(victim.unique_name, PAR_DO)]


def test_a_dofn_that_is_not_python_is_reported(quotes_proto):
    proto = copy(quotes_proto)
    victim = par_dos(proto)[0]
    payload = beam_runner_api_pb2.ParDoPayload.FromString(victim.spec.payload)
    payload.do_fn.urn = "beam:dofn:javasdk:0.1"
    victim.spec.payload = payload.SerializeToString()
    assert [(f.name, f.urn) for f in non_portable_transforms(proto)] == [(victim.unique_name, "beam:dofn:javasdk:0.1")]


def test_an_environment_that_is_not_python_is_reported_for_every_sdk_transform(quotes_proto):
    proto = copy(quotes_proto)
    for environment in proto.components.environments.values():
        del environment.capabilities[:]
        environment.capabilities.append("beam:version:sdk_base:apache/beam_java11_sdk:2.77.0")
    findings = non_portable_transforms(proto)
    sdk_leaves = [t for t in proto.components.transforms.values() if not t.subtransforms and t.spec.urn in SDK_URNS]
    assert len(findings) == len(sdk_leaves) > 10
    assert {f.reason for f in findings} == {"its environment is not a Python SDK harness"}


def test_a_bare_to_runner_api_names_no_sdk_harness(tmp_path):
    """Beam's placeholder environment (``beam:env:default:v1``) is not what a portable runner
    receives: check :func:`portable_proto`'s translation, as the tests above do."""
    pipeline, _ = quotes(tmp_path)
    findings = non_portable_transforms(pipeline.to_runner_api())
    assert findings and {f.urn for f in findings} == {common_urns.environments.DEFAULT.urn}
