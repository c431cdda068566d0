"""The run report: ``report.png`` and a self-contained ``report.html`` drawn from a finished run.

Called after a run (``--report``), on its output folder::

    png_path, html_path = write_report("output")

What it shows, and where each part comes from:

* counts (records in, mid prices, latency filtered, dead letters, late, windows, the balance
  checks) and dead letters by reason: ``metrics.json``;
* the mid price of each symbol over time, latency-filtered quotes and late quotes marked: the
  quotes are recovered by replaying ``metrics.json``'s ``inputs`` with the pipeline's own
  functions (:class:`transforms.sources.replay.HistoricalReplay`, :func:`transforms.quotes.normalize.normalize_batch`,
  :func:`transforms.quotes.midprice.split_by_latency`), since ``mid_prices.log`` has no symbol; late
  quotes are those of ``late.jsonl`` (``source`` and ``line`` name the input row);
* OHLC per symbol: the panes of ``windows.jsonl`` (with ``--window``), otherwise one-second
  candles of the mid prices computed here (the figure says which);
* the latency histogram of the valid quotes, the threshold as a vertical line.

Big runs are drawn in seconds: each symbol's line keeps at most ``max_points`` points (the
minimum and maximum of each bucket, so spikes stay visible), markers and candles are thinned or
merged the same way, and the figure says so. Only :func:`write_report` needs matplotlib (the
``report`` extra); :func:`report_data` is what it plots, and needs nothing more than a run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.options import quote_prices
from beam_pipeline.plugins import PluginFormats
from schemas import SchemaError, latest_version
from transforms.accounting import RECORDS_IN, Accounting, combine, render
from transforms.quotes.midprice import split_by_latency
from transforms.quotes.normalize import normalize_batch
from transforms.quotes.tenants import partition_dir
from transforms.sinks.files import balance
from transforms.sources.avro_input import InputOpener
from transforms.sources.csv_blocks import HeaderError
from transforms.sources.replay import HistoricalReplay
from transforms.windows.logic import parse_duration

LOG = logging.getLogger(__name__)

REPORT_PNG = "report.png"
REPORT_HTML = "report.html"
INSTALL_HINT = "pip install 'beam_pipeline[report]'"

#: Points drawn per symbol's mid-price line (min and max of each bucket); markers are capped alike.
MAX_POINTS = 20_000
#: Latency-filtered and late markers drawn per symbol and kind (evenly thinned beyond).
MAX_MARKERS = 2_000
#: Symbols drawn (those with the most quotes); the others are named in a note.
MAX_SYMBOLS = 12
#: Candles drawn per symbol; more windows are merged, a run of consecutive ones per candle.
MAX_CANDLES = 300
#: Bucket of the OHLC computed here when the run has no windows.jsonl.
COMPUTED_OHLC_US = 1_000_000

_US_PER_DAY = 86_400 * 1_000_000
_DPI = 100
_ROW_PX = 300  # one symbol's row
_BOTTOM_PX = 420  # latency histogram and counts table
_HEAD_PX = 110  # title and notes


class ReportError(Exception):
    """The report cannot be made: no run in the folder, or matplotlib missing."""


@dataclass
class SymbolSeries:
    """One symbol's valid quotes, in event-time order (ties: arrival order)."""

    symbol: str
    event_us: np.ndarray  # int64
    mid: np.ndarray  # float64
    latency_ms: np.ndarray  # float64, NaN where the input has no latency
    filtered: np.ndarray  # bool: over the latency threshold (errors.log, not mid_prices.log)
    late: np.ndarray  # bool: in late.jsonl (past its window's allowed lateness)

    @property
    def quotes(self) -> int:
        return len(self.event_us)

    @property
    def mid_prices(self) -> int:
        return int(np.count_nonzero(~self.filtered))


@dataclass
class Candles:
    """OHLC of one symbol, one row per window (or computed bucket), in start order."""

    start_us: np.ndarray
    end_us: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    count: np.ndarray

    def __len__(self) -> int:
        return len(self.start_us)


