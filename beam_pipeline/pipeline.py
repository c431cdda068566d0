"""Build the quotes pipeline of a resolved job (:mod:`beam_pipeline.config`). Builds only: running
is the caller's business.

Each stage is one composite from its ``transforms/<stage>/stage.py`` (see docs/architecture.md):

::

    ReplayHistorical -> NormalizeQuotes -> ComputeMidPrices -----------------> WriteOutputs -> WriteMetrics
    (--streaming: ReplayAsStream;  |  \\------------- dead letters ----------------/  (live: AppendOutputs)
     unbounded: ReadFeed)          \\-> WindowQuotes -> windows, late -------------/   (with --window)
"""

from __future__ import annotations

import functools
import logging
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.config import QuotesJob
from beam_pipeline.options import (
    QUEUE,
)
from runners import make_runner
from schemas import latest_version, load_schema
from transforms.accounting import Accounting, combine
from transforms.queue.stage import WriteToQueue
from transforms.queue.streams import QueueAddress, QueueFeed
from transforms.quotes.stage import ComputeMidPrices, NormalizeQuotes
from transforms.sinks.avro_output import mid_price_records, quote_records
from transforms.sinks.files import staging_dir
from transforms.sinks.stage import (
    AppendText,
    MergeCounts,
    WriteAvroBlocks,
    WriteOrderedText,
    WriteRunMetrics,
    when_input_ends,
)
from transforms.sources.feeds import HistoricalFeed, QuoteFeed
from transforms.sources.live import LiveFeed
from transforms.sources.modes import SwitchingFeed
from transforms.sources.stage import ReadFeed, ReplayAsStream, ReplayHistorical, plan_stream_replay
from transforms.sources.webhook import WebhookFeed, endpoint_url
from transforms.trades.spill import SPILL_FOLDER
from transforms.trades.stage import AnalyseTrades
from transforms.windows.logic import duration_text
from transforms.windows.stage import WindowQuotes

LOG = logging.getLogger(__name__)

#: What one step of a streaming replay costs on the BundleBasedDirectRunner (2 cores, measured by
#: benchmarks/window_throughput.py): only used to tell the user how long to expect.
SECONDS_PER_STEP = 0.25

#: Rows per block of a switchable replay: small enough that a mode switch takes effect promptly.
REPLAY_BLOCK_ROWS = 500


def replay_block_rows(rate: float) -> int:
    """Rows per block of a replay at ``rate`` quotes/s: about 50 ms of quotes, at most
    :data:`REPLAY_BLOCK_ROWS` (0: unpaced)."""
    if not rate:
        return REPLAY_BLOCK_ROWS
    return max(1, min(REPLAY_BLOCK_ROWS, int(rate / 20)))


