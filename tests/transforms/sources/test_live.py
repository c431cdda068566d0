"""The live websocket feed: frame parsing, raw rows, backoff, and LiveFeed against servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Iterator
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pytest
from websockets.asyncio.server import serve

import transforms.sources.live as live
from beam_pipeline.config import bundled_sample
from beam_pipeline.devtools.feed import FeedConfig, FeedServer, load_messages
from transforms.quotes.rules import LIVE, reject_code
from transforms.sources.feeds import FeedBlock
from transforms.sources.live import (
    LiveFeed,
    LiveFeedError,
    backoff_delay,
    frames_to_batch,
    parse_frame,
    read_message,
    with_from,
)
from transforms.sources.replay import BLOCK_SCHEMA

HOST = "127.0.0.1"
UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MESSAGES = load_messages(bundled_sample("live_sample.csv"))
FAST_RETRY = dict(retry_initial=0.001, retry_max=0.005, seed=7)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime, in integers only."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def csv_micros(text: str) -> int:
    """A ``YYYY-MM-DD HH:MM:SS.fff`` timestamp of the sample CSV, as UTC microseconds."""
    return micros(datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC))


def quote(seq: int | None, timestamp: str | None = "2024-06-03 07:00:00.012", **fields) -> str:
    """A quote frame as the feed sends it."""
    message = {} if seq is None else {"seq": seq}
    if timestamp is not None:
        message["timestamp"] = timestamp
    return json.dumps({**message, "symbol": "EURUSD", "bid_price": "1.1", "ask_price": "1.2", **fields})


def eos(seq: int) -> str:
    return json.dumps({"seq": seq, "eos": True})


def batch_of(*texts: str, newest_arrival_us: int | None = None) -> pa.RecordBatch:
    return frames_to_batch([read_message(text, index) for index, text in enumerate(texts)], newest_arrival_us)


def collect(feed: LiveFeed, start: int | None = 0, stopping=lambda: False) -> list[FeedBlock]:
    return list(feed.blocks(start, stopping))


def column(blocks: list[FeedBlock], name: str) -> list:
    return [value for block in blocks for value in block.batch.column(name).to_pylist()]


def closed_port() -> int:
    """A port on 127.0.0.1 that was just free: nothing listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@contextmanager
def scripted_server(scripts: list[tuple[list[str], int]]) -> Iterator[tuple[str, list[str]]]:
    """A websocket server on 127.0.0.1: connection i sends ``scripts[i]``'s frames, then closes with
    its code. Yields the url and the list of request paths (``?from=`` included) as they come."""
    paths: list[str] = []
    remaining = list(scripts)

    async def handle(websocket):
        paths.append(websocket.request.path)
        texts, code = remaining.pop(0) if remaining else ([], 1011)
        for text in texts:
            await websocket.send(text)
        await websocket.close(code)

    async def start():
        return await serve(handle, HOST, 0)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"ws://{HOST}:{server.sockets[0].getsockname()[1]}/", paths
    finally:
        async def stop():
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --------------------------------------------------------------------------- parse_frame


def test_parse_frame_maps_fields_and_aliases_and_keeps_the_exact_text():
    seq, fields, reason, end = parse_frame(
        '{"seq": 7, "timestamp": "2024-06-03 07:00:00.012", "symbol": "EURUSD", "bid": 1.10, "ask": 1.1200,'
        ' "bid_size": 5, "ask_size": "2.50", "latency": 12, "venue": "X", "extra": [1, 2]}')
    assert (seq, reason, end) == (7, None, False)
    assert fields == {"timestamp": "2024-06-03 07:00:00.012", "symbol": "EURUSD", "bid_price": "1.10",
                      "ask_price": "1.1200", "bid_size": "5", "ask_size": "2.50", "latency_ms": "12"}


def test_parse_frame_null_is_none_and_seq_is_optional():
    seq, fields, reason, end = parse_frame('{"timestamp": null, "bid_price": "1", "ask_price": 2e-3}')
    assert seq is None and reason is None and not end
    assert fields == {"timestamp": None, "bid_price": "1", "ask_price": "2e-3"}


def test_parse_frame_end_of_stream():
    assert parse_frame('{"seq": 2000, "eos": true}') == (2000, {}, None, True)
    assert parse_frame('{"seq": 3, "eos": false, "bid": "1"}') == (3, {"bid_price": "1"}, None, False)


