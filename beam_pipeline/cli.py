"""The command line: parse the flags, resolve them (:func:`beam_pipeline.config.resolve`), reach
what the run needs, build the pipeline, run it, print a summary.

Exit codes: 0 success; 1 the run failed or its counts do not balance; 2 bad usage (unknown
flag, invalid value, missing or malformed input), one line on stderr for each problem.
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
from dataclasses import replace
from typing import Iterator, Sequence
from urllib.parse import urlsplit

from apache_beam.io.filesystems import FileSystems

import runners
from beam_pipeline import logs
from beam_pipeline.config import OptionsError, ProductsJob, QuotesJob, SourceConfig, resolve
from beam_pipeline.control import HOST as CONTROL_HOST
from beam_pipeline.control import ControlServer, start_stdin_commands, stop_on_signals
from beam_pipeline.options import PROG, QUEUE, ProductOptions, QuoteOptions, UsageError, parse_options, source_kind
from beam_pipeline.pipeline import build_pipeline, run_accounting
from beam_pipeline.plugins import list_plugins
from beam_pipeline.report import ReportError, check_matplotlib, write_report
from runners import RunnerError, make_runner
from transforms import telemetry, tracing
from transforms.accounting import RECORDS_IN, Accounting, combine, render
from transforms.sinks.files import balance
from transforms.sources.modes import forget_run, run_control
from transforms.sources.webhook import PATH as WEBHOOK_PATH
from transforms.sources.webhook import WebhookInbox, WebhookPolicy, WebhookServer, registered_inbox
from transforms.telemetry import MetricsServer

LOG = logging.getLogger("beam_pipeline")


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


def _summary(output_dir: str, metrics: dict, parts: Sequence[Accounting]) -> str:
    """What the CLI prints after a run: where the quotes came from, then stage by stage the lines
    and files the stages declare (:mod:`transforms.accounting`), then each balance check."""
    summed = combine(parts)
    partitions = metrics.get("partitions", {})
    where = "tenant=*/" if partitions else ""
    width = max(len(FileSystems.join(output_dir, name))
                for name in [*(where + output.file for output in summed.outputs), "metrics.json"])

    def row(name: str, text: str) -> str:
        return f"  {FileSystems.join(output_dir, name):<{width}}  {text}"

    lines = [_origin(metrics)]
    for part in parts:
        lines += [render(note, metrics) for note in part.notes]
        lines += [row(where + output.file, render(output.summary, metrics)) for output in part.outputs]
    if partitions:
        tenants = ", ".join(partition.split("=", 1)[1] for partition in partitions)
        lines.append(f"  {len(partitions)} tenant partitions in {output_dir}: {tenants}")
    checks = metrics["balance_terms"]
    for check, terms in checks.items():
        label = summed.labels.get(check, check) if len(checks) > 1 else "counts"
        total = metrics.get("balance_totals", {}).get(check, RECORDS_IN)
        ok = "balance" if balance(metrics, terms, total) else "DO NOT BALANCE"
        sums = " + ".join(f"{metrics.get(term, 0):,}" for term in terms)
        lines.append(row("metrics.json", f"{label} {ok}: {metrics.get(total, 0):,} in = {sums}"))
    return "\n".join(lines)


def _origin(metrics: dict) -> str:
    """The summary's first line(s): how many quotes came from where, in how long."""
    source = metrics.get("source", "historical")
    seconds = f"in {metrics['run_seconds']:.1f} s{' (streaming)' if metrics.get('streaming') else ''}"
    if "sink" in metrics:
        return (f"Published {metrics.get('queued', 0):,} of {metrics['records_in']:,} quotes to {metrics['sink']} "
                f"(group {metrics['group']}) {seconds}")
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
    line = f"{'Replayed' if source == 'historical' else 'Read'} {metrics['records_in']:,} quotes {origin} {seconds}"
    if source == "webhook":
        refused = metrics.get("webhook_requests_rejected", {})
        by_status = ", ".join(f"{count:,} x {status}" for status, count in refused.items())
        line += (f"\n  webhook: {metrics.get('webhook_requests_accepted', 0):,} requests accepted (202), "
                 f"{sum(refused.values()):,} refused{f' ({by_status})' if by_status else ''}")
    return line


def log_set_aside(metrics: dict, names: Sequence[str]) -> None:
    """One warning with the counts of everything dead-lettered, filtered, late or dropped as a
    duplicate (``names``: what the run's stages set aside; never a line per record): JSON logs
    carry them as ``counts``."""
    counts = {name: metrics[name] for name in names if metrics.get(name)}
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


def preflight(job: QuotesJob) -> None:
    """What a run must reach before it starts, once its flags are resolved: matplotlib for
    ``--report``, the queue's Redis, the live feed, the replay's control port. Raises UsageError
    or ReportError. (A webhook run's port is bound by :func:`open_webhook`.)"""
    source = job.source
    if job.deliver.report:
        check_matplotlib()  # --report without matplotlib is a usage error before the run, not after it
    if job.deliver.sink:
        check_queue(job.deliver.sink, "--sink")
    if source.kind == QUEUE:
        check_queue(source.source, "--source")
    if source.kind not in ("live", "replay"):
        return
    parts = urlsplit(source.live_url)
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        if not parts.hostname:
            raise ValueError("no host")
    except ValueError as exc:
        raise UsageError(f"--live_url {source.live_url}: not a valid url ({exc})") from None
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as exc:
        raise UsageError(f"--live_url {source.live_url}: cannot connect ({exc})") from None
    if source.kind == "replay" and source.control_port:
        try:
            with socket.socket() as probe:
                probe.bind((CONTROL_HOST, source.control_port))
        except OSError as exc:
            raise UsageError(f"--control_port {source.control_port}: cannot listen on it ({exc})") from None


