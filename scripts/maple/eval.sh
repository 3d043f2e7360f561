#!/bin/bash
# Re-evaluate trained MaPLe runs from their saved prompts (eval-only), e.g. with other KEY VALUEs.
#   EVAL_TAG=name bash scripts/maple/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval MaPLe "${1:-}" "${2:-}" "${3:-vit_b16_fewshot}" "${@:4}"
