"""score/fileio.py: a file written in place is the old one or the whole new one, never a part."""

import os
import stat

import pytest

from score.fileio import atomic_path, atomic_write


def test_atomic_write_replaces_on_success_with_the_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_write(str(target)) as f:
        f.write("new")
        assert not target.exists()  # nothing at the target until the write is complete
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


@pytest.mark.parametrize("writer", ["file", "path"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, writer):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        if writer == "file":
            with atomic_write(str(target), "wb") as f:
                f.write(b"half")
                raise RuntimeError("killed")
        else:
            with atomic_path(str(target), ".tif") as tmp:
                assert tmp.endswith(".tif") and os.path.dirname(tmp) == str(tmp_path)
                with open(tmp, "wb") as f:
                    f.write(b"half")
                raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_refuses_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(str(tmp_path / "x"), "a"):
            pass
