"""Safe file output: refuse to clobber existing files and write atomically (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from steerscope.errors import SteerscopeError


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path, or raise if it exists and ``overwrite`` is false."""
    out = Path(path)
    if out.exists() and not overwrite:
        raise SteerscopeError(f"output file {out} already exists; pass --overwrite to replace it")
    if out.exists() and out.is_dir():
        raise SteerscopeError(f"output path {out} is a directory")
    return out


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place.

    A crash or an exception leaves either the old file or nothing at ``path``, never a partial file.
    """
    out = check_output_path(path, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
