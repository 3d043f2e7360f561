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

# seed_runs MODE TRAINER DATASET CFG BASE MODEL_BASE [train.py args ...]: run_or_skip for
#   each seed of ${SEEDS:-1 2 3} into BASE/seedS (MODE test: eval-only of MODEL_BASE/seedS).
#   Returns 0 when every run is done or skipped, 1 (after not_rerun_error) when some hold
#   results of another config, or the status of the first run that failed.
seed_runs() {
    local mode=$1 trainer=$2 dataset=$3 cfg=$4 base=$5 model_base=$6
    shift 6
    local seed rc conflicts=0
    for seed in ${SEEDS:-1 2 3}; do
        rc=0
        if [ "$mode" = test ]; then
            run_or_skip test "$trainer" "$dataset" "$cfg" "$seed" "${base}/seed${seed}" \
                --model-dir "${model_base}/seed${seed}" --eval-only "$@" || rc=$?
        else
            run_or_skip train "$trainer" "$dataset" "$cfg" "$seed" "${base}/seed${seed}" "$@" || rc=$?
        fi
        case $rc in 0|1) ;; 3) conflicts=$((conflicts + 1)) ;; *) return "$rc" ;; esac
    done
    if [ "$conflicts" -gt 0 ]; then
        not_rerun_error "$conflicts" "$base"
        return 1
    fi
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
    local base="${OUTPUT}/${dataset}/${trainer}/$(cfg_name "$cfg")_${shots}shots"
    seed_runs train "$trainer" "$dataset" "$cfg" "$base" "" DATASET.NUM_SHOTS "$shots" "$@" || return $?
    $PYTHON parse_test_res.py "$base"
}

