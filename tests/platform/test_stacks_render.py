"""Both stacks render completely: every component, wired through Azure-like ids."""

from __future__ import annotations

import pytest

from tests.platform.conftest import of_type, one

COMPONENTS = [
    "inferforge:index:Observability", "inferforge:index:Network", "inferforge:index:KeyVault",
    "inferforge:index:AksCluster", "inferforge:index:WorkloadIdentity", "inferforge:index:PostgresPgvector",
    "inferforge:index:ManagedRedis", "inferforge:index:FrontDoor", "inferforge:index:InferenceService",
    "inferforge:index:PgvectorExtension", "inferforge:index:ContainerRegistry",
    "inferforge:index:NvidiaDevicePlugin",
    "inferforge:index:PgvectorExtension", "inferforge:index:EgressRouteTable", "inferforge:index:EgressFirewall",
    "inferforge:index:Audit", "inferforge:index:ModelStore", "inferforge:index:AiGateway",
    "inferforge:index:ImageIntegrity",
]

AZURE_TYPES = [
    "azure-native:resources:ResourceGroup", "azure-native:network:VirtualNetwork", "azure-native:network:Subnet",
    "azure-native:network:NetworkSecurityGroup", "azure-native:privatedns:PrivateZone",
    "azure-native:privatedns:VirtualNetworkLink", "azure-native:network:PrivateEndpoint",
    "azure-native:network:PrivateDnsZoneGroup", "azure-native:keyvault:Vault", "azure-native:dbforpostgresql:Server",
    "azure-native:dbforpostgresql:Configuration", "azure-native:dbforpostgresql:Database",
    "azure-native:dbforpostgresql:AdministratorsMicrosoftEntra", "azure-native:redisenterprise:RedisEnterprise",
    "azure-native:redisenterprise:Database", "azure-native:redisenterprise:AccessPolicyAssignment",
    "azure-native:cdn:Profile", "azure-native:cdn:AFDEndpoint", "azure-native:cdn:AFDOriginGroup",
    "azure-native:cdn:AFDOrigin", "azure-native:cdn:Route", "azure-native:cdn:SecurityPolicy",
    "azure-native:frontdoor:Policy", "azure-native:containerservice:ManagedCluster",
    "azure-native:containerservice:AgentPool", "azure-native:operationalinsights:Workspace",
    "azure-native:monitor:DiagnosticSetting", "azure-native:managedidentity:UserAssignedIdentity",
    "azure-native:managedidentity:FederatedIdentityCredential", "azure-native:authorization:RoleAssignment",
    "azure-native:containerregistry:Registry", "azure-native:storage:StorageAccount",
    "azure-native:storage:BlobContainer",
]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_stack_renders_every_component_and_service(stack, request):
    resources = request.getfixturevalue(stack)
    types = {r.type for r in resources}
    assert set(COMPONENTS) <= types, set(COMPONENTS) - types
    assert set(AZURE_TYPES) <= types, set(AZURE_TYPES) - types


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_resource_but_the_group_and_provider_is_parented_by_a_component(stack, request):
    resources = request.getfixturevalue(stack)
    urns = {r.urn: r for r in resources}
    roots = [r for r in resources if r.parent_urn not in urns]
    assert {r.type for r in roots} <= {"azure-native:resources:ResourceGroup", "pulumi:providers:kubernetes",
                                       *COMPONENTS}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_resources_live_in_the_stack_resource_group(stack, request):
    resources = request.getfixturevalue(stack)
    group = one(resources, "azure-native:resources:ResourceGroup")
    assert group.inputs["resourceGroupName"] == f"rg-inferforge-{stack}-westeurope"
    with_group = [r for r in resources if r.custom and "resourceGroupName" in r.inputs and r is not group]
    assert with_group and {r.inputs["resourceGroupName"] for r in with_group} == {group.inputs["resourceGroupName"]}


def test_wiring_passes_azure_ids_between_components(prod):
    vault = one(prod, "azure-native:keyvault:Vault")
    endpoints = of_type(prod, "azure-native:network:PrivateEndpoint")
    targets = {e.inputs["privateLinkServiceConnections"][0]["privateLinkServiceId"] for e in endpoints}
    assert vault.id in targets
    assert vault.id.startswith("/subscriptions/") and "/providers/Microsoft.KeyVault/vaults/kv-inferforge-prod-" \
        in vault.id
    subnet_ids = {s.id for s in of_type(prod, "azure-native:network:Subnet")}
    assert {e.inputs["subnet"]["id"] for e in endpoints} <= subnet_ids


