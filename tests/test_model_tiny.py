"""Tiny random Llama / Mistral / Phi-3 against transformers, attention kernels, cache decoding, loss, conversion."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
import torch
import transformers

import longrope_jax
from longrope_jax.checkpoint import read_model_config, restore_params, save_model_dir
from longrope_jax.convert.hf import iter_safetensors, load_hf_dir, save_hf_dir
from longrope_jax.errors import CheckpointError, ConfigError
from longrope_jax.model import blocked as blocked_module
from longrope_jax.model.attention import blockwise_attention, reference_attention
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.execution import Execution
from longrope_jax.model.generate import generate
from longrope_jax.model.loss import sequence_nll
from longrope_jax.model.state import model_params
from longrope_jax.model.transformer import init_model
from longrope_jax.rope import RopeSpec, longrope_spec, rope_inputs

COMMON = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
              num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False)


def hf_model(tmp_path, kind: str, **extra):
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(**COMMON, max_position_embeddings=256, rope_theta=1e4, **extra)
        model = transformers.LlamaForCausalLM(config)
    elif kind == "mistral":
        config = transformers.MistralConfig(**COMMON, max_position_embeddings=256, sliding_window=24, **extra)
        model = transformers.MistralForCausalLM(config)
    else:
        config = transformers.Phi3Config(**COMMON, max_position_embeddings=512, original_max_position_embeddings=64,
                                         pad_token_id=0, **extra)
        model = transformers.Phi3ForCausalLM(config)
    with torch.no_grad():  # random norms too, so norm weights are really tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.eval()
    model.save_pretrained(tmp_path)
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


def tokens_of(length: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, COMMON["vocab_size"], (batch, length)).astype(np.int32)


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_tiny_models_match_transformers(tmp_path, kind):
    model = hf_model(tmp_path, kind)
    ours, cfg = longrope_jax.load_model(tmp_path, attention="blockwise", block_q=16, block_kv=16)
    if kind == "mistral":
        assert cfg.sliding_window == 24
    tokens = tokens_of(70)  # longer than the sliding window, not a multiple of the block
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(tokens))), hf_logits(model, tokens), atol=1e-4)


def test_tiny_phi3_longrope_short_and_long(tmp_path):
    rng = np.random.default_rng(0)
    scaling = {"rope_type": "longrope", "short_factor": np.sort(rng.uniform(1, 1.5, 4)).tolist(),
               "long_factor": np.sort(rng.uniform(1, 8, 4)).tolist()}
    model = hf_model(tmp_path, "phi3", rope_scaling=scaling)
    assert model.config.rope_parameters["rope_type"] == "longrope"
    ours, cfg = longrope_jax.load_model(tmp_path, attention="blockwise", block_q=16, block_kv=16)
    assert cfg.rope.rope_type == "longrope" and cfg.rope.original_max_position_embeddings == 64
    for length in (64, 65):  # original -> short factors, original + 1 -> long factors
        tokens = tokens_of(length, batch=1, seed=length)
        np.testing.assert_allclose(np.asarray(ours(jnp.asarray(tokens))), hf_logits(model, tokens), atol=1e-4)
    # Export fuses qkv / gate_up again and transformers loads it.
    out = save_hf_dir(cfg, model_params(ours), tmp_path / "export")
    again = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokens = tokens_of(65, batch=1)
    np.testing.assert_allclose(hf_logits(again, tokens), hf_logits(model, tokens), atol=1e-5)


@pytest.mark.parametrize("window", [None, 19])
@pytest.mark.parametrize("length,block_q,block_kv,backward_rows",
                         [(128, 32, 32, 384), (128, 32, 32, 24), (100, 16, 48, 16), (37, 64, 8, 384)])
def test_blockwise_equals_reference(window, length, block_q, block_kv, backward_rows, monkeypatch):
    # backward_rows < G·block_q makes the flash backward cut each query block's rows into several tiles.
    monkeypatch.setattr(blocked_module, "BACKWARD_ROWS", backward_rows)
    rng = np.random.default_rng(length)
    q = jnp.asarray(rng.standard_normal((2, length, 6, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, length, 2, 16)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, length, 2, 16)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((2, length, 6, 16)), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(length), (2, length)) + 5
    ref = reference_attention(q, k, v, pos, pos, window)
    out = blockwise_attention(q, k, v, pos, pos, window, block_q, block_kv)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    # Gradients for q, k and v agree too (the trainer differentiates through the blockwise kernel's custom VJP).
    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)
    grads = jax.grad(loss(lambda q, k, v: blockwise_attention(q, k, v, pos, pos, window, block_q, block_kv)),
                     argnums=(0, 1, 2))(q, k, v)
    grads_ref = jax.grad(loss(lambda q, k, v: reference_attention(q, k, v, pos, pos, window)),
                         argnums=(0, 1, 2))(q, k, v)
    for name, got, want in zip("qkv", grads, grads_ref):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, err_msg=f"d{name}")


def test_blockwise_gradient_memory_stays_linear_inside_a_layer_scan(layer_scan_gradient_temp_bytes):
    """Layers stacked with `lax.scan`: reverse mode must not hoist per-tile masks out of the loop (O(L²) buffers).
    Compiled temporary memory of the gradient grows ~2x when L doubles (it was ~3.6x before the fix)."""
    attention = lambda q, k, v, pos: blockwise_attention(q, k, v, pos, pos, None, 64, 64)
    small, large = (layer_scan_gradient_temp_bytes(attention, length) for length in (1024, 2048))
    assert large < 2.6 * small, (small, large)


def test_blockwise_gradient_in_bfloat16_and_under_vmap():
    """bf16 inputs keep their dtype through the custom VJP; a vmapped gradient equals the per-item ones."""
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((3, 1, 40, h, 8)), jnp.float32) for h in (4, 2, 2))
    pos = jnp.arange(40)[None]

    def loss(q, k, v):
        return jnp.sum(blockwise_attention(q, k, v, pos, pos, None, 16, 16) ** 2)

    batched = jax.vmap(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    for i in range(3):
        single = jax.grad(loss, argnums=(0, 1, 2))(q[i], k[i], v[i])
        for got, want in zip(batched, single):
            np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), atol=1e-5)
    half = jax.grad(loss, argnums=(0, 1, 2))(*(x[0].astype(jnp.bfloat16) for x in (q, k, v)))
    full = jax.grad(loss, argnums=(0, 1, 2))(q[0], k[0], v[0])
    for got, want in zip(half, full):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("window", [None, 19])
def test_cudnn_path_layout_and_window_match_reference(window):
    """The GPU path's call (run through XLA here) has the same GQA layout and window semantics."""
    from longrope_jax.model.attention import cudnn_attention
    rng = np.random.default_rng(7)
    q = jnp.asarray(rng.standard_normal((2, 50, 6, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 50, 2, 16)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 50, 2, 16)), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(50), (2, 50))
    np.testing.assert_allclose(np.asarray(cudnn_attention(q, k, v, window, implementation="xla")),
                               np.asarray(reference_attention(q, k, v, pos, pos, window)), atol=1e-5)


