#!/bin/bash
# DPT variants: few-shot runs over seeds 1 2 3, then mean +- std.
#   bash scripts/dpt/main.sh DATASET SHOTS [TRAINER] [CFG] [KEY VALUE ...]
#   TRAINER: VPT_CLIP, VPT_CLIP_CAVPT, VLP_CLIP, VLP_CLIP_CAVPT (default)
#   CFG: vit_b32 (default, the paper's settings), vit_b16, official (fanrena/DPT's choices), or
#   the kit's micro_vit; VPT_CLIP also has vit_b32_shallow / micro_vit_shallow (VPT-shallow).
#   env DATA, SEEDS, OUTPUT, PYTHON (see scripts/common.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
usage="usage: main.sh DATASET SHOTS [TRAINER] [CFG] [KEY VALUE ...]"
DATASET=${1:?$usage}
SHOTS=${2:?$usage}
TRAINER=${3:-VLP_CLIP_CAVPT}
CFG=${4:-vit_b32}
shift $(( $# < 4 ? $# : 4 ))
fewshot_main "$TRAINER" "$DATASET" "$SHOTS" "$CFG" "$@"
