"""DeliverToApi against the mock downstream API at its defaults (15% failures, 10 requests/s),
beside a baseline measured in the same run: one record per request, sequential, same retries.

Both runs are Beam pipelines on the DirectRunner (``Create(records) | DeliverToApi(url, ...)``),
each against a fresh :class:`~beam_pipeline.devtools.mock_api.MockDownstreamApi`, so neither sees the
other's keys. Printed per run: records/s over the whole pipeline (Beam's start-up included) and
over the sink's own busy time, error rate (failed requests / requests), the largest backlog,
429s, mean processing time per record (first send to outcome), and whether the server stored
every record exactly once. The baseline is capped at the client's 8 requests/s, so by default it
delivers fewer records (``--baseline-records``, default min(records, 100)); rates compare, totals do not.

    python benchmarks/deliver_throughput.py
    python benchmarks/deliver_throughput.py --records 300 --quiet
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam

from beam_pipeline.devtools.mock_api import MockDownstreamApi
from transforms.sinks.deliver import record_key
from transforms.sinks.stage import DeliverToApi


@dataclass
class Result:
    label: str
    records: int
    wall_seconds: float
    report: dict
    stored_once: bool


def make_records(count: int) -> list[dict]:
    return [{"id": i, "symbol": "EURUSD", "bid": round(1.1 + i / 1e5, 5), "ask": round(1.1002 + i / 1e5, 5)}
            for i in range(count)]


def write_report(report: dict, path: str) -> None:
    Path(path).write_text(json.dumps(report))


def deliver(label: str, records: list[dict], workdir: Path, seed: int, **options) -> Result:
    """One pipeline run against a fresh mock API; its report and the server's view."""
    report_path = workdir / f"{label.split()[0]}.json"
    with MockDownstreamApi(seed=seed) as api:
        started = time.perf_counter()
        with beam.Pipeline() as pipeline:
            outputs = pipeline | "Records" >> beam.Create(records) | "Deliver" >> DeliverToApi(api.url, **options)
            _ = outputs["report"] | "WriteReport" >> beam.Map(write_report, str(report_path))
        wall = time.perf_counter() - started
        stored = Counter(key for key, _ in api.accepted())
    stored_once = stored == Counter(record_key(record) for record in records)
    return Result(label, len(records), wall, json.loads(report_path.read_text()), stored_once)


HEADER = (f"{'run':<40} {'records':>7} {'wall s':>7} {'rec/s':>7} {'rec/s':>7} {'error':>6} {'max':>7} "
          f"{'429s':>5} {'mean':>8} {'dead':>5} {'stored'}\n"
          f"{'':<40} {'':>7} {'':>7} {'(wall)':>7} {'(sink)':>7} {'rate':>6} {'backlog':>7} "
          f"{'':>5} {'ms/rec':>8} {'':>5} {'once'}")


def row(result: Result) -> str:
    report = result.report
    return (f"{result.label:<40} {result.records:>7} {result.wall_seconds:>7.2f} "
            f"{result.records / result.wall_seconds:>7.1f} {report['rate_per_second']:>7.1f} "
            f"{report['error_rate']:>6.1%} {report['max_backlog']:>7} {report['rate_limited']:>5} "
            f"{report['mean_processing_seconds'] * 1000:>8.0f} {report['dead_lettered']:>5} "
            f"{'yes' if result.stored_once else 'NO'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000, help="records for DeliverToApi (default: 1000)")
    parser.add_argument("--baseline-records", type=int, default=None,
                        help="records for the one-per-request baseline (default: min(records, 100))")
    parser.add_argument("--seed", type=int, default=0, help="the mock's failure seed (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no live report lines on stderr")
    args = parser.parse_args()
    baseline_records = min(args.records, 100) if args.baseline_records is None else args.baseline_records
    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        deliver_log = logging.getLogger("transforms.sinks.deliver")
        deliver_log.addHandler(handler)
        deliver_log.setLevel(logging.INFO)
        deliver_log.propagate = False
    with tempfile.TemporaryDirectory(prefix="deliver_bench_") as tmp:
        workdir = Path(tmp)
        results = [
            deliver("DeliverToApi defaults (batch 20, 8 req/s)", make_records(args.records), workdir, args.seed),
            deliver("baseline: 1 record/request, sequential", make_records(baseline_records), workdir, args.seed,
                    batch_size=1, max_backlog=1),
        ]
    print()
    print("mock downstream API: failure_rate 0.15 (half 503 before applying, half 500 after), rate limit 10 req/s")
    print(HEADER)
    for result in results:
        print(row(result))
    batched, baseline = results
    print(f"\nsink rate, batched / baseline: {batched.report['rate_per_second'] / max(baseline.report['rate_per_second'], 1e-9):.1f}x; "
          f"requests {batched.report['requests']} for {batched.records} records "
          f"(baseline {baseline.report['requests']} for {baseline.records}); "
          f"retried record sends {batched.report['retries']} (baseline {baseline.report['retries']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
