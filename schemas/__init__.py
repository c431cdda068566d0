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


@lru_cache(maxsize=None)
def load_schema(name: str, version: int = 1) -> dict[str, Any]:
    """Read and parse a schema with fastavro; raises :class:`SchemaError` with the path if it fails."""
    path = schema_path(name, version)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return fastavro.parse_schema(raw)
    except (OSError, ValueError, fastavro.schema.SchemaParseException) as exc:
        raise SchemaError(f"cannot load schema {path}: {exc}") from exc


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
