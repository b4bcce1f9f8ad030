"""Monthly cost estimate of a stack from its resources' inputs and the shipped price table (policies/prices.json).

Pure and self-contained (no pydantic, no other package of this repository), because two callers need it: the
offline `plan` (stacks/cost.py: per resource, per component and per stack, for the terminal, JSON and the PR) and
the `stack-monthly-cost-cap` policy, which CrossGuard runs from this folder alone with nothing but each resource's
inputs. Inputs reach it either as plain dicts or as pulumi_policy's read-only proxies (Mapping/Sequence, numbers as
floats), so only those protocols are used.

Every custom resource ends up in one of three states: priced (one or more cost items), free (a reason: no Azure
meter of its own, or billed on another resource), or unpriced (a reason), so nothing is silently zero. Autoscaling
node pools are a band: the minimum is the pool's minCount, raised to the nodes the inference replicas scheduled
there need; the maximum its maxCount. Usage-driven items (requests, GB, operations) come from a usage mapping whose
keys and defaults are USAGE_DEFAULTS.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

PRICES_PATH = Path(__file__).resolve().parent / "prices.json"
HOURS_PER_MONTH = 730.0  # Azure's pricing calculator month
DAYS_PER_MONTH = HOURS_PER_MONTH / 24
STALE_AFTER_DAYS = 90

# Usage the resources' inputs cannot tell: key -> (default, unit, what it is). usage.<stack>.yaml overrides them.
USAGE_DEFAULTS: dict[str, tuple[float, str, str]] = {
    "frontDoorRequestsPerMonth": (10_000_000, "requests", "requests through Front Door per month"),
    "frontDoorEgressGb": (100, "GB", "GB per month from Front Door's edge to clients"),
    "firewallGbProcessed": (100, "GB", "GB per month through the egress firewall (image pulls, package mirrors)"),
    "privateEndpointGbPerEndpoint": (10, "GB", "GB per month through each private endpoint (in + out)"),
    "logAnalyticsGbPerDay": (2, "GB", "GB per day ingested into Log Analytics (capped by the workspace's daily quota)"),
    "keyVaultOperationsPerMonth": (100_000, "operations", "Key Vault operations per month"),
    "blobStorageGb": (100, "GB", "GB stored in each storage account (the model store: the model weights)"),
    "postgresBackupGbOverFree": (0, "GB", "PostgreSQL backup storage beyond the free 100% of provisioned storage"),
}

try:  # under CrossGuard an input unknown during preview raises this when read
    from pulumi_policy.proxy import UnknownValueError as _Unknown
except ImportError:  # pragma: no cover - the estimator without the policy SDK
    class _Unknown(Exception):  # type: ignore[no-redef]
        pass


@dataclass(frozen=True)
class PriceRow:
    """One row of the table, in the Azure Retail Prices API's field names plus where it came from."""

    serviceName: str
    armSkuName: str
    armRegionName: str
    meterName: str
    unitOfMeasure: str
    retailPrice: float
    currencyCode: str
    priceDate: str
    source: str
    estimate: bool
    note: str = ""
    productName: str | None = None
    effectiveStartDate: str | None = None
    gpus: int | None = None
    sizeGiB: int | None = None

    @property
    def key(self) -> str:
        return f"{self.serviceName} | {self.armSkuName} | {self.meterName} | {self.armRegionName}"

    def per_unit_month(self) -> tuple[float, str]:
        """(price per billed unit per month, unit): hours and days become a month, '10K' stays per 10,000."""
        unit = self.unitOfMeasure.strip()
        if unit == "1 Hour":
            return self.retailPrice * HOURS_PER_MONTH, "month"
        if unit == "1/Day":
            return self.retailPrice * DAYS_PER_MONTH, "month"
        if unit in ("1/Month", "1 GB/Month", "1 GB", "10K", "1M"):
            return self.retailPrice, {"1/Month": "month", "1 GB/Month": "GB", "1 GB": "GB", "10K": "10K",
                                      "1M": "1M"}[unit]
        raise ValueError(f"price row {self.key}: unknown unitOfMeasure {unit!r}")

    def age_days(self, today: date) -> int:
        return (today - date.fromisoformat(self.priceDate[:10])).days


