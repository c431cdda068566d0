"""``--runner PrismRunner``: Beam's Go-based local portable runner, when its binary is at hand.

Prism is a binary Beam downloads from a GitHub release on first use (into
``~/.apache_beam/cache/prism/bin``). Beam's own ``DirectRunner`` tries it first and, offline, falls
back after a failed download with the reason at INFO; here ``--runner DirectRunner`` never tries
it (:mod:`runners.direct`), and ``--runner PrismRunner`` decides before the run:

1. a local binary or zip: ``--prism_location PATH``, else the one ``make prism`` builds from the Beam
   Go SDK at this Beam version (:func:`built_binary`, no download at run time), else Beam's cache
   for this Beam version and platform: run on Prism;
2. otherwise, if the download host answers within :data:`PROBE_SECONDS`: run on Prism, which
   downloads it;
3. otherwise: one warning saying why, and the run goes on on the DirectRunner's local runner.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
from typing import Callable
from urllib.parse import urlsplit

from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions, PortableOptions, PrismRunnerOptions
from apache_beam.runners.runner import PipelineRunner
from apache_beam.version import __version__ as BEAM_VERSION

from runners import direct

NAMES = ("PrismRunner", "prism")
LOG = logging.getLogger(__name__)

#: How long to wait for the download host before falling back: offline, a DNS failure is immediate.
PROBE_SECONDS = 3.0
BIN_CACHE = os.path.expanduser("~/.apache_beam/cache/prism/bin")
#: Where ``make prism`` installs the binary it builds: ``<root>/v<beam version>/prism``
#: (``BEAM_PIPELINE_PRISM_DIR`` overrides the root).
BUILD_ROOT = os.environ.get("BEAM_PIPELINE_PRISM_DIR") or os.path.expanduser("~/.cache/beam_pipeline/prism")
#: The Go command ``make prism`` installs, at the tag of the pinned apache-beam.
GO_PACKAGE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
_warned: set[str] = set()


def release_url(version: str = BEAM_VERSION) -> str:
    """Where Beam downloads Prism for this Beam version and platform."""
    from apache_beam.runners.portability.prism_runner import PrismJobServer

    tag = f"v{version}"
    return PrismJobServer._construct_download_url(tag, tag, platform.system(), platform.machine())  # pylint: disable=protected-access


def built_binary(version: str = BEAM_VERSION, root: str | None = None) -> str | None:
    """The binary ``make prism`` built for this Beam version, or None if it has not been built."""
    path = os.path.join(root or BUILD_ROOT, f"v{version}", "prism")
    return path if os.access(path, os.X_OK) else None


def local_binary(options: PipelineOptions, cache: str = BIN_CACHE, build_root: str | None = None) -> str | None:
    """A Prism binary or zip on this machine for these options, or None (it would be downloaded)."""
    location = options.view_as(PrismRunnerOptions).prism_location
    if location and not urlsplit(location).scheme:
        return location if os.path.exists(location) else None
    if location:
        return None  # a URL: Beam downloads it every time
    built = built_binary(root=build_root)
    if built:
        return built
    try:
        cached = os.path.join(cache, os.path.basename(release_url()))
    except ValueError:  # no release for this platform
        return None
    return cached if os.path.exists(cached) else None


def reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether ``url``'s host accepts a TCP connection within ``timeout`` seconds."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


def check(options: PipelineOptions) -> list[str]:
    location = options.view_as(PrismRunnerOptions).prism_location
    if location and not urlsplit(location).scheme and not os.path.exists(location):
        return [f"--prism_location {location}: no such file"]
    return []


#: Beam's experiment for a Prism job server of the run's own (see :func:`own_job_server`).
OWN_JOB_SERVER = "disable_prism_server_singleton"


def own_job_server(options: PipelineOptions) -> None:
    """Ask Beam for a Prism job server of this run's own, not its process-wide singleton.

    Beam keeps one Prism job server per process, and its ``DirectRunner`` tries Prism first: once a
    ``--runner PrismRunner`` run has started the singleton from a local binary, every later pipeline
    of the process that asks for Beam's DirectRunner would run on that Prism, not on the local runner
    it gets offline. The run's own server stops when the process exits, as the singleton does.
    """
    debug = options.view_as(DebugOptions)
    if not debug.lookup_experiment(OWN_JOB_SERVER):
        debug.add_experiment(OWN_JOB_SERVER)


def streaming_problems(options: PipelineOptions) -> list[str]:
    """A streaming run needs Prism itself (the fallback has no real watermark) and its SDK workers in
    this process (LOOPBACK, Beam's default for Prism), where the run's stop signal lives."""
    problems = []
    if not local_binary(options):
        problems.append("--runner PrismRunner streams with real watermarks only on Prism itself: build it with "
                        "make prism (or give --prism_location PATH); the DirectRunner it falls back to has none")
    environment = options.view_as(PortableOptions).environment_type
    if environment and environment.upper() != "LOOPBACK":
        problems.append(f"--environment_type {environment}: a streaming run on Prism runs its SDK workers in this "
                        "process (LOOPBACK), where its stop signal and sinks live")
    return problems


def create(
    options: PipelineOptions, unbounded_source: bool = False, can_download: Callable[[str], bool] | None = None
) -> PipelineRunner:
    """Prism when its binary is here or can be fetched now (``can_download``, default
    :func:`reachable`), else the DirectRunner's local runner (one warning per process and reason)."""
    from apache_beam.runners.portability.prism_runner import PrismRunner

    binary = local_binary(options)
    if binary:
        # Beam reads only --prism_location: point it at the binary found (it would look in its own cache)
        options.view_as(PrismRunnerOptions).prism_location = binary
        LOG.info("--runner PrismRunner: Prism binary %s", binary)
        own_job_server(options)
        return PrismRunner()
    location = options.view_as(PrismRunnerOptions).prism_location
    try:
        url = location or release_url()
    except ValueError as exc:
        reason = str(exc)
    else:
        if (can_download or reachable)(url):
            return PrismRunner()
        reason = (f"no local Prism binary (make prism builds one) and {urlsplit(url).hostname} "
                  "is unreachable (offline?)")
    fallback = direct.create(options, unbounded_source)
    if reason not in _warned:
        _warned.add(reason)
        LOG.warning("--runner PrismRunner: %s; running on the DirectRunner's %s instead "
                    "(--prism_location PATH uses a local binary)", reason, type(fallback).__name__)
    return fallback
