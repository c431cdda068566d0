"""Command-line options of the beam_pipeline application (Beam ``PipelineOptions`` subclasses),
the one parser that reads them (:func:`parse_options`), and the checks of their values that need
no file or network (:func:`check`). :func:`beam_pipeline.config.resolve` turns them into configs.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from dataclasses import dataclass
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from schemas import FieldRule, field_rules, load_schema
from transforms.queue.streams import QueueAddress, QueueError, is_queue_url
from transforms.quotes.normalize import price_rule
from transforms.quotes.rules import MAX_LATENCY_MS, TENANT_PATTERN, PriceRule
from transforms.sources.replay import DEFAULT_BLOCK_BYTES
from transforms.trades.scoring import PackagedModel
from transforms.windows.logic import (
    ACCUMULATION_MODES,
    WindowConfig,
    WindowingError,
    duration_text,
    parse_duration,
    parse_trigger,
    parse_window,
)

SOURCES = ("historical", "live", "replay", "webhook")
#: Sources that read the live feed: unbounded, run until the feed ends or SIGINT/SIGTERM.
LIVE_SOURCES = ("live", "replay")
#: ``--source redis://HOST:PORT/STREAM``: a consumer of a queue (see source_kind).
QUEUE = "queue"
#: Sources that run until stopped: the live feed's, the webhook (quotes pushed to --port), a queue.
UNBOUNDED_SOURCES = (*LIVE_SOURCES, "webhook", QUEUE)


def source_value(value: str) -> str:
    """``--source``: one of :data:`SOURCES` or a queue url (argparse type)."""
    if value in SOURCES:
        return value
    if is_queue_url(value):
        try:
            return QueueAddress.parse(value).url
        except QueueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    raise argparse.ArgumentTypeError(f"choose from {', '.join(SOURCES)} or redis://HOST:PORT/STREAM, got {value!r}")


def source_kind(source: str) -> str:
    """``--source`` as one of :data:`SOURCES`, or :data:`QUEUE` for a queue url."""
    return QUEUE if is_queue_url(source) else source


def consumer_name(options: QuoteOptions) -> str:
    """``--consumer``, or this host and process: unique among the group's consumers."""
    return options.consumer or f"{socket.gethostname()}-{os.getpid()}"


JOBS = ("quotes", "products")


