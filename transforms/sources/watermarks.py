"""When a source's watermark advances on a runner with real watermarks (Prism, Flink): the rule.

A runner learns a splittable source's watermark only when one of its bundles ends (a checkpoint
returns the watermark with the rest of the work). So :class:`transforms.sources.stage.ReadFeed`, given
``--watermark_interval I``, ends its bundles on a rule that does not depend on the runner's scheduling:

* arrival time (timestamp + latency, the order a replay or a live feed delivers quotes in) is cut into
  intervals ``[k*I, (k+1)*I)``, counted from the epoch;
* the source emits the quotes of one interval, then reports ``W = watermark_after(newest arrival so
  far, lag)`` (arrival minus ``--watermark_lag``, in whole milliseconds) and ends its bundle before
  emitting a quote of a later interval;
* so every quote of an interval is emitted under the watermark after the newest arrival *before* its
  interval (before the first interval: no watermark), and the runner moves the watermark past a
  window's end only after every quote of the interval that passed it is in the window.

Rejected rows (no arrival) belong to the interval of the row before them. A quote's windows are then
decided by that watermark alone: a window that had ended under it is fired (the quote goes to a late
pane), a window whose end plus allowed lateness it had passed is closed (``late.jsonl``), and the others
take the quote on time. :func:`watermarks_in_force` is the reference of that rule, row by row.

Pure (NumPy and Arrow): tests call it without Beam.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa

from transforms.arrays import numpy
from transforms.sources.live import newest_arrival
from transforms.windows.logic import watermark_after

#: The watermark a source has before its first report: no window has ended under it.
NO_WATERMARK_YET = -(2**62)


class Piece(NamedTuple):
    """Consecutive rows ``[offset, offset + rows.num_rows)`` of a block, all of one interval."""

    interval: int | None  # None: only rejected rows, before any arrival
    offset: int
    rows: pa.RecordBatch


def interval_pieces(batch: pa.RecordBatch, interval_us: int, current: int | None) -> Iterator[Piece]:
    """``batch`` (rows in arrival order, with ``arrival_us``) cut where the interval changes.

    ``current`` is the interval of the row before the batch (None: none yet); rejected rows take
    the interval of the row before them.
    """
    if interval_us <= 0:
        raise ValueError(f"the watermark interval must be positive, got {interval_us}")
    arrivals = batch.column("arrival_us")
    ids = np.full(batch.num_rows, -1 if current is None else current, dtype=np.int64)
    valid = numpy(arrivals.is_valid())
    if valid.any():
        values = numpy(arrivals.fill_null(0))
        ids = np.where(valid, values // interval_us, -1)
        ids = np.maximum.accumulate(np.where(ids < 0, -1 if current is None else current, ids))
    cuts = np.flatnonzero(np.diff(ids)) + 1
    starts = [0, *cuts.tolist()]
    ends = [*cuts.tolist(), batch.num_rows]
    for start, end in zip(starts, ends):
        if end > start:
            interval = int(ids[start])
            yield Piece(None if interval < 0 else interval, start, batch.slice(start, end - start))


def next_watermark(current_us: int | None, batch: pa.RecordBatch, lag_us: int | float) -> int | None:
    """The source watermark after a block: the newest arrival so far minus ``lag_us`` (whole ms)."""
    newest = newest_arrival(batch)
    if newest is None:
        return current_us
    candidate = watermark_after(newest, lag_us)
    if candidate is None:
        return current_us
    return candidate if current_us is None else max(current_us, candidate)


def watermarks_in_force(arrivals: Iterable[int | None], interval_us: int, lag_us: int | float) -> list[int | None]:
    """The reference of the rule, one row at a time: the watermark each row is emitted under
    (None: no watermark yet, or an infinite lag)."""
    result: list[int | None] = []
    current_interval = None
    newest_before: int | None = None  # newest arrival of the intervals before the current one
    newest_in: int | None = None  # newest arrival of the current interval
    for arrival in arrivals:
        if arrival is not None and (current_interval is None or arrival // interval_us > current_interval):
            if current_interval is not None:
                newest_before = newest_in if newest_before is None else max(newest_before, newest_in)
            current_interval = arrival // interval_us
        if arrival is not None:
            newest_in = arrival if newest_in is None else max(newest_in, arrival)
        result.append(None if newest_before is None else watermark_after(newest_before, lag_us))
    return result
