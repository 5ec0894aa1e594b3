"""The study's settings and plan, for the Snakefile: which data sets, pretrained models, arms and runs a
configuration asks for, checked before any work starts.

A configuration is config/demo.yaml or config/full.yaml with `snakemake --config KEY=VALUE` overrides.
`settings(config)` checks every value with the bounds the scripts use (one line naming the setting, and
nothing written); the other functions turn the settings into the study's files, laid out as the
README's "Where runs go" says (tests/test_study.py checks the demo study against that list).
`python -m kit.study` (make help) prints every setting with its demo and full-study value and its meaning,
read from the configuration files' comments.

A seed seeds the whole pipeline: the arms of seed S fine-tune from the models pretrained with seed S
(pretrain_seed: one pretraining for every seed instead), so the spread across seeds includes the
pretraining's. The splits depend on split_seed alone, so every run is tested on the same images.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from pathlib import Path

from . import cli
from .paper import STRATEGIES

SOURCES = ("chestxray14", "breakhis", "eyepacs")
PAPER_TARGETS = ("shenzhen", "covid19_radiography", "kather2016", "messidor", "deepdrid")
AREA = {"chestxray14": "CXR", "breakhis": "HWSI", "eyepacs": "EFI", "shenzhen": "CXR", "covid19_radiography": "CXR",
        "kather2016": "HWSI", "messidor": "EFI", "deepdrid": "EFI"}
AREA_OF_DOMAIN = {"cxr": "CXR", "hwsi": "HWSI", "efi": "EFI", "other": None}
ARMS = ("RI", "IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN")
BALANCED_ARMS = ("All_RI_bal", "All_IN_bal")  # All_RI / All_IN pretrained with pretrain_all.py --balance
BALANCES = ("none", "domain", "sqrt")


class SettingError(ValueError):
    """A study setting that cannot be used; the message names it."""


# --------------------------------------------------------------------------- checking the settings

def _checked(name, value, parse):
    """`parse(str(value))` with argparse's bounds, as one line naming the setting."""
    try:
        return parse(str(value))
    except (argparse.ArgumentTypeError, ValueError) as err:
        raise SettingError(f"setting {name}={value!r}: {err}") from None


def _list(name, value):
    """A list setting: a YAML list, or one value; given but empty is an error (only an unset one takes the
    configuration file's default)."""
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split() \
        if value is not None else []
    items = [item for item in items if str(item).strip() != ""]
    if not items:
        raise SettingError(f"setting {name} is empty; leave it out to take the default, or give one or more values")
    return items


@dataclasses.dataclass(frozen=True)
class Target:
    """A target of the study: a paper data set read from `data`, or your own (`manifest`: a manifest
    prepare_data.py wrote; `folder` + `domain`: a folder of class folders)."""
    name: str
    domain: str
    manifest: str | None = None
    folder: str | None = None

    @property
    def area(self) -> str | None:
        return AREA_OF_DOMAIN[self.domain]


