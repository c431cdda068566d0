"""The products job: paginated product APIs → ``summary.json`` (``--job products``).

::

    python -m beam_pipeline --job products --endpoints URL1,URL2,URL3 [--output_dir DIR]
    python -m beam_pipeline --job products --mock      # starts the bundled mock APIs on 127.0.0.1

The graph: ``FetchPaginated`` (every page of every endpoint, concurrently, rate-limited, retried,
behind a circuit breaker) → ``NormalizeProducts`` (the unified ``product`` record, dead letters
with reasons, one product per id) → ``WriteSummary`` (``summary.json``, ``products.jsonl``,
``dead_letter.jsonl``). Pages that fail after their retries are ``errors`` in the summary, never
a crash: the job finishes with the endpoints that answer.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from contextlib import ExitStack
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import logs
from beam_pipeline.options import ProductOptions, QuoteOptions
from runners import make_runner
from schemas import load_schema
from transforms import tracing
from transforms.products.normalize import DEAD_LETTERS, PRODUCTS, product_record
from transforms.products.paginate import Endpoint, FetchConfig, parse_endpoints
from transforms.products.stage import FetchPaginated, NormalizeProducts, WriteSummary
from transforms.sinks.stage import DeliverToApi

LOG = logging.getLogger(__name__)

#: Quote-job flags that mean nothing to the products job (a one-line usage error if given).
QUOTE_ONLY = ("input", "avro_output", "reader_schema_version", "live_url", "window", "port")


def fetch_config(options: ProductOptions) -> FetchConfig:
    """The fetch settings of the flags; ValueError names a bad one."""
    return FetchConfig(
        rate=options.max_requests_per_second,
        timeout=options.http_timeout,
        max_retries=options.max_retries,
        breaker_failures=options.breaker_failures,
        breaker_cooldown=options.breaker_cooldown,
    )


def check(options: PipelineOptions) -> list[str]:
    """Problems with the products job's flags (empty when all is well)."""
    config, quote = options.view_as(ProductOptions), options.view_as(QuoteOptions)
    problems = [f"--{flag} is a quotes-job flag, not for --job products"
                for flag in QUOTE_ONLY if getattr(quote, flag) is not None]
    if quote.source != "historical":
        problems.append("--source is a quotes-job flag, not for --job products")
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
    if config.endpoints:
        try:
            parse_endpoints(config.endpoints)
        except ValueError as exc:
            problems.append(str(exc))
    try:
        fetch_config(config)
    except ValueError as exc:
        problems.append(f"products job: {exc}")
    return problems


def product_key(product: dict) -> str:
    """What a delivered product's idempotency key is made from: its id, unique across sources."""
    return product["id"]


def build_products_pipeline(options: PipelineOptions, endpoints: Sequence[Endpoint], *, run_id: str | None = None,
                            started_at: float | None = None, runner=None,
                            deliver_url: str | None = None) -> beam.Pipeline:
    """The products pipeline (see the module docstring); runs nothing. With ``deliver_url``, the
    products also go to that API through :class:`~transforms.sinks.stage.DeliverToApi`."""
    config = options.view_as(ProductOptions)
    output_dir = options.view_as(QuoteOptions).output_dir
    run_id = run_id or uuid.uuid4().hex[:12]
    started_at = time.time() if started_at is None else started_at
    pipeline = beam.Pipeline(runner=runner or make_runner(options), options=options)
    fetched = pipeline | "FetchPaginated" >> FetchPaginated(endpoints, fetch_config(config))
    normalized = fetched["pages"] | "NormalizeProducts" >> NormalizeProducts(load_schema("product", 1))
    extra = {"run": {"run_id": run_id, "endpoints": {e.name: e.url for e in endpoints}}}
    inputs = {
        PRODUCTS: normalized[PRODUCTS],
        DEAD_LETTERS: normalized[DEAD_LETTERS],
        "errors": fetched["errors"],
        "reports": fetched["reports"],
    }
    if deliver_url:
        delivered = (
            normalized[PRODUCTS]
            | "ProductsAsJson" >> beam.Map(product_record)
            | "DeliverToApi" >> DeliverToApi(deliver_url, batch_size=config.deliver_batch_size,
                                             rate=config.deliver_rate, key_fn=product_key)
        )
        inputs["delivery"] = delivered["report"]
        inputs["delivery_dead_letters"] = delivered["dead_letters"]
        extra["run"]["deliver_url"] = deliver_url
    _ = inputs | "WriteSummary" >> WriteSummary(output_dir, run_id, started_at, extra=extra)
    return pipeline


