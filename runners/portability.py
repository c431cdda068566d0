"""Whether a pipeline's portable proto is one a portable runner (Flink, Spark, Dataflow) can run.

A portable runner receives ``pipeline.to_runner_api()``. It runs a few *primitive* transforms
itself and hands every other leaf transform, fused into stages, to an SDK harness: for us, a
Python worker in the transform's environment. Anything else it rejects, or worse, drops. This
module checks the proto offline, without a runner, so that a transform only the DirectRunner
can run is caught at build time, by name.

The URNs allowed for a leaf transform (one without subtransforms) come from Beam itself:

* run by the runner, no environment: ``impulse``, ``flatten``, ``group_by_key``. These are the
  URNs every portable runner translates natively: the Python ``PortableRunner`` submits the
  pipeline assuming exactly these plus the ``reshuffle`` composite
  (``portable_runner.PortableRunner._optimize_pipeline``, "All (known) portable runners (ie Flink
  and Spark) support these URNs"); Flink's ``FlinkBatchPortablePipelineTranslator`` and
  ``FlinkStreamingPortablePipelineTranslator`` translate them (plus reshuffle and the fused
  ``executable_stage``); the FnApiRunner runs flatten and group_by_key itself.
* run by the Python SDK harness, so they need a Python environment: ``pardo``, ``window_into``,
  the lifted combine phases (``combine_per_key_precombine``, ``_merge_accumulators``,
  ``_extract_outputs``, which the PortableRunner's ``lift_combiners`` phase emits) and the
  splittable-DoFn phases (``sdf_pair_with_restriction``, ``sdf_split_and_size_restrictions``,
  ``sdf_process_sized_element_and_restrictions``). Each is both a primitive of Java's
  ``QueryablePipeline`` (so the job server's fuser puts it in an executable stage) and a URN the
  Python worker builds an operation for (``apache_beam/runners/worker/bundle_processor.py``).

Not allowed, although Java's ``QueryablePipeline`` lists them as primitives:

* ``teststream``: Dataflow does not run it and Flink translates it "for testing only". Our
  ``--streaming`` historical replay is built on it, so it is DirectRunner-only here.
* ``read`` as a *leaf*: a pickled Python ``Source`` that only a Python process can open (Flink's
  streaming translator reads Java unbounded sources only; Dataflow runner v2 and Flink batch do
  not translate it at all). ``beam.io.Read`` of a ``BoundedSource`` is fine: it is a ``read``
  composite whose leaves are ``impulse`` and a splittable ``pardo``.
* ``create_view``, ``map_windows``, ``merge_windows``, ``to_string``: never emitted by the Python
  SDK; runners insert them.
* anything Python-only: ``beam:transform:pickled_python:v1`` or
  ``beam:transform:generic_composite:v1`` on a leaf is a Python "primitive", a transform whose
  ``expand`` returns a new ``PCollection`` without applying anything; only the Python
  DirectRunner's evaluators would know what to do with it. Java's fuser sees no producer for its
  output and rejects the pipeline.

Beyond the URN, each SDK-run leaf must name an environment that is a Python SDK harness (its
capabilities carry ``beam:version:sdk_base:apache/beam_python...``), each ParDo's DoFn must be a
Python DoFn (``beam:dofn:pickled_python_info:v1``, or the harness's built-in
``beam:dofn:python_key_with_none:v1``), and every PCollection's WindowFn must be one that Java's
``WindowingStrategyTranslation.windowFnFromProto`` rebuilds (global, fixed, sliding, sessions):
a runner groups by window itself, so a pickled Python WindowFn fails there (it is reported once,
at the transform that introduces it).

Pass-through leaves (outputs a subset of inputs, e.g. ``beam.Create``'s ``MaybeReshuffle`` for one
element) are skipped, as Beam's own ``translations.leaf_transform_stages`` skips them: no runner
executes them.

Check the proto the way the ``PortableRunner`` builds it (:func:`portable_proto`): with the
environment of ``--environment_type``; a bare ``to_runner_api()`` names Beam's placeholder
``beam:env:default:v1``, which is no SDK harness at all.
"""

from __future__ import annotations

from typing import NamedTuple

from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.transforms import environments

