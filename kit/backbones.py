"""A DenseNet-121 file from elsewhere as the kit's backbone: which layout it has, and its keys mapped strictly.

Layouts (``detect``), as those libraries write them:

* ``kit``: this kit's checkpoints (``last.pt``, ``best.pt``) and backbone files (export.py): ``model`` + ``meta``;
* ``torchvision``: ``torchvision.models.densenet121().state_dict()`` (``features.denseblock1.denselayer1.norm1.weight``,
  or ``norm.1`` in files of 2017 such as ImageNet's a639ec97), ``classifier.*``;
* ``chexnet``: CheXNet-style training files: ``{"state_dict": {"module.densenet121.features...",
  "module.densenet121.classifier.0.weight"}, "epoch": ...}`` (a DataParallel-wrapped torchvision model);
* ``torchxrayvision``: ``xrv.models.DenseNet(...).state_dict()``: a 1-channel stem (``features.conv0.weight`` of
  shape (64, 1, 7, 7)), ``classifier.*`` and the ``op_threshs`` buffer; it reads images scaled to [-1024, 1024];
* ``monai``: ``monai.networks.nets.DenseNet121(...).state_dict()`` (``features...denselayer1.layers.norm1.weight``,
  ``class_layers.out.*``).

``map_backbone`` fills every tensor of the kit's backbone (``features.*``) from the file and refuses anything
else: a classifier is dropped (the head is always new) and said so; an unknown key, a missing one or a wrong
shape is one line. ``adapt_stem`` turns a 1-channel stem into the kit's 3-channel one (each weight divided by 3
and replicated: a grey image repeated over 3 channels gives the same response) or back (summed).
torchxrayvision's intensity scaling is folded into the stem (``fold_intensity``), so the kit's ImageNet-normalised
input reaches the first BatchNorm as the network was trained to see it.
"""
import re

import torch

from .checkpoints import CheckpointError, first_keys, torch_load
from .files import digest

LAYOUTS = ("kit", "torchvision", "chexnet", "torchxrayvision", "monai")
DENSENET121_BLOCKS = (6, 12, 24, 16)  # dense layers per block
XRV_RANGE = 1024.0  # torchxrayvision's input: [0, 1] pixels mapped to [-1024, 1024] (xrv.datasets.normalize)
HEAD_PREFIXES = ("classifier.", "class_layers.")  # the other networks' heads: dropped, the kit's head is new
BUFFERS_DROPPED = ("op_threshs",)  # torchxrayvision's calibration of its own 18 outputs


def spellings(key):
    """torchvision's spellings of one of the kit's (MONAI's) backbone keys: MONAI puts a dense layer's modules
    in a ``layers`` Sequential; torchvision names them directly (``norm1``; ``norm.1`` in old files)."""
    return {key.replace(".layers.", "."), re.sub(r"\.layers\.(norm|relu|conv)([12])\.", r".\1.\2.", key)}


def _state_of(obj):
    """(the state dict a loaded file holds, the prefix its keys carry)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "meta" not in obj:
        obj = obj["model"]
    prefix = ""
    for candidate in ("module.densenet121.", "module.", "densenet121."):
        if obj and all(str(k).startswith(candidate) for k in obj):
            prefix = candidate
            break
    return {str(k)[len(prefix):]: v for k, v in obj.items()}, prefix


def _blocks(keys):
    """Dense layers per block of a state dict's keys (any spelling)."""
    return tuple(sum(1 for k in keys if re.fullmatch(rf"features\.denseblock{b}\.denselayer\d+\.(layers\.)?conv\.?1\."
                                                      r"weight", k)) for b in (1, 2, 3, 4))


def _what_else(keys):
    """A few words on what a state dict that is not a DenseNet-121 is."""
    blocks = _blocks(keys)
    if any(blocks):
        named = {(6, 12, 32, 32): "DenseNet-169", (6, 12, 48, 32): "DenseNet-201", (6, 12, 36, 24): "DenseNet-161"}
        return (f"a DenseNet with dense blocks of {tuple(blocks)} layers"
                + (f" ({named[tuple(blocks)]})" if tuple(blocks) in named else "")
                + f", not DenseNet-121's {DENSENET121_BLOCKS}")
    if any(re.match(r"(.*\.)?layer\d\.\d+\.conv\d\.weight", k) for k in keys):
        return "a ResNet (layer1.0.conv1.weight ...)"
    if any(k.startswith(("blocks.", "patch_embed.")) or ".blocks." in k for k in keys):
        return "a vision transformer (patch_embed, blocks ...)"
    return f"no DenseNet features (keys: {first_keys(sorted(keys))})"


