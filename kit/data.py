"""From manifest rows to batches: targets, the image dataset, and the loaders of a run.

``ImageDataset`` reads each row's image through the loader half of its domain's transform
chain (transforms.loader_transforms): uint8 pixels plus the image's augmentation drawn as 8
numbers; the training step applies the other half, batched, on the device
(transforms.apply_tail). Rows found in a valid preprocessing cache (cache.py) are read from
its memory map instead of decoded. ``train_val_loaders`` gives a run its two loaders, whose
order is a function of (seed, epoch) on any number of processes, so a resumed run replays it.
"""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import monai.data.utils
from monai.data import DataLoader, ThreadDataLoader
from tqdm import tqdm

import transforms

from . import cache, files
from .runtime import Distributed, gather, log


def manifest_folders(manifests) -> list[str]:
    """The folders of the manifests: where prepare_data.py / cache.py put the preprocessing cache."""
    return sorted({str(Path(m).parent) for m in manifests})


def encode_targets(df: pd.DataFrame, task: str, classes: list[str]) -> np.ndarray:
    """Manifest rows -> int class indices (multiclass) or a 0/1 float matrix (multilabel).

    Multilabel rows with a `known_labels` column (`|`-joined names; see mask_unknown_labels)
    get NaN for every other label: "not annotated", which the loss then ignores.
    """
    if task == "multiclass":
        labels = df["label"].to_numpy(dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"label index out of range 0..{len(classes) - 1}")
        return labels
    index = {name: i for i, name in enumerate(classes)}

    def indices(joined):
        for name in filter(None, str(joined).split("|")):
            if name not in index:
                raise ValueError(f"label {name!r} is not one of the manifest's classes")
            yield index[name]

    targets = np.zeros((len(df), len(classes)), dtype=np.float32)
    if "known_labels" in df.columns:
        targets[:] = np.nan
        for row, joined in enumerate(df["known_labels"].fillna("")):
            targets[row, list(indices(joined))] = 0.0
    for row, joined in enumerate(df["labels"].fillna("")):
        targets[row, list(indices(joined))] = 1.0
    return targets


def mask_unknown_labels(df: pd.DataFrame, data_meta: dict) -> pd.DataFrame:
    """--label-mask for the aggregated set: each row knows only its own dataset's labels.

    A ChestX-ray14 image says nothing about `breakhis/malignant`; without the mask (the
    paper's choice) it counts as a negative for it, with the mask the loss ignores it.
    """
    groups = data_meta["label_groups"]
    return df.assign(known_labels=df["source"].map(lambda source: "|".join(groups[source])))


class ImageDataset(torch.utils.data.Dataset):
    """Images from a manifest frame with the transform chain of each row's domain.

    `df` needs columns image and label/labels, and either a `domain` column (the aggregated
    "All" set mixes CXR, histology and fundus rows) or one `domain` for every row.

    `cache_dirs`: folders (the manifests' folders) whose ``cache/`` may hold preprocessing
    caches (cache.py). Rows found in a valid cache are read from its memory map and go through
    the cached chain (the same augmentation, without decoding); the others are read from disk.
    `n_cached` says how many rows come from a cache.
    """

    def __init__(self, df: pd.DataFrame, *, task: str, classes: list[str], image_size: int,
                 train: bool, domain: str | None = None, cache_dirs: list | None = None):
        self.images = df["image"].astype(str).tolist()
        self.targets = encode_targets(df, task, classes)
        domains = df["domain"].astype(str).tolist() if "domain" in df.columns else [domain] * len(df)
        if any(d is None for d in domains):
            raise ValueError("ImageDataset needs a `domain` column or the domain argument")
        self.domain_names = sorted(set(domains))
        # The loader's half of each chain (uint8 pixels + the image's augmentation drawn as numbers);
        # loop.run_epoch applies the other half, batched, on the training device (transforms.apply_tail).
        # Batches stack: every image has image_size x image_size pixels, and grey cxr images get 3
        # channels when the set also holds colour domains (the aggregated "All" set).
        channels = 1 if self.domain_names == ["cxr"] else 3
        # A list, not a dict: monai.data.DataLoader seeds the Randomizable objects it finds in
        # lists and attributes, which makes augmentation reproducible for a given --seed.
        self.chains, self.cached_chains = ([transforms.loader_transforms(d, image_size=image_size, train=train,
                                                                         cached=cached, channels=channels)
                                            for d in self.domain_names] for cached in (False, True))
        position = {d: i for i, d in enumerate(self.domain_names)}
        self.chain_of = np.array([position[d] for d in domains], dtype=np.int64)
        self.cached, stale = cache.find_cached(self.images, domains, image_size=image_size, cache_dirs=cache_dirs)
        for line in stale:
            log(line)  # once per job, not per torchrun process
        self.n_cached = len(self.cached)
        self._pixels = {}  # memmaps, opened on first use in each process (see __getstate__)

    def __getstate__(self):
        # Loader workers get the dataset without open memmaps (pickling one copies its data) and
        # open their own: the pages stay in the OS page cache once, shared by all processes.
        return {**self.__dict__, "_pixels": {}}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        """(uint8 (C, S, S) pixels, float32 (8,) augmentation tail, target); see transforms.apply_tail."""
        location = self.cached.get(i)
        try:
            if location is None:
                item = self.chains[self.chain_of[i]]({"image": self.images[i]})
            else:
                if location[0] not in self._pixels:
                    self._pixels[location[0]] = cache.open_pixels(location[0])
                pixels = cache.read_cached(self._pixels[location[0]], location)
                item = self.cached_chains[self.chain_of[i]]({"image": pixels})
        except Exception as err:
            raise ValueError(transforms.read_error(self.images[i], err)) from None
        return item["image"], item[transforms.TAIL_KEY], torch.as_tensor(self.targets[i])


