"""Test setup: 8 fake CPU devices (meshes, sharding tests) before JAX is imported anywhere."""

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (JAX reads its settings from the environment here, before the lines below)
import pytest  # noqa: E402

# The CLI tests run tiny configs in subprocesses that compile the same programs again and again (model init, the
# train step); XLA's persistent cache, keyed by the program and the compiler flags, turns each repeat into a disk
# read. Set after JAX's import, so it reaches only those subprocesses: this process compiles as a user's would.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(),
                                                                f"longrope_jax_tests_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

FIXTURES = Path(__file__).parent / "fixtures"
MINI_LLAMA = FIXTURES / "mini_llama"  # the search bench's fixture model (experiments.pretrain)


@pytest.fixture(scope="session")
def phi3_factors() -> dict:
    """Real Phi-3-mini-128k-instruct and Phi-3.5-mini-instruct longrope factor lists (public config data)."""
    return json.loads((FIXTURES / "phi3_longrope_factors.json").read_text())


@pytest.fixture(scope="session")
def layer_scan_gradient_temp_bytes():
    """temp_bytes(attention, length): compiled temporary memory of the gradient through two toy layers stacked
    with `lax.scan` (4 query heads, 2 KV heads, head_dim 16), `attention(q, k, v, positions)` -> (1, L, 4, 16)."""
    import jax.numpy as jnp

    def temp_bytes(attention, length: int) -> int:
        pos = jnp.arange(length)[None]

        def layer(x, w):
            h = x @ w
            q, k, v = h[..., :64], h[..., 64:96], h[..., 96:]
            out = attention(q.reshape(1, length, 4, 16), k.reshape(1, length, 2, 16), v.reshape(1, length, 2, 16),
                            pos)
            return x + out.reshape(1, length, 64), None

        loss = lambda x, w: jnp.sum(jax.lax.scan(layer, x, w)[0] ** 2)
        args = (jax.ShapeDtypeStruct((1, length, 64), jnp.float32), jax.ShapeDtypeStruct((2, 64, 128), jnp.float32))
        return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile().memory_analysis().temp_size_in_bytes

    return temp_bytes
