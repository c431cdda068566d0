"""Pagination shapes (pure) and the polite, resilient fetcher against the mock APIs on 127.0.0.1."""

from __future__ import annotations

import collections
import json

import pytest

from beam_pipeline.devtools.mock_api import MockProductApi, max_requests_in_window, start_product_apis
from transforms.products.paginate import (
    BAD_RESPONSE,
    CIRCUIT_OPEN,
    CLIENT_ERROR,
    CURSOR,
    OFFSET,
    PAGES,
    SERVER_ERROR,
    TIMEOUT,
    Endpoint,
    EndpointReport,
    FetchConfig,
    FetchError,
    Page,
    ShapeError,
    detect_shape,
    next_pages,
    page_items,
    parse_endpoints,
    with_query,
)
from transforms.products.stage import fetch_events

# --------------------------------------------------------------------------- shapes (pure)


def test_detect_shape_of_each_first_page():
    assert detect_shape({"items": [], "next": None}, {}) == CURSOR
    assert detect_shape({"data": [1], "paging": {"total": 1}}, {}) == OFFSET
    assert detect_shape([{"a": 1}], {"x-total-count": "1"}) == PAGES


@pytest.mark.parametrize("body, headers", [([1, 2], {}), ({"results": []}, {}), ("text", {}), (None, {})])
def test_unknown_shape_says_what_it_got(body, headers):
    with pytest.raises(ShapeError, match="unknown page shape: a JSON"):
        detect_shape(body, headers)


def test_page_items_refuses_a_page_of_another_shape():
    assert page_items(OFFSET, {"data": [1, 2], "paging": {}}) == [1, 2]
    with pytest.raises(ShapeError, match="'data' list"):
        page_items(OFFSET, {"items": [1]})


def test_cursor_follows_next_relative_to_the_page():
    url = "http://h:1/catalog/products?page=3"
    assert next_pages(CURSOR, url, 3, {"items": [], "next": "/catalog/products?page=4"}, {}) == [
        (4, "http://h:1/catalog/products?page=4")]
    assert next_pages(CURSOR, url, 3, {"items": [], "next": None}, {}) == []
    with pytest.raises(ShapeError):
        next_pages(CURSOR, url, 3, {"items": [], "next": 4}, {})


def test_offset_first_page_names_every_other_page():
    body = {"data": [0] * 20, "paging": {"offset": 0, "limit": 20, "total": 65}}
    pages = next_pages(OFFSET, "http://h/m?x=1", 1, body, {})
    assert [n for n, _ in pages] == [2, 3, 4]
    assert pages[0][1] == "http://h/m?x=1&offset=20&limit=20" and pages[-1][1].endswith("offset=60&limit=20")
    assert next_pages(OFFSET, "http://h/m", 2, body, {}) == [], "only the first page plans"


def test_pages_shape_uses_the_total_header():
    pages = next_pages(PAGES, "http://h/s?page=1", 1, [0] * 20, {"X-Total-Count": "41", "X-Per-Page": "20"})
    assert pages == [(2, "http://h/s?page=2&per_page=20"), (3, "http://h/s?page=3&per_page=20")]
    with pytest.raises(ShapeError, match="not a whole number"):
        next_pages(PAGES, "http://h/s", 1, [0], {"X-Total-Count": "many"})


def test_with_query_replaces_only_the_given_parameters():
    assert with_query("http://h/p?page=1&q=a", page=2) == "http://h/p?q=a&page=2"


