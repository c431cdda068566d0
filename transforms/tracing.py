"""OpenTelemetry spans for a run, each bundle of each stage and each outbound HTTP call (optional).

Tracing is off unless an OpenTelemetry SDK ``TracerProvider`` is configured in the process; this
module only uses the API (``opentelemetry-api``) and the global tracer provider. Without the API
installed, or with the API alone (its default provider makes non-recording spans), every helper
is a no-op costing a few attribute lookups per bundle or request; nothing is done per element.

Turning it on (``pip install .[tracing]``), either with the zero-code agent of
``opentelemetry-distro``::

    opentelemetry-instrument --traces_exporter console --metrics_exporter none \\
        python -m beam_pipeline --output_dir out

(``opentelemetry-bootstrap -a install`` would also add the ``requests`` and ``aiohttp`` client
instrumentations: their spans become children of the ``GET`` / ``POST`` spans below), or in your own
code, before :func:`beam_pipeline.cli.main` runs::

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))  # or an OTLP exporter
    trace.set_tracer_provider(provider)

The spans:

* ``beam_pipeline.run``: the whole run (:func:`run_span`, in the CLI around ``pipeline.run()``),
  with ``run_id`` (the run id of the JSON logs), ``job`` (``quotes``, ``products``) and ``runner``;
* ``bundle <stage>``: one per bundle of each stage (:class:`TracedDoFn`), a child of the run span,
  with ``run_id``, ``stage`` and ``counter.<name>`` for each of the stage's
  :func:`transforms.telemetry.counter` counters: how much it added during the bundle (records,
  blocks, pages, ...: what the stage counts anyway, so nothing is added per element);
* ``GET`` / ``POST`` (kind CLIENT): each outbound HTTP request (:func:`http_span`): the paginated
  product APIs' pages (:mod:`transforms.products.paginate`) and the downstream API's batches
  (:mod:`transforms.sinks.deliver`), a child of the bundle that makes it, with ``http.request.method``,
  ``url.full``, ``http.response.status_code`` and, when it failed, ``error.type`` (the status
  code for 4xx/5xx, the exception's class for a timeout or a connection error) and an error status.

Bundle spans are parented to the run span explicitly: the local runners run bundles in threads of
their own, where the run span is not the current span. This works where the bundles run in the
CLI's process (the DirectRunner's FnApiRunner, the BundleBasedDirectRunner of ``--streaming``).
Workers in other processes (``--direct_running_mode multi_processing``, Prism, Flink, Dataflow)
make root ``bundle`` spans without ``run_id``, and only if their process configures a provider.
A live or replay run's source (``ReadFeed``, a splittable DoFn) is one bundle as long as the feed.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import apache_beam as beam

try:  # the API only; the SDK (a TracerProvider that records) is the user's choice
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - tested by setting ``trace`` to None
    otel_context = trace = None

from transforms.telemetry import MirroredCounter

RUN_SPAN = "beam_pipeline.run"
TRACER_NAME = "beam_pipeline"

_provider = None  # set_tracer_provider(): a provider of our own (tests); None: the global one
_tracer = None
_run = None  # (run_id, context holding the run span) while run_span() is open


def set_tracer_provider(provider) -> None:
    """Use ``provider`` instead of the global tracer provider (``None``: the global one again).

    For tests: OpenTelemetry's global provider can be set only once per process.
    """
    global _provider, _tracer
    _provider, _tracer = provider, None


def tracer():
    """This package's tracer, or ``None`` without the OpenTelemetry API."""
    global _tracer
    found = _tracer
    if found is None and trace is not None:
        # The global ProxyTracerProvider hands out a ProxyTracer that follows a provider set later.
        found = _tracer = (_provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME)
    return found


def current_run_id() -> str | None:
    """The run id of the open :func:`run_span` that records, if any."""
    run = _run
    return run[0] if run else None


@contextmanager
def run_span(run_id: str, job: str, runner: str | None = None) -> Iterator[Any]:
    """The root span ``beam_pipeline.run`` around a run; bundle spans become its children."""
    global _run
    found = tracer()
    if found is None:
        yield None
        return
    attributes = {"run_id": run_id, "job": job}
    if runner:
        attributes["runner"] = runner
    with found.start_as_current_span(RUN_SPAN, attributes=attributes) as span:
        if not span.is_recording():
            yield span
            return
        previous, _run = _run, (run_id, trace.set_span_in_context(span))
        try:
            yield span
        finally:
            _run = previous


@contextmanager
def attached(context) -> Iterator[None]:
    """Make ``context`` (e.g. :attr:`TracedDoFn.trace_context`) current in this thread meanwhile;
    ``None``: nothing. For the threads a bundle starts, such as an asyncio loop's."""
    if context is None or otel_context is None:
        yield
        return
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


