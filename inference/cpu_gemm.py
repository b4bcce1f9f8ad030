"""CPU GEMM paths: oneDNN with prepacked weights, and widened 16-bit products on CPUs without 16-bit math.

**Prepacked oneDNN linears (`pack_linears`).** `F.linear` on the CPU multiplies through MKL's
sgemm against the weight in its checkpoint layout, which on AMD EPYC runs far below the CPU's rate
(MKL takes a generic path there). Reordering each weight once, at load, into oneDNN's blocked
layout and calling oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`, the op Inductor's CPU
freezing path emits; vLLM's CPU backend does the same through its own oneDNN binding, also with a
32-row hint) is measured on this project's 2-core AMD EPYC (AVX-512), fp32, roofline preset shapes:

| weight (out x in) | rows | F.linear | oneDNN prepacked |
|---|---|---|---|
| 5632 x 1024 (gate/up) | 1 | 1.10 ms | 0.20 ms |
| 5632 x 1024 | 64 | 7.8 ms (94 GFLOP/s) | 3.6 ms (205 GFLOP/s) |
| 32000 x 1024 (LM head) | 64 | 46 ms | 20 ms |

(each product timed alone on random operands, median of 30 calls) and whole decode steps, 48 cached
tokens (`python -m inference.bench.decode_step [--no-pack]`): roofline preset 332 -> 249 ms at 64
sequences and 79 -> 50 ms at one; bench preset 54 -> 36 ms and 12.2 -> 8.0 ms. The packed copy
replaces the original weight (freed), so memory does not grow, except for an LM head tied to the
input embedding, which keeps both. Applies in fp32 and, on CPUs with native bf16/fp16 math, in
those dtypes; results match `F.linear` up to summation order.

**Widened 16-bit GEMMs on CPUs that have no bf16/fp16 instructions (e.g. AVX2-only x86).**

On such CPUs PyTorch multiplies bf16 matrices with its generic fallback kernel: it accumulates in
fp32 but runs far below the CPU's fp32 rate. Measured on this project's 2-core AVX2 machine with the
bench model's layer shapes: 64 rows took 69 ms in bf16 against 20 ms when the operands are widened
to fp32 for the multiply (and 16 ms with fp32-resident weights); a whole 64-sequence decode step went
from ~305 ms to ~100 ms, a 32-token prefill from ~134 ms to ~57-70 ms. With one or a few rows the
bf16 kernel is a matrix-vector product and bandwidth-bound, so there bf16 (half the bytes) wins,
and widening only pays from about 8 rows.

`WidenedGemm` is a `TorchFunctionMode` that the engine enters for a forward only when the step has
at least `min_rows` token rows, so single-sequence decode pays nothing for it. Inside, a linear
layer's product (`F.linear`, or `torch.matmul` against a 2-D weight as DeepSpeed AutoTP's
`LinearLayer`/`LinearAllreduce` call it) whose input has at least `min_rows` rows is computed as
`F.linear(x.float(), w.float(), b.float()).to(x.dtype)`: the same fp32 accumulation as PyTorch's own
bf16 kernel and one rounding to bf16 at the end, so results agree with the plain kernel up to
summation order (about 0.02% of elements differ by one bf16 rounding step; both are ~99.99%
correctly rounded against an fp64 reference). Weights stay in their 16-bit dtype in memory; the fp32
copy exists only for the duration of one product.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import cpu_gemv, defaults

HALF_DTYPES = (torch.bfloat16, torch.float16)
PACK_ROWS_HINT = 32
"""Rows oneDNN tunes its packed weight layout for; measured within a few % of the best hint at 1-2,048 rows."""
DEFAULT_MIN_ROWS = defaults.CPU_WIDEN_MIN_ROWS
"""Rows from which widening beats the 16-bit kernel (crossover measured at about 7-9 rows)."""

# CPU flags (as in /proc/cpuinfo) that give oneDNN a native GEMM for each dtype.
_NATIVE_FLAGS = {
    torch.bfloat16: ("avx512_bf16", "amx_bf16"),
    torch.float16: ("avx512_fp16", "amx_fp16"),
}


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_native(dtype: torch.dtype, flags: set[str] | None = None) -> bool:
    """True when the CPU multiplies `dtype` in hardware (AVX512-BF16/AMX for bf16, AVX512-FP16/AMX for fp16)."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in _NATIVE_FLAGS.get(dtype, ()))


def widening_applies(device: torch.device, dtype: torch.dtype, flags: set[str] | None = None) -> bool:
    """Whether widened GEMMs help: a 16-bit dtype on a CPU without a native kernel for it."""
    return device.type == "cpu" and dtype in HALF_DTYPES and not cpu_has_native(dtype, flags)


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1] if x.dim() >= 2 and x.shape[-1] else 0


