"""The report answers the paper's questions: its Table 2 as data, the claims and their verdicts, all
pairwise comparisons with Holm's correction, stability, and report.md's content, checked on
FABRICATED studies whose answers are known (run and evaluation folders written by hand as
kit/results.py reads them)."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import plot_results
from kit import claims, files, metrics, paper, stats

ARMS = ["IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN"]
COLUMNS = ["epoch", "split", "loss", "accuracy", "balanced_accuracy", "kappa", "qwk", "auroc"]
CLASSES = {"shenzhen": ["normal", "tuberculosis"], "messidor": [f"grade_{g}" for g in range(4)],
           "deepdrid": [f"grade_{g}" for g in range(5)]}

# Validation / training curves (10 epochs, fractions of the headline metric).
SMOOTH = [0.80, 0.88, 0.89, 0.90, 0.90, 0.91, 0.91, 0.91, 0.91, 0.91]        # 95 % of best at epoch 2, no drop
PEAKED = [0.80, 0.88, 0.90, 0.93, 0.95, 0.93, 0.92, 0.92, 0.91, 0.91]        # best at epoch 5, last 0.91, drop 2 pp
UNSTEADY = [0.50, 0.55, 0.60, 0.70, 0.62, 0.75, 0.80, 0.82, 0.86, 0.88]      # 95 % at epoch 9, drop 8 pp
DITCHES = [0.20, 0.40, 0.10, 0.45, 0.15, 0.50, 0.48, 0.50, 0.49, 0.50]       # drops of up to 30 pp
FLAT_TRAIN = [0.60, 0.80, 0.90, 0.95, 0.97, 0.98, 0.99, 0.99, 0.99, 0.99]    # levelled off
RISING_TRAIN = [0.10, 0.19, 0.28, 0.37, 0.46, 0.55, 0.64, 0.73, 0.82, 0.91]  # still rising: +36 pp over the last third
LEVEL_TRAIN = [0.30, 0.50, 0.60, 0.70, 0.70, 0.70, 0.70, 0.70, 0.70, 0.70]   # IN levelled off at a low value

# Per target and arm: (validation curve, training curve, share of test images right). Made so that:
# shenzhen: All_IN clearly best, IN clearly worst, the other three identical; medical arms converge earlier
#   and more smoothly than IN -> (a), (b), (d1), (d2) supported, (c) inconclusive (Domain_RI = Domain_IN);
# messidor: every arm predicts the same; IN dips, IN's training curve levelled off -> (e2) supported,
#   (e1) contradicted; deepdrid: IN best, IN's training curve still rising -> (f) contradicted, (e1) supported.
DESIGN = {
    "shenzhen": {"IN": (UNSTEADY, FLAT_TRAIN, 0.55), "Domain_RI": (PEAKED, FLAT_TRAIN, 0.75),
                 "Domain_IN": (SMOOTH, FLAT_TRAIN, 0.75), "All_RI": (SMOOTH, FLAT_TRAIN, 0.75),
                 "All_IN": (SMOOTH, FLAT_TRAIN, 0.97)},
    "messidor": {"IN": (DITCHES, LEVEL_TRAIN, 0.6), **{a: (SMOOTH, FLAT_TRAIN, 0.6) for a in ARMS[1:]}},
    "deepdrid": {"IN": (SMOOTH, RISING_TRAIN, 0.95), **{a: (SMOOTH, FLAT_TRAIN, 0.35) for a in ARMS[1:]}},
}
N_TEST = {"shenzhen": (200, 1), "messidor": (120, 1), "deepdrid": (200, 2)}  # images, images per patient


def write_run(out: Path, target: str, arm: str, val, train, right: float, seed: int = 0) -> None:
    """finetune/<target>/<arm>/seed<S>/{metrics.csv, args.json} and eval/.../{best,last}/{metrics,predictions}.csv."""
    run = out / "finetune" / target / arm / f"seed{seed}"
    run.mkdir(parents=True)
    metric = paper.TARGETS[target][3]
    rows = []
    for epoch, (v, t) in enumerate(zip(val, train), start=1):
        for split, value in (("train", t), ("val", v)):
            rows.append({"epoch": epoch, "split": split, "loss": 1 - value, **{c: value for c in COLUMNS[3:]}})
    pd.DataFrame(rows, columns=COLUMNS).to_csv(run / "metrics.csv", index=False)
    args = {"seed": seed, "train_fraction": 1.0, "image_size": 224, "epochs": len(val), "batch_size": 32,
            "lr": 1e-4, "weight_decay": 1e-4, "warmup_epochs": 0, "hidden_dim": 512, "dropout": 0.5,
            "class_weights": "auto"}
    (run / "args.json").write_text(json.dumps({"args": args, "meta": {"headline_metric": metric,
                                                                       "data": {"manifest_rows": "same"}}}))
    classes = CLASSES[target]
    n, per_patient = N_TEST[target]
    rng = np.random.default_rng(7)  # the same truth for every arm; which images are right: per arm
    truth = rng.integers(0, len(classes), n)
    correct = np.zeros(n, dtype=bool)  # arms with the same share right get the very same predictions
    correct[np.random.default_rng(round(1000 * right)).permutation(n)[:round(right * n)]] = True
    pred = np.where(correct, truth, (truth + 1) % len(classes))
    probs = np.full((n, len(classes)), 0.02)
    probs[np.arange(n), pred] = 1 - 0.02 * (len(classes) - 1)
    predictions = pd.DataFrame({"image": [f"/d/{target}/{i:04d}.png" for i in range(n)],
                                "patient": [f"p{i // per_patient}" for i in range(n)], "split": "test",
                                "target": [classes[t] for t in truth], "pred": [classes[p] for p in pred],
                                **{f"prob_{c}": probs[:, j] for j, c in enumerate(classes)}})
    values = metrics.multiclass_metrics(probs, truth)
    for kind in ("best", "last"):
        folder = out / "eval" / target / arm / f"seed{seed}" / kind
        folder.mkdir(parents=True)
        predictions.to_csv(folder / "predictions.csv", index=False)
        pd.DataFrame([{"split": "test", "checkpoint": str(run / f"{kind}.pt"), "epoch": len(val), **values,
                       "n": n, "n_patients": n // per_patient}]).to_csv(folder / "metrics.csv", index=False)


def study_json(out: Path, **changes) -> None:
    record = {"data": "demo", "demo": True, "demo_scale": 0.3, "imagenet_weights": "/w/densenet121-a639ec97.pth",
              "imagenet_found": True, "imagenet_missing_reason": None, "image_size": 32, "epochs_pretrain": 1,
              "epochs_finetune": 10, "batch_size": 16, "seeds": [0], "split_seed": 0, "pretrain_seed": None,
              "train_fractions": [1.0], "targets": list(DESIGN), "source_protocol": "paper"} | changes
    (out / "study.json").write_text(json.dumps(record))


def plot(out: Path, *extra):
    args = plot_results.get_args_parser().parse_args(["--runs", str(out), "--out", str(out), "--bootstrap", "1000",
                                                      *extra])
    plot_results.main(args)


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    for target, arms in DESIGN.items():
        for arm, (val, train, right) in arms.items():
            write_run(out, target, arm, val, train, right)
    study_json(out)
    plot(out)
    return out


def verdict_of(out, claim, dataset):
    table = pd.read_csv(out / "tables" / "claims.csv")
    return table.loc[(table["claim"] == claim) & (table["dataset"] == dataset), "verdict"].item()


# --------------------------------------------------------------------------- the paper's data

def test_table2_is_the_papers():
    assert set(paper.TABLE2) == set(paper.TARGETS) and all(set(v) == set(ARMS) for v in paper.TABLE2.values())
    assert paper.TABLE2["messidor"]["IN"] == (77.5, 52.1) and paper.TABLE2["deepdrid"]["All_RI"] == (100.0, 31.6)
    assert paper.TABLE2["covid19_radiography"]["All_IN"] == (100.0, 96.6)
    # rankings of the paper's validation values, ties at one decimal
    assert paper.ranking({a: v[1] for a, v in paper.TABLE2["shenzhen"].items()}) == \
        "Domain_IN = All_IN > Domain_RI = All_RI > IN"
    assert paper.ranking({a: v[1] for a, v in paper.TABLE2["deepdrid"].items()}) == \
        "Domain_RI > All_IN > Domain_IN > IN > All_RI"


def test_the_papers_table_against_its_text():
    """Put through the claims' rules, Table 2 disagrees with the text where the issue says it does."""
    said = {(c.key, t): claims.paper_table_verdict(c, t) for c in claims.CLAIMS for t in c.scope}
    assert said["c", "shenzhen"][0] == said["c", "covid19_radiography"][0] == "contradicted"  # Dom IN >= Dom RI
    assert said["c", "kather2016"][0] == "supported"
    assert said["b", "shenzhen"][0] == "supported" and said["b", "covid19_radiography"][0] == "contradicted"
    assert said["a", "covid19_radiography"][0] == "supported" and said["a", "shenzhen"][0] == "inconclusive"  # a tie
    assert said["f", "deepdrid"][0] == "supported" and said["d1", "shenzhen"] is None


