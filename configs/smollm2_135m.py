"""The embedded default: real SmolLM2-135M-Instruct (native 8k, fetched from PyPI) on Jane Austen's novels.

Plain RoPE degrades past ~10k and breaks at 16k+ for this model, so 8k -> 16k/32k is a real extension.
`--config=configs/smollm2_135m.py:full` selects the full-size variant for a TPU/GPU.
"""

from configs.common import base_config


def get_config(variant: str = ""):
    config = base_config()
    config.name = "smollm2_135m"
    # Sized for a 2-core CPU (about an hour): 8k -> 16k search (6 + 2×4 candidates, ~2 min each), two fine-tuning
    # steps at 16k, short-factor recovery at 8k, export, and a report at 8k/16k.
    config.pipeline.first_target = 16384
    config.pipeline.final_target = 16384
    config.pipeline.short_length = 8192
    config.pipeline.short_evo_scale = 0.5
    # 2 generations of 4 CMA-ES samples after the 3 seeds (11 evaluations at 16k, ~2.5 min each on 2 cores).
    config.search.update(dict(population=6, generations=2, parents=3, mutants=2, crossovers=2, documents=1,
                              batch_size=2, cma_population=4))
    config.finetune.update(dict(steps=2, warmup_steps=1, seq_len=16384, checkpoint_every=1))
    # Recompute each layer in the backward but keep the blockwise attention output (fine-tuning at 16k on CPU).
    config.model.remat = "save_attention"
    config.eval.lengths = (8192, 16384)
    if variant == "full":
        config.eval.lengths = (4096, 8192, 16384, 32768, 65536)
        config.pipeline.final_target = 32768
        config.search.update(dict(population=64, generations=40, parents=32, mutants=16, crossovers=16,
                                  documents=3, batch_size=8))
        config.finetune.steps = 200
        config.eval.documents = 3
        config.eval.passkey_lengths = (4096, 8192, 16384, 32768)
    return config
