"""The same picture in two data sets, or twice in one: a thumbnail per image, a nearest-neighbour
search, and an alignment that says whether two thumbnails are one picture.

Public medical data sets are built from each other (the COVID-19 Radiography Database holds
ChestX-ray14 radiographs) and hold twins under two names, so a target's test image can have been
seen in pretraining, or sit in train and test at once. check_overlap.py runs this module over
the study's manifests; prepare_data.py runs it inside one data set.

    thumbs = thumbnails("OUT/manifests/covid19_radiography.csv")   # once per image, then reused
    pairs = same_pictures(thumbs_of_target, thumbs_of_source)       # (query, match, distance)

How two images are found to be one picture (docs/data.md, "The same picture twice"):

1. **Thumbnail** (once per image, kept in ``<manifest folder>/cache/``): the whole picture as it
   is stored, grey (luma), its values stretched to 0..255, resized to 64 x 64 px. Resizing,
   re-encoding, 8 <-> 16 bit and grey <-> RGB barely change it.
2. **Candidates**: each thumbnail seen in three frames (as stored; centred and scaled by its
   intensity moments; registered to the domain's mean picture by its row and column profiles),
   each frame giving a 16 x 16 blurred, normalised descriptor; for every query image the K most
   similar images of the other set in each frame are its candidates (faiss, exact inner product).
   A border crop moves a picture in the first frame but hardly in the other two.
3. **Alignment**: each candidate pair is aligned by a scale and shift per axis and a linear
   brightness/contrast map (Gauss-Newton, coarse to fine), started from the frame that matched.
   The distance is the 95th percentile of the aligned residual over the picture, in standard
   deviations of the query, leaving out pixels that are saturated in either image (a brightness
   change clips them). One picture: well under MATCH_DISTANCE; two patients with the same anatomy
   and layout (the demo's radiographs): well over it.

What it does not catch: a flip or rotation, a crop of more than about 5 % a side, a picture
pasted into another, or heavy edits (docs/data.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

THUMB = 64                  # px, side of a stored thumbnail
THUMB_VERSION = 2           # bump when thumbnail() changes: stored thumbnails are then rebuilt
COARSE = 16                 # side of a candidate descriptor (16 x 16 = 256 values)
CANDIDATES = 5              # nearest images per query and frame that are aligned and measured
SATURATED = 2 / 255         # thumbnail values this close to 0 or 1 are left out of the residual
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# --------------------------------------------------------------------------- thumbnails

def thumbnail(picture) -> np.ndarray:
    """(H, W) grey or (H, W, C) colour pixels of any dtype, or an 8-bit grey or RGB PIL image ->
    (THUMB, THUMB) uint8: luma (ITU-R 601), resized with antialiasing, stretched to 0..255 (the same
    arithmetic whichever reader decoded the file; 8-bit pictures stay in PIL's C code)."""
    from PIL import Image

    if isinstance(picture, Image.Image) and picture.mode in ("L", "RGB"):
        image = picture
    else:
        x = np.asarray(picture)
        if x.ndim == 3 and x.shape[-1] in (2, 4):  # grey + alpha, RGBA: the alpha goes
            x = x[..., :-1]
        if x.ndim == 3 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] != 3):
            raise ValueError(f"expected a 2-D grey or RGB picture, got pixel array shape {np.shape(picture)}")
        if x.dtype == np.uint8:
            image = Image.fromarray(np.ascontiguousarray(x))
        else:
            x = np.nan_to_num(x.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            image = Image.fromarray(x @ np.array([0.299, 0.587, 0.114], np.float32) if x.ndim == 3 else x, "F")
    if image.mode != "F":
        image = (image.convert("L") if image.mode == "RGB" else image).convert("F")
    small = np.asarray(image.resize((THUMB, THUMB), Image.BILINEAR, reducing_gap=3.0), dtype=np.float32)
    low, high = float(small.min()), float(small.max())
    if high <= low:
        raise ValueError("every pixel has the same value")
    return np.clip(np.rint((small - low) / (high - low) * 255), 0, 255).astype(np.uint8)


def _pil_picture(path: str):
    """The picture through PIL: an 8-bit grey or RGB image as PIL holds it (JPEGs decoded at a reduced
    size: a 64 px thumbnail needs no more), the pixels of any other mode, or None for a file PIL cannot
    read (DICOM, NIfTI, float TIFF): the kit's own reader takes it."""
    from PIL import Image

    if not path.lower().endswith(PIL_SUFFIXES):
        return None
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":  # decoded at 1/2 to 1/8 size, a colour one as its luma (Y) alone
                image.draft("L" if image.mode in ("RGB", "YCbCr") else image.mode, (4 * THUMB, 4 * THUMB))
            if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
            image.load()
            if image.mode in ("L", "RGB"):
                return image
            pixels = np.asarray(image)
    except Exception:
        return None
    return pixels if pixels.dtype != object and pixels.ndim in (2, 3) else None


_READER = None  # the kit's reader (DICOM windowing, NIfTI, ITK), built once per process


def _kit_pixels(path: str) -> np.ndarray:
    """The picture through the kit's own reader (DICOM windowed as a viewer shows it, NIfTI, ITK)."""
    global _READER
    import transforms

    if _READER is None:
        _READER = transforms.picture_reader()
    image = _READER({"image": path})["image"]
    return np.moveaxis(np.asarray(image), 0, -1)  # (C, H, W) -> (H, W, C)


def read_thumbnail(path: str) -> tuple[np.ndarray | None, str | None]:
    """(thumbnail, None), or (None, the reason) for a file that cannot be read as one picture."""
    try:
        picture = _pil_picture(path)
        return thumbnail(_kit_pixels(path) if picture is None else picture), None
    except Exception as err:
        return None, str(err).splitlines()[0].removeprefix(f"{path}: ") or type(err).__name__


def _start_worker():
    """One image per process at a time: torch, where the kit's reader needs it in this process, takes one
    thread (torch is not imported for it: a PIL picture needs none, and the import costs seconds)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@dataclasses.dataclass
class Thumbnails:
    """The thumbnails of one manifest: `images` (paths, manifest order, each once), `thumbs`
    (len(images), THUMB, THUMB) uint8, `bad` {path: reason} for images that could not be read
    (their rows in `thumbs` are zeros and never match), `domain`, `key`."""
    key: str
    domain: str
    images: list
    thumbs: np.ndarray
    bad: dict


def thumbnail_file(manifest_csv, images) -> Path:
    """Where the thumbnails of a manifest's images are kept: <manifest folder>/cache/<key>_thumbs_<hash>.npz,
    the hash over THUMB_VERSION and every image's path, size and modification time."""
    from .cache import cache_folder, file_stats

    digest = hashlib.sha1(f"thumbs {THUMB_VERSION} {THUMB}\n".encode())
    for path, stat in zip(images, file_stats(images)):
        digest.update(f"{path}\t{stat}\n".encode())
    return cache_folder(manifest_csv) / f"{Path(manifest_csv).stem}_thumbs_{digest.hexdigest()[:12]}.npz"


def save_thumbnails(path, images, thumbs, bad) -> None:
    """Keep thumbnails (written whole, then renamed), replacing the earlier files of the same manifest."""
    from .files import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with write_atomic(path) as handle:
        np.savez(handle, images=np.array(images, dtype=str), thumbs=thumbs, bad_images=np.array(list(bad), dtype=str),
                 bad_reasons=np.array(list(bad.values()), dtype=str))
    stem = path.name.rsplit("_thumbs_", 1)[0]
    for old in path.parent.glob(f"{stem}_thumbs_*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def thumbnails(images, *, key: str, domain: str, manifest_csv, workers: int | None = None,
               progress: bool | None = None) -> Thumbnails:
    """The thumbnail of each image (paths, each once): read from the manifest's thumbnail file when it is
    up to date, else made from the image files (in `workers` processes; default all cores) and kept.
    progress: a progress bar (None: on a terminal only)."""
    from tqdm import tqdm

    from .cli import available_cores

    images = list(dict.fromkeys(map(str, images)))
    path = thumbnail_file(manifest_csv, images)
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            if stored["images"].tolist() == images:
                bad = dict(zip(stored["bad_images"].tolist(), stored["bad_reasons"].tolist()))
                return Thumbnails(key, domain, images, stored["thumbs"], bad)
    workers = workers or available_cores()
    thumbs = np.zeros((len(images), THUMB, THUMB), dtype=np.uint8)
    bad = {}
    if workers > 1 and len(images) > 64:
        pool = multiprocessing.Pool(workers, _start_worker)
        results = pool.imap(read_thumbnail, images, chunksize=32)
    else:
        pool, results = None, map(read_thumbnail, images)
    try:
        for i, (thumb, reason) in enumerate(tqdm(results, total=len(images), desc=f"thumbnails {key}",
                                                 disable=None if progress is None else not progress,
                                                 dynamic_ncols=True)):
            if thumb is None:
                bad[images[i]] = reason
            else:
                thumbs[i] = thumb
    finally:
        if pool is not None:
            pool.terminate()
    save_thumbnails(path, images, thumbs, bad)
    return Thumbnails(key, domain, images, thumbs, bad)


def manifest_thumbnails(manifest_csv, df, meta, **kwargs) -> Thumbnails:
    """thumbnails() of a loaded manifest (df, meta: manifests.load_manifest)."""
    return thumbnails(df["image"], key=meta["key"], domain=meta["domain"], manifest_csv=manifest_csv, **kwargs)


# --------------------------------------------------------------------------- frames and descriptors

IDENTITY = (1.0, 1.0, 0.0, 0.0)  # (scale x, scale y, shift x, shift y): frame coords g -> picture coords s g + t


def _as_float(thumbs):
    """uint8 thumbnails -> float32 in [0, 1]; float images pass through."""
    import torch

    if isinstance(thumbs, torch.Tensor) and thumbs.is_floating_point():
        return thumbs
    thumbs = np.ascontiguousarray(thumbs)
    return torch.from_numpy(thumbs).float().mul_(1 / 255) if thumbs.dtype == np.uint8 else \
        torch.as_tensor(thumbs, dtype=torch.float32) / 255.0


_KERNELS = {}


def _blur_matrix(n: int, sigma: float):
    """(n, n) matrix that blurs a length-n signal with a Gaussian of `sigma` px, edges replicated."""
    import torch

    key = (n, round(sigma, 4))
    if key not in _KERNELS:
        radius = max(1, int(3 * sigma + 0.5))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        weights = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
        weights = weights / weights.sum()
        matrix = torch.zeros(n, n)
        rows = torch.arange(n)[:, None]
        cols = (rows + offsets.long()[None]).clamp(0, n - 1)
        matrix.index_put_((rows.expand_as(cols), cols), weights.expand(n, -1), accumulate=True)
        _KERNELS[key] = matrix
    return _KERNELS[key]


def _blur(x, sigma: float):
    """Gaussian blur (sigma in px) of (N, H, W), edges replicated: two matrix products, which on a CPU
    run far faster than a convolution over thousands of small images."""
    if sigma <= 0:
        return x
    rows, cols = _blur_matrix(x.shape[-2], sigma), _blur_matrix(x.shape[-1], sigma)
    return rows @ x @ cols.T


def _smooth(x, sigma: float):
    """About _blur(x, sigma), computed at a lower resolution for a wide blur (2 x 2 means halve the
    side while sigma >= 2 px): grid_sample reads it in the same normalised coordinates."""
    import torch.nn.functional as F

    while sigma >= 2 and x.shape[-1] % 2 == 0 and x.shape[-1] > 8:
        x = F.avg_pool2d(x[:, None], 2)[:, 0]
        sigma = (sigma ** 2 - 0.25) ** 0.5 / 2  # the 2 x 2 mean is about a blur of 0.5 px
    return _blur(x, sigma)


def _standardise(x, weights=None):
    """Zero mean and unit norm over the last two axes (weighted where `weights` is given)."""
    if weights is None:
        x = x - x.mean(dim=(-2, -1), keepdim=True)
        return x / (x.flatten(-2).norm(dim=-1)[..., None, None] + 1e-8)
    total = weights.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
    x = (x - (x * weights).sum(dim=(-2, -1), keepdim=True) / total) * weights
    return x / (x.flatten(-2).norm(dim=-1)[..., None, None] + 1e-8)


def _base_grid(n: int, half: float):
    """(1, n, n, 2) points of an n x n grid over [-half, half]^2, x first (grid_sample's order)."""
    import torch

    g = torch.linspace(-half, half, n)
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


def _grid(theta, n: int, half: float):
    """Each frame's n x n grid over [-half, half]^2 in picture coordinates: s g + t per axis."""
    import torch

    return torch.addcmul(theta[:, None, None, 2:], _base_grid(n, half), theta[:, None, None, :2])


def _sample(images, theta, n: int, half: float):
    """images (N, H, W) sampled bilinearly on each frame's grid -> (N, n, n)."""
    import torch.nn.functional as F

    return F.grid_sample(images[:, None], _grid(theta, n, half), mode="bilinear", padding_mode="border",
                         align_corners=False)[:, 0]


def _moment_frames(x):
    """Each picture centred on its intensity centroid and scaled by its spread, per axis."""
    import torch

    n = x.shape[-1]
    g = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1
    w = x - x.amin(dim=(-2, -1), keepdim=True)
    frames = []
    for profile in (w.sum(-2), w.sum(-1)):  # over rows: the x profile; over columns: the y profile
        total = profile.sum(-1).clamp_min(1e-8)
        mean = (profile * g).sum(-1) / total
        spread = (((g - mean[:, None]) ** 2 * profile).sum(-1) / total).sqrt()
        frames.append((spread / 0.5, mean))
    (sx, tx), (sy, ty) = frames
    return torch.stack([sx, sy, tx, ty], dim=1)


CHUNK = 4096  # thumbnails per step: float copies of 200,000 at once would take gigabytes
REGISTER_LEVELS = ((6.0, 3, 12), (3.0, 3, 16), (2.0, 2, 16))  # align()'s levels for the registered frame
DESCRIBED = 0.6  # the central part of a frame that a descriptor covers: a picture cropped by 5 % a side still fills it


def frames_and_descriptors(thumbs, template) -> tuple:
    """Each picture's frames, (3, N, 4): as stored, centred and scaled by its intensity moments, and
    registered to `template`; and its descriptors, (3, N, COARSE^2) float32 unit vectors: the thumbnail
    blurred by 2 px, sampled on a COARSE x COARSE grid over the central part of each frame (DESCRIBED),
    standardised (brightness and contrast drop out)."""
    import torch

    theta = torch.zeros(3, len(thumbs), 4)
    out = np.zeros((3, len(thumbs), COARSE * COARSE), dtype=np.float32)
    for start in range(0, len(thumbs), CHUNK):
        x = _as_float(thumbs[start:start + CHUNK])
        blurred = _blur(x, 2.0)
        identity = torch.tensor(IDENTITY).repeat(len(x), 1)
        registered = align(template[None], x, identity, half=0.7, levels=REGISTER_LEVELS)
        theta[:, start:start + len(x)] = torch.stack([identity, _moment_frames(blurred), registered])
        for view, frame in enumerate(theta[:, start:start + len(x)]):
            out[view, start:start + len(x)] = _standardise(_sample(blurred, frame, COARSE, DESCRIBED)).flatten(1).numpy()
    return theta, out


@dataclasses.dataclass
class Prepared:
    """A set of thumbnails ready to search: `thumbs`, their `theta` (3 frames, N, 4), one descriptor
    matrix per frame, and which are `usable` (readable)."""
    thumbs: np.ndarray
    theta: "torch.Tensor"
    descriptors: list
    usable: np.ndarray
    smoothed: dict = dataclasses.field(default_factory=dict, repr=False)

    def picked(self, index) -> "Picked":
        return Picked(self, np.asarray(index))


SMOOTHED_ONCE = 2.0  # blurs this wide are made once per set (float16, at half size): the coarse alignment's


@dataclasses.dataclass
class Picked:
    """Some pictures of a prepared set (`index`, repeats allowed): what align() and distance() take in
    place of thumbnails when many pairs share their pictures, so that each picture is blurred once."""
    prepared: Prepared
    index: np.ndarray
    made: dict = dataclasses.field(default_factory=dict, repr=False)  # raw and narrow blurs, for every scale measured

    def __len__(self):
        return len(self.index)

    def raw(self):
        if "raw" not in self.made:
            self.made["raw"] = _as_float(self.prepared.thumbs[self.index])
        return self.made["raw"]

    def smooth(self, sigma: float):
        if sigma < SMOOTHED_ONCE:  # each picture once, however many pairs it is in
            if sigma not in self.made:
                unique, inverse = np.unique(self.index, return_inverse=True)
                self.made[sigma] = _smooth(_as_float(self.prepared.thumbs[unique]), sigma)[inverse.ravel()]
            return self.made[sigma]
        if sigma not in self.prepared.smoothed:
            import torch

            thumbs = self.prepared.thumbs  # never empty here: a Picked indexes its pictures
            self.prepared.smoothed[sigma] = torch.cat([_smooth(_as_float(thumbs[start:start + CHUNK]), sigma).half()
                                                       for start in range(0, len(thumbs), CHUNK)])
        return self.prepared.smoothed[sigma][self.index].float()


def _raw(pictures):
    """Float pictures in [0, 1] of thumbnails, float images or a Picked."""
    return pictures.raw() if isinstance(pictures, Picked) else _as_float(pictures)


def _smoothed(pictures, sigma: float):
    """_smooth() of thumbnails, float images or a Picked (whose wide blurs are made once per set)."""
    return pictures.smooth(sigma) if isinstance(pictures, Picked) else _smooth(_as_float(pictures), sigma)


def prepare(thumbs: np.ndarray, template) -> Prepared:
    theta, found_by = frames_and_descriptors(thumbs, template)
    usable = thumbs.reshape(len(thumbs), -1).max(axis=1) > 0 if len(thumbs) else np.zeros(0, dtype=bool)
    return Prepared(thumbs, theta, list(found_by), usable)


def template_of(*thumbs_sets):
    """The mean blurred thumbnail of several sets: the reference the profile frame registers to."""
    import torch

    total, count = torch.zeros(THUMB, THUMB), 0
    for thumbs in thumbs_sets:
        for start in range(0, len(thumbs), 4096):
            chunk = _blur(_as_float(thumbs[start:start + 4096]), 2.0)
            total += chunk.sum(0)
            count += len(chunk)
    return total / max(count, 1)


# --------------------------------------------------------------------------- alignment

def _relative(theta_q, theta_d):
    """The map from the query's picture coordinates to the database picture's that makes their frames
    coincide: x_d = s_d (x_q - t_q) / s_q + t_d, per axis."""
    import torch

    scale = theta_d[:, :2] / theta_q[:, :2]
    shift = theta_d[:, 2:] - scale * theta_q[:, 2:]
    return torch.cat([scale, shift], dim=1)


def _with_gradients(images):
    """(N, H, W) -> (N, 3, H, W): the pictures, d/dx and d/dy in normalised picture coordinates (central
    differences, one-sided at the edges: the edges replicated), in one tensor that grid_sample reads."""
    out = images.new_empty(len(images), 3, *images.shape[-2:])
    out[:, 0] = images
    gx, gy = out[:, 1], out[:, 2]
    gx[:, :, 1:-1] = images[:, :, 2:] - images[:, :, :-2]
    gx[:, :, 0], gx[:, :, -1] = images[:, :, 1] - images[:, :, 0], images[:, :, -1] - images[:, :, -2]
    gy[:, 1:-1] = images[:, 2:] - images[:, :-2]
    gy[:, 0], gy[:, -1] = images[:, 1] - images[:, 0], images[:, -1] - images[:, -2]
    out[:, 1:] *= images.shape[-1] / 4  # half the difference, per half a picture's width
    return out


ALIGN_LEVELS = ((4.0, 2, 12), (2.0, 2, 16), (1.0, 2, 24))  # (blur sigma px, iterations, grid n)


def align(query, database, theta, *, half: float = 0.85, levels=ALIGN_LEVELS):
    """Refine `theta` (P, 4), the map from each query picture's coordinates into its database
    picture's, by Gauss-Newton on the residual (a database(theta) + b) - query over an n x n grid of the
    query's central part, coarse to fine: per level (Gaussian blur sigma in px, iterations, n).
    query, database: (P, H, W) uint8 thumbnails, float images in [0, 1] or Picked; query (1, H, W): one
    picture for every pair. Returns theta."""
    import torch
    import torch.nn.functional as F

    theta = theta.clone()
    one = torch.tensor(IDENTITY).repeat(len(theta), 1)
    for sigma, iterations, n in levels:
        base = _base_grid(n, half).flatten(1, 2)  # (1, n*n, 2)
        gx, gy = base[..., 0], base[..., 1]
        q = _smoothed(query, sigma)
        q = _sample(q, one[:len(q)], n, half).flatten(1).expand(len(theta), -1)
        q = q - q.mean(1, keepdim=True)
        stacked = _with_gradients(_smoothed(database, sigma))
        for _ in range(iterations):
            sampled = F.grid_sample(stacked, _grid(theta, n, half), mode="bilinear", padding_mode="border",
                                    align_corners=False).flatten(2)  # (P, 3, n*n): picture, d/dx, d/dy
            d, dx, dy = sampled.unbind(1)
            # the photometric fit q ~ a d + b first, then a geometric step on what is left
            d = d - d.mean(1, keepdim=True)
            a = (d * q).sum(1, keepdim=True) / (d * d).sum(1, keepdim=True).clamp_min(1e-8)
            residual = a * d - q
            jac = torch.stack([dx * gx, dy * gy, dx, dy], dim=2) * a[..., None]  # (P, n*n, 4)
            jt = jac.transpose(1, 2)
            step = torch.linalg.solve(jt @ jac + 1e-6 * torch.eye(4), -(jt @ residual[..., None])[..., 0])
            theta = theta + step.clamp(-0.05, 0.05)
            theta[:, :2] = theta[:, :2].clamp(0.6, 1.6)
            theta[:, 2:] = theta[:, 2:].clamp(-0.5, 0.5)
    return theta


def distance(query, database, theta, *, sigma: float = 0.7, detail: float = 2.0, n: int = 32,
             half: float = 0.85) -> np.ndarray:
    """How far apart two aligned pictures are: the 90th percentile of |q - f(d)| over an n x n grid of
    the query's central part (q, d: both blurred by `sigma` px; f: the increasing tone curve that maps
    d's values onto q's by rank, so brightness, contrast, gamma and soft clipping drop out), in units
    of the query's detail (the root mean square of q minus q blurred by `detail` px). Pixels saturated
    (within SATURATED of 0 or 1) in either picture are left out: a brightness change clips them.
    Measured against the detail, not the whole picture, so that two radiographs sharing their anatomy
    and layout stay far apart. inf where less than MEASURED of the grid is left."""
    import torch

    one = torch.tensor(IDENTITY).repeat(len(theta), 1)
    q_raw, d_raw = _sample(_raw(query), one, n, half).flatten(1), _sample(_raw(database), theta, n, half).flatten(1)
    keep = ((q_raw > SATURATED) & (q_raw < 1 - SATURATED) & (d_raw > SATURATED) & (d_raw < 1 - SATURATED)).numpy()
    count = keep.sum(1)
    q = _sample(_smoothed(query, sigma), one, n, half).flatten(1)
    fine = (q - _sample(_smoothed(query, detail), one, n, half).flatten(1)).numpy()
    q, d = q.numpy(), _sample(_smoothed(database, sigma), theta, n, half).flatten(1).numpy()
    # (numpy: its sorts run several times faster than torch's on a CPU)
    # the k-th smallest kept d is mapped to the k-th smallest kept q (the left-out ones sort last)
    mapped = np.empty_like(d)
    np.put_along_axis(mapped, np.argsort(np.where(keep, d, 2.0), axis=1), np.sort(np.where(keep, q, 2.0), axis=1), axis=1)
    scale = np.sqrt(np.where(keep, fine * fine, 0.0).sum(1) / np.maximum(count, 1)).clip(min=1e-6)
    residual = np.sort(np.where(keep, np.abs(q - mapped) / scale[:, None], np.inf), axis=1)
    # the 90th percentile of each row's kept residuals, interpolated linearly (as numpy's quantile)
    at = 0.9 * np.maximum(count - 1, 0)
    low = np.floor(at).astype(np.int64)
    high = np.minimum(low + 1, np.maximum(count - 1, 0))
    rows = np.arange(len(residual))
    out = residual[rows, low] + (at - low) * (residual[rows, high] - residual[rows, low])
    return np.where(count < MEASURED * n * n, np.inf, out).astype(np.float32)


# --------------------------------------------------------------------------- search

# The largest distance of one picture, per domain, set between the distances of altered copies and of
# look-alikes on bench/bench_overlap.py's generated pictures (40 originals x 9 alterations, and the
# candidates found among 240 + 20,000 pictures): radiographs, copies at most 0.17, look-alikes of different
# patients from 0.29; fundus photographs, copies at most 0.20, look-alikes from 0.74; tissue tiles, copies
# at most 0.44, look-alikes from 0.94.
MATCH_DISTANCE = {"cxr": 0.24, "efi": 0.52, "hwsi": 0.80, "other": 0.52}
# The scales a pair is measured at: distance()'s (sigma, detail, n) and a weight; the smallest weighted
# distance counts. Tissue tiles are also measured coarsely: a near-empty tile's fine detail is grain,
# which a resize or JPEG redraws, while its faint coarse texture survives.
FINE = (0.7, 2.0, 32, 1.0)
MATCH_SCALES = {"hwsi": (FINE, (2.0, 6.0, 24, 1.3), (3.0, 8.0, 16, 1.6))}
COARSE_SCALE = (2.0, 4.0, 16, 1.0)  # after the coarse alignment levels, with the domain's coarse scales
REJECT_EARLY = 1.15  # a pair this many times over the threshold after the coarse alignment levels is dropped
MOVED = 0.05        # how far (scale, or shift in half-widths) the coarse alignment must move a frame to measure the start too
MEASURED = 0.1      # the least share of the grid left after saturated pixels for a distance (else inf: no match)


def measure(query, database, theta, scales) -> np.ndarray:
    """The smallest weighted distance() over `scales` ((sigma, detail, n, weight) each)."""
    return np.min([weight * distance(query, database, theta, sigma=sigma, detail=detail, n=n)
                   for sigma, detail, n, weight in scales], axis=0)


def same_pictures(query: Prepared, database: Prepared | None = None, *, domain: str, k: int = CANDIDATES,
                  max_distance: float | None = None, batch: int = 2048, timings: dict | None = None) -> np.ndarray:
    """(M, 3) rows (query index, database index, distance) of the pairs that are one picture, sorted.

    query, database: thumbnails prepared (prepare()) with the same template; database None: the query
    set against itself (an image is not paired with itself; each pair once, i < j). domain: whose
    threshold (MATCH_DISTANCE) applies; max_distance: another one (the bench measures with inf).
    Unreadable images are never paired."""
    import faiss
    import torch

    threshold = MATCH_DISTANCE.get(domain, MATCH_DISTANCE["other"]) if max_distance is None else max_distance
    scales = MATCH_SCALES.get(domain, (FINE,))
    same_set = database is None
    database = query if same_set else database
    started = time.perf_counter()
    candidates = {}
    for view, (found_q, found_d) in enumerate(zip(query.descriptors, database.descriptors)):
        if not len(found_q) or not len(found_d):
            continue
        index = faiss.IndexFlatIP(found_d.shape[1])
        index.add(found_d)
        _, found = index.search(found_q, min(k + int(same_set), len(found_d)))
        for i, row in enumerate(found):
            if not query.usable[i]:
                continue
            for j in row.tolist():
                if j < 0 or not database.usable[j] or (same_set and j == i):
                    continue
                candidates.setdefault((min(i, j), max(i, j)) if same_set else (i, j), view)
    rows = []
    pairs = np.array([(i, j, view) for (i, j), view in sorted(candidates.items())], dtype=np.int64).reshape(-1, 3)
    searched = time.perf_counter()
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        q_img, d_img = query.picked(chunk[:, 0]), database.picked(chunk[:, 1])
        view, q_idx, d_idx = (torch.from_numpy(chunk[:, c]) for c in (2, 0, 1))
        start_theta = _relative(query.theta[view, q_idx], database.theta[view, d_idx])
        # coarse levels for every candidate; the fine ones only for those still near a match
        theta = align(q_img, d_img, start_theta, levels=ALIGN_LEVELS[:2])
        coarse = measure(q_img, d_img, theta, (COARSE_SCALE, *(s for s in scales if s[0] >= SMOOTHED_ONCE)))
        near = (coarse <= REJECT_EARLY * threshold) | np.isinf(coarse)  # unmeasurable at 16 px: the fine grid decides
        # a pair left far from a match by an alignment that moved its frame is also measured in the frame
        # its candidate search found: on a copy clipped by a brightness change, Gauss-Newton can walk away
        at_start = np.full(len(chunk), np.inf, dtype=np.float32)
        far = ~near & ((theta - start_theta).abs().amax(1) > MOVED).numpy()
        if far.any():
            at_start[far] = measure(query.picked(chunk[far, 0]), database.picked(chunk[far, 1]),
                                    start_theta[torch.from_numpy(far)], scales)
            near |= at_start <= threshold
        if timings is not None:
            timings["pairs"] = timings.get("pairs", 0) + len(chunk)
            timings["fine pairs"] = timings.get("fine pairs", 0) + int(near.sum())
        if near.any():
            q_img, d_img = query.picked(chunk[near, 0]), database.picked(chunk[near, 1])
            theta = align(q_img, d_img, theta[torch.from_numpy(near)], levels=ALIGN_LEVELS[2:])
            values = np.minimum(measure(q_img, d_img, theta, scales), at_start[near])
            rows += [(i, j, value) for (i, j, _), value in zip(chunk[near], values) if value <= threshold]
    if timings is not None:
        timings["search"] = timings.get("search", 0.0) + searched - started
        timings["align"] = timings.get("align", 0.0) + time.perf_counter() - searched
    return np.array(sorted(rows), dtype=np.float64).reshape(-1, 3)


# --------------------------------------------------------------------------- across and within data sets

OVERLAP_COLUMNS = ["target", "target_image", "split", "source", "source_image", "source_split", "distance"]


@dataclasses.dataclass
class DataSet:
    """A manifest's rows (`df`: image, split, ...) with the thumbnails of its images."""
    key: str
    domain: str
    df: "pd.DataFrame"
    thumbs: Thumbnails


def comparable(target_domain: str, source_domain: str) -> bool:
    """A target is compared with the sources of its own area; one of domain other with every source."""
    return target_domain == source_domain or "other" in (target_domain, source_domain)


def find_overlap(targets: list, sources: list) -> "pd.DataFrame":
    """overlap.csv's rows (OVERLAP_COLUMNS): every pair of a target image and a source image that are one
    picture (source = the source's key), and every pair of a target's images in two different splits
    that are one picture (source = the target's own key). targets, sources: DataSet lists."""
    import pandas as pd

    by_domain = {}
    for data in (*targets, *sources):
        by_domain.setdefault(data.domain, []).append(data.thumbs.thumbs)
    templates = {domain: template_of(*sets) for domain, sets in by_domain.items()}
    prepared = {}

    def ready(data, domain):
        if (data.key, domain) not in prepared:
            prepared[data.key, domain] = prepare(data.thumbs.thumbs, templates[domain])
        return prepared[data.key, domain]

    rows = []
    for target in targets:
        split = _splits(target)
        for source in sources:
            if not comparable(target.domain, source.domain):
                continue
            domain = source.domain if source.domain != "other" else target.domain
            found = same_pictures(ready(target, domain), ready(source, domain), domain=target.domain)
            source_split = _splits(source)
            rows += [(target.key, target.thumbs.images[int(i)], split[target.thumbs.images[int(i)]], source.key,
                      source.thumbs.images[int(j)], source_split[source.thumbs.images[int(j)]], round(value, 4))
                     for i, j, value in found]
        found = same_pictures(ready(target, target.domain), domain=target.domain)
        images = target.thumbs.images
        twins = [(images[int(i)], images[int(j)], value) for i, j, value in found
                 if split[images[int(i)]] != split[images[int(j)]]]
        rows += [(target.key, a, split[a], target.key, b, split[b], round(value, 4)) for a, b, value in twins]
    frame = pd.DataFrame(rows, columns=OVERLAP_COLUMNS)
    return frame.sort_values(["target", "source", "target_image", "source_image"], kind="stable").reset_index(drop=True)


def _splits(data: DataSet) -> dict:
    return dict(zip(data.df["image"].astype(str), data.df["split"].astype(str)))


def summarise(overlap: "pd.DataFrame", targets: list, sources: list) -> "pd.DataFrame":
    """One row per target and source (and per target within itself): images compared, target images
    found (all, and per split), source images they match."""
    import pandas as pd

    rows = []
    for target in targets:
        partners = [s for s in sources if comparable(target.domain, s.domain)] + [target]
        for source in partners:
            found = overlap[(overlap["target"] == target.key) & (overlap["source"] == source.key)]
            within = source is target
            matched = pd.concat([found["target_image"], found["source_image"]]).unique() if within else \
                found["target_image"].unique()
            split = _splits(target)
            by_split = pd.Series([split[m] for m in matched], dtype=str).value_counts()
            rows.append({"target": target.key, "source": source.key, "target_images": len(target.thumbs.images),
                         "source_images": len(source.thumbs.images), "found": len(matched),
                         **{f"found_{s}": int(by_split.get(s, 0)) for s in ("train", "val", "test")},
                         "source_matched": 0 if within else found["source_image"].nunique(),
                         "pairs": len(found)})
    return pd.DataFrame(rows)


def twin_groups(thumbs: Thumbnails) -> list:
    """The pictures of one data set that are there more than once under different names: a list of
    groups (sorted image paths), each one picture."""
    template = template_of(thumbs.thumbs)
    found = same_pictures(prepare(thumbs.thumbs, template), domain=thumbs.domain)
    parent = list(range(len(thumbs.images)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in found:
        parent[root(int(i))] = root(int(j))
    groups = {}
    for i in {int(i) for i, j, _ in found} | {int(j) for i, j, _ in found}:
        groups.setdefault(root(i), []).append(thumbs.images[i])
    return sorted(sorted(group) for group in groups.values())


# --------------------------------------------------------------------------- using overlap.csv

def read_overlap(path) -> "pd.DataFrame":
    """overlap.csv as check_overlap.py writes it, checked (one line naming the file when it is not one)."""
    from .files import read_table, require_columns

    frame = read_table(path, dtype=str, keep_default_na=False)
    require_columns(frame, OVERLAP_COLUMNS, path)
    return frame


def leave_out(df, overlap_csv, *, pretraining: str):
    """The rows of `df` (a source manifest, or the aggregated All set) without the train and val images
    that check_overlap.py found to be pictures of a target: (rows kept, record for the run's meta:
    the file, its digest, how many were left out per split and per target)."""
    found = read_overlap(overlap_csv)
    found = found[found["source"] != found["target"]]  # a target's twins within itself are not pretraining's
    matched = set(found["source_image"])
    image = df["image"].astype(str)
    gone = image.isin(matched).to_numpy() & df["split"].isin(["train", "val"]).to_numpy()
    targets = found[found["source_image"].isin(set(image[gone]))].groupby("target")["source_image"].nunique()
    from .files import digest

    record = {"file": str(Path(overlap_csv).resolve()), "digest": digest(overlap_csv),
              "left_out": {split: int((gone & (df["split"] == split).to_numpy()).sum()) for split in ("train", "val")},
              "by_target": {target: int(n) for target, n in targets.items()}}
    if gone.all():
        raise ValueError(f"{overlap_csv}: every train and val image of {pretraining} is a picture of a target; "
                         f"nothing would be left to pretrain on")
    return df[~gone].reset_index(drop=True), record


def left_out_line(record: dict) -> str:
    targets = ", ".join(f"{target} {n}" for target, n in record["by_target"].items()) or "none"
    return (f"--exclude-overlap: {sum(record['left_out'].values())} train/val image(s) left out, pictures of a "
            f"target (per target: {targets}; {record['file']})")


def seen_in_pretraining(overlap_csv, target: str, images, pretrained_images) -> int:
    """How many of `images` (a target's split) overlap.csv pairs with a source image among
    `pretrained_images` (the sorted 64-bit hashes of the images a pretraining was trained on)."""
    from .identity import hash64

    found = read_overlap(overlap_csv)
    found = found[(found["target"] == target) & (found["source"] != target)
                  & found["target_image"].isin(set(map(str, images)))]
    if found.empty:
        return 0
    seen = np.isin(hash64(found["source_image"]), np.asarray(pretrained_images))
    return int(found.loc[seen, "target_image"].nunique())


# --------------------------------------------------------------------------- what it is made to catch

def _shifted(image, gain: float, offset: float):
    from PIL import Image

    pixels = np.asarray(image).astype(np.float32)
    mean = pixels.mean()
    return Image.fromarray(np.clip((pixels - mean) * gain + mean + offset, 0, 255).astype(np.uint8))


def _sixteen_bit(image):
    from PIL import Image

    return Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)


def _crop(image, left: float, top: float, right: float, bottom: float):
    width, height = image.size
    return image.crop((round(left * width), round(top * height), width - round(right * width),
                       height - round(bottom * height)))


# The alterations a copy may carry, each at its worst setting: name -> (PIL image -> (image, format,
# save options)). bench/bench_overlap.py measures the share of altered copies found for each; tests check
# each. A flip, a rotation or a crop of more than about 5 % a side are not among them.
ALTERATIONS = {
    "resized to 30 %": lambda im: (im.resize((max(16, round(0.3 * im.width)), max(16, round(0.3 * im.height)))),
                                   "PNG", {}),
    "JPEG quality 60": lambda im: (im, "JPEG", {"quality": 60}),
    "16 bit": lambda im: (_sixteen_bit(im), "PNG", {}),
    "grey <-> RGB": lambda im: (im.convert("RGB" if im.mode == "L" else "L"), "PNG", {}),
    "crop 5 % a side": lambda im: (_crop(im, 0.05, 0.05, 0.05, 0.05), "PNG", {}),
    "crop 5 % top left": lambda im: (_crop(im, 0.05, 0.05, 0.0, 0.0), "PNG", {}),
    "brighter by 10 %": lambda im: (_shifted(im, 1.0, 25.5), "PNG", {}),
    "contrast x 1.25": lambda im: (_shifted(im, 1.25, 0.0), "PNG", {}),
    "contrast x 0.8, darker": lambda im: (_shifted(im, 0.8, -12.0), "PNG", {}),
}


def write_altered(source, out_dir, stem: str) -> dict:
    """An altered copy of the picture `source` per ALTERATIONS, written to out_dir/<stem>_<n>.<png|jpg>:
    {alteration name: path}."""
    from PIL import Image

    out = {}
    with Image.open(source) as image:
        image.load()
        image = image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode)
        for n, (name, alter) in enumerate(ALTERATIONS.items()):
            altered, fmt, options = alter(image)
            path = Path(out_dir) / f"{stem}_{n}.{'jpg' if fmt == 'JPEG' else 'png'}"
            altered.save(path, fmt, **options)
            out[name] = str(path)
    return out
