"""Per-symbol sliding-window features (``--features sliding:SIZE,PERIOD``, e.g. ``sliding:10s,1s``).

Windows follow Beam's ``SlidingWindows(size, period, offset=0)``: window starts are multiples of
the period (aligned to the epoch), a window is ``[start, start + size)``, and an element at event
time ``t`` belongs to every window with ``start <= t < start + size`` (``size / period`` of them;
the size must be a multiple of the period). A symbol's window is emitted when it holds at least one
quote or one trade. Times are event times (``event_us``), microseconds since the epoch, UTC.

Per window of one symbol (the columns of :data:`transforms.trades.market.FEATURE_SCHEMA`):

Quotes are the :data:`~transforms.trades.market.QUOTE_POINT_SCHEMA` rows (valid quotes that made a mid
price) in the window, ordered by ``(event_us, arrival_us, file, line)``. With ``mid = (bid + ask) /
2 / 10**scale`` and ``spread = (ask - bid) / 10**scale``:

* ``quotes``: how many;
* ``mid_log_return``: ``ln(last mid / first mid)``; 0.0 with one quote, null with none;
* ``realized_vol``: ``sqrt(sum of ln(mid_i / mid_{i-1})**2)`` over the pairs of quotes that are
  consecutive in the symbol's order and *both* in the window; 0.0 with one quote, null with none;
* ``mean_spread`` / ``max_spread``: mean and maximum of ``spread``, in price units;
* ``mean_spread_bps``: mean of ``(ask - bid) / ((bid + ask) / 2) * 1e4``.

Trades are every trade of the symbol in the window, joined (:data:`~transforms.trades.market.ENRICHED_SCHEMA`)
or not (:data:`~transforms.trades.market.UNMATCHED_SCHEMA`); both start with the columns of
:data:`~transforms.trades.market.TRADE_SCHEMA`. With ``price = price / 10**scale`` (a null size counts
as 0: the trade is counted, it adds no volume):

* ``trades``: how many;
* ``volume``: sum of ``size``; ``buy_volume`` / ``sell_volume``: the same over ``sign`` +1 / -1;
* ``imbalance``: ``(buy_volume - sell_volume) / (buy_volume + sell_volume)``, null when volume is 0;
* ``vwap``: ``sum(price * size) / sum(size)``, null when volume is 0;
* ``mean_effective_spread_bps``: mean of the joined trades' ``effective_spread_bps`` (nulls
  skipped), null when the window has none.

Quote features are null in a window without quotes, trade ratios in one without volume; counts and
volumes are then 0. No value is ever NaN or infinite.

This is the *batch* path: :class:`ComputeFeatures` groups each symbol's blocks with one
``CoGroupByKey`` and calls the pure, vectorized :func:`sliding_features` once per symbol (one
element per symbol). The features are defined on Beam's sliding-window assignment, so a streaming
version can window the same rows with ``WindowInto(SlidingWindows(size, period))`` and combine
each window with the same pure function; the two give the same rows. The command line's analytics
call it once per symbol and event-time range instead (:mod:`transforms.trades.ranges`), which gives
the same rows too.

Output: ``features.jsonl`` lines (:func:`feature_chunk`), keyed by window end; :func:`read_feature_lines`
reads them back into a :data:`~transforms.trades.market.FEATURE_SCHEMA` batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from transforms.blocks import TextChunk
from transforms.quotes.columns import format_timestamps, joined_lines
from transforms.trades import market
from transforms.trades.market import ENRICHED_SCHEMA, FEATURE_SCHEMA, QUOTE_POINT_SCHEMA, UNMATCHED_SCHEMA
from transforms.windows.logic import WindowingError, parse_window

#: The inputs of :class:`ComputeFeatures`, and the schema of each.
INPUT_SCHEMAS = {"quotes": QUOTE_POINT_SCHEMA, "enriched": ENRICHED_SCHEMA, "unmatched": UNMATCHED_SCHEMA}

_KEY_WIDTH = 20


# --------------------------------------------------------------------------- parameters


def check_windows(size_us: int, period_us: int) -> None:
    """Raise ValueError unless ``size_us`` is a positive multiple of a positive ``period_us``."""
    if period_us <= 0 or size_us <= 0:
        raise ValueError(f"sliding feature windows need a size and a period above 0, got {size_us} us and {period_us} us")
    if size_us % period_us:
        raise ValueError(
            f"the sliding window size ({size_us} us) must be a multiple of its period ({period_us} us)"
        )


def parse_features(text: str) -> tuple[int, int]:
    """``--features sliding:SIZE,PERIOD`` (e.g. ``sliding:10s,1s``) -> ``(size_us, period_us)``.

    Only sliding windows are accepted, and the size must be a multiple of the period; anything
    else raises :class:`transforms.windows.logic.WindowingError` (a ValueError).
    """
    kind = text.strip().partition(":")[0].strip().lower()
    if kind != "sliding":
        raise WindowingError(
            f"--features: {text!r} is not sliding:SIZE,PERIOD (e.g. sliding:10s,1s); only sliding windows are supported"
        )
    try:
        spec = parse_window(text)
        check_windows(spec.size_us, spec.period_us)
    except ValueError as exc:
        raise WindowingError(f"--features {text.strip()}: {str(exc).replace('--window', '--features')}") from None
    return spec.size_us, spec.period_us


# --------------------------------------------------------------------------- the pure function


def _window_starts(times: np.ndarray, size_us: int, period_us: int) -> np.ndarray:
    """Sorted start indices (start // period) of every window holding at least one of ``times``."""
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)
    k = size_us // period_us  # windows per element
    last = np.unique(times // period_us)  # the latest window of each element, in periods
    # Element windows are [last - k + 1, last]; each one adds those not in the previous ones'.
    new = np.empty(len(last), dtype=np.int64)
    new[0] = k
    new[1:] = np.minimum(np.diff(last), k)
    ends = np.repeat(last, new)  # the newest window of each run, repeated
    run_starts = np.cumsum(new) - new
    back = np.arange(len(ends), dtype=np.int64) - np.repeat(run_starts + new - 1, new)  # -(new-1) .. 0
    return ends + back


def _range_reduce(ufunc: np.ufunc, values: np.ndarray, lo: np.ndarray, hi: np.ndarray, identity: float) -> np.ndarray:
    """``ufunc.reduce(values[lo[i]:hi[i]])`` for every i (``identity`` where the range is empty).

    Every range is reduced on its own (``ufunc.reduceat`` over interleaved ``lo, hi`` bounds), so
    no result depends on rows outside its range, as a difference of cumulative sums would.
    """
    if len(lo) == 0:
        return np.zeros(0, dtype=np.float64)
    padded = np.empty(len(values) + 1, dtype=np.float64)
    padded[:-1] = values
    padded[-1] = identity  # lets lo / hi equal len(values)
    bounds = np.empty(2 * len(lo), dtype=np.intp)
    bounds[0::2] = lo
    bounds[1::2] = hi
    np.minimum(bounds, len(values), out=bounds)  # only empty ranges reach past the end
    reduced = ufunc.reduceat(padded, bounds)[0::2]
    return np.where(hi > lo, reduced, identity)


def _column(batch: pa.RecordBatch, name: str, dtype, fill=0) -> np.ndarray:
    column = batch.column(name)
    if column.null_count:
        column = column.fill_null(fill)
    return column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _sorted_quotes(quotes: pa.RecordBatch) -> dict[str, np.ndarray]:
    event = _column(quotes, "event_us", np.int64)
    bid = _column(quotes, "bid", np.int64)
    ask = _column(quotes, "ask", np.int64)
    if len(event) > 1 and not np.all(event[1:] > event[:-1]):  # ties or disorder: full ordering key
        order = np.lexsort(
            (
                _column(quotes, "line", np.int64),
                _column(quotes, "file", np.int64),
                _column(quotes, "arrival_us", np.int64),
                event,
            )
        )
        event, bid, ask = event[order], bid[order], ask[order]
    return {"event": event, "bid": bid, "ask": ask}


def _sorted_trades(enriched: pa.RecordBatch, unmatched: pa.RecordBatch) -> dict[str, np.ndarray]:
    """The trade columns the features need, both kinds together, in event time order."""
    parts = [(enriched, True), (unmatched, False)]
    event = np.concatenate([_column(b, "event_us", np.int64) for b, _ in parts])
    price = np.concatenate([_column(b, "price", np.int64) for b, _ in parts])
    size = np.concatenate([_column(b, "size", np.float64) for b, _ in parts])
    size = np.where(np.isnan(size), 0.0, size)
    sign = np.concatenate([_column(b, "sign", np.int8) for b, _ in parts])
    spread_bps = enriched.column("effective_spread_bps")
    has_bps = np.zeros(len(event), dtype=np.float64)
    has_bps[: enriched.num_rows] = spread_bps.is_valid().to_numpy(zero_copy_only=False)
    bps = np.zeros(len(event), dtype=np.float64)
    bps[: enriched.num_rows] = _column(enriched, "effective_spread_bps", np.float64)
    bps = np.where(has_bps > 0, bps, 0.0)
    order = np.argsort(event, kind="stable")
    return {
        "event": event[order],
        "price": price[order],
        "size": size[order],
        "sign": sign[order],
        "bps": bps[order],
        "has_bps": has_bps[order],
    }


def _nullable(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    valid = valid & np.isfinite(values)
    return pa.array(np.where(valid, values, 0.0), type=pa.float64(), mask=~valid)


def sliding_features(
    symbol: str,
    quotes: pa.RecordBatch,
    enriched: pa.RecordBatch,
    unmatched: pa.RecordBatch,
    *,
    size_us: int,
    period_us: int,
    scale: int,
) -> pa.RecordBatch:
    """The :data:`~transforms.trades.market.FEATURE_SCHEMA` rows of one symbol, sorted by window start.

    Args:
        symbol: the symbol every input row belongs to (written to the ``symbol`` column).
        quotes: :data:`~transforms.trades.market.QUOTE_POINT_SCHEMA` rows, in any order.
        enriched: :data:`~transforms.trades.market.ENRICHED_SCHEMA` rows (trades with their quote).
        unmatched: :data:`~transforms.trades.market.UNMATCHED_SCHEMA` rows (trades without).
        size_us, period_us: the sliding windows; ``size_us`` must be a multiple of ``period_us``.
        scale: prices are integers scaled by ``10**scale``.

    See the module documentation for the definition of each feature. Vectorized: each window's
    rows are a ``[lo, hi)`` range of the time-sorted rows (``np.searchsorted``), reduced on its own
    with ``ufunc.reduceat``.
    """
    check_windows(size_us, period_us)
    unit = 10.0**scale
    q = _sorted_quotes(quotes)
    t = _sorted_trades(enriched, unmatched)

    starts = _window_starts(np.concatenate([q["event"], t["event"]]), size_us, period_us) * period_us
    ends = starts + size_us
    n = len(starts)

    # Quotes.
    q_lo = np.searchsorted(q["event"], starts, side="left")
    q_hi = np.searchsorted(q["event"], ends, side="left")
    q_count = q_hi - q_lo
    has_quotes = q_count > 0
    mid2 = (q["bid"] + q["ask"]).astype(np.float64)
    spread = (q["ask"] - q["bid"]).astype(np.float64)
    mid = mid2 / 2 / unit
    with np.errstate(divide="ignore", invalid="ignore"):
        spread_bps = spread / (mid2 / 2) * 1e4
        squared = np.log(mid[1:] / mid[:-1]) ** 2  # pair j: quotes j and j + 1
    first = np.minimum(q_lo, max(len(mid) - 1, 0))
    last = np.maximum(q_hi - 1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if len(mid):
            log_return = np.log(mid[last] / mid[first])
        else:
            log_return = np.zeros(n)
        counts = np.maximum(q_count, 1)
        realized = np.sqrt(_range_reduce(np.add, squared, q_lo, np.maximum(q_hi - 1, q_lo), 0.0))
        mean_spread = _range_reduce(np.add, spread, q_lo, q_hi, 0.0) / counts / unit
        max_spread = _range_reduce(np.maximum, spread, q_lo, q_hi, 0.0) / unit
        mean_spread_bps = _range_reduce(np.add, spread_bps, q_lo, q_hi, 0.0) / counts

    # Trades.
    t_lo = np.searchsorted(t["event"], starts, side="left")
    t_hi = np.searchsorted(t["event"], ends, side="left")
    size = t["size"]
    volume = _range_reduce(np.add, size, t_lo, t_hi, 0.0)
    buy = _range_reduce(np.add, np.where(t["sign"] > 0, size, 0.0), t_lo, t_hi, 0.0)
    sell = _range_reduce(np.add, np.where(t["sign"] < 0, size, 0.0), t_lo, t_hi, 0.0)
    notional = _range_reduce(np.add, t["price"] / unit * size, t_lo, t_hi, 0.0)
    bps_sum = _range_reduce(np.add, t["bps"], t_lo, t_hi, 0.0)
    bps_count = _range_reduce(np.add, t["has_bps"], t_lo, t_hi, 0.0)
    has_volume = volume > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        imbalance = (buy - sell) / (buy + sell)
        vwap = notional / volume
        mean_bps = bps_sum / bps_count

    arrays = [
        pa.repeat(pa.scalar(symbol, type=pa.string()), n),
        pa.array(starts, type=pa.int64()),
        pa.array(ends, type=pa.int64()),
        pa.array(q_count, type=pa.int64()),
        pa.array(t_hi - t_lo, type=pa.int64()),
        _nullable(log_return, has_quotes),
        _nullable(realized, has_quotes),
        _nullable(mean_spread, has_quotes),
        _nullable(max_spread, has_quotes),
        _nullable(mean_spread_bps, has_quotes),
        pa.array(volume, type=pa.float64()),
        pa.array(buy, type=pa.float64()),
        pa.array(sell, type=pa.float64()),
        _nullable(imbalance, has_volume),
        _nullable(vwap, has_volume),
        _nullable(mean_bps, bps_count > 0),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=FEATURE_SCHEMA)


# --------------------------------------------------------------------------- features.jsonl

_INT_FIELDS = ("quotes", "trades")
_FLOAT_FIELDS = tuple(field.name for field in FEATURE_SCHEMA if field.type == pa.float64())


def _float_texts(column: pa.Array) -> pa.Array:
    """Shortest round-trip text of each float (Arrow's cast), ``null`` for nulls and non-finite values."""
    finite = pc.is_finite(column)
    return pc.fill_null(pc.cast(pc.if_else(finite, column, None), pa.string()), "null")


def _keys(window_end_us: np.ndarray) -> pa.Array:
    """``f"{window_end_us:020d}\\t"`` for every row."""
    if len(window_end_us) and window_end_us.min() < 0:
        return pa.array([f"{end:0{_KEY_WIDTH}d}\t" for end in window_end_us.tolist()], type=pa.string())
    texts = pc.utf8_lpad(pc.cast(pa.array(window_end_us, type=pa.int64()), pa.string()), _KEY_WIDTH, "0")
    return pc.binary_join_element_wise(texts, "\t", "")


def feature_lines(rb: pa.RecordBatch, keyed: bool = False) -> bytes:
    """``features.jsonl`` lines of a :data:`~transforms.trades.market.FEATURE_SCHEMA` batch, in its order.

    Keys in schema order with ``window_start`` / ``window_end`` as UTC timestamps
    (``YYYY-MM-DD HH:MM:SS.fff``), nulls as ``null``; with ``keyed``, each line is preceded by
    the window end (20 digits) and a tab.
    """
    if rb.num_rows == 0:
        return b""
    ends = rb.column("window_end_us").to_numpy(zero_copy_only=False)
    encoded = pc.dictionary_encode(rb.column("symbol"))  # one json.dumps per distinct symbol
    quoted = pa.array([json.dumps(symbol) for symbol in encoded.dictionary.to_pylist()], type=pa.string())
    symbols = quoted.take(encoded.indices)
    parts: list[pa.Array | str] = [_keys(ends)] if keyed else []
    parts += [
        '{"symbol":',
        symbols,
        ',"window_start":"',
        format_timestamps(rb.column("window_start_us").to_numpy(zero_copy_only=False)),
        '","window_end":"',
        format_timestamps(ends),
        '"',
    ]
    for name in _INT_FIELDS:
        parts += [f',"{name}":', pc.cast(rb.column(name), pa.string())]
    for name in _FLOAT_FIELDS:
        parts += [f',"{name}":', _float_texts(rb.column(name))]
    parts.append("}")
    return joined_lines(*parts)


def feature_chunk(symbol: str, rb: pa.RecordBatch) -> TextChunk:
    """One symbol's ``features.jsonl`` lines, keyed by window end so the sink merges symbols in time
    order (a symbol's rows are sorted by window start, hence by end: one size for all)."""
    return TextChunk(market.symbol_seq(symbol), feature_lines(rb, keyed=True), rb.num_rows, keyed=True)


_READ_SCHEMA = pa.schema(
    [pa.field("symbol", pa.string()), pa.field("window_start", pa.string()), pa.field("window_end", pa.string())]
    + [FEATURE_SCHEMA.field(name) for name in _INT_FIELDS + _FLOAT_FIELDS]
)


def _timestamps_us(texts: pa.Array) -> pa.Array:
    return pc.cast(pc.cast(texts, pa.timestamp("us")), pa.int64())


def read_feature_lines(path: str | Path) -> pa.RecordBatch:
    """A ``features.jsonl`` file back as a :data:`~transforms.trades.market.FEATURE_SCHEMA` batch, in file order.

    The inverse of :func:`feature_lines`; lines still carrying their sort key (``<key>\\t{...}``)
    are accepted too.
    """
    data = Path(path).read_bytes()
    lines = [line for line in data.splitlines() if line.strip()]
    if not lines:
        return market.empty(FEATURE_SCHEMA)
    if any(not line.startswith(b"{") for line in lines):
        lines = [line[line.index(b"\t") + 1 :] if not line.startswith(b"{") else line for line in lines]
    options = pa_json.ParseOptions(explicit_schema=_READ_SCHEMA, unexpected_field_behavior="error")
    table = pa_json.read_json(pa.py_buffer(b"\n".join(lines) + b"\n"), parse_options=options)
    table = table.combine_chunks()
    columns = {
        "symbol": table.column("symbol"),
        "window_start_us": _timestamps_us(table.column("window_start")),
        "window_end_us": _timestamps_us(table.column("window_end")),
    }
    arrays = [
        columns[name] if name in columns else table.column(name) for name in FEATURE_SCHEMA.names
    ]
    arrays = [array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array for array in arrays]
    return pa.RecordBatch.from_arrays(arrays, schema=FEATURE_SCHEMA)


def feature_range_chunk(r: int, rb: pa.RecordBatch) -> TextChunk:
    """``features.jsonl`` lines of range ``r``'s windows, in their order (by window end, then symbol:
    :mod:`transforms.trades.ranges`), unkeyed: the sink concatenates ranges in ``seq`` = ``r`` order."""
    return TextChunk(r, feature_lines(rb), rb.num_rows)
