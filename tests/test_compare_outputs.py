"""scripts/compare_outputs.py: what it ignores between two runs of the same code, and what it does not."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_outputs", REPO / "scripts" / "compare_outputs.py")
compare = sys.modules["compare_outputs"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def _run(folder: Path, tree: Path, port: int, run: str, seconds: float, mid: str = "1.15") -> Path:
    (folder / "avro").mkdir(parents=True)
    (folder / "mid_prices.log").write_text(f"2024-01-01 00:00:00.000, {mid}\n")
    (folder / "dead_letter.jsonl").write_text(json.dumps({"source": f"{tree}/data/q.csv", "line": 3}) + "\n")
    (folder / "products.jsonl").write_text(f'{{"id":"a","processed_at":"2026-01-0{port % 9}T00:00:00Z"}}\n')
    (folder / "metrics.json").write_text(json.dumps({"records_in": 5, "run_seconds": seconds, "run_id": run,
                                                     "url": f"http://127.0.0.1:{port}/x", "out": str(folder)}))
    (folder / "avro" / f"quotes-{run}-000000.avro").write_bytes(b"")
    return folder


def test_paths_ports_run_ids_and_timings_are_not_differences(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "_avro", lambda path: path.read_bytes())
    before = _run(tmp_path / "b", tmp_path / "tree-b", 4001, "0123456789ab", 1.5)
    after = _run(tmp_path / "a", tmp_path / "tree-a", 5002, "ba9876543210", 2.5)
    assert compare.differences(before, after, (tmp_path / "tree-b", tmp_path / "tree-a")) == []


def test_a_changed_line_a_missing_file_and_a_changed_count_are(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "_avro", lambda path: path.read_bytes())
    before = _run(tmp_path / "b", tmp_path / "t", 4001, "0123456789ab", 1.5)
    after = _run(tmp_path / "a", tmp_path / "t", 4001, "0123456789ab", 1.5, mid="1.25")
    (after / "errors.log").write_text("")
    metrics = json.loads((after / "metrics.json").read_text())
    (after / "metrics.json").write_text(json.dumps({**metrics, "records_in": 6}))
    assert compare.differences(before, after, (tmp_path / "t", tmp_path / "t")) == [
        "only after: errors.log", "differs: metrics.json", "differs: mid_prices.log"]
