"""The live websocket quote feed as a :class:`transforms.sources.feeds.QuoteFeed` (no Beam here).

Messages are JSON text frames, one quote each, with the CSV's field names (aliases too) and a
sequence number, as :mod:`beam_pipeline.devtools.feed` serves them::

    {"seq": 7, "timestamp": "2024-06-03 07:00:00.012", "symbol": "EURUSD", "bid_price": "1.08501", ...}
    {"seq": 2000, "eos": true}

Field values may be strings or JSON numbers; numbers are kept as the exact text of the message
(``1.10`` stays ``1.10``), so prices stay exact. A frame that is not a JSON object, or whose quote
field is neither a string nor a number, becomes a rejected row (``bad_json``, ``bad_field``) that
the normalize stage dead-letters with the frame as ``raw`` and its sequence number as ``line``.

:class:`LiveFeed` reconnects after a dropped connection with exponential backoff and jitter, and
asks for ``?from=<next seq>``: it never loses a frame it has received and never yields one twice.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa

from transforms.arrays import numpy
from transforms.quotes import columns
from transforms.quotes.rules import LIVE
from transforms.resilience import backoff_delay
from transforms.sources.csv_blocks import ALIASES, FIELDS
from transforms.sources.feeds import FeedBlock, Stopping, never
from transforms.sources.replay import BLOCK_SCHEMA, mode_column

LOG = logging.getLogger(__name__)

_NAMES = {**{name: name for name in FIELDS}, **ALIASES}


class LiveFeedError(RuntimeError):
    """The live feed cannot be reached (after every retry) or refuses the request."""


@dataclass(frozen=True)
class Message:
    """One frame as received and parsed (see :func:`parse_frame`).

    ``seq`` is the frame's own, or the expected next one for a frame too broken to have one.
    """

    seq: int
    text: str
    fields: dict
    reason: str | None = None
    eos: bool = False


def read_message(text: str, expected_seq: int) -> Message:
    """Parse a frame; a frame without a readable ``seq`` takes ``expected_seq``."""
    seq, fields, reason, eos = parse_frame(text)
    return Message(expected_seq if seq is None else seq, text, fields, reason, eos)


def parse_frame(text: str) -> tuple[int | None, dict[str, str | None], str | None, bool]:
    """``(seq, fields, reject reason, eos)`` of a frame; fields are canonical names -> exact text."""
    try:
        message = json.loads(text, parse_float=str, parse_int=str)
    except ValueError as exc:
        return None, {}, f"bad_json: {exc.msg} (character {getattr(exc, 'pos', '?')})", False
    if not isinstance(message, dict):
        return None, {}, f"bad_json: a {type(message).__name__} is not a quote object", False
    seq = message.get("seq")
    seq = int(seq) if isinstance(seq, str) and seq.isdigit() else None
    if message.get("eos") is True:
        return seq, {}, None, True
    fields: dict[str, str | None] = {}
    for key, value in message.items():
        name = _NAMES.get(key)
        if name is None:
            continue  # not a quote field (seq, venue, ...): ignored, like extra CSV columns
        if value is not None and not isinstance(value, str):
            return seq, {}, f"bad_field: {key} is a {type(value).__name__}, not a string or number", False
        fields[name] = value
    return seq, fields, None, False


def frames_to_batch(messages: Sequence[Message], newest_arrival_us: int | None = None) -> pa.RecordBatch:
    """Raw quote rows (:data:`BLOCK_SCHEMA`, mode ``live``) for received frames, in their order.

    Every frame becomes one row; ``line`` is its sequence number and ``raw`` its text. The event
    time is the quote's timestamp. A live stream arrives in the order it is received, so a quote's
    arrival time is the newest ``timestamp + latency_ms`` (latency 0 when absent) received so far,
    ``newest_arrival_us`` included: arrival never goes back, and it is what the watermark follows.
    """
    count = len(messages)
    values: dict[str, list[str | None]] = {name: [None] * count for name in FIELDS}
    reasons: dict[int, str] = {}
    for index, message in enumerate(messages):
        if message.reason:
            reasons[index] = message.reason
        for name, value in message.fields.items():
            values[name][index] = value
    text_columns = {name: pa.array(column, type=pa.string()) for name, column in values.items()}
    event_us, time_reasons = columns.parse_timestamps(text_columns["timestamp"])
    latency = np.zeros(count, dtype=np.int64)
    has_latency = numpy(text_columns["latency_ms"].is_valid())
    if has_latency.any():
        picked = np.flatnonzero(has_latency)
        parsed, latency_reasons = columns.parse_latencies(text_columns["latency_ms"].take(pa.array(picked)))
        latency[picked] = parsed
        time_reasons.update({int(picked[i]): reason for i, reason in latency_reasons.items()
                             if int(picked[i]) not in time_reasons})
    for index, reason in time_reasons.items():
        reasons.setdefault(index, reason)
    bad = np.zeros(count, dtype=bool)
    bad[list(reasons)] = True
    reject = [None] * count
    for index, reason in reasons.items():
        reject[index] = reason
    arrays = {
        "file": pa.array(np.zeros(count, dtype=np.int32)),
        "line": pa.array([m.seq for m in messages], type=pa.int64()),
        "raw": pa.array([m.text for m in messages], type=pa.string()),
        **text_columns,
        "event_us": pa.array(event_us, mask=bad),
        "latency_us": pa.array(latency, mask=bad | ~has_latency),
        "arrival_us": pa.array(_running_newest(event_us + latency, bad, newest_arrival_us), mask=bad),
        "reject": pa.array(reject, type=pa.string()),
        "mode": mode_column(LIVE, count),
    }
    return pa.RecordBatch.from_arrays([arrays[f.name] for f in BLOCK_SCHEMA], schema=BLOCK_SCHEMA)


def _running_newest(arrival_us: np.ndarray, bad: np.ndarray, floor: int | None) -> np.ndarray:
    """Each row's newest arrival so far (rejected rows do not count, and get a placeholder)."""
    start = np.iinfo(np.int64).min if floor is None else floor
    newest = np.maximum.accumulate(np.where(bad, start, arrival_us)) if len(arrival_us) else arrival_us
    return np.maximum(newest, start)


