"""A progress line for long runs: quiet for the first seconds, then a percentage on stderr.

On a terminal the line rewrites itself in place; elsewhere (CI logs, files) a plain line is
printed every few seconds. The clock and the stream are injected so tests can drive it.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


class Progress:
    """Report ``done`` of ``total`` bytes; nothing is printed before ``delay`` seconds."""

    def __init__(
        self,
        total: int,
        label: str = "replay",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        delay: float = 3.0,
    ):
        self._total = max(total, 1)
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._started = clock()
        self._delay = delay
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._every = 0.5 if self._tty else 5.0
        self._last = None
        self._done = 0
        self.printed = False

    def line(self) -> str:
        elapsed = max(self._clock() - self._started, 1e-9)
        share = min(self._done / self._total, 1.0)
        return (
            f"{self._label}: {share:6.1%} of {self._total / 1e6:,.1f} MB, "
            f"{self._done / 1e6 / elapsed:,.1f} MB/s, {elapsed:,.0f} s"
        )

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        now = self._clock()
        if now - self._started < self._delay or (self._last is not None and now - self._last < self._every):
            return
        self._last = now
        self._write()

    def finish(self) -> None:
        if self.printed:
            self._write()
            if self._tty:
                self._stream.write("\n")
                self._stream.flush()

    def _write(self) -> None:
        self.printed = True
        if self._tty:
            self._stream.write("\r" + self.line())
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()
