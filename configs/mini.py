"""The project-trained fixture model (`tests/fixtures/mini_llama`, native 256 tokens) on the demo corpus.

`python -m experiments.extend --config configs/mini.py` runs the whole progressive recipe in minutes on 2 cores:
search 8x (2,048 tokens), fine-tune there, search again to 64x (16,384), short factors at 256, export, report.
`python -m experiments.search_bench --config configs/mini.py --ratio R` is the reference-budget search bench.
"""

import ml_collections

from configs.common import base_config

FIXTURE = "tests/fixtures/mini_llama"
NATIVE = 256


def get_config(variant: str = ""):
    config = base_config()
    config.name = "mini"
    config.model.path = FIXTURE
    config.model.block_q = 256
    config.model.block_kv = 256
    config.model.loss_chunk = 512
    # The search bench: reference budget (population 64, 40 generations, 16 + 16 from the top 32), fitness on
    # 4 search-split windows, judged on 8 windows of held-out Emma.
    config.search.update(dict(documents=4, batch_size=8, cache=""))
    config.bench = ml_collections.ConfigDict(dict(native_length=NATIVE, held_out_windows=8, held_out_seed=1234))
    config.eval.lengths = tuple(NATIVE * r for r in (1, 4, 8, 16, 32, 64))
    config.eval.documents = 1
    config.pipeline.update(dict(first_target=8 * NATIVE, final_target=64 * NATIVE, short_length=NATIVE,
                                short_evo_scale=0.25))
    config.finetune.update(dict(steps=40, seq_len=8 * NATIVE, short_seq_len=NATIVE, batch_size=4,
                                learning_rate=3e-4, warmup_steps=4, checkpoint_every=10, long_ratio=0.5))
    if variant == "quick":  # the pipeline tour: small searches
        config.search.update(dict(population=16, generations=4, parents=8, mutants=4, crossovers=4, documents=2))
    return config
