"""Drop records delivered more than once within a time horizon (no Beam here).

A feed may deliver the same record twice: a retried upload, two overlapping exports, the same file
passed twice. :class:`Deduplicator` sees records in arrival order, one key and one time each, and
says which ones are copies of a record it kept shortly before:

* the first copy of a key is kept, and remembered for ``horizon_us`` from the time it was kept;
* a later copy within that horizon (``time - kept < horizon_us``) is a duplicate: it is dropped,
  and does not extend the horizon (an entry expires ``horizon_us`` after it was *kept*);
* after the horizon the key is forgotten, so the next copy is kept again (a legitimate repeat
  much later, e.g. the same quote line a day apart, is not lost).

Memory holds only the keys kept within the last one and a half horizons: expired keys are swept
out together, at most twice per horizon (one dict comprehension), not one at a time.

A batch whose keys are all new (none repeated in it, none remembered: the usual case) is checked
and remembered with set and dict operations that run in C; only a batch with candidates for
duplicates is walked row by row, in order. About 0.1 s per million rows, against 0.5 s for a
row-by-row walk of everything.
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Sequence

import numpy as np


class Deduplicator:
    """Which records are copies of one kept within ``horizon_us`` before (see the module docstring).

    Args:
        horizon_us: how long, in microseconds, a kept key makes its copies duplicates; 0 or None
            disables deduplication (nothing is a duplicate, nothing is remembered).
    """

    def __init__(self, horizon_us: int | None):
        if horizon_us is not None and horizon_us < 0:
            raise ValueError(f"the deduplication horizon must not be negative, got {horizon_us}")
        self.horizon_us = horizon_us or 0
        self._kept: dict[Hashable, int] = {}  # key -> time it was kept
        self._next_sweep: int | None = None  # when to drop the expired keys

    @property
    def enabled(self) -> bool:
        return self.horizon_us > 0

    @property
    def remembered(self) -> int:
        """How many keys are remembered now (at most those kept within 1.5 horizons of the latest time)."""
        return len(self._kept)

    def duplicates(self, keys: Sequence[Hashable], times_us: np.ndarray) -> np.ndarray:
        """A boolean mask over ``keys``: True where the row is a copy of a key kept within the horizon.

        Rows are taken in the order given, which must be arrival order (times not decreasing, also
        across calls); state carries over from one call to the next.
        """
        if len(keys) != len(times_us):
            raise ValueError(f"{len(keys)} keys but {len(times_us)} times")
        mask = np.zeros(len(keys), dtype=bool)
        if not self.enabled or not len(keys):
            return mask
        keys = list(keys)
        times = np.asarray(times_us, dtype=np.int64).tolist()
        kept = self._kept
        unique = set(keys)
        candidates = kept.keys() & unique
        if len(unique) < len(keys):
            candidates |= {key for key, count in Counter(keys).items() if count > 1}
        if not candidates:
            kept.update(zip(keys, times))
        else:
            horizon = self.horizon_us
            for index, (key, time) in enumerate(zip(keys, times)):
                if key in candidates:
                    previous = kept.get(key)
                    if previous is not None and time - previous < horizon:
                        mask[index] = True
                        continue
                kept[key] = time
        self._sweep(times[-1])
        return mask

    def _sweep(self, now: int) -> None:
        """Forget the keys kept a horizon or more before ``now`` (no later row can be their copy)."""
        if self._next_sweep is None:
            self._next_sweep = now + self.horizon_us
        if now < self._next_sweep:
            return
        horizon = self.horizon_us
        self._kept = {key: time for key, time in self._kept.items() if now - time < horizon}
        self._next_sweep = now + max(horizon // 2, 1)