def run(options: PipelineOptions, started_at: float, prog: str) -> int:
    """Run the products job; the exit code (0 done and balanced, 1 run failed or unbalanced)."""
    import json

    config = options.view_as(ProductOptions)
    output_dir = options.view_as(QuoteOptions).output_dir
    with ExitStack() as stack:
        if config.mock:
            from beam_pipeline.devtools.mock_api import start_product_apis

            servers = stack.enter_context(start_product_apis())
            endpoints = parse_endpoints(",".join(server.url for server in servers))
            print(f"{prog}: mock product APIs: {','.join(e.url for e in endpoints)}", file=sys.stderr, flush=True)
        else:
            endpoints = parse_endpoints(config.endpoints)
        deliver_url = config.deliver_url
        if config.deliver_mock:
            from beam_pipeline.devtools.mock_api import MockDownstreamApi

            deliver_url = stack.enter_context(MockDownstreamApi()).url
            print(f"{prog}: mock downstream API: {deliver_url}", file=sys.stderr, flush=True)
        LOG.info("fetching %d endpoint(s) into %s", len(endpoints), output_dir)
        run_id = uuid.uuid4().hex[:12]
        logs.set_run_id(run_id)
        pipeline = build_products_pipeline(options, endpoints, run_id=run_id, started_at=started_at,
                                           deliver_url=deliver_url)
        with tracing.run_span(run_id, "products", type(pipeline.runner).__name__):
            pipeline.run().wait_until_finish()
    with FileSystems.open(FileSystems.join(output_dir, "summary.json")) as stream:
        document = json.load(stream)
    print(summary_text(output_dir, document))
    delivery = document.get("delivery")
    return 0 if document["counts"]["balanced"] and (delivery is None or delivery["balanced"]) else 1


def summary_text(output_dir: str, document: dict) -> str:
    """What the CLI prints at the end of a products run."""
    summary, counts = document["summary"], document["counts"]
    lines = [
        f"{summary['total_products']} products from {len(summary['sources'])} sources in "
        f"{summary['processing_time_seconds']:.1f} s (pages fetched: {summary['success_rate']:.1%})",
    ]
    for name, source in summary["sources"].items():
        lines.append(
            f"  {name:<12} {source['shape'] or '?':<7} pages {source['pages']} ok / {source['pages_failed']} failed, "
            f"{source['requests']} requests, {source['retries']} retries, {source['rate_limited']} rate-limited, "
            f"breaker {source['breaker_state']}"
        )
    balance = "balanced" if counts["balanced"] else "NOT balanced"
    lines.append(f"  items {counts['items_received']} = {counts['products']} products + "
                 f"{counts['dead_lettered']} dead letters ({balance})")
    delivery = document.get("delivery")
    if delivery:
        lines.append(
            f"  delivered {delivery['delivered']} of {delivery['received']} ({delivery['duplicates']} already there), "
            f"{delivery['dead_lettered']} dead-lettered; {delivery['requests']} requests, error rate "
            f"{delivery['error_rate']:.1%}, {delivery['rate_limited']} rate-limited, max backlog {delivery['max_backlog']}"
        )
    lines.append(f"  {output_dir}/summary.json, products.jsonl, dead_letter.jsonl; {len(document['errors'])} errors")
    return "\n".join(lines)
