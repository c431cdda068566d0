"""JoinTradesWithMid: the batch CoGroupByKey join, and the streaming join on state and watermark timers.

Streaming pipelines run on the BundleBasedDirectRunner with ``streaming=True`` (the local runner
that plays a ``TestStream`` with its watermarks). Every element of a stream is its own TestStream
event, stamped with its event time. Their assertions are on the outputs only: that runner loses
the counters of all but the first bundles of a TestStream step here, so the counters are checked
on the batch runs. Expected joins come from :func:`oracle`, a row-by-row as-of
search written here independently of ``transforms.trades.asof``, or are spelled out literally.
"""

from __future__ import annotations

import random

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing import test_pipeline, test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from transforms.trades import market
from transforms.trades.stage import JoinTradesWithMid, QuotePoints

T0 = 1_717_398_000_000_000  # 2024-06-03 07:00:00 UTC
MS = 1_000
S = 1_000_000
SCALE = 2
END_MS = 3_600_000  # an hour after T0: past every trade's deadline in these tests


# --------------------------------------------------------------------------- rows and oracle


def quote(line: int, at_ms: int, bid: int, ask: int, arrival_ms: int | None = None, file: int = 0) -> dict:
    return dict(
        event_us=T0 + at_ms * MS,
        arrival_us=T0 + (at_ms if arrival_ms is None else arrival_ms) * MS,
        file=file,
        line=line,
        timestamp=f"q{line}",
        bid=bid,
        ask=ask,
    )


def trade(line: int, at_ms: int, price: int, symbol: str = "AAPL", file: int = 0) -> dict:
    return dict(
        file=file,
        line=line,
        timestamp=f"t{line}",
        event_us=T0 + at_ms * MS,
        arrival_us=T0 + at_ms * MS,
        latency_us=None,
        symbol=symbol,
        price=price,
        size=1.0,
        side="buy",
        sign=1,
        trade_id=f"{symbol}-{file}-{line}",
    )


def quote_batch(*rows: dict) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(list(rows), schema=market.QUOTE_POINT_SCHEMA)


def trade_batch(*rows: dict) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(list(rows), schema=market.TRADE_SCHEMA)


def oracle(quotes: dict[str, list[dict]], trades: list[dict], max_age_us: int) -> tuple[set, set]:
    """``({(trade_id, quote line)}, {(trade_id, reason)})`` by a plain search over every quote."""
    enriched, unmatched = set(), set()
    for t in trades:
        before = [q for q in quotes.get(t["symbol"], []) if q["event_us"] <= t["event_us"]]
        if not before:
            unmatched.add((t["trade_id"], market.NO_QUOTE))
            continue
        latest = max(before, key=lambda q: (q["event_us"], q["arrival_us"], q["file"], q["line"]))
        if t["event_us"] - latest["event_us"] <= max_age_us:
            enriched.add((t["trade_id"], latest["line"]))
        else:
            unmatched.add((t["trade_id"], market.STALE_QUOTE))
    return enriched, unmatched


def enriched_pairs(keyed):
    symbol, rb = keyed
    assert all(s == symbol for s in rb.column("symbol").to_pylist())
    return [(row["trade_id"], int(row["quote_timestamp"][1:])) for row in rb.to_pylist()]  # "q<line>"


def unmatched_pairs(keyed):
    return [(row["trade_id"], row["reason"]) for row in keyed[1].to_pylist()]


def counter(result, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in found)


def join_outputs(p, joined, expected_enriched, expected_unmatched, label=""):
    assert_that(
        joined["enriched"] | f"E{label}" >> beam.FlatMap(enriched_pairs),
        equal_to(sorted(expected_enriched)),
        label=f"enriched{label}",
    )
    assert_that(
        joined["unmatched"] | f"U{label}" >> beam.FlatMap(unmatched_pairs),
        equal_to(sorted(expected_unmatched)),
        label=f"unmatched{label}",
    )


# --------------------------------------------------------------------------- batch


