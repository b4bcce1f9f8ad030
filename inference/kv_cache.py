"""Paged KV cache and the attention function that reads and writes it.

K/V live in a per-layer *block pool* of `num_blocks` blocks of `block_size` tokens; a sequence owns
a *block table* (the pool blocks holding its positions 0..block_size-1, block_size..., in order),
which grows by one block each time its tokens cross a block boundary and is returned to the pool
when the sequence ends. Memory therefore grows with the tokens in use, not with
max_batch_size x max_model_len. Which blocks a sequence gets is decided by rank 0's
`inference.block_manager.BlockManager` and sent to every rank in the step (`WireStep`), so all
ranks hold identical tables; this module only reads and writes the pool.

Pool layout per layer and tensor: `[kv_heads_on_this_rank, num_blocks * block_size, head_dim]`,
i.e. `[num_blocks, kv_heads, block_size, head_dim]` blocks with the head dimension taken outside,
so a token's K/V is column `block * block_size + offset` of every head, and

* writing a step's new K/V is one `index_put_` per layer per tensor (the "slot mapping": each
  packed token's column of each head), from the projections' `[kv_heads, T, head_dim]`;
* reading n sequences' first L positions is one `index_select` of n x L columns into a reused
  scratch buffer, whose `[n, kv_heads, L, head_dim]` view has contiguous `[L, head_dim]` rows per
  head, as SDPA's CPU kernel wants. Measured on 2 cores (32 sequences x 576 positions, 4 KV heads
  of 64, fp32, one layer): SDPA over the old slot view 8 ms; a token-major gather into fresh tensors
  40-48 ms (page faults of new buffers and SDPA copying strided K/V); this layout with a reused
  buffer 16 ms, of which the gather is 4.4 ms. Decode rows are gathered in groups of at most
  GATHER_LIMIT_BYTES, which bounds the scratch memory at any context length and keeps it in cache.

A step is one forward over a *packed* batch of tokens (`[1, T]`, no padding): first one decode
token for each decoding sequence, then the prefill chunks of sequences still reading their
prompt. Attention is computed as:

* decode tokens: on the CPU in fp32, `inference.cpu_attention`'s kernel reads each sequence's K/V
  in place through its pool rows (one pass, no copy); elsewhere two batched matmuls over the
  decoding sequences' K/V gathered into `[kv_heads, n * kv_len, head_dim]` (`_decode_attention`;
  positions past a sequence's length point at row 0 and are masked out when the lengths differ);
* prompt chunks that start at position 0: batched causal SDPA over this step's own K/V, one call
  per run of equal-length chunks (`FreshPromptGroup`);
* chunks that continue a cached prefix (chunked prefill, or a prompt whose prefix was found in the
  prefix cache): one SDPA each against its gathered K/V.

The function is registered in transformers' `AttentionInterface` under `ATTENTION_NAME` and
receives the per-step metadata through the model's `**kwargs` (key `STEP_KWARG`), which
transformers passes down to every attention call. Works unchanged under DeepSpeed AutoTP: the
projections are sharded per rank, so the pool is allocated lazily from the first K/V it sees (the
local head count); the block count is the same on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from . import cpu_attention

ATTENTION_NAME = "inferforge_paged"
STEP_KWARG = "inferforge_step"
# Per K or V scratch buffer. Small enough that a group's gathered K/V is still in the last-level
# cache when attention reads it. Roofline preset, 64 sequences, fp32, 2 cores, 32 MiB L3
# (`python -m inference.bench.decode_step --batch 64 --context 48|400`): 239 -> 202 ms per step at
# 48 cached tokens and 480 -> 348 ms at 400, 64 MiB -> 4 MiB. An earlier sweep the same day also had
# 16 MiB (226 / 390 ms) and 2 MiB (221 / 756 ms: one sequence per group, per-call overhead wins).
GATHER_LIMIT_BYTES = 4 * 2**20


@dataclass
class PrefillChunk:
    """A run of prompt tokens for one sequence that continues K/V already in its blocks."""

    start: int  # position of the first token of the chunk
    length: int
    offset: int  # index of the first token in the packed batch
    rows: torch.Tensor  # [start + length] int64 pool rows of positions 0..start+length-1
    mask: torch.Tensor | None = None  # [length, start + length] bool; None = plain causal


@dataclass(frozen=True)
class FreshPromptGroup:
    """`count` back-to-back prompt chunks of equal `length`, each starting at position 0.

    Such chunks attend only to their own tokens, so their K/V come straight from this step's
    projections and one batched causal SDPA call covers the whole group (a burst of equal-length
    prompts is one call per layer instead of one per prompt).
    """

    offset: int
    count: int
    length: int


@dataclass
class StepAttention:
    """Per-step metadata shared by every layer's attention call."""

    cache: PagedKVCache
    token_rows: torch.Tensor  # [T] int64 pool row each packed token's K/V is written to
    num_decode: int
    head_token_rows: torch.Tensor | None = None  # [kv_heads * T], derived from token_rows at the first write
    decode_rows: torch.Tensor | None = None  # [num_decode * decode_kv_len] int64 pool rows to read
    decode_kv_len: int = 0
    decode_lengths: torch.Tensor | None = None  # [num_decode] int64 cached positions each token sees
    decode_mask: torch.Tensor | None = None  # [num_decode, 1, 1, decode_kv_len] bool, None if all equal
    prefills: list[PrefillChunk] = field(default_factory=list)  # chunks that continue a cached prefix
    fresh_groups: list[FreshPromptGroup] = field(default_factory=list)


