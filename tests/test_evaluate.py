"""evaluate.py: metrics with bootstrap CIs over patients, per-class report, confusion matrix, and the
output folders of several checkpoints (how the workflow evaluates best.pt and last.pt of every run)."""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import (
    ROOT,
    TINY,
    colour_folder,
    folder_manifest,
    prepare_colour,
    run_finetune,
    run_main,
    script_error,
    train_argv,
)
from PIL import Image

import evaluate
import finetune_target
from kit import files

EVAL = ["--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny fine-tuned run on a manifest whose test images come two per patient."""
    tmp_path = tmp_path_factory.mktemp("evaluate")
    manifest = folder_manifest(tmp_path, "pairs", ["blue", "red"])
    df = pd.read_csv(manifest)
    test = df.index[df["split"] == "test"]
    df.loc[test, "patient"] = [f"patient{i // 2}" for i in range(len(test))]
    df.to_csv(manifest, index=False)
    out = tmp_path / "finetune" / "pairs" / "IN" / "seed0"
    finetune_target.main(finetune_target.get_args_parser().parse_args(
        ["--manifest", str(manifest), "--init", "random", "--out", str(out), *TINY]))
    return tmp_path, manifest, out


@pytest.mark.slow
def test_best_and_last_with_cis_per_class_and_confusion(run):
    tmp_path, manifest, out = run
    evaluate.main(evaluate.get_args_parser().parse_args(
        ["--checkpoint", str(out / "best.pt"), str(out / "last.pt"), "--relative-to", str(tmp_path / "finetune" / "pairs"),
         "--manifest", str(manifest), "--out", str(tmp_path / "eval" / "pairs"), "--bootstrap", "300", *EVAL]))
    for kind in ("best", "last"):
        folder = tmp_path / "eval" / "pairs" / "IN" / "seed0" / kind
        row = pd.read_csv(folder / "metrics.csv").iloc[0]
        predictions = pd.read_csv(folder / "predictions.csv")
        n = len(predictions)
        assert row["checkpoint"] == str((out / f"{kind}.pt").resolve())
        assert row["checkpoint_digest"] == f"sha256:{files.digest(out / f'{kind}.pt')}"  # bound to that very file
        assert row["n"] == n and row["n_patients"] == math.ceil(n / 2) and row["bootstrap"] == 300
        assert predictions["patient"].str.startswith("patient").all()
        for metric in ("accuracy", "balanced_accuracy", "auroc"):
            assert row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"], metric
        assert row["accuracy"] == pytest.approx((predictions["target"] == predictions["pred"]).mean())

        per_class = pd.read_csv(folder / "per_class.csv")
        assert list(per_class.columns) == ["class", "precision", "recall", "f1", "support", "note"]
        assert list(per_class["class"]) == ["blue", "red"] and per_class["support"].sum() == n
        confusion = pd.read_csv(folder / "confusion.csv").set_index("true")
        assert list(confusion.columns) == ["blue", "red"] and confusion.to_numpy().sum() == n
        expected = pd.crosstab(predictions["target"], predictions["pred"]).reindex(
            index=["blue", "red"], columns=["blue", "red"], fill_value=0)
        assert (confusion.to_numpy() == expected.to_numpy()).all()
        recall = confusion.loc["red", "red"] / confusion.loc["red"].sum()
        assert per_class.set_index("class").at["red", "recall"] == pytest.approx(recall)
        with Image.open(folder / "confusion.png") as image:
            assert image.width > 200 and image.height > 200


def test_intervals_resample_patients_and_none_without_bootstrap():
    # 10 patients x 4 images, a patient's images all right or all wrong: wider than 40 images alone
    probs = np.eye(2)[np.repeat(np.arange(10) % 2, 4)] * 0.8 + 0.1
    targets = np.zeros(40, dtype=np.int64)
    args = argparse.Namespace(bootstrap=500, ci=0.95, seed=0)
    by_patient = evaluate.metrics_with_ci("multiclass", probs, targets, np.repeat(np.arange(10), 4), args)
    by_image = evaluate.metrics_with_ci("multiclass", probs, targets, np.arange(40), args)
    assert by_patient["accuracy"] == by_image["accuracy"] == 0.5
    assert (by_patient["accuracy_ci_high"] - by_patient["accuracy_ci_low"]
            > 1.5 * (by_image["accuracy_ci_high"] - by_image["accuracy_ci_low"]))
    none = evaluate.metrics_with_ci("multiclass", probs, targets, np.arange(40), argparse.Namespace(bootstrap=0, ci=0.95, seed=0))
    assert np.isnan(none["accuracy_ci_low"]) and none["accuracy"] == 0.5
    assert list(none) == [f"{m}{suffix}" for m in ("accuracy", "balanced_accuracy", "kappa", "qwk", "auroc")
                          for suffix in ("", "_ci_low", "_ci_high")]


def test_output_folders(tmp_path):
    runs = tmp_path / "finetune" / "t"
    paths = [runs / "IN" / "seed0" / "best.pt", runs / "IN" / "seed0" / "last.pt", runs / "All_RI" / "seed1" / "best.pt"]
    out = Path("OUT")
    assert evaluate.output_dirs(paths[:1], out, None) == [out]
    assert evaluate.output_dirs(paths[:2], out, None) == [out / "best", out / "last"]
    assert evaluate.output_dirs(paths, out, None) == [out / "IN/seed0/best", out / "IN/seed0/last",
                                                      out / "All_RI/seed1/best"]
    assert evaluate.output_dirs(paths[:1], out, str(runs)) == [out / "IN/seed0/best"]
    with pytest.raises(ValueError, match="not inside"):
        evaluate.output_dirs(paths[:1], out, str(tmp_path / "elsewhere"))


def test_arguments(capsys):
    parser = evaluate.get_args_parser()
    for bad, words in ((["--ci", "1.5"], "argument --ci: must be > 0 and < 1, got 1.5"),
                       (["--ci", "1"], "argument --ci: must be > 0 and < 1, got 1"),
                       (["--bootstrap", "-1"], "argument --bootstrap: must be >= 0, got -1"),
                       (["--sync-bn"], "unrecognized arguments: --sync-bn"),
                       (["--compile"], "unrecognized arguments: --compile"),
                       (["--log-every", "5"], "unrecognized arguments: --log-every")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--checkpoint", "a.pt", "--manifest", "m.csv", "--out", "o", *bad])
        assert words in capsys.readouterr().err, bad
    args = parser.parse_args(["--checkpoint", "a.pt", "b.pt", "--manifest", "m.csv", "--out", "o"])
    assert (args.ci, args.bootstrap, args.seed, args.split, args.checkpoint) == (0.95, 10_000, 0, "test", ["a.pt", "b.pt"])


@pytest.mark.slow
def test_evaluate_reproduces_the_logged_validation_metrics(run):
    tmp_path, manifest, run = run
    evaluate.main(evaluate.get_args_parser().parse_args(
        ["--checkpoint", str(run / "last.pt"), "--manifest", str(manifest), "--split", "val",
         "--out", str(tmp_path / "eval_val"), "--workers", "0", "--device", "cpu"]))
    logged = pd.read_csv(run / "metrics.csv").query("split == 'val'").iloc[-1]
    measured = pd.read_csv(tmp_path / "eval_val" / "metrics.csv").iloc[0]
    for column in ("loss", "accuracy", "balanced_accuracy", "auroc"):
        assert measured[column] == pytest.approx(logged[column], abs=1e-6), column
    predictions = pd.read_csv(tmp_path / "eval_val" / "predictions.csv")
    manifest_df = pd.read_csv(manifest)
    assert sorted(predictions["image"]) == sorted(manifest_df.loc[manifest_df.split == "val", "image"])
    assert np.allclose(predictions[["prob_blue", "prob_red"]].sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_evaluate_refuses_a_checkpoint_of_other_classes(run, tmp_path):
    _, _, run = run
    other = folder_manifest(tmp_path, "other", ["cat", "dog", "eel"])
    with pytest.raises(ValueError, match="classes"):
        evaluate.main(evaluate.get_args_parser().parse_args(
            ["--checkpoint", str(run / "best.pt"), "--manifest", str(other), "--out", str(tmp_path / "e"),
             "--workers", "0", "--device", "cpu"]))


@pytest.mark.slow
def test_evaluate_refuses_test_rows_it_was_trained_on_and_notes_a_disjoint_manifest(tmp_path, capsys):
    """Training and evaluation run in this process (no torch import per command)."""
    data = colour_folder(tmp_path / "data", n=20)
    manifest = prepare_colour(data, tmp_path / "m")
    run_finetune(map(str, train_argv(manifest, tmp_path / "run")[1:]))
    checkpoint = tmp_path / "run" / "best.pt"
    arguments = ["--checkpoint", checkpoint, "--bootstrap", "10", "--workers", "0", "--device", "cpu"]
    # the same data split again with another seed: its test split holds images the model trained on
    other = prepare_colour(data, tmp_path / "m2", "--seed", "5")
    line = script_error("evaluate.py", *arguments, "--manifest", other, "--out", tmp_path / "e1")
    assert "were used to train or select" in line and "test images" in line and "\n" not in line, line
    assert not (tmp_path / "e1").exists()
    # a manifest of other images (another folder) with the same classes: allowed, with a note
    external = prepare_colour(colour_folder(tmp_path / "external", n=6, seed=9), tmp_path / "m3", name="external")
    capsys.readouterr()
    evaluate.main(evaluate.get_args_parser().parse_args(map(str, [*arguments, "--manifest", external, "--out",
                                                                   tmp_path / "e2"])))
    printed = capsys.readouterr().out
    assert "is not the manifest" in printed and "shares no image and no patient" in printed
    # its own manifest: no note
    evaluate.main(evaluate.get_args_parser().parse_args(map(str, [*arguments, "--manifest", manifest, "--out",
                                                                   tmp_path / "e3"])))
    assert "note:" not in capsys.readouterr().out


@pytest.mark.slow
def test_an_evaluation_killed_between_files_leaves_the_previous_folder_whole(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    import evaluate

    manifest = prepare_colour(colour_folder(tmp_path / "data", n=12), tmp_path / "m")
    run_finetune(map(str, train_argv(manifest, tmp_path / "run")[1:]))
    argv = ["--checkpoint", str(tmp_path / "run" / "best.pt"), "--manifest", str(manifest), "--out",
            str(tmp_path / "e"), "--bootstrap", "10", "--workers", "0", "--device", "cpu"]
    evaluate.main(evaluate.get_args_parser().parse_args(argv))
    before = {p.name: p.read_bytes() for p in (tmp_path / "e").iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after predictions.csv and per_class.csv, before the figure and metrics.csv
    monkeypatch.setattr(evaluate, "plot_confusion", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(evaluate.get_args_parser().parse_args([*argv, "--seed", "1"]))
    assert {p.name: p.read_bytes() for p in (tmp_path / "e").iterdir()} == before
    monkeypatch.undo()
    evaluate.main(evaluate.get_args_parser().parse_args([*argv, "--seed", "1"]))  # the leftover does not stop it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".e.tmp")) == []
    assert json.loads(json.dumps(pd.read_csv(tmp_path / "e" / "metrics.csv")["bootstrap_seed"].tolist())) == [1]


@pytest.mark.slow
def test_a_test_picture_the_pretraining_saw_is_refused_or_counted(tmp_path, capsys):
    """overlap.csv pairs a target test image with a source train image: a fine-tuned arm whose backbone was
    pretrained on that image is refused, unless --allow-pretraining-overlap (then counted); pretrained with
    --exclude-overlap, it is evaluated."""
    import pretrain_source

    source = folder_manifest(tmp_path, "src", ["x", "y"])
    target = folder_manifest(tmp_path, "tgt", ["blue", "red"])
    src, tgt = pd.read_csv(source), pd.read_csv(target)
    test_image = tgt.loc[tgt["split"] == "test", "image"].iloc[0]
    seen_image = src.loc[src["split"] == "train", "image"].iloc[0]
    overlap_csv = tmp_path / "overlap.csv"
    pd.DataFrame([["tgt", test_image, "test", "src", seen_image, "train", 0.01]],
                 columns=["target", "target_image", "split", "source", "source_image", "source_split", "distance"]
                 ).to_csv(overlap_csv, index=False)
    for name, extra in (("kept", []), ("dropped", ["--exclude-overlap", str(overlap_csv)])):
        pretrain_source.main(pretrain_source.get_args_parser().parse_args(
            ["--manifest", str(source), "--init", "random", "--out", str(tmp_path / f"pre_{name}"), *TINY, *extra]))
        finetune_target.main(finetune_target.get_args_parser().parse_args(
            ["--manifest", str(target), "--init", str(tmp_path / f"pre_{name}" / "last.pt"),
             "--out", str(tmp_path / f"ft_{name}"), *TINY]))
    meta = json.loads((tmp_path / "pre_dropped" / "args.json").read_text())["meta"]
    assert meta["overlap"]["left_out"] == {"train": 1, "val": 0} and meta["overlap"]["by_target"] == {"tgt": 1}

    def evaluate_argv(name, *extra):
        return ["evaluate.py", "--checkpoint", tmp_path / f"ft_{name}" / "best.pt", "--manifest", target,
                "--out", tmp_path / f"eval_{name}", "--bootstrap", "10", *EVAL, *extra]

    def evaluate_run(name, *extra):
        """Run in this process; what it printed."""
        capsys.readouterr()
        run_main(*evaluate_argv(name, *extra))
        return capsys.readouterr().out

    refused = script_error(*evaluate_argv("kept", "--overlap", overlap_csv))
    assert "1 of the 4 test images are pictures that the pretraining" in refused
    assert "--allow-pretraining-overlap" in refused and not (tmp_path / "eval_kept").exists()
    # the overlap.csv its pretraining left out is found without --overlap
    evaluate_run("dropped")
    assert pd.read_csv(tmp_path / "eval_dropped" / "metrics.csv")["seen_in_pretraining"].tolist() == [0]
    counted = evaluate_run("kept", "--overlap", overlap_csv, "--allow-pretraining-overlap")
    assert "1 test image(s) were seen in pretraining" in counted
    assert pd.read_csv(tmp_path / "eval_kept" / "metrics.csv")["seen_in_pretraining"].tolist() == [1]
    # no overlap.csv anywhere: evaluated, the column empty and a note saying what was not checked
    plain = evaluate_run("kept")
    assert "not checked whether its pretraining saw pictures" in plain
    assert pd.read_csv(tmp_path / "eval_kept" / "metrics.csv")["seen_in_pretraining"].isna().all()
