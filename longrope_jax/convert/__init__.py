"""Checkpoint conversion: GGUF (llama.cpp) and Hugging Face safetensors, in HF tensor names and layouts."""

from longrope_jax.convert.gguf import gguf_config, iter_gguf_tensors, llama_cpp_permute, llama_cpp_unpermute
from longrope_jax.convert.gguf_tokenizer import gguf_tokenizer
from longrope_jax.convert.hf import hf_to_params, iter_safetensors, load_hf_dir, params_to_hf, save_hf_dir

__all__ = ["gguf_config", "gguf_tokenizer", "hf_to_params", "iter_gguf_tensors", "iter_safetensors",
           "llama_cpp_permute", "llama_cpp_unpermute", "load_hf_dir", "params_to_hf", "save_hf_dir"]
