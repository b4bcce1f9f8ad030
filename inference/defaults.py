"""Serving defaults, owned here and nowhere else: the value of each and why.

The serving settings (inference/settings.py, which generates the server's command line, the Kubernetes
component's ``serving`` argument and the stack config's ``inference`` keys) and the engine (``EngineConfig``)
take their defaults from this module, so a setting left unset means the same thing on a laptop, in the pod
and in the plan's GPU-memory check.

Plain constants only: the platform side imports this as ``inferforge.inference.defaults`` on a deploy
machine without torch or DeepSpeed (tests/test_serving_settings.py checks that importing it loads neither).
"""

from __future__ import annotations

from typing import Final, Literal

TP_SIZE: Final = 1
"""Tensor-parallel ranks (GPUs) per model replica: one GPU unless a model needs more."""

DTYPE: Final[Literal["bfloat16"]] = "bfloat16"
"""Weights and activations dtype. bfloat16 is what every GPU we deploy (A100, H100) computes natively, and the
dtype the stack's GPU-memory check prices (2 bytes per weight); a local run gets the same numerics as the pod.
The server's ``auto`` (bf16 where the hardware has it, fp32 on CPUs without native bf16) stays available for
CPU development, but is not the default: it would make the same command mean different things per host."""

MAX_BATCH_SIZE: Final = 64
"""Sequences decoded together. A full batch of 64 at 4096 tokens is 14 GiB of a 7B model's KV cache on one GPU,
which the stack's GPU-memory check (stacks/gpu_memory.py, the engine's own KV planner) requires to fit; the
CLI's former 32 left half of a GPU's KV pool unused."""

MAX_WAITING: Final = 128
"""Requests queued for a slot before new ones get 429 + Retry-After. Two full batches: a client waits at most
about two generations before being told to back off, instead of queueing past its own timeout (the engine's
former 256). 128 is what deployed pods already ran with (the component did not pass it; the CLI said 128)."""

STACK_MAX_MODEL_LEN: Final = 4096
"""Context length (prompt + generated tokens) a stack deploys with unless its config says otherwise: the stack
config prices GPU memory before deploying, so it needs a number (stacks/gpu_memory.py). The server itself, given
no ``--max-model-len``, uses the model's ``max_position_embeddings``, lowered to what its paged KV pool holds."""

KV_BLOCK_SIZE: Final = 16
"""Tokens per paged KV block (vLLM's default): small enough that a sequence wastes under one block."""

GPU_MEMORY_UTILIZATION: Final = 0.9
"""Share of a GPU the server fills (weights + KV pool + activation reserve) without --kv-cache-memory (vLLM's
default for its flag of that name)."""

CPU_KV_CACHE_GIB: Final = 4.0
"""KV pool per rank on the CPU without --kv-cache-memory (vLLM's VLLM_CPU_KVCACHE_SPACE default)."""

ENABLE_PREFIX_CACHING: Final = True
"""Share the KV blocks of identical prompt prefixes (system prompts, RAG templates) between requests."""

MAX_NUM_BATCHED_TOKENS: Final = 2048
"""Token budget of one forward step (decode tokens + prompt chunks); raised to max_batch_size when smaller."""

DRAIN_TIMEOUT_S: Final = 60
"""Seconds in-flight requests get to finish after SIGTERM. 60 s lets a ~1,000-token answer finish at
~20 tokens/s; the pod's terminationGracePeriodSeconds is derived from it (preStop + drain + headroom)."""

PORT: Final = 8000
"""Port the server listens on, also for /metrics; the component's containerPort and probes use it."""

TOOL_CALL_PARSER: Final[Literal["hermes"]] = "hermes"
"""Tool-call syntax the model writes: Hermes, which Qwen2.5/Qwen3 and Hermes models use (vLLM's flag name)."""

EMBEDDINGS_POOLING_SERVED: Final[Literal["last"]] = "last"
"""Pooling of ``--embeddings served`` (the served decoder's own states): a causal model's last token is the
only one that has seen the whole input."""

EMBEDDINGS_POOLING_MODEL_DIR: Final[Literal["mean"]] = "mean"
"""Pooling of a separate embedding model (``--embeddings-model-dir``): mean over tokens, as BERT-style
sentence-embedding models are trained."""

CPU_WIDEN_MIN_ROWS: Final = 8
"""CPUs without native bf16/fp16 GEMM: rows from which a 16-bit linear product is computed in fp32
(inference/cpu_gemm.py; the crossover measured at about 7-9 rows)."""
