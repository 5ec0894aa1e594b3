"""Hand a trained model on: a TorchScript file that needs only torch, a MONAI bundle, a backbone file.

* ``save_torchscript``: the model in a normalisation wrapper (:class:`Deployed`): uint8 in [0, 255]
  or float in [0, 1], (B, 1 or 3, S, S), the picture as the eval chain's loader half leaves it
  (transforms.loader_transforms(domain, image_size=S, train=False)) -> ImageNet normalisation ->
  model -> probabilities (softmax; sigmoid for a multi-label model). Any other shape is refused with a
  ValueError naming the expected and the given shape: a picture of another size would be predicted
  without a word, and wrongly. Traced (the network) inside a scripted wrapper (the checks, the dtype and
  channel branches), with its description as the extra file ``meta.json`` (see :func:`description`).
  Loads with ``torch.jit.load`` alone: no kit, no MONAI.
* ``save_bundle``: a MONAI bundle folder that runs with MONAI alone (no kit). The network is built
  from MONAI and torch components (``monai.networks.nets.DenseNet121`` with ``out_channels =
  hidden_dim``, whose final Linear is the head's first one, then BatchNorm1d, ReLU, Dropout, Linear:
  the kit's model exactly) and its weights are ``models/model.pt``. ``network`` (what inference uses)
  refuses inputs other than (B, 3, S, S) with a ValueError, by a forward pre-hook (:func:`input_check`);
  ``network_def`` stays the bare network for MONAI's tools. The preprocessing is the kit's
  eval chain in stock MONAI transforms (``transforms.stock_eval_config``): the numbers of predict.py
  within 1e-5 in probability, except for what docs/clinical.md lists (a DICOM's VOI window and
  MONOCHROME1 inversion, predict.py's refusals).
* ``save_backbone``: ``features.*`` of a checkpoint with its meta (``kind: backbone``): what
  ``models.load_backbone`` and ``finetune_target.py --init`` take.
"""
import copy
import json
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

import transforms

from .checkpoints import save_checkpoint

VERSION = "0.1.0"
PROBABILITIES = {"multiclass": "softmax over the classes (they sum to 1)",
                 "multilabel": "sigmoid per label (independent, each in [0, 1])"}


def how_to_resize(domain: str, size: int) -> str:
    """What to do with a picture of another size: the training chain's resize, never a plain one (the
    hwsi and efi chains keep the aspect ratio and crop; efi crops to the eye first)."""
    return (f"resize with the rule the model was trained with: the kit's "
            f"transforms.loader_transforms('{domain}', image_size={size}, train=False) on the image file, "
            "or run predict.py")


