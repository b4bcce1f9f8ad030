"""Per-token cost of grammar-constrained decoding on the CPU: xgrammar vs llguidance vs outlines-core.

For each library and each vocabulary size, compile one JSON Schema (an object with nested objects,
an array, an enum, integers, numbers and strings), then walk a valid document token by token: at
every step fill the next-token bitmask (what the engine does before sampling) and advance the
matcher with the document's token. Reported per library: schema compile time, and the mean / p50 /
p99 / max of the mask fill and of fill + advance per token, in microseconds. Each step also checks
that the document's token is allowed by the mask (a wrong mask would be a correctness failure).

    python -m inference.bench.grammar_masks --vocab 512 8000 32000

The tokenizers are the byte-level BPEs `inference.model_factory` trains (tiny = 512, bench = 8000,
roofline = 32000 entries); a library that is not installed is reported as such and skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "release": {"type": "object", "properties": {
            "major": {"type": "integer"}, "minor": {"type": "integer"}, "stable": {"type": "boolean"},
        }, "required": ["major", "minor", "stable"], "additionalProperties": False},
        "region": {"type": "string", "enum": ["westeurope", "northeurope", "swedencentral"]},
        "replicas": {"type": "array", "items": {"type": "object", "properties": {
            "host": {"type": "string"}, "gpus": {"type": "integer"}, "load": {"type": "number"},
        }, "required": ["host", "gpus", "load"], "additionalProperties": False}},
        "notes": {"type": ["string", "null"]},
    },
    "required": ["name", "release", "region", "replicas", "notes"],
    "additionalProperties": False,
}

DOCUMENT: dict[str, Any] = {
    "name": "inferforge platform serving tier",
    "release": {"major": 12, "minor": 4, "stable": True},
    "region": "swedencentral",
    "replicas": [{"host": f"aks-gpu-{i:02d}.internal", "gpus": 2 * i + 2, "load": 0.125 * i} for i in range(6)],
    "notes": "Requests arrive over HTTPS, pass authentication and join a running batch.",
}


@dataclass
class Result:
    library: str
    vocab: int
    compile_ms: float
    tokens: int
    mask_us: list[float]
    step_us: list[float]

    def row(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {
            "library": self.library, "vocab": self.vocab, "compile_ms": round(self.compile_ms, 1),
            "tokens": self.tokens,
            "mask_us_mean": round(statistics.fmean(self.mask_us), 1),
            "mask_us_p50": round(pct(self.mask_us, 0.5), 1),
            "mask_us_p99": round(pct(self.mask_us, 0.99), 1),
            "mask_us_max": round(max(self.mask_us), 1),
            "token_us_mean": round(statistics.fmean(self.step_us), 1),
        }


def _bit_set(bitmask: torch.Tensor, token: int) -> bool:
    word = int(bitmask[0, token // 32])
    return bool((word >> (token % 32)) & 1)


def _walk(fill: Callable[[], None], advance: Callable[[int], None], bitmask: torch.Tensor,
          tokens: list[int]) -> tuple[list[float], list[float]]:
    mask_us, step_us = [], []
    for token in tokens:
        t0 = time.perf_counter()
        fill()
        t1 = time.perf_counter()
        if not _bit_set(bitmask, token):
            raise AssertionError(f"the mask forbids the document's token {token}")
        t2 = time.perf_counter()
        advance(token)
        t3 = time.perf_counter()
        mask_us.append((t1 - t0) * 1e6)
        step_us.append((t1 - t0 + t3 - t2) * 1e6)
    return mask_us, step_us


def bench_llguidance(tokenizer: Any, vocab: int, tokens: list[int]) -> Result:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    t0 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False})
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
    compile_ms = (time.perf_counter() - t0) * 1e3
    assert not matcher.is_error(), matcher.get_error()
    bitmask = llguidance.torch.allocate_token_bitmask(1, vocab)
    mask_us, step_us = _walk(lambda: llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0),
                             lambda t: matcher.consume_token(t), bitmask, tokens)
    assert matcher.is_accepting(), "the document did not complete the grammar"
    return Result("llguidance", vocab, compile_ms, len(tokens), mask_us, step_us)


def bench_xgrammar(tokenizer: Any, vocab: int, tokens: list[int]) -> Result:
    import xgrammar

    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False,
                                           separators=(",", ":"), strict_mode=True)
    compile_ms = (time.perf_counter() - t0) * 1e3
    matcher = xgrammar.GrammarMatcher(compiled)
    bitmask = xgrammar.allocate_token_bitmask(1, vocab)
    mask_us, step_us = _walk(lambda: matcher.fill_next_token_bitmask(bitmask, 0),
                             lambda t: matcher.accept_token(t), bitmask, tokens)
    return Result("xgrammar", vocab, compile_ms, len(tokens), mask_us, step_us)


def _byte_level_vocabulary(tokenizer: Any) -> dict[bytes, list[int]]:
    """Raw bytes of every non-special token of a byte-level BPE (GPT-2's byte-to-unicode inverse)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    decode = {c: b for b, c in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    out: dict[bytes, list[int]] = {}
    for text, token_id in tokenizer.get_vocab().items():
        if token_id in special:
            continue
        out.setdefault(bytes(decode[c] for c in text), []).append(token_id)
    return out


def bench_outlines(tokenizer: Any, vocab: int, tokens: list[int]) -> Result:
    import outlines_core

    vocabulary = outlines_core.Vocabulary(tokenizer.eos_token_id, _byte_level_vocabulary(tokenizer))
    t0 = time.perf_counter()
    regex = outlines_core.json_schema.build_regex_from_schema(json.dumps(SCHEMA))
    index = outlines_core.Index(regex, vocabulary)
    compile_ms = (time.perf_counter() - t0) * 1e3
    guide = outlines_core.Guide(index)
    bitmask = torch.zeros((1, (vocab + 31) // 32), dtype=torch.int32)
    mask_us, step_us = _walk(lambda: guide.write_mask_into(bitmask.data_ptr(), bitmask.numel(), 4),
                             lambda t: guide.advance(t, return_tokens=False), bitmask, tokens)
    return Result("outlines-core", vocab, compile_ms, len(tokens), mask_us, step_us)


# A schema keyword a library may not implement, and a document that violates it: a library must
# refuse the schema (a 400 for the client) rather than accept the document.
UNSUPPORTED_SCHEMA: dict[str, Any] = {"not": {"type": "string"}}
VIOLATING_DOCUMENT = '"x"'


def unsupported_keyword(name: str, tokenizer: Any, vocab: int) -> str:
    """'refused: <error>' or 'ACCEPTS a violating document' for UNSUPPORTED_SCHEMA."""
    if name == "llguidance":
        import llguidance
        import llguidance.hf

        grammar = llguidance.LLMatcher.grammar_from_json_schema(UNSUPPORTED_SCHEMA)
        matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab), grammar)
        if matcher.is_error():
            return "refused: " + matcher.get_error()[:80]
        accepted = matcher.consume_tokens(tokenizer.encode(VIOLATING_DOCUMENT, add_special_tokens=False))
    elif name == "xgrammar":
        import xgrammar

        compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab))
        try:
            compiled = compiler.compile_json_schema(json.dumps(UNSUPPORTED_SCHEMA), any_whitespace=False)
        except RuntimeError as exc:
            return "refused: " + str(exc)[:80]
        matcher = xgrammar.GrammarMatcher(compiled)
        accepted = matcher.accept_string(VIOLATING_DOCUMENT) and matcher.is_completed()
    else:
        import outlines_core

        try:
            outlines_core.json_schema.build_regex_from_schema(json.dumps(UNSUPPORTED_SCHEMA))
        except Exception as exc:  # noqa: BLE001 (report whatever the library raises)
            return "refused: " + str(exc)[:80]
        return "compiled (not checked)"
    return "ACCEPTS a violating document" if accepted else "compiled, rejects the violating document"


BENCHES = {"llguidance": bench_llguidance, "xgrammar": bench_xgrammar, "outlines-core": bench_outlines}


def run(vocab_sizes: list[int], libraries: list[str]) -> list[dict[str, Any]]:
    from ..model_factory import PRESETS, build_tokenizer

    rows = []
    document = json.dumps(DOCUMENT, separators=(",", ":"))
    for vocab in vocab_sizes:
        corpus = max((p.corpus_words for p in PRESETS.values() if p.vocab_size <= vocab), default=20_000)
        tokenizer = build_tokenizer(vocab, corpus, seed=0)
        tokens = tokenizer.encode(document, add_special_tokens=False)
        for name in libraries:
            try:
                result = BENCHES[name](tokenizer, vocab, tokens)
            except ImportError as exc:
                rows.append({"library": name, "vocab": vocab, "error": f"not installed ({exc})"})
            else:
                rows.append(result.row())
                rows[-1]["schema_with_not"] = unsupported_keyword(name, tokenizer, vocab)
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[512, 8000, 32000])
    parser.add_argument("--library", nargs="+", choices=sorted(BENCHES), default=list(BENCHES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run(args.vocab, args.library)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
