"""Bundled mock HTTP servers (aiohttp) for the products job and its tests.

Everything listens on 127.0.0.1 only, each server on its own port (port 0: a free port), in a
daemon thread with its own asyncio loop, so synchronous code (tests, the pipeline's CLI) can use
them with a plain ``with``::

    with MockProductApi("cursor", failure_rate=0.0) as api:
        urllib.request.urlopen(api.url + "?page=2")      # api.url == http://127.0.0.1:PORT/catalog/products
        api.requests()                                   # the request log, see Request

Plumbing
--------
:class:`BackgroundServer` runs any :class:`aiohttp.web.Application`: ``start()`` / ``stop()`` or a
context manager, ``.port``, ``.url`` (``http://127.0.0.1:PORT`` plus the server's path). ``stop()``
returns promptly even while handlers are sleeping (a stalled request): in-flight handlers are
cancelled. Every request is appended to a thread-safe log of frozen :class:`Request` entries
(``at`` is ``time.monotonic()`` taken first thing on arrival; ``key`` is the page key such as
``"page=3"`` or ``"offset=40"``, or the downstream batch's ``Idempotency-Key``); a stalled request is
logged when its stall begins, with the 504 it will answer; a handler cancelled by ``stop()`` is
logged with status 499. ``server.requests()`` returns a copy of the log.

Product APIs (:class:`MockProductApi`), three JSON shapes
---------------------------------------------------------
``cursor``  ``GET /catalog/products?page=N`` (N from 1, default 1) answers
            ``{"page": N, "items": [...], "next": "/catalog/products?page=N+1"}``; ``next`` is a
            relative URL, null on the last page. Item:
            ``{"id": 17, "title": "Catalog item 17", "price": 12.5, "category": "books"}``.
``offset``  ``GET /market/items?offset=K&limit=L`` (defaults 0 and ``page_size``; ``limit`` capped at
            50) answers ``{"data": [...], "paging": {"offset": K, "limit": L, "total": T}}``. Item:
            ``{"sku": "MK-00017", "name": "Market item 17",
            "pricing": {"amount": "12.50", "currency": "USD"}, "category": {"name": "toys"}}``.
``pages``   ``GET /shop/v2/listing?page=N&per_page=P`` (defaults 1 and ``page_size``; ``per_page``
            capped at 50 too) answers a bare JSON list of items with headers ``X-Total-Count: T``
            and ``X-Per-Page: P``. Item:
            ``{"productId": "s-17", "label": "Shop item 17", "price_cents": 1250, "dept": "garden"}``.

Ids run from 1 to ``products``. A page past the end is empty (and ``next`` null). A bad query value
(``page=0``, ``page=abc``, a negative offset, ``limit=0``, a repeated parameter) answers 400
``{"error": "..."}``. The catalogue is generated deterministically from ``seed`` (category from a
fixed list of six per shape, price 1.00 to 499.99 with two decimals); ``malformed_rate`` of the
items, chosen by hashing (seed, shape, index), carry one defect: the id field missing, the price
not a number (``"N/A"``), a negative price, an empty title, or the item double-encoded as a JSON
string instead of an object (see :data:`DEFECTS`). ``api.catalogue()`` returns the items exactly as
served, ``api.malformed_indexes()`` the 0-based positions of the malformed ones.

Each request is handled in this order:

1. rate limit: a sliding window per server (:class:`WindowLimiter`); when ``rate_limit`` or more
   requests were *admitted* in the last 1.0 s the answer is 429 with ``Retry-After: 1`` and a JSON
   body. A 429 is not admitted (it does not count in the window). ``rate_limit=None`` or 0 disables.
2. 400 for a bad query.
3. failure injection (:func:`failure_status`): decided by hashing (seed, shape, page key, how many
   times this server has already seen that page key), so the outcome of a request does not depend
   on the order or concurrency of the others. ``failure_rate`` of the requests fail: a share
   ``timeout_share`` of them stall (sleep ``stall_seconds``, then 504; the client is expected to
   time out first), the rest answer 500 or 503 at once with a JSON error. ``failure_rate=1.0``
   always fails.
4. ``delay`` seconds of latency, then the 200 page.

:func:`start_product_apis` starts the three shapes at once with a shared configuration and
optional per-shape ``overrides``; :func:`max_requests_in_window` measures a client's peak rate
from a server's log.

Downstream API (:class:`MockDownstreamApi`)
-------------------------------------------
``POST /records`` with ``{"records": [{"key": "<idempotency key>", "data": {...}}, ...]}`` (at most
500 records, else 413; the optional ``Idempotency-Key`` header names the batch and goes to the
log). After the rate limit (as above) and the body checks (400 for a body that is not JSON or has
no ``records`` list), ``failure_rate`` of the requests fail (:func:`downstream_failure`, from
``seed`` and a counter of such requests): half *before* applying (503, nothing stored), half
*after* applying (the records are stored, then 500: the lost-acknowledgement case idempotency keys
exist for). Otherwise 200 ``{"results": [...]}`` with, per record in order, ``accepted``,
``duplicate`` (the key was accepted before: not stored again) or ``rejected`` with a ``reason``
(not an object with a non-empty string ``key`` and an object ``data``: permanent).
``GET /records`` lists the accepted ``{"key", "data"}`` in acceptance order; ``GET /stats`` answers
the counters of :meth:`MockDownstreamApi.stats`. Neither GET is rate limited.

Command line
------------
::

    python -m beam_pipeline.devtools.mock_api products [--port-base N] [--failure_rate F] [--rate_limit R] ...
    python -m beam_pipeline.devtools.mock_api downstream [--port N] [--failure_rate F] ...

``products`` prints the three URLs on one line, comma-separated (ready for ``--endpoints``);
``downstream`` prints its ``/records`` URL. Both run until Ctrl-C or SIGTERM. Options are spelt
with ``_`` or ``-``; see ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import json
import logging
import re
import signal
import sys
import threading
import time
from collections import Counter, deque
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Mapping, Sequence

from aiohttp import web

LOG = logging.getLogger(__name__)

HOST = "127.0.0.1"
SHAPES = ("cursor", "offset", "pages")
PATHS = {"cursor": "/catalog/products", "offset": "/market/items", "pages": "/shop/v2/listing"}
MAX_PAGE_SIZE = 50
MAX_RECORDS = 500
RETRY_AFTER_SECONDS = 1
STALL_STATUS = 504
CANCELLED_STATUS = 499  # logged for a handler cancelled by stop() (nginx's "client closed request")

CATEGORIES = {
    "cursor": ("books", "music", "games", "kitchen", "sports", "office"),
    "offset": ("toys", "garden", "tools", "beauty", "pets", "baby"),
    "pages": ("garden", "home", "outdoor", "electronics", "apparel", "grocery"),
}
# The defects of a malformed item, in the order they are picked from.
DEFECTS = ("missing_id", "price_not_number", "negative_price", "empty_title", "not_object")
_FIELDS = {  # shape -> (id field, title field)
    "cursor": ("id", "title"),
    "offset": ("sku", "name"),
    "pages": ("productId", "label"),
}

# Keys this module stores on an aiohttp request.
_AT = web.RequestKey("mock_api.at", float)
_KEY = web.RequestKey("mock_api.key", str)
_LOGGED = web.RequestKey("mock_api.logged", bool)

_INT = re.compile(r"-?\d+")


# --------------------------------------------------------------------------------------------
# Pure helpers: hashing, decisions, rate windows, catalogue items


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) that depends only on ``parts`` (sha256, not a shared RNG)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def failure_status(
    seed: int, shape: str, key: str, attempt: int, failure_rate: float, timeout_share: float
) -> int:
    """The injected outcome of a product request: 200 (serve it), 500 or 503, or 504 (stall first).

    Deterministic in (``seed``, ``shape``, page ``key``, ``attempt`` = how many times the server
    had already seen that key), so concurrency and request order do not change outcomes.
    """
    if _unit(seed, shape, key, attempt, "fail") >= failure_rate:
        return 200
    if _unit(seed, shape, key, attempt, "stall") < timeout_share:
        return STALL_STATUS
    return 503 if _unit(seed, shape, key, attempt, "code") < 0.5 else 500


def downstream_failure(seed: int, counter: int, failure_rate: float) -> str | None:
    """The injected failure of the ``counter``-th checked downstream request (from 0).

    ``None`` (no failure), ``"before"`` (503, nothing applied) or ``"after"`` (applied, then 500);
    the two failures are equally likely.
    """
    if _unit(seed, "downstream", counter, "fail") >= failure_rate:
        return None
    return "before" if _unit(seed, "downstream", counter, "kind") < 0.5 else "after"


def max_requests_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """The largest number of ``times`` inside any half-open interval ``[t, t + window)``."""
    ordered = sorted(times)
    best = 0
    first = 0
    for last, t in enumerate(ordered):
        while t - ordered[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


class WindowLimiter:
    """A sliding-window limiter: admits a request unless ``limit`` or more were admitted in the
    last ``window`` seconds, i.e. at times in ``(now - window, now]``. Rejected requests do not count.

    ``clock`` is injectable for tests; :meth:`try_acquire` also takes an explicit ``now`` (the
    servers pass the arrival time they log, so the log and the limiter agree exactly).
    """

    def __init__(self, limit: float, window: float = 1.0, clock: Callable[[], float] = time.monotonic):
        if limit <= 0 or window <= 0:
            raise ValueError(f"limit and window must be positive, got {limit!r} and {window!r}")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._admitted: deque[float] = deque()
        self._lock = threading.Lock()

    def try_acquire(self, now: float | None = None) -> bool:
        """Admit (and count) one request at ``now`` (default: the clock) or refuse it."""
        with self._lock:
            now = self._clock() if now is None else now
            while self._admitted and self._admitted[0] <= now - self.window:
                self._admitted.popleft()
            if len(self._admitted) >= self.limit:
                return False
            self._admitted.append(now)
            return True

    def in_window(self, now: float | None = None) -> int:
        """How many admitted requests are in the window ending at ``now``."""
        with self._lock:
            now = self._clock() if now is None else now
            return sum(1 for t in self._admitted if now - self.window < t <= now)


def item_defect(seed: int, shape: str, index: int, malformed_rate: float) -> str | None:
    """The defect of item ``index`` (0-based) of a shape's catalogue, or ``None`` for a good item."""
    if _unit(seed, shape, index, "malformed") >= malformed_rate:
        return None
    return DEFECTS[int(_unit(seed, shape, index, "defect") * len(DEFECTS))]


