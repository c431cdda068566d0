"""The quotes job with ``--trades``: the as-of join against pandas, exactly-once effect, balances, flags.

The join is checked against an independent computation: the sample files are read here with the
``csv`` module, the rows the job dead-lettered (by file and line) and the quotes over the latency
threshold are left out, and ``pandas.merge_asof`` (backward, by symbol, tolerance = the maximum
quote age) pairs each trade with its quote.
"""

from __future__ import annotations

import csv
import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from beam_pipeline import cli
from beam_pipeline.config import bundled_sample
from tests.conftest import assert_usage_errors

pd = pytest.importorskip("pandas")

QUOTES = Path(bundled_sample())
TRADES = Path(bundled_sample("trades_sample.csv"))
DATA_FILES = (
    "mid_prices.log", "errors.log", "dead_letter.jsonl", "trades_enriched.jsonl", "unmatched_trades.jsonl",
    "trades_dead_letter.jsonl", "features.jsonl", "scores.jsonl",
)


def _run(out: Path, *args: str) -> dict:
    assert cli.main(["--output_dir", str(out), "--progress", "off", *args]) == 0
    return json.loads((out / "metrics.json").read_text())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(physical line, row) of every data row of a CSV file (the header is line 1)."""
    with path.open(newline="") as stream:
        lines = stream.read().split("\n")
    header = lines[0].split(",")
    rows = []
    for number, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        fields = next(csv.reader([text]))
        if len(fields) == len(header):
            rows.append((number, dict(zip(header, fields))))
    return rows


def _rejected_lines(path: Path, source: Path) -> set[int]:
    return {d["line"] for d in _jsonl(path) if Path(d["source"]) == source}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("analytics")
    metrics = _run(out, "--trades", str(TRADES))
    return out, metrics


def test_the_join_on_the_sample_equals_pandas_merge_asof(sample_run):
    out, metrics = sample_run
    threshold_ms = metrics["latency_threshold_ms"]
    rejected = _rejected_lines(out / "dead_letter.jsonl", QUOTES)
    quotes = pd.DataFrame([
        {
            "line": line,
            "symbol": row["symbol"],
            "ts": pd.Timestamp(row["timestamp"]),
            "arrival": pd.Timestamp(row["timestamp"]) + pd.Timedelta(milliseconds=int(row["latency_ms"])),
            "quote_timestamp": row["timestamp"],
            "mid": float((Decimal(row["bid_price"]) + Decimal(row["ask_price"])) / 2),
        }
        for line, row in _rows(QUOTES)
        if line not in rejected and int(row["latency_ms"]) <= threshold_ms
    ])
    # Among quotes with the same timestamp the one that arrived last prevails: merge_asof takes the last row.
    quotes = quotes.sort_values(["ts", "arrival", "line"], kind="stable").reset_index(drop=True)
    rejected_trades = _rejected_lines(out / "trades_dead_letter.jsonl", TRADES)
    trades = pd.DataFrame([
        {"trade_id": row["trade_id"], "symbol": row["symbol"], "ts": pd.Timestamp(row["timestamp"]),
         "price": float(row["price"])}
        for line, row in _rows(TRADES) if line not in rejected_trades
    ]).sort_values("ts", kind="stable")
    max_age = pd.Timedelta(metrics["max_quote_age"])
    expected = pd.merge_asof(
        trades, quotes[["ts", "symbol", "mid", "quote_timestamp"]], on="ts", by="symbol",
        direction="backward", tolerance=max_age, allow_exact_matches=True,
    )
    matched = expected[expected["mid"].notna()].set_index("trade_id")
    enriched = {row["trade_id"]: row for row in _jsonl(out / "trades_enriched.jsonl")}
    unmatched = {row["trade_id"]: row for row in _jsonl(out / "unmatched_trades.jsonl")}

    assert set(enriched) == set(matched.index)
    assert set(unmatched) == set(expected["trade_id"]) - set(matched.index)
    assert len(enriched) > 100 and len(unmatched) >= 3  # the sample exercises both outcomes
    for trade_id, want in matched.iterrows():
        got = enriched[trade_id]
        assert got["mid"] == pytest.approx(want["mid"], rel=1e-12), trade_id
        assert got["quote_timestamp"] == want["quote_timestamp"], trade_id
        age_ms = (want["ts"] - pd.Timestamp(want["quote_timestamp"])) / pd.Timedelta(milliseconds=1)
        assert got["quote_age_ms"] == pytest.approx(age_ms), trade_id
        bps = 2 * abs(want["price"] - want["mid"]) / want["mid"] * 1e4
        assert got["effective_spread_bps"] == pytest.approx(bps, rel=1e-9, abs=1e-9), trade_id
    # No quote at all before the trade, or only older ones than the maximum age.
    has_earlier = {
        trade_id for trade_id, symbol, ts in zip(trades["trade_id"], trades["symbol"], trades["ts"])
        if ((quotes["symbol"] == symbol) & (quotes["ts"] <= ts)).any()
    }
    for trade_id, row in unmatched.items():
        assert row["reason"] == ("stale_quote" if trade_id in has_earlier else "no_quote"), row


def test_trade_counts_balance_and_every_window_is_scored(sample_run):
    out, metrics = sample_run
    assert metrics["balanced"] and metrics["trades_balanced"] and metrics["scores_balanced"]
    lines = {name: len((out / name).read_text().splitlines()) for name in DATA_FILES}
    assert metrics["trades_in"] == (lines["trades_enriched.jsonl"] + lines["unmatched_trades.jsonl"]
                                    + lines["trades_dead_letter.jsonl"] + metrics["trades_duplicates"])
    assert metrics["trades_in"] == sum(1 for line in TRADES.read_text().splitlines()[1:] if line.strip())
    assert lines["scores.jsonl"] == lines["features.jsonl"] > 0
    features = _jsonl(out / "features.jsonl")
    scores = _jsonl(out / "scores.jsonl")
    assert [(f["symbol"], f["window_end"]) for f in features] == [(s["symbol"], s["window_end"]) for s in scores]
    assert {s["model_version"] for s in scores} == {metrics_model_version(metrics)}
    # Records in = out + filtered + dead letters (+ duplicates, none here) for quotes too.
    assert metrics["records_in"] == metrics["mid_prices"] + metrics["latency_filtered"] + metrics["dead_lettered"] + \
        metrics["duplicates"]


def test_a_trades_run_leaves_no_spilled_range_parts_behind(sample_run):
    out, _ = sample_run
    # The range parts live in the sink's staging folder until the outputs are published.
    assert not [path for path in out.rglob("*") if path.name.startswith(".tmp-") or path.suffix == ".arrow"]


def metrics_model_version(metrics: dict) -> str:
    return json.loads(Path(metrics["model"]).read_text())["version"]


def test_feeding_every_quote_and_trade_twice_changes_no_output(tmp_path):
    once, twice = tmp_path / "once", tmp_path / "twice"
    for directory in (once, twice):
        directory.mkdir()
    quotes, trades = tmp_path / "quotes", tmp_path / "trades"
    quotes.mkdir()
    trades.mkdir()
    shutil.copy(QUOTES, quotes / "a.csv")
    shutil.copy(TRADES, trades / "a.csv")
    single = _run(once / "out", "--input", str(quotes / "a.csv"), "--trades", str(trades / "a.csv"))
    shutil.copy(QUOTES, quotes / "b.csv")
    shutil.copy(TRADES, trades / "b.csv")
    double = _run(twice / "out", "--input", str(quotes / "*.csv"), "--trades", str(trades / "*.csv"))

    for name in DATA_FILES:
        assert (once / "out" / name).read_bytes() == (twice / "out" / name).read_bytes(), name
    assert double["records_in"] == 2 * single["records_in"]
    assert double["duplicates"] == single["records_in"]
    assert double["trades_in"] == 2 * single["trades_in"]
    assert double["trades_duplicates"] == single["trades_in"]
    assert double["balanced"] and double["trades_balanced"]


def test_without_dedup_the_second_copy_counts_twice(tmp_path):
    shutil.copy(TRADES, tmp_path / "a.csv")
    shutil.copy(TRADES, tmp_path / "b.csv")
    metrics = _run(tmp_path / "out", "--trades", str(tmp_path / "*.csv"), "--dedup_horizon", "0", "--model", "none")
    single = _run(tmp_path / "single", "--trades", str(tmp_path / "a.csv"), "--model", "none")
    assert metrics["trades_enriched"] == 2 * single["trades_enriched"]
    assert "duplicates" not in metrics and metrics["trades_duplicates"] == 0
    assert not (tmp_path / "out" / "scores.jsonl").exists()
    assert metrics["balanced"] and metrics["trades_balanced"]


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(["--max_quote_age", "1s"], ["--max_quote_age", "--trades"], id="age-without-trades"),
        pytest.param(["--model", "none"], ["--model", "--trades"], id="model-without-trades"),
        pytest.param(["--trades", str(TRADES), "--features", "fixed:1s"], ["--features", "sliding"], id="fixed"),
        pytest.param(["--trades", str(TRADES), "--features", "sliding:10s,3s"], ["--features", "whole"], id="period"),
        pytest.param(["--trades", str(TRADES), "--max_quote_age", "soon"], ["--max_quote_age"], id="bad-age"),
        pytest.param(["--trades", str(TRADES), "--streaming"], ["--trades", "batch"], id="streaming"),
        pytest.param(["--trades", str(TRADES), "--partition_by_tenant"], ["--partition_by_tenant"], id="tenants"),
        pytest.param(["--trades", "/nonexistent/trades*.csv"], ["--trades", "no such file"], id="missing"),
        pytest.param(["--trades", str(TRADES), "--model", "/nonexistent/model.json"], ["/nonexistent/model.json"],
                     id="missing-model"),
        pytest.param(["--trades", str(QUOTES)], ["price"], id="quote-file-as-trades"),
    ],
)
def test_bad_analytics_flags_are_usage_errors_a_line_each(args, expected, tmp_path, capsys):
    rc = cli.main(["--output_dir", str(tmp_path / "out"), *args])
    assert_usage_errors(rc, capsys.readouterr().err, expected)
    assert not (tmp_path / "out").exists()


def test_the_bundled_model_is_what_make_model_trains_on_the_samples(tmp_path):
    from beam_pipeline.devtools import train_model
    from beam_pipeline.options import BUNDLED_MODEL

    metrics = _run(tmp_path / "features", "--trades", str(TRADES), "--model", "none")
    assert "windows_scored" not in metrics
    trained = tmp_path / "model.json"
    assert train_model.main(["--features", str(tmp_path / "features" / "features.jsonl"), "--output", str(trained),
                             "--version", "1"]) == 0
    assert trained.read_bytes() == Path(str(BUNDLED_MODEL)).read_bytes()


def test_the_default_model_is_the_packaged_one_each_worker_resolves_itself():
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.options import BUNDLED_MODEL, QuoteOptions, analytics_config
    from transforms.trades.scoring import PackagedModel

    def config(*flags):
        return analytics_config(PipelineOptions(["--trades", "t.csv", *flags]).view_as(QuoteOptions))

    default = config()
    assert isinstance(default.model, PackagedModel) and default.model == BUNDLED_MODEL
    assert default.as_extra()["model"] == str(Path(bundled_sample()).parent / "models" / "market_anomaly.json")
    assert config("--model", "none").model is None
    assert config("--model", "m.json").model == "m.json"
