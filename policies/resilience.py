"""Resilience (prod): zone redundancy, geo backups, Redis HA, zonal system pool, diagnostics."""

from __future__ import annotations

from pulumi_policy import (
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    Severity,
    StackValidationArgs,
)

from .common import (
    as_list,
    config_int,
    config_list,
    references,
    require_value,
    resource_policy,
    resources_of,
    same,
    short_type,
    stack_policy,
)

POSTGRES = "azure-native:dbforpostgresql:Server"
REDIS = "azure-native:redisenterprise:RedisEnterprise"
AKS = "azure-native:containerservice:ManagedCluster"
AGENT_POOL = "azure-native:containerservice:AgentPool"
DIAGNOSTIC_SETTING = "azure-native:monitor:DiagnosticSetting"

# Resource types of this platform that emit resource logs or platform metrics to Azure Monitor.
DEFAULT_DIAGNOSTIC_TYPES = [
    "azure-native:keyvault:Vault",
    POSTGRES,
    REDIS,
    AKS,
    "azure-native:cdn:Profile",
    "azure-native:network:NetworkSecurityGroup",
    "azure-native:network:VirtualNetwork",
    "azure-native:redisenterprise:Database",
    "azure-native:containerregistry:Registry",
    "azure-native:storage:StorageAccount",
]





def _system_pool_zones(args: ResourceValidationArgs, report: ReportViolation) -> None:
    minimum = config_int(args.get_config(), "minZones")
    if args.resource_type == AKS:
        pools = [p for p in as_list(args.props.get("agentPoolProfiles")) if same(p.get("mode"), "System")]
        labelled = [(f"system pool '{p.get('name')}'", p) for p in pools]
    else:
        labelled = (
            [(f"system pool '{args.name}'", args.props)] if same(args.props.get("mode"), "System") else []
        )
    for label, pool in labelled:
        zones = as_list(pool.get("availabilityZones"))
        if len(zones) < minimum:
            report(
                f"{label} spans {len(zones)} availability zone(s) {zones}; at least {minimum} are required."
            )


def _diagnostic_settings(args: StackValidationArgs, report: ReportViolation) -> None:
    supported = set(config_list(args.get_config(), "resourceTypes"))
    settings = resources_of(args.resources, DIAGNOSTIC_SETTING)
    for resource in args.resources:
        if resource.resource_type not in supported:
            continue
        if not any(references(setting, "resourceUri", resource) for setting in settings):
            report(
                f"{short_type(resource.resource_type)} '{resource.name}' has no diagnostic setting whose "
                "resourceUri is its id.",
                resource.urn,
            )


postgres_zone_redundant_ha = resource_policy(
    name="postgres-zone-redundant-ha",
    description="PostgreSQL flexible servers run zone-redundant high availability.",
    severity=Severity.HIGH,
    remediation="Set highAvailability.mode='ZoneRedundant' (General Purpose or Memory Optimized tier).",
    resource_types=[POSTGRES],
    check=require_value("highAvailability.mode", "ZoneRedundant", "standby in another zone"),
)

postgres_geo_redundant_backup = resource_policy(
    name="postgres-geo-redundant-backup",
    description="PostgreSQL flexible servers keep geo-redundant backups.",
    severity=Severity.MEDIUM,
    remediation="Set backup.geoRedundantBackup='Enabled' (only settable when the server is created).",
    resource_types=[POSTGRES],
    check=require_value("backup.geoRedundantBackup", "Enabled"),
)

redis_high_availability = resource_policy(
    name="redis-high-availability",
    description="Azure Managed Redis clusters have high availability enabled.",
    severity=Severity.HIGH,
    remediation="Set highAvailability='Enabled' on the redisenterprise cluster.",
    resource_types=[REDIS],
    check=require_value("highAvailability", "Enabled", "replicated shards"),
)

aks_system_pool_zones = resource_policy(
    name="aks-system-pool-zones",
    description="The AKS system node pool spans several availability zones.",
    severity=Severity.HIGH,
    remediation="Set availabilityZones (e.g. ['1','2','3']) on the system pool; zones are fixed at "
    "pool creation.",
    resource_types=[AKS, AGENT_POOL],
    check=_system_pool_zones,
    config_schema=PolicyConfigSchema(
        properties={
            "minZones": {
                "type": "integer",
                "minimum": 1,
                "default": 3,
                "description": "Fewest availability zones the system pool may span.",
            }
        }
    ),
)

monitor_diagnostic_settings = stack_policy(
    name="monitor-diagnostic-settings",
    description="Every resource of a type that supports Azure Monitor diagnostic settings has one "
    "(resourceUri = the resource's id) sending its logs and metrics to Log Analytics.",
    severity=Severity.MEDIUM,
    remediation="Attach a monitor.DiagnosticSetting through the shared diagnostics helper, with "
    "resource_uri=<resource>.id and the Log Analytics workspace id.",
    check=_diagnostic_settings,
    config_schema=PolicyConfigSchema(
        properties={
            "resourceTypes": {
                "type": "array",
                "items": {"type": "string"},
                "default": DEFAULT_DIAGNOSTIC_TYPES,
                "description": "Pulumi type tokens whose resources must have a diagnostic setting.",
            }
        }
    ),
)

POLICIES = [
    postgres_zone_redundant_ha,
    postgres_geo_redundant_backup,
    redis_high_availability,
    aks_system_pool_zones,
    monitor_diagnostic_settings,
]
