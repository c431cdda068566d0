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
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import apache_beam as beam
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from transforms.blocks import QuoteBlock, QuoteBlockCoder
from transforms.progress import Progress
from transforms.replay import DEFAULT_BLOCK_BYTES, HistoricalReplay
from transforms.stream_replay import StreamPlan, plan_steps
from transforms.windowing import WindowSpec

LOG = logging.getLogger(__name__)
COUNTS = "counts"


def block_timestamp(block: QuoteBlock) -> Timestamp:
    """The earliest event time in the block (a block of rejected rows only has no event time)."""
    earliest = pc.min(block.batch.column("event_us")).as_py()
    return MIN_TIMESTAMP if earliest is None else Timestamp(micros=earliest)


class _ReplayFn(beam.DoFn):
    def __init__(self, default_symbol: str, block_bytes: int, show_progress: bool):
        self._default_symbol = default_symbol
        self._block_bytes = block_bytes
        self._show_progress = show_progress
        self._records = Metrics.counter(self.__class__, "records_in")
        self._blocks = Metrics.counter(self.__class__, "blocks")

    def process(self, sources: Sequence[str]) -> Iterator[QuoteBlock | beam.pvalue.TaggedOutput]:
        sources = tuple(sources)
        progress = None
        if self._show_progress:
            sizes = [m.size_in_bytes for r in FileSystems.match(list(sources)) for m in r.metadata_list]
            progress = Progress(sum(sizes))
        replay = HistoricalReplay(
            sources,
            default_symbol=self._default_symbol,
            block_bytes=self._block_bytes,
            open_file=FileSystems.open,
            on_block=progress.advance if progress else None,
        )
        for seq, batch in enumerate(replay):
            self._blocks.inc()
            block = QuoteBlock(seq, batch, sources)
            yield beam.window.TimestampedValue(block, block_timestamp(block))
        if progress:
            progress.finish()
        stats = replay.stats.as_dict()
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
    """

    def __init__(self, sources: Sequence[str], *, default_symbol: str = "UNKNOWN",
                 block_bytes: int = DEFAULT_BLOCK_BYTES, show_progress: bool = False):
        super().__init__()
        if not sources:
            raise ValueError("ReplayHistorical needs at least one input file")
        self._sources = tuple(sources)
        self._fn = _ReplayFn(default_symbol, block_bytes, show_progress)

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
) -> StreamPlan:
    """Read the files now and cut their arrival-ordered rows into stream steps (see
    :func:`transforms.stream_replay.plan_steps`). Everything is held in memory."""
    replay = HistoricalReplay(
        tuple(sources), default_symbol=default_symbol, block_bytes=block_bytes, open_file=FileSystems.open
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