@dataclass
class ReportData:
    """Everything the report shows; :func:`report_data` builds it, :func:`write_report` draws it."""

    output_dir: str
    metrics: dict
    series: dict[str, SymbolSeries] = field(default_factory=dict)
    candles: dict[str, Candles] = field(default_factory=dict)
    candles_source: str = ""
    dead_letters: int = 0  # rows the report's replay rejected (metrics.json: dead_lettered)
    notes: list[str] = field(default_factory=list)
    accounting: Sequence[Accounting] = ()  # the run's stages' declarations (see count_rows)
    row_keys: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # symbol -> input file and line

    @property
    def valid_quotes(self) -> int:
        return sum(s.quotes for s in self.series.values())

    @property
    def mid_prices(self) -> int:
        return sum(s.mid_prices for s in self.series.values())

    @property
    def latency_filtered(self) -> int:
        return sum(int(np.count_nonzero(s.filtered)) for s in self.series.values())

    @property
    def late(self) -> int:
        return sum(int(np.count_nonzero(s.late)) for s in self.series.values())

    def count_rows(self) -> list[tuple[str, str]]:
        return count_rows(self.metrics, self.accounting)


# --------------------------------------------------------------------------- data


def report_data(
    output_dir: str,
    *,
    default_symbol: str = "UNKNOWN",
    reader_schema_version: int | None = None,
    accounting: Sequence[Accounting] | None = None,
) -> ReportData:
    """What the report of the run in ``output_dir`` shows (see the module docstring).

    ``default_symbol`` and ``reader_schema_version`` are the run's ``--symbol`` and
    ``--reader_schema_version`` (metrics.json does not record them); they matter only for inputs
    without a symbol column and for ``.avro`` inputs. ``accounting``: the declarations of the
    run's stages (``beam_pipeline.pipeline.run_accounting``); default: every stage's.
    """
    metrics = read_metrics(output_dir)
    if accounting is None:
        from beam_pipeline.pipeline import every_stage_accounting

        accounting = every_stage_accounting()
    data = ReportData(output_dir, metrics, accounting=tuple(accounting))
    source = metrics.get("source", "historical")
    inputs = list(metrics.get("inputs") or [])
    if source != "historical":
        data.notes.append(f"no per-symbol series: this run read from {source}, which the report cannot replay")
    elif not inputs:
        data.notes.append("no per-symbol series: metrics.json names no inputs")
    else:
        try:
            _replay_series(data, inputs, default_symbol, reader_schema_version)
        except (OSError, HeaderError, SchemaError) as exc:  # inputs moved, changed or unreadable since the run
            LOG.warning("report: cannot replay the inputs of %s: %s", output_dir, exc)
            data.notes.append(f"no per-symbol series: cannot read the inputs again ({exc})")
    _mark_late(data, inputs)
    _add_candles(data)
    _check_counts(data)
    return data


def read_metrics(output_dir: str) -> dict:
    """The run's metrics.json; :class:`ReportError` when the folder has none."""
    path = FileSystems.join(output_dir, "metrics.json")
    if not FileSystems.exists(path):
        raise ReportError(f"{output_dir}: no metrics.json, so no finished run to report on")
    with FileSystems.open(path) as stream:
        try:
            return json.load(stream)
        except ValueError as exc:
            raise ReportError(f"{path}: not valid JSON ({exc})") from None


