#!/bin/bash
# CoCoOp cross-dataset transfer, step 2: evaluate each seed's prompts trained by xd_train.sh on
# TARGET's classes (eval-only; a class-agnostic context only: class-specific ones are refused).
#   bash scripts/cocoop/xd_test.sh TARGET|all [CFG] [KEY VALUE ...]   (same CFG as step 1)
#   all: every dataset of XD_TARGETS (default: the ten other benchmarks), then the
#   cross-dataset table. On the kit (SynthTextures has other classes than SynthShapes):
#   XD_SOURCE=synth_shapes XD_SHOTS=4 bash scripts/cocoop/xd_test.sh synth_textures micro_vit
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
xd_test CoCoOp "${1:-}" "${2:-vit_b16_c4_ep10_batch1_ctxv1}" "${@:3}"
