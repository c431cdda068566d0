"""Run the documented batch commands in two checkouts and diff what they write (issue 20).

A restructuring must not change any output. This script runs every documented command that
works offline on the bundled samples (the default job, each window kind, streaming panes,
tenants, Avro output and Avro input, trades with and without the model, the products job with
its mocks, the reference, the sample generator, the Beam YAML example, usage errors) once in a
``git worktree`` of ``--before`` and once in ``--after`` (default: this working tree), with this
interpreter, and compares every file they write:

* byte for byte, except
* ``metrics.json`` and ``summary.json``: as JSON, without the keys that differ between two runs of
  the same code (wall times, paths of the checkout, run ids);
* ``.avro`` files: their schema and records (a container file's sync marker is random);
* ``report.html``/``report.png``: not compared (they embed a rendering), only that both exist.

Usage errors are compared by exit code and stderr. It prints one line a command and exits 1 when
anything differs::

    python scripts/compare_outputs.py --before main~5
    python scripts/compare_outputs.py --before v1 --after v2 --only trades,window_fixed
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "beam_pipeline/data/historical_sample.csv"
TRADES = "beam_pipeline/data/trades_sample.csv"
#: Keys of metrics.json / summary.json that change from one run of the same code to the next.
#: Timings and what follows from them (rates, the largest backlog seen), and the run id.
VOLATILE = re.compile(r"(^|_)seconds$|^rate_|^max_backlog$|^run_id$")
#: What differs between two runs of the same code in any output, and is written as a placeholder
#: before comparing: a run's id in Avro file names, the mock APIs' free ports, wall-clock stamps.
RUN_SPECIFIC = [
    (re.compile(rb"-[0-9a-f]{12}-(\d{6})\.avro"), rb"-<run>-\1.avro"),
    (re.compile(rb"127\.0\.0\.1:\d+"), rb"127.0.0.1:<port>"),
    (re.compile(rb'"processed_at": ?"[^"]*"'), rb'"processed_at":"<now>"'),
]
NOT_COMPARED = {"report.html", "report.png"}


@dataclass
class Case:
    name: str
    argv: list[str]  # after the interpreter; {out} is the case's output folder, {dev} the devtools package
    expect_exit: int = 0
    before: list[list[str]] = field(default_factory=list)  # commands run first, same {out}
    any_order: bool = False  # lines compared as sorted: their order follows the mocks' random ports
    stdout: bool = False  # compare stdout too (a job's own stdout has its timings)


def _quotes(*flags: str) -> list[str]:
    return ["-m", "beam_pipeline", "--runner", "DirectRunner", "--progress", "off", *flags, "--output_dir", "{out}"]


CASES = [
    Case("demo", _quotes()),
    Case("threshold_5", _quotes("--latency_threshold_ms", "5")),
    Case("window_fixed", _quotes("--window", "fixed:1s")),
    Case("window_sliding", _quotes("--window", "sliding:10s,1s")),
    Case("window_session", _quotes("--window", "session:500ms")),
    Case("window_streaming", _quotes("--streaming", "--window", "fixed:100ms", "--allowed_lateness", "50ms")),
    Case("window_accumulating", _quotes("--streaming", "--window", "fixed:1s", "--trigger", "early:100",
                                        "--accumulation", "accumulating")),
    Case("tenants", _quotes("--partition_by_tenant")),
    Case("avro_output", _quotes("--avro_output", "{out}/avro")),
    Case("avro_input", _quotes("--input", "{out}/avro/quotes-*.avro", "--reader_schema_version", "1"),
         before=[_quotes("--avro_output", "{out}/avro")]),
    Case("trades", _quotes("--trades", TRADES)),
    Case("trades_no_model", _quotes("--trades", TRADES, "--model", "none")),
    Case("report", _quotes("--report")),
    Case("products_mock", ["-m", "beam_pipeline", "--job", "products", "--mock", "--deliver_mock",
                           "--output_dir", "{out}"], any_order=True),
    Case("reference", ["-m", "{dev}.reference", "--input", SAMPLE, "--output_dir", "{out}"]),
    Case("reference_window", ["-m", "{dev}.reference", "--input", SAMPLE, "--window", "fixed:1s",
                              "--output_dir", "{out}"], any_order=True),
    Case("samples", ["-m", "{dev}.samples", "{out}/out.csv", "--rows", "100000", "--malformed"]),
    Case("yaml", ["-m", "apache_beam.yaml.main", "--yaml_pipeline_file=examples/quotes.yaml",
                  "--runner=beam_pipeline.yaml_transforms.QuotesRunner",
                  '--jinja_variables={"output_dir": "{out}"}']),
    Case("usage_unknown_flag", _quotes("--no_such_flag", "1"), expect_exit=2),
    Case("usage_bad_window", _quotes("--window", "weekly:1"), expect_exit=2),
    Case("usage_lateness_alone", _quotes("--allowed_lateness", "1s"), expect_exit=2),
    Case("list_plugins", ["-m", "beam_pipeline", "--list_plugins"], stdout=True),
]


def run_case(case: Case, tree: Path, out: Path) -> tuple[int, str, str]:
    """Run ``case`` with ``tree`` first on the path and as the working folder."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    result = None
    # The development tools moved to beam_pipeline.devtools (issue 20): run them where the tree has them.
    dev = "beam_pipeline.devtools" if (tree / "beam_pipeline" / "devtools").is_dir() else "beam_pipeline"
    for argv in [*case.before, case.argv]:
        command = [sys.executable, *(a.replace("{out}", str(out)).replace("{dev}", dev) for a in argv)]
        result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    assert result is not None
    stderr = result.stderr.replace(str(out), "{out}").replace(str(tree), "{tree}")
    stdout = result.stdout.replace(str(out), "{out}").replace(str(tree), "{tree}")
    return result.returncode, stdout, stderr


