"""``--runner FlinkRunner``: checked here, run on a Flink cluster (docs/runners.md).

Beam's FlinkRunner starts a Flink job server from a jar it downloads from Maven Central (or
``--flink_job_server_jar PATH``) and submits to ``--flink_master``; the SDK workers run where
``--environment_type`` says. Both flags are required here: Beam's defaults (``[auto]``, an
embedded Flink, and ``DOCKER`` workers) are rarely what a deployment means.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions
from apache_beam.runners.runner import PipelineRunner, create_runner

from runners.common import environment_problems, given, host_port_problem

NAMES = ("FlinkRunner", "flink")
#: ``--flink_master`` values that start an embedded Flink instead of naming a cluster.
EMBEDDED_MASTERS = ("[local]", "[auto]")


def check(options: PipelineOptions) -> list[str]:
    problems = []
    master = options.view_as(FlinkRunnerOptions).flink_master
    if not given(options, "flink_master"):
        problems.append("--runner FlinkRunner needs --flink_master HOST:PORT (the Flink REST endpoint, "
                        "e.g. localhost:8081) or [local]")
    elif master not in EMBEDDED_MASTERS:
        problem = host_port_problem("--flink_master", master)
        if problem:
            problems.append(f"{problem} (or [local])")
    return problems + environment_problems(options, "FlinkRunner")


def create(options: PipelineOptions, unbounded_source: bool = False) -> PipelineRunner:
    return create_runner("FlinkRunner")
