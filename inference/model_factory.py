"""Write a small Llama-architecture model with seeded random weights and an offline tokenizer.

No weights can be downloaded where the tests and benchmarks run, so this module builds the whole
model directory locally: `config.json` + `model.safetensors` (via `save_pretrained`) and a byte-level
BPE tokenizer trained with the `tokenizers` library on a built-in corpus, wrapped as a
`PreTrainedTokenizerFast` with bos/eos/pad tokens and a chat template. The directory loads through
the production path: `AutoTokenizer.from_pretrained(dir)` and `AutoModelForCausalLM.from_pretrained(dir)`.

Usage::

    python -m inference.model_factory --out DIR [--preset tiny|bench|roofline] [--seed N]

Presets:
  tiny      tests: ~0.1M parameters, fp32 on disk, GQA (4 query heads, 2 KV heads).
  bench     issue 6's benchmark shape: ~26M parameters (hidden 512, 8 layers, vocab 8000), bf16.
  roofline  a bandwidth-bound model: ~250M parameters (~500 MB of bf16 weights).

Every preset has query and KV head counts divisible by 2 so DeepSpeed AutoTP can shard it over 2
ranks. Random models have flat logits whose top-2 gaps can be smaller than the float rounding
differences between a batched and an unbatched forward; the LM head is rescaled so logits have a
standard deviation of about `LOGIT_STD`, which makes greedy argmax margins clear (and sampling at
temperature 1 still varied).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS)

# Jinja chat template: role marker, content, eos after every turn; the generation prompt opens an
# assistant turn. bos comes from the template because apply_chat_template tokenizes without
# special tokens. Tools, tool calls and tool results render the way Hermes/Qwen-style templates do
# (a tool list in a system turn, calls as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`),
# so the server's tool handling is exercised through a real template.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}"
    "{{ '<|system|>\n# Tools\n<tools>\n' }}"
    "{% for tool in tools %}{{ tool | tojson }}{{ '\n' }}{% endfor %}"
    "{{ '</tools>\nTo call a function, reply with <tool_call>{\"name\": <name>, \"arguments\": <JSON object>}"
    "</tool_call>' + eos_token + '\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + (message['content'] or '') }}"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}"
    "{{ '<tool_call>' }}{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}"
    "{{ '</tool_call>' }}"
    "{% endfor %}{% endif %}"
    "{{ eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Target standard deviation of the logits of the random model (see module docstring).
LOGIT_STD = 4.0

BUILTIN_TEXT = """\
The platform serves language models inside a private network. Requests arrive over HTTPS, pass an
authentication check, wait in a bounded queue, and join a running batch between decode steps.
Each step reads every weight once, so a larger batch turns a memory-bound loop into useful work.
Tensor parallelism splits attention heads and feed-forward columns across ranks; an all-reduce
joins the partial sums after every block. Rank zero schedules, samples, and broadcasts the inputs
of each step so every rank runs the same forward pass with identical tensors.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 2048 4096.
Punctuation and code: def main(argv: list[str]) -> int: return 0  # {"key": [1, 2.5, null]}
Questions? Answers! Lists; colons: dashes - and "quotes" or 'single quotes' (parentheses).
"""


@dataclass(frozen=True)
class Preset:
    """Architecture of one preset; field names follow LlamaConfig."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    dtype: str  # dtype written to disk
    corpus_words: int  # size of the synthetic corpus the tokenizer is trained on


PRESETS: dict[str, Preset] = {
    "tiny": Preset(64, 128, 2, 4, 2, 512, 1024, "float32", 20_000),
    "bench": Preset(512, 960, 8, 8, 4, 8000, 2048, "bfloat16", 120_000),
    "roofline": Preset(1024, 2816, 16, 16, 8, 32000, 2048, "bfloat16", 400_000),
}


