"""kit.models: the network, ImageNet and checkpoint initialisation, rebuilding a trained model
from its checkpoint."""
import os
import subprocess
import sys
import textwrap
import urllib.error

import pytest
import torch
import torch.nn as nn
from helpers import ROOT
from monai.networks.nets import DenseNet121

from kit import cli, models
from kit.checkpoints import CheckpointError, save_checkpoint
from kit.imagenet import ImageNetWeightsUnavailable, find_imagenet_weights
from kit.models import backbone_keys, build_model, initialise

IMAGENET_FILE = "densenet121-a639ec97.pth"
# Names as they appear in the real torchvision file densenet121-a639ec97.pth (old spelling).


REAL_TORCHVISION_KEYS = [
    "features.conv0.weight",
    "features.norm0.running_var",
    "features.denseblock1.denselayer1.norm.1.weight",
    "features.denseblock1.denselayer1.conv.1.weight",
    "features.denseblock2.denselayer12.norm.2.running_mean",
    "features.denseblock4.denselayer16.conv.2.weight",
    "features.transition3.norm.bias",
    "features.transition3.conv.weight",
    "features.norm5.bias",
    "classifier.weight",
]


def to_torchvision(key, style):
    """MONAI backbone key -> torchvision's spelling, written out independently of models.py."""
    if style == "new":
        return key.replace(".layers.", ".")
    for name in ("norm1", "conv1", "norm2", "conv2", "relu1", "relu2"):
        key = key.replace(f".layers.{name}.", f".{name[:-1]}.{name[-1]}.")
    return key


@pytest.fixture(scope="module")
def backbone():
    """Random tensors for every backbone key (BatchNorm statistics included), MONAI names."""
    generator = torch.Generator().manual_seed(0)
    state = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1000).features.state_dict()
    return {f"features.{k}": (torch.randn(v.shape, generator=generator) if v.is_floating_point()
                              else torch.full_like(v, 7)) for k, v in state.items()}


def standin(backbone, style):
    """A torchvision-style ImageNet state dict: old style lacks num_batches_tracked, as the real file."""
    state = {to_torchvision(k, style): v for k, v in backbone.items()
             if not (style == "old" and k.endswith("num_batches_tracked"))}
    state["classifier.weight"] = torch.randn(1000, 1024)
    state["classifier.bias"] = torch.randn(1000)
    return state


def assert_backbone_equals(model, backbone, with_counters=True):
    state = model.state_dict()
    for key, value in backbone.items():
        if key.endswith("num_batches_tracked") and not with_counters:
            continue
        assert torch.equal(state[key], value), key


def head_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("features.")}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME; downloads fail loudly unless a test replaces them."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch_home"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: extra threads only add synchronisation (and stall badly on a busy shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the network ------------------------------------------------------------------------------------

def test_build_model_shapes_and_parts():
    model = build_model(5, hidden_dim=64, dropout=0.25)
    assert [type(m) for m in model.head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert model.head[0].in_features == 1024 and model.head[0].out_features == 64
    assert model.head[3].p == 0.25 and model.head[4].out_features == 5
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 5)  # train mode (BatchNorm needs batch > 1)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 5)


def test_backbone_keys_are_monai_native():
    model = build_model(3)
    monai_keys = {k for k in DenseNet121(spatial_dims=2, in_channels=3, out_channels=1).state_dict()
                  if k.startswith("features.")}
    assert backbone_keys(model) == monai_keys
    assert set(model.state_dict()) - monai_keys == {k for k in model.state_dict() if k.startswith("head.")}


def test_key_map_covers_real_torchvision_names():
    mapping = models.torchvision_key_map(build_model(1))
    assert mapping["features.denseblock1.denselayer1.norm.1.weight"] == \
        "features.denseblock1.denselayer1.layers.norm1.weight"
    assert mapping["features.denseblock1.denselayer1.norm1.weight"] == \
        "features.denseblock1.denselayer1.layers.norm1.weight"
    assert all(k in mapping for k in REAL_TORCHVISION_KEYS if not k.startswith("classifier."))


def test_bad_num_outputs():
    with pytest.raises(ValueError, match="num_outputs"):
        build_model(0)


# --- ImageNet initialisation ------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["old", "new"])
def test_imagenet_from_torch_home(style, backbone, torch_home):
    state = standin(backbone, style)
    assert all(k in state for k in REAL_TORCHVISION_KEYS) or style == "new"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, torch_home / "hub" / "checkpoints" / IMAGENET_FILE)
    model = build_model(3)
    head = head_state(model)
    description = initialise(model, "imagenet")
    assert "imagenet" in description and IMAGENET_FILE in description
    assert_backbone_equals(model, backbone, with_counters=style == "new")
    for key, value in head.items():
        assert torch.equal(model.state_dict()[key], value), f"head changed: {key}"


