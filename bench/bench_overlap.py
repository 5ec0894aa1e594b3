"""The same-picture check (check_overlap.py, kit/overlap.py): how much it finds, how little it mistakes,
and how long the full study's check takes on 2 CPU cores.

    python bench/bench_overlap.py                                  # ~5 minutes on 2 CPU cores
    python bench/bench_overlap.py --real sample_data               # + the real sample files (COVID-19, NIH, ...)
    python bench/bench_overlap.py --sources 40000 --targets 10000  # a larger scale test

1. Recall: every alteration check_overlap.py is made for (kit/overlap.py ALTERATIONS, each at its worst
   setting) applied to generated pictures of the three domains (the demo generator's chest X-rays,
   fundus photographs and tissue tiles); each copy is looked for among its original and look-alikes.
2. False matches: the demo's own images (tools/make_demo_data.py: different patients, the same anatomy
   and layout, the hard case), every domain against itself, less the pictures the demo plants on purpose
   (two ChestX-ray14 radiographs in COVID-19 Radiography, one COVID twin), and the scale test's targets;
   with --real, the real samples, where COVID-18.png and COVID-21.png are one picture and every other
   image is distinct.
3. Scale: --sources x --targets generated radiograph thumbnails (2 % of the targets copies of sources,
   the alterations in turn, each looked for among all the sources): the share of copies found, the search
   from stored thumbnails (what a study run costs once the thumbnails exist: the preprocessing cache
   build makes them from the pictures it decodes anyway), its peak memory, and the extrapolation to the
   full study (169,198 source and ~30,000 target images); plus the cost of a thumbnail made from the
   files, per image at the real data sets' sizes, and the full study from raw files.
Lines: recall per alteration, false-match shares, times; the last lines are recall_min=,
recall_at_scale_min=, false_share_max=, full_study_minutes_from_thumbnails= and
full_study_minutes_from_files=.
"""
import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import make_demo_data as demo  # noqa: E402
from kit import overlap  # noqa: E402

# The full study (paper Sections 5.2.1-5.2.2): images per data set and a file like theirs to time.
FULL_STUDY = {  # name: (images, (width, height), format, domain)
    "ChestX-ray14": (112_120, (1024, 1024), "PNG", "cxr"),
    "BreakHis": (7_909, (700, 460), "PNG", "hwsi"),
    "EyePACS": (49_169, (3888, 2592), "JPEG", "efi"),
    "Shenzhen": (662, (3000, 2900), "PNG", "cxr"),
    "COVID-19 Radiography": (21_165, (299, 299), "PNG", "cxr"),
    "Kather 2016": (5_000, (150, 150), "TIFF", "hwsi"),
    "Messidor": (1_200, (2240, 1488), "TIFF", "efi"),
    "DeepDRiD": (1_600, (1956, 1934), "JPEG", "efi"),
}
SOURCE_NAMES = ("ChestX-ray14", "BreakHis", "EyePACS")
SOURCES_FULL, TARGETS_FULL = 169_198, 30_000 - 1  # 662 + 21,165 + 5,000 + 1,200 + 1,600 target images, rounded


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--originals", type=int, default=40, help="generated pictures per domain for the recall test")
    parser.add_argument("--look-alikes", type=int, default=200, help="other pictures per domain among which each copy is found")
    parser.add_argument("--demo-scale", type=float, default=2.0, help="tools/make_demo_data.py --scale of the false-match test")
    parser.add_argument("--real", type=Path, default=None, help="folder of the real samples (covid19_radiography/, chestxray14/images/, breakhis/, eyepacs/images/)")
    parser.add_argument("--sources", type=int, default=20_000, help="source thumbnails of the scale test")
    parser.add_argument("--targets", type=int, default=5_000, help="target thumbnails of the scale test")
    parser.add_argument("--workers", type=int, default=2, help="processes of the demo generator")
    return parser


