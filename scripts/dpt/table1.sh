#!/bin/bash
# DPT Table 1: zero-shot CLIP, CoOp and the five DPT variants on the paper's 8 datasets at 16
# shots (seeds 1 2 3), then the table (fsclip-results: mean +- std over seeds, average column).
#   bash scripts/dpt/table1.sh
#   env DATASETS (default: the paper's 8), SHOTS (16), CFG (vit_b32; the kit: micro_vit),
#   COOP_CFG and ZS_CFG (CoOp's and zero-shot CLIP's configs, default CFG; with CFG=official
#   set them, e.g. COOP_CFG=vit_b32 ZS_CFG=vit_b32), SEEDS, DATA, OUTPUT, PYTHON, FORCE, CFG_TAG.
#   On the kit: DATASETS="synth_shapes synth_textures" SHOTS=4 CFG=micro_vit bash scripts/dpt/table1.sh
# Runs already finished with the same config are skipped (the rerun rule of scripts/common.sh).
# CoOp's runs come from scripts/coop/main.sh; without it the CoOp row is left out.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/dpt/paper.sh
COOP_CFG=${COOP_CFG:-$CFG}
ZS_CFG=${ZS_CFG:-$CFG}
# "TRAINER CFG LABEL" per row, in the paper's order
ROWS=("VPT_CLIP ${CFG}_shallow VPT-CLIP-Shallow" "VPT_CLIP $CFG VPT-CLIP-Deep" "VPT_CLIP_CAVPT $CFG VPT-CLIP-CAVPT"
      "VLP_CLIP $CFG VLP-CLIP-Deep" "VLP_CLIP_CAVPT $CFG VLP-CLIP-CAVPT")
methods=("ZeroshotCLIP/$(cfg_name "$ZS_CFG")")
names=("ZeroshotCLIP/$(cfg_name "$ZS_CFG")=Zero-Shot CLIP")
if [ -f scripts/coop/main.sh ]; then
    methods+=("CoOp/$(cfg_name "$COOP_CFG")")
    names+=("CoOp/$(cfg_name "$COOP_CFG")=CoOp")
else
    echo "Note: scripts/coop/main.sh not found; the CoOp row is left out"
fi
for row in "${ROWS[@]}"; do
    read -r trainer cfg label <<< "$row"
    methods+=("$trainer/$(cfg_name "$cfg")")
    names+=("$trainer/$(cfg_name "$cfg")=$label")
done

for dataset in $DATASETS; do
    bash scripts/zsclip/zeroshot.sh "$dataset" "$ZS_CFG"
    if [ -f scripts/coop/main.sh ]; then
        bash scripts/coop/main.sh "$dataset" "$SHOTS" "$COOP_CFG"
    fi
    for row in "${ROWS[@]}"; do
        read -r trainer cfg label <<< "$row"
        fewshot_main "$trainer" "$dataset" "$SHOTS" "$cfg"
    done
done

echo "DPT Table 1 ($SHOTS shots, seeds ${SEEDS:-1 2 3})"
# shellcheck disable=SC2086
$PYTHON -m fsclip.results "$OUTPUT" --tables fewshot --shots "$SHOTS" --datasets $DATASETS \
    --methods "${methods[@]}" --method-name full --rename "${names[@]}"
