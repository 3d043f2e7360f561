#!/bin/bash
# ProGrad (CoOp with prompt-aligned gradients): few-shot runs over seeds 1 2 3, then mean +- std.
#   bash scripts/prograd/main.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   CFG: rn50 (default) or another file of configs/trainers/ProGrad/ (micro_rn, micro_vit on the
#   offline kit); KEY VALUE pairs go to the config (e.g. TRAINER.PROGRAD.N_CTX 8); env DATA,
#   SEEDS, OUTPUT, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_main ProGrad "${1:-}" "${2:-}" "${3:-rn50}" "${@:4}"
