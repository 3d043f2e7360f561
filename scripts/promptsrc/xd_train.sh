#!/bin/bash
# PromptSRC cross-dataset transfer, step 1: train on 16-shot ImageNet, all 1,000 classes, seeds
# 1 2 3, with the official cross-dataset config (depth 3, 20 epochs, GPA mu 6, sigma 10).
#   bash scripts/promptsrc/xd_train.sh [CFG] [KEY VALUE ...]  (CFG default: vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets)
#   env XD_SOURCE, XD_SHOTS change source and shots (scripts/common.sh), e.g. on the kit:
#   XD_SOURCE=synth_shapes XD_SHOTS=4 bash scripts/promptsrc/xd_train.sh micro_vit
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
xd_train PromptSRC "${1:-vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets}" "${@:2}"
