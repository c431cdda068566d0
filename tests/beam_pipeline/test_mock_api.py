"""The bundled mock APIs (beam_pipeline.devtools.mock_api): pure decisions without sockets, then real servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from beam_pipeline.devtools.mock_api import (
    DEFECTS,
    PATHS,
    SHAPES,
    BackgroundServer,
    MockDownstreamApi,
    MockProductApi,
    WindowLimiter,
    build_parser,
    downstream_failure,
    failure_status,
    item_defect,
    main,
    make_catalogue,
    make_item,
    max_requests_in_window,
    start_product_apis,
)

REPO = Path(__file__).resolve().parents[2]
QUIET = {"failure_rate": 0.0, "rate_limit": None, "delay": 0.0, "malformed_rate": 0.0}


def fetch(url: str, *, timeout: float = 5.0, method: str = "GET", body: Any = None,
          headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any, Any]:
    """(status, headers, parsed JSON body) of a request, for any status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, json.loads(exc.read())


def well_formed(shape: str, item: Any) -> bool:
    """An independent check of an item against its shape's documented format."""
    if not isinstance(item, dict):
        return False
    if shape == "cursor":
        price = item.get("price")
        return (isinstance(item.get("id"), int) and isinstance(item.get("title"), str) and item["title"] != ""
                and isinstance(price, (int, float)) and not isinstance(price, bool) and price >= 0)
    if shape == "offset":
        try:
            amount = float(item["pricing"]["amount"])
        except (KeyError, TypeError, ValueError):
            return False
        return (isinstance(item.get("sku"), str) and isinstance(item.get("name"), str) and item["name"] != ""
                and amount >= 0 and item["pricing"]["currency"] == "USD" and isinstance(item["category"]["name"], str))
    price = item.get("price_cents")
    return (isinstance(item.get("productId"), str) and isinstance(item.get("label"), str) and item["label"] != ""
            and isinstance(price, int) and price >= 0)


def item_number(shape: str, item: dict[str, Any]) -> int:
    """The item's number, from its id or (a defect removes one field at most) from its title."""
    id_field, prefix, title_field = {"cursor": ("id", "", "title"), "offset": ("sku", "MK-", "name"),
                                     "pages": ("productId", "s-", "label")}[shape]
    if id_field in item:
        return int(str(item[id_field]).removeprefix(prefix))
    return int(item[title_field].rsplit(" ", 1)[1])


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_max_requests_in_window_counts_half_open_intervals():
    assert max_requests_in_window([]) == 0
    assert max_requests_in_window([5.0]) == 1
    assert max_requests_in_window([0.0, 0.5, 0.999]) == 3
    assert max_requests_in_window([0.0, 0.5, 1.0]) == 2  # [0, 1) excludes 1.0
    assert max_requests_in_window([3.0, 0.1, 2.0, 0.2, 0.3, 2.5]) == 3  # unsorted input
    assert max_requests_in_window([0.0, 0.1, 0.2], window=0.15) == 2


def test_window_limiter_with_an_injected_clock():
    now = [100.0]
    limiter = WindowLimiter(3, 1.0, clock=lambda: now[0])
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    now[0] = 100.5
    assert not limiter.try_acquire()  # refusals are not counted, the window is still full
    assert limiter.in_window() == 3
    now[0] = 100.999
    assert not limiter.try_acquire()
    now[0] = 101.0  # the three admitted at 100.0 left the window (now - 1, now]
    assert limiter.try_acquire() and limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()
    assert limiter.try_acquire(now=102.5)  # an explicit time
    with pytest.raises(ValueError):
        WindowLimiter(0)


def test_window_limiter_never_admits_more_than_the_limit_in_any_window():
    now = [0.0]
    limiter = WindowLimiter(5, 1.0, clock=lambda: now[0])
    admitted = []
    for step in range(3000):  # a request every 7 ms for 21 s
        now[0] = step * 0.007
        if limiter.try_acquire():
            admitted.append(now[0])
    assert max_requests_in_window(admitted) == 5
    assert 5 * 20 <= len(admitted) <= 5 * 22  # and it does admit at the limit


