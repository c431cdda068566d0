"""Prism (Beam's Go runner, built by ``make prism``) writes what the DirectRunner writes, byte for byte.

Each test runs one job through ``beam_pipeline.cli.main`` on the default DirectRunner and on
``--runner PrismRunner``, which finds the binary ``make prism`` built (no download, no
``--prism_location``) and runs the SDK workers in this process (LOOPBACK). The outputs must match as
for the PortableRunner (:func:`tests.runners.test_portable.assert_same_outputs`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from beam_pipeline import cli
from beam_pipeline.config import bundled_sample
from beam_pipeline.devtools.feed import FeedConfig, FeedServer, load_messages
from beam_pipeline.devtools.reference import stream_outcome
from beam_pipeline.options import (
    QuoteOptions,
    parse_options,
    quote_prices,
    watermark_interval,
    watermark_lag,
    window_config,
)
from runners import prism
from tests.conftest import assert_usage_errors
from tests.runners.test_portable import assert_same_outputs, portable_runs  # noqa: F401  (fixture)
from transforms.quotes.rules import parse_timestamp
from transforms.windows.format import pane_json

PRISM = ("--runner", "PrismRunner")


def run_both(tmp_path: Path, submitted: list[str], *args: str) -> tuple[Path, Path]:
    folders = []
    for name, runner in (("direct", ()), ("prism", PRISM)):
        out = tmp_path / name
        before = len(submitted)  # with --portable the DirectRunner's run is submitted to a job service too
        assert cli.main([*args, *runner, "--output_dir", str(out), "--progress", "off"]) == 0, name
        folders.append(out)
    assert submitted[before:] == ["PrismRunner"], "the Prism run was not submitted to Prism's job service"
    return folders[0], folders[1]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((), id="sample"),
        pytest.param(("--window", "fixed:1s"), id="fixed-windows"),
        pytest.param(("--window", "session:500ms"), id="session-windows"),
        pytest.param(("--trades", str(Path(bundled_sample()).with_name("trades_sample.csv"))), id="trades"),
    ],
)
def test_batch_quotes_job_on_prism_writes_what_the_direct_runner_writes(args, tmp_path, prism_binary, portable_runs):
    direct, on_prism = run_both(tmp_path, portable_runs, "--input", bundled_sample(), *args)
    metrics = assert_same_outputs(direct, on_prism)
    assert metrics["records_in"] == 5000


# --------------------------------------------------------------------------- streaming, real watermarks


def streaming_args(window: str, lateness: str, lag: str, interval: str) -> list[str]:
    return ["--streaming", "--window", window, "--allowed_lateness", lateness, "--watermark_lag", lag,
            "--watermark_interval", interval]


def sample_head(tmp_path: Path, rows: int | None) -> str:
    """The bundled sample, or its header and first ``rows`` rows (a bundle per report costs ~20 ms)."""
    if rows is None:
        return bundled_sample()
    head = tmp_path / f"head{rows}.csv"
    head.write_text("".join(Path(bundled_sample()).read_text().splitlines(keepends=True)[: rows + 1]))
    return str(head)


@pytest.mark.parametrize(
    "window, lateness, lag, interval, rows",
    [
        pytest.param("fixed:100ms", "50ms", "0ms", "1ms", 1500, id="100ms-windows-1ms-reports"),
        pytest.param("fixed:100ms", "50ms", "0ms", "100ms", None, id="100ms-windows-100ms-reports"),
        pytest.param("fixed:1s", "500ms", "0ms", "1s", None, id="1s-windows-1s-reports"),
        pytest.param("fixed:1s", "0ms", "10ms", "250ms", None, id="1s-windows-lag-10ms"),
    ],
)
def test_streaming_replay_on_prism_fires_the_panes_the_watermark_rule_gives(
    window, lateness, lag, interval, rows, tmp_path, prism_binary, portable_runs
):
    # History read as a real unbounded source (ReadFeed over the historical feed): Prism fires the
    # windows as the source's watermark passes them. The plain-Python reference applies the same rule
    # (transforms.sources.watermarks) quote by quote.
    source = sample_head(tmp_path, rows)
    args = streaming_args(window, lateness, lag, interval)
    out = tmp_path / "prism"
    assert cli.main(["--input", source, *PRISM, *args, "--output_dir", str(out), "--progress", "off"]) == 0
    assert portable_runs == ["PrismRunner"]
    options = parse_options(args)
    quote_options = options.view_as(QuoteOptions)
    config = window_config(quote_options, streaming=True)
    expected = stream_outcome([source], config, watermark_lag(quote_options), watermark_interval(quote_options))

    panes = [json.loads(line) for line in (out / "windows.jsonl").read_text().splitlines()]
    on_time = [json.dumps(p) for p in panes if p["timing"] == "ON_TIME"]
    assert on_time == [json.dumps(json.loads(pane_json(p, quote_prices().scale))) for p in expected.on_time]
    late_counts = Counter()
    for pane in panes:
        if pane["timing"] == "LATE":
            late_counts[(pane["tenant"], pane["symbol"], parse_timestamp(pane["window_start"].rstrip("Z")))] += pane["count"]
    assert late_counts == Counter(expected.late_counts)
    dropped = [(r["source"], r["line"]) for r in map(json.loads, (out / "late.jsonl").read_text().splitlines())]
    assert sorted(dropped) == sorted((source, line) for _file, line in expected.dropped)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["balanced"] and metrics["windows_balanced"]
    assert metrics["late_dropped"] == len(expected.dropped)
    assert metrics["watermark_interval"] == interval and metrics["streaming"] is True


def test_the_sample_exercises_late_panes_and_late_quotes_under_the_rule(tmp_path):
    # so that the test above checks lateness, not only on-time panes
    options = parse_options(streaming_args("fixed:100ms", "50ms", "0ms", "1ms")).view_as(QuoteOptions)
    head = sample_head(tmp_path, 1500)
    outcome = stream_outcome([head], window_config(options, streaming=True), 0, 1000)
    assert sum(outcome.late_counts.values()) > 10 and len(outcome.dropped) > 5
    coarse = stream_outcome([head], window_config(options, streaming=True), 0, 1_000_000)
    assert sum(coarse.late_counts.values()) < sum(outcome.late_counts.values())  # the interval matters


# --------------------------------------------------------------------------- live windows as the feed runs


class FirstSeen(threading.Thread):
    """When each line of a file first appeared (polled every 20 ms)."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.seen: dict[str, float] = {}
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self._poll()
            time.sleep(0.02)
        self._poll()

    def _poll(self):
        if self.path.exists():
            now = time.time()
            for line in self.path.read_text().splitlines():
                self.seen.setdefault(line, now)


