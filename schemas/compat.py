"""Schema compatibility by the Avro specification's resolution rules, with a reason per violation.

``can_read(reader, writer)`` lists why data written with ``writer`` cannot be read with
``reader`` (empty: it can). :func:`check` applies it both ways between an old and a new version:

* BACKWARD: the new schema reads data written with the old one (upgrade consumers first);
* FORWARD: the old schema reads data written with the new one (upgrade producers first);
* FULL: both; NONE: neither.

The rules are the specification's "Schema Resolution", as fastavro applies them when reading:

* primitives match, or the writer's promotes to the reader's: int -> long, float, double;
  long -> float, double; float -> double; string <-> bytes;
* records, enums and fixed match by unqualified name or by one of the *reader's* aliases;
* a reader field is found in the writer by name or by the reader field's aliases; if it is
  missing, the reader must give it a default. Writer fields the reader lacks are skipped;
* an enum reader must know every writer symbol, unless it has a ``default`` symbol;
* fixed sizes are equal; decimals keep their precision and scale (a different scale changes
  the value of the same bytes, which Avro itself does not catch);
* a writer union is readable if each of its branches is; a reader union reads a writer type if
  one of its branches does.

Aliases only work from the reader's side: a renamed field (new name, old name as alias) is read
by the new schema from old data, but an old reader does not know the new name, so the rename is
FULL only if the old schema gives the field a default (and old readers then see that default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: writer type -> reader types it promotes to.
PROMOTIONS = {
    "int": ("long", "float", "double"),
    "long": ("float", "double"),
    "float": ("double",),
    "string": ("bytes",),
    "bytes": ("string",),
}
PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
LEVELS = ("FULL", "BACKWARD", "FORWARD", "NONE")


@dataclass(frozen=True)
class Violation:
    """Why one reader cannot read one writer's data, at ``path`` (e.g. ``Quote.bid_price``)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Compatibility:
    """The result of :func:`check`: violations each way and the level they leave."""

    backward: tuple[Violation, ...]
    forward: tuple[Violation, ...]

    @property
    def level(self) -> str:
        if not self.backward and not self.forward:
            return "FULL"
        if not self.backward:
            return "BACKWARD"
        if not self.forward:
            return "FORWARD"
        return "NONE"

    def satisfies(self, mode: str) -> bool:
        """Whether the change is allowed under ``mode`` (BACKWARD, FORWARD, FULL or NONE)."""
        mode = mode.upper()
        if mode not in LEVELS:
            raise ValueError(f"mode must be one of {', '.join(LEVELS)}, got {mode!r}")
        return {
            "FULL": not self.backward and not self.forward,
            "BACKWARD": not self.backward,
            "FORWARD": not self.forward,
            "NONE": True,
        }[mode]


def check(old: dict[str, Any], new: dict[str, Any]) -> Compatibility:
    """Compare two parsed schemas (fastavro ``parse_schema`` output) both ways."""
    return Compatibility(tuple(can_read(new, old)), tuple(can_read(old, new)))


def can_read(reader: dict[str, Any], writer: dict[str, Any]) -> list[Violation]:
    """Why ``reader`` cannot read data written with ``writer`` (parsed schemas); empty if it can."""
    return _Resolver(_named(reader), _named(writer)).read(reader, writer, _short(_type_name(reader)))


def _named(schema) -> dict[str, Any]:
    return schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _type_name(schema) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    return schema.get("name") or schema["type"]


def _describe(schema) -> str:
    if isinstance(schema, list):
        return "[" + ", ".join(_describe(branch) for branch in schema) + "]"
    if isinstance(schema, str):
        return _short(schema)
    if schema.get("logicalType") == "decimal":
        return f"decimal({schema.get('precision')}, {schema.get('scale', 0)})"
    if schema["type"] in ("record", "enum", "fixed"):
        return f"{schema['type']} {_short(schema['name'])}"
    return schema["type"]