# study_args SCRIPT "$@": a study script's DATASET SHOTS [CFG] into the variables dataset,
#   shots and cfg (default rn50); STUDY_SHIFT is how many arguments to shift before the
#   KEY VALUE options that go to every run.
study_args() {
    local script=$1
    shift
    dataset=${1:?usage: ${script} DATASET SHOTS [CFG] [KEY VALUE ...]}
    shots=${2:?usage: ${script} DATASET SHOTS [CFG] [KEY VALUE ...]}
    cfg=${3:-rn50}
    STUDY_SHIFT=$(( $# < 3 ? $# : 3 ))
}

# study_report TITLE HEADER STEM LABEL=FOLDER ...: the study's table (printed, STEM.md) and bar
#   chart (STEM.png) from the seeds of each folder (python -m fsclip.results.study)
study_report() {
    local title=$1 header=$2 stem=$3
    shift 3
    $PYTHON -m fsclip.results.study --title "$title" --header "$header" --out "$stem" "$@"
}

# fewshot_eval TRAINER DATASET SHOTS [CFG] [KEY VALUE ...]
#   Re-evaluates trained runs (eval-only, e.g. another TRAINER.SAFE.BETA) into
#   ${OUTPUT}/evaluation/DATASET/TRAINER/CFG_SHOTSshots${EVAL_TAG:+_EVAL_TAG}/seedS, under the
#   rerun rule (an evaluation of the same model with the same config is skipped).
fewshot_eval() {
    local trainer=$1 dataset=${2:?usage: eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]} shots=${3:?usage: eval.sh DATASET SHOTS [CFG] [KEY VALUE ...]}
    local cfg=${4:-rn50}
    shift $(( $# < 4 ? $# : 4 ))
    local name
    name="$(cfg_name "$cfg")_${shots}shots"
    local base="${OUTPUT}/evaluation/${dataset}/${trainer}/${name}${EVAL_TAG:+_${EVAL_TAG}}"
    seed_runs test "$trainer" "$dataset" "$cfg" "$base" "${OUTPUT}/${dataset}/${trainer}/${name}" \
        DATASET.NUM_SHOTS "$shots" "$@" || return $?
    $PYTHON parse_test_res.py "$base" --test-log
}

# transfer_eval TRAINER CFG SOURCE SHOTS TARGET [KEY VALUE ...]
#   Evaluates each seed's model trained on SOURCE (${OUTPUT}/SOURCE/TRAINER/CFG_SHOTSshots/seedS)
#   on TARGET, eval-only, into ${OUTPUT}/evaluation/TARGET/TRAINER/CFG_SHOTSshots_from_SOURCE/seedS
#   (rerun rule as above), then prints the target's mean +- std. The shared step of the
#   distribution-shift (fewshot_ood) and cross-dataset (xd_test) protocols; train.py checks that
#   the model fits the target's classes (fsclip/model_dir.py: class-agnostic prompts only).
transfer_eval() {
    local trainer=$1 cfg=$2 source=$3 shots=$4 target=$5
    shift 5
    local name base
    name="$(cfg_name "$cfg")_${shots}shots"
    base="${OUTPUT}/evaluation/${target}/${trainer}/${name}_from_${source}"
    seed_runs test "$trainer" "$target" "$cfg" "$base" "${OUTPUT}/${source}/${trainer}/${name}" "$@" || return $?
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
    local source=${OOD_SOURCE:-imagenet} shots=${OOD_SHOTS:-16} target
    fewshot_main "$trainer" "$source" "$shots" "$cfg" "$@"
    for target in ${OOD_TARGETS:-imagenetv2 imagenet_sketch imagenet_a imagenet_r}; do
        transfer_eval "$trainer" "$cfg" "$source" "$shots" "$target" "$@" || return $?
    done
}

# The cross-dataset protocol of CoOp, CoCoOp, MaPLe and PromptSRC: train on 16-shot ImageNet
# (all 1,000 classes), then evaluate the same prompts on the other ten datasets.
XD_DEFAULT_TARGETS="caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101"

# xd_train TRAINER [CFG] [KEY VALUE ...]
#   Step 1: fewshot_main on ${XD_SOURCE:-imagenet} with ${XD_SHOTS:-16} shots, all classes,
#   seeds ${SEEDS:-1 2 3}, into ${OUTPUT}/SOURCE/TRAINER/CFG_SHOTSshots/seedS (the folder of
#   fewshot_ood's source runs too: a model trained once serves both protocols).
xd_train() {
    local trainer=$1 cfg=${2:-rn50}
    shift $(( $# < 2 ? $# : 2 ))
    fewshot_main "$trainer" "${XD_SOURCE:-imagenet}" "${XD_SHOTS:-16}" "$cfg" "$@"
}

# xd_test TRAINER TARGET [CFG] [KEY VALUE ...]
#   Step 2: transfer_eval of the source's models (XD_SOURCE, XD_SHOTS as in step 1) on TARGET,
#   or on every dataset of ${XD_TARGETS:-the ten above} when TARGET is "all" (then the
#   cross-dataset table of fsclip-results for TRAINER). On the kit:
#   XD_SOURCE=synth_shapes XD_SHOTS=4 bash scripts/coop/xd_test.sh synth_textures micro_rn
xd_test() {
    local trainer=$1 target=${2:?usage: xd_test.sh TARGET|all [CFG] [KEY VALUE ...]} cfg=${3:-rn50}
    shift $(( $# < 3 ? $# : 3 ))
    local source=${XD_SOURCE:-imagenet} shots=${XD_SHOTS:-16} targets=$target t
    [ "$target" = all ] && targets=${XD_TARGETS:-$XD_DEFAULT_TARGETS}
    for t in $targets; do
        if [ "$t" = "$source" ]; then
            echo "ERROR: xd_test: target ${t} is the source dataset (XD_SOURCE=${source}): give another" \
                "dataset, or leave ${t} out of XD_TARGETS"
            return 2
        fi
    done
    for t in $targets; do
        transfer_eval "$trainer" "$cfg" "$source" "$shots" "$t" "$@" || return $?
    done
    if [ "$target" = all ]; then
        $PYTHON -m fsclip.results "$OUTPUT" --tables xd --methods "$trainer"
    fi
}

# base2new_train TRAINER DATASET SHOTS [CFG] [KEY VALUE ...]
#   CoCoOp's base-to-new protocol, step 1: trains on the base classes (the first half,
#   DATASET.SUBSAMPLE_CLASSES base) and tests on them, seeds ${SEEDS:-1 2 3}, into
#   ${OUTPUT}/base2new/train_base/DATASET/TRAINER/CFG_SHOTSshots/seedS, under the rerun rule
#   (see start_run; CFG_<CFG_TAG>_SHOTSshots when CFG_TAG is set).
base2new_train() {
    local trainer=$1 dataset=${2:?usage: base2new_train.sh DATASET SHOTS [CFG] [KEY VALUE ...]} shots=${3:?usage: base2new_train.sh DATASET SHOTS [CFG] [KEY VALUE ...]}
    local cfg=${4:-rn50}
    shift $(( $# < 4 ? $# : 4 ))
    local base="${OUTPUT}/base2new/train_base/${dataset}/${trainer}/$(cfg_name "$cfg")_${shots}shots"
    seed_runs train "$trainer" "$dataset" "$cfg" "$base" "" \
        DATASET.NUM_SHOTS "$shots" DATASET.SUBSAMPLE_CLASSES base "$@" || return $?
    $PYTHON parse_test_res.py "$base"
}

# base2new_test TRAINER DATASET SHOTS [CFG] [KEY VALUE ...]
#   Step 2: evaluates each seed's base-class model on the new classes (the second half,
#   DATASET.SUBSAMPLE_CLASSES new; eval-only) into
#   ${OUTPUT}/base2new/test_new/DATASET/TRAINER/CFG_SHOTSshots/seedS (rerun rule as above),
#   then prints the base and new summaries and * base, * new, * H (harmonic mean) from
#   parse_test_res.py --base2new.
base2new_test() {
    local trainer=$1 dataset=${2:?usage: base2new_test.sh DATASET SHOTS [CFG] [KEY VALUE ...]} shots=${3:?usage: base2new_test.sh DATASET SHOTS [CFG] [KEY VALUE ...]}
    local cfg=${4:-rn50}
    shift $(( $# < 4 ? $# : 4 ))
    local common
    common="${dataset}/${trainer}/$(cfg_name "$cfg")_${shots}shots"
    local base="${OUTPUT}/base2new/test_new/${common}"
    seed_runs test "$trainer" "$dataset" "$cfg" "$base" "${OUTPUT}/base2new/train_base/${common}" \
        DATASET.NUM_SHOTS "$shots" DATASET.SUBSAMPLE_CLASSES new "$@" || return $?
    $PYTHON parse_test_res.py "${OUTPUT}/base2new/train_base/${common}" --base2new "$base"
}

# fewshot_ablation TRAINER NAME KEY "VALUE ..." [KEY VALUE ...]
#   An ablation of one config KEY: fewshot_main (so the rerun rule: finished runs of the same
#   config are skipped, runs of another config are listed and left unless FORCE) for every
#   dataset in ${DATASETS} and every value, with ${SHOTS:-16} shots and config ${CFG:-rn50},
#   each value in its own output root ${OUTPUT}/ablation/TRAINER_NAME/NAMEVALUE; then a table
#   of test accuracy, mean +- std over the seeds, one row per dataset and one column per value
#   (settings without a result show as "-"). A failed setting does not stop the others; the
#   helper then names them and returns 1.
fewshot_ablation() {
    local trainer=$1 name=$2 key=$3 values=$4
    shift 4
    local shots=${SHOTS:-16} cfg=${CFG:-rn50} datasets=${DATASETS:?set DATASETS to the datasets of the ablation}
    local root="${OUTPUT}/ablation/${trainer}_${name}" folder dataset value cell row header rule failed=""
    folder="$(cfg_name "$cfg")_${shots}shots"
    for dataset in $datasets; do
        for value in $values; do
            OUTPUT="${root}/${name}${value}" fewshot_main "$trainer" "$dataset" "$shots" "$cfg" "$key" "$value" "$@" \
                || failed="${failed} ${dataset}:${name}${value}"
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
            cell=""
            case " ${failed} " in
                *" ${dataset}:${name}${value} "*) ;;  # not the results of the config requested
                *) cell=$($PYTHON parse_test_res.py "${root}/${name}${value}/${dataset}/${trainer}/${folder}" 2>/dev/null \
                       | sed -n 's/^\* accuracy: \([0-9.]*\)% +- \([0-9.]*\)%$/\1 +- \2/p' | tail -n 1 || true) ;;
            esac
            row="${row} ${cell:--} |"
        done
        echo "$row"
    done
    if [ -n "$failed" ]; then
        echo "ERROR: ${trainer} ablation: no summary for${failed} (see the lines above; ${root})"
        return 1
    fi
}
