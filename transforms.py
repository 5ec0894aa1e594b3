"""MONAI transform chains for the image domains of the study (paper Section 5.2), and one for any other.

Import this module into clinical code to feed a trained model exactly what it saw in
training; nothing here knows about argparse, manifests or checkpoints::

    from transforms import eval_transforms
    t = eval_transforms("cxr", image_size=224)
    x = t({"image": "scan.dcm"})["image"]     # torch.float32, (3, 224, 224), ImageNet-normalised
    logits = model(x[None])

Domains: "cxr" (chest X-ray), "hwsi" (histopathology), "efi" (eye fundus), and "other" (a
colour picture from another area, e.g. dermatology: no canonical orientation). Each chain is a
MONAI ``Compose`` of dictionary transforms that read and replace the key "image" (a file
path in, a tensor out); every other key (e.g. "label") passes through untouched. A chain
is a deterministic head, :func:`preprocess_transforms`, which MONAI's caching datasets can
store, rounded to uint8 as the preprocessing cache stores it, followed by a tail: random
augmentation (:func:`train_transforms`) or a centre crop (:func:`eval_transforms`), then
ImageNet normalisation, so that every arm of the study feeds the same 3-channel stem.

Head, in order:

1. ``LoadImaged`` picks the reader by suffix: PNG/JPEG/BMP/TIFF through PIL (for TIFF
   2.5x faster than ITK; a TIFF that PIL cannot read, e.g. multi-channel 16-bit, falls back
   to ITK), DICOM (``.dcm``, ``.dicom``, or any file with DICOM's ``DICM`` preamble) through
   pydicom (:class:`DicomReader`), NIfTI through nibabel. Pixels keep their stored dtype so that
   step 3 can tell 8-bit colour from 16-bit or float data.

   DICOM is shown as a radiologist's viewer shows it: the modality LUT (rescale slope and
   intercept, or a Modality LUT Sequence), then the first VOI transform (a VOI LUT Sequence,
   else the first Window Center / Window Width, honouring VOI LUT Function; none: the full
   range), then MONOCHROME1 inverted so that bone is white (Presentation LUT Shape, which in
   DX files restates the same inversion, is not applied twice). Colour DICOM (RGB, YBR_*,
   PALETTE COLOR) is read as RGB. A multi-frame file is refused (one 2-D image per file).
2. Picture order. MONAI's readers return (C, x, y), i.e. columns before rows (the
   transpose of PIL and torchvision); we transpose to (C, rows, cols) so that row 0 is the
   top of the picture. A single-slice volume (a NIfTI with z = 1) is squeezed to 2-D; a 3-D
   volume is refused, since no chain knows which slice to take. For NIfTI, the first array axis
   is x (columns), as in MONAI and ITK.
3. Channels and intensities, to float32 in [0, 1]. cxr: grey, RGB or RGBA becomes one grey
   channel (ITU-R 601 luma as PIL computes it), scaled per image by min-max so that 8-bit PNG,
   16-bit PNG and 12-bit DICOM all work (DICOM arrives windowed and with bone white, see step 1).
   hwsi/efi/other: alpha is dropped; 8-bit images are divided by 255; any other dtype (16-bit,
   float) is min-max scaled over all channels together, which keeps the colour balance (the
   stored dtype is the cheap test).
   NaN and +-inf pixels of a float image (no data) are set to its smallest finite value
   before scaling, i.e. black; an image without any finite pixel is an error.
4. Geometry (paper 5.2.1). cxr: resize to image_size x image_size. hwsi: resize the
   shorter side to image_size keeping the aspect ratio (BreakHis 700x460 -> 340x224); the
   tail takes a random (train) or centre (eval) image_size square. efi: crop to the
   bounding box of the eye (pixels brighter than a small threshold on the black
   background), resize the shorter side to image_size, centre crop image_size square. other:
   resize the shorter side to image_size, centre crop image_size square. Resizing is bilinear with antialiasing (area-like averaging when shrinking).
5. Grey images are repeated to 3 channels.

The head's output is float32 in [0, 1] with shape (3, H, W); train and eval chains return a
plain ``torch.Tensor`` of shape (3, image_size, image_size). All transforms are module-level
classes and functions, so the chains pickle into DataLoader workers.

Preprocessing cache and training (kit/cache.py, kit/loop.py): :func:`cache_transforms` is the head
up to step 4, rounded to uint8 (grey stays one channel). The tail is split in two so that the
loader does no per-image float work: :func:`loader_transforms` (head or cached pixels, a crop,
and RandTaild, which draws each image's augmentation as 8 numbers) runs per image in the
loader and ships uint8; :func:`apply_tail` warps, jitters and normalises the whole batch on
the training device. ``train_transforms`` and ``eval_transforms`` are the same two halves
applied to one image, so a model sees in clinical use exactly what it saw in training.

The same eval chain in stock MONAI transforms, for code that has MONAI but not this kit (the
exported MONAI bundle runs it): :func:`stock_eval_config` (a MONAI bundle config) and
:func:`stock_eval_transforms` (built); equal to eval_transforms within 1e-6, see docs/clinical.md.

Bad input: a file that cannot be read (missing, empty, truncated, not an image, a volume, no
finite pixel) or cannot be a picture to learn from (under 8 px a side, every pixel the same
value) raises one ``ValueError("<path>: <what is wrong>")``.
"""
import logging
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from monai.data import ImageReader, MetaTensor, PILReader
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    CropForegroundd,
    LoadImaged,
    MapTransform,
    Randomizable,
)
from monai.utils import convert_to_dst_type

