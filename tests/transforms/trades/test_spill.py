"""Range parts spilled to files (transforms.trades.spill)."""

import os

import pyarrow as pa
import pytest

from transforms.trades import spill

ROWS = pa.RecordBatch.from_pydict({"event_us": [3, 1, 2], "trade_id": ["a", None, "c"]})


def test_a_part_reads_back_as_the_rows_written(tmp_path):
    path = spill.write_part(str(tmp_path), 7, 1, "EURUSD", ROWS)
    back = spill.read_part(path)
    assert back.equals(ROWS) and back.schema == ROWS.schema
    assert os.path.basename(path).startswith("0000000007-1-")


def test_equal_parts_share_a_file_and_any_difference_names_another(tmp_path):
    directory = str(tmp_path)
    first = spill.write_part(directory, 7, 1, "EURUSD", ROWS)
    assert spill.write_part(directory, 7, 1, "EURUSD", ROWS) == first  # a retried bundle rewrites it
    others = {
        spill.write_part(directory, 8, 1, "EURUSD", ROWS),
        spill.write_part(directory, 7, 0, "EURUSD", ROWS),
        spill.write_part(directory, 7, 1, "GBPUSD", ROWS),
        spill.write_part(directory, 7, 1, "EURUSD", ROWS.slice(1)),
    }
    assert len(others) == 4 and first not in others


def test_ensure_folder_creates_it_once(tmp_path):
    directory = str(tmp_path / "staging" / spill.SPILL_FOLDER)
    spill.ensure_folder(directory)
    spill.ensure_folder(directory)
    assert os.path.isdir(directory)


def test_reading_a_missing_part_fails_loudly(tmp_path):
    with pytest.raises(Exception):
        spill.read_part(str(tmp_path / "missing.arrow"))
