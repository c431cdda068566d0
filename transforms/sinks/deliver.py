"""deliver: records to a downstream HTTP API, in batches, rate-limited, retried, never applied twice.

::

    records (JSON-serialisable values) --DeliverToApi(url)--> delivered:    {"key", "record", "status", "attempts"}
                                                          \\-> dead_letters: {"key", "record", "reason", "attempts"}
                                                          \\-> report:       one dict of DeliveryStats figures

Every record gets an *idempotency key*: the sha256 of ``key_fn(record)`` (default: the record
itself) as canonical JSON. The same record has the same key in every run, so a retried batch, a
retried bundle or a whole run restarted after a crash resends the same keys, and the server
answers ``duplicate`` instead of storing them again (a ``duplicate`` counts as delivered). The
API contract is ``POST url`` with ``{"records": [{"key": k, "data": record}, ...]}`` answered by
``{"results": [{"key": k, "status": "accepted" | "duplicate" | "rejected", "reason"?}, ...]}``
(see :class:`beam_pipeline.devtools.mock_api.MockDownstreamApi`).

Requests go at most ``rate`` a second (:class:`~transforms.resilience.TokenBucket`). A 429 pauses
the bucket for its ``Retry-After`` and resends the records (not a failure). A 5xx, a timeout or a
connection error is a failure: its records come back after :func:`~transforms.resilience.backoff_delay`
and go to the dead letters after ``max_retries`` retries (``http_503 after 6 attempts``). Records
wait in a bounded outbox: a record being retried does not hold up the others, and ``process``
sends (blocking) rather than let the backlog grow past ``max_backlog``. A record the server
rejects, or any other 4xx, is a dead letter at once (``rejected: <reason>``, ``http_400: ...``).

While a bundle runs, a daemon thread logs one report line a second (processed, rate/s, mean
processing time, error rate, backlog, rate-limit hits); the bundle's last line is logged when it
finishes, and its :class:`DeliveryStats` figures go to the ``report`` output, combined into one
dict per run. All outputs are in the global window, at their input record's timestamp.

Pure parts (keys, batches, response classification, stats, the report line) have no I/O and no
Beam; :class:`Deliverer` is the plain-Python sender (``requests``), and ``_DeliverFn`` wraps it.
Runs on any runner; each worker has its own rate limit, so the API sees at most
``rate x workers`` requests a second. Locally::

    records | "Deliver" >> DeliverToApi("http://127.0.0.1:8080/records")
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import requests

from transforms.resilience import TokenBucket, backoff_delay, retry_after_seconds
from transforms.tracing import http_span

LOG = logging.getLogger(__name__)

DELIVERED, DEAD_LETTERS, REPORT = "delivered", "dead_letters", "report"

# Per-record verdicts of one request.
ACCEPTED, DUPLICATE, REJECTED, RETRY = "accepted", "duplicate", "rejected", "retry"
DEAD_LETTER = "dead_letter"  # a settled record's status when it was not delivered

# A record is sent at most this many times while the server keeps answering 429, so a server
# that never lets anything through cannot keep a bundle alive for ever.
RATE_LIMIT_PATIENCE = 30
_REASON_CHARS = 200  # an error message is cut to this length in a dead letter's reason


# --------------------------------------------------------------------------------------------
# Pure: keys, batches, verdicts


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no spaces: equal values, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_key(record: Any, key_fn: Callable[[Any], Any] | None = None) -> str:
    """The idempotency key of ``record``: sha256 (hex) of its :func:`canonical_json`, or of
    ``key_fn(record)`` (a string as it is, anything else as canonical JSON).

    The same record has the same key in every run and on every worker, whatever the dict order.
    """
    if key_fn is None:
        return sha256_hex(canonical_json(record))
    material = key_fn(record)
    return sha256_hex(material if isinstance(material, str) else canonical_json(material))


def batch_key(keys: Iterable[str]) -> str:
    """The ``Idempotency-Key`` header of a batch: the same records, the same header."""
    return hashlib.sha256("\n".join(keys).encode("ascii")).hexdigest()


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter), in order."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def take_batch(pending: Sequence[Any], now: float, size: int, ready_at: Callable[[Any], float]) -> list[Any]:
    """The first ``size`` entries of ``pending`` that are ready (``ready_at(entry) <= now``), in order.

    Entries keep the order they came in, so a record back from a retry goes before newer ones.
    """
    return [entry for entry in pending if ready_at(entry) <= now][:size]


@dataclass(frozen=True)
class Verdict:
    """What one request said about one of its records: :data:`ACCEPTED`, :data:`DUPLICATE`,
    :data:`REJECTED` (permanent, with ``reason``) or :data:`RETRY` (with ``reason``)."""

    status: str
    reason: str = ""


@dataclass(frozen=True)
class BatchVerdict:
    """One verdict per record of the batch, in order; ``failed``: the request counts as an error;
    ``rate_limited``: the server answered 429."""

    verdicts: tuple[Verdict, ...]
    failed: bool = False
    rate_limited: bool = False


def _error_message(payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return payload["error"][:_REASON_CHARS]
    return ""


def classify_response(status: int | None, payload: Any, keys: Sequence[str], error: str = "") -> BatchVerdict:
    """The verdict of a request for records ``keys``: ``status`` and parsed JSON ``payload``, or
    ``status`` ``None`` and ``error`` (``"timeout"``, ``"connection_error"``) when no answer came.

    * no answer, 5xx, 408, or a 200 without a result for a record: retry, and the request failed;
    * 429: retry, not a failure;
    * any other 4xx: every record rejected (``http_400: <error>``), the request failed;
    * 200: each record's ``results`` entry, matched by key in order (so a key sent twice in one
      batch takes two results); an unknown status is retried.
    """
    count = len(keys)
    if status is None:
        return BatchVerdict((Verdict(RETRY, error or "no_response"),) * count, failed=True)
    if status == 429:
        return BatchVerdict((Verdict(RETRY, "http_429"),) * count, rate_limited=True)
    if status >= 500 or status == 408 or not 200 <= status < 500:
        return BatchVerdict((Verdict(RETRY, f"http_{status}"),) * count, failed=True)
    if status >= 400:
        message = _error_message(payload)
        reason = f"http_{status}: {message}" if message else f"http_{status}"
        return BatchVerdict((Verdict(REJECTED, reason),) * count, failed=True)
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list):
        return BatchVerdict((Verdict(RETRY, "bad_response"),) * count, failed=True)
    by_key: dict[Any, deque] = defaultdict(deque)
    for result in results:
        if isinstance(result, dict):
            by_key[result.get("key")].append(result)
    verdicts = []
    for key in keys:
        result = by_key[key].popleft() if by_key.get(key) else None
        if result is None:
            verdicts.append(Verdict(RETRY, "missing_result"))
        elif result.get("status") in (ACCEPTED, DUPLICATE):
            verdicts.append(Verdict(result["status"]))
        elif result.get("status") == REJECTED:
            verdicts.append(Verdict(REJECTED, str(result.get("reason") or "no reason given")[:_REASON_CHARS]))
        else:
            verdicts.append(Verdict(RETRY, f"unknown_status {result.get('status')!r}"[:_REASON_CHARS]))
    return BatchVerdict(tuple(verdicts), failed=any(v.status == RETRY for v in verdicts))


# --------------------------------------------------------------------------------------------
# Pure: the report figures


_COUNTS = ("received", "delivered", "duplicates", "dead_lettered", "requests", "failures", "retries",
           "rate_limited")


@dataclass
class DeliveryStats:
    """The report figures of one sender (one bundle), all times on one injected clock.

    ``delivered`` includes ``duplicates`` (records the server had already: delivered before);
    ``processed`` = delivered + dead-lettered; ``backlog`` = received - processed (records the sink
    holds, not settled yet). ``requests`` counts every POST; ``failures`` the ones that failed (5xx,
    timeouts, connection errors, 4xx other than 429); ``rate_limited`` the 429s; ``retries`` the
    record sends that follow a failure or a 429. Processing time runs from a record's first send
    to its outcome.
    """

    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    requests: int = 0
    failures: int = 0
    retries: int = 0
    rate_limited: int = 0
    processing_seconds: float = 0.0
    max_backlog: int = 0
    started: float | None = None
    ended: float | None = None
    recent: deque = field(default_factory=deque, repr=False)  # (time, records settled), last second

    @property
    def processed(self) -> int:
        return self.delivered + self.dead_lettered

    @property
    def backlog(self) -> int:
        return self.received - self.processed

    def receive(self, now: float, count: int = 1) -> None:
        if self.started is None:
            self.started = now
        self.received += count
        self.max_backlog = max(self.max_backlog, self.backlog)

    def request(self, verdict: BatchVerdict) -> None:
        self.requests += 1
        self.failures += verdict.failed
        self.rate_limited += verdict.rate_limited

    def settle(self, now: float, status: str, seconds: float) -> None:
        """One record's outcome: :data:`ACCEPTED`, :data:`DUPLICATE` or :data:`DEAD_LETTER`."""
        if status == DEAD_LETTER:
            self.dead_lettered += 1
        else:
            self.delivered += 1
            self.duplicates += status == DUPLICATE
        self.processing_seconds += max(seconds, 0.0)
        if self.recent and self.recent[-1][0] == now:
            self.recent[-1] = (now, self.recent[-1][1] + 1)
        else:
            self.recent.append((now, 1))
        self._forget(now)

    def finish(self, now: float) -> None:
        self.ended = now

    def _forget(self, now: float) -> None:
        while self.recent and self.recent[0][0] <= now - 1.0:
            self.recent.popleft()

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """The figures as a dict (see :func:`derive_figures`), as of ``now`` (default: the end)."""
        now = self.ended if now is None else now
        if now is None:
            raise ValueError("summary() needs now while the stats are not finished")
        self._forget(now)
        totals = {name: getattr(self, name) for name in _COUNTS}
        totals["processing_seconds"] = self.processing_seconds
        totals["max_backlog"] = self.max_backlog
        totals["seconds"] = 0.0 if self.started is None else max(now - self.started, 0.0)
        totals["rate_last_second"] = float(sum(count for _, count in self.recent))
        return derive_figures(totals)