def make_item(seed: int, shape: str, index: int, defect: str | None = None) -> Any:
    """Item ``index`` (0-based; its id is ``index + 1``) of a shape, as served, with ``defect``.

    A good item is a dict; ``"not_object"`` gives the item double-encoded as a JSON string.
    """
    number = index + 1
    cents = 100 + int(_unit(seed, shape, index, "price") * 49_900)  # 1.00 .. 499.99
    categories = CATEGORIES[shape]
    category = categories[int(_unit(seed, shape, index, "category") * len(categories))]
    if shape == "cursor":
        item: dict[str, Any] = {"id": number, "title": f"Catalog item {number}", "price": round(cents / 100, 2),
                                "category": category}
    elif shape == "offset":
        item = {"sku": f"MK-{number:05d}", "name": f"Market item {number}",
                "pricing": {"amount": f"{cents / 100:.2f}", "currency": "USD"},
                "category": {"name": category}}
    elif shape == "pages":
        item = {"productId": f"s-{number}", "label": f"Shop item {number}", "price_cents": cents,
                "dept": category}
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    id_field, title_field = _FIELDS[shape]
    if defect is None:
        return item
    if defect == "missing_id":
        del item[id_field]
    elif defect == "price_not_number":
        _set_price(shape, item, "N/A")
    elif defect == "negative_price":
        negative = {"cursor": -round(cents / 100, 2), "offset": f"-{cents / 100:.2f}", "pages": -cents}
        _set_price(shape, item, negative[shape])
    elif defect == "empty_title":
        item[title_field] = ""
    elif defect == "not_object":
        return json.dumps(item)
    else:
        raise ValueError(f"unknown defect {defect!r}; expected one of {', '.join(DEFECTS)}")
    return item


