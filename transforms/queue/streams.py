"""Redis Streams between the replay engine and the mid-price processors.

A publisher (:class:`WriteToQueue`, or :class:`Publisher` without Beam) appends normalized quotes
to a stream, one entry per quote: ``q`` = the ``quote`` record (latest schema) in Avro
single-object encoding, ``m`` = its mode (``historical`` / ``live``, which decides whether the
latency threshold applies). Entries go in pipelined ``XADD`` batches.

**Backpressure.** Before each batch the publisher reads the consumer group's *lag* (entries not
yet delivered to any consumer, ``XINFO GROUPS``). Above ``high_water`` it waits, with growing
pauses, until the lag is back under ``low_water``; so a stream whose consumers stopped stops
growing at about ``high_water + batch_size`` entries, and the publisher's memory stays flat (it
blocks the stage that feeds it). ``MAXLEN ~ max_len`` is only a safety cap: entries it trims
that the group had not read yet are counted (``trimmed_unread``) and logged.

**Consumers** (:class:`QueueFeed`, a :class:`~transforms.sources.feeds.QuoteFeed` that
:class:`~transforms.sources.stage.ReadFeed` reads like the live feed) share the stream through a
consumer group (``XREADGROUP``): each entry goes to one of them. The feed yields a block, the
stages fused after the source (normalize, mid price, the file sink) process it before the
``yield`` returns, and only then does the feed commit.

**Exactly once in the files, by stream entry.** A block's lines are held back by the sink and
written as one *part* named by the block's entry-id range (:mod:`transforms.sinks.staging`); the
commit is one atomic Redis script: ``XACK`` of the block's entries and the part's name in the
group's registry, refused if the entries are no longer this consumer's (a consumer taken for
dead must not commit what another now owns). Only then is the part appended to the readable
files. A consumer killed before its commit leaves an uncommitted part and pending entries;
whoever recovers them (the consumer itself when restarted under the same name, or any consumer
of the group once the dead one's heartbeat has expired) claims the entries (``XPENDING`` +
``XCLAIM``, the owner-aware form of ``XAUTOCLAIM``: an entry of a consumer that is alive but
slow is never taken from it) and processes them again into its *own* files. The dead
consumer's folder is settled from the registry (committed parts applied, uncommitted dropped)
by its restart, by a recoverer that can reach it, or by ``python -m beam_pipeline.queue_outputs``
where it is: no consumer ever needs another's files, so consumers may write to separate
``--output_dir``\ s on machines that share no filesystem.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa

from schemas import latest_version, load_schema
from schemas.single_object import DecodeError, SingleObjectDecoder, SingleObjectEncoder
from transforms.quotes.rules import MODES, whole_latency_ms
from transforms.sinks.staging import (
    Built,
    apply_part,
    build,
    drop_part,
    entry_id_key,
    open_staging,
    part_name,
    write_part,
)
from transforms.sources.avro_input import QUOTE_COLUMNS, quote_row
from transforms.sources.feeds import FeedBlock, Stopping, never
from transforms.sources.live import Message, frames_to_batch, newest_arrival
from transforms.sources.replay import BLOCK_SCHEMA

LOG = logging.getLogger(__name__)

SCHEME = "redis://"
QUOTE_FIELD = b"q"
MODE_FIELD = b"m"
DEFAULT_PORT = 6379


class QueueError(ValueError):
    """A queue url or setting that cannot work."""


@dataclass(frozen=True)
class QueueAddress:
    """``redis://HOST[:PORT]/STREAM[?db=N]``: a Redis server and one stream on it."""

    host: str
    port: int
    stream: str
    db: int = 0

    @classmethod
    def parse(cls, url: str) -> QueueAddress:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise QueueError(f"a queue url starts with {SCHEME}, got {url!r}")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise QueueError(f"{url!r}: the port is not a number from 1 to 65535") from None
        stream = parts.path.strip("/")
        if not parts.hostname or not stream or "/" in stream:
            raise QueueError(f"a queue url is redis://HOST[:PORT]/STREAM, got {url!r}")
        db = parse_qs(parts.query).get("db", ["0"])[-1]
        if not db.isdigit():
            raise QueueError(f"{url!r}: db must be a number, got {db!r}")
        return cls(parts.hostname, port, stream, int(db))

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.host}:{self.port}/{self.stream}" + (f"?db={self.db}" if self.db else "")

    def connect(self):
        import redis

        return redis.Redis(host=self.host, port=self.port, db=self.db, socket_timeout=30, socket_connect_timeout=5)

    def key(self, *parts: str) -> str:
        """A key that belongs to this stream (``STREAM:part:part``)."""
        return ":".join((self.stream, *parts))


