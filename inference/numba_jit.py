"""How this package compiles its CPU kernels with Numba, and how many threads they use.

Numba (LLVM-based, no C++ toolchain) compiles each kernel once per process at model load and caches
the machine code on disk where it finds a writable cache directory; in a read-only install with no
home it compiles per process instead. Its parallel loops run on Numba's own OpenMP thread pool,
separate from PyTorch's, so each rank's serving thread sets both to the same count (`match_torch_threads`)
or the two TP ranks of one node would each run a pool as wide as the node.
"""

from __future__ import annotations

import numba
import torch
from numba import njit

PARALLEL_OPTIONS = {"parallel": True, "fastmath": True, "nogil": True, "error_model": "numpy"}


def compile_kernel(fn):
    """`fn` compiled by Numba as a parallel, GIL-free kernel (cached on disk where possible)."""
    try:
        return njit(cache=True, **PARALLEL_OPTIONS)(fn)
    except RuntimeError:  # no writable cache directory (read-only install, no home): compile per process
        return njit(cache=False, **PARALLEL_OPTIONS)(fn)


def match_torch_threads() -> int:
    """Give Numba's parallel loops, on the calling thread, as many threads as PyTorch's; returns the count.

    Numba's setting is per calling thread, like PyTorch's OpenMP one: call it on the thread that runs
    the steps.
    """
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads
