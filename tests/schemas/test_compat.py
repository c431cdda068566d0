"""The compatibility checker: each classic change classified, and every claim checked against
fastavro actually resolving data written with one schema and read with the other."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from pathlib import Path

import fastavro
import pytest

from schemas import SchemaError, catalogue, load_schema, schema_path
from schemas.__main__ import main
from schemas.compat import Compatibility, Violation, can_read, check

REPO = Path(__file__).resolve().parents[2]


def record(*fields, name="R", **extra) -> dict:
    return {"type": "record", "name": name, "namespace": "t", "fields": list(fields), **extra}


def field(name, avro_type, **extra) -> dict:
    return {"name": name, "type": avro_type, **extra}


def parsed(schema: dict) -> dict:
    return fastavro.parse_schema(schema)


def resolves(writer: dict, reader: dict, datum: dict) -> bool:
    """Whether fastavro reads ``datum``, written with ``writer``, with ``reader``."""
    buffer = io.BytesIO()
    fastavro.writer(buffer, parsed(writer), [datum])
    buffer.seek(0)
    try:
        list(fastavro.reader(buffer, reader_schema=parsed(reader)))
    except Exception:  # fastavro raises SchemaResolutionError, or a ValueError for enums  # noqa: BLE001
        return False
    return True


ENUM_AB = {"type": "enum", "name": "Side", "symbols": ["BID", "ASK"]}
ENUM_ABX = {"type": "enum", "name": "Side", "symbols": ["BID", "ASK", "MID"]}

# (case, old schema, new schema, a datum valid for old, a datum valid for new, expected level)
CASES = [
    ("add field with default",
     record(field("a", "long")), record(field("a", "long"), field("b", "string", default="x")),
     {"a": 1}, {"a": 1, "b": "y"}, "FULL"),
    ("add field without default",
     record(field("a", "long")), record(field("a", "long"), field("b", "string")),
     {"a": 1}, {"a": 1, "b": "y"}, "FORWARD"),
    ("remove field with default",
     record(field("a", "long"), field("b", "string", default="x")), record(field("a", "long")),
     {"a": 1, "b": "y"}, {"a": 1}, "FULL"),
    ("remove field without default",
     record(field("a", "long"), field("b", "string")), record(field("a", "long")),
     {"a": 1, "b": "y"}, {"a": 1}, "BACKWARD"),
    ("rename via alias, field with a default",
     record(field("a", ["null", "long"], default=None)),
     record(field("b", ["null", "long"], default=None, aliases=["a"])),
     {"a": 1}, {"b": 1}, "FULL"),
    ("rename via alias, field without a default",
     record(field("a", "long")), record(field("b", "long", aliases=["a"])),
     {"a": 1}, {"b": 1}, "BACKWARD"),
    ("int to long",
     record(field("a", "int")), record(field("a", "long")), {"a": 1}, {"a": 1}, "BACKWARD"),
    ("long to int",
     record(field("a", "long")), record(field("a", "int")), {"a": 1}, {"a": 1}, "FORWARD"),
    ("long to double",
     record(field("a", "long")), record(field("a", "double")), {"a": 1}, {"a": 1.5}, "BACKWARD"),
    ("string to bytes and back",
     record(field("a", "string")), record(field("a", "bytes")), {"a": "x"}, {"a": b"x"}, "FULL"),
    ("string to long",
     record(field("a", "string")), record(field("a", "long")), {"a": "x"}, {"a": 1}, "NONE"),
    ("enum symbol added",
     record(field("s", ENUM_AB)), record(field("s", ENUM_ABX)), {"s": "BID"}, {"s": "MID"}, "BACKWARD"),
    ("enum symbol removed",
     record(field("s", ENUM_ABX)), record(field("s", ENUM_AB)), {"s": "MID"}, {"s": "BID"}, "FORWARD"),
    ("enum symbol added, with a default symbol",
     record(field("s", {**ENUM_AB, "default": "BID"})), record(field("s", {**ENUM_ABX, "default": "BID"})),
     {"s": "BID"}, {"s": "MID"}, "FULL"),
    ("union widened",
     record(field("a", ["null", "long"])), record(field("a", ["null", "long", "string"])),
     {"a": 1}, {"a": "x"}, "BACKWARD"),
    ("union narrowed",
     record(field("a", ["null", "long", "string"])), record(field("a", ["null", "long"])),
     {"a": "x"}, {"a": 1}, "FORWARD"),
    ("field made optional",
     record(field("a", "long")), record(field("a", ["null", "long"], default=None)), {"a": 1}, {"a": None},
     "BACKWARD"),
    ("record renamed with an alias",
     record(field("a", "long"), name="Old"), record(field("a", "long"), name="New", aliases=["Old"]),
     {"a": 1}, {"a": 1}, "BACKWARD"),
    ("decimal scale changed",
     record(field("p", {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 8})),
     record(field("p", {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 4})),
     None, None, "NONE"),
    ("fixed size changed",
     record(field("f", {"type": "fixed", "name": "F", "size": 4})),
     record(field("f", {"type": "fixed", "name": "F", "size": 8})),
     {"f": b"abcd"}, {"f": b"abcdefgh"}, "NONE"),
    ("nested record gains a field with default",
     record(field("n", record(field("x", "long"), name="N"))),
     record(field("n", record(field("x", "long"), field("y", "long", default=0), name="N"))),
     {"n": {"x": 1}}, {"n": {"x": 1, "y": 2}}, "FULL"),
    ("array items promoted",
     record(field("xs", {"type": "array", "items": "int"})), record(field("xs", {"type": "array", "items": "long"})),
     {"xs": [1, 2]}, {"xs": [3]}, "BACKWARD"),
]


@pytest.mark.parametrize("case, old, new, old_datum, new_datum, level", CASES, ids=[c[0] for c in CASES])
def test_each_classic_change_is_classified(case, old, new, old_datum, new_datum, level):
    result = check(parsed(old), parsed(new))
    assert result.level == level, [str(v) for v in result.backward + result.forward]


@pytest.mark.parametrize("case, old, new, old_datum, new_datum, level",
                         [c for c in CASES if c[3] is not None], ids=[c[0] for c in CASES if c[3] is not None])
def test_the_checker_agrees_with_fastavro_resolving_real_data(case, old, new, old_datum, new_datum, level):
    """Backward = the new schema reads old data; forward = the old schema reads new data."""
    result = check(parsed(old), parsed(new))
    assert (not result.backward) == resolves(old, new, old_datum)
    assert (not result.forward) == resolves(new, old, new_datum)


def test_violations_say_why():
    reasons = {
        "add field without default": "without a default",
        "remove field without default": "without a default",
        "long to int": "cannot promote",
        "enum symbol removed": "MID",
        "union narrowed": "string",
        "decimal scale changed": "another number",
        "fixed size changed": "size",
    }
    for case, old, new, *_ in CASES:
        if case in reasons:
            result = check(parsed(old), parsed(new))
            texts = [str(v) for v in result.backward + result.forward]
            assert texts and any(reasons[case] in text for text in texts), (case, texts)


def test_a_violation_names_the_field_path():
    old = record(field("n", record(field("x", "long"), name="N")))
    new = record(field("n", record(field("x", "int"), name="N")))
    (violation,) = can_read(parsed(new), parsed(old))
    assert violation.path == "R.n.x"


def test_named_type_references_are_followed():
    side = {"type": "enum", "name": "Side", "symbols": ["BID", "ASK"]}
    old = record(field("a", side), field("b", "t.Side"))
    new = record(field("a", {**side, "symbols": ["BID"]}), field("b", "t.Side"))
    backward = can_read(parsed(new), parsed(old))
    assert {v.path for v in backward} == {"R.a", "R.b"}


def test_satisfies_each_mode():
    full, backward = Compatibility((), ()), Compatibility((), (Violation("R", "x"),))
    assert all(full.satisfies(mode) for mode in ("FULL", "BACKWARD", "FORWARD", "NONE"))
    assert backward.satisfies("backward") and not backward.satisfies("FULL") and not backward.satisfies("FORWARD")
    with pytest.raises(ValueError, match="mode"):
        full.satisfies("SIDEWAYS")


# --------------------------------------------------------------------------- the project's own schemas


def consecutive_versions():
    for name, versions in catalogue().items():
        for old, new in itertools.pairwise(versions):
            yield pytest.param(name, old, new, id=f"{name}-v{old}-v{new}")


@pytest.mark.parametrize("name, old, new", list(consecutive_versions()))
def test_every_schema_change_in_the_repo_is_fully_compatible(name, old, new):
    """The project's rule: producers and consumers upgrade independently, so every new version
    must read the previous one's data and be read by it. An incompatible change fails here."""
    rc = main(["check", str(schema_path(name, old)), str(schema_path(name, new)), "--mode", "FULL"])
    assert rc == 0


