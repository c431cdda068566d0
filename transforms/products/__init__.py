"""The products job: paginated, rate-limited HTTP APIs fetched and normalized into one record.

Composites in :mod:`transforms.products.stage`.
"""
