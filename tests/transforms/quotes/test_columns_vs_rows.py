"""Differential tests: the columnar code (transforms.quotes.columns, csv_blocks fast path) against the row rules.

:mod:`transforms.quotes.rules` is the contract. For generated columns mixing well-formed values of many
shapes with arbitrary text, every columnar function must give, index by index, the same accepted
value or the same rejection reason as the row-level function. Columns are generated both "clean"
(the whole-column Arrow cast succeeds: fast path only) and "mixed" (the cast fails, so the regex
prefilter and the per-row fallback run). ``split_block``'s Arrow path is compared with the
line-by-line ``csv`` module path.

Four discrepancies these tests found (year 0, hexadecimal latencies, decimal types without
integer digits, a BOM opening a block) were fixed; ``TestRegressions`` pins them as minimal cases.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from transforms.quotes import columns
from transforms.quotes import rules as quotes
from transforms.quotes.rules import Rejected
from transforms.sources import csv_blocks

PRECISION, SCALE = 18, 8
MAX_PRICE = 10**PRECISION - 1

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The row-level functions, kept before any test wraps them in a spy.
ROW_PARSE_TIMESTAMP = quotes.parse_timestamp
ROW_PARSE_LATENCY = quotes.parse_latency_us
ROW_PARSE_PRICE = quotes.parse_price
ROW_PARSE_SIZE = quotes.parse_size
ROW_PARSE_SYMBOL = quotes.parse_symbol


# --------------------------------------------------------------------------- comparison helpers


def _row_outcome(parse, text):
    try:
        return ("ok", parse(text))
    except Rejected as rejected:
        return ("rejected", rejected.reason)


def _float_key(value):
    """Exact float identity (keeps -0.0 apart from 0.0); None/NaN both mean "unknown size"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value).hex()


def _assert_column_matches_rows(values, column_result, row_parse, as_python=lambda v: v, key=lambda v: v):
    """Every index: same accepted value (after ``key``) or the same rejection reason."""
    out, rejects = column_result
    assert len(out) == len(values)
    assert set(rejects) <= set(range(len(values))), rejects
    diffs = []
    for index, text in enumerate(values):
        kind, result = _row_outcome(row_parse, text)
        expected = (kind, key(result) if kind == "ok" else result)
        if index in rejects:
            actual = ("rejected", rejects[index])
        else:
            actual = ("ok", key(as_python(out[index])))
        if actual != expected:
            diffs.append((index, text, "row:", expected, "column:", actual))
    assert diffs == []


def _spy(name):
    """Count calls to a row function from transforms.quotes.columns (it looks them up on the module)."""
    return mock.patch.object(quotes, name, wraps=getattr(quotes, name))


def _record_path(column: pa.Array, arrow_type: pa.DataType, pattern: str) -> None:
    """Tell hypothesis statistics which columnar path a generated column takes (for coverage only)."""
    try:
        pc.cast(column, arrow_type)
        event("whole-column cast")
        return
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    matches = pc.fill_null(pc.match_substring_regex(column, pattern), False)
    picked = np.flatnonzero(matches.to_numpy(zero_copy_only=False))
    try:
        pc.cast(column.take(picked), arrow_type)
        event("regex prefilter + row fallback")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        event("every value row by row")


def _with_one_inserted(base: st.SearchStrategy, extra: st.SearchStrategy) -> st.SearchStrategy:
    """Lists of ``base`` values with one ``extra`` value inserted at a random position."""

    @st.composite
    def build(draw):
        values = draw(st.lists(base, max_size=20))
        position = draw(st.integers(0, len(values)))
        values.insert(position, draw(extra))
        return values

    return build()


def _padded(strategy: st.SearchStrategy) -> st.SearchStrategy:
    pads = st.sampled_from(["", "", "", "", " ", "  ", "\t", "\u00a0"])
    return st.tuples(pads, strategy, pads).map("".join)


ARBITRARY_TEXT = st.text(max_size=12)

# --------------------------------------------------------------------------- timestamps

_START = datetime(1970, 1, 1)
_END = datetime(2100, 12, 31, 23, 59, 59, 999999)
_ANY_MOMENT = st.one_of(st.datetimes(_START, _END), st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59)))
_OFFSETS = ["", "", "", "", "Z", "z", "+01:00", "-05:30", "+0100", "+14:00", "+24:00", "-00:00", "+01:00:30"]