def test_live_windows_on_prism_are_written_as_the_watermark_passes_them(tmp_path, prism_binary, portable_runs):
    # The live sample (2,000 quotes over 39 s of timestamps, in order, no latency) at 200 frames/s with a
    # 3 s pause: fixed 1 s windows, reports every 1 s of arrival time, watermark lag 0. A window ending at E
    # has passed once the report after the interval holding E is made, i.e. when the first quote of the
    # interval after that is read; its pane must be in windows.jsonl within 2 s of that quote's sending,
    # while the feed still runs.
    messages = load_messages(bundled_sample("live_sample.csv"))
    out = tmp_path / "out"
    sends = tmp_path / "sends.tsv"
    server = FeedServer(messages, FeedConfig(rate=200, pause_after=1000, pause_seconds=3))
    server.feed.sent_log = str(sends)
    watcher = FirstSeen(out / "windows.jsonl")
    watcher.start()
    with server as url:
        rc = cli.main(["--source", "live", "--live_url", url, *PRISM, "--window", "fixed:1s",
                       "--output_dir", str(out), "--progress", "off"])
    watcher.done.set()
    watcher.join(5)
    assert rc == 0 and portable_runs == ["PrismRunner"]
    sent_at = dict(tuple(map(float, line.split("\t"))) for line in sends.read_text().splitlines())
    stamps = [parse_timestamp(m["timestamp"]) for m in messages]
    last_sent = max(sent_at.values())
    delays, before_the_end = [], 0
    for line, seen in watcher.seen.items():
        pane = json.loads(line)
        assert pane["timing"] == "ON_TIME"
        end = parse_timestamp(pane["window_end"].rstrip("Z"))
        passing = next((seq for seq, stamp in enumerate(stamps) if stamp >= end + 1_000_000), None)
        if passing is None:
            continue  # the last windows fire when the feed ends
        delays.append(seen - sent_at[passing])
        before_the_end += seen < last_sent
    assert len(delays) >= 30, "too few windows passed while the feed ran"
    assert max(delays) < 2.0, f"slowest pane {max(delays):.2f} s after the watermark passed its window"
    assert before_the_end >= 30  # written while the feed was still sending
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["records_in"] == 2000 and metrics["balanced"] and metrics["windows_balanced"]
    assert metrics["quotes_in_panes"] == 2000 and sum(json.loads(line)["count"] for line in watcher.seen) == 2000
    assert metrics["watermark_interval"] == "1s"


