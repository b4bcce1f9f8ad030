"""The Pulumi program: validate the stack's config, then compose the platform in dependency order.

resource group -> Log Analytics -> network -> Key Vault -> AKS (+ GPU pools, Network Contributor on
the subnets it creates LB/PLS objects in) -> container registry (AcrPull for the kubelet identity) -> model
store (private Blob container, Storage Blob Data Reader for the kubelet identity) ->
workload identities (serving; schema Job) -> PostgreSQL (schema identity as Entra admin) -> Managed Redis
(serving identity's access policy) -> [deployWorkloads] Kubernetes workloads (NVIDIA device plugin,
inference service, pgvector Job) through a provider built from the cluster's Entra credentials -> Front
Door (origin: the Private Link Service that the inference Service makes AKS create, so it waits for it).

`deployWorkloads: false` stops after the platform: the first `pulumi up` of a new environment creates
the registry that the images are then pushed to (README, Deploying to Azure).
"""

from __future__ import annotations

import base64
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from inferforge.components.aks import AksCluster, AksClusterArgs, GpuPoolArgs
from inferforge.components.audit import Audit, AuditArgs
from inferforge.components.common import standard_tags
from inferforge.components.egress import (
    EgressFirewall,
    EgressFirewallArgs,
    EgressRouteTable,
    EgressRouteTableArgs,
    HubPeeringArgs,
    hub_peering,
)
from inferforge.components.frontdoor import FrontDoor, FrontDoorArgs
from inferforge.components.identity import WorkloadIdentity, WorkloadIdentityArgs
from inferforge.components.image_integrity import RATIFY_SUBJECT, ImageIntegrity, ImageIntegrityArgs
from inferforge.components.keyvault import KeyVault, KeyVaultArgs
from inferforge.components.model_store import ModelStore, ModelStoreArgs, blob_endpoint
from inferforge.components.network import ExistingNetwork, ExistingNetworkArgs, Network, NetworkArgs
from inferforge.components.observability import Observability, ObservabilityArgs
from inferforge.components.postgres import EntraAdmin, PostgresPgvector, PostgresPgvectorArgs
from inferforge.components.redis import ManagedRedis, ManagedRedisArgs
from inferforge.components.registry import ContainerRegistry, ContainerRegistryArgs
from inferforge.inference import defaults as serving_defaults
from pulumi_azure_native import authorization, containerservice, resources

from .config import NAMESPACE, ConfigError, PlatformConfig, parse_stack_config
from .workloads import (
    ModelStoreMount,
    deploy_workloads,
    federated_subjects,
    gateway_subjects,
    schema_job_subjects,
)

SERVING_PORT = serving_defaults.PORT


def stack_config_values() -> dict[str, Any]:
    """Every `inferforge:` key the engine (or the offline plan) set for this stack."""
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    return {k: runtime_config.get_config(k) for k in keys if k.startswith(f"{NAMESPACE}:")}


def private_link_service_id(subscription_id: pulumi.Input[str], node_resource_group: str, pls_name: str
                            ) -> pulumi.Output[str]:
    """ARM id of the PLS that AKS creates (from the Service annotations) in the node resource group."""
    return pulumi.Output.concat("/subscriptions/", subscription_id, "/resourceGroups/", node_resource_group,
                                "/providers/Microsoft.Network/privateLinkServices/", pls_name)


def private_endpoint_approval(node_resource_group: str, pls_name: str) -> str:
    """The manual step after the first `up` with workloads: approve Front Door's pending connection.

    Not automatable from the program: the connection is filed by Front Door's managed private endpoint
    (in a Microsoft subscription, so the PLS auto-approval list cannot name it) under a name Azure
    generates only then; providers have the same gap (hashicorp/terraform-provider-azurerm#32035).
    """
    query = "privateEndpointConnections[?privateLinkServiceConnectionState.status=='Pending'].id"
    return (f'for id in $(az network private-link-service show -g {node_resource_group} -n {pls_name} '
            f'--query "{query}" -o tsv); do az network private-endpoint-connection approve --id "$id" '
            '--description "inferforge Front Door origin"; done')


