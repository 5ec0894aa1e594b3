"""predict.py, the DICOM reader of transforms.py, kit/inputs.py (what a model accepts) and kit/cam.py
(Grad-CAM, with predict.py --cam and evaluate.py --cam). Self-contained: the tiny model is trained
here, on 64 px grey noise pictures whose class, `square`, is decided by a bright square in one of the
four corners (`none`: no square).

Why not "square top-left vs square bottom-right" as classes: then the class is *where* the square is,
which a network that averages its features over the picture (global average pooling) must encode in
its channels, not in where they fire; measured on such a model, the maps of one class peaked in the
wrong quadrant (24 of 48). When the class is *what* is there, the map must follow the square to
whichever corner it is in, which is the question a researcher asks of a COVID-19 model."""
import copy
import sys
from pathlib import Path

import helpers
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from helpers import ROOT, run_main, run_script, script_error, write_dicom
from PIL import Image

sys.path.insert(0, str(ROOT))
SIZE = 64
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
CLASSES = ("none", "square")  # the folder reader sorts class folders: label 0, 1
PROBS = ["prob_none", "prob_square"]


# --------------------------------------------------------------------------- pictures and files

def corner_picture(corner, rng, size=SIZE):
    """Grey noise with a bright square (a quarter of the side) in one corner; corner None: noise alone."""
    x = rng.normal(70, 12, (size, size)).clip(0, 255)
    side = size // 4
    if corner:
        r0 = 4 if corner.startswith("top") else size - 4 - side
        c0 = 4 if corner.endswith("left") else size - 4 - side
        x[r0:r0 + side, c0:c0 + side] = 230
    return x.astype(np.uint8)


def same_picture_in_every_format(picture, folder):
    """One grey picture as PNG, NIfTI and DICOM (MONOCHROME2 and MONOCHROME1, each with a rescale
    slope and intercept): after the modality LUT (and the inversion) every file holds the picture
    up to a positive linear map, which the cxr head's min-max scaling removes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"png": folder / "picture.png", "nifti": folder / "picture.nii.gz",
             "dicom_m2": folder / "picture_m2.dcm", "dicom_m1": folder / "picture_m1.dcm"}
    Image.fromarray(picture).save(files["png"])
    nib.save(nib.Nifti1Image(picture.T.astype(np.float32), np.eye(4)), files["nifti"])  # NIfTI: x (columns) first
    values = picture.astype(np.int64)
    write_dicom(files["dicom_m2"], values * 8 + 100, slope=0.5, intercept=-1024.0)  # HU-like: 4 x picture - 974
    write_dicom(files["dicom_m1"], 4095 - values * 10, photometric="MONOCHROME1", slope=2.0, intercept=-500.0)
    return files


def run(argv, **kw):
    return run_script(*argv, **kw)


# --------------------------------------------------------------------------- the tiny model (slow)

@pytest.fixture(scope="module")
def corner_model(tmp_path_factory):
    """A cxr model trained on corner pictures (`square` ones named square_<corner>_<n>.png): its
    checkpoint, manifest and data folder."""
    tmp = tmp_path_factory.mktemp("corner")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (tmp / "data" / name).mkdir(parents=True)
    for i in range(24):
        Image.fromarray(corner_picture(None, rng)).save(tmp / "data" / "none" / f"none_{i:02d}.png")
        corner = CORNERS[i % 4]
        Image.fromarray(corner_picture(corner, rng)).save(tmp / "data" / "square" / f"square_{corner}_{i:02d}.png")
    run_main("prepare_data.py", "--dataset", "folder", "--root", tmp / "data", "--name", "corner", "--domain",
             "cxr", "--out", tmp / "m", "--val-frac", "0.2", "--test-frac", "0.2")
    manifest = tmp / "m" / "corner.csv"
    run_main("finetune_target.py", "--manifest", manifest, "--init", "random", "--out", tmp / "run",
             "--image-size", SIZE, "--epochs", "12", "--batch-size", "8", "--lr", "1e-3", "--hidden-dim", "32",
             "--workers", "0", "--device", "cpu")
    return {"checkpoint": tmp / "run" / "best.pt", "manifest": manifest, "data": tmp / "data", "tmp": tmp}


def predictions(folder):
    return pd.read_csv(folder / "predictions.csv"), pd.read_csv(folder / "skipped.csv")


@pytest.mark.slow
def test_predict_equals_evaluate_on_the_test_images(corner_model, tmp_path):
    """Same rows, same probabilities (to 1e-6): predict.py reads a CSV with an `image` column (here
    the test rows of the manifest) through evaluate.py's own eval chain, batching and precision."""
    evaluated = tmp_path / "eval"
    run_main("evaluate.py", "--checkpoint", corner_model["checkpoint"], "--manifest", corner_model["manifest"],
             "--split", "test", "--out", evaluated, "--workers", "0", "--device", "cpu", "--bootstrap", "10")
    test_rows = pd.read_csv(corner_model["manifest"]).query("split == 'test'")[["image"]]
    test_rows.to_csv(tmp_path / "test_images.csv", index=False)
    run_main("predict.py", "--checkpoint", corner_model["checkpoint"], tmp_path / "test_images.csv",
             "--out", tmp_path / "pred", "--workers", "0", "--device", "cpu")
    predicted, skipped = predictions(tmp_path / "pred")
    reference = pd.read_csv(evaluated / "predictions.csv")
    assert skipped.empty
    assert list(predicted.columns) == ["image", "pred", *PROBS]
    assert predicted["image"].tolist() == reference["image"].tolist()
    assert predicted["pred"].tolist() == reference["pred"].tolist()
    np.testing.assert_allclose(predicted[PROBS].to_numpy(), reference[PROBS].to_numpy(), rtol=0, atol=1e-6)
    assert (reference["pred"] == reference["target"]).mean() >= 0.8  # a model that learned the task


