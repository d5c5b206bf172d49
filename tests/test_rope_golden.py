"""Golden values independent of transformers, runtime-array behaviour (jit/vmap/n̂), errors and properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longrope_jax import rope

SMOLLM2 = dict(hidden_size=576, num_attention_heads=9, head_dim=64, max_position_embeddings=8192, rope_theta=1e5)


def smollm2_longrope(long_factor, n_hat=0, target=32768):
    return rope.longrope_spec(rope.from_hf_config(SMOLLM2), long_factor, max_position_embeddings=target, n_hat=n_hat)


# ----------------------------------------------------------------------------- golden values
def test_phi3_attention_scale_is_sqrt_17_over_12(phi3_factors):
    cfg = dict(hidden_size=3072, num_attention_heads=32, max_position_embeddings=131072,
               original_max_position_embeddings=4096, rope_theta=1e4,
               rope_scaling={"type": "su", **phi3_factors["phi3_mini_128k_instruct"]})
    spec = rope.from_hf_config(cfg)
    assert spec.rope_type == "longrope" and spec.half_dim == 48
    assert rope.frequencies(spec, 10)[1] == math.sqrt(17 / 12)
    assert rope.frequencies(spec, 100_000)[1] == math.sqrt(17 / 12)  # same scale for short and long


def test_default_inv_freq_by_hand():
    np.testing.assert_allclose(rope.default_inv_freq(1e4, 4), [1.0, 0.01])
    np.testing.assert_allclose(rope.default_inv_freq(1e5, 64)[[0, 16]], [1.0, 1e5 ** -0.5], rtol=1e-7)


def test_method_factors_by_hand():
    base = rope.from_hf_config(SMOLLM2)
    np.testing.assert_allclose(rope.method_factors(base, "pi", 4.0), 4.0)
    ntk = rope.method_factors(base, "ntk", 4.0)
    # θ' = θ·s^(d/(d-2)) ⇒ λ_i = s^(d/(d-2) · 2i/d) = s^(2i/(d-2)); λ_0 = 1, λ_last = s.
    expected = 4.0 ** (np.arange(32) * 2 / 62)
    np.testing.assert_allclose(ntk, expected, rtol=1e-6)
    yarn = rope.method_factors(base, "yarn", 4.0)
    # YaRN: high frequencies untouched, low frequencies fully interpolated, monotone ramp between.
    assert yarn[0] == pytest.approx(1.0) and yarn[-1] == pytest.approx(4.0)
    assert np.all(np.diff(yarn) >= -1e-12)
    # Correction range for θ=1e5, d=64, L=8192: floor(64·ln(8192/(32·2π))/(2 ln 1e5)) = floor(10.3) = 10 up to
    # ceil(64·ln(8192/2π)/(2 ln 1e5)) = ceil(19.94) = 20; in between 1/λ_i = r/s + (1 − r), r = (i − 10)/10.
    ramp = np.clip((np.arange(32) - 10) / 10, 0, 1)
    np.testing.assert_allclose(yarn, 1 / (ramp / 4 + (1 - ramp)), rtol=1e-6)


def test_llama3_low_frequencies_divided_by_factor():
    spec = rope.RopeSpec(rope_type="llama3", head_dim=128, theta=5e5, max_position_embeddings=131072, factor=8.0,
                         low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    base = rope.default_inv_freq(5e5, 128)
    lam = rope.equivalent_factors(spec, 10)
    wavelen = 2 * np.pi / base
    np.testing.assert_allclose(lam[wavelen > 8192], 8.0)
    np.testing.assert_allclose(lam[wavelen < 2048], 1.0)


def test_critical_dimension():
    assert rope.critical_dimension(64, 1e5, 8192) == 19  # SmolLM2: ceil(32·log_1e5(8192/2π)) − 1
    assert rope.critical_dimension(128, 5e5, 8192) == 34  # Llama-3-8B
    full = np.asarray(rope.expand_critical_dim(jnp.array([5.0, 6.0, 7.0]), 4))
    np.testing.assert_allclose(full, [1.0, 5 ** 0.25, 5 ** 0.5, 5 ** 0.75, 5.0, 6.0, 7.0], rtol=1e-6)


def test_apply_rope_is_complex_rotation():
    """rotate_half layout: pair i = channels (i, i+d/2) rotates like the complex number x_i + j·x_(i+d/2)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
    positions = np.array([[0, 1, 2, 100, 4000]] * 2)
    inv_freq = rope.default_inv_freq(1e4, 8)
    inputs = rope.RopeInputs(jnp.asarray(inv_freq, jnp.float32), jnp.float32(1.0), jnp.int32(0),
                             jnp.asarray(inv_freq, jnp.float32))
    cos, sin = rope.rope_cos_sin(positions, inputs)
    out = np.asarray(rope.apply_rope(jnp.asarray(x), cos, sin))
    z = (x[..., :4] + 1j * x[..., 4:]) * np.exp(1j * positions[:, :, None, None] * inv_freq)
    np.testing.assert_allclose(out, np.concatenate([z.real, z.imag], -1), atol=2e-5)


