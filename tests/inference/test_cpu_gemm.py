"""Widened 16-bit GEMMs on CPUs without bf16/fp16 instructions (inference.cpu_gemm)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from inference import cpu_gemm
from inference.distributed import LaunchEnv, WireStep
from inference.engine_config import EngineConfig
from inference.model_runner import ModelRunner


@pytest.mark.parametrize(
    ("device", "dtype", "flags", "expected"),
    [
        ("cpu", torch.bfloat16, {"avx2", "fma"}, True),
        ("cpu", torch.float16, {"avx2"}, True),
        ("cpu", torch.bfloat16, {"avx512f", "avx512_bf16"}, False),
        ("cpu", torch.bfloat16, {"amx_bf16"}, False),
        ("cpu", torch.float16, {"amx_fp16"}, False),
        ("cpu", torch.float16, {"avx512_bf16"}, True),  # bf16 hardware does not help fp16
        ("cpu", torch.float32, set(), False),
        ("cuda", torch.bfloat16, set(), False),
    ],
)
def test_widening_applies_only_to_16_bit_dtypes_on_cpus_without_a_native_kernel(
    device: str, dtype: torch.dtype, flags: set[str], expected: bool
) -> None:
    assert cpu_gemm.widening_applies(torch.device(device), dtype, flags) is expected


def _operands(rows: int, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 96, generator=generator).to(dtype)
    w = torch.randn(80, 96, generator=generator).to(dtype)
    b = torch.randn(80, generator=generator).to(dtype)
    return x, w, b


def test_linear_with_enough_rows_is_computed_in_fp32_and_rounded_once() -> None:
    x, w, b = _operands(16)
    mode = cpu_gemm.WidenedGemm(min_rows=8)
    with mode:
        out = F.linear(x, w, b)
    assert mode.widened == 1
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.linear(x.float(), w.float(), b.float()).to(torch.bfloat16))
    # Within one bf16 rounding step of the exact product, like PyTorch's own bf16 kernel.
    exact = F.linear(x.double(), w.double(), b.double())
    plain = F.linear(x, w, b)
    assert (out.double() - exact).abs().max() <= (plain.double() - exact).abs().max() * 1.01 + 1e-6


def test_nn_linear_modules_are_widened_through_f_linear() -> None:
    layer = torch.nn.Linear(96, 80).to(torch.bfloat16)
    x = _operands(12)[0].unsqueeze(0)  # [1, 12, 96] as a packed step feeds it
    mode = cpu_gemm.WidenedGemm(min_rows=8)
    with mode, torch.inference_mode():
        out = layer(x)
    assert mode.widened == 1
    assert out.shape == (1, 12, 80)
    assert torch.equal(out, F.linear(x.float(), layer.weight.float(), layer.bias.float()).to(torch.bfloat16))


def test_autotp_style_matmul_against_a_transposed_weight_is_widened() -> None:
    x, w, _ = _operands(16)
    x = x.unsqueeze(0)
    mode = cpu_gemm.WidenedGemm(min_rows=8)
    with mode:
        out = torch.matmul(x, w.transpose(-1, -2))
        out_method = x.matmul(w.transpose(-1, -2))
        out_operator = x @ w.transpose(-1, -2)
    assert mode.widened == 3
    expected = torch.matmul(x.float(), w.float().transpose(-1, -2)).to(torch.bfloat16)
    for result in (out, out_method, out_operator):
        assert torch.equal(result, expected)


def test_few_rows_and_fp32_keep_the_plain_kernel() -> None:
    x, w, b = _operands(4)
    x32, w32, b32 = _operands(32, torch.float32)
    mode = cpu_gemm.WidenedGemm(min_rows=8)
    with mode:
        few = F.linear(x, w, b)
        full = F.linear(x32, w32, b32)
        attention_like = torch.matmul(x.view(4, 1, 96), x.view(4, 96, 1))  # not a 2-D weight
    assert mode.widened == 0
    assert torch.equal(few, F.linear(x, w, b))
    assert torch.equal(full, F.linear(x32, w32, b32))
    assert attention_like.dtype == torch.bfloat16


def test_min_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="min_rows must be >= 1, got 0"):
        cpu_gemm.WidenedGemm(min_rows=0)


def test_engine_config_rejects_negative_widen_rows(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"cpu_widen_min_rows must be >= 0 \(0 disables\), got -1"):
        EngineConfig(model_dir=tiny_model_dir, cpu_widen_min_rows=-1).validate()


class _CountingGemm(cpu_gemm.WidenedGemm):
    instances: list[cpu_gemm.WidenedGemm] = []

    def __init__(self, min_rows: int) -> None:
        super().__init__(min_rows)
        _CountingGemm.instances.append(self)


@pytest.mark.parametrize(("fuse", "products_per_layer"), [(False, 7), (True, 4)])  # fused: qkv, o, gate_up, down
def test_runner_widens_large_steps_only_and_matches_the_plain_bf16_forward(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, fuse: bool, products_per_layer: int
) -> None:
    monkeypatch.setattr(cpu_gemm, "cpu_flags", lambda: {"avx2", "fma"})  # as on an AVX2-only CPU
    monkeypatch.setattr(cpu_gemm, "WidenedGemm", _CountingGemm)
    env = LaunchEnv.from_environ({}, "cpu")
    plain = ModelRunner(EngineConfig(model_dir=tiny_model_dir, dtype="bfloat16", cpu_widen_min_rows=0,
                                     fuse_projections=fuse), env, torch.device("cpu"))
    widened = ModelRunner(EngineConfig(model_dir=tiny_model_dir, dtype="bfloat16", cpu_widen_min_rows=8,
                                       fuse_projections=fuse), env, torch.device("cpu"))
    assert (plain.widen_min_rows, widened.widen_min_rows) == (0, 8)

    prompt = torch.randint(3, 500, (24,), generator=torch.Generator().manual_seed(0))
    prefill = WireStep(0, [(0, 24, True)], [[0, 1]], prompt, torch.arange(24))
    _CountingGemm.instances.clear()
    reference = plain.execute(prefill)
    assert _CountingGemm.instances == []
    logits = widened.execute(prefill)
    assert len(_CountingGemm.instances) == 1
    # Every projection of the 24-row step; the LM head sees one row and keeps the bf16 kernel.
    layers = plain.hf_config.num_hidden_layers
    assert _CountingGemm.instances[0].widened == products_per_layer * layers
    assert logits.argmax(-1).tolist() == reference.argmax(-1).tolist()
    torch.testing.assert_close(logits, reference, atol=0.1, rtol=0.02)

    decode = WireStep(1, [], [[0, 1]], torch.tensor([7]), torch.tensor([24]))
    _CountingGemm.instances.clear()
    widened.execute(decode)
    assert _CountingGemm.instances == []  # one row: the bandwidth-bound bf16 kernel


def test_runner_does_not_widen_fp32(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_gemm, "cpu_flags", lambda: set())
    runner = ModelRunner(EngineConfig(model_dir=tiny_model_dir, dtype="float32"), LaunchEnv.from_environ({}, "cpu"),
                         torch.device("cpu"))
    assert runner.widen_min_rows == 0
