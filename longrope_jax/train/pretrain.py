"""Pre-training a small Llama from scratch: the search bench's fixture model (`tests/fixtures/mini_llama`).

A byte-level BPE tokenizer is trained on the train split, a random Llama is trained with the project's
`Trainer` at its native length with plain RoPE, and the checkpoint with the lowest validation loss is exported
as a Hugging Face directory. Validation is the last `validation_fraction` of every train document, held back from
the training stream, so model selection touches neither the search split nor the held-out one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from longrope_jax.errors import ConfigError
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.loss import sequence_nll
from longrope_jax.model.state import flatten, merge_params
from longrope_jax.rope import RopeSpec
from longrope_jax.train.settings import FinetuneSettings, FixtureSettings, PretrainSettings

SPECIAL_TOKEN = "<|endoftext|>"  # id 0: BOS, EOS and document separator alike


def fixture_model_config(fixture: FixtureSettings | Mapping[str, Any], **execution: Any) -> ModelConfig:
    """The fixture's Llama (GQA, RMSNorm, SwiGLU, rotate-half RoPE) from the config's `fixture` section: the
    ModelConfig shape fields plus rope_theta and native_length; token 0 is BOS, EOS and separator."""
    fields = FixtureSettings.parse(fixture).to_dict()
    theta, native = float(fields.pop("rope_theta")), int(fields.pop("native_length"))
    rope = RopeSpec(head_dim=int(fields["head_dim"]), theta=theta, max_position_embeddings=native)
    return ModelConfig(architecture="llama", rope=rope, bos_token_id=0, eos_token_id=0, **fields).replace(**execution)


def train_bpe_tokenizer(texts: Mapping[str, str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 style pre-tokenisation) trained on `texts`; token 0 is `SPECIAL_TOKEN`."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([texts[name] for name in sorted(texts)], trainer=trainer)
    if tokenizer.token_to_id(SPECIAL_TOKEN) != 0:
        raise ConfigError(f"{SPECIAL_TOKEN} did not get id 0")
    return tokenizer


def split_validation(docs: Mapping[str, np.ndarray], fraction: float) -> tuple[dict, dict]:
    """({name: head}, {name: tail}): the last `fraction` of every document is held back for validation."""
    if not 0.0 < fraction < 0.5:
        raise ConfigError(f"pretrain.validation_fraction={fraction}: use a fraction in (0, 0.5)")
    train, valid = {}, {}
    for name, ids in docs.items():
        cut = len(ids) - int(math.ceil(len(ids) * fraction))
        train[name], valid[name] = ids[:cut], ids[cut:]
    return train, valid


def validation_windows(docs: Mapping[str, np.ndarray], length: int, per_document: int) -> np.ndarray:
    """(N, length + 1) evenly spaced windows of every document (inputs and their targets)."""
    rows = []
    for name in sorted(docs):
        ids = docs[name]
        starts = np.linspace(0, len(ids) - length - 1, per_document).astype(int)
        rows.extend(ids[s:s + length + 1] for s in starts)
    return np.stack(rows).astype(np.int32)


class Validator:
    """Mean next-token NLL of fixed windows under the trainer's current parameters (one compiled function)."""

    def __init__(self, trainer, windows: np.ndarray, batch: int = 16):
        self.trainer, self.windows, self.batch = trainer, windows, batch
        rope = trainer.ropes["long"]

        @jax.jit
        def nll(params, tokens):
            model = merge_params(trainer.graphdef, trainer.template, params)
            return sequence_nll(model, tokens, rope=rope).mean(axis=-1)

        self._nll = nll

    def __call__(self) -> float:
        out = [np.asarray(self._nll(self.trainer.params, jnp.asarray(self.windows[i:i + self.batch])))
               for i in range(0, len(self.windows), self.batch)]
        return float(np.concatenate(out).mean())


def export_fixture(cfg: ModelConfig, params: Mapping[str, Any], tokenizer: Tokenizer, path: Path,
                   record: Mapping[str, Any]) -> Path:
    """A HF directory (config.json, safetensors, tokenizer files) plus `training.json` describing the run."""
    from longrope_jax.convert.hf import save_hf_dir
    from longrope_jax.io import write_json_atomic

    stored = cfg.replace(dtype="float32", attention="auto")
    save_hf_dir(stored, {k: np.asarray(v, np.float32) for k, v in flatten(dict(params)).items()}, path,
                tokenizer=tokenizer)
    write_json_atomic(Path(path) / "training.json", dict(record))
    return Path(path)




