"""The sinks' composites: ``WriteOrderedText``, ``AppendText``, ``WriteRunMetrics``, ``WhenInputEnds``,
``DeliverToApi`` (:mod:`transforms.sinks.deliver`) and ``WriteAvroBlocks``
(:mod:`transforms.sinks.avro_output`). The file logic is in :mod:`transforms.sinks.files`.

Ordered text files written atomically, and the run's balanced metrics:

``WriteOrderedText`` takes one PCollection of :class:`~transforms.blocks.TextChunk` per output
file. Each chunk is written to a part file inside the main stage (so the lines themselves never
go through a shuffle); only ``(name, seq, path)`` records meet in one combine, after which the
parts are concatenated in ``seq`` order into a staging file that is renamed over the final name.
A crashed run leaves staging files and parts in a hidden ``.tmp-<run id>`` folder, never a
half-written output under the real name. Every declared output is created, empty if need be.

Files go through Beam's ``FileSystems``, so ``--output_dir`` may be any filesystem Beam knows.

A chunk may name a *partition* (``tenant=<t>``, see :mod:`transforms.quotes.tenants`): its lines go to
``<output_dir>/<partition>/<name>``. A partitioned sink writes every declared file in every
partition it has seen, empty if need be, and none at the top of the output directory.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import fastavro
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import trigger
from apache_beam.transforms import window as windows
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from transforms import telemetry
from transforms.accounting import Accounting
from transforms.blocks import TextChunk
from transforms.quotes.tenants import partition_dir, split_by_tenant
from transforms.sinks.deliver import (
    DEAD_LETTER,
    DEAD_LETTERS,
    DELIVERED,
    DUPLICATE,
    REPORT,
    Deliverer,
    DeliveryConfig,
    Settled,
    format_report,
    merge_figures,
)
from transforms.sinks.files import PartFile, add_counts, balance, publish, staged_name, staging_dir, strip_sort_keys
from transforms.sinks.staging import staging_for
from transforms.tracing import TracedDoFn

LOG = logging.getLogger(__name__)
#: The downstream sink's live report, a line a second while it delivers: on at INFO (beam_pipeline.logs).
DELIVER_LOG = logging.getLogger("transforms.sinks.deliver")
_NO_PARTS = "no parts"


class WhenInputEnds(beam.PTransform):
    """Into one global window that fires once, when the input has ended.

    A bounded input gets the default trigger, which does exactly that and keeps Beam's fast batch
    grouping. An unbounded one (a finite stream) gets an explicit ``AfterWatermark()``, which
    fires when the watermark reaches infinity: Beam refuses to group an unbounded collection in
    the global window under the default trigger, although that is when it would fire too.
    """

    def expand(self, pcoll):
        if pcoll.is_bounded:
            return pcoll | "GlobalWindow" >> beam.WindowInto(GlobalWindows())
        return pcoll | "GlobalWindowAtEnd" >> beam.WindowInto(
            GlobalWindows(), trigger=trigger.AfterWatermark(), accumulation_mode=trigger.AccumulationMode.DISCARDING
        )


def when_input_ends() -> WhenInputEnds:
    """See :class:`WhenInputEnds`."""
    return WhenInputEnds()


def combine_when_ended(pipeline, pcolls: Sequence, combine_fn: beam.CombineFn, label: str):
    """All elements of ``pcolls`` combined into one, once the input has ended.

    A marker (:data:`_NO_PARTS`, which the combine must ignore) joins them, so the one result
    exists, and every declared file gets created, even when nothing was written.
    """
    marker = pipeline | "NoPartsMarker" >> beam.Create([_NO_PARTS])
    return (
        [marker, *pcolls]
        | "AllParts" >> beam.Flatten()
        | "WhenInputEnds" >> when_input_ends()
        | label >> beam.CombineGlobally(combine_fn).without_defaults()
    )


class _WritePartFn(TracedDoFn):
    STAGE = "write"

    def __init__(self, tmp_dir: str, name: str):
        self._tmp_dir = tmp_dir
        self._name = name

    def process(self, chunk: TextChunk) -> Iterator[PartFile]:
        # The content's checksum keeps two chunks that share a seq (per-symbol chunks of keyed
        # output are numbered by a hash of the symbol) from overwriting each other, and a retried
        # bundle still rewrites the same path with the same bytes: writing is idempotent.
        digest = zlib.crc32(chunk.data)
        path = FileSystems.join(
            self._tmp_dir, f"{staged_name(chunk.partition, self._name)}.{chunk.seq:012d}.{digest:08x}.part"
        )
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as part:
            part.write(chunk.data)
        yield PartFile(self._name, chunk.seq, path, chunk.lines, chunk.tally, chunk.keyed, chunk.partition)


class _PublishFn(TracedDoFn):
    STAGE = "publish"

    def __init__(self, output_dir: str, tmp_dir: str, names: Sequence[str], partitioned: bool):
        self._output_dir = output_dir
        self._tmp_dir = tmp_dir
        self._names = tuple(names)
        self._partitioned = partitioned

    def process(self, parts: list[PartFile | str]) -> Iterator[dict]:
        if not FileSystems.exists(self._tmp_dir):
            FileSystems.mkdirs(self._tmp_dir)
        parts = [p for p in parts if p != _NO_PARTS]
        summary = publish(self._output_dir, self._tmp_dir, self._names, parts, self._partitioned)
        for name, info in summary.items():
            if self._partitioned:
                LOG.info("wrote %s in %d partitions of %s (%d lines)", name, len(info["partitions"]),
                         self._output_dir, info["lines"])
            else:
                LOG.info("wrote %s (%d lines)", FileSystems.join(self._output_dir, name), info["lines"])
        yield summary


class WriteOrderedText(beam.PTransform):
    """``{file name: PCollection[TextChunk]}`` -> files in ``output_dir``, lines in ``seq`` order.

    The inputs must share one windowing (the global window, default trigger: what a source's
    element-wise stages produce); everything is gathered once the input ends.

    Outputs one element: ``{file name: {"lines": n, "tally": {key: count}}}``, once every file
    is in place. ``partitioned``: the chunks name partitions, see :func:`publish`.
    """

    def __init__(self, output_dir: str, run_id: str, partitioned: bool = False):
        super().__init__()
        self._output_dir = output_dir
        self._tmp_dir = staging_dir(output_dir, run_id)
        self._partitioned = partitioned

    def expand(self, chunks_by_name: Mapping[str, beam.PCollection]):
        names = list(chunks_by_name)
        parts = [
            chunks | f"WriteParts[{name}]" >> beam.ParDo(_WritePartFn(self._tmp_dir, name))
            for name, chunks in chunks_by_name.items()
        ]
        pipeline = next(iter(chunks_by_name.values())).pipeline
        return (
            combine_when_ended(pipeline, parts, beam.combiners.ToListCombineFn(), "CollectParts")
            | "Publish" >> beam.ParDo(_PublishFn(self._output_dir, self._tmp_dir, names, self._partitioned))
        )


class MergeCounts(beam.CombineFn):
    """Several count dicts -> one: numbers under the same name are added, anything else kept."""

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, accumulator: dict, counts: Mapping) -> dict:
        for name, value in counts.items():
            if isinstance(value, int) and isinstance(accumulator.get(name), int):
                accumulator[name] += value
            else:
                accumulator[name] = value
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        merged: dict = {}
        for accumulator in accumulators:
            self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator: dict) -> dict:
        return accumulator


class _MetricsFn(TracedDoFn):
    STAGE = "metrics"

    def __init__(self, path: str, metric_names: Mapping[str, str], balances: Mapping[str, Sequence[str]],
                 tally_names: Mapping[str, str], extra: Mapping, started_at: float, clock: Callable[[], float],
                 totals: Mapping[str, str] | None = None):
        self._path = path
        self._totals = dict(totals or {})
        self._metric_names = dict(metric_names)
        self._balances = {name: list(terms) for name, terms in balances.items()}
        self._tally_names = dict(tally_names)
        self._extra = dict(extra)
        self._started_at = started_at
        self._clock = clock

    def process(self, summary: dict, read_counts: dict) -> Iterator[dict]:
        metrics: dict = {"records_in": read_counts.get("records_in", 0)}
        for file_name, metric in self._metric_names.items():
            metrics[metric] = summary[file_name]["lines"]
        # Sorted: the counts dicts of several sources arrive in whatever order the runner ran them.
        metrics.update({k: read_counts[k] for k in sorted(read_counts) if k != "records_in"})
        checks = {name: balance(metrics, terms, self._totals.get(name, "records_in"))
                  for name, terms in self._balances.items()}
        metrics["balanced"] = all(checks.values())
        metrics.update({name: ok for name, ok in checks.items() if name != "balanced"})
        metrics["balance_terms"] = self._balances
        if self._totals:
            metrics["balance_totals"] = self._totals
        for file_name, metric in self._metric_names.items():
            if summary[file_name]["tally"]:
                metrics[self._tally_names.get(file_name, f"{metric}_by_reason")] = summary[file_name]["tally"]
        partitions: dict[str, dict[str, int]] = {}
        for file_name, metric in self._metric_names.items():
            for partition, lines in summary[file_name].get("partitions", {}).items():
                partitions.setdefault(partition, {})[metric] = lines
        if partitions:
            metrics["partitions"] = dict(sorted(partitions.items()))
        metrics.update(self._extra)
        metrics["run_seconds"] = round(self._clock() - self._started_at, 3)
        for name, ok in checks.items():
            if not ok:
                terms = " + ".join(f"{term} {metrics.get(term, 0)}" for term in self._balances[name])
                total = self._totals.get(name, "records_in")
                LOG.error("counts do not balance (%s): %s %s != %s", name, total, metrics.get(total, 0), terms)
        tmp = self._path + ".tmp"
        with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            out.write((json.dumps(metrics, indent=2) + "\n").encode("utf-8"))
        if FileSystems.exists(self._path):
            FileSystems.delete([self._path])
        FileSystems.rename([tmp], [self._path])
        yield metrics


class WriteRunMetrics(beam.PTransform):
    """Write ``metrics.json`` from the published outputs and the run's counts.

    The input is the single summary element of :class:`WriteOrderedText`; ``read_counts`` is a
    PCollection with one dict (``records_in`` and other counts, e.g. merged with
    :class:`MergeCounts`). ``accounting`` is the run's stages' declarations added up
    (:mod:`transforms.accounting`): each output file's lines are counted under its metric, e.g.
    ``errors.log`` as ``latency_filtered``, and its tally under its tally name; each check says
    that ``records_in`` (or its own total, e.g. ``trades_in``) equals the sum of its terms;
    ``balanced`` is true when every check holds.
    """

    def __init__(self, output_dir: str, read_counts, accounting: Accounting, extra: Mapping,
                 started_at: float | None = None, clock: Callable[[], float] = time.time):
        super().__init__()
        self._path = FileSystems.join(output_dir, "metrics.json")
        self._read_counts = read_counts
        self._metric_names = accounting.metric_names
        self._balances = accounting.balances
        self._tally_names = accounting.tally_names
        self._totals = accounting.totals
        self._extra = extra
        self._started_at = clock() if started_at is None else started_at
        self._clock = clock

    def expand(self, summary):
        return summary | "WriteMetricsJson" >> beam.ParDo(
            _MetricsFn(self._path, self._metric_names, self._balances, self._tally_names, self._extra,
                       self._started_at, self._clock, self._totals),
            beam.pvalue.AsSingleton(self._read_counts),
        )


# --------------------------------------------------------------------------- live output


class _AppendFn(TracedDoFn):
    """Append each chunk to its local file as it comes, and flush it: readers see lines at once.

    In a queue consumer's folder, a chunk that comes while a block of stream entries is in flight
    goes to that block's part instead, appended once the block is committed
    (:mod:`transforms.sinks.staging`).

    Not ``partitioned``: the file ``<output_dir>/<name>`` exists from the start. Partitioned:
    ``<output_dir>/<partition>/<name>`` is created with its partition's first chunk.
    """

    STAGE = "append"

    def __init__(self, output_dir: str, name: str, partitioned: bool):
        self._output_dir = output_dir
        self._name = name
        self._partitioned = partitioned
        self._files: dict[str, object] = {}

    def setup(self):
        if not self._partitioned:
            self._open("")

    def _open(self, partition: str):
        handle = self._files.get(partition)
        if handle is None:
            directory = partition_dir(self._output_dir, partition)
            os.makedirs(directory, exist_ok=True)
            handle = self._files[partition] = open(os.path.join(directory, self._name), "ab")  # pylint: disable=consider-using-with
        return handle

    def process(self, chunk: TextChunk) -> Iterator[tuple[str, int, tuple, str]]:
        data = strip_sort_keys(chunk.data) if chunk.keyed else chunk.data
        staging = staging_for(self._output_dir)
        if staging is None or not staging.add(self._relative(chunk.partition), data):
            handle = self._open(chunk.partition)
            handle.write(data)
            handle.flush()
        yield self._name, chunk.lines, chunk.tally, chunk.partition

    def _relative(self, partition: str) -> str:
        directory = partition_dir(self._output_dir, partition)
        return os.path.relpath(os.path.join(directory, self._name), self._output_dir)

    def teardown(self):
        for handle in self._files.values():
            handle.close()
        self._files = {}


class SummarizeAppends(beam.CombineFn):
    """``(name, lines, tally, partition)`` per appended chunk -> ``{name: {"lines": n, "tally": {...}}}``
    (and ``"partitions": {partition: lines}`` for chunks that name one), as :func:`publish`."""

    def __init__(self, names: Sequence[str]):
        self._names = tuple(names)

    def create_accumulator(self) -> dict:
        return {name: {"lines": 0, "tally": {}} for name in self._names}

    def add_input(self, accumulator: dict, written) -> dict:
        if written == _NO_PARTS:
            return accumulator
        name, lines, tally, partition = written
        add_counts(accumulator[name], lines, tally, {partition: lines} if partition else {})
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        merged = self.create_accumulator()
        for accumulator in accumulators:
            for name, entry in accumulator.items():
                add_counts(merged[name], entry["lines"], entry["tally"].items(), entry.get("partitions", {}))
        return merged

    def extract_output(self, accumulator: dict) -> dict:
        for entry in accumulator.values():
            entry["tally"] = dict(sorted(entry["tally"].items()))
            if "partitions" in entry:
                entry["partitions"] = dict(sorted(entry["partitions"].items()))
        return accumulator


class AppendText(beam.PTransform):
    """``{file name: PCollection[TextChunk]}`` -> lines appended to local files as they come.

    The sink of a live run: a line is in its file (flushed) as soon as its block has passed the
    stages before, not when the run ends. Files are appended to, never replaced, so a restarted
    run continues the same logs. Lines keep the order in which chunks reach the sink; with one
    reader (the local runner) that is the order the source read them.

    Outputs, like :class:`WriteOrderedText`, one ``{file name: {"lines": n, "tally": {...}}}``
    once the input ends (for :class:`WriteRunMetrics`).

    Local files only, and one writer per file: on a runner with many workers, write windowed
    files instead (Beam's ``WriteToFiles``).
    """

    def __init__(self, output_dir: str, partitioned: bool = False):
        super().__init__()
        self._output_dir = output_dir
        self._partitioned = partitioned

    def expand(self, chunks_by_name: Mapping[str, beam.PCollection]):
        names = list(chunks_by_name)
        written = [
            chunks | f"Append[{name}]" >> beam.ParDo(_AppendFn(self._output_dir, name, self._partitioned))
            for name, chunks in chunks_by_name.items()
        ]
        pipeline = next(iter(chunks_by_name.values())).pipeline
        return combine_when_ended(pipeline, written, SummarizeAppends(names), "Summarize")


class _WriteAvroFn(TracedDoFn):
    STAGE = "write_avro"

    def __init__(self, directory: str, name: str, schema: dict, to_records: Callable, run_id: str, partitioned: bool):
        self._directory = directory
        self._name = name
        self._schema = schema
        self._to_records = to_records
        self._run_id = run_id
        self._partitioned = partitioned
        self._written = telemetry.counter(self.__class__, f"avro_{name}_written")

    def process(self, block) -> Iterator[str]:
        for partition, rows in split_by_tenant(block.batch, self._partitioned):
            records = self._to_records(rows)
            if not records:
                continue
            path = FileSystems.join(partition_dir(self._directory, partition), f"{self._name}-{self._run_id}-{block.seq:06d}.avro")
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
                fastavro.writer(stream, self._schema, records, codec="deflate")
            self._written.inc(len(records))
            yield path


class WriteAvroBlocks(beam.PTransform):
    """Quote blocks -> one Avro container file (deflate) per block: ``<name>-<run id>-<seq>.avro``.

    ``to_records`` turns a block's batch into records of ``schema`` (see :func:`quote_records`).
    Outputs the paths written. Each file is complete on its own, so a live run's files can be
    read while it goes on, and a run never overwrites another's (the run id). ``partition_by_tenant``:
    one file per tenant of the block, in ``<directory>/tenant=<t>/``.
    """

    def __init__(self, directory: str, name: str, schema: dict, to_records: Callable, run_id: str,
                 partition_by_tenant: bool = False):
        super().__init__()
        self._fn = _WriteAvroFn(directory, name, schema, to_records, run_id, partition_by_tenant)

    def expand(self, blocks):
        return blocks | "WriteAvro" >> beam.ParDo(self._fn)


def _global(value: Any, timestamp: Any) -> WindowedValue:
    return WindowedValue(value, MIN_TIMESTAMP if timestamp is None else timestamp, [windows.GlobalWindow()])


class _DeliverFn(TracedDoFn):
    """Records -> delivered (main), ``dead_letters`` and one ``report`` dict per bundle."""

    STAGE = "deliver"

    def __init__(self, config: DeliveryConfig, report_every: float):
        self._config = config
        self._report_every = report_every
        self._delivered = telemetry.counter(self.__class__, "delivered")
        self._duplicates = telemetry.counter(self.__class__, "duplicates")
        self._dead_lettered = telemetry.counter(self.__class__, "dead_lettered")
        self._retries = telemetry.counter(self.__class__, "retries")
        self._rate_limited = telemetry.counter(self.__class__, "rate_limited")
        self._deliverer: Deliverer | None = None
        self._counted = (0, 0)  # retries and rate-limit hits already added to the counters
        self._stop: threading.Event | None = None
        self._reporter: threading.Thread | None = None

    def setup(self):
        self._deliverer = Deliverer(self._config)
        self._stop = threading.Event()
        if self._report_every > 0:
            self._reporter = threading.Thread(target=self._report_loop, name="deliver-report", daemon=True)
            self._reporter.start()

    def _report_loop(self) -> None:
        while not self._stop.wait(self._report_every):
            figures = self._deliverer.live_summary()
            if figures is not None:
                DELIVER_LOG.info("%s", format_report(figures))

    def start_bundle(self):
        super().start_bundle()
        self._deliverer.start()
        self._deliverer.trace_parent = self.trace_context  # its POSTs: children of this bundle's span
        self._counted = (0, 0)

    def process(self, record, timestamp=beam.DoFn.TimestampParam):
        yield from self._outputs(self._deliverer.add(record, timestamp))

    def finish_bundle(self):
        yield from self._outputs(self._deliverer.flush())
        figures = self._deliverer.finish()
        if figures["received"]:
            DELIVER_LOG.info("%s", format_report(figures, "deliver done"))
            yield beam.pvalue.TaggedOutput(REPORT, _global(figures, None))
        super().finish_bundle()

    def _outputs(self, settled: list[Settled]) -> Iterator:
        for outcome in settled:
            if outcome.status == DEAD_LETTER:
                self._dead_lettered.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, _global(outcome.as_dead_letter(), outcome.timestamp))
            else:
                self._delivered.inc()
                if outcome.status == DUPLICATE:
                    self._duplicates.inc()
                yield _global(outcome.as_delivered(), outcome.timestamp)
        stats = self._deliverer.stats
        retries, rate_limited = self._counted
        self._retries.inc(stats.retries - retries)
        self._rate_limited.inc(stats.rate_limited - rate_limited)
        self._counted = (stats.retries, stats.rate_limited)

    def teardown(self):
        if self._stop is not None:
            self._stop.set()
        if self._reporter is not None:
            self._reporter.join(timeout=5.0)
        if self._deliverer is not None:
            self._deliverer.close()


class MergeReports(beam.CombineFn):
    """Per-bundle report dicts -> one (:func:`merge_figures`); none -> all zeros."""

    def create_accumulator(self) -> list[dict]:
        return []

    def add_input(self, accumulator: list[dict], report: dict) -> list[dict]:
        accumulator.append(report)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list[dict]]) -> list[dict]:
        return [merge_figures(report for accumulator in accumulators for report in accumulator)]

    def extract_output(self, accumulator: list[dict]) -> dict:
        return merge_figures(accumulator)


@beam.typehints.with_input_types(Any)
class DeliverToApi(beam.PTransform):
    """A PCollection of JSON-serialisable records -> the downstream API at ``url``.

    Returns ``{"delivered": ..., "dead_letters": ..., "report": ...}``:

    * ``delivered``: ``{"key", "record", "status": "accepted" | "duplicate", "attempts"}`` per record;
    * ``dead_letters``: ``{"key", "record", "reason", "attempts"}`` per record that failed for good;
    * ``report``: one dict of :func:`derive_figures` for the whole run (once the input ends).

    ``batch_size`` records a request, at most ``rate`` requests a second, ``max_retries`` retries
    after a failure (backoff from ``backoff_initial`` to ``backoff_max`` seconds), ``timeout``
    seconds a request, at most ``max_backlog`` records held. ``key_fn(record)`` gives what the
    idempotency key is hashed from (default: the record). A report line is logged every
    ``report_every`` seconds while records flow (0: only at the end of each bundle).
    """

    def __init__(self, url: str, *, batch_size: int = 20, rate: float = 8.0, max_retries: int = 5,
                 timeout: float = 5.0, key_fn: Callable[[Any], Any] | None = None, max_backlog: int = 100,
                 report_every: float = 1.0, backoff_initial: float = 0.5, backoff_max: float = 8.0):
        super().__init__()
        self._config = DeliveryConfig(url, batch_size=batch_size, rate=rate, max_retries=max_retries,
                                      timeout=timeout, key_fn=key_fn, max_backlog=max_backlog,
                                      backoff_initial=backoff_initial, backoff_max=backoff_max)
        if report_every < 0:
            raise ValueError(f"report_every must not be negative, got {report_every}")
        self._report_every = report_every

    def expand(self, records):
        outputs = (
            records
            | "GlobalWindow" >> beam.WindowInto(windows.GlobalWindows())
            | "Deliver" >> beam.ParDo(_DeliverFn(self._config, self._report_every)).with_outputs(
                DEAD_LETTERS, REPORT, main=DELIVERED)
        )
        reports = outputs[REPORT] | "ReportsWhenInputEnds" >> when_input_ends()
        if records.is_bounded:
            report = reports | "MergeReports" >> beam.CombineGlobally(MergeReports())
        else:
            report = reports | "MergeReports" >> beam.CombineGlobally(MergeReports()).without_defaults()
        return {DELIVERED: outputs[DELIVERED], DEAD_LETTERS: outputs[DEAD_LETTERS], "report": report}