class PagedKVCache:
    """A pool of `num_blocks` K/V blocks of `block_size` tokens per layer on one rank."""

    def __init__(
        self, num_layers: int, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device,
        cpu_decode_kernel: bool = False,
    ):
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.dtype = dtype
        self.device = device
        # Decode attention through `cpu_attention` (one pass over the pool) instead of gather + matmuls.
        self.cpu_decode_kernel = cpu_decode_kernel
        self.keys: list[torch.Tensor] = []  # per layer [kv_heads, num_blocks * block_size, head_dim]
        self.values: list[torch.Tensor] = []
        # Gather buffers reused by every layer and step: fresh multi-MiB tensors cost page faults each
        # time on the CPU. One layer's attention is done with them before the next layer's starts.
        self._scratch_keys = torch.empty(0, dtype=dtype, device=device)
        self._scratch_values = torch.empty(0, dtype=dtype, device=device)

    def allocate(self, kv_heads: int, head_dim: int) -> None:
        """Allocate the pool (done on the first write, when the rank's local head count is known)."""
        # Zeros, not empty: gathered rows past a sequence's length are masked out, but a NaN bit
        # pattern there would still turn 0 x NaN into NaN in the attention product.
        shape = (kv_heads, self.num_blocks * self.block_size, head_dim)
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]

    @property
    def allocated(self) -> bool:
        return bool(self.keys)

    def nbytes(self) -> int:
        """Bytes held by the allocated K and V pools."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def write(self, layer: int, step: StepAttention, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store this step's K/V ([1, kv_heads, T, head_dim]) at each token's pool row."""
        if not self.allocated:
            self.allocate(key.shape[1], key.shape[3])
        keys, values = self.keys[layer], self.values[layer]
        heads, pool_rows, head_dim = keys.shape
        if step.head_token_rows is None:
            # Row of (head, token) in the pool seen as [heads * pool_rows, head_dim]. index_put_ over
            # these contiguous rows: on the CPU (8 heads x 64 tokens of 64 fp32) 23 us against 103 us
            # for index_copy_ along dim 0 and ~130 us along dim 1 (rows are distinct: no accumulation).
            offsets = torch.arange(heads, device=keys.device).unsqueeze(1) * pool_rows
            step.head_token_rows = (offsets + step.token_rows).flatten()
        rows = (step.head_token_rows,)
        keys.view(-1, head_dim).index_put_(rows, key[0].reshape(-1, head_dim))
        values.view(-1, head_dim).index_put_(rows, value[0].reshape(-1, head_dim))

    def gather_rows(self, layer: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V at pool `rows` as `[kv_heads, len(rows), head_dim]` views of the scratch buffers
        (valid until the next gather)."""
        keys, values = self.keys[layer], self.values[layer]
        heads, _, head_dim = keys.shape
        size = heads * rows.numel() * head_dim
        if self._scratch_keys.numel() < size:
            self._scratch_keys = torch.empty(size, dtype=self.dtype, device=self.device)
            self._scratch_values = torch.empty(size, dtype=self.dtype, device=self.device)
        shape = (heads, rows.numel(), head_dim)
        k = torch.index_select(keys, 1, rows, out=self._scratch_keys[:size].view(shape))
        v = torch.index_select(values, 1, rows, out=self._scratch_values[:size].view(shape))
        return k, v

    def gather(self, layer: int, rows: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V at `rows` (batch x L pool columns) as `[batch, kv_heads, L, head_dim]` views of the
        scratch buffers (valid until the next gather)."""
        k, v = self.gather_rows(layer, rows)
        return k.unflatten(1, (batch, -1)).transpose(0, 1), v.unflatten(1, (batch, -1)).transpose(0, 1)

    def rows_per_gather(self, kv_len: int) -> int:
        """How many sequences of `kv_len` positions one gather may hold (at least 1)."""
        if not self.allocated:
            return 1
        heads, _, head_dim = self.keys[0].shape
        per_sequence = heads * kv_len * head_dim * self.keys[0].element_size()
        return max(1, GATHER_LIMIT_BYTES // per_sequence)


def block_rows(table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Pool rows of `positions` for a sequence whose blocks are `table` (both int64)."""
    return table[positions // block_size] * block_size + positions % block_size


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface over a `PagedKVCache`; returns `[1, T, heads, head_dim]`."""
    step: StepAttention | None = kwargs.get(STEP_KWARG)
    if step is None:
        raise RuntimeError(
            f"attention implementation {ATTENTION_NAME!r} needs the {STEP_KWARG!r} keyword; "
            "run the model through inference.engine, not model.generate"
        )
    layer = module.layer_idx
    cache = step.cache
    cache.write(layer, step, key, value)
    num_tokens = query.shape[2]
    gqa = query.shape[1] != key.shape[1]
    out = query.new_empty((1, num_tokens, query.shape[1], query.shape[3]))

    n = step.num_decode
    if n:
        _decode_attention(cache, layer, step, query[0, :, :n], out[0, :n], scaling)
    for group in step.fresh_groups:
        end = group.offset + group.count * group.length
        # [1, heads, count*length, D] -> [count, heads, length, D]
        q = query[0, :, group.offset : end].unflatten(1, (group.count, group.length)).transpose(0, 1)
        k = key[0, :, group.offset : end].unflatten(1, (group.count, group.length)).transpose(0, 1)
        v = value[0, :, group.offset : end].unflatten(1, (group.count, group.length)).transpose(0, 1)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
        out[0, group.offset : end] = attn.transpose(1, 2).flatten(0, 1)
    for chunk in step.prefills:
        q = query[:, :, chunk.offset : chunk.offset + chunk.length]
        k, v = cache.gather(layer, chunk.rows, 1)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=chunk.mask, is_causal=chunk.mask is None, scale=scaling, enable_gqa=gqa
        )
        out[0, chunk.offset : chunk.offset + chunk.length] = attn[0].transpose(0, 1)
    return out, None


def _decode_attention(
    cache: PagedKVCache, layer: int, step: StepAttention, query: torch.Tensor, out: torch.Tensor, scaling: float | None
) -> None:
    """Attention of the step's decode tokens (`query` [heads, n, D]) into `out` ([n, heads, D]).

    Head-major batched matmuls: the query heads sharing a KV head are that head's g "query rows"
    (query head h reads KV head h // g, as in transformers' repeat_kv), so GQA costs no K/V copy,
    and the gathered `[kv_heads, b * L, D]` K/V is `[kv_heads * b, L, D]` as it lies: scores =
    bmm(q, K^T), softmax, bmm(p, V). A decode query sees every cached position of its sequence, so
    only rows shorter than the longest need a mask. Measured on 2 cores against SDPA over the same
    gathered K/V (fp32; 64 sequences, 4 KV heads of 64, 80 positions): 0.29 ms against 1.07 ms
    (SDPA's flash kernel works in blocks meant for many query rows; a decode query has 1-2).
    """
    heads, n, head_dim = query.shape
    kv_len = step.decode_kv_len
    kv_heads = cache.keys[layer].shape[0]
    group = heads // kv_heads
    scale = head_dim**-0.5 if scaling is None else scaling
    if cache.cpu_decode_kernel:
        rows = step.decode_rows.view(n, kv_len)
        keys, values = cache.keys[layer], cache.values[layer]
        cpu_attention.decode_attention(query, keys, values, rows, step.decode_lengths, scale, out)
        return
    q_all = query.view(kv_heads, group, n, head_dim)
    per_gather = cache.rows_per_gather(kv_len)
    for lo in range(0, n, per_gather):
        hi = min(n, lo + per_gather)
        b = hi - lo
        k, v = cache.gather_rows(layer, step.decode_rows[lo * kv_len : hi * kv_len])
        q = q_all[:, :, lo:hi].transpose(1, 2).reshape(kv_heads * b, group, head_dim)
        scores = torch.bmm(q, k.view(kv_heads * b, kv_len, head_dim).transpose(1, 2)).mul_(scale)
        if step.decode_mask is not None:
            hidden = ~step.decode_mask[lo:hi].view(1, b, 1, kv_len)
            scores.view(kv_heads, b, group, kv_len).masked_fill_(hidden, float("-inf"))
        attn = torch.bmm(torch.softmax(scores, dim=-1), v.view(kv_heads * b, kv_len, head_dim))
        out[lo:hi] = attn.view(kv_heads, b, group, head_dim).transpose(0, 1).reshape(b, heads, head_dim)


AttentionInterface.register(ATTENTION_NAME, paged_attention)