def build_pipeline(
    job: QuotesJob,
    *,
    runner=None,
    run_id: str | None = None,
    started_at: float | None = None,
) -> beam.Pipeline:
    """The quotes pipeline of a resolved ``job`` (:func:`beam_pipeline.config.resolve`).

    With ``--streaming`` and historical input, the input files are read now, to plan the
    streaming replay (see :func:`transforms.sources.stage.plan_stream_replay`). With ``--source live``,
    ``replay`` or ``webhook`` the source is unbounded; its run id (``run_id``) names the
    :class:`transforms.sources.modes.RunControl` that stops it and switches its mode, and, for a webhook,
    the :class:`transforms.sources.webhook.WebhookInbox` it reads (registered by whoever serves ``--port``).
    """
    source, quotes, deliver, windowing = job.source, job.quotes, job.deliver, job.window
    live, streaming, lag_us = source.unbounded, source.streaming, source.watermark_lag_us
    sources = list(source.inputs)
    scale = quotes.scale
    run_id = run_id or uuid.uuid4().hex[:12]
    started_at = time.time() if started_at is None else started_at
    extra = {
        "source": source.source,
        "latency_threshold_ms": quotes.latency_threshold_ms,
        "inputs": list(sources),
        "streaming": streaming,
    }

    pipeline = beam.Pipeline(runner=runner or make_runner(job.options, unbounded_source=live), options=job.options)
    if live:
        feed = live_feed(job, run_id)
        if source.kind == "webhook":
            extra["webhook_url"] = feed.source
        elif source.kind == QUEUE:
            extra.update(queue_url=source.source, group=feed.group, consumer=feed.consumer)
        else:
            extra["live_url"] = source.live_url
        replay = pipeline | "ReadFeed" >> ReadFeed(feed, run_id=run_id, lag_us=lag_us,
                                                   watermark_interval_us=source.watermark_interval_us)
    elif streaming and source.watermark_interval_us:  # a runner with real watermarks: history as a feed
        history = HistoricalFeed(sources, default_symbol=source.default_symbol, block_bytes=source.block_bytes,
                                 open_file=source.opener())
        replay = pipeline | "ReplayHistoricalFeed" >> ReadFeed(
            history, run_id=run_id, lag_us=lag_us, watermark_interval_us=source.watermark_interval_us)
    elif streaming:
        plan = plan_stream_replay(
            sources,
            lag_us=lag_us,
            window=windowing.window if windowing else None,
            early_delay_us=windowing.trigger.early_delay_us if windowing else None,
            default_symbol=source.default_symbol,
            block_bytes=source.block_bytes,
            open_file=source.opener(),
        )
        replay = pipeline | "ReplayHistoricalStream" >> ReplayAsStream(plan, sources)
        extra["stream_steps"] = {"row_slices": plan.row_steps, "watermark_steps": plan.watermark_steps}
        LOG.info(
            "streaming replay: %s row slices and %s watermark steps; the local runner takes about %.2f s "
            "a step (2 cores), so expect roughly %.0f s",
            plan.row_steps, plan.watermark_steps, SECONDS_PER_STEP, SECONDS_PER_STEP * plan.row_steps,
        )
    else:
        replay = pipeline | "ReplayHistorical" >> ReplayHistorical(
            sources,
            default_symbol=source.default_symbol,
            block_bytes=source.block_bytes,
            show_progress=source.show_progress,
            open_file=source.opener(),
            dedup_horizon_us=source.dedup_horizon_us,
        )
    if source.watermark_interval_us:
        extra["watermark_interval"] = duration_text(source.watermark_interval_us)
    per_tenant = quotes.partition_by_tenant
    normalized = replay["blocks"] | "NormalizeQuotes" >> NormalizeQuotes(quotes.rules, partition_by_tenant=per_tenant)
    if deliver.sink:
        return _publish(pipeline, job, normalized, replay["counts"], extra, run_id, started_at)
    priced = normalized.valid | "ComputeMidPrices" >> ComputeMidPrices(
        quotes.latency_threshold_ms, scale=scale, partition_by_tenant=per_tenant
    )
    if deliver.avro_output:
        write_avro(normalized.valid, deliver.avro_output, scale, quotes.latency_threshold_ms, run_id, per_tenant)
        extra["avro_output"] = deliver.avro_output
    outputs = {
        "mid_prices.log": priced.mid_prices,
        "errors.log": priced.errors,
        "dead_letter.jsonl": normalized.dead_letters,
    }
    counts = [replay["counts"]]
    if source.dedup_horizon_us:
        extra["dedup_horizon"] = duration_text(source.dedup_horizon_us)
    if windowing:
        late_sources = sources if not live else list(feed.sources)
        windowed = normalized.valid | "WindowQuotes" >> WindowQuotes(
            windowing, scale, lag_us=lag_us, sources=late_sources, partition_by_tenant=per_tenant,
            as_they_fire=live and bool(source.watermark_interval_us),
            source_watermarks=bool(source.watermark_interval_us))
        outputs["windows.jsonl"] = windowed["windows"]
        outputs["late.jsonl"] = windowed["late"]
        counts.append(windowed["counts"])
        extra["windowing"] = windowing.as_dict()
        if streaming:
            extra["watermark_lag"] = duration_text(lag_us)

    analytics = job.analytics
    if analytics:
        # Batch output is staged under the sink's folder (deleted once published): the range parts wait there too.
        stage = analyse_trades(job, spill_dir=None if live else trade_spill_dir(deliver.output_dir, run_id))
        analysed = normalized.valid | "AnalyseTrades" >> stage
        counts.append(analysed.pop("counts"))
        outputs.update(analysed)
        extra.update(analytics.as_extra(), trade_inputs=list(job.trade_inputs))
        if stage.model_id:
            extra["model_id"] = stage.model_id
    if per_tenant:
        extra["partition_by_tenant"] = True
    accounting = combine(run_accounting(job))
    if set(outputs) != set(accounting.metric_names):  # the wiring above and the stages' declarations
        raise RuntimeError(f"the stages wire {sorted(outputs)} but declare {sorted(accounting.metric_names)}")
    published = write_files(outputs, deliver.output_dir, live, run_id, per_tenant)
    _ = published | "WriteMetrics" >> WriteRunMetrics(
        deliver.output_dir,
        merge_counts(*counts) if len(counts) > 1 else counts[0],
        accounting,
        extra=extra,
        started_at=started_at,
    )
    return pipeline


