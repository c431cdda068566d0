"""End to end: ``--source live`` and ``--source replay`` against the development websocket feed.

Expected output is computed independently from the CSVs that the feed serves (mid = (bid + ask) / 2
with ``decimal``, the CSV's timestamp text), never read back from the pipeline. The historical and
live test data use disjoint prices, so every mid line names its source quote (see :func:`origin`),
which is how the replay tests check, by content, where history resumes.

Runs are in-process (``cli.main``) where possible; SIGTERM and stdin commands need a real
``python -m beam_pipeline`` subprocess. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import csv
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
from collections import Counter
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest

from beam_pipeline import cli
from beam_pipeline.config import bundled_sample
from beam_pipeline.devtools.feed import FeedConfig, FeedServer, frame_text, load_messages
from beam_pipeline.devtools.reference import run_reference
from tests.conftest import assert_one_line_usage_error, assert_usage_errors
from tests.waiting import wait_for
from transforms.sources.modes import stop_all
from transforms.windows.logic import parse_window

REPO = Path(__file__).resolve().parents[2]
LIVE_SAMPLE = bundled_sample("live_sample.csv")
MID_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}, \d+(\.\d*[1-9])?$")

# A replay run reads ``mode ...`` commands from stdin; in-process runs here get an empty one.
pytestmark = pytest.mark.usefixtures("empty_stdin")


# --------------------------------------------------------------------------- expected output


def mid_text(bid: str, ask: str) -> str:
    """(bid + ask) / 2, exact, without trailing zeros or exponent: 1.1 and 1.2 -> 1.15, 1 and 3 -> 2."""
    text = format((Decimal(bid) + Decimal(ask)) * Decimal("0.5"), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def csv_rows(path: Path | str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def expected_mid_lines(rows: list[dict[str, str]]) -> list[str]:
    """The mid_prices.log line of every row, in the rows' order (the feed's order)."""
    lines = [f"{row['timestamp']}, {mid_text(row['bid_price'], row['ask_price'])}" for row in rows]
    assert all(MID_LINE.match(line) for line in lines)  # the test data is in the output's own format
    return lines


def test_expected_mids_helper():
    assert mid_text("1.1", "1.2") == "1.15"
    assert mid_text("200", "201") == "200.5"
    assert mid_text("1", "3") == "2"
    assert mid_text("67799.99", "67800.03") == "67800.01"
    assert mid_text("1.08498", "1.08501") == "1.084995"


# Historical rows: HIST_BASE + i, mid ends in .25; live rows: LIVE_BASE + i, mid ends in .125.
HIST_BASE, LIVE_BASE = 100, 9000
OVER_THRESHOLD_EVERY = 10  # historical rows i % 10 == 3 have a latency of 50 ms (> 20 ms)


def write_history(path: Path, rows: int, *, filtered: bool = True) -> Path:
    """Historical quotes 100 ms apart (so latencies of 5 or 50 ms never reorder them)."""
    with open(path, "w", encoding="utf-8") as out:
        out.write("timestamp,symbol,bid_price,ask_price,latency_ms\n")
        for i in range(rows):
            seconds, tenths = divmod(i, 10)
            latency = 50 if filtered and i % OVER_THRESHOLD_EVERY == 3 else 5
            out.write(f"2024-01-01 {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{tenths}00,"
                      f"HIST,{HIST_BASE + i}.00,{HIST_BASE + i}.50,{latency}\n")
    return path


def write_live(path: Path, rows: int, *, latency_ms: int | None = None) -> Path:
    """Live quotes 10 ms apart, prices disjoint from history's; optionally with a latency column."""
    with open(path, "w", encoding="utf-8") as out:
        out.write("timestamp,symbol,bid_price,ask_price" + (",latency_ms" if latency_ms is not None else "") + "\n")
        for i in range(rows):
            seconds, ms = divmod(i * 10, 1000)
            out.write(f"2024-02-01 00:{seconds // 60:02d}:{seconds % 60:02d}.{ms:03d},LIVE,"
                      f"{LIVE_BASE + i}.00,{LIVE_BASE + i}.25" + (f",{latency_ms}" if latency_ms is not None else "")
                      + "\n")
    return path


def origin(line: str) -> tuple[str, int]:
    """("H", i) or ("L", i): the quote of write_history / write_live a mid line comes from."""
    mid = Decimal(line.split(", ")[1])
    if mid >= LIVE_BASE:
        assert mid % 1 == Decimal("0.125"), line
        return "L", int(mid) - LIVE_BASE
    assert mid % 1 == Decimal("0.25"), line
    return "H", int(mid) - HIST_BASE


