"""Beam YAML: the quotes pipeline's composite transforms, for ``python -m apache_beam.yaml.main``.

Each transform here takes plain keyword arguments (strings, ints, bools), resolves them as the
command line does (:func:`beam_pipeline.config.resolve`), and wraps the project's composite
of the same stage, so a YAML pipeline and ``python -m beam_pipeline`` run the same code::

    ReadQuotes         -> blocks, counts          transforms.sources.stage.ReplayHistorical
    NormalizeQuotes    -> valid, dead_letters     transforms.quotes.stage.NormalizeQuotes
    ComputeMidPrices   -> mid_prices, errors      transforms.quotes.stage.ComputeMidPrices
    WindowQuotes       -> windows, late, counts   transforms.windows.stage.WindowQuotes
    WriteQuoteOutputs  (mid_prices, errors, dead_letters, counts[, windows, late, window_counts])
                       -> summary                 transforms.sinks.stage.WriteOrderedText + WriteRunMetrics

Their outputs are named, as YAML refers to them (``Normalize.valid``, ``MidPrices.errors``, ...).
The elements are the project's own blocks and text chunks (Arrow batches, finished lines), not
schema'd Beam Rows: Beam YAML passes any PCollection between transforms, but its built-in
transforms (MapToFields, Filter, Sql, ...) only make sense on Rows, so they do not apply here.

``WriteQuoteOutputs`` writes every file and ``metrics.json`` exactly as the CLI's default
historical job does: what metrics.json says about the run (the inputs, the latency threshold, the
windowing, the dedup horizon) is read from the transforms above that produced its inputs, so it
cannot disagree with what they did.

How Beam YAML finds these transforms
------------------------------------
A ``providers:`` entry of ``type: python`` with an empty ``config`` (no ``packages``) makes an
``InlineProvider``: each name under ``transforms:`` is a fully qualified Python name, imported in
the running process (``examples/quotes.yaml``)::

    providers:
      - type: python
        config: {}
        transforms:
          ReadQuotes: beam_pipeline.yaml_transforms.ReadQuotes
          ...

That is the mechanism that works offline: ``type: pythonPackage`` (or ``type: python`` with
``packages``) starts an expansion service in a new virtualenv that pip-installs the packages, and
``PyTransform`` works too but needs ``constructor:``/``kwargs:`` on every step. From Python,
:func:`providers` gives the same provider for ``apache_beam.yaml.yaml_transform.YamlTransform``.

Running: Beam YAML builds ``beam.Pipeline(options=...)`` itself, so ``--runner`` picks the runner.
``--runner=beam_pipeline.yaml_transforms.QuotesRunner`` is the CLI's DirectRunner preset
(:mod:`runners.direct`: the FnApiRunner in batch); Beam's own ``DirectRunner`` works too, after
first trying Prism (offline: a failed download, logged at INFO, then its local fallback).

Beam YAML needs ``docstring-parser`` (imported by ``apache_beam.yaml.yaml_provider``) and, for
its default ``--json_schema_validation=generic``, ``jsonschema``: both come with
``apache-beam[yaml]``. Streaming (``--streaming``) and per-tenant partitions are not offered here.
"""

from __future__ import annotations

import time
import uuid
from collections import deque

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.runners.runner import PipelineRunner

from beam_pipeline.config import QuotesJob, resolve
from beam_pipeline.options import parse_options
from beam_pipeline.pipeline import merge_counts, write_files
from transforms.accounting import combine
from transforms.quotes import normalize
from transforms.quotes import stage as quote_stage
from transforms.sinks.stage import WriteRunMetrics
from transforms.sources import stage as source_stage
from transforms.sources.replay import DEFAULT_BLOCK_BYTES
from transforms.windows import stage as window_stage
from transforms.windows.logic import duration_text

__all__ = [
    "ComputeMidPrices",
    "NormalizeQuotes",
    "QuotesRunner",
    "ReadQuotes",
    "TRANSFORMS",
    "WindowQuotes",
    "WriteQuoteOutputs",
    "providers",
]

def _resolved(**flags) -> QuotesJob:
    """The CLI's job for these flags (None: the default), resolved as the CLI resolves it; raises
    ValueError (:class:`beam_pipeline.config.OptionsError`) with every problem on one line."""
    return resolve(parse_options([f"--{name}={value}" for name, value in flags.items() if value is not None]))


def _upstream(pcoll: beam.PCollection, kind: type):
    """The nearest transform of type ``kind`` that ``pcoll`` comes from (None: none), looking at
    the transform that produced it, its enclosing composites, then their inputs, and so on."""
    queue, seen = deque([pcoll]), set()
    while queue:
        current = queue.popleft()
        applied = current.producer
        while applied is not None:
            if isinstance(applied.transform, kind):
                return applied.transform
            for value in applied.inputs:
                if isinstance(value, beam.PCollection) and id(value) not in seen:
                    seen.add(id(value))
                    queue.append(value)
            applied = applied.parent
    return None