DOMAINS = ("cxr", "hwsi", "efi", "other")
# Bump when the deterministic head (load, channels, eye crop, resize) changes what it outputs:
# preprocessing caches (kit/cache.py) store the head's output and are keyed on this number.
HEAD_VERSION = 4  # 2: tiny and constant images refused; 3: DICOM through pydicom, windowed (VOI LUT);
# 4: a colour-stored cxr image's luma computed as PIL computes it, so grey stored as RGB equals grey stored as grey
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, RGB, on [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601 luma in thousandths, (299 R + 587 G + 114 B) / 1000, computed as PIL's convert("F") computes it: the
# weighted sum is exact in float32 for 8-bit pixels and is divided once, so R = G = B gives exactly that value.
LUMA_PER_MILLE = (299.0, 587.0, 114.0)

# Eye crop (efi): a pixel is eye when its channel mean exceeds EYE_THRESHOLD (10/255 lies above
# JPEG noise on the black background); a row or column belongs to the eye box when at least
# EYE_MIN_FRACTION of it is eye, so stray bright pixels or burnt-in text do not widen the box.
PICTURE_STEPS = 2  # the head's first steps (read, axis order): the picture as stored, before any scaling, crop or resize
MIN_SIDE = 8  # px: a smaller image (a 1x1 placeholder, a broken thumbnail) is refused, not resized up
EYE_THRESHOLD = 10 / 255
EYE_MIN_FRACTION = 0.02

# Augmentation (train tails). Probabilities are per image; ranges are symmetric around 0.
CXR_AFFINE_PROB = 0.8
CXR_ROTATE_DEGREES = 7.0  # small: a chest film is roughly upright; no flips, the heart has a side
CXR_SCALE = 0.10  # zoom factor drawn from [0.9, 1.1] per axis
CXR_TRANSLATE = 0.05  # shift, fraction of image_size
FLIP_PROB = 0.5  # hwsi, efi, other, each axis: tissue and fundus have no canonical orientation
ROTATE90_PROB = 0.5  # hwsi: quarter turns, lossless
EFI_ROTATE_PROB = 0.5
EFI_ROTATE_DEGREES = 180.0  # the eye is a disc: any angle
JITTER_PROB = 0.5  # hwsi, efi, other, for brightness and for contrast separately
BRIGHTNESS = 0.1  # intensities multiplied by a factor in [0.9, 1.1]
CONTRAST = 0.1  # distance from the image mean multiplied by a factor in [0.9, 1.1]


def augmentation_record(domains, image_size):
    """The training augmentation of these domains (the random tail's settings above) as plain values, for a
    run's recipe record (kit/recipe.py)."""
    per_domain = {
        "cxr": {"affine_probability": CXR_AFFINE_PROB, "rotate_degrees": CXR_ROTATE_DEGREES, "zoom": CXR_SCALE,
                "shift": CXR_TRANSLATE, "flips": None},
        "hwsi": {"flip_probability": FLIP_PROB, "quarter_turn_probability": ROTATE90_PROB, "random_crop": True},
        "efi": {"flip_probability": FLIP_PROB, "rotate_probability": EFI_ROTATE_PROB,
                "rotate_degrees": EFI_ROTATE_DEGREES},
    }
    per_domain["other"] = per_domain["efi"]
    jitter = {"jitter_probability": JITTER_PROB, "brightness": BRIGHTNESS, "contrast": CONTRAST}
    return {"image_size": image_size, "head_version": HEAD_VERSION,
            **{domain: {**per_domain[domain], **(jitter if domain != "cxr" else {})} for domain in sorted(domains)
               if domain in per_domain}}


# --- building blocks (module level, so that chains pickle) ---------------------------------

def _file_name(img):
    """The file an image came from, for error messages."""
    return img.meta.get("filename_or_obj", "image") if isinstance(img, MetaTensor) else "image"


def _plain(img):
    """A plain torch.Tensor view of a (Meta)Tensor: per-op metadata copies cost time."""
    return img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)


def _min_max(x):
    """Scale a fresh float tensor to [0, 1], in place, by its own minimum and maximum (flat -> 0)."""
    low, high = torch.aminmax(x)
    return x.sub_(low).mul_(1.0 / (high - low)) if high > low else x.zero_()


