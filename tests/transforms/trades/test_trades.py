"""Trade input: header, the rules row by row, arrival order, deduplication, and ReadTrades on Beam."""

from __future__ import annotations

import io
import json
import random

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas import load_schema
from transforms.quotes import rules as quotes
from transforms.quotes.normalize import dead_letter_chunk
from transforms.sources.csv_blocks import split_lines
from transforms.sources.dedup import Deduplicator
from transforms.trades.market import TRADE_SCHEMA
from transforms.trades.read import (
    DEAD_SCHEMA,
    DROPPED_SCHEMA,
    DroppedRows,
    TradeInputError,
    TradeTally,
    by_symbol,
    check_trade_headers,
    fill_times,
    find_duplicates,
    parse_trade_block,
    parse_trade_header,
    read_trades,
    stream_trades,
    trade_rules,
    without_rows,
)
from transforms.trades.stage import ReadTrades

HEADER = "timestamp,symbol,price,size,side,trade_id,latency_ms\n"
GOOD = (
    HEADER
    + "2024-01-01 00:00:00.100,AAPL,194.50,10,buy,T1,5\n"  # arrives .105
    + "2024-01-01 00:00:00.050,MSFT,415.25,3,Sell,T2,100\n"  # arrives .150
    + "2024-01-01 00:00:00.120,AAPL,194.49,2.5,SELL,T3,0\n"  # arrives .120
)
SECOND = 1_000_000
RULES = trade_rules()


def files(**named: str | bytes):
    """``open_file`` over in-memory files."""
    data = {name: text.encode() if isinstance(text, str) else text for name, text in named.items()}
    return lambda name: io.BytesIO(data[name])


def read(horizon_us: int = 0, block_bytes: int = 1 << 20, **named: str | bytes):
    result = read_trades(list(named), open_file=files(**named), precision=RULES.precision, scale=RULES.scale,
                         horizon_us=horizon_us, block_bytes=block_bytes)
    assert result.valid.schema == TRADE_SCHEMA and result.dead.schema == DEAD_SCHEMA
    assert result.records_in == result.valid.num_rows + result.dead.num_rows + result.duplicates
    return result


def reasons(result) -> dict[int, str]:
    return dict(zip(result.dead.column("line").to_pylist(), result.dead.column("reject").to_pylist()))


def codes(result) -> dict[int, str]:
    return {line: quotes.reject_code(reason) for line, reason in reasons(result).items()}


# --------------------------------------------------------------------------- schema and header


def test_trade_schema_and_its_price_rule():
    schema = load_schema("trade", 1)
    assert [f["name"] for f in schema["fields"]] == [
        "timestamp", "symbol", "price", "size", "side", "trade_id", "arrival_latency_ms"]
    assert all(f.get("doc") for f in schema["fields"])
    latency = schema["fields"][-1]
    assert latency["aliases"] == ["latency_ms"] and latency["default"] is None
    assert schema["fields"][4]["type"]["symbols"] == ["buy", "sell"]
    assert (RULES.precision, RULES.scale) == (18, 8)


def test_trade_v2_adds_the_exact_latency_in_microseconds():
    schema = load_schema("trade", 2)
    assert [f["name"] for f in schema["fields"]][-2:] == ["arrival_latency_ms", "arrival_latency_us"]
    assert schema["fields"][-1]["type"] == ["null", "long"] and schema["fields"][-1]["default"] is None


def test_a_fractional_latency_is_exact_as_for_a_quote():
    text = HEADER + "2024-01-01 00:00:00,AAPL,1,1,buy,T1,20.5\n2024-01-01 00:00:00.001,AAPL,1,1,buy,T2,0.001\n"
    rows = read(**{"t.csv": text}).valid.to_pylist()
    assert [(r["trade_id"], r["latency_us"], r["arrival_us"] - r["event_us"]) for r in rows] == [
        ("T2", 1, 1), ("T1", 20_500, 20_500)]


def test_columns_in_any_order_extra_ones_ignored_latency_optional():
    text = ("venue,trade_id,side,size,price,symbol,timestamp\n"
            "X,T9, buy ,7,1.5, AAPL ,2024-01-01 00:00:01\n")
    result = read(**{"t.csv": text})
    row = result.valid.to_pylist()[0]
    assert (row["trade_id"], row["side"], row["sign"], row["size"], row["symbol"]) == ("T9", "buy", 1, 7.0, "AAPL")
    assert row["price"] == 150_000_000 and row["latency_us"] is None
    assert row["arrival_us"] == row["event_us"] == quotes.parse_timestamp("2024-01-01 00:00:01")


