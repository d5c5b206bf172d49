"""LongRoPE (HF "longrope"; Phi-3's "su"; LongRoPE2 uses the same rotation): θ_i / λ_i, with a short and a long
λ chosen by the sequence length (long iff it exceeds the original length), n̂ un-interpolated start tokens
(applied in `rope.apply`, not by HF) and one attention scale for both."""

import math

import numpy as np

from longrope_jax.rope.basics import rotary_exponents, validate_factors, yarn_mscale
from longrope_jax.rope.registry import RopeType, register_rope_type


@register_rope_type
class LongRope(RopeType):
    name = "longrope"
    hf_names = ("longrope", "su", "longrope2")
    hf_keys = ("short_factor", "long_factor", "factor", "attention_factor", "n_hat", "mscale_policy", "critical_dim")
    requires_original = True

    def validate(self, spec):
        for field in ("short_factor", "long_factor"):
            if getattr(spec, field) is None:
                raise ValueError(f"rope_type 'longrope' requires '{field}' ({spec.half_dim} numbers >= 1)")
        validate_factors(spec.long_factor, "long_factor", spec.half_dim, spec.require_monotone)
        short = validate_factors(spec.short_factor, "short_factor", spec.half_dim, spec.require_monotone)
        if short.ndim != 1:
            raise ValueError("rope field 'short_factor' must be one vector of d/2 numbers, not per layer")
        if spec.critical_dim is not None and not 0 < spec.critical_dim < spec.half_dim:
            raise ValueError(f"rope field 'critical_dim' = {spec.critical_dim} must lie in (0, {spec.half_dim})")

    def uses_long_factors(self, spec, seq_len):
        return seq_len > spec.original_max_position_embeddings

    def factors(self, spec, seq_len) -> np.ndarray:
        """The λ in force at `seq_len`, rounded to float32 as HF builds its factor tensor."""
        chosen = spec.long_factor if self.uses_long_factors(spec, seq_len) else spec.short_factor
        return np.asarray(chosen, dtype=np.float32).astype(np.float64)

    def inv_freq(self, spec, seq_len):
        return 1.0 / (self.factors(spec, seq_len) * spec.theta ** rotary_exponents(spec.rotary_dim))

    def attention_scale(self, spec):
        if spec.attention_factor is not None:
            return float(spec.attention_factor)
        scale = spec.scale
        if scale <= 1.0:
            return 1.0
        if spec.mscale_policy == "yarn":
            return yarn_mscale(scale)
        return math.sqrt(1 + math.log(scale) / math.log(spec.original_max_position_embeddings))

    def to_hf(self, spec):
        if spec.per_layer:
            raise ValueError("per-layer long factors cannot be written in HF's longrope format (one vector); "
                             "average them or keep the spec in longrope-jax's own format (RopeSpec.to_dict)")
        block = super().to_hf(spec)
        block["short_factor"], block["long_factor"] = list(spec.short_factor), list(spec.long_factor)
        # Always explicit, so serving stacks that do not implement our mscale policy still use the right scale.
        block["attention_factor"] = self.attention_scale(spec)
        block.pop("mscale_policy")
        if not spec.n_hat:
            block.pop("n_hat")  # HF's behaviour; transformers ignores the key, so n̂ > 0 is NOT applied by HF
        return block
