#!/bin/bash
# Re-evaluate trained CLIP-Adapter runs without retraining (e.g. another TRAINER.CLIP_ADAPTER.RATIO).
#   EVAL_TAG=tag bash scripts/clip_adapter/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval CLIPAdapter "$@"