def parse_target(spec: str, here: Path) -> Target:
    """`shenzhen`, or your own: `NAME=MANIFEST.csv` or `NAME=FOLDER:DOMAIN` (paths from `here`)."""
    spec = str(spec).strip()
    if "=" not in spec:
        if spec not in PAPER_TARGETS:
            raise SettingError(f"setting targets: unknown target {spec!r} (the paper's: {' '.join(PAPER_TARGETS)}; "
                               "your own: NAME=MANIFEST.csv or NAME=FOLDER:DOMAIN)")
        return Target(spec, {"CXR": "cxr", "HWSI": "hwsi", "EFI": "efi"}[AREA[spec]])
    name, path = spec.split("=", 1)
    if not name.replace("_", "").replace("-", "").isalnum() or name in AREA or name == "all":
        raise SettingError(f"setting targets: {name!r} is not a plain new name (letters, digits, _ -)")
    domain = None
    if ":" in path and path.rsplit(":", 1)[1] in AREA_OF_DOMAIN:
        path, domain = path.rsplit(":", 1)
    resolved = (here / path).resolve()
    if resolved.is_dir():
        if domain is None:
            raise SettingError(f"setting targets: {name}={resolved} is a folder; say its domain: "
                               f"{name}={path}:cxr|hwsi|efi|other")
        return Target(name, domain, folder=str(resolved))
    sidecar = resolved.with_suffix(".json")
    if resolved.is_file() and sidecar.is_file():
        if domain is not None:
            raise SettingError(f"setting targets: {name}={resolved} is a manifest; its domain is in {sidecar}")
        try:
            domain = json.loads(sidecar.read_text())["domain"]
        except (OSError, ValueError, KeyError, TypeError):
            raise SettingError(f"setting targets: {sidecar} is not a manifest sidecar written by prepare_data.py") \
                from None
        if domain not in AREA_OF_DOMAIN:
            raise SettingError(f"setting targets: {sidecar}: unknown domain {domain!r}")
        return Target(name, domain, manifest=str(resolved))
    raise SettingError(f"setting targets: {name}={resolved} is neither a folder nor a manifest with its .json "
                       f"(prepare a table first: python prepare_data.py --dataset csv --root TABLE --domain DOMAIN "
                       f"--name {name} --out DIR ...)")


