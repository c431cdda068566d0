"""Run accounting: what each stage adds to ``metrics.json``, the CLI's summary and the run report.

Every stage states, next to its composite, an :class:`Accounting`: the output files it writes and
the metric that counts each one's lines, the balance checks its counts take part in (a total, by
default ``records_in``, equals the sum of the terms), the words a reader sees for each check, and
which of its counts are records set aside (dead-lettered, filtered, late, duplicates). A run adds
up the accountings of the stages it wires (``a + b``, in the order its outputs are listed):
``WriteRunMetrics`` writes ``metrics.json`` from the sum, and the summary and the report read it::

    ComputeMidPrices.ACCOUNTING + NormalizeQuotes.ACCOUNTING
        outputs   mid_prices.log -> mid_prices, errors.log -> latency_filtered, dead_letter.jsonl -> dead_lettered
        balanced  records_in = mid_prices + latency_filtered + dead_lettered

Pure Python: no Beam here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

#: The check every quotes run has: each quote read is in exactly one of the main outputs.
RECORDS_CHECK = "balanced"
#: What a check adds up to unless it says otherwise.
RECORDS_IN = "records_in"


@dataclass(frozen=True)
class Output:
    """One output file and the metric counting its lines."""

    file: str  # e.g. "errors.log"
    metric: str  # e.g. "latency_filtered"
    tally: str | None = None  # the metrics.json name of its lines' tally (default: <metric>_by_reason)

    @property
    def tally_name(self) -> str:
        return self.tally or f"{self.metric}_by_reason"


@dataclass(frozen=True)
class Check:
    """A balance of ``metrics.json``: ``total`` equals the sum of ``terms``; ``name`` is its flag.

    Stages that add terms to another's check name it and give only their terms: the total and
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
            self.set_aside + tuple(name for name in other.set_aside if name not in self.set_aside),
        )

    @property
    def metric_names(self) -> dict[str, str]:
        """Output file -> the metric counting its lines."""
        return {output.file: output.metric for output in self.outputs}

    @property
    def files(self) -> dict[str, str]:
        """Metric -> the output file whose lines it counts."""
        return {output.metric: output.file for output in self.outputs}

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
        return {check.name: check.label or check.name for check in self.checks}


def combine(parts: Iterable[Accounting]) -> Accounting:
    """The sum of ``parts``, in their order."""
    summed = Accounting()
    for part in parts:
        summed = summed + part
    return summed


def _merge(owner: Check, extra: Check) -> Check:
    for attribute in ("total", "label"):
        mine, theirs = getattr(owner, attribute), getattr(extra, attribute)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(f"check {owner.name}: {attribute} {mine!r} and {theirs!r}")
    return Check(owner.name, owner.terms + extra.terms, owner.total or extra.total, owner.label or extra.label)
