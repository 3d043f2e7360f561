#!/bin/bash
# VT-CLIP's Table 1: attention heads 4, 8, 16, 32 (one decoder block), 16 shots, Caltech101 and
# DTD, seeds 1 2 3; prints a table of test accuracy (mean +- std) at the end. The paper (RN50):
#   Caltech101 93.06 93.10 92.37 92.62; DTD 64.42 65.72 64.78 65.43
#   bash scripts/vtclip/ablation_heads.sh [KEY VALUE ...]
#   env DATASETS (default "caltech101 dtd"), SHOTS (16), CFG (rn50), HEADS ("4 8 16 32"), and
#   DATA, SEEDS, OUTPUT, PYTHON as for main.sh; runs go to OUTPUT/ablation/VTCLIP_heads/heads<H>/.
#   On the kit: DATASETS=synth_shapes SHOTS=4 CFG=micro_rn bash scripts/vtclip/ablation_heads.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
DATASETS=${DATASETS:-caltech101 dtd} SHOTS=${SHOTS:-16} CFG=${CFG:-rn50} \
    fewshot_ablation VTCLIP heads TRAINER.VTCLIP.HEADS "${HEADS:-4 8 16 32}" "$@"
