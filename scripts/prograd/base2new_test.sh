#!/bin/bash
# ProGrad base-to-new generalisation, step 2: evaluate each base model on the new classes (second
# half), then print base, new and their harmonic mean H.
#   bash scripts/prograd/base2new_test.sh DATASET SHOTS [CFG] [KEY VALUE ...]   (same as step 1)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
base2new_test ProGrad "${1:-}" "${2:-}" "${3:-rn50}" "${@:4}"
