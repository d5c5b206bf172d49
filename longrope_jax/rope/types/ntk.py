"""Static NTK-aware scaling: base θ' = θ·s^(d/(d-2)). HF has no type for it, so it exports as "default" with θ'."""

from longrope_jax.rope.basics import default_inv_freq, ntk_aware_theta
from longrope_jax.rope.registry import RopeType, register_rope_type, rope_type


@register_rope_type
class NtkRope(RopeType):
    name = "ntk"
    requires_factor = True
    classic_method = "ntk"
    order = 20

    def inv_freq(self, spec, seq_len):
        return default_inv_freq(ntk_aware_theta(spec.theta, spec.factor, spec.rotary_dim), spec.rotary_dim)

    def to_hf(self, spec):
        theta = ntk_aware_theta(spec.theta, spec.factor, spec.rotary_dim)
        return rope_type("default").to_hf(spec.replace(rope_type="default", factor=None, theta=theta))
