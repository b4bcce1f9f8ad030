"""Issue 12 item 4: logprobs / top_logprobs (chat and completions, streamed too), n > 1 and list
prompts, with the official `openai` client against `python -m inference serve` (real engine, tiny
model). Log-probabilities are checked against transformers' own forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.inference.fakes import load_tokenizer
from tests.inference.test_api import serving

pytestmark = pytest.mark.slow

GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tiny_model_dir, tmp_path_factory.mktemp("api_choices")) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # noqa: ANN201
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: Path):  # noqa: ANN201
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def hf_logprobs(hf_model, ids: list[int]) -> torch.Tensor:  # noqa: ANN001
    """log_softmax of transformers' next-token logits after `ids`."""
    with torch.inference_mode():
        return torch.log_softmax(hf_model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)


MESSAGES = [{"role": "user", "content": "The platform serves"}]


def test_chat_logprobs_match_transformers(client: openai.OpenAI, model: str, tokenizer, hf_model) -> None:  # noqa: ANN001
    reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6, logprobs=True,
                                           top_logprobs=3, **GREEDY)
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    prompt_ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
    ids = list(prompt_ids)
    for entry in content:
        reference = hf_logprobs(hf_model, ids)
        top_values, top_ids = reference.topk(3)
        assert [t.token for t in entry.top_logprobs] == [tokenizer.decode([i]) for i in top_ids.tolist()]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top_values.tolist(), abs=1e-4)
        # Greedy: the chosen token is the most likely one.
        assert entry.token == entry.top_logprobs[0].token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.bytes == list(entry.token.encode())
        ids.append(int(top_ids[0]))


def test_streamed_chat_logprobs_equal_the_whole_response(client: openai.OpenAI, model: str) -> None:
    whole = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, logprobs=True,
                                           top_logprobs=2, **GREEDY)
    streamed = []
    text = ""
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, logprobs=True,
                                                top_logprobs=2, stream=True, **GREEDY):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None:
                streamed.extend(choice.logprobs.content)
    assert text == whole.choices[0].message.content
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == \
        [(e.token, round(e.logprob, 5)) for e in whole.choices[0].logprobs.content]


def test_chat_without_logprobs_has_none(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3, **GREEDY)
    assert reply.choices[0].logprobs is None
    zero = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3, logprobs=True, **GREEDY)
    assert all(entry.top_logprobs == [] for entry in zero.choices[0].logprobs.content)


def test_completion_logprobs_legacy_shape_streamed_too(client: openai.OpenAI, model: str, tokenizer,  # noqa: ANN001
                                                       hf_model) -> None:  # noqa: ANN001
    reply = client.completions.create(model=model, prompt="The platform", max_tokens=5, logprobs=2, **GREEDY)
    choice = reply.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    first = hf_logprobs(hf_model, tokenizer.encode("The platform"))
    assert lp.token_logprobs[0] == pytest.approx(first.max().item(), abs=1e-4)
    for token, top in zip(lp.tokens, lp.top_logprobs, strict=True):
        assert 2 <= len(top) <= 3 and token in top  # top-2 plus the sampled token

    streamed_tokens, streamed_offsets = [], []
    for chunk in client.completions.create(model=model, prompt="The platform", max_tokens=5, logprobs=2,
                                           stream=True, **GREEDY):
        for c in chunk.choices:
            if c.logprobs is not None:
                streamed_tokens += c.logprobs.tokens
                streamed_offsets += c.logprobs.text_offset
    assert (streamed_tokens, streamed_offsets) == (lp.tokens, lp.text_offset)


def test_n_choices_are_seeded_distinct_and_reproducible(client: openai.OpenAI, model: str) -> None:
    def run() -> openai.types.Completion:
        return client.completions.create(model=model, prompt="The platform", max_tokens=12, n=3, seed=11,
                                         temperature=1.0, extra_body={"ignore_eos": True})

    first, again = run(), run()
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices]
    assert len(set(texts)) > 1
    assert first.usage.completion_tokens == 36
    single = client.completions.create(model=model, prompt="The platform", max_tokens=1)
    assert first.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once


def test_greedy_chat_with_n_gives_n_equal_choices(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5, n=2, **GREEDY)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].message.content == reply.choices[1].message.content
    assert reply.usage.completion_tokens == 10


PROMPTS = ["The platform", "Tensor parallelism splits"]


def test_list_prompts_give_n_choices_per_prompt_in_order(client: openai.OpenAI, model: str) -> None:
    singles = [client.completions.create(model=model, prompt=p, max_tokens=6, **GREEDY) for p in PROMPTS]
    batch = client.completions.create(model=model, prompt=PROMPTS, max_tokens=6, n=2, **GREEDY)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert [c.text for c in batch.choices] == [singles[0].choices[0].text] * 2 + [singles[1].choices[0].text] * 2
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert batch.usage.completion_tokens == 4 * 6

    ids_batch = client.completions.create(model=model, prompt=[[1, 40, 41], [1, 50]], max_tokens=4, **GREEDY)
    assert len(ids_batch.choices) == 2


def test_streamed_list_prompts_interleave_choices_and_end_with_one_usage(client: openai.OpenAI,
                                                                         model: str) -> None:
    whole = client.completions.create(model=model, prompt=PROMPTS, max_tokens=6, n=2, **GREEDY)
    texts = {i: "" for i in range(4)}
    finish = {}
    usages = []
    for chunk in client.completions.create(model=model, prompt=PROMPTS, max_tokens=6, n=2, stream=True,
                                           stream_options={"include_usage": True}, **GREEDY):
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
        if chunk.usage is not None:
            usages.append(chunk.usage)
    assert [texts[i] for i in range(4)] == [c.text for c in whole.choices]
    assert finish == {i: "length" for i in range(4)}
    assert len(usages) == 1 and usages[0].completion_tokens == 24


def test_top_k_1_samples_the_greedy_tokens(client: openai.OpenAI, model: str) -> None:
    """top_k reaches the real engine's sampler: with k=1 a sampled reply is the greedy one."""
    greedy = client.completions.create(model=model, prompt="The platform", max_tokens=12, **GREEDY)
    for seed in range(3):
        sampled = client.completions.create(model=model, prompt="The platform", max_tokens=12, temperature=1.0,
                                            seed=seed, extra_body={"ignore_eos": True, "top_k": 1})
        assert sampled.choices[0].text == greedy.choices[0].text
    varied = {client.completions.create(model=model, prompt="The platform", max_tokens=12, temperature=1.0, seed=seed,
                                        extra_body={"ignore_eos": True}).choices[0].text for seed in range(3)}
    assert varied != {greedy.choices[0].text}  # without top_k the same seeds do sample differently
