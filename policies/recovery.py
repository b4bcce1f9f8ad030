"""Disaster recovery (issue 22): the RPO and RTO of a regional outage, derived from what a stack renders.

The lost region is the primary's: the location of the PostgreSQL server that is not a replica (else of the first
AKS cluster). Everything else follows from resources, never from the stack config:

RPO (data written before the outage that is gone after it), per store in the lost region:
- PostgreSQL: a replica (createMode Replica) in another region -> its replication lag (asynchronous, an assumption:
  `replicaLagMinutes`, watch the `physical_replication_delay_in_seconds` metric); else geo-redundant backup ->
  60 min (geo-restore's documented RPO is "< 1 h"); else unbounded (backups stay in the lost region).
- Managed Redis (the gateway's counters): active geo-replication (a database whose geoReplication links another
  member) -> replication lag; else the counters are lost (reported, not counted in the RPO: they are rebuilt, see
  README "Disaster recovery": per-minute windows restart, monthly token counters restart from zero, revocation
  markers must be re-applied from PostgreSQL).

RTO (until requests are served again), the slowest of the paths that must all be back:
- Front Door: an enabled origin outside the lost region in the same origin group, and a health probe; the failover
  is `probeIntervalInSeconds x sampleSize` (Front Door decides an origin's health over the last sampleSize probes).
- Capacity there: a GPU pool in the surviving region with minCount >= 1 -> none to add; minCount 0 -> a GPU node
  start (`gpuNodeStartMinutes`) plus the model load (the inference Deployment's startupProbe budget).
- Images there: the registry is in another region, or replicated (containerregistry Replication) to it.
- Weights there: a model store account (the platform's Blob store) in the surviving region (Premium block blob
  accounts are LRS/ZRS only: there is no GZRS premium account, so each region needs its own copy).
- PostgreSQL: a replica is promoted by a person (`az postgres flexible-server replica promote`, never automatic):
  `operatorResponseMinutes` + `promoteMinutes`; geo-restore alone has no bound Azure states (it scales with size).

`plan` prints these for every stack; the `dr-objectives` policy fails when RPO >= rpoObjectiveMinutes or RTO >=
rtoObjectiveMinutes, naming the resource that sets the bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pulumi_policy import PolicyConfigSchema, ReportViolation, Severity, StackValidationArgs

from .common import as_list, as_number, lookup, same, short_type, stack_policy

SERVER = "azure-native:dbforpostgresql:Server"
VIRTUAL_ENDPOINT = "azure-native:dbforpostgresql:VirtualEndpoint"
REDIS = "azure-native:redisenterprise:RedisEnterprise"
REDIS_DATABASE = "azure-native:redisenterprise:Database"
CLUSTER = "azure-native:containerservice:ManagedCluster"
AGENT_POOL = "azure-native:containerservice:AgentPool"
REGISTRY = "azure-native:containerregistry:Registry"
REPLICATION = "azure-native:containerregistry:Replication"
STORAGE = "azure-native:storage:StorageAccount"
ORIGIN_GROUP = "azure-native:cdn:AFDOriginGroup"
ORIGIN = "azure-native:cdn:AFDOrigin"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"

# The assumptions, each a policy config property (policies/config/<stack>.json may override them).
DEFAULTS: dict[str, float] = {
    "rpoObjectiveMinutes": 60,
    "rtoObjectiveMinutes": 240,
    "replicaLagMinutes": 5,
    "operatorResponseMinutes": 30,
    "promoteMinutes": 10,
    "gpuNodeStartMinutes": 15,
}
GEO_RESTORE_RPO_MINUTES = 60.0


@dataclass(frozen=True)
class Res:
    """A resource as this module reads it: rendered (plan) or a CrossGuard PolicyResource (policy)."""

    type: str
    name: str
    urn: str | None
    props: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"{short_type(self.type)} '{self.name}'"


@dataclass(frozen=True)
class Bound:
    """One path's bound: minutes (None: unbounded), the resource that sets it, and why."""

    what: str
    minutes: float | None
    resource: Res | None
    why: str

    def text(self) -> str:
        where = f" (set by {self.resource.label})" if self.resource else ""
        return f"{self.what}: {fmt(self.minutes)}{where}: {self.why}"


@dataclass
class Recovery:
    region: str | None
    survivors: list[str]
    rpo: list[Bound] = field(default_factory=list)
    rto: list[Bound] = field(default_factory=list)
    lost_state: list[str] = field(default_factory=list)

    @staticmethod
    def _worst(bounds: list[Bound]) -> Bound | None:
        if not bounds:
            return None
        return max(bounds, key=lambda b: float("inf") if b.minutes is None else b.minutes)

    @property
    def rpo_bound(self) -> Bound | None:
        return self._worst(self.rpo)

    @property
    def rto_bound(self) -> Bound | None:
        return self._worst(self.rto)

    def to_dict(self) -> dict[str, Any]:
        def one(b: Bound | None) -> dict[str, Any] | None:
            return None if b is None else {"what": b.what, "minutes": b.minutes, "why": b.why,
                                           "resource": b.resource.label if b.resource else None}
        return {"lostRegion": self.region, "survivingRegions": self.survivors,
                "rpo": one(self.rpo_bound), "rto": one(self.rto_bound),
                "rpoPaths": [one(b) for b in self.rpo], "rtoPaths": [one(b) for b in self.rto],
                "lostState": self.lost_state}


