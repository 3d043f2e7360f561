#!/bin/bash
# KgCoOp base-to-new generalisation, step 1 (CoCoOp's protocol): train and test on the base
# classes (first half), seeds 1 2 3. Then run base2new_test.sh with the same arguments.
#   bash scripts/kgcoop/base2new_train.sh DATASET SHOTS [CFG] [KEY VALUE ...]   (CoCoOp: 16 shots)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
base2new_train KgCoOp "${1:-}" "${2:-}" "${3:-rn50}" "${@:4}"
