"""The README and the docs/ pages: their commands exist as written, their links lead somewhere, and
the README stays short (issue 20).

Nothing documented is run. A command is every line of a ``sh``/``bash``/``shell`` block (in a
``console`` block, every ``$ `` line) and every inline code span that starts like one; backslash
continuations are joined, comments dropped, and ``&&``, ``|``, ``;`` and ``&`` separate commands.
Of those, ``python``/``.venv/bin/python`` commands and ``make`` are checked:

* ``python -m MODULE``: the module exists; for the project's own modules (``beam_pipeline``, its
  tools, ``schemas``) every ``--flag`` and sub-command is one its argument parser accepts. The main
  command's parser is the one the CLI checks flags with: Beam's ``PipelineOptions`` subclasses,
  the project's among them. Every other command's parser is the first one its ``__main__`` code
  builds, caught when it parses, before anything runs (:func:`_first_parser`).
* ``python SCRIPT.py``: the script exists in the repository, and its flags as above.
* ``make TARGET``: the Makefile has the target.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import re
import runpy
import shlex
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *PAGES]
README_LIMIT = 12_288  # bytes (issue 20: a README of at most 12 KB)

SHELL_FENCES = {"sh", "bash", "shell", "console"}
PYTHONS = {"python", "python3", ".venv/bin/python", ".venv/bin/python3"}
PROJECT_PACKAGES = {"beam_pipeline", "schemas", "transforms", "runners"}
OPERATORS = {";", "&", "&&", "|", "||"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass(frozen=True)
class Command:
    where: str  # "docs/cli.md:12"
    words: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join(self.words)


# --- finding the commands -----------------------------------------------------------------------

def _fenced(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line number of the first line, fence language, lines) of every fenced block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.groups()
        start, i = i + 1, i + 1
        while i < len(lines) and not lines[i].strip().startswith(fence[0] * len(fence)):
            i += 1
        yield start + 1, lang.lower(), [line[len(indent):] if line.startswith(indent) else line.lstrip()
                                        for line in lines[start:i]]
        i += 1


def _without_fences(text: str) -> str:
    """``text`` with every fenced block's lines blanked (line numbers kept)."""
    lines = text.split("\n")
    for first, _, block in _fenced(text):
        for n in range(first - 2, first + len(block)):
            if 0 <= n < len(lines):
                lines[n] = ""
        if first + len(block) - 1 < len(lines):
            lines[first + len(block) - 1] = ""
    return "\n".join(lines)


def _split(line: str) -> list[list[str]] | None:
    """The simple commands of a shell line, without comments and leading ``VAR=value``; None when
    the line is not shell (an output line with an unbalanced quote)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:
        return None
    commands, current = [], []
    for word in [*words, ";"]:
        if word in OPERATORS:
            while current and ASSIGNMENT.match(current[0]):
                current.pop(0)
            if current:
                commands.append(current)
            current = []
        else:
            current.append(word)
    return commands


def _checked(words: list[str]) -> bool:
    return bool(words) and (words[0] in PYTHONS or words[0] == "make")


def _ours(words: list[str]) -> bool:
    """Whether a command is the project's: make, a script, or one of its modules (inline code also
    names other tools, ``python -m build``, that need not be installed here)."""
    if words[0] == "make":
        return True
    module = words[words.index("-m") + 1] if "-m" in words[:-1] else None
    return module is None or module.split(".")[0] in PROJECT_PACKAGES or module == "apache_beam.yaml.main"


def commands_in(text: str, name: str) -> list[Command]:
    """The python and make commands of ``text``'s shell blocks and inline code."""
    found = []
    for first, lang, lines in _fenced(text):
        if lang not in SHELL_FENCES:
            continue
        n = 0
        while n < len(lines):
            line, lineno = lines[n], first + n
            if lang == "console":
                if not line.startswith("$ "):
                    n += 1
                    continue
                line = line[2:]
            while line.rstrip().endswith("\\") and n + 1 < len(lines):
                n += 1
                line = line.rstrip()[:-1] + " " + lines[n]
            n += 1
            split = _split(line)
            if split is None:
                if _checked(line.split()):
                    found.append(Command(f"{name}:{lineno}", tuple(line.split())))
                continue
            found += [Command(f"{name}:{lineno}", tuple(words)) for words in split if _checked(words)]
    prose = _without_fences(text)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        lineno = prose.count("\n", 0, match.start()) + 1
        span = " ".join(match.group(1).split())
        words = span.split()
        if _checked(words):
            for simple in _split(span) or [words]:
                if _checked(simple) and _ours(simple):
                    found.append(Command(f"{name}:{lineno}", tuple(simple)))
    return found


# --- what each command accepts ------------------------------------------------------------------

