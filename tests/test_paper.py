"""kit.paper and the paper's protocol (Section 5.2), exactly: its targets, arms and names; the
sources' rows and splits (prepare_data.py --protocol), the image geometry, the All set's loss,
class weights, headline metrics and the last epoch of Table 2."""
import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight

import prepare_data
import pretrain_all
from kit import losses, manifests, paper, readers, results
from kit.data import encode_targets
from transforms import (
    cache_transforms,
    eval_transforms,
    loader_transforms,
    preprocess_transforms,
)

ROOT = Path(__file__).resolve().parents[1]


def prepare(capsys, *argv):
    """prepare_data.py in-process; returns (manifest frame, sidecar, printed text)."""
    args = prepare_data.get_args_parser().parse_args([str(a) for a in argv])
    prepare_data.main(args)
    key = args.name or args.dataset
    frame = pd.read_csv(Path(args.out) / f"{key}.csv", keep_default_na=False)
    return frame, json.loads((Path(args.out) / f"{key}.json").read_text()), capsys.readouterr().out


def no_patient_in_two_splits(frame):
    return frame.groupby("patient")["split"].nunique().max() == 1


# --------------------------------------------------------------------------- source data (5.2.1, 5.2.3)

def test_paper_counts_add_up():
    """112,120 + 7,909 + 49,169 = 169,198 (the All set); BreakHis 5,429 + 2,480 = 7,909 (the text's 9109 is a typo)."""
    counts = paper.SOURCE_IMAGES
    assert counts["chestxray14"] + counts["breakhis"] + counts["eyepacs"] == counts["all"] == 169_198
    assert counts["breakhis"] == 5_429 + 2_480 and counts["eyepacs"] == 35_126 + paper.EYEPACS_TEST_ADDED
    assert "as the paper states" in paper.stated_vs_built("all", 169_198)
    assert "50.0 % of the paper's count" in paper.stated_vs_built("breakhis", 7_909 / 2)


