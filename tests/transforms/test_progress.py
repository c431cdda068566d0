"""The progress line: silent for short runs, then a percentage."""

from __future__ import annotations

import io

from transforms.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_short_runs_print_nothing():
    stream, clock = io.StringIO(), Clock()
    progress = Progress(1000, stream=stream, clock=clock, delay=3.0)
    clock.now = 1.0
    progress.advance(1000)
    progress.finish()
    assert stream.getvalue() == ""


def test_long_runs_print_percentages():
    stream, clock = io.StringIO(), Clock()
    progress = Progress(4_000_000, stream=stream, clock=clock, delay=3.0)
    clock.now = 4.0
    progress.advance(1_000_000)
    clock.now = 10.0
    progress.advance(3_000_000)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("replay:  25.0% of 4.0 MB")
    assert lines[-1].startswith("replay: 100.0% of 4.0 MB")
