"""The real SmolLM2-135M-Instruct (GGUF from PyPI) on real text (Emma), against transformers in fp32."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import longrope_jax
from longrope_jax.assets import smollm2_gguf_path
from longrope_jax.convert.hf import load_hf_dir, save_hf_dir
from longrope_jax.data.corpus import austen_novels
from longrope_jax.model.generate import generate
from longrope_jax.model.state import model_params

LENGTH = 1024


@pytest.fixture(scope="module")
def gguf():
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def ours(gguf):
    return longrope_jax.load_model(gguf)


@pytest.fixture(scope="module")
def tokens(gguf, ours):
    tokenizer = longrope_jax.load_tokenizer(gguf)
    ids = tokenizer.encode(austen_novels()["Emma"]).ids
    return np.asarray([[ours[1].bos_token_id] + ids[: LENGTH - 1]], np.int32)


@pytest.fixture(scope="module")
def reference(gguf):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def reference_logits(reference, tokens):
    with torch.no_grad():
        return reference(torch.tensor(tokens)).logits.numpy()


def test_config_is_smollm2(ours):
    _, cfg = ours
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (30, 9, 3, 64)
    assert cfg.tie_word_embeddings and cfg.rope.theta == 1e5 and cfg.rope.max_position_embeddings == 8192


def test_logits_match_transformers_on_1024_tokens_of_emma(ours, tokens, reference_logits):
    model, _ = ours
    logits = np.asarray(model(jnp.asarray(tokens)))
    diff = np.abs(logits - reference_logits).max()
    assert diff <= 1e-3, diff
    # The text is real English the model predicts well (this also fails if tokens or weights were garbage).
    nll = -np.take_along_axis(np.log(np.exp(logits[0, :-1] - logits[0, :-1].max(-1, keepdims=True)) /
                                     np.exp(logits[0, :-1] - logits[0, :-1].max(-1, keepdims=True)).sum(-1,
                                     keepdims=True)), tokens[0, 1:, None], -1)
    assert np.exp(nll.mean()) < 40


def test_greedy_continuation_matches_transformers(ours, tokens, reference):
    model, _ = ours
    prompt = tokens[:, :512]
    out = np.asarray(generate(model, jnp.asarray(prompt), 32))
    with torch.no_grad():
        expected = reference.generate(torch.tensor(prompt), max_new_tokens=32, do_sample=False,
                                      attention_mask=torch.ones_like(torch.tensor(prompt))).numpy()
    np.testing.assert_array_equal(out, expected)


def test_round_trip_gguf_ours_hf_ours_is_bit_exact(ours, gguf, tokens, reference_logits, tmp_path_factory):
    model, cfg = ours
    params = model_params(model)
    export = save_hf_dir(cfg, params, tmp_path_factory.mktemp("hf") / "smollm2",
                         tokenizer=longrope_jax.load_tokenizer(gguf))
    _, again = load_hf_dir(export)
    for key, value in params.items():
        np.testing.assert_array_equal(again[key], np.asarray(value), err_msg=key)
    # The export loads in transformers (no remote code) and reproduces the logits.
    exported = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = exported(torch.tensor(tokens)).logits.numpy()
    assert np.abs(logits - reference_logits).max() <= 1e-3
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    text = "Emma Woodhouse, handsome, clever, and rich, with a comfortable home"
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == \
        longrope_jax.load_tokenizer(export).encode(text).ids
