"""Import Apache Beam for a command-line run without importing pandas until something uses it.

pandas is about a third of ``import apache_beam`` here (0.3 s) and 45 MB of RSS, and a quotes run
never uses it. Two libraries import it only because it is installed:

* ``apache_beam/typehints/__init__.py`` tries ``import pandas`` and then imports
  ``typehints.pandas_type_compatibility``, a module with no public names that registers Beam's
  pandas batch converters;
* pyarrow, on its first ``pa.array`` call, tries ``import pandas`` to recognise pandas objects
  (``pyarrow.lib._pandas_api``); if that fails it stops looking, but still imports pandas when an
  operation needs it (``to_pandas()``).

:func:`defer_pandas` makes ``import pandas`` fail *while* Beam is imported and while pyarrow makes
its try, then watches for the first real ``import pandas`` (a plugin, ``apache_beam.dataframe``,
``to_pandas()``). Right after it, it imports Beam's pandas hooks and has pyarrow load its pandas
support: both end up as if they had imported pandas themselves, only later. Outside the block,
nothing is refused. Only the command line (``python -m beam_pipeline``) uses it; importing
:mod:`beam_pipeline` or :mod:`transforms` as a library gives Beam's usual import.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, NoReturn

DEFERRED = "pandas"
#: Beam's module that registers its pandas batch converters on import (``__all__ = []``).
BEAM_PANDAS_HOOKS = "apache_beam.typehints.pandas_type_compatibility"


class _Refuse(importlib.abc.MetaPathFinder):
    """Refuses ``pandas`` (and its submodules) while Beam is imported."""

    def find_spec(self, name, path=None, target=None):
        if name == DEFERRED or name.startswith(DEFERRED + "."):
            raise ImportError(f"{DEFERRED} is deferred until used (beam_pipeline.startup)", name=name)
        return None


class _AfterImport(importlib.abc.MetaPathFinder):
    """On the first ``import pandas``, lets it load, then imports Beam's pandas hooks; then leaves."""

    def find_spec(self, name, path=None, target=None):
        if name != DEFERRED:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ThenImport(spec.loader, BEAM_PANDAS_HOOKS)
        return spec


class _ThenImport(importlib.abc.Loader):
    """A loader that runs ``loader`` and then imports ``module`` (once ``pandas`` is complete)."""

    def __init__(self, loader, module: str):
        self._loader, self._module = loader, module

    def __getattr__(self, name):  # is_package, get_code, get_resource_reader...: the real loader's
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        importlib.import_module(self._module)
        _pyarrow_pandas_api().pd  # pyarrow's pandas support, loaded now that pandas is there


def _pyarrow_pandas_api():
    import pyarrow.lib

    return pyarrow.lib._pandas_api  # pylint: disable=protected-access


@contextmanager
def defer_pandas() -> Iterator[None]:
    """``import apache_beam`` inside this block does not import pandas (see the module docstring);
    the garbage collector is paused meanwhile.

    With pandas already imported, or Beam already imported, it changes nothing.
    """
    if DEFERRED in sys.modules or "apache_beam" in sys.modules:
        yield
        return
    refuse = _Refuse()
    sys.meta_path.insert(0, refuse)
    collecting = gc.isenabled()
    gc.disable()  # imports allocate without making garbage: collections there are 0.1 s of waste
    try:
        yield
        _pyarrow_pandas_api().have_pandas  # pyarrow's one try, refused: it will not try again by itself
    finally:
        if collecting:
            gc.enable()
        sys.meta_path.remove(refuse)
    if "apache_beam" in sys.modules and BEAM_PANDAS_HOOKS not in sys.modules:
        sys.meta_path.insert(0, _AfterImport())


def lean_memory_pool() -> str:
    """Have pyarrow allocate with jemalloc (or the system allocator) rather than mimalloc.

    On this project's replay, mimalloc (pyarrow's default on Linux) kept 36 MB more at its peak than
    either, for the same time (docs/performance.md). ``ARROW_DEFAULT_MEMORY_POOL``, when set, is the
    user's choice and left alone. Returns the backend in use.
    """
    import pyarrow as pa

    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc (macOS, Windows wheels)
            pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name


def exit_now(status: int) -> NoReturn:
    """Exit with ``status`` without tearing down every module: ``atexit`` handlers (logging's flush
    among them) run and the standard streams are flushed, then the process ends.

    Python's own shutdown clears the modules and collects a heap of Beam's size object by object:
    0.2 s here after the run is over. With a non-daemon thread still running, the normal exit (which
    waits for it) is used instead.
    """
    if any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
           if thread is not threading.main_thread()):
        sys.exit(status)
    atexit._run_exitfuncs()  # pylint: disable=protected-access
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
