"""RULER-lite: NVIDIA RULER's synthetic long-context tasks, generated and scored as RULER does.

  samples = generate("niah_single_1", tokenizer, 16384, num_samples=5, seed=42, template="smollm2")
  score("niah_single_1", predictions, [s["outputs"] for s in samples])  # 0-100

Each sample is {"index", "input" (the prompt, chat template applied, without the answer prefix), "answer_prefix",
"outputs" (reference strings), "max_new_tokens", "length" (prompt + answer prefix tokens + max_new_tokens)}; the
model is prompted with input + answer_prefix and generates at most max_new_tokens. The task arguments, task
templates, answer prefixes, generation lengths, needle format, depths, binary search of the haystack size and the
metrics follow RULER (github.com/NVIDIA/RULER, scripts/synthetic.yaml, scripts/data/synthetic/*, commit c3f5e3b),
with these substitutes:
  - the essay haystack is the train split's Austen novels (Sense & Sensibility, Persuasion) instead of Paul
    Graham's essays, which we cannot ship; results name it "austen" wherever they are shown;
  - sentences are split with a punctuation rule instead of nltk's punkt;
  - cwe draws from wonderwords' nouns, adjectives and verbs (RULER's primary list) and, past their 8,166 words,
    from adjective-noun pairs instead of RULER's english_words.json;
  - the singular rewrite for one needle value ("Some" -> "A", "are" -> "is", ...) applies to the task template
    and answer prefix only, not to a chat template (SmolLM2's "You are a helpful ..." would become "You is").
The QA tasks (qa_1 SQuAD, qa_2 HotpotQA) need datasets we cannot ship and are left out.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from longrope_jax.errors import ConfigError

# scripts/synthetic.yaml
TASKS: dict[str, dict[str, Any]] = {
    "niah_single_1": dict(kind="niah", haystack="noise", key="words", value="numbers", keys=1, values=1, queries=1),
    "niah_single_2": dict(kind="niah", haystack="essay", key="words", value="numbers", keys=1, values=1, queries=1),
    "niah_single_3": dict(kind="niah", haystack="essay", key="words", value="uuids", keys=1, values=1, queries=1),
    "niah_multikey_1": dict(kind="niah", haystack="essay", key="words", value="numbers", keys=4, values=1,
                            queries=1),
    "niah_multikey_2": dict(kind="niah", haystack="needle", key="words", value="numbers", keys=1, values=1,
                            queries=1),
    "niah_multikey_3": dict(kind="niah", haystack="needle", key="uuids", value="uuids", keys=1, values=1, queries=1),
    "niah_multivalue": dict(kind="niah", haystack="essay", key="words", value="numbers", keys=1, values=4,
                            queries=1),
    "niah_multiquery": dict(kind="niah", haystack="essay", key="words", value="numbers", keys=1, values=1,
                            queries=4),
    "vt": dict(kind="variable_tracking", haystack="noise", chains=1, hops=4),
    "cwe": dict(kind="common_words_extraction", freq_cw=30, freq_ucw=3, num_cw=10),
    "fwe": dict(kind="freq_words_extraction", alpha=2.0, coded_wordlen=6),
}

# scripts/data/synthetic/constants.py: (task template, answer prefix, tokens to generate)
TEMPLATES: dict[str, tuple[str, str, int]] = {
    "niah": ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
             "{type_needle_v} for {query} mentioned in the provided text?",
             " The special magic {type_needle_v} for {query} mentioned in the provided text are", 128),
    "variable_tracking": ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
                          "{context}\nQuestion: Find all variables that are assigned the value {query} in the text "
                          "above.",
                          " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
                          "variables are assigned the value {query}, they are: ", 30),
    "common_words_extraction": ("Below is a numbered list of words. In these words, some appear more often than "
                                "others. Memorize the ones that appear most often.\n{context}\nQuestion: What are "
                                "the 10 most common words in the above list?",
                                " Answer: The top 10 words that appear most often in the list are:", 120),
    "freq_words_extraction": ("Read the following coded text and track the frequency of each coded word. Find the "
                              "three most frequently appeared coded words. {context}\nQuestion: Do not provide any "
                              "explanation. Please ignore the dots '....'. What are the three most frequently "
                              "appeared words in the above coded text?",
                              " Answer: According to the coded text above, the three most frequently appeared "
                              "words are:", 50),
}

# Chat templates (RULER's scripts/data/template.py for Llama-3 and Phi-3; SmolLM2's own ChatML template with its
# default system prompt).
CHAT_TEMPLATES: dict[str, str] = {
    "none": "{task_template}",
    "smollm2": ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                "<|im_start|>user\n{task_template}<|im_end|>\n<|im_start|>assistant\n"),
    "llama3": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{task_template}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "phi3": "<|user|>\n{task_template}<|end|>\n<|assistant|>\n",
}


def _clean(prediction: str) -> str:
    """RULER's post-processing of a prediction (scripts/eval/evaluate.py): control characters become newlines."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over samples of the fraction of references found in the prediction (case-insensitive), 0-100."""
    total = sum(sum(1.0 if r.lower() in p.lower() else 0.0 for r in ref) / len(ref)
                for p, ref in zip(predictions, references))
    return round(total / len(predictions) * 100, 2)


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over samples of whether any reference is found in the prediction (case-insensitive), 0-100."""
    total = sum(max(1.0 if r.lower() in p.lower() else 0.0 for r in ref) for p, ref in zip(predictions, references))
    return round(total / len(predictions) * 100, 2)


METRICS = {"niah": string_match_all, "variable_tracking": string_match_all,
           "common_words_extraction": string_match_all, "freq_words_extraction": string_match_all}


def task_args(task: str) -> dict[str, Any]:
    if task not in TASKS:
        raise ConfigError(f"unknown RULER task {task!r}; use some of {', '.join(TASKS)} (qa_1 and qa_2 need "
                          f"SQuAD/HotpotQA, which are not shipped)")
    return TASKS[task]


def score(task: str, predictions: list[str], references: list[list[str]]) -> float:
    """RULER's metric for `task` (string_match_all for every task here) on cleaned predictions, 0-100."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; give one per sample")
    return METRICS[task_args(task)["kind"]]([_clean(p) for p in predictions], references)


