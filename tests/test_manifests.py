"""kit.manifests: patient-level stratified splits, nested train fractions, the per-class cap,
manifest loading and the 22-label aggregate."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import colour_folder, prepare_colour

from kit import manifests, readers

# --------------------------------------------------------------------------- splits

def synthetic(n_patients=200, images_per_patient=3, n_classes=4, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = np.repeat(rng.choice(n_classes, size=n_patients, p=[0.55, 0.25, 0.15, 0.05][:n_classes]
                                 if n_classes == 4 else None), images_per_patient)
    patient = np.repeat([f"p{i:04d}" for i in range(n_patients)], images_per_patient)
    return pd.DataFrame({"image": [f"/x/{i}.png" for i in range(len(label))], "label": label, "patient": patient})


def test_splits_patient_level_stratified_seeded():
    df = synthetic()
    a = manifests.make_splits(df, val_frac=0.15, test_frac=0.15, seed=0)
    assert a.groupby("patient")["split"].nunique().max() == 1
    share = a["split"].value_counts(normalize=True)
    assert abs(share["val"] - 0.15) < 0.03 and abs(share["test"] - 0.15) < 0.03
    table = pd.crosstab(a["label"], a["split"], normalize="columns")
    whole = df["label"].value_counts(normalize=True).sort_index()
    assert (table.sub(whole, axis=0).abs() < 0.05).all().all()
    assert (pd.crosstab(a["label"], a["split"]) > 0).all().all()
    assert a["split"].tolist() == manifests.make_splits(df, val_frac=0.15, test_frac=0.15, seed=0)["split"].tolist()
    assert a["split"].tolist() != manifests.make_splits(df, val_frac=0.15, test_frac=0.15, seed=1)["split"].tolist()
    shuffled = manifests.make_splits(df.sample(frac=1, random_state=3), val_frac=0.15, test_frac=0.15, seed=0)
    assert shuffled.sort_index()["split"].tolist() == a["split"].tolist()  # row order does not matter
    assert list(a.columns[:4]) == ["image", "label", "patient", "split"]


def test_splits_demo_size_every_class_everywhere():
    # demo sets: ~15-30 images per class, one image per patient
    for seed in range(5):
        df = pd.DataFrame({"image": [f"{i}.png" for i in range(60)], "label": [i % 4 for i in range(60)],
                           "patient": [f"id{i}" for i in range(60)]})
        split = manifests.make_splits(df, val_frac=0.15, test_frac=0.15, seed=seed)
        assert (pd.crosstab(split["label"], split["split"]) >= 1).all().all()
        # eyes of one patient with different grades; a rare grade only in mixed patients
        eyes = pd.DataFrame({"image": [f"{i}" for i in range(40)], "patient": [f"p{i // 2}" for i in range(40)],
                             "label": [0, 1] * 5 + [0, 0] * 10 + [2, 2] * 5})
        split = manifests.make_splits(eyes, val_frac=0.2, test_frac=0.2, seed=seed)
        assert (pd.crosstab(split["label"], split["split"]) >= 1).all().all()
        assert split.groupby("patient")["split"].nunique().max() == 1


def test_splits_multilabel_rare_label():
    labels = ["No Finding"] * 120 + ["Effusion"] * 40 + ["Effusion|Hernia"] * 6 + ["Hernia"] * 3 + [""] * 6
    df = pd.DataFrame({"image": range(len(labels)), "labels": labels, "patient": [f"p{i}" for i in range(len(labels))]})
    split = manifests.make_splits(df, val_frac=0.15, test_frac=0.15, seed=0)
    for name in ("train", "val", "test"):
        present = set(split.loc[split["split"] == name, "labels"].str.split("|").explode())
        assert {"No Finding", "Effusion", "Hernia"} <= present, name


def test_splits_multilabel_without_any_label():
    df = pd.DataFrame({"image": range(20), "labels": [""] * 20, "patient": [f"p{i}" for i in range(20)]})
    split = manifests.make_splits(df, val_frac=0.2, test_frac=0.2, seed=0)
    assert split["split"].value_counts().to_dict() == {"train": 12, "val": 4, "test": 4}


def test_splits_official():
    df = synthetic(n_patients=100, images_per_patient=2)
    patient_number = df["patient"].str[1:].astype(int)
    # official test only -> val carved from the official train rows
    official = np.where(patient_number < 20, "test", "train")
    split = manifests.make_splits(df.assign(official_split=official), val_frac=0.25, test_frac=0.15, seed=0)
    assert (split.loc[official == "test", "split"] == "test").all()
    carved = split.loc[official == "train", "split"].value_counts(normalize=True)
    assert set(carved.index) == {"train", "val"} and abs(carved["val"] - 0.25) < 0.05
    # official val only -> test carved from train
    official = np.where(patient_number < 20, "val", "train")
    split = manifests.make_splits(df.assign(official_split=official), val_frac=0.25, test_frac=0.15, seed=0)
    assert (split.loc[official == "val", "split"] == "val").all()
    assert set(split.loc[official == "train", "split"]) == {"train", "test"}
    # both official -> kept as they are; unassigned rows are carved
    official = np.where(patient_number < 20, "val", np.where(patient_number < 40, "test", "train"))
    split = manifests.make_splits(df.assign(official_split=official), val_frac=0.25, test_frac=0.15, seed=0)
    assert split["split"].tolist() == official.tolist()
    official = np.where(patient_number < 20, "test", "")
    split = manifests.make_splits(df.assign(official_split=official), val_frac=0.2, test_frac=0.15, seed=0)
    assert set(split.loc[official == "", "split"]) == {"train", "val"}


def test_split_fraction_errors():
    df = synthetic(n_patients=10)
    for val, test in ((-0.1, 0.1), (0.1, 1.0), (0.5, 0.5)):
        with pytest.raises(ValueError, match="must be"):
            manifests.make_splits(df, val_frac=val, test_frac=test, seed=0)


# --------------------------------------------------------------------------- train fractions and the per-class cap

def test_nested_fraction_nested_patient_level_stratified_seeded():
    df = manifests.make_splits(synthetic(n_patients=400, images_per_patient=2), seed=0)
    train_patients = lambda part: set(part.loc[part["split"] == "train", "patient"])
    subsets = {f: manifests.nested_fraction(df, f, seed=5) for f in (0.05, 0.1, 0.25, 0.5, 1.0)}
    for small, large in ((0.05, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert train_patients(subsets[small]) < train_patients(subsets[large])  # nested, strictly
    assert subsets[1.0].equals(df)
    all_train = df[df["split"] == "train"]
    per_class = all_train.groupby("label")["patient"].nunique()
    for fraction, part in subsets.items():
        held_out = part[part["split"] != "train"]
        assert held_out.equals(df[df["split"] != "train"])  # val/test untouched
        train = part[part["split"] == "train"]
        # whole patients: a kept patient keeps all its train images
        assert train.groupby("patient").size().eq(all_train.groupby("patient").size()[train["patient"].unique()]).all()
        # stratified: ceil(fraction x patients) of every class
        kept = train.groupby("label")["patient"].nunique().reindex(per_class.index, fill_value=0)
        assert kept.tolist() == [int(np.ceil(fraction * n)) for n in per_class], fraction
    assert train_patients(manifests.nested_fraction(df, 0.25, seed=5)) == train_patients(subsets[0.25])
    assert train_patients(manifests.nested_fraction(df, 0.25, seed=6)) != train_patients(subsets[0.25])
    shuffled = manifests.nested_fraction(df.sample(frac=1, random_state=1), 0.25, seed=5)
    assert train_patients(shuffled) == train_patients(subsets[0.25])  # row order does not matter
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            manifests.nested_fraction(df, bad, seed=0)
    with pytest.raises(ValueError, match="needs a 'split' column"):
        manifests.nested_fraction(df.drop(columns="split"), 0.5, seed=0)


def test_nested_fraction_multilabel_keeps_rare_label():
    labels = ["No Finding"] * 200 + ["Effusion"] * 60 + ["Effusion|Hernia"] * 3
    df = pd.DataFrame({"image": range(len(labels)), "labels": labels, "patient": [f"p{i}" for i in range(len(labels))],
                       "split": "train"})
    part = manifests.nested_fraction(df, 0.1, seed=0)
    assert part["labels"].value_counts().to_dict() == {"No Finding": 20, "Effusion": 6, "Effusion|Hernia": 1}


def test_cap_per_class():
    df = synthetic(n_patients=300, images_per_patient=2)
    df.loc[df["patient"] == "p0000", "label"] = [0, 3]  # a patient with two classes (two eyes)
    capped = manifests.cap_per_class(df, 40, seed=0)
    counts = capped["label"].value_counts()
    assert counts.max() <= 40 and counts.min() >= 38 and sorted(counts.index) == [0, 1, 2, 3]
    assert capped.groupby("patient").size().eq(2).all()  # whole patients
    assert capped.equals(manifests.cap_per_class(df, 40, seed=0))
    assert not capped.equals(manifests.cap_per_class(df, 40, seed=1))
    shuffled = manifests.cap_per_class(df.sample(frac=1, random_state=2), 40, seed=0)
    assert set(shuffled["patient"]) == set(capped["patient"])
    assert manifests.cap_per_class(df, 10_000, seed=0).equals(df)
    # multi-label: every label counts; the rare one is kept although its images carry a full label
    labels = ["Effusion"] * 100 + ["Effusion|Hernia"] * 3 + ["No Finding"] * 50
    multi = pd.DataFrame({"image": range(len(labels)), "labels": labels, "patient": [f"p{i}" for i in range(len(labels))]})
    names = manifests.cap_per_class(multi, 10, seed=0)["labels"].str.split("|").explode().value_counts()
    assert names.to_dict() == {"Effusion": 10, "No Finding": 10, "Hernia": 3}
    with pytest.raises(ValueError, match="must be >= 1"):
        manifests.cap_per_class(df, 0, seed=0)


# --------------------------------------------------------------------------- manifest files

def write_manifest(folder: Path, key: str, df: pd.DataFrame, **meta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / f"{key}.csv", index=False)
    (folder / f"{key}.json").write_text(json.dumps({"key": key, **meta}))
    return folder / f"{key}.csv"


def test_load_manifest_checks(tmp_path):
    good = pd.DataFrame({"image": ["/a.png", "/b.png"], "label": [0, 1], "patient": ["007", "NA"],
                         "split": ["train", "val"]})
    path = write_manifest(tmp_path, "shenzhen", good, domain="cxr", task="multiclass",
                          classes=["normal", "tuberculosis"])
    df, meta = manifests.load_manifest(path)
    assert df["patient"].tolist() == ["007", "NA"] and df["label"].dtype == np.int64
    assert meta["classes"] == ["normal", "tuberculosis"]
    write_manifest(tmp_path, "shenzhen", good.assign(label=[0, 2]), domain="cxr", task="multiclass",
                   classes=["normal", "tuberculosis"])
    with pytest.raises(ValueError, match=r"shenzhen\.csv: row 3: label '2' is not a class index 0\.\.1"):
        manifests.load_manifest(path)
    write_manifest(tmp_path, "shenzhen", good.drop(columns="split"), domain="cxr", task="multiclass",
                   classes=["normal", "tuberculosis"])
    with pytest.raises(ValueError, match=r"shenzhen\.csv: missing column\(s\) \['split'\]"):
        manifests.load_manifest(path)
    (tmp_path / "shenzhen.json").unlink()
    with pytest.raises(ValueError, match=r"shenzhen\.json: manifest sidecar not found"):
        manifests.load_manifest(path)


def test_aggregate_manifests(tmp_path):
    cxr = write_manifest(tmp_path, "chestxray14", pd.DataFrame({
        "image": ["/c1.png", "/c2.png", "/c3.png"], "labels": ["Effusion|Mass", "No Finding", ""],
        "patient": ["1", "1", "2"], "split": ["train", "train", "test"]}),
        domain="cxr", task="multilabel", classes=list(readers.CHESTXRAY14_CLASSES))
    bh = write_manifest(tmp_path, "breakhis", pd.DataFrame({
        "image": ["/b1.png", "/b2.png"], "label": [1, 0], "patient": ["14-2523", "1"], "split": ["val", "train"],
        "magnification": [40, 100]}), domain="hwsi", task="multiclass", classes=list(readers.BREAKHIS_CLASSES))
    ep = write_manifest(tmp_path, "eyepacs", pd.DataFrame({
        "image": ["/e1.jpeg"], "label": [3], "patient": ["1"], "split": ["test"]}),
        domain="efi", task="multiclass", classes=list(readers.DR_GRADES_5))
    df, meta = manifests.aggregate_manifests([cxr, bh, ep])
    assert (meta["key"], meta["domain"], meta["task"]) == ("all", "mixed", "multilabel")
    assert len(meta["classes"]) == 22
    assert meta["classes"][:2] == ["chestxray14/Atelectasis", "chestxray14/Cardiomegaly"]
    assert meta["classes"][15:17] == ["breakhis/benign", "breakhis/malignant"]
    assert meta["classes"][-1] == "eyepacs/grade_4"
    assert list(df.columns) == ["image", "labels", "patient", "split", "domain", "source"]
    assert df["labels"].tolist() == ["chestxray14/Effusion|chestxray14/Mass", "chestxray14/No Finding", "",
                                     "breakhis/malignant", "breakhis/benign", "eyepacs/grade_3"]
    assert df["patient"].tolist() == ["chestxray14/1", "chestxray14/1", "chestxray14/2", "breakhis/14-2523",
                                      "breakhis/1", "eyepacs/1"]
    assert df["domain"].tolist() == ["cxr"] * 3 + ["hwsi"] * 2 + ["efi"]
    assert df["split"].tolist() == ["train", "train", "test", "val", "train", "test"]
    assert meta["counts"]["test"]["eyepacs/grade_3"] == 1
    # per source, the labels a masked loss keeps for its rows (--label-mask)
    assert list(meta["label_groups"]) == ["chestxray14", "breakhis", "eyepacs"]
    assert meta["label_groups"]["breakhis"] == ["breakhis/benign", "breakhis/malignant"]
    assert sum(meta["label_groups"].values(), []) == meta["classes"]
    assert df["source"].tolist() == ["chestxray14"] * 3 + ["breakhis"] * 2 + ["eyepacs"]
    with pytest.raises(ValueError, match="appears twice"):
        manifests.aggregate_manifests([cxr, cxr])


def test_load_manifests_one_is_the_manifest_several_the_aggregate(tmp_path):
    """evaluate.py --manifest takes one manifest or the sources of the All set."""
    shenzhen = write_manifest(tmp_path, "shenzhen", pd.DataFrame({
        "image": ["/a.png", "/b.png"], "label": [0, 1], "patient": ["1", "2"], "split": ["train", "test"]}),
        domain="cxr", task="multiclass", classes=["normal", "tuberculosis"])
    breakhis = write_manifest(tmp_path, "breakhis", pd.DataFrame({
        "image": ["/c.png"], "label": [1], "patient": ["3"], "split": ["test"]}),
        domain="hwsi", task="multiclass", classes=list(readers.BREAKHIS_CLASSES))
    df, meta = manifests.load_manifests([str(shenzhen)])
    alone_df, alone_meta = manifests.load_manifest(shenzhen)
    pd.testing.assert_frame_equal(df, alone_df)
    assert meta == alone_meta and meta["key"] == "shenzhen"
    df, meta = manifests.load_manifests(iter([shenzhen, breakhis]))  # any iterable of paths
    both_df, both_meta = manifests.aggregate_manifests([shenzhen, breakhis])
    pd.testing.assert_frame_equal(df, both_df)
    assert meta == both_meta and meta["key"] == "all"
    assert meta["classes"] == ["shenzhen/normal", "shenzhen/tuberculosis", "breakhis/benign", "breakhis/malignant"]


def test_load_manifest_refuses_an_image_or_patient_in_two_splits(tmp_path):
    from kit import manifests
    manifest = prepare_colour(colour_folder(tmp_path / "data", n=8), tmp_path / "m")
    df = pd.read_csv(manifest)
    edited = df.copy()
    edited.loc[len(edited)] = {**df.iloc[0].to_dict(), "split": "test" if df.iloc[0]["split"] != "test" else "train"}
    edited.to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"image .* is in the .* splits"):
        manifests.load_manifest(manifest)
    edited = df.copy()
    first, other = edited.index[edited["split"] == "train"][0], edited.index[edited["split"] == "val"][0]
    edited.loc[other, "patient"] = edited.loc[first, "patient"]
    edited.to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"patient .* is in the train and val splits"):
        manifests.load_manifest(manifest)


def test_a_symlink_in_one_split_and_its_target_in_another_are_one_image(tmp_path):
    from kit import manifests
    manifest = prepare_colour(colour_folder(tmp_path / "data", n=8), tmp_path / "m")
    df = pd.read_csv(manifest)
    train, test = df.index[df["split"] == "train"][0], df.index[df["split"] == "test"][0]
    alias = tmp_path / "elsewhere" / "alias.png"
    alias.parent.mkdir()
    os.symlink(df.loc[test, "image"], alias)
    df.loc[train, "image"] = str(alias)  # the test image, reached through a link, also in train
    df.to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"image '.*' \(also as '.*'\) is in the test and train splits"):
        manifests.load_manifest(manifest)