class _HttpSpan:
    """What :func:`http_span` yields: note the response's status (and an error) on the span."""

    __slots__ = ("span",)

    def __init__(self, span):
        self.span = span

    def status(self, code: int) -> None:
        span = self.span
        if span is not None:
            span.set_attribute("http.response.status_code", code)
            if code >= 400:
                span.set_attribute("error.type", str(code))
                span.set_status(Status(StatusCode.ERROR, f"HTTP {code}"))


_NO_HTTP_SPAN = _HttpSpan(None)


@contextmanager
def http_span(method: str, url: str, parent=None) -> Iterator[_HttpSpan]:
    """A CLIENT span around one outbound request, current meanwhile; call ``.status(code)`` on what
    it yields. ``parent``: an OpenTelemetry context (:attr:`TracedDoFn.trace_context`); default the
    current one. An exception leaving the block (a timeout, a refused connection) is recorded as
    ``error.type`` and re-raised.
    """
    found = tracer()
    if found is None:
        yield _NO_HTTP_SPAN
        return
    span = found.start_span(method, context=parent, kind=SpanKind.CLIENT,
                            attributes={"http.request.method": method, "url.full": url})
    if not span.is_recording():
        yield _NO_HTTP_SPAN
        return
    token = otel_context.attach(trace.set_span_in_context(span))  # a client library's own spans: children
    try:
        yield _HttpSpan(span)
    except BaseException as exc:
        span.set_attribute("error.type", type(exc).__qualname__)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        otel_context.detach(token)
        span.end()


class _Bundle:
    """A traced bundle in progress: its span, its context and how to leave it."""

    __slots__ = ("span", "context", "token", "thread", "counters")

    def __init__(self, span, context, token, thread, counters):
        self.span, self.context, self.token, self.thread, self.counters = span, context, token, thread, counters


class TracedDoFn(beam.DoFn):
    """A DoFn with a span per bundle, ``bundle <STAGE>`` (see the module docstring).

    The span is current in the bundle's thread from ``start_bundle`` to ``finish_bundle`` (an HTTP
    span made there without a parent is its child); :attr:`trace_context` hands it to other
    threads or code. Subclasses that define ``start_bundle`` / ``finish_bundle`` call ``super()``'s
    first / last. Nothing of OpenTelemetry is kept on the instance outside a bundle (DoFns are
    pickled), and a bundle that failed before ``finish_bundle`` is closed, as failed, by the next.
    """

    #: The stage's short name in span names and attributes (default: the class name).
    STAGE: str | None = None

    _trace_bundle: _Bundle | None = None

    @property
    def trace_context(self):
        """The OpenTelemetry context of the current bundle's span (``None`` when not tracing)."""
        bundle = self._trace_bundle
        return bundle.context if bundle is not None else None

    def start_bundle(self):
        if self._trace_bundle is not None:
            self._end_bundle("the bundle did not finish")
        found = tracer()
        if found is None:
            return
        stage = self.STAGE or type(self).__name__
        run = _run
        attributes = {"stage": stage}
        if run is not None:
            attributes["run_id"] = run[0]
        # The run's span, or none (a root span): never the thread's current span, which may be the
        # bundle span of a DoFn fused before this one.
        parent = run[1] if run is not None else otel_context.Context()
        span = found.start_span(f"bundle {stage}", context=parent, attributes=attributes)
        if not span.is_recording():
            return
        counters = [(name, counter, counter.value) for name, counter in vars(self).items()
                    if isinstance(counter, MirroredCounter)]
        context = trace.set_span_in_context(span)
        self._trace_bundle = _Bundle(span, context, otel_context.attach(context), threading.get_ident(), counters)

    def finish_bundle(self):
        if self._trace_bundle is not None:
            self._end_bundle()

    def _end_bundle(self, failed: str | None = None) -> None:
        bundle, self._trace_bundle = self._trace_bundle, None
        for _, counter, before in bundle.counters:
            bundle.span.set_attribute(f"counter.{counter.name}", counter.value - before)
        if failed:
            bundle.span.set_status(Status(StatusCode.ERROR, failed))
        elif bundle.thread == threading.get_ident():
            # Beam finishes a fused stage's DoFns in the reverse order of their starts: the
            # attach/detach pairs nest. A failed bundle's context stays attached in its thread
            # (detaching it out of order would be worse): only spans without a parent see it, and
            # this module's spans in a bundle always have one.
            otel_context.detach(bundle.token)
        bundle.span.end()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_trace_bundle", None)
        return state
