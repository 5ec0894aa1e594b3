#!/usr/bin/env bash
# The whole study (paper Section 5) as a make-like recipe: a stage whose outputs exist is skipped,
# FORCE=1 redoes everything. Configure with environment variables:
#
#   bash study.sh                                   # the demo: generated data, CPU, minutes
#   DATA=/data/study SEEDS="0 1 2" bash study.sh    # the real study into runs/full (README, "Full data")
#   DATA=/data/study SEEDS="0 1 2" TRAIN_FRACTIONS="0.05 0.1 0.25 1" bash study.sh   # + label efficiency
#   LAUNCH="torchrun --nproc_per_node=8" DATA=/data/study bash study.sh              # training on 8 GPUs
#   IMAGENET_WEIGHTS=~/densenet121-a639ec97.pth bash study.sh
#
# Stages: demo data -> manifests -> 8 pretrained models per seed -> 25 fine-tuned arms per seed and
# train fraction -> test-split evaluation of each run's best and last checkpoint (with bootstrap
# CIs) -> figures, tables (Table 2 with CIs, paired comparisons, convergence) and OUT/report.md.
#
# Run layout (plot_results.py finds runs by walking these folders and reading args.json):
#   OUT/pretrain/<NAME>/seed<S>/                      NAME = CXR_RI ... All_IN
#   OUT/finetune/<target>/<arm>/seed<S>/              the full train split
#   OUT/finetune/<target>/<arm>/frac<F>_seed<S>/      a nested, stratified, patient-level fraction F < 1
#   OUT/eval/<target>/<arm>/<run>/{best,last}/        evaluate.py outputs of that run's two checkpoints
#   OUT/study_settings.txt, OUT/study.json            this study's settings; study.json (data, ImageNet weights
#                                                     found or why not, sizes, epochs, seeds) feeds report.md
# A seed seeds the whole pipeline: the arms of seed S fine-tune from the models pretrained with
# seed S, so the spread across seeds includes the pretraining's (the paper's question is about
# pretraining; holding it fixed would understate the noise). Pretraining is the expensive part:
# PRETRAIN_SEED=S pretrains once, with seed S, and every seed's arms start from those models.
# The splits do not depend on SEEDS (SPLIT_SEED), so every run is tested on the same images and
# arms can be compared image by image.
#
# LAUNCH is the command that starts the training scripts (default: $PYTHON); e.g.
# LAUNCH="torchrun --nproc_per_node=8" runs each pretraining and fine-tuning with DDP on 8 GPUs.
# Data preparation, evaluation and plotting always run as one $PYTHON process.
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
cd "$(dirname "$0")"

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
SEEDS=${SEEDS:-${SEED:-0}}          # training seeds (init, augmentation, data order), e.g. "0 1 2"; SEED = one seed
SPLIT_SEED=${SPLIT_SEED:-0}         # fixes the demo data and the train/val/test splits (same for every seed)
PRETRAIN_SEED=${PRETRAIN_SEED:-}    # unset: pretrain per seed; S: pretrain once with seed S for all seeds
TRAIN_FRACTIONS=${TRAIN_FRACTIONS:-1}  # fine-tuning train-split fractions in (0, 1], e.g. "0.05 0.1 0.25 1"
DEMO_SCALE=${DEMO_SCALE:-1}         # demo size multiplier
CACHE=${CACHE:-1}                   # 1: decode + resize every image once into a uint8 cache (kit/cache.py); 0: decode each epoch
IMAGENET_WEIGHTS=${IMAGENET_WEIGHTS:-}  # torchvision's densenet121-a639ec97.pth; unset: torch hub cache, else download
FORCE=${FORCE:-0}                   # 1 = redo every stage (and adopt changed settings); a later plain run continues
PYTHON=${PYTHON:-python}            # the Python that runs every stage
LAUNCH=${LAUNCH:-$PYTHON}           # starts the training scripts, e.g. "torchrun --nproc_per_node=8"
TARGETS=${TARGETS:-shenzhen covid19_radiography kather2016 messidor deepdrid}  # the targets to run (D1..D5)
SOURCE_PROTOCOL=${SOURCE_PROTOCOL:-paper}  # sources: paper = every image, 90/10 train/val (Section 5.2); held-out-test = + a test split
read -ra LAUNCH_CMD <<< "$LAUNCH"
read -ra SEED_LIST <<< "$SEEDS"
read -ra FRACTION_LIST <<< "$TRAIN_FRACTIONS"