class QuoteOptions(PipelineOptions):
    """Options of the quotes job. Flags use underscores, as Beam's own options do."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--job", default="quotes", choices=JOBS,
            help="which pipeline to run: quotes (mid prices, windows) or products (paginated HTTP APIs "
            "to summary.json; see --endpoints) (default: quotes)"
        )
        parser.add_argument(
            "--source", default="historical", type=source_value,
            help="where quotes come from: historical (--input, in arrival order), live (the websocket "
            "feed at --live_url), replay (history, switchable to live and back while running), "
            "webhook (quotes POSTed to 127.0.0.1:--port) or redis://HOST:PORT/STREAM (a consumer of "
            "the queue in --group; default: historical)",
        )
        parser.add_argument(
            "--input", default=None,
            help="historical quote CSV file or glob (default: the bundled sample); "
            "several files are merged in arrival order, ties broken by path order",
        )
        parser.add_argument("--output_dir", default="output", help="where every output file goes (default: ./output)")
        parser.add_argument(
            "--latency_threshold_ms", type=int, default=20,
            help="historical mode: a quote with a greater latency goes to errors.log (default: 20)",
        )
        parser.add_argument(
            "--symbol", default="UNKNOWN", help="symbol for files without a symbol column (default: UNKNOWN)"
        )
        parser.add_argument(
            "--block_bytes", type=int, default=DEFAULT_BLOCK_BYTES,
            help=f"CSV bytes per block travelling through the pipeline (default: {DEFAULT_BLOCK_BYTES})",
        )
        parser.add_argument(
            "--reader_schema_version", type=int, default=None,
            help="for .avro inputs: the quote schema version to read them with (default: the latest); "
            "files written with other versions are resolved to it",
        )
        parser.add_argument(
            "--avro_output", default=None,
            help="also write valid quotes (quote schema, latest version) and mid prices (mid_price schema) "
            "as Avro container files (deflate) in this folder, one file per block (default: none)",
        )
        parser.add_argument(
            "--partition_by_tenant", action="store_true", default=False,
            help="write mid prices, errors, dead letters, windows and late quotes per tenant, to "
            "OUTPUT_DIR/tenant=<t>/<file> (dead letters whose tenant cannot be read: tenant=_unattributed)",
        )
        parser.add_argument(
            "--report", action="store_true", default=False,
            help="after the run, also write report.png and report.html (self-contained) to the output "
            "folder: mid prices per symbol with filtered and late quotes marked, OHLC, latencies, counts "
            "(needs pip install 'beam_pipeline[report]')",
        )
        parser.add_argument(
            "--log_format", default="text", choices=("text", "json"),
            help="log lines on stderr as text or as JSON objects (timestamp, level, logger, message, "
            "run_id, stage, counts) for a log collector (default: text)",
        )
        parser.add_argument(
            "--progress", default="auto", choices=("auto", "off"),
            help="print a progress line on stderr for runs longer than a few seconds (default: auto)",
        )
        parser.add_argument(
            "--list_plugins", action="store_true", default=False,
            help="print the installed normalizer plugins (input formats, entry point group "
            "beam_pipeline.normalizers) and exit",
        )
        live = parser.add_argument_group("live feed and replay (--source live or replay)")
        live.add_argument("--live_url", default=None, help="the websocket quote feed, ws://HOST:PORT/PATH")
        live.add_argument(
            "--control_port", type=int, default=None,
            help="--source replay: serve GET /status and POST /mode on 127.0.0.1 at this port "
            "(0: any free port, printed at start; default: no endpoint, stdin commands only)",
        )
        live.add_argument(
            "--metrics_port", type=int, default=None,
            help="long-running sources (live, replay, webhook, redis://...): serve the Beam counters as they "
            "grow, GET /metrics in Prometheus' text format, on 127.0.0.1 at this port (0: any free port, "
            "printed at start; default: none)",
        )
        live.add_argument(
            "--state_dir", default=None,
            help="--source replay: keep the replay position here, so a restarted run resumes (default: not kept)",
        )
        live.add_argument(
            "--replay_rate", type=float, default=0.0,
            help="--source replay: historical quotes per second (default: 0, as fast as possible)",
        )
        webhook = parser.add_argument_group("webhook ingestion (--source webhook)")
        webhook.add_argument(
            "--port", type=int, default=None,
            help="--source webhook: serve POST /webhook, GET /healthz and GET /metrics on 127.0.0.1 at "
            "this port (0: any free port, printed at start)",
        )
        webhook.add_argument(
            "--webhook_token", default=None,
            help="--source webhook: require 'Authorization: Bearer TOKEN' on POST /webhook (default: none)",
        )
        webhook.add_argument(
            "--webhook_max_body", type=int, default=1 << 20,
            help="--source webhook: largest request body in bytes, larger is 413 (default: 1 MiB)",
        )
        webhook.add_argument(
            "--webhook_buffer", type=int, default=10_000,
            help="--source webhook: quotes accepted but not yet read by the pipeline; beyond it, "
            "POST /webhook answers 429 with Retry-After (default: 10000)",
        )
        queue = parser.add_argument_group("queue (--sink or --source redis://HOST:PORT/STREAM)")
        queue.add_argument(
            "--sink", default=None,
            help="publish the valid quotes to this Redis stream (redis://HOST:PORT/STREAM) instead of "
            "writing mid prices; consumers (--source URL --group G) compute them",
        )
        queue.add_argument("--group", default=None,
                           help="the consumer group: the one a consumer joins, the one whose lag a "
                           "publisher watches (default: midprice)")
        queue.add_argument("--consumer", default=None,
                           help="--source redis://...: this consumer's name in the group (default: HOST-PID); "
                           "outputs go to OUTPUT_DIR/consumer=<name>/")
        queue.add_argument("--queue_high_water", type=int, default=10_000,
                           help="--sink: group lag (undelivered entries) above which publishing waits (default: 10000)")
        queue.add_argument("--queue_max_len", type=int, default=None,
                           help="--sink: MAXLEN safety cap of the stream (default: 10 x high water); trimmed "
                           "unread entries are counted")
        queue.add_argument("--queue_dead_after_ms", type=int, default=10_000,
                           help="--source redis://...: a consumer silent this long is dead and its pending "
                           "entries are taken over (default: 10000)")
        analytics = parser.add_argument_group(
            "trade analytics (--trades: trades_enriched.jsonl, unmatched_trades.jsonl, features.jsonl, scores.jsonl)"
        )
        analytics.add_argument(
            "--trades", default=None,
            help="trade CSV file or glob (timestamp,symbol,price,size,side,trade_id[,latency_ms]): each trade is "
            "joined with the prevailing mid of its symbol, features are computed per window and scored "
            "(default: no trades; the bundled sample is beam_pipeline/data/trades_sample.csv)",
        )
        analytics.add_argument(
            "--max_quote_age", default=None,
            help="--trades: the oldest quote a trade may be joined with; older -> unmatched (default: 1s)",
        )
        analytics.add_argument(
            "--features", default=None,
            help="--trades: the feature windows per symbol, sliding:SIZE,PERIOD (default: sliding:10s,1s)",
        )
        analytics.add_argument(
            "--model", default=None,
            help="--trades: the anomaly model scoring each feature window, a local JSON file from "
            "python -m beam_pipeline.devtools.train_model, or none (default: the bundled model)",
        )
        analytics.add_argument(
            "--dedup_horizon", default=None,
            help="drop a quote (same CSV line) or trade (same trade_id) delivered again within this much "
            "arrival time, counted as duplicates (default: 10m with --trades, otherwise off; 0: off)",
        )
        windowing = parser.add_argument_group("event-time windows (windows.jsonl, late.jsonl)")
        windowing.add_argument(
            "--window", default=None,
            help="per-symbol windows: fixed:SIZE, sliding:SIZE,PERIOD or session:GAP, e.g. fixed:1s "
            "(default: no windows); durations in ms, s or m",
        )
        windowing.add_argument(
            "--allowed_lateness", default=None,
            help="how long after its end a window still takes late quotes, as LATE panes (default: 0ms)",
        )
        windowing.add_argument(
            "--trigger", default=None,
            help="watermark (one on-time pane, then a pane per late quote; the default), early:N "
            "(also an early pane every N quotes) or early:DURATION (processing time, whole seconds); "
            "early panes need --streaming",
        )
        windowing.add_argument(
            "--accumulation", default=None, choices=ACCUMULATION_MODES,
            help="whether a window's later panes repeat its earlier quotes (default: discarding)",
        )
        windowing.add_argument(
            "--watermark_lag", default=None,
            help="with --streaming: the replay's watermark is arrival time minus this lag (default: 0ms; "
            "inf: never advance, everything on time)",
        )
        windowing.add_argument(
            "--watermark_interval", default=None,
            help="on a runner with real watermarks (--runner PrismRunner): the source reports its watermark "
            f"after each interval of arrival time this long (default: {DEFAULT_WATERMARK_INTERVAL}; "
            "docs/event-time.md)",
        )


def window_config(options: QuoteOptions, streaming: bool) -> WindowConfig | None:
    """The windowing the flags ask for (None: no windows); raises :class:`WindowingError`."""
    given = [flag for flag in ("allowed_lateness", "trigger", "accumulation", "watermark_lag")
             if getattr(options, flag) is not None]
    if options.window is None:
        if given:
            raise WindowingError(f"--{given[0]} needs --window (e.g. --window fixed:1s)")
        return None
    trigger = parse_trigger(options.trigger or "watermark")
    if trigger.has_early_panes and not streaming:
        raise WindowingError(
            f"--trigger {options.trigger}: early panes need --streaming (a batch run fires each window once, on time)"
        )
    if options.watermark_lag is not None and not streaming:
        raise WindowingError("--watermark_lag needs --streaming (a batch run has no watermark: every quote is on time)")
    return WindowConfig(
        window=parse_window(options.window),
        trigger=trigger,
        accumulation=options.accumulation or "discarding",
        allowed_lateness_us=parse_duration(options.allowed_lateness or "0ms", "--allowed_lateness"),
    )


#: How much arrival time a source with a real watermark reads between two reports of it.
DEFAULT_WATERMARK_INTERVAL = "1s"

#: Defaults of the analytics flags (see :func:`analytics_config`).
DEFAULT_MAX_QUOTE_AGE = "1s"
DEFAULT_FEATURES = "sliding:10s,1s"
DEFAULT_DEDUP_HORIZON = "10m"
NO_MODEL = "none"
#: The bundled scoring model, written by ``python -m beam_pipeline.devtools.train_model``: package data, so
#: that each worker reads its own installed copy.
BUNDLED_MODEL = PackagedModel("beam_pipeline", "data/models/market_anomaly.json")

#: The quote schema version whose rules every job validates quotes with (the reader schema of Avro
#: input is a separate flag, ``--reader_schema_version``).
NORMALIZE_SCHEMA_VERSION = 1


def quote_rules() -> dict[str, FieldRule]:
    """The field rules quotes are validated with: the CLI, Beam YAML, the webhook and the report alike."""
    return field_rules(load_schema("quote", NORMALIZE_SCHEMA_VERSION))


def quote_prices() -> PriceRule:
    """The price rule (scale, range) of :func:`quote_rules`: how prices are parsed and printed."""
    return price_rule(quote_rules())


@dataclass(frozen=True)
class AnalyticsConfig:
    """What ``--trades`` and its flags ask for (durations in microseconds)."""

    trades: str
    max_quote_age_us: int
    feature_size_us: int
    feature_period_us: int
    model: str | PackagedModel | None  # a path or the bundled model; None: no scoring (--model none)

    def as_extra(self) -> dict:
        """The run's settings for ``metrics.json``."""
        return {
            "trades": self.trades,
            "max_quote_age": duration_text(self.max_quote_age_us),
            "features": f"sliding:{duration_text(self.feature_size_us)},{duration_text(self.feature_period_us)}",
            "model": None if self.model is None else str(self.model),
        }


