"""Normalize and mid price: the quote rules (:mod:`~transforms.quotes.rules`, the contract), their
columnar twins (:mod:`~transforms.quotes.columns`), validation and pricing.

Composites in :mod:`transforms.quotes.stage`.
"""
