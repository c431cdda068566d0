"""The replay as a pyarrow-only script: what a user fluent in Arrow would write instead of the pipeline.

The baseline of issue 22 at 10,000,000 quotes. It streams one quote CSV sorted by timestamp with
``pyarrow.csv.open_csv`` (Arrow's multithreaded reader), keeps only the rows that may still be
overtaken (arrival, timestamp + latency, at or after the newest timestamp read), sorts what it can
release by arrival and writes ``mid_prices.log`` (``mid = (bid + ask) / 2``, exact, in
``decimal128``) and ``errors.log`` (latency over the threshold) in the pipeline's formats. Like
:mod:`beam_pipeline.devtools.simple_replay` it validates nothing: it expects the sample
generator's clean files (whole-millisecond timestamps and latencies, prices of at most 8
decimals), on which its two files are byte-identical to the pipeline's.

    python -m beam_pipeline.devtools.arrow_replay quotes.csv out/ [--latency_threshold_ms 20]
"""

from __future__ import annotations

import argparse
import os
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

PRICE = pa.decimal128(18, 8)
ORDER = [("arrival", "ascending"), ("line", "ascending")]  # ties in file order, as the pipeline
COLUMNS = {"timestamp": pa.string(), "bid_price": PRICE, "ask_price": PRICE, "latency_ms": pa.int64()}


def _text(value: str) -> pa.Scalar:
    return pa.scalar(value, pa.string())


def _write(rows: pa.Table, threshold_ms: int, mids, errors) -> None:
    late = pc.greater(rows["latency_ms"], pa.scalar(threshold_ms, pa.int64()))
    on_time, over = rows.filter(pc.invert(late)), rows.filter(late)
    if on_time.num_rows:
        total = pc.add(on_time["bid_price"], on_time["ask_price"])  # decimal128(19, 8)
        half = pc.multiply(total, pa.scalar(Decimal("0.5"), pa.decimal128(2, 1)))  # exact: scale 9
        text = pc.utf8_rtrim(pc.utf8_rtrim(pc.cast(half, pa.string()), "0"), ".")
        mids.write(_lines(on_time["timestamp"], _text(", "), text))
    if over.num_rows:
        errors.write(_lines(_text("No mid price at "), over["timestamp"], _text(" as latency "),
                            pc.cast(over["latency_ms"], pa.string()),
                            _text(f"ms is bigger than {threshold_ms}ms")))


def _lines(*parts) -> memoryview:
    """The rows' lines, each ended by a newline: the data buffer of the joined string column."""
    joined = pc.binary_join_element_wise(*parts, _text("\n"), _text(""))
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32, count=len(joined) + 1, offset=joined.offset * 4)
    return memoryview(joined.buffers()[2])[offsets[0]:offsets[-1]]


def replay(input_path: str, output_dir: str, threshold_ms: int = 20) -> None:
    os.makedirs(output_dir, exist_ok=True)
    reader = pacsv.open_csv(
        input_path,
        read_options=pacsv.ReadOptions(block_size=1 << 22),
        convert_options=pacsv.ConvertOptions(column_types=COLUMNS, include_columns=list(COLUMNS)),
    )
    held: pa.Table | None = None
    line = 0
    with (
        open(os.path.join(output_dir, "mid_prices.log"), "wb") as mids,
        open(os.path.join(output_dir, "errors.log"), "wb") as errors,
    ):
        for batch in reader:
            block = pa.Table.from_batches([batch])
            times = pc.cast(pc.cast(block["timestamp"], pa.timestamp("ms")), pa.int64())
            block = block.append_column("arrival", pc.add(times, block["latency_ms"]))
            block = block.append_column("line", pa.array(np.arange(line, line + block.num_rows)))
            line += block.num_rows
            held = block if held is None else pa.concat_tables([held, block])
            newest = pc.max(times)  # later rows arrive at this time or after it
            ready = pc.less_equal(held["arrival"], newest)
            released, held = held.filter(ready), held.filter(pc.invert(ready))
            _write(released.sort_by(ORDER), threshold_ms, mids, errors)
        if held is not None:
            _write(held.sort_by(ORDER), threshold_ms, mids, errors)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("output_dir")
    parser.add_argument("--latency_threshold_ms", type=int, default=20)
    args = parser.parse_args(argv)
    replay(args.input, args.output_dir, args.latency_threshold_ms)


if __name__ == "__main__":
    main()
