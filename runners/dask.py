"""``--runner DaskRunner``: the pipeline as one task graph on a ``distributed`` cluster on 127.0.0.1.

``--dask_address HOST:PORT`` runs on a scheduler that is already up; ``--dask_local_workers N``
starts a ``LocalCluster`` of N single-threaded worker processes for the run and stops it after
(also when the run fails). Workers import this project's modules: install it where they run.

Beam 2.77's ``DaskRunner`` keeps its overrides (Create, GroupByKey, Flatten, ...) here, but its
graph translation is replaced, for these bugs:

1. a consumer of any output of a multi-output ParDo got *all* its outputs mixed (the tag is
   dropped): each PCollection here reads only its own tag (:func:`select_tag`);
2. only the last visited transform's bag was computed, so branches not upstream of it never ran:
   every leaf (:func:`leaf_transforms`) is computed, in one ``compute`` call, each reduced to its
   element count so nothing but small ints comes back to the client;
3. outputs of ``finish_bundle`` were lost, and the receivers' output list was shared by every
   bundle a worker ran: :func:`run_bundle` runs a fresh DoFn per bundle and keeps all outputs;
4. ``WindowInto`` and ``GroupAlsoByWindow`` were no-ops (windows ignored by GroupByKey), main
   outputs lost their timestamps and windows, ``Impulse`` was untranslated, and side inputs got
   Beam's ``AsSideInput`` objects instead of values: here every element stays a
   ``WindowedValue``, windows are assigned, GroupByKey groups per window with Beam's batch
   trigger driver, and a side input is computed once, as part of the same graph.

Batch only: no ``--streaming``, no unbounded (live) source, no splittable or stateful DoFns, no
``TestStream``; every window fires its single on-time pane, as on any batch runner. ``Reshuffle``
is the identity. A bundle is a Dask partition and its outputs are held in memory; the output of a
ParDo fed by ``Create`` (a source's fan-out) is spread over ``--dask_partitions`` partitions
(default: the cluster's worker threads) so the stages after it run in parallel.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import urlsplit

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import Receiver
from apache_beam.runners.runner import PipelineResult, PipelineRunner, PipelineState

from runners.common import RunnerError

NAMES = ("DaskRunner", "dask")
LOG = logging.getLogger(__name__)
LOCAL_HOSTS = ("127.0.0.1", "localhost")
INSTALL_HINT = "DaskRunner needs the dask extra: pip install '.[dask]'"


class DaskRunnerOptions(PipelineOptions):
    """Where the pipeline runs: a running scheduler, or a cluster started for the run."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dask_address", default=None,
                            help="DaskRunner: HOST:PORT of a running distributed scheduler on 127.0.0.1 "
                            "(e.g. tcp://127.0.0.1:8786)")
        parser.add_argument("--dask_local_workers", type=int, default=None,
                            help="DaskRunner: start a cluster of N worker processes on 127.0.0.1 for the run")
        parser.add_argument("--dask_partitions", type=int, default=None,
                            help="DaskRunner: partitions a source's output is spread over (default: worker threads)")


@dataclass(frozen=True)
class DaskSettings:
    """The checked flags: exactly one of ``address`` / ``local_workers``."""

    address: str | None = None
    local_workers: int | None = None
    partitions: int | None = None


