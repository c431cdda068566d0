"""In-pipeline model scoring of feature windows: a robust z-score anomaly model run by Beam's RunInference.

The model
---------
Each feature row (one sliding window of one symbol, :data:`transforms.trades.market.FEATURE_SCHEMA`) is
turned into :data:`INPUTS`, eight scale-free numbers (so one model serves a 1.08 EURUSD and a
67,800 BTCUSD alike):

============================  ==========================================  =========
input                         from the feature row                        min scale
============================  ==========================================  =========
``abs_return_bps``            ``|mid_log_return| * 1e4``                  0.01
``realized_vol_bps``          ``realized_vol * 1e4``                      0.01
``spread_bps``                ``mean_spread_bps``                         0.01
``effective_spread_bps``      ``mean_effective_spread_bps``               0.01
``abs_imbalance``             ``|imbalance|``                             0.01
``log_quotes``                ``log1p(quotes)``                           0.1
``log_trades``                ``log1p(trades)``                           0.1
``log_volume``                ``log1p(volume)``                           0.1
============================  ==========================================  =========

Training (:func:`fit_model`) stores, per symbol and for a pooled entry ``"*"`` (all rows of all
symbols), the *median* and the *scale* of each input: ``1.4826 * MAD`` (the median absolute
deviation, scaled to estimate a normal standard deviation); when that is below the input's min
scale (a mostly constant input), ``1.2533 * mean absolute deviation`` from the median; and never
less than the min scale, so a constant input cannot divide by zero. A symbol's input with fewer
than ``min_count`` non-null training values takes the pooled median and scale instead.

Scoring (:func:`score_features`), for a row of symbol ``s`` (``"*"`` when the model has not seen
``s``)::

    z_i   = clip((x_i - median_i[s]) / scale_i[s], -clip, clip)      (clip = 10)
    score = sqrt(sum_i z_i**2 / len(INPUTS))                          root mean square
    anomaly = score > threshold

A *missing* input (a null feature: no quotes, no volume, no joined trade; or a non-finite value)
has ``z_i = 0``: it contributes nothing, as if it sat at the median, and the divisor stays
``len(INPUTS)`` so that scores of windows with and without trades are on the same scale. The
threshold is the ``quantile`` (0.99 by default) of the scores of the training rows, so about 1%
of windows like the training data are flagged.

The artifact
------------
A small JSON document (:func:`save_model`, :func:`load_model`), with its ``format``
(:data:`FORMAT`), ``name``, ``version``, the statistics, the threshold and what it was trained
on. The application's bundled one is package data (a :class:`PackagedModel`) written by
``python -m beam_pipeline.devtools.train_model``; nothing is fetched at run time, and a model path with a
URL scheme is refused.

In the pipeline
---------------
:class:`ScoreFeatures` maps ``(symbol, feature batch)`` to ``(symbol, score batch)``
(:data:`transforms.trades.market.SCORE_SCHEMA`) with :class:`apache_beam.ml.inference.base.RunInference`
and :class:`FeatureModelHandler`: each element is a whole block of windows, scored with numpy in
one go, and RunInference batches up to 64 blocks per call. :func:`score_chunk` renders a score
batch as keyed ``scores.jsonl`` lines.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
import os
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.blocks import TextChunk
from transforms.quotes.columns import format_timestamps, joined_lines
from transforms.trades import market

#: The model's name, in every score row (``model``) and in the RunInference model id.
MODEL_NAME = "market_anomaly"
#: The artifact's format: the inputs, the statistics and the score above. A document of another
#: format is refused by :func:`load_model`.
FORMAT = "market_anomaly.robust_z/1"
#: The pooled entry, used for symbols the model has not seen.
POOLED = "*"

MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD of a normal distribution -> its standard deviation
MEAN_AD_TO_SIGMA = 1.2533  # sqrt(pi / 2): mean absolute deviation of a normal -> its standard deviation
DEFAULT_CLIP = 10.0
DEFAULT_MIN_COUNT = 30
#: Every fitted number (statistics, threshold) and every training input is rounded to this many
#: significant digits. Feature values computed on two machines (another numpy build, SIMD width,
#: libm) can differ in their last bits; rounded to 9 of the 15-17 digits a float64 holds, they are
#: the same numbers, so the same features make the same artifact bytes anywhere.
SIGNIFICANT_DIGITS = 9
#: A training input smaller in magnitude than this is fitted as 0: far below every min scale, and
#: where two machines may compute 0 and 1e-17 for the same value (relative rounding keeps both).
TINY_INPUT = 1e-9

#: (input, min scale), in the order of the score's terms.
INPUTS: tuple[tuple[str, float], ...] = (
    ("abs_return_bps", 0.01),
    ("realized_vol_bps", 0.01),
    ("spread_bps", 0.01),
    ("effective_spread_bps", 0.01),
    ("abs_imbalance", 0.01),
    ("log_quotes", 0.1),
    ("log_trades", 0.1),
    ("log_volume", 0.1),
)
INPUT_NAMES = tuple(name for name, _ in INPUTS)
_MIN_SCALE = np.array([floor for _, floor in INPUTS])
_NEEDED_COLUMNS = (
    "symbol", "mid_log_return", "realized_vol", "mean_spread_bps", "mean_effective_spread_bps",
    "imbalance", "quotes", "trades", "volume",
)  # fmt: skip


class ModelError(ValueError):
    """A model artifact that is missing, not local, or not a valid document of :data:`FORMAT`."""


@dataclass(frozen=True)
class PackagedModel:
    """A model artifact shipped as package data, found where it is loaded: a worker reads the
    copy in its own installed ``package``, not the launcher's path, which it may not have."""

    package: str
    resource: str  # "/"-separated, below the package

    def path(self) -> Traversable:
        return importlib.resources.files(self.package).joinpath(*self.resource.split("/"))

    def __str__(self) -> str:
        return str(self.path())


