#!/bin/bash
# Continues the long CPU runs that span development sessions (see README.md beside this file).
#   bash experiments/in_progress/resume.sh [RUNS]     # RUNS: where workdirs live, default ../runs
#   START=0 bash experiments/in_progress/resume.sh    # restore the state only
# Each run's saved state (copied here by save.sh at the end of a session) is restored into RUNS unless RUNS
# already holds a newer one, and the three queues start in the background from frozen worktrees, so that
# editing the checkout does not change code under a running job. Logs: RUNS/logs/<queue>.log.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
runs=$(mkdir -p "${1:-$repo/../runs}" && cd "${1:-$repo/../runs}" && pwd)
saved=$repo/experiments/in_progress/state
mkdir -p "$runs/logs"
if [ -d "$saved" ]; then
  (cd "$saved" && find . -type f) | while read -r f; do
    [ -e "$runs/$f" ] && [ "$runs/$f" -nt "$saved/$f" ] && continue
    mkdir -p "$runs/$(dirname "$f")" && cp -p "$saved/$f" "$runs/$f"
  done
fi
[ "${START:-1}" = 1 ] || { echo "restored into $runs"; exit 0; }
# One core per queue: XLA's CPU thread pool waits at every op for its slowest thread, so two jobs sharing both
# cores stall each other (and `nice` does not help across separate sessions: autogroup scheduling). Pinned, a
# 16k RULER prompt took 10.5 min on its core, against 20-40 min when both queues shared both cores.
core=0
for queue in bench ruler; do
  tree=$repo/../frozen_$queue
  [ -d "$tree" ] || git -C "$repo" worktree add -f --detach "$tree" HEAD -q
  git -C "$tree" checkout -q --detach "$(git -C "$repo" rev-parse HEAD)"
  nohup taskset -c $((core % $(nproc))) bash "$tree/experiments/in_progress/queue_$queue.sh" "$tree" "$runs" \
    > "$runs/logs/$queue.log" 2>&1 &
  core=$((core + 1))
done
echo "started the bench and ruler queues; logs in $runs/logs"
