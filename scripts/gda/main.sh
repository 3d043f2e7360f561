#!/bin/bash
# GDA few-shot runs over seeds 1 2 3, then mean +- std.
#   bash scripts/gda/main.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   DATASET: a name in configs/datasets (e.g. caltech101); CFG: rn50 (default), rn101,
#   vit_b32, vit_b16 or a kit config (micro_rn, micro_vit); env DATA, SEEDS, OUTPUT, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_main GDA "$@"
