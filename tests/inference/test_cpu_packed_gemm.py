"""oneDNN prepacked linears on the CPU (inference.cpu_gemm.pack_linears)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from inference import cpu_gemm
from inference.distributed import LaunchEnv, WireStep
from inference.engine_config import EngineConfig
from inference.fused import fuse_projections
from inference.model_runner import ModelRunner


@pytest.mark.parametrize(
    ("device", "dtype", "flags", "expected"),
    [
        ("cpu", torch.float32, set(), True),
        ("cpu", torch.bfloat16, {"avx2", "fma"}, False),  # widened instead (no native bf16 kernel)
        ("cpu", torch.bfloat16, {"avx512f", "avx512_bf16"}, True),
        ("cpu", torch.float16, {"avx512_bf16"}, False),
        ("cpu", torch.float16, {"amx_fp16"}, True),
        ("cuda", torch.float32, set(), False),
    ],
)
def test_packing_applies_to_fp32_and_natively_supported_16_bit_dtypes_on_the_cpu(
    device: str, dtype: torch.dtype, flags: set[str], expected: bool
) -> None:
    assert cpu_gemm.packing_applies(torch.device(device), dtype, flags) is expected


@pytest.mark.parametrize("shape", [(1, 96), (7, 96), (1, 64, 96)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_packed_linear_matches_f_linear(shape: tuple[int, ...], with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=generator)
    w = torch.randn(80, 96, generator=generator)
    b = torch.randn(80, generator=generator) if with_bias else None
    out = cpu_gemm.PackedLinear(w, b)(x)
    assert out.shape == (*shape[:-1], 80)
    torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-4, rtol=1e-5)


def test_packed_linear_in_bf16_matches_f_linear_within_bf16_rounding() -> None:
    # Packing applies to bf16 only on CPUs that multiply it natively, but oneDNN computes it anywhere.
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(1, 16, 96, generator=generator).bfloat16()
    w = torch.randn(80, 96, generator=generator).bfloat16()
    b = torch.randn(80, generator=generator).bfloat16()
    out = cpu_gemm.PackedLinear(w, b)(x)
    assert out.dtype == torch.bfloat16
    exact = F.linear(x.double(), w.double(), b.double())
    assert (out.double() - exact).abs().max() <= 0.02 * exact.abs().max()


def test_packed_linear_accepts_a_non_contiguous_input() -> None:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(96, 12, generator=generator).t()  # [12, 96], column-major
    w = torch.randn(80, 96, generator=generator)
    torch.testing.assert_close(cpu_gemm.PackedLinear(w, None)(x), F.linear(x, w), atol=1e-4, rtol=1e-5)


def _tiny_llama(tie: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tie, attention_bias=True)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("fuse", [True, False])
def test_pack_linears_replaces_every_product_and_frees_the_original_weights(fuse: bool) -> None:
    model = _tiny_llama(tie=False)
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(ids).logits
    if fuse:
        fuse_projections(model)
    count = cpu_gemm.pack_linears(model)
    # Per layer: q/k/v + o + gate/up + down (fused: 4 products; unfused: 7), plus the LM head.
    assert count == 2 * (4 if fuse else 7) + 1
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.numel() == 0 for m in linears)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_a_tied_lm_head_keeps_the_embedding_weight() -> None:
    model = _tiny_llama(tie=True)
    ids = torch.arange(5).view(1, -1)
    with torch.inference_mode():
        expected = model(ids).logits
    cpu_gemm.pack_linears(model)
    assert model.model.embed_tokens.weight.shape == (128, 64)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_packing_twice_changes_nothing() -> None:
    model = _tiny_llama(tie=False)
    fuse_projections(model)
    assert cpu_gemm.pack_linears(model) > 0
    assert cpu_gemm.pack_linears(model) == 0


def _runner(model_dir: Path, pack: bool) -> ModelRunner:
    cfg = EngineConfig(model_dir=model_dir, dtype="float32", pack_cpu_weights=pack)
    return ModelRunner(cfg, LaunchEnv.from_environ({}, "cpu"), torch.device("cpu"))


def test_runner_with_packed_weights_gives_the_unpacked_logits_and_greedy_tokens(tiny_model_dir: Path) -> None:
    packed, plain = _runner(tiny_model_dir, True), _runner(tiny_model_dir, False)
    assert all(m.weight.numel() == 0 for m in packed.model.modules() if isinstance(m, torch.nn.Linear))
    assert all(m.weight.numel() > 0 for m in plain.model.modules() if isinstance(m, torch.nn.Linear))
    prompt = torch.randint(3, 500, (24,), generator=torch.Generator().manual_seed(3))
    tables = [[0, 1], [4, 5]]
    steps = [WireStep(0, [(0, 12, True), (0, 12, True)], tables, prompt, torch.cat([torch.arange(12)] * 2))]
    tokens = None
    for i in range(6):
        if i:
            steps = [WireStep(2, [], tables, tokens, torch.tensor([11 + i, 11 + i]))]
        a, b = packed.execute(steps[0]), plain.execute(steps[0])
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
        tokens = b.argmax(-1)