@pytest.mark.parametrize("missing", ["timestamp", "symbol", "price", "size", "side", "trade_id"])
def test_a_missing_required_column_names_the_file_and_the_column(missing):
    header = ",".join(name for name in HEADER.strip().split(",") if name != missing) + "\n"
    with pytest.raises(TradeInputError, match=rf"t\.csv: trade header lacks {missing}\b"):
        read(**{"t.csv": header})
    with pytest.raises(TradeInputError, match=rf"t\.csv: trade header lacks {missing}\b"):
        check_trade_headers(["ok.csv", "t.csv"], files(**{"ok.csv": HEADER, "t.csv": header}))


def test_header_checks_pass_for_good_files_and_reject_empty_ones():
    check_trade_headers(["a.csv"], files(**{"a.csv": GOOD}))
    with pytest.raises(TradeInputError, match="empty line"):
        check_trade_headers(["e.csv"], files(**{"e.csv": ""}))
    with pytest.raises(TradeInputError, match="twice"):
        check_trade_headers(["d.csv"], files(**{"d.csv": "latency," + HEADER}))


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    "row, code",
    [
        ("not-a-time,AAPL,1,1,buy,X,0", "bad_timestamp"),
        (",AAPL,1,1,buy,X,0", "missing_timestamp"),
        ("2024-01-01 00:00:00,,1,1,buy,X,0", "missing_symbol"),
        ("2024-01-01 00:00:00,AAPL,,1,buy,X,0", "missing_price"),
        ("2024-01-01 00:00:00,AAPL,abc,1,buy,X,0", "bad_price"),
        ("2024-01-01 00:00:00,AAPL,0,1,buy,X,0", "non_positive_price"),
        ("2024-01-01 00:00:00,AAPL,-2,1,buy,X,0", "non_positive_price"),
        ("2024-01-01 00:00:00,AAPL,1.123456789,1,buy,X,0", "price_precision"),
        ("2024-01-01 00:00:00,AAPL,12345678901,1,buy,X,0", "price_range"),
        ("2024-01-01 00:00:00,AAPL,1,,buy,X,0", "missing_size"),
        ("2024-01-01 00:00:00,AAPL,1,0,buy,X,0", "non_positive_size"),
        ("2024-01-01 00:00:00,AAPL,1,-3,buy,X,0", "bad_size"),
        ("2024-01-01 00:00:00,AAPL,1,inf,buy,X,0", "bad_size"),
        ("2024-01-01 00:00:00,AAPL,1,1,,X,0", "missing_side"),
        ("2024-01-01 00:00:00,AAPL,1,1,hold,X,0", "bad_side"),
        ("2024-01-01 00:00:00,AAPL,1,1,b,X,0", "bad_side"),
        ("2024-01-01 00:00:00,AAPL,1,1,buy,,0", "missing_trade_id"),
        ("2024-01-01 00:00:00,AAPL,1,1,buy,  ,0", "missing_trade_id"),
        ("2024-01-01 00:00:00,AAPL,1,1,buy,X,-1", "bad_latency"),
        ("2024-01-01 00:00:00,AAPL,1,1,buy,X,2.5001", "bad_latency"),
        ("2024-01-01 00:00:00,AAPL,1,1,buy,X,nan", "bad_latency"),
        ("2024-01-01 00:00:00,AAPL,1,1,buy,X,", "missing_latency"),
        ("2024-01-01 00:00:00,AAPL,1,1,buy,X", "wrong_field_count"),
        ("2024-01-01 00:00:00,AAPL,1,1,buy,X,0,extra", "wrong_field_count"),
        ('2024-01-01 00:00:00,"AAPL,1,1,buy,X,0', "bad_csv"),
    ],
)
def test_each_rule_has_its_code_and_a_readable_reason(row, code):
    result = read(**{"t.csv": GOOD + row + "\n"})
    assert codes(result) == {5: code}
    reason = reasons(result)[5]
    assert reason.startswith(f"{code}: ") and len(reason) > len(code) + 5
    assert result.valid.num_rows == 3
    assert result.dead.column("raw").to_pylist() == [row]


