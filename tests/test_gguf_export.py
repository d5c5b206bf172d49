"""GGUF export: llama.cpp's LongRoPE representation, a bit-exact f32 round trip, quantised weights, clear refusals.

llama.cpp itself is compared in `benchmarks/llama_cpp_parity.py` (it needs a compiled llama.cpp); these tests pin
the file it reads: metadata keys, factor tensors, the q/k permutation and the tokenizer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from longrope_jax.convert.gguf import llama_cpp_permute
from longrope_jax.convert.gguf_export import _pre_tokenizer_name, save_gguf
from longrope_jax.convert.hf import params_to_hf
from longrope_jax.convert.rope_install import install_rope_scaling
from longrope_jax.errors import ConfigError
from longrope_jax.loading import load_params
from longrope_jax.tokenizer import byte_tokenizer, load_tokenizer
from conftest import FIXTURES, MINI_LLAMA

ROOT = Path(__file__).resolve().parents[1]
MINI = MINI_LLAMA
FACTORS_8X = ROOT / "experiments" / "results" / "mini_8x" / "rope_scaling.json"
PROSE = (FIXTURES / "pride_and_prejudice_ch1.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def mini_8x():
    cfg, params = load_params(MINI)
    return install_rope_scaling(cfg, FACTORS_8X, "gguf", 8 * cfg.rope.original_length), params


@pytest.fixture(scope="module")
def exported(mini_8x, tmp_path_factory) -> Path:
    cfg, params = mini_8x
    return save_gguf(cfg, params, tmp_path_factory.mktemp("gguf") / "mini_8x.gguf", tokenizer=load_tokenizer(MINI))


def _fields(path: Path) -> tuple[dict, dict]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


def test_f32_round_trip_is_bit_exact(mini_8x, exported: Path) -> None:
    cfg, params = mini_8x
    back_cfg, back = load_params(exported)
    assert sorted(back) == sorted(params)
    for name, value in params.items():
        np.testing.assert_array_equal(back[name], np.asarray(value), err_msg=name)
    # The rope spec comes back at llama.cpp's float32 precision, everything else exactly.
    rope, back_rope = cfg.rope, back_cfg.rope
    np.testing.assert_array_equal(np.float32(back_rope.long_factor), np.float32(rope.long_factor))
    np.testing.assert_array_equal(np.float32(back_rope.short_factor), np.float32(rope.short_factor))
    assert back_rope.attention_factor == pytest.approx(rope.attention_factor, rel=1e-7)
    same = dict(long_factor=rope.long_factor, short_factor=rope.short_factor, attention_factor=rope.attention_factor)
    assert back_rope.replace(**same) == rope
    assert back_cfg.replace(rope=rope) == cfg
    ids = load_tokenizer(MINI).encode(PROSE).ids
    assert load_tokenizer(exported).encode(PROSE).ids == ids


def test_longrope_is_written_the_way_llama_cpp_reads_it(mini_8x, exported: Path) -> None:
    cfg, params = mini_8x
    fields, tensors = _fields(exported)
    assert fields["general.architecture"] == "llama"
    assert fields["llama.rope.scaling.type"] == "longrope"
    assert fields["llama.context_length"] == 2048
    assert fields["llama.rope.scaling.original_context_length"] == 256
    assert fields["llama.rope.scaling.attn_factor"] == pytest.approx(np.float32(cfg.rope.attention_factor))
    # llama.cpp would divide every position by a scaling factor on top of the λ tensors.
    assert "llama.rope.scaling.factor" not in fields
    long_tensor = tensors["rope_factors_long.weight"]
    assert long_tensor.tensor_type.name == "F32" and long_tensor.data.shape == (cfg.rope.half_dim,)
    np.testing.assert_array_equal(long_tensor.data, np.float32(cfg.rope.long_factor))
    np.testing.assert_array_equal(tensors["rope_factors_short.weight"].data, np.float32(cfg.rope.short_factor))
    # q/k rows are in llama.cpp's interleaved order, so factor i meets HF pair (i, i + d/2).
    hf = dict(params_to_hf(cfg, params))
    q = np.asarray(tensors["blk.1.attn_q.weight"].data).reshape(hf["model.layers.1.self_attn.q_proj.weight"].shape)
    np.testing.assert_array_equal(q, llama_cpp_permute(hf["model.layers.1.self_attn.q_proj.weight"], cfg.num_heads))
    k = np.asarray(tensors["blk.1.attn_k.weight"].data).reshape(hf["model.layers.1.self_attn.k_proj.weight"].shape)
    np.testing.assert_array_equal(k, llama_cpp_permute(hf["model.layers.1.self_attn.k_proj.weight"], cfg.num_kv_heads))
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(fields["tokenizer.ggml.tokens"]) == cfg.vocab_size
    assert fields["tokenizer.ggml.token_type"][0] == 3  # <|endoftext|> is a control token


@pytest.mark.parametrize("outtype, tolerance, weight_type", [("f16", 1e-3, "F16"), ("q8_0", 1e-2, "Q8_0")])
def test_quantised_exports(mini_8x, exported: Path, tmp_path: Path, outtype: str, tolerance: float,
                           weight_type: str) -> None:
    cfg, params = mini_8x
    path = save_gguf(cfg, params, tmp_path / f"m_{outtype}.gguf", outtype=outtype)
    _, tensors = _fields(path)
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == weight_type
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert tensors["rope_factors_long.weight"].tensor_type.name == "F32"
    assert path.stat().st_size < exported.stat().st_size * (0.55 if outtype == "f16" else 0.3)
    _, back = load_params(path)
    for name, value in params.items():
        value = np.asarray(value)
        scale = float(np.max(np.abs(value)))
        assert float(np.max(np.abs(back[name] - value))) <= tolerance * scale, name
    np.testing.assert_array_equal(back["norm/weight"], np.asarray(params["norm/weight"]))


def test_plain_and_linear_rope(mini_8x, tmp_path: Path) -> None:
    cfg, params = mini_8x
    plain = cfg.replace(rope=cfg.rope.replace(rope_type="default", long_factor=None, short_factor=None,
                                              attention_factor=None, original_max_position_embeddings=None,
                                              max_position_embeddings=256))
    fields, tensors = _fields(save_gguf(plain, params, tmp_path / "plain.gguf"))
    assert "llama.rope.scaling.type" not in fields and "rope_factors_long.weight" not in tensors
    linear = plain.replace(rope=plain.rope.replace(rope_type="linear", factor=4.0, max_position_embeddings=1024))
    path = save_gguf(linear, params, tmp_path / "linear.gguf")
    fields, _ = _fields(path)
    assert fields["llama.rope.scaling.type"] == "linear" and fields["llama.rope.scaling.factor"] == 4.0
    assert load_params(path)[0].rope == linear.rope


def test_what_llama_cpp_cannot_express_is_refused_and_nothing_is_written(mini_8x, tmp_path: Path) -> None:
    cfg, params = mini_8x
    out = tmp_path / "x.gguf"
    with pytest.raises(ConfigError, match="n_hat=8.*--drop_n_hat"):
        save_gguf(cfg.replace(rope=cfg.rope.replace(n_hat=8)), params, out)
    with pytest.raises(ConfigError, match="'dynamic' has no llama.cpp equivalent"):
        dynamic = cfg.rope.replace(rope_type="dynamic", factor=8.0, long_factor=None, short_factor=None,
                                   attention_factor=None, original_max_position_embeddings=None)
        save_gguf(cfg.replace(rope=dynamic), params, out)
    with pytest.raises(ConfigError, match="'phi3'"):
        save_gguf(cfg.replace(architecture="phi3"), params, out)
    with pytest.raises(ConfigError, match="no llama.cpp name"):  # fails after the file was opened
        save_gguf(cfg.replace(vocab_size=256), params, out, tokenizer=byte_tokenizer())
    with pytest.raises(ConfigError, match="--outtype='q4'"):
        save_gguf(cfg, params, out, outtype="q4")
    assert list(tmp_path.iterdir()) == []


def test_pre_tokenizer_names_match_the_importer() -> None:
    from tokenizers import Regex, pre_tokenizers

    from longrope_jax.convert.gguf_tokenizer import _LLAMA3_SPLIT, _pre_tokenizer

    for name in ("gpt-2", "smollm", "llama-bpe"):  # the names llama.cpp's llama-vocab.cpp accepts
        assert _pre_tokenizer_name(json.loads(_pre_tokenizer(name).__getstate__())) == name
    split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    assert _pre_tokenizer_name(json.loads(split.__getstate__())) == "llama-bpe"


def test_cli_writes_gguf_and_refuses_n_hat(tmp_path: Path) -> None:
    def convert(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "experiments.convert", "--src", str(MINI), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    out = tmp_path / "mini.gguf"
    result = convert("--dst", str(out), "--format", "gguf", "--rope_scaling", str(FACTORS_8X),
                     "--max_position_embeddings", "2048", "--outtype", "q8_0")
    assert result.returncode == 0, result.stderr
    assert f"wrote gguf model (llama, 4 layers, rope longrope) to {out}" in result.stdout
    assert load_params(out)[0].rope.max_position_embeddings == 2048
    block = {**json.loads(FACTORS_8X.read_text()), "n_hat": 8}
    (tmp_path / "n_hat.json").write_text(json.dumps(block))
    for args, message in [
        (("--dst", str(tmp_path / "a.gguf"), "--format", "gguf", "--rope_scaling", str(tmp_path / "n_hat.json")),
         "n_hat=8"),
        (("--dst", str(tmp_path / "b"), "--format", "gguf"), "a GGUF export is one file"),
        (("--dst", str(tmp_path / "c"), "--format", "hf", "--outtype", "f16"), "applies to --format gguf only"),
    ]:
        result = convert(*args)
        assert result.returncode == 1 and result.stderr.startswith("error: ") and message in result.stderr, \
            result.stderr
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini.gguf", "n_hat.json"]
