"""Cost: a cap on the stack's monthly estimate, computed from the resources' inputs and the shipped price table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import PolicyConfigSchema, ReportViolation, Severity, StackValidationArgs

from .common import stack_policy
from .costing import USAGE_DEFAULTS, ResourceView, estimate, load_prices

# Registered types that are no cloud resource of their own: this repository's components and the stack itself.
_NOT_CUSTOM_PREFIXES = ("inferforge:", "pulumi:pulumi:Stack")


def _views(args: StackValidationArgs) -> list[ResourceView]:
    return [ResourceView(r.resource_type, r.name, r.urn, r.parent.urn if r.parent is not None else None, r.props,
                         custom=not r.resource_type.startswith(_NOT_CUSTOM_PREFIXES))
            for r in args.resources]


def _cost_cap(args: StackValidationArgs, report: ReportViolation) -> None:
    config = args.get_config()
    cap = float(config.get("maxMonthlyUsd") or 0)
    if cap <= 0:  # no cap configured for this stack
        return
    usage: Mapping[str, Any] = config.get("usage") or {}
    est = estimate(_views(args), load_prices(), {k: float(v) for k, v in usage.items()})
    which = str(config.get("band") or "max")
    total = est.monthly_max if which == "max" else est.monthly_min
    if total > cap:
        top = sorted(est.resources, key=lambda r: -(r.monthly_max if which == "max" else r.monthly_min))[:3]
        biggest = ", ".join(f"{r.name} ${(r.monthly_max if which == 'max' else r.monthly_min):,.0f}" for r in top)
        unpriced = f"; {len(est.unpriced())} resource(s) unpriced, not counted" if est.unpriced() else ""
        report(f"the stack's monthly estimate ({which} of the band) is ${total:,.2f}, over the cap of ${cap:,.2f} "
               f"(largest: {biggest}{unpriced}).")


stack_monthly_cost_cap = stack_policy(
    name="stack-monthly-cost-cap",
    description="The stack's monthly cost estimate (list prices from policies/prices.json, autoscaling pools at "
    "their maximum) stays under the configured cap.",
    severity=Severity.MEDIUM,
    remediation="Lower node pool maxCount, SKUs or replicas, or raise maxMonthlyUsd in policies/config/<stack>.json "
    "with budget approval; `python -m stacks plan --stack <stack>` prints the estimate per resource.",
    check=_cost_cap,
    config_schema=PolicyConfigSchema(
        properties={
            "maxMonthlyUsd": {"type": "number", "minimum": 0, "default": 0,
                              "description": "Cap on the stack's monthly estimate in USD; 0: no cap."},
            "band": {"type": "string", "enum": ["min", "max"], "default": "max",
                     "description": "Which end of the autoscaling band is capped."},
            "usage": {"type": "object", "default": {},
                      "properties": {k: {"type": "number", "minimum": 0, "description": f"{text} ({unit})"}
                                     for k, (_, unit, text) in USAGE_DEFAULTS.items()},
                      "additionalProperties": False,
                      "description": "Usage the inputs cannot tell (requests, GB, operations); missing keys take "
                      "the documented defaults. Keep it equal to the stack's usage.<stack>.yaml."},
        }
    ),
)

POLICIES = [stack_monthly_cost_cap]