def _set_price(shape: str, item: dict[str, Any], value: Any) -> None:
    if shape == "cursor":
        item["price"] = value
    elif shape == "offset":
        item["pricing"]["amount"] = value
    else:
        item["price_cents"] = value


def make_catalogue(seed: int, shape: str, products: int, malformed_rate: float) -> tuple[list[Any], list[int]]:
    """A shape's items as served, and the 0-based indexes of the malformed ones."""
    items: list[Any] = []
    malformed: list[int] = []
    for index in range(products):
        defect = item_defect(seed, shape, index, malformed_rate)
        if defect is not None:
            malformed.append(index)
        items.append(make_item(seed, shape, index, defect))
    return items, malformed


# --------------------------------------------------------------------------------------------
# Plumbing


@dataclass(frozen=True)
class Request:
    """One request as logged by a :class:`BackgroundServer`."""

    at: float  # time.monotonic() on arrival
    method: str
    path: str
    query: str
    status: int
    key: str  # page key ("page=3", "offset=40"), the downstream batch key, or ""


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json(status, {"error": message}, headers)


def _too_many() -> web.Response:
    return _error(429, f"rate limit exceeded; retry after {RETRY_AFTER_SECONDS} s",
                  {"Retry-After": str(RETRY_AFTER_SECONDS)})


