"""Llama-3.1's rope scaling: low frequencies interpolated by s, high ones kept, a smooth band between."""

import math

import numpy as np

from longrope_jax.rope.basics import default_inv_freq
from longrope_jax.rope.registry import RopeType, register_rope_type


@register_rope_type
class Llama3Rope(RopeType):
    name = "llama3"
    hf_names = ("llama3",)
    hf_keys = ("factor", "low_freq_factor", "high_freq_factor")
    requires_factor = True
    requires_original = True

    def validate(self, spec):
        if spec.low_freq_factor is None or spec.high_freq_factor is None \
                or spec.high_freq_factor <= spec.low_freq_factor:
            raise ValueError("rope_type 'llama3' requires 'low_freq_factor' < 'high_freq_factor' (Llama-3.1: 1 and 4)")

    def inv_freq(self, spec, seq_len):
        inv_freq = default_inv_freq(spec.theta, spec.rotary_dim)
        old_context = spec.original_max_position_embeddings
        low_wavelen = old_context / spec.low_freq_factor
        high_wavelen = old_context / spec.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / spec.factor, inv_freq)
        smooth = (old_context / wavelen - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor)
        smoothed = (1 - smooth) * scaled / spec.factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(is_medium, smoothed, scaled)