def random_market(seed: int, symbols=("AAPL", "MSFT", "EURUSD"), quotes_per=40, trades_per=30, span_ms=5_000):
    rng = random.Random(seed)
    quotes, trades = {}, []
    line = 0
    for symbol in symbols:
        rows = []
        for _ in range(quotes_per):
            line += 1
            at = rng.randrange(0, span_ms, 50)  # a coarse grid: many quotes share a time
            rows.append(quote(line, at, 10_000 + rng.randrange(100), 10_100 + rng.randrange(100),
                              arrival_ms=at + rng.randrange(0, 40), file=rng.randrange(2)))
        quotes[symbol] = rows
    for symbol in symbols + ("NOQUOTES",):
        for _ in range(trades_per):
            line += 1
            trades.append(trade(line, rng.randrange(-200, span_ms + 500, 25), 10_050 + rng.randrange(80),
                                symbol=symbol, file=rng.randrange(2)))
    return quotes, trades


def chunks(rows: list[dict], size: int) -> list[list[dict]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def test_batch_join_matches_the_oracle_with_one_element_per_symbol():
    max_age = 300 * MS
    quotes, trades = random_market(7)
    expected_enriched, expected_unmatched = oracle(quotes, trades, max_age)
    assert {reason for _, reason in expected_unmatched} == {market.NO_QUOTE, market.STALE_QUOTE}
    assert len(expected_enriched) > 30
    quote_elements = [(s, quote_batch(*part)) for s, rows in quotes.items() for part in chunks(rows, 7)]
    trade_elements = [(t["symbol"], trade_batch(*part)) for part in chunks(trades, 1) for t in part[:1]]
    random.Random(1).shuffle(trade_elements)
    p = test_pipeline.TestPipeline()
    joined = {
        "quotes": p | "Q" >> beam.Create(quote_elements),
        "trades": p | "T" >> beam.Create(trade_elements),
    } | JoinTradesWithMid(max_age, scale=SCALE)
    join_outputs(p, joined, expected_enriched, expected_unmatched)
    # One output element per symbol (never one per row), in (event_us, file, line) order.
    per_symbol = joined["enriched"] | "Sizes" >> beam.MapTuple(
        lambda s, rb: (s, rb.column("event_us").to_pylist() == sorted(rb.column("event_us").to_pylist()))
    )
    assert_that(per_symbol, equal_to([("AAPL", True), ("MSFT", True), ("EURUSD", True)]), label="one per symbol")
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "trades_joined") == len(expected_enriched)
    assert counter(result, "trades_unmatched") == len(expected_unmatched)


def test_batch_join_of_a_symbol_without_trades_or_quotes():
    p = test_pipeline.TestPipeline()
    joined = {
        "quotes": p | "Q" >> beam.Create([("AAPL", quote_batch(quote(1, 0, 100, 102)))]),
        "trades": p | "T" >> beam.Create([("MSFT", trade_batch(trade(2, 10, 100, "MSFT")))]),
    } | JoinTradesWithMid(S, scale=SCALE)
    join_outputs(p, joined, [], [("MSFT-0-2", market.NO_QUOTE)])
    p.run().wait_until_finish()


# --------------------------------------------------------------------------- streaming


class Stream:
    """A TestStream of ("quotes" | "trades", symbol, batch), each element its own event."""

    def __init__(self):
        self.stream = test_stream.TestStream()

    def quotes(self, symbol: str, *rows: dict) -> None:
        self._add("quotes", symbol, quote_batch(*rows), min(r["event_us"] for r in rows))

    def trades(self, *rows: dict) -> None:
        self._add("trades", rows[0]["symbol"], trade_batch(*rows), min(r["event_us"] for r in rows))

    def _add(self, side: str, symbol: str, rb: pa.RecordBatch, event_us: int) -> None:
        self.stream.add_elements([window.TimestampedValue((side, symbol, rb), Timestamp(micros=event_us))])

    def watermark_to(self, at_ms: int) -> None:
        self.stream.advance_watermark_to(Timestamp(micros=T0 + at_ms * MS))