# --------------------------------------------------------------------------- statistics

def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, math.nan]
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4 = 0.02, x3 = 0.03, x2 = 0.06, x1 = 0.04 -> running max 0.06
    assert np.allclose(stats.holm(p)[:4], [0.03, 0.06, 0.06, 0.02]) and math.isnan(stats.holm(p)[4])
    assert np.allclose(stats.holm([0.5, 0.6]), [1.0, 1.0]) and stats.holm([]).size == 0


def test_stability_by_hand():
    found = stats.stability(range(1, 11), UNSTEADY)
    assert found["max_drop"] == pytest.approx(0.08) and found["late_gain"] == pytest.approx(0.88 - 0.75)
    assert found["tail_sd"] == pytest.approx(np.std(UNSTEADY[-4:], ddof=1))  # ceil(10 / 3) = 4 epochs
    two = stats.stability([1, 2], [0.5, 0.4])
    assert two["max_drop"] == pytest.approx(0.1) and math.isnan(two["tail_sd"]) and two["late_gain"] == pytest.approx(-0.1)
    assert math.isnan(stats.stability([1], [0.5])["max_drop"])


# --------------------------------------------------------------------------- the fabricated study

def test_all_ten_pairs_per_target_with_holm_checked_by_hand(fabricated):
    paired = pd.read_csv(fabricated / "tables" / "paired.csv")
    for target in DESIGN:
        for checkpoint in ("best", "last"):
            family = paired[(paired["target"] == target) & (paired["checkpoint"] == checkpoint)
                            & (paired["method"] != "DeLong")]
            assert len(family) == 10
            assert {(r.arm, r.reference) for r in family.itertuples()} == \
                {(ARMS[j], ARMS[i]) for i in range(5) for j in range(i + 1, 5)}
            p = family["p_value"].to_numpy()
            order = np.argsort(p, kind="stable")
            by_hand = np.empty(10)
            running = 0.0
            for rank, i in enumerate(order):
                running = max(running, min(1.0, (10 - rank) * p[i]))
                by_hand[i] = running
            assert np.allclose(family["p_holm"], by_hand, atol=1e-3)  # the CSV rounds to 4 decimals
    delong = paired[paired["method"] == "DeLong"]
    assert set(delong["target"]) == {"shenzhen"} and len(delong) == 20 and delong["p_holm"].notna().any()


