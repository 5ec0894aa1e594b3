"""domaintl: the kit as clinical code imports it, after ``pip install -e .`` or ``pip install .``.

The repository root is this package: ``domaintl.transforms`` is the top-level transforms.py,
``domaintl.kit.models`` the model code, and so on. The names clinical code needs most are here,
imported on first use (so ``import domaintl`` loads neither torch nor MONAI)::

    from domaintl import eval_transforms, load_model
    model, meta = load_model("best.pt")                  # eval mode; meta: classes, domain, image size
    preprocess = eval_transforms(meta["domain"], image_size=meta["image_size"])

    from domaintl import load_backbone
    features = load_backbone("backbone.pt")             # a pretrained MONAI DenseNet-121 feature extractor

Run from a checkout without installing, the same modules are ``transforms`` and ``kit.models``.
"""
__version__ = "0.1.0"

_PUBLIC = {  # name -> module (relative to this package) that defines it
    "eval_transforms": "transforms",
    "preprocess_transforms": "transforms",
    "loader_transforms": "transforms",
    "apply_tail": "transforms",
    "load_model": "kit.models",
    "load_backbone": "kit.models",
    "model_from_checkpoint": "kit.models",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value
