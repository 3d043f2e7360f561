#!/bin/bash
# PromptSRC cross-dataset transfer, step 2: evaluate each seed's prompts trained by xd_train.sh on
# TARGET's classes (eval-only; the prompts are class-agnostic).
#   bash scripts/promptsrc/xd_test.sh TARGET|all [CFG] [KEY VALUE ...]   (same CFG as step 1)
#   all: every dataset of XD_TARGETS (default: the ten other benchmarks), then the table. Kit:
#   XD_SOURCE=synth_shapes XD_SHOTS=4 bash scripts/promptsrc/xd_test.sh synth_textures micro_vit
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
xd_test PromptSRC "${1:-}" "${2:-vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets}" "${@:3}"