def _egress(cfg: PlatformConfig, rg: pulumi.Input[str], net: Network, workspace_id: pulumi.Input[str],
            tags: dict[str, str]) -> tuple[pulumi.Input[str], pulumi.Input[str] | None, list[pulumi.Resource]]:
    """The egress next hop (own firewall or the hub's), its public IP, and what the cluster must wait for."""
    if cfg.hub is not None:
        peering = hub_peering("network", HubPeeringArgs(resource_group_name=rg, virtual_network_name=net.vnet.name,
                                                        hub_vnet_id=cfg.hub.vnet_id), parent=net)
        return cfg.hub.firewall_private_ip, cfg.hub.firewall_public_ip, [peering]
    firewall_cfg = cfg.egress.firewall
    base = cfg.names.base
    basic = firewall_cfg.sku_tier == "Basic"
    firewall = EgressFirewall("egress-firewall", EgressFirewallArgs(
        resource_group_name=rg, location=cfg.location, virtual_network_name=net.vnet.name,
        firewall_name=f"afw-{base}", policy_name=f"afwp-{base}", public_ip_name=f"pip-{base}-afw",
        subnet_prefix=firewall_cfg.subnet or "", source_prefixes=[cfg.network.aks_subnet],
        management_subnet_prefix=firewall_cfg.management_subnet if basic else None,
        management_public_ip_name=f"pip-{base}-afw-mgmt" if basic else None, zones=firewall_cfg.zones,
        public_api_server=not cfg.aks.private_cluster, allowed_fqdns=cfg.egress.allowed_fqdns,
        log_analytics_workspace_id=workspace_id, subnet_dependencies=[net], tags=tags, **firewall_cfg.args()))
    return firewall.private_ip, firewall.public_ip_address, [firewall.firewall]


def _network_and_egress(cfg: PlatformConfig, rg: pulumi.Input[str], workspace_id: pulumi.Input[str],
                        tags: dict[str, str]
                        ) -> tuple[Network | ExistingNetwork, pulumi.Input[str] | None, list[pulumi.Resource]]:
    """The spoke (created, or the landing zone's), the egress public IP, and what the cluster must wait for."""
    names = cfg.names
    hub_zone_keys = {"keyVault": "key_vault", "redis": "redis", "postgres": "postgres", "blob": "blob"}
    existing_zones = {hub_zone_keys[k]: v for k, v in cfg.hub.private_dns_zone_ids.items()} if cfg.hub else {}
    postgres_zone = f"{names.base}.private.postgres.database.azure.com"
    if cfg.network.existing_vnet_id is not None and cfg.hub is not None:
        # The landing zone's spoke is already peered and routed to the hub firewall (config requires hub mode):
        # nothing of it is written here, so the cluster waits for nothing network-side.
        net = ExistingNetwork("network", ExistingNetworkArgs(
            resource_group_name=rg, vnet_id=cfg.network.existing_vnet_id,
            subnet_names=cfg.network.subnet_names(),
            postgres_dns_zone_name=postgres_zone, existing_dns_zone_ids=existing_zones, tags=tags))
        return net, cfg.hub.firewall_public_ip, []
    route_table = EgressRouteTable("egress-routes", EgressRouteTableArgs(
        resource_group_name=rg, location=cfg.location, route_table_name=f"rt-{names.base}-aks", tags=tags))
    own = Network("network", NetworkArgs(
        resource_group_name=rg, location=cfg.location, vnet_name=names.vnet,
        address_space=cfg.network.address_space, aks_subnet_prefix=cfg.network.aks_subnet,
        private_endpoint_subnet_prefix=cfg.network.private_endpoint_subnet,
        postgres_subnet_prefix=cfg.network.postgres_subnet, private_link_subnet_prefix=cfg.network.private_link_subnet,
        postgres_dns_zone_name=postgres_zone, serving_port=SERVING_PORT,
        log_analytics_workspace_id=workspace_id, aks_route_table_id=route_table.route_table_id,
        existing_dns_zone_ids=existing_zones, dns_servers=cfg.hub.dns_servers if cfg.hub else (), tags=tags))
    egress_next_hop, egress_public_ip, egress_ready = _egress(cfg, rg, own, workspace_id, tags)
    egress_ready.insert(0, route_table.route_default_to(egress_next_hop))
    return own, egress_public_ip, egress_ready


