"""The model factory writes a directory that loads through the production transformers path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.model_factory import PRESETS, main, write_model


def test_tiny_model_loads_with_auto_classes(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    assert model.config.model_type == "llama"
    assert len(tokenizer) == model.config.vocab_size
    assert tokenizer.bos_token_id == model.config.bos_token_id
    assert tokenizer.eos_token_id == model.config.eos_token_id
    assert tokenizer.eos_token_id != tokenizer.bos_token_id


def test_tokenizer_round_trips_text_and_prepends_bos(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Rank zero schedules, samples, and broadcasts: 42 {x}!"

    ids = tokenizer(text).input_ids

    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template_opens_an_assistant_turn(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False
    )

    assert rendered == "<s><|user|>\nhello</s>\n<|assistant|>\n"


def test_heads_divide_over_two_tensor_parallel_ranks() -> None:
    for name, preset in PRESETS.items():
        assert preset.num_attention_heads % 2 == 0, name
        assert preset.num_key_value_heads % 2 == 0, name
        assert preset.intermediate_size % 2 == 0, name


def test_same_seed_gives_same_weights_and_greedy_margins_are_clear(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    again = write_model(tmp_path / "again", "tiny", seed=0)
    other = write_model(tmp_path / "other", "tiny", seed=1)
    models = [AutoModelForCausalLM.from_pretrained(d) for d in (tiny_model_dir, again, other)]
    ids = torch.arange(1, 40).unsqueeze(0)

    with torch.inference_mode():
        logits = [m(ids).logits[0] for m in models]

    assert torch.equal(logits[0], logits[1])
    assert not torch.allclose(logits[0], logits[2])
    top2 = logits[0].topk(2, dim=-1).values
    # Margins far above fp32 batched-vs-unbatched rounding (~1e-5) keep greedy tests stable.
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-3


def test_cli_rejects_unknown_preset_with_the_allowed_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), "--preset", "huge"])

    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "huge" in err and "tiny" in err and "bench" in err


def test_cli_writes_metadata(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "m"), "--preset", "tiny", "--seed", "3"]) == 0

    info = json.loads((tmp_path / "m" / "inferforge_model.json").read_text())
    assert info["preset"] == "tiny" and info["seed"] == 3 and info["num_parameters"] > 0
