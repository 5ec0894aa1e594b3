"""Native dataset folder -> manifest CSV (+ JSON sidecar) with a patient-level, stratified split.

Reads a data set in the layout it was downloaded in (kit/readers/, one reader per data set), splits
it once (all arms of a target then see the same split) and writes `<out>/<key>.csv` and
`<out>/<key>.json`, then prints the class x split counts. With --cache-size it also builds the
preprocessing cache (kit/cache.py); --manifest with --cache-size builds only the caches of
manifests written earlier, reading no data set.

Two protocols (--protocol):
  paper          the sources (chestxray14, breakhis, eyepacs) as the paper used them (Section 5.2):
                 every image, including ChestX-ray14's official test list and the EyePACS test
                 images of grades 1-4 (its grade-0 test images are left out), split 90/10
                 train/val by patient, no test split (no stage evaluates a source model on one);
                 prints the paper's image count next to what was built. The sources' default.
  held-out-test  train/val/test by patient (70/15/15), an official test split kept as the test
                 split. The targets' protocol (and their default); for a source, a test split
                 that no stage of the study uses.

    python prepare_data.py --dataset shenzhen --root OUT/demo_data/shenzhen --out OUT/manifests
    python prepare_data.py --dataset chestxray14 --root DATA/chestxray14 --out OUT/manifests
    python prepare_data.py --dataset chestxray14 --root DATA/chestxray14 --out OUT/held_out --protocol held-out-test
    python prepare_data.py --dataset eyepacs --root DATA/eyepacs --out OUT/quick --max-per-class 200 --skip-bad
    python prepare_data.py --dataset folder --root DATA/my_xrays --domain cxr --name my_xrays --out OUT/manifests
    python prepare_data.py --manifest OUT/manifests/chestxray14.csv OUT/manifests/breakhis.csv --cache-size 224
"""
import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from kit import cli, files, locks, manifests, paper, readers

PAPER_SOURCES = tuple(k for k in paper.SOURCE_IMAGES if k != "all")  # chestxray14, breakhis, eyepacs


