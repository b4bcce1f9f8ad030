"""The engine (TP=1, in-process, fp32 tiny model): continuous batching, sampling, limits, lifecycle."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from inference.engine import InferenceEngine
from inference.engine_api import (
    EngineDeadError,
    EngineShuttingDownError,
    GenerationRequest,
    QueueFullError,
    SamplingParams,
    TokenEvent,
)
from inference.engine_config import EngineConfig
from inference.ranks import start_engine

pytestmark = pytest.mark.timeout(120)


def make_engine(model_dir: Path, **overrides) -> InferenceEngine:
    settings = dict(
        model_dir=model_dir, dtype="float32", max_batch_size=8, max_waiting=32, max_model_len=256,
        max_num_batched_tokens=48, num_threads=1,
    )
    settings.update(overrides)
    engine = start_engine(EngineConfig(**settings), environ={})
    assert engine is not None
    return engine


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[InferenceEngine]:
    # A small token budget (48) forces long prompts to prefill in chunks while others decode.
    engine = make_engine(tiny_model_dir)
    yield engine
    asyncio.run(engine.shutdown())


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=kw.pop("ignore_eos", True), **kw)


async def collect(engine: InferenceEngine, request_id: str, prompt: list[int], params: SamplingParams
                  ) -> list[TokenEvent]:
    return [event async for event in engine.generate(GenerationRequest(request_id, prompt, params))]


def tokens_of(events: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


def mixed_prompts(count: int, seed: int = 7) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 512, (1 + (11 * i) % 70,), generator=generator).tolist() for i in range(count)]


def test_16_concurrent_greedy_requests_equal_their_unbatched_runs(engine: InferenceEngine) -> None:
    prompts = mixed_prompts(16)
    max_tokens = [4 + (5 * i) % 17 for i in range(16)]

    async def batched() -> list[list[TokenEvent]]:
        pairs = enumerate(zip(prompts, max_tokens, strict=True))
        return await asyncio.gather(*(collect(engine, f"batch-{i}", p, greedy(n)) for i, (p, n) in pairs))

    async def alone() -> list[list[TokenEvent]]:
        pairs = enumerate(zip(prompts, max_tokens, strict=True))
        return [await collect(engine, f"alone-{i}", p, greedy(n)) for i, (p, n) in pairs]

    together = asyncio.run(batched())
    separately = asyncio.run(alone())

    assert [tokens_of(e) for e in together] == [tokens_of(e) for e in separately]
    for events, n in zip(together, max_tokens, strict=True):
        assert len(tokens_of(events)) == n
        assert [e.finish_reason for e in events] == [None] * (n - 1) + ["length"]


def test_a_burst_of_equal_length_prompts_equals_their_unbatched_runs(engine: InferenceEngine) -> None:
    # Equal-length prompts admitted in one step share one batched prompt-attention call.
    generator = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, 512, (6,), generator=generator).tolist() for _ in range(8)]

    async def burst() -> list[list[TokenEvent]]:
        return await asyncio.gather(*(collect(engine, f"burst-{i}", p, greedy(6)) for i, p in enumerate(prompts)))

    together = asyncio.run(burst())
    separately = [asyncio.run(collect(engine, f"single-{i}", p, greedy(6))) for i, p in enumerate(prompts)]

    assert [tokens_of(e) for e in together] == [tokens_of(e) for e in separately]
    assert len({tuple(tokens_of(e)) for e in together}) > 1  # different prompts, different outputs


def test_greedy_output_equals_transformers_generate(engine: InferenceEngine, tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompt = mixed_prompts(3)[2]

    ours = tokens_of(asyncio.run(collect(engine, "hf-ref", prompt, greedy(12))))
    with torch.inference_mode():
        reference = model.generate(
            torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False, eos_token_id=None
        )[0, len(prompt):].tolist()

    assert ours == reference


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(engine: InferenceEngine) -> None:
    prompt = mixed_prompts(1, seed=3)[0]
    params = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=1234, ignore_eos=True)
    others = [SamplingParams(max_tokens=10 + i, temperature=1.0, seed=None, ignore_eos=True) for i in range(5)]

    alone = tokens_of(asyncio.run(collect(engine, "seed-alone", prompt, params)))

    async def in_a_crowd() -> list[TokenEvent]:
        pairs = enumerate(zip(mixed_prompts(5), others, strict=True))
        crowd = [collect(engine, f"crowd-{i}", p, o) for i, (p, o) in pairs]
        results = await asyncio.gather(collect(engine, "seed-crowd", prompt, params), *crowd)
        return results[0]

    crowded = tokens_of(asyncio.run(in_a_crowd()))
    other_seed = tokens_of(asyncio.run(collect(engine, "seed-other", prompt, SamplingParams(
        max_tokens=16, temperature=0.9, top_p=0.95, seed=99, ignore_eos=True))))
    greedy_tokens = tokens_of(asyncio.run(collect(engine, "seed-greedy", prompt, greedy(16))))

    assert alone == crowded
    assert alone != other_seed
    assert alone != greedy_tokens  # temperature 0.9 really samples on this model


def test_max_tokens_bounds_the_output_and_finishes_with_length(engine: InferenceEngine) -> None:
    events = asyncio.run(collect(engine, "max-tokens", [1, 5, 9], greedy(3)))

    assert len(events) == 3
    assert events[-1].finish_reason == "length"


def test_eos_stops_generation_unless_ignore_eos(tiny_model_dir: Path, engine: InferenceEngine) -> None:
    prompt = [1, 40, 41, 42]
    free_run = tokens_of(asyncio.run(collect(engine, "eos-probe", prompt, greedy(8))))
    eos = free_run[3]  # make the 4th greedy token the end-of-sequence token
    first_eos = free_run.index(eos)
    stopping = make_engine(tiny_model_dir, eos_token_ids=(eos,))
    try:
        stopped = asyncio.run(collect(stopping, "eos-stop", prompt, greedy(8, ignore_eos=False)))
        ignored = asyncio.run(collect(stopping, "eos-ignored", prompt, greedy(8, ignore_eos=True)))
    finally:
        asyncio.run(stopping.shutdown())

    assert tokens_of(stopped) == free_run[: first_eos + 1]
    assert stopped[-1].finish_reason == "stop"
    assert tokens_of(ignored) == free_run
    assert ignored[-1].finish_reason == "length"


def test_abort_ends_the_request_and_frees_its_slot(engine: InferenceEngine) -> None:
    async def scenario() -> list[TokenEvent]:
        events = []
        async for event in engine.generate(GenerationRequest("to-abort", [1, 2, 3], greedy(200))):
            events.append(event)
            if len(events) == 2:
                engine.abort("to-abort")
        return events

    events = asyncio.run(scenario())

    assert events[-1] == TokenEvent(None, "abort")
    assert len(events) < 200
    assert engine.num_running == 0 or wait_until(lambda: engine.num_running == 0)


def test_closing_the_stream_early_frees_the_slot(engine: InferenceEngine) -> None:
    async def disconnect_after_first_token() -> None:
        stream = engine.generate(GenerationRequest("disconnect", [1, 2, 3], greedy(200)))
        await stream.__anext__()
        await stream.aclose()

    asyncio.run(disconnect_after_first_token())

    assert wait_until(lambda: engine.num_running == 0)


def test_full_waiting_queue_refuses_with_queue_full(tiny_model_dir: Path) -> None:
    small = make_engine(tiny_model_dir, max_batch_size=1, max_waiting=1, max_num_batched_tokens=8)

    async def scenario() -> tuple[QueueFullError, list[TokenEvent], list[TokenEvent]]:
        running = asyncio.ensure_future(collect(small, "running", [1, 2], greedy(60)))
        await asyncio.sleep(0)
        while small.num_running < 1:
            await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(collect(small, "waiting", [1, 2], greedy(2)))
        while small.num_waiting < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError) as refused:
            await collect(small, "refused", [1, 2], greedy(2))
        return refused.value, await running, await waiting

    try:
        refused, running, waiting = asyncio.run(scenario())
    finally:
        asyncio.run(small.shutdown())

    assert refused.retry_after_s > 0
    assert running[-1].finish_reason == "length" and waiting[-1].finish_reason == "length"


def test_stop_admission_refuses_new_requests_but_finishes_in_flight_ones(tiny_model_dir: Path) -> None:
    draining = make_engine(tiny_model_dir)

    async def scenario() -> list[TokenEvent]:
        in_flight = asyncio.ensure_future(collect(draining, "in-flight", [1, 2, 3], greedy(20)))
        while draining.num_running + draining.num_waiting < 1:
            await asyncio.sleep(0.01)
        draining.stop_admission()
        with pytest.raises(EngineShuttingDownError):
            await collect(draining, "late", [1, 2], greedy(2))
        return await in_flight

    try:
        events = asyncio.run(scenario())
        assert draining.is_ready
    finally:
        asyncio.run(draining.shutdown())

    assert len(tokens_of(events)) == 20 and events[-1].finish_reason == "length"
    assert not draining.is_ready


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ([], greedy(4), "prompt_token_ids is empty"),
        ([1, 2], greedy(300), "exceeds the model's context of 256"),
        ([1, 100_000], greedy(4), "prompt token ids must be in [0, 512)"),
        ([1, 2], SamplingParams(max_tokens=-1), "max_tokens must be >= 0"),
        ([1, 2], SamplingParams(max_tokens=4, top_p=0.0), "top_p must be in (0, 1]"),
        ([1, 2], SamplingParams(max_tokens=4, temperature=-1.0), "temperature must be >= 0"),
    ],
)
def test_bad_requests_are_refused_with_a_message_naming_the_problem(
    engine: InferenceEngine, prompt: list[int], params: SamplingParams, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        asyncio.run(collect(engine, "bad", prompt, params))

    assert engine.is_ready


def test_engine_reports_its_model_and_tokenizer(engine: InferenceEngine, tiny_model_dir: Path) -> None:
    assert engine.model_name == tiny_model_dir.name
    assert engine.max_model_len == 256
    assert engine.tokenizer.eos_token_id in engine.eos_token_ids
    assert engine.is_ready and not engine.is_dead


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dtype", "int8", "dtype 'int8' is not one of auto, bfloat16, float16, float32"),
        ("max_batch_size", 0, "max_batch_size 0 is invalid: allowed: >= 1 and <= 1024"),
        ("max_model_len", 1, "max_model_len 1 is invalid: allowed: >= 2"),
        ("kv_cache_memory_gib", 0.0, "kv_cache_memory_gib 0.0 is invalid: allowed: > 0"),
        ("gpu_memory_utilization", 1.5, "gpu_memory_utilization 1.5 is invalid: allowed: > 0 and <= 1"),
        ("kv_block_size", 2048, "kv_block_size 2048 is invalid: allowed: >= 1 and <= 1024"),
        ("max_num_batched_tokens", 0, "max_num_batched_tokens must be >= 1"),
        ("max_num_batched_tokens", 4, "must be >= max_batch_size"),
        ("device", "tpu", "device 'tpu' is not one of auto, cpu, cuda"),
        ("collective_timeout_s", 0, "collective_timeout_s must be > 0"),
    ],
)
def test_invalid_config_is_rejected_with_the_field_named(
    tiny_model_dir: Path, field: str, value: object, message: str
) -> None:
    cfg = EngineConfig(model_dir=tiny_model_dir, **{field: value})

    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_missing_model_dir_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        EngineConfig(model_dir=tmp_path / "nope").validate()


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    """Poll a condition the engine thread makes true at its next step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_a_failing_step_marks_the_engine_dead_and_fails_pending_requests(tiny_model_dir: Path) -> None:
    broken = make_engine(tiny_model_dir)
    deaths: list[BaseException] = []
    broken.add_death_callback(deaths.append)

    def lost_rank(step):
        raise RuntimeError("Connection closed by peer")  # what gloo raises when a rank dies

    broken._runner.execute = lost_rank

    with pytest.raises(EngineDeadError, match="Connection closed by peer"):
        asyncio.run(collect(broken, "doomed", [1, 2, 3], greedy(5)))
    with pytest.raises(EngineDeadError):
        asyncio.run(collect(broken, "after-death", [1, 2, 3], greedy(5)))

    assert broken.is_dead and not broken.is_ready
    assert len(deaths) == 1
    asyncio.run(broken.shutdown())