def _fill_non_finite(x, name):
    """NaN and +-inf pixels (no data, e.g. outside a scanner's field of view) -> the image's
    smallest finite value, i.e. black after scaling, like the background they usually are.
    An image with no finite pixel at all is an error naming the file."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    if not bool(finite.any()):
        raise ValueError(f"{name}: no finite pixel values (all NaN or inf)")
    return x.masked_fill_(~finite, float(x[finite].min()))


def pil_standard_mode(image):
    """PILReader converter: palette, bilevel, CMYK, YCbCr... -> L, LA, RGB or RGBA.

    Afterwards the number of channels says what they are (1 grey, 2 grey+alpha, 3 RGB,
    4 RGBA); without it a palette PNG would load as palette indices.
    """
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "F") or mode.startswith("I"):
        return image
    if mode in ("P", "PA"):
        return image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB")


def eye_foreground(img):
    """CropForegroundd select_fn for fundus photographs: (C, H, W) in [0, 1] -> (1, H, W) bool.

    The mask is the box of rows and columns that hold enough eye pixels (see
    EYE_THRESHOLD, EYE_MIN_FRACTION); an image with no eye at all is kept whole.
    """
    eye = (_plain(img).mean(0) > EYE_THRESHOLD).float()
    rows = eye.mean(1) > EYE_MIN_FRACTION
    cols = eye.mean(0) > EYE_MIN_FRACTION
    if not (rows.any() and cols.any()):
        rows, cols = rows | True, cols | True
    return (rows[:, None] & cols[None, :])[None]


class PictureOrderd(MapTransform):
    """(C, x, y) as MONAI's readers return it -> (C, rows, cols), row 0 at the top.

    Trailing singleton spatial axes (a single-slice DICOM or NIfTI) are dropped first; a
    true volume is refused.
    """

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim < 3:
                raise ValueError(f"{_file_name(img)}: expected a 2-D image, got (channels, spatial) "
                                 f"shape {tuple(img.shape)}")
            if any(size != 1 for size in img.shape[3:]):
                spatial = " x ".join(str(size) for size in img.shape[1:])
                raise ValueError(f"{_file_name(img)}: expected a 2-D image, got a 3-D volume ({spatial} voxels); "
                                 "save the slice or projection you mean as a 2-D file")
            # copy in the stored dtype (1 byte a pixel for 8-bit): later float passes run contiguous
            d[key] = img.reshape(img.shape[:3]).transpose(1, 2).contiguous()
        return d


class UnitRanged(MapTransform):
    """Channels and intensities: -> float32 in [0, 1], 1 channel (grey=True) or 1 or 3.

    grey=True (cxr): RGB -> luma, then min-max per image.
    grey=False (hwsi, efi): alpha dropped; uint8 / 255, any other dtype min-max.
    """

    def __init__(self, keys, *, grey, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.grey = grey

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.to_unit(d[key])
        return d

    def to_unit(self, img):
        if min(img.shape[-2:]) < MIN_SIDE:  # e.g. a 1x1 placeholder: resizing would invent a picture
            raise ValueError(f"{_file_name(img)}: the image is {img.shape[-2]}x{img.shape[-1]} px; at least "
                             f"{MIN_SIDE} px a side is needed")
        channels = img.shape[0]
        if channels in (2, 4):
            img = img[: channels - 1]  # grey+alpha or RGBA: drop alpha
        elif channels not in (1, 3):
            raise ValueError(f"{_file_name(img)}: expected 1 (grey), 2 (grey+alpha), 3 (RGB) or "
                             f"4 (RGBA) channels, got {channels}")
        is_8bit = img.dtype == torch.uint8
        x = _plain(img).to(torch.float32, copy=True)
        if img.dtype.is_floating_point:  # float TIFF / NIfTI may mark missing pixels NaN or inf
            x = _fill_non_finite(x, _file_name(img))
        if x.amax() == x.amin():  # would become all zeros (grey) or one flat colour: a broken export, not a scan
            raise ValueError(f"{_file_name(img)}: every pixel has the same value ({x.flatten()[0].item():g}); a "
                             f"constant image holds nothing to learn or predict from")
        if self.grey:
            if x.shape[0] == 3:
                x = torch.einsum("chw,c->hw", x, x.new_tensor(LUMA_PER_MILLE)).div_(1000.0)[None]
            x = _min_max(x)
        elif is_8bit:
            x = x.div_(255.0)  # within [0, 1] by construction, no clipping needed
        else:
            x = _min_max(x)
        return convert_to_dst_type(x, dst=img, dtype=torch.float32)[0]


class ResizeAntialiasd(MapTransform):
    """Bilinear resize with antialiasing, to size x size or with the shorter side = size.

    The shorter-side rule is torchvision's (longer side = int(size * long / short)), so
    BreakHis 700x460 becomes 340x224 as in the paper.
    """

    def __init__(self, keys, size, *, shorter_side=False, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.size = size
        self.shorter_side = shorter_side

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            height, width = img.shape[-2:]
            if not self.shorter_side:
                new = (self.size, self.size)
            elif height <= width:
                new = (self.size, int(self.size * width / height))
            else:
                new = (int(self.size * height / width), self.size)
            if new != (height, width):
                x = _plain(img)[None].to(torch.float32)
                x = F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False)[0]
                img = convert_to_dst_type(x, dst=img, dtype=torch.float32)[0]
            d[key] = img
        return d


class Chain(Compose):
    """MONAI's Compose, except that a bad input file surfaces as the one-line ValueError naming
    it (raised by LoadPictured, PictureOrderd, UnitRanged...), not wrapped in MONAI's
    RuntimeError("applying transform ...")."""

    def __call__(self, input_, *args, **kwargs):
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as err:
            cause = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            path = input_.get("image") if isinstance(input_, dict) else None
            if isinstance(cause, ValueError) and isinstance(path, str) and path in str(cause):
                raise cause from None
            raise


class LoadPictured(LoadImaged):
    """LoadImaged whose failures (missing, empty, truncated or undecodable file) become one
    ValueError naming the file and the reader's reason, instead of a reader-specific error."""

    def __call__(self, data, reader=None):
        try:
            return super().__call__(data, reader)
        except Exception as err:
            path = next((str(data[key]) for key in self.key_iterator(data)), "image")
            raise ValueError(read_error(path, err)) from None


