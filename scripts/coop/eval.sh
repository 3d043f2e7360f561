#!/bin/bash
# Re-evaluate trained CoOp runs from their saved prompts (eval-only), e.g. with other KEY VALUEs.
#   EVAL_TAG=name bash scripts/coop/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval CoOp "${1:-}" "${2:-}" "${3:-rn50}" "${@:4}"