# --------------------------------------------------------------------------- what Prism refuses, one line each


@pytest.mark.parametrize(
    "args, mentions",
    [
        pytest.param(["--source", "replay", "--live_url", "ws://127.0.0.1:1/"], ["--source replay", "DirectRunner",
                     "PrismRunner reads --source live"], id="replay"),
        pytest.param(["--source", "webhook"], ["--source webhook", "DirectRunner"], id="webhook"),
        pytest.param(["--source", "live", "--live_url", "ws://127.0.0.1:1/", "--environment_type", "PROCESS"],
                     ["--environment_type PROCESS", "LOOPBACK"], id="workers-elsewhere"),
    ],
)
def test_sources_whose_control_lives_in_this_process_are_refused_on_prism(args, mentions, tmp_path, capsys):
    rc = cli.main([*PRISM, *args, "--output_dir", str(tmp_path / "out"), "--progress", "off"])
    assert_usage_errors(rc, capsys.readouterr().err, mentions)


def test_streaming_on_prism_without_its_binary_is_refused_not_run_without_watermarks(tmp_path, monkeypatch, capsys):
    # Batch falls back to the DirectRunner with a warning; a streaming run would silently lose its
    # real watermark there, so it is a usage error naming make prism.
    monkeypatch.setattr(prism, "BUILD_ROOT", str(tmp_path / "not-built"))
    monkeypatch.setattr(prism, "BIN_CACHE", str(tmp_path / "no-cache"))
    rc = cli.main([*PRISM, "--streaming", "--window", "fixed:1s", "--output_dir", str(tmp_path / "out")])
    assert_usage_errors(rc, capsys.readouterr().err, ["make prism"])


def test_a_prism_run_leaves_beams_direct_runner_to_later_pipelines(tmp_path, prism_binary, caplog):
    # Beam's DirectRunner tries Prism first, through a job server it shares per process, and offline falls
    # back to its local runner. A Prism run of ours must not leave that shared server behind for later
    # pipelines of the process that ask for Beam's default.
    import apache_beam as beam

    assert cli.main(["--input", bundled_sample(), *PRISM, "--output_dir", str(tmp_path / "out"), "--progress", "off"]) == 0
    caplog.clear()
    caplog.set_level(logging.INFO, logger="apache_beam.runners.direct.direct_runner")
    with beam.Pipeline() as pipeline:
        _ = pipeline | beam.Create([1, 2]) | beam.Map(lambda x: x)
    tried = [r.getMessage() for r in caplog.records if r.name == "apache_beam.runners.direct.direct_runner"]
    assert "Running pipeline with PrismRunner." in tried  # Beam's own attempt, as in any process here
    assert "Falling back to DirectRunner" in tried, "Beam's default DirectRunner ran on the Prism our run left"
