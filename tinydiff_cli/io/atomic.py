"""Atomic file writes: write beside the target, flush to disk, then rename over it.

A reader (or a crash) sees either the old file or the new one, never half of one. A write that fails (a full disk,
a read-only or vanished folder) leaves the old file as it was, removes its temporary file, and raises StorageError:
one line that names the path and says what to do.
"""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import TinydiffError

_UMASK = os.umask(0)
os.umask(_UMASK)

_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space",
    errno.EDQUOT: "the disk quota is used up; free some space",
    errno.EROFS: "the file system is read-only; write somewhere else (--out)",
    errno.EACCES: "no permission to write there; write somewhere else (--out)",
    errno.EPERM: "no permission to write there; write somewhere else (--out)",
    errno.ENOENT: "the folder disappeared while writing; make sure it exists",
}


class StorageError(TinydiffError):
    """A file could not be written; whatever was there before is unchanged."""

    def __init__(self, path: str | Path, error: OSError):
        self.path, self.errno = Path(path), error.errno
        what = error.strerror or str(error)
        advice = _ADVICE.get(error.errno, "check the disk and the folder")
        super().__init__(f"could not write {self.path}: {what}; {advice} (any earlier version of it is intact)")


@contextmanager
def storage_errors(path: str | Path):
    """Turn an OSError raised while writing `path` into a StorageError about it."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(path, e) from None


@contextmanager
def atomic_path(path: str | Path):
    """Yields a temporary path in the target's folder (same suffix); renamed onto `path` on success."""
    path = Path(path)
    tmp = None
    try:
        with storage_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
            os.close(fd)
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the permissions open() would
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Tensors to a .safetensors file, atomically. The file is serialised in memory and written by Python, so a full
    disk or a read-only folder raises StorageError naming `path` (safetensors' own writer reports it as a bare
    string)."""
    from safetensors.torch import save as safetensors_bytes

    with atomic_path(path) as tmp:
        tmp.write_bytes(safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata))
