#!/usr/bin/env bash
# The four seed populations of docs/reproduction.md ("Populations large enough to decide"), run in
# order over as many sessions as they take, on a machine that keeps no disk between sessions.
#
#   tools/seed_populations.sh run    import what studies/in-progress/ holds (once), then continue
#                                    each population in turn (resumable: rerun after any stop)
#   tools/seed_populations.sh save   pause nothing; export each started, unfinished population
#                                    without weights into studies/in-progress/<name>.tar.gz (stop
#                                    `run` first: an export refuses a study that changes under it)
#   tools/seed_populations.sh status points per status of each population
#
# RUNS (default: runs/, ignored by git) holds the study folders; WORKERS (default 2) the local
# workers. Every command is a plain `srrlab` command (docs/study.md, "Seeds" and "Moving a study").
set -euo pipefail
cd "$(dirname "$0")/.."
SRRLAB=${SRRLAB:-.venv/bin/srrlab}
RUNS=${RUNS:-runs}
WORKERS=${WORKERS:-2}
CARRY=studies/in-progress
# name | command | preset | published as docs/results/<this> (the order is the order of the runs;
# a population already published there is skipped)
POPULATIONS=(
  "reg-seeds|regularize|seeds|regularize-seeds"
  "demo-seeds|study|demo-seeds|demo-seeds"
  "reg-fmnist-seeds|regularize|fmnist-seeds|regularize-fmnist-seeds"
  "replicate-seeds|study|replicate-seeds|replicate-seeds"
)

published() { [ -f "docs/results/$1/runs.csv" ]; }  # a population committed under docs/results/<$1>/

counts() {  # points per status of a study folder
  [ -e "$1/study.sqlite" ] || { echo "not started"; return; }
  "$(dirname "$SRRLAB")/python" -c "import sys; from srrlab.study import StudyStore; print(StudyStore(sys.argv[1]).counts())" "$1"
}

run() {
  mkdir -p "$RUNS"
  for entry in "${POPULATIONS[@]}"; do
    IFS="|" read -r name cmd preset published <<<"$entry"
    dir="$RUNS/$name"
    if published "$published"; then
      echo "$name: published in docs/results/$published/, skipped"
      continue
    fi
    if [ ! -e "$dir/study.sqlite" ] && [ -f "$CARRY/$name.tar.gz" ]; then
      "$SRRLAB" study import "$CARRY/$name.tar.gz" "$dir"
    fi
    extra=()
    if [ "$name" = replicate-seeds ]; then  # the replicate's 32 models are its seed 0
      [ -e "$RUNS/replicate/study.sqlite" ] || "$SRRLAB" study import docs/results/replicate/export.tar.gz "$RUNS/replicate"
      extra=(--reuse "$RUNS/replicate")
    fi
    echo "$(date -u +%FT%TZ) start $name"
    start=$(date +%s)
    "$SRRLAB" "$cmd" run "$preset" --dir "$dir" --workers "$WORKERS" --quiet "${extra[@]}"
    echo "$(date -u +%FT%TZ) end $name: $(( $(date +%s) - start )) s this call"
  done
}

save() {
  mkdir -p "$CARRY"
  for entry in "${POPULATIONS[@]}"; do
    IFS="|" read -r name _ _ published <<<"$entry"
    dir="$RUNS/$name"
    published "$published" && { rm -f "$CARRY/$name.tar.gz"; continue; }  # done: publish, not carry
    [ -e "$dir/study.sqlite" ] || continue
    rm -f "$CARRY/.$name.tar.gz"  # export refuses to overwrite: write beside, then replace
    "$SRRLAB" study export "$dir" "$CARRY/.$name.tar.gz" --no-weights
    mv "$CARRY/.$name.tar.gz" "$CARRY/$name.tar.gz"
  done
}

case "${1:-}" in
  run) run ;;
  save) save ;;
  status)
    for entry in "${POPULATIONS[@]}"; do
      IFS="|" read -r name _ _ published <<<"$entry"
      if published "$published"; then echo "$name: published (docs/results/$published/)"
      else echo "$name: $(counts "$RUNS/$name")"; fi
    done ;;
  *) echo "usage: $0 run|save|status" >&2; exit 2 ;;
esac
