"""Batch windows in columns: a block's quotes pre-aggregated per key and time span with NumPy, spans
of many blocks merged, then fixed, sliding and session panes computed from them. Pure.

This is the batch path of :class:`transforms.windows.stage.WindowQuoteBlocks`: every quote is on
time, every window fires one ON_TIME pane, and the panes must equal those of Beam's windows and
of the plain-Python reference byte for byte (tests compare them). Row at a time, the same work
(the former quote-by-quote pre-aggregation) was three quarters of a windowed run.

A :class:`Spans` holds one key's intervals ``[start, end)`` with the statistics of their quotes,
sorted by start:

* fixed windows: one span per window with quotes (the bucket is the window);
* sliding windows: one span per bucket of :func:`~transforms.windows.logic.bucket_width` (the gcd of
  size and period), whose quotes all fall in the same windows; the windows are summed from them
  at the end;
* sessions: one span per session, ``[first quote, last quote + gap)`` to the millisecond.

Spans of different blocks overlap in time (blocks are in arrival order, not event order), so a
merge aggregates spans of equal start (fixed, sliding) or chains of overlapping spans (sessions,
Beam's ``Sessions.merge``: touching ones stay apart). ``first``/``last`` are the quotes first and
last by ``(event, file, line)``, found by lexicographic sort, never by arrival. Sums and mids are
int64 while they cannot overflow, else Python integers (object arrays): results are always exact.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.arrays import numpy, string_bytes
from transforms.quotes.columns import decimal_texts, format_timestamps, half_texts, text
from transforms.windows.logic import ANY_WINDOW, Pane, PaneStats, WindowSpec, bucket_width

#: Above this, a sum of int64 values might overflow: the values are summed as Python integers.
_SAFE = 2**62


@dataclass
class Spans:
    """One key's spans, each array one value a span, sorted by ``start``."""

    start: np.ndarray
    end: np.ndarray
    count: np.ndarray
    first_event: np.ndarray
    first_file: np.ndarray
    first_line: np.ndarray
    open2: np.ndarray
    last_event: np.ndarray
    last_file: np.ndarray
    last_line: np.ndarray
    close2: np.ndarray
    high2: np.ndarray
    low2: np.ndarray
    spread_sum: np.ndarray
    spread_max: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    def take(self, index: np.ndarray) -> "Spans":
        return Spans(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def concat(parts: list["Spans"]) -> "Spans":
        return Spans(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Spans)))


def _exact(values: np.ndarray, terms: int) -> np.ndarray:
    """``values`` as they can be summed ``terms`` at a time without overflow (object if need be)."""
    if values.dtype == object or not len(values):
        return values
    if int(np.abs(values).max()) * max(terms, 1) >= _SAFE:
        return values.astype(object)
    return values


