#!/bin/bash
# CoCoOp cross-dataset transfer, step 1 (CoOp's, CoCoOp's, MaPLe's and PromptSRC's protocol): train
# on 16-shot ImageNet, all 1,000 classes, seeds 1 2 3. Then run xd_test.sh TARGET (or all).
#   bash scripts/cocoop/xd_train.sh [CFG] [KEY VALUE ...]        (CFG default: vit_b16_c4_ep10_batch1_ctxv1, the CoCoOp paper's)
#   env XD_SOURCE, XD_SHOTS change source and shots (scripts/common.sh), e.g. on the kit:
#   XD_SOURCE=synth_shapes XD_SHOTS=4 bash scripts/cocoop/xd_train.sh micro_vit
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
xd_train CoCoOp "${1:-vit_b16_c4_ep10_batch1_ctxv1}" "${@:2}"
