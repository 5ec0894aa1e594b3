"""kit.loop: fit on tiny generated images with the recipe built as the training scripts build it
(data -> model -> loss -> optimizer -> schedule), the learning-rate schedule, seeding, and the stop
at a non-finite loss."""
import argparse
import math
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    ROOT,
    colour_folder,
    finetune_argv,
    prepare_colour,
    read_metrics,
    run_finetune,
    start_script,
    tiny_frame,
    train_argv,
    two_colour_manifest,
    wait_for,
)

from kit import checkpoints, data, loop, losses, metrics, models, runs, runtime

CPU = torch.device("cpu")


def _args(out, **overrides):
    values = dict(out=str(out), epochs=2, batch_size=4, lr=1e-3, weight_decay=0.0, warmup_epochs=0, workers=0,
                  seed=0, device="cpu", amp=True, channels_last=True, class_weights="auto", hidden_dim=32,
                  dropout=0.1, image_size=32, init="random", manifest=str(out / "m.csv"), resume=True,
                  skip_bad=False, compile=False, log_every=50, sync_bn=False, imagenet_weights=None,
                  restart_if_changed=False)
    values.update(overrides)
    return argparse.Namespace(**values)


def _fit(df, data_meta, args):
    """What finetune_target.py's main does, on a data frame: data, model, loss, optimizer, schedule, fit."""
    runtime.seed_everything(args.seed)
    train_set, val_set = data.train_val_datasets(df, data_meta, image_size=args.image_size)
    train_loader, val_loader = data.make_train_val_loaders(train_set, val_set, batch_size=args.batch_size,
                                                           workers=args.workers, seed=args.seed, device=CPU)
    model = models.build_model(len(data_meta["classes"]), hidden_dim=args.hidden_dim, dropout=args.dropout)
    class_weights = losses.class_weights(args.class_weights, data_meta, train_set.targets)
    criterion = losses.make_criterion(data_meta["task"], class_weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  **loop.fast_kernels(CPU))
    scheduler = loop.warmup_cosine(optimizer, total_steps=args.epochs * len(train_loader),
                                   warmup_steps=args.warmup_epochs * len(train_loader))
    run = runs.open_run(args.out, arguments=vars(args), data_meta=data_meta, df=df, world_size=1, resume=args.resume,
                        restart_if_changed=args.restart_if_changed)
    meta = runs.run_meta(data_meta, run, init=args.init, init_description="random", hidden_dim=args.hidden_dim,
                         dropout=args.dropout, image_size=args.image_size, manifests=[args.manifest],
                         loss_weights=class_weights)
    return loop.fit(model, train_loader, val_loader, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
                    meta=meta, run=run, settings=loop.Settings.of(vars(args)), device=CPU,
                    dist_info=runtime.Distributed())


# --------------------------------------------------------------------------- fit

