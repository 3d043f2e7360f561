#!/bin/bash
# Re-evaluate trained CLIP-SVD runs from their saved singular values (eval-only), e.g. with other KEY VALUEs.
#   EVAL_TAG=name bash scripts/clip_svd/eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_eval CLIPSVD "${1:-}" "${2:-}" "${3:-vit_b16}" "${@:4}"
