"""The sources' composites: ``ReplayHistorical``, ``ReplayAsStream``, ``ReadFeed`` (live, replay,
webhook and queue feeds, one interface), ``ReadLiveQuotes``, ``ReadAvro`` and ``DecodeAvroMessages``.
The logic they wire is in the pure modules of :mod:`transforms.sources`.

Historical quote CSVs replayed in arrival order, as a Beam source:

``ReplayHistorical(paths)`` emits :class:`~transforms.blocks.QuoteBlock` s of raw quote rows
(:data:`transforms.sources.replay.BLOCK_SCHEMA`) in arrival order (timestamp + latency, ties in file
order), each block with the event time of its earliest quote as its Beam timestamp. Rows that
cannot be replayed travel along with a ``reject`` reason for the normalize stage to dead-letter.
A second output, ``counts``, carries one dict of reader statistics (``records_in``, ...).

The ordering needs one reader for all files, so this source is a single ``DoFn`` call; memory
stays bounded by the rows within the largest latency of the newest timestamp (see
:mod:`transforms.sources.arrival`).

``ReplayAsStream(plan_stream_replay(...))`` is the same replay as an unbounded stream whose
watermark follows arrival time (:mod:`transforms.sources.stream_replay`), played by Beam's ``TestStream``
on a streaming runner; it has the same two outputs.

``ReadFeed(feed)`` reads any :class:`~transforms.sources.feeds.QuoteFeed` (the live websocket, a
replay that switches to live, a webhook inbox, a queue consumer) as an unbounded splittable DoFn
with a watermark; ``ReadAvro`` and ``DecodeAvroMessages`` read Avro files and single-object
messages with a reader schema (:mod:`transforms.sources.avro_input`).
"""

from __future__ import annotations

import copy
import logging
import sys
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import apache_beam as beam
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from schemas.single_object import DecodeError, SingleObjectDecoder
from transforms import telemetry
from transforms.accounting import RECORDS_CHECK, Accounting, Check
from transforms.blocks import QuoteBlock, QuoteBlockCoder
from transforms.progress import Progress
from transforms.sources.avro_input import DEAD_LETTERS, dead_letter, match_files, read_avro_file
from transforms.sources.feeds import HistoricalFeed, QuoteFeed
from transforms.sources.live import LiveFeed
from transforms.sources.modes import run_control
from transforms.sources.replay import DEFAULT_BLOCK_BYTES, HistoricalReplay
from transforms.sources.stream_replay import StreamPlan, plan_steps
from transforms.sources.watermarks import NO_WATERMARK_YET, interval_pieces, next_watermark
from transforms.tracing import TracedDoFn
from transforms.windows.logic import WindowSpec

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
            ``transforms.sources.avro_input.InputOpener`` also opens Avro quote files).
        dedup_horizon_us: drop a quote whose CSV line was replayed within this many microseconds
            before (see ``HistoricalReplay``); ``counts`` then has ``duplicates`` (0: off).
    """

    #: With a dedup horizon, a quote read is also accounted for as a duplicate dropped.
    DEDUP_ACCOUNTING = Accounting(
        checks=(Check(RECORDS_CHECK, ("duplicates",)),),
        set_aside=("duplicates",),
        counts=(("duplicates", "duplicates"),),
        notes=("  {duplicates:,} duplicate quotes dropped (same line within {dedup_horizon})",),
    )

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
    :func:`transforms.sources.stream_replay.plan_steps`). Everything is held in memory."""
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


@dataclass
class _OpenFeed:
    """A feed part-read by a bundle that ended at an interval's end, kept for the bundle that resumes
    it at ``position`` in this process (else the resuming bundle reopens the feed there)."""

    feed: QuoteFeed
    blocks: Iterator
    pending: list  # Pieces read but not emitted yet, with their feed positions
    interval: int | None
    watermark_us: int | None  # after the rows emitted so far (next_watermark), reported at each interval's end


#: Feeds waiting for their resuming bundle, by (run id, position).
_OPEN_FEEDS: dict[tuple[str, int], _OpenFeed] = {}


