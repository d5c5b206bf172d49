"""`experiments.pretrain`'s library: BPE tokenizer, from-scratch training with validation, export, exact resume."""

import json

import ml_collections
import numpy as np
import pytest

import longrope_jax
from longrope_jax.data.documents import demo_texts
from longrope_jax.train import pretrain
from longrope_jax.train.trainer import Trainer

FIXTURE = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
               head_dim=8, rope_theta=10_000.0, native_length=32)


def section(**changes):
    values = dict(steps=12, batch_size=4, learning_rate=3e-3, warmup_steps=2, final_lr_fraction=0.1,
                  weight_decay=0.0, seed=0, eval_every=4, patience=10, validation_fraction=0.1, validation_windows=4)
    values.update(changes)
    return ml_collections.ConfigDict(values)


@pytest.fixture(scope="module")
def texts():
    austen = demo_texts("train")
    return {name: austen[name][:30_000] for name in ("Persuasion", "Sense & Sensibility")}, \
        {"Emma": demo_texts("held_out")["Emma"][:20_000]}


def test_pretraining_learns_exports_and_resumes_exactly(tmp_path, texts, monkeypatch):
    train, held = texts
    cfg = pretrain.fixture_model_config(FIXTURE, attention="reference")
    clean = pretrain.run_pretrain(cfg, section(), train, held, tmp_path / "clean", tmp_path / "export", log=lambda m: 0)
    history = [r["validation_nll"] for r in clean["history"]]
    assert len(history) == 3 and history == sorted(history, reverse=True) and history[-1] < history[0] - 0.1
    assert clean["best_step"] == 12 and clean["held_out_ppl"] < np.exp(history[0] + 1)
    # The export is a HF directory both loaders read, with the fixture's native length.
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["max_position_embeddings"] == 32 and config["vocab_size"] == 320
    model, loaded = longrope_jax.load_model(tmp_path / "export")
    tokenizer = longrope_jax.load_tokenizer(tmp_path / "export")
    assert tokenizer.token_to_id(pretrain.SPECIAL_TOKEN) == 0 and tokenizer.get_vocab_size() == 320
    assert tokenizer.decode(tokenizer.encode("Anne Elliot").ids) == "Anne Elliot"
    # Killed after its first evaluation, a rerun continues to the same validation losses.
    calls = {"n": 0}
    original = Trainer.run

    def killed(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run_pretrain(cfg, section(), train, held, tmp_path / "resumed", tmp_path / "e2", log=lambda m: 0)
    monkeypatch.setattr(Trainer, "run", original)
    resumed = pretrain.run_pretrain(cfg, section(), train, held, tmp_path / "resumed", tmp_path / "e2",
                                    log=lambda m: 0)
    assert [r["validation_nll"] for r in resumed["history"]] == pytest.approx(history, abs=1e-6)


def test_validation_is_held_back_from_training_and_patience_stops(tmp_path, texts):
    docs = {"a": np.arange(100), "b": np.arange(1000, 1050)}
    head, tail = pretrain.split_validation(docs, 0.1)
    for name in docs:
        assert np.array_equal(np.concatenate([head[name], tail[name]]), docs[name]) and len(tail[name]) >= 5
    train, held = texts
    cfg = pretrain.fixture_model_config(FIXTURE, attention="reference")
    # lr 0: validation never improves after the first evaluation, so patience 1 stops after the second.
    stopped = pretrain.run_pretrain(cfg, section(learning_rate=0.0, patience=1), train, held, tmp_path / "w",
                                    tmp_path / "x", log=lambda m: 0)
    assert stopped["steps_run"] == 8 and stopped["best_step"] == 4