class WidenedGemm(TorchFunctionMode):
    """Route 16-bit CPU linear products with at least `min_rows` rows through fp32 (see module doc).

    `widened` counts the products it rerouted (for tests and diagnostics).
    """

    def __init__(self, min_rows: int = DEFAULT_MIN_ROWS) -> None:
        super().__init__()
        if min_rows < 1:
            raise ValueError(f"min_rows must be >= 1, got {min_rows}")
        self.min_rows = min_rows
        self.widened = 0

    def _eligible(self, x: object, w: object) -> bool:
        return (
            isinstance(x, torch.Tensor)
            and isinstance(w, torch.Tensor)
            and x.dtype in HALF_DTYPES
            and w.dtype == x.dtype
            and x.device.type == "cpu"
            and w.device.type == "cpu"
            and w.dim() == 2
            and _rows(x) >= self.min_rows
        )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs.get("input")
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if self._eligible(x, w) and (b is None or isinstance(b, torch.Tensor)):
                self.widened += 1
                return F.linear(x.float(), w.float(), None if b is None else b.float()).to(x.dtype)
        elif func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__) and len(args) == 2 and not kwargs:
            x, w = args
            # AutoTP layers compute `torch.matmul(input, weight.transpose(-1, -2))`.
            if self._eligible(x, w):
                self.widened += 1
                return torch.matmul(x.float(), w.float()).to(x.dtype)
        return func(*args, **kwargs)


def packing_applies(device: torch.device, dtype: torch.dtype, flags: set[str] | None = None) -> bool:
    """Whether `pack_linears` runs: a CPU with oneDNN, in fp32 or a 16-bit dtype the CPU multiplies natively."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or cpu_has_native(dtype, flags)


class PackedLinear:
    """`x @ weight.T + bias` with the weight reordered once into oneDNN's blocked layout.

    Holds its own (opaque oneDNN) copy of the weight: the caller frees the original. With
    `matvec_kernel`, products of at most `cpu_gemv.MAX_ROWS` rows read that copy in place with
    `inference.cpu_gemv`'s kernel (fp32, where the layout is the one it knows) instead of oneDNN.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, matvec_kernel: bool = False) -> None:
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)
        self.bias = None if bias is None else bias.detach()
        self.out_features = weight.shape[0]
        self.blocks = cpu_gemv.blocked_view(self.weight, weight) if matvec_kernel else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocks is not None and _rows(x) <= cpu_gemv.MAX_ROWS:
            out = cpu_gemv.matvec(self.blocks, self.out_features, x)
            return out if self.bias is None else out.add_(self.bias)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")


def _release(param: torch.Tensor | None) -> None:
    if param is not None:
        param.data = param.data.new_empty(0)


def _linear_forward(module: torch.nn.Module, shared: set[int], matvec_kernel: bool):
    """A packed replacement for `module.forward`, or None when the module is not a plain (or AutoTP) linear."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.numel() == 0:
        return None
    kind = type(module).__name__
    bias = getattr(module, "bias", None)
    if type(module).forward is torch.nn.Linear.forward or (kind == "LinearLayer" and not module.gather_output):
        # AutoTP's column-parallel LinearLayer runs no collective in inference: a plain product.
        forward = PackedLinear(weight, bias, matvec_kernel)
    elif kind == "LinearAllreduce":
        # Row-parallel: local product, all-reduce across the TP group, then the (replicated) bias,
        # as DeepSpeed's own forward does.
        packed = PackedLinear(weight, None, matvec_kernel)
        row_parallel = sys.modules[type(module).__module__].RowParallel
        group = module.mp_group

        def forward(x: torch.Tensor) -> torch.Tensor:
            out = row_parallel.apply(group, packed(x), True)
            return out if bias is None else out.add_(bias)
    else:
        return None
    if weight.untyped_storage().data_ptr() not in shared:
        _release(weight)
    return forward


def pack_linears(model: torch.nn.Module, matvec_kernel: bool = False) -> int:
    """Compute every linear product of `model` with prepacked oneDNN weights; returns how many.

    Covers `nn.Linear`, DeepSpeed AutoTP's `LinearLayer`/`LinearAllreduce` and the fused
    projections of `inference.fused`; other modules keep their forward. Weights shared with a
    non-linear module (an LM head tied to the input embedding) are kept; others are freed.
    `matvec_kernel`: products of 1-2 rows by `inference.cpu_gemv` (see `PackedLinear`), compiled here.
    """
    if matvec_kernel:  # compile now (or load from Numba's cache), not in the first request's step
        PackedLinear(torch.ones(64, 16), None, True)(torch.ones(1, 16))
    from .fused import FusedLinear

    count = 0
    for module in model.modules():
        for value in list(vars(module).values()):
            if isinstance(value, FusedLinear) and value.kernel is None:
                value.replace_kernel(PackedLinear(value.weight, value.bias, matvec_kernel))
                count += 1
    linear_kinds = ("LinearLayer", "LinearAllreduce")
    shared = {
        param.untyped_storage().data_ptr()
        for module in model.modules()
        if not isinstance(module, torch.nn.Linear) and type(module).__name__ not in linear_kinds
        for param in module.parameters(recurse=False)
    }
    for module in model.modules():
        forward = _linear_forward(module, shared, matvec_kernel)
        if forward is not None:
            module.forward = forward
            count += 1
    return count
