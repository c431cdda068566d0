"""ReadAhead, and the replay reading ahead: same items, order and errors as reading in place."""

from __future__ import annotations

import io
import threading

import pyarrow as pa
import pytest

from beam_pipeline.devtools.samples import generate, with_malformed
from transforms.sources.read_ahead import ReadAhead
from transforms.sources.replay import HistoricalReplay


class Counting:
    """An iterator over range(n) that records how far it was pulled, and can fail at one item."""

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at, self.pulled = n, fail_at, 0

    def __iter__(self):
        for item in range(self.n):
            if item == self.fail_at:
                raise KeyError(f"item {item}")
            self.pulled = item + 1
            yield item


def _alive(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(name)]


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_items_come_in_order_and_all_of_them(depth):
    with ReadAhead(Counting(100), depth, name="t-order") as ahead:
        assert list(ahead) == list(range(100))
        assert next(ahead, "done") == "done"


def test_an_error_is_raised_at_its_place_after_the_items_before_it():
    ahead = ReadAhead(Counting(10, fail_at=4), 3, name="t-error")
    assert [next(ahead) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="item 4"):
        next(ahead)
    assert next(ahead, "done") == "done"
    ahead.close()


def test_the_producer_stays_at_most_depth_items_ahead():
    source = Counting(1000)
    ahead = ReadAhead(source, 2, name="t-depth")
    taken = [next(ahead) for _ in range(3)]
    for _ in range(200):  # wait until the producer blocks on the full queue
        if source.pulled == 3 + 2 + 1:
            break
        threading.Event().wait(0.01)
    assert taken == [0, 1, 2]
    assert source.pulled <= 3 + 2 + 1  # 2 queued, 1 in hand waiting for room
    ahead.close()


def test_close_before_the_end_stops_the_thread_and_the_pulling():
    source = Counting(10**9)
    ahead = ReadAhead(source, 2, name="t-close")
    assert next(ahead) == 0
    ahead.close()
    assert not _alive("t-close")
    pulled = source.pulled
    threading.Event().wait(0.1)
    assert source.pulled == pulled <= 1 + 2 + 1
    assert next(ahead, "done") == "done"


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        ReadAhead([], 0)


# --- the replay ---------------------------------------------------------------------------------


def _files() -> dict[str, bytes]:
    return {"a.csv": with_malformed(generate(4000, seed=11)), "b.csv": generate(3000, seed=12),
            "c.csv": generate(50, seed=13)}


def _replay(files, **kwargs) -> list[pa.RecordBatch]:
    return list(HistoricalReplay(list(files), open_file=lambda name: io.BytesIO(files[name]), **kwargs))


@pytest.mark.parametrize("block_bytes", [200, 4096, 1 << 20])
def test_reading_ahead_gives_the_same_blocks_as_reading_in_place(block_bytes):
    files = _files()
    direct = _replay(files, block_bytes=block_bytes, read_ahead=0)
    for ahead in (1, 3):
        blocks = _replay(files, block_bytes=block_bytes, read_ahead=ahead)
        assert [b.num_rows for b in blocks] == [b.num_rows for b in direct]
        assert all(a.equals(b) for a, b in zip(blocks, direct))


def test_many_files_are_read_in_place():
    files = {f"{i}.csv": generate(20, seed=i) for i in range(4)}
    started = []
    real_init = ReadAhead.__init__

    def counting_init(self, *args, **kwargs):
        started.append(args)
        real_init(self, *args, **kwargs)

    try:
        ReadAhead.__init__ = counting_init
        _replay(files, read_ahead_files=3)
        assert started == []
        _replay(files, read_ahead_files=4)
        assert len(started) == 4
    finally:
        ReadAhead.__init__ = real_init


class Watched(io.BytesIO):
    """A file that fails a read at ``fail_after`` bytes, can hold reads from the ``gated_from``-th
    on until ``gate`` is set, and notes any read that ends on a closed file."""

    def __init__(self, data: bytes, fail_after: int | None = None, gated_from: int | None = None):
        super().__init__(data)
        self.fail_after, self.gated_from = fail_after, gated_from
        self.gate = threading.Event()
        self.reads = 0
        self.read_after_close = False

    def read(self, size=-1):
        self.reads += 1
        if self.gated_from is not None and self.reads >= self.gated_from:
            self.gate.wait(5)
        if self.closed:
            self.read_after_close = True
            raise ValueError("read of closed file")
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise OSError("disk on fire")
        return super().read(size)


def test_a_read_error_reaches_the_caller():
    data = generate(3000, seed=4)
    streams = {"q.csv": Watched(data, fail_after=len(data) // 2)}
    replay = HistoricalReplay(["q.csv"], block_bytes=2000, open_file=streams.__getitem__)
    with pytest.raises(OSError, match="disk on fire"):
        list(replay)
    assert streams["q.csv"].closed


def test_stopping_early_closes_the_files_only_after_the_thread_stopped_reading():
    data = generate(20000, seed=6)
    streams = {name: Watched(data, gated_from=4) for name in ("a.csv", "b.csv")}
    replay = iter(HistoricalReplay(list(streams), block_bytes=1000, open_file=streams.__getitem__, read_ahead=3))
    next(replay)
    for stream in streams.values():  # each thread is now held inside a read; let it finish a little later
        threading.Timer(0.2, stream.gate.set).start()
    replay.close()
    assert all(stream.closed and not stream.read_after_close for stream in streams.values())
    assert not _alive("replay-read-ahead")
