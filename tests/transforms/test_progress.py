"""Progress: silent for short runs, then a bar on a terminal or log lines elsewhere."""

from __future__ import annotations

import io
import logging

from transforms.progress import Progress, duration_text


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_short_runs_print_nothing(caplog):
    stream, clock = io.StringIO(), Clock()
    progress = Progress(1000, stream=stream, clock=clock, delay=3.0)
    clock.now = 1.0
    progress.advance(1000)
    progress.finish()
    assert stream.getvalue() == "" and not caplog.records


def test_long_runs_off_a_terminal_log_lines_with_their_numbers(caplog):
    caplog.set_level(logging.INFO, logger="transforms.progress")
    stream, clock = io.StringIO(), Clock()
    progress = Progress(4_000_000, stream=stream, clock=clock, delay=3.0)
    clock.now = 4.0
    progress.count_rows(20_000)
    progress.advance(1_000_000)
    clock.now = 10.0
    progress.count_rows(60_000)
    progress.advance(3_000_000)
    progress.finish()
    assert stream.getvalue() == ""  # log lines, not raw writes
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("replay:  25.0% of 4.0 MB, 0.2 MB/s, 5,000 rows/s")
    assert messages[0].endswith("ETA 0:12")  # 3 MB left at 0.25 MB/s
    assert messages[-1].startswith("replay: 100.0% of 4.0 MB") and messages[-1].endswith("done")
    assert caplog.records[-1].counts == {"bytes_read": 4_000_000, "bytes_total": 4_000_000, "rows": 80_000}


def test_on_a_terminal_a_bar_rewrites_itself():
    stream, clock = Terminal(), Clock()
    progress = Progress(4_000_000, stream=stream, clock=clock, delay=3.0)
    clock.now = 4.0
    progress.advance(2_000_000)
    clock.now = 8.0
    progress.advance(2_000_000)
    progress.finish()
    frames = stream.getvalue().split("\r")[1:]
    assert frames[0].startswith("replay [############............]  50.0% of 4.0 MB")
    assert "ETA 0:04" in frames[0]
    assert frames[-1].startswith("replay [########################] 100.0%") and frames[-1].endswith("done\n")


def test_durations_read_as_clock_times():
    assert duration_text(75) == "1:15" and duration_text(3725) == "1:02:05" and duration_text(0) == "0:00"
