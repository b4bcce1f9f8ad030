"""Linear products of a few token rows: oneDNN's matmul against `inference.cpu_gemv`'s kernel.

    python -m inference.bench.gemv                                   # roofline-preset layer shapes
    python -m inference.bench.gemv --shape 4096x4096 --rows 1 2 4 8

Both read the same prepacked fp32 weights (`cpu_gemm.PackedLinear`). Enough weights of each shape
(~250 MB) are cycled that none stays in cache, as in a decode step. Prints one JSON line per shape
and row count: median milliseconds per product of each, the weight read rate (GB/s) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from .. import cpu_gemv, numba_jit
from ..cpu_gemm import PackedLinear

ROOFLINE_SHAPES = ["3072x1024", "1024x1024", "5632x1024", "1024x2816", "32000x1024"]


def _shape(text: str) -> tuple[int, int]:
    try:
        out_features, in_features = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not OUTxIN (e.g. 5632x1024)") from None
    if out_features < 1 or in_features < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r} needs sizes >= 1")
    return out_features, in_features


def _median_ms(fn, count: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(count):
            fn(i)
        times.append((time.perf_counter() - start) / count)
    return 1000 * statistics.median(times)


def _time_shape(out_features: int, in_features: int, row_counts: list[int], repeats: int,
                generator: torch.Generator) -> list[dict]:
    count = max(2, 250_000_000 // (out_features * in_features * 4))
    linears = [PackedLinear(torch.randn(out_features, in_features, generator=generator), None, True)
               for _ in range(count)]
    shape = f"{out_features}x{in_features}"
    if linears[0].blocks is None:
        return [{"shape": shape, "error": "packed layout not recognized: oneDNN computes every product"}]
    weight_bytes = out_features * in_features * 4
    results = []
    for rows in row_counts:
        x = torch.randn(rows, in_features, generator=generator)

        def onednn(i: int, x: torch.Tensor = x) -> None:
            torch.ops.mkldnn._linear_pointwise(x, linears[i].weight, None, "none", [], "")

        def kernel(i: int, x: torch.Tensor = x) -> None:
            cpu_gemv.matvec(linears[i].blocks, out_features, x)

        onednn_ms, kernel_ms = _median_ms(onednn, count, repeats), _median_ms(kernel, count, repeats)
        results.append({
            "shape": shape, "rows": rows, "onednn_ms": round(onednn_ms, 3), "kernel_ms": round(kernel_ms, 3),
            "onednn_gbps": round(weight_bytes / onednn_ms / 1e6, 1),
            "kernel_gbps": round(weight_bytes / kernel_ms / 1e6, 1),
            "kernel_speedup": round(onednn_ms / kernel_ms, 2),
        })
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.bench.gemv", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=_shape, nargs="+", default=[_shape(s) for s in ROOFLINE_SHAPES],
                        help="weight shapes OUTxIN (default: the roofline preset's)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    if min(args.rows) < 1 or args.threads < 1 or args.repeats < 1:
        parser.error("--rows, --threads and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    numba_jit.match_torch_threads()
    generator = torch.Generator().manual_seed(0)
    for out_features, in_features in args.shape:
        for result in _time_shape(out_features, in_features, args.rows, args.repeats, generator):
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