@pytest.mark.parametrize("nest", [None, "state_dict", "model"])
@pytest.mark.parametrize("style", ["old", "new"])
def test_imagenet_explicit_path(style, nest, backbone, torch_home, tmp_path):
    state = standin(backbone, style)
    path = tmp_path / "weights.pth"
    torch.save({nest: state} if nest else state, path)
    model = build_model(2)
    assert str(path) in initialise(model, "imagenet", imagenet_weights=path)
    assert_backbone_equals(model, backbone, with_counters=style == "new")
    assert find_imagenet_weights(path, download=False) == path


@pytest.mark.parametrize("damage,words", [
    ("drop", "1 missing (features.denseblock3.denselayer5.layers.conv2.weight)"),
    ("shape", "wrong shape (features.norm5.weight (3,) != (1024,))"),
    ("extra", "1 unexpected (features.extra.weight)"),
    ("resnet", "unexpected (conv1.weight"),
])
def test_imagenet_bad_file_fails_loudly(damage, words, backbone, tmp_path):
    state = standin(backbone, "old")
    if damage == "drop":
        del state["features.denseblock3.denselayer5.conv.2.weight"]
    elif damage == "shape":
        state["features.norm5.weight"] = torch.ones(3)
    elif damage == "extra":
        state["features.extra.weight"] = torch.ones(3)
    else:
        state = {"conv1.weight": torch.ones(64, 3, 7, 7), "fc.weight": torch.ones(1000, 2048)}
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        initialise(build_model(2), "imagenet", imagenet_weights=path)
    assert str(path) in str(info.value) and words in str(info.value)


HUB_CASES = """[{"TORCH_HOME": "/data/th"}, {"XDG_CACHE_HOME": "/data/xdg"},
                {"TORCH_HOME": "~/th", "XDG_CACHE_HOME": "/data/xdg"}, {}]"""


