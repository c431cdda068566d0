"""The command line: parse and check options, build the pipeline, run it, print a summary.

Exit codes: 0 success; 1 the run failed or its counts do not balance; 2 bad usage (unknown
flag, invalid value, missing or malformed input), reported in one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
import traceback
import uuid
from contextlib import ExitStack, contextmanager
from typing import Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

import runners
from beam_pipeline import logs
from beam_pipeline import options as options_module
from beam_pipeline.control import HOST as CONTROL_HOST
from beam_pipeline.control import ControlServer, start_stdin_commands, stop_on_signals
from beam_pipeline.options import QUEUE, UNBOUNDED_SOURCES, ProductOptions, QuoteOptions, source_kind
from beam_pipeline.pipeline import (
    OUTPUTS,
    WINDOW_OUTPUTS,
    InputError,
    build_pipeline,
    bundled_sample,
    check_headers,
    expand_inputs,
    input_opener,
    output_dir,
)
from beam_pipeline.plugins import PluginError, check_plugins, input_hint, list_plugins
from beam_pipeline.report import ReportError, check_matplotlib, write_report
from runners import RunnerError, is_direct, make_runner
from schemas import SchemaError, load_schema
from transforms import telemetry, tracing
from transforms.sinks.files import balance
from transforms.sources.avro_input import AVRO_SUFFIX
from transforms.sources.modes import ModeError, PositionStore, forget_run, replay_layout, run_control
from transforms.sources.webhook import PATH as WEBHOOK_PATH
from transforms.sources.webhook import WebhookInbox, WebhookPolicy, WebhookServer, registered_inbox
from transforms.telemetry import MetricsServer
from transforms.trades.read import TradeInputError, check_trade_headers
from transforms.trades.scoring import ModelError, load_model
from transforms.trades.stage import OUTPUTS as ANALYTICS_OUTPUTS
from transforms.trades.stage import SCORE_OUTPUTS

LOG = logging.getLogger("beam_pipeline")
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


def help_text() -> str:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description="Replay historical quotes in arrival order and write mid prices (see README.md).",
        epilog="--runner: DirectRunner (default), PrismRunner, PortableRunner, DaskRunner, FlinkRunner or "
        "DataflowRunner; each checks the flags it needs (docs/runners.md). Beam's own options work too, "
        "e.g. --streaming, --job_endpoint, --direct_num_workers N.",
    )
    QuoteOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    ProductOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    runners.add_help(parser)
    return parser.format_help()


def prepare_output_dir(path: str, flag: str = "--output_dir") -> None:
    """Create an output folder now, so an unwritable place fails before the run, not after it."""
    try:
        if not FileSystems.exists(path):
            FileSystems.mkdirs(path)
    except Exception as exc:  # Beam wraps OSError in its own IOError types
        # Processes sharing an output folder (consumers of one queue group) may race to create it:
        # the loser's "already exists" is fine.
        if not FileSystems.exists(path):
            raise UsageError(f"{flag} {path}: cannot create it ({exc})") from None
    if FileSystems.get_scheme(path) is None and not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: not a directory")


_CHECK_LABELS = {
    "balanced": "mid-price counts",
    "windows_balanced": "window counts",
    "trades_balanced": "trade counts",
    "scores_balanced": "score counts",
}



def _summary(output_dir: str, metrics: dict) -> str:
    partitions = metrics.get("partitions", {})
    where = "tenant=*/" if partitions else ""
    names = {metric: where + name
             for name, metric in {**OUTPUTS, **WINDOW_OUTPUTS, **ANALYTICS_OUTPUTS, **SCORE_OUTPUTS}.items()}
    width = max(len(FileSystems.join(output_dir, name)) for name in [*names.values(), "metrics.json"])

    def row(metric: str, text: str) -> str:
        name = names.get(metric, metric)
        return f"  {FileSystems.join(output_dir, name):<{width}}  {text}"

    def balance_text(terms: list[str], total: str) -> str:
        parts = " + ".join(f"{metrics.get(m, 0):,}" for m in terms)
        ok = "balance" if balance(metrics, terms, total) else "DO NOT BALANCE"
        return f"{ok}: {metrics.get(total, 0):,} in = {parts}"

    source = metrics.get("source", "historical")
    if "sink" in metrics:
        return _sink_summary(output_dir, metrics)
    if source_kind(source) == QUEUE:
        origin = f"from the queue {source} (group {metrics['group']}, consumer {metrics['consumer']})"
    elif source == "live":
        origin = f"from the live feed {metrics['live_url']}"
    elif source == "replay":
        origin = (f"from {len(metrics['inputs'])} file(s) ({metrics.get('historical_records', 0):,}) "
                  f"and the live feed {metrics['live_url']} ({metrics.get('live_records', 0):,})")
    elif source == "webhook":
        origin = f"from the webhook {metrics['webhook_url']}"
    else:
        origin = f"from {len(metrics['inputs'])} file(s)"
    lines = [
        f"{'Replayed' if source == 'historical' else 'Read'} {metrics['records_in']:,} quotes {origin} "
        f"in {metrics['run_seconds']:.1f} s{' (streaming)' if metrics.get('streaming') else ''}",
        row("mid_prices", f"{metrics['mid_prices']:,} mid prices"),
        row("latency_filtered",
            f"{metrics['latency_filtered']:,} quotes over the {metrics['latency_threshold_ms']} ms latency threshold"),
        row("dead_lettered", f"{metrics['dead_lettered']:,} rejected rows, each with its reason"),
    ]
    if source == "webhook":
        refused = metrics.get("webhook_requests_rejected", {})
        by_status = ", ".join(f"{count:,} x {status}" for status, count in refused.items())
        lines.insert(1, f"  webhook: {metrics.get('webhook_requests_accepted', 0):,} requests accepted (202), "
                        f"{sum(refused.values()):,} refused{f' ({by_status})' if by_status else ''}")
    if "windowing" in metrics:
        timing = ", ".join(f"{count:,} {name}" for name, count in metrics.get("panes_by_timing", {}).items())
        lines += [
            row("windows_emitted",
                f"{metrics['windows_emitted']:,} panes ({timing or 'none'}), {metrics['windowing']['window']}"),
            row("late_dropped", f"{metrics['late_dropped']:,} quotes past their window's allowed lateness"),
        ]
    if "duplicates" in metrics:
        lines.append(f"  {metrics['duplicates']:,} duplicate quotes dropped (same line within "
                     f"{metrics['dedup_horizon']})")
    if "trades" in metrics:
        lines += [
            f"Read {metrics['trades_in']:,} trades from {len(metrics['trade_inputs'])} file(s); "
            f"{metrics.get('trades_duplicates', 0):,} duplicates dropped",
            row("trades_enriched", f"{metrics['trades_enriched']:,} trades joined with the prevailing mid "
                                   f"(at most {metrics['max_quote_age']} old)"),
            row("trades_unmatched", f"{metrics['trades_unmatched']:,} trades without a quote, each with its reason"),
            row("trades_dead_lettered", f"{metrics['trades_dead_lettered']:,} rejected trade rows, each with its reason"),
            row("feature_windows", f"{metrics['feature_windows']:,} feature windows, {metrics['features']}"),
        ]
        if "windows_scored" in metrics:
            flagged = metrics.get("scores_by_flag", {}).get("anomalies", 0)
            lines.append(row("windows_scored", f"{metrics['windows_scored']:,} windows scored by model "
                                               f"{metrics['model_id']}, {flagged:,} flagged as anomalies"))
    if partitions:
        tenants = ", ".join(partition.split("=", 1)[1] for partition in partitions)
        lines.append(f"  {len(partitions)} tenant partitions in {output_dir}: {tenants}")
    checks = metrics["balance_terms"]
    for check, terms in checks.items():
        label = _CHECK_LABELS.get(check, check) if len(checks) > 1 else "counts"
        total = metrics.get("balance_totals", {}).get(check, "records_in")
        lines.append(row("metrics.json", f"{label} {balance_text(terms, total)}"))
    return "\n".join(lines)


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


def _sink_summary(output_dir: str, metrics: dict) -> str:
    """The summary of a publisher run (``--sink``)."""
    balanced = "balance" if balance(metrics, ["queued", "dead_lettered"]) else "DO NOT BALANCE"
    return "\n".join([
        f"Published {metrics.get('queued', 0):,} of {metrics['records_in']:,} quotes to {metrics['sink']} "
        f"(group {metrics['group']}) in {metrics['run_seconds']:.1f} s",
        f"  {FileSystems.join(output_dir, 'dead_letter.jsonl')}  {metrics['dead_lettered']:,} rejected rows, "
        "each with its reason",
        f"  backpressure: waited {metrics.get('backpressure_waits', 0):,} times for the group (high water "
        f"{metrics['queue_high_water']:,}); {metrics.get('trimmed_unread', 0):,} unread entries trimmed",
        f"  {FileSystems.join(output_dir, 'metrics.json')}  counts {balanced}: {metrics['records_in']:,} in = "
        f"{metrics.get('queued', 0):,} queued + {metrics['dead_lettered']:,} dead letters",
    ])


#: metrics.json counts of records that did not reach the main outputs (mid prices, joined trades).
SET_ASIDE = ("dead_lettered", "latency_filtered", "late_dropped", "duplicates", "trades_dead_lettered",
             "trades_unmatched", "trades_duplicates")


def log_set_aside(metrics: dict) -> None:
    """One warning with the counts of everything dead-lettered, filtered, late or dropped as a
    duplicate (never a line per record): JSON logs carry them as ``counts``."""
    counts = {name: metrics[name] for name in SET_ASIDE if metrics.get(name)}
    if counts:
        LOG.warning("records set aside, each counted in metrics.json and written with its reason: %s",
                    ", ".join(f"{count:,} {name}" for name, count in counts.items()),
                    extra={"stage": "run", "counts": counts})


def check_queue(url: str, flag: str) -> None:
    """The queue's Redis answers, or a UsageError."""
    from transforms.queue.streams import QueueAddress

    address = QueueAddress.parse(url)
    try:
        address.connect().ping()
    except Exception as exc:  # redis raises its own ConnectionError types
        raise UsageError(f"{flag} {address.url}: cannot reach Redis ({exc})") from None


