"""ReadFeed: any QuoteFeed as an unbounded splittable DoFn on the FnApiRunner."""

from __future__ import annotations

import io
import threading
import time
import uuid

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from runners import make_runner
from tests.conftest import WORKED_EXAMPLE
from transforms.sinks.stage import when_input_ends
from transforms.sources.feeds import FeedBlock, HistoricalFeed
from transforms.sources.modes import forget_run, run_control
from transforms.sources.replay import HistoricalReplay
from transforms.sources.stage import END_OF_FEED, ReadFeed, _FeedTracker
from transforms.sources.watermarks import next_watermark
from transforms.windows.logic import INFINITE


def _historical(text: str, **options) -> HistoricalFeed:
    return HistoricalFeed(["f.csv"], open_file=lambda _: io.BytesIO(text.encode()), **options)


def _all_rows(text: str) -> list[int]:
    batches = list(HistoricalReplay(["f.csv"], open_file=lambda _: io.BytesIO(text.encode())))
    return pa.concat_batches(batches).column("line").to_pylist()


def _pipeline() -> beam.Pipeline:
    return beam.Pipeline(runner=make_runner(PipelineOptions(["--streaming"]), unbounded_source=True))


CSV = "timestamp,bid,ask,latency_ms\n" + "".join(
    f"2024-01-01 00:00:{i // 10:02d}.{i % 10}00,{100 + i},{101 + i},{i % 7}\n" for i in range(200)
)


def test_reads_every_record_of_a_feed_once_in_order_with_its_counts():
    pipeline = _pipeline()
    read = pipeline | ReadFeed(_historical(CSV, max_rows=17))
    lines = read["blocks"] | beam.FlatMap(lambda block: [(block.seq, block.batch.column("line").to_pylist())])
    ordered = lines | when_input_ends() | beam.combiners.ToList() | beam.Map(lambda pairs: [x for _, ls in sorted(pairs) for x in ls])
    assert_that(ordered, equal_to([_all_rows(CSV)]), label="rows")
    assert_that(read["counts"] | "CountsEnd" >> when_input_ends() | beam.Map(lambda c: c["records_in"]), equal_to([200]),
                label="counts")
    pipeline.run().wait_until_finish()


def test_blocks_are_timestamped_at_their_earliest_event_time():
    pipeline = _pipeline()
    read = pipeline | ReadFeed(_historical(CSV, max_rows=50))

    class Stamp(beam.DoFn):
        def process(self, block, timestamp=beam.DoFn.TimestampParam):
            yield timestamp.micros == min(block.batch.column("event_us").to_pylist())

    expected = len(list(_historical(CSV, max_rows=50).blocks(0)))
    assert_that(read["blocks"] | beam.ParDo(Stamp()) | when_input_ends(), equal_to([True] * expected))
    pipeline.run().wait_until_finish()


def test_stopping_the_run_control_ends_a_feed_that_never_ends():
    run_id = uuid.uuid4().hex
    started = threading.Event()

    class Endless:
        mode = "historical"

        def __init__(self):
            self.sent = 0

        def blocks(self, start, stopping):
            batch = pa.concat_batches(list(HistoricalReplay(["f"], open_file=lambda _: io.BytesIO(CSV.encode()))))
            position = start
            while not stopping():
                started.set()
                yield FeedBlock(batch.slice(0, 1), position, position + 1, ("f",))
                position += 1
                self.sent += 1
                time.sleep(0.001)

        def stats(self):
            return {"records_in": self.sent}

    def stop_later():
        started.wait(30)
        time.sleep(0.3)
        run_control(run_id).stop()

    pipeline = _pipeline()
    read = pipeline | ReadFeed(Endless(), run_id=run_id)
    counted = (read["blocks"] | beam.Map(lambda block: block.num_rows) | "BlocksEnd" >> when_input_ends()
               | beam.CombineGlobally(sum).without_defaults())
    pairs = (counted, read["counts"] | beam.Map(lambda c: c["records_in"]) | "CountsEnd" >> when_input_ends())
    both = (pairs | beam.Flatten() | beam.combiners.ToList() | beam.Map(lambda v: len(v) == 2 and v[0] == v[1] > 0))
    assert_that(both, equal_to([True]))
    stopper = threading.Thread(target=stop_later, daemon=True)
    stopper.start()
    try:
        pipeline.run().wait_until_finish()
    finally:
        forget_run(run_id)
    stopper.join(5)
    assert not stopper.is_alive()


