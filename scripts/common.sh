# Shared helpers for the method scripts (source it; do not run it).
#   DATA    dataset root (default: ./data)
#   PYTHON  interpreter (default: python)
#   OUTPUT  output root (default: ./output)
DATA=${DATA:-./data}
PYTHON=${PYTHON:-python}
OUTPUT=${OUTPUT:-./output}

# run_finished DIR MODE: true when DIR/log.txt reports a final result.
#   MODE=train: an "* accuracy:" line after "Finish training"
#   MODE=test:  an "* accuracy:" line after "=> result" (eval-only runs)
run_finished() {
    local log="$1/log.txt" mode="${2:-train}"
    [ -f "$log" ] || return 1
    if [ "$mode" = "train" ]; then
        awk '/^Finish training/{f=1} f && /^\* accuracy: /{ok=1} END{exit !ok}' "$log"
    else
        awk '/^=> result/{f=1} f && /^\* accuracy: /{ok=1} END{exit !ok}' "$log"
    fi
}

# prepare_run DIR: keep the log of an unfinished (crashed) run as log.txt.crashed-<time>
# so that the rerun writes a fresh log.txt that the parser reads.
prepare_run() {
    local dir="$1"
    if [ -f "$dir/log.txt" ]; then
        local stamp
        stamp=$(date +%Y%m%d-%H%M%S)
        mv "$dir/log.txt" "$dir/log.txt.crashed-$stamp"
        echo "Redoing unfinished run in $dir (old log kept as log.txt.crashed-$stamp)"
    fi
    mkdir -p "$dir"
}

# start_run DIR MODE: false (and says so) when DIR already has a final result, otherwise
# prepares DIR for a (re)run (see run_finished and prepare_run).
start_run() {
    if run_finished "$1" "$2"; then
        echo "Results are available in $1; skipping"
        return 1
    fi
    prepare_run "$1"
}

# train_run TRAINER DATASET CFG SEED OUTDIR [train.py args ...]: one train.py call
train_run() {
    local trainer=$1 dataset=$2 cfg=$3 seed=$4 out=$5
    shift 5
    $PYTHON train.py \
        --root "$DATA" \
        --seed "$seed" \
        --trainer "$trainer" \
        --dataset-config-file "configs/datasets/${dataset}.yaml" \
        --config-file "configs/trainers/${trainer}/${cfg}.yaml" \
        --output-dir "$out" "$@"
}

