"""The one atomic writer: complete files or none, plain-open() permissions, no temp files left."""

from __future__ import annotations

import errno
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


def test_without_replace_an_existing_name_is_kept(tmp_path):
    from repsr.util.errors import WriteError

    target = tmp_path / "a.bin"

    def write(tmp: str) -> None:
        target.write_bytes(b"theirs")  # another process takes the name while this one writes
        with open(tmp, "wb") as handle:
            handle.write(b"ours")

    with pytest.raises(WriteError, match="another run") as caught:
        atomic_write(target, write, replace=False)
    assert caught.value.errno == errno.EEXIST and target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    atomic_write(tmp_path / "b.bin", lambda tmp: open(tmp, "wb").write(b"new"), replace=False)
    assert (tmp_path / "b.bin").read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 2


def test_symlinks_that_lead_nowhere_are_named_before_any_work(tmp_path):
    """Issue 28: `-o LOOP` ended in a RuntimeError, `repsr train --out DANGLING` in a FileExistsError,
    and `repsr export --onnx LINK` replaced a dangling link it was not told it may replace."""
    from repsr.util.atomic import check_folder, check_target
    from repsr.util.errors import WriteError

    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing" / "folder")
    for path in (
        tmp_path / "loop",
        tmp_path / "loop" / "sub",
        tmp_path / "dangling",
        tmp_path / "dangling" / "x",
    ):
        with pytest.raises(WriteError, match="a symlink that leads nowhere") as caught:
            check_folder(path, what="run folder")
        assert "\n" not in str(caught.value)
    with pytest.raises(WriteError, match="exists already"):
        check_target(tmp_path / "dangling", what="ONNX file")
    assert (tmp_path / "dangling").is_symlink() and not (tmp_path / "missing").exists()  # nothing created