def is_queue_url(value: str | None) -> bool:
    return bool(value) and value.startswith(SCHEME)


def ensure_group(client, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` (and the stream) reading from its start, unless it exists."""
    import redis

    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


# --------------------------------------------------------------------------- pure helpers


def group_lag(groups: Iterable[dict], group: str, length: int, history: AddedHistory | None = None) -> int:
    """Entries of the stream not yet delivered to ``group`` (``XINFO GROUPS``). Redis reports no
    lag after some deletions and trims, and Redis before 7.0 never does: then the publisher's own
    ``history`` of what it added gives it (:meth:`AddedHistory.lag`), and without one the stream's
    ``length`` is the safe upper bound."""
    for info in groups:
        if _text(info.get("name")) == group:
            lag = info.get("lag")
            if lag is not None:
                return int(lag)
            if history is not None and info.get("last-delivered-id") is not None:
                return min(length, history.lag(_text(info["last-delivered-id"])))
            return length
    return length


class AddedHistory:
    """What one publisher added: ``(last entry id, entries added so far)`` per batch, so that the
    group's lag is ``added - added up to its last-delivered id`` where Redis does not report it.

    Only this publisher's entries are counted (an older publisher's undelivered entries are not);
    batches the group has passed are forgotten, so it stays as small as the lag.
    """

    def __init__(self) -> None:
        self._batches: list[tuple[tuple[int, int], int]] = []
        self.added = 0
        self._done = 0  # entries of the batches forgotten: all delivered

    def record(self, last_id: str, count: int) -> None:
        self.added += count
        self._batches.append((entry_id_key(last_id), self.added))

    def lag(self, last_delivered: str) -> int:
        """Entries added after ``last_delivered``, to a batch: a group in the middle of a batch
        counts as not having read it yet (an overestimate of at most one batch)."""
        delivered = entry_id_key(last_delivered)
        passed = 0
        while passed < len(self._batches) and self._batches[passed][0] <= delivered:
            passed += 1
        if passed:
            self._done = self._batches[passed - 1][1]
            del self._batches[:passed]
        return self.added - self._done


def unread_trimmed(length_before: int, lag_before: int, added: int, length_after: int) -> int:
    """Of the entries ``MAXLEN`` trimmed in a batch, how many the group had not read yet.

    Trimming removes the oldest entries; the oldest ``length_before - lag_before`` had been
    delivered, so only what was trimmed beyond them was unread.
    """
    trimmed = max(0, length_before + added - length_after)
    delivered = max(0, length_before - lag_before)
    return max(0, trimmed - delivered)


def backoff(attempt: int, first: float = 0.005, most: float = 0.05) -> float:
    """The pause before lag check ``attempt`` (0, 1, ...): doubling from ``first`` up to ``most``.

    The ceiling is short on purpose: the consumers drain half a high water in a fraction of a
    second, and a publisher that oversleeps leaves them idle (a lag check is one cheap command).
    """
    return min(most, first * 2 ** attempt)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- publishing


@dataclass
class PublishStats:
    """What a :class:`Publisher` did: entries published, backpressure waits, trims."""

    queued: int = 0
    batches: int = 0
    backpressure_waits: int = 0
    backpressure_seconds: float = 0.0
    max_lag: int = 0
    max_stream_length: int = 0
    trimmed: int = 0
    trimmed_unread: int = 0

    def as_dict(self) -> dict:
        return {**self.__dict__, "backpressure_seconds": round(self.backpressure_seconds, 3)}


class Publisher:
    """Appends ``(payload, mode)`` messages to a stream with backpressure (module docstring).

    Attributes:
        high_water: group lag above which the publisher waits.
        low_water: lag it waits for (default: half of ``high_water``).
        max_len: ``MAXLEN ~`` safety cap (default: 10 × ``high_water``); must exceed high water.
        batch_size: entries per pipelined ``XADD`` batch.
    """

    def __init__(self, address: QueueAddress, group: str, *, high_water: int = 10_000, low_water: int | None = None,
                 max_len: int | None = None, batch_size: int = 1000, client=None,
                 sleep: Callable[[float], None] = time.sleep):
        self.address, self.group = address, group
        self.high_water = high_water
        self.low_water = high_water // 2 if low_water is None else low_water
        self.max_len = 10 * high_water if max_len is None else max_len
        self.batch_size = batch_size
        if not 0 <= self.low_water <= self.high_water < self.max_len or batch_size < 1:
            raise QueueError(f"need 0 <= low water ({self.low_water}) <= high water ({self.high_water}) "
                             f"< max length ({self.max_len}) and a batch size of at least 1")
        self.stats = PublishStats()
        self._history = AddedHistory()
        self._client = client or address.connect()
        self._sleep = sleep
        ensure_group(self._client, address.stream, group)

    def lag(self) -> tuple[int, int]:
        """``(group lag, stream length)`` now."""
        pipe = self._client.pipeline(transaction=True)
        pipe.xinfo_groups(self.address.stream)
        pipe.xlen(self.address.stream)
        groups, length = pipe.execute()
        return group_lag(groups, self.group, length, self._history), length

    def wait_for_room(self) -> None:
        """Return at once while the lag is at most ``high_water``; else wait until it is at most
        ``low_water``, checking with growing pauses."""
        lag, _ = self.lag()
        if lag <= self.high_water:
            return
        began = time.monotonic()
        self.stats.backpressure_waits += 1
        LOG.info("queue %s: group %s is %s entries behind (high water %s); waiting", self.address.url, self.group,
                 lag, self.high_water)
        attempt = 0
        while lag > self.low_water:
            self._sleep(backoff(attempt))
            attempt += 1
            lag, _ = self.lag()
        self.stats.backpressure_seconds += time.monotonic() - began

    def publish(self, messages: Sequence[tuple[bytes, str]]) -> None:
        """Append ``messages`` (payload, mode), in batches, each after :meth:`wait_for_room`."""
        stream = self.address.stream
        for offset in range(0, len(messages), self.batch_size):
            chunk = messages[offset:offset + self.batch_size]
            self.wait_for_room()
            pipe = self._client.pipeline(transaction=True)
            pipe.xinfo_groups(stream)
            pipe.xlen(stream)
            for payload, mode in chunk:
                pipe.xadd(stream, {QUOTE_FIELD: payload, MODE_FIELD: mode}, maxlen=self.max_len, approximate=True)
            pipe.xlen(stream)
            replies = pipe.execute()
            groups, length_before, length_after = replies[0], replies[1], replies[-1]
            lag_before = group_lag(groups, self.group, length_before, self._history)
            self._history.record(_text(replies[-2]), len(chunk))
            self._count(chunk, length_before, lag_before, length_after)

    def _count(self, chunk, length_before: int, lag_before: int, length_after: int) -> None:
        stats = self.stats
        stats.queued += len(chunk)
        stats.batches += 1
        stats.max_lag = max(stats.max_lag, lag_before + len(chunk))
        stats.max_stream_length = max(stats.max_stream_length, length_after)
        stats.trimmed += max(0, length_before + len(chunk) - length_after)
        lost = unread_trimmed(length_before, lag_before, len(chunk), length_after)
        if lost:
            stats.trimmed_unread += lost
            LOG.warning("queue %s: MAXLEN %s trimmed %s entries group %s had not read", self.address.url,
                        self.max_len, lost, self.group)


def quote_messages(records: Sequence[dict], modes: Sequence[str], encoder: SingleObjectEncoder) -> list[tuple[bytes, str]]:
    """``quote`` records and their modes as queue messages (single-object encoded)."""
    return [(encoder.encode(record), mode) for record, mode in zip(records, modes)]


# The publisher's hot path: quote v3 written straight from a valid block's columns. The generic
# route (Arrow -> dicts with Decimals -> fastavro) costs ~15 us a quote, this one ~4 us; a test
# checks that both give the same bytes, and the generic route is used for any other schema.
QUOTE_V3_FINGERPRINT = 0x8A5A187239DFD0D8
QUOTE_V3_PRICE_SCALE = 8  # the decimal scale of quote v3's prices


def _long(value: int) -> bytes:
    """Avro ``long``: zig-zag, then a little-endian base-128 varint."""
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _text_bytes(value: str) -> bytes:
    data = value.encode()
    return _long(len(data)) + data


def _decimal_bytes(unscaled: int) -> bytes:
    """Avro ``decimal`` bytes as fastavro writes them: big-endian two's complement, one spare bit."""
    data = unscaled.to_bytes((abs(unscaled).bit_length() + 8) // 8, "big", signed=True)
    return _long(len(data)) + data


_NULL = b"\x00"
_DOUBLE = struct.Struct("<d")


def _optional_double(value: float | None) -> bytes:
    return _NULL if value is None else b"\x02" + _DOUBLE.pack(value)


def _optional_long(value: int | None) -> bytes:
    return _NULL if value is None else b"\x02" + _long(value)


def fast_quote_messages(valid: pa.RecordBatch, scale: int, header: bytes) -> list[tuple[bytes, str]]:
    """A valid block's quotes as quote v3 single-object messages (``header``: marker and
    fingerprint) and their modes, without building records; prices are the block's unscaled
    integers at ``scale`` (at most the schema's 8 digits). The latency goes in twice, as
    :func:`transforms.sinks.stage.avro_output.quote_records` writes it: whole ms rounded up, then exact µs."""
    factor = 10 ** (QUOTE_V3_PRICE_SCALE - scale)
    columns = valid.select(["event_us", "symbol", "bid", "bid_size", "ask", "ask_size", "latency_us", "tenant",
                            "mode"]).to_pydict()
    rows = zip(*columns.values())
    return [
        (b"".join((header, _long(event_us), _text_bytes(symbol), _decimal_bytes(bid * factor), _optional_double(bid_size),
                   _decimal_bytes(ask * factor), _optional_double(ask_size), _optional_long(whole_latency_ms(latency)),
                   _text_bytes(tenant), _NULL, _optional_long(latency))), mode)
        for event_us, symbol, bid, bid_size, ask, ask_size, latency, tenant, mode in rows
    ]


# --------------------------------------------------------------------------- consuming


@dataclass
class ConsumeStats:
    """What a :class:`QueueFeed` has done: ``records_in`` entries yielded as records."""

    records_in: int = 0
    committed: int = 0
    malformed_messages: int = 0
    recovered_consumers: int = 0
    reclaimed: int = 0
    redelivered: int = 0
    parts_applied: int = 0
    parts_dropped: int = 0
    fenced: int = 0
    lost_trimmed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


#: Commit a block: only while its first and last entries are still ours (a consumer taken for
#: dead and recovered must not commit what another now owns), the part's name in the registry
#: and XACK of the entries, atomically. KEYS: stream, registry; ARGV: group, consumer, registry
#: field ('' for none), ids...; returns the entries acknowledged, or -1 when not ours any more.
_COMMIT = """
local first, last = ARGV[4], ARGV[#ARGV]
for _, id in ipairs({first, last}) do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) == 0 then return -1 end
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[3], ARGV[2]) end
local acked = 0
for i = 4, #ARGV, 500 do
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
return acked
"""


def settle_folder(client, address: QueueAddress, group: str, consumer: str, directory: str) -> Built:
    """Settle ``consumer``'s parts in ``directory`` from the group's registry of committed parts
    (:func:`transforms.sinks.staging.build`): committed ones applied and forgotten, the others dropped."""
    registry = address.key("parts", group)
    return build(
        directory,
        committed=lambda part: client.hexists(registry, f"{consumer} {part}"),
        forget=lambda part: client.hdel(registry, f"{consumer} {part}"),
    )


@dataclass
class QueueFeed:
    """One consumer of a stream's group as a :class:`~transforms.sources.feeds.QuoteFeed` (module docstring).

    Position ``n`` is the n-th entry this feed yielded (the group, not the position, says where
    to resume). Runs until ``stopping()``.

    Attributes:
        address, group, consumer: the stream, the consumer group and this consumer's name.
        ledger_dir: the folder of this consumer's output files, written in parts
            (:mod:`transforms.sinks.staging`; None: commits acknowledge only).
        max_rows: entries per block (``XREADGROUP COUNT``).
        block_ms: how long one read waits for new entries before checking ``stopping()``.
        dead_after_ms: a consumer whose heartbeat is this old is dead; its entries are recovered.
    """

    address: QueueAddress
    group: str
    consumer: str
    ledger_dir: str | None = None
    max_rows: int = 2000
    block_ms: int = 100
    dead_after_ms: int = 10_000
    mode: str = "live"
    client: object = field(default=None, repr=False, compare=False)
    _stats: ConsumeStats = field(default_factory=ConsumeStats, repr=False, compare=False)

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.address.url,)

    def stats(self) -> dict[str, int]:
        return self._stats.as_dict()

    # -- keys --
    def _alive_key(self, consumer: str) -> str:
        return self.address.key("alive", self.group, consumer)

    @property
    def _ledger_key(self) -> str:
        return self.address.key("ledger", self.group)

    @property
    def _parts_key(self) -> str:
        return self.address.key("parts", self.group)

    def blocks(self, start: int = 0, stopping: Stopping = never) -> Iterator[FeedBlock]:
        client = self.client = self.client or self.address.connect()
        ensure_group(client, self.address.stream, self.group)
        decoder = SingleObjectDecoder(
            load_schema("quote", latest_version("quote")),
            [load_schema("quote", version) for version in range(1, latest_version("quote") + 1)],
        )
        self._heartbeat()
        commit = client.register_script(_COMMIT)
        staging = None
        if self.ledger_dir is not None:
            os.makedirs(self.ledger_dir, exist_ok=True)
            client.hset(self._ledger_key, self.consumer, json.dumps({"dir": os.path.abspath(self.ledger_dir)}))
            self._build(self.consumer, self.ledger_dir)  # an earlier run under this name: settle its parts
            staging = open_staging(self.ledger_dir)
        cursor: str | None = "0"  # first our own pending entries, then new ones
        position, newest = start, None
        next_check = 0.0
        try:
            while not stopping():
                self._heartbeat()
                if time.monotonic() >= next_check:
                    if self._recover_dead():
                        cursor = "0"
                    next_check = time.monotonic() + self.dead_after_ms / 2000
                entries, cursor = self._read(cursor)
                if not entries:
                    continue
                batch = self._to_batch(entries, position, newest, decoder)
                newest = newest_arrival(batch) or newest
                ids = [_text(entry_id) for entry_id, _ in entries]
                if staging is not None:
                    staging.begin()
                yield FeedBlock(batch, position, position + len(entries), self.sources)
                self._commit(commit, ids, staging.end() if staging is not None else [])
                position += len(entries)
        finally:
            if staging is not None:
                staging.end()  # a block cut short is not committed: its entries stay pending

    def _commit(self, commit, ids: list[str], chunks: list) -> None:
        """Write the block's part, commit it with its entries, then apply it (module docstring of
        :mod:`transforms.sinks.staging`)."""
        name = part_name(ids[0], ids[-1]) if chunks else None
        if name is not None:
            write_part(self.ledger_dir, name, chunks)
        field_name = f"{self.consumer} {name}" if name else ""
        acked = commit(keys=[self.address.stream, self._parts_key],
                       args=[self.group, self.consumer, field_name, *ids])
        if acked < 0:  # taken over while we were seen as dead: the new owner writes these entries
            self._stats.fenced += len(ids)
            LOG.warning("queue %s: %s's entries %s..%s were taken over; not writing them", self.address.url,
                        self.consumer, ids[0], ids[-1])
            if name is not None:
                drop_part(self.ledger_dir, name)
            return
        if name is not None:
            apply_part(self.ledger_dir, name)
            self._stats.parts_applied += 1
            self.client.hdel(self._parts_key, field_name)
        self._stats.committed += len(ids)

    def _build(self, name: str, directory: str) -> None:
        """Settle ``name``'s parts in ``directory`` from the registry (:func:`settle_folder`)."""
        done = settle_folder(self.client, self.address, self.group, name, directory)
        self._stats.parts_applied += done.applied
        self._stats.parts_dropped += done.dropped
        if done.applied or done.dropped:
            LOG.warning("queue %s: settled %s's folder %s: %s committed parts applied, %s uncommitted dropped",
                        self.address.url, name, directory, done.applied, done.dropped)

    def _heartbeat(self) -> None:
        self.client.set(self._alive_key(self.consumer), os.getpid(), px=self.dead_after_ms)

    def _read(self, cursor: str | None) -> tuple[list, str | None]:
        """Our pending entries after ``cursor`` (None: new entries, waiting up to ``block_ms``)."""
        stream = self.address.stream
        if cursor is not None:
            reply = self.client.xreadgroup(self.group, self.consumer, {stream: cursor}, count=self.max_rows)
            entries = reply[0][1] if reply else []
            if not entries:
                return [], None
            self._stats.redelivered += len(entries)
            return self._drop_trimmed(entries), _text(entries[-1][0])
        reply = self.client.xreadgroup(self.group, self.consumer, {stream: ">"}, count=self.max_rows,
                                       block=self.block_ms)
        return (reply[0][1] if reply else []), None

    def _drop_trimmed(self, entries: list) -> list:
        """Pending entries ``MAXLEN`` trimmed come back without fields: acknowledge and count them."""
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            self.client.xack(self.address.stream, self.group, *gone)
            self._stats.lost_trimmed += len(gone)
            LOG.warning("queue %s: %s pending entries were trimmed before they were processed", self.address.url,
                        len(gone))
        return [(entry_id, fields) for entry_id, fields in entries if fields]

    def _to_batch(self, entries: list, position: int, newest: int | None, decoder: SingleObjectDecoder) -> pa.RecordBatch:
        messages, modes = [], []
        for index, (entry_id, fields) in enumerate(entries):
            message, mode = entry_message(_text(entry_id), fields, position + index, decoder)
            self._stats.malformed_messages += message.reason is not None
            messages.append(message)
            modes.append(mode)
        self._stats.records_in += len(messages)
        batch = frames_to_batch(messages, newest)
        return batch.set_column(BLOCK_SCHEMA.get_field_index("mode"), "mode", pa.array(modes, type=pa.string()))

    # -- recovery --
    def _recover_dead(self) -> bool:
        """Recover every other consumer of the group that has no heartbeat (its pending entries
        are claimed, and it leaves the group); whether any entries were claimed."""
        claimed = False
        for info in self.client.xinfo_consumers(self.address.stream, self.group):
            name = _text(info["name"])
            if name == self.consumer:
                continue
            if int(info.get("idle", 0)) < self.dead_after_ms or self.client.exists(self._alive_key(name)):
                continue
            claimed |= self._recover(name)
        return claimed

    def _recover(self, name: str) -> bool:
        """Take over dead consumer ``name``'s pending entries, and settle its folder if it is
        reachable from here (a shared ``--output_dir``; otherwise its own restart, or
        ``python -m beam_pipeline.queue_outputs`` where it is, does); whether any entries changed
        hands. One recoverer at a time (a short lock)."""
        lock = self.address.key("recovering", self.group, name)
        if not self.client.set(lock, self.consumer, nx=True, px=self.dead_after_ms):
            return False
        try:
            ids = self._claim_all(name)
            self._stats.recovered_consumers += 1
            self.client.xgroup_delconsumer(self.address.stream, self.group, name)
            LOG.warning("queue %s: consumer %s is gone; %s took its %s pending entries", self.address.url, name,
                        self.consumer, len(ids))  # (none: it had committed everything)
            raw = self.client.hget(self._ledger_key, name)
            folder = json.loads(raw).get("dir") if raw else None
            if folder and os.path.isdir(folder) and self.ledger_dir is not None:
                self._build(name, folder)
            return bool(ids)
        finally:
            self.client.delete(lock)

    def _claim_all(self, name: str) -> list:
        claimed: list = []
        while True:
            pending = self.client.xpending_range(self.address.stream, self.group, min="-", max="+", count=1000,
                                                 consumername=name)
            if not pending:
                break
            ids = [item["message_id"] for item in pending]
            self.client.xclaim(self.address.stream, self.group, self.consumer, min_idle_time=0, message_ids=ids,
                               justid=True)
            claimed += ids
        self._stats.reclaimed += len(claimed)
        return claimed


def entry_message(entry_id: str, fields: dict, seq: int, decoder: SingleObjectDecoder) -> tuple[Message, str]:
    """A stream entry as a :class:`~transforms.sources.live.Message` (exact text fields, or a reject
    reason) and its mode."""
    mode = _text(fields.get(MODE_FIELD, b"live"))
    if mode not in MODES:
        return Message(seq, f"{entry_id} mode={mode}", {}, f"bad_message: unknown mode {mode!r}"), "live"
    payload = fields.get(QUOTE_FIELD)
    if payload is None:
        return Message(seq, entry_id, {}, "bad_message: no q field"), mode
    try:
        record = decoder.decode(payload)
    except DecodeError as exc:
        return Message(seq, f"{entry_id} {payload[:64].hex()}", {}, exc.reason), mode
    values = quote_row(record)
    return Message(seq, f"{entry_id} {','.join(values)}", dict(zip(QUOTE_COLUMNS, values))), mode


# --------------------------------------------------------------------------- Beam