class PriceTable:
    """The rows, looked up by service, SKU and meter in a region (or 'Global' for the global services)."""

    def __init__(self, rows: Iterable[PriceRow], currency: str = "USD") -> None:
        self.rows = list(rows)
        self.currency = currency
        self._index = {(r.serviceName, r.armSkuName.lower(), r.meterName, r.armRegionName.lower()): r
                       for r in self.rows}

    def find(self, service: str, sku: str, meter: str, region: str) -> PriceRow | None:
        for where in (region.lower(), "global"):
            row = self._index.get((service, sku.lower(), meter, where))
            if row:
                return row
        return None

    def vm(self, sku: str, region: str) -> PriceRow | None:
        return self.find("Virtual Machines", sku, sku.removeprefix("Standard_").replace("_", " "), region)


def load_prices(path: str | Path = PRICES_PATH) -> PriceTable:
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    names = set(PriceRow.__dataclass_fields__)
    return PriceTable([PriceRow(**{k: v for k, v in row.items() if k in names}) for row in document["rows"]],
                      document.get("currency", "USD"))


@dataclass
class CostItem:
    """One billed quantity of a resource: a meter times a quantity band, per month."""

    item: str
    meter: str | None
    quantity_min: float
    quantity_max: float
    unit: str
    monthly_min: float
    monthly_max: float
    usage_key: str | None = None
    estimate: bool = False
    stale: bool = False


@dataclass
class ResourceCost:
    urn: str
    name: str
    type: str
    component: str
    status: str  # priced | free | unpriced
    reason: str = ""
    items: list[CostItem] = field(default_factory=list)

    @property
    def monthly_min(self) -> float:
        return sum(i.monthly_min for i in self.items)

    @property
    def monthly_max(self) -> float:
        return sum(i.monthly_max for i in self.items)


@dataclass
class Estimate:
    currency: str
    resources: list[ResourceCost]
    usage: dict[str, float]
    stale_meters: list[str]
    estimated_meters: list[str]

    @property
    def monthly_min(self) -> float:
        return round(sum(r.monthly_min for r in self.resources), 2)

    @property
    def monthly_max(self) -> float:
        return round(sum(r.monthly_max for r in self.resources), 2)

    def by_component(self) -> dict[str, tuple[float, float]]:
        out: dict[str, tuple[float, float]] = {}
        for r in self.resources:
            lo, hi = out.get(r.component, (0.0, 0.0))
            out[r.component] = (lo + r.monthly_min, hi + r.monthly_max)
        return {k: (round(lo, 2), round(hi, 2)) for k, (lo, hi) in sorted(out.items())}

    def unpriced(self) -> list[ResourceCost]:
        return [r for r in self.resources if r.status == "unpriced"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "monthly": {"min": self.monthly_min, "max": self.monthly_max},
            "byComponent": {k: {"min": lo, "max": hi} for k, (lo, hi) in self.by_component().items()},
            "resources": [{**{k: v for k, v in asdict(r).items() if k != "items"},
                           "monthly": {"min": round(r.monthly_min, 2), "max": round(r.monthly_max, 2)},
                           "items": [asdict(i) for i in r.items]} for r in self.resources],
            "unpriced": [r.urn for r in self.unpriced()],
            "staleMeters": self.stale_meters,
            "estimatedMeters": self.estimated_meters,
            "usage": self.usage,
        }


@dataclass(frozen=True)
class ResourceView:
    """What the estimator reads of a resource: works for stacks.render's RenderedResource and a PolicyResource."""

    type: str
    name: str
    urn: str
    parent_urn: str | None
    props: Mapping[str, Any]
    custom: bool = True


