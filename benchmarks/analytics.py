"""Trade analytics throughput: the pipeline's join + features + scoring against pandas, in the same run.

Generates N quotes (``beam_pipeline.devtools.samples.generate``, through its CLI) and N trades made from
them (``beam_pipeline.devtools.samples.make_trades``: ``python -m beam_pipeline.devtools.samples --trades-from
QUOTES.csv``), both without malformed rows, timed on their own and part of neither figure, then runs

* the pipeline, as its own process with the whole command timed (start-up included)::

      python -m beam_pipeline --runner DirectRunner --progress off --input Q --trades T \\
          --max_quote_age 1s --features sliding:10s,1s --output_dir OUT

  (the bundled model scores every feature window), and once more with ``--model none`` (no
  scoring) and once without ``--trades`` (the quote path alone), so the table shows where the
  time goes;
* the same work in pandas, in this process, timed end to end: ``pd.read_csv`` of both files,
  timestamps parsed, a minimal validation (numeric coercion, rows with a bad field dropped, trade
  ids deduplicated), the latency filter (a quote with ``latency_ms`` over 20 makes no mid) with
  ``mid_prices.log`` (``DataFrame.to_csv`` of timestamp and mid) and ``errors.log`` equivalents
  written in arrival order; then
  ``pandas.merge_asof`` (backward, by symbol, tolerance 1 s, exact matches allowed; quotes in
  ``(timestamp, arrival)`` order so the last arrived of equal timestamps prevails), effective
  spread and quote age, ``trades_enriched.jsonl`` / ``unmatched_trades.jsonl`` written with
  ``DataFrame.to_json(orient="records", lines=True)``; the sliding-window features the pandas way
  (``groupby`` symbol and 1 s bucket, a complete bucket index per symbol, ``rolling(10)``: the
  window ``[s, s + 10 s)`` is the 10 buckets ending at ``s + 9 s``, emitted when it holds a quote or
  a trade, as Beam's ``SlidingWindows(10 s, 1 s)``), the robust z-score of
  :mod:`transforms.trades.scoring` computed with pandas from the bundled model's JSON (median and scale
  per symbol, ``"*"`` for others, clip, threshold) and ``features.jsonl`` / ``scores.jsonl``
  written. When there is no bundled model file, the medians and scales are fitted on the fly per
  symbol (median, ``1.4826 * MAD`` with the model's minimum scales; threshold the 0.99 quantile),
  which is a little more work than reading them.

pandas is reported twice: *end to end* (read CSVs ... write JSON, the figure the pipeline is
measured against) and *core* (merge_asof + features + score, data already parsed and in memory).
The targets (issue 22): the pipeline at least 1.5x pandas end to end (pipeline seconds <= pandas
seconds / 1.5) at 1,000,000 trades, and, the join and features running per event-time range, the
pipeline's peak RSS at 3,000,000 quotes + 3,000,000 trades (``--memory-rows``, generated the same
way; 0 skips that run) within 1.3x of its peak at 1,000,000.

Peak memory of the pipeline is the largest RSS sum of its process tree (psutil, every 50 ms, as
in ``benchmarks/runner_comparison.py``); for pandas it is this process's RSS, sampled the same way during
the pandas run. After the runs the outputs are compared: the same trade ids matched, mids equal
within 1e-9 relative, the same quote timestamps, and per ``(symbol, window_end)`` the same
windows with equal quote and trade counts, volume and VWAP (1e-9 relative), and the same scores
(1e-6 relative: pandas' rolling sums differ from the pipeline's per-window sums in the last digits)
and anomaly flags.

    python benchmarks/analytics.py                     # 1,000,000 quotes and trades
    python benchmarks/analytics.py --rows 100000 --pandas-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from replay_throughput import ROOT, exit_status, make_workdir
from runner_comparison import measure  # sibling helpers

LATENCY_THRESHOLD_MS = 20  # the pipeline's default --latency_threshold_ms
MAX_QUOTE_AGE = "1s"
FEATURES = "sliding:10s,1s"
WINDOW_SIZE_S, WINDOW_PERIOD_S = 10, 1
MODEL_PATH = ROOT / "beam_pipeline" / "data" / "models" / "market_anomaly.json"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
SPEEDUP_TARGET = 1.5  # pandas end-to-end seconds / pipeline seconds
MEMORY_TARGET = 1.3  # pipeline peak RSS at --memory-rows / at --rows

#: The model's inputs and their minimum scales (transforms.trades.scoring.INPUTS), for the fitted fallback.
MODEL_INPUTS = {
    "abs_return_bps": 0.01, "realized_vol_bps": 0.01, "spread_bps": 0.01, "effective_spread_bps": 0.01,
    "abs_imbalance": 0.01, "log_quotes": 0.1, "log_trades": 0.1, "log_volume": 0.1,
}  # fmt: skip
ENRICHED_COLUMNS = [
    "trade_id", "timestamp", "symbol", "price", "size", "side", "sign", "mid", "spread", "effective_spread_bps",
    "quote_timestamp", "quote_age_ms",
]  # fmt: skip
FEATURE_COLUMNS = [
    "symbol", "window_start", "window_end", "quotes", "trades", "mid_log_return", "realized_vol", "mean_spread",
    "max_spread", "mean_spread_bps", "volume", "buy_volume", "sell_volume", "imbalance", "vwap",
    "mean_effective_spread_bps",
]  # fmt: skip


# --------------------------------------------------------------------------- inputs


def quotes_file(workdir: Path, rows: int, seed: int) -> Path:
    path = workdir / f"quotes_{rows}_{seed}.csv"
    if not path.exists():
        print(f"generating {rows:,} quotes -> {path}", file=sys.stderr, flush=True)
        subprocess.run(  # samples.generate, through its CLI: this process stays free of Beam (its RSS is pandas')
            [sys.executable, "-m", "beam_pipeline.devtools.samples", str(path), "--rows", str(rows), "--seed", str(seed)],
            cwd=ROOT, check=True,
        )
    return path


def trades_file(workdir: Path, quotes: Path, rows: int, seed: int) -> Path:
    """N trades made from the quote file by the repository's trade generator (its CLI, in a subprocess)."""
    path = workdir / f"trades_{rows}_{seed}.csv"
    if not path.exists():
        print(f"generating {rows:,} trades -> {path}", file=sys.stderr, flush=True)
        subprocess.run(
            [sys.executable, "-m", "beam_pipeline.devtools.samples", "--trades-from", str(quotes), "--rows", str(rows),
             "--seed", str(seed), str(path)],
            cwd=ROOT, check=True,
        )
    return path


