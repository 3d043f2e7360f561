#!/bin/bash
# KgCoOp (CoOp kept near zero-shot CLIP's text features): few-shot runs over seeds 1 2 3, then mean +- std.
#   bash scripts/kgcoop/main.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   CFG: rn50 (default) or another file of configs/trainers/KgCoOp/ (micro_rn, micro_vit on the
#   offline kit); KEY VALUE pairs go to the config (e.g. TRAINER.KGCOOP.N_CTX 8); env DATA,
#   SEEDS, OUTPUT, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_main KgCoOp "${1:-}" "${2:-}" "${3:-rn50}" "${@:4}"
