"""Fine-tuning on a mesh: optax AdamW (warmup + cosine), clipping, accumulation, mixed short/long context windows.

Parameters (fp32 masters, compute in `model.dtype`) and optimizer state are sharded by the logical-axis rules; the
batch is sharded over (data, fsdp). RoPE factors are inputs of the step, never parameters. Checkpoints (Orbax,
async, keep-last-K, atomic) hold params, optimizer state, step, data-iterator state, rope factors and a config
fingerprint; a run restores onto any mesh and continues with identical losses.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec
from longrope_jax.progress import StepClock, tqdm

from longrope_jax.errors import CheckpointError, ConfigError
from longrope_jax.model.config import ModelConfig, config_to_dict, without_speed_settings
from longrope_jax.distributed import is_primary
from longrope_jax.resume import normalised, refuse_changed
from longrope_jax.model.context import context_parallel
from longrope_jax.model.loss import sequence_nll
from longrope_jax.model.state import merge_params, split_params, unflatten
from longrope_jax.rope import RopeInputs, RopeSpec, rope_inputs
from longrope_jax.sharding import make_mesh, mesh_sizes, param_shardings
from longrope_jax.train import data as train_data
from longrope_jax.train.settings import FinetuneSettings

REFERENCE_ATTENTION_BYTES = 2 << 30  # beyond this an L×L score matrix is an OOM waiting to happen


def make_optimizer(cfg: FinetuneSettings) -> optax.GradientTransformation:
    """AdamW with warmup + cosine decay and clipping, for the finetune config section.

    steps and warmup_steps count batches; with grad_accum = k the optimizer updates once per k batches
    (optax.MultiSteps advances the inner schedule per update), so the schedule is laid out in updates.
    """
    accum = max(1, int(cfg.grad_accum))
    updates, warmup = -(-int(cfg.steps) // accum), -(-int(cfg.warmup_steps) // accum)  # ceil: a last partial one
    schedule = optax.warmup_cosine_decay_schedule(0.0, float(cfg.learning_rate), warmup, max(updates, warmup + 1),
                                                  float(cfg.learning_rate) * float(cfg.final_lr_fraction))
    chain = optax.chain(optax.clip_by_global_norm(float(cfg.grad_clip)),
                        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=float(cfg.weight_decay)))
    if accum > 1:
        chain = optax.MultiSteps(chain, every_k_schedule=accum)
    return chain


def check_memory(model_cfg: ModelConfig, seq_len: int, batch: int) -> None:
    """Rejects settings that would allocate an L×L score matrix per layer (reference attention at long L)."""
    if model_cfg.execution.attention == "reference":
        scores = batch * model_cfg.num_heads * seq_len * seq_len * 4
        if scores > REFERENCE_ATTENTION_BYTES:
            raise ConfigError(f"attention='reference' at seq_len={seq_len} needs {scores / 2**30:.1f} GiB of scores "
                              f"per layer; set model.attention='blockwise' (or 'auto') or lower finetune.seq_len")


class Trainer:
    """Owns the mesh, the compiled steps and the checkpoint manager of one fine-tuning run."""

    def __init__(self, model, model_cfg: ModelConfig, train_cfg: FinetuneSettings | Any, workdir: str | Path,
                 long_spec: RopeSpec, context_impl: str | None = None):
        train_cfg = FinetuneSettings.parse(train_cfg)
        # Absolute: Orbax refuses relative checkpoint paths (`--workdir runs/x` is what users type).
        self.cfg, self.model_cfg, self.workdir = train_cfg, model_cfg, Path(workdir).absolute()
        if int(train_cfg.checkpoint_every) < 1:
            raise ConfigError(f"finetune.checkpoint_every={train_cfg.checkpoint_every}: save every N >= 1 steps")
        self.mesh = make_mesh(*mesh_sizes(train_cfg.mesh, "finetune.mesh"))
        # A context axis > 1 splits every sequence over its devices (ring attention, load-balanced).
        self.context = context_parallel(self.mesh, context_impl or model_cfg.execution.context_attention)
        self.graphdef, self.template, params = split_params(model)
        shardings = unflatten(param_shardings(model_cfg, self.mesh))
        self.param_shardings = shardings
        # A real copy: the step donates its inputs, which must never be the caller's model arrays.
        self.params = jax.tree.map(lambda p, s: jax.device_put(jnp.array(p, jnp.float32, copy=True), s),
                                   params, shardings)
        self.optimizer = make_optimizer(train_cfg)
        # Moments inherit their parameter's sharding; scalars (step counts) are replicated on the whole mesh.
        opt_state = jax.jit(self.optimizer.init)(self.params)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.opt_state = jax.tree.map(
            lambda x: jax.device_put(x, replicated if x.ndim == 0 or not isinstance(x.sharding, NamedSharding)
                                     else x.sharding), opt_state)
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(("data", "fsdp"), None))
        original = model_cfg.rope.original_length  # short batches: the model's own RoPE at its own length
        self.ropes = {"long": rope_inputs(long_spec, int(train_cfg.seq_len)),
                      "short": rope_inputs(model_cfg.rope, min(int(train_cfg.short_seq_len), original))}
        self.long_spec = long_spec
        self.step = 0
        # Pin output shardings to the input ones, so step 2 reuses step 1's executable.
        state_shardings = (jax.tree.map(lambda x: x.sharding, self.params),
                           jax.tree.map(lambda x: x.sharding, self.opt_state))
        self._step_fn = jax.jit(self._train_step, donate_argnums=(0, 1), out_shardings=(*state_shardings, None))
        self.manager = ocp.CheckpointManager(self.workdir / "checkpoints", options=ocp.CheckpointManagerOptions(
            max_to_keep=int(train_cfg.keep_checkpoints), enable_async_checkpointing=bool(train_cfg.async_checkpoints)))

    def _loss(self, params, tokens: jax.Array, rope: RopeInputs) -> jax.Array:
        return sequence_nll(merge_params(self.graphdef, self.template, params), tokens, rope=rope,
                            context=self.context).mean()

    def _train_step(self, params, opt_state, tokens, rope):
        loss, grads = jax.value_and_grad(self._loss)(params, tokens, rope)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # ------------------------------------------------------------------ checkpoints
    def fingerprint(self) -> dict:
        cfg = self.cfg
        return normalised({
            "model": without_speed_settings(config_to_dict(self.model_cfg)),
            "long_rope": self.long_spec.to_dict(), "seq_len": cfg.seq_len, "short_seq_len": cfg.short_seq_len,
            "batch_size": cfg.batch_size, "long_ratio": cfg.long_ratio, "learning_rate": cfg.learning_rate,
            "grad_accum": cfg.grad_accum, "seed": cfg.seed, "steps": cfg.steps, "warmup_steps": cfg.warmup_steps,
            "final_lr_fraction": cfg.final_lr_fraction, "weight_decay": cfg.weight_decay,
            "grad_clip": cfg.grad_clip})

    def save(self, iterators: dict, force: bool = False) -> None:
        if (not force and self.step % int(self.cfg.checkpoint_every)) or self.manager.latest_step() == self.step:
            return
        meta = {"step": self.step, "fingerprint": self.fingerprint(),
                "data": train_data.iterator_state(iterators)}
        self._checkpoint_io(lambda: self.manager.save(self.step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(self.params), opt_state=ocp.args.StandardSave(self.opt_state),
            meta=ocp.args.JsonSave(meta)), force=True))

    def _checkpoint_io(self, call: Callable[[], Any]) -> Any:
        """Runs a checkpoint call; a full disk, however Orbax or tensorstore words it, becomes one OSError naming
        the checkpoint directory and the last complete step (which Orbax keeps: it renames a save into place only
        once it is whole)."""
        try:
            return call()
        except Exception as err:  # tensorstore reports ENOSPC as ValueError("RESOURCE_EXHAUSTED: ...")
            if not _is_disk_full(err):
                raise
            kept = self.manager.latest_step()
            raise OSError(errno.ENOSPC, f"no space left on the device while writing a checkpoint (the last complete "
                                        f"one, step {kept}, is kept)" if kept is not None else
                          "no space left on the device while writing the first checkpoint",
                          str(self.workdir / "checkpoints")) from None

    def restore_latest(self, iterators: dict) -> bool:
        """Restores the newest readable checkpoint; one that cannot be read (truncated, bit-flipped) is reported,
        deleted and the one before it used, so a crash during a save costs at most `checkpoint_every` steps."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self._restore(step, iterators)
                return True
            except CheckpointError:
                raise  # settings changed: not a damaged file
            except Exception as err:  # Orbax / tensorstore raise their own types for unreadable files
                older = [s for s in self.manager.all_steps() if s < step]
                print(f"warning: checkpoint at step {step} in {self.workdir / 'checkpoints'} is unreadable "
                      f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}); "
                      + (f"falling back to step {max(older)}" if older else "starting from step 0"),
                      file=sys.stderr, flush=True)
                self.manager.delete(step)
        return False

    def _restore(self, step: int, iterators: dict) -> None:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        # Checkpoints written before a setting counted as speed-only still recorded it: compare without them.
        saved = {**meta["fingerprint"], "model": without_speed_settings(meta["fingerprint"].get("model", {}))}
        refuse_changed(f"checkpoint at step {step} in {self.workdir} was made", saved, self.fingerprint(),
                       "use a new --workdir or restore the old config", error=CheckpointError)

        def abstract(tree):
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)

        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract(self.params)),
            opt_state=ocp.args.StandardRestore(abstract(self.opt_state))))
        self.params, self.opt_state, self.step = restored["params"], restored["opt_state"], int(meta["step"])
        train_data.restore_iterators(iterators, meta["data"])

    # ------------------------------------------------------------------ loop
    def run(self, iterators: dict, metrics_path: Path) -> list[dict]:
        """Trains to `cfg.steps`; appends one JSON object per step to metrics_path; returns this run's metrics."""
        cfg = self.cfg
        resumed = self.restore_latest(iterators)
        if resumed and is_primary():
            print(f"resuming fine-tuning at step {self.step} of {cfg.steps} from {self.workdir / 'checkpoints'}",
                  flush=True)
        history = [m for m in _read_jsonl(metrics_path) if m["step"] <= self.step] if resumed else []
        primary = is_primary()  # on a pod, one process writes the run files
        if primary:
            _write_jsonl(metrics_path, history)  # drop lines of steps after the checkpoint we resumed from
        out = []
        # stop_after ends this invocation early (time-boxed sessions) without changing the schedule.
        last = min(int(cfg.steps), self.step + int(cfg.stop_after)) if int(cfg.stop_after) else int(cfg.steps)
        last_seconds = None
        with tqdm(total=int(cfg.steps), initial=self.step, desc="finetune", unit="step", disable=not primary) as bar:
            while self.step < last:
                # An async save that failed in Orbax's background thread stops the run here, not silently later.
                self._checkpoint_io(self.manager.check_for_errors)
                kind = "long" if train_data.step_is_long(self.step, float(cfg.long_ratio), int(cfg.seed)) \
                    else "short"
                # Each process holds its rows of the global batch (all of them on one host).
                tokens = jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(next(iterators[kind])))
                # A step can run for minutes: the bar says how long this one has run and how long is left in it.
                with StepClock(bar, last_seconds) as clock:
                    self.params, self.opt_state, loss = self._step_fn(self.params, self.opt_state, tokens,
                                                                      self.ropes[kind])
                    loss = float(loss)
                seconds = last_seconds = clock.seconds
                self.step += 1
                record = {"step": self.step, "loss": loss, "kind": kind, "seq_len": int(tokens.shape[1] - 1),
                          "step_seconds": seconds, "tokens_per_second": tokens.size / seconds}
                if not np.isfinite(loss):
                    raise ConfigError(f"loss became {loss} at step {self.step}; lower finetune.learning_rate")
                if primary:
                    _append_jsonl(metrics_path, record)
                out.append(record)
                self.save(iterators)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", kind=kind, tok_s=f"{record['tokens_per_second']:.0f}")
        self.save(iterators, force=True)
        self._checkpoint_io(self.manager.wait_until_finished)
        self._checkpoint_io(self.manager.check_for_errors)
        return out

    def final_model_params(self) -> dict:
        """Nested params, gathered to host memory (for export); on a pod every process gets the full arrays."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return jax.tree.map(np.asarray, multihost_utils.process_allgather(self.params, tiled=True))
        return jax.tree.map(np.asarray, self.params)


def _is_disk_full(err: BaseException) -> bool:
    text = str(err)
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in text \
        or "os_error_code='28'" in text


def _read_jsonl(path: Path) -> list[dict]:
    from longrope_jax.io import read_json_lines
    return read_json_lines(path)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    from longrope_jax.io import write_text_atomic
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_metrics(metrics_path: Path) -> list[dict]:
    return _read_jsonl(metrics_path)