def test_failure_decisions_are_deterministic_and_at_the_configured_rate():
    keys = [f"page={n}" for n in range(1, 2001)]
    outcomes = [failure_status(3, "cursor", key, attempt, 0.2, 0.5) for key in keys for attempt in (0, 1)]
    again = [failure_status(3, "cursor", key, attempt, 0.2, 0.5) for key in keys for attempt in (0, 1)]
    assert outcomes == again
    counts = Counter(outcomes)
    assert set(counts) == {200, 500, 503, 504}
    failures = len(outcomes) - counts[200]
    assert 0.17 < failures / len(outcomes) < 0.23
    assert 0.42 < counts[504] / failures < 0.58  # timeout_share of the failures stall
    assert 0.35 < counts[500] / (counts[500] + counts[503]) < 0.65
    # the decision depends on the seed, the shape and the attempt, not only on the key
    assert outcomes != [failure_status(4, "cursor", key, attempt, 0.2, 0.5) for key in keys for attempt in (0, 1)]
    assert outcomes != [failure_status(3, "offset", key, attempt, 0.2, 0.5) for key in keys for attempt in (0, 1)]
    assert [failure_status(3, "cursor", k, 0, 0.2, 0.5) for k in keys] != [
        failure_status(3, "cursor", k, 1, 0.2, 0.5) for k in keys]


def test_failure_rate_one_always_fails_and_zero_never_does():
    keys = [f"offset={n}" for n in range(0, 3000, 3)]
    assert all(failure_status(0, "offset", k, 0, 1.0, 0.0) in (500, 503) for k in keys)
    assert all(failure_status(0, "offset", k, 0, 1.0, 1.0) == 504 for k in keys)
    assert all(failure_status(0, "offset", k, 0, 0.0, 1.0) == 200 for k in keys)


def test_downstream_failures_are_deterministic_and_split_before_and_after():
    fates = [downstream_failure(0, n, 0.15) for n in range(4000)]
    assert fates == [downstream_failure(0, n, 0.15) for n in range(4000)]
    counts = Counter(fates)
    assert 0.12 < (counts["before"] + counts["after"]) / 4000 < 0.18
    assert 0.35 < counts["before"] / (counts["before"] + counts["after"]) < 0.65
    assert all(downstream_failure(0, n, 1.0) in ("before", "after") for n in range(100))
    assert all(downstream_failure(0, n, 0.0) is None for n in range(100))


@pytest.mark.parametrize("shape", SHAPES)
def test_malformed_items_are_the_reported_ones_and_are_malformed(shape):
    items, malformed = make_catalogue(5, shape, 400, 0.3)
    assert 0.22 < len(malformed) / 400 < 0.38
    assert malformed == [i for i in range(400) if item_defect(5, shape, i, 0.3) is not None]
    for index, item in enumerate(items):
        assert well_formed(shape, item) == (index not in malformed), (index, item)
    kinds = Counter(item_defect(5, shape, i, 0.3) for i in malformed)
    assert set(kinds) == set(DEFECTS)
    strings = [items[i] for i in malformed if item_defect(5, shape, i, 0.3) == "not_object"]
    assert all(isinstance(s, str) and well_formed(shape, json.loads(s)) for s in strings)  # double-encoded
    assert make_catalogue(5, shape, 400, 0.3) == (items, malformed)  # deterministic
    assert make_catalogue(6, shape, 400, 0.3)[0] != items


def test_good_items_have_the_documented_formats():
    assert make_item(0, "cursor", 16).keys() == {"id", "title", "price", "category"}
    cursor = make_item(0, "cursor", 16)
    assert cursor["id"] == 17 and cursor["title"] == "Catalog item 17" and isinstance(cursor["price"], float)
    assert round(cursor["price"], 2) == cursor["price"] and 1 <= cursor["price"] < 500
    offset = make_item(0, "offset", 16)
    assert offset["sku"] == "MK-00017" and offset["name"] == "Market item 17"
    assert offset["pricing"]["currency"] == "USD" and len(offset["pricing"]["amount"].split(".")[1]) == 2
    pages = make_item(0, "pages", 16)
    assert pages["productId"] == "s-17" and pages["label"] == "Shop item 17" and isinstance(pages["price_cents"], int)
    categories = {make_item(0, "cursor", i)["category"] for i in range(300)}
    assert 4 <= len(categories) <= 8


