"""Issue 12 item 7: the production model families load through the production path and give greedy
tokens identical to transformers' `generate`, at TP=1 (in-process engine, continuous batching) and
at TP=2 (two ranks through DeepSpeed AutoTP, as `engine_probe` runs them).

Each family's tiny random model is built from transformers' own config class
(`inference.model_factory.build_family_model`), so it runs the family's real modeling code.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from inference.engine_api import GenerationRequest, SamplingParams
from inference.engine_config import EngineConfig
from inference.engine_probe import probe_prompts
from inference.model_factory import FAMILIES, write_model
from inference.ranks import start_engine
from tests.inference.test_engine_tp import ranks, wait_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STEPS = 8  # greedy tokens per prompt (engine_probe's default)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {family: write_model(tmp_path_factory.mktemp(family), "tiny", seed=0, family=family)
            for family in FAMILIES}


def hf_greedy(model_dir: Path, prompts: list[list[int]], steps: int = STEPS) -> list[list[int]]:
    """transformers' own greedy `generate`, one prompt at a time, never stopping early."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.inference_mode():
        return [model.generate(torch.tensor([p]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                               eos_token_id=None)[0, len(p):].tolist() for p in prompts]


def test_each_family_is_built_from_its_own_config_class(family_dirs: dict[str, Path]) -> None:
    for family, model_dir in family_dirs.items():
        assert AutoConfig.from_pretrained(model_dir).model_type == family
        assert AutoTokenizer.from_pretrained(model_dir).chat_template  # servable by /v1/chat/completions


@pytest.mark.parametrize("family", FAMILIES)
def test_tp1_engine_greedy_equals_transformers_generate(family: str, family_dirs: dict[str, Path]) -> None:
    model_dir = family_dirs[family]
    prompts = probe_prompts(AutoConfig.from_pretrained(model_dir).vocab_size)
    engine = start_engine(EngineConfig(model_dir=model_dir, dtype="float32", max_batch_size=8, max_model_len=256,
                                       max_num_batched_tokens=64, num_threads=1), environ={})
    assert engine is not None

    async def batched() -> list[list[int]]:
        async def one(i: int, prompt: list[int]) -> list[int]:
            params = SamplingParams(max_tokens=STEPS, temperature=0.0, ignore_eos=True)
            return [e.token_id async for e in engine.generate(GenerationRequest(f"{family}-{i}", prompt, params))
                    if e.token_id is not None]

        try:
            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
        finally:
            await engine.shutdown()

    # All prompts in one continuous batch (different lengths, chunked prefill with decode).
    assert asyncio.run(batched()) == hf_greedy(model_dir, prompts)


# Two ranks per case on a shared 2-core machine: one probe per family, nothing more.
@pytest.mark.parametrize("family", FAMILIES)
def test_tp2_greedy_equals_transformers_generate(family: str, family_dirs: dict[str, Path], tmp_path: Path) -> None:
    model_dir = family_dirs[family]
    out = tmp_path / "tp2.json"
    args = ["--model", str(model_dir), "--dtype", "float32", "--steps", str(STEPS), "--out", str(out)]
    with ranks(args, 2, tmp_path) as procs:
        wait_all(procs, 240, tmp_path)
    result = json.loads(out.read_text())

    assert result["world_size"] == 2
    # AutoTP really sharded the attention projections (Phi-3: its fused_LinearLayer for qkv_proj).
    assert result["q_proj_class"] in ("LinearLayer", "fused_LinearLayer")
    reference = hf_greedy(model_dir, result["prompts"])
    assert result["raw_tokens"] == reference  # one sequence at a time
    assert result["engine_tokens"] == reference  # continuous batching
