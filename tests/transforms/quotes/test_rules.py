"""Row-level quote rules: the contract every faster path is checked against."""

from __future__ import annotations

import pytest

from transforms.quotes import rules as quotes
from transforms.quotes.rules import Rejected

SCALE = 8


def scaled(text: str) -> int:
    return quotes.parse_price(text, "bid_price", 18, SCALE)


class TestMidPrice:
    @pytest.mark.parametrize(
        "bid, ask, mid",
        [
            ("1.1", "1.2", "1.15"),  # no float noise (0.5 * (1.1 + 1.2) = 1.1500000000000001)
            ("200", "201", "200.5"),
            ("200", "202", "201"),  # no trailing ".0"
            ("1.10", "1.20", "1.15"),  # trailing zeros of the input do not matter
            ("0.00000001", "0.00000002", "0.000000015"),  # one decimal more than the inputs
            ("9999999999.99999999", "9999999999.99999999", "9999999999.99999999"),  # largest decimal(18, 8)
            ("1e2", "101", "100.5"),
        ],
    )
    def test_mid_is_exact_and_plain(self, bid, ask, mid):
        assert quotes.mid_text(scaled(bid), scaled(ask), SCALE) == mid

    def test_mid_line_format(self):
        assert quotes.mid_line("2024-01-01 00:00:00.200", "200.5") == "2024-01-01 00:00:00.200, 200.5"

    @pytest.mark.parametrize("unscaled, scale, text", [(0, 3, "0"), (1500, 3, "1.5"), (7, 0, "7"), (5, 9, "0.000000005")])
    def test_decimal_text(self, unscaled, scale, text):
        assert quotes.decimal_text(unscaled, scale) == text


class TestTimestamps:
    @pytest.mark.parametrize(
        "text, expected",
        [
            ("2024-01-01 00:00:00", 1704067200000000),
            ("2024-01-01 00:00:00.2", 1704067200200000),
            ("2024-01-01T00:00:00.123456", 1704067200123456),
            ("2024-01-01T00:00:00Z", 1704067200000000),
            ("2024-01-01T01:00:00+01:00", 1704067200000000),  # offsets are converted to UTC
            ("  2024-01-01 00:00:00  ", 1704067200000000),
            ("1969-12-31 23:59:59.5", -500000),
        ],
    )
    def test_parse(self, text, expected):
        assert quotes.parse_timestamp(text) == expected

    @pytest.mark.parametrize(
        "text, code",
        [
            ("", "missing_timestamp"),
            ("   ", "missing_timestamp"),
            ("yesterday", "bad_timestamp"),
            ("2023-02-29 00:00:00", "bad_timestamp"),
            ("2024-01-01 24:00:00", "bad_timestamp"),
            ("2024-01-01_00:00:00", "bad_timestamp"),  # fromisoformat would accept any separator
            ("2024-01-01 00:00:00.1234567", "bad_timestamp"),  # would silently lose the 7th digit
        ],
    )
    def test_rejects(self, text, code):
        with pytest.raises(Rejected) as caught:
            quotes.parse_timestamp(text)
        assert caught.value.code == code
        assert caught.value.reason.startswith(code + ": ")

    @pytest.mark.parametrize(
        "micros, text",
        [
            (1704067200000000, "2024-01-01 00:00:00.000"),
            (1704067200200000, "2024-01-01 00:00:00.200"),
            (1704067200123456, "2024-01-01 00:00:00.123456"),  # sub-millisecond: six decimals
            (1704067200123000, "2024-01-01 00:00:00.123"),
            (-500000, "1969-12-31 23:59:59.500"),
        ],
    )
    def test_format(self, micros, text):
        assert quotes.format_timestamp(micros) == text


