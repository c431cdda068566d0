"""Webhook ingestion: the decisions without sockets, the inbox and feed, then the server over real HTTP.

Every server listens on 127.0.0.1 at a free port; nothing waits a fixed time, threads are polled
with deadlines.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas import field_rules, load_schema
from transforms.quotes.normalize import normalize_batch, price_rule
from transforms.quotes.rules import LIVE, PriceRule, Rejected
from transforms.sources.feeds import FeedBlock
from transforms.sources.live import frames_to_batch, parse_frame, read_message
from transforms.sources.replay import BLOCK_SCHEMA
from transforms.sources.webhook import (
    InboxClosed,
    InboxFull,
    Verdict,
    WebhookError,
    WebhookFeed,
    WebhookInbox,
    WebhookPolicy,
    WebhookServer,
    admit,
    check_quote,
    endpoint_url,
    field_of,
    registered_inbox,
    token_matches,
)

PRICES: PriceRule = price_rule(field_rules(load_schema("quote", 1)))
POLICY = WebhookPolicy(PRICES)
TOKEN = "s3cret-T0ken"
QUOTE = {"timestamp": "2024-01-01 00:00:00.100", "symbol": "EURUSD", "bid_price": "1.1", "ask_price": "1.2"}


def quote(index: int = 0, **fields) -> dict:
    """A valid quote, 10 ms after the previous index, prices that name the index (mid = 100 + index + 0.25)."""
    seconds, ms = divmod(index * 10, 1000)
    return {"timestamp": f"2024-01-01 00:{seconds // 60:02d}:{seconds % 60:02d}.{ms:03d}", "symbol": "EURUSD",
            "bid_price": f"{100 + index}.00", "ask_price": f"{100 + index}.50", **fields}


def body(value) -> bytes:
    return json.dumps(value).encode()


# --------------------------------------------------------------------------- token


@pytest.mark.parametrize(
    "header, ok",
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),  # the scheme is case-insensitive
        (f"  Bearer   {TOKEN}  ", True),
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        (f"Basic {TOKEN}", False),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Bearer {TOKEN.upper()}", False),
        ("Bearer s3cret-T0kén", False),  # non-ASCII: compared as bytes, no TypeError
        (TOKEN, False),
    ],
)
def test_token_matches(header, ok):
    assert token_matches(header, TOKEN) is ok


def test_token_is_compared_in_constant_time(monkeypatch):
    import transforms.sources.webhook as webhook

    seen = []

    def compare(a, b):
        seen.append((a, b))
        return a == b

    monkeypatch.setattr(webhook.hmac, "compare_digest", compare)
    assert token_matches(f"Bearer {TOKEN}", TOKEN)
    assert seen == [(TOKEN.encode(), TOKEN.encode())]


def test_authorize():
    assert POLICY.authorize(None) is None  # no token configured: anyone may post
    policy = WebhookPolicy(PRICES, token=TOKEN)
    assert policy.authorize(f"Bearer {TOKEN}") is None
    for header in (None, "Bearer nope"):
        verdict = policy.authorize(header)
        assert verdict.status == 401 and verdict.reason == "unauthorized"
        assert verdict.headers == {"WWW-Authenticate": "Bearer"}
        assert "token" in verdict.body["error"]


# --------------------------------------------------------------------------- body size


def test_content_length_over_the_limit_is_413():
    policy = WebhookPolicy(PRICES, max_body=100)
    assert policy.check_length(None) is None  # chunked: counted while reading
    assert policy.check_length(100) is None
    verdict = policy.check_length(101)
    assert verdict.status == 413 and verdict.reason == "body_too_large" and "100 bytes" in verdict.body["error"]
    assert policy.check_body(b" " * 101).status == 413


# --------------------------------------------------------------------------- body


def test_one_quote_object_is_accepted_with_exact_text():
    verdict = POLICY.check_body(b'{"timestamp": "2024-01-01T00:00:00Z", "symbol": "X", "bid": 1.10, "ask": 1.20, '
                                b'"latency": 5, "venue": "ignored"}')
    assert verdict.status == 202 and verdict.reason is None
    [(text, fields)] = verdict.quotes
    # Aliases become canonical names; numbers keep their exact text (1.10 stays 1.10).
    assert fields == {"timestamp": "2024-01-01T00:00:00Z", "symbol": "X", "bid_price": "1.10", "ask_price": "1.20",
                      "latency_ms": "5"}
    assert parse_frame(text)[1] == fields


def test_an_array_is_accepted_in_order():
    verdict = POLICY.check_body(body([quote(i) for i in range(5)]))
    assert verdict.status == 202
    assert [fields["bid_price"] for _, fields in verdict.quotes] == [f"{100 + i}.00" for i in range(5)]


def test_a_quote_without_symbol_gets_the_default_symbol():
    policy = WebhookPolicy(PRICES, default_symbol="DEFAULT")
    no_symbol = {k: v for k, v in QUOTE.items() if k != "symbol"}
    for item in (no_symbol, {**no_symbol, "symbol": None}):
        [(_, fields)] = policy.check_body(body(item)).quotes
        assert fields["symbol"] == "DEFAULT"
    # An empty symbol is a broken one, as in a CSV with a symbol column.
    verdict = policy.check_body(body({**QUOTE, "symbol": "  "}))
    assert verdict.status == 422 and verdict.body["field"] == "symbol"


@pytest.mark.parametrize(
    "data, reason, index",
    [
        pytest.param(b'{"timestamp": ', "bad_json", None, id="cut-short"),
        pytest.param(b"not json", "bad_json", None, id="not-json"),
        pytest.param(b"", "bad_json", None, id="empty-body"),
        pytest.param(b"\xff\xfe{}", "bad_json", None, id="not-utf8"),
        pytest.param(b'{"timestamp": "2024-01-01", "bid": NaN, "ask": 1}', "bad_json", None, id="nan"),
        pytest.param(b"[]", "bad_json", None, id="empty-array"),
        pytest.param(b'"a quote"', "not_an_object", 0, id="string"),
        pytest.param(b"42", "not_an_object", 0, id="number"),
        pytest.param(b"null", "not_an_object", 0, id="null"),
        pytest.param(body([QUOTE, [1, 2]]), "not_an_object", 1, id="array-in-array"),
        # Structure first: a non-object item is 400 even after a quote that breaks a rule.
        pytest.param(body([{**QUOTE, "bid_price": "-1"}, 7]), "not_an_object", 1, id="structure-before-rules"),
    ],
)
def test_invalid_json_or_non_object_is_400(data, reason, index):
    verdict = POLICY.check_body(data)
    assert verdict.status == 400, verdict
    assert verdict.reason == reason and verdict.quotes == ()
    assert verdict.body.get("index") == index
    assert verdict.body["error"]


@pytest.mark.parametrize(
    "change, code, field",
    [
        ({"timestamp": "yesterday"}, "bad_timestamp", "timestamp"),
        ({"timestamp": "2024-13-01 00:00:00"}, "bad_timestamp", "timestamp"),
        ({"timestamp": ""}, "missing_timestamp", "timestamp"),
        ({"timestamp": None}, "missing_timestamp", "timestamp"),
        ({"bid_price": "abc"}, "bad_price", "bid_price"),
        ({"bid_price": "-1"}, "non_positive_price", "bid_price"),
        ({"ask_price": 0}, "non_positive_price", "ask_price"),
        ({"ask_price": None}, "missing_price", "ask_price"),
        ({"bid_price": "1.000000000001"}, "price_precision", "bid_price"),
        ({"bid_price": "2", "ask_price": "1"}, "crossed_quote", "bid_price"),
        ({"bid_price": True}, "bad_field", "bid_price"),
        ({"ask": {"value": 1}}, "bad_field", "ask_price"),
        ({"latency_ms": "12.5001"}, "bad_latency", "latency_ms"),
        ({"latency_ms": -0.5}, "bad_latency", "latency_ms"),
        ({"latency": -1}, "bad_latency", "latency_ms"),
        ({"latency_ms": ""}, "missing_latency", "latency_ms"),
        ({"bid_size": "-3"}, "bad_size", "bid_size"),
        ({"tenant": "../etc"}, "bad_tenant", "tenant"),
        ({"eos": True}, "bad_field", None),
    ],
)
def test_a_quote_breaking_a_rule_is_422_naming_the_field(change, code, field):
    items = [quote(0), quote(1), {**quote(2), **change}, quote(3)]
    verdict = POLICY.check_body(body(items))
    assert verdict.status == 422, verdict
    assert verdict.reason == code
    assert verdict.body["index"] == 2
    assert verdict.body["field"] == field
    assert verdict.body["error"].startswith(f"{code}: ")
    assert verdict.quotes == ()  # all or nothing


def test_check_quote_raises_the_first_broken_rule():
    text, fields = check_quote({"timestamp": "2024-01-01 00:00:00", "bid": "1", "ask": 2}, PRICES, "SYM")
    assert fields == {"timestamp": "2024-01-01 00:00:00", "bid_price": "1", "ask_price": "2", "symbol": "SYM"}
    with pytest.raises(Rejected) as broken:  # the timestamp is checked before the prices, as normalize does
        check_quote({"timestamp": "x", "bid": "-1", "ask": "2"}, PRICES, "SYM")
    assert broken.value.code == "bad_timestamp"


def test_field_of():
    assert field_of("bad_timestamp: timestamp 'x' is not ...") == "timestamp"
    assert field_of("bad_field: bid is a bool, not a string or number") == "bid_price"
    assert field_of("crossed_quote: bid 2 is above ask 1") == "bid_price"
    assert field_of("bad_json: whatever") is None


#: Quotes on both sides of every rule: the webhook accepts exactly those the normalize stage keeps.
EDGE_CASES = [
    QUOTE,
    {**QUOTE, "timestamp": "2024-01-01T00:00:00.123456+02:00"},
    {**QUOTE, "timestamp": "2024-01-01 00:00:00.1234567"},
    {**QUOTE, "timestamp": "2024-01-01"},
    {**QUOTE, "timestamp": " 2024-01-01 00:00:00 "},
    {**QUOTE, "bid_price": "1e2", "ask_price": "1E3"},
    {**QUOTE, "bid_price": "0.00000001"},
    {**QUOTE, "bid_price": "0.000000001"},
    {**QUOTE, "bid_price": "1.10000000000"},
    {**QUOTE, "bid_price": " 1.1 "},
    {**QUOTE, "ask_price": "Infinity"},
    {**QUOTE, "ask_price": "1" * 11},
    {**QUOTE, "bid_price": "1.2"},
    {**QUOTE, "bid_price": "1.3"},
    {**QUOTE, "bid_size": "0", "ask_size": "1e3"},
    {**QUOTE, "bid_size": "nan"},
    {**QUOTE, "ask_size": ""},
    {**QUOTE, "latency_ms": "12.0"},
    {**QUOTE, "latency_ms": "1e3"},
    {**QUOTE, "latency_ms": "999999999999999"},
    {**QUOTE, "tenant": "acme-1.eu"},
    {**QUOTE, "tenant": ""},
    {**QUOTE, "tenant": "-x"},
    {**QUOTE, "symbol": ""},
    {**QUOTE, "symbol": 7},
    {k: v for k, v in QUOTE.items() if k != "symbol"},
]


def test_the_rules_are_the_normalize_stages():
    for item in EDGE_CASES:
        text = json.dumps(item)
        _, fields, _, _ = parse_frame(text)
        fields.setdefault("symbol", "UNKNOWN")
        message = read_message(text, 0)
        batch = frames_to_batch([type(message)(0, text, fields, message.reason)])
        valid, dead = normalize_batch(batch, PRICES)
        verdict = POLICY.check_body(text.encode())
        if valid.num_rows:
            assert verdict.status == 202, (item, verdict)
        else:
            assert verdict.status == 422, (item, verdict)
            assert verdict.body["error"] == dead.column("reject")[0].as_py(), item


# --------------------------------------------------------------------------- admit


def test_admit_numbers_bodies_in_order():
    inbox = WebhookInbox(10)
    first = admit(inbox, POLICY.check_body(body([quote(0), quote(1), quote(2)])))
    second = admit(inbox, POLICY.check_body(body(quote(3))))
    assert (first.status, first.body) == (202, {"accepted": 3, "seq": [0, 2]})
    assert (second.status, second.body) == (202, {"accepted": 1, "seq": [3, 3]})
    assert [m.seq for m in inbox.take(0, 100)] == [0, 1, 2, 3]
    assert inbox.stats()["webhook_quotes_accepted"] == 4


def test_admit_a_body_the_buffer_cannot_take_now_is_429_and_takes_nothing():
    inbox = WebhookInbox(4)
    assert admit(inbox, POLICY.check_body(body([quote(0), quote(1), quote(2)]))).status == 202
    verdict = admit(inbox, POLICY.check_body(body([quote(3), quote(4)])))
    assert verdict.status == 429 and verdict.reason == "buffer_full"
    assert verdict.headers == {"Retry-After": "1"}
    assert len(inbox) == 3
    assert admit(inbox, POLICY.check_body(body(quote(3)))).body == {"accepted": 1, "seq": [3, 3]}


def test_admit_more_quotes_than_the_buffer_ever_holds_is_413():
    verdict = admit(WebhookInbox(2), POLICY.check_body(body([quote(i) for i in range(3)])))
    assert verdict.status == 413 and verdict.reason == "too_many_quotes"


def test_admit_after_close_is_503():
    inbox = WebhookInbox(10)
    inbox.close()
    verdict = admit(inbox, POLICY.check_body(body(quote(0))))
    assert verdict.status == 503 and verdict.reason == "stopping"


def test_admit_passes_refusals_through():
    refusal = Verdict(400, {"error": "x"}, "bad_json")
    inbox = WebhookInbox(1)
    assert admit(inbox, refusal) is refusal
    assert len(inbox) == 0


# --------------------------------------------------------------------------- inbox


def checked(*indices: int) -> list[tuple[str, dict]]:
    return list(POLICY.check_body(body([quote(i) for i in indices])).quotes)


def test_inbox_keeps_quotes_until_the_reader_moves_past_them():
    inbox = WebhookInbox(10)
    inbox.offer(checked(0, 1, 2, 3, 4))
    assert [m.seq for m in inbox.take(0, 2)] == [0, 1]
    assert [m.seq for m in inbox.take(0, 2)] == [0, 1]  # not consumed: a resumed reader gets them again
    assert [m.seq for m in inbox.take(2, 10)] == [2, 3, 4]
    assert len(inbox) == 3
    assert inbox.take(5, 10) == [] and len(inbox) == 0


def test_inbox_is_bounded_and_all_or_nothing():
    inbox = WebhookInbox(3)
    inbox.offer(checked(0, 1))
    with pytest.raises(InboxFull):
        inbox.offer(checked(2, 3))
    assert inbox.offer(checked(2)) == (2, 2)
    inbox.close()
    with pytest.raises(InboxClosed):
        inbox.offer(checked(3))
    assert [m.seq for m in inbox.take(0, 10)] == [0, 1, 2]  # what was accepted can still be read


def test_inbox_take_waits_for_an_offer_and_close_wakes_it():
    inbox = WebhookInbox(10)
    got: list = []
    reader = threading.Thread(target=lambda: got.append(inbox.take(0, 10, timeout=30)))
    started = time.monotonic()
    reader.start()
    inbox.offer(checked(0))
    reader.join(10)
    assert [m.seq for m in got[0]] == [0] and time.monotonic() - started < 10
    closer = threading.Thread(target=lambda: got.append(inbox.take(1, 10, timeout=30)))
    started = time.monotonic()
    closer.start()
    inbox.close()
    closer.join(10)
    assert got[1] == [] and time.monotonic() - started < 10


def test_inbox_rejects_a_capacity_below_one():
    with pytest.raises(ValueError):
        WebhookInbox(0)


# --------------------------------------------------------------------------- feed


@contextmanager
def registered(capacity: int = 100, name: str = "test-run") -> Iterator[WebhookInbox]:
    with registered_inbox(name, WebhookInbox(capacity)) as inbox:
        yield inbox


def stop_when(event: threading.Event):
    return event.is_set


def test_feed_yields_what_is_waiting_then_drains_on_stop():
    stop = threading.Event()
    with registered() as inbox:
        inbox.offer(checked(0, 1, 2))
        inbox.offer(checked(3, 4))
        feed = WebhookFeed("test-run", source=endpoint_url(8080), max_rows=4)
        blocks: list[FeedBlock] = []
        for block in feed.blocks(0, stop_when(stop)):
            blocks.append(block)
            if len(blocks) == 1:
                inbox.offer(checked(5))
                stop.set()  # stop after the first block: what was accepted is still read
        assert inbox.closed
        with pytest.raises(InboxClosed):
            inbox.offer(checked(6))
    assert [(b.start, b.stop) for b in blocks] == [(0, 4), (4, 6)]
    assert all(b.sources == ("http://127.0.0.1:8080/webhook",) for b in blocks)
    batch = blocks[0].batch
    assert batch.schema == BLOCK_SCHEMA
    assert batch.column("line").to_pylist() == [0, 1, 2, 3]
    assert batch.column("bid_price").to_pylist() == ["100.00", "101.00", "102.00", "103.00"]
    assert set(batch.column("mode").to_pylist()) == {LIVE}
    assert batch.column("reject").null_count == 4
    # Arrival never goes back, across blocks too.
    arrivals = [a for b in blocks for a in b.batch.column("arrival_us").to_pylist()]
    assert arrivals == sorted(arrivals)
    stats = feed.stats()
    assert stats["records_in"] == 6 and stats["webhook_quotes_accepted"] == 6


def test_feed_resumed_at_a_position_neither_repeats_nor_skips():
    with registered() as inbox:
        inbox.offer(checked(*range(6)))
        first = WebhookFeed("test-run", max_rows=2).blocks(0)
        block = next(first)
        assert (block.start, block.stop) == (0, 2)
        first.close()  # a checkpoint: this block was not processed
        stop = threading.Event()
        stop.set()
        again = list(WebhookFeed("test-run", max_rows=2).blocks(block.start, stop.is_set))
    assert [(b.start, b.stop) for b in again] == [(0, 2), (2, 4), (4, 6)]


def test_feed_without_a_registered_inbox_says_so():
    with pytest.raises(WebhookError, match="no webhook inbox named 'nowhere'"):
        WebhookFeed("nowhere").blocks(0)


def test_an_inbox_name_is_registered_once():
    with registered(name="twice"):
        with pytest.raises(WebhookError):
            with registered(name="twice"):
                pass
    with registered(name="twice"):  # free again after the first left
        pass


def test_nothing_accepted_is_lost_when_the_feed_stops_under_load():
    stop = threading.Event()
    answers: list[Verdict] = []
    with registered(capacity=50) as inbox:
        def post():
            index = 0
            while True:
                verdict = admit(inbox, POLICY.check_body(body([quote(index), quote(index + 1)])))
                answers.append(verdict)
                if verdict.status == 503:
                    return
                if verdict.status == 429:
                    time.sleep(0.001)  # back off, as Retry-After asks (not a synchronisation)
                    continue
                index += 2

        poster = threading.Thread(target=post)
        poster.start()
        feed = WebhookFeed("test-run", max_rows=7, poll_seconds=0.01)
        seqs = []
        for block in feed.blocks(0, stop.is_set):
            seqs.extend(block.batch.column("line").to_pylist())
            if len(seqs) >= 200:
                stop.set()
        poster.join(10)
    accepted = [seq for v in answers if v.status == 202 for seq in range(v.body["seq"][0], v.body["seq"][1] + 1)]
    assert len(accepted) >= 200
    assert seqs == accepted == list(range(len(accepted)))
    assert answers[-1].status == 503
    assert {v.status for v in answers} <= {202, 429, 503}


# --------------------------------------------------------------------------- server, over HTTP


@pytest.fixture
def server():
    """A server with a token, a 2 KB body limit and room for 5 quotes, serving on a free port."""
    with WebhookServer(WebhookInbox(5), WebhookPolicy(PRICES, token=TOKEN, max_body=2048), 0) as running:
        yield running


def call(server: WebhookServer, method: str, path: str, data: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(server.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def post(server: WebhookServer, value, token: str | None = TOKEN) -> tuple[int, dict, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = value if isinstance(value, bytes) else body(value)
    status, response_headers, text = call(server, "POST", "/webhook", data, headers)
    return status, response_headers, json.loads(text)


def metric_samples(server: WebhookServer) -> dict:
    status, headers, text = call(server, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text.decode()) for sample in family.samples}


def test_server_binds_127_0_0_1_at_once(server):
    assert server.url == f"http://127.0.0.1:{server.port}" and server.port > 0


def test_server_port_in_use_fails_when_made():
    with WebhookServer(WebhookInbox(1), POLICY, 0) as taken:
        with pytest.raises(OSError):
            WebhookServer(WebhookInbox(1), POLICY, taken.port)


def test_post_202(server):
    status, _, answer = post(server, [quote(0), quote(1)])
    assert (status, answer) == (202, {"accepted": 2, "seq": [0, 1]})
    status, _, answer = post(server, quote(2))
    assert (status, answer) == (202, {"accepted": 1, "seq": [2, 2]})
    assert [m.fields["bid_price"] for m in server.inbox.take(0, 10)] == ["100.00", "101.00", "102.00"]


def test_post_400_invalid_json(server):
    status, _, answer = post(server, b'{"timestamp": "2024-')
    assert status == 400 and "invalid JSON" in answer["error"]
    status, _, answer = post(server, [quote(0), "no"])
    assert (status, answer["index"]) == (400, 1)
    assert len(server.inbox) == 0


def test_post_401_missing_or_wrong_token(server):
    for token in (None, "wrong"):
        status, headers, answer = post(server, quote(0), token=token)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and "token" in answer["error"]
    assert len(server.inbox) == 0


def test_post_413_body_over_the_limit(server):
    big = body([quote(0, venue="x" * 3000)])
    status, _, answer = post(server, big)  # Content-Length says so: refused before reading
    assert status == 413 and "2048 bytes" in answer["error"]
    # Without Content-Length (chunked), the bytes actually read count.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("POST", "/webhook", body=iter([big[:1000], big[1000:]]),
                           headers={"Authorization": f"Bearer {TOKEN}"}, encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413 and "2048 bytes" in json.loads(response.read())["error"]
    finally:
        connection.close()
    status, _, answer = post(server, [quote(i) for i in range(6)])  # small body, more quotes than the buffer
    assert status == 413 and "buffer" in answer["error"]
    assert len(server.inbox) == 0


def test_post_422_names_the_quote_and_field(server):
    status, _, answer = post(server, [quote(0), quote(1, bid_price="-5")])
    assert status == 422
    assert answer == {"error": "non_positive_price: bid_price '-5' is not positive", "index": 1, "field": "bid_price"}
    assert len(server.inbox) == 0


def test_post_429_when_the_buffer_is_full(server):
    assert post(server, [quote(i) for i in range(4)])[0] == 202
    status, headers, answer = post(server, [quote(4), quote(5)])
    assert status == 429 and headers["Retry-After"] == "1" and "buffer" in answer["error"]
    server.inbox.take(4, 10)  # the pipeline read the first four
    assert post(server, [quote(4), quote(5)])[2] == {"accepted": 2, "seq": [4, 5]}


def test_post_503_and_healthz_once_the_run_stops(server):
    assert call(server, "GET", "/healthz")[0] == 200
    server.inbox.close()
    assert post(server, quote(0))[0] == 503
    status, _, text = call(server, "GET", "/healthz")
    assert status == 503 and json.loads(text) == {"status": "stopping", "buffered": 0}


def test_healthz(server):
    post(server, [quote(0), quote(1)])
    status, headers, text = call(server, "GET", "/healthz")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(text) == {"status": "ok", "buffered": 2}


def test_wrong_method_405_and_unknown_path_404(server):
    status, headers, text = call(server, "GET", "/webhook")
    assert status == 405 and "POST" in headers["Allow"] and "error" in json.loads(text)
    assert call(server, "POST", "/healthz", b"{}")[0] == 405
    assert call(server, "PUT", "/metrics", b"")[0] == 405
    status, _, text = call(server, "GET", "/nowhere")
    assert status == 404 and "POST /webhook" in json.loads(text)["error"]
    assert call(server, "POST", "/webhook/extra", body(quote(0)))[0] == 404


def test_metrics_are_prometheus_text(server):
    post(server, [quote(0), quote(1), quote(2)])
    post(server, quote(3), token=None)
    post(server, quote(4, timestamp="soon"))
    post(server, b"{")
    call(server, "GET", "/nowhere")
    samples = metric_samples(server)
    assert samples[("webhook_requests_total", (("path", "/webhook"), ("status", "202")))] == 1
    assert samples[("webhook_requests_total", (("path", "/webhook"), ("status", "401")))] == 1
    assert samples[("webhook_requests_total", (("path", "/webhook"), ("status", "422")))] == 1
    assert samples[("webhook_requests_total", (("path", "/webhook"), ("status", "400")))] == 1
    assert samples[("webhook_requests_total", (("path", "other"), ("status", "404")))] == 1
    assert samples[("webhook_quotes_accepted_total", ())] == 3
    assert samples[("webhook_rejected_requests_total", (("reason", "unauthorized"),))] == 1
    assert samples[("webhook_rejected_requests_total", (("reason", "bad_timestamp"),))] == 1
    assert samples[("webhook_rejected_requests_total", (("reason", "bad_json"),))] == 1
    assert samples[("webhook_buffer_quotes", ())] == 3
    assert samples[("webhook_buffer_capacity", ())] == 5
    # The metrics endpoint counts itself too (the first scrape is counted once answered).
    assert metric_samples(server)[("webhook_requests_total", (("path", "/metrics"), ("status", "200")))] == 1
    assert server.inbox.stats() == {"webhook_quotes_accepted": 3, "webhook_requests_accepted": 1,
                                    "webhook_requests_rejected": {"400": 1, "401": 1, "422": 1}}


def test_each_server_has_its_own_registry():
    with WebhookServer(WebhookInbox(3), POLICY, 0) as one, WebhookServer(WebhookInbox(7), POLICY, 0) as two:
        post(one, quote(0), token=None)
        assert metric_samples(one)[("webhook_quotes_accepted_total", ())] == 1
        assert metric_samples(two)[("webhook_quotes_accepted_total", ())] == 0
        assert metric_samples(two)[("webhook_buffer_capacity", ())] == 7


def test_server_close_frees_the_port():
    server = WebhookServer(WebhookInbox(1), POLICY, 0)
    with server:
        assert call(server, "GET", "/healthz")[0] == 200
    with WebhookServer(WebhookInbox(1), POLICY, server.port) as again:
        assert call(again, "GET", "/healthz")[0] == 200
    WebhookServer(WebhookInbox(1), POLICY, 0).close()  # never started: closing just frees the port
