"""Normalizer plugins (entry point group ``beam_pipeline.normalizers``): discovery, the start-up
check, ``--list_plugins``, and the example package ``examples/normalizer_plugin`` end to end.

Tests marked ``needs_pip`` install packages with pip into temporary folders (``--target``, offline,
the venv untouched) and run ``python -m beam_pipeline`` with ``PYTHONPATH`` pointing there: they
are the slow ones (seconds each). pip installs a wheel that :func:`build_wheel` makes from the
package's ``pyproject.toml``: building one with setuptools offline (``--no-build-isolation``)
needs the ``wheel`` package, which this venv does not have (setuptools 65). The other tests put a
package with a ``.dist-info`` folder on ``sys.path`` in-process, which discovery sees the same way.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from beam_pipeline import cli, plugins
from beam_pipeline.config import bundled_sample
from beam_pipeline.plugins import GROUP, PluginError, PluginFormats
from tests.conftest import assert_one_line_usage_error
from transforms.sources.avro_input import InputOpener

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "normalizer_plugin"
EXAMPLE_LABEL = "jsonl (bp_jsonl_quotes:normalizer, from beam-pipeline-jsonl-quotes 0.1.0)"
needs_pip = pytest.mark.needs_pip


# --------------------------------------------------------------------------- packages and runs


def build_wheel(project: Path, out: Path) -> Path:
    """A pure-Python wheel of ``project``: the ``[project]`` name, version and entry points and
    the ``[tool.setuptools] packages`` of its ``pyproject.toml``."""
    config = tomllib.loads((project / "pyproject.toml").read_text())
    name, version = config["project"]["name"], config["project"]["version"]
    dist = re.sub(r"[-_.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    files = {
        path.relative_to(project).as_posix(): path.read_bytes()
        for package in config["tool"]["setuptools"]["packages"]
        for path in sorted((project / package).rglob("*.py"))
    }
    entry_points = config["project"].get("entry-points", {})
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: tests.beam_pipeline.test_plugins\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    files[f"{info}/entry_points.txt"] = "".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in points.items()) + "\n"
        for group, points in entry_points.items()
    ).encode()
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def pip_install(project: Path, target: Path) -> Path:
    """``pip install --no-deps --target TARGET`` of ``project``'s wheel, offline; returns TARGET."""
    wheel = build_wheel(project, target.parent / f"{target.name}-wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-input",
         "--disable-pip-version-check", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(target.glob("*.dist-info/entry_points.txt")), list(target.iterdir())
    return target


def run_cli(*args: str, path: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """``python -m beam_pipeline ARGS`` with ``path`` ahead on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, path), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "beam_pipeline", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


def write_package(root: Path, name: str, module: str, source: str, entry_point: str = "broken") -> Path:
    """A one-module project under ``root`` whose entry point ``entry_point`` loads ``module:normalizer``."""
    project = root / name
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(textwrap.dedent(source))
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [project]
        name = "{name}"
        version = "0.2.0"
        [project.entry-points."{GROUP}"]
        {entry_point} = "{module}:normalizer"
        [tool.setuptools]
        packages = ["{module}"]
        """))
    return project


def sample_as_jsonl() -> tuple[str, list[int]]:
    """The bundled sample's rows as JSON lines (the example's format); a row without the header's
    field count cannot be an object, so it stays as it is (invalid JSON). Also returns those rows'
    CSV line numbers."""
    lines, malformed = [], []
    with open(bundled_sample(), newline="") as stream:
        rows = csv.reader(stream)
        header = next(rows)
        for number, row in enumerate(rows, start=2):
            if len(row) != len(header):
                lines.append(",".join(row))
                malformed.append(number)
                continue
            values = dict(zip(header, row))

            def value(column: str, number_type=False):
                text = values[column]
                if not text:
                    return None
                return int(text) if number_type and text.isdigit() else text

            lines.append(json.dumps({
                "ts": value("timestamp"), "sym": value("symbol"), "bid": value("bid_price"),
                "ask": value("ask_price"), "bid_size": value("bid_size", True),
                "ask_size": value("ask_size", True), "latency_ms": value("latency_ms", True),
            }))
    return "\n".join(lines) + "\n", malformed