class _ReadFeedFn(TracedDoFn):
    """A splittable DoFn over a feed's positions; runs until the feed ends or the run stops.

    With ``interval_us`` its bundles end on the rule of :mod:`transforms.sources.watermarks`, so that
    a runner with real watermarks (Prism, Flink) fires windows while the feed runs.
    """

    STAGE = "read_feed"

    def __init__(self, feed: QuoteFeed, run_id: str, lag_us: int | float, interval_us: int | None = None):
        self._feed = feed
        self._run_id = run_id
        self._lag_us = lag_us
        self._interval_us = interval_us
        self._records = telemetry.counter(self.__class__, "records_in")
        self._blocks = telemetry.counter(self.__class__, "blocks")
        self._reconnects = telemetry.counter(self.__class__, "reconnects")
        self._checkpoints = telemetry.counter(self.__class__, "watermark_reports")

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        start: int,
        tracker=beam.DoFn.RestrictionParam(_FeedPositions()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ) -> Iterator[QuoteBlock | beam.pvalue.TaggedOutput]:
        if self._interval_us:
            yield from self._by_interval(tracker, watermark)
            return
        feed = copy.deepcopy(self._feed)  # its own statistics for this call
        control = run_control(self._run_id)
        restriction = tracker.current_restriction()
        current: int | None = None
        claimed = restriction.start - 1
        blocks = feed.blocks(restriction.start, control.stopped)
        try:
            for block in blocks:
                if not tracker.try_claim(block.stop - 1):
                    break  # checkpointed at the previous block: the rest is the residual's
                claimed = block.stop - 1
                yield self._emit(block.start, block.batch, block.sources)
                current = next_watermark(current, block.batch, self._lag_us)
                if current is not None:
                    watermark.set_watermark(Timestamp(micros=current))
        finally:
            blocks.close()  # closes a live connection cleanly
        if claimed < tracker.current_restriction().stop - 1:
            tracker.try_claim(tracker.current_restriction().stop - 1)  # the feed ended: nothing more here
        yield self._ended(feed)

    def _emit(self, position: int, batch, sources, watermark_us: int | None = None):
        self._blocks.inc()
        self._records.inc(batch.num_rows)
        quotes = QuoteBlock(position, batch, sources, watermark_us)  # seq: the position, unique in the feed
        return beam.window.TimestampedValue(quotes, block_timestamp(quotes))

    def _ended(self, feed: QuoteFeed) -> beam.pvalue.TaggedOutput:
        stats = feed.stats()
        self._reconnects.inc(stats.get("reconnects", 0))
        LOG.info("feed ended: %s", stats)
        return beam.pvalue.TaggedOutput(COUNTS, stats)

    def _open(self, position: int) -> _OpenFeed:
        """The feed at ``position``: the one a bundle of this process left there, else reopened."""
        kept = _OPEN_FEEDS.pop((self._run_id, position), None)
        if kept is not None:
            return kept
        feed = copy.deepcopy(self._feed)
        return _OpenFeed(feed, iter(feed.blocks(position, run_control(self._run_id).stopped)), [], None, None)

    def _pieces(self, state: _OpenFeed) -> Iterator[tuple[int, object, tuple[str, ...]]]:
        while True:
            if state.pending:
                yield state.pending.pop(0)
                continue
            block = next(state.blocks, None)
            if block is None:
                return
            for piece in interval_pieces(block.batch, self._interval_us, state.interval):
                state.pending.append((block.start + piece.offset, piece, block.sources))

    def _by_interval(self, tracker, watermark) -> Iterator[QuoteBlock | beam.pvalue.TaggedOutput]:
        position = tracker.current_restriction().start
        state = self._open(position)
        reported = watermark.current_watermark()
        stamp = NO_WATERMARK_YET if reported is None or reported <= MIN_TIMESTAMP else reported.micros
        emitted = False
        for piece_start, piece, sources in self._pieces(state):
            later = piece.interval is not None and state.interval is not None and piece.interval > state.interval
            if later and emitted:  # the interval is over: report its watermark, end the bundle
                state.pending.insert(0, (piece_start, piece, sources))
                if state.watermark_us is not None:
                    watermark.set_watermark(Timestamp(micros=state.watermark_us))
                state.interval = piece.interval
                _OPEN_FEEDS[(self._run_id, piece_start)] = state
                self._checkpoints.inc()
                tracker.defer_remainder()
                return
            if not tracker.try_claim(piece_start + piece.rows.num_rows - 1):
                # checkpointed by the runner here: the residual resumes at this piece, with this feed
                state.pending.insert(0, (piece_start, piece, sources))
                _OPEN_FEEDS[(self._run_id, piece_start)] = state
                return
            if piece.interval is not None:
                state.interval = piece.interval  # never goes back: interval_pieces carries it forward
            state.watermark_us = next_watermark(state.watermark_us, piece.rows, self._lag_us)
            emitted = True
            yield self._emit(piece_start, piece.rows, sources, stamp)
        state.blocks.close()
        rest = tracker.current_restriction()
        tracker.try_claim(rest.stop - 1)  # the feed ended: nothing more here
        yield self._ended(state.feed)


