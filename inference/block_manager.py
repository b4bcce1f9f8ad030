"""Rank 0's bookkeeping of the paged KV pool: free blocks, block tables, prefix cache (no tensors).

Every rank holds the same pool (`inference.kv_cache.PagedKVCache`); only rank 0 decides which
sequence uses which block, and the step it broadcasts carries the resulting block tables, so all
ranks read and write identical rows.

Prefix caching (after vLLM's automatic prefix caching): once a sequence has computed a *full*
block of its prompt, the block is registered under a hash of every prompt token up to and
including that block (a chain: the block's tokens plus the previous block's hash). A later prompt
that starts with the same tokens takes those blocks read-only (reference counted) and prefills
only the rest. A block whose reference count drops to 0 keeps its K/V and stays findable, in an
LRU list of evictable blocks; allocation takes never-hashed free blocks first, then evicts the
least recently used cached block. Only full prompt blocks are shared, and a prompt never takes its
last token from the cache (the forward must produce that token's logits), so a sequence only ever
writes into blocks it owns alone.

The hash is SHA-256, not Python's `hash()`: a colliding prompt would be served another tenant's
cached K/V, and a 64-bit hash makes collisions practical to craft (vLLM made SHA-256 its default
in v0.10.2 for this reason: https://github.com/vllm-project/vllm/pull/15297, /pull/29261).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold `num_tokens` tokens."""
    return -(-num_tokens // block_size)


def prompt_block_hashes(tokens: Sequence[int], block_size: int) -> list[bytes]:
    """Chained SHA-256 of each full block of `tokens` (hash i covers tokens[: (i + 1) * block_size])."""
    hashes: list[bytes] = []
    previous = b""
    for i in range(len(tokens) // block_size):
        block = array("q", tokens[i * block_size : (i + 1) * block_size]).tobytes()
        previous = hashlib.sha256(previous + block).digest()
        hashes.append(previous)
    return hashes


class OutOfBlocksError(RuntimeError):
    """No free block is left (the scheduler preempts a sequence instead of raising this)."""


class BlockManager:
    """Free list, reference counts and the prefix-cache index of `num_blocks` blocks."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # never-hashed free blocks (pop = lowest)
        self._refcount = [0] * num_blocks
        self._hash_of: dict[int, bytes] = {}  # block -> its prefix hash, for cached blocks
        self._cached: dict[bytes, int] = {}  # prefix hash -> block
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks with refcount 0, LRU first
        self.hits = 0  # prompt tokens served from the cache (a counter for logs, tests and /metrics)
        self.queries = 0  # prompt tokens looked up in the cache (vLLM's prefix_cache_queries)

    @property
    def num_free(self) -> int:
        """Blocks an allocation may take now (free, plus cached blocks no sequence uses)."""
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        """Share of the pool in use by sequences (cached blocks nobody uses count as free, as in vLLM)."""
        return 1.0 - self.num_free / self.num_blocks

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def cached_prefix(self, hashes: list[bytes], prompt_len: int) -> list[int]:
        """The cached blocks a prompt can start from (none when prefix caching is off).

        At most (prompt_len - 1) tokens: the last prompt token is always computed, for its logits.
        """
        if not self.enable_prefix_caching:
            return []
        usable = (prompt_len - 1) // self.block_size
        found: list[int] = []
        for digest in hashes[:usable]:
            block = self._cached.get(digest)
            if block is None:
                break
            found.append(block)
        return found

    def blocks_needed(self, cached: list[int], num_tokens: int) -> int:
        """Free blocks an allocation of `num_tokens` tokens starting from `cached` takes from `num_free`."""
        reused_evictable = sum(1 for b in cached if self._refcount[b] == 0)
        return blocks_for(num_tokens, self.block_size) - len(cached) + reused_evictable

    def allocate(self, cached: list[int], num_tokens: int, prompt_len: int = 0) -> list[int]:
        """A block table for `num_tokens` tokens: `cached` shared (refcount + 1), the rest new.

        `prompt_len` is what the prefix cache was asked for (counted in `queries` when caching is on).
        """
        if self.blocks_needed(cached, num_tokens) > self.num_free:
            raise OutOfBlocksError(f"{num_tokens} tokens need more than the {self.num_free} free blocks")
        if self.enable_prefix_caching:
            self.queries += prompt_len
        for block in cached:
            if self._refcount[block] == 0:
                del self._evictable[block]
            self._refcount[block] += 1
        self.hits += len(cached) * self.block_size
        table = list(cached)
        for _ in range(blocks_for(num_tokens, self.block_size) - len(cached)):
            table.append(self._take())
        return table

    def append_block(self, table: list[int]) -> None:
        """Grow a table by one block (raises OutOfBlocksError when none is free)."""
        if not self.num_free:
            raise OutOfBlocksError("no free KV block")
        table.append(self._take())

    def free(self, table: list[int]) -> None:
        """Release a sequence's blocks; cached ones stay findable until evicted (LRU)."""
        # Reversed: a sequence's later blocks are evicted before its earlier ones, which other
        # prompts are likelier to share (vLLM frees in the same order).
        for block in reversed(table):
            self._refcount[block] -= 1
            if self._refcount[block] == 0:
                if block in self._hash_of:
                    self._evictable[block] = None
                else:
                    self._free.append(block)
        table.clear()

    def register(self, table: list[int], hashes: list[bytes], num_full_blocks: int) -> None:
        """Make the first `num_full_blocks` blocks of `table` (whose K/V are computed) findable."""
        if not self.enable_prefix_caching:
            return
        for block, digest in zip(table[:num_full_blocks], hashes[:num_full_blocks], strict=False):
            if block in self._hash_of or digest in self._cached:
                continue  # already cached, or the same prefix computed twice: keep the first
            self._hash_of[block] = digest
            self._cached[digest] = block

    def _take(self) -> int:
        if self._free:
            block = self._free.pop()
        else:
            block, _ = self._evictable.popitem(last=False)  # least recently used
            del self._cached[self._hash_of.pop(block)]
        self._refcount[block] = 1
        return block

    def check_consistency(self, tables: list[list[int]]) -> None:
        """Assert the books balance against the live `tables` (tests and debugging)."""
        counts = [0] * self.num_blocks
        for table in tables:
            for block in table:
                counts[block] += 1
        if counts != self._refcount:
            raise AssertionError("reference counts do not match the live block tables")
        idle = [b for b in range(self.num_blocks) if counts[b] == 0]
        if sorted(idle) != sorted([*self._free, *self._evictable]):
            raise AssertionError("free + evictable blocks are not exactly the unused blocks")
