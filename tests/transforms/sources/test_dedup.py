"""Deduplicator: the first copy is kept, copies within the horizon are dropped, entries expire."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.sources.dedup import Deduplicator

SECOND = 1_000_000


def marks(dedup: Deduplicator, rows: list[tuple[str, int]]) -> list[bool]:
    keys = [key for key, _ in rows]
    times = np.array([time for _, time in rows], dtype=np.int64)
    return dedup.duplicates(keys, times).tolist()


def naive_duplicates(rows: list[tuple[str, int]], horizon: int) -> list[bool]:
    """The rule written out directly: a copy is dropped if its key was kept less than horizon before."""
    kept: dict[str, int] = {}
    result = []
    for key, time in rows:
        if key in kept and time - kept[key] < horizon:
            result.append(True)
        else:
            kept[key] = time
            result.append(False)
    return result


def test_first_copy_kept_later_copies_within_the_horizon_dropped():
    rows = [("a", 0), ("b", 1), ("a", 2), ("a", SECOND - 1), ("b", 3)]
    assert marks(Deduplicator(SECOND), rows) == [False, False, True, True, True]


def test_an_entry_expires_horizon_after_it_was_kept():
    assert marks(Deduplicator(10), [("a", 0), ("a", 10)]) == [False, False]  # exactly the horizon: expired
    assert marks(Deduplicator(10), [("a", 0), ("a", 9)]) == [False, True]


def test_a_dropped_copy_does_not_extend_the_horizon():
    assert marks(Deduplicator(10), [("a", 0), ("a", 6), ("a", 12), ("a", 19), ("a", 22)]) == [
        False, True, False, True, False]


def test_state_carries_over_between_calls():
    dedup = Deduplicator(100)
    assert marks(dedup, [("x", 0), ("y", 10)]) == [False, False]
    assert marks(dedup, [("x", 50), ("x", 100), ("y", 105)]) == [True, False, True]


@pytest.mark.parametrize("horizon", [0, None])
def test_zero_or_none_disables(horizon):
    dedup = Deduplicator(horizon)
    assert not dedup.enabled
    assert marks(dedup, [("a", 0), ("a", 0), ("a", 1)]) == [False, False, False]
    assert dedup.remembered == 0


def test_negative_horizon_and_misaligned_inputs_are_errors():
    with pytest.raises(ValueError, match="negative"):
        Deduplicator(-1)
    with pytest.raises(ValueError, match="2 keys but 1 times"):
        Deduplicator(5).duplicates(["a", "b"], np.array([0]))


def test_memory_holds_only_keys_within_the_horizon():
    dedup = Deduplicator(1000)
    count, chunk = 50_000, 500
    keys = [f"k{i}" for i in range(count)]
    times = np.arange(count, dtype=np.int64) * 10
    most = 0
    for start in range(0, count, chunk):
        dedup.duplicates(keys[start : start + chunk], times[start : start + chunk])
        most = max(most, dedup.remembered)
    # Expired keys are swept after a call, at most every half horizon: what stays is at most
    # 1.5 horizons' worth plus one call's rows, however long the stream.
    assert most <= 1500 // 10 + chunk + 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_agrees_with_the_rule_written_out_on_random_streams(seed):
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.integers(0, 5, 3000))
    keys = [f"k{k}" for k in rng.integers(0, 40, 3000)]
    rows = list(zip(keys, times.tolist()))
    dedup = Deduplicator(37)
    # Fed in uneven pieces: the answer does not depend on how the stream is cut.
    cuts = [0, 1, 500, 501, 2000, 3000]
    got = []
    for start, stop in zip(cuts, cuts[1:]):
        got += marks(dedup, rows[start:stop])
    assert got == naive_duplicates(rows, 37)
    assert 0 < sum(got) < len(got)