@pytest.mark.slow
def test_every_format_of_one_picture_gives_the_same_prediction(corner_model, tmp_path):
    rng = np.random.default_rng(7)
    outputs = {}
    for name, corner in (("square", "top_left"), ("none", None)):
        files = same_picture_in_every_format(corner_picture(corner, rng), tmp_path / name)
        run_main("predict.py", "--checkpoint", corner_model["checkpoint"], tmp_path / name, "--out",
                 tmp_path / f"pred_{name}", "--workers", "0", "--device", "cpu", "--no-amp")
        predicted, skipped = predictions(tmp_path / f"pred_{name}")
        assert skipped.empty, skipped.to_dict("records")
        assert sorted(predicted["image"]) == sorted(map(str, files.values()))
        assert set(predicted["pred"]) == {name}, predicted
        probs = predicted[PROBS].to_numpy()
        assert np.abs(probs - probs[0]).max() <= 2e-3, predicted  # 8-bit PNG vs 12-bit DICOM: rounding only
        dicom_rows = predicted[predicted["image"].str.endswith(".dcm")]
        assert (dicom_rows["PatientID"].astype(str) == "P001").all()
        assert dicom_rows["SOPInstanceUID"].str.len().min() > 10 and dicom_rows["StudyInstanceUID"].notna().all()
        assert predicted[predicted["image"].str.endswith(".png")]["SOPInstanceUID"].isna().all()
        outputs[name] = probs
    assert (outputs["square"][:, 1] > 0.5).all() and (outputs["none"][:, 0] > 0.5).all()