def _sum_at(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(_exact(values, len(values)), starts)


def quote_spans(
    window: WindowSpec,
    keys: np.ndarray,
    events: np.ndarray,
    files: np.ndarray,
    lines: np.ndarray,
    bids: np.ndarray,
    asks: np.ndarray,
) -> dict[int, Spans]:
    """One block's quotes -> per key code (``keys``: an integer a quote) its :class:`Spans`.

    Quotes are grouped by key and bucket (fixed: the window; sliding: :func:`bucket_width`;
    sessions: the millisecond, then chained into the block's sessions).
    """
    if not len(events):
        return {}
    width = bucket_width(window)
    moment = events - events % 1000  # windows are assigned to the millisecond (logic.window_time)
    bucket = moment - moment % width
    order = np.lexsort((lines, files, events, bucket, keys))
    keys, bucket = keys[order], bucket[order]
    mid2 = _exact(bids[order], 2) + _exact(asks[order], 2)
    spread = _exact(asks[order], 2) - _exact(bids[order], 2)
    events, files, lines = events[order], files[order], lines[order]
    new = np.ones(len(keys), dtype=bool)
    new[1:] = (keys[1:] != keys[:-1]) | (bucket[1:] != bucket[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(keys)) - 1
    span_end = bucket[starts] + (window.size_us if window.kind == "fixed" else
                                 window.gap_us if window.kind == "session" else width)
    ones = np.ones(len(keys), dtype=np.int64)
    spans = Spans(
        bucket[starts], span_end, np.add.reduceat(ones, starts),
        events[starts], files[starts], lines[starts], mid2[starts],
        events[ends], files[ends], lines[ends], mid2[ends],
        np.maximum.reduceat(mid2, starts), np.minimum.reduceat(mid2, starts),
        _sum_at(spread, starts), np.maximum.reduceat(spread, starts),
    )
    span_keys = keys[starts]
    cuts = np.flatnonzero(span_keys[1:] != span_keys[:-1]) + 1
    result = {}
    for begin, stop in zip(np.append(0, cuts), np.append(cuts, len(span_keys))):
        part = spans.take(np.arange(begin, stop))
        result[int(span_keys[begin])] = merge_spans(window, [part]) if window.kind == "session" else part
    return result


def _aggregate(spans: Spans, group: np.ndarray) -> Spans:
    """Spans with the same ``group`` (non-decreasing) combined into one each."""
    starts = np.flatnonzero(np.append(True, group[1:] != group[:-1]))
    stops = np.append(starts[1:], len(group))
    first = np.lexsort((spans.first_line, spans.first_file, spans.first_event, group))[starts]
    last = np.lexsort((spans.last_line, spans.last_file, spans.last_event, group))[stops - 1]
    return Spans(
        np.minimum.reduceat(spans.start, starts), np.maximum.reduceat(spans.end, starts),
        np.add.reduceat(spans.count, starts),
        spans.first_event[first], spans.first_file[first], spans.first_line[first], spans.open2[first],
        spans.last_event[last], spans.last_file[last], spans.last_line[last], spans.close2[last],
        np.maximum.reduceat(spans.high2, starts), np.minimum.reduceat(spans.low2, starts),
        _sum_at(spans.spread_sum, starts), np.maximum.reduceat(spans.spread_max, starts),
    )


def merge_spans(window: WindowSpec, parts: list[Spans]) -> Spans:
    """One key's spans from any number of blocks, merged: equal starts (fixed, sliding) or
    overlapping intervals (sessions) become one span; sorted by start."""
    spans = Spans.concat(parts) if len(parts) != 1 else parts[0]
    if not len(spans):
        return spans
    spans = spans.take(np.lexsort((spans.end, spans.start)))
    if window.kind == "session":
        reach = np.maximum.accumulate(spans.end)  # a session starting at or after reach[i - 1] is apart
        group = np.cumsum(np.append(True, spans.start[1:] >= reach[:-1]))
    else:
        group = np.cumsum(np.append(True, spans.start[1:] != spans.start[:-1]))
    if group[-1] == len(spans):
        return spans
    return _aggregate(spans, group)


def _range_reduce(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, ufunc) -> np.ndarray:
    """``ufunc.reduce(values[lo[i]:hi[i]])`` for every i (``hi > lo``), with a sparse table."""
    table = [values]
    longest = int((hi - lo).max())
    while (1 << len(table)) <= longest:
        step = 1 << (len(table) - 1)
        previous = table[-1]
        table.append(ufunc(previous[:-step], previous[step:]) if len(previous) > step else previous[:0])
    level = np.zeros(len(lo), dtype=np.int64)
    length = hi - lo
    for k in range(1, len(table)):
        level[length >= (1 << k)] = k
    result = np.empty(len(lo), dtype=values.dtype)
    for k in np.unique(level).tolist():
        at = level == k
        row = table[k]
        result[at] = ufunc(row[lo[at]], row[hi[at] - (1 << k)])
    return result


def sliding_spans(window: WindowSpec, buckets: Spans) -> tuple[Spans, np.ndarray]:
    """A key's merged bucket spans -> one span per sliding window with quotes, and each window's
    home count (quotes whose earliest window it is: they are counted in no earlier pane)."""
    size, period = window.size_us, window.period_us
    b = buckets.start
    home = (b - size) - (b - size) % period + period  # the earliest window holding the bucket
    latest = b - b % period
    per = (latest - home) // period + 1
    starts = np.unique(np.repeat(home, per) + period * (np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)))
    lo = np.searchsorted(b, starts, "left")
    hi = np.searchsorted(b, starts + size, "left")
    counts = np.concatenate(([0], np.cumsum(buckets.count)))
    spreads = np.concatenate(([0], np.cumsum(_exact(buckets.spread_sum, len(buckets)))))
    home_lo = np.searchsorted(b, starts + size - period, "left")
    spans = Spans(
        starts, starts + size, counts[hi] - counts[lo],
        buckets.first_event[lo], buckets.first_file[lo], buckets.first_line[lo], buckets.open2[lo],
        buckets.last_event[hi - 1], buckets.last_file[hi - 1], buckets.last_line[hi - 1], buckets.close2[hi - 1],
        _range_reduce(buckets.high2, lo, hi, np.maximum), _range_reduce(buckets.low2, lo, hi, np.minimum),
        spreads[hi] - spreads[lo], _range_reduce(buckets.spread_max, lo, hi, np.maximum),
    )
    return spans, counts[hi] - counts[home_lo]


def panes(window: WindowSpec, key: tuple[str, str], merged: Spans) -> Iterator[Pane]:
    """The ON_TIME panes of one ``(tenant, symbol)`` key from its merged spans."""
    if window.kind == "sliding":
        return window_panes(key, *sliding_spans(window, merged))
    return window_panes(key, merged, None)


def window_panes(key: tuple[str, str], spans: Spans, home_counts: np.ndarray | None) -> Iterator[Pane]:
    """One pane per span of ``spans`` (one per window). ``home_counts``: for sliding windows, how
    many quotes each window is home to (:func:`sliding_spans`); None when every quote is in one window."""
    tenant, symbol = key
    if home_counts is not None:
        homes = [((start, n),) if n else () for start, n in zip(spans.start.tolist(), home_counts.tolist())]
    else:
        homes = [((ANY_WINDOW, n),) for n in spans.count.tolist()]
    columns = [getattr(spans, f.name).tolist() for f in fields(Spans)]
    for (start, end, count, fe, ff, fl, open2, le, lf, ll, close2, high2, low2, spread_sum, spread_max), home in zip(
        zip(*columns), homes
    ):
        stats = PaneStats(count, (fe, ff, fl), open2, (le, lf, ll), close2, high2, low2, spread_sum, spread_max, home)
        yield Pane(symbol, start, end, "ON_TIME", 0, stats, tenant)


def key_codes(tenants: pa.Array, symbols: pa.Array) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Per quote an integer code of its ``(tenant, symbol)``, and the key each code stands for."""
    tenant_codes, symbol_codes = pc.dictionary_encode(tenants), pc.dictionary_encode(symbols)
    width = len(symbol_codes.dictionary)
    codes = numpy(tenant_codes.indices).astype(np.int64) * width + numpy(symbol_codes.indices)
    names, symbol_names = tenant_codes.dictionary.to_pylist(), symbol_codes.dictionary.to_pylist()
    return codes, [(names[code // width], symbol_names[code % width]) for code in range(len(names) * width)]


@dataclass
class PaneLines:
    """One key's ``windows.jsonl`` lines (ON_TIME panes, in window order) and what sorts and counts them.

    What the batch path moves between stages instead of :class:`Pane` objects: arrays and bytes
    pickle at memory speed, where 60,000 pickled panes took 0.9 s per stage boundary.
    """

    tenant: str
    symbol: str
    starts: np.ndarray
    ends: np.ndarray
    offsets: np.ndarray  # line i is data[offsets[i]:offsets[i + 1]]
    data: bytes
    quotes_in_panes: int

    @staticmethod
    def from_lines(key: tuple[str, str], starts: np.ndarray, ends: np.ndarray, lines: pa.Array,
                   quotes_in_panes: int) -> "PaneLines":
        """From a string column of ``\\n``-terminated lines."""
        offsets, data = string_bytes(lines)
        return PaneLines(key[0], key[1], starts, ends, offsets, data, quotes_in_panes)

    @staticmethod
    def of(key: tuple[str, str], panes_: list[Pane], line) -> "PaneLines":
        """``line(pane)``: a pane's line without its newline (:func:`transforms.windows.format.pane_json`)."""
        encoded = [(line(pane) + "\n").encode("utf-8") for pane in panes_]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(text) for text in encoded], out=offsets[1:])
        return PaneLines(key[0], key[1], np.array([p.start_us for p in panes_], dtype=np.int64),
                         np.array([p.end_us for p in panes_], dtype=np.int64), offsets, b"".join(encoded),
                         sum(pane.home_count for pane in panes_))

    def __len__(self) -> int:
        return len(self.starts)