def _replay_series(data: ReportData, inputs: list[str], default_symbol: str, reader_version: int | None) -> None:
    """Replay the inputs as the run did and keep every valid quote, grouped by symbol."""
    metrics = data.metrics
    prices = quote_prices()  # what build_pipeline normalizes with
    threshold = metrics.get("latency_threshold_ms")
    horizon = metrics.get("dedup_horizon")
    replay = HistoricalReplay(
        inputs,
        default_symbol=default_symbol,
        open_file=InputOpener(reader_version or latest_version("quote"), PluginFormats.installed()),
        dedup_horizon_us=parse_duration(horizon, "dedup_horizon") if horizon else 0,
    )
    parts: dict[str, list] = {name: [] for name in ("symbol", "tenant", "event_us", "latency_us", "bid", "ask",
                                                     "file", "line", "filtered")}
    for batch in replay:
        valid, dead = normalize_batch(batch, prices)
        data.dead_letters += dead.num_rows
        if not valid.num_rows:
            continue
        for name in ("symbol", "tenant", "event_us", "latency_us", "bid", "ask", "file", "line"):
            parts[name].append(valid.column(name))
        parts["filtered"].append(split_by_latency(valid, threshold))
    if not parts["event_us"]:
        data.notes.append("the inputs hold no valid quote")
        return

    def ints(name: str) -> np.ndarray:
        return pa.chunked_array(parts[name]).to_numpy()

    symbols = pa.chunked_array(parts["symbol"])
    tenants = pa.chunked_array(parts["tenant"])
    if len(pc.unique(tenants)) > 1:  # one series per tenant and symbol
        symbols = pc.binary_join_element_wise(tenants, symbols, "/")
    encoded = pc.dictionary_encode(symbols).combine_chunks()
    codes = encoded.indices.to_numpy()
    names = encoded.dictionary.to_pylist()
    event_us = ints("event_us")
    latency = pa.chunked_array(parts["latency_us"])
    latency_ms = pc.cast(latency, pa.float64()).to_numpy(zero_copy_only=False) / 1000  # nulls -> NaN; a plot needs no exactness
    mid = (ints("bid") + ints("ask")) / (2 * 10**prices.scale)
    key = _row_key(ints("file"), ints("line"))
    filtered = np.concatenate(parts["filtered"])
    order = np.lexsort((event_us, codes))  # by symbol, then event time; stable: ties in arrival order
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for rows in np.split(order, bounds):
        symbol = names[codes[rows[0]]]
        data.series[symbol] = SymbolSeries(
            symbol, event_us[rows], mid[rows], latency_ms[rows], filtered[rows], np.zeros(len(rows), dtype=bool)
        )
        data.row_keys[symbol] = key[rows]
    data.series = dict(sorted(data.series.items()))
    LOG.info("report: %s valid quotes of %s symbol(s) replayed from %s input(s)",
             f"{len(event_us):,}", len(data.series), len(inputs))


def _row_key(file: np.ndarray, line: np.ndarray) -> np.ndarray:
    """One int64 per input row: its file index and line number."""
    return file.astype(np.int64) * (1 << 40) + line.astype(np.int64)


def output_files(output_dir: str, metrics: Mapping, name: str) -> list[str]:
    """The paths of an output file: in the folder, or in each ``tenant=<t>`` partition of it."""
    partitions = list(metrics.get("partitions", {})) or [""]
    paths = [FileSystems.join(partition_dir(output_dir, p), name) for p in partitions]
    return [path for path in paths if FileSystems.exists(path)]


def _json_lines(paths: Sequence[str]) -> Iterator[dict]:
    for path in paths:
        with FileSystems.open(path) as stream:
            for line in io.TextIOWrapper(stream, encoding="utf-8"):
                if line.strip():
                    yield json.loads(line)


def _mark_late(data: ReportData, inputs: list[str]) -> None:
    """Mark the quotes of late.jsonl (matched by input file and line) in their series."""
    paths = output_files(data.output_dir, data.metrics, "late.jsonl")
    if not paths:
        return
    file_index = {path: index for index, path in enumerate(inputs)}
    late = [(row.get("source"), row.get("line")) for row in _json_lines(paths)]
    keys = np.array(
        [(file_index[source] << 40) + line for source, line in late if source in file_index and line is not None],
        dtype=np.int64,
    )
    matched = 0
    for symbol, series in data.series.items():
        series.late = np.isin(data.row_keys[symbol], keys)
        matched += int(np.count_nonzero(series.late))
    if data.series and matched != len(late):
        data.notes.append(f"{len(late) - matched:,} of the {len(late):,} late quotes in late.jsonl match no input row")