def stack_in_numpy(items):
    """The default collate of (pixels, tail, target) items, with each field stacked by numpy.

    A torch copy this large runs on torch's OpenMP threads. Called from a thread other than the
    main one, once the main thread has used its own OpenMP threads, it ran ~15x slower on the
    2-core AMD EPYC CPU: 1.0 ms instead of 60 us for a batch of 32 CXR images at 224 px. numpy
    copies on the calling thread alone.
    """
    return tuple(torch.from_numpy(np.stack([torch.as_tensor(x).numpy() for x in field])) for field in zip(*items))


class ThreadLoader(ThreadDataLoader):
    """The loader for a fully cached dataset: batches are made in one background thread of this
    process (MONAI's ThreadDataLoader), not in worker processes. A cached item is a memmap row
    (uint8) and its augmentation drawn as 8 numbers (transforms.RandTaild), ~25 us; the
    pixel work runs later, batched, on the training device (transforms.apply_tail). Handing an
    item over from a worker process would cost about as much as making it, so one thread
    outruns a few processes (bench/bench_loader.py). Batches are stacked by numpy
    (stack_in_numpy), which keeps torch's OpenMP threads out of the loader thread.

    Each pass re-seeds the random transforms from `generator` (as worker processes derive their
    seeds from it), so reseeding the generator per epoch reseeds the augmentation.
    """

    def __init__(self, dataset, **kwargs):
        super().__init__(dataset, collate_fn=stack_in_numpy, **kwargs)

    def __iter__(self):
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
        monai.data.utils.set_rnd(self.dataset, seed=seed)
        return super().__iter__()


