"""The study (paper Section 5) as a workflow: each rule writes the files of one stage with that stage's
ordinary command line, and Snakemake runs what is missing or out of date, in dependency order.

    snakemake                                                    # the demo (config/demo.yaml): minutes on a CPU
    snakemake -n                                                 # the plan: every job and why, nothing run
    snakemake --configfile config/full.yaml --config data=/data/study imagenet_weights=~/densenet121-a639ec97.pth
    snakemake --configfile config/full.yaml --config data=/data/study seeds="[0,1,2]"
    snakemake --config threads=1 --cores 2                       # two runs side by side, one thread each
    snakemake --rulegraph | dot -Tpng > study.png                # a picture of the stages
    snakemake --executor slurm --jobs 100 --configfile config/full.yaml ...   # on a SLURM cluster (docs/multi-gpu.md)

Stages: demo data -> one manifest per data set (prepare_data.py) -> the preprocessing caches -> the same
picture in a source and a target (check_overlap.py; left out of pretraining unless overlap=keep) -> 8
pretrained models per seed (pretrain_source.py, pretrain_all.py; + All_RI_bal, All_IN_bal with balanced_all)
-> the arms of every target per seed, strategy and train fraction (finetune_target.py; + one per extra_arms
file) -> each run's best and last checkpoint on the test split (evaluate.py) -> figures, tables and
OUT/report.md (plot_results.py). Settings: config/demo.yaml and config/full.yaml say each with its default
and meaning; kit/study.py checks them before anything runs.

A job's output is the file its stage writes last (a run's summary.json), so a killed job is redone by the
same command (profiles/default: --rerun-incomplete), resuming a training run from its last.pt; a
changed setting reruns exactly the jobs it reaches (Snakemake's parameter trigger), and pretraining reruns
only when the pictures it must leave out change. Each job's output goes to OUT/logs/.
"""
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # the kit, whatever folder snakemake is started from
from kit import cli, overlap as overlap_lib, study  # noqa: E402

configfile: "config/demo.yaml"

try:
    S = study.settings(config, here=Path.cwd(), given=workflow.config_settings.config)
except study.SettingError as err:
    raise SystemExit(f"error: {err}") from None
OUT = S.out
INTERRUPTED = []  # the Ctrl-Cs this study got (onerror below)
if workflow.is_main_process and not workflow.dryrun:  # one study at a time writes OUT (released however it ends)
    import signal

    from kit import locks

    try:
        locks.hold(Path(OUT).parent / f".{Path(OUT).name}.lock", what=f"study folder {OUT}")
    except locks.FolderInUse as err:
        raise SystemExit(f"error: {err}") from None

    def _interrupted(signum, frame, previous=signal.getsignal(signal.SIGINT)):
        """Remember a Ctrl-C (onerror below says how to continue), then let Snakemake stop its jobs as usual."""
        INTERRUPTED.append(signum)
        (previous if callable(previous) else signal.default_int_handler)(signum, frame)

    signal.signal(signal.SIGINT, _interrupted)
DATA = S.data or f"{OUT}/demo_data"
TARGETS = {t.name: t for t in S.targets}
KEYS = [*study.SOURCES, *TARGETS]
PYTHON = sys.executable


def imagenet_weights():
    """torchvision's DenseNet-121 file (the setting, else the torch hub cache, else a download), or why not:
    without it the ImageNet-based models and arms are left out, said loudly here and in report.md."""
    from kit import imagenet

    try:
        return str(imagenet.find_imagenet_weights(S.imagenet_weights)), None
    except Exception as err:  # offline and no file: the reason goes to the report
        return None, cli.one_line(err)


IMAGENET, IMAGENET_MISSING = imagenet_weights()
if IMAGENET is None and workflow.is_main_process:  # said once (a job of a run: block reads this file again)
    print(f"!!! NO IMAGENET WEIGHTS ({IMAGENET_MISSING}): leaving out CXR_IN HWSI_IN EFI_IN All_IN and the IN "
          "Domain_IN All_IN arms. To run all five arms, download "
          "https://download.pytorch.org/models/densenet121-a639ec97.pth and add --config "
          "imagenet_weights=/path/to/densenet121-a639ec97.pth", file=sys.stderr)
HAVE_IN = IMAGENET is not None
THREADS = study.threads_per_run(S, workflow.cores)
TRAIN = f"--image-size {S.image_size} --batch-size {S.batch_size} --device {S.device} --workers {S.workers}"
WEIGHTS = f"--imagenet-weights {IMAGENET}" if HAVE_IN else ""
# GPUs handed out one per training job (all of them to a job launched through torchrun)
GPU = f"{PYTHON} -m kit.slots --gpus {','.join(map(str, S.gpus))} -- " if S.gpus else ""


def manifest(key):
    return f"{OUT}/manifests/{key}.csv"


