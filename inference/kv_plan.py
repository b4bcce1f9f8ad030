"""The KV block pool's arithmetic, one copy for the engine at start-up and for `plan` before deploying.

The engine (inference/model_runner.py) measures the GPU it runs on and calls :func:`gpu_kv_budget_bytes` and
:func:`plan_kv_pool` with what it measured; the stack's GPU-memory check (stacks/gpu_memory.py) calls the same two
functions with what the plan knows (the GPU's size, the model's shape, the serving settings), so the two cannot
disagree on how many blocks a budget holds or what context length results.

Plain Python: the platform imports this without torch (tests/test_serving_settings.py checks it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import defaults

log = logging.getLogger("inferforge.engine")

GIB = 1024**3
CPU_KV_CACHE_DEFAULT_BYTES = int(defaults.CPU_KV_CACHE_GIB * GIB)
# CUDA: room left, inside gpu_memory_utilization, for one step's activations, logits and the
# cuBLAS/NCCL workspaces (vLLM profiles a forward for this; a fixed reserve keeps start-up simple).
KV_ACTIVATION_RESERVE_BYTES = 2 * GIB


@dataclass(frozen=True)
class KVPoolPlan:
    """The KV block pool of every rank and the context length it allows."""

    num_blocks: int
    block_size: int
    bytes_per_token: int  # on one rank (its share of the KV heads)
    max_model_len: int

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


def plan_kv_pool(
    *, num_layers: int, kv_heads: int, head_dim: int, dtype_bytes: int, world_size: int, budget_bytes: int,
    block_size: int, max_batch_size: int, model_max_len: int, requested_max_model_len: int | None,
    num_blocks_override: int | None = None,
) -> KVPoolPlan:
    """Blocks that fit `budget_bytes` on one rank, and the context length that results.

    A rank holds ceil(kv_heads / world_size) KV heads (AutoTP gives the first ranks the extra head
    when tp does not divide them; the largest shard is what must fit). The pool never exceeds what
    max_batch_size sequences of max_model_len tokens can use at once. Raises ValueError naming the
    numbers when an explicit max_model_len does not fit the pool. `num_blocks_override` replaces
    the budget arithmetic (and the cap).
    """
    local_heads = -(-kv_heads // world_size)
    per_token = kv_bytes_per_token(num_layers, local_heads, head_dim, dtype_bytes)
    wanted_len = requested_max_model_len or model_max_len
    if wanted_len > model_max_len:
        raise ValueError(f"max_model_len {wanted_len} exceeds the model's max_position_embeddings {model_max_len}")
    blocks_per_seq = -(-wanted_len // block_size)
    num_blocks = min(budget_bytes // (per_token * block_size), max_batch_size * blocks_per_seq)
    if num_blocks_override is not None:
        num_blocks = num_blocks_override
        budget_bytes = num_blocks * block_size * per_token
    if num_blocks < 1:
        raise ValueError(
            f"the KV cache budget of {budget_bytes / GIB:.3f} GiB per rank holds no block of {block_size} tokens "
            f"({per_token * block_size} bytes); raise --kv-cache-memory (or --gpu-memory-utilization)"
        )
    capacity = num_blocks * block_size
    if wanted_len > capacity:
        if requested_max_model_len is not None:
            raise ValueError(
                f"max_model_len {wanted_len} needs {blocks_per_seq} KV blocks of {block_size} tokens "
                f"({wanted_len * per_token / GIB:.3f} GiB per rank) but the KV cache holds {num_blocks} blocks "
                f"({capacity} tokens, {budget_bytes / GIB:.3f} GiB budget); raise --kv-cache-memory or lower "
                "--max-model-len"
            )
        log.warning("max_model_len lowered from the model's %d to %d tokens: all the KV cache holds "
                    "(raise --kv-cache-memory for more)", wanted_len, capacity)
        wanted_len = capacity
    return KVPoolPlan(num_blocks, block_size, per_token, wanted_len)


def kv_bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """K and V bytes one token occupies on one rank: 2 x layers x kv_heads x head_dim x dtype bytes."""
    return 2 * num_layers * kv_heads * head_dim * dtype_bytes


def gpu_kv_budget_bytes(*, total_bytes: int, used_bytes: int, gpu_memory_utilization: float) -> int:
    """The KV pool's budget on one GPU: the share the server may fill, less what is already in use (the weights,
    the CUDA context) and the activation reserve. Negative when nothing is left."""
    return int(gpu_memory_utilization * total_bytes) - used_bytes - KV_ACTIVATION_RESERVE_BYTES