def _synthetic_corpus(num_words: int, seed: int) -> list[str]:
    """Built-in text plus seeded pseudo-words, so BPE has enough distinct pairs to reach the vocab."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "ch", "st", "th", "tr", "pl", "gr", "sk", "sh", "qu"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "ng", "ck", "st", "x"]
    lines = BUILTIN_TEXT.splitlines() * 20
    words: list[str] = []
    for _ in range(num_words):
        syllables = rng.randint(1, 4)
        word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables))
        if rng.random() < 0.1:
            word = word.capitalize()
        words.append(word)
        if len(words) == 16:
            lines.append(" ".join(words) + rng.choice([".", ",", "!", "?", ";", ""]))
            words = []
    return lines


def build_tokenizer(vocab_size: int, corpus_words: int, seed: int):
    """Train a byte-level BPE of exactly `vocab_size` entries and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_synthetic_corpus(corpus_words, seed), trainer=trainer)
    actual = backend.get_vocab_size()
    if actual != vocab_size:
        # The model's vocab must match the tokenizer's exactly, otherwise the model could emit ids
        # the tokenizer cannot decode.
        raise RuntimeError(
            f"BPE training produced {actual} tokens instead of {vocab_size}; raise corpus_words"
        )
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=None,
        clean_up_tokenization_spaces=False,
    )


def build_model(preset: Preset, tokenizer, seed: int):
    """A LlamaForCausalLM with seeded random weights and a rescaled LM head (see module docstring)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=preset.vocab_size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        max_position_embeddings=preset.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=0.05,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # Final RMSNorm output has unit RMS, so logit std ~= std(W) * sqrt(hidden).
        model.lm_head.weight.normal_(0.0, LOGIT_STD / preset.hidden_size**0.5)
    model.generation_config = _greedy_generation_config(tokenizer)
    return model.to(getattr(torch, preset.dtype))


def _greedy_generation_config(tokenizer):
    """generation_config.json of every factory model: the tokenizer's special ids, greedy decoding."""
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, do_sample=False)


# Model families served in production, by transformers' model_type; each tiny test model is built
# from the family's own config class, so it loads and runs through the family's real modeling code
# (Qwen2's q/k/v biases, Qwen3's q/k norms, Mistral's sliding window, Gemma's tied and scaled
# embeddings and GeGLU, Phi-3's fused qkv_proj and gate_up_proj).
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "phi3")


def build_family_model(family: str, preset: Preset, tokenizer, seed: int):
    """A seeded random model of `family` with `preset`'s shape (the preset's dtype)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if family == "llama":
        return build_model(preset, tokenizer, seed)
    head_dim = preset.hidden_size // preset.num_attention_heads
    config = AutoConfig.for_model(
        family,
        vocab_size=preset.vocab_size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        head_dim=head_dim,  # several families default to 128 or 256 regardless of hidden_size
        max_position_embeddings=preset.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.05,
        **({"original_max_position_embeddings": preset.max_position_embeddings} if family == "phi3" else {}),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        # As build_model: logits with a clear greedy margin. A tied head (Gemma) is the embedding.
        model.get_output_embeddings().weight.normal_(0.0, LOGIT_STD / preset.hidden_size**0.5)
    model.generation_config = _greedy_generation_config(tokenizer)
    return model.to(getattr(torch, preset.dtype))


def write_model(out: Path, preset_name: str = "tiny", seed: int = 0, family: str = "llama") -> Path:
    """Write a `family` model + tokenizer of `preset_name`'s shape into `out` (created if missing)."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(preset.vocab_size, preset.corpus_words, seed)
    model = build_family_model(family, preset, tokenizer, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    num_params = sum(p.numel() for p in model.parameters())
    (out / "inferforge_model.json").write_text(
        json.dumps({"preset": preset_name, "family": family, "seed": seed, "num_parameters": num_params},
                   indent=2) + "\n"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference.model_factory",
        description="Write a seeded random Llama model and an offline BPE tokenizer to a directory.",
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to write (created if missing)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model size (default tiny)")
    parser.add_argument("--seed", default=0, type=int, help="seed for weights and tokenizer corpus")
    parser.add_argument("--family", default="llama", choices=FAMILIES,
                        help="model architecture, from transformers' config class (default llama)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    write_model(args.out, args.preset, args.seed, args.family)
    info = json.loads((args.out / "inferforge_model.json").read_text())
    print(f"wrote {args.preset} {args.family} model ({info['num_parameters']:,} parameters) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