class TestNumbers:
    @pytest.mark.parametrize(
        "text, code",
        [
            ("", "missing_price"),
            ("abc", "bad_price"),
            ("NaN", "bad_price"),
            ("inf", "bad_price"),
            ("0", "non_positive_price"),
            ("-1.5", "non_positive_price"),
            ("1.123456789", "price_precision"),
            ("1E-20", "price_precision"),
            ("12345678901", "price_range"),
            ("1e400", "price_range"),
        ],
    )
    def test_price_rejects(self, text, code):
        with pytest.raises(Rejected) as caught:
            scaled(text)
        assert caught.value.code == code

    @pytest.mark.parametrize("text", ["1.1", " 1.1 ", "1.10", "+1.1", "1.100000000", "0001.1", "1_1e-1"])
    def test_price_equivalent_spellings(self, text):
        assert scaled(text) == 110_000_000

    @pytest.mark.parametrize("text, value", [
        ("0", 0), ("12", 12_000), ("12.0", 12_000), (" 7 ", 7_000), ("007", 7_000),
        ("20.5", 20_500), ("20.500", 20_500), ("20.5000", 20_500), ("0.001", 1), (".5", 500), ("5.", 5_000),
        ("-0", 0), ("0.000000", 0), ("20.500000000", 20_500), ("999999999999.999", 999_999_999_999_999),
    ])
    def test_latency_is_exact_microseconds(self, text, value):
        assert quotes.parse_latency_us(text) == value

    @pytest.mark.parametrize("text, code, detail", [
        ("", "missing_latency", "latency_ms is empty"),
        ("-1", "bad_latency", "latency_ms '-1' is negative"),
        ("-0.5", "bad_latency", "latency_ms '-0.5' is negative"),
        ("20.1234", "bad_latency", "latency_ms '20.1234' has more than 3 decimal places"),
        ("0.0001", "bad_latency", "latency_ms '0.0001' has more than 3 decimal places"),
        ("1e1", "bad_latency", "latency_ms '1e1' has an exponent: write it in plain digits"),
        ("2.05E1", "bad_latency", "latency_ms '2.05E1' has an exponent"),
        ("0e-100", "bad_latency", "has an exponent"),
        ("1e-4", "bad_latency", "has an exponent"),
        # 28 significant digits would survive Decimal arithmetic's rounding; the rule uses none.
        ("1.0000000000000000000000000000001", "bad_latency", "has more than 3 decimal places"),
        ("nan", "bad_latency", "latency_ms 'nan' is not a finite number"),
        ("inf", "bad_latency", "latency_ms 'inf' is not a finite number"),
        ("x", "bad_latency", "latency_ms 'x' is not a number"),
        ("1000000000000", "bad_latency", "latency_ms '1000000000000' is out of range"),
        ("1e999999999", "bad_latency", "has an exponent"),
    ])
    def test_latency_rejects(self, text, code, detail):
        with pytest.raises(Rejected) as caught:
            quotes.parse_latency_us(text)
        assert caught.value.code == code and detail in caught.value.reason

    @pytest.mark.parametrize("micros, text", [(0, "0"), (1, "0.001"), (7_000, "7"), (20_000, "20"),
                                              (20_500, "20.5"), (20_050, "20.05"), (120_001, "120.001")])
    def test_latency_text_has_no_trailing_zeros(self, micros, text):
        assert quotes.latency_text(micros) == text

    def test_threshold_compares_exactly(self):
        assert quotes.is_over_threshold(20_500, 20) and quotes.is_over_threshold(20_001, 20)
        assert not quotes.is_over_threshold(20_000, 20) and not quotes.is_over_threshold(20_500, 21)
        assert not quotes.is_over_threshold(None, 0)

    @pytest.mark.parametrize("text, value", [(None, None), ("", None), ("  ", None), ("0", 0.0), ("12.5", 12.5)])
    def test_size(self, text, value):
        assert quotes.parse_size(text, "bid_size") == value

    @pytest.mark.parametrize("text", ["-1", "nan", "inf", "lots"])
    def test_size_rejects(self, text):
        with pytest.raises(Rejected, match="^bad_size: bid_size"):
            quotes.parse_size(text, "bid_size")


class TestRecord:
    PRICES = quotes.PriceRule(18, 8)

    def fields(self, **overrides):
        base = {"symbol": "AAPL", "bid_price": "1.1", "bid_size": "5", "ask_price": "1.2", "ask_size": ""}
        return {**base, **overrides}

    def test_valid(self):
        assert quotes.parse_content(self.fields(), self.PRICES) == ("AAPL", 110_000_000, 120_000_000, 5.0, None, "default")

    def test_equal_bid_and_ask_is_not_crossed(self):
        assert quotes.parse_content(self.fields(ask_price="1.1"), self.PRICES)[1:3] == (110_000_000, 110_000_000)

    def test_crossed_quote_is_rejected_with_both_prices(self):
        with pytest.raises(Rejected, match=r"^crossed_quote: bid 1.3 is above ask 1.2$"):
            quotes.parse_content(self.fields(bid_price="1.3"), self.PRICES)

    def test_first_broken_rule_in_schema_order_wins(self):
        with pytest.raises(Rejected) as caught:
            quotes.parse_content(self.fields(symbol=" ", bid_price="x", ask_price="y"), self.PRICES)
        assert caught.value.code == "missing_symbol"
        with pytest.raises(Rejected) as caught:
            quotes.parse_content(self.fields(bid_price="x", ask_price="y"), self.PRICES)
        assert caught.value.reason == "bad_price: bid_price 'x' is not a number"

    def test_latency_error_line(self):
        assert (
            quotes.latency_error_line("2024-01-01 00:00:00.000", 120_000, 20)
            == "No mid price at 2024-01-01 00:00:00.000 as latency 120ms is bigger than 20ms"
        )
        assert (
            quotes.latency_error_line("2024-01-01 00:00:00.000", quotes.parse_latency_us("20.500"), 20)
            == "No mid price at 2024-01-01 00:00:00.000 as latency 20.5ms is bigger than 20ms"
        )

    def test_a_fractional_latency_adds_to_the_arrival_exactly(self):
        event_us = quotes.parse_timestamp("2024-01-01 00:00:00.000001")
        assert quotes.arrival_micros(event_us, quotes.parse_latency_us("20.5")) - event_us == 20_500
        assert quotes.arrival_micros(event_us, quotes.parse_latency_us("0.001")) - event_us == 1

    def test_arrival_is_timestamp_plus_latency_in_milliseconds(self):
        # The requirements' worked example: arrivals .120, .201 and .710 s, so order [1, 2, 3].
        starts = [quotes.parse_timestamp(t) for t in ("2024-01-01 00:00:00", "2024-01-01 00:00:00.200",
                                                      "2024-01-01 00:00:00.700")]
        arrivals = [quotes.arrival_micros(t, lat * 1000) for t, lat in zip(starts, (120, 1, 10))]
        assert [a - starts[0] for a in arrivals] == [120_000, 201_000, 710_000]
        assert sorted(range(3), key=arrivals.__getitem__) == [0, 1, 2]
        # Adding the milliseconds as seconds gives the [2, 3, 1] the requirements claim.
        as_seconds = [t + lat * 1_000_000 for t, lat in zip(starts, (120, 1, 10))]
        assert sorted(range(3), key=as_seconds.__getitem__) == [1, 2, 0]

    def test_unknown_reject_code_is_a_programming_error(self):
        with pytest.raises(KeyError):
            Rejected("no_such_code", "x")