def fmt(minutes: float | None) -> str:
    if minutes is None:
        return "unbounded"
    return f"{minutes / 60:g} h ({minutes:g} min)" if minutes >= 60 else f"{minutes:g} min"


def _loc(value: Any) -> str | None:
    return value.lower().replace(" ", "") if isinstance(value, str) and value else None


def assess(resources: Iterable[Res], settings: Mapping[str, float] | None = None) -> Recovery:
    """RPO and RTO of losing the primary region, from the resources alone."""
    s = {**DEFAULTS, **(settings or {})}
    rs = list(resources)
    of = lambda t: [r for r in rs if r.type == t]  # noqa: E731
    servers = of(SERVER)
    primaries = [r for r in servers if not same(r.props.get("createMode"), "Replica")]
    replicas = [r for r in servers if same(r.props.get("createMode"), "Replica")]
    clusters = of(CLUSTER)
    anchor = primaries[0] if primaries else (clusters[0] if clusters else None)
    lost = _loc(anchor.props.get("location")) if anchor else None
    located = [*servers, *clusters, *of(REGISTRY), *of(REPLICATION), *of(STORAGE), *of(REDIS)]
    regions = {_loc(r.props.get("location")) for r in located}
    regions |= {_loc(lookup(o.props, "sharedPrivateLinkResource.privateLinkLocation")) for o in of(ORIGIN)}
    survivors = sorted(r for r in regions if r and r not in ("global", lost))
    out = Recovery(region=lost, survivors=survivors)
    if lost is None:
        return out
    _rpo(out, s, primaries, replicas, of(REDIS), of(REDIS_DATABASE))
    _rto(out, s, rs, primaries, replicas, clusters)
    return out


def _rpo(out: Recovery, s: Mapping[str, float], primaries: list[Res], replicas: list[Res], redis: list[Res],
         redis_dbs: list[Res]) -> None:
    for server in primaries:
        if _loc(server.props.get("location")) != out.region:
            continue
        outside = [r for r in replicas if _loc(r.props.get("location")) not in (None, out.region)]
        if outside:
            out.rpo.append(Bound("PostgreSQL", s["replicaLagMinutes"], outside[0],
                                 f"asynchronous replica in {_loc(outside[0].props.get('location'))} (lag assumed "
                                 f"<= {s['replicaLagMinutes']:g} min)"))
        elif same(lookup(server.props, "backup.geoRedundantBackup"), "Enabled"):
            out.rpo.append(Bound("PostgreSQL", GEO_RESTORE_RPO_MINUTES, server,
                                 "geo-redundant backup only (geo-restore RPO < 1 h); no replica in another region"))
        else:
            out.rpo.append(Bound("PostgreSQL", None, server,
                                 "no replica and no geo-redundant backup: every copy is in the lost region"))
    geo = [d for d in redis_dbs if len(as_list(lookup(d.props, "geoReplication.linkedDatabases"))) >= 2]
    for cluster in redis:
        if _loc(cluster.props.get("location")) == out.region and not geo:
            out.lost_state.append(f"{cluster.label}: the gateway's counters (rate windows, concurrency leases, "
                                  "monthly token counters) and revocation markers; no active geo-replication")


