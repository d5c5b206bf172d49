"""The project-trained fixture model (`tests/fixtures/mini_llama`, native 256 tokens) on the demo corpus.

`python -m experiments.extend --config configs/mini.py` runs the whole progressive recipe in minutes on 2 cores:
search 8x (2,048 tokens), fine-tune there, search again to 64x (16,384), short factors at 256, export, report.
`python -m experiments.search_bench --config configs/mini.py:bench --ratio R` is the reference-budget bench.
"""

import ml_collections

from configs.common import base_config

FIXTURE = "tests/fixtures/mini_llama"
NATIVE = 256


def get_config(variant: str = ""):
    """"" (default): the pipeline tour, small searches; "bench": the reference search budget for the bench;
    "recipe": the whole pipeline at working budgets (`experiments/results/mini_recipe/`)."""
    config = base_config()
    config.name = "mini"
    config.model.path = FIXTURE
    config.model.block_q = 256
    config.model.block_kv = 256
    config.model.loss_chunk = 512
    config.bench = ml_collections.ConfigDict(dict(native_length=NATIVE, held_out_windows=8, held_out_seed=1234))
    config.eval.lengths = tuple(NATIVE * r for r in (1, 4, 8, 16, 32, 64))
    config.eval.documents = 1
    config.pipeline.update(dict(first_target=8 * NATIVE, final_target=64 * NATIVE, short_length=NATIVE,
                                short_evo_scale=0.5))
    config.finetune.update(dict(steps=40, seq_len=8 * NATIVE, short_seq_len=NATIVE, batch_size=4,
                                learning_rate=3e-4, warmup_steps=4, checkpoint_every=10, long_ratio=0.5))
    # Tour budget: 12 + 3 x 6 candidates on one window per search (the 64x one is ~10 s per evaluation).
    config.search.update(dict(population=12, generations=3, parents=6, mutants=3, crossovers=3, documents=1,
                              batch_size=4))
    if variant == "bench":
        # The reference algorithm at its budget (population 64, 40 generations, 16 + 16 from the top 32) on 3
        # search windows, judged on 8 windows of held-out Emma (benchmarks/search_efficiency.py measures the other
        # strategies against it).
        config.search.update(dict(population=64, generations=40, parents=32, mutants=16, crossovers=16,
                                  documents=3, batch_size=8, strategy="reference"))
    elif variant == "recipe":
        # The progressive recipe at working budgets: the default strategy (CMA-ES) at 1/10 of the reference's
        # evaluations on 3 search windows per search (the efficiency bench: CMA-ES reaches the reference's fitness
        # in 33-99 evaluations at 8x-32x), 200 fine-tuning steps, the short factors likewise. Most of its time
        # is the 64x search: 3 windows of 16,384 tokens per evaluation, ~2.4 min on one AVX2 core.
        config.search.update(dict(population=64, generations=10000, parents=32, mutants=16, crossovers=16,
                                  documents=3, batch_size=8, max_evaluations=135))
        config.finetune.update(dict(steps=200, warmup_steps=10, checkpoint_every=20))
        config.pipeline.short_evo_scale = 1.0
    elif variant:
        raise ValueError(f"configs/mini.py has variants '', 'bench' and 'recipe', not {variant!r}")
    return config
