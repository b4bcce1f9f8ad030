"""Matrix-vector products (1-2 token rows) over oneDNN's prepacked fp32 weights, read in place.

With one token row, a linear product reads every weight byte once for two flops per weight: it is
bound by memory bandwidth, and a decode step at one sequence is ~90% such products. oneDNN's matmul
over the prepacked layout (`inference.cpu_gemm.PackedLinear`) reads it at ~21-26 GB/s on this
project's 2-core AMD EPYC, against ~30-35 GB/s for a plain streaming loop over the same bytes.

The packed layout `_reorder_linear_weight` picks here stores the weight in blocks of `b` output rows
(b = 64 here, also with oneDNN held to AVX2): block after block, each input column's `b` weights
contiguous, the input dimension padded. So `y[block] = sum_k x[k] * W[block, k, :]` streams each block front to back
with `b` accumulators, and the blocks split across threads. This module views the opaque oneDNN
buffer as `[blocks, padded_in, b]` (`blocked_view`: only after checking, element by element against
the dense weight, that this is the layout; any other returns None and oneDNN keeps the product) and
computes the product with a Numba kernel (`inference.numba_jit`).

Measured on 2 cores, fp32, ~250 MB of weights of each shape cycled so none stays in cache, median
of 9 (`python -m inference.bench.gemv`, 2026-11-30), oneDNN against this kernel, roofline-preset
shapes (3072/1024/5632 x 1024, 1024 x 2816, the 32000 x 1024 LM head): 1 row 1.33-1.37x faster
(5632 x 1024: 0.93 against 0.70 ms, 24.8 against 33.0 GB/s), 2 rows 1.41-1.51x, 4 rows 0.90-0.96x,
8 rows 0.59-0.69x. Hence `MAX_ROWS = 2`: larger products keep oneDNN, whose GEMM reuses each loaded
weight across rows in registers.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
from numba import prange

from .numba_jit import compile_kernel

MAX_ROWS = 2
"""Token rows up to which the kernel computes a product (measured: ahead at 1-2 rows, behind from 4)."""


def _kernel(blocks, x, out):  # pragma: no cover - compiled by Numba
    """blocks [nb, kp, b] (b output rows per block, kp >= k inputs); x [m, k]; out [nb, m, b]."""
    nb, _, b = blocks.shape
    m, k = x.shape
    for blk in prange(nb):
        acc = out[blk]
        acc[:] = 0.0
        for j in range(k):
            column = blocks[blk, j]
            for r in range(m):
                xj = x[r, j]
                row = acc[r]
                for i in range(b):
                    row[i] += xj * column[i]


_matvec_kernel = compile_kernel(_kernel)


def _raw_floats(packed: torch.Tensor) -> np.ndarray:
    """The oneDNN tensor's buffer as float32s (a view: valid while `packed` lives)."""
    size = torch.ops.mkldnn._nbytes(packed)
    buffer = (ctypes.c_char * size).from_address(torch.ops.mkldnn.data_ptr(packed))
    return np.frombuffer(buffer, dtype=np.float32)


def blocked_view(packed: torch.Tensor, weight: torch.Tensor) -> np.ndarray | None:
    """`packed`'s buffer as `[blocks, padded_in, b]` if it holds `weight` [out, in] in that layout, else None.

    Verified element by element against `weight` (fp32), so a layout that oneDNN chooses differently
    on another CPU or version is detected rather than misread.
    """
    if packed.layout != torch._mkldnn or weight.dtype != torch.float32 or weight.dim() != 2:
        return None
    out_features, in_features = weight.shape
    raw = _raw_floats(packed)
    dense = weight.detach().numpy()
    for b in (64, 48, 32, 24, 16, 8):
        nb = -(-out_features // b)
        if raw.size % (nb * b) or raw.size // (nb * b) < in_features:
            continue
        blocks = raw.reshape(nb, raw.size // (nb * b), b)
        if all(
            np.array_equal(blocks[i, :in_features, : min(b, out_features - i * b)], dense[i * b : (i + 1) * b].T)
            for i in range(nb)
        ):
            return blocks
    return None


def matvec(blocks: np.ndarray, out_features: int, x: torch.Tensor) -> torch.Tensor:
    """`x @ W.T` for x [..., in] with at most a few rows, W given by `blocked_view`; returns [..., out]."""
    in_features = x.shape[-1]
    rows = x.reshape(-1, in_features).contiguous()
    nb, _, b = blocks.shape
    out = torch.empty((nb, rows.shape[0], b))
    _matvec_kernel(blocks, rows.numpy(), out.numpy())
    flat = out.view(nb * b) if rows.shape[0] == 1 else out.permute(1, 0, 2).reshape(rows.shape[0], nb * b)
    return flat[..., :out_features].reshape(*x.shape[:-1], out_features)