def get_args_parser():
    parser = cli.Parser(__doc__)
    # Data
    parser.add_argument("--dataset", type=str, default=None, choices=list(readers.DATASETS),
                        help="which reader to use (native layout of that data set); --dataset, --root and --out are "
                             "required unless --manifest")
    parser.add_argument("--root", type=str, default=None,
                        help="the data set's own folder as downloaded, e.g. DATA/shenzhen")
    parser.add_argument("--out", type=str, default=None,
                        help="manifest folder; writes <out>/<key>.csv and <out>/<key>.json")
    parser.add_argument("--check-files", default=True, action=argparse.BooleanOptionalAction,
                        help="check that every image exists, is not empty and has an image header "
                             "(first bytes only, ~112k files in seconds; --no-check-files: metadata only, "
                             "e.g. ChestX-ray14 before the images arrive)")
    parser.add_argument("--skip-bad", default=False, action=argparse.BooleanOptionalAction,
                        help="leave out rows with an unknown label value or an image that is missing, empty "
                             "or unreadable instead of stopping; they are listed in <out>/<key>_skipped.csv "
                             "(columns image, origin = metadata file and row, reason)")
    parser.add_argument("--max-per-class", type=cli.positive_int, default=None,
                        help="quick runs on huge sets: at most about N images per class (whole patients, "
                             "stratified, seeded with --seed), taken before the split; default: all images")
    # Split
    parser.add_argument("--protocol", type=str, default=None, choices=manifests.PROTOCOLS,
                        help="paper: a source as the paper used it (every image, 90/10 train/val, no test split; "
                             "the default for chestxray14, breakhis, eyepacs); held-out-test: train/val/test with "
                             "an official test split kept (the default, and the only protocol, for targets)")
    parser.add_argument("--val-frac", type=float, default=None,
                        help="fraction of images for validation, in [0, 1); of the official train rows "
                             "when the data set ships a test split (default: 0.1 with --protocol paper, else 0.15)")
    parser.add_argument("--test-frac", type=float, default=None,
                        help="fraction of images for test, in [0, 1); val + test < 1; ignored where "
                             "the data set ships an official test split (default: 0 with --protocol paper, "
                             "which allows no other, else 0.15)")
    parser.add_argument("--seed", type=cli.seed, default=0, help="split seed (same seed, same split)")
    parser.add_argument("--find-twins", default=None, action=argparse.BooleanOptionalAction,
                        help="look for pictures that are in the data set twice under different names (resized, "
                             "re-encoded, cropped by a few %%: kit/overlap.py) and keep each in one split, as a "
                             "patient; a given split that puts them apart is refused (with --skip-bad: they move "
                             "to one split, test first); default: on with a test split (--protocol held-out-test) "
                             "unless --no-check-files")
    # Your own data: --dataset folder (<root>/<class>/[<patient>/]<image>) or csv (a table, --root = the file)
    own = parser.add_argument_group("your own data (--dataset folder or csv)")
    own.add_argument("--domain", type=str, default=None, choices=["cxr", "hwsi", "efi", "other"],
                     help="image area, picks the transform chain (other: colour pictures of another area, e.g. "
                          "dermatology; in the study such a target gets the IN, All and RI arms)")
    own.add_argument("--name", type=str, default=None, help="manifest key (default: the root's name without suffix)")
    own.add_argument("--patient-regex", type=str, default=None,
                     help="folder: take the patient id from the file name (first group, else the match), e.g. "
                          "'^(P\\d+)_'; default: a sub-folder below the class folder is the patient")
    own.add_argument("--image-col", type=str, default="image", help="csv: the column of image paths (relative "
                                                                     "paths are taken from the table's folder)")
    own.add_argument("--label-col", type=str, default=None, help="csv: one label per image (class names, or "
                                                                 "integer grades with --task ordinal)")
    own.add_argument("--label-cols", type=str, nargs="+", default=None,
                     help="csv: several 0/1 columns, one per class (--task multilabel)")
    own.add_argument("--patient-col", type=str, default=None, help="csv: patient ids (default: each image its own)")
    own.add_argument("--split-col", type=str, default=None,
                     help="csv: a given split (train/val/test; empty = to be split), respected like an official one")
    own.add_argument("--task", type=str, default=None, choices=list(readers.TASKS),
                     help="csv: multiclass, multilabel, or ordinal (grades: headline quadratic kappa, balanced class "
                          "weights, as for the graded eye data sets); default: multilabel with --label-cols, else "
                          "multiclass")
    own.add_argument("--metric", type=str, default=None,
                     help="csv/folder: the headline metric that selects best.pt and heads Table 2 (default: accuracy; "
                          "ordinal: qwk; multilabel: auroc)")
    cache = parser.add_argument_group("preprocessing cache (--manifest: the caches of existing manifests only)")
    cache.add_argument("--cache-size", type=cli.image_size, default=None,
                       help="also build the preprocessing cache (kit/cache.py) for training at this --image-size, "
                            "e.g. 224: images decoded, cropped and resized once, stored as uint8 next to the "
                            "manifest; training and evaluate.py use it automatically; default: no cache")
    cache.add_argument("--manifest", type=str, nargs="+", default=None,
                       help="build only the caches of these manifests (written earlier by prepare_data.py), at "
                            "--cache-size; no data set is read, so no --dataset, --root, --out or split flags")
    cache.add_argument("--workers", type=cli.positive_int, default=cli.available_cores(),
                       help="processes that build the cache (default: all cores)")
    cache.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                       help="progress bar while the cache is built")
    return parser


OWN_DATA = ("folder", "csv")
OWN_OPTIONS = {"folder": ("patient_regex",), "csv": ("image_col", "label_col", "label_cols", "patient_col",
                                                     "split_col")}
CACHE_ONLY = ("manifest", "cache_size", "workers", "progress")  # the flags of a --manifest run