def parse_address(value: str) -> str:
    """``HOST:PORT`` or ``tcp://HOST:PORT`` of a scheduler on this machine -> ``tcp://127.0.0.1:PORT``;
    raises ValueError with a one-line reason."""
    text = value.strip()
    parts = urlsplit(text if "://" in text else f"tcp://{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path not in ("", "/") or port == 0:
        raise ValueError(f"--dask_address must be HOST:PORT or tcp://HOST:PORT, got {value!r}")
    if parts.hostname not in LOCAL_HOSTS:
        raise ValueError(f"--dask_address: only a scheduler on 127.0.0.1 is allowed, got {parts.hostname}")
    return f"tcp://127.0.0.1:{port}"


def dask_installed() -> bool:
    """Whether dask and distributed can be imported (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("dask", "distributed"))


def check(options: PipelineOptions) -> list[str]:
    """Exactly one of ``--dask_address`` / ``--dask_local_workers``, valid values, dask installed."""
    flags = options.view_as(DaskRunnerOptions)
    problems = []
    if (flags.dask_address is None) == (flags.dask_local_workers is None):
        problems.append("--runner DaskRunner needs exactly one of --dask_address HOST:PORT (a running scheduler) "
                        "or --dask_local_workers N (a local cluster for the run)")
    elif flags.dask_local_workers is not None and flags.dask_local_workers < 1:
        problems.append(f"--dask_local_workers must be 1 or more, got {flags.dask_local_workers}")
    elif flags.dask_address is not None:
        try:
            parse_address(flags.dask_address)
        except ValueError as exc:
            problems.append(str(exc))
    if flags.dask_partitions is not None and flags.dask_partitions < 1:
        problems.append(f"--dask_partitions must be 1 or more, got {flags.dask_partitions}")
    if not dask_installed():
        problems.append(INSTALL_HINT)
    return problems


def create(options: PipelineOptions, unbounded_source: bool = False) -> PipelineRunner:
    """Beam's DaskRunner with this module's fixes; raises :class:`RunnerError` on bad flags or a
    streaming pipeline (dask is imported here, not when this module is)."""
    problems = check(options)
    if unbounded_source or options.view_as(StandardOptions).streaming:
        problems.append("--runner DaskRunner runs bounded (batch) pipelines only: no --streaming, no live source")
    if problems:
        raise RunnerError("; ".join(problems))
    flags = options.view_as(DaskRunnerOptions)
    address = parse_address(flags.dask_address) if flags.dask_address is not None else None
    return runner_class()(DaskSettings(address, flags.dask_local_workers, flags.dask_partitions))


@functools.cache
def runner_class() -> type:
    """The fixed runner class, a subclass of Beam's ``DaskRunner``, made on first use (Beam's
    module imports dask)."""
    from apache_beam.runners.dask.dask_runner import DaskRunner

    class FixedDaskRunner(DaskRunner):
        """Beam's DaskRunner with the translation of :mod:`runners.dask`; ``run`` returns when done."""

        def __init__(self, settings: DaskSettings):
            super().__init__()
            self.settings = settings

        def run_pipeline(self, pipeline, options):
            return run_on_dask(pipeline, options, self.settings)

    return FixedDaskRunner


class DaskRunResult(PipelineResult):
    """A finished run; ``leaf_counts``: elements out of each leaf transform, by label."""

    def __init__(self, leaf_counts: dict[str, int]):
        super().__init__(PipelineState.DONE)
        self.leaf_counts = leaf_counts

    def wait_until_finish(self, duration=None) -> str:
        return self._state

    def cancel(self) -> str:
        return self._state

    def metrics(self):
        raise NotImplementedError("the DaskRunner collects no Beam metrics (the pipeline writes metrics.json)")


# --------------------------------------------------------------------------- pure graph helpers


def select_tag(items: Iterable[tuple[str | None, Any]], tag: str | None) -> list:
    """The values of ``(tag, value)`` pairs with this tag (None: the main output), unwrapped."""
    return [value for item_tag, value in items if item_tag == tag]


def consumed(nodes: Iterable) -> set:
    """Every PCollection some transform reads, as main or side input."""
    read = set()
    for node in nodes:
        read.update(node.inputs)
        read.update(side.pvalue for side in node.side_inputs)
    return read


def leaf_transforms(nodes: Sequence) -> list:
    """The transforms none of whose outputs is read by another: what a run must compute."""
    read = consumed(nodes)
    return [node for node in nodes if not any(pcoll in read for pcoll in node.outputs.values())]


# --------------------------------------------------------------------------- bundles (on workers)


@dataclass(frozen=True)
class BundleSpec:
    """What a worker needs to run one ParDo: Beam-pickled DoFn, args and side input views."""

    label: str
    payload: bytes  # pickler.dumps((fn, args, kwargs, windowing, [(view class, view options), ...]))


