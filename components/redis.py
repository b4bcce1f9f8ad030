"""Azure Managed Redis (Microsoft.Cache/redisEnterprise): TLS only, Entra auth, private endpoint.

Azure Cache for Redis (Microsoft.Cache/redis) is retiring and blocked for new customers; Managed
Redis is its replacement (CONVENTIONS §3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_random as random
from pulumi_azure_native import redisenterprise

from . import package
from .common import LOGS_ONLY, METRICS_ONLY, PublicNetworkAccess, diagnostic_settings, private_endpoint
from .limits import limited
from .naming import UNIQUE_SUFFIX_LEN

REDIS_TLS_PORT = 10000


@package.schema_args
@dataclass
class ManagedRedisArgs:
    """Arguments of `ManagedRedis`."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the cluster."""
    location: pulumi.Input[str]
    """Azure region."""
    name_prefix: str
    """CAF prefix (`redis-<workload>-<env>`); a random suffix makes the host name globally unique."""
    private_endpoint_subnet_id: pulumi.Input[str]
    """Subnet of the private endpoint."""
    private_dns_zone_id: pulumi.Input[str]
    """`privatelink.redis.azure.net` zone."""
    log_analytics_workspace_id: pulumi.Input[str]
    """Workspace for connection logs and metrics."""
    data_access_principal_ids: Sequence[pulumi.Input[str]] = ()
    """Entra object ids granted the `default` data access policy (the inference workload identity)."""
    sku_name: str = limited("Balanced_B0", pattern=r"^(Balanced|MemoryOptimized|ComputeOptimized|FlashOptimized)_"
                                                  r"[A-Z][0-9]+$")
    """Managed Redis SKU (Balanced_B0 is the smallest)."""
    high_availability: bool = True
    """Replicated shards with automatic failover; only a dev stack may turn it off to halve cost."""
    public_network_access: PublicNetworkAccess = PublicNetworkAccess.DISABLED
    """Disabled: reachable only through the private endpoint. The exposure policy blocks Enabled in prod."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


class ManagedRedis(pulumi.ComponentResource):
    """An Azure Managed Redis cluster with one database that accepts only TLS + Entra tokens."""

    cluster_id: pulumi.Output[str]
    """ARM id of the Managed Redis cluster."""
    host_name: pulumi.Output[str]
    """Host name clients connect to (resolves to the private endpoint)."""
    port: int
    """TLS port of the database (10000)."""

    def __init__(self, name: str, args: ManagedRedisArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(ManagedRedisArgs, args)
        super().__init__("inferforge:index:ManagedRedis", name, None,
                         package.aliased(opts, "inferforge:data:ManagedRedis"))
        suffix = random.RandomString(f"{name}-suffix", length=UNIQUE_SUFFIX_LEN, special=False, upper=False,
                                     numeric=True, opts=pulumi.ResourceOptions(parent=self))
        self.cluster = redisenterprise.RedisEnterprise(
            f"{name}-cluster",
            cluster_name=pulumi.Output.concat(args.name_prefix, "-", suffix.result),
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=redisenterprise.SkuArgs(name=args.sku_name),
            minimum_tls_version="1.2",
            high_availability="Enabled" if args.high_availability else "Disabled",
            public_network_access=args.public_network_access,
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.database = redisenterprise.Database(
            f"{name}-database",
            database_name="default",
            cluster_name=self.cluster.name,
            resource_group_name=args.resource_group_name,
            client_protocol="Encrypted",
            port=REDIS_TLS_PORT,
            # Keys are long-lived shared secrets; Entra tokens are short-lived and per identity.
            access_keys_authentication="Disabled",
            clustering_policy="EnterpriseCluster",
            eviction_policy="VolatileLRU",
            opts=pulumi.ResourceOptions(parent=self.cluster),
        )
        for index, principal_id in enumerate(args.data_access_principal_ids):
            redisenterprise.AccessPolicyAssignment(
                f"{name}-access-{index}",
                access_policy_assignment_name=f"inferforge{index}",
                access_policy_name="default",
                cluster_name=self.cluster.name,
                database_name=self.database.name,
                resource_group_name=args.resource_group_name,
                user=redisenterprise.AccessPolicyAssignmentPropertiesUserArgs(object_id=principal_id),
                opts=pulumi.ResourceOptions(parent=self.database),
            )
        private_endpoint(
            f"{name}-pe",
            resource_group_name=args.resource_group_name,
            location=args.location,
            subnet_id=args.private_endpoint_subnet_id,
            target_resource_id=self.cluster.id,
            group_id="redisEnterprise",
            private_dns_zone_id=args.private_dns_zone_id,
            tags=args.tags,
            parent=self,
        )
        diagnostic_settings(f"{name}-cluster", resource_id=self.cluster.id,
                            workspace_id=args.log_analytics_workspace_id, parent=self, categories=METRICS_ONLY)
        diagnostic_settings(f"{name}-database", resource_id=self.database.id,
                            workspace_id=args.log_analytics_workspace_id, parent=self, categories=LOGS_ONLY)

        self.host_name = self.cluster.host_name
        self.port = REDIS_TLS_PORT
        self.cluster_id = self.cluster.id
        self.register_outputs({"cluster_id": self.cluster_id, "host_name": self.host_name, "port": self.port})
