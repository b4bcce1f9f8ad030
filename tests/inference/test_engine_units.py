"""Units of the engine that need no model: scheduler, sampling, step wire format, launch environment."""

from __future__ import annotations

import math

import pytest
import torch

from inference import model_runner as engine_module
from inference.block_manager import BlockManager
from inference.distributed import LaunchEnv, WireStep
from inference.engine_api import SamplingParams
from inference.sampling import sample_tokens
from inference.scheduler import Scheduler, Sequence


def seq(request_id: str, prompt_len: int, max_tokens: int = 8) -> Sequence:
    return Sequence(request_id, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens))


def run_step(scheduler: Scheduler) -> None:
    """Pretend the forward ran: account tokens the way the engine does, sampling token 7."""
    plan = scheduler.schedule()
    assert plan is not None
    for s in plan.decode:
        s.num_computed += 1
        s.output.append(7)
    for work in plan.prefill:
        work.seq.num_computed += work.length
        if work.wants_logits:
            work.seq.output.append(7)


def new_scheduler(max_batch_size: int, max_num_batched_tokens: int, num_blocks: int = 64) -> Scheduler:
    return Scheduler(max_batch_size, 8, max_num_batched_tokens, BlockManager(num_blocks, block_size=4))


def test_a_step_never_exceeds_the_token_budget_and_long_prompts_are_chunked() -> None:
    scheduler = new_scheduler(max_batch_size=4, max_num_batched_tokens=16)
    for i in range(3):
        scheduler.add(seq(f"r{i}", 10))

    first = scheduler.schedule()
    assert first is not None
    assert [(w.seq.request_id, w.start, w.length) for w in first.prefill] == [("r0", 0, 10), ("r1", 0, 6)]
    assert first.num_tokens == 16


def test_a_sequence_waiting_for_the_budget_joins_once_it_is_free() -> None:
    scheduler = new_scheduler(max_batch_size=3, max_num_batched_tokens=8)
    long, short = seq("long", 20), seq("short", 2)
    scheduler.add(long)
    scheduler.add(short)
    run_step(scheduler)  # long takes 8 tokens of the budget; short waits
    run_step(scheduler)  # long continues; short still waits (budget spent)
    assert short in scheduler.waiting
    run_step(scheduler)  # long's last 4 tokens, short joins and completes its prompt

    plan = scheduler.schedule()
    assert plan is not None
    assert [s.request_id for s in plan.decode] == ["long", "short"]


def test_scheduler_rejects_a_budget_smaller_than_the_batch() -> None:
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        Scheduler(max_batch_size=8, max_waiting=1, max_num_batched_tokens=4, blocks=BlockManager(8, 4))


def test_greedy_rows_take_the_argmax() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 4.9]])

    tokens = sample_tokens(logits, [0.0, 0.0], [1.0, 1.0], [None, None], torch.Generator())

    assert tokens == [1, 0]


def test_a_tiny_top_p_keeps_only_the_most_likely_token() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.9, 1.8]])

    draws = {sample_tokens(logits, [1.0], [1e-3], [None], torch.Generator().manual_seed(i))[0] for i in range(20)}

    assert draws == {1}


def test_sampling_follows_the_softmax_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)

    tokens = torch.tensor(sample_tokens(logits, [1.0] * 4000, [1.0] * 4000, [None] * 4000,
                                        torch.Generator().manual_seed(0)))

    frequencies = torch.bincount(tokens, minlength=4).float() / 4000
    # Standard error of each frequency is <= sqrt(0.25 / 4000) = 0.008; 4 sigma.
    assert torch.allclose(frequencies, probs, atol=0.032)


@pytest.mark.parametrize("allowed", [[0], [2], [4], [1, 3]])
def test_tokens_of_probability_zero_are_never_drawn(allowed: list[int]) -> None:
    logits = torch.full((2000, 5), float("-inf"))
    logits[:, allowed] = 0.0

    tokens = sample_tokens(logits, [1.0] * 2000, [1.0] * 2000, [None] * 2000, torch.Generator().manual_seed(0))

    assert set(tokens) == set(allowed)


def test_top_p_renormalises_over_the_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)

    tokens = torch.tensor(sample_tokens(logits, [1.0] * 4000, [0.75] * 4000, [None] * 4000,
                                        torch.Generator().manual_seed(0)))

    frequencies = torch.bincount(tokens, minlength=4).float() / 4000
    assert frequencies[2:].sum() == 0  # 0.5 + 0.3 already covers 0.75
    assert torch.allclose(frequencies[:2], torch.tensor([0.625, 0.375]), atol=0.032)


def test_a_seeded_row_draws_the_same_token_whatever_its_neighbours() -> None:
    row = torch.randn(1, 50, generator=torch.Generator().manual_seed(1))
    crowd = torch.cat([torch.randn(3, 50), row, torch.randn(2, 50)])

    alone = sample_tokens(row, [1.0], [1.0], [torch.Generator().manual_seed(42)], torch.Generator())
    batched = sample_tokens(crowd, [1.0] * 6, [1.0] * 6,
                            [None, None, None, torch.Generator().manual_seed(42), None, None], torch.Generator())

    assert batched[3] == alone[0]


