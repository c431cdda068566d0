"""The rule for when a source with real watermarks reports them (transforms.sources.watermarks), without Beam."""

from __future__ import annotations

import pyarrow as pa
import pytest

from transforms.sources.watermarks import interval_pieces, next_watermark, watermarks_in_force
from transforms.windows.logic import INFINITE

MS = 1000


def rows(*arrivals_ms):
    arrivals = [None if a is None else a * MS for a in arrivals_ms]
    return pa.RecordBatch.from_pydict({"arrival_us": pa.array(arrivals, type=pa.int64()),
                                       "line": pa.array(range(len(arrivals)), type=pa.int64())})


def cut(batch, interval_ms, current=None):
    return [(p.interval, p.offset, p.rows.column("line").to_pylist()) for p in interval_pieces(batch, interval_ms * MS, current)]


def test_a_block_is_cut_where_the_interval_of_arrival_changes():
    assert cut(rows(5, 99, 100, 150, 420), 100) == [(0, 0, [0, 1]), (1, 2, [2, 3]), (4, 4, [4])]


def test_rows_without_arrival_stay_with_the_row_before_them():
    assert cut(rows(5, None, 120, None, None, 130), 100) == [(0, 0, [0, 1]), (1, 2, [2, 3, 4, 5])]


def test_the_interval_carries_over_from_the_block_before():
    assert cut(rows(None, 150, 220), 100, current=1) == [(1, 0, [0, 1]), (2, 2, [2])]
    assert cut(rows(None, None), 100, current=None) == [(None, 0, [0, 1])]  # nothing has arrived yet


def test_an_interval_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        list(interval_pieces(rows(1), 0, None))


def test_the_watermark_after_a_piece_ignores_rows_without_arrival_and_never_goes_back():
    assert next_watermark(None, rows(None, 5, 3), 0) == 5 * MS
    assert next_watermark(7 * MS, rows(None), 0) == 7 * MS
    assert next_watermark(9 * MS, rows(4), 0) == 9 * MS


def test_each_row_is_judged_by_the_watermark_after_the_intervals_before_its_own():
    # interval 100 ms, lag 0: rows of [0,100) see no watermark; rows of [100,200) see the newest arrival
    # before 100 (99.5 ms, floored to 99); a row of [400,500) sees 180.
    marks = watermarks_in_force([10 * MS, 99_500, None, 120 * MS, 180 * MS, 420 * MS], 100 * MS, 0)
    assert marks == [None, None, None, 99 * MS, 99 * MS, 180 * MS]


def test_the_lag_is_subtracted_and_an_infinite_lag_never_reports():
    assert watermarks_in_force([10 * MS, 120 * MS], 100 * MS, 30 * MS) == [None, -20 * MS]
    assert watermarks_in_force([10 * MS, 120 * MS], 100 * MS, INFINITE) == [None, None]


def test_the_reference_rule_and_the_cuts_agree_row_by_row():
    # What a source following interval_pieces emits each row under, computed the way ReadFeed does it
    # (report at the end of an interval), against the row-by-row reference.
    arrivals = [3, 3, 7, None, 12, 19, 19, None, 31, 44, 45, 90, None, 91]
    batches = [rows(*arrivals[:5]), rows(*arrivals[5:9]), rows(*arrivals[9:])]
    emitted, interval, watermark, in_force = [], None, None, None
    for batch in batches:
        for piece in interval_pieces(batch, 10 * MS, interval):
            if interval is not None and piece.interval is not None and piece.interval > interval:
                in_force = watermark  # the report at the interval's end
            if piece.interval is not None:
                interval = piece.interval
            watermark = next_watermark(watermark, piece.rows, 0)
            emitted += [in_force] * piece.rows.num_rows
    expected = watermarks_in_force([None if a is None else a * MS for a in arrivals], 10 * MS, 0)
    assert emitted == expected