def check_mode(args) -> None:
    """A run prepares a data set (--dataset, --root, --out) or builds the caches of existing manifests
    (--manifest, --cache-size), never both: one line says which flags do not belong."""
    if not args.manifest:
        missing = [f"--{name}" for name in ("dataset", "root", "out") if getattr(args, name) is None]
        if missing:
            raise ValueError(f"the following arguments are required: {', '.join(missing)} (or --manifest CSV [CSV ...] "
                             f"--cache-size N, to build the preprocessing caches of existing manifests)")
        return
    defaults = vars(get_args_parser().parse_args([]))
    mixed = [f"--{name.replace('_', '-')}" for name, value in vars(args).items()
             if name not in CACHE_ONLY and value != defaults[name]]
    if mixed:
        raise ValueError(f"{', '.join(mixed)}: not an option of --manifest (which builds the preprocessing caches of "
                         f"existing manifests, nothing else)")
    if args.cache_size is None:
        raise ValueError("--manifest needs --cache-size, the training --image-size in px (e.g. 224)")


def build_cache(csv_path, args) -> None:
    """The preprocessing cache of one manifest at --cache-size (decoding full-size images is what limits a
    GPU, bench/bench_loader.py); up to date, it is kept as it is."""
    from kit import cache  # here, not at the top: torch and MONAI take seconds to import, manifests alone do not

    built = cache.build_cache(csv_path, image_size=args.cache_size, workers=args.workers, progress=args.progress)
    print(f"{'built' if built['built'] else 'up to date:'} preprocessing cache {built['pixels']} "
          f"({built['images']} images at {args.cache_size} px, {built['seconds']} s)")
    if built["bad"]:
        print(f"{len(built['bad'])} image(s) could not be decoded and are not in the cache, e.g. "
              f"{built['bad'][0][0]}: {built['bad'][0][1]}; train with --skip-bad to leave them out")


def resolve_key_and_domain(args) -> tuple[str, str]:
    spec = readers.DATASETS[args.dataset]
    if args.dataset not in OWN_DATA:
        if args.name is not None:
            raise ValueError(f"--name applies to --dataset folder or csv only (the key of {args.dataset} is fixed)")
        if args.domain is not None and args.domain != spec.domain:
            raise ValueError(f"--domain {args.domain}: {args.dataset} is a {spec.domain} data set")
        return spec.key, spec.domain
    if args.domain is None:
        raise ValueError(f"--dataset {args.dataset} needs --domain cxr|hwsi|efi|other (it picks the transform chain)")
    key = args.name or Path(os.path.abspath(args.root)).name.split(".")[0]
    if not key or any(c in key for c in "/\\|=:") or key in readers.DATASETS or key == "all":
        raise ValueError(f"--name {key!r}: use a plain name that is not a built-in dataset key")
    return key, args.domain


def task_and_metric(args) -> tuple[str, str, str, bool]:
    """(manifest task, headline metric, class weights, ordinal) of the data set: fixed for the
    built-in ones; for a table, from --task (and --label-cols) and --metric."""
    spec = readers.DATASETS[args.dataset]
    if args.dataset not in OWN_DATA and (args.task or args.metric):
        raise ValueError(f"--task and --metric apply to --dataset folder or csv only ({args.dataset}: {spec.task}, "
                         f"{spec.headline_metric})")
    if args.dataset != "csv" and args.task is not None:
        raise ValueError("--task applies to --dataset csv only (a folder of class folders is multiclass)")
    task = args.task or ("multilabel" if args.label_cols else spec.task)
    defaults = {"multiclass": (spec.headline_metric, spec.class_weights), "multilabel": ("auroc", "none"),
                "ordinal": ("qwk", "balanced")}
    metric, weights = defaults[task]
    manifest_task = "multilabel" if task == "multilabel" else "multiclass"
    if args.metric is None:
        return manifest_task, metric, weights, task == "ordinal"
    from kit.metrics import metric_names  # scipy: only here, not for --help

    if args.metric is not None and args.metric not in metric_names(manifest_task):
        raise ValueError(f"--metric {args.metric!r}: a {task} task has {', '.join(metric_names(manifest_task))}")
    return manifest_task, args.metric or metric, weights, task == "ordinal"


