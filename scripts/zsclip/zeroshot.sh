#!/bin/bash
# Zero-shot CLIP on one dataset.
#   bash scripts/zsclip/zeroshot.sh DATASET CFG [TRAINER] [KEY VALUE ...]
#   DATASET: a file name in configs/datasets (without .yaml), e.g. caltech101
#   CFG:     rn50, rn101, vit_b32 or vit_b16 (configs/trainers/ZeroshotCLIP/CFG.yaml)
#   TRAINER: ZeroshotCLIP (single template, default) or ZeroshotCLIP2 (template ensemble)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh

DATASET=${1:?usage: zeroshot.sh DATASET CFG [TRAINER] [KEY VALUE ...]}
CFG=${2:-rn50}
TRAINER=${3:-ZeroshotCLIP}
shift $(( $# < 3 ? $# : 3 ))

DIR=${OUTPUT}/${DATASET}/${TRAINER}/$(cfg_name "$CFG")
ARGV=(
    --root "$DATA"
    --trainer "$TRAINER"
    --dataset-config-file "configs/datasets/${DATASET}.yaml"
    --config-file "configs/trainers/ZeroshotCLIP/${CFG}.yaml"
    --output-dir "$DIR"
    --eval-only "$@")
rc=0
start_run "$DIR" test "${ARGV[@]}" || rc=$?
case $rc in
    0) $PYTHON train.py "${ARGV[@]}" ;;
    1) ;;
    3) not_rerun_error 1 "$DIR"; exit 1 ;;
    *) exit "$rc" ;;
esac
