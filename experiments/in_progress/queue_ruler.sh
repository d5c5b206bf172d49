#!/bin/bash
# Issue 20: RULER-lite (+ passkey) on SmolLM2, every step resumable per sample (RUNS/ruler_smollm2/<step>).
#   bash queue_ruler.sh TREE RUNS
cd "$1"; R=$2/ruler_smollm2
NIAH=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery
T=$NIAH,vt,cwe,fwe
step() { name=$1; shift
  [ -f "$R/$name.done" ] && return
  echo "=== $name $(date)"
  python -m experiments.evaluate --config configs/smollm2_135m.py --workdir "$R/$name" --config.eval.lengths= \
    --config.eval.ruler_template=smollm2 --config.eval.ruler_tasks=$T "$@" && touch "$R/$name.done"
  echo "=== $name exit $? $(date)"; }
step base --config.eval.ruler_lengths=4096,8192 --config.eval.ruler_samples=10 --config.eval.ruler_methods=none
step searched16k --config.eval.ruler_lengths=16384 --config.eval.ruler_samples=5 \
  --config.eval.ruler_methods=yarn,longrope --config.eval.factors=experiments/results/smollm2_16k/rope_scaling.json \
  --config.eval.passkey_lengths=16384,32768 --config.eval.passkey_methods=longrope
step searched32k --config.eval.ruler_lengths=32768 --config.eval.ruler_samples=5 \
  --config.eval.ruler_methods=yarn,longrope --config.eval.factors=experiments/results/smollm2_32k/rope_scaling.json \
  --config.eval.passkey_lengths=32768 --config.eval.passkey_methods=longrope