@pytest.mark.parametrize("text", ['{"seq": 1, "bid": ', "not json", "", '{"a": 1}}'])
def test_parse_frame_broken_json(text):
    seq, fields, reason, end = parse_frame(text)
    assert reason.startswith("bad_json:") and fields == {} and not end and seq is None


@pytest.mark.parametrize("text, kind", [("[1, 2]", "list"), ('"a quote"', "str"), ("12", "str"), ("null", "NoneType")])
def test_parse_frame_json_that_is_not_an_object(text, kind):
    seq, fields, reason, end = parse_frame(text)
    assert reason.startswith("bad_json:") and kind in reason
    assert (seq, fields, end) == (None, {}, False)


@pytest.mark.parametrize("value, kind", [("true", "bool"), ("[1.1]", "list"), ('{"v": 1}', "dict")])
def test_parse_frame_field_of_the_wrong_type(value, kind):
    seq, fields, reason, end = parse_frame(f'{{"seq": 4, "timestamp": "2024-01-01", "bid": {value}}}')
    assert reason.startswith("bad_field:") and "bid" in reason and kind in reason
    assert (seq, fields, end) == (4, {}, False)


def test_read_message_gives_a_broken_frame_the_expected_seq():
    assert read_message("{broken", 41).seq == 41
    assert read_message(quote(9), 41).seq == 9
    assert read_message(quote(None), 41).seq == 41


# --------------------------------------------------------------------------- frames_to_batch


def test_frames_to_batch_rows():
    texts = ['{"seq": 5, "timestamp": "2024-06-03 07:00:00.012", "symbol": "EURUSD", "bid": 1.10, "ask": "1.2000",'
             ' "venue": "X"}', quote(6, "2024-06-03 07:00:01")]
    batch = batch_of(*texts)
    assert batch.schema == BLOCK_SCHEMA
    assert batch.column("mode").to_pylist() == [LIVE, LIVE]
    assert batch.column("file").to_pylist() == [0, 0]
    assert batch.column("line").to_pylist() == [5, 6]
    assert batch.column("raw").to_pylist() == texts
    assert batch.column("bid_price").to_pylist() == ["1.10", "1.1"]
    assert batch.column("ask_price").to_pylist() == ["1.2000", "1.2"]
    assert batch.column("symbol").to_pylist() == ["EURUSD", "EURUSD"]
    assert batch.column("reject").to_pylist() == [None, None]
    expected = [micros(datetime(2024, 6, 3, 7, 0, 0, 12000, tzinfo=UTC)), micros(datetime(2024, 6, 3, 7, 0, 1, tzinfo=UTC))]
    assert batch.column("event_us").to_pylist() == expected
    # No latency: none recorded, and a quote arrives at its timestamp.
    assert batch.column("latency_us").to_pylist() == [None, None]
    assert batch.column("latency_ms").to_pylist() == [None, None]
    assert batch.column("arrival_us").to_pylist() == expected


def test_frames_to_batch_adds_latency_to_arrival():
    batch = batch_of(quote(0, "2024-01-01 00:00:00", latency=120), quote(1, "2024-01-01 00:00:00.500", latency_ms="7"))
    base = micros(datetime(2024, 1, 1, tzinfo=UTC))
    assert batch.column("latency_us").to_pylist() == [120_000, 7_000]
    assert batch.column("arrival_us").to_pylist() == [base + 120_000, base + 507_000]


def test_a_fractional_latency_as_json_number_or_string_is_exact():
    # 20.5 and 0.001 as JSON numbers are read as their text, never as floats.
    batch = batch_of('{"seq": 0, "timestamp": "2024-01-01 00:00:00", "symbol": "A", "bid_price": 1, '
                     '"ask_price": 2, "latency_ms": 20.5}',
                     quote(1, "2024-01-01 00:00:00.100", latency_ms="0.001"),
                     '{"seq": 2, "timestamp": "2024-01-01 00:00:00.200", "symbol": "A", "bid_price": 1, '
                     '"ask_price": 2, "latency_ms": 20.1234}')
    base = micros(datetime(2024, 1, 1, tzinfo=UTC))
    assert batch.column("latency_us").to_pylist()[:2] == [20_500, 1]
    assert batch.column("arrival_us").to_pylist()[:2] == [base + 20_500, base + 100_001]
    assert batch.column("reject").to_pylist()[2] == "bad_latency: latency_ms '20.1234' has more than 3 decimal places"