SOURCES=(chestxray14 breakhis eyepacs)
read -ra TARGETS <<< "$TARGETS"
declare -A AREA=([chestxray14]=CXR [breakhis]=HWSI [eyepacs]=EFI
                 [shenzhen]=CXR [covid19_radiography]=CXR [kather2016]=HWSI [messidor]=EFI [deepdrid]=EFI)
TRAIN_FLAGS=(--image-size "$IMAGE_SIZE" --batch-size "$BATCH_SIZE" --device "$DEVICE" --workers "$WORKERS")

# done_already OUTPUT [INPUT...]: the make-like skip. True when OUTPUT exists and neither an INPUT
# (a re-run pretraining redoes the arms built on it) nor the study's settings file is newer than
# it: FORCE=1 rewrites that file, so every output made before is redone, also by a later plain
# run that continues an interrupted FORCE=1 run.
SETTINGS_FILE="$OUT/study_settings.txt"
done_already() {
  local output=$1 input; shift
  [[ -e "$output" ]] || return 1
  for input in "$SETTINGS_FILE" "$@"; do [[ "$input" -nt "$output" ]] && return 1; done
  return 0
}
# resume_flag RUN: a run folder whose last.pt predates the settings file starts over (--no-resume):
# its checkpoint belongs to the settings before a FORCE=1; a newer one is this study's, resumed.
resume_flag() { if [[ -e "$1/last.pt" && ! "$1/last.pt" -nt "$SETTINGS_FILE" ]]; then echo --no-resume; else echo --resume; fi; }
say() { printf '\n=== %s\n' "$*"; }
# Check what can be checked before any work starts.
if [[ -n "$IMAGENET_WEIGHTS" && ! -f "$IMAGENET_WEIGHTS" ]]; then
  echo "error: IMAGENET_WEIGHTS=$IMAGENET_WEIGHTS is not a file" >&2; exit 2
fi
for seed in "${SEED_LIST[@]}" $PRETRAIN_SEED; do
  [[ "$seed" =~ ^[0-9]+$ ]] || { echo "error: seed '$seed' in SEEDS/PRETRAIN_SEED is not a whole number >= 0" >&2; exit 2; }
