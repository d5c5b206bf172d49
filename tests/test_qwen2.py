"""Qwen2 (q/k/v biases, θ = 1e6, tied or untied embeddings) against transformers' Qwen2ForCausalLM: HF import,
logits, KV-cache decoding, HF export round trip and a searched longrope block on it."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import longrope_jax
from longrope_jax.convert.hf import param_shapes, save_hf_dir
from longrope_jax.errors import ConfigError
from longrope_jax.model.generate import generate
from longrope_jax.model.state import model_params
from longrope_jax.rope import longrope_spec, rope_inputs

SIZES = dict(vocab_size=203, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
             num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=256, rope_theta=1e6)


def qwen2(tmp_path, tied: bool):
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SIZES, tie_word_embeddings=tied))
    with torch.no_grad():  # HF initialises biases to zero: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    model.eval()
    model.save_pretrained(tmp_path)
    return model


def logits_of(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


@pytest.mark.parametrize("tied", [False, True])
def test_qwen2_logits_match_transformers_with_nonzero_biases(tmp_path, tied):
    reference = qwen2(tmp_path, tied)
    assert float(reference.model.layers[0].self_attn.q_proj.bias.detach().abs().max()) > 0.1
    ours, cfg = longrope_jax.load_model(tmp_path, attention="blockwise", block_q=16, block_kv=16)
    assert cfg.architecture == "qwen2" and cfg.qkv_bias and cfg.rope.theta == 1e6 and cfg.tie_word_embeddings == tied
    assert ("lm_head" in param_shapes(cfg)) != tied
    tokens = np.random.default_rng(0).integers(0, SIZES["vocab_size"], (2, 70)).astype(np.int32)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(tokens))), logits_of(reference, tokens), atol=1e-4)
    assert np.abs(np.asarray(model_params(ours)["layers/self_attn/k_bias"])).max() > 0.1
    # greedy KV-cache decoding equals transformers' greedy generate
    prompt = tokens[:1, :20]
    ours_out = np.asarray(generate(ours, jnp.asarray(prompt), 8))
    with torch.no_grad():
        theirs = reference.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=8, do_sample=False,
                                    pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours_out, theirs)


def test_qwen2_export_round_trip_loads_in_transformers_with_longrope(tmp_path):
    qwen2(tmp_path / "src", tied=False)
    ours, cfg = longrope_jax.load_model(tmp_path / "src")
    factors = list(np.linspace(1.0, 4.0, cfg.rope.half_dim))
    extended = cfg.replace(rope=longrope_spec(cfg.rope, factors, max_position_embeddings=1024))
    save_hf_dir(extended, model_params(ours), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["rope_scaling"]["rope_type"] == "longrope"
    assert "attention_bias" not in config and config["use_sliding_window"] is False
    served = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    assert type(served).__name__ == "Qwen2ForCausalLM"
    tokens = np.random.default_rng(1).integers(0, SIZES["vocab_size"], (1, 600)).astype(np.int32)
    again, _ = longrope_jax.load_model(tmp_path / "out")
    ours_logits = np.asarray(again(jnp.asarray(tokens), rope=rope_inputs(extended.rope, tokens.shape[1])))
    np.testing.assert_allclose(ours_logits, logits_of(served, tokens), atol=2e-4)
    for name, value in model_params(again).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(model_params(ours)[name]))


def test_qwen2_with_sliding_window_layers_is_refused_by_name(tmp_path):
    qwen2(tmp_path, tied=False)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "use_sliding_window": True, "sliding_window": 32}))
    with pytest.raises(ConfigError, match="use_sliding_window"):
        longrope_jax.load_model(tmp_path)
