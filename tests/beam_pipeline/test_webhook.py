"""End to end: ``--source webhook``, quotes POSTed to the run's endpoint on 127.0.0.1.

Expected output is computed here from the quotes posted (mid = (bid + ask) / 2 with ``decimal``),
never read back from the pipeline. SIGTERM needs a real ``python -m beam_pipeline`` subprocess;
the other runs are in-process (``cli.main`` in a thread, stopped like SIGTERM does, with
``stop_all``). Nothing waits a fixed time: every wait polls with a deadline.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from beam_pipeline import cli
from beam_pipeline.config import resolve
from beam_pipeline.options import parse_options
from beam_pipeline.pipeline import live_feed
from tests.conftest import assert_one_line_usage_error, assert_usage_errors
from tests.waiting import wait_for
from transforms.sources.modes import stop_all
from transforms.sources.webhook import WebhookFeed

REPO = Path(__file__).resolve().parents[2]
TOKEN = "t0ken"
ENDPOINT_LINE = re.compile(r"^beam_pipeline: webhook endpoint (http://127\.0\.0\.1:(\d+)) \(POST /webhook, "
                           r"GET /healthz, GET /metrics\)$", re.MULTILINE)

# A replay run reads ``mode ...`` commands from stdin; in-process runs here get an empty one.
pytestmark = pytest.mark.usefixtures("empty_stdin")


def quote(index: int, **fields) -> dict:
    """Quote ``index``: 10 ms after the one before, bid 100+index, ask 100+index.5 (JSON numbers)."""
    seconds, ms = divmod(index * 10, 1000)
    return {"timestamp": f"2024-01-01 00:{seconds // 60:02d}:{seconds % 60:02d}.{ms:03d}", "symbol": "EURUSD",
            "bid": 100 + index, "ask": float(f"{100 + index}.5"), **fields}


def mid_line(item: dict) -> str:
    mid = format((Decimal(str(item["bid"])) + Decimal(str(item["ask"]))) / 2, "f")
    return f"{item['timestamp']}, {mid.rstrip('0').rstrip('.') if '.' in mid else mid}"


def test_mid_line_helper():
    assert mid_line(quote(3)) == "2024-01-01 00:00:00.030, 103.25"


def post(url: str, value, token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    request = urllib.request.Request(f"{url}/webhook", data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def assert_balanced(metrics: dict) -> None:
    assert metrics["balanced"] is True, metrics
    assert metrics["records_in"] == metrics["mid_prices"] + metrics["latency_filtered"] + metrics["dead_lettered"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --------------------------------------------------------------------------- the whole run, SIGTERM


def test_posted_quotes_become_mid_prices_and_sigterm_loses_none(tmp_path, processes):
    out = tmp_path / "out"
    stderr_path = tmp_path / "run.stderr"
    with open(tmp_path / "run.stdout", "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "beam_pipeline", "--source", "webhook", "--port", "0", "--output_dir", str(out),
             "--webhook_token", TOKEN, "--webhook_buffer", "1000"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    processes.append(process)
    match = wait_for(lambda: ENDPOINT_LINE.search(stderr_path.read_text()) or process.poll() is not None, 30,
                     "the endpoint line on stderr")
    assert match is not True, stderr_path.read_text()
    url = match.group(1)
    assert get(f"{url}/healthz") == (200, json.dumps({"status": "ok", "buffered": 0}) + "\n")

    first = [quote(i) for i in range(31)]
    answers = [post(url, first[i:i + 10]) for i in range(0, 30, 10)] + [post(url, first[30])]
    assert [a for _, a in answers] == [{"accepted": 10, "seq": [0, 9]}, {"accepted": 10, "seq": [10, 19]},
                                      {"accepted": 10, "seq": [20, 29]}, {"accepted": 1, "seq": [30, 30]}]
    assert post(url, [quote(31), quote(32, bid=-1)])[0] == 422  # all or nothing: quote 31 is not taken
    assert post(url, quote(31), token="wrong")[0] == 401
    assert post(url, b"{oops")[0] == 400
    mids = out / "mid_prices.log"
    wait_for(lambda: len(lines_of(mids)) >= 31, 30, "31 mid lines while the run goes on")
    assert lines_of(mids) == [mid_line(q) for q in first]
    assert not (out / "metrics.json").exists()
    families = {f.name: f for f in text_string_to_metric_families(get(f"{url}/metrics")[1])}
    assert families["webhook_quotes_accepted"].samples[0].value == 31

    # Quotes accepted just before SIGTERM are still read, processed and written.
    second = [quote(i) for i in range(31, 131)]
    assert post(url, second) == (202, {"accepted": 100, "seq": [31, 130]})
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    rc = process.wait(30)
    took = time.monotonic() - sent
    stderr_text = stderr_path.read_text()
    assert rc == 0, stderr_text
    assert took < 15, f"took {took:.1f} s to stop"
    assert "Traceback" not in stderr_text
    assert lines_of(mids) == [mid_line(q) for q in first + second]
    assert (out / "dead_letter.jsonl").read_text() == "" and (out / "errors.log").read_text() == ""
    metrics = json.loads((out / "metrics.json").read_text())
    assert_balanced(metrics)
    assert (metrics["records_in"], metrics["mid_prices"], metrics["webhook_quotes_accepted"]) == (131, 131, 131)
    assert metrics["webhook_requests_accepted"] == 5
    assert metrics["webhook_requests_rejected"] == {"400": 1, "401": 1, "422": 1}
    assert metrics["source"] == "webhook" and metrics["webhook_url"] == f"{url}/webhook"
    summary = (tmp_path / "run.stdout").read_text()
    assert f"Read 131 quotes from the webhook {url}/webhook" in summary
    assert "5 requests accepted (202), 3 refused" in summary and "counts balance" in summary


# --------------------------------------------------------------------------- in-process, with windows


def test_webhook_run_with_windows_and_latency(tmp_path, capsys):
    out, port = tmp_path / "out", free_port()
    url = f"http://127.0.0.1:{port}"
    result: list[int] = []
    run = threading.Thread(target=lambda: result.append(cli.main(
        ["--source", "webhook", "--port", str(port), "--output_dir", str(out), "--window", "fixed:1s",
         "--latency_threshold_ms", "1", "--watermark_lag", "100ms"])), daemon=True)
    run.start()
    try:
        wait_for(lambda: _answers(f"{url}/healthz"), 30, "GET /healthz")
        posted = [quote(i, latency=50, symbol="AB" if i % 2 else "CD") for i in range(250)]
        for start in range(0, 250, 50):
            assert post(url, posted[start:start + 50], token=None)[0] == 202
        wait_for(lambda: len(lines_of(out / "mid_prices.log")) >= 250, 30, "250 mid lines")
    finally:
        stop_all()  # what SIGTERM does
        run.join(60)
    assert result == [0], capsys.readouterr().err
    assert lines_of(out / "mid_prices.log") == [mid_line(q) for q in posted]  # never latency-filtered
    metrics = json.loads((out / "metrics.json").read_text())
    assert_balanced(metrics)
    # The watermark (arrival time, 50 ms after each quote, minus a 100 ms lag) never passes a quote's window.
    assert metrics["windows_balanced"] is True and metrics["late_dropped"] == 0
    panes = [json.loads(line) for line in lines_of(out / "windows.jsonl")]
    assert sum(p["count"] for p in panes) == metrics["quotes_in_panes"] == 250
    assert {p["symbol"] for p in panes} == {"AB", "CD"} and len(panes) == 6  # 2.5 s of quotes, 2 symbols


def _answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def test_live_feed_of_a_webhook_run_reads_its_inbox():
    feed = live_feed(resolve(parse_options(["--source", "webhook", "--port", "8123"])), "run-1")
    assert isinstance(feed, WebhookFeed)
    assert (feed.name, feed.sources) == ("run-1", ("http://127.0.0.1:8123/webhook",))


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(["--source", "webhook"], ["--source webhook", "--port"], id="no-port"),
        pytest.param(["--port", "8080"], ["--port", "--source webhook"], id="port-historical"),
        pytest.param(["--webhook_token", "x"], ["--webhook_token", "--source webhook"], id="token-historical"),
        pytest.param(["--source", "webhook", "--port", "70000"], ["--port", "70000"], id="port-out-of-range"),
        pytest.param(["--source", "webhook", "--port", "0", "--webhook_token", "a b"], ["--webhook_token"],
                     id="token-with-space"),
        pytest.param(["--source", "webhook", "--port", "0", "--webhook_token", ""], ["--webhook_token"],
                     id="empty-token"),
        pytest.param(["--source", "webhook", "--port", "0", "--webhook_max_body", "0"], ["--webhook_max_body"],
                     id="max-body"),
        pytest.param(["--source", "webhook", "--port", "0", "--webhook_buffer", "0"], ["--webhook_buffer"],
                     id="buffer"),
        pytest.param(["--source", "webhook", "--port", "0", "--live_url", "ws://127.0.0.1:1/"],
                     ["--live_url", "--source live"], id="live-url"),
        pytest.param(["--source", "webhook", "--port", "0", "--control_port", "0"],
                     ["--control_port", "--source replay"], id="control-port"),
        pytest.param(["--source", "webhook", "--port", "0", "--runner", "PortableRunner"],
                     ["--source webhook", "DirectRunner"], id="portable-runner"),
    ],
)
def test_webhook_usage_errors_exit_2_with_a_line_each(args, expected, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["--output_dir", str(out), *args])
    captured = capsys.readouterr()
    assert_usage_errors(rc, captured.err, expected)
    assert not out.exists()


def test_a_port_in_use_is_a_usage_error_before_the_run(tmp_path, capsys):
    out = tmp_path / "out"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc = cli.main(["--source", "webhook", "--port", str(port), "--output_dir", str(out)])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert f"--port {port}: cannot listen on it" in line
    assert not out.exists()
