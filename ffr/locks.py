"""One writer per output: a second ``ffr`` run into the same folder (or checkpoint) stops at once
with a message naming the first one's pid, instead of training everything twice and interleaving
both runs' histories.

The lock is an advisory ``flock`` on a small file beside the output, removed when the run ends
and released by the kernel however the holder exits (``kill -9`` included), so a stale lock file
never blocks a rerun. Processes that a run starts itself (``compare``'s workers, ``torchrun``'s ranks) write
under their parent's lock and take none.

:func:`work_lock` is the waiting kind, for work two runs may share rather than outputs they
would both write: a stage in a stage cache that two grids use (``--stage-cache``).
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
    try:
        fd = _lock_file(path, wait=False)
    except _Busy as e:
        what = folder if name in (LOCK_FILE, ".ffr.lock") else folder / name.removesuffix(".lock")  # a file's own lock
        raise OutputBusy(f"{what}: another ffr run is writing here ({e.holder}); wait for it to finish or use "
                         "another output " + ("folder" if what == folder else "path")) from None
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
        _unlock_file(path, fd)


@contextlib.contextmanager
def work_lock(folder: str | os.PathLike, what: str, name: str = LOCK_FILE):
    """Hold the lock of ``folder`` for the ``with`` block, *waiting* while another process holds
    it: for work that two runs may both set out to do, such as training one stage of a stage
    cache that two grids share. The second waits, then finds the work done instead of repeating it.

    Unlike :func:`output_lock` it is taken in the worker processes of a run too (two workers of
    two grids may meet on one stage). The ranks of one ``torchrun`` do the work together: rank 0
    takes the lock for them all (the others wait for it at their next collective step).

    Args:
        folder: The folder of the work (created when missing).
        what: The work, for the one line printed to stderr when this process has to wait.
        name: The lock file's name.
    """
    folder = Path(folder)
    if os.environ.get("RANK", "0") != "0":  # a torchrun rank other than 0: rank 0 holds it for the group
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = str((folder / name).resolve())
    try:
        fd = _lock_file(path, wait=False)
    except _Busy as e:
        print(f"ffr: waiting for {e.holder}, which is {what}", file=sys.stderr, flush=True)
        fd = _lock_file(path, wait=True)
    try:
        yield
    finally:
        _unlock_file(path, fd)


class _Busy(Exception):
    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def _lock_file(path: str, wait: bool) -> int:
    """Open and ``flock`` the file ``path``, write this process's pid and command in it, and return
    its descriptor. Raises :class:`_Busy` (with the holder's line) when another process holds it
    and ``wait`` is false; waits for it otherwise."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 500, 0).decode(errors="replace").strip() or "a process that wrote no details"
            os.close(fd)
            raise _Busy(holder) from None
        try:  # the holder before us may have removed the file between our open and our lock: retry
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}: ffr {' '.join(sys.argv[1:])}".encode(), 0)
    return fd


def _unlock_file(path: str, fd: int) -> None:
    import fcntl

    os.unlink(path)  # before unlocking: a waiter that opened it retries on the new file
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
