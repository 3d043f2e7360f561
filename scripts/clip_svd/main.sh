#!/bin/bash
# CLIP-SVD (the singular values of every weight matrix of both encoders): few-shot runs over
# seeds 1 2 3, then mean +- std.
#   bash scripts/clip_svd/main.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   CFG: vit_b16 (default, the paper's settings), vit_b32, or the offline kit's micro_vit
#   (ViT backbones only); KEY VALUE pairs go to the config (e.g. TRAINER.CLIP_SVD.N_ITERS 100);
#   env DATA, SEEDS, OUTPUT, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
fewshot_main CLIPSVD "${1:-}" "${2:-}" "${3:-vit_b16}" "${@:4}"
