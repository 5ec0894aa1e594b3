"""export.py (TorchScript, MONAI bundle, backbone), models.load_backbone, and the kit as an installed
library (`transforms` and `kit`, editable and wheel). Self-contained: tiny runs are trained here (32 px
grey pictures of two classes), and the installs go into virtual environments that see this Python's
packages (torch, MONAI) but not its copy of the kit."""
import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_main, script_error
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
SIZE = 32
TS_TOLERANCE = 1e-5  # TorchScript vs the eager model, probabilities (both fp32 on the CPU)
BUNDLE_TOLERANCE = 1e-5  # bundle vs predict.py --no-amp (which rounds to 6 decimals)


def run(argv, cwd=ROOT, python=PY, **kw):
    return subprocess.run([str(python), *map(str, argv)], cwd=cwd, capture_output=True, text=True, **kw)


def ok(result):
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return result


def bars_folder(root, n=16, seed=0):
    """A `folder` data set of grey pictures: a bright horizontal bar (class `horizontal`) or a vertical one."""
    rng = np.random.default_rng(seed)
    for name in ("horizontal", "vertical"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            x = rng.normal(60, 10, (40, 40))
            position = rng.integers(8, 30)
            if name == "horizontal":
                x[position:position + 4] = 220
            else:
                x[:, position:position + 4] = 220
            Image.fromarray(x.clip(0, 255).astype(np.uint8)).save(root / name / f"{name}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A pretrained checkpoint (pretrain_source.py) and a model fine-tuned from it, with its evaluation."""
    tmp = tmp_path_factory.mktemp("runs")
    run_main("prepare_data.py", "--dataset", "folder", "--root", bars_folder(tmp / "data"), "--name", "bars",
             "--domain", "cxr", "--out", tmp / "m", "--val-frac", "0.25", "--test-frac", "0.25")
    common = ["--image-size", SIZE, "--epochs", "1", "--batch-size", "8", "--hidden-dim", "16", "--workers", "0",
              "--device", "cpu"]
    run_main("pretrain_source.py", "--manifest", tmp / "m" / "bars.csv", "--init", "random", "--out", tmp / "pretrain",
             *common)
    run_main("finetune_target.py", "--manifest", tmp / "m" / "bars.csv", "--init", tmp / "pretrain" / "last.pt",
             "--out", tmp / "finetune", *common)
    run_main("evaluate.py", "--checkpoint", tmp / "finetune" / "best.pt", "--manifest", tmp / "m" / "bars.csv",
             "--split", "test", "--out", tmp / "eval", "--workers", "0", "--device", "cpu", "--bootstrap", "50")
    test_images = pd.read_csv(tmp / "m" / "bars.csv").query("split == 'test'")["image"].tolist()
    return {"tmp": tmp, "pretrained": tmp / "pretrain" / "last.pt", "finetuned": tmp / "finetune" / "best.pt",
            "manifest": tmp / "m" / "bars.csv", "metrics": tmp / "eval" / "metrics.csv", "test_images": test_images}


def make_venv(path):
    """A virtual environment whose Python also finds this Python's installed packages (a .pth file naming
    its site-packages folders: .pth files inside them, such as an editable install of the kit, are not run)."""
    import site

    ok(subprocess.run([PY, "-m", "venv", str(path)], capture_output=True, text=True))
    python = path / "bin" / "python"
    purelib = ok(run(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], python=python)).stdout
    Path(purelib.strip(), "parent_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


@pytest.fixture(scope="module")
def editable_python(tmp_path_factory):
    """A virtual environment with `pip install -e <this repository>` (no dependencies: they are this Python's)."""
    python = make_venv(tmp_path_factory.mktemp("venv") / "editable")
    ok(run(["-m", "pip", "install", "--quiet", "--no-deps", "-e", ROOT], python=python, timeout=900))
    return python


# --------------------------------------------------------------------------- TorchScript

TORCH_ONLY = """
import json, sys, torch
extra = {"meta.json": ""}
model = torch.jit.load("model.ts", _extra_files=extra)
pixels = torch.load("pixels.pt")
with torch.no_grad():
    torch.save({"uint8": model(pixels), "float": model(pixels.float() / 255)}, "out.pt")
print(json.dumps({"meta": json.loads(extra["meta.json"]), "monai": "monai" in sys.modules,
                  "kit": [m for m in sys.modules if m.split(".")[0] in ("kit", "transforms")]}))
"""


@pytest.mark.slow
def test_torchscript_runs_with_torch_alone_and_equals_the_eager_model(runs, tmp_path):
    from kit import models
    from transforms import apply_tail, loader_transforms

    run_main("export.py", "--checkpoint", runs["finetuned"], "--out", tmp_path / "export", "--formats", "torchscript")
    model, meta = models.load_model(runs["finetuned"])
    chain = loader_transforms("cxr", image_size=SIZE, train=False)
    items = [chain({"image": path}) for path in runs["test_images"]]
    pixels, tails = torch.stack([i["image"] for i in items]), torch.stack([i["tail"] for i in items])
    assert pixels.dtype == torch.uint8 and pixels.shape[1] == 1  # grey, as the loader ships it
    with torch.no_grad():
        eager = torch.softmax(model(apply_tail(pixels, tails)), dim=1)
    sandbox = tmp_path / "sandbox"  # neither the kit nor MONAI importable from here with python -I
    sandbox.mkdir()
    shutil.copy(tmp_path / "export" / "model.ts", sandbox / "model.ts")
    torch.save(pixels, sandbox / "pixels.pt")
    result = ok(run(["-I", "-c", TORCH_ONLY], cwd=sandbox))
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["monai"] is False and report["kit"] == []
    out = torch.load(sandbox / "out.pt")
    torch.testing.assert_close(out["uint8"], eager, rtol=0, atol=TS_TOLERANCE)
    torch.testing.assert_close(out["float"], eager, rtol=0, atol=TS_TOLERANCE)
    info = report["meta"]
    assert info["classes"] == meta["classes"] == ["horizontal", "vertical"]
    assert (info["domain"], info["image_size"], info["task"]) == ("cxr", SIZE, "multiclass")
    assert info["input"]["dtype"] == "uint8 in [0, 255], or float in [0, 1]"
    assert info["input"]["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    assert info["output"]["kind"] == "probabilities" and "softmax" in info["output"]["activation"]


WRONG_SHAPES = {"another size": (1, 1, 297, 264), "another channel count": (1, 4, SIZE, SIZE),
                "no batch axis": (3, SIZE, SIZE)}


@pytest.fixture(scope="module")
def untrained():
    """A kit model (random weights, eval mode) and the meta of a 32 px cxr model: the export's arithmetic
    and checks need no training."""
    from kit import models

    torch.manual_seed(0)
    model = models.build_model(2, hidden_dim=16).eval()
    meta = {"task": "multiclass", "domain": "cxr", "classes": ["horizontal", "vertical"], "image_size": SIZE,
            "hidden_dim": 16, "dropout": 0.5, "key": "bars", "init": "random"}
    return model, meta


def normalised(pixels):
    """uint8 (B, 1 or 3, S, S) -> what the unwrapped model takes: 3 channels, ImageNet-normalised."""
    import transforms

    x = (pixels.float() / 255).expand(-1, 3, -1, -1)
    return (x - torch.tensor(transforms.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        transforms.IMAGENET_STD).view(1, 3, 1, 1)


def test_torchscript_refuses_a_picture_not_of_its_trained_shape_and_predicts_the_right_one(untrained, tmp_path):
    from kit import export

    model, meta = untrained
    export.save_torchscript(model, meta, tmp_path / "model.ts", source="best.pt")
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    pixels = torch.randint(0, 256, (3, 1, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        eager = torch.softmax(model(normalised(pixels)), dim=1)
        torch.testing.assert_close(scripted(pixels), eager, rtol=0, atol=TS_TOLERANCE)
        torch.testing.assert_close(scripted(pixels.expand(-1, 3, -1, -1)), eager, rtol=0, atol=TS_TOLERANCE)
    for what, shape in WRONG_SHAPES.items():
        with pytest.raises(torch.jit.Error) as info:
            scripted(torch.zeros(shape, dtype=torch.uint8))
        given = ", ".join(map(str, shape))
        assert str(info.value).strip().splitlines()[-1] == (
            f"builtins.ValueError: model.ts takes (batch, 1 or 3, {SIZE}, {SIZE}) pictures (grey or RGB, {SIZE} x "
            f"{SIZE} px, as the model was trained); given ({given}): resize with the rule the model was trained "
            f"with: the kit's transforms.loader_transforms('cxr', image_size={SIZE}, train=False) on the image "
            "file, or run predict.py"), what
    # the wrapper before scripting raises the same, as a ValueError
    wrapper = export.Deployed(model, False, image_size=SIZE, domain="cxr")
    with pytest.raises(ValueError, match=r"given \(1, 1, 297, 264\)"):
        wrapper(torch.zeros(WRONG_SHAPES["another size"]))


def test_the_bundle_network_refuses_an_input_not_of_its_trained_shape_and_stays_a_valid_bundle(untrained, tmp_path):
    import monai.bundle
    from monai.bundle import ConfigParser

    from kit import export

    model, meta = untrained
    bundle = export.save_bundle(model, meta, tmp_path / "bundle", source="best.pt", epoch=3)
    parser = ConfigParser()  # as docs/clinical.md and the bundle's README load it
    parser.read_config(bundle / "configs" / "inference.json")
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network")
    parser.get_parsed_content("load_weights")
    network.eval()
    x = normalised(torch.randint(0, 256, (3, 1, SIZE, SIZE), dtype=torch.uint8))
    with torch.no_grad():
        torch.testing.assert_close(network(x), model(x), rtol=0, atol=1e-5)
    for what, shape in {**WRONG_SHAPES, "one channel": (1, 1, SIZE, SIZE)}.items():
        given = ", ".join(map(str, shape))
        with pytest.raises(ValueError) as info:
            network(torch.zeros(shape))
        assert str(info.value) == (
            f"this network takes (batch, 3, {SIZE}, {SIZE}) images ({SIZE} x {SIZE} px, as it was trained); given "
            f"({given}): run the image files through `preprocessing` in configs/inference.json, which resizes with "
            "the rule the model was trained with"), what
    # MONAI's own checks of the bundle: the metadata's input shape runs through network_def, and network_def
    # (no hook) still exports to TorchScript with MONAI's ckpt_export
    monai.bundle.verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                                   config_file=str(bundle / "configs" / "inference.json"), device="cpu")
    monai.bundle.ckpt_export(net_id="network_def", filepath=str(tmp_path / "network.ts"),
                             ckpt_file=str(bundle / "models" / "model.pt"),
                             meta_file=str(bundle / "configs" / "metadata.json"),
                             config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle))
    assert (tmp_path / "network.ts").is_file()
    assert "refuses an input of another shape" in (bundle / "docs" / "README.md").read_text()


# --------------------------------------------------------------------------- MONAI bundle

IN_BUNDLE_TOOLS = """
import json, sys
sys.modules.update(transforms=None, kit=None)  # the kit cannot be imported here: the bundle needs MONAI alone
import torch
import monai.bundle
from monai.bundle import ConfigParser
bundle, images, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
parser = ConfigParser()
parser.read_config(f"{bundle}/configs/inference.json")
parser.read_meta(f"{bundle}/configs/metadata.json")
parser["bundle_root"] = bundle
network = parser.get_parsed_content("network")
parser.get_parsed_content("load_weights")
network.eval()
preprocess = parser.get_parsed_content("preprocessing")
with torch.no_grad():
    x = torch.stack([preprocess({"image": path})["image"] for path in images])
    probs = parser.get_parsed_content("postprocessing")(network(x))
monai.bundle.verify_net_in_out(net_id="network_def", meta_file=f"{bundle}/configs/metadata.json",
                               config_file=f"{bundle}/configs/inference.json", device="cpu")
monai.bundle.run(config_file=f"{bundle}/configs/inference.json", bundle_root=bundle, dataset_dir=sys.argv[4],
                 output_dir=out)
print(json.dumps({"probs": probs.tolist(), "network": type(network).__name__,
                  "backbone": type(network.backbone).__module__ + "." + type(network.backbone).__name__,
                  "kit": [m for m in sys.modules if m.split(".")[0] in ("kit", "transforms") and sys.modules[m]]}))
"""


@pytest.mark.slow
def test_bundle_runs_with_monai_alone_and_predicts_what_predict_py_predicts(runs, tmp_path):
    import transforms

    run_main("export.py", "--checkpoint", runs["finetuned"], "--out", tmp_path / "export", "--metrics", runs["metrics"])
    bundle = tmp_path / "export" / "bundle"
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()) == [
        "configs/inference.json", "configs/metadata.json", "docs/README.md", "models/model.pt"]
    pd.DataFrame({"image": runs["test_images"]}).to_csv(tmp_path / "test.csv", index=False)
    run_main("predict.py", "--checkpoint", runs["finetuned"], tmp_path / "test.csv", "--out", tmp_path / "pred",
             "--workers", "0", "--device", "cpu", "--no-amp")
    predicted = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    reference = predicted[["prob_horizontal", "prob_vertical"]].to_numpy()

    images = tmp_path / "images"
    images.mkdir()
    for path in runs["test_images"]:
        shutil.copy(path, images / Path(path).name)
    result = ok(run(["-I", "-c", IN_BUNDLE_TOOLS, bundle, json.dumps(runs["test_images"]), tmp_path / "bundle_out",
                     images], cwd=tmp_path))
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backbone"] == "monai.networks.nets.densenet.DenseNet121" and report["network"] == "Sequential"
    assert report["kit"] == []
    np.testing.assert_allclose(np.array(report["probs"]), reference, rtol=0, atol=BUNDLE_TOLERANCE)
    ran = pd.read_csv(tmp_path / "bundle_out" / "predictions.csv", header=None, names=["file", "p0", "p1"])
    ran["name"] = ran["file"].map(lambda p: Path(p).name)
    expected = predicted.assign(name=predicted["image"].map(lambda p: Path(p).name)).set_index("name")
    np.testing.assert_allclose(ran.set_index("name").loc[expected.index, ["p0", "p1"]].to_numpy(), reference,
                               rtol=0, atol=BUNDLE_TOLERANCE)

    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
                "description", "authors", "copyright", "network_data_format", "intended_use", "changelog"):
        assert key in metadata, key
    image = metadata["network_data_format"]["inputs"]["image"]
    assert (image["num_channels"], image["spatial_shape"], image["dtype"]) == (3, [SIZE, SIZE], "float32")
    assert image["value_range"][0] < -2 and image["value_range"][1] > 2.5  # ImageNet-normalised [0, 1]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == {"0": "horizontal", "1": "vertical"} and pred["num_channels"] == 2
    assert set(metadata["required_packages_version"]) == {"pillow", "pydicom"}  # MONAI's readers need them
    metrics = pd.read_csv(runs["metrics"]).iloc[0]
    assert metadata["eval_metrics"]["accuracy"] == pytest.approx(metrics["accuracy"])
    readme = (bundle / "docs" / "README.md").read_text()
    assert f"| accuracy | {metrics['accuracy']:.4f} | {metrics['accuracy_ci_low']:.4f} | " \
           f"{metrics['accuracy_ci_high']:.4f} |" in readme
    for words in ("## Training data", "## Intended use", "not for diagnosis", "bars"):
        assert words in readme, words
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["backbone"]["_target_"] == "monai.networks.nets.DenseNet121"
    assert inference["preprocessing"]["transforms"][1:] == transforms.stock_eval_config("cxr", image_size=SIZE)
    for words in ("Needs MONAI with pillow and pydicom", "without its VOI window", "nothing is refused"):
        assert words in readme, words


# --------------------------------------------------------------------------- backbone

@pytest.mark.slow
def test_a_backbone_exported_from_a_pretrained_model_loads_in_monai_and_fine_tunes(runs, tmp_path, capsys):
    from monai.networks.nets import DenseNet121

    from kit import models
    from kit.checkpoints import load_checkpoint

    run_main("export.py", "--checkpoint", runs["pretrained"], "--out", tmp_path / "CXR_RI", "--formats", "backbone")
    backbone = tmp_path / "CXR_RI" / "backbone.pt"
    assert "backbone.pt" in capsys.readouterr().out and not (tmp_path / "CXR_RI" / "model.ts").exists()
    saved = load_checkpoint(backbone)
    assert saved["meta"]["kind"] == "backbone" and all(k.startswith("features.") for k in saved["model"])
    pretrained = load_checkpoint(runs["pretrained"])["model"]
    features = models.load_backbone(backbone)
    for key, value in features.state_dict().items():
        assert torch.equal(value, pretrained[f"features.{key}"]), key
    with torch.no_grad():
        assert features(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 1024, 1, 1)
    net = models.load_backbone(backbone, out_channels=5)
    assert isinstance(net, DenseNet121) and net.class_layers.out.out_features == 5

    run_dir = tmp_path / "target"
    run_main("finetune_target.py", "--manifest", runs["manifest"], "--init", backbone, "--out", run_dir, "--image-size",
             SIZE, "--epochs", "1", "--batch-size", "8", "--hidden-dim", "16", "--workers", "0", "--device", "cpu")
    meta = load_checkpoint(run_dir / "last.pt")["meta"]
    assert meta["init_description"].startswith(f"backbone file {backbone.resolve()} (backbone only, new head; "
                                               "pretrained on bars)")
    tuned = load_checkpoint(run_dir / "last.pt")["model"]
    assert not torch.equal(tuned["features.conv0.weight"], pretrained["features.conv0.weight"])  # it trained

    # the strict key checks hold for backbone files: one tensor missing is refused, in one line
    broken = dict(saved, model={k: v for k, v in saved["model"].items() if k != "features.norm5.weight"})
    torch.save(broken, tmp_path / "broken.pt")
    line = script_error("finetune_target.py", "--manifest", runs["manifest"], "--init", tmp_path / "broken.pt",
                        "--out", tmp_path / "refused", "--image-size", SIZE, "--epochs", "1", "--workers", "0",
                        "--device", "cpu")
    assert "backbone is not this kit's DenseNet-121: 1 missing (features.norm5.weight)" in line
    with pytest.raises(ValueError, match="backbone is not this kit's DenseNet-121"):
        models.load_backbone(tmp_path / "broken.pt")


@pytest.mark.slow
def test_export_refuses_a_bundle_of_a_mixed_domain_model_in_one_line(runs, tmp_path):
    ckpt = torch.load(runs["pretrained"], weights_only=True)
    ckpt["meta"]["domain"] = "mixed"
    torch.save(ckpt, tmp_path / "all.pt")
    line = script_error("export.py", "--checkpoint", tmp_path / "all.pt", "--out", tmp_path / "out")
    assert line.endswith("export it with --formats torchscript backbone")


# --------------------------------------------------------------------------- the installed package

IMPORTS = """
import sys
import transforms
from kit.models import load_backbone, load_model
model, meta = load_model(sys.argv[1])
x = transforms.eval_transforms(meta["domain"], image_size=meta["image_size"])({"image": sys.argv[2]})["image"]
import kit
print(transforms.__file__)
print(kit.__file__)
print(meta["classes"], tuple(model(x[None]).shape), load_backbone(sys.argv[1]).__class__.__name__)
"""


@pytest.mark.slow
def test_the_kit_installs_editable_and_as_a_wheel_and_imports_from_anywhere(runs, editable_python, tmp_path):
    elsewhere = tmp_path / "clinic"
    elsewhere.mkdir()
    (elsewhere / "models.py").write_text("raise ImportError('the clinic code base has its own models module')\n")
    args = [runs["finetuned"], runs["test_images"][0]]
    result = ok(run(["-c", IMPORTS, *args], cwd=elsewhere, python=editable_python))
    lines = result.stdout.strip().splitlines()
    assert lines[:2] == [str(ROOT / "transforms.py"), str(ROOT / "kit" / "__init__.py")]  # editable: the checkout
    assert lines[2] == "['horizontal', 'vertical'] (1, 2) Sequential"
    result = run(["-c", "import predict"], cwd=elsewhere, python=editable_python)
    assert result.returncode != 0 and "No module named 'predict'" in result.stderr  # stage scripts stay in the checkout

    # a wheel, built from a copy of the repository (the build writes build/ in the tree), into a fresh venv
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".venv"))
    wheels = tmp_path / "wheels"
    ok(run(["-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, source], timeout=900))
    wheel = next(wheels.glob("domaintl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"transforms.py", "kit", "domaintl-0.1.0.dist-info"}  # no scripts
    assert {"kit/models.py", "kit/inputs.py", "kit/export.py", "kit/readers/chestxray14.py"} <= set(names)
    top_level = zipfile.ZipFile(wheel).read("domaintl-0.1.0.dist-info/top_level.txt").decode().split()
    assert sorted(top_level) == ["kit", "transforms"]
    python = make_venv(tmp_path / "wheel_venv")
    ok(run(["-m", "pip", "install", "--quiet", "--no-deps", wheel], python=python, timeout=900))
    result = ok(run(["-c", IMPORTS, *args], cwd=elsewhere, python=python))
    lines = result.stdout.strip().splitlines()
    site = str(tmp_path / "wheel_venv")
    assert lines[0].startswith(site) and lines[0].endswith("site-packages/transforms.py")
    assert lines[1].startswith(site) and lines[1].endswith("site-packages/kit/__init__.py")
    assert lines[2] == "['horizontal', 'vertical'] (1, 2) Sequential"
    # `import kit` alone stays light: kit.cli serves --help without torch
    result = ok(run(["-c", "import sys, kit, kit.cli; print('torch' in sys.modules, 'monai' in sys.modules)"],
                    cwd=elsewhere, python=python))
    assert result.stdout.strip() == "False False"


def test_kit_imports_transforms_by_its_one_name_and_no_script():
    """Inside kit/ the repository's own code is imported relatively (kit.x), except transforms.py, which
    every module imports as `transforms`, the name it has everywhere; kit/__init__.py has no import hook."""
    top_level = {p.stem for p in ROOT.glob("*.py")} | {"kit"}
    found = set()
    for path in sorted((ROOT / "kit").rglob("*.py")):  # kit/readers/ too
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            found |= {name for name in names if name.split(".")[0] in top_level}
            if isinstance(node, ast.ImportFrom) and node.level:
                assert "transforms" not in [a.name for a in node.names], path.name  # no kit.transforms
    assert found == {"transforms"}
    assert "__getattr__" not in (ROOT / "kit" / "__init__.py").read_text()


def test_pyproject_names_the_library_and_the_makefile_installs_it():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"] == {"py-modules": ["transforms"], "packages": ["kit", "kit.readers"]}
    assert project["project"]["name"] == "domaintl" and "pydicom>=3.0" in project["project"]["dependencies"]
    assert not (ROOT / "__init__.py").exists() and not (ROOT / "setup.py").exists()  # the root is no package
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/python -m pip install --quiet -e ." in makefile
