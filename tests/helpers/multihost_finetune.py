"""One process of a simulated 2-host job (4 fake CPU devices each): fine-tunes the tiny config on a global
(data=2, fsdp=4) mesh, checkpointing through Orbax from both processes. Prints `LOSSES <json>` on process 0.

  python tests/helpers/multihost_finetune.py <coordinator host:port> <process_id> <workdir> <steps> <stop_after>
"""

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from longrope_jax.distributed import initialize_distributed  # noqa: E402

address, pid, workdir, steps, stop_after = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), *map(int, sys.argv[4:6])
assert initialize_distributed(dict(initialize="auto", coordinator_address=address, num_processes=2, process_id=pid))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs.tiny import get_config  # noqa: E402
from longrope_jax.eval.methods import method_spec  # noqa: E402
from longrope_jax.loading import load_from_config  # noqa: E402
from longrope_jax.train import data as train_data  # noqa: E402
from longrope_jax.train.trainer import Trainer  # noqa: E402

assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
config = get_config()
config.finetune.update(dict(mesh=(2, 4, 1, 1), steps=steps, stop_after=stop_after, long_ratio=1.0,
                            checkpoint_every=2, async_checkpoints=False))
model, cfg, _ = load_from_config(config.model)
stream = np.random.default_rng(0).integers(0, 256, 5000).astype(np.int32)
# Each process loads only its half of every global batch of 8 windows.
iterators = {"long": train_data.batch_iterator(stream, 128, 8, 0), "short": train_data.batch_iterator(stream, 64, 8, 1)}
assert next(iter(train_data.batch_iterator(stream, 128, 8, 0))).shape == (4, 129)
trainer = Trainer(model, cfg, config.finetune, workdir, method_spec(cfg.rope, "yarn", 128))
records = trainer.run(iterators, workdir / "metrics.jsonl")
params = trainer.final_model_params()  # gathered from both processes
if pid == 0:
    print("LOSSES " + json.dumps([r["loss"] for r in records]), flush=True)
    print("PARAM_SUM " + json.dumps(float(sum(np.abs(v).sum() for v in jax.tree.leaves(params)))), flush=True)
