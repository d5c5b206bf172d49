"""Needle-driven perplexity: sample layout (answer last, exact length, one BOS, all texts) and NLL parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from longrope_jax.errors import ConfigError, DataError
from longrope_jax.eval.methods import method_spec
from longrope_jax.eval.needle_ppl import NEEDLE, QUESTION, NeedleBatch, needle_documents, needle_nll
from longrope_jax.eval.perplexity import spec_ropes
from longrope_jax.model.config import ModelConfig
from longrope_jax.model.execution import Execution
from longrope_jax.model.transformer import init_model
from longrope_jax.rope import RopeSpec, rope_inputs
from conftest import FIXTURES

BOS = 0


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Three distinct texts: the chapter's thirds, split at paragraph breaks."""
    paragraphs = (FIXTURES / "pride_and_prejudice_ch1.txt").read_text().split("\n\n")
    third = len(paragraphs) // 3
    return ["\n\n".join(paragraphs[:third]), "\n\n".join(paragraphs[third:2 * third]),
            "\n\n".join(paragraphs[2 * third:])]


@pytest.fixture(scope="module")
def tokenizer(texts) -> Tokenizer:
    """A small byte-level BPE (GPT-2 style pre-tokenizer, like SmolLM2's), trained in milliseconds."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>"], show_progress=False)
    tok.train_from_iterator([*texts, NEEDLE.format(n=1234567), QUESTION], trainer)
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    cfg = ModelConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=48, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, rope=RopeSpec(head_dim=8, max_position_embeddings=32),
                      bos_token_id=BOS,
                      execution=Execution(attention="blockwise", block_q=16, block_kv=16, loss_chunk=5))
    return init_model(cfg, seed=3)


def test_documents_layout(tokenizer, texts):
    length, depths = 96, (0.2, 0.5, 0.8)
    batch = needle_documents(tokenizer, texts, length, count=9, depths=depths, seed=0, bos_id=BOS)
    assert isinstance(batch, NeedleBatch)
    assert batch.tokens.shape == batch.loss_mask.shape == (9, length)
    assert batch.tokens.dtype == np.int32 and batch.loss_mask.dtype == bool
    encoded = [np.asarray(tokenizer.encode(t).ids) for t in texts]
    for tokens, mask, number, depth, (t, start), needle_at in zip(batch.tokens, batch.loss_mask, batch.numbers,
                                                                   batch.depths, batch.sources, batch.needle_starts):
        assert tokens[0] == BOS and (tokens == BOS).sum() == 1  # exactly one BOS
        # The answer is the last tokens and the mask covers exactly its digits.
        count = int(mask.sum())
        assert mask[length - count:].all() and not mask[:length - count].any()
        assert tokenizer.decode(tokens[mask].tolist()).strip() == str(number) and len(str(number)) == 7
        assert tokenizer.decode(tokens[mask][:1].tolist()).strip()  # a lone space token is not an answer token
        text = tokenizer.decode(tokens.tolist())
        assert text.endswith(f" {QUESTION} {number}")
        # The needle sits once, near the requested depth of the haystack.
        needle = tokenizer.encode(" " + NEEDLE.format(n=number)).ids
        assert np.array_equal(tokens[needle_at:needle_at + len(needle)], needle)
        assert text.count(NEEDLE.format(n=number)) == 1
        room = length - 1 - len(needle) - len(tokenizer.encode(f" {QUESTION} {number}").ids)
        assert abs((needle_at - 1) - depth * room) <= 32
        # The haystack is a real window of text t, split around the needle.
        haystack = np.concatenate([tokens[1:needle_at], tokens[needle_at + len(needle):needle_at + len(needle) +
                                                                   room - (needle_at - 1)]])
        assert np.array_equal(haystack, encoded[t][start:start + room])
    # Samples rotate over every text, and the first 9 cover every (text, depth) pair.
    assert sorted(batch.sources[:, 0].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert {(int(t), float(d)) for (t, _), d in zip(batch.sources, batch.depths)} == \
        {(t, d) for t in range(3) for d in depths}


def test_documents_without_bos_seeded_and_errors(tokenizer, texts):
    a = needle_documents(tokenizer, texts, 80, count=4, depths=(0.5,), seed=7)
    b = needle_documents(tokenizer, texts, 80, count=4, depths=(0.5,), seed=7)
    assert np.array_equal(a.tokens, b.tokens) and not (a.tokens == BOS).any()
    assert len(set(a.numbers.tolist())) == 4
    # A BOS string inside a text is dropped, so it cannot become a second BOS.
    c = needle_documents(tokenizer, ["<s>" + texts[0]], 80, count=3, seed=1, bos_id=BOS)
    assert ((c.tokens == BOS).sum(axis=1) == 1).all()
    with pytest.raises(DataError, match="haystack tokens"):
        needle_documents(tokenizer, [texts[0], "Too short."], 80, count=2)
    with pytest.raises(DataError, match="no room"):
        needle_documents(tokenizer, texts, 20, count=1)
    with pytest.raises(ConfigError):
        needle_documents(tokenizer, [], 80, count=1)


def _full_logits_nll(model, batch: NeedleBatch, rope) -> np.ndarray:
    tokens = jnp.asarray(batch.tokens)
    logits = model(tokens[:, :-1], rope=rope)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
    mask = batch.loss_mask[:, 1:]
    return (np.asarray(nll) * mask).sum(1) / mask.sum(1)


def test_needle_nll_candidates_and_full_logits(model, tokenizer, texts):
    length = 72
    batch = needle_documents(tokenizer, texts, length, count=3, depths=(0.3, 0.7), seed=2, bos_id=BOS)
    base = model.cfg.rope
    specs = [method_spec(base, m, length) for m in ("none", "pi", "yarn")]
    nll = needle_nll(model, batch, spec_ropes(specs, length))
    assert nll.shape == (3, 3) and nll.dtype == np.float32 and np.isfinite(nll).all()
    for c, spec in enumerate(specs):
        single = needle_nll(model, batch, rope_inputs(spec, length))  # unstacked -> C = 1
        np.testing.assert_allclose(nll[c], single[0], atol=1e-5)
        np.testing.assert_allclose(nll[c], _full_logits_nll(model, batch, rope_inputs(spec, length)), atol=1e-5)
    assert not np.allclose(nll[0], nll[1])  # the candidates really differ


def test_needle_nll_rejects_bad_masks(model, tokenizer, texts):
    batch = needle_documents(tokenizer, texts, 64, count=1, seed=0)
    rope = rope_inputs(model.cfg.rope, 64)
    with pytest.raises(ConfigError):
        needle_nll(model, NeedleBatch(batch.tokens, np.zeros_like(batch.loss_mask), batch.numbers, batch.depths,
                                      batch.sources, batch.needle_starts), rope)


def test_search_needle_fitness_runs_the_head_on_the_answer_span_only_and_matches_full_logits(model, tokenizer,
                                                                                              texts):
    """The search's needle-driven fitness (`FitnessEvaluator` with a loss mask) scores what full logits give, with
    the LM head over the span from the earliest answer token only."""
    from longrope_jax.rope import default_inv_freq, longrope_spec
    from longrope_jax.search.fitness import FitnessEvaluator
    from longrope_jax.search.space import SearchSpace

    length = 72
    batch = needle_documents(tokenizer, texts, length, count=2, depths=(0.3, 0.7), seed=2, bos_id=BOS)
    base = model.cfg.rope
    space = SearchSpace("dim_mono", base.half_dim, 2.0)
    evaluator = FitnessEvaluator(model, batch.tokens, space, 1.0, default_inv_freq(base.theta, base.rotary_dim), 2,
                                 racing=False, loss_mask=batch.loss_mask)
    first_answer = int(batch.loss_mask.argmax(axis=1).min())
    assert evaluator.span == length - first_answer < length - 1  # the haystack before it gets no logits
    candidate = space.project(np.linspace(1.0, 2.0, base.half_dim))
    scores = evaluator._score_items([(candidate, 0), (candidate, 1)])
    spec = longrope_spec(base, candidate.array.tolist(), max_position_embeddings=length, attention_factor=1.0)
    np.testing.assert_allclose(scores, _full_logits_nll(model, batch, rope_inputs(spec, length)), atol=1e-5)
