#!/usr/bin/env bash
# The whole study (paper Section 5) as a make-like recipe: a stage whose outputs exist is skipped,
# FORCE=1 redoes everything. Configure with environment variables:
#
#   bash study.sh                                   # the demo: generated data, CPU, minutes
#   JOBS=2 bash study.sh                            # independent runs side by side (cores split among them)
#   DATA=/data/study SEEDS="0 1 2" bash study.sh    # the real study into runs/full (README, "Full data")
#   DATA=/data/study SEEDS="0 1 2" TRAIN_FRACTIONS="0.05 0.1 0.25 1" bash study.sh   # + label efficiency
#   DATA=/data/study JOBS=8 GPUS="0 1 2 3 4 5 6 7" bash study.sh                       # one GPU per run, 8 at once
#   LAUNCH="torchrun --nproc_per_node=8" DATA=/data/study bash study.sh              # every run on 8 GPUs
#   JOBS=32 JOB_LAUNCHER="srun --ntasks=1 --gpus-per-task=1 --exclusive" DATA=... bash study.sh   # in a SLURM allocation
#   IMAGENET_WEIGHTS=~/densenet121-a639ec97.pth bash study.sh
#
# Stages: demo data -> manifests -> the same picture in a source and a target (OUT/overlap/, left out of
# pretraining unless OVERLAP=keep) -> 8 pretrained models per seed -> 25 fine-tuned arms per seed and
# train fraction -> test-split evaluation of each run's best and last checkpoint (with bootstrap
# CIs) -> figures, tables (Table 2 with CIs, paired comparisons, convergence) and OUT/report.md.
# study.sh writes each stage as a job into OUT/.study/Makefile and lets GNU make run them in
# dependency order (a fine-tune after its pretraining, an evaluation after its target's runs,
# the report last), JOBS at a time; a failed job stops the study with its log's last lines and
# the same command continues it.
#
# Run layout (plot_results.py finds runs by walking these folders and reading args.json):
#   OUT/pretrain/<NAME>/seed<S>/                      NAME = CXR_RI ... All_IN
#   OUT/finetune/<target>/<arm>/seed<S>/              the full train split
#   OUT/finetune/<target>/<arm>/frac<F>_seed<S>/      a nested, stratified, patient-level fraction F < 1
#   OUT/eval/<target>/<arm>/<run>/{best,last}/        evaluate.py outputs of that run's two checkpoints
#   OUT/.study/logs/<job>.log                         each job's output when JOBS > 1
#   OUT/study_settings.txt, OUT/study.json            this study's settings; study.json (data, ImageNet weights
#                                                     found or why not, sizes, epochs, seeds) feeds report.md
# A seed seeds the whole pipeline: the arms of seed S fine-tune from the models pretrained with
# seed S, so the spread across seeds includes the pretraining's (the paper's question is about
# pretraining; holding it fixed would understate the noise). Pretraining is the expensive part:
# PRETRAIN_SEED=S pretrains once, with seed S, and every seed's arms start from those models.
# The splits do not depend on SEEDS (SPLIT_SEED), so every run is tested on the same images and
# arms can be compared image by image.
#
# LAUNCH starts the pretraining runs and FINETUNE_LAUNCH the fine-tuning runs (default: $PYTHON);
# e.g. LAUNCH="torchrun --nproc_per_node=8" runs a pretraining with DDP on all 8 GPUs. With GPUS
# set, a job launched through torchrun waits for every GPU of GPUS, any other job takes one free
# GPU. Data preparation, evaluation and plotting always run as one $PYTHON process.
set -euo pipefail
usage() {  # the header above, then every setting with its default (demo / DATA set) and meaning
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
  echo; echo "Settings (environment variables; defaults as NAME=\${NAME:-default}):"
  grep -E '^ *[A-Z_]+=\$\{[A-Z_]+:-' "$0" | sed -E 's/^ +/  /; s/^([A-Z])/  \1/'
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) echo "error: study.sh takes no arguments ('$1'); its settings are environment variables, e.g." \
          "SEEDS=\"0 1 2\" bash study.sh (bash study.sh --help lists them)" >&2; exit 2 ;;
