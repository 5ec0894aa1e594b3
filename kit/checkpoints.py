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
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def one_line(err):
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def torch_load(path, what):
    """torch.load(weights_only=True) with one clear line per failure; returns the object."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise CheckpointError(
                f"{path}: refused to load a pickled Python object ({found.group(1)}): checkpoints must hold "
                "tensors and plain values only (state_dicts, numbers, strings, lists, dicts)") from None
        raise CheckpointError(f"{path}: not a readable PyTorch {what} (corrupt or not a torch.save file: "
                              f"{one_line(err)})") from None
    except Exception as err:  # truncated zip (OSError/RuntimeError), text (KeyError), empty file (EOFError)
        raise CheckpointError(f"{path}: not a readable PyTorch {what} (truncated, corrupt or not a torch.save "
                              f"file: {one_line(err)})") from None


def load_checkpoint(path):
    """A project checkpoint as a dict (``model`` state_dict, ``meta``, ...); weights_only loading."""
    ckpt = torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        found = f"a dict with keys {first_keys(map(str, ckpt))}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a checkpoint of this kit (expected a dict with a 'model' state_dict "
                              f"and 'meta', found {found})")
    return ckpt
