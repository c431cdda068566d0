"""The feed interface: HistoricalFeed read from any position, the Pacer, and slices."""

from __future__ import annotations

import math
import time
from functools import lru_cache

import pyarrow as pa
import pytest

from beam_pipeline.config import bundled_sample
from transforms.quotes.rules import HISTORICAL
from transforms.sources.feeds import FeedBlock, HistoricalFeed, Pacer, slices
from transforms.sources.replay import BLOCK_SCHEMA, HistoricalReplay

SAMPLE = bundled_sample("historical_sample.csv")
BLOCK_BYTES = 4096  # about 70 blocks of the sample: many block boundaries
HEADER = "timestamp,symbol,bid_price,bid_size,ask_price,ask_size,latency_ms\n"


@lru_cache(maxsize=None)
def replay_blocks(sources: tuple[str, ...], block_bytes: int = BLOCK_BYTES) -> tuple[pa.RecordBatch, ...]:
    """The blocks of a plain HistoricalReplay of the files (what every feed position refers to)."""
    return tuple(HistoricalReplay(list(sources), block_bytes=block_bytes))


def full_replay(sources, block_bytes: int = BLOCK_BYTES) -> pa.RecordBatch:
    return pa.concat_batches(list(replay_blocks(tuple(sources), block_bytes)))


def rows(blocks: list[FeedBlock]) -> pa.RecordBatch:
    if not blocks:
        return pa.record_batch([pa.array([], type=f.type) for f in BLOCK_SCHEMA], schema=BLOCK_SCHEMA)
    return pa.concat_batches([b.batch for b in blocks])


def assert_contiguous(blocks: list[FeedBlock], start: int, total: int) -> None:
    position = start
    for block in blocks:
        assert block.start == position and block.stop == position + block.batch.num_rows
        assert block.batch.num_rows > 0
        position = block.stop
    if blocks:
        assert position == total
    else:
        assert start >= total


def starts_to_try() -> list[int]:
    sizes = [b.num_rows for b in replay_blocks((SAMPLE,))]
    total = sum(sizes)
    return [0, 1, sizes[0] // 2, sizes[0], sizes[0] + 1, sizes[0] + sizes[1], total // 2, total - 1, total,
            total + 7]


# --------------------------------------------------------------------------- HistoricalFeed


@pytest.mark.parametrize("start", starts_to_try())
def test_blocks_from_a_position_are_the_replay_from_there(start):
    expected = full_replay([SAMPLE])
    feed = HistoricalFeed([SAMPLE], block_bytes=BLOCK_BYTES)
    blocks = list(feed.blocks(start))
    got = rows(blocks)
    assert got.equals(expected.slice(min(start, expected.num_rows)))
    assert_contiguous(blocks, start, expected.num_rows)
    assert all(b.sources == (SAMPLE,) for b in blocks)
    assert set(got.column("mode").to_pylist()) <= {HISTORICAL}
    assert feed.stats()["records_in"] == got.num_rows == max(0, expected.num_rows - start)


def test_every_start_position_of_a_small_file_with_rejected_rows(write_csv):
    lines = [f"2024-01-01 00:00:{s:02d}.000,EURUSD,1.1,5,1.2,6,{(s * 37) % 900}" for s in range(30)]
    lines[4] = "not a time,EURUSD,1.1,5,1.2,6,0"
    lines[11] = "2024-01-01 00:00:11.000,EURUSD,1.1,5,1.2"  # too few fields
    lines[17] = "2024-01-01 00:00:17.000,EURUSD,1.1,5,1.2,6,-1"
    path = str(write_csv(HEADER + "\n".join(lines) + "\n"))
    expected = full_replay([path], block_bytes=160)
    assert expected.num_rows == 30 and expected.column("reject").null_count < 30
    for start in range(expected.num_rows + 2):
        feed = HistoricalFeed([path], block_bytes=160)
        blocks = list(feed.blocks(start))
        assert rows(blocks).equals(expected.slice(min(start, 30))), start
        assert_contiguous(blocks, start, 30)
        assert feed.stats()["records_in"] == max(0, 30 - start)