def read_error(path, err):
    """One line naming the image file and why it could not be read. MONAI wraps a reader's
    error in RuntimeError("applying transform ..."): the innermost cause explains; a message
    that already names the file (e.g. PictureOrderd's checks) is kept as it is."""
    while err.__cause__ is not None:
        err = err.__cause__
    reason = str(err).splitlines()[0] if str(err) else "no details"
    if reason.startswith(path):
        return reason
    # an OS error with an errno is about the file (missing, no permission); any other is about its bytes
    kind = "" if isinstance(err, OSError) and err.errno else "truncated or corrupt image; "
    return f"{path}: cannot read the image ({kind}{type(err).__name__}: {reason})"


class ToUint8d(MapTransform):
    """[0, 1] float -> uint8 plain tensor (round to nearest): the head's output as cached on disk."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _plain(d[key]).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return d


# --- the random tail, split in two: draws in the loader, pixel work batched on the device ----
#
# Every augmentation of the study is an affine map of the picture (cxr: rotation, zoom, shift;
# hwsi: flips, quarter turns; efi and other: flips, any rotation) followed, except for cxr, by a
# brightness and a contrast factor. So an image's whole random tail is 8 numbers, drawn per
# image in the loader (RandTaild, a MONAI Randomizable: seeded like any MONAI transform), and
# the pixel work is one grid_sample and one multiply-add for the whole batch (apply_tail), on
# the training device. The loader then ships uint8 pixels (cxr 224 px: 50 KB an image instead of
# 600 KB of float32 RGB) and does no per-image float work, which is what lets a cached loader on
# a few cores keep up with a GPU (bench/bench_loader.py).

TAIL_KEY = "tail"
IDENTITY_TAIL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0)  # theta (2 x 3), brightness, contrast


def _rotation(angle):
    """2 x 2 map of output to input coordinates (x right, y down) for a picture turned by `angle`;
    quarter turns are exact (0 and +-1, so grid_sample lands on pixel centres)."""
    quarter = angle / (math.pi / 2)
    if quarter == round(quarter):
        cos, sin = [(1, 0), (0, 1), (-1, 0), (0, -1)][round(quarter) % 4]
    else:
        cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[cos, sin], [-sin, cos]], dtype=np.float64)


def tail_numbers(*, angle=0.0, zoom=(1.0, 1.0), shift=(0.0, 0.0), flips=(1.0, 1.0), brightness=1.0,
                 contrast=1.0):
    """An image's tail as the 8 numbers apply_tail takes, float32: the picture is flipped
    (flips = (x, y) signs), turned by `angle` (radians, clockwise on screen), zoomed by `zoom`
    (x, y) about its centre and moved by `shift` (x, y; fractions of the side, right and down);
    then intensities x -> x * brightness, contrast about the mean. Default: IDENTITY_TAIL."""
    flips, zoom = np.asarray(flips, dtype=np.float64), np.asarray(zoom, dtype=np.float64)
    linear = flips[:, None] * _rotation(angle) / zoom[:, None]
    offset = -linear @ (2 * np.asarray(shift, dtype=np.float64))  # normalised coordinates: the side spans 2
    theta = np.concatenate([linear, offset[:, None]], axis=1).ravel()
    return torch.tensor([*theta, brightness, contrast], dtype=torch.float32)


class RandTaild(MapTransform, Randomizable):
    """The loader's half of the tail: uint8 (C, H, W) in (numpy or tensor), uint8 (C', S, S) out
    with S = image_size, and this image's augmentation drawn as ``data["tail"]``, float32 (8,):
    theta (2 x 3, output -> input in grid_sample's normalised coordinates, row-major), brightness
    factor, contrast factor. :func:`apply_tail` does the pixel work.

    Crop: hwsi takes a random (train) or centre (eval) S x S square out of its shorter-side-S
    picture (paper 5.2.1); cxr and efi already are S x S. `channels=3` repeats a grey image to 3
    channels (a dataset whose batches mix grey and colour images); None keeps what came in.

    Draws (train=True; eval draws nothing and gives IDENTITY_TAIL):

    * cxr, with probability CXR_AFFINE_PROB: rotation in +-CXR_ROTATE_DEGREES, zoom per axis in
      1 +- CXR_SCALE, shift per axis up to +-CXR_TRANSLATE of the side. No flips: the heart has a side.
    * hwsi: flip each axis with FLIP_PROB; with ROTATE90_PROB a quarter turn by 1, 2 or 3.
    * efi and other: flip each axis with FLIP_PROB; with EFI_ROTATE_PROB a rotation by any angle
      in +-EFI_ROTATE_DEGREES.
    * hwsi, efi and other, each with JITTER_PROB: brightness (x * b) and contrast about the image mean,
      factors in 1 +- BRIGHTNESS, 1 +- CONTRAST, then clipped to [0, 1].
    """

    def __init__(self, keys, *, domain, image_size, train, channels=None, allow_missing_keys=False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.domain, self.image_size, self.train, self.channels = domain, image_size, train, channels

    def randomize(self, data=None):
        """This image's 8 tail numbers (see tail_numbers), drawn from self.R."""
        R = self.R
        if self.domain == "cxr":
            if R.rand() >= CXR_AFFINE_PROB:
                return tail_numbers()
            angle = math.radians(R.uniform(-CXR_ROTATE_DEGREES, CXR_ROTATE_DEGREES))
            zoom = R.uniform(1 - CXR_SCALE, 1 + CXR_SCALE, size=2)
            shift = R.uniform(-CXR_TRANSLATE, CXR_TRANSLATE, size=2)
            return tail_numbers(angle=angle, zoom=zoom, shift=shift)
        flips = np.where(R.rand(2) < FLIP_PROB, -1.0, 1.0)
        angle = 0.0
        if self.domain == "hwsi" and R.rand() < ROTATE90_PROB:
            angle = (R.randint(3) + 1) * math.pi / 2
        elif self.domain in ("efi", "other") and R.rand() < EFI_ROTATE_PROB:
            angle = math.radians(R.uniform(-EFI_ROTATE_DEGREES, EFI_ROTATE_DEGREES))
        brightness = 1 + R.uniform(-BRIGHTNESS, BRIGHTNESS) if R.rand() < JITTER_PROB else 1.0
        contrast = 1 + R.uniform(-CONTRAST, CONTRAST) if R.rand() < JITTER_PROB else 1.0
        return tail_numbers(angle=angle, flips=flips, brightness=brightness, contrast=contrast)

    def __call__(self, data):
        d = dict(data)
        size = self.image_size
        for key in self.key_iterator(d):
            img = d[key]
            x = torch.from_numpy(img) if isinstance(img, np.ndarray) else _plain(img)
            if x.dtype != torch.uint8 or x.ndim != 3 or min(x.shape[1:]) < size:
                raise ValueError(f"{_file_name(img)}: the tail takes uint8 (C, H, W) with H, W >= {size}, got "
                                 f"{x.dtype} {tuple(x.shape)}")
            height, width = x.shape[1:]
            if self.train:
                top, left = self.R.randint(height - size + 1), self.R.randint(width - size + 1)
            else:
                top, left = height // 2 - size // 2, width // 2 - size // 2  # MONAI's CenterSpatialCrop centre
            x = x[:, top:top + size, left:left + size]
            if self.channels == 3 and x.shape[0] == 1:
                x = x.expand(3, -1, -1)
            d[key] = x
            d[TAIL_KEY] = self.randomize() if self.train else torch.tensor(IDENTITY_TAIL)
        return d


_STATISTICS = {}  # device -> (mean, 1 / std), (1, 3, 1, 1) each


def _imagenet_statistics(device):
    if device not in _STATISTICS:
        _STATISTICS[device] = (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
                               1 / torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))
    return _STATISTICS[device]


