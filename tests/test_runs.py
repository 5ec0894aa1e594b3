"""kit.runs: what identifies a run (its fingerprint), resuming only the very same run, and the run
folder's records. Runs survive being killed and bad input never loses work: a run killed with
SIGKILL in the middle of an epoch and started again ends with the weights and metrics.csv of a run
never interrupted; a checkpoint of another run (any non-runtime argument changed) is refused.
"""
import argparse
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    ROOT,
    assert_same_weights,
    checkpoint_weights,
    colour_folder,
    finetune_argv,
    prepare_colour,
    read_metrics,
    run_finetune,
    run_main,
    script_error,
    start_script,
    train_argv,
    two_colour_manifest,
    wait_for,
)

import finetune_target
from kit import checkpoints, identity, runs

# --------------------------------------------------------------------------- resume, end to end

@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    manifest = two_colour_manifest(tmp_path, n=20)
    command = [sys.executable, str(ROOT / "finetune_target.py")]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run([*command, *finetune_argv(manifest, reference, workers=1)], check=True, capture_output=True, cwd=ROOT)

    # Start the same run and kill it as soon as epoch 1 is on disk: it is then inside epoch 2.
    process = subprocess.Popen([*command, *finetune_argv(manifest, killed, workers=1)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "last.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    interrupted_at = checkpoints.load_checkpoint(killed / "last.pt")["epoch"]
    assert interrupted_at < 3 and not (killed / "summary.json").exists()
    # metrics.csv follows last.pt, so a kill between the two leaves it one epoch behind (or not yet written),
    # never ahead
    logged = read_metrics(killed)["epoch"].max() if (killed / "metrics.csv").exists() else 0
    assert logged in (interrupted_at - 1, interrupted_at)

    resumed = subprocess.run([*command, *finetune_argv(manifest, killed, workers=1)], check=True, capture_output=True,
                             text=True, cwd=ROOT)
    assert f"resuming after epoch {interrupted_at}" in resumed.stdout
    pd.testing.assert_frame_equal(read_metrics(killed), read_metrics(reference))  # no duplicate rows, same numbers
    assert_same_weights(checkpoint_weights(killed / "last.pt"), checkpoint_weights(reference / "last.pt"))
    assert_same_weights(checkpoint_weights(killed / "best.pt"), checkpoint_weights(reference / "best.pt"))


@pytest.mark.slow
def test_a_finished_run_is_not_redone_and_a_different_run_is_refused(tmp_path, capsys):
    manifest = two_colour_manifest(tmp_path)
    out = tmp_path / "run"
    run_finetune(finetune_argv(manifest, out, epochs=1))
    before = (out / "last.pt").read_bytes()
    run_finetune(finetune_argv(manifest, out, epochs=1))  # complete: nothing trained again, nothing duplicated
    assert (out / "last.pt").read_bytes() == before and len(read_metrics(out)) == 2

    with pytest.raises(SystemExit) as info:  # same folder, other hyperparameters
        run_finetune(finetune_argv(manifest, out, "--lr", "3e-4", epochs=1))
    message = str(info.value)
    assert "different run" in message and "lr 0.0001 -> 0.0003" in message and "--no-resume" in message
    assert (out / "last.pt").read_bytes() == before  # refused before anything was written

    run_finetune(finetune_argv(manifest, out, "--lr", "3e-4", "--no-resume", epochs=1))
    assert checkpoints.load_checkpoint(out / "last.pt")["resume"]["lr"] == 3e-4


def test_a_checkpoint_of_another_kind_in_out_is_one_clear_line(tmp_path):
    manifest = two_colour_manifest(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"last.pt: not a readable PyTorch checkpoint .*\); --no-resume starts over in"):
        run_finetune(finetune_argv(manifest, out, epochs=1))
    torch.save({"model": {}, "meta": {}}, out / "last.pt")
    with pytest.raises(SystemExit, match="holds no resume information"):
        run_finetune(finetune_argv(manifest, out, epochs=1))


def test_a_deleted_best_pt_is_written_again_or_the_run_says_it_is_gone(tmp_path):
    import evaluate
    manifest = two_colour_manifest(tmp_path)
    out = tmp_path / "run"
    run_finetune(finetune_argv(manifest, out, epochs=2))
    last = checkpoints.load_checkpoint(out / "last.pt")
    # last.pt is the best epoch's model: the rerun writes best.pt again from it
    checkpoints.save_checkpoint({**last, "best_epoch": 2}, out / "last.pt")
    (out / "best.pt").unlink()
    run_finetune(finetune_argv(manifest, out, epochs=2))
    assert checkpoints.load_checkpoint(out / "best.pt")["epoch"] == 2
    # the best epoch was an earlier one: its model is gone, and the rerun says so instead of finishing without it
    checkpoints.save_checkpoint({**last, "best_epoch": 1}, out / "last.pt")
    (out / "best.pt").unlink()
    with pytest.raises(SystemExit, match=r"best.pt is missing, .* epoch \(1\) .* \(2\): its model is gone. Pass "
                                         r"--no-resume"):
        run_finetune(finetune_argv(manifest, out, epochs=2))
    with pytest.raises(ValueError, match=r"best.pt: no such file \(its run folder holds last.pt: train the run again "
                                         r"with --no-resume, or evaluate last.pt\)"):
        evaluate.main(evaluate.get_args_parser().parse_args(["--checkpoint", str(out / "best.pt"), "--manifest",
                                                             str(manifest), "--out", str(tmp_path / "eval")]))
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_a_failed_checkpoint_save_keeps_the_last_good_one_then_resumes(tmp_path, monkeypatch):
    manifest = two_colour_manifest(tmp_path)
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save_then_fail_in_epoch_2(obj, f, *args, **kwargs):
        calls.append(obj["epoch"])
        if obj["epoch"] == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError("No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fail_in_epoch_2)
    with pytest.raises(OSError, match="No space left"):
        run_finetune(finetune_argv(manifest, out))
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(out / "last.pt")["epoch"] == 1
    assert read_metrics(out)["epoch"].max() == 1 and not list(out.glob("*.tmp"))
    run_finetune(finetune_argv(manifest, out))
    assert checkpoints.load_checkpoint(out / "last.pt")["epoch"] == 3 and len(read_metrics(out)) == 6


@pytest.mark.slow
def test_any_changed_setting_outside_runtime_args_is_refused(tmp_path):
    """A setting the old RESUME_SETTINGS list did not know (--warmup-epochs, --dropout), or other data
    under the same manifest path, is refused; runtime flags may change."""
    manifest = two_colour_manifest(tmp_path)
    out = tmp_path / "run"
    run_finetune(finetune_argv(manifest, out, epochs=1))
    before = (out / "last.pt").read_bytes()
    for extra, change in ((["--warmup-epochs", "1"], "warmup_epochs 0 -> 1"),
                          (["--dropout", "0.3"], "dropout 0.5 -> 0.3"),
                          (["--train-fraction", "0.5"], "train_fraction 1.0 -> 0.5")):
        with pytest.raises(SystemExit) as info:
            run_finetune(finetune_argv(manifest, out, *extra, epochs=1))
        message = str(info.value)
        assert message.startswith(f"{out} holds the checkpoint of a different run (") and "--no-resume" in message
        assert change in message and "lr " not in message, message  # the changed setting, only it
    # runtime flags are not part of the run: the finished run is found complete, nothing retrained
    run_finetune(finetune_argv(manifest, out, "--log-every", "5", "--no-channels-last", epochs=1, workers=1))
    assert (out / "last.pt").read_bytes() == before and len(read_metrics(out)) == 2

    sidecar = manifest.with_suffix(".json")  # the same manifest path, other classes: other data
    sidecar.write_text(sidecar.read_text().replace('"blue"', '"cyan"'))
    with pytest.raises(SystemExit) as info:
        run_finetune(finetune_argv(manifest, out, epochs=1))
    message = str(info.value)
    assert "data: classes ['blue', 'red'] -> ['cyan', 'red']" in message, message
    assert (out / "last.pt").read_bytes() == before


# --------------------------------------------------------------------------- the fingerprint, resume_checkpoint, records

DATA = {"key": "tiny", "domain": "hwsi", "task": "multiclass", "classes": ["blue", "red"]}
ROWS = pd.DataFrame({"image": [f"/x/{i}.png" for i in range(6)], "label": [0, 1, 0, 1, 0, 1],
                     "patient": [f"p{i}" for i in range(6)], "split": ["train"] * 3 + ["val"] * 2 + ["test"]})


def _finetune_args(tmp_path, *extra):
    (tmp_path / "m.csv").write_text("image,label,patient,split\n")
    return finetune_target.get_args_parser().parse_args(
        ["--manifest", str(tmp_path / "m.csv"), "--init", "random", "--out", str(tmp_path / "run"), *extra])


def test_fingerprint_is_every_argument_but_the_runtime_ones(tmp_path):
    args = _finetune_args(tmp_path)
    fingerprint = runs.fingerprint(vars(args), DATA, ROWS, world_size=1)
    # every argument but the runtime ones; the manifest by its content (data), not its path
    assert set(fingerprint) == (set(vars(args)) - runs.RUNTIME_ARGS - runs.DATA_ARGS) | {"data", "world_size"}
    assert {"warmup_epochs", "dropout", "hidden_dim", "train_fraction", "skip_bad", "sync_bn", "strategy",
            "init"} <= set(fingerprint)
    assert fingerprint["data"] == {"key": "tiny", "task": "multiclass", "classes": ["blue", "red"],
                                   "rows": identity.rows_hash(ROWS[ROWS["split"] != "test"]), "train": 3, "val": 2}
    assert runs.RUNTIME_ARGS == {"out", "resume", "restart_if_changed", "device", "workers", "amp", "channels_last",
                                 "compile", "log_every", "imagenet_weights"}


def test_a_new_argument_is_in_the_fingerprint_without_touching_runs(tmp_path):
    args = _finetune_args(tmp_path)
    fingerprint = runs.fingerprint(vars(args), DATA, ROWS, world_size=1)
    # a hyperparameter added to a script tomorrow: a parser with one more argument ...
    parser = finetune_target.get_args_parser()
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    extended = parser.parse_args(["--manifest", str(tmp_path / "m.csv"), "--init", "random", "--out",
                                  str(tmp_path / "run")])
    assert runs.fingerprint(vars(extended), DATA, ROWS, world_size=1) == {**fingerprint, "label_smoothing": 0.0}
    smoothed = runs.fingerprint({**vars(extended), "label_smoothing": 0.1}, DATA, ROWS,
                               world_size=1)
    assert smoothed != runs.fingerprint(vars(extended), DATA, ROWS, world_size=1) and smoothed["label_smoothing"] == 0.1
    # ... while the runtime flags, the number of processes aside, never change it
    for name, value in (("device", "cuda:3"), ("workers", 7), ("log_every", 1), ("amp", False), ("compile", True),
                        ("channels_last", False), ("out", "elsewhere"), ("resume", False),
                        ("restart_if_changed", True), ("imagenet_weights", "/w.pth")):
        changed = argparse.Namespace(**{**vars(args), name: value})
        assert runs.fingerprint(vars(changed), DATA, ROWS, world_size=1) == fingerprint, name
    for name, value in (("lr", 3e-4), ("warmup_epochs", 1), ("seed", 1), ("batch_size", 8)):
        changed = argparse.Namespace(**{**vars(args), name: value})
        assert runs.fingerprint(vars(changed), DATA, ROWS, world_size=1) != fingerprint, name
    assert runs.fingerprint(vars(args), DATA, ROWS, world_size=2) != fingerprint
    assert runs.fingerprint(vars(args), {**DATA, "classes": ["blue", "cyan"]}, ROWS, world_size=1) != fingerprint
    # the data by content: another split of the rows changes it, the manifest's path does not
    resplit = ROWS.assign(split=["train"] * 2 + ["val"] * 3 + ["test"])
    assert runs.fingerprint(vars(args), DATA, resplit, world_size=1)["data"] != fingerprint["data"]
    moved = argparse.Namespace(**{**vars(args), "manifest": "/elsewhere/m.csv"})
    assert runs.fingerprint(vars(moved), DATA, ROWS, world_size=1) == fingerprint


def test_resume_checkpoint_refuses_another_run_with_one_line(tmp_path, capsys):
    args = _finetune_args(tmp_path)
    fingerprint = runs.fingerprint(vars(args), DATA, ROWS, world_size=1)
    out = tmp_path / "run"
    assert runs.resume_checkpoint(out, fingerprint, resume=True) is None  # nothing there: a fresh start
    out.mkdir()
    checkpoints.save_checkpoint({"model": {}, "epoch": 1, "best_epoch": 1, "resume": fingerprint}, out / "last.pt")
    assert runs.resume_checkpoint(out, fingerprint, resume=True)["epoch"] == 1
    other = {**fingerprint, "lr": 3e-4, "world_size": 2, "data": {**fingerprint["data"], "classes": ["a", "b"]}}
    with pytest.raises(SystemExit) as info:
        runs.resume_checkpoint(out, other, resume=True)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{out} holds the checkpoint of a different run (")
    for change in ("lr 0.0001 -> 0.0003", "world_size 1 -> 2", "data: classes ['blue', 'red'] -> ['a', 'b']"):
        assert change in message, change
    assert "choose another --out, or pass --no-resume" in message
    assert runs.resume_checkpoint(out, other, resume=False) is None
    assert "--no-resume: starting over" in capsys.readouterr().out


def test_run_meta_summary_and_plain_values(tmp_path):
    (tmp_path / "CXR_RI").mkdir()
    (tmp_path / "CXR_RI" / "last.pt").write_bytes(b"")
    args = _finetune_args(tmp_path, "--init", str(tmp_path / "CXR_RI" / "last.pt"), "--image-size", "64")
    run = runs.Run(tmp_path / "run", {}, None, {}, {"rows": "abc", "manifest_rows": "def"}, vars(args))
    meta = runs.run_meta({**DATA, "headline_metric": "accuracy", "class_weights": "none"}, run, init=args.init,
                         init_description="backbone of CXR_RI", hidden_dim=args.hidden_dim, dropout=args.dropout,
                         image_size=args.image_size, manifests=[args.manifest], loss_weights=[1.0, 2.0],
                         skipped_images=3)
    assert meta["data"] == {"rows": "abc", "manifest_rows": "def"}
    assert (meta["num_outputs"], meta["image_size"], meta["hidden_dim"], meta["dropout"]) == (2, 64, 512, 0.5)
    assert meta["source_checkpoint"] == str(tmp_path / "CXR_RI" / "last.pt")
    assert meta["manifests"] == [str(tmp_path / "m.csv")] and meta["domains"] == {"tiny": "hwsi"}
    assert (meta["loss_weights"], meta["skipped_images"]) == ([1.0, 2.0], 3)
    checkpoints.save_checkpoint({"model": {}, "meta": meta}, tmp_path / "c.pt")  # plain values only
    row = runs.plain({"epoch": 1, "accuracy": np.float64(0.5), "n": np.int64(3)})
    assert row == {"epoch": 1, "accuracy": 0.5, "n": 3} and type(row["accuracy"]) is float and type(row["n"]) is int
    summary = runs.summary([row], epochs=2, best_epoch=1, best_score=float("-inf"), headline="accuracy",
                           seconds=1.234, meta=meta)
    assert summary["best_val_score"] is None and summary["skipped_images"] == 3 and summary["seconds"] == 1.23


@pytest.mark.slow
def test_resume_after_the_manifest_was_re_split_is_refused(tmp_path, capsys):
    data = colour_folder(tmp_path / "data", n=20)
    manifest = prepare_colour(data, tmp_path / "m")
    run_main(*train_argv(manifest, tmp_path / "run"))
    prepare_colour(data, tmp_path / "m", "--seed", "3", "--val-frac", "0.4")
    capsys.readouterr()
    line = script_error(*train_argv(manifest, tmp_path / "run"))
    assert "data: the manifest's train/val rows changed (train 22 -> 16, val 10 -> 16 images" in line, line
    assert line.count(" -> ") == 3, line  # the data (train, val, content) and nothing else changed
    assert "resuming" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_second_training_run_into_a_busy_folder_is_refused(tmp_path):
    manifest = prepare_colour(colour_folder(tmp_path / "data", n=20), tmp_path / "m")
    out = tmp_path / "run"
    first = start_script(*train_argv(manifest, out, epochs=3), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    wait_for(lambda: (out / ".lock").exists() and (out / ".lock").read_text(), seconds=60)
    line = script_error(*train_argv(manifest, out, "--lr", "3e-4"))  # the second, in this process
    first_rc = first.wait()
    assert f"pid {first.pid}" in line and "in use by" in line and "\n" not in line, line
    assert first_rc == 0, first.stderr.read()
    # the folder is the first run's alone: 3 epochs, the first run's lr
    saved = json.loads((out / "args.json").read_text())["args"]
    assert saved["lr"] == 1e-4 and len(pd.read_csv(out / "metrics.csv")) == 6
    # a killed holder leaves no stale lock
    killed = start_script(*train_argv(manifest, tmp_path / "run2", epochs=3), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    wait_for(lambda: (tmp_path / "run2" / ".lock").exists() and (tmp_path / "run2" / ".lock").read_text())
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    run_finetune(map(str, train_argv(manifest, tmp_path / "run2")[1:]))  # in this process: starts, finishes
    assert (tmp_path / "run2" / "summary.json").is_file()


def test_an_init_checkpoint_counts_by_its_content(tmp_path):
    """A pretraining done again is another start (the run restarts with --restart-if-changed); the same file
    moved elsewhere is the same start."""
    first = tmp_path / "a" / "last.pt"
    first.parent.mkdir()
    first.write_bytes(b"weights one")
    args = argparse.Namespace(**{**vars(_finetune_args(tmp_path)), "init": str(first)})
    before = runs.fingerprint(vars(args), DATA, ROWS, world_size=1)
    moved = tmp_path / "b" / "last.pt"
    moved.parent.mkdir()
    moved.write_bytes(b"weights one")
    assert runs.fingerprint({**vars(args), "init": str(moved)}, DATA, ROWS, world_size=1) == before
    first.write_bytes(b"weights two")
    after = runs.fingerprint(vars(args), DATA, ROWS, world_size=1)
    assert after["init"] != before["init"] and after["init"].startswith("checkpoint sha256:")
