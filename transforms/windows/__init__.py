"""Window: event-time windows, triggers, lateness and per-window statistics.

Composites in :mod:`transforms.windows.stage`; the rules in :mod:`~transforms.windows.logic`, the
output lines in :mod:`~transforms.windows.format`.
"""
