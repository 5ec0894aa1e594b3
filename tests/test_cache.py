"""kit.cache: building, reading through kit.data.ImageDataset, agreement with the uncached chains,
invalidation, unreadable images, built by prepare_data.py (--cache-size; --manifest for manifests
written earlier)."""
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import ROOT, run_script
from PIL import Image

import transforms
from kit import cache, data

S = 32
SHAPES = {"cxr": [(48, 80), (40, 40), (70, 50)], "hwsi": [(46, 70), (60, 40), (32, 32)],
          "efi": [(50, 60), (64, 64), (60, 40)], "other": [(50, 60), (64, 64), (60, 40)]}


def _picture(rng, h, w, channels):
    rows, cols = np.mgrid[:h, :w]
    base = 100 + 80 * np.sin(rows / 5.0) * np.cos(cols / 7.0)
    shape = (h, w) if channels == 1 else (h, w, channels)
    noise = rng.normal(0, 20, shape)
    return np.clip((base if channels == 1 else base[..., None]) + noise, 0, 255).astype(np.uint8)


def write_manifest(folder, domain, *, grey_too=False):
    """A manifest (CSV + JSON sidecar) of small PNGs: grey for cxr, RGB otherwise (plus one grey
    image with grey_too, which the cache keeps as one channel)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(domain))
    rows = []
    for i, (h, w) in enumerate(SHAPES[domain]):
        channels = 1 if domain == "cxr" or (grey_too and i == 0) else 3
        path = folder / f"{domain}_{i}.png"
        Image.fromarray(_picture(rng, h, w, channels)).save(path)
        rows.append({"image": str(path), "label": i % 2, "patient": f"p{i}", "split": "train"})
    csv_path = folder / f"{domain}demo.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    csv_path.with_suffix(".json").write_text(json.dumps({"key": f"{domain}demo", "domain": domain}))
    return csv_path


def dataset(csv_path, domain, *, train=False, cache_dirs=True, image_size=S):
    df = pd.read_csv(csv_path)
    return data.ImageDataset(df, task="multiclass", classes=["a", "b"], image_size=image_size, train=train,
                               domain=domain, cache_dirs=[csv_path.parent] if cache_dirs else None)


def unnormalise(x):
    return x * torch.tensor(transforms.IMAGENET_STD).view(3, 1, 1) + torch.tensor(transforms.IMAGENET_MEAN).view(3, 1, 1)


@pytest.mark.parametrize("domain", transforms.DOMAINS)
def test_cached_and_uncached_agree(domain, tmp_path):
    csv_path = write_manifest(tmp_path, domain, grey_too=True)
    result = cache.build_cache(csv_path, image_size=S, workers=1, progress=False)
    assert result["built"] and result["images"] == 3 and result["bad"] == []
    index = json.loads(result["index"].read_text())
    shapes = [tuple(s) for s in index["shapes"]]
    if domain == "cxr":
        assert shapes == [(1, S, S)] * 3  # grey stays one channel: a third of the bytes
    else:
        assert shapes[0][0] == 1 and shapes[1][0] == 3  # the grey image among colour ones
    if domain == "hwsi":  # shorter side = S, aspect kept: variable shapes, no padding
        assert shapes == [(1, S, int(S * 70 / 46)), (3, int(S * 60 / 40), S), (3, S, S)]
    assert os.path.getsize(result["pixels"]) == cache.HEADER_BYTES + sum(int(np.prod(s)) for s in shapes)

    for train in (False, True):
        on_disk, cached = dataset(csv_path, domain, train=train, cache_dirs=False), dataset(csv_path, domain, train=train)
        assert (on_disk.n_cached, cached.n_cached) == (0, 3)
        for ds in (on_disk, cached):  # the same random draws in both (train)
            for k, chain in enumerate(ds.chains + ds.cached_chains):
                chain.set_random_state(seed=7 + k % len(ds.chains))
        for i in range(3):
            pixels, tail, target = cached[i]
            assert pixels.dtype == torch.uint8 and pixels.shape == ((1 if domain == "cxr" else 3), S, S)
            assert int(target) == i % 2
            # the uncached path rounds the head to uint8 too: the same pixels, the same draws
            on_disk_pixels, on_disk_tail, _ = on_disk[i]
            assert torch.equal(pixels, on_disk_pixels) and torch.equal(tail, on_disk_tail)
            x = transforms.apply_tail(pixels[None], tail[None])[0]
            assert x.dtype == torch.float32 and x.shape == (3, S, S)
        assert isinstance(next(iter(cached._pixels.values())), np.memmap)  # read through a memory map
        assert "_pixels" in pickle.loads(pickle.dumps(cached)).__dict__
        assert pickle.loads(pickle.dumps(cached))._pixels == {}  # workers open their own map


@pytest.mark.parametrize("domain", transforms.DOMAINS)
@pytest.mark.parametrize("train", [True, False])
def test_batched_tail_equals_the_public_chain(domain, train, tmp_path):
    """Training's path (loader per image, apply_tail per batch) gives what the public
    train_transforms / eval_transforms give image by image, for the same draws."""
    csv_path = write_manifest(tmp_path, domain, grey_too=True)
    images = pd.read_csv(csv_path)["image"].tolist()
    loader_chain = transforms.loader_transforms(domain, image_size=S, train=train, channels=3)
    loader_chain.set_random_state(seed=3)
    items = [loader_chain({"image": path}) for path in images]
    batch = transforms.apply_tail(torch.stack([item["image"] for item in items]),
                                  torch.stack([item["tail"] for item in items]))
    public = (transforms.train_transforms if train else transforms.eval_transforms)(domain, image_size=S)
    public.set_random_state(seed=3)
    one_by_one = torch.stack([public({"image": path})["image"] for path in images])
    # a batch warps every image when one moves: a still image is resampled at its own pixel centres
    torch.testing.assert_close(batch, one_by_one, atol=1e-4, rtol=0)


def test_cached_train_chain_is_random(tmp_path):
    csv_path = write_manifest(tmp_path, "cxr")
    cache.build_cache(csv_path, image_size=S, workers=1, progress=False)
    ds = dataset(csv_path, "cxr", train=True)
    outputs = [transforms.apply_tail(*(t[None] for t in ds[0][:2]))[0] for _ in range(6)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_parallel_build_and_loader_with_workers(tmp_path):
    csv_path = write_manifest(tmp_path, "hwsi")
    serial = cache.build_cache(csv_path, image_size=S, workers=1, progress=False)
    pixels = np.load(serial["pixels"]).copy()
    for path in serial["pixels"].parent.iterdir():
        path.unlink()
    parallel = cache.build_cache(csv_path, image_size=S, workers=2, progress=False)
    assert np.array_equal(np.load(parallel["pixels"]), pixels)  # same bytes, same order
    assert isinstance(data.make_loader(dataset(csv_path, "hwsi", train=True), batch_size=2, train=True,
                                         workers=3, seed=0, device=torch.device("cpu")), data.ThreadLoader)
    # two rows not in the cache: worker processes decode them and open the memmap for the others
    extra = [tmp_path / "new_0.png", tmp_path / "new_1.png"]
    for path in extra:
        Image.fromarray((90 + np.arange(40 * 50 * 3) % 7).astype(np.uint8).reshape(40, 50, 3)).save(path)
    df = pd.concat([pd.read_csv(csv_path), pd.DataFrame({"image": [str(p) for p in extra], "label": 0})])
    ds = data.ImageDataset(df, task="multiclass", classes=["a", "b"], image_size=S, train=True, domain="hwsi",
                             cache_dirs=[tmp_path])
    assert (ds.n_cached, len(ds)) == (3, 5)
    loader = data.make_loader(ds, batch_size=2, train=True, workers=3, seed=0, device=torch.device("cpu"))
    assert not isinstance(loader, data.ThreadLoader)  # 3 worker processes, each opening the memmap
    assert [len(images) for images, _, _ in loader] == [2, 2]  # the last batch of one is dropped


def test_thread_loader_for_cached_data_is_seeded(tmp_path):
    csv_path = write_manifest(tmp_path, "efi")
    cache.build_cache(csv_path, image_size=S, workers=1, progress=False)
    passes = []
    for _ in range(2):
        loader = data.make_loader(dataset(csv_path, "efi", train=True), batch_size=3, train=True, workers=2,
                                    seed=0, device=torch.device("cpu"))
        assert isinstance(loader, data.ThreadLoader)
        for epoch_seed in (5, 6, 5):  # reseeding the generator per epoch reseeds the augmentation
            loader.generator.manual_seed(epoch_seed)
            passes.append(torch.cat([transforms.apply_tail(images, tails) for images, tails, _ in loader]))
    assert torch.equal(passes[0], passes[2]) and not torch.equal(passes[0], passes[1])
    assert all(torch.equal(a, b) for a, b in zip(passes[:3], passes[3:]))  # a fresh loader: the same


def test_up_to_date_cache_is_not_rebuilt_and_changes_invalidate(tmp_path, capsys):
    csv_path = write_manifest(tmp_path, "cxr")
    first = cache.build_cache(csv_path, image_size=S, workers=1, progress=False)
    assert not cache.build_cache(csv_path, image_size=S, workers=1, progress=False)["built"]
    assert dataset(csv_path, "cxr", image_size=S + 8).n_cached == 0  # another image size: not this cache
    assert dataset(csv_path, "hwsi").n_cached == 0  # another domain's chain: not this cache

    image = pd.read_csv(csv_path)["image"][1]
    Image.fromarray((np.arange(30 * 30) % 5).astype(np.uint8).reshape(30, 30)).save(image)
    os.utime(image, ns=(0, 10**18))  # a new mtime even on a coarse-grained file system
    capsys.readouterr()
    stale = dataset(csv_path, "cxr")
    assert stale.n_cached == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "stale" in printed[0] and "1 of its images changed" in printed[0]
    assert printed[0].endswith(f"Rebuild: python prepare_data.py --manifest {csv_path.resolve()} --cache-size {S}")

    second = cache.build_cache(csv_path, image_size=S, workers=1, progress=False)
    assert second["built"] and second["pixels"] != first["pixels"]
    assert not first["pixels"].exists() and not first["index"].exists()  # the old build is gone
    assert dataset(csv_path, "cxr").n_cached == 3
    assert not list(second["pixels"].parent.glob("*.tmp"))


def test_unreadable_images_are_recorded_not_fatal(tmp_path):
    csv_path = write_manifest(tmp_path, "efi")
    df = pd.read_csv(csv_path)
    empty, missing = tmp_path / "empty.png", tmp_path / "missing.png"
    empty.write_bytes(b"")
    df = pd.concat([df, pd.DataFrame({"image": [str(empty), str(missing)], "label": [0, 1],
                                      "patient": ["q", "r"], "split": ["train", "train"]})])
    df.to_csv(csv_path, index=False)
    result = cache.build_cache(csv_path, image_size=S, workers=1, progress=False)
    assert result["images"] == 3
    bad = dict(result["bad"])
    assert set(bad) == {str(empty), str(missing)} and "not found" in bad[str(missing)]
    assert "cannot read" in bad[str(empty)] or "identify" in bad[str(empty)]
    ds = dataset(csv_path, "efi")
    assert ds.n_cached == 3
    with pytest.raises(ValueError, match="empty.png"):
        ds[3]


def test_prepare_data_builds_the_caches_of_existing_manifests(tmp_path, capsys):
    import prepare_data

    manifests = [write_manifest(tmp_path / d, d) for d in ("cxr", "hwsi")]
    argv = ["--manifest", *map(str, manifests), "--cache-size", str(S), "--workers", "1", "--no-progress"]
    prepare_data.main(prepare_data.get_args_parser().parse_args(argv))
    out = capsys.readouterr().out
    assert out.count("built preprocessing cache") == 2 and out.count(f"(3 images at {S} px") == 2
    assert all(dataset(m, m.parent.name).n_cached == 3 for m in manifests)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cxr", "hwsi"]  # no manifest written, nothing else
    prepare_data.main(prepare_data.get_args_parser().parse_args(argv[:2] + argv[3:]))
    assert "up to date: preprocessing cache" in capsys.readouterr().out


def test_prepare_data_builds_the_cache_that_training_then_uses(tmp_path, capsys):
    from PIL import Image

    import prepare_data
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name, colour in (("a", 40), ("b", 200)):
        (root / name).mkdir(parents=True)
        for i in range(4):  # each its own picture (noise), or prepare_data.py would keep them in one split as twins
            pixels = np.full((40, 48, 3), colour + i) + (np.arange(48) % 3)[None, :, None] + rng.integers(0, 20, (40, 48, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{name}{i}.png")
    argv = ["--dataset", "folder", "--root", str(root), "--domain", "hwsi", "--out", str(tmp_path / "m"),
            "--val-frac", "0.25", "--test-frac", "0.25", "--cache-size", "32", "--workers", "1"]
    prepare_data.main(prepare_data.get_args_parser().parse_args(argv))
    assert "built preprocessing cache" in capsys.readouterr().out
    df = pd.read_csv(tmp_path / "m" / "data.csv")
    dataset = data.ImageDataset(df, task="multiclass", classes=["a", "b"], image_size=32, train=False,
                                  domain="hwsi", cache_dirs=[tmp_path / "m"])
    assert dataset.n_cached == len(df) == 8
    with pytest.raises(SystemExit):
        prepare_data.get_args_parser().parse_args([*argv[:-4], "--cache-size", "16"])
    assert "argument --cache-size: must be >= 32 px and <= 1024 px, got 16" in capsys.readouterr().err


def test_stack_in_numpy_equals_the_default_collate(tmp_path):
    """The thread loader's numpy stacking gives what torch's default collate gives: grey images
    repeated to 3 channels (expanded views), tails, class and multi-label targets."""
    csv_path = write_manifest(tmp_path, "hwsi", grey_too=True)
    cache.build_cache(csv_path, image_size=S, workers=1, progress=False)
    ds = dataset(csv_path, "hwsi")
    items = [ds[i] for i in range(3)]
    assert items[0][0].stride(0) == 0  # the grey image is an expanded view
    labels = [(pixels, tail, torch.tensor([1.0, float("nan")])) for pixels, tail, _ in items]
    for batch in (items, labels):
        ours, torch_s = data.stack_in_numpy(batch), torch.utils.data.default_collate(batch)
        assert [x.dtype for x in ours] == [x.dtype for x in torch_s]
        assert all(torch.equal(a.nan_to_num(-1), b.nan_to_num(-1)) for a, b in zip(ours, torch_s))


@pytest.mark.slow
def test_the_cache_command_the_workflow_runs(tmp_path):
    """What the workflow runs: python prepare_data.py --manifest ... --cache-size N from the repository root."""
    manifests = [write_manifest(tmp_path / d, d) for d in ("efi", "hwsi")]
    done = run_script("prepare_data.py", "--manifest", *manifests, "--cache-size", str(S), "--workers", "1",
                      "--no-progress", cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("built preprocessing cache") == 2
    again = run_script("prepare_data.py", "--manifest", manifests[0], "--cache-size", str(S), "--no-progress", cwd=ROOT)
    assert "up to date: preprocessing cache" in again.stdout


def test_a_full_disk_while_building_names_the_file_and_leaves_no_cache(tmp_path, monkeypatch):
    import errno

    import prepare_data
    from kit import files
    manifest = write_manifest(tmp_path, "hwsi")

    def no_space(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files._Handle, "write", no_space)
    with pytest.raises(SystemExit) as info:
        prepare_data.main(prepare_data.get_args_parser().parse_args(
            ["--manifest", str(manifest), "--cache-size", "32", "--workers", "1", "--no-progress"]))
    message = str(info.value)
    assert message.startswith(f"error: {tmp_path}") and ".npy: could not be written (no space left on device)" in message
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] if (tmp_path / "cache").exists() else True
