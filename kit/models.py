"""DenseNet-121 with the paper's classification head and its three initialisations.

The network (paper Fig. 1): MONAI ``DenseNet121`` features -> ReLU -> global average pool ->
head ``Linear(1024, hidden_dim) -> BatchNorm1d -> ReLU -> Dropout -> Linear(hidden_dim,
num_outputs)``. The backbone keeps MONAI's parameter names (``features.*``), so a MONAI
``DenseNet121`` loads our backbone as it is; the head is ``head.*``.

Initialisations (``initialise``):

* ``"random"``: MONAI's own initialisation (Kaiming convolutions, unit BatchNorm);
* ``"imagenet"``: torchvision's ImageNet DenseNet-121 file ``densenet121-a639ec97.pth`` from
  the torch hub cache, an explicit path, or a download; torchvision's key names (both the old
  ``norm.1`` and the newer ``norm1`` spelling) are mapped to MONAI's explicitly and every
  backbone tensor must be filled (MONAI's ``pretrained=True`` silently skips what it cannot map);
* a project checkpoint (``last.pt``/``best.pt`` of an earlier stage): backbone only, the head
  is always new; the missing keys must be exactly the head's;
* a published DenseNet-121 file (torchvision, CheXNet-style, torchxrayvision, MONAI; backbones.py):
  every backbone tensor mapped strictly, the stem adapted to 3 channels, the file's hash in the description.

Usage::

    from kit.models import build_model, initialise
    model = build_model(2)                                      # e.g. normal / tuberculosis
    print(initialise(model, "imagenet", imagenet_weights=None))  # hub cache, else download
    print(initialise(model, "OUT/pretrain/CXR_RI/last.pt"))      # domain-pretrained backbone

``model_from_checkpoint`` (or ``load_model``) rebuilds a trained model from a checkpoint's
``meta`` (checkpoint files themselves: checkpoints.py). ``load_backbone`` turns a backbone file
(export.py --formats backbone: a pretrained model's ``features.*`` alone, with its meta) or any
checkpoint of this kit into MONAI's DenseNet-121 feature extractor, to use as your ImageNet;
``initialise`` (``finetune_target.py --init``) takes the same files.
"""
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import DenseNet121

from . import backbones
from .checkpoints import CheckpointError, first_keys, load_checkpoint, torch_load
from .imagenet import find_imagenet_weights
from .paper import STRATEGIES

NUM_FEATURES = 1024  # channels out of DenseNet-121's last dense block


class DenseNetClassifier(nn.Module):
    """MONAI DenseNet-121 features + the paper's FC-BN-ReLU-Dropout-FC head."""

    def __init__(self, num_outputs, *, hidden_dim=512, dropout=0.5):
        super().__init__()
        self.features = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1).features
        self.head = nn.Sequential(OrderedDict(
            fc=nn.Linear(NUM_FEATURES, hidden_dim),
            bn=nn.BatchNorm1d(hidden_dim),
            relu=nn.ReLU(inplace=True),
            dropout=nn.Dropout(dropout),
            out=nn.Linear(hidden_dim, num_outputs),
        ))
        self.frozen = []  # backbone modules kept as they are (see freeze): a plain list, not registered again

    def train(self, mode=True):
        """As nn.Module.train, but frozen modules stay in eval mode: their BatchNorm statistics do not move."""
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, x):
        x = F.relu(self.features(x), inplace=True)  # features end with BatchNorm (norm5), as in MONAI
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)  # logits




