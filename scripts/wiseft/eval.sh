#!/bin/bash
# Re-evaluate trained WiSE-FT (linear head) runs from their saved models (eval-only, no retraining).
#   EVAL_TAG=tag bash scripts/wiseft/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval WiSEFT "$@"