def test_the_first_rule_broken_in_schema_order_is_the_reason():
    rows = ("not-a-time,AAPL,abc,-1,hold,,x\n"  # everything wrong: the timestamp comes first
            "2024-01-01 00:00:00,AAPL,abc,-1,hold,,x\n"
            "2024-01-01 00:00:00,AAPL,1,-1,hold,,x\n"
            "2024-01-01 00:00:00,AAPL,1,1,hold,,x\n"
            "2024-01-01 00:00:00,AAPL,1,1,buy,,x\n"
            "2024-01-01 00:00:00,AAPL,1,1,buy,T,x\n")
    result = read(**{"t.csv": HEADER + rows})
    assert codes(result) == {2: "bad_timestamp", 3: "bad_price", 4: "bad_size", 5: "bad_side",
                             6: "missing_trade_id", 7: "bad_latency"}


def test_sides_any_case_stored_lowercase_with_their_sign():
    result = read(**{"t.csv": GOOD})
    by_id = {r["trade_id"]: r for r in result.valid.to_pylist()}
    assert {i: (r["side"], r["sign"]) for i, r in by_id.items()} == {
        "T1": ("buy", 1), "T2": ("sell", -1), "T3": ("sell", -1)}


def test_quoted_fields_crlf_and_blank_lines():
    text = (HEADER + '"2024-01-01 00:00:00.100","AAPL","194.50",10,buy,"T1",5\r\n'
            "\r\n" + "2024-01-01 00:00:00.200,AAPL,194.5,10,buy,T2,5\r\n\n")
    result = read(**{"t.csv": text})
    assert result.records_in == 2 and result.dead.num_rows == 0
    assert result.valid.column("price").to_pylist() == [19_450_000_000] * 2


@pytest.mark.parametrize("body", ["", "\n\n\r\n"])
def test_a_file_without_rows_reads_as_nothing(body):
    result = read(horizon_us=SECOND, **{"t.csv": HEADER + body})
    assert (result.valid.num_rows, result.dead.num_rows, result.records_in) == (0, 0, 0)


def test_a_last_line_without_newline_is_a_row():
    result = read(**{"t.csv": GOOD.rstrip("\n")})
    assert result.valid.num_rows == 3


@pytest.mark.parametrize("block_bytes", [40, 1 << 20])
def test_block_size_and_split_path_do_not_change_the_result(block_bytes):
    from beam_pipeline.config import bundled_sample
    from beam_pipeline.devtools.samples import make_trades

    data = make_trades(bundled_sample(), 400, seed=5, malformed=True)
    reference = read(**{"t.csv": data})
    result = read(block_bytes=block_bytes, **{"t.csv": data})
    assert result.valid.equals(reference.valid) and result.dead.equals(reference.dead)
    # A quote character sends blocks to the csv module: same trades.
    quoted = data.replace(b",buy,", b',"buy",')
    assert read(block_bytes=block_bytes, **{"t.csv": quoted}).valid.equals(reference.valid)


# --------------------------------------------------------------------------- order and duplicates


def test_rows_are_in_arrival_order_across_files_ties_in_file_then_line_order():
    second = HEADER + "2024-01-01 00:00:00.105,AAPL,1,1,buy,U1,0\n2024-01-01 00:00:00.000,AAPL,1,1,buy,U2,0\n"
    result = read(**{"a.csv": GOOD, "b.csv": second})
    got = list(zip(result.valid.column("arrival_us").to_pylist(), result.valid.column("file").to_pylist(),
                   result.valid.column("line").to_pylist()))
    assert got == sorted(got)
    assert result.valid.column("trade_id").to_pylist() == ["U2", "T1", "U1", "T3", "T2"]
    t1 = [r for r in result.valid.to_pylist() if r["trade_id"] == "T1"][0]
    assert t1["arrival_us"] - t1["event_us"] == 5_000 and t1["latency_us"] == 5_000


def test_a_trade_id_seen_within_the_horizon_is_dropped_and_counted():
    text = (HEADER + "2024-01-01 00:00:00,AAPL,1,1,buy,T1,0\n"
            "2024-01-01 00:00:00.500,AAPL,2,1,buy,T1,0\n"  # a copy (ids identify trades): dropped
            "2024-01-01 00:00:01,AAPL,3,1,buy,T1,0\n")  # exactly the horizon later: kept
    result = read(horizon_us=SECOND, **{"t.csv": text})
    assert result.valid.column("price").to_pylist() == [100_000_000, 300_000_000]
    assert result.duplicates == 1
    assert read(**{"t.csv": text}).valid.num_rows == 3  # horizon 0: no deduplication