def arrival(request: web.Request) -> float:
    """The ``time.monotonic()`` at which a :class:`BackgroundServer` received ``request``."""
    return request[_AT]


class BackgroundServer:
    """Runs an aiohttp ``app`` on 127.0.0.1:``port`` (0: a free port) in a daemon thread.

    Use ``with BackgroundServer(app) as server:`` or ``start()`` / ``stop()``. A server starts
    once; ``stop()`` is idempotent, cancels in-flight handlers and returns within about
    ``shutdown_timeout`` seconds.
    """

    def __init__(self, app: web.Application, *, path: str = "", port: int = 0, name: str = "mock-server",
                 shutdown_timeout: float = 0.5):
        self.name = name
        self.path = path
        self._app = app
        self._app.middlewares.insert(0, self._middleware)
        self._requested_port = port
        self._shutdown_timeout = shutdown_timeout
        self._port: int | None = None
        self._log: list[Request] = []
        self._log_lock = threading.Lock()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopped = False

    # -- lifecycle

    def start(self, timeout: float = 10.0) -> "BackgroundServer":
        """Bind and serve in the background; returns once the port is bound (or raises)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was already started (a server starts once)")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"{self.name} did not start within {timeout} s")
        if self._startup_error is not None:
            self._thread.join(timeout)
            raise self._startup_error
        LOG.info("%s listening on %s", self.name, self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: cancel in-flight handlers, close the port, end the thread."""
        if self._thread is None or self._stopped:
            return
        self._stopped = True
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            LOG.warning("%s did not stop within %s s", self.name, timeout)
        else:
            LOG.info("%s stopped", self.name)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is started and not stopped."""
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    @property
    def port(self) -> int:
        """The bound port (after ``start()``)."""
        if self._port is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` plus the server's path."""
        return f"http://{HOST}:{self.port}{self.path}"

    def requests(self) -> list[Request]:
        """A copy of the request log, in order of completion (stalls: of stall start)."""
        with self._log_lock:
            return list(self._log)

    # -- the loop thread

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 (reported to start() or logged)
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                LOG.exception("%s crashed", self.name)
        finally:
            _cancel_pending(loop)
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False,
                               shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, HOST, self._requested_port)
            await site.start()
            self._port = runner.addresses[0][1]
            self._ready.set()
            await self._stopping.wait()
            for task in list(self._inflight):
                task.cancel()
        finally:
            await runner.cleanup()

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        request[_AT] = time.monotonic()
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CANCELLED_STATUS
            raise
        finally:
            if task is not None:
                self._inflight.discard(task)
            self._record(request, status)

    def _record(self, request: web.Request, status: int) -> None:
        """Log ``request`` once (a stall logs itself early; the middleware then skips it)."""
        if request.get(_LOGGED):
            return
        request[_LOGGED] = True
        entry = Request(at=request[_AT], method=request.method, path=request.path,
                        query=request.query_string, status=status, key=request.get(_KEY, ""))
        with self._log_lock:
            self._log.append(entry)


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


