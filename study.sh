#!/usr/bin/env bash
# The whole study (paper Section 5) as a make-like recipe: a stage whose outputs exist is skipped,
# FORCE=1 redoes everything. Configure with environment variables:
#
#   bash study.sh                                   # the demo: generated data, CPU, minutes
#   DATA=/data/study bash study.sh                  # the real study into runs/full (README, "Full data")
#   IMAGENET_WEIGHTS=~/densenet121-a639ec97.pth bash study.sh
#
# Stages: demo data -> manifests -> 8 pretrained models -> 25 fine-tuned arms -> test-split
# evaluation -> figures and Table 2.
set -euo pipefail
# Paths given by the caller are taken relative to the caller's folder; the defaults live in the repo.
absolute() { [[ -z "$1" || "$1" == /* ]] && printf '%s' "$1" || printf '%s/%s' "$PWD" "$1"; }
DATA=$(absolute "${DATA:-}")
OUT=$(absolute "${OUT:-}")
IMAGENET_WEIGHTS=$(absolute "${IMAGENET_WEIGHTS:-}")
cd "$(dirname "$0")"

# --------------------------------------------------------------------------- configuration
# DATA: folder holding the 8 dataset folders; unset -> demo data generated into $OUT/demo_data
# OUT:  everything the study writes goes here
if [[ -z "$DATA" ]]; then OUT=${OUT:-runs/demo}; else OUT=${OUT:-runs/full}; fi
if [[ -z "$DATA" ]]; then           # demo defaults: tiny images, a few epochs
  IMAGE_SIZE=${IMAGE_SIZE:-64}
  EPOCHS_PRETRAIN=${EPOCHS_PRETRAIN:-3}
  EPOCHS_FINETUNE=${EPOCHS_FINETUNE:-6}
  BATCH_SIZE=${BATCH_SIZE:-16}
  WORKERS=${WORKERS:-0}             # tiny images decode faster than worker processes start
else                                # paper defaults (Section 5.2: 224 x 224)
  IMAGE_SIZE=${IMAGE_SIZE:-224}
  EPOCHS_PRETRAIN=${EPOCHS_PRETRAIN:-30}
  EPOCHS_FINETUNE=${EPOCHS_FINETUNE:-30}
  BATCH_SIZE=${BATCH_SIZE:-32}
  WORKERS=${WORKERS:-8}             # decoding full-size images needs several processes per GPU
fi
DEVICE=${DEVICE:-auto}              # auto | cpu | cuda
SEED=${SEED:-0}                     # fixes splits, init, augmentation and data order
DEMO_SCALE=${DEMO_SCALE:-1}         # demo size multiplier
# IMAGENET_WEIGHTS: torchvision's densenet121-a639ec97.pth; unset -> torch hub cache / download
FORCE=${FORCE:-0}                   # 1 = redo stages whose outputs exist
PYTHON=${PYTHON:-python}

SOURCES=(chestxray14 breakhis eyepacs)
TARGETS=(shenzhen covid19_radiography kather2016 messidor deepdrid)   # D1..D5
declare -A AREA=([chestxray14]=CXR [breakhis]=HWSI [eyepacs]=EFI
                 [shenzhen]=CXR [covid19_radiography]=CXR [kather2016]=HWSI [messidor]=EFI [deepdrid]=EFI)
TRAIN_FLAGS=(--image-size "$IMAGE_SIZE" --batch-size "$BATCH_SIZE" --device "$DEVICE" --workers "$WORKERS" --seed "$SEED")

# done_already OUTPUT [INPUT...]: the make-like skip. True when OUTPUT exists, no INPUT is newer
# than it (a re-run pretraining redoes the arms built on it) and FORCE is not set.
done_already() {
  local output=$1 input; shift
  [[ "$FORCE" != 1 && -e "$output" ]] || return 1
  for input in "$@"; do [[ "$input" -nt "$output" ]] && return 1; done
  return 0
}
say() { printf '\n=== %s\n' "$*"; }
# Check what can be checked before any work starts.
if [[ -n "$IMAGENET_WEIGHTS" && ! -f "$IMAGENET_WEIGHTS" ]]; then
  echo "error: IMAGENET_WEIGHTS=$IMAGENET_WEIGHTS is not a file" >&2; exit 2
fi
if [[ -n "$DATA" && ! -d "$DATA" ]]; then
  echo "error: DATA=$DATA is not a folder (it must hold one folder per dataset; see README, 'Full data')" >&2; exit 2
fi
start=$(date +%s)
mkdir -p "$OUT"
# Skipping finished stages is only right while the settings stay the same: a study folder
# remembers its settings and refuses others (a demo run must never pass for the real study).
SETTINGS="data=${DATA:-demo scale $DEMO_SCALE} image_size=$IMAGE_SIZE epochs_pretrain=$EPOCHS_PRETRAIN"
SETTINGS+=" epochs_finetune=$EPOCHS_FINETUNE batch_size=$BATCH_SIZE seed=$SEED"
if [[ "$FORCE" != 1 && -f "$OUT/study_settings.txt" && "$(cat "$OUT/study_settings.txt")" != "$SETTINGS" ]]; then
  echo "error: $OUT holds a study with other settings (was: $(cat "$OUT/study_settings.txt"); now: $SETTINGS)." \
       "Use another OUT=..., or FORCE=1 to redo every stage there." >&2
  exit 2
fi
echo "$SETTINGS" > "$OUT/study_settings.txt"

# --------------------------------------------------------------------------- data
if [[ -z "$DATA" ]]; then
  DATA="$OUT/demo_data"
  if done_already "$DATA/deepdrid"; then
    say "demo data: $DATA exists, skipped"
  else
    say "demo data -> $DATA"
    "$PYTHON" make_demo_data.py --out "$DATA" --seed "$SEED" --scale "$DEMO_SCALE" --overwrite
  fi
fi

for key in "${SOURCES[@]}" "${TARGETS[@]}"; do
  if done_already "$OUT/manifests/$key.csv"; then
    say "manifest $key: exists, skipped"
  else
    say "manifest $key"
    "$PYTHON" prepare_data.py --dataset "$key" --root "$DATA/$key" --out "$OUT/manifests" --seed "$SEED"
  fi
done

# --------------------------------------------------------------------------- ImageNet weights
# The IN-based models need torchvision's DenseNet-121 weights. Never faked: without them the
# IN, Domain_IN and All_IN arms are skipped and Table 2 shows n/a.
IMAGENET_FLAGS=()
if WEIGHTS=$("$PYTHON" -c 'import sys, models; print(models.find_imagenet_weights(sys.argv[1] or None))' \
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
init_flag() { [[ $1 == RI ]] && echo random || echo imagenet; }

# --------------------------------------------------------------------------- pretraining (8 models)
for key in "${SOURCES[@]}"; do
  for init in "${INITS[@]}"; do
    run="$OUT/pretrain/${AREA[$key]}_$init"
    if done_already "$run/summary.json" "$OUT/manifests/$key.csv"; then
      say "pretrain ${AREA[$key]}_$init: done, skipped"; continue
    fi
    say "pretrain ${AREA[$key]}_$init on $key"
    "$PYTHON" pretrain_source.py --manifest "$OUT/manifests/$key.csv" --init "$(init_flag "$init")" \
      "${IMAGENET_FLAGS[@]}" --out "$run" --epochs "$EPOCHS_PRETRAIN" "${TRAIN_FLAGS[@]}"
  done
done
SOURCE_MANIFESTS=()
for key in "${SOURCES[@]}"; do SOURCE_MANIFESTS+=("$OUT/manifests/$key.csv"); done
for init in "${INITS[@]}"; do
  run="$OUT/pretrain/All_$init"
  if done_already "$run/summary.json" "${SOURCE_MANIFESTS[@]}"; then say "pretrain All_$init: done, skipped"; continue; fi
  say "pretrain All_$init on ${SOURCES[*]}"
  "$PYTHON" pretrain_all.py --manifests "${SOURCE_MANIFESTS[@]}" --init "$(init_flag "$init")" \
    "${IMAGENET_FLAGS[@]}" --out "$run" --epochs "$EPOCHS_PRETRAIN" "${TRAIN_FLAGS[@]}"
done

# --------------------------------------------------------------------------- fine-tuning (5 targets x 5 arms)
for target in "${TARGETS[@]}"; do
  area=${AREA[$target]}
  declare -A ARM_INIT=([Domain_RI]="$OUT/pretrain/${area}_RI/last.pt" [All_RI]="$OUT/pretrain/All_RI/last.pt")
  ARMS=(Domain_RI All_RI)
  if [[ $HAVE_IN == 1 ]]; then
    ARM_INIT+=([IN]=imagenet [Domain_IN]="$OUT/pretrain/${area}_IN/last.pt" [All_IN]="$OUT/pretrain/All_IN/last.pt")
    ARMS=(IN Domain_RI Domain_IN All_RI All_IN)
  fi
  for arm in "${ARMS[@]}"; do
    run="$OUT/finetune/$target/$arm"
    init_file=${ARM_INIT[$arm]}; [[ $init_file == imagenet ]] && init_file=${WEIGHTS:-}
    if done_already "$run/summary.json" "$OUT/manifests/$target.csv" ${init_file:+"$init_file"}; then
      say "finetune $target/$arm: done, skipped"; continue
    fi
    say "finetune $target/$arm (init ${ARM_INIT[$arm]})"
    "$PYTHON" finetune_target.py --manifest "$OUT/manifests/$target.csv" --init "${ARM_INIT[$arm]}" \
      "${IMAGENET_FLAGS[@]}" --out "$run" --epochs "$EPOCHS_FINETUNE" "${TRAIN_FLAGS[@]}"
  done
  unset ARM_INIT

  # --- held-out test split, best-validation checkpoint of every arm, one process per target
  todo=()
  for arm in "${ARMS[@]}"; do
    done_already "$OUT/eval/$target/$arm/metrics.csv" "$OUT/finetune/$target/$arm/best.pt" || todo+=("$OUT/finetune/$target/$arm/best.pt")
  done
  if (( ${#todo[@]} )); then
    say "evaluate $target on the test split (${#todo[@]} arms)"
    if (( ${#todo[@]} == 1 )); then eval_out="$OUT/eval/$target/$(basename "$(dirname "${todo[0]}")")"
    else eval_out="$OUT/eval/$target"; fi
    "$PYTHON" evaluate.py --checkpoint "${todo[@]}" --manifest "$OUT/manifests/$target.csv" --split test \
      --out "$eval_out" --device "$DEVICE" --workers "$WORKERS" --seed "$SEED"
  fi
done

# --------------------------------------------------------------------------- figures and Table 2
say "figures and tables"
"$PYTHON" plot_results.py --runs "$OUT" --out "$OUT"

say "study finished in $(( $(date +%s) - start )) s: $OUT/tables/table2.md, $OUT/figures/"
