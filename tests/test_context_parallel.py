"""Context parallelism wired through the model, evaluation, search fitness and fine-tuning (8 fake CPU devices)."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import longrope_jax
from longrope_jax.assets import smollm2_gguf_path
from longrope_jax.errors import ConfigError
from longrope_jax.eval.perplexity import PerplexityEvaluator, spec_ropes
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.execution import Execution
from longrope_jax.model.context import ContextParallel, context_hidden, context_order, context_parallel
from longrope_jax.model.loss import sequence_nll
from longrope_jax.model.state import model_from_params, model_params
from longrope_jax.model.transformer import init_model
from longrope_jax.rope import RopeSpec, rope_inputs
from longrope_jax.search.job import run_search
from longrope_jax.sharding import make_mesh, param_shardings

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=8, num_kv_heads=4,
                   head_dim=8, rope=RopeSpec(head_dim=8, max_position_embeddings=64),
                   execution=Execution(attention="blockwise", block_q=16, block_kv=16))


def _nll_fn(model, context):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, t: sequence_nll(nnx.merge(graphdef, s), t, context=context)), state


def test_context_order_pads_with_future_tokens_and_inverts():
    order, inverse, padded = context_order(203, 4)
    assert padded == 208 and sorted(order) == list(range(208))
    np.testing.assert_array_equal(np.arange(208)[order][inverse], np.arange(208))


@pytest.mark.parametrize("mesh_shape,impl,window", [
    (dict(context=8), "ring", None),
    (dict(context=8), "allgather", None),
    (dict(fsdp=2, context=4), "ring", 24),
    (dict(data=2, tensor=2, context=2), "ring", None),
])
def test_sequence_nll_context_parallel_equals_single_device(mesh_shape, impl, window):
    cfg = TINY.replace(sliding_window=window)
    model = init_model(cfg, seed=1)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 204)), jnp.int32)  # 203 inputs: padded
    single = np.asarray(sequence_nll(model, tokens))
    mesh = make_mesh(**mesh_shape)
    sharded = model_from_params(cfg, model_params(model), param_shardings(cfg, mesh))
    fn, state = _nll_fn(sharded, ContextParallel(mesh, impl=impl))
    np.testing.assert_allclose(np.asarray(fn(state, tokens)), single, atol=1e-5, rtol=0)
    # The sequence really is split: K/V move between devices (ring: collective-permute; else all-gather).
    hlo = fn.lower(state, tokens).compile().as_text()
    assert ("collective-permute" if impl == "ring" else "all-gather") in hlo


def test_context_parallel_gradients_equal_single_device():
    model = init_model(TINY, seed=2)
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 128, (1, 129)), jnp.int32)
    context = context_parallel(make_mesh(context=8))

    def loss(s, ctx):
        return sequence_nll(nnx.merge(graphdef, s), tokens, context=ctx).mean()

    single = jax.grad(loss)(state, None)
    sharded = jax.jit(jax.grad(loss), static_argnums=1)(state, context)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-6, rtol=0)


def test_batched_candidate_perplexity_with_context_axis():
    model = init_model(TINY, seed=3)
    documents = np.random.default_rng(2).integers(0, 128, (2, 160)).astype(np.int32)
    specs = [TINY.rope, TINY.rope.replace(rope_type="linear", factor=2.0),
             TINY.rope.replace(rope_type="dynamic", factor=2.0)]
    ropes = spec_ropes(specs, 160)
    single = PerplexityEvaluator(model).mean_nll(documents, ropes)
    sharded = PerplexityEvaluator(model, context_parallel(make_mesh(context=8))).mean_nll(documents, ropes)
    np.testing.assert_allclose(sharded, single, atol=1e-5, rtol=0)
    assert len({round(float(v), 4) for v in single[:, 0]}) == 3  # the candidates really differ


def test_search_with_candidates_over_data_and_tokens_over_context(tmp_path):
    sys.path.insert(0, str(ROOT))
    from configs.tiny import get_config

    def config(**search):
        c = get_config()
        c.search.update(dict(racing=False, verdict_documents=0, batch_size=2, **search))
        return c

    sharded = run_search(config(data_parallel=2, context_parallel=4, cache=str(tmp_path / "s.sqlite")),
                         tmp_path / "sharded")
    single = run_search(config(cache=str(tmp_path / "u.sqlite")), tmp_path / "single")
    pop = {name: {e["key"]: e["nll"] for e in json.loads((tmp_path / name / "search_state.json").read_text())
                  ["population"]} for name in ("sharded", "single")}
    assert pop["sharded"].keys() == pop["single"].keys()
    for key, nll in pop["single"].items():
        np.testing.assert_allclose(pop["sharded"][key], nll, atol=1e-5)
    assert sharded["best_perplexity"] == pytest.approx(single["best_perplexity"], rel=1e-5)


def test_context_parallel_rejects_bad_settings():
    with pytest.raises(ConfigError, match="unknown context attention"):
        ContextParallel(make_mesh(context=2), impl="ulysses")
    assert context_parallel(make_mesh(fsdp=2)) is None  # no context axis to split over
    with pytest.raises(ValueError, match="KV-cache"):
        model = init_model(TINY)
        model.hidden(jnp.zeros((1, 16), jnp.int32), cache=model.init_cache(1, 16),
                     context=ContextParallel(make_mesh(context=2)))


def test_smollm2_fsdp_tensor_context_forward_matches_single_device():
    model, cfg = longrope_jax.load_model(smollm2_gguf_path())
    mesh = make_mesh(fsdp=2, tensor=2, context=2)
    sharded = model_from_params(cfg, model_params(model), param_shardings(cfg, mesh))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 200)), jnp.int32)
    rope = rope_inputs(cfg.rope, 200)
    context = ContextParallel(mesh)

    def logits(m, t, ctx):
        h = context_hidden(m, t, rope, ctx) if ctx else m.hidden(t, rope=rope)[0]
        return jnp.einsum("ble,ev->blv", h, m.output_kernel())

    sharded_logits = np.asarray(nnx.jit(logits, static_argnums=2)(sharded, tokens, context))
    single = np.asarray(nnx.jit(logits, static_argnums=2)(model, tokens, None))
    # fp32 sums split over fsdp/tensor shards reassociate; through 30 layers that moves logits (up to ~25) by
    # ~1e-4 at most: 1e-4 relative to the logit scale.
    scale = float(np.max(np.abs(single)))
    np.testing.assert_allclose(sharded_logits, single, atol=1e-4 * scale, rtol=0)
    assert np.mean(np.abs(sharded_logits - single) > 1e-4) < 1e-2