def run_accounting(job: QuotesJob) -> tuple[Accounting, ...]:
    """The declarations of the stages ``job`` wires, in the order of its outputs: added up, they
    are what ``metrics.json`` counts and checks; the CLI's summary shows them stage by stage."""
    if job.deliver.sink:
        return WriteToQueue.ACCOUNTING, NormalizeQuotes.ACCOUNTING
    parts = [ComputeMidPrices.ACCOUNTING, NormalizeQuotes.ACCOUNTING]
    if job.source.dedup_horizon_us:
        parts.append(ReplayHistorical.DEDUP_ACCOUNTING)
    if job.window:
        parts.append(WindowQuotes.accounting_for(job.window.accumulation))
    if job.analytics:
        parts.append(AnalyseTrades.accounting_for(scored=job.analytics.model is not None))
    return tuple(parts)


def every_stage_accounting() -> tuple[Accounting, ...]:
    """The declarations of every stage a quotes job can wire, in the order of its outputs: the
    words for whatever a finished run's ``metrics.json`` has, for a reader that has only the
    folder (the run report)."""
    return (ComputeMidPrices.ACCOUNTING, NormalizeQuotes.ACCOUNTING, ReplayHistorical.DEDUP_ACCOUNTING,
            WriteToQueue.ACCOUNTING, WindowQuotes.accounting_for(),
            AnalyseTrades.accounting_for(scored=True))


def trade_spill_dir(output_dir: str, run_id: str) -> str:
    """Where the trade analytics' range parts wait for their range: inside the run's staging folder,
    which the sink deletes once it has published (:mod:`transforms.trades.spill`)."""
    return FileSystems.join(staging_dir(output_dir, run_id), SPILL_FOLDER)


def analyse_trades(job: QuotesJob, spill_dir: str | None = None) -> AnalyseTrades:
    """The ``--trades`` stage (resolve checked that trade and quote prices have the same decimal);
    ``spill_dir``: see :class:`transforms.trades.stage.AnalyseRanges`."""
    analytics, prices = job.analytics, job.quotes.prices
    return AnalyseTrades(
        job.trade_inputs,
        latency_threshold_ms=job.quotes.latency_threshold_ms,
        max_age_us=analytics.max_quote_age_us,
        feature_size_us=analytics.feature_size_us,
        feature_period_us=analytics.feature_period_us,
        model_path=analytics.model,
        precision=prices.precision,
        scale=prices.scale,
        dedup_horizon_us=job.source.dedup_horizon_us,
        spill_dir=spill_dir,
    )