def check_live(config: QuoteOptions, sources: Sequence[str]) -> None:
    """What a live run needs before it starts: a local output folder, a reachable feed, and saved
    replay state (if any) that belongs to these inputs. Raises UsageError or ModeError.

    A webhook run has no feed to reach: its port is bound by :func:`open_webhook`."""
    if FileSystems.get_scheme(config.output_dir) is not None:
        raise UsageError(f"--output_dir {config.output_dir}: a live run appends to local files only")
    if config.source == "webhook":
        return
    if source_kind(config.source) == QUEUE:
        check_queue(config.source, "--source")
        return
    parts = urlsplit(config.live_url)
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        if not parts.hostname:
            raise ValueError("no host")
    except ValueError as exc:
        raise UsageError(f"--live_url {config.live_url}: not a valid url ({exc})") from None
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as exc:
        raise UsageError(f"--live_url {config.live_url}: cannot connect ({exc})") from None
    if config.source == "replay" and config.control_port:
        try:
            with socket.socket() as probe:
                probe.bind((CONTROL_HOST, config.control_port))
        except OSError as exc:
            raise UsageError(f"--control_port {config.control_port}: cannot listen on it ({exc})") from None
    if config.source == "replay" and config.state_dir:
        PositionStore(config.state_dir, sources, replay_layout(config.block_bytes)).load()


