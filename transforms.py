"""MONAI transform chains for the three image domains of the study (paper Section 5.2).

Import this module into clinical code to feed a trained model exactly what it saw in
training; nothing here knows about argparse, manifests or checkpoints::

    from transforms import eval_transforms
    t = eval_transforms("cxr", image_size=224)
    x = t({"image": "scan.dcm"})["image"]     # torch.float32, (3, 224, 224), ImageNet-normalised
    logits = model(x[None])

Domains: "cxr" (chest X-ray), "hwsi" (histopathology), "efi" (eye fundus). Each chain is a
MONAI ``Compose`` of dictionary transforms that read and replace the key "image" (a file
path in, a tensor out); every other key (e.g. "label") passes through untouched. A chain
is a deterministic head, :func:`preprocess_transforms`, which MONAI's caching datasets can
store, followed by a tail: random augmentation (:func:`train_transforms`) or a centre crop
(:func:`eval_transforms`), then ImageNet normalisation, so that every arm of the study
feeds the same 3-channel stem.

Head, in order:

1. ``LoadImaged`` picks the reader by suffix: PNG/JPEG/BMP/TIFF through PIL (for TIFF
   2.5x faster than ITK; a TIFF that PIL cannot read, e.g. multi-channel 16-bit, falls back
   to ITK), DICOM through ITK, NIfTI through nibabel. Pixels keep their stored dtype so that step 3 can
   tell 8-bit colour from 16-bit or float data.
2. Picture order. MONAI's readers return (C, x, y), i.e. columns before rows (the
   transpose of PIL and torchvision); we transpose to (C, rows, cols) so that row 0 is the
   top of the picture. A single-slice volume (a DICOM file read by ITK, a NIfTI with z = 1)
   is squeezed to 2-D. For NIfTI, the first array axis is x (columns), as in MONAI and ITK.
3. Channels and intensities, to float32 in [0, 1]. cxr: grey, RGB or RGBA becomes one grey
   channel (ITU-R 601 luma), scaled per image by min-max so that 8-bit PNG, 16-bit PNG and
   12-bit DICOM all work (ITK's DICOM reader already shows MONOCHROME1 films with bone
   white, applying the rescale slope and intercept on the way). hwsi/efi: alpha is dropped; 8-bit
   images are divided by 255; any other dtype (16-bit, float) is min-max scaled over all
   channels together, which keeps the colour balance (the stored dtype is the cheap test).
4. Geometry (paper 5.2.1). cxr: resize to image_size x image_size. hwsi: resize the
   shorter side to image_size keeping the aspect ratio (BreakHis 700x460 -> 340x224); the
   tail takes a random (train) or centre (eval) image_size square. efi: crop to the
   bounding box of the eye (pixels brighter than a small threshold on the black
   background), resize the shorter side to image_size, centre crop image_size square.
   Resizing is bilinear with antialiasing (area-like averaging when shrinking).
5. Grey images are repeated to 3 channels.

The head's output is float32 in [0, 1] with shape (3, H, W); train and eval chains return a
plain ``torch.Tensor`` of shape (3, image_size, image_size). All transforms are module-level
classes and functions, so the chains pickle into DataLoader workers.
"""
import logging
import math
import warnings

import torch
import torch.nn.functional as F
from PIL import Image
from monai.data import MetaTensor, PILReader
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    CropForegroundd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    RandAffined,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSpatialCropd,
    ScaleIntensityRanged,
)
from monai.utils import convert_to_dst_type

DOMAINS = ("cxr", "hwsi", "efi")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, RGB, on [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, the weights of PIL's convert("L")

# Eye crop (efi): a pixel is eye when its channel mean exceeds EYE_THRESHOLD (10/255 lies above
# JPEG noise on the black background); a row or column belongs to the eye box when at least
# EYE_MIN_FRACTION of it is eye, so stray bright pixels or burnt-in text do not widen the box.
EYE_THRESHOLD = 10 / 255
EYE_MIN_FRACTION = 0.02

# Augmentation (train tails). Probabilities are per image; ranges are symmetric around 0.
CXR_AFFINE_PROB = 0.8
CXR_ROTATE_DEGREES = 7.0  # small: a chest film is roughly upright; no flips, the heart has a side
CXR_SCALE = 0.10  # zoom factor drawn from [0.9, 1.1] per axis
CXR_TRANSLATE = 0.05  # shift, fraction of image_size
FLIP_PROB = 0.5  # hwsi and efi, each axis: tissue and fundus have no canonical orientation
ROTATE90_PROB = 0.5  # hwsi: quarter turns, lossless
EFI_ROTATE_PROB = 0.5
EFI_ROTATE_DEGREES = 180.0  # the eye is a disc: any angle
JITTER_PROB = 0.5  # hwsi and efi, for brightness and for contrast separately
BRIGHTNESS = 0.1  # intensities multiplied by a factor in [0.9, 1.1]
CONTRAST = 0.1  # distance from the image mean multiplied by a factor in [0.9, 1.1]


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
            if img.ndim < 3 or any(size != 1 for size in img.shape[3:]):
                raise ValueError(f"{_file_name(img)}: expected a 2-D image, got (channels, spatial) "
                                 f"shape {tuple(img.shape)}")
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
        channels = img.shape[0]
        if channels in (2, 4):
            img = img[: channels - 1]  # grey+alpha or RGBA: drop alpha
        elif channels not in (1, 3):
            raise ValueError(f"{_file_name(img)}: expected 1 (grey), 2 (grey+alpha), 3 (RGB) or "
                             f"4 (RGBA) channels, got {channels}")
        is_8bit = img.dtype == torch.uint8
        x = _plain(img).to(torch.float32, copy=True)
        if self.grey:
            if x.shape[0] == 3:
                x = torch.einsum("chw,c->hw", x, x.new_tensor(GREY_WEIGHTS))[None]
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


def _check(domain, image_size):
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}: expected one of {', '.join(DOMAINS)}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")