ModelPath = Union[str, os.PathLike, Traversable, PackagedModel]


# --------------------------------------------------------------------------- inputs


def _as_batch(features: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    if isinstance(features, pa.Table):
        batches = features.combine_chunks().to_batches()
        return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=features.schema)
    return features


def _floats(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A column as float64, NaN where null."""
    index = batch.schema.get_field_index(name)
    if index < 0:
        raise ValueError(f"feature batch has no column {name!r}")
    column = batch.column(index)
    if not pa.types.is_floating(column.type):
        column = column.cast(pa.float64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def feature_inputs(features: pa.RecordBatch | pa.Table) -> np.ndarray:
    """The model's :data:`INPUTS` of each feature row: an (rows, inputs) array, NaN where missing."""
    batch = _as_batch(features)
    with np.errstate(invalid="ignore", divide="ignore"):
        columns = [
            np.abs(_floats(batch, "mid_log_return")) * 1e4,
            _floats(batch, "realized_vol") * 1e4,
            _floats(batch, "mean_spread_bps"),
            _floats(batch, "mean_effective_spread_bps"),
            np.abs(_floats(batch, "imbalance")),
            np.log1p(_floats(batch, "quotes")),
            np.log1p(_floats(batch, "trades")),
            np.log1p(_floats(batch, "volume")),
        ]
    inputs = np.column_stack(columns) if batch.num_rows else np.zeros((0, len(INPUTS)))
    inputs[~np.isfinite(inputs)] = np.nan
    return inputs


def _symbol_codes(batch: pa.RecordBatch) -> tuple[list[str | None], np.ndarray]:
    """The distinct symbols of a batch and each row's index into them."""
    encoded = pc.dictionary_encode(batch.column("symbol"))
    indices = encoded.indices
    if indices.null_count:
        indices = pc.fill_null(indices, len(encoded.dictionary))
    return encoded.dictionary.to_pylist() + [None], indices.to_numpy(zero_copy_only=False).astype(np.intp)


# --------------------------------------------------------------------------- fitting


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def training_inputs(features: pa.RecordBatch | pa.Table) -> np.ndarray:
    """:func:`feature_inputs` rounded to :data:`SIGNIFICANT_DIGITS`: what :func:`fit_model` fits on.

    The rounding is Python's correctly rounded decimal conversion (``float(f"{x:.9g}")``), the
    same on every platform; an input below :data:`TINY_INPUT` in magnitude becomes 0; NaN (missing)
    stays NaN.
    """
    values = feature_inputs(features)
    flat = values.reshape(-1)
    rounded = np.fromiter(
        (
            value if value != value else 0.0 if abs(value) < TINY_INPUT else _round(value)
            for value in flat.tolist()
        ),
        dtype=np.float64,
        count=flat.size,
    )
    return rounded.reshape(values.shape)


def training_digest(features: pa.RecordBatch | pa.Table) -> str:
    """The sha256 of what a fit depends on: each row's symbol and its :func:`training_inputs`.

    Recorded as ``trained_on.inputs_sha256`` by ``python -m beam_pipeline.devtools.train_model``: two
    features files with the same digest make the same model, whatever their last float bits,
    key order or line endings; a file whose inputs changed anywhere gets another digest.
    """
    batch = _as_batch(features)
    digest = hashlib.sha256()
    digest.update(json.dumps(batch.column("symbol").to_pylist()).encode("utf-8"))
    for value in training_inputs(batch).reshape(-1).tolist():
        digest.update(b"null," if value != value else repr(value).encode("ascii") + b",")
    return digest.hexdigest()


def _statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, scale and non-null count of each input column (NaN median where none is known)."""
    inputs = values.shape[1]
    median = np.full(inputs, np.nan)
    scale = _MIN_SCALE.copy()
    count = np.zeros(inputs, dtype=np.int64)
    for i in range(inputs):
        known = values[:, i][~np.isnan(values[:, i])]
        count[i] = known.size
        if not known.size:
            continue
        median[i] = np.median(known)
        deviation = np.abs(known - median[i])
        robust = MAD_TO_SIGMA * np.median(deviation)
        if robust < _MIN_SCALE[i]:
            robust = MEAN_AD_TO_SIGMA * deviation.mean()
        scale[i] = max(robust, _MIN_SCALE[i])
    return median, scale, count


def _entry(rows: int, median: np.ndarray, scale: np.ndarray) -> dict:
    return {
        "rows": int(rows),
        "median": {name: _round(float(value)) for name, value in zip(INPUT_NAMES, median)},
        "scale": {name: _round(float(value)) for name, value in zip(INPUT_NAMES, scale)},
    }


def fit_model(
    features: pa.RecordBatch | pa.Table,
    *,
    version: str,
    quantile: float = 0.99,
    trained_on: dict,
    min_count: int = DEFAULT_MIN_COUNT,
    clip: float = DEFAULT_CLIP,
) -> dict:
    """Fit the model on feature rows (see the module docstring); returns the model document.

    The inputs are rounded to :data:`SIGNIFICANT_DIGITS` before fitting (:func:`training_inputs`),
    so last-bit differences in the features do not reach the model; its numbers are rounded the
    same way here already, and the threshold is computed with the rounded statistics, so the
    fitted model scores exactly as its saved artifact does.
    An input with no value at all in training gets median 0 and its min scale.

    Args:
        features: rows of :data:`transforms.trades.market.FEATURE_SCHEMA` (at least one).
        version: the model version carried by every score.
        quantile: the threshold is this quantile of the training scores.
        trained_on: what the model was fitted on (e.g. file name, :func:`training_digest`, rows);
            kept as is.
        min_count: a symbol's input with fewer non-null values uses the pooled statistics.
        clip: bound of each z-score's magnitude.
    """
    if not isinstance(version, str) or not version:
        raise ValueError("version must be a non-empty string")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), not {quantile}")
    batch = _as_batch(features)
    if batch.num_rows == 0:
        raise ValueError("no feature rows to fit the model on")
    values = training_inputs(batch)
    pooled_median, pooled_scale, _ = _statistics(values)
    pooled_median = np.nan_to_num(pooled_median, nan=0.0)
    symbols = {POOLED: _entry(batch.num_rows, pooled_median, pooled_scale)}
    names, codes = _symbol_codes(batch)
    for code, symbol in enumerate(names):
        if symbol is None:
            continue
        rows = values[codes == code]
        median, scale, count = _statistics(rows)
        fallback = (count < min_count) | (count == 0)
        median[fallback] = pooled_median[fallback]
        scale[fallback] = pooled_scale[fallback]
        symbols[symbol] = _entry(rows.shape[0], median, scale)
    model = {
        "format": FORMAT,
        "name": MODEL_NAME,
        "version": version,
        "inputs": list(INPUT_NAMES),
        "clip": _round(float(clip)),
        "min_count": int(min_count),
        "quantile": _round(float(quantile)),
        "threshold": 0.0,
        "symbols": symbols,
        "trained_on": dict(trained_on),
    }
    scores = _scores(model, values, names, codes)
    model["threshold"] = _round(float(np.quantile(scores, quantile)))
    model["training"] = {
        "rows": int(batch.num_rows),
        "symbols": len(symbols) - 1,
        "anomalies": int(np.count_nonzero(scores > model["threshold"])),
    }
    return model


# --------------------------------------------------------------------------- scoring


def _scores(model: Mapping, values: np.ndarray, names: Sequence[str | None], codes: np.ndarray) -> np.ndarray:
    known = model["symbols"]
    entries = [known.get(name, known[POOLED]) if name is not None else known[POOLED] for name in names]
    median = np.array([[entry["median"][name] for name in INPUT_NAMES] for entry in entries]).reshape(-1, len(INPUTS))
    scale = np.array([[entry["scale"][name] for name in INPUT_NAMES] for entry in entries]).reshape(-1, len(INPUTS))
    clip = float(model["clip"])
    z = np.clip((values - median[codes]) / scale[codes], -clip, clip)
    z[np.isnan(z)] = 0.0  # a missing input contributes nothing
    return np.sqrt(np.square(z).sum(axis=1) / len(INPUTS))


def score_features(model: Mapping, features: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Scores (float64) and anomaly flags (bool) of feature rows, aligned with them."""
    batch = _as_batch(features)
    values = feature_inputs(batch)
    if batch.num_rows == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    names, codes = _symbol_codes(batch)
    scores = _scores(model, values, names, codes)
    return scores, scores > float(model["threshold"])


def score_batch(model: Mapping, features: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """The :data:`transforms.trades.market.SCORE_SCHEMA` rows of feature rows."""
    batch = _as_batch(features)
    scores, anomaly = score_features(model, batch)
    rows = batch.num_rows
    return pa.RecordBatch.from_arrays(
        [
            batch.column("symbol"),
            batch.column("window_start_us"),
            batch.column("window_end_us"),
            pa.array(scores, type=pa.float64()),
            pa.array(anomaly, type=pa.bool_()),
            pa.array([model["name"]] * rows, type=pa.string()),
            pa.array([model["version"]] * rows, type=pa.string()),
        ],
        schema=market.SCORE_SCHEMA,
    )


def model_id(model: Mapping) -> str:
    """``name:version``, the RunInference model id."""
    return f"{model['name']}:{model['version']}"


# --------------------------------------------------------------------------- the artifact


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return _round(value)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    return value


def dumps_model(model: Mapping) -> str:
    """The artifact's text: sorted keys, 2-space indent, floats to :data:`SIGNIFICANT_DIGITS` digits."""
    return json.dumps(_rounded(dict(model)), sort_keys=True, indent=2, allow_nan=False) + "\n"


def save_model(model: Mapping, path: str | os.PathLike) -> None:
    """Write the artifact (see :func:`dumps_model`) to a local path, atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(dumps_model(model), encoding="utf-8")
    os.replace(temporary, target)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def _local(path: ModelPath) -> ModelPath:
    """``path`` if it names a local file; :class:`ModelError` for anything with a URL scheme."""
    if isinstance(path, (str, os.PathLike)):
        text = os.fspath(path)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
        scheme = _SCHEME.match(text)
        if scheme and not (len(scheme.group(1)) == 1 and os.name == "nt"):  # C:\ is a drive, not a scheme
            raise ModelError(f"{text}: a model is read from a local path only, not a URL ({scheme.group(1)}:)")
        return Path(text)
    if isinstance(path, Traversable):
        return path
    raise ModelError(f"{path!r}: not a model path")


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelError(f"{where} is not a finite number: {value!r}")
    if positive and value <= 0:
        raise ModelError(f"{where} must be positive, not {value!r}")
    return float(value)


def validate_model(document: Any) -> dict:
    """Check a model document; :class:`ModelError` (without the file name) says what is wrong."""
    if not isinstance(document, dict):
        raise ModelError("not a JSON object")
    for key in ("format", "name", "version", "inputs", "clip", "quantile", "threshold", "symbols", "trained_on"):
        if key not in document:
            raise ModelError(f"missing key {key!r}")
    if document["format"] != FORMAT:
        raise ModelError(f"format is {document['format']!r}, expected {FORMAT!r}")
    for key in ("name", "version"):
        if not isinstance(document[key], str) or not document[key]:
            raise ModelError(f"{key} must be a non-empty string, not {document[key]!r}")
    if document["inputs"] != list(INPUT_NAMES):
        raise ModelError(f"inputs are {document['inputs']!r}, expected {list(INPUT_NAMES)!r}")
    _number(document["clip"], "clip", positive=True)
    quantile = _number(document["quantile"], "quantile")
    if not 0 < quantile < 1:
        raise ModelError(f"quantile must be in (0, 1), not {quantile!r}")
    _number(document["threshold"], "threshold")
    if not isinstance(document["trained_on"], dict):
        raise ModelError("trained_on must be an object")
    symbols = document["symbols"]
    if not isinstance(symbols, dict):
        raise ModelError("symbols must be an object")
    if POOLED not in symbols:
        raise ModelError(f"symbols has no pooled entry {POOLED!r}")
    for symbol, entry in symbols.items():
        if not isinstance(entry, dict):
            raise ModelError(f"symbols[{symbol!r}] must be an object")
        for part in ("median", "scale"):
            values = entry.get(part)
            if not isinstance(values, dict):
                raise ModelError(f"symbols[{symbol!r}] is missing key {part!r}")
            for name in INPUT_NAMES:
                if name not in values:
                    raise ModelError(f"symbols[{symbol!r}][{part!r}] is missing key {name!r}")
                _number(values[name], f"symbols[{symbol!r}][{part!r}][{name!r}]", positive=part == "scale")
    return document


def load_model(path: ModelPath) -> dict:
    """Read and validate a model artifact from a local path; :class:`ModelError` names the file."""
    source = path.path() if isinstance(path, PackagedModel) else _local(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{source}: no such model file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"{source}: cannot read the model: {error}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(f"{source}: not JSON: {error}") from None
    try:
        return validate_model(document)
    except ModelError as error:
        raise ModelError(f"{source}: {error}") from None


# --------------------------------------------------------------------------- RunInference


Example = Union[pa.RecordBatch, tuple[str, pa.RecordBatch]]


class LoadedModel(dict):
    """A model document as RunInference holds it: a dict subclass, because Beam's shared model
    cache keeps a weak reference to the loaded model and a plain dict cannot have one."""


class FeatureModelHandler(ModelHandler[Example, PredictionResult, dict]):
    """RunInference's handler for the anomaly model: one example is a whole block of windows.

    An example is a feature batch, or a ``(symbol, feature batch)`` pair (the key is then left in
    ``PredictionResult.example``); the inference is that block's :data:`transforms.trades.market.SCORE_SCHEMA`
    batch, the model id ``name:version``. :meth:`load_model` reads the artifact from a local path
    (a :class:`PackagedModel` is found on each worker in its own installed package).

    Args:
        model_path: a local JSON artifact or a :class:`PackagedModel`; a URL is refused with
            :class:`ModelError`.
        max_batch_size: at most this many blocks per ``run_inference`` call.
        max_batch_duration_secs: streaming: longest a block waits for a batch to fill.
    """

    def __init__(
        self,
        model_path: ModelPath,
        *,
        max_batch_size: int = 64,
        max_batch_duration_secs: int | None = None,
    ):
        super().__init__(
            min_batch_size=1, max_batch_size=max_batch_size, max_batch_duration_secs=max_batch_duration_secs
        )
        # A packaged model is resolved in load_model, on the worker: where *its* package is.
        self._model_path = model_path if isinstance(model_path, PackagedModel) else _local(model_path)

    @property
    def model_path(self) -> ModelPath:
        return self._model_path

    def load_model(self) -> dict:
        return LoadedModel(load_model(self._model_path))

    def update_model_path(self, model_path: str | None = None) -> None:
        if model_path:
            self._model_path = _local(model_path)

    def validate_inference_args(self, inference_args: dict | None) -> None:
        if inference_args:
            raise ValueError(f"the anomaly model takes no inference_args, got {sorted(inference_args)}")

    def run_inference(
        self, batch: Sequence[Example], model: dict, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        identity = model_id(model)
        results = []
        for example in batch:
            features = example[1] if isinstance(example, tuple) else example
            results.append(PredictionResult(example, score_batch(model, features), identity))
        return results

    def get_num_bytes(self, batch: Sequence[Example]) -> int:
        return sum((example[1] if isinstance(example, tuple) else example).nbytes for example in batch)

    def get_metrics_namespace(self) -> str:
        return "ScoreFeatures"


# --------------------------------------------------------------------------- output


def _json_strings(column: pa.Array) -> pa.Array:
    """Each string as a JSON string literal (quoted, escaped), computed once per distinct value."""
    encoded = pc.dictionary_encode(column)
    literals = pa.array([json.dumps(value) for value in encoded.dictionary.to_pylist()], type=pa.string())
    return literals.take(encoded.indices)


def score_chunk(symbol: str, scores: pa.RecordBatch) -> TextChunk:
    """``scores.jsonl`` lines of one symbol's score rows, keyed by ``window_end_us`` (20 digits).

    One line per window, e.g. ``{"symbol":"AAPL","window_start":"2024-06-03 07:00:00.000",
    "window_end":"2024-06-03 07:00:10.000","score":1.23,"anomaly":false,"model":"market_anomaly",
    "model_version":"1"}``; tally ``anomalies``.
    """
    order = pc.sort_indices(scores, [("window_end_us", "ascending"), ("window_start_us", "ascending")])
    rows = scores.take(order)
    data, anomalies = score_lines(rows, keyed=True)
    return TextChunk(market.symbol_seq(symbol), data, rows.num_rows, (("anomalies", anomalies),), keyed=True)


def score_range_chunk(r: int, scores: pa.RecordBatch) -> TextChunk:
    """``scores.jsonl`` lines of range ``r``'s score rows, in their order (the features' order,
    :mod:`transforms.trades.ranges`), unkeyed: the sink concatenates ranges in ``seq`` = ``r`` order."""
    data, anomalies = score_lines(scores, keyed=False)
    return TextChunk(r, data, scores.num_rows, (("anomalies", anomalies),))


def score_lines(rows: pa.RecordBatch, keyed: bool) -> tuple[bytes, int]:
    """``scores.jsonl`` lines of score rows in their order (with ``keyed``, behind ``window_end_us``
    in 20 digits and a tab), and how many rows are anomalies."""
    start_us = rows.column("window_start_us").to_numpy(zero_copy_only=False)
    end_us = rows.column("window_end_us").to_numpy(zero_copy_only=False)
    anomalies = int(pc.sum(rows.column("anomaly")).as_py() or 0)
    if rows.num_rows == 0:
        return b"", 0
    key = [pc.utf8_lpad(pc.cast(rows.column("window_end_us"), pa.string()), 20, "0"), "\t"] if keyed else []
    data = joined_lines(
        *key,
        '{"symbol":',
        _json_strings(rows.column("symbol")),
        ',"window_start":"',
        format_timestamps(start_us),
        '","window_end":"',
        format_timestamps(end_us),
        '","score":',
        pc.cast(rows.column("score"), pa.string()),
        ',"anomaly":',
        pc.if_else(rows.column("anomaly"), "true", "false"),
        ',"model":',
        _json_strings(rows.column("model")),
        ',"model_version":',
        _json_strings(rows.column("model_version")),
        "}",
    )
    return data, anomalies
