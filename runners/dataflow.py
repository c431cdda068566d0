"""``--runner DataflowRunner``: checked here, run on Google Cloud Dataflow (docs/runners.md).

Dataflow needs ``--project``, ``--region`` and a ``gs://`` ``--temp_location``. Its workers install
this package from ``--setup_file``: when the flag is absent and this is a source checkout, the
preset points it at this repository's ``setup.py``; a given one must be that file (a custom
worker image, ``--sdk_container_image``, may replace it). Submitting needs Beam's GCP extra
(``pip install '.[dataflow]'``) and credentials, neither of which this machine has.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions, WorkerOptions
from apache_beam.runners.runner import PipelineRunner, create_runner

from runners.common import RunnerError

NAMES = ("DataflowRunner", "dataflow")
LOG = logging.getLogger(__name__)

#: This repository's setup.py, when running from a source checkout.
REPO_SETUP = Path(__file__).resolve().parent.parent / "setup.py"
PACKAGE_NAME = "beam_pipeline"

_PROJECT = re.compile(r"^(?:[a-z][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+(?:-[a-z]+)+[0-9]+$")
_GCS = re.compile(r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9](?:/.*)?$")
_JOB_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")


def is_this_package(setup_file: Path) -> bool:
    """Whether ``setup_file`` is a setup.py that builds this package."""
    try:
        text = setup_file.read_text(encoding="utf-8")
    except OSError:
        return False
    return setup_file.name == "setup.py" and re.search(rf"""name\s*=\s*["']{PACKAGE_NAME}["']""", text) is not None


def _setup_problems(options: PipelineOptions) -> list[str]:
    setup = options.view_as(SetupOptions)
    if setup.setup_file is None:
        if options.view_as(WorkerOptions).sdk_container_image:
            return []  # a custom worker image carries the package
        if not is_this_package(REPO_SETUP):
            return ["--runner DataflowRunner needs --setup_file PATH/setup.py (this package's, for the workers "
                    "to install) or --sdk_container_image"]
        setup.setup_file = str(REPO_SETUP)
        LOG.info("--runner DataflowRunner: added --setup_file %s (workers install this package)", REPO_SETUP)
        return []
    path = Path(setup.setup_file)
    if not path.is_file():
        return [f"--setup_file {setup.setup_file}: no such file"]
    if not is_this_package(path):
        return [f"--setup_file {setup.setup_file} must be the setup.py of {PACKAGE_NAME} (e.g. {REPO_SETUP})"]
    return []


def check(options: PipelineOptions) -> list[str]:
    cloud = options.view_as(GoogleCloudOptions)
    problems = []
    if not cloud.project:
        problems.append("--runner DataflowRunner needs --project PROJECT_ID")
    elif not _PROJECT.match(cloud.project):
        problems.append(f"--project {cloud.project!r} is not a Google Cloud project id")
    if not cloud.region:
        problems.append("--runner DataflowRunner needs --region (e.g. europe-west1)")
    elif not _REGION.match(cloud.region):
        problems.append(f"--region {cloud.region!r} is not a Google Cloud region (e.g. europe-west1)")
    if not cloud.temp_location:
        problems.append("--runner DataflowRunner needs --temp_location gs://BUCKET/PATH")
    for flag, value in (("--temp_location", cloud.temp_location), ("--staging_location", cloud.staging_location)):
        if value and not _GCS.match(value):
            problems.append(f"{flag} must be a gs://BUCKET/PATH, got {value!r}")
    if cloud.job_name and not _JOB_NAME.match(cloud.job_name):
        problems.append(f"--job_name {cloud.job_name!r}: lower-case letters, digits and '-', starting with a letter")
    return problems + _setup_problems(options)


def create(options: PipelineOptions, unbounded_source: bool = False) -> PipelineRunner:
    if importlib.util.find_spec("google.auth") is None:  # what Dataflow's API client imports first
        raise RunnerError("--runner DataflowRunner needs Beam's GCP extra: pip install '.[dataflow]'")
    return create_runner("DataflowRunner")
