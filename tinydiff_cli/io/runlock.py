"""One live trainer per run folder: an advisory lock (flock) on <run>/.tinydiff.lock, held while a process trains
or distils there.

The operating system drops the lock when its process ends, however it ends (kill -9 included), so a killed run never
leaves a stale lock behind; the file stays, holding the last holder's description, and is harmless. Readers
(`sample`, `eval`) take no lock: checkpoints are written atomically, so they always read a whole one. Where flock
does not exist (Windows), there is no lock.
"""
from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .atomic import storage_errors
from ..errors import TinydiffError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".tinydiff.lock"


@contextmanager
def run_lock(run_dir: str | Path, what: str | None = "train"):
    """Hold the run folder's lock for the duration of the block (recording `tinydiff <what>`, this process and host
    in the file), or raise a TinydiffError naming the process that holds it."""
    run_dir = Path(run_dir)
    if fcntl is None:
        yield
        return
    path, made_here = run_dir / LOCK_NAME, not run_dir.exists()
    with storage_errors(path):
        run_dir.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    acquired = False
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            acquired = True
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise TinydiffError(f"{run_dir} is in use: {holder}. Wait for it to finish or stop it (Ctrl-C, or kill "
                                f"the process: its last checkpoint stays loadable), or use another folder with --out") from None
        if what is not None:
            f.seek(0)
            f.truncate()
            f.write(f"`tinydiff {what}` is running there as process {os.getpid()} on {socket.gethostname()}, "
                    f"since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
        yield
    finally:
        try:
            if acquired and made_here and what is not None and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
                path.unlink()  # nothing was written (the data was missing, say): leave no folder behind
                run_dir.rmdir()
        except OSError:  # the folder went away, or another process began to use it: not this run's error
            pass
        finally:
            f.close()  # releases the lock


def check_not_in_use(run_dir: str | Path) -> None:
    """Raise the in-use error now if a live process holds the folder's lock (so that it is what the user hears,
    rather than a later complaint about the folder's contents)."""
    if fcntl is not None and (Path(run_dir) / LOCK_NAME).exists():
        with run_lock(run_dir, what=None):
            pass