@pytest.mark.slow
def test_unreadable_volume_and_wrong_domain_files_are_skipped_with_a_reason(corner_model, tmp_path, capsys):
    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    Image.fromarray(corner_picture("top_left", np.random.default_rng(1))).save(good)
    bad = {
        "truncated.png": lambda p: p.write_bytes(good.read_bytes()[:80]),
        "empty.dcm": lambda p: p.write_bytes(b""),
        "volume.nii.gz": lambda p: nib.save(nib.Nifti1Image(np.random.default_rng(2).random((40, 40, 12),
                                                                                            dtype=np.float32),
                                                            np.eye(4)), p),
        "ct_slice.dcm": lambda p: write_dicom(p, np.random.default_rng(3).integers(0, 4000, (48, 48)), modality="CT"),
        "cine.dcm": lambda p: write_dicom(p, np.random.default_rng(4).integers(0, 4000, (3, 48, 48)), frames=3),
        "fundus.png": lambda p: Image.fromarray(fundus_picture()).save(p),
    }
    for name, make in bad.items():
        make(tmp_path / "in" / name)
    run_main("predict.py", "--checkpoint", corner_model["checkpoint"], tmp_path / "in", "--out", tmp_path / "out",
             "--workers", "0", "--device", "cpu")
    predicted, skipped = predictions(tmp_path / "out")
    assert predicted["image"].tolist() == [str(good)] and predicted["pred"].tolist() == ["square"]
    reasons = dict(zip(skipped["image"].map(lambda p: Path(p).name), skipped["reason"]))
    assert set(reasons) == set(bad)
    assert "cannot read the image" in reasons["truncated.png"]
    assert "cannot read the image" in reasons["empty.dcm"]
    assert "3-D volume (40 x 40 x 12 voxels)" in reasons["volume.nii.gz"]
    assert "DICOM modality CT (computed tomography); this cxr model was trained on grey chest X-rays" in \
        reasons["ct_slice.dcm"]
    assert "multi-frame DICOM (3 frames" in reasons["cine.dcm"]
    assert "a colour image" in reasons["fundus.png"] and "trained on grey chest X-rays" in reasons["fundus.png"]
    assert all(reason.startswith(str(tmp_path / "in")) and "\n" not in reason for reason in reasons.values())
    assert "6 skipped" in capsys.readouterr().out

    # the only input refused: one line, the reason; skipped.csv still says it
    for name in ("volume.nii.gz", "ct_slice.dcm", "fundus.png", "truncated.png"):
        line = script_error("predict.py", "--checkpoint", corner_model["checkpoint"], tmp_path / "in" / name,
                            "--out", tmp_path / "alone", "--workers", "0", "--device", "cpu")
        assert line == f"error: {reasons[name]}", line
        assert not (tmp_path / "alone" / "predictions.csv").exists()
    # --no-check-domain predicts a colour picture with the grey model; a volume stays refused
    run_main("predict.py", "--checkpoint", corner_model["checkpoint"], tmp_path / "in" / "fundus.png",
             tmp_path / "in" / "volume.nii.gz", "--out", tmp_path / "forced", "--workers", "0", "--device",
             "cpu", "--no-check-domain")
    predicted, skipped = predictions(tmp_path / "forced")
    assert len(predicted) == 1 and skipped["reason"].str.contains("3-D volume").all()


@pytest.mark.slow
def test_a_missing_input_or_a_mixed_domain_checkpoint_is_one_line(corner_model, tmp_path):
    line = script_error("predict.py", "--checkpoint", corner_model["checkpoint"], tmp_path / "nope.png", "--out",
                        tmp_path / "out")
    assert line == f"error: {tmp_path / 'nope.png'}: no such file or folder"
    ckpt = torch.load(corner_model["checkpoint"], weights_only=True)
    ckpt["meta"]["domain"] = "mixed"
    torch.save(ckpt, tmp_path / "mixed.pt")
    (tmp_path / "x.png").write_bytes((corner_model["data"] / "none" / "none_00.png").read_bytes())
    line = script_error("predict.py", "--checkpoint", tmp_path / "mixed.pt", tmp_path / "x.png", "--out",
                        tmp_path / "out", "--device", "cpu")
    assert "a model of mixed domains" in line


# --------------------------------------------------------------------------- Grad-CAM

def quadrant(heat):
    row, col = np.unravel_index(int(torch.as_tensor(heat).argmax()), tuple(heat.shape))
    return ("top" if row < heat.shape[0] / 2 else "bottom") + "_" + ("left" if col < heat.shape[1] / 2 else "right")


def corner_of(path):
    """The corner a training picture's square is in, from its name (square_<corner>_<n>.png), or None."""
    name = Path(path).name
    return next((corner for corner in CORNERS if name.startswith(f"square_{corner}_")), None)