def test_verdicts_of_the_fabricated_study(fabricated):
    assert verdict_of(fabricated, "a", "D1") == "supported"          # All_IN better by construction
    assert verdict_of(fabricated, "b", "D1") == "supported"          # both domain arms beat IN
    assert verdict_of(fabricated, "c", "D1") == "inconclusive"       # Domain_RI and Domain_IN identical
    assert verdict_of(fabricated, "f", "D5") == "contradicted"       # IN made better than the claimed winners
    assert verdict_of(fabricated, "d1", "D1") == "supported"         # 95 % of best at epochs 2-4 vs 9
    assert verdict_of(fabricated, "d2", "D1") == "supported"         # largest drops 0-2 pp vs 8 pp
    assert verdict_of(fabricated, "e2", "D4") == "supported"         # IN dips by 30 pp, the others never
    assert verdict_of(fabricated, "e1", "D5") == "supported"         # IN still rising by 36 pp
    assert verdict_of(fabricated, "e1", "D4") == "contradicted"      # IN levelled off
    table = pd.read_csv(fabricated / "tables" / "claims.csv")
    assert (table.loc[table["dataset"].isin(["D2", "D3"]), "verdict"] == "not tested").all()  # targets not run
    row = table[(table["claim"] == "c") & (table["dataset"] == "D1")].iloc[0]
    assert "Domain_RI − Domain_IN +0.0 pp [0.0, 0.0], p_Holm 1.000" in row["evidence"]
    assert row["paper_table"] == "disagrees (Domain_RI 90.0, Domain_IN 91.7)"


