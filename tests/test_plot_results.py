"""plot_results.py on hand-written runs trees: what it writes, its options (--metric, --no-loss-plots,
arms and targets the paper does not name), and its one-line errors. The statistics and the Markdown
of those files: test_tables.py, test_report.py, test_results.py, test_figures.py."""
import json
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import ALL_ARMS, ROOT, last, make_runs, plot, script_error

import plot_results


def test_no_temporary_files_left(plain_study):
    root, _ = plain_study
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]


def test_metric_override_and_unknown_target_and_arm(tmp_path):
    written = make_runs(tmp_path, {"deepdrid": ["IN"], "my_folder": ["All_RI", "zz_custom", "Domain_RI"]})
    (tmp_path / "finetune" / "my_folder" / "All_RI" / "args.json").write_text(
        json.dumps({"args": {}, "meta": {"key": "folder", "headline_metric": "balanced_accuracy"}}))
    plot(tmp_path, tmp_path / "auto", "--no-loss-plots")
    table = pd.read_csv(tmp_path / "auto" / "tables" / "table2.csv")
    assert list(table["arm"]) == (ALL_ARMS + ["zz_custom"]) * 2  # unknown arm appended after the paper's
    assert list(table["target"].unique()) == ["deepdrid", "my_folder"]  # paper targets first
    assert dict(zip(table["target"], table["metric"])) == {"deepdrid": "kappa", "my_folder": "balanced_accuracy"}
    custom = table[table["arm"] == "zz_custom"].set_index("target")
    assert custom.at["my_folder", "val"] == pytest.approx(
        last(written["my_folder", "zz_custom"], "val", "balanced_accuracy"), abs=0.006)
    assert not (tmp_path / "auto" / "figures" / "deepdrid_loss.png").exists()
    assert not (tmp_path / "auto" / "tables" / "test_summary.csv").exists()

    plot(tmp_path, tmp_path / "qwk", "--metric", "qwk")
    table = pd.read_csv(tmp_path / "qwk" / "tables" / "table2.csv").set_index(["target", "arm"])
    assert set(table["metric"]) == {"qwk"}
    assert table.at[("deepdrid", "IN"), "train"] == pytest.approx(
        last(written["deepdrid", "IN"], "train", "qwk"), abs=0.006)
    assert "### Quadratic weighted kappa (%)" in (tmp_path / "qwk" / "tables" / "table2.md").read_text()


def test_error_without_runs(tmp_path):
    with pytest.raises(ValueError, match=r"no metrics.csv under .*finetune/\*/\*/ — run finetune_target.py first"):
        plot(tmp_path, tmp_path)
    # As the command line runs it: the same message as one line and a non-zero exit, no traceback.
    line = script_error("plot_results.py", "--runs", tmp_path, "--out", tmp_path)
    assert line.startswith("error: no metrics.csv under ") and "run finetune_target.py first" in line
    assert "\n" not in line and not (tmp_path / "tables").exists()


@pytest.mark.parametrize("problem", ["no_metric_column", "no_val_rows", "empty_file"])
def test_error_on_malformed_csv(tmp_path, problem):
    make_runs(tmp_path, {"shenzhen": ["IN"], "messidor": ["All_RI"]})
    bad = tmp_path / "finetune" / "messidor" / "All_RI" / "metrics.csv"
    frame = pd.read_csv(bad)
    if problem == "no_metric_column":
        frame.drop(columns="kappa").to_csv(bad, index=False)
        match = "missing column.*kappa"
    elif problem == "no_val_rows":
        frame[frame["split"] == "train"].to_csv(bad, index=False)
        match = "no rows with split == 'val'"
    else:
        bad.write_text("")
        match = "cannot read CSV"
    with pytest.raises(ValueError, match=match) as info:
        plot(tmp_path, tmp_path)
    assert str(bad) in str(info.value)
    assert not (tmp_path / "tables" / "table2.csv").exists()  # nothing half-written