class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


@contextmanager
def _first_parser():
    """Every argparse parse raises :class:`_Parsed` with its parser, before it reads an argument."""
    def caught(self, args=None, namespace=None):
        raise _Parsed(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", caught):
        yield


def _parser_built_by(run: Callable[[], object], source: str, what: str) -> argparse.ArgumentParser:
    """The first parser ``run`` (a ``__main__``) builds; it must build one before doing anything."""
    if "ArgumentParser" not in source and "build_parser" not in source:
        raise LookupError(f"{what} builds no argparse parser that could be checked")
    with _first_parser():
        try:
            run()
        except _Parsed as parsed:
            return parsed.parser
    raise LookupError(f"{what} returned without parsing its arguments")


@functools.cache
def pipeline_parser() -> argparse.ArgumentParser:
    """Every flag ``python -m beam_pipeline`` accepts: the parser the CLI checks its arguments with."""
    from beam_pipeline import cli, options  # noqa: F401 (cli's imports define every PipelineOptions subclass)

    return options.option_parser(add_help=True)


@functools.cache
def module_parser(name: str) -> argparse.ArgumentParser | None:
    """The parser of ``python -m name``; None for a module outside the project (its existence is
    all that is checked), except Beam YAML's runner, whose flags are its own and Beam's options."""
    if name == "beam_pipeline":
        return pipeline_parser()
    if name == "apache_beam.yaml.main":
        from apache_beam.yaml import main as yaml_main

        parser = _parser_built_by(lambda: yaml_main._parse_arguments([]),  # pylint: disable=protected-access
                                  "ArgumentParser", name)
        combined = argparse.ArgumentParser(prog=f"python -m {name}", add_help=False,
                                           parents=[parser, pipeline_parser()], conflict_handler="resolve")
        combined.add_argument("--jinja_variable_flags")  # read by its pre-parse (_preparse_jinja_flags)
        return combined
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.submodule_search_locations:  # a package: python -m runs its __main__
        spec = importlib.util.find_spec(f"{name}.__main__")
    source = Path(spec.origin).read_text(encoding="utf-8")
    return _parser_built_by(lambda: runpy.run_module(name, run_name="__main__"), source, f"python -m {name}")


@functools.cache
def script_parser(path: Path) -> argparse.ArgumentParser:
    def run():
        sys.path.insert(0, str(path.parent))  # as `python SCRIPT` does: its folder's modules import
        try:
            runpy.run_path(str(path), run_name="__main__")
        finally:
            sys.path.remove(str(path.parent))

    return _parser_built_by(run, path.read_text(encoding="utf-8"), f"python {path.relative_to(ROOT)}")


@functools.cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return frozenset(m.group(1) for m in re.finditer(r"^([A-Za-z0-9][\w.-]*)\s*:(?!=)", text, re.M))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # pylint: disable=protected-access
        if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
            return dict(action.choices)
    return {}


def argument_problems(parser: argparse.ArgumentParser, words: list[str], name: str) -> list[str]:
    """Flags and sub-commands in ``words`` that ``parser`` does not know (exact spelling: no
    abbreviations). Positional arguments other than a sub-command are not checked."""
    problems = []
    chain, commands = [parser], _subcommands(parser)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1 and not word[1].isdigit():
            flag, equals, _ = word.partition("=")
            action = next((p._option_string_actions[flag] for p in reversed(chain)  # pylint: disable=protected-access
                           if flag in p._option_string_actions), None)  # pylint: disable=protected-access
            if action is None:
                problems.append(f"{flag} is not a flag of {name}")
                continue
            if equals or action.nargs == 0:
                continue
            if action.nargs == argparse.REMAINDER:
                break
            if action.nargs in (None, 1):
                i += 1 if i < len(words) else 0
                continue
            while i < len(words) and not words[i].startswith("-"):
                i += 1
        elif commands:
            if word not in commands:
                problems.append(f"{word!r} is not a command of {name} ({', '.join(commands)})")
                break
            chain.append(commands[word])
            name = f"{name} {word}"
            commands = _subcommands(commands[word])
    return problems


def command_problems(command: Command) -> list[str]:
    """What is wrong with one command, each as ``where: command: problem``."""
    words = list(command.words)
    try:
        problems = _problems(words)
    except LookupError as error:
        problems = [str(error)]
    return [f"{command.where}: {command}: {problem}" for problem in problems]


def _problems(words: list[str]) -> list[str]:
    if words[0] == "make":
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        return [f"the Makefile has no target {t!r}" for t in targets if t not in make_targets()]
    args = words[1:]
    while args and args[0].startswith("-") and args[0] != "-m":
        args = args[2:] if args[0] in ("-X", "-W") else args[1:]  # interpreter options
    if not args or args[0] == "-c":
        return []
    if args[0] == "-m":
        if len(args) < 2:
            return ["-m without a module"]
        name = args[1]
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a missing parent package, or not a module name at all
            found = False
        if not found:
            return [f"no module {args[1]}"]
        parser = module_parser(name)
        return [] if parser is None else argument_problems(parser, args[2:], f"python -m {args[1]}")
    path = ROOT / args[0]
    if not path.is_file():
        return [f"no file {args[0]} in the repository"]
    if path.suffix != ".py":
        return []
    return argument_problems(script_parser(path), args[1:], f"python {args[0]}")


def problems_in(text: str, name: str) -> list[str]:
    return [problem for command in commands_in(text, name) for problem in command_problems(command)]


# --- links --------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, without punctuation, spaces as '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors_in(text: str) -> frozenset[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in _without_fences(text).split("\n"):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    return anchors_in(path.read_text(encoding="utf-8"))


def link_problems(text: str, path: Path) -> list[str]:
    """Relative links of ``text`` (the document at ``path``) that lead to no file, or to no heading."""
    problems = []
    prose = re.sub(r"`[^`]*`", "", _without_fences(text))
    for match in LINK.finditer(prose):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # http:, mailto:, ...
        lineno = prose.count("\n", 0, match.start()) + 1
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{lineno}"
        file_part, _, anchor = target.partition("#")
        if not file_part:
            if anchor not in anchors_in(text):
                problems.append(f"{where}: {target}: no heading #{anchor} here")
            continue
        linked = (path.parent / file_part).resolve()
        if not linked.is_relative_to(ROOT):
            problems.append(f"{where}: {target} leads out of the repository")
        elif not linked.exists():
            problems.append(f"{where}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: {target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    return problems


# --- the documents ------------------------------------------------------------------------------

def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_there_are_pages():
    assert {p.name for p in PAGES} >= {"contract.md", "event-time.md", "cli.md", "runners.md", "schemas.md",
                                       "sources.md", "queue.md", "products.md", "trades.md", "operating.md",
                                       "performance.md", "development.md", "deploy.md"}


@pytest.mark.parametrize("path", DOCUMENTS, ids=_name)
def test_every_command_exists_with_the_flags_it_uses(path):
    assert problems_in(path.read_text(encoding="utf-8"), _name(path)) == []


@pytest.mark.parametrize("path", DOCUMENTS, ids=_name)
def test_every_relative_link_leads_to_a_file_and_heading(path):
    assert link_problems(path.read_text(encoding="utf-8"), path) == []


def test_the_readme_is_at_most_12_kb():
    assert len(README.read_bytes()) <= README_LIMIT


def test_the_readme_links_every_page():
    text = README.read_text(encoding="utf-8")
    assert [p.name for p in PAGES if f"(docs/{p.name}" not in text] == []
    assert "(docs/architecture.md)" in text


def test_the_readme_sets_up_with_two_commands():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Set-up: two commands"):text.index("\n## ", text.index("## Set-up"))]
    first_block = next(lines for _, lang, lines in _fenced(section) if lang == "sh")
    assert [c.words for c in commands_in("```sh\n" + "\n".join(first_block) + "\n```\n", "README.md")] == [
        ("make", "demo"), ("make", "test")]


def _project_flags() -> set[str]:
    """The flags the project itself defines (not Beam's own)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    pipeline_parser()  # imports the modules that define them
    parser = argparse.ArgumentParser(add_help=False)
    for cls in PipelineOptions.__subclasses__():
        if cls.__module__.split(".")[0] in PROJECT_PACKAGES:
            cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return {s for a in parser._actions for s in a.option_strings}  # pylint: disable=protected-access


def test_the_command_line_page_lists_every_flag_and_only_real_ones():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert sorted(f for f in _project_flags() if not re.search(re.escape(f) + r"(?![\w-])", text)) == []
    flags_part = text[:text.index("## Other commands")]  # that section shows the other commands' flags
    known = pipeline_parser()._option_string_actions  # pylint: disable=protected-access
    assert sorted({f for f in re.findall(r"(?<![\w-])--[a-z][\w-]*", flags_part) if f not in known}) == []


@pytest.mark.parametrize("path", DOCUMENTS, ids=_name)
def test_every_path_the_pages_name_exists(path):
    """In code spans (``transforms/quotes/rules.py``, ``tests/x.py::test``, ``schemas/*.avsc``), and
    anywhere else, diagrams and commands included, a path of a file with a suffix."""
    text = path.read_text(encoding="utf-8")
    top = "beam_pipeline|transforms|schemas|runners|tests|benchmarks|scripts|examples"
    named = {m.group(1) for m in re.finditer(rf"`((?:{top})/[\w./*=-]*)(?:::[\w:]+)?`", _without_fences(text))}
    named |= {m.group(1) for m in re.finditer(rf"(?<![\w/.-])((?:{top})/[\w/.-]*\.[a-z]+)\b", text)}
    assert sorted(n for n in named if not list(ROOT.glob(n.rstrip("/")))) == []


# --- the checks themselves can fail -------------------------------------------------------------

def _block(*lines: str, lang: str = "sh") -> str:
    return f"Some prose.\n\n```{lang}\n" + "\n".join(lines) + "\n```\n"


def test_a_made_up_flag_is_reported():
    problems = problems_in(_block("python -m beam_pipeline --window fixed:1s --no_such_flag 1"), "x.md")
    assert len(problems) == 1 and "--no_such_flag is not a flag of python -m beam_pipeline" in problems[0]
    assert problems[0].startswith("x.md:4: ")


def test_real_flags_pass_beam_and_the_projects_alike():
    assert problems_in(_block(
        ".venv/bin/python -m beam_pipeline --runner PortableRunner --job_endpoint embed --environment_type LOOPBACK",
        "python -m beam_pipeline --runner DaskRunner --dask_local_workers 2 --streaming --window=fixed:1s",
        "make demo && make test",
        "python -m schemas check schemas/quote.v1.avsc schemas/quote.v2.avsc --mode FULL",
        "python -m beam_pipeline.devtools.mock_api downstream --port 8080",
        "python scripts/compare_outputs.py --before main",
    ), "x.md") == []


def test_continuations_comments_and_operators_are_followed():
    problems = problems_in(_block(
        "# python -m beam_pipeline --commented_out",
        "python -m beam_pipeline --window fixed:1s \\",
        "    --continued_flag 2   # --in_a_comment",
        "curl -s localhost && python -m beam_pipeline --after_and &",
        "python -m beam_pipeline.devtools.feed --input x.csv --port 1 --no_such_feed_flag &",
    ), "x.md")
    assert [p.split(": ")[-1] for p in problems] == [
        "--continued_flag is not a flag of python -m beam_pipeline",
        "--after_and is not a flag of python -m beam_pipeline",
        "--no_such_feed_flag is not a flag of python -m beam_pipeline.devtools.feed",
    ]


def test_modules_targets_scripts_and_sub_commands_are_checked():
    problems = problems_in(_block(
        "python -m beam_pipeline.no_such_module --x",
        "make no_such_target",
        "python scripts/no_such_script.py",
        "python -m beam_pipeline.devtools.mock_api products --port 1",  # --port is downstream's
        "python -m schemas lists",
    ), "x.md")
    assert [p.split(": ")[-1] for p in problems] == [
        "no module beam_pipeline.no_such_module",
        "the Makefile has no target 'no_such_target'",
        "no file scripts/no_such_script.py in the repository",
        "--port is not a flag of python -m beam_pipeline.devtools.mock_api products",
        "'lists' is not a command of python -m schemas (list, check)",
    ]


def test_console_blocks_and_inline_code_are_checked_too():
    text = (_block("$ python -m beam_pipeline --in_console", "python -m beam_pipeline --output_line", lang="console")
            + "\nRun `python -m beam_pipeline --inline_flag` or `make demo`; `--bare_flag` alone is not a command.\n")
    assert [p.split(": ")[-1] for p in problems_in(text, "x.md")] == [
        "--in_console is not a flag of python -m beam_pipeline",
        "--inline_flag is not a flag of python -m beam_pipeline",
    ]
    assert problems_in(_block("python -m beam_pipeline --nope", lang="text"), "x.md") == []


def test_broken_links_and_anchors_are_reported():
    text = ("See [a](contract.md), [b](no_such_page.md), [c](contract.md#tenants), [d](contract.md#no-such),"
            " [e](#here), [f](#not-here), [g](https://example.com/x.md) and `[h](not_a_link.md)`.\n\n## Here\n")
    problems = link_problems(text, ROOT / "docs" / "x.md")
    assert [p.split(": ", 1)[1] for p in problems] == [
        "no_such_page.md: no such file",
        "contract.md#no-such: no heading #no-such in docs/contract.md",
        "#not-here: no heading #not-here here",
    ]
    assert problems[0].startswith("docs/x.md:1: ")


def test_slugs_follow_github():
    assert slug("Outputs (in `--output_dir`)") == "outputs-in---output_dir"
    assert slug("Limits (known, on purpose)") == "limits-known-on-purpose"
    assert slug("Where the Python workers run: `--environment_type`") == "where-the-python-workers-run---environment_type"
