#!/bin/bash
# The GPU check for a lent device (one H200): forward MFU at 32k tokens, SmolLM2-135M and a 1B-class config, bf16.
# Run through the device tool from the repository root:  bash benchmarks/device_check.sh
# Needs only jax + flax (the device image has them); writes $OUT/mfu.json (or benchmarks/results/mfu_gpu.json).
set -euo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
timeout 280 python3 -m benchmarks.mfu --length 32768 --dtype bfloat16 --presets smollm2_135m,llama3_1b \
  --out "$out/mfu_gpu.json"
