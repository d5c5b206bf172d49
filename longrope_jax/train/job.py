"""`experiments.finetune`: model + long factors + train-split data -> Trainer -> fine-tuned model directory.

Writes into the workdir: checkpoints/ (Orbax, resumable), metrics.jsonl, loss.png, summary.json and model/
(a longrope-jax model directory carrying the long rope factors, for the next stage or for export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longrope_jax.checkpoint import save_model_dir
from longrope_jax.data.settings import DataSettings
from longrope_jax.data.sources import load_token_documents, text_source
from longrope_jax.eval import methods as rope_methods
from longrope_jax.eval import plots
from longrope_jax.distributed import is_primary
from longrope_jax.io import write_json_atomic
from longrope_jax.loading import ModelSection, load_from_config
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.state import flatten
from longrope_jax.rope import RopeSpec
from longrope_jax.train import data as train_data
from longrope_jax.train.settings import FINETUNE_RANGES, FinetuneSettings
from longrope_jax.train.trainer import Trainer, check_memory, read_metrics

__all__ = ["FINETUNE_RANGES", "long_rope_spec", "run_finetune"]


def long_rope_spec(model_cfg: ModelConfig, finetune: FinetuneSettings) -> RopeSpec:
    """The rescaled RoPE of long batches: finetune.factors (a rope_scaling.json) or a method at seq_len."""
    method = "longrope" if finetune.factors else finetune.rope_method
    target = int(finetune.target_length or finetune.seq_len)
    return rope_methods.method_spec(model_cfg.rope, method, target, finetune.factors or None)


def run_finetune(config: Any, workdir: str | Path, model_bundle=None) -> dict:
    """Fine-tunes the model with its long factors on the train split; returns summary.json's content.

    config: the `JobSettings` a CLI parsed (`parse_job`), or any config with model (unless `model_bundle` is
    given), data and finetune sections, parsed here; everything below takes the typed sections.
    """
    ft = FinetuneSettings.parse(config.finetune)  # checked before anything is written
    data = DataSettings.parse(config.data)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model, cfg, tokenizer = model_bundle or load_from_config(ModelSection.parse(config.model))
    check_memory(cfg, int(ft.seq_len), int(ft.batch_size))
    long_spec = long_rope_spec(cfg, ft)
    docs = load_token_documents(text_source(data, data.train_split), tokenizer)
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
