#!/bin/bash
# Issue 19: SmolLM2 8k -> 32k, zero-shot, the default strategy (CMA-ES) at ~40 evaluations of one 32k window.
#   bash queue_s32.sh TREE RUNS   (resume.sh passes a frozen worktree and the runs folder)
# Finished and committed as experiments/results/smollm2_32k_efficient; then this queue does nothing.
cd "$1"; W=$2/smollm2_32k_efficient
[ -f experiments/results/smollm2_32k_efficient/summary.json ] && exit 0
python -m experiments.search --config configs/smollm2_135m.py --workdir "$W" \
  --config.search.target_length=32768 --config.search.strategy=cmaes --config.search.max_evaluations=40 \
  --config.search.cma_population=6 --config.search.generations=40 \
  --config.search.documents=1 --config.search.batch_size=2 --config.search.seed_methods=ntk,yarn \
  --config.search.seed_scales=1.0,1.25 --config.search.cache="$W/search.cache"
echo "=== s32 exit $? $(date)"
