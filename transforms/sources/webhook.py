"""Webhook ingestion: quotes pushed over HTTP, read as a :class:`transforms.sources.feeds.QuoteFeed`.

:class:`WebhookServer` serves, on 127.0.0.1 only (aiohttp, in a background thread with its own
event loop):

* ``POST /webhook``: one quote as a JSON object, or a JSON array of them, with the live feed's
  field names (aliases too; ``seq`` is not needed, the endpoint numbers what it accepts). The
  body is checked all or nothing, by the same rules the normalize stage applies
  (:mod:`transforms.quotes.rules`), so every accepted quote becomes a mid price. Answers:
  202 ``{"accepted": n, "seq": [first, last]}``; 400 not UTF-8 JSON, or an item that is not an
  object; 401 (with ``WWW-Authenticate: Bearer``) a missing or wrong bearer token, when one is
  configured; 413 a body over the size limit (or more quotes than the buffer holds); 422
  ``{"error": reason, "index": i, "field": name}`` a quote that breaks a rule; 429 (with
  ``Retry-After: 1``) the buffer cannot take the whole body now; 503 the run is stopping.
* ``GET /healthz``: 200 ``{"status": "ok", "buffered": n}`` (503 ``stopping`` once closed).
* ``GET /metrics``: Prometheus text format, from the server's own ``CollectorRegistry``.

Accepted quotes wait in a bounded, thread-safe :class:`WebhookInbox` until the pipeline reads
them. :class:`WebhookFeed` is that inbox as a feed (position = the endpoint's sequence number):
Beam reads it with :class:`transforms.sources.stage.ReadFeed`, in the process that runs the server,
reaching the inbox by name through this module's registry (a DoFn is pickled; an inbox is not).
When the run stops, the feed closes the inbox (later requests get 503) and drains it: nothing
answered 202 is lost on a clean stop.

The decisions (token, size, body, buffer) are plain functions of :class:`WebhookPolicy` and
:func:`admit`, tested without sockets.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import socket
import threading
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

from transforms.quotes.rules import (
    LIVE,
    PriceRule,
    Rejected,
    parse_content,
    parse_latency_us,
    parse_timestamp,
    reject_code,
)
from transforms.sources.csv_blocks import ALIASES, FIELDS
from transforms.sources.feeds import FeedBlock, Stopping, never
from transforms.sources.live import Message, frames_to_batch, newest_arrival, parse_frame

LOG = logging.getLogger(__name__)

HOST = "127.0.0.1"
PATH = "/webhook"
#: ``--webhook_max_body`` and ``--webhook_buffer`` defaults.
DEFAULT_MAX_BODY = 1 << 20
DEFAULT_BUFFER = 10_000
RETRY_AFTER_SECONDS = 1

_CANONICAL = {**{name: name for name in FIELDS}, **ALIASES}


class WebhookError(RuntimeError):
    """The webhook feed has no endpoint to read from."""


def endpoint_url(port: int) -> str:
    """``http://127.0.0.1:PORT/webhook``: where quotes are posted (what dead letters name as source)."""
    return f"http://{HOST}:{port}{PATH}"


# --------------------------------------------------------------------------- decisions (pure)


