"""The sample generator, and that the bundled samples are what it documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from beam_pipeline.pipeline import bundled_sample
from beam_pipeline.samples import generate, with_malformed
from transforms import quotes


def rows(data: bytes) -> list[list[str]]:
    return [line.split(",") for line in data.decode().splitlines()[1:]]


def test_bundled_samples_are_reproducible_from_the_documented_commands():
    assert Path(bundled_sample()).read_bytes() == with_malformed(generate(5000, 7), 7)
    assert Path(bundled_sample("live_sample.csv")).read_bytes() == generate(2000, 11, live=True)


def test_generated_quotes_are_realistic():
    table = rows(generate(5000, 3))
    stamps = [quotes.parse_timestamp(r[0]) for r in table]
    latency = np.array([int(r[6]) for r in table])
    assert stamps == sorted(stamps)
    assert {r[1] for r in table} == {"EURUSD", "AAPL", "BTCUSD"}
    assert all(quotes.parse_price(r[2], "b", 18, 8) < quotes.parse_price(r[4], "a", 18, 8) for r in table)
    assert np.mean(latency <= 20) > 0.9 and 100 < latency.max() <= 421
    arrivals = [s + lat * 1000 for s, lat in zip(stamps, latency.tolist())]
    assert arrivals != sorted(arrivals)  # arrival order differs from timestamp order


def test_live_sample_has_no_latency():
    assert generate(10, 1, live=True).decode().splitlines()[0] == "timestamp,symbol,bid_price,bid_size,ask_price,ask_size"
