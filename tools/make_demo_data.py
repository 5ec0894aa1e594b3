"""Write small synthetic copies of the study's eight datasets in their native layouts.

The demo exercises the real readers in ``kit/readers/``: every data set is written with the
folder names, file names, image formats and CSV/XLS columns of the real download, only smaller
and with drawn instead of photographed pictures.
The pictures carry class-dependent structure a DenseNet-121 can learn at 64 px in a few
epochs: chest X-rays with per-finding opacities, H&E-like histology textures, fundus images
with red dots, haemorrhages and exudates that grow with the retinopathy grade.

    python tools/make_demo_data.py --out OUT/demo_data                          # all 8 sets, ~1,300 images + 120 masks, ~15 s
    python tools/make_demo_data.py --out OUT/demo_data --datasets shenzhen messidor --scale 4
    python tools/make_demo_data.py --out OUT/demo_data --overwrite --seed 1     # replace with another draw

Layout written under ``OUT/demo_data/<key>/`` (sizes at ``--scale 1``):

* chestxray14: ``Data_Entry_2017_v2020.csv`` (all original columns, unquoted header),
  ``train_val_list.txt``, ``test_list.txt`` (split by patient),
  ``images_001/images/<8-digit patient>_<3-digit follow-up>.png`` (100 per folder, then
  ``images_002/`` ...); 256x256 8-bit grey PNG; ~80 patients, ~240 images.
* breakhis: ``BreaKHis_v1/histology_slides/breast/<benign|malignant>/SOB/<type>/<slide>/<mag>X/...png``;
  350x230 RGB PNG (half of 700x460); 3 slides per subtype x 4 magnifications x 2 images = 192.
* eyepacs: ``trainLabels.csv`` + ``train/<id>_<left|right>.jpeg`` (100 patients, 200 images),
  ``retinopathy_solution.csv`` (``image,level,Usage``) + ``test/`` (20 patients, 40 images);
  384x256 RGB JPEG, eye circle clipped at top and bottom as in the Kaggle images.
* shenzhen: ``ChinaSet_AllFiles/CXR_png/CHNCXR_<nnnn>_<0|1>.png`` (normals numbered first) and
  ``ChinaSet_AllFiles/ClinicalReadings/CHNCXR_<nnnn>_<0|1>.txt``; grey PNG, 256-300 px a side; 50 + 50.
* covid19_radiography: newer layout ``COVID-19_Radiography_Dataset/<Class>/images/<Class>-<n>.png``
  plus the lung masks ``<Class>/masks/<Class>-<n>.png`` (256x256, 0/255); 299x299 grey PNG;
  30 per class, and like the real one a few borrowed pictures: one COVID and one Normal image are
  ChestX-ray14 radiographs (when chestxray14 is written in the same run) and one COVID picture is
  there twice under two names (no ``<Class>.metadata.xlsx``: openpyxl stamps the current time into it).
* kather2016: ``Kather_texture_2016_image_tiles_5000/<nn>_<CLASS>/<id>.tif`` with the real
  name pattern ``<hex>_CRC-Prim-HE-<nn>_<nnn>.tif_Row_<r>_Col_<c>.tif``; 150x150 RGB TIFF; 16 per class.
* messidor: ``Base11`` ... ``Base34`` with ``<yyyymmdd>_<nnnnn>_<0100|0200|0400>_PP.tif`` and
  ``Annotation_Base<nn>.xls`` (xlwt; grades stored as floats); 360x240 RGB TIFF; 10 per base.
* deepdrid: ``regular_fundus_images/regular-fundus-<training|validation>/regular-fundus-<split>.csv``
  and ``.../Images/<patient_id>/<patient_id>_<l|r><1|2>.jpg``; 320x320 RGB JPEG;
  30 training and 10 validation patients, 4 images each.

Every data set folder also holds ``DEMO_DATA.json``: that it is generated demo data, the data set,
seed, scale, image sizes and contents, and the kit's version; prepare_data.py copies it into the
manifest's JSON sidecar, so a report made from hand-run stages can say where its data came from.

Every image is drawn from its own seed (seed, data set, image number), so the files are
byte-identical for a given ``--seed`` whatever ``--workers`` is; no file embeds a date.
Each data set is written into ``<key>.tmp`` and renamed to ``<key>`` when complete.
"""
import argparse
import contextlib
import csv
import math
import os
import shutil
import time
import tomllib
from multiprocessing import get_context
from pathlib import Path

import sys

import numpy as np
import tifffile
import xlwt
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere: the kit's cli
from kit import cli, files  # noqa: E402

DATASET_KEYS = ("chestxray14", "breakhis", "eyepacs", "shenzhen", "covid19_radiography",
                "kather2016", "messidor", "deepdrid")

CXR14_FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
                  "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening",
                  "Pneumonia", "Pneumothorax")
# The real header is not quoted, so "OriginalImage[Width,Height]" reads as two columns.
CXR14_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
BREAKHIS_TYPES = {  # folder name -> (B|M, code in the file name)
    "adenosis": ("B", "A"), "fibroadenoma": ("B", "F"), "phyllodes_tumor": ("B", "PT"),
    "tubular_adenoma": ("B", "TA"), "ductal_carcinoma": ("M", "DC"), "lobular_carcinoma": ("M", "LC"),
    "mucinous_carcinoma": ("M", "MC"), "papillary_carcinoma": ("M", "PC")}
BREAKHIS_ZOOM = {40: 1.0, 100: 1.5, 200: 2.1, 400: 2.9}  # feature scale per magnification
COVID_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
KATHER_FOLDERS = ("01_TUMOR", "02_STROMA", "03_COMPLEX", "04_LYMPHO", "05_DEBRIS", "06_MUCOSA",
                  "07_ADIPOSE", "08_EMPTY")
MESSIDOR_BASES = tuple(f"{a}{b}" for a in (1, 2, 3) for b in (1, 2, 3, 4))
MESSIDOR_DEPARTMENTS = {"1": ("Service Ophtalmologie Lariboisière", "0100"),
                        "2": ("CHU de St Etienne", "0200"), "3": ("LaTIM - CHU de BREST", "0400")}
MESSIDOR_COLUMNS = ("Image name", "Ophthalmologic department", "Retinopathy grade",
                    "Risk of macular edema ")
DEEPDRID_COLUMNS = ("patient_id", "image_id", "image_path", "Overall quality", "left_eye_DR_Level",
                    "right_eye_DR_Level", "patient_DR_Level", "Clarity", "Field definition", "Artifact")

# Image sizes (width, height) written by the demo; real sizes in comments.
SIZE_CXR14 = (256, 256)        # real 1024x1024
SIZE_COVID = (299, 299)        # real 299x299
SIZE_COVID_MASK = (256, 256)   # real 256x256
SIZE_BREAKHIS = (350, 230)     # real 700x460
SIZE_KATHER = (150, 150)       # real 150x150
SIZE_EYEPACS = (384, 256)      # real ~3888x2592 and others, aspect ~1.5
SIZE_MESSIDOR = (360, 240)     # real 1440x960, 2240x1488, 2304x1536
SIZE_DEEPDRID = (320, 320)     # real ~1956x1934


def get_args_parser():
    parser = cli.Parser(__doc__)
    # Data
    parser.add_argument("--out", type=Path, required=True,
                        help="folder that receives one sub-folder per data set (e.g. OUT/demo_data)")
    parser.add_argument("--datasets", type=str, nargs="+", default=list(DATASET_KEYS),
                        choices=DATASET_KEYS, metavar="KEY",
                        help=f"data sets to write (default: all of {', '.join(DATASET_KEYS)})")
    parser.add_argument("--seed", type=cli.seed, default=0,
                        help="random seed; the same seed gives byte-identical files (any int >= 0)")
    parser.add_argument("--scale", type=cli.demo_scale, default=1.0,
                        help="multiplies the image counts (0.01-100; 1 gives ~1,300 images in all; "
                             "small scales keep at least a few images per class)")
    # Runtime
    parser.add_argument("--workers", type=cli.non_negative_int, default=min(4, cli.available_cores()),
                        help="processes drawing images (0 = draw in this process); does not change the files")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="replace an existing non-empty <out>/<key> folder instead of refusing")
    return parser


# ----------------------------------------------------------------------------------------------
# Drawing helpers (float32 images in [0, 1]; coordinates in pixels unless said otherwise)

def smooth_noise(rng, height, width, cells):
    """Band-limited noise in about [-1, 1]: a `cells`-wide random grid upsampled bicubically."""
    cells_y = max(2, round(cells * height / max(height, width)))
    cells_x = max(2, round(cells * width / max(height, width)))
    grid = rng.uniform(-1.0, 1.0, (cells_y, cells_x)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC))