def test_the_hub_folder_is_torchs_without_loading_torch(tmp_path):
    """kit.imagenet.hub_dir (the study workflow's, no torch import) names the folder torch.hub.get_dir does,
    with TORCH_HOME, XDG_CACHE_HOME, both or neither set: one new process, torch loaded after kit's answers."""
    code = textwrap.dedent(f"""\
        import os, sys
        from pathlib import Path
        from kit import imagenet
        cases = {HUB_CASES}
        def use(env):
            for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
                os.environ.pop(name, None)
            os.environ.update(env)
        mine = []
        for env in cases:
            use(env)
            mine.append(imagenet.hub_dir())
        assert "torch" not in sys.modules
        import torch.hub
        for env, path in zip(cases, mine):
            use(env)
            print(env, path, Path(torch.hub.get_dir()))
        """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HOME": str(tmp_path)}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(line.split()[-2] == line.split()[-1] for line in lines), lines
    assert lines[-1].split()[-1] == str(tmp_path / ".cache" / "torch" / "hub")


def test_imagenet_unavailable_without_download(torch_home):
    with pytest.raises(ImageNetWeightsUnavailable) as info:
        find_imagenet_weights(download=False)
    message = str(info.value)
    expected = torch_home / "hub" / "checkpoints" / IMAGENET_FILE
    for hint in (f"https://download.pytorch.org/models/{IMAGENET_FILE}", str(expected),
                 "--imagenet-weights PATH", "imagenet_weights=PATH", "TORCH_HOME"):
        assert hint in message
    assert isinstance(info.value, FileNotFoundError)  # cli.user_errors: one line, no traceback


def test_imagenet_download_failure_explains(torch_home):
    with pytest.raises(ImageNetWeightsUnavailable, match="download failed.*URLError.*--imagenet-weights PATH"):
        initialise(build_model(2), "imagenet")
    assert not (torch_home / "hub" / "checkpoints" / IMAGENET_FILE).exists()


def test_imagenet_download_goes_to_hub_cache(torch_home, monkeypatch):
    calls = []

    def fake_download(url, dst, **kwargs):
        calls.append(url)
        torch.save({}, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path = find_imagenet_weights()
    assert path == torch_home / "hub" / "checkpoints" / IMAGENET_FILE and path.is_file()
    assert calls == [f"https://download.pytorch.org/models/{IMAGENET_FILE}"]
    assert find_imagenet_weights() == path and len(calls) == 1  # cached now


def test_imagenet_explicit_path_missing(torch_home, tmp_path):
    with pytest.raises(ImageNetWeightsUnavailable, match="nowhere.pth: ImageNet weights file not found"):
        initialise(build_model(2), "imagenet", imagenet_weights=tmp_path / "nowhere.pth")


# --- checkpoint initialisation ----------------------------------------------------------------------

def randomised(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=generator))
    return model


def test_checkpoint_init_copies_backbone_only(tmp_path):
    source = randomised(build_model(7), seed=1)
    path = tmp_path / "last.pt"
    save_checkpoint({"model": source.state_dict(), "meta": {"key": "chestxray14", "classes": ["a"] * 7}}, path)
    model = build_model(7)
    head = head_state(model)
    description = initialise(model, str(path))
    assert "backbone only" in description and "chestxray14" in description
    assert_backbone_equals(model, {k: v for k, v in source.state_dict().items() if k.startswith("features.")})
    for key, value in head.items():
        assert torch.equal(model.state_dict()[key], value), f"head not new: {key}"
    assert not torch.equal(model.state_dict()["head.out.weight"], source.state_dict()["head.out.weight"])


def test_checkpoint_init_other_head_size(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint({"model": build_model(22).state_dict(), "meta": {}}, path)
    initialise(build_model(2, hidden_dim=64), path)  # a 22-label All model -> a 2-class target


@pytest.mark.parametrize("state,words", [
    ({"features.conv0.weight": torch.zeros(64, 3, 7, 7)}, "backbone is not this kit's DenseNet-121: "),
    ({"conv1.weight": torch.zeros(1)}, "missing (features."),
])
def test_checkpoint_of_another_architecture(state, words, tmp_path):
    path = tmp_path / "other.pt"
    save_checkpoint({"model": state, "meta": {}}, path)
    with pytest.raises(CheckpointError) as info:
        initialise(build_model(2), path)
    assert str(path) in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("content", ["truncated", "text", "empty"])
def test_unreadable_file_is_one_clear_line(content, tmp_path):
    path = tmp_path / "broken.pt"
    if content == "truncated":
        save_checkpoint({"model": build_model(2).state_dict(), "meta": {}}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_text("" if content == "empty" else "epoch,loss\n1,0.5\n")
    with pytest.raises(CheckpointError) as info:
        initialise(build_model(2), path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable PyTorch checkpoint") and "\n" not in message


def test_unknown_init(tmp_path):
    with pytest.raises(ValueError, match="imagnet: unknown init: expected 'random', 'imagenet' or the path"):
        initialise(build_model(2), "imagnet")
    with pytest.raises(ValueError, match="is a folder.*last.pt"):
        initialise(build_model(2), tmp_path)
    assert initialise(build_model(2), "random").startswith("random")


def test_imagenet_unavailable_is_one_line_for_the_user(torch_home, monkeypatch):
    monkeypatch.delenv("STUDY_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        with cli.user_errors():
            find_imagenet_weights(download=False)
    message = str(info.value)
    assert message.startswith(f"error: {torch_home / 'hub' / 'checkpoints' / IMAGENET_FILE}: ImageNet weights "
                              "not found") and "\n" not in message


# --- a trained model from its checkpoint ----------------------------------------------------------

META = {"classes": ["a", "b", "c"], "task": "multiclass", "domain": "hwsi", "image_size": 32, "num_outputs": 3,
        "hidden_dim": 16, "dropout": 0.2, "headline_metric": "accuracy"}


def test_model_from_checkpoint_rebuilds_what_meta_describes(tmp_path):
    trained = randomised(build_model(3, hidden_dim=16, dropout=0.2), seed=2)
    save_checkpoint({"model": trained.state_dict(), "meta": META, "epoch": 4}, tmp_path / "best.pt")
    model, meta, checkpoint = models.model_from_checkpoint(tmp_path / "best.pt")
    assert meta == META and checkpoint["epoch"] == 4 and not model.training
    assert model.head.fc.out_features == 16 and model.head.dropout.p == 0.2 and model.head.out.out_features == 3
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    save_checkpoint({"model": trained.state_dict(), "meta": {**META, "hidden_dim": 32}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: weights do not fit the model its meta describes"):
        models.model_from_checkpoint(tmp_path / "other.pt")


def test_a_checkpoint_without_meta_is_one_clear_error(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save({"model": build_model(2).state_dict()}, bare)
    with pytest.raises(CheckpointError, match="bare.pt: checkpoint has no model description"):
        models.model_from_checkpoint(bare)


def test_create_model_builds_and_initialises(tmp_path):
    source = randomised(build_model(22), seed=3)
    save_checkpoint({"model": source.state_dict(), "meta": {"key": "all"}}, tmp_path / "All_RI.pt")
    model, description = models.create_model(2, str(tmp_path / "All_RI.pt"), hidden_dim=64, dropout=0.1)
    assert model.head.fc.out_features == 64 and model.head.out.out_features == 2 and "pretrained on all" in description
    assert torch.equal(model.state_dict()["features.conv0.weight"], source.state_dict()["features.conv0.weight"])
    model, description = models.create_model(2, "random")
    assert description.startswith("random") and isinstance(model, models.DenseNetClassifier)
