"""Checkpoint files: saved atomically, loaded without ever running code from them.

A checkpoint is a dict of tensors and plain Python values only (``model`` state_dict,
``optimizer``, ``meta``, ...). ``save_checkpoint`` refuses anything else before writing, and
writes to a temporary name, then renames; ``load_checkpoint`` reads with
``torch.load(weights_only=True)``, so a file from elsewhere cannot execute code, and every
failure (missing, truncated, not a checkpoint, a pickled object) is one line naming the file.
"""
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

from . import files

_SHOW = 5  # offending keys quoted in an error message


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the file and the problem."""


def first_keys(keys):
    """The first few of `keys`, sorted, for an error message."""
    keys = sorted(keys)
    more = f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


_PLAIN_TYPES = (str, bytes, int, float, bool, type(None), torch.Size, torch.dtype, torch.device)


def _not_plain(obj, where):
    """The first value under obj that weights_only loading would refuse, as (where, value), or None."""
    kind = type(obj)
    if kind in _PLAIN_TYPES or kind in (torch.Tensor, nn.Parameter):
        return None
    if kind in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                return f"{where} key {key!r}", key
            found = _not_plain(value, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if kind in (list, tuple, set):
        for index, value in enumerate(obj):
            found = _not_plain(value, f"{where}[{index}]")
            if found:
                return found
        return None
    return where, obj


def save_checkpoint(obj, path):
    """torch.save ``obj`` to ``path`` atomically: write ``path.tmp`` in the same folder, then rename.

    Refuses (before writing anything) values that ``load_checkpoint`` could not read back:
    only tensors, numbers, strings, None, torch dtypes/devices/sizes and dicts, lists,
    tuples and sets of them. An existing ``path`` is left intact if anything fails.
    """
    path = Path(path)
    found = _not_plain(obj, "checkpoint")
    if found:
        where, value = found
        raise CheckpointError(
            f"{path}: cannot save {where} of type {type(value).__module__}.{type(value).__qualname__}: "
            "checkpoints hold tensors and plain values only (convert numpy with torch.from_numpy or "
            ".tolist(), an argparse.Namespace with vars())")
    tmp = path.with_name(path.name + ".tmp")
    with files.ctrl_c_after_writes():  # a Ctrl-C inside torch.save would surface as a write error
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:  # a full disk shows as OSError or torch's "enforce fail" RuntimeError
            tmp.unlink(missing_ok=True)
            kept = f"; the previous {path.name} is intact" if path.exists() else ""
            raise CheckpointWriteError(f"{path}: could not be written ({_write_reason(err)}){kept}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (full disk, quota, read-only folder, file size limit)."""


def _write_reason(err) -> str:
    """Why a write failed, in words: the OS error of the file (a full disk raises ENOSPC or EDQUOT);
    torch's C++ writer reports it as 'PytorchStreamWriter failed writing file ...'."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    text = str(err)
    if "failed writing" in text or "file write failed" in text or "enforce fail" in text:
        return "the file system refused the write: no space left on the device, or a quota or file-size limit"
    return first_line(err)


def first_line(err):
    """`<ErrorType>: <first line of its message>`, at most 200 characters of it."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def _pickle_reason(err) -> str:
    """The line of torch's weights_only refusal that says what was refused; never its advice to load
    with weights_only=False, which would run whatever the file carries."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if "weights_only" not in line and "torch.load" not in line
              and not line.startswith("Check the documentation")]
    return (useful[0] if useful else type(err).__name__)[:200]


def torch_load(path, what):
    """torch.load(weights_only=True) with one clear line per failure; returns the object.

    A file that carries Python objects (a pickled function or class, e.g. os.system) is refused,
    and the message says so plainly; it never suggests turning the safe loading off."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not magic.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or a legacy pickle stream
        raise CheckpointError(f"{path}: not a readable PyTorch {what} (not a torch.save file: "
                              f"{'empty' if not magic else 'it starts with ' + repr(magic)})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise CheckpointError(f"{path}: this file contains Python objects that could run code "
                                  f"({found.group(1)}); refused. A {what} of this kit holds tensors and plain "
                                  "values only") from None
        raise CheckpointError(f"{path}: refused: not a plain {what} (pickle content that safe loading does not "
                              f"accept: {_pickle_reason(err)})") from None
    except Exception as err:  # truncated zip (OSError/RuntimeError), text (KeyError), empty file (EOFError)
        raise CheckpointError(f"{path}: not a readable PyTorch {what} (truncated, corrupt or not a torch.save "
                              f"file: {_pickle_reason(err)})") from None


def load_checkpoint(path):
    """A project checkpoint as a dict (``model`` state_dict, ``meta``, ...); weights_only loading."""
    ckpt = torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        found = f"a dict with keys {first_keys(map(str, ckpt))}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a checkpoint of this kit (expected a dict with a 'model' state_dict "
                              f"and 'meta', found {found})")
    return ckpt