def affine_grid(theta, size):
    """F.affine_grid(theta, (B, 1, size, size), align_corners=False), built from broadcast sums
    of the pixel-centre coordinates: on a CPU a fifth of the time of the batched matrix product."""
    centres = (torch.arange(size, device=theta.device, dtype=torch.float32) * 2 + 1) / size - 1
    planes = torch.empty(2, len(theta), size, size, device=theta.device)
    for axis in (0, 1):  # source x, source y
        a, b, c = (theta[:, axis, j].view(-1, 1, 1) for j in range(3))
        torch.add(a * centres.view(1, 1, -1), b * centres.view(1, -1, 1), out=planes[axis]).add_(c)
    return planes.permute(1, 2, 3, 0)  # (B, size, size, 2), a view: grid_sample reads it strided


def apply_tail(images, tails, *, memory_format=torch.contiguous_format):
    """The device's half of the tail, for a batch: uint8 (B, C, S, S) images on the training
    device and their (B, 8) tails from RandTaild, on the CPU -> float32 (B, 3, S, S),
    augmented and ImageNet-normalised, in `memory_format`. C = 1 is broadcast to 3.

    The warp is one bilinear grid_sample (zeros outside) for the batch, skipped when no image
    of the batch moves (evaluation). Brightness and contrast, x * b * c + mean(x * b) * (1 - c),
    then the clip to [0, 1], run when some image draws them. Apart from copying the tails
    (pinned by the loader, so asynchronous), nothing waits for the device.
    """
    tails = torch.as_tensor(tails, dtype=torch.float32)
    if tails.device.type != "cpu" or tails.shape != (len(images), 8):
        raise ValueError(f"apply_tail: expected CPU tails of shape ({len(images)}, 8), got {tuple(tails.shape)} "
                         f"on {tails.device}")
    device, size = images.device, images.shape[-1]
    x = images.to(torch.float32).mul_(1 / 255)
    identity = torch.tensor(IDENTITY_TAIL)
    warp = bool((tails[:, :6] != identity[:6]).any())
    jitter = bool((tails[:, 6:] != 1).any())
    if warp or jitter:
        on_device = tails.to(device, non_blocking=True)
    if warp:
        grid = affine_grid(on_device[:, :6].view(-1, 2, 3), size)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if jitter:
        brightness, contrast = (on_device[:, j].view(-1, 1, 1, 1) for j in (6, 7))
        mean = x.mean(dim=(1, 2, 3), keepdim=True) * brightness
        x = torch.addcmul(mean * (1 - contrast), x, brightness * contrast).clamp_(0, 1)
    mean, inv_std = _imagenet_statistics(device)
    out = torch.empty((len(x), 3, size, size), device=device, memory_format=memory_format)
    return torch.sub(x, mean, out=out).mul_(inv_std)


