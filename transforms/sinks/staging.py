"""Output parts: a queue consumer's lines, held per block of stream entries until the block commits.

A consumer of a Redis stream (:class:`transforms.queue.streams.QueueFeed`) must write each entry's lines
exactly once across its group, even when a consumer is killed and another takes its entries
over, and without the replacement ever touching the dead consumer's files (they may be on
another machine). So the lines of one block of entries are never appended to the readable files
before the block is committed:

1. while the stages after the source process a block, the file sink (``_AppendFn``) hands its
   chunks to the folder's :class:`Staging` instead of appending them;
2. the feed writes them as one *part*, ``.parts/<first id>_<last id>.part`` (a temp file, then a
   rename), named by the block's entry-id range;
3. it commits: ``XACK`` of the block's entries and the part's name in the group's registry, in
   one Redis transaction;
4. it *applies* the part: records the readable files' sizes (``.parts/applying.json``), appends
   the part's bytes to them, deletes the part and its registry entry.

A consumer killed before 3 leaves an uncommitted part (its entries are still pending, and
another consumer processes them again, into its own files); killed after 3, a committed part not
applied yet (or half applied). :func:`build` settles a folder from the registry: committed parts
are applied (a half-applied one cut back first), uncommitted ones deleted. A consumer builds its
own folder when it starts, and a recoverer builds a dead consumer's folder when it can reach it;
``python -m beam_pipeline.queue_outputs`` builds a folder by hand (e.g. on the dead consumer's
machine). The readable files then hold every committed block once, and nothing else.

The sink and the feed meet in this process (the queue source runs on the local runners, where
the stages fused after the source process a block before the source's ``yield`` returns): the
feed :func:`open_staging` for its folder, the sink finds it with :func:`staging_for`.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

PARTS = ".parts"
SUFFIX = ".part"
APPLYING = "applying.json"

_open: dict[str, Staging] = {}
_lock = threading.Lock()


@dataclass
class Staging:
    """The chunks of the block in flight for one output folder, in the order they came."""

    directory: str
    in_block: bool = False
    chunks: list[tuple[str, bytes]] = field(default_factory=list)

    def begin(self) -> None:
        self.chunks, self.in_block = [], True

    def add(self, relative_path: str, data: bytes) -> bool:
        """Hold ``data`` for ``relative_path`` if a block is in flight (True); else the caller writes."""
        if not self.in_block:
            return False
        self.chunks.append((relative_path, data))
        return True

    def end(self) -> list[tuple[str, bytes]]:
        chunks, self.chunks, self.in_block = self.chunks, [], False
        return chunks


def _key(directory: str) -> str:
    return os.path.realpath(directory)


def open_staging(directory: str) -> Staging:
    """The :class:`Staging` of ``directory`` (made on first use), for the feed that writes there."""
    with _lock:
        return _open.setdefault(_key(directory), Staging(directory))


def close_staging(directory: str) -> None:
    with _lock:
        _open.pop(_key(directory), None)


def staging_for(directory: str) -> Staging | None:
    """The open :class:`Staging` of ``directory``, if a queue feed writes there."""
    with _lock:
        return _open.get(_key(directory))


# --------------------------------------------------------------------------- parts on disk


def part_name(first_id: str, last_id: str) -> str:
    """``1700000000000-0``, ``1700000000001-5`` -> ``1700000000000-0_1700000000001-5``."""
    return f"{first_id}_{last_id}"


def encode_part(chunks: list[tuple[str, bytes]]) -> bytes:
    """Chunks as one part: per file, a JSON line ``[path, size]`` and then its bytes."""
    merged: dict[str, list[bytes]] = {}
    for path, data in chunks:
        merged.setdefault(path, []).append(data)
    out = []
    for path, pieces in merged.items():
        data = b"".join(pieces)
        out.append(json.dumps([path, len(data)]).encode("utf-8") + b"\n")
        out.append(data)
    return b"".join(out)


def decode_part(blob: bytes) -> list[tuple[str, bytes]]:
    """The inverse of :func:`encode_part`; a torn part (cut short) raises ValueError."""
    files, at = [], 0
    while at < len(blob):
        end = blob.find(b"\n", at)
        if end < 0:
            raise ValueError("part cut short in a header")
        path, size = json.loads(blob[at:end])
        data = blob[end + 1 : end + 1 + size]
        if len(data) != size:
            raise ValueError(f"part cut short in {path!r}")
        files.append((path, data))
        at = end + 1 + size
    return files


def _safe(directory: str, relative: str) -> str:
    path = os.path.normpath(os.path.join(directory, relative))
    if os.path.commonpath([path, os.path.normpath(directory)]) != os.path.normpath(directory):
        raise ValueError(f"part path {relative!r} leaves {directory}")
    return path


def _write_atomically(path: str, data: bytes) -> None:
    temporary = path + ".tmp"
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def write_part(directory: str, name: str, chunks: list[tuple[str, bytes]]) -> str:
    """Write a part (temp file + rename) under ``directory/.parts``; its path."""
    parts = os.path.join(directory, PARTS)
    os.makedirs(parts, exist_ok=True)
    path = os.path.join(parts, name + SUFFIX)
    _write_atomically(path, encode_part(chunks))
    return path


def entry_id_key(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``: stream entry ids in their order."""
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def pending_parts(directory: str) -> list[str]:
    """Names of the parts on disk under ``directory``, oldest entries first."""
    parts = os.path.join(directory, PARTS)
    if not os.path.isdir(parts):
        return []
    names = [name[: -len(SUFFIX)] for name in os.listdir(parts) if name.endswith(SUFFIX)]
    return sorted(names, key=lambda name: entry_id_key(name.split("_", 1)[0]))