def soft_ellipse(u, v, cx, cy, rx, ry, edge=0.1):
    """1 inside the ellipse, falling linearly to 0 over `edge` (fraction of the radius)."""
    rho = np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    return np.clip((1.0 - rho) / edge, 0.0, 1.0)


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def blob_polygons(rng, xs, ys, radii, irregular=0.2, elong=1.0, angles=None, corners=9):
    """Corner arrays (n, corners, 2) of jagged ellipses (nuclei, fragments, lesions), vectorised."""
    n = len(xs)
    radii = np.broadcast_to(np.asarray(radii, np.float64), (n,))
    angles = rng.uniform(0, np.pi, n) if angles is None else np.broadcast_to(np.asarray(angles, np.float64), (n,))
    theta = np.linspace(0.0, 2 * np.pi, corners, endpoint=False) + rng.uniform(0, 2 * np.pi, (n, 1))
    rho = radii[:, None] * (1.0 + irregular * rng.uniform(-1.0, 1.0, (n, corners)))
    x, y = rho * np.cos(theta) * elong, rho * np.sin(theta) / math.sqrt(elong)
    ca, sa = np.cos(angles)[:, None], np.sin(angles)[:, None]
    return np.stack([np.asarray(xs)[:, None] + ca * x - sa * y, np.asarray(ys)[:, None] + sa * x + ca * y], axis=-1)


def draw_blobs(draw, rng, xs, ys, radii, values, irregular=0.2, elong=1.0, angles=None, corners=9):
    """Draw one filled jagged ellipse per point onto a PIL ImageDraw (values 0-255)."""
    polygons = blob_polygons(rng, xs, ys, radii, irregular, elong, angles, corners).tolist()
    values = np.broadcast_to(np.asarray(values, int), (len(polygons),)).tolist()
    for polygon, value in zip(polygons, values):
        draw.polygon([tuple(p) for p in polygon], fill=value)


def canvas(width, height):
    image = Image.new("L", (width, height), 0)
    return image, ImageDraw.Draw(image)


def as_float(image, blur=0.0):
    """A PIL 'L' canvas as float32 in [0, 1], Gaussian-blurred by `blur` px (PIL: fast on uint8)."""
    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(image, dtype=np.float32) * np.float32(1 / 255)


def to_uint8(array):
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Chest X-ray: body, two lungs with ribs, heart, diaphragm; findings add structure

SIDES = (-1, 1)   # patient's right (left of the picture), patient's left


class Chest:
    """One drawn chest: normalised coordinates u, v (patient centred) and the lungs (outline, mask,
    texture, ribs). All its random draws happen here, before anything is painted."""

    def __init__(self, rng, width, height, emphysema):
        self.rng, self.width, self.height = rng, width, height
        shift_x, shift_y = rng.uniform(-0.035, 0.035, 2).tolist()
        scale = rng.uniform(0.92, 1.04)
        yy, xx = np.ogrid[0:height, 0:width]
        u = ((xx.astype(np.float32) / width - 0.5 - shift_x) / scale + 0.5)
        v = ((yy.astype(np.float32) / height - 0.5 - shift_y) / scale + 0.5)
        self.u, self.v = u, v = np.broadcast_arrays(u, v)
        self.lung_rx, self.lung_ry = (0.175, 0.34) if emphysema else (0.16, 0.31)   # emphysema: hyperinflated
        self.lung_cy = 0.47 + rng.uniform(-0.015, 0.015)
        self.lungs = {side: (0.5 + side * (0.185 + rng.uniform(-0.01, 0.01)), self.lung_cy) for side in SIDES}
        self.lung_mask = np.maximum(self.in_lung(-1, 0.2), self.in_lung(1, 0.2))
        self.texture = 0.035 * self.noise(36) + 0.03 * self.noise(10)
        rib_freq = 6.0 if emphysema else 7.5   # posterior ribs: arcs sloping down laterally
        phase = rib_freq * (v - 0.9 * (np.abs(u - 0.5) - 0.05) ** 2 - 0.25 * np.abs(u - 0.5)) + rng.uniform(0, 1)
        self.ribs = np.clip((np.cos(2 * np.pi * phase) - 0.3) / 0.7, 0, 1)

    def noise(self, cells):
        return smooth_noise(self.rng, self.height, self.width, cells)

    def ellipse(self, cx, cy, rx, ry, edge):
        return soft_ellipse(self.u, self.v, cx, cy, rx, ry, edge=edge)

    def lung_rho(self, side, grow=1.0):      # egg-shaped lung: narrow apex, wide base
        (cx, cy), rx, ry = self.lungs[side], self.lung_rx, self.lung_ry
        taper = 0.7 + 0.3 * np.clip((self.v - cy + ry) / (1.4 * ry), 0, 1)
        return np.sqrt(((self.u - cx) / (rx * grow * taper)) ** 2 + ((self.v - cy) / (ry * grow)) ** 2)

    def in_lung(self, side, edge=0.25):
        return np.clip((1.0 - self.lung_rho(side)) / edge, 0, 1)

    def lung_point(self, side, v_lo, v_hi):
        cx, cy = self.lungs[side]
        return cx + side * self.rng.uniform(-0.05, 0.07), self.rng.uniform(v_lo, v_hi)


def draw_body(chest):
    """The chest wall: soft tissue, abdomen, spine and mediastinum, clavicles (a new float image)."""
    u, v = chest.u, chest.v
    body = chest.ellipse(0.5, 0.64, 0.50, 0.70, edge=0.10)
    image = 0.05 + 0.50 * body
    image += 0.15 * body * sigmoid((v - 0.78) / 0.025)                        # abdomen below the diaphragm
    image += 0.20 * chest.ellipse(0.5, 0.45, 0.06, 0.7, edge=0.6)              # spine and mediastinum
    for side in SIDES:                                                         # clavicles, lateral ends higher
        dv = v - (0.19 - 0.12 * np.abs(u - 0.5))
        image += 0.12 * np.exp(-(dv / 0.02) ** 2) * (np.abs(u - 0.5 - side * 0.17) < 0.15)
    return image


def draw_lungs(chest, image, emphysema):
    """Air (darker when hyperinflated), lung texture and the ribs over the lungs."""
    image -= (0.36 + (0.07 if emphysema else 0.0)) * chest.lung_mask
    image += chest.texture * chest.lung_mask
    image += 0.10 * chest.ribs * chest.lung_mask


def draw_heart(chest, image, cardiomegaly, emphysema):
    heart_rx, heart_ry = (0.23, 0.17) if cardiomegaly else (0.145, 0.13)
    if emphysema:    # a narrow heart between hyperinflated lungs
        heart_rx *= 0.85
    image += 0.32 * chest.ellipse(0.535 + chest.rng.uniform(-0.01, 0.01), 0.63, heart_rx, heart_ry, edge=0.35)


# One function per finding: paints it onto `image` in place; `side` is the side it is drawn on.

def atelectasis(chest, image, side):           # plate-like band, lower zone
    cx, cy = chest.lungs[side]
    band = np.exp(-((chest.v - (cy + 0.13) - 0.2 * (chest.u - cx)) / 0.03) ** 2)
    image += 0.32 * band * chest.in_lung(side)


def consolidation(chest, image, side):         # dense lower-lobe patch
    px, py = chest.lung_point(side, 0.54, 0.64)
    image += 0.42 * chest.ellipse(px, py, 0.10, 0.09, edge=0.5) * chest.in_lung(side)


def edema(chest, image, side):                 # bilateral perihilar haze
    for s in SIDES:
        haze = np.exp(-(((chest.u - 0.5 - s * 0.14) / 0.09) ** 2 + ((chest.v - 0.50) / 0.14) ** 2))
        image += 0.28 * haze * chest.in_lung(s)


def effusion(chest, image, side):              # fluid level with meniscus, one side or both
    for s in ((side,) if chest.rng.random() < 0.6 else SIDES):
        cx, cy = chest.lungs[s]
        level = cy + 0.12 - 0.10 * ((chest.u - cx) / chest.lung_rx) ** 2 + chest.rng.uniform(-0.03, 0.02)
        image += 0.36 * sigmoid((chest.v - level) / 0.012) * chest.in_lung(s, 0.2)


def fibrosis(chest, image, side):              # reticular net, bases and periphery
    net = np.exp(-(chest.noise(18) / 0.1) ** 2)
    weight = sigmoid((chest.v - chest.lung_cy + 0.05) / 0.06) * sigmoid((np.abs(chest.u - 0.5) - 0.12) / 0.04)
    image += 0.28 * net * weight * chest.lung_mask


def hernia(chest, image, side):                # round mass with gas behind the heart
    hx, hy = 0.5 + chest.rng.uniform(-0.03, 0.03), 0.70
    image += 0.28 * chest.ellipse(hx, hy, 0.09, 0.08, edge=0.3)
    image -= 0.25 * chest.ellipse(hx, hy - 0.02, 0.045, 0.03, edge=0.4)


def infiltration(chest, image, side):          # several ill-defined patches
    for _ in range(chest.rng.integers(3, 6)):
        s = SIDES[chest.rng.integers(2)]
        px, py = chest.lung_point(s, 0.30, 0.62)
        image += 0.22 * chest.ellipse(px, py, 0.05, 0.05, edge=0.8) * chest.in_lung(s)


def mass(chest, image, side):                  # one large sharp round blob
    px, py = chest.lung_point(side, 0.32, 0.58)
    r = chest.rng.uniform(0.06, 0.08)
    image += 0.42 * chest.ellipse(px, py, r, r, edge=0.15)


