"""LongRoPE paper recipe: Mistral 7B (v0.1), 8k -> 256k (search + fine-tune) -> 2048k.

Mesh: TPU v5p-128 as data=1, fsdp=8, tensor=1, context=16 (same memory budget as Llama-2 7B; GQA makes KV
smaller). Mistral's 4k sliding window is kept as configured in its config.json.
"""

from configs.recipes import paper_recipe


def get_config(variant: str = ""):
    config = paper_recipe("mistral_7b_2048k", "/path/to/Mistral-7B-v0.1", first_target=262144,
                          final_target=2097152, finetune_len=262144, finetune_steps=400, mesh=(1, 8, 1, 16))
    return config