def freeze(model, strategy):
    """Fine-tuning strategies: which part of the backbone stays as initialised.

    full: nothing is frozen. partial: everything before the last dense block (conv0 ...
    transition3) is frozen; denseblock4, norm5 and the head train. linear: the whole backbone is
    frozen (a linear probe of its features through the head). A frozen module's parameters get no
    gradient and its BatchNorm layers keep their running statistics (eval mode, also while the
    model trains). Returns the parameters that train, for the optimizer."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    children = list(model.features.named_children())
    first_trained = {"full": 0, "partial": [name for name, _ in children].index("denseblock4"),
                     "linear": len(children)}[strategy]
    model.frozen = [module for _, module in children[:first_trained]]
    for module in model.frozen:
        module.requires_grad_(False)
    model.train(model.training)
    return [p for p in model.parameters() if p.requires_grad]


def build_model(num_outputs, *, hidden_dim=512, dropout=0.5):
    """DenseNet-121 + head with ``num_outputs`` logits; randomly initialised (MONAI's defaults)."""
    if not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs must be a positive int, got {num_outputs!r}")
    return DenseNetClassifier(num_outputs, hidden_dim=hidden_dim, dropout=dropout)


def backbone_keys(model):
    """The state-dict keys of the backbone (``features.*``)."""
    return {key for key in model.state_dict() if key.startswith("features.")}


META_KEYS = ("classes", "task", "domain", "image_size", "num_outputs", "hidden_dim", "dropout", "headline_metric")


def model_from_checkpoint(path):
    """Rebuild the trained model a checkpoint describes: (model in eval mode, meta, checkpoint).

    ``meta`` carries what downstream code needs (classes, task, domain, image size, head
    size), so evaluation and clinical code use exactly the model and transforms of training.
    """
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta")
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint has no model description ('meta' lacks {', '.join(missing)}); "
                              "was it written by this kit's training scripts?")
    model = build_model(meta["num_outputs"], hidden_dim=meta["hidden_dim"], dropout=meta["dropout"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model its meta describes "
                              f"({' '.join(line.strip() for line in str(err).splitlines()[:2])})") from None
    return model.eval(), meta, ckpt


def load_model(path):
    """The trained model of a checkpoint, in eval mode, and its meta (classes, task, domain, image size)."""
    model, meta, _ = model_from_checkpoint(path)
    return model, meta


def load_backbone(path, out_channels=None):
    """A pretrained backbone as MONAI's DenseNet-121, from a backbone file (export.py --formats
    backbone) or any checkpoint of this kit; every backbone tensor must fit (strict).

    Without ``out_channels``: ``DenseNet121(...).features``, a feature extractor (B, 3, H, W) ->
    (B, 1024, H/32, W/32) (the kit's model and MONAI's classifier add ReLU and global average
    pooling). With ``out_channels``: a whole ``monai.networks.nets.DenseNet121`` whose features
    are the pretrained ones and whose final Linear layer is new, ready to fine-tune. Inputs as
    in training: 3 channels, ImageNet-normalised (transforms.eval_transforms).
    """
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=out_channels or 1)
    prefix = "features."
    state = {k[len(prefix):]: v for k, v in load_checkpoint(path)["model"].items() if k.startswith(prefix)}
    try:
        net.features.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: backbone is not this kit's DenseNet-121 "
                              f"({' '.join(line.strip() for line in str(err).splitlines()[:2])})") from None
    return net if out_channels else net.features.eval()


# --- initialisation ----------------------------------------------------------------------------

def torchvision_key_map(model):
    """{torchvision key: model key} for the backbone, in both torchvision spellings.

    torchvision's DenseNet names a dense layer's modules ``norm1, conv1, norm2, conv2``
    directly under ``denselayerN`` (old files, such as a639ec97: ``norm.1``, ``conv.1``...);
    MONAI puts them in a ``layers`` Sequential. All other backbone names are the same.
    """
    return {spelling: key for key in backbone_keys(model) for spelling in backbones.spellings(key)}


def load_imagenet_backbone(model, path):
    """Copy torchvision's ImageNet DenseNet-121 weights into ``model.features``, checking every key.

    Accepts a raw state dict or one nested under "state_dict" or "model"; ``classifier.*``
    is dropped; only ``num_batches_tracked`` buffers may be missing (old files lack them).
    """
    state = torch_load(path, "weights file")
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict (found {type(state).__name__})")
    mapping = torchvision_key_map(model)
    expected = model.state_dict()
    features, unexpected, twice = {}, [], []
    for key, value in state.items():
        if key.startswith("classifier."):
            continue  # ImageNet's 1000 classes; our head is new
        target = mapping.get(key)
        if target is None or not isinstance(value, torch.Tensor):
            unexpected.append(key)
        elif target in features:
            twice.append(key)  # both spellings of one tensor
        else:
            features[target] = value
    missing = [k for k in expected if k.startswith("features.") and k not in features
               and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in features.items()
             if v.shape != expected[k].shape]
    problems = [f"{len(keys)} {label} ({first_keys(keys)})" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("given twice", twice), ("wrong shape", wrong))
                if keys]
    if problems:
        raise CheckpointError(f"{path}: not torchvision's DenseNet-121 weights: " + "; ".join(problems))
    prefix = len("features.")
    result = model.features.load_state_dict({k[prefix:]: v for k, v in features.items()}, strict=False)
    left = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if left or result.unexpected_keys:  # cannot happen after the checks above; never load partially in silence
        raise CheckpointError(f"{path}: backbone partly loaded: missing {first_keys(left)}, "
                              f"unexpected {first_keys(result.unexpected_keys)}")