def run_stream(stream: Stream, expected_enriched, expected_unmatched, *, max_age_us: int, lateness_us: int,
               check=None):
    p = beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions(streaming=True))
    # The BundleBasedDirectRunner does not hold the watermark for user timers (see the TODO in
    # apache_beam/runners/direct/direct_userstate.py): what a timer emits only when the watermark
    # jumps to infinity would reach assert_that after its window closed. So the watermark first
    # goes to a finite time past every deadline, where the timers fire and their outputs count.
    stream.watermark_to(END_MS)
    events = p | stream.stream.advance_watermark_to_infinity()
    inputs = {
        side: events | side >> beam.FlatMap(lambda e, side=side: [(e[1], e[2])] if e[0] == side else [])
        for side in ("quotes", "trades")
    }
    joined = inputs | JoinTradesWithMid(max_age_us, scale=SCALE, streaming=True, allowed_lateness_us=lateness_us)
    join_outputs(p, joined, expected_enriched, expected_unmatched)
    if check is not None:
        check(joined)
    p.run().wait_until_finish()


def test_a_late_quote_within_the_allowed_lateness_is_the_one_used():
    # The trade at 1000 ms is held until the watermark passes 1000 + 500 ms. q2 (950 ms) arrives
    # after the trade and behind the watermark (1100 ms), but within the lateness: it is the
    # trade's as-of quote. A timer at the trade's own time would fire at watermark 1100, before q2
    # arrives, and join q1 instead.
    s = Stream()
    s.watermark_to(0)
    s.quotes("AAPL", quote(1, 100, 100, 102))
    s.watermark_to(500)
    s.trades(trade(10, 1000, 101))
    s.watermark_to(1100)
    s.quotes("AAPL", quote(2, 950, 104, 106))
    s.watermark_to(1400)
    run_stream(s, [("AAPL-0-10", 2)], [], max_age_us=S, lateness_us=500 * MS)


def test_a_quote_after_the_join_closed_is_not_used():
    # The same late quote, but the watermark has passed 1500 ms (trade + lateness): the trade was
    # joined with q1 already; q2 (a late quote) changes nothing. A join that waited for the end
    # of the stream (or never closed) would use q2.
    s = Stream()
    s.watermark_to(0)
    s.quotes("AAPL", quote(1, 100, 100, 102))
    s.watermark_to(500)
    s.trades(trade(10, 1000, 101))
    s.watermark_to(1600)
    s.quotes("AAPL", quote(2, 950, 104, 106))
    run_stream(s, [("AAPL-0-10", 1)], [], max_age_us=S, lateness_us=500 * MS)


def test_without_the_earlier_quote_the_trade_closes_unmatched():
    s = Stream()
    s.watermark_to(0)
    s.quotes("AAPL", quote(1, 2000, 100, 102))  # after the trade: never its quote
    s.trades(trade(10, 1000, 101))
    s.watermark_to(1600)
    s.quotes("AAPL", quote(2, 950, 104, 106))  # too late
    run_stream(s, [], [("AAPL-0-10", market.NO_QUOTE)], max_age_us=S, lateness_us=500 * MS)


def test_a_late_trade_goes_to_unmatched_with_late_trade():
    # t1's join closes at 1500 ms. t2 (900 ms) arrives afterwards: its deadline (1400 ms) is
    # already closed, so it is not joined, although q1 (800 ms before it) would match it.
    s = Stream()
    s.watermark_to(0)
    s.quotes("AAPL", quote(1, 100, 100, 102))
    s.trades(trade(10, 1000, 101))
    s.watermark_to(2000)
    s.trades(trade(11, 900, 101), trade(12, 1800, 101))  # one element: a late row and an on-time one

    def late_detail(joined):
        details = joined["unmatched"] | beam.FlatMap(lambda kv: kv[1].column("detail").to_pylist())
        assert_that(details, equal_to([
            "the trade arrived after its join closed at 2024-06-03 07:00:01.500 (allowed lateness 0.5s)",
            "latest quote 1.7s before the trade, more than --max_quote_age 1s",
        ]), label="detail")

    run_stream(
        s, [("AAPL-0-10", 1)], [("AAPL-0-11", market.LATE_TRADE), ("AAPL-0-12", market.STALE_QUOTE)],
        max_age_us=S, lateness_us=500 * MS, check=late_detail,
    )


