#!/bin/bash
# Re-evaluate trained CALIP runs without retraining (e.g. TEST.SPLIT val).
#   EVAL_TAG=val bash scripts/calip/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval CALIP "$@"
