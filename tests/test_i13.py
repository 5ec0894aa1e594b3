"""Scratch: issue 13 tests, to be distributed into the per-module files."""
import builtins
import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def colour_folder(root, n=16, size=(40, 48), seed=0):
    """A `folder` dataset of two learnable colours: <root>/<class>/<image>.png."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("blue", "red")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            colour = np.array([60, 60, 200]) if c == 0 else np.array([200, 60, 60])
            pixels = np.clip(colour + rng.normal(0, 40, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


def run(argv, cwd=ROOT, **kw):
    return subprocess.run([PY, *map(str, argv)], cwd=cwd, capture_output=True, text=True, **kw)


def prepare(data, out, *extra, name="tiny"):
    result = run(["prepare_data.py", "--dataset", "folder", "--root", data, "--name", name, "--domain", "hwsi",
                  "--out", out, "--val-frac", "0.25", "--test-frac", "0.2", *extra])
    assert result.returncode == 0, result.stderr
    return Path(out) / f"{name}.csv"


def train_argv(manifest, out, *extra, epochs=1):
    return ["finetune_target.py", "--manifest", manifest, "--init", "random", "--out", out, "--image-size", "32",
            "--epochs", str(epochs), "--batch-size", "4", "--workers", "0", "--device", "cpu", "--hidden-dim", "16",
            *extra]


def one_line(result):
    """The command failed with one line on stderr and no traceback."""
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[-1]


# --------------------------------------------------------------------------- 1. runs bound to their data

@pytest.mark.slow
def test_resume_after_the_manifest_was_re_split_is_refused(tmp_path):
    data = colour_folder(tmp_path / "data", n=20)
    manifest = prepare(data, tmp_path / "m")
    assert run(train_argv(manifest, tmp_path / "run")).returncode == 0
    prepare(data, tmp_path / "m", "--seed", "3", "--val-frac", "0.4")
    result = run(train_argv(manifest, tmp_path / "run"))
    line = one_line(result)
    assert "data: the manifest's train/val rows changed (train 22 -> 16, val 10 -> 16 images" in line, line
    assert line.count(" -> ") == 3, line  # the data (train, val, content) and nothing else changed
    assert "resuming" not in result.stdout


@pytest.mark.slow
def test_evaluate_refuses_test_rows_it_was_trained_on_and_notes_a_disjoint_manifest(tmp_path):
    data = colour_folder(tmp_path / "data", n=20)
    manifest = prepare(data, tmp_path / "m")
    assert run(train_argv(manifest, tmp_path / "run")).returncode == 0
    checkpoint = tmp_path / "run" / "best.pt"
    evaluate = ["evaluate.py", "--checkpoint", checkpoint, "--bootstrap", "10", "--workers", "0", "--device", "cpu"]
    # the same data split again with another seed: its test split holds images the model trained on
    other = prepare(data, tmp_path / "m2", "--seed", "5")
    line = one_line(run([*evaluate, "--manifest", other, "--out", tmp_path / "e1"]))
    assert "were used to train or select" in line and "test images" in line
    assert not (tmp_path / "e1").exists()
    # a manifest of other images (another folder) with the same classes: allowed, with a note
    external = prepare(colour_folder(tmp_path / "external", n=6, seed=9), tmp_path / "m3", name="external")
    result = run([*evaluate, "--manifest", external, "--out", tmp_path / "e2"])
    assert result.returncode == 0, result.stderr
    assert "is not the manifest" in result.stdout and "shares no image and no patient" in result.stdout
    # its own manifest: no note
    result = run([*evaluate, "--manifest", manifest, "--out", tmp_path / "e3"])
    assert result.returncode == 0 and "note:" not in result.stdout


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


# --------------------------------------------------------------------------- 2. one writer per folder

@pytest.mark.slow
def test_a_second_training_run_into_a_busy_folder_is_refused(tmp_path):
    manifest = prepare(colour_folder(tmp_path / "data", n=20), tmp_path / "m")
    out = tmp_path / "run"
    first = subprocess.Popen([PY, *map(str, train_argv(manifest, out, epochs=3))], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ((out / ".lock").exists() and (out / ".lock").read_text()) and time.time() < deadline:
        time.sleep(0.05)
    second = run(train_argv(manifest, out, "--lr", "3e-4"))
    first_rc = first.wait()
    line = one_line(second)
    assert f"pid {first.pid}" in line and "in use by" in line, line
    assert first_rc == 0, first.stderr.read()
    # the folder is the first run's alone: 3 epochs, the first run's lr
    saved = json.loads((out / "args.json").read_text())["args"]
    assert saved["lr"] == 1e-4 and len(pd.read_csv(out / "metrics.csv")) == 6
    # a killed holder leaves no stale lock
    killed = subprocess.Popen([PY, *map(str, train_argv(manifest, tmp_path / "run2", epochs=3))], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (tmp_path / "run2" / ".lock").exists() or not (tmp_path / "run2" / ".lock").read_text():
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert run(train_argv(manifest, tmp_path / "run2")).returncode == 0


def _held(path):
    handle = open(path, "a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write("pid 4242 on testhost since now\n")
    handle.flush()
    return handle


def test_prepare_data_evaluate_and_study_refuse_a_folder_in_use(tmp_path):
    data = colour_folder(tmp_path / "data", n=4)
    (tmp_path / "m").mkdir()
    with _held(tmp_path / "m" / ".tiny.lock"):
        result = run(["prepare_data.py", "--dataset", "folder", "--root", data, "--name", "tiny", "--domain", "hwsi",
                      "--out", tmp_path / "m"])
        assert "pid 4242 on testhost" in one_line(result)
        assert not (tmp_path / "m" / "tiny.csv").exists()
    (tmp_path / "ckpt.pt").write_bytes(b"")
    with _held(tmp_path / ".e.lock"):
        result = run(["evaluate.py", "--checkpoint", tmp_path / "ckpt.pt", "--manifest", tmp_path / "none.csv",
                      "--out", tmp_path / "e"])
        assert "pid 4242 on testhost" in one_line(result)
    (tmp_path / "study").mkdir()
    with _held(tmp_path / "study" / ".study.lock"):
        result = subprocess.run(["bash", str(ROOT / "study.sh")], env={**os.environ, "OUT": str(tmp_path / "study")},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "pid 4242 on testhost" in result.stderr
        assert not (tmp_path / "study" / "demo_data").exists()


# --------------------------------------------------------------------------- 3. evaluation folders whole or absent

@pytest.mark.slow
def test_an_evaluation_killed_between_files_leaves_the_previous_folder_whole(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    import evaluate

    manifest = prepare(colour_folder(tmp_path / "data", n=12), tmp_path / "m")
    assert run(train_argv(manifest, tmp_path / "run")).returncode == 0
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


# --------------------------------------------------------------------------- 4./5. readers: repeats, empty tables, empty splits

def _eyepacs(root, rows):
    (root / "train").mkdir(parents=True)
    for name in {r.split(",")[0] for r in rows}:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / "train" / f"{name}.jpeg")
    (root / "trainLabels.csv").write_text("image,level\n" + "\n".join(rows) + "\n")


def test_eyepacs_identical_repeats_dropped_contradictions_refused(tmp_path):
    from kit import readers
    _eyepacs(tmp_path / "ep", ["646_left,1", "646_right,0", "10_left,0", "10_right,2", "10_left,0", "646_left,4"])
    with pytest.raises(ValueError) as err:
        readers.read_dataset("eyepacs", tmp_path / "ep")
    assert "646_left" in str(err.value) and "grade_1 here" in str(err.value) and "grade_4 at" in str(err.value)
    df, _ = readers.read_dataset("eyepacs", tmp_path / "ep", skip_bad=True)
    assert df.attrs["duplicates_dropped"] == 1
    assert len(df) == 5 and (df["problem"] != "").sum() == 2


def test_prepare_data_prints_dropped_repeats_and_lists_contradictions(tmp_path):
    _eyepacs(tmp_path / "ep", ["1_left,0", "1_right,0", "2_left,1", "2_right,1", "3_left,2", "3_right,2",
                               "4_left,0", "4_right,0", "5_left,1", "5_right,0", "6_left,0", "6_right,3",
                               "7_left,4", "7_right,4", "8_left,0", "8_right,0", "2_left,1", "5_right,2"])
    result = run(["prepare_data.py", "--dataset", "eyepacs", "--root", tmp_path / "ep", "--out", tmp_path / "m",
                  "--skip-bad", "--val-frac", "0.2", "--test-frac", "0.2", "--protocol", "held-out-test"])
    assert result.returncode == 0, result.stderr
    assert "dropped 1 row(s) that repeat an image" in result.stdout
    skipped = pd.read_csv(tmp_path / "m" / "eyepacs_skipped.csv")
    assert sorted(Path(p).stem for p in skipped["image"]) == ["5_right", "5_right"]


@pytest.mark.parametrize("dataset,write", [
    ("eyepacs", lambda r: ((r / "train").mkdir(parents=True), (r / "trainLabels.csv").write_text("image,level\n"))),
    ("chestxray14", lambda r: ((r / "images").mkdir(parents=True), (r / "Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"))),
])
def test_a_header_only_label_table_is_an_error(tmp_path, dataset, write):
    write(tmp_path / dataset)
    result = run(["prepare_data.py", "--dataset", dataset, "--root", tmp_path / dataset, "--out", tmp_path / "m"])
    line = one_line(result)
    assert str(tmp_path / dataset) in line
    assert not (tmp_path / "m" / f"{dataset}.csv").exists()


def test_an_empty_split_is_an_error_at_prepare_time(tmp_path):
    data = colour_folder(tmp_path / "data", n=3)
    result = run(["prepare_data.py", "--dataset", "folder", "--root", data, "--name", "tiny", "--domain", "hwsi",
                  "--out", tmp_path / "m", "--val-frac", "0"])
    line = one_line(result)
    assert "val split would hold 0 image(s)" in line and str(data) in line
    assert not (tmp_path / "m" / "tiny.csv").exists()


# --------------------------------------------------------------------------- 6. hand-edited manifests

def test_load_manifest_refuses_an_image_or_patient_in_two_splits(tmp_path):
    from kit import manifests
    manifest = prepare(colour_folder(tmp_path / "data", n=8), tmp_path / "m")
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


# --------------------------------------------------------------------------- 7. tiny and constant images

@pytest.mark.parametrize("pixels,words", [
    (np.full((1, 1, 3), 128, np.uint8), "1x1 px"),
    (np.full((4, 30, 3), 128, np.uint8), "4x30 px"),
    (np.full((40, 40, 3), 77, np.uint8), "every pixel has the same value"),
])
@pytest.mark.parametrize("domain", ["cxr", "hwsi", "efi"])
def test_tiny_and_constant_images_are_refused(tmp_path, pixels, words, domain):
    import transforms
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    with pytest.raises(ValueError, match=words):
        transforms.eval_transforms(domain, image_size=32)({"image": str(path)})


# --------------------------------------------------------------------------- 8./9. study.sh: FORCE and the settings remedy

def _study(out, **settings):
    env = {**os.environ, "OUT": str(out), "IMAGE_SIZE": "32", "EPOCHS_PRETRAIN": "1", "EPOCHS_FINETUNE": "1",
           "BATCH_SIZE": "16", "DEMO_SCALE": "0.3", "WORKERS": "0", "DEVICE": "cpu", "TARGETS": "shenzhen",
           "TORCH_HOME": str(out.parent / "no_torch_home"), **settings}
    env.pop("DATA", None)
    env.pop("IMAGENET_WEIGHTS", None)
    return subprocess.run(["bash", str(ROOT / "study.sh")], env=env, capture_output=True, text=True, timeout=1800)


def _wait_until_free(lock_path, seconds=60):
    deadline = time.time() + seconds
    with open(lock_path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                assert time.time() < deadline, "the killed study still holds its lock"
                time.sleep(0.1)


def _image_sizes(out):
    return {str(p.parent.relative_to(out)): json.loads(p.read_text())["meta"]["image_size"]
            for p in out.glob("*/**/args.json")}


@pytest.mark.slow
def test_study_force_and_changed_settings_redo_everything_and_a_plain_run_continues(tmp_path):
    out = tmp_path / "out"
    first = _study(out)
    assert first.returncode == 0, first.stderr[-3000:]
    assert set(_image_sizes(out).values()) == {32}
    refused = _study(out, IMAGE_SIZE="48")
    assert refused.returncode == 2 and "FORCE=1" in refused.stderr
    # the remedy the message names, interrupted after its first pretraining ...
    env = {"IMAGE_SIZE": "48", "FORCE": "1"}
    process = subprocess.Popen(["bash", str(ROOT / "study.sh")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OUT": str(out), "EPOCHS_PRETRAIN": "1", "EPOCHS_FINETUNE": "1",
                                    "BATCH_SIZE": "16", "DEMO_SCALE": "0.3", "WORKERS": "0", "DEVICE": "cpu",
                                    "TARGETS": "shenzhen", "TORCH_HOME": str(tmp_path / "no_torch_home"), **env},
                               start_new_session=True)
    summary = out / "pretrain" / "CXR_RI" / "seed0" / "summary.json"
    deadline = time.time() + 900
    while time.time() < deadline and process.poll() is None:
        if summary.exists() and json.loads((summary.parent / "args.json").read_text())["meta"]["image_size"] == 48:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _wait_until_free(out / ".study.lock")  # the killed stages' processes end a moment after the script
    # ... then continued by the plain command with the new settings: every run ends at 48 px, none resumed a 32 px one
    resumed = _study(out, IMAGE_SIZE="48")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "holds the checkpoint of a different run" not in resumed.stderr
    assert set(_image_sizes(out).values()) == {48}, _image_sizes(out)
    again = _study(out, IMAGE_SIZE="48")
    assert again.returncode == 0 and "pretrain CXR_RI seed 0: done, skipped" in again.stdout
    # FORCE=1 retrains (never "resuming after epoch 1") and a plain run afterwards skips
    forced = _study(out, IMAGE_SIZE="48", FORCE="1")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "resuming after" not in forced.stdout and "done, skipped" not in forced.stdout


# --------------------------------------------------------------------------- 10. pickled payloads

class Payload:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker):
    touch = f"touch {marker}"
    return {"os.system": Payload(os.system, touch),
            "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
            "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w')"),
            "eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
            "nested __reduce__": {"model": {"a": [1, {"b": Payload(os.system, touch)}]}}}


@pytest.mark.slow
def test_pickled_payloads_are_refused_on_every_loading_path(tmp_path):
    manifest = prepare(colour_folder(tmp_path / "data", n=8), tmp_path / "m")
    marker = tmp_path / "PWNED"
    for name, payload in _payloads(marker).items():
        evil = tmp_path / f"evil_{name.split()[0]}.pt"
        torch.save({"model": {}, "meta": {}, "x": payload}, evil)
        outs = tmp_path / f"o_{name.split()[0]}"
        outs.mkdir()
        (outs / "resume").mkdir()
        torch.save({"model": {}, "resume": payload}, outs / "resume" / "last.pt")
        commands = {
            "--init": train_argv(manifest, outs / "init", "--init", evil),
            "resume": train_argv(manifest, outs / "resume"),
            "evaluate": ["evaluate.py", "--checkpoint", evil, "--manifest", manifest, "--out", outs / "eval"],
            "--imagenet-weights": [*train_argv(manifest, outs / "in"), "--init", "imagenet", "--imagenet-weights", evil],
        }
        for path, argv in commands.items():
            line = one_line(run(argv))
            assert "contains Python objects that could run code" in line and "refused" in line, (name, path, line)
            assert "weights_only" not in line, line
        assert not marker.exists(), name
    sys.path.insert(0, str(ROOT))
    from kit import models
    with pytest.raises(ValueError, match="could run code"):
        models.model_from_checkpoint(evil)
    assert not marker.exists()


# --------------------------------------------------------------------------- 11. one honest line

@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    manifest = prepare(colour_folder(tmp_path / "data", n=12), tmp_path / "m")
    out = tmp_path / "run"
    assert run(train_argv(manifest, out)).returncode == 0
    size = (out / "last.pt").stat().st_size
    before = (out / "last.pt").read_bytes()

    def limit_file_size():  # writes past the limit fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    result = subprocess.run([PY, *map(str, train_argv(manifest, out, "--no-resume"))], cwd=ROOT,
                            capture_output=True, text=True, preexec_fn=limit_file_size)
    line = one_line(result)
    assert "last.pt" in line and "could not be written" in line and "is intact" in line, line
    assert (out / "last.pt").read_bytes() == before
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_ctrl_c_says_where_the_run_stopped(tmp_path):
    manifest = prepare(colour_folder(tmp_path / "data", n=40), tmp_path / "m")
    out = tmp_path / "run"
    process = subprocess.Popen([PY, *map(str, train_argv(manifest, out, epochs=50))], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "interrupted (Ctrl-C) during epoch" in stderr and "run the same command again" in stderr


def test_a_read_only_output_folder_fails_before_any_work(tmp_path):
    target = Path("/sys/kit_read_only_check")
    try:
        target.mkdir()
        target.rmdir()
        pytest.skip("/sys is writable here; no read-only file system to test with")
    except OSError:
        pass
    manifest = prepare(colour_folder(tmp_path / "data", n=4), tmp_path / "m")
    for argv in (train_argv(manifest, target / "run"),
                 ["evaluate.py", "--checkpoint", tmp_path / "none.pt", "--manifest", manifest, "--out", target / "e"]):
        line = one_line(run(argv))
        assert line.startswith(f"error: {target}"), line


def test_a_csv_parse_error_is_one_line(tmp_path):
    root = tmp_path / "ep"
    (root / "train").mkdir(parents=True)
    (root / "trainLabels.csv").write_text('image,level\n1_left,0\n1_right,0,extra\n"unclosed,1\n')
    line = one_line(run(["prepare_data.py", "--dataset", "eyepacs", "--root", root, "--out", tmp_path / "m"]))
    assert "trainLabels.csv" in line and "cannot read as CSV" in line