# fewshot_main TRAINER DATASET SHOTS [CFG] [KEY VALUE ...]
#   Trains and tests seeds ${SEEDS:-1 2 3} into
#   ${OUTPUT}/DATASET/TRAINER/CFG_SHOTSshots/seedS, skipping finished runs and redoing
#   unfinished ones, then prints mean +- std over the seeds.
fewshot_main() {
    local trainer=$1 dataset=${2:?usage: main.sh DATASET SHOTS [CFG] [KEY VALUE ...]} shots=${3:?usage: main.sh DATASET SHOTS [CFG] [KEY VALUE ...]}
    local cfg=${4:-rn50}
    shift $(( $# < 4 ? $# : 4 ))
    local seed dir
    local base="${OUTPUT}/${dataset}/${trainer}/${cfg}_${shots}shots"
    for seed in ${SEEDS:-1 2 3}; do
        dir="${base}/seed${seed}"
        start_run "$dir" train || continue
        train_run "$trainer" "$dataset" "$cfg" "$seed" "$dir" DATASET.NUM_SHOTS "$shots" "$@"
    done
    $PYTHON parse_test_res.py "$base"
}

# fewshot_eval TRAINER DATASET SHOTS [CFG] [KEY VALUE ...]
#   Re-evaluates trained runs (eval-only, e.g. another TRAINER.SAFE.BETA) into
#   ${OUTPUT}/evaluation/DATASET/TRAINER/CFG_SHOTSshots${EVAL_TAG:+_EVAL_TAG}/seedS.
fewshot_eval() {
    local trainer=$1 dataset=${2:?usage: eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]} shots=${3:?usage: eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]}
    local cfg=${4:-rn50}
    shift $(( $# < 4 ? $# : 4 ))
    local seed model out
    local base="${OUTPUT}/evaluation/${dataset}/${trainer}/${cfg}_${shots}shots${EVAL_TAG:+_${EVAL_TAG}}"
    for seed in ${SEEDS:-1 2 3}; do
        model="${OUTPUT}/${dataset}/${trainer}/${cfg}_${shots}shots/seed${seed}"
        out="${base}/seed${seed}"
        prepare_run "$out"
        train_run "$trainer" "$dataset" "$cfg" "$seed" "$out" --model-dir "$model" --eval-only \
            DATASET.NUM_SHOTS "$shots" "$@"
    done
    $PYTHON parse_test_res.py "$base" --test-log
}

# fewshot_ood TRAINER [CFG] [KEY VALUE ...]
#   Trains on ${OOD_SOURCE:-imagenet} with ${OOD_SHOTS:-16} shots (seeds as above), then
#   evaluates each model on ${OOD_TARGETS:-imagenetv2 imagenet_sketch imagenet_a imagenet_r}
#   into ${OUTPUT}/evaluation/TARGET/TRAINER/CFG_SHOTSshots_from_SOURCE/seedS. On the kit:
#   OOD_SOURCE=synth_shapes OOD_TARGETS=synth_shapes_sketch OOD_SHOTS=4 bash scripts/safe/ood.sh micro_rn
fewshot_ood() {
    local trainer=$1 cfg=${2:-rn50}
    shift $(( $# < 2 ? $# : 2 ))
    local source=${OOD_SOURCE:-imagenet} shots=${OOD_SHOTS:-16}
    fewshot_main "$trainer" "$source" "$shots" "$cfg" "$@"
    local target seed out base
    for target in ${OOD_TARGETS:-imagenetv2 imagenet_sketch imagenet_a imagenet_r}; do
        base="${OUTPUT}/evaluation/${target}/${trainer}/${cfg}_${shots}shots_from_${source}"
        for seed in ${SEEDS:-1 2 3}; do
            out="${base}/seed${seed}"
            start_run "$out" test || continue
            train_run "$trainer" "$target" "$cfg" "$seed" "$out" \
                --model-dir "${OUTPUT}/${source}/${trainer}/${cfg}_${shots}shots/seed${seed}" --eval-only "$@"
        done
        $PYTHON parse_test_res.py "$base" --test-log
    done
}

# fewshot_ablation TRAINER NAME KEY "VALUE ..." [KEY VALUE ...]
#   An ablation of one config KEY: fewshot_main for every dataset in ${DATASETS} and every value,
#   with ${SHOTS:-16} shots and config ${CFG:-rn50}, each value in its own output root
#   ${OUTPUT}/ablation/TRAINER_NAME/NAMEVALUE (finished runs are skipped as in fewshot_main);
#   then a table of test accuracy, mean +- std over the seeds, one row per dataset and one
#   column per value (runs without a result show as "-").
fewshot_ablation() {
    local trainer=$1 name=$2 key=$3 values=$4
    shift 4
    local shots=${SHOTS:-16} cfg=${CFG:-rn50} datasets=${DATASETS:?set DATASETS to the datasets of the ablation}
    local root="${OUTPUT}/ablation/${trainer}_${name}" dataset value cell row header rule
    for dataset in $datasets; do
        for value in $values; do
            OUTPUT="${root}/${name}${value}" fewshot_main "$trainer" "$dataset" "$shots" "$cfg" "$key" "$value" "$@"
        done
    done
    header="| dataset |"
    rule="| --- |"
    for value in $values; do
        header="${header} ${name} ${value} |"
        rule="${rule} --: |"
    done
    echo
    echo "${trainer} ablation of ${key} (${shots} shots, ${cfg}, seeds ${SEEDS:-1 2 3}): test accuracy (%), mean +- std"
    echo "$header"
    echo "$rule"
    for dataset in $datasets; do
        row="| ${dataset} |"
        for value in $values; do
            cell=$($PYTHON parse_test_res.py "${root}/${name}${value}/${dataset}/${trainer}/${cfg}_${shots}shots" 2>/dev/null \
                | sed -n 's/^\* accuracy: \([0-9.]*\)% +- \([0-9.]*\)%$/\1 +- \2/p' | tail -n 1 || true)
            row="${row} ${cell:--} |"
        done
        echo "$row"
    done
}
