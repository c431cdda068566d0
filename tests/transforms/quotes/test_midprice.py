"""ComputeMidPrices: the latency threshold and the exact output lines."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest

from schemas import field_rules, load_schema
from tests.conftest import WORKED_EXAMPLE
from transforms.quotes.midprice import latency_error_text, mid_price_text, split_by_latency
from transforms.quotes.normalize import normalize_batch, price_rule
from transforms.quotes.rules import HISTORICAL, LIVE
from transforms.quotes.stage import ComputeMidPrices
from transforms.sources.replay import HistoricalReplay, mode_column

PRICES = price_rule(field_rules(load_schema("quote")))


def valid_rows(text: str) -> pa.RecordBatch:
    batch = pa.concat_batches(list(HistoricalReplay(["f"], open_file=lambda _: io.BytesIO(text.encode()))))
    return normalize_batch(batch, PRICES)[0]


@pytest.mark.parametrize("threshold, late_lines", [(20, [2]), (119, [2]), (120, []), (0, [2, 3, 4])])
def test_threshold_is_strictly_greater(threshold, late_lines):
    valid = valid_rows(WORKED_EXAMPLE)
    late = split_by_latency(valid, threshold)
    assert valid.filter(pa.array(late)).column("line").to_pylist() == late_lines


def test_no_threshold_filters_nothing():
    valid = valid_rows(WORKED_EXAMPLE)
    assert not split_by_latency(valid, None).any()


def test_live_quotes_are_never_filtered_even_when_late():
    valid = valid_rows(WORKED_EXAMPLE)
    live = valid.set_column(valid.schema.get_field_index("mode"), "mode", mode_column(LIVE, valid.num_rows))
    assert split_by_latency(valid, 20).any()
    assert not split_by_latency(live, 20).any()
    # Only the historical half of a mixed block is filtered.
    modes = [HISTORICAL if i % 2 == 0 else LIVE for i in range(valid.num_rows)]
    mixed = valid.set_column(valid.schema.get_field_index("mode"), "mode", pa.array(modes))
    expected = split_by_latency(valid, 20) & (np.arange(valid.num_rows) % 2 == 0)
    assert split_by_latency(mixed, 20).tolist() == expected.tolist()


def test_quotes_without_latency_are_never_filtered():
    valid = valid_rows("timestamp,bid,ask\n2024-01-01 00:00:00,1,2\n")
    assert not split_by_latency(valid, 0).any()


def test_worked_example_lines():
    valid = valid_rows(WORKED_EXAMPLE)
    late = split_by_latency(valid, 20)
    assert mid_price_text(valid.filter(pa.array(~late)), 8) == (
        b"2024-01-01 00:00:00.200, 200.5\n2024-01-01 00:00:00.700, 100.25\n")
    assert latency_error_text(valid.filter(pa.array(late)), 20) == (
        b"No mid price at 2024-01-01 00:00:00.000 as latency 120ms is bigger than 20ms\n")


def test_timestamps_print_milliseconds_or_microseconds_in_utc():
    valid = valid_rows("timestamp,bid,ask\n2024-01-01T00:00:00.1Z,1.1,1.2\n2024-01-01 01:00:00.123456+01:00,200,201\n")
    assert mid_price_text(valid, 8) == b"2024-01-01 00:00:00.100, 1.15\n2024-01-01 00:00:00.123456, 200.5\n"


def test_bad_arguments():
    with pytest.raises(ValueError, match="latency_threshold_ms"):
        ComputeMidPrices(-1)


FRACTIONAL = ("timestamp,bid,ask,latency_ms\n"
              "2024-01-01 00:00:00,1,2,20.5\n"
              "2024-01-01 00:00:00.100,1,2,20.000\n"
              "2024-01-01 00:00:00.200,1,2,20.001\n"
              "2024-01-01 00:00:00.300,1,2,0.001\n")


@pytest.mark.parametrize("threshold, late_lines", [(20, [2, 4]), (21, []), (0, [2, 3, 4, 5])])
def test_fractional_latencies_meet_the_threshold_exactly(threshold, late_lines):
    valid = valid_rows(FRACTIONAL)
    assert valid.filter(pa.array(split_by_latency(valid, threshold))).column("line").to_pylist() == late_lines


def test_error_lines_show_the_latency_without_trailing_zeros():
    valid = valid_rows(FRACTIONAL)
    assert latency_error_text(valid.filter(pa.array(split_by_latency(valid, 0))), 0) == (
        b"No mid price at 2024-01-01 00:00:00.000 as latency 20.5ms is bigger than 0ms\n"
        b"No mid price at 2024-01-01 00:00:00.100 as latency 20ms is bigger than 0ms\n"
        b"No mid price at 2024-01-01 00:00:00.200 as latency 20.001ms is bigger than 0ms\n"
        b"No mid price at 2024-01-01 00:00:00.300 as latency 0.001ms is bigger than 0ms\n")