@st.composite
def clean_timestamps(draw):
    """Valid times in a shape Arrow's cast takes: date, or date [ T] HH:MM[:SS[.f{1,6}]]."""
    moment = draw(_ANY_MOMENT)
    text = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    shape = draw(st.sampled_from(["date", "minute", "second", "fraction", "fraction", "second"]))
    if shape == "date":
        return text
    text += draw(st.sampled_from([" ", "T"])) + f"{moment.hour:02d}:{moment.minute:02d}"
    if shape == "minute":
        return text
    text += f":{moment.second:02d}"
    if shape == "fraction":
        text += "." + f"{moment.microsecond:06d}"[: draw(st.integers(1, 6))]
    return text


@st.composite
def timestamp_shapes(draw):
    """Well-formed and nearly well-formed timestamps: ISO shapes, offsets, bad dates, hour 24, spaces."""
    year = draw(st.one_of(st.integers(1970, 2100), st.integers(0, 9999)))
    month = draw(st.one_of(st.integers(1, 12), st.sampled_from([0, 13])))
    day = draw(st.one_of(st.integers(1, 28), st.integers(29, 32), st.just(0)))
    text = f"{year:04d}-{month:02d}-{day:02d}"
    shape = draw(st.sampled_from(["date", "hour", "minute", "second", "fraction", "fraction", "second"]))
    if shape != "date":
        text += draw(st.sampled_from([" ", "T", "t", "_", "  "]))
        text += f"{draw(st.one_of(st.integers(0, 23), st.sampled_from([24, 25]))):02d}"
        if shape != "hour":
            text += f":{draw(st.one_of(st.integers(0, 59), st.just(60))):02d}"
        if shape in ("second", "fraction"):
            text += f":{draw(st.one_of(st.integers(0, 59), st.just(60))):02d}"
        if shape == "fraction":
            text += draw(st.sampled_from([".", ".", ","])) + draw(st.text("0123456789", min_size=1, max_size=9))
        text += draw(st.sampled_from(_OFFSETS))
    return text


TIMESTAMP_TEXT = st.one_of(
    clean_timestamps(),
    _padded(timestamp_shapes()),
    st.text("0123456789-:. TZ+,", max_size=30),
    ARBITRARY_TEXT,
    st.sampled_from(["", " ", "2024-02-30", "2023-02-29 00:00:00", "2024-01-01 24:00:00", "2024-01-01T10"]),
)


class TestParseTimestamps:
    @SETTINGS
    @given(st.lists(clean_timestamps(), min_size=1, max_size=30))
    def test_clean_column_takes_fast_path_and_matches_rows(self, values):
        with _spy("parse_timestamp") as spy:
            result = columns.parse_timestamps(pa.array(values, pa.string()))
        _assert_column_matches_rows(values, result, ROW_PARSE_TIMESTAMP, int)
        assert spy.call_count == 0  # the whole-column cast took every value

    @SETTINGS
    @given(st.lists(TIMESTAMP_TEXT, max_size=30))
    def test_mixed_column_matches_rows(self, values):
        column = pa.array(values, pa.string())
        _record_path(column, pa.timestamp("us"), columns._TIMESTAMP_FAST)
        _assert_column_matches_rows(values, columns.parse_timestamps(column), ROW_PARSE_TIMESTAMP, int)

    @SETTINGS
    @given(_with_one_inserted(clean_timestamps(), st.one_of(_padded(timestamp_shapes()), ARBITRARY_TEXT)))
    def test_clean_column_with_one_odd_value_matches_rows(self, values):
        column = pa.array(values, pa.string())
        _record_path(column, pa.timestamp("us"), columns._TIMESTAMP_FAST)
        _assert_column_matches_rows(values, columns.parse_timestamps(column), ROW_PARSE_TIMESTAMP, int)


# --------------------------------------------------------------------------- prices


PRICE_FAST = rf"^\d{{1,{PRECISION - SCALE}}}(\.\d{{1,{SCALE}}})?$"  # the prefilter parse_prices builds


def _parse_price_row(text):
    return ROW_PARSE_PRICE(text, "bid_price", PRECISION, SCALE)


@st.composite
def clean_prices(draw):
    """Positive decimal(18, 8) values as plain digits, with 0 to 8 decimals (trailing zeros allowed)."""
    unscaled = draw(st.integers(1, MAX_PRICE))
    whole, fraction = divmod(unscaled, 10**SCALE)
    digits = f"{fraction:08d}"
    needed = len(digits.rstrip("0"))
    decimals = draw(st.integers(needed, SCALE))
    return f"{whole}.{digits[:decimals]}" if decimals else str(whole)


