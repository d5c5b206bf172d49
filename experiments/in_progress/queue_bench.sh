#!/bin/bash
# Issue 18 (and 19's strategy rows): fixture searches one after another; each resumes from RUNS/bench/<name>,
# results land in RUNS/bench_results/<name> (copy finished ones to experiments/results/).
#   bash queue_bench.sh TREE RUNS
cd "$1"; runs=$2
run() { name=$1; shift
  # done: committed under experiments/results, or finished here and waiting to be committed
  [ -f "experiments/results/$name/summary.json" ] || [ -f "$runs/bench_results/$name/summary.json" ] && return
  echo "=== $name $(date)"
  python -m experiments.search_bench --workdir "$runs/bench/$name" --results "$runs/bench_results" --name "$name" "$@"
  echo "=== $name exit $? $(date)"; }
echo "=== efficiency rows $(date)"
[ -f "$runs/search_efficiency.json" ] || cp benchmarks/results/search_efficiency.json "$runs/search_efficiency.json"
python -m benchmarks.search_efficiency --ratios 8,16 --seeds 0,1,2 --strategies surrogate,multifidelity \
  --references experiments/results --workdir "$runs/search_efficiency" --out "$runs/search_efficiency.json"
run mini_8x_unordered --ratio 8 --config.search.space=dim
run mini_8x_longrope2 --ratio 8 --config.search.space=longrope2
run mini_4x_longrope2 --ratio 4 --config.search.space=longrope2
run mini_8x_seed1 --ratio 8 --config.search.seed=1 --config.search.windows_seed=0
run mini_8x_seed2 --ratio 8 --config.search.seed=2 --config.search.windows_seed=0
run mini_16x_longrope2 --ratio 16 --config.search.space=longrope2
python -m benchmarks.search_efficiency --ratios 32 --seeds 0,1,2 --strategies surrogate,multifidelity \
  --references experiments/results --workdir "$runs/search_efficiency" --out "$runs/search_efficiency.json"
if [ ! -f experiments/results/mini_recipe/report.md ] && [ ! -f "$runs/bench_results/mini_recipe.done" ]; then
  echo "=== mini_recipe $(date)"
  python -m experiments.extend --config configs/mini.py:recipe --workdir "$runs/mini_recipe" \
    && mkdir -p "$runs/bench_results" && touch "$runs/bench_results/mini_recipe.done"
fi
run mini_32x_seed1 --ratio 32 --config.search.seed=1 --config.search.windows_seed=0
run mini_32x_seed2 --ratio 32 --config.search.seed=2 --config.search.windows_seed=0
run mini_64x --ratio 64
run mini_32x_longrope2 --ratio 32 --config.search.space=longrope2
run mini_64x_longrope2 --ratio 64 --config.search.space=longrope2
# beyond issue 18: the default strategy at 64x, beside mini_32x_efficient
run mini_64x_efficient --ratio 64 --config.search.strategy=cmaes --config.search.max_evaluations=269 \
  --config.search.generations=10000 --config.search.windows_seed=0
