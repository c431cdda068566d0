"""The same historical job on every runner that runs here, side by side with the plain-Python baseline.

Generates N quotes (the bundled sample's generator, plus one of each malformed row), then runs
``python -m beam_pipeline`` on them once per runner, each as its own process with its whole
command timed (start-up included):

* DirectRunner, in memory (the FnApiRunner, the default);
* DirectRunner, ``--direct_running_mode multi_processing --direct_num_workers 2`` (SDK workers
  in 2 subprocesses, over gRPC);
* PortableRunner, ``--job_endpoint embed --environment_type LOOPBACK`` (the Fn API over gRPC);
* DaskRunner, ``--dask_local_workers 2`` (a ``distributed`` cluster of 2 worker processes on
  127.0.0.1, started and stopped by the run; needs ``pip install '.[dask]'``);
* the baseline, ``python -m beam_pipeline.devtools.reference`` (csv module, row rules, heap).

Peak memory is the largest sum of RSS over the command's whole process tree (workers included),
sampled every 50 ms with psutil. It checks that every run wrote byte-identical output files.

    python benchmarks/runner_comparison.py                     # 1,000,000 quotes
    python benchmarks/runner_comparison.py --rows 100000 --only DaskRunner
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from replay_throughput import OUTPUT_FILES, ROOT, exit_status, make_workdir, quotes_file

PIPELINE = [sys.executable, "-m", "beam_pipeline", "--progress", "off"]
#: label -> the command's flags; {input} and {out} are filled in.
RUNS = {
    "DirectRunner (in memory)": [*PIPELINE, "--runner", "DirectRunner"],
    "DirectRunner (multi_processing, 2 workers)": [
        *PIPELINE, "--runner", "DirectRunner", "--direct_running_mode", "multi_processing", "--direct_num_workers", "2",
    ],
    "PortableRunner (embed, LOOPBACK)": [
        *PIPELINE, "--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "LOOPBACK",
    ],
    "DaskRunner (2 local workers)": [*PIPELINE, "--runner", "DaskRunner", "--dask_local_workers", "2"],
    "plain Python baseline": [sys.executable, "-m", "beam_pipeline.devtools.reference"],
}
BASELINE = "plain Python baseline"


@dataclass
class Run:
    label: str
    rows: int
    seconds: float
    peak_tree_mb: float
    processes: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


def tree_rss(process: psutil.Process) -> tuple[int, int]:
    """RSS bytes of ``process`` and all its descendants, and how many processes that is."""
    total, count = 0, 0
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for member in family:
        try:
            total += member.memory_info().rss
            count += 1
        except psutil.NoSuchProcess:
            pass
    return total, count


def measure(label: str, rows: int, command: list[str]) -> Run:
    """Run ``command``: its wall time, and its process tree's peak RSS sum (sampled every 50 ms)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watched = psutil.Process(process.pid)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            rss, count = tree_rss(watched)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], count)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"{label} failed (exit {process.returncode}):\n{stdout.decode()}\n{stderr.decode()[-4000:]}")
    return Run(label, rows, seconds, peak[0] / 2**20, peak[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    parser.add_argument("--only", action="append", default=None, help="run only runs whose label contains this")
    args = parser.parse_args()

    workdir = make_workdir(args.workdir, "runners_bench_")
    csv_path = quotes_file(workdir, args.rows, args.seed).resolve()
    chosen = {label: flags for label, flags in RUNS.items()
              if not args.only or label == BASELINE or any(part in label for part in args.only)}
    runs, outputs = [], {}
    for index, (label, command) in enumerate(chosen.items()):
        out = workdir / f"out{index}"
        print(f"running {label} ...", file=sys.stderr, flush=True)
        runs.append(measure(label, args.rows, [*command, "--input", str(csv_path), "--output_dir", str(out)]))
        outputs[label] = out

    first = outputs[next(iter(outputs))]
    identical = {label: all(filecmp.cmp(first / name, out / name, shallow=False) for name in OUTPUT_FILES)
                 for label, out in outputs.items()}
    metrics = json.loads((first / "metrics.json").read_text())
    base = next(run for run in runs if run.label == BASELINE)

    print(f"\n{args.rows:,} quotes ({csv_path.stat().st_size / 1e6:,.1f} MB), {os.cpu_count()} cores, "
          "whole command timed (start-up included)")
    print(f"| {'runner':<44} | {'wall s':>7} | {'rows/s':>9} | {'vs baseline':>11} | {'peak RSS, all processes':>23} "
          f"| identical |")
    print(f"|{'-' * 46}|{'-' * 9}:|{'-' * 10}:|{'-' * 12}:|{'-' * 24}:|:{'-' * 9}:|")
    for run in runs:
        memory = f"{run.peak_tree_mb:,.0f} MB ({run.processes} proc)"
        print(f"| {run.label:<44} | {run.seconds:>7.2f} | {run.rows_per_second:>9,.0f} | "
              f"{run.rows_per_second / base.rows_per_second:>10.2f}x | {memory:>23} | "
              f"{'yes' if identical[run.label] else 'NO':^9} |")
    print(f"counts: {metrics['records_in']:,} in = {metrics['mid_prices']:,} mid + {metrics['latency_filtered']:,} "
          f"filtered + {metrics['dead_lettered']:,} dead letters")
    return exit_status(all(identical.values()), workdir, bool(args.workdir))


if __name__ == "__main__":
    sys.exit(main())
