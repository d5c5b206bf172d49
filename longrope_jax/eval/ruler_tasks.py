"""RULER's task generators (`longrope_jax.eval.ruler` is the interface), one function per task kind.

Each takes the full template (chat template + task template + answer prefix), a token counter, the target length,
the sample count, the seed, the generation budget and the task's arguments, and returns [(prompt with answer
prefix, reference strings, tokens incl. the generation budget)]. As in RULER, one `random.Random(seed)` (and a
numpy RandomState for the values RULER draws with numpy) drives everything in order, the haystack size is found
once by binary search, and a sample that overflows is regenerated with a smaller haystack.
"""

from __future__ import annotations

import functools
import math
import random
import re
import string
import uuid
from typing import Any, Callable

import numpy as np

from longrope_jax.errors import ConfigError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
DEPTHS = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]
ESSAY_SUBSTITUTE = ("Sense & Sensibility", "Persuasion")  # train-split Austen, for Paul Graham's essays

Sample = tuple[str, list[str], int]
Counter = Callable[[str], int]


def singular(text: str) -> str:
    """RULER's rewrite of the niah wording for a single needle value."""
    return (text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")
            .replace("{type_needle_v}", "{type_needle_v_singular}"))


@functools.lru_cache(maxsize=None)
def _wonderwords(name: str) -> tuple[str, ...]:
    from wonderwords import random_word
    return tuple(random_word._get_words_from_text_file(name))


@functools.lru_cache(maxsize=None)
def needle_words() -> tuple[str, ...]:
    """RULER's needle keys: every adjective-noun pair of wonderwords' lists, sorted."""
    return tuple(sorted({f"{a}-{n}" for a in _wonderwords("adjectivelist.txt") for n in _wonderwords("nounlist.txt")}))


@functools.lru_cache(maxsize=None)
def essay_words() -> tuple[str, ...]:
    from longrope_jax.data.documents import demo_texts
    texts = demo_texts("train")
    return tuple(re.sub(r"\s+", " ", " ".join(texts[name] for name in ESSAY_SUBSTITUTE)).split(" "))


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _random_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "words":
        return rng.choice(needle_words())
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _binary_search(make: Callable[[int], str], count: Counter, limit: int, incremental: int, extra: int,
                   factor: float = 3.0, estimate_at: int = 0) -> int:
    """The largest haystack size whose prompt + `extra` tokens fit `limit` (RULER's search: the upper bound is
    `factor` × the size the tokens per unit at `estimate_at` units (default `incremental`) predict)."""
    estimate_at = estimate_at or incremental
    per_unit = count(make(estimate_at)) / estimate_at
    low, high = incremental, max(int(limit / per_unit * factor), incremental * 2)
    best = None
    while low <= high:
        mid = (low + high) // 2
        if count(make(mid)) + extra <= limit:
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best if best is not None else incremental


def _fit(make: Callable[[int], tuple[str, list[str]]], count: Counter, size: int, incremental: int, limit: int,
         extra: int) -> Sample:
    while True:
        text, outputs = make(size)
        tokens = count(text) + extra
        if tokens <= limit:
            return text, outputs, tokens
        if size <= incremental:
            raise ConfigError(f"a RULER prompt does not fit {limit} tokens even with the smallest haystack; use a "
                              f"longer length")
        size -= incremental