esac
# Paths given by the caller are taken relative to the caller's folder; the defaults live in the repo.
absolute() { [[ -z "$1" || "$1" == /* ]] && printf '%s' "$1" || printf '%s/%s' "$PWD" "$1"; }
DATA=$(absolute "${DATA:-}")
DATA_GIVEN=$DATA  # empty for the demo (DATA is set to OUT/demo_data below)
OUT=$(absolute "${OUT:-}")
IMAGENET_WEIGHTS=$(absolute "${IMAGENET_WEIGHTS:-}")
CALLER=$PWD                         # custom TARGETS paths are taken from here
cd "$(dirname "$0")"
REPO=$PWD

# --------------------------------------------------------------------------- settings
# One line each: NAME=${NAME:-default}  # meaning. demo_or_full A B: A on the demo (no DATA), B on real data.
demo_or_full() { if [[ -z "$DATA" ]]; then printf '%s' "$1"; else printf '%s' "$2"; fi; }
DATA=${DATA:-}                      # folder holding the 8 dataset folders (README); unset: generated demo data
OUT=${OUT:-$(demo_or_full runs/demo runs/full)}  # everything the study writes
IMAGE_SIZE=${IMAGE_SIZE:-$(demo_or_full 64 224)}  # input side in px (224: the paper's)
EPOCHS_PRETRAIN=${EPOCHS_PRETRAIN:-$(demo_or_full 3 30)}  # epochs of each pretraining run (paper: not stated)
EPOCHS_FINETUNE=${EPOCHS_FINETUNE:-$(demo_or_full 6 30)}  # epochs of each fine-tuning run (paper: not stated)
BATCH_SIZE=${BATCH_SIZE:-$(demo_or_full 16 32)}  # images per step and process (paper: not stated)
WORKERS=${WORKERS:-$(demo_or_full 0 8)}  # image-decoding processes per run (tiny demo images: none)
DEVICE=${DEVICE:-auto}              # auto | cpu | cuda
JOBS=${JOBS:-1}                     # runs at once; on the CPU the cores are split among them
THREADS=${THREADS:-}                # CPU threads per job; unset: the cores / JOBS (the numbers depend on it on a CPU)
GPUS=${GPUS:-}                      # GPU ids to share among the jobs, e.g. "0 1 2 3": one GPU per job
JOB_LAUNCHER=${JOB_LAUNCHER:-}      # a prefix for every job, e.g. "srun --ntasks=1 --gpus-per-task=1 --exclusive" (SLURM)
SEEDS=${SEEDS:-${SEED:-0}}          # training seeds (init, augmentation, data order), e.g. "0 1 2"; SEED = one seed
SPLIT_SEED=${SPLIT_SEED:-0}         # fixes the demo data and the train/val/test splits (same for every seed)
PRETRAIN_SEED=${PRETRAIN_SEED:-}    # unset: pretrain per seed; S: pretrain once with seed S for all seeds
TRAIN_FRACTIONS=${TRAIN_FRACTIONS:-1}  # fine-tuning train-split fractions in (0, 1], e.g. "0.05 0.1 0.25 1"
DEMO_SCALE=${DEMO_SCALE:-1}         # demo size multiplier
CACHE=${CACHE:-1}                   # 1: decode + resize every image once into a uint8 cache (kit/cache.py); 0: decode each epoch
IMAGENET_WEIGHTS=${IMAGENET_WEIGHTS:-}  # torchvision's densenet121-a639ec97.pth; unset: torch hub cache, else download
FORCE=${FORCE:-0}                   # 1 = redo every stage (and adopt changed settings); a later plain run continues
PYTHON=${PYTHON:-python}            # the Python that runs every stage
LAUNCH=${LAUNCH:-$PYTHON}           # starts the pretraining runs, e.g. "torchrun --nproc_per_node=8"
FINETUNE_LAUNCH=${FINETUNE_LAUNCH:-$LAUNCH}  # starts the fine-tuning runs
TARGETS=${TARGETS:-shenzhen covid19_radiography kather2016 messidor deepdrid}  # D1..D5, and your own: NAME=MANIFEST or NAME=FOLDER:DOMAIN
ARMS=${ARMS:-IN Domain_RI Domain_IN All_RI All_IN}  # the paper's five; add RI (random init, no pretraining) for the floor
SOURCE_PROTOCOL=${SOURCE_PROTOCOL:-paper}  # sources: paper = every image, 90/10 train/val (Section 5.2); held-out-test = + a test split
STRATEGIES=${STRATEGIES:-full}      # fine-tuning strategies, a set of arms each: full, partial, linear (finetune_target.py --strategy)
OVERLAP=${OVERLAP:-drop}            # drop: source images that are pictures of a target stay out of pretraining (check_overlap.py); keep: the paper's way, flagged in report.md
read -ra SEED_LIST <<< "$SEEDS"
read -ra FRACTION_LIST <<< "$TRAIN_FRACTIONS"
read -ra GPU_LIST <<< "$GPUS"

SOURCES=(chestxray14 breakhis eyepacs)
read -ra TARGET_SPECS <<< "$TARGETS"
read -ra ARM_LIST <<< "$ARMS"
read -ra STRATEGY_LIST <<< "$STRATEGIES"
declare -A AREA=([chestxray14]=CXR [breakhis]=HWSI [eyepacs]=EFI
                 [shenzhen]=CXR [covid19_radiography]=CXR [kather2016]=HWSI [messidor]=EFI [deepdrid]=EFI)
declare -A AREA_OF_DOMAIN=([cxr]=CXR [hwsi]=HWSI [efi]=EFI [other]="")
TRAIN_FLAGS=(--image-size "$IMAGE_SIZE" --batch-size "$BATCH_SIZE" --device "$DEVICE" --workers "$WORKERS")
JOB_DIR="$OUT/.study"               # the generated Makefile, one script per job, the jobs' logs

# --------------------------------------------------------------------------- checks before any work
fail() { echo "error: $*" >&2; exit 2; }
[[ -z "$IMAGENET_WEIGHTS" || -f "$IMAGENET_WEIGHTS" ]] || fail "IMAGENET_WEIGHTS=$IMAGENET_WEIGHTS is not a file"
for seed in "${SEED_LIST[@]}" $PRETRAIN_SEED; do
  [[ "$seed" =~ ^[0-9]+$ ]] || fail "seed '$seed' in SEEDS/PRETRAIN_SEED is not a whole number >= 0"
done
(( ${#SEED_LIST[@]} )) || fail "SEEDS is empty"
for fraction in "${FRACTION_LIST[@]}"; do
  awk -v f="$fraction" 'BEGIN { exit !(f ~ /^[0-9]*\.?[0-9]+$/ && f > 0 && f <= 1) }' \
    || fail "train fraction '$fraction' in TRAIN_FRACTIONS is not a number in (0, 1]"
done
(( ${#FRACTION_LIST[@]} )) || fail "TRAIN_FRACTIONS is empty"
(( ${#TARGET_SPECS[@]} )) || fail "TARGETS is empty"
# A target is a paper target's key, or your own: NAME=MANIFEST (a manifest prepare_data.py wrote, e.g. from a
# table with --dataset csv; its domain comes from its .json) or NAME=FOLDER:DOMAIN (<class>/[<patient>/]<image>).
TARGETS=()
declare -A CUSTOM=()                # NAME -> "manifest PATH" or "folder PATH DOMAIN"
for spec in "${TARGET_SPECS[@]}"; do
  if [[ "$spec" != *=* ]]; then
    [[ -n "${AREA[$spec]:-}" && " ${SOURCES[*]} " != *" $spec "* ]] \
      || fail "TARGETS: unknown target '$spec' (the paper's: shenzhen covid19_radiography kather2016 messidor deepdrid;" \
              "your own: NAME=MANIFEST.csv or NAME=FOLDER:DOMAIN)"
    TARGETS+=("$spec"); continue
  fi
  name=${spec%%=*} path=${spec#*=} domain=
  [[ "$name" =~ ^[A-Za-z0-9_-]+$ && -z "${AREA[$name]:-}" ]] || fail "TARGETS: '$name' is not a plain new name (letters, digits, _ -)"
  [[ "$path" =~ ^(.*):(cxr|hwsi|efi|other)$ ]] && path=${BASH_REMATCH[1]} domain=${BASH_REMATCH[2]}
  path=$(cd "$CALLER" && realpath -m -- "$path")
  if [[ -d "$path" ]]; then
    [[ -n "$domain" ]] || fail "TARGETS: $name=$path is a folder; say its domain: $name=$path:cxr|hwsi|efi|other"
    CUSTOM[$name]="folder $path $domain"
  elif [[ -f "$path" && -f "${path%.*}.json" ]]; then
    [[ -z "$domain" ]] || fail "TARGETS: $name=$path is a manifest; its domain is in ${path%.*}.json, not after ':'"
    domain=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["domain"])' "${path%.*}.json") \
      || fail "TARGETS: ${path%.*}.json is not a manifest sidecar written by prepare_data.py"
    CUSTOM[$name]="manifest $path"
  else
    fail "TARGETS: $name=$path is neither a folder nor a manifest with its .json (prepare a table first:" \
         "python prepare_data.py --dataset csv --root TABLE --domain DOMAIN --name $name --out DIR ...)"
  fi
  [[ -v "AREA_OF_DOMAIN[$domain]" ]] || fail "TARGETS: $name: unknown domain '$domain'"
  AREA[$name]=${AREA_OF_DOMAIN[$domain]:-none}
  TARGETS+=("$name")
done
for arm in "${ARM_LIST[@]}"; do
  [[ " RI IN Domain_RI Domain_IN All_RI All_IN " == *" $arm "* ]] || fail "ARMS: unknown arm '$arm' (RI IN Domain_RI Domain_IN All_RI All_IN)"
done
for strategy in "${STRATEGY_LIST[@]}"; do
  [[ " full partial linear " == *" $strategy "* ]] || fail "STRATEGIES: unknown strategy '$strategy' (full partial linear)"
done
(( ${#ARM_LIST[@]} && ${#STRATEGY_LIST[@]} )) || fail "ARMS and STRATEGIES must not be empty"
[[ "$SOURCE_PROTOCOL" == paper || "$SOURCE_PROTOCOL" == held-out-test ]] \
  || fail "SOURCE_PROTOCOL=$SOURCE_PROTOCOL: choose paper or held-out-test"
[[ "$OVERLAP" == drop || "$OVERLAP" == keep ]] || fail "OVERLAP=$OVERLAP: choose drop (no target picture in pretraining) or keep"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || fail "JOBS=$JOBS is not a whole number >= 1"
[[ -z "$THREADS" || "$THREADS" =~ ^[1-9][0-9]*$ ]] || fail "THREADS=$THREADS is not a whole number >= 1"
for gpu in "${GPU_LIST[@]}"; do [[ "$gpu" =~ ^[0-9]+$ ]] || fail "GPUS: '$gpu' is not a GPU index"; done
command -v make >/dev/null || fail "study.sh runs its jobs with GNU make, which is not installed (apt install make)"
is_one() { awk -v f="$1" 'BEGIN { exit !(f == 1) }'; }
[[ -z "$DATA" || -d "$DATA" ]] || fail "DATA=$DATA is not a folder (it must hold one folder per dataset; see README, 'Full data')"
start=$(date +%s)
mkdir -p "$OUT"
# One study.sh per OUT at a time: the kernel holds the lock on fd 9 until this script and the
# stages it started have ended (also when killed), so a stale lock never blocks a rerun.
exec 9>>"$OUT/.study.lock"
flock -n 9 || fail "$OUT is in use by another study.sh ($(cat "$OUT/.study.lock")); wait for it to finish, or choose another OUT=..."
echo "pid $$ on $(hostname) since $(date -Iseconds)" > "$OUT/.study.lock"
# Skipping finished stages is only right while the settings stay the same: a study folder
# remembers its settings and refuses others (a demo run must never pass for the real study).
# SEEDS, TRAIN_FRACTIONS, TARGETS, ARMS, STRATEGIES and JOBS are not among them: they add runs or
# change speed only.
SETTINGS="data=${DATA:-demo scale $DEMO_SCALE} image_size=$IMAGE_SIZE epochs_pretrain=$EPOCHS_PRETRAIN"
SETTINGS+=" epochs_finetune=$EPOCHS_FINETUNE batch_size=$BATCH_SIZE split_seed=$SPLIT_SEED"
SETTINGS+=" pretrain_seed=${PRETRAIN_SEED:-per-seed} source_protocol=$SOURCE_PROTOCOL overlap=$OVERLAP"
SETTINGS_FILE="$OUT/study_settings.txt"
if [[ "$FORCE" != 1 && -f "$SETTINGS_FILE" && "$(cat "$SETTINGS_FILE")" != "$SETTINGS" ]]; then
  fail "$OUT holds a study with other settings (was: $(cat "$SETTINGS_FILE"); now: $SETTINGS)." \
       "Use another OUT=..., or FORCE=1 to redo every stage there with the new settings."
fi
if [[ "$FORCE" == 1 || ! -f "$SETTINGS_FILE" ]]; then
  echo "$SETTINGS" > "$SETTINGS_FILE"  # a new file time: every output made before it is stale from now on
fi
[[ -n "$DATA" ]] || DATA="$OUT/demo_data"

# --------------------------------------------------------------------------- ImageNet weights
# The IN-based models need torchvision's DenseNet-121 weights. Never faked: without them the
# IN, Domain_IN and All_IN arms are skipped and Table 2 shows n/a.
IMAGENET_FLAGS=()
WEIGHTS=
if WEIGHTS=$("$PYTHON" -c 'import sys; from kit import models; print(models.find_imagenet_weights(sys.argv[1] or None))' \
             "$IMAGENET_WEIGHTS" 2>"$OUT/imagenet_weights.log"); then
  HAVE_IN=1
  IMAGENET_FLAGS=(--imagenet-weights "$WEIGHTS")
  printf '\n=== ImageNet weights: %s\n' "$WEIGHTS"
else
  HAVE_IN=0
  WEIGHTS=
  echo "!!! NO IMAGENET WEIGHTS (offline and no densenet121-a639ec97.pth; details in $OUT/imagenet_weights.log):" \
       "skipping CXR_IN HWSI_IN EFI_IN All_IN and the IN Domain_IN All_IN arms (n/a in Table 2). To run all five arms," \
       "download https://download.pytorch.org/models/densenet121-a639ec97.pth and rerun with IMAGENET_WEIGHTS=/path/to/densenet121-a639ec97.pth" >&2
fi
INITS=(RI); [[ $HAVE_IN == 1 ]] && INITS=(RI IN)

# What this study is, for plot_results.py's report (OUT/study.json, rewritten on every run): the data
# (demo or the DATA folder), whether ImageNet weights were found and why not, and the settings.
"$PYTHON" - "$OUT/study.json" "${DATA_GIVEN:-demo}" "$DEMO_SCALE" "$HAVE_IN" "${WEIGHTS:-}" "$OUT/imagenet_weights.log" \
  "$IMAGE_SIZE" "$EPOCHS_PRETRAIN" "$EPOCHS_FINETUNE" "$BATCH_SIZE" "$SEEDS" "$SPLIT_SEED" "${PRETRAIN_SEED:-}" \
  "$TRAIN_FRACTIONS" "${TARGETS[*]}" "$SOURCE_PROTOCOL" "$ARMS" "$STRATEGIES" "$OVERLAP" <<'PY'
import json, re, sys
from pathlib import Path
from kit import files
(path, data, scale, have_in, weights, log, size, ep_pre, ep_ft, batch, seeds, split_seed, pretrain_seed,
 fractions, targets, protocol, arms, strategies, overlap) = sys.argv[1:]
reason = [line for line in Path(log).read_text().splitlines() if line.strip()] if Path(log).is_file() else []
files.write_text_atomic(path, json.dumps({
    "data": data, "demo": data == "demo", "demo_scale": float(scale) if data == "demo" else None,
    "imagenet_weights": weights or None, "imagenet_found": have_in == "1",
    "imagenet_missing_reason": None if have_in == "1" else re.sub(r"^[\w.]+: ", "", reason[-1] if reason else "not found"),
    "image_size": int(size), "epochs_pretrain": int(ep_pre), "epochs_finetune": int(ep_ft), "batch_size": int(batch),
    "seeds": [int(s) for s in seeds.split()], "split_seed": int(split_seed),
    "pretrain_seed": int(pretrain_seed) if pretrain_seed else None,
    "train_fractions": [float(f) for f in fractions.split()], "targets": targets.split(),
    "source_protocol": protocol, "arms": arms.split(), "strategies": strategies.split(), "overlap": overlap},
    indent=2) + "\n")
PY

# --------------------------------------------------------------------------- the stages
# Each stage skips itself when done: done_already OUTPUT [INPUT...] is true when OUTPUT exists and
# neither an INPUT (a re-run pretraining redoes the arms built on it) nor the study's settings file
# is newer than it: FORCE=1 rewrites that file, so every output made before is redone, also by a
# later plain run that continues an interrupted FORCE=1 run.
say() { printf '\n=== %s\n' "$*"; }
done_already() {
  local output=$1 input; shift
  [[ -e "$output" ]] || return 1
  for input in "$SETTINGS_FILE" "$@"; do [[ "$input" -nt "$output" ]] && return 1; done
  return 0
}
# resume_flag RUN [INPUT...]: a run folder whose last.pt predates the settings file or an INPUT starts over
# (--no-resume): its checkpoint belongs to the settings before a FORCE=1, or to other data (a changed
# overlap.csv); a newer one is this study's, resumed.
resume_flag() {
  local run=$1 input; shift
  for input in "$SETTINGS_FILE" "$@"; do
    if [[ -e "$run/last.pt" && ! "$run/last.pt" -nt "$input" ]]; then echo --no-resume; return; fi
  done
  echo --resume
}
init_flag() { [[ $1 == RI ]] && echo random || echo imagenet; }

demo_data() {
  if done_already "$DATA/deepdrid"; then say "demo data: $DATA exists, skipped"; return; fi
  say "demo data -> $DATA"
  "$PYTHON" tools/make_demo_data.py --out "$DATA" --seed "$SPLIT_SEED" --scale "$DEMO_SCALE" --overwrite
}

# Sources: SOURCE_PROTOCOL (the paper's: every image, 90/10 train/val, no test split); targets:
# patient-level train/val/test (prepare_data.py --protocol held-out-test, their only protocol).
manifest() {  # manifest KEY [folder PATH DOMAIN | manifest PATH]: a paper dataset from DATA, or your own target
  local key=$1 kind=${2:-} path=${3:-} domain=${4:-} protocol=held-out-test
  if done_already "$OUT/manifests/$key.csv" ${path:+"$path"}; then say "manifest $key: exists, skipped"; return; fi
  say "manifest $key${path:+ from $path}"
  case "$kind" in
    "") [[ " ${SOURCES[*]} " == *" $key "* ]] && protocol=$SOURCE_PROTOCOL
        "$PYTHON" prepare_data.py --dataset "$key" --root "$DATA/$key" --out "$OUT/manifests" --seed "$SPLIT_SEED" \
          --protocol "$protocol" ;;
    folder) "$PYTHON" prepare_data.py --dataset folder --root "$path" --domain "$domain" --name "$key" \
              --out "$OUT/manifests" --seed "$SPLIT_SEED" ;;
    manifest) "$PYTHON" -c 'import sys; from kit import manifests; manifests.adopt(*sys.argv[1:])' \
                "$path" "$key" "$OUT/manifests" ;;
  esac
}

# Load, crop and resize each image once at IMAGE_SIZE (what limits a GPU at paper scale is
# decoding); training and evaluation find the cache next to the manifests. Up-to-date caches
# are kept, so this costs a second when nothing changed.
preprocessing_cache() {  # preprocessing_cache MANIFEST...
  say "preprocessing cache at $IMAGE_SIZE px"
  "$PYTHON" prepare_data.py --manifest "$@" --cache-size "$IMAGE_SIZE" --no-progress  # all cores: nothing runs beside it
}

# Which source images are pictures of a target (and which targets hold a picture twice in two splits):
# OUT/overlap/overlap.csv, rewritten only when what it finds changes (so pretraining is redone only then);
# overlap.json, rewritten every time, marks the stage done.
check_overlap() {  # check_overlap TARGET_MANIFEST...
  local sources=() key
  for key in "${SOURCES[@]}"; do sources+=("$OUT/manifests/$key.csv"); done
  if done_already "$OUT/overlap/overlap.json" "${sources[@]}" "$@"; then say "overlap: checked, skipped"; return; fi
  say "the same picture in a source and a target, or in two splits of a target"
  "$PYTHON" check_overlap.py --sources "${sources[@]}" --targets "$@" --out "$OUT/overlap" --no-progress
}

# pretrain NAME SEED SCRIPT FLAG INPUT...: one pretrained model into OUT/pretrain/NAME/seedSEED; NAME
# ends in _RI or _IN (the init), FLAG INPUT... are the script's manifest flag and files. OVERLAP=drop:
# the source images that are pictures of a target are left out (--exclude-overlap).
pretrain() {
  local name=$1 seed=$2 script=$3 flag=$4; shift 4
  local run="$OUT/pretrain/$name/seed$seed" launch exclude=()
  [[ $OVERLAP == drop ]] && exclude=(--exclude-overlap "$OUT/overlap/overlap.csv")
  if done_already "$run/summary.json" "$@" "${exclude[@]:1}"; then say "pretrain $name seed $seed: done, skipped"; return; fi
  say "pretrain $name seed $seed"
  read -ra launch <<< "$LAUNCH"
  "${launch[@]}" "$script" "$flag" "$@" "${exclude[@]}" --init "$(init_flag "${name##*_}")" "${IMAGENET_FLAGS[@]}" \
    --out "$run" --epochs "$EPOCHS_PRETRAIN" "${TRAIN_FLAGS[@]}" --seed "$seed" "$(resume_flag "$run" "${exclude[@]:1}")"
}

# finetune TARGET ARM RUN_NAME SEED INIT [--train-fraction F]: one arm into OUT/finetune/TARGET/ARM/RUN_NAME.
finetune() {
  local target=$1 arm=$2 name=$3 seed=$4 init=$5; shift 5
  local run="$OUT/finetune/$target/$arm/$name" init_file=$init launch
  [[ $init == imagenet ]] && init_file=$WEIGHTS
  [[ $init == random ]] && init_file=
  if done_already "$run/summary.json" "$OUT/manifests/$target.csv" ${init_file:+"$init_file"}; then
    say "finetune $target/$arm/$name: done, skipped"; return
  fi
  say "finetune $target/$arm/$name (init $init)"
  read -ra launch <<< "$FINETUNE_LAUNCH"
  "${launch[@]}" finetune_target.py --manifest "$OUT/manifests/$target.csv" --init "$init" "${IMAGENET_FLAGS[@]}" \
    --out "$run" --epochs "$EPOCHS_FINETUNE" "${TRAIN_FLAGS[@]}" --seed "$seed" "$@" "$(resume_flag "$run")"
}

# evaluate TARGET RUN...: the best-validation and last checkpoint of each run not evaluated yet, on
# the held-out test split, in one process (each evaluation folder appears whole).
evaluate() {
  local target=$1 run kind todo=(); shift
  for run in "$@"; do
    for kind in best last; do
      done_already "$OUT/eval/$target/${run#"$OUT/finetune/$target/"}/$kind/metrics.csv" "$run/$kind.pt" \
        || todo+=("$run/$kind.pt")
    done
  done
  if (( ! ${#todo[@]} )); then say "evaluate $target: done, skipped"; return; fi
  say "evaluate $target on the test split (${#todo[@]} checkpoints)"
  local seen=(--overlap "$OUT/overlap/overlap.csv")  # a test picture that pretraining saw: refused, or (keep) counted
  [[ $OVERLAP == keep ]] && seen+=(--allow-pretraining-overlap)
  "$PYTHON" evaluate.py --checkpoint "${todo[@]}" --relative-to "$OUT/finetune/$target" \
    --manifest "$OUT/manifests/$target.csv" --split test --out "$OUT/eval/$target" --device "$DEVICE" \
    --workers "$WORKERS" "${seen[@]}"
}

report() {
  say "figures, tables and report"
  "$PYTHON" plot_results.py --runs "$OUT" --out "$OUT"
}

# --------------------------------------------------------------------------- jobs: who runs a stage, where
# Every stage runs as a job of the generated Makefile. With JOBS > 1 a job's output goes to its log
# (a line says when it starts and ends) and the CPU cores are split among the jobs: each process
# is told so (STUDY_JOBS) and uses cores / JOBS threads. With GPUS, a job takes one free GPU of
# GPUS (a job launched through torchrun all of them) for its lifetime. On a CPU the threads of a
# process change the order of floating-point sums, so the numbers depend on THREADS: JOBS=2 gives
# the numbers of JOBS=1 at the same THREADS.
job_cores() { local cores; cores=$(nproc); (( cores / JOBS > 0 )) && echo $(( cores / JOBS )) || echo 1; }
take_gpus() {  # take_gpus one|all: set CUDA_VISIBLE_DEVICES to GPUs held (flock) until the job ends
  local gpu fd held=()
  if [[ $1 == all ]]; then
    for gpu in "${GPU_LIST[@]}"; do exec {fd}>"$JOB_DIR/gpu$gpu.lock"; flock "$fd"; held+=("$gpu"); done
  else
    while (( ! ${#held[@]} )); do
      for gpu in "${GPU_LIST[@]}"; do
        exec {fd}>"$JOB_DIR/gpu$gpu.lock"
        if flock -n "$fd"; then held=("$gpu"); break; fi
        exec {fd}>&-
      done
      (( ${#held[@]} )) || sleep 1
    done
  fi
  CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${held[*]}")
  export CUDA_VISIBLE_DEVICES
}
run_job() {  # run_job ID GPU_NEED STAGE ARGS...: called by the job's script (OUT/.study/ID.sh)
  local id=$1 need=$2 log="$JOB_DIR/logs/$1.log" began; shift 2
  export STUDY_JOBS=$JOBS OMP_NUM_THREADS=${THREADS:-${OMP_NUM_THREADS:-$(job_cores)}}
  (( ${#GPU_LIST[@]} )) && [[ $need != none ]] && take_gpus "$need"
  if (( JOBS == 1 )); then "$@"; return; fi
  began=$(date +%s)
  echo "[$(date +%T)] start $id${CUDA_VISIBLE_DEVICES:+ on GPU $CUDA_VISIBLE_DEVICES}"
  if "$@" > "$log" 2>&1; then
    echo "[$(date +%T)] done  $id ($(( $(date +%s) - began )) s)"
  else
    echo "=== FAILED: $id; the last lines of $log:" >&2
    tail -n 25 "$log" >&2
    return 1
  fi
}

rm -rf "$JOB_DIR"
mkdir -p "$JOB_DIR/logs"
{ declare -p OUT DATA REPO PYTHON LAUNCH FINETUNE_LAUNCH JOBS THREADS GPU_LIST SETTINGS_FILE SPLIT_SEED DEMO_SCALE \
             SOURCES SOURCE_PROTOCOL OVERLAP \
             IMAGE_SIZE EPOCHS_PRETRAIN EPOCHS_FINETUNE DEVICE WORKERS TRAIN_FLAGS IMAGENET_FLAGS WEIGHTS JOB_DIR
  declare -f say done_already resume_flag init_flag demo_data manifest preprocessing_cache check_overlap pretrain finetune \
             evaluate report job_cores take_gpus run_job
} > "$JOB_DIR/lib.sh"
ALL=()
# job ID "DEPENDENCIES" GPU_NEED STAGE ARGS...: a Makefile rule that runs the stage, after its dependencies.
job() {
  local id=$1 after=$2 need=$3; shift 3
  {
    echo 'set -euo pipefail'
    printf 'source %q\ncd %q\n' "$JOB_DIR/lib.sh" "$REPO"
    printf 'run_job %q %q' "$id" "$need"; printf ' %q' "$@"; printf '\n'
  } > "$JOB_DIR/$id.sh"
  printf '%s: %s\n\t@%s bash %s\n' "$id" "$after" "$JOB_LAUNCHER" "$(printf '%q' "$JOB_DIR/$id.sh" | sed 's/\$/$$/g')" \
    >> "$JOB_DIR/Makefile"
  ALL+=("$id")
}
gpu_need() { [[ $1 == *torchrun* ]] && echo all || echo one; }

# --------------------------------------------------------------------------- the recipe
# data: demo data (unless DATA is set), one manifest per dataset, the preprocessing cache
DATA_JOB=""
if [[ "$DATA" == "$OUT/demo_data" ]]; then job demo_data "" none demo_data; DATA_JOB=demo_data; fi
MANIFEST_JOBS=() MANIFESTS=()
for key in "${SOURCES[@]}" "${TARGETS[@]}"; do
  read -ra custom <<< "${CUSTOM[$key]:-}"
  job "manifest_$key" "$([[ -z "${CUSTOM[$key]:-}" ]] && echo "$DATA_JOB")" none manifest "$key" "${custom[@]}"
  MANIFEST_JOBS+=("manifest_$key") MANIFESTS+=("$OUT/manifests/$key.csv")
done
READY="${MANIFEST_JOBS[*]}"
if [[ "$CACHE" == 1 ]]; then job cache "$READY" none preprocessing_cache "${MANIFESTS[@]}"; READY=cache; fi
TARGET_MANIFESTS=()
for key in "${TARGETS[@]}"; do TARGET_MANIFESTS+=("$OUT/manifests/$key.csv"); done
job overlap "$READY" none check_overlap "${TARGET_MANIFESTS[@]}"  # before any pretraining; evaluations read it too
READY=overlap

# pretraining: 8 models per seed (4 without ImageNet weights)
PRETRAIN_SEEDS=("${SEED_LIST[@]}"); [[ -n "$PRETRAIN_SEED" ]] && PRETRAIN_SEEDS=("$PRETRAIN_SEED")
SOURCE_MANIFESTS=()
for key in "${SOURCES[@]}"; do SOURCE_MANIFESTS+=("$OUT/manifests/$key.csv"); done
for seed in "${PRETRAIN_SEEDS[@]}"; do
  for init in "${INITS[@]}"; do
    for key in "${SOURCES[@]}"; do
      job "pretrain_${AREA[$key]}_${init}_seed$seed" "$READY" "$(gpu_need "$LAUNCH")" \
        pretrain "${AREA[$key]}_$init" "$seed" pretrain_source.py --manifest "$OUT/manifests/$key.csv"
    done
    job "pretrain_All_${init}_seed$seed" "$READY" "$(gpu_need "$LAUNCH")" \
      pretrain "All_$init" "$seed" pretrain_all.py --manifests "${SOURCE_MANIFESTS[@]}"
  done
done

# fine-tuning: the arms of each target, per seed, train fraction and strategy; then its test-split evaluation.
# The arms that can run: no ImageNet file, no IN, Domain_IN, All_IN; a target of domain other has no
# domain source, so no Domain arms, and gets the random-init floor RI instead.
EVAL_JOBS=()
for target in "${TARGETS[@]}"; do
  area=${AREA[$target]}
  arms=()
  for arm in "${ARM_LIST[@]}"; do
    [[ $HAVE_IN == 0 && $arm == *IN ]] && continue
    [[ $area == none && $arm == Domain_* ]] && continue
    arms+=("$arm")
  done
  [[ $area == none && " ${arms[*]} " != *" RI "* ]] && arms=(RI "${arms[@]}")
  RUNS=() RUN_JOBS=()
  for seed in "${SEED_LIST[@]}"; do
    pretrained=${PRETRAIN_SEED:-$seed}  # the pretraining seed the arms of this seed start from
    declare -A ARM_INIT=([RI]=random [IN]=imagenet [Domain_RI]=${area}_RI [Domain_IN]=${area}_IN [All_RI]=All_RI
                         [All_IN]=All_IN)
    for strategy in "${STRATEGY_LIST[@]}"; do
      for fraction in "${FRACTION_LIST[@]}"; do
        name="seed$seed" flags=(--strategy "$strategy")
        is_one "$fraction" || { name="frac${fraction}_$name"; flags+=(--train-fraction "$fraction"); }
        [[ $strategy == full ]] || name="${strategy}_$name"
        for arm in "${arms[@]}"; do
          model=${ARM_INIT[$arm]} init=${ARM_INIT[$arm]} after=$READY
          if [[ $model != imagenet && $model != random ]]; then
            init="$OUT/pretrain/$model/seed$pretrained/last.pt" after="$READY pretrain_${model}_seed$pretrained"
          fi
          id="finetune_${target}_${arm}_${name//./p}"
          job "$id" "$after" "$(gpu_need "$FINETUNE_LAUNCH")" finetune "$target" "$arm" "$name" "$seed" "$init" "${flags[@]}"
          RUNS+=("$OUT/finetune/$target/$arm/$name") RUN_JOBS+=("$id")
        done
      done
    done
    unset ARM_INIT
  done
  job "evaluate_$target" "${RUN_JOBS[*]}" one evaluate "$target" "${RUNS[@]}"
  EVAL_JOBS+=("evaluate_$target")
done

# figures, tables and report.md, once every evaluation is done
job report "${EVAL_JOBS[*]}" none report
printf '.PHONY: all %s\nall: %s\n' "${ALL[*]}" "${ALL[*]}" >> "$JOB_DIR/Makefile"

# --------------------------------------------------------------------------- run
(( JOBS > 1 )) && say "${#ALL[@]} jobs, $JOBS at a time on $(nproc) cores${GPUS:+ and GPUs $GPUS}; each job's output: $JOB_DIR/logs/"
if ! make --no-print-directory -j "$JOBS" -f "$JOB_DIR/Makefile" all; then
  fail "the study stopped at a failed stage (above); the finished ones are kept: fix the cause and run the same" \
       "command again to continue"
fi
say "study finished in $(( $(date +%s) - start )) s: $OUT/report.md, $OUT/tables/, $OUT/figures/"
