"""Issue 22: region names, and the RPO/RTO of a regional outage derived from rendered resources.

The two-region shape is the prod stack (westeurope, with its images, registry replicated to northeurope) plus the
second region's pieces rendered by our own components: a Front Door whose origin group holds both regions' Private
Link origins, a PostgreSQL read replica in northeurope behind a virtual endpoint, a model store and a GPU pool there.
(The global/regional stamp split that would render these from stack files is not done yet; see README.)
Each test breaks one property and expects `dr-objectives` (or plan's numbers) to say so, with the number.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from inferforge.policies.offline import evaluate
from inferforge.policies.recovery import POLICIES, Res, assess
from inferforge.stacks.config import ConfigError
from inferforge.stacks.render import render_program, render_stack, validate_stack

from tests.stack_overrides import WITH_WORKLOADS

SUB = "/subscriptions/00000000-0000-0000-0000-000000000000"
RG_NEU = "rg-inferforge-prod-northeurope"
PLS_NEU = f"{SUB}/resourceGroups/{RG_NEU}-aks-nodes/providers/Microsoft.Network/privateLinkServices/pls-neu"
PLS_WEU = (f"{SUB}/resourceGroups/rg-inferforge-prod-westeurope-aks-nodes/providers/Microsoft.Network/"
           "privateLinkServices/pls-inferforge-prod-inference")
FRONT_DOOR = ("azure-native:cdn:AFDOriginGroup", "azure-native:cdn:AFDOrigin", "azure-native:cdn:Profile")


# --- region names --------------------------------------------------------------------------------------------

def test_a_misspelt_region_is_rejected_with_the_close_match() -> None:
    with pytest.raises(ConfigError) as exc:
        validate_stack("prod", {"location": "westeurop"})
    assert "inferforge:location: 'westeurop' is not an Azure region; did you mean 'westeurope'?" in str(exc.value)


def test_zones_and_geo_backup_must_exist_in_the_region() -> None:
    with pytest.raises(ConfigError) as exc:
        validate_stack("prod", {"location": "westus"})  # no availability zones
    text = str(exc.value)
    assert "inferforge:aks.systemZones: ['1', '2', '3'] names availability zones, but location westus has none" in text
    assert "inferforge:aks.gpuPools[0].zones" in text and "postgres.zoneRedundantHa" in text
    with pytest.raises(ConfigError, match="location italynorth has no paired region"):
        validate_stack("prod", {"location": "italynorth"})


def test_registry_replica_locations_are_regions_other_than_home() -> None:
    with pytest.raises(ConfigError, match=r"registry.replicaLocations\[0\]: 'northeurop' is not an Azure region; "
                                          "did you mean 'northeurope'"):
        validate_stack("prod", {"registry": {"replicaLocations": ["northeurop"]}})
    with pytest.raises(ConfigError, match="'westeurope' is the home region"):
        validate_stack("prod", {"registry": {"replicaLocations": ["westeurope"]}})


# --- the two-region shape --------------------------------------------------------------------------------------

def _second_region() -> None:
    from inferforge.components.aks import AksCluster, AksClusterArgs, GpuPoolArgs
    from inferforge.components.frontdoor import FrontDoor, FrontDoorArgs, FrontDoorOrigin
    from inferforge.components.model_store import ModelStore, ModelStoreArgs
    from inferforge.components.postgres import EntraAdmin, PostgresPgvector, PostgresPgvectorArgs

    subnet = f"{SUB}/resourceGroups/{RG_NEU}/providers/Microsoft.Network/virtualNetworks/vnet/subnets/"
    workspace = f"{SUB}/resourceGroups/{RG_NEU}/providers/Microsoft.OperationalInsights/workspaces/log"
    zone = f"{SUB}/resourceGroups/{RG_NEU}/providers/Microsoft.Network/privateDnsZones/"
    FrontDoor("frontdoor", FrontDoorArgs(
        resource_group_name="rg-inferforge-prod-global", profile_name="afd-inferforge-prod",
        endpoint_name="inferforge-prod", waf_policy_name="wafinferforgeprod", private_link_service_id=PLS_WEU,
        private_link_location="westeurope", origin_host_name="10.30.7.250", log_analytics_workspace_id=workspace,
        other_origins=[FrontDoorOrigin(private_link_service_id=PLS_NEU, private_link_location="northeurope",
                                       host_name="10.40.7.250", priority=2)],
        tags={"owner": "t", "cost-center": "c", "environment": "prod"}))
    PostgresPgvector("postgres-neu", PostgresPgvectorArgs(
        resource_group_name=RG_NEU, location="northeurope", name_prefix="psql-inferforge-prod-neu",
        tenant_id="t", delegated_subnet_id=subnet + "snet-postgres", private_dns_zone_id=zone + "pg",
        log_analytics_workspace_id=workspace, entra_admins=[EntraAdmin(object_id="o", principal_name="id-schema")],
        sku_name="Standard_D4ds_v5", sku_tier="GeneralPurpose",
        replica_of=f"{SUB}/resourceGroups/rg-inferforge-prod-westeurope/providers/Microsoft.DBforPostgreSQL/"
                   "flexibleServers/psql-inferforge-prod-ea04f",
        virtual_endpoint_name="psql-inferforge-prod", primary_server_name="psql-inferforge-prod-ea04f",
        primary_resource_group_name="rg-inferforge-prod-westeurope"))
    ModelStore("model-store-neu", ModelStoreArgs(
        resource_group_name=RG_NEU, location="northeurope", account_name="stinferforgeprodneu", subscription_id="s",
        private_endpoint_subnet_id=subnet + "snet-private-endpoints", private_dns_zone_id=zone + "blob",
        log_analytics_workspace_id=workspace))
    AksCluster("aks-neu", AksClusterArgs(
        resource_group_name=RG_NEU, location="northeurope", cluster_name="aks-inferforge-prod-neu",
        node_resource_group=f"{RG_NEU}-aks-nodes", tenant_id="t", node_subnet_id=subnet + "snet-aks",
        log_analytics_workspace_id=workspace, subscription_id="s",
        gpu_pools=[GpuPoolArgs(name="gpuh100", vm_size="Standard_NC80adis_H100_v5", min_count=1, max_count=4)]))


@pytest.fixture(scope="module")
def two_regions() -> list[Any]:
    primary = render_stack("prod", {**WITH_WORKLOADS, "registry": {"replicaLocations": ["northeurope"]}})
    second = render_program(_second_region, stack="prod-northeurope")
    # The one Front Door is the second render's (both origins in its group); the stack's own is dropped.
    return [r for r in primary if r.type not in FRONT_DOOR] + second


def _recovery(resources: list[Any]) -> Any:
    return assess(Res(r.type, r.name, r.urn, r.inputs) for r in resources)


def _dr(resources: list[Any], tmp_path: Path) -> list[str]:
    path = tmp_path / "dr.json"
    path.write_text(json.dumps({"dr-objectives": "mandatory"}))
    return [v.message for v in evaluate(resources, path, "prod", policies=POLICIES)]


def test_two_regions_show_the_shape_the_issue_asks_for(two_regions) -> None:
    origins = [r for r in two_regions if r.type == "azure-native:cdn:AFDOrigin"]
    assert sorted(o.inputs["sharedPrivateLinkResource"]["privateLinkLocation"] for o in origins) == [
        "northeurope", "westeurope"]
    assert {o.inputs["originGroupName"] for o in origins} == {"inference"}
    (group,) = [r for r in two_regions if r.type == "azure-native:cdn:AFDOriginGroup"]
    assert group.inputs["healthProbeSettings"]["probePath"] == "/ready"
    (replica,) = [r for r in two_regions if r.type == "azure-native:dbforpostgresql:Server"
                  and r.inputs["createMode"] == "Replica"]
    assert replica.inputs["location"] == "northeurope"
    assert "flexibleServers/" in replica.inputs["sourceServerResourceId"]
    (endpoint,) = [r for r in two_regions if r.type == "azure-native:dbforpostgresql:VirtualEndpoint"]
    assert endpoint.inputs["endpointType"] == "ReadWrite"
    (replication,) = [r for r in two_regions if r.type == "azure-native:containerregistry:Replication"]
    assert replication.inputs["location"] == "northeurope"


def test_two_regions_meet_the_objectives(two_regions, tmp_path) -> None:
    result = _recovery(two_regions)
    assert (result.region, result.survivors) == ("westeurope", ["northeurope"])
    assert result.rpo_bound.minutes == 5  # the replica's assumed lag
    assert result.rto_bound.minutes == 40  # 30 min to decide + 10 to promote; Front Door fails over in 2 min
    assert _dr(two_regions, tmp_path) == []


def _drop(resources: list[Any], match: Any) -> list[Any]:
    kept = [r for r in resources if not match(r)]
    assert len(kept) < len(resources)
    return kept


def test_a_missing_second_origin_is_caught(two_regions, tmp_path) -> None:
    broken = _drop(two_regions, lambda r: r.type == "azure-native:cdn:AFDOrigin"
                   and r.inputs["sharedPrivateLinkResource"]["privateLinkLocation"] == "northeurope")
    (message,) = _dr(broken, tmp_path)
    assert message.startswith("RTO of losing westeurope is unbounded, not under the 4 h (240 min) objective; "
                              "Front Door: unbounded (set by cdn:AFDOriginGroup 'frontdoor-origin-group'): "
                              "1 origin(s), none outside westeurope")


def test_a_dropped_replica_is_caught_with_the_geo_backup_bound(two_regions, tmp_path) -> None:
    broken = _drop(two_regions, lambda r: r.type.startswith("azure-native:dbforpostgresql:")
                   and r.name.startswith("postgres-neu"))
    messages = _dr(broken, tmp_path)
    assert any(m.startswith("RPO of losing westeurope is 1 h (60 min), not under the 1 h (60 min) objective; "
                            "PostgreSQL: 1 h (60 min) (set by dbforpostgresql:Server 'postgres-server'): geo-redundant "
                            "backup only") for m in messages)


def test_geo_backup_off_without_a_replica_is_unbounded(two_regions, tmp_path) -> None:
    broken = _drop(two_regions, lambda r: r.name.startswith("postgres-neu"))
    broken = [replace(r, inputs={**r.inputs, "backup": {**r.inputs["backup"], "geoRedundantBackup": "Disabled"}})
              if r.type == "azure-native:dbforpostgresql:Server" else r for r in broken]
    assert any(m.startswith("RPO of losing westeurope is unbounded") and "no geo-redundant backup" in m
               for m in _dr(broken, tmp_path))


def test_a_probe_too_slow_for_the_rto_is_caught_with_the_number(two_regions, tmp_path) -> None:
    def slow(r: Any) -> Any:
        if r.type != "azure-native:cdn:AFDOriginGroup":
            return r
        return replace(r, inputs={**r.inputs, "healthProbeSettings": {**r.inputs["healthProbeSettings"],
                                                                       "probeIntervalInSeconds": 255},
                                  "loadBalancingSettings": {**r.inputs["loadBalancingSettings"], "sampleSize": 60}})

    (message,) = _dr([slow(r) for r in two_regions], tmp_path)
    assert ("RTO of losing westeurope is 4.25 h (255 min), not under the 4 h (240 min) objective; Front Door: 4.25 h "
            "(255 min) (set by cdn:AFDOriginGroup 'frontdoor-origin-group'): automatic failover: probe every 255 s x "
            "sample size 60") in message


def test_a_cold_standby_adds_the_node_start_and_model_load(two_regions) -> None:
    cold = [replace(r, inputs={**r.inputs, "minCount": 0}) if r.type == "azure-native:containerservice:AgentPool"
            and r.inputs.get("resourceName") == "aks-inferforge-prod-neu" and "nodeTaints" in r.inputs else r
            for r in two_regions]
    capacity = [b for b in _recovery(cold).rto if b.what == "GPU capacity"]
    assert [b.minutes for b in capacity] == [15 + 30]  # startupProbe 10 s x 180 = 30 min


def test_the_shipped_stacks_print_their_numbers(dev_platform, prod_platform) -> None:
    dev, prod = _recovery(dev_platform), _recovery(prod_platform)
    assert dev.rpo_bound.minutes is None and "no replica and no geo-redundant backup" in dev.rpo_bound.why
    assert prod.rpo_bound.minutes == 60 and dev.rto_bound.minutes is None and prod.rto_bound.minutes is None