# Types with no meter of their own; the reason says where their cost lands, if anywhere.
FREE: dict[str, str] = {
    "azure-native:resources:ResourceGroup": "no charge",
    "azure-native:network:VirtualNetwork": "no charge (traffic inside the VNet is free)",
    "azure-native:network:Subnet": "no charge",
    "azure-native:network:NetworkSecurityGroup": "no charge",
    "azure-native:network:RouteTable": "no charge",
    "azure-native:network:Route": "no charge",
    "azure-native:network:PrivateDnsZoneGroup": "no charge (the zone and the endpoint are priced)",
    "azure-native:network:FirewallPolicy": "no charge for a policy used by one firewall",
    "azure-native:network:FirewallPolicyRuleCollectionGroup": "part of the firewall policy",
    "azure-native:privatedns:VirtualNetworkLink": "no charge for a registration-less link",
    "azure-native:authorization:RoleAssignment": "no charge",
    "azure-native:authorization:ManagementLockByScope": "no charge",
    "azure-native:managedidentity:UserAssignedIdentity": "no charge",
    "azure-native:managedidentity:FederatedIdentityCredential": "no charge",
    "azure-native:dbforpostgresql:Configuration": "part of the server",
    "azure-native:dbforpostgresql:Database": "part of the server",
    "azure-native:dbforpostgresql:AdministratorsMicrosoftEntra": "part of the server",
    "azure-native:keyvault:Secret": "operations are priced on the vault",
    "azure-native:redisenterprise:Database": "part of the cluster",
    "azure-native:redisenterprise:AccessPolicyAssignment": "part of the cluster",
    "azure-native:storage:BlobContainer": "capacity is priced on the storage account",
    "azure-native:monitor:DiagnosticSetting": "ingestion is priced on the Log Analytics workspace",
    "azure-native:monitor:SubscriptionDiagnosticSetting": "ingestion is priced on the Log Analytics workspace",
    "azure-native:monitor:ActionGroup": "email notifications: the first 1,000 a month are free",
    "azure-native:cdn:AFDEndpoint": "part of the Front Door profile",
    "azure-native:cdn:AFDOrigin": "part of the Front Door profile",
    "azure-native:cdn:AFDOriginGroup": "part of the Front Door profile",
    "azure-native:cdn:Route": "part of the Front Door profile",
    "azure-native:cdn:SecurityPolicy": "part of the Front Door profile (the WAF policy is priced)",
}
FREE_PREFIXES: dict[str, str] = {
    "random:": "no cloud resource",
    "pulumi:providers:": "no cloud resource",
    "kubernetes:": "runs on the cluster's nodes (priced on the node pools)",
}
# Kubernetes objects that create Azure resources of their own; the table has no meter for them yet.
UNPRICED_KUBERNETES = {
    "kubernetes:core/v1:Service": ("a Service of type LoadBalancer makes AKS add Standard Load Balancer rules and, "
                                   "with a Private Link Service, PLS data processing; neither is in the price table"),
}


def _get(obj: Any, path: str, default: Any = None) -> Any:
    current = obj
    for key in path.split("."):
        if not isinstance(current, Mapping) or key not in current:
            return default
        current = current[key]
    return current


def _num(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str | bytes) else []


def _component(resource: ResourceView) -> str:
    return resource.parent_urn.rsplit("::", 1)[-1] if resource.parent_urn else "(stack)"


class _Pricer:
    def __init__(self, table: PriceTable, usage: Mapping[str, float], today: date) -> None:
        self.table, self.usage, self.today = table, usage, today
        self.stale: set[str] = set()
        self.estimated: set[str] = set()

    def item(self, label: str, row: PriceRow | None, qmin: float, qmax: float | None = None,
             usage_key: str | None = None) -> CostItem | str:
        """A cost item, or the reason it cannot be priced (no row)."""
        if row is None:
            return f"no price for {label}"
        qmax = qmin if qmax is None else qmax
        per, unit = row.per_unit_month()
        divisor = {"10K": 10_000.0, "1M": 1_000_000.0}.get(unit, 1.0)
        stale = row.age_days(self.today) > STALE_AFTER_DAYS
        if stale:
            self.stale.add(row.key)
        if row.estimate:
            self.estimated.add(row.key)
        return CostItem(label, row.key, qmin, qmax, "units" if unit in ("month", "10K", "1M") else unit,
                        round(per * qmin / divisor, 4), round(per * qmax / divisor, 4), usage_key, row.estimate, stale)


def _location(props: Mapping[str, Any], default: str) -> str:
    value = props.get("location")
    return value.replace(" ", "").lower() if isinstance(value, str) else default