def grad_cam_by_hand(model, images, classes, layer="features.denseblock4"):
    """Grad-CAM as Selvaraju et al. define it, written out: the layer's activations A (B, K, h, w), the
    gradient of each image's class logit, w_k = its mean over the map, ReLU(sum_k w_k A_k), bilinear to the
    input's size, each map scaled to [0, 1] by its own minimum and maximum."""
    net = copy.deepcopy(model).float().eval()
    kept = {}
    net.get_submodule(layer).register_forward_hook(lambda module, inputs, output: kept.update(a=output))
    logits = net(images.float())
    score = logits.gather(1, torch.as_tensor(classes).view(-1, 1)).sum()
    gradient, = torch.autograd.grad(score, kept["a"])
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    maps = torch.relu((weights * kept["a"]).sum(dim=1, keepdim=True))
    maps = torch.nn.functional.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
    low = maps.flatten(1).min(1).values.view(-1, 1, 1, 1)
    high = maps.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return ((maps - low) / (high - low).clamp_min(1e-12))[:, 0].detach()


@pytest.mark.slow
def test_grad_cam_is_the_gradient_weighted_map_of_the_class_it_explains(corner_model):
    """The kit's map (MONAI's GradCAM with the kit's hooks and scaling) equals Grad-CAM written out by hand,
    for the class predicted and for the other class, and the two differ; hot = most weight (a flipped
    scale, MONAI's default, fails). Where a trained network puts its weight is not tested: at 64 px the
    last dense block is a 2 x 2 map whose every cell sees the whole picture, and which cell carries a
    corner's square changes with training noise (four seeds of this model: 88, 100, 25 and 100 % of the
    maps in the square's quadrant)."""
    from kit import cam, models
    from transforms import eval_transforms

    model, meta, _ = models.model_from_checkpoint(corner_model["checkpoint"])
    rows = pd.read_csv(corner_model["manifest"])
    chain = eval_transforms(meta["domain"], image_size=meta["image_size"])
    images = torch.stack([chain({"image": path})["image"] for path in rows["image"]])
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    truth = torch.as_tensor(rows["label"].to_numpy().copy())
    assert float((predicted == truth).float().mean()) >= 0.8  # the model has learned what decides the class
    heat = cam.GradCam(model)(images, predicted)
    assert heat.shape == (len(rows), SIZE, SIZE) and float(heat.min()) >= 0 and float(heat.max()) == 1
    torch.testing.assert_close(heat, grad_cam_by_hand(model, images, predicted), atol=1e-4, rtol=0)
    other = cam.GradCam(model)(images, 1 - predicted)
    torch.testing.assert_close(other, grad_cam_by_hand(model, images, 1 - predicted), atol=1e-4, rtol=0)
    assert float((other - heat).abs().max()) > 0.5


