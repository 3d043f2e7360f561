#!/bin/bash
# MaPLe base-to-new generalisation, step 2: evaluate each base model (its last epoch) on the new
# classes (second half), then print base, new and their harmonic mean H.
#   bash scripts/maple/base2new_test.sh DATASET SHOTS [CFG] [KEY VALUE ...]   (same as step 1)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
base2new_test MaPLe "${1:-}" "${2:-}" "${3:-vit_b16_c2_ep5_batch4_2ctx}" "${@:4}"
