"""A beam_pipeline normalizer plugin for JSON Lines quote files (``.jsonl``).

One JSON object per line::

    {"ts": "2024-06-03 07:00:00.038", "sym": "AAPL", "bid": "194.47", "ask": "194.49",
     "bid_size": 525, "ask_size": 100, "latency_ms": 35}

(``tenant`` is optional.) Each line becomes one line of the canonical quote CSV, which the
pipeline validates: a missing or bad value is dead-lettered with the pipeline's own reason. A line
that is not a JSON object becomes a line whose timestamp says why (``invalid JSON (...)``) and
whose symbol holds the line, so it is dead-lettered as a ``bad_timestamp`` carrying the JSON error
and the original text, never dropped. A blank line stays blank, so a dead letter's ``line`` is the
JSON line's number plus one (the CSV header is line 1).
"""

from __future__ import annotations

import csv
import io
import json
from typing import BinaryIO, Iterator

__all__ = ["JsonlQuotes", "normalizer"]

#: The canonical CSV columns, and the JSON key each comes from.
COLUMNS = {
    "timestamp": "ts", "symbol": "sym", "bid_price": "bid", "bid_size": "bid_size",
    "ask_price": "ask", "ask_size": "ask_size", "latency_ms": "latency_ms", "tenant": "tenant",
}
ROWS_PER_CHUNK = 2048


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):  # not a number, whatever Python thinks: let the pipeline reject it
        return "true" if value else "false"
    return str(value)


def invalid(why: str, text: str) -> list[str]:
    """A line that is no quote, as fields the pipeline rejects: the timestamp says why, the
    symbol holds the line (the dead letter's ``raw`` shows both)."""
    return [f"invalid JSON ({why})", text] + [""] * (len(COLUMNS) - 2)


def row(line: bytes) -> list[str] | None:
    """The CSV fields for one JSON line; None for a blank line."""
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        return invalid(f"not UTF-8 at byte {exc.start}", line.decode("utf-8", "replace").strip())
    if not text:
        return None
    try:
        # Numbers keep their exact text ("194.470" stays "194.470"): the pipeline checks precision.
        record = json.loads(text, parse_float=str, parse_int=str, parse_constant=str)
    except ValueError as exc:
        return invalid(str(exc), text)
    if not isinstance(record, dict):
        return invalid(f"a {type(record).__name__}, not an object", text)
    fields = [_text(record.get(key)) for key in COLUMNS.values()]
    if any("\n" in value or "\r" in value for value in fields):
        return invalid("a value holds a line break", text)
    return fields


class JsonlQuotes:
    """The normalizer: ``name``, ``suffixes`` and ``to_csv(stream, source)``."""

    name = "jsonl-quotes"
    suffixes = (".jsonl",)

    def to_csv(self, stream: BinaryIO, source: str) -> Iterator[bytes]:
        yield (",".join(COLUMNS) + "\n").encode("utf-8")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        count = 0
        for line in iter(stream.readline, b""):
            fields = row(line)
            if fields is None:
                buffer.write("\n")  # keeps line numbers aligned; the pipeline counts it as blank
            else:
                writer.writerow(fields)
            count += 1
            if count == ROWS_PER_CHUNK:
                yield buffer.getvalue().encode("utf-8")
                buffer.seek(0)
                buffer.truncate()
                count = 0
        if count:
            yield buffer.getvalue().encode("utf-8")


#: What the entry point loads.
normalizer = JsonlQuotes()
