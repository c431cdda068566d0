"""Analyse: trades read and deduplicated, joined with the prevailing mid, windowed features and scores.

Composites in :mod:`transforms.trades.stage`.
"""
