"""Images/s of the training data path at ChestX-ray14 scale: the naive chain (decode a 1024 px
PNG and run the head, transforms.loader_transforms("cxr"), every epoch) vs the cached path
(cache.build_cache once, then data.ImageDataset reading the memmap), through the same
data.make_loader with the same number of workers, in the same run.

    python bench/bench_loader.py                      # ~1-2 minutes on 2 cores
    python bench/bench_loader.py --workers 8 --images 400

Both paths deliver what loop.run_epoch takes: uint8 pixels and each image's augmentation
drawn as 8 numbers. The pixel work of the augmentation and the normalisation
(transforms.apply_tail) runs batched on the training device, inside the step, whichever path
fed it; it is measured here on its own (on the GPU when there is one, else on this CPU) and,
for the cached path, also in line with the loader on this CPU ("cached + tail here").

The loaders are measured in alternating windows and each keeps its best window, so other load
on the machine does not favour either. Prints the figures; the last line is
ratio=<cached images/s / naive images/s> (target >= 30).
"""
import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import transforms  # noqa: E402
from kit import cache, data  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="distinct 1024 px PNGs to generate")
    parser.add_argument("--image-size", type=int, default=224, help="training image size in px")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="loader processes, the same for both paths (default: all cores)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one measuring window")
    parser.add_argument("--rounds", type=int, default=5, help="windows per path, alternating between the paths")
    parser.add_argument("--out", type=str, default=None, help="folder for the PNGs (default: a temporary one)")
    return parser


