"""The monthly cost estimate `plan` prints: the usage file, the estimate of rendered resources, text/Markdown, diffs.

The estimator itself is policies/costing.py (the cost-cap policy runs the same code under CrossGuard); this module
adds what only the offline command needs: the per-stack usage file (usage.<stack>.yaml next to Pulumi.<stack>.yaml,
validated like the stack config), the price table's freshness, and the Markdown for the job summary and the PR
comment, including the change against the base branch's plan.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from inferforge.policies.costing import (
    PRICES_PATH,
    STALE_AFTER_DAYS,
    USAGE_DEFAULTS,
    Estimate,
    PriceTable,
    ResourceView,
    estimate,
    load_prices,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .config import ConfigError, shown


def _usage_model() -> type[BaseModel]:
    fields: dict[str, Any] = {
        key: (float, Field(default, ge=0, description=f"{text} ({unit})"))
        for key, (default, unit, text) in USAGE_DEFAULTS.items()
    }
    return create_model("UsageFile", __config__=ConfigDict(extra="forbid", frozen=True), **fields)


UsageFile = _usage_model()


def usage_path(stack: str, root: Path) -> Path:
    return root / f"usage.{stack}.yaml"


def load_usage(path: Path) -> dict[str, float]:
    """The usage file's values over the defaults; a missing file means the defaults. Raises ConfigError naming keys."""
    if not path.is_file():
        return dict(UsageFile().model_dump())
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path.name} is not valid YAML: {exc}"]) from None
    if not isinstance(document, dict):
        raise ConfigError([f"{path.name}: the document is a {type(document).__name__}; allowed: a mapping of usage "
                           f"keys ({', '.join(USAGE_DEFAULTS)}) to numbers"])
    try:
        return dict(UsageFile(**document).model_dump())
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            value = document.get(error["loc"][0]) if error["loc"] else None
            if error["type"] == "extra_forbidden":
                problems.append(f"{path.name}: {key}: unknown usage key; allowed: {', '.join(USAGE_DEFAULTS)}")
            else:
                problems.append(f"{path.name}: {key}: {shown(value)} is not allowed ({error['msg']}); allowed: a "
                                f"number >= 0, {USAGE_DEFAULTS[key][2]} ({USAGE_DEFAULTS[key][1]})")
        raise ConfigError(problems) from None


def views(resources: Sequence[Any]) -> list[ResourceView]:
    """Rendered resources (stacks.render) or `plan --json` resource dicts, as the estimator reads them."""
    out = []
    for r in resources:
        if isinstance(r, Mapping):
            out.append(ResourceView(r["type"], r["name"], r["urn"], r.get("parent"), r.get("inputs") or {},
                                    bool(r.get("custom", True))))
        else:
            out.append(ResourceView(r.type, r.name, r.urn, r.parent_urn, r.inputs, r.custom))
    return out


def estimate_stack(resources: Sequence[Any], usage: Mapping[str, float], location: str = "westeurope",
                   table: PriceTable | None = None, today: date | None = None) -> Estimate:
    return estimate(views(resources), table or load_prices(PRICES_PATH), usage, today=today, region=location)


def money(value: float) -> str:
    return f"${value:,.2f}"


def band(lo: float, hi: float) -> str:
    return money(lo) if abs(hi - lo) < 0.005 else f"{money(lo)} - {money(hi)}"


def _notes(est: Estimate) -> list[str]:
    lines = []
    if est.unpriced():
        lines.append(f"Unpriced ({len(est.unpriced())}, not in the total): " + "; ".join(
            f"{r.name} ({r.type.split(':', 1)[-1]}): {r.reason}" for r in est.unpriced()))
    if est.stale_meters:
        lines.append(f"STALE: {len(est.stale_meters)} price(s) older than {STALE_AFTER_DAYS} days: "
                     + "; ".join(est.stale_meters) + " (python -m stacks prices refresh)")
    if est.estimated_meters:
        lines.append(f"{len(est.estimated_meters)} of the prices used are estimates, not the API's "
                     "(policies/prices.json says which and why)")
    lines.append("Usage-driven items use: " + ", ".join(f"{k}={v:,.0f}" if v == int(v) else f"{k}={v:g}"
                                                     for k, v in est.usage.items()))
    return lines


def format_text(est: Estimate, stack: str) -> str:
    lines = [f"Monthly cost estimate for '{stack}' ({est.currency}, list prices, min - max where pools autoscale):"]
    rows = [(r, i) for r in est.resources for i in r.items]
    width = min(78, max([len(f"{r.name}: {i.item}") + 4 for r, i in rows] + [40]))
    for component, (lo, hi) in est.by_component().items():
        members = [(r, i) for r, i in rows if r.component == component]
        if not members:
            continue
        lines.append(f"  {component:<{width + 4}} {band(lo, hi):>25}")
        for r, i in members:
            flag = (" [estimate]" if i.estimate else "") + (" [STALE]" if i.stale else "")
            lines.append(f"      {r.name + ': ' + i.item:<{width}} {band(i.monthly_min, i.monthly_max):>25}{flag}")
    lines.append(f"  {'Total per month':<{width + 4}} {band(est.monthly_min, est.monthly_max):>25}")
    free = sum(r.status == "free" for r in est.resources)
    lines.append(f"  {free} resources have no charge of their own (--json lists why)")
    lines += [f"  {n}" for n in _notes(est)]
    return "\n".join(lines)