@dataclass(frozen=True)
class Verdict:
    """The answer to one ``POST /webhook``.

    ``reason`` names why it was refused (a metrics label: ``bad_json``, a reject code, ...; None
    when accepted); ``quotes`` are the checked ``(raw text, fields)`` of a body not yet admitted.
    """

    status: int
    body: Mapping
    reason: str | None = None
    quotes: tuple[tuple[str, dict], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (compared in constant time)."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode("utf-8"), token.encode("utf-8"))


def field_of(reason: str) -> str | None:
    """The quote field a reject reason is about (its first word, e.g. ``bid_price '-1' is ...``)."""
    detail = reason.partition(": ")[2]
    return _CANONICAL.get(detail.split(" ", 1)[0])


def check_quote(item: dict, prices: PriceRule, default_symbol: str) -> tuple[str, dict]:
    """``(raw text, fields)`` of one quote object, or :class:`Rejected` with the first rule it breaks.

    The rules are the pipeline's, in its order: field types (:func:`transforms.sources.live.parse_frame`),
    timestamp, latency, then symbol, prices, sizes, tenant and bid <= ask
    (:func:`transforms.quotes.rules.parse_content`). A quote without a symbol gets ``default_symbol``,
    as a CSV without a symbol column does.
    """
    text = json.dumps(item, separators=(",", ":"))  # numbers were read as their exact text
    _seq, fields, reason, eos = parse_frame(text)
    if reason:
        raise Rejected(reject_code(reason), reason.partition(": ")[2])
    if eos:
        raise Rejected("bad_field", "eos: an end-of-stream marker is not a quote")
    if fields.get("symbol") is None:
        fields["symbol"] = default_symbol
    parse_timestamp(fields.get("timestamp") or "")
    if fields.get("latency_ms") is not None:
        parse_latency_us(fields["latency_ms"])
    parse_content(fields, prices)
    return text, fields


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class WebhookPolicy:
    """What ``POST /webhook`` accepts.

    Attributes:
        prices: the schema's decimal for prices (:func:`transforms.quotes.normalize.price_rule`).
        default_symbol: the symbol of a quote without one.
        token: the bearer token requests must carry (None: none needed).
        max_body: the largest body, in bytes.
    """

    prices: PriceRule
    default_symbol: str = "UNKNOWN"
    token: str | None = None
    max_body: int = DEFAULT_MAX_BODY

    def authorize(self, authorization: str | None) -> Verdict | None:
        """401 when a token is required and the header does not carry it; None: go on."""
        if self.token is None or token_matches(authorization, self.token):
            return None
        return Verdict(401, {"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"},
                       "unauthorized", headers={"WWW-Authenticate": "Bearer"})

    def too_large(self) -> Verdict:
        return Verdict(413, {"error": f"the body is larger than {self.max_body} bytes"}, "body_too_large")

    def check_length(self, content_length: int | None) -> Verdict | None:
        """413 when the declared ``Content-Length`` is over the limit; None: go on (and count the
        bytes actually read)."""
        return self.too_large() if content_length is not None and content_length > self.max_body else None

    def check_body(self, body: bytes) -> Verdict:
        """400, 413 or 422 for a body that cannot be taken; otherwise a 202 verdict with its quotes,
        still to be :func:`admit` ted."""
        if len(body) > self.max_body:
            return self.too_large()
        try:
            parsed = json.loads(body.decode("utf-8"), parse_float=str, parse_int=str, parse_constant=_no_constants)
        except UnicodeDecodeError as exc:
            return Verdict(400, {"error": f"the body is not UTF-8 ({exc.reason} at byte {exc.start})"}, "bad_json")
        except json.JSONDecodeError as exc:
            return Verdict(400, {"error": f"invalid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"},
                           "bad_json")
        except ValueError as exc:  # NaN, Infinity
            return Verdict(400, {"error": f"invalid JSON: {exc}"}, "bad_json")
        items = parsed if isinstance(parsed, list) else [parsed]
        if not items:
            return Verdict(400, {"error": "the array is empty: send a quote object or an array of them"}, "bad_json")
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                kind = "null" if item is None else type(item).__name__
                return Verdict(400, {"error": f"quote {index} is a {kind}, not a JSON object", "index": index},
                               "not_an_object")
        quotes = []
        for index, item in enumerate(items):
            try:
                quotes.append(check_quote(item, self.prices, self.default_symbol))
            except Rejected as rejected:
                body = {"error": rejected.reason, "index": index, "field": field_of(rejected.reason)}
                return Verdict(422, body, rejected.code)
        return Verdict(202, {}, quotes=tuple(quotes))


def admit(inbox: "WebhookInbox", verdict: Verdict) -> Verdict:
    """Put a checked body's quotes in the inbox: 202 with their sequence numbers, or 413 (more
    than the inbox can ever hold), 429 (not now) or 503 (closed). Other verdicts pass through."""
    if verdict.status != 202 or not verdict.quotes:
        return verdict
    count = len(verdict.quotes)
    if count > inbox.capacity:
        return Verdict(413, {"error": f"{count} quotes is more than the buffer holds ({inbox.capacity}); "
                                      "send them in smaller requests"}, "too_many_quotes")
    try:
        first, last = inbox.offer(verdict.quotes)
    except InboxFull:
        return Verdict(429, {"error": f"the buffer cannot take {count} more quotes now "
                                      f"({len(inbox)} of {inbox.capacity} waiting); retry later"},
                       "buffer_full", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    except InboxClosed:
        return Verdict(503, {"error": "the run is stopping: no more quotes are accepted"}, "stopping")
    return Verdict(202, {"accepted": count, "seq": [first, last]})


# --------------------------------------------------------------------------- the buffer


class InboxFull(Exception):
    """The inbox cannot take the whole body now."""


class InboxClosed(Exception):
    """The inbox is closed: the run is stopping."""


class WebhookInbox:
    """Accepted quotes waiting for the pipeline, numbered 0, 1, ... in order; bounded and thread-safe.

    The server thread :meth:`offer` s; the feed :meth:`take` s from a position, and a quote
    leaves the inbox only when the feed asks for a later position (so a block that was taken but
    not processed is taken again by a resumed reader). It also tallies ``POST /webhook`` answers.
    """

    def __init__(self, capacity: int = DEFAULT_BUFFER):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._waiting: deque[Message] = deque()
        self._changed = threading.Condition()
        self._next_seq = 0
        self._closed = False
        self._accepted = 0
        self._answers: Counter[int] = Counter()

    def __len__(self) -> int:
        with self._changed:
            return len(self._waiting)

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, quotes: Sequence[tuple[str, dict]]) -> tuple[int, int]:
        """Take every quote or none: the first and last sequence numbers given to them.

        Raises :class:`InboxFull` or :class:`InboxClosed`.
        """
        with self._changed:
            if self._closed:
                raise InboxClosed()
            if len(self._waiting) + len(quotes) > self.capacity:
                raise InboxFull()
            first = self._next_seq
            self._waiting.extend(Message(first + i, text, fields) for i, (text, fields) in enumerate(quotes))
            self._next_seq += len(quotes)
            self._accepted += len(quotes)
            self._changed.notify_all()
            return first, self._next_seq - 1

    def take(self, start: int, max_rows: int, timeout: float = 0.0) -> list[Message]:
        """Up to ``max_rows`` quotes from sequence number ``start`` on, waiting up to ``timeout``
        seconds for one; the quotes before ``start`` are dropped (the reader is done with them)."""
        with self._changed:
            while self._waiting and self._waiting[0].seq < start:
                self._waiting.popleft()
            if not self._waiting and timeout > 0 and not self._closed:
                self._changed.wait(timeout)
            return [m for m in itertools.islice(self._waiting, max_rows) if m.seq >= start]

    def close(self) -> None:
        """Accept nothing more (what is waiting can still be taken)."""
        with self._changed:
            if not self._closed:
                LOG.info("webhook: closed with %s quotes still to read", len(self._waiting))
            self._closed = True
            self._changed.notify_all()

    def count_answer(self, status: int) -> None:
        with self._changed:
            self._answers[status] += 1

    def stats(self) -> dict:
        """Quotes accepted, and ``POST /webhook`` requests accepted and refused (by status)."""
        with self._changed:
            return {
                "webhook_quotes_accepted": self._accepted,
                "webhook_requests_accepted": self._answers[202],
                "webhook_requests_rejected": {str(s): n for s, n in sorted(self._answers.items()) if s != 202},
            }


_INBOXES: dict[str, WebhookInbox] = {}
_REGISTRY_LOCK = threading.Lock()


def find_inbox(name: str) -> WebhookInbox:
    """The inbox registered as ``name`` in this process; raises :class:`WebhookError`."""
    with _REGISTRY_LOCK:
        inbox = _INBOXES.get(name)
    if inbox is None:
        raise WebhookError(f"no webhook inbox named {name!r} in this process: start a WebhookServer and "
                           "register its inbox (registered_inbox) before the pipeline runs")
    return inbox


@contextmanager
def registered_inbox(name: str, inbox: WebhookInbox) -> Iterator[WebhookInbox]:
    """Make ``inbox`` the one :class:`WebhookFeed` (``name``) reads, for the ``with`` block."""
    with _REGISTRY_LOCK:
        if name in _INBOXES:
            raise WebhookError(f"a webhook inbox named {name!r} is already registered")
        _INBOXES[name] = inbox
    try:
        yield inbox
    finally:
        with _REGISTRY_LOCK:
            _INBOXES.pop(name, None)


# --------------------------------------------------------------------------- the feed


@dataclass
class WebhookFeed:
    """The registered inbox ``name`` as a :class:`~transforms.sources.feeds.QuoteFeed`; position = seq.

    Attributes:
        name: the inbox's registry name (the CLI uses the run id).
        source: what dead letters name as their source (the endpoint's url).
        max_rows: at most this many quotes per block; a block holds what is waiting, so blocks
            stay small at low rates and grow when quotes come fast.
        poll_seconds: how long to wait for a quote before checking ``stopping()`` again.
    """

    name: str
    source: str = "webhook"
    max_rows: int = 2000
    poll_seconds: float = 0.05
    mode: str = LIVE
    _records_in: int = field(default=0, repr=False, compare=False)
    _newest_arrival_us: int | None = field(default=None, repr=False, compare=False)
    _inbox: WebhookInbox | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.max_rows < 1:
            raise ValueError("max_rows must be at least 1")

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,)

    def blocks(self, start: int = 0, stopping: Stopping = never) -> Iterator[FeedBlock]:
        """Blocks of accepted quotes from ``start`` on. Once ``stopping()``, the inbox is closed
        and drained: the blocks end with the last quote answered 202."""
        self._inbox = find_inbox(self.name)  # checked now, not when the iteration begins
        return self._blocks(self._inbox, start, stopping)

    def _blocks(self, inbox: WebhookInbox, position: int, stopping: Stopping) -> Iterator[FeedBlock]:
        while True:
            stop = stopping()
            if stop:
                inbox.close()
            messages = inbox.take(position, self.max_rows, 0.0 if stop else self.poll_seconds)
            if messages:
                yield self._block(messages)
                position = messages[-1].seq + 1
            elif stop:
                return

    def _block(self, messages: list[Message]) -> FeedBlock:
        batch = frames_to_batch(messages, self._newest_arrival_us)
        newest = newest_arrival(batch)
        if newest is not None:
            self._newest_arrival_us = newest
        self._records_in += len(messages)
        return FeedBlock(batch, messages[0].seq, messages[-1].seq + 1, self.sources)

    def stats(self) -> dict:
        """``records_in`` (quotes yielded) and the inbox's request counts (see WebhookInbox.stats)."""
        stats = {"records_in": self._records_in}
        if self._inbox is not None:
            stats.update(self._inbox.stats())
        return stats