def cached(keys):
    """The flags of the manifests' preprocessing caches (none with cache: false)."""
    return [f"{OUT}/manifests/cache/{key}_{S.image_size}.ready" for key in keys] if S.cache else []


def launch(prefix):
    """A training command's start: the GPU slot, then python or e.g. torchrun --nproc_per_node=8."""
    return GPU + (PYTHON if prefix == "python" else prefix)


PRETRAIN_LAUNCH, FINETUNE_LAUNCH = launch(S.launch), launch(S.finetune_launch)
EXCLUDE = f"--exclude-overlap {OUT}/overlap/overlap.csv" if S.overlap == "drop" else ""
SEEN = "--allow-pretraining-overlap" if S.overlap == "keep" else ""


onerror:  # a Ctrl-C ends with the line every script ends with; a failed job's log is shown by Snakemake
    if INTERRUPTED:
        print(cli.INTERRUPTED, file=sys.stderr, flush=True)


wildcard_constraints:
    key="[A-Za-z0-9_-]+",
    seed=r"\d+",
    init="RI|IN",
    area="CXR|HWSI|EFI",


localrules: all, study_record


rule all:
    input:
        f"{OUT}/report.md",


rule study_record:  # OUT/study.json: what this study is (data, ImageNet weights or why not, sizes), for report.md
    output:
        f"{OUT}/study.json",
    params:
        record=study.record(S, IMAGENET, IMAGENET_MISSING),
    run:
        from kit import files

        files.write_json(params.record, output[0])


if S.demo:

    rule demo_data:
        output:
            [directory(f"{DATA}/{key}") for key in ("chestxray14", "breakhis", "eyepacs", *study.PAPER_TARGETS)],
        params:
            seed=S.split_seed,
            scale=S.demo_scale,
        log:
            f"{OUT}/logs/demo_data.log",
        shell:
            "{PYTHON} tools/make_demo_data.py --out {DATA} --seed {params.seed} --scale {params.scale} "
            "--overwrite > {log} 2>&1"


rule manifest:  # a paper data set as the reader finds it in DATA; the sources with the source protocol
    input:
        lambda w: f"{DATA}/{w.key}" if S.demo else [],
    output:
        csv=f"{OUT}/manifests/{{key}}.csv",
        json=f"{OUT}/manifests/{{key}}.json",
    wildcard_constraints:
        key="|".join([*study.SOURCES, *study.PAPER_TARGETS]),
    params:
        protocol=lambda w: S.source_protocol if w.key in study.SOURCES else "held-out-test",
        seed=S.split_seed,
    log:
        f"{OUT}/logs/manifest/{{key}}.log",
    shell:
        "{PYTHON} prepare_data.py --dataset {wildcards.key} --root {DATA}/{wildcards.key} --out {OUT}/manifests "
        "--seed {params.seed} --protocol {params.protocol} > {log} 2>&1"


FOLDERS = [t.name for t in S.targets if t.folder]
ADOPTED = [t.name for t in S.targets if t.manifest]

if FOLDERS:

    rule folder_manifest:  # your own target, a folder of class folders: targets: [NAME=FOLDER:DOMAIN]
        output:
            csv=f"{OUT}/manifests/{{key}}.csv",
            json=f"{OUT}/manifests/{{key}}.json",
        wildcard_constraints:
            key="|".join(FOLDERS),
        params:
            folder=lambda w: TARGETS[w.key].folder,
            domain=lambda w: TARGETS[w.key].domain,
            seed=S.split_seed,
        log:
            f"{OUT}/logs/manifest/{{key}}.log",
        shell:
            "{PYTHON} prepare_data.py --dataset folder --root {params.folder} --domain {params.domain} "
            "--name {wildcards.key} --out {OUT}/manifests --seed {params.seed} > {log} 2>&1"

if ADOPTED:

    localrules: adopt_manifest

    rule adopt_manifest:  # your own target, a manifest prepare_data.py wrote: targets: [NAME=MANIFEST.csv]
        input:
            lambda w: TARGETS[w.key].manifest,
        output:
            csv=f"{OUT}/manifests/{{key}}.csv",
            json=f"{OUT}/manifests/{{key}}.json",
        wildcard_constraints:
            key="|".join(ADOPTED),
        run:
            from kit import manifests

            manifests.adopt(input[0], wildcards.key, f"{OUT}/manifests")


# the preprocessing caches (kit/cache.py): each image decoded, cropped and resized once, the overlap thumbnails on
# the way; the three sources' in one process, each target's in one of its own
CACHE = "{PYTHON} prepare_data.py --manifest {input} --cache-size {S.image_size} --no-progress > {log} 2>&1"

