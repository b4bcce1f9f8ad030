"""Does the configured model fit one GPU? The arithmetic `plan` runs before `pulumi up`, not at pod start.

Per rank (one GPU of a tensor-parallel group), as the inference server allocates it:

* weights / tp: DeepSpeed AutoTP shards every Linear and Embedding across the ranks
  (deepspeed/module_inject/auto_tp.py: ``nn.Embedding: self._slice_embedding``); the engine loads
  the weights in ``dtype``, so weight bytes = parameters x dtype bytes.
* KV cache: layers x 2 x ceil(kv_heads / tp) x head_dim x dtype bytes per token (what
  inference/engine.py ``plan_kv_pool`` computes; AutoTP shards KV heads unevenly when tp does not
  divide them, so the largest shard, the ceiling, is what must fit). The server's paged pool grows
  to what ``--gpu-memory-utilization`` leaves and admits requests against free blocks; this plan
  checks the stricter case that (max_batch_size + 1) x max_model_len tokens fit (a full batch at
  full context, plus one sequence of headroom, never preempted).
* runtime margin: CUDA context, cuBLAS/NCCL workspaces, activations and logits of one step. Like
  vLLM's default ``gpu_memory_utilization=0.9``, 10 % of the GPU, at least 2 GiB.

Model shapes come from the known-model table below (Hugging Face ``config.json`` of each model;
the parameter counts are what those shapes add up to) or from ``inference.modelShape`` in the stack
config for any other model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024**3
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
RUNTIME_MARGIN_FRACTION = 0.10
RUNTIME_MARGIN_MIN_BYTES = 2 * GIB


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


@dataclass(frozen=True)
class GpuMemoryPlan:
    """Bytes one rank needs, and what one GPU has."""

    weight_bytes: int
    kv_bytes_per_token: int
    kv_slots: int
    max_model_len: int
    margin_bytes: int
    gpu_bytes: int

    @property
    def kv_bytes(self) -> int:
        return self.kv_bytes_per_token * self.kv_slots * self.max_model_len

    @property
    def needed_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.margin_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.gpu_bytes

    @property
    def kv_budget_bytes(self) -> int:
        """What is left for the KV cache once weights and margin are placed (may be negative)."""
        return self.gpu_bytes - self.weight_bytes - self.margin_bytes

    def max_batch_size(self) -> int:
        """Largest max_batch_size that fits at this max_model_len (0: not even one sequence)."""
        slots = self.kv_budget_bytes // (self.kv_bytes_per_token * self.max_model_len)
        return max(0, slots - 1)

    def max_model_len_at(self, batch_size: int) -> int:
        """Longest max_model_len that fits at this max_batch_size (0: none)."""
        return max(0, self.kv_budget_bytes // (self.kv_bytes_per_token * (batch_size + 1)))


def plan_gpu_memory(shape: ModelShape, *, tp_size: int, dtype: str, max_batch_size: int, max_model_len: int,
                    gpu_bytes: int) -> GpuMemoryPlan:
    """Per-rank memory of the inference server for this model and serving config on a GPU of `gpu_bytes`."""
    dtype_bytes = DTYPE_BYTES[dtype]
    kv_heads_per_rank = math.ceil(shape.num_kv_heads / tp_size)
    return GpuMemoryPlan(
        weight_bytes=math.ceil(shape.num_params * dtype_bytes / tp_size),
        kv_bytes_per_token=shape.num_layers * 2 * kv_heads_per_rank * shape.head_dim * dtype_bytes,
        kv_slots=max_batch_size + 1,
        max_model_len=max_model_len,
        margin_bytes=max(RUNTIME_MARGIN_MIN_BYTES, math.ceil(gpu_bytes * RUNTIME_MARGIN_FRACTION)),
        gpu_bytes=gpu_bytes,
    )


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"
