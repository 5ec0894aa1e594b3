"""Find every target image that is the same picture as a source image, and every picture that sits
in two splits of a target under two names; write OUT/overlap.csv.

Public medical data sets are built from each other: the COVID-19 Radiography Database holds
ChestX-ray14 radiographs (as COVID and as Normal images), and twins of its own under two names.
A pretrained model that saw a target's test image (with another label) would be compared
unfairly, and a twin in train and test inflates the test accuracy. The study runs this after the
manifests and before any pretraining, and by default leaves the matched source images out of
pretraining (pretrain_source.py / pretrain_all.py --exclude-overlap OUT/overlap.csv).

    python check_overlap.py --sources runs/demo/manifests/{chestxray14,breakhis,eyepacs}.csv \\
        --targets runs/demo/manifests/{shenzhen,covid19_radiography}.csv --out runs/demo/overlap
    python check_overlap.py --sources OUT/manifests/chestxray14.csv --targets OUT/manifests/mytask.csv --out OUT/overlap

Found up to resizing, re-encoding (PNG <-> JPEG), 8 <-> 16 bit, grey <-> RGB, a border crop of up to
about 5 % a side and a mild brightness or contrast change; not a flip, a rotation or a heavy crop
(kit/overlap.py, docs/data.md). A target is compared with the sources of its own area (a target of
domain other with every source). Thumbnails are made once per image and kept next to each manifest
(cache/<key>_thumbs_*.npz), so a second run costs the search alone.

Writes (all at once: a killed run leaves the previous folder whole; a file whose content did not
change keeps its time, so the study redoes the pretraining only when what was found changes):
    overlap.csv   target, target_image, split, source, source_image, source_split, distance: one row per
                  pair of images that are one picture (source = the target itself: twins in two splits)
    summary.csv   per target and source: images compared, target images found (per split), source images
    overlap.json  the manifests checked (by content), the thresholds, the counts
"""
import argparse
import os
import shutil
import time
from pathlib import Path

from kit import cli


def get_args_parser():
    parser = cli.Parser(__doc__)
    data = parser.add_argument_group("data")
    data.add_argument("--targets", type=cli.existing_file, nargs="+", required=True,
                      help="target manifest CSVs from prepare_data.py (every split is checked)")
    data.add_argument("--sources", type=cli.existing_file, nargs="*", default=[],
                      help="source manifest CSVs from prepare_data.py (the data sets pretraining learns from)")
    data.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=False,
                      help="an unreadable image is left unchecked (listed in overlap.json) instead of stopping")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=str, required=True, help="output folder (overlap.csv, summary.csv, overlap.json)")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--workers", type=cli.positive_int, default=cli.available_cores(),
                         help="processes that make the thumbnails the first time (default: all cores)")
    runtime.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    return parser


def load(paths, role, args):
    """Each manifest (checked by load_manifest) with the thumbnails of its images."""
    from kit import identity, manifests, overlap

    loaded = []
    for path in paths:
        df, meta = manifests.load_manifest(path)
        thumbs = overlap.manifest_thumbnails(path, df, meta, workers=args.workers, progress=args.progress)
        if thumbs.bad and not args.skip_bad:
            image, reason = next(iter(thumbs.bad.items()))
            raise ValueError(f"{image}: cannot be read ({reason}); {len(thumbs.bad)} image(s) of {role} manifest "
                             f"{path} are unreadable: fix them, or pass --skip-bad to leave them unchecked")
        loaded.append((path, meta, identity.rows_hash(df), overlap.DataSet(meta["key"], meta["domain"], df, thumbs)))
    keys = [data.key for *_, data in loaded]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{role} manifests: the key {max(keys, key=keys.count)!r} comes twice")
    return loaded


def main(args):
    from kit import files, locks, overlap

    start = time.time()
    out = Path(args.out)
    locks.hold(out.parent / f".{out.name}.lock", what=f"overlap folder {out}")  # one writer; fails early if read-only
    targets, sources = load(args.targets, "target", args), load(args.sources, "source", args)
    clash = {data.key for *_, data in targets} & {data.key for *_, data in sources}
    if clash:
        raise ValueError(f"{sorted(clash)[0]}: given as both a target and a source")

    # --- every target against every source of its area, and against itself
    target_sets, source_sets = [data for *_, data in targets], [data for *_, data in sources]
    found = overlap.find_overlap(target_sets, source_sets)
    summary = overlap.summarise(found, target_sets, source_sets)

    # --- the three files, put in place together
    record = {
        "targets": {data.key: {"manifest": str(Path(path).resolve()), "rows": rows, "domain": data.domain}
                    for path, _, rows, data in targets},
        "sources": {data.key: {"manifest": str(Path(path).resolve()), "rows": rows, "domain": data.domain}
                    for path, _, rows, data in sources},
        "thumbnail": {"side": overlap.THUMB, "version": overlap.THUMB_VERSION},
        "match_distance": overlap.MATCH_DISTANCE, "pairs": len(found),
        "unreadable": {data.key: data.thumbs.bad for *_, data in (*targets, *sources) if data.thumbs.bad},
        "seconds": round(time.time() - start, 1),
    }
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, text in (("overlap.csv", found.to_csv(index=False)), ("summary.csv", summary.to_csv(index=False))):
        old = out / name
        if old.is_file() and old.read_text() == text:
            shutil.copy2(old, tmp / name)  # unchanged: its time stays, so what was built from it is not redone
        else:
            files.write_text_atomic(tmp / name, text)
    files.write_json(record, tmp / "overlap.json")
    files.publish(tmp, out)

    for row in summary.itertuples():
        if row.source == row.target:
            print(f"{row.target}: {row.found} of its {row.target_images} images are one picture with another image "
                  f"of it in another split")
        else:
            print(f"{row.target} in {row.source}: {row.found} of its {row.target_images} images (train "
                  f"{row.found_train}, val {row.found_val}, test {row.found_test}) are pictures of {row.source} "
                  f"({row.source_matched} of its {row.source_images} images)")
    print(f"wrote {out / 'overlap.csv'} ({len(found)} pairs) in {record['seconds']} s")


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with cli.user_errors():
        main(args)
