#!/bin/bash
# Issue 20: RULER-lite (+ passkey) on SmolLM2, every step resumable per sample.
#   bash queue_ruler.sh TREE RUNS
# Each model keeps one workdir, RUNS/ruler_smollm2/<model> (decoded samples are kept whatever the task list), with
# a marker per finished part. At 16k and 32k a prompt costs 2.5 and ~8 min of prefill on 2 cores, so the NIAH tasks
# the issue counts come first (5 samples) with passkey, the 16k models before the 32k ones, then vt/cwe/fwe. The
# default run's export and the fine-tuned models are made here first (`job`), from the committed commands.
cd "$1"; R=$2/ruler_smollm2
NIAH=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery
part() { dir=$1 name=$2 tasks=$3; shift 3
  [ -f "$R/$dir/$name.done" ] && return
  echo "=== $dir/$name $(date)"
  python -m experiments.evaluate --config configs/smollm2_135m.py --workdir "$R/$dir" --config.eval.lengths= \
    --config.eval.ruler_template=smollm2 --config.eval.ruler_tasks=$tasks "$@" && touch "$R/$dir/$name.done"
  echo "=== $dir/$name exit $? $(date)"; }
unfinished() { for m in "$@"; do [ -f "$R/$m.done" ] || return 0; done; return 1; }
# build OUT METRICS CMD...: makes a model whose weights are too large to travel between sessions (save.sh keeps only
# the small search state), when a part that needs it is unfinished and OUT is missing; the rebuild in a later
# session is deterministic, and each build's training losses are kept (RUNS/ruler_smollm2/build_*.jsonl) to show it.
build() { out=$1 metrics=$2; shift 2; [ -e "$out" ] && return
  echo "=== build $out $(date)"; "$@"
  echo "=== build exit $? $(date)"; [ -f "$metrics" ] && cp "$metrics" "$R/build_$(basename "$(dirname "$out")")_$(date +%s).jsonl"; }
F16=experiments/results/smollm2_16k/rope_scaling.json
# the searched 32k factors: the CMA-ES search (smollm2_32k is the NTK@40k seed it started from)
F32=experiments/results/smollm2_32k_efficient/rope_scaling.json
part base all $NIAH,vt,cwe,fwe --config.eval.ruler_lengths=4096,8192 --config.eval.ruler_samples=10 \
  --config.eval.ruler_methods=none
part searched16k niah $NIAH --config.eval.ruler_lengths=16384 --config.eval.ruler_samples=5 \
  --config.eval.ruler_methods=yarn,longrope --config.eval.factors=$F16
part searched16k passkey "" --config.eval.passkey_lengths=16384 --config.eval.passkey_methods=longrope \
  --config.eval.factors=$F16
# the embedded default run (8k -> 16k, two fine-tuning steps on the train split); its export carries its factors
EXPORT=$2/smollm2_135m/export/hf
if unfinished export16k/niah export16k/passkey; then
  build "$EXPORT" "$2/smollm2_135m/finetune/metrics.jsonl" \
    python -m experiments.extend --config configs/smollm2_135m.py --workdir "$2/smollm2_135m"
  part export16k niah $NIAH --config.eval.ruler_lengths=16384 --config.eval.ruler_samples=5 \
    --config.eval.ruler_methods=none --config.model.path=$EXPORT
  part export16k passkey "" --config.eval.passkey_lengths=16384 --config.eval.passkey_methods=none \
    --config.model.path=$EXPORT
fi
# finetune_smollm2_16k's two runs retrained on the demo train split (S&S, Persuasion, KJV), 8 steps instead of 24:
# the weights cannot be kept between sessions, and a 24-step run (3 h) cannot be rebuilt in one.
FT=(--config.finetune.factors=$F16 --config.finetune.steps=8 --config.finetune.warmup_steps=2
    --config.finetune.checkpoint_every=1 --config.data.source=demo)
if unfinished long_only16k/niah long_only16k/passkey; then
  build "$2/ft_long_only/model" "$2/ft_long_only/metrics.jsonl" \
    python -m experiments.finetune --config configs/smollm2_135m.py --workdir "$2/ft_long_only" "${FT[@]}"
  part long_only16k niah $NIAH --config.eval.ruler_lengths=16384 --config.eval.ruler_samples=5 \
    --config.eval.ruler_methods=none --config.model.path=$2/ft_long_only/model
  part long_only16k passkey "" --config.eval.passkey_lengths=16384,32768 --config.eval.passkey_methods=none \
    --config.model.path=$2/ft_long_only/model
fi
part searched32k niah $NIAH --config.eval.ruler_lengths=32768 --config.eval.ruler_samples=5 \
  --config.eval.ruler_methods=yarn,longrope --config.eval.factors=$F32
part searched32k passkey "" --config.eval.passkey_lengths=32768 --config.eval.passkey_methods=longrope \
  --config.eval.factors=$F32
# the mixed-window run (LongRoPE2): half the steps short (8k, original RoPE)
if unfinished mixed16k/niah mixed16k/passkey; then
  build "$2/ft_mixed/model" "$2/ft_mixed/metrics.jsonl" \
    python -m experiments.finetune --config configs/smollm2_135m.py --workdir "$2/ft_mixed" "${FT[@]}" \
    --config.finetune.long_ratio=0.5 --config.finetune.short_seq_len=8192
  part mixed16k niah $NIAH --config.eval.ruler_lengths=16384 --config.eval.ruler_samples=5 \
    --config.eval.ruler_methods=none --config.model.path=$2/ft_mixed/model
  part mixed16k passkey "" --config.eval.passkey_lengths=16384,32768 --config.eval.passkey_methods=none \
    --config.model.path=$2/ft_mixed/model
fi
part searched16k other vt,cwe,fwe --config.eval.ruler_lengths=16384 --config.eval.ruler_samples=5 \
  --config.eval.ruler_methods=yarn,longrope --config.eval.factors=$F16
part searched32k other vt,cwe,fwe --config.eval.ruler_lengths=32768 --config.eval.ruler_samples=5 \
  --config.eval.ruler_methods=yarn,longrope --config.eval.factors=$F32
