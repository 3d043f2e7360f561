#!/bin/bash
# VT-CLIP's Table 2: cascaded decoder blocks 1, 2, 3, 4 (8 heads), 16 shots, Caltech101 and DTD,
# seeds 1 2 3; prints a table of test accuracy (mean +- std) at the end. The paper (RN50):
#   Caltech101 93.10 93.06 92.58 92.29; DTD 65.72 64.60 65.60 64.78
#   bash scripts/vtclip/ablation_layers.sh [KEY VALUE ...]
#   env DATASETS (default "caltech101 dtd"), SHOTS (16), CFG (rn50), LAYERS ("1 2 3 4"), and
#   DATA, SEEDS, OUTPUT, PYTHON as for main.sh; runs go to OUTPUT/ablation/VTCLIP_layers/layers<N>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
DATASETS=${DATASETS:-caltech101 dtd} SHOTS=${SHOTS:-16} CFG=${CFG:-rn50} \
    fewshot_ablation VTCLIP layers TRAINER.VTCLIP.LAYERS "${LAYERS:-1 2 3 4}" "$@"
