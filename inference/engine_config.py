"""How to load and run the model: `EngineConfig`, validated field by field (plain Python, no torch).

The serving settings among its fields (dtype, batch and context limits, KV cache) are declared in
inference/settings.py and pass through from the command line by name (inference/serve.py); the rest are
engine knobs for tests, benchmarks and CPU kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import defaults, settings
from .field_limits import limits_of

DTYPE_CHOICES = tuple(settings.Dtype)
"""The declaration's dtypes (inference/settings.py); inference/model_runner.py's DTYPES maps all but auto."""


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
    cpu_widen_min_rows: int = defaults.CPU_WIDEN_MIN_ROWS
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
        # The serving settings among these fields are bounded where they are declared (inference/settings.py).
        for setting in settings.settings_fields():
            value = getattr(self, setting.name, None)
            limits = limits_of(setting)
            problem = limits.problem(value) if limits is not None and value is not None else None
            if problem:
                raise ValueError(f"{setting.name} {value!r} is invalid: {problem}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
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