@st.composite
def price_shapes(draw):
    """Prices of many shapes: 0-10 decimals, signs, exponents, leading zeros, specials, huge, tiny."""
    whole = draw(st.text("0123456789", max_size=12))
    decimals = draw(st.text("0123456789", max_size=10))
    point = "." if decimals or draw(st.booleans()) else ""
    sign = draw(st.sampled_from(["", "", "", "", "+", "-"]))
    exponent = draw(st.sampled_from(["", "", "", "", "e2", "E-3", "e+1", "e-9", "e10", "e0", "e", "E08"]))
    return sign + whole + point + decimals + exponent


PRICE_SPECIALS = st.sampled_from(
    [
        "", " ", "0", "0.0", "-0", "+0.00", "NaN", "nan", "sNaN", "inf", "-inf", "Infinity", "1_000.5", "1,5",
        "1e2", "1E2", "1.5e-8", "1e-9", "0.000000001", "0.00000001", "9999999999.99999999",
        "10000000000", "99999999999", "1" + "0" * 20, "1.100000000000", "00001.5", ".5", "5.", ".", "e5",
        "0x10", "١٢", "1.123456789",
    ]
)
PRICE_TEXT = st.one_of(clean_prices(), _padded(price_shapes()), PRICE_SPECIALS, ARBITRARY_TEXT)


class TestParsePrices:
    @SETTINGS
    @given(st.lists(clean_prices(), min_size=1, max_size=30))
    def test_clean_column_takes_fast_path_and_matches_rows(self, values):
        with _spy("parse_price") as spy:
            result = columns.parse_prices(pa.array(values, pa.string()), "bid_price", PRECISION, SCALE)
        _assert_column_matches_rows(values, result, _parse_price_row, int)
        assert spy.call_count == 0

    @SETTINGS
    @given(st.lists(PRICE_TEXT, max_size=30))
    def test_mixed_column_matches_rows(self, values):
        column = pa.array(values, pa.string())
        _record_path(column, pa.decimal128(PRECISION, SCALE), PRICE_FAST)
        result = columns.parse_prices(column, "bid_price", PRECISION, SCALE)
        _assert_column_matches_rows(values, result, _parse_price_row, int)

    @SETTINGS
    @given(_with_one_inserted(clean_prices(), st.one_of(_padded(price_shapes()), PRICE_SPECIALS, ARBITRARY_TEXT)))
    def test_clean_column_with_one_odd_value_matches_rows(self, values):
        column = pa.array(values, pa.string())
        _record_path(column, pa.decimal128(PRECISION, SCALE), PRICE_FAST)
        result = columns.parse_prices(column, "bid_price", PRECISION, SCALE)
        _assert_column_matches_rows(values, result, _parse_price_row, int)

    @SETTINGS  # precision == scale is pinned in TestKnownDiscrepancies
    @given(
        st.lists(_padded(price_shapes()), max_size=30),
        st.sampled_from([(18, 8), (18, 0), (10, 2), (18, 17), (5, 4)]),
    )
    def test_other_decimal_types_match_rows(self, values, decimal):
        precision, scale = decimal
        result = columns.parse_prices(pa.array(values, pa.string()), "ask_price", precision, scale)
        _assert_column_matches_rows(values, result, lambda t: ROW_PARSE_PRICE(t, "ask_price", precision, scale), int)


# --------------------------------------------------------------------------- latencies

WHOLE_LATENCY = st.one_of(
    st.integers(0, quotes.MAX_LATENCY_MS - 1).map(str), st.text("0123456789", min_size=1, max_size=12)
)
#: Milliseconds with 1 to 3 decimals (``20.5``, ``0.001``, ``20.500``): whole microseconds.
FRACTIONAL_LATENCY = st.tuples(
    st.text("0123456789", min_size=1, max_size=12), st.text("0123456789", min_size=1, max_size=3)
).map(".".join)
CLEAN_LATENCY = st.one_of(WHOLE_LATENCY, FRACTIONAL_LATENCY)
LATENCY_SPECIALS = st.sampled_from(
    [
        "", " ", "12", "12.0", "12.5", "-1", "+3", " 4 ", "-0", "007", "1e3", "1E+2", "1.5e1", "NaN", "inf",
        "999999999999", "1000000000000", "99999999999999999999", "1_000", "٣", "12.", ".0", "0b1", "0o7",
        "20.5", "20.500", "20.5000", "0.001", "20.1234", "0.0001", "2e1", "2.05e1", "1e-3", "1e-4", "-0.5",
        "-20.5", "nan", "-inf", "999999999999.999", "999999999999.9995", "1.0000000000000000000000000000001",
        "0e-100", ".5", "5.",
    ]
)
LATENCY_TEXT = st.one_of(
    CLEAN_LATENCY,
    _padded(
        st.tuples(st.sampled_from(["", "", "+", "-"]), st.text("0123456789", min_size=1, max_size=22)).map("".join)
    ),
    # more decimals than a microsecond, exponents, signs: the decimal cast and the rule must agree
    st.tuples(
        st.sampled_from(["", "", "+", "-"]), st.text("0123456789", max_size=13), st.sampled_from(["", "."]),
        st.text("0123456789", max_size=6), st.sampled_from(["", "", "e", "E-", "e+"]), st.text("0123456789", max_size=2),
    ).map("".join),
    LATENCY_SPECIALS,
    ARBITRARY_TEXT,
)