def render(domain, seed, size=256):
    rng = np.random.default_rng((11, seed))
    if domain == "cxr":
        return demo.render_cxr(rng, size, size)[0]
    if domain == "efi":
        return demo.render_fundus(rng, round(1.5 * size), size, severity=seed % 5, eye="left", radius_frac=0.47)[0]
    return demo.render_histology(rng, size, size, tissue=demo.KATHER_FOLDERS[seed % 8].split("_", 1)[1])[0]


def recall(args, folder):
    """{alteration: found share (worst domain)}, and the number of wrong pairs among the copies."""
    worst, wrong = {name: 1.0 for name in overlap.ALTERATIONS}, 0
    for domain in ("cxr", "efi", "hwsi"):
        paths = []
        for seed in range(args.originals + args.look_alikes):
            paths.append(folder / f"{domain}_{seed}.png")
            Image.fromarray(render(domain, seed)).save(paths[-1])
        database = np.stack([overlap.read_thumbnail(str(p))[0] for p in paths])
        template = overlap.template_of(database)
        prepared = overlap.prepare(database, template)
        for name in overlap.ALTERATIONS:
            copies = [overlap.write_altered(p, folder, f"{domain}_{i}_copy")[name] for i, p in
                      enumerate(paths[:args.originals])]
            found = overlap.same_pictures(overlap.prepare(np.stack([overlap.read_thumbnail(c)[0] for c in copies]),
                                                          template), prepared, domain=domain)
            hits = {(int(i), int(j)) for i, j, _ in found}
            share = len({i for i, j in hits if i == j}) / args.originals
            wrong += sum(i != j for i, j in hits)
            worst[name] = min(worst[name], share)
            print(f"  recall {domain:4s} {name:24s} {share:7.1%}")
    return worst, wrong


def false_matches(args, folder):
    """Share of the demo's distinct images that are paired with another image, per domain."""
    demo.main(demo.get_args_parser().parse_args(["--out", str(folder), "--scale", str(args.demo_scale),
                                                 "--workers", str(args.workers)]))
    domains = {"chestxray14": "cxr", "shenzhen": "cxr", "covid19_radiography": "cxr", "breakhis": "hwsi",
               "kather2016": "hwsi", "eyepacs": "efi", "messidor": "efi", "deepdrid": "efi"}
    shares = {}
    for domain in ("cxr", "efi", "hwsi"):
        images = sorted(str(p) for key, d in domains.items() if d == domain for p in (folder / key).rglob("*")
                        if p.suffix.lower() in (".png", ".jpeg", ".jpg", ".tif") and "/masks/" not in str(p))
        thumbs = np.stack([overlap.read_thumbnail(p)[0] for p in images])
        found = overlap.same_pictures(overlap.prepare(thumbs, overlap.template_of(thumbs)), domain=domain)
        flagged = {int(i) for i, _, _ in found} | {int(j) for _, j, _ in found}
        expected = set()
        if domain == "cxr":  # the demo's planted pictures: two borrowed radiographs (and their originals), a twin
            covid = folder / "covid19_radiography" / "COVID-19_Radiography_Dataset"
            n = len(list((covid / "Normal" / "images").glob("*.png")))
            planted = [images.index(str(covid / cls / "images" / f"{cls}-{k}.png"))
                       for cls, k in (("COVID", n), ("Normal", n), ("COVID", n - 2), ("COVID", n + 1))]
            originals = {int(j) if int(i) in planted[:2] else int(i) for i, j, _ in found if {int(i), int(j)} & set(planted[:2])}
            expected = set(planted) | originals
            print(f"  the demo's planted pictures: {len(set(planted) - flagged)} of 4 not found")
        false = flagged - expected
        shares[domain] = len(false) / max(1, len(images) - len(expected))
        print(f"  false {domain:4s} {len(false)} of {len(images) - len(expected)} distinct demo images "
              f"flagged ({shares[domain]:.3%})")
    return shares