def _audit(cfg: PlatformConfig, rg: pulumi.Input[str], workspace_id: pulumi.Input[str], tags: dict[str, str],
           front_door_profile_id: pulumi.Input[str] | None) -> Audit:
    """Activity Log export and the alert rules; the 5xx alert only once Front Door exists (second phase)."""
    alerts = cfg.observability.alerts
    return Audit("audit", AuditArgs(
        resource_group_name=rg, location=cfg.location, name_base=cfg.names.base, workspace_id=workspace_id,
        email_receivers=alerts.email_receivers, front_door_profile_id=front_door_profile_id,
        cluster_name=cfg.names.aks, gpu_pool_max_counts={p.name: p.max_count for p in cfg.aks.gpu_pools},
        error_rate_percent=alerts.error_rate_percent, gpu_pool_at_max_minutes=alerts.gpu_pool_at_max_minutes,
        queue_depth_threshold=alerts.queue_depth_threshold,
        inference_namespaces=[model.namespace for _, model in cfg.served_models],
        # The gateway's rules come with its workloads (the second phase, like the Front Door 5xx alert).
        gateway_namespace=cfg.gateway.namespace if cfg.gateway.enabled and front_door_profile_id is not None
        else None,
        prometheus_workspace_id=alerts.prometheus_workspace_id,
        activity_log_export=cfg.observability.activity_log_export, tags=tags))


