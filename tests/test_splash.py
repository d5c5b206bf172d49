"""The TPU splash-attention path, run with Pallas interpret=True on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longrope_jax.model.attention import reference_attention
from longrope_jax.model.splash import splash_attention


@pytest.mark.parametrize("length,window", [(256, None), (200, 70)])
def test_splash_equals_reference_forward_and_grad(length, window):
    rng = np.random.default_rng(length)
    q = jnp.asarray(rng.standard_normal((1, length, 6, 64)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, length, 2, 64)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((1, length, 2, 64)), jnp.float32)
    pos = jnp.arange(length)[None]
    out = splash_attention(q, k, v, window, 128, 128, interpret=True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference_attention(q, k, v, pos, pos, window)), atol=1e-5)
    if window is None:
        loss = lambda fn: lambda q: jnp.sum(fn(q) ** 2)  # noqa: E731
        grad = jax.grad(loss(lambda q: splash_attention(q, k, v, None, 128, 128, interpret=True)))(q)
        grad_ref = jax.grad(loss(lambda q: reference_attention(q, k, v, pos, pos)))(q)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_ref), atol=1e-4)