@pytest.mark.slow
def test_predict_cam_pngs_show_the_map_over_the_input(corner_model, tmp_path):
    from matplotlib import colormaps

    from kit.cam import ALPHA

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for corner in ("top_left", "bottom_right"):
        Image.fromarray(corner_picture(corner, rng)).save(folder / f"{corner}.png")
    write_dicom(folder / "IM0001", corner_picture("bottom_left", rng).astype(np.int64) * 16)
    run_main("predict.py", "--checkpoint", corner_model["checkpoint"], folder, "--out", tmp_path / "out",
             "--cam", tmp_path / "cam", "--workers", "0", "--device", "cpu")
    predicted, _ = predictions(tmp_path / "out")
    assert predicted["pred"].tolist() == ["square"] * 3
    assert predicted["cam"].map(lambda p: Path(p).is_file()).all()
    assert sorted(p.name for p in (tmp_path / "cam").iterdir()) == ["IM0001.png", "bottom_right.png", "top_left.png"]
    for path, corner in zip(predicted["cam"], ("bottom_left", "bottom_right", "top_left")):  # input order: sorted
        with Image.open(path) as png:
            assert png.format == "PNG" and png.mode == "RGB"
            pixels = np.asarray(png).astype(int)
        height, width, _ = pixels.shape
        assert width >= 512 and height > width // 2  # the pictures, and the caption below them
        pixels = pixels[: width // 2]
        left, right = pixels[:, : width // 2], pixels[:, width // 2:]
        assert np.abs(left - left[..., :1]).max() == 0  # the input as the model saw it: grey
        assert np.abs(right - right[..., :1]).max() > 60  # the heat map's colours over it
        # the map's colours (the overlay minus the grey picture), read back as values on the jet scale
        colours = (right / 255 - (1 - ALPHA) * left.mean(axis=2, keepdims=True) / 255) / ALPHA
        scale = colormaps["jet"](np.linspace(0, 1, 256))[:, :3]
        values = ((colours[::4, ::4, None, :] - scale) ** 2).sum(-1).argmin(-1)
        assert quadrant(torch.as_tensor(values)) == corner, path


@pytest.mark.slow
def test_evaluate_cam_writes_correct_and_wrong_examples_per_class_inside_the_folder(corner_model, tmp_path):
    out = tmp_path / "eval"
    run_main("evaluate.py", "--checkpoint", corner_model["checkpoint"], "--manifest", corner_model["manifest"],
             "--split", "val", "--out", out, "--workers", "0", "--device", "cpu", "--bootstrap", "0",
             "--cam", "2")
    listed = pd.read_csv(out / "cam" / "cam.csv")
    evaluated = pd.read_csv(out / "predictions.csv")
    counts = listed.groupby("folder").size().to_dict()
    for name in CLASSES:
        mine = evaluated[evaluated["target"] == name]
        right = int((mine["pred"] == name).sum())
        assert counts.get(f"{name}/correct", 0) == min(2, right)
        assert counts.get(f"{name}/wrong", 0) == min(2, len(mine) - right)
    for file in listed["file"]:
        with Image.open(out / "cam" / file) as png:
            assert png.size[1] > png.size[0] // 2  # input | map, and the caption below
    assert not list(tmp_path.glob(".*tmp*"))  # written inside the folder before it was put in place


def test_pick_examples_takes_the_most_confident_correct_and_wrong_per_class():
    from kit.cam import pick_examples

    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.55, 0.45], [0.45, 0.55]])
    targets = np.array([0, 0, 0, 1, 1, 1])
    picks = pick_examples("multiclass", ["a", "b/c"], targets, probs, 1)
    assert picks == [(0, 0, "a/correct"), (2, 1, "a/wrong"), (3, 1, "b_c/correct"), (4, 0, "b_c/wrong")]
    multilabel = pick_examples("multilabel", ["a", "b"], np.array([[1, 0], [1, 1]]), np.array([[0.2, 0.9], [0.7, 0.3]]),
                               2)
    assert multilabel == [(1, 0, "a/correct"), (0, 0, "a/wrong"), (1, 1, "b/wrong")]


# --------------------------------------------------------------------------- reading DICOM (fast)

def head(path, domain="cxr"):
    from transforms import preprocess_transforms

    return preprocess_transforms(domain, image_size=48)({"image": str(path)})["image"]


def test_dicom_monochrome1_rescale_and_png_give_the_same_head(tmp_path):
    files = same_picture_in_every_format(corner_picture("top_left", np.random.default_rng(0)), tmp_path)
    reference = head(files["png"])
    for name in ("nifti", "dicom_m2", "dicom_m1"):
        assert float((head(files[name]) - reference).abs().max()) <= 1.01 / 255, name


def test_dicom_window_is_applied_as_a_viewer_applies_it(tmp_path):
    """Window centre 1000, width 800 on a ramp of 0..4000: what a viewer shows is the ramp clipped to
    [600, 1400] (DICOM's linear function, to within one stored value), which equals a PNG of it."""
    ramp = np.tile(np.linspace(0, 4000, 96), (64, 1)).round().astype(np.int64)
    write_dicom(tmp_path / "windowed.dcm", ramp, window=(1000, 800))
    shown = ((np.clip(ramp, 600, 1400) - 600) / 800 * 255).round().astype(np.uint8)
    Image.fromarray(shown).save(tmp_path / "shown.png")
    windowed = head(tmp_path / "windowed.dcm")
    assert float((windowed - head(tmp_path / "shown.png")).abs().max()) <= 2.01 / 255
    write_dicom(tmp_path / "plain.dcm", ramp)
    assert float((windowed - head(tmp_path / "plain.dcm")).abs().max()) > 0.3  # without the window: the full ramp


