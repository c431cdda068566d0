"""The pipeline's stages, one subpackage each, and the small pieces they share.

Each stage subpackage (:mod:`~transforms.sources`, :mod:`~transforms.quotes`, :mod:`~transforms.windows`,
:mod:`~transforms.trades`, :mod:`~transforms.products`, :mod:`~transforms.sinks`, :mod:`~transforms.queue`)
keeps its composite PTransforms in ``stage.py`` and its logic in pure modules beside it. Shared:
:mod:`~transforms.blocks` (the elements and coders), :mod:`~transforms.telemetry`, :mod:`~transforms.tracing`,
:mod:`~transforms.progress`, :mod:`~transforms.resilience`.
"""
