"""Runner presets: what each ``--runner`` name means here, the flags it needs, and the checks on them.

One module per runner, each with the same three names:

* ``NAMES``: the ``--runner`` values it answers to (any case; the first is the canonical one);
* ``check(options) -> list[str]``: one line per problem with the user's flags (empty: fine). A check
  may also fill in a flag the runner needs and the user left out (logged), such as
  ``--environment_type LOOPBACK`` for an embedded job server;
* ``create(options, unbounded_source) -> PipelineRunner``: the runner to run with.

=================  =================  =====================================================
``--runner``       preset             here (offline, 2 cores)
=================  =================  =====================================================
DirectRunner       :mod:`.direct`     FnApiRunner (batch), BundleBasedDirectRunner (streaming)
PrismRunner        :mod:`.prism`      a local Prism binary, else the DirectRunner (logged once)
PortableRunner     :mod:`.portable`   ``--job_endpoint embed --environment_type LOOPBACK``
DaskRunner         :mod:`.dask`       a ``distributed`` cluster on 127.0.0.1 (``.[dask]``)
FlinkRunner        :mod:`.flink`      checked and translated only (docs/runners.md)
DataflowRunner     :mod:`.dataflow`   checked and translated only (docs/runners.md)
=================  =================  =====================================================

Any other name (a fully qualified ``PipelineRunner`` class, say) is handed to Beam unchanged.
"""

from __future__ import annotations

import logging
from types import ModuleType

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineRunner, create_runner

from runners import dask, dataflow, direct, flink, portable, prism
from runners.common import RunnerError

__all__ = ["PRESETS", "RunnerError", "add_help", "check", "is_direct", "make_runner", "portability_problems", "preset_for",
           "real_watermarks", "remote_workers"]

LOG = logging.getLogger(__name__)

#: Every preset, in the order the docs list them.
PRESETS: tuple[ModuleType, ...] = (direct, prism, portable, dask, flink, dataflow)
_BY_NAME = {name.lower(): module for module in PRESETS for name in module.NAMES}
#: Kept for callers that list the DirectRunner's names.
DIRECT_NAMES = direct.NAMES


def runner_name(options: PipelineOptions) -> str:
    """``--runner`` as given, ``DirectRunner`` when absent."""
    return options.view_as(StandardOptions).runner or "DirectRunner"


def preset_for(name: str | None) -> ModuleType | None:
    """The preset module for a ``--runner`` value (None: the default), or None if it has none."""
    return _BY_NAME.get((name or "DirectRunner").lower())


def is_direct(name: str | None) -> bool:
    """Whether a ``--runner`` value (None: the default) means the local DirectRunner."""
    return preset_for(name) is direct


#: Presets whose runner moves the watermark while a source runs, so that streaming runs read
#: history as a real unbounded source (:mod:`transforms.sources.watermarks`) and live windows fire
#: as the feed goes on. Flink would be one; it cannot be run here (docs/deploy.md).
REAL_WATERMARKS = (prism,)


def real_watermarks(name: str | None) -> bool:
    """Whether a ``--runner`` value names a runner in :data:`REAL_WATERMARKS`."""
    return preset_for(name) in REAL_WATERMARKS


#: Presets whose runner receives the portable proto, which :mod:`runners.portability` checks.
PORTABLE = (prism, portable, flink, dataflow)


def portability_problems(pipeline, options: PipelineOptions) -> list[str]:
    """For a runner that receives the portable proto: each transform in ``pipeline`` it could not run
    (see :mod:`runners.portability`), one line each; empty for the others."""
    name = runner_name(options)
    if preset_for(name) not in PORTABLE:
        return []
    from runners.portability import non_portable_transforms, portable_proto

    return [f"--runner {name} cannot run {item.name}: {item.reason} ({item.urn})"
            for item in non_portable_transforms(portable_proto(pipeline, options))]


def remote_workers(options: PipelineOptions) -> bool:
    """Whether ``--runner`` runs the workers on other machines, which cannot open this one's files."""
    return preset_for(runner_name(options)) is dataflow


def add_help(parser) -> None:
    """Add the presets' own flags (``--dask_address``, ...) to an argparse ``parser``, for --help."""
    for cls in PipelineOptions.__subclasses__():
        if cls.__module__.startswith(f"{__name__}."):
            cls._add_argparse_args(parser)  # pylint: disable=protected-access


def check(options: PipelineOptions) -> list[str]:
    """Problems with the flags ``--runner`` needs (empty when all is well, or for a runner without a
    preset: Beam judges those)."""
    preset = preset_for(runner_name(options))
    return preset.check(options) if preset else []


def make_runner(options: PipelineOptions, unbounded_source: bool = False) -> PipelineRunner:
    """The runner named by ``--runner`` (default ``DirectRunner``), after its preset's checks;
    ``unbounded_source``: the pipeline reads a live feed. Raises :class:`RunnerError` with every
    problem on one line."""
    name = runner_name(options)
    preset = preset_for(name)
    if preset is None:
        try:
            return create_runner(name)
        except (ValueError, ImportError, AttributeError) as exc:
            raise RunnerError(f"--runner {name}: {exc}") from None
    problems = preset.check(options)
    if problems:
        raise RunnerError("; ".join(problems))
    runner = preset.create(options, unbounded_source)
    LOG.info("--runner %s: running on %s", name, type(runner).__name__)
    return runner


# Kept importable from here: tests and the live-feed code build the local runner directly.
direct_runner = direct.create