def nodule(chest, image, side):                # several small sharp dots
    for _ in range(chest.rng.integers(3, 6)):
        s = SIDES[chest.rng.integers(2)]
        px, py = chest.lung_point(s, 0.28, 0.62)
        r = chest.rng.uniform(0.022, 0.03)
        image += 0.42 * chest.ellipse(px, py, r, r, edge=0.2)


def pleural_thickening(chest, image, side):    # bright rim at the lateral edge
    cx, cy = chest.lungs[side]
    rim = np.exp(-((chest.lung_rho(side) - 0.88) / 0.08) ** 2) * sigmoid(side * (chest.u - cx) / 0.03)
    image += 0.34 * rim * sigmoid((cy + 0.2 - chest.v) / 0.03)


def pneumonia(chest, image, side):             # mottled mid/upper patch
    px, py = chest.lung_point(side, 0.36, 0.50)
    mottle = 0.7 + 0.3 * chest.noise(30)
    image += 0.36 * mottle * chest.ellipse(px, py, 0.09, 0.10, edge=0.6) * chest.in_lung(side)


def pneumothorax(chest, image, side):          # collapsed lung inside a rim of air
    cx, cy = chest.lungs[side]
    rx, ry = chest.lung_rx, chest.lung_ry
    shrink = chest.rng.uniform(0.62, 0.78)
    collapsed = np.sqrt(((chest.u - cx + side * (1 - shrink) * rx) / (shrink * rx)) ** 2
                        + ((chest.v - cy - (1 - shrink) * 0.5 * ry) / (ry * (0.5 + 0.5 * shrink))) ** 2)
    air = sigmoid((collapsed - 1.0) / 0.02) * chest.in_lung(side, 0.08)
    image -= air * (0.10 + 0.10 * chest.ribs + chest.texture)
    image += 0.25 * np.exp(-((collapsed - 1.0) / 0.03) ** 2) * chest.in_lung(side)   # visceral pleural line


def tuberculosis(chest, image, side):          # upper-lobe patches and cavities, one side or both
    u, v, rng = chest.u, chest.v, chest.rng
    for s in ((side,) if rng.random() < 0.5 else SIDES):
        for _ in range(rng.integers(3, 6)):
            px, py = chest.lung_point(s, 0.24, 0.42)
            image += 0.28 * chest.ellipse(px, py, 0.06, 0.05, edge=0.7) * chest.in_lung(s)
        if rng.random() < 0.7:
            px, py = chest.lung_point(s, 0.26, 0.36)
            r = rng.uniform(0.03, 0.045)
            rho = np.sqrt((u - px) ** 2 + (v - py) ** 2) / r
            image += 0.30 * np.exp(-((rho - 1.0) / 0.3) ** 2) - 0.10 * (rho < 0.8)


def covid(chest, image, side):                 # bilateral peripheral lower ground glass
    weight = sigmoid((np.abs(chest.u - 0.5) - 0.18) / 0.03) * sigmoid((chest.v - 0.38) / 0.05)
    mottle = 0.75 + 0.25 * chest.noise(25)
    image += 0.36 * weight * mottle * chest.lung_mask


def lung_opacity(chest, image, side):          # dense unilateral patch
    px, py = chest.lung_point(side, 0.38, 0.56)
    rx, ry = chest.rng.uniform(0.09, 0.12), chest.rng.uniform(0.10, 0.14)
    image += 0.45 * chest.ellipse(px, py, rx, ry, edge=0.35) * chest.in_lung(side)


def viral_pneumonia(chest, image, side):       # diffuse interstitial pattern
    net = np.exp(-(chest.noise(16) / 0.2) ** 2)
    image += (0.22 * net + 0.08) * chest.lung_mask


# Cardiomegaly and Emphysema are no extra shapes: they change the heart and the lungs.
CHEST_FINDINGS = {"Atelectasis": atelectasis, "Consolidation": consolidation, "Edema": edema, "Effusion": effusion,
                  "Fibrosis": fibrosis, "Hernia": hernia, "Infiltration": infiltration, "Mass": mass,
                  "Nodule": nodule, "Pleural_Thickening": pleural_thickening, "Pneumonia": pneumonia,
                  "Pneumothorax": pneumothorax, "tuberculosis": tuberculosis, "covid": covid,
                  "lung_opacity": lung_opacity, "viral_pneumonia": viral_pneumonia}


def expose(rng, image, lung_mask, mask_size):
    """The exposure (contrast, brightness, gamma, quantum noise) as uint8; with `mask_size` the lung mask too."""
    contrast, brightness, gamma = rng.uniform(0.85, 1.15), rng.uniform(-0.05, 0.05), rng.uniform(0.85, 1.2)
    image = np.clip((image - 0.4) * contrast + 0.4 + brightness, 0, 1) ** gamma
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(0.015)
    picture = to_uint8(image)
    if mask_size is None:
        return [picture]
    mask = Image.fromarray(to_uint8(lung_mask > 0.5)).resize(mask_size, Image.NEAREST)
    return [picture, np.asarray(mask)]


def render_cxr(rng, width, height, findings=(), mask_size=None):
    """Grey chest radiograph (uint8 H x W); with `mask_size` also a 0/255 lung mask of that size."""
    findings = set(findings)
    emphysema = "Emphysema" in findings
    chest = Chest(rng, width, height, emphysema)
    image = draw_body(chest)
    draw_lungs(chest, image, emphysema)
    draw_heart(chest, image, "Cardiomegaly" in findings, emphysema)
    for finding in sorted(findings):
        side = SIDES[rng.integers(2)]
        if finding in CHEST_FINDINGS:
            CHEST_FINDINGS[finding](chest, image, side)
        elif finding not in ("Cardiomegaly", "Emphysema"):
            raise ValueError(f"unknown chest finding {finding!r}")
    return expose(rng, image, chest.lung_mask, mask_size)


# ----------------------------------------------------------------------------------------------
# Histology: stain concentration maps (haematoxylin H, eosin E) -> RGB by Beer-Lambert

H_OD = np.array([0.65, 0.70, 0.29], np.float32)   # optical density per unit haematoxylin (R, G, B)
E_OD = np.array([0.10, 0.90, 0.35], np.float32)   # eosin, tuned to a pink like the BreakHis scans


def he_to_rgb(rng, hema, eosin):
    h_od = H_OD * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    e_od = E_OD * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    od = hema[..., None] * h_od + eosin[..., None] * e_od + 0.03
    rgb = np.exp(-od) * np.float32(rng.uniform(0.94, 1.0))
    return to_uint8(rgb + rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(0.012))


def nucleus_values(rng, n, lo, hi):
    """Haematoxylin concentration (0-2.55) -> canvas value 0-255."""
    return np.rint(rng.uniform(lo, hi, n) * 100).astype(int)


def ring_points(rng, cx, cy, radius, spacing):
    n = max(6, int(2 * np.pi * radius / spacing))
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
    return cx + radius * np.cos(theta), cy + radius * np.sin(theta), theta


def fill_disc(draw, cx, cy, r, value):
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=value)


class Tile:
    """One histology tile being drawn: canvases for haematoxylin, eosin (concentration x 100) and
    empty space (lumen, fat, gaps; 255 = empty), background stain maps, and the drawing tools."""

    def __init__(self, rng, width, height, zoom):
        self.rng, self.width, self.height, self.zoom = rng, width, height, zoom
        self.area = width * height
        # (image, draw) pairs
        self.hema, self.eosin, self.void = canvas(width, height), canvas(width, height), canvas(width, height)
        self.eosin_bg = 0.45 + 0.08 * self.noise(8)            # background concentrations, H x W
        self.hema_bg = np.full((height, width), 0.04, np.float32)
        self.angle = rng.uniform(0, np.pi)                     # direction of fibres and spindle cells
        self.r_benign = 1.8 * zoom ** 0.75                     # nucleus radius in px at this magnification
        self.r_malignant = 3.0 * zoom ** 0.75

    def noise(self, cells):
        return smooth_noise(self.rng, self.height, self.width, cells)

    def fibre(self, period, angle, warp=4.0):
        """Wavy stripes (collagen fibres) in [0, 1], `period` px apart along the direction `angle`."""
        yy, xx = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period * 2 * np.pi
        phase += warp * self.noise(4) + 0.3 * warp * self.noise(12)
        return (0.5 + 0.5 * np.sin(phase)) ** 2 * (0.75 + 0.25 * self.noise(10))

    def points(self, n, margin=0.0):
        return (self.rng.uniform(-margin, self.width + margin, n), self.rng.uniform(-margin, self.height + margin, n))

    def discs(self, n, r_lo, r_hi, gap=1.0, tries=400):
        """Up to n non-overlapping discs (cx, cy, r), rejection-sampled."""
        discs = []
        for _ in range(tries):
            if len(discs) == n:
                break
            r = self.rng.uniform(r_lo, r_hi)
            cx, cy = self.rng.uniform(-0.3 * r, self.width + 0.3 * r), self.rng.uniform(-0.3 * r, self.height + 0.3 * r)
            if all(math.hypot(cx - x, cy - y) > (r + q) * gap for x, y, q in discs):
                discs.append((cx, cy, r))
        return discs

    def density(self, fraction, radius):               # nuclei count covering `fraction` of the tile
        return int(fraction * self.area / (np.pi * radius ** 2))

    def nuclei(self, n, radius, lo, hi, irregular=0.2, elong=1.0, angles=None, xs=None, ys=None):
        """Nuclei of about `radius` px and haematoxylin `lo`-`hi`: n at random places, or at xs, ys."""
        if xs is None:
            xs, ys = self.points(n, margin=radius)
        radii = radius * self.rng.uniform(0.8, 1.25, len(xs))
        draw_blobs(self.hema[1], self.rng, xs, ys, radii, nucleus_values(self.rng, len(xs), lo, hi), irregular, elong,
                   angles)

    def hole(self, cx, cy, r):
        fill_disc(self.void[1], cx, cy, r, 255)

    def glands(self, discs, nucleus_r, lumen_frac=0.55, h_lo=0.85, h_hi=1.2, irregular=0.12):
        """Glands/tubules: white lumen, pale epithelial ring, nuclei along the basal side."""
        for cx, cy, r in discs:
            fill_disc(self.eosin[1], cx, cy, r, 45)
            self.hole(cx, cy, r * lumen_frac)
            xs, ys, theta = ring_points(self.rng, cx, cy, r - 1.3 * nucleus_r, 2.3 * nucleus_r)
            draw_blobs(self.hema[1], self.rng, xs, ys, nucleus_r, nucleus_values(self.rng, len(xs), h_lo, h_hi),
                       irregular=irregular, elong=1.6, angles=theta)


