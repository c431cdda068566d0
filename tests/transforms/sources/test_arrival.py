"""Arrival ordering: the row heap, the block buffer and the out-of-order rule."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from transforms.sources.arrival import (
    ALL_READ,
    NOTHING_READ,
    BlockArrivalBuffer,
    RowArrivalHeap,
    out_of_order_mask,
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