class TestParseLatencies:
    @SETTINGS
    @given(st.lists(CLEAN_LATENCY, min_size=1, max_size=30))
    def test_clean_column_takes_fast_path_and_matches_rows(self, values):
        with _spy("parse_latency_us") as spy:
            result = columns.parse_latencies(pa.array(values, pa.string()))
        _assert_column_matches_rows(values, result, ROW_PARSE_LATENCY, int)
        assert spy.call_count == 0

    @SETTINGS
    @given(st.lists(LATENCY_TEXT, max_size=30))
    def test_mixed_column_matches_rows(self, values):
        column = pa.array(values, pa.string())
        _record_path(column, pa.int64(), columns._LATENCY_FAST)
        _assert_column_matches_rows(values, columns.parse_latencies(column), ROW_PARSE_LATENCY, int)

    @SETTINGS
    @given(_with_one_inserted(CLEAN_LATENCY, st.one_of(LATENCY_SPECIALS, ARBITRARY_TEXT)))
    def test_clean_column_with_one_odd_value_matches_rows(self, values):
        column = pa.array(values, pa.string())
        _record_path(column, pa.int64(), columns._LATENCY_FAST)
        _assert_column_matches_rows(values, columns.parse_latencies(column), ROW_PARSE_LATENCY, int)


# --------------------------------------------------------------------------- sizes


def _parse_size_row(text):
    return ROW_PARSE_SIZE(text, "bid_size")


CLEAN_SIZE = st.one_of(  # the shapes of the fast-path prefilter: "", 1-15 digits [. 0-15 digits]
    st.just(""),
    st.tuples(
        st.text("0123456789", min_size=1, max_size=15),
        st.one_of(st.just(""), st.text("0123456789", max_size=15).map(lambda decimals: "." + decimals)),
    ).map("".join),
)
SIZE_SPECIALS = st.sampled_from(
    [
        "", " ", "\t", "nan", "NaN", "-nan", "inf", "+inf", "-inf", "Infinity", "1e3", "1E-3", "-0", "-0.0", "+0",
        "-1", "-1e-300", "1e308", "1e309", "1e-400", "0x10", "1_0", "1,5", " 1 ", ".5", "5.", ".", "e5", "1e",
        "1d", "٣", "0.1000000000000000055511151231257827", "123456789012345678901234567890",
    ]
)
SIZE_TEXT = st.one_of(
    CLEAN_SIZE,
    _padded(st.floats(allow_nan=True, allow_infinity=True).map(repr)),
    _padded(price_shapes()),
    SIZE_SPECIALS,
    ARBITRARY_TEXT,
)


class TestParseSizes:
    @SETTINGS
    @given(st.lists(CLEAN_SIZE, min_size=1, max_size=30))
    def test_clean_column_takes_fast_path_and_matches_rows(self, values):
        with _spy("parse_size") as spy:
            result = columns.parse_sizes(pa.array(values, pa.string()), "bid_size")
        _assert_column_matches_rows(values, result, _parse_size_row, float, _float_key)
        assert spy.call_count == 0

    @SETTINGS
    @given(st.lists(SIZE_TEXT, max_size=30))
    def test_mixed_column_matches_rows(self, values):
        column = pa.array(values, pa.string())
        _record_path(pc.if_else(pc.equal(column, ""), None, column), pa.float64(), columns._SIZE_FAST)
        result = columns.parse_sizes(column, "bid_size")
        _assert_column_matches_rows(values, result, _parse_size_row, float, _float_key)

    @SETTINGS
    @given(_with_one_inserted(CLEAN_SIZE, st.one_of(SIZE_SPECIALS, ARBITRARY_TEXT)))
    def test_clean_column_with_one_odd_value_matches_rows(self, values):
        column = pa.array(values, pa.string())
        _record_path(pc.if_else(pc.equal(column, ""), None, column), pa.float64(), columns._SIZE_FAST)
        result = columns.parse_sizes(column, "bid_size")
        _assert_column_matches_rows(values, result, _parse_size_row, float, _float_key)


