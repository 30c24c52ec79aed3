"""One writer per output: a second ``ffr`` run into the same folder (or checkpoint) stops at once
with a message naming the first one's pid, instead of training everything twice and interleaving
both runs' histories.

The lock is an advisory ``flock`` on a small file beside the output, removed when the run ends
and released by the kernel however the holder exits (``kill -9`` included), so a stale lock file
never blocks a rerun. Processes that a run starts itself (``compare``'s workers, ``torchrun``'s ranks) write
under their parent's lock and take none.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

LOCK_FILE = ".ffr.lock"
_held: dict[str, int] = {}  # lock path -> nesting depth, for this process


class OutputBusy(ValueError):
    """Another run holds the output's lock. (A ValueError: the CLI prints it in one line, exit 2.)"""


def _under_launcher() -> bool:
    """A rank of ``torchrun`` (its parent holds the lock) or a worker process spawned by a run that
    holds one (``compare``'s workers): ``FFR_LOCK_HELD`` names the holder's pid, another than ours."""
    holder = os.environ.get("FFR_LOCK_HELD")
    return "LOCAL_RANK" in os.environ or (holder is not None and holder != str(os.getpid()))


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, name: str = LOCK_FILE):
    """Hold the lock of ``folder`` (the file ``folder/name``) for the ``with`` block.

    Args:
        folder: The output folder (created when missing).
        name: The lock file's name; a per-file output (a checkpoint) uses ``<file>.lock``.

    Raises:
        OutputBusy: another process holds it; the message names its pid and command.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = str((folder / name).resolve())
    if _under_launcher() or path in _held:  # re-entrant within one run (sweep → compare)
        _held[path] = _held.get(path, 0) + 1
        try:
            yield
        finally:
            _held[path] -= 1
            if not _held[path]:
                del _held[path]
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 500, 0).decode(errors="replace").strip() or "a process that wrote no details"
            os.close(fd)
            raise OutputBusy(f"{folder}: another ffr run is writing here ({holder}); wait for it to finish or use "
                             "another output folder") from None
        try:  # the holder before us may have removed the file between our open and our lock: retry
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}: ffr {' '.join(sys.argv[1:])}".encode(), 0)
    _held[path] = 1
    previous = os.environ.get("FFR_LOCK_HELD")
    os.environ["FFR_LOCK_HELD"] = str(os.getpid())  # workers and ranks started from here write under it
    try:
        yield
    finally:
        del _held[path]
        if previous is None:
            os.environ.pop("FFR_LOCK_HELD", None)
        else:
            os.environ["FFR_LOCK_HELD"] = previous
        os.unlink(path)  # before unlocking: a waiter that opened it retries on the new file
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