def test_a_copy_is_judged_by_arrival_not_by_file_position():
    late_copy = HEADER + "2024-01-01 00:00:00.100,AAPL,194.50,10,buy,T1,900\n"  # arrives .1 s + .9 s
    result = read(horizon_us=SECOND, **{"b.csv": late_copy, "a.csv": GOOD})
    kept = [r for r in result.valid.to_pylist() if r["trade_id"] == "T1"]
    assert [(r["file"], r["latency_us"]) for r in kept] == [(1, 5_000)]  # the earlier arrival, from the second file


def test_rejected_rows_are_deduplicated_by_their_raw_line():
    bad = "not-a-time,AAPL,1,1,buy,B2,0\n2024-01-01 00:00:00.110,AAPL,abc,1,buy,B1,0\n"
    result = read(horizon_us=SECOND, **{"t.csv": GOOD + bad + bad})
    assert sorted(result.dead.column("raw").to_pylist()) == sorted(bad.splitlines())  # one copy of each
    assert sorted(map(quotes.reject_code, result.dead.column("reject").to_pylist())) == ["bad_price", "bad_timestamp"]
    assert result.duplicates == 2
    # The row without a timestamp is placed by the row before it: after a row arriving 5 s later,
    # its copy is a new delivery. The bad price's copy has its timestamp, hence its arrival: a copy.
    far = read(horizon_us=SECOND, **{"t.csv": GOOD + bad + "2024-01-01 00:00:05,AAPL,1,1,buy,T9,0\n" + bad})
    assert codes(far) == {5: "bad_timestamp", 6: "bad_price", 8: "bad_timestamp"} and far.duplicates == 1


def test_untimed_rows_take_the_time_of_the_nearest_timed_row_before_them():
    import numpy as np

    file = np.array([0, 0, 0, 1, 1, 0, 1])
    line = np.array([2, 3, 4, 2, 3, 5, 4])
    time = np.array([10, 0, 30, 0, 50, 0, 0])
    timed = np.array([True, False, True, False, True, False, False])
    assert fill_times(file, line, time, timed).tolist() == [10, 10, 30, 0, 50, 30, 50]


def test_the_same_file_fed_twice_gives_the_rows_of_one_copy():
    text = GOOD + "2024-01-01 00:00:00.110,AAPL,abc,1,buy,B1,0\nnot-a-time,AAPL,1,1,buy,B2,0\nx,y\n\n"
    once = read(horizon_us=SECOND, **{"a.csv": text})
    twice = read(horizon_us=SECOND, **{"a.csv": text, "b.csv": text})
    assert twice.valid.equals(once.valid) and twice.dead.equals(once.dead)
    assert once.duplicates == 0 and twice.duplicates == once.records_in == 6
    assert twice.records_in == 2 * once.records_in


def test_by_symbol_keeps_arrival_order_within_each_symbol():
    result = read(**{"t.csv": GOOD})
    parts = by_symbol(result.valid)
    assert [symbol for symbol, _ in parts] == ["AAPL", "MSFT"]
    assert [b.column("trade_id").to_pylist() for _, b in parts] == [["T1", "T3"], ["T2"]]
    assert by_symbol(result.valid.slice(0, 0)) == []


# --------------------------------------------------------------------------- Beam


def test_read_trades_on_the_direct_runner_fed_twice(tmp_path):
    text = GOOD + "2024-01-01 00:00:00.110,AAPL,abc,1,buy,B1,0\nnot-a-time,MSFT,1,1,buy,B2,0\n"
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(text)
    b.write_text(text)
    sources = [str(a), str(b)]

    def summary(keyed):
        symbol, batch = keyed
        assert batch.schema == TRADE_SCHEMA
        return symbol, tuple(batch.column("trade_id").to_pylist()), tuple(batch.column("file").to_pylist())

    def dead_lines(chunk):
        for line in chunk.data.decode().splitlines():
            key, letter = line.split("\t", 1)
            letter = json.loads(letter)
            yield key, letter["source"], letter["line"], letter["raw"], quotes.reject_code(letter["reason"])

    with BeamTestPipeline() as pipeline:
        read_ = pipeline | ReadTrades(sources, precision=18, scale=8, horizon_us=SECOND)
        assert_that(read_.trades | beam.Map(summary),
                    equal_to([("AAPL", ("T1", "T3"), (0, 0)), ("MSFT", ("T2",), (0,))]), label="Trades")
        assert_that(read_.dead_letters | beam.FlatMap(dead_lines), equal_to([
            ("00000000000000000005", str(a), 5, "2024-01-01 00:00:00.110,AAPL,abc,1,buy,B1,0", "bad_price"),
            ("00000000000000000006", str(a), 6, "not-a-time,MSFT,1,1,buy,B2,0", "bad_timestamp"),
        ]), label="DeadLetters")
        assert_that(read_.counts, equal_to([{"trades_in": 10, "trades_duplicates": 5}]), label="Counts")


