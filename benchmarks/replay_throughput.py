"""Replay throughput: the Beam pipeline against three scripts a user could write instead, in one run.

Generates N quotes (``beam_pipeline.devtools.samples``, the generator of the bundled sample; clean
unless ``--malformed``), then runs, each as its own process with the whole command timed (start-up
included) and its peak RSS read from ``wait4``:

* the pipeline: ``python -m beam_pipeline --runner DirectRunner`` (FnApiRunner, Arrow blocks);
* a plain script as a user would write it (``beam_pipeline.devtools.simple_replay``: ``csv``, a
  heap for arrival order, ``Decimal`` mid, no validation), once with ``strptime`` timestamps and
  once with ``fromisoformat``;
* the strict plain-Python reference (``beam_pipeline.devtools.reference``: every row rule, dead
  letters), the oracle of the tests.

It prints rows/s, the pipeline's ratio to each, peak RSS, and whether the output files are
byte-identical (the simple scripts validate nothing, so with ``--malformed`` only the reference is
compared). Then:

* start-up: the pipeline on a one-quote file, the fixed cost of a run (imports, graph, runner);
* with ``--memory-rows M`` (default 3,000,000): the pipeline's peak RSS at M rows next to N;
* with ``--large-rows L`` (default 10,000,000): the pipeline against a pyarrow-only script
  (``beam_pipeline.devtools.arrow_replay``: ``pyarrow.csv`` streaming, Arrow sort and decimals)
  at L rows, files compared.

Project modules are byte-compiled first (``compileall``), as an installed package is.

    python benchmarks/replay_throughput.py                 # 1,000,000 rows, 3,000,000 and 10,000,000 too
    python benchmarks/replay_throughput.py --rows 200000 --memory-rows 0 --large-rows 0
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


def quotes_file(workdir: Path, rows: int, seed: int, latency_decimals: int = 0, malformed: bool = True) -> Path:
    """The generator's quotes (with one row of each malformed kind unless ``malformed`` is false)."""
    path = workdir / f"quotes_{rows}_{seed}_{latency_decimals}{'' if malformed else '_clean'}.csv"
    if not path.exists():
        print(f"generating {rows:,} quotes -> {path}", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "beam_pipeline.devtools.samples", str(path), "--rows", str(rows), "--seed", str(seed),
             "--latency-decimals", str(latency_decimals), *(["--malformed"] if malformed else [])],
            cwd=ROOT, check=True,
        )
    return path