def test_table2_and_the_paper_side_by_side_use_the_last_epoch(fabricated):
    table = pd.read_csv(fabricated / "tables" / "table2.csv").set_index(["target", "arm"])
    assert table.loc[("shenzhen", "Domain_RI"), "val"] == pytest.approx(91.0)  # last epoch, not the best (95.0)
    assert table.loc[("shenzhen", "Domain_RI"), "epoch"] == 10
    side = pd.read_csv(fabricated / "tables" / "paper_vs_run.csv").set_index(["target", "arm"])
    row = side.loc[("shenzhen", "Domain_RI")]
    assert (row["paper_val"], row["paper_train"], row["checkpoint"]) == (90.0, 98.6, "last")
    assert row["val_minus_paper"] == pytest.approx(91.0 - 90.0)
    assert row["test"] == pytest.approx(75.0) and row["test_ci_low"] < 75 < row["test_ci_high"]
    rankings = pd.read_csv(fabricated / "tables" / "rankings.csv").set_index("target")
    assert rankings.at["shenzhen", "test"] == "All_IN > Domain_RI = Domain_IN = All_RI > IN"
    assert rankings.at["shenzhen", "paper_val"] == "Domain_IN = All_IN > Domain_RI = All_RI > IN"


def test_stability_columns(fabricated):
    curves = pd.read_csv(fabricated / "tables" / "convergence.csv").set_index(["target", "arm"])
    assert curves.loc[("messidor", "IN"), "max_drop"] == pytest.approx(30.0)
    assert curves.loc[("shenzhen", "IN"), "epochs_to_95"] == 9 and curves.loc[("shenzhen", "All_IN"), "epochs_to_95"] == 2
    assert curves.loc[("deepdrid", "IN"), "train_late_gain"] == pytest.approx(36.0)
    assert curves.loc[("shenzhen", "IN"), "tail_sd"] == pytest.approx(100 * np.std(UNSTEADY[-4:], ddof=1), abs=1e-3)
    assert curves.loc[("shenzhen", "IN"), "train_epochs_to_95"] == 4
    runs = pd.read_csv(fabricated / "tables" / "runs.csv")
    assert {"val_curve_mean", "max_drop", "tail_sd", "train_epochs_to_95", "train_late_gain"} <= set(runs.columns)
    assert "val_auc" not in runs.columns


def test_report_content(fabricated):
    report = (fabricated / "report.md").read_text()
    top = report[:report.index("## The paper's claims")]
    assert "**Data: synthetic demo data**" in top and "mean nothing about medicine" in top
    assert "one seed: no sd across seeds" in top and "Not run" not in top
    assert "Targets not run: D2 COVID-19 Radiography, D3 Kather Texture 2016 (study.sh TARGETS)" in top
    answers = [line for line in top.splitlines() if line.startswith("- D")]
    assert len(answers) == 3
    assert "medical pretraining beats ImageNet here" in answers[0] and "All_IN" in answers[0]
    assert "no medical arm is shown better or worse than ImageNet" in answers[1]
    assert "ImageNet beats medical pretraining here" in answers[2]
    for part in ("## The paper's claims, checked", "**supported**", "**contradicted**", "**inconclusive**",
                 "## The paper's Table 2 next to this run", "| Paper val (%) |", "Ranking of the arms",
                 "all pairs of arms", "| p (Holm) |", "Holm's correction within each target",
                 "Largest val drop (pp)", "Train gain, last third (pp)", "Val curve mean (%)",
                 "## Settings: the paper's and the kit's", "paper: not stated; kit: AdamW",
                 "(figures/shenzhen_loss.png)", "(figures/forest.png)", "n = 200 images, 100 patients"):
        assert part in report, part
    assert "Val AUC" not in report and "mean ± sd across seeds" not in report
    assert report.count("| D1 Shenzhen CXR | ") >= 10 + 5  # ten comparisons, five arms side by side
    stability = [line for line in report.splitlines() if line.startswith("| D1 Shenzhen CXR | IN | 88.0")][0]
    assert "| 9 |" in stability and "9.0" not in stability.split("|")[4]  # epochs as counts, not "8.0"