def test_parse_endpoints_names_and_dedups():
    endpoints = parse_endpoints("http://a/catalog/x, shop=http://b/y ,http://c/catalog/z,http://d")
    assert [e.name for e in endpoints] == ["catalog", "shop", "catalog-2", "d"]
    assert endpoints[1].url == "http://b/y"
    for bad in ("", "ftp://x/y", "catalog=notaurl"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


def test_fetch_config_names_every_bad_value():
    with pytest.raises(ValueError, match="rate must be positive.*max_retries must not be negative"):
        FetchConfig(rate=0, max_retries=-1)


# --------------------------------------------------------------------------- against the mocks


def run_fetch(servers, **config):
    endpoints = parse_endpoints(",".join(server.url for server in servers))
    pages, errors, reports = [], [], {}
    for event in fetch_events(endpoints, FetchConfig(seed=0, **config)):
        if isinstance(event, Page):
            pages.append(event)
        elif isinstance(event, FetchError):
            errors.append(event)
        else:
            assert isinstance(event, EndpointReport)
            reports[event.source] = event
    return pages, errors, reports


def served(server) -> list[str]:
    """The items a server holds, as canonical JSON, to compare with what was fetched."""
    return sorted(json.dumps(item, sort_keys=True) for item in server.catalogue())


def fetched(pages, source) -> list[str]:
    return sorted(json.dumps(item, sort_keys=True) for page in pages if page.source == source for item in page.items)


def test_every_item_once_despite_20_percent_failures_and_never_over_5_requests_a_second():
    with start_product_apis(failure_rate=0.2, stall_seconds=1.0, seed=3) as servers:
        pages, errors, reports = run_fetch(servers, timeout=0.3, backoff_initial=0.05)
        logs = {server.shape: server.requests() for server in servers}
    assert errors == []
    for server, name in zip(servers, ("catalog", "market", "shop")):
        assert fetched(pages, name) == served(server), name
        assert len(served(server)) >= 120
        log = logs[server.shape]
        assert max_requests_in_window([request.at for request in log]) <= 5, f"{name} went over 5 requests/s"
        failed = [request for request in log if request.status >= 500]
        assert failed, f"{name}: no failure was injected, the test proves nothing"
        assert reports[name].retries == len(failed) and reports[name].pages == 7
    statuses = collections.Counter(request.status for log in logs.values() for request in log)
    assert statuses[504] >= 1, "at least one stall (client timeout) was retried"


def test_a_dead_endpoint_opens_its_breaker_and_the_others_finish():
    overrides = {"offset": {"failure_rate": 1.0, "timeout_share": 0.0}}
    with start_product_apis(failure_rate=0.0, seed=1, overrides=overrides) as servers:
        pages, errors, reports = run_fetch(servers, breaker_failures=3, breaker_cooldown=0.5, backoff_initial=0.05)
        dead_log = servers[1].requests()
    assert {page.source for page in pages} == {"catalog", "shop"}
    assert fetched(pages, "catalog") == served(servers[0]) and fetched(pages, "shop") == served(servers[2])
    market = reports["market"]
    assert market.breaker_state == "open" and market.breaker_opened == 2 and market.breaker_probes == 1
    assert len(dead_log) == 4, "3 failures open the breaker, one probe after the cool-down, then nothing"
    [error] = errors
    assert (error.source, error.page, error.kind, error.attempts) == ("market", 1, SERVER_ERROR, 4)
    assert error.status in (500, 503)
    assert error.as_dict()["timestamp"].endswith("Z")


def test_an_endpoint_dying_mid_way_gives_up_its_remaining_pages_fast():
    with MockProductApi("offset", failure_rate=0.0, seed=1) as server:
        endpoint = Endpoint("market", server.url)
        # The first page answers, then the server starts failing every request.
        events = fetch_events([endpoint], FetchConfig(seed=0, breaker_failures=2, breaker_cooldown=0.2,
                                                      backoff_initial=0.02, page_concurrency=3))
        first = next(events)
        assert isinstance(first, Page) and first.number == 1
        server.failure_rate, server.timeout_share = 1.0, 0.0
        rest = list(events)
        log = server.requests()
    errors = [event for event in rest if isinstance(event, FetchError)]
    assert sorted(error.page for error in errors) == [2, 3, 4, 5, 6, 7]
    assert {error.kind for error in errors} <= {SERVER_ERROR, CIRCUIT_OPEN}
    assert any(error.kind == CIRCUIT_OPEN and error.attempts < 4 for error in errors)
    assert len(log) < 1 + 6 * 4, "the breaker saved requests compared with retrying every page"


def test_429_is_honoured_and_is_not_a_failure():
    with MockProductApi("pages", failure_rate=0.0, rate_limit=3.0, seed=2) as server:
        pages, errors, reports = run_fetch([server], rate=20.0, headroom=0.0)
        log = server.requests()
    assert errors == []
    assert fetched(pages, "shop") == served(server)
    throttled = [request for request in log if request.status == 429]
    assert throttled and reports["shop"].rate_limited == len(throttled)
    assert reports["shop"].failures == 0 and reports["shop"].breaker_opened == 0
    admitted = [request.at for request in log if request.status != 429]
    assert max_requests_in_window(admitted) <= 3


def test_timeouts_are_retried_then_reported():
    with MockProductApi("cursor", failure_rate=1.0, timeout_share=1.0, stall_seconds=2.0, seed=1) as server:
        _, errors, reports = run_fetch([server], timeout=0.2, max_retries=1, breaker_failures=5, backoff_initial=0.01)
    [error] = errors
    assert (error.kind, error.attempts, error.page) == (TIMEOUT, 2, 1)
    assert reports["catalog"].requests == 2


def test_client_errors_are_not_retried():
    with MockProductApi("pages", failure_rate=0.0, seed=1) as server:
        bad_query = Endpoint("shop", server.url + "?page=0")
        _, errors, reports = run_fetch_endpoints([bad_query])
    [error] = errors
    assert (error.kind, error.status, error.attempts) == (CLIENT_ERROR, 400, 1)
    with MockProductApi("pages", failure_rate=0.0, seed=1) as server:
        url = server.url.replace("/shop/v2/listing", "/nowhere")
        _, errors, _ = run_fetch_endpoints([Endpoint("x", url)])
    assert errors[0].kind == CLIENT_ERROR and errors[0].status == 404


def run_fetch_endpoints(endpoints, **config):
    pages, errors, reports = [], [], {}
    for event in fetch_events(endpoints, FetchConfig(seed=0, **config)):
        (pages if isinstance(event, Page) else errors if isinstance(event, FetchError) else []).append(event)
        if isinstance(event, EndpointReport):
            reports[event.source] = event
    return pages, errors, reports


def test_a_page_that_is_not_json_of_its_shape_is_a_bad_response(unused_port_server):
    _, errors, _ = run_fetch_endpoints([Endpoint("odd", unused_port_server)])
    [error] = errors
    assert error.kind == BAD_RESPONSE and "unknown page shape" in error.message


@pytest.fixture
def unused_port_server():
    """A tiny server whose page is JSON but of no known shape."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b'{"results": [1, 2]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/odd"
    server.shutdown()
    server.server_close()


def test_closing_the_events_early_stops_the_fetch_thread():
    import threading

    with MockProductApi("cursor", failure_rate=0.0, seed=1) as server:
        events = fetch_events([Endpoint("catalog", server.url)], FetchConfig(seed=0))
        assert isinstance(next(events), Page)
        events.close()
        requests_at_close = len(server.requests())
        assert not any(thread.name == "fetch-paginated" for thread in threading.enumerate())
        assert len(server.requests()) == requests_at_close < 7
