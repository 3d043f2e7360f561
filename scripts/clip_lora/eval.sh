#!/bin/bash
# Re-evaluate trained CLIP-LoRA runs from their saved low-rank factors (eval-only), e.g. with other KEY VALUEs.
#   EVAL_TAG=name bash scripts/clip_lora/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval CLIPLoRA "${1:-}" "${2:-}" "${3:-vit_b16}" "${@:4}"
