"""The `finetune` section: the fine-tuning run's length, batch, optimiser, mixing and checkpoint cadence."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from longrope_jax.settings import Section

FINETUNE_RANGES: dict[str, tuple[type, float, float | None, str]] = {
    "steps": (int, 1, None, "40"), "seq_len": (int, 2, None, "16384"), "short_seq_len": (int, 2, None, "8192"),
    "batch_size": (int, 1, None, "1"), "grad_accum": (int, 1, None, "1"),
    "learning_rate": (float, 1e-12, None, "2e-5"), "warmup_steps": (int, 0, None, "4"),
    "final_lr_fraction": (float, 0.0, 1.0, "0.1"), "weight_decay": (float, 0.0, None, "0.0"),
    "grad_clip": (float, 1e-12, None, "1.0"), "long_ratio": (float, 0.0, 1.0, "1.0 (every batch long)"),
    "checkpoint_every": (int, 1, None, "10"), "keep_checkpoints": (int, 1, None, "2"),
    "stop_after": (int, 0, None, "0 (run to the end)"),
}


@dataclasses.dataclass(frozen=True)
class FinetuneSettings(Section):
    """Fine-tuning (LongRoPE: e.g. 400 steps at 128k then 600 at 256k for Llama-2 7B).

    Long batches use `factors` (a rope_scaling.json) or `rope_method` sized for `target_length` (0: seq_len);
    long_ratio < 1 mixes short original-RoPE batches of short_seq_len in (LongRoPE2's mixed context windows).
    mesh = (data, fsdp, tensor, context). stop_after > 0 ends the run after that many steps (it resumes later).
    """

    SECTION: ClassVar[str] = "finetune"
    RANGES: ClassVar = FINETUNE_RANGES

    steps: int = 40
    seq_len: int = 16384
    short_seq_len: int = 8192
    target_length: int = 0
    batch_size: int = 1
    grad_accum: int = 1
    learning_rate: float = 2e-5
    warmup_steps: int = 4
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    long_ratio: float = 1.0
    factors: str = ""
    rope_method: str = "yarn"
    seed: int = 0
    mesh: tuple = (1, 1, 1, 1)
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    async_checkpoints: bool = True
    stop_after: int = 0


@dataclasses.dataclass(frozen=True)
class FixtureSettings(Section):
    """The shape of the project-trained fixture Llama (`configs/mini_pretrain.py`): ModelConfig shape fields plus
    its RoPE base and native context."""

    SECTION: ClassVar[str] = "fixture"

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    rope_theta: float = 10_000.0
    native_length: int = 256


@dataclasses.dataclass(frozen=True)
class PretrainSettings(Section):
    """Pre-training the fixture (`experiments.pretrain`): AdamW with warmup + cosine decay, validation every
    `eval_every` steps on `validation_windows` windows (a `validation_fraction` of the train split held back),
    stopping after `patience` validations without a new best; the best checkpoint is exported to `export`."""

    SECTION: ClassVar[str] = "pretrain"
    RANGES: ClassVar = {"steps": (int, 1, None, "1600"), "batch_size": (int, 1, None, "16"),
                        "learning_rate": (float, 0.0, None, "2e-3"), "warmup_steps": (int, 0, None, "100"),
                        "final_lr_fraction": (float, 0.0, 1.0, "0.05"), "weight_decay": (float, 0.0, None, "0.1"),
                        "eval_every": (int, 1, None, "200"), "patience": (int, 1, None, "3"),
                        "validation_fraction": (float, 0.0, 1.0, "0.04"), "validation_windows": (int, 1, None, "32")}

    steps: int = 1600
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.1
    seed: int = 0
    eval_every: int = 200
    patience: int = 3
    validation_fraction: float = 0.04
    validation_windows: int = 32
    export: str = "tests/fixtures/mini_llama"