def data_rows(path: Path) -> int:
    with path.open("rb") as stream:
        return sum(1 for line in stream if line.strip()) - 1


# --------------------------------------------------------------------------- pandas


@dataclass
class PandasResult:
    phases: dict[str, float] = field(default_factory=dict)
    trades_in: int = 0
    enriched: pd.DataFrame | None = None
    unmatched: int = 0
    features: pd.DataFrame | None = None
    scores: pd.DataFrame | None = None
    peak_rss_mb: float = 0.0
    model_source: str = ""

    @property
    def end_to_end(self) -> float:
        return sum(self.phases.values())

    @property
    def core(self) -> float:
        return sum(self.phases[name] for name in ("merge_asof", "features", "score"))


class _Clock:
    def __init__(self, phases: dict[str, float]):
        self._phases = phases
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self._phases[name] = self._phases.get(name, 0.0) + now - self._last
        self._last = now


def _text_ts(ts: pd.Series) -> pd.Series:
    return ts.dt.strftime(TIME_FORMAT).str[:-3]


def _latency_us(text: pd.Series) -> pd.Series:
    """Latencies in ms (plain digits, up to 3 decimals) as integer µs, NaN where the rule rejects."""
    parts = text.str.strip().str.extract(r"^(\d{1,12})(?:\.(\d{0,3})0*)?$")
    whole = pd.to_numeric(parts[0], errors="coerce")
    micros = pd.to_numeric(parts[1].fillna("").str.ljust(3, "0"), errors="coerce")
    return whole * 1000 + micros


