"""Fetch every page of paginated JSON product APIs: politely, concurrently, and without crashing.

No Beam here: :class:`transforms.products.normalize.stage.FetchPaginated` wires this into a pipeline, tests drive it
directly against the mock servers of :mod:`beam_pipeline.devtools.mock_api`.

**Shapes.** An endpoint's pagination is recognised from its first page (:func:`detect_shape`):

========  ===================================================  =====================================
shape     first page looks like                                 the other pages
========  ===================================================  =====================================
cursor    ``{"items": [...], "next": "/path?page=2"}``          follow ``next`` until it is null
offset    ``{"data": [...], "paging": {"limit", "total"}}``     ``?offset=K&limit=L`` up to ``total``
pages     a bare JSON list, header ``X-Total-Count``            ``?page=N&per_page=P`` up to the total
========  ===================================================  =====================================

For ``offset`` and ``pages`` the first page gives the total, so the remaining pages are fetched
concurrently (``page_concurrency`` in flight per endpoint); a cursor is followed one page at a time.

**Politeness and resilience**, per endpoint (:class:`EndpointFetcher`):

* a :class:`~transforms.resilience.TokenBucket` keeps requests at or under ``rate`` a second;
  it aims ``headroom`` (10 %) under the limit, so that the jitter between our send and the
  server's clock cannot make the server count one request too many in a second;
* ``429`` pauses the whole endpoint for ``Retry-After`` seconds; it is not a failure, but more than
  ``max_throttled`` of them for one page give up on the page (``rate_limited``);
* timeouts, connection errors and ``5xx`` are retried up to ``max_retries`` times with exponential
  backoff and jitter;
* a :class:`~transforms.resilience.CircuitBreaker` opens after ``breaker_failures`` consecutive
  failures; requests then wait for its cool-down and one half-open probe. If the probe fails too,
  the endpoint is given up: its remaining pages fail at once (``circuit_open``), so a dead endpoint
  costs a few failures and one cool-down, not every page's retries;
* other ``4xx`` (``client_error``) and a page that is not the JSON its shape promises
  (``bad_response``) are not retried.

A page that fails becomes a :class:`FetchError` (endpoint, page, kind, status, attempts, time):
a record, never an exception. Events (pages, errors, one :class:`EndpointReport` per endpoint)
are handed to an async ``emit`` callback as they happen; nothing keeps the pages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from transforms.resilience import OPEN, CircuitBreaker, TokenBucket, backoff_delay, retry_after_seconds

LOG = logging.getLogger(__name__)

CURSOR, OFFSET, PAGES = "cursor", "offset", "pages"

#: Kinds of :class:`FetchError`.
TIMEOUT, CONNECTION_ERROR, SERVER_ERROR = "timeout", "connection_error", "server_error"
RATE_LIMITED, CLIENT_ERROR, BAD_RESPONSE, CIRCUIT_OPEN = "rate_limited", "client_error", "bad_response", "circuit_open"
RETRYABLE = (TIMEOUT, CONNECTION_ERROR, SERVER_ERROR)


class ShapeError(ValueError):
    """A page is not in any shape this module knows, or not in its endpoint's shape."""


@dataclass(frozen=True)
class Endpoint:
    """A product API: ``name`` becomes the products' ``source`` and the prefix of their ids."""

    name: str
    url: str


def parse_endpoints(text: str) -> list[Endpoint]:
    """``--endpoints``: comma-separated ``URL`` or ``NAME=URL``.

    An unnamed endpoint is named after its url's first path segment (``/catalog/products`` →
    ``catalog``; the host when there is no path); repeated names get ``-2``, ``-3`` suffixes.
    """
    endpoints: list[Endpoint] = []
    taken: set[str] = set()
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        name, sep, url = part.partition("=")
        if not sep or "://" in name:
            name, url = "", part
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--endpoints: {url!r} is not an http(s) url")
        base = name.strip() or next((seg for seg in parts.path.split("/") if seg), parts.hostname or "api")
        unique, n = base, 1
        while unique in taken:
            n += 1
            unique = f"{base}-{n}"
        taken.add(unique)
        endpoints.append(Endpoint(unique, url))
    if not endpoints:
        raise ValueError("--endpoints: no url given")
    return endpoints


# --------------------------------------------------------------------------- shapes (pure)