def derive_figures(totals: Mapping[str, Any]) -> dict[str, Any]:
    """Raw totals (the counts, ``processing_seconds``, ``max_backlog``, ``seconds``,
    ``rate_last_second``) -> the report dict, with ``processed``, ``backlog``, ``error_rate``
    (failures / requests), ``mean_processing_seconds`` and ``rate_per_second`` over ``seconds``."""
    figures: dict[str, Any] = {name: int(totals.get(name, 0)) for name in _COUNTS}
    figures["processed"] = figures["delivered"] + figures["dead_lettered"]
    figures["backlog"] = figures["received"] - figures["processed"]
    figures["max_backlog"] = int(totals.get("max_backlog", 0))
    figures["processing_seconds"] = round(float(totals.get("processing_seconds", 0.0)), 6)
    figures["seconds"] = round(float(totals.get("seconds", 0.0)), 6)
    figures["error_rate"] = round(figures["failures"] / figures["requests"], 6) if figures["requests"] else 0.0
    processed, seconds = figures["processed"], figures["seconds"]
    figures["mean_processing_seconds"] = round(figures["processing_seconds"] / processed, 6) if processed else 0.0
    figures["rate_per_second"] = round(processed / seconds, 3) if seconds > 0 else 0.0
    figures["rate_last_second"] = round(float(totals.get("rate_last_second", 0.0)), 3)
    return figures