def test_death_callbacks_have_run_when_a_pending_request_sees_the_error(tiny_model_dir: Path) -> None:
    # The order the engine promises: callbacks first, then the waiters are failed. The callback
    # holds on until the waiter has seen its error (or 2 s), so the wrong order fails every time
    # instead of only when the event loop happens to wake up before the engine thread.
    broken = make_engine(tiny_model_dir)
    order: list[str] = []
    waiter_failed = threading.Event()

    def on_death(exc: BaseException) -> None:
        waiter_failed.wait(2)
        order.append("callback")

    broken.add_death_callback(on_death)

    def lost_rank(step):
        raise RuntimeError("Connection closed by peer")

    broken._runner.execute = lost_rank

    async def doomed() -> None:
        try:
            await collect(broken, "doomed", [1, 2, 3], greedy(5))
        except EngineDeadError:
            order.append("waiter failed")
            waiter_failed.set()

    asyncio.run(doomed())
    assert order == ["callback", "waiter failed"]
    asyncio.run(broken.shutdown())


def test_a_step_stuck_past_the_timeout_is_declared_dead_instead_of_hanging(tiny_model_dir: Path) -> None:
    stuck = make_engine(tiny_model_dir, collective_timeout_s=0.5)  # watchdog fires after 0.75 s
    release = threading.Event()

    def hung_all_reduce(step):
        release.wait(30)  # like DeepSpeed's shm all-reduce spinning on a dead peer
        raise RuntimeError("released")

    stuck._runner.execute = hung_all_reduce
    started = time.monotonic()
    try:
        with pytest.raises(EngineDeadError, match="has not completed"):
            asyncio.run(collect(stuck, "stuck", [1, 2, 3], greedy(5)))
        elapsed = time.monotonic() - started
        assert stuck.is_dead
        asyncio.run(asyncio.wait_for(stuck.shutdown(), 5))  # returns although the step thread is stuck
    finally:
        release.set()

    assert elapsed < 5


def test_the_step_thread_uses_the_configured_threads_and_loading_leaves_no_thread_behind(tiny_model_dir: Path) -> None:
    # 3 differs from any default a 1- or 2-core machine gives a new thread, so a step thread that
    # forgot the setting is seen. Loading runs in a thread that ended (engine._in_passing_thread).
    caller_threads = torch.get_num_threads()
    engine = make_engine(tiny_model_dir, num_threads=3)
    try:
        assert torch.get_num_threads() == caller_threads
        assert not any(t.name == "inferforge-load" for t in threading.enumerate())
        seen: list[tuple[str, int]] = []
        execute = engine._runner.execute

        def spy(step):
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return execute(step)

        engine._runner.execute = spy
        asyncio.run(collect(engine, "threads", [5, 6, 7], greedy(3)))
        assert seen and set(seen) == {("inferforge-engine", 3)}
    finally:
        asyncio.run(engine.shutdown())


def test_a_failure_while_loading_reaches_the_caller(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_model_len 99999 exceeds the model's max_position_embeddings"):
        make_engine(tiny_model_dir, max_model_len=99999)