def _latency_text(micros: pd.Series) -> pd.Series:
    """µs as ms without trailing zeros (20500: ``20.5``), as errors.log writes it."""
    micros = micros.astype("int64")
    fraction = (micros % 1000).astype(str).str.zfill(3).str.rstrip("0")
    return (micros // 1000).astype(str) + np.where(fraction == "", "", "." + fraction)


def _read_quotes(path: Path) -> pd.DataFrame:
    q = pd.read_csv(path, dtype={"timestamp": str, "symbol": str, "latency_ms": str}, keep_default_na=False,
                    na_values=[""])
    q["ts"] = pd.to_datetime(q["timestamp"], format=TIME_FORMAT, errors="coerce")
    for name in ("bid_price", "ask_price", "bid_size", "ask_size"):
        q[name] = pd.to_numeric(q[name], errors="coerce")
    q["latency_us"] = _latency_us(q["latency_ms"])
    valid = (
        q["ts"].notna() & q["symbol"].notna() & (q["bid_price"] > 0) & (q["ask_price"] >= q["bid_price"])
        & (q["bid_size"] >= 0) & (q["ask_size"] >= 0) & q["latency_us"].notna()
    )  # fmt: skip
    q = q[valid]
    q["arrival"] = q["ts"] + pd.to_timedelta(q["latency_us"].astype("int64"), unit="us")
    q["mid"] = (q["bid_price"] + q["ask_price"]) / 2
    q["spread"] = q["ask_price"] - q["bid_price"]
    return q


def _read_trades(path: Path) -> tuple[pd.DataFrame, int]:
    t = pd.read_csv(path, dtype={"timestamp": str, "symbol": str, "side": str, "trade_id": str},
                    keep_default_na=False, na_values=[""])
    rows = len(t)
    t["ts"] = pd.to_datetime(t["timestamp"], format=TIME_FORMAT, errors="coerce")
    for name in ("price", "size"):
        t[name] = pd.to_numeric(t[name], errors="coerce")
    t["side"] = t["side"].str.strip().str.lower()
    valid = (t["ts"].notna() & t["symbol"].notna() & t["trade_id"].notna() & (t["price"] > 0) & (t["size"] > 0)
             & t["side"].isin(["buy", "sell"]))
    if "latency_ms" in t:
        valid &= _latency_us(t["latency_ms"].astype(str)).notna()
    t = t[valid].drop_duplicates("trade_id", keep="first")
    t["sign"] = np.where(t["side"] == "buy", 1, -1).astype("int8")
    return t, rows


def _write_mid_prices(q: pd.DataFrame, out: Path) -> pd.DataFrame:
    """mid_prices.log / errors.log equivalents in arrival order; returns the priced quotes."""
    q = q.sort_values("arrival", kind="stable")
    priced = q["latency_us"] <= LATENCY_THRESHOLD_MS * 1000
    q.loc[priced, ["timestamp", "mid"]].to_csv(out / "mid_prices.log", header=False, index=False)
    late = q.loc[~priced]
    errors = ("No mid price at " + late["timestamp"] + " as latency " + _latency_text(late["latency_us"])
              + f"ms is bigger than {LATENCY_THRESHOLD_MS}ms")
    (out / "errors.log").write_text("".join(line + "\n" for line in errors))
    return q[priced]


def _join(trades: pd.DataFrame, quotes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """merge_asof: (every trade with its quote or NaN, the matched ones, the quotes in event order)."""
    quotes = quotes.sort_values(["ts", "arrival"], kind="stable")  # equal timestamps: the last arrived prevails
    right = quotes[["ts", "symbol", "mid", "spread", "timestamp"]].rename(columns={"timestamp": "quote_timestamp"})
    right["quote_ts"] = right["ts"]
    left = trades.sort_values("ts", kind="stable")
    merged = pd.merge_asof(left, right, on="ts", by="symbol", direction="backward",
                           tolerance=pd.Timedelta(MAX_QUOTE_AGE), allow_exact_matches=True)
    merged["effective_spread_bps"] = 2 * (merged["price"] - merged["mid"]).abs() / merged["mid"] * 1e4
    merged["quote_age_ms"] = (merged["ts"] - merged["quote_ts"]) / pd.Timedelta(milliseconds=1)
    matched = merged[merged["mid"].notna()]
    return merged, matched, quotes


def _unmatched(merged: pd.DataFrame, quotes: pd.DataFrame) -> pd.DataFrame:
    """The trades without a quote, with why (an earlier quote exists but is too old, or none)."""
    left = merged.loc[merged["mid"].isna(), ["ts", "trade_id", "timestamp", "symbol", "price", "size", "side", "sign"]]
    anyage = pd.merge_asof(left, quotes[["ts", "symbol"]].assign(seen=True), on="ts", by="symbol",
                           direction="backward", allow_exact_matches=True)
    anyage["reason"] = np.where(anyage["seen"].notna(), "stale_quote", "no_quote")
    return anyage.drop(columns=["ts", "seen"])


def _features(quotes: pd.DataFrame, trades: pd.DataFrame) -> pd.DataFrame:
    """Sliding windows of 10 s every 1 s per symbol: 1 s buckets, complete index, rolling(10)."""
    size = WINDOW_SIZE_S // WINDOW_PERIOD_S
    period = f"{WINDOW_PERIOD_S}s"
    # Quotes (event order): per bucket count, sums, max, first and last mid, and the squared log
    # return into the bucket's first quote (subtracted when that quote opens a window: its
    # predecessor is outside).
    q = quotes[["symbol", "ts", "mid", "spread"]].copy()
    q["spread_bps"] = q["spread"] / q["mid"] * 1e4
    q["r2"] = (np.log(q["mid"] / q.groupby("symbol")["mid"].shift(1)) ** 2).fillna(0.0)
    q["bucket"] = q["ts"].dt.floor(period)
    qb = q.groupby(["symbol", "bucket"]).agg(
        quotes=("mid", "size"), first_mid=("mid", "first"), last_mid=("mid", "last"), first_r2=("r2", "first"),
        r2=("r2", "sum"), spread=("spread", "sum"), max_spread=("spread", "max"), spread_bps=("spread_bps", "sum"),
    )  # fmt: skip
    t = trades[["symbol", "ts", "price", "size", "sign", "effective_spread_bps"]].copy()
    t["bucket"] = t["ts"].dt.floor(period)
    t["buy"] = t["size"].where(t["sign"] > 0, 0.0)
    t["sell"] = t["size"].where(t["sign"] < 0, 0.0)
    t["notional"] = t["price"] * t["size"]
    tb = t.groupby(["symbol", "bucket"]).agg(
        trades=("size", "size"), volume=("size", "sum"), buy=("buy", "sum"), sell=("sell", "sum"),
        notional=("notional", "sum"), bps=("effective_spread_bps", "sum"), bps_n=("effective_spread_bps", "count"),
    )  # fmt: skip
    buckets = qb.join(tb, how="outer")
    sums = ["quotes", "r2", "spread", "spread_bps", "trades", "volume", "buy", "sell", "notional", "bps", "bps_n"]
    frames = []
    for symbol, frame in buckets.groupby(level="symbol"):
        frame = frame.droplevel("symbol")
        # Row b is the window ending with bucket b; every bucket from 9 before the first (so that
        # the first windows' start rows exist) to 9 past the last.
        reach = pd.Timedelta(seconds=WINDOW_SIZE_S - WINDOW_PERIOD_S)
        full = pd.date_range(frame.index.min() - reach, frame.index.max() + reach, freq=period)
        frame = frame.reindex(full)
        frame[sums] = frame[sums].fillna(0.0)
        rolled = frame[sums].rolling(size, min_periods=1).sum()
        rolled["max_spread"] = frame["max_spread"].rolling(size, min_periods=1).max()
        last_mid = frame["last_mid"].ffill()
        first_mid = frame["first_mid"].bfill().shift(size - 1)  # first quote at or after the window's start
        first_r2 = frame["first_r2"].bfill().shift(size - 1)
        out = pd.DataFrame(index=full)
        out["symbol"] = symbol
        out["window_start_ts"] = full - pd.Timedelta(seconds=WINDOW_SIZE_S - WINDOW_PERIOD_S)
        out["window_end_ts"] = full + pd.Timedelta(period)
        quotes_n = rolled["quotes"]
        has_q = quotes_n > 0
        out["quotes"] = quotes_n.astype("int64")
        out["trades"] = rolled["trades"].astype("int64")
        out["mid_log_return"] = np.log(last_mid / first_mid).where(has_q)
        out["realized_vol"] = np.sqrt((rolled["r2"] - first_r2).clip(lower=0.0)).where(has_q)
        out["mean_spread"] = (rolled["spread"] / quotes_n).where(has_q)
        out["max_spread"] = rolled["max_spread"].where(has_q)
        out["mean_spread_bps"] = (rolled["spread_bps"] / quotes_n).where(has_q)
        volume = rolled["volume"]
        has_v = volume > 0
        out["volume"] = volume
        out["buy_volume"] = rolled["buy"]
        out["sell_volume"] = rolled["sell"]
        out["imbalance"] = ((rolled["buy"] - rolled["sell"]) / volume).where(has_v)
        out["vwap"] = (rolled["notional"] / volume).where(has_v)
        out["mean_effective_spread_bps"] = (rolled["bps"] / rolled["bps_n"]).where(rolled["bps_n"] > 0)
        frames.append(out[(out["quotes"] > 0) | (out["trades"] > 0)])
    features = pd.concat(frames, ignore_index=True)
    return features.sort_values(["window_end_ts", "symbol"], kind="stable", ignore_index=True)


def _model_inputs(f: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "abs_return_bps": f["mid_log_return"].abs() * 1e4,
        "realized_vol_bps": f["realized_vol"] * 1e4,
        "spread_bps": f["mean_spread_bps"],
        "effective_spread_bps": f["mean_effective_spread_bps"],
        "abs_imbalance": f["imbalance"].abs(),
        "log_quotes": np.log1p(f["quotes"]),
        "log_trades": np.log1p(f["trades"]),
        "log_volume": np.log1p(f["volume"]),
    })


def _fitted_model(inputs: pd.DataFrame, symbols: pd.Series) -> dict:
    """Per-symbol median and 1.4826 * MAD (at least the input's min scale): the fallback model."""
    floors = pd.Series(MODEL_INPUTS)
    grouped = inputs.groupby(symbols.to_numpy())
    median = grouped.median()
    mad = (inputs - median.reindex(symbols.to_numpy()).to_numpy()).abs().groupby(symbols.to_numpy()).median()
    scale = (1.4826 * mad).clip(lower=floors, axis=1).fillna(floors)
    pooled_median = inputs.median().fillna(0.0)
    pooled_scale = (1.4826 * (inputs - pooled_median).abs().median()).clip(lower=floors).fillna(floors)
    entries = {s: {"median": median.loc[s].fillna(pooled_median).to_dict(), "scale": scale.loc[s].to_dict()}
               for s in median.index}
    entries["*"] = {"median": pooled_median.to_dict(), "scale": pooled_scale.to_dict()}
    return {"name": "market_anomaly", "version": "fitted-in-benchmark", "clip": 10.0, "threshold": None,
            "symbols": entries}


def _score(features: pd.DataFrame, model_path: Path | None) -> tuple[pd.DataFrame, str]:
    inputs = _model_inputs(features)
    inputs = inputs.where(np.isfinite(inputs))
    if model_path is not None and model_path.exists():
        model, source = json.loads(model_path.read_text()), "bundled model"
    else:
        model, source = _fitted_model(inputs, features["symbol"]), "fitted on the fly"
    names = list(MODEL_INPUTS)
    entries = model["symbols"]
    median = pd.DataFrame({s: e["median"] for s, e in entries.items()}).T[names]
    scale = pd.DataFrame({s: e["scale"] for s, e in entries.items()}).T[names]
    keys = features["symbol"].where(features["symbol"].isin(median.index), "*").to_numpy()
    clip = float(model.get("clip", 10.0))
    z = ((inputs[names].to_numpy() - median.loc[keys].to_numpy()) / scale.loc[keys].to_numpy()).clip(-clip, clip)
    z = np.nan_to_num(z, nan=0.0)
    score = np.sqrt((z**2).sum(axis=1) / len(names))
    threshold = model["threshold"] if model["threshold"] is not None else float(np.quantile(score, 0.99))
    scores = pd.DataFrame({
        "symbol": features["symbol"], "window_start_ts": features["window_start_ts"],
        "window_end_ts": features["window_end_ts"], "score": score, "anomaly": score > threshold,
        "model": model["name"], "model_version": model["version"],
    })  # fmt: skip
    return scores, source


def _write_windows(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    frame = frame.assign(window_start=_text_ts(frame["window_start_ts"]), window_end=_text_ts(frame["window_end_ts"]))
    frame[columns].to_json(path, orient="records", lines=True, double_precision=15)


def run_pandas(quotes_csv: Path, trades_csv: Path, out: Path, model_path: Path | None) -> PandasResult:
    """The pipeline's work in pandas; phases timed (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    result = PandasResult()
    clock = _Clock(result.phases)
    quotes = _read_quotes(quotes_csv)
    trades, result.trades_in = _read_trades(trades_csv)
    clock.lap("read + parse + validate")
    priced = _write_mid_prices(quotes, out)
    clock.lap("write mid_prices / errors")
    merged, matched, priced = _join(trades, priced)
    clock.lap("merge_asof")
    matched[ENRICHED_COLUMNS].to_json(out / "trades_enriched.jsonl", orient="records", lines=True, double_precision=15)
    unmatched = _unmatched(merged, priced)
    unmatched.to_json(out / "unmatched_trades.jsonl", orient="records", lines=True, double_precision=15)
    clock.lap("write trades JSON")
    features = _features(priced, merged)
    clock.lap("features")
    scores, result.model_source = _score(features, model_path)
    clock.lap("score")
    _write_windows(features, FEATURE_COLUMNS, out / "features.jsonl")
    _write_windows(scores, ["symbol", "window_start", "window_end", "score", "anomaly", "model", "model_version"],
                   out / "scores.jsonl")
    clock.lap("write features / scores JSON")
    result.enriched, result.unmatched, result.features, result.scores = matched, len(unmatched), features, scores
    return result


def measure_pandas(quotes_csv: Path, trades_csv: Path, out: Path, model_path: Path | None) -> PandasResult:
    """:func:`run_pandas` with this process's peak RSS sampled every 50 ms."""
    me = psutil.Process()
    peak = [me.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], me.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run_pandas(quotes_csv, trades_csv, out, model_path)
    finally:
        done.set()
        sampler.join()
    result.peak_rss_mb = max(peak[0], me.memory_info().rss) / 2**20
    return result


# --------------------------------------------------------------------------- content check


def _read_jsonl(path: Path) -> pd.DataFrame:
    import pyarrow.json as pa_json

    return pa_json.read_json(path).to_pandas()


def _close(a: pd.Series, b: pd.Series, rel: float) -> np.ndarray:
    a, b = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        near = np.abs(a - b) <= rel * np.maximum(np.abs(a), np.abs(b))
    return both_nan | near


def content_check(pipeline_out: Path, result: PandasResult, limit: int = 5) -> list[str]:
    """Differences between the pipeline's outputs and pandas' (empty: they agree)."""
    problems: list[str] = []
    got = _read_jsonl(pipeline_out / "trades_enriched.jsonl").set_index("trade_id")
    want = result.enriched.set_index("trade_id")
    only_pipeline, only_pandas = got.index.difference(want.index), want.index.difference(got.index)
    if len(only_pipeline) or len(only_pandas):
        problems.append(f"matched trades differ: {len(only_pipeline):,} only in the pipeline "
                        f"(e.g. {list(only_pipeline[:limit])}), {len(only_pandas):,} only in pandas "
                        f"(e.g. {list(only_pandas[:limit])})")
    common = got.index.intersection(want.index)
    g, w = got.loc[common], want.loc[common]
    bad = ~_close(g["mid"], w["mid"], 1e-9)
    if bad.any():
        sample = pd.DataFrame({"pipeline": g["mid"][bad], "pandas": w["mid"][bad]}).head(limit)
        problems.append(f"{bad.sum():,} mids differ, e.g.\n{sample}")
    stamps = g["quote_timestamp"].astype(str).to_numpy() != w["quote_timestamp"].astype(str).to_numpy()
    if stamps.any():
        sample = pd.DataFrame({"pipeline": g["quote_timestamp"][stamps], "pandas": w["quote_timestamp"][stamps]})
        problems.append(f"{stamps.sum():,} quote timestamps differ, e.g.\n{sample.head(limit)}")

    features = _read_jsonl(pipeline_out / "features.jsonl")
    mine = result.features.assign(window_end=_text_ts(result.features["window_end_ts"]))
    key = ["symbol", "window_end"]
    joined = features.merge(mine, on=key, how="outer", suffixes=("_pipeline", "_pandas"), indicator=True)
    sides = joined["_merge"].value_counts()
    if sides.get("left_only", 0) or sides.get("right_only", 0):
        odd = joined.loc[joined["_merge"] != "both", [*key, "_merge"]].head(limit)
        problems.append(f"feature windows differ: {sides.get('left_only', 0):,} only in the pipeline, "
                        f"{sides.get('right_only', 0):,} only in pandas, e.g.\n{odd}")
    both = joined[joined["_merge"] == "both"]
    for name, rel in (("quotes", 0.0), ("trades", 0.0), ("volume", 1e-9), ("vwap", 1e-9)):
        bad = ~_close(both[f"{name}_pipeline"], both[f"{name}_pandas"], rel)
        if bad.any():
            sample = both.loc[bad, [*key, f"{name}_pipeline", f"{name}_pandas"]].head(limit)
            problems.append(f"{bad.sum():,} windows differ in {name}, e.g.\n{sample}")

    if (pipeline_out / "scores.jsonl").exists():
        scores = _read_jsonl(pipeline_out / "scores.jsonl")
        mine = result.scores.assign(window_end=_text_ts(result.scores["window_end_ts"]))
        both = scores.merge(mine, on=key, suffixes=("_pipeline", "_pandas"))
        bad = ~_close(both["score_pipeline"], both["score_pandas"], 1e-6)
        flags = both["anomaly_pipeline"].to_numpy() != both["anomaly_pandas"].to_numpy()
        if len(both) != len(scores) or bad.any() or flags.any():
            problems.append(f"scores differ: {len(scores):,} pipeline rows, {len(both):,} paired, {bad.sum():,} "
                            f"scores beyond 1e-6 relative, {flags.sum():,} anomaly flags")
    return problems


# --------------------------------------------------------------------------- main

PIPELINE = [sys.executable, "-m", "beam_pipeline", "--runner", "DirectRunner", "--progress", "off"]


def pipeline_command(quotes: Path, trades: Path | None, out: Path, *extra: str) -> list[str]:
    command = [*PIPELINE, "--input", str(quotes), "--output_dir", str(out)]
    if trades is not None:
        command += ["--trades", str(trades), "--max_quote_age", MAX_QUOTE_AGE, "--features", FEATURES, *extra]
    return command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="quotes, and trades (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the pipeline runs with --model none and without --trades")
    parser.add_argument("--pandas-only", action="store_true", help="run pandas alone (no pipeline, no check)")
    parser.add_argument("--memory-rows", type=int, default=None,
                        help="also run the pipeline on this many quotes and trades, for its peak RSS (default 3 x --rows; "
                             "0: skip)")
    args = parser.parse_args()

    workdir = make_workdir(args.workdir, "analytics_bench_").resolve()
    started = time.perf_counter()
    cached = all((workdir / f"{kind}_{args.rows}_{args.seed}.csv").exists() for kind in ("quotes", "trades"))
    quotes = quotes_file(workdir, args.rows, args.seed)
    trades = trades_file(workdir, quotes, args.rows, args.seed)
    generation = time.perf_counter() - started
    n_trades = data_rows(trades)
    model = MODEL_PATH if MODEL_PATH.exists() else None

    runs = []  # (label, seconds, trades/s or None, peak MB text)
    pipeline_out = workdir / "beam"
    if not args.pandas_only:
        print("running the pipeline ...", file=sys.stderr, flush=True)
        beam = measure("pipeline", n_trades, pipeline_command(quotes, trades, pipeline_out))
        runs.append(("Beam pipeline (DirectRunner), join + features + scoring", beam.seconds, beam.rows_per_second,
                     f"{beam.peak_tree_mb:,.0f} MB ({beam.processes} proc)"))
    print("running pandas ...", file=sys.stderr, flush=True)
    result = measure_pandas(quotes, trades, workdir / "pandas", model)
    pandas_rate = n_trades / result.end_to_end
    if not args.pandas_only and not args.no_breakdown:
        print("running the pipeline with --model none ...", file=sys.stderr, flush=True)
        command = pipeline_command(quotes, trades, workdir / "beam_nomodel", "--model", "none")
        plain = measure("no model", n_trades, command)
        runs.append(("Beam pipeline, --model none (join + features)", plain.seconds, plain.rows_per_second,
                     f"{plain.peak_tree_mb:,.0f} MB ({plain.processes} proc)"))
        print("running the pipeline without --trades ...", file=sys.stderr, flush=True)
        alone = measure("quotes only", args.rows, pipeline_command(quotes, None, workdir / "beam_quotes"))
        runs.append(("Beam pipeline, quotes only (no --trades)", alone.seconds, None,
                     f"{alone.peak_tree_mb:,.0f} MB ({alone.processes} proc)"))
    runs.append(("pandas end to end (read CSVs, write JSON)", result.end_to_end, pandas_rate,
                 f"{result.peak_rss_mb:,.0f} MB (this proc)"))
    runs.append(("pandas core (merge_asof + features + score)", result.core, n_trades / result.core, "-"))

    print(f"\ntrade analytics, {args.rows:,} quotes ({quotes.stat().st_size / 1e6:,.1f} MB) and {n_trades:,} trades "
          f"({trades.stat().st_size / 1e6:,.1f} MB), {os.cpu_count()} cores; pipeline: whole command timed "
          f"(start-up included); pandas {pd.__version__}: in process")
    print("inputs: already in the workdir" if cached else f"inputs generated in {generation:.2f} s (not in any figure)")
    print(f"| {'run':<56} | {'seconds':>7} | {'trades/s':>9} | {'vs pandas e2e':>13} | {'peak RSS':>22} |")
    print(f"|{'-' * 58}|{'-' * 8}:|{'-' * 10}:|{'-' * 14}:|{'-' * 23}:|")
    for label, seconds, rate, memory in runs:
        rate_text = f"{rate:>9,.0f}" if rate else f"{'-':>9}"
        ratio = f"{rate / pandas_rate:>12.2f}x" if rate else f"{'-':>13}"
        print(f"| {label:<56} | {seconds:>7.2f} | {rate_text} | {ratio} | {memory:>22} |")
    print("pandas phases: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.phases.items())
          + f"; scores: {result.model_source}")
    print(f"pandas: {result.trades_in:,} trades read, {len(result.enriched):,} matched, {result.unmatched:,} "
          f"unmatched, {len(result.features):,} feature windows")
    if args.pandas_only:
        return 0

    metrics = json.loads((pipeline_out / "metrics.json").read_text())
    print(f"pipeline: run_seconds {metrics.get('run_seconds', float('nan')):.2f} (metrics.json, after start-up); "
          + ", ".join(f"{name} {metrics[name]:,}" for name in
                      ("trades_in", "trades_enriched", "trades_unmatched", "trades_dead_lettered",
                       "trades_duplicates", "feature_windows", "windows_scored") if name in metrics))
    speedup = result.end_to_end / beam.seconds
    print(f"pipeline vs pandas end to end: {beam.seconds:.2f} s vs {result.end_to_end:.2f} s = {speedup:.2f}x "
          f"(target >= {SPEEDUP_TARGET}x) -> {'met' if speedup >= SPEEDUP_TARGET else 'NOT met'}")
    problems = content_check(pipeline_out, result)
    print("content check: ok" if not problems else "content check: DIFFERENT\n" + "\n".join(problems))
    memory_rows = 3 * args.rows if args.memory_rows is None else args.memory_rows
    if memory_rows:
        big_quotes = quotes_file(workdir, memory_rows, args.seed)
        big_trades = trades_file(workdir, big_quotes, memory_rows, args.seed)
        print(f"running the pipeline on {memory_rows:,} quotes and trades ...", file=sys.stderr, flush=True)
        big = measure("memory", memory_rows, pipeline_command(big_quotes, big_trades, workdir / "beam_big"))
        growth = big.peak_tree_mb / beam.peak_tree_mb
        print(f"peak RSS: {beam.peak_tree_mb:,.0f} MB at {n_trades:,} trades, {big.peak_tree_mb:,.0f} MB at "
              f"{data_rows(big_trades):,} ({big.seconds:.2f} s) = {growth:.2f}x (target <= {MEMORY_TARGET}x) -> "
              f"{'met' if growth <= MEMORY_TARGET else 'NOT met'}")
    return exit_status(not problems, workdir, bool(args.workdir))


if __name__ == "__main__":
    sys.exit(main())
