"""Preprocessing cache: the deterministic head of each transform chain, run once, stored as uint8.

At paper scale decoding dominates: a 1024 px ChestX-ray14 PNG takes 9-15 ms of a core to load
and resize (70-110 images/s), while a GPU trains DenseNet-121 at well over 1,000 images/s.
So the head (load, channels, eye crop, resize: transforms.cache_transforms) runs once per
image and training reads its output; the random tail still runs every epoch. prepare_data.py
builds it (build_cache), with a new manifest or for manifests written earlier::

    python prepare_data.py --dataset chestxray14 --root DATA/chestxray14 --out OUT/manifests --cache-size 224
    python prepare_data.py --manifest OUT/manifests/{chestxray14,breakhis,eyepacs}.csv --cache-size 224

Training and evaluation use a cache automatically when it sits next to the manifest
(data.ImageDataset(..., cache_dirs=[manifest folder])).

Files, in ``<manifest folder>/cache/``, one pair per manifest, domain and image size:

    <key>_<domain>_<size>_<hash>.npy   every image's uint8 (C, H, W) pixels, flattened and
                                       concatenated into one 1-D array (C = 1 grey, 3 colour)
    <key>_<domain>_<size>_<hash>.json  the index: format, head version, domain, size, and per
                                       image its path, offset, shape, file size and mtime;
                                       the images that could not be read, with the reason

Why one flat memory-mapped .npy rather than MONAI's PersistentDataset / CacheDataset /
LMDBDataset: ChestX-ray14 at 256 px grey is 112,120 x 256^2 x 1 B = 7.3 GB (at 224 px 5.6 GB);
PersistentDataset stores each head output as a float32 3-channel torch file, 12x that (88 GB
at 256 px, 112,120 files), CacheDataset holds the same in RAM in every process, and
LMDBDataset pickles each item into a database (an extra dependency, the same float32 bytes).
Measured on a 2-core AMD EPYC CPU (one thread, 224 px, 1024 px PNG sources): one
PersistentDataset item (torch.load of its 590 KB file) ~300 us; one memmap row read and
converted to float ~16 us.
Opened with np.load(mmap_mode="r") lazily in each loader process, the pages live once in the
OS page cache, shared by every worker and every DDP rank, never copied per process. Variable
shapes (BreakHis 340 x 224, grey images among colour ones) need no padding: each row has its
own offset and shape.

Validity: the file name's hash covers the manifest's image paths, their sizes and mtimes, the
domain, the image size and transforms.HEAD_VERSION, so build_cache rebuilds when any of these
change and does nothing otherwise. Readers check every row they use against the file's
current size and mtime, so a stale cache never feeds old pixels (it is ignored, with one
warning line).
"""
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .cli import available_cores
from .files import read_table, write_atomic, write_text_atomic

FORMAT = 1  # bump when the layout of these files changes
HEADER_BYTES = 128  # the .npy header of a 1-D uint8 array: written last, once the length is known


def cache_folder(manifest_csv) -> Path:
    return Path(manifest_csv).resolve().parent / "cache"


def file_stats(paths) -> list:
    """(size in bytes, mtime in ns) per path; None where the file is missing."""
    stats = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stats.append(None)
            continue
        stats.append((st.st_size, st.st_mtime_ns))
    return stats


def cache_hash(paths, stats, domain, image_size) -> str:
    import transforms

    digest = hashlib.sha1(f"{FORMAT} {transforms.HEAD_VERSION} {domain} {image_size}\n".encode())
    for path, stat in zip(paths, stats):
        digest.update(f"{path}\t{stat}\n".encode())
    return digest.hexdigest()[:12]


# --------------------------------------------------------------------------- building

_HEAD = None  # the worker's head chain, built once per process, in two parts: the picture, the rest
_THUMBNAILS = False  # whether the worker also makes overlap thumbnails (from the picture it decoded anyway)


def _start_worker(domain, image_size, thumbnails=False, in_pool=True):
    import torch

    import transforms

    global _HEAD, _THUMBNAILS
    if in_pool:
        torch.set_num_threads(1)  # one image per process at a time: threads would only contend
    steps = transforms.cache_transforms(domain, image_size=image_size).transforms
    _HEAD = (transforms.Chain(steps[:transforms.PICTURE_STEPS]), transforms.Chain(steps[transforms.PICTURE_STEPS:]))
    _THUMBNAILS = thumbnails


