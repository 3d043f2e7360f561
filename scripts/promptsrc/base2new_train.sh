#!/bin/bash
# PromptSRC base-to-new generalisation, step 1: train and test on the base classes (first half),
# seeds 1 2 3, with the official config (20 epochs, GPA mu 15, sigma 1). Then base2new_test.sh.
#   bash scripts/promptsrc/base2new_train.sh DATASET SHOTS [CFG] [KEY VALUE ...]   (16 shots)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
base2new_train PromptSRC "${1:-}" "${2:-}" "${3:-vit_b16_c2_ep20_batch4_4+4ctx}" "${@:4}"
