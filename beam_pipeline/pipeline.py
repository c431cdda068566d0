"""Build the quotes pipeline from options. Builds only: running is the caller's business.

::

    ReplayHistorical -> NormalizeQuotes -> ComputeMidPrices -----------------> WriteOutputs -> WriteMetrics
    (or, --streaming,          |  \\------------- dead letters ----------------/
     ReplayAsStream)           \\-> WindowQuoteBlocks -> panes, late ----------/   (with --window)
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from importlib import resources
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_pipeline.options import QuoteOptions, watermark_lag, window_config
from runners import make_runner
from schemas import field_rules, load_schema
from transforms.csv_blocks import HeaderError, read_header
from transforms.fetch import ReplayAsStream, ReplayHistorical, plan_stream_replay
from transforms.midprice import ComputeMidPrices
from transforms.normalize import NormalizeQuotes, price_rule
from transforms.sinks import MergeCounts, WriteOrderedText, WriteRunMetrics, when_input_ends
from transforms.window import LateToText, PanesToText, WindowQuoteBlocks
from transforms.windowing import duration_text

LOG = logging.getLogger(__name__)

#: Output file -> the metrics.json count of its lines. records_in must equal their sum.
OUTPUTS = {
    "mid_prices.log": "mid_prices",
    "errors.log": "latency_filtered",
    "dead_letter.jsonl": "dead_lettered",
}
#: The same for the window stage (with --window); records_in = quotes in panes + late + dead letters.
WINDOW_OUTPUTS = {
    "windows.jsonl": "windows_emitted",
    "late.jsonl": "late_dropped",
}


#: What one step of a streaming replay costs on the BundleBasedDirectRunner (2 cores, measured by
#: benchmarks/window_throughput.py): only used to tell the user how long to expect.
SECONDS_PER_STEP = 0.25


class InputError(ValueError):
    """The input files cannot be found or read as quote CSVs."""


def bundled_sample(name: str = "historical_sample.csv") -> str:
    """Path of a sample file shipped in ``beam_pipeline/data``."""
    return str(resources.files("beam_pipeline") / "data" / name)


def expand_inputs(pattern: str) -> list[str]:
    """The files a path or glob names, sorted (the tie-break order); raises :class:`InputError`."""
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:  # Beam raises BeamIOError or a filesystem-specific error
        raise InputError(f"--input {pattern}: {exc}") from None
    paths = sorted(m.path for m in matches if not os.path.isdir(m.path))
    if not paths:
        raise InputError(f"--input {pattern}: no such file")
    return paths


def check_headers(paths: Sequence[str]) -> None:
    """Read every file's header now, so a wrong file fails before the pipeline starts."""
    for path in paths:
        try:
            with FileSystems.open(path) as stream:
                read_header(stream, path)
        except HeaderError as exc:
            raise InputError(str(exc)) from None
        except OSError as exc:
            raise InputError(f"{path}: {exc}") from None


def build_pipeline(
    options: PipelineOptions,
    sources: Sequence[str] | None = None,
    *,
    runner=None,
    run_id: str | None = None,
    started_at: float | None = None,
) -> beam.Pipeline:
    """The quotes pipeline for ``options``; ``sources`` defaults to expanding ``--input``.

    With ``--streaming`` the input files are read now, to plan the streaming replay (see
    :func:`transforms.fetch.plan_stream_replay`).
    """
    config = options.view_as(QuoteOptions)
    streaming = bool(options.view_as(StandardOptions).streaming)
    windowing = window_config(config, streaming)
    lag_us = watermark_lag(config) if streaming else None
    if sources is None:
        sources = expand_inputs(config.input or bundled_sample())
    rules = field_rules(load_schema("quote"))
    scale = price_rule(rules).scale
    run_id = run_id or uuid.uuid4().hex[:12]
    started_at = time.time() if started_at is None else started_at
    default_symbol = config.symbol.strip()

    pipeline = beam.Pipeline(runner=runner or make_runner(options), options=options)
    if streaming:
        plan = plan_stream_replay(
            sources,
            lag_us=lag_us,
            window=windowing.window if windowing else None,
            early_delay_us=windowing.trigger.early_delay_us if windowing else None,
            default_symbol=default_symbol,
            block_bytes=config.block_bytes,
        )
        replay = pipeline | "ReplayHistoricalStream" >> ReplayAsStream(plan, sources)
        stream_steps = {"row_slices": plan.row_steps, "watermark_steps": plan.watermark_steps}
        LOG.info(
            "streaming replay: %s row slices and %s watermark steps; the local runner takes about %.2f s "
            "a step (2 cores), so expect roughly %.0f s",
            plan.row_steps, plan.watermark_steps, SECONDS_PER_STEP, SECONDS_PER_STEP * plan.row_steps,
        )
    else:
        replay = pipeline | "ReplayHistorical" >> ReplayHistorical(
            sources,
            default_symbol=default_symbol,
            block_bytes=config.block_bytes,
            show_progress=config.progress == "auto",
        )
    normalized = replay["blocks"] | "NormalizeQuotes" >> NormalizeQuotes(rules)
    priced = normalized.valid | "ComputeMidPrices" >> ComputeMidPrices(config.latency_threshold_ms, scale=scale)
    outputs = {
        "mid_prices.log": priced.mid_prices,
        "errors.log": priced.errors,
        "dead_letter.jsonl": normalized.dead_letters,
    }
    metric_names = dict(OUTPUTS)
    balances = {"balanced": list(OUTPUTS.values())}
    extra = {"latency_threshold_ms": config.latency_threshold_ms, "inputs": list(sources), "streaming": streaming}
    counts = replay["counts"]
    if windowing:
        windowed = normalized.valid | "WindowQuotes" >> WindowQuoteBlocks(windowing, lag_us)
        panes = windowed["panes"] | "PanesToText" >> PanesToText(scale, windowing.accumulation)
        outputs["windows.jsonl"] = panes["chunks"]
        outputs["late.jsonl"] = windowed["late"] | "LateToText" >> LateToText(sources, windowing, scale)
        metric_names.update(WINDOW_OUTPUTS)
        in_panes = "quotes_in_panes" if windowing.accumulation == "discarding" else "windowed_quotes"
        balances["windows_balanced"] = [in_panes, "late_dropped", "dead_lettered"]
        counts = (
            (counts, windowed["counts"], panes["counts"])
            | "AllCounts" >> beam.Flatten()
            | "WhenCountsEnd" >> when_input_ends()
            | "MergeCounts" >> beam.CombineGlobally(MergeCounts()).without_defaults()
        )
        extra["windowing"] = windowing.as_dict()
    if streaming:
        extra["stream_steps"] = stream_steps
        if windowing:
            extra["watermark_lag"] = duration_text(lag_us)

    published = outputs | "WriteOutputs" >> WriteOrderedText(config.output_dir, run_id)
    _ = published | "WriteMetrics" >> WriteRunMetrics(
        config.output_dir,
        counts,
        metric_names,
        extra=extra,
        started_at=started_at,
        balances=balances,
        tally_names={"windows.jsonl": "panes_by_timing"},
    )
    return pipeline