def test_top_k_samples_among_the_k_most_likely_renormalised() -> None:
    probs = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])
    logits = probs.log().repeat(4000, 1)

    tokens = torch.tensor(sample_tokens(logits, [1.0] * 4000, [1.0] * 4000, [None] * 4000,
                                        torch.Generator().manual_seed(0), top_ks=[2] * 4000))

    frequencies = torch.bincount(tokens, minlength=5).float() / 4000
    assert frequencies[[0, 2, 4]].sum() == 0
    assert torch.allclose(frequencies[[1, 3]], torch.tensor([4 / 7, 3 / 7]), atol=0.032)


def test_top_p_applies_to_what_top_k_left() -> None:
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    logits = probs.log().repeat(200, 1)

    # top_k 3 leaves 0.4/0.3/0.2 = 0.44/0.33/0.22; top_p 0.7 then needs the first two only.
    tokens = set(sample_tokens(logits, [1.0] * 200, [0.7] * 200, [None] * 200,
                               torch.Generator().manual_seed(0), top_ks=[3] * 200))

    assert tokens == {0, 1}


def test_min_p_drops_tokens_below_a_share_of_the_most_likely() -> None:
    probs = torch.tensor([0.5, 0.3, 0.12, 0.08])
    logits = probs.log().repeat(400, 1)

    tokens = set(sample_tokens(logits, [1.0] * 400, [1.0] * 400, [None] * 400,
                               torch.Generator().manual_seed(0), min_ps=[0.2] * 400))

    assert tokens == {0, 1, 2}  # 0.08 < 0.2 x 0.5


def test_top_k_and_min_p_apply_per_row() -> None:
    row = torch.randn(1, 50, generator=torch.Generator().manual_seed(1))
    crowd = row.repeat(3, 1)
    seeded = [torch.Generator().manual_seed(7) for _ in range(3)]

    alone = sample_tokens(row, [1.0], [1.0], [torch.Generator().manual_seed(7)], torch.Generator())
    mixed = sample_tokens(crowd, [1.0] * 3, [1.0] * 3, seeded, torch.Generator(), top_ks=[0, 1, 0],
                          min_ps=[0.0, 0.0, 1.0])

    assert mixed == [alone[0], int(row.argmax()), int(row.argmax())]


def test_wire_step_round_trips() -> None:
    step = WireStep(
        num_decode=2, prefills=[(0, 3, True), (8, 2, False)], block_tables=[[4, 9], [0], [3], [7, 1, 2]],
        token_ids=torch.tensor([11, 12, 1, 2, 3, 9, 10]), positions=torch.tensor([17, 4, 0, 1, 2, 8, 9]),
    )

    header, payload = step.encode(step_id=41)
    decoded = WireStep.decode(header.tolist(), payload)

    assert len(payload) == WireStep.payload_len(header.tolist())
    assert decoded.num_decode == 2 and decoded.prefills == step.prefills and decoded.block_tables == step.block_tables
    assert torch.equal(decoded.token_ids, step.token_ids) and torch.equal(decoded.positions, step.positions)


def test_launch_env_defaults_to_a_single_rank() -> None:
    assert LaunchEnv.from_environ({}) == LaunchEnv(rank=0, world_size=1, local_rank=0, local_size=1)


def test_launch_env_reads_the_deepspeed_launcher_variables() -> None:
    env = LaunchEnv.from_environ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_SIZE": "2"})

    assert env == LaunchEnv(rank=1, world_size=2, local_rank=1, local_size=2)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "LOCAL_SIZE is not set"),
        ({"WORLD_SIZE": "2", "LOCAL_SIZE": "2"}, "RANK is not set"),
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_SIZE": "2"}, "RANK=2 must be < WORLD_SIZE=2"),
        ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_SIZE": "2"}, "one tensor-parallel group must live on one node"),
    ],
)
def test_launch_env_errors_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LaunchEnv.from_environ(environ)


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_uses_bf16_on_cpu_only_where_the_hardware_has_it(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(engine_module, "cpu_has_native_bf16", lambda: native_bf16)

    assert engine_module.resolve_dtype("auto", "cpu") == expected
    assert engine_module.resolve_dtype("bfloat16", "cpu") == torch.bfloat16  # an explicit choice is kept


def test_a_batch_mixing_greedy_and_sampled_rows_treats_each_row_as_if_alone() -> None:
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(9))
    temperatures = [0.0, 0.5, 0.0, 1.0, 1e-4]
    seeds = [None, 7, None, 8, 9]
    batched = sample_tokens(logits, temperatures, [1.0] * 5,
                            [None if s is None else torch.Generator().manual_seed(s) for s in seeds], torch.Generator())
    for i, (temperature, seed) in enumerate(zip(temperatures, seeds, strict=True)):
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        alone = sample_tokens(logits[i : i + 1], [temperature], [1.0], [generator], torch.Generator())
        assert batched[i] == alone[0], i
    assert batched[0] == int(logits[0].argmax()) and batched[2] == int(logits[2].argmax())
    assert batched[4] == int(logits[4].argmax())  # a temperature of 1e-4 leaves only the top token
    # The temperature is applied: two tokens at odds 1:3 become 1:9 at temperature 0.5.
    pair = torch.tensor([[0.0, math.log(3.0)]])
    draws = [sample_tokens(pair, [0.5], [1.0], [torch.Generator().manual_seed(s)], torch.Generator())[0]
             for s in range(400)]
    assert abs(draws.count(1) / 400 - 0.9) < 0.045  # at temperature 1 it would be 0.75


