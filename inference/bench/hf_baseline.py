"""Hugging Face `generate` baselines: one prompt at a time, and one left-padded static batch.

Both run in this process on the same prompts (token ids) the server gets, greedy, with
`min_new_tokens = max_new_tokens = output_len` so every sequence generates exactly `output_len`
tokens (ignore-eos semantics). A streamer records the wall-clock time of every decode step, so
the baselines report TTFT / TPOT / ITL with the same definitions as the HTTP benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from ..bench.errors import BenchmarkError
from ..bench.metrics import DEFAULT_PERCENTILES, BenchmarkMetrics, RequestResult, compute_metrics
from ..bench.workload import Prompt


class StepTimer(BaseStreamer):
    """Records when `generate` hands over each new token (one call per decode step, whole batch)."""

    def __init__(self) -> None:
        self.prompt_seen = False
        self.step_times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        """The first call carries the prompt; each later call one step's tokens."""
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.step_times.append(time.perf_counter())

    def end(self) -> None:
        """Nothing to flush: timestamps are taken in `put`."""


@dataclass
class BaselineRun:
    """Per-sequence results and aggregates of one baseline mode."""

    name: str
    results: list[RequestResult]
    metrics: BenchmarkMetrics


def load_hf_model(model_dir: Path, dtype: str) -> tuple[Any, Any]:
    """Model (eval, inference only) and tokenizer from a local directory."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=getattr(torch, dtype), local_files_only=True
        ).eval()
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"cannot load a Hugging Face model from {model_dir}: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs some pad id; masked out anyway
    # On a GPU node the baseline runs where the server runs; generate() syncs when it streams tokens.
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer


def _sequence_result(prompt_len: int, output_len: int, start: float, step_times: Sequence[float]) -> RequestResult:
    """One sequence's timings from the batch's step timestamps (every sequence sees every step)."""
    return RequestResult(
        success=True,
        prompt_len=prompt_len,
        expected_output_len=output_len,
        output_len=len(step_times),
        ttft_s=step_times[0] - start,
        latency_s=step_times[-1] - start,
        itl_s=[b - a for a, b in zip(step_times, step_times[1:], strict=False)],
    )


@torch.inference_mode()
def _generate_timed(model: Any, tokenizer: Any, batch: Sequence[Prompt], output_len: int) -> list[RequestResult]:
    """Generate `output_len` tokens for every prompt of `batch` in one call, left-padded."""
    tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the last real token
    encoded = tokenizer.pad({"input_ids": [p.token_ids for p in batch]}, return_tensors="pt")
    timer = StepTimer()
    start = time.perf_counter()
    output = model.generate(
        input_ids=encoded["input_ids"].to(model.device),
        attention_mask=encoded["attention_mask"].to(model.device),
        max_new_tokens=output_len,
        min_new_tokens=output_len,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        streamer=timer,
    )
    generated = output.shape[1] - encoded["input_ids"].shape[1]
    if generated != len(timer.step_times):
        raise BenchmarkError(f"generate returned {generated} tokens but streamed {len(timer.step_times)}")
    return [_sequence_result(len(p.token_ids), output_len, start, timer.step_times) for p in batch]


def run_one_at_a_time(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    output_len: int,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> BaselineRun:
    """Each prompt alone, back to back: the no-batching reference (after one warm-up prompt)."""
    _generate_timed(model, tokenizer, prompts[:1], output_len)
    results: list[RequestResult] = []
    start = time.perf_counter()
    offset = 0.0
    for prompt in prompts:
        (result,) = _generate_timed(model, tokenizer, [prompt], output_len)
        result.start_offset_s = offset
        offset += result.latency_s
        results.append(result)
    duration = time.perf_counter() - start
    return BaselineRun("hf_one_at_a_time", results, compute_metrics(results, duration, percentiles))


def run_padded_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    output_len: int,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> BaselineRun:
    """All prompts as one left-padded static batch (after a short warm-up batch of the same shape)."""
    _generate_timed(model, tokenizer, prompts, min(4, output_len))
    start = time.perf_counter()
    results = _generate_timed(model, tokenizer, prompts, output_len)
    duration = time.perf_counter() - start
    return BaselineRun("hf_padded_batch", results, compute_metrics(results, duration, percentiles))