def open_webhook(config: QuoteOptions) -> WebhookServer:
    """Bind ``--port`` on 127.0.0.1 now, so a port in use is a usage error before anything runs, and
    set ``--port`` to the port bound (``--port 0``: a free one). :func:`steering` serves it."""
    policy = WebhookPolicy(
        options_module.quote_prices(),  # the rules build_pipeline normalizes with
        default_symbol=config.symbol.strip(),
        token=config.webhook_token,
        max_body=config.webhook_max_body,
    )
    try:
        server = WebhookServer(WebhookInbox(config.webhook_buffer), policy, config.port)
    except OSError as exc:
        raise UsageError(f"--port {config.port}: cannot listen on it ({exc})") from None
    config.port = server.port
    return server


@contextmanager
def steering(config: QuoteOptions, run_id: str, webhook: WebhookServer | None = None,
             metrics: MetricsServer | None = None) -> Iterator[None]:
    """For a live run: signals stop it; for a replay, the control endpoint and stdin switch it;
    for a webhook run, ``webhook`` serves (and feeds the run) until the run ends; ``metrics``
    serves the counters until then."""
    if source_kind(config.source) not in UNBOUNDED_SOURCES:
        yield
        return
    control = run_control(run_id)
    with stop_on_signals(control), ExitStack() as stack:
        if metrics is not None:
            stack.callback(metrics.close)
            print(f"{PROG}: metrics endpoint {metrics.url} (the Beam counters, Prometheus text format)",
                  file=sys.stderr, flush=True)
        if config.source == "replay":
            if config.control_port is not None:
                server = stack.enter_context(ControlServer(control, config.control_port))
                print(f"{PROG}: control endpoint {server.url} (GET /status, POST /mode)", file=sys.stderr, flush=True)
            start_stdin_commands(control)
        if webhook is not None:
            stack.enter_context(registered_inbox(run_id, webhook.inbox))  # what the run's WebhookFeed reads
            stack.enter_context(webhook)
            print(f"{PROG}: webhook endpoint {webhook.url} (POST {WEBHOOK_PATH}, GET /healthz, GET /metrics)",
                  file=sys.stderr, flush=True)
        yield


