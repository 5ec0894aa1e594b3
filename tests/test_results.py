"""kit.results: reading a study's files: runs found under finetune/ with their seed and train fraction,
curves (a resumed run's repeated epoch: the last row wins), evaluations matched to runs, predictions,
split sizes; errors name the file."""
import json
from pathlib import PurePath

import pandas as pd
import pytest
from helpers import plot, write_metrics

from kit import results


def test_resumed_run_last_row_wins(tmp_path):
    frame = write_metrics(tmp_path / "finetune" / "shenzhen" / "IN" / "metrics.csv", seed=1)
    again = frame[frame["epoch"] == 3].assign(accuracy=[0.5, 0.25])  # epoch 3 logged twice after a resume
    pd.concat([frame, again]).to_csv(tmp_path / "finetune" / "shenzhen" / "IN" / "metrics.csv", index=False)
    plot(tmp_path, tmp_path, "--no-loss-plots")
    row = pd.read_csv(tmp_path / "tables" / "table2.csv").iloc[0]
    assert (row["arm"], row["train"], row["val"], row["epoch"]) == ("IN", 50.0, 25.0, 3)


def test_discover_runs_seed_fraction_and_order(tmp_path):
    for rel in ("messidor/All_RI/seed0", "shenzhen/zz_custom/seed0", "shenzhen/IN/frac0.25_seed2", "shenzhen/IN/seed1",
                "my_set/IN/seed0"):
        write_metrics(tmp_path / "finetune" / rel / "metrics.csv", seed=0)
    (tmp_path / "finetune" / "shenzhen" / "IN" / "seed1" / "args.json").write_text(
        json.dumps({"args": {"seed": 7, "train_fraction": 0.5}}))  # args.json wins over the folder name
    found = [(r["target"], r["arm"], r["seed"], r["fraction"]) for r in results.discover_runs(tmp_path)]
    assert found == [("shenzhen", "IN", 2, 0.25), ("shenzhen", "IN", 7, 0.5), ("shenzhen", "zz_custom", 0, 1.0),
                     ("messidor", "All_RI", 0, 1.0), ("my_set", "IN", 0, 1.0)]
    with pytest.raises(ValueError, match="run finetune_target.py first"):
        results.discover_runs(tmp_path / "empty")


def test_headline_metric(tmp_path):
    assert results.headline_metric("messidor", []) == "kappa" and results.headline_metric("shenzhen", []) == "accuracy"
    (tmp_path / "args.json").write_text(json.dumps({"meta": {"headline_metric": "auroc"}}))
    assert results.headline_metric("my_set", [tmp_path]) == "auroc"
    assert results.headline_metric("other", []) == "accuracy"
    (tmp_path / "args.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"args\.json: not a readable JSON file"):
        results.headline_metric("my_set", [tmp_path])


def test_read_curves_and_last_epoch_row(tmp_path):
    frame = write_metrics(tmp_path / "metrics.csv", seed=3)
    pd.concat([frame, frame[frame["epoch"] == 3].assign(accuracy=[0.5, 0.25])]).to_csv(tmp_path / "metrics.csv",
                                                                                      index=False)
    curves = results.read_curves(tmp_path / "metrics.csv", "accuracy")
    assert list(curves.columns) == ["epoch", "split", "value", "loss"] and len(curves) == 6
    assert results.last_epoch_row(curves) == (3, 0.5, 0.25)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['map'\].*pick another with --metric"):
        results.read_curves(tmp_path / "metrics.csv", "map")


def test_eval_run_key():
    assert results.eval_run_key("/old/OUT/finetune/shenzhen/IN/seed0/best.pt", None) == ("shenzhen/IN/seed0", "best")
    assert results.eval_run_key("finetune/shenzhen/IN/last.pt", None) == ("shenzhen/IN", "last")
    assert results.eval_run_key("", PurePath("shenzhen/IN/seed0/last")) == ("shenzhen/IN/seed0", "last")
    assert results.eval_run_key("x.pt", PurePath("shenzhen/IN")) == ("shenzhen/IN", "best")


def test_read_predictions_and_split_sizes(tmp_path):
    path = tmp_path / "predictions.csv"
    pd.DataFrame({"image": ["b.png", "a.png"], "patient": ["1", "2"], "target": ["x", "y"],
                  "prob_x": [0.9, 0.2], "prob_y": [0.1, 0.8]}).to_csv(path, index=False)
    frame, probs, targets, classes = results.read_predictions(path)
    assert frame["image"].tolist() == ["a.png", "b.png"] and classes == ["x", "y"]
    assert targets.tolist() == [1, 0] and probs.tolist() == [[0.2, 0.8], [0.9, 0.1]]
    pd.DataFrame({"image": ["a"], "patient": ["1"], "target": ["x|y"], "prob_x": [1.0], "prob_y": [1.0]}).to_csv(
        path, index=False)
    with pytest.raises(ValueError, match="not among the prob_ columns"):
        results.read_predictions(path)
    assert results.split_sizes(tmp_path, "shenzhen") is None
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "shenzhen.json").write_text(json.dumps({"counts": {"train": {"a": 2, "b": 3}}}))
    assert results.split_sizes(tmp_path, "shenzhen") == {"train": 5, "val": 0, "test": 0}