def _run_head(path):
    """(uint8 (C, H, W) array, None, thumbnail or None) or (None, reason, None) for an image that cannot be
    used; the thumbnail (kit/overlap.py) comes from the same decoded picture when the worker makes them."""
    import transforms

    from . import overlap

    picture, rest = _HEAD
    try:
        data = picture({"image": path})
        thumb = overlap.thumbnail(np.moveaxis(np.asarray(data["image"]), 0, -1)) if _THUMBNAILS else None
        pixels = rest(data)["image"].numpy()
    except Exception as err:
        return None, transforms.read_error(path, err).removeprefix(f"{path}: "), None
    return pixels, None, thumb


def _write_npy_header(f, length):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (length,)})
    if len(header.getvalue()) != HEADER_BYTES:
        raise RuntimeError(f"unexpected .npy header size {len(header.getvalue())}")
    f.seek(0)
    f.write(header.getvalue())


def build_cache(manifest_csv, *, image_size, workers=None, domain=None, progress=True) -> dict:
    """Run the cache head over every image of a manifest, in parallel; write the cache files.

    Returns a dict: ``pixels`` and ``index`` (paths), ``images`` (number cached), ``bad``
    (list of (image path, reason) for images that could not be read: left out of the cache,
    so training would read and fail on them), ``built`` (False when an up-to-date cache was
    found), ``seconds``. `domain` defaults to the one in the manifest's JSON sidecar;
    `workers` to the number of CPU cores (1 = in this process).
    """
    import transforms  # torch and MONAI: not needed for --help

    start = time.time()
    manifest_csv = Path(manifest_csv).resolve()
    if not manifest_csv.is_file():
        raise ValueError(f"{manifest_csv}: manifest not found (write it with prepare_data.py)")
    sidecar = manifest_csv.with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    domain = domain or meta.get("domain")
    if domain not in transforms.DOMAINS:
        raise ValueError(f"{manifest_csv}: no domain (pass domain= or keep the manifest's .json sidecar next to it)")
    key = meta.get("key", manifest_csv.stem)
    paths = list(dict.fromkeys(read_table(manifest_csv, usecols=["image"])["image"].astype(str)))
    stats = file_stats(paths)
    name = f"{key}_{domain}_{image_size}_{cache_hash(paths, stats, domain, image_size)}"
    folder = cache_folder(manifest_csv)
    pixels_path, index_path = folder / f"{name}.npy", folder / f"{name}.json"
    if index_path.is_file() and pixels_path.is_file():
        index = json.loads(index_path.read_text())
        return {"pixels": pixels_path, "index": index_path, "images": len(index["images"]),
                "bad": [tuple(b) for b in index["bad"]], "built": False, "seconds": round(time.time() - start, 2)}

    folder.mkdir(parents=True, exist_ok=True)
    workers = workers or available_cores()
    from . import overlap  # thumbnails for check_overlap.py, when its file is missing: no second decoding pass

    thumbs_path = overlap.thumbnail_file(manifest_csv, paths)
    make_thumbs = not thumbs_path.is_file()
    thumbs = np.zeros((len(paths), overlap.THUMB, overlap.THUMB), dtype=np.uint8) if make_thumbs else None
    bad = [(path, "file not found") for path, stat in zip(paths, stats) if stat is None]
    todo = [(path, stat) for path, stat in zip(paths, stats) if stat is not None]
    with write_atomic(pixels_path) as f:
        f.write(b"\0" * HEADER_BYTES)
        with _heads([path for path, _ in todo], domain=domain, image_size=image_size, thumbnails=make_thumbs,
                    workers=workers) as results:
            bar = tqdm(results, total=len(todo), desc=f"cache {key} {domain} {image_size}px",
                       disable=not progress, dynamic_ncols=True)
            rows, offset = _append_pixels(f, zip(todo, bar), bad=bad, thumbs=thumbs,
                                          position={path: i for i, path in enumerate(paths)})
        _write_npy_header(f, offset)
    index = {"format": FORMAT, "head_version": transforms.HEAD_VERSION, "domain": domain,
             "image_size": image_size, "manifest": str(manifest_csv), "pixels": pixels_path.name, **rows,
             "bad": [list(b) for b in bad]}
    if make_thumbs:
        overlap.save_thumbnails(thumbs_path, paths, thumbs, dict(bad))
    write_text_atomic(index_path, json.dumps(index) + "\n")  # last: an index means a complete cache
    for old in folder.glob(f"{key}_{domain}_{image_size}_*.json"):  # earlier builds of this manifest
        if old != index_path:
            old.unlink(missing_ok=True)
            old.with_suffix(".npy").unlink(missing_ok=True)
    return {"pixels": pixels_path, "index": index_path, "images": len(rows["images"]), "bad": bad,
            "built": True, "seconds": round(time.time() - start, 2)}


