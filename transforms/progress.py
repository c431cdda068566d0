"""Progress of a long batch run: quiet for the first seconds, then a bar or periodic log lines.

On a terminal a bar rewrites itself in place on stderr: share of the input bytes read, bytes,
MB/s, rows/s and the time left at the current rate. Elsewhere (CI logs, files, a log collector)
a log line is written every few seconds instead, through ``logging``, so that ``--log_format
json`` carries it as a record with its numbers in ``counts``. The clock and the stream are
injected so tests can drive it.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TextIO

LOG = logging.getLogger(__name__)

BAR_WIDTH = 24


def duration_text(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Report ``done`` of ``total`` bytes (and rows, when told); nothing before ``delay`` seconds."""

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
        self._rows = 0
        self.printed = False

    def figures(self) -> dict:
        """What the bar and the log lines show, as numbers."""
        elapsed = max(self._clock() - self._started, 1e-9)
        rate = self._done / elapsed
        left = (self._total - min(self._done, self._total)) / rate if rate else None
        return {
            "bytes_read": self._done,
            "bytes_total": self._total,
            "rows": self._rows,
            "share": min(self._done / self._total, 1.0),
            "mb_per_s": rate / 1e6,
            "rows_per_s": self._rows / elapsed,
            "elapsed_s": elapsed,
            "eta_s": left,
        }

    def line(self) -> str:
        f = self.figures()
        eta = "done" if f["share"] >= 1.0 else (f"ETA {duration_text(f['eta_s'])}" if f["eta_s"] is not None else "ETA ?")
        text = (
            f"{f['share']:6.1%} of {self._total / 1e6:,.1f} MB, {f['mb_per_s']:,.1f} MB/s, "
            f"{f['rows_per_s']:,.0f} rows/s, {duration_text(f['elapsed_s'])} elapsed, {eta}"
        )
        if not self._tty:
            return f"{self._label}: {text}"
        filled = int(round(f["share"] * BAR_WIDTH))
        return f"{self._label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}"

    def count_rows(self, rows: int) -> None:
        """Rows delivered so far grow by ``rows`` (for rows/s)."""
        self._rows += rows

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
            self._stream.flush()
            return
        f = self.figures()
        LOG.info("%s", self.line(), extra={"stage": self._label, "counts": {
            "bytes_read": f["bytes_read"], "bytes_total": f["bytes_total"], "rows": f["rows"]}})
