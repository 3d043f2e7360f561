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