def header(headers: Any, name: str) -> str | None:
    """A header value, whatever the case of its name (plain dicts in tests, CIMultiDict live)."""
    getter = getattr(headers, "getone", None)
    if getter is not None:
        return getter(name, None)
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def detect_shape(body: Any, headers: Any) -> str:
    """The shape of an endpoint's first page (see the module docstring)."""
    if isinstance(body, dict) and isinstance(body.get("items"), list) and "next" in body:
        return CURSOR
    if isinstance(body, dict) and isinstance(body.get("data"), list) and isinstance(body.get("paging"), dict):
        return OFFSET
    if isinstance(body, list) and header(headers, "X-Total-Count") is not None:
        return PAGES
    kind = type(body).__name__
    keys = f" with keys {sorted(body)[:6]}" if isinstance(body, dict) else ""
    raise ShapeError(f"unknown page shape: a JSON {kind}{keys}")


def page_items(shape: str, body: Any) -> list:
    """The items of a page of ``shape``; ShapeError if the page is not in that shape."""
    if shape == CURSOR and isinstance(body, dict) and isinstance(body.get("items"), list):
        return body["items"]
    if shape == OFFSET and isinstance(body, dict) and isinstance(body.get("data"), list):
        return body["data"]
    if shape == PAGES and isinstance(body, list):
        return body
    raise ShapeError(f"a {shape} page must hold its items as {_ITEMS_WHERE[shape]}")


_ITEMS_WHERE = {CURSOR: "an 'items' list", OFFSET: "a 'data' list", PAGES: "a bare JSON list"}


