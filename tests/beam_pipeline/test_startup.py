"""Start-up of ``python -m beam_pipeline``: pandas deferred, Arrow columns read without pandas,
the allocator choice and the quick exit (beam_pipeline.startup, transforms.arrays).

Each import check runs in a fresh interpreter: this test process has pandas loaded already.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from beam_pipeline.config import bundled_sample
from transforms.arrays import numpy, string_bytes

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


def test_beam_imports_without_pandas_and_gets_its_pandas_hooks_when_pandas_comes():
    result = _python("""
        import sys
        from beam_pipeline.startup import defer_pandas, BEAM_PANDAS_HOOKS
        with defer_pandas():
            import apache_beam
        import numpy as np, pyarrow as pa
        pa.array(np.arange(3)); pa.array([1, 2], pa.int64())
        print("before", "pandas" in sys.modules, BEAM_PANDAS_HOOKS in sys.modules)
        import pandas as pd
        print("after", "pandas" in sys.modules, BEAM_PANDAS_HOOKS in sys.modules, pa.lib._pandas_api.have_pandas)
        print("series", pa.types.is_dictionary(pa.array(pd.Series(["a", "b"], dtype="category")).type))
        from apache_beam.typehints.batch import BatchConverter
        from apache_beam.typehints.row_type import RowTypeConstraint
        row = RowTypeConstraint.from_fields([("a", int)])
        print("converter", type(BatchConverter.from_typehints(element_type=row, batch_type=pd.DataFrame)).__name__)
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "before False False"
    assert lines[1] == "after True True True"
    assert lines[2] == "series True"  # pyarrow recognises pandas objects again (a categorical: a dictionary)
    assert lines[3].startswith("converter DataFrameBatchConverter")


def test_to_pandas_works_after_the_deferral_without_importing_pandas_first():
    result = _python("""
        from beam_pipeline.startup import defer_pandas
        with defer_pandas():
            import apache_beam
        import pyarrow as pa
        print(type(pa.table({"x": [1, 2]}).to_pandas()).__name__)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "DataFrame"


def test_a_plain_import_of_pandas_still_works_inside_the_block_when_beam_is_already_there():
    result = _python("""
        import apache_beam, sys
        from beam_pipeline.startup import defer_pandas
        with defer_pandas():
            import pandas
        print("pandas" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@pytest.mark.parametrize("extra", [[], ["--window", "fixed:1s"], ["--window", "session:500ms"]])
def test_a_quotes_run_never_imports_pandas(tmp_path, extra):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "beam_pipeline", "--input", bundled_sample(),
         "--output_dir", str(tmp_path), "--progress", "off", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    imported = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert any(line.split("|")[-1].strip() == "apache_beam" for line in imported)
    assert not [line for line in imported if "pandas.core" in line], "pandas was imported by the run"
    assert (tmp_path / "mid_prices.log").stat().st_size > 0


def test_exit_now_runs_atexit_handlers_flushes_and_keeps_the_status(tmp_path):
    marker = tmp_path / "atexit"
    result = _python(f"""
        import atexit, sys
        from beam_pipeline.startup import exit_now
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))
        sys.stdout.write("unflushed")
        exit_now(3)
    """)
    assert result.returncode == 3
    assert result.stdout == "unflushed"
    assert marker.read_text() == "ran"


def test_exit_now_waits_for_a_running_non_daemon_thread():
    result = _python("""
        import threading, time
        from beam_pipeline.startup import exit_now
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()
        exit_now(0)
    """)
    assert result.returncode == 0
    assert result.stdout.strip() == "thread done"


def test_lean_memory_pool_leaves_a_users_choice_alone():
    import os

    code = "from beam_pipeline.startup import lean_memory_pool; print(lean_memory_pool())"
    chosen = _python(code, env={**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"})
    default = _python(code, env={k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"})
    assert chosen.stdout.strip() == "system", chosen.stderr
    assert default.stdout.strip() in ("jemalloc", "system"), default.stderr


# --- transforms.arrays.numpy: the same values and dtype as to_numpy(zero_copy_only=False) ---------


@pytest.mark.parametrize("kind", [pa.bool_(), pa.int8(), pa.int32(), pa.int64(), pa.uint16(), pa.float32(),
                                  pa.float64()])
def test_numpy_matches_to_numpy_for_every_length_and_offset(kind):
    rng = np.random.default_rng(5)
    for length in (0, 1, 7, 8, 9, 17, 64):
        values = rng.integers(0, 2, length).astype(bool) if kind == pa.bool_() else rng.integers(0, 100, length)
        array = pa.array(values, type=kind)
        for offset in range(min(length, 10) + 1):
            part = array.slice(offset)
            got, want = numpy(part), part.to_numpy(zero_copy_only=False)
            assert got.dtype == want.dtype and np.array_equal(got, want), (kind, length, offset)


def test_numpy_of_chunked_nulls_and_strings_falls_back_to_arrow():
    chunked = pa.chunked_array([pa.array([1, 2], pa.int64()), pa.array([3], pa.int64())])
    assert numpy(chunked).tolist() == [1, 2, 3]
    with_nulls = pa.array([1, None, 3], pa.int64())
    assert np.array_equal(numpy(with_nulls), with_nulls.to_numpy(zero_copy_only=False), equal_nan=True)
    assert numpy(pa.array(["a", "b"])).tolist() == ["a", "b"]
    assert numpy(pa.chunked_array([], pa.int64())).tolist() == []


def test_string_bytes_holds_exactly_a_slices_values_and_their_starts():
    array = pa.array(["ab", "", None, "cde", "é", "f"])
    for start in range(len(array) + 1):
        for stop in range(start, len(array) + 1):
            part = array.slice(start, stop - start)
            offsets, data = string_bytes(part)
            values = [v or "" for v in part.to_pylist()]
            assert data == "".join(values).encode(), (start, stop)
            assert offsets.dtype == np.int64 and offsets[0] == 0 and len(offsets) == len(part) + 1
            assert [data[a:b].decode() for a, b in zip(offsets[:-1], offsets[1:])] == values
