"""Arrival ordering: the row heap, the block buffer (sorted runs, merged) and the out-of-order rule."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.sources.arrival import (
    ALL_READ,
    NOTHING_READ,
    BlockArrivalBuffer,
    RowArrivalHeap,
    arrival_order,
    merge_sorted,
    out_of_order_mask,
    sort_by_arrival,
)


def rows(arrivals, files, lines):
    return pa.RecordBatch.from_pydict(
        {"arrival_us": pa.array(arrivals, pa.int64()), "file": pa.array(files, pa.int32()),
         "line": pa.array(lines, pa.int64())}
    )


class TestRowArrivalHeap:
    def test_releases_only_rows_arriving_before_the_watermark(self):
        heap = RowArrivalHeap()
        heap.push(120, 0, 2, "a")
        heap.push(201, 0, 3, "b")
        assert list(heap.pop_before(120)) == []  # equal is not before: a later row may tie
        assert list(heap.pop_before(121)) == ["a"]
        assert len(heap) == 1

    def test_ties_in_file_then_line_order(self):
        heap = RowArrivalHeap()
        for file, line, item in [(1, 2, "f1l2"), (0, 9, "f0l9"), (0, 3, "f0l3")]:
            heap.push(100, file, line, item)
        assert list(heap.pop_before(ALL_READ)) == ["f0l3", "f0l9", "f1l2"]


class TestBlockArrivalBuffer:
    def test_sorts_by_arrival_then_file_then_line(self):
        buffer = BlockArrivalBuffer()
        buffer.add(rows([30, 10, 10, 20], [0, 1, 0, 0], [2, 3, 4, 5]))
        released = buffer.release_before(ALL_READ)
        assert released.column("line").to_pylist() == [4, 3, 5, 2]
        assert buffer.held_rows == 0

    def test_holds_rows_at_or_after_the_watermark(self):
        buffer = BlockArrivalBuffer()
        buffer.add(rows([5, 15, 10], [0, 0, 0], [1, 2, 3]))
        assert buffer.release_before(10).column("arrival_us").to_pylist() == [5]
        assert buffer.held_rows == 2
        assert buffer.release_before(NOTHING_READ) is None
        buffer.add(rows([11], [0], [4]))
        assert buffer.release_before(16).column("arrival_us").to_pylist() == [10, 11, 15]


class TestOutOfOrderRule:
    def test_sorted_file_with_latencies_is_accepted(self):
        events = np.array([0, 200, 700])
        arrivals = events + np.array([120, 1, 10])
        assert not out_of_order_mask(events, arrivals, NOTHING_READ).any()

    def test_row_arriving_before_an_earlier_timestamp_is_rejected(self):
        events = np.array([100, 200, 150, 300])
        arrivals = events + np.array([0, 0, 10, 0])  # 160 < 200: cannot be placed any more
        assert out_of_order_mask(events, arrivals, NOTHING_READ).tolist() == [False, False, True, False]

    def test_late_timestamp_saved_by_its_latency_is_accepted(self):
        events = np.array([100, 200, 150])
        arrivals = events + np.array([0, 0, 60])  # arrives at 210, after everything before it
        assert not out_of_order_mask(events, arrivals, NOTHING_READ).any()

    def test_rejected_row_does_not_raise_the_bar(self):
        # Row 1 jumps far ahead but is itself fine; a rejected row must not count as "read".
        events = np.array([100, 50, 120])
        arrivals = events.copy()
        assert out_of_order_mask(events, arrivals, 110).tolist() == [True, True, False]

    def test_previous_blocks_count(self):
        assert out_of_order_mask(np.array([5]), np.array([5]), 6).tolist() == [True]
        assert out_of_order_mask(np.array([5]), np.array([6]), 6).tolist() == [False]


# --- sorted runs: the buffer keeps each block sorted and merges them -----------------------------

_ROW = st.tuples(st.integers(0, 30), st.integers(0, 2), st.integers(0, 10**6))


def _unique(rows_):
    seen, out = set(), []
    for arrival, file, line in rows_:
        if (file, line) not in seen:  # (file, line) names a row
            seen.add((file, line))
            out.append((arrival, file, line))
    return out


def _batch(rows_):
    return rows(*map(list, zip(*rows_))) if rows_ else rows([], [], [])


def _keys(batch):
    return list(zip(*(batch.column(name).to_pylist() for name in ("arrival_us", "file", "line"))))


@given(st.lists(_ROW, max_size=40).map(_unique))
def test_arrival_order_is_none_exactly_when_already_sorted(rows_):
    arrival, file, line = (np.array(column, dtype=np.int64) for column in zip(*rows_)) if rows_ else [np.zeros(0)] * 3
    order = arrival_order(arrival, file, line)
    if order is None:
        assert rows_ == sorted(rows_)
    else:
        assert rows_ != sorted(rows_)
        assert [rows_[i] for i in order] == sorted(rows_)
    assert _keys(sort_by_arrival(_batch(rows_))) == sorted(rows_)


@given(st.lists(st.lists(_ROW, max_size=15), max_size=5).map(lambda runs: [_unique(r) for r in runs]))
def test_merge_sorted_equals_one_sort_of_everything(runs):
    seen, distinct = set(), []
    for run in runs:  # rows unique across runs too
        run = [row for row in run if (row[1], row[2]) not in seen]
        seen.update((row[1], row[2]) for row in run)
        if run:
            distinct.append(sorted(run))
    if not distinct:
        return
    merged = merge_sorted([_batch(run) for run in distinct])
    assert _keys(merged) == sorted(row for run in distinct for row in run)


@settings(max_examples=50)
@given(st.lists(st.lists(_ROW, min_size=1, max_size=12), max_size=25), st.lists(st.integers(0, 35), max_size=25))
def test_the_buffer_releases_what_one_sort_would_whatever_the_blocks_and_watermarks(blocks, watermarks):
    seen, buffer, held, out = set(), BlockArrivalBuffer(), [], []
    for index, block in enumerate(blocks):
        block = [row for row in _unique(block) if (row[1], row[2]) not in seen]
        seen.update((row[1], row[2]) for row in block)
        buffer.add(_batch(block))  # unsorted blocks are sorted on the way in
        held += block
        watermark = watermarks[index] if index < len(watermarks) else NOTHING_READ
        released = buffer.release_before(watermark)
        want = sorted(row for row in held if row[0] < watermark)
        held = [row for row in held if row[0] >= watermark]
        assert (_keys(released) if released is not None else []) == want
        assert buffer.held_rows == len(held)
        out += want
    rest = buffer.release_before(ALL_READ)
    assert (_keys(rest) if rest is not None else []) == sorted(held)


def test_many_runs_are_merged_into_one():
    buffer = BlockArrivalBuffer()
    for index in range(BlockArrivalBuffer.MAX_RUNS + 1):
        buffer.add(rows([100 - index, 200], [0, 0], [2 * index, 2 * index + 1]))
    assert len(buffer._runs) == 1
    released = buffer.release_before(ALL_READ)
    assert _keys(released) == sorted(_keys(released)) and released.num_rows == 2 * (BlockArrivalBuffer.MAX_RUNS + 1)
