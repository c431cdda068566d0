"""Run an iterator a few items ahead of its consumer, in a background thread.

The replay's per-block work before ordering (reading, splitting lines, parsing timestamps and
latencies) depends only on the file, so a thread can do the next block while the consumer
orders, normalizes and writes the current one. Arrow's CSV reader and compute kernels release
the GIL, which is what lets the two overlap on two cores.

The consumer sees exactly the items, in the order, and the exception, that iterating directly
would give: an exception raised by the producer is raised by ``next`` at its place in the
sequence. :meth:`ReadAhead.close` stops the thread and waits for it, so that whatever the producer
reads (a file) can be closed after it safely.
"""

from __future__ import annotations

import queue
import threading
from typing import Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")

_END = object()
_POLL_S = 0.05  # how often a blocked producer checks whether the consumer has closed


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


class ReadAhead(Generic[T], Iterator[T]):
    """Iterate over ``items`` with up to ``depth`` of them produced ahead (``depth`` >= 1).

    Use as a context manager, or call :meth:`close`; an iterator left unclosed only leaves a
    daemon thread blocked, holding at most ``depth`` items.
    """

    def __init__(self, items: Iterable[T], depth: int = 1, name: str = "read-ahead"):
        if depth < 1:
            raise ValueError(f"read-ahead depth must be at least 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(iter(items),), name=name, daemon=True)
        self._thread.start()

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Raised(error))
            return
        self._put(_END)

    def _put(self, item) -> bool:
        """Queue ``item``; False if the consumer closed first."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "ReadAhead[T]":
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._finished = True
            raise item.error
        return item

    def close(self) -> None:
        """Stop producing and wait for the thread to end (items not taken are dropped)."""
        self._finished = True
        self._closed.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(_POLL_S)

    def __enter__(self) -> "ReadAhead[T]":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
