"""Parity of longrope_jax.rope with transformers' own rope initialisation functions, for every rope type."""

import itertools

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longrope_jax import rope

REL_TOL = 1e-6


def hf_frequencies(config, rope_type: str, seq_len: int | None):
    if rope_type == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
        inv_freq, scale = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
    return inv_freq.numpy().astype(np.float64), scale


def assert_parity(raw_config: dict, hf_config, rope_type: str, seq_len: int) -> float:
    """Checks our spec (built from the raw config.json dict) against HF; returns the max relative error."""
    spec = rope.from_hf_config(raw_config)
    ours, our_scale = rope.frequencies(spec, seq_len)
    theirs, their_scale = hf_frequencies(hf_config, rope_type, seq_len)
    assert ours.shape == theirs.shape
    rel = float(np.max(np.abs(ours.astype(np.float64) - theirs) / np.abs(theirs)))
    assert rel <= REL_TOL, (raw_config, seq_len, rel)
    assert our_scale == pytest.approx(their_scale, rel=0, abs=0), (our_scale, their_scale)
    # The v5-style dict (rope_parameters with rope_theta inside) must give the same spec.
    v5 = {k: v for k, v in hf_config.to_dict().items() if k != "rope_scaling"}
    assert rope.frequencies(rope.from_hf_config(v5), seq_len)[1] == our_scale
    np.testing.assert_array_equal(rope.frequencies(rope.from_hf_config(v5), seq_len)[0], ours)
    return rel


def llama_case(head_dim, theta, max_pos, block, partial=1.0):
    raw = dict(hidden_size=head_dim * 8, num_attention_heads=8, head_dim=head_dim, max_position_embeddings=max_pos,
               rope_theta=theta, rope_scaling=block)
    if partial != 1.0:
        raw["partial_rotary_factor"] = partial
    hf = LlamaConfig(**{**raw, "rope_scaling": dict(block) if block else None})
    return raw, hf


HEAD_DIMS = (64, 96, 128)
SCALES = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
THETAS = (1e4, 1e5, 5e5)


@pytest.mark.parametrize("head_dim,theta", itertools.product(HEAD_DIMS, THETAS))
def test_default(head_dim, theta):
    raw, hf = llama_case(head_dim, theta, 4096, None)
    assert_parity(raw, hf, "default", 100)


@pytest.mark.parametrize("head_dim,factor,partial", itertools.product(HEAD_DIMS, SCALES, (1.0, 0.5)))
def test_linear(head_dim, factor, partial):
    raw, hf = llama_case(head_dim, 1e4, 4096, {"rope_type": "linear", "factor": factor}, partial)
    assert_parity(raw, hf, "linear", 100)


@pytest.mark.parametrize("head_dim,factor,theta", itertools.product(HEAD_DIMS, SCALES, (1e4, 1e5)))
def test_dynamic_ntk(head_dim, factor, theta):
    raw, hf = llama_case(head_dim, theta, 8192, {"rope_type": "dynamic", "factor": factor})
    for seq_len in (1000, 8192, 8193, 16384, 32768, 100_000):
        assert_parity(raw, hf, "dynamic", seq_len)


YARN_VARIANTS = [{}, {"truncate": False}, {"beta_fast": 16, "beta_slow": 2}, {"attention_factor": 1.3},
                 {"mscale": 1.0, "mscale_all_dim": 0.707}]


@pytest.mark.parametrize("head_dim,factor,variant", itertools.product(HEAD_DIMS, SCALES, range(len(YARN_VARIANTS))))
def test_yarn(head_dim, factor, variant):
    block = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": 4096,
             **YARN_VARIANTS[variant]}
    raw, hf = llama_case(head_dim, 1e5, int(4096 * factor), block)
    assert_parity(raw, hf, "yarn", 4096)


@pytest.mark.parametrize("head_dim,factor,theta", itertools.product(HEAD_DIMS, (2.0, 8.0, 32.0), (1e4, 5e5)))
def test_llama3(head_dim, factor, theta):
    block = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192}
    raw, hf = llama_case(head_dim, theta, 131072, block)
    assert_parity(raw, hf, "llama3", 100)


def test_llama31_block():
    block = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192}
    raw, hf = llama_case(128, 5e5, 131072, block)
    assert_parity(raw, hf, "llama3", 131072)
    assert rope.from_hf_config(raw).to_hf() == {**block, "rope_theta": 5e5}


