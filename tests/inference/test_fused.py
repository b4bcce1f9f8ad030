"""Fused q/k/v and gate/up projections (inference.fused) give the unfused forward's results."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention

from inference.distributed import LaunchEnv, WireStep
from inference.engine_config import EngineConfig
from inference.fused import fuse_projections
from inference.model_runner import ModelRunner


def _runner(model_dir: Path, dtype: str, fuse: bool) -> ModelRunner:
    # Unpacked weights: this compares fusion alone (inference.cpu_gemm's packing has its own tests).
    cfg = EngineConfig(model_dir=model_dir, dtype=dtype, fuse_projections=fuse, cpu_widen_min_rows=0,
                       pack_cpu_weights=False)
    return ModelRunner(cfg, LaunchEnv.from_environ({}, "cpu"), torch.device("cpu"))


TABLES = [[0, 1], [4, 5]]  # KV blocks of the two sequences (16-token blocks; positions < 32)


def _steps() -> list[WireStep]:
    """Two prompts prefilled together (one continued in a second chunk), then batched decode steps."""
    prompt = torch.randint(3, 500, (20,), generator=torch.Generator().manual_seed(3))
    steps = [
        WireStep(0, [(0, 12, True), (0, 8, False)], TABLES, prompt, torch.cat([torch.arange(12), torch.arange(8)])),
        WireStep(1, [(8, 4, True)], TABLES, torch.tensor([7, 9, 10, 11, 12]), torch.tensor([12, 8, 9, 10, 11])),
    ]
    for i in range(4):
        steps.append(WireStep(2, [], TABLES, torch.tensor([20 + i, 30 + i]), torch.tensor([13 + i, 12 + i])))
    return steps


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_runner_matches_the_unfused_forward(tiny_model_dir: Path, dtype: str) -> None:
    plain = _runner(tiny_model_dir, dtype, fuse=False)
    fused = _runner(tiny_model_dir, dtype, fuse=True)
    layers = fused.hf_config.num_hidden_layers
    fused_modules = [m for m in fused.model.modules() if hasattr(m, "inferforge_qkv")]
    assert len(fused_modules) == layers
    assert not any(hasattr(m, "inferforge_qkv") for m in plain.model.modules())
    for step in _steps():
        torch.testing.assert_close(fused.execute(step), plain.execute(step), atol=1e-5, rtol=0)


def test_fusing_keeps_one_copy_of_the_weights(tiny_model_dir: Path) -> None:
    runner = _runner(tiny_model_dir, "float32", fuse=True)
    attention = runner.model.model.layers[0].self_attn
    mlp = runner.model.model.layers[0].mlp
    fused_qkv = attention.inferforge_qkv.weight
    assert attention.q_proj.weight.data_ptr() == fused_qkv.data_ptr()
    offset = attention.q_proj.weight.numel() * fused_qkv.element_size()
    assert attention.k_proj.weight.data_ptr() == fused_qkv.data_ptr() + offset
    assert mlp.gate_proj.weight.data_ptr() == mlp.inferforge_gate_up.weight.data_ptr()
    # The checkpoint view is unchanged: same names, same shapes.
    names = {name: tuple(t.shape) for name, t in runner.model.state_dict().items()}
    assert names["model.layers.0.self_attn.k_proj.weight"] == tuple(attention.k_proj.weight.shape)
    assert not any("inferforge" in name for name in names)


class _CustomAttention(LlamaAttention):
    def forward(self, *args, **kwargs):  # a model that overrides the Llama forward
        return super().forward(*args, **kwargs)


def test_modules_with_their_own_forward_are_left_alone() -> None:
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64)
    model = LlamaForCausalLM(config)
    model.model.layers[1].self_attn.__class__ = _CustomAttention
    assert fuse_projections(model) == (1, 2)
    assert not hasattr(model.model.layers[1].self_attn, "inferforge_qkv")
    assert "forward" not in vars(model.model.layers[1].self_attn)
