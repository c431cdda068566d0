"""Tenant names, tenant columns, dead-letter attribution, and partitioned sinks."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.blocks import TextChunk
from transforms.quotes import columns
from transforms.quotes import rules as quotes
from transforms.quotes.normalize import normalize_batch
from transforms.quotes.rules import DEFAULT_TENANT, HISTORICAL, PriceRule, Rejected
from transforms.quotes.tenants import UNATTRIBUTED, dead_letter_tenants, group_by_partition, split_by_tenant
from transforms.sinks.files import PartFile, publish
from transforms.sinks.stage import AppendText, SummarizeAppends
from transforms.sources.replay import BLOCK_SCHEMA

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestTenantNames:
    @pytest.mark.parametrize("text", [None, "", "   ", "\t"])
    def test_no_tenant_is_the_default_one(self, text):
        assert quotes.parse_tenant(text) == DEFAULT_TENANT

    @pytest.mark.parametrize("text", ["acme", " acme ", "a.b-c_d", "7", "x" * 64, "ACME"])
    def test_names_are_trimmed_and_kept(self, text):
        assert quotes.parse_tenant(text) == text.strip()

    @pytest.mark.parametrize(
        "text", ["../acme", "a/b", "a\\b", ".hidden", "_x", "-x", "x" * 65, "café", "a b", "tenant=a", "a\nb"]
    )
    def test_a_tenant_that_is_not_a_safe_directory_name_is_rejected(self, text):
        with pytest.raises(Rejected) as caught:
            quotes.parse_tenant(text)
        assert caught.value.code == "bad_tenant" and repr(text) in caught.value.reason

    @SETTINGS
    @given(st.lists(st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["acme", " z.1 ", "../x", ""]))))
    def test_the_column_rule_is_the_row_rule(self, texts):
        tenants, rejects = columns.parse_tenants(pa.array(texts, type=pa.string()))
        for index, text in enumerate(texts):
            try:
                expected = quotes.parse_tenant(text)
            except Rejected as rejected:
                assert rejects[index] == rejected.reason
            else:
                assert index not in rejects and tenants[index].as_py() == expected

    def test_a_column_of_nulls_is_all_default(self):
        tenants, rejects = columns.parse_tenants(pa.nulls(3, pa.string()))
        assert tenants.to_pylist() == [DEFAULT_TENANT] * 3 and rejects == {}


def raw_rows(rows: list[dict]) -> pa.RecordBatch:
    """Raw replayed rows (BLOCK_SCHEMA) from dicts of the columns that matter here."""
    count = len(rows)
    arrays = []
    for field in BLOCK_SCHEMA:
        if field.name == "mode":
            arrays.append(pa.array([HISTORICAL] * count))
        else:
            arrays.append(pa.array([row.get(field.name) for row in rows], type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=BLOCK_SCHEMA)


class TestDeadLetterTenants:
    def test_attribution(self):
        rows = raw_rows([
            {"timestamp": "t", "tenant": " acme "},  # its own
            {"timestamp": "t", "tenant": None},  # a file without a tenant column: the default tenant
            {"timestamp": "t", "tenant": ""},
            {"timestamp": "t", "tenant": "../zeta"},  # not a name: nobody's
            {"timestamp": None, "tenant": None, "raw": "a,line,that,did,not,split"},  # unsplit: nobody's
            {"timestamp": None, "tenant": DEFAULT_TENANT},  # unsplit, in a file without a tenant column
        ])
        assert dead_letter_tenants(rows).to_pylist() == [
            "acme", DEFAULT_TENANT, DEFAULT_TENANT, UNATTRIBUTED, UNATTRIBUTED, DEFAULT_TENANT]

    def test_normalize_attributes_each_rejected_row(self):
        base = {"timestamp": "2024-01-01", "event_us": 0, "arrival_us": 0, "latency_us": 0, "symbol": "X",
                "bid_price": "1", "ask_price": "2", "file": 0}
        rows = raw_rows([
            {**base, "line": 2, "tenant": "acme"},
            {**base, "line": 3, "tenant": "acme", "bid_price": "x"},
            {**base, "line": 4, "tenant": "zeta", "bid_price": "3"},
            {**base, "line": 5, "tenant": "a/b"},
            {**base, "line": 6, "tenant": "zeta", "reject": "bad_timestamp: t"},
        ])
        valid, dead = normalize_batch(rows, PriceRule(18, 8))
        assert valid.column("tenant").to_pylist() == ["acme"]
        attributed = dict(zip(dead.column("line").to_pylist(), dead.column("tenant").to_pylist()))
        assert attributed == {3: "acme", 4: "zeta", 5: UNATTRIBUTED, 6: "zeta"}
        assert dict(zip(dead.column("line").to_pylist(), dead.column("reject").to_pylist()))[5].startswith(
            "bad_tenant:")


class TestSplitting:
    def test_split_by_tenant_keeps_order_within_each_tenant(self):
        batch = pa.record_batch({"tenant": ["b", "a", "b", "c", "a"], "n": [0, 1, 2, 3, 4]})
        parts = list(split_by_tenant(batch, partitioned=True))
        assert [(p, rows.column("n").to_pylist()) for p, rows in parts] == [
            ("tenant=a", [1, 4]), ("tenant=b", [0, 2]), ("tenant=c", [3])]
        assert list(split_by_tenant(batch, partitioned=False)) == [("", batch)]

    def test_group_by_partition(self):
        items = [("b", 1), ("a", 2), ("b", 3)]
        assert group_by_partition(items, lambda i: i[0], True) == {"tenant=a": [("a", 2)], "tenant=b": [("b", 1), ("b", 3)]}
        assert group_by_partition(items, lambda i: i[0], False) == {"": items}


def part(tmp_path, name, seq, text, partition):
    path = tmp_path / "tmp" / f"{partition}.{name}.{seq}.part"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return PartFile(name, seq, str(path), text.count("\n"), (("r", text.count("\n")),), False, partition)


class TestPartitionedSinks:
    def test_publish_writes_every_file_in_every_partition_in_seq_order(self, tmp_path):
        parts = [
            part(tmp_path, "a.log", 1, "a1\n", "tenant=x"),
            part(tmp_path, "a.log", 0, "a0\n", "tenant=x"),
            part(tmp_path, "b.log", 0, "b0\nb0'\n", "tenant=y"),
        ]
        summary = publish(str(tmp_path), str(tmp_path / "tmp"), ["a.log", "b.log"], parts, partitioned=True)
        assert (tmp_path / "tenant=x" / "a.log").read_text() == "a0\na1\n"
        assert (tmp_path / "tenant=x" / "b.log").read_text() == ""
        assert (tmp_path / "tenant=y" / "a.log").read_text() == ""
        assert (tmp_path / "tenant=y" / "b.log").read_text() == "b0\nb0'\n"
        assert not (tmp_path / "a.log").exists() and not (tmp_path / "b.log").exists()
        assert summary == {
            "a.log": {"lines": 2, "tally": {"r": 2}, "partitions": {"tenant=x": 2, "tenant=y": 0}},
            "b.log": {"lines": 2, "tally": {"r": 2}, "partitions": {"tenant=x": 0, "tenant=y": 2}},
        }

    def test_publish_refuses_to_mix_partitioned_and_unpartitioned_parts(self, tmp_path):
        with pytest.raises(ValueError, match="partition"):
            publish(str(tmp_path), str(tmp_path / "tmp"), ["a.log"], [part(tmp_path, "a.log", 0, "x\n", "")],
                    partitioned=True)
        with pytest.raises(ValueError, match="partition"):
            publish(str(tmp_path), str(tmp_path / "tmp"), ["a.log"], [part(tmp_path, "a.log", 0, "x\n", "tenant=a")])

    def test_summaries_of_appends_merge_per_partition(self):
        fn = SummarizeAppends(["m.log"])
        one = fn.add_input(fn.create_accumulator(), ("m.log", 2, (("r", 2),), "tenant=a"))
        two = fn.add_input(fn.create_accumulator(), ("m.log", 3, (), "tenant=a"))
        two = fn.add_input(two, ("m.log", 1, (("r", 1),), "tenant=b"))
        merged = fn.extract_output(fn.merge_accumulators([one, two]))
        assert merged == {"m.log": {"lines": 6, "tally": {"r": 3}, "partitions": {"tenant=a": 5, "tenant=b": 1}}}

    def test_append_text_appends_to_each_partitions_file(self, tmp_path):
        chunks = [TextChunk(0, b"a0\n", 1, partition="tenant=a"), TextChunk(1, b"b1\n", 1, partition="tenant=b"),
                  TextChunk(2, b"a2\n", 1, partition="tenant=a")]
        (tmp_path / "tenant=a").mkdir()
        (tmp_path / "tenant=a" / "m.log").write_text("earlier run\n")  # appended to, never replaced
        with beam.Pipeline(runner=FnApiRunner()) as p:
            summary = {"m.log": p | beam.Create(chunks)} | AppendText(str(tmp_path), partitioned=True)
            assert_that(summary, equal_to([{"m.log": {"lines": 3, "tally": {},
                                                      "partitions": {"tenant=a": 2, "tenant=b": 1}}}]))
        assert sorted((tmp_path / "tenant=a" / "m.log").read_text().splitlines()) == ["a0", "a2", "earlier run"]
        assert (tmp_path / "tenant=b" / "m.log").read_text() == "b1\n"
        assert not (tmp_path / "m.log").exists()
