"""Arrow columns as NumPy arrays without pyarrow's pandas import.

``pa.Array.to_numpy`` goes through Arrow's pandas conversion, which imports pandas on its first
call (0.2 s and 45 MB here) even for an int64 column. :func:`numpy` reads the buffers of the
columns the quote path uses (booleans, integers, floats, without nulls) directly and falls back to
``to_numpy(zero_copy_only=False)`` for anything else, with the same values and dtype either way.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.types as pat

_FLOATS = {pa.float16(): np.dtype(np.float16), pa.float32(): np.dtype(np.float32), pa.float64(): np.dtype(np.float64)}


def numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``array.to_numpy(zero_copy_only=False)``; read-only unless a copy was needed (booleans)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
    kind = array.type
    if array.null_count or not (pat.is_boolean(kind) or pat.is_integer(kind) or pat.is_floating(kind)):
        return array.to_numpy(zero_copy_only=False)
    length, offset = len(array), array.offset
    data = array.buffers()[1]
    if pat.is_boolean(kind):
        if not length:
            return np.zeros(0, dtype=bool)
        bits = np.frombuffer(data, dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little", count=offset + length)[offset:].view(bool)
    dtype = _FLOATS[kind] if pat.is_floating(kind) else np.dtype(str(kind))  # int8 ... uint64
    if data is None:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=length, offset=offset * np.dtype(dtype).itemsize)


def string_offsets(values: pa.Array) -> np.ndarray:
    """A ``string`` array's offsets (int32, ``len + 1`` of them): value i is ``data[o[i]:o[i + 1]]``
    of its data buffer. A slice's offsets start where the slice does, not at 0."""
    return np.frombuffer(values.buffers()[1], dtype=np.int32, count=len(values) + 1, offset=values.offset * 4)


def string_bytes(values: pa.Array) -> tuple[np.ndarray, bytes]:
    """All of a ``string`` array's values back to back, and where each starts in them (``len + 1``
    int64 offsets from 0): nulls are empty, and a slice holds only its own values' bytes."""
    if len(values) == 0:
        return np.zeros(1, dtype=np.int64), b""
    offsets = string_offsets(values)
    first, last = int(offsets[0]), int(offsets[-1])
    data = values.buffers()[2].to_pybytes()[first:last] if last > first else b""
    return offsets.astype(np.int64) - first, data


_HASH_BASE = np.uint64(0x100000001B3)  # FNV's 64-bit prime, as the polynomial's base


def string_hashes(values: pa.Array) -> np.ndarray:
    """A 64-bit hash (uint64) of each value of a ``string`` array, computed without a Python step
    per value: equal strings hash equal (a slice's values as the whole array's), nulls as the empty
    string. For finding *candidates* for equality cheaply; distinct strings may share a hash, so
    compare the strings themselves where it matters.

    The values of each length are read as rows of 8-byte words (zero-padded) and folded word by
    word (multiply-xor), then mixed by splitmix64's finaliser.
    """
    offsets, data = string_bytes(values)
    lengths = np.diff(offsets)
    hashes = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    octets = np.frombuffer(data, dtype=np.uint8) if data else np.zeros(0, dtype=np.uint8)
    with np.errstate(over="ignore"):  # the arithmetic is modulo 2**64
        for length in np.unique(lengths).tolist():
            if not length:
                continue
            uniform = len(octets) == length * len(lengths)  # every value this long: the bytes are the rows
            rows = np.arange(len(lengths)) if uniform else np.flatnonzero(lengths == length)
            padded = np.zeros((len(rows), -(-length // 8) * 8), dtype=np.uint8)
            padded[:, :length] = (octets.reshape(len(rows), length) if uniform
                                  else octets[offsets[:-1][rows, None] + np.arange(length)])
            words = padded.view(np.uint64)
            folded = hashes[rows]
            for column in range(words.shape[1]):
                folded = (folded ^ words[:, column]) * _HASH_BASE
                folded ^= folded >> np.uint64(29)
            hashes[rows] = folded
        hashes ^= hashes >> np.uint64(30)
        hashes *= np.uint64(0xBF58476D1CE4E5B9)
        hashes ^= hashes >> np.uint64(27)
        hashes *= np.uint64(0x94D049BB133111EB)
        hashes ^= hashes >> np.uint64(31)
    return hashes


def members(values: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """A mask over ``values``: True where the value is in ``ordered`` (sorted ascending). A binary
    search per value: unlike ``np.isin``, nothing is sorted again for each call."""
    if not len(ordered):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return ordered[at] == values


def repeated(hashes: np.ndarray) -> np.ndarray:
    """A mask over ``hashes``: True where the value occurs more than once."""
    if len(hashes) < 2:
        return np.zeros(len(hashes), dtype=bool)
    ordered = np.sort(hashes)
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    return members(hashes, np.unique(twice)) if len(twice) else np.zeros(len(hashes), dtype=bool)
