"""Exactly once across a consumer group when a consumer is SIGKILLed and a new one joins.

For each layout (one shared ``--output_dir``, and one folder per consumer as on machines that
share no filesystem) and each trial: an emptied throwaway ``redis-server`` on 127.0.0.1, two
consumers ``a`` and ``b``, a publisher of N quotes, one of ``a``/``b`` (random) SIGKILLed at a
random moment after it has written lines, and a new consumer ``c`` (the dead one is never
restarted). With separate folders, the dead consumer's folder is moved away as soon as it is
killed (its machine is gone: no survivor can reach it) and comes back only once the group has
drained, where ``python -m beam_pipeline.queue_outputs`` settles it. Once the group has drained
and no output file has changed for ``--quiet`` seconds, the survivors are stopped and every
``mid_prices.log`` and ``errors.log`` line of the group's folders (as multisets) is compared with
a DirectRunner run of the same file: each must be there exactly once.

    python benchmarks/queue_exactly_once.py                      # 10 trials x 2 layouts, 100,000 quotes
    python benchmarks/queue_exactly_once.py --trials 3 --rows 20000 --quiet 2

Prints one line per trial and a summary; exits 1 if any trial had a missing or repeated line.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay_throughput import ROOT, make_workdir  # noqa: E402  (sibling helpers)

sys.path.insert(0, str(ROOT))
from tests.redis_server import RedisServer  # noqa: E402

PIPELINE = [sys.executable, "-m", "beam_pipeline", "--progress", "off"]
STREAM, GROUP = "quotes", "midprice"
CHECKED = ("mid_prices.log", "errors.log")
DEAD_AFTER_MS = 1000


def lines(folders: list[Path], name: str) -> Counter:
    found: Counter = Counter()
    for folder in folders:
        if (folder / name).exists():
            found.update((folder / name).read_text().splitlines())
    return found


def drained(client: redis.Redis, rows: int) -> bool:
    """Every entry delivered and acknowledged (by ids: Redis 6.2 reports no group lag)."""
    if not client.exists(STREAM) or client.xlen(STREAM) != rows:
        return False
    groups = client.xinfo_groups(STREAM)
    last = client.xinfo_stream(STREAM)["last-generated-id"]
    return bool(groups) and groups[0]["pending"] == 0 and groups[0]["last-delivered-id"] == last


def sizes(folders: list[Path]) -> dict[str, int]:
    return {str(path): path.stat().st_size for folder in folders if folder.exists()
            for path in folder.rglob("*") if path.is_file()}


def wait(condition, timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def trial(server: RedisServer, csv: Path, rows: int, work: Path, layout: str, rng: random.Random,
          quiet: float, expected: dict[str, Counter]) -> dict:
    server.flushall()
    client = redis.Redis(host="127.0.0.1", port=server.port)
    shutil.rmtree(work, ignore_errors=True)
    out = {name: work / ("out" if layout == "shared" else f"out_{name}") for name in "abc"}
    folder = {name: out[name] / f"consumer={name}" for name in "abc"}
    logs = work / "logs"
    logs.mkdir(parents=True)
    processes: dict[str, subprocess.Popen] = {}

    def start(name: str, command: list[str]) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115  (closed with the process)
        processes[name] = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
        return processes[name]

    def consumer(name: str) -> subprocess.Popen:
        return start(name, [*PIPELINE, "--source", f"{server.url}/{STREAM}", "--group", GROUP, "--consumer", name,
                            "--output_dir", str(out[name]), "--queue_dead_after_ms", str(DEAD_AFTER_MS)])

    try:
        consumer("a"), consumer("b")
        start("publisher", [*PIPELINE, "--sink", f"{server.url}/{STREAM}", "--input", str(csv),
                            "--output_dir", str(work / "pub")])
        victim = rng.choice("ab")
        mid = folder[victim] / "mid_prices.log"
        wait(lambda: mid.exists() and mid.stat().st_size > 0, 120, f"consumer {victim} to write lines")
        delay = rng.uniform(0.0, max(0.5, rows / 25_000))
        time.sleep(delay)
        processes[victim].send_signal(signal.SIGKILL)
        processes[victim].wait(10)
        at_kill = mid.stat().st_size
        away = work / "dead_machine"
        if layout == "separate":
            out[victim].rename(away)
        consumer("c")
        if processes["publisher"].wait(300) != 0:
            raise RuntimeError(f"the publisher failed: see {logs / 'publisher.log'}")
        wait(lambda: drained(client, rows), 300, "the group to drain")
        survivors = [name for name in "abc" if name != victim]
        previous, still_since = None, time.monotonic()
        while time.monotonic() - still_since < quiet:  # nothing changes for `quiet` seconds
            now = sizes([folder[name] for name in survivors] + ([folder[victim]] if layout == "shared" else []))
            if now != previous:
                previous, still_since = now, time.monotonic()
            time.sleep(0.2)
        for name in survivors:
            processes[name].send_signal(signal.SIGTERM)
            if processes[name].wait(60) != 0:
                raise RuntimeError(f"consumer {name} failed: see {logs / (name + '.log')}")
        settled = ""
        if layout == "separate":
            touched = out[victim].exists()
            away.rename(out[victim])
            done = subprocess.run([sys.executable, "-m", "beam_pipeline.queue_outputs", "--source",
                                   f"{server.url}/{STREAM}", "--group", GROUP, str(out[victim])],
                                  cwd=ROOT, capture_output=True, text=True, check=True)
            settled = done.stdout.strip().split(": ", 1)[-1] + ("; SOMEONE RECREATED ITS FOLDER" if touched else "")
        folders = list(folder.values())
        result = {"layout": layout, "victim": victim, "delay": delay, "at_kill": at_kill, "settled": settled}
        ok = True
        for name in CHECKED:
            got = lines(folders, name)
            extra, missing = sum((got - expected[name]).values()), sum((expected[name] - got).values())
            result[name] = (extra, missing)
            ok &= extra == 0 and missing == 0
        result["parts_left"] = sum(1 for f in folders for _ in (f / ".parts").glob("*.part"))
        result["ok"] = ok and result["parts_left"] == 0
        return result
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--layouts", default="shared,separate")
    parser.add_argument("--quiet", type=float, default=15.0, help="seconds without a change before comparing")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    layouts = args.layouts.split(",")
    if not set(layouts) <= {"shared", "separate"}:
        parser.error("--layouts: shared and/or separate")
    workdir = make_workdir(args.workdir, "queue_exactly_once_")
    csv = workdir / "quotes.csv"
    subprocess.run([sys.executable, "-m", "beam_pipeline.devtools.samples", str(csv), "--rows", str(args.rows), "--seed", "11"],
                   cwd=ROOT, check=True, capture_output=True)
    subprocess.run([*PIPELINE, "--input", str(csv), "--output_dir", str(workdir / "direct")], cwd=ROOT, check=True,
                   capture_output=True)
    expected = {name: Counter((workdir / "direct" / name).read_text().splitlines()) for name in CHECKED}
    print(f"{args.rows:,} quotes: {sum(expected['mid_prices.log'].values()):,} mid prices, "
          f"{sum(expected['errors.log'].values()):,} latency errors (DirectRunner); "
          f"{args.trials} trials x {', '.join(layouts)}; quiet {args.quiet:g} s")
    rng = random.Random(args.seed)
    results = []
    with RedisServer() as server:
        for layout in layouts:
            for number in range(1, args.trials + 1):
                result = trial(server, csv, args.rows, workdir / f"{layout}_{number}", layout, rng, args.quiet,
                               expected)
                results.append(result)
                (mx, mm), (ex, em) = result["mid_prices.log"], result["errors.log"]
                print(f"{layout:8} #{number:<2} killed {result['victim']} {result['delay']:4.1f} s after its first "
                      f"lines ({result['at_kill']:>9,} bytes)  mid prices +{mx} -{mm}  errors +{ex} -{em}  "
                      f"parts left {result['parts_left']}  {'ok' if result['ok'] else 'FAILED'}"
                      + (f"  [{result['settled']}]" if result["settled"] else ""), flush=True)
    failed = [r for r in results if not r["ok"]]
    for layout in layouts:
        mine = [r for r in results if r["layout"] == layout]
        print(f"{layout}: {sum(r['ok'] for r in mine)}/{len(mine)} trials exactly once")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
