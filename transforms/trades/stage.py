"""The trade analytics composites: ``ReadTrades``, ``QuotePoints``, ``AnalyseRanges``, ``JoinTradesWithMid``,
``ComputeFeatures``, ``ScoreFeatures`` and ``AnalyseTrades``, which wires them::

    valid quote blocks -> QuotePoints ----------+--> AnalyseRanges -> enriched, unmatched, features text
    trade CSVs -> ReadTrades (dedup, dead letters) -/        |
                                                  features by range --> ScoreFeatures -> scores text

``AnalyseTrades`` runs the batch join and features per event-time range (:class:`AnalyseRanges`, the
logic in :mod:`transforms.trades.ranges`), not per symbol whole: same results, bounded elements.
``JoinTradesWithMid`` and ``ComputeFeatures`` below are the per-symbol library transforms (and the
streaming join).

``AnalyseTrades`` returns one PCollection of :class:`~transforms.blocks.TextChunk` s per output file
(see :data:`ACCOUNTING`) plus ``counts`` for ``metrics.json``. The quotes joined are the ones that make
``mid_prices.log``: valid, and not over the latency threshold. The rules are in the pure modules
(:mod:`~transforms.trades.read`, :mod:`~transforms.trades.asof`, :mod:`~transforms.trades.features`,
:mod:`~transforms.trades.scoring`).

The join: each trade with the latest valid quote of its symbol at or before it (issue 9).

``JoinTradesWithMid`` takes ``{"quotes": (symbol, QUOTE_POINT batch), "trades": (symbol, TRADE
batch)}`` and returns ``{"enriched": (symbol, ENRICHED batch), "unmatched": (symbol, UNMATCHED
batch)}``. The join itself is :func:`transforms.trades.asof.join_trades`; this module only decides which
trades meet which quotes, and when.

Design
------

*Batch* (``streaming=False``): every quote and trade is known up front, so the join is one
``CoGroupByKey`` by symbol and one vectorized :func:`~transforms.trades.asof.join_trades` call per
symbol. An as-of join needs, for each trade, *all* earlier quotes of its symbol in one sorted
array; grouping by symbol gives exactly that, and a symbol is the natural unit of work (Beam's
per-element cost is paid once per symbol, never per row: a million trades join in about a
second). Windows would cut the "latest quote before" search at window boundaries, so both inputs
are re-windowed into the global window first.

*Streaming* (``streaming=True``): a trade cannot be joined when it arrives, because a quote
timestamped before it may still be on its way. The watermark is the runner's statement of "no
more data before this time" (up to the allowed lateness), so a trade's join is final once the
watermark passes ``trade.event_us + allowed_lateness_us``. Windows with triggers cannot express
this (the relevant quotes are those *before* the trade, in no fixed window, and a trade must not
be emitted twice), so the join is a stateful ``DoFn`` keyed by symbol:

* ``quotes`` (bag): the symbol's quotes that may still be some trade's as-of quote;
* ``pending`` (bag): trades waiting for their deadline;
* ``closed_us`` (value): the event time up to which the key's joins are final (the last firing);
* ``timer_us`` (value): where the key's single event-time timer is set (a timer can only be
  overwritten, so the earliest deadline is kept here to take the minimum with new trades).

One watermark timer per key is set to the earliest pending deadline. When it fires at ``T``,
every pending trade with a deadline ``<= T`` is joined with the quotes in state (one
``join_trades`` call) and emitted, ``closed_us = T``, and quotes older than
``T - allowed_lateness_us - max_age_us`` are dropped: any trade still to come that is not late has
``event_us > T - allowed_lateness_us``, so such a quote is too old to match it. The latest of the
dropped quotes is kept, so that a trade with only older quotes is still ``stale_quote`` and not
``no_quote`` (the reason and the age it reports are those of the batch join). The timer is then set
to the next pending deadline; with no trade pending it is set to let the quotes already in state be
garbage-collected (``latest quote + allowed lateness + max age``), so a symbol that quotes but never
trades does not grow its state forever.

A trade whose deadline is ``<= closed_us`` when it arrives can no longer be joined exactly (the
quotes it needs may be gone, and its answer must not depend on timing): it goes to ``unmatched``
with ``late_trade`` at once. A quote arriving after trades it would have served were emitted does
not change them (counted in ``late_quotes`` when ``event_us + allowed_lateness_us <= closed_us``);
it is kept for later trades. With every element within the allowed lateness, the streaming join
gives exactly the batch join's rows. Elements may hold one row or many.

Counters: ``trades_joined``, ``trades_unmatched``, ``late_quotes``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import VarIntCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.transforms import userstate, window
from apache_beam.utils.timestamp import Timestamp

from transforms import telemetry
from transforms.accounting import Accounting, Check, Output
from transforms.blocks import QuoteBlock
from transforms.quotes import columns
from transforms.quotes.normalize import dead_letter_chunk
from transforms.tracing import TracedDoFn
from transforms.trades import asof, market, ranges, spill
from transforms.trades.asof import enriched_range_chunk, unmatched_range_chunk
from transforms.trades.features import INPUT_SCHEMAS, check_windows, feature_range_chunk, sliding_features
from transforms.trades.read import (
    COUNTS,
    DEAD_LETTERS,
    DROPPED,
    TRADES,
    DroppedRows,
    TradeTally,
    by_symbol,
    read_trades,
    stream_trades,
    without_rows,
)
from transforms.trades.scoring import FeatureModelHandler, ModelPath, load_model, model_id

LOG = logging.getLogger(__name__)

ENRICHED = "enriched"
UNMATCHED = "unmatched"
#: Batch only: ``(symbol, {"quotes": [...], "enriched": [...], "unmatched": [...]})``, everything the
#: join grouped for one symbol (quotes in as-of order), for :class:`transforms.trades.stage.ComputeFeatures`
#: to use without grouping the same rows again.
BY_SYMBOL = "by_symbol"
_QUOTE, _TRADE = 0, 1
_NAMESPACE = "JoinTradesWithMid"


class RecordBatchCoder(beam.coders.Coder):
    """An Arrow record batch as Arrow IPC (schema included)."""

    def encode(self, value: pa.RecordBatch) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write_batch(value)
        return sink.getvalue().to_pybytes()

    def decode(self, encoded: bytes) -> pa.RecordBatch:
        return pa.ipc.open_stream(pa.py_buffer(encoded)).read_next_batch()

    def is_deterministic(self) -> bool:
        return True

    def estimate_size(self, value: pa.RecordBatch) -> int:
        return value.nbytes

    def to_type_hint(self):
        return pa.RecordBatch


beam.coders.registry.register_coder(pa.RecordBatch, RecordBatchCoder)

_Keyed = tuple[str, pa.RecordBatch]
_TAGGED = tuple[str, tuple[int, pa.RecordBatch]]  # (symbol, (_QUOTE or _TRADE, batch))


class _CountRowsFn(TracedDoFn):
    """Passes ``(symbol, batch)`` through and adds its rows to a counter.

    Counting here, downstream of the join, rather than in the timer callback that emits most
    rows, counts them on every runner: the BundleBasedDirectRunner does not report counters
    incremented in timer callbacks.
    """

    STAGE = "join_count"

    def __init__(self, name: str):
        self._name = name
        self._rows = telemetry.counter(_NAMESPACE, name)

    def process(self, element: _Keyed) -> Iterator[_Keyed]:
        self._rows.inc(element[1].num_rows)
        yield element


def _outputs(symbol: str, enriched: pa.RecordBatch, unmatched: pa.RecordBatch) -> Iterator:
    if enriched.num_rows:
        yield symbol, enriched
    if unmatched.num_rows:
        yield beam.pvalue.TaggedOutput(UNMATCHED, (symbol, unmatched))


# --------------------------------------------------------------------------- quote points


class _QuotePointsFn(TracedDoFn):
    STAGE = "join_quotes"

    def __init__(self, latency_threshold_ms: int | None):
        self._threshold_ms = latency_threshold_ms

    def process(self, block: QuoteBlock) -> Iterator[_Keyed]:
        yield from asof.quote_points(block.batch, self._threshold_ms)


class QuotePoints(beam.PTransform):
    """Valid quote blocks (:data:`transforms.quotes.normalize.VALID_SCHEMA`) -> ``(symbol, QUOTE_POINT batch)``.

    The quotes kept are those of ``mid_prices.log`` (see :func:`transforms.trades.asof.quote_points`);
    each element keeps its block's timestamp.
    """

    def __init__(self, latency_threshold_ms: int | None):
        super().__init__()
        self._threshold_ms = latency_threshold_ms

    def expand(self, valid_blocks):
        return valid_blocks | "QuotePointsBySymbol" >> beam.ParDo(_QuotePointsFn(self._threshold_ms)).with_output_types(
            tuple[str, pa.RecordBatch]
        )


# --------------------------------------------------------------------------- batch


class _BatchJoinFn(TracedDoFn):
    STAGE = "join"

    def __init__(self, max_age_us: int, scale: int):
        self._max_age_us = max_age_us
        self._scale = scale

    def process(self, grouped) -> Iterator:
        symbol, sides = grouped
        trades = market.concat(sides["trades"], market.TRADE_SCHEMA)
        quotes = asof.sorted_quotes(market.concat(sides["quotes"], market.QUOTE_POINT_SCHEMA))
        enriched, unmatched = asof.join_trades(trades, quotes, self._max_age_us, self._scale)
        yield from _outputs(symbol, enriched, unmatched)
        yield beam.pvalue.TaggedOutput(
            BY_SYMBOL, (symbol, {"quotes": [quotes], "enriched": [enriched], "unmatched": [unmatched]})
        )


# --------------------------------------------------------------------------- streaming


class _StreamingJoinFn(TracedDoFn):
    STAGE = "join_streaming"

    QUOTES = userstate.BagStateSpec("quotes", RecordBatchCoder())
    PENDING = userstate.BagStateSpec("pending", RecordBatchCoder())
    CLOSED = userstate.ReadModifyWriteStateSpec("closed_us", VarIntCoder())
    TIMER_AT = userstate.ReadModifyWriteStateSpec("timer_us", VarIntCoder())
    FLUSH = userstate.TimerSpec("flush", userstate.TimeDomain.WATERMARK)

    def __init__(self, max_age_us: int, scale: int, allowed_lateness_us: int):
        self._max_age_us = max_age_us
        self._scale = scale
        self._lateness_us = allowed_lateness_us
        self._late_quotes = telemetry.counter(_NAMESPACE, "late_quotes")

    def process(
        self,
        element,
        quotes=beam.DoFn.StateParam(QUOTES),
        pending=beam.DoFn.StateParam(PENDING),
        closed=beam.DoFn.StateParam(CLOSED),
        timer_at=beam.DoFn.StateParam(TIMER_AT),
        flush=beam.DoFn.TimerParam(FLUSH),
    ) -> Iterator:
        symbol, (kind, batch) = element
        if batch.num_rows == 0:
            return
        closed_us = closed.read()
        if kind == _QUOTE:
            if closed_us is not None:
                event_us = batch.column("event_us").to_numpy(zero_copy_only=False)
                late = int(np.count_nonzero(event_us + self._lateness_us <= closed_us))
                if late:
                    self._late_quotes.inc(late)
            quotes.add(batch)
            if timer_at.read() is None:  # nothing pending: let the quotes be collected later
                self._set(flush, timer_at, self._gc_deadline(batch))
            return
        deadline = batch.column("event_us").to_numpy(zero_copy_only=False) + self._lateness_us
        if closed_us is not None:
            late = deadline <= closed_us
            if late.any():
                detail = (
                    f"the trade arrived after its join closed at {_time_text(closed_us)}"
                    f" (allowed lateness {asof.seconds_text(self._lateness_us)})"
                )
                yield from _outputs(
                    symbol, market.empty(market.ENRICHED_SCHEMA), asof.late_trades(batch.filter(pa.array(late)), detail)
                )
                if late.all():
                    return
                batch = batch.filter(pa.array(~late))
                deadline = deadline[~late]
        pending.add(batch)
        earliest = int(deadline.min())
        current = timer_at.read()
        if current is None or earliest < current:
            self._set(flush, timer_at, earliest)

    @userstate.on_timer(FLUSH)
    def flush(
        self,
        key=beam.DoFn.KeyParam,
        fired=beam.DoFn.TimestampParam,
        quotes=beam.DoFn.StateParam(QUOTES),
        pending=beam.DoFn.StateParam(PENDING),
        closed=beam.DoFn.StateParam(CLOSED),
        timer_at=beam.DoFn.StateParam(TIMER_AT),
        flush=beam.DoFn.TimerParam(FLUSH),
    ) -> Iterator:
        now_us = fired.micros
        closed.write(now_us)
        timer_at.clear()
        trades = market.concat(pending.read(), market.TRADE_SCHEMA)
        held = asof.sorted_quotes(market.concat(quotes.read(), market.QUOTE_POINT_SCHEMA))
        deadline = trades.column("event_us").to_numpy(zero_copy_only=False) + self._lateness_us
        due = deadline <= now_us
        if due.any():
            enriched, unmatched = asof.join_trades(
                trades.filter(pa.array(due)), held, self._max_age_us, self._scale
            )
            yield from _outputs(key, enriched, unmatched)
        pending.clear()
        waiting = trades.filter(pa.array(~due)) if due.any() else trades
        if waiting.num_rows:
            pending.add(waiting)
        kept = self._collect(held, now_us - self._lateness_us - self._max_age_us)
        quotes.clear()
        if kept.num_rows:
            quotes.add(kept)
        if waiting.num_rows:
            self._set(flush, timer_at, int(deadline[~due].min()))
        elif kept.num_rows > 1:
            # Only the quotes newer than the latest one kept as a witness can still be collected.
            next_gc = self._gc_deadline(kept)
            if next_gc > now_us:
                self._set(flush, timer_at, next_gc)

    def _gc_deadline(self, quotes: pa.RecordBatch) -> int:
        """When the newest of ``quotes`` may be dropped (all but it, in fact: it is kept as the witness)."""
        return int(pc.max(quotes.column("event_us")).as_py()) + self._lateness_us + self._max_age_us

    @staticmethod
    def _collect(ordered: pa.RecordBatch, cutoff_us: int) -> pa.RecordBatch:
        """Of quotes in as-of order, those at or after ``cutoff_us`` and the latest one before it."""
        if ordered.num_rows == 0:
            return ordered
        event_us = ordered.column("event_us").to_numpy(zero_copy_only=False)
        first = max(int(np.searchsorted(event_us, cutoff_us, side="left")) - 1, 0)
        return ordered.slice(first)

    @staticmethod
    def _set(flush, timer_at, micros: int) -> None:
        flush.set(Timestamp(micros=micros))
        timer_at.write(micros)


def _tag(element: _Keyed, kind: int) -> _TAGGED:
    return element[0], (kind, element[1])


def _time_text(micros: int) -> str:
    return columns.format_timestamps(np.array([micros], dtype=np.int64))[0].as_py()


class JoinTradesWithMid(beam.PTransform):
    """As-of join of trades with the latest quote of their symbol (see the module docstring).

    Input: ``{"quotes": PCollection[(symbol, QUOTE_POINT batch)], "trades": PCollection[(symbol,
    TRADE batch)]}``. Output: ``{"enriched": PCollection[(symbol, ENRICHED batch)], "unmatched":
    PCollection[(symbol, UNMATCHED batch)]}``, and in batch also ``"by_symbol"`` (see :data:`BY_SYMBOL`).

    Args:
        max_age_us: the oldest quote that still matches a trade, in microseconds (inclusive).
        scale: the prices' decimal scale.
        streaming: join with state and event-time timers instead of one CoGroupByKey.
        allowed_lateness_us: (streaming) how long after a trade's time its quotes may still come.
    """

    def __init__(self, max_age_us: int, *, scale: int, streaming: bool = False, allowed_lateness_us: int = 0):
        super().__init__()
        if max_age_us < 0:
            raise ValueError(f"max_age_us must be >= 0, got {max_age_us}")
        if allowed_lateness_us < 0:
            raise ValueError(f"allowed_lateness_us must be >= 0, got {allowed_lateness_us}")
        self._max_age_us = max_age_us
        self._scale = scale
        self._streaming = streaming
        self._lateness_us = allowed_lateness_us

    def expand(self, inputs):
        quotes = inputs["quotes"] | "QuotesGlobal" >> beam.WindowInto(window.GlobalWindows())
        trades = inputs["trades"] | "TradesGlobal" >> beam.WindowInto(window.GlobalWindows())
        if self._streaming:
            tagged = (
                quotes | "TagQuotes" >> beam.Map(_tag, _QUOTE).with_output_types(_TAGGED),
                trades | "TagTrades" >> beam.Map(_tag, _TRADE).with_output_types(_TAGGED),
            ) | "QuotesAndTrades" >> beam.Flatten()
            fn = _StreamingJoinFn(self._max_age_us, self._scale, self._lateness_us)
            joined = tagged | "AsOfJoinOnWatermark" >> beam.ParDo(fn).with_outputs(UNMATCHED, main=ENRICHED)
        else:
            grouped = {"quotes": quotes, "trades": trades} | "BySymbol" >> beam.CoGroupByKey()
            fn = _BatchJoinFn(self._max_age_us, self._scale)
            joined = grouped | "AsOfJoin" >> beam.ParDo(fn).with_outputs(UNMATCHED, BY_SYMBOL, main=ENRICHED)
        enriched = joined[ENRICHED] | "CountJoined" >> beam.ParDo(_CountRowsFn("trades_joined")).with_output_types(
            _Keyed
        )
        unmatched = joined[UNMATCHED] | "CountUnmatched" >> beam.ParDo(
            _CountRowsFn("trades_unmatched")
        ).with_output_types(_Keyed)
        outputs = {ENRICHED: enriched, UNMATCHED: unmatched}
        if not self._streaming:
            outputs[BY_SYMBOL] = joined[BY_SYMBOL]
        return outputs


class _ReadTradesFn(TracedDoFn):
    STAGE = "read_trades"

    def __init__(self, precision: int, scale: int, horizon_us: int, open_file, blocks: bool = False):
        self._precision = precision
        self._scale = scale
        self._horizon_us = horizon_us
        self._open_file = open_file
        self._blocks = blocks
        self._records = telemetry.counter(self.__class__, "trades_in")
        self._valid = telemetry.counter(self.__class__, "valid_trades")
        self._dead = telemetry.counter(self.__class__, "dead_lettered_trades")
        self._duplicates = telemetry.counter(self.__class__, "duplicate_trades")

    def process(self, sources: Sequence[str]) -> Iterator[Any]:
        sources = tuple(sources)
        options = dict(open_file=self._open_file, precision=self._precision, scale=self._scale,
                       horizon_us=self._horizon_us)
        if self._blocks:
            tally = TradeTally()
            for block in stream_trades(sources, tally, **options):
                yield from by_symbol(block)
            valid, dead, counts = tally.valid, tally.dead, tally.counts()
            yield beam.pvalue.TaggedOutput(DROPPED, tally.dropped)
        else:
            read = read_trades(sources, **options)
            yield from by_symbol(read.valid)
            valid, dead, counts = read.valid.num_rows, read.dead, read.counts()
        self._records.inc(counts["trades_in"])
        self._valid.inc(valid)
        self._dead.inc(dead.num_rows)
        self._duplicates.inc(counts["trades_duplicates"])
        LOG.info("read %s trades from %s files: %s valid, %s dead letters, %s duplicates",
                 counts["trades_in"], len(sources), valid, dead.num_rows, counts["trades_duplicates"])
        if dead.num_rows:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter_chunk(0, dead, sources))
        yield beam.pvalue.TaggedOutput(COUNTS, counts)


class ReadTrades(beam.PTransform):
    """Read trade CSVs (already expanded paths, tie-break order) as normalized trades.

    Outputs ``trades`` (main: ``(symbol, RecordBatch of TRADE_SCHEMA)``, one per symbol, rows in
    arrival order), ``dead_letters`` (:class:`~transforms.blocks.TextChunk` s of
    ``trades_dead_letter.jsonl`` lines) and ``counts`` (one dict: ``trades_in``,
    ``trades_duplicates``; ``trades_in`` = valid + dead letters + duplicates).

    With ``blocks=True`` the files are read block by block and the trades go out as they are read
    (:func:`~transforms.trades.read.stream_trades`), never whole: ``trades`` then has one element per
    symbol and block (rows in file order, not arrival order), duplicates still in, and ``dropped``
    one :data:`~transforms.trades.read.DROPPED_SCHEMA` batch naming the duplicates, which the
    consumer must drop (:func:`~transforms.trades.read.without_rows`), as :class:`AnalyseRanges` does.

    Args:
        sources: file paths; FileSystems paths and compressed files work.
        precision, scale: the price decimal (:func:`trade_rules`).
        horizon_us: drop a trade whose ``trade_id`` was kept within this many microseconds
            before (0: keep every copy).
        open_file: opens a path for binary reading (default Beam's ``FileSystems.open``).
        blocks: emit the trades block by block, and the duplicates apart (see above).
    """

    def __init__(self, sources: Sequence[str], *, precision: int, scale: int, horizon_us: int = 0,
                 open_file=None, blocks: bool = False):
        super().__init__()
        if not sources:
            raise ValueError("ReadTrades needs at least one input file")
        self._sources = tuple(sources)
        self._outputs = (DEAD_LETTERS, COUNTS, DROPPED) if blocks else (DEAD_LETTERS, COUNTS)
        self._fn = _ReadTradesFn(precision, scale, horizon_us, open_file or FileSystems.open, blocks)

    def expand(self, pbegin):
        return (
            pbegin
            | "TradeFiles" >> beam.Create([self._sources])
            | "ReadTradesInArrivalOrder" >> beam.ParDo(self._fn).with_outputs(*self._outputs, main=TRADES)
        )


class _FeaturesFn(TracedDoFn):
    STAGE = "features"

    def __init__(self, size_us: int, period_us: int, scale: int):
        self._size_us = size_us
        self._period_us = period_us
        self._scale = scale
        self._windows = telemetry.counter(self.__class__, "feature_windows")

    def process(self, element):
        symbol, grouped = element
        inputs = {name: market.concat(grouped.get(name, ()), schema) for name, schema in INPUT_SCHEMAS.items()}
        rb = sliding_features(
            symbol, **inputs, size_us=self._size_us, period_us=self._period_us, scale=self._scale
        )
        if rb.num_rows:
            self._windows.inc(rb.num_rows)
            yield symbol, rb


class ComputeFeatures(beam.PTransform):
    """``{"quotes", "enriched", "unmatched"}`` of ``(symbol, RecordBatch)`` -> ``(symbol, FEATURE batch)``.

    Batch path: one ``CoGroupByKey`` by symbol, then :func:`sliding_features` once per symbol, so
    the output has one element per symbol with any quote or trade. A missing input is empty.
    Given a PCollection instead of the dict, it takes it as grouped already, ``(symbol, {input:
    [batches]})``: the join's ``by_symbol`` output, which saves grouping a million rows again.
    Counts the windows in the ``feature_windows`` counter.
    """

    def __init__(self, size_us: int, period_us: int, *, scale: int):
        super().__init__()
        check_windows(size_us, period_us)
        self._size_us = size_us
        self._period_us = period_us
        self._scale = scale

    def expand(self, inputs):
        if isinstance(inputs, beam.PCollection):
            grouped = inputs  # already (symbol, {input: [batches]}), e.g. JoinTradesWithMid's "by_symbol"
        else:
            unknown = set(inputs) - set(INPUT_SCHEMAS)
            if unknown:
                raise ValueError(f"ComputeFeatures: unknown inputs {sorted(unknown)}; expected {sorted(INPUT_SCHEMAS)}")
            grouped = dict(inputs) | "GroupBySymbol" >> beam.CoGroupByKey()
        return grouped | "SlidingFeatures" >> beam.ParDo(_FeaturesFn(self._size_us, self._period_us, self._scale))


class _ScoresFn(TracedDoFn):
    STAGE = "score"

    def __init__(self):
        self._windows = telemetry.counter("ScoreFeatures", "windows_scored")
        self._anomalies = telemetry.counter("ScoreFeatures", "anomalies")

    def process(self, keyed: tuple[str, PredictionResult]) -> Iterator[tuple[str, pa.RecordBatch]]:
        symbol, result = keyed
        scores: pa.RecordBatch = result.inference
        self._windows.inc(scores.num_rows)
        self._anomalies.inc(int(pc.sum(scores.column("anomaly")).as_py() or 0))
        yield symbol, scores


class ScoreFeatures(beam.PTransform):
    """``(symbol, FEATURE batch)`` -> ``(symbol, SCORE batch)`` with RunInference and the anomaly model.

    The key goes through :class:`KeyedModelHandler`: it is not a model input, and Beam's keyed
    handler (one model for all keys) carries it around the inference unchanged and keeps the
    unkeyed handler's batching, so :class:`FeatureModelHandler` stays a plain batch -> scores
    handler. The model is loaded once here, so a missing or invalid artifact fails the pipeline's
    construction (:class:`ModelError`), not its workers. Counters: ``windows_scored``, ``anomalies``.

    Args:
        model_path: the artifact: a local path or a :class:`PackagedModel`.
        max_batch_size: at most this many blocks per inference call.
    """

    def __init__(self, model_path: ModelPath, *, max_batch_size: int = 64, label: str | None = None):
        super().__init__(label)
        self._handler = FeatureModelHandler(model_path, max_batch_size=max_batch_size)
        self.model = load_model(self._handler.model_path)

    @property
    def model_id(self) -> str:
        return model_id(self.model)

    def expand(self, features: beam.PCollection) -> beam.PCollection:
        return (
            features
            | "RunInference" >> RunInference(KeyedModelHandler(self._handler))
            | "Scores" >> beam.ParDo(_ScoresFn())
        )


# --------------------------------------------------------------------------- batch, by range

_RANGE_PART = tuple[int, tuple[int, str, pa.RecordBatch]]  # (range, (_QUOTE or _TRADE, symbol, rows))
RANGE_FEATURES = "features"
RANGE_TEXT = {ENRICHED: "enriched_text", UNMATCHED: "unmatched_text", RANGE_FEATURES: "features_text"}


def _by_range(element: _Keyed, kind: int, plan: ranges.RangePlan) -> Iterator[_RANGE_PART]:
    symbol, batch = element
    for r, rows in ranges.split_rows(batch, plan):
        yield r, (kind, symbol, rows)


_SPILLED_PART = tuple[int, tuple[int, str, str]]  # (range, (_QUOTE or _TRADE, symbol, path of the rows))


class _SpillPartsFn(TracedDoFn):
    """``(range, (kind, symbol, rows))`` -> ``(range, (kind, symbol, path))``, the rows written to a
    file (:mod:`transforms.trades.spill`), so the shuffle by range carries paths only."""

    STAGE = "spill_range_parts"

    def __init__(self, directory: str):
        self._directory = directory

    def setup(self):
        spill.ensure_folder(self._directory)

    def process(self, element: _RANGE_PART) -> Iterator[_SPILLED_PART]:
        r, (kind, symbol, rows) = element
        yield r, (kind, symbol, spill.write_part(self._directory, r, kind, symbol, rows))


def _cell_witnesses(element: _Keyed, plan: ranges.RangePlan) -> pa.RecordBatch:
    return ranges.last_quotes_by_cell(element[0], element[1], plan)


class _WitnessTableFn(beam.CombineFn):
    """Per-block :func:`~transforms.trades.ranges.last_quotes_by_cell` tables -> one
    :func:`~transforms.trades.ranges.merge_witnesses` table (a row per symbol and cell: small)."""

    _COMPACT_AT = 64

    def create_accumulator(self) -> list:
        return []

    def add_input(self, accumulator: list, table: pa.RecordBatch) -> list:
        accumulator.append(table)
        if len(accumulator) >= self._COMPACT_AT:
            accumulator[:] = [ranges.merge_witnesses(accumulator)]
        return accumulator

    def merge_accumulators(self, accumulators) -> list:
        return [ranges.merge_witnesses([table for accumulator in accumulators for table in accumulator])]

    def extract_output(self, accumulator: list) -> pa.RecordBatch:
        return ranges.merge_witnesses(accumulator)


class _RangeAnalysisFn(TracedDoFn):
    """``(range, [(kind, symbol, rows)])`` -> the range's text chunks and its feature windows."""

    STAGE = "analyse_range"

    def __init__(self, plan: ranges.RangePlan, max_age_us: int, scale: int):
        self._plan = plan
        self._max_age_us = max_age_us
        self._scale = scale
        self._witnesses: tuple[int, ranges.Witnesses] | None = None
        self._dropped: tuple[int, DroppedRows] | None = None
        self._joined = telemetry.counter(_NAMESPACE, "trades_joined")
        self._unmatched = telemetry.counter(_NAMESPACE, "trades_unmatched")
        self._windows = telemetry.counter("_FeaturesFn", "feature_windows")
        self._ranges = telemetry.counter(_NAMESPACE, "ranges")

    def _drop(self, dropped: pa.RecordBatch) -> DroppedRows:
        if self._dropped is None or self._dropped[0] != id(dropped):
            self._dropped = (id(dropped), DroppedRows(dropped))
        return self._dropped[1]

    def _lookup(self, table: pa.RecordBatch) -> ranges.Witnesses:
        if self._witnesses is None or self._witnesses[0] != id(table):
            self._witnesses = (id(table), ranges.Witnesses(table))
        return self._witnesses[1]

    def process(self, element, table: pa.RecordBatch, dropped: pa.RecordBatch | None = None) -> Iterator:
        r, parts = element
        sides: tuple[dict, dict] = ({}, {})
        for kind, symbol, rows in parts:
            if isinstance(rows, str):  # a path (AnalyseRanges with spill_dir); left for a retry to read again
                rows = spill.read_part(rows)
            if kind == _TRADE and dropped is not None:
                rows = without_rows(rows, self._drop(dropped))
            sides[kind].setdefault(symbol, []).append(rows)
        result = ranges.analyse_range(r, sides[_QUOTE], sides[_TRADE], self._lookup(table).before, self._plan,
                                      max_age_us=self._max_age_us, scale=self._scale)
        self._ranges.inc()
        if result.enriched.num_rows:
            self._joined.inc(result.enriched.num_rows)
            yield beam.pvalue.TaggedOutput(RANGE_TEXT[ENRICHED], enriched_range_chunk(r, result.enriched, self._scale))
        if result.unmatched.num_rows:
            self._unmatched.inc(result.unmatched.num_rows)
            yield beam.pvalue.TaggedOutput(
                RANGE_TEXT[UNMATCHED], unmatched_range_chunk(r, result.unmatched, self._scale)
            )
        if result.features.num_rows:
            self._windows.inc(result.features.num_rows)
            yield beam.pvalue.TaggedOutput(RANGE_TEXT[RANGE_FEATURES], feature_range_chunk(r, result.features))
            yield r, result.features


class AnalyseRanges(beam.PTransform):
    """Batch join and features by event-time range (:mod:`transforms.trades.ranges`).

    ``{"quotes": (symbol, QUOTE_POINT batch), "trades": (symbol, TRADE batch)}``, and optionally
    ``"dropped"`` (one :data:`~transforms.trades.read.DROPPED_SCHEMA` batch: trades to leave out,
    the duplicates of ``ReadTrades(blocks=True)``) -> ``{"enriched_text",
    "unmatched_text", "features_text"}`` (:class:`~transforms.blocks.TextChunk` s, one per range, ``seq`` =
    the range, unkeyed: the sink concatenates them in range order) and ``"features"`` (``(range,
    FEATURE batch)``, for scoring). Every row is split by range where it is made (fused with its
    source), one ``GroupByKey`` by range brings a range's rows of every symbol together, and the
    witnesses (the last quote of each symbol and cell) are one small side input. Elements are
    ranges, never whole symbols, so no element grows with the input. Counters: ``trades_joined``,
    ``trades_unmatched``, ``feature_windows``, ``ranges``.

    Args:
        max_age_us: the oldest quote that still matches a trade (inclusive).
        feature_size_us, feature_period_us: the sliding feature windows.
        scale: the prices' decimal scale.
        range_us: the length of a range (rounded up to a multiple of the period).
        spill_dir: write each range part to a file in this folder (:mod:`transforms.trades.spill`)
            and group only their paths; None: the rows themselves go through the ``GroupByKey``
            (held in memory, whole, on the FnApiRunner).
    """

    def __init__(self, max_age_us: int, *, feature_size_us: int, feature_period_us: int, scale: int,
                 range_us: int = ranges.DEFAULT_RANGE_US, spill_dir: str | None = None):
        super().__init__()
        if max_age_us < 0:
            raise ValueError(f"max_age_us must be >= 0, got {max_age_us}")
        self._plan = ranges.plan_ranges(feature_size_us, feature_period_us, range_us)
        self._max_age_us = max_age_us
        self._scale = scale
        self._spill_dir = spill_dir

    def expand(self, inputs):
        plan = self._plan
        quotes = inputs["quotes"] | "QuotesGlobal" >> beam.WindowInto(window.GlobalWindows())
        trades = inputs["trades"] | "TradesGlobal" >> beam.WindowInto(window.GlobalWindows())
        witnesses = (
            quotes
            | "LastQuotePerCell" >> beam.Map(_cell_witnesses, plan).with_output_types(pa.RecordBatch)
            | "WitnessTable" >> beam.CombineGlobally(_WitnessTableFn()).with_output_types(pa.RecordBatch)
        )
        quote_parts = quotes | "QuotesByRange" >> beam.FlatMap(_by_range, _QUOTE, plan).with_output_types(_RANGE_PART)
        trade_parts = trades | "TradesByRange" >> beam.FlatMap(_by_range, _TRADE, plan).with_output_types(_RANGE_PART)
        if self._spill_dir is not None:
            quote_parts = quote_parts | "SpillQuoteParts" >> beam.ParDo(
                _SpillPartsFn(self._spill_dir)).with_output_types(_SPILLED_PART)
            trade_parts = trade_parts | "SpillTradeParts" >> beam.ParDo(
                _SpillPartsFn(self._spill_dir)).with_output_types(_SPILLED_PART)
        parts = (quote_parts, trade_parts) | "QuotesAndTrades" >> beam.Flatten()
        fn = _RangeAnalysisFn(plan, self._max_age_us, self._scale)
        side = {}
        if "dropped" in inputs:
            side["dropped"] = beam.pvalue.AsSingleton(
                inputs["dropped"] | "DroppedGlobal" >> beam.WindowInto(window.GlobalWindows()))
        analysed = (
            parts
            | "ByRange" >> beam.GroupByKey()
            | "JoinAndFeatures" >> beam.ParDo(fn, beam.pvalue.AsSingleton(witnesses), **side).with_outputs(
                *RANGE_TEXT.values(), main=RANGE_FEATURES)
        )
        return {name: analysed[name] for name in (*RANGE_TEXT.values(), RANGE_FEATURES)}


#: The analytics' files, and their balance: every trade read is joined, unmatched, dead-lettered
#: or a duplicate (trades_in is their sum).
ACCOUNTING = Accounting(
    outputs=(
        Output("trades_enriched.jsonl", "trades_enriched", "trades enriched",
               "{trades_enriched:,} trades joined with the prevailing mid (at most {max_quote_age} old)"),
        Output("unmatched_trades.jsonl", "trades_unmatched", "trades unmatched",
               "{trades_unmatched:,} trades without a quote, each with its reason"),
        Output("trades_dead_letter.jsonl", "trades_dead_lettered", "trade dead letters",
               "{trades_dead_lettered:,} rejected trade rows, each with its reason"),
        Output("features.jsonl", "feature_windows", "feature windows", "{feature_windows:,} feature windows, {features}"),
    ),
    checks=(Check("trades_balanced", ("trades_enriched", "trades_unmatched", "trades_dead_lettered",
                                      "trades_duplicates"), total="trades_in", label="trade counts"),),
    set_aside=("trades_dead_lettered", "trades_unmatched", "trades_duplicates"),
    counts=(("trades_in", "trades in"),),
    notes=("Read {trades_in:,} trades from {trade_inputs:len} file(s); {trades_duplicates:,} duplicates dropped",),
)

#: With a model: every feature window gets one score.
SCORE_ACCOUNTING = Accounting(
    outputs=(Output("scores.jsonl", "windows_scored", "windows scored",
                    "{windows_scored:,} windows scored by model {model_id}, {scores_by_flag[anomalies]:,} flagged as "
                    "anomalies", tally="scores_by_flag"),),
    checks=(Check("scores_balanced", ("windows_scored",), total="feature_windows", label="score counts"),),
)


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
        range_us: the join and the features run per event-time range of this length (:class:`AnalyseRanges`).
        spill_dir: where the range parts wait for their range (:class:`AnalyseRanges`); None: in the shuffle.
    """

    def __init__(self, trade_sources: Sequence[str], *, latency_threshold_ms: int, max_age_us: int,
                 feature_size_us: int, feature_period_us: int, model_path: str | None, precision: int, scale: int,
                 dedup_horizon_us: int = 0, open_file=None, range_us: int = ranges.DEFAULT_RANGE_US,
                 spill_dir: str | None = None):
        super().__init__()
        self._sources = tuple(trade_sources)
        self._range_us = range_us
        self._spill_dir = spill_dir
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
            from transforms.trades.stage import ScoreFeatures  # Beam's ml package: loaded when used

            self._scorer = ScoreFeatures(model_path)  # loads the model now: a bad one fails before the run

    @property
    def model_id(self) -> str | None:
        """``name:version`` of the scoring model (None: no scoring)."""
        return self._scorer.model_id if self._scorer else None

    @staticmethod
    def accounting_for(scored: bool) -> Accounting:
        """Its files and balances: :data:`ACCOUNTING`, and :data:`SCORE_ACCOUNTING` with a model."""
        return ACCOUNTING + SCORE_ACCOUNTING if scored else ACCOUNTING

    @property
    def accounting(self) -> Accounting:
        return self.accounting_for(self._scorer is not None)

    def expand(self, valid_blocks):
        scale = self._scale
        trades = valid_blocks.pipeline | "ReadTrades" >> ReadTrades(
            self._sources, precision=self._precision, scale=scale, horizon_us=self._horizon_us,
            open_file=self._open_file, blocks=True,
        )
        quotes = valid_blocks | "QuotePoints" >> QuotePoints(self._threshold)
        inputs = {"quotes": quotes, "trades": trades[TRADES], "dropped": trades[DROPPED]}
        analysed = inputs | "JoinAndFeaturesByRange" >> AnalyseRanges(
            self._max_age_us, feature_size_us=self._size_us, feature_period_us=self._period_us, scale=scale,
            range_us=self._range_us, spill_dir=self._spill_dir,
        )
        outputs = {
            "trades_enriched.jsonl": analysed[RANGE_TEXT[ENRICHED]],
            "unmatched_trades.jsonl": analysed[RANGE_TEXT[UNMATCHED]],
            "trades_dead_letter.jsonl": trades[DEAD_LETTERS],
            "features.jsonl": analysed[RANGE_TEXT[RANGE_FEATURES]],
            "counts": trades[COUNTS],
        }
        if self._scorer is not None:
            from transforms.trades.scoring import score_range_chunk

            scores = analysed[RANGE_FEATURES] | "ScoreFeatures" >> self._scorer
            outputs["scores.jsonl"] = scores | "ScoreText" >> beam.MapTuple(score_range_chunk)
        return outputs
