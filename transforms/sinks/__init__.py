"""Deliver: ordered text files, Avro, run metrics, a downstream HTTP API.

Composites in :mod:`transforms.sinks.stage`.
"""
