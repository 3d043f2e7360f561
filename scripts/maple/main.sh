#!/bin/bash
# MaPLe (deep prompts in both encoders, text-to-vision coupling): few-shot runs over seeds 1 2 3,
# then mean +- std.
#   bash scripts/maple/main.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   CFG: vit_b16_fewshot (default; MaPLe ships no few-shot config, see its header),
#   vit_b16_c2_ep5_batch4_2ctx (the official base-to-new config) or the kit's micro_vit;
#   env DATA, SEEDS, OUTPUT, PYTHON (scripts/common.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_main MaPLe "${1:-}" "${2:-}" "${3:-vit_b16_fewshot}" "${@:4}"
