#!/bin/bash
# MaPLe cross-dataset transfer, step 2: evaluate each seed's prompts trained by xd_train.sh on
# TARGET's classes (eval-only; MaPLe's prompts and coupling layers are class-agnostic).
#   bash scripts/maple/xd_test.sh TARGET|all [CFG] [KEY VALUE ...]   (same CFG as step 1)
#   all: every dataset of XD_TARGETS (default: the ten other benchmarks), then the table. Kit:
#   XD_SOURCE=synth_shapes XD_SHOTS=4 bash scripts/maple/xd_test.sh synth_textures micro_vit
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
xd_test MaPLe "${1:-}" "${2:-vit_b16_c2_ep2_batch4_2ctx_cross_datasets}" "${@:3}"
