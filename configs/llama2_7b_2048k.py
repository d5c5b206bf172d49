"""LongRoPE paper recipe: Llama-2 7B, 4k -> 256k (search + fine-tune) -> 2048k (search on the fine-tuned model).

Mesh: a TPU v5p-128 slice (64 chips × 2 cores) as data=1, fsdp=8, tensor=1, context=16 for 256k fine-tuning —
see benchmarks/memory_plan_llama2_7b.md (25 GiB per chip at 16k tokens per chip with full remat).
The paper fine-tunes 400 steps at 128k then 600 at 256k; run the finetune stage twice (seq_len 131072, then
262144 with --config.finetune.steps=1000 in a new workdir) to reproduce that schedule exactly.
"""

from configs.recipes import paper_recipe


def get_config(variant: str = ""):
    return paper_recipe("llama2_7b_2048k", "/path/to/Llama-2-7b-hf", first_target=262144, final_target=2097152,
                        finetune_len=262144, finetune_steps=600, mesh=(1, 8, 1, 16))