class Deployed(nn.Module):
    """The model with what the kit does around it: uint8 or [0, 1] pixels (B, 1 or 3, S, S) ->
    probabilities (B, classes), with the arithmetic of transforms.apply_tail and losses.to_probs.
    Another shape is refused (ValueError): the network would give it probabilities without a word."""

    def __init__(self, network, multilabel: bool, *, image_size: int, domain: str):
        super().__init__()
        self.network = network
        self.multilabel = multilabel
        self.image_size = image_size
        self.hint = how_to_resize(domain, image_size)
        self.register_buffer("mean", torch.tensor(transforms.IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1 / torch.tensor(transforms.IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if x.dim() != 4 or x.shape[1] not in [1, 3] or x.shape[2] != size or x.shape[3] != size:
            given = "(" + ", ".join([str(n) for n in x.shape]) + ")"
            raise ValueError(f"model.ts takes (batch, 1 or 3, {size}, {size}) pictures (grey or RGB, {size} x "
                             f"{size} px, as the model was trained); given {given}: {self.hint}")
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).mul(1 / 255)
        else:
            x = x.to(torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        logits = self.network(torch.sub(x, self.mean).mul(self.inv_std)).float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)


def description(meta: dict, *, source: str, epoch=None) -> dict:
    """What a user of an exported model must know: classes, domain, input, output, provenance."""
    size = meta["image_size"]
    return {
        "format": "domaintl TorchScript model", "version": VERSION, "task": meta["task"], "domain": meta["domain"],
        "classes": list(meta["classes"]), "image_size": size, "trained_on": meta.get("key"),
        "source_checkpoint": source, "epoch": epoch, "headline_metric": meta.get("headline_metric"),
        "input": {
            "layout": f"(batch, channels, {size}, {size}): channels first, rows top to bottom; channels 1 (grey, "
                      "repeated to 3) or 3 (RGB); any other shape is refused (ValueError)",
            "dtype": "uint8 in [0, 255], or float in [0, 1]",
            "preprocessing": f"the head of transforms.eval_transforms('{meta['domain']}', image_size={size}) "
                             "rounded to uint8, i.e. transforms.loader_transforms(domain, image_size, train=False)"
                             "['image']: read, grey/colour to [0, 1], resize (hwsi: shorter side, efi: eye crop), "
                             f"centre {size} x {size}",
            "normalisation": {"applied_inside": True, "mean": list(transforms.IMAGENET_MEAN),
                              "std": list(transforms.IMAGENET_STD), "formula": "(x - mean) / std, x in [0, 1]"},
        },
        "output": {"kind": "probabilities", "activation": PROBABILITIES[meta["task"]],
                   "shape": f"(batch, {len(meta['classes'])}), columns in the order of 'classes'"},
    }


def save_torchscript(model, meta: dict, path, *, source: str, epoch=None) -> dict:
    """Trace `model` (eval mode, CPU, fp32), wrap it in Deployed, script, save with meta.json. Returns the description."""
    size = meta["image_size"]
    model = copy.deepcopy(model).float().cpu().eval().requires_grad_(False)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(2, 3, size, size), check_trace=False)
    scripted = torch.jit.script(Deployed(traced, meta["task"] == "multilabel", image_size=size,
                                         domain=meta["domain"]).eval())
    info = description(meta, source=source, epoch=epoch)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.jit.save(scripted, str(tmp), _extra_files={"meta.json": json.dumps(info, indent=2)})
    tmp.replace(path)
    return info


def save_backbone(checkpoint: dict, path, *, source: str) -> dict:
    """The backbone (``features.*``) of a loaded checkpoint as a file of its own, with its meta."""
    meta = dict(checkpoint.get("meta") or {})
    meta.pop("data", None)  # the training images' record: not needed to reuse the features
    meta.update({"kind": "backbone", "exported_from": source, "epoch": checkpoint.get("epoch")})
    features = OrderedDict((k, v) for k, v in checkpoint["model"].items() if k.startswith("features."))
    save_checkpoint({"model": features, "meta": meta}, path)
    return meta


# --------------------------------------------------------------------------- MONAI bundle

BUNDLE_KEYS = {"features.": "backbone.features.", "head.fc.": "backbone.class_layers.out.", "head.bn.": "bn.",
               "head.out.": "out."}


def bundle_state_dict(state: dict) -> OrderedDict:
    """The kit's state dict under the names of the bundle's network_def (see BUNDLE_KEYS)."""
    renamed = OrderedDict()
    for key, value in state.items():
        prefix = next(p for p in BUNDLE_KEYS if key.startswith(p))
        renamed[BUNDLE_KEYS[prefix] + key[len(prefix):]] = value
    return renamed


def input_check(image_size: int) -> str:
    """The bundle's forward pre-hook, a config expression: inputs other than (B, 3, S, S) are refused with
    a ValueError (torch._check_value), where the network would predict them without a word."""
    shape = f"(3, {image_size}, {image_size})"
    message = (f"'this network takes (batch, 3, {image_size}, {image_size}) images ({image_size} x {image_size} px, "
               f"as it was trained); given ' + str(tuple(args[0].shape)) + ': run the image files through "
               "`preprocessing` in configs/inference.json, which resizes with the rule the model was trained with'")
    return f"$lambda network, args: torch._check_value(tuple(args[0].shape[1:]) == {shape}, lambda: {message})"


def inference_config(meta: dict) -> dict:
    """configs/inference.json: MONAI components for the network, the kit's eval chain in stock MONAI
    transforms for the images (transforms.stock_eval_config), so that MONAI alone runs it.
    `python -m monai.bundle run --config_file configs/inference.json --bundle_root B --dataset_dir D`
    writes <output_dir>/predictions.csv (image, prob_<class>...). `network` is `network_def` on the
    device with input_check's hook; `network_def` stays the bare network (MONAI's ckpt_export scripts
    it, and TorchScript cannot compile a hook written in a config)."""
    multilabel = meta["task"] == "multilabel"
    return {
        "imports": ["$import collections", "$import glob", "$import os", "$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "images",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "classes": list(meta["classes"]),
        "domain": meta["domain"],
        "image_size": meta["image_size"],
        "hidden_dim": meta["hidden_dim"],
        "dropout": meta["dropout"],
        "backbone": {"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": 2, "in_channels": 3,
                     "out_channels": "@hidden_dim"},
        "network_def": "$torch.nn.Sequential(collections.OrderedDict(backbone=@backbone, "
                       "bn=torch.nn.BatchNorm1d(@hidden_dim), relu=torch.nn.ReLU(), dropout=torch.nn.Dropout(@dropout), "
                       "out=torch.nn.Linear(@hidden_dim, len(@classes))))",
        "input_check": input_check(meta["image_size"]),
        "network": "$[@network_def.register_forward_pre_hook(@input_check), @network_def.to(@device)][-1]",
        "ckpt_path": "$os.path.join(@bundle_root, 'models', 'model.pt')",
        "load_weights": "$@network.load_state_dict(torch.load(@ckpt_path, map_location=@device, weights_only=True))",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "CopyItemsd", "keys": "image", "names": "path"},
            *transforms.stock_eval_config(meta["domain"], image_size=meta["image_size"]),
        ]},
        "datalist": "$[{'image': f} for f in sorted(glob.glob(os.path.join(@dataset_dir, '**', '*'), recursive=True)) "
                    "if os.path.isfile(f)]",
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 16, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Activations", "sigmoid": multilabel, "softmax": not multilabel, "dim": 1},
        "predict": "$lambda images: @postprocessing(@inferer(images.to(@device), @network).float()).cpu()",
        "saver": {"_target_": "CSVSaver", "output_dir": "@output_dir", "filename": "predictions.csv",
                  "overwrite": True, "flush": False, "delimiter": ","},
        "initialize": ["$monai.utils.set_determinism(seed=0)", "$@load_weights", "$@network.eval()"],
        "run": ["$torch.set_grad_enabled(False)",
                "$[@saver.save_batch(@predict(b['image']), {'filename_or_obj': b['path']}) for b in @dataloader]",
                "$@saver.finalize()"],
    }