def test_partial_rotary_passes_tail_through():
    x = jnp.ones((1, 3, 2, 8))
    cos, sin = rope.rope_cos_sin(jnp.arange(3)[None], rope.rope_inputs(
        rope.RopeSpec(head_dim=8, partial_rotary_factor=0.5, max_position_embeddings=16), 3))
    assert cos.shape == (1, 3, 4)
    out = rope.apply_rope(x, cos, sin)
    np.testing.assert_array_equal(np.asarray(out[..., 4:]), 1.0)
    assert out.dtype == x.dtype


def test_relative_position_property():
    """q·k after rotation depends only on the position difference (scale 1)."""
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((1, 1, 1, 64)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, 64)), jnp.float32)
    inputs = rope.rope_inputs(rope.from_hf_config(SMOLLM2), 10)

    def score(m, n):
        cq, sq = rope.rope_cos_sin(jnp.array([[m]]), inputs)
        ck, sk = rope.rope_cos_sin(jnp.array([[n]]), inputs)
        return float(jnp.sum(rope.apply_rope(q, cq, sq) * rope.apply_rope(k, ck, sk)))

    assert score(10, 3) == pytest.approx(score(1007, 1000), abs=1e-4)


# ----------------------------------------------------------------------------- runtime arrays
def test_n_hat_rows_equal_unscaled_rope():
    rng = np.random.default_rng(2)
    spec = smollm2_longrope(np.sort(rng.uniform(1, 5, 32)), n_hat=16)
    positions = jnp.arange(64)[None]
    cos, sin = rope.rope_cos_sin(positions, rope.rope_inputs(spec, 32768))
    plain = rope.rope_inputs(rope.from_hf_config(SMOLLM2), 32768)
    cos0, sin0 = rope.rope_cos_sin(positions, plain)
    np.testing.assert_array_equal(np.asarray(cos[:, :16]), np.asarray(cos0[:, :16]))
    np.testing.assert_array_equal(np.asarray(sin[:, :16]), np.asarray(sin0[:, :16]))
    scale = rope.frequencies(spec, 32768)[1]
    assert scale == pytest.approx(math.sqrt(1 + math.log(4) / math.log(8192)))
    assert not np.allclose(np.asarray(cos[:, 16:]), np.asarray(cos0[:, 16:]))
    # From n̂ on: rescaled angles times the attention scale.
    inv = np.asarray(rope.frequencies(spec, 32768)[0])
    np.testing.assert_allclose(np.asarray(cos[0, 16:, :32]), np.cos(np.arange(16, 64)[:, None] * inv) * scale,
                               atol=1e-5)


