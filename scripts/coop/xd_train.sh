#!/bin/bash
# CoOp cross-dataset transfer, step 1 (CoOp's, CoCoOp's, MaPLe's and PromptSRC's protocol): train
# on 16-shot ImageNet, all 1,000 classes, seeds 1 2 3. Then run xd_test.sh TARGET (or all).
#   bash scripts/coop/xd_train.sh [CFG] [KEY VALUE ...]        (CFG default: vit_b16_ep50_ctxv1: 50 epochs, context from "a photo of a")
#   env XD_SOURCE, XD_SHOTS change source and shots (scripts/common.sh), e.g. on the kit:
#   XD_SOURCE=synth_shapes XD_SHOTS=4 bash scripts/coop/xd_train.sh micro_vit
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
xd_train CoOp "${1:-vit_b16_ep50_ctxv1}" "${@:2}"
