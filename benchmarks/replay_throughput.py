"""Replay throughput: the Beam pipeline against a plain-Python baseline, in the same run.

Generates N quotes (``beam_pipeline.devtools.samples``, the generator of the bundled sample), then runs

* the pipeline: ``python -m beam_pipeline --runner DirectRunner`` (FnApiRunner, Arrow blocks);
* the baseline: ``python -m beam_pipeline.devtools.reference`` (csv module, row-level rules, heap),

each as its own process, timing the whole command (start-up included) and reading its peak RSS
from ``wait4``. It prints rows/s for both, the ratio, peak RSS, and whether the three output
files are byte-identical. With ``--memory-rows M`` it also runs the pipeline on M rows and prints
its peak RSS next to the one for N rows (memory must not grow with the input).

    python benchmarks/replay_throughput.py                 # 1,000,000 rows, memory check at 3,000,000
    python benchmarks/replay_throughput.py --rows 200000 --memory-rows 0
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OUTPUT_FILES = ("mid_prices.log", "errors.log", "dead_letter.jsonl")


@dataclass
class Run:
    label: str
    rows: int
    seconds: float
    peak_rss_mb: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


def measure(label: str, rows: int, command: list[str]) -> Run:
    """Run ``command``; wall time and the child's own peak RSS (wait4, not the max of all children).

    A forked child's peak RSS starts at its parent's size, so this script keeps itself small:
    it imports neither numpy nor pyarrow and generates inputs in a subprocess too.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stdout, stderr = process.stdout.read().decode(), process.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{label} failed:\n{stdout}\n{stderr}")
    return Run(label, rows, seconds, usage.ru_maxrss / 1024)


def exit_status(ok: bool, workdir: Path, kept: bool) -> int:
    """The benchmark's exit status (0: every check passed), after saying where a temporary
    ``workdir`` was left (``kept``: the user's own ``--workdir``)."""
    if not kept:
        print(f"(inputs and outputs left in {workdir})")
    return 0 if ok else 1


def make_workdir(path: Path | None, prefix: str) -> Path:
    """``--workdir`` if given (kept), else a new temporary folder."""
    workdir = path or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def quotes_file(workdir: Path, rows: int, seed: int, latency_decimals: int = 0) -> Path:
    path = workdir / f"quotes_{rows}_{seed}_{latency_decimals}.csv"
    if not path.exists():
        print(f"generating {rows:,} quotes -> {path}", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "beam_pipeline.devtools.samples", str(path), "--rows", str(rows), "--seed", str(seed),
             "--latency-decimals", str(latency_decimals), "--malformed"],
            cwd=ROOT, check=True,
        )
    return path


def run_pipeline(csv_path: Path, rows: int, out: Path) -> Run:
    return measure(
        "Beam pipeline (FnApiRunner, Arrow blocks)",
        rows,
        [sys.executable, "-m", "beam_pipeline", "--runner", "DirectRunner", "--input", str(csv_path),
         "--output_dir", str(out), "--progress", "off"],
    )


def run_baseline(csv_path: Path, rows: int, out: Path) -> Run:
    return measure(
        "plain Python (csv module, heap, row rules)",
        rows,
        [sys.executable, "-m", "beam_pipeline.devtools.reference", "--input", str(csv_path), "--output_dir", str(out)],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory-rows", type=int, default=3_000_000, help="0 to skip the memory check")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    parser.add_argument("--latency-decimals", type=int, default=0, choices=range(4),
                        help="decimals of every latency (3: microseconds, the decimal cast's path)")
    args = parser.parse_args()

    workdir = make_workdir(args.workdir, "replay_bench_")
    csv_path = quotes_file(workdir, args.rows, args.seed, args.latency_decimals).resolve()
    beam_out, base_out = workdir / "beam", workdir / "baseline"

    beam_run = run_pipeline(csv_path, args.rows, beam_out)
    base_run = run_baseline(csv_path, args.rows, base_out)
    identical = {name: filecmp.cmp(beam_out / name, base_out / name, shallow=False) for name in OUTPUT_FILES}
    metrics = json.loads((beam_out / "metrics.json").read_text())

    print(f"\nreplay throughput, {args.rows:,} quotes ({csv_path.stat().st_size / 1e6:,.1f} MB), "
          f"{os.cpu_count()} cores, whole command timed (start-up included)")
    print(f"{'implementation':<44} {'wall s':>8} {'rows/s':>12} {'peak RSS MB':>12}")
    for run in (beam_run, base_run):
        print(f"{run.label:<44} {run.seconds:>8.2f} {run.rows_per_second:>12,.0f} {run.peak_rss_mb:>12,.0f}")
    print(f"speed-up (Beam rows/s / baseline rows/s): {beam_run.rows_per_second / base_run.rows_per_second:.2f}x")
    print(f"pipeline's own run time (metrics.json, after start-up): {metrics['run_seconds']:.2f} s")
    print(f"counts: {metrics['records_in']:,} in = {metrics['mid_prices']:,} mid + "
          f"{metrics['latency_filtered']:,} filtered + {metrics['dead_lettered']:,} dead letters "
          f"({'balanced' if metrics['balanced'] else 'NOT BALANCED'})")
    print("identical output files: " + ", ".join(f"{n} {'yes' if same else 'NO'}" for n, same in identical.items()))

    ok = all(identical.values()) and metrics["balanced"]
    if args.memory_rows:
        big_path = quotes_file(workdir, args.memory_rows, args.seed, args.latency_decimals).resolve()
        big_run = run_pipeline(big_path, args.memory_rows, workdir / "beam_big")
        ratio = big_run.peak_rss_mb / beam_run.peak_rss_mb
        print(f"\npipeline peak RSS: {beam_run.peak_rss_mb:,.0f} MB at {args.rows:,} rows, "
              f"{big_run.peak_rss_mb:,.0f} MB at {args.memory_rows:,} rows: {ratio:.2f}x "
              f"({big_run.rows_per_second:,.0f} rows/s at {args.memory_rows:,})")
    return exit_status(ok, workdir, bool(args.workdir))


if __name__ == "__main__":
    sys.exit(main())
