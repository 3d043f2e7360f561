#!/bin/bash
# Re-evaluate trained runs without retraining (another test-time option, e.g. TRAINER.FEATURES.PREC fp32).
#   EVAL_TAG=fp32 bash scripts/proker/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval ProKeR "$@"
