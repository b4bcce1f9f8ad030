"""`plan` rejects a model that cannot fit its GPU: weights / tp + preallocated KV cache + runtime margin per rank."""

from __future__ import annotations

import pytest
from inferforge.components.gpu_sizes import GPU_VM_SIZES
from inferforge.stacks.config import ConfigError
from inferforge.stacks.gpu_memory import DTYPE_BYTES, GIB, KNOWN_MODELS, ModelShape, known_model, plan_gpu_memory
from inferforge.stacks.render import validate_stack

H100_NVL_PAIR = "Standard_NC80adis_H100_v5"


def problems(overrides: dict, stack: str) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_stack(stack, overrides)
    return "\n".join(caught.value.problems)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_shipped_stacks_fit_their_gpus(stack):
    cfg = validate_stack(stack)
    pool = next(p for p in cfg.aks.gpu_pools if p.name == cfg.inference.gpu_pool)
    plan = plan_gpu_memory(known_model(cfg.inference.model_name), tp_size=cfg.inference.tp_size,
                           dtype=cfg.inference.dtype, max_batch_size=cfg.inference.max_batch_size,
                           max_model_len=cfg.inference.max_model_len,
                           gpu_bytes=GPU_VM_SIZES[pool.vm_size].memory_bytes)
    assert plan.fits
    assert plan.needed_bytes <= 0.9 * plan.gpu_bytes  # headroom beyond the margin, not a knife edge


def test_prod_numbers_are_what_its_comment_says():
    cfg = validate_stack("prod")
    plan = plan_gpu_memory(KNOWN_MODELS["qwen2.5-32b-instruct"], tp_size=2, dtype="bfloat16",
                           max_batch_size=cfg.inference.max_batch_size, max_model_len=cfg.inference.max_model_len,
                           gpu_bytes=GPU_VM_SIZES[H100_NVL_PAIR].memory_bytes)
    assert (cfg.inference.max_batch_size, cfg.inference.max_model_len) == (32, 8192)
    assert round(plan.weight_bytes / GIB, 1) == 30.5
    assert round(plan.kv_bytes / GIB, 1) == 33.0
    assert round(plan.needed_bytes / GIB, 1) == 72.3
    assert plan.max_batch_size() == 47


def test_issue_example_qwen32b_tp2_8k_64_sequences_on_h100_nvl_is_rejected_with_the_numbers():
    text = problems({"inference": {"maxBatchSize": 64, "maxModelLen": 8192}}, "prod")
    assert text.startswith("inferforge:inference.maxBatchSize: 64 with maxModelLen 8192 does not fit the GPU:")
    for part in ("30.5 GiB weights", "65.0 GiB KV cache (65 slots x 8192 tokens x 128 KiB)",
                 "8.8 GiB runtime margin = 104.3 GiB", "Standard_NC80adis_H100_v5 (pool 'gpuh100') has 87.5 GiB "
                 "per H100-NVL GPU", "allowed: maxBatchSize <= 47 at maxModelLen 8192",
                 "maxModelLen <= 6084 at maxBatchSize 64", "a larger tpSize / a GPU with more memory"):
        assert part in text, part


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
    cfg = validate_stack("dev", {"inference": {"modelName": "acme-13b-chat", "modelShape": shape}})
    assert cfg.inference.model_shape.num_params == 13_000_000_000
    text = problems({"inference": {"modelName": "acme-13b-chat", "maxModelLen": 32768,
                                   "modelShape": shape}}, "dev")
    assert "'acme-13b-chat' at tpSize 1 in bfloat16 needs per GPU 24.2 GiB weights" in text


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

    from inference.engine import plan_kv_pool
    from inference.kv_cache import PagedKVCache

    shape = ModelShape(num_layers=3, num_kv_heads=4, head_dim=16, num_params=10**6)
    plan = plan_gpu_memory(shape, tp_size=tp_size, dtype=dtype, max_batch_size=5, max_model_len=32,
                           gpu_bytes=10**12)
    # The engine's pool for the same tokens: (5 + 1) x 32 tokens = 12 blocks of 16.
    pool = plan_kv_pool(num_layers=3, kv_heads=4, head_dim=16, dtype_bytes=DTYPE_BYTES[dtype], world_size=tp_size,
                        budget_bytes=plan.kv_bytes, block_size=16, max_batch_size=6, model_max_len=32,
                        requested_max_model_len=32)
    cache = PagedKVCache(shape.num_layers, pool.num_blocks, 16, dtype=getattr(torch, dtype), device=torch.device("cpu"))
    cache.allocate(kv_heads=shape.num_kv_heads // tp_size, head_dim=shape.head_dim)  # the rank's local heads
    assert pool.bytes_per_token == plan.kv_bytes_per_token
    assert plan.kv_bytes == cache.nbytes()
