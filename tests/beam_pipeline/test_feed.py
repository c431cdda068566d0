"""The development websocket feed: frames, resume positions, faults, and a real server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from beam_pipeline.config import bundled_sample
from beam_pipeline.devtools.feed import FeedConfig, FeedServer, frames, load_messages, main, resume_position

MESSAGES = [{"timestamp": f"2024-06-03 07:00:00.{i:03d}", "symbol": "EURUSD", "bid": "1.1", "ask": "1.2"} for i in range(50)]


def receive_all(url: str, timeout: float = 10) -> tuple[list[str], int | None]:
    """Every text frame until the server closes, and the close code."""
    texts = []
    with connect(url, open_timeout=timeout) as websocket:
        try:
            while True:
                texts.append(websocket.recv(timeout=timeout))
        except ConnectionClosed as closed:
            return texts, closed.rcvd.code if closed.rcvd else None


class TestFrames:
    def test_quotes_then_end_of_stream(self):
        got = list(frames(MESSAGES[:3], FeedConfig()))
        assert [json.loads(f.text) for f in got] == [
            {"seq": 0, **MESSAGES[0]}, {"seq": 1, **MESSAGES[1]}, {"seq": 2, **MESSAGES[2]}, {"seq": 3, "eos": True}]
        assert [f.eos for f in got] == [False, False, False, True]

    def test_resuming_starts_at_the_sequence_number(self):
        assert [f.seq for f in frames(MESSAGES[:5], FeedConfig(), start=3)] == [3, 4, 5]
        assert [f.eos for f in frames(MESSAGES[:5], FeedConfig(), start=9)] == [True]  # past the end

    def test_loop_keeps_counting_and_never_ends(self):
        stream = frames(MESSAGES[:2], FeedConfig(loop=True))
        first = [json.loads(next(stream).text) for _ in range(5)]
        assert [m["seq"] for m in first] == [0, 1, 2, 3, 4]
        assert first[2]["timestamp"] == MESSAGES[0]["timestamp"]

    def test_every_nth_frame_is_broken_json(self):
        broken = []
        for frame in frames(MESSAGES[:25], FeedConfig(malformed_every=10)):
            try:
                json.loads(frame.text)
            except json.JSONDecodeError:
                broken.append(frame.seq)
        assert broken == [9, 19]

    def test_empty_input_is_just_the_marker(self):
        assert [json.loads(f.text) for f in frames([], FeedConfig())] == [{"seq": 0, "eos": True}]

    @pytest.mark.parametrize("path, expected", [("/", 0), ("/?from=42", 42), ("/quotes?x=1&from=7", 7)])
    def test_resume_position(self, path, expected):
        assert resume_position(path) == expected

    @pytest.mark.parametrize("path", ["/?from=-1", "/?from=abc"])
    def test_bad_resume_position(self, path):
        with pytest.raises(ValueError):
            resume_position(path)

    @pytest.mark.parametrize("field", ["drop_every", "malformed_every", "pause_after"])
    def test_config_rejects_nonsense(self, field):
        with pytest.raises(ValueError, match=field):
            FeedConfig(**{field: 0})


def test_load_messages_keeps_the_files_text():
    messages = load_messages(bundled_sample("live_sample.csv"))
    assert len(messages) == 2000
    assert set(messages[0]) == {"timestamp", "symbol", "bid_price", "bid_size", "ask_price", "ask_size"}
    assert all(isinstance(value, str) for value in messages[0].values())


class TestServer:
    def test_serves_every_quote_then_the_marker(self):
        with FeedServer(MESSAGES, FeedConfig(rate=0)) as url:
            texts, code = receive_all(url)
        assert [json.loads(t) for t in texts] == [{"seq": i, **m} for i, m in enumerate(MESSAGES)] + [
            {"seq": 50, "eos": True}]
        assert code == 1000

    def test_a_dropped_connection_resumed_with_from_loses_and_repeats_nothing(self):
        received = []
        with FeedServer(MESSAGES, FeedConfig(rate=0, drop_every=20)) as url:
            for _ in range(10):  # 50 quotes, dropped every 20 frames: 3 connections are enough
                if received and json.loads(received[-1]).get("eos"):
                    break
                position = json.loads(received[-1])["seq"] + 1 if received else 0
                texts, code = receive_all(f"{url}?from={position}")
                assert code in (1000, 1012)
                received += texts
        assert [json.loads(t)["seq"] for t in received] == list(range(51))

    def test_pacing_follows_the_rate(self):
        with FeedServer(MESSAGES, FeedConfig(rate=250)) as url:
            started = time.monotonic()
            texts, _ = receive_all(url)
            elapsed = time.monotonic() - started
        assert len(texts) == 51
        assert elapsed >= 50 / 250 * 0.9  # 50 frames at 250/s cannot arrive in much less than 0.2 s

    def test_a_bad_from_closes_with_policy_violation(self):
        with FeedServer(MESSAGES, FeedConfig(rate=0)) as url:
            texts, code = receive_all(f"{url}?from=-3")
        assert texts == [] and code == 1008


def test_cli_reports_a_missing_file(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "none.csv")]) == 2
    assert "feed: error" in capsys.readouterr().err


def test_cli_serves_on_127_0_0_1(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "beam_pipeline.devtools.feed", "--input", bundled_sample("live_sample.csv"), "--port", "0",
         "--rate", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        banner = process.stdout.readline()
        assert banner.startswith("feed: ws://127.0.0.1:"), banner
        url = banner.split()[1]
        texts, _ = receive_all(url)
        assert len(texts) == 2001 and json.loads(texts[-1]) == {"seq": 2000, "eos": True}
    finally:
        process.terminate()
        process.wait(10)
