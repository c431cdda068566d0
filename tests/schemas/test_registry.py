"""The schema registry: names and versions from the files, parsed once, stable fingerprints."""

from __future__ import annotations

import json

import fastavro
import pytest

from schemas import SCHEMA_DIR, SchemaError, catalogue, fingerprint, latest_version, load_schema

EMPTY_64 = 0xC15D213AA4D7A795  # the Avro specification's CRC-64-AVRO polynomial


def spec_fingerprint(text: str) -> int:
    """The specification's reference algorithm (Schema Fingerprints), written out independently."""
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY_64 & -(fp & 1))
        table.append(fp)
    fp = EMPTY_64
    for byte in text.encode("utf-8"):
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@pytest.mark.parametrize("name, version", [(n, v) for n, vs in catalogue().items() for v in vs])
def test_fingerprint_is_crc64_avro_of_the_parsing_canonical_form(name, version):
    schema = load_schema(name, version)
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    assert fingerprint(schema) == spec_fingerprint(canonical)
    assert 0 <= fingerprint(schema) < 2**64


def test_fingerprints_ignore_docs_but_not_types():
    base = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]}
    documented = {**base, "doc": "words", "fields": [{"name": "a", "type": "long", "doc": "more words"}]}
    retyped = {**base, "fields": [{"name": "a", "type": "int"}]}
    parse = fastavro.parse_schema
    assert fingerprint(parse(base)) == fingerprint(parse(documented))
    assert fingerprint(parse(base)) != fingerprint(parse(retyped))


def test_every_schema_file_is_in_the_catalogue_and_says_its_version():
    files = sorted(p.name for p in SCHEMA_DIR.glob("*.avsc"))
    listed = sorted(f"{name}.v{v}.avsc" for name, versions in catalogue().items() for v in versions)
    assert files == listed
    for name, versions in catalogue().items():
        for version in versions:
            raw = json.loads((SCHEMA_DIR / f"{name}.v{version}.avsc").read_text())
            assert raw["version"] == version


def test_the_record_types_the_issue_names_exist():
    assert {"quote", "mid_price", "window_stats", "dead_letter", "product"} <= set(catalogue())
    assert latest_version("quote") == 3


def test_unknown_schema_name_is_a_clear_error():
    with pytest.raises(SchemaError, match="no schema named 'nope'"):
        latest_version("nope")


def test_a_schema_is_parsed_once():
    assert load_schema("quote", 2) is load_schema("quote", 2)


def test_versions_of_one_record_share_its_full_name():
    """Resolution matches records by name: a version that renamed its record would not read the last."""
    for name, versions in catalogue().items():
        assert len({load_schema(name, v)["name"] for v in versions}) == 1, name
