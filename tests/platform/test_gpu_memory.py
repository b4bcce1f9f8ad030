"""`plan` rejects a model that cannot fit its GPU, sizing the KV pool with the engine's own planner
(inference/kv_plan.py) and checking that a full batch at full context fits it."""

from __future__ import annotations

import pytest
from inferforge.components.gpu_sizes import GPU_VM_SIZES
from inferforge.inference.kv_plan import gpu_kv_budget_bytes
from inferforge.stacks.config import ConfigError
from inferforge.stacks.gpu_memory import CUDA_RUNTIME_BYTES, GIB, KNOWN_MODELS, ModelShape, known_model, plan_gpu_memory
from inferforge.stacks.render import validate_stack

H100_NVL_PAIR = "Standard_NC80adis_H100_v5"


def problems(overrides: dict, stack: str) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_stack(stack, overrides)
    return "\n".join(caught.value.problems)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_shipped_stacks_fit_their_gpus(stack):
    cfg = validate_stack(stack)
    ((_, model, pool, plan),) = cfg.gpu_memory_plans()
    assert model is cfg.inference and pool.name == cfg.inference.gpu_pool
    assert plan.fits
    assert plan.max_batch_size_that_fits() >= 1.2 * plan.max_batch_size  # headroom, not a knife edge


def test_prod_numbers_are_the_engine_budget_arithmetic():
    cfg = validate_stack("prod")
    plan = plan_gpu_memory(KNOWN_MODELS["qwen2.5-32b-instruct"], tp_size=2, dtype="bfloat16",
                           max_batch_size=cfg.inference.max_batch_size, max_model_len=cfg.inference.max_model_len,
                           gpu_bytes=GPU_VM_SIZES[H100_NVL_PAIR].memory_bytes)
    assert (cfg.inference.max_batch_size, cfg.inference.max_model_len) == (32, 8192)
    assert round(plan.weight_bytes / GIB, 1) == 30.5
    # 0.9 x 87.5 GiB - 30.5 weights - 1 CUDA runtime - 2 activation reserve, as the engine computes it at start.
    assert plan.kv_budget_bytes == gpu_kv_budget_bytes(total_bytes=plan.gpu_bytes,
                                                       used_bytes=plan.weight_bytes + CUDA_RUNTIME_BYTES,
                                                       gpu_memory_utilization=0.9)
    assert round(plan.kv_budget_bytes / GIB, 1) == 45.3
    assert (plan.blocks_per_sequence, plan.needed_blocks) == (512, 32 * 512)
    assert round(plan.kv_bytes / GIB, 1) == 32.0  # 32 x 8192 tokens x 128 KiB
    assert plan.max_batch_size_that_fits() == 45


def test_issue_example_qwen32b_tp2_8k_64_sequences_on_h100_nvl_is_rejected_with_the_numbers():
    text = problems({"inference": {"maxBatchSize": 64, "maxModelLen": 8192}}, "prod")
    assert text.startswith("inferforge:inference.maxBatchSize: 64 with maxModelLen 8192 does not fit the GPU:")
    for part in ("a full batch at full context, never preempted for KV space needs 64 x 512 KV blocks of 16 tokens "
                 "x 128 KiB = 64.0 GiB per GPU", "45.3 GiB for the KV pool: gpuMemoryUtilization 0.9 of "
                 "Standard_NC80adis_H100_v5 (pool 'gpuh100', 87.5 GiB per H100-NVL GPU), less 30.5 GiB weights",
                 "allowed: maxBatchSize <= 45 at maxModelLen 8192", "maxModelLen <= 5792 at maxBatchSize 64",
                 "a larger tpSize / a GPU with more memory"):
        assert part in text, part


def test_the_serving_settings_the_engine_reads_change_the_verdict():
    """gpuMemoryUtilization, kvCacheMemoryGib and kvBlockSize are the engine's inputs, so they are the plan's."""
    fits = {"maxBatchSize": 40, "maxModelLen": 8192}
    assert validate_stack("prod", {"inference": fits}).inference.max_batch_size == 40
    assert "gpuMemoryUtilization 0.75" in problems({"inference": {**fits, "gpuMemoryUtilization": 0.75}}, "prod")
    assert "a kvCacheMemoryGib 30 pool of 15360 blocks" in problems({"inference": {**fits, "kvCacheMemoryGib": 30}},
                                                                   "prod")
    # The engine caps a larger pool at the full batch (40 GiB here), which fits beside the weights...
    assert validate_stack("prod", {"inference": {**fits, "kvCacheMemoryGib": 60}}).inference.kv_cache_memory_gib == 60
    # ...but an explicit pool is allocated whatever the GPU holds: 55 GiB of KV and the rest overflow it.
    overflow = problems({"inference": {"maxBatchSize": 55, "maxModelLen": 8192, "kvCacheMemoryGib": 60}}, "prod")
    assert "that pool plus 30.5 GiB weights, 1.0 GiB CUDA runtime (estimated) and 2.0 GiB activation reserve come " \
           "to 88.5 GiB, more than Standard_NC80adis_H100_v5" in overflow
    # Blocks round each sequence up, as the engine's pool does: 8200 tokens take 513 blocks of 16, 9 of 1024.
    assert "46 x 513 KV blocks of 16 tokens" in problems({"inference": {"maxBatchSize": 46, "maxModelLen": 8200}},
                                                         "prod")
    assert "46 x 9 KV blocks of 1024 tokens" in problems(
        {"inference": {"maxBatchSize": 46, "maxModelLen": 8200, "kvBlockSize": 1024}}, "prod")