# --------------------------------------------------------------------------- symbols

_WHITESPACE = " \t\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000\u200b\ufeff"
SYMBOL_TEXT = st.one_of(
    st.text(st.sampled_from(_WHITESPACE), max_size=4),
    st.tuples(
        st.text(st.sampled_from(_WHITESPACE), max_size=3),
        st.text(min_size=1, max_size=8),
        st.text(st.sampled_from(_WHITESPACE), max_size=3),
    ).map("".join),
    ARBITRARY_TEXT,
)
CLEAN_SYMBOL = st.text(st.characters(min_codepoint=ord("A"), max_codepoint=ord("Z")), min_size=1, max_size=6)


class TestParseSymbols:
    @SETTINGS
    @given(st.lists(CLEAN_SYMBOL, min_size=1, max_size=30))
    def test_clean_column_matches_rows(self, values):
        result = columns.parse_symbols(pa.array(values, pa.string()))
        _assert_column_matches_rows(values, result, ROW_PARSE_SYMBOL, lambda s: s.as_py())

    @SETTINGS
    @given(st.lists(SYMBOL_TEXT, max_size=30))
    def test_mixed_column_matches_rows(self, values):
        result = columns.parse_symbols(pa.array(values, pa.string()))
        _assert_column_matches_rows(values, result, ROW_PARSE_SYMBOL, lambda s: s.as_py())


# --------------------------------------------------------------------------- crossed quotes


class TestCrossedRejects:
    @SETTINGS
    @given(
        st.lists(
            st.tuples(
                st.integers(1, MAX_PRICE),
                st.one_of(st.integers(1, MAX_PRICE), st.none()),
                st.sampled_from(["", " ", "\t"]),
            ),
            max_size=30,
        )
    )
    def test_crossed_rejects_match_check_not_crossed(self, quotes_):
        quotes_ = [(b, b if a is None else a, pad) for b, a, pad in quotes_]  # None: bid == ask
        bid = np.array([b for b, _, _ in quotes_], dtype=np.int64)
        ask = np.array([a for _, a, _ in quotes_], dtype=np.int64)
        bid_text = [pad + quotes.decimal_text(b, SCALE) + pad for b, _, pad in quotes_]
        ask_text = [pad + quotes.decimal_text(a, SCALE) for _, a, pad in quotes_]
        expected = {}
        for index, (b, a, _) in enumerate(quotes_):
            try:
                quotes.check_not_crossed(b, a, bid_text[index], ask_text[index])
            except Rejected as rejected:
                expected[index] = rejected.reason
        result = columns.crossed_rejects(bid, ask, pa.array(bid_text, pa.string()), pa.array(ask_text, pa.string()))
        assert result == expected


# --------------------------------------------------------------------------- formatting

