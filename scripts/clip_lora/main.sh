#!/bin/bash
# CLIP-LoRA (low-rank q/k/v updates in both encoders): few-shot runs over seeds 1 2 3, then mean +- std.
#   bash scripts/clip_lora/main.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   CFG: vit_b16 (default, the paper's settings), vit_b32, or the offline kit's micro_vit /
#   micro_rn (text encoder only); KEY VALUE pairs go to the config (e.g. TRAINER.CLIP_LORA.R 4);
#   env DATA, SEEDS, OUTPUT, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_main CLIPLoRA "${1:-}" "${2:-}" "${3:-vit_b16}" "${@:4}"