def niah(template: str, count: Counter, length: int, num_samples: int, seed: int, to_generate: int,
         args: dict[str, Any]) -> list[Sample]:
    rng = random.Random(seed)
    num_keys = max(args["keys"], args["queries"])
    kind_v = args["value"]
    singular_v = kind_v[:-1]
    essay = essay_words() if args["haystack"] == "essay" else ()

    def make(num_haystack: int) -> tuple[str, list[str]]:
        keys, values, needles = [], [], []
        for _ in range(num_keys):
            keys.append(_random_value(rng, args["key"]))
            values.append([])
            for _ in range(args["values"]):
                values[-1].append(_random_value(rng, kind_v))
                needles.append(NEEDLE.format(type_needle_v=kind_v, key=keys[-1], value=values[-1][-1]))
        random.Random(seed).shuffle(needles)
        if args["haystack"] == "essay":
            words = essay[:num_haystack] if num_haystack <= len(essay) else \
                (essay * math.ceil(num_haystack / len(essay)))[:num_haystack]
            sentences = _sentences(" ".join(words))
            cuts = [0] + sorted(int(len(sentences) * d / 100) for d in rng.sample(DEPTHS, len(needles))) + \
                [len(sentences)]
            pieces = []
            for i in range(1, len(cuts)):
                pieces.append(" ".join(sentences[cuts[i - 1]:cuts[i]]))
                if i - 1 < len(needles):
                    pieces.append(needles[i - 1])
            context = " ".join(pieces)
        else:
            if args["haystack"] == "noise":
                sentences = [NOISE] * num_haystack
            else:  # other needles as the haystack
                sentences = [NEEDLE.format(type_needle_v=kind_v, key=_random_value(rng, args["key"]),
                                           value=_random_value(rng, kind_v)) for _ in range(num_haystack)]
            for index, needle in zip(sorted(rng.sample(range(num_haystack), len(needles)), reverse=True), needles):
                sentences.insert(index, needle)
            context = "\n".join(sentences)
        chosen = rng.sample(range(num_keys), args["queries"])
        queries = [keys[i] for i in chosen]
        answers = [a for i in chosen for a in values[i]]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        text = template.format(type_needle_v=kind_v, type_needle_v_singular=singular_v, context=context, query=query)
        return text, answers

    incremental = 500 if args["haystack"] == "essay" else (5 if length < 4096 else 25)
    size = _binary_search(lambda n: make(n)[0], count, length, incremental, to_generate)
    return [_fit(make, count, size, incremental, length, to_generate) for _ in range(num_samples)]


def _chains(rng: random.Random, values: np.random.RandomState, num_chains: int, num_hops: int, icl: bool
            ) -> tuple[list[str], list[list[str]]]:
    k = 3 if icl else 5
    num_hops = min(10, num_hops) if icl else num_hops
    names = ["".join(rng.choices(string.ascii_uppercase, k=k)) for _ in range((num_hops + 1) * num_chains)]
    while len(set(names)) < num_chains * (num_hops + 1):
        names.append("".join(rng.choices(string.ascii_uppercase, k=k)))
    chains, chain_names = [], []
    for i in range(0, len(names), num_hops + 1):
        these = names[i:i + num_hops + 1]
        chain_names.append(these)
        first = "12345" if icl else str(values.randint(10000, 99999))
        chains.append([f"VAR {these[0]} = {first}"] +
                      [f"VAR {these[j + 1]} = VAR {these[j]} " for j in range(num_hops)])
    return chain_names, chains


def variable_tracking(template: str, count: Counter, length: int, num_samples: int, seed: int, to_generate: int,
                      args: dict[str, Any]) -> list[Sample]:
    from longrope_jax.eval.ruler import TEMPLATES

    rng, values = random.Random(seed), np.random.RandomState(seed)
    hops, num_chains = args["hops"], args["chains"]
    bare = "".join(TEMPLATES["variable_tracking"][:2])

    def make_with(num_noises: int, full: str, icl: bool) -> tuple[str, list[str]]:
        names, chains = _chains(rng, values, num_chains, hops, icl)
        value = chains[0][0].split("=")[-1].strip()
        sentences = [NOISE] * num_noises
        for chain in chains:
            positions = sorted(rng.sample(range(len(sentences)), len(chain)))
            for j, position in enumerate(positions):
                sentences.insert(position + j, chain[j])
        context = "\n".join(sentences).replace(". \n", ".\n")
        return full.format(context=context, query=value, num_v=hops + 1), names[0]

    # The in-context example: 500 tokens, three-letter names, value 12345, the bare task template.
    example_size = _binary_search(lambda n: make_with(n, bare, True)[0], count, 500, 5, 0)
    try:
        example_text, example_names = _fit(lambda n: make_with(n, bare, True), count, example_size, 5, 500, 0)[:2]
    except ConfigError:
        raise ConfigError("vt's in-context example does not fit RULER's 500 tokens with this tokenizer (a byte-level "
                          "one?); leave vt out of eval.ruler_tasks for this model") from None
    example = example_text + " " + " ".join(example_names) + "\n"
    example_tokens = count(example)

    def randomized_example() -> str:
        out = example
        for name in example.strip().split()[-(hops + 1):]:
            out = out.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
        return out.replace("12345", str(values.randint(10000, 99999)))

    def make(num_noises: int) -> tuple[str, list[str]]:
        text, names = make_with(num_noises, template, False)
        cut = text.index(TEMPLATES["variable_tracking"][0][:20])
        return text[:cut] + randomized_example() + "\n" + text[cut:], names

    incremental = 5 if length < 4096 else 10
    size = _binary_search(lambda n: make_with(n, template, False)[0], count, length, incremental,
                          example_tokens + to_generate)
    return [_fit(make, count, size, incremental, length, to_generate) for _ in range(num_samples)]


