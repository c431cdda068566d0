"""The products job's composites: fetch the paginated APIs, normalize, summarise.

* ``FetchPaginated(endpoints, config)``: every page of every endpoint (concurrent, rate-limited,
  retried, behind a circuit breaker: :mod:`transforms.products.paginate`) -> ``pages``, with
  ``errors`` and ``reports`` per endpoint;
* ``NormalizeProducts()``: pages -> ``products`` and ``dead_letters`` with their reasons
  (:mod:`transforms.products.normalize`);
* ``WriteSummary(output_dir)``: the job's files and its summary document.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms import telemetry
from transforms.products.normalize import (
    DEAD_LETTERS,
    PRODUCTS,
    avro_datum,
    counts_balance,
    dead_letter_line,
    dead_letter_sort_key,
    delivery_block,
    first_of_id,
    merged_lines,
    product_json,
    product_line,
    product_sort_key,
    split_page,
    stats_of,
    stream_summary,
    summary_head,
    write_lines,
)
from transforms.products.paginate import (
    Endpoint,
    FetchConfig,
    FetchError,
    Page,
    fetch_all,
)
from transforms.tracing import TracedDoFn, attached

LOG = logging.getLogger(__name__)


_DONE = object()


def fetch_events(endpoints: Sequence[Endpoint], config: FetchConfig, buffer: int = 8, *, trace_parent=None,
                 **clocks) -> Iterator:
    """Events of :func:`transforms.products.paginate.fetch_all` (pages, errors, reports) as a plain iterator.

    The fetch runs on its own event loop in a helper thread, so requests, timeouts and rate limits
    keep their timing while the caller processes a page; at most ``buffer`` events wait between
    the two (a full buffer pauses the fetch), so nothing accumulates the pages. Closing the
    iterator early (an error downstream) cancels the fetch and ends the thread. ``trace_parent``:
    the OpenTelemetry context the requests' spans are children of (see :mod:`transforms.tracing`).
    """
    events: queue.Queue = queue.Queue(maxsize=buffer)
    closed = threading.Event()

    def put(event) -> bool:
        while not closed.is_set():
            try:
                events.put(event, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    async def emit(event) -> None:
        if not await asyncio.to_thread(put, event):
            raise _FetchClosed

    def run() -> None:
        try:
            with attached(trace_parent):  # the loop's tasks inherit it: their requests' parent
                asyncio.run(fetch_all(endpoints, config, emit, **clocks))
        except _FetchClosed:
            return
        except BaseException as exc:  # handed to the caller, raised there with its traceback
            put(exc)
        else:
            put(_DONE)

    thread = threading.Thread(target=run, name="fetch-paginated", daemon=True)
    thread.start()
    try:
        while (event := events.get()) is not _DONE:
            if isinstance(event, BaseException):
                raise event
            yield event
    finally:
        closed.set()
        thread.join(timeout=config.timeout + 1)


class _FetchClosed(Exception):
    """The reader of :func:`fetch_events` went away: stop fetching."""


FETCH_ERRORS, FETCH_REPORTS = "errors", "reports"


class _FetchPagesFn(TracedDoFn):
    STAGE = "fetch"

    def __init__(self, config: FetchConfig):
        self.config = config
        self.pages = telemetry.counter(self.__class__, "pages_fetched")
        self.failed = telemetry.counter(self.__class__, "pages_failed")
        self.requests = telemetry.counter(self.__class__, "http_requests")
        self.throttled = telemetry.counter(self.__class__, "http_rate_limited")

    def process(self, endpoints: Sequence[Endpoint]) -> Iterator:
        for event in fetch_events(endpoints, self.config, trace_parent=self.trace_context):
            if isinstance(event, Page):
                self.pages.inc()
                yield event
            elif isinstance(event, FetchError):
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(FETCH_ERRORS, event.as_dict())
            else:
                self.requests.inc(event.requests)
                self.throttled.inc(event.rate_limited)
                yield beam.pvalue.TaggedOutput(FETCH_REPORTS, event.as_dict())


class FetchPaginated(beam.PTransform):
    """Every page of every endpoint (see :mod:`transforms.products.paginate`), as the pages arrive.

    Outputs: ``pages`` (:class:`~transforms.products.paginate.Page`), ``errors`` (one dict per page given up:
    source, endpoint, page, url, kind, status, message, attempts, timestamp) and ``reports`` (one
    dict per endpoint: pages, items, requests, retries, rate_limited, breaker state, seconds).

    The endpoints of one group are fetched concurrently by one worker (each within its own rate
    limit); ``group_size`` splits them into groups that a distributed runner can spread over
    workers (default: all in one group, the right choice for a handful of APIs).
    """

    def __init__(self, endpoints: Sequence[Endpoint], config: FetchConfig | None = None, *,
                 group_size: int | None = None):
        super().__init__()
        if not endpoints:
            raise ValueError("FetchPaginated needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.config = config or FetchConfig()
        self.group_size = group_size or len(self.endpoints)

    def expand(self, pbegin):
        groups = [tuple(self.endpoints[i:i + self.group_size]) for i in range(0, len(self.endpoints), self.group_size)]
        fetched = (
            pbegin
            | "Endpoints" >> beam.Create(groups, reshuffle=len(groups) > 1)
            | "FetchPages" >> beam.ParDo(_FetchPagesFn(self.config)).with_outputs(
                FETCH_ERRORS, FETCH_REPORTS, main="pages")
        )
        return {"pages": fetched.pages, FETCH_ERRORS: fetched[FETCH_ERRORS], FETCH_REPORTS: fetched[FETCH_REPORTS]}


class ProductStats(beam.CombineFn):
    """Prices per (source, category): the category distribution and price statistics."""

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, accumulator: dict, product: Mapping) -> dict:
        accumulator.setdefault((product["source"], product["category"] or ""), []).append(product["price"])
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        merged: dict = {}
        for accumulator in accumulators:
            for key, prices in accumulator.items():
                merged.setdefault(key, []).extend(prices)
        return merged

    def extract_output(self, accumulator: dict) -> dict:
        return stats_of(accumulator)


class _NormalizePageFn(TracedDoFn):
    STAGE = "normalize_products"

    def __init__(self, schema: Mapping | None):
        self.schema = schema
        self.products = telemetry.counter(self.__class__, "products")
        self.dead = telemetry.counter(self.__class__, "product_dead_letters")

    def process(self, page: Page) -> Iterator:
        products, dead = split_page(page, self.schema)
        self.products.inc(len(products))
        self.dead.inc(len(dead))
        for product in products:
            yield product["id"], product
        for letter in dead:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, letter)


class _FirstOfIdFn(TracedDoFn):
    STAGE = "first_of_id"

    def __init__(self):
        self.duplicates = telemetry.counter(self.__class__, "duplicate_ids")

    def process(self, keyed: tuple[str, Iterable[dict]]) -> Iterator:
        kept, duplicates = first_of_id(keyed[1])
        self.duplicates.inc(len(duplicates))
        yield avro_datum(kept)
        for product in duplicates:
            raw = product_json(avro_datum(product))
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, {
                "source": product["source"], "line": product["_at"][1] + 1, "raw": raw,
                "reason": f"duplicate_id: {product['id']} already came from page {kept['_at'][0]}",
            })


class NormalizeProducts(beam.PTransform):
    """:class:`~transforms.products.paginate.Page` s → ``products`` (unified records, one per id) and
    ``dead_letters`` (dicts with their reason). ``schema``: the parsed ``product`` Avro schema that
    every record is checked against (None: not checked)."""

    def __init__(self, schema: Mapping | None = None):
        super().__init__()
        self.schema = schema

    def expand(self, pages):
        normalized = pages | "NormalizeItems" >> beam.ParDo(_NormalizePageFn(self.schema)).with_outputs(
            DEAD_LETTERS, main=PRODUCTS)
        unique = (
            normalized[PRODUCTS]
            | "GroupById" >> beam.GroupByKey()
            | "FirstOfId" >> beam.ParDo(_FirstOfIdFn()).with_outputs(DEAD_LETTERS, main=PRODUCTS)
        )
        dead = (normalized[DEAD_LETTERS], unique[DEAD_LETTERS]) | "AllDeadLetters" >> beam.Flatten()
        return {PRODUCTS: unique[PRODUCTS], DEAD_LETTERS: dead}


class _SortedPartFn(TracedDoFn):
    """Writes each bundle's lines, sorted, to a part file; emits the part's path at bundle end."""

    STAGE = "write_products"

    def __init__(self, tmp_dir: str, to_line: Callable[[Any], tuple[Any, str]]):
        self.tmp_dir = tmp_dir
        self.to_line = to_line

    def start_bundle(self):
        super().start_bundle()
        self.lines = []

    def process(self, record):
        self.lines.append(self.to_line(record))

    def finish_bundle(self):
        if not self.lines:
            super().finish_bundle()
            return
        path = FileSystems.join(self.tmp_dir, f"part-{uuid.uuid4().hex}.jsonl")
        with FileSystems.create(path) as stream:
            for _, line in sorted(self.lines, key=lambda pair: pair[0]):
                stream.write(line.encode("utf-8") + b"\n")
        count = len(self.lines)
        self.lines = []
        yield WindowedValue((path, count), 0, [GlobalWindow()])
        super().finish_bundle()


class _WriteSummaryFn(TracedDoFn):
    STAGE = "write_summary"

    def __init__(self, output_dir: str, tmp_dir: str, started_at: float, clock: Callable[[], float], extra: Mapping):
        self.output_dir, self.tmp_dir = output_dir, tmp_dir
        self.started_at, self.clock, self.extra = started_at, clock, dict(extra)

    def process(self, _, product_parts, dead_parts, errors, reports, stats, delivery, delivery_dead):
        product_paths = [path for path, _ in product_parts]
        dead_paths = [path for path, _ in dead_parts]
        products = sum(count for _, count in product_parts)
        dead = sum(count for _, count in dead_parts)
        write_lines(self.output_dir, "products.jsonl", merged_lines(product_paths, product_sort_key))
        write_lines(self.output_dir, "dead_letter.jsonl", merged_lines(dead_paths, dead_letter_sort_key))
        reports = sorted(reports, key=lambda report: report["source"])
        errors = sorted(errors, key=lambda error: (error["source"], error["page"]))
        counts = counts_balance(reports, products, dead)
        summary = summary_head(reports, products, self.clock() - self.started_at)
        document = {"summary": summary, **(stats or stats_of({})), "counts": counts, **self.extra}
        if delivery:
            document["delivery"] = delivery_block(delivery[0], products, delivery_dead)
        path = FileSystems.join(self.output_dir, "summary.json")
        with FileSystems.create(path) as stream:
            with FileSystems.open(FileSystems.join(self.output_dir, "products.jsonl")) as products_file:
                lines = (line.decode("utf-8").rstrip("\n") for line in products_file)
                stream_summary(stream, document, lines, errors)
        if FileSystems.exists(self.tmp_dir):
            FileSystems.delete([self.tmp_dir])  # the part files with it
        LOG.info("products: %s products, %s dead letters, %s failed pages in %s", products, dead,
                 len(errors), path)
        yield counts


class WriteSummary(beam.PTransform):
    """Writes ``products.jsonl`` (sorted by id), ``dead_letter.jsonl`` and ``summary.json``.

    Takes ``{"products", "dead_letters", "errors", "reports"}`` PCollections, and optionally
    ``"delivery"`` (:class:`~transforms.sinks.stage.DeliverToApi`'s report) and
    ``"delivery_dead_letters"``. Products and dead letters go through sorted part files merged at
    the end, so no stage holds all products; the summary streams ``products`` from
    ``products.jsonl``. Emits the counts (items received = products + dead
    letters, ``balanced``). ``clock`` gives the end time for ``processing_time_seconds``.
    """

    def __init__(self, output_dir: str, run_id: str, started_at: float, *, clock: Callable[[], float] = time.time,
                 extra: Mapping | None = None):
        super().__init__()
        self.output_dir = output_dir
        self.tmp_dir = FileSystems.join(output_dir, f".products-{run_id}")
        self.started_at, self.clock, self.extra = started_at, clock, extra or {}

    def expand(self, inputs: Mapping[str, beam.PCollection]):
        product_parts = inputs[PRODUCTS] | "ProductParts" >> beam.ParDo(_SortedPartFn(self.tmp_dir, product_line))
        dead_parts = inputs[DEAD_LETTERS] | "DeadLetterParts" >> beam.ParDo(
            _SortedPartFn(self.tmp_dir, dead_letter_line))
        stats = inputs[PRODUCTS] | "ProductStats" >> beam.CombineGlobally(ProductStats())
        pipeline = inputs[PRODUCTS].pipeline
        nothing = pipeline | "NoDelivery" >> beam.Create([])
        return (
            pipeline
            | "SummaryTrigger" >> beam.Create([None])
            | "WriteSummary" >> beam.ParDo(
                _WriteSummaryFn(self.output_dir, self.tmp_dir, self.started_at, self.clock, self.extra),
                beam.pvalue.AsList(product_parts),
                beam.pvalue.AsList(dead_parts),
                beam.pvalue.AsList(inputs["errors"]),
                beam.pvalue.AsList(inputs["reports"]),
                beam.pvalue.AsSingleton(stats),
                beam.pvalue.AsList(inputs.get("delivery", nothing)),
                beam.pvalue.AsList(inputs.get("delivery_dead_letters", nothing)),
            )
        )
