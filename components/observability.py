"""Observability: the stack's Log Analytics workspace, passed to every other component."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import operationalinsights

from . import package
from .limits import limited


@package.schema_args
@dataclass
class ObservabilityArgs:
    """Arguments of `Observability`."""

    resource_group_name: pulumi.Input[str]
    """Resource group that holds the workspace."""
    location: pulumi.Input[str]
    """Azure region of the workspace (same as the platform, so logs stay in-region)."""
    workspace_name: str
    """CAF name of the workspace (`log-<workload>-<env>`)."""
    retention_days: int = limited(30, ge=30, le=730)
    """Days logs are kept; 30 is the free tier's retention, prod raises it for investigations."""
    daily_quota_gb: float = limited(-1, ge=-1)
    """Daily ingestion cap in GB (-1 = no cap); a cap in dev keeps a noisy cluster from running up a bill."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


class Observability(pulumi.ComponentResource):
    """A Log Analytics workspace with local (shared-key) auth disabled: agents use Entra ID."""

    workspace_id: pulumi.Output[str]
    """ARM id of the Log Analytics workspace (every diagnostic setting sends here)."""
    customer_id: pulumi.Output[str]
    """Workspace (customer) id agents and queries address."""

    def __init__(self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(ObservabilityArgs, args)
        super().__init__("inferforge:index:Observability", name, None,
                         package.aliased(opts, "inferforge:observability:Observability"))
        self.workspace = operationalinsights.Workspace(
            f"{name}-workspace",
            workspace_name=args.workspace_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=operationalinsights.WorkspaceSkuArgs(name="PerGB2018"),
            retention_in_days=args.retention_days,
            workspace_capping=operationalinsights.WorkspaceCappingArgs(daily_quota_gb=args.daily_quota_gb),
            # Shared keys would let anything holding them write logs; Entra auth (AMA, AKS addon) only.
            features=operationalinsights.WorkspaceFeaturesArgs(disable_local_auth=True),
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.workspace_id = self.workspace.id
        self.customer_id = self.workspace.customer_id
        self.register_outputs({"workspace_id": self.workspace_id, "customer_id": self.customer_id})
