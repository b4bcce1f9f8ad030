"""Each component's secure defaults, asserted on the inputs it registers (what `pulumi up` would send)."""

from __future__ import annotations

import pytest
from inferforge.components.aks import GPU_TAINT, SYSTEM_TAINT
from inferforge.stacks.render import render_stack

from tests.platform.conftest import of_type, one
from tests.stack_overrides import WITH_WORKLOADS

REQUIRED_TAGS = {"owner", "cost-center", "environment"}


# --- Key Vault ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_key_vault_is_rbac_only_purge_protected_and_private(stack, request):
    resources = request.getfixturevalue(stack)
    props = one(resources, "azure-native:keyvault:Vault").inputs["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["accessPolicies"] == []
    assert props["enablePurgeProtection"] is True
    assert props["enableSoftDelete"] is True and props["softDeleteRetentionInDays"] == 90
    assert props["publicNetworkAccess"] == "Disabled"
    assert props["networkAcls"]["defaultAction"] == "Deny" and props["networkAcls"]["bypass"] == "None"


def test_key_vault_has_a_private_endpoint_registered_in_its_dns_zone(prod):
    vault = one(prod, "azure-native:keyvault:Vault")
    endpoint = next(e for e in of_type(prod, "azure-native:network:PrivateEndpoint")
                    if e.inputs["privateLinkServiceConnections"][0]["privateLinkServiceId"] == vault.id)
    assert endpoint.inputs["privateLinkServiceConnections"][0]["groupIds"] == ["vault"]
    zone_group = next(g for g in of_type(prod, "azure-native:network:PrivateDnsZoneGroup")
                      if g.parent_urn == endpoint.urn)
    zone_id = zone_group.inputs["privateDnsZoneConfigs"][0]["privateDnsZoneId"]
    assert zone_id.endswith("/privateDnsZones/privatelink.vaultcore.azure.net")


def test_key_vault_name_is_caf_with_a_stable_suffix_within_24_chars(prod):
    name = one(prod, "azure-native:keyvault:Vault").inputs["vaultName"]
    assert name.startswith("kv-inferforge-prod-") and len(name) <= 24


# --- PostgreSQL + pgvector ---------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_postgres_is_private_entra_enabled_and_allows_vector(stack, request):
    resources = request.getfixturevalue(stack)
    server = one(resources, "azure-native:dbforpostgresql:Server").inputs
    assert server["network"]["publicNetworkAccess"] == "Disabled"
    assert server["network"]["delegatedSubnetResourceId"].endswith("/subnets/snet-postgres")
    assert server["authConfig"]["activeDirectoryAuth"] == "Enabled"
    configs = {c.inputs["configurationName"]: c.inputs["value"]
               for c in of_type(resources, "azure-native:dbforpostgresql:Configuration")}
    assert configs == {"azure.extensions": "VECTOR", "require_secure_transport": "ON",
                       "ssl_min_protocol_version": "TLSv1.2"}
    assert one(resources, "azure-native:dbforpostgresql:Database").inputs["databaseName"] == "app"


def test_dev_postgres_is_passwordless_like_prod_and_only_smaller(dev):
    server = one(dev, "azure-native:dbforpostgresql:Server").inputs
    assert server["authConfig"] == {"activeDirectoryAuth": "Enabled", "passwordAuth": "Disabled",
                                    "tenantId": server["authConfig"]["tenantId"]}
    assert "administratorLoginPassword" not in server
    assert [s.inputs["secretName"] for s in of_type(dev, "azure-native:keyvault:Secret")] == ["gateway-key-pepper"]
    assert server["highAvailability"]["mode"] == "Disabled"  # what differs: redundancy and size


def test_prod_postgres_is_zone_redundant_geo_backed_up_and_passwordless(prod):
    server = one(prod, "azure-native:dbforpostgresql:Server").inputs
    assert server["highAvailability"]["mode"] == "ZoneRedundant"
    assert server["backup"] == {"backupRetentionDays": 35, "geoRedundantBackup": "Enabled"}
    assert server["authConfig"]["passwordAuth"] == "Disabled"
    assert "administratorLoginPassword" not in server
    assert [s.inputs["secretName"] for s in of_type(prod, "azure-native:keyvault:Secret")] == ["gateway-key-pepper"]


def test_postgres_password_when_turned_on_is_generated_and_stored_only_in_key_vault():
    dev = render_stack("dev", {**WITH_WORKLOADS, "postgres": {"passwordAuth": True}})
    server = one(dev, "azure-native:dbforpostgresql:Server").inputs
    assert server["backup"] == {"backupRetentionDays": 7, "geoRedundantBackup": "Disabled"}
    assert server["authConfig"]["passwordAuth"] == "Enabled"
    password = one(dev, "random:index/randomPassword:RandomPassword", "postgres-admin-password")
    assert password.inputs["length"] == 32
    secret = one(dev, "azure-native:keyvault:Secret", "postgres-admin-password-secret")
    vault = one(dev, "azure-native:keyvault:Vault")
    assert secret.inputs["vaultName"] == vault.inputs["vaultName"]
    assert secret.inputs["properties"]["value"] == server["administratorLoginPassword"]


IDENTITY = "azure-native:managedidentity:UserAssignedIdentity"
SERVING_IDENTITY, SCHEMA_IDENTITY = "inference-identity-identity", "schema-identity-identity"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_postgres_entra_admin_is_the_schema_job_identity_not_the_serving_one(stack, request):
    resources = request.getfixturevalue(stack)
    admin = one(resources, "azure-native:dbforpostgresql:AdministratorsMicrosoftEntra").inputs
    schema = one(resources, IDENTITY, SCHEMA_IDENTITY)
    assert admin["principalName"] == schema.inputs["resourceName"] == f"id-inferforge-{stack}-pgschema"
    assert admin["principalType"] == "ServicePrincipal"
    assert admin["principalName"] != one(resources, IDENTITY, SERVING_IDENTITY).inputs["resourceName"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_each_identity_is_federated_to_exactly_its_own_service_account(stack, request):
    resources = request.getfixturevalue(stack)
    by_identity: dict[str, set[str]] = {}
    for credential in of_type(resources, "azure-native:managedidentity:FederatedIdentityCredential"):
        by_identity.setdefault(credential.inputs["resourceName"], set()).add(credential.inputs["subject"])
    assert by_identity == {f"id-inferforge-{stack}-inference": {"system:serviceaccount:inference:inference"},
                           f"id-inferforge-{stack}-gateway": {"system:serviceaccount:gateway:gateway"},
                           # The admin: the pgvector Job, and the gateway's migration (and admin) pods.
                           f"id-inferforge-{stack}-pgschema": {"system:serviceaccount:inference:pgvector-init",
                                                                "system:serviceaccount:gateway:gateway-migrate"},
                           # Ratify, which reads image signatures from the registry (issue 24).
                           f"id-inferforge-{stack}-ratify": {"system:serviceaccount:gatekeeper-system:ratify-admin"}}


def test_schema_job_runs_as_the_admin_and_creates_the_servers_role(prod):
    job = one(prod, "kubernetes:batch/v1:Job", "pgvector-job").inputs
    (psql,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in psql["env"]}
    assert env["PGUSER"] == "id-inferforge-prod-pgschema"
    assert env["APP_ROLE"] == "id-inferforge-prod-inference"
    serving_principal = next(r for r in of_type(prod, "azure-native:redisenterprise:AccessPolicyAssignment"))
    assert env["APP_OBJECT_ID"] == serving_principal.inputs["user"]["objectId"]  # the serving identity's object id
    assert "pgaadauth_create_principal_with_oid" in psql["command"][-1]
    accounts = {s.inputs["metadata"]["name"]: s.inputs["metadata"]["annotations"]["azure.workload.identity/client-id"]
                for s in of_type(prod, "kubernetes:core/v1:ServiceAccount")}
    assert accounts["pgvector-init"] != accounts["inference"]  # the server pods never get the admin identity


def test_pgvector_extension_is_created_in_cluster_by_a_job(prod):
    job = one(prod, "kubernetes:batch/v1:Job", "pgvector-job").inputs
    script = " ".join(" ".join(c.get("command", []) + c.get("args", []))
                      for c in job["spec"]["template"]["spec"]["containers"])
    assert "CREATE EXTENSION IF NOT EXISTS vector" in script


# --- Managed Redis -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_managed_redis_is_tls_only_entra_only_and_private(stack, request):
    resources = request.getfixturevalue(stack)
    assert not [r for r in resources if r.type.startswith("azure-native:cache:")], "retiring Azure Cache for Redis"
    cluster = one(resources, "azure-native:redisenterprise:RedisEnterprise").inputs
    assert cluster["minimumTlsVersion"] == "1.2" and cluster["publicNetworkAccess"] == "Disabled"
    database = one(resources, "azure-native:redisenterprise:Database").inputs
    assert database["clientProtocol"] == "Encrypted" and database["port"] == 10000
    assert database["accessKeysAuthentication"] == "Disabled"
    endpoint_groups = [e.inputs["privateLinkServiceConnections"][0]["groupIds"]
                       for e in of_type(resources, "azure-native:network:PrivateEndpoint")]
    assert ["redisEnterprise"] in endpoint_groups


def test_redis_grants_data_access_to_the_serving_gateway_and_admin_identities_only(prod):
    # The server (its env names Redis), the gateway (its counters) and the admin (key revocations).
    assignments = of_type(prod, "azure-native:redisenterprise:AccessPolicyAssignment")
    granted = {dep.rsplit("::", 1)[1] for a in assignments for dep in a.property_dependencies["user"]}
    assert granted == {SERVING_IDENTITY, "gateway-identity-identity", SCHEMA_IDENTITY}
    assert all(a.inputs["accessPolicyName"] == "default" and a.inputs["user"]["objectId"] for a in assignments)


def test_redis_high_availability_is_on_in_prod_and_off_in_dev(dev, prod):
    assert one(prod, "azure-native:redisenterprise:RedisEnterprise").inputs["highAvailability"] == "Enabled"
    assert one(dev, "azure-native:redisenterprise:RedisEnterprise").inputs["highAvailability"] == "Disabled"


# --- Front Door --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("stack", "mode"), [("dev", "Prevention"), ("prod", "Prevention")])
def test_front_door_is_premium_with_managed_waf_rules(stack, mode, request):
    resources = request.getfixturevalue(stack)
    assert one(resources, "azure-native:cdn:Profile").inputs["sku"]["name"] == "Premium_AzureFrontDoor"
    waf = one(resources, "azure-native:frontdoor:Policy").inputs
    assert waf["policySettings"]["mode"] == mode and waf["policySettings"]["enabledState"] == "Enabled"
    rule_sets = {s["ruleSetType"] for s in waf["managedRules"]["managedRuleSets"]}
    assert rule_sets == {"Microsoft_DefaultRuleSet", "Microsoft_BotManagerRuleSet"}
    security_policy = one(resources, "azure-native:cdn:SecurityPolicy").inputs["parameters"]
    assert security_policy["wafPolicy"]["id"] == one(resources, "azure-native:frontdoor:Policy").id
    endpoint = one(resources, "azure-native:cdn:AFDEndpoint")
    assert security_policy["associations"][0]["domains"][0]["id"] == endpoint.id


def test_front_door_route_redirects_http_to_https(prod):
    route = one(prod, "azure-native:cdn:Route").inputs
    assert route["httpsRedirect"] == "Enabled"
    assert set(route["supportedProtocols"]) <= {"Http", "Https"}


def test_front_door_origin_is_the_private_link_service_in_the_aks_node_group(prod):
    origin = one(prod, "azure-native:cdn:AFDOrigin").inputs
    link = origin["sharedPrivateLinkResource"]["privateLink"]["id"]
    assert link.endswith("/resourceGroups/rg-inferforge-prod-westeurope-aks-nodes/providers/"
                         "Microsoft.Network/privateLinkServices/pls-inferforge-prod-inference")
    group = one(prod, "azure-native:cdn:AFDOriginGroup").inputs
    assert group["healthProbeSettings"]["probePath"] == "/ready"
    service = one(prod, "kubernetes:core/v1:Service", "gateway-svc").inputs  # the gateway fronts the models
    annotations = service["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/azure-pls-name"] == "pls-inferforge-prod-inference"
    assert annotations["service.beta.kubernetes.io/azure-load-balancer-internal"] == "true"


# --- AKS ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_aks_is_entra_only_with_workload_identity_and_network_policy(stack, request):
    cluster = one(request.getfixturevalue(stack), "azure-native:containerservice:ManagedCluster").inputs
    assert cluster["disableLocalAccounts"] is True
    assert cluster["aadProfile"]["managed"] is True and cluster["aadProfile"]["enableAzureRBAC"] is True
    assert cluster["oidcIssuerProfile"]["enabled"] is True
    assert cluster["securityProfile"]["workloadIdentity"]["enabled"] is True
    network = cluster["networkProfile"]
    assert (network["networkPlugin"], network["networkPluginMode"], network["networkPolicy"]) == \
        ("azure", "overlay", "cilium")
    assert cluster["addonProfiles"]["azureKeyvaultSecretsProvider"]["enabled"] is True
    assert cluster["addonProfiles"]["omsagent"]["config"]["logAnalyticsWorkspaceResourceID"].endswith(
        f"/workspaces/log-inferforge-{stack}")
    assert cluster["autoUpgradeProfile"]["upgradeChannel"] in {"patch", "stable"}
    assert cluster["autoUpgradeProfile"]["nodeOSUpgradeChannel"] == "NodeImage"
    system = cluster["agentPoolProfiles"]
    assert len(system) == 1 and system[0]["mode"] == "System" and system[0]["nodeTaints"] == [SYSTEM_TAINT]
    assert system[0]["enableNodePublicIP"] is False


def test_prod_aks_api_server_is_private_and_system_pool_spans_zones(prod):
    cluster = one(prod, "azure-native:containerservice:ManagedCluster").inputs
    assert cluster["apiServerAccessProfile"]["enablePrivateCluster"] is True
    assert cluster["agentPoolProfiles"][0]["availabilityZones"] == ["1", "2", "3"]
    assert cluster["sku"]["tier"] == "Standard"


def test_dev_aks_api_server_is_limited_to_configured_ranges(dev):
    access = one(dev, "azure-native:containerservice:ManagedCluster").inputs["apiServerAccessProfile"]
    assert access["enablePrivateCluster"] is False
    # The configured range plus the egress firewall's public IP: nodes reach a public API server from it.
    firewall_ip = one(dev, "azure-native:network:PublicIPAddress", "egress-firewall-pip")
    assert access["authorizedIPRanges"][0] == "203.0.113.0/24"
    assert len(access["authorizedIPRanges"]) == 2 and access["authorizedIPRanges"][1].endswith("/32")
    assert firewall_ip.urn in one(dev, "azure-native:containerservice:ManagedCluster").property_dependencies[
        "apiServerAccessProfile"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_gpu_pools_are_separate_tainted_ubuntu_agent_pools(stack, request):
    resources = request.getfixturevalue(stack)
    cluster = one(resources, "azure-native:containerservice:ManagedCluster")
    assert [p["name"] for p in cluster.inputs["agentPoolProfiles"]] == ["system"]
    for pool in of_type(resources, "azure-native:containerservice:AgentPool"):
        inputs = pool.inputs
        assert inputs["resourceName"] == cluster.inputs["resourceName"]
        assert inputs["mode"] == "User" and inputs["osType"] == "Linux" and inputs["osSKU"] == "Ubuntu"
        assert inputs["nodeTaints"] == [GPU_TAINT]
        assert inputs["nodeLabels"]["inferforge.io/pool"] == inputs["agentPoolName"]
        assert inputs["enableAutoScaling"] is True and inputs["enableNodePublicIP"] is False
        assert inputs["gpuProfile"] == {"driver": "Install"}


def test_dev_gpu_pool_scales_to_zero(dev):
    assert one(dev, "azure-native:containerservice:AgentPool").inputs["minCount"] == 0


# --- Network -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_subnet_has_an_nsg_and_postgres_is_delegated(stack, request):
    resources = request.getfixturevalue(stack)
    nsg_ids = {n.id for n in of_type(resources, "azure-native:network:NetworkSecurityGroup")}
    subnets = {s.inputs["subnetName"]: s.inputs for s in of_type(resources, "azure-native:network:Subnet")}
    # Azure Firewall's own subnets take no NSG (the firewall is the filter there).
    firewall_subnets = {"AzureFirewallSubnet", "AzureFirewallManagementSubnet"}
    assert all("networkSecurityGroup" not in subnets.pop(name) for name in firewall_subnets & set(subnets))
    assert set(subnets) == {"snet-aks", "snet-private-endpoints", "snet-postgres", "snet-private-link"}
    for subnet in subnets.values():
        assert subnet["networkSecurityGroup"]["id"] in nsg_ids
    assert subnets["snet-postgres"]["delegations"][0]["serviceName"] == "Microsoft.DBforPostgreSQL/flexibleServers"
    assert subnets["snet-private-link"]["privateLinkServiceNetworkPolicies"] == "Disabled"


def test_no_nsg_rule_allows_inbound_from_the_internet(prod):
    for nsg in of_type(prod, "azure-native:network:NetworkSecurityGroup"):
        for rule in nsg.inputs["securityRules"]:
            if rule["direction"] == "Inbound" and rule["access"] == "Allow":
                assert rule["sourceAddressPrefix"] not in {"*", "Internet", "0.0.0.0/0", "Any"}


def test_private_dns_zones_are_linked_to_the_vnet(prod):
    vnet = one(prod, "azure-native:network:VirtualNetwork")
    zones = {z.inputs["privateZoneName"] for z in of_type(prod, "azure-native:privatedns:PrivateZone")}
    assert zones == {"privatelink.vaultcore.azure.net", "privatelink.redis.azure.net", "privatelink.azurecr.io",
                     "privatelink.blob.core.windows.net", "inferforge-prod.private.postgres.database.azure.com"}
    links = of_type(prod, "azure-native:privatedns:VirtualNetworkLink")
    assert len(links) == 5 and all(link.inputs["virtualNetwork"]["id"] == vnet.id for link in links)
    assert all(link.inputs["registrationEnabled"] is False for link in links)


# --- Observability -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_resource_that_supports_diagnostics_sends_them_to_log_analytics(stack, request):
    resources = request.getfixturevalue(stack)
    workspace = one(resources, "azure-native:operationalinsights:Workspace")
    settings = of_type(resources, "azure-native:monitor:DiagnosticSetting")
    assert {s.inputs["workspaceId"] for s in settings} == {workspace.id}
    covered = {s.inputs["resourceUri"] for s in settings}
    supported = ["azure-native:keyvault:Vault", "azure-native:dbforpostgresql:Server",
                 "azure-native:redisenterprise:RedisEnterprise", "azure-native:redisenterprise:Database",
                 "azure-native:cdn:Profile", "azure-native:containerservice:ManagedCluster",
                 "azure-native:network:VirtualNetwork", "azure-native:network:NetworkSecurityGroup"]
    missing = [r.name for t in supported for r in of_type(resources, t) if r.id not in covered]
    assert not missing


def test_log_analytics_disables_shared_key_auth(prod):
    workspace = one(prod, "azure-native:operationalinsights:Workspace").inputs
    assert workspace["features"]["disableLocalAuth"] is True
    assert workspace["retentionInDays"] == 90


# --- Workload identity -------------------------------------------------------------------------------

def test_workload_identity_is_federated_with_the_inference_service_account(prod):
    cluster = one(prod, "azure-native:containerservice:ManagedCluster")
    credentials = of_type(prod, "azure-native:managedidentity:FederatedIdentityCredential")
    subjects = {c.inputs["subject"] for c in credentials}
    assert "system:serviceaccount:inference:inference" in subjects
    assert all(c.inputs["audiences"] == ["api://AzureADTokenExchange"] for c in credentials)
    assert all(c.inputs["issuer"].startswith("https://westeurope.oic.prod-aks.azure.com/") for c in credentials)
    assert cluster.inputs["oidcIssuerProfile"]["enabled"] is True
    service_account = next(s for s in of_type(prod, "kubernetes:core/v1:ServiceAccount")
                           if s.inputs["metadata"]["name"] == "inference")
    identity_client_ids = {c for c in [service_account.inputs["metadata"]["annotations"].get(
        "azure.workload.identity/client-id")] if c}
    assert identity_client_ids


def test_workload_identity_reads_only_key_vault_secrets_on_its_vault(prod):
    vault = one(prod, "azure-native:keyvault:Vault")
    assignment = one(prod, "azure-native:authorization:RoleAssignment", "inference-identity-kv-secrets-user").inputs
    assert assignment["scope"] == vault.id
    assert assignment["roleDefinitionId"].endswith("/roleDefinitions/4633458b-17de-408a-b874-0445c86b69e6")
    assert assignment["principalType"] == "ServicePrincipal"


# --- Tags and locks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_tagged_azure_resource_carries_the_required_tags(stack, request):
    resources = request.getfixturevalue(stack)
    tagged = [r for r in resources if r.type.startswith("azure-native:") and "tags" in r.inputs]
    assert len(tagged) > 20
    for resource in tagged:
        assert REQUIRED_TAGS <= set(resource.inputs["tags"]), resource.name
        assert resource.inputs["tags"]["environment"] == stack


def test_prod_locks_stateful_resources_and_dev_does_not(dev, prod):
    locked = {lock.inputs["scope"] for lock in of_type(prod, "azure-native:authorization:ManagementLockByScope")}
    assert one(prod, "azure-native:keyvault:Vault").id in locked
    assert one(prod, "azure-native:dbforpostgresql:Server").id in locked
    assert not of_type(dev, "azure-native:authorization:ManagementLockByScope")
