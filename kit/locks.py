"""One writer per folder: an exclusive OS file lock held for the life of a process.

``hold(path)`` takes ``fcntl.flock`` on a small lock file and keeps it until the process ends;
the kernel releases it when the process dies however it dies (SIGKILL included), so a crashed
run never leaves a stale lock behind. A second process is refused at once with one line naming
the holder's pid and host. Training runs lock their run folder (rank 0 under torchrun),
evaluate.py its output folder, prepare_data.py each manifest, the workflow (Snakefile) the study folder OUT.
"""
import datetime
import fcntl
import os
import socket
from pathlib import Path

_HELD = {}  # lock path -> open file: the lock lives as long as its descriptor


class FolderInUse(RuntimeError):
    """Another process holds the lock; the message names it."""


def hold(lock_path, *, what: str) -> None:
    """Take the exclusive lock `lock_path` (created, with its folder, when missing) for the rest of
    this process; FolderInUse when another process holds it. Taking a lock this process already
    holds does nothing."""
    lock_path = Path(lock_path).resolve()
    if lock_path in _HELD:
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise FolderInUse(f"{what} is in use by {holder}; wait for it to finish or stop it, or choose another "
                          f"folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
    handle.flush()
    _HELD[lock_path] = handle
