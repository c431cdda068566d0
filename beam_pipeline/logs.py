"""Logging set-up for the command line: our messages at INFO, Beam's only when they matter.

Two formats (``--log_format``): ``text``, one readable line per record, and ``json``, one JSON
object per line for log collectors, with ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, ``run_id`` (the run's id, once known), ``stage`` (the pipeline stage a record comes
from: ``extra={"stage": ...}`` or the logger's module) and ``counts`` when the record carries them
(``extra={"counts": {...}}``: what a warning about dropped or filtered data is about, as numbers).
Python warnings go through logging too, so that a JSON log has no stray plain lines.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Sequence

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
_run_id: str | None = None

# Beam logs these at import or run time on every machine without Google Cloud libraries;
# they say nothing about this pipeline.
_NOISE = (
    "apitools not found",
    "Discarding unparseable args",
    # RunInference's memory probe, logged at every model load.
    "Resource module is not available for current platform",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)


class JsonFormatter(logging.Formatter):
    """A record as one JSON line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        doc = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "run_id": getattr(record, "run_id", None) or _run_id,
            "stage": getattr(record, "stage", None) or stage_of(record.name),
        }
        counts = getattr(record, "counts", None)
        if counts:
            doc["counts"] = counts
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"), ensure_ascii=False)


def stage_of(logger: str) -> str:
    """The stage a logger belongs to: the stage subpackage of ``transforms`` it is in
    (``transforms.trades.read`` -> ``trades``), otherwise its last dotted part (``transforms.tracing``
    -> ``tracing``, ``beam_pipeline.cli`` -> ``cli``)."""
    parts = logger.split(".")
    if parts[0] == "transforms" and len(parts) > 2:
        return parts[1]
    return parts[-1]


def format_from_argv(argv: Sequence[str]) -> str:
    """``--log_format`` as given on a command line not parsed yet (logging starts before Beam loads)."""
    for index, arg in enumerate(argv):
        if arg.startswith("--log_format="):
            return arg.split("=", 1)[1]
        if arg == "--log_format" and index + 1 < len(argv):
            return argv[index + 1]
    return "text"


def set_run_id(run_id: str | None) -> None:
    """The run id every JSON record carries from now on."""
    global _run_id
    _run_id = run_id


def _formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT)


def use_format(log_format: str) -> None:
    """Switch the handler :func:`setup` installed to ``log_format`` (nothing if there is none)."""
    for handler in logging.getLogger().handlers:
        if any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.setFormatter(_formatter(log_format))


def setup(level: int = logging.INFO, log_format: str = "text") -> None:
    """Configure the root logger once; call before importing apache_beam."""
    root = logging.getLogger()
    if not any(isinstance(f, _DropNoise) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.addFilter(_DropNoise())
        root.addHandler(handler)
    use_format(log_format if log_format in FORMATS else "text")
    logging.captureWarnings(True)
    root.setLevel(logging.WARNING)
    logging.getLogger("beam_pipeline").setLevel(level)
    # The downstream sink's live report (a line a second while it delivers) is meant to be seen.
    logging.getLogger("transforms.sinks.deliver").setLevel(level)
    # The progress of a long batch run off a terminal: a line every few seconds.
    logging.getLogger("transforms.progress").setLevel(level)