# ---------------------------------------------------------------------------------------------
# Product APIs over HTTP


def walk(shape: str, url: str) -> list[Any]:
    """Every item of an API, page by page, as a client would."""
    items: list[Any] = []
    if shape == "cursor":
        next_url: str | None = url
        pages = 0
        while next_url:
            status, _, body = fetch(next_url)
            assert status == 200
            pages += 1
            assert body["page"] == pages
            items += body["items"]
            if body["next"] is not None:
                assert body["next"] == f"{PATHS['cursor']}?page={pages + 1}"  # relative
            next_url = urljoin(url, body["next"]) if body["next"] else None
    elif shape == "offset":
        offset = 0
        while True:
            status, _, body = fetch(f"{url}?offset={offset}&limit=10")
            assert status == 200 and body["paging"]["offset"] == offset and body["paging"]["limit"] == 10
            items += body["data"]
            offset += len(body["data"])
            if offset >= body["paging"]["total"]:
                break
    else:
        page = 1
        while True:
            status, headers, body = fetch(f"{url}?page={page}&per_page=9")
            assert status == 200 and headers["X-Per-Page"] == "9"
            items += body
            if page * 9 >= int(headers["X-Total-Count"]):
                break
            page += 1
    return items


@pytest.mark.parametrize("shape", SHAPES)
def test_pagination_covers_every_product_exactly_once(shape):
    with MockProductApi(shape, products=53, page_size=7, failure_rate=0.0, rate_limit=None, delay=0.0,
                        malformed_rate=0.1, seed=2) as api:
        assert api.url == f"http://127.0.0.1:{api.port}{PATHS[shape]}"
        items = walk(shape, api.url)
        assert items == api.catalogue()
        numbers = [item_number(shape, item if isinstance(item, dict) else json.loads(item)) for item in items]
        assert numbers == list(range(1, 54))
        assert api.malformed_indexes() == [i for i, item in enumerate(items) if not well_formed(shape, item)]
        assert api.malformed_indexes()  # the rate is high enough for some
        assert all(r.status == 200 for r in api.requests())


def test_page_shapes_defaults_headers_caps_and_past_the_end():
    with start_product_apis(products=45, page_size=20, **QUIET) as (cursor, offset, pages):
        status, _, body = fetch(cursor.url)
        assert status == 200 and body["page"] == 1 and len(body["items"]) == 20
        assert body["next"] == "/catalog/products?page=2"
        assert fetch(cursor.url + "?page=3")[2]["next"] is None and len(fetch(cursor.url + "?page=3")[2]["items"]) == 5
        assert fetch(cursor.url + "?page=9")[2] == {"page": 9, "items": [], "next": None}

        status, _, body = fetch(offset.url)
        assert body["paging"] == {"offset": 0, "limit": 20, "total": 45} and len(body["data"]) == 20
        assert fetch(offset.url + "?limit=500")[2]["paging"]["limit"] == 50  # capped
        assert fetch(offset.url + "?offset=45")[2] == {"data": [], "paging": {"offset": 45, "limit": 20, "total": 45}}

        status, headers, body = fetch(pages.url)
        assert status == 200 and len(body) == 20 and isinstance(body, list)
        assert headers["X-Total-Count"] == "45" and headers["X-Per-Page"] == "20"
        assert headers["Content-Type"].startswith("application/json")
        status, headers, body = fetch(pages.url + "?page=99&per_page=80")
        assert status == 200 and body == [] and headers["X-Per-Page"] == "50"
        assert [r.key for r in pages.requests()] == ["page=1", "page=99"]


@pytest.mark.parametrize("shape,query", [
    ("cursor", "page=0"), ("cursor", "page=abc"), ("cursor", "page=-1"), ("cursor", "page=1&page=2"),
    ("offset", "offset=-5"), ("offset", "offset=x"), ("offset", "limit=0"), ("offset", "limit=1.5"),
    ("pages", "page=0"), ("pages", "per_page=0"), ("pages", "per_page=ten"),
])
def test_bad_query_values_answer_400_json(shape, query):
    with MockProductApi(shape, **QUIET) as api:
        status, headers, body = fetch(f"{api.url}?{query}")
        assert status == 400
        assert isinstance(body["error"], str) and body["error"]
        assert api.requests()[0].status == 400 and api.requests()[0].query == query