def test_figures_are_all_linked(fabricated):
    report = (fabricated / "report.md").read_text()
    written = sorted(p.name for p in (fabricated / "figures").glob("*.png"))
    assert len(written) == 8 and all(f"(figures/{name})" in report for name in written)


def test_arms_not_run_are_not_tested_and_the_report_says_why(tmp_path):
    for arm in ("Domain_RI", "All_RI"):
        write_run(tmp_path, "shenzhen", arm, SMOOTH, FLAT_TRAIN, 0.75 if arm == "Domain_RI" else 0.97)
    study_json(tmp_path, imagenet_found=False, imagenet_weights=None,
               imagenet_missing_reason="download failed (offline)")
    (tmp_path / "manifests").mkdir()  # a multi-label source: its images, not its label counts, are reported
    pd.DataFrame({"image": list("abcd"), "labels": ["Mass|Nodule", "No Finding", "Mass|Effusion", "Hernia"],
                  "patient": list("wxyz"), "split": ["train", "train", "train", "val"]}).to_csv(
        tmp_path / "manifests" / "chestxray14.csv", index=False)
    (tmp_path / "manifests" / "chestxray14.json").write_text(json.dumps({"key": "chestxray14", "protocol": "paper"}))
    plot(tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "claims.csv")
    shenzhen = table[table["dataset"] == "D1"]
    assert (shenzhen["verdict"] == "not tested").all() and "supported" not in set(table["verdict"])
    assert shenzhen["evidence"].str.contains("no ImageNet weights").all()
    report = (tmp_path / "report.md").read_text()
    assert "**Not run: IN, Domain_IN, All_IN**: no ImageNet weights (download failed (offline))" in report
    assert "the ImageNet arm was not run (no ImageNet weights" in report
    assert "| chestxray14 | paper | 3 | 1 | 0 | 112,120 |" in report

    # without study.json (a folder study.sh did not write) the report still comes, and says what it cannot know
    (tmp_path / "study.json").unlink()
    plot(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "**Data: unknown**" in report and "**Not run: IN, Domain_IN, All_IN**." in report


def test_per_class_rows_leave_0_over_0_empty_with_a_note(tmp_path):
    eye = np.eye(3, dtype=bool)
    targets, preds = eye[[0, 0, 1, 1]], eye[[0, 1, 1, 1]]  # class 2: absent and never predicted; class 0 fine
    rows = metrics.per_class_rows(["a", "b", "c"], targets, preds)
    assert rows[0] == {"class": "a", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2,
                       "note": ""}
    assert rows[2]["precision"] is None and rows[2]["recall"] is None and rows[2]["f1"] is None
    assert rows[2]["note"] == "never predicted: precision 0/0 left empty; absent from the split: recall 0/0 left empty"
    files.write_csv(rows, tmp_path / "per_class.csv", ["class", "precision", "recall", "f1", "support", "note"])
    assert (tmp_path / "per_class.csv").read_text().splitlines()[3].startswith("c,,,,0,never predicted")


def test_curve_claims_need_enough_epochs(fabricated):
    """Two epochs say nothing about convergence: the curve claims are not tested, whatever the numbers."""
    convergence = pd.read_csv(fabricated / "tables" / "convergence.csv")
    short = convergence.assign(epochs=2)
    found = claims.verdicts(pd.read_csv(fabricated / "tables" / "paired.csv").query("checkpoint == 'last'"), short,
                            {t: set(ARMS) for t in DESIGN}, alpha=0.05)
    curve_rows = found[found["claim"].isin(["d1", "d2", "e1", "e2"]) & found["dataset"].isin(["D1", "D4", "D5"])]
    assert len(curve_rows) == 5 and (curve_rows["verdict"] == "not tested").all()
    assert curve_rows["evidence"].str.contains("curves of 2 epoch").all()
    assert found.set_index(["claim", "dataset"]).at[("a", "D1"), "verdict"] == "supported"  # test claims unaffected
    table = pd.read_csv(fabricated / "tables" / "claims.csv").set_index(["claim", "dataset"])
    assert table.at[("d1", "D1"), "evidence"] == ("val epochs to 95 % of best: IN 9, Domain_RI 4, Domain_IN 2, "
                                                 "All_RI 2, All_IN 2")
