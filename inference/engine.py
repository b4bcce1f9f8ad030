"""The generation engine: model loading and sharding, the step loop, and rank 0's `AsyncEngine`.

Entry point for the serving process, called on every rank::

    engine = start_engine(EngineConfig(model_dir=...))   # launched as described in inference.distributed
    if engine is None:           # follower rank: ran the follower loop until shutdown
        sys.exit(0)
    engine.add_death_callback(lambda exc: os._exit(1))  # the server's choice: exit non-zero on rank death
    ... serve HTTP with `engine` (it implements inference.engine_api.AsyncEngine) ...
    await engine.shutdown()

Loading: `AutoModelForCausalLM.from_pretrained(dir, dtype=...)` on the CPU, then with more than one
rank `deepspeed.init_inference(model, tensor_parallel={"tp_size": world_size}, dtype=...,
replace_with_kernel_inject=False)` (AutoTP). AutoTP slices each Linear on the host and moves only the
rank's shard to the accelerator (`LinearLayer`/`LinearAllreduce`), then moves the small unsharded
rest (embeddings, norms); so a GPU never holds a full copy, though host RAM briefly does on each
rank. Kernel injection is not used: it swaps the attention module for DeepSpeed's fused one with
its own single-batch KV cache, which cannot serve a continuously batched paged cache.
Attention runs through `inference.kv_cache.paged_attention`, registered as a transformers attention
implementation, so the model's own modules (sharded or not) run every step; K/V live in a paged block
pool sized from a memory budget (`plan_kv_pool`), whose blocks rank 0 hands out per sequence.

Threads: the step loop runs in a background thread on rank 0, so the HTTP event loop never waits on
a forward; token events are handed back to the event loop once per step. On the CPU the model is
loaded in a thread that ends before serving (`_in_passing_thread`), so that only the step thread
keeps an OpenMP worker pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import autotp_fixes, cpu_attention, cpu_gemm, defaults, fused, kv_cache, numba_jit, structured_output
from .block_manager import BlockManager
from .distributed import (
    CMD_BARRIER,
    CMD_HEARTBEAT,
    CMD_SHUTDOWN,
    CMD_STEP,
    FOLLOWER_FAILURE_EXIT_CODE,
    LaunchEnv,
    StepChannel,
    Watchdog,
    WireStep,
    exit_follower,
    exit_rank,
    init_process_groups,
)
from .engine_api import (
    EngineDeadError,
    EngineShuttingDownError,
    GenerationRequest,
    QueueFullError,
    TokenEvent,
)
from .sampling import sample_tokens
from .scheduler import Scheduler, Sequence, StepPlan

log = logging.getLogger("inferforge.engine")

# Rank 0's status when the start-up across ranks fails (the HTTP server's "engine failed" status).
STARTUP_FAILURE_EXIT_CODE = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16)."""
    return cpu_gemm.cpu_has_native(torch.bfloat16)


def resolve_dtype(name: str, device_type: str) -> torch.dtype:
    """The dtype to load and compute in; "auto" = bf16 where the hardware has it, else fp32.

    On CPUs without bf16 instructions (e.g. AVX2-only) PyTorch's bf16 GEMM is a slow generic kernel;
    the engine widens large products to fp32 (`inference.cpu_gemm`), which makes bf16 faster than
    fp32 at batch 1 there but still ~25% slower at 64 sequences, so "auto" keeps fp32 on such CPUs.
    """
    if name != "auto":
        return DTYPES[name]
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