def metadata(meta: dict, *, source: str, epoch=None, metrics: dict | None = None) -> dict:
    """configs/metadata.json after MONAI's bundle specification (required keys, network_data_format)."""
    import monai
    import numpy
    import PIL
    import pydicom

    size, classes = meta["image_size"], list(meta["classes"])
    modality = {"cxr": "XR (chest X-ray)", "hwsi": "histopathology (H&E)", "efi": "fundus photograph"}[meta["domain"]]
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": VERSION,
        "changelog": {VERSION: f"exported from {Path(source).name} (epoch {epoch}) by export.py"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"pillow": PIL.__version__, "pydicom": pydicom.__version__},  # the readers
        "supported_apps": {},
        "name": f"{meta.get('key')} {meta['domain']} DenseNet-121",
        "task": f"{'Multi-label' if meta['task'] == 'multilabel' else 'Multi-class'} classification of "
                f"{modality} images: {', '.join(classes)}",
        "description": f"DenseNet-121 (MONAI) with an FC-BN-ReLU-Dropout-FC head, fine-tuned on {meta.get('key')} "
                       f"from {meta.get('init_description', meta.get('init'))}; inputs preprocessed by the kit's "
                       f"'{meta['domain']}' eval chain at {size} px, in stock MONAI transforms",
        "authors": "domaintl study kit (export.py)",
        "copyright": "see the training data's licence (docs/README.md)",
        "data_source": f"{meta.get('key')}: the train split of the manifest the checkpoint was trained on",
        "data_type": "png, jpeg, tiff, bmp, dicom, nifti (2-D)",
        "image_classes": f"3 channels (grey repeated), {size} x {size}, ImageNet-normalised",
        "pred_classes": f"{len(classes)} channels: " + ", ".join(f"{i} {c}" for i, c in enumerate(classes)),
        "eval_metrics": metrics or {},
        "intended_use": "Research on transfer learning; not a medical device and not for diagnosis",
        "references": ["Jindal & Singh, Towards Domain-Aware Transfer Learning for Medical Image Analysis"],
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": modality, "num_channels": 3,
                "spatial_shape": [size, size], "dtype": "float32",
                "value_range": [round(-max(m / s for m, s in zip(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)), 4),
                                round(max((1 - m) / s for m, s in zip(transforms.IMAGENET_MEAN,
                                                                      transforms.IMAGENET_STD)), 4)],
                "is_patch_data": False, "channel_def": {"0": "R", "1": "G", "2": "B"}}},
            "outputs": {"pred": {
                "type": "probabilities", "format": "classes", "num_channels": len(classes), "spatial_shape": [],
                "dtype": "float32", "value_range": [],
                "is_patch_data": False, "channel_def": {str(i): c for i, c in enumerate(classes)},
                "description": f"logits; the postprocessing applies {PROBABILITIES[meta['task']]}"}},
        },
    }


