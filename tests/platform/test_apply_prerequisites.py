"""What `pulumi up` needs beyond what mocks check: registry + AcrPull, device plugin, Blob CSI, LB/PLS
permissions, Front Door ordering, await timeouts, and the two-phase first deployment."""

from __future__ import annotations

from tests.platform.conftest import assert_private_endpoint_in_zone, of_type, one

ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"


def _containers(resource) -> list[dict]:
    spec = resource.inputs["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_registry_is_premium_private_and_without_shared_or_anonymous_access(prod):
    registry = one(prod, "azure-native:containerregistry:Registry").inputs
    assert registry["registryName"] == "crinferforgeprod"
    assert registry["sku"] == {"name": "Premium"}
    assert registry["adminUserEnabled"] is False and registry["anonymousPullEnabled"] is False
    assert registry["publicNetworkAccess"] == "Disabled"
    assert registry["networkRuleSet"]["defaultAction"] == "Deny"


def test_registry_private_endpoint_registers_in_the_azurecr_zone(prod):
    assert_private_endpoint_in_zone(prod, one(prod, "azure-native:containerregistry:Registry"), "registry-pe",
                                    "registry", "privatelink.azurecr.io")


def test_only_the_kubelet_and_the_signature_verifier_get_acr_pull_on_the_registry(prod):
    registry = one(prod, "azure-native:containerregistry:Registry")
    cluster = one(prod, "azure-native:containerservice:ManagedCluster")
    ratify = one(prod, "azure-native:managedidentity:UserAssignedIdentity", "ratify-identity-identity")
    pulls = [r for r in of_type(prod, "azure-native:authorization:RoleAssignment")
             if r.inputs["roleDefinitionId"].endswith(ACR_PULL)]
    assert {pull.inputs["scope"] for pull in pulls} == {registry.id}
    # The kubelet identity pulls images; Ratify's identity reads their signatures (issue 24), nobody else.
    assert sorted(pull.property_dependencies["principalId"] for pull in pulls) == sorted([[cluster.urn],
                                                                                            [ratify.urn]])


def test_every_workload_image_is_login_server_repository_and_digest(prod):
    workloads = [r for r in prod if r.type in ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:DaemonSet",
                                               "kubernetes:batch/v1:Job")]
    images = {c["image"] for w in workloads for c in _containers(w)}
    assert len(images) == 5  # server, gateway, device plugin, the pgvector Job's two
    for image in images:
        assert image.startswith("crinferforgeprod.azurecr.io/") and "@sha256:" in image, image


def test_device_plugin_runs_on_every_gpu_pool_and_tolerates_its_taint(dev):
    plugin = one(dev, "kubernetes:apps/v1:DaemonSet")
    spec = plugin.inputs["spec"]["template"]["spec"]
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in spec["tolerations"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "inferforge.io/pool", "operator": "In", "values": ["gpua100"]}]}]
    container = spec["containers"][0]
    assert container["image"].startswith("crinferforgedev.azurecr.io/mirror/nvidia/k8s-device-plugin@sha256:")
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["priorityClassName"] == "system-node-critical"


def test_the_inference_deployment_waits_for_the_device_plugin_and_acr_pull(prod):
    # depends_on a component waits for its children: the SDK records the DaemonSet itself. The
    # component's children are registered only after it, so they wait too.
    component = one(prod, "inferforge:index:InferenceService")
    daemon_set = one(prod, "kubernetes:apps/v1:DaemonSet")
    acr_pull = one(prod, "azure-native:authorization:RoleAssignment", "registry-acrpull-0")
    assert daemon_set.urn in component.dependencies
    assert acr_pull.urn in component.dependencies


def test_blob_csi_driver_is_on_for_the_blob_model_volume(prod):
    cluster = one(prod, "azure-native:containerservice:ManagedCluster")
    volume = one(prod, "kubernetes:core/v1:PersistentVolume")
    assert volume.inputs["spec"]["csi"]["driver"] == "blob.csi.azure.com"
    assert cluster.inputs["storageProfile"]["blobCSIDriver"]["enabled"] is True


