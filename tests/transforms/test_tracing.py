"""transforms.tracing: the span tree of small runs, with OpenTelemetry's in-memory exporter.

The spans go to a TracerProvider of the test's own (:func:`transforms.tracing.set_tracer_provider`):
OpenTelemetry's global provider can be set once per process, and stays unset here.
"""

from __future__ import annotations

import contextvars

import pytest

pytest.importorskip("opentelemetry.sdk")

from apache_beam.internal import pickler  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from beam_pipeline import logs  # noqa: E402
from beam_pipeline.cli import main
from beam_pipeline.devtools.mock_api import MockDownstreamApi, start_product_apis  # noqa: E402
from beam_pipeline.options import parse_options  # noqa: E402
from runners import make_runner  # noqa: E402
from transforms import telemetry, tracing  # noqa: E402
from transforms.products.paginate import FetchConfig  # noqa: E402
from transforms.products.stage import _FetchPagesFn  # noqa: E402


@pytest.fixture
def exporter():
    """Spans of this test, recorded by a provider of its own (removed afterwards)."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.set_tracer_provider(provider)
    try:
        yield spans
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
def run_ids(monkeypatch) -> list[str]:
    """The run ids the CLI gave the logs."""
    seen: list[str] = []
    original = logs.set_run_id

    def record(run_id):
        seen.append(run_id)
        original(run_id)

    monkeypatch.setattr(logs, "set_run_id", record)
    return seen


def tree(spans):
    """(the root spans, span id -> span, span id -> its children)."""
    by_id = {span.context.span_id: span for span in spans}
    children: dict[int, list] = {}
    roots = []
    for span in spans:
        if span.parent is None:
            roots.append(span)
        else:
            children.setdefault(span.parent.span_id, []).append(span)
    return roots, by_id, children


def test_the_quotes_job_is_a_run_span_over_a_bundle_span_per_stage(exporter, run_ids, tmp_path):
    assert main(["--output_dir", str(tmp_path / "out"), "--progress", "off"]) == 0
    spans = exporter.get_finished_spans()
    roots, by_id, children = tree(spans)
    [root] = roots
    assert root.name == tracing.RUN_SPAN and root.status.status_code != StatusCode.ERROR
    # The runner the CLI builds for these options (FnApiRunner; an embedded PortableRunner under --portable).
    runner = type(make_runner(parse_options(["--output_dir", str(tmp_path / "out")]), unbounded_source=False)).__name__
    assert dict(root.attributes) == {"run_id": run_ids[-1], "job": "quotes", "runner": runner}
    assert len(spans) == 1 + len(children[root.context.span_id]), "every other span is a child of the run"
    bundles = children[root.context.span_id]
    assert all(span.context.trace_id == root.context.trace_id for span in bundles)
    for span in bundles:
        stage = span.attributes["stage"]
        assert span.name == f"bundle {stage}" and span.attributes["run_id"] == run_ids[-1]
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
    stages = {span.attributes["stage"] for span in bundles}
    assert {"replay", "normalize", "midprice", "write", "publish", "metrics"} <= stages
    # A bundle span carries what its stage's counters added: here the bundled sample's 5,000 quotes.
    counted = {span.attributes["stage"]: dict(span.attributes) for span in bundles}
    assert counted["replay"]["counter.records_in"] == 5000
    assert (counted["normalize"]["counter.valid_quotes"] + counted["normalize"]["counter.dead_lettered"]
            == counted["replay"]["counter.records_in"])
    assert tracing.current_run_id() is None, "the run span is closed with the run"


def test_the_products_job_traces_its_requests_under_the_fetch_and_deliver_bundles(exporter, tmp_path):
    with start_product_apis(failure_rate=0.2, timeout_share=0.0, seed=5) as servers, \
            MockDownstreamApi(failure_rate=0.15, rate_limit=5.0, seed=3) as downstream:
        urls = ",".join(server.url for server in servers)
        rc = main(["--job", "products", "--endpoints", urls, "--output_dir", str(tmp_path),
                   "--deliver_url", downstream.url, "--deliver_rate", "8", "--deliver_batch_size", "40"])
        failed = sum(request.status >= 500 for server in servers for request in server.requests())
    assert rc == 0 and failed > 0, "the mocks injected no failure: the test proves nothing"
    roots, by_id, children = tree(exporter.get_finished_spans())
    [root] = roots
    assert root.attributes["job"] == "products"
    run_id = root.attributes["run_id"]
    bundles = children[root.context.span_id]
    assert all(span.name.startswith("bundle ") and span.attributes["run_id"] == run_id for span in bundles)
    assert {"fetch", "normalize_products", "first_of_id", "deliver", "write_summary"} <= {
        span.attributes["stage"] for span in bundles}

    requests = [span for span in by_id.values() if span.kind == SpanKind.CLIENT]
    gets = [span for span in requests if span.attributes["http.request.method"] == "GET"]
    posts = [span for span in requests if span.attributes["http.request.method"] == "POST"]
    assert gets and posts and len(gets) + len(posts) == len(requests)
    for span, stage in [(span, "fetch") for span in gets] + [(span, "deliver") for span in posts]:
        parent = by_id[span.parent.span_id]
        assert parent.name == f"bundle {stage}" and parent.parent.span_id == root.context.span_id
        assert span.name == span.attributes["http.request.method"] and span.attributes["url.full"].startswith("http://127.0.0.1:")
        assert parent.start_time <= span.start_time <= span.end_time <= parent.end_time
    assert {by_id[span.parent.span_id].attributes["stage"] for span in gets} == {"fetch"}
    assert len(gets) == sum(len(server.requests()) for server in servers), "a span for every request"
    ok = [span for span in gets if span.attributes.get("http.response.status_code") == 200]
    failing = [span for span in gets if span.attributes.get("http.response.status_code", 0) >= 500]
    assert ok and all("error.type" not in span.attributes and span.status.status_code == StatusCode.UNSET for span in ok)
    assert len(failing) == failed
    assert all(span.attributes["error.type"] == str(span.attributes["http.response.status_code"])
               and span.status.status_code == StatusCode.ERROR for span in failing)
    assert any(span.attributes.get("http.response.status_code", 0) >= 400 for span in posts), \
        "the downstream mock refused nothing (5xx, 429)"


def test_a_request_that_raises_is_an_error_span(exporter):
    with pytest.raises(TimeoutError):
        with tracing.http_span("GET", "http://127.0.0.1:9/x") as request:
            assert trace.get_current_span() is request.span, "current: a client library's spans are its children"
            raise TimeoutError("no answer")
    assert not trace.get_current_span().is_recording()
    [span] = exporter.get_finished_spans()
    assert span.attributes["error.type"] == "TimeoutError" and span.status.status_code == StatusCode.ERROR
    assert "http.response.status_code" not in span.attributes and span.parent is None


def test_without_a_provider_nothing_records_and_a_run_still_works(monkeypatch, tmp_path):
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a global TracerProvider is configured in this process")
    with tracing.run_span("r1", "quotes") as span:
        assert not span.is_recording() and tracing.current_run_id() is None
        with tracing.http_span("GET", "http://127.0.0.1:9/x") as request:
            request.status(503)  # a no-op
            assert request.span is None
    fn = _FetchPagesFn(FetchConfig())
    fn.start_bundle()
    assert fn.trace_context is None and "_trace_bundle" not in vars(fn)
    fn.finish_bundle()
    monkeypatch.setattr(tracing, "_Bundle", None)  # a bundle span that records would fail the run
    assert main(["--output_dir", str(tmp_path / "out"), "--progress", "off"]) == 0


def test_without_opentelemetry_every_helper_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.setattr(tracing, "trace", None)
    monkeypatch.setattr(tracing, "otel_context", None)
    monkeypatch.setattr(tracing, "_tracer", None)
    with tracing.run_span("r1", "quotes") as span, tracing.http_span("POST", "http://127.0.0.1:9/") as request:
        assert span is None and request.span is None
        request.status(200)
        with tracing.attached(object()):
            pass
    assert main(["--output_dir", str(tmp_path / "out"), "--progress", "off"]) == 0


def test_a_traced_dofn_pickles_without_its_bundle(exporter):
    fn = _FetchPagesFn(FetchConfig(rate=2.0))
    assert "_trace_bundle" not in vars(fn), "nothing of OpenTelemetry is made at construction"
    copy = pickler.loads(pickler.dumps(fn))
    assert copy.STAGE == "fetch" and copy.config.rate == 2.0

    with tracing.run_span("r2", "products"):
        fn.start_bundle()
        assert fn.trace_context is not None
        fn.pages.inc(3)
        during = pickler.loads(pickler.dumps(fn))  # mid-bundle: the span stays behind
        assert "_trace_bundle" not in vars(during) and during.trace_context is None
        fn.finish_bundle()
    assert fn.trace_context is None
    bundle, run = exporter.get_finished_spans()
    assert bundle.name == "bundle fetch" and bundle.parent.span_id == run.context.span_id
    assert dict(bundle.attributes) == {
        "stage": "fetch", "run_id": "r2", "counter.pages_fetched": 3, "counter.pages_failed": 0,
        "counter.http_requests": 0, "counter.http_rate_limited": 0,
    }
    telemetry.reset()


def test_a_bundle_that_never_finished_is_closed_as_failed_by_the_next(exporter):
    fn = _FetchPagesFn(FetchConfig())

    def bundles():
        fn.start_bundle()  # the bundle fails: no finish_bundle
        fn.start_bundle()
        fn.finish_bundle()

    contextvars.copy_context().run(bundles)  # the failed bundle's context stays attached in there
    failed, done = exporter.get_finished_spans()
    assert failed.status.status_code == StatusCode.ERROR and done.status.status_code == StatusCode.UNSET
    assert failed.parent is None and "run_id" not in failed.attributes, "no run span: a root bundle span"