def test_arrival_is_the_newest_so_far():
    batch = batch_of(
        quote(0, "2024-01-01 00:00:00.010", latency=50),   # arrives at 60 ms
        quote(1, "2024-01-01 00:00:00.020"),              # older arrival (20 ms): takes 60 ms
        quote(2, "2024-01-01 00:00:00.040", latency=10),  # 50 ms: still 60 ms
        quote(3, "2024-01-01 00:00:00.100"),              # newer: 100 ms
        quote(4, "2024-01-01 00:00:00.090"),              # 100 ms again
    )
    base = micros(datetime(2024, 1, 1, tzinfo=UTC))
    assert batch.column("arrival_us").to_pylist() == [base + ms * 1000 for ms in (60, 60, 60, 100, 100)]
    assert batch.column("event_us").to_pylist() == [base + ms * 1000 for ms in (10, 20, 40, 100, 90)]


def test_arrival_respects_the_newest_arrival_floor():
    base = micros(datetime(2024, 1, 1, tzinfo=UTC))
    texts = (quote(0, "2024-01-01 00:00:00.010"), quote(1, "2024-01-01 00:00:00.030"))
    assert batch_of(*texts, newest_arrival_us=base + 20_000).column("arrival_us").to_pylist() == [
        base + 20_000, base + 30_000]
    assert batch_of(*texts, newest_arrival_us=base + 99_000).column("arrival_us").to_pylist() == [
        base + 99_000, base + 99_000]
    assert batch_of(*texts, newest_arrival_us=base).column("arrival_us").to_pylist() == [
        base + 10_000, base + 30_000]


def test_rejected_rows_have_a_reason_and_no_times_and_do_not_move_arrival():
    texts = [
        quote(0, "2024-01-01 00:00:00.010"),
        '{"seq": 1, "timestamp": "2024-01-01 00:00:0',          # broken JSON
        quote(2, "2024-01-01 00:00:09", bid=True),              # bad field
        quote(3, "2024-13-01 00:00:00"),                        # no such month
        quote(4, None),                                         # no timestamp at all
        quote(5, "2024-01-01 00:00:05", latency="-3"),          # bad latency
        quote(6, "2024-01-01 00:00:00.020"),
    ]
    batch = batch_of(*texts)
    codes = [reject_code(r) if r else None for r in batch.column("reject").to_pylist()]
    assert codes == [None, "bad_json", "bad_field", "bad_timestamp", "missing_timestamp", "bad_latency", None]
    assert batch.column("line").to_pylist() == list(range(7))
    assert batch.column("raw").to_pylist() == texts
    for name in ("event_us", "arrival_us", "latency_us"):
        assert batch.column(name).to_pylist()[1:6] == [None] * 5, name
    base = micros(datetime(2024, 1, 1, tzinfo=UTC))
    # The bad latency row's 5 s arrival would have pushed row 6 forward if it had counted.
    assert batch.column("arrival_us").to_pylist()[6] == base + 20_000


def test_a_null_timestamp_is_missing():
    batch = batch_of('{"seq": 0, "timestamp": null, "bid": "1", "ask": "2"}')
    assert reject_code(batch.column("reject")[0].as_py()) == "missing_timestamp"
    assert batch.column("event_us")[0].as_py() is None


def test_frames_to_batch_of_nothing():
    batch = frames_to_batch([])
    assert batch.num_rows == 0 and batch.schema == BLOCK_SCHEMA


# --------------------------------------------------------------------------- backoff_delay and with_from


@pytest.mark.parametrize("factor", [2.0, 3.0])
def test_backoff_grows_exponentially(factor):
    for attempt in range(1, 8):
        capped = 0.01 * factor ** (attempt - 1)
        assert backoff_delay(attempt, 0.01, 1000.0, 0.0, factor) == pytest.approx(capped / 2)
        assert backoff_delay(attempt, 0.01, 1000.0, 0.999999, factor) == pytest.approx(capped, rel=1e-5)


