"""transforms.sinks.files.copy_stream: the kernel copy and its fallbacks append exactly the source."""

import errno
import io
import os

import pytest

from transforms.sinks import files
from transforms.sinks.files import copy_stream


def _parts(tmp_path, contents):
    paths = []
    for index, data in enumerate(contents):
        path = tmp_path / f"part-{index}"
        path.write_bytes(data)
        paths.append(path)
    return paths


CONTENTS = [b"first line\n" * 1000, b"", b"x" * (3 << 20) + b"\n", b"last\n"]


def test_local_files_are_appended_in_order_around_buffered_writes(tmp_path):
    paths = _parts(tmp_path, CONTENTS)
    target_path = tmp_path / "target"
    with open(target_path, "wb") as target:
        target.write(b"header\n")  # still in the writer's buffer when the copy starts
        for path in paths:
            with open(path, "rb") as source:
                copy_stream(source, target)
            target.write(b"--\n")
    assert target_path.read_bytes() == b"header\n" + b"".join(data + b"--\n" for data in CONTENTS)


def test_a_partly_read_source_is_copied_from_where_the_reader_is(tmp_path):
    (path,) = _parts(tmp_path, [b"0123456789" * 10000])
    with open(path, "rb") as source, open(tmp_path / "target", "wb") as target:
        assert source.read(5) == b"01234"  # the reader has buffered far more than 5 bytes
        copy_stream(source, target)
    assert (tmp_path / "target").read_bytes() == (b"0123456789" * 10000)[5:]


def test_streams_without_descriptors_go_through_python():
    target = io.BytesIO(b"")
    target.write(b"a")
    copy_stream(io.BytesIO(b"bcd" * 100000), target)
    assert target.getvalue() == b"a" + b"bcd" * 100000


@pytest.mark.parametrize("after_bytes", [0, 1000])
def test_a_kernel_that_refuses_falls_back_without_losing_or_repeating_bytes(tmp_path, monkeypatch, after_bytes):
    real = os.copy_file_range
    copied = []

    def refusing(source_fd, target_fd, count, offset_src=None):
        if sum(copied) >= after_bytes:
            raise OSError(errno.EXDEV, "cross-device")
        done = real(source_fd, target_fd, min(count, after_bytes - sum(copied)), offset_src)
        copied.append(done)
        return done

    monkeypatch.setattr(files.os, "copy_file_range", refusing)
    (path,) = _parts(tmp_path, [bytes(range(256)) * 100])
    with open(path, "rb") as source, open(tmp_path / "target", "wb") as target:
        target.write(b"start")
        copy_stream(source, target)
        target.write(b"end")
    assert (tmp_path / "target").read_bytes() == b"start" + bytes(range(256)) * 100 + b"end"


def test_other_kernel_errors_are_raised(tmp_path, monkeypatch):
    def failing(*_):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(files.os, "copy_file_range", failing)
    (path,) = _parts(tmp_path, [b"data\n"])
    with open(path, "rb") as source, open(tmp_path / "target", "wb") as target:
        with pytest.raises(OSError, match="I/O error"):
            copy_stream(source, target)
