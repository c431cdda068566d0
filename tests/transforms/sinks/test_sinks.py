"""Ordered, atomic text outputs and the balanced metrics."""

from __future__ import annotations

import heapq
import io
import json
import random

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from transforms.accounting import Accounting, Check, Output
from transforms.blocks import TextChunk
from transforms.sinks import files as sinks
from transforms.sinks.files import PartFile, balance, publish
from transforms.sinks.stage import MergeCounts, WriteOrderedText, WriteRunMetrics


def part(tmp_path, name, seq, text, keyed=False, tally=()):
    path = tmp_path / "tmp" / f"{name}.{seq}.part"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return PartFile(name, seq, str(path), text.count("\n"), tally, keyed)


def test_publish_concatenates_in_seq_order_and_creates_empty_outputs(tmp_path):
    parts = [part(tmp_path, "a.log", 2, "c\n"), part(tmp_path, "a.log", 0, "a\n"), part(tmp_path, "a.log", 1, "b\n")]
    summary = publish(str(tmp_path), str(tmp_path / "tmp"), ["a.log", "empty.log"], parts)
    assert (tmp_path / "a.log").read_text() == "a\nb\nc\n"
    assert (tmp_path / "empty.log").read_text() == ""
    assert summary == {"a.log": {"lines": 3, "tally": {}}, "empty.log": {"lines": 0, "tally": {}}}
    assert not (tmp_path / "tmp").exists()  # parts and staging files are cleaned up


def test_publish_merges_keyed_parts_by_key_and_drops_the_key(tmp_path):
    k = lambda f, line: f"{f:08d}{line:012d}\t"  # noqa: E731
    parts = [
        part(tmp_path, "d.jsonl", 0, f"{k(0, 5)}five\n{k(1, 2)}other file\n", keyed=True, tally=(("x", 2),)),
        part(tmp_path, "d.jsonl", 1, f"{k(0, 3)}three\n{k(0, 9)}nine\n", keyed=True, tally=(("x", 1), ("y", 1))),
    ]
    summary = publish(str(tmp_path), str(tmp_path / "tmp"), ["d.jsonl"], parts)
    assert (tmp_path / "d.jsonl").read_text() == "three\nfive\nnine\nother file\n"
    assert summary["d.jsonl"] == {"lines": 4, "tally": {"x": 3, "y": 1}}


@pytest.mark.parametrize("in_memory", [True, False], ids=["one-sort", "streaming-heap"])
def test_keyed_merge_in_memory_and_streaming_agree_with_heapq(tmp_path, monkeypatch, in_memory):
    """Both ways of merging keyed parts give heapq.merge's order: by key, then part, then line."""
    monkeypatch.setattr(sinks, "IN_MEMORY_MERGE_BYTES", 1 << 30 if in_memory else 0)
    rng = random.Random(5)
    texts = []
    for seq in range(4):
        keys = sorted(rng.randrange(50) for _ in range(rng.randrange(0, 300)))  # many ties
        texts.append("".join(f"{key:020d}\tpart {seq} line {i} {'x' * rng.randrange(5)}\n" for i, key in enumerate(keys)))
    parts = [part(tmp_path, "m.jsonl", seq, text, keyed=True) for seq, text in enumerate(texts)]
    publish(str(tmp_path), str(tmp_path / "tmp"), ["m.jsonl"], parts)
    streams = [io.StringIO(text) for text in texts]
    expected = "".join(line[21:] for line in heapq.merge(*streams, key=lambda line: line[:20]))
    assert (tmp_path / "m.jsonl").read_text() == expected
    assert sinks.merge_keyed(b"") == b""


def test_publish_replaces_an_old_output(tmp_path):
    (tmp_path / "a.log").write_text("old run\n")
    publish(str(tmp_path), str(tmp_path / "tmp"), ["a.log"], [part(tmp_path, "a.log", 0, "new\n")])
    assert (tmp_path / "a.log").read_text() == "new\n"