def bundle_readme(meta: dict, info: dict, *, metrics_rows=None) -> str:
    """docs/README.md: what the model is, its data, its test metrics with CIs, how to run it, intended use."""
    classes = ", ".join(f"`{c}`" for c in meta["classes"])
    lines = [f"# {info['name']}", "", info["task"] + ".", "", "## Model", "",
             info["description"] + ".", "", f"Classes, in output order: {classes}.", "",
             "## Training data", "",
             f"The train split of the `{meta.get('key')}` manifest (patient-level split by prepare_data.py); "
             f"the model was selected on its validation split. Initialisation: {meta.get('init_description')}.", "",
             "## Metrics", ""]
    if metrics_rows:
        lines += ["Test split, percentile bootstrap over patients (evaluate.py):", "",
                  "| metric | value | CI low | CI high |", "|---|---|---|---|"]
        for name, (value, low, high) in metrics_rows.items():
            lines.append(f"| {name} | {value:.4f} | {low:.4f} | {high:.4f} |")
    else:
        lines.append("Not given at export (pass evaluate.py's metrics.csv with `export.py --metrics`).")
    lines += ["", "## Use", "",
              "Needs MONAI with pillow and pydicom, nothing else: the images go through the kit's eval chain "
              "written in stock MONAI transforms (`preprocessing` in `configs/inference.json`).", "",
              "```bash",
              "python -m monai.bundle run --config_file configs/inference.json --bundle_root . --dataset_dir IMAGES",
              "```", "", "writes `eval/predictions.csv` (file, one probability per class). In Python:", "",
              "```python",
              "from monai.bundle import ConfigParser",
              "parser = ConfigParser()",
              "parser.read_config('configs/inference.json')",
              "parser['bundle_root'] = '.'",
              "network = parser.get_parsed_content('network')",
              "parser.get_parsed_content('load_weights')",
              "network.eval()",
              "preprocess = parser.get_parsed_content('preprocessing')",
              "```", "",
              f"`network` refuses an input of another shape than (batch, 3, {meta['image_size']}, "
              f"{meta['image_size']}) with a ValueError: an image of another size would be predicted without a "
              "word, and wrongly. Give it what `preprocessing` returns; `network_def` is the bare network, for "
              "MONAI's tools (`ckpt_export`, `verify_net_in_out`).", "",
              "The chain computes what the kit's `predict.py` computes (within 1e-5 in probability), except: a "
              "DICOM file is read with its rescale slope and intercept but without its VOI window (Window "
              "Center/Width or VOI LUT), and MONOCHROME1 is not inverted, so a windowed radiograph is seen "
              "differently (predict.py shows it as a viewer does); and nothing is refused: predict.py refuses "
              "images of another modality and colour or grey images the model was not trained on, while this "
              "chain predicts every 2-D image it can read (a volume stops it with MONAI's error).", "",
              "## Intended use", "",
              f"{info['intended_use']}. The model saw {meta['domain']} images only; images of another kind give "
              "meaningless outputs (the kit's predict.py refuses them). It was trained on one data set: check it on "
              "your own population before trusting its numbers.", ""]
    return "\n".join(lines)


def read_metrics(path) -> tuple[dict, dict]:
    """evaluate.py's metrics.csv -> ({metric: value}, {metric: (value, ci_low, ci_high)})."""
    import pandas as pd

    from . import files

    row = files.read_table(path).iloc[0].to_dict()
    names = [k for k in row if f"{k}_ci_low" in row]
    values = {k: float(row[k]) for k in names}
    return values, {k: (float(row[k]), float(row[f"{k}_ci_low"]), float(row[f"{k}_ci_high"])) for k in names
                    if not pd.isna(row[k])}


def save_bundle(model, meta: dict, folder, *, source: str, epoch=None, metrics_csv=None) -> Path:
    """The bundle folder (configs/, models/model.pt, docs/README.md), written whole into a
    temporary folder and renamed into place."""
    import shutil

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    values, rows = read_metrics(metrics_csv) if metrics_csv else ({}, {})
    info = metadata(meta, source=source, epoch=epoch, metrics=values)
    for sub in ("configs", "models", "docs"):
        (tmp / sub).mkdir(parents=True)
    (tmp / "configs" / "metadata.json").write_text(json.dumps(info, indent=4) + "\n")
    (tmp / "configs" / "inference.json").write_text(json.dumps(inference_config(meta), indent=4) + "\n")
    torch.save(bundle_state_dict(model.state_dict()), tmp / "models" / "model.pt")
    (tmp / "docs" / "README.md").write_text(bundle_readme(meta, info, metrics_rows=rows))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