def make_loader(dataset: ImageDataset, *, batch_size: int, train: bool, workers: int, seed: int,
                device: torch.device, sampler=None) -> DataLoader:
    """Seeded shuffling (data order is fixed by --seed); training drops a last batch of one,
    which BatchNorm in the head cannot normalise.

    A dataset read entirely from a preprocessing cache is loaded in one background thread
    whatever `workers` says (ThreadLoader: a cached item is a memmap row and a few random
    draws, ~25 us, less than handing it over from a worker process; on 2 cores the thread gave
    22,000 images/s, 2 worker processes 11,500, and a GPU takes a few thousand); otherwise
    `workers` processes decode (0 = in this process).

    With a `sampler` (fit passes a DistributedSampler, also in a single process: its order is a
    function of seed and epoch, so a resumed run replays it) the sampler decides the order, and
    workers restart every epoch so that fit can reseed augmentation per epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    drop_last = train and (len(sampler) if sampler is not None else len(dataset)) % batch_size == 1
    settings = dict(batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler, generator=generator,
                    drop_last=drop_last, pin_memory=device.type == "cuda")
    if getattr(dataset, "n_cached", 0) == len(dataset) > 0:
        # every row cached: one thread outruns worker processes (bench/bench_loader.py)
        return ThreadLoader(dataset, num_workers=0, **settings)
    return DataLoader(dataset, num_workers=workers, persistent_workers=workers > 0 and sampler is None, **settings)


def train_val_datasets(df: pd.DataFrame, data_meta: dict, *, image_size: int,
                       cache_dirs: list | None = None) -> tuple[ImageDataset, ImageDataset]:
    """The train split with the augmenting chain and the val split with the eval chain; images
    come from a preprocessing cache in `cache_dirs` where one is valid (see cache.py)."""
    sets = []
    for split, train in (("train", True), ("val", False)):
        part = df[df["split"] == split]
        if len(part) < 2:
            raise SystemExit(f"manifest {data_meta['key']}: the {split} split has {len(part)} images; "
                             f"need at least 2 (re-run prepare_data.py with other --val-frac/--test-frac)")
        sets.append(ImageDataset(part, task=data_meta["task"], classes=data_meta["classes"],
                                 image_size=image_size, train=train, domain=data_meta["domain"],
                                 cache_dirs=cache_dirs))
    if sets[0].n_cached or sets[1].n_cached:
        log(f"preprocessing cache: {sets[0].n_cached} of {len(sets[0])} train and {sets[1].n_cached} of "
            f"{len(sets[1])} val images")
    return sets[0], sets[1]


BALANCES = ("none", "domain", "sqrt")  # pretrain_all.py --balance


def balance_shares(sizes: dict, balance: str) -> dict:
    """{group: share of an epoch's draws}: none = its share of the images (the paper's: each image equally
    likely), domain = equal shares, sqrt = in proportion to the square root of its size."""
    if balance not in BALANCES:
        raise ValueError(f"unknown balance {balance!r}: expected one of {', '.join(BALANCES)}")
    weight = {g: {"none": n, "domain": 1.0, "sqrt": math.sqrt(n)}[balance] for g, n in sizes.items()}
    return {g: w / sum(weight.values()) for g, w in weight.items()}


class BalancedSampler(torch.utils.data.Sampler):
    """An epoch of as many draws as the dataset has images, each group (e.g. a source data set of the
    aggregate) drawn its share (balance_shares) exactly, up to rounding: a group drawn more often than
    it has images is gone through again, one drawn less often is sampled without repetition. Like a
    DistributedSampler: a function of (seed, epoch) (set_epoch), and each process takes every
    world_size-th draw."""

    def __init__(self, groups, balance: str, *, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        groups = np.asarray(groups).astype(str)
        self.members = {g: np.flatnonzero(groups == g) for g in sorted(set(groups))}
        self.shares = balance_shares({g: len(m) for g, m in self.members.items()}, balance)
        self.size, self.seed, self.epoch = len(groups), seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.num_samples = math.ceil(self.size / num_replicas)

    def counts(self) -> dict:
        """{group: draws per epoch}: shares x images, rounded so that they add up to the images (largest remainder)."""
        exact = {g: share * self.size for g, share in self.shares.items()}
        counts = {g: math.floor(x) for g, x in exact.items()}
        for g in sorted(exact, key=lambda g: counts[g] - exact[g])[:self.size - sum(counts.values())]:
            counts[g] += 1
        return counts

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = []
        for group, count in self.counts().items():
            members = self.members[group]
            rounds = -(-count // len(members))
            order = torch.cat([torch.randperm(len(members), generator=generator) for _ in range(rounds)])[:count]
            draws.append(members[order.numpy()])
        draws = np.concatenate(draws)[torch.randperm(self.size, generator=generator).numpy()]
        total = self.num_samples * self.num_replicas
        draws = np.concatenate([draws, draws[:total - self.size]])  # every process the same number of steps
        return iter(draws[self.rank:total:self.num_replicas].tolist())


def make_train_val_loaders(train_set: ImageDataset, val_set: ImageDataset, *, batch_size: int, workers: int,
                           seed: int, device: torch.device, dist_info: Distributed = Distributed(),
                           balance: str = "none", groups=None) -> tuple:
    """(train_loader, val_loader) over two datasets. Their order is a DistributedSampler's, also in a
    single process: a function of (seed, epoch) (loop.fit calls set_epoch), so a resumed run
    replays it; under torchrun each process takes every world_size-th image. With a `balance` other
    than none, the train order is a BalancedSampler's over `groups` (one name per train image)."""
    loaders = []
    for dataset, train in ((train_set, True), (val_set, False)):
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                                      shuffle=train, seed=seed)
        if train and balance != "none":
            sampler = BalancedSampler(groups, balance, seed=seed, num_replicas=dist_info.world_size,
                                      rank=dist_info.rank)
        loaders.append(make_loader(dataset, batch_size=batch_size, train=train, workers=workers, seed=seed,
                                   device=device, sampler=sampler))
    return loaders[0], loaders[1]