def tiny_config(**changes) -> ModelConfig:
    base = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, rope=RopeSpec(head_dim=8, max_position_embeddings=32),
                       execution=Execution(attention="blockwise", block_q=8, block_kv=8, loss_chunk=7))
    return base.replace(**changes)


def test_bfloat16_compute_tracks_float32(tmp_path):
    model = hf_model(tmp_path, "llama")
    ours, _ = longrope_jax.load_model(tmp_path, dtype="bfloat16", attention="blockwise", block_q=16, block_kv=16)
    tokens = tokens_of(40)
    logits = np.asarray(ours(jnp.asarray(tokens)))
    reference = hf_logits(model, tokens)
    assert np.abs(logits - reference).max() < 0.05 * np.abs(reference).max()
    assert (logits.argmax(-1) == reference.argmax(-1)).mean() > 0.9


def test_scan_unrolled_and_remat_agree():
    tokens = jnp.asarray(tokens_of(20, seed=3) % 97)
    reference = init_model(tiny_config())(tokens)
    for changes in ({"scan_layers": False}, {"remat": "full"}, {"remat": "dots_saveable"}):
        np.testing.assert_allclose(np.asarray(init_model(tiny_config(**changes))(tokens)), np.asarray(reference),
                                   atol=1e-5)


def test_remat_policies_give_the_same_gradients_and_save_attention_skips_its_recompute():
    """Every policy differentiates to the same gradients; "save_attention" keeps the blockwise kernel's output and
    log-sum-exp, so the backward pass runs fewer attention scans than "full" (which reruns the kernel's forward)."""
    tokens = jnp.asarray(tokens_of(40, seed=5) % 97)

    def grads_and_scans(remat):
        model = init_model(tiny_config(remat=remat, attention="blockwise", block_q=8, block_kv=8))
        graphdef, state = nnx.split(model)
        loss = lambda s: sequence_nll(nnx.merge(graphdef, s), tokens).mean()
        return jax.grad(loss)(state), str(jax.make_jaxpr(jax.grad(loss))(state)).count("scan[")

    reference, _ = grads_and_scans("none")
    scans = {}
    for remat in ("full", "save_attention", "dots_saveable"):
        grads, scans[remat] = grads_and_scans(remat)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, err_msg=remat)
    assert scans["save_attention"] < scans["full"]


