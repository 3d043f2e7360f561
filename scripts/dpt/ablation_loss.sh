#!/bin/bash
# DPT Table 2: VPT-CLIP-CAVPT with and without the CAVPT loss (Eq. 10) on the paper's 8 datasets
# at 16 shots (seeds 1 2 3), then the table. The runs with the loss are Table 1's
# (<dataset>/VPT_CLIP_CAVPT/<CFG>_<SHOTS>shots, skipped when table1.sh made them); those without
# it are <CFG>_noloss_<SHOTS>shots (CFG_TAG=noloss) next to them.
#   bash scripts/dpt/ablation_loss.sh
#   env DATASETS, SHOTS, CFG, SEEDS, DATA, OUTPUT, PYTHON, FORCE as in table1.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/dpt/paper.sh

for dataset in $DATASETS; do
    CFG_TAG= fewshot_main VPT_CLIP_CAVPT "$dataset" "$SHOTS" "$CFG"
    CFG_TAG=noloss fewshot_main VPT_CLIP_CAVPT "$dataset" "$SHOTS" "$CFG" TRAINER.DPT.CAVPT.LOSS none
done

echo "DPT Table 2: VPT-CLIP-CAVPT ($SHOTS shots, seeds ${SEEDS:-1 2 3})"
# shellcheck disable=SC2086
$PYTHON -m fsclip.results "$OUTPUT" --tables fewshot --shots "$SHOTS" --datasets $DATASETS \
    --methods "VPT_CLIP_CAVPT/${CFG}_noloss" "VPT_CLIP_CAVPT/$CFG" --method-name full \
    --rename "VPT_CLIP_CAVPT/${CFG}_noloss=CAVPT (w/o loss)" "VPT_CLIP_CAVPT/$CFG=CAVPT (w/ loss)"
