"""The KV block manager's refusals and accounting at their edges (no torch, no engine: fast enough to run under
mutation testing; the scheduler-level paging tests are in test_kv_paging.py)."""

from __future__ import annotations

import pytest

from inference.block_manager import BlockManager, OutOfBlocksError, blocks_for, prompt_block_hashes


def _cache(blocks: BlockManager, prompt: list[int]) -> list[int]:
    """Compute `prompt` once (register its full blocks), free it; return the blocks it left cached."""
    hashes = prompt_block_hashes(prompt, blocks.block_size)
    table = blocks.allocate([], len(prompt))
    cached = list(table)
    blocks.register(table, hashes, len(hashes))
    blocks.free(table)
    return cached


def test_reusing_an_evictable_cached_prefix_on_a_nearly_full_pool_is_refused_cleanly() -> None:
    # 4 blocks of 2. A 5-token prompt leaves 2 cached (evictable) blocks, 2 never-hashed free ones.
    blocks = BlockManager(num_blocks=4, block_size=2)
    prompt = [1, 2, 3, 4, 5]
    _cache(blocks, prompt)
    hold = blocks.allocate([], 3)  # another sequence takes the 2 never-hashed blocks
    assert blocks.num_free == 2  # only the 2 evictable cached blocks remain
    cached = blocks.cached_prefix(prompt_block_hashes(prompt, 2), len(prompt))
    assert len(cached) == 2

    # Reusing both cached blocks takes them out of the evictable list: 6 tokens need a 3rd block, none is left.
    assert blocks.blocks_needed(cached, 6) == 3
    with pytest.raises(OutOfBlocksError):
        blocks.allocate(cached, 6)
    blocks.check_consistency([hold])  # the refusal changed nothing

    # 4 tokens fit in exactly the 2 cached blocks.
    assert blocks.blocks_needed(cached, 4) == 2
    table = blocks.allocate(cached, 4)
    assert table == cached and blocks.num_free == 0
    blocks.check_consistency([hold, table])


def test_a_cached_block_another_sequence_uses_costs_no_free_block() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2)
    prompt = [1, 2, 3, 4, 5]
    hashes = prompt_block_hashes(prompt, 2)
    first = blocks.allocate([], 5)
    blocks.register(first, hashes, 2)
    cached = blocks.cached_prefix(hashes, 5)
    assert cached == first[:2]
    assert blocks.blocks_needed(cached, 5) == 1  # shared, in use: only the 3rd block is new
    second = blocks.allocate(cached, 5)
    assert blocks.num_free == 0
    blocks.check_consistency([first, second])
    assert blocks.hits == 4


