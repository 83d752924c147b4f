import os
import stat

import pytest

from steerscope.errors import SteerscopeError
from steerscope.fileio import atomic_write


def test_atomic_write_uses_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "out.txt", lambda tmp: tmp.write_text("hello"))
    finally:
        os.umask(old)
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_refuses_existing_and_keeps_it_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(SteerscopeError, match="already exists"):
        atomic_write(path, lambda tmp: tmp.write_text("new"))

    def boom(tmp):
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom, overwrite=True)
    assert path.read_text() == "old" and len(list(tmp_path.iterdir())) == 1