def newest_arrival(batch: pa.RecordBatch) -> int | None:
    """The newest arrival time of a block's accepted rows (None: it has none)."""
    import pyarrow.compute as pc

    return pc.max(batch.column("arrival_us")).as_py()


def with_from(url: str, position: int | None) -> str:
    """``url`` asking the feed to start at ``position`` (None: wherever the feed starts)."""
    if position is None:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "from"]
    query.append(("from", str(position)))
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass
class LiveStats:
    """What a :class:`LiveFeed` has seen: ``records_in`` frames yielded as records."""

    records_in: int = 0
    malformed_frames: int = 0
    connections: int = 0
    reconnects: int = 0
    duplicates_skipped: int = 0
    gaps: int = 0
    end_of_stream: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class LiveFeed:
    """A websocket quote feed as a :class:`~transforms.sources.feeds.QuoteFeed`; position = ``seq``.

    Attributes:
        url: ``ws://host:port/path``.
        max_rows: at most this many frames per block. A block holds the frames already waiting
            when the first one arrives, so blocks stay small (low latency) at low rates and grow
            (low overhead per frame) when the feed is fast.
        poll_seconds: how long to wait for a frame before checking ``stopping()`` again.
        retry_initial, retry_max: backoff bounds in seconds (see :func:`backoff_delay`).
        max_attempts: consecutive failed connection attempts before giving up (LiveFeedError).
        seed: seeds the jitter (None: random), for repeatable tests.
    """

    url: str
    max_rows: int = 2000
    poll_seconds: float = 0.05
    retry_initial: float = 0.05
    retry_max: float = 2.0
    max_attempts: int = 20
    seed: int | None = None
    mode: str = LIVE
    _stats: LiveStats = field(default_factory=LiveStats, repr=False, compare=False)
    _newest_arrival_us: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"live feed url must start with ws:// or wss://, got {self.url!r}")
        if self.max_rows < 1:
            raise ValueError("max_rows must be at least 1")

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.url,)

    def stats(self) -> dict[str, int]:
        return self._stats.as_dict()

    def blocks(self, start: int | None = 0, stopping: Stopping = never) -> Iterator[FeedBlock]:
        """Blocks of frames from ``seq`` ``start`` on (None: wherever the feed starts), until
        the end-of-stream frame or ``stopping()``. A dropped connection is retried with backoff."""
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        rng = random.Random(self.seed)
        position = start
        failures = 0
        while not stopping():
            try:
                # The first connection from 0 asks for nothing: a feed may not keep its history.
                connection = _connect(with_from(self.url, position if position or self._stats.connections else None))
            except InvalidURI as exc:
                raise LiveFeedError(f"{self.url}: {exc}") from None
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                failures += 1
                if failures >= self.max_attempts:
                    raise LiveFeedError(f"{self.url}: no connection after {failures} attempts ({exc})") from None
                delay = backoff_delay(failures, self.retry_initial, self.retry_max, rng.random())
                LOG.warning("live feed %s: cannot connect (%s); retry %s in %.3f s", self.url, exc, failures, delay)
                _sleep(delay, stopping)
                continue
            if self._stats.connections:
                self._stats.reconnects += 1
                LOG.info("live feed %s: reconnected at seq %s", self.url, position)
            self._stats.connections += 1
            failures = 0
            with connection:
                ended, position = yield from self._read(connection, position, stopping, ConnectionClosed)
            if ended:
                return
            if not stopping():
                failures += 1
                delay = backoff_delay(failures, self.retry_initial, self.retry_max, rng.random())
                LOG.warning("live feed %s: connection lost at seq %s; reconnecting in %.3f s",
                            self.url, position, delay)
                _sleep(delay, stopping)

    def _read(self, connection, position: int | None, stopping: Stopping, closed_error):
        """Yield blocks from one connection; returns ``(ended, next position)``."""
        while not stopping():
            received: list[Message] = []
            lost = False
            try:
                received.append(self._message(connection.recv(self.poll_seconds), position))
                while len(received) < self.max_rows:
                    received.append(self._message(connection.recv(0), received[-1].seq + 1))
            except TimeoutError:
                pass
            except closed_error as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                if code == 1008:  # policy violation: the feed refuses our request (e.g. a bad from)
                    raise LiveFeedError(f"{self.url}: the feed refused the connection ({exc.rcvd.reason})") from None
                lost = True  # reconnect, after yielding what arrived
            block, position, eos = self._to_block(received, position)
            if block is not None:
                yield block
            if eos:
                self._stats.end_of_stream += 1
                LOG.info("live feed %s: end of stream at seq %s", self.url, position)
                return True, position
            if lost:
                return False, position
        return False, position

    @staticmethod
    def _message(data, expected: int | None) -> Message:
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        # A broken frame still used up a sequence number: the one expected next.
        return read_message(text, expected if expected is not None else 0)

    def _to_block(self, received: list[Message], position: int | None) -> tuple[FeedBlock | None, int | None, bool]:
        """Drop duplicates and the end-of-stream frame; the block and the next position."""
        kept: list[Message] = []
        eos = False
        for message in received:
            if position is not None and message.seq < position:
                self._stats.duplicates_skipped += 1
                continue
            if position is not None and message.seq > position:
                self._stats.gaps += 1
                LOG.warning("live feed %s: frames %s to %s never came", self.url, position, message.seq - 1)
            if message.eos:
                eos = True
                position = message.seq
                break
            position = message.seq + 1
            kept.append(message)
        if not kept:
            return None, position, eos
        self._stats.records_in += len(kept)
        self._stats.malformed_frames += sum(1 for m in kept if m.reason)
        batch = frames_to_batch(kept, self._newest_arrival_us)
        newest = newest_arrival(batch)
        if newest is not None:
            self._newest_arrival_us = newest
        return FeedBlock(batch, kept[0].seq, kept[-1].seq + 1, self.sources), position, eos


def _sleep(seconds: float, stopping: Stopping) -> None:
    """Sleep, but wake within 50 ms when ``stopping()`` turns true."""
    deadline = time.monotonic() + seconds
    while not stopping():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def _connect(url: str):
    from websockets.sync.client import connect

    # max_queue: the websocket's reader thread keeps reading up to 4,096 frames ahead (beyond
    # that, TCP backpressure), so when we leave (a mode switch, a stop) it still sees the server's
    # close reply and the close handshake completes at once; with websockets' default of 16 it
    # stalled behind the unread frames until close_timeout. Frames read ahead but not yielded are
    # not ours: the next connection asks for them again with ?from=.
    return connect(url, open_timeout=5, close_timeout=0.25, max_size=1 << 20, max_queue=4096, compression=None)
