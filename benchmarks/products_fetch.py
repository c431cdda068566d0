"""Products job timing against the bundled mock APIs at their default settings.

Prints, side by side, measured in the same run:

* baseline: the same politeness (5 requests/s per endpoint, same retries), one endpoint after
  the other and one page at a time: what a plain loop over the APIs would do;
* FetchPaginated's fetch alone: every endpoint at once, pages concurrently where the shape allows;
* the whole job (``python -m beam_pipeline --job products --mock``): Beam start, fetch, normalize,
  summary.json.

    .venv/bin/python benchmarks/products_fetch.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from beam_pipeline.devtools.mock_api import start_product_apis  # noqa: E402
from transforms.products.paginate import FetchConfig, Page, parse_endpoints  # noqa: E402
from transforms.products.stage import fetch_events  # noqa: E402


def fetch_seconds(concurrent: bool, seed: int) -> tuple[float, int]:
    with start_product_apis(seed=seed) as servers:
        endpoints = parse_endpoints(",".join(server.url for server in servers))
        started, items = time.perf_counter(), 0
        groups = [endpoints] if concurrent else [[endpoint] for endpoint in endpoints]
        config = FetchConfig(seed=seed, page_concurrency=4 if concurrent else 1)
        for group in groups:
            items += sum(len(e.items) for e in fetch_events(group, config) if isinstance(e, Page))
        return time.perf_counter() - started, items


def job_seconds() -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "beam_pipeline", "--job", "products", "--mock", "--output_dir", out],
                       check=True, capture_output=True, cwd=ROOT)
        wall = time.perf_counter() - started
        return wall, json.loads((Path(out) / "summary.json").read_text())["summary"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = {"baseline: sequential, same limits": [], "FetchPaginated fetch (concurrent)": [], "whole job (CLI, --mock)": []}
    items = set()
    for run in range(args.runs):
        seconds, count = fetch_seconds(False, run)
        rows["baseline: sequential, same limits"].append(seconds)
        items.add(count)
        seconds, count = fetch_seconds(True, run)
        rows["FetchPaginated fetch (concurrent)"].append(seconds)
        items.add(count)
        seconds, summary = job_seconds()
        rows["whole job (CLI, --mock)"].append(seconds)
    print(f"3 mock APIs, 125 products each, 20 a page, limit 5 requests/s each; {args.runs} runs; items {sorted(items)}")
    print(f"{'':<36} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, values in rows.items():
        print(f"{name:<36} {statistics.median(values):>9.2f} {min(values):>7.2f} {max(values):>7.2f}")
    print(f"last job's summary: {summary['total_products']} products, processing_time_seconds "
          f"{summary['processing_time_seconds']}, success_rate {summary['success_rate']}")


if __name__ == "__main__":
    main()
