#!/bin/bash
# Re-evaluate trained DPT runs without retraining (e.g. on another split or with EVAL_TAG).
#   bash scripts/dpt/eval.sh DATASET SHOTS [TRAINER] [CFG] [KEY VALUE ...]
#   (same TRAINER and CFG as main.sh; env EVAL_TAG, SEEDS, DATA, OUTPUT: see scripts/common.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
usage="usage: eval.sh DATASET SHOTS [TRAINER] [CFG] [KEY VALUE ...]"
DATASET=${1:?$usage}
SHOTS=${2:?$usage}
TRAINER=${3:-VLP_CLIP_CAVPT}
CFG=${4:-vit_b32}
shift $(( $# < 4 ? $# : 4 ))
fewshot_eval "$TRAINER" "$DATASET" "$SHOTS" "$CFG" "$@"
