"""The embedded default: real SmolLM2-135M-Instruct (native 8k, fetched from PyPI) on Jane Austen's novels.

Plain RoPE degrades past ~10k and breaks at 16k+ for this model, so 8k -> 16k/32k is a real extension.
`--config=configs/smollm2_135m.py:full` selects the full-size variant for a TPU/GPU.
"""

from configs.common import base_config


def get_config(variant: str = ""):
    config = base_config()
    config.name = "smollm2_135m"
    config.eval.lengths = (4096, 8192, 16384)
    if variant == "full":
        config.eval.lengths = (4096, 8192, 16384, 32768, 65536)
        config.eval.documents = 3
        config.eval.passkey_lengths = (4096, 8192, 16384, 32768)
    return config
