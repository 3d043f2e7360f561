#!/bin/bash
# PromptSRC (self-regulating deep V-L prompts, GPA): few-shot runs over seeds 1 2 3, then mean +- std.
#   bash scripts/promptsrc/main.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   CFG: vit_b16_c2_ep50_batch4_4+4ctx_few_shot (default, the official few-shot config: GPA mu 30, sigma 30; for Cars,
#   Flowers, Aircraft, DTD and EuroSAT the yaml suggests TRAINER.PROMPTSRC.GPA_MEAN 45
#   TRAINER.PROMPTSRC.GPA_STD 5), vit_b16_c2_ep20_batch4_4+4ctx, or the kit's micro_vit;
#   env DATA, SEEDS, OUTPUT, PYTHON (scripts/common.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_main PromptSRC "${1:-}" "${2:-}" "${3:-vit_b16_c2_ep50_batch4_4+4ctx_few_shot}" "${@:4}"
