#!/bin/bash
# SAFE's prompt-choice study (paper Fig. 8): the same runs as main.sh with each text classifier
# W_c, side by side, then a table and a bar chart of test accuracy (mean +- std over seeds).
#   bash scripts/safe/prompts.sh DATASET SHOTS [CFG] [KEY VALUE ...]
#   Variants (TRAINER.FEATURES.PROMPTS; each into ${OUTPUT}/DATASET/SAFE/CFG_<tag>_SHOTSshots):
#     Class name (classname), Vanilla (single: the dataset's one template), Ensemble (ensemble:
#     SAFE's default, main.sh's own runs CFG_SHOTSshots), Template mining (mined: the best
#     TRAINER.FEATURES.MINED_TEMPLATES=21 of the 180-template pool on the few-shot train + val
#     images), CuPL (a JSON file of prompts per class) and Linear fine-tuning (CuPL's W_c trained
#     with the attention pool, TRAINER.SAFE.TRAIN_CLASSIFIER True).
#   env CUPL: the CuPL file (default: fsclip/kit/prompts/DATASET.json where the kit ships one;
#   without a file the CuPL and linear variants are left out with a note). SEEDS, DATA, OUTPUT,
#   PYTHON as in main.sh (the rerun rule applies). Table and chart: ${OUTPUT}/studies/.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
study_args prompts.sh "$@"
shift "$STUDY_SHIFT"
cupl=${CUPL:-}
if [ -z "$cupl" ] && [ -f "fsclip/kit/prompts/${dataset}.json" ]; then cupl="fsclip/kit/prompts/${dataset}.json"; fi
# variant: LABEL|CFG_TAG|KEY VALUE ...
variants=("Class name|classname|TRAINER.FEATURES.PROMPTS classname"
          "Vanilla|single|TRAINER.FEATURES.PROMPTS single"
          "Ensemble||TRAINER.FEATURES.PROMPTS ensemble"
          "Template mining|mined|TRAINER.FEATURES.PROMPTS mined")
if [ -n "$cupl" ]; then
    variants+=("CuPL|cupl|TRAINER.FEATURES.PROMPTS ${cupl}"
               "Linear fine-tuning|linear|TRAINER.FEATURES.PROMPTS ${cupl} TRAINER.SAFE.TRAIN_CLASSIFIER True")
else
    echo "Note: no CuPL file for ${dataset} (set CUPL=path/to/prompts.json): the CuPL and linear fine-tuning variants are left out"
fi
failed="" folders=()
for v in "${variants[@]}"; do
    IFS='|' read -r label tag opts <<< "$v"
    # shellcheck disable=SC2086
    CFG_TAG="$tag" bash scripts/safe/main.sh "$dataset" "$shots" "$cfg" $opts "$@" || failed="${failed} ${label// /_}"
    folders+=("${label}=${OUTPUT}/${dataset}/SAFE/$(CFG_TAG="$tag" cfg_name "$cfg")_${shots}shots")
done
echo
study_report "SAFE: text classifier W_c (${dataset}, ${shots} shots, ${cfg}, seeds ${SEEDS:-1 2 3})" "text classifier" \
    "${OUTPUT}/studies/safe_prompts_${dataset}_${cfg}_${shots}shots" "${folders[@]}"
if [ -n "$failed" ]; then
    echo "ERROR: SAFE prompts study: no result for${failed} (see the lines above)"
    exit 1
fi
