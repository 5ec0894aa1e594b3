"""Checkpoint files: saved atomically, loaded without ever running code from them.

A checkpoint is a dict of tensors and plain Python values only (``model`` state_dict,
``optimizer``, ``meta``, ...). ``save_checkpoint`` refuses anything else before writing, and
writes through files.write_atomic (a temporary name, then a rename); ``load_checkpoint`` reads
with ``torch.load(weights_only=True)``, so a file from elsewhere cannot execute code, and every
failure (missing, truncated, not a checkpoint, a pickled object) is one line naming the file.
"""
import pickle
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
    # A Ctrl-C that lands inside torch.save would surface as a write error: it waits for the write.
    with files.ctrl_c_after_writes(), files.write_atomic(path) as handle:
        torch.save(obj, handle)


def _unsafe_globals(path) -> list[str]:
    """The Python objects (module.name) a torch.save file's pickle names that weights-only loading does
    not allow; [] where torch cannot list them (a file in the legacy, pre-zip format)."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint, or one torch cannot open: nothing named
        return []


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
    except pickle.UnpicklingError:  # weights-only loading refused what the pickle holds
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise CheckpointError(f"{path}: this file contains Python objects that could run code "
                                  f"({', '.join(unsafe[:3])}); refused. A {what} of this kit holds tensors and plain "
                                  "values only") from None
        raise CheckpointError(f"{path}: refused: not a plain {what} (pickle content that safe loading does not "
                              "accept)") from None
    except Exception as err:  # truncated zip (RuntimeError), a legacy stream cut short (EOFError), ...
        raise CheckpointError(f"{path}: not a readable PyTorch {what} (truncated, corrupt or not a torch.save "
                              f"file: {files.first_line(err)})") from None


def load_checkpoint(path):
    """A project checkpoint as a dict (``model`` state_dict, ``meta``, ...); weights_only loading."""
    ckpt = torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        found = f"a dict with keys {first_keys(map(str, ckpt))}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a checkpoint of this kit (expected a dict with a 'model' state_dict "
                              f"and 'meta', found {found})")
    return ckpt
