"""LongRoPE2 recipe: Llama-3-8B, 8k -> 128k with critical-dimension search, needle-driven fitness and
mixed-context-window fine-tuning (short batches keep original RoPE at 8k).

Mesh: TPU v5p-64 (32 chips) as data=1, fsdp=8, tensor=1, context=4 for 128k fine-tuning.
"""

from configs.recipes import paper_recipe


def get_config(variant: str = ""):
    config = paper_recipe("llama3_8b_128k_longrope2", "/path/to/Meta-Llama-3-8B", first_target=131072,
                          final_target=131072, finetune_len=131072, finetune_steps=800, mesh=(1, 8, 1, 4))
    config.search.space = "longrope2"
    config.search.critical_dim = 0  # 0: from the formula ceil((d/2)·log_θ(L/2π)) − 1
    config.search.fitness = "needle"
    config.finetune.long_ratio = 0.7  # mixed context windows: 30% short original-RoPE batches
    config.finetune.short_seq_len = 8192
    config.pipeline.stages = "search_long,finetune,search_short,export,report"
    return config