def test_dicom_files_are_read_by_pydicom_before_itk_with_or_without_suffix(tmp_path):
    from transforms import DicomReader, preprocess_transforms

    load = preprocess_transforms("cxr").transforms[0]
    assert any(isinstance(reader, DicomReader) for reader in load._loader.readers)
    picture = corner_picture("bottom_right", np.random.default_rng(0)).astype(np.int64)
    write_dicom(tmp_path / "IM0001", picture * 16)
    write_dicom(tmp_path / "scan.dcm", picture * 16)
    assert DicomReader().verify_suffix(str(tmp_path / "IM0001")) and not DicomReader().verify_suffix("x.png")
    loaded = load({"image": str(tmp_path / "IM0001")})["image"]
    assert loaded.meta["modality"] == "CR"  # DicomReader's metadata (ITK would name tags 0008|0060)
    assert float((head(tmp_path / "IM0001") - head(tmp_path / "scan.dcm")).abs().max()) == 0


def test_colour_dicom_reads_as_rgb(tmp_path):
    rgb = np.zeros((40, 56, 3), np.uint8)
    rgb[:, :28] = (200, 40, 40)
    rgb[:, 28:] = (40, 40, 200)
    write_dicom(tmp_path / "colour.dcm", rgb, rgb=True, modality="OP")
    x = head(tmp_path / "colour.dcm", domain="hwsi")
    assert x.shape == (3, 48, 67)
    assert float(x[0, :, :20].mean()) > 0.7 and float(x[2, :, -20:].mean()) > 0.7


# --------------------------------------------------------------------------- what a model accepts (fast)