class ApplyTaild(MapTransform):
    """apply_tail on one image: the key's uint8 (C, S, S) and data["tail"] (removed) -> float32
    (3, S, S). Per image, for clinical code and tests; training batches it (kit/loop.py run_epoch)."""

    def __call__(self, data):
        d = dict(data)
        tail = torch.as_tensor(d.pop(TAIL_KEY))
        for key in self.key_iterator(d):
            d[key] = apply_tail(_plain(d[key])[None], tail[None])[0]
        return d


class ThreeChannelsd(MapTransform):
    """Repeat a grey channel to 3 so every domain feeds the same RGB stem."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].shape[0] == 1:
                d[key] = d[key].repeat(3, 1, 1)
        return d


class PictureReader(PILReader):
    """MONAI's PIL reader, also for the TIFF files PIL can decode (8-bit tiles: Kather,
    Messidor; 2.5x faster than ITK). A TIFF that PIL cannot identify (e.g. multi-channel
    float) is left to the next reader, ITK: MONAI picks the reader by verify_suffix alone."""

    def verify_suffix(self, filename):
        names = filename if isinstance(filename, (list, tuple)) else [filename]
        if names and all(str(name).lower().endswith((".tif", ".tiff")) for name in names):
            try:
                for name in names:
                    with Image.open(name):  # reads the header only
                        pass
            except Exception:
                return False
            return True
        return super().verify_suffix(filename)


DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_OTHER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz", ".gz")


def is_dicom(path):
    """Whether a file is DICOM: a DICOM suffix, or (no other image suffix) DICOM's ``DICM``
    preamble at byte 128, as in the suffix-less files of a series folder (IM0001, ...)."""
    name = str(path).lower()
    if name.endswith(DICOM_SUFFIXES):
        return True
    if name.endswith(_OTHER_SUFFIXES):
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_pixels(ds, name="image"):
    """A pydicom Dataset's picture as a viewer shows it: grey -> float32 (rows, cols) after the
    modality LUT, the first VOI transform and MONOCHROME1 inversion; colour -> (rows, cols, 3)
    RGB in the stored dtype. Raises ValueError("<name>: ...") for what is no single 2-D picture."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{name}: a multi-frame DICOM ({frames} frames, e.g. a cine loop or a tomosynthesis "
                         "stack); the chains take one 2-D image per file")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    try:
        pixels = ds.pixel_array  # pydicom converts YBR_* to RGB
    except Exception as err:  # no decoder for the transfer syntax, truncated pixel data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = f" (transfer syntax {syntax.name}: pydicom needs a decoder plugin such as pylibjpeg or " \
               "python-gdcm)" if syntax is not None and syntax.is_compressed else ""
        raise ValueError(f"{name}: cannot decode the DICOM pixel data{hint}: {str(err).splitlines()[0]}") from None
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.ndim != 2:
            raise ValueError(f"{name}: grey DICOM with pixel array shape {pixels.shape}; expected rows x columns")
        grey = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float32)
        return -grey if photometric == "MONOCHROME1" else grey  # the head scales min-max: bone white
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    elif not (photometric == "RGB" or photometric.startswith("YBR")):
        raise ValueError(f"{name}: DICOM photometric interpretation {photometric or 'missing'} is not supported "
                         "(MONOCHROME1, MONOCHROME2, RGB, YBR_*, PALETTE COLOR are)")
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"{name}: colour DICOM with pixel array shape {pixels.shape}; expected rows x columns x 3")
    return pixels


class DicomReader(ImageReader):
    """MONAI reader for one DICOM file through pydicom, windowed as a viewer shows it (see
    :func:`dicom_pixels`); registered before ITK, so training and prediction read DICOM alike.
    Returns MONAI's (x, y[, C]) layout, like the other readers."""

    def verify_suffix(self, filename):
        names = filename if isinstance(filename, (list, tuple)) else [filename]
        return len(names) == 1 and is_dicom(names[0])

    def read(self, data, **kwargs):
        import pydicom

        name = str(data[0] if isinstance(data, (list, tuple)) else data)
        return name, pydicom.dcmread(name)

    def get_data(self, img):
        name, ds = img
        pixels = np.swapaxes(dicom_pixels(ds, name), 0, 1)  # (rows, cols[, 3]) -> MONAI's (x, y[, 3])
        colour = pixels.ndim == 3
        meta = {"spatial_shape": np.asarray(pixels.shape[:2]), "original_channel_dim": -1 if colour else float("nan"),
                "modality": str(ds.get("Modality", ""))}
        return np.ascontiguousarray(pixels), meta


def _check(domain, image_size):
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}: expected one of {', '.join(DOMAINS)}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")


