"""Run control and the switching replay: modes, the run registry, saved positions, SwitchingFeed."""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid

import pyarrow as pa
import pytest

from beam_pipeline.config import bundled_sample
from beam_pipeline.devtools.feed import FeedConfig, FeedServer, load_messages
from transforms.quotes.rules import HISTORICAL, LIVE
from transforms.sources import modes
from transforms.sources.feeds import FeedBlock, HistoricalFeed
from transforms.sources.live import LiveFeed
from transforms.sources.modes import (
    STATE_FILE,
    ModeError,
    PositionStore,
    RunControl,
    SwitchingFeed,
    forget_run,
    parse_mode_command,
    run_control,
    stop_all,
)
from transforms.sources.replay import BLOCK_SCHEMA, HistoricalReplay

HISTORY = bundled_sample("historical_sample.csv")
LIVE_CSV = bundled_sample("live_sample.csv")


# --------------------------------------------------------------------------- helpers and fixtures


@pytest.fixture
def run_id():
    """A fresh run id, forgotten afterwards so the process-wide registry does not leak."""
    ids = []

    def make() -> str:
        ids.append(f"test-{uuid.uuid4()}")
        return ids[-1]

    first = make()
    make.first = first
    yield make
    for name in ids:
        forget_run(name)


@pytest.fixture(scope="module")
def history_rows() -> list[tuple[int, int, str]]:
    """(file, line, raw) of every record of the historical sample, in the replay's arrival order."""
    batch = pa.concat_batches(list(HistoricalReplay([HISTORY])))
    return list(zip(batch.column("file").to_pylist(), batch.column("line").to_pylist(),
                    batch.column("raw").to_pylist()))


@pytest.fixture(scope="module")
def live_messages() -> list[dict[str, str]]:
    return load_messages(LIVE_CSV)


def rows_of(blocks: list[FeedBlock]) -> list[dict]:
    return [row for block in blocks for row in block.batch.to_pylist()]


def keys(rows: list[dict]) -> list[tuple[int, int, str]]:
    return [(r["file"], r["line"], r["raw"]) for r in rows]


def expected_live(messages: list[dict[str, str]], seqs) -> list[dict]:
    """What the live feed's frames for ``seqs`` say: the CSV row's fields and its sequence number."""
    return [{"seq": s, **messages[s]} for s in seqs]


def block(rows: int, start: int, event_us: list[int | None] | None = None) -> FeedBlock:
    """A FeedBlock of ``rows`` rows at positions [start, start + rows) (only event_us filled in)."""
    arrays = {f.name: pa.nulls(rows, f.type) for f in BLOCK_SCHEMA}
    if event_us is not None:
        arrays["event_us"] = pa.array(event_us, type=pa.int64())
    batch = pa.RecordBatch.from_arrays([arrays[f.name] for f in BLOCK_SCHEMA], schema=BLOCK_SCHEMA)
    return FeedBlock(batch, start, start + rows, ("x.csv",))


def read_state(state_dir) -> dict:
    with open(os.path.join(state_dir, STATE_FILE), encoding="utf-8") as stream:
        return json.load(stream)


# --------------------------------------------------------------------------- parse_mode_command


class TestParseModeCommand:
    @pytest.mark.parametrize("line, mode", [
        ("mode live", LIVE),
        ("mode historical", HISTORICAL),
        ("mode live\n", LIVE),
        ("   mode    historical \t\r\n", HISTORICAL),
        ("\tmode live   ", LIVE),
    ])
    def test_mode_commands(self, line, mode):
        assert parse_mode_command(line) == mode

    @pytest.mark.parametrize("line", ["", "\n", "   \t  \r\n"])
    def test_blank_line_is_no_command(self, line):
        assert parse_mode_command(line) is None

    @pytest.mark.parametrize("line", [
        "mode", "live", "mode replay", "mode live now", "MODE live", "mode LIVE", "modelive", "set mode live",
        "mode historical live",
    ])
    def test_anything_else_is_an_error_with_a_usage_hint(self, line):
        with pytest.raises(ModeError) as raised:
            parse_mode_command(line + "\n")
        message = str(raised.value)
        assert repr(line.strip()) in message  # names what was typed, without the newline
        assert "mode historical" in message and "mode live" in message  # says what would work

    def test_mode_error_is_a_value_error(self):
        assert issubclass(ModeError, ValueError)


