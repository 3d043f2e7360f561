#!/bin/bash
# Re-evaluate trained CALIP-FS runs without retraining (e.g. TEST.SPLIT val).
#   EVAL_TAG=val bash scripts/calip_fs/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval CALIP_FS "$@"
