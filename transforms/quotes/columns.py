"""The rules of :mod:`transforms.quotes.rules`, a column at a time, on Arrow arrays.

Each ``parse_*`` function converts a whole string column with one Arrow cast (tens of
nanoseconds a value). A value the cast refuses, or one that breaks a domain check afterwards,
is handed to the row-level function in :mod:`transforms.quotes.rules`, which either accepts it (``" 1.5"``,
``"2024-01-01T00:00:00+01:00"``) or says why it is rejected. When a cast fails on a column, a cheap
regular expression first picks out the values the cast certainly takes, so a single bad row does
not send the whole column down the slow path.

Results are numpy arrays aligned with the input plus ``{row index: reason}`` for rejected rows.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.arrays import numpy, string_bytes, string_offsets
from transforms.quotes import rules
from transforms.quotes.rules import Rejected

Rejects = dict[int, str]

_TIMESTAMP_FAST = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?$"
_LATENCY_FAST = r"^\d{1,12}(\.\d{1,3})?$"
_SIZE_FAST = r"^(\d{1,15}(\.\d{0,15})?)?$"
_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError)
_YEAR_1_US = -62_135_596_800_000_000  # 0001-01-01 00:00:00
_YEAR_9999_END_US = 253_402_300_799_999_999  # 9999-12-31 23:59:59.999999


def _convert(
    column: pa.Array,
    fast: Callable[[pa.Array], tuple[np.ndarray, np.ndarray]],
    slow: Callable[[str], Any],
    dtype: Any,
    fast_pattern: str | None,
) -> tuple[np.ndarray, Rejects]:
    """Run ``fast`` on the column, then ``slow`` on every value ``fast`` did not vouch for."""
    values = np.zeros(len(column), dtype=dtype)
    ok = np.zeros(len(column), dtype=bool)
    try:
        values[:], ok[:] = fast(column)
        if column.null_count:  # a cast passes nulls through: the rules decide about them
            ok &= numpy(column.is_valid())
    except _CAST_ERRORS:
        if fast_pattern is not None:
            plain = pc.fill_null(pc.match_substring_regex(column, fast_pattern), False)
            picked = np.flatnonzero(numpy(plain))
            try:
                values[picked], ok[picked] = fast(column.take(picked))
            except _CAST_ERRORS:
                pass  # e.g. 2023-02-29 matches the pattern: every value goes row by row
    rejects: Rejects = {}
    for index in np.flatnonzero(~ok).tolist():
        try:
            values[index] = slow(column[index].as_py())
        except Rejected as rejected:
            rejects[index] = rejected.reason
    return values, rejects


def _present(values: pa.Array, characters: bytes) -> bytes:
    """Those of the ASCII ``characters`` that occur in the string array's data buffer.

    The buffer may hold bytes of neighbouring values when the array is a slice, so a character
    found can be a false alarm; that only costs speed (the exact path runs), never a wrong answer.
    """
    data = values.buffers()[2]
    if data is None:
        return b""
    raw = data.to_pybytes()
    return bytes(character for character in characters if bytes([character]) in raw)


def _as_int64(array: pa.Array) -> np.ndarray:
    as_int = array.cast(pa.int64())
    return numpy(as_int.fill_null(0) if as_int.null_count else as_int)


# --------------------------------------------------------------------------- parsing


def parse_timestamps(column: pa.Array) -> tuple[np.ndarray, Rejects]:
    """Event times in microseconds since the epoch (UTC) for a string column."""

    def fast(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        micros = _as_int64(pc.cast(values, pa.timestamp("us")))
        # Arrow also takes year 0, which Python's datetime (the rule) does not.
        return micros, (micros >= _YEAR_1_US) & (micros <= _YEAR_9999_END_US)

    return _convert(
        column, fast, lambda text: rules.parse_timestamp(text or ""), np.int64, _TIMESTAMP_FAST
    )


def parse_latencies(column: pa.Array) -> tuple[np.ndarray, Rejects]:
    """Latencies in microseconds (the column's milliseconds, exactly) for a string column.

    Whole milliseconds take Arrow's integer cast; a column with fractions takes its
    ``decimal(18, 3)`` cast, which refuses a fourth decimal rather than rounding.
    """
    decimal_type = pa.decimal128(18, rules.LATENCY_SCALE)

    def fast(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        present = _present(values, b"xXeE.")  # one scan of the buffer for both questions
        # Arrow's integer cast reads hexadecimal ("0x10") and its decimal cast exponents ("2e1"),
        # which the rule rejects.
        if present not in (b"", b"."):
            raise pa.ArrowInvalid("possible hexadecimal or exponent: take the exact path")
        if not present:  # no "." either; a failed integer cast costs ~10x the decimal cast
            try:
                latency_ms = _as_int64(pc.cast(values, pa.int64()))
            except _CAST_ERRORS:
                pass
            else:
                ok = (latency_ms >= 0) & (latency_ms < rules.MAX_LATENCY_MS)
                return np.where(ok, latency_ms, 0) * 10**rules.LATENCY_SCALE, ok
        decimals = pc.cast(values, decimal_type)
        # The unscaled decimal is the latency in µs: low word, high word 0 when non-negative.
        words = np.frombuffer(decimals.buffers()[1], dtype=np.int64, count=2 * len(decimals))
        low, high = words[0::2], words[1::2]
        return low, (high == 0) & (low >= 0) & (low < rules.MAX_LATENCY_US)

    return _convert(
        column, fast, lambda text: rules.parse_latency_us(text or ""), np.int64, _LATENCY_FAST
    )


def parse_prices(column: pa.Array, field: str, precision: int, scale: int) -> tuple[np.ndarray, Rejects]:
    """Prices as integers scaled by ``10**scale`` (the schema's decimal), for a string column."""
    decimal_type = pa.decimal128(precision, scale)

    def fast(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        decimals = pc.cast(values, decimal_type)
        # A decimal128 is a little-endian 128-bit integer: the unscaled value. Every value that
        # fits decimal(precision <= 18) has its low word as the value and a high word of 0 or -1.
        words = np.frombuffer(decimals.buffers()[1], dtype=np.int64, count=2 * len(decimals))
        low, high = words[0::2], words[1::2]
        return low, (high == 0) & (low > 0)

    def slow(text: str | None) -> int:
        return rules.parse_price(text or "", field, precision, scale)

    return _convert(column, fast, slow, np.int64, _price_pattern(precision, scale))


def _price_pattern(precision: int, scale: int) -> str:
    """Plain decimals the ``decimal(precision, scale)`` cast certainly takes."""
    whole = rf"\d{{1,{precision - scale}}}" if precision > scale else "0"
    fraction = rf"(\.\d{{1,{scale}}})?" if scale else ""
    return f"^{whole}{fraction}$"


def parse_sizes(column: pa.Array, field: str) -> tuple[np.ndarray, Rejects]:
    """Optional sizes as float64, NaN where the field is empty (unknown)."""

    def fast(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        empty = pc.fill_null(pc.equal(values, pa.scalar("", values.type)), False)
        sizes = numpy(pc.cast(pc.if_else(empty, pa.scalar(None, values.type), values), pa.float64()))
        known = ~np.isnan(sizes)
        with np.errstate(invalid="ignore"):
            ok = ~known | ((sizes >= 0) & np.isfinite(sizes))
        return sizes, ok & (known | numpy(empty))

    def slow(text: str | None) -> float:
        size = rules.parse_size(text, field)
        return np.nan if size is None else size

    return _convert(column, fast, slow, np.float64, _SIZE_FAST)


def parse_symbols(column: pa.Array) -> tuple[pa.Array, Rejects]:
    """Symbols with white space trimmed; an empty symbol is rejected."""
    trimmed = pc.utf8_trim_whitespace(column)
    lengths = pc.utf8_length(trimmed)
    empty = np.flatnonzero(numpy(pc.equal(lengths, pa.scalar(0, lengths.type))))  # typed: no pandas lookup
    rejects: Rejects = {}
    for index in empty.tolist():
        try:
            rules.parse_symbol(column[index].as_py())
        except Rejected as rejected:
            rejects[index] = rejected.reason
    return trimmed, rejects


def parse_tenants(column: pa.Array) -> tuple[pa.Array, Rejects]:
    """Tenants with white space trimmed; null or empty is the default tenant (see
    :func:`transforms.quotes.rules.parse_tenant`); a name that is not a safe directory name is rejected."""
    if column.null_count == len(column):  # no tenant column: every quote is the default tenant's
        return pa.repeat(pa.scalar(rules.DEFAULT_TENANT, pa.string()), len(column)), {}
    trimmed = pc.utf8_trim_whitespace(column)
    empty = pc.fill_null(pc.equal(trimmed, text("")), True)
    tenants = pc.if_else(empty, text(rules.DEFAULT_TENANT), trimmed)
    ok = numpy(pc.match_substring_regex(tenants, rules.TENANT_PATTERN))
    rejects: Rejects = {}
    for index in np.flatnonzero(~ok).tolist():
        try:
            rules.parse_tenant(column[index].as_py())
        except Rejected as rejected:
            rejects[index] = rejected.reason
    return tenants, rejects


def crossed_rejects(bid: np.ndarray, ask: np.ndarray, bid_text: pa.Array, ask_text: pa.Array) -> Rejects:
    """Reasons for rows whose bid is above their ask."""
    rejects: Rejects = {}
    for index in np.flatnonzero(bid > ask).tolist():
        try:
            rules.check_not_crossed(
                int(bid[index]), int(ask[index]), bid_text[index].as_py(), ask_text[index].as_py()
            )
        except Rejected as rejected:
            rejects[index] = rejected.reason
    return rejects


# --------------------------------------------------------------------------- formatting


_CANONICAL_SHAPE = np.frombuffer(b"dddd-dd-dd dd:dd:dd.ddd", dtype=np.uint8)
_DIGIT_POSITIONS = _CANONICAL_SHAPE == ord("d")


def _already_canonical(texts: pa.Array) -> bool:
    """True if every value is ``YYYY-MM-DD HH:MM:SS.fff`` (the output form at millisecond precision)."""
    if texts.null_count or len(texts) == 0:
        return False
    offsets = string_offsets(texts)
    width = len(_CANONICAL_SHAPE)
    if offsets[-1] - offsets[0] != width * len(texts) or not np.all(np.diff(offsets) == width):
        return False
    data = np.frombuffer(texts.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(-1, width)
    separators_ok = np.all(data[:, ~_DIGIT_POSITIONS] == _CANONICAL_SHAPE[~_DIGIT_POSITIONS])
    digits = data[:, _DIGIT_POSITIONS]
    return bool(separators_ok and np.all((digits >= ord("0")) & (digits <= ord("9"))))


def format_timestamps(event_us: np.ndarray, raw: pa.Array | None = None) -> pa.Array:
    """Output timestamps (``YYYY-MM-DD HH:MM:SS.fff``, ``.ffffff`` if sub-millisecond), UTC.

    When the raw input strings are all already in that form, they are returned as they are: a
    string in exactly the output form that parsed to ``event_us`` can only be its rendering.
    """
    if raw is not None and _already_canonical(raw):
        return raw
    times = pa.array(event_us, type=pa.int64()).cast(pa.timestamp("us"))
    millis = pc.cast(pc.cast(times, pa.timestamp("ms"), safe=False), pa.string())
    sub_milli = event_us % 1000 != 0
    if not sub_milli.any():
        return millis
    return pc.if_else(pa.array(sub_milli), pc.cast(times, pa.string()), millis)


def decimal_texts(unscaled: np.ndarray, scale: int) -> pa.Array:
    """:func:`transforms.quotes.rules.decimal_text` for a column of non-negative unscaled integers."""
    whole, fraction = np.divmod(unscaled, 10**scale)
    return _decimal_join(whole, fraction, scale)


def mid_texts(bid: np.ndarray, ask: np.ndarray, scale: int) -> pa.Array:
    """:func:`transforms.quotes.rules.mid_text` for columns of scaled prices.

    ``(bid + ask) * 5`` at ``scale + 1`` could overflow int64, so the whole part and the
    fraction are split off ``bid + ask`` first (``bid + ask < 2 * 10**18`` for decimal(18, s)).
    """
    return half_texts(bid + ask, scale)


def half_texts(doubled: np.ndarray, scale: int) -> pa.Array:
    """:func:`transforms.quotes.rules.half_text` (``0.5 * doubled``, exact) for non-negative int64 values."""
    whole, remainder = np.divmod(doubled, 2 * 10**scale)
    return _decimal_join(whole, remainder * 5, scale + 1)


def _decimal_join(whole: np.ndarray, fraction: np.ndarray, scale: int) -> pa.Array:
    """``whole[.fraction]`` with the fraction's trailing zeros (and a bare point) removed."""
    whole_text = pc.cast(pa.array(whole), pa.string())
    has_fraction = fraction != 0
    if not has_fraction.any():
        return whole_text
    fraction_text = pc.utf8_rtrim(pc.utf8_lpad(pc.cast(pa.array(fraction), pa.string()), scale, "0"), "0")
    point = pc.if_else(pa.array(has_fraction), text("."), text(""))
    return pc.binary_join_element_wise(whole_text, point, fraction_text, text(""))


def text(value: str) -> pa.StringScalar:
    """A string constant for a compute call, typed: an untyped Python value makes pyarrow infer its
    type, and inference imports pandas (:mod:`beam_pipeline.startup`)."""
    return pa.scalar(value, pa.string())


def joined_lines(*parts: pa.Array | str) -> bytes:
    """Concatenate string columns and constants element-wise, one ``\\n``-terminated line per row."""
    lines = pc.binary_join_element_wise(*(text(p) if isinstance(p, str) else p for p in parts), text("\n"), text(""))
    return string_bytes(lines)[1]
