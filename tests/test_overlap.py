"""kit/overlap.py: thumbnails, the same picture found under each alteration it is made for, look-alikes
kept apart, and the uses of overlap.csv (leaving images out of pretraining, counting what a pretraining saw)."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import load_make_demo_data
from kit import files, identity, overlap


def demo_pictures(folder, domain, n, size=(256, 256)):
    """n pictures of the demo generator's kind for `domain`, each of another patient (its own seed):
    the same anatomy and layout, the hard case for telling pictures apart."""
    demo = load_make_demo_data()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(n):
        rng = np.random.default_rng((7, seed))
        if domain == "cxr":
            pixels = demo.render_cxr(rng, *size, findings=())[0]
        elif domain == "efi":
            pixels = demo.render_fundus(rng, *size, severity=seed % 5, eye="left", radius_frac=0.47)[0]
        else:
            pixels = demo.render_histology(rng, *size, tissue=("TUMOR", "STROMA", "LYMPHO")[seed % 3])[0]
        paths.append(folder / f"{domain}_{seed}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def thumbs_of(paths):
    return np.stack([overlap.read_thumbnail(str(p))[0] for p in paths])


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """{domain: (the originals' thumbnails, {alteration: thumbnails of one altered copy per original})}."""
    root = tmp_path_factory.mktemp("pictures")
    found = {}
    for domain in ("cxr", "efi", "hwsi"):
        paths = demo_pictures(root / domain, domain, 10)
        altered = {}
        for i, path in enumerate(paths[:4]):
            for name, copy in overlap.write_altered(path, root / domain, f"altered{i}").items():
                altered.setdefault(name, []).append(copy)
        found[domain] = (thumbs_of(paths), {name: thumbs_of(copies) for name, copies in altered.items()})
    return found


def test_a_thumbnail_is_the_same_whatever_the_encoding(tmp_path):
    grey = (np.indices((90, 120)).sum(0) * 7 % 251).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey).convert("RGB").save(tmp_path / "rgb.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    thumbs = thumbs_of([tmp_path / name for name in ("grey.png", "rgb.png", "sixteen.png")])
    assert thumbs.shape == (3, overlap.THUMB, overlap.THUMB) and thumbs.dtype == np.uint8
    assert np.abs(thumbs.astype(int) - thumbs[0]).max() <= 1
    Image.new("L", (20, 20), 90).save(tmp_path / "flat.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for name in ("flat.png", "broken.png"):
        thumb, reason = overlap.read_thumbnail(str(tmp_path / name))
        assert thumb is None and reason


@pytest.mark.parametrize("domain", ["cxr", "efi", "hwsi"])
@pytest.mark.parametrize("alteration", list(overlap.ALTERATIONS))
def test_an_altered_copy_is_found_and_nothing_else(pictures, domain, alteration):
    originals, altered = pictures[domain]
    template = overlap.template_of(originals)
    found = overlap.same_pictures(overlap.prepare(altered[alteration], template),
                                  overlap.prepare(originals, template), domain=domain)
    pairs = {(int(i), int(j)) for i, j, _ in found}
    assert pairs == {(i, i) for i in range(len(altered[alteration]))}, (alteration, found)
    assert (found[:, 2] <= overlap.MATCH_DISTANCE[domain]).all()


@pytest.mark.parametrize("domain", ["cxr", "efi", "hwsi"])
def test_look_alikes_of_different_patients_are_kept_apart(pictures, domain):
    originals, _ = pictures[domain]
    found = overlap.same_pictures(overlap.prepare(originals, overlap.template_of(originals)), domain=domain)
    assert len(found) == 0, found
    # the same set with one picture there twice: that pair and no other
    twice = np.concatenate([originals, originals[3:4]])
    found = overlap.same_pictures(overlap.prepare(twice, overlap.template_of(twice)), domain=domain)
    assert [(int(i), int(j)) for i, j, _ in found] == [(3, len(originals))]


def test_twin_groups_join_copies_of_a_copy(tmp_path):
    paths = demo_pictures(tmp_path, "cxr", 6)
    copies = overlap.write_altered(paths[1], tmp_path, "copy")
    images = [str(p) for p in paths] + [copies["JPEG quality 60"], copies["crop 5 % a side"]]
    thumbs = overlap.Thumbnails("x", "cxr", images, thumbs_of(images), {})
    assert overlap.twin_groups(thumbs) == [sorted([str(paths[1]), copies["JPEG quality 60"], copies["crop 5 % a side"]])]


def test_thumbnails_are_made_once_and_follow_the_files(tmp_path):
    paths = [str(p) for p in demo_pictures(tmp_path / "img", "hwsi", 3, size=(60, 40))]
    manifest = tmp_path / "m" / "tiles.csv"
    first = overlap.thumbnails(paths, key="tiles", domain="hwsi", manifest_csv=manifest, workers=1)
    stored = list((tmp_path / "m" / "cache").glob("tiles_thumbs_*.npz"))
    assert len(stored) == 1 and first.bad == {}
    stored[0].write_bytes(stored[0].read_bytes())  # same content: read back, not made again
    again = overlap.thumbnails(paths, key="tiles", domain="hwsi", manifest_csv=manifest, workers=1)
    assert np.array_equal(first.thumbs, again.thumbs)
    Image.new("RGB", (60, 40), (9, 9, 9)).save(paths[0])  # a changed file: made again, the old file replaced
    changed = overlap.thumbnails(paths, key="tiles", domain="hwsi", manifest_csv=manifest, workers=1)
    assert paths[0] in changed.bad and len(list((tmp_path / "m" / "cache").glob("tiles_thumbs_*.npz"))) == 1


def overlap_csv(path, rows):
    pd.DataFrame(rows, columns=overlap.OVERLAP_COLUMNS).to_csv(path, index=False)
    return path


def test_leave_out_drops_the_matched_train_and_val_images(tmp_path):
    df = pd.DataFrame({"image": ["a", "b", "c", "d", "e"], "label": [0, 1, 0, 1, 0], "patient": list("abcde"),
                       "split": ["train", "train", "val", "test", "train"]})
    path = overlap_csv(tmp_path / "overlap.csv", [
        ("covid", "t1", "test", "cxr14", "b", "train", 0.01), ("covid", "t2", "train", "cxr14", "c", "val", 0.02),
        ("covid", "t3", "test", "cxr14", "d", "test", 0.02), ("shenzhen", "s1", "val", "cxr14", "b", "train", 0.0),
        ("covid", "t4", "train", "covid", "t5", "test", 0.0)])  # a twin of the target itself: not pretraining's
    kept, record = overlap.leave_out(df, path, pretraining="CXR_RI")
    assert kept["image"].tolist() == ["a", "d", "e"]  # a source's test rows are never trained on
    assert record["left_out"] == {"train": 1, "val": 1} and record["by_target"] == {"covid": 2, "shenzhen": 1}
    assert record["digest"] == files.digest(path) and record["file"] == str(path.resolve())
    with pytest.raises(ValueError, match="nothing would be left"):
        overlap.leave_out(df[df["image"].isin(["b", "c"])], path, pretraining="CXR_RI")


def test_seen_in_pretraining_counts_test_pictures_the_pretraining_learnt_from(tmp_path):
    path = overlap_csv(tmp_path / "overlap.csv", [
        ("covid", "t1", "test", "cxr14", "b", "train", 0.01), ("covid", "t1", "test", "cxr14", "c", "train", 0.01),
        ("covid", "t2", "test", "cxr14", "d", "val", 0.02), ("covid", "t3", "train", "cxr14", "b", "train", 0.0)])
    trained = identity.key_hashes(["a", "b", "c"])
    assert overlap.seen_in_pretraining(path, "covid", ["t1", "t2", "t9"], trained) == 1
    assert overlap.seen_in_pretraining(path, "covid", ["t1", "t2"], identity.key_hashes(["a", "d"])) == 1
    assert overlap.seen_in_pretraining(path, "shenzhen", ["t1"], trained) == 0


def test_a_file_that_is_no_overlap_csv_gets_one_line(tmp_path):
    (tmp_path / "other.csv").write_text("image,label\na,0\n")
    with pytest.raises(ValueError, match=r"other.csv: missing column\(s\) \['target'"):
        overlap.read_overlap(tmp_path / "other.csv")


def test_pictures_picked_from_a_prepared_set_align_and_measure_like_their_thumbnails(pictures):
    """The coarse alignment reads each set's wide blurs, made once (float16); the result is the thumbnails'."""
    import torch

    originals, altered = pictures["cxr"]
    template = overlap.template_of(originals)
    database, query = overlap.prepare(originals, template), overlap.prepare(altered["crop 5 % a side"], template)
    q_idx, d_idx = np.array([0, 1, 2, 3, 0]), np.array([0, 1, 2, 3, 5])
    start = torch.tensor(overlap.IDENTITY).repeat(len(q_idx), 1)
    by_thumbs = overlap.align(query.thumbs[q_idx], database.thumbs[d_idx], start, levels=overlap.ALIGN_LEVELS[:2])
    by_picks = overlap.align(query.picked(q_idx), database.picked(d_idx), start, levels=overlap.ALIGN_LEVELS[:2])
    assert (by_thumbs - by_picks).abs().max() < 2e-3 and (by_thumbs - start).abs().max() > 0.01
    assert set(database.smoothed) == {4.0, 2.0}  # the blurs at or over SMOOTHED_ONCE, kept
    measured = [overlap.distance(q, d, by_thumbs, sigma=2.0, detail=4.0, n=16)
                for q, d in ((query.thumbs[q_idx], database.thumbs[d_idx]), (query.picked(q_idx), database.picked(d_idx)))]
    assert np.allclose(*measured, atol=0.01) and measured[0][4] > 2 * measured[0][:4].max()


@pytest.mark.parametrize("alteration", ["JPEG quality 60", "resized to 30 %"])
def test_copies_of_near_empty_tiles_are_found_by_their_coarse_texture(tmp_path, alteration):
    """A near-empty tile (background glass) has grain for fine detail, which JPEG or a resize redraws."""
    demo = load_make_demo_data()
    paths = []
    for seed in range(12):
        tissue = "EMPTY" if seed < 8 else ("TUMOR", "STROMA", "ADIPOSE", "LYMPHO")[seed - 8]
        pixels = demo.render_histology(np.random.default_rng((5, seed)), 256, 256, tissue=tissue)[0]
        paths.append(tmp_path / f"tile_{seed}.png")
        Image.fromarray(pixels).save(paths[-1])
    copies = [overlap.write_altered(path, tmp_path, f"copy{i}")[alteration] for i, path in enumerate(paths[:8])]
    originals = thumbs_of(paths)
    template = overlap.template_of(originals)
    found = overlap.same_pictures(overlap.prepare(thumbs_of(copies), template), overlap.prepare(originals, template),
                                  domain="hwsi")
    assert {(int(i), int(j)) for i, j, _ in found} == {(i, i) for i in range(8)}, found