if S.cache:

    rule cache_sources:
        input:
            [manifest(key) for key in study.SOURCES],
        output:
            [touch(flag) for flag in cached(study.SOURCES)],
        threads: workflow.cores
        log:
            f"{OUT}/logs/cache/sources.log",
        shell:
            CACHE

    rule cache:
        input:
            manifest("{key}"),
        output:
            touch(cached(["{key}"])[0]),
        wildcard_constraints:
            key="|".join(TARGETS),
        threads: workflow.cores
        log:
            f"{OUT}/logs/cache/{{key}}.log",
        shell:
            CACHE


checkpoint overlap:  # before any pretraining: which source images are pictures of a target (docs/data.md)
    input:
        [manifest(key) for key in KEYS],
        cached(KEYS),
    output:
        f"{OUT}/overlap/overlap.csv",
    log:
        f"{OUT}/logs/overlap.log",
    params:
        sources=" ".join(manifest(key) for key in study.SOURCES),
        targets=" ".join(manifest(key) for key in TARGETS),
    shell:
        "{PYTHON} check_overlap.py --sources {params.sources} --targets {params.targets} --out {OUT}/overlap "
        "--no-progress > {log} 2>&1"


def left_out(sources):
    """The images pretraining on `sources` leaves out, as a digest of overlap.csv's rows for them: a parameter
    of the pretraining jobs, so that they rerun only when these change (not when another source's do)."""
    def digest(wildcards):
        if S.overlap == "keep":
            return "none (overlap: keep)"
        found = overlap_lib.read_overlap(checkpoints.overlap.get().output[0])
        images = sorted(set(found.loc[found["source"].isin(sources) & (found["source"] != found["target"]),
                                      "source_image"]))
        return hashlib.sha1("\n".join(images).encode()).hexdigest()[:16]
    return digest


PRETRAIN = {"epochs": S.epochs_pretrain, "image_size": S.image_size, "batch_size": S.batch_size}


rule pretrain_source:  # CXR_RI ... EFI_IN: one source, from random init or ImageNet
    input:
        manifest=lambda w: manifest(study.SOURCES[["CXR", "HWSI", "EFI"].index(w.area)]),
        cache=lambda w: cached([study.SOURCES[["CXR", "HWSI", "EFI"].index(w.area)]]),
        overlap=ancient(lambda w: checkpoints.overlap.get().output[0]),
    output:
        f"{OUT}/pretrain/{{area}}_{{init}}/seed{{seed}}/summary.json",
    params:
        init=lambda w: "random" if w.init == "RI" else "imagenet",
        left_out=lambda w: left_out([study.SOURCES[["CXR", "HWSI", "EFI"].index(w.area)]])(w),
        settings=PRETRAIN,
        run=lambda w: f"{OUT}/pretrain/{w.area}_{w.init}/seed{w.seed}",
    threads: THREADS
    resources:
        gpu=0 if S.device == "cpu" else 1,
    log:
        f"{OUT}/logs/pretrain/{{area}}_{{init}}_seed{{seed}}.log",
    shell:
        "{PRETRAIN_LAUNCH} pretrain_source.py --manifest {input.manifest} --init {params.init} {WEIGHTS} "
        "{EXCLUDE} --out {params.run} --epochs {S.epochs_pretrain} {TRAIN} --seed {wildcards.seed} "
        "--restart-if-changed > {log} 2>&1"


rule pretrain_all:  # All_RI, All_IN: the three sources aggregated (22 labels), each image equally likely
    input:
        manifests=[manifest(key) for key in study.SOURCES],
        cache=cached(study.SOURCES),
        overlap=ancient(lambda w: checkpoints.overlap.get().output[0]),
    output:
        f"{OUT}/pretrain/All_{{init}}/seed{{seed}}/summary.json",
    params:
        init=lambda w: "random" if w.init == "RI" else "imagenet",
        left_out=lambda w: left_out(list(study.SOURCES))(w),
        settings=PRETRAIN,
        run=lambda w: f"{OUT}/pretrain/All_{w.init}/seed{w.seed}",
    threads: THREADS
    resources:
        gpu=0 if S.device == "cpu" else 1,
    log:
        f"{OUT}/logs/pretrain/All_{{init}}_seed{{seed}}.log",
    shell:
        "{PRETRAIN_LAUNCH} pretrain_all.py --manifests {input.manifests} --init {params.init} {WEIGHTS} "
        "{EXCLUDE} --out {params.run} --epochs {S.epochs_pretrain} {TRAIN} --seed {wildcards.seed} "
        "--restart-if-changed > {log} 2>&1"


