#!/bin/bash
# MaPLe base-to-new generalisation, step 1: train and test on the base classes (first half),
# seeds 1 2 3, with the official config (5 epochs, batch 4, lr 0.0035, J = 9). Then run
# base2new_test.sh with the same arguments (base and new runs keep separate folders).
#   bash scripts/maple/base2new_train.sh DATASET SHOTS [CFG] [KEY VALUE ...]   (MaPLe: 16 shots)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
base2new_train MaPLe "${1:-}" "${2:-}" "${3:-vit_b16_c2_ep5_batch4_2ctx}" "${@:4}"
