"""Build the quotes pipeline from options. Builds only: running is the caller's business.

Each stage is one composite from its ``transforms/<stage>/stage.py`` (see docs/architecture.md):

::

    ReplayHistorical -> NormalizeQuotes -> ComputeMidPrices -----------------> WriteOutputs -> WriteMetrics
    (--streaming: ReplayAsStream;  |  \\------------- dead letters ----------------/  (live: AppendOutputs)
     unbounded: ReadFeed)          \\-> WindowQuotes -> windows, late -------------/   (with --window)
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from importlib import resources
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_pipeline.options import (
    QUEUE,
    UNBOUNDED_SOURCES,
    AnalyticsConfig,
    QuoteOptions,
    analytics_config,
    consumer_dir,
    consumer_name,
    dedup_horizon,
    quote_rules,
    source_kind,
    watermark_lag,
    window_config,
)
from beam_pipeline.plugins import PluginFormats
from runners import make_runner
from schemas import SchemaError, latest_version, load_schema
from transforms.queue.stage import WriteToQueue
from transforms.queue.streams import QueueAddress, QueueFeed
from transforms.quotes.normalize import price_rule
from transforms.quotes.rules import PriceRule
from transforms.quotes.stage import ComputeMidPrices, NormalizeQuotes
from transforms.sinks.avro_output import check_mid_scale, mid_price_records, quote_records
from transforms.sinks.stage import (
    AppendText,
    MergeCounts,
    WriteAvroBlocks,
    WriteOrderedText,
    WriteRunMetrics,
    when_input_ends,
)
from transforms.sources.avro_input import InputOpener
from transforms.sources.csv_blocks import HeaderError, read_header
from transforms.sources.feeds import HistoricalFeed, QuoteFeed
from transforms.sources.live import LiveFeed
from transforms.sources.modes import SwitchingFeed
from transforms.sources.stage import ReadFeed, ReplayAsStream, ReplayHistorical, plan_stream_replay
from transforms.sources.webhook import WebhookFeed, endpoint_url
from transforms.trades.read import trade_rules
from transforms.trades.stage import OUTPUTS as ANALYTICS_OUTPUTS
from transforms.trades.stage import SCORE_BALANCE, SCORE_OUTPUTS, TRADE_BALANCE, AnalyseTrades
from transforms.windows.logic import duration_text
from transforms.windows.stage import WindowQuotes

LOG = logging.getLogger(__name__)

#: Output file -> the metrics.json count of its lines. records_in must equal their sum.
OUTPUTS = {
    "mid_prices.log": "mid_prices",
    "errors.log": "latency_filtered",
    "dead_letter.jsonl": "dead_lettered",
}
#: The files of a publisher (--sink): records_in = quotes queued + dead letters.
SINK_OUTPUTS = {"dead_letter.jsonl": "dead_lettered"}
#: The group a publisher watches and a consumer joins when --group is not given.
DEFAULT_GROUP = "midprice"
#: The same for the window stage (with --window); records_in = quotes in panes + late + dead letters.
WINDOW_OUTPUTS = {
    "windows.jsonl": "windows_emitted",
    "late.jsonl": "late_dropped",
}


#: metrics.json names of the files' tallies (the others are ``<metric>_by_reason``).
TALLY_NAMES = {
    "windows.jsonl": "panes_by_timing",
    "trades_dead_letter.jsonl": "trades_dead_lettered_by_reason",
    "scores.jsonl": "scores_by_flag",
}


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


class InputError(ValueError):
    """The input files cannot be found or read as quote CSVs."""


def bundled_sample(name: str = "historical_sample.csv") -> str:
    """Path of a sample file shipped in ``beam_pipeline/data``."""
    return str(resources.files("beam_pipeline") / "data" / name)


def expand_inputs(pattern: str, flag: str = "--input") -> list[str]:
    """The files a path or glob names, sorted (the tie-break order); raises :class:`InputError`."""
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:  # Beam raises BeamIOError or a filesystem-specific error
        raise InputError(f"{flag} {pattern}: {exc}") from None
    paths = sorted(m.path for m in matches if not os.path.isdir(m.path))
    if not paths:
        raise InputError(f"{flag} {pattern}: no such file")
    return paths


def check_headers(paths: Sequence[str], open_file=None) -> None:
    """Read every file's header now, so a wrong file fails before the pipeline starts (an Avro
    file: its writer schema against the reader schema)."""
    open_file = open_file or FileSystems.open
    for path in paths:
        try:
            with open_file(path) as stream:
                read_header(stream, path)
        except (HeaderError, SchemaError) as exc:
            raise InputError(str(exc)) from None
        except OSError as exc:
            raise InputError(f"{path}: {exc}") from None


def input_opener(options: QuoteOptions) -> InputOpener:
    """Opens ``--input`` files: CSV as they are, ``.avro`` with ``--reader_schema_version``, the
    suffixes of installed normalizer plugins through them."""
    return InputOpener(options.reader_schema_version or latest_version("quote"), PluginFormats.installed())


def build_pipeline(
    options: PipelineOptions,
    sources: Sequence[str] | None = None,
    *,
    trade_sources: Sequence[str] | None = None,
    runner=None,
    run_id: str | None = None,
    started_at: float | None = None,
) -> beam.Pipeline:
    """The quotes pipeline for ``options``; ``sources`` defaults to expanding ``--input``.

    With ``--streaming`` and historical input, the input files are read now, to plan the
    streaming replay (see :func:`transforms.sources.stage.plan_stream_replay`). With ``--source live``,
    ``replay`` or ``webhook`` the source is unbounded; its run id (``run_id``) names the
    :class:`transforms.sources.modes.RunControl` that stops it and switches its mode, and, for a webhook,
    the :class:`transforms.sources.webhook.WebhookInbox` it reads (registered by whoever serves ``--port``).
    """
    config = options.view_as(QuoteOptions)
    kind = source_kind(config.source)
    live = kind in UNBOUNDED_SOURCES
    streaming = live or bool(options.view_as(StandardOptions).streaming)
    windowing = window_config(config, streaming)
    lag_us = watermark_lag(config) if streaming else None
    if sources is None and kind not in ("live", "webhook", QUEUE):
        sources = expand_inputs(config.input or bundled_sample())
    sources = list(sources or [])
    if trade_sources is None and config.trades:
        trade_sources = expand_inputs(config.trades, "--trades")
    rules = quote_rules()
    prices = price_rule(rules)
    scale = prices.scale
    horizon_us = dedup_horizon(config) if not streaming else 0  # a batch replay's (options refuse it otherwise)
    run_id = run_id or uuid.uuid4().hex[:12]
    started_at = time.time() if started_at is None else started_at
    default_symbol = config.symbol.strip()
    extra = {
        "source": config.source,
        "latency_threshold_ms": config.latency_threshold_ms,
        "inputs": list(sources),
        "streaming": streaming,
    }

    pipeline = beam.Pipeline(runner=runner or make_runner(options, unbounded_source=live), options=options)
    if live:
        feed = live_feed(config, sources, run_id)
        if kind == "webhook":
            extra["webhook_url"] = feed.source
        elif kind == QUEUE:
            extra.update(queue_url=config.source, group=feed.group, consumer=feed.consumer)
        else:
            extra["live_url"] = config.live_url
        replay = pipeline | "ReadFeed" >> ReadFeed(feed, run_id=run_id, lag_us=lag_us)
    elif streaming:
        plan = plan_stream_replay(
            sources,
            lag_us=lag_us,
            window=windowing.window if windowing else None,
            early_delay_us=windowing.trigger.early_delay_us if windowing else None,
            default_symbol=default_symbol,
            block_bytes=config.block_bytes,
            open_file=input_opener(config),
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
            default_symbol=default_symbol,
            block_bytes=config.block_bytes,
            show_progress=config.progress == "auto",
            open_file=input_opener(config),
            dedup_horizon_us=horizon_us,
        )
    per_tenant = config.partition_by_tenant
    normalized = replay["blocks"] | "NormalizeQuotes" >> NormalizeQuotes(rules, partition_by_tenant=per_tenant)
    if config.sink:
        return _publish(pipeline, config, normalized, replay["counts"], scale, live, extra, run_id, started_at)
    priced = normalized.valid | "ComputeMidPrices" >> ComputeMidPrices(
        config.latency_threshold_ms, scale=scale, partition_by_tenant=per_tenant
    )
    if config.avro_output:
        write_avro(normalized.valid, config.avro_output, scale, config.latency_threshold_ms, run_id, per_tenant)
        extra["avro_output"] = config.avro_output
    outputs = {
        "mid_prices.log": priced.mid_prices,
        "errors.log": priced.errors,
        "dead_letter.jsonl": normalized.dead_letters,
    }
    metric_names = dict(OUTPUTS)
    balances = {"balanced": list(OUTPUTS.values())}
    totals = {}
    counts = [replay["counts"]]
    if horizon_us:
        balances["balanced"].append("duplicates")  # records_in = out + filtered + dead letters + duplicates
        extra["dedup_horizon"] = duration_text(horizon_us)
    if windowing:
        late_sources = sources if not live else list(feed.sources)
        windowed = normalized.valid | "WindowQuotes" >> WindowQuotes(
            windowing, scale, lag_us=lag_us, sources=late_sources, partition_by_tenant=per_tenant)
        outputs["windows.jsonl"] = windowed["windows"]
        outputs["late.jsonl"] = windowed["late"]
        metric_names.update(WINDOW_OUTPUTS)
        in_panes = "quotes_in_panes" if windowing.accumulation == "discarding" else "windowed_quotes"
        balances["windows_balanced"] = [in_panes, "late_dropped", "dead_lettered"]
        counts.append(windowed["counts"])
        extra["windowing"] = windowing.as_dict()
        if streaming:
            extra["watermark_lag"] = duration_text(lag_us)

    analytics = analytics_config(config)
    if analytics:
        stage = analyse_trades(config, analytics, trade_sources, prices, horizon_us)
        analysed = normalized.valid | "AnalyseTrades" >> stage
        counts.append(analysed.pop("counts"))
        outputs.update(analysed)
        metric_names.update(ANALYTICS_OUTPUTS)
        balances["trades_balanced"] = list(TRADE_BALANCE)
        totals["trades_balanced"] = "trades_in"
        extra.update(analytics.as_extra(), trade_inputs=list(trade_sources))
        if stage.model_id:
            metric_names.update(SCORE_OUTPUTS)
            balances["scores_balanced"] = list(SCORE_BALANCE)
            totals["scores_balanced"] = "feature_windows"
            extra["model_id"] = stage.model_id
    if per_tenant:
        extra["partition_by_tenant"] = True
    out_dir = output_dir(config)
    published = write_files(outputs, out_dir, live, run_id, per_tenant)
    _ = published | "WriteMetrics" >> WriteRunMetrics(
        out_dir,
        merge_counts(*counts) if len(counts) > 1 else counts[0],
        metric_names,
        extra=extra,
        started_at=started_at,
        balances=balances,
        tally_names=TALLY_NAMES,
        totals=totals,
    )
    return pipeline


def analyse_trades(config: QuoteOptions, analytics: AnalyticsConfig, trade_sources: Sequence[str],
                   quote_rule: PriceRule, horizon_us: int) -> AnalyseTrades:
    """The ``--trades`` stage: prices must have the same decimal in the quote and trade schemas."""
    trade_rule = trade_rules(load_schema("trade", latest_version("trade")))
    if (trade_rule.precision, trade_rule.scale) != (quote_rule.precision, quote_rule.scale):
        raise SchemaError("the trade schema's price must have the quote schema's decimal precision and scale")
    return AnalyseTrades(
        trade_sources,
        latency_threshold_ms=config.latency_threshold_ms,
        max_age_us=analytics.max_quote_age_us,
        feature_size_us=analytics.feature_size_us,
        feature_period_us=analytics.feature_period_us,
        model_path=analytics.model,
        precision=quote_rule.precision,
        scale=quote_rule.scale,
        dedup_horizon_us=horizon_us,
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


def output_dir(config: QuoteOptions) -> str:
    """Where the run writes: ``--output_dir``, or a queue consumer's own folder in it."""
    return consumer_dir(config) if source_kind(config.source) == QUEUE else config.output_dir