def format_markdown(est: Estimate, stack: str, diff: Mapping[str, Any] | None = None) -> str:
    """The job summary's full table (per resource), with the change against the base branch when given."""
    lines = [f"### Monthly cost estimate: `{stack}`", "",
             f"**{band(est.monthly_min, est.monthly_max)}** per month ({est.currency}, list prices)"]
    if diff is not None:
        lines.append("")
        lines.append(diff_line(diff))
    lines += ["", "| Component | Resource | Item | Monthly |", "|---|---|---|---|"]
    for r in est.resources:
        for i in r.items:
            flags = (" (estimate)" if i.estimate else "") + (" **STALE**" if i.stale else "")
            lines.append(f"| {r.component} | {r.name} | {i.item} | {band(i.monthly_min, i.monthly_max)}{flags} |")
    for r in est.unpriced():
        lines.append(f"| {r.component} | {r.name} | **unpriced**: {r.reason} | - |")
    lines.append("")
    lines += [f"- {n}" for n in _notes(est)]
    return "\n".join(lines)


def diff(base: Estimate | None, head: Estimate) -> dict[str, Any]:
    """The change from the base branch's estimate, per resource (by URN) and in total."""
    if base is None:
        return {"base": None, "head": {"min": head.monthly_min, "max": head.monthly_max}, "changes": []}
    before = {r.urn: r for r in base.resources}
    after = {r.urn: r for r in head.resources}
    changes = []
    for urn in sorted(set(before) | set(after)):
        b, a = before.get(urn), after.get(urn)
        b_lo, b_hi = (b.monthly_min, b.monthly_max) if b else (0.0, 0.0)
        a_lo, a_hi = (a.monthly_min, a.monthly_max) if a else (0.0, 0.0)
        if abs(a_lo - b_lo) >= 0.005 or abs(a_hi - b_hi) >= 0.005:
            changes.append({"urn": urn, "name": (a or b).name, "change": "added" if not b else
                            "removed" if not a else "changed", "min": round(a_lo - b_lo, 2),
                            "max": round(a_hi - b_hi, 2)})
    return {"base": {"min": base.monthly_min, "max": base.monthly_max},
            "head": {"min": head.monthly_min, "max": head.monthly_max},
            "delta": {"min": round(head.monthly_min - base.monthly_min, 2),
                      "max": round(head.monthly_max - base.monthly_max, 2)},
            "changes": changes}


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "-") + money(abs(value))


def diff_line(d: Mapping[str, Any]) -> str:
    if d.get("base") is None:
        return "No base-branch estimate to compare with."
    delta = d["delta"]
    change = _signed(delta["min"]) if abs(delta["max"] - delta["min"]) < 0.005 else \
        f"{_signed(delta['min'])} (min) / {_signed(delta['max'])} (max)"
    return (f"Change against the base branch: **{change}** per month "
            f"({band(d['base']['min'], d['base']['max'])} -> {band(d['head']['min'], d['head']['max'])})")


def comment_markdown(est: Estimate, stack: str, d: Mapping[str, Any], findings: str | None) -> str:
    """The PR comment's section for one stack: policy findings, then the cost change (top changes only)."""
    lines = [f"## `{stack}`", ""]
    if findings:
        lines += [findings, ""]
    lines.append(f"**Cost**: {band(est.monthly_min, est.monthly_max)} per month. {diff_line(d)}")
    changes = d.get("changes") or []
    if changes:
        lines += ["", "| Resource | Change | Monthly change |", "|---|---|---|"]
        for c in sorted(changes, key=lambda c: -abs(c["max"]))[:10]:
            amount = _signed(c["min"]) if abs(c["max"] - c["min"]) < 0.005 else \
                f"{_signed(c['min'])} / {_signed(c['max'])}"
            lines.append(f"| {c['name']} | {c['change']} | {amount} |")
        if len(changes) > 10:
            lines.append(f"| ... {len(changes) - 10} more (job summary) | | |")
    if est.unpriced():
        lines.append(f"\n{len(est.unpriced())} resource(s) unpriced (see the job summary).")
    if est.stale_meters:
        lines.append(f"\n{len(est.stale_meters)} price(s) older than {STALE_AFTER_DAYS} days.")
    return "\n".join(lines)


def load_plan_json(path: Path) -> list[dict[str, Any]] | None:
    """The resources of a `plan --json` document (the base branch's), or None when there is none to compare."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    resources = document.get("resources") if isinstance(document, dict) else None
    return resources if isinstance(resources, list) else None
