"""Model store: the platform-owned, private Blob container the inference pods mount their weights from.

Why not the Blob CSI driver's dynamic provisioning (the `azureblob-fuse-premium` class): the driver creates
a storage account with a public endpoint in the node resource group, and blobfuse on the nodes reaches
`<account>.blob.core.windows.net` through the node subnet's default route, i.e. the egress firewall, which
allows no storage FQDN (components/egress.py). This store is reached only through its private endpoint in the
VNet (the `privatelink.blob.core.windows.net` zone resolves the account's name to it), so the firewall is never
on the path.

Account: BlockBlobStorage with a Premium SKU, the kind behind AKS's own `azureblob-fuse-premium` class
(skuName Premium_LRS; https://learn.microsoft.com/azure/aks/azure-blob-csi): low-latency block blobs for
blobfuse2, no hierarchical namespace (blobfuse2 needs none for reads). Public network access disabled and the
firewall's default action Deny with no bypass; no anonymous blob access; HTTPS only with TLS 1.2; shared key
access off, so no account key exists that a leaked secret could hold: the nodes mount with a managed identity
and uploads use Entra ID (`--auth-mode login`).

Shared key off works with the Blob CSI driver because a static volume with `AzureStorageAuthType: msi` never
asks for the account key: GetAuthEnv ignores the missing key secret for auth type msi and passes
`AZURE_STORAGE_AUTH_TYPE` / `AZURE_STORAGE_IDENTITY_CLIENT_ID` to blobfuse2
(https://github.com/kubernetes-sigs/blob-csi-driver/blob/master/docs/driver-parameters.md, "Static Provisioning",
volumeAttributes.AzureStorageAuthType / AzureStorageIdentityClientID; pkg/blob/blob.go GetAuthEnv). blobfuse2
runs on the node (blobfuse-proxy) and gets its token from the node's IMDS, so the identity must be one assigned
to the node VM scale sets: AKS's kubelet identity (`<cluster>-agentpool` in the node resource group), the one the
driver's guide uses ("the built-in kubelet identity bound to the AKS agent node pool",
https://github.com/kubernetes-sigs/blob-csi-driver/blob/master/deploy/example/blobfuse-mi/README.md). That guide
grants Storage Blob Data Contributor for a read-write mount; the model volume is mounted read-only, so the kubelet
identity gets Storage Blob Data Reader, on the `models` container only: list and read blobs, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pulumi
from pulumi_azure_native import storage

from . import package
from .common import (
    ROLE_STORAGE_BLOB_DATA_READER,
    DiagnosticCategories,
    diagnostic_settings,
    private_endpoint,
    resource_lock,
    role_assignment,
)


class ModelStoreSku(StrEnum):
    """Storage account SKU of the model store (Premium block blobs: low-latency reads at model load)."""

    PREMIUM_LRS = "Premium_LRS"
    PREMIUM_ZRS = "Premium_ZRS"

KIND = "BlockBlobStorage"
# The storage account itself emits metrics only; its blob service emits the read/write/delete logs.
# https://learn.microsoft.com/azure/storage/blobs/monitor-blob-storage-reference
ACCOUNT_METRICS = DiagnosticCategories(log_category_groups=(), metrics=True)
BLOB_SERVICE_LOGS_AND_METRICS = DiagnosticCategories(log_category_groups=("allLogs",), metrics=True)


def blob_endpoint(account_name: str) -> str:
    """The account's blob endpoint in Azure public cloud; inside the VNet it resolves to the private endpoint."""
    return f"https://{account_name}.blob.core.windows.net"