def fundus_picture(size=64):
    """A reddish disc on black: colourful even with its black border."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.45) ** 2
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[disc] = (190, 80, 30)
    return rgb


def test_refusal_rules_per_domain(tmp_path):
    from kit.inputs import inspect

    grey = corner_picture("top_left", np.random.default_rng(0))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_rgb.jpg", quality=90)  # grey saved as colour
    Image.fromarray(fundus_picture()).save(tmp_path / "fundus.png")
    he = np.random.default_rng(1).integers(0, 40, (64, 64, 3)).astype(np.uint8) + np.array([200, 120, 180], np.uint8)
    Image.fromarray(he).save(tmp_path / "he.tif")
    nib.save(nib.Nifti1Image(grey.T.astype(np.float32), np.eye(4)), tmp_path / "slice.nii.gz")
    write_dicom(tmp_path / "cr.dcm", grey.astype(np.int64) * 16, modality="CR")
    write_dicom(tmp_path / "ot.dcm", grey.astype(np.int64) * 16, modality="OT")
    write_dicom(tmp_path / "mr.dcm", grey.astype(np.int64) * 16, modality="MR")
    write_dicom(tmp_path / "op.dcm", fundus_picture(), rgb=True, modality="OP")
    write_dicom(tmp_path / "sc_grey_rgb.dcm", np.stack([grey] * 3, -1), rgb=True, modality="OT")

    def refused(name, domain):
        return inspect(str(tmp_path / name), domain)[1]

    for name in ("grey.png", "grey_rgb.jpg", "slice.nii.gz", "cr.dcm", "ot.dcm", "sc_grey_rgb.dcm"):
        assert refused(name, "cxr") is None, name
    for name in ("grey.png", "grey_rgb.jpg", "slice.nii.gz", "ot.dcm", "sc_grey_rgb.dcm"):
        assert "a grey image; this efi model was trained on colour fundus photographs" in refused(name, "efi"), name
        assert "a grey image; this hwsi model was trained on colour histology" in refused(name, "hwsi"), name
    for name in ("fundus.png", "he.tif"):
        assert "a colour image (mean chroma" in refused(name, "cxr"), name
    assert "DICOM modality OP (ophthalmic photography); this cxr model" in refused("op.dcm", "cxr")
    assert refused("fundus.png", "efi") is None and refused("op.dcm", "efi") is None
    assert refused("he.tif", "hwsi") is None and refused("fundus.png", "hwsi") is None  # no evidence: predicted
    assert refused("op.dcm", "hwsi").endswith("DICOM modality OP (ophthalmic photography); this hwsi model was "
                                              "trained on colour histology (H&E) images (DICOM modality SM, GM); "
                                              "refused")
    assert "DICOM modality MR (magnetic resonance)" in refused("mr.dcm", "cxr")
    assert "DICOM modality CR" in refused("cr.dcm", "efi")
    ids = inspect(str(tmp_path / "cr.dcm"), "cxr")[0]
    assert ids["PatientID"] == "P001" and ids["SOPInstanceUID"] == str(pydicom.dcmread(tmp_path / "cr.dcm").SOPInstanceUID)


def test_find_inputs_walks_folders_reads_csvs_and_refuses_typos(tmp_path):
    from kit.inputs import find_inputs

    picture = corner_picture("top_left", np.random.default_rng(0))
    (tmp_path / "study" / "series1").mkdir(parents=True)
    Image.fromarray(picture).save(tmp_path / "study" / "a.png")
    write_dicom(tmp_path / "study" / "series1" / "IM0002", picture.astype(np.int64))
    write_dicom(tmp_path / "study" / "series1" / "IM0001", picture.astype(np.int64))
    (tmp_path / "study" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    (tmp_path / "study" / "notes.txt").write_text("not an image")
    pd.DataFrame({"image": ["study/a.png", str(tmp_path / "elsewhere.png")]}).to_csv(tmp_path / "list.csv", index=False)
    images, notes = find_inputs([tmp_path / "study", tmp_path / "list.csv", tmp_path / "study" / "a.png"])
    study = tmp_path / "study"
    assert images == [str(study / "a.png"), str(study / "series1" / "IM0001"), str(study / "series1" / "IM0002"),
                      str(study / "a.png"), str(tmp_path / "elsewhere.png"), str(study / "a.png")]
    assert notes == [f"{study}: 2 file(s) that are no image left out"]
    with pytest.raises(ValueError, match="no such file or folder"):
        find_inputs([tmp_path / "typo.png"])
    pd.DataFrame({"path": ["a.png"]}).to_csv(tmp_path / "wrong.csv", index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['image'\]"):
        find_inputs([tmp_path / "wrong.csv"])


def test_predict_help_shows_defaults_without_loading_torch():
    result = run(["-X", "importtime", "predict.py", "--help"])
    assert result.returncode == 0
    assert "(default: 64)" in result.stdout and "--cam DIR" in result.stdout and "--no-check-domain" in result.stdout
    for column in ("predictions.csv", "skipped.csv", "PatientID", "StudyInstanceUID", "SOPInstanceUID"):
        assert column in result.stdout
    assert "| torch" not in result.stderr and "| monai" not in result.stderr


def test_a_heat_map_png_is_captioned_with_the_class_its_probability_and_a_colour_bar(tmp_path):
    from matplotlib import colormaps

    from kit import cam

    rng = np.random.default_rng(0)
    pixels = torch.as_tensor(corner_picture("top_left", rng)[None])
    heat = torch.linspace(0, 1, SIZE * SIZE).reshape(SIZE, SIZE)
    cam.save_overlay(tmp_path / "square.png", pixels, heat, class_name="square", prob=0.973)
    cam.save_overlay(tmp_path / "none.png", pixels, heat, class_name="none", prob=0.027)
    pictures = cam.overlay(pixels, heat)
    side = pictures.shape[0]
    with Image.open(tmp_path / "square.png") as png, Image.open(tmp_path / "none.png") as other:
        square, none = np.asarray(png), np.asarray(other)
    assert square.shape[1] == pictures.shape[1] and square.shape[0] > side + 30
    assert np.array_equal(square[:side], pictures)  # the pictures as they were, the caption below
    caption, other_caption = square[side:], none[side:]
    assert caption[:, :side].min() < 60  # dark text under the input
    assert not np.array_equal(caption[:, :side], other_caption[:, :side])  # that names the class and probability
    assert np.array_equal(caption[:, side:], other_caption[:, side:])  # the colour bar: the same scale for every map
    bar_row = caption[:, side:][np.argmax([len(np.unique(row, axis=0)) for row in caption[:, side:]])] / 255
    jet = colormaps["jet"]([0.0, 1.0])[:, :3]
    bar = bar_row[(bar_row.max(axis=1) - bar_row.min(axis=1)) > 0.3]  # the coloured pixels, left to right
    assert np.abs(bar[0] - jet[0]).max() < 0.05 and np.abs(bar[-1] - jet[1]).max() < 0.05  # blue (0) to red (1)
    assert cam.caption_lines("square", 0.97312) == ["class: square", "probability: 0.973"]


def test_heat_maps_are_scaled_with_the_largest_value_hottest():
    """MONAI's default GradCAM normaliser maps (min, max) to (1, 0); ours keeps the largest value largest."""
    from kit.cam import unit_range

    maps = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]], [[[3.0, 3.0], [3.0, 3.0]]]])
    scaled = unit_range(maps)
    assert scaled[0, 0].tolist() == [[0.0, 0.25], [0.5, 1.0]] and scaled[1].abs().max() == 0


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    """A one-epoch model of two colours (seconds): for what predict.py writes, not what it predicts."""
    tmp = tmp_path_factory.mktemp("colour")
    manifest = helpers.two_colour_manifest(tmp)
    helpers.run_finetune(helpers.finetune_argv(manifest, tmp / "run", epochs=1))
    return tmp / "run" / "best.pt", tmp / "data"


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["disk_full", "ctrl_c"])
def test_predict_cam_writes_the_maps_and_predictions_csv_together_or_not_at_all(colour_model, tmp_path, monkeypatch,
                                                                                  failure):
    import errno

    import predict
    from kit import cam, files
    checkpoint, data = colour_model
    argv = ["--checkpoint", str(checkpoint), str(data), "--out", str(tmp_path / "out"), "--cam", str(tmp_path / "cam"),
            "--workers", "0", "--device", "cpu", "--batch-size", "4"]
    saved = []
    real_save = cam.save_overlay

    def third_map_fails(path, pixels, heat, **caption):
        saved.append(path)
        if len(saved) == 3:
            if failure == "ctrl_c":
                raise KeyboardInterrupt
            real_write = files._Handle.write
            monkeypatch.setattr(files._Handle, "write", lambda self, data: (_ for _ in ()).throw(
                OSError(errno.ENOSPC, "No space left on device")))
            try:
                return real_save(path, pixels, heat, **caption)
            finally:
                monkeypatch.setattr(files._Handle, "write", real_write)
        return real_save(path, pixels, heat, **caption)

    monkeypatch.setattr(cam, "save_overlay", third_map_fails)
    expected = KeyboardInterrupt if failure == "ctrl_c" else files.WriteError
    with pytest.raises(expected) as info:
        predict.main(predict.get_args_parser().parse_args(argv))
    if failure == "disk_full":  # names the picture it was writing
        assert f"{saved[-1]}: could not be written (no space left on device)" in str(info.value)
    assert not (tmp_path / "out" / "predictions.csv").exists()
    assert not list((tmp_path / "cam").glob("*.png")) if (tmp_path / "cam").exists() else True
    assert not list(tmp_path.glob(".cam.tmp-*"))
    # the same command again writes them all, together, each captioned with its predicted class and probability
    captions = {}

    def save_and_note(path, pixels, heat, **caption):
        captions[Path(path).name] = caption
        return real_save(path, pixels, heat, **caption)

    monkeypatch.setattr(cam, "save_overlay", save_and_note)
    predict.main(predict.get_args_parser().parse_args(argv))
    predicted = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert len(predicted) > 3 and predicted["cam"].map(lambda p: Path(p).is_file()).all()
    assert len(list((tmp_path / "cam").glob("*.png"))) == len(predicted)
    for row in predicted.itertuples():
        caption = captions[Path(row.cam).name]
        assert caption["class_name"] == row.pred
        assert caption["prob"] == pytest.approx(getattr(row, f"prob_{row.pred}"), abs=1e-6)