def parse_extra_arms(value, here: Path) -> tuple:
    """extra_arms: a mapping {NAME: FILE}, or the text "NAME=FILE NAME=FILE"; each FILE a DenseNet-121 that
    finetune_target.py --init takes (kit/backbones.py), read here so that a wrong file stops the study at once."""
    if value in (None, "", {}):
        return ()
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        pairs = [item.split("=", 1) if "=" in item else (item, "") for item in _list("extra_arms", value)]
    arms = []
    for name, path in pairs:
        name = str(name).strip()
        if not name.replace("_", "").replace("-", "").isalnum() or name in (*ARMS, *BALANCED_ARMS) or \
                name in [a for a, _ in arms]:
            raise SettingError(f"setting extra_arms: {name!r} is not a plain new arm name (letters, digits, _ -; "
                               f"not {', '.join((*ARMS, *BALANCED_ARMS))}, not twice)")
        resolved = (here / str(path)).expanduser().resolve()
        if not str(path).strip() or not resolved.is_file():
            raise SettingError(f"setting extra_arms: {name}={resolved}: not a file (NAME=FILE, a DenseNet-121 weights "
                               "file)")
        from . import backbones  # torch, only when a study has extra arms
        try:
            backbones.layout_of(resolved)
        except backbones.CheckpointError as err:
            raise SettingError(f"setting extra_arms: {name}={err}") from None
        arms.append((name, str(resolved)))
    return tuple(arms)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of a study, checked."""
    data: str | None
    out: str
    demo_scale: float
    image_size: int
    batch_size: int
    epochs_pretrain: int
    epochs_finetune: int
    workers: int
    device: str
    threads: int | None
    seeds: tuple
    split_seed: int
    pretrain_seed: int | None
    train_fractions: tuple
    targets: tuple
    arms: tuple
    strategies: tuple
    source_protocol: str
    overlap: str
    cache: bool
    imagenet_weights: str | None
    launch: str
    finetune_launch: str
    gpus: tuple
    extra_arms: tuple = ()  # (NAME, FILE) of each published DenseNet-121 fine-tuned as an arm of every target
    balanced_all: str = "none"  # none, or the --balance of the All models added as arms All_RI_bal, All_IN_bal

    @property
    def demo(self) -> bool:
        return self.data is None


def settings(config: dict, *, here: Path, given: dict | None = None) -> Settings:
    """The settings of `config` (the configuration file plus the --config overrides `given`), checked with the
    bounds the scripts use; SettingError names the first bad one. Relative paths are taken from `here`. A
    setting given empty (`--config data=`, which Snakemake reads as null) is an error, never the default."""
    known = {field.name for field in dataclasses.fields(Settings)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise SettingError(f"unknown setting(s) {', '.join(unknown)} (the settings: {', '.join(sorted(known))})")
    empty = [name for name, value in (given or {}).items() if value is None or str(value).strip() in ("", "[]")
             and name != "gpus"]  # gpus=[]: no GPU handed out, a value
    if empty:
        raise SettingError(f"setting {empty[0]} is given empty; leave it out to take the configuration file's value, "
                           f"or give one")
    missing = sorted(known - set(config))
    if missing:
        raise SettingError(f"setting(s) {', '.join(missing)} missing: start from config/demo.yaml or config/full.yaml")

    def path(name):
        value = config[name]
        return None if value in (None, "") else str((here / str(value)).expanduser().resolve())

    def optional_int(name, parse):
        return None if config[name] in (None, "") else _checked(name, config[name], parse)

    data = path("data")
    if data is not None and not Path(data).is_dir():
        raise SettingError(f"setting data={data}: not a folder (it must hold one folder per data set; README, Full data)")
    weights = path("imagenet_weights")
    if weights is not None and not Path(weights).is_file():
        raise SettingError(f"setting imagenet_weights={weights}: not a file")
    out = path("out")
    if out is None:
        raise SettingError("setting out is empty: the folder the study writes")
    seeds = tuple(dict.fromkeys(_checked("seeds", s, cli.seed) for s in _list("seeds", config["seeds"])))
    fractions = tuple(dict.fromkeys(_checked("train_fractions", f, cli.fraction)
                                    for f in _list("train_fractions", config["train_fractions"])))
    targets = tuple(parse_target(spec, here) for spec in _list("targets", config["targets"]))
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise SettingError(f"setting targets: {max(names, key=names.count)!r} comes twice")
    arms = tuple(dict.fromkeys(str(a) for a in _list("arms", config["arms"])))
    strategies = tuple(dict.fromkeys(str(s) for s in _list("strategies", config["strategies"])))
    for name, values, allowed in (("arms", arms, ARMS), ("strategies", strategies, STRATEGIES)):
        wrong = [v for v in values if v not in allowed]
        if wrong:
            raise SettingError(f"setting {name}: unknown {wrong[0]!r} ({' '.join(allowed)})")
    choices = {"source_protocol": ("paper", "held-out-test"), "overlap": ("drop", "keep")}
    for name, allowed in choices.items():
        if config[name] not in allowed:
            raise SettingError(f"setting {name}={config[name]!r}: choose {' or '.join(allowed)}")
    if not isinstance(config["cache"], bool):
        raise SettingError(f"setting cache={config['cache']!r}: true or false")
    gpus = tuple(_checked("gpus", g, cli.non_negative_int) for g in (config["gpus"] or []))
    balanced_all = "none" if config["balanced_all"] in (False, None) else str(config["balanced_all"])
    if balanced_all not in BALANCES:
        raise SettingError(f"setting balanced_all={config['balanced_all']!r}: choose {' or '.join(BALANCES)}")
    launch = str(config["launch"] or "python").strip()
    return Settings(
        data=data, out=out, demo_scale=_checked("demo_scale", config["demo_scale"], cli.demo_scale),
        image_size=_checked("image_size", config["image_size"], cli.image_size),
        batch_size=_checked("batch_size", config["batch_size"], cli.train_batch_size),
        epochs_pretrain=_checked("epochs_pretrain", config["epochs_pretrain"], cli.epochs),
        epochs_finetune=_checked("epochs_finetune", config["epochs_finetune"], cli.epochs),
        workers=_checked("workers", config["workers"], cli.non_negative_int),
        device=_checked("device", config["device"], cli.device),
        threads=optional_int("threads", cli.positive_int), seeds=seeds,
        split_seed=_checked("split_seed", config["split_seed"], cli.seed),
        pretrain_seed=optional_int("pretrain_seed", cli.seed), train_fractions=fractions,
        targets=targets, arms=arms, strategies=strategies, source_protocol=config["source_protocol"],
        overlap=config["overlap"], cache=config["cache"], imagenet_weights=weights, launch=launch,
        finetune_launch=str(config["finetune_launch"] or launch).strip(), gpus=gpus,
        extra_arms=parse_extra_arms(config["extra_arms"], here), balanced_all=balanced_all)


# --------------------------------------------------------------------------- the plan

def run_name(strategy: str, fraction: float, seed: int) -> str:
    """A fine-tuning run's folder name: [<strategy>_][frac<F>_]seed<S>."""
    name = f"seed{seed}" if fraction == 1 else f"frac{fraction:g}_seed{seed}"
    return name if strategy == "full" else f"{strategy}_{name}"


