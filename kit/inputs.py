"""What a trained model may be given in clinical use: inputs found, refused or read (predict.py).

``find_inputs`` turns the command line's paths into image files: a file as it is; a folder
walked recursively (image suffixes, and suffix-less DICOM files as in a series folder); a CSV
with an ``image`` column (relative paths taken from the CSV's folder).

``refusal`` says why a readable image is not one the model was trained for, from evidence in
the file only, never from a guess (what the file cannot tell is predicted):

* DICOM Modality: cxr takes projection radiographs (CR, DX, RG); hwsi slide and general
  microscopy (SM, GM); efi ophthalmic photography (OP). OT, SC, XC or none say nothing and the
  pixels decide; any other modality (CT, MR, US, MG, ...) is refused.
* Colour: histology (H&E) and fundus photographs are colour, chest X-rays grey. An image is
  colour when its mean chroma (max - min of R, G, B, on a thumbnail) is at least COLOUR_CHROMA
  of the full range: a grey X-ray saved as RGB or JPEG stays well below, an H&E tile or a fundus
  photograph (even with its black border) well above. A grey image is refused by hwsi and efi
  models, a colour one by cxr models.

Volumes (a NIfTI with more than one slice, a multi-frame DICOM) are refused by the transform
chain itself (transforms.py): no chain knows which slice to take.

``PredictionSet`` reads each image through the eval chain of data.ImageDataset, the dataset
evaluate.py reads, and yields the refused or unreadable ones as reasons instead of raising.
"""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import transforms

from . import data, files, readers

DICOM_IDS = ("PatientID", "StudyInstanceUID", "SOPInstanceUID")
MODALITIES = {"cxr": ("CR", "DX", "RG"), "hwsi": ("SM", "GM"), "efi": ("OP",)}
UNSPECIFIC_MODALITIES = ("", "OT", "SC", "XC")  # other, secondary capture, external camera: the pixels decide
MODALITY_NAMES = {"CR": "computed radiography", "DX": "digital radiography", "RG": "radiographic imaging",
                  "CT": "computed tomography", "MR": "magnetic resonance", "US": "ultrasound", "NM": "nuclear medicine",
                  "PT": "PET", "MG": "mammography", "XA": "X-ray angiography", "RF": "fluoroscopy",
                  "IO": "intra-oral radiography", "PX": "panoramic X-ray", "OP": "ophthalmic photography",
                  "OPT": "ophthalmic tomography", "SM": "slide microscopy", "GM": "general microscopy",
                  "ES": "endoscopy", "DG": "diaphanography", "ECG": "electrocardiography", "SR": "structured report",
                  "PR": "presentation state", "SEG": "segmentation", "RTSTRUCT": "radiotherapy structures"}
TRAINED_ON = {"cxr": "grey chest X-rays", "hwsi": "colour histology (H&E) images",
              "efi": "colour fundus photographs"}
COLOUR_DOMAINS = ("hwsi", "efi")
COLOUR_CHROMA = 0.04  # mean (max - min) of R, G, B as a share of the range; grey JPEG noise is ~0.005
THUMBNAIL = 128  # px: the colour test looks at a thumbnail


def _is_image_file(path: str) -> bool:
    return readers.image_suffix(os.path.basename(path)) is not None or transforms.is_dicom(path)


def find_inputs(paths) -> tuple[list[str], list[str]]:
    """(image paths in order, notes). A folder is walked recursively and sorted; files that are no
    image (text, DICOMDIR, ...) are left out with a note. A missing path is an error: a typo."""
    images, notes = [], []
    for given in map(str, paths):
        path = Path(given)
        if path.is_dir():
            found, other = [], 0
            for name, file in readers.walk(path):
                if name.upper() != "DICOMDIR" and _is_image_file(file):
                    found.append(file)
                else:
                    other += 1
            if not found:
                raise ValueError(f"{given}: no image files in this folder (PNG, JPEG, TIFF, BMP, DICOM, NIfTI)")
            images += found
            if other:
                notes.append(f"{given}: {other} file(s) that are no image left out")
        elif path.is_file() and path.suffix.lower() == ".csv":
            table = files.read_table(path, dtype=str, keep_default_na=False)
            files.require_columns(table, ["image"], path)
            images += [str(path.parent / p) if p and not os.path.isabs(p) else p for p in table["image"]]
        elif path.is_file():
            images.append(given)
        else:
            raise ValueError(f"{given}: no such file or folder")
    if not images:
        raise ValueError("no input images")
    return images, notes