def test_dead_letter_chunk_takes_the_dead_rows_as_they_are():
    result = read(**{"t.csv": GOOD + "x,y\n"})
    chunk = dead_letter_chunk(0, result.dead, ("t.csv",))
    assert chunk.lines == 1 and chunk.tally == (("wrong_field_count", 1),)
    assert pa.RecordBatch.from_pylist([], schema=DEAD_SCHEMA).num_rows == 0


def test_read_trades_needs_sources():
    with pytest.raises(ValueError, match="at least one"):
        ReadTrades([], precision=18, scale=8)


def test_find_duplicates_feeds_only_repeated_keys_and_agrees_with_a_walk_of_every_row():
    rng = random.Random(5)
    keys = [f"id:{rng.randrange(300)}" if rng.random() < 0.5 else f"id:once{i}" for i in range(1000)]
    time_us = np.array([rng.randrange(0, 10_000) for _ in keys], dtype=np.int64)
    order = np.argsort(time_us, kind="stable")  # arrival order
    walk = np.zeros(len(keys), dtype=bool)
    walk[order] = Deduplicator(700).duplicates([keys[i] for i in order], time_us[order])
    got = find_duplicates(pa.array(keys), time_us, order, 700)
    assert walk.any() and not walk.all() and np.array_equal(got, walk)


# --------------------------------------------------------------------------- block by block


def stream(horizon_us: int = 0, block_bytes: int = 1 << 20, **named: str | bytes):
    tally = TradeTally()
    blocks = list(stream_trades(list(named), tally, open_file=files(**named), precision=RULES.precision,
                                scale=RULES.scale, horizon_us=horizon_us, block_bytes=block_bytes))
    return blocks, tally


def test_blocks_come_in_file_order_with_the_duplicates_named_apart():
    from beam_pipeline.config import bundled_sample
    from beam_pipeline.devtools.samples import make_trades

    data = make_trades(bundled_sample(), 300, seed=3, malformed=True)
    blocks, tally = stream(horizon_us=SECOND, block_bytes=2_000, **{"a.csv": data, "b.csv": data})
    assert len(blocks) > 4 and all(b.schema == TRADE_SCHEMA for b in blocks)
    for block in blocks:  # one block of one file, lines ascending
        assert len(set(block.column("file").to_pylist())) == 1
        assert block.column("line").to_pylist() == sorted(block.column("line").to_pylist())
    streamed = sum(b.num_rows for b in blocks)
    assert tally.dropped.schema == DROPPED_SCHEMA and tally.dropped.num_rows == streamed // 2  # the copy of each
    assert tally.valid == streamed - tally.dropped.num_rows
    whole = read(horizon_us=SECOND, **{"a.csv": data, "b.csv": data})
    left = without_rows(pa.concat_batches(blocks), tally.dropped)
    key = lambda batch: sorted(zip(batch.column("file").to_pylist(), batch.column("line").to_pylist()))  # noqa: E731
    assert key(left) == key(whole.valid)
    assert tally.dead.equals(whole.dead) and tally.counts() == whole.counts()


def test_an_untimed_row_at_a_block_start_takes_the_time_of_the_file_before_it():
    text = HEADER + "2024-01-01 00:00:00.100,AAPL,1,1,buy,T1,5\n" + "not-a-time,AAPL,1,1,buy,B1,0\n"
    layout = parse_trade_header(HEADER, "t.csv")
    lines = split_lines(text.split("\n", 1)[1].encode(), 2, layout)
    first = parse_trade_block(0, layout, lines, RULES)
    assert first.carry == 1_704_067_200_105_000 and first.dead.column("time_us").to_pylist() == [first.carry]
    alone = split_lines(b"not-a-time,AAPL,1,1,buy,B1,0\nx,y\n", 3, layout)
    assert parse_trade_block(0, layout, alone, RULES, carry=42).dead.column("time_us").to_pylist() == [42, 42]
    untimed = parse_trade_block(0, layout, alone, RULES)
    assert untimed.dead.column("time_us").to_pylist() == [0, 0] and untimed.carry is None
    assert parse_trade_block(0, layout, alone, RULES, carry=42).carry == 42  # no timed row: the carry goes on


