"""Every shipped config loads, and the paper recipes point at a user checkpoint with a clear error if absent."""

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ["tiny", "smollm2_135m", "mini", "mini_pretrain", "llama2_7b_2048k", "mistral_7b_2048k", "phi3_mini_128k",
           "llama3_8b_128k_longrope2"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.name == name
    for section in ("model", "data", "eval", "search", "finetune", "pipeline"):
        assert section in config
    assert config.pipeline.final_target >= config.pipeline.first_target


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in ("tiny", "smollm2_135m", "mini", "mini_pretrain")])
def test_recipe_reads_pg19_records_through_its_data_config(name):
    import tensorflow_datasets as tfds

    from longrope_jax.data.sources import text_source

    config = importlib.import_module(f"configs.{name}").get_config()
    opened = []

    def fake_pg19(builder, split, *args, **kwargs):  # pg19's fields: book_text, short_book_title (bytes)
        opened.append((builder, split))
        return [{"book_text": b"It is a truth universally acknowledged.", "short_book_title": b"Book"}]

    with tfds.testing.mock_data(as_data_source_fn=fake_pg19):
        for split in (config.data.train_split, config.data.search_split, config.data.held_out_split):
            assert text_source(config.data, split)[0] == {"name": "Book",
                                                          "text": "It is a truth universally acknowledged."}
    assert [s for _, s in opened] == ["train", "validation", "test"]


def test_recipe_without_checkpoint_fails_clearly(tmp_path):
    import subprocess
    result = subprocess.run([sys.executable, "-m", "experiments.extend", "--config", "configs/llama2_7b_2048k.py",
                             "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "error: model path /path/to/Llama-2-7b-hf does not exist" in result.stderr