def inits(have_imagenet: bool) -> tuple:
    return ("RI", "IN") if have_imagenet else ("RI",)


def arm_names(s: Settings) -> tuple:
    """Every arm name a study may run: the kit's, the balanced All models', the extra arms'."""
    return (*ARMS, *BALANCED_ARMS, *(name for name, _ in s.extra_arms))


def arms_of(target: Target, s: Settings, have_imagenet: bool) -> list:
    """The arms a target gets: those asked for, less the ImageNet-based ones without the ImageNet file; a target
    of domain other has no Domain arms (no source of its area) and gets the random-init floor RI instead; then
    the balanced All models (balanced_all) and the extra arms (extra_arms), for every target."""
    arms = [a for a in s.arms if (have_imagenet or not a.endswith("IN")) and not (target.area is None and
                                                                                      a.startswith("Domain_"))]
    balanced = [f"All_{init}_bal" for init in inits(have_imagenet)] if s.balanced_all != "none" else []
    return ((["RI"] if target.area is None and "RI" not in arms else []) + arms + balanced
            + [name for name, _ in s.extra_arms])


def init_of(target: Target, arm: str, seed: int, s: Settings) -> str:
    """--init of an arm: random, imagenet, an extra arm's file, or OUT/pretrain/<model>/seed<P>/last.pt."""
    if arm in ("RI", "IN"):
        return "random" if arm == "RI" else "imagenet"
    if arm in dict(s.extra_arms):
        return dict(s.extra_arms)[arm]
    model = f"{target.area}_{arm.split('_')[1]}" if arm.startswith("Domain_") else arm
    pretrained = seed if s.pretrain_seed is None else s.pretrain_seed
    return f"{s.out}/pretrain/{model}/seed{pretrained}/last.pt"


def runs(target: Target, s: Settings, have_imagenet: bool) -> list:
    """(arm, run name, seed, strategy, fraction) of every fine-tuning run of a target."""
    return [(arm, run_name(strategy, fraction, seed), seed, strategy, fraction)
            for seed in s.seeds for strategy in s.strategies for fraction in s.train_fractions
            for arm in arms_of(target, s, have_imagenet)]


def parse_run(name: str) -> tuple:
    """(strategy, fraction, seed) of a run folder name (run_name's inverse)."""
    strategy = next((st for st in STRATEGIES if name.startswith(f"{st}_")), "full")
    rest = name[len(strategy) + 1:] if name.startswith(f"{strategy}_") else name
    fraction = 1.0
    if rest.startswith("frac"):
        fraction_text, rest = rest[4:].split("_", 1)
        fraction = float(fraction_text)
    return strategy, fraction, int(rest.removeprefix("seed"))


def record(s: Settings, imagenet: str | None, imagenet_missing: str | None) -> dict:
    """OUT/study.json: what this study is, for plot_results.py's report."""
    return {"data": s.data or "demo", "demo": s.demo, "demo_scale": s.demo_scale if s.demo else None,
            "imagenet_weights": imagenet, "imagenet_found": imagenet is not None,
            "imagenet_missing_reason": imagenet_missing, "image_size": s.image_size,
            "epochs_pretrain": s.epochs_pretrain, "epochs_finetune": s.epochs_finetune, "batch_size": s.batch_size,
            "seeds": list(s.seeds), "split_seed": s.split_seed, "pretrain_seed": s.pretrain_seed,
            "train_fractions": list(s.train_fractions), "targets": [t.name for t in s.targets],
            "source_protocol": s.source_protocol, "arms": list(s.arms), "strategies": list(s.strategies),
            "overlap": s.overlap} | extra_record(s)


