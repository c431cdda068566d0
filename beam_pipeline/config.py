"""Options resolved once: :func:`resolve` turns parsed flags into every problem, or frozen configs.

The command line (:mod:`beam_pipeline.cli`) and Beam YAML (:mod:`beam_pipeline.yaml_transforms`)
both call it; :func:`beam_pipeline.pipeline.build_pipeline` and
:func:`beam_pipeline.products.build_products_pipeline` take only what it returns::

    argv --parse_options--> PipelineOptions --resolve--> QuotesJob(source, quotes, window, analytics, deliver)
                                                     \\-> ProductsJob(...)
                                                     \\-> OptionsError(problems): exit 2, one line each

What it checks, all of it before anything is created: the flags' values and how they go
together (:func:`beam_pipeline.options.check`, which parses each into its config once), the
runner's own flags, the installed normalizer plugins, the input files (they exist; their headers,
Avro writer schemas and normalizer plugins read), the trade files' headers, the scoring model,
the schemas' decimals and saved replay state. What
it does not do is reach or bind anything on the network (the live feed, Redis, the ports to
listen on) or look for optional packages (matplotlib for ``--report``): the CLI does that next
(``cli.preflight``), since a YAML pipeline built elsewhere must not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from importlib import resources
from typing import Mapping, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

import runners
from beam_pipeline import options as flags
from beam_pipeline.options import (
    QUEUE,
    UNBOUNDED_SOURCES,
    AnalyticsConfig,
    ProductOptions,
    QuoteOptions,
    source_kind,
)
from beam_pipeline.plugins import PluginError, PluginFormats, input_hint, plugin_problems
from runners import is_direct, real_watermarks
from schemas import FieldRule, SchemaError, latest_version, load_schema
from transforms.products.paginate import Endpoint, FetchConfig, parse_endpoints
from transforms.quotes.normalize import price_rule
from transforms.quotes.rules import PriceRule
from transforms.sinks.avro_output import check_mid_scale
from transforms.sources.avro_input import AVRO_SUFFIX, InputOpener
from transforms.sources.csv_blocks import HeaderError, read_header
from transforms.sources.modes import ModeError, PositionStore, replay_layout
from transforms.trades.read import TradeInputError, check_trade_headers, trade_rules
from transforms.trades.scoring import ModelError, load_model
from transforms.windows.logic import WindowConfig

#: The group a publisher watches and a consumer joins when --group is not given.
DEFAULT_GROUP = "midprice"


class OptionsError(ValueError):
    """Everything wrong with a run's flags and inputs, one problem a line (the CLI's exit 2)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class InputError(ValueError):
    """The input files cannot be found or read as quote CSVs."""


@dataclass(frozen=True)
class SourceConfig:
    """Where quotes come from (``--source`` and its flags) and how they are read."""

    source: str  # historical, live, replay, webhook or a queue url (redis://HOST:PORT/STREAM)
    inputs: tuple[str, ...]  # --input's files, sorted (the tie-break order): historical and replay runs
    streaming: bool  # an unbounded source, or --streaming over history
    watermark_lag_us: int | float | None  # --watermark_lag of a streaming run (None in batch)
    #: --watermark_interval of a streaming run on a runner with real watermarks (Prism); None: the
    #: DirectRunner, which replays history through TestStream and fires live windows at the end
    watermark_interval_us: int | None
    default_symbol: str  # the symbol of rows in files without a symbol column
    block_bytes: int
    reader_schema_version: int | None  # of .avro inputs
    dedup_horizon_us: int  # 0: off
    show_progress: bool
    live_url: str | None
    control_port: int | None  # replay
    state_dir: str | None  # replay
    replay_rate: float  # replay; 0: unpaced
    port: int | None  # webhook; 0 until the CLI binds a free one
    webhook_token: str | None
    webhook_max_body: int
    webhook_buffer: int
    group: str  # a queue's consumer group
    consumer: str | None  # a queue consumer's name (None: not a queue consumer)
    queue_dead_after_ms: int

    @property
    def kind(self) -> str:
        """historical, live, replay, webhook or queue."""
        return source_kind(self.source)

    @property
    def unbounded(self) -> bool:
        return self.kind in UNBOUNDED_SOURCES

    def opener(self) -> InputOpener:
        """Opens input files: CSV as they are, ``.avro`` with the reader schema, the suffixes of
        installed normalizer plugins through them."""
        return InputOpener(self.reader_schema_version or latest_version("quote"), PluginFormats.installed())


