# Shared helpers for the method scripts (source it; do not run it).
#   DATA    dataset root (default: ./data)
#   PYTHON  interpreter (default: python)
#   OUTPUT  output root (default: ./output)
#   SEEDS   seeds of the fewshot_* helpers (default: 1 2 3)
#   CFG_TAG names runs of other options apart: folders CFG_<CFG_TAG>_<N>shots (default: none)
#   FORCE   1: redo finished runs whose config changed or was not recorded; all: every run
DATA=${DATA:-./data}
PYTHON=${PYTHON:-python}
OUTPUT=${OUTPUT:-./output}

# prepare_run DIR: keep the log (and recorded config) of an unfinished (crashed) run as
# log.txt.crashed-<time> so that the rerun writes a fresh log.txt that the parser reads.
prepare_run() {
    $PYTHON -m fsclip.runs prepare "$1"
}

# start_run DIR MODE [train.py args ...]: the rerun rule (python -m fsclip.runs). Returns
#   0 (and prepares DIR) when the run is to be done: no log, an unfinished log, or FORCE;
#   1 when DIR has a final result of the same config (or of a run that recorded none);
#   3 when DIR has a final result of another config: it says which keys differ (old -> new)
#     and leaves the run as it is (FORCE=1 redoes it in place; FORCE=all redoes every run).
#   Without train.py args, a finished run is skipped without comparing configs.
start_run() {
    local dir=$1 mode=$2
    shift 2
    $PYTHON -m fsclip.runs start "$dir" "$mode" --force "${FORCE:-}" ${1+-- "$@"}
}

# train_argv TRAINER DATASET CFG SEED OUTDIR [train.py args ...]: sets the array TRAIN_ARGV
# to train.py's arguments for one run (fsclip.sweep builds the same; tests/test_sweep.py checks).
train_argv() {
    local trainer=$1 dataset=$2 cfg=$3 seed=$4 out=$5
    shift 5
    TRAIN_ARGV=(
        --root "$DATA"
        --seed "$seed"
        --trainer "$trainer"
        --dataset-config-file "configs/datasets/${dataset}.yaml"
        --config-file "configs/trainers/${trainer}/${cfg}.yaml"
        --output-dir "$out" "$@")
}

# train_run TRAINER DATASET CFG SEED OUTDIR [train.py args ...]: one train.py call
train_run() {
    train_argv "$@"
    $PYTHON train.py "${TRAIN_ARGV[@]}"
}

# run_or_skip MODE TRAINER DATASET CFG SEED OUTDIR [train.py args ...]: start_run with the
# run's train.py arguments, then train_run when it is to be done; returns start_run's 1 or 3
# for a skipped run, otherwise train.py's exit status.
run_or_skip() {
    local mode=$1 rc=0
    shift
    train_argv "$@"
    start_run "$5" "$mode" "${TRAIN_ARGV[@]}" || rc=$?
    [ "$rc" -eq 0 ] || return "$rc"
    $PYTHON train.py "${TRAIN_ARGV[@]}"
}

# not_rerun_error COUNT BASE: the closing line when runs of another config were left as they are
not_rerun_error() {
    echo "ERROR: $1 run(s) in $2 hold results of another config (listed above with how to" \
        "rerun them); nothing was rerun and they are not summarised"
}

# cfg_name CFG: the folder name of a method config: CFG, or CFG_<CFG_TAG> when CFG_TAG is set
cfg_name() {
    echo "${1}${CFG_TAG:+_${CFG_TAG}}"
}

# fewshot_main TRAINER DATASET SHOTS [CFG] [KEY VALUE ...]
#   Trains and tests seeds ${SEEDS:-1 2 3} into
#   ${OUTPUT}/DATASET/TRAINER/CFG_SHOTSshots/seedS (CFG_<CFG_TAG>_SHOTSshots when CFG_TAG is
#   set), skipping runs finished with the same config and redoing unfinished ones (see
#   start_run), then prints mean +- std over the seeds.
fewshot_main() {
    local trainer=$1 dataset=${2:?usage: main.sh DATASET SHOTS [CFG] [KEY VALUE ...]} shots=${3:?usage: main.sh DATASET SHOTS [CFG] [KEY VALUE ...]}
    local cfg=${4:-rn50}
    shift $(( $# < 4 ? $# : 4 ))
    local seed rc conflicts=0
    local base="${OUTPUT}/${dataset}/${trainer}/$(cfg_name "$cfg")_${shots}shots"
    for seed in ${SEEDS:-1 2 3}; do
        rc=0
        run_or_skip train "$trainer" "$dataset" "$cfg" "$seed" "${base}/seed${seed}" \
            DATASET.NUM_SHOTS "$shots" "$@" || rc=$?
        case $rc in 0|1) ;; 3) conflicts=$((conflicts + 1)) ;; *) return "$rc" ;; esac
    done
    if [ "$conflicts" -gt 0 ]; then
        not_rerun_error "$conflicts" "$base"
        return 1
    fi
    $PYTHON parse_test_res.py "$base"
}

# fewshot_eval TRAINER DATASET SHOTS [CFG] [KEY VALUE ...]
#   Re-evaluates trained runs (eval-only, e.g. another TRAINER.SAFE.BETA) into
#   ${OUTPUT}/evaluation/DATASET/TRAINER/CFG_SHOTSshots${EVAL_TAG:+_EVAL_TAG}/seedS, under the
#   rerun rule (an evaluation of the same model with the same config is skipped).
fewshot_eval() {
    local trainer=$1 dataset=${2:?usage: eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]} shots=${3:?usage: eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]}
    local cfg=${4:-rn50}
    shift $(( $# < 4 ? $# : 4 ))
    local seed rc conflicts=0
    local name
    name="$(cfg_name "$cfg")_${shots}shots"
    local base="${OUTPUT}/evaluation/${dataset}/${trainer}/${name}${EVAL_TAG:+_${EVAL_TAG}}"
    for seed in ${SEEDS:-1 2 3}; do
        rc=0
        run_or_skip test "$trainer" "$dataset" "$cfg" "$seed" "${base}/seed${seed}" \
            --model-dir "${OUTPUT}/${dataset}/${trainer}/${name}/seed${seed}" --eval-only \
            DATASET.NUM_SHOTS "$shots" "$@" || rc=$?
        case $rc in 0|1) ;; 3) conflicts=$((conflicts + 1)) ;; *) return "$rc" ;; esac
    done
    if [ "$conflicts" -gt 0 ]; then
        not_rerun_error "$conflicts" "$base"
        return 1
    fi
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
    local target seed rc conflicts base name
    name="$(cfg_name "$cfg")_${shots}shots"
    for target in ${OOD_TARGETS:-imagenetv2 imagenet_sketch imagenet_a imagenet_r}; do
        base="${OUTPUT}/evaluation/${target}/${trainer}/${name}_from_${source}"
        conflicts=0
        for seed in ${SEEDS:-1 2 3}; do
            rc=0
            run_or_skip test "$trainer" "$target" "$cfg" "$seed" "${base}/seed${seed}" \
                --model-dir "${OUTPUT}/${source}/${trainer}/${name}/seed${seed}" --eval-only "$@" || rc=$?
            case $rc in 0|1) ;; 3) conflicts=$((conflicts + 1)) ;; *) return "$rc" ;; esac
        done
        if [ "$conflicts" -gt 0 ]; then
            not_rerun_error "$conflicts" "$base"
            return 1
        fi
        $PYTHON parse_test_res.py "$base" --test-log
    done
}
