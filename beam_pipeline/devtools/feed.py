"""A local websocket quote feed for development and tests (127.0.0.1 only).

    python -m beam_pipeline.devtools.feed --input beam_pipeline/data/live_sample.csv --port 8765 --rate 1000

Each row of the CSV becomes one JSON text frame with the CSV's own field names and values (as
the exact strings of the file, so prices stay exact) and a sequence number::

    {"seq": 0, "timestamp": "2024-06-03 07:00:00.012", "symbol": "EURUSD", "bid_price": "1.08501", ...}

After the last quote the feed sends ``{"seq": N, "eos": true}`` and closes, unless ``--loop``
(then it starts over, ``seq`` still counting up). A client that reconnects with ``?from=SEQ``
continues at that sequence number, so nothing it already received comes again and nothing is
skipped. Faults on request: ``--drop_every N`` closes the connection after every N frames,
``--malformed_every N`` sends every Nth frame as broken JSON (it still uses up its ``seq``),
``--pause_after N --pause_seconds S`` stalls once.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence
from urllib.parse import parse_qs, urlparse

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

LOG = logging.getLogger(__name__)
HOST = "127.0.0.1"


@dataclass(frozen=True)
class FeedConfig:
    """How the feed plays its quotes. ``rate`` is frames per second (0: as fast as possible)."""

    rate: float = 1000.0
    loop: bool = False
    drop_every: int | None = None
    malformed_every: int | None = None
    pause_after: int | None = None
    pause_seconds: float = 0.0

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError("--rate must not be negative")
        for name in ("drop_every", "malformed_every", "pause_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1")
        if self.pause_seconds < 0:
            raise ValueError("--pause_seconds must not be negative")


def load_messages(path: str) -> list[dict[str, str]]:
    """The CSV's rows as dicts of their non-empty fields, values as written in the file."""
    with open(path, newline="", encoding="utf-8") as stream:
        return [{k: v for k, v in row.items() if k and v not in (None, "")} for row in csv.DictReader(stream)]


def frame_text(seq: int, message: dict[str, str], malformed_every: int | None = None) -> str:
    """The text frame for ``seq``: the quote as JSON, or broken JSON on every Nth sequence number."""
    text = json.dumps({"seq": seq, **message})
    if malformed_every and (seq + 1) % malformed_every == 0:
        return text[: len(text) // 2]  # cut in the middle: not valid JSON
    return text


class Frame(NamedTuple):
    seq: int
    text: str
    eos: bool = False


def frames(messages: Sequence[dict[str, str]], config: FeedConfig, start: int = 0) -> Iterator[Frame]:
    """The frames from sequence number ``start``: quotes, then the end-of-stream marker."""
    seq = start
    while messages and (config.loop or seq < len(messages)):
        yield Frame(seq, frame_text(seq, messages[seq % len(messages)], config.malformed_every))
        seq += 1
    yield Frame(max(seq, len(messages)), json.dumps({"seq": max(seq, len(messages)), "eos": True}), eos=True)


def resume_position(path: str) -> int:
    """The ``from`` query parameter of a connection's path (0 when absent); raises ValueError."""
    values = parse_qs(urlparse(path).query).get("from", ["0"])
    position = int(values[-1])
    if position < 0:
        raise ValueError("from must not be negative")
    return position


class Feed:
    """The server side: one independent, paced stream of frames per connection."""

    def __init__(self, messages: Sequence[dict[str, str]], config: FeedConfig, sent_log: str | None = None):
        self.messages = list(messages)
        self.config = config
        self.connections = 0
        self.frames_sent = 0
        self.sent_log = sent_log

    def _log_sends(self, sends: list[tuple[int, float]]) -> None:
        """Append ``seq<TAB>unix time sent`` lines (for latency benchmarks) when a connection ends."""
        if self.sent_log and sends:
            with open(self.sent_log, "a", encoding="ascii") as stream:
                stream.writelines(f"{seq}\t{sent:.6f}\n" for seq, sent in sends)

    async def handle(self, websocket: ServerConnection) -> None:
        self.connections += 1
        try:
            start = resume_position(websocket.request.path)
        except ValueError as exc:
            await websocket.close(code=1008, reason=f"bad from: {exc}")
            return
        config = self.config
        began = time.monotonic()
        sends: list[tuple[int, float]] = []
        try:
            await self._play(websocket, config, start, began, sends)
        except ConnectionClosed:
            LOG.info("the client left before the end of the stream")
        finally:
            self._log_sends(sends)

    async def _play(self, websocket: ServerConnection, config: FeedConfig, start: int, began: float,
                    sends: list[tuple[int, float]]) -> None:
        sent = 0
        record = sends.append if self.sent_log else None
        for frame in frames(self.messages, config, start):
            if config.rate:
                delay = began + sent / config.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await websocket.send(frame.text)
            if record is not None and not frame.eos:
                record((frame.seq, time.time()))
            sent += 1
            self.frames_sent += 1
            if config.pause_after and frame.seq + 1 == config.pause_after:
                await asyncio.sleep(config.pause_seconds)
                began += config.pause_seconds
            if config.drop_every and sent % config.drop_every == 0 and not frame.eos:
                LOG.info("dropping the connection after seq %s (fault injection)", frame.seq)
                await websocket.close(code=1012, reason="fault injection: dropped")
                return
        await websocket.close()


class FeedServer:
    """Run a :class:`Feed` on 127.0.0.1 in a background thread: ``with FeedServer(...) as url:``.

    ``port=0`` picks a free port; ``url`` is ``ws://127.0.0.1:PORT/``.
    """

    def __init__(self, messages: Sequence[dict[str, str]], config: FeedConfig = FeedConfig(), port: int = 0):
        self.feed = Feed(messages, config)
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="feed", daemon=True)
        self._server = None
        self.url = ""

    def __enter__(self) -> str:
        self._thread.start()

        async def start():
            return await serve(self.feed.handle, HOST, self._port)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://{HOST}:{port}/"
        return self.url

    def __exit__(self, *exc_info) -> None:
        async def shut_down():
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut_down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _serve_forever(feed: Feed, port: int) -> None:
    async with serve(feed.handle, HOST, port) as server:
        actual = server.sockets[0].getsockname()[1]
        print(f"feed: ws://{HOST}:{actual}/ ({len(feed.messages):,} quotes, {feed.config.rate:g}/s)", flush=True)
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.devtools.feed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="quote CSV to serve")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--rate", type=float, default=1000.0, help="frames per second (0: unpaced)")
    parser.add_argument("--loop", action="store_true", help="start over at the end instead of ending")
    parser.add_argument("--drop_every", type=int, default=None, help="close the connection after every N frames")
    parser.add_argument("--malformed_every", type=int, default=None, help="send every Nth frame as broken JSON")
    parser.add_argument("--pause_after", type=int, default=None, help="stall once after this many frames")
    parser.add_argument("--pause_seconds", type=float, default=0.0, help="how long the stall lasts")
    parser.add_argument("--sent_log", default=None,
                        help="append 'seq<TAB>unix time' per frame sent to this file (for latency benchmarks)")
    args = parser.parse_args(argv)
    try:
        config = FeedConfig(args.rate, args.loop, args.drop_every, args.malformed_every, args.pause_after,
                            args.pause_seconds)
        messages = load_messages(args.input)
    except (ValueError, OSError) as exc:
        print(f"feed: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve_forever(Feed(messages, config, args.sent_log), args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
