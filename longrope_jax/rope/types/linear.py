"""Position Interpolation (HF "linear"): every frequency divided by s."""

from longrope_jax.rope.basics import default_inv_freq
from longrope_jax.rope.registry import RopeType, register_rope_type


@register_rope_type
class LinearRope(RopeType):
    name = "linear"
    hf_names = ("linear",)
    hf_keys = ("factor",)
    requires_factor = True
    classic_method = "pi"
    order = 10

    def inv_freq(self, spec, seq_len):
        return default_inv_freq(spec.theta, spec.rotary_dim) / spec.factor