def test_cluster_identity_is_network_contributor_on_the_lb_and_pls_subnets(prod):
    cluster = one(prod, "azure-native:containerservice:ManagedCluster")
    subnets = {s.inputs["subnetName"]: s.id for s in of_type(prod, "azure-native:network:Subnet")}
    grants = [r for r in of_type(prod, "azure-native:authorization:RoleAssignment")
              if r.inputs["roleDefinitionId"].endswith(NETWORK_CONTRIBUTOR)]
    assert {g.inputs["scope"] for g in grants} == {subnets["snet-aks"], subnets["snet-private-link"]}
    assert all(g.property_dependencies["principalId"] == [cluster.urn] for g in grants)
    # The Service behind the PLS is the gateway's: Front Door reaches the models only through it.
    service = one(prod, "kubernetes:core/v1:Service", "gateway-svc").inputs["metadata"]["annotations"]
    prefix = "service.beta.kubernetes.io/"
    assert service[f"{prefix}azure-load-balancer-internal-subnet"] == "snet-aks"
    assert service[f"{prefix}azure-pls-ip-configuration-subnet"] == "snet-private-link"


def test_front_door_origin_waits_for_the_service_that_makes_the_pls(prod):
    origin = one(prod, "azure-native:cdn:AFDOrigin")
    service = one(prod, "kubernetes:core/v1:Service", "gateway-svc")
    assert service.urn in origin.dependencies
    pls = service.inputs["metadata"]["annotations"]["service.beta.kubernetes.io/azure-pls-name"]
    assert origin.inputs["sharedPrivateLinkResource"]["privateLink"]["id"].endswith(f"/privateLinkServices/{pls}")


def test_deployment_await_timeouts_come_from_the_startup_budget(prod):
    deployment = one(prod, "kubernetes:apps/v1:Deployment", "inference-deployment")
    probe = deployment.inputs["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    budget = int(probe["periodSeconds"] * probe["failureThreshold"])
    assert budget == 1800  # inference.startupTimeoutSeconds default
    assert deployment.custom_timeouts == {"create": f"{900 + 600 + budget}s", "update": f"{900 + 2 * (600 + budget)}s"}
    assert deployment.inputs["metadata"]["annotations"]["pulumi.com/timeoutSeconds"] == str(900 + 600 + budget)
    for job in of_type(prod, "kubernetes:batch/v1:Job"):  # the pgvector Job and the gateway's migration
        assert job.custom_timeouts["create"] == f"{int(job.inputs['spec']['activeDeadlineSeconds']) + 300}s"


def test_first_phase_creates_the_platform_and_registry_but_no_workloads_or_front_door(prod_platform):
    types = {r.type for r in prod_platform}
    assert "azure-native:containerregistry:Registry" in types
    assert not any(t.startswith(("kubernetes:", "pulumi:providers:kubernetes")) for t in types)
    assert not any(t.startswith("azure-native:cdn:") for t in types)


def test_approval_command_names_the_node_resource_group_and_the_pls():
    from inferforge.stacks.program import private_endpoint_approval

    command = private_endpoint_approval("rg-inferforge-prod-westeurope-aks-nodes", "pls-inferforge-prod-inference")
    assert "az network private-link-service show -g rg-inferforge-prod-westeurope-aks-nodes " \
        "-n pls-inferforge-prod-inference" in command
    assert "privateLinkServiceConnectionState.status=='Pending'" in command
    assert "az network private-endpoint-connection approve --id" in command


def test_device_plugin_pods_get_no_network_at_all(dev):
    (deny,) = [r for r in dev if r.type == "kubernetes:networking.k8s.io/v1:NetworkPolicy"
               and r.name == "gpu-device-plugin-deny-all"]
    spec = deny.inputs["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in spec and "egress" not in spec
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "nvidia-device-plugin"


def test_registry_is_zone_redundant(dev, prod):
    for resources in (dev, prod):
        (registry,) = [r for r in resources if r.type == "azure-native:containerregistry:Registry"]
        assert registry.inputs["zoneRedundancy"] == "Enabled"