def real_samples(folder):
    groups = {"cxr": sorted((folder / "covid19_radiography").glob("*/*.png")) + sorted((folder / "chestxray14" / "images").glob("*.png")),
              "hwsi": sorted((folder / "breakhis").glob("*.png")) + sorted((folder / "nct_crc_he").glob("*.tif*")),
              "efi": sorted((folder / "eyepacs" / "images").glob("*.jp*g"))}
    wrong = 0
    for domain, paths in groups.items():
        if not paths:
            continue
        thumbs = np.stack([overlap.read_thumbnail(str(p))[0] for p in paths])
        found = overlap.same_pictures(overlap.prepare(thumbs, overlap.template_of(thumbs)), domain=domain)
        pairs = sorted(tuple(sorted((paths[int(i)].name, paths[int(j)].name))) for i, j, _ in found)
        expected = [("COVID-18.png", "COVID-21.png")] if domain == "cxr" else []
        wrong += len(set(pairs) ^ set(expected))
        print(f"  real {domain:4s} {len(paths)} images: pairs found {pairs} (expected {expected})")
    return wrong


def scale(args):
    """Seconds of each part of the search from stored thumbnails, the peak memory, the share of targets
    falsely paired, and the share of planted copies found per alteration."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    sources = np.stack([overlap.thumbnail(render("cxr", 10_000 + i)) for i in range(args.sources)])
    targets = np.stack([overlap.thumbnail(render("cxr", 100_000 + i)) for i in range(args.targets)])
    copies = rng.choice(args.sources, args.targets // 50, replace=False)
    names = list(overlap.ALTERATIONS)
    with tempfile.TemporaryDirectory() as tmp:
        for k, i in enumerate(copies):  # 2 % of the targets: a copy of a source, the alterations in turn
            Image.fromarray(render("cxr", 10_000 + int(i))).save(f"{tmp}/{k}.png")
            targets[k] = overlap.read_thumbnail(overlap.write_altered(f"{tmp}/{k}.png", tmp, str(k))[names[k % len(names)]])[0]
    print(f"  generated {args.sources:,} + {args.targets:,} radiograph thumbnails in {time.perf_counter() - start:.0f} s")
    parts, across, inside = {}, {}, {}
    start = time.perf_counter()
    template = overlap.template_of(sources, targets)
    prepared_s, prepared_t = overlap.prepare(sources, template), overlap.prepare(targets, template)
    parts["frames and descriptors"] = time.perf_counter() - start
    found = overlap.same_pictures(prepared_t, prepared_s, domain="cxr", timings=across)
    within = overlap.same_pictures(prepared_t, domain="cxr", timings=inside)
    parts |= {"search, targets x sources": across["search"], "align, targets x sources": across["align"],
              "search, targets x targets": inside["search"], "align, targets x targets": inside["align"]}
    hits = {(int(i), int(j)) for i, j, _ in found}
    planted = set(enumerate(copies.tolist()))
    recall = {}
    for n, name in enumerate(names):
        found_copies = [(k, int(i)) in hits for k, i in enumerate(copies) if k % len(names) == n]
        recall[name] = np.mean(found_copies)
        print(f"  recall at scale {name:24s} {recall[name]:7.1%} of {len(found_copies)}")
    false = {i for i, j in hits if (i, j) not in planted} | {int(i) for i, _, _ in within} | {int(j) for _, j, _ in within}
    print(f"  planted copies found: {sum(p in hits for p in planted)} of {len(copies)}; target images in a pair that "
          f"is not one picture: {len(false)} of {args.targets:,} ({len(false) / args.targets:.3%})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    for name, seconds in parts.items():
        print(f"  {name:28s} {seconds:7.1f} s")
    for name, timings in (("targets x sources", across), ("targets x targets", inside)):
        print(f"  {name}: {timings.get('pairs', 0):,} candidate pairs aligned coarsely, "
              f"{timings.get('fine pairs', 0):,} of them finely")
    print(f"  peak memory (whole bench process) {peak:.2f} GB")
    return parts, peak, len(false) / args.targets, recall


def file_costs(folder):
    """Seconds per thumbnail made from a file like each data set's (size and format), on one core (median)."""
    costs = {}
    for name, (_, (width, height), fmt, domain) in FULL_STUDY.items():
        picture = render(domain, 7, size=256)
        big = Image.fromarray(picture).resize((width, height), Image.BILINEAR)
        noisy = np.clip(np.asarray(big, dtype=np.int16) + np.random.default_rng(0).integers(-3, 4, np.asarray(big).shape),
                        0, 255).astype(np.uint8)  # film grain: a real file does not compress like a drawing
        path = folder / f"{name.replace(' ', '_')}.{ {'PNG': 'png', 'JPEG': 'jpg', 'TIFF': 'tif'}[fmt] }"
        Image.fromarray(noisy).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        overlap.read_thumbnail(str(path))
        seconds = []
        for _ in range(15):  # the median: one file's time varies by 10-20 % from one read to the next
            start = time.perf_counter()
            overlap.read_thumbnail(str(path))
            seconds.append(time.perf_counter() - start)
        costs[name] = float(np.median(seconds))
        print(f"  thumbnail from a {width}x{height} {fmt}: {1000 * costs[name]:6.1f} ms")
    return costs


