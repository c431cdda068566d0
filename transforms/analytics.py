"""analyse: trades joined with the prevailing mid, per-window features and model scores.

``AnalyseTrades`` is the analytics stage of the quotes job (``--trades``). It takes the valid
quote blocks of the normalize stage and reads the trade files itself::

    valid quote blocks -> QuotePoints ----------+--> JoinTradesWithMid -> enriched, unmatched
    trade CSVs -> ReadTrades (dedup, dead letters) -/          |
                           by_symbol (quotes, enriched, unmatched) --> ComputeFeatures -> ScoreFeatures

and returns one PCollection of :class:`~transforms.blocks.TextChunk` s per output file (see
:data:`OUTPUTS`) plus ``counts`` (``trades_in``, ``trades_duplicates``) for ``metrics.json``.
Every stage moves one Arrow record batch per symbol, never one element per row.

The quotes joined are the ones that make ``mid_prices.log``: valid, and not over the latency
threshold (a quote the job refuses to price is not a prevailing mid either).
"""

from __future__ import annotations

import functools
from typing import Sequence

import apache_beam as beam

from transforms.asof import enriched_chunk, unmatched_chunk
from transforms.features import ComputeFeatures, feature_chunk
from transforms.join import BY_SYMBOL, JoinTradesWithMid, QuotePoints
from transforms.trades import ReadTrades

#: Output file -> the metrics.json count of its lines.
OUTPUTS = {
    "trades_enriched.jsonl": "trades_enriched",
    "unmatched_trades.jsonl": "trades_unmatched",
    "trades_dead_letter.jsonl": "trades_dead_lettered",
    "features.jsonl": "feature_windows",
}
SCORE_OUTPUTS = {"scores.jsonl": "windows_scored"}
#: Every trade read is joined, unmatched, dead-lettered or a duplicate: trades_in is their sum.
TRADE_BALANCE = ["trades_enriched", "trades_unmatched", "trades_dead_lettered", "trades_duplicates"]
#: Every feature window gets one score.
SCORE_BALANCE = ["windows_scored"]


class AnalyseTrades(beam.PTransform):
    """Valid quote blocks -> ``{file name: TextChunks}`` of the analytics outputs, and ``counts``.

    Args:
        trade_sources: trade CSV paths (already expanded, in tie-break order).
        latency_threshold_ms: as for mid prices: quotes over it are not joined.
        max_age_us: the oldest quote a trade may be joined with.
        feature_size_us, feature_period_us: the sliding feature windows.
        model_path: the scoring model (JSON); None: no scores.
        precision, scale: the price decimal (the quote and trade schemas must agree).
        dedup_horizon_us: drop a trade_id seen again within this much arrival time (0: off).
        open_file: opens a trade file (default Beam's ``FileSystems.open``).
    """

    def __init__(self, trade_sources: Sequence[str], *, latency_threshold_ms: int, max_age_us: int,
                 feature_size_us: int, feature_period_us: int, model_path: str | None, precision: int, scale: int,
                 dedup_horizon_us: int = 0, open_file=None):
        super().__init__()
        self._sources = tuple(trade_sources)
        self._threshold = latency_threshold_ms
        self._max_age_us = max_age_us
        self._size_us = feature_size_us
        self._period_us = feature_period_us
        self._precision = precision
        self._scale = scale
        self._horizon_us = dedup_horizon_us
        self._open_file = open_file
        self._scorer = None
        if model_path is not None:
            from transforms.scoring import ScoreFeatures  # Beam's ml package: loaded when used

            self._scorer = ScoreFeatures(model_path)  # loads the model now: a bad one fails before the run

    @property
    def model_id(self) -> str | None:
        """``name:version`` of the scoring model (None: no scoring)."""
        return self._scorer.model_id if self._scorer else None

    def expand(self, valid_blocks):
        scale = self._scale
        trades = valid_blocks.pipeline | "ReadTrades" >> ReadTrades(
            self._sources, precision=self._precision, scale=scale, horizon_us=self._horizon_us,
            open_file=self._open_file,
        )
        quotes = valid_blocks | "QuotePoints" >> QuotePoints(self._threshold)
        joined = {"quotes": quotes, "trades": trades.trades} | "JoinTradesWithMid" >> JoinTradesWithMid(
            self._max_age_us, scale=scale
        )
        # The join has grouped each symbol's quotes and trades already: the features use that.
        features = joined[BY_SYMBOL] | "ComputeFeatures" >> ComputeFeatures(self._size_us, self._period_us, scale=scale)
        outputs = {
            "trades_enriched.jsonl": joined["enriched"]
            | "EnrichedText" >> beam.MapTuple(functools.partial(enriched_chunk, scale=scale)),
            "unmatched_trades.jsonl": joined["unmatched"]
            | "UnmatchedText" >> beam.MapTuple(functools.partial(unmatched_chunk, scale=scale)),
            "trades_dead_letter.jsonl": trades.dead_letters,
            "features.jsonl": features | "FeatureText" >> beam.MapTuple(feature_chunk),
            "counts": trades.counts,
        }
        if self._scorer is not None:
            from transforms.scoring import score_chunk

            scores = features | "ScoreFeatures" >> self._scorer
            outputs["scores.jsonl"] = scores | "ScoreText" >> beam.MapTuple(score_chunk)
        return outputs