def resolve_protocol(args) -> None:
    """Fill in --protocol, --val-frac and --test-frac from the data set (sources: the paper's
    protocol) and refuse the combinations that contradict it."""
    if args.protocol is None:
        args.protocol = "paper" if args.dataset in PAPER_SOURCES else "held-out-test"
    if args.find_twins is None:  # twins matter where a test split could hold one of them; it reads every image
        args.find_twins = args.protocol == "held-out-test" and args.check_files
    if args.protocol == "paper":
        if args.dataset not in PAPER_SOURCES:
            raise ValueError(f"--protocol paper: the paper's source protocol applies to {', '.join(PAPER_SOURCES)}; "
                             f"a target keeps its train/val/test split (--protocol held-out-test)")
        if args.test_frac:
            raise ValueError(f"--test-frac {args.test_frac} with --protocol paper: the paper's sources have no test "
                             f"split; use --protocol held-out-test for one")
        args.test_frac = 0.0
        args.val_frac = paper.SOURCE_VAL_FRAC if args.val_frac is None else args.val_frac
    else:
        args.val_frac = 0.15 if args.val_frac is None else args.val_frac
        args.test_frac = 0.15 if args.test_frac is None else args.test_frac


def check_split_sizes(df: pd.DataFrame, root: Path, args) -> None:
    """A split a later stage needs must not come out empty: training needs >= 2 train and >= 2 val
    images (BatchNorm cannot normalise a batch of one), evaluate.py a test split when one was asked
    for (--test-frac > 0 or an official test split). The paper's protocol has no test split by design."""
    counts = df["split"].value_counts()
    wants_test = args.protocol != "paper" and (args.test_frac > 0 or "test" in set(df.get("official_split", [])))
    needed = {"train": 2, "val": 2, "test": 1 if wants_test else 0}
    for split, least in needed.items():
        if counts.get(split, 0) < least:
            raise ValueError(f"{root}: the {split} split would hold {counts.get(split, 0)} image(s) of {len(df)} "
                             f"(training needs >= 2 train and >= 2 val images; a test split needs one); use more "
                             f"data or other --val-frac/--test-frac")


def check_classes(df: pd.DataFrame, classes: list, task: str, root: Path) -> None:
    """A model learns to tell classes apart: a table whose rows all hold one label, or a train split with fewer
    than two classes present, is refused (it would train to a loss of 0 and an accuracy of 1.0). A val or test
    split with one class only (a small data set, a given split) is said: its kappa and AUROC are undefined."""
    if len(classes) < 2:
        raise ValueError(f"{root}: every image has the label {classes[0]!r}; a classifier needs at least two classes")
    label = "label" if task == "multiclass" else "labels"
    for split in manifests.SPLITS:
        present = df.loc[df["split"] == split, label]
        if present.empty or present.astype(str).nunique() > 1:
            continue
        name = classes[present.iloc[0]] if task == "multiclass" else present.iloc[0] or "(no label)"
        if split == "train":
            raise ValueError(f"{root}: the train split holds one class only ({name!r}, {len(present)} image(s)); a "
                             f"model needs at least two classes to learn from: check the labels and the given split")
        print(f"note: the {split} split holds one class only ({name!r}, {len(present)} image(s)): its kappa and "
              f"AUROC are undefined; more data, or other --val-frac/--test-frac, give it more")


def demo_data_record(root: Path) -> dict | None:
    """The DEMO_DATA.json tools/make_demo_data.py writes into every data set it generates (None for any other
    folder): the manifest's JSON keeps it, so a report can say its data were generated, not real images."""
    path = root / "DEMO_DATA.json"
    if not root.is_dir() or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err}); tools/make_demo_data.py --overwrite writes "
                         "the demo data set again") from None
    if not isinstance(record, dict) or not record.get("generated"):
        raise ValueError(f"{path}: not the record tools/make_demo_data.py writes (a JSON object with "
                         f'"generated": true); tools/make_demo_data.py --overwrite writes the demo data set again')
    return record