def bundle_spec(node) -> BundleSpec:
    """The :class:`BundleSpec` of a ParDo node; refuses DoFns this runner cannot run."""
    from apache_beam.internal import pickler
    from apache_beam.runners.common import DoFnSignature

    transform = node.transform
    signature = DoFnSignature(transform.fn)
    if signature.is_splittable_dofn() or signature.is_stateful_dofn():
        raise RunnerError(f"--runner DaskRunner cannot run {node.full_label!r}: splittable and stateful DoFns "
                          "(live sources, state, timers) need a streaming runner")
    views = [(type(side), side._view_options()) for side in node.side_inputs]  # pylint: disable=protected-access
    windowing = node.inputs[0].windowing
    payload = pickler.dumps((transform.fn, transform.args, transform.kwargs, windowing, views))
    return BundleSpec(node.full_label, payload)


def run_bundle(items: Iterable, spec: BundleSpec, *side_values: list) -> list[tuple[str | None, Any]]:
    """Run a ParDo over one bundle of WindowedValues with a fresh DoFn: ``(tag, WindowedValue)``
    for every output, ``finish_bundle``'s included. ``side_values``: each side input's values."""
    from apache_beam.internal import pickler
    from apache_beam.runners.common import DoFnRunner
    from apache_beam.transforms.sideinputs import SideInputMap

    fn, args, kwargs, windowing, views = pickler.loads(spec.payload)
    outputs: list[tuple[str | None, Any]] = []
    sides = [SideInputMap(view, options, values) for (view, options), values in zip(views, side_values)]
    runner = DoFnRunner(fn, args, kwargs, sides, windowing, _Receivers(outputs), step_name=spec.label)
    runner.setup()
    try:
        runner.start()
        for item in items:
            runner.process(item)
        runner.finish()
    finally:
        runner.teardown()
    return outputs


class _Receivers(dict):
    """Beam's tag -> receiver mapping, every receiver appending ``(tag, value)`` to one list."""

    def __init__(self, outputs: list):
        super().__init__()
        self._outputs = outputs

    def __missing__(self, tag: str | None):
        receiver = self[tag] = _Receiver(tag, self._outputs)
        return receiver


class _Receiver(Receiver):
    def __init__(self, tag: str | None, outputs: list):
        self._tag = tag
        self._outputs = outputs

    def receive(self, windowed_value) -> None:
        self._outputs.append((self._tag, windowed_value))


def in_global_window(value) -> Any:
    """``value`` as Beam's ``Create`` and ``Impulse`` emit it: global window, minimum timestamp."""
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import MIN_TIMESTAMP
    from apache_beam.utils.windowed_value import WindowedValue

    return WindowedValue(value, MIN_TIMESTAMP, (GlobalWindow(),))


def group_key(windowed_value) -> Any:
    """The key of a ``(key, WindowedValue)`` element (after Beam's ReifyWindows)."""
    return windowed_value.value[0]


def grouped(key_and_items: tuple[Any, list]) -> Any:
    """``(key, [values in their windows])`` for Beam's GroupAlsoByWindow, in the global window."""
    key, items = key_and_items
    return in_global_window((key, [item.value[1] for item in items]))


# --------------------------------------------------------------------------- translation


def broadcast(bag, npartitions: int):
    """A bag of ``npartitions`` partitions, each holding all of ``bag``'s elements (a side input).

    Not a dask ``Item``: dask computes an Item passed to ``map_partitions`` from a renamed copy of
    its graph, which would run every transform upstream of a side input a second time.
    """
    import dask.bag as db
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    whole = bag.repartition(npartitions=1)
    name = f"broadcast-{tokenize(whole.name, npartitions)}"
    layer = {(name, index): (list, (whole.name, 0)) for index in range(npartitions)}
    return db.Bag(HighLevelGraph.from_collections(name, layer, dependencies=[whole]), name, npartitions)



class _Nodes(PipelineVisitor):
    """Collects a pipeline's leaf transforms in topological order."""

    def __init__(self):
        self.nodes: list = []

    def visit_transform(self, node) -> None:
        self.nodes.append(node)