# One function per tissue, drawing onto a Tile. Kather 2016 colorectal classes (150x150 at the
# native scale):

def tumor(tile):
    tile.eosin_bg = 0.38 + 0.08 * tile.noise(6)
    for cx, cy, r in tile.discs(tile.rng.integers(0, 3), 5, 11):
        tile.hole(cx, cy, r)
    tile.nuclei(tile.density(0.55, 4.5), 4.5, 1.3, 1.9, irregular=0.3, elong=1.3)


def stroma(tile):
    tile.eosin_bg = (0.55 + 0.30 * tile.fibre(tile.rng.uniform(6, 9), tile.angle, warp=9)
                     + 0.10 * tile.fibre(5, tile.angle + 0.8, warp=9))
    tile.nuclei(int(tile.rng.integers(6, 15)), 2.4, 1.0, 1.4, irregular=0.1, elong=4.0, angles=tile.angle)


def complex_stroma(tile):     # stroma with tumour cell clusters, holes and immune cells
    rng = tile.rng
    tile.eosin_bg = 0.45 + 0.25 * tile.fibre(7, tile.angle, warp=10) + 0.05 * tile.noise(6)
    for cx, cy, r in tile.discs(rng.integers(1, 4), 18, 32):
        n = int(0.6 * r * r / 3.8 ** 2)
        rho, phi = r * np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0, 2 * np.pi, n)
        tile.nuclei(0, 3.8, 1.2, 1.7, irregular=0.3, xs=cx + rho * np.cos(phi), ys=cy + rho * np.sin(phi))
    for cx, cy, r in tile.discs(rng.integers(1, 4), 4, 9):
        tile.hole(cx, cy, r)
    tile.nuclei(int(rng.integers(30, 70)), 2.2, 1.7, 2.2, irregular=0.1)


def lympho(tile):
    tile.eosin_bg = 0.25 + 0.08 * tile.noise(6)
    tile.nuclei(tile.density(0.75, 2.5), 2.5, 1.9, 2.4, irregular=0.1)


def debris(tile):             # necrosis: nuclear and eosin fragments, gaps
    rng = tile.rng
    tile.eosin_bg = 0.28 + 0.15 * tile.noise(7)
    holes = tile.noise(6) > 0.45
    xs, ys = tile.points(260)
    half = len(xs) // 2
    tile.nuclei(0, 1.6, 1.2, 1.9, irregular=0.6, xs=xs[:half], ys=ys[:half])
    draw_blobs(tile.eosin[1], rng, xs[half:], ys[half:], rng.uniform(1.0, 3.0, len(xs) - half),
               np.rint(rng.uniform(50, 90, len(xs) - half)).astype(int), irregular=0.6)
    tile.eosin_bg = np.where(holes, 0.05, tile.eosin_bg)


def mucosa(tile):
    tile.eosin_bg = 0.50 + 0.10 * tile.noise(7)
    tile.glands(tile.discs(8, 14, 24, gap=1.05), 2.3, lumen_frac=0.5, h_lo=1.4, h_hi=1.8)
    tile.nuclei(int(tile.rng.integers(25, 50)), 2.0, 1.5, 2.0, irregular=0.1)


def adipose(tile):            # fat cells: thin walls between Voronoi cells
    n = int(tile.rng.integers(6, 13))
    seeds = np.stack(tile.points(n, margin=20), axis=1)
    yy, xx = np.mgrid[0:tile.height, 0:tile.width].astype(np.float32)
    dist2 = (xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2
    nearest = np.argsort(dist2, axis=-1)[..., :2]
    d2 = np.take_along_axis(dist2, nearest, axis=-1)
    gap = np.linalg.norm(seeds[nearest[..., 0]] - seeds[nearest[..., 1]], axis=-1)
    to_bisector = (d2[..., 1] - d2[..., 0]) / (2 * gap)      # distance to the cell wall, px
    border = np.clip(1.2 - to_bisector / 1.2, 0, 1)
    tile.eosin_bg = 0.75 * border + 0.02
    tile.nuclei(int(tile.rng.integers(0, 4)), 1.8, 1.1, 1.4, elong=3.0)


def empty(tile):              # background, now and then a faint streak
    rng, width, height = tile.rng, tile.width, tile.height
    tile.eosin_bg = 0.03 + 0.025 * tile.noise(5)
    tile.hema_bg = np.full((height, width), 0.01, np.float32)
    if rng.random() < 0.5:
        x0, y0, x1, y1 = rng.uniform(0, 1, 4) * [width, height, width, height]
        tile.eosin[1].line((x0, y0, x1, y1), fill=12, width=int(rng.integers(3, 10)))


# BreakHis breast tumour subtypes (350x230 at 40X; `tile.zoom` enlarges features):

def adenosis(tile):           # many small glands in pink stroma
    zoom, r = tile.zoom, tile.r_benign
    tile.eosin_bg = 0.55 + 0.15 * tile.fibre(8 * zoom, tile.angle) + 0.05 * tile.noise(8)
    tile.glands(tile.discs(60, 8 * zoom, 12 * zoom, gap=1.15), r, lumen_frac=0.45)
    tile.nuclei(tile.density(0.02, r), r, 1.0, 1.3, elong=2.5, angles=tile.angle)


def fibroadenoma(tile):       # fibrous stroma, slit-like ducts lined by nuclei
    rng, zoom, angle, r = tile.rng, tile.zoom, tile.angle, tile.r_benign
    tile.eosin_bg = 0.55 + 0.3 * tile.fibre(7 * zoom, angle) + 0.05 * tile.noise(8)
    for cx, cy, _ in tile.discs(10, 20 * zoom, 26 * zoom, gap=0.8):
        length, phi = rng.uniform(18, 30) * zoom, angle + rng.uniform(-0.4, 0.4)
        dx, dy = length * math.cos(phi), length * math.sin(phi)
        tile.void[1].line((cx - dx, cy - dy, cx + dx, cy + dy), fill=255, width=max(2, int(3 * zoom)))
        t = np.linspace(-1, 1, max(4, int(2 * length / (2.4 * r))))
        off = 1.5 * zoom + r
        for sign in (-1, 1):
            xs = cx + t * dx - sign * off * math.sin(phi)
            ys = cy + t * dy + sign * off * math.cos(phi)
            tile.nuclei(0, r, 1.1, 1.4, irregular=0.1, elong=1.5, angles=phi, xs=xs, ys=ys)
    tile.nuclei(tile.density(0.03, r), r, 1.0, 1.3, elong=3.0, angles=angle)


def phyllodes_tumor(tile):    # cellular spindle stroma, leaf-like clefts
    rng, zoom, angle, r = tile.rng, tile.zoom, tile.angle, tile.r_benign
    tile.eosin_bg = 0.5 + 0.2 * tile.fibre(6 * zoom, angle, warp=6) + 0.05 * tile.noise(8)
    for _ in range(int(rng.integers(3, 6))):
        x0, y0 = rng.uniform(0, tile.width), rng.uniform(0, tile.height)
        box = (x0 - 60 * zoom, y0 - 40 * zoom, x0 + 60 * zoom, y0 + 40 * zoom)
        start = rng.uniform(0, 360)
        tile.void[1].arc(box, start, start + rng.uniform(60, 140), fill=255, width=max(2, int(3 * zoom)))
    tile.nuclei(tile.density(0.10, r), r, 1.0, 1.4, irregular=0.15, elong=2.5,
                angles=angle + rng.uniform(-0.3, 0.3, tile.density(0.10, r)))


def tubular_adenoma(tile):    # closely packed small tubules
    tile.eosin_bg = 0.5 + 0.05 * tile.noise(8)
    tile.glands(tile.discs(150, 6 * tile.zoom, 8 * tile.zoom, gap=1.02, tries=1500), tile.r_benign, lumen_frac=0.3)


def ductal_carcinoma(tile):   # solid nests of large pleomorphic nuclei
    width, height, r = tile.width, tile.height, tile.r_malignant
    tile.eosin_bg = 0.55 + 0.2 * tile.fibre(7 * tile.zoom, tile.angle)
    nests = tile.noise(9 / tile.zoom ** 0.5) > -0.25
    n = tile.density(0.50, r)
    xs, ys = tile.points(2 * n)
    keep = nests[np.clip(ys.astype(int), 0, height - 1), np.clip(xs.astype(int), 0, width - 1)]
    tile.nuclei(0, r, 1.6, 2.2, irregular=0.35, elong=1.3, xs=xs[keep][:n], ys=ys[keep][:n])
    tile.eosin_bg = np.where(nests, 0.35, tile.eosin_bg)


def lobular_carcinoma(tile):  # single files of dark nuclei in stroma
    rng, zoom = tile.rng, tile.zoom
    tile.eosin_bg = 0.5 + 0.25 * tile.fibre(8 * zoom, tile.angle)
    r = 0.85 * tile.r_malignant
    for _ in range(int(28 / zoom ** 0.5)):
        x0, y0, phi = rng.uniform(0, tile.width), rng.uniform(0, tile.height), tile.angle + rng.uniform(-0.5, 0.5)
        t = np.arange(-12, 13) * 2.3 * r
        tile.nuclei(0, r, 1.6, 2.1, irregular=0.3, xs=x0 + t * math.cos(phi), ys=y0 + t * math.sin(phi))
    tile.nuclei(tile.density(0.15, r), r, 1.6, 2.1, irregular=0.3)


def mucinous_carcinoma(tile):  # pale mucin lakes with floating tumour clusters
    rng, zoom, r = tile.rng, tile.zoom, tile.r_malignant
    tile.eosin_bg = 0.5 + 0.2 * tile.fibre(8 * zoom, tile.angle)
    lakes = tile.noise(6) > -0.2
    tile.eosin_bg = np.where(lakes, 0.10, tile.eosin_bg)
    tile.hema_bg = np.where(lakes, 0.22, tile.hema_bg).astype(np.float32)
    for cx, cy, rad in tile.discs(14, 14 * zoom, 24 * zoom):
        n = int(0.7 * rad * rad / r ** 2)
        rho, phi = rad * np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0, 2 * np.pi, n)
        fill_disc(tile.eosin[1], cx, cy, rad, 35)
        tile.nuclei(0, r, 1.6, 2.2, irregular=0.35, xs=cx + rho * np.cos(phi), ys=cy + rho * np.sin(phi))