class ReadFeed(beam.PTransform):
    """Any :class:`~transforms.sources.feeds.QuoteFeed` as an unbounded source of QuoteBlocks.

    Outputs ``blocks`` (each block timestamped at its earliest event time) and ``counts`` (one
    dict: the feed's statistics, when it ends). The source watermark follows arrival time minus
    ``lag_us``. The feed runs until it ends (a live feed's end-of-stream frame, the end of a
    replay) or until the run's :class:`~transforms.sources.modes.RunControl` (``run_id``) is stopped,
    e.g. by SIGTERM; then the range of positions is claimed to its end and the source is done.

    Locally this is a splittable DoFn on the FnApiRunner: the stages fused after it (normalize,
    mid price, a live sink) see each block as soon as it is read, while GroupByKey stages fire
    when the source ends. On Flink or Dataflow the runner may checkpoint it between blocks: the
    residual restarts at the next position, which every feed resumes exactly.
    """

    def __init__(self, feed: QuoteFeed, *, run_id: str | None = None, lag_us: int | float = 0, start: int = 0,
                 watermark_interval_us: int | None = None):
        super().__init__()
        self._feed = feed
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._lag_us = lag_us
        self._start = start
        self._interval_us = watermark_interval_us

    def expand(self, pbegin):
        return (
            pbegin
            | "StartPosition" >> beam.Create([self._start])
            | "ReadFeed" >> beam.ParDo(_ReadFeedFn(self._feed, self.run_id, self._lag_us, self._interval_us))
            .with_output_types(QuoteBlock)
            .with_outputs(COUNTS, main="blocks")
        )


def ReadLiveQuotes(url: str, *, run_id: str | None = None, lag_us: int | float = 0, **options) -> ReadFeed:  # noqa: N802
    """The live websocket feed at ``url`` as an unbounded source (``options``: see LiveFeed)."""
    return ReadFeed(LiveFeed(url, **options), run_id=run_id, lag_us=lag_us)


# --------------------------------------------------------------------------- paginated HTTP APIs




class _ReadFileFn(TracedDoFn):
    STAGE = "read_avro"

    def __init__(self, reader_schema: dict):
        self._reader_schema = reader_schema
        self._records = telemetry.counter(self.__class__, "avro_records_in")

    def process(self, path: str) -> Iterator[dict]:
        count = 0
        for record in read_avro_file(path, self._reader_schema):
            count += 1
            yield record
        self._records.inc(count)
        LOG.info("read %s records from %s", count, path)


class ReadAvro(beam.PTransform):
    """Records of the Avro files matching ``pattern``, every one in ``reader_schema``'s shape."""

    def __init__(self, pattern: str, reader_schema: dict):
        super().__init__()
        self._pattern = pattern
        self._reader_schema = reader_schema

    def expand(self, pbegin):
        return (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])
            | "MatchFiles" >> beam.FlatMap(match_files)
            | "OneFilePerWorker" >> beam.Reshuffle()
            | "ReadFile" >> beam.ParDo(_ReadFileFn(self._reader_schema))
        )


class _DecodeFn(TracedDoFn):
    STAGE = "decode_avro"

    def __init__(self, reader_schema: dict, writer_schemas: Sequence[dict], source: str):
        self._reader_schema = reader_schema
        self._writer_schemas = tuple(writer_schemas)
        self._source = source
        self._decoder = None
        self._dead = telemetry.counter(self.__class__, "dead_lettered")

    def setup(self):
        self._decoder = SingleObjectDecoder(self._reader_schema, self._writer_schemas)

    def process(self, element: tuple[int, bytes]) -> Iterator[dict | beam.pvalue.TaggedOutput]:
        index, message = element
        try:
            yield self._decoder.decode(message)
        except DecodeError as exc:
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(self._source, index, message, exc.reason))


class DecodeAvroMessages(beam.PTransform):
    """``(index, message bytes)`` -> ``records`` and ``dead_letters`` (see the module docstring).

    ``index`` is where the message sits in its source (a queue offset, a frame's seq), reported
    as the dead letter's ``line``.
    """

    def __init__(self, reader_schema: dict, writer_schemas: Iterable[dict], source: str):
        super().__init__()
        self._reader_schema = reader_schema
        self._writer_schemas = tuple(writer_schemas)
        self._source = source
        SingleObjectDecoder(reader_schema, self._writer_schemas)  # refuse unreadable writers now

    def expand(self, messages):
        return messages | "Decode" >> beam.ParDo(
            _DecodeFn(self._reader_schema, self._writer_schemas, self._source)
        ).with_outputs(DEAD_LETTERS, main="records")
