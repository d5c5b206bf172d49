"""Memory planner: exact weight bytes, scaling laws of each component, fit verdicts, CLI table."""

import json
import math

import pytest

from experiments.memory_plan import main as cli_main, parse_length
from longrope_jax.convert.hf import param_shapes
from longrope_jax.errors import ConfigError
from longrope_jax.memory_planner import PRESETS, format_plan, plan_memory
from longrope_jax.model.config import ModelConfig

LLAMA = PRESETS["llama2_7b"]


def test_weight_bytes_are_exact_parameter_count_times_dtype_size():
    cfg = ModelConfig.from_hf_config(PRESETS["smollm2_135m"])
    count = sum(math.prod(shape) for shape in param_shapes(cfg).values())
    assert count == 134_515_008  # SmolLM2-135M (tied embeddings)
    for dtype, size in [("bfloat16", 2), ("float32", 4)]:
        plan = plan_memory(cfg, 4096, (1, 1, 1, 1), param_dtype=dtype)
        assert plan["param_count"] == count
        assert plan["weights_total_bytes"] == plan["bytes"]["weights"] == count * size
        assert plan["bytes"]["gradients"] == count * size
    # An HF config dict and the ModelConfig built from it give the same plan.
    assert plan_memory(PRESETS["smollm2_135m"], 4096)["bytes"] == plan_memory(cfg, 4096)["bytes"]
    llama = plan_memory(LLAMA, 4096)
    assert llama["param_count"] == 6_738_415_616  # Llama-2 7B


def test_activations_linear_in_length_and_split_by_context():
    base = plan_memory(LLAMA, 65536, (1, 8, 1, 2))["bytes"]["activations"]
    assert plan_memory(LLAMA, 131072, (1, 8, 1, 2))["bytes"]["activations"] == 2 * base
    assert plan_memory(LLAMA, 65536, (1, 8, 1, 4))["bytes"]["activations"] * 2 == base
    # Batch per replica multiplies tokens per chip like length does.
    assert plan_memory(LLAMA, 65536, (1, 8, 1, 2), batch_per_replica=2)["bytes"]["activations"] == 2 * base
    by_policy = {r: plan_memory(LLAMA, 65536, (1, 8, 1, 2), remat=r)["bytes"]["activations"]
                 for r in ("none", "dots_saveable", "save_attention", "full")}
    assert by_policy["none"] > by_policy["dots_saveable"] > by_policy["save_attention"] > by_policy["full"]


def test_optimizer_weights_and_gradients_divided_by_fsdp():
    one = plan_memory(LLAMA, 8192, (1, 1, 1, 1))["bytes"]
    eight = plan_memory(LLAMA, 8192, (1, 8, 1, 1))["bytes"]
    norms = (2 * 32 + 1) * 4096  # RMSNorm weights: the "norm" logical axis is replicated by the rules table
    for name, per_param in (("optimizer", 12), ("weights", 2), ("gradients", 2)):
        assert eight[name] == (one[name] - norms * per_param) // 8 + norms * per_param
    # bf16 params: AdamW m, v and an fp32 master copy = 12 bytes per parameter; fp32 params need no master.
    assert one["optimizer"] == 6_738_415_616 * 12
    assert plan_memory(LLAMA, 8192, param_dtype="float32")["bytes"]["optimizer"] == 6_738_415_616 * 8
    # Context parallelism does not shard parameters under the project's rules; data parallelism neither.
    assert plan_memory(LLAMA, 8192, (2, 1, 1, 4))["bytes"]["optimizer"] == one["optimizer"]


def test_fit_verdicts():
    # Llama-2 7B training at 128k on one chip: ~100 GiB of weights + optimizer state alone.
    assert not any(plan_memory(LLAMA, 131072, (1, 1, 1, 1))["fits"].values())
    # fsdp=8 × context=8: ~25 GiB per chip fits 32 GiB chips, not the 16 GiB v5e.
    fits = plan_memory(LLAMA, 131072, (1, 8, 1, 8))["fits"]
    assert fits["TPU v4"] and fits["TPU v6e"] and fits["H100"] and not fits["TPU v5e"]
    # SmolLM2 evaluation with a 16k KV cache fits everywhere.
    small = plan_memory(PRESETS["smollm2_135m"], 16384, mode="eval")
    assert all(small["fits"].values())
    assert small["bytes"]["kv_cache"] == 30 * 2 * 16384 * 3 * 64 * 2
    assert small["bytes"]["optimizer"] == small["bytes"]["gradients"] == 0


def test_invalid_inputs():
    with pytest.raises(ConfigError, match="multiple of the context"):
        plan_memory(LLAMA, 1000, (1, 1, 1, 3))
    with pytest.raises(ConfigError, match="remat"):
        plan_memory(LLAMA, 1024, remat="sometimes")


def test_cli_prints_table(capsys, tmp_path):
    assert parse_length("128k") == 131072 and parse_length("2m") == 2097152
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--preset", "llama2_7b", "--seq-len", "128k", "--mesh", "1,8,1,8", "--mode", "train"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.strip() == format_plan(plan_memory(LLAMA, 131072, (1, 8, 1, 8)))
    assert "| total" in out and "| TPU v5e" in out and "16384 tokens/chip" in out

    config = tmp_path / "config.json"
    config.write_text(json.dumps(PRESETS["smollm2_135m"]))
    with pytest.raises(SystemExit):
        cli_main(["--config-json", str(config), "--seq-len", "8192", "--mode", "eval"])
    assert "| kv_cache" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--preset", "smollm2_135m", "--seq-len", "8192", "--mesh", "1,8"])
    assert exit_info.value.code == 1
    assert "--mesh" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: one usage line naming the choices, exit 2
        cli_main(["--preset", "smollm2_135m", "--seq-len", "8192", "--param-dtype", "fp8"])
    assert exit_info.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err
    for remat in ("none", "full", "save_attention", "dots_saveable", "nothing_saveable"):  # every model policy
        assert plan_memory(PRESETS["smollm2_135m"], 8192, (1, 1, 1, 1), remat=remat)["total_bytes"] > 0