class _Resolver:
    def __init__(self, reader_names: dict[str, Any], writer_names: dict[str, Any]):
        self._reader_names = reader_names
        self._writer_names = writer_names
        self._seen: set[tuple[str, str]] = set()  # named pairs being compared (recursive types)

    def _deref(self, schema, names):
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return names[schema]
        if isinstance(schema, dict) and schema.get("type") in PRIMITIVES and len(schema) == 1:
            return schema["type"]
        return schema

    def read(self, reader, writer, path: str) -> list[Violation]:
        reader = self._deref(reader, self._reader_names)
        writer = self._deref(writer, self._writer_names)
        if isinstance(writer, list):
            problems = []
            for branch in writer:
                if self.read(reader, branch, path):
                    problems.append(Violation(path, f"the writer's union branch {_describe(branch)} has no "
                                                    f"matching type in the reader's {_describe(reader)}"))
            return problems
        if isinstance(reader, list):
            if any(not self.read(branch, writer, path) for branch in reader):
                return []
            return [Violation(path, f"the reader's union {_describe(reader)} has no branch that reads "
                                    f"{_describe(writer)}")]
        reader_kind = reader if isinstance(reader, str) else reader["type"]
        writer_kind = writer if isinstance(writer, str) else writer["type"]
        if reader_kind in PRIMITIVES or writer_kind in PRIMITIVES:
            return self._primitive(reader, writer, reader_kind, writer_kind, path)
        if reader_kind != writer_kind:
            return [Violation(path, f"{_describe(writer)} cannot be read as {_describe(reader)}")]
        if reader_kind in ("record", "enum", "fixed"):
            problem = self._names_match(reader, writer, path)
            if problem:
                return [problem]
            key = (reader["name"], writer["name"])
            if key in self._seen:
                return []  # a recursive type, already being compared further up
            self._seen.add(key)
            try:
                return self._named_type(reader_kind, reader, writer, path)
            finally:
                self._seen.discard(key)
        if reader_kind == "array":
            return self.read(reader["items"], writer["items"], f"{path}[]")
        if reader_kind == "map":
            return self.read(reader["values"], writer["values"], f"{path}{{}}")
        return [Violation(path, f"unknown type {reader_kind!r}")]

    def _named_type(self, reader_kind, reader, writer, path) -> list[Violation]:
        if reader_kind == "record":
            return self._record(reader, writer, path)
        if reader_kind == "enum":
            return self._enum(reader, writer, path)
        if reader_kind == "fixed":
            if reader["size"] != writer["size"]:
                return [Violation(path, f"fixed size {writer['size']} cannot be read as size {reader['size']}")]
        return self._decimal(reader, writer, path)

    def _primitive(self, reader, writer, reader_kind, writer_kind, path) -> list[Violation]:
        if reader_kind == writer_kind or reader_kind in PROMOTIONS.get(writer_kind, ()):
            if isinstance(reader, dict) and isinstance(writer, dict):
                return self._decimal(reader, writer, path)
            return []
        if reader_kind in PRIMITIVES and writer_kind in PRIMITIVES:
            return [Violation(path, f"type changed from {_describe(writer)} to {_describe(reader)}, "
                                    "which Avro cannot promote")]
        return [Violation(path, f"{_describe(writer)} cannot be read as {_describe(reader)}")]

    @staticmethod
    def _decimal(reader, writer, path) -> list[Violation]:
        shapes = [(s.get("precision"), s.get("scale", 0)) if s.get("logicalType") == "decimal" else None
                  for s in (reader, writer)]
        if shapes[0] is not None and shapes[1] is not None and shapes[0] != shapes[1]:
            return [Violation(path, f"decimal{shapes[1]} cannot be read as decimal{shapes[0]}: the same bytes "
                                    "would mean another number")]
        return []

    @staticmethod
    def _names_match(reader, writer, path) -> Violation | None:
        accepted = {_short(reader["name"])} | {_short(alias) for alias in reader.get("aliases", ())}
        if _short(writer["name"]) in accepted:
            return None
        return Violation(path, f"{writer['type']} {_short(writer['name'])} does not match the reader's "
                               f"{_short(reader['name'])} (nor its aliases)")

    def _record(self, reader, writer, path) -> list[Violation]:
        written = {field["name"]: field for field in writer["fields"]}
        problems = []
        for field in reader["fields"]:
            names = [field["name"], *field.get("aliases", ())]
            source = next((written[name] for name in names if name in written), None)
            field_path = f"{path}.{field['name']}"
            if source is None:
                if "default" not in field:
                    problems.append(Violation(field_path, "the reader has this field without a default and the "
                                                          "writer does not write it"))
                continue
            problems += self.read(field["type"], source["type"], field_path)
        return problems

    @staticmethod
    def _enum(reader, writer, path) -> list[Violation]:
        unknown = [symbol for symbol in writer["symbols"] if symbol not in reader["symbols"]]
        if unknown and "default" not in reader:
            return [Violation(path, f"the reader does not know the symbol(s) {', '.join(unknown)} and has no "
                                    "default symbol")]
        return []