def merge_figures(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several report dicts (one per bundle) -> one: counts, times and last-second rates added,
    ``max_backlog`` the largest, the ratios recomputed. No reports: all zeros."""
    totals: dict[str, Any] = defaultdict(float)
    for report in reports:
        for name in (*_COUNTS, "processing_seconds", "seconds", "rate_last_second"):
            totals[name] += report.get(name, 0)
        totals["max_backlog"] = max(totals["max_backlog"], report.get("max_backlog", 0))
    return derive_figures(totals)


def format_report(figures: Mapping[str, Any], label: str = "deliver") -> str:
    """The one-line report of a :func:`derive_figures` dict."""
    return (
        f"{label}: processed {figures['processed']} (delivered {figures['delivered']}, duplicates "
        f"{figures['duplicates']}, dead-lettered {figures['dead_lettered']}) | {figures['rate_per_second']:.1f} rec/s "
        f"(last 1 s: {figures['rate_last_second']:.0f}) | mean {figures['mean_processing_seconds'] * 1000:.0f} ms/record"
        f" | errors {figures['error_rate']:.1%} ({figures['failures']}/{figures['requests']} requests) | backlog "
        f"{figures['backlog']} (max {figures['max_backlog']}) | rate-limited {figures['rate_limited']}"
        f" | retries {figures['retries']}"
    )


# --------------------------------------------------------------------------------------------
# The sender (plain Python, blocking)


@dataclass(frozen=True)
class DeliveryConfig:
    """How :class:`Deliverer` sends; seconds throughout."""

    url: str
    batch_size: int = 20
    rate: float = 8.0
    max_retries: int = 5
    timeout: float = 5.0
    key_fn: Callable[[Any], Any] | None = None
    max_backlog: int = 100
    backoff_initial: float = 0.5
    backoff_max: float = 8.0

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.rate > 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must not be negative, got {self.max_retries}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.max_backlog < 1:
            raise ValueError(f"max_backlog must be at least 1, got {self.max_backlog}")
        if self.backoff_initial < 0 or self.backoff_max < self.backoff_initial:
            raise ValueError(f"need 0 <= backoff_initial <= backoff_max, got {self.backoff_initial} and {self.backoff_max}")


@dataclass
class _Pending:
    key: str
    record: Any
    timestamp: Any
    first_sent: float | None = None
    attempts: int = 0  # sends
    failures: int = 0  # sends that failed (not 429)
    rate_limited: int = 0  # sends answered 429
    ready_at: float = float("-inf")


@dataclass(frozen=True)
class Settled:
    """A record's outcome: ``status`` :data:`ACCEPTED`, :data:`DUPLICATE` or :data:`DEAD_LETTER`."""

    key: str
    record: Any
    status: str
    reason: str
    attempts: int
    timestamp: Any = None

    def as_delivered(self) -> dict[str, Any]:
        return {"key": self.key, "record": self.record, "status": self.status, "attempts": self.attempts}

    def as_dead_letter(self) -> dict[str, Any]:
        return {"key": self.key, "record": self.record, "reason": self.reason, "attempts": self.attempts}


def _ready_at(entry: _Pending) -> float:
    return entry.ready_at


class Deliverer:
    """Sends records to ``config.url`` as :mod:`transforms.sinks.deliver` describes; blocking, one thread.

    :meth:`add` takes a record and sends whatever is due (a full batch of ready records, or
    anything while the backlog is at ``max_backlog``); :meth:`flush` sends until nothing is left.
    Both return the records settled meanwhile. :attr:`stats` is the current :class:`DeliveryStats`
    (:meth:`start` begins new ones); :meth:`live_summary` reads it from another thread.
    ``session``: a ``requests.Session`` (default: a new one, closed by :meth:`close`).
    """

    #: The OpenTelemetry context its requests' spans are children of (None: the current one).
    trace_parent = None

    def __init__(self, config: DeliveryConfig, *, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 unit_random: Callable[[], float] = random.random):
        self.config = config
        self._own_session = session is None
        self._session = requests.Session() if session is None else session
        self._clock = clock
        self._sleep = sleep
        self._random = unit_random
        self._bucket = TokenBucket(config.rate, 1.0, clock)
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()
        self.stats = DeliveryStats()

    # -- lifecycle

    def start(self) -> None:
        """New stats (a new bundle). Records a failed bundle left are dropped: the runner retries
        that bundle, and resends them with it (under the same keys)."""
        with self._lock:
            self.stats = DeliveryStats()
            self._pending = []

    def finish(self) -> dict[str, Any]:
        """Close the current stats; their figures."""
        with self._lock:
            now = self._clock()
            self.stats.finish(now)
            return self.stats.summary(now)

    def live_summary(self) -> dict[str, Any] | None:
        """The current figures while records are or were flowing and the stats are open, else None."""
        with self._lock:
            if self.stats.received == 0 or self.stats.ended is not None:
                return None
            return self.stats.summary(self._clock())

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    # -- sending

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def add(self, record: Any, timestamp: Any = None) -> list[Settled]:
        """Take ``record`` (with an opaque ``timestamp`` to carry back) and send what is due.

        A record that is not JSON (NaN, a set, a datetime, ...) is a dead letter at once
        (``not_json: ...``): sent in a batch, it would get the whole batch refused.
        """
        settled: list[Settled] = []
        try:
            text = canonical_json(record)
            key = record_key(record, self.config.key_fn) if self.config.key_fn else sha256_hex(text)
        except (TypeError, ValueError) as exc:
            with self._lock:
                now = self._clock()
                self.stats.receive(now)
                self.stats.settle(now, DEAD_LETTER, 0.0)
            settled.append(Settled("", record, DEAD_LETTER, f"not_json: {exc}"[:_REASON_CHARS], 0, timestamp))
            return settled
        with self._lock:
            self._pending.append(_Pending(key, record, timestamp))
            self.stats.receive(self._clock())
        while self._pending and (
            len(self._pending) >= self.config.max_backlog
            or len(take_batch(self._pending, self._clock(), self.config.batch_size, _ready_at)) >= self.config.batch_size
        ):
            settled.extend(self._send_one())
        return settled

    def flush(self) -> list[Settled]:
        """Send until every record is delivered or dead-lettered."""
        settled: list[Settled] = []
        while self._pending:
            settled.extend(self._send_one())
        return settled

    def _send_one(self) -> list[Settled]:
        """Wait for a ready record and a token, send one batch, settle or requeue its records."""
        until_ready = min(entry.ready_at for entry in self._pending) - self._clock()
        if until_ready > 0:
            self._sleep(until_ready)
        wait = self._bucket.reserve()
        if wait > 0:
            self._sleep(wait)
        now = self._clock()
        batch = take_batch(self._pending, now, self.config.batch_size, _ready_at)
        if not batch:  # the clock did not move as far as the sleep said: try again
            return []
        for entry in batch:
            entry.attempts += 1
            if entry.first_sent is None:
                entry.first_sent = now
        keys = [entry.key for entry in batch]
        status, payload, error, retry_after = self._post(keys, batch)
        verdict = classify_response(status, payload, keys, error)
        now = self._clock()
        if verdict.rate_limited:
            self._bucket.pause_until(now + retry_after_seconds(retry_after))
        settled = []
        done = set()
        with self._lock:
            self.stats.request(verdict)
            for entry, one in zip(batch, verdict.verdicts):
                outcome = self._judge(entry, one, now)
                if outcome is None:
                    self.stats.retries += 1
                    continue
                settled.append(outcome)
                done.add(id(entry))
                self.stats.settle(now, outcome.status, now - entry.first_sent)
            self._pending = [entry for entry in self._pending if id(entry) not in done]
        return settled

    def _judge(self, entry: _Pending, verdict: Verdict, now: float) -> Settled | None:
        """A record's outcome after one send, or ``None`` (and ``ready_at`` set) to send it again."""
        if verdict.status in (ACCEPTED, DUPLICATE):
            return self._settle(entry, verdict.status, "")
        if verdict.status == REJECTED:
            reason = verdict.reason if verdict.reason.startswith("http_") else f"rejected: {verdict.reason}"
            return self._settle(entry, DEAD_LETTER, reason)
        if verdict.reason == "http_429":
            entry.rate_limited += 1
            if entry.rate_limited >= RATE_LIMIT_PATIENCE:
                return self._settle(entry, DEAD_LETTER, f"http_429 after {entry.attempts} attempts")
            entry.ready_at = now  # the paused bucket holds it back
            return None
        entry.failures += 1
        if entry.failures > self.config.max_retries:
            return self._settle(entry, DEAD_LETTER, f"{verdict.reason} after {entry.attempts} attempts")
        entry.ready_at = now + backoff_delay(entry.failures, self.config.backoff_initial, self.config.backoff_max,
                                             self._random())
        return None

    @staticmethod
    def _settle(entry: _Pending, status: str, reason: str) -> Settled:
        return Settled(entry.key, entry.record, status, reason, entry.attempts, entry.timestamp)

    def _post(self, keys: list[str], batch: list[_Pending]) -> tuple[int | None, Any, str, str | None]:
        """POST one batch: ``(status, JSON payload or None, error, Retry-After header)``."""
        body = json.dumps({"records": [{"key": entry.key, "data": entry.record} for entry in batch]},
                          separators=(",", ":"), allow_nan=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Idempotency-Key": batch_key(keys)}
        try:
            with http_span("POST", self.config.url, self.trace_parent) as traced:
                response = self._session.post(self.config.url, data=body, timeout=self.config.timeout, headers=headers)
                traced.status(response.status_code)
        except requests.Timeout:
            return None, None, "timeout", None
        except requests.ConnectionError as exc:
            LOG.debug("deliver: connection error: %s", exc)
            return None, None, "connection_error", None
        except requests.RequestException as exc:
            return None, None, f"request_error: {type(exc).__name__}", None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        return response.status_code, payload, "", response.headers.get("Retry-After")


# --------------------------------------------------------------------------------------------
# Beam