@pytest.fixture(scope="module")
def chestxray14_root(shared_data, tmp_path_factory):
    """The full 112,120-row metadata with an official test list of about a fifth of the patients."""
    root = tmp_path_factory.mktemp("chestxray14")
    table = shared_data / "chestxray14" / "Data_Entry_2017_v2020.csv.gz"
    (root / table.name).symlink_to(table)
    meta = pd.read_csv(table, usecols=["Image Index", "Patient ID"])
    test = meta["Patient ID"] % 5 == 0
    (root / "test_list.txt").write_text("\n".join(meta.loc[test, "Image Index"]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(meta.loc[~test, "Image Index"]) + "\n")
    return root, int(test.sum())


def test_chestxray14_paper_protocol_uses_all_112120_images(chestxray14_root, tmp_path, capsys):
    root, n_test_list = chestxray14_root
    frame, meta, printed = prepare(capsys, "--dataset", "chestxray14", "--root", root, "--out", tmp_path,
                                   "--no-check-files")
    assert len(frame) == 112_120 and set(frame["split"]) == {"train", "val"}  # the official test list included
    assert (frame["shipped_split"] == "test").sum() == n_test_list
    assert 0.095 < (frame["split"] == "val").mean() < 0.105  # 90/10
    assert no_patient_in_two_splits(frame) and frame["patient"].nunique() == 30_805
    assert (meta["protocol"], meta["val_frac"], meta["test_frac"], meta["paper_images"]) == ("paper", 0.1, 0.0, 112_120)
    assert sum(meta["counts"]["test"].values()) == 0
    assert meta["split_images"] == {s: int((frame["split"] == s).sum()) for s in ("train", "val", "test")}
    assert "paper (Section 5.2.1): 112,120 images; built: 112,120 (train " in printed
    assert "as the paper states" in printed and f"its {n_test_list:,} images are in the pool too" in printed

    # the kit's former default, by name: the official test list is the test split, val carved from the rest
    held, held_meta, printed = prepare(capsys, "--dataset", "chestxray14", "--root", root, "--out", tmp_path / "held",
                                       "--no-check-files", "--protocol", "held-out-test")
    assert (held["split"] == "test").sum() == n_test_list and held_meta["protocol"] == "held-out-test"
    assert no_patient_in_two_splits(held) and "paper (Section" not in printed


def eyepacs_tree(root: Path, train: dict, test: dict) -> Path:
    """trainLabels.csv + train/ and retinopathy_solution.csv (image, level, Usage) + test/, tiny JPEGs."""
    for folder, labels, csv_name, usage in (("train", train, "trainLabels.csv", False),
                                            ("test", test, "retinopathy_solution.csv", True)):
        (root / folder).mkdir(parents=True)
        lines = ["image,level" + (",Usage" if usage else "")]
        for i, (name, level) in enumerate(labels.items()):
            Image.new("RGB", (8, 8), (40 * level, 60, 90)).save(root / folder / f"{name}.jpeg")
            lines.append(f"{name},{level}" + ((",Public", ",Private")[i % 2] if usage else ""))
        (root / csv_name).write_text("\n".join(lines) + "\n")
    return root


def grades(first_patient, n_patients, cycle):
    """{<patient>_<eye>: grade} for n patients, the grades taken in turn from `cycle`."""
    names = [f"{p}_{eye}" for p in range(first_patient, first_patient + n_patients) for eye in ("left", "right")]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def test_eyepacs_test_grades_1_to_4_join_training_grade_0_left_out(tmp_path, capsys):
    train = grades(1, 30, [0, 0, 1, 2, 0, 3, 4, 0])
    test = grades(1000, 10, [0, 1, 0, 2, 3, 0, 4])
    root = eyepacs_tree(tmp_path / "eyepacs", train, test)
    frame, meta, printed = prepare(capsys, "--dataset", "eyepacs", "--root", root, "--out", tmp_path / "m")
    added = {n for n, g in test.items() if g > 0}
    names = set(frame["image"].map(lambda p: Path(p).stem))
    assert names == set(train) | added  # every training image, the test set's grades 1-4, none of its grade 0
    assert not names & {n for n, g in test.items() if g == 0}
    assert set(frame["split"]) == {"train", "val"} and no_patient_in_two_splits(frame)
    assert (frame["shipped_split"] == "test").sum() == len(added)
    assert (meta["added_from_test"], meta["left_out_test"]) == (len(added), len(test) - len(added))
    assert meta["class_weights"] == "balanced"  # the paper weights EyePACS
    assert (f"official test set: {len(added)} images of grades 1-4 added (paper: 14,043), "
            f"{len(test) - len(added)} of grade 0 left out") in printed
    assert f"paper (Section 5.2.1): 49,169 images; built: {len(train) + len(added)} (train " in printed

    held, held_meta, _ = prepare(capsys, "--dataset", "eyepacs", "--root", root, "--out", tmp_path / "held",
                                 "--protocol", "held-out-test")
    assert set(held.loc[held["split"] == "test", "image"].map(lambda p: Path(p).stem)) == set(test)


def test_real_eyepacs_labels_without_the_test_set(shared_data, tmp_path, capsys):
    frame, meta, printed = prepare(capsys, "--dataset", "eyepacs", "--root", shared_data / "eyepacs",
                                   "--out", tmp_path, "--no-check-files")
    assert len(frame) == 35_126 and set(frame["split"]) == {"train", "val"} and no_patient_in_two_splits(frame)
    assert 0.09 < (frame["split"] == "val").mean() < 0.11
    assert "none to add" in printed and "built: 35,126" in printed and meta["added_from_test"] == 0


def breakhis_tree(root: Path, n_slides: int = 20, per_slide: int = 4) -> Path:
    codes = ["A", "F", "DC", "LC"]
    for s in range(n_slides):
        code = codes[s % len(codes)]
        letter = "B" if code in ("A", "F") else "M"
        for i in range(per_slide):
            path = root / f"SOB_{letter}_{code}-14-{1000 + s}-{(40, 100, 200, 400)[i % 4]}-{i + 1:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (200, 100 + s, 150)).save(path)
    return root


def test_breakhis_paper_protocol_is_90_10_by_slide(tmp_path, capsys):
    frame, meta, printed = prepare(capsys, "--dataset", "breakhis", "--root", breakhis_tree(tmp_path / "b"),
                                   "--out", tmp_path / "m")
    assert len(frame) == 80 and set(frame["split"]) == {"train", "val"} and no_patient_in_two_splits(frame)
    assert 6 <= (frame["split"] == "val").sum() <= 12
    assert meta["protocol"] == "paper" and "paper (Section 5.2.1): 7,909 images; built: 80" in printed


@pytest.mark.parametrize("dataset, argv, message", [
    ("shenzhen", ["--protocol", "paper"], "the paper's source protocol applies to chestxray14, breakhis, eyepacs"),
    ("breakhis", ["--test-frac", "0.1"], "--test-frac 0.1 with --protocol paper: the paper's sources have no test"),
])
def test_protocol_refusals(tmp_path, dataset, argv, message):
    (tmp_path / dataset).mkdir()
    args = prepare_data.get_args_parser().parse_args(["--dataset", dataset, "--root", str(tmp_path / dataset),
                                                      "--out", str(tmp_path / "m"), *argv])
    with pytest.raises(ValueError, match=message):
        prepare_data.prepare_manifest(args)


def test_split_check_needs_no_test_split_under_the_paper_protocol(tmp_path):
    frame = pd.DataFrame({"split": ["train"] * 8 + ["val"] * 2, "official_split": ["train"] * 7 + ["test"] * 3})
    args = prepare_data.get_args_parser().parse_args(["--dataset", "eyepacs", "--root", "r", "--out", "o"])
    prepare_data.resolve_protocol(args)
    prepare_data.check_split_sizes(frame, tmp_path, args)  # the paper's protocol: no test split wanted
    args.protocol = "held-out-test"
    with pytest.raises(ValueError, match="the test split would hold 0 image"):
        prepare_data.check_split_sizes(frame, tmp_path, args)


def test_targets_keep_train_val_test(tmp_path, capsys):
    root = tmp_path / "shenzhen" / "ChinaSet_AllFiles" / "CXR_png"
    root.mkdir(parents=True)
    for i in range(1, 41):
        Image.new("L", (8, 8), 40 * (i % 2) + i).save(root / f"CHNCXR_{i:04d}_{i % 2}.png")
    frame, meta, printed = prepare(capsys, "--dataset", "shenzhen", "--root", tmp_path / "shenzhen",
                                   "--out", tmp_path / "m")
    assert set(frame["split"]) == {"train", "val", "test"}
    assert (meta["protocol"], meta["val_frac"], meta["test_frac"]) == ("held-out-test", 0.15, 0.15)
    assert "paper (Section" not in printed
    # Table 1's images per class next to what was built (20 + 20 of the paper's 326 + 336)
    assert ("paper (Table 1, Section 5.2.2): 662 images; built: normal 20 (paper 326), tuberculosis 20 (paper 336); "
            "6.0 % of the paper's 662") in printed


# --------------------------------------------------------------------------- the All set: 22 one-hot labels, BCE (the kit's choice)

def write_manifest(folder: Path, key: str, rows: list, task: str, classes) -> Path:
    label = "labels" if task == "multilabel" else "label"
    pd.DataFrame([{"image": f"/x/{key}/{i}.png", label: value, "patient": f"p{i}", "split": split}
                  for i, (value, split) in enumerate(rows)]).to_csv(folder / f"{key}.csv", index=False)
    domain = readers.DATASETS[key].domain
    (folder / f"{key}.json").write_text(json.dumps({"key": key, "domain": domain, "task": task,
                                                    "classes": list(classes)}))
    return folder / f"{key}.csv"


def test_all_set_is_22_one_hot_labels_with_unweighted_bce(tmp_path):
    paths = [
        write_manifest(tmp_path, "chestxray14", [("Effusion|Mass", "train"), ("No Finding", "val")], "multilabel",
                       readers.CHESTXRAY14_CLASSES),
        write_manifest(tmp_path, "breakhis", [(1, "train"), (0, "val")], "multiclass", readers.BREAKHIS_CLASSES),
        write_manifest(tmp_path, "eyepacs", [(3, "train"), (0, "val")], "multiclass", readers.DR_GRADES_5),
    ]
    df, meta = manifests.aggregate_manifests(paths)
    assert len(meta["classes"]) == 22 == 15 + 2 + 5 and meta["class_weights"] == "none"
    targets = encode_targets(df, "multilabel", meta["classes"])
    assert targets.shape == (6, 22) and not np.isnan(targets).any() and set(np.unique(targets)) == {0.0, 1.0}
    on = {meta["classes"][j] for j in np.flatnonzero(targets[4])}
    assert on == {"eyepacs/grade_3"}  # one-hot over its own dataset's labels, 0 for the other 21
    logits = torch.randn(6, 22)
    plain = torch.nn.BCEWithLogitsLoss()(logits, torch.from_numpy(targets))
    assert torch.allclose(losses.MultiLabelBCE()(logits, torch.from_numpy(targets)), plain)

    # pretrain_all.py builds exactly that loss: MultiLabelBCE() without weights, no label mask by default
    tree = ast.parse((ROOT / "pretrain_all.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("MultiLabelBCE")]
    assert len(calls) == 1 and not calls[0].args and not calls[0].keywords
    assert "pos_weight" not in (ROOT / "pretrain_all.py").read_text()
    args = pretrain_all.get_args_parser().parse_args(["--manifests", *map(str, paths), "--out", str(tmp_path / "r")])
    assert args.label_mask is False


# --------------------------------------------------------------------------- class weights, metrics, Table 2

def test_auto_class_weights_are_balanced_exactly_for_the_three_graded_eye_sets():
    rng = np.random.default_rng(0)
    weighted = set()
    for key, spec in readers.DATASETS.items():
        classes = list(spec.classes) or ["a", "b", "c"]
        targets = rng.integers(0, len(classes), 300)
        meta = {"class_weights": spec.class_weights, "task": spec.task, "classes": classes}
        weights = losses.class_weights("auto", meta, targets)
        if weights is not None:
            weighted.add(key)
            expected = compute_class_weight("balanced", classes=np.arange(len(classes)), y=targets)
            assert np.allclose(weights, expected, atol=1e-5), key
    assert weighted == {"eyepacs", "messidor", "deepdrid"}


def test_headline_metric_per_target():
    expected = {"shenzhen": "accuracy", "covid19_radiography": "accuracy", "kather2016": "accuracy",
                "messidor": "kappa", "deepdrid": "kappa"}
    for target, metric in expected.items():
        assert paper.TARGETS[target][3] == metric == readers.DATASETS[target].headline_metric
        assert results.headline_metric(target, []) == metric
    assert [paper.TARGETS[t][0] for t in expected] == ["D1", "D2", "D3", "D4", "D5"]


# --------------------------------------------------------------------------- images (5.2.1)

def test_breakhis_700_by_460_becomes_340_by_224_then_a_224_crop_of_it(tmp_path):
    columns = np.linspace(0, 255, 700).astype(np.uint8)  # every column its own grey: a crop's offset is readable
    picture = np.repeat(np.stack([columns] * 3, -1)[None], 460, axis=0)
    path = str(tmp_path / "SOB_B_A-14-1-40-001.png")
    Image.fromarray(picture).save(path)
    head = cache_transforms("hwsi", image_size=224)({"image": path})["image"]
    assert tuple(head.shape) == (3, 224, 340)
    offsets = set()
    for seed in range(12):  # train: a random 224 x 224 window of the 340 x 224 picture
        chain = loader_transforms("hwsi", image_size=224, train=True)
        chain.set_random_state(seed)
        crop = chain({"image": path})["image"]
        assert tuple(crop.shape) == (3, 224, 224)
        found = [left for left in range(340 - 224 + 1) if torch.equal(crop, torch.as_tensor(head)[:, :, left:left + 224])]
        assert len(found) == 1
        offsets |= set(found)
    assert len(offsets) > 3
    centre = loader_transforms("hwsi", image_size=224, train=False)({"image": path})["image"]
    assert torch.equal(centre, torch.as_tensor(head)[:, :, 58:282])  # eval: the centre window
    assert tuple(eval_transforms("hwsi", image_size=224)({"image": path})["image"].shape) == (3, 224, 224)


def test_fundus_eye_is_cropped_out_of_a_wide_frame(tmp_path):
    """A fundus photograph, wide and with the eye off centre, becomes a 224 x 224 picture of the
    whole eye: a plain centre crop of the frame would cut the eye and keep black border."""
    rows, cols = np.mgrid[:672, :1020]
    disc = (rows - 336) ** 2 + (cols - 640) ** 2 <= 300 ** 2
    picture = np.zeros((672, 1020, 3), np.uint8)
    picture[disc] = (170, 80, 40)
    path = str(tmp_path / "1_left.jpeg")
    Image.fromarray(picture).save(path)
    x = preprocess_transforms("efi", image_size=224)({"image": path})["image"]
    assert tuple(x.shape) == (3, 224, 224)
    eye = x.mean(0) > 0.1
    assert eye[112, :].all() and eye[:, 112].all()  # the eye spans the whole width and height
    assert 0.7 < float(eye.float().mean()) < 0.85  # a disc in its bounding square: pi / 4



def test_targets_and_arms_in_paper_order():
    assert list(paper.TARGETS) == ["shenzhen", "covid19_radiography", "kather2016", "messidor", "deepdrid"]
    assert [paper.TARGETS[t][3] for t in paper.TARGETS] == ["accuracy"] * 3 + ["kappa"] * 2  # Table 2's metrics
    assert paper.ARMS == ["IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN"]
    assert paper.paper_sorted({"zz", "All_IN", "IN", "aa"}, paper.ARMS) == ["IN", "All_IN", "aa", "zz"]


def test_names():
    assert paper.target_title("messidor") == "D4 Messidor" and paper.target_title("my_set") == "my_set"
    assert paper.short_name("deepdrid") == "D5" and paper.short_name("my_set") == "my_set"
    assert paper.metric_label("kappa") == "Kappa Score" and paper.metric_label("f1") == "f1"
    assert paper.arm_legend_label("messidor", "Domain_IN") == "Domain_IN (EFI_IN)"
    assert paper.arm_legend_label("my_set", "Domain_IN") == "Domain_IN" and paper.arm_legend_label("shenzhen", "IN") == "IN"
    assert paper.fraction_label(0.25) == "0.25" and paper.fraction_label(1.0) == "1"
    assert paper.CURVE_SPLITS == [("train", "Training"), ("val", "Validation")]


# --------------------------------------------------------------------------- Tables 1 and 2, cell by cell

# The paper's Table 2 as printed (Section 5.3): rows D1-D5 x Training/Validation, columns IN, Dom RI, Dom IN,
# ALL RI, ALL IN; accuracy (%) for D1-D3, kappa (%) for D4-D5.
PAPER_TABLE2 = """
D1 Training 95.6 98.6 96.8 99.1 99.5
D1 Validation 86.7 90.0 91.7 90.0 91.7
D2 Training 99.9 99.9 99.9 100 100
D2 Validation 96.5 95.9 96.0 96.2 96.6
D3 Training 98.7 98.1 98.2 99.6 99.6
D3 Validation 95.1 93.9 95.2 94.4 95.2
D4 Training 77.5 97.5 95.5 97.8 98.6
D4 Validation 52.1 38.8 51.0 33.6 45.3
D5 Training 90.0 99.6 99.3 100 100
D5 Validation 36.1 47.3 46.0 31.6 46.2
"""
# The paper's Table 1 (Section 5.2.2): samples per class of each target.
PAPER_TABLE1 = {
    "D1": [("Normal", 326), ("Tuberculosis", 336)],
    "D2": [("COVID", 3616), ("Lung_Opacity", 6012), ("Normal", 10192), ("Viral_Pneumonia", 1345)],
    "D3": [(c, 625) for c in ("Tumor", "Stroma", "Complex", "Lympho", "Debris", "Mucosa", "Adipose", "Empty")],
    "D4": [("Grade_0", 541), ("Grade_1", 154), ("Grade_2", 247), ("Grade_3", 254)],
    "D5": [("0-No DR", 714), ("1-Mild NPDR", 186), ("2-Moderate NPDR", 326), ("3-Severe NPDR", 282),
           ("4-Proliferate DR", 92)],
}


def test_all_50_cells_of_table2_are_the_papers():
    by_label = {label: key for key, (label, *_) in paper.TARGETS.items()}
    checked = 0
    for line in PAPER_TABLE2.strip().splitlines():
        label, split, *cells = line.split()
        column = 0 if split == "Training" else 1
        for arm, cell in zip(paper.ARMS, cells, strict=True):
            assert paper.TABLE2[by_label[label]][arm][column] == float(cell), (label, split, arm)
            checked += 1
    assert checked == 50 and sum(len(arms) * 2 for arms in paper.TABLE2.values()) == 50
    # rankings of the paper's validation values, ties at one decimal
    assert paper.ranking({a: v[1] for a, v in paper.TABLE2["shenzhen"].items()}) == \
        "Domain_IN = All_IN > Domain_RI = All_RI > IN"
    assert paper.ranking({a: v[1] for a, v in paper.TABLE2["deepdrid"].items()}) == \
        "Domain_RI > All_IN > Domain_IN > IN > All_RI"


def test_table1_counts_are_the_papers_under_the_kits_class_names():
    by_label = {label: key for key, (label, *_) in paper.TARGETS.items()}
    for label, cells in PAPER_TABLE1.items():
        key = by_label[label]
        assert list(paper.TABLE1[key].values()) == [n for _, n in cells], label
        # in the order and under the names the readers give the classes
        assert list(paper.TABLE1[key]) == list(readers.DATASETS[key].classes), label
    totals = {label: sum(n for _, n in cells) for label, cells in PAPER_TABLE1.items()}
    assert totals == {"D1": 662, "D2": 21_165, "D3": 5_000, "D4": 1_196, "D5": 1_600}
    assert paper.table1_vs_built("kather2016", {c: 625 for c in paper.TABLE1["kather2016"]}).endswith(
        "as the paper states")
    line = paper.table1_vs_built("messidor", {"grade_0": 546, "grade_1": 153, "grade_2": 247, "grade_3": 254})
    assert "grade_0 546 (paper 541), grade_1 153 (paper 154), grade_2 247, grade_3 254" in line
    assert paper.chance_agreement("kather2016") == pytest.approx(1 / 8)


def test_settings_say_what_the_kit_inferred():
    """The All set's loss, the kappa's weighting, the fundus crop, the runs per arm and no class weights on
    D1-D3 are the kit's inferences or choices: each row says so, none claims the paper for them."""
    rows = {name: (said or "", kit) for name, said, kit, *_ in paper.SETTINGS}
    assert "the loss not stated" in rows["All set"][0] and "(the kit's inference)" in rows["All set"][1]
    assert "binary cross-entropy" not in rows["All set"][0]
    assert "the kappa's weighting not stated" in rows["metrics"][0] and "(the kit's inference)" in rows["metrics"][1]
    assert "(the kit's choice)" in rows["eye fundus"][1] and "bounding box" not in rows["eye fundus"][0]
    assert rows["runs per arm"][0].startswith("not stated") and "(one run per arm is the kit's inference)" \
        in rows["runs per arm"][1]
    assert "D1-D3 not stated" in rows["class weights"][0] and "none on D1-D3 (the kit's inference)" \
        in rows["class weights"][1]
    assert set(paper.LIMITS) == {"kather2016", None} and "no slide" in paper.LIMITS["kather2016"]
    assert set(paper.NO_PATIENT_IDS) <= set(paper.TARGETS) and "deepdrid" not in paper.NO_PATIENT_IDS