def test_backoff_is_capped_at_the_maximum():
    for attempt in range(6, 40):  # 0.1 * 2**5 = 3.2 > 2: capped from attempt 6 on
        assert backoff_delay(attempt, 0.1, 2.0, 0.0) == pytest.approx(1.0)
        assert 1.0 <= backoff_delay(attempt, 0.1, 2.0, 0.9999) <= 2.0


@pytest.mark.parametrize("unit_random", [0.0, 0.1, 0.25, 0.5, 0.75, 0.999999])
@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 12])
def test_backoff_jitter_stays_between_half_and_all_of_the_capped_delay(attempt, unit_random):
    capped = min(1.5, 0.05 * 2 ** (attempt - 1))
    delay = backoff_delay(attempt, 0.05, 1.5, unit_random)
    assert capped / 2 <= delay <= capped
    assert delay == pytest.approx(capped / 2 * (1 + unit_random))


@pytest.mark.parametrize("attempt", [0, -1])
def test_backoff_counts_attempts_from_one(attempt):
    with pytest.raises(ValueError, match="from 1"):
        backoff_delay(attempt, 0.05, 2.0, 0.5)


def test_backoff_stays_capped_for_very_many_attempts():
    assert 1.0 <= backoff_delay(1100, 0.05, 2.0, 0.5) <= 2.0


def test_with_from_adds_the_position():
    assert with_from(f"ws://{HOST}:8765/", 5) == f"ws://{HOST}:8765/?from=5"
    assert with_from(f"ws://{HOST}:8765/", 0) == f"ws://{HOST}:8765/?from=0"


def test_with_from_replaces_from_and_keeps_the_rest():
    url = with_from(f"wss://{HOST}:9/quotes?token=a%2Fb&from=3&empty=&from=4&tag=x&tag=y#frag", 12)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == ("wss", f"{HOST}:9", "/quotes", "frag")
    assert parse_qsl(parts.query, keep_blank_values=True) == [
        ("token", "a/b"), ("empty", ""), ("tag", "x"), ("tag", "y"), ("from", "12")]


def test_with_from_none_leaves_the_url_alone():
    url = f"ws://{HOST}:1/x?from=3&y=%20"
    assert with_from(url, None) == url


# --------------------------------------------------------------------------- LiveFeed


@pytest.mark.parametrize("url", [f"http://{HOST}:1/", f"{HOST}:1", ""])
def test_live_feed_wants_a_websocket_url(url):
    with pytest.raises(ValueError, match="ws://"):
        LiveFeed(url)


@pytest.mark.parametrize("max_rows", [0, -5])
def test_live_feed_wants_at_least_one_row(max_rows):
    with pytest.raises(ValueError, match="max_rows"):
        LiveFeed(f"ws://{HOST}:1/", max_rows=max_rows)


def test_every_frame_of_the_sample_arrives_once_in_order():
    with FeedServer(MESSAGES, FeedConfig(rate=0)) as url:
        feed = LiveFeed(url, **FAST_RETRY)
        blocks = collect(feed)
    count = len(MESSAGES)
    assert column(blocks, "line") == list(range(count))
    assert column(blocks, "timestamp") == [m["timestamp"] for m in MESSAGES]
    assert column(blocks, "bid_price") == [m["bid_price"] for m in MESSAGES]
    assert column(blocks, "ask_size") == [m["ask_size"] for m in MESSAGES]
    assert column(blocks, "reject") == [None] * count
    assert set(column(blocks, "mode")) == {LIVE}
    events = [csv_micros(m["timestamp"]) for m in MESSAGES]
    assert column(blocks, "event_us") == events
    assert column(blocks, "arrival_us") == [max(events[: i + 1]) for i in range(count)]
    stats = feed.stats()
    assert stats["records_in"] == count
    assert (stats["connections"], stats["reconnects"], stats["end_of_stream"]) == (1, 0, 1)
    assert (stats["malformed_frames"], stats["duplicates_skipped"], stats["gaps"]) == (0, 0, 0)
    assert all(b.sources == (url,) for b in blocks)


def test_blocks_cover_contiguous_positions():
    with FeedServer(MESSAGES, FeedConfig(rate=0)) as url:
        blocks = collect(LiveFeed(url, max_rows=300, **FAST_RETRY))
    for block in blocks:
        lines = block.batch.column("line").to_pylist()
        assert (block.start, block.stop) == (lines[0], lines[-1] + 1)
    assert blocks[0].start == 0 and blocks[-1].stop == len(MESSAGES)
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))