class ReadQuotes(beam.PTransform):
    """Historical quote files replayed in arrival order (the CLI's ``--input`` and its flags).

    Outputs ``blocks`` (quote blocks, for NormalizeQuotes) and ``counts`` (one dict of reader
    statistics, for WriteQuoteOutputs).

    Args:
        input: a quote CSV (or .avro) file or glob; default: the bundled sample.
        symbol: the symbol of rows in files without a symbol column.
        block_bytes: about how much CSV goes into one block.
        reader_schema_version: for .avro inputs, the quote schema version to read them with.
        dedup_horizon: drop a quote whose CSV line came within this much arrival time before,
            e.g. 10m (default: off).
        progress: print a progress line on stderr for long runs.
    """

    _yaml_requires_inputs = False

    def __init__(self, input: str | None = None, symbol: str = "UNKNOWN",  # noqa: A002  (the CLI's name)
                 block_bytes: int = DEFAULT_BLOCK_BYTES, reader_schema_version: int | None = None,
                 dedup_horizon: str | None = None, progress: bool = False):
        super().__init__()
        source = _resolved(input=input, symbol=symbol, block_bytes=block_bytes,
                           reader_schema_version=reader_schema_version, dedup_horizon=dedup_horizon).source
        self.sources = list(source.inputs)  # a wrong file has failed already, not in the middle of the run
        self.dedup_horizon_us = source.dedup_horizon_us
        self._replay = source_stage.ReplayHistorical(
            self.sources,
            default_symbol=source.default_symbol,
            block_bytes=source.block_bytes,
            show_progress=bool(progress),
            open_file=source.opener(),
            dedup_horizon_us=self.dedup_horizon_us,
        )

    def expand(self, pbegin):
        replay = pbegin | "ReplayHistorical" >> self._replay
        return {"blocks": replay.blocks, "counts": replay[source_stage.COUNTS]}


class NormalizeQuotes(beam.PTransform):
    """Quote blocks checked against the quote schema and the domain rules.

    Outputs ``valid`` (typed quote blocks) and ``dead_letters`` (``dead_letter.jsonl`` chunks).
    """

    def __init__(self):
        super().__init__()
        self._normalize = quote_stage.NormalizeQuotes(_resolved().quotes.rules)

    def expand(self, blocks):
        normalized = blocks | "NormalizeQuotes" >> self._normalize
        return {"valid": normalized.valid, "dead_letters": normalized[normalize.DEAD_LETTERS]}


class ComputeMidPrices(beam.PTransform):
    """Valid quote blocks -> ``mid_prices`` and ``errors`` (``mid_prices.log``, ``errors.log`` chunks).

    Args:
        latency_threshold_ms: a historical quote with a greater latency goes to ``errors``.
    """

    def __init__(self, latency_threshold_ms: int = 20):
        super().__init__()
        quotes = _resolved(latency_threshold_ms=latency_threshold_ms).quotes
        self.latency_threshold_ms = quotes.latency_threshold_ms
        self._compute = quote_stage.ComputeMidPrices(self.latency_threshold_ms, scale=quotes.scale)

    def expand(self, valid):
        priced = valid | "ComputeMidPrices" >> self._compute
        return {"mid_prices": priced.mid_prices, "errors": priced[quote_stage.ERRORS]}


def WindowQuotes(window: str = "fixed:1s", allowed_lateness: str | None = None,  # noqa: N802 (a transform's name)
                 trigger: str | None = None, accumulation: str | None = None) -> window_stage.WindowQuotes:
    """Valid quote blocks -> per-symbol event-time windows (the CLI's ``--window``, batch).

    Outputs ``windows`` (``windows.jsonl`` chunks), ``late`` (``late.jsonl`` chunks: empty in batch,
    where every quote is on time) and ``counts`` (the window counts, for WriteQuoteOutputs'
    ``window_counts``). The input must come from ReadQuotes (late lines name its files). This is
    the CLI's own window stage, :class:`transforms.windows.stage.WindowQuotes`, from YAML's flags.

    Args:
        window: fixed:SIZE, sliding:SIZE,PERIOD or session:GAP, e.g. fixed:1s.
        allowed_lateness: how long after its end a window still takes late quotes (default: 0ms).
        trigger: watermark (a batch run fires each window once, on time).
        accumulation: discarding (default) or accumulating.
    """
    job = _resolved(window=window, allowed_lateness=allowed_lateness, trigger=trigger, accumulation=accumulation)
    return window_stage.WindowQuotes(job.window, job.quotes.scale, sources=_read_sources)  # lag None: batch


def _read_sources(valid: beam.PCollection) -> list[str]:
    """The files of the ReadQuotes that ``valid`` comes from (late lines name them)."""
    read = _upstream(valid, ReadQuotes)
    if read is None:
        raise ValueError("WindowQuotes: its input must come from ReadQuotes (through NormalizeQuotes)")
    return read.sources