def papillary_carcinoma(tile):  # fibrovascular fronds lined by dark nuclei, in empty space
    rng, zoom, r = tile.rng, tile.zoom, tile.r_malignant
    tile.void[1].rectangle((0, 0, tile.width, tile.height), fill=200)
    for _ in range(int(rng.integers(7, 11))):
        x, y, phi = rng.uniform(0, tile.width), rng.uniform(0, tile.height), rng.uniform(0, 2 * np.pi)
        for _ in range(int(36 / zoom ** 0.5)):
            step = 5 * zoom
            nx, ny = x + step * math.cos(phi), y + step * math.sin(phi)
            core = max(3, int(5 * zoom))
            tile.void[1].line((x, y, nx, ny), fill=0, width=core + int(6 * r))
            tile.eosin[1].line((x, y, nx, ny), fill=30, width=core)
            for sign in (-1, 1):
                off = core / 2 + 1.2 * r
                xs = np.array([x, nx]) - sign * off * math.sin(phi)
                ys = np.array([y, ny]) + sign * off * math.cos(phi)
                tile.nuclei(0, r, 1.6, 2.2, irregular=0.3, xs=xs, ys=ys)
            x, y, phi = nx, ny, phi + rng.normal(0, 0.35)


TISSUES = {"TUMOR": tumor, "STROMA": stroma, "COMPLEX": complex_stroma, "LYMPHO": lympho, "DEBRIS": debris,
           "MUCOSA": mucosa, "ADIPOSE": adipose, "EMPTY": empty,
           "A": adenosis, "F": fibroadenoma, "PT": phyllodes_tumor, "TA": tubular_adenoma,
           "DC": ductal_carcinoma, "LC": lobular_carcinoma, "MC": mucinous_carcinoma, "PC": papillary_carcinoma}


def render_histology(rng, width, height, tissue, zoom=1.0):
    """H&E-like RGB tile (uint8 H x W x 3) of a Kather class or a BreakHis subtype."""
    if tissue not in TISSUES:
        raise ValueError(f"unknown histology tissue {tissue!r}")
    tile = Tile(rng, width, height, zoom)
    TISSUES[tissue](tile)
    blur = 0.6 * max(1.0, zoom ** 0.5)
    void_map = as_float(tile.void[0], blur)
    hema_map = tile.hema_bg * (1 - void_map) + as_float(tile.hema[0], blur) * 2.55
    eosin_map = (tile.eosin_bg + as_float(tile.eosin[0], blur) * 2.55) * (1 - void_map) + 0.03 * void_map
    if tissue == "PC":  # fronds float in a pale empty space
        eosin_map += 0.05 * void_map
    return [he_to_rgb(rng, hema_map.astype(np.float32), eosin_map.astype(np.float32))]


# ----------------------------------------------------------------------------------------------
# Fundus: orange-red disc on black, bright optic disc, branching vessels, lesions by grade

# lesion counts per severity 0..4 (EyePACS / DeepDRiD grade; Messidor 0..3 maps to 0, 1, 2, 3.5)
RED_DOTS = (0, 8, 10, 12, 14)
HAEMORRHAGES = (0, 0, 3, 7, 9)
EXUDATES = (0, 0, 5, 10, 13)
COTTON_WOOL = (0, 0, 0, 2, 3)


class Fundus:
    """Geometry of one fundus picture: the eye circle (centre, radius, soft mask) in pixel coordinates."""

    def __init__(self, rng, width, height, radius_frac):
        self.rng, self.width, self.height = rng, width, height
        self.side = side = min(width, height)
        self.radius = radius_frac * height * rng.uniform(0.96, 1.03)
        self.cx = width / 2 + rng.uniform(-0.03, 0.03) * side
        self.cy = height / 2 + rng.uniform(-0.03, 0.03) * side
        yy, xx = np.ogrid[0:height, 0:width]
        self.yy, self.xx = yy.astype(np.float32), xx.astype(np.float32)
        self.rho2 = ((self.xx - self.cx) ** 2 + (self.yy - self.cy) ** 2) / np.float32(self.radius ** 2)
        self.mask = np.clip((1.0 - np.sqrt(self.rho2)) / 0.015, 0, 1)

    def inside(self, x, y):
        return math.hypot(x - self.cx, y - self.cy) < 0.97 * self.radius

    def lesion_points(self, disc, n):
        """n points inside the eye, away from the optic disc (x, y, r)."""
        rng, radius = self.rng, self.radius
        rr, th = radius * np.sqrt(rng.uniform(0.02, 0.72, 4 * n + 4)), rng.uniform(0, 2 * np.pi, 4 * n + 4)
        xs, ys = self.cx + rr * np.cos(th), self.cy + rr * np.sin(th)
        far = np.hypot(xs - disc[0], ys - disc[1]) > 1.6 * disc[2]
        return xs[far][:n], ys[far][:n]


def retina(fundus):
    """The orange-red background, darker at the rim and at the macula; and the camera's tint."""
    rng, rho2 = fundus.rng, fundus.rho2
    tint = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    shade = (1 + 0.06 * smooth_noise(rng, fundus.height, fundus.width, 9))
    image = np.stack([(0.82 - 0.25 * rho2) * shade, (0.36 - 0.16 * rho2) * shade, (0.12 - 0.05 * rho2) * shade],
                     axis=-1) * tint
    return image, tint


def optic_disc(fundus, nasal):
    """(x, y, r) of the optic disc, on the nasal side (right eye: right of the picture)."""
    rng, radius = fundus.rng, fundus.radius
    disc_x = fundus.cx + nasal * radius * rng.uniform(0.33, 0.42)
    disc_y = fundus.cy + radius * rng.uniform(-0.06, 0.06)
    return disc_x, disc_y, radius * rng.uniform(0.12, 0.15)