def test_a_shuffled_stream_within_the_lateness_gives_the_batch_join():
    lateness_ms, max_age = 300, 200 * MS
    quotes, trades = random_market(11, quotes_per=16, trades_per=12, span_ms=2_000)
    rng = random.Random(5)
    items = [("quotes", s, q) for s, rows in quotes.items() for q in rows] + [("trades", t["symbol"], t) for t in trades]
    # Each element arrives up to the lateness after its event time (many behind the watermark),
    # and the watermark trails the arrivals by 1 ms: nothing is later than the allowed lateness.
    arrivals = sorted(((row["event_us"] - T0) // MS + rng.randrange(lateness_ms), n, item)
                      for n, item in enumerate(items) for row in [item[2]])
    s = Stream()
    watermark = -10_000
    behind = 0
    i = 0
    while i < len(arrivals):
        arrival, _, (side, symbol, row) = arrivals[i]
        group = [row]
        # Sometimes several consecutive rows of one symbol and side travel as one element.
        while i + 1 < len(arrivals) and rng.random() < 0.3 and arrivals[i + 1][2][:2] == (side, symbol):
            i += 1
            group.append(arrivals[i][2][2])
        i += 1
        if arrival - 1 > watermark:
            watermark = arrival - 1
            s.watermark_to(watermark)
        behind += sum(r["event_us"] < T0 + watermark * MS for r in group)
        if side == "quotes":
            s.quotes(symbol, *group)
        else:
            s.trades(*group)
    assert behind > 20  # the lateness is really exercised
    expected_enriched, expected_unmatched = oracle(quotes, trades, max_age)
    assert len(expected_enriched) > 10 and len(expected_unmatched) > 10
    run_stream(s, expected_enriched, expected_unmatched, max_age_us=max_age, lateness_us=lateness_ms * MS)


def test_streaming_quotes_of_a_symbol_without_trades_are_collected():
    # Not observable from the outputs: the state of a symbol that only quotes stays small. A GC
    # timer fires and trades that come after it and are within the lateness are still right.
    s = Stream()
    s.watermark_to(0)
    for n in range(20):
        s.quotes("AAPL", quote(n + 1, n * 1000, 100 + n, 102 + n))
        s.watermark_to(n * 1000 + 1)
    # t101 is joined (stale) when the watermark passes 30.5 s, and the quotes before 29 s are
    # dropped then, all but the latest (19 s): t102 still sees it, and is stale, not no_quote.
    s.trades(trade(100, 19_500, 101), trade(101, 30_000, 101), trade(102, 40_000, 101))
    run_stream(
        s, [("AAPL-0-100", 20)], [("AAPL-0-101", market.STALE_QUOTE), ("AAPL-0-102", market.STALE_QUOTE)],
        max_age_us=S, lateness_us=500 * MS,
    )


def test_quote_points_keep_the_block_timestamp_and_split_by_symbol():
    from transforms.blocks import QuoteBlock
    from transforms.quotes.normalize import VALID_SCHEMA
    from transforms.quotes.rules import HISTORICAL

    rows = [dict(file=0, line=n, timestamp=f"v{n}", event_us=T0 + n, arrival_us=T0 + n, latency_us=latency * 1000,
                 symbol=symbol, bid=1, ask=2, bid_size=None, ask_size=None, mode=HISTORICAL, tenant="default")
            for n, symbol, latency in ((1, "B", 5), (2, "A", 500), (3, "A", 5))]
    block = QuoteBlock(0, pa.RecordBatch.from_pylist(rows, schema=VALID_SCHEMA), ("f",))

    class Stamp(beam.DoFn):
        def process(self, element, ts=beam.DoFn.TimestampParam):
            yield element[0], element[1].column("line").to_pylist(), ts.micros

    p = test_pipeline.TestPipeline()
    points = (p | beam.Create([window.TimestampedValue(block, Timestamp(micros=T0 + 7))])
              | QuotePoints(latency_threshold_ms=100) | beam.ParDo(Stamp()))
    assert_that(points, equal_to([("A", [3], T0 + 7), ("B", [1], T0 + 7)]))
    p.run().wait_until_finish()
