#!/bin/bash
# Re-evaluate trained Linear-probe CLIP runs from their saved models (eval-only, no retraining).
#   EVAL_TAG=tag bash scripts/linear_probe/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval LinearProbe "$@"
