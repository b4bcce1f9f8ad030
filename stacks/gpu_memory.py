"""Does the configured model fit one GPU? The engine's own KV arithmetic, run by `plan` before `pulumi up`.

Per rank (one GPU of a tensor-parallel group), as the inference server sizes it at start-up
(inference/model_runner.py ``kv_budget_bytes``, then inference/kv_plan.py, which this module calls too):

* weights / tp: DeepSpeed AutoTP shards every Linear and Embedding across the ranks
  (deepspeed/module_inject/auto_tp.py: ``nn.Embedding: self._slice_embedding``); the engine loads
  the weights in ``dtype``, so weight bytes = parameters x dtype bytes (``auto`` is 16-bit on a GPU).
* what else is in use when the pool is sized: the CUDA context and NCCL buffers, which the engine
  measures (``total - free``) and this plan estimates (``CUDA_RUNTIME_BYTES``).
* the KV pool: ``gpu_memory_utilization`` x the GPU, less what is in use, less the engine's activation
  reserve (``gpu_kv_budget_bytes``), or ``kv_cache_memory_gib`` when set; ``plan_kv_pool`` turns that
  budget into blocks of ``kv_block_size`` tokens (AutoTP gives a rank ceil(kv_heads / tp) heads).

The engine starts when one sequence of ``max_model_len`` fits the pool, and queues or preempts the rest.
The plan checks the stricter assumption, and says so: a full batch at full context (``max_batch_size`` x
ceil(``max_model_len`` / ``kv_block_size``) blocks) fits, so no request is ever preempted for KV space.

Model shapes come from the known-model table below (Hugging Face ``config.json`` of each model;
the parameter counts are what those shapes add up to) or from ``inference.modelShape`` in the stack
config for any other model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from inferforge.inference import defaults, kv_plan

GIB = kv_plan.GIB
# Bytes per weight on a GPU: `auto` is bf16 there (fp16 on GPUs without bf16), 16 bits either way.
DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "float32": 4}
CUDA_RUNTIME_BYTES = GIB
"""In use on a GPU besides the weights when the engine sizes its pool: the CUDA context (~0.5 GiB with PyTorch)
and NCCL's buffers. An estimate: the engine measures the real figure at start-up."""


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate needs to know about a decoder-only transformer."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_params: int


# Keys are served model names, lower case, without an `org/` prefix. Sources: config.json of
# Qwen/Qwen2.5-7B(-Instruct), Qwen/Qwen2.5-32B(-Instruct), meta-llama/Llama-3.1-8B(-Instruct),
# meta-llama/Llama-3.1-70B(-Instruct), mistralai/Mistral-7B(-Instruct)-v0.3 on huggingface.co.
_QWEN25_7B = ModelShape(num_layers=28, num_kv_heads=4, head_dim=128, num_params=7_615_616_512)
_QWEN25_32B = ModelShape(num_layers=64, num_kv_heads=8, head_dim=128, num_params=32_763_876_352)
_LLAMA31_8B = ModelShape(num_layers=32, num_kv_heads=8, head_dim=128, num_params=8_030_261_248)
_LLAMA31_70B = ModelShape(num_layers=80, num_kv_heads=8, head_dim=128, num_params=70_553_706_496)
_MISTRAL_7B_V03 = ModelShape(num_layers=32, num_kv_heads=8, head_dim=128, num_params=7_248_023_552)

KNOWN_MODELS: dict[str, ModelShape] = {
    "qwen2.5-7b": _QWEN25_7B,
    "qwen2.5-7b-instruct": _QWEN25_7B,
    "qwen2.5-32b": _QWEN25_32B,
    "qwen2.5-32b-instruct": _QWEN25_32B,
    "llama-3.1-8b": _LLAMA31_8B,
    "llama-3.1-8b-instruct": _LLAMA31_8B,
    "meta-llama-3.1-8b-instruct": _LLAMA31_8B,
    "llama-3.1-70b": _LLAMA31_70B,
    "llama-3.1-70b-instruct": _LLAMA31_70B,
    "meta-llama-3.1-70b-instruct": _LLAMA31_70B,
    "mistral-7b-v0.3": _MISTRAL_7B_V03,
    "mistral-7b-instruct-v0.3": _MISTRAL_7B_V03,
}


def known_model(model_name: str) -> ModelShape | None:
    """The table's shape for a served model name (`Qwen/Qwen2.5-7B-Instruct` and `qwen2.5-7b-instruct` alike)."""
    return KNOWN_MODELS.get(model_name.rsplit("/", 1)[-1].lower())


ASSUMPTION = "a full batch at full context, never preempted for KV space"
"""What the plan's check requires of the KV pool (the engine itself needs only one sequence of max_model_len)."""