def build_platform(cfg: PlatformConfig) -> dict[str, Any]:
    """Register every resource of the platform for a validated config; returns the stack outputs."""
    names = cfg.names
    tags = standard_tags(environment=cfg.environment, owner=cfg.owner, cost_center=cfg.cost_center,
                         extra=cfg.extra_tags)
    client = authorization.get_client_config_output()

    group = resources.ResourceGroup("platform-rg", resource_group_name=names.resource_group,
                                    location=cfg.location, tags=tags)
    rg = group.name

    observability = Observability("observability", ObservabilityArgs(
        resource_group_name=rg, location=cfg.location, workspace_name=names.log_analytics,
        tags=tags, **cfg.observability.args()))
    workspace_id = observability.workspace_id

    net, egress_public_ip, egress_ready = _network_and_egress(cfg, rg, workspace_id, tags)

    vault = KeyVault("keyvault", KeyVaultArgs(
        resource_group_name=rg, location=cfg.location, name_prefix=names.key_vault_prefix,
        tenant_id=client.tenant_id, private_endpoint_subnet_id=net.subnet_ids["private-endpoints"],
        private_dns_zone_id=net.dns_zone_ids["key_vault"], log_analytics_workspace_id=workspace_id,
        # The pepper of the gateway's API-key hashes: a dump of the database alone cannot test key guesses.
        generated_secrets=[cfg.gateway.key_pepper_secret_name] if cfg.gateway.enabled else [],
        lock=cfg.resource_locks, tags=tags, **cfg.key_vault.args()))

    aks = AksCluster("aks", AksClusterArgs(
        resource_group_name=rg, location=cfg.location, cluster_name=names.aks,
        node_resource_group=names.node_resource_group, tenant_id=client.tenant_id,
        node_subnet_id=net.subnet_ids["aks"], log_analytics_workspace_id=workspace_id,
        gpu_pools=[GpuPoolArgs(name=p.name, vm_size=p.vm_size, min_count=p.min_count, max_count=p.max_count,
                               os_disk_size_gb=p.effective_os_disk_size_gb, os_disk_type=p.os_disk_type,
                               labels=p.labels, zones=p.zones)
                   for p in cfg.aks.gpu_pools],
        system_zones=cfg.aks.system_zones, system_os_disk_size_gb=cfg.aks.effective_system_os_disk_size_gb,
        outbound_type="userDefinedRouting",
        egress_public_ip=None if cfg.aks.private_cluster else egress_public_ip, outbound_dependencies=egress_ready,
        blob_csi_driver=any(m.model_source.kind in ("modelStore", "pvc") for _, m in cfg.served_models),
        # The inference Service's internal LB frontend (snet-aks) and its Private Link Service NAT IPs.
        network_contributor_subnet_ids=[net.subnet_ids["aks"], net.subnet_ids["private-link"]],
        subscription_id=client.subscription_id, tags=tags, **cfg.aks.args()))

    # Ratify's identity (admission of signed images): reads signatures from the registry and the signing
    # certificate from Key Vault. Created with the platform so AcrPull is in place before Ratify starts.
    ratify_identity = WorkloadIdentity("ratify-identity", WorkloadIdentityArgs(
        resource_group_name=rg, location=cfg.location, identity_name=f"id-{names.base}-ratify",
        oidc_issuer_url=aks.oidc_issuer_url, federated_subjects=[RATIFY_SUBJECT], key_vault_id=vault.vault_id,
        subscription_id=client.subscription_id, tags=tags))

    registry = ContainerRegistry("registry", ContainerRegistryArgs(
        resource_group_name=rg, location=cfg.location, registry_name=cfg.registry_name,
        subscription_id=client.subscription_id, private_endpoint_subnet_id=net.subnet_ids["private-endpoints"],
        private_dns_zone_id=net.dns_zone_ids["container_registry"], log_analytics_workspace_id=workspace_id,
        pull_principal_ids=[aks.kubelet_identity_object_id, ratify_identity.principal_id],
        lock=cfg.resource_locks, tags=tags, **cfg.registry.args()))

    # Created in the first phase, so the weights can be uploaded before the workloads that mount them exist.
    model_store = ModelStore("model-store", ModelStoreArgs(
        resource_group_name=rg, location=cfg.location, account_name=cfg.model_store_account,
        subscription_id=client.subscription_id, private_endpoint_subnet_id=net.subnet_ids["private-endpoints"],
        private_dns_zone_id=net.dns_zone_ids["blob"], log_analytics_workspace_id=workspace_id,
        reader_principal_ids=[aks.kubelet_identity_object_id], lock=cfg.resource_locks, tags=tags,
        **cfg.model_store.args())) if cfg.uses_model_store else None

    identity = WorkloadIdentity("inference-identity", WorkloadIdentityArgs(
        resource_group_name=rg, location=cfg.location, identity_name=names.identity,
        oidc_issuer_url=aks.oidc_issuer_url, federated_subjects=federated_subjects(cfg), key_vault_id=vault.vault_id,
        subscription_id=client.subscription_id, tags=tags))
    # The PostgreSQL Entra admin is its own identity, federated only to the schema Jobs (pgvector, the
    # gateway's migration and admin pods): the serving pods never hold database-admin rights (policy
    # postgres-admin-not-serving-identity). With the gateway it reads the API-key pepper (new keys).
    schema_identity = WorkloadIdentity("schema-identity", WorkloadIdentityArgs(
        resource_group_name=rg, location=cfg.location, identity_name=names.schema_identity,
        oidc_issuer_url=aks.oidc_issuer_url, federated_subjects=schema_job_subjects(cfg),
        key_vault_id=vault.vault_id if cfg.gateway.enabled else None,
        subscription_id=client.subscription_id, tags=tags))
    gateway_identity = None
    if cfg.gateway.enabled:
        # The gateway's own identity: Key Vault (pepper, the model servers' key), Redis, its database role.
        gateway_identity = WorkloadIdentity("gateway-identity", WorkloadIdentityArgs(
            resource_group_name=rg, location=cfg.location, identity_name=names.gateway_identity,
            oidc_issuer_url=aks.oidc_issuer_url, federated_subjects=gateway_subjects(cfg),
            key_vault_id=vault.vault_id, subscription_id=client.subscription_id, tags=tags))

    postgres = PostgresPgvector("postgres", PostgresPgvectorArgs(
        resource_group_name=rg, location=cfg.location, name_prefix=names.postgres_prefix,
        tenant_id=client.tenant_id, delegated_subnet_id=net.subnet_ids["postgres"],
        private_dns_zone_id=net.dns_zone_ids["postgres"], log_analytics_workspace_id=workspace_id,
        entra_admins=[EntraAdmin(object_id=schema_identity.principal_id, principal_name=names.schema_identity)],
        sku_tier=cfg.postgres.tier, key_vault_id=vault.vault_id, key_vault_name=vault.vault_name,
        lock=cfg.resource_locks, tags=tags, **cfg.postgres.args()))

    redis = ManagedRedis("redis", ManagedRedisArgs(
        resource_group_name=rg, location=cfg.location, name_prefix=names.redis_prefix,
        private_endpoint_subnet_id=net.subnet_ids["private-endpoints"], private_dns_zone_id=net.dns_zone_ids["redis"],
        log_analytics_workspace_id=workspace_id,
        # The gateway keeps its counters here; the admin identity writes key revocations.
        data_access_principal_ids=[identity.principal_id] + (
            [gateway_identity.principal_id, schema_identity.principal_id] if gateway_identity else []),
        tags=tags, **cfg.redis.args()))

    outputs: dict[str, Any] = {
        "resourceGroupName": rg,
        "vnetId": net.vnet.id,
        "keyVaultUri": vault.vault_uri,
        "keyVaultName": vault.vault_name,
        "postgresFqdn": postgres.fqdn,
        "postgresDatabase": postgres.database_name,
        "redisHostName": redis.host_name,
        "redisPort": redis.port,
        "aksClusterName": aks.cluster.name,
        "aksOidcIssuerUrl": aks.oidc_issuer_url,
        "inferenceIdentityClientId": identity.client_id,
        "registryName": cfg.registry_name,
        "registryLoginServer": registry.login_server,
        "nodeResourceGroup": names.node_resource_group,
    }
    if model_store is not None:
        outputs["modelStoreAccountName"] = model_store.account_name
        outputs["modelStoreContainer"] = model_store.container_name
        outputs["modelStoreBlobEndpoint"] = blob_endpoint(model_store.account_name)
    if not cfg.deploy_workloads:
        _audit(cfg, rg, workspace_id, tags, front_door_profile_id=None)
        return outputs

    credentials = containerservice.list_managed_cluster_user_credentials_output(
        resource_group_name=rg, resource_name=aks.cluster.name, format="exec")
    kubeconfig = credentials.kubeconfigs.apply(lambda kcs: base64.b64decode(kcs[0].value).decode())
    provider = k8s.Provider("aks-provider", kubeconfig=kubeconfig, enable_server_side_apply=True,
                            opts=pulumi.ResourceOptions(depends_on=list(aks.gpu_pools.values())))

    integrity = cfg.aks.image_integrity
    login_server = registry.login_server
    admission = ImageIntegrity("image-integrity", ImageIntegrityArgs(
        cluster_id=aks.cluster_id, subscription_id=client.subscription_id, definition_name=f"ratify-{names.base}",
        identity_client_id=ratify_identity.client_id, tenant_id=client.tenant_id, key_vault_uri=vault.vault_uri,
        certificate_name=integrity.certificate_name, registry_login_server=login_server,
        chart=f"oci://{login_server}/{integrity.chart_repository}",
        chart_version=integrity.chart_version,
        image_repository=f"{login_server}/{integrity.image.repository}",
        image_tag="@".join(filter(None, (integrity.image.tag, integrity.image.digest))),
        crd_image_repository=f"{login_server}/{integrity.crd_image.repository}",
        effect=integrity.effect, trusted_identities=integrity.trusted_identities),
        opts=pulumi.ResourceOptions(provider=provider, depends_on=list(registry.pull_role_assignments)))

    workloads = deploy_workloads(cfg, provider=provider, identity=identity, schema_identity=schema_identity,
                                 gateway_identity=gateway_identity, tenant_id=client.tenant_id,
                                 vault=vault, postgres=postgres,
                                 redis=redis, serving_port=SERVING_PORT, login_server=registry.login_server,
                                 model_store=ModelStoreMount(resource_group=names.resource_group,
                                                             kubelet_identity_client_id=aks.kubelet_identity_client_id)
                                 if model_store is not None else None,
                                 # Admission is in place before any of our pods is created.
                                 depends_on=[admission.assignment, *registry.pull_role_assignments,
                                             *aks.network_role_assignments,
                                             *(model_store.reader_role_assignments if model_store else [])])

    pls_id = private_link_service_id(client.subscription_id, names.node_resource_group, names.private_link_service)
    front_door = FrontDoor("frontdoor", FrontDoorArgs(
        resource_group_name=rg, profile_name=names.front_door, endpoint_name=names.front_door_endpoint,
        waf_policy_name=names.waf_policy, private_link_service_id=pls_id, private_link_location=cfg.location,
        origin_host_name=cfg.front_model[1].internal_load_balancer_ip, log_analytics_workspace_id=workspace_id,
        origin_port=80, origin_depends_on=[workloads.front_service], tags=tags, **cfg.front_door.args()))
    _audit(cfg, rg, workspace_id, tags, front_door_profile_id=front_door.profile.id)

    return {
        **outputs,
        "frontDoorEndpoint": pulumi.Output.concat("https://", front_door.endpoint_host_name),
        "privateLinkServiceId": pls_id,
        "privateLinkServiceName": names.private_link_service,
        "privateEndpointApproval": private_endpoint_approval(names.node_resource_group,
                                                           names.private_link_service),
        **workloads.outputs,
    }


def main() -> None:
    """Entry point under the Pulumi engine: bad config fails before any resource is registered."""
    try:
        cfg = parse_stack_config(stack_config_values())
    except ConfigError as exc:
        # RunError is reported by the engine without a Python traceback.
        raise pulumi.RunError(str(exc)) from None
    for key, value in build_platform(cfg).items():
        pulumi.export(key, value)
