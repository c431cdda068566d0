"""The replay interface: every quote source is a :class:`QuoteFeed`, read from a position.

A feed yields :class:`FeedBlock` s: raw quote rows (:data:`transforms.sources.replay.BLOCK_SCHEMA`, each
row with its ``mode``) covering the positions ``[start, stop)``. A position is what the feed
needs to resume exactly there, so a reader that remembers ``stop`` can come back later (or after
a restart) and get the next record, never one twice:

* :class:`HistoricalFeed`: position = index of the record in the files' arrival order;
* :class:`transforms.sources.live.LiveFeed`: position = the websocket feed's sequence number;
* :class:`transforms.sources.modes.SwitchingFeed`: switches between the two at run time, and keeps both
  positions itself (under ``--state_dir``).

Beam reads any feed with :class:`transforms.sources.stage.ReadFeed` (a splittable DoFn whose restriction
is the feed's range of positions), and ``ReplayHistorical`` reads a historical feed as a batch
source. No Beam here: a feed is a plain iterator that tests drive directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import pyarrow as pa

from transforms.sources.replay import DEFAULT_BLOCK_BYTES, HistoricalReplay, open_local

#: Tells a feed to stop at the next block boundary (shutdown, or a mode switch).
Stopping = Callable[[], bool]


def never() -> bool:
    return False


@dataclass(frozen=True)
class FeedBlock:
    """Raw rows for positions ``[start, stop)`` of a feed, from ``sources`` (indexed by ``file``)."""

    batch: pa.RecordBatch
    start: int
    stop: int
    sources: tuple[str, ...]


class QuoteFeed(Protocol):
    """What every source of quotes implements (see the module docstring)."""

    #: ``historical`` or ``live``: the mode of the records (a switching feed: of its first).
    mode: str

    def blocks(self, start: int, stopping: Stopping = never) -> Iterator[FeedBlock]:
        """Blocks from position ``start`` on, until the feed ends or ``stopping()`` is true."""
        ...

    def stats(self) -> dict[str, int]:
        """What the feed has read so far; ``records_in`` counts every record it yielded."""
        ...


class Pacer:
    """Hold a producer to ``rate`` records per second (0: no limit), measured from the first call."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate < 0:
            raise ValueError(f"rate must not be negative, got {rate}")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._began: float | None = None
        self._sent = 0

    def wait_to_send(self, count: int, stopping: Stopping = never) -> bool:
        """Sleep until ``count`` more records are allowed, then count them as sent.

        Returns False, without counting them, if ``stopping()`` turns true meanwhile (checked
        every 50 ms).
        """
        if not self.rate:
            return not stopping()
        now = self._clock()
        if self._began is None:
            self._began = now
        due = self._began + self._sent / self.rate
        while True:
            if stopping():
                return False
            delay = due - self._clock()
            if delay <= 0:
                break
            self._sleep(min(delay, 0.05))
        self._sent += count
        return True


def slices(batch: pa.RecordBatch, max_rows: int | None) -> Iterator[pa.RecordBatch]:
    """``batch`` cut into pieces of at most ``max_rows`` rows (None: whole)."""
    if not max_rows or batch.num_rows <= max_rows:
        yield batch
        return
    for offset in range(0, batch.num_rows, max_rows):
        yield batch.slice(offset, max_rows)


@dataclass
class HistoricalFeed:
    """Quote CSVs in arrival order (:class:`transforms.sources.replay.HistoricalReplay`) as a feed.

    Position ``n`` is the n-th record of the replay (every record, rejected ones too), which is
    the same for every run over the same files: resuming at ``n`` re-reads the files and skips
    the first ``n`` records (reading is fast; nothing before ``n`` is emitted again).

    Attributes:
        sources: the files, in tie-break order.
        default_symbol, block_bytes, open_file: as for ``HistoricalReplay``.
        rate: records per second (0: as fast as possible); a replay for people to watch or switch.
        max_rows: cut blocks to at most this many rows (None: ~``block_bytes`` of CSV each), so
            that a paced replay moves in small steps and stops promptly.
        dedup_horizon_us: drop quotes delivered twice within this horizon, as for
            ``HistoricalReplay`` (0: off). Positions count the records kept; ``stats()`` adds
            ``duplicates`` (the copies dropped while reading) when it is on.
    """

    sources: Sequence[str]
    default_symbol: str = "UNKNOWN"
    block_bytes: int = DEFAULT_BLOCK_BYTES
    open_file: Callable = open_local
    rate: float = 0.0
    max_rows: int | None = None
    mode: str = "historical"
    dedup_horizon_us: int = 0
    _replay: HistoricalReplay | None = field(default=None, repr=False, compare=False)
    _yielded: int = field(default=0, repr=False, compare=False)

    def __post_init__(self):
        self.sources = tuple(self.sources)
        if not self.sources:
            raise ValueError("a historical feed needs at least one input file")

    def blocks(self, start: int = 0, stopping: Stopping = never,
               on_block: Callable[[int], None] | None = None) -> Iterator[FeedBlock]:
        if start < 0:  # checked now, not when the iteration begins
            raise ValueError(f"start must not be negative, got {start}")
        return self._blocks(start, stopping, on_block)

    def _blocks(self, start: int, stopping: Stopping, on_block: Callable[[int], None] | None) -> Iterator[FeedBlock]:
        self._replay = HistoricalReplay(
            self.sources, default_symbol=self.default_symbol, block_bytes=self.block_bytes,
            open_file=self.open_file, on_block=on_block, dedup_horizon_us=self.dedup_horizon_us,
        )
        pacer = Pacer(self.rate)
        position = 0
        for batch in self._replay:
            if position + batch.num_rows <= start:  # before the resume point: skip whole blocks
                position += batch.num_rows
                continue
            if position < start:
                batch = batch.slice(start - position)
                position = start
            for piece in slices(batch, self.max_rows):
                if not pacer.wait_to_send(piece.num_rows, stopping):
                    return
                self._yielded += piece.num_rows
                yield FeedBlock(piece, position, position + piece.num_rows, self.sources)
                position += piece.num_rows

    def stats(self) -> dict[str, int]:
        """The reader's statistics, with ``records_in`` = the records this feed yielded (a
        resumed or stopped replay reads more of the files than it yields) plus the ``duplicates``
        it dropped: records in = out + filtered + dead letters + duplicates."""
        stats = self._replay.stats.as_dict() if self._replay is not None else {}
        stats["records_in"] = self._yielded + stats.get("duplicates", 0)
        return stats