@dataclass(frozen=True)
class QuoteConfig:
    """How quotes are validated and priced."""

    rules: Mapping[str, FieldRule]  # the quote schema's field rules (options.quote_rules)
    prices: PriceRule  # their price rule: how prices are parsed and printed
    latency_threshold_ms: int
    partition_by_tenant: bool

    @property
    def scale(self) -> int:
        return self.prices.scale


@dataclass(frozen=True)
class DeliverConfig:
    """Where the run's results go."""

    output_dir: str  # where this run writes: --output_dir, or a queue consumer's own folder in it
    root_dir: str  # --output_dir as given
    avro_output: str | None
    sink: str | None  # a queue url: publish valid quotes there instead of writing mid prices
    group: str  # the consumer group a publisher watches
    queue_high_water: int
    queue_max_len: int | None
    metrics_port: int | None
    report: bool


@dataclass(frozen=True)
class QuotesJob:
    """The quotes job, resolved: what :func:`beam_pipeline.pipeline.build_pipeline` builds."""

    options: PipelineOptions  # Beam's own, for the runner and its workers
    source: SourceConfig
    quotes: QuoteConfig
    deliver: DeliverConfig
    window: WindowConfig | None  # None: no --window
    analytics: AnalyticsConfig | None  # None: no --trades
    trade_inputs: tuple[str, ...]  # --trades' files, sorted


@dataclass(frozen=True)
class ProductsJob:
    """The products job, resolved: what :func:`beam_pipeline.products.build_products_pipeline` builds."""

    options: PipelineOptions
    output_dir: str
    fetch: FetchConfig
    endpoints: tuple[Endpoint, ...]  # empty with mock: the mock APIs' urls are known once they listen
    mock: bool
    deliver_url: str | None
    deliver_mock: bool
    deliver_rate: float
    deliver_batch_size: int


def resolve(options: PipelineOptions) -> QuotesJob | ProductsJob:
    """The job ``options`` ask for, checked whole; raises :class:`OptionsError` with every problem."""
    if options.view_as(QuoteOptions).job == "products":
        return _resolve_products(options)
    return _resolve_quotes(options)


#: Unbounded sources a runner with real watermarks reads here (the others' control lives in this process
#: and is tested on the DirectRunner only).
REAL_WATERMARK_SOURCES = ("live",)


def _runner_problems(options: PipelineOptions, kind: str, streaming: bool, interval_given: bool) -> list[str]:
    """Which runners read which sources: the DirectRunner all of them; Prism history with --streaming
    and the live feed, with real watermarks; the others batch only."""
    runner = options.view_as(StandardOptions).runner
    source = options.view_as(QuoteOptions).source
    real = real_watermarks(runner)
    problems = []
    if kind in UNBOUNDED_SOURCES and not is_direct(runner) and not (real and kind in REAL_WATERMARK_SOURCES):
        problems.append(
            f"--source {source} runs on the DirectRunner here (got --runner {runner}): its stop signal, control "
            "endpoint and file sink live in this process" + ("; PrismRunner reads --source live" if real else "")
        )
    elif streaming and kind not in UNBOUNDED_SOURCES and not is_direct(runner) and not real:
        problems.append(
            f"--streaming replays history through Beam's TestStream on the DirectRunner, or as a real unbounded "
            f"source on PrismRunner (got --runner {runner})"
        )
    elif streaming and real:
        problems += runners.prism.streaming_problems(options)
    if interval_given and not (streaming and real):
        problems.append("--watermark_interval needs a streaming run (--streaming or --source live) on --runner "
                        "PrismRunner: the DirectRunner's watermark does not advance while a source runs")
    return problems


