"""An exclusive lock on a run directory, so two commands never write the same run at once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.run_files import RunFiles

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class RunBusyError(ValueError):
    """Another process holds the lock of the run directory."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``RUN/.lock`` while the block runs; ``run_dir`` must exist.

    The operating system drops the lock when the process ends, even when it
    is killed, so a crashed run never leaves a stale lock behind.

    Raises:
        RunBusyError: if another process holds the lock; the message gives its process id.
    """
    if fcntl is None:
        # NOTE: without fcntl (Windows) runs are not locked, so two commands on one run can collide.
        yield
        return
    with open(RunFiles(run_dir).lock, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunBusyError(
                f"another process (pid {holder}) is already working on {run_dir}. Wait for it to finish, "
                "or stop it, then run the command again."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
