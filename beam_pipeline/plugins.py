"""Normalizer plugins: new input formats for the historical replay, installed as Python packages.

A package registers a normalizer under the entry point group :data:`GROUP`::

    [project.entry-points."beam_pipeline.normalizers"]
    jsonl = "bp_jsonl_quotes:normalizer"

The entry point loads an object (an instance or a module) that follows :class:`Normalizer`: a
``name``, the file ``suffixes`` it reads (e.g. ``(".jsonl",)``) and ``to_csv(stream, source)``,
which yields the file as canonical quote CSV (the header line first, then one line per record) in
chunks of bytes. The replay reads that CSV as it reads any other (:class:`transforms.sources.avro_input.InputOpener`),
so a plugin's records get arrival order, the domain rules and dead letters with reasons. A record
the plugin cannot parse should become a line the replay rejects (e.g. an invalid timestamp that
says why), never be dropped; a plugin that raises fails the run with an error naming it and the file.

``check_plugins()`` runs at start-up: a plugin that does not import or does not follow the protocol
is a one-line usage error naming it. ``--list_plugins`` prints :func:`list_plugins`.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from functools import lru_cache, partial
from importlib import metadata
from typing import BinaryIO, Callable, Iterator, Protocol

#: The entry point group normalizers register under.
GROUP = "beam_pipeline.normalizers"
#: Suffixes the pipeline reads itself: CSV, Avro, and gzip (decompressed by Beam's FileSystems).
OWNED_SUFFIXES = (".csv", ".avro", ".gz")
#: A compressed plugin file (``quotes.jsonl.gz``) is decompressed, then read by the plugin.
COMPRESSED_SUFFIX = ".gz"
_SUFFIX = re.compile(r"\.[A-Za-z0-9_][A-Za-z0-9_.-]*")


class Normalizer(Protocol):
    """What a ``beam_pipeline.normalizers`` entry point loads."""

    name: str
    suffixes: tuple[str, ...]

    def to_csv(self, stream: BinaryIO, source: str) -> Iterator[bytes]:
        """The file open in ``stream`` (named ``source``) as canonical quote CSV, in chunks of
        bytes: the header (``timestamp,symbol,bid_price,bid_size,ask_price,ask_size,latency_ms``,
        optionally ``tenant``) first."""
        ...


class PluginError(Exception):
    """A normalizer plugin is broken (does not load, breaks the protocol, clashes with another)
    or failed while reading a file. The message is one line and names the plugin."""


@dataclass(frozen=True)
class Plugin:
    """One installed entry point of :data:`GROUP`, and its normalizer once loaded."""

    entry_point: str  # the entry point's name
    target: str  # what it loads, module[:attribute]
    distribution: str
    version: str
    normalizer: Normalizer | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """How messages name the plugin: ``jsonl (bp_jsonl_quotes:normalizer, from dist 0.1.0)``."""
        return f"{self.entry_point} ({self.target}, from {self.distribution} {self.version})"


@dataclass(frozen=True)
class _Discovery:
    plugins: tuple[Plugin, ...]  # those that loaded and follow the protocol
    by_suffix: dict[str, Plugin]
    problems: tuple[str, ...]  # one line each


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=GROUP), key=lambda ep: (ep.name, ep.value))


def _plugin(entry_point: metadata.EntryPoint, normalizer=None) -> Plugin:
    dist = getattr(entry_point, "dist", None)
    return Plugin(
        entry_point.name, entry_point.value,
        dist.name if dist is not None else "an unknown distribution",
        dist.version if dist is not None else "?",
        normalizer,
    )


def protocol_problems(normalizer: object) -> list[str]:
    """How ``normalizer`` breaks the :class:`Normalizer` protocol (empty when it does not)."""
    problems = []
    missing = [attr for attr in ("name", "suffixes", "to_csv") if not hasattr(normalizer, attr)]
    if missing:
        return [f"has no {', '.join(missing)} (a normalizer needs name, suffixes and to_csv(stream, source))"]
    name = normalizer.name
    if not isinstance(name, str) or not name.strip():
        problems.append(f"name must be a non-empty string, got {name!r}")
    suffixes = normalizer.suffixes
    if not isinstance(suffixes, (tuple, list)) or not suffixes:
        problems.append(f"suffixes must be a non-empty tuple of strings like ('.jsonl',), got {suffixes!r}")
    else:
        bad = [s for s in suffixes if not isinstance(s, str) or not _SUFFIX.fullmatch(s)]
        if bad:
            problems.append(f"suffixes must look like '.jsonl' (a dot, then letters, digits, '_', '-' or '.'), "
                            f"got {', '.join(map(repr, bad))}")
        owned = [s for s in suffixes if isinstance(s, str) and s.lower().endswith(OWNED_SUFFIXES)]
        if owned:
            problems.append(f"suffix {', '.join(owned)} is read by the pipeline itself "
                            f"({', '.join(OWNED_SUFFIXES)} are not for plugins)")
    problems += _signature_problems(normalizer.to_csv, inspect.isclass(normalizer))
    return problems


def _signature_problems(to_csv, is_class: bool) -> list[str]:
    if not callable(to_csv):
        return [f"to_csv is not callable (got {type(to_csv).__name__})"]
    try:
        signature = inspect.signature(to_csv)
    except (TypeError, ValueError) as exc:
        return [f"to_csv has no signature to check ({_one_line(exc)})"]
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    others = [p for p in signature.parameters.values() if p.kind == p.VAR_POSITIONAL
              or (p.kind == p.KEYWORD_ONLY and p.default is p.empty)]
    if len(positional) != 2 or others:
        hint = " (the entry point names a class: point it at an instance)" if is_class else ""
        return [f"to_csv must take exactly two positional parameters (stream, source), "
                f"has to_csv{signature}{hint}"]
    return []


@lru_cache(maxsize=1)
def _discover() -> _Discovery:
    loaded: list[Plugin] = []
    problems: list[str] = []
    for entry_point in _entry_points():
        plugin = _plugin(entry_point)
        try:
            normalizer = entry_point.load()
        except (Exception, SystemExit) as exc:  # an import error, a missing attribute, a crash at import
            problems.append(f"normalizer plugin {plugin.label}: cannot be loaded: "
                            f"{type(exc).__name__}: {_one_line(exc)}")
            continue
        try:
            broken = protocol_problems(normalizer)
        except Exception as exc:  # e.g. a property that raises  # noqa: BLE001
            broken = [f"cannot be checked: {type(exc).__name__}: {exc}"]
        if broken:
            problems.append(_one_line(f"normalizer plugin {plugin.label}: " + "; ".join(broken)))
            continue
        loaded.append(_plugin(entry_point, normalizer))
    by_suffix: dict[str, Plugin] = {}
    for plugin in loaded:
        for suffix in plugin.normalizer.suffixes:
            other = by_suffix.get(suffix)
            if other is not None:
                problems.append(f"normalizer plugins {other.label} and {plugin.label} both claim {suffix} files "
                                "(uninstall one)")
            else:
                by_suffix[suffix] = plugin
    return _Discovery(tuple(loaded), by_suffix, tuple(problems))


def forget() -> None:
    """Discover again next time (after installing or removing a plugin in this process)."""
    _discover.cache_clear()


def plugin_problems() -> list[str]:
    """One line for each installed normalizer plugin that does not load, breaks the protocol or
    claims a suffix another one claims (empty when all is well)."""
    return list(_discover().problems)


def check_plugins() -> None:
    """Raise :class:`PluginError` (one line, naming each broken plugin) if :func:`plugin_problems`
    finds any."""
    problems = plugin_problems()
    if problems:
        raise PluginError("; ".join(problems))


def discover() -> dict[str, Normalizer]:
    """The installed normalizers by suffix (cached); raises :class:`PluginError` as :func:`check_plugins`."""
    check_plugins()
    return {suffix: plugin.normalizer for suffix, plugin in _discover().by_suffix.items()}


def claimed_suffixes() -> dict[str, str]:
    """Suffix -> the name of the entry point that reads it (picklable: what workers re-resolve)."""
    check_plugins()
    return {suffix: plugin.entry_point for suffix, plugin in _discover().by_suffix.items()}


def plugin_suffix(path: str, suffixes) -> str | None:
    """The longest of ``suffixes`` that ``path`` ends with (after a ``.gz``, which Beam's
    FileSystems decompresses), or None."""
    plain = path[: -len(COMPRESSED_SUFFIX)] if path.endswith(COMPRESSED_SUFFIX) else path
    matches = [suffix for suffix in suffixes if plain.endswith(suffix)]
    return max(matches, key=len) if matches else None


def plugin_for(suffix: str, entry_point: str) -> Plugin:
    """The installed plugin for ``suffix``, which must be the entry point ``entry_point`` (the one
    the launcher found); re-resolved on each worker. Raises :class:`PluginError`."""
    plugin = _discover().by_suffix.get(suffix)
    if plugin is None or plugin.entry_point != entry_point:
        check_plugins()  # a broken plugin says so first
        found = f"finds {plugin.label}" if plugin is not None else "has none installed"
        raise PluginError(f"normalizer plugin {entry_point} reads {suffix} files, but this Python "
                          f"{found} (workers need the same plugin packages as the launcher)")
    return plugin


@dataclass(frozen=True)
class PluginFormats:
    """The installed normalizer plugins as :class:`transforms.sources.avro_input.CsvFormats`: suffix -> entry
    point name. Only the names travel to the workers; each worker loads the plugins from its own
    installed packages (:func:`plugin_for`)."""

    suffixes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def installed(cls) -> "PluginFormats":
        return cls(claimed_suffixes())

    def to_csv_for(self, path: str) -> Callable[[BinaryIO, str], Iterator[bytes]] | None:
        suffix = plugin_suffix(path, self.suffixes)
        if suffix is None:
            return None
        return partial(read_as_csv, plugin_for(suffix, self.suffixes[suffix]))


def read_as_csv(plugin: Plugin, stream: BinaryIO, source: str) -> Iterator[bytes]:
    """``plugin``'s CSV chunks of ``source``; anything it raises, or yields that is not bytes,
    becomes a :class:`PluginError` naming the plugin and the file."""
    chunks = None
    try:
        chunks = iter(plugin.normalizer.to_csv(stream, source))
        for chunk in chunks:
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise PluginError(f"normalizer plugin {plugin.label} failed on {source}: to_csv yielded "
                                  f"{type(chunk).__name__}, not bytes")
            yield bytes(chunk)
    except PluginError:
        raise
    except Exception as exc:  # the plugin's own error: fail the run, naming who and where
        raise PluginError(f"normalizer plugin {plugin.label} failed on {source}: "
                          f"{type(exc).__name__}: {_one_line(exc)}") from exc
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def input_hint(path: str) -> str:
    """Words to add to an unreadable input's error: which plugin converted it, or that none reads
    its suffix (empty for the pipeline's own suffixes)."""
    found = _discover()
    suffix = plugin_suffix(path, found.by_suffix)
    if suffix is not None:
        return f" (as converted by normalizer plugin {found.by_suffix[suffix].label})"
    plain = path[: -len(COMPRESSED_SUFFIX)] if path.endswith(COMPRESSED_SUFFIX) else path
    name = plain.replace("\\", "/").rsplit("/", 1)[-1]
    if "." not in name.lstrip(".") or plain.endswith(OWNED_SUFFIXES):
        return ""
    return f" (no installed normalizer plugin reads .{name.rsplit('.', 1)[1]} files; see --list_plugins)"


def list_plugins() -> str:
    """What ``--list_plugins`` prints: each plugin's name, suffixes, distribution and version, and
    every broken one with what is wrong."""
    found = _discover()
    if not found.plugins and not found.problems:
        return f"no normalizer plugins installed (entry point group {GROUP})"
    lines = [f"normalizer plugins (entry point group {GROUP}):"]
    for plugin in found.plugins:
        lines.append(f"  {plugin.normalizer.name}: {', '.join(plugin.normalizer.suffixes)} files, "
                     f"from {plugin.distribution} {plugin.version} (entry point {plugin.entry_point} = {plugin.target})")
    lines += [f"  BROKEN: {problem}" for problem in found.problems]
    return "\n".join(lines)
