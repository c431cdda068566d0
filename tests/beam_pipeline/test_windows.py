"""The window stage end to end: batch and the --streaming replay of history, against hand-computed panes."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest

from beam_pipeline import cli
from beam_pipeline.config import bundled_sample, resolve
from beam_pipeline.devtools.reference import run_reference
from beam_pipeline.options import parse_options
from beam_pipeline.pipeline import build_pipeline
from tests.beam_pipeline.test_pipeline import mixed_file
from tests.conftest import assert_usage_errors
from transforms.quotes.rules import parse_timestamp
from transforms.windows.logic import parse_window

# Fixed 100 ms windows, allowed lateness 50 ms, watermark = arrival (lag 0). Arrival order:
# r1 .015, r2 .055, r4 .115, r3 .120, r6 .150, r7 .165, r8 .240, r5 .320, r9 .340.
LATE_DATA = (
    "timestamp,symbol,bid,ask,latency\n"
    "2024-01-01 00:00:00.010,A,10,12,5\n"  # r1  [0,100)   on time
    "2024-01-01 00:00:00.050,A,11,13,5\n"  # r2  [0,100)   on time
    "2024-01-01 00:00:00.090,A,12,14,30\n"  # r3  [0,100)   arrives .120 >= end .100: LATE pane (deadline .150)
    "2024-01-01 00:00:00.110,A,10,11,5\n"  # r4  [100,200) on time
    "2024-01-01 00:00:00.120,B,20,22,200\n"  # r5  [100,200) arrives .320 > deadline .250: late.jsonl
    "2024-01-01 00:00:00.150,A,9,10,0\n"  # r6  [100,200) on time
    "2024-01-01 00:00:00.160,B,21,23,5\n"  # r7  [100,200) on time
    "2024-01-01 00:00:00.170,A,9,8,5\n"  # crossed quote: dead letter
    "2024-01-01 00:00:00.230,A,10,12,10\n"  # r8  [200,300) on time
    "2024-01-01 00:00:00.300,B,22,24,40\n"  # r9  [300,400) on time
)
WINDOW_ARGS = ("--window", "fixed:100ms", "--allowed_lateness", "50ms")


def run(tmp_path: Path, csv_path: Path | str, *args: str, name: str = "out") -> dict:
    out = tmp_path / name
    argv = ["--output_dir", str(out), "--progress", "off", *args]
    build_pipeline(resolve(parse_options([*argv, "--input", str(csv_path)]))).run().wait_until_finish()
    files = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    files["metrics"] = json.loads(files.pop("metrics.json"))
    return files


def sample_head(tmp_path: Path, rows: int) -> Path:
    """The header and first ``rows`` rows of the bundled sample."""
    head = tmp_path / f"head{rows}.csv"
    head.write_text("".join(Path(bundled_sample()).read_text().splitlines(keepends=True)[: rows + 1]))
    return head


def panes(files: dict) -> list[tuple]:
    return [
        (p["window_start"][-10:-1], p["symbol"], p["timing"], p["pane_index"], p["count"], p["open"], p["close"])
        for p in map(json.loads, files["windows.jsonl"].splitlines())
    ]


@pytest.fixture(scope="module")
def late_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("late") / "quotes.csv"
    path.write_text(LATE_DATA)
    return path


class TestStreamingReplayOfASmallFile:
    @pytest.fixture(scope="class")
    def files(self, late_data, tmp_path_factory):
        return run(tmp_path_factory.mktemp("stream"), late_data, "--streaming", *WINDOW_ARGS)

    def test_panes_are_the_ones_computed_by_hand(self, files):
        # A batch run would put r3 into the ON_TIME pane of [0,100) (count 3) and r5 into
        # [100,200) of B (count 2); see TestBatch below.
        assert panes(files) == [
            ("00:00.000", "A", "ON_TIME", 0, 2, 11, 12),  # r1, r2: mids 11 then 12
            ("00:00.000", "A", "LATE", 1, 1, 13, 13),  # r3 alone: a discarding late pane
            ("00:00.100", "A", "ON_TIME", 0, 2, 10.5, 9.5),  # r4, r6
            ("00:00.100", "B", "ON_TIME", 0, 1, 22, 22),  # r7 (r5 is late.jsonl)
            ("00:00.200", "A", "ON_TIME", 0, 1, 11, 11),  # r8
            ("00:00.300", "B", "ON_TIME", 0, 1, 23, 23),  # r9
        ]

    def test_the_quote_past_allowed_lateness_is_in_late_jsonl_with_the_watermark_it_missed(self, files, late_data):
        records = [json.loads(line) for line in files["late.jsonl"].splitlines()]
        assert records == [
            {
                "source": str(late_data),
                "line": 6,
                "tenant": "default",
                "symbol": "B",
                "timestamp": "2024-01-01T00:00:00.120Z",
                "arrival": "2024-01-01T00:00:00.320Z",
                "watermark": "2024-01-01T00:00:00.320Z",
                "window_end": "2024-01-01T00:00:00.200Z",
                "deadline": "2024-01-01T00:00:00.250Z",
                "bid": 20,
                "ask": 22,
                "reason": records[0]["reason"],
            }
        ]
        assert records[0]["reason"].startswith("late: ")
        assert "50ms" in records[0]["reason"]

    def test_counts_balance_quote_by_quote(self, files):
        metrics = files["metrics"]
        assert metrics["records_in"] == 10
        assert (metrics["quotes_in_panes"], metrics["late_dropped"], metrics["dead_lettered"]) == (8, 1, 1)
        assert metrics["windowed_quotes"] == 8
        assert metrics["windows_emitted"] == 6 and metrics["late_panes"] == 1
        assert metrics["panes_by_timing"] == {"LATE": 1, "ON_TIME": 5}
        assert metrics["balanced"] and metrics["windows_balanced"]
        assert metrics["streaming"] is True and metrics["watermark_lag"] == "0ms"

    def test_element_wise_outputs_are_the_same_as_in_batch(self, files, late_data, tmp_path):
        batch = run(tmp_path, late_data)
        for name in ("mid_prices.log", "errors.log", "dead_letter.jsonl"):
            assert files[name] == batch[name], name

    def test_a_watermark_lag_covering_the_latency_makes_everything_on_time(self, late_data, tmp_path):
        # r5 (200 ms latency) is the slowest quote: with a 200 ms lag the watermark never
        # passes a window end before that window's quotes have all arrived.
        lagged = run(tmp_path, late_data, "--streaming", *WINDOW_ARGS, "--watermark_lag", "200ms")
        assert {p[2] for p in panes(lagged)} == {"ON_TIME"}
        assert lagged["late.jsonl"] == ""
        assert lagged["metrics"]["quotes_in_panes"] == 8 + 1


class TestBatch:
    def test_batch_puts_every_quote_in_one_on_time_pane(self, late_data, tmp_path):
        files = run(tmp_path, late_data, *WINDOW_ARGS)
        assert panes(files) == [
            ("00:00.000", "A", "ON_TIME", 0, 3, 11, 13),
            ("00:00.100", "A", "ON_TIME", 0, 2, 10.5, 9.5),
            ("00:00.100", "B", "ON_TIME", 0, 2, 21, 22),
            ("00:00.200", "A", "ON_TIME", 0, 1, 11, 11),
            ("00:00.300", "B", "ON_TIME", 0, 1, 23, 23),
        ]
        assert files["late.jsonl"] == ""
        assert files["metrics"]["windows_balanced"] and files["metrics"]["quotes_in_panes"] == 9

    @pytest.mark.parametrize(
        "window, rows",
        [("fixed:1s", None), ("fixed:100ms", 1000), ("sliding:1s,250ms", 1000), ("session:40ms", 1000)],
    )
    def test_batch_equals_streaming_with_an_infinite_watermark_lag(self, window, rows, tmp_path):
        # The bundled sample (or its first rows: the streaming runner pays for every pane); an
        # infinite lag means the watermark only moves at the end of the stream, so every pane is
        # on time, as in batch.
        sample = sample_head(tmp_path, rows) if rows else bundled_sample()
        args = ("--window", window, "--allowed_lateness", "50ms")
        batch = run(tmp_path, sample, *args, name="batch")
        stream = run(tmp_path, sample, "--streaming", *args, "--watermark_lag", "inf", name="stream")
        assert batch["windows.jsonl"] == stream["windows.jsonl"]
        assert batch["windows.jsonl"].count("\n") > 100
        assert stream["late.jsonl"] == batch["late.jsonl"] == ""
        assert batch["metrics"]["windows_balanced"] and stream["metrics"]["windows_balanced"]

    def test_no_window_flag_no_window_outputs(self, late_data, tmp_path):
        files = run(tmp_path, late_data)
        assert "windows.jsonl" not in files and "late.jsonl" not in files
        assert "windows_emitted" not in files["metrics"]


def _classify_by_hand(path: Path, size_us: int, lateness_us: int, dead_lines: set[int]) -> tuple[Counter, Counter, int]:
    """Per (symbol, window start): quotes expected ON_TIME and LATE under watermark = arrival."""
    on_time, late, dropped = Counter(), Counter(), 0
    for line, row in enumerate(csv.DictReader(io.StringIO(path.read_text())), start=2):
        if line in dead_lines:
            continue
        event = parse_timestamp(row["timestamp"])
        arrival = event + int(row["latency_ms"]) * 1000
        stamp = arrival - arrival % 1000
        start = event - event % size_us
        if stamp > start + size_us + lateness_us:
            dropped += 1
        elif stamp >= start + size_us:
            late[(row["symbol"], start)] += 1
        else:
            on_time[(row["symbol"], start)] += 1
    return on_time, late, dropped


def test_streaming_replay_of_the_sample_classifies_every_quote_as_computed_by_hand(tmp_path):
    # The first 400 rows of the bundled sample (about 8 s of quotes): fixed 100 ms windows, 50 ms
    # of allowed lateness, as in the example of docs/event-time.md.
    head = sample_head(tmp_path, 400)
    files = run(tmp_path, head, "--streaming", *WINDOW_ARGS)
    dead = {json.loads(line)["line"] for line in files["dead_letter.jsonl"].splitlines()}
    on_time, late, dropped = _classify_by_hand(head, 100_000, 50_000, dead)
    got = {"ON_TIME": Counter(), "LATE": Counter()}
    for pane in map(json.loads, files["windows.jsonl"].splitlines()):
        start = parse_timestamp(pane["window_start"].rstrip("Z"))
        got[pane["timing"]][(pane["symbol"], start)] += pane["count"]
    assert got["ON_TIME"] == on_time
    assert got["LATE"] == late
    assert files["late.jsonl"].count("\n") == dropped
    assert sum(late.values()) > 10 and dropped > 0  # the sample does exercise lateness
    assert files["metrics"]["windows_balanced"]


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(["--allowed_lateness", "1s"], ["--allowed_lateness", "needs --window"], id="lateness-without-window"),
        pytest.param(["--window", "fixed:1s", "--watermark_lag", "5ms"], ["--watermark_lag", "--streaming"], id="lag-in-batch"),
        pytest.param(["--window", "fixed:1s", "--trigger", "early:10"], ["early", "--streaming"], id="early-in-batch"),
        pytest.param(["--window", "tumbling:1s"], ["--window", "tumbling:1s"], id="unknown-kind"),
        pytest.param(["--window", "fixed:0.5ms"], ["--window", "whole number of milliseconds"], id="sub-ms"),
        pytest.param(["--window", "fixed:1h"], ["--window", "1h"], id="unknown-unit"),
        pytest.param(["--window", "sliding:1s,2s"], ["--window", "period"], id="period-above-size"),
        pytest.param(["--window", "session:0ms"], ["--window", "gap"], id="zero-gap"),
        pytest.param(["--window", "fixed:1s", "--allowed_lateness=-1s"], ["--allowed_lateness", "-1s"], id="negative-lateness"),
        pytest.param(["--streaming", "--window", "fixed:1s", "--trigger", "early:0"], ["--trigger", "at least 1"], id="early-zero"),
        pytest.param(["--streaming", "--window", "fixed:1s", "--trigger", "late:1"], ["--trigger", "late:1"], id="unknown-trigger"),
        pytest.param(["--window", "fixed:1s", "--accumulation", "sometimes"], ["--accumulation", "sometimes"], id="bad-accumulation"),
        pytest.param(["--streaming", "--window", "fixed:1s", "--watermark_lag", "soon"], ["--watermark_lag", "soon"], id="bad-lag"),
        pytest.param(["--streaming", "--runner", "PortableRunner"], ["--streaming", "DirectRunner", "PrismRunner"],
                     id="streaming-elsewhere"),
        pytest.param(["--window", "fixed:1s", "--watermark_interval", "1s"], ["--watermark_interval", "PrismRunner"],
                     id="interval-in-batch"),
        pytest.param(["--streaming", "--window", "fixed:1s", "--watermark_interval", "1s"],
                     ["--watermark_interval", "DirectRunner"], id="interval-on-the-direct-runner"),
        pytest.param(["--streaming", "--runner", "PrismRunner", "--watermark_interval", "0ms"],
                     ["--watermark_interval", "at least 1ms"], id="interval-zero"),
        pytest.param(["--streaming", "--runner", "PrismRunner", "--watermark_interval", "soon"],
                     ["--watermark_interval", "soon"], id="interval-unreadable"),
    ],
)
def test_bad_window_flags_exit_2_with_a_line_each(args, expected, tmp_path, capsys):
    out_dir = tmp_path / "out"
    rc = cli.main(["--output_dir", str(out_dir), "--progress", "off", *args])
    assert_usage_errors(rc, capsys.readouterr().err, expected)
    assert not out_dir.exists()


def test_cli_summary_shows_both_balances(late_data, tmp_path, capsys):
    rc = cli.main(["--input", str(late_data), "--output_dir", str(tmp_path / "o"), "--progress", "off",
                   "--streaming", *WINDOW_ARGS])
    out = capsys.readouterr().out
    assert rc == 0
    assert "6 panes (1 LATE, 5 ON_TIME), fixed:100ms" in out
    assert "1 quotes past their window's allowed lateness" in out
    assert "window counts balance: 10 in = 8 + 1 + 1" in out
    assert "mid-price counts balance: 10 in = " in out


@pytest.mark.parametrize("window", ["fixed:250ms", "sliding:2s,500ms", "session:30ms"])
def test_batch_windows_identical_to_the_plain_python_reference(window, tmp_path):
    # Two messy files (malformed, odd-but-valid and blank lines) merged in arrival order; the
    # reference computes panes by arithmetic and merges sessions by hand, without Beam.
    sources = [tmp_path / f"part{seed}.csv" for seed in (1, 2)]
    for seed, path in zip((1, 2), sources):
        path.write_bytes(mixed_file(seed, 3000))
    files = run(tmp_path, tmp_path / "part*.csv", "--window", window, "--block_bytes", "4096")
    run_reference([str(p) for p in sources], str(tmp_path / "ref"), window=parse_window(window))
    assert files["windows.jsonl"] == (tmp_path / "ref" / "windows.jsonl").read_text()
    assert files["windows.jsonl"].count("\n") > 50
    assert files["metrics"]["windows_balanced"]


def test_streaming_without_windows_writes_what_batch_writes(late_data, tmp_path):
    stream = run(tmp_path, late_data, "--streaming", name="stream")
    batch = run(tmp_path, late_data, name="batch")
    assert {k: v for k, v in stream.items() if k != "metrics"} == {k: v for k, v in batch.items() if k != "metrics"}
    assert stream["metrics"]["stream_steps"]["watermark_steps"] == 0  # no windows: nothing for it to decide
    assert stream["metrics"]["balanced"] and "windows_balanced" not in stream["metrics"]


def test_streaming_replay_of_a_file_with_no_quotes(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("timestamp,symbol,bid,ask,latency\n")
    files = run(tmp_path, empty, "--streaming", *WINDOW_ARGS)
    assert {name: text for name, text in files.items() if name != "metrics"} == {
        name: "" for name in ("mid_prices.log", "errors.log", "dead_letter.jsonl", "windows.jsonl", "late.jsonl")
    }
    assert files["metrics"]["records_in"] == 0 and files["metrics"]["balanced"]
