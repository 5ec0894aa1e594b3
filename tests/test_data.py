"""kit.data: targets from manifest rows, the label mask of the aggregated set, the train/val
datasets and loaders of a run, and --skip-bad."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    finetune_argv,
    masked_targets,
    run_finetune,
    tiny_frame,
    two_colour_manifest,
)

from kit import data

CPU = torch.device("cpu")


def test_encode_targets_multiclass_and_multilabel():
    df = pd.DataFrame({"label": [0, 2, 1]})
    assert data.encode_targets(df, "multiclass", ["a", "b", "c"]).tolist() == [0, 2, 1]
    df = pd.DataFrame({"labels": ["a|c", "", "b"]})
    out = data.encode_targets(df, "multilabel", ["a", "b", "c"])
    assert out.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="'d'"):
        data.encode_targets(pd.DataFrame({"labels": ["d"]}), "multilabel", ["a"])
    with pytest.raises(ValueError, match="out of range"):
        data.encode_targets(pd.DataFrame({"label": [3]}), "multiclass", ["a", "b"])


def test_label_mask_marks_other_datasets_labels_unknown():
    plain, masked = masked_targets()
    assert plain.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert np.isnan(masked).tolist() == [[False, False, True], [False, False, True], [True, True, False]]
    assert np.nan_to_num(masked).tolist() == plain.tolist()


def test_train_val_datasets_need_two_images(tmp_path):
    df, data_meta = tiny_frame(tmp_path, n_per_class=1)
    df["split"] = ["train", "val"]
    with pytest.raises(SystemExit, match="train split has 1 images"):
        data.train_val_datasets(df, data_meta, image_size=32)


def test_train_val_loaders_order_is_a_function_of_seed_and_epoch(tmp_path):
    """Both loaders are ordered by a DistributedSampler (also in one process), so that a resumed run
    replays the order of an uninterrupted one; training drops a last batch of one."""
    df, data_meta = tiny_frame(tmp_path)
    df = pd.concat([df, df[df["split"] == "train"].iloc[:1]])  # 13 train images: a last batch of one
    train_set, val_set = data.train_val_datasets(df, data_meta, image_size=32)
    assert (len(train_set), len(val_set)) == (13, 8)

    def order(seed, epoch):
        train_loader, val_loader = data.make_train_val_loaders(train_set, val_set, batch_size=4, workers=0,
                                                               seed=seed, device=CPU)
        assert isinstance(train_loader.sampler, torch.utils.data.DistributedSampler)
        assert (len(train_loader), len(val_loader)) == (3, 2)  # 13 = 3 x 4 + 1 dropped; 8 = 2 x 4 kept
        train_loader.sampler.set_epoch(epoch)
        val_loader.sampler.set_epoch(epoch)
        return list(train_loader.sampler), list(val_loader.sampler)

    assert order(0, 1) == order(0, 1)
    assert order(0, 1)[0] != order(0, 2)[0] and order(0, 1)[0] != order(1, 1)[0]
    assert order(0, 1)[1] == order(0, 2)[1] == list(range(8))  # validation is never shuffled


def test_manifest_folders(tmp_path):
    several = [str(tmp_path / "m" / "a.csv"), str(tmp_path / "n" / "b.csv"), str(tmp_path / "m" / "c.csv")]
    assert data.manifest_folders(several) == [str(tmp_path / "m"), str(tmp_path / "n")]


def test_find_unreadable_names_the_bad_images(tmp_path):
    df, data_meta = tiny_frame(tmp_path)
    Path(df["image"].iloc[3]).write_bytes(b"")
    Path(df["image"].iloc[15]).write_text("not an image")
    bad = data.find_unreadable(df, data_meta, image_size=32, workers=0, cache_dirs=[])
    assert bad.index.tolist() == [3, 15] and bad["image"].tolist() == df["image"].iloc[[3, 15]].tolist()
    assert all(reason.startswith(f"{image}: cannot read the image") for image, reason in zip(bad["image"],
                                                                                           bad["reason"]))
    kept, n_skipped = data.drop_unreadable(df, data_meta, image_size=32, workers=0, cache_dirs=[],
                                           out_dir=tmp_path / "run")
    assert n_skipped == 2 and len(kept) == len(df) - 2
    assert pd.read_csv(tmp_path / "run" / "skipped.csv")["image"].tolist() == bad["image"].tolist()


@pytest.mark.slow
def test_skip_bad_leaves_out_unreadable_images_and_counts_them(tmp_path, capsys):
    manifest = two_colour_manifest(tmp_path)
    df = pd.read_csv(manifest)
    broken = df.loc[df.split == "train", "image"].iloc[:2].tolist()
    Path(broken[0]).write_bytes(b"")  # zero bytes
    Path(broken[1]).write_bytes(Path(broken[1]).read_bytes()[:60])  # truncated
    with pytest.raises(ValueError) as info:  # without --skip-bad: the first one met stops the run
        run_finetune(finetune_argv(manifest, tmp_path / "strict", epochs=1))
    assert any(str(info.value).startswith(f"{path}: cannot read the image") for path in broken)

    out = tmp_path / "run"
    run_finetune(finetune_argv(manifest, out, "--skip-bad", epochs=1))
    assert "skipping 2 unreadable image(s)" in capsys.readouterr().out
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(skipped["image"]) == sorted(broken) and skipped["reason"].str.len().min() > 0
    assert json.loads((out / "summary.json").read_text())["skipped_images"] == 2


# --- balanced aggregation (pretrain_all.py --balance) ---------------------------------------------------------

@pytest.mark.parametrize("balance", ["domain", "sqrt", "none"])
def test_balanced_sampler_draws_each_group_its_share(balance):
    sizes = {"chestxray14": 660, "breakhis": 47, "eyepacs": 291}
    groups = np.repeat(list(sizes), list(sizes.values()))
    shares = data.balance_shares(sizes, balance)
    expected = {"domain": {g: 1 / 3 for g in sizes}, "sqrt": {g: np.sqrt(n) / sum(np.sqrt(list(sizes.values())))
                                                               for g, n in sizes.items()},
                "none": {g: n / len(groups) for g, n in sizes.items()}}[balance]
    assert shares == pytest.approx(expected)
    sampler = data.BalancedSampler(groups, balance, seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        drawn = groups[list(sampler)]
        assert len(drawn) == len(groups)  # an epoch: as many images seen as without balancing
        for group, share in expected.items():
            assert abs(np.mean(drawn == group) - share) < 0.02, (balance, group)
    sampler.set_epoch(1)
    assert list(sampler) == list(sampler) and list(sampler) != list(data.BalancedSampler(groups, balance, seed=3))
    small = np.flatnonzero(groups == "breakhis")  # drawn 7 times its size under domain: every image, evenly
    counts = np.bincount(list(sampler), minlength=len(groups))[small]
    assert counts.max() - counts.min() <= 1 and counts.min() >= (1 if balance != "none" else 0)


def test_balanced_sampler_shards_an_epoch_across_processes():
    groups = np.repeat(["a", "b"], [90, 11])
    shards = [list(data.BalancedSampler(groups, "domain", seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 51
    whole = list(data.BalancedSampler(groups, "domain", seed=0))
    assert sorted(shards[0] + shards[1]) == sorted(whole + whole[:1])  # one draw repeated: equal steps per process
    with pytest.raises(ValueError, match="unknown balance 'even'"):
        data.balance_shares({"a": 1}, "even")
