"""Pre-training the search bench's fixture model (`tests/fixtures/mini_llama`) on the demo train split.

  python -m experiments.pretrain --config configs/mini_pretrain.py

About an hour on 2 CPU cores; rerun the same command to resume after a stop.
"""

import ml_collections

from configs.common import base_config


def get_config():
    config = base_config()
    config.name = "mini_pretrain"
    config.model.attention = "reference"  # 256 tokens: the plain kernel is the fastest
    config.fixture = ml_collections.ConfigDict(dict(
        vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, num_kv_heads=2,
        head_dim=64, rope_theta=10_000.0, native_length=256))
    config.pretrain = ml_collections.ConfigDict(dict(
        steps=1600, batch_size=16, learning_rate=2e-3, warmup_steps=100, final_lr_fraction=0.05,
        weight_decay=0.1, seed=0, eval_every=200, patience=3, validation_fraction=0.04, validation_windows=32,
        export="tests/fixtures/mini_llama"))
    return config
