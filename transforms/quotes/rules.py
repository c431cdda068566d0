"""Quote rules, one value at a time: parsing, validation, mid price and output formats.

This module is the definition of the contract. The columnar code in :mod:`transforms.quotes.columns`
computes the same results for whole batches at once and falls back to these functions for any
value its fast path does not accept; tests compare the two on generated data.

Every function is pure. A value that breaks a rule raises :class:`Rejected`, whose ``reason`` is
``"<code>: <explanation>"`` with a stable code from :data:`REJECT_CODES` (the code is what
``metrics.json`` counts; the explanation is for a person reading ``dead_letter.jsonl``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import NamedTuple

#: A record's ``mode``: replayed history (the latency threshold applies) or live.
HISTORICAL = "historical"
LIVE = "live"
MODES = (HISTORICAL, LIVE)

#: Every code a rejected record can carry, with what it means.
REJECT_CODES = {
    "bad_encoding": "the line is not valid UTF-8",
    "bad_csv": "the line is not valid CSV (e.g. an unterminated quote)",
    "wrong_field_count": "the line has more or fewer fields than the header",
    "missing_timestamp": "the timestamp field is empty",
    "bad_timestamp": "the timestamp is not a valid ISO 8601 date and time",
    "missing_symbol": "the symbol field is empty",
    "missing_price": "a price field is empty",
    "bad_price": "a price is not a finite decimal number",
    "non_positive_price": "a price is zero or negative",
    "price_precision": "a price has more decimal places than the schema's scale",
    "price_range": "a price has more digits than the schema's precision",
    "crossed_quote": "the bid is above the ask",
    "bad_size": "a size is not a finite, non-negative number",
    "missing_latency": "the latency field is empty",
    "bad_latency": "the latency is not a non-negative number of milliseconds in plain digits with at most 3 decimals"
                   " (microseconds)",
    "out_of_order": "the row arrives before rows already replayed (input not sorted by timestamp)",
    "bad_json": "a live message is not a JSON object (cut short, not JSON, or not an object)",
    "bad_field": "a live message's quote field is not a string or a number",
    "bad_tenant": "the tenant is not a name of letters, digits, '_', '.' and '-' (it names a directory)",
}

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NAIVE_EPOCH = datetime(1970, 1, 1)
ONE_MICROSECOND = timedelta(microseconds=1)
#: Latencies at or above this (about 31 years) are rejected as nonsense rather than overflowing.
MAX_LATENCY_MS = 10**12
#: A latency is kept exactly, as an integer number of microseconds: milliseconds with 3 decimals.
LATENCY_SCALE = 3
MAX_LATENCY_US = MAX_LATENCY_MS * 10**LATENCY_SCALE

_ISO_SEPARATORS = "Tt "
_FRACTION = re.compile(r"[.,](\d+)")


class Rejected(ValueError):
    """A value or record breaks a rule; ``reason`` says which and why."""

    def __init__(self, code: str, detail: str):
        if code not in REJECT_CODES:
            raise KeyError(f"unknown reject code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.reason = f"{code}: {detail}"


def reject_code(reason: str) -> str:
    """The code at the start of a reason string."""
    return reason.split(":", 1)[0]


# --------------------------------------------------------------------------- timestamps


def parse_timestamp(text: str) -> int:
    """Parse ``YYYY-MM-DD HH:MM:SS[.ffffff]`` or ISO 8601 into microseconds since the epoch, UTC.

    A naive timestamp is UTC; ``Z`` and ``±HH:MM`` offsets are converted to UTC. The date and time
    are separated by ``T`` or a space. Digits past the microsecond are not accepted (they would be
    lost silently).
    """
    value = text.strip()
    if not value:
        raise Rejected("missing_timestamp", "timestamp is empty")
    if len(value) > 10 and value[10] not in _ISO_SEPARATORS:
        raise Rejected("bad_timestamp", f"timestamp {text!r}: date and time must be separated by 'T' or a space")
    if len(value) > 26:  # room for more than six fraction digits (or an offset)
        fraction = _FRACTION.search(value, 19)
        if fraction and len(fraction.group(1)) > 6:
            raise Rejected("bad_timestamp", f"timestamp {text!r} is more precise than a microsecond")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Rejected(
            "bad_timestamp", f"timestamp {text!r} is not YYYY-MM-DD HH:MM:SS[.ffffff] or ISO 8601"
        ) from None
    try:
        return (parsed - (NAIVE_EPOCH if parsed.tzinfo is None else EPOCH)) // ONE_MICROSECOND
    except OverflowError:
        raise Rejected("bad_timestamp", f"timestamp {text!r} is out of range") from None


@lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    moment = NAIVE_EPOCH + timedelta(seconds=seconds)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )


def format_timestamp(micros: int) -> str:
    """``YYYY-MM-DD HH:MM:SS.fff`` in UTC, or ``.ffffff`` when the time has sub-millisecond digits."""
    seconds, fraction = divmod(micros, 1_000_000)
    if fraction % 1000:
        return f"{_second_text(seconds)}.{fraction:06d}"
    return f"{_second_text(seconds)}.{fraction // 1000:03d}"


# --------------------------------------------------------------------------- numbers


def _decimal(text: str, field: str, missing: str, bad: str) -> Decimal:
    value = text.strip()
    if not value:
        raise Rejected(missing, f"{field} is empty")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise Rejected(bad, f"{field} {text!r} is not a number") from None
    if not number.is_finite():
        raise Rejected(bad, f"{field} {text!r} is not a finite number")
    return number


def _unscaled(number: Decimal, scale: int) -> int | None:
    """``abs(number) * 10**scale`` as an int, exactly; None when a non-zero digit lies past ``scale``
    decimals (trailing zeros do not count). No Decimal arithmetic: it rounds to 28 digits."""
    if not number:
        return 0  # 0.00000 and 0E-100 are zero, whatever their exponent
    _sign, digits, exponent = number.as_tuple()
    shift = exponent + scale
    if -shift > len(digits):  # the last non-zero digit lies past the scale
        return None
    unscaled = int("".join(map(str, digits)))
    if shift >= 0:
        return unscaled * 10**shift
    unscaled, remainder = divmod(unscaled, 10**-shift)
    return None if remainder else unscaled


def parse_price(text: str, field: str, precision: int, scale: int) -> int:
    """Parse a positive decimal price into an integer scaled by ``10**scale``, exactly.

    ``precision`` and ``scale`` are the schema's decimal parameters: a price needing more than
    ``scale`` decimal places or more than ``precision`` digits in all is rejected, not rounded.
    """
    whole, point, fraction = text.partition(".")
    if (
        whole.isascii() and whole.isdigit() and len(whole) <= precision - scale
        and (not point or (fraction.isascii() and fraction.isdigit() and len(fraction) <= scale))
    ):  # plain digits, the common case: no Decimal needed
        unscaled = int(whole) * 10**scale + (int(fraction) * 10 ** (scale - len(fraction)) if fraction else 0)
        if unscaled > 0:
            return unscaled
    number = _decimal(text, field, "missing_price", "bad_price")
    if number <= 0:
        raise Rejected("non_positive_price", f"{field} {text!r} is not positive")
    if number.adjusted() >= precision - scale:
        raise Rejected("price_range", f"{field} {text!r} has more than {precision - scale} integer digits")
    unscaled = _unscaled(number, scale)
    if unscaled is None:
        raise Rejected("price_precision", f"{field} {text!r} has more than {scale} decimal places")
    if unscaled >= 10**precision:
        raise Rejected("price_range", f"{field} {text!r} does not fit decimal({precision}, {scale})")
    return unscaled


def parse_latency_us(text: str) -> int:
    """Parse a latency in milliseconds into an integer number of microseconds, exactly.

    ``12``, ``12.0``, ``20.5``, ``0.001`` and ``20.500`` are accepted (12000, 12000, 20500, 1 and
    20500 µs); a latency must be a whole number of microseconds, so ``20.1234`` is rejected, not
    rounded (trailing zeros do not count: ``20.5000`` is 20500 µs). Unlike a price, a latency is
    written in plain digits: an exponent (``2e1``) is rejected, and so are negative, non-finite and
    absurdly large values.
    """
    whole, point, fraction = text.partition(".")
    if (
        whole.isascii() and whole.isdigit() and len(whole) < 13
        and (not point or (fraction.isascii() and fraction.isdigit() and len(fraction) <= LATENCY_SCALE))
    ):  # plain digits, the common case: no Decimal needed
        latency = int(whole) * 10**LATENCY_SCALE + (int(fraction.ljust(LATENCY_SCALE, "0")) if fraction else 0)
        if latency < MAX_LATENCY_US:
            return latency
    number = _decimal(text, "latency_ms", "missing_latency", "bad_latency")
    if "e" in text.lower():
        raise Rejected("bad_latency", f"latency_ms {text!r} has an exponent: write it in plain digits")
    if number < 0:
        raise Rejected("bad_latency", f"latency_ms {text!r} is negative")
    if number >= MAX_LATENCY_MS:
        raise Rejected("bad_latency", f"latency_ms {text!r} is out of range")
    micros = _unscaled(number, LATENCY_SCALE)
    if micros is None:
        raise Rejected("bad_latency", f"latency_ms {text!r} has more than {LATENCY_SCALE} decimal places")
    return micros


def parse_size(text: str | None, field: str) -> float | None:
    """Parse an optional size: empty means unknown (None); otherwise a finite number >= 0."""
    if text is None or not text.strip():
        return None
    try:
        size = float(text)
    except ValueError:
        raise Rejected("bad_size", f"{field} {text!r} is not a number") from None
    if not (0.0 <= size < float("inf")):
        raise Rejected("bad_size", f"{field} {text!r} is not a finite, non-negative number")
    return size


def parse_symbol(text: str) -> str:
    """A symbol with surrounding white space removed; empty is rejected."""
    symbol = text.strip()
    if not symbol:
        raise Rejected("missing_symbol", "symbol is empty")
    return symbol


#: A tenant without a tenant field (quote v1 data, a CSV without the column, an empty value).
DEFAULT_TENANT = "default"
#: What a tenant name may be: it becomes a directory name with ``--partition_by_tenant``.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_TENANT = re.compile(TENANT_PATTERN)


def parse_tenant(text: str | None) -> str:
    """A tenant name, white space trimmed; none or empty is :data:`DEFAULT_TENANT`.

    A name is 1 to 64 letters, digits, ``_``, ``.`` or ``-`` and starts with a letter or digit, so
    it is always a safe directory name (no ``/``, no ``..``, nothing hidden).
    """
    tenant = (text or "").strip()
    if not tenant:
        return DEFAULT_TENANT
    if not _TENANT.match(tenant):
        raise Rejected(
            "bad_tenant",
            f"tenant {text!r} must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    return tenant


def check_not_crossed(bid: int, ask: int, bid_text: str, ask_text: str) -> None:
    """A quote whose bid is above its ask has no meaningful mid price."""
    if bid > ask:
        raise Rejected("crossed_quote", f"bid {bid_text.strip()} is above ask {ask_text.strip()}")


# --------------------------------------------------------------------------- outputs


def decimal_text(unscaled: int, scale: int) -> str:
    """Render ``unscaled / 10**scale`` exactly, without trailing zeros or exponent (``200.5``, ``7``)."""
    whole, fraction = divmod(unscaled, 10**scale)
    if not fraction:
        return str(whole)
    return f"{whole}.{str(fraction).rjust(scale, '0').rstrip('0')}"


def mid_text(bid: int, ask: int, scale: int) -> str:
    """``0.5 * (bid + ask)`` for prices scaled by ``10**scale``, exact (one more decimal place)."""
    return half_text(bid + ask, scale)


def half_text(doubled: int, scale: int) -> str:
    """``0.5 * doubled`` for a value scaled by ``10**scale`` (a mid kept as ``bid + ask``), exact."""
    return decimal_text(doubled * 5, scale + 1)


def mid_line(timestamp_text: str, mid: str) -> str:
    """A ``mid_prices.log`` line (without newline)."""
    return f"{timestamp_text}, {mid}"


def latency_text(latency_us: int) -> str:
    """A latency in milliseconds, exact, without trailing zeros or exponent (20500 µs: ``20.5``)."""
    return decimal_text(latency_us, LATENCY_SCALE)


def is_over_threshold(latency_us: int | None, threshold_ms: int) -> bool:
    """The historical latency rule: strictly greater than the threshold, compared exactly."""
    return latency_us is not None and latency_us > threshold_ms * 10**LATENCY_SCALE


def latency_error_line(timestamp_text: str, latency_us: int, threshold_ms: int) -> str:
    """An ``errors.log`` line (without newline); the latency in ms as :func:`latency_text` writes it."""
    return f"No mid price at {timestamp_text} as latency {latency_text(latency_us)}ms is bigger than {threshold_ms}ms"


def arrival_micros(event_micros: int, latency_us: int | None) -> int:
    """Arrival time = timestamp + latency (a quote without latency arrives at its timestamp)."""
    return event_micros + (latency_us or 0)


# --------------------------------------------------------------------------- whole records


class Quote(NamedTuple):
    """A validated quote. Prices are integers scaled by ``10**scale`` of the schema's decimal."""

    event_us: int
    symbol: str
    bid: int
    ask: int
    bid_size: float | None
    ask_size: float | None
    latency_us: int | None  # microseconds (the input's milliseconds, exactly)
    tenant: str = DEFAULT_TENANT

    @property
    def arrival_us(self) -> int:
        return arrival_micros(self.event_us, self.latency_us)


