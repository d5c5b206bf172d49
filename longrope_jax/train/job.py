"""`experiments.finetune`: model + long factors + train-split data -> Trainer -> fine-tuned model directory.

Writes into the workdir: checkpoints/ (Orbax, resumable), metrics.jsonl, loss.png, summary.json and model/
(a longrope-jax model directory carrying the long rope factors, for the next stage or for export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longrope_jax.checkpoint import save_model_dir
from longrope_jax.data.sources import load_token_documents, text_source
from longrope_jax.eval import methods as rope_methods
from longrope_jax.eval import plots
from longrope_jax.distributed import is_primary
from longrope_jax.io import write_json_atomic
from longrope_jax.loading import load_from_config
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.state import flatten
from longrope_jax.rope import RopeSpec
from longrope_jax.settings import check_ranges
from longrope_jax.train import data as train_data
from longrope_jax.train.trainer import Trainer, check_memory, read_metrics


def long_rope_spec(model_cfg: ModelConfig, finetune_cfg: Any) -> RopeSpec:
    """The rescaled RoPE of long batches: finetune.factors (a rope_scaling.json) or a method at seq_len."""
    method = "longrope" if finetune_cfg.factors else finetune_cfg.rope_method
    target = int(finetune_cfg.target_length or finetune_cfg.seq_len)
    return rope_methods.method_spec(model_cfg.rope, method, target, finetune_cfg.factors or None)


def run_finetune(config: Any, workdir: str | Path, model_bundle=None) -> dict:
    check_ranges(config.finetune, "finetune", FINETUNE_RANGES)  # before anything is written
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ft = config.finetune
    model, cfg, tokenizer = model_bundle or load_from_config(config.model)
    check_memory(cfg, int(ft.seq_len), int(ft.batch_size))
    long_spec = long_rope_spec(cfg, ft)
    docs = load_token_documents(text_source(config.data, config.data.train_split), tokenizer)
    separator = cfg.eos_token_id if cfg.eos_token_id is not None else cfg.bos_token_id
    stream = train_data.token_stream(docs, separator)
    iterators = {"long": train_data.batch_iterator(stream, int(ft.seq_len), int(ft.batch_size), int(ft.seed)),
                 "short": train_data.batch_iterator(stream, int(ft.short_seq_len), int(ft.batch_size),
                                                    int(ft.seed) + 1)}
    trainer = Trainer(model, cfg, ft, workdir, long_spec)
    metrics_path = workdir / "metrics.jsonl"
    trainer.run(iterators, metrics_path)
    records = read_metrics(metrics_path) if is_primary() else []
    if is_primary():
        plots.plot_losses(records, workdir / "loss.png")
    tuned_cfg = cfg.replace(rope=long_spec)
    save_model_dir(tuned_cfg, flatten(trainer.final_model_params()), workdir / "model", tokenizer=tokenizer)
    summary = {"steps": trainer.step, "first_loss": records[0]["loss"] if records else None,
               "last_loss": records[-1]["loss"] if records else None, "train_documents": sorted(docs),
               "long_rope": long_spec.to_dict(), "seq_len": int(ft.seq_len), "long_ratio": float(ft.long_ratio)}
    if is_primary():
        write_json_atomic(workdir / "summary.json", summary)
    return summary


FINETUNE_RANGES: dict[str, tuple[type, float, float | None, str]] = {
    "steps": (int, 1, None, "40"), "seq_len": (int, 2, None, "16384"), "short_seq_len": (int, 2, None, "8192"),
    "batch_size": (int, 1, None, "1"), "grad_accum": (int, 1, None, "1"),
    "learning_rate": (float, 1e-12, None, "2e-5"), "warmup_steps": (int, 0, None, "4"),
    "final_lr_fraction": (float, 0.0, 1.0, "0.1"), "weight_decay": (float, 0.0, None, "0.0"),
    "grad_clip": (float, 1e-12, None, "1.0"), "long_ratio": (float, 0.0, 1.0, "1.0 (every batch long)"),
    "checkpoint_every": (int, 1, None, "10"), "keep_checkpoints": (int, 1, None, "2"),
    "stop_after": (int, 0, None, "0 (run to the end)"),
}
