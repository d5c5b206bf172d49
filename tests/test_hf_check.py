"""The HF logit checker: our model vs transformers on an exported longrope checkpoint (short and long factors)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from longrope_jax.convert.hf import save_hf_dir
from longrope_jax.eval.hf_check import compare_with_transformers, format_report
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.execution import Execution
from longrope_jax.model.state import model_params
from longrope_jax.model.transformer import init_model
from longrope_jax.rope import RopeSpec, longrope_spec
from longrope_jax.tokenizer import byte_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _export(tmp_path: Path) -> Path:
    base = RopeSpec(head_dim=8, max_position_embeddings=64)
    rope = longrope_spec(base, [1.0, 1.5, 2.5, 4.0], [1.0, 1.0, 1.1, 1.2], max_position_embeddings=256)
    cfg = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, rope=rope,
                      bos_token_id=None, eos_token_id=None,
                      execution=Execution(attention="blockwise", block_q=32, block_kv=32))
    return save_hf_dir(cfg, model_params(init_model(cfg, seed=5)), tmp_path / "hf", tokenizer=byte_tokenizer())


def test_checker_agrees_on_short_and_long_factors(tmp_path):
    hf_dir = _export(tmp_path)
    tokens = np.random.default_rng(0).integers(0, 256, 300)
    report = compare_with_transformers(hf_dir, tokens, [48, 200], logit_tokens=100)
    assert report["logits"]["max_abs_diff"] < 1e-4 and report["logits"]["top1_agreement"] == 1.0
    for length in ("48", "200"):  # 48 <= 64 uses the short factors, 200 the long ones, in both implementations
        assert report["perplexity"][length]["relative_diff"] < 1e-5
    ppl = report["perplexity"]
    assert abs(ppl["48"]["ours"] - ppl["200"]["ours"]) > 1e-3  # really two different evaluations
    assert "| 200 |" in format_report(report)


def test_cli_checks_on_real_text_and_rejects_a_non_hf_dir(tmp_path):
    hf_dir = _export(tmp_path)
    cmd = [sys.executable, "-m", "experiments.check_hf", "--hf-dir", str(hf_dir), "--lengths", "64,200"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "check_hf.json").read_text())
    assert report["document"] == "Emma" and report["perplexity"]["200"]["relative_diff"] < 1e-5
    bad = subprocess.run([*cmd[:4], str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "not a Hugging Face model directory" in bad.stderr
