"""``--runner PortableRunner``: the pipeline goes to a job server over the Fn API (gRPC), the
protocol Flink's and Dataflow's workers speak.

``--job_endpoint`` is required: ``embed`` starts a job server in this process, ``HOST:PORT`` is a
running one (Flink's or Spark's job server, say). ``--environment_type`` says where the SDK
workers run; with ``embed`` and no type this preset sets ``LOOPBACK`` (workers in this process),
since Beam's default, ``DOCKER``, needs a docker daemon this machine does not have.
"""

from __future__ import annotations

import logging

from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions
from apache_beam.runners.runner import PipelineRunner

from runners.common import environment_problems, host_port_problem

NAMES = ("PortableRunner", "portable")
LOG = logging.getLogger(__name__)


def check(options: PipelineOptions) -> list[str]:
    """``--job_endpoint`` (embed or HOST:PORT) and a worker environment that can start."""
    portable = options.view_as(PortableOptions)
    endpoint = (portable.job_endpoint or "").strip()
    if not endpoint:
        return ["--runner PortableRunner needs --job_endpoint: embed (a job server in this process) "
                "or HOST:PORT of a running job server"]
    if endpoint != "embed":
        problem = host_port_problem("--job_endpoint", endpoint)
        if problem:
            return [f"{problem} (or embed)"]
    elif not portable.environment_type:
        portable.environment_type = "LOOPBACK"
        LOG.info("--runner PortableRunner --job_endpoint embed: added --environment_type LOOPBACK "
                 "(SDK workers in this process)")
    return environment_problems(options, "PortableRunner")


def create(options: PipelineOptions, unbounded_source: bool = False) -> PipelineRunner:
    from apache_beam.runners.portability.portable_runner import PortableRunner

    return PortableRunner()
