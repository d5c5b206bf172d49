"""A tiny random model and tiny settings for tests: every stage runs in seconds on CPU."""

from configs.common import base_config


def get_config(variant: str = ""):
    config = base_config()
    config.name = "tiny"
    # model.path "tiny" builds a random 2-layer model (vocab = the demo char tokenizer's 256 byte values).
    config.model.path = "tiny"
    config.model.block_q = 32
    config.model.block_kv = 32
    config.model.loss_chunk = 64
    config.model.tiny = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                             num_kv_heads=2, head_dim=8, max_position_embeddings=64, seed=0)
    config.eval.lengths = (64, 128)
    config.eval.candidates_per_batch = 3
    config.search.target_length = 128
    config.search.evo_scale = 0.125  # population 8, 5 generations, 2 mutants + 2 crossovers from the top 4
    config.search.documents = 2
    config.search.batch_size = 4
    config.finetune.update(dict(steps=12, seq_len=128, short_seq_len=64, batch_size=8, learning_rate=3e-3,
                                warmup_steps=2, checkpoint_every=4, long_ratio=0.5))
    config.data.train_split = "train"
    config.pipeline.first_target = 128
    config.pipeline.final_target = 256
    config.pipeline.short_evo_scale = 0.125
    config.eval.lengths = (64, 128, 256)
    return config