def find_twins(df: pd.DataFrame, thumbs, args) -> dict:
    """The pictures in the data set twice or more under different names (kit/overlap.py): their patients
    go to one split together (make_splits(together=...)). Twins that a given split (official or --split-col)
    puts into two splits are refused, or with --skip-bad moved to one split (test, then val, then train).
    Returns {"groups", "images", "moved", "patients": [patient groups], "examples"}; prints what it found."""
    from kit import overlap

    wanted = set(df["image"].astype(str))
    kept = np.array([path in wanted for path in thumbs.images], dtype=bool)
    groups = overlap.twin_groups(overlap.Thumbnails(thumbs.key, thumbs.domain, list(np.asarray(thumbs.images)[kept]),
                                                    thumbs.thumbs[kept], {}))
    image = df["image"].astype(str)
    given = df["official_split"].fillna("").astype(str) if "official_split" in df.columns else pd.Series("", df.index)
    moved = 0
    for group in groups:
        rows = image.isin(group)
        splits = sorted(set(given[rows]) - {""})
        if len(splits) > 1:
            if not args.skip_bad:
                first, second = (image[rows & (given == split)].iloc[0] for split in splits[:2])
                raise ValueError(f"{first} and {second} are one picture (kit/overlap.py), but the data set's own "
                                 f"split puts them in {splits[0]} and {splits[1]}; a picture must stay in one split "
    """The keyword options of --dataset's reader (OWN_OPTIONS); another data set's reader option is refused."""
                                 f"to one split")
            winner = next(split for split in ("test", "val", "train") if split in splits)
            moved += int((rows & (given != winner) & (given != "")).sum())
            df.loc[rows, "official_split"] = winner
    patients = [sorted(set(df.loc[image.isin(group), "patient"].astype(str))) for group in groups]
    patients = [group for group in patients if len(group) > 1]
    n_images = sum(len(group) for group in groups)
    if groups:
        example = " = ".join(Path(path).name for path in groups[0][:3])
        print(f"twins: {len(groups)} picture(s) are here twice or more under other names ({n_images} images, e.g. "
              f"{example}); each is kept in one split" + (f"; {moved} image(s) moved to their twin's given split "
                                                          f"(--skip-bad)" if moved else ""))
    else:
        print(f"twins: none among {kept.sum()} images (no picture here twice under another name)")
    unchecked = sum(image in thumbs.bad for image in image.unique())
    if unchecked:
        example, reason = next((i, r) for i, r in thumbs.bad.items() if i in set(image))
        print(f"twins: {unchecked} image(s) could not be read and were not compared, e.g. {example}: {reason}")
    return {"groups": len(groups), "images": n_images, "moved": moved, "patients": patients,
            "examples": [list(group) for group in groups[:5]]}


def checked_root(args) -> Path:
    """--root as an absolute path, after the checks that need no data: protocol, fractions, --max-per-class."""
    resolve_protocol(args)
    manifests.check_fractions(args.val_frac, args.test_frac)
    if args.max_per_class is not None and args.max_per_class < 1:
        raise ValueError(f"--max-per-class {args.max_per_class}: must be >= 1")
    root = Path(os.path.abspath(args.root))
    if args.dataset == "csv" and not root.is_file():
        raise ValueError(f"{root}: --root must be the table (CSV, TSV or Excel file) with --dataset csv")
    if args.dataset != "csv" and not root.is_dir():
        raise ValueError(f"{root}: --root folder not found")
    return root


def reader_options(args, task: str, ordinal: bool) -> dict:
    """The keyword options of --dataset's reader (OWN_OPTIONS); an option of another data set's reader is refused."""
    options = {name: getattr(args, name) for name in OWN_OPTIONS.get(args.dataset, ())}
    unused = [f"--{k.replace('_', '-')}" for d, names in OWN_OPTIONS.items() if d != args.dataset for k in names
              if getattr(args, k) not in (None, "image")]
    if unused:
        raise ValueError(f"{', '.join(unused)}: not an option of --dataset {args.dataset}")
    if args.dataset == "csv":
        options["task"] = "ordinal" if ordinal else task
    return options


