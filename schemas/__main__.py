"""``python -m schemas``: list the schemas, and check that a change to one is compatible.

    python -m schemas list
    python -m schemas check OLD.avsc NEW.avsc [--mode BACKWARD|FORWARD|FULL|NONE]

``check`` prints the compatibility level (FULL, BACKWARD, FORWARD or NONE) and the reason for
every violation, and exits 0 when the change is allowed under ``--mode`` (default BACKWARD: the
new schema reads everything written with the old one), 1 when it is not, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from schemas import SchemaError, catalogue, fingerprint, load_file, load_schema, schema_path
from schemas.compat import LEVELS, check

MEANING = {
    "FULL": "old and new schemas read each other's data",
    "BACKWARD": "the new schema reads old data; old readers cannot read new data",
    "FORWARD": "old readers read new data; the new schema cannot read old data",
    "NONE": "neither reads the other's data",
}


def run_check(old_path: str, new_path: str, mode: str, out=None) -> int:
    out = out or sys.stdout
    old, new = load_file(old_path), load_file(new_path)
    result = check(old, new)
    print(f"{result.level}: {MEANING[result.level]}", file=out)
    for label, violations in (("new reading old data (backward)", result.backward),
                              ("old reading new data (forward)", result.forward)):
        for violation in violations:
            print(f"  {label}: {violation}", file=out)
    allowed = result.satisfies(mode)
    print(f"{'compatible' if allowed else 'NOT compatible'} under {mode}", file=out)
    return 0 if allowed else 1


def run_list(out=None) -> int:
    out = out or sys.stdout
    for name, versions in catalogue().items():
        for version in versions:
            schema = load_schema(name, version)
            print(f"{name} v{version}  {fingerprint(schema):016x}  {schema_path(name, version).name}", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every schema, version and CRC-64-AVRO fingerprint")
    checker = commands.add_parser("check", help="compatibility of NEW with OLD")
    checker.add_argument("old")
    checker.add_argument("new")
    checker.add_argument("--mode", default="BACKWARD", type=str.upper, choices=LEVELS,
                         help="what the change must keep (default: BACKWARD)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return run_list()
        return run_check(args.old, args.new, args.mode)
    except SchemaError as exc:
        print(f"schemas: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