def extra_record(s: Settings) -> dict:
    """The arms beyond the paper's, for study.json (nothing where there are none): each extra arm's file with
    its layout and hash, and the balancing of the All models."""
    record = {}
    if s.extra_arms:
        from . import backbones

        record["extra_arms"] = {name: backbones.record_of(path) for name, path in s.extra_arms}
    if s.balanced_all != "none":
        record["balanced_all"] = s.balanced_all
    return record


def threads_per_run(s: Settings, cores: int) -> int:
    """CPU threads of each training and evaluation job: the setting, else every core the workflow may use
    (one job at a time; threads=1 with --cores N runs N jobs side by side). On a CPU the numbers depend on
    it: the same threads give the same numbers whatever --cores is."""
    return s.threads or max(1, cores)


# --------------------------------------------------------------------------- the settings, for people (make help)

CONFIG_FOLDER = Path(__file__).resolve().parents[1] / "config"


def _comment(line: str) -> str | None:
    """The comment of a YAML line (after a `#` that starts the line or follows a space, outside a quoted
    value), or None."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"" and (i == 0 or line[i - 1] in " \t[{,:"):
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[i + 1:].strip()
    return None


def meanings(text: str) -> dict:
    """{setting: its meaning} from a configuration file's text: the comment on a top-level `KEY: VALUE` line,
    continued by the indented comment lines under it."""
    found, key = {}, None
    for line in text.splitlines():
        if line[:1].isalpha() or line[:1] == "_":
            key = line.split(":", 1)[0].strip()
            found[key] = _comment(line) or ""
        elif key and line[:1] in (" ", "\t") and line.strip().startswith("#"):
            found[key] = f"{found[key]} {_comment(line)}".strip()
        else:
            key = None  # a blank line or a comment of the file's own ends a setting's meaning
    return found


def _shown(value) -> str:
    """A setting's value as one writes it in the configuration file or after --config."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_shown, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return str(value)


def settings_help(folder: Path = CONFIG_FOLDER) -> str:
    """What `make help` prints: every setting with its value in the demo (config/demo.yaml) and the full study
    (config/full.yaml) and its meaning (the demo file's comment), then how to change one."""
    import yaml  # installed with Snakemake

    texts = {name: (folder / f"{name}.yaml").read_text() for name in ("demo", "full")}
    values = {name: yaml.safe_load(text) for name, text in texts.items()}
    meaning = meanings(texts["demo"])
    names = [*values["demo"], *(f.name for f in dataclasses.fields(Settings) if f.name not in values["demo"])]
    lines = ["The study's settings: the demo's value (config/demo.yaml, what make study and snakemake run),",
             "the full study's (config/full.yaml), and what each means.", ""]
    for name in names:
        demo, full = (_shown(values[config].get(name)) for config in ("demo", "full"))
        lines.append(f"{name}: {demo} (demo and full)" if demo == full else f"{name}: {demo} (demo), {full} (full)")
        lines += textwrap.wrap(meaning.get(name) or "(no meaning given)", 100, initial_indent="    ",
                               subsequent_indent="    ")
    lines += ["",
              "Change settings for one study (lists in brackets; a setting given empty is refused, leave it out",
              "to keep the file's value):",
              "  make study SETTINGS='seeds=[0,1,2] epochs_finetune=10'",
              "  snakemake --config seeds=\"[0,1,2]\" epochs_finetune=10",
              "The full study on your downloads (one folder per data set; README, Full data):",
              "  snakemake --configfile config/full.yaml --config data=/data/study",
              "To change a default, edit config/demo.yaml or config/full.yaml."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_help())