def load_backbone_from_checkpoint(model, path):
    """Copy the backbone (``features.*``) of a project checkpoint into ``model``; the head stays new.

    Returns the checkpoint's ``meta`` (an empty dict where it has none).
    """
    ckpt = load_checkpoint(path)
    expected = model.state_dict()
    features = {k: v for k, v in ckpt["model"].items() if k.startswith("features.")}
    missing = [k for k in expected if k.startswith("features.") and k not in features]
    unexpected = [k for k in features if k not in expected]
    wrong = [f"{k} {tuple(getattr(v, 'shape', ()))} != {tuple(expected[k].shape)}" for k, v in features.items()
             if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)]
    problems = [f"{len(keys)} {label} ({first_keys(keys)})" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
    if problems:
        raise CheckpointError(f"{path}: backbone is not this kit's DenseNet-121: " + "; ".join(problems))
    result = model.load_state_dict(features, strict=False)
    # BatchNorm does not report an absent num_batches_tracked buffer as missing
    head = {k for k in expected if not k.startswith("features.") and not k.endswith("num_batches_tracked")}
    if set(result.missing_keys) != head or result.unexpected_keys:
        raise CheckpointError(f"{path}: backbone partly loaded: missing {first_keys(result.missing_keys)}, "
                              f"unexpected {first_keys(result.unexpected_keys)}")
    meta = ckpt.get("meta")
    return meta if isinstance(meta, dict) else {}


def load_published_backbone(model, path):
    """Copy a DenseNet-121 file of another library (backbones.LAYOUTS) into ``model.features``, every tensor
    checked; returns its record (file, sha256, layout, stem and intensity adaptations) for ``meta``."""
    import transforms  # the kit's input normalisation, which a torchxrayvision stem is adapted to

    expected = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    features, record = backbones.read_backbone(path, expected, mean=transforms.IMAGENET_MEAN,
                                               std=transforms.IMAGENET_STD)
    result = model.load_state_dict(features, strict=False)
    head = {k for k in model.state_dict() if not k.startswith("features.") and not k.endswith("num_batches_tracked")}
    left = {k for k in result.missing_keys if not k.endswith("num_batches_tracked")}
    if left != head or result.unexpected_keys:  # cannot happen after map_backbone; never load partially in silence
        raise CheckpointError(f"{path}: backbone partly loaded: missing {first_keys(left - head)}, "
                              f"unexpected {first_keys(result.unexpected_keys)}")
    return record


def create_model(num_outputs, init, *, hidden_dim=512, dropout=0.5, imagenet_weights=None):
    """build_model + initialise: (model, description of the initialisation)."""
    model = build_model(num_outputs, hidden_dim=hidden_dim, dropout=dropout)
    return model, initialise(model, init, imagenet_weights=imagenet_weights)


def initialise(model, init, *, imagenet_weights=None):
    """Initialise ``model`` in place and return a short description for logs and ``meta``.

    init: "random" (MONAI's default initialisation, nothing to do), "imagenet" (torchvision's
    ImageNet weights, see find_imagenet_weights; ``imagenet_weights`` is an explicit path) or
    the path of a project checkpoint or of a backbone file exported from one (export.py
    --formats backbone), or of a published DenseNet-121 file (backbones.LAYOUTS); either way the
    backbone only, with every key checked; the head stays new.
    """
    init = str(init)
    if init == "random":
        return "random (MONAI default initialisation)"
    if init == "imagenet":
        path = find_imagenet_weights(imagenet_weights)
        load_imagenet_backbone(model, path)
        return f"imagenet ({path})"
    if Path(init).is_file() and backbones.layout_of(init) != "kit":
        return backbones.describe(load_published_backbone(model, init))
    if Path(init).is_file():
        meta = load_backbone_from_checkpoint(model, init)
        source = f"; pretrained on {meta['key']}" if isinstance(meta.get("key"), str) else ""
        kind = "backbone file" if meta.get("kind") == "backbone" else "checkpoint"
        return f"{kind} {Path(init).resolve()} (backbone only, new head{source})"
    if Path(init).is_dir():
        raise ValueError(f"{init}: is a folder; --init takes a checkpoint file, e.g. {Path(init) / 'last.pt'}")
    raise ValueError(f"{init}: unknown init: expected 'random', 'imagenet' or the path of an existing "
                     "checkpoint or DenseNet-121 weights file")