def segments(lines: list[str]) -> list[tuple[str, list[int]]]:
    """Runs of consecutive lines from the same source: [("H", [0, 1, 2]), ("L", [0, 1]), ...]."""
    runs: list[tuple[str, list[int]]] = []
    for line in lines:
        kind, index = origin(line)
        if not runs or runs[-1][0] != kind:
            runs.append((kind, []))
        runs[-1][1].append(index)
    return runs


def unfiltered(indices: range | list[int]) -> list[int]:
    return [i for i in indices if i % OVER_THRESHOLD_EVERY != 3]


def history_errors(rows: list[dict[str, str]], indices: range | list[int]) -> list[str]:
    return [f"No mid price at {rows[i]['timestamp']} as latency 50ms is bigger than 20ms"
            for i in indices if i % OVER_THRESHOLD_EVERY == 3]


# --------------------------------------------------------------------------- running


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def assert_balanced(metrics: dict) -> None:
    assert metrics["balanced"] is True, metrics
    assert metrics["records_in"] == metrics["mid_prices"] + metrics["latency_filtered"] + metrics["dead_lettered"]


def assert_counts_match_files(out: Path, metrics: dict) -> None:
    assert len(lines_of(out / "mid_prices.log")) == metrics["mid_prices"]
    assert len(lines_of(out / "errors.log")) == metrics["latency_filtered"]
    assert len(lines_of(out / "dead_letter.jsonl")) == metrics["dead_lettered"]


