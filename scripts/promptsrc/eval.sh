#!/bin/bash
# Re-evaluate trained PromptSRC runs from their saved (GPA) prompts, eval-only.
#   EVAL_TAG=name bash scripts/promptsrc/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval PromptSRC "${1:-}" "${2:-}" "${3:-vit_b16_c2_ep50_batch4_4+4ctx_few_shot}" "${@:4}"