def _query_after_rope(q, factors, n_hat, original_inv_freq, scale):
    inputs = rope.longrope_inputs(original_inv_freq, factors, scale, n_hat)
    positions = jnp.arange(q.shape[1])[None]
    cos, sin = rope.rope_cos_sin(positions, inputs)
    return rope.apply_rope(q, cos, sin)


def test_vmap_over_64_factor_vectors_equals_loop():
    rng = np.random.default_rng(3)
    factors = np.sort(rng.uniform(1.0, 5.0, (64, 32)), axis=-1).astype(np.float32)
    n_hats = rng.choice([0, 4, 16], 64).astype(np.int32)
    original = jnp.asarray(rope.default_inv_freq(1e5, 64), jnp.float32)
    q = jnp.asarray(rng.standard_normal((1, 300, 3, 64)), jnp.float32)
    fn = jax.jit(_query_after_rope)
    batched = jax.jit(jax.vmap(_query_after_rope, in_axes=(None, 0, 0, None, None)))(
        q, jnp.asarray(factors), jnp.asarray(n_hats), original, 1.2)
    for i in range(64):
        np.testing.assert_array_equal(np.asarray(batched[i]), np.asarray(fn(q, factors[i], n_hats[i], original, 1.2)))


def test_one_compilation_serves_every_candidate():
    traces = []

    def traced(q, factors, n_hat, original, scale):
        traces.append(1)
        return _query_after_rope(q, factors, n_hat, original, scale)

    fn = jax.jit(traced)
    original = jnp.asarray(rope.default_inv_freq(1e5, 64), jnp.float32)
    q = jnp.ones((1, 16, 1, 64))
    for seed in range(5):
        factors = np.sort(np.random.default_rng(seed).uniform(1, 8, 32)).astype(np.float32)
        fn(q, factors, np.int32(seed), original, np.float32(1.0 + seed / 10)).block_until_ready()
    assert len(traces) == 1


def test_per_layer_factors_select_layer():
    factors = np.stack([np.full(32, 2.0), np.full(32, 4.0)])
    spec = smollm2_longrope(factors)
    assert spec.per_layer
    inv, _ = rope.frequencies(spec, 32768)
    assert inv.shape == (2, 32)
    inputs = rope.rope_inputs(spec, 32768)
    np.testing.assert_allclose(np.asarray(rope.select_layer(inputs, 1).inv_freq),
                               rope.default_inv_freq(1e5, 64) / 4.0, rtol=1e-6)
    with pytest.raises(ValueError, match="per-layer"):
        spec.to_hf()
    assert rope.RopeSpec.from_dict(spec.to_dict()) == spec


