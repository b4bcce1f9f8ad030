"""Seeded arrivals (Poisson / gamma) and exact-length random prompts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.bench.workload import arrival_offsets, build_prompts, random_token_prompts


def test_same_seed_gives_the_same_arrivals_and_another_seed_different_ones():
    assert arrival_offsets(50, 4.0, seed=7) == arrival_offsets(50, 4.0, seed=7)
    assert arrival_offsets(50, 4.0, seed=7) != arrival_offsets(50, 4.0, seed=8)


def test_first_request_is_sent_at_once_and_arrivals_never_go_back_in_time():
    offsets = arrival_offsets(100, 10.0, seed=0)
    assert offsets[0] == 0.0
    assert all(later >= earlier for earlier, later in zip(offsets, offsets[1:], strict=False))


def test_poisson_gaps_have_mean_one_over_rate_and_coefficient_of_variation_one():
    gaps = np.diff(arrival_offsets(20_001, 8.0, seed=3))
    assert gaps.mean() == pytest.approx(1 / 8.0, rel=0.03)
    # Exponential gaps: standard deviation equals the mean.
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)


def test_burstiness_above_one_makes_arrivals_more_regular_at_the_same_rate():
    gaps = np.diff(arrival_offsets(20_001, 8.0, seed=3, burstiness=4.0))
    assert gaps.mean() == pytest.approx(1 / 8.0, rel=0.03)
    # Gamma with shape k has coefficient of variation 1 / sqrt(k).
    assert gaps.std() / gaps.mean() == pytest.approx(0.5, rel=0.05)


def test_infinite_rate_sends_everything_at_time_zero():
    assert arrival_offsets(5, math.inf, seed=0) == [0.0] * 5


def test_no_requests_means_no_arrivals():
    assert arrival_offsets(0, 1.0, seed=0) == []


@pytest.mark.parametrize(("rate", "burstiness"), [(0.0, 1.0), (-2.0, 1.0), (1.0, 0.0)])
def test_non_positive_rate_or_burstiness_is_refused(rate, burstiness):
    with pytest.raises(ValueError):
        arrival_offsets(3, rate, seed=0, burstiness=burstiness)


def test_random_prompts_have_the_exact_length_and_avoid_special_tokens():
    special = {0, 1, 2}
    prompts = random_token_prompts(16, 32, vocab_size=50, excluded_ids=special, seed=1)
    assert len(prompts) == 16
    assert all(len(p) == 32 for p in prompts)
    used = {t for p in prompts for t in p}
    assert used.isdisjoint(special)
    assert used <= set(range(50))


def test_random_prompts_are_seeded_so_baselines_see_the_same_tokens():
    assert random_token_prompts(4, 8, 100, seed=5) == random_token_prompts(4, 8, 100, seed=5)
    assert random_token_prompts(4, 8, 100, seed=5) != random_token_prompts(4, 8, 100, seed=6)


def test_a_vocabulary_of_only_special_tokens_is_refused():
    with pytest.raises(ValueError, match="special"):
        random_token_prompts(1, 4, vocab_size=3, excluded_ids={0, 1, 2})


def test_a_random_prefix_is_shared_by_every_prompt_and_counted_in_its_length() -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)},
                                                                                    unk_token="w0")))
    prompts = build_prompts(tokenizer, num_prompts=3, input_len=5, seed=2, prefix_len=20)

    assert all(p.prompt_len == 25 and len(p.token_ids) == 25 for p in prompts)
    assert prompts[0].token_ids[:20] == prompts[1].token_ids[:20] == prompts[2].token_ids[:20]
    assert len({tuple(p.token_ids[20:]) for p in prompts}) == 3
    assert [p.token_ids[20:] for p in prompts] == [p.token_ids for p in build_prompts(tokenizer, 3, 5, seed=2)]