def test_prompt_logprob_rows_are_bounded_per_step_and_decoders_keep_their_token(monkeypatch) -> None:
    """A long prompt's logprob rows (a vocabulary of logits each) are spread over steps, at most
    PROMPT_LOGPROB_ROWS_PER_STEP a step across all such prompts; a decoding sequence still decodes every step."""
    from inference import scheduler as scheduler_module
    from inference.scheduler import LOGITS_ALL

    monkeypatch.setattr(scheduler_module, "PROMPT_LOGPROB_ROWS_PER_STEP", 10)
    scheduler = new_scheduler(max_batch_size=4, max_num_batched_tokens=64, num_blocks=64)
    decoder = seq("decoder", 3)
    scheduler.add(decoder)
    run_step(scheduler)  # the decoder's prompt; it decodes from now on
    wanting = [Sequence(f"p{i}", list(range(1, 26)), SamplingParams(max_tokens=0, prompt_logprobs=1))
               for i in range(2)]
    for s in wanting:
        scheduler.add(s)
    rows_per_step = []
    while any(s.is_prefilling or s.num_computed == 0 for s in wanting):
        plan = scheduler.schedule()
        assert plan is not None and decoder in plan.decode
        rows = sum(w.length for w in plan.prefill if w.logits_rows == LOGITS_ALL)
        assert all(w.logits_rows == LOGITS_ALL for w in plan.prefill)  # every prompt row is computed for them
        rows_per_step.append(rows)
        for s in plan.decode:
            s.num_computed += 1
            s.output.append(7)
        for work in plan.prefill:
            work.seq.num_computed += work.length
            if work.completes_prefill:
                work.seq.prompt_logprobs.extend([None] * (len(work.seq.prompt) - 1))
    assert rows_per_step == [10, 10, 10, 10, 10]  # 50 prompt rows, 10 a step
    # Once its logprobs are in, a preempted-and-recomputed prompt needs no rows again.
    done = wanting[0]
    assert not done.needs_prompt_logits
    assert scheduler_module.PrefillWork(done, 0, len(done.prompt)).logits_rows != LOGITS_ALL


def test_a_prompt_wanting_logprobs_reuses_no_cached_prefix() -> None:
    scheduler = new_scheduler(max_batch_size=2, max_num_batched_tokens=64)
    first = seq("first", 12)
    scheduler.add(first)
    run_step(scheduler)
    first.finish_reason = "length"
    scheduler.schedule()  # frees it, its full blocks stay in the prefix cache
    again = Sequence("again", list(range(1, 13)), SamplingParams(max_tokens=1))
    wanting = Sequence("wanting", list(range(1, 13)), SamplingParams(max_tokens=1, prompt_logprobs=0))
    scheduler.add(again)
    plan = scheduler.schedule()
    assert plan.prefill[0].start == 8  # the two cached blocks of 4 are skipped
    scheduler.add(wanting)
    plan = scheduler.schedule()
    assert ("wanting", 0, 12) in [(w.seq.request_id, w.start, w.length) for w in plan.prefill]


def test_a_rank_keeps_its_thread_count_after_the_model_load_starts_numba(tiny_model_dir) -> None:
    """Starting Numba's OpenMP layer (the CPU kernels warm up in the load) sets the loading thread's OpenMP count
    to every core; a rank must keep its share, or 2 ranks on 2 cores run 2 threads each and their barriers spin
    against each other (TP=2 decoded ~25x slower than TP=1, issue 25)."""
    import os
    import threading

    from inference.engine_config import EngineConfig
    from inference.ranks import load_rank

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores to tell 1 thread from every core")  # this machine and CI have 2
    seen: list[int] = []

    def load() -> None:  # a fresh thread, as the server loads (ranks._in_passing_thread)
        load_rank(EngineConfig(model_dir=tiny_model_dir, dtype="float32", max_model_len=64, num_threads=1),
                  environ={})
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=load)
    thread.start()
    thread.join()
    assert seen == [1]
