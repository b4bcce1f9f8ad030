"""One rank's model: loading (and AutoTP sharding), dtype and device choice, the KV pool, one forward per step.

Loading: `AutoModelForCausalLM.from_pretrained(dir, dtype=...)` on the CPU, then with more than one
rank `deepspeed.init_inference(model, tensor_parallel={"tp_size": world_size}, dtype=...,
replace_with_kernel_inject=False)` (AutoTP). AutoTP slices each Linear on the host and moves only the
rank's shard to the accelerator (`LinearLayer`/`LinearAllreduce`), then moves the small unsharded
rest (embeddings, norms); so a GPU never holds a full copy, though host RAM briefly does on each
rank. Kernel injection is not used: it swaps the attention module for DeepSpeed's fused one with
its own single-batch KV cache, which cannot serve a continuously batched paged cache.
Attention runs through `inference.kv_cache.paged_attention`, registered as a transformers attention
implementation, so the model's own modules (sharded or not) run every step; K/V live in a paged block
pool sized from a memory budget (inference/kv_plan.py), whose blocks rank 0 hands out per sequence.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

from . import autotp_fixes, cpu_attention, cpu_gemm, defaults, fused, kv_cache
from .distributed import (
    LaunchEnv,
    WireStep,
)
from .engine_config import EngineConfig
from .kv_plan import CPU_KV_CACHE_DEFAULT_BYTES, GIB, gpu_kv_budget_bytes, plan_kv_pool
from .scheduler import LOGITS_ALL, LOGITS_LAST

log = logging.getLogger("inferforge.engine")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def kv_budget_bytes(cfg: EngineConfig, device: torch.device, group: object | None) -> int:
    """This TP group's KV budget per rank: explicit, or measured on CUDA (the minimum over ranks)."""
    if cfg.kv_cache_memory_gib is not None:
        return int(cfg.kv_cache_memory_gib * GIB)
    if device.type != "cuda":
        return CPU_KV_CACHE_DEFAULT_BYTES
    free, total = torch.cuda.mem_get_info(device)
    budget = gpu_kv_budget_bytes(total_bytes=total, used_bytes=total - free,
                                 gpu_memory_utilization=cfg.gpu_memory_utilization)
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
        """Run the forward of one step; returns float32 CPU logits of the rows that want them: every decode row,
        then each prefill chunk's last row or all its rows (scheduler.LOGITS_*), in step order."""
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
        for (start, length, logits_rows), blocks in zip(step.prefills, step.block_tables[n:], strict=True):
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
            if logits_rows == LOGITS_ALL:  # prompt logprobs: every row of the chunk
                keep.extend(range(offset, offset + length))
            elif logits_rows == LOGITS_LAST:
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
        zero = torch.zeros(1, dtype=torch.int64)
        return WireStep(0, [(0, 1, LOGITS_LAST)], [[0]], zero, zero.clone())

