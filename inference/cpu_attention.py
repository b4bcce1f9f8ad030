"""Decode attention on the CPU that reads each sequence's K/V in place from the paged pool.

The portable path (`kv_cache._decode_attention`) gathers every decoding sequence's K/V through its
block table into a scratch buffer and runs two batched matmuls over it: the K/V bytes cross the
memory bus three times (read from the pool, written to the scratch, read again), and at 64
sequences the gather was most of the attention time. This kernel is one pass: for each (sequence,
KV head) it walks the sequence's pool rows, takes the query heads sharing that KV head (GQA costs
no copy), and computes scores, softmax and the weighted sum of V straight from the pool.

Measured on 2 cores, one decode step of the whole roofline-preset model, 64 sequences, fp32
(`python -m inference.bench.decode_step --model <roofline> --batch 64 --context 48|400
[--no-cpu-attention]`, 2026-11-30): 199 against 214-252 ms at 48 cached tokens, 240 against 688 ms
at 400 (inference/README.md, CPU performance notes).

It is compiled with Numba (`inference.numba_jit`), in parallel over (sequence, KV head), at model
load (`warm_up`). It covers float32 only: Numba has no bfloat16, and 16-bit CPU serving keeps the
portable path.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import prange

from .numba_jit import compile_kernel


def applies(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `decode_attention` serves a pool on `device` in `dtype`."""
    return device.type == "cpu" and dtype == torch.float32


def _kernel(query, keys, values, rows, lengths, scale, out):  # pragma: no cover - compiled by Numba
    """query/out [n, kv_heads, group, D]; keys/values [kv_heads, pool_rows, D]; rows [n, >= max(lengths)]."""
    n, kv_heads, group, head_dim = query.shape
    for item in prange(n * kv_heads):
        seq = item // kv_heads
        head = item - seq * kv_heads
        length = lengths[seq]
        q = query[seq, head] * scale
        scores = np.empty((group, length), dtype=np.float32)
        for pos in range(length):
            k = keys[head, rows[seq, pos]]
            for j in range(group):
                dot = np.float32(0.0)
                for d in range(head_dim):
                    dot += q[j, d] * k[d]
                scores[j, pos] = dot
        for j in range(group):
            weights = np.exp(scores[j] - scores[j].max())
            scores[j] = weights / weights.sum()
        acc = np.zeros((group, head_dim), dtype=np.float32)
        for pos in range(length):
            v = values[head, rows[seq, pos]]
            for j in range(group):
                p = scores[j, pos]
                for d in range(head_dim):
                    acc[j, d] += p * v[d]
        out[seq, head] = acc


_decode_kernel = compile_kernel(_kernel)


def decode_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor,
    scale: float, out: torch.Tensor,
) -> None:
    """Attention of n decode tokens into `out`.

    query: [heads, n, D] (any strides); keys/values: one layer's pool, [kv_heads, pool_rows, D];
    rows: [n, L] int64 pool rows of each sequence's positions (only the first `lengths[i]` are
    read); lengths: [n] int64, >= 1; out: [n, heads, D], contiguous, written in place.
    """
    heads, n, head_dim = query.shape
    kv_heads = keys.shape[0]
    q = query.view(kv_heads, heads // kv_heads, n, head_dim).permute(2, 0, 1, 3).contiguous()
    _decode_kernel(
        q.numpy(), keys.numpy(), values.numpy(), rows.numpy(), lengths.numpy(), np.float32(scale),
        out.view(n, kv_heads, heads // kv_heads, head_dim).numpy(),
    )


def warm_up() -> None:
    """Compile (or load from Numba's cache) the kernel for the types `decode_attention` passes."""
    pool = torch.zeros(1, 2, 4)
    out = torch.empty(1, 1, 4)
    decode_attention(torch.zeros(1, 1, 4), pool, pool, torch.zeros(1, 2, dtype=torch.int64),
                     torch.ones(1, dtype=torch.int64), 1.0, out)