def dedup_horizon(options: QuoteOptions) -> int:
    """``--dedup_horizon`` in microseconds: 0 is off (the default without ``--trades``)."""
    text = options.dedup_horizon
    if text is None:
        text = DEFAULT_DEDUP_HORIZON if options.trades else "0ms"
    elif text.strip() == "0":
        return 0
    return parse_duration(text, "--dedup_horizon")


def analytics_config(options: QuoteOptions) -> AnalyticsConfig | None:
    """The trade analytics the flags ask for (None without ``--trades``); raises :class:`WindowingError`."""
    if options.trades is None:
        given = [flag for flag in ("max_quote_age", "features", "model") if getattr(options, flag) is not None]
        if given:
            raise WindowingError(f"--{given[0]} needs --trades (e.g. --trades beam_pipeline/data/trades_sample.csv)")
        return None
    if not options.trades.strip():
        raise WindowingError("--trades must not be empty")
    age = parse_duration(options.max_quote_age or DEFAULT_MAX_QUOTE_AGE, "--max_quote_age")
    spec = parse_window(options.features or DEFAULT_FEATURES)
    if spec.kind != "sliding":
        raise WindowingError(f"--features takes sliding:SIZE,PERIOD, got {options.features!r}")
    if spec.size_us % spec.period_us:
        raise WindowingError(f"--features {options.features}: the size must be a whole number of periods")
    model = options.model or None
    if model is not None and model.strip().lower() == NO_MODEL:
        model = None
    elif model is None:
        model = BUNDLED_MODEL
    return AnalyticsConfig(options.trades, age, spec.size_us, spec.period_us, model)