def _make_limiter(rate_limit: float | None) -> WindowLimiter | None:
    if rate_limit is None or rate_limit == 0:
        return None
    if rate_limit < 0:
        raise ValueError(f"rate_limit must not be negative, got {rate_limit!r}")
    return WindowLimiter(rate_limit, 1.0)


def _check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be from 0 to 1, got {value!r}")


# --------------------------------------------------------------------------------------------
# Product APIs


@dataclass(frozen=True)
class PageQuery:
    key: str  # "page=3" / "offset=40"
    number: int  # the page number (cursor, pages) or the offset (offset)
    start: int  # index of the first item
    count: int  # items per page / limit


def _int_param(getall: Callable[[str], list[str]], name: str, default: int, minimum: int) -> int:
    values = getall(name)
    if not values:
        return default
    if len(values) > 1:
        raise ValueError(f"{name} is given {len(values)} times")
    value = values[0]
    if not _INT.fullmatch(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    number = int(value)
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number


def parse_page_query(shape: str, query: Any, page_size: int) -> PageQuery:
    """The page a query (a multidict, or a plain mapping) asks for; ``ValueError`` if it is bad."""
    getall: Callable[[str], list[str]]
    if hasattr(query, "getall"):
        getall = lambda name: list(query.getall(name, []))  # noqa: E731
    else:
        getall = lambda name: [query[name]] if name in query else []  # noqa: E731
    if shape == "cursor":
        page = _int_param(getall, "page", 1, 1)
        return PageQuery(f"page={page}", page, (page - 1) * page_size, page_size)
    if shape == "offset":
        offset = _int_param(getall, "offset", 0, 0)
        limit = min(_int_param(getall, "limit", page_size, 1), MAX_PAGE_SIZE)
        return PageQuery(f"offset={offset}", offset, offset, limit)
    if shape == "pages":
        page = _int_param(getall, "page", 1, 1)
        per_page = min(_int_param(getall, "per_page", page_size, 1), MAX_PAGE_SIZE)
        return PageQuery(f"page={page}", page, (page - 1) * per_page, per_page)
    raise ValueError(f"unknown shape {shape!r}")


class MockProductApi(BackgroundServer):
    """A product API of one JSON ``shape`` (``"cursor"``, ``"offset"`` or ``"pages"``); see the module doc."""

    def __init__(self, shape: str, *, products: int = 125, page_size: int = 20, delay: float = 0.02,
                 failure_rate: float = 0.05, timeout_share: float = 0.5, stall_seconds: float = 30.0,
                 malformed_rate: float = 0.04, rate_limit: float | None = 5.0, seed: int = 0,
                 port: int = 0):
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
        if products < 0:
            raise ValueError(f"products must not be negative, got {products}")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be from 1 to {MAX_PAGE_SIZE}, got {page_size}")
        if delay < 0 or stall_seconds < 0:
            raise ValueError(f"delay and stall_seconds must not be negative, got {delay} and {stall_seconds}")
        for name, value in (("failure_rate", failure_rate), ("timeout_share", timeout_share),
                            ("malformed_rate", malformed_rate)):
            _check_share(name, value)
        self.shape = shape
        self.products = products
        self.page_size = page_size
        self.delay = delay
        self.failure_rate = failure_rate
        self.timeout_share = timeout_share
        self.stall_seconds = stall_seconds
        self.malformed_rate = malformed_rate
        self.rate_limit = rate_limit
        self.seed = seed
        self._limiter = _make_limiter(rate_limit)
        self._items, self._malformed = make_catalogue(seed, shape, products, malformed_rate)
        self._seen: Counter[str] = Counter()
        app = web.Application()
        app.router.add_get(PATHS[shape], self._handle)
        super().__init__(app, path=PATHS[shape], port=port, name=f"mock-{shape}-api")

    def catalogue(self) -> list[Any]:
        """All items as served (dicts, or a JSON string for a ``not_object`` defect), in id order."""
        return copy.deepcopy(self._items)

    def malformed_indexes(self) -> list[int]:
        """0-based positions in :meth:`catalogue` of the malformed items."""
        return list(self._malformed)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        at = arrival(request)
        try:
            page: PageQuery | None = parse_page_query(self.shape, request.query, self.page_size)
            problem = ""
        except ValueError as exc:
            page, problem = None, str(exc)
        if page is not None:
            request[_KEY] = page.key
        if self._limiter is not None and not self._limiter.try_acquire(at):
            return _too_many()
        if page is None:
            return _error(400, problem)
        attempt = self._seen[page.key]
        self._seen[page.key] += 1
        status = failure_status(self.seed, self.shape, page.key, attempt, self.failure_rate, self.timeout_share)
        if status == STALL_STATUS:
            LOG.debug("%s: stalling %s (attempt %s) for %s s", self.name, page.key, attempt, self.stall_seconds)
            self._record(request, STALL_STATUS)
            await asyncio.sleep(self.stall_seconds)
            return _error(STALL_STATUS, "injected stall: gateway timeout")
        if status != 200:
            LOG.debug("%s: failing %s (attempt %s) with %s", self.name, page.key, attempt, status)
            return _error(status, f"injected failure ({status})")
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._render(page)

    def _render(self, page: PageQuery) -> web.Response:
        items = self._items[page.start:page.start + page.count]
        total = len(self._items)
        if self.shape == "cursor":
            more = page.start + page.count < total
            next_url = f"{PATHS['cursor']}?page={page.number + 1}" if more else None
            return _json(200, {"page": page.number, "items": items, "next": next_url})
        if self.shape == "offset":
            return _json(200, {"data": items, "paging": {"offset": page.start, "limit": page.count, "total": total}})
        return _json(200, items, {"X-Total-Count": str(total), "X-Per-Page": str(page.count)})


@contextmanager
def start_product_apis(*, overrides: Mapping[str, Mapping[str, Any]] | None = None, port_base: int = 0,
                       **config: Any) -> Iterator[list[MockProductApi]]:
    """Start the three product APIs (cursor, offset, pages) with a shared ``config``.

    ``config`` takes :class:`MockProductApi`'s keyword arguments; ``overrides`` maps a shape to
    arguments of its own, e.g. ``{"offset": {"failure_rate": 1.0}}``. ``port_base`` N > 0 puts
    them on ports N, N+1, N+2 (0: free ports). Yields the started servers and stops them after.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(SHAPES))
    if unknown:
        raise ValueError(f"unknown shape(s) in overrides: {', '.join(unknown)}; expected {', '.join(SHAPES)}")
    with ExitStack() as stack:
        servers = []
        for number, shape in enumerate(SHAPES):
            kwargs = {**config, **overrides.get(shape, {})}
            kwargs["port"] = port_base + number if port_base else 0
            server = MockProductApi(shape, **kwargs)
            stack.enter_context(server)
            servers.append(server)
        yield servers


# --------------------------------------------------------------------------------------------
# Downstream API


def check_record(record: Any) -> str | None:
    """Why a downstream record is rejected, or ``None`` if it is acceptable."""
    if not isinstance(record, dict):
        return "a record must be a JSON object"
    key = record.get("key")
    if not isinstance(key, str) or not key:
        return "a record needs a non-empty string key"
    if not isinstance(record.get("data"), dict):
        return "a record needs an object data"
    return None


class MockDownstreamApi(BackgroundServer):
    """The downstream ``/records`` API that the pipeline delivers to; see the module doc."""

    def __init__(self, *, rate_limit: float | None = 10.0, failure_rate: float = 0.15, seed: int = 0,
                 delay: float = 0.005, port: int = 0):
        _check_share("failure_rate", failure_rate)
        if delay < 0:
            raise ValueError(f"delay must not be negative, got {delay}")
        self.rate_limit = rate_limit
        self.failure_rate = failure_rate
        self.seed = seed
        self.delay = delay
        self._limiter = _make_limiter(rate_limit)
        self._lock = threading.Lock()
        self._accepted: list[tuple[str, Any]] = []
        self._keys: set[str] = set()
        self._counter = 0
        self._stats = dict.fromkeys(("accepted", "duplicates", "rejected", "requests", "rate_limited",
                                     "failed_before_apply", "failed_after_apply"), 0)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/records", self._post)
        app.router.add_get("/records", self._get_records)
        app.router.add_get("/stats", self._get_stats)
        super().__init__(app, path="/records", port=port, name="mock-downstream-api")

    def accepted(self) -> list[tuple[str, Any]]:
        """The accepted ``(key, data)`` in acceptance order."""
        with self._lock:
            return copy.deepcopy(self._accepted)

    def stats(self) -> dict[str, int]:
        """Counters: ``accepted``, ``duplicates``, ``rejected`` (records); ``requests`` (POSTs received),
        ``rate_limited``, ``failed_before_apply``, ``failed_after_apply`` (POSTs)."""
        with self._lock:
            return dict(self._stats)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._stats[name] += amount

    async def _post(self, request: web.Request) -> web.StreamResponse:
        at = arrival(request)
        request[_KEY] = request.headers.get("Idempotency-Key", "")
        self._count("requests")
        if self._limiter is not None and not self._limiter.try_acquire(at):
            self._count("rate_limited")
            return _too_many()
        try:
            body = await request.json()
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            return _error(400, f"the body is not valid JSON: {exc}")
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            return _error(400, 'the body must be a JSON object with a "records" list')
        if len(records) > MAX_RECORDS:
            return _error(413, f"at most {MAX_RECORDS} records per request, got {len(records)}")
        with self._lock:
            counter = self._counter
            self._counter += 1
        fate = downstream_failure(self.seed, counter, self.failure_rate)
        LOG.debug("%s: batch %r of %s records, request %s: %s", self.name, request[_KEY], len(records),
                  counter, fate or "ok")
        if self.delay:
            await asyncio.sleep(self.delay)
        if fate == "before":
            self._count("failed_before_apply")
            return _error(503, "injected failure before applying the batch")
        results = self._apply(records)
        if fate == "after":
            self._count("failed_after_apply")
            return _error(500, "injected failure after applying the batch")
        return _json(200, {"results": results})

    def _apply(self, records: list[Any]) -> list[dict[str, Any]]:
        results = []
        with self._lock:
            for record in records:
                reason = check_record(record)
                if reason is not None:
                    key = record.get("key") if isinstance(record, dict) else None
                    results.append({"key": key if isinstance(key, str) else None, "status": "rejected",
                                    "reason": reason})
                    self._stats["rejected"] += 1
                elif record["key"] in self._keys:
                    results.append({"key": record["key"], "status": "duplicate"})
                    self._stats["duplicates"] += 1
                else:
                    self._keys.add(record["key"])
                    self._accepted.append((record["key"], copy.deepcopy(record["data"])))
                    results.append({"key": record["key"], "status": "accepted"})
                    self._stats["accepted"] += 1
        return results

    async def _get_records(self, request: web.Request) -> web.StreamResponse:
        return _json(200, [{"key": key, "data": data} for key, data in self.accepted()])

    async def _get_stats(self, request: web.Request) -> web.StreamResponse:
        return _json(200, self.stats())


# --------------------------------------------------------------------------------------------
# Command line


def _add(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """An option spelt ``--a_b`` or ``--a-b``."""
    spellings = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"])
    parser.add_argument(*spellings, dest=name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m beam_pipeline.devtools.mock_api`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipeline.devtools.mock_api",
        description="Serve the bundled mock APIs on 127.0.0.1 until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--log-level", "--log_level", dest="log_level", default="WARNING",
                        help="logging level (default: WARNING)")
    commands = parser.add_subparsers(dest="command", required=True)

    products = commands.add_parser("products", help="the three product APIs; prints their URLs, comma-separated")
    _add(products, "port_base", type=int, default=0, help="ports N, N+1, N+2 (default 0: free ports)")
    _add(products, "products", type=int, default=125, help="products per API (default: 125)")
    _add(products, "page_size", type=int, default=20, help="default page size (default: 20)")
    _add(products, "delay", type=float, default=0.02, help="seconds before each normal answer (default: 0.02)")
    _add(products, "failure_rate", type=float, default=0.05, help="share of failing requests (default: 0.05)")
    _add(products, "timeout_share", type=float, default=0.5, help="share of failures that stall (default: 0.5)")
    _add(products, "stall_seconds", type=float, default=30.0, help="length of a stall (default: 30)")
    _add(products, "malformed_rate", type=float, default=0.04, help="share of malformed items (default: 0.04)")
    _add(products, "rate_limit", type=float, default=5.0, help="requests per second per API, 0: none (default: 5)")
    _add(products, "seed", type=int, default=0, help="seed of the catalogue and the failures (default: 0)")

    downstream = commands.add_parser("downstream", help="the downstream /records API; prints its URL")
    _add(downstream, "port", type=int, default=0, help="port (default 0: a free port)")
    _add(downstream, "rate_limit", type=float, default=10.0, help="requests per second, 0: none (default: 10)")
    _add(downstream, "failure_rate", type=float, default=0.15, help="share of failing requests (default: 0.15)")
    _add(downstream, "delay", type=float, default=0.005, help="seconds before applying a batch (default: 0.005)")
    _add(downstream, "seed", type=int, default=0, help="seed of the failures (default: 0)")
    return parser


@contextmanager
def _stop_on_signal() -> Iterator[threading.Event]:
    """Handle Ctrl-C (SIGINT) and SIGTERM by setting the event, from entry on (so a signal sent as
    soon as the URLs are printed is not fatal), even if SIGINT was ignored by the parent (a
    background job of a non-interactive shell); the previous handlers come back on exit."""
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda number, frame: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait(stop: threading.Event) -> None:
    while not stop.wait(0.5):
        pass
    LOG.info("signal received, stopping")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 after Ctrl-C/SIGTERM, 2 for bad options or ports)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with ExitStack() as stack:
            if args.command == "products":
                config = {name: getattr(args, name) for name in (
                    "products", "page_size", "delay", "failure_rate", "timeout_share", "stall_seconds",
                    "malformed_rate", "rate_limit", "seed")}
                servers: list[BackgroundServer] = stack.enter_context(
                    start_product_apis(port_base=args.port_base, **config))
            else:
                servers = [stack.enter_context(MockDownstreamApi(
                    rate_limit=args.rate_limit, failure_rate=args.failure_rate, seed=args.seed,
                    delay=args.delay, port=args.port))]
            with _stop_on_signal() as stop:
                print(",".join(server.url for server in servers), flush=True)
                _wait(stop)
    except (ValueError, OSError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
