"""Streaming with real watermarks: history replayed as an unbounded source on Prism, beside batch runs
of the same file, in the same run.

Generates N quotes (default 1,000,000), then times each whole command (start-up included), one at a time:

* batch ``--window fixed:1s`` on the DirectRunner (FnApiRunner) and on Prism;
* ``--streaming --window fixed:1s --allowed_lateness 500ms`` on Prism, for each ``--watermark_interval``
  asked for (history read by ``ReadFeed``, windows fired by Prism as the watermark moves);
* with ``--unpatched PRISM``: the same streaming runs on a Prism built as served
  (``PRISM_PATCH=0 scripts/build_prism.sh``), beside the one ``make prism`` builds.

Then it checks, outside the timed runs, that every streaming run wrote the batch run's
``mid_prices.log``, ``errors.log`` and ``dead_letter.jsonl``, and the panes and late quotes that
the plain-Python reference of the watermark rule gives (``stream_outcome``).

    python benchmarks/streaming_throughput.py
    python benchmarks/streaming_throughput.py --rows 100000 --intervals 1s,10s
"""

from __future__ import annotations

import argparse
import filecmp
import json
import sys
from pathlib import Path

from replay_throughput import ROOT, exit_status, make_workdir, measure, quotes_file

WINDOW = ("--window", "fixed:1s")
LATENESS = ("--allowed_lateness", "500ms")


def command(csv_path: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "beam_pipeline", "--input", str(csv_path), "--output_dir", str(out),
            "--progress", "off", *args]


def row(label: str, run, extra: str = "") -> str:
    return f"{label:<58} {run.seconds:>8.2f} {run.rows_per_second:>10,.0f} {run.peak_rss_mb:>8,.0f}  {extra}"


def check(csv_path: Path, batch: Path, stream: Path, interval: str) -> list[str]:
    """What differs from the batch outputs and from the reference of the rule (empty: nothing)."""
    from beam_pipeline.devtools.reference import stream_outcome
    from beam_pipeline.options import QuoteOptions, parse_options, quote_prices, window_config
    from transforms.quotes.rules import parse_timestamp
    from transforms.windows.format import pane_json
    from transforms.windows.logic import parse_duration

    problems = [name for name in ("mid_prices.log", "errors.log", "dead_letter.jsonl")
                if not filecmp.cmp(batch / name, stream / name, shallow=False)]
    options = parse_options(["--streaming", *WINDOW, *LATENESS]).view_as(QuoteOptions)
    outcome = stream_outcome([str(csv_path)], window_config(options, True), 0, parse_duration(interval, "interval"))
    panes = [json.loads(line) for line in (stream / "windows.jsonl").read_text().splitlines()]
    expected = [json.loads(pane_json(p, quote_prices().scale)) for p in outcome.on_time]
    if [p for p in panes if p["timing"] == "ON_TIME"] != expected:
        problems.append("ON_TIME panes")
    late: dict = {}
    for pane in panes:
        if pane["timing"] == "LATE":
            key = (pane["tenant"], pane["symbol"], parse_timestamp(pane["window_start"].rstrip("Z")))
            late[key] = late.get(key, 0) + pane["count"]
    if late != outcome.late_counts:
        problems.append("LATE pane counts")
    dropped = sorted(json.loads(line)["line"] for line in (stream / "late.jsonl").read_text().splitlines())
    if dropped != sorted(line for _file, line in outcome.dropped):
        problems.append("late.jsonl")
    if not json.loads((stream / "metrics.json").read_text())["windows_balanced"]:
        problems.append("window balance")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--intervals", default="10s,1s", help="--watermark_interval values, comma-separated")
    parser.add_argument("--unpatched", default=None, help="a Prism binary built as served, to run beside")
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    args = parser.parse_args()
    workdir = make_workdir(args.workdir, "streaming_bench_")
    csv_path = quotes_file(workdir, args.rows, args.seed).resolve()
    intervals = [value.strip() for value in args.intervals.split(",") if value.strip()]

    print(f"\n{args.rows:,} quotes, {' '.join(WINDOW)}, whole command timed (start-up included), one at a time")
    print(f"{'run':<58} {'wall s':>8} {'rows/s':>10} {'RSS MB':>8}")
    batch_out = workdir / "batch_direct"
    print(row("batch, DirectRunner (FnApiRunner)", measure("batch", args.rows, command(csv_path, batch_out, *WINDOW))))
    prism_out = workdir / "batch_prism"
    run = measure("batch prism", args.rows, command(csv_path, prism_out, "--runner", "PrismRunner", *WINDOW))
    same = filecmp.cmp(batch_out / "windows.jsonl", prism_out / "windows.jsonl", shallow=False)
    print(row("batch, PrismRunner", run, f"windows.jsonl identical: {'yes' if same else 'NO'}"))
    ok = same
    binaries = [("make prism", None)] + ([("as served", args.unpatched)] if args.unpatched else [])
    checks = []
    for interval in intervals:
        for name, binary in binaries:
            out = workdir / f"stream_{interval}_{name.replace(' ', '_')}"
            flags = ["--runner", "PrismRunner", "--streaming", *WINDOW, *LATENESS, "--watermark_interval", interval]
            if binary:
                flags += ["--prism_location", binary]
            run = measure(f"stream {interval}", args.rows, command(csv_path, out, *flags))
            metrics = json.loads((out / "metrics.json").read_text())
            print(row(f"--streaming, Prism ({name}), --watermark_interval {interval}", run,
                      f"panes {metrics['panes_by_timing']}, late {metrics['late_dropped']:,}"))
            checks.append((out, interval))
    for out, interval in checks:
        problems = check(csv_path, batch_out, out, interval)
        ok &= not problems
        print(f"{out.name}: {'outputs as batch and as the reference of the rule' if not problems else 'DIFFERS: ' + ', '.join(problems)}")
    return exit_status(ok, workdir, bool(args.workdir))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