def chroma(rgb) -> float:
    """Mean (max - min) over R, G, B of an (H, W, 3) array, as a share of its dtype's range."""
    rgb = np.asarray(rgb)
    top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else 1.0
    rgb = rgb.astype(np.float32)
    return float((rgb.max(axis=-1) - rgb.min(axis=-1)).mean() / top)


def _picture_chroma(path: str) -> float | None:
    """Chroma of a PNG/JPEG/TIFF/BMP on a thumbnail (0 for grey modes); None when PIL cannot tell."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG: decode at 1/2..1/8 scale
            if image.mode not in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                return 0.0  # L, LA, I;16, I, F, 1: grey
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            return chroma(np.asarray(image))
    except Exception:
        return None  # unreadable or a TIFF PIL cannot decode: the chain will say


def _dicom(path: str):
    """(header without pixels, colour chroma or None) of a DICOM file; (None, None) when unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None, None  # the chain reports why it cannot be read
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric.startswith("MONOCHROME") or not photometric:
        return ds, 0.0
    try:  # colour: judge the content (a screenshot of an X-ray is stored as RGB)
        pixels = transforms.dicom_pixels(pydicom.dcmread(path), path)
    except Exception:
        return ds, None
    step = max(1, max(pixels.shape[:2]) // THUMBNAIL)
    return ds, chroma(pixels[::step, ::step])


def inspect(path: str, domain: str) -> tuple[dict, str | None]:
    """(DICOM identifiers, the reason the model must not be given this image, or None)."""
    ids, found = {}, None
    if transforms.is_dicom(path):
        ds, found = _dicom(path)
        if ds is not None:
            ids = {key: str(ds.get(key, "")) for key in DICOM_IDS}
            modality = str(ds.get("Modality", "")).strip().upper()
            if modality not in MODALITIES[domain] and modality not in UNSPECIFIC_MODALITIES:
                what = MODALITY_NAMES.get(modality, "")
                return ids, (f"{path}: DICOM modality {modality}{f' ({what})' if what else ''}; this {domain} model "
                             f"was trained on {TRAINED_ON[domain]} (DICOM modality {', '.join(MODALITIES[domain])}); "
                             "refused")
    elif readers.image_suffix(os.path.basename(path)) not in (".nii", ".nii.gz"):
        found = _picture_chroma(path)
    else:
        found = 0.0 if _nifti_is_scalar(path) else None
    if found is None:
        return ids, None
    colour = found >= COLOUR_CHROMA
    if colour != (domain in COLOUR_DOMAINS):
        kind = f"a colour image (mean chroma {found:.2f})" if colour else "a grey image"
        return ids, f"{path}: {kind}; this {domain} model was trained on {TRAINED_ON[domain]}; refused"
    return ids, None


def _nifti_is_scalar(path: str) -> bool:
    """A NIfTI of plain numbers (grey), not RGB(A) voxels; False when the header cannot be read."""
    try:
        import nibabel

        return nibabel.load(path).header.get_data_dtype().names is None
    except Exception:
        return False


class PredictionSet(torch.utils.data.Dataset):
    """Images through the eval chain of their model, as evaluate.py reads them (data.ImageDataset,
    train=False, no cache). Item i: (i, uint8 pixels (C, S, S), tail (8,), DICOM ids, "") for an
    image that is read, (i, None, None, ids, reason) for one that is refused or unreadable."""

    def __init__(self, images: list[str], *, domain: str, image_size: int, classes: list[str], task: str,
                 check_domain: bool = True):
        # ImageDataset reads labelled rows; a placeholder label (never used) lets prediction share its chain
        rows = pd.DataFrame({"image": images, "label": 0, "labels": ""})
        self.dataset = data.ImageDataset(rows, task=task, classes=classes, image_size=image_size, train=False,
                                         domain=domain)
        self.domain, self.check_domain = domain, check_domain

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        path = self.dataset.images[i]
        ids, reason = inspect(path, self.domain) if self.check_domain else ({}, None)
        if reason is None:
            try:
                pixels, tail, _ = self.dataset[i]
                return i, pixels, tail, ids, ""
            except ValueError as err:
                reason = str(err)
        return i, None, None, ids, reason


def collate(items):
    """A batch of PredictionSet items -> (indices, pixels or None, tails or None, ids, [(index, reason)])."""
    good = [item for item in items if not item[4]]
    pixels = tails = None
    if good:
        pixels, tails = data.stack_in_numpy([(item[1], item[2]) for item in good])
    return ([item[0] for item in good], pixels, tails, {item[0]: item[3] for item in items},
            [(item[0], item[4]) for item in items if item[4]])
