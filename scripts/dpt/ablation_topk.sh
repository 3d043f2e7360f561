#!/bin/bash
# DPT Table 3: VPT-CLIP-CAVPT with K_T (TRAINER.DPT.CAVPT.TOPK) classes from zero-shot CLIP's top
# scores, K_T in ${TOPKS:-5 10 20 50 100} and all classes ("full"), on the paper's 8 datasets at 16
# shots (seeds 1 2 3), then the table. Runs: <dataset>/VPT_CLIP_CAVPT/<CFG>_topk<K>_<SHOTS>shots
# (CFG_TAG=topk<K>). As in the paper, a K_T not below a dataset's number of classes is not run
# (it equals "full"): the table shows that cell as missing.
#   bash scripts/dpt/ablation_topk.sh
#   env TOPKS, DATASETS, SHOTS, CFG, SEEDS, DATA, OUTPUT, PYTHON, FORCE as in table1.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/dpt/paper.sh
TOPKS=${TOPKS:-5 10 20 50 100}

classes() {  # number of classes of a dataset (0: unknown, run every K_T)
    case "$1" in
        eurosat|synth_shapes) echo 10 ;; synth_textures) echo 20 ;; oxford_pets) echo 37 ;; dtd) echo 47 ;;
        caltech101|fgvc_aircraft) echo 100 ;; food101) echo 101 ;; oxford_flowers) echo 102 ;;
        stanford_cars) echo 196 ;; *) echo 0 ;;
    esac
}

methods=() names=()
for k in $TOPKS full; do
    value=$k
    [ "$k" = "full" ] && value=0  # TOPK 0: every class
    for dataset in $DATASETS; do
        n=$(classes "$dataset")
        if [ "$k" != "full" ] && [ "$n" -gt 0 ] && [ "$k" -ge "$n" ]; then
            continue
        fi
        CFG_TAG=topk$k fewshot_main VPT_CLIP_CAVPT "$dataset" "$SHOTS" "$CFG" TRAINER.DPT.CAVPT.TOPK "$value"
    done
    methods+=("VPT_CLIP_CAVPT/${CFG}_topk$k")
    names+=("VPT_CLIP_CAVPT/${CFG}_topk$k=K_T = $k")
done

echo "DPT Table 3: VPT-CLIP-CAVPT by K_T ($SHOTS shots, seeds ${SEEDS:-1 2 3})"
# shellcheck disable=SC2086
$PYTHON -m fsclip.results "$OUTPUT" --tables fewshot --shots "$SHOTS" --datasets $DATASETS \
    --methods "${methods[@]}" --method-name full --rename "${names[@]}"