def train_val_loaders(df: pd.DataFrame, data_meta: dict, *, manifests: list, image_size: int, batch_size: int,
                      workers: int, seed: int, skip_bad: bool, out_dir, device: torch.device,
                      dist_info: Distributed = Distributed(), balance: str = "none") -> tuple:
    """A training run's data: (train_loader, val_loader, number of images left out by skip_bad).

    Takes the train and val rows of `df` (the manifest, as the script chose it); with skip_bad, decodes
    them once and leaves out the unreadable ones (out_dir/skipped.csv); builds the two datasets at
    image_size, reading the preprocessing cache next to the `manifests` where one is valid; and their
    loaders (batch_size, workers, seed; `balance` draws the aggregate's sources by their `source` column)."""
    df = df[df["split"].isin(["train", "val"])]
    cache_dirs = manifest_folders(manifests)
    n_skipped = 0
    if skip_bad:
        df, n_skipped = drop_unreadable(df, data_meta, image_size=image_size, workers=workers, cache_dirs=cache_dirs,
                                        out_dir=out_dir, dist_info=dist_info)
    train_set, val_set = train_val_datasets(df, data_meta, image_size=image_size, cache_dirs=cache_dirs)
    groups = df.loc[df["split"] == "train", "source" if "source" in df.columns else "domain"] \
        if balance != "none" else None
    train_loader, val_loader = make_train_val_loaders(train_set, val_set, batch_size=batch_size, workers=workers,
                                                      seed=seed, device=device, dist_info=dist_info,
                                                      balance=balance, groups=groups)
    return train_loader, val_loader, n_skipped


class _ReadCheck(torch.utils.data.Dataset):
    """Item i of an ImageDataset, reduced to '' (readable) or the one-line reason it is not."""

    def __init__(self, dataset: ImageDataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> str:
        try:
            self.dataset[self.indices[i]]
        except ValueError as err:
            return str(err)
        return ""


def find_unreadable(df: pd.DataFrame, data_meta: dict, *, image_size: int, workers: int, cache_dirs: list,
                    dist_info: Distributed = Distributed()) -> pd.DataFrame:
    """--skip-bad: reads every image of `df` once through its eval chain (in parallel; under
    torchrun each process a share; rows in a preprocessing cache are quick) and returns the
    rows that cannot be read, with a `reason` column."""
    dataset = ImageDataset(df, task=data_meta["task"], classes=data_meta["classes"], image_size=image_size,
                           train=False, domain=data_meta["domain"], cache_dirs=cache_dirs)
    mine = list(range(dist_info.rank, len(df), dist_info.world_size))
    loader = torch.utils.data.DataLoader(_ReadCheck(dataset, mine), batch_size=None, num_workers=workers)
    reasons = tqdm(loader, desc="checking images", leave=False, disable=None if dist_info.is_main_process else True)
    found = sorted((i, reason) for shard in gather(list(zip(mine, reasons)), dist_info) for i, reason in shard if reason)
    bad = df.iloc[[i for i, _ in found]].copy()
    bad["reason"] = [reason for _, reason in found]
    return bad


def drop_unreadable(df: pd.DataFrame, data_meta: dict, *, image_size: int, workers: int, cache_dirs: list,
                    out_dir, dist_info: Distributed = Distributed()) -> tuple[pd.DataFrame, int]:
    """--skip-bad: `df` without its unreadable images, and how many there were; rank 0 lists
    them in OUT/skipped.csv (image, split, reason)."""
    bad = find_unreadable(df, data_meta, image_size=image_size, workers=workers, cache_dirs=cache_dirs,
                          dist_info=dist_info)
    if len(bad) and dist_info.is_main_process:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files.write_csv(bad.to_dict("records"), out_dir / "skipped.csv", ["image", "split", "reason"])
        log(f"--skip-bad: skipping {len(bad)} unreadable image(s) of {len(df)}; the list: {out_dir / 'skipped.csv'}")
    return df.drop(index=bad.index), len(bad)
