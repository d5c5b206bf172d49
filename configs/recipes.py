"""Shared pieces of the paper recipes (7B-class models on TPU slices, user-supplied HF checkpoints)."""

from configs.common import base_config


def paper_recipe(name: str, model_path: str, first_target: int, final_target: int, finetune_len: int,
                 finetune_steps: int, mesh: tuple[int, int, int, int]):
    config = base_config()
    config.name = name
    # Point this at your Hugging Face checkpoint directory (config.json + safetensors), e.g. on a TPU VM disk.
    config.model.path = model_path
    config.model.dtype = "bfloat16"
    config.model.remat = "full"
    config.data.source = "tfds"
    config.data.tfds_name = "pg19"
    config.data.text_key = "book_text"  # pg19's field; the shared default "text" is the files source's
    config.data.train_split = "train"
    config.data.search_split = "validation"
    config.data.held_out_split = "test"
    config.pipeline.first_target = first_target
    config.pipeline.final_target = final_target
    config.search.documents = 5
    config.search.batch_size = 8
    config.finetune.seq_len = finetune_len
    config.finetune.steps = finetune_steps
    config.finetune.batch_size = 8
    config.finetune.learning_rate = 2e-5
    config.finetune.warmup_steps = 20
    config.finetune.mesh = mesh
    config.finetune.checkpoint_every = 50
    config.eval.lengths = (4096, 8192, 32768, 131072, 262144)
    return config
