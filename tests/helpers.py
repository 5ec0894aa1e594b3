"""What several test files share: small generated images and manifests, the argument lists of tiny
training runs, a stand-in for the ImageNet weights file, running a script as a subprocess, and the
fabricated study trees plot_results.py is tested on. Imported as `from helpers import ...`
(conftest.py puts this folder on sys.path); never import from another test_*.py file.
"""
import builtins
import fcntl
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- files and trees

def write_image(path: Path, *, mode: str = "L", size=(8, 8), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value // 2, 200)).save(path)
    return path


def link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    return dst


def write_xls(path: Path, header, rows) -> None:
    """An .xls sheet as Messidor's (xlwt: the format of the original annotation files)."""
    import xlwt
    book = xlwt.Workbook()
    sheet = book.add_sheet("Feuil1")
    for j, name in enumerate(header):
        sheet.write(0, j, name)
    for i, row in enumerate(rows, 1):
        for j, value in enumerate(row):
            sheet.write(i, j, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(str(path))


BREAKHIS_EXPECTED = {  # file -> (label, subtype, slide, magnification)
    "SOB_B_A-14-22549AB-40-001.png": ("benign", "adenosis", "14-22549AB", 40),
    "SOB_B_F-14-25197-40-023.png": ("benign", "fibroadenoma", "14-25197", 40),
    "SOB_B_F-14-25197-100-001.png": ("benign", "fibroadenoma", "14-25197", 100),
    "SOB_B_F-14-25197-200-032.png": ("benign", "fibroadenoma", "14-25197", 200),
    "SOB_B_F-14-25197-400-033.png": ("benign", "fibroadenoma", "14-25197", 400),
    "SOB_B_F-14-9133-40-001.png": ("benign", "fibroadenoma", "14-9133", 40),
    "SOB_B_PT-14-21998AB-40-001.png": ("benign", "phyllodes_tumor", "14-21998AB", 40),
    "SOB_B_TA-14-3411F-40-001.png": ("benign", "tubular_adenoma", "14-3411F", 40),
    "SOB_M_DC-14-2523-40-010.png": ("malignant", "ductal_carcinoma", "14-2523", 40),
    "SOB_M_LC-14-12204-40-001.png": ("malignant", "lobular_carcinoma", "14-12204", 40),
    "SOB_M_MC-14-10147-40-001.png": ("malignant", "mucinous_carcinoma", "14-10147", 40),
    "SOB_M_PC-14-9146-40-001.png": ("malignant", "papillary_carcinoma", "14-9146", 40),
}


def breakhis_tree(shared_data: Path, root: Path) -> Path:
    """The 12 real PNGs in the native BreaKHis_v1 folder structure (symlinks)."""
    for src in sorted((shared_data / "breakhis").glob("SOB_*.png")):
        cls = "benign" if src.name[4] == "B" else "malignant"
        stem = src.stem.split("-")
        slide_folder, mag = "-".join(stem[:3]), stem[3]
        _, subtype, _, _ = BREAKHIS_EXPECTED[src.name]
        link(src, root / "BreaKHis_v1/histology_slides/breast" / cls / "SOB" / subtype / slide_folder
             / f"{mag}X" / src.name)
    return root


# --------------------------------------------------------------------------- tiny training data

def folder_dataset(root: Path, classes, n=8, seed=0) -> Path:
    """<root>/<class>/<i>.png, one flat colour per class with noise: learnable in an epoch."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            colour = np.array([200, 60, 60]) if c == 0 else np.array([60, 60, 200]) + 40 * c
            pixels = np.clip(colour + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


def prepare(*argv: str) -> None:
    """prepare_data.py in this process."""
    import prepare_data
    prepare_data.main(prepare_data.get_args_parser().parse_args(list(argv)))


def folder_manifest(tmp_path: Path, name: str, classes, domain="hwsi") -> Path:
    """A `folder` dataset of 8 images per class (40x48 px) split 50/25/25 by prepare_data.py."""
    root = folder_dataset(tmp_path / f"data_{name}", classes)
    prepare("--dataset", "folder", "--root", str(root), "--name", name, "--domain", domain,
            "--out", str(tmp_path / "manifests"), "--val-frac", "0.25", "--test-frac", "0.25")
    return tmp_path / "manifests" / f"{name}.csv"


def two_colour_manifest(tmp_path: Path, n=16) -> Path:
    """A `folder` dataset of two learnable colours, n images each of 40x48 px, split by prepare_data.py."""
    root = colour_folder(tmp_path / "data", n=n)
    prepare("--dataset", "folder", "--root", str(root), "--name", "tiny", "--domain", "hwsi",
            "--out", str(tmp_path / "manifests"), "--val-frac", "0.25", "--test-frac", "0.1")
    return tmp_path / "manifests" / "tiny.csv"


def tiny_frame(tmp_path: Path, n_per_class=10):
    """Manifest rows (no files of a manifest) of two visually distinct classes of 40x40 RGB PNGs,
    split 6/4 per class into train/val, and their data meta."""
    rows = []
    rng = np.random.default_rng(0)
    for label, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
        for i in range(n_per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            path = tmp_path / f"c{label}_{i}.png"
            Image.fromarray(pixels).save(path)
            rows.append({"image": str(path), "label": label, "patient": f"p{label}_{i}",
                         "split": "train" if i < 6 else "val"})
    meta = {"key": "tiny", "domain": "hwsi", "task": "multiclass", "classes": ["red", "blue"],
            "headline_metric": "accuracy", "class_weights": "balanced"}
    return pd.DataFrame(rows), meta


# The argument tail of a tiny training run (32 px, one epoch, CPU).
TINY = ["--image-size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
        "--hidden-dim", "16"]


def finetune_argv(manifest, out, *extra, epochs=3, workers=0) -> list[str]:
    """finetune_target.py from random init at 32 px, batches of 4, a loss check every 2 steps."""
    return ["--manifest", str(manifest), "--init", "random", "--out", str(out), "--image-size", "32",
            "--epochs", str(epochs), "--batch-size", "4", "--workers", str(workers), "--device", "cpu",
            "--hidden-dim", "16", "--log-every", "2", *extra]


def run_finetune(argv) -> None:
    """finetune_target.py in this process (errors propagate as the script's main raises them)."""
    import finetune_target
    finetune_target.main(finetune_target.get_args_parser().parse_args(list(argv)))


def read_metrics(out: Path) -> pd.DataFrame:
    """A run's metrics.csv without the timing column."""
    return pd.read_csv(Path(out) / "metrics.csv").drop(columns="seconds")


def checkpoint_weights(path):
    from kit.checkpoints import load_checkpoint
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    import torch
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------- ImageNet stand-in

def write_imagenet_standin(torch_home: Path) -> Path:
    """A stand-in for torchvision's ImageNet DenseNet-121 file in TORCH_HOME's hub cache: the real key
    names and shapes in the old key style of densenet121-a639ec97.pth, freshly initialised values."""
    import torch
    from monai.networks.nets import DenseNet121

    torch.manual_seed(123)
    features = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1000).features.state_dict()
    state = {}
    for key, value in features.items():
        if key.endswith("num_batches_tracked"):
            continue  # the real file has none
        for name in ("norm1", "conv1", "norm2", "conv2"):  # MONAI 'layers.norm1' -> torchvision 'norm.1'
            key = key.replace(f".layers.{name}.", f".{name[:-1]}.{name[-1]}.")
        state[f"features.{key}"] = value
    state["classifier.weight"] = torch.zeros(1000, 1024)
    state["classifier.bias"] = torch.zeros(1000)
    path = torch_home / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


# --------------------------------------------------------------------------- published DenseNet-121 stand-ins

def reference_densenet(in_channels=3, out_channels=18, seed=0):
    """A MONAI DenseNet121 with MONAI's initialisation and randomised BatchNorm statistics, in eval mode:
    the original network a stand-in file is written from."""
    import torch
    from monai.networks.nets import DenseNet121

    torch.manual_seed(seed)
    net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=out_channels)
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if name.endswith("running_mean"):
                value.copy_(0.1 * torch.randn(value.shape))
            elif name.endswith("running_var"):
                value.copy_(0.5 + torch.rand(value.shape))
    return net.eval()


def torchvision_spelling(key, old=False):
    """A MONAI backbone key as torchvision writes it (`norm1`; `norm.1` with old=True), written out here."""
    for name in ("norm1", "conv1", "norm2", "conv2", "relu1", "relu2"):
        key = key.replace(f".layers.{name}.", f".{name[:-1]}.{name[-1]}." if old else f".{name}.")
    return key


def write_layout(path: Path, layout: str, net) -> Path:
    """`net` (reference_densenet) saved as another library saves a DenseNet-121, with its key names and shapes:
    torchvision (state_dict, classifier.*), chexnet ({"state_dict": module.densenet121.*, old spelling,
    classifier.0.*}, "epoch", "best_loss", "optimizer"), torchxrayvision (state_dict of a 1-channel net,
    classifier [18, 1024], op_threshs), monai (DenseNet121.state_dict())."""
    import torch

    features = {f"features.{k}": v for k, v in net.features.state_dict().items()}
    out = net.class_layers.out
    if layout == "monai":
        state = net.state_dict()
    elif layout == "chexnet":
        state = {"state_dict": {f"module.densenet121.{torchvision_spelling(k, old=True)}": v
                                for k, v in features.items() if not k.endswith("num_batches_tracked")}
                 | {"module.densenet121.classifier.0.weight": out.weight.detach(),
                    "module.densenet121.classifier.0.bias": out.bias.detach()},
                 "epoch": 9, "arch": "densenet121", "best_loss": 0.15,
                 "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}}
    else:
        state = {torchvision_spelling(k): v for k, v in features.items()} | {
            "classifier.weight": out.weight.detach(), "classifier.bias": out.bias.detach()}
        if layout == "torchxrayvision":
            state["op_threshs"] = torch.rand(out.weight.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


# --------------------------------------------------------------------------- processes

def run_script(*argv, env=None, timeout=600, cwd=ROOT) -> subprocess.CompletedProcess:
    """`python <argv>` from the repository root; text output captured."""
    return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def script_error(script, *argv) -> str:
    """`python <script> <argv>` for a command that must fail, run in this process as the script's `__main__` block
    runs it (parse, then main under cli.user_errors): the line it exits with. No interpreter to start, no torch
    to import: for the tests that try many refusals."""
    import pytest

    with pytest.raises(SystemExit) as info:
        run_main(script, *argv)
    return str(info.value.code)


def run_main(script, *argv) -> None:
    """`python <script> <argv>` run in this process as the script's `__main__` block runs it (parse, then main
    under cli.user_errors): a refusal is a SystemExit with its line, which fails a test that expects success."""
    import importlib

    from kit import cli

    module = importlib.import_module(Path(script).stem)
    args = module.get_args_parser().parse_args([str(a) for a in argv])
    with cli.user_errors():
        module.main(args)


def masked_targets():
    """A 3-label aggregate of two sources (a: x, y; b: z), three rows: (targets, targets with --label-mask)."""
    from kit import data

    df = pd.DataFrame({"labels": ["a/x", "", "b/z"], "source": ["a", "a", "b"]})
    meta = {"label_groups": {"a": ["a/x", "a/y"], "b": ["b/z"]}}
    classes = ["a/x", "a/y", "b/z"]
    return (data.encode_targets(df, "multilabel", classes),
            data.encode_targets(data.mask_unknown_labels(df, meta), "multilabel", classes))


def start_script(*argv, **popen) -> subprocess.Popen:
    """`python <argv>` from the repository root, in the background."""
    return subprocess.Popen([sys.executable, *map(str, argv)], cwd=ROOT, **popen)


def wait_for(condition, seconds=120, every=0.05) -> bool:
    """Poll `condition()` until it is true or `seconds` have passed; its last value."""
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(every)
    return condition()


def load_make_demo_data():
    """tools/make_demo_data.py as the module `make_demo_data` (tools/ is not a package: it goes on sys.path,
    where the script's worker processes find it too)."""
    tools = str(ROOT / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import make_demo_data
    return make_demo_data


# --------------------------------------------------------------------------- study trees for plot_results.py

METRICS_COLUMNS = ["epoch", "split", "loss", "accuracy", "balanced_accuracy", "kappa", "qwk", "auroc", "seconds", "lr"]
ALL_ARMS = ["IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN"]
# Targets and the arms that ran (the IN-based arms are skipped when no ImageNet weights exist).
RUNS = {
    "shenzhen": ["IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN"],
    "messidor": ["Domain_RI", "All_RI"],
    "kather2016": ["IN", "Domain_RI", "All_IN"],
}


def write_metrics(path, seed, epochs=3):
    """A metrics.csv as the training loop writes it: one train and one val row per epoch, fractions in [0, 1]."""
    rng = np.random.default_rng(seed)
    rows = []
    for epoch in range(1, epochs + 1):
        for split in ("train", "val"):
            acc, kappa = rng.uniform(0.3, 0.99), rng.uniform(-0.2, 0.95)
            rows.append([epoch, split, rng.uniform(0.05, 2.0), acc, acc - 0.05, kappa, kappa + 0.01,
                         rng.uniform(0.5, 1.0), 1.5, 1e-3])
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=METRICS_COLUMNS).to_csv(path, index=False)
    return pd.read_csv(path)


def make_runs(root, runs=RUNS):
    written = {}
    for i, (target, arms) in enumerate(runs.items()):
        for j, arm in enumerate(arms):
            written[target, arm] = write_metrics(root / "finetune" / target / arm / "metrics.csv", seed=10 * i + j)
    return written


def plot(runs_dir, out_dir, *extra):
    """plot_results.py in this process."""
    import plot_results
    args = plot_results.get_args_parser().parse_args(["--runs", str(runs_dir), "--out", str(out_dir), *extra])
    plot_results.main(args)


def last(frame, split, metric):
    """The last epoch's value of `metric` on `split`, in %."""
    rows = frame[frame["split"] == split]
    return 100 * rows.loc[rows["epoch"].idxmax(), metric]


def write_plain_study(root):
    """A runs tree (RUNS) with eval results for shenzhen and a manifest sidecar, plotted once."""
    written = make_runs(root)
    for arm, (acc, n) in {"IN": (0.8125, 160), "All_IN": (0.9, 160)}.items():
        path = root / "eval" / "shenzhen" / arm / "metrics.csv"
        path.parent.mkdir(parents=True)
        pd.DataFrame([["test", f"finetune/shenzhen/{arm}/best.pt", 0.4, acc, acc, 0.5, 0.5, 0.9, n]],
                     columns=["split", "checkpoint", "loss", "accuracy", "balanced_accuracy", "kappa", "qwk",
                              "auroc", "n"]).to_csv(path, index=False)
    (root / "manifests").mkdir()
    (root / "manifests" / "shenzhen.json").write_text(json.dumps(
        {"key": "shenzhen", "counts": {"train": {"normal": 200, "tuberculosis": 250},
                                       "val": {"normal": 30, "tuberculosis": 36},
                                       "test": {"normal": 70, "tuberculosis": 90}}}))
    plot(root, root)
    return written


# A fabricated study with seeds, train fractions and test predictions.
SEEDS = (0, 1)
SHENZHEN = ["normal", "tuberculosis"]
MESSIDOR = ["grade_0", "grade_1", "grade_2", "grade_3"]
# Validation accuracy per epoch of shenzhen/IN at fraction 1 (both seeds): best 0.8, 95 % of it
# = 0.76 first reached at epoch 3; trapezoid area over epochs 1-4 / 3 = (0.55 + 0.74 + 0.79) / 3
HAND_CURVE = [0.4, 0.7, 0.78, 0.8]
TRUTH = {"shenzhen": np.repeat([0, 1], 30), "messidor": np.tile([0, 1, 2, 3], 15)}


def write_run(root, target, arm, seed, fraction, classes, val_curve, predictions, rng):
    """A run folder as the workflow lays it out, with its evaluate.py outputs for best.pt and last.pt."""
    name = f"seed{seed}" if fraction == 1 else f"frac{fraction}_seed{seed}"
    run = root / "finetune" / target / arm / name
    run.mkdir(parents=True)
    rows = []
    for epoch, value in enumerate(val_curve, start=1):
        rows.append([epoch, "train", 0.5, min(1, value + 0.1), value, value, value, 0.9, 1.0, 1e-3])
        rows.append([epoch, "val", 0.6, value, value, value - 0.1, value, 0.8, 1.0, 1e-3])
    pd.DataFrame(rows, columns=METRICS_COLUMNS).to_csv(run / "metrics.csv", index=False)
    (run / "args.json").write_text(json.dumps({"args": {"seed": seed, "train_fraction": fraction}, "meta": {}}))
    for kind in ("best", "last"):
        out = root / "eval" / target / arm / name / kind
        out.mkdir(parents=True)
        probs = np.clip(predictions + rng.normal(0, 0.02, predictions.shape) * (kind == "last"), 1e-3, None)
        probs = probs / probs.sum(axis=1, keepdims=True)
        frame = pd.DataFrame({"image": [f"img{i:03d}.png" for i in range(len(probs))],
                              "patient": [f"p{i // 2:03d}" for i in range(len(probs))], "split": "test"})
        frame["target"] = [classes[t] for t in TRUTH[target]]
        frame["pred"] = [classes[p] for p in probs.argmax(axis=1)]
        for c, name_c in enumerate(classes):
            frame[f"prob_{name_c}"] = probs[:, c]
        frame.sample(frac=1, random_state=seed).to_csv(out / "predictions.csv", index=False)  # any row order
        accuracy = float((probs.argmax(axis=1) == TRUTH[target]).mean())
        pd.DataFrame([{"split": "test", "checkpoint": str(run / f"{kind}.pt"), "epoch": len(val_curve), "loss": 0.5,
                       "accuracy": accuracy, "kappa": 0.5, "n": len(probs), "n_patients": len(probs) // 2}]
                     ).to_csv(out / "metrics.csv", index=False)


def noisy_predictions(truth, classes, correct, rng):
    """One-hot-ish probabilities, right on the images where `correct` is True."""
    wrong = (truth + 1) % len(classes)
    chosen = np.where(correct, truth, wrong)
    probs = np.full((len(truth), len(classes)), 0.1) + rng.uniform(0, 0.05, (len(truth), len(classes)))
    probs[np.arange(len(truth)), chosen] += 0.6
    return probs / probs.sum(axis=1, keepdims=True)


def write_seeded_study(root):
    """Two targets x 3 arms x 2 seeds (shenzhen also at train fraction 0.25) with test predictions,
    plotted once with 400 bootstrap resamples; returns the predictions per (target, arm, seed)."""
    rng = np.random.default_rng(0)
    accuracy = {"IN": 0.6, "Domain_RI": 0.75, "All_IN": 0.9}
    stored = {}
    for target, classes in (("shenzhen", SHENZHEN), ("messidor", MESSIDOR)):
        truth = TRUTH[target]
        for seed in SEEDS:
            fractions = (0.25, 1.0) if target == "shenzhen" else (1.0,)
            for fraction in fractions:
                for arm, acc in accuracy.items():
                    correct = rng.uniform(size=len(truth)) < acc * (0.8 if fraction < 1 else 1.0)
                    predictions = noisy_predictions(truth, classes, correct, rng)
                    if arm == "All_IN" and target == "messidor":  # the same model as IN: no difference at all
                        predictions = stored["messidor", "IN", seed]
                    stored[target, arm, seed] = predictions
                    curve = HAND_CURVE if (target, arm) == ("shenzhen", "IN") else list(rng.uniform(0.3, 0.9, 4))
                    write_run(root, target, arm, seed, fraction, classes, curve, predictions, rng)
    (root / "manifests").mkdir()
    (root / "manifests" / "shenzhen.json").write_text(json.dumps(
        {"key": "shenzhen", "counts": {"train": {"normal": 100, "tuberculosis": 100}, "val": {"normal": 10,
                                       "tuberculosis": 10}, "test": {"normal": 30, "tuberculosis": 30}}}))
    plot(root, root, "--bootstrap", "400")
    return stored


def hand_accuracy(probs, target):
    return 100 * float((probs.argmax(axis=1) == TRUTH[target]).mean())


# --------------------------------------------------------------------------- studies whose verdicts are known

CLAIM_CLASSES = {"shenzhen": ["normal", "tuberculosis"], "covid19_radiography": ["COVID", "Lung_Opacity", "Normal",
                                                                                 "Viral Pneumonia"],
                 "kather2016": ["TUMOR", "STROMA"], "messidor": [f"grade_{g}" for g in range(4)],
                 "deepdrid": [f"grade_{g}" for g in range(5)]}
CLAIM_COLUMNS = ["epoch", "split", "loss", "accuracy", "balanced_accuracy", "kappa", "qwk", "auroc"]


def write_claim_run(out: Path, target: str, arm: str, val, train, right: float, seed: int = 0, n_test: int = 200,
                    per_patient: int = 1) -> None:
    """finetune/<target>/<arm>/seed<S>/{metrics.csv, args.json} and eval/.../{best,last}/{metrics,predictions}.csv
    of a run whose test predictions are right on a share `right` of the images. The truth is the same for every
    arm and seed; which images are right depends on `right` and the seed only, so two arms with the same share
    give the very same predictions in every seed."""
    from kit import metrics, paper

    run = out / "finetune" / target / arm / f"seed{seed}"
    run.mkdir(parents=True)
    metric = paper.TARGETS[target][3]
    rows = []
    for epoch, (v, t) in enumerate(zip(val, train), start=1):
        for split, value in (("train", t), ("val", v)):
            rows.append({"epoch": epoch, "split": split, "loss": 1 - value, **{c: value for c in CLAIM_COLUMNS[3:]}})
    pd.DataFrame(rows, columns=CLAIM_COLUMNS).to_csv(run / "metrics.csv", index=False)
    args = {"seed": seed, "train_fraction": 1.0, "image_size": 224, "epochs": len(val), "batch_size": 32,
            "lr": 1e-4, "weight_decay": 1e-4, "warmup_epochs": 0, "hidden_dim": 512, "dropout": 0.5,
            "class_weights": "auto"}
    recipe = {"optimizer": {"class": "AdamW", "param_groups": [{"tensors": 364, "lr": 1e-4, "weight_decay": 1e-4}]},
              "schedule": {"class": "CosineAnnealingLR", "T_max": 10 * len(val), "eta_min": 0.0},
              "loss": {"class": "CrossEntropyLoss", "class_weights": None}}
    (run / "args.json").write_text(json.dumps({"args": args, "meta": {"headline_metric": metric, "recipe": recipe,
                                                                       "data": {"manifest_rows": "same"}}}))
    classes = CLAIM_CLASSES[target]
    truth = np.random.default_rng(7).integers(0, len(classes), n_test)
    correct = np.zeros(n_test, dtype=bool)
    correct[np.random.default_rng([round(1000 * right), seed]).permutation(n_test)[:round(right * n_test)]] = True
    pred = np.where(correct, truth, (truth + 1) % len(classes))
    probs = np.full((n_test, len(classes)), 0.02)
    probs[np.arange(n_test), pred] = 1 - 0.02 * (len(classes) - 1)
    predictions = pd.DataFrame({"image": [f"/d/{target}/{i:04d}.png" for i in range(n_test)],
                                "patient": [f"p{i // per_patient}" for i in range(n_test)], "split": "test",
                                "target": [classes[t] for t in truth], "pred": [classes[p] for p in pred],
                                **{f"prob_{c}": probs[:, j] for j, c in enumerate(classes)}})
    values = metrics.multiclass_metrics(probs, truth)
    for kind in ("best", "last"):
        folder = out / "eval" / target / arm / f"seed{seed}" / kind
        folder.mkdir(parents=True)
        predictions.to_csv(folder / "predictions.csv", index=False)
        pd.DataFrame([{"split": "test", "checkpoint": str(run / f"{kind}.pt"), "epoch": len(val), **values,
                       "n": n_test, "n_patients": n_test // per_patient}]).to_csv(folder / "metrics.csv", index=False)


def write_split_sizes(out: Path, target: str, train: int, val: int, test: int) -> None:
    """manifests/<target>.json with class counts adding up to the given split sizes (what the curve claims'
    noise bound reads)."""
    classes = CLAIM_CLASSES[target]
    counts = {split: {c: n // len(classes) + (i < n % len(classes)) for i, c in enumerate(classes)}
              for split, n in (("train", train), ("val", val), ("test", test))}
    (out / "manifests").mkdir(exist_ok=True)
    (out / "manifests" / f"{target}.json").write_text(json.dumps({"key": target, "counts": counts}))


def write_study_json(out: Path, **changes) -> None:
    """OUT/study.json as the workflow writes it (a demo study by default)."""
    record = {"data": "demo", "demo": True, "demo_scale": 0.3, "imagenet_weights": "/w/densenet121-a639ec97.pth",
              "imagenet_found": True, "imagenet_missing_reason": None, "image_size": 32, "epochs_pretrain": 1,
              "epochs_finetune": 10, "batch_size": 16, "seeds": [0], "split_seed": 0, "pretrain_seed": None,
              "train_fractions": [1.0], "targets": [], "source_protocol": "paper"} | changes
    (out / "study.json").write_text(json.dumps(record))


def claim_inputs(values, *, se=0.3, seed_sd=0.3, n_seeds=3, min_class_patients=50, overrides=None):
    """What kit.claims.verdicts reads, made by hand for test values {target: {arm: value in %}}: the paired
    rows of every pair of arms (later minus earlier in paper order) with a test se, a seed sd per arm
    difference and their t-test (kit.stats.t_test), Holm-corrected per target as plot_results does;
    `overrides` {(target, arm, reference): {column: value}} changes rows before Holm. Returns (paired,
    arms_run)."""
    from kit import paper, stats, tables

    rows = []
    for target, by_arm in values.items():
        arms = [a for a in paper.ARMS if a in by_arm] + sorted(set(by_arm) - set(paper.ARMS))  # then beyond the paper
        for i, reference in enumerate(arms):
            for arm in arms[i + 1:]:
                d = by_arm[arm] - by_arm[reference]
                found = stats.t_test(d, seed_sd ** 2 / n_seeds if n_seeds > 1 else 0.0, max(n_seeds - 1, 1), se ** 2)
                row = {"target": target, "train_fraction": 1.0, "checkpoint": "last", "arm": arm,
                       "reference": reference, "metric": paper.TARGETS[target][3],
                       "method": "seeds and patients" if n_seeds > 1 else "patients, one seed", "n_seeds": n_seeds,
                       "n_images": 400, "n_patients": 400, "min_class_patients": min_class_patients,
                       "arm_value": by_arm[arm], "reference_value": by_arm[reference], "difference": d,
                       "ci_low": found["ci_low"], "ci_high": found["ci_high"], "se": found["se"], "df": found["df"],
                       "p_value": found["p_value"], "difference_sd": seed_sd if n_seeds > 1 else math.nan,
                       "test_se": se}
                rows.append(row | (overrides or {}).get((target, arm, reference), {}))
    paired = tables.add_holm(pd.DataFrame(rows)) if rows else pd.DataFrame(columns=["method"])
    return paired, {target: set(by_arm) for target, by_arm in values.items()}


def curve_inputs(measures=None, val_curves=None, *, n_seeds=3, epochs=10, sd=0.0, val_images=20_000,
                 train_images=50_000):
    """What kit.claims.verdicts reads about curves, by hand: convergence rows {target: {arm: {measure: value}}}
    (the same sd across seeds for every measure), seed-mean validation curves {target: {arm: [fractions]}} with
    the common threshold of tables.common_thresholds, and split sizes. Returns (convergence, curves, sizes)."""
    from kit import stats

    targets = list(dict.fromkeys([*(measures or {}), *(val_curves or {})]))
    rows, curves = [], {}
    for target in targets:
        by_arm_curve = (val_curves or {}).get(target, {})
        last = {arm: 100 * c[-1] for arm, c in by_arm_curve.items()}
        best_arm = max(last, key=last.get) if last else None
        threshold = stats.share_of(last[best_arm], 0.95) if last else math.nan
        arms = list(dict.fromkeys([*(measures or {}).get(target, {}), *by_arm_curve]))
        for arm in arms:
            row = {"target": target, "arm": arm, "train_fraction": 1.0, "metric": "accuracy", "n_seeds": n_seeds,
                   "epochs": epochs, "best_epoch": 1, "threshold": threshold, "threshold_arm": best_arm,
                   "never_reached": 0}
            for measure, value in (measures or {}).get(target, {}).get(arm, {}).items():
                row[measure], row[f"{measure}_sd"] = value, sd if n_seeds > 1 else math.nan
            rows.append(row)
        curves[target] = {arm: pd.DataFrame({"epoch": np.arange(1, len(c) + 1), "split": "val", "value": c,
                                             "value_sd": sd / 100 if n_seeds > 1 else math.nan,
                                             "loss": 0.0, "loss_sd": 0.0})
                          for arm, c in by_arm_curve.items()}
    convergence = pd.DataFrame(rows)
    for column in ("max_drop", "train_late_gain", "epochs_to_threshold"):
        for name in (column, f"{column}_sd"):
            if name not in convergence:
                convergence[name] = math.nan
    sizes = {t: {"train": train_images, "val": val_images, "test": 400} for t in targets}
    return convergence, curves, sizes


# --------------------------------------------------------------------------- failure and study scenarios

def colour_folder(root, n=16, size=(40, 48), seed=0) -> Path:
    """A `folder` dataset of two learnable colours: <root>/{blue,red}/<colour>_<i>.png with noise."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("blue", "red")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            colour = np.array([60, 60, 200]) if c == 0 else np.array([200, 60, 60])
            pixels = np.clip(colour + rng.normal(0, 40, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


def prepare_colour(data, out, *extra, name="tiny") -> Path:
    """prepare_data.py (in this process) on a colour_folder: 25 % val, 20 % test."""
    run_main("prepare_data.py", "--dataset", "folder", "--root", data, "--name", name, "--domain", "hwsi", "--out", out,
             "--val-frac", "0.25", "--test-frac", "0.2", *extra)
    return Path(out) / f"{name}.csv"


def train_argv(manifest, out, *extra, epochs=1) -> list:
    """finetune_target.py's command line for a tiny run from random init."""
    return ["finetune_target.py", "--manifest", manifest, "--init", "random", "--out", out, "--image-size", "32",
            "--epochs", str(epochs), "--batch-size", "4", "--workers", "0", "--device", "cpu", "--hidden-dim", "16",
            *extra]


def one_line(result, only=False) -> str:
    """A command failed with no traceback: the last line on stderr (with `only`, the one line there,
    leaving aside image-codec and progress-bar noise)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip() and "nvImageCodec" not in line
             and "NvImgCodec" not in line and "%|" not in line]
    assert lines and (len(lines) == 1 or not only), lines
    return lines[-1]


def picture(path, seed, size=(40, 48)) -> Path:
    """A random RGB picture (a PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def graded_table(root, suffix=".csv"):
    """12 patients x 3 images, grade = patient % 3, relative paths, a given split for 8 patients."""
    rows = []
    for p in range(12):
        for k in range(3):
            name = f"imgs/p{p}_{k}.png"
            picture(root / name, seed=p * 10 + k)
            rows.append({"path": name, "grade": p % 3, "pid": f"P{p}",
                         "set": ["train", "train", "validation", "test"][p % 4] if p < 8 else ""})
    table = pd.DataFrame(rows)
    path = root / f"labels{suffix}"
    if suffix == ".xlsx":
        table.to_excel(path, index=False)
    elif suffix == ".tsv":
        table.to_csv(path, sep="\t", index=False)
    else:
        table.to_csv(path, index=False)
    return path, table


def eyepacs_labels_tree(root, rows):
    """An EyePACS tree: train/<image>.jpeg (random pictures) and trainLabels.csv of `rows`."""
    (root / "train").mkdir(parents=True)
    for seed, name in enumerate(sorted({r.split(",")[0] for r in rows})):  # each its own picture: no twins
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / "train" / f"{name}.jpeg")
    (root / "trainLabels.csv").write_text("image,level\n" + "\n".join(rows) + "\n")


def hold_lock(path):
    """Hold the lock file `path` as another process would, naming pid 4242 on testhost."""
    handle = open(path, "a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write("pid 4242 on testhost since now\n")
    handle.flush()
    return handle


def wait_until_free(lock_path, seconds=60):
    deadline = time.time() + seconds
    with open(lock_path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                assert time.time() < deadline, "the killed study still holds its lock"
                time.sleep(0.1)


TINY_STUDY = {"image_size": 32, "epochs_pretrain": 1, "epochs_finetune": 1, "batch_size": 16, "demo_scale": 0.3,
              "workers": 0, "device": "cpu", "targets": ["shenzhen"], "threads": 1}


def study_command(out, *extra, cores=2, **settings) -> list:
    """The workflow's command line for a tiny demo study into `out` (32 px, one epoch each, one target, one
    thread per run; TINY_STUDY overridden by `settings`), with snakemake from this Python's environment."""
    config = {**TINY_STUDY, "out": str(out), **settings}

    def value(v):
        return "[" + ",".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else str(v)

    return [str(Path(sys.executable).parent / "snakemake"), "--cores", str(cores), *extra,
            "--config", *(f"{key}={value(v)}" for key, v in config.items())]


def run_study(out, *extra, cores=2, torch_home=None, env=None, **settings) -> subprocess.CompletedProcess:
    """Run the workflow (study_command) from the repository folder, offline for ImageNet unless `torch_home`
    holds a stand-in file; returns the finished process."""
    environment = {**os.environ, "TORCH_HOME": str(torch_home or Path(out).parent / "no_torch_home"), **(env or {}),
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("OMP_NUM_THREADS",):
        environment.pop(name, None)
    return subprocess.run(study_command(out, *extra, cores=cores, **settings), cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=3000)


def job_counts(plan):
    """{rule: jobs} of a snakemake plan's job table."""
    lines = plan.split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


class Payload:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker):
    """Pickled payloads that would create `marker` if a loader ran them."""
    touch = f"touch {marker}"
    return {"os.system": Payload(os.system, touch),
            "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
            "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w')"),
            "eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
            "nested __reduce__": {"model": {"a": [1, {"b": Payload(os.system, touch)}]}}}


def write_dicom(path, stored, *, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None, modality="CR",
                frames=None, rgb=False, patient="P001"):
    """A DICOM file written with pydicom: 12-bit grey (or 8-bit RGB with rgb=True) pixels."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = patient, modality
    ds.Rows, ds.Columns = stored.shape[-3:-1] if rgb else stored.shape[-2:]
    if rgb:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = stored.astype(np.uint8).tobytes()
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = stored.astype(np.uint16).tobytes()
    if frames:
        ds.NumberOfFrames = frames
    ds.ensure_file_meta()  # the file meta (media storage UIDs) follows from the dataset on writing
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return ds
