"""What the presets share: the error type, "did the user give this flag", and the checks on a
portable runner's worker environment (``--environment_type`` and its config)."""

from __future__ import annotations

import json
import re
import shutil

from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions


class RunnerError(ValueError):
    """The requested runner does not exist or cannot run with these options."""


#: Worker environments a portable runner can start, and what each needs.
ENVIRONMENTS = ("LOOPBACK", "PROCESS", "EXTERNAL", "DOCKER")

_HOST_PORT = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})/?$")


def given(options: PipelineOptions, name: str) -> bool:
    """Whether the flag ``--name`` has a value other than its default (given by the user, or set
    by a preset)."""
    return name in options.get_all_options(drop_default=True)


def host_port_problem(flag: str, value: str) -> str | None:
    """Why ``value`` is not ``HOST:PORT`` (an optional ``scheme://`` allowed), or None."""
    match = _HOST_PORT.match(value.strip())
    if match is None:
        return f"{flag} must be HOST:PORT, got {value!r}"
    if not 0 < int(match.group(2)) < 65536:
        return f"{flag}: port {match.group(2)} is out of range"
    return None


def environment_problems(options: PipelineOptions, runner: str) -> list[str]:
    """Problems with ``--environment_type`` / ``--environment_config`` for ``runner``: the type is
    required and must be known; PROCESS needs a command, EXTERNAL a worker pool address, DOCKER a
    docker daemon on this machine (none here: use LOOPBACK, PROCESS or EXTERNAL)."""
    portable = options.view_as(PortableOptions)
    kind = (portable.environment_type or "").upper()
    if not kind:
        return [f"--runner {runner} needs --environment_type ({', '.join(ENVIRONMENTS)}; see docs/runners.md)"]
    if kind not in ENVIRONMENTS and not kind.startswith("BEAM:ENV:"):
        return [f"--environment_type must be one of {', '.join(ENVIRONMENTS)}, got {portable.environment_type!r}"]
    config = portable.environment_config
    if kind == "PROCESS":
        command = portable.lookup_environment_option("process_command")
        if config:
            try:
                command = json.loads(config).get("command")
            except (ValueError, AttributeError):
                return [f"--environment_config for PROCESS must be JSON like '{{\"command\": \"/path/to/boot\"}}', "
                        f"got {config!r}"]
        if not command:
            return ["--environment_type PROCESS needs the worker command: --environment_config "
                    "'{\"command\": \"/path/to/boot\"}' or --environment_options process_command=..."]
    elif kind == "EXTERNAL":
        address = config or portable.lookup_environment_option("external_service_address")
        if not address:
            return ["--environment_type EXTERNAL needs the worker pool's address: --environment_config HOST:PORT"]
        if not address.lstrip().startswith("{"):
            problem = host_port_problem("--environment_config", address)
            if problem:
                return [problem]
    elif kind == "DOCKER" and options.view_as(PortableOptions).job_endpoint == "embed":
        if shutil.which("docker") is None:
            return ["--environment_type DOCKER starts workers with docker, which this machine does not have: "
                    "use --environment_type LOOPBACK"]
    return []
