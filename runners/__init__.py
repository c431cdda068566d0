"""Runner presets: which Beam runner a ``--runner`` name means here, and the checks it needs.

``DirectRunner`` is Beam's ``SwitchingDirectRunner``, which first tries the Prism runner. Prism
downloads a binary from the internet; offline that attempt fails (slowly, with log noise) and
Beam falls back anyway. So this project maps ``DirectRunner`` itself:

* batch (the default): the ``FnApiRunner``, Beam's fast in-process portable runner, exactly
  what the DirectRunner falls back to;
* ``--streaming``: the ``BundleBasedDirectRunner``, the only local runner that applies
  watermarks, triggers and allowed lateness (and runs ``TestStream``);
* an unbounded source (the live feed): the ``FnApiRunner`` again, which runs a splittable DoFn
  that never returns, with the stages fused after it processing each element as it comes (the
  BundleBasedDirectRunner would wait for the source to checkpoint).

Any other ``--runner`` name is handed to Beam unchanged (``PortableRunner``, ``DataflowRunner``,
...); later presets add their own checks here.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineRunner, create_runner

#: Beam matches runner names without regard to case; so do we.
DIRECT_NAMES = ("DirectRunner", "direct", "Direct", "directrunner")
_DIRECT_LOWER = {name.lower() for name in DIRECT_NAMES}


class RunnerError(ValueError):
    """The requested runner does not exist or cannot run with these options."""


def is_direct(name: str | None) -> bool:
    """Whether a ``--runner`` value (None: the default) means the local DirectRunner."""
    return name is None or name.lower() in _DIRECT_LOWER


def direct_runner(options: PipelineOptions, unbounded_source: bool = False) -> PipelineRunner:
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


def make_runner(options: PipelineOptions, unbounded_source: bool = False) -> PipelineRunner:
    """The runner named by ``--runner`` (default ``DirectRunner``); ``unbounded_source``: the
    pipeline reads a live feed (see the module docstring)."""
    name = options.view_as(StandardOptions).runner or "DirectRunner"
    if is_direct(name):
        return direct_runner(options, unbounded_source)
    try:
        return create_runner(name)
    except (ValueError, ImportError, AttributeError) as exc:
        raise RunnerError(f"--runner {name}: {exc}") from None