def apply_part(directory: str, name: str) -> int:
    """Append part ``name`` to the readable files, once: their sizes are recorded first, so a part
    half applied by a killed consumer is cut back and applied again. Deletes the part; the bytes."""
    parts = os.path.join(directory, PARTS)
    path = os.path.join(parts, name + SUFFIX)
    with open(path, "rb") as part:
        files = decode_part(part.read())
    record = os.path.join(parts, APPLYING)
    sizes: dict[str, int] | None = None
    if os.path.exists(record):
        with open(record, encoding="utf-8") as stream:
            previous = json.load(stream)
        if previous.get("part") == name:
            sizes = previous["sizes"]  # applied in part before: cut back to where it started
    if sizes is None:
        sizes = {rel: _size(_safe(directory, rel)) for rel, _ in files}
        _write_atomically(record, json.dumps({"part": name, "sizes": sizes}).encode("utf-8"))
    written = 0
    for rel, data in files:
        target = _safe(directory, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "ab") as out:
            out.truncate(sizes.get(rel, 0))
            out.write(data)
            out.flush()
        written += len(data)
    os.remove(path)
    return written


def _size(path: str) -> int:
    """A file's size, 0 when it does not exist yet."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def drop_part(directory: str, name: str) -> None:
    """Delete an uncommitted part: another consumer processes its entries."""
    try:
        os.remove(os.path.join(directory, PARTS, name + SUFFIX))
    except FileNotFoundError:
        pass


@dataclass
class Built:
    """What :func:`build` did to a folder."""

    applied: int = 0
    dropped: int = 0
    applied_bytes: int = 0


def build(directory: str, committed: Callable[[str], bool], forget: Callable[[str], None] = lambda name: None) -> Built:
    """Settle ``directory``'s parts: apply those ``committed(name)`` says were committed (in entry
    order), drop the others, and ``forget(name)`` each applied one (its registry entry)."""
    done = Built()
    for name in pending_parts(directory):
        if committed(name):
            done.applied_bytes += apply_part(directory, name)
            done.applied += 1
            forget(name)
        else:
            drop_part(directory, name)
            done.dropped += 1
    for leftover in _temporaries(directory):
        os.remove(leftover)
    return done


def _temporaries(directory: str) -> Iterator[str]:
    parts = os.path.join(directory, PARTS)
    if os.path.isdir(parts):
        for name in os.listdir(parts):
            if name.endswith(".tmp"):
                yield os.path.join(parts, name)