def _resolve_quotes(options: PipelineOptions) -> QuotesJob:
    config = options.view_as(QuoteOptions)
    standard = options.view_as(StandardOptions)
    kind = source_kind(config.source)
    unbounded = kind in UNBOUNDED_SOURCES
    streaming = unbounded or bool(standard.streaming)
    checked = flags.check(config, streaming)
    problems = plugin_problems() + checked.problems  # a broken normalizer plugin first: it may explain the others
    problems += _runner_problems(options, kind, streaming, bool(config.watermark_interval))
    inputs = {"--input": config.input, **({"--trades": config.trades} if config.trades else {})}
    problems += runners.check(options) + shared_files_problems(options, inputs)
    if unbounded and FileSystems.get_scheme(config.output_dir) is not None:
        problems.append(f"--output_dir {config.output_dir}: a live run appends to local files only")
    if problems:  # the values are wrong: their configs cannot be made, nor the files judged by them
        raise OptionsError(problems)

    rules = flags.quote_rules()
    quotes = QuoteConfig(rules, price_rule(rules), config.latency_threshold_ms, config.partition_by_tenant)
    analytics = checked.analytics
    group = config.group or DEFAULT_GROUP
    consumer = flags.consumer_name(config) if kind == QUEUE else None
    source = SourceConfig(
        source=config.source,
        inputs=(),
        streaming=streaming,
        watermark_lag_us=checked.watermark_lag_us if streaming else None,
        watermark_interval_us=checked.watermark_interval_us if streaming and real_watermarks(standard.runner) else None,
        default_symbol=config.symbol.strip(),
        dedup_horizon_us=checked.dedup_horizon_us if not streaming else 0,
        show_progress=config.progress == "auto",
        group=group,
        consumer=consumer,
        **_as_given(config, "block_bytes", "reader_schema_version", "live_url", "control_port", "state_dir",
                    "replay_rate", "port", "webhook_token", "webhook_max_body", "webhook_buffer",
                    "queue_dead_after_ms"),
    )
    quote_files, problems = _quote_files(config, source)
    trade_files, trade_problems = _trade_files(analytics, quotes.prices)
    problems += trade_problems
    if config.avro_output:
        problems += _schema_problems(check_mid_scale, load_schema("mid_price", latest_version("mid_price")),
                                     quotes.scale)
    if problems:
        raise OptionsError(problems)
    if unbounded:
        standard.streaming = True  # an unbounded source: the job's options say so to any runner and caller
    return QuotesJob(
        options=options,
        source=replace(source, inputs=tuple(quote_files)),
        quotes=quotes,
        deliver=DeliverConfig(
            output_dir=os.path.join(config.output_dir, f"consumer={consumer}") if consumer else config.output_dir,
            root_dir=config.output_dir,
            group=group,
            **_as_given(config, "avro_output", "sink", "queue_high_water", "queue_max_len", "metrics_port", "report"),
        ),
        window=checked.window,
        analytics=analytics,
        trade_inputs=tuple(trade_files),
    )


def _as_given(options: PipelineOptions, *flags: str) -> dict:
    """``{flag: value}`` of flags a config takes as they are, under the same name."""
    return {flag: getattr(options, flag) for flag in flags}


def _quote_files(config: QuoteOptions, source: SourceConfig) -> tuple[list[str], list[str]]:
    """``--input``'s files (none for a source that reads no files) and the problems reading them:
    a missing file, a reader schema without Avro input, a header that is not a quote header."""
    if source.kind in ("live", "webhook", QUEUE):
        return [], []
    try:
        paths = expand_inputs(config.input or bundled_sample())
    except InputError as exc:
        return [], [str(exc)]
    problems = []
    if config.reader_schema_version is not None:
        if not any(path.endswith(AVRO_SUFFIX) for path in paths):
            problems.append("--reader_schema_version applies to .avro inputs, and --input has none")
        try:
            load_schema("quote", config.reader_schema_version)  # a SchemaError names what exists
        except SchemaError as exc:
            return paths, [*problems, str(exc)]
    opener = source.opener()
    for path in paths:  # one by one: an unreadable file's error says which plugin (if any) reads it
        try:
            check_headers([path], opener)
        except InputError as exc:
            problems.append(f"{exc}{input_hint(path)}")
        except PluginError as exc:  # the plugin converting it failed on its first chunk
            problems.append(str(exc))
    if source.kind == "replay" and source.state_dir:
        try:
            PositionStore(source.state_dir, paths, replay_layout(source.block_bytes)).load()
        except ModeError as exc:
            problems.append(str(exc))
    return paths, problems


