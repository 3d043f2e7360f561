#!/bin/bash
# VT-CLIP distribution shift: train on ImageNet 16-shot, evaluate on ImageNet-V2/Sketch/A/R.
#   bash scripts/vtclip/ood.sh [CFG] [KEY VALUE ...]
#   (env OOD_SOURCE, OOD_SHOTS, OOD_TARGETS change source, shots and targets: see scripts/common.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_ood VTCLIP "$@"
