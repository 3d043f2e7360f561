#!/bin/bash
# SAFE's "which layers to fine-tune" study (paper Sec. IV-D2): the same runs as main.sh for each
# TRAINER.SAFE.TRAIN_LAYERS value, side by side, then a table and a bar chart of test accuracy
# (mean +- std over seeds) in ${OUTPUT}/studies/.
#   bash scripts/safe/layers.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   env LAYERS: the values (default for ResNet configs: attnpool attnpool+layer4
#   attnpool+layer4+layer3; for ViT configs (CFG containing "vit"): last_block last_two_blocks);
#   each into ${OUTPUT}/DATASET/SAFE/CFG_<value>_SHOTSshots ("+" written "-"; CFG_TAG folders),
#   except SAFE's own split (attnpool; ViT: last_block), which is main.sh's run CFG_SHOTSshots.
#   SEEDS, DATA, OUTPUT, PYTHON as in main.sh (the rerun rule applies).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
study_args layers.sh "$@"
shift "$STUDY_SHIFT"
case $cfg in
    *vit*) layers=${LAYERS:-last_block last_two_blocks} ;;
    *) layers=${LAYERS:-attnpool attnpool+layer4 attnpool+layer4+layer3} ;;
esac
# folder_of VALUE: the CFG_TAG of a value ("" for SAFE's default split: main.sh's own runs)
folder_of() {
    case $1 in attnpool|last_block) echo "" ;; *) echo "${1//+/-}" ;; esac
}
failed="" folders=()
for value in $layers; do
    CFG_TAG="$(folder_of "$value")" bash scripts/safe/main.sh "$dataset" "$shots" "$cfg" TRAINER.SAFE.TRAIN_LAYERS "$value" "$@" \
        || failed="${failed} ${value}"
    folders+=("${value}=${OUTPUT}/${dataset}/SAFE/$(CFG_TAG="$(folder_of "$value")" cfg_name "$cfg")_${shots}shots")
done
echo
study_report "SAFE: which layers are fine-tuned (${dataset}, ${shots} shots, ${cfg}, seeds ${SEEDS:-1 2 3})" "TRAIN_LAYERS" \
    "${OUTPUT}/studies/safe_layers_${dataset}_${cfg}_${shots}shots" "${folders[@]}"
if [ -n "$failed" ]; then
    echo "ERROR: SAFE layers study: no result for${failed} (see the lines above)"
    exit 1
fi
