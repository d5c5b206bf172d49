"""Passkey prompt layout, answer parsing, accuracy on a tiny model (and an oracle), needle grid heatmap."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from longrope_jax.errors import ConfigError
from longrope_jax.eval import passkey
from longrope_jax.eval.plots import plot_needle_heatmap
from longrope_jax.eval.passkey import (FILLER, NEEDLE, QUESTION, TASK, needle_grid, parse_first_integer,
                                       passkey_accuracy, passkey_prompt, score_continuation)
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.execution import Execution
from longrope_jax.model.transformer import init_model
from longrope_jax.rope import RopeSpec
from conftest import FIXTURES



@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A small byte-level BPE (GPT-2 style pre-tokenizer, like SmolLM2's), trained in milliseconds."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>"], show_progress=False)
    corpus = [TASK, " ".join(FILLER) * 3, NEEDLE.format(key=4242), QUESTION,
              (FIXTURES / "pride_and_prejudice_ch1.txt").read_text()]
    tok.train_from_iterator(corpus, trainer)
    return tok


def tiny_model(vocab: int, seed: int = 0):
    cfg = ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, rope=RopeSpec(head_dim=8, max_position_embeddings=64), bos_token_id=0,
                      execution=Execution(attention="blockwise", block_q=32, block_kv=32, loss_chunk=16))
    return init_model(cfg, seed)


def key_position(ids: np.ndarray, answer: np.ndarray) -> int:
    """First token index of the key's tokens in the prompt (the needle's first mention)."""
    n = len(answer)
    return next(i for i in range(len(ids) - n + 1) if np.array_equal(ids[i:i + n], answer))


@pytest.mark.parametrize("length", [512, 1500])
@pytest.mark.parametrize("depth", [0.2, 0.35, 0.5, 0.75, 0.9])  # 0.1 · 512 would sit inside the task text
def test_prompt_length_and_depth(tokenizer, length, depth):
    ids, answer = passkey_prompt(tokenizer, length, key=31337, depth=depth)
    assert ids.dtype == np.int32 and abs(len(ids) - length) <= 3
    assert abs(key_position(ids, answer) - depth * length) <= 0.02 * length
    # The token ids are exactly the encoding of the reference text (nothing spliced at token level).
    text = tokenizer.decode(ids.tolist())
    assert np.array_equal(tokenizer.encode(text).ids, ids)
    assert text.startswith(TASK + " The grass is green.") and text.endswith(QUESTION)
    assert text.count("The pass key is 31337. Remember it. 31337 is the pass key.") == 1
    assert tokenizer.decode(answer.tolist()) == " 31337"


def test_prompt_extreme_depths_clamp_to_haystack(tokenizer):
    task_tokens = len(tokenizer.encode(TASK).ids)
    ids, answer = passkey_prompt(tokenizer, 600, key=7, depth=0.0)
    text = tokenizer.decode(ids.tolist())
    assert text.startswith(TASK + " The pass key is 7.")  # right after the task description
    ids, answer = passkey_prompt(tokenizer, 600, key=7, depth=1.0)
    assert tokenizer.decode(ids.tolist()).endswith("7 is the pass key. " + QUESTION)  # right before the question
    assert key_position(ids, answer) > 600 - 40 and task_tokens < 600


def test_prompt_bos_seeded_draws_and_errors(tokenizer):
    ids, _ = passkey_prompt(tokenizer, 300, key=5, depth=0.5, bos_id=0)
    plain, _ = passkey_prompt(tokenizer, 300, key=5, depth=0.5)
    assert ids[0] == 0 and (ids == 0).sum() == 1 and abs(len(ids) - 300) <= 3 and 0 not in plain
    a = passkey_prompt(tokenizer, 300, rng=np.random.default_rng(3))
    b = passkey_prompt(tokenizer, 300, rng=np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and 1 <= int(tokenizer.decode(a[1].tolist())) <= 50000
    with pytest.raises(passkey.DataError, match="shorter than the passkey prompt"):
        passkey_prompt(tokenizer, 20, key=5, depth=0.5)
    with pytest.raises(passkey.ConfigError):
        passkey_prompt(tokenizer, 300, key=5, depth=1.5)


def test_parse_and_score():
    assert parse_first_integer("  12345.") == 12345
    assert parse_first_integer(" 42 is the pass key 17") == 42
    assert parse_first_integer(" the pass key.") is None
    assert parse_first_integer("") is None
    assert score_continuation(" 12345. Remember", 12345) == (12345, True)
    assert score_continuation(" 123456", 12345) == (123456, False)
    assert score_continuation(" unknown", 12345) == (None, False)


def test_accuracy_on_tiny_random_model(tokenizer):
    model = tiny_model(tokenizer.get_vocab_size())
    calls = []
    result = passkey_accuracy(model, tokenizer, None, 160, trials=3, seed=1, max_new_tokens=4,
                              depths=[0.2, 0.8], progress=lambda: calls.append(1), add_bos=True)
    assert len(calls) == 3 and result["trials"] == 3 and len(result["records"]) == 3
    assert 0.0 <= result["accuracy"] <= 1.0
    for record, depth in zip(result["records"], [0.2, 0.8, 0.2]):
        assert record["depth"] == depth and 1 <= record["key"] <= 50000
        assert record["answer"] is None or isinstance(record["answer"], int)
        assert record["correct"] == (record["answer"] == record["key"])
        assert abs(record["prompt_tokens"] - 160) <= 3
    again = passkey_accuracy(model, tokenizer, None, 160, trials=3, seed=1, max_new_tokens=4, depths=[0.2, 0.8],
                             add_bos=True)
    assert [r["key"] for r in again["records"]] == [r["key"] for r in result["records"]]  # seeded


def test_accuracy_resumes_from_saved_trials(tokenizer):
    # A killed run keeps its finished trials: resuming from them runs only the rest and ends with the same records.
    model = tiny_model(tokenizer.get_vocab_size())
    full = passkey_accuracy(model, tokenizer, None, 160, trials=3, seed=4, max_new_tokens=4, add_bos=True)
    saved = []
    resumed = passkey_accuracy(model, tokenizer, None, 160, trials=3, seed=4, max_new_tokens=4, add_bos=True,
                               done=full["records"][:1], on_trial=saved.append)
    assert resumed["records"] == full["records"] and resumed["accuracy"] == full["accuracy"]
    assert saved == full["records"][1:]  # only the two missing trials ran
    fewer = passkey_accuracy(model, tokenizer, None, 160, trials=2, seed=4, max_new_tokens=4, add_bos=True,
                             done=full["records"], on_trial=saved.append)
    assert fewer["records"] == full["records"][:2] and len(saved) == 2  # nothing ran: the saved prefix is kept
    forged = [dict(full["records"][0], key=full["records"][0]["key"] % 50000 + 1)]
    for bad in (forged, ["not a record"]):
        with pytest.raises(ConfigError, match="not drawn with seed 4"):
            passkey_accuracy(model, tokenizer, None, 160, trials=3, seed=4, max_new_tokens=4, add_bos=True,
                             done=bad)


def _oracle_generate(tokenizer, wrong_every: int = 0):
    """A fake `generate` that reads the key out of the prompt and answers it (wrongly on every n-th call)."""
    state = {"calls": 0, "ropes": []}

    def fake(model, prompt, max_new_tokens, temperature=0.0, rng=None, rope=None):
        state["calls"] += 1
        state["ropes"].append(rope)
        key = int(re.search(r"pass key is (\d+)", tokenizer.decode(np.asarray(prompt)[0].tolist())).group(1))
        if wrong_every and state["calls"] % wrong_every == 0:
            key += 1
        cont = tokenizer.encode(f" {key}. Remember").ids
        cont = (cont + cont)[:max_new_tokens]
        return jnp.concatenate([prompt, jnp.asarray([cont], jnp.int32)], axis=1)

    return fake, state


def test_accuracy_with_oracle_model(tokenizer, monkeypatch):
    model = tiny_model(tokenizer.get_vocab_size())
    fake, state = _oracle_generate(tokenizer)
    monkeypatch.setattr(passkey, "generate", fake)
    result = passkey_accuracy(model, tokenizer, None, 200, trials=5, seed=0, max_new_tokens=8)
    assert result["accuracy"] == 1.0 and all(r["answer"] == r["key"] for r in result["records"])
    # Rope fixed from prompt + max_new_tokens tokens (the model's own spec when spec is None).
    rope = state["ropes"][0]
    assert rope is not None and rope.inv_freq.shape == (4,)
    fake, _ = _oracle_generate(tokenizer, wrong_every=2)
    monkeypatch.setattr(passkey, "generate", fake)
    result = passkey_accuracy(model, tokenizer, None, 200, trials=4, seed=0)
    assert result["accuracy"] == 0.5 and [r["correct"] for r in result["records"]] == [True, False, True, False]


def test_needle_grid_and_heatmap(tokenizer, monkeypatch, tmp_path):
    model = tiny_model(tokenizer.get_vocab_size())
    fake, state = _oracle_generate(tokenizer, wrong_every=3)
    monkeypatch.setattr(passkey, "generate", fake)
    specs = []
    grid = needle_grid(model, tokenizer, lambda n: specs.append(n) or model.cfg.rope, [150, 250], [0.0, 0.5, 1.0],
                       trials_per_cell=3, seed=0)
    assert grid.shape == (2, 3) and specs == [150, 250] and state["calls"] == 18
    np.testing.assert_allclose(grid, 2 / 3)  # every third call is wrong: exactly one per 3-trial cell
    path = plot_needle_heatmap(grid, [150, 250], [0.0, 0.5, 1.0], tmp_path / "plots" / "needle.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:-4] == b"IEND" and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["needle.png"]  # no temp file left behind
    with pytest.raises(ValueError, match="does not match"):
        plot_needle_heatmap(grid, [150], [0.0, 0.5, 1.0], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_real_tokenizer_prompt():
    """SmolLM2's own tokenizer (digits split one per token): length and depth still hold."""
    import longrope_jax
    from longrope_jax.assets import smollm2_gguf_path
    gguf = smollm2_gguf_path()
    tok = longrope_jax.load_tokenizer(gguf)
    for length, depth in [(2048, 0.3), (4096, 0.85)]:
        ids, answer = passkey_prompt(tok, length, key=40321, depth=depth, bos_id=1)
        assert abs(len(ids) - length) <= 3 and ids[0] == 1 and (ids == 1).sum() == 1
        assert abs(key_position(ids, answer) - depth * length) <= 0.02 * length
        assert tok.decode(answer.tolist()).strip() == "40321"
