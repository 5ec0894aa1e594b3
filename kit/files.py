"""Writing files so that a reader never sees half of one, and reading tables with one clear line.

Every file the kit writes (manifests, CSVs, JSON, tables, figures, checkpoints, caches) goes to a
temporary name in the same folder, is synced, and is then renamed over the old one: a crash, a
full disk or a kill during a write leaves the previous file intact and no temporary file behind,
and a write the file system refuses is one line naming the file (WriteError). A Ctrl-C during a
group of writes (a run's checkpoint and metrics of one epoch) waits until the group is written,
so the files on disk always agree with each other. Tables (CSV, TSV, Excel) that cannot be
parsed are one line naming the file too.
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


class WriteError(OSError):
    """A file that could not be written (full disk, quota, file-size limit, read-only folder); the message
    names the file and says whether its previous version is intact."""


class _Handle:
    """The file handle write_atomic yields: the open file, remembering the OS error of a refused write
    (torch's writer reports that one as a RuntimeError of its own, so the type would be lost)."""

    def __init__(self, handle):
        self._handle, self.refused = handle, None

    def write(self, data):
        try:
            return self._handle.write(data)
        except OSError as err:
            self.refused = err
            raise

    def __getattr__(self, name):  # seek, tell, flush, fileno, ...: the open file's own
        return getattr(self._handle, name)


@contextlib.contextmanager
def write_atomic(path):
    """A binary file handle on `path.tmp` in the same folder, synced to disk and renamed over `path` when
    the block ends without an error (e.g. ``with write_atomic(p) as f: np.savez(f, ...)``); removed
    otherwise. A write the file system refuses is a WriteError naming `path`, whatever error the
    writing library made of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    handle = None
    try:
        with open(tmp, "wb") as opened:
            handle = _Handle(opened)
            yield handle
            opened.flush()
            os.fsync(opened.fileno())
        os.replace(tmp, path)
    except Exception as err:
        refused = err if isinstance(err, OSError) else handle and handle.refused
        if not refused or isinstance(err, WriteError):
            raise
        reason = refused.strerror.lower() if refused.strerror else str(refused)
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise WriteError(f"{path}: could not be written ({reason}){kept}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path, text: str) -> None:
    """Write `text` to `path` atomically (write_atomic)."""
    with write_atomic(path) as handle:
        handle.write(text.encode())


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

    try:
        with write_atomic(path) as handle:
            fig.savefig(handle, format="png", dpi=dpi)
    finally:
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


@contextlib.contextmanager
def staging(folder):
    """A hidden, empty folder beside `folder` for files that must appear together with others (None: yields
    None): write them there, then move_into(`folder`); what is left is removed however the block ends, so a
    Ctrl-C or a full disk leaves nothing half-done in `folder`."""
    import shutil

    if folder is None:
        yield None
        return
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_into(tmp, folder) -> None:
    """Every file of the staging folder `tmp` into `folder` (made if missing), each by a rename."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for path in Path(tmp).iterdir():
        path.replace(folder / path.name)


def read_table(path, **kwargs):
    """pandas.read_csv with one clear line (naming the file) for a table that cannot be parsed."""
    import pandas as pd

    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as CSV ({err})") from err


def read_sheet(path, **kwargs):
    """pandas.read_excel of the first sheet (``.xls`` with xlrd, ``.xlsx`` with openpyxl), with one line
    naming the file for a workbook that cannot be read."""
    import pandas as pd

    engine = "xlrd" if Path(path).suffix.lower() == ".xls" else "openpyxl"
    try:
        return pd.read_excel(path, sheet_name=0, engine=engine, **kwargs)
    except Exception as err:  # xlrd and openpyxl raise types of their own (and zipfile's) for a damaged workbook
        raise ValueError(f"{path}: cannot read as an Excel sheet ({' '.join(str(err).split())})") from None


def first_line(err) -> str:
    """`<ErrorType>: <first line of its message>`, at most 200 characters of it."""
    lines = str(err).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(err).__name__}: {first[:200]}{' ...' if len(first) > 200 else ''}"


def require_columns(df, columns, path) -> None:
    """One line naming the file, the missing columns and the columns it has."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