def test_injected_failures_over_http_do_not_depend_on_request_order():
    config = {"products": 200, "page_size": 10, "failure_rate": 0.5, "timeout_share": 0.0, "rate_limit": None,
              "delay": 0.0, "seed": 7}
    keys = list(range(1, 21))

    def outcomes(order: list[int]) -> dict[tuple[int, int], int]:
        seen: Counter[int] = Counter()
        result = {}
        with MockProductApi("cursor", **config) as api:
            for page in order:
                result[(page, seen[page])] = fetch(f"{api.url}?page={page}")[0]
                seen[page] += 1
        return result

    forward = outcomes([p for p in keys for _ in range(3)])
    backward = outcomes(list(reversed(keys)) * 3)
    assert forward == backward
    assert forward == {(p, n): failure_status(7, "cursor", f"page={p}", n, 0.5, 0.0) for p in keys for n in range(3)}
    assert set(forward.values()) == {200, 500, 503}


def test_failure_rate_one_always_fails_with_a_json_error():
    with MockProductApi("pages", failure_rate=1.0, timeout_share=0.0, rate_limit=None, delay=0.0) as api:
        for page in (1, 1, 2, 3, 1):
            status, _, body = fetch(f"{api.url}?page={page}")
            assert status in (500, 503) and "error" in body
        assert [r.key for r in api.requests()] == ["page=1", "page=1", "page=2", "page=3", "page=1"]


def test_start_product_apis_shares_config_with_per_shape_overrides():
    with start_product_apis(overrides={"offset": {"failure_rate": 1.0, "timeout_share": 0.0}}, **QUIET) as servers:
        assert [s.shape for s in servers] == list(SHAPES)
        assert len({s.port for s in servers}) == 3
        assert [fetch(s.url)[0] for s in servers for _ in range(3)] in (
            [200] * 3 + [a, b, c] + [200] * 3 for a in (500, 503) for b in (500, 503) for c in (500, 503))
        assert servers[0].failure_rate == 0.0 and servers[1].failure_rate == 1.0
    assert not any(s.running for s in servers)
    with pytest.raises(ValueError):
        with start_product_apis(overrides={"graphql": {}}):
            pass


def test_rate_limit_answers_429_and_admits_at_most_the_limit_per_sliding_second():
    with MockProductApi("cursor", rate_limit=5, failure_rate=0.0, delay=0.0, malformed_rate=0.0) as api:
        results: list[tuple[int, Any]] = []
        lock = threading.Lock()
        deadline = time.monotonic() + 1.3

        def hammer() -> None:
            while time.monotonic() < deadline:
                status, headers, body = fetch(api.url)
                with lock:
                    results.append((status, headers, body))

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rejected = [(h, b) for s, h, b in results if s == 429]
        assert rejected, "hammering above the limit must be refused"
        assert all(h["Retry-After"] == "1" and "error" in b for h, b in rejected)
        assert {s for s, _, _ in results} == {200, 429}
        log = api.requests()
        assert len(log) == len(results)  # 429s are logged too
        admitted = [r.at for r in log if r.status != 429]
        assert max_requests_in_window(admitted) <= 5
        assert len(admitted) >= 6  # the window slides: more are admitted after a second


def test_a_stall_outlasts_a_short_client_timeout_then_answers_504():
    with MockProductApi("offset", failure_rate=1.0, timeout_share=1.0, stall_seconds=0.5, rate_limit=None) as api:
        started = time.monotonic()
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            fetch(api.url, timeout=0.2)
        assert time.monotonic() - started < 0.45
        assert [(r.status, r.key) for r in api.requests()] == [(504, "offset=0")]  # logged when the stall begins
        started = time.monotonic()
        status, _, body = fetch(api.url, timeout=3)
        assert status == 504 and "error" in body
        assert time.monotonic() - started >= 0.45


