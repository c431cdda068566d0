"""The QuoteBlock coder: Arrow IPC, registered for the type, size estimate without pickling."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from transforms.blocks import QuoteBlock, QuoteBlockCoder


def block():
    batch = pa.RecordBatch.from_pydict({"line": pa.array([2, 3], pa.int64()), "raw": ["a,b", None]})
    return QuoteBlock(41, batch, ("x.csv", "y.csv"))


def test_round_trip():
    coder = QuoteBlockCoder()
    decoded = coder.decode(coder.encode(block()))
    assert decoded.seq == 41 and decoded.sources == ("x.csv", "y.csv")
    assert decoded.batch.equals(block().batch)


def test_registered_for_the_type():
    assert isinstance(beam.coders.registry.get_coder(QuoteBlock), QuoteBlockCoder)


def test_size_estimate_is_the_batch_size():
    assert QuoteBlockCoder().estimate_size(block()) == block().batch.nbytes