def test_blocks_for_rounds_up() -> None:
    assert [blocks_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


@pytest.mark.parametrize(("num_blocks", "block_size"), [(0, 4), (4, 0), (-1, 4)])
def test_an_empty_pool_or_block_is_refused(num_blocks: int, block_size: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        BlockManager(num_blocks, block_size)


def test_a_pool_of_one_block_of_one_token_is_allowed() -> None:
    blocks = BlockManager(1, 1)
    assert blocks.allocate([], 1) == [0] and blocks.num_free == 0


def test_append_block_refuses_when_nothing_is_free_and_takes_the_last_one_otherwise() -> None:
    blocks = BlockManager(num_blocks=2, block_size=2)
    table = blocks.allocate([], 2)
    blocks.append_block(table)
    assert len(table) == 2 and blocks.num_free == 0
    with pytest.raises(OutOfBlocksError):
        blocks.append_block(table)
    blocks.check_consistency([table])


def test_allocation_of_exactly_the_free_blocks_succeeds_and_one_more_token_is_refused() -> None:
    blocks = BlockManager(num_blocks=3, block_size=4)
    with pytest.raises(OutOfBlocksError, match="13 tokens need more than the 3 free blocks"):
        blocks.allocate([], 13)
    assert blocks.num_free == 3 and blocks.usage == 0.0
    table = blocks.allocate([], 12)
    assert sorted(table) == [0, 1, 2] and blocks.usage == 1.0


def test_the_last_prompt_token_never_comes_from_the_cache() -> None:
    blocks = BlockManager(num_blocks=8, block_size=2)
    prompt = [1, 2, 3, 4]
    cached = _cache(blocks, prompt)
    hashes = prompt_block_hashes(prompt, 2)
    assert blocks.cached_prefix(hashes, 4) == cached[:1]  # 3 usable tokens: one full block
    assert blocks.cached_prefix(hashes, 5) == cached[:2]
    assert blocks.cached_prefix(hashes, 1) == []


def test_queries_and_hits_count_prompt_tokens_only_with_caching_on() -> None:
    on = BlockManager(num_blocks=8, block_size=2)
    on.allocate([], 5, prompt_len=5)
    assert (on.queries, on.hits) == (5, 0)
    off = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    off.allocate([], 5, prompt_len=5)
    assert (off.queries, off.hits) == (0, 0)
    off.register([0, 1], prompt_block_hashes([1, 2, 3, 4], 2), 2)
    assert off.num_cached == 0


def test_the_same_prefix_registered_twice_keeps_the_first_block() -> None:
    blocks = BlockManager(num_blocks=8, block_size=2)
    hashes = prompt_block_hashes([1, 2, 3], 2)
    a = blocks.allocate([], 3)
    b = blocks.allocate([], 3)
    blocks.register(a, hashes, 1)
    blocks.register(b, hashes, 1)
    assert blocks.num_cached == 1 and blocks.cached_prefix(hashes, 3) == a[:1]
    blocks.free(b)  # b's first block was never hashed: back to the plain free list
    blocks.free(a)
    blocks.check_consistency([])
    assert blocks.num_free == 8 and blocks.num_cached == 1


def test_check_consistency_notices_books_that_do_not_balance() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2)
    table = blocks.allocate([], 4)
    with pytest.raises(AssertionError, match="reference counts"):
        blocks.check_consistency([])
    with pytest.raises(AssertionError, match="reference counts"):
        blocks.check_consistency([table, table])
    blocks._refcount[table[0]] = 0  # a block nobody uses that is in neither the free nor the evictable list
    with pytest.raises(AssertionError, match="free \\+ evictable"):
        blocks.check_consistency([table[1:]])


def test_hits_and_queries_accumulate_over_allocations() -> None:
    blocks = BlockManager(num_blocks=8, block_size=2)
    prompt = [1, 2, 3, 4, 5]
    hashes = prompt_block_hashes(prompt, 2)
    first = blocks.allocate([], 5, prompt_len=5)
    blocks.register(first, hashes, 2)
    blocks.allocate(blocks.cached_prefix(hashes, 5), 5, prompt_len=5)
    blocks.allocate(blocks.cached_prefix(hashes, 5), 5, prompt_len=5)
    assert (blocks.queries, blocks.hits) == (15, 8)


def test_a_prompt_that_starts_from_the_cache_registers_the_blocks_it_computed_after_it() -> None:
    blocks = BlockManager(num_blocks=8, block_size=2)
    short, longer = [1, 2, 3], [1, 2, 3, 4, 5]
    first = blocks.allocate([], 3)
    blocks.register(first, prompt_block_hashes(short, 2), 1)
    hashes = prompt_block_hashes(longer, 2)
    cached = blocks.cached_prefix(hashes, 5)
    second = blocks.allocate(cached, 5)
    blocks.register(second, hashes, 2)  # block 0 is already cached; block 1 is new and must become findable
    assert blocks.cached_prefix(hashes, 5) == second[:2] and blocks.num_cached == 2


def test_append_block_says_why_it_refuses() -> None:
    blocks = BlockManager(num_blocks=1, block_size=2)
    table = blocks.allocate([], 2)
    with pytest.raises(OutOfBlocksError, match="^no free KV block$"):
        blocks.append_block(table)
