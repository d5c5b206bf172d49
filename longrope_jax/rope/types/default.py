"""Plain RoPE: θ_i = base^(-2i/d)."""

from longrope_jax.rope.basics import default_inv_freq
from longrope_jax.rope.registry import RopeType, register_rope_type


@register_rope_type
class DefaultRope(RopeType):
    name = "default"
    hf_names = ("default",)

    def inv_freq(self, spec, seq_len):
        return default_inv_freq(spec.theta, spec.rotary_dim)
