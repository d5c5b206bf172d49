#!/bin/bash
# Issue 20: RULER-lite (+ passkey) on SmolLM2, every step resumable per sample.
#   bash queue_ruler.sh TREE RUNS
# Each model keeps one workdir, RUNS/ruler_smollm2/<model> (decoded samples are kept whatever the task list), with
# a marker per finished part. At 16k and 32k a prompt costs 2.5 and ~8 min of prefill on 2 cores, so the NIAH tasks
# the issue counts come first (5 samples), then passkey, then vt/cwe/fwe.
cd "$1"; R=$2/ruler_smollm2
NIAH=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery
part() { dir=$1 name=$2 tasks=$3; shift 3
  [ -f "$R/$dir/$name.done" ] && return
  echo "=== $dir/$name $(date)"
  python -m experiments.evaluate --config configs/smollm2_135m.py --workdir "$R/$dir" --config.eval.lengths= \
    --config.eval.ruler_template=smollm2 --config.eval.ruler_tasks=$tasks "$@" && touch "$R/$dir/$name.done"
  echo "=== $dir/$name exit $? $(date)"; }
F16=experiments/results/smollm2_16k/rope_scaling.json
# the searched 32k factors: the CMA-ES search (smollm2_32k is the NTK@40k seed it started from)
F32=experiments/results/smollm2_32k_efficient/rope_scaling.json
part base all $NIAH,vt,cwe,fwe --config.eval.ruler_lengths=4096,8192 --config.eval.ruler_samples=10 \
  --config.eval.ruler_methods=none
part searched16k niah $NIAH --config.eval.ruler_lengths=16384 --config.eval.ruler_samples=5 \
  --config.eval.ruler_methods=yarn,longrope --config.eval.factors=$F16
part searched32k niah $NIAH --config.eval.ruler_lengths=32768 --config.eval.ruler_samples=5 \
  --config.eval.ruler_methods=yarn,longrope --config.eval.factors=$F32
part searched16k passkey "" --config.eval.passkey_lengths=16384 --config.eval.passkey_methods=longrope \
  --config.eval.factors=$F16
part searched32k passkey "" --config.eval.passkey_lengths=32768 --config.eval.passkey_methods=longrope \
  --config.eval.factors=$F32
part searched16k other vt,cwe,fwe --config.eval.ruler_lengths=16384 --config.eval.ruler_samples=5 \
  --config.eval.ruler_methods=yarn,longrope --config.eval.factors=$F16
part searched32k other vt,cwe,fwe --config.eval.ruler_lengths=32768 --config.eval.ruler_samples=5 \
  --config.eval.ruler_methods=yarn,longrope --config.eval.factors=$F32
