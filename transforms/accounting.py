"""Run accounting: what each stage adds to ``metrics.json``, the CLI's summary and the run report.

Every stage states, next to its composite, an :class:`Accounting`: the output files it writes and
the metric that counts each one's lines, the balance checks its counts take part in (a total, by
default ``records_in``, equals the sum of the terms), the words a reader sees for each of them,
and which of its counts are records set aside (dead-lettered, filtered, late, duplicates). A run
adds up the accountings of the stages it wires (``a + b``, in the order its outputs are listed):
``WriteRunMetrics`` writes ``metrics.json`` from the sum, and the summary and the report read
the same declarations::

    ComputeMidPrices.ACCOUNTING + NormalizeQuotes.ACCOUNTING
        outputs   mid_prices.log -> mid_prices, errors.log -> latency_filtered, dead_letter.jsonl -> dead_lettered
        balanced  records_in = mid_prices + latency_filtered + dead_lettered

A reader's words are templates over ``metrics.json`` (:func:`render`), e.g.
``"{latency_filtered:,} quotes over the {latency_threshold_ms} ms latency threshold"``.

Pure Python: no Beam here.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Iterable, Mapping

#: The check every quotes run has: each quote read is in exactly one of the main outputs.
RECORDS_CHECK = "balanced"
#: What a check adds up to unless it says otherwise.
RECORDS_IN = "records_in"


@dataclass(frozen=True)
class Output:
    """One output file and the metric counting its lines."""

    file: str  # e.g. "errors.log"
    metric: str  # e.g. "latency_filtered"
    label: str  # the count's name in the report's table, e.g. "latency filtered (> {latency_threshold_ms} ms)"
    summary: str  # the CLI summary's words beside the file, e.g. "{dead_lettered:,} rejected rows, ..."
    tally: str | None = None  # the metrics.json name of its lines' tally (default: <metric>_by_reason)

    @property
    def tally_name(self) -> str:
        return self.tally or f"{self.metric}_by_reason"


@dataclass(frozen=True)
class Check:
    """A balance of ``metrics.json``: ``total`` equals the sum of ``terms``; ``name`` is its flag.

    A stage that adds terms to another's check names it and gives only its terms: the total and
    the label come from the stage that owns the check."""

    name: str
    terms: tuple[str, ...]
    total: str | None = None  # None: records_in, or what the owner says
    label: str | None = None  # how the summary and the report call it, e.g. "window counts"


@dataclass(frozen=True)
class Accounting:
    """What a stage (or a whole run, once added up) writes and counts."""

    outputs: tuple[Output, ...] = ()
    checks: tuple[Check, ...] = ()
    set_aside: tuple[str, ...] = ()  # counts of records kept out of the main outputs, each with its reason
    counts: tuple[tuple[str, str], ...] = ()  # (metric, report label) of counts that are not a file's lines
    notes: tuple[str, ...] = ()  # summary lines of the stage that are not a file's, before its files' rows

    def __add__(self, other: Accounting) -> Accounting:
        files = {output.file for output in self.outputs}
        twice = [output.file for output in other.outputs if output.file in files]
        if twice:
            raise ValueError(f"two stages write {', '.join(twice)}")
        checks = {check.name: check for check in self.checks}
        for check in other.checks:
            checks[check.name] = _merge(checks[check.name], check) if check.name in checks else check
        return Accounting(
            self.outputs + other.outputs,
            tuple(checks.values()),
            _union(self.set_aside, other.set_aside),
            _union(self.counts, other.counts),
            self.notes + other.notes,
        )

    @property
    def metric_names(self) -> dict[str, str]:
        """Output file -> the metric counting its lines."""
        return {output.file: output.metric for output in self.outputs}

    @property
    def tally_names(self) -> dict[str, str]:
        """Output file -> the metrics.json name of its tally."""
        return {output.file: output.tally_name for output in self.outputs}

    @property
    def balances(self) -> dict[str, list[str]]:
        """Check -> its terms, as ``metrics.json``'s ``balance_terms``."""
        return {check.name: list(check.terms) for check in self.checks}

    @property
    def totals(self) -> dict[str, str]:
        """Check -> its total, for the checks whose total is not ``records_in`` (``balance_totals``)."""
        return {check.name: check.total for check in self.checks if check.total not in (None, RECORDS_IN)}

    @property
    def labels(self) -> dict[str, str]:
        """Check -> how a reader sees it named (its name when no stage gave it words)."""
        return {check.name: check.label or check.name for check in self.checks}


def combine(parts: Iterable[Accounting]) -> Accounting:
    """The sum of ``parts``, in their order."""
    summed = Accounting()
    for part in parts:
        summed = summed + part
    return summed


def render(template: str, metrics: Mapping) -> str:
    """``template`` filled in from ``metrics``: ``{name:,}`` a count (0 when the run has none),
    ``{name[key]}`` an entry of a dict, ``{name:tally}`` a tally as ``3 ON_TIME, 1 LATE`` (``none``
    when empty), ``{name:len}`` how many items a list has."""
    return _FORMATTER.vformat(template, (), metrics)


class _MetricsFormatter(string.Formatter):
    def get_field(self, field_name, args, kwargs):
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, IndexError):  # a count the run did not make: none of them
            return 0, field_name

    def format_field(self, value, format_spec):
        if format_spec == "tally":
            return ", ".join(f"{count:,} {name}" for name, count in (value or {}).items()) or "none"
        if format_spec == "len":
            return str(len(value or ()))
        return super().format_field(value, format_spec)


_FORMATTER = _MetricsFormatter()


def _union(first: tuple, second: tuple) -> tuple:
    return first + tuple(item for item in second if item not in first)


def _merge(owner: Check, extra: Check) -> Check:
    for attribute in ("total", "label"):
        mine, theirs = getattr(owner, attribute), getattr(extra, attribute)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(f"check {owner.name}: {attribute} {mine!r} and {theirs!r}")
    return Check(owner.name, owner.terms + extra.terms, owner.total or extra.total, owner.label or extra.label)