def test_chunked_loss_equals_full_logits_loss():
    model = init_model(tiny_config())
    tokens = jnp.asarray(tokens_of(30, seed=4) % 97)
    nll = sequence_nll(model, tokens)
    logits = model(tokens[:, :-1], rope=rope_inputs(model.cfg.rope, 30))
    full = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(nll), np.asarray(full), atol=1e-5)


def test_cached_generation_equals_full_forward():
    model = init_model(tiny_config(num_layers=3), seed=1)
    out = np.asarray(generate(model, jnp.asarray([[1, 5, 9, 2, 7]]), 12))
    logits = np.asarray(model(jnp.asarray(out[:, :-1])))
    np.testing.assert_array_equal(logits.argmax(-1)[0, 4:], out[0, 5:])


def test_generation_stops_at_the_stop_token_with_the_same_tokens_before_it():
    model = init_model(tiny_config(num_layers=3), seed=1)
    prompt = jnp.asarray([[1, 5, 9, 2, 7], [3, 3, 8, 1, 4]])
    full = np.asarray(generate(model, prompt, 12))[:, 5:]
    stop = int(full[0, 3])  # a token the first sequence emits mid-way
    stopped = np.asarray(generate(model, prompt, 12, stop_token=stop))[:, 5:]
    for row, reference in zip(stopped, full):
        hits = np.flatnonzero(reference == stop)
        end = int(hits[0]) + 1 if hits.size else len(reference)
        np.testing.assert_array_equal(row[:end], reference[:end])
        assert np.all(row[end:] == stop)
    assert np.any(stopped != full)  # the first sequence's tokens after its stop token are not decoded
    np.testing.assert_array_equal(np.asarray(generate(model, prompt, 12, stop_token=10**6))[:, 5:], full)


def test_temperature_sampling_equals_sampling_the_full_forward_logits():
    model = init_model(tiny_config(num_layers=3), seed=1)
    prompt, key, temperature = jnp.asarray([[1, 5, 9, 2, 7]]), jax.random.key(3), 0.8
    out = np.asarray(generate(model, prompt, 6, temperature=temperature, rng=key))
    rope = rope_inputs(model.cfg.rope, 11)
    sequence = np.asarray(prompt)
    for step_key in jax.random.split(key, 6):  # generate's key schedule: one key per new token
        logits = model(jnp.asarray(sequence), rope=rope)[:, -1]
        token = np.asarray(jax.random.categorical(step_key, logits / temperature, axis=-1))
        sequence = np.concatenate([sequence, token[:, None]], axis=1)
    np.testing.assert_array_equal(out, sequence)
    other = np.asarray(generate(model, prompt, 6, temperature=temperature, rng=jax.random.key(4)))
    assert not np.array_equal(other, out)  # the key matters
    greedy = np.asarray(generate(model, prompt, 6))
    np.testing.assert_array_equal(np.asarray(generate(model, prompt, 6, temperature=1e-4, rng=key)), greedy)