def test_stop_returns_promptly_with_a_stalled_handler():
    api = MockProductApi("cursor", failure_rate=1.0, timeout_share=1.0, stall_seconds=30.0, rate_limit=None)
    api.start()
    outcome: list[Any] = []

    def client() -> None:
        try:
            outcome.append(fetch(api.url, timeout=20))
        except Exception as exc:  # noqa: BLE001 (the connection is closed under it)
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 5
    while not api.requests() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api.requests()[0].status == 504
    started = time.monotonic()
    api.stop()
    assert time.monotonic() - started < 2.0
    assert not api.running
    thread.join(5)
    assert not thread.is_alive() and isinstance(outcome[0], Exception)
    api.stop()  # idempotent
    with pytest.raises(RuntimeError):
        api.start()  # a server starts once


def test_background_server_runs_any_app_and_reports_bind_errors():
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": request.query.get("name", "")})

    app = web.Application()
    app.router.add_get("/hi", hello)
    with BackgroundServer(app, path="/hi") as server:
        assert fetch(server.url + "?name=x")[2] == {"hello": "x"}
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nope", timeout=5)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            exc.close()
        log = server.requests()
        assert [(r.method, r.path, r.query, r.status, r.key) for r in log] == [
            ("GET", "/hi", "name=x", 200, ""), ("GET", "/nope", "", 404, "")]
        assert log[0].at < log[1].at
        log.clear()
        assert len(server.requests()) == 2  # a copy
        with pytest.raises(OSError):
            MockProductApi("cursor", port=server.port).start()  # the port is taken


# ---------------------------------------------------------------------------------------------
# Downstream API


def post_url(url: str, records: Any, batch: str = "") -> tuple[int, Any, Any]:
    headers = {"Idempotency-Key": batch} if batch else {}
    return fetch(url, method="POST", body={"records": records}, headers=headers)


def post(api: MockDownstreamApi, records: Any, batch: str = "") -> tuple[int, Any, Any]:
    return post_url(api.url, records, batch)


def test_downstream_accepts_deduplicates_and_rejects():
    with MockDownstreamApi(rate_limit=None, failure_rate=0.0, delay=0.0) as api:
        assert api.url.endswith("/records")
        status, _, body = post(api, [
            {"key": "a", "data": {"n": 1}},
            {"key": "b", "data": {"n": 2}},
            {"key": "a", "data": {"n": 3}},  # the same key in the same batch
            {"key": "", "data": {}},
            {"key": "c", "data": [1]},
            "not an object",
            {"data": {"n": 4}},
        ], batch="batch-1")
        assert status == 200
        statuses = [(r["key"], r["status"]) for r in body["results"]]
        assert statuses == [("a", "accepted"), ("b", "accepted"), ("a", "duplicate"), ("", "rejected"),
                            ("c", "rejected"), (None, "rejected"), (None, "rejected")]
        assert all(r["reason"] for r in body["results"] if r["status"] == "rejected")
        status, _, body = post(api, [{"key": "b", "data": {"n": 9}}, {"key": "c", "data": {"n": 5}}], batch="batch-2")
        assert [r["status"] for r in body["results"]] == ["duplicate", "accepted"]

        assert api.accepted() == [("a", {"n": 1}), ("b", {"n": 2}), ("c", {"n": 5})]
        status, _, records = fetch(api.url)
        assert status == 200 and records == [{"key": "a", "data": {"n": 1}}, {"key": "b", "data": {"n": 2}},
                                             {"key": "c", "data": {"n": 5}}]
        status, _, stats = fetch(api.url.removesuffix("/records") + "/stats")
        assert stats == api.stats() == {"accepted": 3, "duplicates": 2, "rejected": 4, "requests": 2,
                                        "rate_limited": 0, "failed_before_apply": 0, "failed_after_apply": 0}
        assert [r.key for r in api.requests() if r.method == "POST"] == ["batch-1", "batch-2"]


def test_downstream_bad_bodies():
    with MockDownstreamApi(rate_limit=None, failure_rate=0.0, delay=0.0) as api:
        assert fetch(api.url, method="POST", raw=b"{not json")[0] == 400
        assert fetch(api.url, method="POST", body={"rows": []})[0] == 400
        assert fetch(api.url, method="POST", body=[1, 2])[0] == 400
        assert fetch(api.url, method="POST", raw=b"\xff\xfe")[0] == 400
        status, _, body = post(api, [{"key": f"k{n}", "data": {}} for n in range(501)])
        assert status == 413 and "500" in body["error"]
        assert post(api, [{"key": f"k{n}", "data": {}} for n in range(500)])[0] == 200
        assert len(api.accepted()) == 500


