# Sourced by DPT's paper-table scripts: scripts/common.sh and the paper's protocol (its 8 datasets,
# 16 shots, ViT-B/32), each overridable from the environment (DATASETS, SHOTS, CFG).
source scripts/common.sh
DATASETS=${DATASETS:-eurosat caltech101 oxford_flowers food101 fgvc_aircraft dtd oxford_pets stanford_cars}
SHOTS=${SHOTS:-16}
CFG=${CFG:-vit_b32}
