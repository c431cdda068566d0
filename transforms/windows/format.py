"""Window panes and late quotes as JSON lines (``windows.jsonl``, ``late.jsonl``), pure.

Numbers are written from integers (unscaled prices, microseconds), never through floats, so the
lines are the same on every runner and equal the reference's (:mod:`beam_pipeline.devtools.reference`).
"""

from __future__ import annotations

import json

from transforms.quotes.rules import decimal_text, format_timestamp, half_text
from transforms.windows.logic import Pane, StampedQuote, WindowConfig, duration_text

#: What ``json.dumps`` does with a str (``ensure_ascii``), without its per-call set-up: a pane
#: line has a dozen values and a run can have hundreds of thousands of panes.
_json_string = json.encoder.encode_basestring_ascii


def iso_utc(micros: int) -> str:
    """``2024-06-03T07:00:00.100Z`` (microseconds when the time has them)."""
    return format_timestamp(micros).replace(" ", "T") + "Z"


class _Raw(str):
    """A decimal text to be written into JSON as a number literal, digit for digit."""


def _json_value(value) -> str:
    if isinstance(value, _Raw):
        return value
    if isinstance(value, str):
        return _json_string(value)
    if type(value) is int:  # not bool, which json writes as true/false
        return str(value)
    return json.dumps(value)


def _json(fields: dict) -> str:
    """One JSON object, as ``json.dumps`` writes it, with :class:`_Raw` values as number literals."""
    return "{" + ", ".join(f"{_json_string(key)}: {_json_value(value)}" for key, value in fields.items()) + "}"


def mean_text(total: int, count: int, scale: int, extra_digits: int = 2) -> str:
    """``total / count`` of values scaled by ``10**scale``, to ``scale + extra_digits`` places."""
    quotient, remainder = divmod(total * 10**extra_digits, count)
    if 2 * remainder > count or (2 * remainder == count and quotient % 2):  # half to even, exactly
        quotient += 1
    return decimal_text(quotient, scale + extra_digits)


def pane_json(pane: Pane, scale: int) -> str:
    """A ``windows.jsonl`` line (without newline); prices are exact decimal numbers."""
    stats = pane.stats

    def mid(doubled: int) -> _Raw:
        return _Raw(half_text(doubled, scale))

    return _json(
        {
            "tenant": pane.tenant,
            "symbol": pane.symbol,
            "window_start": iso_utc(pane.start_us),
            "window_end": iso_utc(pane.end_us),
            "timing": pane.timing,
            "pane_index": pane.index,
            "count": stats.count,
            "open": mid(stats.open2),
            "high": mid(stats.high2),
            "low": mid(stats.low2),
            "close": mid(stats.close2),
            "mean_spread": _Raw(mean_text(stats.spread_sum, stats.count, scale)),
            "max_spread": _Raw(decimal_text(stats.spread_max, scale)),
            "first_quote": iso_utc(stats.first[0]),
            "last_quote": iso_utc(stats.last[0]),
        }
    )


def pane_sort_key(pane: Pane) -> tuple:
    """``windows.jsonl`` order: by window, then tenant and symbol, then pane index (runner independent)."""
    return (pane.start_us, pane.end_us, pane.tenant, pane.symbol, pane.index, pane.timing)


def late_reason(quote: StampedQuote, config: WindowConfig) -> str:
    deadline = config.deadline(quote.event_us)
    return (
        f"late: arrived when the watermark was {iso_utc(quote.watermark_us)}, past its last window's "
        f"end {iso_utc(config.window.last_end(quote.event_us))} + allowed lateness "
        f"{duration_text(config.allowed_lateness_us)} ({iso_utc(deadline)})"
    )


def late_json(quote: StampedQuote, source: str, config: WindowConfig, scale: int) -> str:
    """A ``late.jsonl`` line (without newline) for a quote no window would take any more."""
    return _json(
        {
            "source": source,
            "line": quote.line,
            "tenant": quote.tenant,
            "symbol": quote.symbol,
            "timestamp": iso_utc(quote.event_us),
            "arrival": iso_utc(quote.arrival_us),
            "watermark": iso_utc(quote.watermark_us),
            "window_end": iso_utc(config.window.last_end(quote.event_us)),
            "deadline": iso_utc(config.deadline(quote.event_us)),
            "bid": _Raw(decimal_text(quote.bid, scale)),
            "ask": _Raw(decimal_text(quote.ask, scale)),
            "reason": late_reason(quote, config),
        }
    )