def main(args):
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "recall").mkdir()
        print("1. recall of altered copies (each alteration at its worst setting; the worst domain counts)")
        worst, wrong = recall(args, tmp / "recall")
        print(f"  copies paired with a picture other than their original: {wrong}")
        print("2. false matches")
        shares = false_matches(args, tmp / "demo")
        real_wrong = real_samples(args.real) if args.real else None
        if real_wrong is not None:
            print(f"  real samples: {real_wrong} pair(s) other than expected")
        print(f"3. scale: {args.sources:,} sources x {args.targets:,} targets, from stored thumbnails")
        parts, peak, false_at_scale, recall_at_scale = scale(args)
        (tmp / "files").mkdir()
        costs = file_costs(tmp / "files")
    # extrapolation: frames and descriptors grow with the images, the exact nearest-neighbour search with
    # (query x database) images of one area (a target is compared with the sources of its own domain, and
    # with itself), the alignment of a fixed number of candidates per query with the targets
    n_bench, n_full = args.sources + args.targets, SOURCES_FULL + TARGETS_FULL
    sources = {domain: images for name, (images, _, _, domain) in FULL_STUDY.items() if name in SOURCE_NAMES}
    targets = [(images, domain) for name, (images, _, _, domain) in FULL_STUDY.items() if name not in SOURCE_NAMES]
    full = (parts["frames and descriptors"] * n_full / n_bench
            + parts["search, targets x sources"] * sum(n * sources[d] for n, d in targets) / (args.sources * args.targets)
            + parts["search, targets x targets"] * sum(n * n for n, _ in targets) / args.targets ** 2
            + (parts["align, targets x sources"] + parts["align, targets x targets"]) * TARGETS_FULL / args.targets)
    per_image = sum(parts.values()) / n_bench
    raw = sum(costs[name] * images for name, (images, *_) in FULL_STUDY.items()) / 2  # two processes
    print(f"per image of the scale test: {1000 * per_image:.2f} ms; extrapolated to {SOURCES_FULL:,} x "
          f"{TARGETS_FULL + 1:,} images (each target against the sources of its domain and itself): {full / 60:.1f} min from stored thumbnails, + {raw / 60:.1f} min to make "
          f"the thumbnails from the files on 2 cores")
    print(f"recall_min={min(worst.values()):.3f}")
    print(f"recall_at_scale_min={min(recall_at_scale.values()):.3f}")
    print(f"false_share_max={max(*shares.values(), false_at_scale):.4f}")
    print(f"full_study_minutes_from_thumbnails={full / 60:.1f}")
    print(f"full_study_minutes_from_files={(full + raw) / 60:.1f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