def open_metrics(port: int) -> MetricsServer:
    """The ``--metrics_port`` server, listening before the run starts (a port in use is a usage error)."""
    try:
        return MetricsServer(port)
    except OSError as exc:
        raise UsageError(f"--metrics_port {port}: cannot listen on it ({exc})") from None


def _products(options: PipelineOptions, started_at: float) -> int:
    """``--job products``: check its flags, then run it (see :mod:`beam_pipeline.products`)."""
    from beam_pipeline import products

    problems = products.check(options) + runners.check(options) + shared_files_problems(options, {})
    if options.view_as(QuoteOptions).report:
        problems.append("--report draws the quotes job's outputs; the products job has summary.json")
    if problems:
        raise UsageError("; ".join(problems))
    prepare_output_dir(options.view_as(QuoteOptions).output_dir)
    try:
        return products.run(options, started_at, PROG)
    except Exception as exc:  # the run itself failed: show why, with the trace for a bug report
        traceback.print_exc()
        print(f"{PROG}: run failed: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    started_at = time.time()
    webhook: WebhookServer | None = None
    metrics_server: MetricsServer | None = None
    try:
        options = parse_options(argv)
        config = options.view_as(QuoteOptions)
        if config.list_plugins:
            print(list_plugins())
            return 0
        logs.use_format(config.log_format)
        if config.job == "products":
            return _products(options, started_at)
        check_plugins()  # a broken normalizer plugin is a usage error, before anything is created
        standard = options.view_as(StandardOptions)
        live = source_kind(config.source) in UNBOUNDED_SOURCES
        problems = options_module.check(config, streaming=live or bool(standard.streaming))
        if live and not is_direct(standard.runner):
            problems.append(
                f"--source {config.source} runs on the DirectRunner here (got --runner {standard.runner}): "
                "its stop signal, control endpoint and file sink live in this process"
            )
        elif standard.streaming and not is_direct(standard.runner):
            problems.append(
                f"--streaming replays history through Beam's TestStream, which only the DirectRunner runs "
                f"(got --runner {standard.runner}); on Flink or Dataflow, WindowQuotes reads a real unbounded source"
            )
        inputs = {"--input": config.input, **({"--trades": config.trades} if config.trades else {})}
        problems += runners.check(options) + shared_files_problems(options, inputs)
        if problems:
            raise UsageError("; ".join(problems))
        sources = ([] if source_kind(config.source) in ("live", "webhook", QUEUE)
                   else expand_inputs(config.input or bundled_sample()))
        if config.reader_schema_version is not None:
            if not any(path.endswith(AVRO_SUFFIX) for path in sources):
                raise UsageError("--reader_schema_version applies to .avro inputs, and --input has none")
            load_schema("quote", config.reader_schema_version)  # a SchemaError names what exists
        opener = input_opener(config)
        for path in sources:  # one by one: an unreadable file's error says which plugin (if any) reads it
            try:
                check_headers([path], opener)
            except InputError as exc:
                raise InputError(f"{exc}{input_hint(path)}") from None
        trade_sources = expand_inputs(config.trades, "--trades") if config.trades else None
        if config.report:
            check_matplotlib()  # --report without matplotlib is a usage error before the run, not after it
        if trade_sources:
            check_trade_headers(trade_sources, FileSystems.open)  # a wrong file fails before the run
            model = options_module.analytics_config(config).model
            if model:
                load_model(model)  # a missing or broken model is a usage error, not a failed run
        if config.sink:
            check_queue(config.sink, "--sink")
        if live:
            check_live(config, sources)
            standard.streaming = True  # an unbounded source: say so to the runner
        if config.source == "webhook":
            webhook = open_webhook(config)  # before the output folder: a port in use leaves none behind
        if config.metrics_port is not None:
            metrics_server = open_metrics(config.metrics_port)
        runner = make_runner(options, unbounded_source=live)
        prepare_output_dir(config.output_dir)  # the last checks: a usage error leaves no folder behind
        if config.avro_output:
            prepare_output_dir(config.avro_output, "--avro_output")
        run_id = uuid.uuid4().hex[:12]
        logs.set_run_id(run_id)
        pipeline = build_pipeline(options, sources, trade_sources=trade_sources, runner=runner, run_id=run_id,
                                  started_at=started_at)
        problems = runners.portability_problems(pipeline, options)
        if problems:
            raise UsageError("; ".join(problems))
    except (UsageError, InputError, RunnerError, SchemaError, ModeError, TradeInputError, ModelError,
            PluginError, ReportError) as exc:
        if webhook is not None:
            webhook.close()
        if metrics_server is not None:
            metrics_server.close()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    if live:
        LOG.info("reading %s into %s until the feed ends or SIGINT/SIGTERM", config.source, config.output_dir)
    else:
        LOG.info("replaying %d file(s) into %s", len(sources), config.output_dir)
    try:
        telemetry.reset()  # /metrics counts this run from zero
        with steering(config, run_id, webhook, metrics_server), \
                tracing.run_span(run_id, config.job, type(pipeline.runner).__name__):
            pipeline.run().wait_until_finish()
    except Exception as exc:  # the run itself failed: show why, with the trace for a bug report
        traceback.print_exc()
        print(f"{PROG}: run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        forget_run(run_id)
    with FileSystems.open(FileSystems.join(output_dir(config), "metrics.json")) as stream:
        metrics = json.load(stream)
    log_set_aside(metrics)
    print(_summary(output_dir(config), metrics))
    if config.report:
        try:
            png, page = write_report(output_dir(config), default_symbol=config.symbol.strip(),
                                     reader_schema_version=config.reader_schema_version)
        except ReportError as exc:
            print(f"{PROG}: report: {exc}", file=sys.stderr)
            return 1
        print(f"  {page}  the run report (its figure: {png})")
    return 0 if metrics["balanced"] else 1