@pytest.mark.slow
def test_fit_writes_the_run_folder(tmp_path):
    df, data_meta = tiny_frame(tmp_path)
    args = _args(tmp_path / "run")
    summary = _fit(df, data_meta, args)

    out = tmp_path / "run"
    for name in ("args.json", "metrics.csv", "last.pt", "best.pt", "summary.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))
    log = pd.read_csv(out / "metrics.csv")
    assert list(log.columns) == ["epoch", "split", "loss", *metrics.MULTICLASS_METRICS, "seconds", "lr"]
    assert log[["epoch", "split"]].values.tolist() == [[1, "train"], [1, "val"], [2, "train"], [2, "val"]]
    assert np.isfinite(log["loss"]).all() and log["accuracy"].between(0, 1).all()

    checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert checkpoint["meta"]["classes"] == ["red", "blue"]
    assert checkpoint["meta"]["loss_weights"] == pytest.approx([1.0, 1.0])  # 6 + 6 train images
    assert checkpoint["resume"] == {**runs.fingerprint(vars(args), data_meta, df, world_size=1),
                                    "recipe": checkpoint["meta"]["recipe"]}
    restored = models.build_model(2, hidden_dim=32, dropout=0.1)
    restored.load_state_dict(checkpoint["model"])
    assert summary["best_epoch"] in (1, 2) and math.isfinite(summary["best_val_score"])


@pytest.mark.slow
def test_fit_is_reproducible_for_a_seed(tmp_path):
    df, data_meta = tiny_frame(tmp_path)
    logs = []
    for name in ("a", "b"):
        _fit(df, data_meta, _args(tmp_path / name, epochs=1))
        logs.append(pd.read_csv(tmp_path / name / "metrics.csv").drop(columns="seconds"))
    pd.testing.assert_frame_equal(logs[0], logs[1])


@pytest.mark.slow
def test_fit_logs_the_scheduled_learning_rate(tmp_path):
    """metrics.csv's lr is the rate at the start of each epoch: with --warmup-epochs 1 of 3 the first
    epoch starts low, the second at the peak, the third on the cosine's way down."""
    df, data_meta = tiny_frame(tmp_path)
    _fit(df, data_meta, _args(tmp_path / "run", epochs=3, warmup_epochs=1))
    lr = pd.read_csv(tmp_path / "run" / "metrics.csv").query("split == 'train'")["lr"].tolist()
    steps = 3  # 12 train images in batches of 4
    assert lr == pytest.approx([1e-3 / (steps + 1), 1e-3, 1e-3 * 0.5 * (1 + math.cos(math.pi / 2))])


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path):
    manifest = two_colour_manifest(tmp_path)
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        run_finetune(finetune_argv(manifest, tmp_path / name, "--seed", seed, epochs=1, workers=1))
    pd.testing.assert_frame_equal(read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b"))
    assert not read_metrics(tmp_path / "a")["loss"].equals(read_metrics(tmp_path / "c")["loss"])


@pytest.mark.slow
def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    manifest = two_colour_manifest(tmp_path)
    out = tmp_path / "run"
    n_train = int((pd.read_csv(manifest)["split"] == "train").sum())
    steps_per_epoch = -(-n_train // 4) - (n_train % 4 == 1)  # batches of 4; a last batch of 1 is dropped
    calls = []

    class NanAtStepTwoOfEpochTwo(torch.nn.CrossEntropyLoss):
        def forward(self, logits, targets):
            training = torch.is_grad_enabled()
            calls.append(training)
            loss = super().forward(logits, targets)
            return loss * torch.nan if training and sum(calls) == steps_per_epoch + 2 else loss

    monkeypatch.setattr(losses, "make_criterion", lambda task, weights=None: NanAtStepTwoOfEpochTwo())
    with pytest.raises(SystemExit) as info:
        run_finetune(finetune_argv(manifest, out))
    assert f"NaN or infinite at step {steps_per_epoch + 2} (epoch 2)" in str(info.value)
    checkpoint = checkpoints.load_checkpoint(out / "last.pt")
    assert checkpoint["epoch"] == 1 and all(torch.isfinite(v).all() for v in checkpoint["model"].values()
                                            if v.is_floating_point())
    assert not (out / "summary.json").exists()


def test_a_non_finite_loss_in_the_first_epoch_says_no_checkpoint_was_written(tmp_path, monkeypatch):
    manifest = two_colour_manifest(tmp_path)

    class NanAtStepTwo(torch.nn.CrossEntropyLoss):
        steps = 0

        def forward(self, logits, targets):
            NanAtStepTwo.steps += torch.is_grad_enabled()
            loss = super().forward(logits, targets)
            return loss * torch.nan if NanAtStepTwo.steps == 2 else loss

    monkeypatch.setattr(losses, "make_criterion", lambda task, weights=None: NanAtStepTwo())
    with pytest.raises(SystemExit) as info:
        run_finetune(finetune_argv(manifest, tmp_path / "run"))
    message = str(info.value)
    assert "at step 2 (epoch 1)" in message and "No epoch had finished, so this run wrote no checkpoint" in message
    assert "epoch 0" not in message and not (tmp_path / "run" / "last.pt").exists()


# --------------------------------------------------------------------------- learning-rate schedule

def _lrs(scheduler, optimizer, steps):
    """The learning rate before each of `steps` steps and after the last."""
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def _optimizer(lr=0.1):
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_warmup_cosine_without_warmup_is_cosine_annealing():
    optimizer = _optimizer()
    ours = _lrs(loop.warmup_cosine(optimizer, total_steps=12, warmup_steps=0), optimizer, 12)
    reference_optimizer = _optimizer()
    reference = _lrs(torch.optim.lr_scheduler.CosineAnnealingLR(reference_optimizer, T_max=12), reference_optimizer, 12)
    assert ours == pytest.approx(reference, abs=1e-12)
    assert ours[0] == pytest.approx(0.1) and ours[-1] == pytest.approx(0, abs=1e-12)


def test_warmup_cosine_rises_linearly_to_the_peak_then_decays_to_zero():
    optimizer = _optimizer(lr=0.1)
    warmup, total = 4, 14
    rates = _lrs(loop.warmup_cosine(optimizer, total_steps=total, warmup_steps=warmup), optimizer, total)
    # linear warm-up from 0.1 / (warmup + 1): equal increments, the peak reached after `warmup` steps
    assert rates[:warmup + 1] == pytest.approx([0.1 * (step + 1) / (warmup + 1) for step in range(warmup + 1)])
    assert np.diff(rates[:warmup + 1]) == pytest.approx(np.full(warmup, 0.1 / (warmup + 1)))
    assert max(rates) == pytest.approx(0.1) and int(np.argmax(rates)) == warmup
    # then the cosine over the remaining steps, down to 0 at total_steps
    decay = total - warmup
    assert rates[warmup:] == pytest.approx([0.05 * (1 + math.cos(math.pi * k / decay)) for k in range(decay + 1)])
    assert (np.diff(rates[warmup:]) < 0).all() and rates[-1] == pytest.approx(0, abs=1e-12)


def test_warmup_cosine_resumes_from_its_state_dict():
    """A resumed run loads the scheduler's state (loop.fit): the rates continue exactly."""
    optimizer = _optimizer()
    scheduler = loop.warmup_cosine(optimizer, total_steps=10, warmup_steps=3)
    whole = _lrs(scheduler, optimizer, 10)
    optimizer = _optimizer()
    scheduler = loop.warmup_cosine(optimizer, total_steps=10, warmup_steps=3)
    first = _lrs(scheduler, optimizer, 2)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    optimizer = _optimizer()
    scheduler = loop.warmup_cosine(optimizer, total_steps=10, warmup_steps=3)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert first[:-1] + _lrs(scheduler, optimizer, 8) == pytest.approx(whole)


def test_fast_kernels():
    assert loop.fast_kernels(torch.device("cpu")) == {"foreach": True}
    assert loop.fast_kernels(torch.device("cuda", 0)) == {"fused": True}


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["after a save", "inside a save"])
def test_ctrl_c_says_where_the_run_stopped(moment, tmp_path):
    manifest = prepare_colour(colour_folder(tmp_path / "data", n=40), tmp_path / "m")
    out = tmp_path / "run"
    process = start_script(*train_argv(manifest, out, epochs=50), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    if moment == "after a save":
        wait_for(lambda: (out / "last.pt").exists())
    else:  # the Ctrl-C lands while epoch 1's last.pt is being written: the epoch's files are completed first
        wait_for(lambda: (out / "last.pt.tmp").exists(), every=0.002)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "interrupted (Ctrl-C)" in stderr and "run the same command again" in stderr
    assert not list(out.glob("*.tmp"))
    held = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert f"last.pt holds epoch {held}, written whole" in stderr
    assert len(pd.read_csv(out / "metrics.csv")) == 2 * held  # metrics.csv agrees with last.pt
    if moment == "inside a save":
        assert held == 1 and "after epoch 1" in stderr and (out / "best.pt").exists()


def test_best_pt_holds_the_model_and_meta_only(tmp_path):
    sys.path.insert(0, str(ROOT))
    from kit import loop
    assert set(loop.BEST_KEYS) == {"model", "meta", "epoch", "best_metric", "best_epoch", "trained_on"}


@pytest.mark.slow
def test_a_finished_run_keeps_the_model_not_what_resuming_needs_and_trains_no_more(tmp_path, monkeypatch, capsys):
    import evaluate

    manifest = two_colour_manifest(tmp_path)
    out = tmp_path / "run"
    saved, real_save = {}, loop.save_checkpoint

    def save_and_measure(checkpoint, path):
        real_save(checkpoint, path)
        if path.name == "last.pt":
            saved[checkpoint["epoch"]] = (checkpoint, path.stat().st_size)

    monkeypatch.setattr(loop, "save_checkpoint", save_and_measure)
    run_finetune(finetune_argv(manifest, out, epochs=2))
    (running, running_size), (_, finished_size) = saved[1], saved[2]
    assert running["finished"] is False and set(loop.RESUME_ONLY) <= set(running)  # epoch 1 of 2: resumable
    last = checkpoints.load_checkpoint(out / "last.pt")
    assert last["finished"] is True and last["epoch"] == 2 and not set(loop.RESUME_ONLY) & set(last)
    assert finished_size < 0.5 * running_size, (finished_size, running_size)  # AdamW's moments: 2x the model
    assert {"model", "meta", "history", "resume", "trained_on", "best_epoch"} <= set(last)

    capsys.readouterr()
    before = (out / "last.pt").read_bytes()
    run_finetune(finetune_argv(manifest, out, epochs=2))  # the same command: finished, nothing trained
    printed = capsys.readouterr().out
    assert "finished: all 2 epochs are in" in printed and "epoch 1/2" not in printed and "epoch 2/2" not in printed
    assert (out / "last.pt").read_bytes() == before and len(read_metrics(out)) == 4
    assert (out / "summary.json").is_file()

    evaluate.main(evaluate.get_args_parser().parse_args(
        ["--checkpoint", str(out / "last.pt"), "--manifest", str(manifest), "--split", "val", "--bootstrap", "20",
         "--out", str(tmp_path / "eval"), "--device", "cpu", "--workers", "0"]))
    assert pd.read_csv(tmp_path / "eval" / "metrics.csv")["epoch"].tolist() == [2]

    # a complete last.pt that still holds what resuming needs (written before runs were finished) is slimmed
    complete = {key: value for key, value in last.items() if key != "finished"}
    checkpoints.save_checkpoint({**complete, **{key: running[key] for key in loop.RESUME_ONLY}}, out / "last.pt")
    run_finetune(finetune_argv(manifest, out, epochs=2))
    assert "epoch 2/2" not in capsys.readouterr().out
    slimmed = checkpoints.load_checkpoint(out / "last.pt")
    assert slimmed["finished"] is True and not set(loop.RESUME_ONLY) & set(slimmed)
    assert all(torch.equal(slimmed["model"][key], last["model"][key]) for key in last["model"])