def test_plan_prints_each_models_gpu_memory_and_the_assumption_it_checks(capsys):
    from inferforge.stacks.plan import run

    assert run(["--stack", "prod", "--no-policies"]) == 0
    out = capsys.readouterr().out
    assert "checked: a full batch at full context, never preempted for KV space" in out
    assert ("inference 'qwen2.5-32b-instruct' on Standard_NC80adis_H100_v5, tpSize 2, bfloat16: 30.5 GiB weights"
            in out)
    assert "needs 32 x 512 blocks of 16 tokens = 32.0 GiB: fits" in out


def test_more_tensor_parallelism_makes_the_same_load_fit():
    overrides = {"aks": {"gpuPools": [{"name": "gpuh100", "vmSize": "Standard_ND96isr_H100_v5", "minCount": 1,
                                       "maxCount": 2, "zones": ["1", "2", "3"]}]},
                 "inference": {"maxBatchSize": 64, "tpSize": 4}}
    assert validate_stack("prod", overrides).inference.tp_size == 4


def test_weights_that_alone_overflow_the_gpu_ask_for_more_tp_or_memory():
    text = problems({"inference": {"modelName": "llama-3.1-70b-instruct", "tpSize": 1}}, "dev")
    assert "inferforge:inference.maxBatchSize: 64 with maxModelLen 4096 does not fit the GPU" in text
    assert "131.4 GiB weights" in text
    assert "allowed: a larger tpSize or a GPU with more memory (the weights alone leave no room" in text


def test_unknown_model_without_a_shape_is_rejected_clearly():
    text = problems({"inference": {"modelName": "acme-13b-chat"}}, "dev")
    assert ("inferforge:inference.modelName: 'acme-13b-chat' is not a known model, so whether it fits the GPU "
            "cannot be checked; allowed: one of qwen2.5-7b,") in text
    assert "or set inference.modelShape {numLayers, numKvHeads, headDim, numParams} from its config.json" in text


def test_unknown_model_with_an_explicit_shape_is_checked_with_it():
    shape = {"numLayers": 40, "numKvHeads": 8, "headDim": 128, "numParams": 13_000_000_000}
    cfg = validate_stack("dev", {"inference": {"modelName": "acme-13b-chat", "modelShape": shape, "maxBatchSize": 32}})
    assert cfg.inference.model_shape.num_params == 13_000_000_000
    text = problems({"inference": {"modelName": "acme-13b-chat", "maxModelLen": 32768,
                                   "modelShape": shape}}, "dev")
    assert "'acme-13b-chat' at tpSize 1 in bfloat16: a full batch at full context" in text
    assert "less 24.2 GiB weights" in text


def test_an_explicit_shape_overrides_the_table_for_a_known_name():
    huge = {"numLayers": 64, "numKvHeads": 64, "headDim": 128, "numParams": 7_615_616_512}
    assert "does not fit the GPU" in problems({"inference": {"modelShape": huge}}, "dev")


def test_bad_model_shape_values_name_the_key():
    text = problems({"inference": {"modelName": "acme", "modelShape": {"numLayers": 0, "numKvHeads": 8,
                                                                          "headDim": 128, "numParams": 10**9}}},
                    "dev")
    assert "inferforge:inference.modelShape.numLayers: Input should be greater than or equal to 1" in text


def test_known_model_names_are_matched_without_org_and_case():
    assert known_model("Qwen/Qwen2.5-32B-Instruct") == KNOWN_MODELS["qwen2.5-32b-instruct"]
    assert known_model("meta-llama/Llama-3.1-70B-Instruct").num_layers == 80
    assert known_model("mistralai/Mistral-7B-Instruct-v0.3").num_kv_heads == 8
    assert known_model("acme-13b") is None


def test_kv_heads_that_tp_does_not_divide_count_the_largest_shard():
    shape = ModelShape(num_layers=1, num_kv_heads=5, head_dim=64, num_params=10**6)
    plan = plan_gpu_memory(shape, tp_size=2, dtype="float16", max_batch_size=1, max_model_len=10, gpu_bytes=10**12)
    assert plan.kv_bytes_per_token == 1 * 2 * 3 * 64 * 2


@pytest.mark.parametrize(("tp_size", "dtype"), [(1, "float32"), (2, "bfloat16"), (4, "float16")])
def test_kv_estimate_equals_what_the_engine_allocates(tp_size, dtype):
    import torch

    from inference.kv_cache import PagedKVCache

    shape = ModelShape(num_layers=3, num_kv_heads=4, head_dim=16, num_params=10**6)
    plan = plan_gpu_memory(shape, tp_size=tp_size, dtype=dtype, max_batch_size=5, max_model_len=32,
                           gpu_bytes=10**12)
    # The engine's pool for a full batch: 5 sequences x 2 blocks of 16, capped there by the planner itself.
    assert plan.pool_blocks == plan.needed_blocks == 10
    cache = PagedKVCache(shape.num_layers, plan.pool_blocks, 16, dtype=getattr(torch, dtype),
                         device=torch.device("cpu"))
    cache.allocate(kv_heads=shape.num_kv_heads // tp_size, head_dim=shape.head_dim)  # the rank's local heads
    assert plan.kv_bytes == cache.nbytes()
