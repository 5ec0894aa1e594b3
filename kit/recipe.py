"""What a run actually trained with, read off the objects its script built: the optimizer (its class
and each parameter group's hyperparameters), the learning-rate schedule, the loss with its class
weights, what trains and the augmentation. loop.fit records it in the run's meta (args.json, every
checkpoint) and in its fingerprint, so an edited recipe line (SGD instead of AdamW) shows in the report
and a resume with another recipe is refused, naming what changed.
"""
import math

# Optimizer options that say how a step is computed on the hardware, not what it computes.
IMPLEMENTATION = frozenset({"foreach", "fused", "capturable", "differentiable"})


def _plain(value):
    """A recorded value as plain JSON: numbers, strings, lists; tensors as lists (rounded)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [round(float(v), 6) for v in value.flatten().tolist()]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if isinstance(value, (int, str, bool)) or value is None else repr(value)


def _name(obj) -> str:
    kind = type(obj)
    return kind.__name__ if kind.__module__.startswith("torch.") else f"{kind.__module__}.{kind.__name__}"


def optimizer(opt) -> dict:
    """{"class": "AdamW", "param_groups": [{"tensors": n, "lr": ..., "weight_decay": ..., ...}]}: the
    learning rate as given (initial_lr where a schedule has started), not the schedule's current value."""
    groups = []
    for group in opt.param_groups:
        entry = {"tensors": len(group["params"])}
        for key, value in group.items():
            if key in ("params", "initial_lr") or key in IMPLEMENTATION:
                continue
            entry[key] = _plain(group.get("initial_lr", value) if key == "lr" else value)
        groups.append(entry)
    return {"class": _name(opt), "param_groups": groups}


def schedule(scheduler) -> dict:
    """The schedule's class and its settings (a sequence's parts in order), without its progress."""
    state = scheduler.state_dict()
    record = {"class": _name(scheduler)}
    for key, value in state.items():
        name = key.lstrip("_") if key == "_milestones" else key
        if name.startswith("_") or name in ("last_epoch", "base_lrs", "optimizer", "verbose"):
            continue
        record[name] = _plain(value)
    parts = getattr(scheduler, "_schedulers", None)
    if parts:
        record["parts"] = [schedule(part) for part in parts]
    return record


def loss(criterion) -> dict:
    """The loss's class, its class weights (None: unweighted) and its other settings."""
    record = {"class": _name(criterion), "class_weights": None}
    weight = getattr(criterion, "weight", None)
    if weight is not None:
        record["class_weights"] = _plain(weight)
    for key in ("reduction", "label_smoothing", "ignore_index", "pos_weight"):
        value = getattr(criterion, key, None)
        if value is not None:
            record[key] = _plain(value)
    return record


def trains(model) -> dict:
    """What trains: parameters that train and that are frozen, and whether frozen BatchNorm statistics stay fixed."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable_parameters": trainable, "frozen_parameters": frozen}


def record(model, opt, scheduler, criterion, *, strategy: str, augmentation: dict) -> dict:
    """The recipe of a run: optimizer, schedule, loss, what trains, the augmentation."""
    return {"optimizer": optimizer(opt), "schedule": schedule(scheduler), "loss": loss(criterion),
            "strategy": strategy, "trains": trains(model), "augmentation": augmentation}


def differences(saved: dict | None, now: dict) -> list:
    """What differs between two recipes, one short phrase each (e.g. 'optimizer AdamW -> SGD')."""
    if not isinstance(saved, dict):
        return ["no recipe recorded in the checkpoint"]
    found = []
    for part in ("optimizer", "schedule", "loss", "strategy", "trains", "augmentation"):
        before, after = saved.get(part), now.get(part)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict) and before.get("class") != after.get("class"):
            found.append(f"{part} {before.get('class')} -> {after.get('class')}")
        else:
            found.append(f"{part} {_short(before)} -> {_short(after)}")
    return found


def _short(value, limit=160):
    text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(part: str, value) -> str:
    """A recorded part in words for report.md, e.g. 'AdamW: lr 0.0001, weight_decay 0.0001, betas (0.9, 0.999)'."""
    if not isinstance(value, dict):
        return str(value)
    if part == "optimizer":
        groups = value.get("param_groups", [])
        def settings(group):  # what is set: the tensor count and the options left off aside
            return ", ".join(f"{k} {v}" for k, v in group.items() if k != "tensors" and v not in (False, None))

        text = "; ".join(settings(g) for g in groups) if len({str(g) for g in groups}) > 1 or not groups else \
            settings(groups[0])
        return f"{value.get('class')}: {text}"
    if part == "schedule":
        parts = value.get("parts")
        if parts:
            return " then ".join(describe("schedule", p) for p in parts)
        settings = ", ".join(f"{k} {v}" for k, v in value.items() if k not in ("class", "parts"))
        return f"{value.get('class')}" + (f" ({settings})" if settings else "")
    if part == "loss":
        weights = value.get("class_weights")
        return f"{value.get('class')}, " + ("class weights " + ", ".join(f"{w:g}" for w in weights) if weights
                                           else "no class weights")
    return ", ".join(f"{k} {v}" for k, v in value.items())
