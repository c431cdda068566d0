"""DeliverToApi: keys, batches, verdicts and report figures alone; the sender against a scripted
session on a hand-moved clock; and whole pipelines against the mock downstream API (failures,
429s, rejected records, an unreachable server, a run killed mid-way and restarted)."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.devtools.mock_api import MockDownstreamApi, downstream_failure
from tests.waiting import wait_for
from transforms.sinks.deliver import (
    ACCEPTED,
    DEAD_LETTER,
    DUPLICATE,
    REJECTED,
    RETRY,
    Deliverer,
    DeliveryConfig,
    DeliveryStats,
    Verdict,
    batch_key,
    batched,
    classify_response,
    format_report,
    merge_figures,
    record_key,
    take_batch,
)
from transforms.sinks.stage import DeliverToApi

ROOT = Path(__file__).resolve().parents[3]
RECORDS = [{"id": i, "symbol": "EURUSD", "mid": round(1.1 + i / 10_000, 6)} for i in range(300)]
KEYS = [record_key(record) for record in RECORDS]
REPORT_FIGURES = {"processed", "received", "delivered", "duplicates", "dead_lettered", "requests", "failures",
                  "retries", "rate_limited", "error_rate", "mean_processing_seconds", "processing_seconds",
                  "backlog", "max_backlog", "seconds", "rate_per_second", "rate_last_second"}


# --------------------------------------------------------------------------------------------
# Pure parts


def test_record_key_is_the_sha256_of_canonical_json_whatever_the_key_order():
    a = {"b": 1, "a": [1, 2], "c": {"y": "é", "x": None}}
    b = {"c": {"x": None, "y": "é"}, "a": [1, 2], "b": 1}
    expected = hashlib.sha256('{"a":[1,2],"b":1,"c":{"x":null,"y":"é"}}'.encode()).hexdigest()
    assert record_key(a) == record_key(b) == expected
    assert record_key({"a": 1}) != record_key({"a": 2})
    assert record_key("text") == hashlib.sha256(b'"text"').hexdigest()  # any JSON value, as JSON


def test_record_key_from_a_key_function_hashes_its_string_or_its_json():
    assert record_key({"id": 7, "v": 1}, lambda r: f"id-{r['id']}") == hashlib.sha256(b"id-7").hexdigest()
    assert record_key({"id": 7, "v": 1}, lambda r: r["id"]) == record_key({"id": 7, "v": 2}, lambda r: r["id"])
    assert batch_key(["a", "b"]) == batch_key(["a", "b"]) != batch_key(["b", "a"])


def test_batched_keeps_order_and_a_short_last_batch():
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []
    with pytest.raises(ValueError):
        list(batched([1], 0))


def test_take_batch_takes_the_oldest_ready_entries():
    pending = [("a", 0.0), ("b", 5.0), ("c", 1.0), ("d", 0.0), ("e", 0.0)]
    assert take_batch(pending, 1.0, 3, ready_at=lambda e: e[1]) == [("a", 0.0), ("c", 1.0), ("d", 0.0)]
    assert take_batch(pending, -1.0, 3, ready_at=lambda e: e[1]) == []


def test_classify_a_200_matches_results_by_key_in_order():
    payload = {"results": [
        {"key": "k2", "status": "duplicate"},
        {"key": "k1", "status": "accepted"},
        {"key": "k3", "status": "rejected", "reason": "a record needs an object data"},
        {"key": "k1", "status": "duplicate"},
        {"key": "k5", "status": "weird"},
    ]}
    verdict = classify_response(200, payload, ["k1", "k2", "k3", "k1", "k4", "k5"])
    assert verdict.verdicts == (Verdict(ACCEPTED), Verdict(DUPLICATE), Verdict(REJECTED, "a record needs an object data"),
                                Verdict(DUPLICATE), Verdict(RETRY, "missing_result"),
                                Verdict(RETRY, "unknown_status 'weird'"))
    assert verdict.failed and not verdict.rate_limited
    clean = classify_response(200, {"results": [{"key": "k", "status": "accepted"}]}, ["k"])
    assert clean.verdicts == (Verdict(ACCEPTED),) and not clean.failed


@pytest.mark.parametrize("status, payload, error, verdict, failed, limited", [
    (429, {"error": "slow down"}, "", Verdict(RETRY, "http_429"), False, True),
    (503, {"error": "x"}, "", Verdict(RETRY, "http_503"), True, False),
    (500, None, "", Verdict(RETRY, "http_500"), True, False),
    (408, None, "", Verdict(RETRY, "http_408"), True, False),
    (None, None, "timeout", Verdict(RETRY, "timeout"), True, False),
    (None, None, "connection_error", Verdict(RETRY, "connection_error"), True, False),
    (200, None, "", Verdict(RETRY, "bad_response"), True, False),
    (200, {"results": "no"}, "", Verdict(RETRY, "bad_response"), True, False),
    (400, {"error": "the body is not valid JSON"}, "", Verdict(REJECTED, "http_400: the body is not valid JSON"), True, False),
    (413, None, "", Verdict(REJECTED, "http_413"), True, False),
])
def test_classify_a_whole_batch(status, payload, error, verdict, failed, limited):
    result = classify_response(status, payload, ["a", "b"], error)
    assert result.verdicts == (verdict, verdict)
    assert (result.failed, result.rate_limited) == (failed, limited)


def test_stats_figures_rates_and_backlog():
    stats = DeliveryStats()
    for t in (0.0, 0.0, 0.5, 1.0):
        stats.receive(t)
    stats.request(classify_response(503, None, ["a"]))
    stats.request(classify_response(429, None, ["a"]))
    stats.request(classify_response(200, {"results": []}, []))
    stats.retries += 2
    stats.settle(1.0, ACCEPTED, 0.5)
    stats.settle(1.5, DUPLICATE, 1.0)
    stats.settle(2.5, DEAD_LETTER, 1.5)
    figures = stats.summary(3.0)
    assert set(figures) == REPORT_FIGURES
    assert figures == figures | {
        "received": 4, "processed": 3, "delivered": 2, "duplicates": 1, "dead_lettered": 1, "backlog": 1,
        "max_backlog": 4, "requests": 3, "failures": 1, "rate_limited": 1, "retries": 2,
        "error_rate": pytest.approx(1 / 3, abs=1e-6), "mean_processing_seconds": 1.0, "seconds": 3.0,
        "rate_per_second": 1.0, "rate_last_second": 1.0,  # only the dead letter at 2.5 is within (2.0, 3.0]
    }
    line = format_report(figures)
    for text in ("processed 3", "delivered 2", "duplicates 1", "dead-lettered 1", "1.0 rec/s", "mean 1000 ms/record",
                 "errors 33.3% (1/3 requests)", "backlog 1 (max 4)", "rate-limited 1", "retries 2"):
        assert text in line


def test_merge_figures_adds_counts_and_recomputes_ratios():
    one = DeliveryStats()
    one.receive(0.0)
    one.request(classify_response(503, None, ["a"]))
    one.request(classify_response(200, {"results": [{"key": "a", "status": "accepted"}]}, ["a"]))
    one.settle(2.0, ACCEPTED, 2.0)
    two = DeliveryStats()
    for _ in range(3):
        two.receive(10.0)
    two.request(classify_response(200, {"results": []}, []))
    for _ in range(3):
        two.settle(12.0, ACCEPTED, 1.0)
    merged = merge_figures([one.summary(2.0), two.summary(12.0)])
    assert merged | {"delivered": 4, "requests": 3, "failures": 1, "max_backlog": 3, "seconds": 4.0,
                     "rate_per_second": 1.0, "mean_processing_seconds": 1.25} == merged
    assert merge_figures([])["processed"] == 0


# --------------------------------------------------------------------------------------------
# The sender on a scripted session and a hand-moved clock


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeResponse:
    def __init__(self, status: int, payload=None, headers=None):
        self.status_code = status
        self._payload = payload
        self.headers = headers or {}

    def json(self):
        if self._payload is None:
            raise ValueError("no JSON")
        return self._payload


class ScriptedSession:
    """Answers each POST with the next scripted status; 200 accepts (or marks duplicate) every key."""

    def __init__(self, script: list[int], clock: FakeClock):
        self.script = list(script)
        self.clock = clock
        self.seen: set[str] = set()
        self.posts: list[tuple[float, list[str], str]] = []

    def post(self, url, data, timeout, headers):
        keys = [record["key"] for record in json.loads(data)["records"]]
        self.posts.append((self.clock.now, keys, headers["Idempotency-Key"]))
        status = self.script.pop(0) if self.script else 200
        if status == 429:
            return FakeResponse(429, {"error": "slow down"}, {"Retry-After": "2"})
        if status == 503:
            return FakeResponse(503, {"error": "down"})
        results = [{"key": k, "status": "duplicate" if k in self.seen else "accepted"} for k in keys]
        self.seen.update(keys)
        if status == 500:  # applied, then the answer is lost
            return FakeResponse(500, {"error": "lost"})
        return FakeResponse(200, {"results": results})

    def close(self):
        pass


def make_deliverer(script: list[int], **config) -> tuple[Deliverer, ScriptedSession, FakeClock]:
    clock = FakeClock()
    session = ScriptedSession(script, clock)
    deliverer = Deliverer(DeliveryConfig("http://test/records", **config), session=session, clock=clock,
                          sleep=clock.sleep, unit_random=lambda: 0.0)
    return deliverer, session, clock


def test_a_batch_lost_after_applying_is_resent_with_the_same_keys_and_counts_as_delivered():
    deliverer, session, clock = make_deliverer([500], batch_size=2)
    settled = deliverer.add({"id": 1}) + deliverer.add({"id": 2}) + deliverer.flush()
    assert [(s.status, s.attempts) for s in settled] == [(DUPLICATE, 2), (DUPLICATE, 2)]
    assert session.posts[0][1:] == session.posts[1][1:]  # same keys, same batch header
    assert clock.slept[-1] == pytest.approx(0.25)  # backoff_delay(1, 0.5, ...) with no jitter
    figures = deliverer.finish()
    assert figures | {"delivered": 2, "duplicates": 2, "failures": 1, "retries": 2, "requests": 2} == figures


def test_429_pauses_for_retry_after_and_is_not_a_failure():
    deliverer, session, clock = make_deliverer([429], batch_size=1, rate=100.0)
    settled = deliverer.add({"id": 1})
    assert [s.status for s in settled] == [ACCEPTED]
    assert session.posts[1][0] - session.posts[0][0] >= 2.0  # Retry-After: 2
    figures = deliverer.finish()
    assert (figures["rate_limited"], figures["failures"], figures["error_rate"]) == (1, 0, 0.0)


def test_failures_go_to_the_dead_letters_after_max_retries_with_backoff():
    deliverer, session, clock = make_deliverer([503] * 10, batch_size=1, max_retries=3)
    settled = deliverer.add({"id": 1})
    assert settled == [] and deliverer.backlog == 1  # waiting out its backoff; add() does not block on it
    settled = deliverer.flush()
    assert [(s.status, s.reason, s.attempts) for s in settled] == [(DEAD_LETTER, "http_503 after 4 attempts", 4)]
    assert clock.slept == pytest.approx([0.25, 0.5, 1.0])  # half of 0.5, 1, 2 (jitter 0)
    assert settled[0].as_dead_letter() == {"key": record_key({"id": 1}), "record": {"id": 1},
                                           "reason": "http_503 after 4 attempts", "attempts": 4}


def test_a_record_that_is_not_json_is_a_dead_letter_without_a_request():
    deliverer, session, _ = make_deliverer([], batch_size=1)
    settled = deliverer.add({"mid": float("nan")}) + deliverer.add({"tags": {"a"}}) + deliverer.flush()
    assert [(s.status, s.reason.split(":")[0], s.attempts) for s in settled] == [(DEAD_LETTER, "not_json", 0)] * 2
    assert session.posts == []
    figures = deliverer.finish()
    assert (figures["dead_lettered"], figures["processed"], figures["backlog"]) == (2, 2, 0)


def test_requests_keep_to_the_rate_and_the_backlog_stays_bounded():
    deliverer, session, clock = make_deliverer([503] * 30, batch_size=5, rate=4.0, max_backlog=12)
    backlogs = []
    for i in range(60):
        deliverer.add({"id": i})
        backlogs.append(deliverer.backlog)
    deliverer.flush()
    assert max(backlogs) <= 12 and deliverer.backlog == 0
    times = [at for at, _, _ in session.posts]
    assert all(b - a >= 0.25 - 1e-9 for a, b in zip(times, times[1:]))
    figures = deliverer.finish()
    assert figures["delivered"] + figures["dead_lettered"] == 60 and figures["max_backlog"] <= 12


# --------------------------------------------------------------------------------------------
# Pipelines against the mock downstream API


def seed_with_both_failures(requests: int = 15, rate: float = 0.15) -> int:
    """A seed whose first ``requests`` checked requests fail both before and after applying."""
    return next(seed for seed in range(1000)
                if {"before", "after"} <= {downstream_failure(seed, n, rate) for n in range(requests)})


def write_json(value, path: str) -> None:
    Path(path).write_text(json.dumps(value))


def run_delivery(records, url: str, report_path: Path, **options) -> tuple[beam.Pipeline, dict]:
    """A pipeline (not run yet) delivering ``records``, its outputs, its report written to ``report_path``."""
    pipeline = beam.Pipeline()
    outputs = pipeline | "Records" >> beam.Create(records) | "Deliver" >> DeliverToApi(url, **options)
    _ = outputs["report"] | "WriteReport" >> beam.Map(write_json, str(report_path))
    return pipeline, outputs


def counter(result, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in found)


def assert_exactly_once(api: MockDownstreamApi, keys: list[str]) -> None:
    stored = Counter(key for key, _ in api.accepted())
    assert stored == Counter(keys), "every key stored exactly once, none missing, none extra"
    assert max(stored.values()) == 1


def test_every_record_is_accepted_exactly_once_despite_failures_and_429s(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="transforms.sinks.deliver")
    report_path = tmp_path / "report.json"
    # The client asks for 8 requests a second, the server takes 5: 429s are certain.
    with MockDownstreamApi(rate_limit=5, failure_rate=0.15, seed=seed_with_both_failures()) as api:
        pipeline, outputs = run_delivery(RECORDS, api.url, report_path)
        assert_that(outputs["delivered"] | beam.Map(lambda d: d["key"]), equal_to(KEYS), label="AllDelivered")
        assert_that(outputs["dead_letters"], equal_to([]), label="NoDeadLetters")
        result = pipeline.run()
        result.wait_until_finish()
        server = api.stats()
        assert_exactly_once(api, KEYS)
    report = json.loads(report_path.read_text())
    assert set(report) == REPORT_FIGURES
    assert report | {"received": 300, "processed": 300, "delivered": 300, "dead_lettered": 0, "backlog": 0} == report
    # Resilience was exercised: both failure kinds and 429s happened, and were survived.
    assert server["failed_before_apply"] >= 1 and server["failed_after_apply"] >= 1 and server["rate_limited"] >= 1
    assert report["requests"] == server["requests"]
    assert report["rate_limited"] == server["rate_limited"]
    assert report["failures"] == server["failed_before_apply"] + server["failed_after_apply"]
    assert report["duplicates"] == server["duplicates"] > 0  # the lost acknowledgements, resent
    assert report["retries"] > 0
    assert 0 < report["error_rate"] <= 0.3 and report["max_backlog"] <= 100
    assert report["rate_per_second"] >= 5 and report["mean_processing_seconds"] > 0
    assert counter(result, "delivered") == 300 and counter(result, "dead_lettered") == 0
    assert counter(result, "duplicates") == report["duplicates"] and counter(result, "rate_limited") >= 1
    lines = [r.getMessage() for r in caplog.records if r.name == "transforms.sinks.deliver"]
    assert any(line.startswith("deliver: processed ") for line in lines), lines  # live, once a second
    assert any(line.startswith("deliver done: processed ") for line in lines), lines  # and at the end


def test_defaults_sustain_the_target_rate_against_the_default_mock(tmp_path):
    report_path = tmp_path / "report.json"
    with MockDownstreamApi() as api:
        pipeline, _ = run_delivery(RECORDS[:200], api.url, report_path)
        pipeline.run().wait_until_finish()
        assert_exactly_once(api, KEYS[:200])
    report = json.loads(report_path.read_text())
    assert report["rate_per_second"] >= 5 and report["error_rate"] <= 0.3 and report["max_backlog"] <= 100
    assert report["rate_limited"] == 0  # 8 requests a second stay under the mock's 10


def test_a_rejected_record_is_a_counted_dead_letter_with_its_reason(tmp_path):
    records = [{"id": 1}, "not an object", {"id": 2}]
    report_path = tmp_path / "report.json"
    with MockDownstreamApi(rate_limit=None, failure_rate=0.0) as api:
        pipeline, outputs = run_delivery(records, api.url, report_path)
        assert_that(outputs["dead_letters"], equal_to([{
            "key": record_key("not an object"), "record": "not an object",
            "reason": "rejected: a record needs an object data", "attempts": 1}]), label="DeadLetter")
        result = pipeline.run()
        result.wait_until_finish()
        assert_exactly_once(api, [record_key({"id": 1}), record_key({"id": 2})])
    report = json.loads(report_path.read_text())
    assert (report["delivered"], report["dead_lettered"], report["processed"]) == (2, 1, 3)
    assert counter(result, "dead_lettered") == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_api_dead_letters_everything_without_crashing(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/records"  # nothing listens there any more
    report_path = tmp_path / "report.json"
    pipeline, outputs = run_delivery(RECORDS[:30], url, report_path, max_retries=2, rate=100.0,
                                     backoff_initial=0.01, backoff_max=0.02, batch_size=10)
    reasons = outputs["dead_letters"] | beam.Map(lambda d: (d["key"], d["reason"], d["attempts"]))
    assert_that(reasons, equal_to([(k, "connection_error after 3 attempts", 3) for k in KEYS[:30]]))
    pipeline.run().wait_until_finish()
    report = json.loads(report_path.read_text())
    assert report | {"delivered": 0, "dead_lettered": 30, "error_rate": 1.0} == report
    assert report["failures"] == report["requests"] >= 9


RESTART_SCRIPT = textwrap.dedent("""
    import json, sys
    import apache_beam as beam
    from transforms.sinks.stage import DeliverToApi

    url, count, report_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    records = [{"id": i, "symbol": "EURUSD", "mid": round(1.1 + i / 10_000, 6)} for i in range(count)]

    def write(report):
        with open(report_path, "w") as out:
            json.dump(report, out)

    with beam.Pipeline() as pipeline:
        outputs = pipeline | beam.Create(records) | DeliverToApi(url, batch_size=5, report_every=0)
        _ = outputs["report"] | beam.Map(write)