def compile_project() -> None:
    """Byte-compile the project, as ``pip install`` does for a package (an editable install does not,
    and with ``PYTHONDONTWRITEBYTECODE`` set every run would compile it again)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "beam_pipeline", "transforms", "runners", "schemas"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def run_pipeline(csv_path: Path, rows: int, out: Path) -> Run:
    return measure(
        "Beam pipeline (FnApiRunner, Arrow blocks)",
        rows,
        [sys.executable, "-m", "beam_pipeline", "--runner", "DirectRunner", "--input", str(csv_path),
         "--output_dir", str(out), "--progress", "off"],
    )


def run_baseline(csv_path: Path, rows: int, out: Path) -> Run:
    return measure(
        "strict plain Python (reference: row rules)",
        rows,
        [sys.executable, "-m", "beam_pipeline.devtools.reference", "--input", str(csv_path), "--output_dir", str(out)],
    )


def run_simple(csv_path: Path, rows: int, out: Path, timestamps: str) -> Run:
    return measure(
        f"plain script: csv, heap, Decimal ({timestamps})",
        rows,
        [sys.executable, "-m", "beam_pipeline.devtools.simple_replay", str(csv_path), str(out),
         "--timestamps", timestamps],
    )


def run_arrow(csv_path: Path, rows: int, out: Path) -> Run:
    return measure(
        "pyarrow-only script (pyarrow.csv, Arrow sort)",
        rows,
        [sys.executable, "-m", "beam_pipeline.devtools.arrow_replay", str(csv_path), str(out)],
    )


def same_files(left: Path, right: Path, names: tuple[str, ...]) -> dict[str, bool]:
    return {name: filecmp.cmp(left / name, right / name, shallow=False) for name in names}


def print_table(title: str, runs: list[Run]) -> None:
    print(f"\n{title}")
    print(f"{'implementation':<48} {'wall s':>8} {'rows/s':>12} {'peak RSS MB':>12} {'pipeline is':>12}")
    pipeline = runs[0]
    for run in runs:
        ratio = "" if run is pipeline else f"{pipeline.rows_per_second / run.rows_per_second:.2f}x"
        print(f"{run.label:<48} {run.seconds:>8.2f} {run.rows_per_second:>12,.0f} {run.peak_rss_mb:>12,.0f} "
              f"{ratio:>12}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory-rows", type=int, default=3_000_000, help="0 to skip the memory check")
    parser.add_argument("--large-rows", type=int, default=10_000_000, help="0 to skip the pyarrow-only comparison")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    parser.add_argument("--malformed", action="store_true",
                        help="add one row of each malformed kind (only the strict reference is then compared)")
    parser.add_argument("--latency-decimals", type=int, default=0, choices=range(4),
                        help="decimals of every latency (3: microseconds, the decimal cast's path; reference only)")
    args = parser.parse_args()

    compile_project()
    workdir = make_workdir(args.workdir, "replay_bench_")
    csv_path = quotes_file(workdir, args.rows, args.seed, args.latency_decimals, args.malformed).resolve()
    simple = not args.malformed and not args.latency_decimals
    beam_out = workdir / "beam"

    beam_run = run_pipeline(csv_path, args.rows, beam_out)
    runs = [beam_run, run_baseline(csv_path, args.rows, workdir / "baseline")]
    identical = {f"reference {name}": same for name, same in
                 same_files(beam_out, workdir / "baseline", OUTPUT_FILES).items()}
    if simple:
        for timestamps in ("strptime", "isoformat"):
            out = workdir / f"simple_{timestamps}"
            runs.append(run_simple(csv_path, args.rows, out, timestamps))
            identical |= {f"{timestamps} {name}": same for name, same in
                          same_files(beam_out, out, OUTPUT_FILES[:2]).items()}
    metrics = json.loads((beam_out / "metrics.json").read_text())

    print_table(f"replay throughput, {args.rows:,} quotes ({csv_path.stat().st_size / 1e6:,.1f} MB), "
                f"{os.cpu_count()} cores, whole command timed (start-up included)", runs)
    print(f"pipeline's own run time (metrics.json, after start-up): {metrics['run_seconds']:.2f} s")
    print(f"counts: {metrics['records_in']:,} in = {metrics['mid_prices']:,} mid + "
          f"{metrics['latency_filtered']:,} filtered + {metrics['dead_lettered']:,} dead letters "
          f"({'balanced' if metrics['balanced'] else 'NOT BALANCED'})")
    print("identical output files: " + ", ".join(f"{n} {'yes' if same else 'NO'}" for n, same in identical.items()))
    ok = all(identical.values()) and metrics["balanced"]

    one = workdir / "one_quote.csv"
    with csv_path.open("rb") as source:
        one.write_bytes(source.readline() + source.readline())  # the header and the first quote
    start = run_pipeline(one, 1, workdir / "beam_one")
    print(f"\nstart-up (the pipeline on a one-quote file: imports, graph, runner): {start.seconds:.2f} s, "
          f"peak RSS {start.peak_rss_mb:,.0f} MB")

    if args.memory_rows:
        big_path = quotes_file(workdir, args.memory_rows, args.seed, args.latency_decimals, args.malformed).resolve()
        big_run = run_pipeline(big_path, args.memory_rows, workdir / "beam_big")
        ratio = big_run.peak_rss_mb / beam_run.peak_rss_mb
        print(f"\npipeline peak RSS: {beam_run.peak_rss_mb:,.0f} MB at {args.rows:,} rows, "
              f"{big_run.peak_rss_mb:,.0f} MB at {args.memory_rows:,} rows: {ratio:.2f}x "
              f"({big_run.rows_per_second:,.0f} rows/s at {args.memory_rows:,})")

    if args.large_rows and simple:
        large = quotes_file(workdir, args.large_rows, args.seed, 0, False).resolve()
        large_runs = [run_pipeline(large, args.large_rows, workdir / "beam_large"),
                      run_arrow(large, args.large_rows, workdir / "arrow_large")]
        print_table(f"{args.large_rows:,} quotes ({large.stat().st_size / 1e6:,.1f} MB)", large_runs)
        same = same_files(workdir / "beam_large", workdir / "arrow_large", OUTPUT_FILES[:2])
        print(f"pipeline time / pyarrow-only time: {large_runs[0].seconds / large_runs[1].seconds:.2f} "
              "(the goal: at most 1.5)")
        print("identical output files: " + ", ".join(f"{n} {'yes' if v else 'NO'}" for n, v in same.items()))
        ok = ok and all(same.values())
    return exit_status(ok, workdir, bool(args.workdir))


if __name__ == "__main__":
    sys.exit(main())