@dataclass(frozen=True)
class PriceRule:
    """The decimal type prices must fit (the schema's ``bid_price``/``ask_price``)."""

    precision: int
    scale: int


def parse_content(
    fields: dict[str, str | None], prices: PriceRule
) -> tuple[str, int, int, float | None, float | None, str]:
    """Validate everything but timestamp and latency, in schema field order, then the bid/ask rule.

    Returns ``(symbol, bid, ask, bid_size, ask_size, tenant)`` with prices scaled by
    ``10**prices.scale``.
    """
    symbol = parse_symbol(fields.get("symbol") or "")
    bid = parse_price(fields.get("bid_price") or "", "bid_price", prices.precision, prices.scale)
    bid_size = parse_size(fields.get("bid_size"), "bid_size")
    ask = parse_price(fields.get("ask_price") or "", "ask_price", prices.precision, prices.scale)
    ask_size = parse_size(fields.get("ask_size"), "ask_size")
    tenant = parse_tenant(fields.get("tenant"))
    check_not_crossed(bid, ask, fields.get("bid_price") or "", fields.get("ask_price") or "")
    return symbol, bid, ask, bid_size, ask_size, tenant


def dead_letter_json(source: str, line: int, raw: str, reason: str) -> str:
    """A ``dead_letter.jsonl`` line (without newline)."""
    return json.dumps({"source": source, "line": line, "raw": raw.rstrip("\r\n"), "reason": reason})


def whole_latency_ms(latency_us: int | None) -> int | None:
    """``arrival_latency_ms`` for a latency in µs: rounded up, so that ``latency_ms > T`` for a whole
    threshold ``T`` is true exactly when ``latency_us > T * 1000`` (readers before quote v3 filter
    the same quotes)."""
    return None if latency_us is None else -(-latency_us // 10**LATENCY_SCALE)
