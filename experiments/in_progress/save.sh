#!/bin/bash
# Copies every unfinished run's resumable state from RUNS into experiments/in_progress/state (to be committed),
# so the next session continues it (resume.sh). Finished runs are committed under experiments/results instead.
#   bash experiments/in_progress/save.sh [RUNS]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
runs=$(cd "${1:-$repo/../runs}" && pwd)
saved=$repo/experiments/in_progress/state
rm -rf "$saved" && mkdir -p "$saved"
cd "$runs"
# search state + fitness cache (search_state.json, search.cache / fitness.sqlite), evaluation results.json, and
# the queues' markers of finished steps (*.done) and the training losses of each model they built (build_*.jsonl)
find . -path ./logs -prune -o -type f \( -name search_state.json -o -name search.cache -o -name fitness.sqlite \
  -o -name results.json -o -name search_efficiency.json -o -name "*.done" -o -name "build_*.jsonl" \) -print | while read -r f; do
  d=$(dirname "$f")
  # a finished search: its summary.json beside the state, in result/ (search_efficiency) or in bench_results/
  [ -f "$d/summary.json" ] || [ -f "$d/result/summary.json" ] || [ -f "bench_results/$(basename "$d")/summary.json" ] \
    && continue
  mkdir -p "$saved/$d" && cp -p "$f" "$saved/$f"
done
# An unfinished pipeline workdir (experiments.extend) small enough to travel, such as the fixture recipe's: all of
# it but the fine-tuning checkpoints, so its finished stages (the fine-tuned model included) are not redone and its
# running search resumes against the very same weights. SmolLM2's (hundreds of MB) keeps only its search state.
for m in */manifest.json; do
  [ -f "$m" ] || continue; d=$(dirname "$m")
  python3 -c "import json,sys; sys.exit(json.load(open(sys.argv[1]))['stages'].get('report',{}).get('status')!='done')" "$m" \
    && continue  # finished: committed under experiments/results instead
  [ "$(du -sm --exclude=checkpoints "$d" | cut -f1)" -le 40 ] || continue
  find "$d" -path '*/checkpoints' -prune -o -type f -exec cp -p --parents {} "$saved" \;
done
du -sh "$saved"
