"""Build the quotes pipeline from options. Builds only: running is the caller's business.

::

    ReplayHistorical -> NormalizeQuotes -> ComputeMidPrices -> WriteOutputs -> WriteMetrics
                               \\------------- dead letters ---------/
"""

from __future__ import annotations

import os
import time
import uuid
from importlib import resources
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.options import QuoteOptions
from runners import make_runner
from schemas import field_rules, load_schema
from transforms.csv_blocks import HeaderError, read_header
from transforms.fetch import ReplayHistorical
from transforms.midprice import ComputeMidPrices
from transforms.normalize import NormalizeQuotes, price_rule
from transforms.sinks import WriteOrderedText, WriteRunMetrics

#: Output file -> the metrics.json count of its lines. records_in must equal their sum.
OUTPUTS = {
    "mid_prices.log": "mid_prices",
    "errors.log": "latency_filtered",
    "dead_letter.jsonl": "dead_lettered",
}


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
    """The quotes pipeline for ``options``; ``sources`` defaults to expanding ``--input``."""
    config = options.view_as(QuoteOptions)
    if sources is None:
        sources = expand_inputs(config.input or bundled_sample())
    rules = field_rules(load_schema("quote"))
    run_id = run_id or uuid.uuid4().hex[:12]
    started_at = time.time() if started_at is None else started_at

    pipeline = beam.Pipeline(runner=runner or make_runner(options), options=options)
    replay = pipeline | "ReplayHistorical" >> ReplayHistorical(
        sources,
        default_symbol=config.symbol.strip(),
        block_bytes=config.block_bytes,
        show_progress=config.progress == "auto",
    )
    normalized = replay.blocks | "NormalizeQuotes" >> NormalizeQuotes(rules)
    priced = normalized.valid | "ComputeMidPrices" >> ComputeMidPrices(
        config.latency_threshold_ms, mode="historical", scale=price_rule(rules).scale
    )
    published = {
        "mid_prices.log": priced.mid_prices,
        "errors.log": priced.errors,
        "dead_letter.jsonl": normalized.dead_letters,
    } | "WriteOutputs" >> WriteOrderedText(config.output_dir, run_id)
    _ = published | "WriteMetrics" >> WriteRunMetrics(
        config.output_dir,
        replay.counts,
        OUTPUTS,
        extra={"latency_threshold_ms": config.latency_threshold_ms, "inputs": list(sources)},
        started_at=started_at,
    )
    return pipeline