def translate(nodes: Sequence, partitions: int) -> dict:
    """Dask bags for a pipeline's transforms: ``{leaf node: bag}``."""
    import dask.bag as db
    import apache_beam as beam
    from apache_beam.runners.dask import overrides

    pcolls: dict = {}  # PCollection -> bag of its WindowedValues
    roots: set = set()  # nodes that start a pipeline (Create, Impulse)
    finals: dict = {}

    def main_input(node):
        return pcolls[node.inputs[0]]

    for node in nodes:
        transform = node.transform
        tagged = False
        if isinstance(transform, overrides._Create):  # pylint: disable=protected-access
            values = [in_global_window(value) for value in transform.values]
            bag = db.from_sequence(values, npartitions=max(1, min(len(values), partitions)))
            roots.add(node)
        elif isinstance(transform, beam.Impulse):
            bag = db.from_sequence([in_global_window(b"")], npartitions=1)
            roots.add(node)
        elif isinstance(transform, beam.ParDo):
            spec = bundle_spec(node)
            main = main_input(node)
            sides = [broadcast(pcolls[side.pvalue], main.npartitions) for side in node.side_inputs]
            bag = main.map_partitions(run_bundle, spec, *sides)
            if node.inputs[0].producer in roots and bag.npartitions < partitions:
                bag = bag.repartition(npartitions=partitions)
            tagged = True
        elif isinstance(transform, overrides._GroupByKeyOnly):  # pylint: disable=protected-access
            keyed = main_input(node)
            if keyed.npartitions > partitions:  # fewer, larger partitions: a smaller shuffle
                keyed = keyed.repartition(npartitions=partitions)
            bag = keyed.groupby(group_key, shuffle="tasks").map(grouped)
        elif isinstance(transform, overrides._Flatten):  # pylint: disable=protected-access
            inputs = [pcolls[pcoll] for pcoll in node.inputs]
            bag = db.concat(inputs) if inputs else db.from_sequence([], npartitions=1)
        elif isinstance(transform, overrides._Reshuffle):  # pylint: disable=protected-access
            bag = main_input(node)
        else:
            raise RunnerError(f"--runner DaskRunner cannot run {node.full_label!r} "
                              f"({type(transform).__name__} has no Dask translation)")
        finals[node] = bag
        for pcoll in node.outputs.values():
            pcolls[pcoll] = bag.map_partitions(select_tag, pcoll.tag) if tagged else bag
    return {node: finals[node] for node in leaf_transforms(nodes)}


@contextmanager
def _quiet(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Logger ``name`` at ``level`` or above for a while (a local cluster's scheduler runs here and
    logs every worker and connection at INFO)."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(old)


def local_cluster(workers: int):
    """A ``LocalCluster`` of ``workers`` single-threaded processes, everything on 127.0.0.1 (any
    free ports) and no dashboard; use it as a context manager, which stops it."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # its HTTP endpoints: loopback, any port
    )


@contextmanager
def connect(settings: DaskSettings) -> Iterator:
    """A ``distributed.Client`` for the run, on a cluster started for it (stopped after) or not."""
    from distributed import Client

    if settings.address is not None:
        with Client(settings.address, timeout="10s") as client:
            yield client
        return
    with _quiet("distributed"), local_cluster(settings.local_workers) as cluster, Client(cluster) as client:
        LOG.info("started a local Dask cluster at %s (%s workers)", cluster.scheduler_address, settings.local_workers)
        yield client
    LOG.info("stopped the local Dask cluster")


def run_on_dask(pipeline, options: PipelineOptions, settings: DaskSettings) -> DaskRunResult:
    """Translate ``pipeline`` (after Beam's Dask overrides) and compute every leaf; returns when
    the run is over, raises what a worker raised."""
    from apache_beam.runners.dask.overrides import dask_overrides

    if options.view_as(StandardOptions).streaming:
        raise RunnerError("--runner DaskRunner runs bounded (batch) pipelines only: no --streaming")
    pipeline.replace_all(dask_overrides())
    collector = _Nodes()
    pipeline.visit(collector)
    with connect(settings) as client:
        partitions = settings.partitions or max(1, sum(client.nthreads().values()))
        leaves = translate(collector.nodes, partitions)
        LOG.info("DaskRunner: %d transforms, %d leaves, %d partitions per source", len(collector.nodes),
                 len(leaves), partitions)
        futures = client.compute([bag.count() for bag in leaves.values()])
        counts = client.gather(futures)
    return DaskRunResult({node.full_label: count for node, count in zip(leaves, counts)})