def _head(domain, image_size):
    """The deterministic transforms of :func:`preprocess_transforms` up to, not including, the
    grey -> 3 channel repeat (the cache stores grey images as one channel), as a list."""
    # MONAI builds every reader; the absence of the optional GPU DICOM codec is harmless, so
    # neither its warning nor its log line should greet every run.
    codec_logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = codec_logger.level
    codec_logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
        load = LoadPictured(keys="image", image_only=True, ensure_channel_first=True, dtype=None)
    codec_logger.setLevel(level)
    load.register(DicomReader())  # before ITK: DICOM windowed as a viewer shows it
    load.register(PictureReader(converter=pil_standard_mode))  # tried first for PNG, JPEG, BMP, TIFF
    head = [load, PictureOrderd(keys="image"), UnitRanged(keys="image", grey=domain == "cxr")]
    if domain == "cxr":
        head.append(ResizeAntialiasd(keys="image", size=image_size))
    elif domain == "hwsi":
        head.append(ResizeAntialiasd(keys="image", size=image_size, shorter_side=True))
    elif domain == "other":  # a colour picture with no known layout: the shorter side, then the centre square
        head += [ResizeAntialiasd(keys="image", size=image_size, shorter_side=True),
                 CenterSpatialCropd(keys="image", roi_size=(image_size, image_size))]
    else:  # efi: paper 5.2.1, "center cropped to extract eye area"
        head += [
            CropForegroundd(keys="image", source_key="image", select_fn=eye_foreground,
                            allow_smaller=True, start_coord_key=None, end_coord_key=None),
            ResizeAntialiasd(keys="image", size=image_size, shorter_side=True),
            CenterSpatialCropd(keys="image", roi_size=(image_size, image_size)),
        ]
    return head


def picture_reader():
    """File path -> {"image": (C, H, W) in the file's own values and dtype}: the first steps of every chain
    (read with the kit's readers, DICOM windowed, MONAI's axis order undone), before any scaling, crop or
    resize. kit/overlap.py makes its thumbnails from it."""
    return Chain(_head("hwsi", MIN_SIDE)[:PICTURE_STEPS])


def _loader_chain(domain, image_size, cached, train, channels):
    """Head (from a file) or nothing (from cached uint8 pixels), then the loader's half of the tail."""
    start = [] if cached else _head(domain, image_size) + [ToUint8d(keys="image")]
    return start + [RandTaild(keys="image", domain=domain, image_size=image_size, train=train, channels=channels)]


# --- public chains --------------------------------------------------------------------------

def preprocess_transforms(domain, *, image_size=224):
    """Deterministic head: file path -> float32 (3, H, W) in [0, 1]; cacheable.

    cxr and efi give H = W = image_size; hwsi gives the shorter side = image_size.
    """
    _check(domain, image_size)
    return Chain(_head(domain, image_size) + [ThreeChannelsd(keys="image")])


def cache_transforms(domain, *, image_size=224):
    """The head as a preprocessing cache stores it: file path -> uint8 (C, H, W), C = 1 for a
    grey image (every cxr image), else 3. Equals ``preprocess_transforms`` rounded to 1/255,
    before the grey -> 3 channel repeat. Feed its output to ``train_transforms(...,
    cached=True)``, ``eval_transforms(..., cached=True)`` or ``loader_transforms(...,
    cached=True)``."""
    _check(domain, image_size)
    return Chain(_head(domain, image_size) + [ToUint8d(keys="image")])


def loader_transforms(domain, *, image_size=224, train, cached=False, channels=None):
    """What a training loader runs per image: head rounded to uint8 (or, cached=True, the
    cached uint8 pixels) and RandTaild -> {"image": uint8 (C, image_size, image_size), "tail":
    float32 (8,)}. The batch then goes through :func:`apply_tail` on the training device;
    together they equal ``train_transforms`` (train=True) or ``eval_transforms``."""
    _check(domain, image_size)
    return Chain(_loader_chain(domain, image_size, cached, train, channels))


def train_transforms(domain, *, image_size=224, cached=False):
    """Head + random augmentation + ImageNet normalisation -> float32 (3, image_size, image_size).

    The head's output is rounded to uint8 (as the preprocessing cache stores it), then
    RandTaild draws the augmentation and ApplyTaild applies it: per image, the same arithmetic
    as training's batched path (loader_transforms + apply_tail). cached=True: the chain starts
    from the uint8 output of :func:`cache_transforms` instead of a file path.
    """
    _check(domain, image_size)
    return Chain(_loader_chain(domain, image_size, cached, True, None) + [ApplyTaild(keys="image")])


def eval_transforms(domain, *, image_size=224, cached=False):
    """Head rounded to uint8 + centre crop (hwsi) + ImageNet normalisation -> float32 (3,
    image_size, image_size): what evaluation feeds the model.

    cached=True: starts from the uint8 output of :func:`cache_transforms` (see train_transforms).
    """
    _check(domain, image_size)
    return Chain(_loader_chain(domain, image_size, cached, False, None) + [ApplyTaild(keys="image")])


