#!/bin/bash
# SAFE's "which layers to fine-tune" study (paper Sec. IV-D2): the same runs as main.sh for each
# TRAINER.SAFE.TRAIN_LAYERS value, side by side, then a table of test accuracy (mean +- std).
#   bash scripts/safe/layers.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   env LAYERS: the values (default for ResNet configs: attnpool attnpool+layer4
#   attnpool+layer4+layer3; for ViT configs (CFG containing "vit"): last_block last_two_blocks);
#   each into ${OUTPUT}/DATASET/SAFE/CFG_<value>_SHOTSshots ("+" written "-"; CFG_TAG folders),
#   except SAFE's own split (attnpool; ViT: last_block), which is main.sh's run CFG_SHOTSshots.
#   SEEDS, DATA, OUTPUT, PYTHON as in main.sh (the rerun rule applies).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
dataset=${1:?usage: layers.sh DATASET SHOTS [CFG] [KEY VALUE ...]}
shots=${2:?usage: layers.sh DATASET SHOTS [CFG] [KEY VALUE ...]}
cfg=${3:-rn50}
shift $(( $# < 3 ? $# : 3 ))
case $cfg in
    *vit*) layers=${LAYERS:-last_block last_two_blocks} ;;
    *) layers=${LAYERS:-attnpool attnpool+layer4 attnpool+layer4+layer3} ;;
esac
# folder_of VALUE: the CFG_TAG of a value ("" for SAFE's default split: main.sh's own runs)
folder_of() {
    case $1 in attnpool|last_block) echo "" ;; *) echo "${1//+/-}" ;; esac
}
failed=""
for value in $layers; do
    CFG_TAG="$(folder_of "$value")" bash scripts/safe/main.sh "$dataset" "$shots" "$cfg" TRAINER.SAFE.TRAIN_LAYERS "$value" "$@" \
        || failed="${failed} ${value}"
done
echo
echo "SAFE: which layers are fine-tuned (${dataset}, ${shots} shots, ${cfg}, seeds ${SEEDS:-1 2 3}): test accuracy (%), mean +- std"
echo "| TRAIN_LAYERS | accuracy |"
echo "| --- | --: |"
for value in $layers; do
    cell=""
    case " ${failed} " in
        *" ${value} "*) ;;
        *) cell=$($PYTHON parse_test_res.py "${OUTPUT}/${dataset}/SAFE/$(CFG_TAG="$(folder_of "$value")" cfg_name "$cfg")_${shots}shots" 2>/dev/null \
               | sed -n 's/^\* accuracy: \([0-9.]*\)% +- \([0-9.]*\)%$/\1 +- \2/p' | tail -n 1 || true) ;;
    esac
    echo "| ${value} | ${cell:--} |"
done
if [ -n "$failed" ]; then
    echo "ERROR: SAFE layers study: no result for${failed} (see the lines above)"
    exit 1
fi
