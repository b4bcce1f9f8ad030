"""Run the engine on every rank and record what rank 0 saw: a tensor-parallel consistency probe.

Launch it like the server (see inference.distributed), once with TP=1 and once with TP=N, and
compare the JSON files: greedy tokens must match and logits agree within float tolerance.

    python -m inference.engine_probe --model DIR --dtype float32 --out tp1.json
    deepspeed --num_accelerators 2 --bind_cores_to_rank --module inference.engine_probe \\
        --model DIR --dtype float32 --out tp2.json

`--mode tp-check` (default): rank 0 first drives raw steps (prefill + greedy decode in the first KV blocks,
recording each step's logits), then starts the engine and generates every prompt greedily in one
concurrent batch; then two KV-cache rounds against their own raw runs: prompts sharing a 40-token
prefix after that prefix was served once (prefix-cache hits), and two long requests in a pool too
small for both (the younger is preempted and recomputed). `--mode serve-until-dead`: rank 0
prints READY, keeps generating, and when the engine reports a dead rank prints DEAD and exits with
status 5 (what the server does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import torch

from .distributed import CMD_STEP, WireStep
from .engine import InferenceEngine
from .engine_api import GenerationRequest, SamplingParams
from .engine_config import EngineConfig
from .ranks import RankContext, load_rank, run_rank
from .scheduler import LOGITS_ALL
from .supervisor import exit_now

DEAD_EXIT_CODE = 5
KV_BLOCKS = 14
# Prompts of 5 and 12 tokens + 140 generated: 9 and 10 blocks of 16, each fits the 14-block pool alone, the
# two together cannot, whenever the second one starts in the first one's first 70 steps.
LONG_STEPS = 140


def probe_prompts(vocab_size: int, count: int = 4, seed: int = 1234) -> list[list[int]]:
    """Seeded prompts of different lengths (so the batch mixes lengths)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size, (5 + 7 * i,), generator=generator).tolist() for i in range(count)]


