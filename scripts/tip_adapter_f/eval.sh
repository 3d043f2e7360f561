#!/bin/bash
# Re-evaluate trained TipAdapterF runs without retraining (e.g. TRAINER.SAFE.BETA 0.9).
#   EVAL_TAG=beta0.9 bash scripts/tip_adapter_f/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval TipAdapterF "$@"