done
(( ${#SEED_LIST[@]} )) || { echo "error: SEEDS is empty" >&2; exit 2; }
for fraction in "${FRACTION_LIST[@]}"; do
  awk -v f="$fraction" 'BEGIN { exit !(f ~ /^[0-9]*\.?[0-9]+$/ && f > 0 && f <= 1) }' \
    || { echo "error: train fraction '$fraction' in TRAIN_FRACTIONS is not a number in (0, 1]" >&2; exit 2; }
done
(( ${#FRACTION_LIST[@]} )) || { echo "error: TRAIN_FRACTIONS is empty" >&2; exit 2; }
(( ${#TARGETS[@]} )) || { echo "error: TARGETS is empty" >&2; exit 2; }
[[ "$SOURCE_PROTOCOL" == paper || "$SOURCE_PROTOCOL" == held-out-test ]] \
  || { echo "error: SOURCE_PROTOCOL=$SOURCE_PROTOCOL: choose paper or held-out-test" >&2; exit 2; }
for target in "${TARGETS[@]}"; do
  [[ -n "${AREA[$target]:-}" && " ${SOURCES[*]} " != *" $target "* ]] \
    || { echo "error: TARGETS: unknown target '$target' (known: shenzhen covid19_radiography kather2016 messidor deepdrid)" >&2; exit 2; }
done
is_one() { awk -v f="$1" 'BEGIN { exit !(f == 1) }'; }
if [[ -n "$DATA" && ! -d "$DATA" ]]; then
  echo "error: DATA=$DATA is not a folder (it must hold one folder per dataset; see README, 'Full data')" >&2; exit 2
fi
start=$(date +%s)
mkdir -p "$OUT"
# One study.sh per OUT at a time: the kernel holds the lock on fd 9 until this script and the
# stages it started have ended (also when killed), so a stale lock never blocks a rerun.
exec 9>>"$OUT/.study.lock"
if ! flock -n 9; then
  echo "error: $OUT is in use by another study.sh ($(cat "$OUT/.study.lock")); wait for it to finish, or choose" \
       "another OUT=..." >&2
  exit 2
fi
echo "pid $$ on $(hostname) since $(date -Iseconds)" > "$OUT/.study.lock"
# Skipping finished stages is only right while the settings stay the same: a study folder
# remembers its settings and refuses others (a demo run must never pass for the real study).
# SEEDS and TRAIN_FRACTIONS are not among them: more seeds or fractions add runs to a study.
SETTINGS="data=${DATA:-demo scale $DEMO_SCALE} image_size=$IMAGE_SIZE epochs_pretrain=$EPOCHS_PRETRAIN"
SETTINGS+=" epochs_finetune=$EPOCHS_FINETUNE batch_size=$BATCH_SIZE split_seed=$SPLIT_SEED"
SETTINGS+=" pretrain_seed=${PRETRAIN_SEED:-per-seed} source_protocol=$SOURCE_PROTOCOL"
if [[ "$FORCE" != 1 && -f "$SETTINGS_FILE" && "$(cat "$SETTINGS_FILE")" != "$SETTINGS" ]]; then
  echo "error: $OUT holds a study with other settings (was: $(cat "$SETTINGS_FILE"); now: $SETTINGS)." \
       "Use another OUT=..., or FORCE=1 to redo every stage there with the new settings." >&2
  exit 2
fi
if [[ "$FORCE" == 1 || ! -f "$SETTINGS_FILE" ]]; then
  echo "$SETTINGS" > "$SETTINGS_FILE"  # a new file time: every output made before it is stale from now on
fi

# --------------------------------------------------------------------------- data
if [[ -z "$DATA" ]]; then
  DATA="$OUT/demo_data"
  if done_already "$DATA/deepdrid"; then
    say "demo data: $DATA exists, skipped"
  else
    say "demo data -> $DATA"
    "$PYTHON" tools/make_demo_data.py --out "$DATA" --seed "$SPLIT_SEED" --scale "$DEMO_SCALE" --overwrite
  fi
fi

# Sources: SOURCE_PROTOCOL (the paper's: every image, 90/10 train/val, no test split); targets:
# patient-level train/val/test (prepare_data.py --protocol held-out-test, their only protocol).
for key in "${SOURCES[@]}" "${TARGETS[@]}"; do
  if done_already "$OUT/manifests/$key.csv"; then
    say "manifest $key: exists, skipped"
  else
    say "manifest $key"
    protocol=held-out-test; [[ " ${SOURCES[*]} " == *" $key "* ]] && protocol=$SOURCE_PROTOCOL
    "$PYTHON" prepare_data.py --dataset "$key" --root "$DATA/$key" --out "$OUT/manifests" --seed "$SPLIT_SEED" \
      --protocol "$protocol"
  fi
done

# --------------------------------------------------------------------------- preprocessing cache
# Load, crop and resize each image once at IMAGE_SIZE (what limits a GPU at paper scale is
# decoding); training and evaluation find the cache next to the manifests. Up-to-date caches
# are kept, so this costs a second when nothing changed.
if [[ "$CACHE" == 1 ]]; then
  say "preprocessing cache at $IMAGE_SIZE px"
  MANIFESTS=()
  for key in "${SOURCES[@]}" "${TARGETS[@]}"; do MANIFESTS+=("$OUT/manifests/$key.csv"); done
  "$PYTHON" -m kit.cache --manifest "${MANIFESTS[@]}" --image-size "$IMAGE_SIZE" --no-progress
fi

# --------------------------------------------------------------------------- ImageNet weights
# The IN-based models need torchvision's DenseNet-121 weights. Never faked: without them the
# IN, Domain_IN and All_IN arms are skipped and Table 2 shows n/a.
IMAGENET_FLAGS=()
if WEIGHTS=$("$PYTHON" -c 'import sys; from kit import models; print(models.find_imagenet_weights(sys.argv[1] or None))' \
             "$IMAGENET_WEIGHTS" 2>"$OUT/imagenet_weights.log"); then
  HAVE_IN=1
  IMAGENET_FLAGS=(--imagenet-weights "$WEIGHTS")
  say "ImageNet weights: $WEIGHTS"
else
  HAVE_IN=0
  echo "!!! NO IMAGENET WEIGHTS (offline and no densenet121-a639ec97.pth; details in $OUT/imagenet_weights.log):" \
       "skipping CXR_IN HWSI_IN EFI_IN All_IN and the IN Domain_IN All_IN arms (n/a in Table 2). To run all five arms," \
       "download https://download.pytorch.org/models/densenet121-a639ec97.pth and rerun with IMAGENET_WEIGHTS=/path/to/densenet121-a639ec97.pth" >&2
fi
INITS=(RI); [[ $HAVE_IN == 1 ]] && INITS=(RI IN)

# What this study is, for plot_results.py's report (OUT/study.json, rewritten on every run): the data
# (demo or the DATA folder), whether ImageNet weights were found and why not, and the settings.
"$PYTHON" - "$OUT/study.json" "${DATA_GIVEN:-demo}" "$DEMO_SCALE" "$HAVE_IN" "${WEIGHTS:-}" "$OUT/imagenet_weights.log" \
  "$IMAGE_SIZE" "$EPOCHS_PRETRAIN" "$EPOCHS_FINETUNE" "$BATCH_SIZE" "$SEEDS" "$SPLIT_SEED" "${PRETRAIN_SEED:-}" \
  "$TRAIN_FRACTIONS" "${TARGETS[*]}" "$SOURCE_PROTOCOL" <<'PY'
import json, re, sys
from pathlib import Path
from kit import files
(path, data, scale, have_in, weights, log, size, ep_pre, ep_ft, batch, seeds, split_seed, pretrain_seed,
 fractions, targets, protocol) = sys.argv[1:]
reason = [line for line in Path(log).read_text().splitlines() if line.strip()] if Path(log).is_file() else []
files.write_text_atomic(path, json.dumps({
    "data": data, "demo": data == "demo", "demo_scale": float(scale) if data == "demo" else None,
    "imagenet_weights": weights or None, "imagenet_found": have_in == "1",
    "imagenet_missing_reason": None if have_in == "1" else re.sub(r"^[\w.]+: ", "", reason[-1] if reason else "not found"),
    "image_size": int(size), "epochs_pretrain": int(ep_pre), "epochs_finetune": int(ep_ft), "batch_size": int(batch),
    "seeds": [int(s) for s in seeds.split()], "split_seed": int(split_seed),
    "pretrain_seed": int(pretrain_seed) if pretrain_seed else None,
    "train_fractions": [float(f) for f in fractions.split()], "targets": targets.split(),
    "source_protocol": protocol}, indent=2) + "\n")
PY
init_flag() { [[ $1 == RI ]] && echo random || echo imagenet; }

# --------------------------------------------------------------------------- pretraining (8 models per seed)
# pretrain NAME SEED SCRIPT FLAG INPUT...: one pretrained model into OUT/pretrain/NAME/seedSEED, skipped when
# done; NAME ends in _RI or _IN (the init), FLAG INPUT... are the script's manifest flag and files.
pretrain() {
  local name=$1 seed=$2 script=$3 flag=$4; shift 4
  local run="$OUT/pretrain/$name/seed$seed"
  if done_already "$run/summary.json" "$@"; then say "pretrain $name seed $seed: done, skipped"; return; fi
  say "pretrain $name seed $seed"
  "${LAUNCH_CMD[@]}" "$script" "$flag" "$@" --init "$(init_flag "${name##*_}")" "${IMAGENET_FLAGS[@]}" \
    --out "$run" --epochs "$EPOCHS_PRETRAIN" "${TRAIN_FLAGS[@]}" --seed "$seed" "$(resume_flag "$run")"
}
PRETRAIN_SEEDS=("${SEED_LIST[@]}"); [[ -n "$PRETRAIN_SEED" ]] && PRETRAIN_SEEDS=("$PRETRAIN_SEED")
SOURCE_MANIFESTS=()
for key in "${SOURCES[@]}"; do SOURCE_MANIFESTS+=("$OUT/manifests/$key.csv"); done
for seed in "${PRETRAIN_SEEDS[@]}"; do
  for init in "${INITS[@]}"; do
    for key in "${SOURCES[@]}"; do
      pretrain "${AREA[$key]}_$init" "$seed" pretrain_source.py --manifest "$OUT/manifests/$key.csv"
    done
    pretrain "All_$init" "$seed" pretrain_all.py --manifests "${SOURCE_MANIFESTS[@]}"
  done
done

# --------------------------------------------------------------------------- fine-tuning (5 targets x 5 arms x seeds x fractions)
pretrained() { printf '%s' "$OUT/pretrain/$1/seed${PRETRAIN_SEED:-$seed}/last.pt"; }  # NAME -> the init of seed $seed
for target in "${TARGETS[@]}"; do
  area=${AREA[$target]}
  ARMS=(Domain_RI All_RI); [[ $HAVE_IN == 1 ]] && ARMS=(IN Domain_RI Domain_IN All_RI All_IN)
  todo=()   # checkpoints to evaluate
  for seed in "${SEED_LIST[@]}"; do
    declare -A ARM_INIT=([IN]=imagenet [Domain_RI]=$(pretrained "${area}_RI") [Domain_IN]=$(pretrained "${area}_IN")
                         [All_RI]=$(pretrained All_RI) [All_IN]=$(pretrained All_IN))
    for fraction in "${FRACTION_LIST[@]}"; do
      if is_one "$fraction"; then name="seed$seed" fraction_flags=()
      else name="frac${fraction}_seed$seed" fraction_flags=(--train-fraction "$fraction"); fi
      for arm in "${ARMS[@]}"; do
        run="$OUT/finetune/$target/$arm/$name"
        init_file=${ARM_INIT[$arm]}; [[ $init_file == imagenet ]] && init_file=${WEIGHTS:-}
        if done_already "$run/summary.json" "$OUT/manifests/$target.csv" ${init_file:+"$init_file"}; then
          say "finetune $target/$arm/$name: done, skipped"
        else
          say "finetune $target/$arm/$name (init ${ARM_INIT[$arm]})"
          "${LAUNCH_CMD[@]}" finetune_target.py --manifest "$OUT/manifests/$target.csv" --init "${ARM_INIT[$arm]}" \
            "${IMAGENET_FLAGS[@]}" --out "$run" --epochs "$EPOCHS_FINETUNE" "${TRAIN_FLAGS[@]}" --seed "$seed" \
            "${fraction_flags[@]}" "$(resume_flag "$run")"
        fi
        for kind in best last; do
          done_already "$OUT/eval/$target/$arm/$name/$kind/metrics.csv" "$run/$kind.pt" || todo+=("$run/$kind.pt")
        done
      done
    done
    unset ARM_INIT
  done

  # --- held-out test split: best-validation and last checkpoint of every run, one process per target
  if (( ${#todo[@]} )); then
    say "evaluate $target on the test split (${#todo[@]} checkpoints)"
    "$PYTHON" evaluate.py --checkpoint "${todo[@]}" --relative-to "$OUT/finetune/$target" \
      --manifest "$OUT/manifests/$target.csv" --split test --out "$OUT/eval/$target" \
      --device "$DEVICE" --workers "$WORKERS"
  fi
done

# --------------------------------------------------------------------------- figures, tables, report
say "figures, tables and report"
"$PYTHON" plot_results.py --runs "$OUT" --out "$OUT"

say "study finished in $(( $(date +%s) - start )) s: $OUT/report.md, $OUT/tables/, $OUT/figures/"