def watermark_interval(options: QuoteOptions) -> int:
    """``--watermark_interval`` in microseconds (at least 1 ms: runners carry watermarks in ms)."""
    interval = parse_duration(options.watermark_interval or DEFAULT_WATERMARK_INTERVAL, "--watermark_interval")
    if interval < 1000:
        raise WindowingError(f"--watermark_interval must be at least 1ms, got {options.watermark_interval}")
    return interval


def watermark_lag(options: QuoteOptions) -> int | float:
    """``--watermark_lag`` in microseconds (``transforms.windows.logic.INFINITE`` for ``inf``)."""
    return parse_duration(options.watermark_lag or "0ms", "--watermark_lag", allow_infinite=True)


@dataclass(frozen=True)
class Checked:
    """The flags' values judged by :func:`check`: every problem argparse cannot see (empty when all
    is well), and what the flags that parse into configs gave (None where they could not)."""

    problems: list[str]
    window: WindowConfig | None = None  # None also: no --window
    watermark_lag_us: int | float | None = None
    watermark_interval_us: int | None = None
    analytics: AnalyticsConfig | None = None  # None also: no --trades
    dedup_horizon_us: int | None = None


def check(options: QuoteOptions, streaming: bool = False) -> Checked:
    """Judge every value of the quotes job's flags, parsing each once."""
    problems = []
    window = lag_us = interval_us = None
    try:
        window = window_config(options, streaming)
        lag_us = watermark_lag(options)
        interval_us = watermark_interval(options)
    except WindowingError as exc:
        problems.append(str(exc))
    if not 0 <= options.latency_threshold_ms < MAX_LATENCY_MS:
        problems.append(
            f"--latency_threshold_ms must be from 0 to {MAX_LATENCY_MS - 1}, got {options.latency_threshold_ms}"
        )
    if not options.symbol.strip():
        problems.append("--symbol must not be empty")
    if options.block_bytes < 1024:
        problems.append(f"--block_bytes must be at least 1024, got {options.block_bytes}")
    if not options.output_dir.strip():
        problems.append("--output_dir must not be empty")
    if options.avro_output is not None and not options.avro_output.strip():
        problems.append("--avro_output must not be empty")
    problems += _live_problems(options)
    problems += _webhook_problems(options)
    analytics = horizon_us = None
    try:
        analytics = analytics_config(options)
        horizon_us = dedup_horizon(options)
    except WindowingError as exc:
        problems.append(str(exc))
    else:
        problems += _analytics_problems(options, streaming, horizon_us)
    if options.metrics_port is not None:
        if source_kind(options.source) not in UNBOUNDED_SOURCES:
            problems.append("--metrics_port needs a long-running source (--source live, replay, webhook or "
                            "redis://...); a batch run writes its counters to metrics.json")
        if not 0 <= options.metrics_port <= 65535:
            problems.append(f"--metrics_port must be from 0 to 65535, got {options.metrics_port}")
    problems += _queue_problems(options)
    return Checked(problems, window, lag_us, interval_us, analytics, horizon_us)


