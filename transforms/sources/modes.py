"""Run-time control of a streaming source: stop it, and switch a replay between history and live.

A :class:`RunControl` is shared, by run id, between the code that starts a run (signal
handlers, the control endpoint, stdin) and the feed that a Beam DoFn reads in the same process
(the local runners run DoFns in-process; a DoFn reaches the control through this module's
registry, never through pickled state). It holds the requested mode, the stop flag, and the
figures ``GET /status`` reports.

:class:`SwitchingFeed` is the ``--source replay`` feed: it reads a :class:`HistoricalFeed` or a
:class:`LiveFeed`, whichever mode the control asks for, switching at the next block boundary. It
remembers where each stopped (history: the next record; live: the next sequence number) and
saves both in a :class:`PositionStore` after every block, so switching back, or a restarted run
with the same ``--state_dir``, resumes history at the first quote not yet processed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from transforms.quotes.rules import HISTORICAL, LIVE, MODES
from transforms.sources.feeds import FeedBlock, HistoricalFeed, Stopping, never
from transforms.sources.live import LiveFeed

LOG = logging.getLogger(__name__)

STATE_FILE = "replay_state.json"


class ModeError(ValueError):
    """An unknown mode, or saved state that does not belong to this replay."""


def parse_mode_command(line: str) -> str | None:
    """The mode a stdin command asks for (``mode live``, ``mode historical``); None: blank line.

    Raises :class:`ModeError` with a usage hint for anything else.
    """
    words = line.split()
    if not words:
        return None
    if len(words) == 2 and words[0] == "mode" and words[1] in MODES:
        return words[1]
    raise ModeError(f"unknown command {line.strip()!r}: say 'mode historical' or 'mode live'")


class RunControl:
    """The mode, stop flag and live figures of one run (thread-safe)."""

    def __init__(self, mode: str = HISTORICAL, clock: Callable[[], float] = time.time):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clock = clock
        self._mode = self._check(mode)
        self.switches = 0
        self.counts = {m: 0 for m in MODES}
        self.positions: dict[str, int | None] = {HISTORICAL: 0, LIVE: None}
        self.last_event_us: int | None = None
        self.history_done = False

    @staticmethod
    def _check(mode: str) -> str:
        if mode not in MODES:
            raise ModeError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        return mode

    @property
    def mode(self) -> str:
        return self._mode

    def request(self, mode: str) -> bool:
        """Ask for ``mode``; True when it changes anything. Raises :class:`ModeError`."""
        mode = self._check(mode)
        with self._lock:
            if mode == self._mode:
                return False
            self._mode = mode
            self.switches += 1
        LOG.info("mode switch requested: %s", mode)
        return True

    def stop(self) -> None:
        self._stop.set()

    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait_stopped(self, timeout: float) -> bool:
        return self._stop.wait(timeout)

    def record(self, mode: str, block: FeedBlock, last_event_us: int | None) -> None:
        """Count a block the feed has emitted, where that feed now stands, and the block's newest
        event time (``lag_ms`` in the status is how far that is behind the clock)."""
        with self._lock:
            self.counts[mode] += block.batch.num_rows
            self.positions[mode] = block.stop
            if last_event_us is not None:
                self.last_event_us = last_event_us

    def status(self) -> dict:
        """What ``GET /status`` answers: mode, positions, counts and lag."""
        with self._lock:
            last = self.last_event_us
            lag_ms = None if last is None else round(self._clock() * 1000 - last / 1000, 1)
            return {
                "mode": self._mode,
                "historical_position": self.positions[HISTORICAL],
                "live_position": self.positions[LIVE],
                "history_done": self.history_done,
                "counts": dict(self.counts),
                "switches": self.switches,
                "last_event_time_us": last,
                "lag_ms": lag_ms,
                "stopping": self._stop.is_set(),
            }


_CONTROLS: dict[str, RunControl] = {}
_REGISTRY_LOCK = threading.Lock()


def run_control(run_id: str, mode: str = HISTORICAL) -> RunControl:
    """The control of run ``run_id`` in this process, created (in ``mode``) on first use."""
    with _REGISTRY_LOCK:
        control = _CONTROLS.get(run_id)
        if control is None:
            control = _CONTROLS[run_id] = RunControl(mode)
        return control


def forget_run(run_id: str) -> None:
    with _REGISTRY_LOCK:
        _CONTROLS.pop(run_id, None)


def stop_all() -> None:
    """Stop every run of this process (what SIGINT and SIGTERM do)."""
    with _REGISTRY_LOCK:
        controls = list(_CONTROLS.values())
    for control in controls:
        control.stop()


def replay_layout(block_bytes: int) -> dict:
    """The settings a saved historical position depends on (see :attr:`PositionStore.layout`)."""
    return {"block_bytes": block_bytes}


@dataclass
class PositionStore:
    """Replay positions in ``<state_dir>/replay_state.json``, replaced atomically on every save.

    The file names the inputs it belongs to; loading it for other inputs is an error, not a
    silent restart from a position that means something else.
    """

    state_dir: str
    inputs: Sequence[str]
    #: Settings that change the replay's record order (``block_bytes``: each block's rejected
    #: rows follow the rows it releases); a position only means something under the same ones.
    layout: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        return os.path.join(self.state_dir, STATE_FILE)

    def load(self) -> dict[str, int | None]:
        """``{"historical": n, "live": seq or None}``; zeros when nothing was saved yet."""
        try:
            with open(self.path, encoding="utf-8") as stream:
                state = json.load(stream)
        except FileNotFoundError:
            return {HISTORICAL: 0, LIVE: None}
        except (OSError, ValueError) as exc:
            raise ModeError(f"{self.path}: cannot read the saved replay position ({exc})") from None
        if not isinstance(state, dict):
            raise ModeError(f"{self.path}: not a saved replay position (a JSON {type(state).__name__})")
        if state.get("inputs") != list(self.inputs):
            raise ModeError(
                f"{self.path} holds the position of a replay of other inputs ({state.get('inputs')}); "
                "use another --state_dir, or delete the file to start over"
            )
        if state.get("layout", {}) != self.layout:
            saved = ", ".join(f"--{k} {v}" for k, v in sorted(state.get("layout", {}).items())) or "other settings"
            raise ModeError(
                f"{self.path} holds a position in a replay read with {saved}, which orders records differently "
                "from this run; run with the same settings, use another --state_dir, or delete the file"
            )
        historical, live = state.get("historical_position"), state.get("live_position")
        if not _is_position(historical) or not (live is None or _is_position(live)):
            raise ModeError(f"{self.path}: the saved positions are not valid ({state})")
        return {HISTORICAL: historical, LIVE: live}

    def save(self, positions: dict[str, int | None]) -> None:
        """Write the positions to a temporary file and rename it over the state file.

        A reader (or a restarted run) sees the old or the new positions, never half a file. The
        rename is atomic for a killed process; surviving a power cut would also need an fsync,
        which costs more than a block here and is left out.
        """
        os.makedirs(self.state_dir, exist_ok=True)
        state = {
            "inputs": list(self.inputs),
            "layout": self.layout,
            "historical_position": positions[HISTORICAL],
            "live_position": positions[LIVE],
            "saved_at": round(time.time(), 3),
        }
        fd, tmp = tempfile.mkstemp(prefix=".replay_state.", dir=self.state_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                json.dump(state, stream)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


@dataclass
class SwitchingFeed:
    """History or live, as the run's :class:`RunControl` asks (``--source replay``).

    Positions of this feed only number its blocks; where each source stands is kept here and in
    ``state_dir`` (see the module docstring). When history runs out the feed goes live by itself.
    The live feed's end of stream ends the replay.

    The position of a block is saved once the ``yield`` returns: on Beam's local runner, the
    stages fused after the source (normalize, mid price, the live file sink) have then written
    that block's output, so a restarted run neither repeats nor skips a processed quote.
    """

    historical: HistoricalFeed
    live: LiveFeed
    run_id: str
    state_dir: str | None = None
    mode: str = HISTORICAL
    _emitted: dict = field(default_factory=lambda: {m: 0 for m in MODES}, repr=False, compare=False)

    @property
    def sources(self) -> tuple[str, ...]:
        return (*self.historical.sources, self.live.url)

    def store(self) -> PositionStore | None:
        if not self.state_dir:
            return None
        return PositionStore(self.state_dir, self.historical.sources, replay_layout(self.historical.block_bytes))

    def blocks(self, start: int = 0, stopping: Stopping = never) -> Iterator[FeedBlock]:
        control = run_control(self.run_id, self.mode)
        store = self.store()
        if store is not None:
            control.positions.update(store.load())
        LOG.info("replay starts in %s mode at history position %s", control.mode, control.positions[HISTORICAL])
        seq = start

        interrupted: list[bool] = []

        def leave(mode: str) -> Stopping:
            def check() -> bool:
                if stopping() or control.stopped() or control.mode != mode:
                    interrupted.append(True)
                    return True
                return False

            return check

        while not (stopping() or control.stopped()):
            mode = control.mode
            feed = self.historical if mode == HISTORICAL else self.live
            interrupted.clear()
            for block in feed.blocks(control.positions[mode], leave(mode)):
                newest = _newest_event(block)
                yield FeedBlock(self._renumbered(block, mode), seq, seq + 1, self.sources)
                seq += 1
                control.record(mode, block, newest)
                self._emitted[mode] += block.batch.num_rows
                if store is not None:
                    store.save(control.positions)
            if interrupted:
                continue  # switched (go on with whichever feed is asked for now, from where it stood) or stopping
            if mode == HISTORICAL:
                control.history_done = True
                LOG.info("history replayed to the end (position %s): going live", control.positions[HISTORICAL])
                control.request(LIVE)
                continue
            LOG.info("the live feed ended: the replay ends")
            return

    def _renumbered(self, block: FeedBlock, mode: str):
        """The block's rows with ``file`` indexing :attr:`sources` (the live feed comes last)."""
        if mode == HISTORICAL:
            return block.batch
        index = block.batch.schema.get_field_index("file")
        files = pa.array(np.full(block.batch.num_rows, len(self.historical.sources), dtype=np.int32))
        return block.batch.set_column(index, "file", files)

    def stats(self) -> dict[str, int]:
        live = self.live.stats()
        return {
            "records_in": sum(self._emitted.values()),
            "historical_records": self._emitted[HISTORICAL],
            "live_records": self._emitted[LIVE],
            **{k: v for k, v in live.items() if k != "records_in"},
        }


def _is_position(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _newest_event(block: FeedBlock) -> int | None:
    import pyarrow.compute as pc

    return pc.max(block.batch.column("event_us")).as_py()
