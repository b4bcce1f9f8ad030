"""The CPU decode-attention kernel (inference.cpu_attention) against the gather + matmul path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from inference import cpu_attention, kv_cache
from inference.distributed import LaunchEnv, WireStep
from inference.engine_config import EngineConfig
from inference.model_runner import ModelRunner

from .test_kv_paging import make_engine, run_workload, shared_prefix_workload


def test_the_kernel_applies_to_float32_on_the_cpu_only() -> None:
    assert cpu_attention.applies(torch.device("cpu"), torch.float32)
    assert not cpu_attention.applies(torch.device("cpu"), torch.bfloat16)
    assert not cpu_attention.applies(torch.device("cpu"), torch.float16)
    assert not cpu_attention.applies(torch.device("cuda"), torch.float32)


def _decode(kernel: bool, cache: kv_cache.PagedKVCache, step: kv_cache.StepAttention, query: torch.Tensor,
            layer: int) -> torch.Tensor:
    cache.cpu_decode_kernel = kernel
    heads, n, head_dim = query.shape
    out = torch.full((n, heads, head_dim), float("nan"))
    kv_cache._decode_attention(cache, layer, step, query, out, None)
    return out


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(8, 2, 16), (4, 4, 32), (6, 1, 8)])
@pytest.mark.parametrize("lengths", [[1], [5, 17, 16, 33, 2], [40] * 3])
def test_the_kernel_equals_gather_and_matmuls_on_scattered_blocks(heads: int, kv_heads: int, head_dim: int,
                                                                   lengths: list[int]) -> None:
    generator = torch.Generator().manual_seed(heads * 100 + len(lengths))
    block_size, num_blocks = 8, 40
    cache = kv_cache.PagedKVCache(2, num_blocks, block_size, torch.float32, torch.device("cpu"))
    cache.allocate(kv_heads, head_dim)
    for pool in (*cache.keys, *cache.values):
        pool.copy_(torch.randn(pool.shape, generator=generator))
    # Each sequence's blocks are scattered over the pool, in no order.
    order = torch.randperm(num_blocks, generator=generator).tolist()
    tables, taken = [], 0
    for length in lengths:
        count = -(-length // block_size)
        tables.append(order[taken : taken + count])
        taken += count
    kv_len = max(lengths)
    span = torch.arange(kv_len)
    table = torch.tensor([t + [0] * (-(-kv_len // block_size) - len(t)) for t in tables])
    lengths_t = torch.tensor(lengths)
    step = kv_cache.StepAttention(cache=cache, token_rows=torch.zeros(0, dtype=torch.int64), num_decode=len(lengths))
    step.decode_rows = (table[:, span // block_size] * block_size + span % block_size).flatten()
    step.decode_kv_len = kv_len
    step.decode_lengths = lengths_t
    if min(lengths) != kv_len:
        step.decode_mask = (span.unsqueeze(0) < lengths_t.unsqueeze(1)).view(len(lengths), 1, 1, kv_len)
    # A query laid out as the model hands it over: a [heads, n, D] view of a [n, heads, D] tensor.
    query = torch.randn(len(lengths), heads, head_dim, generator=generator).transpose(0, 1)
    for layer in (0, 1):
        expected = _decode(False, cache, step, query, layer)
        got = _decode(True, cache, step, query, layer)
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=2e-5)


def _runner(model_dir: Path, kernel: bool) -> ModelRunner:
    cfg = EngineConfig(model_dir=model_dir, dtype="float32", cpu_attention_kernel=kernel)
    return ModelRunner(cfg, LaunchEnv.from_environ({}, "cpu"), torch.device("cpu"))


def test_a_runner_with_the_kernel_gives_the_logits_and_greedy_tokens_without_it(tiny_model_dir: Path) -> None:
    with_kernel, without = _runner(tiny_model_dir, True), _runner(tiny_model_dir, False)
    assert with_kernel.cache.cpu_decode_kernel and not without.cache.cpu_decode_kernel
    prompt = torch.randint(3, 500, (30,), generator=torch.Generator().manual_seed(4))
    tables = [[0, 1], [6, 2, 9]]  # two sequences of different lengths (12 and 18 prompt tokens)
    step = WireStep(0, [(0, 12, True), (0, 18, True)], tables, prompt, torch.cat([torch.arange(12), torch.arange(18)]))
    for i in range(8):
        a, b = with_kernel.execute(step), without.execute(step)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
        step = WireStep(2, [], tables, b.argmax(-1), torch.tensor([12 + i, 18 + i]))


def test_greedy_tokens_under_batching_prefix_caching_and_preemption_are_those_without_the_kernel(
    tiny_model_dir: Path,
) -> None:
    prompts, lengths = shared_prefix_workload()
    results = []
    for kernel in (False, True):
        engine = make_engine(tiny_model_dir, num_kv_blocks=24, max_model_len=128, cpu_attention_kernel=kernel)
        try:
            results.append(run_workload(engine, prompts, lengths, concurrent=True))
        finally:
            asyncio.run(engine.shutdown())
    assert results[0] == results[1]