def generate(task: str, tokenizer, length: int, num_samples: int, seed: int = 42, template: str = "none"
             ) -> list[dict]:
    """`num_samples` prompts of `task` whose tokens plus the generation budget fit `length`, deterministic in
    `seed`; `tokenizer` is what `longrope_jax.load_tokenizer` returns (anything with encode(text).ids)."""
    from longrope_jax.eval import ruler_tasks

    args = task_args(task)
    if template not in CHAT_TEMPLATES:
        raise ConfigError(f"unknown chat template {template!r}; use one of {', '.join(CHAT_TEMPLATES)}")
    if int(length) < 256 or int(num_samples) < 1:
        raise ConfigError(f"RULER needs length >= 256 and at least one sample (got length {length}, "
                          f"{num_samples} samples)")
    task_template, answer_prefix, to_generate = TEMPLATES[args["kind"]]
    if args["kind"] == "niah" and args["values"] * args["queries"] == 1:
        task_template, answer_prefix = ruler_tasks.singular(task_template), ruler_tasks.singular(answer_prefix)
    full = CHAT_TEMPLATES[template].format(task_template=task_template) + answer_prefix

    def count(text: str) -> int:
        return len(tokenizer.encode(text).ids)

    make = getattr(ruler_tasks, args["kind"])
    samples = make(full, count, int(length), int(num_samples), int(seed), to_generate, args)
    prefix_start = TEMPLATES[args["kind"]][1][:10]
    out = []
    for index, (text, outputs, tokens) in enumerate(samples):
        cut = text.rfind(prefix_start)
        out.append({"index": index, "input": text[:cut], "answer_prefix": text[cut:], "outputs": list(outputs),
                    "max_new_tokens": to_generate, "length": tokens, "task": task, "template": template})
    return out
