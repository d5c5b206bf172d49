"""Every shipped config loads, and the paper recipes point at a user checkpoint with a clear error if absent."""

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ["tiny", "smollm2_135m", "llama2_7b_2048k", "mistral_7b_2048k", "phi3_mini_128k",
           "llama3_8b_128k_longrope2"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.name == name.replace("smollm2_135m", "smollm2_135m")
    for section in ("model", "data", "eval", "search", "finetune", "pipeline"):
        assert section in config
    assert config.pipeline.final_target >= config.pipeline.first_target


def test_recipe_without_checkpoint_fails_clearly(tmp_path):
    import subprocess
    result = subprocess.run([sys.executable, "-m", "experiments.extend", "--config", "configs/llama2_7b_2048k.py",
                             "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "error: model path /path/to/Llama-2-7b-hf does not exist" in result.stderr