""")


def test_a_run_killed_mid_way_and_restarted_stores_every_record_exactly_once(tmp_path):
    script = tmp_path / "deliver_run.py"
    script.write_text(RESTART_SCRIPT)
    count = len(RECORDS)
    with MockDownstreamApi(failure_rate=0.15) as api:
        command = [sys.executable, str(script), api.url, str(count)]
        first = subprocess.Popen([*command, str(tmp_path / "first.json")], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: api.stats()["accepted"] >= 30 or first.poll() is not None,
                     40, "the first run to deliver some records")
        finally:
            if first.poll() is None:
                first.send_signal(signal.SIGKILL)
            first.wait(10)
        accepted_before = api.stats()["accepted"]
        assert 0 < accepted_before < count, "killed mid-way"
        assert not (tmp_path / "first.json").exists()
        second = subprocess.run([*command, str(tmp_path / "second.json")], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, check=False)
        assert second.returncode == 0, second.stderr[-3000:]
        assert_exactly_once(api, KEYS)
        assert api.stats()["accepted"] == count
    report = json.loads((tmp_path / "second.json").read_text())
    assert report | {"delivered": count, "dead_lettered": 0, "backlog": 0} == report
    assert report["duplicates"] >= accepted_before  # what the first run stored comes back as duplicates
