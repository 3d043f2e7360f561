#!/bin/bash
# CoOp (learned context vectors): few-shot runs over seeds 1 2 3, then mean +- std.
#   bash scripts/coop/main.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   CFG: rn50 (default) or another file of configs/trainers/CoOp/ (micro_rn, micro_vit on the
#   offline kit); KEY VALUE pairs go to the config (e.g. TRAINER.COOP.N_CTX 8); env DATA,
#   SEEDS, OUTPUT, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_main CoOp "${1:-}" "${2:-}" "${3:-rn50}" "${@:4}"