def _trade_files(analytics: AnalyticsConfig | None, quote_prices: PriceRule) -> tuple[list[str], list[str]]:
    """``--trades``' files and the problems with them, the model and the trade schema's decimals."""
    if analytics is None:
        return [], []
    try:
        paths = expand_inputs(analytics.trades, "--trades")
    except InputError as exc:
        return [], [str(exc)]
    problems = []
    try:
        check_trade_headers(paths, FileSystems.open)  # a wrong file fails before the run
    except TradeInputError as exc:
        problems.append(str(exc))
    if analytics.model:
        try:
            load_model(analytics.model)  # a missing or broken model is a usage error, not a failed run
        except ModelError as exc:
            problems.append(str(exc))
    trade_prices = trade_rules(load_schema("trade", latest_version("trade")))
    if (trade_prices.precision, trade_prices.scale) != (quote_prices.precision, quote_prices.scale):
        problems.append("the trade schema's price must have the quote schema's decimal precision and scale")
    return paths, problems


def _schema_problems(check, *args) -> list[str]:
    try:
        check(*args)
    except SchemaError as exc:
        return [str(exc)]
    return []


def _resolve_products(options: PipelineOptions) -> ProductsJob:
    config, quote = options.view_as(ProductOptions), options.view_as(QuoteOptions)
    problems = [f"--{flag} is a quotes-job flag, not for --job products"
                for flag in PRODUCTS_REFUSE if getattr(quote, flag) is not None]
    if quote.source != "historical":
        problems.append("--source is a quotes-job flag, not for --job products")
    if quote.report:
        problems.append("--report draws the quotes job's outputs; the products job has summary.json")
    if config.mock == bool(config.endpoints):
        problems.append("--job products needs either --endpoints URL[,URL...] or --mock")
    if config.deliver_mock and config.deliver_url:
        problems.append("--deliver_url and --deliver_mock do not go together")
    if config.deliver_url and not config.deliver_url.startswith(("http://", "https://")):
        problems.append(f"--deliver_url must be an http(s) url, got {config.deliver_url!r}")
    if not config.deliver_rate > 0:
        problems.append(f"--deliver_rate must be positive, got {config.deliver_rate:g}")
    if config.deliver_batch_size < 1:
        problems.append(f"--deliver_batch_size must be at least 1, got {config.deliver_batch_size}")
    endpoints: list[Endpoint] = []
    if config.endpoints:
        try:
            endpoints = parse_endpoints(config.endpoints)
        except ValueError as exc:
            problems.append(str(exc))
    fetch = None
    try:
        fetch = FetchConfig(
            rate=config.max_requests_per_second,
            timeout=config.http_timeout,
            max_retries=config.max_retries,
            breaker_failures=config.breaker_failures,
            breaker_cooldown=config.breaker_cooldown,
        )
    except ValueError as exc:
        problems.append(f"products job: {exc}")
    problems += runners.check(options) + shared_files_problems(options, {})
    if problems:
        raise OptionsError(problems)
    return ProductsJob(
        options=options,
        output_dir=quote.output_dir,
        fetch=fetch,
        endpoints=tuple(endpoints),
        **_as_given(config, "mock", "deliver_url", "deliver_mock", "deliver_rate", "deliver_batch_size"),
    )


#: Quote-job flags that mean nothing to the products job (a one-line usage error if given).
PRODUCTS_REFUSE = ("input", "avro_output", "reader_schema_version", "live_url", "window", "port")


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


def shared_files_problems(options: PipelineOptions, inputs: Mapping[str, str | None]) -> list[str]:
    """On a runner whose workers are other machines (Dataflow), every path the workers open must be
    on a shared filesystem such as gs://. ``inputs``: flag -> path; ``None`` is the bundled sample."""
    if not runners.remote_workers(options):
        return []
    name = options.view_as(StandardOptions).runner
    problems = [
        f"{flag}: the workers of --runner {name} cannot read "
        f"{'the bundled sample' if path is None else path} on this machine; copy it to gs:// and pass {flag} gs://..."
        for flag, path in inputs.items() if FileSystems.get_scheme(path or bundled_sample()) is None
    ]
    config = options.view_as(QuoteOptions)
    for flag, path in (("--output_dir", config.output_dir), ("--avro_output", config.avro_output)):
        if path and FileSystems.get_scheme(path) is None:
            problems.append(f"{flag} {path}: the workers of --runner {name} write to gs://..., not to this machine")
    return problems
