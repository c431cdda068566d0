"""Command-line options of the beam_pipeline application (Beam ``PipelineOptions`` subclasses)."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.quotes import MAX_LATENCY_MS
from transforms.replay import DEFAULT_BLOCK_BYTES

SOURCES = ("historical",)
JOBS = ("quotes",)


class QuoteOptions(PipelineOptions):
    """Options of the quotes job. Flags use underscores, as Beam's own options do."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--job", default="quotes", choices=JOBS, help="which pipeline to run (default: quotes)"
        )
        parser.add_argument(
            "--source", default="historical", choices=SOURCES,
            help="where quotes come from (default: historical)",
        )
        parser.add_argument(
            "--input", default=None,
            help="historical quote CSV file or glob (default: the bundled sample); "
            "several files are merged in arrival order, ties broken by path order",
        )
        parser.add_argument("--output_dir", default="output", help="where every output file goes (default: ./output)")
        parser.add_argument(
            "--latency_threshold_ms", type=int, default=20,
            help="historical mode: a quote with a greater latency goes to errors.log (default: 20)",
        )
        parser.add_argument(
            "--symbol", default="UNKNOWN", help="symbol for files without a symbol column (default: UNKNOWN)"
        )
        parser.add_argument(
            "--block_bytes", type=int, default=DEFAULT_BLOCK_BYTES,
            help=f"CSV bytes per block travelling through the pipeline (default: {DEFAULT_BLOCK_BYTES})",
        )
        parser.add_argument(
            "--progress", default="auto", choices=("auto", "off"),
            help="print a progress line on stderr for runs longer than a few seconds (default: auto)",
        )


def check(options: QuoteOptions) -> list[str]:
    """Problems with option values that argparse cannot see (empty list when all is well)."""
    problems = []
    if not 0 <= options.latency_threshold_ms < MAX_LATENCY_MS:
        problems.append(
            f"--latency_threshold_ms must be from 0 to {MAX_LATENCY_MS - 1}, got {options.latency_threshold_ms}"
        )
    if not options.symbol.strip():
        problems.append("--symbol must not be empty")
    if options.block_bytes < 1024:
        problems.append(f"--block_bytes must be at least 1024, got {options.block_bytes}")
    if not options.output_dir.strip():
        problems.append("--output_dir must not be empty")
    return problems
