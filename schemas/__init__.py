"""Avro schemas for the records that flow through the pipeline, and the rules derived from them.

Schemas live beside this module as ``<name>.v<N>.avsc`` files and are parsed with fastavro.
Validating each record with ``fastavro.validation.validate`` costs about 20 µs here, which would be
most of the pipeline's time, so a schema is *compiled* once into :class:`FieldRule` objects: what
type each field has, whether it may be null, and a decimal's precision and scale. The row-level and
the columnar validators in ``transforms`` both enforce those rules; ``tests/schemas`` checks that
every record they accept also passes fastavro's own validation and round-trips through its writer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro

SCHEMA_DIR = Path(__file__).resolve().parent

#: Avro types a field rule can have (after unwrapping a ``["null", T]`` union).
KINDS = ("timestamp_micros", "long", "double", "string", "decimal")


class SchemaError(ValueError):
    """A schema file is missing, unreadable, or uses a type the pipeline does not handle."""


@dataclass(frozen=True)
class FieldRule:
    """What the schema says about one field.

    Attributes:
        name: field name.
        kind: one of :data:`KINDS`.
        nullable: the field's type is a union with ``"null"``.
        precision: total decimal digits (``decimal`` only).
        scale: digits after the point (``decimal`` only).
    """

    name: str
    kind: str
    nullable: bool = False
    precision: int = 0
    scale: int = 0

    @property
    def max_unscaled(self) -> int:
        """Largest magnitude, exclusive, of a decimal's unscaled integer."""
        return 10**self.precision


def schema_path(name: str, version: int) -> Path:
    """The path of ``<name>.v<version>.avsc``."""
    return SCHEMA_DIR / f"{name}.v{version}.avsc"


_FILE_NAME = re.compile(r"^(?P<name>[a-z][a-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")


def catalogue(directory: Path = SCHEMA_DIR) -> dict[str, list[int]]:
    """Every schema name in ``directory`` with its versions, in order (from the file names)."""
    found: dict[str, list[int]] = {}
    for path in directory.glob("*.avsc"):
        match = _FILE_NAME.match(path.name)
        if match:
            found.setdefault(match["name"], []).append(int(match["version"]))
    return {name: sorted(versions) for name, versions in sorted(found.items())}


def latest_version(name: str) -> int:
    """The highest version of schema ``name``; raises :class:`SchemaError` if there is none."""
    versions = catalogue().get(name)
    if not versions:
        raise SchemaError(f"no schema named {name!r} in {SCHEMA_DIR} (have: {', '.join(catalogue()) or 'none'})")
    return versions[-1]


def load_file(path: Path | str) -> dict[str, Any]:
    """Parse any ``.avsc`` file with fastavro; raises :class:`SchemaError` with the path."""
    path = Path(path)
    try:
        return fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, fastavro.schema.SchemaParseException) as exc:
        raise SchemaError(f"cannot load schema {path}: {exc}") from exc


@lru_cache(maxsize=None)
def load_schema(name: str, version: int = 1) -> dict[str, Any]:
    """Schema ``name`` at ``version``, parsed once (cached); raises :class:`SchemaError`.

    The file must say its own version (a top-level ``"version"``) and it must match its name,
    so a copied file that was not bumped is caught.
    """
    path = schema_path(name, version)
    if not path.exists():
        have = ", ".join(map(str, catalogue().get(name, []))) or "none"
        raise SchemaError(f"schema {name!r} has no version {version}: no file {path} (versions: {have})")
    schema = load_file(path)
    declared = json.loads(path.read_text(encoding="utf-8")).get("version")
    if declared != version:
        raise SchemaError(f"{path} declares \"version\": {declared!r}, but its name says {version}")
    return schema


def fingerprint(schema: dict[str, Any]) -> int:
    """The schema's CRC-64-AVRO (Rabin) fingerprint of its Parsing Canonical Form, as an unsigned
    64-bit integer: what Avro's single-object encoding puts after its marker (little-endian)."""
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    # fastavro gives the fingerprint's bytes little-endian, as Java does, in hex.
    return int.from_bytes(bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")), "little")


def _field_rule(field: dict[str, Any]) -> FieldRule:
    avro_type = field["type"]
    nullable = False
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        if len(branches) != 1:
            raise SchemaError(f"field {field['name']!r}: only [\"null\", T] unions are supported")
        nullable = len(branches) != len(avro_type)
        avro_type = branches[0]
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        base = avro_type["type"]
        if logical == "timestamp-micros" and base == "long":
            return FieldRule(field["name"], "timestamp_micros", nullable)
        if logical == "decimal" and base in ("bytes", "fixed"):
            return FieldRule(
                field["name"], "decimal", nullable,
                precision=int(avro_type["precision"]), scale=int(avro_type.get("scale", 0)),
            )
        avro_type = base
    if avro_type in ("long", "int"):
        return FieldRule(field["name"], "long", nullable)
    if avro_type in ("double", "float"):
        return FieldRule(field["name"], "double", nullable)
    if avro_type == "string":
        return FieldRule(field["name"], "string", nullable)
    raise SchemaError(f"field {field['name']!r}: type {avro_type!r} is not supported")


def field_rules(schema: dict[str, Any]) -> dict[str, FieldRule]:
    """Compile a parsed record schema into one :class:`FieldRule` per field, in schema order."""
    return {f["name"]: _field_rule(f) for f in schema["fields"]}