@dataclass(frozen=True)
class GpuMemoryPlan:
    """One rank's memory as the engine would size it on this GPU."""

    weight_bytes: int
    runtime_bytes: int
    gpu_bytes: int
    gpu_memory_utilization: float
    kv_budget_bytes: int
    """The pool's budget: kv_cache_memory_gib, or what gpu_memory_utilization leaves (may be negative)."""
    kv_bytes_per_token: int
    block_size: int
    max_batch_size: int
    max_model_len: int
    pool_blocks: int
    """Blocks the engine's pool would hold (0: not even one sequence of max_model_len, the engine refuses to start)."""
    explicit_kv: bool

    @property
    def blocks_per_sequence(self) -> int:
        return -(-self.max_model_len // self.block_size)

    @property
    def needed_blocks(self) -> int:
        """A full batch at full context."""
        return self.max_batch_size * self.blocks_per_sequence

    @property
    def kv_bytes(self) -> int:
        """KV bytes of a full batch at full context."""
        return self.needed_blocks * self.block_size * self.kv_bytes_per_token

    @property
    def reserve_bytes(self) -> int:
        return kv_plan.KV_ACTIVATION_RESERVE_BYTES

    @property
    def needed_bytes(self) -> int:
        return self.weight_bytes + self.runtime_bytes + self.reserve_bytes + self.kv_bytes

    @property
    def fits(self) -> bool:
        if self.pool_blocks < self.needed_blocks:
            return False
        # An explicit pool is allocated whatever the GPU holds: the whole of it must fit the GPU.
        return not self.explicit_kv or self.needed_bytes <= self.gpu_bytes

    def _budget_blocks(self) -> int:
        return max(0, self.kv_budget_bytes) // (self.kv_bytes_per_token * self.block_size)

    def max_batch_size_that_fits(self) -> int:
        """Largest max_batch_size whose full batch fits at this max_model_len (0: not even one sequence)."""
        return self._budget_blocks() // self.blocks_per_sequence

    def max_model_len_at(self, batch_size: int) -> int:
        """Longest max_model_len whose full batch of `batch_size` fits (0: none)."""
        return (self._budget_blocks() // batch_size) * self.block_size


def plan_gpu_memory(shape: ModelShape, *, tp_size: int, dtype: str, max_batch_size: int, max_model_len: int,
                    gpu_bytes: int, kv_block_size: int = defaults.KV_BLOCK_SIZE,
                    gpu_memory_utilization: float = defaults.GPU_MEMORY_UTILIZATION,
                    kv_cache_memory_gib: float | None = None) -> GpuMemoryPlan:
    """Per-rank memory of the inference server for this model and these serving settings on a GPU of `gpu_bytes`,
    sized by the engine's own planner (inference/kv_plan.py)."""
    dtype_bytes = DTYPE_BYTES[dtype]
    weight_bytes = math.ceil(shape.num_params * dtype_bytes / tp_size)
    if kv_cache_memory_gib is not None:
        budget = int(kv_cache_memory_gib * GIB)
    else:
        budget = kv_plan.gpu_kv_budget_bytes(total_bytes=gpu_bytes, used_bytes=weight_bytes + CUDA_RUNTIME_BYTES,
                                             gpu_memory_utilization=gpu_memory_utilization)
    try:
        pool = kv_plan.plan_kv_pool(
            num_layers=shape.num_layers, kv_heads=shape.num_kv_heads, head_dim=shape.head_dim, dtype_bytes=dtype_bytes,
            world_size=tp_size, budget_bytes=max(0, budget), block_size=kv_block_size, max_batch_size=max_batch_size,
            model_max_len=max_model_len, requested_max_model_len=max_model_len)
        blocks, per_token = pool.num_blocks, pool.bytes_per_token
    except ValueError:  # the engine would refuse to start: not even one sequence of max_model_len fits
        blocks = 0
        per_token = kv_plan.kv_bytes_per_token(shape.num_layers, -(-shape.num_kv_heads // tp_size), shape.head_dim,
                                               dtype_bytes)
    return GpuMemoryPlan(
        weight_bytes=weight_bytes, runtime_bytes=CUDA_RUNTIME_BYTES, gpu_bytes=gpu_bytes,
        gpu_memory_utilization=gpu_memory_utilization, kv_budget_bytes=budget, kv_bytes_per_token=per_token,
        block_size=kv_block_size, max_batch_size=max_batch_size, max_model_len=max_model_len, pool_blocks=blocks,
        explicit_kv=kv_cache_memory_gib is not None)


def describe(plan: GpuMemoryPlan) -> str:
    """One line of `plan`'s output: what one rank holds and whether the checked assumption holds."""
    verdict = ("fits" if plan.fits else "does NOT fit") + (
        f"; a full batch fits up to {plan.max_batch_size_that_fits()} sequences at this context" if plan.fits else "")
    budget = ("kvCacheMemoryGib" if plan.explicit_kv
              else f"{plan.gpu_memory_utilization:g} x {gib(plan.gpu_bytes)}, less the rest")
    return (f"{gib(plan.weight_bytes)} weights + {gib(plan.runtime_bytes)} CUDA runtime (est.) + "
            f"{gib(plan.reserve_bytes)} activation reserve; KV pool {gib(max(0, plan.kv_budget_bytes))} ({budget}), "
            f"needs {plan.max_batch_size} x {plan.blocks_per_sequence} blocks of {plan.block_size} tokens = "
            f"{gib(plan.kv_bytes)}: {verdict}")


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"
