"""Showback: each tenant's share of the month's serving cost, allocated by the tokens the models computed for it.

A model's serving cost for the month (its GPU pool's hours: from the Azure bill, or the figure `python -m stacks
plan --json` estimates for the pool) is split across the tenants that used it in proportion to the tokens the
model computed for each: prompt tokens not served from the KV prefix cache, plus completion tokens. Answers the
gateway served from its response cache computed nothing on a GPU and carry no share. A model nobody used this
month leaves its cost unallocated (reported as such, never spread silently).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelUsage:
    """One tenant's use of one model in the month (from usage_records)."""

    tenant: str
    model: str
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cache_hits: int
    computed_tokens: int
    """Tokens the model computed (prompt - cached + completion) over the answers it generated itself."""


def allocate(usage: Iterable[ModelUsage], model_costs: Mapping[str, float]) -> dict[str, Any]:
    """Per tenant: its models, their computed tokens, share and cost; plus per model what stays unallocated."""
    rows = list(usage)
    computed_by_model: dict[str, int] = {}
    for row in rows:
        computed_by_model[row.model] = computed_by_model.get(row.model, 0) + row.computed_tokens
    tenants: dict[str, dict[str, Any]] = {}
    for row in rows:
        tenant = tenants.setdefault(row.tenant, {"tenant": row.tenant, "models": {}, "cost": 0.0})
        total = computed_by_model[row.model]
        share = row.computed_tokens / total if total else 0.0
        cost = model_costs.get(row.model)
        entry = {"requests": row.requests, "prompt_tokens": row.prompt_tokens, "cached_tokens": row.cached_tokens,
                 "completion_tokens": row.completion_tokens, "cache_hits": row.cache_hits,
                 "computed_tokens": row.computed_tokens, "share": round(share, 6),
                 "cost": None if cost is None else round(cost * share, 2)}
        tenant["models"][row.model] = entry
        if entry["cost"] is not None:
            tenant["cost"] = round(tenant["cost"] + entry["cost"], 2)
    unallocated = {model: round(cost, 2) for model, cost in model_costs.items() if not computed_by_model.get(model)}
    unpriced = sorted(model for model in computed_by_model if model not in model_costs)
    return {"tenants": sorted(tenants.values(), key=lambda t: t["tenant"]), "unallocated": unallocated,
            "unpriced_models": unpriced, "model_costs": {m: round(c, 2) for m, c in model_costs.items()}}
