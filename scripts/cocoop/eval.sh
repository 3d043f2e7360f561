#!/bin/bash
# Re-evaluate trained CoCoOp runs from their saved prompts (eval-only), e.g. with other KEY VALUEs.
#   EVAL_TAG=name bash scripts/cocoop/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval CoCoOp "${1:-}" "${2:-}" "${3:-vit_b16_c4_ep10_batch1_ctxv1}" "${@:4}"