def test_max_rows_bounds_every_block():
    with FeedServer(MESSAGES, FeedConfig(rate=0)) as url:
        blocks = collect(LiveFeed(url, max_rows=64, **FAST_RETRY))
    assert max(b.batch.num_rows for b in blocks) <= 64
    assert len(blocks) >= math.ceil(len(MESSAGES) / 64)
    assert column(blocks, "line") == list(range(len(MESSAGES)))


def test_one_row_blocks_from_a_start_position():
    start = len(MESSAGES) - 40
    with FeedServer(MESSAGES, FeedConfig(rate=0)) as url:
        blocks = collect(LiveFeed(url, max_rows=1, **FAST_RETRY), start=start)
    assert [(b.start, b.stop, b.batch.num_rows) for b in blocks] == [(s, s + 1, 1) for s in range(start, len(MESSAGES))]


@pytest.mark.parametrize("start", [1, 999, 1999])
def test_starting_at_a_position(start):
    with FeedServer(MESSAGES, FeedConfig(rate=0)) as url:
        feed = LiveFeed(url, **FAST_RETRY)
        blocks = collect(feed, start=start)
    assert column(blocks, "line") == list(range(start, len(MESSAGES)))
    assert column(blocks, "timestamp") == [m["timestamp"] for m in MESSAGES[start:]]
    assert blocks[0].start == start
    assert feed.stats()["records_in"] == len(MESSAGES) - start
    assert feed.stats()["gaps"] == 0


@pytest.mark.parametrize("start", [2000, 2500])
def test_starting_at_or_past_the_end_yields_nothing(start):
    with FeedServer(MESSAGES, FeedConfig(rate=0)) as url:
        feed = LiveFeed(url, **FAST_RETRY)
        assert collect(feed, start=start) == []
    assert feed.stats()["end_of_stream"] == 1 and feed.stats()["records_in"] == 0


@pytest.mark.parametrize("drop_every", [250, 333])
def test_dropped_connections_are_resumed_without_loss_or_repeat(drop_every):
    with FeedServer(MESSAGES, FeedConfig(rate=0, drop_every=drop_every)) as url:
        feed = LiveFeed(url, max_rows=100, **FAST_RETRY)
        blocks = collect(feed)
    assert column(blocks, "line") == list(range(len(MESSAGES)))
    stats = feed.stats()
    # 2,000 quotes and the end-of-stream frame, drop_every frames per connection.
    assert stats["connections"] == math.ceil((len(MESSAGES) + 1) / drop_every)
    assert stats["reconnects"] == stats["connections"] - 1 > 0
    assert stats["records_in"] == len(MESSAGES)
    assert (stats["duplicates_skipped"], stats["gaps"], stats["end_of_stream"]) == (0, 0, 1)
    events = [csv_micros(m["timestamp"]) for m in MESSAGES]
    assert column(blocks, "arrival_us") == [max(events[: i + 1]) for i in range(len(events))]


@pytest.mark.parametrize("malformed_every, drop_every", [(97, None), (101, 100), (50, 100)])
def test_malformed_frames_become_bad_json_rows(malformed_every, drop_every):
    config = FeedConfig(rate=0, malformed_every=malformed_every, drop_every=drop_every)
    with FeedServer(MESSAGES, config) as url:
        feed = LiveFeed(url, **FAST_RETRY)
        blocks = collect(feed)
    broken = [seq for seq in range(len(MESSAGES)) if (seq + 1) % malformed_every == 0]
    assert column(blocks, "line") == list(range(len(MESSAGES)))  # broken frames keep their place
    rejects = {line: reason for line, reason in zip(column(blocks, "line"), column(blocks, "reject")) if reason}
    assert sorted(rejects) == broken
    assert all(reason.startswith("bad_json:") for reason in rejects.values())
    assert feed.stats()["malformed_frames"] == len(broken)
    raws = dict(zip(column(blocks, "line"), column(blocks, "raw")))
    for seq in broken:
        full = json.dumps({"seq": seq, **MESSAGES[seq]})
        assert full.startswith(raws[seq]) and raws[seq] != full