def chest_film(seed, size=1024):
    """A grey 1024 px chest-film-like PNG: body, two lungs, ribs, mild noise; ~450 KB, like the
    real ChestX-ray14 files (42 GB / 112,120 images)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size].astype(np.float32) / size * 1024
    body = 90 + 60 * np.exp(-((cols - 512) / 420) ** 2) * np.exp(-((rows - 560) / 500) ** 2)
    lungs = sum(70 * np.exp(-(((cols - cx - rng.normal(0, 20)) / 150) ** 2 + ((rows - 520) / 260) ** 2) ** 2)
                for cx in (330, 700))
    ribs = 12 * np.sin(rows / 22.0 + rng.uniform(0, 6))
    return np.clip(body - lungs + ribs + rng.normal(0, 2, rows.shape), 0, 255).astype(np.uint8)


def _write_film(args):
    seed, path = args
    Image.fromarray(chest_film(seed)).save(path)


def measure(sources, *, rounds, seconds):
    """Images/s of each source (an iterator of batches; each batch's first item holds the images)
    in alternating windows (other load on the machine hits every source alike); each source's
    best window, after a warm-up (worker start-up, first batches)."""
    for batches in sources.values():
        for _ in range(3):
            next(batches)
    rates = {name: [] for name in sources}
    for _ in range(rounds):
        for name, batches in sources.items():
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                count += len(next(batches)[0])
            rates[name].append(count / (time.perf_counter() - start))
    return rates


def forever(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def with_tail(loader, device):
    """The loader's batches through transforms.apply_tail on `device` (what loop.run_epoch does
    before the forward pass); waits for the device at every batch, so the rate is honest."""
    for images, tails, targets in forever(loader):
        out = transforms.apply_tail(images.to(device, non_blocking=True), tails, memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield out, targets


def tail_rate(batch, device, *, rounds, seconds):
    """Images/s of apply_tail alone on `device` on one (uint8 images, tails) batch already there:
    the best of `rounds` windows, like the loaders."""
    images, tails = batch[0].to(device), batch[1]
    for _ in range(3):
        transforms.apply_tail(images, tails, memory_format=torch.channels_last)
    rates = []
    for _ in range(rounds):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            transforms.apply_tail(images, tails, memory_format=torch.channels_last)
            count += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(count / (time.perf_counter() - start))
    return max(rates)


def main(args):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        # --- data: 1024 px grey PNGs and a manifest of them (rows repeated so no path runs dry)
        start = time.time()
        paths = [str(folder / f"film_{i:05d}.png") for i in range(args.images)]
        with multiprocessing.Pool(args.workers) as pool:
            pool.map(_write_film, list(enumerate(paths)))
        megabytes = sum(os.path.getsize(p) for p in paths) / len(paths) / 2**10
        print(f"generated {len(paths)} PNGs of 1024x1024 grey, {megabytes:.0f} KB each, in {time.time() - start:.1f} s")
        repeats = 2000
        df = pd.DataFrame({"image": paths * repeats, "label": 0})
        csv_path = folder / "films.csv"
        df.iloc[: len(paths)].assign(patient="p", split="train").to_csv(csv_path, index=False)
        csv_path.with_suffix(".json").write_text('{"key": "films", "domain": "cxr"}\n')
        settings = dict(task="multiclass", classes=["a", "b"], image_size=args.image_size, train=True, domain="cxr")

        # --- cached: build once (timed apart), then memmap + random tail
        result = cache.build_cache(csv_path, image_size=args.image_size, workers=args.workers, progress=False)
        size = os.path.getsize(result["pixels"])
        print(f"cache build: {result['images']} images in {result['seconds']:.1f} s "
              f"({result['images'] / result['seconds']:.0f} images/s, {args.workers} processes), "
              f"{size / len(paths) / 2**10:.0f} KB per image "
              f"(ChestX-ray14, 112,120 images: {112_120 * size / len(paths) / 1e9:.1f} GB)")
        naive_set = data.ImageDataset(df, **settings)  # no cache_dirs: decode + head every time
        cached_set = data.ImageDataset(df, **settings, cache_dirs=[folder])
        assert (naive_set.n_cached, cached_set.n_cached) == (0, len(df))
        cpu = torch.device("cpu")
        # the tail's pixel work alone, before any loader thread or process exists
        batch = data.stack_in_numpy([cached_set[i] for i in range(args.batch_size)])
        for device in [cpu] + ([torch.device("cuda")] if torch.cuda.is_available() else []):
            name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                    else f"CPU, {torch.get_num_threads()} threads")
            print(f"apply_tail alone (augment + normalise, batch {args.batch_size}, {args.image_size} px) on {name}: "
                  f"{tail_rate(batch, device, rounds=3, seconds=args.seconds / 2):.0f} images/s")
        loaders = {name: data.make_loader(dataset, batch_size=args.batch_size, train=True, workers=args.workers,
                                            seed=0, device=cpu)
                   for name, dataset in (("naive", naive_set), ("cached", cached_set), ("cached + tail here", cached_set))}
        sources = {"naive": forever(loaders["naive"]), "cached": forever(loaders["cached"]),
                   "cached + tail here": with_tail(loaders["cached + tail here"], cpu)}
        rates = measure(sources, rounds=args.rounds, seconds=args.seconds)
        for name, what in (("naive", "naive chain (PNG decode + head, per epoch)"),
                           ("cached", "cached path (memmap)"),
                           ("cached + tail here", "cached path + apply_tail on this CPU, in line")):
            print(f"{what}, --workers {args.workers} ({type(loaders[name]).__name__}): "
                  f"{max(rates[name]):.0f} images/s (windows: {', '.join(f'{r:.0f}' for r in rates[name])})")
        # the cached path alone, with the naive workers shut down: in the thread (what make_loader
        # picks for --workers <= 2) and in --workers DataLoader processes
        del sources, loaders["naive"]
        processes = torch.utils.data.DataLoader(cached_set, batch_size=args.batch_size, shuffle=True,
                                                num_workers=args.workers, persistent_workers=True)
        alone = measure({"thread": forever(loaders["cached"]), "processes": forever(processes)},
                        rounds=1, seconds=args.seconds)
        print(f"cached path alone: {alone['thread'][0]:.0f} images/s in one thread (ThreadLoader), "
              f"{alone['processes'][0]:.0f} images/s in {args.workers} DataLoader processes")
        naive, cached = max(rates["naive"]), max(rates["cached"])
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"ratio={cached / naive:.1f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
