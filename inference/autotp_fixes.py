"""Per-family corrections after DeepSpeed AutoTP sharded a model, for forwards AutoTP cannot see into.

AutoTP shards the Linear weights and divides the head-count attributes of each attention module
(`num_heads`, `num_key_value_heads`, ...; `AutoTP.update_mp_params`), but it never touches the
model config, which every module shares. A forward that reads a head count from `self.config`
therefore still sees the whole model's count on a rank that holds only its share of the heads.

Phi-3 is such a family: `Phi3Attention.forward` slices its fused `qkv_proj` output at
`self.config.num_attention_heads * head_dim`. AutoTP shards that fused weight correctly (its
"phi3type" layout: this rank's q rows, then its k rows, then its v rows), so the slice takes the
rank's whole q/k/v block as queries and `o_proj` gets twice its width ("mat1 and mat2 shapes cannot
be multiplied (1x64 and 32x64)" at TP=2). `gate_up_proj` needs nothing here: AutoTP shards it as two
halves (`shard_chunk_mlp`), so `chunk(2)` in `Phi3MLP.forward` still splits gate from up.

The fix gives each such attention module its own shallow copy of the config with this rank's head
counts, read from the sharded `o_proj` (its input width is this rank's query width), so the
model's own forward runs unchanged.
"""

from __future__ import annotations

import copy
import logging

import torch

log = logging.getLogger("inferforge.autotp_fixes")

# Attention classes whose forward reads head counts from `self.config` (checked by class name, so a
# family that is not installed costs nothing).
CONFIG_HEAD_COUNT_ATTENTION = ("Phi3Attention",)


def localize_attention_configs(model: torch.nn.Module) -> int:
    """Give attention modules that read head counts from the config this rank's counts; returns how many."""
    fixed = 0
    for module in model.modules():
        if type(module).__name__ not in CONFIG_HEAD_COUNT_ATTENTION:
            continue
        config = module.config
        head_dim = module.head_dim
        local_heads = module.o_proj.weight.shape[1] // head_dim
        local_kv_heads = module.num_key_value_heads  # already divided by AutoTP
        if local_heads == config.num_attention_heads and local_kv_heads == config.num_key_value_heads:
            continue  # not sharded
        qkv_rows = module.qkv_proj.weight.shape[0]
        if qkv_rows != (local_heads + 2 * local_kv_heads) * head_dim:
            raise RuntimeError(
                f"{type(module).__name__}: sharded qkv_proj has {qkv_rows} rows, expected "
                f"({local_heads} + 2 x {local_kv_heads}) heads x {head_dim}; cannot run this tensor-parallel size"
            )
        local = copy.copy(config)
        local.num_attention_heads = local_heads
        local.num_key_value_heads = local_kv_heads
        module.config = local
        module.num_key_value_groups = local_heads // local_kv_heads
        fixed += 1
    if fixed:
        log.info("per-rank head counts set on %d attention modules", fixed)
    return fixed
