"""kit.backbones: published DenseNet-121 files (torchvision, CheXNet-style, torchxrayvision, MONAI, the kit's
own) as the kit's backbone; stand-ins carry those libraries' exact key names and shapes, random values."""
import json

import pytest
import torch
from helpers import TINY, folder_manifest, reference_densenet, run_finetune, run_main, script_error, write_layout
from monai.networks.nets import DenseNet121, DenseNet169

import transforms
from kit import backbones
from kit.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from kit.models import build_model, initialise


def kit_input(grey):
    """A grey picture (B, 1, H, W) in [0, 1] as the kit feeds it: 3 channels, ImageNet-normalised."""
    mean = torch.tensor(transforms.IMAGENET_MEAN, dtype=grey.dtype).view(1, 3, 1, 1)
    std = torch.tensor(transforms.IMAGENET_STD, dtype=grey.dtype).view(1, 3, 1, 1)
    return (grey.repeat(1, 3, 1, 1) - mean) / std


@pytest.fixture(scope="module")
def grey():
    return torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layout", ["torchvision", "chexnet", "monai"])
def test_three_channel_layouts_reproduce_the_original_features(layout, tmp_path):
    net = reference_densenet(out_channels=14 if layout == "chexnet" else 1000)
    path = write_layout(tmp_path / f"{layout}.pth", layout, net)
    assert backbones.layout_of(path) == layout
    model = build_model(2)
    description = initialise(model, str(path))
    assert f"{layout} DenseNet-121" in description and backbones.record_of(path)["sha256"] in description
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.eval().features(x), net.features(x), rtol=1e-5, atol=1e-5)


def test_a_one_channel_monai_stem_is_replicated_and_gives_the_same_features(grey, tmp_path):
    net = reference_densenet(in_channels=1, out_channels=3)
    path = write_layout(tmp_path / "monai1.pt", "monai", net)
    model = build_model(2)
    assert "1-channel stem replicated over 3 channels, divided by 3" in initialise(model, str(path))
    with torch.no_grad():  # a grey picture repeated over 3 channels meets the original stem's response
        torch.testing.assert_close(model.eval().features(grey.repeat(1, 3, 1, 1)), net.features(grey),
                                   rtol=1e-5, atol=1e-5)


def test_torchxrayvision_stem_and_intensity_scaling_are_folded_in(grey, tmp_path):
    net = reference_densenet(in_channels=1, out_channels=18)
    path = write_layout(tmp_path / "xrv.pt", "torchxrayvision", net)
    state = torch.load(path, weights_only=True)
    assert state["features.conv0.weight"].shape == (64, 1, 7, 7) and state["classifier.weight"].shape == (18, 1024)
    model = build_model(2)
    description = initialise(model, str(path))
    assert description.startswith("torchxrayvision DenseNet-121") and "input scaling folded" in description
    model, net, grey = model.double().eval(), net.double(), grey.double()
    with torch.no_grad():  # the first BatchNorm sees what xrv's network sees on 2048 p - 1024 (away from the border)
        ours = model.features.norm0(model.features.conv0(kit_input(grey)))
        theirs = net.features.norm0(net.features.conv0(2048 * grey - 1024))
    # to 1e-5 of the response's scale: the folded weights are stored in float32, and xrv's inputs reach 1024
    error = (ours - theirs)[..., 2:-2, 2:-2].abs().max()
    assert error < 1e-5 * theirs.abs().max(), (error, theirs.abs().max())
    assert not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)  # the zero-padded border differs, as documented


def test_the_kits_own_backbone_file_still_loads(tmp_path):
    source = build_model(3)
    path = tmp_path / "backbone.pt"
    save_checkpoint({"model": {k: v for k, v in source.state_dict().items() if k.startswith("features.")},
                     "meta": {"kind": "backbone", "key": "chestxray14"}}, path)
    assert backbones.layout_of(path) == "kit"
    model = build_model(2)
    assert initialise(model, str(path)).startswith("backbone file")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().features(x), source.eval().features(x))


def test_adapt_stem_sums_three_channels_into_one():
    weight = torch.randn(64, 3, 7, 7)
    one, how = backbones.adapt_stem(weight, 1)
    assert how == "3-channel stem summed into 1 channel" and torch.allclose(one[:, 0], weight.sum(1))
    assert backbones.adapt_stem(weight, 3) == (weight, None)
    with pytest.raises(CheckpointError, match="stem of 4 input channels"):
        backbones.adapt_stem(torch.randn(64, 4, 7, 7), 3)


@pytest.mark.parametrize("make,words", [
    (lambda: DenseNet169(spatial_dims=2, in_channels=3, out_channels=2).state_dict(),
     "not a DenseNet-121: a DenseNet with dense blocks of (6, 12, 32, 32) layers (DenseNet-169)"),
    (lambda: {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)},
     "not a DenseNet-121: a ResNet"),
    (lambda: {k: v for k, v in DenseNet121(spatial_dims=2, in_channels=3, out_channels=2).state_dict().items()
              if "norm5" not in k}, "4 missing (features.norm5.bias, features.norm5.running_mean"),
    (lambda: {**DenseNet121(spatial_dims=2, in_channels=3, out_channels=2).state_dict(),
              "features.extra.weight": torch.zeros(1)}, "1 unexpected (features.extra.weight)"),
    (lambda: [torch.zeros(1)], "not a DenseNet-121 state dict (found a list"),
])
def test_a_file_that_is_not_a_densenet121_is_one_line(make, words, tmp_path):
    path = tmp_path / "other.pth"
    torch.save(make(), path)
    with pytest.raises(CheckpointError) as info:
        initialise(build_model(2), str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message


@pytest.mark.slow
def test_published_layouts_fine_tune_and_evaluate_through_the_ordinary_commands(tmp_path):
    manifest = folder_manifest(tmp_path, "tiny", ["a", "b"], domain="cxr")
    for layout in ("chexnet", "torchxrayvision"):
        net = reference_densenet(in_channels=1 if layout == "torchxrayvision" else 3)
        weights = write_layout(tmp_path / f"{layout}.pth", layout, net)
        out = tmp_path / "finetune" / layout
        run_finetune(["--manifest", str(manifest), "--init", str(weights), "--out", str(out), *TINY])
        meta = load_checkpoint(out / "last.pt")["meta"]
        assert meta["pretraining"]["layout"] == layout
        assert meta["pretraining"]["sha256"] == backbones.record_of(weights)["sha256"]
        assert meta["init_description"].startswith(f"{layout} DenseNet-121")
        assert json.loads((out / "args.json").read_text())["meta"]["pretraining"]["layout"] == layout
        run_main("evaluate.py", "--checkpoint", out / "best.pt", "--manifest", manifest, "--split", "test",
                 "--out", tmp_path / "eval" / layout, "--device", "cpu")
        assert (tmp_path / "eval" / layout / "metrics.csv").is_file()
    wrong = tmp_path / "resnet.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, wrong)
    assert script_error("finetune_target.py", "--manifest", manifest, "--init", wrong, "--out", tmp_path / "bad",
                        *TINY) == f"error: {wrong}: not a DenseNet-121: a ResNet (layer1.0.conv1.weight ...)"