#: Leaf URNs the runner executes itself (no environment).
RUNNER_URNS = frozenset({
    common_urns.primitives.IMPULSE.urn,
    common_urns.primitives.FLATTEN.urn,
    common_urns.primitives.GROUP_BY_KEY.urn,
})
#: Leaf URNs the Python SDK harness executes (a Python environment required).
SDK_URNS = frozenset({
    common_urns.primitives.PAR_DO.urn,
    common_urns.primitives.ASSIGN_WINDOWS.urn,
    common_urns.combine_components.COMBINE_PER_KEY_PRECOMBINE.urn,
    common_urns.combine_components.COMBINE_PER_KEY_MERGE_ACCUMULATORS.urn,
    common_urns.combine_components.COMBINE_PER_KEY_EXTRACT_OUTPUTS.urn,
    common_urns.sdf_components.PAIR_WITH_RESTRICTION.urn,
    common_urns.sdf_components.SPLIT_AND_SIZE_RESTRICTIONS.urn,
    common_urns.sdf_components.PROCESS_SIZED_ELEMENTS_AND_RESTRICTIONS.urn,
})
PORTABLE_URNS = RUNNER_URNS | SDK_URNS
#: URNs whose payload is a ParDoPayload naming a DoFn.
PAR_DO_URNS = frozenset({
    common_urns.primitives.PAR_DO.urn,
    common_urns.sdf_components.PAIR_WITH_RESTRICTION.urn,
    common_urns.sdf_components.SPLIT_AND_SIZE_RESTRICTIONS.urn,
    common_urns.sdf_components.PROCESS_SIZED_ELEMENTS_AND_RESTRICTIONS.urn,
})
#: DoFn URNs the Python SDK harness runs.
PYTHON_DOFN_URNS = frozenset({python_urns.PICKLED_DOFN_INFO, python_urns.KEY_WITH_NONE_DOFN})
#: WindowFns a Java runner can rebuild (WindowingStrategyTranslation.windowFnFromProto).
STANDARD_WINDOW_FNS = frozenset({
    common_urns.global_windows.urn,
    common_urns.fixed_windows.urn,
    common_urns.sliding_windows.urn,
    common_urns.session_windows.urn,
})
#: The capability prefix that marks a Python SDK harness environment.
PYTHON_SDK_CAPABILITY = "beam:version:sdk_base:apache/beam_python"

_WHY = {
    common_urns.primitives.TEST_STREAM.urn: "TestStream: only the DirectRunner replays it",
    common_urns.deprecated_primitives.READ.urn: "a primitive Read of a pickled Python source, which no Java runner opens",
    python_urns.PICKLED_TRANSFORM: "a Python-only primitive (pickled PTransform) with no portable meaning",
    python_urns.GENERIC_COMPOSITE_TRANSFORM: "a Python-only primitive (a transform that applies nothing) "
    "with no portable meaning",
}


class NonPortable(NamedTuple):
    """One transform a portable runner could not run: its unique name, the URN at fault, why."""

    name: str
    urn: str
    reason: str


def portable_proto(pipeline, options: PipelineOptions | None = None) -> beam_runner_api_pb2.Pipeline:
    """``pipeline`` as the PortableRunner translates it (before its optimization phases): with the
    SDK environment of ``options``' ``--environment_type`` (default DOCKER, Beam's Python image)."""
    options = options or pipeline.options
    environment = environments.Environment.from_options(options.view_as(PortableOptions))
    return pipeline.to_runner_api(default_environment=environment)


def is_python_environment(environment: beam_runner_api_pb2.Environment) -> bool:
    """Whether an environment proto is a Python SDK harness."""
    return any(cap.startswith(PYTHON_SDK_CAPABILITY) for cap in environment.capabilities)


def _is_pass_through(transform: beam_runner_api_pb2.PTransform) -> bool:
    return not set(transform.outputs.values()) - set(transform.inputs.values())


def _leaf_problems(transform: beam_runner_api_pb2.PTransform, components) -> list[NonPortable]:
    name, urn = transform.unique_name, transform.spec.urn
    if urn not in PORTABLE_URNS:
        return [NonPortable(name, urn, _WHY.get(urn, "not a URN a portable runner or the Python SDK harness runs"))]
    if urn in RUNNER_URNS:
        return []
    found = []
    known = components.environments  # a protobuf map: reading a missing key would add it
    environment = known[transform.environment_id] if transform.environment_id in known else None
    if environment is None:
        found.append(NonPortable(name, urn, f"no SDK environment (environment_id {transform.environment_id!r})"))
    elif not is_python_environment(environment):
        found.append(NonPortable(name, environment.urn, "its environment is not a Python SDK harness"))
    if urn in PAR_DO_URNS:
        do_fn = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).do_fn.urn
        if do_fn not in PYTHON_DOFN_URNS:
            found.append(NonPortable(name, do_fn, "its DoFn is not a Python SDK DoFn"))
    return found


def _window_fn(components, pcoll_id: str) -> beam_runner_api_pb2.FunctionSpec:
    strategy_id = components.pcollections[pcoll_id].windowing_strategy_id
    return components.windowing_strategies[strategy_id].window_fn


def _window_problems(transform: beam_runner_api_pb2.PTransform, components) -> list[NonPortable]:
    """A Python-only WindowFn, reported where it starts: at the transform whose output has it and
    whose inputs do not (a WindowInto, or a root)."""
    inherited = [_window_fn(components, pcoll_id) for pcoll_id in transform.inputs.values()]
    found = []
    for pcoll_id in sorted(set(transform.outputs.values())):
        window_fn = _window_fn(components, pcoll_id)
        if window_fn.urn not in STANDARD_WINDOW_FNS and window_fn not in inherited:
            found.append(NonPortable(transform.unique_name, window_fn.urn,
                                     "a Python-only WindowFn, which a runner cannot group by"))
    return found


def non_portable_transforms(proto: beam_runner_api_pb2.Pipeline) -> list[NonPortable]:
    """Every leaf transform of ``proto`` that a portable runner could not run, sorted by name;
    empty when all is well. See the module docstring for the rules and where they come from."""
    components = proto.components
    found: list[NonPortable] = []
    for transform in components.transforms.values():
        if transform.subtransforms or _is_pass_through(transform):
            continue
        found += _leaf_problems(transform, components) + _window_problems(transform, components)
    return sorted(found)