def _publish(pipeline, config: QuoteOptions, normalized, read_counts, scale: int, live: bool, extra: dict,
             run_id: str, started_at: float) -> beam.Pipeline:
    """``--sink``: valid quotes to the queue, dead letters to ``dead_letter.jsonl``, and
    ``metrics.json`` balancing records_in = queued + dead_lettered."""
    group = config.group or DEFAULT_GROUP
    queued = normalized.valid | "WriteToQueue" >> WriteToQueue(
        config.sink, group, scale=scale, high_water=config.queue_high_water, max_len=config.queue_max_len,
    )
    counts = merge_counts(read_counts, queued)
    outputs = {"dead_letter.jsonl": normalized.dead_letters}
    published = write_files(outputs, config.output_dir, live, run_id, config.partition_by_tenant)
    extra.update(sink=config.sink, group=group, queue_high_water=config.queue_high_water)
    _ = published | "WriteMetrics" >> WriteRunMetrics(
        config.output_dir, counts, SINK_OUTPUTS, extra=extra, started_at=started_at,
        balances={"balanced": ["queued", "dead_lettered"]},
    )
    return pipeline


def write_avro(
    valid, directory: str, scale: int, latency_threshold_ms: int, run_id: str, partition_by_tenant: bool = False
) -> None:
    """``--avro_output``: valid quotes and mid prices as Avro files, each with its latest schema
    (per tenant, in ``tenant=<t>`` folders, with ``partition_by_tenant``)."""
    quote_schema = load_schema("quote", latest_version("quote"))
    mid_schema = load_schema("mid_price", latest_version("mid_price"))
    check_mid_scale(mid_schema, scale)
    _ = valid | "WriteQuotesAvro" >> WriteAvroBlocks(
        directory, "quotes", quote_schema, functools.partial(quote_records, scale=scale), run_id, partition_by_tenant
    )
    _ = valid | "WriteMidPricesAvro" >> WriteAvroBlocks(
        directory, "mid_prices", mid_schema,
        functools.partial(mid_price_records, scale=scale, latency_threshold_ms=latency_threshold_ms), run_id,
        partition_by_tenant,
    )


def live_feed(config: QuoteOptions, sources: Sequence[str], run_id: str) -> QuoteFeed:
    """The feed of ``--source live``, ``replay`` (see :mod:`transforms.sources.modes`), ``webhook`` (the
    inbox registered as ``run_id``, see :mod:`transforms.sources.webhook`) or a queue url (one consumer of
    ``--group``, see :mod:`transforms.queue.streams`)."""
    if source_kind(config.source) == QUEUE:
        return QueueFeed(
            QueueAddress.parse(config.source), config.group or DEFAULT_GROUP, consumer_name(config),
            ledger_dir=consumer_dir(config), dead_after_ms=config.queue_dead_after_ms,
        )
    if config.source == "webhook":
        return WebhookFeed(run_id, source=endpoint_url(config.port))
    live = LiveFeed(config.live_url)
    if config.source == "live":
        return live
    historical = HistoricalFeed(
        sources,
        default_symbol=config.symbol.strip(),
        block_bytes=config.block_bytes,
        open_file=input_opener(config),
        rate=config.replay_rate,
        max_rows=replay_block_rows(config.replay_rate),
    )
    return SwitchingFeed(historical, live, run_id, state_dir=config.state_dir)