def _head(domain, image_size):
    """The deterministic transforms of :func:`preprocess_transforms`, as a list."""
    # MONAI builds every reader; the absence of the optional GPU DICOM codec is harmless, so
    # neither its warning nor its log line should greet every run.
    codec_logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = codec_logger.level
    codec_logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
        load = LoadImaged(keys="image", image_only=True, ensure_channel_first=True, dtype=None)
    codec_logger.setLevel(level)
    load.register(PictureReader(converter=pil_standard_mode))  # tried first for PNG, JPEG, BMP, TIFF
    head = [load, PictureOrderd(keys="image"), UnitRanged(keys="image", grey=domain == "cxr")]
    if domain == "cxr":
        head.append(ResizeAntialiasd(keys="image", size=image_size))
    elif domain == "hwsi":
        head.append(ResizeAntialiasd(keys="image", size=image_size, shorter_side=True))
    else:  # efi: paper 5.2.1, "center cropped to extract eye area"
        head += [
            CropForegroundd(keys="image", source_key="image", select_fn=eye_foreground,
                            allow_smaller=True, start_coord_key=None, end_coord_key=None),
            ResizeAntialiasd(keys="image", size=image_size, shorter_side=True),
            CenterSpatialCropd(keys="image", roi_size=(image_size, image_size)),
        ]
    head.append(ThreeChannelsd(keys="image"))
    return head


def _normalise():
    """ImageNet statistics per channel, then a plain float32 tensor for the DataLoader."""
    return [
        NormalizeIntensityd(keys="image", subtrahend=IMAGENET_MEAN, divisor=IMAGENET_STD, channel_wise=True),
        EnsureTyped(keys="image", data_type="tensor", dtype=torch.float32, track_meta=False),
    ]


def _jitter():
    """Mild brightness and contrast jitter, clipped back to [0, 1] (hwsi, efi)."""
    return [
        RandScaleIntensityd(keys="image", factors=BRIGHTNESS, prob=JITTER_PROB),
        RandScaleIntensityFixedMeand(keys="image", factors=CONTRAST, prob=JITTER_PROB, fixed_mean=True),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),  # = clip
    ]


# --- public chains --------------------------------------------------------------------------

def preprocess_transforms(domain, *, image_size=224):
    """Deterministic head: file path -> float32 (3, H, W) in [0, 1]; cacheable.

    cxr and efi give H = W = image_size; hwsi gives the shorter side = image_size.
    """
    _check(domain, image_size)
    return Compose(_head(domain, image_size))


def train_transforms(domain, *, image_size=224):
    """Head + random augmentation + ImageNet normalisation -> float32 (3, image_size, image_size)."""
    _check(domain, image_size)
    if domain == "cxr":
        tail = [RandAffined(keys="image", prob=CXR_AFFINE_PROB, rotate_range=math.radians(CXR_ROTATE_DEGREES),
                            scale_range=(CXR_SCALE, CXR_SCALE),
                            translate_range=(CXR_TRANSLATE * image_size, CXR_TRANSLATE * image_size),
                            mode="bilinear", padding_mode="zeros")]
    elif domain == "hwsi":  # paper 5.2.1: random 224 crops out of 340x224
        tail = [RandSpatialCropd(keys="image", roi_size=(image_size, image_size), random_size=False),
                RandFlipd(keys="image", prob=FLIP_PROB, spatial_axis=0),
                RandFlipd(keys="image", prob=FLIP_PROB, spatial_axis=1),
                RandRotate90d(keys="image", prob=ROTATE90_PROB, max_k=3)] + _jitter()
    else:
        tail = [RandFlipd(keys="image", prob=FLIP_PROB, spatial_axis=0),
                RandFlipd(keys="image", prob=FLIP_PROB, spatial_axis=1),
                RandRotated(keys="image", range_x=math.radians(EFI_ROTATE_DEGREES), prob=EFI_ROTATE_PROB,
                            keep_size=True, mode="bilinear", padding_mode="zeros")] + _jitter()
    return Compose(_head(domain, image_size) + tail + _normalise())


def eval_transforms(domain, *, image_size=224):
    """Head + centre crop (hwsi) + ImageNet normalisation -> float32 (3, image_size, image_size)."""
    _check(domain, image_size)
    tail = [CenterSpatialCropd(keys="image", roi_size=(image_size, image_size))] if domain == "hwsi" else []
    return Compose(_head(domain, image_size) + tail + _normalise())