def phi3_case(factors: dict, partial: float = 1.0):
    raw = dict(hidden_size=3072, num_attention_heads=32, max_position_embeddings=131072,
               original_max_position_embeddings=4096, rope_theta=10000.0,
               rope_scaling={"type": "longrope", "short_factor": factors["short_factor"],
                             "long_factor": factors["long_factor"]})
    if partial != 1.0:
        raw["partial_rotary_factor"] = partial
    hf = Phi3Config(**{**raw, "rope_scaling": dict(raw["rope_scaling"])})
    return raw, hf


@pytest.mark.parametrize("model", ["phi3_mini_128k_instruct", "phi35_mini_instruct"])
def test_real_phi3_longrope(model, phi3_factors):
    raw, hf = phi3_case(phi3_factors[model])
    for seq_len in (1, 4095, 4096, 4097, 131072):
        assert_parity(raw, hf, "longrope", seq_len)
    spec = rope.from_hf_config(raw)
    # Boundary: original -> short factors, original + 1 -> long factors.
    short, _ = rope.frequencies(spec, 4096)
    long, _ = rope.frequencies(spec, 4097)
    base = rope.default_inv_freq(1e4, 96)
    np.testing.assert_allclose(base / short, phi3_factors[model]["short_factor"], rtol=1e-6)
    np.testing.assert_allclose(base / long, phi3_factors[model]["long_factor"], rtol=1e-6)


@pytest.mark.parametrize("head_dim,scale", itertools.product(HEAD_DIMS, SCALES))
def test_random_longrope(head_dim, scale):
    rng = np.random.default_rng(int(head_dim * scale))
    long = np.sort(rng.uniform(1.0, scale * 1.25, head_dim // 2)).tolist()
    short = np.sort(rng.uniform(1.0, 1.5, head_dim // 2)).tolist()
    raw = dict(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
               max_position_embeddings=int(2048 * scale), original_max_position_embeddings=2048, rope_theta=1e4,
               rope_scaling={"rope_type": "longrope", "short_factor": short, "long_factor": long})
    hf = LlamaConfig(**{**raw, "rope_scaling": dict(raw["rope_scaling"])})
    for seq_len in (2048, 2049):
        assert_parity(raw, hf, "longrope", seq_len)


def test_apply_rope_matches_hf_rotary_embedding():
    """cos/sin tables and the rotation itself equal HF's LlamaRotaryEmbedding + apply_rotary_pos_emb.

    Our inverse frequencies are rounded to float32 once (HF rounds after each float32 op), so they may differ by
    an ulp, which at position 20k moves an angle by ~3e-4 rad. The tables are therefore compared with HF's own
    inv_freq fed in; frequency parity itself is tested above.
    """
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    raw, hf = llama_case(64, 1e5, 8192, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192})
    spec = rope.from_hf_config(raw)
    positions = np.arange(0, 20000, 7)[None]
    emb = LlamaRotaryEmbedding(hf)
    q = torch.randn(1, 4, positions.shape[1], 64)
    k = torch.randn(1, 2, positions.shape[1], 64)
    cos_t, sin_t = emb(q, torch.tensor(positions))
    q_t, k_t = apply_rotary_pos_emb(q, k, cos_t, sin_t)
    inputs = rope.rope_inputs(spec, positions.shape[1])
    np.testing.assert_allclose(np.asarray(inputs.inv_freq), emb.inv_freq.numpy(), rtol=REL_TOL)
    assert float(inputs.attention_scale) == pytest.approx(emb.attention_scaling, rel=1e-7)
    cos, sin = rope.rope_cos_sin(positions, inputs._replace(inv_freq=torch.clone(emb.inv_freq).numpy()))
    np.testing.assert_allclose(np.asarray(cos), cos_t.numpy(), atol=2e-6)
    np.testing.assert_allclose(np.asarray(sin), sin_t.numpy(), atol=2e-6)
    # Ours takes (B, L, H, d); HF (B, H, L, d).
    q_ours = rope.apply_rope(q.numpy().transpose(0, 2, 1, 3), cos, sin)
    np.testing.assert_allclose(np.asarray(q_ours).transpose(0, 2, 1, 3), q_t.numpy(), atol=2e-5)
    k_ours = rope.apply_rope(k.numpy().transpose(0, 2, 1, 3), cos, sin)
    np.testing.assert_allclose(np.asarray(k_ours).transpose(0, 2, 1, 3), k_t.numpy(), atol=2e-5)
