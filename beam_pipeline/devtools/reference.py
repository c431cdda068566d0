"""The whole quotes contract in plain Python, one row at a time: no Beam, no Arrow.

This is the baseline the benchmark measures the pipeline against, and the oracle the tests
compare the pipeline's files with. It reads each file with the ``csv`` module, applies the
row-level rules of :mod:`transforms.quotes.rules`, orders rows with a heap (memory bounded by the
largest latency, as in the pipeline), and writes the same three files. With a window it also
writes the batch ``windows.jsonl`` (every quote on time: one ON_TIME pane per window and symbol,
sessions merged by hand) and an empty ``late.jsonl``.

    python -m beam_pipeline.devtools.reference --input quotes.csv --output_dir out/ [--window fixed:1s]
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from transforms.quotes import rules
from transforms.quotes.rules import PriceRule, Rejected
from transforms.sources.arrival import ALL_READ, NOTHING_READ, RowArrivalHeap, out_of_order_reason
from transforms.sources.csv_blocks import RejectedLine, read_header, split_line
from transforms.sources.watermarks import watermarks_in_force
from transforms.windows.format import pane_json, pane_sort_key
from transforms.windows.logic import (
    ANY_WINDOW,
    Pane,
    PaneQuote,
    PaneStats,
    WindowConfig,
    WindowSpec,
    add_quote,
    is_expired,
    parse_window,
    window_time,
)

PRICES = PriceRule(precision=18, scale=8)  # schemas/quote.v1.avsc; tests check they agree


@dataclass
class Counts:
    records_in: int = 0
    mid_prices: int = 0
    latency_filtered: int = 0
    dead_lettered: int = 0
    blank_lines: int = 0
    dead_letters: list[list[str]] = field(default_factory=list)


def _records(path: str, index: int, default_symbol: str, counts: Counts) -> Iterator[tuple[int, dict, str]]:
    """Yield ``(line, fields, raw)`` per well-formed record; dead-letter the others."""
    dead = counts.dead_letters[index]
    with open(path, "rb") as stream:
        layout = read_header(stream, path)
        positions = list(layout.positions.items())
        for line, chunk in enumerate(stream, start=2):
            try:
                split = split_line(chunk[:-1] if chunk.endswith(b"\n") else chunk, layout.width)
            except RejectedLine as rejected:
                counts.records_in += 1
                dead.append(rules.dead_letter_json(path, line, rejected.raw, rejected.reason))
                continue
            if split is None:
                counts.blank_lines += 1
                continue
            counts.records_in += 1
            text, row = split
            fields = {name: row[position] for name, position in positions}
            fields.setdefault("symbol", default_symbol)
            yield line, fields, text


def _arrival_ordered(path: str, index: int, default_symbol: str, counts: Counts,
                     with_rejected: bool = False) -> Iterator[tuple]:
    """One file's valid quotes as ``(arrival, file, line, quote)``, in arrival order; ``with_rejected``:
    also the rows with a readable arrival that the quote rules reject, with ``None`` for the quote
    (they still move a streaming source's watermark)."""
    dead = counts.dead_letters[index]
    heap = RowArrivalHeap()
    newest = NOTHING_READ
    for line, fields, raw in _records(path, index, default_symbol, counts):
        try:
            event_us = rules.parse_timestamp(fields["timestamp"])
            latency = fields.get("latency_ms")
            latency = None if latency is None else rules.parse_latency_us(latency)
            arrival = rules.arrival_micros(event_us, latency)
            if arrival < newest:
                dead.append(rules.dead_letter_json(path, line, raw, out_of_order_reason(arrival, newest)))
                continue
            newest = max(newest, event_us)
        except Rejected as rejected:
            dead.append(rules.dead_letter_json(path, line, raw, rejected.reason))
            continue
        try:
            symbol, bid, ask, bid_size, ask_size, tenant = rules.parse_content(fields, PRICES)
        except Rejected as rejected:
            dead.append(rules.dead_letter_json(path, line, raw, rejected.reason))
            if with_rejected:
                heap.push(arrival, index, line, (arrival, line, None))
        else:
            quote = rules.Quote(event_us, symbol, bid, ask, bid_size, ask_size, latency, tenant)
            heap.push(arrival, index, line, (arrival, line, quote))
        for arrival_of, line_of, ready in heap.pop_before(newest):
            yield arrival_of, index, line_of, ready
    for arrival_of, line_of, ready in heap.pop_before(ALL_READ):
        yield arrival_of, index, line_of, ready


def batch_panes(quoted: Sequence[tuple[int, int, rules.Quote]], window: WindowSpec) -> list[Pane]:
    """Every window's one on-time pane, from ``(file, line, quote)`` s, without Beam.

    Fixed and sliding windows by arithmetic on the timestamp; sessions by sorting each (tenant, symbol)'s
    quotes by time (to the millisecond, as windows are) and starting a new session where the
    gap to the session's last quote is reached.
    """
    stats: dict[tuple[tuple[str, str], int, int], PaneStats] = {}

    def add(key: tuple[str, str], start: int, end: int, file: int, line: int, quote: rules.Quote, home: int) -> None:
        item = PaneQuote(quote.event_us, file, line, quote.bid + quote.ask, quote.ask - quote.bid, home)
        stats[(key, start, end)] = add_quote(stats.get((key, start, end)), item)

    if window.kind != "session":
        for file, line, quote in quoted:
            windows = window.windows(quote.event_us)
            home = windows[-1][0] if window.kind == "sliding" else ANY_WINDOW
            for start, end in windows:
                add((quote.tenant, quote.symbol), start, end, file, line, quote, home)
    else:
        by_key: dict[tuple[str, str], list[tuple[int, int, int, rules.Quote]]] = {}
        for file, line, quote in quoted:
            by_key.setdefault((quote.tenant, quote.symbol), []).append((window_time(quote.event_us), file, line, quote))
        for key, items in by_key.items():
            items.sort()
            session: list[tuple[int, int, int, rules.Quote]] = []
            for item in [*items, None]:
                if session and (item is None or item[0] >= session[-1][0] + window.gap_us):
                    start, end = session[0][0], max(i[0] for i in session) + window.gap_us
                    for _, file, line, quote in session:
                        add(key, start, end, file, line, quote, ANY_WINDOW)
                    session = []
                if item is not None:
                    session.append(item)
    panes = [
        Pane(symbol, start, end, "ON_TIME", 0, pane, tenant) for ((tenant, symbol), start, end), pane in stats.items()
    ]
    return sorted(panes, key=pane_sort_key)


@dataclass
class StreamOutcome:
    """What a streaming run with real watermarks gives, by the rule of
    :mod:`transforms.sources.watermarks` (fixed windows): the ON_TIME panes in full, how many quotes
    each window's LATE panes hold (a runner may fire late quotes of one bundle as one pane or several),
    and the quotes past allowed lateness, as ``(file, line)`` in arrival order."""

    on_time: list[Pane]
    late_counts: dict[tuple[str, str, int], int]  # (tenant, symbol, window start) -> quotes
    dropped: list[tuple[int, int]]


def stream_outcome(
    sources: Sequence[str],
    config: WindowConfig,
    lag_us: int | float,
    interval_us: int,
    default_symbol: str = "UNKNOWN",
) -> StreamOutcome:
    """The reference of a streaming replay on a runner with real watermarks, one row at a time."""
    if config.window.kind != "fixed":
        raise ValueError("the streaming reference computes fixed windows only")
    counts = Counts(dead_letters=[[] for _ in sources])
    streams = [_arrival_ordered(path, i, default_symbol, counts, with_rejected=True) for i, path in enumerate(sources)]
    rows = list(heapq.merge(*streams, key=lambda item: item[:2]))
    marks = watermarks_in_force([arrival for arrival, *_ in rows], interval_us, lag_us)
    on_time: list[tuple[int, int, rules.Quote]] = []
    late: dict[tuple[str, str, int], int] = {}
    dropped: list[tuple[int, int]] = []
    for (_arrival, file, line, quote), mark in zip(rows, marks):
        if quote is None:
            continue
        ((start, end),) = config.window.windows(quote.event_us)
        if is_expired(end, mark, config.allowed_lateness_us):
            dropped.append((file, line))
        elif mark is not None and mark >= end:  # the window fired on time before this quote came
            key = (quote.tenant, quote.symbol, start)
            late[key] = late.get(key, 0) + 1
        else:
            on_time.append((file, line, quote))
    return StreamOutcome(batch_panes(on_time, config.window), late, dropped)


def run_reference(
    sources: Sequence[str],
    output_dir: str,
    latency_threshold_ms: int = 20,
    default_symbol: str = "UNKNOWN",
    window: WindowSpec | None = None,
) -> Counts:
    """Write ``mid_prices.log``, ``errors.log`` and ``dead_letter.jsonl`` for ``sources`` (and, with
    a window, the batch ``windows.jsonl`` and ``late.jsonl``)."""
    os.makedirs(output_dir, exist_ok=True)
    counts = Counts(dead_letters=[[] for _ in sources])
    quoted: list[tuple[int, int, rules.Quote]] = []
    streams = [_arrival_ordered(path, i, default_symbol, counts) for i, path in enumerate(sources)]
    with open(os.path.join(output_dir, "mid_prices.log"), "w", encoding="utf-8") as mids, open(
        os.path.join(output_dir, "errors.log"), "w", encoding="utf-8"
    ) as errors:
        # Each file's stream is in (arrival, line) order; merging by (arrival, file) keeps ties in file order.
        for _arrival, file, line, quote in heapq.merge(*streams, key=lambda item: item[:2]):
            if window is not None:
                quoted.append((file, line, quote))
            stamp = rules.format_timestamp(quote.event_us)
            if rules.is_over_threshold(quote.latency_us, latency_threshold_ms):
                errors.write(rules.latency_error_line(stamp, quote.latency_us, latency_threshold_ms) + "\n")
                counts.latency_filtered += 1
            else:
                mids.write(rules.mid_line(stamp, rules.mid_text(quote.bid, quote.ask, PRICES.scale)) + "\n")
                counts.mid_prices += 1
    with open(os.path.join(output_dir, "dead_letter.jsonl"), "w", encoding="utf-8") as dead:
        for per_file in counts.dead_letters:
            dead.writelines(line + "\n" for line in per_file)
            counts.dead_lettered += len(per_file)
    if window is not None:
        with open(os.path.join(output_dir, "windows.jsonl"), "w", encoding="utf-8") as out:
            out.writelines(pane_json(pane, PRICES.scale) + "\n" for pane in batch_panes(quoted, window))
        open(os.path.join(output_dir, "late.jsonl"), "w", encoding="utf-8").close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.devtools.reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="CSV files, in tie-break order")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--latency_threshold_ms", type=int, default=20)
    parser.add_argument("--symbol", default="UNKNOWN")
    parser.add_argument("--window", default=None, help="also write the batch windows.jsonl, e.g. fixed:1s")
    args = parser.parse_args(argv)
    window = parse_window(args.window) if args.window else None
    counts = run_reference(args.input, args.output_dir, args.latency_threshold_ms, args.symbol, window)
    print(
        f"records_in={counts.records_in} mid_prices={counts.mid_prices} "
        f"latency_filtered={counts.latency_filtered} dead_lettered={counts.dead_lettered}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