# --- the eval chain in stock MONAI (the exported bundle's preprocessing) --------------------------
#
# The numbers of eval_transforms from transforms that ship with MONAI, written in the config syntax of
# a MONAI bundle: export.py puts the list into the bundle's inference.json, and code that has MONAI
# but not this kit runs it with monai.bundle.ConfigParser. Three steps are one-line torch expressions
# (MONAI's config "$" syntax) because no MONAI transform computes what the kit computes:
# * the min-max scaling (cxr): MONAI's ScaleIntensityd divides by (max - min), the kit multiplies by
#   its reciprocal; the two differ in the last bit, which moves the 8-bit rounding of about one pixel
#   in 10,000;
# * the antialiased resize: MONAI's Resized(anti_aliasing=True) blurs with a Gaussian and then samples
#   bilinearly; the kit's resize is torch's antialiased bilinear (PIL's triangle filter);
# * the eye box (efi): CropForegroundd's own selection keeps every pixel above a threshold; the kit's
#   box holds the rows and columns that are at least EYE_MIN_FRACTION eye.
# What each costs, and what the chain does not do as the kit does (DICOM windows, refusals):
# docs/clinical.md; bench/bench_stock_chain.py measures it on your images.

def _resize_expression(size, shorter_side):
    """ResizeAntialiasd as a torch expression on a (C, H, W) image."""
    if shorter_side:  # torchvision's rule, as ResizeAntialiasd
        new = (f"[{size}, int({size} * x.shape[2] / x.shape[1])] if x.shape[1] <= x.shape[2] "
               f"else [int({size} * x.shape[1] / x.shape[2]), {size}]")
    else:
        new = f"[{size}, {size}]"
    return (f"$lambda x: torch.nn.functional.interpolate(x[None], size={new}, mode='bilinear', antialias=True, "
            "align_corners=False)[0]")


MIN_MAX_EXPRESSION = "$lambda x: (x - x.min()) * (1.0 / (x.max() - x.min()))"  # _min_max's arithmetic
EYE_BOX_EXPRESSION = (  # eye_foreground: the box of rows and columns that are enough eye; no eye: all
    f"$lambda x: (lambda eye: (lambda box: box | ~box.any())((eye.mean(2, keepdim=True) > {EYE_MIN_FRACTION!r}) "
    f"& (eye.mean(1, keepdim=True) > {EYE_MIN_FRACTION!r})))((x.mean(0, keepdim=True) > {EYE_THRESHOLD!r}).float())")


def stock_eval_config(domain, *, image_size=224):
    """The eval chain as a list of MONAI bundle config items (JSON-able; each ``{"_target_": ...}`` a
    transform of monai.transforms): a file path in "image" -> float32 (3, image_size, image_size),
    ImageNet-normalised, equal to :func:`eval_transforms` within 1e-6 for the inputs that
    docs/clinical.md lists. :func:`stock_eval_transforms` builds it."""
    _check(domain, image_size)
    size, grey = image_size, domain == "cxr"
    converter = {"_target_": "PIL.Image.Image.convert", "_mode_": "callable", "mode": "F" if grey else "RGB"}
    dicom = {"_target_": "PydicomReader"} if grey else {"_target_": "PydicomReader", "channel_dim": -1}  # RGB last
    chain = [
        # PIL first (any picture PIL decodes, TIFF included; grey: luma as float, colour: RGB without alpha),
        # then pydicom (2-D DICOM, rescale slope and intercept), then MONAI's default readers (NIfTI, ...)
        {"_target_": "LoadImaged", "keys": "image", "image_only": True, "ensure_channel_first": True,
         "reader": [dicom, {"_target_": "PILReader", "converter": converter}]},
        {"_target_": "Transposed", "keys": "image", "indices": [0, 2, 1]},  # MONAI's (C, x, y) -> (C, rows, cols)
        {"_target_": "Lambdad", "keys": "image", "func": MIN_MAX_EXPRESSION} if grey else
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0.0, "a_max": 255.0, "b_min": 0.0, "b_max": 1.0},
    ]
    if domain == "efi":
        chain.append({"_target_": "CropForegroundd", "keys": "image", "source_key": "image",
                      "select_fn": EYE_BOX_EXPRESSION, "allow_smaller": True, "start_coord_key": None,
                      "end_coord_key": None})
    chain.append({"_target_": "Lambdad", "keys": "image", "func": _resize_expression(size, shorter_side=not grey)})
    if not grey:
        chain.append({"_target_": "CenterSpatialCropd", "keys": "image", "roi_size": [size, size]})
    chain += [  # rounded to 8 bits, as the preprocessing cache stores the head
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0.0, "a_max": 1.0, "b_min": 0.0,
         "b_max": 255.0, "clip": True},
        {"_target_": "AsDiscreted", "keys": "image", "rounding": "torchrounding"},
    ]
    if grey:
        chain.append({"_target_": "RepeatChanneld", "keys": "image", "repeats": 3})
    chain.append({"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True,  # ImageNet, on 0..255
                  "subtrahend": [round(255 * m, 6) for m in IMAGENET_MEAN],
                  "divisor": [round(255 * s, 6) for s in IMAGENET_STD]})
    return chain


def stock_eval_transforms(domain, *, image_size=224):
    """:func:`stock_eval_config` built by MONAI's ConfigParser: a MONAI ``Compose`` of stock transforms,
    {"image": path} -> {"image": MetaTensor (3, image_size, image_size)}, what the exported bundle runs."""
    from monai.bundle import ConfigParser

    config = {"preprocessing": {"_target_": "Compose",
                                "transforms": stock_eval_config(domain, image_size=image_size)}}
    return ConfigParser(config).get_parsed_content("preprocessing")