def test_failed_run_never_leaves_a_partial_file_under_the_real_name(tmp_path):
    out = tmp_path / "out"

    def explode(chunk):
        if chunk.seq == 1:
            raise RuntimeError("disk on fire")
        return chunk

    chunks = [TextChunk(i, f"line {i}\n".encode(), 1) for i in range(3)]
    try:
        with beam.Pipeline(runner=FnApiRunner()) as p:
            pcoll = p | beam.Create(chunks) | beam.Map(explode)
            _ = {"a.log": pcoll} | WriteOrderedText(str(out), "run1")
    except Exception as exc:  # the pipeline fails, as it should
        assert "disk on fire" in str(exc)
    assert not (out / "a.log").exists()


def test_write_ordered_text_and_metrics_in_a_pipeline(tmp_path):
    out = tmp_path / "out"
    chunks = [TextChunk(seq, f"{seq}\n".encode(), 1) for seq in (3, 1, 2, 0)]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        mids = p | "Mids" >> beam.Create(chunks)
        dead = p | "Dead" >> beam.Create([TextChunk(0, b"", 0)])
        counts = p | "Counts" >> beam.Create([{"records_in": 4, "files": 1}])
        summary = {"m.log": mids, "d.jsonl": dead} | WriteOrderedText(str(out), "run2")
        accounting = Accounting(outputs=(Output("m.log", "mids", "mids", ""), Output("d.jsonl", "dead", "dead", "")),
                                checks=(Check("balanced", ("mids", "dead")),))
        _ = summary | WriteRunMetrics(str(out), counts, accounting, {"extra": 1}, started_at=100.0, clock=lambda: 102.5)
    assert (out / "m.log").read_text() == "0\n1\n2\n3\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {"records_in": 4, "mids": 4, "dead": 0, "balanced": True, "files": 1, "extra": 1,
                       "run_seconds": 2.5, "balance_terms": {"balanced": ["mids", "dead"]}}


def test_metrics_with_two_balances_name_the_one_that_fails(tmp_path, caplog):
    out = tmp_path / "out"
    with beam.Pipeline(runner=FnApiRunner()) as p:
        mids = p | "Mids" >> beam.Create([TextChunk(0, b"a\nb\nc\n", 3)])
        panes = p | "Panes" >> beam.Create([TextChunk(0, b"w\n", 1, (("ON_TIME", 1),))])
        counts = p | "Counts" >> beam.Create([{"records_in": 3, "quotes_in_panes": 2}, {"quotes_in_panes": 0}])
        merged = counts | beam.CombineGlobally(MergeCounts())
        summary = {"m.log": mids, "w.jsonl": panes} | WriteOrderedText(str(out), "run3")
        accounting = Accounting(
            outputs=(Output("m.log", "mids", "mids", ""), Output("w.jsonl", "panes", "panes", "", tally="panes_by_timing")),
            checks=(Check("balanced", ("mids",)), Check("windows_balanced", ("quotes_in_panes",))),
        )
        _ = summary | WriteRunMetrics(str(out), merged, accounting, {})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["panes_by_timing"] == {"ON_TIME": 1}
    assert metrics["quotes_in_panes"] == 2  # the count dicts were added up
    assert metrics["windows_balanced"] is False and metrics["balanced"] is False
    assert "windows_balanced" in caplog.text and "quotes_in_panes 2" in caplog.text


def test_balance():
    assert balance({"records_in": 3, "a": 1, "b": 2}, ["a", "b"])
    assert not balance({"records_in": 4, "a": 1, "b": 2}, ["a", "b"])


def test_metrics_json_is_the_same_whatever_order_the_sources_counts_came_in(tmp_path):
    from transforms.sinks.stage import _MetricsFn

    summary = {"mid_prices.log": {"lines": 3, "tally": {}}}
    counts = {"records_in": 3, "trades_in": 5, "duplicates": 0, "blank_lines": 1, "trades_duplicates": 2}
    texts = []
    for order in (list(counts), list(reversed(counts))):
        path = str(tmp_path / f"metrics-{len(texts)}.json")
        fn = _MetricsFn(path, {"mid_prices.log": "mid_prices"}, {"balanced": ["mid_prices"]}, {}, {}, 0.0, lambda: 1.0)
        list(fn.process(summary, {key: counts[key] for key in order}))
        texts.append(open(path).read())
    assert texts[0] == texts[1]
    assert '"blank_lines": 1,\n  "duplicates": 0,\n  "trades_duplicates": 2,\n  "trades_in": 5' in texts[0]
