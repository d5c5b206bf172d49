"""The served model is the scored one: a committed bench result, installed with `experiments.convert` and loaded
by transformers, gives the held-out perplexity the bench reported for it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import MINI_LLAMA

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = MINI_LLAMA


@pytest.mark.parametrize("name", ["mini_4x", "mini_8x"])
def test_transformers_serves_the_committed_bench_factors_with_their_scored_perplexity(tmp_path, name):
    sys.path.insert(0, str(ROOT))
    from configs.mini import get_config
    from longrope_jax.data.documents import random_windows
    from longrope_jax.data.sources import load_token_documents, text_source
    from longrope_jax.tokenizer import load_tokenizer

    result = ROOT / "experiments" / "results" / name
    summary = json.loads((result / "summary.json").read_text())
    target = summary["target_length"]
    done = subprocess.run([sys.executable, "-m", "experiments.convert", "--src", str(FIXTURE), "--dst",
                           str(tmp_path / "served"), "--format", "hf", "--rope_scaling",
                           str(result / "rope_scaling.json"), "--max_position_embeddings", str(target)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    config = get_config("bench")
    docs = load_token_documents(text_source(config.data, config.data.held_out_split), load_tokenizer(FIXTURE))
    windows, where = random_windows(docs, target, int(config.bench.held_out_windows), int(config.bench.held_out_seed),
                                    bool(config.data.add_bos), None)
    assert [f"{n}@{s}" for n, s in where] == summary["held_out_documents"]
    served = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "served"), dtype=torch.float32).eval()
    assert served.config.rope_scaling["rope_type"] == "longrope"
    nll = []
    with torch.no_grad():
        for window in windows:
            ids = torch.tensor(np.asarray(window)[None], dtype=torch.long)
            nll.append(float(served(ids, labels=ids).loss))
    served_ppl = float(np.exp(np.mean(nll)))
    assert served_ppl == pytest.approx(summary["held_out_perplexity"]["searched"], rel=2e-4)
