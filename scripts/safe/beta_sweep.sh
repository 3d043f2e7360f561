#!/bin/bash
# SAFE's beta study (paper Sec. IV-D1, Fig. 5): train once per seed, then evaluate the saved
# models at every beta of Eq. (3) without retraining, on the source test set and on shifted sets.
#   bash scripts/safe/beta_sweep.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   env BETAS (default 0.0 0.1 ... 1.0); BETA_TARGETS: target datasets (default for imagenet:
#   imagenetv2 imagenet_sketch imagenet_a imagenet_r, otherwise none; on the kit e.g.
#   BETA_TARGETS=synth_shapes_sketch); SEEDS, DATA, OUTPUT, PYTHON, CFG_TAG as in main.sh.
#   Training goes through scripts/safe/main.sh (the rerun rule applies); each beta is evaluated
#   into ${OUTPUT}/evaluation/D/SAFE/CFG_SHOTSshots[_from_SOURCE]_beta<b>/seedS (EVAL_TAG folders).
#   Target features are computed once and reused from the feature cache (TRAINER.FEATURES.CACHE_DIR,
#   shared by every run; its key does not depend on beta). Ends with the table and the plot of
#   python -m fsclip.results.beta_sweep, written to ${OUTPUT}/beta_sweep/.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
dataset=${1:?usage: beta_sweep.sh DATASET SHOTS [CFG] [KEY VALUE ...]}
shots=${2:?usage: beta_sweep.sh DATASET SHOTS [CFG] [KEY VALUE ...]}
cfg=${3:-rn50}
shift $(( $# < 3 ? $# : 3 ))
betas=${BETAS:-0.0 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0}
if [ -z "${BETA_TARGETS+x}" ]; then
    if [ "$dataset" = imagenet ]; then BETA_TARGETS="imagenetv2 imagenet_sketch imagenet_a imagenet_r"; else BETA_TARGETS=""; fi
fi
bash scripts/safe/main.sh "$dataset" "$shots" "$cfg" "$@"
name="$(cfg_name "$cfg")_${shots}shots"
model_base="${OUTPUT}/${dataset}/SAFE/${name}"
# the evaluations of eval.sh (EVAL_TAG=beta<b>) and ood.sh, summarised once in the table below
for b in $betas; do
    seed_runs test SAFE "$dataset" "$cfg" "${OUTPUT}/evaluation/${dataset}/SAFE/${name}_beta${b}" "$model_base" \
        DATASET.NUM_SHOTS "$shots" TRAINER.SAFE.BETA "$b" "$@"
    for target in $BETA_TARGETS; do
        seed_runs test SAFE "$target" "$cfg" "${OUTPUT}/evaluation/${target}/SAFE/${name}_from_${dataset}_beta${b}" \
            "$model_base" TRAINER.SAFE.BETA "$b" "$@"
    done
done
# shellcheck disable=SC2086
$PYTHON -m fsclip.results.beta_sweep "$OUTPUT" --source "$dataset" --name "$name" \
    --betas $betas ${BETA_TARGETS:+--targets $BETA_TARGETS}