def test_gpu_pools_follow_config(dev, prod):
    dev_pool = one(dev, "azure-native:containerservice:AgentPool")
    assert (dev_pool.inputs["agentPoolName"], dev_pool.inputs["vmSize"]) == ("gpua100", "Standard_NC24ads_A100_v4")
    assert (dev_pool.inputs["minCount"], dev_pool.inputs["maxCount"]) == (0, 2)
    prod_pool = one(prod, "azure-native:containerservice:AgentPool")
    assert (prod_pool.inputs["minCount"], prod_pool.inputs["maxCount"]) == (1, 4)
    assert prod_pool.inputs["availabilityZones"] == ["1", "2", "3"]


def test_stack_config_overrides_change_the_rendered_stack():
    from inferforge.stacks.render import render_stack

    resources = render_stack("dev", {"aks": {"gpuPools": [
        {"name": "gpua", "vmSize": "Standard_NC24ads_A100_v4", "minCount": 0, "maxCount": 1},
        {"name": "gpuh", "vmSize": "Standard_NC40ads_H100_v5", "minCount": 0, "maxCount": 3}]},
        "inference": {"gpuPool": "gpuh"}})
    pools = {p.inputs["agentPoolName"]: p.inputs for p in of_type(resources, "azure-native:containerservice:AgentPool")}
    assert set(pools) == {"gpua", "gpuh"}
    assert pools["gpuh"]["vmSize"] == "Standard_NC40ads_H100_v5"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_inference_deployment_command_parses_with_the_server_cli(stack, request):
    """The Deployment's command line is accepted by the server's own argument parser."""
    from inference.serve import build_parser

    deployment = one(request.getfixturevalue(stack), "kubernetes:apps/v1:Deployment", "inference-deployment")
    container = deployment.inputs["spec"]["template"]["spec"]["containers"][0]
    command = container["command"] + container.get("args", [])
    assert command[:4] == ["python", "-m", "inference", "serve"]
    parsed = build_parser().parse_args(command[3:])
    tp_size = {"dev": 1, "prod": 2}[stack]
    assert parsed.tp_size == tp_size
    assert container["resources"]["limits"]["nvidia.com/gpu"] in (tp_size, str(tp_size))
    assert parsed.api_keys_keyvault_url.startswith("https://kv-inferforge-")
    assert parsed.api_keys_secret == "inference-api-keys"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_front_door_routes_only_the_api_and_probes_readiness_on_the_origin(stack, request):
    resources = request.getfixturevalue(stack)
    route = one(resources, "azure-native:cdn:Route")
    assert route.inputs["patternsToMatch"] == ["/v1/*"]  # /metrics, /health, /ready stay private
    # The probe goes to the origin directly (no route needed), on the server's unauthenticated /ready.
    probe = one(resources, "azure-native:cdn:AFDOriginGroup").inputs["healthProbeSettings"]
    assert probe["probePath"] == "/ready"


def test_served_embeddings_reach_the_server_command_and_parse():
    import copy

    from inferforge.stacks.render import render_stack

    from inference.serve import build_parser
    from tests.stack_overrides import WITH_WORKLOADS

    overrides = copy.deepcopy(WITH_WORKLOADS)
    overrides["inference"].update(embeddings="served", embeddingsPooling="mean", embeddingDimensions=768)
    deployment = one(render_stack("dev", overrides), "kubernetes:apps/v1:Deployment", "inference-deployment")
    container = deployment.inputs["spec"]["template"]["spec"]["containers"][0]
    parsed = build_parser().parse_args((container["command"] + container.get("args", []))[3:])
    assert (parsed.embeddings, parsed.embeddings_pooling) == ("served", "mean")


def test_tool_call_parser_reaches_the_server_command_and_parses():
    import copy

    from inferforge.stacks.render import render_stack

    from inference.serve import build_parser
    from tests.stack_overrides import WITH_WORKLOADS

    overrides = copy.deepcopy(WITH_WORKLOADS)
    overrides["inference"].update(toolCallParser="llama3_json")
    deployment = one(render_stack("dev", overrides), "kubernetes:apps/v1:Deployment", "inference-deployment")
    container = deployment.inputs["spec"]["template"]["spec"]["containers"][0]
    parsed = build_parser().parse_args((container["command"] + container.get("args", []))[3:])
    assert parsed.tool_call_parser == "llama3_json"


def test_embeddings_are_off_unless_configured(dev):
    from inference.serve import build_parser

    deployment = one(dev, "kubernetes:apps/v1:Deployment", "inference-deployment")
    container = deployment.inputs["spec"]["template"]["spec"]["containers"][0]
    parsed = build_parser().parse_args((container["command"] + container.get("args", []))[3:])
    assert (parsed.embeddings, parsed.embeddings_model_dir) == ("off", None)
