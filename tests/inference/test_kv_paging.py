"""Paged KV cache: pool arithmetic, block books, admission, preemption, prefix caching, and the engine's
greedy tokens with all of it on and off (TP=2: tests/inference/test_engine_tp.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from inference import kv_cache
from inference.block_manager import BlockManager, OutOfBlocksError, prompt_block_hashes
from inference.engine import InferenceEngine
from inference.engine_api import GenerationRequest, SamplingParams
from inference.engine_config import EngineConfig
from inference.kv_plan import GIB, plan_kv_pool
from inference.ranks import start_engine
from inference.scheduler import Scheduler, Sequence
from tests.inference.test_engine_units import run_step

pytestmark = pytest.mark.timeout(180)


# ----- arithmetic ---------------------------------------------------------------------------------
def tiny_shape(model_dir: Path) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    return dict(num_layers=config["num_hidden_layers"], kv_heads=config["num_key_value_heads"],
                head_dim=config["hidden_size"] // config["num_attention_heads"])


@pytest.mark.parametrize(("world_size", "dtype"), [(1, torch.float32), (2, torch.float32), (1, torch.bfloat16)])
def test_kv_bytes_per_token_of_the_tiny_model_is_2_x_layers_x_kv_heads_x_head_dim_x_dtype_bytes(
    tiny_model_dir: Path, world_size: int, dtype: torch.dtype
) -> None:
    shape = tiny_shape(tiny_model_dir)
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    plan = plan_kv_pool(**shape, dtype_bytes=dtype_bytes, world_size=world_size, budget_bytes=GIB, block_size=16,
                        max_batch_size=4, model_max_len=1024, requested_max_model_len=None)
    local_heads = shape["kv_heads"] // world_size

    assert plan.bytes_per_token == 2 * shape["num_layers"] * local_heads * shape["head_dim"] * dtype_bytes
    assert (shape["num_layers"], shape["kv_heads"], shape["head_dim"]) == (2, 2, 16)  # 512 B/token in fp32 at TP=1
    # What the pool really allocates on a rank with its local heads.
    cache = kv_cache.PagedKVCache(shape["num_layers"], plan.num_blocks, 16, dtype, torch.device("cpu"))
    cache.allocate(local_heads, shape["head_dim"])
    assert cache.nbytes() == plan.num_blocks * 16 * plan.bytes_per_token


def test_the_pool_is_sized_from_the_budget_not_from_batch_x_context() -> None:
    # 512 B/token, 16-token blocks = 8 KiB per block; a 1 MiB budget = 128 blocks = 2,048 tokens.
    shape = dict(num_layers=2, kv_heads=2, head_dim=16, dtype_bytes=4, world_size=1, block_size=16)
    plan = plan_kv_pool(**shape, budget_bytes=2**20, max_batch_size=64, model_max_len=32768,
                        requested_max_model_len=None)
    assert (plan.num_blocks, plan.capacity_tokens) == (128, 2048)
    # The model's 32k context is more than the pool holds: lowered to the pool, not to 4,096 or a slot.
    assert plan.max_model_len == 2048
    # A large budget is not spent beyond what max_batch_size full-length sequences can use.
    roomy = plan_kv_pool(**shape, budget_bytes=GIB, max_batch_size=2, model_max_len=32768,
                         requested_max_model_len=None)
    assert roomy.max_model_len == 32768 and roomy.num_blocks == 2 * 32768 // 16


def test_an_explicit_context_the_pool_cannot_hold_is_refused_with_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"max_model_len 4096 needs 256 KV blocks of 16 tokens .* holds 128 blocks"):
        plan_kv_pool(num_layers=2, kv_heads=2, head_dim=16, dtype_bytes=4, world_size=1, budget_bytes=2**20,
                     block_size=16, max_batch_size=64, model_max_len=32768, requested_max_model_len=4096)
    with pytest.raises(ValueError, match="holds no block"):
        plan_kv_pool(num_layers=2, kv_heads=2, head_dim=16, dtype_bytes=4, world_size=1, budget_bytes=100,
                     block_size=16, max_batch_size=64, model_max_len=32768, requested_max_model_len=None)


# ----- block books --------------------------------------------------------------------------------
def test_prompt_block_hashes_chain_every_earlier_token() -> None:
    a = prompt_block_hashes(list(range(10)), 4)
    b = prompt_block_hashes([99, *range(1, 10)], 4)
    assert len(a) == 2  # the partial last block has no hash
    assert a[0] != b[0] and a[1] != b[1]  # block 1 is equal, but its prefix differs
    assert prompt_block_hashes(list(range(8)), 4) == a


def test_a_cached_prefix_is_shared_with_refcounts_and_never_covers_the_last_token() -> None:
    blocks = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(12))
    hashes = prompt_block_hashes(prompt, 4)
    first = blocks.allocate([], 13)
    blocks.register(first, hashes, 3)

    cached = blocks.cached_prefix(hashes, len(prompt))
    assert cached == first[:2]  # 12 tokens: 2 blocks from the cache, the 3rd is computed for the last token's logits
    second = blocks.allocate(cached, 13)
    assert second[:2] == first[:2] and set(second[2:]).isdisjoint(first)
    blocks.check_consistency([first, second])
    blocks.free(first)
    blocks.free(second)
    blocks.check_consistency([])
    assert blocks.num_free == 8 and blocks.num_cached == 3  # freed, but still findable


def test_cached_blocks_are_evicted_least_recently_used_first_and_only_when_needed() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2)
    old, new = [1, 2, 3, 4], [5, 6, 7, 8]
    old_table = blocks.allocate([], 4)
    old_blocks = list(old_table)
    blocks.register(old_table, prompt_block_hashes(old, 2), 2)
    blocks.free(old_table)  # empties the table
    new_table = blocks.allocate([], 4)  # takes the 2 never-cached blocks first
    new_blocks = list(new_table)
    assert blocks.cached_prefix(prompt_block_hashes(old, 2), 5) == old_blocks
    blocks.register(new_table, prompt_block_hashes(new, 2), 2)
    blocks.free(new_table)

    blocks.allocate([], 2)  # one block needed: the least recently freed cached one goes

    assert blocks.cached_prefix(prompt_block_hashes(new, 2), 5) == new_blocks  # freed last, kept
    assert len(blocks.cached_prefix(prompt_block_hashes(old, 2), 5)) < 2  # freed first, evicted
    with pytest.raises(OutOfBlocksError):
        blocks.allocate([], 2 * 4)


def test_prefix_caching_off_finds_nothing() -> None:
    blocks = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    hashes = prompt_block_hashes(list(range(12)), 4)
    table = blocks.allocate([], 12)
    blocks.register(table, hashes, 3)
    assert blocks.cached_prefix(hashes, 12) == [] and blocks.num_cached == 0


# ----- scheduler ----------------------------------------------------------------------------------
def seq(request_id: str, prompt: list[int], max_tokens: int = 64) -> Sequence:
    return Sequence(request_id, prompt, SamplingParams(max_tokens=max_tokens))


def run(scheduler: Scheduler, steps: int = 1) -> None:
    for _ in range(steps):
        run_step(scheduler)


def test_a_request_waits_until_blocks_for_its_prompt_and_a_decode_token_are_free() -> None:
    scheduler = Scheduler(4, 8, 64, BlockManager(num_blocks=4, block_size=4))
    big, small = seq("big", list(range(11))), seq("small", list(range(100, 104)))
    scheduler.add(big)
    scheduler.add(small)

    run(scheduler)  # big: 12 tokens = 3 blocks; small needs 5 tokens = 2 blocks, 1 is free

    assert [s.request_id for s in scheduler.running] == ["big"] and list(scheduler.waiting) == [small]
    big.finish_reason = "stop"
    run(scheduler)
    assert [s.request_id for s in scheduler.running] == ["small"]
    small.finish_reason = "stop"
    plan = scheduler.schedule()
    assert plan is not None and plan.freed == [small] and scheduler.schedule() is None
    scheduler.blocks.check_consistency([])
    assert scheduler.blocks.num_free == 4


def test_when_decoding_runs_out_of_blocks_the_youngest_sequence_is_preempted_and_recomputed() -> None:
    scheduler = Scheduler(4, 8, 64, BlockManager(num_blocks=4, block_size=4))
    old, young = seq("old", [1, 2, 3]), seq("young", [4, 5, 6])
    scheduler.add(old)
    scheduler.add(young)
    run(scheduler, 3)  # each: 3 prompt tokens + 1 decode = 1 block each, then both cross into block 2
    assert scheduler.blocks.num_free == 0

    run(scheduler, 4)  # old needs its 3rd block: young is preempted, old keeps decoding

    assert scheduler.num_preemptions == 1 and list(scheduler.waiting) == [young]
    assert young.num_computed == 0 and young.block_table == []
    generated = list(young.output)
    # Resuming recomputes prompt + all but the last generated token, whose logits are not needed again.
    assert young.prefill_len == 3 + len(generated) - 1
    old.finish_reason = "length"
    plan = scheduler.schedule()
    assert plan is not None and [w.seq for w in plan.prefill] == [young]
    assert plan.prefill[0].length == young.prefill_len and not plan.prefill[0].wants_logits
    assert young.tokens(0, young.prefill_len) == [4, 5, 6, *generated[:-1]]


# ----- engine: greedy tokens with paging and prefix caching, on and off ---------------------------
def make_engine(model_dir: Path, **overrides) -> InferenceEngine:
    settings = dict(model_dir=model_dir, dtype="float32", max_batch_size=16, max_waiting=64, max_model_len=256,
                    max_num_batched_tokens=64, num_threads=1)
    settings.update(overrides)
    engine = start_engine(EngineConfig(**settings), environ={})
    assert engine is not None
    return engine


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


async def tokens(engine: InferenceEngine, request_id: str, prompt: list[int], n: int) -> list[int]:
    return [e.token_id async for e in engine.generate(GenerationRequest(request_id, prompt, greedy(n)))
            if e.token_id is not None]


def shared_prefix_workload(count: int = 16) -> tuple[list[list[int]], list[int]]:
    """Prompts of mixed lengths, most extending one of two 'system prompts' (37 and 50 tokens)."""
    generator = torch.Generator().manual_seed(11)
    systems = [torch.randint(3, 512, (n,), generator=generator).tolist() for n in (37, 50)]
    prompts = []
    for i in range(count):
        tail = torch.randint(3, 512, (1 + (7 * i) % 29,), generator=generator).tolist()
        prompts.append(tail if i % 5 == 4 else systems[i % 2] + tail)
    return prompts, [3 + (5 * i) % 19 for i in range(count)]


def run_workload(engine: InferenceEngine, prompts: list[list[int]], lengths: list[int], concurrent: bool
                 ) -> list[list[int]]:
    async def go() -> list[list[int]]:
        if concurrent:
            return list(await asyncio.gather(*(tokens(engine, f"c{i}", p, n)
                                               for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)))))
        return [await tokens(engine, f"s{i}", p, n) for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))]

    return asyncio.run(go())


def wait_idle(engine: InferenceEngine) -> None:
    async def go() -> None:
        for _ in range(200):
            if not engine.num_running:
                return
            await asyncio.sleep(0.01)

    asyncio.run(go())


def test_greedy_tokens_are_the_same_with_prefix_caching_and_preemption_as_without(tiny_model_dir: Path) -> None:
    prompts, lengths = shared_prefix_workload()
    # Reference: no prefix cache, one request at a time, a roomy pool.
    reference_engine = make_engine(tiny_model_dir, enable_prefix_caching=False)
    try:
        reference = run_workload(reference_engine, prompts, lengths, concurrent=False)
        assert reference_engine.prefix_cache_hit_tokens == 0
    finally:
        asyncio.run(reference_engine.shutdown())

    # Prefix caching on, continuous batching, and a pool of 24 blocks (384 tokens) for 16 requests of up
    # to 97 tokens: admission waits for memory and decoding preempts.
    engine = make_engine(tiny_model_dir, num_kv_blocks=24, max_model_len=128)
    try:
        run_workload(engine, [prompts[0], prompts[1]], [1, 1], concurrent=False)  # warm the two system prompts
        batched = run_workload(engine, prompts, lengths, concurrent=True)
        # Three unrelated 120-token prompts need all 24 blocks: every cached system-prompt block is evicted
        # (and overwritten); the system prompts must then be recomputed, not read from stale blocks.
        generator = torch.Generator().manual_seed(5)
        flush = [torch.randint(3, 512, (120,), generator=generator).tolist() for _ in range(3)]
        run_workload(engine, flush, [8, 8, 8], concurrent=True)
        again = run_workload(engine, prompts[:4], lengths[:4], concurrent=False)
        wait_idle(engine)
        blocks = engine.kv_blocks
        hits, preemptions = engine.prefix_cache_hit_tokens, engine.num_preemptions
        free_after, num_blocks = blocks.num_free, blocks.num_blocks
        blocks.check_consistency([])
    finally:
        asyncio.run(engine.shutdown())

    assert batched == reference
    assert again == reference[:4]
    assert hits >= 32  # at least the first request reused its system prompt's two full blocks
    assert free_after == num_blocks  # no block leaked
    print(f"prefix-cache hit tokens {hits}, preemptions {preemptions}")  # forced and asserted in the TP probe


def test_a_request_longer_than_the_kv_pool_is_refused_naming_the_numbers(tiny_model_dir: Path) -> None:
    engine = make_engine(tiny_model_dir, num_kv_blocks=4, max_model_len=None)
    try:
        assert engine.max_model_len == 64  # the tiny model's 1,024 positions, lowered to 4 blocks x 16
        with pytest.raises(ValueError, match=r"prompt \(60 tokens\) \+ max_tokens \(10\) exceeds the model's "
                                             r"context of 64 tokens \(all the KV cache holds: 4 blocks of 16"):
            engine.validate_request(GenerationRequest("r", list(range(3, 63)), greedy(10)))
    finally:
        asyncio.run(engine.shutdown())
