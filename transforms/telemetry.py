"""Beam counters, mirrored in this process for ``GET /metrics`` while a long-running job runs.

Beam reports a job's counters when it ends (``metrics.json`` is written from them and from the
output files). A live, replay, webhook or queue job may run for days, so ``--metrics_port``
serves the counters while it runs, in Prometheus' text format. :func:`counter` is
``beam.metrics.Metrics.counter`` plus a process-wide tally of what was added: the stages use it
instead of Beam's directly, so every counter is both a Beam counter (for the runner, for every
runner) and a line of ``/metrics``. Long-running sources run on the DirectRunner's in-process
workers, where the tally sees every increment as it happens. Like Beam's *attempted* counters, a
retried bundle counts twice; the committed figures are in ``metrics.json``.
"""

from __future__ import annotations

import logging
import re
import threading

from apache_beam.metrics import Metrics

LOG = logging.getLogger(__name__)

_totals: dict[tuple[str, str], int] = {}
_lock = threading.Lock()
PREFIX = "beam_pipeline_"


class MirroredCounter:
    """A Beam counter whose increments are also tallied in this process (see the module docstring)."""

    def __init__(self, namespace, name: str):
        self._counter = Metrics.counter(namespace, name)
        self._key = (Metrics.get_namespace(namespace), name)
        self.name = name
        #: What this instance added (a DoFn's own copy): bundle spans report it (transforms.tracing).
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self._counter.inc(n)
        with _lock:
            _totals[self._key] = _totals.get(self._key, 0) + n
            self.value += n

    def dec(self, n: int = 1) -> None:
        self.inc(-n)


def counter(namespace, name: str) -> MirroredCounter:
    """``Metrics.counter(namespace, name)``, mirrored for ``/metrics``."""
    return MirroredCounter(namespace, name)


def snapshot() -> dict[tuple[str, str], int]:
    """(namespace, name) -> total so far, in this process."""
    with _lock:
        return dict(_totals)


def reset() -> None:
    """Forget the tallies (a new run in the same process starts from zero)."""
    with _lock:
        _totals.clear()


def metric_name(name: str) -> str:
    """A counter's Prometheus name: ``beam_pipeline_<name>`` in [a-z0-9_] (``_total`` is added by the client)."""
    return PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", name).lower()


class BeamCounters:
    """A prometheus_client collector of the tallies: one counter family per name, labelled by namespace."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        by_name: dict[str, list[tuple[str, int]]] = {}
        for (namespace, name), value in sorted(snapshot().items()):
            by_name.setdefault(name, []).append((namespace, value))
        for name, values in by_name.items():
            family = CounterMetricFamily(metric_name(name), f"Beam counter {name}, as counted so far", labels=["namespace"])
            for namespace, value in values:
                family.add_metric([namespace], value)
            yield family


class MetricsServer:
    """``GET /metrics`` on 127.0.0.1:``port`` (0: any free port; see :attr:`url`) until :meth:`close`."""

    def __init__(self, port: int):
        from prometheus_client import CollectorRegistry, start_http_server

        self.registry = CollectorRegistry()
        self.registry.register(BeamCounters())
        self._server, self._thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        LOG.info("serving the Beam counters at %s", self.url)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
