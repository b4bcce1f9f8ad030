"""Storage policies: the model store is private and its Blob volume reachable and readable; one broken property fails.

Compliant fixtures are the real program's output with workloads (tests/stack_overrides.py WITH_WORKLOADS): the
model store component, its private endpoint and DNS zone, the static PV and claim the inference service mounts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import CONFIG_DIR, break_property, of_type, run_policy, set_path

ACCOUNT = "azure-native:storage:StorageAccount"
PV = "kubernetes:core/v1:PersistentVolume"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
FIREWALL_RULES = "azure-native:network:FirewallPolicyRuleCollectionGroup"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"

Mutation = Callable[[list[Any]], list[Any]]
STORAGE_POLICIES = ["storage-public-network-disabled", "storage-private-endpoint", "k8s-blob-volume-reachable",
                    "k8s-blob-volume-identity-can-read"]


def _set(type_token: str, path: str, value: Any) -> Mutation:
    return lambda resources: break_property(resources, of_type(type_token), set_path(path, value))


def _drop(*names: str) -> Mutation:
    def mutation(resources: list[Any]) -> list[Any]:
        kept = [r for r in resources if r.name not in names]
        assert len(kept) == len(resources) - len(names), f"not all of {names} were found"
        return kept

    return mutation


def _role(guid: str) -> Callable[[dict[str, Any]], None]:
    def mutate(inputs: dict[str, Any]) -> None:
        inputs["roleDefinitionId"] = inputs["roleDefinitionId"].rsplit("/", 1)[0] + f"/{guid}"

    return mutate


# policy -> (case, mutation of the prod stack with workloads); test_whole_pack.py runs them, each once.
STORAGE_BROKEN: list[tuple[str, str, Mutation]] = [
    ("storage-public-network-disabled", "public network access on",
     _set(ACCOUNT, "publicNetworkAccess", "Enabled")),
    ("storage-public-network-disabled", "firewall allows by default",
     _set(ACCOUNT, "networkRuleSet.defaultAction", "Allow")),
    ("storage-public-network-disabled", "anonymous blob access allowed", _set(ACCOUNT, "allowBlobPublicAccess", True)),
    ("storage-private-endpoint", "no private endpoint", _drop("model-store-pe", "model-store-pe-dns")),
]
BLOB_VOLUME_BROKEN: list[tuple[str, str, Mutation]] = [
    ("k8s-blob-volume-reachable", "account made public", _set(ACCOUNT, "publicNetworkAccess", "Enabled")),
    ("k8s-blob-volume-reachable", "no blob private endpoint", _drop("model-store-pe", "model-store-pe-dns")),
    ("k8s-blob-volume-reachable", "blob zone not linked to the VNet", _drop("network-dns-blob-link")),
    ("k8s-blob-volume-reachable", "PV names an account outside the stack",
     _set(PV, "spec.csi.volumeAttributes.storageAccount", "stsomeoneelse")),
    ("k8s-blob-volume-reachable", "PV looks in another resource group",
     _set(PV, "spec.csi.volumeAttributes.resourceGroup", "rg-inferforge-prod-westeurope-aks-nodes")),
    ("k8s-blob-volume-identity-can-read", "no data role for the kubelet identity", _drop("model-store-blob-reader-0")),
    ("k8s-blob-volume-identity-can-read", "a role that cannot read blobs",
     lambda resources: break_property(resources, lambda r: r.name == "model-store-blob-reader-0", _role(ACR_PULL))),
]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_both_stacks_with_workloads_mount_the_model_store(stack: str, request) -> None:
    # What the storage breaks (run through the whole pack in test_whole_pack.py) start from.
    resources = request.getfixturevalue(f"{stack}_resources")
    assert [r.name for r in resources if r.type == PV] == ["inference-model-pv"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pytest.mark.parametrize("name", STORAGE_POLICIES)
def test_storage_policies_are_mandatory_in_dev_and_prod(name: str, stack: str) -> None:
    config = json.loads((CONFIG_DIR / f"{stack}.json").read_text())
    entry = config.get(name, config.get("all"))
    level = entry.get("enforcementLevel", config.get("all")) if isinstance(entry, dict) else entry
    assert level == "mandatory"


def test_a_volume_no_workload_mounts_is_not_judged(prod_resources, tmp_path) -> None:
    # The claim exists but nothing mounts it: a public account behind it cannot break a pod.
    unmounted = [r for r in prod_resources if r.type != DEPLOYMENT]
    public = break_property(unmounted, of_type(ACCOUNT), set_path("publicNetworkAccess", "Enabled"))
    assert run_policy("k8s-blob-volume-reachable", public, tmp_path) == []


@pytest.fixture(scope="module")
def dynamic_blob_resources() -> list[Any]:
    """prod with the dynamic azureblob-fuse-premium class, accepted by config because the FQDN is allow-listed."""
    from inferforge.stacks.render import render_stack

    from tests.stack_overrides import WITH_WORKLOADS

    overrides = {**WITH_WORKLOADS, "egress": {"allowedFqdns": ["*.blob.core.windows.net"]},
                 "inference": {**WITH_WORKLOADS["inference"],
                               "modelSource": {"kind": "pvc", "storageClass": "azureblob-fuse-premium"}}}
    return render_stack("prod", overrides)


def test_a_dynamic_blob_claim_passes_only_while_the_firewall_allows_public_blob(dynamic_blob_resources,
                                                                               tmp_path) -> None:
    claim = next(r for r in dynamic_blob_resources if r.type == PVC)
    assert claim.inputs["spec"]["storageClassName"] == "azureblob-fuse-premium"
    assert not [r for r in dynamic_blob_resources if r.type in (PV, ACCOUNT)]
    assert run_policy("k8s-blob-volume-reachable", dynamic_blob_resources, tmp_path) == []

    def without_blob_fqdn(inputs: dict[str, Any]) -> None:
        text = json.dumps(inputs).replace('"*.blob.core.windows.net", ', "").replace(', "*.blob.core.windows.net"', "")
        inputs.clear()
        inputs.update(json.loads(text.replace('"*.blob.core.windows.net"', '"example.com"')))

    blocked = break_property(dynamic_blob_resources, of_type(FIREWALL_RULES), without_blob_fqdn)
    violations = run_policy("k8s-blob-volume-reachable", blocked, tmp_path)
    assert [v.resource_name for v in violations] == ["inference-model-pvc"]
    assert "*.blob.core.windows.net" in violations[0].message
