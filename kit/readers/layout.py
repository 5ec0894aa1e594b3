"""Where a native layout keeps its images: the dataset folder, image files by extension, folders walked
in a fixed order (hidden files and macOS junk skipped), file names indexed, class folders found under
their usual names. Every reader finds its files with these."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator

# Longest first so "x.nii.gz" is not taken for ".gz"; matched case-insensitively.
IMAGE_EXTENSIONS = (".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii")
SKIP_DIRS = {"__MACOSX"}  # resource-fork folders that macOS zips carry along


def dataset_root(root) -> Path:
    """Absolute path of a dataset folder (symlinks kept), or a clear error."""
    path = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not path.is_dir():
        raise ValueError(f"{path}: dataset folder not found")
    return path


def image_suffix(name: str) -> str | None:
    """The image extension of a file name (lower case, ``.nii.gz`` whole), or None."""
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(lower) > len(ext):
            return ext
    return None


def stem(name: str) -> str:
    ext = image_suffix(name)
    return name[: -len(ext)] if ext else os.path.splitext(name)[0]


def walk(folder: Path) -> Iterator[tuple[str, str]]:
    """(file name, path) of every file under `folder`, sorted, skipping hidden and macOS junk."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
        for name in sorted(filenames):
            if not name.startswith("."):
                yield name, os.path.join(dirpath, name)


def scan(folder: Path) -> Iterator[tuple[str, str]]:
    """(file name, path) of the files directly in `folder` (one os.scandir, no per-file stat)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_file():
                yield entry.name, entry.path


def index_files(pairs: Iterable[tuple[str, str]], *, key=lambda name: name) -> dict[str, str]:
    """key(file name) -> path; the same key twice is ambiguous and an error naming both files."""
    index: dict[str, str] = {}
    for name, path in pairs:
        k = key(name)
        if k in index:
            raise ValueError(f"{path}: same image as {index[k]} (two copies of {k!r}; keep one)")
        index[k] = path
    return index


def images_in(folder: Path, *, recursive: bool) -> list[str]:
    """Sorted paths of the image files in `folder` (by extension, see IMAGE_EXTENSIONS)."""
    pairs = walk(folder) if recursive else sorted(scan(folder))
    return [path for name, path in pairs if image_suffix(name)]


def read_names(path: Path) -> set[str]:
    """The non-empty lines of a list file (one image name a line)."""
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def no_images(root: Path, what: str) -> ValueError:
    return ValueError(f"{root}: no images found ({what})")


def canonical_folder(name: str, classes: Iterable[str], aliases: dict[str, str] | None = None) -> str | None:
    """Match a class folder name case-, space-, underscore- and hyphen-insensitively."""
    def norm(text: str) -> str:
        return re.sub(r"[\s_\-]+", "", text).lower()

    table = {norm(c): c for c in classes}
    table.update({norm(k): v for k, v in (aliases or {}).items()})
    return table.get(norm(name))


def class_folders(root: Path, base_names: Iterable[str], match: Callable[[str], str | None],
                  what: str) -> tuple[Path, dict[str, Path]]:
    """Find the folder holding the class sub-folders: root/<base name>, root, or a single
    sub-folder of root. Returns (base, {class: folder})."""
    candidates = [root / b for b in base_names] + [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for base in candidates:
        if not base.is_dir():
            continue
        folders: dict[str, Path] = {}
        for sub in sorted(p for p in base.iterdir() if p.is_dir()):
            cls = match(sub.name)
            if cls is not None:
                if cls in folders:
                    raise ValueError(f"{sub}: second folder for class {cls!r} (first: {folders[cls]})")
                folders[cls] = sub
        if folders:
            return base, folders
    raise ValueError(f"{root}: no class folders found ({what})")
