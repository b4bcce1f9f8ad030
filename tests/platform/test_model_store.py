"""The model store: weights in a private Blob container the nodes mount through its private endpoint.

The defect this closes: the default model source was a dynamically provisioned `azureblob-fuse-premium` claim,
whose storage account has a public endpoint the egress firewall denies, so `pulumi up` ended in pods that could
never mount their weights.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from inferforge.stacks.config import ConfigError
from inferforge.stacks.render import render_stack, validate_stack

from tests.platform.conftest import assert_private_endpoint_in_zone, of_type, one

ACCOUNT = "azure-native:storage:StorageAccount"
CONTAINER = "azure-native:storage:BlobContainer"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
RULES = "azure-native:network:FirewallPolicyRuleCollectionGroup"
PV = "kubernetes:core/v1:PersistentVolume"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
BLOB_ZONE = "/subscriptions/33333333-3333-3333-3333-333333333333/resourceGroups/rg-dns/providers/" \
            "Microsoft.Network/privateDnsZones/privatelink.blob.core.windows.net"
HUB_VNET = "/subscriptions/33333333-3333-3333-3333-333333333333/resourceGroups/rg-hub/providers/" \
           "Microsoft.Network/virtualNetworks/vnet-hub"
DYNAMIC = {"kind": "pvc", "storageClass": "azureblob-fuse-premium"}


def problems(overrides: dict[str, Any], stack: str = "dev") -> str:
    with pytest.raises(ConfigError) as caught:
        validate_stack(stack, overrides)
    return "\n".join(caught.value.problems)


def with_source(source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**extra, "inference": {"modelSource": source}}


# --- config ------------------------------------------------------------------------------------------


def test_the_model_store_is_the_default_source_in_both_shipped_stacks():
    for stack in ("dev", "prod"):
        cfg = validate_stack(stack)
        assert cfg.inference.model_source.kind == "modelStore" and cfg.uses_model_store
    assert validate_stack("dev").model_store.sku_name == "Premium_LRS"
    assert validate_stack("prod").model_store.sku_name == "Premium_ZRS"


def test_the_dynamic_blob_class_is_refused_behind_the_firewall_naming_both_keys():
    text = problems(with_source(DYNAMIC))
    assert "inferforge:inference.modelSource.storageClass:" in text
    assert "egress.allowedFqdns does not allow *.blob.core.windows.net" in text
    assert "allowed: inference.modelSource.kind modelStore" in text


def test_the_dynamic_files_class_is_refused_too():
    assert "*.file.core.windows.net" in problems(with_source({"kind": "pvc", "storageClass": "azurefile-csi-premium"}))


def test_the_dynamic_blob_class_is_accepted_once_its_fqdn_is_allow_listed():
    cfg = validate_stack("dev", with_source(DYNAMIC, egress={"allowedFqdns": ["*.blob.core.windows.net"]}))
    assert cfg.inference.model_source.storage_class == "azureblob-fuse-premium" and not cfg.uses_model_store


def test_the_dynamic_blob_class_is_refused_with_a_hub_whose_rules_this_stack_cannot_see():
    hub = {"firewallPrivateIp": "10.0.1.4", "firewallPublicIp": "198.51.100.7", "vnetId": HUB_VNET}
    text = problems(with_source(DYNAMIC, hub=hub, egress={"allowedFqdns": []}))
    assert "inferforge:inference.modelSource.storageClass:" in text and "hub is set" in text


def test_an_existing_claim_still_works_and_creates_no_store():
    cfg = validate_stack("dev", with_source({"kind": "pvc", "existingClaim": "weights-static"}))
    assert cfg.inference.model_source.existing_claim == "weights-static" and not cfg.uses_model_store


@pytest.mark.parametrize(("source", "fragment"), [
    ({"storageClass": "azureblob-fuse-premium"}, "inferforge:inference.modelSource.storageClass: applies to kind "
                                                 "'pvc' only, but kind is 'modelStore'"),
    ({"existingClaim": "weights"}, "inferforge:inference.modelSource.existingClaim: applies to kind 'pvc' only"),
    ({"kind": "pvc", "repoId": "Qwen/Qwen2.5-7B-Instruct"},
     "inferforge:inference.modelSource.repoId: applies to kind 'download' only"),
])
def test_keys_of_another_kind_are_refused_not_ignored(source: dict[str, Any], fragment: str):
    text = problems(with_source(source))
    assert fragment in text and "allowed:" in text


@pytest.mark.parametrize(("store", "key"), [
    ({"accountName": "St-Models"}, "inferforge:modelStore.accountName"),
    ({"containerName": "a--b"}, "inferforge:modelStore.containerName"),
    ({"skuName": "Standard_GRS"}, "inferforge:modelStore.skuName"),
])
def test_bad_model_store_settings_name_their_key(store: dict[str, Any], key: str):
    assert key in problems({"modelStore": store})


def test_a_hub_blob_zone_must_be_the_blob_zone():
    hub = {"firewallPrivateIp": "10.0.1.4", "firewallPublicIp": "198.51.100.7", "vnetId": HUB_VNET,
           "dnsServers": ["10.0.1.4"], "privateDnsZoneIds": {"blob": BLOB_ZONE.replace("blob.core", "file.core")}}
    assert "inferforge:hub.privateDnsZoneIds.blob: zone" in problems({"hub": hub, "egress": {"allowedFqdns": []}})


# --- the store -----------------------------------------------------------------------------------------


def test_the_account_is_private_keyless_and_tls_only(prod):
    account = one(prod, ACCOUNT).inputs
    assert account["accountName"] == "stinferforgeprod"
    assert account["kind"] == "BlockBlobStorage" and account["sku"] == {"name": "Premium_ZRS"}
    assert account["publicNetworkAccess"] == "Disabled"
    assert account["networkRuleSet"] == {"defaultAction": "Deny", "bypass": "None", "ipRules": [],
                                         "virtualNetworkRules": []}
    assert account["allowBlobPublicAccess"] is False and account["allowSharedKeyAccess"] is False
    assert account["enableHttpsTrafficOnly"] is True and account["minimumTlsVersion"] == "TLS1_2"
    assert one(prod, CONTAINER).inputs["publicAccess"] == "None"
    assert one(prod, CONTAINER).inputs["containerName"] == "models"


def test_the_account_is_reached_through_a_blob_private_endpoint_in_the_blob_zone(prod):
    assert_private_endpoint_in_zone(prod, one(prod, ACCOUNT), "model-store-pe", "blob",
                                    "privatelink.blob.core.windows.net")


def test_a_hub_blob_zone_is_used_instead_of_a_new_one():
    hub = {"firewallPrivateIp": "10.0.1.4", "firewallPublicIp": "198.51.100.7", "vnetId": HUB_VNET,
           "dnsServers": ["10.0.1.4"], "privateDnsZoneIds": {"blob": BLOB_ZONE}}
    resources = render_stack("dev", {"hub": hub, "egress": {"allowedFqdns": []}})
    zones = {z.inputs["privateZoneName"] for z in of_type(resources, "azure-native:privatedns:PrivateZone")}
    assert "privatelink.blob.core.windows.net" not in zones
    group = one(resources, "azure-native:network:PrivateDnsZoneGroup", "model-store-pe-dns")
    assert group.inputs["privateDnsZoneConfigs"][0]["privateDnsZoneId"] == BLOB_ZONE


def test_blob_logs_and_account_metrics_go_to_log_analytics(prod):
    account = one(prod, ACCOUNT)
    settings = {r.inputs["resourceUri"]: r.inputs for r in of_type(prod, "azure-native:monitor:DiagnosticSetting")}
    assert settings[account.id]["metrics"] and not settings[account.id].get("logs")
    assert settings[f"{account.id}/blobServices/default"]["logs"] == [{"categoryGroup": "allLogs", "enabled": True}]


def test_only_prod_locks_the_store(prod, dev):
    def locked(resources) -> bool:
        return any(r.inputs["scope"] == one(resources, ACCOUNT).id
                   for r in of_type(resources, "azure-native:authorization:ManagementLockByScope"))

    assert locked(prod) and not locked(dev)


def test_the_kubelet_identity_and_only_it_may_read_the_models_container(prod):
    cluster = one(prod, "azure-native:containerservice:ManagedCluster")
    container = one(prod, CONTAINER)
    data_roles = [r for r in of_type(prod, ROLE_ASSIGNMENT) if "/providers/Microsoft.Storage/" in r.inputs["scope"]]
    assert len(data_roles) == 1
    grant = data_roles[0]
    assert grant.inputs["roleDefinitionId"].endswith(STORAGE_BLOB_DATA_READER)
    assert grant.inputs["scope"] == container.id
    assert cluster.urn in grant.property_dependencies["principalId"]


def test_the_firewall_still_allows_no_storage_fqdn(prod):
    rules = str([r.inputs for r in of_type(prod, RULES)])
    assert "blob.core.windows.net" not in rules and "file.core.windows.net" not in rules


def test_the_first_phase_creates_the_store_so_weights_can_be_uploaded_before_workloads(prod_platform):
    assert one(prod_platform, ACCOUNT) and not of_type(prod_platform, PV)


# --- the volume ----------------------------------------------------------------------------------------


def test_the_inference_pod_mounts_a_static_read_only_blobfuse2_volume_with_the_kubelet_identity(prod):
    cluster = one(prod, "azure-native:containerservice:ManagedCluster")
    spec = one(prod, PV).inputs["spec"]
    assert spec["accessModes"] == ["ReadOnlyMany"] and spec["persistentVolumeReclaimPolicy"] == "Retain"
    assert spec["storageClassName"] == ""
    assert {"-o ro", "-o allow_other"} <= set(spec["mountOptions"])
    csi = spec["csi"]
    assert csi["driver"] == "blob.csi.azure.com" and csi["readOnly"] is True
    # The mock answers the kubelet identity's client id as a function of the cluster's id (stacks/mocks.py).
    kubelet_client_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{cluster.id}/kubelet-client"))
    assert csi["volumeAttributes"] == {
        "resourceGroup": "rg-inferforge-prod-westeurope", "storageAccount": "stinferforgeprod",
        "containerName": "models", "protocol": "fuse2", "AzureStorageAuthType": "MSI",
        "AzureStorageIdentityClientID": kubelet_client_id}
    assert "#" not in csi["volumeHandle"] and "/" not in csi["volumeHandle"]
    assert spec["claimRef"] == {"namespace": "inference", "name": "inference-model"}


def test_the_claim_binds_that_volume_and_the_server_reads_the_model_directory(prod):
    volume = one(prod, PV)
    claim = one(prod, PVC).inputs["spec"]
    assert claim["volumeName"] == volume.inputs["metadata"]["name"] and claim["storageClassName"] == ""
    assert claim["accessModes"] == ["ReadOnlyMany"]
    deployment = one(prod, DEPLOYMENT, "inference-deployment")
    pod = deployment.inputs["spec"]["template"]["spec"]
    model = next(v for v in pod["volumes"] if v["name"] == "model")
    assert model["persistentVolumeClaim"] == {"claimName": "inference-model", "readOnly": True}
    command = pod["containers"][0]["command"]
    assert command[command.index("--model-dir") + 1] == "/models/qwen2.5-32b-instruct"


def test_no_pod_starts_before_the_kubelet_identity_may_read_the_store(prod):
    grant = next(r for r in of_type(prod, ROLE_ASSIGNMENT) if r.inputs["roleDefinitionId"].endswith(
        STORAGE_BLOB_DATA_READER))
    component = next(r for r in prod if r.type == "inferforge:index:InferenceService")
    assert grant.urn in component.dependencies