# ----------------------------------------------------------------------------- round trips
def test_round_trip_every_type(phi3_factors):
    specs = [
        rope.from_hf_config(SMOLLM2),
        rope.RopeSpec(rope_type="linear", head_dim=64, max_position_embeddings=4096, factor=2.0),
        rope.RopeSpec(rope_type="dynamic", head_dim=96, max_position_embeddings=4096, factor=4.0, theta=5e5),
        rope.RopeSpec(rope_type="yarn", head_dim=128, max_position_embeddings=32768, factor=8.0,
                      original_max_position_embeddings=4096, beta_fast=16, truncate=False),
        rope.RopeSpec(rope_type="llama3", head_dim=128, theta=5e5, max_position_embeddings=131072, factor=8.0,
                      low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192),
        smollm2_longrope(np.linspace(1, 6, 32), n_hat=8).replace(critical_dim=19),
        rope.RopeSpec(rope_type="ntk", head_dim=64, theta=1e5, max_position_embeddings=8192, factor=4.0),
    ]
    for spec in specs:
        config = {"head_dim": spec.head_dim, "hidden_size": spec.head_dim * 2, "num_attention_heads": 2,
                  "max_position_embeddings": spec.max_position_embeddings, "rope_scaling": spec.to_hf()}
        again = rope.from_hf_config(config)
        assert again.to_hf() == spec.to_hf()
        for seq_len in (100, 8192, 8193, 40000):
            a, b = rope.frequencies(spec, seq_len), rope.frequencies(again, seq_len)
            np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
            assert a[1] == pytest.approx(b[1], rel=1e-12)
        assert rope.RopeSpec.from_dict(spec.to_dict()) == spec
    exported = specs[5].to_hf()
    assert exported["rope_type"] == "longrope" and exported["original_max_position_embeddings"] == 8192
    assert exported["attention_factor"] == pytest.approx(math.sqrt(1 + math.log(4) / math.log(8192)))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("block,match", [
    ({"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [2.0] * 31}, "long_factor.*32"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [0.5] + [2.0] * 31}, "< 1"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [float("nan")] * 32}, "NaN"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [float("inf")] * 32}, "NaN or inf"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [3.0, 2.0] + [3.0] * 30}, "monotone"),
    ({"rope_type": "longrope", "long_factor": [2.0] * 32}, "short_factor"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [2.0] * 32, "n_hat": -1}, "n_hat"),
    ({"rope_type": "xpos"}, "unknown rope type 'xpos'"),
    ({"rope_type": "yarn"}, "factor"),
    ({"rope_type": "linear", "factor": 0.5}, "factor"),
    ({"rope_type": "llama3", "factor": 8.0}, "low_freq_factor"),
])
def test_bad_specs_raise_value_error_naming_the_field(block, match):
    with pytest.raises(ValueError, match=match):
        rope.from_hf_config({**SMOLLM2, "rope_scaling": block})


def test_missing_keys_and_non_monotone_opt_out():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        rope.from_hf_config({"head_dim": 64})
    with pytest.raises(ValueError, match="head_dim"):
        rope.from_hf_config({"max_position_embeddings": 10})
    block = {"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [3.0, 2.0] + [3.0] * 30}
    assert rope.from_hf_config({**SMOLLM2, "rope_scaling": block}, require_monotone=False).rope_type == "longrope"
    with pytest.raises(ValueError, match="seq_len"):
        rope.frequencies(rope.from_hf_config(SMOLLM2), 0)


# ----------------------------------------------------------------------------- properties
monotone_vectors = st.lists(st.floats(1.0, 100.0, allow_nan=False), min_size=32, max_size=32).map(sorted)


@settings(max_examples=60, deadline=None)
@given(monotone_vectors, st.integers(0, 256))
def test_valid_factors_give_valid_decreasing_frequencies(factors, n_hat):
    spec = smollm2_longrope(factors, n_hat=n_hat)
    inv, scale = rope.frequencies(spec, 32768)
    base = rope.default_inv_freq(1e5, 64)
    assert np.all(inv <= base * (1 + 1e-6)) and np.all(inv > 0)  # λ >= 1 only ever slows rotation
    assert np.all(np.diff(inv) < 0)  # frequencies stay strictly ordered
    assert scale >= 1.0
    rope.validate_factors(np.asarray(factors), "long_factor", 32)  # accepted


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(-10, 200), st.sampled_from([float("nan"), float("inf"), 1.0])),
                min_size=32, max_size=32).map(lambda v: sorted(v) if v[0] == 1.0 else v))
def test_validation_accepts_exactly_the_valid_vectors(factors):
    array = np.asarray(factors)
    valid = bool(np.all(np.isfinite(array)) and np.all(array >= 1) and np.all(np.diff(array) >= 0))
    if valid:
        rope.validate_factors(array, "long_factor", 32)
    else:
        with pytest.raises(ValueError, match="long_factor"):
            rope.validate_factors(array, "long_factor", 32)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(1.0, 50.0), min_size=13, max_size=13).map(sorted))
def test_critical_dim_expansion_is_monotone(upper):
    full = np.asarray(rope.expand_critical_dim(jnp.asarray(upper), 19))
    assert full.shape == (32,) and full[0] == 1.0
    assert np.all(np.diff(full) >= -1e-5)
    np.testing.assert_allclose(full[19:], upper, rtol=1e-6)
