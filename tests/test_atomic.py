"""The one atomic writer: complete files or none, plain-open() permissions, no temp files left."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from repsr.util.atomic import atomic_write, atomic_write_stream


def test_writes_with_plain_open_permissions_and_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, lambda tmp: open(tmp, "w").write("one"))
    atomic_write_stream(target, lambda handle: handle.write(b"two"))
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    target = tmp_path / "a.npy"
    atomic_write_stream(target, lambda handle: np.save(handle, np.arange(3)))

    def half_then_fail(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_stream(target, half_then_fail)
    assert np.load(target).tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]