def test_the_end_of_stream_frame_is_not_a_row_and_ends_the_blocks():
    few = MESSAGES[:5]
    with FeedServer(few, FeedConfig(rate=0)) as url:
        feed = LiveFeed(url, **FAST_RETRY)
        started = time.monotonic()
        blocks = collect(feed)
        elapsed = time.monotonic() - started
    assert column(blocks, "line") == [0, 1, 2, 3, 4]
    assert not any('"eos"' in raw for raw in column(blocks, "raw"))
    assert feed.stats()["end_of_stream"] == 1 and feed.stats()["connections"] == 1
    assert elapsed < 1.0


def stop_after(url: str, blocks: int, pause: float = 0.0) -> tuple[list[FeedBlock], LiveFeed, float]:
    """Read a feed until ``blocks`` blocks came, pause (the consumer is busy), then stop it.
    Returns the blocks, the feed, and how long the iteration took to end once stopping was set."""
    stop = threading.Event()
    feed = LiveFeed(url, max_rows=20, **FAST_RETRY)
    got: list[FeedBlock] = []
    stopped = None
    for block in feed.blocks(0, stop.is_set):
        got.append(block)
        if len(got) == blocks:
            time.sleep(pause)
            stop.set()
            stopped = time.monotonic()
    return got, feed, time.monotonic() - stopped


def test_stopping_ends_a_looping_feed_at_a_block_boundary():
    looped = MESSAGES[:2]
    with FeedServer(looped, FeedConfig(rate=100, loop=True)) as url:
        got, feed, took = stop_after(url, 3)
    assert len(got) == 3
    assert got[-1].stop > len(looped)  # the feed looped: seq counts on past the 2 quotes
    assert column(got, "line") == list(range(got[-1].stop))
    assert column(got, "timestamp") == [looped[seq % 2]["timestamp"] for seq in range(got[-1].stop)]
    assert feed.stats()["end_of_stream"] == 0
    assert feed.stats()["records_in"] == got[-1].stop
    assert took < 0.5, f"took {took:.3f} s to stop"


def test_stopping_a_busy_feed_is_prompt_too():
    with FeedServer(MESSAGES[:2], FeedConfig(rate=2000, loop=True)) as url:
        # ~200 frames come in meanwhile: more than the websocket's queue holds, so its reader is
        # paused and the closing handshake cannot finish; the close timeout must keep this short.
        got, _, took = stop_after(url, 3, pause=0.1)
    assert len(got) == 3
    assert took < 0.5, f"took {took:.3f} s to stop"


def test_stopping_before_the_start_connects_to_nothing(monkeypatch):
    attempts = []
    monkeypatch.setattr(live, "_connect", lambda url: attempts.append(url))
    feed = LiveFeed(f"ws://{HOST}:{closed_port()}/")
    assert collect(feed, stopping=lambda: True) == []
    assert attempts == [] and feed.stats()["connections"] == 0


def test_an_unreachable_feed_fails_after_max_attempts(monkeypatch):
    attempts = []
    real_connect = live._connect

    def counting_connect(url):
        attempts.append(url)
        return real_connect(url)

    monkeypatch.setattr(live, "_connect", counting_connect)
    url = f"ws://{HOST}:{closed_port()}/"
    feed = LiveFeed(url, max_attempts=4, **FAST_RETRY)
    started = time.monotonic()
    with pytest.raises(LiveFeedError, match="4 attempts"):
        collect(feed)
    assert time.monotonic() - started < 1.5
    assert attempts == [url] * 4  # the first connection from 0 asks for no position
    assert feed.stats()["connections"] == 0


def test_many_attempts_still_end_in_a_live_feed_error():
    feed = LiveFeed(f"ws://{HOST}:{closed_port()}/", max_attempts=1030, retry_initial=1e-6, retry_max=1e-6)
    with pytest.raises(LiveFeedError, match="1030 attempts"):
        collect(feed)


def test_a_refused_request_is_an_error_not_a_retry():
    with FeedServer(MESSAGES, FeedConfig(rate=0)) as url:
        feed = LiveFeed(f"{url}?from=-3", **FAST_RETRY)
        with pytest.raises(LiveFeedError, match="refused"):
            collect(feed, start=None)
    assert feed.stats()["connections"] == 1 and feed.stats()["records_in"] == 0


