"""Train the market anomaly model on a features file and write its JSON artifact.

    python -m beam_pipeline.devtools.train_model --features output/features.jsonl \\
        --output beam_pipeline/data/models/market_anomaly.json --version 1

The features file is the pipeline's ``features.jsonl``: one JSON object per line with ``symbol``,
``window_start`` and ``window_end`` (``YYYY-MM-DD HH:MM:SS.fff``, UTC) and the numeric columns of
:data:`transforms.trades.market.FEATURE_SCHEMA` by the same names (``null`` where unknown). The model is
:mod:`transforms.trades.scoring`'s; ``trained_on`` records the file's name, its row count and
``inputs_sha256`` (:func:`transforms.trades.scoring.training_digest`: the symbols and the model inputs
rounded to 9 significant digits), so the artifact says which data made it, and the same features
write the same bytes on any machine, even when their floats differ in the last bits.

Exit codes: 0 written; 2 bad usage or a malformed features file (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from transforms.trades import market
from transforms.trades.scoring import fit_model, save_model, training_digest

_TIMES = {"window_start": "window_start_us", "window_end": "window_end_us"}
_NUMERIC = [field for field in market.FEATURE_SCHEMA if field.name not in ("symbol", *_TIMES.values())]


class FeaturesError(ValueError):
    """A features file that cannot be read as features."""


def read_features(path: str | Path) -> pa.RecordBatch:
    """The rows of a ``features.jsonl`` file as a :data:`transforms.trades.market.FEATURE_SCHEMA` batch."""
    columns: dict[str, list] = {field.name: [] for field in market.FEATURE_SCHEMA}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise FeaturesError(f"{path}:{number}: not JSON: {error}") from None
            if not isinstance(row, dict):
                raise FeaturesError(f"{path}:{number}: not a JSON object")
            for key in ("symbol", *_TIMES):
                if not isinstance(row.get(key), str):
                    raise FeaturesError(f"{path}:{number}: {key!r} must be a string")
            columns["symbol"].append(row["symbol"])
            for text, micros in _TIMES.items():
                columns[micros].append(row[text])
            for field in _NUMERIC:
                value = row.get(field.name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise FeaturesError(f"{path}:{number}: {field.name!r} must be a number or null, not {value!r}")
                columns[field.name].append(value)
    arrays = []
    for field in market.FEATURE_SCHEMA:
        values = columns[field.name]
        if field.name in _TIMES.values():
            try:
                times = pc.cast(pa.array(values, type=pa.string()), pa.timestamp("us"))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise FeaturesError(f"{path}: a window time is not YYYY-MM-DD HH:MM:SS.fff: {error}") from None
            arrays.append(times.cast(pa.int64()))
        else:
            try:
                arrays.append(pa.array(values, type=field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as error:
                raise FeaturesError(f"{path}: column {field.name!r}: {error}") from None
    return pa.RecordBatch.from_arrays(arrays, schema=market.FEATURE_SCHEMA)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.devtools.train_model", description=__doc__.split("\n")[0])
    parser.add_argument("--features", required=True, help="features.jsonl to fit on")
    parser.add_argument("--output", required=True, help="where to write the model JSON")
    parser.add_argument("--version", required=True, help="the model version, carried by every score")
    parser.add_argument("--quantile", type=float, default=0.99, help="threshold quantile of the training scores")
    args = parser.parse_args(argv)
    if not 0 < args.quantile < 1:
        parser.error(f"--quantile must be in (0, 1), not {args.quantile}")
    if not args.version.strip():
        parser.error("--version must not be empty")
    try:
        features = read_features(args.features)
        if features.num_rows == 0:
            raise FeaturesError(f"{args.features}: no feature rows")
    except (OSError, FeaturesError) as error:
        print(f"train_model: error: {error}", file=sys.stderr)
        return 2
    trained_on = {
        "file": Path(args.features).name,
        "inputs_sha256": training_digest(features),
        "rows": features.num_rows,
    }
    model = fit_model(features, version=args.version, quantile=args.quantile, trained_on=trained_on)
    save_model(model, args.output)
    training = model["training"]
    print(
        f"{args.output}: model {model['name']} version {model['version']}: {training['rows']} rows, "
        f"{training['symbols']} symbols ({', '.join(sorted(s for s in model['symbols'] if s != '*'))}), "
        f"threshold {model['threshold']:.4g} (quantile {model['quantile']}), "
        f"{training['anomalies']} anomalies in training"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