def _analytics_problems(options: QuoteOptions, streaming: bool, horizon_us: int) -> list[str]:
    problems = []
    if horizon_us and (streaming or options.source != "historical"):
        problems.append("--dedup_horizon applies to batch runs of historical files (--source historical, "
                        "no --streaming)")
    if options.trades is None:
        return problems
    if streaming or options.source != "historical":
        problems.append(
            "--trades runs in batch on historical quotes (--source historical, no --streaming): the streaming "
            "join (transforms.trades.stage, state and event-time timers) is not wired to a live trade source yet"
        )
    for flag in ("sink", "partition_by_tenant"):
        if getattr(options, flag):
            problems.append(f"--trades does not go with --{flag}")
    return problems


def _queue_problems(options: QuoteOptions) -> list[str]:
    problems = []
    consuming = source_kind(options.source) == QUEUE
    if options.sink is not None:
        try:
            QueueAddress.parse(options.sink)
        except QueueError as exc:
            problems.append(f"--sink: {exc}")
        if consuming:
            problems.append("--sink and --source redis://... do not go together (a consumer writes mid prices)")
        for flag in ("window", "avro_output"):
            if getattr(options, flag) is not None:
                problems.append(f"--{flag} does not go with --sink (the publisher writes no mid prices)")
    elif options.group is not None and not consuming:
        problems.append("--group needs --sink or --source redis://HOST:PORT/STREAM")
    if options.consumer is not None and not consuming:
        problems.append("--consumer needs --source redis://HOST:PORT/STREAM")
    if options.consumer is not None and not re.match(TENANT_PATTERN, options.consumer):
        # It names the folder consumer=<name>: the same safe directory name a tenant must be.
        problems.append(f"--consumer must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or "
                        f"digit, got {options.consumer!r}")
    if options.queue_high_water < 1:
        problems.append(f"--queue_high_water must be at least 1, got {options.queue_high_water}")
    if options.queue_max_len is not None and options.queue_max_len <= options.queue_high_water:
        problems.append(f"--queue_max_len ({options.queue_max_len}) must exceed --queue_high_water "
                        f"({options.queue_high_water}): it is a safety cap, not the normal limit")
    if options.queue_dead_after_ms < 100:
        problems.append(f"--queue_dead_after_ms must be at least 100, got {options.queue_dead_after_ms}")
    return problems


def _live_problems(options: QuoteOptions) -> list[str]:
    live = options.source in LIVE_SOURCES
    if live and not options.live_url:
        return [f"--source {options.source} needs --live_url ws://HOST:PORT/PATH"]
    if live and not options.live_url.startswith(("ws://", "wss://")):
        return [f"--live_url must start with ws:// or wss://, got {options.live_url!r}"]
    problems = []
    if options.live_url and not live:
        problems.append("--live_url needs --source live or --source replay")
    replay_only = [flag for flag in ("control_port", "state_dir") if getattr(options, flag) is not None]
    if options.replay_rate:
        replay_only.append("replay_rate")
    if options.source != "replay" and replay_only:
        problems.append(f"--{replay_only[0]} needs --source replay")
    if options.control_port is not None and not 0 <= options.control_port <= 65535:
        problems.append(f"--control_port must be from 0 to 65535, got {options.control_port}")
    if options.replay_rate < 0:
        problems.append(f"--replay_rate must not be negative, got {options.replay_rate:g}")
    return problems


