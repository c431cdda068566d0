"""A queue between the replay engine and the mid-price processors: Redis Streams with consumer groups.

The Beam sink is :mod:`transforms.queue.stage`; :mod:`~transforms.queue.streams` holds the rest.
"""
