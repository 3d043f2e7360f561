#!/bin/bash
# Re-evaluate trained SAFE runs without retraining (e.g. TRAINER.SAFE.BETA 0.9).
#   EVAL_TAG=beta0.9 bash scripts/safe/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval SAFE "$@"
