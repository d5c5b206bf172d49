"""YaRN (HF semantics): NTK-by-parts ramp between interpolation and extrapolation, plus a magnitude scale."""

import math

import numpy as np

from longrope_jax.rope.basics import rotary_exponents, yarn_mscale
from longrope_jax.rope.registry import RopeType, register_rope_type


@register_rope_type
class YarnRope(RopeType):
    name = "yarn"
    hf_names = ("yarn",)
    hf_keys = ("factor", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")
    requires_factor = True
    requires_original = True
    classic_method = "yarn"
    order = 40

    def inv_freq(self, spec, seq_len):
        dim, base, factor = spec.rotary_dim, spec.theta, spec.factor
        beta_fast = spec.beta_fast or 32
        beta_slow = spec.beta_slow or 1
        original = spec.original_max_position_embeddings

        def correction_dim(num_rotations: float) -> float:
            return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if spec.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # HF: prevent a zero-width ramp
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        extrapolation_weight = 1.0 - ramp
        pos_freqs = base ** rotary_exponents(dim)
        return (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1.0 / pos_freqs) * extrapolation_weight

    def attention_scale(self, spec):
        if spec.attention_factor is not None:
            return float(spec.attention_factor)
        if spec.mscale and spec.mscale_all_dim:
            return float(yarn_mscale(spec.factor, spec.mscale) / yarn_mscale(spec.factor, spec.mscale_all_dim))
        return yarn_mscale(spec.factor)

    def to_hf(self, spec):
        block = super().to_hf(spec)
        if block.get("truncate", True):
            block.pop("truncate", None)  # HF's default; written only when off
        return block

    def classic_fields(self, scale, original):
        return {"rope_type": self.name, "factor": scale, "max_position_embeddings": int(round(scale * original)),
                "original_max_position_embeddings": original}
