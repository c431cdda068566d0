"""``--runner DirectRunner`` (the default): a local runner chosen explicitly, never Prism.

Beam's own ``DirectRunner`` is the ``SwitchingDirectRunner``: it first tries the Prism runner,
which downloads a binary from GitHub; offline that attempt fails and Beam falls back, with the
reason logged at INFO only. Here the choice is made up front, and logged:

* batch (the default): the ``FnApiRunner``, Beam's in-process portable runner, exactly what the
  DirectRunner falls back to. ``--direct_running_mode multi_processing --direct_num_workers N``
  runs its workers as N subprocesses over gRPC;
* ``--streaming``: the ``BundleBasedDirectRunner``, the only local runner that applies
  watermarks, triggers and allowed lateness (and runs ``TestStream``);
* an unbounded source (the live feed): the ``FnApiRunner`` again, which runs a splittable DoFn
  that never returns, with the stages fused after it processing each element as it comes (the
  BundleBasedDirectRunner would wait for the source to checkpoint).

Ask for Prism with ``--runner PrismRunner`` (:mod:`runners.prism`).
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineRunner

NAMES = ("DirectRunner", "direct")


def check(options: PipelineOptions) -> list[str]:
    """``--direct_num_workers`` must be positive (0 means "one per core" to Beam)."""
    workers = options.view_as(DirectOptions).direct_num_workers
    if workers is not None and workers < 0:
        return [f"--direct_num_workers must be 0 (one per core) or more, got {workers}"]
    return []


def create(options: PipelineOptions, unbounded_source: bool = False) -> PipelineRunner:
    """The local runner for these options (see the module docstring)."""
    if options.view_as(StandardOptions).streaming and not unbounded_source:
        from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

        return BundleBasedDirectRunner()
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # As Beam's own DirectRunner does: hand the options to the SDK harness.
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)
