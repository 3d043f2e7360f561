#!/bin/bash
# PromptSRC base-to-new generalisation, step 2: evaluate each base model (the GPA prompts, saved
# at the last epoch) on the new classes, then print base, new and their harmonic mean H.
#   bash scripts/promptsrc/base2new_test.sh DATASET SHOTS [CFG] [KEY VALUE ...]   (same as step 1)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
base2new_test PromptSRC "${1:-}" "${2:-}" "${3:-vit_b16_c2_ep20_batch4_4+4ctx}" "${@:4}"
