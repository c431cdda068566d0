"""Steering a run: the HTTP control endpoint, stdin commands and the shutdown signals."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid

import pyarrow as pa
import pytest

from beam_pipeline.control import MAX_BODY, ControlServer, follow_commands, stop_on_signals
from transforms.quotes.rules import HISTORICAL, LIVE
from transforms.sources.feeds import FeedBlock
from transforms.sources.modes import RunControl, forget_run, run_control
from transforms.sources.replay import BLOCK_SCHEMA

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# No proxy from the environment may come between the tests and 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
    """``(status, content type, JSON body)`` of a request; 4xx answers too."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with OPENER.open(request, timeout=5) as response:
            return response.status, response.headers.get("Content-Type"), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get("Content-Type"), json.loads(error.read())


def post_mode(url: str, body) -> tuple[int, str, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(url + "/mode", "POST", data, {"Content-Type": "application/json"})


def block(rows: int, start: int, newest_us: int) -> FeedBlock:
    arrays = {f.name: pa.nulls(rows, f.type) for f in BLOCK_SCHEMA}
    arrays["event_us"] = pa.array([newest_us] * rows, type=pa.int64())
    batch = pa.RecordBatch.from_arrays([arrays[f.name] for f in BLOCK_SCHEMA], schema=BLOCK_SCHEMA)
    return FeedBlock(batch, start, start + rows, ("x.csv",))


@pytest.fixture
def control():
    """The control of a fresh run (registered, like a real run's, and forgotten afterwards)."""
    run_id = f"test-{uuid.uuid4()}"
    yield run_control(run_id)
    forget_run(run_id)


@pytest.fixture
def server(control):
    with ControlServer(control, port=0) as running:
        yield running


@pytest.fixture(scope="module")
def shared():
    """One server for the requests that must change nothing (stopping a server takes ~0.5 s)."""
    run_id = f"test-{uuid.uuid4()}"
    with ControlServer(run_control(run_id)) as running:
        yield running, run_control(run_id)
    forget_run(run_id)


@pytest.fixture
def unchanged(shared):
    """``(url, control)`` of the shared server; checks that the test left the control as it was."""
    running, control = shared
    before = control.status()
    yield running.url, control
    assert control.status() == before


# --------------------------------------------------------------------------- the HTTP endpoint


class TestControlServer:
    def test_listens_on_127_0_0_1_on_a_free_port(self, server):
        assert server.url.startswith("http://127.0.0.1:")
        port = int(server.url.rsplit(":", 1)[1])
        assert 0 < port < 65536
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass

    def test_status_is_the_controls(self, server, control):
        status, content_type, body = call(server.url + "/status")
        assert status == 200
        assert content_type == "application/json"
        assert body == control.status()
        assert body["mode"] == HISTORICAL
        assert body["counts"] == {HISTORICAL: 0, LIVE: 0}
        assert body["historical_position"] == 0 and body["live_position"] is None
        assert body["stopping"] is False

    def test_status_follows_the_run(self, server, control):
        control.record(HISTORICAL, block(5, 0, 1_000_000), 1_000_000)
        control.request(LIVE)
        control.record(LIVE, block(3, 40, 2_000_000), 2_000_000)
        control.stop()
        _, _, body = call(server.url + "/status?pretty=1")  # a query string does not matter
        assert body["mode"] == LIVE
        assert body["counts"] == {HISTORICAL: 5, LIVE: 3}
        assert body["historical_position"] == 5 and body["live_position"] == 43
        assert body["switches"] == 1
        assert body["last_event_time_us"] == 2_000_000
        assert body["stopping"] is True

    def test_status_lag_comes_from_the_controls_clock(self):
        fixed = RunControl(clock=lambda: 10.0)  # 10 s after the epoch
        fixed.record(HISTORICAL, block(1, 0, 9_750_000), 9_750_000)
        with ControlServer(fixed) as running:
            _, _, body = call(running.url + "/status")
        assert body["lag_ms"] == pytest.approx(250.0)
        assert body == fixed.status()

    def test_post_mode_switches(self, server, control):
        status, content_type, body = post_mode(server.url, {"mode": "live"})
        assert status == 200 and content_type == "application/json"
        assert control.mode == LIVE and control.switches == 1
        assert body["mode"] == LIVE and body["switches"] == 1  # answers the new status
        assert body == control.status()

        status, _, body = post_mode(server.url, {"mode": "live"})  # already: fine, nothing changes
        assert status == 200 and body["switches"] == 1

        status, _, body = post_mode(server.url, {"mode": "historical", "note": "extra keys are ignored"})
        assert status == 200
        assert control.mode == HISTORICAL and control.switches == 2

    @pytest.mark.parametrize("body, says", [
        (b"{not json", ""),
        (b"\xff\xfe{", ""),
        (json.dumps(["mode", "live"]).encode(), '"mode"'),
        (json.dumps("live").encode(), '"mode"'),
        (json.dumps({"mode_": "live"}).encode(), '"mode"'),
        (json.dumps({}).encode(), '"mode"'),
        (json.dumps({"mode": "replay"}).encode(), "replay"),
        (json.dumps({"mode": "LIVE"}).encode(), "LIVE"),
        (json.dumps({"mode": None}).encode(), "None"),
        (json.dumps({"mode": ["live"]}).encode(), "live"),
        (b"", "1 to 4096 bytes"),
    ])
    def test_bad_requests_are_400_with_the_reason(self, unchanged, body, says):
        url, control = unchanged
        status, content_type, answer = post_mode(url, body)
        assert status == 400
        assert content_type == "application/json"
        assert set(answer) == {"error"}
        assert isinstance(answer["error"], str) and answer["error"]
        assert says in answer["error"]

    def test_unknown_mode_names_the_modes(self, unchanged):
        url, _ = unchanged
        _, _, answer = post_mode(url, {"mode": "replay"})
        assert HISTORICAL in answer["error"] and LIVE in answer["error"]

    def test_a_post_without_a_body(self, unchanged):
        url, _ = unchanged
        status, _, answer = call(url + "/mode", "POST")
        assert status == 400 and str(MAX_BODY) in answer["error"]

    def test_the_largest_body_is_accepted(self, server, control):
        body = {"mode": "live", "pad": ""}
        body["pad"] = "x" * (MAX_BODY - len(json.dumps(body)))
        data = json.dumps(body).encode()
        assert len(data) == MAX_BODY
        status, _, _ = post_mode(server.url, data)
        assert status == 200 and control.mode == LIVE

    def test_an_oversized_body_is_refused(self, unchanged):
        url, _ = unchanged
        body = {"mode": "live", "pad": ""}
        body["pad"] = "x" * (MAX_BODY + 1 - len(json.dumps(body)))
        data = json.dumps(body).encode()
        assert len(data) == MAX_BODY + 1
        status, _, answer = post_mode(url, data)  # a valid request, but too big to be read
        assert status == 400
        assert str(MAX_BODY) in answer["error"]

    @pytest.mark.parametrize("length", ["-5", "abc"])
    def test_a_nonsense_content_length(self, unchanged, length):
        url, _ = unchanged
        status, _, answer = call(url + "/mode", "POST", b'{"mode": "live"}',
                                 {"Content-Length": length, "Content-Type": "application/json"})
        assert status == 400 and answer["error"]

    @pytest.mark.parametrize("method, path", [("GET", "/"), ("GET", "/mode"), ("GET", "/statuses"),
                                              ("POST", "/status"), ("POST", "/"), ("POST", "/mode/live")])
    def test_unknown_paths_are_404(self, unchanged, method, path):
        url, _ = unchanged
        data = json.dumps({"mode": "live"}).encode() if method == "POST" else None
        status, content_type, answer = call(url + path, method, data)
        assert status == 404 and content_type == "application/json"
        assert path in answer["error"]
        assert "/status" in answer["error"] and "/mode" in answer["error"]  # says what exists

    def test_concurrent_requests(self, server, control):
        results = []

        def ask(index):
            results.append(post_mode(server.url, {"mode": LIVE if index % 2 else HISTORICAL})[0])
            results.append(call(server.url + "/status")[0])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == [200] * 8
        # Each request switched at most once; from historical, an odd number of switches is live.
        assert 1 <= control.switches <= 4
        assert control.mode == (LIVE if control.switches % 2 else HISTORICAL)

    def test_the_port_is_closed_after_the_context(self, control):
        with ControlServer(control) as running:
            url = running.url
            assert call(url + "/status")[0] == 200
        with pytest.raises(urllib.error.URLError):
            OPENER.open(url + "/status", timeout=2)

    def test_a_chosen_port(self, control):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with ControlServer(control, port=port) as running:
            assert running.url == f"http://127.0.0.1:{port}"
            assert call(running.url + "/status")[0] == 200


# --------------------------------------------------------------------------- stdin commands


class TestFollowCommands:
    def test_switches_in_order(self, control):
        seen = []

        def lines():
            for line in ["mode live\n", "mode historical\n", "  mode live  \n"]:
                yield line
                seen.append(control.mode)  # the command before this one has been applied by now

        errors = io.StringIO()
        follow_commands(control, lines(), errors)
        assert seen == [LIVE, HISTORICAL, LIVE]
        assert control.mode == LIVE and control.switches == 3
        assert errors.getvalue().splitlines() == [
            "beam_pipeline: mode live", "beam_pipeline: mode historical", "beam_pipeline: mode live"]

    def test_reports_a_mode_it_is_already_in(self, control):
        errors = io.StringIO()
        follow_commands(control, io.StringIO("mode historical\n"), errors)
        assert control.switches == 0
        assert errors.getvalue() == "beam_pipeline: mode historical (already)\n"

    def test_unknown_commands_are_reported_and_the_rest_applied(self, control):
        errors = io.StringIO()
        follow_commands(control, io.StringIO("mode replay\nhelp\nmode live\n"), errors)
        assert control.mode == LIVE and control.switches == 1
        reported = errors.getvalue().splitlines()
        assert len(reported) == 3
        assert "'mode replay'" in reported[0] and "'help'" in reported[1]
        assert all("mode historical" in line and "mode live" in line for line in reported[:2])
        assert reported[2] == "beam_pipeline: mode live"

    def test_blank_lines_are_ignored(self, control):
        errors = io.StringIO()
        follow_commands(control, io.StringIO("\n   \n\t\nmode live\n\n"), errors)
        assert control.mode == LIVE
        assert errors.getvalue() == "beam_pipeline: mode live\n"

    def test_the_last_line_without_a_newline(self, control):
        follow_commands(control, io.StringIO("mode live"), io.StringIO())
        assert control.mode == LIVE

    def test_stops_reading_when_the_run_stops(self, control):
        read = []

        def lines():
            for index, line in enumerate(["mode live\n", "mode historical\n", "mode live\n", "mode historical\n"]):
                read.append(index)
                if index == 2:
                    control.stop()  # the run ends while this command is being typed
                yield line

        errors = io.StringIO()
        follow_commands(control, lines(), errors)
        assert control.mode == HISTORICAL  # commands 0 and 1 applied; 2 arrived after the stop
        assert control.switches == 2
        assert read == [0, 1, 2]  # and nothing was read after it
        assert errors.getvalue().splitlines() == ["beam_pipeline: mode live", "beam_pipeline: mode historical"]

    def test_a_stopped_run_takes_no_commands(self, control):
        control.stop()
        errors = io.StringIO()
        follow_commands(control, io.StringIO("mode live\nmode live\n"), errors)
        assert control.mode == HISTORICAL and errors.getvalue() == ""

    def test_stdin_commands_report_to_stderr(self):
        # A process of its own: follow_commands writes to the stderr it had when it was imported.
        script = (
            "from beam_pipeline.control import start_stdin_commands\n"
            "from transforms.sources.modes import run_control\n"
            "control = run_control('stdin')\n"
            "start_stdin_commands(control).join(10)\n"
            "print(control.mode, control.switches)\n"
        )
        done = subprocess.run([sys.executable, "-c", script], input="mode live\nnonsense\n\nmode live\n",
                              capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "live 1\n"
        reported = done.stderr.splitlines()
        assert reported[0] == "beam_pipeline: mode live"
        assert reported[1].startswith("beam_pipeline: unknown command 'nonsense'")
        assert reported[2] == "beam_pipeline: mode live (already)"
        assert len(reported) == 3


# --------------------------------------------------------------------------- signals


@pytest.fixture
def previous_handlers():
    """Known handlers for SIGINT and SIGTERM during the test (the originals are put back after)."""
    received = []

    def handler(signum, _frame):
        received.append(signum)

    originals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in originals:
        signal.signal(sig, handler)
    yield handler, received
    for sig, original in originals.items():
        signal.signal(sig, original)


class TestStopOnSignals:
    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
    def test_a_signal_stops_the_run_instead_of_killing_it(self, control, previous_handlers, sig):
        handler, received = previous_handlers
        with stop_on_signals(control):
            assert signal.getsignal(sig) is not handler
            assert not control.stopped()
            os.kill(os.getpid(), sig)
            assert control.wait_stopped(5)
        assert received == []  # the previous handler was not called
        assert control.stopped()

    def test_the_previous_handlers_are_restored(self, control, previous_handlers):
        handler, received = previous_handlers
        with stop_on_signals(control):
            pass
        assert signal.getsignal(signal.SIGTERM) is handler
        assert signal.getsignal(signal.SIGINT) is handler
        os.kill(os.getpid(), signal.SIGTERM)  # safe: the handler above only records it
        other = RunControl()
        other.wait_stopped(0.2)  # gives the handler a moment to run
        assert received == [signal.SIGTERM]
        assert not control.stopped()

    def test_restored_when_the_run_fails(self, control, previous_handlers):
        handler, _ = previous_handlers
        with pytest.raises(RuntimeError, match="boom"):
            with stop_on_signals(control):
                raise RuntimeError("boom")
        assert signal.getsignal(signal.SIGTERM) is handler
        assert signal.getsignal(signal.SIGINT) is handler

    def test_outside_the_main_thread_it_changes_nothing(self, control, previous_handlers):
        handler, _ = previous_handlers
        outcome = []

        def run():
            try:
                with stop_on_signals(control):
                    outcome.append(signal.getsignal(signal.SIGTERM) is handler)
            except BaseException as exc:  # noqa: BLE001 (reported below)
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(5)
        assert outcome == [True]
        assert signal.getsignal(signal.SIGTERM) is handler
        assert not control.stopped()
