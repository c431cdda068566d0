"""The anomaly model (fit, score, artifact), its RunInference handler, ScoreFeatures and the training CLI."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from beam_pipeline.devtools import train_model
from transforms.trades import market, scoring
from transforms.trades.scoring import (
    FeatureModelHandler,
    ModelError,
    fit_model,
    load_model,
    save_model,
    score_chunk,
    score_features,
    training_digest,
)
from transforms.trades.stage import ScoreFeatures

REPO = Path(__file__).resolve().parents[3]
START_US = 1_717_398_000_000_000  # 2024-06-03 07:00:00 UTC
WINDOW_US = 10_000_000
TRAINED_ON = {"file": "synthetic", "rows": 0}
# symbol: (typical spread in bps, typical |return| scale in bps, mean quotes, mean trades)
PROFILES = {"EURUSD": (0.5, 0.3, 80, 6), "AAPL": (5.0, 2.0, 40, 3), "BTCUSD": (1.5, 8.0, 120, 10)}


def synthetic(rows: int = 400, seed: int = 1, symbols=("EURUSD", "AAPL", "BTCUSD"), outliers=()) -> pa.Table:
    """Feature rows of plausible windows, one batch per symbol; ``outliers``: (symbol, row) pairs made extreme."""
    rng = np.random.default_rng(seed)
    batches = []
    for symbol in symbols:
        spread, move, quote_rate, trade_rate = PROFILES[symbol]
        quotes = rng.poisson(quote_rate, rows).astype(np.int64)
        trades = rng.poisson(trade_rate, rows).astype(np.int64)
        returns = rng.normal(0, move, rows) * 1e-4
        vol = np.abs(rng.normal(move, move / 4, rows)) * 1e-4
        spread_bps = spread * np.exp(rng.normal(0, 0.1, rows))
        buy = rng.gamma(2.0, 50.0, rows) * (trades > 0)
        sell = rng.gamma(2.0, 50.0, rows) * (trades > 0)
        effective = spread_bps * np.exp(rng.normal(0, 0.2, rows))
        for planted_symbol, row in outliers:
            if planted_symbol == symbol:  # a flash move: returns, spreads and activity all jump
                returns[row] = 40 * move * 1e-4
                vol[row] = 30 * move * 1e-4
                spread_bps[row] = spread * 15
                effective[row] = spread * 20
                quotes[row] = quote_rate * 8
                trades[row] = max(trade_rate, 1) * 10
                buy[row], sell[row] = 5000.0, 10.0
        volume = buy + sell
        no_trades = trades == 0
        no_volume = volume == 0
        start = START_US + np.arange(rows, dtype=np.int64) * WINDOW_US
        mid = {"EURUSD": 1.085, "AAPL": 194.5, "BTCUSD": 67800.0}[symbol]
        batches.append(
            pa.RecordBatch.from_pydict(
                {
                    "symbol": [symbol] * rows,
                    "window_start_us": start,
                    "window_end_us": start + WINDOW_US,
                    "quotes": quotes,
                    "trades": trades,
                    "mid_log_return": returns,
                    "realized_vol": vol,
                    "mean_spread": spread_bps * mid * 1e-4,
                    "max_spread": 2 * spread_bps * mid * 1e-4,
                    "mean_spread_bps": spread_bps,
                    "volume": volume,
                    "buy_volume": buy,
                    "sell_volume": sell,
                    "imbalance": pa.array((buy - sell) / np.where(no_volume, 1, volume), mask=no_volume),
                    "vwap": pa.array(np.full(rows, mid), mask=no_volume),
                    "mean_effective_spread_bps": pa.array(effective, mask=no_trades),
                },
                schema=market.FEATURE_SCHEMA,
            )
        )
    return pa.Table.from_batches(batches)


def one_row(**values) -> pa.RecordBatch:
    """A single feature row; unspecified numeric columns are null (counts 0)."""
    row = {field.name: None for field in market.FEATURE_SCHEMA}
    row.update(symbol="AAPL", window_start_us=START_US, window_end_us=START_US + WINDOW_US, quotes=0, trades=0)
    row.update(values)
    return pa.RecordBatch.from_pylist([row], schema=market.FEATURE_SCHEMA)


def by_hand(model: dict, entry: str, inputs: dict) -> float:
    """The documented score: RMS over all inputs of clipped z-scores, 0 for a missing one."""
    stats = model["symbols"][entry]
    total = 0.0
    for name in scoring.INPUT_NAMES:
        if inputs.get(name) is None:
            continue
        z = (inputs[name] - stats["median"][name]) / stats["scale"][name]
        total += max(-model["clip"], min(model["clip"], z)) ** 2
    return math.sqrt(total / len(scoring.INPUT_NAMES))


@pytest.fixture(scope="module")
def planted():
    outliers = [("EURUSD", 50), ("EURUSD", 333), ("AAPL", 7), ("AAPL", 250), ("BTCUSD", 123)]
    features = synthetic(outliers=outliers)
    return features, outliers, fit_model(features, version="7", trained_on=TRAINED_ON)


@pytest.fixture
def model_file(tmp_path: Path, planted) -> Path:
    path = tmp_path / "model.json"
    save_model(planted[2], path)
    return path


# --------------------------------------------------------------------------- the model


def test_planted_outliers_score_above_the_threshold_and_normal_rows_mostly_below(planted):
    features, outliers, model = planted
    scores, anomaly = score_features(model, features)
    symbols = features.column("symbol").to_pylist()
    rows_of = {}
    for index, symbol in enumerate(symbols):
        rows_of.setdefault(symbol, []).append(index)
    planted_rows = [rows_of[symbol][row] for symbol, row in outliers]
    assert anomaly[planted_rows].all(), scores[planted_rows]
    assert (scores[planted_rows] > model["threshold"]).all()
    normal = np.ones(len(scores), dtype=bool)
    normal[planted_rows] = False
    assert anomaly[normal].mean() <= 0.02
    assert np.median(scores[normal]) < model["threshold"] / 2
    # the planted rows are the most extreme of all
    assert set(np.argsort(scores)[-len(planted_rows):]) == set(planted_rows)
    # threshold: the 0.99 quantile of the training scores, recorded with the count above it
    assert model["threshold"] == pytest.approx(np.quantile(scores, 0.99), rel=1e-8)  # 9 significant digits
    assert model["training"] == {"rows": 1200, "symbols": 3, "anomalies": int(anomaly.sum())}
    assert model["name"] == "market_anomaly" and model["version"] == "7" and model["format"] == scoring.FORMAT


def test_score_matches_the_documented_formula(planted):
    _, _, model = planted
    row = dict(quotes=55, trades=4, mid_log_return=-3e-4, realized_vol=2.5e-4, mean_spread_bps=6.0,
               mean_effective_spread_bps=7.5, imbalance=-0.4, volume=300.0)  # fmt: skip
    inputs = {
        "abs_return_bps": 3.0, "realized_vol_bps": 2.5, "spread_bps": 6.0, "effective_spread_bps": 7.5,
        "abs_imbalance": 0.4, "log_quotes": math.log1p(55), "log_trades": math.log1p(4),
        "log_volume": math.log1p(300),
    }  # fmt: skip
    scores, anomaly = score_features(model, one_row(**row))
    assert scores[0] == pytest.approx(by_hand(model, "AAPL", inputs), rel=1e-12)
    assert anomaly[0] == (scores[0] > model["threshold"])


def test_per_symbol_statistics_and_the_pooled_fallback_for_unseen_symbols(planted):
    _, _, model = planted
    assert set(model["symbols"]) == {"*", "EURUSD", "AAPL", "BTCUSD"}
    # AAPL's typical 5 bps spread: normal for AAPL, extreme for EURUSD (0.5 bps)
    typical_aapl = dict(quotes=40, trades=3, mid_log_return=1e-4, realized_vol=2e-4, mean_spread_bps=5.0,
                        mean_effective_spread_bps=5.0, imbalance=0.1, volume=300.0)  # fmt: skip
    as_aapl, _ = score_features(model, one_row(symbol="AAPL", **typical_aapl))
    as_eurusd, flagged = score_features(model, one_row(symbol="EURUSD", **typical_aapl))
    assert as_aapl[0] < model["threshold"] < as_eurusd[0]
    assert flagged[0]
    # an unseen symbol is scored with the pooled "*" statistics, which differ from AAPL's
    unseen, _ = score_features(model, one_row(symbol="NEWCO", **typical_aapl))
    inputs = dict(zip(scoring.INPUT_NAMES, scoring.feature_inputs(one_row(**typical_aapl))[0].tolist()))
    assert unseen[0] == pytest.approx(by_hand(model, "*", inputs), rel=1e-12)
    assert unseen[0] != pytest.approx(as_aapl[0], rel=1e-3)
    assert model["symbols"]["*"]["rows"] == 1200 and model["symbols"]["AAPL"]["rows"] == 400
    # one batch mixing symbols: each row uses its own entry
    mixed = pa.concat_tables(
        [pa.Table.from_batches([one_row(symbol=s, **typical_aapl)]) for s in ("EURUSD", "NEWCO", "AAPL")]
    )
    scores, _ = score_features(model, mixed)
    assert scores.tolist() == pytest.approx([as_eurusd[0], unseen[0], as_aapl[0]], rel=1e-12)


def test_missing_inputs_contribute_nothing(planted):
    _, _, model = planted
    # no trades: imbalance, effective spread (and here volume) are null
    quiet = one_row(symbol="AAPL", quotes=40, trades=0, mid_log_return=1e-4, realized_vol=2e-4, mean_spread_bps=5.0)
    scores, _ = score_features(model, quiet)
    inputs = {"abs_return_bps": 1.0, "realized_vol_bps": 2.0, "spread_bps": 5.0,
              "log_quotes": math.log1p(40), "log_trades": 0.0}  # fmt: skip
    assert np.isfinite(scores[0])
    assert scores[0] == pytest.approx(by_hand(model, "AAPL", inputs), rel=1e-12)
    # a window with nothing known but its counts
    empty, _ = score_features(model, one_row(quotes=0, trades=0))
    assert empty[0] == pytest.approx(by_hand(model, "AAPL", {"log_quotes": 0.0, "log_trades": 0.0}), rel=1e-12)
    # non-finite values count as missing too
    odd, _ = score_features(model, one_row(mean_spread_bps=float("nan"), realized_vol=float("inf")))
    assert odd[0] == pytest.approx(empty[0], rel=1e-15)


def test_fitting_with_nulls_and_sparse_inputs_falls_back_to_pooled_statistics():
    features = synthetic(rows=200, seed=3)
    # AAPL: trades in only 10 windows -> 10 effective spreads / imbalances, fewer than min_count
    aapl = features.filter(pa.compute.equal(features.column("symbol"), "AAPL")).combine_chunks()
    keep = np.zeros(aapl.num_rows, dtype=bool)
    keep[:10] = True
    sparse = aapl.set_column(
        aapl.schema.get_field_index("mean_effective_spread_bps"),
        "mean_effective_spread_bps",
        pa.array(np.where(keep, 5.0, 0.0), mask=~keep),
    )
    others = features.filter(pa.compute.not_equal(features.column("symbol"), "AAPL"))
    model = fit_model(pa.concat_tables([others, sparse]), version="1", trained_on={})
    pooled, apple = model["symbols"]["*"], model["symbols"]["AAPL"]
    assert apple["median"]["effective_spread_bps"] == pooled["median"]["effective_spread_bps"]
    assert apple["scale"]["effective_spread_bps"] == pooled["scale"]["effective_spread_bps"]
    assert apple["median"]["spread_bps"] != pooled["median"]["spread_bps"]  # enough data: its own
    for entry in model["symbols"].values():
        for part in ("median", "scale"):
            assert all(math.isfinite(v) for v in entry[part].values())
        assert all(v > 0 for v in entry["scale"].values())


def test_a_constant_input_gets_a_floor_not_a_zero_scale():
    features = synthetic(rows=100, seed=5, symbols=("AAPL",))
    flat = features.set_column(features.schema.get_field_index("quotes"), "quotes", pa.array([40] * 100, pa.int64()))
    model = fit_model(flat, version="1", trained_on={})
    assert model["symbols"]["AAPL"]["scale"]["log_quotes"] == dict(scoring.INPUTS)["log_quotes"]
    scores, _ = score_features(model, flat)
    assert np.isfinite(scores).all()


def test_fit_refuses_no_rows_and_bad_arguments():
    with pytest.raises(ValueError, match="no feature rows"):
        fit_model(market.empty(market.FEATURE_SCHEMA), version="1", trained_on={})
    with pytest.raises(ValueError, match="quantile"):
        fit_model(synthetic(rows=10), version="1", quantile=1.5, trained_on={})
    with pytest.raises(ValueError, match="version"):
        fit_model(synthetic(rows=10), version="", trained_on={})


# --------------------------------------------------------------------------- the artifact


def test_save_and_load_round_trip_is_byte_stable(tmp_path: Path, planted):
    features, _, model = planted
    first, second, third = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    save_model(model, first)
    save_model(model, second)
    assert first.read_bytes() == second.read_bytes()
    loaded = load_model(first)
    save_model(loaded, third)
    assert third.read_bytes() == first.read_bytes()
    refit = fit_model(features, version="7", trained_on=TRAINED_ON)
    save_model(refit, second)
    assert second.read_bytes() == first.read_bytes()
    # the fitted model scores exactly as its artifact does
    assert np.array_equal(score_features(model, features)[0], score_features(loaded, features)[0])
    text = first.read_text()
    assert text.startswith('{\n  "clip": ') and text.endswith("}\n")
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_saved_floats_have_at_most_12_significant_digits(model_file: Path):
    def floats(value):
        if isinstance(value, float):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from floats(item)
        elif isinstance(value, list):
            for item in value:
                yield from floats(item)

    values = list(floats(json.loads(model_file.read_text())))
    assert len(values) > 50
    assert all(float(f"{v:.12g}") == v for v in values)


def broken(tmp_path: Path, model_file: Path, change) -> Path:
    document = json.loads(model_file.read_text())
    change(document)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("threshold"), "missing key 'threshold'"),
        (lambda d: d.pop("version"), "missing key 'version'"),
        (lambda d: d.update(format="something_else/2"), "format is 'something_else/2'"),
        (lambda d: d.update(threshold="high"), "threshold is not a finite number"),
        (lambda d: d["symbols"].pop("*"), "no pooled entry"),
        (
            lambda d: d["symbols"]["AAPL"]["scale"].update(spread_bps=0),
            r"symbols\['AAPL'\]\['scale'\]\['spread_bps'\] must be positive",
        ),
        (lambda d: d["symbols"]["AAPL"]["median"].pop("log_volume"), "missing key 'log_volume'"),
        (lambda d: d.update(inputs=["abs_return_bps"]), "inputs are"),
        (lambda d: d.update(quantile=2), "quantile must be in"),
    ],
)
def test_load_model_names_the_file_and_what_is_wrong(tmp_path: Path, model_file: Path, change, message):
    path = broken(tmp_path, model_file, change)
    with pytest.raises(ModelError, match=message) as raised:
        load_model(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_load_model_refuses_bad_json_missing_files_and_urls(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": ')
    with pytest.raises(ModelError, match="not JSON") as raised:
        load_model(bad)
    assert str(bad) in str(raised.value)
    with pytest.raises(ModelError, match="no such model file") as raised:
        load_model(tmp_path / "absent.json")
    assert str(tmp_path / "absent.json") in str(raised.value)
    for url in ("https://example.com/model.json", "gs://bucket/model.json", "file:///tmp/model.json"):
        with pytest.raises(ModelError, match="local path only") as raised:
            load_model(url)
        assert url in str(raised.value)
        with pytest.raises(ModelError, match="local path only"):
            FeatureModelHandler(url)
        with pytest.raises(ModelError, match="local path only"):
            ScoreFeatures(url)
    with pytest.raises(ModelError, match="no such model file"):
        ScoreFeatures(tmp_path / "absent.json")


def test_a_packaged_model_is_found_in_its_package():
    packaged = scoring.PackagedModel("beam_pipeline", "data/models/market_anomaly.json")
    assert Path(str(packaged)) == REPO / "beam_pipeline" / "data" / "models" / "market_anomaly.json"
    assert scoring.load_model(packaged)["format"] == scoring.FORMAT
    with pytest.raises(ModelError, match="no such model file"):
        scoring.load_model(scoring.PackagedModel("beam_pipeline", "data/models/absent.json"))


# --------------------------------------------------------------------------- RunInference


def test_handler_scores_plain_and_keyed_blocks_with_the_model_id(model_file: Path, planted):
    features, _, model = planted
    handler = FeatureModelHandler(str(model_file))
    loaded = handler.load_model()
    blocks = features.to_batches()
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 64}
    results = list(handler.run_inference([blocks[0], (blocks[1].column("symbol")[0].as_py(), blocks[1])], loaded))
    assert [type(r) for r in results] == [PredictionResult, PredictionResult]
    assert results[0].example is blocks[0] and results[1].example[1] is blocks[1]
    assert all(r.model_id == "market_anomaly:7" for r in results)
    for block, result in zip(blocks, results):
        scores = result.inference
        assert scores.schema == market.SCORE_SCHEMA
        assert np.array_equal(scores.column("score").to_numpy(), score_features(model, block)[0])
        assert scores.column("window_end_us").equals(block.column("window_end_us"))
        assert set(scores.column("model_version").to_pylist()) == {"7"}
    assert handler.get_num_bytes(blocks[:2]) == blocks[0].nbytes + blocks[1].nbytes
    with pytest.raises(ValueError, match="inference_args"):
        handler.validate_inference_args({"x": 1})


def test_score_features_runs_inside_a_pipeline_through_run_inference(model_file: Path, planted):
    features, _, model = planted
    # blocks of 100 windows, one symbol each, in an order unrelated to symbols
    blocks = [(b.column("symbol")[0].as_py(), b) for b in features.to_batches(max_chunksize=100)]
    expected = {}
    for symbol, block in blocks:
        for start, score, flag in zip(block.column("window_start_us").to_pylist(), *score_features(model, block)):
            expected[(symbol, start)] = (float(score), bool(flag))
    transform = ScoreFeatures(model_file, max_batch_size=5)
    assert transform.model_id == "market_anomaly:7"

    def check(outputs):
        got = {}
        for symbol, scores in outputs:
            assert scores.schema == market.SCORE_SCHEMA
            assert set(scores.column("symbol").to_pylist()) == {symbol}
            assert set(scores.column("model").to_pylist()) == {"market_anomaly"}
            assert set(scores.column("model_version").to_pylist()) == {"7"}
            for row in scores.to_pylist():
                got[(symbol, row["window_start_us"])] = (row["score"], row["anomaly"])
        assert len(outputs) == len(blocks)
        assert got == expected

    pipeline = test_pipeline.TestPipeline()
    scored = pipeline | beam.Create(blocks, reshuffle=False) | ScoreFeatures(model_file, max_batch_size=5)
    assert_that(scored, check)
    result = pipeline.run()
    result.wait_until_finish()
    queried = result.metrics().query(MetricsFilter().with_namespace("ScoreFeatures"))["counters"]
    counters = {counter.key.metric.name: counter.committed for counter in queried}
    assert counters["windows_scored"] == features.num_rows
    assert counters["anomalies"] == sum(flag for _, flag in expected.values())
    assert any(isinstance(t, RunInference) for t in _applied(pipeline)), "scored without RunInference"


def _applied(pipeline) -> list:
    transforms = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            transforms.append(node.transform)

        def visit_transform(self, node):
            transforms.append(node.transform)

    pipeline.visit(Visitor())
    return transforms


def test_a_packaged_model_is_loaded_on_the_worker_from_its_own_package():
    packaged = scoring.PackagedModel("beam_pipeline", "data/models/market_anomaly.json")
    handler = pickle.loads(pickle.dumps(FeatureModelHandler(packaged)))
    assert handler.model_path == packaged  # no launcher path travels to the workers
    assert handler.load_model()["format"] == scoring.FORMAT


# --------------------------------------------------------------------------- scores.jsonl


def test_score_chunk_is_keyed_json_lines_in_window_order(planted):
    features, _, model = planted
    block = features.to_batches(max_chunksize=400)[1]  # AAPL
    scores = scoring.score_batch(model, block)
    reversed_rows = scores.take(pa.array(np.arange(scores.num_rows)[::-1]))
    chunk = score_chunk("AAPL", reversed_rows)
    assert chunk.keyed and chunk.seq == market.symbol_seq("AAPL") and chunk.lines == 400
    lines = chunk.data.decode().splitlines()
    assert len(lines) == 400 and chunk.data.endswith(b"\n")
    keys = [line.split("\t", 1)[0] for line in lines]
    assert keys == sorted(keys) and all(len(k) == 20 for k in keys)
    assert int(keys[0]) == START_US + WINDOW_US
    first = json.loads(lines[0].split("\t", 1)[1])
    assert list(first) == ["symbol", "window_start", "window_end", "score", "anomaly", "model", "model_version"]
    assert first["symbol"] == "AAPL"
    assert first["window_start"] == "2024-06-03 07:00:00.000" and first["window_end"] == "2024-06-03 07:00:10.000"
    assert first["score"] == scores.column("score")[0].as_py()  # shortest round-trip text
    assert first["anomaly"] is scores.column("anomaly")[0].as_py()
    assert (first["model"], first["model_version"]) == ("market_anomaly", "7")
    flagged = sum(json.loads(line.split("\t", 1)[1])["anomaly"] for line in lines)
    assert chunk.tally == (("anomalies", flagged),)
    assert flagged == int(np.count_nonzero(score_features(model, block)[1]))


def test_score_chunk_escapes_symbols_and_handles_no_rows():
    scores = pa.RecordBatch.from_pylist(
        [dict(symbol='A"B', window_start_us=START_US, window_end_us=START_US + 1500, score=0.5, anomaly=True,
              model="market_anomaly", model_version="v\\1")],  # fmt: skip
        schema=market.SCORE_SCHEMA,
    )
    line = score_chunk('A"B', scores).data.decode()
    record = json.loads(line.split("\t", 1)[1])
    assert record["symbol"] == 'A"B' and record["model_version"] == "v\\1" and record["anomaly"] is True
    assert record["window_end"] == "2024-06-03 07:00:00.001500"  # sub-millisecond ends keep their digits
    empty = score_chunk("X", market.empty(market.SCORE_SCHEMA))
    assert (empty.data, empty.lines, empty.tally) == (b"", 0, (("anomalies", 0),))


# --------------------------------------------------------------------------- the training CLI


def write_features_jsonl(path: Path, features: pa.Table) -> None:
    def text(us: int) -> str:
        return np.datetime64(us, "us").astype("datetime64[ms]").astype(str).replace("T", " ")

    with path.open("w") as out:
        for row in features.to_pylist():
            row["window_start"] = text(row.pop("window_start_us"))
            row["window_end"] = text(row.pop("window_end_us"))
            out.write(json.dumps(row) + "\n")


def test_training_cli_writes_a_loadable_model(tmp_path: Path, capsys, planted):
    features = planted[0]
    source = tmp_path / "features.jsonl"
    write_features_jsonl(source, features)
    output = tmp_path / "models" / "market_anomaly.json"
    assert train_model.main(["--features", str(source), "--output", str(output), "--version", "3"]) == 0
    summary = capsys.readouterr().out
    assert "1200 rows" in summary and "3 symbols" in summary and "threshold" in summary and "anomalies" in summary
    model = load_model(output)
    assert model["version"] == "3"
    assert model["trained_on"] == {"file": "features.jsonl", "rows": 1200, "inputs_sha256": training_digest(features)}
    # the same model as fitting the rows directly: parsing lost nothing
    direct = fit_model(features, version="3", trained_on=model["trained_on"])
    assert model == json.loads(scoring.dumps_model(direct))
    assert "anomalies in training" in summary and str(model["training"]["anomalies"]) in summary


def nudged(features: pa.Table, ulps: int = 1) -> pa.Table:
    """Every float feature moved ``ulps`` units in the last place (what another numpy build gives)."""
    columns = []
    for field, column in zip(features.schema, features.columns):
        if pa.types.is_floating(field.type):
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)
            for _ in range(abs(ulps)):
                values = np.nextafter(values, np.inf if ulps > 0 else -np.inf)
            column = pa.array(values, type=field.type, mask=column.is_null().to_numpy(zero_copy_only=False))
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=features.schema)


def test_last_bit_differences_in_the_features_make_the_same_artifact_bytes(tmp_path: Path, planted):
    features = planted[0]
    text = {}
    for name, rows in {"here": features, "up": nudged(features, 1), "down": nudged(features, -2)}.items():
        assert name == "here" or rows != features  # the nudge really changed the floats
        source = tmp_path / f"{name}.jsonl"
        write_features_jsonl(source, rows)
        output = tmp_path / f"{name}.json"
        assert train_model.main(["--features", str(source), "--output", str(output), "--version", "1"]) == 0
        text[name] = output.read_text().replace(f'"{name}.jsonl"', '"features.jsonl"')
    assert text["up"] == text["here"] and text["down"] == text["here"]
    # ... while a real change of one value (far above the rounding) still shows in trained_on,
    # so a bundled model made from other features is still told apart
    column = features.column("mean_spread_bps").to_numpy(zero_copy_only=False).astype(np.float64)
    column[0] *= 1.000001
    changed = features.set_column(features.schema.get_field_index("mean_spread_bps"), "mean_spread_bps", [column])
    assert training_digest(changed) != training_digest(features)
    assert training_digest(nudged(features, 1)) == training_digest(features)


def test_training_cli_as_a_module_and_its_errors(tmp_path: Path):
    source = tmp_path / "features.jsonl"
    write_features_jsonl(source, synthetic(rows=50))
    output = tmp_path / "model.json"
    command = [sys.executable, "-m", "beam_pipeline.devtools.train_model", "--features", str(source), "--output", str(output)]
    done = subprocess.run([*command, "--version", "1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_model(output)["trained_on"]["rows"] == 150
    first = output.read_bytes()
    subprocess.run([*command, "--version", "1"], cwd=REPO, check=True, capture_output=True, timeout=120)
    assert output.read_bytes() == first
    source.write_text(source.read_text() + '{"symbol": "AAPL", "window_start": "yesterday"}\n')
    assert train_model.main(["--features", str(source), "--output", str(output), "--version", "1"]) == 2
    bad = tmp_path / "bad.jsonl"
    row = {"symbol": "AAPL", "window_start": "2024-06-03 07:00:00.000", "window_end": "2024-06-03 07:00:10.000"}
    bad.write_text(json.dumps({**row, "quotes": "many"}) + "\n")
    with pytest.raises(train_model.FeaturesError, match=r"bad.jsonl:1: 'quotes' must be a number"):
        train_model.read_features(bad)