def test_generation_fixes_long_factors_from_total_length():
    """Prompt shorter than the original context, total longer: long factors from the first token on."""
    base = tiny_config().rope
    spec = longrope_spec(base, np.linspace(1.0, 6.0, 4), short_factor=[1.0, 1.0, 1.1, 1.2],
                         max_position_embeddings=128)
    model = init_model(tiny_config(rope=spec), seed=2)
    prompt = jnp.asarray([np.arange(1, 25)])  # 24 tokens < original 32; 24 + 16 = 40 > 32
    out = np.asarray(generate(model, prompt, 16))
    long_rope = rope_inputs(spec, 40)
    logits = np.asarray(model(jnp.asarray(out[:, :-1]), rope=long_rope))
    np.testing.assert_array_equal(logits.argmax(-1)[0, 23:], out[0, 24:])
    short_logits = np.asarray(model(jnp.asarray(out[:, :24]), rope=rope_inputs(spec, 24)))
    assert not np.allclose(short_logits, logits[:, :24], atol=1e-4)  # the two regimes really differ


def test_orbax_and_hf_round_trips(tmp_path):
    cfg = tiny_config(rope=longrope_spec(tiny_config().rope, [1.0, 2.0, 3.0, 4.0], max_position_embeddings=128))
    model = init_model(cfg, seed=5)
    params = model_params(model)
    save_model_dir(cfg, params, tmp_path / "orbax")
    assert read_model_config(tmp_path / "orbax") == cfg
    restored = restore_params(tmp_path / "orbax", cfg)
    for key, value in params.items():
        np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(value))
    loaded, loaded_cfg = longrope_jax.load_model(tmp_path / "orbax")
    tokens = jnp.asarray(tokens_of(40, seed=6) % 97)
    np.testing.assert_array_equal(np.asarray(loaded(tokens)), np.asarray(model(tokens)))
    save_hf_dir(cfg, params, tmp_path / "hf", max_shard_bytes=20_000)  # force several shards
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    hf_cfg, hf_params = load_hf_dir(tmp_path / "hf", attention="blockwise", block_q=8, block_kv=8, loss_chunk=7)
    assert hf_cfg.rope.to_hf() == cfg.rope.to_hf()
    for key, value in params.items():
        np.testing.assert_array_equal(hf_params[key], np.asarray(value))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "longrope"


def test_conversion_errors(tmp_path):
    cfg = tiny_config()
    params = model_params(init_model(cfg))
    save_hf_dir(cfg, params, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="unsupported model_type 'gpt2'"):
        longrope_jax.load_model(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "intermediate_size": 50}))
    with pytest.raises(CheckpointError, match="shape"):
        longrope_jax.load_model(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="missing"):
        longrope_jax.load_model(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    data = (tmp_path / "hf" / "model.safetensors").read_bytes()
    (tmp_path / "hf" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        longrope_jax.load_model(tmp_path / "hf")
    from safetensors.numpy import save_file
    save_hf_dir(cfg, params, tmp_path / "hf2")
    tensors = dict(iter_safetensors(tmp_path / "hf2"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.int32)
    save_file(tensors, tmp_path / "hf2" / "model.safetensors")
    with pytest.raises(CheckpointError, match="dtype int32"):
        longrope_jax.load_model(tmp_path / "hf2")
    with pytest.raises(CheckpointError, match="does not exist"):
        longrope_jax.load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="longrope_model.json"):
        read_model_config(tmp_path)
    from longrope_jax.checkpoint import save_model_dir
    poisoned = dict(params)
    weight = np.array(poisoned["layers/mlp/down_proj"], copy=True)
    weight[1, 5, 7] = np.nan  # deep inside a stacked layer weight, not its first element
    poisoned["layers/mlp/down_proj"] = weight
    save_model_dir(cfg, poisoned, tmp_path / "nan")
    with pytest.raises(CheckpointError, match="parameter layers/mlp/down_proj .* holds NaN/inf"):
        longrope_jax.load_model(tmp_path / "nan")