@pytest.mark.parametrize("block_bytes", [60, 1 << 20])
def test_dead_rows_across_blocks_are_deduplicated_as_in_one_file(block_bytes):
    bad = "not-a-time,AAPL,1,1,buy,B2,0\n2024-01-01 00:00:00.110,AAPL,abc,1,buy,B1,0\n"
    far = read(horizon_us=SECOND, block_bytes=block_bytes,
               **{"t.csv": GOOD + bad + "2024-01-01 00:00:05,AAPL,1,1,buy,T9,0\n" + bad})
    assert codes(far) == {5: "bad_timestamp", 6: "bad_price", 8: "bad_timestamp"} and far.duplicates == 1


def test_ids_that_share_a_hash_are_told_apart_by_the_ids_themselves(monkeypatch):
    import transforms.trades.read as read_module

    text = (HEADER + "2024-01-01 00:00:00,AAPL,1,1,buy,T1,0\n" "2024-01-01 00:00:00.200,AAPL,2,1,buy,T2,0\n"
            "2024-01-01 00:00:00.500,AAPL,3,1,buy,T1,0\n")
    honest = read(horizon_us=SECOND, **{"t.csv": text})
    monkeypatch.setattr(read_module, "string_hashes", lambda ids: np.zeros(len(ids), dtype=np.uint64))
    colliding = read(horizon_us=SECOND, **{"t.csv": text})
    assert colliding.valid.equals(honest.valid) and colliding.duplicates == honest.duplicates == 1
    assert colliding.valid.column("trade_id").to_pylist() == ["T1", "T2"]


def test_without_rows_drops_exactly_the_named_file_and_line():
    batch = pa.RecordBatch.from_pydict({"file": pa.array([0, 0, 1, 1], pa.int32()), "line": [2, 3, 2, 3],
                                        "v": ["a", "b", "c", "d"]})
    dropped = pa.RecordBatch.from_pydict({"file": pa.array([1, 0], pa.int32()), "line": pa.array([2, 9])},
                                         schema=DROPPED_SCHEMA)
    assert without_rows(batch, dropped).column("v").to_pylist() == ["a", "b", "d"]
    assert without_rows(batch, DroppedRows(dropped)).column("v").to_pylist() == ["a", "b", "d"]
    assert without_rows(batch, pa.RecordBatch.from_pylist([], schema=DROPPED_SCHEMA)) is batch
    beyond = pa.RecordBatch.from_pydict({"file": pa.array([9], pa.int32()), "line": pa.array([99])}, schema=DROPPED_SCHEMA)
    assert without_rows(batch, beyond) is batch  # a key past every row's


def test_read_trades_by_blocks_on_the_direct_runner_names_the_copies(tmp_path):
    text = GOOD + "2024-01-01 00:00:00.110,AAPL,abc,1,buy,B1,0\n"
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(text)
    b.write_text(text)

    def rows(keyed):
        symbol, batch = keyed
        return [(symbol, f, line) for f, line in zip(batch.column("file").to_pylist(), batch.column("line").to_pylist())]

    def named(dropped):
        return sorted(zip(dropped.column("file").to_pylist(), dropped.column("line").to_pylist()))

    with BeamTestPipeline() as pipeline:
        read_ = pipeline | ReadTrades([str(a), str(b)], precision=18, scale=8, horizon_us=SECOND, blocks=True)
        every = [(s, f, n) for f in (0, 1) for s, n in (("AAPL", 2), ("MSFT", 3), ("AAPL", 4))]
        assert_that(read_.trades | beam.FlatMap(rows), equal_to(every), label="EveryTradeRead")
        assert_that(read_.dropped | beam.Map(named), equal_to([[(1, 2), (1, 3), (1, 4)]]), label="TheCopies")
        assert_that(read_.counts, equal_to([{"trades_in": 8, "trades_duplicates": 4}]), label="Counts")