def grow_vessel(draw, rng, x, y, angle, width, steps, step, bend, inside, depth=0):
    for i in range(steps):
        angle += bend + rng.normal(0, 0.10)
        bend *= 0.96
        nx, ny = x + step * math.cos(angle), y + step * math.sin(angle)
        if not inside(nx, ny):
            return
        draw.line((x, y, nx, ny), fill=255, width=max(1, int(round(width))))
        x, y = nx, ny
        width = max(1.0, width * 0.97)
        if depth < 2 and i > 2 and rng.random() < 0.09:
            grow_vessel(draw, rng, x, y, angle + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9), width * 0.7,
                        int((steps - i) * 0.6), step, 0.0, inside, depth + 1)


def draw_vessels(fundus, disc, nasal):
    """Vessel canvas: two arcades around the macula and a nasal branch, up and down from the disc."""
    rng, radius = fundus.rng, fundus.radius
    vessels, draw = canvas(fundus.width, fundus.height)
    step = 0.05 * radius
    for sign in (-1, 1):
        for k, w in enumerate((0.028, 0.020)):
            start = sign * np.pi / 2 + rng.normal(0, 0.15) - sign * nasal * 0.25 * k
            grow_vessel(draw, rng, disc[0], disc[1], start, w * radius, 26, step, 0.075 * sign * nasal, fundus.inside)
        start = math.atan2(sign * 0.8, nasal) + rng.normal(0, 0.2)
        grow_vessel(draw, rng, disc[0], disc[1], start, 0.018 * radius, 14, step, 0.0, fundus.inside)
    return vessels


def draw_neovessels(fundus, disc, red_draw):
    """Proliferative retinopathy: neovascular tangles (at the disc or elsewhere), a pre-retinal haemorrhage."""
    rng, radius = fundus.rng, fundus.radius
    for _ in range(int(rng.integers(1, 3))):
        tx, ty = disc[:2] if rng.random() < 0.5 else (float(p[0]) for p in fundus.lesion_points(disc, 1))
        for _ in range(14):
            x, y = tx + rng.normal(0, 0.05) * radius, ty + rng.normal(0, 0.05) * radius
            phi = rng.uniform(0, 2 * np.pi)
            for _ in range(5):
                nx, ny = x + 0.03 * radius * math.cos(phi), y + 0.03 * radius * math.sin(phi)
                red_draw.line((x, y, nx, ny), fill=255, width=max(1, int(0.008 * radius)))
                x, y, phi = nx, ny, phi + rng.normal(0, 1.0)
    xs, ys = fundus.lesion_points(disc, 1)
    draw_blobs(red_draw, rng, xs, ys, fundus.side * 0.08, 220, irregular=0.1, elong=2.0, angles=0.0, corners=18)