def _add_candles(data: ReportData) -> None:
    paths = output_files(data.output_dir, data.metrics, "windows.jsonl")
    if paths:
        window = data.metrics.get("windowing", {}).get("window", "")
        data.candles = _window_candles(
            _json_lines(paths),
            multi_tenant=len(data.metrics.get("partitions", {})) > 1,
            accumulating=data.metrics.get("windowing", {}).get("accumulation") == "accumulating",
        )
        data.candles_source = f"windows.jsonl ({window})" if window else "windows.jsonl"
    elif data.series:
        data.candles = {symbol: _computed_candles(series) for symbol, series in data.series.items()
                        if series.mid_prices}
        data.candles_source = "1 s, computed by the report"
        data.notes.append("the run has no --window: the OHLC candles are of 1-second buckets of the mid prices "
                          "(latency-filtered quotes excluded), computed by the report")


def _iso_us(text: str) -> int:
    return int(np.datetime64(text.rstrip("Z"), "us").astype(np.int64))


def _window_candles(panes: Iterator[dict], multi_tenant: bool, accumulating: bool = False) -> dict[str, Candles]:
    """One candle per window and symbol; a window's panes (early, on time, late) merged. The count:
    the panes' sum (discarding), or the largest pane's (accumulating: later panes repeat earlier quotes)."""
    merged: dict[tuple[str, int, int], list] = {}
    tenants = set()
    for pane in panes:
        tenants.add(pane.get("tenant"))
        key = (f"{pane.get('tenant')}/{pane['symbol']}", _iso_us(pane["window_start"]), _iso_us(pane["window_end"]))
        first, last = _iso_us(pane["first_quote"]), _iso_us(pane["last_quote"])
        row = [first, float(pane["open"]), float(pane["high"]), float(pane["low"]), last, float(pane["close"]),
               int(pane["count"])]
        old = merged.get(key)
        if old is None:
            merged[key] = row
            continue
        if first < old[0]:
            old[0], old[1] = first, row[1]
        if last >= old[4]:
            old[4], old[5] = last, row[5]
        old[2], old[3] = max(old[2], row[2]), min(old[3], row[3])
        old[6] = max(old[6], row[6]) if accumulating else old[6] + row[6]
    by_symbol: dict[str, list] = {}
    for (name, start, end), row in sorted(merged.items()):
        symbol = name if (multi_tenant or len(tenants) > 1) else name.split("/", 1)[1]
        by_symbol.setdefault(symbol, []).append((start, end, row[1], row[2], row[3], row[5], row[6]))
    candles = {}
    for symbol, rows in by_symbol.items():
        columns = list(zip(*rows))
        candles[symbol] = Candles(
            np.array(columns[0], dtype=np.int64), np.array(columns[1], dtype=np.int64),
            *(np.array(c, dtype=np.float64) for c in columns[2:6]), np.array(columns[6], dtype=np.int64),
        )
    return candles


def _computed_candles(series: SymbolSeries, bucket_us: int = COMPUTED_OHLC_US) -> Candles:
    """OHLC of a symbol's mid prices (latency-filtered quotes excluded) per ``bucket_us``."""
    keep = ~series.filtered
    times, mids = series.event_us[keep], series.mid[keep]
    buckets = times // bucket_us
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    ends = np.r_[starts[1:], len(times)]
    return Candles(
        buckets[starts] * bucket_us, buckets[starts] * bucket_us + bucket_us,
        mids[starts], np.maximum.reduceat(mids, starts), np.minimum.reduceat(mids, starts), mids[ends - 1],
        ends - starts,
    )