def with_query(url: str, **params: int) -> str:
    """``url`` with ``params`` set in its query (others kept)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += [(k, str(v)) for k, v in params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _count(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ShapeError(f"{what} is not a whole number: {value!r}") from None
    if number < 0:
        raise ShapeError(f"{what} is negative: {number}")
    return number


def next_pages(shape: str, url: str, number: int, body: Any, headers: Any) -> list[tuple[int, str]]:
    """``(page number, url)`` of the pages to fetch after page ``number`` (at ``url``).

    A cursor page names the next one; the first page of the other shapes names all the rest.
    """
    if shape == CURSOR:
        following = body.get("next")
        if following in (None, ""):
            return []
        if not isinstance(following, str):
            raise ShapeError(f"'next' must be a url or null, got {following!r}")
        return [(number + 1, urljoin(url, following))]
    if number != 1:
        return []
    if shape == OFFSET:
        paging = body["paging"]
        total = _count(paging.get("total"), "paging.total")
        limit = _count(paging.get("limit", len(body["data"])), "paging.limit")
        start = _count(paging.get("offset", 0), "paging.offset")
        if limit == 0:
            return []
        return [(2 + i, with_query(url, offset=offset, limit=limit))
                for i, offset in enumerate(range(start + limit, total, limit))]
    total = _count(header(headers, "X-Total-Count"), "X-Total-Count")
    per_page = _count(header(headers, "X-Per-Page") or len(body), "X-Per-Page")
    if per_page == 0:
        return []
    pages = math.ceil(total / per_page)
    return [(n, with_query(url, page=n, per_page=per_page)) for n in range(2, pages + 1)]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Page:
    """One fetched page: its items as the API sent them, and when it was fetched (epoch seconds)."""

    source: str
    shape: str
    number: int
    url: str
    items: tuple
    fetched_at: float


@dataclass(frozen=True)
class FetchError:
    """A page given up after its retries (an ``errors`` record)."""

    source: str
    endpoint: str
    page: int
    url: str
    kind: str
    status: int | None
    message: str
    attempts: int
    at: float

    def as_dict(self) -> dict:
        record = asdict(self)
        record["timestamp"] = utc_iso(int(record.pop("at") * 1_000_000))
        return record


@dataclass
class EndpointReport:
    """How fetching one endpoint went (one per endpoint, when it is done)."""

    source: str
    endpoint: str
    shape: str | None = None
    pages: int = 0
    pages_failed: int = 0
    items: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    failures: int = 0
    breaker_state: str = "closed"
    breaker_opened: int = 0
    breaker_probes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def utc_iso(micros: int, digits: int = 3) -> str:
    """Epoch microseconds as ISO 8601 UTC with ``digits`` (1-6) of the second, truncated: ``...T10:55:25.349Z``."""
    fraction = f"{micros % 1_000_000:06d}"[:digits]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(micros // 1_000_000)) + f".{fraction}Z"


# --------------------------------------------------------------------------- fetching (async)


@dataclass(frozen=True)
class FetchConfig:
    """How politely and persistently to fetch (see the module docstring); seconds throughout."""

    rate: float = 5.0
    headroom: float = 0.1
    timeout: float = 5.0
    max_retries: int = 3
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    max_throttled: int = 10
    breaker_failures: int = 3
    breaker_cooldown: float = 2.0
    page_concurrency: int = 4
    seed: int | None = None

    def __post_init__(self):
        problems = []
        if not self.rate > 0:
            problems.append(f"rate must be positive, got {self.rate}")
        if not 0 <= self.headroom < 1:
            problems.append(f"headroom must be in [0, 1), got {self.headroom}")
        if not self.timeout > 0:
            problems.append(f"timeout must be positive, got {self.timeout}")
        if self.max_retries < 0:
            problems.append(f"max_retries must not be negative, got {self.max_retries}")
        if self.breaker_failures < 1:
            problems.append(f"breaker_failures must be at least 1, got {self.breaker_failures}")
        if self.breaker_cooldown < 0:
            problems.append(f"breaker_cooldown must not be negative, got {self.breaker_cooldown}")
        if self.page_concurrency < 1:
            problems.append(f"page_concurrency must be at least 1, got {self.page_concurrency}")
        if problems:
            raise ValueError("; ".join(problems))


class _PageFailed(Exception):
    def __init__(self, kind: str, status: int | None, message: str, attempts: int = 0):
        super().__init__(message)
        self.kind, self.status, self.message, self.attempts = kind, status, message, attempts


Emit = Callable[[Any], Awaitable[None]]


class EndpointFetcher:
    """Fetches every page of one endpoint with ``session`` (an ``aiohttp.ClientSession``)."""

    def __init__(self, endpoint: Endpoint, session, config: FetchConfig, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.endpoint = endpoint
        self.session = session
        self.config = config
        self.clock, self.wall = clock, wall
        self.bucket = TokenBucket(config.rate * (1 - config.headroom), capacity=1, clock=clock)
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown, clock=clock)
        self.rng = random.Random(config.seed)
        self.report = EndpointReport(endpoint.name, endpoint.url)
        self.shape: str | None = None

    @property
    def given_up(self) -> bool:
        """The breaker opened again after its probe: the endpoint is treated as dead."""
        return self.breaker.state == OPEN and self.breaker.opened >= 2

    async def run(self, emit: Emit) -> EndpointReport:
        """Fetch every page, emitting :class:`Page` and :class:`FetchError` events; the report."""
        started = self.clock()
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait((1, self.endpoint.url))
        workers = [asyncio.create_task(self._work(queue, emit)) for _ in range(self.config.page_concurrency)]
        all_done = asyncio.create_task(queue.join())
        try:
            # Workers only end by raising (a bug, or the reader going away): then stop them all.
            await asyncio.wait([all_done, *workers], return_when=asyncio.FIRST_COMPLETED)
            for worker in workers:
                if worker.done() and worker.exception() is not None:
                    raise worker.exception()
        finally:
            for task in (all_done, *workers):
                task.cancel()
            await asyncio.gather(all_done, *workers, return_exceptions=True)
        self.report.shape = self.shape
        self.report.breaker_state = self.breaker.state
        self.report.breaker_opened = self.breaker.opened
        self.report.breaker_probes = self.breaker.probes
        self.report.seconds = round(self.clock() - started, 3)
        if self.report.pages_failed:
            LOG.warning("endpoint %s: %s of %s pages failed (breaker %s, opened %s times)", self.endpoint.name,
                        self.report.pages_failed, self.report.pages + self.report.pages_failed,
                        self.breaker.state, self.breaker.opened)
        return self.report

    async def _work(self, queue: asyncio.Queue, emit: Emit) -> None:
        while True:
            number, url = await queue.get()
            try:
                await self._page(number, url, queue, emit)
            finally:
                queue.task_done()

    async def _page(self, number: int, url: str, queue: asyncio.Queue, emit: Emit) -> None:
        try:
            body, headers, attempts = await self._get(url)
            if self.shape is None:
                self.shape = detect_shape(body, headers)
            items = page_items(self.shape, body)
            following = next_pages(self.shape, url, number, body, headers)
        except _PageFailed as failed:
            await self._fail(emit, number, url, failed, failed.attempts)
            return
        except ShapeError as exc:
            await self._fail(emit, number, url, _PageFailed(BAD_RESPONSE, 200, str(exc)), attempts)
            return
        for page in following:
            queue.put_nowait(page)
        self.report.pages += 1
        self.report.items += len(items)
        await emit(Page(self.endpoint.name, self.shape, number, url, tuple(items), self.wall()))

    async def _fail(self, emit: Emit, number: int, url: str, failed: _PageFailed, attempts: int) -> None:
        self.report.pages_failed += 1
        await emit(FetchError(self.endpoint.name, self.endpoint.url, number, url, failed.kind, failed.status,
                              failed.message, attempts, self.wall()))

    async def _get(self, url: str) -> tuple[Any, Any, int]:
        """``(JSON body, headers, attempts)`` of a successful GET; raises :class:`_PageFailed`."""
        import aiohttp  # here, not at the top: every quotes run imports this module and never fetches

        attempts = throttled = 0
        last: _PageFailed | None = None
        while True:
            if self.given_up:
                before = f" (last failure: {last.message})" if last else ""
                raise _attempted(_PageFailed(CIRCUIT_OPEN, None, f"circuit breaker open: endpoint given up{before}"),
                                 attempts)
            if not self.breaker.allow():
                await asyncio.sleep(max(self.breaker.retry_in(), 0.02))
                continue
            await asyncio.sleep(self.bucket.reserve())
            attempts += 1
            self.report.requests += 1
            from transforms.tracing import http_span  # imports Beam: only once a request is made

            try:
                with http_span("GET", url) as traced:
                    async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=self.config.timeout)) as response:
                        status = response.status
                        traced.status(status)
                        text = await response.text()
                        headers = response.headers
            except asyncio.TimeoutError:
                last = _PageFailed(TIMEOUT, None, f"no answer within {self.config.timeout:g} s")
            except aiohttp.ClientError as exc:
                last = _PageFailed(CONNECTION_ERROR, None, f"{type(exc).__name__}: {exc}")
            else:
                if status == 429:
                    self.breaker.record_success()  # it answered: alive, only busy
                    throttled += 1
                    self.report.rate_limited += 1
                    wait = retry_after_seconds(header(headers, "Retry-After"))
                    if throttled > self.config.max_throttled:
                        raise _attempted(_PageFailed(RATE_LIMITED, 429, f"still 429 after {throttled} waits"), attempts)
                    self.bucket.pause_until(self.clock() + wait)
                    attempts -= 1  # a throttled request is not an attempt: it was never served
                    continue
                if status >= 500:
                    last = _PageFailed(SERVER_ERROR, status, f"HTTP {status}")
                elif status >= 400:
                    self.breaker.record_success()
                    raise _attempted(_PageFailed(CLIENT_ERROR, status, f"HTTP {status}: {text[:200]}"), attempts)
                else:
                    self.breaker.record_success()
                    try:
                        return json.loads(text), headers, attempts
                    except ValueError as exc:
                        raise _attempted(_PageFailed(BAD_RESPONSE, status, f"not JSON: {exc}"), attempts) from None
            self.breaker.record_failure()
            self.report.failures += 1
            if attempts > self.config.max_retries:
                last.message += f" (after {attempts} attempts)"
                raise _attempted(last, attempts)
            self.report.retries += 1
            await asyncio.sleep(backoff_delay(attempts, self.config.backoff_initial, self.config.backoff_max,
                                              self.rng.random()))


def _attempted(failed: _PageFailed, attempts: int) -> _PageFailed:
    failed.attempts = attempts
    return failed


async def fetch_all(endpoints: Sequence[Endpoint], config: FetchConfig, emit: Emit, *,
                    session_factory: Callable[[], Any] | None = None, **clocks) -> list[EndpointReport]:
    """Fetch every endpoint concurrently; emits events, then each endpoint's :class:`EndpointReport`."""
    import aiohttp  # see EndpointFetcher._get

    factory = session_factory or (lambda: aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit_per_host=config.page_concurrency)))
    async with factory() as session:
        fetchers = [EndpointFetcher(endpoint, session, config, **clocks) for endpoint in endpoints]
        reports = await asyncio.gather(*(fetcher.run(emit) for fetcher in fetchers))
    for report in reports:
        await emit(report)
    return list(reports)
