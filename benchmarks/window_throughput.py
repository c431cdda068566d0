"""Window stage cost: batch windows beside the no-window pipeline and a plain-Python baseline, and
the --streaming replay of history beside the same file in batch. All in the same run.

Batch (N quotes, default 1,000,000): for each window kind it runs

* the pipeline without ``--window`` (what windowing adds to);
* the pipeline with ``--window`` (FnApiRunner);
* the plain-Python reference with ``--window`` (csv module, row rules, panes by hand),

each as its own process, whole command timed, and checks that ``windows.jsonl`` is identical. It
prints each windowed run's rate against the reference's (the goal: at least 3x) and its time
against the no-window run's (the goal: at most 2x).

Streaming (the first S quotes, default 2,000): ``--streaming --window fixed:100ms
--allowed_lateness 50ms`` (a TestStream on the BundleBasedDirectRunner) beside the same window in
batch, with the number of watermark steps the replay needed and seconds per step.

    python benchmarks/window_throughput.py
    python benchmarks/window_throughput.py --rows 1000000 --stream-rows 5000
"""

from __future__ import annotations

import argparse
import filecmp
import json
import sys
from pathlib import Path

from replay_throughput import ROOT, Run, compile_project, exit_status, make_workdir, measure, quotes_file

WINDOWS = ("fixed:1s", "sliding:10s,1s", "session:500ms")


def pipeline(label: str, rows: int, csv_path: Path, out: Path, *args: str) -> Run:
    return measure(label, rows, [sys.executable, "-m", "beam_pipeline", "--input", str(csv_path),
                                 "--output_dir", str(out), "--progress", "off", *args])


def head(csv_path: Path, rows: int, workdir: Path) -> Path:
    path = workdir / f"head_{rows}.csv"
    with csv_path.open() as source, path.open("w") as target:
        for index, line in enumerate(source):
            if index > rows:
                break
            target.write(line)
    return path


def row(run: Run, extra: str = "") -> str:
    return f"{run.label:<52} {run.seconds:>8.2f} {run.rows_per_second:>10,.0f} {run.peak_rss_mb:>8,.0f}  {extra}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--stream-rows", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    args = parser.parse_args()
    compile_project()
    workdir = make_workdir(args.workdir, "window_bench_")
    csv_path = quotes_file(workdir, args.rows, args.seed).resolve()
    ok = True

    print(f"\nbatch windows, {args.rows:,} quotes, whole command timed (start-up included)")
    print(f"{'run':<52} {'wall s':>8} {'rows/s':>10} {'RSS MB':>8}")
    plain = pipeline("pipeline, no --window", args.rows, csv_path, workdir / "none")
    print(row(plain))
    for window in WINDOWS:
        beam_out, ref_out = workdir / f"beam_{window}", workdir / f"ref_{window}"
        beam = pipeline(f"pipeline --window {window}", args.rows, csv_path, beam_out, "--window", window)
        ref = measure(f"plain Python --window {window}", args.rows,
                      [sys.executable, "-m", "beam_pipeline.devtools.reference", "--input", str(csv_path),
                       "--output_dir", str(ref_out), "--window", window])
        same = filecmp.cmp(beam_out / "windows.jsonl", ref_out / "windows.jsonl", shallow=False)
        metrics = json.loads((beam_out / "metrics.json").read_text())
        ok &= same and metrics["balanced"]
        print(row(beam, f"{metrics['windows_emitted']:,} panes, {beam.seconds / plain.seconds:.2f}x the no-window "
                        f"time, windows.jsonl identical: {'yes' if same else 'NO'}"))
        print(row(ref, f"pipeline rate {beam.rows_per_second / ref.rows_per_second:.2f}x this"))

    small = head(csv_path, args.stream_rows, workdir)
    flags = ("--window", "fixed:100ms", "--allowed_lateness", "50ms")
    print(f"\nstreaming replay of history, first {args.stream_rows:,} quotes, {' '.join(flags)}")
    batch = pipeline("batch (FnApiRunner)", args.stream_rows, small, workdir / "small_batch", *flags)
    stream = pipeline("--streaming (TestStream, BundleBasedDirectRunner)", args.stream_rows, small,
                      workdir / "small_stream", "--streaming", *flags)
    metrics = json.loads((workdir / "small_stream" / "metrics.json").read_text())
    steps = metrics["stream_steps"]["watermark_steps"]
    ok &= metrics["balanced"]
    print(f"{'run':<52} {'wall s':>8} {'rows/s':>10} {'RSS MB':>8}")
    print(row(batch))
    print(row(stream, f"{steps:,} watermark steps, {stream.seconds / max(steps, 1):.3f} s/step"))
    print(f"panes {metrics['panes_by_timing']}, late_dropped {metrics['late_dropped']:,}, "
          f"{'balanced' if metrics['balanced'] else 'NOT BALANCED'}")
    return exit_status(ok, workdir, bool(args.workdir))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