def run_live(url: str, out: Path, *args: str) -> int:
    return cli.main(["--source", "live", "--live_url", url, "--output_dir", str(out), *args])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_json(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def status_when_up(port: int, timeout: float = 30) -> dict:
    def answer():
        try:
            return http_json(f"http://127.0.0.1:{port}/status")[1]
        except OSError:
            return None

    return wait_for(answer, timeout, f"GET /status on port {port}", interval=0.05)


class InThread:
    """``cli.main(argv)`` in a background thread (no signal handlers there; stdin is empty)."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        self.rc = cli.main(self.argv)

    def __enter__(self) -> "InThread":
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.thread.join(60)

    def join(self, timeout: float) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not end"
        return self.rc


def start_cli(tmp_path: Path, *args: str, name: str = "run", stdin=subprocess.DEVNULL) -> subprocess.Popen:
    """``python -m beam_pipeline ARGS`` with stdout and stderr in files under tmp_path."""
    stdout = open(tmp_path / f"{name}.stdout", "w")  # pylint: disable=consider-using-with
    stderr = open(tmp_path / f"{name}.stderr", "w")  # pylint: disable=consider-using-with
    process = subprocess.Popen([sys.executable, "-m", "beam_pipeline", *args], cwd=REPO, stdin=stdin,
                               stdout=stdout, stderr=stderr, text=True)
    stdout.close()
    stderr.close()
    return process


def stop_with(process: subprocess.Popen, sig: int = signal.SIGTERM, within: float = 10.0) -> tuple[int, float]:
    """Send ``sig``; the exit code and how long the process took to end."""
    sent = time.monotonic()
    process.send_signal(sig)
    try:
        rc = process.wait(timeout=within + 10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return rc, time.monotonic() - sent


@pytest.fixture(scope="module")
def live_sample() -> list[dict[str, str]]:
    return load_messages(LIVE_SAMPLE)


@pytest.fixture(scope="module")
def live_sample_mids() -> list[str]:
    return expected_mid_lines(csv_rows(LIVE_SAMPLE))


# --------------------------------------------------------------------------- 1. live mids


def test_live_mid_prices_match_the_fed_quotes(tmp_path, live_sample, live_sample_mids, capsys):
    out = tmp_path / "out"
    with FeedServer(live_sample, FeedConfig(rate=0)) as url:
        rc = run_live(url, out)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert len(live_sample_mids) == 2000
    text = (out / "mid_prices.log").read_text()
    assert text.endswith("\n")
    assert text.splitlines() == live_sample_mids  # line by line, in feed order
    assert (out / "errors.log").read_text() == ""
    assert (out / "dead_letter.jsonl").read_text() == ""
    metrics = metrics_of(out)
    assert_balanced(metrics)
    assert (metrics["records_in"], metrics["mid_prices"], metrics["latency_filtered"], metrics["dead_lettered"]) == (
        2000, 2000, 0, 0)
    assert metrics["source"] == "live" and metrics["live_url"] == url
    assert metrics["end_of_stream"] == 1 and metrics["reconnects"] == 0
    assert "balance" in captured.out and "DO NOT BALANCE" not in captured.out


def test_live_quotes_are_never_latency_filtered(tmp_path, capsys):
    source = write_live(tmp_path / "live_latency.csv", 30, latency_ms=50)  # every quote over the 20 ms threshold
    out = tmp_path / "out"
    with FeedServer(load_messages(str(source)), FeedConfig(rate=0)) as url:
        rc = run_live(url, out, "--latency_threshold_ms", "20")
    assert rc == 0, capsys.readouterr().err
    assert lines_of(out / "mid_prices.log") == expected_mid_lines(csv_rows(source))
    assert (out / "errors.log").read_text() == ""
    metrics = metrics_of(out)
    assert_balanced(metrics)
    assert (metrics["records_in"], metrics["mid_prices"], metrics["latency_filtered"]) == (30, 30, 0)


def test_live_output_keeps_feed_order_even_when_timestamps_go_back(tmp_path, capsys):
    rows = csv_rows(write_live(tmp_path / "live.csv", 40))
    rows = rows[20:] + rows[:20]  # the feed's order, not the timestamps', is the output's order
    messages = [{k: v for k, v in row.items()} for row in rows]
    out = tmp_path / "out"
    with FeedServer(messages, FeedConfig(rate=0)) as url:
        assert run_live(url, out) == 0, capsys.readouterr().err
    assert lines_of(out / "mid_prices.log") == expected_mid_lines(rows)
    assert_balanced(metrics_of(out))


# --------------------------------------------------------------------------- 2. dropped connections


def test_dropped_connections_lose_and_repeat_nothing(tmp_path, live_sample, live_sample_mids, capsys):
    out = tmp_path / "out"
    server = FeedServer(live_sample, FeedConfig(rate=0, drop_every=300))
    with server as url:
        rc = run_live(url, out)
    assert rc == 0, capsys.readouterr().err
    assert lines_of(out / "mid_prices.log") == live_sample_mids  # what the run without drops writes
    assert (out / "errors.log").read_text() == "" and (out / "dead_letter.jsonl").read_text() == ""
    metrics = metrics_of(out)
    assert_balanced(metrics)
    assert metrics["records_in"] == 2000
    assert metrics["reconnects"] > 0
    assert metrics["reconnects"] == 2000 // 300  # one per drop: 6 drops before the end of stream
    assert (metrics["duplicates_skipped"], metrics["gaps"]) == (0, 0)
    assert server.feed.connections >= 7


# --------------------------------------------------------------------------- 3. malformed frames


@pytest.mark.parametrize(
    "malformed_every, drop_every",
    [
        pytest.param(97, None, id="malformed"),
        pytest.param(100, 300, id="malformed-frame-last-before-each-drop"),
        pytest.param(301, 300, id="malformed-frame-first-after-a-reconnect"),
    ],
)
def test_malformed_frames_are_dead_lettered(malformed_every, drop_every, tmp_path, live_sample, live_sample_mids,
                                            capsys):
    out = tmp_path / "out"
    with FeedServer(live_sample, FeedConfig(rate=0, malformed_every=malformed_every, drop_every=drop_every)) as url:
        rc = run_live(url, out)
    assert rc == 0, capsys.readouterr().err
    bad = [seq for seq in range(2000) if (seq + 1) % malformed_every == 0]
    dead = [json.loads(line) for line in lines_of(out / "dead_letter.jsonl")]
    assert [d["line"] for d in dead] == bad
    for letter in dead:
        assert letter["source"] == url
        assert letter["reason"].startswith("bad_json"), letter
        assert letter["raw"] == frame_text(letter["line"], live_sample[letter["line"]], malformed_every)
    assert lines_of(out / "mid_prices.log") == [m for seq, m in enumerate(live_sample_mids) if seq not in set(bad)]
    assert (out / "errors.log").read_text() == ""
    metrics = metrics_of(out)
    assert_balanced(metrics)
    assert (metrics["records_in"], metrics["dead_lettered"], metrics["malformed_frames"]) == (2000, len(bad), len(bad))
    assert metrics["dead_lettered_by_reason"] == {"bad_json": len(bad)}
    if drop_every:
        assert metrics["reconnects"] > 0 and metrics["gaps"] == 0 and metrics["duplicates_skipped"] == 0


# --------------------------------------------------------------------------- 4. output while running


def test_mid_prices_appear_before_the_feed_ends(tmp_path, live_sample, live_sample_mids):
    out = tmp_path / "out"
    paused_after = 500
    server = FeedServer(live_sample, FeedConfig(rate=0, pause_after=paused_after, pause_seconds=4))
    with server as url, InThread(["--source", "live", "--live_url", url, "--output_dir", str(out)]) as run:
        mids = out / "mid_prices.log"
        seen = wait_for(lambda: len(lines_of(mids)) >= paused_after and len(lines_of(mids)), 15,
                        f"{paused_after} mid lines while the feed pauses")
        # Still paused: nothing past the pause has been sent, no end of stream, the run goes on.
        assert server.feed.frames_sent == paused_after
        assert run.thread.is_alive()
        assert not (out / "metrics.json").exists()
        assert seen == paused_after
        assert lines_of(mids) == live_sample_mids[:paused_after]
        assert run.join(30) == 0
    assert lines_of(out / "mid_prices.log") == live_sample_mids
    metrics = metrics_of(out)
    assert_balanced(metrics)
    assert metrics["records_in"] == 2000


# --------------------------------------------------------------------------- 5. replay, switched


def check_replay_output(out: Path, hist_rows: list[dict], live_rows: list[dict], min_first: int, min_live: int) -> list:
    """History, then live, then history exactly where it stopped, then (history done) live again."""
    lines = lines_of(out / "mid_prices.log")
    runs = segments(lines)
    kinds = [kind for kind, _ in runs]
    assert kinds[:3] == ["H", "L", "H"], [(k, i[0], i[-1]) for k, i in runs]
    assert kinds in (["H", "L", "H"], ["H", "L", "H", "L"]), [(k, i[0], i[-1]) for k, i in runs]
    history = [i for kind, indices in runs if kind == "H" for i in indices]
    live = [i for kind, indices in runs if kind == "L" for i in indices]
    first, second = runs[0][1], runs[2][1]
    assert len(first) >= min_first and len(runs[1][1]) >= min_live
    # The first historical line after live mode is the next unfiltered quote after the last one written.
    assert second[0] == unfiltered(range(first[-1] + 1, len(hist_rows)))[0]
    assert history == unfiltered(range(len(hist_rows)))  # no repeat, no gap
    assert live == list(range(len(live_rows)))
    hist_mids, live_mids = expected_mid_lines(hist_rows), expected_mid_lines(live_rows)
    expected = [hist_mids[i] if kind == "H" else live_mids[i] for kind, indices in runs for i in indices]
    assert lines == expected
    # Latency filter: historical quotes only (every live quote has a 50 ms latency too).
    assert lines_of(out / "errors.log") == history_errors(hist_rows, range(len(hist_rows)))
    return runs


@pytest.fixture
def replay_data(tmp_path):
    hist = write_history(tmp_path / "history.csv", 400)
    live = write_live(tmp_path / "live.csv", 200, latency_ms=50)
    return hist, live, csv_rows(hist), csv_rows(live)


def test_replay_switched_by_the_control_endpoint(tmp_path, replay_data, capsys):
    hist, live, hist_rows, live_rows = replay_data
    out, port = tmp_path / "out", free_port()
    base = f"http://127.0.0.1:{port}"
    with FeedServer(load_messages(str(live)), FeedConfig(rate=200)) as url, InThread(
        ["--source", "replay", "--live_url", url, "--input", str(hist), "--output_dir", str(out),
         "--control_port", str(port), "--replay_rate", "200"]
    ) as run:
        status = status_when_up(port)
        assert status["mode"] == "historical" and status["history_done"] is False
        wait_for(lambda: http_json(f"{base}/status")[1]["counts"]["historical"] >= 100, 20, "100 historical quotes")
        code, switched = http_json(f"{base}/mode", {"mode": "live"})
        assert code == 200 and switched["mode"] == "live" and switched["switches"] == 1
        assert switched["history_done"] is False
        wait_for(lambda: http_json(f"{base}/status")[1]["counts"]["live"] >= 40, 20, "40 live quotes")
        # Bad requests are refused and change nothing.
        assert http_json(f"{base}/mode", {"mode": "sideways"})[0] == 400
        assert http_json(f"{base}/mode", {"nomode": 1})[0] == 400
        assert http_json(f"{base}/nowhere")[0] == 404
        code, back = http_json(f"{base}/mode", {"mode": "historical"})
        assert code == 200 and back["mode"] == "historical" and back["switches"] == 2
        assert run.join(40) == 0, capsys.readouterr().err
    runs = check_replay_output(out, hist_rows, live_rows, min_first=80, min_live=40)
    metrics = metrics_of(out)
    assert_balanced(metrics)
    assert_counts_match_files(out, metrics)
    assert (metrics["historical_records"], metrics["live_records"], metrics["records_in"]) == (400, 200, 600)
    assert metrics["latency_filtered"] == 40 and metrics["source"] == "replay"
    assert metrics["reconnects"] >= 1 and metrics["gaps"] == 0 and metrics["duplicates_skipped"] == 0
    assert len(runs) == 4  # history ran out while the live feed still had quotes: live again to its end


def test_replay_switched_by_stdin_commands(tmp_path, replay_data, processes):
    hist, live, hist_rows, live_rows = replay_data
    out = tmp_path / "out"
    with FeedServer(load_messages(str(live)), FeedConfig(rate=200)) as url:
        process = start_cli(tmp_path, "--source", "replay", "--live_url", url, "--input", str(hist),
                            "--output_dir", str(out), "--replay_rate", "200", stdin=subprocess.PIPE)
        processes.append(process)
        mids = out / "mid_prices.log"
        wait_for(lambda: len(lines_of(mids)) >= 100, 30, "100 historical mid lines")
        process.stdin.write("mode sideways\nmode live\n")
        process.stdin.flush()
        wait_for(lambda: sum(origin(line)[0] == "L" for line in lines_of(mids)) >= 40, 20, "40 live mid lines")
        process.stdin.write("mode historical\n")
        process.stdin.flush()
        process.stdin.close()
        assert process.wait(40) == 0, (tmp_path / "run.stderr").read_text()
    stderr = (tmp_path / "run.stderr").read_text()
    assert "unknown command 'mode sideways'" in stderr
    assert "beam_pipeline: mode live" in stderr and "beam_pipeline: mode historical" in stderr
    assert "Traceback" not in stderr
    check_replay_output(out, hist_rows, live_rows, min_first=80, min_live=40)
    metrics = metrics_of(out)
    assert_balanced(metrics)
    assert (metrics["historical_records"], metrics["live_records"]) == (400, 200)


# --------------------------------------------------------------------------- 6. restart


def test_restart_resumes_history_at_the_saved_position(tmp_path, processes, capsys):
    hist = write_history(tmp_path / "history.csv", 400)
    live = write_live(tmp_path / "live.csv", 30)
    hist_rows, live_rows = csv_rows(hist), csv_rows(live)
    state, out = tmp_path / "state", tmp_path / "out"
    state_file = state / "replay_state.json"

    # Run 1: a subprocess stopped by SIGTERM part-way through history (the looping feed is never reached).
    with FeedServer(load_messages(str(live)), FeedConfig(rate=100, loop=True)) as url:
        first = start_cli(tmp_path, "--source", "replay", "--live_url", url, "--input", str(hist),
                          "--output_dir", str(out), "--state_dir", str(state), "--replay_rate", "200", name="first")
        processes.append(first)
        wait_for(lambda: len(lines_of(out / "mid_prices.log")) >= 60, 30, "60 historical mid lines")
        rc, took = stop_with(first)
    assert rc == 0, (tmp_path / "first.stderr").read_text()
    assert took < 10
    written = lines_of(out / "mid_prices.log")
    saved = json.loads(state_file.read_text())
    position = saved["historical_position"]
    assert saved["inputs"] == [str(hist)] and saved["live_position"] is None
    assert 60 <= position < 400, "stopped part-way through history"
    # Everything before the saved position has been processed, nothing after it.
    assert written == [expected_mid_lines(hist_rows)[i] for i in unfiltered(range(position))]
    assert lines_of(out / "errors.log") == history_errors(hist_rows, range(position))
    first_metrics = metrics_of(out)
    assert_balanced(first_metrics)
    assert (first_metrics["historical_records"], first_metrics["live_records"]) == (position, 0)

    # Run 2: same state_dir, same output dir (live files are appended to), unpaced, to the feed's end.
    with FeedServer(load_messages(str(live)), FeedConfig(rate=0)) as url:
        rc = cli.main(["--source", "replay", "--live_url", url, "--input", str(hist), "--output_dir", str(out),
                       "--state_dir", str(state)])
    assert rc == 0, capsys.readouterr().err
    lines = lines_of(out / "mid_prices.log")
    assert lines[: len(written)] == written
    second = lines[len(written):]
    assert origin(second[0]) == ("H", unfiltered(range(position, 400))[0])  # exactly the next quote
    hist_mids, live_mids = expected_mid_lines(hist_rows), expected_mid_lines(live_rows)
    assert second == [hist_mids[i] for i in unfiltered(range(position, 400))] + live_mids
    assert lines_of(out / "errors.log") == history_errors(hist_rows, range(400))
    metrics = metrics_of(out)
    assert_balanced(metrics)
    assert (metrics["historical_records"], metrics["live_records"]) == (400 - position, 30)
    saved = json.loads(state_file.read_text())
    assert (saved["historical_position"], saved["live_position"]) == (400, 30)

    # The state belongs to history.csv: a replay of other inputs refuses it, before starting.
    other = write_history(tmp_path / "other.csv", 10)
    with FeedServer(load_messages(str(live)), FeedConfig(rate=0)) as url:
        rc = cli.main(["--source", "replay", "--live_url", url, "--input", str(other),
                       "--output_dir", str(tmp_path / "other-out"), "--state_dir", str(state)])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert str(state_file) in line and "other inputs" in line
    assert not (tmp_path / "other-out").exists()
    assert json.loads(state_file.read_text())["inputs"] == [str(hist)]  # left alone


def test_unreadable_replay_state_is_a_usage_error(tmp_path, capsys):
    hist = write_history(tmp_path / "history.csv", 10)
    state = tmp_path / "state"
    state.mkdir()
    (state / "replay_state.json").write_text('{"inputs": [')
    with FeedServer([], FeedConfig(rate=0)) as url:
        rc = cli.main(["--source", "replay", "--live_url", url, "--input", str(hist),
                       "--output_dir", str(tmp_path / "out"), "--state_dir", str(state)])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert "replay_state.json" in line
    assert not (tmp_path / "out").exists()


def test_restart_with_another_block_size_neither_repeats_nor_skips(tmp_path, capsys):
    sample = bundled_sample()  # 5,000 quotes, 16 rejected rows, latencies that reorder arrivals
    state, out = tmp_path / "state", tmp_path / "out"
    with FeedServer([], FeedConfig(rate=0)) as url:  # the live feed ends at once: the replay ends with history
        argv = ["--source", "replay", "--live_url", url, "--input", sample, "--output_dir", str(out),
                "--state_dir", str(state)]
        with InThread([*argv, "--block_bytes", "1024", "--replay_rate", "2500"]) as first:
            wait_for(lambda: len(lines_of(out / "mid_prices.log")) >= 1000, 30, "1000 mid lines")
            stop_all()  # what SIGTERM does
            assert first.join(30) == 0
        position = json.loads((state / "replay_state.json").read_text())["historical_position"]
        assert 1000 <= position < 4900
        rc = cli.main(argv)  # default --block_bytes
    err = capsys.readouterr().err
    if rc == 2:  # refusing the saved position is fine too, if said clearly
        assert_one_line_usage_error(rc, err)
        return
    assert rc == 0, err
    reference = tmp_path / "reference"
    run_reference([sample], str(reference))
    wrong = {}
    for name in ("mid_prices.log", "errors.log", "dead_letter.jsonl"):
        got, expected = Counter(lines_of(out / name)), Counter(lines_of(reference / name))
        if got != expected:
            wrong[name] = f"repeated {sum((got - expected).values())}, lost {sum((expected - got).values())}"
    assert not wrong, f"resumed at position {position}: {wrong}"


# --------------------------------------------------------------------------- 7. SIGTERM


@contextmanager
def feed_subprocess(*args: str):
    """``python -m beam_pipeline.devtools.feed ARGS --port 0``: yields the ws:// url it prints."""
    process = subprocess.Popen([sys.executable, "-m", "beam_pipeline.devtools.feed", "--port", "0", *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        banner = process.stdout.readline()
        assert banner.startswith("feed: ws://127.0.0.1:"), banner
        yield banner.split()[1]
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


@contextmanager
def looping_feed(kind: str):
    """The live sample, looping at 1000/s with every 50th frame broken: in this process or as a subprocess."""
    if kind == "subprocess":
        with feed_subprocess("--input", LIVE_SAMPLE, "--rate", "1000", "--loop", "--malformed_every", "50") as url:
            yield url
    else:
        with FeedServer(load_messages(LIVE_SAMPLE), FeedConfig(rate=1000, loop=True, malformed_every=50)) as url:
            yield url


@pytest.mark.parametrize(
    "sig, feed, args",
    [(signal.SIGTERM, "subprocess", ()), (signal.SIGINT, "thread", ()),
     (signal.SIGTERM, "thread", ("--window", "fixed:1s"))],
    ids=["SIGTERM", "SIGINT", "SIGTERM-windows"],
)
def test_signal_stops_a_live_run_with_outputs_flushed(sig, feed, args, tmp_path, live_sample, live_sample_mids,
                                                      processes):
    out = tmp_path / "out"
    with looping_feed(feed) as url:
        process = start_cli(tmp_path, "--source", "live", "--live_url", url, "--output_dir", str(out), *args)
        processes.append(process)
        wait_for(lambda: len(lines_of(out / "mid_prices.log")) >= 300, 30, "300 mid lines")
        rc, took = stop_with(process, sig)
    stderr = (tmp_path / "run.stderr").read_text()
    assert rc == 0, stderr
    assert took < 10, f"took {took:.1f} s to stop"
    assert "Traceback" not in stderr
    text = (out / "mid_prices.log").read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert all(MID_LINE.match(line) for line in lines)
    metrics = metrics_of(out)
    assert_balanced(metrics)
    assert_counts_match_files(out, metrics)
    assert metrics["end_of_stream"] == 0
    # The looping feed repeats the sample with seq counting up: seq s is quote s % 2000.
    received = metrics["records_in"]
    assert received >= 300
    bad = {seq for seq in range(received) if (seq + 1) % 50 == 0}
    assert lines == [live_sample_mids[seq % 2000] for seq in range(received) if seq not in bad]
    assert [json.loads(line)["line"] for line in lines_of(out / "dead_letter.jsonl")] == sorted(bad)
    assert "balance" in (tmp_path / "run.stdout").read_text()
    if args:  # the windows fire when the source ends, which a signal makes it do
        panes = [json.loads(line) for line in lines_of(out / "windows.jsonl")]
        assert metrics["windows_balanced"] is True and len(panes) == metrics["windows_emitted"] > 0
        assert sum(p["count"] for p in panes) == metrics["quotes_in_panes"] == len(lines)


def test_sigterm_stops_a_replay_in_live_mode(tmp_path, processes):
    """History done, live feed never ending: SIGTERM ends the replay cleanly too."""
    hist = write_history(tmp_path / "history.csv", 50)
    live = write_live(tmp_path / "live.csv", 100, latency_ms=50)
    out = tmp_path / "out"
    with FeedServer(load_messages(str(live)), FeedConfig(rate=500, loop=True)) as url:
        process = start_cli(tmp_path, "--source", "replay", "--live_url", url, "--input", str(hist),
                            "--output_dir", str(out))
        processes.append(process)
        wait_for(lambda: sum(origin(line)[0] == "L" for line in lines_of(out / "mid_prices.log")) >= 50, 30,
                 "50 live mid lines")
        rc, took = stop_with(process)
    assert rc == 0, (tmp_path / "run.stderr").read_text()
    assert took < 10
    metrics = metrics_of(out)
    assert_balanced(metrics)
    assert_counts_match_files(out, metrics)
    assert metrics["historical_records"] == 50 and metrics["live_records"] >= 50
    lines = lines_of(out / "mid_prices.log")
    live_mids = expected_mid_lines(csv_rows(live))
    hist_mids = expected_mid_lines(csv_rows(hist))
    assert lines == [hist_mids[i] for i in unfiltered(range(50))] + [
        live_mids[seq % 100] for seq in range(metrics["live_records"])]


# --------------------------------------------------------------------------- 8. usage errors


def closed_port_url() -> str:
    return f"ws://127.0.0.1:{free_port()}/"


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(["--source", "live"], ["--source live", "--live_url"], id="live-without-url"),
        pytest.param(["--source", "replay"], ["--source replay", "--live_url"], id="replay-without-url"),
        pytest.param(["--source", "live", "--live_url", "http://127.0.0.1:8765/"], ["ws://", "http://127.0.0.1:8765/"],
                     id="http-scheme"),
        pytest.param(["--source", "live", "--live_url", "127.0.0.1:8765"], ["ws://", "127.0.0.1:8765"],
                     id="no-scheme"),
        pytest.param(["--source", "live", "--live_url", "CLOSED"], ["--live_url", "cannot connect"],
                     id="unreachable"),
        pytest.param(["--source", "replay", "--live_url", "CLOSED"], ["--live_url", "cannot connect"],
                     id="replay-unreachable"),
        pytest.param(["--control_port", "9999"], ["--control_port", "--source replay"], id="control-port-historical"),
        pytest.param(["--state_dir", "STATE"], ["--state_dir", "--source replay"], id="state-dir-historical"),
        pytest.param(["--replay_rate", "200"], ["--replay_rate", "--source replay"], id="replay-rate-historical"),
        pytest.param(["--source", "live", "--live_url", "CLOSED", "--control_port", "9999"],
                     ["--control_port", "--source replay"], id="control-port-live"),
        pytest.param(["--source", "live", "--live_url", "CLOSED", "--state_dir", "STATE"],
                     ["--state_dir", "--source replay"], id="state-dir-live"),
        pytest.param(["--source", "live", "--live_url", "CLOSED", "--replay_rate", "5"],
                     ["--replay_rate", "--source replay"], id="replay-rate-live"),
        pytest.param(["--live_url", "ws://127.0.0.1:8765/"], ["--live_url", "--source live"], id="url-historical"),
        pytest.param(["--source", "historical", "--live_url", "ws://127.0.0.1:8765/"],
                     ["--live_url", "--source live"], id="url-explicit-historical"),
        pytest.param(["--source", "live", "--live_url", "CLOSED", "--runner", "PortableRunner"],
                     ["--source live", "DirectRunner", "PortableRunner"], id="live-portable-runner"),
        pytest.param(["--source", "replay", "--live_url", "CLOSED", "--runner", "PortableRunner"],
                     ["--source replay", "DirectRunner", "PortableRunner"], id="replay-portable-runner"),
        pytest.param(["--source", "replay", "--live_url", "CLOSED", "--replay_rate", "-1"],
                     ["--replay_rate", "-1"], id="negative-replay-rate"),
        pytest.param(["--source", "replay", "--live_url", "CLOSED", "--control_port", "70000"],
                     ["--control_port", "70000"], id="control-port-out-of-range"),
        pytest.param(["--source", "sideways"], ["--source", "sideways"], id="unknown-source"),
    ],
)
def test_live_usage_errors_exit_2_with_a_line_each(args, expected, tmp_path, capsys):
    closed = closed_port_url()
    args = [closed if a == "CLOSED" else str(tmp_path / "state") if a == "STATE" else a for a in args]
    out = tmp_path / "out"
    rc = cli.main(["--output_dir", str(out), *args])
    captured = capsys.readouterr()
    assert_usage_errors(rc, captured.err, expected)
    assert captured.out == ""
    assert not out.exists(), "a usage error must not start the pipeline"
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("url", ["ws://127.0.0.1:abc/", "ws://127.0.0.1:99999/"], ids=["non-numeric", "out-of-range"])
def test_live_url_with_a_bad_port_is_a_usage_error(url, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["--source", "live", "--live_url", url, "--output_dir", str(out)])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert "--live_url" in line and url in line
    assert not out.exists()


def test_a_control_port_in_use_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "out"
    with socket.socket() as taken, FeedServer([], FeedConfig(rate=0)) as url:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc = cli.main(["--source", "replay", "--live_url", url, "--control_port", str(port), "--output_dir", str(out)])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert f"--control_port {port}" in line
    assert not out.exists()


def test_subprocess_unreachable_live_url(tmp_path):
    url = closed_port_url()
    result = subprocess.run([sys.executable, "-m", "beam_pipeline", "--source", "live", "--live_url", url,
                             "--output_dir", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    line = assert_one_line_usage_error(result.returncode, result.stderr)
    assert url in line and "cannot connect" in line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- windows on a live run


def test_live_run_with_fixed_windows(tmp_path, live_sample, capsys):
    out = tmp_path / "out"
    with FeedServer(live_sample, FeedConfig(rate=0, malformed_every=100)) as url:
        rc = run_live(url, out, "--window", "fixed:1s")
    assert rc == 0, capsys.readouterr().err
    assert (out / "windows.jsonl").exists() and (out / "late.jsonl").exists()
    metrics = metrics_of(out)
    assert_balanced(metrics)
    assert metrics["windows_balanced"] is True
    assert metrics["records_in"] == 2000 and metrics["dead_lettered"] == 20
    assert metrics["quotes_in_panes"] + metrics["late_dropped"] + metrics["dead_lettered"] == metrics["records_in"]
    assert metrics["late_dropped"] == 0 and (out / "late.jsonl").read_text() == ""
    panes = [json.loads(line) for line in lines_of(out / "windows.jsonl")]
    assert len(panes) == metrics["windows_emitted"] > 0
    assert sum(p["count"] for p in panes) == 1980
    # The live sample is in timestamp order and has no latency: every quote is on time, and the panes are
    # the batch panes of the quotes that are not malformed.
    kept = tmp_path / "kept.csv"
    rows = csv_rows(LIVE_SAMPLE)
    with open(kept, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for seq, row in enumerate(rows) if (seq + 1) % 100)
    run_reference([str(kept)], str(tmp_path / "reference"), window=parse_window("fixed:1s"))
    assert sorted(lines_of(out / "windows.jsonl")) == sorted(lines_of(tmp_path / "reference" / "windows.jsonl"))