def _rto(out: Recovery, s: Mapping[str, float], rs: list[Res], primaries: list[Res], replicas: list[Res],
         clusters: list[Res]) -> None:
    lost, survivors = out.region, set(out.survivors)
    groups = [r for r in rs if r.type == ORIGIN_GROUP]
    origins = [r for r in rs if r.type == ORIGIN]
    if not groups:
        anchor = clusters[0] if clusters else None
        out.rto.append(Bound("Front Door", None, anchor, "no Front Door origin group rendered: nothing routes "
                                                         "requests to another region"))
    for group in groups:
        members = [o for o in origins if o.props.get("originGroupName") == group.props.get("originGroupName")
                   and not same(o.props.get("enabledState"), "Disabled")]
        elsewhere = [o for o in members
                     if _loc(lookup(o.props, "sharedPrivateLinkResource.privateLinkLocation")) in survivors]
        interval = as_number(lookup(group.props, "healthProbeSettings.probeIntervalInSeconds"))
        samples = as_number(lookup(group.props, "loadBalancingSettings.sampleSize"))
        if not elsewhere:
            out.rto.append(Bound("Front Door", None, group, f"{len(members)} origin(s), none outside {lost}"))
        elif interval is None or samples is None:
            out.rto.append(Bound("Front Door", None, group, "no health probe: a dead origin is never taken out"))
        else:
            minutes = interval * samples / 60
            out.rto.append(Bound("Front Door", minutes, group, f"automatic failover: probe every {interval:g} s x "
                                                               f"sample size {samples:g}"))
    by_cluster = {c.props.get("resourceName"): _loc(c.props.get("location")) for c in clusters}
    gpu_pools = [p for p in rs if p.type == AGENT_POOL
                 and any("gpu" in str(t) for t in as_list(p.props.get("nodeTaints")))]
    standby = [p for p in gpu_pools if by_cluster.get(p.props.get("resourceName")) in survivors]
    warm = [p for p in standby if (as_number(p.props.get("minCount")) or 0) >= 1]
    if warm:
        out.rto.append(Bound("GPU capacity", 0, warm[0], f"minCount {as_number(warm[0].props.get('minCount')):g} "
                                                          "nodes already running in the surviving region"))
    elif standby:
        load = _model_load_minutes(rs)
        out.rto.append(Bound("GPU capacity", s["gpuNodeStartMinutes"] + load, standby[0],
                             f"minCount 0: a GPU node start ({s['gpuNodeStartMinutes']:g} min) plus the model "
                             f"load (startupProbe budget {load:g} min)"))
    else:
        anchor = gpu_pools[0] if gpu_pools else (clusters[0] if clusters else None)
        out.rto.append(Bound("GPU capacity", None, anchor, "no GPU pool outside the lost region"))
    registries = [r for r in rs if r.type == REGISTRY]
    replicated = {_loc(r.props.get("location")) for r in rs if r.type == REPLICATION}
    for registry in registries:
        home = _loc(registry.props.get("location"))
        if home == lost and not (replicated & survivors):
            out.rto.append(Bound("Images", None, registry, f"registry in {lost} with no replication to "
                                                           f"{', '.join(sorted(survivors)) or 'another region'}"))
    stores = [r for r in rs if r.type == STORAGE and same(r.props.get("kind"), "BlockBlobStorage")]
    if stores and not any(_loc(r.props.get("location")) in survivors for r in stores):
        out.rto.append(Bound("Model weights", None, stores[0], f"the only model store is in {lost}"))
    for server in primaries:
        if _loc(server.props.get("location")) != lost:
            continue
        outside = [r for r in replicas if _loc(r.props.get("location")) in survivors]
        if outside:
            minutes = s["operatorResponseMinutes"] + s["promoteMinutes"]
            out.rto.append(Bound("PostgreSQL", minutes, outside[0],
                                 f"manual promotion: {s['operatorResponseMinutes']:g} min to decide + "
                                 f"{s['promoteMinutes']:g} min to promote"))
        else:
            out.rto.append(Bound("PostgreSQL", None, server, "no replica: geo-restore (if geo-backup is on) takes "
                                                             "a time Azure does not bound"))


def _model_load_minutes(rs: list[Res]) -> float:
    budgets = []
    for d in rs:
        if d.type != DEPLOYMENT:
            continue
        for c in as_list(lookup(d.props, "spec.template.spec.containers")):
            probe = c.get("startupProbe") if isinstance(c, Mapping) else None
            if isinstance(probe, Mapping):
                budgets.append((as_number(probe.get("periodSeconds")) or 10)
                               * (as_number(probe.get("failureThreshold")) or 3) / 60)
    return max(budgets, default=30.0)


def _check(args: StackValidationArgs, report: ReportViolation) -> None:
    config = args.get_config()
    settings = {k: float(config.get(k, v)) for k, v in DEFAULTS.items()}
    result = assess((Res(r.resource_type, r.name, r.urn, r.props) for r in args.resources), settings)
    if result.region is None:
        return
    checks = (("RPO", result.rpo_bound, settings["rpoObjectiveMinutes"]),
              ("RTO", result.rto_bound, settings["rtoObjectiveMinutes"]))
    for label, bound, objective in checks:
        if bound is None or (bound.minutes is not None and bound.minutes < objective):
            continue
        report(f"{label} of losing {result.region} is {fmt(bound.minutes)}, not under the {fmt(objective)} "
               f"objective; {bound.text()}.", bound.resource.urn if bound.resource else None)


dr_objectives = stack_policy(
    name="dr-objectives",
    description="A regional outage loses less than the RPO objective (1 h) and is served again within the RTO "
    "objective (4 h), as derived from the rendered replicas, origins, probes, capacity, images and weights.",
    severity=Severity.HIGH,
    remediation="Add what the message names: a cross-region PostgreSQL replica, a second Private Link origin with a "
    "health probe, registry replication and a model store in the second region, GPU capacity there (README, "
    "Disaster recovery).",
    check=_check,
    config_schema=PolicyConfigSchema(properties={
        key: {"type": "number", "minimum": 0, "default": value,
              "description": f"{key} (policies/recovery.py)"} for key, value in DEFAULTS.items()}),
)

POLICIES = [dr_objectives]