def draw_lesions(fundus, disc, severity):
    """Canvases of the lesions of this grade: red (dots, blots, neovessels), yellow (hard exudates),
    white (cotton-wool spots)."""
    rng, radius, side = fundus.rng, fundus.radius, fundus.side
    red, red_draw = canvas(fundus.width, fundus.height)
    yellow, yellow_draw = canvas(fundus.width, fundus.height)
    white, white_draw = canvas(fundus.width, fundus.height)
    level = int(math.floor(severity))
    jitter = lambda n: int(rng.poisson(n)) if n else 0  # noqa: E731
    xs, ys = fundus.lesion_points(disc, jitter(RED_DOTS[level]))
    draw_blobs(red_draw, rng, xs, ys, side * rng.uniform(0.022, 0.03, len(xs)), 255, irregular=0.08, corners=14)
    xs, ys = fundus.lesion_points(disc, jitter(HAEMORRHAGES[level]))
    draw_blobs(red_draw, rng, xs, ys, side * rng.uniform(0.035, 0.055, len(xs)), 230, irregular=0.2, elong=1.5,
               corners=16)
    n_exudates = jitter(EXUDATES[level])
    for cluster in range((n_exudates + 3) // 4):   # exudates come in clusters
        x0, y0 = fundus.lesion_points(disc, 1)
        if len(x0):
            k = min(4, n_exudates - 4 * cluster)
            xs, ys = x0 + rng.normal(0, 0.06, k) * radius, y0 + rng.normal(0, 0.06, k) * radius
            draw_blobs(yellow_draw, rng, xs, ys, side * rng.uniform(0.02, 0.032, k), 255, irregular=0.25, corners=12)
    xs, ys = fundus.lesion_points(disc, jitter(COTTON_WOOL[level]))
    draw_blobs(white_draw, rng, xs, ys, side * rng.uniform(0.045, 0.065, len(xs)), 200, irregular=0.2, corners=14)
    if severity >= 3.5:
        draw_neovessels(fundus, disc, red_draw)
    return red, yellow, white


def render_fundus(rng, width, height, severity, eye, radius_frac):
    """Fundus photograph (uint8 H x W x 3): eye circle of radius radius_frac * height."""
    fundus = Fundus(rng, width, height, radius_frac)
    xx, yy, radius, side = fundus.xx, fundus.yy, fundus.radius, fundus.side
    nasal = 1.0 if eye == "right" else -1.0
    image, tint = retina(fundus)
    disc = optic_disc(fundus, nasal)
    macula = np.exp(-((xx - (fundus.cx - nasal * radius * 0.05)) ** 2 + (yy - fundus.cy) ** 2)
                    / np.float32(2 * (0.12 * radius) ** 2))   # on the temporal side
    image *= (1 - 0.3 * macula)[..., None]
    vessels = draw_vessels(fundus, disc, nasal)
    red, yellow, white = draw_lesions(fundus, disc, severity)

    # --- paint the layers over the retina, then the camera: exposure, noise, a slight blur
    disc_x, disc_y, disc_r = disc
    bright_disc = np.exp(-0.5 * (((xx - disc_x) ** 2 + (yy - disc_y) ** 2) / np.float32(disc_r ** 2)) ** 2)
    for alpha, colour in ((bright_disc, (1.0, 0.86, 0.55)), (as_float(vessels, 0.6 * side / 256), (0.50, 0.10, 0.07)),
                          (as_float(red, 1.0 * side / 256), (0.42, 0.04, 0.03)),
                          (as_float(yellow, 0.6 * side / 256), (1.0, 0.88, 0.35)),
                          (as_float(white, 2.0 * side / 256), (0.95, 0.85, 0.7))):
        alpha = alpha[..., None]
        image += alpha * (np.array(colour, np.float32) * tint - image)
    image *= np.float32(rng.uniform(0.8, 1.15)) * fundus.mask[..., None]
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(0.012)
    picture = np.asarray(Image.fromarray(to_uint8(image)).filter(ImageFilter.GaussianBlur(0.5)))
    return [(picture * (fundus.mask[..., None] > 0)).astype(np.uint8)]   # outside the eye stays black


# ----------------------------------------------------------------------------------------------
# Image jobs: (paths, renderer, params, seed) drawn in worker processes

def copy_picture(rng, source, width, height, mask_size):
    """A picture of another demo data set, resized to this one's size (how public data sets borrow
    each other's images), with a lung mask drawn as two ellipses."""
    picture = Image.open(source).convert("L").resize((width, height), Image.BILINEAR)
    yy, xx = np.ogrid[0:mask_size[1], 0:mask_size[0]]
    u, v = xx / mask_size[0], yy / mask_size[1]
    lungs = sum(((u - cx) / 0.16) ** 2 + ((v - 0.47) / 0.31) ** 2 < 1 for cx in (0.315, 0.685))
    return [np.asarray(picture), to_uint8(lungs > 0)]


RENDERERS = {"cxr": render_cxr, "histology": render_histology, "fundus": render_fundus, "copy": copy_picture}


def save_image(path, array):
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        Image.fromarray(array).save(path, format="PNG", compress_level=6)
    elif suffix in (".jpg", ".jpeg"):
        Image.fromarray(array).save(path, format="JPEG", quality=90)
    elif suffix in (".tif", ".tiff"):
        # metadata=None: no JSON description; tifffile writes no DateTime tag unless asked to.
        tifffile.imwrite(path, array, photometric="rgb" if array.ndim == 3 else "minisblack", metadata=None)
    else:
        raise ValueError(f"{path}: unknown image format")


def run_job(job):
    paths, renderer, params, seed = job
    arrays = RENDERERS[renderer](np.random.default_rng(seed), **params)
    for path, array in zip(paths, arrays):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_image(path, array)


class Planner:
    """Collects the image jobs of one data set; every job gets its own seed."""

    def __init__(self, root, seed, key):
        self.root, self.jobs = Path(root), []
        self.base_seed = (seed, DATASET_KEYS.index(key))

    def add(self, relpaths, renderer, **params):
        relpaths = (relpaths,) if isinstance(relpaths, str) else tuple(relpaths)
        paths = tuple(str(self.root / p) for p in relpaths)
        self.jobs.append((paths, renderer, params, (*self.base_seed, 1, len(self.jobs))))

    def add_again(self, relpaths, *, of):
        """The drawing of job `of` once more (same renderer, parameters and seed) under other names."""
        _, renderer, params, seed = self.jobs[of]
        self.jobs.append((tuple(str(self.root / p) for p in relpaths), renderer, params, seed))


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def scaled(n, scale, minimum):
    return max(minimum, int(round(n * scale)))


def split_counts(total, fractions, minimum):
    """Integer counts per class summing to `total` (at least `minimum` each)."""
    counts = np.maximum(minimum, np.floor(np.array(fractions) * total).astype(int))
    order = np.argsort(-np.array(fractions))
    i = 0
    while counts.sum() < total:
        counts[order[i % len(counts)]] += 1
        i += 1
    while counts.sum() > total and counts.max() > minimum:
        counts[int(np.argmax(counts))] -= 1
    return counts.tolist()


def pair_eyes(rng, grades):
    """Pair a list of image grades into (left, right) eyes with similar grades."""
    grades = np.array(grades)
    order = np.argsort(grades + rng.uniform(0, 1.6, len(grades)), kind="stable")
    pairs = order.reshape(-1, 2)
    pairs = pairs[rng.permutation(len(pairs))]
    swap = rng.random(len(pairs)) < 0.5
    pairs[swap] = pairs[swap][:, ::-1]
    return [(int(grades[a]), int(grades[b])) for a, b in pairs]


# ----------------------------------------------------------------------------------------------
# One planner per data set: writes the metadata files, returns the image jobs and a summary

def plan_chestxray14(root, rng, planner, scale):
    n_patients = scaled(80, scale, 8)
    patient_ids = np.sort(rng.choice(np.arange(1, 30806), n_patients, replace=False))
    finding_cycle = list(rng.permutation(CXR14_FINDINGS))
    rows, test_patients = [], set(patient_ids[rng.permutation(n_patients)[: max(1, round(0.2 * n_patients))]].tolist())
    sizes = ((2500, 2048, 0.168), (2048, 2500, 0.168), (2992, 2991, 0.143), (3056, 2544, 0.139), (2021, 2021, 0.194311))
    for p, pid in enumerate(patient_ids.tolist()):
        chronic = []
        if rng.random() > 0.3:     # ~70 % of patients have findings, drawn round-robin so every finding appears
            for _ in range(1 + int(rng.random() < 0.4)):
                chronic.append(finding_cycle.pop(0))
                finding_cycle.append(chronic[-1])
        n_follow = int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.2, 0.3, 0.2, 0.15]))
        age, gender = int(rng.integers(18, 86)), ("M", "F")[rng.integers(2)]
        for follow in range(n_follow):
            found = {f for f in chronic if rng.random() < 0.85}
            if chronic and rng.random() < 0.2:
                found.add(CXR14_FINDINGS[rng.integers(len(CXR14_FINDINGS))])
            labels = "|".join(sorted(found)) if found else "No Finding"
            w, h, spacing = sizes[rng.integers(len(sizes))]
            name = f"{pid:08d}_{follow:03d}.png"
            rows.append([name, labels, follow, pid, min(95, age + follow // 2), gender,
                         ("PA", "AP")[int(rng.random() < 0.4)], w, h, spacing, spacing])
    for i, row in enumerate(rows):  # the Kaggle layout: images_001/images/ ... (100 per folder here)
        planner.add(f"images_{i // 100 + 1:03d}/images/{row[0]}", "cxr", width=SIZE_CXR14[0], height=SIZE_CXR14[1],
                    findings=tuple(row[1].split("|")) if row[1] != "No Finding" else ())
    with open(root / "Data_Entry_2017_v2020.csv", "w", newline="") as f:
        f.write(CXR14_HEADER + "\n")
        csv.writer(f, lineterminator="\n").writerows(rows)
    test = sorted(r[0] for r in rows if r[3] in test_patients)
    train_val = sorted(r[0] for r in rows if r[3] not in test_patients)
    (root / "train_val_list.txt").write_text("".join(f"{n}\n" for n in train_val))
    (root / "test_list.txt").write_text("".join(f"{n}\n" for n in test))
    return f"{len(rows)} images of {n_patients} patients ({len(test)} in test_list.txt)"


def plan_breakhis(root, rng, planner, scale):
    slides_per_type, per_mag = scaled(3, scale, 2), scaled(2, scale, 1)
    numbers = rng.choice(np.arange(1000, 30000), slides_per_type * len(BREAKHIS_TYPES), replace=False)
    suffixes = ("", "", "", "AB", "CD", "EF", "F", "A")
    n, k = 0, 0
    for folder, (letter, code) in BREAKHIS_TYPES.items():
        label = "benign" if letter == "B" else "malignant"
        for _ in range(slides_per_type):
            slide = f"SOB_{letter}_{code}-14-{numbers[k]}{suffixes[rng.integers(len(suffixes))]}"
            k += 1
            for mag in BREAKHIS_ZOOM:
                for seq in range(1, per_mag + 1):
                    rel = (f"BreaKHis_v1/histology_slides/breast/{label}/SOB/{folder}/{slide}/{mag}X/"
                           f"{slide}-{mag}-{seq:03d}.png")
                    planner.add(rel, "histology", width=SIZE_BREAKHIS[0], height=SIZE_BREAKHIS[1], tissue=code,
                                zoom=BREAKHIS_ZOOM[mag])
                    n += 1
    return f"{n} images of {k} slides (8 subtypes x {slides_per_type} slides x 4 magnifications x {per_mag})"


def fundus_params(size, radius_frac, severity, eye):
    return dict(width=size[0], height=size[1], severity=severity, eye=eye, radius_frac=radius_frac)


def plan_eyepacs(root, rng, planner, scale):
    fractions = (0.40, 0.15, 0.20, 0.125, 0.125)   # imbalanced like the real set, every grade usable
    n_train, n_test = scaled(100, scale, 8), scaled(20, scale, 4)
    ids = rng.choice(np.arange(1, 44350), n_train + n_test, replace=False)
    train_ids, test_ids = np.sort(ids[:n_train]), np.sort(ids[n_train:])
    out = {}
    for split, pids in (("train", train_ids), ("test", test_ids)):
        counts = split_counts(2 * len(pids), fractions, 2 if split == "train" else 1)
        pairs = pair_eyes(rng, np.repeat(np.arange(5), counts))
        rows = []
        for pid, (left, right) in zip(pids.tolist(), pairs):
            usage = ("Public", "Private")[int(rng.random() < 0.7)]
            for eye, grade in (("left", left), ("right", right)):
                rows.append([f"{pid}_{eye}", grade, usage])
                # radius 0.55 x height: the circle is cut off at top and bottom, as in the Kaggle images
                planner.add(f"{split}/{pid}_{eye}.jpeg", "fundus", **fundus_params(SIZE_EYEPACS, 0.55, grade, eye))
        out[split] = rows
    write_csv(root / "trainLabels.csv", ("image", "level"), [r[:2] for r in out["train"]])
    write_csv(root / "retinopathy_solution.csv", ("image", "level", "Usage"), out["test"])
    grades = np.bincount([r[1] for r in out["train"]], minlength=5).tolist()
    return f"{len(out['train'])} train images (grades 0-4: {grades}) + {len(out['test'])} test images"


def plan_shenzhen(root, rng, planner, scale):
    per_class = scaled(50, scale, 6)
    readings = root / "ChinaSet_AllFiles" / "ClinicalReadings"
    readings.mkdir(parents=True)
    zones = ("left upper field", "right upper field", "bilateral upper fields", "right apex", "left apex")
    for i in range(2 * per_class):           # normals first, then TB, as in the real numbering
        label = int(i >= per_class)
        name = f"CHNCXR_{i + 1:04d}_{label}"
        size = int(rng.integers(256, 301)), int(rng.integers(256, 301))
        planner.add(f"ChinaSet_AllFiles/CXR_png/{name}.png", "cxr", width=size[0], height=size[1],
                    findings=("tuberculosis",) if label else ())
        sex, age = ("male", "female")[rng.integers(2)], int(rng.integers(18, 80))
        finding = f"PTB in the {zones[rng.integers(len(zones))]}" if label else "normal"
        (readings / f"{name}.txt").write_text(f"{sex} {age}yrs\n{finding}\n")
    return f"{2 * per_class} images ({per_class} normal, {per_class} tuberculosis)"


def plan_covid19_radiography(root, rng, planner, scale):
    """As the real database: per class `per_class` drawn images and their lung masks; like it, too, a
    few pictures that are not its own. Two are ChestX-ray14 radiographs resized to 299 px (the real
    Normal class was partly assembled from NIH images, as COVID images have been), and one COVID
    image is there twice under two names (as COVID-18.png and COVID-21.png of the real one): what
    check_overlap.py and prepare_data.py find."""
    per_class = scaled(30, scale, 6)
    findings = {"COVID": ("covid",), "Lung_Opacity": ("lung_opacity",), "Normal": (),
                "Viral Pneumonia": ("viral_pneumonia",)}
    borrowed = sorted((Path(root).parent / "chestxray14").glob("images_*/images/*.png"))  # drawn just before
    copies = [borrowed[i] for i in rng.choice(len(borrowed), 2, replace=False)] if len(borrowed) >= 2 else []
    for cls in COVID_CLASSES:
        base = f"COVID-19_Radiography_Dataset/{cls}"
        names = [(f"{base}/images/{cls}-{n}.png", f"{base}/masks/{cls}-{n}.png") for n in range(1, per_class + 1)]
        mine = names[:-1] if copies and cls in ("COVID", "Normal") else names
        for paths in mine:
            planner.add(paths, "cxr", width=SIZE_COVID[0], height=SIZE_COVID[1], findings=findings[cls],
                        mask_size=SIZE_COVID_MASK)
        if len(mine) < len(names):
            planner.add(names[-1], "copy", source=str(copies.pop()), width=SIZE_COVID[0], height=SIZE_COVID[1],
                        mask_size=SIZE_COVID_MASK)
        if cls == "COVID":
            twin = f"{base}/images/{cls}-{per_class + 1}.png", f"{base}/masks/{cls}-{per_class + 1}.png"
            planner.add_again(twin, of=len(planner.jobs) - 3)  # the same drawing as COVID-<per_class - 2>
    extra = " (2 of them ChestX-ray14 radiographs, 1 COVID picture twice)" if borrowed else \
        " (1 COVID picture twice; no ChestX-ray14 copies: write chestxray14 in the same run for those)"
    return f"{4 * per_class + 1} images ({per_class} per class, COVID {per_class + 1}){extra} + lung masks"


def plan_kather2016(root, rng, planner, scale):
    per_class = scaled(16, scale, 6)
    names = set()
    for folder in KATHER_FOLDERS:
        for _ in range(per_class):
            while True:   # real pattern, e.g. 1A11_CRC-Prim-HE-07_022.tif_Row_601_Col_151.tif
                name = (f"{int(rng.integers(0x1000, 0x20000)):X}_CRC-Prim-HE-{int(rng.integers(1, 11)):02d}_"
                        f"{int(rng.integers(1, 40)):03d}.tif_Row_{150 * int(rng.integers(0, 30)) + 1}_"
                        f"Col_{150 * int(rng.integers(0, 30)) + 1}.tif")
                if name not in names:
                    break
            names.add(name)
            planner.add(f"Kather_texture_2016_image_tiles_5000/{folder}/{name}", "histology",
                        width=SIZE_KATHER[0], height=SIZE_KATHER[1], tissue=folder.split("_", 1)[1])
    return f"{8 * per_class} images ({per_class} per class)"


def plan_messidor(root, rng, planner, scale):
    per_base = scaled(10, scale, 2)
    total = per_base * len(MESSIDOR_BASES)
    grades = np.repeat(np.arange(4), split_counts(total, (0.375, 0.175, 0.2, 0.25), 2))
    grades = grades[rng.permutation(total)]
    days = np.datetime64("2005-01-03") + rng.choice(np.arange(600), total)
    numbers = rng.choice(np.arange(10000, 100000), total, replace=False)
    k = 0
    for base in MESSIDOR_BASES:
        department, code = MESSIDOR_DEPARTMENTS[base[0]]
        book = xlwt.Workbook(encoding="utf-8")
        sheet = book.add_sheet("Feuil1")
        for col, name in enumerate(MESSIDOR_COLUMNS):
            sheet.write(0, col, name)
        for row in range(1, per_base + 1):
            grade = int(grades[k])
            name = f"{str(days[k]).replace('-', '')}_{numbers[k]}_{code}_PP.tif"
            risk = 0 if grade < 2 else int(rng.choice([0, 1, 2], p=[0.4, 0.3, 0.3]))
            for col, value in enumerate((name, department, float(grade), float(risk))):
                sheet.write(row, col, value)
            planner.add(f"Base{base}/{name}", "fundus",
                        **fundus_params(SIZE_MESSIDOR, 0.47, 3.5 if grade == 3 else grade, ("left", "right")[k % 2]))
            k += 1
        (root / f"Base{base}").mkdir()
        book.save(str(root / f"Base{base}" / f"Annotation_Base{base}.xls"))
    counts = np.bincount(grades, minlength=4).tolist()
    return f"{total} images in 12 bases (grades 0-3: {counts})"


def plan_deepdrid(root, rng, planner, scale):
    n_train, n_val = scaled(30, scale, 5), scaled(10, scale, 3)
    summary, pid = [], 0
    for split, n_patients in (("training", n_train), ("validation", n_val)):
        folder = f"regular_fundus_images/regular-fundus-{split}"
        (root / folder).mkdir(parents=True)
        eye_grades = np.repeat(np.arange(5), split_counts(2 * n_patients, (0.3, 0.15, 0.2, 0.2, 0.15), 1))
        rows = []
        for left, right in pair_eyes(rng, eye_grades):
            pid += 1
            patient_level = max(left, right)
            for eye, grade in (("l", left), ("r", right)):
                for k in (1, 2):
                    image_id = f"{pid}_{eye}{k}"
                    rows.append([pid, image_id, f"\\regular-fundus-{split}\\{pid}\\{image_id}.jpg",
                                 int(rng.random() < 0.3), grade if eye == "l" else "", grade if eye == "r" else "",
                                 patient_level, int(rng.choice([4, 6, 8, 10])), int(rng.choice([6, 8, 10])),
                                 int(rng.choice([0, 1, 4, 6, 8, 10]))])
                    planner.add(f"{folder}/Images/{pid}/{image_id}.jpg", "fundus",
                                **fundus_params(SIZE_DEEPDRID, 0.46, grade, "left" if eye == "l" else "right"))
        write_csv(root / folder / f"regular-fundus-{split}.csv", DEEPDRID_COLUMNS, rows)
        summary.append(f"{split} {n_patients} patients / {len(rows)} images")
    return ", ".join(summary)


def demo_record(key, seed, scale, jobs, contents) -> dict:
    """DEMO_DATA.json of one data set: what a manifest made from it, and the report, say about its data."""
    def span(values):
        return f"{values[0]}" if len(values) == 1 else f"{values[0]}-{values[-1]}"

    widths = sorted({params["width"] for _, _, params, _ in jobs if "width" in params})
    heights = sorted({params["height"] for _, _, params, _ in jobs if "height" in params})
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    version = tomllib.loads(pyproject.read_text())["project"]["version"] if pyproject.is_file() else None
    return {"generated": True, "generator": "tools/make_demo_data.py", "dataset": key, "seed": seed, "scale": scale,
            "image_size": f"{span(widths)}x{span(heights)} px" if widths and heights else None,
            "contents": contents, "kit_version": version,
            "note": "drawn pictures in the data set's native layout, not images of patients: numbers made from "
                    "them say nothing about medicine"}


PLANNERS = {"chestxray14": plan_chestxray14, "breakhis": plan_breakhis, "eyepacs": plan_eyepacs,
            "shenzhen": plan_shenzhen, "covid19_radiography": plan_covid19_radiography,
            "kather2016": plan_kather2016, "messidor": plan_messidor, "deepdrid": plan_deepdrid}


def main(args):
    out_dir = Path(args.out)
    keys = [k for k in DATASET_KEYS if k in set(args.datasets)]   # fixed order whatever the flag order
    if not 0.01 <= args.scale <= 100:
        raise SystemExit(f"--scale {args.scale}: expected a value in [0.01, 100]")
    if args.seed < 0:
        raise SystemExit(f"--seed {args.seed}: expected an integer >= 0")
    if args.workers < 0:
        raise SystemExit(f"--workers {args.workers}: expected 0 (no processes) or more")

    # --- refuse before writing anything if a finished data set would be overwritten
    for key in keys:
        target = out_dir / key
        if target.exists() and not target.is_dir():
            raise SystemExit(f"{target}: exists and is not a folder")
        if target.is_dir() and any(target.iterdir()) and not args.overwrite:
            raise SystemExit(f"{target}: folder exists and is not empty (pass --overwrite to replace it)")
    out_dir.mkdir(parents=True, exist_ok=True)

    # --- plan and draw each data set into <key>.tmp, then rename it to <key>
    # The pool is a context manager: it terminates the workers if anything fails or is interrupted.
    with (get_context().Pool(args.workers) if args.workers > 0 else contextlib.nullcontext()) as pool:
        for key in keys:
            start = time.perf_counter()
            tmp_dir, target = out_dir / f"{key}.tmp", out_dir / key
            if tmp_dir.exists():   # left over by a killed run
                shutil.rmtree(tmp_dir)
            tmp_dir.mkdir()
            planner = Planner(tmp_dir, args.seed, key)
            rng = np.random.default_rng((args.seed, DATASET_KEYS.index(key), 0))
            summary = PLANNERS[key](tmp_dir, rng, planner, args.scale)
            if pool is None:
                for job in planner.jobs:
                    run_job(job)
            else:
                for _ in pool.imap_unordered(run_job, planner.jobs, chunksize=4):
                    pass
            files.write_json(demo_record(key, args.seed, args.scale, planner.jobs, summary), tmp_dir / "DEMO_DATA.json")
            if target.exists():    # --overwrite (checked above): swap, then delete the old copy
                old = out_dir / f"{key}.old"
                if old.exists():
                    shutil.rmtree(old)
                os.replace(target, old)
                os.replace(tmp_dir, target)
                shutil.rmtree(old)
            else:
                os.replace(tmp_dir, target)
            print(f"{key}: {summary} -> {target} ({time.perf_counter() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
