"""fetch: historical quote CSVs replayed in arrival order, as a Beam source.

``ReplayHistorical(paths)`` emits :class:`~transforms.blocks.QuoteBlock` s of raw quote rows
(:data:`transforms.replay.BLOCK_SCHEMA`) in arrival order (timestamp + latency, ties in file
order), each block with the event time of its earliest quote as its Beam timestamp. Rows that
cannot be replayed travel along with a ``reject`` reason for the normalize stage to dead-letter.
A second output, ``counts``, carries one dict of reader statistics (``records_in``, ...).

The ordering needs one reader for all files, so this source is a single ``DoFn`` call; memory
stays bounded by the rows within the largest latency of the newest timestamp (see
:mod:`transforms.arrival`).

``ReplayAsStream(plan_stream_replay(...))`` is the same replay as an unbounded stream whose
watermark follows arrival time (:mod:`transforms.stream_replay`), played by Beam's ``TestStream``
on a streaming runner; it has the same two outputs.

``FetchPaginated(endpoints)`` fetches every page of paginated JSON product APIs, rate-limited,
retried and behind a circuit breaker per endpoint (:mod:`transforms.paginate`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import queue
import sys
import threading
import uuid
from typing import Iterator, Sequence

import apache_beam as beam
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from transforms import telemetry
from transforms.blocks import QuoteBlock, QuoteBlockCoder
from transforms.feeds import HistoricalFeed, QuoteFeed
from transforms.live import LiveFeed, newest_arrival
from transforms.modes import run_control
from transforms.paginate import Endpoint, FetchConfig, FetchError, Page, fetch_all
from transforms.progress import Progress
from transforms.replay import DEFAULT_BLOCK_BYTES, HistoricalReplay
from transforms.stream_replay import StreamPlan, plan_steps
from transforms.tracing import TracedDoFn, attached
from transforms.windowing import WindowSpec, watermark_after

LOG = logging.getLogger(__name__)
COUNTS = "counts"


def block_timestamp(block: QuoteBlock) -> Timestamp:
    """The earliest event time in the block (a block of rejected rows only has no event time)."""
    earliest = pc.min(block.batch.column("event_us")).as_py()
    return MIN_TIMESTAMP if earliest is None else Timestamp(micros=earliest)


class _ReplayFn(TracedDoFn):
    STAGE = "replay"

    def __init__(self, default_symbol: str, block_bytes: int, show_progress: bool, open_file,
                 dedup_horizon_us: int = 0):
        self._default_symbol = default_symbol
        self._dedup_horizon_us = dedup_horizon_us
        self._block_bytes = block_bytes
        self._show_progress = show_progress
        self._open_file = open_file
        self._records = telemetry.counter(self.__class__, "records_in")
        self._blocks = telemetry.counter(self.__class__, "blocks")

    def process(self, sources: Sequence[str]) -> Iterator[QuoteBlock | beam.pvalue.TaggedOutput]:
        sources = tuple(sources)
        progress = None
        if self._show_progress:
            sizes = [m.size_in_bytes for r in FileSystems.match(list(sources)) for m in r.metadata_list]
            progress = Progress(sum(sizes))
        feed = HistoricalFeed(
            sources, default_symbol=self._default_symbol, block_bytes=self._block_bytes, open_file=self._open_file,
            dedup_horizon_us=self._dedup_horizon_us,
        )
        for seq, block in enumerate(feed.blocks(0, on_block=progress.advance if progress else None)):
            self._blocks.inc()
            if progress:
                progress.count_rows(block.batch.num_rows)
            quotes = QuoteBlock(seq, block.batch, sources)
            yield beam.window.TimestampedValue(quotes, block_timestamp(quotes))
        if progress:
            progress.finish()
        stats = feed.stats()
        self._records.inc(stats["records_in"])
        LOG.info("replayed %s", stats)
        yield beam.pvalue.TaggedOutput(COUNTS, stats)


class ReplayHistorical(beam.PTransform):
    """Read quote CSVs (already expanded paths, tie-break order) and replay them in arrival order.

    Outputs ``blocks`` (QuoteBlock, main) and ``counts`` (one dict of reader statistics).

    Args:
        sources: file paths; FileSystems paths (gs://, ...) and compressed files (.gz) work.
        default_symbol: symbol of rows in files without a symbol column.
        block_bytes: about how much CSV goes into one block.
        show_progress: print a progress line on stderr for long runs.
        open_file: opens an input as a CSV byte stream (default Beam's ``FileSystems.open``;
            ``transforms.avro.InputOpener`` also opens Avro quote files).
        dedup_horizon_us: drop a quote whose CSV line was replayed within this many microseconds
            before (see ``HistoricalReplay``); ``counts`` then has ``duplicates`` (0: off).
    """

    def __init__(self, sources: Sequence[str], *, default_symbol: str = "UNKNOWN",
                 block_bytes: int = DEFAULT_BLOCK_BYTES, show_progress: bool = False, open_file=None,
                 dedup_horizon_us: int = 0):
        super().__init__()
        if not sources:
            raise ValueError("ReplayHistorical needs at least one input file")
        self._sources = tuple(sources)
        self._fn = _ReplayFn(default_symbol, block_bytes, show_progress, open_file or FileSystems.open,
                             dedup_horizon_us)

    def expand(self, pbegin):
        return (
            pbegin
            | "InputFiles" >> beam.Create([self._sources])
            | "ReplayInArrivalOrder" >> beam.ParDo(self._fn).with_output_types(QuoteBlock).with_outputs(COUNTS, main="blocks")
        )


def plan_stream_replay(
    sources: Sequence[str],
    *,
    lag_us: int | float,
    window: WindowSpec | None,
    early_delay_us: int | None = None,
    default_symbol: str = "UNKNOWN",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    open_file=None,
) -> StreamPlan:
    """Read the files now and cut their arrival-ordered rows into stream steps (see
    :func:`transforms.stream_replay.plan_steps`). Everything is held in memory."""
    replay = HistoricalReplay(
        tuple(sources), default_symbol=default_symbol, block_bytes=block_bytes,
        open_file=open_file or FileSystems.open,
    )
    steps = tuple(plan_steps(replay, lag_us, window, early_delay_us))
    stats = replay.stats.as_dict()
    plan = StreamPlan(steps, stats)
    LOG.info(
        "streaming replay of %s quotes: %s row slices, %s watermark steps",
        stats["records_in"], plan.row_steps, plan.watermark_steps,
    )
    return plan


def as_test_stream(plan: StreamPlan, sources: Sequence[str]) -> TestStream:
    """A ``TestStream`` of QuoteBlocks playing the plan's steps, then the watermark to infinity."""
    stream = TestStream(coder=QuoteBlockCoder())
    clock = 0
    seq = 0
    for step in plan.steps:
        if step.kind == "rows":
            block = QuoteBlock(seq, step.rows, tuple(sources))
            seq += 1
            stream.add_elements([beam.window.TimestampedValue(block, block_timestamp(block))])
        elif step.kind == "watermark":
            stream.advance_watermark_to(Timestamp(micros=step.micros))
        else:
            stream.advance_processing_time(Duration(micros=step.micros - clock))
            clock = step.micros
    return stream.advance_watermark_to_infinity()


class ReplayAsStream(beam.PTransform):
    """A planned streaming replay as an unbounded source: outputs ``blocks`` and ``counts`` (a dict).

    Runs where ``TestStream`` runs: the BundleBasedDirectRunner (``--streaming`` locally).
    """

    def __init__(self, plan: StreamPlan, sources: Sequence[str]):
        super().__init__()
        self._plan = plan
        self._sources = tuple(sources)

    def expand(self, pbegin):
        blocks = pbegin | "ReplayWithWatermarks" >> as_test_stream(self._plan, self._sources)
        counts = pbegin | "ReplayCounts" >> beam.Create([self._plan.stats])
        return {"blocks": blocks, "counts": counts}


# --------------------------------------------------------------------------- unbounded feeds

#: The end of an unbounded feed's range of positions (a feed ends by claiming the rest).
END_OF_FEED = sys.maxsize


class _FeedTracker(OffsetRestrictionTracker):
    """Positions of a feed; splits only where the reader stands (a checkpoint), at a block boundary.

    A fractional split could fall inside a block already fetched; refusing it keeps every
    position read by exactly one reader.
    """

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)


