"""String hashes and repeats (transforms.arrays)."""

import numpy as np
import pyarrow as pa

from transforms.arrays import repeated, string_hashes

VALUES = pa.array(["T1", "", None, "T2", "T1", "x" * 40, "T1\0", "T10", "x" * 40])


def test_equal_strings_hash_equal_and_a_slice_hashes_as_the_whole():
    hashes = string_hashes(VALUES)
    assert hashes.dtype == np.uint64 and len(hashes) == len(VALUES)
    assert hashes[0] == hashes[4] and hashes[5] == hashes[8]
    assert hashes[1] == hashes[2]  # a null is the empty string
    assert np.array_equal(string_hashes(VALUES.slice(3, 4)), hashes[3:7])


def test_different_strings_of_any_length_hash_apart_here():
    hashes = string_hashes(VALUES)
    distinct = [0, 1, 3, 5, 6, 7]  # T1, "", T2, x*40, "T1\0" (a padding byte that is data), T10
    assert len(set(hashes[distinct].tolist())) == len(distinct)
    many = string_hashes(pa.array([f"T{i:0{9 if i % 3 else 12}d}" for i in range(100_000)]))
    assert len(np.unique(many)) == 100_000


def test_empty_and_all_empty_arrays():
    assert string_hashes(pa.array([], pa.string())).tolist() == []
    assert len(set(string_hashes(pa.array(["", None, ""])).tolist())) == 1


def test_repeated_marks_every_copy_of_a_value_seen_twice():
    assert repeated(np.array([5, 1, 5, 2, 1, 7], dtype=np.uint64)).tolist() == [True, True, True, False, True, False]
    assert repeated(np.array([3], dtype=np.uint64)).tolist() == [False]
    assert repeated(np.array([1, 2], dtype=np.uint64)).tolist() == [False, False]


def test_members_finds_each_value_in_a_sorted_set():
    from transforms.arrays import members

    ordered = np.array([2, 5, 9], dtype=np.int64)
    assert members(np.array([9, 1, 5, 10, 2, 3]), ordered).tolist() == [True, False, True, False, True, False]
    assert members(np.array([1, 2]), np.array([], dtype=np.int64)).tolist() == [False, False]
