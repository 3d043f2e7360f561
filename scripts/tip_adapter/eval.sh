#!/bin/bash
# Re-evaluate trained TipAdapter runs without retraining (another test-time option, e.g. TRAINER.FEATURES.PREC fp32).
#   EVAL_TAG=fp32 bash scripts/tip_adapter/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval TipAdapter "$@"