rule pretrain_all_balanced:  # All_RI_bal, All_IN_bal (balanced_all): each source drawn by its balanced share
    input:
        manifests=[manifest(key) for key in study.SOURCES],
        cache=cached(study.SOURCES),
        overlap=ancient(lambda w: checkpoints.overlap.get().output[0]),
    output:
        f"{OUT}/pretrain/All_{{init}}_bal/seed{{seed}}/summary.json",
    params:
        init=lambda w: "random" if w.init == "RI" else "imagenet",
        left_out=lambda w: left_out(list(study.SOURCES))(w),
        settings={**PRETRAIN, "balance": S.balanced_all},
        run=lambda w: f"{OUT}/pretrain/All_{w.init}_bal/seed{w.seed}",
    threads: THREADS
    resources:
        gpu=0 if S.device == "cpu" else 1,
    log:
        f"{OUT}/logs/pretrain/All_{{init}}_bal_seed{{seed}}.log",
    shell:
        "{PRETRAIN_LAUNCH} pretrain_all.py --manifests {input.manifests} --init {params.init} {WEIGHTS} "
        "{EXCLUDE} --balance {S.balanced_all} --out {params.run} --epochs {S.epochs_pretrain} {TRAIN} "
        "--seed {wildcards.seed} --restart-if-changed > {log} 2>&1"


def finetune_init(wildcards):
    """The arm's --init: random, imagenet, an extra arm's file, or the pretrained model's last.pt."""
    _, _, seed = study.parse_run(wildcards.run)
    return study.init_of(TARGETS[wildcards.target], wildcards.arm, seed, S)


def finetune_input(wildcards):
    """What an arm waits for: an extra arm's file itself, a pretrained model's summary.json, or nothing."""
    init = finetune_init(wildcards)
    if wildcards.arm in dict(S.extra_arms):
        return [init]
    return [init.replace("last.pt", "summary.json")] if init.endswith("last.pt") else []


rule finetune:  # one arm of a target: a seed, a strategy, a train fraction
    input:
        manifest=lambda w: manifest(w.target),
        cache=lambda w: cached([w.target]),
        pretrained=finetune_input,
    output:
        f"{OUT}/finetune/{{target}}/{{arm}}/{{run}}/summary.json",
    wildcard_constraints:
        arm="|".join(study.arm_names(S)),
        run=rf"(({'|'.join(study.STRATEGIES)})_)?(frac[0-9.]+_)?seed\d+",
    params:
        init=finetune_init,
        strategy=lambda w: study.parse_run(w.run)[0],
        fraction=lambda w: study.parse_run(w.run)[1],
        seed=lambda w: study.parse_run(w.run)[2],
        settings={"epochs": S.epochs_finetune, "image_size": S.image_size, "batch_size": S.batch_size},
        run=lambda w: f"{OUT}/finetune/{w.target}/{w.arm}/{w.run}",
    threads: THREADS
    resources:
        gpu=0 if S.device == "cpu" else 1,
    log:
        f"{OUT}/logs/finetune/{{target}}_{{arm}}_{{run}}.log",
    shell:
        "{FINETUNE_LAUNCH} finetune_target.py --manifest {input.manifest} --init {params.init} {WEIGHTS} "
        "--out {params.run} --epochs {S.epochs_finetune} {TRAIN} --seed {params.seed} --strategy {params.strategy} "
        "--train-fraction {params.fraction} --restart-if-changed > {log} 2>&1"


def target_runs(target):
    return [f"{OUT}/finetune/{target}/{arm}/{name}" for arm, name, *_ in study.runs(TARGETS[target], S, HAVE_IN)]


rule evaluate:  # every run of a target, its best-validation and last checkpoint, on the test split, in one process
    input:
        runs=lambda w: [f"{run}/summary.json" for run in target_runs(w.target)],
        manifest=lambda w: manifest(w.target),
        overlap=f"{OUT}/overlap/overlap.csv",
    output:
        touch(f"{OUT}/eval/{{target}}/.evaluated"),
    params:
        checkpoints=lambda w: " ".join(f"{run}/{kind}.pt" for run in target_runs(w.target) for kind in ("best", "last")),
    threads: THREADS
    resources:
        gpu=0 if S.device == "cpu" else 1,
    log:
        f"{OUT}/logs/evaluate/{{target}}.log",
    shell:
        "{GPU}{PYTHON} evaluate.py --checkpoint {params.checkpoints} --relative-to {OUT}/finetune/{wildcards.target} "
        "--manifest {input.manifest} --split test --out {OUT}/eval/{wildcards.target} --device {S.device} "
        "--workers {S.workers} --overlap {input.overlap} {SEEN} > {log} 2>&1"


rule report:  # figures, tables and report.md, once every evaluation is done
    input:
        [f"{OUT}/eval/{target}/.evaluated" for target in TARGETS],
        f"{OUT}/study.json",
    output:
        f"{OUT}/report.md",
    log:
        f"{OUT}/logs/report.log",
    shell:
        "{PYTHON} plot_results.py --runs {OUT} --out {OUT} > {log} 2>&1"