def _stable(document):
    if isinstance(document, dict):
        return {k: _stable(v) for k, v in document.items() if not VOLATILE.search(k)}
    if isinstance(document, list):
        return [_stable(v) for v in document]
    return document


def _avro(path: Path) -> tuple:
    import fastavro  # pylint: disable=import-outside-toplevel

    with path.open("rb") as stream:
        reader = fastavro.reader(stream)
        return json.dumps(reader.writer_schema, sort_keys=True), [repr(r) for r in reader]


def _normalized(data: bytes, out: Path, tree: Path) -> bytes:
    """An output with the paths of its folder and checkout, and :data:`RUN_SPECIFIC`, as placeholders."""
    for path, placeholder in ((out, b"{out}"), (tree.resolve(), b"{tree}"), (tree, b"{tree}")):
        data = data.replace(str(path).encode(), placeholder)
    for pattern, placeholder in RUN_SPECIFIC:
        data = pattern.sub(placeholder, data)
    return data


def _files(folder: Path) -> dict[str, Path]:
    """Output files by their normalized relative name."""
    return {_normalized(p.relative_to(folder).as_posix().encode(), folder, folder).decode(): p
            for p in folder.rglob("*") if p.is_file()}


def differences(before: Path, after: Path, trees: tuple[Path, Path] = (ROOT, ROOT), any_order: bool = False) -> list[str]:
    """What differs between two output folders (written in ``trees``), one line each."""
    names, other = _files(before), _files(after)
    found = [f"only before: {n}" for n in sorted(names.keys() - other.keys())]
    found += [f"only after: {n}" for n in sorted(other.keys() - names.keys())]
    for name in sorted(names.keys() & other.keys()):
        a, b = names[name], other[name]
        if a.name in NOT_COMPARED:
            continue
        if name.endswith(".avro"):
            same = _avro(a) == _avro(b)
        else:
            texts = _normalized(a.read_bytes(), before, trees[0]), _normalized(b.read_bytes(), after, trees[1])
            if a.name in {"metrics.json", "summary.json"}:
                texts = tuple(json.dumps(_stable(json.loads(t)), indent=1, sort_keys=True).encode() for t in texts)
            if any_order:
                texts = tuple(b"\n".join(sorted(t.splitlines())) for t in texts)
            same = texts[0] == texts[1]
        if not same:
            found.append(f"differs: {name}")
    return found


def checkout(rev: str, workdir: Path) -> Path:
    tree = workdir / f"tree-{rev.replace('/', '_').replace('~', '_')}"
    subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree), rev], cwd=ROOT, check=True,
                   capture_output=True)
    return tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision before the change")
    parser.add_argument("--after", help="git revision after it (default: this working tree)")
    parser.add_argument("--only", help="comma-separated case names")
    parser.add_argument("--workdir", type=Path, help="keep the checkouts and outputs here")
    args = parser.parse_args(argv)
    cases = CASES
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in CASES}
        if unknown:
            parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
        cases = [c for c in CASES if c.name in wanted]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="compare_outputs_"))
    workdir.mkdir(parents=True, exist_ok=True)
    trees = [checkout(args.before, workdir), checkout(args.after, workdir) if args.after else ROOT]
    failed = 0
    try:
        for case in cases:
            runs = [run_case(case, tree, workdir / side / case.name) for side, tree in zip(("before", "after"), trees)]
            problems = []
            for side, (code, _, stderr) in zip(("before", "after"), runs):
                if code != case.expect_exit:
                    problems.append(f"{side} exited {code}, not {case.expect_exit}: {stderr[-300:]}")
            if runs[0][0] != runs[1][0]:
                problems.append(f"exit codes {runs[0][0]} != {runs[1][0]}")
            if case.expect_exit != 0 and runs[0][2] != runs[1][2]:
                problems.append(f"stderr differs: {runs[0][2].strip()!r} != {runs[1][2].strip()!r}")
            if case.stdout and runs[0][1] != runs[1][1]:
                problems.append("stdout differs")
            problems += differences(workdir / "before" / case.name, workdir / "after" / case.name, tuple(trees),
                                    case.any_order)
            files = sum(1 for p in (workdir / "after" / case.name).rglob("*") if p.is_file())
            print(f"{case.name:<22} {'same' if not problems else 'DIFFERENT'} ({files} files)", flush=True)
            for problem in problems:
                print(f"    {problem}")
            failed += bool(problems)
    finally:
        for tree in trees:
            if tree != ROOT:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    print(f"{len(cases) - failed} of {len(cases)} commands write the same outputs (kept in {workdir})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