# --------------------------------------------------------------------------- LiveFeed against scripted servers


def test_repeated_frames_are_skipped_and_gaps_counted():
    script = [quote(0), quote(1), quote(1), quote(0), quote(2), quote(5), quote(6), quote(6), eos(7)]
    with scripted_server([(script, 1000)]) as (url, paths):
        feed = LiveFeed(url, **FAST_RETRY)
        blocks = collect(feed)
    assert column(blocks, "line") == [0, 1, 2, 5, 6]
    stats = feed.stats()
    assert (stats["duplicates_skipped"], stats["gaps"], stats["records_in"]) == (3, 1, 5)
    assert paths == ["/"]


def test_a_resumed_feed_that_repeats_itself_yields_nothing_twice():
    first = [quote(seq) for seq in range(5)]
    second = [quote(seq) for seq in range(10)] + [eos(10)]  # ignores ?from= and starts over
    with scripted_server([(first, 1012), (second, 1000)]) as (url, paths):
        feed = LiveFeed(url, **FAST_RETRY)
        blocks = collect(feed)
    assert column(blocks, "line") == list(range(10))
    assert column(blocks, "raw") == first + second[5:10]
    assert paths == ["/", "/?from=5"]
    stats = feed.stats()
    assert (stats["duplicates_skipped"], stats["gaps"], stats["connections"], stats["reconnects"]) == (5, 0, 2, 1)


def test_a_resumed_feed_is_asked_for_the_next_position():
    scripts = [([quote(3), quote(4)], 1012), ([quote(5)], 1012), ([eos(6)], 1000)]
    with scripted_server(scripts) as (url, paths):
        blocks = collect(LiveFeed(url, **FAST_RETRY), start=3)
    assert paths == ["/?from=3", "/?from=5", "/?from=6"]
    assert column(blocks, "line") == [3, 4, 5]


def test_a_feed_read_from_wherever_it_starts():
    scripts = [([quote(40), quote(41)], 1012), ([quote(42), eos(43)], 1000)]
    with scripted_server(scripts) as (url, paths):
        feed = LiveFeed(url, **FAST_RETRY)
        blocks = collect(feed, start=None)
    assert column(blocks, "line") == [40, 41, 42]
    assert paths == ["/", "/?from=42"]
    assert feed.stats()["gaps"] == 0


def test_bad_frames_from_a_server_are_rows_at_their_place():
    script = [quote(0), '{"seq": 1, "bid": true}', "{", quote(3), "[]", eos(5)]
    with scripted_server([(script, 1000)]) as (url, _):
        feed = LiveFeed(url, **FAST_RETRY)
        blocks = collect(feed)
    assert column(blocks, "line") == [0, 1, 2, 3, 4]
    codes = [reject_code(r) if r else None for r in column(blocks, "reject")]
    assert codes == [None, "bad_field", "bad_json", None, "bad_json"]
    assert column(blocks, "raw") == script[:5]
    assert feed.stats()["malformed_frames"] == 3


def test_arrival_never_goes_back_across_blocks():
    script = [quote(0, "2024-01-01 00:00:00.500"), quote(1, "2024-01-01 00:00:00.100"), eos(2)]
    with scripted_server([(script, 1000)]) as (url, _):
        blocks = collect(LiveFeed(url, max_rows=1, **FAST_RETRY))
    assert [b.batch.num_rows for b in blocks] == [1, 1]
    base = micros(datetime(2024, 1, 1, tzinfo=UTC))
    assert column(blocks, "arrival_us") == [base + 500_000, base + 500_000]
    assert column(blocks, "event_us") == [base + 500_000, base + 100_000]


def test_binary_frames_are_read_as_utf8_text():
    script = [quote(0).encode(), b'{"seq": 1, "symbol": "\xff', quote(2), eos(3)]
    with scripted_server([(script, 1000)]) as (url, _):
        blocks = collect(LiveFeed(url, **FAST_RETRY))
    assert column(blocks, "line") == [0, 1, 2]
    assert column(blocks, "raw") == [quote(0), '{"seq": 1, "symbol": "\ufffd', quote(2)]
    codes = [reject_code(r) if r else None for r in column(blocks, "reject")]
    assert codes == [None, "bad_json", None]
