"""HistoricalReplay: arrival order across blocks and files, bounded memory, rejected rows."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from beam_pipeline.devtools.samples import generate
from tests.conftest import WORKED_EXAMPLE
from transforms.quotes import rules as quotes
from transforms.sources.csv_blocks import HeaderError
from transforms.sources.replay import BLOCK_SCHEMA, HistoricalReplay, mode_column


def replay(files: dict[str, bytes], block_bytes: int = 1 << 20, **kwargs) -> tuple[pa.RecordBatch, HistoricalReplay]:
    reader = HistoricalReplay(list(files), block_bytes=block_bytes,
                              open_file=lambda name: io.BytesIO(files[name]), **kwargs)
    blocks = list(reader)
    assert all(b.schema == BLOCK_SCHEMA for b in blocks)
    return (pa.concat_batches(blocks) if blocks else BLOCK_SCHEMA.empty_table().to_batches()), reader


def accepted(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.filter(pc.is_null(batch.column("reject")))


def test_worked_example_arrives_in_order_1_2_3():
    batch, _ = replay({"a.csv": WORKED_EXAMPLE.encode()})
    assert accepted(batch).column("line").to_pylist() == [2, 3, 4]
    assert accepted(batch).column("arrival_us").to_pylist() == [
        1704067200120000, 1704067200201000, 1704067200710000]


@pytest.mark.parametrize("block_bytes", [64, 1000, 1 << 20])
def test_order_is_sorted_arrival_whatever_the_block_size(block_bytes):
    data = generate(3000, seed=3)
    batch, reader = replay({"q.csv": data}, block_bytes=block_bytes)
    good = accepted(batch)
    keys = list(zip(good.column("arrival_us").to_pylist(), good.column("line").to_pylist()))
    assert keys == sorted(keys)
    assert good.num_rows == reader.stats.records_in == 3000


def test_memory_is_bounded_by_the_latency_window_not_the_file():
    data = generate(20000, seed=5)  # latencies up to ~420 ms, quotes ~20 ms apart
    _, reader = replay({"q.csv": data}, block_bytes=4096)
    rows_per_block = 4096 // 50
    assert reader.stats.max_held_rows < 3 * rows_per_block + 100
    assert reader.stats.max_held_rows < 20000 / 20


def test_ties_break_in_file_order_within_and_across_files():
    a = b"timestamp,bid,ask,latency\n2024-01-01 00:00:00.010,1,2,0\n2024-01-01 00:00:00.000,1,2,10\n"
    b = b"timestamp,bid,ask,latency\n2024-01-01 00:00:00.005,1,2,5\n"
    batch, _ = replay({"a.csv": a, "b.csv": b})
    good = accepted(batch)
    assert list(zip(good.column("file").to_pylist(), good.column("line").to_pylist())) == [(0, 2), (0, 3), (1, 2)]


def test_files_are_merged_in_arrival_order():
    first = generate(500, seed=1)
    second = generate(700, seed=2)
    batch, _ = replay({"x.csv": first, "y.csv": second}, block_bytes=2048)
    good = accepted(batch)
    keys = list(zip(good.column("arrival_us").to_pylist(), good.column("file").to_pylist(),
                    good.column("line").to_pylist()))
    assert keys == sorted(keys) and len(keys) == 1200


def test_rejected_rows_travel_with_their_reason_and_are_counted():
    data = (WORKED_EXAMPLE + "not a time,1,2,3\n2024-01-01 00:00:01,1,2,-4\n2024-01-01 00:00:00.100,1,2,0\n"
            "2024-01-01 00:00:02,1,2\n\n").encode()
    batch, reader = replay({"a.csv": data})
    reasons = {line: reason for line, reason in zip(batch.column("line").to_pylist(), batch.column("reject").to_pylist())
               if reason}
    assert {line: quotes.reject_code(r) for line, r in reasons.items()} == {
        5: "bad_timestamp", 6: "bad_latency", 7: "out_of_order", 8: "wrong_field_count"}
    assert reader.stats.records_in == 7 and reader.stats.blank_lines == 1
    assert batch.num_rows == 7  # every record read is in exactly one block


def test_file_without_latency_column_arrives_at_its_timestamps():
    data = b"timestamp,symbol,bid,ask\n2024-01-01 00:00:01,A,1,2\n2024-01-01 00:00:02,B,1,2\n"
    batch, _ = replay({"live.csv": data})
    assert batch.column("latency_us").null_count == 2
    assert batch.column("arrival_us").to_pylist() == batch.column("event_us").to_pylist()


def test_default_symbol_fills_files_without_a_symbol_column():
    batch, _ = replay({"a.csv": WORKED_EXAMPLE.encode()}, default_symbol="EURUSD")
    assert set(batch.column("symbol").to_pylist()) == {"EURUSD"}


def test_header_problems_are_clear_errors():
    with pytest.raises(HeaderError, match=r"a\.csv: header lacks ask_price \(or 'ask'\)"):
        replay({"a.csv": b"timestamp,bid,latency\n"})
    with pytest.raises(HeaderError, match="twice"):
        replay({"a.csv": b"timestamp,bid,bid_price,ask\n"})
    with pytest.raises(HeaderError, match="empty line"):
        replay({"a.csv": b""})


def test_crlf_bom_and_missing_final_newline():
    data = "\ufefftimestamp,bid,ask,latency\r\n2024-01-01 00:00:00,1,2,0\r\n2024-01-01 00:00:01,1,2,0".encode()
    batch, reader = replay({"a.csv": data})
    assert accepted(batch).column("line").to_pylist() == [2, 3]
    assert reader.stats.records_in == 2


# --------------------------------------------------------------------------- quote deduplication

SECOND = 1_000_000


def kept_lines(batch: pa.RecordBatch) -> list[tuple[int, int, str | None]]:
    return list(zip(batch.column("file").to_pylist(), batch.column("line").to_pylist(), batch.column("reject").to_pylist()))


@pytest.mark.parametrize("block_bytes", [300, 1 << 20])
def test_dedup_off_is_the_replay_as_before(block_bytes):
    data = generate(2000, seed=4)
    files = {"a.csv": data, "b.csv": data}
    plain_blocks = list(HistoricalReplay(list(files), block_bytes=block_bytes, open_file=lambda n: io.BytesIO(files[n])))
    off = HistoricalReplay(list(files), block_bytes=block_bytes, open_file=lambda n: io.BytesIO(files[n]),
                           dedup_horizon_us=0)
    assert [b.equals(p) for b, p in zip(list(off), plain_blocks)] == [True] * len(plain_blocks)
    assert "duplicates" not in off.stats.as_dict()


@pytest.mark.parametrize("block_bytes", [300, 1 << 20])
def test_a_file_fed_twice_replays_as_one_copy_with_the_copies_counted(block_bytes):
    data = (WORKED_EXAMPLE + "not a time,1,2,3\n2024-01-01 00:00:01,1,2,-4\n2024-01-01 00:00:02,1,2\n").encode()
    once, _ = replay({"a.csv": data}, block_bytes=block_bytes, dedup_horizon_us=SECOND)
    twice, reader = replay({"a.csv": data, "b.csv": data}, block_bytes=block_bytes, dedup_horizon_us=SECOND)
    # The same rows (rejected ones come out as they are read, so earlier with a second file).
    assert sorted(kept_lines(twice)) == sorted(kept_lines(once)) and len(kept_lines(once)) == 6
    assert accepted(twice).equals(accepted(once))
    assert reader.stats.duplicates == 6 and reader.stats.records_in == 12
    assert reader.stats.as_dict()["duplicates"] == 6


def test_the_same_line_later_than_the_horizon_is_a_new_quote():
    line = "2024-01-01 00:00:00,1.1,1.2,0\n"
    later = "2024-01-01 00:00:05,1.1,1.2,0\n"
    data = ("timestamp,bid,ask,latency\n" + line + line + later + later).encode()
    batch, reader = replay({"a.csv": data}, dedup_horizon_us=SECOND)
    assert accepted(batch).column("line").to_pylist() == [2, 4]
    assert reader.stats.duplicates == 2
    # A line seen again after the horizon is kept: the copy at 00:00:00 comes back 6 s later.
    again = ("timestamp,bid,ask,latency\n" + line + later + "2024-01-01 00:00:06,1,2,0\n"
             + "2024-01-01 00:00:00,1.1,1.2,6000\n").encode()
    batch, reader = replay({"a.csv": again}, dedup_horizon_us=SECOND)
    assert accepted(batch).num_rows == 4 and reader.stats.duplicates == 0


def test_a_crlf_copy_of_an_lf_file_is_the_same_quotes():
    data = WORKED_EXAMPLE.encode()
    batch, reader = replay({"a.csv": data, "b.csv": data.replace(b"\n", b"\r\n")}, dedup_horizon_us=SECOND)
    assert kept_lines(batch) == [(0, 2, None), (0, 3, None), (0, 4, None)] and reader.stats.duplicates == 3


def test_rejected_rows_are_checked_at_the_latest_arrival_read():
    from transforms.sources.replay import QuoteDeduplicator

    dedup = QuoteDeduplicator(10)
    batch = pa.RecordBatch.from_pydict({"arrival_us": pa.array([None, 5, 7, None], pa.int64()), "raw": ["x", "a", "b", "x"]})
    assert dedup.times(batch).tolist() == [0, 5, 7, 0]  # nothing read yet
    dedup.saw(pa.RecordBatch.from_pydict({"arrival_us": pa.array([9, 30, None], pa.int64())}))
    dedup.saw(pa.RecordBatch.from_pydict({"arrival_us": pa.array([12], pa.int64())}))
    assert dedup.times(batch).tolist() == [30, 5, 7, 30]


def test_historical_feed_and_replay_historical_count_duplicates(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.sources.feeds import HistoricalFeed
    from transforms.sources.stage import ReplayHistorical

    data = generate(300, seed=9)
    paths = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for path in paths:
        path.write_bytes(data)
    sources = [str(p) for p in paths]
    feed = HistoricalFeed(sources, dedup_horizon_us=SECOND)
    rows = sum(block.batch.num_rows for block in feed.blocks(0))
    # records in = records yielded + duplicates dropped (the balance of metrics.json)
    assert rows == 300 and feed.stats()["duplicates"] == 300 and feed.stats()["records_in"] == 600
    assert "duplicates" not in HistoricalFeed(sources).stats()

    def rows_and_duplicates(counts):
        return counts["records_in"], counts.get("duplicates")

    with BeamTestPipeline() as pipeline:
        on = pipeline | "On" >> ReplayHistorical(sources, dedup_horizon_us=SECOND)
        off = pipeline | "Off" >> ReplayHistorical(sources)
        assert_that(on.counts | "OnCounts" >> beam.Map(rows_and_duplicates), equal_to([(600, 300)]), label="On")
        assert_that(off.counts | "OffCounts" >> beam.Map(rows_and_duplicates), equal_to([(600, None)]), label="Off")
        assert_that(on.blocks | "OnRows" >> beam.Map(lambda b: b.num_rows) | "SumOn" >> beam.CombineGlobally(sum),
                    equal_to([300]), label="OnRows")


@pytest.mark.parametrize("mode", ["historical", "live", "", "é"])
def test_mode_column_is_the_mode_repeated(mode):
    for count in (0, 1, 5, 70000):
        column = mode_column(mode, count)
        column.validate(full=True)
        assert column.type == pa.string() and len(column) == count and column.null_count == 0
        assert column.equals(pa.array([mode] * count, pa.string()))