@functools.lru_cache(maxsize=None)
def _common_word_list(seed: int) -> tuple[str, ...]:
    words = sorted(set(_wonderwords("nounlist.txt") + _wonderwords("adjectivelist.txt") +
                       _wonderwords("verblist.txt")))
    random.Random(seed).shuffle(words)
    return tuple(words)


def common_words_extraction(template: str, count: Counter, length: int, num_samples: int, seed: int,
                            to_generate: int, args: dict[str, Any]) -> list[Sample]:
    rng = random.Random(seed)
    words = _common_word_list(seed)

    def example(num_words: int, common_repeats: int, uncommon_repeats: int, common_nums: int
                ) -> tuple[str, list[str]]:
        pool = words if num_words <= len(words) else needle_words()
        chosen = rng.sample(pool, num_words)
        common, uncommon = chosen[:common_nums], chosen[common_nums:]
        listed = common * int(common_repeats) + uncommon * int(uncommon_repeats)
        random.Random(seed).shuffle(listed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), common

    num_cw = args["num_cw"]

    def make(num_words: int) -> tuple[str, list[str]]:
        if length < 4096:
            shots = [example(20, 3, 1, num_cw)]
            context, answer = example(num_words, 6, 1, num_cw)
        else:
            shots = [example(40, 10, 3, num_cw)]
            context, answer = example(num_words, args["freq_cw"], args["freq_ucw"], num_cw)
        shot_text = "\n".join(template.format(num_cw=num_cw, context=c, query="") + " " +
                              " ".join(f"{i + 1}. {w}" for i, w in enumerate(a)) for c, a in shots)
        return shot_text + "\n" + template.format(num_cw=num_cw, context=context, query=""), answer

    size = _binary_search(lambda n: make(n)[0], count, length, 10, to_generate, factor=2.0, estimate_at=4096)
    return [_fit(make, count, size, 10, length, to_generate) for _ in range(num_samples)]


def _zeta(alpha: float, terms: int = 100_000) -> float:
    k = np.arange(1, terms + 1, dtype=np.float64)
    return float(np.sum(k ** -alpha) + terms ** (1 - alpha) / (alpha - 1))  # tail by the integral


def freq_words_extraction(template: str, count: Counter, length: int, num_samples: int, seed: int,
                          to_generate: int, args: dict[str, Any]) -> list[Sample]:
    rng = random.Random(seed)
    limit = length - to_generate
    vocab_size, incremental, word_len = limit // 50, limit // 32, args["coded_wordlen"]
    alpha = float(args["alpha"])

    def sample(num_words: int) -> tuple[str, list[str], int]:
        vocab = ["".join(rng.choices(string.ascii_lowercase, k=word_len)) for _ in range(vocab_size)]
        while len(set(vocab)) < vocab_size:
            vocab.append("".join(rng.choices(string.ascii_lowercase, k=word_len)))
        vocab = sorted(set(vocab))
        random.Random(seed).shuffle(vocab)
        vocab[0] = "..."

        def text_of(n: int) -> tuple[str, list[str]]:
            counts = n * np.arange(1, len(vocab) + 1, dtype=np.float64) ** -alpha / _zeta(alpha)
            words = [w for w, c in zip(vocab, counts) for _ in range(int(c))]
            random.Random(seed).shuffle(words)
            return template.format(context=" ".join(words), query=""), vocab[1:4]

        if num_words > 0:
            text, answer = text_of(num_words)
            while count(text) > limit and num_words > incremental:
                num_words -= incremental
                text, answer = text_of(num_words)
        else:
            num_words = limit // word_len
            text, answer = text_of(num_words)
            while count(text) < limit:
                num_words += incremental
                text, answer = text_of(num_words)
            num_words -= incremental
        text, answer = text_of(num_words)
        return text, answer, num_words

    size = sample(-1)[2]
    out = []
    for _ in range(num_samples):
        text, answer, _ = sample(size)
        out.append((text, answer, count(text) + to_generate))
    return out