def detect(obj, path):
    """(layout, state dict with the file's own prefix removed) of a loaded file; one line for anything else."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a DenseNet-121 state dict (found a {type(obj).__name__}; save "
                              "model.state_dict(), not the model)")
    if isinstance(obj.get("model"), dict) and isinstance(obj.get("meta"), dict):
        return "kit", obj["model"]
    state, prefix = _state_of(obj)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: not a DenseNet-121 state dict (no tensors; keys: {first_keys(map(str, obj))})")
    if "features.conv0.weight" not in tensors or _blocks(tensors) != DENSENET121_BLOCKS:
        raise CheckpointError(f"{path}: not a DenseNet-121: {_what_else(tensors)}")
    if prefix == "module.densenet121.":
        layout = "chexnet"
    elif "op_threshs" in state or tensors["features.conv0.weight"].shape[1:2] == (1,) and "classifier.weight" in state:
        layout = "torchxrayvision"
    elif any(".layers." in k for k in tensors) or any(k.startswith("class_layers.") for k in state):
        layout = "monai"
    else:
        layout = "torchvision"
    return layout, state


def adapt_stem(weight, in_channels):
    """The first convolution's weight (out, c, kh, kw) for `in_channels` inputs: 1 -> 3 replicates it divided
    by 3, 3 -> 1 sums it, so a grey image gives the same response either way. Returns (weight, how or None)."""
    have = weight.shape[1]
    if have == in_channels:
        return weight, None
    if (have, in_channels) == (1, 3):
        return weight.repeat(1, 3, 1, 1) / 3, "1-channel stem replicated over 3 channels, divided by 3"
    if (have, in_channels) == (3, 1):
        return weight.sum(dim=1, keepdim=True), "3-channel stem summed into 1 channel"
    raise CheckpointError(f"stem of {have} input channels: cannot adapt it to {in_channels}")


def fold_intensity(features, mean, std):
    """torchxrayvision's input scaling folded into the stem: the kit feeds x_c = (p - mean_c) / std_c for pixels
    p in [0, 1], the network expects 2048 p - 1024. The scale goes into conv0's weights, the constant into
    norm0's running mean (exact away from the 3-pixel border, where conv0 pads with zeros; a BatchNorm in
    training mode takes its own batch statistics anyway). ``features`` holds a 3-channel conv0; changed in place."""
    weight = features["features.conv0.weight"]  # (64, 3, 7, 7), replicated / 3 from the grey stem
    std_t = torch.tensor(std, dtype=weight.dtype).view(1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=weight.dtype).view(1, 3, 1, 1)
    scale = 2 * XRV_RANGE
    offset = (weight * (scale * mean_t - XRV_RANGE)).sum(dim=(1, 2, 3))  # per output channel, for a constant image
    features["features.conv0.weight"] = weight * scale * std_t
    features["features.norm0.running_mean"] = features["features.norm0.running_mean"] - offset
    return f"torchxrayvision's [-{XRV_RANGE:g}, {XRV_RANGE:g}] input scaling folded into conv0 and norm0"


def map_backbone(state, expected, path):
    """{kit key: tensor} for every backbone key in `expected` ({kit key: tensor of the right shape}), from
    `state` in any spelling, and the head keys dropped; one line for a missing, unknown, doubled or
    wrong-shaped tensor. conv0 may have 1 input channel (see adapt_stem)."""
    mapping = {}
    for key in expected:
        for spelling in {key} | spellings(key):
            mapping[spelling] = key
    features, unexpected, twice, dropped = {}, [], [], []
    for key, value in state.items():
        if key.startswith(HEAD_PREFIXES) or key in BUFFERS_DROPPED:
            dropped.append(key)
            continue
        target = mapping.get(key)
        if target is None or not isinstance(value, torch.Tensor):
            unexpected.append(key)
        elif target in features:
            twice.append(key)
        else:
            features[target] = value
    missing = [k for k in expected if k not in features and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in features.items()
             if v.shape != expected[k].shape and not (k == "features.conv0.weight" and v.shape[1] in (1, 3))]
    problems = [f"{len(keys)} {label} ({first_keys(keys)})" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("given twice", twice), ("wrong shape", wrong))
                if keys]
    if problems:
        raise CheckpointError(f"{path}: not a DenseNet-121 backbone the kit can use: " + "; ".join(problems))
    return features, dropped


def read_backbone(path, expected, *, in_channels=3, mean=None, std=None):
    """A DenseNet-121 file of any layout as {kit key: tensor} for `expected`, and its record for ``meta``:
    file, sha256, layout, what was dropped, how the stem and the intensity were adapted. ``mean``/``std``:
    the per-channel normalisation the kit's input has (transforms.IMAGENET_MEAN/STD), for torchxrayvision."""
    layout, state = detect(torch_load(path, "DenseNet-121 weights file"), path)
    features, dropped = map_backbone(state, expected, path)
    weight, stem = adapt_stem(features["features.conv0.weight"], in_channels)
    features["features.conv0.weight"] = weight
    intensity = None
    if layout == "torchxrayvision" and mean is not None:
        intensity = fold_intensity(features, mean, std)
    record = {"file": str(path), "sha256": digest(path), "layout": layout, "stem": stem, "intensity": intensity,
              "dropped": first_keys(sorted(dropped)) if dropped else None}
    return features, record


def describe(record):
    """One line of a backbone record: layout, hash, adaptations."""
    notes = [n for n in (record.get("stem"), record.get("intensity")) if n]
    return (f"{record['layout']} DenseNet-121 {record['file']} (sha256 {record['sha256']}; backbone only, new "
            f"head" + "".join(f"; {n}" for n in notes) + ")")


def layout_of(path):
    """The layout of a file (LAYOUTS); one line for a file that is not a DenseNet-121."""
    return detect(torch_load(path, "checkpoint"), path)[0]


def record_of(path):
    """What a file is, for a run's meta: layout and sha256 (read_backbone records the adaptations too)."""
    return {"file": str(path), "sha256": digest(path), "layout": layout_of(path)}