def test_downstream_apply_then_fail_stores_the_records_and_fail_before_does_not():
    seed = next(s for s in range(1000)
                if downstream_failure(s, 0, 1.0) == "after" and downstream_failure(s, 1, 1.0) == "before")
    with MockDownstreamApi(rate_limit=None, failure_rate=1.0, delay=0.0, seed=seed) as api:
        status, _, body = post(api, [{"key": "lost-ack", "data": {"v": 1}}])
        assert status == 500 and "error" in body
        assert api.accepted() == [("lost-ack", {"v": 1})]  # applied although the client saw a failure
        status, _, body = post(api, [{"key": "never", "data": {"v": 2}}])
        assert status == 503
        assert api.accepted() == [("lost-ack", {"v": 1})]
        stats = api.stats()
        assert stats["failed_after_apply"] == 1 and stats["failed_before_apply"] == 1 and stats["accepted"] == 1
    with MockDownstreamApi(rate_limit=None, failure_rate=0.0, delay=0.0) as api:
        post(api, [{"key": "lost-ack", "data": {"v": 1}}])
        status, _, body = post(api, [{"key": "lost-ack", "data": {"v": 1}}])  # the client's retry
        assert body["results"] == [{"key": "lost-ack", "status": "duplicate"}]
        assert len(api.accepted()) == 1


def test_downstream_rate_limit():
    with MockDownstreamApi(rate_limit=3, failure_rate=0.0, delay=0.0) as api:
        results = [post(api, [{"key": f"k{n}", "data": {}}]) for n in range(10)]
        limited = [(s, h, b) for s, h, b in results if s == 429]
        assert limited and all(h["Retry-After"] == "1" and "error" in b for _, h, b in limited)
        assert api.stats()["rate_limited"] == len(limited)
        assert api.stats()["requests"] == 10
        admitted = [r.at for r in api.requests() if r.method == "POST" and r.status != 429]
        assert len(admitted) == len(api.accepted()) and max_requests_in_window(admitted) <= 3
        assert fetch(api.url)[0] == 200  # GETs are not rate limited
        assert [fetch(api.url)[0] for _ in range(5)] == [200] * 5


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_options_take_both_spellings():
    args = build_parser().parse_args(["products", "--port-base", "9000", "--failure_rate", "0.5",
                                      "--rate-limit", "0"])
    assert (args.command, args.port_base, args.failure_rate, args.rate_limit) == ("products", 9000, 0.5, 0.0)
    assert build_parser().parse_args(["downstream"]).port == 0


def test_cli_reports_a_bad_value_in_one_line(capsys):
    assert main(["products", "--failure_rate", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "failure_rate" in err


def start_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "beam_pipeline.devtools.mock_api", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


@pytest.mark.parametrize("command,stop", [("products", signal.SIGTERM), ("downstream", signal.SIGINT)])
def test_cli_serves_until_a_signal(command, stop):
    process = start_cli(command, "--failure_rate", "0", "--rate_limit", "0", "--delay", "0")
    try:
        urls = process.stdout.readline().strip().split(",")
        if command == "products":
            assert [url.split("/", 3)[3] for url in urls] == [p.lstrip("/") for p in PATHS.values()]
            assert [fetch(url)[0] for url in urls] == [200, 200, 200]
        else:
            assert len(urls) == 1 and urls[0].endswith("/records")
            assert post_url(urls[0], [{"key": "k", "data": {}}])[2]["results"][0]["status"] == "accepted"
        process.send_signal(stop)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_cli_handles_a_signal_sent_as_soon_as_it_printed_its_urls():
    # The handlers are in place before the URLs are printed: a signal right after them stops it
    # cleanly (once, the handlers came after the print, and such a signal killed it).
    for _ in range(3):
        process = start_cli("downstream", "--failure_rate", "0", "--rate_limit", "0", "--delay", "0")
        try:
            assert process.stdout.readline().strip().endswith("/records")
            process.send_signal(signal.SIGTERM)
            assert process.wait(10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
