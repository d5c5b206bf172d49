"""The `eval` section: which evaluation tasks `experiments.evaluate` runs, at which lengths, with which methods."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from longrope_jax.settings import Section


@dataclasses.dataclass(frozen=True)
class EvalSettings(Section):
    """Perplexity on `documents` documents of `split` at `lengths` for `methods` ("longrope" reads `factors`, a
    rope_scaling.json); passkey, the needle grid and RULER-lite run where their lengths / tasks are set.
    List fields accept `--config.eval.x=a,b`."""

    SECTION: ClassVar[str] = "eval"
    RANGES: ClassVar = {
        "documents": (int, 1, None, "1"), "candidates_per_batch": (int, 1, None, "5"),
        "passkey_trials": (int, 1, None, "10"), "needle_trials": (int, 1, None, "2"),
        "ruler_samples": (int, 1, None, "5"), "context_parallel": (int, 1, None, "1"),
    }

    lengths: Any = (4096, 8192, 16384)
    methods: Any = ("none", "pi", "ntk", "dynamic", "yarn")
    split: str = "held_out"
    documents: int = 1
    factors: str = ""
    candidates_per_batch: int = 5
    passkey_lengths: Any = ()
    passkey_methods: Any = ("none", "yarn")
    passkey_trials: int = 10
    needle_lengths: Any = ()
    needle_depths: Any = (0.1, 0.3, 0.5, 0.7, 0.9)
    needle_trials: int = 2
    seed: int = 0
    ruler_tasks: Any = ()
    ruler_lengths: Any = ()
    ruler_samples: int = 5
    ruler_methods: Any = ()
    ruler_template: str = "none"
    ruler_seed: int = 42
    context_parallel: int = 1
