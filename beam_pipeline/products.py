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

from beam_pipeline import logs
from beam_pipeline.config import ProductsJob
from runners import make_runner
from schemas import load_schema
from transforms import tracing
from transforms.products.normalize import DEAD_LETTERS, PRODUCTS, product_record
from transforms.products.paginate import Endpoint, parse_endpoints
from transforms.products.stage import FetchPaginated, NormalizeProducts, WriteSummary
from transforms.sinks.stage import DeliverToApi

LOG = logging.getLogger(__name__)


def product_key(product: dict) -> str:
    """What a delivered product's idempotency key is made from: its id, unique across sources."""
    return product["id"]


def build_products_pipeline(job: ProductsJob, endpoints: Sequence[Endpoint] | None = None, *,
                            run_id: str | None = None, started_at: float | None = None, runner=None,
                            deliver_url: str | None = None) -> beam.Pipeline:
    """The products pipeline of a resolved ``job`` (see the module docstring); runs nothing.
    ``endpoints`` and ``deliver_url`` default to the job's (the mocks': given once they listen).
    With a ``deliver_url``, the products also go to that API through
    :class:`~transforms.sinks.stage.DeliverToApi`."""
    endpoints = job.endpoints if endpoints is None else endpoints
    deliver_url = job.deliver_url if deliver_url is None else deliver_url
    run_id = run_id or uuid.uuid4().hex[:12]
    started_at = time.time() if started_at is None else started_at
    pipeline = beam.Pipeline(runner=runner or make_runner(job.options), options=job.options)
    fetched = pipeline | "FetchPaginated" >> FetchPaginated(endpoints, job.fetch)
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
            | "DeliverToApi" >> DeliverToApi(deliver_url, batch_size=job.deliver_batch_size,
                                             rate=job.deliver_rate, key_fn=product_key)
        )
        inputs["delivery"] = delivered["report"]
        inputs["delivery_dead_letters"] = delivered["dead_letters"]
        extra["run"]["deliver_url"] = deliver_url
    _ = inputs | "WriteSummary" >> WriteSummary(job.output_dir, run_id, started_at, extra=extra)
    return pipeline


def run(job: ProductsJob, started_at: float, prog: str) -> int:
    """Run the products job; the exit code (0 done and balanced, 1 run failed or unbalanced)."""
    import json

    output_dir = job.output_dir
    with ExitStack() as stack:
        if job.mock:
            from beam_pipeline.devtools.mock_api import start_product_apis

            servers = stack.enter_context(start_product_apis())
            endpoints = parse_endpoints(",".join(server.url for server in servers))
            print(f"{prog}: mock product APIs: {','.join(e.url for e in endpoints)}", file=sys.stderr, flush=True)
        else:
            endpoints = list(job.endpoints)
        deliver_url = job.deliver_url
        if job.deliver_mock:
            from beam_pipeline.devtools.mock_api import MockDownstreamApi

            deliver_url = stack.enter_context(MockDownstreamApi()).url
            print(f"{prog}: mock downstream API: {deliver_url}", file=sys.stderr, flush=True)
        LOG.info("fetching %d endpoint(s) into %s", len(endpoints), output_dir)
        run_id = uuid.uuid4().hex[:12]
        logs.set_run_id(run_id)
        pipeline = build_products_pipeline(job, endpoints, run_id=run_id, started_at=started_at,
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