def outputs(out: Path) -> dict:
    files = {name: (out / name).read_text() for name in ("mid_prices.log", "errors.log")}
    files["dead_letters"] = [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]
    files["metrics"] = json.loads((out / "metrics.json").read_text())
    return files


# --------------------------------------------------------------------------- with pip, end to end


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory) -> Path:
    """The example package, pip-installed into a folder of its own."""
    return pip_install(EXAMPLE, tmp_path_factory.mktemp("example") / "site")


@needs_pip
def test_list_plugins_shows_the_installed_example(example_installed):
    done = run_cli("--list_plugins", path=(example_installed,))
    assert done.returncode == 0, done.stderr
    assert "jsonl-quotes: .jsonl files, from beam-pipeline-jsonl-quotes 0.1.0" in done.stdout
    assert "entry point jsonl = bp_jsonl_quotes:normalizer" in done.stdout
    assert "no normalizer plugins" not in done.stdout


@needs_pip
def test_jsonl_replays_like_the_same_csv_and_bad_lines_are_dead_lettered(example_installed, tmp_path):
    text, malformed = sample_as_jsonl()
    broken_json = '{"ts": "2024-06-03 07:02:00.000", "sym": "AAPL", "bid": "194.50",'
    jsonl = tmp_path / "quotes.jsonl"
    jsonl.write_text(text + broken_json + "\n")
    done = run_cli("--input", str(jsonl), "--output_dir", str(tmp_path / "jsonl"), "--progress", "off",
                   path=(example_installed,))
    assert done.returncode == 0, done.stderr
    assert cli.main(["--output_dir", str(tmp_path / "csv"), "--progress", "off"]) == 0  # the sample, as CSV
    from_jsonl, from_csv = outputs(tmp_path / "jsonl"), outputs(tmp_path / "csv")

    assert from_jsonl["mid_prices.log"] == from_csv["mid_prices.log"]
    assert from_jsonl["errors.log"] == from_csv["errors.log"]
    assert from_jsonl["metrics"]["records_in"] == from_csv["metrics"]["records_in"] + 1
    assert from_jsonl["metrics"]["balanced"]
    # Every dead letter of the CSV is one of the JSON file too, on the same line (the plugin's CSV
    # header is line 1, as the CSV's), for the same reason, unless it was no JSON object.
    by_line = {letter["line"]: letter for letter in from_jsonl["dead_letters"]}
    assert malformed and sorted(by_line) == sorted([letter["line"] for letter in from_csv["dead_letters"]]
                                                   + [len(text.splitlines()) + 2])
    for letter in from_csv["dead_letters"]:
        got = by_line[letter["line"]]
        assert got["source"] == str(jsonl)
        if letter["line"] in malformed:
            assert got["reason"].startswith("bad_timestamp: ") and "invalid JSON (" in got["reason"], got
        else:
            assert got["reason"] == letter["reason"]
    last = by_line[len(text.splitlines()) + 2]
    assert last["reason"].startswith("bad_timestamp: timestamp "), last
    assert "invalid JSON (Expecting property name enclosed in double quotes" in last["reason"], last
    assert "194.50" in last["raw"]  # the line itself is kept


BROKEN = {
    "import-error": ("bp_broken_import", "import no_such_module_for_plugins\nnormalizer = None\n",
                     ["cannot be loaded", "ModuleNotFoundError", "no_such_module_for_plugins"]),
    "bad-signature": ("bp_broken_signature", """\
        class Normalizer:
            name = "broken"
            suffixes = (".broken",)

            def to_csv(self, stream):
                yield b""

        normalizer = Normalizer()
        """, ["to_csv must take exactly two positional parameters", "to_csv(stream)"]),
}


