"""Azure-like mocks for Pulumi's mock runtime: the program runs for real, only the cloud is faked.

Mocked outputs look like what Azure returns (ARM resource ids, host names, identity GUIDs), so the
program's wiring (ids passed between components, host names into the Kubernetes workload) is
exercised exactly as in `pulumi up`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor

SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
TENANT_ID = "11111111-1111-1111-1111-111111111111"
DEPLOYER_OBJECT_ID = "22222222-2222-2222-2222-222222222222"
# The Service annotation that asks the Azure cloud provider for a static load-balancer frontend address.
ILB_IPV4_ANNOTATION = "service.beta.kubernetes.io/azure-load-balancer-ipv4"

# Pulumi type token -> ARM path template under the resource group. `{x}` reads the input `x`
# (the resource's name inputs); `{_name}` is the resource's own name.
ARM_PATHS: dict[str, str] = {
    "azure-native:resources:ResourceGroup": "",
    "azure-native:network:VirtualNetwork": "Microsoft.Network/virtualNetworks/{_name}",
    "azure-native:network:Subnet": "Microsoft.Network/virtualNetworks/{virtualNetworkName}/subnets/{_name}",
    "azure-native:network:NetworkSecurityGroup": "Microsoft.Network/networkSecurityGroups/{_name}",
    "azure-native:network:PrivateEndpoint": "Microsoft.Network/privateEndpoints/{_name}",
    "azure-native:network:PrivateDnsZoneGroup":
        "Microsoft.Network/privateEndpoints/{privateEndpointName}/privateDnsZoneGroups/{_name}",
    "azure-native:privatedns:PrivateZone": "Microsoft.Network/privateDnsZones/{_name}",
    "azure-native:privatedns:VirtualNetworkLink":
        "Microsoft.Network/privateDnsZones/{privateZoneName}/virtualNetworkLinks/{_name}",
    "azure-native:keyvault:Vault": "Microsoft.KeyVault/vaults/{_name}",
    "azure-native:keyvault:Secret": "Microsoft.KeyVault/vaults/{vaultName}/secrets/{_name}",
    "azure-native:dbforpostgresql:Server": "Microsoft.DBforPostgreSQL/flexibleServers/{_name}",
    "azure-native:dbforpostgresql:Configuration":
        "Microsoft.DBforPostgreSQL/flexibleServers/{serverName}/configurations/{_name}",
    "azure-native:dbforpostgresql:Database":
        "Microsoft.DBforPostgreSQL/flexibleServers/{serverName}/databases/{_name}",
    "azure-native:dbforpostgresql:AdministratorsMicrosoftEntra":
        "Microsoft.DBforPostgreSQL/flexibleServers/{serverName}/administrators/{objectId}",
    "azure-native:redisenterprise:RedisEnterprise": "Microsoft.Cache/redisEnterprise/{_name}",
    "azure-native:redisenterprise:Database": "Microsoft.Cache/redisEnterprise/{clusterName}/databases/{_name}",
    "azure-native:redisenterprise:AccessPolicyAssignment":
        "Microsoft.Cache/redisEnterprise/{clusterName}/databases/{databaseName}/accessPolicyAssignments/{_name}",
    "azure-native:cdn:Profile": "Microsoft.Cdn/profiles/{_name}",
    "azure-native:cdn:AFDEndpoint": "Microsoft.Cdn/profiles/{profileName}/afdEndpoints/{_name}",
    "azure-native:cdn:AFDOriginGroup": "Microsoft.Cdn/profiles/{profileName}/originGroups/{_name}",
    "azure-native:cdn:AFDOrigin":
        "Microsoft.Cdn/profiles/{profileName}/originGroups/{originGroupName}/origins/{_name}",
    "azure-native:cdn:Route": "Microsoft.Cdn/profiles/{profileName}/afdEndpoints/{endpointName}/routes/{_name}",
    "azure-native:cdn:SecurityPolicy": "Microsoft.Cdn/profiles/{profileName}/securityPolicies/{_name}",
    "azure-native:frontdoor:Policy": "Microsoft.Network/frontDoorWebApplicationFirewallPolicies/{_name}",
    "azure-native:containerservice:ManagedCluster": "Microsoft.ContainerService/managedClusters/{_name}",
    "azure-native:containerregistry:Registry": "Microsoft.ContainerRegistry/registries/{_name}",
    "azure-native:containerservice:AgentPool":
        "Microsoft.ContainerService/managedClusters/{resourceName}/agentPools/{_name}",
    "azure-native:operationalinsights:Workspace": "Microsoft.OperationalInsights/workspaces/{_name}",
    "azure-native:managedidentity:UserAssignedIdentity": "Microsoft.ManagedIdentity/userAssignedIdentities/{_name}",
    "azure-native:managedidentity:FederatedIdentityCredential":
        "Microsoft.ManagedIdentity/userAssignedIdentities/{resourceName}/federatedIdentityCredentials/{_name}",
    "azure-native:network:RouteTable": "Microsoft.Network/routeTables/{_name}",
    "azure-native:network:Route": "Microsoft.Network/routeTables/{routeTableName}/routes/{_name}",
    "azure-native:network:PublicIPAddress": "Microsoft.Network/publicIPAddresses/{_name}",
    "azure-native:network:AzureFirewall": "Microsoft.Network/azureFirewalls/{_name}",
    "azure-native:network:FirewallPolicy": "Microsoft.Network/firewallPolicies/{_name}",
    "azure-native:network:FirewallPolicyRuleCollectionGroup":
        "Microsoft.Network/firewallPolicies/{firewallPolicyName}/ruleCollectionGroups/{_name}",
    "azure-native:network:VirtualNetworkPeering":
        "Microsoft.Network/virtualNetworks/{virtualNetworkName}/virtualNetworkPeerings/{_name}",
    "azure-native:monitor:ActionGroup": "Microsoft.Insights/actionGroups/{_name}",
    "azure-native:monitor:MetricAlert": "Microsoft.Insights/metricAlerts/{_name}",
    "azure-native:monitor:ScheduledQueryRule": "Microsoft.Insights/scheduledQueryRules/{_name}",
    "azure-native:alertsmanagement:PrometheusRuleGroup": "Microsoft.AlertsManagement/prometheusRuleGroups/{_name}",
    "azure-native:storage:StorageAccount": "Microsoft.Storage/storageAccounts/{_name}",
    "azure-native:storage:BlobContainer":
        "Microsoft.Storage/storageAccounts/{accountName}/blobServices/default/containers/{_name}",
}

# The input that carries each resource's Azure name (when absent, the logical name is used).
NAME_INPUTS = (
    "resourceGroupName", "virtualNetworkName", "subnetName", "networkSecurityGroupName", "privateEndpointName",
    "privateDnsZoneGroupName", "privateZoneName", "virtualNetworkLinkName", "vaultName", "secretName",
    "serverName", "configurationName", "databaseName", "clusterName", "accessPolicyAssignmentName",
    "profileName", "endpointName", "originGroupName", "originName", "routeName", "securityPolicyName",
    "policyName", "registryName", "resourceName", "agentPoolName", "workspaceName",
    "federatedIdentityCredentialResourceName",
    "routeTableName", "routeName", "publicIpAddressName", "azureFirewallName", "firewallPolicyName",
    "ruleCollectionGroupName", "virtualNetworkPeeringName", "actionGroupName", "ruleName", "ruleGroupName",
    "accountName", "containerName",
)

# For a child resource, the input naming the child (the parent's name input appears in the path).
OWN_NAME_INPUT: dict[str, str] = {
    "azure-native:storage:BlobContainer": "containerName",
    "azure-native:network:Subnet": "subnetName",
    "azure-native:network:PrivateDnsZoneGroup": "privateDnsZoneGroupName",
    "azure-native:privatedns:VirtualNetworkLink": "virtualNetworkLinkName",
    "azure-native:keyvault:Secret": "secretName",
    "azure-native:dbforpostgresql:Configuration": "configurationName",
    "azure-native:dbforpostgresql:Database": "databaseName",
    "azure-native:redisenterprise:Database": "databaseName",
    "azure-native:redisenterprise:AccessPolicyAssignment": "accessPolicyAssignmentName",
    "azure-native:cdn:AFDEndpoint": "endpointName",
    "azure-native:cdn:AFDOriginGroup": "originGroupName",
    "azure-native:cdn:AFDOrigin": "originName",
    "azure-native:cdn:Route": "routeName",
    "azure-native:cdn:SecurityPolicy": "securityPolicyName",
    "azure-native:containerservice:AgentPool": "agentPoolName",
    "azure-native:managedidentity:FederatedIdentityCredential": "federatedIdentityCredentialResourceName",
    "azure-native:network:Route": "routeName",
    "azure-native:network:FirewallPolicyRuleCollectionGroup": "ruleCollectionGroupName",
    "azure-native:network:VirtualNetworkPeering": "virtualNetworkPeeringName",
}


def _guid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def _short_hash(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass
class Registration:
    """What the program registered for one resource (custom or component)."""

    type: str
    name: str
    urn: str
    parent_urn: str | None
    custom: bool
    inputs: dict[str, Any]
    id: str | None = None
    dependencies: list[str] = field(default_factory=list)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    provider: str | None = None
    aliases: list[str] = field(default_factory=list)  # the types of the aliases, as the engine receives them


class RecordingMonitor(MockMonitor):
    """MockMonitor that also records each registration's parent (mocks.new_resource does not get it)."""

    def __init__(self, mocks: AzureMocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        recorded = self.mocks.registration_of_this_thread()  # type: ignore[attr-defined]
        recorded.urn = response.urn
        recorded.parent_urn = request.parent or None
        # What the engine records and CrossGuard hands to stack policies: explicit depends_on plus the
        # resources each input was computed from, and the per-resource custom timeouts.
        recorded.dependencies = list(request.dependencies)
        recorded.property_dependencies = {key: list(deps.urns)
                                          for key, deps in request.propertyDependencies.items()}
        timeouts = request.customTimeouts
        recorded.custom_timeouts = {op: getattr(timeouts, op) for op in ("create", "update", "delete")
                                    if getattr(timeouts, op)}
        recorded.provider = request.provider or None
        recorded.aliases = [alias.spec.type for alias in request.aliases if alias.spec.type]
        self.registrations.append(recorded)
        return response


@dataclass
class AzureMocks(pulumi.runtime.Mocks):
    """Answers resource registrations and invokes with Azure-shaped values."""

    location: str = "westeurope"
    # new_resource and the monitor's RegisterResource run on the same thread, one call after the other.
    _local: threading.local = field(default_factory=threading.local, init=False, repr=False)
    _subnet_prefixes: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def registration_of_this_thread(self) -> Registration:
        return self._local.registration

    def _arm_id(self, args: pulumi.runtime.MockResourceArgs) -> str:
        inputs = args.inputs
        typ = args.typ
        own_input = OWN_NAME_INPUT.get(typ)
        own_name = inputs.get(own_input) if own_input else None
        if own_name is None and not own_input:
            own_name = next((inputs[k] for k in NAME_INPUTS if k in inputs and k != "resourceGroupName"), None)
        own_name = own_name or args.name
        if typ == "azure-native:resources:ResourceGroup":
            return f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{inputs.get('resourceGroupName', args.name)}"
        if typ == "azure-native:monitor:DiagnosticSetting":
            return f"{inputs['resourceUri']}/providers/Microsoft.Insights/diagnosticSettings/{inputs.get('name')}"
        if typ == "azure-native:monitor:SubscriptionDiagnosticSetting":
            return (f"/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Insights/diagnosticSettings/"
                    f"{inputs.get('name', args.name)}")
        if typ == "azure-native:authorization:RoleAssignment":
            return f"{inputs['scope']}/providers/Microsoft.Authorization/roleAssignments/{_guid(args.name)}"
        if typ == "azure-native:authorization:ManagementLockByScope":
            return f"{inputs['scope']}/providers/Microsoft.Authorization/locks/{inputs.get('lockName', args.name)}"
        template = ARM_PATHS.get(typ)
        rg = inputs.get("resourceGroupName", "rg-unknown")
        if template is None:
            provider = typ.split(":")[1] if typ.count(":") == 2 else "unknown"
            template = f"Microsoft.{provider}/{typ.rsplit(':', 1)[-1]}/{{_name}}"
        path = template.format(_name=own_name, **{k: v for k, v in inputs.items() if isinstance(v, str | int)})
        return f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{rg}/providers/{path}"

    def _outputs(self, args: pulumi.runtime.MockResourceArgs, resource_id: str) -> dict[str, Any]:
        inputs = dict(args.inputs)
        typ = args.typ
        name = resource_id.rsplit("/", 1)[-1]
        extra: dict[str, Any] = {"name": name, "id": resource_id}
        if typ.startswith("random:"):
            seed = _short_hash(args.name, 32)
            if typ.endswith("RandomString"):
                extra["result"] = "".join(c for c in seed if c.isalnum())[: int(inputs.get("length", 8))].lower()
            elif typ.endswith("RandomPassword"):
                extra["result"] = f"Mock-{seed}-Pw1"
            elif typ.endswith("RandomUuid"):
                extra["result"] = _guid(args.name)
            extra.pop("name")
        elif typ == "azure-native:keyvault:Vault":
            props = dict(inputs.get("properties", {}))
            props["vaultUri"] = f"https://{name}.vault.azure.net/"
            extra["properties"] = props
        elif typ == "azure-native:network:Subnet" and isinstance(inputs.get("addressPrefix"), str):
            self._subnet_prefixes[resource_id.lower()] = inputs["addressPrefix"]
        elif typ == "azure-native:network:PublicIPAddress":
            # A documentation-free public-looking address, stable per resource (Azure assigns the real one).
            digest = hashlib.sha256(resource_id.encode()).digest()
            extra["ipAddress"] = f"20.{digest[0]}.{digest[1]}.{max(digest[2], 1)}"
        elif typ == "azure-native:network:AzureFirewall":
            # Azure gives the firewall the first usable address of AzureFirewallSubnet (x.x.x.4).
            configs = [dict(c) for c in inputs.get("ipConfigurations") or []]
            for config in configs:
                prefix = self._subnet_prefixes.get(str((config.get("subnet") or {}).get("id", "")).lower())
                if prefix:
                    config["privateIPAddress"] = str(ipaddress.ip_network(prefix)[4])
            extra["ipConfigurations"] = configs
        elif typ == "azure-native:dbforpostgresql:Server":
            extra["fullyQualifiedDomainName"] = f"{name}.postgres.database.azure.com"
        elif typ == "azure-native:redisenterprise:RedisEnterprise":
            extra["hostName"] = f"{name}.{inputs.get('location', self.location)}.redis.azure.net"
        elif typ == "azure-native:cdn:AFDEndpoint":
            extra["hostName"] = f"{name}-{_short_hash(resource_id, 16)}.z01.azurefd.net"
        elif typ == "azure-native:managedidentity:UserAssignedIdentity":
            extra.update(principalId=_guid(resource_id, "principal"), clientId=_guid(resource_id, "client"),
                         tenantId=TENANT_ID)
        elif typ == "azure-native:operationalinsights:Workspace":
            extra["customerId"] = _guid(resource_id, "customer")
        elif typ == "azure-native:containerservice:ManagedCluster":
            extra["oidcIssuerProfile"] = {"enabled": True,
                                          "issuerURL": f"https://{self.location}.oic.prod-aks.azure.com/"
                                                       f"{TENANT_ID}/{_guid(resource_id, 'oidc')}/"}
            extra["identityProfile"] = {"kubeletidentity": {"objectId": _guid(resource_id, "kubelet"),
                                                            "clientId": _guid(resource_id, "kubelet-client")}}
            extra["identity"] = {**dict(inputs.get("identity") or {}),
                                 "principalId": _guid(resource_id, "cluster-identity"), "tenantId": TENANT_ID}
        elif typ == "azure-native:containerregistry:Registry":
            extra["loginServer"] = f"{name.lower()}.azurecr.io"
            extra["fqdn"] = f"{name}-{_short_hash(resource_id, 8)}.hcp.{self.location}.azmk8s.io"
        elif typ.startswith("kubernetes:"):
            metadata = dict(inputs.get("metadata") or {})
            metadata.setdefault("name", args.name)
            extra["metadata"] = metadata
            extra.pop("name")
            ipv4 = (metadata.get("annotations") or {}).get(ILB_IPV4_ANNOTATION)
            load_balancer = (inputs.get("spec") or {}).get("type") == "LoadBalancer"
            if typ == "kubernetes:core/v1:Service" and load_balancer and ipv4:
                # What the Azure cloud provider reports once it created the frontend at the requested address.
                extra["status"] = {"loadBalancer": {"ingress": [{"ip": ipv4}]}}
        return {**inputs, **extra}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        if not args.custom:
            self._local.registration = Registration(args.typ, args.name, "", None, False, dict(args.inputs), None)
            return None, {}
        if args.typ.startswith("pulumi:providers:"):
            resource_id = _guid(args.name, "provider")
            state: dict[str, Any] = dict(args.inputs)
        else:
            resource_id = self._arm_id(args) if args.typ.startswith("azure-native:") else args.name
            state = self._outputs(args, resource_id)
        self._local.registration = Registration(args.typ, args.name, "", None, True, dict(args.inputs), resource_id)
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list[tuple[str, str]] | None]:
        if args.token == "azure-native:authorization:getClientConfig":
            return {"subscriptionId": SUBSCRIPTION_ID, "tenantId": TENANT_ID, "objectId": DEPLOYER_OBJECT_ID,
                    "clientId": _guid("deployer-client")}, []
        if args.token == "azure-native:containerservice:listManagedClusterUserCredentials":
            kubeconfig = (
                "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n"
                "    server: https://mock.hcp.azmk8s.io:443\n"
            )
            return {"kubeconfigs": [{"name": "clusterUser",
                                     "value": base64.b64encode(kubeconfig.encode()).decode()}]}, []
        return {}, []