def merge_counts(*counts):
    """Count dicts from several stages -> one, once the input has ended (for WriteRunMetrics)."""
    return (
        counts
        | "AllCounts" >> beam.Flatten()
        | "WhenCountsEnd" >> when_input_ends()
        | "MergeCounts" >> beam.CombineGlobally(MergeCounts()).without_defaults()
    )


def write_files(outputs: dict, directory: str, live: bool, run_id: str, per_tenant: bool):
    """``{file name: chunks}`` to ``directory``: appended as they come (live) or written whole."""
    if live:
        return outputs | "AppendOutputs" >> AppendText(directory, per_tenant)
    return outputs | "WriteOutputs" >> WriteOrderedText(directory, run_id, per_tenant)


def _publish(pipeline, job: QuotesJob, normalized, read_counts, extra: dict, run_id: str,
             started_at: float) -> beam.Pipeline:
    """``--sink``: valid quotes to the queue, dead letters to ``dead_letter.jsonl``, and
    ``metrics.json`` balancing records_in = queued + dead_lettered."""
    deliver = job.deliver
    queued = normalized.valid | "WriteToQueue" >> WriteToQueue(
        deliver.sink, deliver.group, scale=job.quotes.scale, high_water=deliver.queue_high_water,
        max_len=deliver.queue_max_len,
    )
    counts = merge_counts(read_counts, queued)
    outputs = {"dead_letter.jsonl": normalized.dead_letters}
    published = write_files(outputs, deliver.output_dir, job.source.unbounded, run_id,
                            job.quotes.partition_by_tenant)
    extra.update(sink=deliver.sink, group=deliver.group, queue_high_water=deliver.queue_high_water)
    _ = published | "WriteMetrics" >> WriteRunMetrics(
        deliver.output_dir, counts, combine(run_accounting(job)), extra=extra, started_at=started_at,
    )
    return pipeline


def write_avro(
    valid, directory: str, scale: int, latency_threshold_ms: int, run_id: str, partition_by_tenant: bool = False
) -> None:
    """``--avro_output``: valid quotes and mid prices as Avro files, each with its latest schema
    (per tenant, in ``tenant=<t>`` folders, with ``partition_by_tenant``; resolve checked that the
    mid price schema's decimal holds a mid of the quote prices)."""
    quote_schema = load_schema("quote", latest_version("quote"))
    mid_schema = load_schema("mid_price", latest_version("mid_price"))
    _ = valid | "WriteQuotesAvro" >> WriteAvroBlocks(
        directory, "quotes", quote_schema, functools.partial(quote_records, scale=scale), run_id, partition_by_tenant
    )
    _ = valid | "WriteMidPricesAvro" >> WriteAvroBlocks(
        directory, "mid_prices", mid_schema,
        functools.partial(mid_price_records, scale=scale, latency_threshold_ms=latency_threshold_ms), run_id,
        partition_by_tenant,
    )


def live_feed(job: QuotesJob, run_id: str) -> QuoteFeed:
    """The feed of ``--source live``, ``replay`` (see :mod:`transforms.sources.modes`), ``webhook`` (the
    inbox registered as ``run_id``, see :mod:`transforms.sources.webhook`) or a queue url (one consumer of
    ``--group``, see :mod:`transforms.queue.streams`, its ledger in the consumer's folder)."""
    source = job.source
    if source.kind == QUEUE:
        return QueueFeed(
            QueueAddress.parse(source.source), source.group, source.consumer,
            ledger_dir=job.deliver.output_dir, dead_after_ms=source.queue_dead_after_ms,
        )
    if source.kind == "webhook":
        return WebhookFeed(run_id, source=endpoint_url(source.port))
    live = LiveFeed(source.live_url)
    if source.kind == "live":
        return live
    historical = HistoricalFeed(
        list(source.inputs),
        default_symbol=source.default_symbol,
        block_bytes=source.block_bytes,
        open_file=source.opener(),
        rate=source.replay_rate,
        max_rows=replay_block_rows(source.replay_rate),
    )
    return SwitchingFeed(historical, live, run_id, state_dir=source.state_dir)
