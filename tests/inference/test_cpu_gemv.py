"""Matrix-vector products over oneDNN's packed weights (inference.cpu_gemv) against F.linear."""

from __future__ import annotations

from pathlib import Path

import numba
import pytest
import torch
import torch.nn.functional as F

from inference import cpu_gemm, cpu_gemv, numba_jit
from inference.distributed import LaunchEnv, WireStep
from inference.engine_config import EngineConfig
from inference.model_runner import ModelRunner


def _packed(out_features: int, in_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed))
    return weight, torch.ops.mkldnn._reorder_linear_weight(weight, cpu_gemm.PACK_ROWS_HINT)


# Output sizes below, at and past a 64-row block, and input sizes oneDNN pads.
SHAPES = [(80, 96), (100, 37), (64, 16), (8, 8), (130, 200)]


@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
@pytest.mark.parametrize("rows", [(1,), (2,), (1, 1), (2, 1)])
def test_matvec_over_the_packed_buffer_equals_f_linear(out_features: int, in_features: int,
                                                        rows: tuple[int, ...]) -> None:
    weight, packed = _packed(out_features, in_features, out_features + in_features)
    blocks = cpu_gemv.blocked_view(packed, weight)
    # If a oneDNN upgrade changes its packed layout, the kernel silently stops applying: say so here.
    assert blocks is not None, "oneDNN's packed fp32 layout is no longer [blocks, padded_in, b]"
    x = torch.randn(*rows, in_features, generator=torch.Generator().manual_seed(len(rows)))
    out = cpu_gemv.matvec(blocks, out_features, x)
    assert out.shape == (*rows, out_features)
    torch.testing.assert_close(out, F.linear(x, weight), atol=1e-4, rtol=1e-5)


def test_blocked_view_rejects_a_buffer_that_does_not_hold_the_weight() -> None:
    weight, packed = _packed(80, 96, 1)
    assert cpu_gemv.blocked_view(packed, weight + 1e-3) is None  # same shape, other values
    assert cpu_gemv.blocked_view(packed, weight.bfloat16()) is None
    assert cpu_gemv.blocked_view(weight, weight) is None  # a dense tensor is not a oneDNN buffer
    # oneDNN's plain (row-major) layout, chosen for a one-row hint, is not the blocked one.
    plain = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
    assert cpu_gemv.blocked_view(plain, weight) is None


@pytest.mark.parametrize("with_bias", [True, False])
def test_packed_linear_uses_the_kernel_for_one_or_two_rows_only(monkeypatch: pytest.MonkeyPatch,
                                                                with_bias: bool) -> None:
    calls: list[int] = []
    real = cpu_gemv.matvec

    def counting(blocks, out_features, x):
        calls.append(x.numel() // x.shape[-1])
        return real(blocks, out_features, x)

    monkeypatch.setattr(cpu_gemv, "matvec", counting)
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(80, 96, generator=generator)
    bias = torch.randn(80, generator=generator) if with_bias else None
    linear = cpu_gemm.PackedLinear(weight, bias, matvec_kernel=True)
    plain = cpu_gemm.PackedLinear(weight, bias)
    assert plain.blocks is None
    for rows in (1, 2, 3, 8):
        x = torch.randn(rows, 96, generator=generator)
        torch.testing.assert_close(linear(x), F.linear(x, weight, bias), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(plain(x), F.linear(x, weight, bias), atol=1e-4, rtol=1e-5)
    assert calls == [1, 2]


def test_numba_threads_follow_torch_on_the_calling_thread() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert numba_jit.match_torch_threads() == 1
        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        numba_jit.match_torch_threads()


def _runner(model_dir: Path, matvec: bool) -> ModelRunner:
    cfg = EngineConfig(model_dir=model_dir, dtype="float32", cpu_matvec_kernel=matvec)
    return ModelRunner(cfg, LaunchEnv.from_environ({}, "cpu"), torch.device("cpu"))


@pytest.mark.parametrize("batch", [1, 2])
def test_runner_with_the_kernel_gives_the_same_logits_and_greedy_tokens(tiny_model_dir: Path, batch: int,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [0]
    real = cpu_gemv.matvec

    def counting(*args):
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(cpu_gemv, "matvec", counting)
    kernel, onednn = _runner(tiny_model_dir, True), _runner(tiny_model_dir, False)
    prompt = torch.randint(3, 500, (batch * 10,), generator=torch.Generator().manual_seed(batch))
    tables = [[2 * i, 2 * i + 1] for i in range(batch)]
    step = WireStep(0, [(0, 10, True)] * batch, tables, prompt, torch.arange(10).repeat(batch))
    for i in range(6):
        a, b = kernel.execute(step), onednn.execute(step)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
        step = WireStep(batch, [], tables, b.argmax(-1), torch.full((batch,), 10 + i))
    assert calls[0] > 0  # the decode steps (1-2 rows) went through the kernel
