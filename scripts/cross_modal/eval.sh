#!/bin/bash
# Re-evaluate trained Cross-modal adaptation runs without retraining (e.g. Cross-Modal+WiSE-FT: TRAINER.CROSSMODAL.WISE_FT_ALPHA 0.5).
#   EVAL_TAG=wiseft bash scripts/cross_modal/eval.sh DATASET SHOTS [CFG] TRAINER.CROSSMODAL.WISE_FT_ALPHA 0.5
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval CrossModal "$@"
