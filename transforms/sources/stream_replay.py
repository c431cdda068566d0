"""Streaming replay of history: the arrival-ordered rows of a file, cut where the watermark moves.

A streaming deployment sees quotes when they arrive (timestamp + latency), and its watermark
follows arrival time: here, after a quote has arrived, the watermark is its arrival time minus a
lag, in whole milliseconds (:func:`transforms.windows.logic.watermark_after`). A quote whose latency
is greater than the lag plus its window's slack is then late, exactly as it would be on a live
runner.

:func:`plan_steps` turns the replay's row blocks into the steps of such a stream: slices of rows,
and watermark (and simulated processing-time) advances between them. The watermark is advanced
only where it changes an outcome: before a quote whose stamp has passed the end of a window the
quote joins (or, for sessions, may merge with) while the stream's watermark has not. Every quote
then meets the same fired and unfired windows as under a watermark advanced after every quote;
on-time panes may fire a little later, with the same contents. The stream stays small: a step
per quote that is late for its window, not one per quote. The lateness rule
itself never depends on these steps: it reads each quote's own stamp.

Beam's ``TestStream`` plays the steps on the BundleBasedDirectRunner (see
:class:`transforms.sources.stage.ReplayAsStream`); all steps are held in memory, so this is a simulation for
files of up to some hundred thousand quotes, not a production source.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from transforms.quotes import columns
from transforms.quotes.rules import DEFAULT_TENANT
from transforms.windows.logic import INFINITE, WindowSpec, watermark_after


class Step(NamedTuple):
    """``("rows", batch, 0)``, ``("watermark", None, micros)`` or ``("clock", None, micros)``."""

    kind: str
    rows: pa.RecordBatch | None
    micros: int


@dataclass(frozen=True)
class StreamPlan:
    """The steps of a streaming replay, and what the reader counted (``records_in``, ...)."""

    steps: tuple[Step, ...]
    stats: dict

    @property
    def watermark_steps(self) -> int:
        return sum(step.kind == "watermark" for step in self.steps)

    @property
    def row_steps(self) -> int:
        return sum(step.kind == "rows" for step in self.steps)


def plan_steps(
    batches: Iterable[pa.RecordBatch],
    lag_us: int | float,
    window: WindowSpec | None,
    early_delay_us: int | None = None,
) -> Iterator[Step]:
    """Rows in arrival order (replay blocks, with ``event_us`` and ``arrival_us``) -> stream steps.

    Args:
        batches: the replay's blocks, in arrival order; rows without an arrival (rejected rows)
            ride along with the rows around them.
        lag_us: the watermark lag (``INFINITE``: the watermark never moves, everything is on time).
        window: the windows whose ends matter (None: no windows, nothing for the watermark to decide
            until the end of the stream).
        early_delay_us: with processing-time early panes, processing time (= arrival time) is
            advanced at least this often while quotes arrive.
    """
    session_ends: dict[tuple, list[int]] = {}  # per (tenant, symbol): ends of sessions with data
    clock_due: list[int] = []  # arrival times by which processing time must have moved
    watermark = clock = None
    for batch in batches:
        if window is None or (lag_us == INFINITE and early_delay_us is None):
            yield Step("rows", batch, 0)  # nothing for the watermark to decide
            continue
        start = 0
        keys = window_keys(batch)
        events = batch.column("event_us").to_pylist()
        arrivals = batch.column("arrival_us").to_pylist()
        for index, (key, event, arrival) in enumerate(zip(keys, events, arrivals)):
            if arrival is None:
                continue
            stamp = watermark_after(arrival, lag_us)
            advance = stamp is not None and _passes_a_window_end(
                window, session_ends.setdefault(key, []), event, watermark, stamp
            )
            tick = early_delay_us is not None and (clock is None or (clock_due and clock_due[0] <= arrival))
            if (advance or tick) and index > start:
                yield Step("rows", _compact(batch.slice(start, index - start)), 0)
                start = index
            if advance:
                watermark = stamp
                yield Step("watermark", None, stamp)
            if tick:
                while clock_due and clock_due[0] <= arrival:
                    heapq.heappop(clock_due)
                clock = arrival
                yield Step("clock", None, arrival)
            if early_delay_us is not None:
                heapq.heappush(clock_due, arrival + early_delay_us)
        if start < batch.num_rows:
            yield Step("rows", _compact(batch.slice(start)), 0)


def window_keys(batch: pa.RecordBatch) -> list[tuple[str, str]]:
    """Each raw row's ``(tenant, symbol)`` as normalize will read them (no tenant: the default one)."""
    symbols = pc.utf8_trim_whitespace(batch.column("symbol")).to_pylist()
    if "tenant" not in batch.schema.names:
        return [(DEFAULT_TENANT, symbol) for symbol in symbols]
    tenants, _rejects = columns.parse_tenants(batch.column("tenant"))
    return list(zip(tenants.to_pylist(), symbols))


def _passes_a_window_end(
    window: WindowSpec, session_ends: list[int], event_us: int, watermark: int | None, stamp: int
) -> bool:
    """Whether the stream's watermark must move to ``stamp`` before this quote is added.

    It must when a window the quote joins ends after the stream's watermark but not after the
    quote's stamp: under the true watermark that window has already fired its on-time pane, so
    the quote belongs in a late pane. Fixed and sliding windows: the quote's own windows. Session
    windows: also every session of the tenant's symbol, since the quote may merge into one of them.
    """
    if window.kind != "session":
        return any((watermark is None or watermark < end) and end <= stamp for _, end in window.windows(event_us))
    heapq.heappush(session_ends, window.last_end(event_us))  # the proto-session's end, on the millisecond
    while session_ends and watermark is not None and session_ends[0] <= watermark:
        heapq.heappop(session_ends)  # already passed: those sessions fired before
    return bool(session_ends) and session_ends[0] <= stamp


def _compact(rows: pa.RecordBatch) -> pa.RecordBatch:
    """A copy of a slice that owns just its rows (a slice pickles its whole parent batch)."""
    return pa.concat_batches([rows])
