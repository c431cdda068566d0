"""Steering a running live pipeline: the control endpoint, stdin commands and shutdown signals.

* ``GET /status`` answers the run's :meth:`~transforms.sources.modes.RunControl.status` as JSON;
* ``POST /mode`` with ``{"mode": "historical"|"live"}`` switches a ``--source replay`` run
  (200 with the status, 400 with the reason for a bad request);
* a ``mode live`` / ``mode historical`` line on stdin does the same;
* SIGINT and SIGTERM stop the source: the run then flushes its outputs, writes ``metrics.json``
  and exits 0.

The endpoint listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Iterator

from transforms.sources.modes import ModeError, RunControl, parse_mode_command

LOG = logging.getLogger(__name__)
HOST = "127.0.0.1"
MAX_BODY = 4096


class _Handler(BaseHTTPRequestHandler):
    control: RunControl  # set on the subclass made per server

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.split("?")[0] != "/status":
            self._reply(404, {"error": f"no such path {self.path}; try GET /status or POST /mode"})
            return
        self._reply(200, self.control.status())

    def do_POST(self):  # noqa: N802
        if self.path.split("?")[0] != "/mode":
            self._reply(404, {"error": f"no such path {self.path}; try GET /status or POST /mode"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise ModeError(f"send a JSON body of 1 to {MAX_BODY} bytes, like {{\"mode\": \"live\"}}")
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict) or "mode" not in body:
                raise ModeError('the body must be a JSON object with "mode", like {"mode": "live"}')
            self.control.request(body["mode"])
        except (ModeError, ValueError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        self._reply(200, self.control.status())

    def _reply(self, status: int, body: dict) -> None:
        data = (json.dumps(body) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        LOG.debug("control: " + format, *args)


class ControlServer:
    """The control endpoint on 127.0.0.1:``port`` (0: any free port) in a background thread."""

    def __init__(self, control: RunControl, port: int = 0):
        handler = type("ControlHandler", (_Handler,), {"control": control})
        self._server = ThreadingHTTPServer((HOST, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def __enter__(self) -> "ControlServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def follow_commands(control: RunControl, stream: IO[str], errors: IO[str] | None = None) -> None:
    """Apply ``mode ...`` lines from ``stream`` until it ends or the run stops (replies to
    ``errors``, default stderr)."""
    errors = errors or sys.stderr
    for line in stream:
        if control.stopped():
            return
        try:
            mode = parse_mode_command(line)
        except ModeError as exc:
            print(f"beam_pipeline: {exc}", file=errors, flush=True)
            continue
        if mode is not None:
            changed = control.request(mode)
            print(f"beam_pipeline: mode {mode}{'' if changed else ' (already)'}", file=errors, flush=True)


def start_stdin_commands(control: RunControl) -> threading.Thread:
    thread = threading.Thread(target=follow_commands, args=(control, sys.stdin), name="stdin-commands", daemon=True)
    thread.start()
    return thread


@contextmanager
def stop_on_signals(control: RunControl) -> Iterator[None]:
    """SIGINT and SIGTERM stop the run's source (the run then ends cleanly) instead of killing it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handle(signum, _frame):
        LOG.info("%s: stopping the source; outputs are being flushed", signal.Signals(signum).name)
        control.stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