@contextlib.contextmanager
def _heads(paths, *, domain, image_size, thumbnails, workers):
    """The cache head's (pixels, reason, thumbnail) of each path, in order: from a pool of `workers` processes
    (terminated when the block ends) or, with one worker, from this process."""
    if workers > 1:
        pool = multiprocessing.Pool(workers, _start_worker, (domain, image_size, thumbnails))
        try:
            yield pool.imap(_run_head, paths, chunksize=8)
        finally:
            pool.terminate()
    else:
        _start_worker(domain, image_size, thumbnails, in_pool=False)
        yield map(_run_head, paths)


def _append_pixels(f, results, *, bad: list, thumbs, position: dict) -> tuple[dict, int]:
    """Each decoded image's pixels appended to the open .npy `f`, its thumbnail put into `thumbs` (at
    `position[path]`); an image that failed goes to `bad`. `results`: ((path, stat), head result) pairs.
    Returns (the index's per-image rows, the number of bytes written)."""
    rows = {"images": [], "offsets": [], "shapes": [], "stats": []}
    offset = 0
    for (path, stat), (pixels, reason, thumb) in results:
        if pixels is None:
            bad.append((path, reason))
            continue
        if thumb is not None:
            thumbs[position[path]] = thumb
        f.write(pixels.tobytes())
        rows["images"].append(path)
        rows["offsets"].append(offset)
        rows["shapes"].append(list(pixels.shape))
        rows["stats"].append(list(stat))
        offset += pixels.size
    return rows, offset


# --------------------------------------------------------------------------- reading

def find_cached(images, domains, *, image_size, cache_dirs) -> tuple[dict, list]:
    """Where each image lives in the valid caches of `cache_dirs` (the manifests' folders).

    Returns ({row number: (pixels file, offset, shape)}, [warning lines]): a cache is used
    when it matches the row's domain, the image size, HEAD_VERSION and FORMAT, and every one
    of the rows it holds still has the size and mtime it had when the cache was built;
    otherwise it is ignored with one warning.
    """
    import transforms  # torch and MONAI: not needed for --help

    wanted = {}
    for row, (path, domain) in enumerate(zip(images, domains)):
        wanted.setdefault((str(path), domain), []).append(row)
    found, warnings = {}, []
    for folder in dict.fromkeys(Path(d).resolve() / "cache" for d in cache_dirs or []):
        for index_path in sorted(folder.glob(f"*_{image_size}_*.json")):
            try:
                index = json.loads(index_path.read_text())
            except (OSError, json.JSONDecodeError):
                warnings.append(f"warning: {index_path}: unreadable cache index, ignored")
                continue
            if (index.get("format"), index.get("head_version"), index.get("image_size")) != (
                    FORMAT, transforms.HEAD_VERSION, image_size):
                continue
            domain = index["domain"]
            hits = [(i, path) for i, path in enumerate(index["images"]) if (path, domain) in wanted]
            if not hits:
                continue
            pixels_path = folder / index["pixels"]
            current = file_stats(path for _, path in hits)
            changed = sum(now != tuple(index["stats"][i]) for (i, _), now in zip(hits, current))
            if changed or not pixels_path.is_file():
                why = f"{changed} of its images changed since it was built" if changed else "its .npy is missing"
                warnings.append(f"warning: ignoring stale cache {index_path.name} ({why}); reading from disk. "
                                f"Rebuild: python prepare_data.py --manifest {index.get('manifest', '<manifest>')} "
                                f"--cache-size {image_size}")
                continue
            for i, path in hits:
                for row in wanted.pop((path, domain)):
                    found[row] = (str(pixels_path), index["offsets"][i], tuple(index["shapes"][i]))
    return found, warnings


def read_cached(pixels, location) -> np.ndarray:
    """One image's uint8 (C, H, W) from an open memmap: a copy, so the memmap can stay shared."""
    _, offset, shape = location
    return np.array(pixels[offset:offset + int(np.prod(shape))]).reshape(shape)


def open_pixels(path) -> np.memmap:
    return np.load(path, mmap_mode="r")
