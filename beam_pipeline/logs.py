"""Logging set-up for the command line: our messages at INFO, Beam's only when they matter."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Beam logs these at import or run time on every machine without Google Cloud libraries;
# they say nothing about this pipeline.
_NOISE = (
    "apitools not found",
    "Discarding unparseable args",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)


def setup(level: int = logging.INFO) -> None:
    """Configure the root logger once; call before importing apache_beam."""
    root = logging.getLogger()
    if not any(isinstance(f, _DropNoise) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(_DropNoise())
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("beam_pipeline").setLevel(level)
    # The downstream sink's live report (a line a second while it delivers) is meant to be seen.
    logging.getLogger("transforms.deliver").setLevel(level)