def test_several_files_are_one_sequence_of_positions(write_csv):
    a = write_csv(HEADER + "".join(f"2024-01-01 00:00:0{s}.000,A,1,1,2,1,{s * 300}\n" for s in range(8)), "a.csv")
    b = write_csv(HEADER + "".join(f"2024-01-01 00:00:0{s}.500,B,1,1,2,1,5\n" for s in range(8)), "b.csv")
    sources = [str(a), str(b)]
    expected = full_replay(sources, block_bytes=100)
    assert expected.num_rows == 16 and set(expected.column("file").to_pylist()) == {0, 1}
    for start in (0, 3, 9, 15, 16):
        feed = HistoricalFeed(sources, block_bytes=100)
        blocks = list(feed.blocks(start))
        assert rows(blocks).equals(expected.slice(start))
        assert all(block.sources == tuple(sources) for block in blocks)


@pytest.mark.parametrize("max_rows", [1, 7, 16, 1000])
def test_max_rows_cuts_the_blocks(max_rows):
    sizes = [b.num_rows for b in replay_blocks((SAMPLE,))]
    feed = HistoricalFeed([SAMPLE], block_bytes=BLOCK_BYTES, max_rows=max_rows)
    blocks = list(feed.blocks(0))
    assert max(b.batch.num_rows for b in blocks) <= max_rows
    assert len(blocks) == sum(math.ceil(size / max_rows) for size in sizes)
    assert rows(blocks).equals(full_replay([SAMPLE]))
    assert_contiguous(blocks, 0, sum(sizes))


def test_max_rows_with_a_start_inside_a_block():
    sizes = [b.num_rows for b in replay_blocks((SAMPLE,))]
    start = sizes[0] + 3
    feed = HistoricalFeed([SAMPLE], block_bytes=BLOCK_BYTES, max_rows=5)
    blocks = list(feed.blocks(start))
    assert blocks[0].batch.num_rows == min(5, sizes[1] - 3)
    assert rows(blocks).equals(full_replay([SAMPLE]).slice(start))
    assert_contiguous(blocks, start, sum(sizes))


def test_stats_before_and_after():
    feed = HistoricalFeed([SAMPLE], block_bytes=BLOCK_BYTES)
    assert feed.stats() == {"records_in": 0}
    blocks = list(feed.blocks(100))
    stats = feed.stats()
    assert stats["records_in"] == sum(b.batch.num_rows for b in blocks) == full_replay([SAMPLE]).num_rows - 100
    assert stats["files"] == 1


def test_stopping_ends_the_blocks_early():
    stop = []
    feed = HistoricalFeed([SAMPLE], block_bytes=BLOCK_BYTES, max_rows=10)
    got = []
    for block in feed.blocks(0, stopping=lambda: bool(stop)):
        got.append(block)
        if len(got) == 2:
            stop.append(True)
    assert len(got) == 2
    assert feed.stats()["records_in"] == got[0].batch.num_rows + got[1].batch.num_rows
    assert got[1].stop == feed.stats()["records_in"]


def test_stopping_from_the_start_yields_nothing():
    feed = HistoricalFeed([SAMPLE], block_bytes=BLOCK_BYTES)
    assert list(feed.blocks(0, stopping=lambda: True)) == []
    assert feed.stats()["records_in"] == 0


def test_a_paced_feed_takes_its_time():
    total = full_replay([SAMPLE]).num_rows
    start = total - 1000
    feed = HistoricalFeed([SAMPLE], block_bytes=BLOCK_BYTES, rate=10_000, max_rows=100)
    began = time.monotonic()
    blocks = list(feed.blocks(start))
    elapsed = time.monotonic() - began
    assert sum(b.batch.num_rows for b in blocks) == 1000
    assert elapsed >= (1000 - 100) / 10_000 * 0.9  # the last 100 rows may go at once


def test_negative_start_is_refused():
    feed = HistoricalFeed([SAMPLE])
    with pytest.raises(ValueError, match="negative"):
        feed.blocks(-1)  # at the call, not at the first next()


@pytest.mark.parametrize("sources", [[], ()])
def test_a_feed_needs_files(sources):
    with pytest.raises(ValueError, match="at least one"):
        HistoricalFeed(sources)


def test_a_header_only_file_has_no_blocks(write_csv):
    feed = HistoricalFeed([str(write_csv(HEADER))])
    assert list(feed.blocks(0)) == []
    assert feed.stats()["records_in"] == 0


# --------------------------------------------------------------------------- Pacer


class FakeTime:
    """A clock that only moves when slept on (or when told to)."""

    def __init__(self, now: float = 1000.0):
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_zero_never_sleeps():
    fake = FakeTime()
    pacer = Pacer(0, clock=fake.clock, sleep=fake.sleep)
    assert all(pacer.wait_to_send(10_000) for _ in range(50))
    assert fake.sleeps == []


