"""Tests for transforms.py: shapes, orientation, channels, file formats, eye crop, pickling."""
import math
import pickle

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from helpers import write_dicom
from PIL import Image

from transforms import (
    DOMAINS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transforms,
    preprocess_transforms,
    train_transforms,
)

S = 32  # image_size of the tests
H, W = 48, 80  # a landscape picture: transposing it would change its shape and its pattern
CHAINS = {"train": train_transforms, "eval": eval_transforms}


def bar_picture(h=H, w=W, low=0, high=255, dtype=np.uint8):
    """Grey picture with a bright bar over the top third, left half only."""
    a = np.full((h, w), low, dtype)
    a[: h // 3, : w // 2] = high
    return a


def assert_bar(x, bright=0.8, dark=0.2):
    """x (C, rows, cols) shows the bar of bar_picture: top third, left half (2-pixel margins for blur)."""
    rows, cols = x.shape[-2:]
    assert x[:, : rows // 3 - 2, : cols // 2 - 2].min() > bright, "bar not at the top left"
    assert x[:, :, cols // 2 + 2:].max() < dark, "right half not dark"
    assert x[:, rows // 3 + 2:, :].max() < dark, "below the bar not dark"


def unnormalise(x):
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x * std + mean


def save_png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture(scope="module")
def noise_png(tmp_path_factory):
    """An RGB picture of uniform noise: every chain must normalise it to roughly zero mean."""
    rng = np.random.default_rng(0)
    return save_png(tmp_path_factory.mktemp("noise") / "noise.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


# --- chains: shapes, dtypes, normalisation ----------------------------------------------------

@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("domain", DOMAINS)
def test_chain_output(domain, chain, noise_png):
    t = CHAINS[chain](domain, image_size=S)
    t.set_random_state(seed=0)  # a fixed draw: a strong zoom-in on noise can have std < 0.3
    x = t({"image": noise_png})["image"]
    assert type(x) is torch.Tensor  # plain tensor, no MetaTensor, for the DataLoader
    assert x.shape == (3, S, S) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert abs(float(x.mean())) < 1.0 and 0.3 < float(x.std()) < 3.0


@pytest.mark.parametrize("domain", DOMAINS)
def test_eval_is_preprocess_normalised(domain, noise_png):
    head = preprocess_transforms(domain, image_size=S)({"image": noise_png})["image"]
    assert head.dtype == torch.float32 and head.shape[0] == 3 and 0.0 <= head.min() and head.max() <= 1.0
    x = eval_transforms(domain, image_size=S)({"image": noise_png})["image"]
    top, left = (head.shape[1] - S) // 2, (head.shape[2] - S) // 2  # hwsi: centre crop
    # the uint8 rounding of the head: at most half a grey level
    torch.testing.assert_close(unnormalise(x), torch.as_tensor(head)[:, top:top + S, left:left + S],
                               atol=0.5 / 255 + 1e-5, rtol=0)
    torch.testing.assert_close(x, eval_transforms(domain, image_size=S)({"image": noise_png})["image"])


@pytest.mark.parametrize("domain", DOMAINS)
def test_train_is_random(domain, tmp_path):
    rng = np.random.default_rng(1)
    path = save_png(tmp_path / "x.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    t = train_transforms(domain, image_size=S)
    outputs = [t({"image": path})["image"] for _ in range(6)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])


# --- orientation and channels -------------------------------------------------------------------

def test_orientation_cxr_non_square(tmp_path):
    path = save_png(tmp_path / "bar.png", bar_picture())
    assert_bar(preprocess_transforms("cxr", image_size=S)({"image": path})["image"])
    assert_bar(unnormalise(eval_transforms("cxr", image_size=S)({"image": path})["image"]))


def test_orientation_and_aspect_hwsi(tmp_path):
    path = save_png(tmp_path / "bar.png", np.stack([bar_picture()] * 3, -1))
    head = preprocess_transforms("hwsi", image_size=S)({"image": path})["image"]
    assert head.shape == (3, S, int(S * W / H))  # shorter side = S, aspect kept (torchvision's rounding)
    assert_bar(head)
    portrait = save_png(tmp_path / "portrait.png", np.arange(60 * 40 * 3, dtype=np.uint8).reshape(60, 40, 3))
    assert preprocess_transforms("hwsi", image_size=S)({"image": portrait})["image"].shape == (3, 48, S)


def test_hwsi_breakhis_size_as_in_paper(tmp_path):
    """Paper 5.2.1: BreakHis 700x460 -> 340x224, then 224x224 crops."""
    path = save_png(tmp_path / "breakhis.png", np.random.default_rng(0).integers(0, 255, (460, 700, 3), dtype=np.uint8))
    assert preprocess_transforms("hwsi", image_size=224)({"image": path})["image"].shape == (3, 224, 340)
    assert train_transforms("hwsi", image_size=224)({"image": path})["image"].shape == (3, 224, 224)


def test_orientation_efi(tmp_path):
    """Grey background (no eye crop), bright bar top left; the centre crop keeps the picture's top left."""
    path = save_png(tmp_path / "bar.png", np.stack([bar_picture(low=128)] * 3, -1))
    x = preprocess_transforms("efi", image_size=S)({"image": path})["image"]
    assert x.shape == (3, S, S)
    assert x[:, : S // 3 - 2, : 4].min() > 0.9  # bar, top left
    assert (x[:, S // 3 + 2:, :] - 128 / 255).abs().max() < 0.02  # background below
    assert (x[:, :, -4:] - 128 / 255).abs().max() < 0.02  # background on the right


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16"])
def test_cxr_any_channels_to_grey(mode, tmp_path):
    grey = bar_picture()
    if mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 16)  # 12-bit values in a 16-bit PNG
    else:
        image = Image.fromarray(grey).convert(mode)
    image.save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode == image.mode
    x = preprocess_transforms("cxr", image_size=S)({"image": str(tmp_path / "x.png")})["image"]
    assert x.shape == (3, S, S)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])  # one grey channel repeated
    assert float(x.max()) == pytest.approx(1.0) and float(x.min()) == pytest.approx(0.0)  # min-max
    assert_bar(x)


def test_cxr_rgb_uses_luma(tmp_path):
    """A red bar on black is still a bright bar after RGB -> grey and min-max."""
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = bar_picture()
    x = preprocess_transforms("cxr", image_size=S)({"image": save_png(tmp_path / "red.png", rgb)})["image"]
    assert_bar(x)


def test_colour_8bit_divided_not_stretched(tmp_path):
    """hwsi/efi 8-bit: /255, so a dull image stays dull (cxr would stretch it by min-max)."""
    path = save_png(tmp_path / "dull.png", np.stack([bar_picture(low=50, high=100)] * 3, -1))
    x = preprocess_transforms("hwsi", image_size=S)({"image": path})["image"]
    assert float(x.min()) == pytest.approx(50 / 255, abs=1e-4)
    assert float(x.max()) == pytest.approx(100 / 255, abs=1e-4)
    c = preprocess_transforms("cxr", image_size=S)({"image": path})["image"]
    assert float(c.min()) == pytest.approx(0.0) and float(c.max()) == pytest.approx(1.0)


def test_colour_rgba_drops_alpha_and_grey_becomes_rgb(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = bar_picture()  # red bar
    rgba[..., 3] = 77  # translucent: alpha must not leak into the colours
    x = preprocess_transforms("hwsi", image_size=S)({"image": save_png(tmp_path / "rgba.png", rgba)})["image"]
    assert x.shape[0] == 3
    assert_bar(x[:1])
    assert float(x[1:].max()) == 0.0
    grey = preprocess_transforms("efi", image_size=S)({"image": save_png(tmp_path / "g.png", bar_picture(low=128))})
    assert torch.equal(grey["image"][0], grey["image"][2])


def test_colour_16bit_is_min_max_scaled(tmp_path):
    path = save_png(tmp_path / "g16.png", bar_picture(high=40000, dtype=np.uint16))
    x = preprocess_transforms("hwsi", image_size=S)({"image": path})["image"]
    assert float(x.max()) == pytest.approx(1.0) and float(x.min()) == pytest.approx(0.0)
    assert_bar(x)


# --- file formats --------------------------------------------------------------------------------

def _write(fmt, tmp_path):
    grey = bar_picture()
    if fmt == "png":
        return save_png(tmp_path / "x.png", grey)
    if fmt == "jpeg":
        path = tmp_path / "x.jpeg"
        Image.fromarray(np.stack([grey] * 3, -1)).save(path, quality=95)
        return str(path)
    if fmt == "tiff_rgb":
        tifffile.imwrite(tmp_path / "rgb.tif", np.stack([grey] * 3, -1), photometric="rgb")
        return str(tmp_path / "rgb.tif")
    if fmt == "tiff_grey":
        tifffile.imwrite(tmp_path / "grey.tif", grey)
        return str(tmp_path / "grey.tif")
    if fmt == "dicom":
        write_dicom(tmp_path / "x.dcm", bar_picture(high=4095, dtype=np.uint16))
        return str(tmp_path / "x.dcm")
    if fmt == "dicom_monochrome1":  # 0 = white: the bar is stored as 0 on a 4095 background
        write_dicom(tmp_path / "x.dcm", bar_picture(low=4095, high=0, dtype=np.uint16), photometric="MONOCHROME1")
        return str(tmp_path / "x.dcm")
    if fmt == "nifti":  # NIfTI's first axis is x (columns): store the transpose of the picture
        nib.save(nib.Nifti1Image(grey.T.astype(np.float32), np.eye(4)), tmp_path / "x.nii.gz")
        return str(tmp_path / "x.nii.gz")
    if fmt == "nifti_3d_one_slice":
        nib.save(nib.Nifti1Image(grey.T[:, :, None].astype(np.int16), np.eye(4)), tmp_path / "x.nii")
        return str(tmp_path / "x.nii")
    raise AssertionError(fmt)


FORMATS = ["png", "jpeg", "tiff_rgb", "tiff_grey", "dicom", "dicom_monochrome1", "nifti", "nifti_3d_one_slice"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("domain", ["cxr", "hwsi"])
def test_formats_load_upright(fmt, domain, tmp_path):
    path = _write(fmt, tmp_path)
    head = preprocess_transforms(domain, image_size=S)({"image": path})["image"]
    assert head.shape == ((3, S, S) if domain == "cxr" else (3, S, int(S * W / H)))
    assert_bar(head)
    x = eval_transforms(domain, image_size=S)({"image": path})["image"]
    assert x.shape == (3, S, S) and x.dtype == torch.float32


def test_tiff_goes_through_pil_when_pil_can_decode_it(tmp_path):
    from transforms import PictureReader
    load = preprocess_transforms("hwsi").transforms[0]
    assert isinstance(load._loader.readers[-1], PictureReader)  # the last registered is tried first
    assert PictureReader().verify_suffix(_write("tiff_rgb", tmp_path))
    assert not PictureReader().verify_suffix("scan.dcm")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    assert not PictureReader().verify_suffix(str(tmp_path / "broken.tif"))  # left to ITK


def test_dicom_goes_through_pydicom_not_itk(tmp_path):
    path = _write("dicom", tmp_path)
    loaded = preprocess_transforms("cxr").transforms[0]({"image": path})["image"]
    assert loaded.meta["modality"] == "CR"  # DicomReader's metadata; ITK would name tags as "0008|0060"
    assert "0028|0004" not in loaded.meta


def test_volume_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 6, 4), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    with pytest.raises(ValueError, match=r"vol\.nii\.gz: expected a 2-D image"):
        preprocess_transforms("cxr", image_size=S)({"image": str(tmp_path / "vol.nii.gz")})


# --- bad data: one ValueError naming the file, or a documented conversion --------------------------

def _bad_file(kind, tmp_path):
    png = save_png(tmp_path / "ok.png", bar_picture())
    jpeg = _write("jpeg", tmp_path)
    if kind == "zero_bytes":
        (tmp_path / "bad.png").write_bytes(b"")
    elif kind == "truncated_png":
        (tmp_path / "bad.png").write_bytes(open(png, "rb").read()[:60])
    elif kind == "truncated_half_png":  # the header whole, the pixel data cut: "unpack_from requires a buffer ..."
        data = open(png, "rb").read()
        (tmp_path / "bad.png").write_bytes(data[:len(data) // 2])
    elif kind == "truncated_jpeg":
        (tmp_path / "bad.jpeg").write_bytes(open(jpeg, "rb").read()[:300])
        return str(tmp_path / "bad.jpeg")
    elif kind == "not_an_image":
        (tmp_path / "bad.png").write_text("this is text")
    elif kind == "all_nan_tiff":
        tifffile.imwrite(tmp_path / "bad.tif", np.full((H, W), np.nan, np.float32))
        return str(tmp_path / "bad.tif")
    return str(tmp_path / "bad.png")  # "missing": never written


@pytest.mark.parametrize("kind", ["zero_bytes", "truncated_png", "truncated_half_png", "truncated_jpeg", "not_an_image",
                                  "missing", "all_nan_tiff"])
@pytest.mark.parametrize("make", [preprocess_transforms, train_transforms, eval_transforms])
def test_unreadable_file_is_one_error_naming_it(kind, make, tmp_path):
    path = _bad_file(kind, tmp_path)
    with pytest.raises(ValueError) as info:
        make("hwsi", image_size=S)({"image": path})
    message = str(info.value)
    assert message.startswith(path + ": ") and "\n" not in message
    assert ("no finite pixel" if kind == "all_nan_tiff" else "cannot read the image") in message
    # a file cut short says so, not only the decoder's words (e.g. "unpack_from requires a buffer ...")
    assert ("truncated or corrupt image" in message) == kind.startswith(("truncated", "zero", "not_an"))


@pytest.mark.parametrize("fmt", ["tiff", "nifti"])
@pytest.mark.parametrize("domain", ["cxr", "hwsi"])
def test_nan_pixels_become_the_minimum(fmt, domain, tmp_path):
    """NaN / inf (no data) -> the smallest finite value before scaling: black, not a NaN tensor."""
    picture = bar_picture(low=10, high=200).astype(np.float32)
    picture[-6:, -6:] = np.nan  # a corner without data
    picture[-1, 0] = np.inf
    if fmt == "tiff":
        tifffile.imwrite(tmp_path / "nan.tif", picture)
        path = str(tmp_path / "nan.tif")
    else:
        nib.save(nib.Nifti1Image(picture.T.copy(), np.eye(4)), tmp_path / "nan.nii.gz")
        path = str(tmp_path / "nan.nii.gz")
    head = preprocess_transforms(domain, image_size=S)({"image": path})["image"]
    assert torch.isfinite(head).all() and float(head.min()) == 0.0 and float(head.max()) == pytest.approx(1.0)
    assert float(head[:, -2:, -2:].max()) < 1e-6  # the NaN corner is as dark as the darkest pixel
    assert_bar(head)
    assert torch.isfinite(train_transforms(domain, image_size=S)({"image": path})["image"]).all()


@pytest.mark.parametrize("domain,mode,channels", [("cxr", "RGBA", 1), ("cxr", "I;16", 1), ("hwsi", "L", 1),
                                                  ("efi", "LA", 1), ("hwsi", "RGBA", 3), ("efi", "I;16", 1)])
def test_modes_are_converted_for_every_domain(domain, mode, channels, tmp_path):
    """Colour where grey is expected and the reverse, alpha, 16 bit: converted, never refused.
    The cached head keeps grey as one channel; every chain ends with 3."""
    from transforms import cache_transforms
    grey = bar_picture()
    image = Image.fromarray(grey.astype(np.uint16) * 200) if mode == "I;16" else Image.fromarray(grey).convert(mode)
    image.save(tmp_path / "x.png")
    path = str(tmp_path / "x.png")
    stored = cache_transforms(domain, image_size=S)({"image": path})["image"]
    assert stored.dtype == torch.uint8 and stored.shape[0] == channels
    head = preprocess_transforms(domain, image_size=S)({"image": path})["image"]
    assert head.shape[:2] == (3, S) and torch.equal(head[0], head[2])
    if domain != "efi":  # efi crops to the eye: here, to the bar
        assert_bar(head)


# --- eye crop -------------------------------------------------------------------------------------

def test_eye_crop_removes_black_border(tmp_path):
    """A small off-centre disc on black fills the output; stray bright pixels do not widen the box."""
    rows, cols = np.mgrid[:96, :128]
    disc = (rows - 30) ** 2 + (cols - 40) ** 2 <= 16 ** 2
    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[disc] = (180, 90, 40)
    rgb[90, 120] = rgb[2, 125] = (255, 255, 255)  # specks far from the eye
    x = preprocess_transforms("efi", image_size=S)({"image": save_png(tmp_path / "eye.png", rgb)})["image"]
    eye = x.mean(0) > 0.1
    assert x.shape == (3, S, S)
    assert float(eye.float().mean()) > 0.7  # disc in its bounding square: pi / 4
    r, c = torch.nonzero(eye).float().mean(0)
    assert abs(float(r) - (S - 1) / 2) < 1.5 and abs(float(c) - (S - 1) / 2) < 1.5  # centred


def test_a_black_image_is_refused_with_one_line(tmp_path):
    """An all-black picture (a failed export) is refused, not turned into zeros without a word."""
    path = save_png(tmp_path / "black.png", np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(ValueError, match=r"black\.png: every pixel has the same value \(0\)"):
        preprocess_transforms("efi", image_size=S)({"image": path})


# --- dictionaries, pickling, errors ------------------------------------------------------------------

@pytest.mark.parametrize("chain", ["preprocess", "train", "eval"])
def test_other_keys_pass_through(chain, noise_png):
    make = {"preprocess": preprocess_transforms, **CHAINS}[chain]
    item = {"image": noise_png, "label": 3, "labels": "cxr/Edema|efi/grade_2", "patient": "p1"}
    out = make("hwsi", image_size=S)(item)
    assert {k: out[k] for k in ("label", "labels", "patient")} == {"label": 3, "labels": "cxr/Edema|efi/grade_2",
                                                                     "patient": "p1"}
    assert set(out) == set(item)


@pytest.mark.parametrize("domain", DOMAINS)
def test_chains_pickle(domain, noise_png):
    for make in (preprocess_transforms, train_transforms, eval_transforms):
        pickle.loads(pickle.dumps(make(domain, image_size=S)))({"image": noise_png})
    t = eval_transforms(domain, image_size=S)
    torch.testing.assert_close(pickle.loads(pickle.dumps(t))({"image": noise_png})["image"],
                               t({"image": noise_png})["image"])


@pytest.mark.parametrize("domain", DOMAINS)
def test_head_is_cacheable(domain):
    """MONAI's CacheDataset caches up to the first random transform: that must be the end of the
    head (rounded to uint8, as cache_transforms stores it)."""
    from monai.transforms import Randomizable

    from transforms import cache_transforms
    head = cache_transforms(domain, image_size=S).transforms
    assert not any(isinstance(t, Randomizable) for t in head)
    train = train_transforms(domain, image_size=S)
    assert train.get_index_of_first(lambda t: isinstance(t, Randomizable)) == len(head)
    assert [type(t) for t in train.transforms[:len(head)]] == [type(t) for t in head]


def test_dataloader_with_workers(noise_png):
    from monai.data import CacheDataset
    items = [{"image": noise_png, "label": i} for i in range(4)]
    data = CacheDataset(items, transform=train_transforms("cxr", image_size=S), progress=False)
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [b["image"].shape for b in batches] == [(2, 3, S, S)] * 2
    assert torch.cat([b["label"] for b in batches]).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("make", [preprocess_transforms, train_transforms, eval_transforms])
def test_bad_arguments(make):
    with pytest.raises(ValueError, match="cxr, hwsi, efi"):
        make("ct")
    with pytest.raises(ValueError, match="image_size"):
        make("cxr", image_size=0)
    with pytest.raises(TypeError):
        make("cxr", 224)  # keyword-only


# --- real files -----------------------------------------------------------------------------------------

REAL = [
    ("eyepacs/images/10_left.jpeg", "efi"),
    ("eyepacs/images/16_left.jpeg", "efi"),
    ("breakhis/SOB_B_A-14-22549AB-40-001.png", "hwsi"),
    ("nct_crc_he/ADI-AAQEFMRI.tif", "hwsi"),
    ("chestxray14/images/00000001_000.png", "cxr"),
    ("covid19_radiography/COVID/COVID-1.png", "cxr"),
]


@pytest.mark.parametrize("name,domain", REAL)
def test_real_samples(shared_data, name, domain):
    path = str(shared_data / name)
    head = preprocess_transforms(domain, image_size=64)({"image": path})["image"]
    assert head.dtype == torch.float32 and 0.0 <= float(head.min()) and float(head.max()) <= 1.0
    for make in CHAINS.values():
        x = make(domain, image_size=64)({"image": path, "label": 1})["image"]
        assert x.shape == (3, 64, 64) and torch.isfinite(x).all()
        assert abs(float(x.mean())) < 2.5


def test_real_breakhis_is_340_by_224(shared_data):
    path = str(shared_data / "breakhis/SOB_B_F-14-25197-100-001.png")
    assert preprocess_transforms("hwsi", image_size=224)({"image": path})["image"].shape == (3, 224, 340)


def test_real_fundus_border_cropped(shared_data):
    """16_left.jpeg has a wide black border left and right; the crop leaves little black."""
    path = shared_data / "eyepacs/images/16_left.jpeg"
    raw = np.asarray(Image.open(path), np.float32).mean(-1) / 255
    x = preprocess_transforms("efi", image_size=64)({"image": str(path)})["image"]
    assert (raw < 0.04).mean() > 0.25
    assert float((x.mean(0) < 0.04).float().mean()) < 0.1


def test_real_chest_xray_upright(shared_data):
    """A real film comes out as PIL shows it (upright), not transposed."""
    path = shared_data / "chestxray14/images/00000001_000.png"
    grey = preprocess_transforms("cxr", image_size=64)({"image": str(path)})["image"][0]
    pil = np.asarray(Image.open(path).resize((64, 64), Image.BILINEAR), np.float32)
    pil = (pil - pil.min()) / (pil.max() - pil.min())
    assert np.corrcoef(grey.numpy().ravel(), pil.ravel())[0, 1] > 0.98  # same picture as PIL shows it
    assert np.corrcoef(grey.numpy().T.ravel(), pil.ravel())[0, 1] < 0.9  # and not its transpose


# --- augmentation geometry -----------------------------------------------------------------------------

def test_tail_geometry():
    """tail_numbers + apply_tail: identity, shift right, zoom about the centre, a quarter turn
    clockwise, flips; rotations keep the distance to the centre."""
    from transforms import apply_tail, tail_numbers
    x = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    x[0, 0, 8, 20] = 255  # 7.5 px above and 4.5 px right of the centre (15.5, 15.5)

    def where(**kwargs):
        y = unnormalise(apply_tail(x, tail_numbers(**kwargs)[None])[0])
        return divmod(int(y[0].argmax()), 32)

    assert torch.equal(unnormalise(apply_tail(x, tail_numbers()[None])[0]).mul(255).round().byte(),
                       x[0].expand(3, -1, -1))
    assert where(shift=(0.25, 0.0)) == (8, 28)  # 0.25 x 32 px right
    assert where(zoom=(2.0, 2.0)) == (0, 24)  # offsets from the centre doubled
    assert where(angle=math.pi / 2) == (20, 23)  # up-right of the centre -> down-right
    assert where(flips=(-1.0, 1.0)) == (8, 11) and where(flips=(1.0, -1.0)) == (23, 20)
    row, col = where(angle=0.3)
    assert math.hypot(row - 15.5, col - 15.5) == pytest.approx(math.hypot(7.5, 4.5), abs=0.75)  # nearest pixel
    assert (row, col) != (8, 20)


def test_tail_jitter_and_affine_grid():
    """Brightness multiplies, contrast scales about the mean, the result is clipped to [0, 1];
    affine_grid equals torch's."""
    import torch.nn.functional as F

    from transforms import affine_grid, apply_tail, tail_numbers
    x = torch.tensor([[[[50, 100], [150, 200]]]], dtype=torch.uint8)
    unit = x.float() / 255
    y = unnormalise(apply_tail(x, tail_numbers(brightness=1.1)[None])[0])[0]
    torch.testing.assert_close(y, unit[0, 0] * 1.1)
    y = unnormalise(apply_tail(x, tail_numbers(contrast=0.5)[None])[0])[0]
    torch.testing.assert_close(y, (unit[0, 0] - unit.mean()) * 0.5 + unit.mean())
    y = unnormalise(apply_tail(x, tail_numbers(brightness=2.0)[None])[0])[0]
    assert float(y.max()) == pytest.approx(1.0) and float(y.min()) == pytest.approx(100 / 255)
    theta = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(affine_grid(theta, 9), F.affine_grid(theta, (4, 1, 9, 9), align_corners=False))


@pytest.mark.parametrize("domain", DOMAINS)
def test_tail_draws(domain):
    """RandTaild's draws follow the documented probabilities and ranges (2,000 draws)."""
    from transforms import CXR_AFFINE_PROB, IDENTITY_TAIL, JITTER_PROB, RandTaild
    t = RandTaild(keys="image", domain=domain, image_size=S, train=True)
    t.set_random_state(seed=0)
    tails = torch.stack([t.randomize() for _ in range(2000)])
    moved = (tails[:, :6] != torch.tensor(IDENTITY_TAIL[:6])).any(1).float().mean()
    linear = tails[:, [0, 1, 3, 4]]
    if domain == "cxr":
        assert abs(float(moved) - CXR_AFFINE_PROB) < 0.03
        assert torch.equal(tails[:, 6:], torch.ones(2000, 2))  # no intensity jitter on films
        det = tails[:, 0] * tails[:, 4] - tails[:, 1] * tails[:, 3]
        assert float(det.min()) > 1 / 1.1 ** 2 - 1e-4 and float(det.max()) < 1 / 0.9 ** 2 + 1e-4  # no flips
    else:
        jittered = (tails[:, 6] != 1).float().mean(), (tails[:, 7] != 1).float().mean()
        assert all(abs(float(j) - JITTER_PROB) < 0.04 for j in jittered)
        assert float((tails[:, 6:] - 1).abs().max()) <= 0.1 + 1e-6
        assert torch.equal(tails[:, [2, 5]], torch.zeros(2000, 2))  # about the centre
        if domain == "hwsi":  # flips and quarter turns only: entries 0 or +-1; 1/8 identity
            assert set(linear.abs().unique().tolist()) <= {0.0, 1.0}
            assert abs(float(moved) - 7 / 8) < 0.03
        else:
            assert len(linear.unique()) > 1000  # any angle


def test_tail_crop_and_channels():
    """hwsi: a random square in training, the centre one in evaluation; channels=3 repeats grey."""
    from transforms import RandTaild
    picture = torch.arange(S * (S + 20), dtype=torch.int64).remainder(251).to(torch.uint8).view(1, S, S + 20)
    train = RandTaild(keys="image", domain="hwsi", image_size=S, train=True, channels=3)
    lefts = set()
    for seed in range(20):
        train.set_random_state(seed=seed)
        out = train({"image": picture})["image"]
        assert out.shape == (3, S, S) and torch.equal(out[0], out[2])
        lefts.add(int(torch.nonzero(picture[0, 0] == out[0, 0, 0])[0]))
    assert len(lefts) > 5
    centre = RandTaild(keys="image", domain="hwsi", image_size=S, train=False)({"image": picture})
    assert torch.equal(centre["image"], picture[:, :, 10:10 + S])
    assert centre["tail"].tolist() == [1, 0, 0, 0, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="uint8"):
        train({"image": picture.float()})


@pytest.mark.parametrize("pixels,words", [
    (np.full((1, 1, 3), 128, np.uint8), "1x1 px"),
    (np.full((4, 30, 3), 128, np.uint8), "4x30 px"),
    (np.full((40, 40, 3), 77, np.uint8), "every pixel has the same value"),
])
@pytest.mark.parametrize("domain", ["cxr", "hwsi", "efi"])
def test_tiny_and_constant_images_are_refused(tmp_path, pixels, words, domain):
    import transforms
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    with pytest.raises(ValueError, match=words):
        transforms.eval_transforms(domain, image_size=32)({"image": str(path)})


# --- the eval chain in stock MONAI (the exported bundle's preprocessing) ---------------------------------

SAME = 1e-5  # normalised units: float rounding only (one 8-bit rounding step apart is 1 / 255 / 0.229 = 0.017)


def stock_inputs(domain, folder):
    """Files of every kind a model of `domain` takes: noise pictures (many distinct values, so that
    any difference in arithmetic moves some pixel's 8-bit rounding), in the formats and modes it reads."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    files = []

    def add(name, array, **kwargs):
        path = folder / name
        if name.endswith(".tif"):
            tifffile.imwrite(path, array, **kwargs)
        else:
            Image.fromarray(array, **kwargs).save(path, **({"quality": 90} if name.endswith(".jpeg") else {}))
        files.append(str(path))

    if domain == "cxr":
        grey = rng.integers(20, 240, (45, 70), dtype=np.uint8)
        add("grey.png", grey)
        add("grey16.png", (grey.astype(np.uint16) * 16 + 7))  # 12-bit values in a 16-bit PNG
        add("grey_as_rgb.png", np.stack([grey] * 3, -1))  # as the COVID-19 Radiography files are stored
        add("tinted.png", np.clip(np.stack([grey, grey + 3, grey - 2], -1), 0, 255).astype(np.uint8))
        add("rgba.png", np.concatenate([np.stack([grey] * 3, -1), np.full((45, 70, 1), 90, np.uint8)], -1))
        add("portrait.jpeg", rng.integers(0, 256, (70, 45), dtype=np.uint8))
        add("grey.tif", grey.T.copy())
        add("palette.png", np.stack([grey, grey // 2, 255 - grey], -1))
        Image.open(files[-1]).quantize(64).save(files[-1])
        path = folder / "unwindowed.dcm"
        write_dicom(path, rng.integers(0, 4096, (50, 40)), slope=2.0, intercept=-1024.0)
        nib.save(nib.Nifti1Image(rng.normal(0, 300, (50, 40)).astype(np.float32), np.eye(4)), folder / "x.nii.gz")
        files += [str(path), str(folder / "x.nii.gz")]
    elif domain in ("hwsi", "other"):
        add("rgb.png", rng.integers(0, 256, (46, 70, 3), dtype=np.uint8))
        add("portrait.tif", rng.integers(0, 256, (71, 47, 3), dtype=np.uint8), photometric="rgb")
        add("rgb.jpeg", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        add("rgba.png", rng.integers(0, 256, (46, 70, 4), dtype=np.uint8))
        add("grey.png", rng.integers(0, 256, (46, 70), dtype=np.uint8))
        add("rgb.bmp", rng.integers(0, 256, (46, 70, 3), dtype=np.uint8))
        add("palette.png", rng.integers(0, 256, (46, 70, 3), dtype=np.uint8))
        Image.open(files[-1]).quantize(64).save(files[-1])
        path = folder / "rgb.dcm"
        write_dicom(path, rng.integers(0, 256, (46, 70, 3)), rgb=True, modality="SM")
        files.append(str(path))
    else:  # efi: a disc on a noisy black background, clipped at the top and bottom, a bright speck outside
        rows, cols = np.mgrid[:90, :120]
        for i, name in enumerate(["eye.png", "eye.jpeg", "eye.tif"]):
            rgb = rng.integers(0, 8, (90, 120, 3)).astype(np.uint8)
            disc = (rows - 45) ** 2 + (cols - 60 - 5 * i) ** 2 <= 50 ** 2
            rgb[disc] = rng.integers(40, 230, (int(disc.sum()), 3))
            rgb[2, 3] = 255
            add(name, rgb, **({"photometric": "rgb"} if name.endswith(".tif") else {}))
    return files


@pytest.mark.parametrize("size", [S, 33, 64])
@pytest.mark.parametrize("domain", DOMAINS)
def test_the_stock_monai_chain_gives_the_kit_chain_numbers(domain, size, tmp_path):
    """transforms.stock_eval_transforms (the bundle's preprocessing) equals eval_transforms per pixel up to
    float rounding: no pixel's 8-bit rounding differs, at an even and an odd size, for every format read."""
    from transforms import stock_eval_transforms
    kit, stock = eval_transforms(domain, image_size=size), stock_eval_transforms(domain, image_size=size)
    for path in stock_inputs(domain, tmp_path):
        expected, got = kit({"image": path})["image"], stock({"image": path})["image"]
        assert got.shape == expected.shape == (3, size, size), path
        assert float((got.as_tensor() - expected).abs().max()) <= SAME, path


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_batched_tail_equals_the_stock_chain(domain, tmp_path):
    """Training and evaluation's fast path (loader_transforms per image, apply_tail per batch) against the
    stock MONAI chain per image."""
    from transforms import apply_tail, loader_transforms, stock_eval_transforms
    files = stock_inputs(domain, tmp_path)
    loader = loader_transforms(domain, image_size=S, train=False, channels=3)  # grey and colour in one batch
    items = [loader({"image": path}) for path in files]
    batch = apply_tail(torch.stack([i["image"] for i in items]), torch.stack([i["tail"] for i in items]))
    stock = stock_eval_transforms(domain, image_size=S)
    expected = torch.stack([stock({"image": path})["image"].as_tensor() for path in files])
    assert float((batch - expected).abs().max()) <= SAME


def test_the_stock_chain_is_monai_config_of_monai_transforms():
    """Every component is MONAI's (a transform of monai.transforms, a reader of monai.data) or PIL's
    convert; the config survives JSON; the only expressions are the three steps MONAI has no transform for."""
    import json

    import monai.data
    import monai.transforms

    from transforms import EYE_BOX_EXPRESSION, MIN_MAX_EXPRESSION, stock_eval_config

    def walk(item):
        if isinstance(item, dict):
            yield item
            for value in item.values():
                yield from walk(value)
        elif isinstance(item, list):
            for value in item:
                yield from walk(value)

    expressions = set()
    for domain in DOMAINS:
        config = stock_eval_config(domain, image_size=S)
        assert json.loads(json.dumps(config)) == config
        targets = {d["_target_"] for d in walk(config) if "_target_" in d}
        monai_transforms = {t for t in targets if isinstance(getattr(monai.transforms, t, None), type)}
        assert targets - monai_transforms == {"PILReader", "PydicomReader", "PIL.Image.Image.convert"}
        assert all(hasattr(monai.data, name) for name in ("PILReader", "PydicomReader"))
        expressions |= {v for d in walk(config) for v in d.values() if isinstance(v, str) and v.startswith("$")}
    resize = {e for e in expressions if "interpolate" in e}
    assert expressions == {MIN_MAX_EXPRESSION, EYE_BOX_EXPRESSION, *resize} and len(resize) == 2  # square, shorter side


def test_the_stock_chain_reads_dicom_without_its_window(tmp_path):
    """What docs/clinical.md says: MONAI's PydicomReader applies the rescale but no VOI window and no
    MONOCHROME1 inversion; an unwindowed MONOCHROME2 file gives the kit's numbers."""
    from transforms import stock_eval_transforms
    stored = np.random.default_rng(3).integers(0, 4096, (40, 40))
    kit, stock = eval_transforms("cxr", image_size=S), stock_eval_transforms("cxr", image_size=S)
    for name, kwargs, same in [("plain.dcm", {}, True), ("windowed.dcm", {"window": (1000, 800)}, False),
                               ("monochrome1.dcm", {"photometric": "MONOCHROME1"}, False)]:
        write_dicom(tmp_path / name, stored, **kwargs)
        difference = float((stock({"image": str(tmp_path / name)})["image"].as_tensor()
                            - kit({"image": str(tmp_path / name)})["image"]).abs().max())
        assert (difference <= SAME) if same else (difference > 1.0), name


@pytest.mark.parametrize("size", [40, S])
def test_grey_stored_as_rgb_is_the_grey(size, tmp_path):
    """Luma as PIL computes it: R = G = B gives exactly the grey value, so a radiograph saved as RGB is
    cached pixel for pixel as the same radiograph saved grey, at its own size and resized."""
    from transforms import cache_transforms
    grey = np.random.default_rng(5).integers(0, 256, (40, 40), dtype=np.uint8)
    head = cache_transforms("cxr", image_size=size)
    assert torch.equal(head({"image": save_png(tmp_path / "grey.png", grey)})["image"],
                       head({"image": save_png(tmp_path / "rgb.png", np.stack([grey] * 3, -1))})["image"])


@pytest.mark.parametrize("name,domain", REAL)
def test_real_samples_through_the_stock_chain(shared_data, name, domain):
    from transforms import stock_eval_transforms
    path = str(shared_data / name)
    for size in (64, 224):
        expected = eval_transforms(domain, image_size=size)({"image": path})["image"]
        got = stock_eval_transforms(domain, image_size=size)({"image": path})["image"].as_tensor()
        assert float((got - expected).abs().max()) <= SAME, size
