"""HF dynamic NTK: the base grows with the evaluated length beyond max_position_embeddings."""

from longrope_jax.rope.basics import default_inv_freq
from longrope_jax.rope.registry import RopeType, register_rope_type


@register_rope_type
class DynamicRope(RopeType):
    name = "dynamic"
    hf_names = ("dynamic",)
    hf_keys = ("factor",)
    requires_factor = True
    classic_method = "dynamic"
    order = 30

    def inv_freq(self, spec, seq_len):
        dim, max_pos = spec.rotary_dim, spec.max_position_embeddings
        length = max(int(seq_len), max_pos)
        base = spec.theta * ((spec.factor * length / max_pos) - (spec.factor - 1)) ** (dim / (dim - 2))
        return default_inv_freq(base, dim)