def joined_pane_lines(parts: list[PaneLines]) -> bytes:
    """All parts' lines in ``windows.jsonl`` order: window start, end, tenant, symbol
    (:func:`transforms.windows.format.pane_sort_key` of ON_TIME panes)."""
    parts = sorted(parts, key=lambda part: (part.tenant, part.symbol))  # rank = position: tenant, then symbol
    if not parts:
        return b""
    rank = np.concatenate([np.full(len(part), index) for index, part in enumerate(parts)])
    row = np.concatenate([np.arange(len(part)) for part in parts])
    order = np.lexsort((rank, np.concatenate([p.ends for p in parts]), np.concatenate([p.starts for p in parts])))
    views = [memoryview(part.data) for part in parts]
    offsets = [part.offsets.tolist() for part in parts]
    return b"".join(views[r][offsets[r][i]:offsets[r][i + 1]] for r, i in zip(rank[order].tolist(),
                                                                                 row[order].tolist()))


def _iso_texts(micros: np.ndarray) -> pa.Array:
    """:func:`transforms.windows.format.iso_utc` of a column."""
    return pc.binary_join_element_wise(pc.replace_substring(format_timestamps(micros), " ", "T"), text("Z"), text(""))


def _mean_texts(total: np.ndarray, count: np.ndarray, scale: int, extra_digits: int = 2) -> pa.Array:
    """:func:`transforms.windows.format.mean_text` of columns (half to even, exact)."""
    quotient, remainder = np.divmod(total * 10**extra_digits, count)
    quotient += (2 * remainder > count) | ((2 * remainder == count) & (quotient % 2 == 1))
    return decimal_texts(quotient, scale + extra_digits)


