#!/bin/bash
# KgCoOp cross-dataset / domain transfer (CoOp's and CoCoOp's protocol): train on ImageNet
# 16-shot, evaluate each seed's prompts on ImageNet-V2/Sketch/A/R and the other 10 datasets.
#   bash scripts/kgcoop/ood.sh [CFG] [KEY VALUE ...]        (CFG default: rn50)
#   env OOD_SOURCE, OOD_SHOTS, OOD_TARGETS change source, shots and targets (scripts/common.sh), e.g.
#   OOD_SOURCE=synth_shapes OOD_SHOTS=4 OOD_TARGETS=synth_shapes_sketch bash scripts/kgcoop/ood.sh micro_rn
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
export OOD_TARGETS=${OOD_TARGETS:-imagenetv2 imagenet_sketch imagenet_a imagenet_r caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101}
fewshot_ood KgCoOp "${1:-rn50}" "${@:2}"