def test_there_is_a_change_to_check():
    assert any(len(versions) > 1 for versions in catalogue().values())


def test_quote_v1_data_read_with_v2_gets_defaults_and_the_renamed_field():
    v1, v2 = load_schema("quote", 1), load_schema("quote", 2)
    datum = {"timestamp": 1_700_000_000_000_000, "symbol": "EURUSD", "bid_price": b"\x01", "bid_size": None,
             "ask_price": b"\x02", "ask_size": 5.0, "latency_ms": 12}
    buffer = io.BytesIO()
    fastavro.writer(buffer, v1, [datum])
    buffer.seek(0)
    (read,) = list(fastavro.reader(buffer, reader_schema=v2))
    assert read["arrival_latency_ms"] == 12
    assert read["tenant"] == "default" and read["venue"] is None


# --------------------------------------------------------------------------- the command line


def write(tmp_path: Path, name: str, schema: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(schema))
    return str(path)


def test_cli_exit_codes_follow_the_mode(tmp_path):
    old = write(tmp_path, "old.avsc", record(field("a", "long")))
    new = write(tmp_path, "new.avsc", record(field("a", "long"), field("b", "string")))  # FORWARD only
    run = [sys.executable, "-m", "schemas", "check", old, new]
    backward = subprocess.run([*run, "--mode", "BACKWARD"], cwd=REPO, capture_output=True, text=True)
    forward = subprocess.run([*run, "--mode", "forward"], cwd=REPO, capture_output=True, text=True)
    assert backward.returncode == 1 and forward.returncode == 0
    assert backward.stdout.startswith("FORWARD:")
    assert "R.b" in backward.stdout and "without a default" in backward.stdout
    assert "NOT compatible under BACKWARD" in backward.stdout


def test_cli_bad_schema_file_is_exit_2(tmp_path, capsys):
    broken = tmp_path / "broken.avsc"
    broken.write_text("{not json")
    assert main(["check", str(broken), str(broken)]) == 2
    assert "cannot load schema" in capsys.readouterr().err


def test_cli_list_shows_every_version_with_its_fingerprint(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == sum(len(v) for v in catalogue().values())
    assert any(line.startswith("quote v2 ") for line in lines)


def test_a_file_whose_version_does_not_match_its_name_is_refused(tmp_path, monkeypatch):
    import schemas

    (tmp_path / "thing.v2.avsc").write_text(json.dumps({**record(field("a", "long")), "version": 1}))
    monkeypatch.setattr(schemas, "SCHEMA_DIR", tmp_path)
    schemas.load_schema.cache_clear()
    try:
        with pytest.raises(SchemaError, match="version"):
            schemas.load_schema("thing", 2)
    finally:
        schemas.load_schema.cache_clear()
