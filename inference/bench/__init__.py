"""Serving benchmark harness, modelled on vLLM's `vllm bench serve`.

Subcommands (``python -m inference.bench ...``):

- ``serve``: drive any OpenAI-compatible ``/v1/completions`` server over HTTP with random prompts
  of an exact token length, a fixed output length (ignore-eos), Poisson arrivals or a fixed
  concurrency; report throughput and TTFT / TPOT / ITL / end-to-end latency percentiles.
- ``compare``: the same prompts through Hugging Face ``generate`` (one at a time and one
  left-padded static batch) and through our server, with ratios side by side.
- ``roofline``: measured memory bandwidth vs. bytes read per decode step at batch 1.

Definitions follow CONVENTIONS.md section 6 (TPOT = (latency - TTFT) / (output tokens - 1)).
"""
