"""`Execution`: how a model's values are computed, never which values.

The attention kernel and its tiles, activation recompute, the layer loop, the loss chunk, how many rope candidates
are vectorised at once and how a document split over devices meets its keys all change speed and memory only:
results agree to float rounding (blockwise == reference attention within 1e-5, every vmap width the same values
are tests). Keeping them in their own type, apart from the model's shape (`ModelConfig`), is what lets every
fingerprint (pipeline stages, search state, evaluation results, fine-tune checkpoints, the fitness cache) leave
them out by type, so switching one, or resuming on a backend where attention="auto" picks another kernel,
invalidates no workdir.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Mapping

from longrope_jax.errors import ConfigError

ATTENTION_IMPLS = ("auto", "reference", "blockwise", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "save_attention", "dots_saveable", "nothing_saveable")
CONTEXT_IMPLS = ("ring", "allgather")


@dataclasses.dataclass(frozen=True)
class Execution:
    """attention: the kernel ("auto": splash on TPU, cuDNN on GPU, blockwise on CPU), with its `block_q` x
    `block_kv` tiles; scan_layers: `nnx.scan` over layers (False: a Python loop); remat: activation recompute in
    the backward pass; loss_chunk: tokens per LM-head chunk of the loss; vmap_width: rope candidates vectorised at
    once ("auto": 1 on CPU, all on accelerators; 0: all); context_attention: how a document split over a mesh's
    context axis attends ("ring" passes keys around, "allgather" gathers them)."""

    attention: str = "auto"
    block_q: int = 512
    block_kv: int = 512
    scan_layers: bool = True
    remat: str = "none"
    loss_chunk: int = 1024
    vmap_width: int | str | None = "auto"
    context_attention: str = "ring"

    def __post_init__(self) -> None:
        for name in ("block_q", "block_kv", "loss_chunk"):
            try:
                positive = operator.index(getattr(self, name)) >= 1  # int or numpy int, not 2.5
            except TypeError:
                positive = False
            if not positive:
                raise ConfigError(f"model {name}={getattr(self, name)!r} must be a positive integer")
        if self.attention not in ATTENTION_IMPLS:
            raise ConfigError(f"unknown attention {self.attention!r}; use one of {ATTENTION_IMPLS}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"unknown remat policy {self.remat!r}; use one of {REMAT_POLICIES}")
        if self.context_attention not in CONTEXT_IMPLS:
            raise ConfigError(f"unknown model.context_attention {self.context_attention!r}; use one of "
                              f"{CONTEXT_IMPLS}")
        width = self.vmap_width
        if not (width in ("auto", None) or (not isinstance(width, bool) and str(width).strip().isdigit())):
            raise ConfigError(f"model.vmap_width must be 'auto', 0 (all candidates at once) or a count >= 1 of "
                              f"candidates vectorised at once; got {width!r}")

    def replace(self, **changes: Any) -> "Execution":
        return dataclasses.replace(self, **changes)


EXECUTION_FIELDS = tuple(field.name for field in dataclasses.fields(Execution))


def split_execution(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model settings, execution settings) of a flat mapping such as a config's `model` section."""
    model = {k: v for k, v in settings.items() if k not in EXECUTION_FIELDS}
    return model, {k: v for k, v in settings.items() if k in EXECUTION_FIELDS}