def raw_greedy(ctx: RankContext, prompt: list[int], steps: int) -> tuple[list[int], list[list[float]]]:
    """Prefill `prompt` into the first KV blocks and decode `steps` greedy tokens, returning tokens and logits."""
    tokens: list[int] = []
    all_logits: list[list[float]] = []
    n = len(prompt)
    block_size = ctx.runner.kv_pool.block_size
    table = list(range(-(-(n + steps) // block_size)))
    step = WireStep(0, [(0, n, True)], [table], torch.tensor(prompt), torch.arange(n))
    for i in range(steps):
        ctx.channel.send(CMD_STEP, step, i + 1)
        logits = ctx.runner.execute(step)[0]
        all_logits.append(logits.tolist())
        tokens.append(int(logits.argmax()))
        step = WireStep(1, [], [table], torch.tensor([tokens[-1]]), torch.tensor([n + i]))
    return tokens, all_logits


async def engine_batch(engine: InferenceEngine, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    async def one(i: int, prompt: list[int]) -> list[int]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        return [
            ev.token_id
            async for ev in engine.generate(GenerationRequest(f"probe-{i}", prompt, params))
            if ev.token_id is not None
        ]

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


def shared_prefix_prompts(vocab_size: int, seed: int = 99) -> tuple[list[int], list[list[int]]]:
    """A 40-token prefix and four prompts that extend it by 3, 6, 9 and 12 tokens."""
    generator = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, vocab_size, (40,), generator=generator).tolist()
    return prefix, [prefix + torch.randint(3, vocab_size, (3 * (i + 1),), generator=generator).tolist()
                    for i in range(4)]


async def kv_rounds(engine: InferenceEngine, prefix: list[int], shared: list[list[int]], long: list[list[int]],
                    steps: int, long_steps: int) -> dict:
    """Prefix caching and preemption rounds; returns their tokens and the KV counters."""
    def greedy(n: int) -> SamplingParams:
        return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)

    async def tokens(request_id: str, prompt: list[int], n: int, started: asyncio.Event | None = None) -> list[int]:
        out = []
        async for ev in engine.generate(GenerationRequest(request_id, prompt, greedy(n))):
            if ev.token_id is not None:
                out.append(ev.token_id)
                if started is not None:
                    started.set()
        return out

    await tokens("prefix", prefix, steps)  # its full blocks are now in the prefix cache
    hits_before = engine.prefix_cache_hit_tokens
    shared_tokens = await asyncio.gather(*(tokens(f"shared-{i}", p, steps) for i, p in enumerate(shared)))
    hits = engine.prefix_cache_hit_tokens - hits_before

    # The second long request joins once the first is decoding, so both run and outgrow the pool.
    first_token = asyncio.Event()
    first = asyncio.create_task(tokens("long-0", long[0], long_steps, first_token))
    await first_token.wait()
    second = await tokens("long-1", long[1], long_steps)
    long_tokens = [await first, second]
    await asyncio.sleep(0.2)  # let the step loop free the last sequence's blocks
    blocks = engine.kv_blocks
    return {
        "shared_tokens": shared_tokens, "prefix_hit_tokens": hits, "long_tokens": long_tokens,
        "preemptions": engine.num_preemptions, "num_blocks": blocks.num_blocks, "free_blocks_after": blocks.num_free,
    }


PROMPT_LOGPROBS_K = 3


def prompt_logprobs_prompt(vocab_size: int, seed: int = 77) -> list[int]:
    """100 seeded tokens (the probe uses 60 after a 40-token prefix: over its 64-token step budget, so the
    prompt logprobs take two steps or more)."""
    return torch.randint(3, vocab_size, (100,), generator=torch.Generator().manual_seed(seed)).tolist()


def raw_prompt_logprobs(ctx: RankContext, prompt: list[int]) -> list[float]:
    """Each prompt token's logprob from one unbatched forward over the whole prompt (every row's logits)."""
    n = len(prompt)
    table = list(range(-(-n // ctx.runner.kv_pool.block_size)))
    step = WireStep(0, [(0, n, LOGITS_ALL)], [table], torch.tensor(prompt), torch.arange(n))
    ctx.channel.send(CMD_STEP, step, 1)
    logprobs = torch.log_softmax(ctx.runner.execute(step), dim=-1)
    return logprobs[:-1].gather(1, torch.tensor(prompt[1:]).unsqueeze(1)).squeeze(1).tolist()


async def prompt_logprobs_round(engine: InferenceEngine, prompt: list[int], beside: list[int], steps: int
                                ) -> tuple[list[list], list[int]]:
    """The prompt's logprobs (max_tokens 0) while another request decodes; (logprob, rank, top ids) per token."""
    params = SamplingParams(max_tokens=0, temperature=0.0, prompt_logprobs=PROMPT_LOGPROBS_K)
    decoding = asyncio.create_task(engine_batch(engine, [beside], steps))
    entries: list[list] = []
    async for ev in engine.generate(GenerationRequest("prompt-logprobs", prompt, params)):
        if ev.prompt_logprobs is not None:
            entries = [[e.logprob, e.rank, [t for t, _ in e.top]] for e in ev.prompt_logprobs]
    return entries, (await decoding)[0]


async def serve_until_dead(engine: InferenceEngine) -> None:
    def on_dead(exc: BaseException) -> None:
        print(f"DEAD {type(exc).__name__}", flush=True)
        os._exit(DEAD_EXIT_CODE)

    engine.add_death_callback(on_dead)
    print("READY", flush=True)
    params = SamplingParams(max_tokens=engine.max_model_len - 4, temperature=0.0, ignore_eos=True)
    i = 0
    while True:
        i += 1
        async for _ in engine.generate(GenerationRequest(f"live-{i}", [1, 2, 3, 4], params)):
            pass


def _query_projection(attention: torch.nn.Module) -> torch.nn.Module:
    """The module computing queries: `q_proj`, or the fused `qkv_proj` (Phi-3)."""
    return getattr(attention, "q_proj", None) or attention.qkv_proj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.engine_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="model directory")
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, help="JSON written by rank 0 (tp-check mode)")
    parser.add_argument("--mode", default="tp-check", choices=["tp-check", "serve-until-dead"])
    parser.add_argument("--steps", default=8, type=int, help="greedy tokens per prompt")
    parser.add_argument("--collective-timeout", default=60.0, type=float, help="seconds")
    parser.add_argument("--idle-s", default=0.0, type=float,
                        help="tp-check: stay idle this long after starting the engine (heartbeats must keep ranks up)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the DeepSpeed launcher
    args = parser.parse_args(argv)
    if args.mode == "tp-check" and args.out is None:
        parser.error("--out is required in tp-check mode")

    cfg = EngineConfig(
        model_dir=args.model,
        dtype=args.dtype,
        max_batch_size=8,
        max_num_batched_tokens=64,
        max_model_len=160,
        num_kv_blocks=KV_BLOCKS,  # 224 tokens: one long request fits, two do not
        collective_timeout_s=args.collective_timeout,
    )
    ctx = load_rank(cfg)
    if ctx.env.rank != 0:
        run_rank(ctx)
        return 0
    if args.mode == "serve-until-dead":
        engine = run_rank(ctx)
        assert engine is not None
        asyncio.run(serve_until_dead(engine))
        return 0
    prompts = probe_prompts(ctx.runner.vocab_size)
    prefix, shared = shared_prefix_prompts(ctx.runner.vocab_size)
    long = probe_prompts(ctx.runner.vocab_size, count=2, seed=5)
    raw = [raw_greedy(ctx, p, args.steps) for p in prompts]
    raw_shared = [raw_greedy(ctx, p, args.steps)[0] for p in shared]
    raw_long = [raw_greedy(ctx, p, LONG_STEPS)[0] for p in long]
    # Its first 40 tokens are the shared prefix, cached by the KV rounds: prompt logprobs must compute them anyway.
    plp_prompt = prefix + prompt_logprobs_prompt(ctx.runner.vocab_size)[:60]
    raw_plp = raw_prompt_logprobs(ctx, plp_prompt)
    engine = run_rank(ctx)
    assert engine is not None
    time.sleep(args.idle_s)

    async def rounds() -> tuple[list[list[int]], dict]:
        batched = await engine_batch(engine, prompts, args.steps)
        kv = await kv_rounds(engine, prefix, shared, long, args.steps, LONG_STEPS)
        plp, beside = await prompt_logprobs_round(engine, plp_prompt, prompts[0], args.steps)
        kv.update(prompt_logprobs=plp, prompt_logprobs_prompt=plp_prompt, decoded_beside=beside)
        await engine.shutdown()
        return batched, kv

    batched, kv = asyncio.run(rounds())
    result = {
        "world_size": ctx.env.world_size,
        "prompts": prompts,
        "raw_tokens": [tokens for tokens, _ in raw],
        "raw_logits": [logits for _, logits in raw],
        "engine_tokens": batched,
        "raw_shared_tokens": raw_shared,
        "raw_long_tokens": raw_long,
        "raw_prompt_logprobs": raw_plp,
        **kv,
        # Which projection classes rank 0 runs and how many layers run the fused forward (inference.fused).
        "q_proj_class": type(_query_projection(ctx.runner.model.model.layers[0].self_attn)).__name__,
        "fused_attention_layers": sum(hasattr(m, "inferforge_qkv") for m in ctx.runner.model.modules()),
        "fused_mlp_layers": sum(hasattr(m, "inferforge_gate_up") for m in ctx.runner.model.modules()),
    }
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    exit_now(main())  # as the server does: no interpreter teardown of the process group
