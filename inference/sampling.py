"""Per-request token sampling over a batch of logits (rank 0 only).

Greedy rows (temperature 0) take the argmax. Sampled rows apply temperature and nucleus (top-p)
filtering with batched tensor ops, then draw with the exponential race: `argmax(p_i / E_i)` with
`E_i ~ Exp(1)` i.i.d. is an exact sample from `p`. The race makes batch independence easy: the
only per-row work is drawing `E` from the request's own `torch.Generator` (exactly `vocab` draws
per step), so a seeded request samples the same tokens whatever else is in the batch. Rows
without a seed share the engine's generator in one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample_tokens(
    logits: torch.Tensor,
    temperatures: Sequence[float],
    top_ps: Sequence[float],
    generators: Sequence[torch.Generator | None],
    shared_generator: torch.Generator,
) -> list[int]:
    """Pick one token per row of `logits` ([rows, vocab]); returns the token ids."""
    logits = logits.float()
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, t in enumerate(temperatures) if t > 0.0]
    if not sampled:
        return tokens.tolist()

    index = torch.tensor(sampled, dtype=torch.long)
    temps = torch.tensor([temperatures[i] for i in sampled], dtype=torch.float32).unsqueeze(1)
    probs = torch.softmax(logits.index_select(0, index) / temps, dim=-1)

    nucleus_rows = [j for j, i in enumerate(sampled) if top_ps[i] < 1.0]
    if nucleus_rows:
        rows = torch.tensor(nucleus_rows, dtype=torch.long)
        top_p = torch.tensor([top_ps[sampled[j]] for j in nucleus_rows], dtype=torch.float32).unsqueeze(1)
        sub = probs.index_select(0, rows)
        sorted_probs, order = sub.sort(dim=-1, descending=True)
        # Drop a token once the mass before it already reaches top_p; the top token always stays.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        probs.index_copy_(0, rows, sub.masked_fill(drop, 0.0))

    vocab = logits.shape[1]
    noise = torch.empty_like(probs)
    shared_rows = [j for j, i in enumerate(sampled) if generators[i] is None]
    if shared_rows:
        draws = torch.empty((len(shared_rows), vocab)).exponential_(generator=shared_generator)
        noise.index_copy_(0, torch.tensor(shared_rows, dtype=torch.long), draws)
    for j, i in enumerate(sampled):
        generator = generators[i]
        if generator is not None:
            noise[j].exponential_(generator=generator)
    choice = (probs / noise).argmax(dim=-1)
    tokens.index_copy_(0, index, choice)
    return tokens.tolist()