def merge_candles(candles: Candles, limit: int) -> Candles:
    """At most ``limit`` candles: runs of consecutive ones merged (first open, last close)."""
    if len(candles) <= limit:
        return candles
    size = math.ceil(len(candles) / limit)
    starts = np.arange(0, len(candles), size)
    ends = np.r_[starts[1:], len(candles)]
    return Candles(
        candles.start_us[starts], candles.end_us[ends - 1], candles.open[starts],
        np.maximum.reduceat(candles.high, starts), np.minimum.reduceat(candles.low, starts),
        candles.close[ends - 1], np.add.reduceat(candles.count, starts),
    )


def _check_counts(data: ReportData) -> None:
    """Say so when the replayed quotes do not add up to metrics.json's counts."""
    if not data.series:
        return
    metrics = data.metrics
    checks = [("mid prices", data.mid_prices, "mid_prices"), ("latency filtered", data.latency_filtered,
              "latency_filtered"), ("dead letters", data.dead_letters, "dead_lettered")]
    if "late_dropped" in metrics:
        checks.append(("late", data.late, "late_dropped"))
    for label, ours, name in checks:
        if name in metrics and ours != metrics[name]:
            LOG.warning("report: the replay found %s %s, metrics.json says %s", ours, label, metrics[name])
            data.notes.append(f"the report's replay found {ours:,} {label}, metrics.json {metrics[name]:,} "
                              "(were the inputs changed, or run with --symbol or --reader_schema_version?)")


def count_rows(metrics: Mapping, parts: Sequence[Accounting]) -> list[tuple[str, str]]:
    """The counts table: (label, value) rows, numbers with thousands separators; the counts and
    their words are those the stages declare (``parts``, stage by stage), for each count the run has."""
    names = [("records in", RECORDS_IN)]
    for part in parts:
        names += [(label, metric) for metric, label in part.counts]
        names += [(render(output.label, metrics), output.metric) for output in part.outputs]
    rows = [(label, f"{metrics[name]:,}") for label, name in names if isinstance(metrics.get(name), int)]
    labels = combine(parts).labels
    totals = metrics.get("balance_totals", {})
    for check, terms in metrics.get("balance_terms", {}).items():
        total = totals.get(check, RECORDS_IN)
        ok = balance(metrics, terms, total)
        sums = " + ".join(f"{metrics.get(term, 0):,}" for term in terms)
        rows.append((f"balance ({labels.get(check, check)})",
                     f"{'yes' if ok else 'NO'}: {metrics.get(total, 0):,} = {sums}"))
    return rows


# --------------------------------------------------------------------------- drawing