class WriteQuoteOutputs(beam.PTransform):
    """The output files and ``metrics.json`` in ``output_dir``, as ``python -m beam_pipeline`` writes them.

    Named inputs: ``mid_prices`` and ``errors`` (ComputeMidPrices), ``dead_letters``
    (NormalizeQuotes), ``counts`` (ReadQuotes); with a window stage also ``windows``, ``late`` and
    ``window_counts`` (WindowQuotes). Outputs ``summary``: the one metrics dict, once written.

    Args:
        output_dir: where every output file goes (created if missing).
    """

    _INPUTS = {"mid_prices": "mid_prices.log", "errors": "errors.log", "dead_letters": "dead_letter.jsonl"}
    _WINDOW_INPUTS = {"windows": "windows.jsonl", "late": "late.jsonl"}

    def __init__(self, output_dir: str = "output"):
        super().__init__()
        self.output_dir = _resolved(output_dir=output_dir).deliver.output_dir
        self._started_at = time.time()
        self._run_id = uuid.uuid4().hex[:12]

    def expand(self, inputs):
        if not isinstance(inputs, dict):
            raise ValueError("WriteQuoteOutputs takes named inputs: mid_prices, errors, dead_letters, counts, ...")
        windowed = "windows" in inputs or "late" in inputs or "window_counts" in inputs
        expected = {*self._INPUTS, "counts", *((*self._WINDOW_INPUTS, "window_counts") if windowed else ())}
        if set(inputs) != expected:
            missing, unknown = sorted(expected - set(inputs)), sorted(set(inputs) - expected)
            raise ValueError(f"WriteQuoteOutputs: inputs missing {missing or 'none'}, unknown {unknown or 'none'} "
                             f"(it takes {', '.join(sorted(expected))})")
        read = _upstream(inputs["counts"], ReadQuotes)
        mids = _upstream(inputs["errors"], ComputeMidPrices)
        if read is None or mids is None:
            raise ValueError("WriteQuoteOutputs: counts must come from ReadQuotes and errors from ComputeMidPrices")
        outputs = {name: inputs[key] for key, name in self._INPUTS.items()}
        parts = [quote_stage.ComputeMidPrices.ACCOUNTING, quote_stage.NormalizeQuotes.ACCOUNTING]
        counts = [inputs["counts"]]
        extra = {
            "source": "historical",
            "latency_threshold_ms": mids.latency_threshold_ms,
            "inputs": list(read.sources),
            "streaming": False,
        }
        if read.dedup_horizon_us:
            parts.append(source_stage.ReplayHistorical.DEDUP_ACCOUNTING)
            extra["dedup_horizon"] = duration_text(read.dedup_horizon_us)
        if windowed:
            stage = _upstream(inputs["windows"], window_stage.WindowQuotes)
            if stage is None:
                raise ValueError("WriteQuoteOutputs: windows must come from WindowQuotes")
            outputs.update({name: inputs[key] for key, name in self._WINDOW_INPUTS.items()})
            parts.append(stage.accounting)
            counts.append(inputs["window_counts"])
            extra["windowing"] = stage.config.as_dict()
        if not FileSystems.exists(self.output_dir):
            FileSystems.mkdirs(self.output_dir)  # as the CLI does before the run
        published = write_files(outputs, self.output_dir, False, self._run_id, False)
        summary = published | "WriteMetrics" >> WriteRunMetrics(
            self.output_dir,
            merge_counts(*counts) if len(counts) > 1 else counts[0],
            combine(parts),
            extra=extra,
            started_at=self._started_at,
        )
        return {"summary": summary}


#: YAML type name -> transform, as examples/quotes.yaml's ``providers:`` block lists them.
TRANSFORMS = {
    "ReadQuotes": ReadQuotes,
    "NormalizeQuotes": NormalizeQuotes,
    "ComputeMidPrices": ComputeMidPrices,
    "WindowQuotes": WindowQuotes,
    "WriteQuoteOutputs": WriteQuoteOutputs,
}


def providers() -> dict:
    """``{type: provider}`` for ``YamlTransform(spec, providers=providers())`` or
    ``expand_pipeline(..., providers=providers())``: the same InlineProvider as the YAML block."""
    from apache_beam.yaml.yaml_provider import InlineProvider

    provider = InlineProvider(dict(TRANSFORMS), no_input_transforms=("ReadQuotes",))
    return {name: [provider] for name in TRANSFORMS}


class QuotesRunner(PipelineRunner):
    """``--runner=beam_pipeline.yaml_transforms.QuotesRunner``: the CLI's DirectRunner preset
    (:func:`runners.direct.create`, never Prism), for pipelines whose runner Beam creates by name."""

    def run_pipeline(self, pipeline, options):
        from runners import direct

        return direct.create(options).run_pipeline(pipeline, options)

