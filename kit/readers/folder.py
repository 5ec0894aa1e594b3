"""Your own data set as a folder of class folders (``--dataset folder``): its reader and its classes."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from .layout import IMAGE_EXTENSIONS, SKIP_DIRS, dataset_root, images_in, stem
from .rows import frame, no_problems, note


def folder_classes(root) -> list[str]:
    """Class names of a generic ``<root>/<class>/<image>`` folder: sorted sub-folder names."""
    root = dataset_root(root)
    classes = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and p.name not in SKIP_DIRS)
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected <root>/<class>/<image>)")
    return classes


def read_folder(root, *, check_files: bool = True, skip_bad: bool = False, patient_regex: str | None = None
                ) -> pd.DataFrame:
    """A user's own data set ``<root>/<class>/<image>`` (images at any depth below the class
    folder; extensions png/jpg/jpeg/tif/tiff/bmp/dcm/nii/nii.gz). Classes = sorted sub-folder names.

    Patients: a sub-folder level under the class folder is the patient (``<class>/<patient>/...``;
    the same name under two classes is one patient), so a patient's images stay in one split; an
    image directly in its class folder is a patient of its own. ``patient_regex`` takes the patient
    id from the file name instead (its first group, else the whole match; a name it does not
    match is a bad row). ``df.attrs["patients_from"]`` says which rule was used."""
    root = dataset_root(root)
    classes = folder_classes(root)
    images, labels = [], []
    for i, cls in enumerate(classes):
        paths = images_in(root / cls, recursive=True)
        if not paths:
            raise ValueError(f"{root / cls}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        images += paths
        labels += [i] * len(paths)
    problem = no_problems(len(images))
    if patient_regex:
        pattern = re.compile(patient_regex)
        found = [pattern.search(stem(Path(path).name)) for path in images]
        patient = [(m.group(1) if m.re.groups else m.group(0)) if m else "" for m in found]
        note(problem, [m is None for m in found], lambda i: f"file name does not match --patient-regex {patient_regex!r}")
        rule = f"--patient-regex {patient_regex!r} on the file name"
    else:
        below = [Path(os.path.relpath(path, root)).parts for path in images]  # (class, [patient, ...], file)
        patient = [parts[1] if len(parts) > 2 else stem("/".join(parts)) for parts in below]
        nested = sum(len(parts) > 2 for parts in below)
        rule = ("the sub-folder below the class folder" if nested == len(images) else
                "each image its own patient" if not nested else
                f"the sub-folder below the class folder ({nested} images), else the image itself")
    df = frame(images, patient, label=labels, classes=classes, problem=problem, skip_bad=skip_bad)
    df.attrs["patients_from"] = rule
    df.attrs["classes"] = classes
    return df