def read_images(args, root: Path, key: str, domain: str, options: dict):
    """The native layout read and its images checked (one pass, first bytes of each file): (rows, classes,
    thumbnails for --find-twins or None, bad rows). Bad rows are an error unless --skip-bad (and some are good)."""
    df, classes = readers.read_dataset(args.dataset, root, check_files=False, skip_bad=args.skip_bad, **options)
    if df.attrs.get("patients_from"):
        print(f"patients: {df.attrs['patients_from']}")
    if df.attrs.get("duplicates_dropped"):
        print(f"dropped {df.attrs['duplicates_dropped']} row(s) that repeat an image with the same label")
    if args.check_files:
        df = readers.check_images(df)
    thumbs = None
    if args.find_twins:  # a thumbnail of every image, kept for check_overlap.py too
        from kit import overlap

        thumbs = overlap.thumbnails(df.loc[df[readers.PROBLEM] == "", "image"], key=key, domain=domain,
                                    manifest_csv=Path(args.out) / f"{key}.csv", workers=args.workers)
    bad = readers.bad_rows(df)
    if len(bad) and (not args.skip_bad or len(bad) == len(df)):  # --skip-bad never leaves nothing
        raise readers.bad_rows_error(bad, len(df))
    return df.drop(index=bad.index, columns=[readers.ORIGIN, readers.PROBLEM]), classes, thumbs, bad


def paper_protocol_rows(args, df: pd.DataFrame):
    """--protocol paper: every image of a source (official test rows too), to be re-split 90/10; (rows, what
    was added and left out). Any other protocol: the rows as they are, {}."""
    if args.protocol != "paper":
        return df, {}
    df, protocol_info = manifests.paper_source_rows(df, args.dataset)
    print(f"protocol paper (Section 5.2): every image, {100 * (1 - args.val_frac):g}/{100 * args.val_frac:g} "
          f"train/val by patient, no test split")
    if args.dataset == "eyepacs":
        print(f"official test set: {protocol_info['added_from_test']:,} images of grades 1-4 added (paper: "
              f"{paper.EYEPACS_TEST_ADDED:,}), {protocol_info['left_out_test']:,} of grade 0 left out"
              + ("" if protocol_info["added_from_test"] + protocol_info["left_out_test"] else
                 " (no retinopathy_solution.csv + test/ next to trainLabels.csv: none to add)"))
    elif protocol_info["added_from_test"]:
        print(f"official test list: its {protocol_info['added_from_test']:,} images are in the pool too")
    return df, protocol_info


def split_rows(args, df: pd.DataFrame, thumbs, root: Path, classes: list, task: str):
    """Optionally thinned to --max-per-class, then split by patient (twins' patients together) and checked:
    (rows with their split, what find_twins found or None)."""
    if args.max_per_class is not None:
        n_before = len(df)
        df = manifests.cap_per_class(df, args.max_per_class, seed=args.seed)
        print(f"--max-per-class {args.max_per_class}: kept {len(df)} of {n_before} images")
    twins = find_twins(df, thumbs, args) if thumbs is not None else None
    df = manifests.make_splits(df, val_frac=args.val_frac, test_frac=args.test_frac, seed=args.seed,
                               together=twins["patients"] if twins else ())
    check_split_sizes(df, root, args)
    check_classes(df, classes, task, root)
    if "official_split" in df.columns and (df["official_split"] != "").any():
        shipped = sorted(set(df["official_split"]) - {""})
        print(f"official split present ({', '.join(shipped)}): kept; missing splits carved from train")
    return df, twins


def write_manifest(out_dir: Path, key: str, df: pd.DataFrame, meta: dict, bad: pd.DataFrame) -> tuple[Path, Path]:
    """<key>.csv, <key>.json (last: a manifest without its sidecar fails to load) and <key>_skipped.csv (the bad
    rows; none: an older list removed); returns (csv path, json path)."""
    # one writer per manifest (its .csv, .json and skipped list must come from one run): a second
    # prepare_data.py writing the same manifest is refused; the lock is the hidden .<key>.lock
    locks.hold(out_dir / f".{key}.lock", what=f"manifest {out_dir / key}.csv")
    csv_path, json_path = out_dir / f"{key}.csv", out_dir / f"{key}.json"
    skipped_path = out_dir / f"{key}_skipped.csv"
    if len(bad):
        files.write_text_atomic(skipped_path, bad.to_csv(index=False))
        print(f"skipped {len(bad)} bad row(s) (unknown label, missing, empty or unreadable image): "
              f"listed in {skipped_path}")
    else:
        skipped_path.unlink(missing_ok=True)  # a list from an earlier run would no longer be true
    files.write_text_atomic(csv_path, df.to_csv(index=False))
    files.write_text_atomic(json_path, json.dumps(meta, indent=2) + "\n")
    return csv_path, json_path


