"""Output files: part files merged in ``seq`` order and published under their final name.

No pipeline wiring here (files go through Beam's ``FileSystems``, so any filesystem Beam knows);
:mod:`transforms.sinks.stage` wires these into ``WriteOrderedText`` and ``AppendText``. A part file holds one chunk's lines (sort-keyed when its lines must be merged);
:func:`publish` concatenates (or merges) a file's parts into a staging file and renames it over the
final name, so a reader never sees a half-written output. :func:`balance` is the counts check of
``metrics.json``: records in = the sum of the terms that account for them.
"""

from __future__ import annotations

import heapq
import shutil
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.quotes.tenants import partition_dir

_KEY_WIDTH = 20  # width of the sort key in keyed chunks (see TextChunk)


@dataclass(frozen=True)
class PartFile:
    name: str
    seq: int
    path: str
    lines: int
    tally: tuple[tuple[str, int], ...]
    keyed: bool
    partition: str = ""


def staged_name(partition: str, name: str) -> str:
    """A file's name in the flat staging folder: ``<partition>.<name>``, or ``<name>``."""
    return f"{partition}.{name}" if partition else name


def staging_dir(output_dir: str, run_id: str) -> str:
    return FileSystems.join(output_dir, f".tmp-{run_id}")


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


#: Keyed parts up to this many bytes in all are merged in memory, with one sort (see _merge_in_memory).
IN_MEMORY_MERGE_BYTES = 256 << 20


def merge_keyed(data: bytes) -> bytes:
    """Keyed lines (each ``<20-char key>\t<line>\n``) -> the lines without their keys, in key
    order; lines with equal keys keep their order in ``data``. What ``heapq.merge`` of the parts
    gives, with one stable numpy sort instead of a Python step per line (5x faster at 1M lines)."""
    if not data:
        return b""
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer == 10) + 1  # one past each line's newline
    starts = np.concatenate(([0], ends[:-1]))
    keys = buffer[starts[:, None] + np.arange(_KEY_WIDTH)].view(f"S{_KEY_WIDTH}").ravel()
    order = np.argsort(keys, kind="stable")
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    lines = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    merged = lines.take(pa.array(order))  # one contiguous buffer, lines in key order
    _, new_offsets, values = merged.buffers()
    line_starts = np.frombuffer(new_offsets, dtype=np.int64, count=len(ends) + 1)[:-1]
    out = np.frombuffer(values, dtype=np.uint8)[: len(data)]
    keep = np.ones(len(data), dtype=bool)
    keep[line_starts[:, None] + np.arange(_KEY_WIDTH + 1)] = False  # each key and its tab
    return out[keep].tobytes()


def _copy_in_order(parts: Sequence[PartFile], target) -> None:
    if parts and parts[0].keyed:
        sizes = [m.size_in_bytes for r in FileSystems.match([p.path for p in parts]) for m in r.metadata_list]
        if sum(sizes) <= IN_MEMORY_MERGE_BYTES:
            data = []
            for part in parts:
                with _open(part.path) as source:
                    data.append(source.read())
            target.write(merge_keyed(b"".join(data)))
            return
        streams = [_open(p.path) for p in parts]
        try:
            for line in heapq.merge(*streams, key=lambda line: line[:_KEY_WIDTH]):
                target.write(line[_KEY_WIDTH + 1 :])
        finally:
            for stream in streams:
                stream.close()
        return
    for part in parts:
        with _open(part.path) as source:
            shutil.copyfileobj(source, target, 1 << 20)


def publish(
    output_dir: str, tmp_dir: str, names: Iterable[str], parts: Iterable[PartFile], partitioned: bool = False
) -> dict[str, dict]:
    """Concatenate each output's parts in ``seq`` order, then rename every output into place.

    Returns ``{name: {"lines": n, "tally": {...}}}``; when ``partitioned``, each entry also has
    ``"partitions": {partition: lines}``, and every name is written in every partition of the
    parts (a part without a partition is refused: it would mix partitioned and unpartitioned files).
    """
    names = list(names)
    groups: dict[tuple[str, str], list[PartFile]] = {}
    for part in parts:
        if bool(part.partition) != partitioned:
            raise ValueError(f"part {part.path} has partition {part.partition!r} in a sink with partitioned={partitioned}")
        groups.setdefault((part.partition, part.name), []).append(part)
    partitions = sorted({partition for partition, _ in groups}) if partitioned else [""]
    summary: dict[str, dict] = {name: {"lines": 0, "tally": {}} for name in names}
    staged: list[tuple[str, str]] = []
    for partition in partitions:
        target_dir = partition_dir(output_dir, partition)
        if partition and not FileSystems.exists(target_dir):
            FileSystems.mkdirs(target_dir)
        for name in names:
            group = sorted(groups.get((partition, name), []), key=lambda p: p.seq)
            staging = FileSystems.join(tmp_dir, f"{staged_name(partition, name)}.staging")
            with FileSystems.create(staging, compression_type=CompressionTypes.UNCOMPRESSED) as target:
                _copy_in_order(group, target)
            lines = sum(p.lines for p in group)
            tally = [pair for part in group for pair in part.tally]
            add_counts(summary[name], lines, tally, {partition: lines} if partitioned else {})
            staged.append((staging, FileSystems.join(target_dir, name)))
    for entry in summary.values():
        entry["tally"] = dict(sorted(entry["tally"].items()))
    for staging, final in staged:
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([staging], [final])
    FileSystems.delete([tmp_dir])
    return summary


def balance(counts: Mapping[str, int], outputs: Sequence[str], total: str = "records_in") -> bool:
    """``total`` (``records_in`` unless said) equals the sum of the given output counts."""
    return counts.get(total, 0) == sum(counts.get(name, 0) for name in outputs)


def strip_sort_keys(data: bytes) -> bytes:
    """A keyed chunk's lines without their sort keys (see :class:`TextChunk`)."""
    return b"".join(line[_KEY_WIDTH + 1 :] for line in data.splitlines(keepends=True))


def add_counts(entry: dict, lines: int, tally: Iterable[tuple[str, int]], partitions: Mapping[str, int]) -> None:
    """Add one chunk's line count, tally and per-partition counts to its file's ``entry``."""
    entry["lines"] += lines
    for key, count in tally:
        entry["tally"][key] = entry["tally"].get(key, 0) + count
    for partition, count in partitions.items():
        entry.setdefault("partitions", {})
        entry["partitions"][partition] = entry["partitions"].get(partition, 0) + count