def minmax_indices(values: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` points keeping the shape of ``values``: the first minimum and
    maximum of each of ``limit // 2`` equal buckets, in order. All indices when few enough."""
    count = len(values)
    if count <= limit:
        return np.arange(count)
    size = math.ceil(count / max(1, limit // 2))
    buckets = math.ceil(count / size)  # every bucket has a value: the last one at least one
    padded = np.full(buckets * size, np.nan)
    padded[:count] = values
    grid = padded.reshape(buckets, size)
    base = np.arange(buckets) * size
    picked = np.concatenate([base + np.nanargmin(grid, axis=1), base + np.nanargmax(grid, axis=1)])
    return np.unique(picked)


def thin_indices(mask: np.ndarray, limit: int) -> np.ndarray:
    """Indices where ``mask`` is set, evenly thinned to at most ``limit``."""
    where = np.flatnonzero(mask)
    if len(where) <= limit:
        return where
    return where[np.unique(np.linspace(0, len(where) - 1, limit).astype(np.int64))]


def _days(us: np.ndarray) -> np.ndarray:
    """Microseconds since the epoch -> matplotlib date numbers (days since 1970-01-01)."""
    return np.asarray(us, dtype=np.float64) / _US_PER_DAY


def check_matplotlib() -> None:
    """:class:`ReportError` (saying what to install) unless matplotlib can be imported: for ``--report``
    to check before a run rather than after it."""
    _matplotlib()


def _matplotlib():
    try:
        from matplotlib import dates
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ReportError(f"the report needs matplotlib ({exc}): {INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg, dates


def figure_height_px(data: ReportData, max_symbols: int = MAX_SYMBOLS) -> int:
    """The figure's height: a row per symbol drawn (one at least), then histogram and table."""
    return _HEAD_PX + _ROW_PX * max(1, min(len(data.series), max_symbols)) + _BOTTOM_PX


def render_png(
    data: ReportData,
    *,
    width_px: int = 1600,
    height_px: int | None = None,
    max_points: int = MAX_POINTS,
    max_markers: int = MAX_MARKERS,
    max_symbols: int = MAX_SYMBOLS,
    max_candles: int = MAX_CANDLES,
) -> bytes:
    """The report figure as PNG bytes (matplotlib's Agg canvas: no display needed)."""
    Figure, FigureCanvasAgg, dates = _matplotlib()
    height_px = height_px or figure_height_px(data, max_symbols)
    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    drawn = sorted(data.series.values(), key=lambda s: -s.quotes)[:max_symbols]
    drawn.sort(key=lambda s: s.symbol)
    notes = list(data.notes)
    if len(data.series) > len(drawn):
        left = sorted(set(data.series) - {s.symbol for s in drawn})
        notes.append(f"{len(left)} more symbol(s) not drawn: {', '.join(left[:20])}{' ...' if len(left) > 20 else ''}")
    rows = max(1, len(drawn))
    grid = fig.add_gridspec(
        rows + 1, 2, width_ratios=[3, 2], height_ratios=[_ROW_PX] * rows + [_BOTTOM_PX],
        left=0.06, right=0.98, top=1 - _HEAD_PX / height_px, bottom=0.03, hspace=0.55, wspace=0.15,
    )
    metrics = data.metrics
    title = f"Run report: {data.output_dir}"
    facts = (f"{metrics.get('records_in', 0):,} quotes from {len(metrics.get('inputs') or [])} input(s), "
             f"latency threshold {metrics.get('latency_threshold_ms')} ms, "
             f"{metrics.get('run_seconds', 0):.1f} s")
    fig.text(0.01, 1 - 12 / height_px, title, fontsize=15, weight="bold", va="top")
    fig.text(0.01, 1 - 40 / height_px, facts, fontsize=10, va="top")
    if notes:
        fig.text(0.01, 1 - 60 / height_px, "\n".join(notes[:3]), fontsize=8.5, va="top", color="#8a4b00")

    locator = dates.AutoDateLocator()
    for row, series in enumerate(drawn):
        ax = fig.add_subplot(grid[row, 0])
        _draw_series(ax, series, max_points, max_markers)
        ohlc = fig.add_subplot(grid[row, 1], sharex=ax)
        _draw_candles(ohlc, series.symbol, data.candles.get(series.symbol), data.candles_source, max_candles)
        for axis in (ax, ohlc):
            axis.xaxis.set_major_locator(locator)
            axis.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
    if not drawn:
        ax = fig.add_subplot(grid[0, :])
        ax.axis("off")
        ax.text(0.5, 0.5, "no per-symbol series (see the notes)", ha="center", va="center", fontsize=12)
    _draw_latency(fig.add_subplot(grid[rows, 0]), data)
    _draw_table(fig.add_subplot(grid[rows, 1]), data.count_rows())

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _draw_series(ax, series: SymbolSeries, max_points: int, max_markers: int) -> None:
    on_time = np.flatnonzero(~series.filtered)
    kept = on_time[minmax_indices(series.mid[on_time], max_points)]
    title = f"{series.symbol}: mid price"
    if len(kept) < len(on_time):
        title += f" (downsampled: {len(kept):,} of {len(on_time):,} points, min/max per bucket)"
    ax.plot(_days(series.event_us[kept]), series.mid[kept], lw=0.8, color="#1f5fa8",
            label=f"mid price ({len(on_time):,})")
    for mask, marker, color, label in (
        (series.filtered, "x", "#d62728", "latency filtered"),
        (series.late, "v", "#ff7f0e", "late (past window lateness)"),
    ):
        total = int(np.count_nonzero(mask))
        if not total:
            continue
        shown = thin_indices(mask, max_markers)
        suffix = f", {len(shown):,} drawn" if len(shown) < total else ""
        ax.scatter(_days(series.event_us[shown]), series.mid[shown], marker=marker, s=14 if len(shown) < 500 else 5,
                   color=color, alpha=0.8, linewidths=0.9, label=f"{label} ({total:,}{suffix})", zorder=3)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_ylabel("mid")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def _draw_candles(ax, symbol: str, candles: Candles | None, source: str, limit: int) -> None:
    ax.grid(alpha=0.3)
    if candles is None or not len(candles):
        ax.set_title(f"{symbol}: no OHLC", fontsize=10, loc="left")
        return
    shown = merge_candles(candles, limit)
    title = f"{symbol} OHLC: {source}"
    if len(shown) < len(candles):
        title += f"; {len(candles):,} merged into {len(shown):,} candles"
    start, end = _days(shown.start_us), _days(shown.end_us)
    middle, width = (start + end) / 2, np.maximum((end - start) * 0.8, 1e-9)
    if len(shown) > 1:  # sliding windows overlap: no wider than the step between them
        step = np.median(np.diff(start))
        if step > 0:
            width = np.minimum(width, step * 0.8)
    up = shown.close >= shown.open
    colors = np.where(up, "#2ca02c", "#d62728")
    ax.vlines(middle, shown.low, shown.high, colors=colors, lw=0.8)
    body = np.abs(shown.close - shown.open)
    ax.bar(middle, np.maximum(body, 1e-12), width=width, bottom=np.minimum(shown.open, shown.close),
           color=colors, edgecolor=colors, linewidth=0.5)
    ax.set_title(title, fontsize=9, loc="left")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def _draw_latency(ax, data: ReportData) -> None:
    threshold = data.metrics.get("latency_threshold_ms")
    latencies = [s.latency_ms[~np.isnan(s.latency_ms)] for s in data.series.values()]
    values = np.concatenate(latencies) if latencies else np.array([])
    ax.set_title("latency of the valid quotes", fontsize=10, loc="left")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("quotes")
    ax.grid(alpha=0.3)
    if not len(values):
        ax.text(0.5, 0.5, "no latencies", ha="center", va="center", transform=ax.transAxes)
    else:
        top = max(float(values.max()), float(threshold or 0)) + 1
        counts, edges = np.histogram(values, bins=min(80, max(10, int(top))), range=(0, top))
        ax.stairs(counts, edges, fill=True, color="#7f9fc6", label=f"{len(values):,} quotes")
        positive = counts[counts > 0]
        if len(positive) and positive.max() > 50 * positive.min():
            ax.set_yscale("log")
            ax.set_title("latency of the valid quotes (log scale)", fontsize=10, loc="left")
    if threshold is not None:
        over = int(np.count_nonzero(values > threshold))
        ax.axvline(threshold, color="#d62728", ls="--", lw=1.2, label=f"threshold {threshold} ms ({over:,} over)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _draw_table(ax, rows: list[tuple[str, str]]) -> None:
    ax.axis("off")
    ax.set_title("counts (metrics.json)", fontsize=10, loc="left")
    if not rows:
        return
    table = ax.table(cellText=[list(r) for r in rows], colLabels=["count", "value"], loc="upper center",
                     cellLoc="left", colLoc="left", colWidths=[0.4, 0.6])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.35)
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8eef6")


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1700px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.4em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.7em; text-align: left; }
th { background: #e8eef6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
dd { margin: 0; }
.note { color: #8a4b00; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
"""


def render_html(data: ReportData, png: bytes, width_px: int | None = None) -> str:
    """The self-contained page: inline CSS, the figure as a data: URI, nothing fetched."""
    e = html.escape
    metrics = data.metrics
    facts = [
        ("output folder", data.output_dir),
        ("source", str(metrics.get("source", "historical"))),
        ("inputs", ", ".join(metrics.get("inputs") or []) or "none"),
        ("latency threshold", f"{metrics.get('latency_threshold_ms')} ms"),
        ("run seconds", f"{metrics.get('run_seconds', 0):.3f}"),
    ]
    if "windowing" in metrics:
        windowing = dict(metrics["windowing"])
        window = windowing.pop("window", "")
        facts.append(("window", f"{window} ({', '.join(f'{k} {v}' for k, v in windowing.items())})"))
    if metrics.get("streaming"):
        facts.append(("streaming", "yes"))
    if data.series:
        facts.append(("symbols", ", ".join(data.series)))
    if data.candles_source:
        facts.append(("OHLC", data.candles_source))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Run report: {e(data.output_dir)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Run report: {e(data.output_dir)}</h1>",
        '<h2>Run</h2><dl id="facts">',
        *(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts),
        "</dl>",
        '<h2>Counts</h2><table id="counts"><thead><tr><th>count</th><th>value</th></tr></thead><tbody>',
        *(f'<tr><td>{e(k)}</td><td class="num">{e(v)}</td></tr>' for k, v in data.count_rows()),
        "</tbody></table>",
    ]
    reasons = metrics.get("dead_lettered_by_reason") or {}
    parts.append("<h2>Dead letters by reason</h2>")
    if reasons:
        parts += [
            '<table id="dead-letters"><thead><tr><th>reason</th><th>rows</th></tr></thead><tbody>',
            *(f'<tr><td>{e(str(k))}</td><td class="num">{int(v):,}</td></tr>' for k, v in sorted(reasons.items())),
            "</tbody></table>",
        ]
    else:
        parts.append("<p>none</p>")
    if data.notes:
        parts += ["<h2>Notes</h2><ul>", *(f'<li class="note">{e(n)}</li>' for n in data.notes), "</ul>"]
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    size = f' width="{int(width_px)}"' if width_px else ""
    parts += [
        "<h2>Figure</h2>",
        f'<img id="figure" alt="{e("mid price per symbol, OHLC, latency histogram and counts")}"{size} src="{uri}">',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- entry


def write_report(
    output_dir: str,
    *,
    width_px: int = 1600,
    height_px: int | None = None,
    max_points: int = MAX_POINTS,
    max_markers: int = MAX_MARKERS,
    max_symbols: int = MAX_SYMBOLS,
    max_candles: int = MAX_CANDLES,
    default_symbol: str = "UNKNOWN",
    reader_schema_version: int | None = None,
    accounting: Sequence[Accounting] | None = None,
) -> tuple[str, str]:
    """Write ``report.png`` and ``report.html`` into ``output_dir``; returns their paths.

    Raises :class:`ReportError` when the folder has no metrics.json or matplotlib is missing.
    ``height_px`` None: :func:`figure_height_px`. See :func:`report_data` for the last three.
    """
    check_matplotlib()  # fail before the replay, not after it
    data = report_data(output_dir, default_symbol=default_symbol, reader_schema_version=reader_schema_version,
                       accounting=accounting)
    png = render_png(data, width_px=width_px, height_px=height_px, max_points=max_points, max_markers=max_markers,
                     max_symbols=max_symbols, max_candles=max_candles)
    png_path = FileSystems.join(output_dir, REPORT_PNG)
    html_path = FileSystems.join(output_dir, REPORT_HTML)
    with FileSystems.create(png_path) as stream:
        stream.write(png)
    with FileSystems.create(html_path) as stream:
        stream.write(render_html(data, png, width_px).encode("utf-8"))
    LOG.info("report: wrote %s and %s", png_path, html_path)
    return png_path, html_path
