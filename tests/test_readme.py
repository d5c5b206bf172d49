"""The README's promises: its two commands exist as CI runs them, and its PyTorch snippet works on an export."""

import re
import subprocess
import sys
from pathlib import Path


from longrope_jax.convert.hf import save_hf_dir
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.state import model_params
from longrope_jax.model.transformer import init_model
from longrope_jax.rope import RopeSpec, longrope_spec
from longrope_jax.tokenizer import byte_tokenizer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_default_run_and_the_test_command():
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert "experiments.extend --config configs/smollm2_135m.py" in first_block[0]
    assert first_block[-1].endswith("# run the tests")
    assert (ROOT / ".ci" / "run").read_text().count("# run the tests") >= 1


def test_pytorch_snippet_runs_on_an_export(tmp_path):
    snippet = README.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) == 5
    base = RopeSpec(head_dim=8, max_position_embeddings=64)
    cfg = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, bos_token_id=1, eos_token_id=2,
                      rope=longrope_spec(base, [1.0, 1.5, 2.0, 4.0], [1.0, 1.0, 1.1, 1.2],
                                         max_position_embeddings=256))
    export = save_hf_dir(cfg, model_params(init_model(cfg)), tmp_path / "hf", tokenizer=byte_tokenizer())
    code = re.sub(r'path = ".*"', f'path = "{export}"', snippet)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("It is a truth")
