"""Fetch: historical CSVs in arrival order, live and replayed feeds, webhook pushes, Avro input.

Composites in :mod:`transforms.sources.stage`; every other module here is pure logic.
"""