def pane_line_texts(key: tuple[str, str], spans: Spans, scale: int) -> pa.Array | None:
    """The ``windows.jsonl`` lines (``\\n``-terminated) of a key's ON_TIME panes, one per span, in
    columns: :func:`transforms.windows.format.pane_json` for each, the same bytes. None when a value
    is too large for int64 arithmetic (the caller formats pane by pane then)."""
    values = (spans.open2, spans.high2, spans.low2, spans.close2, spans.spread_sum, spans.spread_max)
    if any(v.dtype == object for v in values) or int(spans.spread_sum.max()) >= _SAFE // 10**2:
        return None
    tenant, symbol = key
    quote = json.encoder.encode_basestring_ascii
    half = functools.partial(half_texts, scale=scale)
    parts = [
        text(f'{{"tenant": {quote(tenant)}, "symbol": {quote(symbol)}, "window_start": "'), _iso_texts(spans.start),
        text('", "window_end": "'), _iso_texts(spans.end),
        text('", "timing": "ON_TIME", "pane_index": 0, "count": '), pc.cast(pa.array(spans.count), pa.string()),
        text(', "open": '), half(spans.open2), text(', "high": '), half(spans.high2),
        text(', "low": '), half(spans.low2), text(', "close": '), half(spans.close2),
        text(', "mean_spread": '), _mean_texts(spans.spread_sum, spans.count, scale),
        text(', "max_spread": '), decimal_texts(spans.spread_max, scale),
        text(', "first_quote": "'), _iso_texts(spans.first_event), text('", "last_quote": "'),
        _iso_texts(spans.last_event), text('"}\n'),
    ]
    return pc.binary_join_element_wise(*parts, text(""))


def pane_lines(window: WindowSpec, key: tuple[str, str], merged: Spans, scale: int, line) -> PaneLines:
    """A key's :class:`PaneLines` from its merged spans; ``line`` formats one pane when the columnar
    path cannot (:func:`pane_line_texts`)."""
    if window.kind == "sliding":
        spans, home_counts = sliding_spans(window, merged)
        in_panes = int(home_counts.sum())
    else:
        spans, home_counts, in_panes = merged, None, int(merged.count.sum())
    texts = pane_line_texts(key, spans, scale) if len(spans) else None
    if texts is None:
        return PaneLines.of(key, list(window_panes(key, spans, home_counts)), line)
    return PaneLines.from_lines(key, spans.start, spans.end, texts, in_panes)
