"""`python -m experiments.convert`: GGUF / HF / Orbax in, HF / Orbax out, clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import longrope_jax
from longrope_jax.assets import smollm2_gguf_path
from longrope_jax.convert.hf import save_hf_dir
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.state import model_params
from longrope_jax.model.transformer import init_model
from longrope_jax.rope import RopeSpec

ROOT = Path(__file__).resolve().parents[1]


def convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.convert", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_gguf_to_orbax_keeps_weights_and_tokenizer(tmp_path):
    gguf = smollm2_gguf_path()
    result = convert("--src", str(gguf), "--dst", str(tmp_path / "orbax"), "--format", "orbax")
    assert result.returncode == 0, result.stderr
    assert "wrote orbax model (llama, 30 layers" in result.stdout
    ours, _ = longrope_jax.load_model(gguf)
    again, cfg = longrope_jax.load_model(tmp_path / "orbax")
    tokens = jnp.asarray([[1, 504, 3458, 314, 253, 2351]])
    np.testing.assert_array_equal(np.asarray(again(tokens)), np.asarray(ours(tokens)))
    text = "Emma Woodhouse, handsome, clever, and rich"
    assert longrope_jax.load_tokenizer(tmp_path / "orbax").encode(text).ids == \
        longrope_jax.load_tokenizer(gguf).encode(text).ids


def test_hf_to_hf_installs_rope_scaling_and_rejects_bad_input(tmp_path):
    cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, rope=RopeSpec(head_dim=8, max_position_embeddings=64))
    save_hf_dir(cfg, model_params(init_model(cfg)), tmp_path / "src")
    block = {"rope_type": "longrope", "long_factor": [1.0, 2.0, 3.0, 4.0], "short_factor": [1.0] * 4,
             "original_max_position_embeddings": 64}
    (tmp_path / "rope.json").write_text(json.dumps(block))
    result = convert("--src", str(tmp_path / "src"), "--dst", str(tmp_path / "out"), "--format", "hf",
                     "--rope_scaling", str(tmp_path / "rope.json"), "--max_position_embeddings", "256")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["max_position_embeddings"] == 256
    assert config["rope_scaling"]["long_factor"] == block["long_factor"]
    assert config["rope_scaling"]["attention_factor"] > 1.0
    # Bad input: one clear line, exit status 1, nothing written.
    result = convert("--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "x"), "--format", "hf")
    assert result.returncode == 1 and result.stderr.startswith("error: model path") and "Traceback" not in result.stderr
    (tmp_path / "rope.json").write_text(json.dumps({**block, "long_factor": [4.0, 3.0, 2.0, 1.0]}))
    result = convert("--src", str(tmp_path / "src"), "--dst", str(tmp_path / "y"), "--format", "hf",
                     "--rope_scaling", str(tmp_path / "rope.json"))
    assert result.returncode == 1 and "monotone" in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_exports_replace_old_ones_whole_and_are_readable_by_others(tmp_path):
    from longrope_jax.checkpoint import save_model_dir

    cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, rope=RopeSpec(head_dim=8, max_position_embeddings=64))
    first, second = (model_params(init_model(cfg, seed=s)) for s in (0, 1))

    class BrokenTokenizer:
        def save(self, path):
            raise OSError("disk full")

    for save in (save_hf_dir, save_model_dir):
        out = tmp_path / save.__name__
        save(cfg, first, out)
        save(cfg, second, out)  # overwrite: the second model, whole
        loaded = longrope_jax.load_model(out)[0]
        tokens = jnp.asarray([[1, 2, 3]])
        np.testing.assert_array_equal(np.asarray(loaded(tokens)), np.asarray(init_model(cfg, seed=1)(tokens)))
        assert all(f.stat().st_mode & 0o444 == 0o444 for f in [out, *out.rglob("*")])  # readable by all
        assert all(d.stat().st_mode & 0o111 == 0o111 for d in [out, *out.rglob("*")] if d.is_dir())
        if save is save_model_dir:  # a failure while writing leaves the old model as it was, and no debris
            with pytest.raises(OSError, match="disk full"):
                save(cfg, first, out, tokenizer=BrokenTokenizer())
            np.testing.assert_array_equal(np.asarray(longrope_jax.load_model(out)[0](tokens)),
                                          np.asarray(loaded(tokens)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["save_hf_dir", "save_model_dir"]


def test_rope_scaling_forms_n_hat_and_context_length(tmp_path):
    """A CSV or bare long_factor installs; n̂ > 0 is refused for hf unless dropped on purpose; bad lengths fail."""
    cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, rope=RopeSpec(head_dim=8, max_position_embeddings=64))
    save_hf_dir(cfg, model_params(init_model(cfg)), tmp_path / "src")
    (tmp_path / "f.csv").write_text("1.0\n1.5\n2.0\n4.0\n")
    (tmp_path / "bare.json").write_text(json.dumps({"long_factor": [1.0, 1.5, 2.0, 4.0]}))
    for name in ("f.csv", "bare.json"):
        result = convert("--src", str(tmp_path / "src"), "--dst", str(tmp_path / name), "--format", "hf",
                         "--rope_scaling", str(tmp_path / name), "--max_position_embeddings", "256")
        assert result.returncode == 0, result.stderr
        block = json.loads((tmp_path / name / "config.json").read_text())["rope_scaling"]
        assert block["short_factor"] == [1.0] * 4 and block["original_max_position_embeddings"] == 64
    (tmp_path / "nhat.json").write_text(json.dumps({"long_factor": [1.0, 1.5, 2.0, 4.0], "n_hat": 8}))
    args = ("--src", str(tmp_path / "src"), "--rope_scaling", str(tmp_path / "nhat.json"),
            "--max_position_embeddings", "256")
    result = convert(*args, "--dst", str(tmp_path / "refused"), "--format", "hf")
    assert result.returncode == 1 and "n_hat=8" in result.stderr and "--drop_n_hat" in result.stderr
    assert not (tmp_path / "refused").exists() and "Traceback" not in result.stderr
    assert convert(*args, "--dst", str(tmp_path / "dropped"), "--format", "hf", "--drop_n_hat").returncode == 0
    assert "n_hat" not in json.loads((tmp_path / "dropped" / "config.json").read_text())["rope_scaling"]
    assert convert(*args, "--dst", str(tmp_path / "kept"), "--format", "orbax").returncode == 0
    assert longrope_jax.load_model(tmp_path / "kept")[1].rope.n_hat == 8
    for bad in ("0", "32"):
        result = convert("--src", str(tmp_path / "src"), "--dst", str(tmp_path / "bad"), "--format", "hf",
                         "--rope_scaling", str(tmp_path / "f.csv"), "--max_position_embeddings", bad)
        assert result.returncode == 1 and result.stderr.startswith("error: --max_position_embeddings"), result.stderr