@needs_pip
@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_plugin_stops_the_run_with_one_line_naming_it(kind, example_installed, tmp_path):
    module, source, expected = BROKEN[kind]
    name = f"beam-pipeline-{kind}"
    site = pip_install(write_package(tmp_path, name, module, source), tmp_path / "site")
    out = tmp_path / "out"
    done = run_cli("--output_dir", str(out), path=(site, example_installed))  # the bundled CSV sample
    line = assert_one_line_usage_error(done.returncode, done.stderr)
    assert f"normalizer plugin broken ({module}:normalizer, from {name} 0.2.0): " in line
    for words in expected:
        assert words in line
    assert "jsonl" not in line  # the good plugin is not blamed
    assert not out.exists()  # checked before the output folder is made
    listed = run_cli("--list_plugins", path=(site, example_installed))
    assert listed.returncode == 0, listed.stderr
    assert "jsonl-quotes: .jsonl files" in listed.stdout
    assert f"BROKEN: normalizer plugin broken ({module}:normalizer, from {name} 0.2.0)" in listed.stdout


def test_without_plugins_none_are_listed_and_jsonl_is_a_clear_error(tmp_path):
    installed = [ep.name for ep in metadata.entry_points(group=GROUP)]
    if installed:
        pytest.skip(f"this Python has normalizer plugins installed ({', '.join(installed)})")
    listed = run_cli("--list_plugins")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == f"no normalizer plugins installed (entry point group {GROUP})"
    jsonl = tmp_path / "quotes.jsonl"
    jsonl.write_text(sample_as_jsonl()[0])
    done = run_cli("--input", str(jsonl), "--output_dir", str(tmp_path / "out"))
    line = assert_one_line_usage_error(done.returncode, done.stderr)
    assert line.startswith(f"beam_pipeline: error: {jsonl}: header lacks")
    assert line.endswith("(no installed normalizer plugin reads .jsonl files; see --list_plugins)")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- in-process, no pip


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """``install(dist, {entry point: "module:attr"}, {module: source})``: a distribution on
    sys.path (a module and a ``.dist-info`` folder), seen by discovery from then on."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def install(dist: str, entry_points: dict[str, str], sources: dict[str, str]) -> None:
        for module, source in sources.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            modules.append(module)
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            f"[{GROUP}]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items()))
        plugins.forget()

    plugins.forget()
    yield install
    for module in modules:
        sys.modules.pop(module, None)
    plugins.forget()


UPPER_CSV = """\
    name = "upper"
    suffixes = (".upq",)
    HEADER = b"timestamp,symbol,bid_price,ask_price,latency_ms\\n"

    def to_csv(stream, source):
        yield HEADER
        for line in iter(stream.readline, b""):
            if line.startswith(b"boom"):
                raise ValueError("cannot read this line")
            yield line.upper()
    """


def test_a_module_is_a_normalizer_and_files_are_opened_through_it(fake_plugins, tmp_path):
    fake_plugins("upq-quotes", {"upq": "upq_module"}, {"upq_module": UPPER_CSV})
    assert set(plugins.discover()) == {".upq"}
    assert "upper: .upq files, from upq-quotes 1.0 (entry point upq = upq_module)" in plugins.list_plugins()
    opener = pickle.loads(pickle.dumps(InputOpener(2, PluginFormats.installed())))  # what a worker gets: names, re-resolved there
    assert opener.formats == PluginFormats({".upq": "upq"})
    data = tmp_path / "quotes.upq"
    data.write_bytes(b"2024-01-01 00:00:00.200,eurusd,200,201,1\n")
    with opener(str(data)) as stream:
        assert stream.read() == b"timestamp,symbol,bid_price,ask_price,latency_ms\n2024-01-01 00:00:00.200,EURUSD,200,201,1\n"
    gz = tmp_path / "quotes.upq.gz"
    gz.write_bytes(gzip.compress(data.read_bytes()))  # decompressed by Beam, then read by the plugin
    with opener(str(gz)) as stream:
        assert stream.read().endswith(b"EURUSD,200,201,1\n")


def test_a_plugin_failing_mid_file_fails_the_run_naming_it_and_the_file(fake_plugins, tmp_path, capsys):
    fake_plugins("upq-quotes", {"upq": "upq_module"}, {"upq_module": UPPER_CSV})
    data = tmp_path / "quotes.upq"
    data.write_text("2024-01-01 00:00:00.200,eurusd,200,201,1\n" * 3 + "boom\n")
    assert cli.main(["--input", str(data), "--output_dir", str(tmp_path / "out"), "--progress", "off"]) == 1
    err = capsys.readouterr().err
    assert any(line.startswith("beam_pipeline: run failed:") for line in err.splitlines())
    # On the FnApiRunner our line carries the plugin's error; a PortableRunner's job service reports
    # only "Error running pipeline" there and logs the worker's error (with the same text) on stderr.
    assert (f"normalizer plugin upq (upq_module, from upq-quotes 1.0) failed on {data}: "
            "ValueError: cannot read this line") in err


def test_a_plugin_failing_on_the_first_chunk_is_a_usage_error(fake_plugins, tmp_path, capsys):
    fake_plugins("upq-quotes", {"upq": "upq_module"}, {"upq_module": UPPER_CSV.replace("yield HEADER", "1 / 0")})
    data = tmp_path / "quotes.upq"
    data.write_text("2024-01-01 00:00:00.200,eurusd,200,201,1\n")
    rc = cli.main(["--input", str(data), "--output_dir", str(tmp_path / "out")])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert f"normalizer plugin upq (upq_module, from upq-quotes 1.0) failed on {data}: ZeroDivisionError" in line
    assert not (tmp_path / "out").exists()


def test_a_bad_header_from_a_plugin_names_the_plugin(fake_plugins, tmp_path, capsys):
    fake_plugins("upq-quotes", {"upq": "upq_module"},
                 {"upq_module": UPPER_CSV.replace('b"timestamp,symbol', 'b"when,symbol')})
    data = tmp_path / "quotes.upq"
    data.write_text("2024-01-01 00:00:00.200,eurusd,200,201,1\n")
    rc = cli.main(["--input", str(data), "--output_dir", str(tmp_path / "out")])
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert "header lacks timestamp" in line
    assert line.endswith("(as converted by normalizer plugin upq (upq_module, from upq-quotes 1.0))")


@pytest.mark.parametrize("source, expected", [
    pytest.param('name = "x"\nsuffixes = ".x"\ndef to_csv(stream, source): yield b""\n',
                 "suffixes must be a non-empty tuple of strings like ('.jsonl',), got '.x'", id="suffix-string"),
    pytest.param('name = "x"\nsuffixes = ("x", ".a b")\ndef to_csv(stream, source): yield b""\n',
                 "suffixes must look like '.jsonl'", id="suffix-no-dot"),
    pytest.param('name = "x"\nsuffixes = (".csv", ".tsv.gz")\ndef to_csv(stream, source): yield b""\n',
                 "suffix .csv, .tsv.gz is read by the pipeline itself", id="owned-suffix"),
    pytest.param('name = "x"\nsuffixes = (".x",)\n', "has no to_csv", id="missing-attribute"),
    pytest.param('name = ""\nsuffixes = (".x",)\ndef to_csv(stream, source): yield b""\n',
                 "name must be a non-empty string", id="empty-name"),
    pytest.param('name = "x"\nsuffixes = (".x",)\ndef to_csv(stream, source, extra): yield b""\n',
                 "has to_csv(stream, source, extra)", id="three-parameters"),
    pytest.param('name = "x"\nsuffixes = (".x",)\ndef to_csv(*args): yield b""\n',
                 "has to_csv(*args)", id="varargs"),
    pytest.param('name = "x"\nsuffixes = (".x",)\nto_csv = "not a function"\n',
                 "to_csv is not callable", id="not-callable"),
    pytest.param('raise RuntimeError("config\\nmissing")\n',
                 "cannot be loaded: RuntimeError: config missing", id="import-crash"),
])
def test_protocol_problems_are_one_line_naming_the_plugin(source, expected, fake_plugins, tmp_path, capsys):
    fake_plugins("bad-dist", {"bad": "bad_module"}, {"bad_module": source})
    with pytest.raises(PluginError) as caught:
        plugins.check_plugins()
    message = str(caught.value)
    assert message.startswith("normalizer plugin bad (bad_module, from bad-dist 1.0): ")
    assert expected in message and "\n" not in message
    rc = cli.main(["--output_dir", str(tmp_path / "out")])  # even a CSV run: the check is at start-up
    line = assert_one_line_usage_error(rc, capsys.readouterr().err)
    assert line == f"beam_pipeline: error: {message}"
    assert not (tmp_path / "out").exists()


def test_an_entry_point_naming_a_class_gets_a_hint(fake_plugins):
    fake_plugins("class-dist", {"cls": "class_module:Normalizer"}, {"class_module": """\
        class Normalizer:
            name = "cls"
            suffixes = (".cls",)

            def to_csv(self, stream, source):
                yield b""
        """})
    with pytest.raises(PluginError, match=r"has to_csv\(self, stream, source\) \(the entry point names a class: "
                                          r"point it at an instance\)"):
        plugins.check_plugins()


def test_two_plugins_claiming_a_suffix_are_both_named(fake_plugins):
    module = 'name = "{0}"\nsuffixes = (".q", ".{0}")\ndef to_csv(stream, source): yield b""\n'
    fake_plugins("one-dist", {"one": "one_module"}, {"one_module": module.format("one")})
    fake_plugins("two-dist", {"two": "two_module"}, {"two_module": module.format("two")})
    with pytest.raises(PluginError) as caught:
        plugins.check_plugins()
    assert str(caught.value) == ("normalizer plugins one (one_module, from one-dist 1.0) and "
                                 "two (two_module, from two-dist 1.0) both claim .q files (uninstall one)")


def test_a_worker_without_the_plugin_says_so(fake_plugins, tmp_path):
    opener = InputOpener(2, PluginFormats({".upq": "upq"}))  # the launcher had it; this Python does not
    with pytest.raises(PluginError, match=r"normalizer plugin upq reads \.upq files, but this Python has none "
                                          r"installed \(workers need the same plugin packages"):
        opener(str(tmp_path / "quotes.upq"))


def test_the_longest_claimed_suffix_wins():
    suffixes = {".jsonl": "a", ".quotes.jsonl": "b"}
    assert plugins.plugin_suffix("x/day.quotes.jsonl", suffixes) == ".quotes.jsonl"
    assert plugins.plugin_suffix("x/day.jsonl.gz", suffixes) == ".jsonl"
    assert plugins.plugin_suffix("x/day.csv", suffixes) is None
    assert plugins.plugin_suffix("x/dayjsonl", suffixes) is None


def test_the_example_turns_every_json_line_into_one_csv_line(monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ in examples/
    monkeypatch.syspath_prepend(str(EXAMPLE))
    try:
        import bp_jsonl_quotes
    finally:
        sys.modules.pop("bp_jsonl_quotes", None)
    assert plugins.protocol_problems(bp_jsonl_quotes.normalizer) == []
    lines = [
        b'{"ts": "2024-06-03 07:00:00.038", "sym": "AAPL", "bid": 194.470, "ask": "194.49", "bid_size": 525,'
        b' "ask_size": null, "latency_ms": 35, "tenant": "acme", "venue": "X"}\n',
        b"\n",
        b"[1, 2]\n",
        b'{"ts": "a\\nb"}\r\n',
        b"\xff{}\n",
        b'{"bid": NaN, "ask": true}',
    ]
    text = b"".join(bp_jsonl_quotes.normalizer.to_csv(io.BytesIO(b"".join(lines)), "x.jsonl")).decode()
    rows = text.split("\n")
    assert rows[0] == "timestamp,symbol,bid_price,bid_size,ask_price,ask_size,latency_ms,tenant"
    assert rows[1] == "2024-06-03 07:00:00.038,AAPL,194.470,525,194.49,,35,acme"
    assert rows[2] == ""  # a blank line stays one: line numbers keep matching
    assert rows[3] == '"invalid JSON (a list, not an object)","[1, 2]",,,,,,'
    assert rows[4].startswith('invalid JSON (a value holds a line break),"{""ts""')
    assert rows[5].startswith('invalid JSON (not UTF-8 at byte 0),')
    assert rows[6] == ",,NaN,,true,,,"
    assert len(rows) == 8 and rows[7] == ""