@dataclass(frozen=True)
class EngineConfig:
    """How to load and run the model; every field is validated by `validate()`."""

    model_dir: str | Path
    """Local Hugging Face model directory (config.json, safetensors, tokenizer)."""
    model_name: str | None = None
    """Name served to clients (`/v1/models`); defaults to the directory name."""
    # Defaults: inference/defaults.py owns them (the CLI, the Kubernetes component and the stack config share them).
    dtype: str = defaults.DTYPE
    """Weights and activations dtype: float32, bfloat16, float16, or auto (bf16 where the hardware
    multiplies it natively: CUDA, AVX512-BF16/AMX CPUs; fp32 on other CPUs)."""
    max_batch_size: int = defaults.MAX_BATCH_SIZE
    """Most sequences running at once (fewer when the KV pool has no free blocks for more)."""
    max_waiting: int = defaults.MAX_WAITING
    """Most requests queued for a slot; beyond it admission raises QueueFullError (HTTP 429)."""
    max_model_len: int | None = None
    """Prompt + generated tokens per sequence; default the model's max_position_embeddings, lowered to
    what the KV pool holds (an explicit value the pool cannot hold is an error at start)."""
    kv_cache_memory_gib: float | None = None
    """KV block pool per rank in GiB; default: on CUDA what gpu_memory_utilization leaves after the
    weights, on the CPU 4 GiB (vLLM's VLLM_CPU_KVCACHE_SPACE default). Never more than
    max_batch_size sequences of max_model_len tokens need."""
    gpu_memory_utilization: float = defaults.GPU_MEMORY_UTILIZATION
    """CUDA only, when kv_cache_memory_gib is unset: the share of the GPU this server may fill
    (weights + KV pool + KV_ACTIVATION_RESERVE_BYTES for activations), as vLLM's flag of that name."""
    num_kv_blocks: int | None = None
    """Fixes the pool's block count instead of deriving it from the memory budget (vLLM's
    num_gpu_blocks_override): for tests and comparisons that need the same pool at any TP size."""
    kv_block_size: int = defaults.KV_BLOCK_SIZE
    """Tokens per KV block (vLLM's default block size)."""
    enable_prefix_caching: bool = defaults.ENABLE_PREFIX_CACHING
    """Share the KV blocks of identical prompt prefixes between requests (and keep them after)."""
    max_num_batched_tokens: int = defaults.MAX_NUM_BATCHED_TOKENS
    """Token budget of one forward (decode tokens + prompt chunks); >= max_batch_size."""
    collective_timeout_s: float = 60.0
    """A collective or step slower than this means a rank is dead (must exceed the longest step)."""
    heartbeat_interval_s: float | None = None
    """Idle rank 0 pings followers this often; default min(5, collective_timeout_s / 4)."""
    num_threads: int | None = None
    """torch intra-op threads per rank; default the rank's cores (cores / ranks when not pinned)."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    eos_token_ids: tuple[int, ...] | None = None
    """Token ids that end a request (finish_reason "stop"); default the model's eos_token_id."""
    seed: int = 0
    """Seed of the shared generator used by sampled requests that carry no seed of their own."""
    retry_after_s: float = 1.0
    """Retry-After hint carried by QueueFullError."""
    gil_switch_interval_s: float | None = 0.0005
    """sys.setswitchinterval on rank 0 (None keeps Python's 5 ms): the step thread re-takes the GIL
    between torch ops while the event loop thread streams tokens; a shorter interval keeps it from
    waiting out the event loop's bursts."""
    cpu_widen_min_rows: int = cpu_gemm.DEFAULT_MIN_ROWS
    """On a CPU without a native bf16/fp16 GEMM, a bf16/fp16 linear product of at least this many
    token rows is computed in fp32 (`inference.cpu_gemm`: same fp32 accumulation, ~3x faster at 64
    rows); 0 disables. Ignored on GPUs, in fp32, and on CPUs with AVX512-BF16/AMX."""
    fuse_projections: bool = True
    """One GEMM for q/k/v and one for gate/up in Llama-architecture layers (`inference.fused`; same
    results, ~8% faster decode at batch 1 on the CPU); other architectures are left as they are."""
    pack_cpu_weights: bool = True
    """On the CPU (fp32, or bf16/fp16 where the CPU multiplies them natively), reorder every linear
    weight once into oneDNN's blocked layout and multiply with oneDNN (`inference.cpu_gemm`: 1.5-5x
    faster products than F.linear's MKL path on AMD EPYC; the original weights are freed)."""
    cpu_attention_kernel: bool = True
    """On the CPU in fp32, decode attention reads K/V in place from the paged pool in one compiled
    pass (`inference.cpu_attention`) instead of gathering it into a buffer for two matmuls."""
    cpu_matvec_kernel: bool = True
    """With packed fp32 weights, linear products of 1-2 token rows stream the packed weights in a
    compiled loop (`inference.cpu_gemv`: ~1.3x oneDNN's read rate) instead of oneDNN's matmul."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and what is allowed."""
        if not Path(self.model_dir).is_dir():
            raise ValueError(f"model_dir {str(self.model_dir)!r} is not a directory")
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device {self.device!r} is not one of auto, cpu, cuda")
        for name in ("max_batch_size", "max_waiting", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.kv_cache_memory_gib is not None and not self.kv_cache_memory_gib > 0:
            raise ValueError(f"kv_cache_memory_gib must be > 0 (GiB per rank), got {self.kv_cache_memory_gib}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if not 1 <= self.kv_block_size <= 1024:
            raise ValueError(f"kv_block_size must be in [1, 1024] tokens, got {self.kv_block_size}")
        if self.max_num_batched_tokens < self.max_batch_size:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_batch_size "
                f"({self.max_batch_size})"
            )
        if self.collective_timeout_s <= 0:
            raise ValueError(f"collective_timeout_s must be > 0, got {self.collective_timeout_s}")
        if self.gil_switch_interval_s is not None and self.gil_switch_interval_s <= 0:
            raise ValueError(f"gil_switch_interval_s must be > 0 or None, got {self.gil_switch_interval_s}")
        if self.cpu_widen_min_rows < 0:
            raise ValueError(f"cpu_widen_min_rows must be >= 0 (0 disables), got {self.cpu_widen_min_rows}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")

    @property
    def heartbeat_s(self) -> float:
        if self.heartbeat_interval_s is not None:
            return self.heartbeat_interval_s
        return min(5.0, self.collective_timeout_s / 4)


def resolve_device(cfg: EngineConfig, env: LaunchEnv) -> torch.device:
    """The device this rank computes on."""
    wants_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def default_num_threads(env: LaunchEnv) -> int:
    """Intra-op threads so the ranks of one node do not over-subscribe its cores."""
    cores = len(os.sched_getaffinity(0))
    if cores >= (os.cpu_count() or cores):
        # Not pinned by the launcher: every rank sees every core, so share them out.
        return max(1, cores // env.local_size)
    return cores


def model_eos_token_ids(model_dir: str | Path, hf_config: object) -> tuple[int, ...]:
    """End-of-sequence ids: config.json's `eos_token_id` united with generation_config.json's.

    Chat models often end a turn with another id than the one config.json names (Llama 3's
    `<|eot_id|>`, listed only in generation_config.json), as transformers' `generate` and vLLM know.
    """
    from transformers import GenerationConfig

    ids: set[int] = set()
    sources = [getattr(hf_config, "eos_token_id", None)]
    if (Path(model_dir) / "generation_config.json").is_file():
        sources.append(GenerationConfig.from_pretrained(model_dir).eos_token_id)
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return tuple(sorted(ids))


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
    per_token = kv_cache.kv_bytes_per_token(num_layers, local_heads, head_dim, dtype_bytes)
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


def kv_budget_bytes(cfg: EngineConfig, device: torch.device, group: object | None) -> int:
    """This TP group's KV budget per rank: explicit, or measured on CUDA (the minimum over ranks)."""
    if cfg.kv_cache_memory_gib is not None:
        return int(cfg.kv_cache_memory_gib * GIB)
    if device.type != "cuda":
        return CPU_KV_CACHE_DEFAULT_BYTES
    free, total = torch.cuda.mem_get_info(device)
    budget = int(cfg.gpu_memory_utilization * total) - (total - free) - KV_ACTIVATION_RESERVE_BYTES
    if group is not None:
        # Ranks measure slightly different usage; every rank must size the same pool.
        import torch.distributed as dist

        shared = torch.tensor([budget], dtype=torch.int64)
        dist.all_reduce(shared, op=dist.ReduceOp.MIN, group=group)
        budget = int(shared.item())
    return max(budget, 0)


class ModelRunner:
    """Loads (and shards) the model on this rank and runs one packed forward per step."""

    def __init__(self, cfg: EngineConfig, env: LaunchEnv, device: torch.device, group: object | None = None) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        self.device = device
        self.dtype = resolve_dtype(cfg.dtype, device.type)
        config = AutoConfig.from_pretrained(cfg.model_dir)
        self.hf_config = config
        limit = getattr(config, "max_position_embeddings", None) or defaults.STACK_MAX_MODEL_LEN
        if cfg.max_model_len is not None and cfg.max_model_len > limit:
            raise ValueError(f"max_model_len {cfg.max_model_len} exceeds the model's max_position_embeddings {limit}")
        model = AutoModelForCausalLM.from_pretrained(
            cfg.model_dir, dtype=self.dtype, attn_implementation=kv_cache.ATTENTION_NAME
        )
        model.eval()
        model.config.use_cache = False
        if device.type == "cuda":
            # cuDNN's SDPA backend builds an execution plan per new key length (~5 ms per layer, measured
            # on an H100), and decode lengths change every step; flash / memory-efficient kernels do not.
            torch.backends.cuda.enable_cudnn_sdp(False)
        if env.world_size > 1:
            import deepspeed

            # AutoTP: shards Linear layers on the host and moves each shard to this rank's device.
            ds_engine = deepspeed.init_inference(
                model,
                tensor_parallel={"tp_size": env.world_size},
                dtype=self.dtype,
                replace_with_kernel_inject=False,
            )
            model = ds_engine.module
            autotp_fixes.localize_attention_configs(model)
        else:
            model.to(device)
        if cfg.fuse_projections:
            fused.fuse_projections(model)  # after sharding: each rank fuses its own shards
        if cfg.pack_cpu_weights and cpu_gemm.packing_applies(device, self.dtype):
            # The matrix-vector kernel reads fp32 weights only (Numba has no bfloat16).
            count = cpu_gemm.pack_linears(model, cfg.cpu_matvec_kernel and self.dtype == torch.float32)
            log.info("oneDNN prepacked weights: %d linear products", count)
        self.model = model
        self.vocab_size = config.vocab_size
        # Steps with fewer token rows keep the 16-bit kernel (bandwidth-bound matrix-vector products).
        self.widen_min_rows = cfg.cpu_widen_min_rows if cpu_gemm.widening_applies(device, self.dtype) else 0
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.kv_pool = plan_kv_pool(
            num_layers=config.num_hidden_layers, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim, dtype_bytes=torch.empty((), dtype=self.dtype).element_size(),
            world_size=env.world_size, budget_bytes=kv_budget_bytes(cfg, device, group),
            block_size=cfg.kv_block_size, max_batch_size=cfg.max_batch_size, model_max_len=limit,
            requested_max_model_len=cfg.max_model_len, num_blocks_override=cfg.num_kv_blocks,
        )
        self.max_model_len = self.kv_pool.max_model_len
        cpu_kernel = cfg.cpu_attention_kernel and cpu_attention.applies(device, self.dtype)
        if cpu_kernel:
            cpu_attention.warm_up()  # compile now, not in the first request's step
        self.cache = kv_cache.PagedKVCache(
            config.num_hidden_layers, self.kv_pool.num_blocks, self.kv_pool.block_size, self.dtype, device,
            cpu_decode_kernel=cpu_kernel,
        )
        log.info("KV cache: %d blocks of %d tokens (%d tokens, %.3f GiB per rank, %d bytes per token), "
                 "max_model_len %d", self.kv_pool.num_blocks, self.kv_pool.block_size, self.kv_pool.capacity_tokens,
                 self.kv_pool.capacity_tokens * self.kv_pool.bytes_per_token / GIB, self.kv_pool.bytes_per_token,
                 self.max_model_len)

    @torch.inference_mode()
    def execute(self, step: WireStep) -> torch.Tensor:
        """Run the forward of one step; returns float32 CPU logits of the rows that want them."""
        num_tokens = step.token_ids.numel()
        if num_tokens == 0:
            return torch.empty((0, self.vocab_size))
        block_size = self.cache.block_size
        n = step.num_decode
        positions = step.positions
        rows = []
        keep = list(range(n))
        meta = kv_cache.StepAttention(cache=self.cache, token_rows=positions, num_decode=n)
        if n:
            # Decode rows: one [n, max_blocks] table tensor; a row's positions past its length read
            # row 0 of the pool (finite values) and are masked out below.
            tables = step.block_tables[:n]
            width = max(len(t) for t in tables)
            table = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int64)
            decode_positions = positions[:n]
            hi = int(decode_positions.max())
            rows.append(table[torch.arange(n), decode_positions // block_size] * block_size
                        + decode_positions % block_size)
            span = torch.arange(hi + 1)
            meta.decode_rows = (table[:, span // block_size] * block_size + span % block_size).flatten().to(self.device)
            meta.decode_kv_len = hi + 1
            meta.decode_lengths = (decode_positions + 1).to(self.device)
            if int(decode_positions.min()) != hi:
                visible = span.unsqueeze(0) <= decode_positions.unsqueeze(1)
                meta.decode_mask = visible.view(n, 1, 1, hi + 1).to(self.device)
        offset = n
        for (start, length, wants_logits), blocks in zip(step.prefills, step.block_tables[n:], strict=True):
            table = torch.tensor(blocks, dtype=torch.int64)
            chunk_rows = kv_cache.block_rows(table, torch.arange(start + length), block_size)
            rows.append(chunk_rows[start:])
            if start > 0:
                # Chunk rows sit at positions start..start+length-1 and see every earlier position.
                query_positions = torch.arange(start, start + length).unsqueeze(1)
                mask = (torch.arange(start + length).unsqueeze(0) <= query_positions).to(self.device)
                meta.prefills.append(kv_cache.PrefillChunk(start, length, offset, chunk_rows.to(self.device), mask))
            elif (meta.fresh_groups and meta.fresh_groups[-1].length == length
                  and meta.fresh_groups[-1].offset + meta.fresh_groups[-1].count * length == offset):
                last = meta.fresh_groups[-1]
                meta.fresh_groups[-1] = kv_cache.FreshPromptGroup(last.offset, last.count + 1, length)
            else:
                meta.fresh_groups.append(kv_cache.FreshPromptGroup(offset, 1, length))
            if wants_logits:
                keep.append(offset + length - 1)
            offset += length
        meta.token_rows = torch.cat(rows).to(self.device)
        widen = self.widen_min_rows and num_tokens >= self.widen_min_rows
        with cpu_gemm.WidenedGemm(self.widen_min_rows) if widen else contextlib.nullcontext():
            out = self.model(
                input_ids=step.token_ids.view(1, -1).to(self.device),
                position_ids=positions.view(1, -1).to(self.device),
                use_cache=False,
                logits_to_keep=torch.tensor(keep, dtype=torch.int64, device=self.device),
                **{kv_cache.STEP_KWARG: meta},
            )
        return out.logits[0].float().cpu()

    def warm_up_step(self) -> WireStep:
        """A one-token prefill into block 0: allocates the KV pool and warms the kernels on every rank."""
        return WireStep(0, [(0, 1, True)], [[0]], torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))


_Item = TokenEvent | BaseException


class InferenceEngine:
    """Rank 0's engine: admission, the step loop thread, sampling, streaming (implements AsyncEngine)."""

    def __init__(self, cfg: EngineConfig, runner: ModelRunner, channel: StepChannel, tokenizer) -> None:
        self.cfg = cfg
        self.model_name = cfg.model_name or Path(cfg.model_dir).name
        self.max_model_len = runner.max_model_len
        self.dtype = runner.dtype  # resolved ("auto" becomes a concrete dtype)
        self.device = runner.device  # rank 0's
        self.tokenizer = tokenizer
        self.vocab_size = runner.vocab_size
        self._runner = runner
        self._channel = channel
        pool = runner.kv_pool
        self.kv_blocks = BlockManager(pool.num_blocks, pool.block_size, cfg.enable_prefix_caching)
        self._scheduler = Scheduler(cfg.max_batch_size, cfg.max_waiting, cfg.max_num_batched_tokens, self.kv_blocks)
        eos = cfg.eos_token_ids
        if eos is None:
            eos = model_eos_token_ids(cfg.model_dir, runner.hf_config)
        self.eos_token_ids: frozenset[int] = frozenset(eos)
        self._shared_generator = torch.Generator().manual_seed(cfg.seed)
        self._inbox: deque[Sequence] = deque()
        self._aborts: deque[str] = deque()
        self._live: dict[str, Sequence] = {}  # request_id -> sequence, touched on the event loop thread only
        self._wakeup = threading.Event()
        self._lock = threading.Lock()
        self._admitting = True
        self._stop_requested = False
        self._ready = False
        self._dead: BaseException | None = None
        self._death_callbacks: list[Callable[[BaseException], None]] = []
        self._step_id = 0
        self._watchdog = Watchdog(cfg.collective_timeout_s * 1.5, self._on_watchdog_expired)
        # The step thread computes with the intra-op thread count the loading thread was given
        # (OpenMP's setting is per thread; a new thread would start from the process default).
        self._num_threads = torch.get_num_threads()
        self._thread = threading.Thread(target=self._run, name="inferforge-engine", daemon=True)

    # ----- AsyncEngine -------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self._scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self._inbox) + len(self._scheduler.waiting)

    @property
    def num_preemptions(self) -> int:
        """Sequences preempted (and recomputed later) because the KV pool was full, since start."""
        return self._scheduler.num_preemptions

    @property
    def prefix_cache_hit_tokens(self) -> int:
        """Prompt tokens whose prefill was skipped because their K/V were in the prefix cache."""
        return self.kv_blocks.hits

    @property
    def prefix_cache_query_tokens(self) -> int:
        """Prompt tokens looked up in the prefix cache (0 with prefix caching off)."""
        return self.kv_blocks.queries

    @property
    def kv_cache_usage(self) -> float:
        """Share of the KV block pool in use by running sequences, 0..1."""
        return self.kv_blocks.usage

    @property
    def is_ready(self) -> bool:
        return self._ready and self._dead is None and self._thread.is_alive()

    @property
    def is_dead(self) -> bool:
        return self._dead is not None

    def add_death_callback(self, callback: Callable[[BaseException], None]) -> None:
        """Call `callback(error)` once (from an engine thread) when a rank dies or a step times out.

        Callbacks run before pending requests are failed with EngineDeadError, so they must not
        block for long; one that exits the process means the waiters never see the error."""
        self._death_callbacks.append(callback)
        if self._dead is not None:
            callback(self._dead)

    def validate_request(self, request: GenerationRequest) -> None:
        """Raise ValueError when the request cannot be served as given (HTTP 400)."""
        params = request.params
        prompt = request.prompt_token_ids
        if not prompt:
            raise ValueError("prompt_token_ids is empty; at least one token is required")
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {params.max_tokens}")
        if len(prompt) + params.max_tokens > self.max_model_len:
            pool = self._runner.kv_pool
            why = ""
            if self.max_model_len == pool.capacity_tokens:
                why = (f" (all the KV cache holds: {pool.num_blocks} blocks of {pool.block_size} tokens; "
                       "the server's --kv-cache-memory sets it)")
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the model's "
                f"context of {self.max_model_len} tokens{why}"
            )
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        if not params.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {params.temperature}")
        if not 0.0 < params.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
        if params.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables), got {params.top_k}")
        if not 0.0 <= params.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {params.min_p}")
        if params.logprobs is not None and not 0 <= params.logprobs <= self.vocab_size:
            raise ValueError(f"logprobs must be in [0, {self.vocab_size}] or None, got {params.logprobs}")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream one request's tokens (see AsyncEngine.generate)."""
        if self._dead is not None:
            raise EngineDeadError(f"engine is dead: {self._dead}")
        if not self._admitting:
            raise EngineShuttingDownError("the server is shutting down and admits no new requests")
        self.validate_request(request)
        if request.request_id in self._live:
            raise ValueError(f"request_id {request.request_id!r} is already in flight")
        if self.num_waiting >= self.cfg.max_waiting:
            raise QueueFullError(self.cfg.retry_after_s)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        seed = request.params.seed
        seq = Sequence(
            request_id=request.request_id,
            prompt=list(request.prompt_token_ids),
            params=request.params,
            generator=None if seed is None else torch.Generator().manual_seed(seed),
            constraint=None if request.params.grammar is None else request.params.grammar.new_constraint(),
        )
        seq.deliver = _Deliverer(loop, queue)  # type: ignore[assignment]
        self._live[request.request_id] = seq
        self._inbox.append(seq)
        self._wakeup.set()
        # Re-check after enqueueing: a death or shutdown that snapshotted the inbox just before the
        # append would otherwise leave this request waiting for events that never come.
        if self._dead is not None or self._stop_requested:
            self._live.pop(request.request_id, None)
            if self._dead is not None:
                raise EngineDeadError(f"engine is dead: {self._dead}")
            raise EngineShuttingDownError("the engine is shutting down")
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finish_reason is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            self._live.pop(request.request_id, None)
            if not finished:
                self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request; its KV blocks are freed at the next step and it ends with finish_reason "abort"."""
        self._aborts.append(request_id)
        self._wakeup.set()

    def stop_admission(self) -> None:
        self._admitting = False

    def mark_dead(self, reason: str) -> None:
        """See AsyncEngine.mark_dead; safe from any thread (the step thread may be stuck)."""
        self._declare_dead(RuntimeError(reason))

    async def shutdown(self) -> None:
        """Abort what is still running, release the follower ranks and stop the loop thread."""
        self._admitting = False
        self._stop_requested = True
        self._wakeup.set()
        self._watchdog.stop()
        # A dead engine's thread may be stuck inside a collective for good: do not wait for it.
        if self._thread.is_alive() and self._dead is None:
            await asyncio.to_thread(self._thread.join)

    # ----- step loop (engine thread) -----------------------------------------------------------
    def start(self) -> None:
        """Start the step loop thread (the model is loaded on every rank by now)."""
        if self.cfg.gil_switch_interval_s is not None:
            sys.setswitchinterval(self.cfg.gil_switch_interval_s)
        self._ready = True
        self._thread.start()

    def _run(self) -> None:
        # PyTorch initializes a thread's OpenMP setting lazily, at its first parallel op, from the
        # process-wide value, which any other thread may have changed by then: settle it now.
        torch.set_num_threads(self._num_threads)
        torch.get_num_threads()
        numba_jit.match_torch_threads()
        try:
            while True:
                self._wakeup.clear()
                self._drain_inbox()
                if self._stop_requested:
                    break
                plan = self._scheduler.schedule()
                if plan is None:
                    if not self._wakeup.wait(self.cfg.heartbeat_s):
                        self._guarded(self._channel.send, CMD_HEARTBEAT)
                    continue
                self._execute(plan)
            self._finish_all("abort")
            self._guarded(self._channel.send, CMD_SHUTDOWN)
        except BaseException as exc:  # a dead rank, a timed-out collective, or a bug: fail everything
            self._declare_dead(exc)

    def _guarded(self, fn: Callable, *args) -> object:
        """Run a collective or forward under the watchdog; raise if the engine was declared dead meanwhile."""
        self._watchdog.arm()
        try:
            return fn(*args)
        finally:
            self._watchdog.disarm()
            if self._dead is not None:
                raise EngineDeadError(str(self._dead))

    def _drain_inbox(self) -> None:
        while self._inbox:
            self._scheduler.add(self._inbox.popleft())
        while self._aborts:
            request_id = self._aborts.popleft()
            waiting = self._scheduler.abort_waiting(request_id)
            if waiting is not None:
                self._emit({waiting: TokenEvent(None, "abort")})
                continue
            for seq in self._scheduler.running:
                if seq.request_id == request_id and seq.finish_reason is None:
                    seq.aborted = True

    def _execute(self, plan: StepPlan) -> None:
        events: dict[Sequence, _Item] = {}
        for seq in plan.freed:
            if seq.aborted and seq.finish_reason is None:
                seq.finish_reason = "abort"
                events[seq] = TokenEvent(None, "abort")
        if plan.preempted:
            log.info("KV cache full: preempted %d sequence(s) for recomputation (%d so far)",
                     len(plan.preempted), self._scheduler.num_preemptions)
        if plan.num_tokens:
            wire = self._to_wire(plan)
            self._step_id += 1
            self._guarded(self._channel.send, CMD_STEP, wire, self._step_id)
            logits = self._guarded(self._runner.execute, wire)
            self._advance(plan, logits, events)
        self._emit(events)

    @staticmethod
    def _to_wire(plan: StepPlan) -> WireStep:
        token_ids = [seq.output[-1] for seq in plan.decode]
        positions = [seq.num_computed for seq in plan.decode]
        tables = [seq.block_table for seq in plan.decode]
        prefills = []
        for work in plan.prefill:
            token_ids.extend(work.seq.tokens(work.start, work.start + work.length))
            positions.extend(range(work.start, work.start + work.length))
            prefills.append((work.start, work.length, work.wants_logits))
            tables.append(work.seq.block_table)
        return WireStep(
            num_decode=len(plan.decode),
            prefills=prefills,
            block_tables=tables,
            token_ids=torch.tensor(token_ids, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
        )

    def _advance(self, plan: StepPlan, logits: torch.Tensor, events: dict[Sequence, _Item]) -> None:
        """Account the computed tokens, sample the next ones, decide who finished."""
        for seq in plan.decode:
            seq.num_computed += 1
        for work in plan.prefill:
            work.seq.num_computed += work.length
        rows = plan.decode + [w.seq for w in plan.prefill if w.wants_logits]
        if not rows:
            return
        constraints = [s.constraint for s in rows]
        tokens = sample_tokens(
            structured_output.constrain_logits(logits, constraints, self.eos_token_ids)
            if any(c is not None for c in constraints) else logits,
            [s.params.temperature for s in rows],
            [s.params.top_p for s in rows],
            [s.generator for s in rows],
            self._shared_generator,
            top_ks=[s.params.top_k for s in rows],
            min_ps=[s.params.min_p for s in rows],
        )
        logprobs = _token_logprobs(logits, rows, tokens)
        eos = self.eos_token_ids
        for i, (seq, token) in enumerate(zip(rows, tokens, strict=True)):
            if seq.aborted:
                continue  # freed (with an abort event) at the next schedule()
            seq.output.append(token)
            reason = None
            if token in eos and not seq.params.ignore_eos:
                reason = "stop"
            elif seq.constraint is not None and _grammar_complete(seq.constraint, token):
                reason = "stop"
            elif len(seq.output) >= seq.params.max_tokens or seq.total_len >= self.max_model_len:
                reason = "length"
            seq.finish_reason = reason
            if i in logprobs:
                logprob, top = logprobs[i]
                events[seq] = TokenEvent(token, reason, logprob, top)
            else:
                events[seq] = TokenEvent(token, reason)

    def _emit(self, events: dict[Sequence, _Item]) -> None:
        """Hand events to their event loops: one thread-safe call per loop per step."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, _Item]]] = {}
        for seq, item in events.items():
            deliverer = seq.deliver
            if isinstance(deliverer, _Deliverer):
                by_loop.setdefault(deliverer.loop, []).append((deliverer.queue, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:
                pass  # the loop is closed: nobody is listening any more

    def _finish_all(self, reason: str) -> None:
        pending = list(self._scheduler.running) + list(self._scheduler.waiting) + list(self._inbox)
        self._scheduler.running.clear()
        self._scheduler.waiting.clear()
        self._inbox.clear()
        self._emit({seq: TokenEvent(None, "abort") for seq in pending if seq.finish_reason is None})

    def _on_watchdog_expired(self, elapsed_s: float) -> None:
        self._declare_dead(TimeoutError(f"a step or collective has not completed after {elapsed_s:.1f}s"))

    def _declare_dead(self, exc: BaseException) -> None:
        with self._lock:
            if self._dead is not None:
                return
            self._dead = exc
            self._ready = False
        log.error("engine dead: %s: %s", type(exc).__name__, exc)
        # Callbacks before the waiters are released: whoever sees EngineDeadError can rely on the
        # callbacks having run (the other order raced with the event loop waking up).
        for callback in list(self._death_callbacks):
            try:
                callback(exc)
            except Exception:
                log.exception("death callback failed")
        error = EngineDeadError(f"a rank died or a collective timed out: {exc}")
        pending = list(self._scheduler.running) + list(self._scheduler.waiting) + list(self._inbox)
        self._emit({seq: error for seq in pending if seq.finish_reason is None})


def _grammar_complete(constraint: structured_output.Constraint, token: int) -> bool:
    """Advance a sequence's grammar past its new token; True once nothing but the end may follow."""
    constraint.accept(token)
    return constraint.finished


# JSON has no -inf; vLLM reports impossible tokens with this floor too.
MIN_LOGPROB = -9999.0


def _token_logprobs(logits: torch.Tensor, rows: list[Sequence], tokens: list[int]
                    ) -> dict[int, tuple[float, tuple[tuple[int, float], ...]]]:
    """Row index -> (sampled token's logprob, top-k (id, logprob)) for the rows that asked for them."""
    wanted = [i for i, seq in enumerate(rows) if seq.params.logprobs is not None]
    if not wanted:
        return {}
    index = torch.tensor(wanted, dtype=torch.long)
    logprobs = torch.log_softmax(logits.index_select(0, index).float(), dim=-1).clamp_(min=MIN_LOGPROB)
    chosen = logprobs.gather(1, torch.tensor([[tokens[i]] for i in wanted])).squeeze(1).tolist()
    k = max(rows[i].params.logprobs or 0 for i in wanted)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)
    out = {}
    for j, i in enumerate(wanted):
        want_k = rows[i].params.logprobs or 0
        top: tuple[tuple[int, float], ...] = ()
        if want_k:
            top = tuple(zip(top_ids[j, :want_k].tolist(), top_values[j, :want_k].tolist(), strict=True))
        out[i] = (chosen[j], top)
    return out


@dataclass(frozen=True)
class _Deliverer:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


def _put_all(items: list[tuple[asyncio.Queue, _Item]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


def follower_loop(runner: ModelRunner, channel: StepChannel, timeout_s: float) -> None:
    """Run rank 0's steps until it sends shutdown; exit the process non-zero on timeout or error."""
    watchdog = Watchdog(timeout_s * 1.5, lambda s: exit_follower(f"no progress from rank 0 for {s:.1f}s"))
    try:
        while True:
            watchdog.arm()
            command, step = channel.recv()
            if command == CMD_SHUTDOWN:
                return
            if command == CMD_STEP and step is not None:
                runner.execute(step)
            elif command not in (CMD_HEARTBEAT, CMD_BARRIER):
                raise RuntimeError(f"unknown command {command} from rank 0")
    finally:
        watchdog.stop()


@dataclass
class RankContext:
    """What `load_rank` set up on this rank: launch place, loaded model runner, step channel."""

    cfg: EngineConfig
    env: LaunchEnv
    runner: ModelRunner
    channel: StepChannel
    tokenizer: object | None = None  # rank 0 only


def load_rank(cfg: EngineConfig, environ: dict[str, str] | None = None) -> RankContext:
    """Validate the config, join the process group and load (and shard) the model on this rank."""
    cfg.validate()
    env = LaunchEnv.from_environ(environ, _device_type(cfg))
    device = resolve_device(cfg, env)
    if device.type == "cpu":
        torch.set_num_threads(cfg.num_threads or default_num_threads(env))
    group = init_process_groups(env, device.type, cfg.collective_timeout_s)
    channel = StepChannel(group, env.rank, env.world_size)
    tokenizer = None
    if env.rank == 0:
        from transformers import AutoTokenizer

        # Before the model, so rank 0's first step follows its model load as closely as the
        # followers' first wait follows theirs (that wait is bounded by collective_timeout_s).
        tokenizer = AutoTokenizer.from_pretrained(cfg.model_dir)
    runner = ModelRunner(cfg, env, device, channel.group)
    log.info(
        "rank %d/%d loaded %s (%s, %d threads)",
        env.rank, env.world_size, cfg.model_dir, runner.dtype, torch.get_num_threads(),
    )
    return RankContext(cfg, env, runner, channel, tokenizer)


def run_rank(ctx: RankContext) -> InferenceEngine | None:
    """Rank 0: warm up every rank and start the engine loop. Followers: serve steps until shutdown
    (returns None) or raise SystemExit(3) when rank 0 is lost."""
    if ctx.env.rank != 0:
        numba_jit.match_torch_threads()
        try:
            follower_loop(ctx.runner, ctx.channel, ctx.cfg.collective_timeout_s)
        except Exception as exc:
            log.error("follower rank %d failed: %s: %s", ctx.env.rank, type(exc).__name__, exc)
            raise SystemExit(FOLLOWER_FAILURE_EXIT_CODE) from exc
        return None

    # Same warm-up forward on every rank: allocates the KV cache and proves all ranks are up. Its
    # shm all-reduce busy-waits on a missing rank with no timeout of its own: bound it.
    limit_s = ctx.cfg.collective_timeout_s * 1.5
    log.info("warm-up step on all %d ranks, at most %gs", ctx.env.world_size, limit_s)
    watchdog = Watchdog(limit_s, lambda s: exit_rank(
        f"the warm-up step did not complete on all ranks in {s:.1f}s (a rank is missing or stuck)",
        STARTUP_FAILURE_EXIT_CODE))
    watchdog.arm()
    try:
        warm = ctx.runner.warm_up_step()
        ctx.channel.send(CMD_STEP, warm, 0)
        ctx.runner.execute(warm)
    finally:
        watchdog.stop()
    engine = InferenceEngine(ctx.cfg, ctx.runner, ctx.channel, ctx.tokenizer)
    engine.start()
    return engine


def _device_type(cfg: EngineConfig) -> str:
    return "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"


def _in_passing_thread(fn: Callable, *args: object) -> object:
    """`fn(*args)` run in a thread that ends with it; its result returned, its exception re-raised.

    Why, on the CPU: libgomp (PyTorch's OpenMP) keeps a pool of worker threads for every thread
    that ever ran a parallel region, for as long as that thread lives, and once the pooled threads
    outnumber the cores its workers stop spinning between parallel regions and sleep, so every
    torch op pays a futex wake-up. Rank 0 steps in its own thread (the HTTP event loop owns the main
    one); had the main thread loaded the model, its pool would stay and throttle the step thread:
    measured on 2 cores with `python -m inference.engine_bench --batch 1` (bench preset, fp32), mean
    TPOT 11.9 ms before against 10.0 ms with this (the step alone: 8.0 ms). Loading in a
    thread that ends leaves the step thread the only pool.
    """
    result: list[object] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn(*args))
        except BaseException as exc:  # re-raised in the caller (SystemExit of a follower included)
            error.append(exc)

    thread = threading.Thread(target=target, name="inferforge-load", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def start_engine(cfg: EngineConfig, environ: dict[str, str] | None = None) -> InferenceEngine | None:
    """Entry point on every rank: load the model, then on rank 0 return the running engine; on
    followers serve until shutdown and return None (SystemExit(3) when rank 0 is lost).

    On the CPU the loading (and a follower's step loop) runs in a thread that ends with it (see
    `_in_passing_thread`); the calling thread runs no torch op, and should keep it that way."""
    if _device_type(cfg) == "cpu":
        return _in_passing_thread(lambda: run_rank(load_rank(cfg, environ)))  # type: ignore[return-value]
    return run_rank(load_rank(cfg, environ))
