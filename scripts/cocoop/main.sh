#!/bin/bash
# CoCoOp (context conditioned on the image): few-shot runs over seeds 1 2 3, then mean +- std.
#   bash scripts/cocoop/main.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   CFG: vit_b16_c4_ep10_batch1_ctxv1 (default) or another file of configs/trainers/CoCoOp/ (micro_rn, micro_vit on the
#   offline kit); KEY VALUE pairs go to the config (e.g. TRAINER.COCOOP.N_CTX 8); env DATA,
#   SEEDS, OUTPUT, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_main CoCoOp "${1:-}" "${2:-}" "${3:-vit_b16_c4_ep10_batch1_ctxv1}" "${@:4}"
