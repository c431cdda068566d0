"""Live latency: send time -> mid price line written, the pipeline beside a bare websocket client.

For each rate, the development feed (``python -m beam_pipeline.devtools.feed``, its own process) sends
``rate * seconds`` generated quotes and logs when it sent each one (``--sent_log``). A reader,
also its own process, turns them into ``mid_prices.log`` lines:

* pipeline: ``python -m beam_pipeline --source live`` (FnApiRunner, splittable DoFn, normalize,
  mid price, appending sink);
* prism: the same on ``--runner PrismRunner`` (``make prism``), its source reporting a watermark every
  ``--watermark_interval`` (1 s) of arrival time;
* bare: a plain loop in this file (websockets client, ``json.loads``, exact ``Decimal`` mid,
  one write and flush per message), the least any reader must do.

This script watches the output file's size every millisecond and notes when each line appeared;
line ``k`` is the quote with ``seq`` ``k`` (every generated quote is valid and live quotes are
never filtered). Latency = appeared - sent. It prints p50/p99/max per rate and reader, whether the
feed really sent at the rate, and whether the reader kept up: lag did not grow (the median latency
of the last fifth of the quotes is within 50 ms of the first fifth's) and p99 stayed under a
second. The highest rate that both the feed and the reader sustained is the figure to report.

    python benchmarks/live_latency.py                       # 10k/s for the latency, then a rate sweep
    python benchmarks/live_latency.py --rates 10000 20000 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay_throughput import ROOT, make_workdir  # noqa: E402  (the sibling benchmark's helpers)

POLL_SECONDS = 0.001
WARMUP_FRACTION = 0.02  # the first quotes meet a cold reader (imports done, first bundle)


@dataclass
class Result:
    reader: str
    rate: int
    quotes: int
    lines: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    first_fifth_ms: float
    last_fifth_ms: float
    send_rate: float

    @property
    def feed_kept_up(self) -> bool:
        return self.send_rate >= 0.95 * self.rate

    @property
    def reader_kept_up(self) -> bool:
        return (self.lines == self.quotes and self.last_fifth_ms - self.first_fifth_ms < 50
                and self.p99_ms < 1000)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def live_quotes(workdir: Path, rows: int) -> Path:
    path = workdir / f"live_{rows}.csv"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "beam_pipeline.devtools.samples", str(path), "--rows", str(rows), "--live"],
                       cwd=ROOT, check=True)
    return path


class Watcher(threading.Thread):
    """Note when each line of a growing file appeared (polling its size every millisecond)."""

    def __init__(self, path: Path, expected: int):
        super().__init__(daemon=True)
        self.path = path
        self.expected = expected
        self.appeared: list[float] = []
        self.done = threading.Event()

    def run(self):
        data = b""
        stream = None
        while not self.done.is_set() and len(self.appeared) < self.expected:
            if stream is None:
                try:
                    stream = open(self.path, "rb")  # noqa: SIM115
                except FileNotFoundError:
                    time.sleep(POLL_SECONDS)
                    continue
            chunk = stream.read()
            now = time.time()
            if chunk:
                data = chunk[chunk.rfind(b"\n") + 1 :] if b"\n" in chunk else data + chunk
                self.appeared.extend([now] * chunk.count(b"\n"))
            else:
                time.sleep(POLL_SECONDS)
        if stream is not None:
            stream.close()


def start_feed(csv_path: Path, rate: int, sent_log: Path) -> tuple[subprocess.Popen, str]:
    feed = subprocess.Popen(
        [sys.executable, "-m", "beam_pipeline.devtools.feed", "--input", str(csv_path), "--port", "0", "--rate", str(rate),
         "--sent_log", str(sent_log)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = feed.stdout.readline()
    if not line.startswith("feed: "):
        feed.kill()
        sys.exit(f"the feed did not start: {line!r}")
    return feed, line.split()[1]


def reader_command(reader: str, url: str, out_dir: Path, interval: str | None = None) -> list[str]:
    if reader in ("pipeline", "prism"):
        runner = ["--runner", "PrismRunner"] if reader == "prism" else []
        if reader == "prism" and interval:
            runner += ["--watermark_interval", interval]
        return [sys.executable, "-m", "beam_pipeline", "--source", "live", "--live_url", url,
                "--output_dir", str(out_dir), *runner]
    return [sys.executable, __file__, "--bare", url, str(out_dir / "mid_prices.log")]


def run_one(reader: str, rate: int, seconds: float, workdir: Path, interval: str | None = None) -> Result:
    quotes = int(rate * seconds)
    csv_path = live_quotes(workdir, quotes)
    out_dir = workdir / f"{reader}_{rate}"
    out_dir.mkdir(exist_ok=True)
    for old in out_dir.iterdir():
        old.unlink()
    sent_log = workdir / f"sent_{reader}_{rate}.tsv"
    sent_log.unlink(missing_ok=True)
    feed, url = start_feed(csv_path, rate, sent_log)
    watcher = Watcher(out_dir / "mid_prices.log", quotes)
    watcher.start()
    try:
        reader_process = subprocess.run(reader_command(reader, url, out_dir, interval), cwd=ROOT, capture_output=True,
                                        text=True, timeout=seconds * 10 + 120)
    finally:
        watcher.done.set()
        watcher.join(5)
        _wait_for_lines(sent_log, quotes, timeout=10)  # the feed logs its sends when the connection ends
        feed.terminate()
        feed.wait(10)
    if reader_process.returncode != 0:
        sys.exit(f"{reader} failed at {rate}/s:\n{reader_process.stderr[-3000:]}")
    sent = {}
    for line in sent_log.read_text().splitlines():
        seq, at = line.split("\t")
        sent[int(seq)] = float(at)
    latencies = [(watcher.appeared[k] - sent[k]) * 1000 for k in range(min(len(watcher.appeared), quotes))]
    measured = latencies[int(WARMUP_FRACTION * len(latencies)) :]
    fifth = max(1, len(measured) // 5)
    span = max(sent.values()) - min(sent.values()) if len(sent) > 1 else 0.0
    return Result(
        reader, rate, quotes, len(watcher.appeared),
        p50_ms=percentile(measured, 0.50), p99_ms=percentile(measured, 0.99), max_ms=max(measured),
        first_fifth_ms=percentile(measured[:fifth], 0.5), last_fifth_ms=percentile(measured[-fifth:], 0.5),
        send_rate=(len(sent) - 1) / span if span else 0.0,
    )


def _wait_for_lines(path: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.05)


def bare_client(url: str, output: str) -> int:
    """The baseline reader: every message parsed, its exact mid written and flushed at once."""
    from websockets.sync.client import connect

    with connect(url, compression=None, max_size=1 << 20) as websocket, open(output, "a", encoding="utf-8") as out:
        for text in websocket:
            message = json.loads(text)
            if message.get("eos"):
                break
            mid = (Decimal(message["bid_price"]) + Decimal(message["ask_price"])) / 2
            out.write(f"{message['timestamp']}, {mid.normalize():f}\n")
            out.flush()
    return 0


def show(result: Result) -> str:
    kept = "yes" if result.reader_kept_up else "NO"
    feed = "" if result.feed_kept_up else f"  (feed only sent {result.send_rate:,.0f}/s)"
    return (f"  {result.reader:<8} {result.rate:>7,}/s  p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  "
            f"max {result.max_ms:7.1f} ms  lag first/last fifth {result.first_fifth_ms:6.1f}/{result.last_fifth_ms:6.1f} ms  "
            f"kept up: {kept}{feed}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[10000, 20000, 30000, 40000, 50000, 60000])
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each rate is fed (default 5)")
    parser.add_argument("--readers", nargs="+", default=["pipeline", "bare"], choices=["pipeline", "prism", "bare"],
                        help="pipeline: the DirectRunner; prism: --runner PrismRunner (make prism); bare: a plain client")
    parser.add_argument("--watermark_interval", default=None,
                        help="the prism reader's --watermark_interval (of arrival time: the generated quotes' "
                        "timestamps advance about 200 s per second of sending at 10,000/s)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--bare", nargs=2, metavar=("URL", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        return bare_client(*args.bare)
    workdir = make_workdir(args.workdir, "live_latency_")
    print(f"live latency, send -> mid line written; {args.seconds:g} s per rate, {os.cpu_count()} cores, "
          f"feed, reader and watcher in separate processes")
    results = []
    for rate in args.rates:
        for reader in args.readers:
            result = run_one(reader, rate, args.seconds, workdir, args.watermark_interval)
            results.append(result)
            print(show(result), flush=True)
    for reader in args.readers:
        sustained = [r.rate for r in results if r.reader == reader and r.reader_kept_up and r.feed_kept_up]
        print(f"highest rate sustained, {reader}: {max(sustained):,}/s" if sustained
              else f"highest rate sustained, {reader}: none of {args.rates}")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