def open_webhook(job: QuotesJob) -> tuple[WebhookServer, QuotesJob]:
    """Bind ``--port`` on 127.0.0.1 now, so a port in use is a usage error before anything runs; the
    server and the job with the port bound (``--port 0``: a free one). :func:`steering` serves it."""
    source = job.source
    policy = WebhookPolicy(
        job.quotes.prices,  # the rules build_pipeline normalizes with
        default_symbol=source.default_symbol,
        token=source.webhook_token,
        max_body=source.webhook_max_body,
    )
    try:
        server = WebhookServer(WebhookInbox(source.webhook_buffer), policy, source.port)
    except OSError as exc:
        raise UsageError(f"--port {source.port}: cannot listen on it ({exc})") from None
    return server, replace(job, source=replace(source, port=server.port))


@contextmanager
def steering(source: SourceConfig, run_id: str, webhook: WebhookServer | None = None,
             metrics: MetricsServer | None = None) -> Iterator[None]:
    """For a live run: signals stop it; for a replay, the control endpoint and stdin switch it;
    for a webhook run, ``webhook`` serves (and feeds the run) until the run ends; ``metrics``
    serves the counters until then."""
    if not source.unbounded:
        yield
        return
    control = run_control(run_id)
    with stop_on_signals(control), ExitStack() as stack:
        if metrics is not None:
            stack.callback(metrics.close)
            print(f"{PROG}: metrics endpoint {metrics.url} (the Beam counters, Prometheus text format)",
                  file=sys.stderr, flush=True)
        if source.kind == "replay":
            if source.control_port is not None:
                server = stack.enter_context(ControlServer(control, source.control_port))
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


def _products(job: ProductsJob, started_at: float) -> int:
    """``--job products``, resolved: run it (see :mod:`beam_pipeline.products`)."""
    from beam_pipeline import products

    try:
        prepare_output_dir(job.output_dir)
    except UsageError as exc:
        return usage_error([str(exc)])
    try:
        return products.run(job, started_at, PROG)
    except Exception as exc:  # the run itself failed: show why, with the trace for a bug report
        traceback.print_exc()
        print(f"{PROG}: run failed: {exc}", file=sys.stderr)
        return 1


def usage_error(problems: Sequence[str]) -> int:
    """Print each problem on a line of its own (``beam_pipeline: error: ...``); the exit code, 2."""
    for problem in problems:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    started_at = time.time()
    try:
        options = parse_options(argv)
        if options.view_as(QuoteOptions).list_plugins:
            print(list_plugins())
            return 0
        logs.use_format(options.view_as(QuoteOptions).log_format)
        job = resolve(options)
    except OptionsError as exc:
        return usage_error(exc.problems)
    except UsageError as exc:
        return usage_error([str(exc)])
    if isinstance(job, ProductsJob):
        return _products(job, started_at)
    return _quotes(job, started_at)


def _quotes(job: QuotesJob, started_at: float) -> int:
    """Run the resolved quotes job: reach what it needs, build it, run it, print its summary."""
    webhook: WebhookServer | None = None
    metrics_server: MetricsServer | None = None
    source, deliver = job.source, job.deliver
    try:
        preflight(job)
        if source.kind == "webhook":
            webhook, job = open_webhook(job)  # before the output folder: a port in use leaves none behind
        if deliver.metrics_port is not None:
            metrics_server = open_metrics(deliver.metrics_port)
        runner = make_runner(job.options, unbounded_source=source.unbounded)
        prepare_output_dir(deliver.root_dir)  # the last checks: a usage error leaves no folder behind
        if deliver.avro_output:
            prepare_output_dir(deliver.avro_output, "--avro_output")
        run_id = uuid.uuid4().hex[:12]
        logs.set_run_id(run_id)
        pipeline = build_pipeline(job, runner=runner, run_id=run_id, started_at=started_at)
        problems = runners.portability_problems(pipeline, job.options)
        if problems:
            raise OptionsError(problems)
    except (UsageError, RunnerError, ReportError, OptionsError) as exc:
        if webhook is not None:
            webhook.close()
        if metrics_server is not None:
            metrics_server.close()
        return usage_error(exc.problems if isinstance(exc, OptionsError) else [str(exc)])

    if source.unbounded:
        LOG.info("reading %s into %s until the feed ends or SIGINT/SIGTERM", source.source, deliver.output_dir)
    else:
        LOG.info("replaying %d file(s) into %s", len(source.inputs), deliver.output_dir)
    try:
        telemetry.reset()  # /metrics counts this run from zero
        with steering(job.source, run_id, webhook, metrics_server), \
                tracing.run_span(run_id, "quotes", type(pipeline.runner).__name__):
            pipeline.run().wait_until_finish()
    except Exception as exc:  # the run itself failed: show why, with the trace for a bug report
        traceback.print_exc()
        print(f"{PROG}: run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        forget_run(run_id)
    with FileSystems.open(FileSystems.join(deliver.output_dir, "metrics.json")) as stream:
        metrics = json.load(stream)
    parts = run_accounting(job)
    log_set_aside(metrics, combine(parts).set_aside)
    print(_summary(deliver.output_dir, metrics, parts))
    if deliver.report:
        try:
            png, page = write_report(deliver.output_dir, default_symbol=source.default_symbol,
                                     reader_schema_version=source.reader_schema_version,
                                     accounting=parts)
        except ReportError as exc:
            print(f"{PROG}: report: {exc}", file=sys.stderr)
            return 1
        print(f"  {page}  the run report (its figure: {png})")
    return 0 if metrics["balanced"] else 1
