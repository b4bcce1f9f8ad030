"""`roofline`: batch-1 decode tokens/s against memory bandwidth / bytes read per token.

At batch 1 a decode step reads every weight once (and the KV cache so far) to produce one token,
so tokens/s <= bandwidth / bytes-per-token. The bandwidth is measured here, on this machine, over
buffers far larger than the caches; the bytes come from the model's actual parameters; the
achieved rate is a plain HF forward loop with a KV cache, greedy. achieved / limit is the
model-bandwidth utilisation (MBU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..bench.errors import BenchmarkError
from ..bench.report import result_document, write_json

GB = 1e9


@dataclass(frozen=True)
class BandwidthResult:
    """Measured bandwidths in GB/s (1e9 bytes), medians of `repeats` samples."""

    buffer_bytes: int
    read_gbps: float
    """A full reduction (`sum`): bytes read / time; the access pattern of a decode step."""
    copy_gbps: float
    """`copy_`: (bytes read + bytes written) / time, counted as STREAM does."""
    read_samples: list[float]
    copy_samples: list[float]

    @property
    def limit_gbps(self) -> float:
        """The larger of the two, so the roofline is never made easier to reach than measured."""
        return max(self.read_gbps, self.copy_gbps)


def measure_bandwidth(buffer_mib: int, repeats: int) -> BandwidthResult:
    """Median read and copy bandwidth over float32 buffers of `buffer_mib` MiB each."""
    numel = buffer_mib * 2**20 // 4
    source = torch.rand(numel, dtype=torch.float32)
    target = torch.empty_like(source)
    nbytes = source.numel() * source.element_size()
    # One untimed pass each: pages get faulted in and the thread pool spun up.
    source.sum()
    target.copy_(source)
    reads, copies = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        source.sum()
        reads.append(nbytes / (time.perf_counter() - start) / GB)
        start = time.perf_counter()
        target.copy_(source)
        copies.append(2 * nbytes / (time.perf_counter() - start) / GB)
    return BandwidthResult(nbytes, statistics.median(reads), statistics.median(copies), reads, copies)


@dataclass(frozen=True)
class DecodeBytes:
    """Bytes one batch-1 decode step reads."""

    num_parameters: int
    parameter_bytes: int
    weight_bytes_per_token: int
    """Every parameter once, except that an untied input embedding contributes only one row."""
    kv_bytes_per_context_token: int
    """K and V of one position over all layers."""
    mean_context: float
    """Average cache length over the timed decode steps."""

    @property
    def kv_bytes_per_token(self) -> float:
        """KV cache read per step at the mean context."""
        return self.kv_bytes_per_context_token * self.mean_context

    @property
    def total_bytes_per_token(self) -> float:
        """Weights + KV cache read per step."""
        return self.weight_bytes_per_token + self.kv_bytes_per_token


def decode_bytes(model: Any, input_len: int, output_len: int, kv_element_size: int) -> DecodeBytes:
    """Bytes read per decode step, from the model's actual parameters and config."""
    params = list(model.parameters())  # deduplicated, so tied weights count once
    parameter_bytes = sum(p.numel() * p.element_size() for p in params)
    weight_bytes = parameter_bytes
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight.data_ptr() == embedding.data_ptr()
    if not tied:
        # A lookup reads one row of the input embedding table, not the whole table.
        weight_bytes -= embedding.numel() * embedding.element_size()
        weight_bytes += embedding.shape[1] * embedding.element_size()
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    kv_per_position = 2 * config.num_hidden_layers * kv_heads * head_dim * kv_element_size
    # Step t (0-based) attends over input_len + t + 1 positions (the cache plus its own token).
    mean_context = input_len + (output_len + 1) / 2
    return DecodeBytes(
        num_parameters=sum(p.numel() for p in params),
        parameter_bytes=parameter_bytes,
        weight_bytes_per_token=weight_bytes,
        kv_bytes_per_context_token=kv_per_position,
        mean_context=mean_context,
    )


@torch.inference_mode()
def measure_decode(model: Any, input_len: int, output_len: int, repeats: int, seed: int) -> list[float]:
    """Batch-1 greedy decode tokens/s (prefill excluded), one sample per repeat after a warm-up."""
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (1, input_len), generator=generator)
    samples = []
    for attempt in range(repeats + 1):
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(output_len):
            out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        elapsed = time.perf_counter() - start
        if attempt > 0:  # the first pass warms allocator and kernels up
            samples.append(output_len / elapsed)
    return samples


def run_roofline(args: argparse.Namespace) -> int:
    """Entry point of `python -m inference.bench roofline`."""
    from transformers import AutoModelForCausalLM

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    dtype = getattr(torch, args.dtype)
    print(f"measuring memory bandwidth over {args.bandwidth_mib} MiB buffers ...", flush=True)
    bandwidth = measure_bandwidth(args.bandwidth_mib, args.bandwidth_repeats)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(args.model_dir), dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"cannot load a Hugging Face model from {args.model_dir}: {exc}") from None
    model.eval()
    element_size = torch.empty((), dtype=dtype).element_size()
    bytes_read = decode_bytes(model, args.input_len, args.output_len, element_size)
    print(f"timing batch-1 decode of {args.output_len} tokens x {args.repeats} ...", flush=True)
    samples = measure_decode(model, args.input_len, args.output_len, args.repeats, args.seed)
    achieved = statistics.median(samples)
    limit = bandwidth.limit_gbps * GB / bytes_read.total_bytes_per_token
    weights_only_limit = bandwidth.limit_gbps * GB / bytes_read.weight_bytes_per_token

    print(f"threads                         {threads}")
    print(f"read bandwidth (sum)            {bandwidth.read_gbps:8.2f} GB/s")
    print(f"copy bandwidth (read+write)     {bandwidth.copy_gbps:8.2f} GB/s")
    print(f"parameters                      {bytes_read.num_parameters:,} ({args.dtype})")
    print(f"weight bytes read / token       {bytes_read.weight_bytes_per_token / 2**20:8.1f} MiB")
    print(
        f"KV bytes read / token           {bytes_read.kv_bytes_per_token / 2**20:8.2f} MiB "
        f"(mean context {bytes_read.mean_context:g})"
    )
    print(f"limit = bandwidth / bytes       {limit:8.2f} tok/s (weights only {weights_only_limit:.2f})")
    print(f"achieved batch-1 decode (p50)   {achieved:8.2f} tok/s")
    print(f"model-bandwidth utilisation     {achieved / limit:8.1%}")

    if args.out:
        config = {
            "model_dir": str(args.model_dir),
            "dtype": args.dtype,
            "threads": threads,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "repeats": args.repeats,
            "bandwidth_mib": args.bandwidth_mib,
            "bandwidth_repeats": args.bandwidth_repeats,
        }
        document = result_document(
            "roofline",
            config,
            bandwidth={**asdict(bandwidth), "limit_gbps": bandwidth.limit_gbps},
            bytes_per_token={
                **asdict(bytes_read),
                "kv_bytes_per_token": bytes_read.kv_bytes_per_token,
                "total_bytes_per_token": bytes_read.total_bytes_per_token,
            },
            decode={"tokens_per_s_samples": samples, "tokens_per_s": achieved},
            roofline={
                "limit_tokens_per_s": limit,
                "weights_only_limit_tokens_per_s": weights_only_limit,
                "model_bandwidth_utilisation": achieved / limit,
            },
        )
        write_json(args.out, document)
        print(f"wrote {args.out}")
    return 0
