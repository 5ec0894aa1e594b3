"""Writing files so that a reader never sees half of one.

Every file the kit writes (manifests, CSVs, JSON, tables, figures, checkpoints) goes to a
temporary name in the same folder and is then renamed over the old one: a crash, a full disk or
a kill during a write leaves the previous file intact and no temporary file behind. A Ctrl-C
during a group of writes (a run's checkpoint and metrics of one epoch) waits until the group is
written, so the files on disk always agree with each other.
"""
import contextlib
import csv
import io
import json
import os
import signal
import threading
from pathlib import Path

_held_back = []  # the Ctrl-Cs that arrived inside a ctrl_c_after_writes block


def _hold(signum, frame):
    _held_back.append(signum)


@contextlib.contextmanager
def ctrl_c_after_writes():
    """Holds back a Ctrl-C (SIGINT) until the block is done, then raises it as KeyboardInterrupt.
    Without it a Ctrl-C that lands inside torch.save can surface as a write error. Inside an outer
    block, and outside the main thread (where signals cannot be handled), the block runs as it is."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is _hold:
        yield
        return
    _held_back.clear()
    previous = signal.signal(signal.SIGINT, _hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if _held_back:
        _held_back.clear()
        raise KeyboardInterrupt


def digest(path) -> str:
    """The first 16 hex digits of a file's SHA-256 (read in 8 MB blocks): a file known by its content."""
    import hashlib

    value = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            value.update(block)
    return value.hexdigest()[:16]


def write_text_atomic(path, text: str) -> None:
    """Write `text` to `path` via `path.tmp` in the same folder + os.replace."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def write_atomic(path):
    """A binary file handle on `path.tmp` in the same folder, renamed over `path` when the block ends
    without an error (e.g. ``with write_atomic(p) as f: np.savez(f, ...)``); removed otherwise."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(obj, path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(rows: list[dict], path, columns: list[str]) -> None:
    """Whole rows at once (metrics files are small: rewriting beats appending, and never duplicates)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def save_figure(fig, path, dpi: int = 120) -> None:
    """A matplotlib figure as PNG, atomically; the figure is closed afterwards."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def publish(tmp_dir, out_dir) -> None:
    """Put a finished folder in place in one rename: readers see the old folder or the new one, never
    a mix (folders whose name starts with '.' are ignored by the kit's readers)."""
    import shutil

    tmp_dir, out_dir = Path(tmp_dir), Path(out_dir)
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(tmp_dir, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def read_table(path, **kwargs):
    """pandas.read_csv with one clear line (naming the file) for a table that cannot be parsed."""
    import pandas as pd

    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as CSV ({err})") from err


def require_columns(df, columns, path) -> None:
    """One line naming the file, the missing columns and the columns it has."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
