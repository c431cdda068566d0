"""Arrival-order replay with bounded memory: a row-at-a-time heap and its columnar twin.

Arrival time = timestamp + latency. Historical files are sorted by timestamp, so once a file has
been read up to timestamp ``t``, every row still unread arrives at ``t`` or later. A held row can
therefore be released as soon as its arrival is *before* the smallest "last timestamp read" over
the files still being read (the *watermark*). Only rows within the largest latency of the
watermark are ever held, whatever the file size.

A row whose arrival is earlier than the largest timestamp of the rows before it in its file
cannot be placed without un-emitting rows (the file is not sorted well enough): it is rejected
as ``out_of_order``. The rule looks only at the file's own earlier rows, so the result does not
depend on how the file is cut into blocks; the output is always all accepted rows sorted by
``(arrival, file index, line)``, which is "arrival order, ties in file order".
"""

from __future__ import annotations

import heapq
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from transforms.arrays import numpy
from transforms.quotes.rules import Rejected, format_timestamp

#: A watermark before any timestamp: nothing can be released yet.
NOTHING_READ = np.iinfo(np.int64).min
#: A watermark after every timestamp: everything can be released.
ALL_READ = np.iinfo(np.int64).max


def out_of_order_reason(arrival_us: int, newest_us: int) -> str:
    return Rejected(
        "out_of_order",
        f"arrives at {format_timestamp(arrival_us)}, before {format_timestamp(newest_us)}, the newest "
        "timestamp already read from this file; historical files must be sorted by timestamp",
    ).reason


class RowArrivalHeap:
    """Arrival order for single rows: push rows as they are read, pop them once safe.

    Items are ordered by ``(arrival_us, file_index, line)``; ``item`` is carried along untouched.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, Any]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, arrival_us: int, file_index: int, line: int, item: Any) -> None:
        heapq.heappush(self._heap, (arrival_us, file_index, line, item))

    def pop_before(self, watermark_us: int) -> Iterator[Any]:
        """Yield, in order, every held item that arrives strictly before ``watermark_us``."""
        heap = self._heap
        while heap and heap[0][0] < watermark_us:
            yield heapq.heappop(heap)[3]


def _keys(rows: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return numpy(rows.column("arrival_us")), numpy(rows.column("file")), numpy(rows.column("line"))


def arrival_order(arrival: np.ndarray, file: np.ndarray, line: np.ndarray) -> np.ndarray | None:
    """The permutation that sorts rows by ``(arrival, file, line)``; None if they already are."""
    if len(arrival) < 2:
        return None
    step = np.diff(arrival)
    if not (step < 0).any():
        tied = np.flatnonzero(step == 0)  # only there do file and line decide
        file_step = file[tied + 1] - file[tied].astype(np.int64)
        if np.all((file_step > 0) | ((file_step == 0) & (line[tied + 1] > line[tied]))):
            return None
    return np.lexsort((line, file, arrival))


def sort_by_arrival(rows: pa.RecordBatch) -> pa.RecordBatch:
    """``rows`` sorted by ``(arrival_us, file, line)`` (the same batch if it already is)."""
    order = arrival_order(*_keys(rows))
    return rows if order is None else rows.take(pa.array(order))


def merge_sorted(runs: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One batch sorted by ``(arrival_us, file, line)`` from batches that each are.

    Runs read one after another overlap only where one block's latest arrivals meet the next
    one's earliest, so only the rows between the first and the last that move are gathered;
    the rest is copied as it is (a gather costs several times a copy).
    """
    if len(runs) == 1:
        return runs[0]
    merged = pa.concat_batches(runs)
    order = arrival_order(*_keys(merged))
    if order is None:
        return merged
    moved = np.flatnonzero(order != np.arange(len(order)))
    first, stop = int(moved[0]), int(moved[-1]) + 1
    middle = merged.slice(first, stop - first).take(pa.array(order[first:stop] - first))
    return pa.concat_batches([merged.slice(0, first), middle, merged.slice(stop)])


class BlockArrivalBuffer:
    """Arrival order for Arrow record batches with ``arrival_us``, ``file`` and ``line`` columns.

    Held rows are kept as runs, each sorted by ``(arrival, file, line)`` (:meth:`add` sorts a batch
    that is not: the replay sorts blocks in its read-ahead thread, so that this is a check). A
    release takes each run's prefix before the watermark and merges them.
    """

    #: Runs are merged into one when there are more than this (very long latencies): a release
    #: visits every run, and each run's slice keeps its whole block in memory.
    MAX_RUNS = 16

    def __init__(self) -> None:
        self._runs: list[pa.RecordBatch] = []

    @property
    def held_rows(self) -> int:
        return sum(run.num_rows for run in self._runs)

    def add(self, rows: pa.RecordBatch) -> None:
        if rows.num_rows:
            self._runs.append(sort_by_arrival(rows))
            if len(self._runs) > self.MAX_RUNS:
                self._runs = [merge_sorted(self._runs)]

    def release_before(self, watermark_us: int) -> pa.RecordBatch | None:
        """Remove and return, sorted, the held rows arriving strictly before ``watermark_us``."""
        released, kept = [], []
        for run in self._runs:
            cut = int(np.searchsorted(numpy(run.column("arrival_us")), watermark_us, side="left"))
            if cut:
                released.append(run.slice(0, cut))
            if cut < run.num_rows:
                kept.append(run.slice(cut) if cut else run)
        self._runs = kept
        return merge_sorted(released) if released else None


def out_of_order_mask(event_us: np.ndarray, arrival_us: np.ndarray, newest_before_us: int) -> np.ndarray:
    """Rows whose arrival is before the newest timestamp among earlier rows of the same file.

    ``event_us`` and ``arrival_us`` are one file's rows in file order; ``newest_before_us`` is
    the newest timestamp of that file's rows before them (:data:`NOTHING_READ` at the start).
    Rejected rows do not count as earlier rows: the running maximum skips them.
    """
    if len(event_us) == 0:
        return np.zeros(0, dtype=bool)
    newest = np.maximum.accumulate(np.maximum(event_us, newest_before_us))
    previous = np.empty_like(newest)
    previous[0] = newest_before_us
    previous[1:] = newest[:-1]
    bad = arrival_us < previous
    if not bad.any():
        return bad
    # A rejected row must not raise the bar for the rows after it: redo the scan without it.
    # This is rare (unsorted input), so a plain loop is fine.
    bad = np.zeros(len(event_us), dtype=bool)
    running = newest_before_us
    for index, (event, arrival) in enumerate(zip(event_us.tolist(), arrival_us.tolist())):
        if arrival < running:
            bad[index] = True
        elif event > running:
            running = event
    return bad