_MIN_US = 0
_MAX_US = (datetime(2100, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc) - quotes.EPOCH) // quotes.ONE_MICROSECOND
MICROS = st.integers(_MIN_US, _MAX_US)
MILLIS_AS_MICROS = st.integers(_MIN_US // 1000, _MAX_US // 1000).map(lambda ms: ms * 1000)
EVENT_US = st.one_of(MICROS, MILLIS_AS_MICROS)


def _canonical(micros: int) -> str:
    """``YYYY-MM-DD HH:MM:SS.fff`` of a millisecond-exact time (what the raw input may already be)."""
    assert micros % 1000 == 0
    return (quotes.NAIVE_EPOCH + timedelta(microseconds=micros)).isoformat(sep=" ", timespec="milliseconds")


class TestFormatTimestamps:
    @SETTINGS
    @given(st.lists(EVENT_US, max_size=30))
    def test_matches_format_timestamp_without_raw(self, event_us):
        result = columns.format_timestamps(np.array(event_us, dtype=np.int64), None)
        assert result.to_pylist() == [quotes.format_timestamp(v) for v in event_us]

    @SETTINGS
    @given(st.lists(MILLIS_AS_MICROS, max_size=30))
    def test_millisecond_times_match_format_timestamp(self, event_us):
        result = columns.format_timestamps(np.array(event_us, dtype=np.int64))
        assert result.to_pylist() == [quotes.format_timestamp(v) for v in event_us]

    @SETTINGS
    @given(st.lists(MILLIS_AS_MICROS, min_size=1, max_size=30))
    def test_canonical_raw_texts_are_returned_unchanged(self, event_us):
        raw = pa.array([_canonical(v) for v in event_us], pa.string())
        result = columns.format_timestamps(np.array(event_us, dtype=np.int64), raw)
        assert result.to_pylist() == raw.to_pylist() == [quotes.format_timestamp(v) for v in event_us]

    @SETTINGS
    @given(st.lists(MILLIS_AS_MICROS, min_size=1, max_size=30), st.integers(0, 3), st.integers(0, 3))
    def test_canonical_raw_slice_is_handled(self, event_us, before, after):
        # raw is a slice of a longer array (non-zero offset) whose neighbours are not canonical
        texts = ["x"] * before + [_canonical(v) for v in event_us] + ["2024-01-01T00:00:00"] * after
        raw = pa.array(texts, pa.string()).slice(before, len(event_us))
        result = columns.format_timestamps(np.array(event_us, dtype=np.int64), raw)
        assert result.to_pylist() == [quotes.format_timestamp(v) for v in event_us]

    @SETTINGS
    @given(
        st.lists(
            st.tuples(EVENT_US, st.sampled_from(["T", "iso_us", "seconds", "space_pad", "canonical"])),
            min_size=1,
            max_size=30,
        )
    )
    def test_non_canonical_raw_texts_give_canonical_output(self, items):
        event_us = [v for v, _ in items]
        raw_texts = []
        for v, style in items:
            canonical = quotes.format_timestamp(v)
            if style == "T":
                raw_texts.append(canonical.replace(" ", "T"))
            elif style == "iso_us":
                raw_texts.append(canonical[:19] + f".{v % 1_000_000:06d}")
            elif style == "seconds" and v % 1_000_000 == 0:
                raw_texts.append(canonical[:19])
            elif style == "space_pad":
                raw_texts.append(" " + canonical)
            else:
                raw_texts.append(canonical)
        assume(raw_texts != [quotes.format_timestamp(v) for v in event_us])  # at least one non-canonical text
        result = columns.format_timestamps(np.array(event_us, dtype=np.int64), pa.array(raw_texts, pa.string()))
        assert result.to_pylist() == [quotes.format_timestamp(v) for v in event_us]

    def test_non_canonical_raw_examples(self):
        texts = ["2024-01-01T00:00:00.200", "2024-01-01 00:00:00.7001"]
        event_us = [quotes.parse_timestamp(text) for text in texts]
        raw = pa.array(texts)
        assert columns.format_timestamps(np.array(event_us), raw).to_pylist() == [
            "2024-01-01 00:00:00.200",
            "2024-01-01 00:00:00.700100",
        ]

    @SETTINGS
    @given(st.lists(st.integers(-62135596800 * 10**6, 253402300799 * 10**6 + 999999), max_size=20))
    def test_whole_datetime_range_matches_format_timestamp(self, event_us):
        # years 0001-9999, including before 1970 (negative microseconds)
        result = columns.format_timestamps(np.array(event_us, dtype=np.int64))
        assert result.to_pylist() == [quotes.format_timestamp(v) for v in event_us]


class TestDecimalTexts:
    @SETTINGS
    @given(st.lists(st.tuples(st.integers(1, MAX_PRICE), st.integers(1, MAX_PRICE)), max_size=30))
    def test_mid_texts_match_mid_text(self, pairs):
        bid = np.array([b for b, _ in pairs], dtype=np.int64)
        ask = np.array([a for _, a in pairs], dtype=np.int64)
        assert columns.mid_texts(bid, ask, SCALE).to_pylist() == [quotes.mid_text(b, a, SCALE) for b, a in pairs]

    @SETTINGS
    @given(
        st.integers(0, 17),
        st.lists(st.tuples(st.integers(1, MAX_PRICE), st.integers(1, MAX_PRICE)), max_size=30),
    )
    def test_mid_texts_match_mid_text_at_any_scale(self, scale, pairs):
        bid = np.array([b for b, _ in pairs], dtype=np.int64)
        ask = np.array([a for _, a in pairs], dtype=np.int64)
        assert columns.mid_texts(bid, ask, scale).to_pylist() == [quotes.mid_text(b, a, scale) for b, a in pairs]

    def test_mid_texts_worked_examples(self):
        bid = np.array([110_000_000, 200 * 10**8, 100 * 10**8], dtype=np.int64)
        ask = np.array([120_000_000, 201 * 10**8, 100_50_000_000], dtype=np.int64)
        assert columns.mid_texts(bid, ask, SCALE).to_pylist() == ["1.15", "200.5", "100.25"]
        assert [quotes.mid_text(int(b), int(a), SCALE) for b, a in zip(bid, ask)] == ["1.15", "200.5", "100.25"]

    @SETTINGS
    @given(
        st.integers(0, 18),
        st.lists(st.one_of(st.integers(0, MAX_PRICE), st.integers(0, 10**6).map(lambda v: v * 10**8)), max_size=30),
    )
    def test_decimal_texts_match_decimal_text(self, scale, values):
        result = columns.decimal_texts(np.array(values, dtype=np.int64), scale)
        assert result.to_pylist() == [quotes.decimal_text(v, scale) for v in values]

    @SETTINGS
    @given(st.lists(st.tuples(MICROS, st.integers(1, MAX_PRICE), st.integers(1, MAX_PRICE)), max_size=20))
    def test_joined_mid_lines_match_mid_line(self, rows):
        event_us = np.array([t for t, _, _ in rows], dtype=np.int64)
        bid = np.array([b for _, b, _ in rows], dtype=np.int64)
        ask = np.array([a for _, _, a in rows], dtype=np.int64)
        text = columns.joined_lines(columns.format_timestamps(event_us), ", ", columns.mid_texts(bid, ask, SCALE))
        expected = "".join(
            quotes.mid_line(quotes.format_timestamp(t), quotes.mid_text(b, a, SCALE)) + "\n" for t, b, a in rows
        )
        assert text == expected.encode("utf-8")


# --------------------------------------------------------------------------- CSV blocks

LAYOUTS = {
    "with_symbol": csv_blocks.parse_header("timestamp,symbol,bid,ask,latency", "t.csv"),
    "no_symbol": csv_blocks.parse_header("timestamp,bid,venue,ask", "t.csv"),
}
QUOTED_FIELDS = ['"a,b"', '"x""y"', '"unterminated', 'a"b', '"a"b', '""', '" spaced "']
FIELD_TEXT = st.text(st.characters(blacklist_characters=',"\r\n', blacklist_categories=("Cs",)), max_size=6)


@st.composite
def csv_line(draw, width: int, slow_features: bool) -> bytes:
    """One physical line (with its ending) of a block: good, blank, wrong width, and (optionally) odd."""
    kinds = ["good"] * 6 + ["blank", "whitespace", "too_few", "too_many"]
    if slow_features:
        kinds += ["quoted", "bad_utf8", "stray_cr"]
    kind = draw(st.sampled_from(kinds))
    if kind == "blank":
        body = b""
    elif kind == "whitespace":
        body = draw(st.sampled_from([" ", "  ", "\t", " \t ", "\x0b", "\u3000", "\ufeff"])).encode()
    else:
        count = {
            "too_few": draw(st.integers(1, width - 1)) if width > 1 else 2,
            "too_many": draw(st.integers(width + 1, width + 4)),
        }.get(kind, width)
        fields = draw(st.lists(FIELD_TEXT, min_size=count, max_size=count))
        if kind == "quoted":
            index = draw(st.integers(0, count - 1))
            fields[index] = draw(st.sampled_from(QUOTED_FIELDS))
        body = ",".join(fields).encode()
        if kind == "bad_utf8":
            cut = draw(st.integers(0, len(body)))
            body = body[:cut] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc"])) + body[cut:]
        elif kind == "stray_cr":
            cut = draw(st.integers(0, len(body)))
            body = body[:cut] + b"\r" + body[cut:]
    return body + draw(st.sampled_from([b"\n", b"\n", b"\r\n"]))


@st.composite
def csv_blocks_data(draw, slow_features: bool):
    layout_name = draw(st.sampled_from(sorted(LAYOUTS)))
    layout = LAYOUTS[layout_name]
    lines = draw(st.lists(csv_line(layout.width, slow_features), min_size=1, max_size=25))
    return layout, b"".join(lines), draw(st.integers(2, 10**6))


def _summary(split: csv_blocks.SplitBlock) -> dict:
    rows = split.rows.to_pydict()
    rows["raw"] = [raw.rstrip("\r\n") for raw in rows["raw"]]
    return {
        "schema": split.rows.schema,
        "rows": rows,
        "rejected": list(
            zip(split.rejected_lines, [raw.rstrip("\r\n") for raw in split.rejected_raw], split.rejected_reasons)
        ),
        "blank_lines": split.blank_lines,
    }


def _split_both_ways(layout, data, first_line):
    starts, ends = csv_blocks._line_bounds(data)
    by_csv_module = csv_blocks.quote_block(
        csv_blocks._split_with_csv_module(data, starts, ends, first_line, layout), layout, "DEFAULT"
    )
    return csv_blocks.split_block(data, first_line, layout, "DEFAULT"), by_csv_module


class TestSplitBlock:
    @SETTINGS
    @given(csv_blocks_data(slow_features=False))
    def test_fast_path_matches_csv_module(self, case):
        layout, data, first_line = case
        # Arrow drops a BOM that opens the data, so such a block must not take the fast path.
        assert csv_blocks._is_fast(data) is not data.startswith(b"\xef\xbb\xbf")
        if csv_blocks._is_fast(data):
            starts, ends = csv_blocks._line_bounds(data)
            took_arrow = csv_blocks._split_with_arrow(data, starts, ends, first_line, layout) is not None
            event("arrow path" if took_arrow else "arrow declined")
        split, expected = _split_both_ways(layout, data, first_line)
        assert _summary(split) == _summary(expected)

    @SETTINGS
    @given(csv_blocks_data(slow_features=True))
    def test_any_block_matches_csv_module(self, case):
        layout, data, first_line = case
        event("fast-eligible" if csv_blocks._is_fast(data) else "slow only")
        split, expected = _split_both_ways(layout, data, first_line)
        assert _summary(split) == _summary(expected)

    def test_plain_block_takes_arrow_path(self):
        layout = LAYOUTS["with_symbol"]
        data = b"2024-01-01 00:00:00,X,1.1,1.2,120\r\n\n1,2\n \n2024-01-01 00:00:01,Y,2,3,4,5\n"
        starts, ends = csv_blocks._line_bounds(data)
        assert csv_blocks._split_with_arrow(data, starts, ends, 2, layout) is not None
        split, expected = _split_both_ways(layout, data, 2)
        assert _summary(split) == _summary(expected)
        assert split.rejected_lines == [4, 5, 6]
        assert split.blank_lines == 1


# --------------------------------------------------------------------------- known discrepancies


class TestRegressions:
    """Disagreements the properties above once found, pinned as minimal cases."""

    def test_year_zero_timestamp_is_rejected_like_the_row_rule(self):
        values = ["0000-01-01 00:00:00"]
        _assert_column_matches_rows(values, columns.parse_timestamps(pa.array(values)), ROW_PARSE_TIMESTAMP, int)

    def test_hexadecimal_latency_is_rejected_like_the_row_rule(self):
        values = ["0x10"]
        _assert_column_matches_rows(values, columns.parse_latencies(pa.array(values)), ROW_PARSE_LATENCY, int)

    def test_prices_with_precision_equal_to_scale_fall_back_instead_of_raising(self):
        # decimal(5, 5): the mixed-path prefilter regex becomes ^\d{1,0}... which RE2 refuses
        values = ["0.5", "x"]
        result = columns.parse_prices(pa.array(values), "bid_price", 5, 5)
        _assert_column_matches_rows(values, result, lambda t: ROW_PARSE_PRICE(t, "bid_price", 5, 5), int)

    def test_block_starting_with_a_bom_keeps_it_like_the_csv_module(self):
        # The fast path's Arrow CSV reader strips a UTF-8 BOM at the start of the block only, so a
        # line's fields depend on whether it happens to start a block.
        layout = LAYOUTS["with_symbol"]
        data = "\ufeff2024-01-01 00:00:00,X,1,2,3\n".encode()
        split, expected = _split_both_ways(layout, data, 2)
        assert _summary(split) == _summary(expected)

    @pytest.mark.parametrize(
        "parse, row_rule",
        [
            (columns.parse_timestamps, lambda text: quotes.parse_timestamp(text or "")),
            (columns.parse_latencies, lambda text: quotes.parse_latency_us(text or "")),
            (lambda col: columns.parse_prices(col, "bid_price", 18, 8),
             lambda text: quotes.parse_price(text or "", "bid_price", 18, 8)),
        ],
    )
    def test_null_is_judged_like_an_empty_field_not_passed_through_by_the_cast(self, parse, row_rule):
        clean = "2024-01-01 00:00:00" if parse is columns.parse_timestamps else "1"
        _, rejects = parse(pa.array([clean, None], pa.string()))
        with pytest.raises(quotes.Rejected) as caught:
            row_rule(None)
        assert rejects == {1: caught.value.reason}

    def test_null_size_is_unknown(self):
        values, rejects = columns.parse_sizes(pa.array(["1", None], pa.string()), "bid_size")
        assert rejects == {} and values[0] == 1.0 and math.isnan(values[1])
