"""Phi-3-mini style: 4k -> 128k with short/long factors (what Phi-3-mini-128k-instruct ships).

Mesh: TPU v5p-32 (16 chips) as data=1, fsdp=4, tensor=1, context=4 for 128k fine-tuning (3.8B params).
No second search stage (final_target == first_target); the short-factor search recovers 4k quality.
"""

from configs.recipes import paper_recipe


def get_config(variant: str = ""):
    config = paper_recipe("phi3_mini_128k", "/path/to/Phi-3-mini-4k-instruct", first_target=131072,
                          final_target=131072, finetune_len=131072, finetune_steps=400, mesh=(1, 4, 1, 4))
    config.pipeline.stages = "search_long,finetune,search_short,export,report"
    config.pipeline.short_length = 4096
    config.eval.lengths = (4096, 16384, 65536, 131072)
    return config