def print_counts(args, df: pd.DataFrame, classes: list, task: str, meta: dict) -> None:
    """The class x split counts; next to them what the paper states (its image count, its Table 1)."""
    with pd.option_context("display.max_rows", 200, "display.width", 160):
        print(manifests.count_table(df, classes, task).to_string())
    if args.protocol == "paper":  # the count the paper states, next to what was built
        splits = df["split"].value_counts()
        print(paper.stated_vs_built(args.dataset, len(df), int(splits.get("train", 0)), int(splits.get("val", 0))))
    if args.dataset in paper.TABLE1:  # the paper's Table 1 (images per class), next to what was built
        print(paper.table1_vs_built(args.dataset, {c: sum(n[c] for n in meta["counts"].values()) for c in classes}))


def prepare_manifest(args) -> tuple[Path, Path]:
    """Read, split and write one manifest; returns (csv path, json path). Errors: ValueError."""
    # --- check the arguments before reading anything
    root = checked_root(args)
    key, domain = resolve_key_and_domain(args)
    task, headline, class_weights, ordinal = task_and_metric(args)
    options = reader_options(args, task, ordinal)
    print(f"dataset {args.dataset} -> key {key} ({domain}, {'ordinal' if ordinal else task}), root {root}")
    demo = demo_data_record(root)
    if demo:
        print(f"demo data: generated by {demo.get('generator')} (seed {demo.get('seed')}, scale {demo.get('scale')}), "
              "not images of patients")

    # --- read and check the images; the paper's protocol for a source; split by patient
    df, classes, thumbs, bad = read_images(args, root, key, domain, options)
    df, protocol_info = paper_protocol_rows(args, df)
    df, twins = split_rows(args, df, thumbs, root, classes, task)

    # --- write <key>.csv and <key>.json, print the counts
    meta = {
        "key": key, "dataset": args.dataset, "domain": domain, "task": task, "ordinal": ordinal, "classes": classes,
        "root": str(root), "seed": args.seed, "protocol": args.protocol, "val_frac": args.val_frac,
        "test_frac": args.test_frac, **protocol_info,
        "paper_images": paper.SOURCE_IMAGES.get(args.dataset) if args.protocol == "paper" else None,
        "counts": manifests.split_counts(df, classes, task),
        "split_images": {split: int((df["split"] == split).sum()) for split in manifests.SPLITS},
        "n_images": len(df), "n_patients": int(df["patient"].nunique()),
        "headline_metric": headline, "class_weights": class_weights,
        "check_files": args.check_files, "skip_bad": args.skip_bad, "n_skipped": len(bad),
        "max_per_class": args.max_per_class,
        "twins": None if twins is None else {k: v for k, v in twins.items() if k != "patients"},
        "demo_data": demo,  # DEMO_DATA.json of a data set tools/make_demo_data.py generated; None: not generated
    }
    csv_path, json_path = write_manifest(Path(args.out), key, df, meta, bad)
    print_counts(args, df, classes, task, meta)
    print(f"wrote {csv_path} and {json_path}")

    # --- preprocessing cache
    if args.cache_size:
        build_cache(csv_path, args)
    return csv_path, json_path


def main(args):
    with cli.user_errors():  # one clear line naming the file and the problem
        check_mode(args)
        if args.manifest:  # the caches of manifests written earlier, nothing else
            for csv_path in args.manifest:
                build_cache(csv_path, args)
        else:
            prepare_manifest(args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