def test_plot_results_does_not_pair_arms_trained_on_different_splits(tmp_path):
    sys.path.insert(0, str(ROOT))
    import plot_results

    for arm, manifest_rows in (("IN", "aaaa"), ("Domain_RI", "bbbb")):
        run_dir = tmp_path / "finetune" / "shenzhen" / arm / "seed0"
        run_dir.mkdir(parents=True)
        pd.DataFrame({"epoch": [1, 1], "split": ["train", "val"], "loss": [0.5, 0.6], "accuracy": [0.7, 0.6]}) \
            .to_csv(run_dir / "metrics.csv", index=False)
        (run_dir / "args.json").write_text(json.dumps({"args": {"seed": 0}, "meta": {"data": {"manifest_rows": manifest_rows}}}))
        ev = tmp_path / "eval" / "shenzhen" / arm / "seed0" / "best"
        ev.mkdir(parents=True)
        images = [f"/x/{i}.png" for i in range(8)]
        target = ["normal", "tuberculosis"] * 4
        prob = np.linspace(0.1, 0.9, 8)
        pd.DataFrame({"image": images, "patient": images, "split": "test", "target": target,
                      "pred": ["normal"] * 8, "prob_normal": 1 - prob, "prob_tuberculosis": prob}) \
            .to_csv(ev / "predictions.csv", index=False)
        pd.DataFrame([{"split": "test", "checkpoint": str(run_dir / "best.pt"), "accuracy": 0.5, "n": 8,
                       "n_patients": 8}]).to_csv(ev / "metrics.csv", index=False)
    plot_results.main(plot_results.get_args_parser().parse_args(
        ["--runs", str(tmp_path), "--out", str(tmp_path), "--bootstrap", "20", "--no-loss-plots"]))
    paired = pd.read_csv(tmp_path / "tables" / "paired.csv")
    assert paired.empty
    report = (tmp_path / "report.md").read_text()
    assert "trained on different splits" in report


def evaluated_runs(root, digests):
    """Two shenzhen runs with a best.pt each (its bytes stand for a model: only hashed here) and an evaluation that
    records `digests[arm]` as the checkpoint it evaluated (None: no checkpoint_digest column, an older evaluation)."""
    from kit import files
    make_runs(root, {"shenzhen": ["IN", "All_IN"]})
    for arm, recorded in digests.items():
        checkpoint = root / "finetune" / "shenzhen" / arm / "best.pt"
        checkpoint.write_bytes(f"the model of {arm}".encode())
        row = {"split": "test", "checkpoint": str(checkpoint), "epoch": 3, "loss": 0.4, "accuracy": 0.75, "n": 40}
        if recorded is not None:
            row["checkpoint_digest"] = recorded if recorded != "now" else f"sha256:{files.digest(checkpoint)}"
        (root / "eval" / "shenzhen" / arm).mkdir(parents=True)
        pd.DataFrame([row]).to_csv(root / "eval" / "shenzhen" / arm / "metrics.csv", index=False)


def test_a_table_holds_only_evaluations_of_the_checkpoint_now_in_the_run_folder(tmp_path, capsys):
    evaluated_runs(tmp_path, {"IN": "now", "All_IN": "now"})
    plot(tmp_path, tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "table2.csv").set_index("arm")
    assert table.loc[["IN", "All_IN"], "test"].tolist() == [75.0, 75.0]
    assert "## Evaluations left out" not in (tmp_path / "report.md").read_text()
    # IN trained again after its evaluation (another best.pt): its old test numbers leave every table
    (tmp_path / "finetune" / "shenzhen" / "IN" / "best.pt").write_bytes(b"the model of a new run")
    capsys.readouterr()
    plot(tmp_path, tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "table2.csv").set_index("arm")
    assert pd.isna(table.at["IN", "test"]) and table.at["All_IN", "test"] == 75.0
    assert pd.notna(table.at["IN", "val"])  # its curves are the new run's, shown
    printed = capsys.readouterr().out
    assert f"left out: {tmp_path / 'eval' / 'shenzhen' / 'IN' / 'metrics.csv'}: " in printed
    assert "has changed since (trained again?)" in printed
    report = (tmp_path / "report.md").read_text()
    assert "## Evaluations left out" in report and "- shenzhen/IN (best.pt): " in report
    assert "shenzhen/All_IN (best.pt)" not in report


def test_an_evaluation_without_a_checkpoint_hash_or_whose_checkpoint_is_gone_is_left_out(tmp_path, capsys):
    evaluated_runs(tmp_path, {"IN": None, "All_IN": "now"})
    (tmp_path / "finetune" / "shenzhen" / "All_IN" / "best.pt").unlink()
    plot(tmp_path, tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "table2.csv").set_index("arm")
    assert table.loc[["IN", "All_IN"], "test"].isna().all()
    printed = capsys.readouterr().out
    assert "records no checkpoint hash" in printed and "All_IN/best.pt is gone" in printed


def test_a_full_disk_names_the_file_and_leaves_the_previous_output_whole(plain_study, monkeypatch):
    import errno

    from kit import files
    root, _ = plain_study
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*")
              if p.is_file() and p.parts[len(root.parts)] in ("figures", "tables", "report.md")}
    assert len(before) > 5
    writes = []
    real_write = files._Handle.write

    def full_after_four(self, data):
        writes.append(1)
        if len(writes) > 4:  # a few files written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(files._Handle, "write", full_after_four)
    with pytest.raises(files.WriteError, match=r"/[^ ]+\.(csv|png|md): could not be written \(no space left on device\)"):
        plot(root, root)
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*")
             if p.is_file() and p.parts[len(root.parts)] in ("figures", "tables", "report.md")}
    assert after == before
    assert not list(root.glob(".plot_results.tmp-*"))