def _webhook_problems(options: QuoteOptions) -> list[str]:
    webhook = options.source == "webhook"
    if webhook and options.port is None:
        return ["--source webhook needs --port N (0: any free port)"]
    problems = []
    given = [flag for flag in ("port", "webhook_token") if getattr(options, flag) is not None]
    if given and not webhook:
        problems.append(f"--{given[0]} needs --source webhook")
    if options.port is not None and not 0 <= options.port <= 65535:
        problems.append(f"--port must be from 0 to 65535, got {options.port}")
    token = options.webhook_token
    if token is not None and not (token and token.isascii() and token.isprintable() and " " not in token):
        problems.append("--webhook_token must be printable ASCII without spaces (it is sent as 'Bearer TOKEN')")
    if options.webhook_max_body < 1:
        problems.append(f"--webhook_max_body must be at least 1 byte, got {options.webhook_max_body}")
    if options.webhook_buffer < 1:
        problems.append(f"--webhook_buffer must be at least 1 quote, got {options.webhook_buffer}")
    return problems


class ProductOptions(PipelineOptions):
    """Options of the products job (``--job products``): paginated HTTP APIs to ``summary.json``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        products = parser.add_argument_group("products job (--job products)")
        products.add_argument(
            "--endpoints", default=None,
            help="comma-separated product API urls (http://...); each one's JSON shape is recognised "
            "from its first page",
        )
        products.add_argument(
            "--mock", action="store_true", default=False,
            help="start the bundled mock product APIs on 127.0.0.1 and fetch from them (instead of --endpoints)",
        )
        products.add_argument(
            "--max_requests_per_second", type=float, default=5.0,
            help="client-side limit per endpoint, a token bucket (default: 5)",
        )
        products.add_argument(
            "--http_timeout", type=float, default=5.0, help="seconds before a request times out (default: 5)"
        )
        products.add_argument(
            "--max_retries", type=int, default=3,
            help="retries of a timed-out or 5xx request, with exponential backoff and jitter (default: 3)",
        )
        products.add_argument(
            "--breaker_failures", type=int, default=3,
            help="consecutive failed requests that open an endpoint's circuit breaker (default: 3)",
        )
        products.add_argument(
            "--breaker_cooldown", type=float, default=2.0,
            help="seconds an open breaker waits before one half-open probe; if the probe fails too, "
            "the endpoint's remaining pages are given up (default: 2)",
        )
        deliver = parser.add_argument_group("deliver products to a downstream HTTP API (--job products)")
        deliver.add_argument(
            "--deliver_url", default=None,
            help="also POST every product to this API in batches (idempotency key = product id), "
            "rate-limited and retried; the outcome is summary.json's 'delivery'",
        )
        deliver.add_argument(
            "--deliver_mock", action="store_true", default=False,
            help="start the bundled mock downstream API (15%% failures, 10 requests/s) and deliver to it",
        )
        deliver.add_argument(
            "--deliver_rate", type=float, default=8.0, help="requests per second to the downstream API (default: 8)"
        )
        deliver.add_argument(
            "--deliver_batch_size", type=int, default=20, help="records per request (default: 20)"
        )


#: The command's name in usage lines and messages.
PROG = "beam_pipeline"


class UsageError(ValueError):
    """A flag is unknown or has an invalid value."""


class _StrictParser(_BeamArgumentParser):
    """Beam's argument parser, raising instead of printing Beam's whole usage and exiting."""

    def error(self, message: str):
        raise UsageError(message)


def option_parser(add_help: bool = False) -> _StrictParser:
    """Every flag ``python -m beam_pipeline`` accepts: those of every ``PipelineOptions`` subclass
    imported, Beam's standard ones and the project's (``-h``/``--help`` only with ``add_help``:
    :func:`main` answers those before parsing)."""
    parser = _StrictParser(prog=PROG, allow_abbrev=False, add_help=add_help)
    for cls in PipelineOptions.__subclasses__():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def parse_options(argv: Sequence[str]) -> PipelineOptions:
    """Beam options from ``argv``; unknown flags and bad values raise :class:`UsageError`.

    Beam itself only warns about unknown flags and drops them, so a typo such as
    ``--latency_treshold_ms 5`` would silently run with the default.
    """
    _, unknown = option_parser().parse_known_args(list(argv))
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
    return PipelineOptions(list(argv))