@pytest.mark.parametrize("rate, count", [(100, 10), (1000, 1), (7, 3), (50_000, 2000)])
def test_sending_is_held_to_the_rate(rate, count):
    fake = FakeTime()
    pacer = Pacer(rate, clock=fake.clock, sleep=fake.sleep)
    began = fake.now
    for calls in range(12):
        assert pacer.wait_to_send(count)
        # Before this call, calls * count records had gone: it may go at began + those / rate.
        assert fake.now - began == pytest.approx(calls * count / rate, abs=1e-9)
    assert sum(fake.sleeps) == pytest.approx(11 * count / rate, abs=1e-9)
    assert max(fake.sleeps) <= 0.05  # sleeps in short steps, to notice stopping


def test_a_slow_producer_is_not_held_back():
    fake = FakeTime()
    pacer = Pacer(100, clock=fake.clock, sleep=fake.sleep)
    for _ in range(10):
        assert pacer.wait_to_send(10)
        fake.now += 0.2  # the producer's own work takes longer than 10 / 100 s
    assert fake.sleeps == []


def test_the_rate_is_measured_from_the_first_call():
    fake = FakeTime()
    pacer = Pacer(10, clock=fake.clock, sleep=fake.sleep)
    assert pacer.wait_to_send(1)
    fake.now += 5.0  # idle: 50 records' worth of time
    for _ in range(40):
        assert pacer.wait_to_send(1)
    assert fake.sleeps == []
    for _ in range(20):
        assert pacer.wait_to_send(1)
    assert sum(fake.sleeps) == pytest.approx(6.0 - 5.0, abs=1e-9)  # record 60 may go at 6 s


def test_stopping_returns_false_and_counts_nothing():
    fake = FakeTime()
    pacer = Pacer(100, clock=fake.clock, sleep=fake.sleep)
    began = fake.now
    assert pacer.wait_to_send(10)
    assert not pacer.wait_to_send(10, stopping=lambda: True)
    assert not pacer.wait_to_send(500, stopping=lambda: True)
    assert fake.sleeps == []
    assert pacer.wait_to_send(10)
    assert fake.now - began == pytest.approx(10 / 100)  # only the first 10 were counted
    assert pacer.wait_to_send(10)
    assert fake.now - began == pytest.approx(20 / 100)


def test_stopping_while_waiting():
    fake = FakeTime()
    pacer = Pacer(10, clock=fake.clock, sleep=fake.sleep)
    began = fake.now
    assert pacer.wait_to_send(10)  # the next may go 1 s later
    assert not pacer.wait_to_send(10, stopping=lambda: len(fake.sleeps) >= 3)
    assert len(fake.sleeps) == 3 and fake.now - began < 1.0
    assert pacer.wait_to_send(10)
    assert fake.now - began == pytest.approx(1.0)


def test_rate_zero_still_answers_stopping():
    pacer = Pacer(0, clock=lambda: pytest.fail("no clock needed"), sleep=lambda s: pytest.fail("no sleep"))
    assert not pacer.wait_to_send(5, stopping=lambda: True)
    assert pacer.wait_to_send(5)


@pytest.mark.parametrize("rate", [-1, -0.001])
def test_negative_rate_is_refused(rate):
    with pytest.raises(ValueError, match="negative"):
        Pacer(rate)


# --------------------------------------------------------------------------- slices


def numbers(count: int) -> pa.RecordBatch:
    return pa.record_batch({"n": pa.array(range(count), type=pa.int64())})


@pytest.mark.parametrize("max_rows", [None, 0])
def test_slices_without_a_limit_is_the_whole_batch(max_rows):
    batch = numbers(10)
    assert list(slices(batch, max_rows)) == [batch]


@pytest.mark.parametrize("count, max_rows", [(10, 3), (10, 5), (10, 9), (10, 10), (10, 11), (1, 1), (7, 1)])
def test_slices_cut_in_order(count, max_rows):
    pieces = list(slices(numbers(count), max_rows))
    expected = [list(range(i, min(i + max_rows, count))) for i in range(0, count, max_rows)]
    assert [p.column("n").to_pylist() for p in pieces] == expected
    assert len(pieces) == math.ceil(count / max_rows)


def test_slices_of_an_empty_batch():
    assert [p.num_rows for p in slices(numbers(0), 4)] == [0]