class _FeedPositions(RestrictionProvider):
    def initial_restriction(self, start: int) -> OffsetRange:
        return OffsetRange(start, END_OF_FEED)

    def create_tracker(self, restriction: OffsetRange) -> _FeedTracker:
        return _FeedTracker(restriction)

    def restriction_size(self, start: int, restriction: OffsetRange) -> int:
        return restriction.size()


def next_watermark(current_us: int | None, batch, lag_us: int | float) -> int | None:
    """The source watermark after a block: the newest arrival so far minus ``lag_us`` (whole ms)."""
    newest = newest_arrival(batch)
    if newest is None:
        return current_us
    candidate = watermark_after(newest, lag_us)
    if candidate is None:
        return current_us
    return candidate if current_us is None else max(current_us, candidate)


class _ReadFeedFn(TracedDoFn):
    """A splittable DoFn over a feed's positions; runs until the feed ends or the run stops."""

    STAGE = "read_feed"

    def __init__(self, feed: QuoteFeed, run_id: str, lag_us: int | float):
        self._feed = feed
        self._run_id = run_id
        self._lag_us = lag_us
        self._records = telemetry.counter(self.__class__, "records_in")
        self._blocks = telemetry.counter(self.__class__, "blocks")
        self._reconnects = telemetry.counter(self.__class__, "reconnects")

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        start: int,
        tracker=beam.DoFn.RestrictionParam(_FeedPositions()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ) -> Iterator[QuoteBlock | beam.pvalue.TaggedOutput]:
        feed = copy.deepcopy(self._feed)  # its own statistics for this call
        control = run_control(self._run_id)
        restriction = tracker.current_restriction()
        current: int | None = None
        seq = 0
        claimed = restriction.start - 1
        blocks = feed.blocks(restriction.start, control.stopped)
        try:
            for block in blocks:
                if not tracker.try_claim(block.stop - 1):
                    break  # checkpointed at the previous block: the rest is the residual's
                claimed = block.stop - 1
                self._blocks.inc()
                self._records.inc(block.batch.num_rows)
                quotes = QuoteBlock(seq, block.batch, block.sources)
                seq += 1
                yield beam.window.TimestampedValue(quotes, block_timestamp(quotes))
                current = next_watermark(current, block.batch, self._lag_us)
                if current is not None:
                    watermark.set_watermark(Timestamp(micros=current))
        finally:
            blocks.close()  # closes a live connection cleanly
        if claimed < tracker.current_restriction().stop - 1:
            tracker.try_claim(tracker.current_restriction().stop - 1)  # the feed ended: nothing more here
        stats = feed.stats()
        self._reconnects.inc(stats.get("reconnects", 0))
        LOG.info("feed ended: %s", stats)
        yield beam.pvalue.TaggedOutput(COUNTS, stats)