# --------------------------------------------------------------------------- RunControl


class TestRunControl:
    def test_starts_in_the_given_mode(self):
        assert RunControl().mode == HISTORICAL
        assert RunControl(LIVE).mode == LIVE

    def test_unknown_initial_mode(self):
        with pytest.raises(ModeError, match="replay"):
            RunControl("replay")

    def test_request_reports_whether_anything_changed_and_counts_switches(self):
        control = RunControl()
        assert control.request(HISTORICAL) is False
        assert control.switches == 0 and control.mode == HISTORICAL
        assert control.request(LIVE) is True
        assert control.mode == LIVE and control.switches == 1
        assert control.request(LIVE) is False
        assert control.switches == 1
        assert control.request(HISTORICAL) is True
        assert control.mode == HISTORICAL and control.switches == 2
        assert control.status()["switches"] == 2

    @pytest.mark.parametrize("mode", ["replay", "Live", "", None, 1, " live"])
    def test_unknown_mode_is_refused_and_changes_nothing(self, mode):
        control = RunControl()
        with pytest.raises(ModeError) as raised:
            control.request(mode)
        assert repr(mode) in str(raised.value)
        assert HISTORICAL in str(raised.value) and LIVE in str(raised.value)
        assert control.mode == HISTORICAL and control.switches == 0

    def test_stop(self):
        control = RunControl()
        assert not control.stopped()
        assert control.status()["stopping"] is False
        started = time.monotonic()
        assert control.wait_stopped(0.05) is False  # times out: not stopped
        assert time.monotonic() - started >= 0.04
        control.stop()
        assert control.stopped()
        assert control.wait_stopped(0) is True
        assert control.status()["stopping"] is True
        control.stop()  # idempotent
        assert control.stopped()

    def test_wait_stopped_wakes_when_another_thread_stops(self):
        control = RunControl()
        timer = threading.Timer(0.1, control.stop)
        timer.start()
        try:
            started = time.monotonic()
            assert control.wait_stopped(5) is True
            assert time.monotonic() - started < 2
        finally:
            timer.cancel()

    def test_record_counts_rows_and_moves_positions(self):
        control = RunControl()
        control.record(HISTORICAL, block(3, 0), 1_000)
        control.record(HISTORICAL, block(4, 3), 2_000)
        control.record(LIVE, block(5, 10), 3_000)
        status = control.status()
        assert status["counts"] == {HISTORICAL: 7, LIVE: 5}
        assert status["historical_position"] == 7
        assert status["live_position"] == 15
        assert status["last_event_time_us"] == 3_000
        assert control.positions == {HISTORICAL: 7, LIVE: 15}

    def test_record_without_event_time_keeps_the_last_one(self):
        control = RunControl()
        control.record(LIVE, block(2, 0), 5_000)
        control.record(LIVE, block(2, 2), None)  # a block of rejected rows only
        assert control.status()["last_event_time_us"] == 5_000
        assert control.status()["live_position"] == 4

    def test_status_before_anything_happened(self):
        control = RunControl(clock=lambda: 1_000.0)
        assert control.status() == {
            "mode": HISTORICAL,
            "historical_position": 0,
            "live_position": None,
            "history_done": False,
            "counts": {HISTORICAL: 0, LIVE: 0},
            "switches": 0,
            "last_event_time_us": None,
            "lag_ms": None,
            "stopping": False,
        }

    def test_lag_is_the_clock_minus_the_newest_event(self):
        now = [1_717_398_000.5]  # seconds
        control = RunControl(clock=lambda: now[0])
        event_us = 1_717_398_000_250_000  # 250 ms before "now"
        control.record(HISTORICAL, block(1, 0), event_us)
        assert control.status()["lag_ms"] == pytest.approx(250.0)
        now[0] += 2  # the clock moves on, the newest event does not
        assert control.status()["lag_ms"] == pytest.approx(2250.0)
        control.record(HISTORICAL, block(1, 1), event_us + 2_000_000 + 1_500)  # 1.5 ms newer than now - 250 ms
        assert control.status()["lag_ms"] == pytest.approx(248.5)

    def test_status_is_a_snapshot(self):
        control = RunControl()
        status = control.status()
        status["counts"][HISTORICAL] = 99
        assert control.status()["counts"][HISTORICAL] == 0

    def test_status_is_json(self):
        control = RunControl(clock=lambda: 2.0)
        control.record(LIVE, block(1, 0), 1_000_000)
        assert json.loads(json.dumps(control.status())) == control.status()

    def test_concurrent_requests_and_records(self):
        control = RunControl()
        changed = []
        lock = threading.Lock()
        barrier = threading.Barrier(8)

        def toggle(mode):
            barrier.wait()
            mine = 0
            for _ in range(500):
                mine += control.request(mode)
                control.record(mode, block(1, 0), None)
            with lock:
                changed.append(mine)

        threads = [threading.Thread(target=toggle, args=(HISTORICAL if i % 2 else LIVE,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        # Every switch that a request reported is counted once, and no recorded row is lost.
        assert control.switches == sum(changed)
        assert control.status()["counts"] == {HISTORICAL: 2000, LIVE: 2000}


# --------------------------------------------------------------------------- the run registry


class TestRegistry:
    def test_same_id_same_control(self, run_id):
        first = run_control(run_id.first)
        assert run_control(run_id.first) is first
        assert run_control(run_id()) is not first

    def test_first_use_sets_the_mode_later_ones_do_not(self, run_id):
        control = run_control(run_id.first, LIVE)
        assert control.mode == LIVE
        assert run_control(run_id.first, HISTORICAL) is control
        assert control.mode == LIVE
        assert run_control(run_id()).mode == HISTORICAL  # the default

    def test_unknown_mode_on_first_use(self, run_id):
        with pytest.raises(ModeError):
            run_control(run_id.first, "replay")
        assert run_control(run_id.first).mode == HISTORICAL  # nothing half-made was registered

    def test_stop_all_stops_every_registered_run(self, run_id):
        controls = [run_control(run_id.first), run_control(run_id()), run_control(run_id(), LIVE)]
        unregistered = RunControl()
        assert not any(c.stopped() for c in controls)
        stop_all()
        assert all(c.stopped() for c in controls)
        assert not unregistered.stopped()

    def test_forget_run(self, run_id):
        control = run_control(run_id.first)
        control.request(LIVE)
        control.stop()
        forget_run(run_id.first)
        fresh = run_control(run_id.first)
        assert fresh is not control
        assert fresh.mode == HISTORICAL and not fresh.stopped() and fresh.switches == 0
        forget_run(run_id.first)
        forget_run(run_id.first)  # forgetting an unknown run is fine

    def test_stop_all_does_not_reach_forgotten_runs(self, run_id):
        control = run_control(run_id.first)
        forget_run(run_id.first)
        stop_all()
        assert not control.stopped()


# --------------------------------------------------------------------------- PositionStore


class TestPositionStore:
    INPUTS = ["data/a.csv", "data/b.csv"]

    def test_nothing_saved_yet(self, tmp_path):
        assert PositionStore(str(tmp_path / "state"), self.INPUTS).load() == {HISTORICAL: 0, LIVE: None}

    def test_path(self, tmp_path):
        assert PositionStore(str(tmp_path), self.INPUTS).path == str(tmp_path / STATE_FILE)

    @pytest.mark.parametrize("positions", [{HISTORICAL: 0, LIVE: None}, {HISTORICAL: 1234, LIVE: 0},
                                           {HISTORICAL: 7, LIVE: 98765}])
    def test_round_trip(self, tmp_path, positions):
        state_dir = tmp_path / "new" / "dir"  # made on save
        PositionStore(str(state_dir), self.INPUTS).save(positions)
        # A new store (a restarted run) with the same inputs reads them back.
        assert PositionStore(str(state_dir), list(self.INPUTS)).load() == positions

    def test_the_file_names_the_inputs(self, tmp_path):
        PositionStore(str(tmp_path), self.INPUTS).save({HISTORICAL: 5, LIVE: 3})
        state = read_state(tmp_path)
        assert state["inputs"] == self.INPUTS
        assert state["historical_position"] == 5 and state["live_position"] == 3

    @pytest.mark.parametrize("other", [["data/a.csv"], ["data/b.csv", "data/a.csv"], ["data/a.csv", "data/c.csv"]])
    def test_other_inputs_are_refused(self, tmp_path, other):
        PositionStore(str(tmp_path), self.INPUTS).save({HISTORICAL: 5, LIVE: None})
        with pytest.raises(ModeError) as raised:
            PositionStore(str(tmp_path), other).load()
        message = str(raised.value)
        assert "other inputs" in message
        assert str(tmp_path / STATE_FILE) in message
        assert "data/b.csv" in message  # says whose position the file holds

    def test_later_saves_replace_earlier_ones(self, tmp_path):
        store = PositionStore(str(tmp_path), self.INPUTS)
        store.save({HISTORICAL: 1, LIVE: None})
        store.save({HISTORICAL: 2, LIVE: 9})
        assert store.load() == {HISTORICAL: 2, LIVE: 9}
        assert os.listdir(tmp_path) == [STATE_FILE]

    @pytest.mark.parametrize("content", [b"", b"{not json", b'{"inputs": ["data/a.csv"', b"\xff\xfe\x00garbage"])
    def test_a_corrupt_file(self, tmp_path, content):
        (tmp_path / STATE_FILE).write_bytes(content)
        with pytest.raises(ModeError, match="cannot read the saved replay position"):
            PositionStore(str(tmp_path), self.INPUTS).load()

    @pytest.mark.parametrize("content", ["[]", "null", "42", '"text"'])
    def test_a_file_that_is_json_but_not_an_object(self, tmp_path, content):
        (tmp_path / STATE_FILE).write_text(content)
        with pytest.raises(ModeError):
            PositionStore(str(tmp_path), self.INPUTS).load()

    def test_a_state_file_that_cannot_be_read(self, tmp_path):
        (tmp_path / STATE_FILE).mkdir()  # a directory where the file should be
        with pytest.raises(ModeError, match="cannot read"):
            PositionStore(str(tmp_path), self.INPUTS).load()

    @pytest.mark.parametrize("historical, live", [
        (-1, None), ("3", None), (None, None), (1.5, None), (2, "7"), (2, 1.0), (2, [1]),
        (2, -1), (True, None), (2, False),
    ])
    def test_invalid_positions(self, tmp_path, historical, live):
        state = {"inputs": self.INPUTS, "historical_position": historical, "live_position": live}
        (tmp_path / STATE_FILE).write_text(json.dumps(state))
        with pytest.raises(ModeError, match="not valid"):
            PositionStore(str(tmp_path), self.INPUTS).load()

    def test_missing_positions(self, tmp_path):
        (tmp_path / STATE_FILE).write_text(json.dumps({"inputs": self.INPUTS}))
        with pytest.raises(ModeError, match="not valid"):
            PositionStore(str(tmp_path), self.INPUTS).load()

    def test_save_goes_through_a_temporary_file_renamed_over_the_state(self, tmp_path, monkeypatch):
        store = PositionStore(str(tmp_path), self.INPUTS)
        store.save({HISTORICAL: 1, LIVE: None})
        real_replace = os.replace
        seen = []

        def replace(src, dst):
            # At the moment of the rename the new state is complete in another file of the same
            # directory, and the state file still holds the old one.
            seen.append((src, dst))
            with open(src, encoding="utf-8") as stream:
                assert json.load(stream)["historical_position"] == 2
            assert read_state(tmp_path)["historical_position"] == 1
            real_replace(src, dst)

        monkeypatch.setattr(modes.os, "replace", replace)
        store.save({HISTORICAL: 2, LIVE: 4})
        assert len(seen) == 1
        src, dst = seen[0]
        assert dst == store.path
        assert os.path.dirname(src) == str(tmp_path) and src != dst
        assert not os.path.exists(src)
        assert os.listdir(tmp_path) == [STATE_FILE]
        assert store.load() == {HISTORICAL: 2, LIVE: 4}

    def test_a_failed_save_keeps_the_old_state_and_leaves_no_temporary_file(self, tmp_path, monkeypatch):
        store = PositionStore(str(tmp_path), self.INPUTS)
        store.save({HISTORICAL: 10, LIVE: 3})
        before = (tmp_path / STATE_FILE).read_bytes()

        def dump(obj, stream, *args, **kwargs):
            stream.write('{"inputs": ["data/')  # half written, then the disk fills up
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(modes.json, "dump", dump)
        with pytest.raises(OSError, match="No space left"):
            store.save({HISTORICAL: 20, LIVE: 4})
        monkeypatch.undo()
        assert (tmp_path / STATE_FILE).read_bytes() == before
        assert os.listdir(tmp_path) == [STATE_FILE]
        assert store.load() == {HISTORICAL: 10, LIVE: 3}

    def test_a_failed_rename_leaves_no_temporary_file(self, tmp_path, monkeypatch):
        store = PositionStore(str(tmp_path), self.INPUTS)
        store.save({HISTORICAL: 10, LIVE: None})

        def replace(src, dst):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(modes.os, "replace", replace)
        with pytest.raises(PermissionError):
            store.save({HISTORICAL: 20, LIVE: None})
        monkeypatch.undo()
        assert os.listdir(tmp_path) == [STATE_FILE]
        assert store.load() == {HISTORICAL: 10, LIVE: None}

    def test_an_interrupted_save_leaves_no_temporary_file(self, tmp_path, monkeypatch):
        store = PositionStore(str(tmp_path), self.INPUTS)

        def dump(obj, stream, *args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(modes.json, "dump", dump)
        with pytest.raises(KeyboardInterrupt):
            store.save({HISTORICAL: 20, LIVE: None})
        monkeypatch.undo()
        assert os.listdir(tmp_path) == []
        assert store.load() == {HISTORICAL: 0, LIVE: None}


# --------------------------------------------------------------------------- SwitchingFeed


@pytest.fixture
def live_url(live_messages):
    """The live sample served on 127.0.0.1 (ends with an end-of-stream frame).

    Paced, so that little is in flight when a reader leaves: closing a connection behind a
    backlog of unread frames waits for the close timeout (1 s), which only slows the tests.
    """
    with FeedServer(live_messages, FeedConfig(rate=500)) as url:
        yield url


def switching(run_id: str, live_url: str, *, max_rows: int = 50, live_rows: int = 20, rate: float = 0,
              sources=(HISTORY,), **kwargs) -> SwitchingFeed:
    return SwitchingFeed(HistoricalFeed(list(sources), rate=rate, max_rows=max_rows),
                         LiveFeed(live_url, max_rows=live_rows, poll_seconds=0.05), run_id, **kwargs)


def take(iterator, count: int) -> list[FeedBlock]:
    return [next(iterator) for _ in range(count)]


def live_seqs(blocks: list[FeedBlock]) -> list[int]:
    return [row["line"] for row in rows_of(blocks)]


def assert_live_content(blocks, messages, seqs):
    rows = rows_of(blocks)
    assert [row["line"] for row in rows] == list(seqs)
    assert [json.loads(row["raw"]) for row in rows] == expected_live(messages, seqs)
    # The quote fields are the frame's, exactly as written in the CSV.
    assert [row["bid_price"] for row in rows] == [messages[s]["bid_price"] for s in seqs]


@pytest.fixture
def opened(live_url):
    """``opened(feed)``: ``feed.blocks()``, closed after the test (before the live server stops:
    the server waits for its connections to end)."""
    iterators = []

    def open_blocks(feed: SwitchingFeed):
        iterators.append(feed.blocks())
        return iterators[-1]

    yield open_blocks
    for iterator in iterators:
        iterator.close()


class TestSwitchingFeed:
    def test_switching_back_and_forth_neither_repeats_nor_skips(self, run_id, opened, live_url, history_rows,
                                                                live_messages):
        feed = switching(run_id.first, live_url)
        assert feed.sources == (HISTORY, live_url)
        blocks = opened(feed)

        first = take(blocks, 3)  # historical
        control = run_control(run_id.first)
        assert control.mode == HISTORICAL
        history_seen = rows_of(first)
        assert keys(history_seen) == history_rows[: len(history_seen)]
        assert all(b.batch.num_rows <= 50 for b in first)
        assert {r["mode"] for r in history_seen} == {HISTORICAL}

        assert control.request(LIVE)
        live_first = take(blocks, 3)
        seen = live_seqs(live_first)
        assert seen == list(range(len(seen)))  # the live feed from its start
        assert_live_content(live_first, live_messages, range(len(seen)))
        live_rows = rows_of(live_first)
        assert {r["mode"] for r in live_rows} == {LIVE}
        assert all(b.batch.num_rows <= 20 for b in live_first)
        # ``file`` indexes the feed's sources: the live url comes last.
        assert {r["file"] for r in live_rows} == {len(feed.sources) - 1}
        assert feed.sources[live_rows[0]["file"]] == live_url
        # The switch recorded the last historical block.
        assert control.status()["historical_position"] == len(history_seen)

        assert control.request(HISTORICAL)
        back = take(blocks, 2)
        back_rows = rows_of(back)
        assert {r["mode"] for r in back_rows} == {HISTORICAL}
        # History continues exactly at the first record not emitted yet: no repeat, no gap.
        start = len(history_seen)
        assert keys(back_rows) == history_rows[start: start + len(back_rows)]
        assert {r["file"] for r in back_rows} == {0}
        assert feed.sources[0] == HISTORY

        assert control.request(LIVE)
        live_again = take(blocks, 2)
        again = live_seqs(live_again)
        assert again == list(range(len(seen), len(seen) + len(again)))  # the next seq, no frame twice
        assert_live_content(live_again, live_messages, again)

        # The yielded blocks are numbered in order, one position each.
        everything = first + live_first + back + live_again
        assert [(b.start, b.stop) for b in everything] == [(i, i + 1) for i in range(len(everything))]
        assert all(b.sources == feed.sources for b in everything)
        assert all(b.batch.schema == BLOCK_SCHEMA for b in everything)

        next(blocks)  # confirms the last live block (it is recorded once its yield returns)
        status = control.status()
        assert status["switches"] == 3
        assert status["counts"][HISTORICAL] == len(history_seen) + len(back_rows)
        assert status["historical_position"] == len(history_seen) + len(back_rows)
        assert status["counts"][LIVE] >= len(seen) + len(again)

    def test_the_switch_happens_between_blocks(self, run_id, opened, live_url, history_rows):
        feed = switching(run_id.first, live_url, max_rows=50)
        blocks = opened(feed)
        one = next(blocks)
        assert one.batch.num_rows == 50
        run_control(run_id.first).request(LIVE)
        run_control(run_id.first).request(HISTORICAL)  # back before the feed looked: nothing happened
        two = next(blocks)
        assert keys(rows_of([one, two])) == history_rows[:100]

    def test_a_switch_and_back_is_not_the_end_of_history(self, run_id, opened, live_url, history_rows):
        # The operator asks for live, then for historical again. The historical feed notices the
        # first request and leaves; the second lands before SwitchingFeed looks at the mode (a
        # thread interleaving, made deterministic here: the replay closes its file as the
        # historical feed leaves, and that close makes the second request).
        control = run_control(run_id.first)
        armed = []

        class SwitchBackOnClose(io.BufferedReader):
            def close(self):
                if armed:
                    armed.clear()
                    control.request(HISTORICAL)
                super().close()

        feed = SwitchingFeed(
            HistoricalFeed([HISTORY], max_rows=50, open_file=lambda path: SwitchBackOnClose(io.FileIO(path))),
            LiveFeed(live_url, max_rows=20), run_id.first)
        blocks = opened(feed)
        first = take(blocks, 2)
        armed.append(True)
        control.request(LIVE)
        after = next(blocks)
        assert not armed  # the second request was made, while the historical feed was leaving
        assert control.mode == HISTORICAL  # what the operator asked for last
        assert control.status()["history_done"] is False  # 100 of 5,000 records replayed
        done = sum(b.batch.num_rows for b in first)
        assert keys(rows_of([after])) == history_rows[done: done + 50]

    def test_starting_in_live_mode(self, run_id, opened, live_url, live_messages):
        feed = switching(run_id.first, live_url, mode=LIVE)
        blocks = opened(feed)
        got = take(blocks, 2)
        assert_live_content(got, live_messages, range(len(live_seqs(got))))
        assert run_control(run_id.first).mode == LIVE

    def test_positions_are_saved_after_every_block(self, run_id, opened, live_url, tmp_path, history_rows):
        state_dir = tmp_path / "state"
        feed = switching(run_id.first, live_url, state_dir=str(state_dir))
        blocks = opened(feed)
        emitted = []
        for _ in range(4):
            emitted.append(next(blocks).batch.num_rows)
            # A block counts as done once its yield returns (the stages after the source have
            # then processed it): when the consumer holds block k, blocks 1..k-1 are saved.
            done = sum(emitted[:-1])
            if done == 0:
                assert not (state_dir / STATE_FILE).exists()
            else:
                state = read_state(state_dir)
                assert state["inputs"] == [HISTORY]
                assert state["historical_position"] == done
                assert state["live_position"] is None
                assert os.listdir(state_dir) == [STATE_FILE]  # no temporary file left behind
        run_control(run_id.first).request(LIVE)
        live = take(blocks, 2)
        state = read_state(state_dir)
        assert state["historical_position"] == sum(emitted)  # the last historical block, saved on the switch
        next(blocks)
        assert read_state(state_dir)["live_position"] == live_seqs(live)[-1] + 1
        assert os.listdir(state_dir) == [STATE_FILE]

    def test_a_restarted_run_resumes_history_where_it_stood(self, run_id, opened, live_url, tmp_path,
                                                            history_rows):
        state_dir = str(tmp_path / "state")
        feed = switching(run_id.first, live_url, state_dir=state_dir)
        blocks = opened(feed)
        got = take(blocks, 5)
        blocks.close()  # the run is killed while the consumer holds block 5: it was never confirmed
        saved = read_state(state_dir)["historical_position"]
        assert saved == sum(b.batch.num_rows for b in got[:4])

        restarted = switching(run_id(), live_url, state_dir=state_dir)  # a new process: a new control
        again = opened(restarted)
        resumed = take(again, 3)
        rows = rows_of(resumed)
        assert keys(rows) == history_rows[saved: saved + len(rows)]
        # The first unconfirmed block comes again (at least once), nothing before it does.
        assert keys(rows_of(resumed[:1])) == keys(rows_of(got[4:]))

    def test_a_restarted_run_resumes_live_where_it_stood(self, run_id, opened, live_url, tmp_path,
                                                         live_messages):
        state_dir = str(tmp_path / "state")
        feed = switching(run_id.first, live_url, state_dir=state_dir, mode=LIVE)
        blocks = opened(feed)
        got = take(blocks, 4)
        blocks.close()  # killed while holding block 4
        saved = read_state(state_dir)["live_position"]
        assert saved == live_seqs(got[:3])[-1] + 1
        assert read_state(state_dir)["historical_position"] == 0

        restarted = switching(run_id(), live_url, state_dir=state_dir, mode=LIVE)
        again = opened(restarted)
        resumed = take(again, 2)
        seqs = live_seqs(resumed)
        assert seqs == list(range(saved, saved + len(seqs)))
        assert_live_content(resumed, live_messages, seqs)

    def test_a_restart_over_other_inputs_is_refused(self, run_id, opened, live_url, tmp_path):
        state_dir = str(tmp_path / "state")
        blocks = opened(switching(run_id.first, live_url, state_dir=state_dir))
        take(blocks, 3)
        blocks.close()
        before = read_state(state_dir)
        other = switching(run_id(), live_url, state_dir=state_dir, sources=(LIVE_CSV,))
        with pytest.raises(ModeError, match="other inputs"):
            next(opened(other))
        assert read_state(state_dir) == before  # the refused run did not overwrite the state

    def test_history_runs_out_then_live_then_the_end(self, run_id, live_messages, history_rows):
        count = 30
        with FeedServer(live_messages[:count], FeedConfig(rate=0)) as url:
            feed = switching(run_id.first, url, max_rows=1000)
            blocks = feed.blocks()
            try:
                got = list(blocks)
            finally:
                blocks.close()
        control = run_control(run_id.first)
        rows = rows_of(got)
        history = [r for r in rows if r["mode"] == HISTORICAL]
        live = [r for r in rows if r["mode"] == LIVE]
        # All of history, in order, then the whole live feed; the modes do not interleave.
        assert [r["mode"] for r in rows] == [HISTORICAL] * len(history_rows) + [LIVE] * count
        assert keys(history) == history_rows
        assert [r["line"] for r in live] == list(range(count))
        assert [json.loads(r["raw"]) for r in live] == expected_live(live_messages, range(count))
        status = control.status()
        assert status["history_done"] is True
        assert status["mode"] == LIVE
        assert status["switches"] == 1  # the switch it made by itself
        assert status["historical_position"] == len(history_rows)
        assert status["live_position"] == count
        stats = feed.stats()
        assert stats["historical_records"] == len(history_rows)
        assert stats["live_records"] == count
        assert stats["records_in"] == stats["historical_records"] + stats["live_records"] == len(rows)
        assert stats["end_of_stream"] == 1

    def test_stop_before_starting(self, run_id, opened, live_url):
        run_control(run_id.first).stop()
        assert list(opened(switching(run_id.first, live_url))) == []

    def test_stop_between_blocks(self, run_id, opened, live_url):
        blocks = opened(switching(run_id.first, live_url))
        next(blocks)
        run_control(run_id.first).stop()
        with pytest.raises(StopIteration):
            next(blocks)

    def test_stop_ends_a_paced_history_promptly(self, run_id, opened, live_url):
        # 50 rows at 10 rows/s: the second block is due 5 s after the first.
        blocks = opened(switching(run_id.first, live_url, rate=10, max_rows=50))
        next(blocks)
        control = run_control(run_id.first)
        timer = threading.Timer(0.2, control.stop)
        timer.start()
        try:
            started = time.monotonic()
            with pytest.raises(StopIteration):
                next(blocks)
            assert time.monotonic() - started < 2
        finally:
            timer.cancel()

    def test_stop_ends_a_waiting_live_feed_promptly(self, run_id, live_messages):
        # One frame a second: after the first, the reader waits ~1 s for the next one. Stopped
        # meanwhile, it ends without waiting for it (had it waited, it would yield that frame).
        with FeedServer(live_messages[:50], FeedConfig(rate=1)) as url:
            blocks = switching(run_id.first, url, mode=LIVE).blocks()
            got = [next(blocks)]
            control = run_control(run_id.first)
            timer = threading.Timer(0.1, control.stop)
            timer.start()
            try:
                started = time.monotonic()
                with pytest.raises(StopIteration):
                    next(blocks)
                assert time.monotonic() - started < 0.8
            finally:
                timer.cancel()
                control.stop()
                blocks.close()  # the server waits for its connections to end
        assert live_seqs(got) == [0]

    def test_stats_count_only_confirmed_blocks(self, run_id, opened, live_url):
        feed = switching(run_id.first, live_url)
        blocks = opened(feed)
        got = take(blocks, 3)
        stats = feed.stats()
        assert stats["historical_records"] == sum(b.batch.num_rows for b in got[:2])
        assert stats["live_records"] == 0
        assert stats["records_in"] == stats["historical_records"]