def _gpu_requests_by_pool(resources: Sequence[ResourceView]) -> dict[str, float]:
    """GPUs the stack's Deployments/StatefulSets request per node pool (by the inferforge.io/pool affinity)."""
    wanted: dict[str, float] = {}
    for r in resources:
        if r.type not in ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet"):
            continue
        spec = _get(r.props, "spec.template.spec")
        if not isinstance(spec, Mapping):
            continue
        gpus = sum(_gpu_quantity(_get(c, "resources.limits")) for c in _list(spec.get("containers")))
        if not gpus:
            continue
        pools = [v for term in _list(_get(spec, "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                                            ".nodeSelectorTerms"))
                 for expr in _list(_get(term, "matchExpressions")) if _get(expr, "key") == "inferforge.io/pool"
                 for v in _list(_get(expr, "values"))]
        selector = _get(spec, "nodeSelector")
        if isinstance(selector, Mapping) and isinstance(selector.get("inferforge.io/pool"), str):
            pools.append(selector["inferforge.io/pool"])
        replicas = _num(_get(r.props, "spec.replicas"), 1.0)
        for pool in pools[:1]:
            wanted[pool] = wanted.get(pool, 0.0) + replicas * gpus
    return wanted


def _gpu_quantity(limits: Any) -> float:
    if not isinstance(limits, Mapping):
        return 0.0
    value = limits.get("nvidia.com/gpu")
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def _pool_items(p: _Pricer, label: str, pool: Mapping[str, Any], region: str, needed_gpus: float
                ) -> list[CostItem | str]:
    size = pool.get("vmSize")
    if not isinstance(size, str):
        return [f"{label}: no vmSize"]
    row = p.table.vm(size, region)
    count = _num(pool.get("count"), 1.0)
    if pool.get("enableAutoScaling") is True:
        lo, hi = _num(pool.get("minCount"), count), _num(pool.get("maxCount"), count)
    else:
        lo = hi = count
    note = ""
    if needed_gpus and row is not None and row.gpus:
        nodes = math.ceil(needed_gpus / row.gpus)
        if nodes > lo:
            note = f", at least {min(nodes, hi):g} for {needed_gpus:g} GPUs the inference replicas request"
            lo = min(float(nodes), hi)
    items: list[CostItem | str] = [p.item(f"{label} nodes {size} x {lo:g}-{hi:g}{note}", row, lo, hi)]
    if pool.get("osDiskType") == "Ephemeral":
        items.append(CostItem(f"{label} OS disk: ephemeral (on the VM's local disk, no charge)", None, lo, hi,
                              "disks", 0.0, 0.0))
    else:
        gib = _num(pool.get("osDiskSizeGB"), 128.0)
        disks = sorted((r for r in p.table.rows if r.sizeGiB and r.serviceName == "Storage"), key=lambda r: r.sizeGiB)
        disk = next((r for r in disks if r.sizeGiB >= gib), None)
        items.append(p.item(f"{label} managed OS disk {gib:g} GiB", disk, lo, hi))
    return items


def _price(p: _Pricer, r: ResourceView, region: str, gpus_by_pool: Mapping[str, float]) -> list[CostItem | str]:
    props, t, u = r.props, r.type, p.usage
    loc = _location(props, region)
    if t == "azure-native:containerservice:ManagedCluster":
        tier = _get(props, "sku.tier") or "Free"
        items = [p.item(f"cluster management ({tier} tier)",
                        p.table.find("Azure Kubernetes Service", str(tier), {"Free": "Free Cluster Management",
                                                                              "Standard": "Standard Uptime SLA",
                                                                              "Premium": "Long Term Support"}.get(
                                                                                  str(tier), ""), loc), 1)]
        for pool in _list(props.get("agentPoolProfiles")):
            if isinstance(pool, Mapping):
                name = str(pool.get("name"))
                items += _pool_items(p, f"pool '{name}'", pool, loc, gpus_by_pool.get(name, 0.0))
        return items
    if t == "azure-native:containerservice:AgentPool":
        name = str(props.get("agentPoolName") or r.name)
        return _pool_items(p, f"pool '{name}'", props, loc, gpus_by_pool.get(name, 0.0))
    if t == "azure-native:dbforpostgresql:Server":
        sku = str(_get(props, "sku.name"))
        ha = str(_get(props, "highAvailability.mode", "Disabled")).lower() in ("zoneredundant", "samezone")
        copies = 2.0 if ha else 1.0
        role = "read replica " if str(props.get("createMode", "")).lower() == "replica" else ""
        compute = p.table.find("Azure Database for PostgreSQL", sku,
                               next((r.meterName for r in p.table.rows if r.serviceName ==
                                     "Azure Database for PostgreSQL" and r.armSkuName == sku), ""), loc)
        gb = _num(_get(props, "storage.storageSizeGB"), 32.0)
        geo = str(_get(props, "backup.geoRedundantBackup", "Disabled")).lower() == "enabled"
        backup = "Backup GRS" if geo else "Backup LRS"
        return [
            p.item(f"{role}compute {sku}" + (" x 2 (HA standby)" if ha else ""), compute, copies),
            p.item(f"{role}storage {gb:g} GB" + (" x 2 (HA standby)" if ha else ""),
                   p.table.find("Azure Database for PostgreSQL", "Storage", "Storage Data Stored", loc), gb * copies),
            p.item(f"backup storage beyond the free allowance ({'geo-redundant' if geo else 'local'})",
                   p.table.find("Azure Database for PostgreSQL", backup,
                                f"{backup.replace('Backup ', 'Backup Storage ')} Data Stored", loc),
                   u["postgresBackupGbOverFree"], usage_key="postgresBackupGbOverFree"),
        ]
    if t == "azure-native:redisenterprise:RedisEnterprise":
        sku = str(_get(props, "sku.name"))
        ha = str(props.get("highAvailability", "Enabled")).lower() != "disabled"
        return [p.item(f"{sku}" + ("" if ha else " without HA (one node: half the HA rate)"),
                       p.table.find("Redis Cache", sku, f"{sku.replace('_', ' ')} Instance", loc), 1.0 if ha else 0.5)]
    if t == "azure-native:cdn:Profile":
        sku = str(_get(props, "sku.name"))
        if sku != "Premium_AzureFrontDoor":
            return [f"Front Door SKU {sku} is not in the price table"]
        find = lambda meter: p.table.find("Azure Front Door Service", sku, meter, "global")  # noqa: E731
        return [p.item("Premium base fee", find("Premium Base Fees"), 1),
                p.item("requests", find("Premium Requests"), u["frontDoorRequestsPerMonth"],
                       usage_key="frontDoorRequestsPerMonth"),
                p.item("data transfer to clients", find("Premium Data Transfer Out"), u["frontDoorEgressGb"],
                       usage_key="frontDoorEgressGb")]
    if t == "azure-native:frontdoor:Policy":
        sku = str(_get(props, "sku.name"))
        return [p.item("WAF policy (managed rules)",
                       p.table.find("Azure Front Door Service", sku, "Premium WAF Policy", "global"), 1)]
    if t == "azure-native:network:AzureFirewall":
        tier = str(_get(props, "sku.tier", "Standard"))
        return [p.item(f"{tier} deployment", p.table.find("Azure Firewall", tier, f"{tier} Deployment", loc), 1),
                p.item("data processed", p.table.find("Azure Firewall", tier, f"{tier} Data Processed", loc),
                       u["firewallGbProcessed"], usage_key="firewallGbProcessed")]
    if t == "azure-native:network:PublicIPAddress":
        sku = str(_get(props, "sku.name", "Standard"))
        return [p.item(f"{sku} static IPv4", p.table.find("Virtual Network", sku, f"{sku} IPv4 Static Public IP",
                                                          loc), 1)]
    if t == "azure-native:network:PrivateEndpoint":
        return [p.item("endpoint", p.table.find("Virtual Network", "Private Endpoint", "Standard Private Endpoint",
                                                loc), 1),
                p.item("data processed", p.table.find("Virtual Network", "Private Endpoint",
                                                      "Standard Data Processed - Ingress", loc),
                       u["privateEndpointGbPerEndpoint"], usage_key="privateEndpointGbPerEndpoint")]
    if t == "azure-native:privatedns:PrivateZone":
        return [p.item("hosted zone", p.table.find("Azure DNS", "Private", "Private Zone", "global"), 1)]
    if t == "azure-native:containerregistry:Registry":
        sku = str(_get(props, "sku.name"))
        return [p.item(f"{sku} registry", p.table.find("Container Registry", sku, f"{sku} Registry Unit", "global"),
                       1)]
    if t == "azure-native:containerregistry:Replication":
        return [p.item(f"geo-replication to {loc}",
                       p.table.find("Container Registry", "Premium", "Premium Geo Replication", "global"), 1)]
    if t == "azure-native:operationalinsights:Workspace":
        quota = _num(_get(props, "workspaceCapping.dailyQuotaGb"), -1.0)
        per_day = u["logAnalyticsGbPerDay"] if quota <= 0 else min(u["logAnalyticsGbPerDay"], quota)
        retention = _num(props.get("retentionInDays"), 30.0)
        capped = " (capped by the daily quota)" if 0 < quota < u["logAnalyticsGbPerDay"] else ""
        return [p.item(f"ingestion {per_day:g} GB/day{capped}",
                       p.table.find("Log Analytics", "Analytics Logs", "Analytics Logs Data Ingestion", loc),
                       per_day * DAYS_PER_MONTH, usage_key="logAnalyticsGbPerDay"),
                p.item(f"retention beyond 31 days ({retention:g} days)",
                       p.table.find("Log Analytics", "Analytics Logs", "Analytics Logs Data Retention", loc),
                       per_day * max(0.0, retention - 31), usage_key="logAnalyticsGbPerDay")]
    if t == "azure-native:monitor:ScheduledQueryRule":
        return [p.item("log alert rule", p.table.find("Azure Monitor", "Alerts", "Log Alert Rule 5 Minute Frequency",
                                                      "global"), 1)]
    if t == "azure-native:monitor:MetricAlert":
        return [p.item("metric alert (one time series)",
                       p.table.find("Azure Monitor", "Alerts", "Metric Alert Monitored Time Series", "global"), 1)]
    if t == "azure-native:storage:StorageAccount":
        sku = str(_get(props, "sku.name"))
        return [p.item(f"{sku} capacity", p.table.find("Storage", sku, f"{sku.replace('_', ' ')} Data Stored", loc),
                       u["blobStorageGb"], usage_key="blobStorageGb")]
    if t == "azure-native:keyvault:Vault":
        sku = str(_get(props, "properties.sku.name", "standard")).capitalize()
        return [p.item("operations", p.table.find("Key Vault", sku, "Operations", "global"),
                       u["keyVaultOperationsPerMonth"], usage_key="keyVaultOperationsPerMonth")]
    return ["no pricing rule for this resource type"]


def estimate(resources: Iterable[ResourceView], table: PriceTable, usage: Mapping[str, float] | None = None,
             today: date | None = None, region: str = "westeurope") -> Estimate:
    """The stack's monthly estimate: one ResourceCost per custom resource, usage merged over USAGE_DEFAULTS."""
    merged = {k: float(v[0]) for k, v in USAGE_DEFAULTS.items()}
    merged.update({k: float(v) for k, v in (usage or {}).items()})
    pricer = _Pricer(table, merged, today or date.today())
    views = [r for r in resources if r.custom]
    gpus = _gpu_requests_by_pool(views)
    out: list[ResourceCost] = []
    for r in views:
        cost = ResourceCost(r.urn, r.name, r.type, _component(r), "priced")
        if r.type in FREE or any(r.type.startswith(pre) for pre in FREE_PREFIXES):
            reason = FREE.get(r.type) or next(v for pre, v in FREE_PREFIXES.items() if r.type.startswith(pre))
            if r.type in UNPRICED_KUBERNETES and _get(r.props, "spec.type") == "LoadBalancer":
                cost.status, cost.reason = "unpriced", UNPRICED_KUBERNETES[r.type]
            else:
                cost.status, cost.reason = "free", reason
            out.append(cost)
            continue
        try:
            results = _price(pricer, r, region, gpus)
        except _Unknown:
            results = ["an input it is priced by is unknown until apply"]
        problems = [x for x in results if isinstance(x, str)]
        cost.items = [x for x in results if isinstance(x, CostItem)]
        if problems:
            cost.status, cost.reason = "unpriced", "; ".join(problems)
        out.append(cost)
    return Estimate(table.currency, out, merged, sorted(pricer.stale), sorted(pricer.estimated))