def test_the_tracker_splits_only_at_a_checkpoint_where_the_reader_stands():
    tracker = _FeedTracker(OffsetRange(0, END_OF_FEED))
    assert tracker.try_claim(9)  # a block of positions 0..9
    assert tracker.try_split(0.5) is None  # a fraction could fall inside a fetched block
    primary, residual = tracker.try_split(0)  # a checkpoint
    assert (primary.start, primary.stop) == (0, 10)
    assert (residual.start, residual.stop) == (10, END_OF_FEED)  # the residual resumes at the next position
    assert not tracker.try_claim(19)


def test_a_residual_resumes_the_feed_exactly_at_its_start_position():
    feed = _historical(CSV, max_rows=30)
    first = [block for _, block in zip(range(2), feed.blocks(0))]
    resumed = next(iter(_historical(CSV, max_rows=30).blocks(first[-1].stop)))
    rows = _all_rows(CSV)
    assert resumed.start == 60
    assert resumed.batch.column("line").to_pylist() == rows[60:90]


@pytest.mark.parametrize(
    "current, arrivals, lag_us, expected",
    [
        (None, [5_000_000, 7_000_500], 0, 7_000_000),  # the newest arrival, floored to the millisecond
        (None, [5_000_000, 7_000_000], 1_000_000, 6_000_000),  # minus the lag
        (9_000_000, [5_000_000], 0, 9_000_000),  # never goes back
        (None, [None], 0, None),  # a block of rejected rows only: no news
        (3_000_000, [8_000_000], INFINITE, 3_000_000),  # an infinite lag never advances
    ],
)
def test_next_watermark(current, arrivals, lag_us, expected):
    batch = pa.RecordBatch.from_pydict({"arrival_us": pa.array(arrivals, type=pa.int64())})
    assert next_watermark(current, batch, lag_us) == expected


def test_worked_example_through_read_feed_has_the_replay_order():
    pipeline = _pipeline()
    read = pipeline | ReadFeed(_historical(WORKED_EXAMPLE, max_rows=1))
    lines = read["blocks"] | beam.Map(lambda block: (block.seq, block.batch.column("line")[0].as_py()))
    assert_that(lines | when_input_ends() | beam.combiners.ToList() | beam.Map(lambda v: [line for _, line in sorted(v)]),
                equal_to([_all_rows(WORKED_EXAMPLE)]))
    pipeline.run().wait_until_finish()


@pytest.mark.parametrize("interval_us", [100_000, 1_000_000, 7_000])
def test_with_a_watermark_interval_each_block_carries_the_watermark_the_rule_gives(interval_us):
    # ReadFeed ends a bundle at each interval of arrival time (transforms.sources.watermarks); on the
    # FnApiRunner too, which resumes each checkpoint. Every row is read once, in order, and its block
    # carries the watermark the row-by-row reference gives; the counts come once, for the whole feed.
    from transforms.sources.watermarks import NO_WATERMARK_YET, watermarks_in_force

    pipeline = _pipeline()
    read = pipeline | ReadFeed(_historical(CSV), lag_us=20_000, watermark_interval_us=interval_us)
    rows = read["blocks"] | beam.FlatMap(
        lambda block: [(block.seq + i, line, arrival, block.watermark_us) for i, (line, arrival) in enumerate(
            zip(block.batch.column("line").to_pylist(), block.batch.column("arrival_us").to_pylist()))])

    def check(items):
        items = sorted(items)
        assert [position for position, *_ in items] == list(range(200))
        assert [line for _, line, _, _ in items] == _all_rows(CSV)
        expected = watermarks_in_force([arrival for _, _, arrival, _ in items], interval_us, 20_000)
        assert [mark for *_, mark in items] == [NO_WATERMARK_YET if m is None else m for m in expected]
        return True

    assert_that(rows | when_input_ends() | beam.combiners.ToList() | beam.Map(check), equal_to([True]), label="rows")
    assert_that(read["counts"] | "CountsEnd" >> when_input_ends() | beam.Map(lambda c: c["records_in"]), equal_to([200]),
                label="counts")
    pipeline.run().wait_until_finish()