@package.schema_args
@dataclass
class ModelStoreArgs:
    """Arguments of `ModelStore`; defaults are the secure choice."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the account (the platform's, not the node resource group AKS owns)."""
    location: pulumi.Input[str]
    """Azure region."""
    account_name: str
    """Globally unique storage account name (3-24 lowercase alphanumerics), known at plan time for the PV."""
    subscription_id: pulumi.Input[str]
    """Subscription of the role definitions."""
    private_endpoint_subnet_id: pulumi.Input[str]
    """Subnet of the account's blob private endpoint."""
    private_dns_zone_id: pulumi.Input[str]
    """`privatelink.blob.core.windows.net` zone the endpoint registers the account's A record in."""
    log_analytics_workspace_id: pulumi.Input[str]
    """Workspace for the blob service's read/write/delete logs and the account's metrics."""
    container_name: str = "models"
    """Container holding one directory per model (config.json, tokenizer, safetensors)."""
    reader_principal_ids: Sequence[pulumi.Input[str]] = ()
    """Principals that get Storage Blob Data Reader on the container (the AKS kubelet identity): read only."""
    sku_name: ModelStoreSku = ModelStoreSku.PREMIUM_LRS
    """Premium_ZRS in prod: the weights stay readable through a zone outage."""
    lock: bool = False
    """CanNotDelete lock (prod): the uploaded weights live here."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


class ModelStore(pulumi.ComponentResource):
    """A private Premium block blob account with a `models` container that the kubelet identity may read."""

    account_id: pulumi.Output[str]
    """ARM id of the storage account."""
    account_name: str
    """Name of the storage account."""
    container_name: str
    """Blob container with one directory per model."""
    blob_endpoint: str
    """Blob endpoint of the account (reached through its private endpoint)."""

    def __init__(self, name: str, args: ModelStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(ModelStoreArgs, args)
        super().__init__("inferforge:index:ModelStore", name, None,
                         package.aliased(opts, "inferforge:storage:ModelStore"))
        child = pulumi.ResourceOptions(parent=self)
        self.account = storage.StorageAccount(
            f"{name}-account",
            account_name=args.account_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind=KIND,
            sku=storage.SkuArgs(name=args.sku_name),
            public_network_access="Disabled",
            network_rule_set=storage.NetworkRuleSetArgs(default_action="Deny", bypass="None", ip_rules=[],
                                                        virtual_network_rules=[]),
            allow_blob_public_access=False,
            allow_shared_key_access=False,
            # The portal and tools default to Entra ID, matching shared key being off.
            default_to_o_auth_authentication=True,
            enable_https_traffic_only=True,
            minimum_tls_version="TLS1_2",
            allow_cross_tenant_replication=False,
            is_local_user_enabled=False,
            is_sftp_enabled=False,
            is_hns_enabled=False,
            encryption=storage.EncryptionArgs(
                key_source="Microsoft.Storage",
                # A second, infrastructure-level AES-256 layer; settable only at creation.
                require_infrastructure_encryption=True,
                services=storage.EncryptionServicesArgs(blob=storage.EncryptionServiceArgs(enabled=True,
                                                                                           key_type="Account")),
            ),
            tags=dict(args.tags),
            opts=child,
        )
        self.container = storage.BlobContainer(
            f"{name}-container",
            container_name=args.container_name,
            account_name=self.account.name,
            resource_group_name=args.resource_group_name,
            public_access="None",
            opts=child,
        )
        private_endpoint(
            f"{name}-pe",
            resource_group_name=args.resource_group_name,
            location=args.location,
            subnet_id=args.private_endpoint_subnet_id,
            target_resource_id=self.account.id,
            group_id="blob",
            private_dns_zone_id=args.private_dns_zone_id,
            tags=args.tags,
            parent=self,
        )
        diagnostic_settings(f"{name}-account", resource_id=self.account.id,
                            workspace_id=args.log_analytics_workspace_id, parent=self, categories=ACCOUNT_METRICS)
        diagnostic_settings(f"{name}-blob", resource_id=pulumi.Output.concat(self.account.id, "/blobServices/default"),
                            workspace_id=args.log_analytics_workspace_id, parent=self,
                            categories=BLOB_SERVICE_LOGS_AND_METRICS)
        self.reader_role_assignments = [
            role_assignment(
                f"{name}-blob-reader-{index}", scope=self.container.id, principal_id=principal,
                subscription_id=args.subscription_id, role_guid=ROLE_STORAGE_BLOB_DATA_READER, parent=self,
                description="AKS kubelet identity: blobfuse2 reads the model weights (read-only mount)")
            for index, principal in enumerate(args.reader_principal_ids)
        ]
        if args.lock:
            resource_lock(f"{name}-account", scope_resource=self.account, parent=self)

        self.account_name = args.account_name
        self.container_name = args.container_name
        self.account_id = self.account.id
        self.blob_endpoint = blob_endpoint(args.account_name)
        self.register_outputs({"account_id": self.account_id, "account_name": self.account_name,
                               "container_name": self.container_name, "blob_endpoint": self.blob_endpoint})