class ReadFeed(beam.PTransform):
    """Any :class:`~transforms.feeds.QuoteFeed` as an unbounded source of QuoteBlocks.

    Outputs ``blocks`` (each block timestamped at its earliest event time) and ``counts`` (one
    dict: the feed's statistics, when it ends). The source watermark follows arrival time minus
    ``lag_us``. The feed runs until it ends (a live feed's end-of-stream frame, the end of a
    replay) or until the run's :class:`~transforms.modes.RunControl` (``run_id``) is stopped,
    e.g. by SIGTERM; then the range of positions is claimed to its end and the source is done.

    Locally this is a splittable DoFn on the FnApiRunner: the stages fused after it (normalize,
    mid price, a live sink) see each block as soon as it is read, while GroupByKey stages fire
    when the source ends. On Flink or Dataflow the runner may checkpoint it between blocks: the
    residual restarts at the next position, which every feed resumes exactly.
    """

    def __init__(self, feed: QuoteFeed, *, run_id: str | None = None, lag_us: int | float = 0, start: int = 0):
        super().__init__()
        self._feed = feed
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._lag_us = lag_us
        self._start = start

    def expand(self, pbegin):
        return (
            pbegin
            | "StartPosition" >> beam.Create([self._start])
            | "ReadFeed" >> beam.ParDo(_ReadFeedFn(self._feed, self.run_id, self._lag_us))
            .with_output_types(QuoteBlock)
            .with_outputs(COUNTS, main="blocks")
        )


def ReadLiveQuotes(url: str, *, run_id: str | None = None, lag_us: int | float = 0, **options) -> ReadFeed:  # noqa: N802
    """The live websocket feed at ``url`` as an unbounded source (``options``: see LiveFeed)."""
    return ReadFeed(LiveFeed(url, **options), run_id=run_id, lag_us=lag_us)


# --------------------------------------------------------------------------- paginated HTTP APIs


_DONE = object()


def fetch_events(endpoints: Sequence[Endpoint], config: FetchConfig, buffer: int = 8, *, trace_parent=None,
                 **clocks) -> Iterator:
    """Events of :func:`transforms.paginate.fetch_all` (pages, errors, reports) as a plain iterator.

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


FETCH_ERRORS, FETCH_REPORTS = "errors", "reports"


class FetchPaginated(beam.PTransform):
    """Every page of every endpoint (see :mod:`transforms.paginate`), as the pages arrive.

    Outputs: ``pages`` (:class:`~transforms.paginate.Page`), ``errors`` (one dict per page given up:
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