def _trainer_settings(section: PretrainSettings, seq_len: int) -> FinetuneSettings:
    """The Trainer's settings for plain-RoPE pre-training at the native length (every batch a 'long' one)."""
    return FinetuneSettings(
        steps=int(section.steps), seq_len=seq_len, short_seq_len=seq_len, target_length=0,
        batch_size=int(section.batch_size), grad_accum=1, learning_rate=float(section.learning_rate),
        warmup_steps=int(section.warmup_steps), final_lr_fraction=float(section.final_lr_fraction),
        weight_decay=float(section.weight_decay), grad_clip=1.0, long_ratio=1.0, seed=int(section.seed),
        mesh=(1, 1, 1, 1), checkpoint_every=int(section.eval_every), keep_checkpoints=2, async_checkpoints=False,
        stop_after=int(section.eval_every))


def run_pretrain(cfg: ModelConfig, section: PretrainSettings | Any, train_texts: Mapping[str, str],
                 held_out_texts: Mapping[str, str], workdir: str | Path, export_path: str | Path,
                 log=print) -> dict:
    """Trains the fixture model in `workdir` (resumable: rerun to continue) and exports the best checkpoint.

    section: steps, batch_size, learning_rate, warmup_steps, final_lr_fraction, weight_decay, seed, eval_every,
    patience (evaluations without a new best before stopping), validation_fraction, validation_windows.
    """
    import time

    section = PretrainSettings.parse(section)

    from longrope_jax import checkpoint
    from longrope_jax.data.documents import tokenize_texts
    from longrope_jax.io import write_json_atomic
    from longrope_jax.model.transformer import init_model
    from longrope_jax.train import data as train_data
    from longrope_jax.train.trainer import Trainer

    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer_file = workdir / "tokenizer.json"
    if tokenizer_file.exists():
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    else:
        tokenizer = train_bpe_tokenizer(train_texts, cfg.vocab_size)
        tokenizer.save(str(tokenizer_file))
    docs = tokenize_texts(train_texts, tokenizer, use_cache=False)
    train_docs, valid_docs = split_validation(docs, float(section.validation_fraction))
    length = cfg.rope.original_length
    valid = validation_windows(valid_docs, length, int(section.validation_windows))
    held_out = validation_windows(tokenize_texts(held_out_texts, tokenizer, use_cache=False), length,
                                  int(section.validation_windows))
    stream = train_data.token_stream(train_docs, cfg.eos_token_id)
    iterators = {"long": train_data.batch_iterator(stream, length, int(section.batch_size), int(section.seed)),
                 "short": train_data.batch_iterator(stream, length, int(section.batch_size), int(section.seed))}
    trainer = Trainer(init_model(cfg, int(section.seed)), cfg, _trainer_settings(section, length), workdir,
                      cfg.rope)
    validate, judge = Validator(trainer, valid), Validator(trainer, held_out)
    log_path, best_dir = workdir / "validation.jsonl", workdir / "best_model"
    from longrope_jax.io import read_json_lines

    history = read_json_lines(log_path)
    patience, total = int(section.patience), int(section.steps)
    started = time.perf_counter()

    def best_record() -> dict | None:
        return min(history, key=lambda r: r["validation_nll"]) if history else None

    while trainer.step < total:
        best = best_record()
        if best is not None and sum(r["step"] > best["step"] for r in history) >= patience:
            log(f"validation loss has not improved for {patience} evaluations since step {best['step']}; stopping")
            break
        trainer.run(iterators, workdir / "metrics.jsonl")
        if history and history[-1]["step"] >= trainer.step:
            continue  # resumed onto an evaluated step
        record = {"step": trainer.step, "tokens": trainer.step * int(section.batch_size) * length,
                  "validation_nll": validate(), "held_out_nll": judge(),
                  "seconds": time.perf_counter() - started}
        history.append(record)
        with log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if record is best_record():
            checkpoint.save_model_dir(cfg, flatten(trainer.final_model_params()), best_dir, tokenizer=tokenizer)
        log(f"step {trainer.step}/{total}: validation ppl {math.exp(record['validation_nll']):.2f}, "
            f"held-out ppl {math.exp(record['held_out_nll']):.2f}")
    best = best_record()
    if best is None:
        raise ConfigError("no evaluation was made; raise pretrain.steps above pretrain.eval_every")
    params = checkpoint.restore_params(best_dir, cfg)
    from longrope_jax.model.config import config_to_dict, without_speed_settings

    summary = {"model": without_speed_settings(config_to_dict(cfg)), "train_documents": sorted(train_texts),
               "held_out_documents": sorted(held_out_texts), "train_tokens": int(len(stream)),
               "best_step": best["step"], "validation_ppl": math.exp(best["validation_nll"]),
               "held_out_ppl": math.exp(best["held_out_nll"]), "steps_run": trainer.step,
               "settings": dict(sorted(section.to_dict().items())), "history": history}
    export_fixture(cfg, params, tokenizer, Path(export_path), summary)
    write_json_atomic(workdir / "summary.json", summary)
    log(f"best step {best['step']}: validation ppl {summary['validation_ppl']:.2f}, held-out ppl "
        f"{summary['held_out_ppl']:.2f}; exported to {export_path}")
    return summary