# --------------------------------------------------------------------------- the server


async def _read_at_most(request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is longer than ``limit`` bytes."""
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


class WebhookServer:
    """The endpoint on 127.0.0.1:``port`` (0: any free port), feeding ``inbox``.

    The port is bound when the server is made (an ``OSError`` if it is taken), so a caller can
    report it before anything runs; :meth:`start` serves it from a background thread.
    aiohttp and prometheus_client are imported here, not at the top: the feed half of this
    module (unpickled wherever the pipeline runs) needs neither.
    """

    def __init__(self, inbox: WebhookInbox, policy: WebhookPolicy, port: int = 0):
        from prometheus_client import CollectorRegistry, Gauge
        from prometheus_client import Counter as Count

        self.inbox = inbox
        self.policy = policy
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((HOST, port))
        except OSError:
            self._socket.close()
            raise
        self.port: int = self._socket.getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self.registry = CollectorRegistry()
        self._requests = Count("webhook_requests", "HTTP requests answered, by path and status code",
                               ["path", "status"], registry=self.registry)
        self._accepted = Count("webhook_quotes_accepted", "quotes accepted (202) into the buffer",
                               registry=self.registry)
        self._rejected = Count("webhook_rejected_requests", "POST /webhook requests refused, by reason",
                               ["reason"], registry=self.registry)
        Gauge("webhook_buffer_quotes", "quotes accepted and not yet read by the pipeline",
              registry=self.registry).set_function(lambda: len(inbox))
        Gauge("webhook_buffer_capacity", "the most quotes the buffer holds (--webhook_buffer)",
              registry=self.registry).set(inbox.capacity)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> "WebhookServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Serve from a background thread; returns once the endpoint answers."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        LOG.info("webhook: serving %s%s (buffer %s quotes, body up to %s bytes%s)", self.url, PATH,
                 self.inbox.capacity, self.policy.max_body, ", bearer token" if self.policy.token else "")

    def close(self) -> None:
        """Stop serving (requests in flight get 2 s to finish) and free the port."""
        if self._loop is None:
            self._socket.close()
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None
        self._socket.close()
        LOG.info("webhook: stopped; %s", self.inbox.stats())

    async def _serve(self) -> None:
        from aiohttp import web

        @web.middleware
        async def answer_errors_and_count(request, handler):
            return await self._answer_errors_and_count(request, handler)

        app = web.Application(middlewares=[answer_errors_and_count])
        app.router.add_post(PATH, self._post)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket, shutdown_timeout=2.0).start()

    def _known_path(self, path: str) -> str:
        return path if path in (PATH, "/healthz", "/metrics") else "other"

    async def _answer_errors_and_count(self, request, handler):
        from aiohttp import web

        try:
            response = await handler(request)
        except web.HTTPException as exc:  # the router's 404 and 405, answered as JSON
            allowed = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
            hint = f"try POST {PATH}, GET /healthz or GET /metrics"
            response = _json(exc.status, {"error": f"{exc.reason}: {request.method} {request.path}; {hint}"}, allowed)
        self._requests.labels(self._known_path(request.path), str(response.status)).inc()
        return response

    async def _post(self, request):
        verdict = self.policy.authorize(request.headers.get("Authorization"))
        verdict = verdict or self.policy.check_length(request.content_length)
        if verdict is None:
            body = await _read_at_most(request, self.policy.max_body)
            verdict = self.policy.too_large() if body is None else admit(self.inbox, self.policy.check_body(body))
        self.inbox.count_answer(verdict.status)
        if verdict.reason is None:
            self._accepted.inc(verdict.body["accepted"])
        else:
            self._rejected.labels(verdict.reason).inc()
            LOG.debug("webhook: %s %s", verdict.status, verdict.body.get("error"))
        return _json(verdict.status, verdict.body, verdict.headers)

    async def _healthz(self, request):
        if self.inbox.closed:
            return _json(503, {"status": "stopping", "buffered": len(self.inbox)})
        return _json(200, {"status": "ok", "buffered": len(self.inbox)})

    async def _metrics(self, request):
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _json(status: int, body: Mapping, headers: Mapping[str, str] | None = None):
    from aiohttp import web

    return web.Response(status=status, body=(json.dumps(body) + "\n").encode("utf-8"),
                        headers={"Content-Type": "application/json", **(headers or {})})
