"""The stack's configuration: one pydantic model over every `inferforge:` key, with environment baselines.

Config validation owns *structure* (types, ranges, names, CIDRs, cross-references such as the
tensor-parallel size against the pool's GPUs). Security and resilience *posture* is set by the
environment baseline and enforced by the policy pack (mandatory in prod), so a weakened prod config
(say Key Vault made public) is representable here and caught by `plan` naming the policy.

Errors name the YAML key (`inferforge:aks.gpuPools[0].maxCount`), the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from inferforge.components.aks import AksClusterArgs
from inferforge.components.azure_regions import AZURE_REGIONS, region_problem
from inferforge.components.common import tag_problems
from inferforge.components.egress import EgressFirewallArgs
from inferforge.components.frontdoor import FrontDoorArgs
from inferforge.components.gateway import AiGatewayArgs
from inferforge.components.gpu_sizes import GPU_VM_SIZES, allowed_tp_sizes
from inferforge.components.inference_args import shm_problem
from inferforge.components.keyvault import KeyVaultArgs
from inferforge.components.model_store import ModelStoreArgs
from inferforge.components.naming import DNS_1123_SUBDOMAIN, RULES, PlatformNames, node_label_problems
from inferforge.components.observability import ObservabilityArgs
from inferforge.components.postgres import PostgresPgvectorArgs
from inferforge.components.redis import ManagedRedisArgs
from inferforge.components.registry import ContainerRegistryArgs
from inferforge.components.vm_local_disks import (
    GPU_OS_DISK_GB,
    SYSTEM_OS_DISK_GB,
    TEMP_DISK_GIB,
    default_ephemeral_os_disk_gb,
    ephemeral_os_disk_problem,
)
from inferforge.inference import defaults as serving_defaults
from inferforge.inference.settings import ServingSettings, embeddings_problem, settings_fields
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel, to_snake

from .component_sections import embed
from .gpu_memory import ASSUMPTION, KNOWN_MODELS, GpuMemoryPlan, ModelShape, gib, known_model, plan_gpu_memory

NAMESPACE = "inferforge"
# Longest piece of a user's value echoed back in an error: a 100 kB value must not flood a PR check.
MAX_SHOWN_CHARS = 60


def shown(value: Any, *, quoted: bool = True) -> str:
    """User input for an error message (`repr` unless not quoted), cut to MAX_SHOWN_CHARS with its length said."""
    text = repr(value) if quoted else str(value)
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    length = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:MAX_SHOWN_CHARS]}... ({length})"


class ConfigError(Exception):
    """Stack configuration rejected; `problems` lists one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid stack configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class _Section(BaseModel):
    """Base of every config section: camelCase keys as in the YAML, unknown keys rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


Cidr = str


def _network(value: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        reason = str(exc) if len(str(exc)) <= MAX_SHOWN_CHARS else "not an IPv4 network"
        raise ValueError(f"{shown(value)} is not an IPv4 CIDR with host bits zero ({reason}); "
                         "allowed: a network such as 10.20.0.0/22") from None


# An Azure subnet name: 1-80 characters, letters/digits/`_.-`, starting alphanumeric, not ending in `.` or `-`
# (https://learn.microsoft.com/azure/azure-resource-manager/management/resource-name-rules#microsoftnetwork).
_SUBNET_NAME = r"^[A-Za-z0-9]([\w.-]{0,78}[\w])?$"
_VNET_ID = (r"(?i)^/subscriptions/[0-9a-f-]{36}/resourceGroups/[\w.()-]{1,90}/providers/"
            r"Microsoft\.Network/virtualNetworks/[\w.-]{2,64}$")


class ExistingSubnetsConfig(_Section):
    """Names of the landing zone's subnets inside `network.existingVnetId` (bring-your-own spoke)."""

    aks: str = Field(pattern=_SUBNET_NAME)
    private_endpoints: str = Field(pattern=_SUBNET_NAME)
    postgres: str = Field(pattern=_SUBNET_NAME)
    """Delegated to Microsoft.DBforPostgreSQL/flexibleServers by the platform team."""
    private_link: str = Field(pattern=_SUBNET_NAME)
    """privateLinkServiceNetworkPolicies Disabled, so the Private Link Service can take NAT IPs there."""

    @model_validator(mode="after")
    def _distinct(self) -> ExistingSubnetsConfig:
        names = [self.aks, self.private_endpoints, self.postgres, self.private_link]
        if len({n.lower() for n in names}) != len(names):
            raise ValueError(f"\tnames repeat ({', '.join(names)}); allowed: four different subnets")
        return self


class NetworkConfig(_Section):
    """The spoke: created by the stack, or (existingVnetId + existingSubnets) the landing zone's.

    The CIDR keys are the prefixes of the subnets either way: NetworkPolicies and the internal LB IP check use them.
    """

    address_space: Cidr = "10.20.0.0/16"
    aks_subnet: Cidr = "10.20.0.0/22"
    private_endpoint_subnet: Cidr = "10.20.4.0/24"
    postgres_subnet: Cidr = "10.20.5.0/24"
    private_link_subnet: Cidr = "10.20.6.0/24"
    existing_vnet_id: str | None = Field(None, pattern=_VNET_ID)
    existing_subnets: ExistingSubnetsConfig | None = None

    @property
    def bring_your_own(self) -> bool:
        """Whether the VNet and subnets are the landing zone's (the stack creates none)."""
        return self.existing_vnet_id is not None

    def subnet_names(self) -> dict[str, str]:
        """Subnet names by key: the landing zone's, else those components/network.py gives its own (`snet-<key>`)."""
        keys = ("aks", "private-endpoints", "postgres", "private-link")
        if self.existing_subnets is None:
            return {key: f"snet-{key}" for key in keys}
        given = self.existing_subnets
        return dict(zip(keys, (given.aks, given.private_endpoints, given.postgres, given.private_link), strict=True))

    @field_validator("address_space", "aks_subnet", "private_endpoint_subnet", "postgres_subnet",
                     "private_link_subnet")
    @classmethod
    def _is_cidr(cls, value: str) -> str:
        _network(value)
        return value

    @model_validator(mode="after")
    def _subnets_fit(self) -> NetworkConfig:
        vnet = _network(self.address_space)
        subnets = {to_camel(k): _network(getattr(self, k)) for k in
                   ("aks_subnet", "private_endpoint_subnet", "postgres_subnet", "private_link_subnet")}
        problems = []
        for key, net in subnets.items():
            if not net.subnet_of(vnet):
                problems.append(f"{key} {net} lies outside addressSpace {vnet}; allowed: a subnet inside {vnet}")
        keys = list(subnets)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                if subnets[a].overlaps(subnets[b]):
                    problems.append(f"{a} {subnets[a]} overlaps {b} {subnets[b]}; allowed: disjoint subnets")
        if subnets["postgresSubnet"].prefixlen > 28:
            problems.append(f"postgresSubnet {subnets['postgresSubnet']} is smaller than /28; allowed: /28 or larger")
        if self.existing_vnet_id is not None and self.existing_subnets is None:
            problems.append("existingSubnets is not set while existingVnetId is; allowed: the names of the aks, "
                            "privateEndpoints, postgres and privateLink subnets inside that VNet")
        if self.existing_subnets is not None and self.existing_vnet_id is None:
            problems.append("existingVnetId is not set while existingSubnets is; allowed: the ARM id of the VNet "
                            "that holds those subnets, or no existingSubnets (the stack creates its own)")
        if problems:
            raise ValueError("\n".join(problems))
        return self


class KeyVaultConfig(embed(KeyVaultArgs, ("sku", "public_network_access", "soft_delete_retention_days"),
                           base=_Section)):
    """The Key Vault settings a stack chooses: `KeyVaultArgs`' own fields (components/keyvault.py)."""


class PostgresConfig(embed(PostgresPgvectorArgs, ("version", "sku_name", "storage_size_gb", "database_name",
                                                  "backup_retention_days", "geo_redundant_backup",
                                                  "zone_redundant_ha", "password_auth"), base=_Section)):
    """`PostgresPgvectorArgs`' own fields (components/postgres.py), plus the SKU tier under its YAML name."""

    tier: Literal["Burstable", "GeneralPurpose", "MemoryOptimized"] = "Burstable"

    @model_validator(mode="after")
    def _ha_needs_non_burstable(self) -> PostgresConfig:
        if self.zone_redundant_ha and self.tier == "Burstable":
            raise ValueError("zoneRedundantHa is true with tier Burstable; allowed: tier GeneralPurpose or "
                             "MemoryOptimized for high availability")
        return self


class RedisConfig(embed(ManagedRedisArgs, ("sku_name", "high_availability", "public_network_access"),
                        base=_Section)):
    """`ManagedRedisArgs`' own fields (components/redis.py)."""


class FrontDoorConfig(embed(FrontDoorArgs, ("waf_mode", "rate_limit_per_minute",
                                           # Failover (issue 22): this origin's priority and weight, the probe.
                                           "origin_priority", "origin_weight", "probe_interval_seconds",
                                           "sample_size", "successful_samples_required", "latency_sensitivity_ms"),
                             base=_Section)):
    """`FrontDoorArgs`' own fields (components/frontdoor.py)."""

    @model_validator(mode="after")
    def _samples(self) -> FrontDoorConfig:
        if self.successful_samples_required > self.sample_size:
            raise ValueError(f"successfulSamplesRequired {self.successful_samples_required} is more than sampleSize "
                             f"{self.sample_size}; allowed: at most sampleSize")
        return self


# A stack that names no GPU pool (one created from the `pulumi new` template) gets one pool of this size:
# the smallest size that serves the default model (inference.modelName) at tensor-parallel size 1.
DEFAULT_GPU_POOL = "gpu"
DEFAULT_GPU_VM_SIZE = "Standard_NC24ads_A100_v4"


class GpuPoolConfig(_Section):
    name: str = DEFAULT_GPU_POOL
    vm_size: str = DEFAULT_GPU_VM_SIZE
    min_count: int = Field(0, ge=0, le=100)
    max_count: int = Field(1, ge=1, le=100)
    os_disk_size_gb: int | None = Field(None, ge=30, le=2048)
    os_disk_type: Literal["Ephemeral", "Managed"] = "Ephemeral"
    labels: dict[str, str] = Field(default_factory=dict)
    zones: list[Literal["1", "2", "3"]] | None = None

    @property
    def effective_os_disk_size_gb(self) -> int:
        """The configured OS disk size, else 256 GB shrunk to what an ephemeral disk on this size can hold."""
        if self.os_disk_size_gb is not None:
            return self.os_disk_size_gb
        if self.os_disk_type == "Ephemeral" and self.vm_size in TEMP_DISK_GIB:
            return default_ephemeral_os_disk_gb(self.vm_size, GPU_OS_DISK_GB)
        return GPU_OS_DISK_GB

    @field_validator("name")
    @classmethod
    def _pool_name(cls, value: str) -> str:
        problem = RULES["linux_node_pool"].violation(value)
        if problem:
            raise ValueError(problem)
        if value == "system":
            raise ValueError("'system' is the system pool's name; allowed: any other pool name")
        return value

    @field_validator("labels")
    @classmethod
    def _labels_kubernetes_accepts(cls, value: dict[str, str]) -> dict[str, str]:
        problems = node_label_problems(value)
        if problems:
            raise ValueError("\n".join(f"{shown(key, quoted=False)}\t{why}" for key, why in problems.items()))
        return value

    @field_validator("vm_size")
    @classmethod
    def _known_gpu_size(cls, value: str) -> str:
        if value not in GPU_VM_SIZES:
            raise ValueError(f"{shown(value)} is not a known GPU VM size; allowed: {', '.join(GPU_VM_SIZES)}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> GpuPoolConfig:
        if self.max_count < self.min_count:
            raise ValueError(f"maxCount {self.max_count} is less than minCount {self.min_count}; "
                             "allowed: maxCount >= minCount")
        if self.os_disk_type == "Ephemeral" and self.vm_size in GPU_VM_SIZES:
            problem = ephemeral_os_disk_problem(self.vm_size, self.effective_os_disk_size_gb)
            if problem:
                raise ValueError(problem)
        return self


_DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
# One hex digit repeated 64 times (all zeros, all f's, ...): a value someone typed to fill the slot.
_PLACEHOLDER_DIGEST = re.compile(r"^sha256:([0-9a-f])\1{63}$")


class ImageConfig(_Section):
    """An image in the platform's container registry (`registry.name`): repository plus digest or tag."""

    repository: str = Field(pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
    digest: str | None = Field(None, pattern=_DIGEST_PATTERN)
    tag: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

    @model_validator(mode="after")
    def _reference(self) -> ImageConfig:
        if not self.digest and not self.tag:
            raise ValueError("digest is not set and neither is tag; allowed: digest sha256:<64 hex> (required to run) "
                             "or tag (dev only)")
        if self.digest and _PLACEHOLDER_DIGEST.match(self.digest):
            raise ValueError(
                f"digest {self.digest[:15]}... is a placeholder, not an image; allowed: the digest of "
                f"{self.repository}:{self.tag or '<tag>'} in the platform registry, printed by "
                f"`az acr repository show -n <registry.name> --image {self.repository}:{self.tag or '<tag>'} "
                "--query digest -o tsv` after you pushed or imported it (README: First deployment)")
        return self

    def reference(self, login_server: str) -> str:
        """`<login server>/<repository>@<digest>` (or `:<tag>` when no digest is set)."""
        base = f"{login_server}/{self.repository}"
        return f"{base}@{self.digest}" if self.digest else f"{base}:{self.tag}"


class DevicePluginImageConfig(ImageConfig):
    """NVIDIA's device plugin, mirrored into the platform registry (`az acr import` from nvcr.io)."""

    repository: str = Field("mirror/nvidia/k8s-device-plugin", pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
    tag: str | None = Field("v0.17.1", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ImageIntegrityConfig(_Section):
    """Admission of signed images only (components/image_integrity.py): Ratify behind the Azure Policy add-on."""

    effect: Literal["Deny", "Audit"] = "Deny"
    certificate_name: str = Field("inferforge-image-signing", pattern=r"^[0-9A-Za-z-]{1,127}$")
    trusted_identities: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=20)
    # Ratify's chart and images, mirrored into the platform registry (README: Releases).
    chart_repository: str = Field("helm/ratify", pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
    chart_version: str = Field("1.15.0", pattern=r"^\d+\.\d+\.\d+$")
    image: ImageConfig = Field(default_factory=lambda: ImageConfig(repository="mirror/ratify", tag="v1.4.0"))
    crd_image: ImageConfig = Field(default_factory=lambda: ImageConfig(repository="mirror/ratify-crds", tag="v1.4.0"))


class RegistryConfig(embed(ContainerRegistryArgs, ("public_network_access", "replica_locations"), base=_Section)):
    """`ContainerRegistryArgs`' own fields (components/registry.py), plus the registry name (None: derived)."""

    name: str | None = Field(None, pattern=r"^[a-zA-Z0-9]{5,50}$")


class AksConfig(embed(AksClusterArgs, ("kubernetes_version", "sku_tier", "private_cluster", "system_vm_size",
                                       "system_min_count", "system_max_count", "system_os_disk_type",
                                       "encryption_at_host", "upgrade_channel", "node_os_upgrade_channel",
                                       "authorized_ip_ranges", "admin_group_object_ids"),
                      base=_Section)):
    """`AksClusterArgs`' own fields (components/aks.py), plus what the stack narrows or derives."""

    # Narrower than the component's: zone names, and None = derived from the VM size's temp disk.
    system_zones: list[Literal["1", "2", "3"]] | None = None
    system_os_disk_size_gb: int | None = Field(None, ge=30, le=2048)
    gpu_pools: list[GpuPoolConfig] = Field(default_factory=lambda: [GpuPoolConfig()], min_length=1)
    nvidia_device_plugin_image: DevicePluginImageConfig = Field(default_factory=DevicePluginImageConfig)
    image_integrity: ImageIntegrityConfig = Field(default_factory=ImageIntegrityConfig)

    @property
    def effective_system_os_disk_size_gb(self) -> int:
        """The configured system OS disk size, else 128 GB shrunk to the system size's temp disk."""
        if self.system_os_disk_size_gb is not None:
            return self.system_os_disk_size_gb
        if self.system_os_disk_type == "Ephemeral" and self.system_vm_size in TEMP_DISK_GIB:
            return default_ephemeral_os_disk_gb(self.system_vm_size, SYSTEM_OS_DISK_GB)
        return SYSTEM_OS_DISK_GB

    @field_validator("authorized_ip_ranges", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # A prompt answer (`pulumi new`, `pulumi config set`) is one string: "203.0.113.0/24, 198.51.100.7/32".
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("authorized_ip_ranges")
    @classmethod
    def _ranges(cls, value: list[str]) -> list[str]:
        for cidr in value:
            _network(cidr)
        return value

    @field_validator("admin_group_object_ids")
    @classmethod
    def _guids(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", item):
                raise ValueError(f"{shown(item)} is not an Entra object id; allowed: a GUID")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AksConfig:
        problems = []
        if self.system_max_count < self.system_min_count:
            problems.append(f"systemMaxCount {self.system_max_count} is less than systemMinCount "
                            f"{self.system_min_count}; allowed: systemMaxCount >= systemMinCount")
        if not self.private_cluster and not self.authorized_ip_ranges:
            problems.append("privateCluster is false but authorizedIpRanges is empty; allowed: a private cluster, "
                            "or a public API server limited to at least one CIDR")
        if self.system_os_disk_type == "Ephemeral":
            problem = ephemeral_os_disk_problem(self.system_vm_size, self.effective_system_os_disk_size_gb,
                                                size_key="systemOsDiskSizeGb", type_key="systemOsDiskType")
            if problem:
                problems.append(problem)
        names = [p.name for p in self.gpu_pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"gpuPools names repeat ({', '.join(duplicates)}); allowed: unique names")
        if problems:
            raise ValueError("\n".join(problems))
        return self


# The built-in storage classes of the AKS Blob and Files CSI drivers provision a storage account with a public
# endpoint in the node resource group (https://learn.microsoft.com/azure/aks/azure-blob-csi), which the nodes reach
# by FQDN, i.e. through the egress firewall: a class prefix -> the FQDN the firewall must allow for it.
DYNAMIC_STORAGE_CLASS_FQDNS = {"azureblob": "*.blob.core.windows.net", "azurefile": "*.file.core.windows.net"}
# https://learn.microsoft.com/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata
_BLOB_CONTAINER = r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$"


class ModelSourceConfig(_Section):
    kind: Literal["modelStore", "pvc", "download"] = "modelStore"
    storage_class: str = "azureblob-fuse-premium"
    size_gi: int = Field(256, ge=1, le=16384)
    existing_claim: str | None = None
    sub_path: str = ""
    repo_id: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$")
    revision: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")

    @field_validator("storage_class", "existing_claim")
    @classmethod
    def _kubernetes_name(cls, value: str | None) -> str | None:
        problem = DNS_1123_SUBDOMAIN.violation(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("sub_path")
    @classmethod
    def _relative_path_inside_the_volume(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"{shown(value)} leaves the volume; allowed: a relative path inside it, without '..'")
        return value

    @model_validator(mode="after")
    def _keys_fit_the_kind(self) -> ModelSourceConfig:
        problems = []
        if self.kind == "download" and not (self.repo_id and self.revision):
            problems.append("kind is 'download' but repoId and revision are not both set; allowed: "
                            "repoId 'owner/name' and revision = a 40-hex commit SHA")
        # Keys of another kind would be ignored silently: a user who sets storageClass expects it to matter.
        owners = {"storageClass": "pvc", "existingClaim": "pvc", "repoId": "download", "revision": "download"}
        for key, kind in owners.items():
            if to_snake(key) in self.model_fields_set and self.kind != kind:
                problems.append(f"{key} applies to kind '{kind}' only, but kind is '{self.kind}'; allowed: "
                                f"remove {key}, or kind '{kind}'")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def dynamic_storage_fqdn(self) -> str | None:
        """The FQDN a dynamically provisioned claim of a built-in Azure storage class reaches, if this is one."""
        if self.kind != "pvc" or self.existing_claim is not None:
            return None
        return next((fqdn for prefix, fqdn in DYNAMIC_STORAGE_CLASS_FQDNS.items()
                     if self.storage_class.startswith(prefix)), None)


class ModelStoreConfig(embed(ModelStoreArgs, ("container_name", "sku_name"), base=_Section)):
    """The platform's model store (components/model_store.py), used by inference.modelSource.kind modelStore:
    `ModelStoreArgs`' own fields, plus the account name (None: derived from the stack's names)."""

    account_name: str | None = Field(None, pattern=r"^[a-z0-9]{3,24}$")

    @field_validator("container_name")
    @classmethod
    def _container_name(cls, value: str) -> str:
        if not re.fullmatch(_BLOB_CONTAINER, value):
            raise ValueError(f"{shown(value)} is not a blob container name; allowed: 3-63 lowercase letters, digits "
                             "and single hyphens, starting and ending alphanumeric")
        return value


class AutoscalingConfig(_Section):
    enabled: bool = False
    prometheus_server_address: str | None = Field(None, pattern=r"^https?://")
    min_replicas: int = Field(1, ge=1, le=100)
    max_replicas: int = Field(2, ge=1, le=100)
    metric: Literal["vllm:num_requests_waiting", "vllm:num_requests_running"] = "vllm:num_requests_waiting"
    target_per_replica: int = Field(4, ge=1, le=10000)

    @model_validator(mode="after")
    def _complete(self) -> AutoscalingConfig:
        if self.enabled:
            # A ScaledObject without the KEDA add-on is never acted on, and without a Prometheus source KEDA
            # can read with a credential the platform provisions, the trigger errors: refuse rather than
            # deploy a scaler that silently does nothing.
            raise ValueError(
                "enabled is true, but autoscaling needs what this platform does not provision yet: the AKS "
                "KEDA add-on (workloadAutoScalerProfile.keda), a Prometheus source scraping the server "
                "(Azure Monitor managed Prometheus workspace + data collection rule) and a KEDA "
                "TriggerAuthentication with workload identity allowed to query it; allowed: false (the "
                "Deployment runs inference.replicas pods)")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas {self.max_replicas} is less than minReplicas {self.min_replicas}; "
                             "allowed: maxReplicas >= minReplicas")
        return self


class PgvectorJobConfig(_Section):
    # Mirrored into the platform registry with `az acr import` (README: First deployment).
    azure_cli_image: ImageConfig = Field(
        default_factory=lambda: ImageConfig(repository="mirror/azure-cli", tag="2.67.0"))
    postgres_client_image: ImageConfig = Field(
        default_factory=lambda: ImageConfig(repository="mirror/postgres", tag="16-alpine"))


class ModelShapeConfig(_Section):
    """A model's architecture facts (its config.json), for models not in stacks/gpu_memory.py's table."""

    num_layers: int = Field(ge=1, le=1024)
    num_kv_heads: int = Field(ge=1, le=1024)
    head_dim: int = Field(ge=1, le=4096)
    num_params: int = Field(ge=1_000_000, le=10**13)


# ---- canary: a second server version of a model beside the stable one (issue 24 item 5) ----------------------

CANARY_VERSIONS = ("stable", "canary")


class CanaryConfig(_Section):
    """A second server image of the same model (same settings, weights and GPU pool) beside the stable one, in a
    namespace of its own, with a share of the model's requests: the gateway routes by `traffic` (gateway/routing.py).
    `python -m stacks canary check` compares the two on their metrics; promote or roll back by editing this section
    (README: Canary releases)."""

    image: ImageConfig
    replicas: int = Field(1, ge=1, le=100)
    # Unset: `<namespace>-canary` (the Deployment is `inference-canary`, its own Service, PDB and NetworkPolicy).
    namespace: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    traffic: dict[str, int] = Field(description="percent of the model's requests per version: stable and canary")

    @field_validator("traffic")
    @classmethod
    def _shares(cls, value: dict[str, int]) -> dict[str, int]:
        problems = [f"{shown(name, quoted=False)}\tunknown version; allowed: {', '.join(CANARY_VERSIONS)}"
                    for name in value if name not in CANARY_VERSIONS]
        problems += [f"{name}\tshare {share} is out of range; allowed: 0-100" for name, share in value.items()
                     if name in CANARY_VERSIONS and not 0 <= share <= 100]
        missing = [name for name in CANARY_VERSIONS if name not in value]
        if missing:
            problems.append(f"\tno share for {', '.join(missing)}; allowed: a share for each of "
                            f"{', '.join(CANARY_VERSIONS)}, summing to 100 (e.g. stable: 95, canary: 5)")
        elif not problems and sum(value.values()) != 100:
            problems.append(f"\tshares sum to {sum(value.values())} ({', '.join(f'{k} {v}' for k, v in value.items())})"
                            "; allowed: shares summing to 100")
        if problems:
            raise ValueError("\n".join(problems))
        return value


# The serving settings the stack chooses: all of them (inference/settings.py declares each once).
_SERVING_SETTINGS = tuple(f.name for f in settings_fields())


class InferenceConfig(embed(ServingSettings, _SERVING_SETTINGS, base=_Section,
                            # The GPU-memory check prices a context length, so a stack always names one.
                            defaults={"max_model_len": serving_defaults.STACK_MAX_MODEL_LEN},
                            keys={"drain_timeout_s": "drainTimeoutSeconds"})):
    namespace: str = Field("inference", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    service_account: str = Field("inference", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    gpu_pool: str = DEFAULT_GPU_POOL
    model_name: str = Field("qwen2.5-7b-instruct", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
    model_source: ModelSourceConfig = Field(default_factory=ModelSourceConfig)
    model_shape: ModelShapeConfig | None = None
    # The server image (inference/Dockerfile) as pushed to the platform registry.
    image: ImageConfig = Field(default_factory=lambda: ImageConfig(repository="inferforge/inference", tag="0.1.0"))
    replicas: int = Field(1, ge=1, le=100)
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    cpu: int = Field(8, ge=1, le=512)
    memory_gi: int = Field(64, ge=1, le=4096)
    shm_size_gi: int = Field(16, ge=1, le=1024)
    startup_timeout_seconds: int = Field(1800, ge=60, le=7200)
    pre_stop_sleep_seconds: int = Field(15, ge=0, le=300)
    api_key_secret_name: str = Field("inference-api-keys", pattern=r"^[0-9A-Za-z-]{1,127}$")
    # Near the top of the default network.aksSubnet (10.20.0.0/22), away from the nodes' and pods' addresses.
    internal_load_balancer_ip: str = "10.20.3.250"
    pgvector_job: PgvectorJobConfig = Field(default_factory=PgvectorJobConfig)
    # Dimension of the RAG embeddings table (rag.embeddings, HNSW index) the schema Job creates; the
    # embedding model's output width. Unset: no table. pgvector indexes at most 2000 dimensions.
    embedding_dimensions: int | None = Field(None, ge=1, le=2000)
    canary: CanaryConfig | None = None

    @property
    def canary_namespace(self) -> str | None:
        """The canary's namespace: `canary.namespace`, or `<namespace>-canary`; None without a canary."""
        if self.canary is None:
            return None
        return self.canary.namespace or f"{self.namespace}-canary"

    @model_validator(mode="after")
    def _embeddings_fit(self) -> InferenceConfig:
        problem = embeddings_problem(self.embeddings, self.tp_size, {"embeddings": "embeddings", "tp_size": "tpSize"},
                                     instead="embeddings off")
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _shm_fits(self) -> InferenceConfig:
        # The component's rule, not a second one: a config that passes here deploys (issue 14).
        problem = shm_problem(self.shm_size_gi, self.memory_gi, self.tp_size,
                              keys=("shmSizeGi", "memoryGi", "tpSize"))
        if problem:
            raise ValueError(f"shmSizeGi {problem}")
        return self


# FQDNs an allow-list may name: DNS labels, optionally one leading "*." wildcard (as Azure Firewall application
# rules accept them); no scheme, path, port or bare "*" (that would allow everything).
_FQDN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_ARM_ID = re.compile(r"^/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[\w.()-]{1,90}/providers/[\w./-]+$")
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
                    r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


class GatewayEntraConfig(_Section):
    """Entra ID access tokens the gateway accepts besides its API keys (gateway/entra.py)."""

    tenant_ids: list[str] = Field(default_factory=list, max_length=50)
    audience: str | None = Field(None, min_length=1, max_length=256)

    @field_validator("tenant_ids")
    @classmethod
    def _guids(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", v)]
        if bad:
            raise ValueError(f"{shown(bad[0])} is not an Entra tenant id; allowed: lowercase GUIDs")
        return value

    @model_validator(mode="after")
    def _audience(self) -> GatewayEntraConfig:
        if self.tenant_ids and not self.audience:
            raise ValueError("audience is required when tenantIds is set: the gateway's application ID URI, "
                             "e.g. api://inferforge-gateway")
        return self


class GatewayConfig(embed(AiGatewayArgs, ("replicas", "max_replicas", "target_cpu_percent", "cpu_millicores",
                                          "memory_mib", "max_tokens_cap", "content_safety_endpoint", "database_schema",
                                          "key_pepper_secret_name"), base=_Section)):
    """The AI gateway in front of the models (components/gateway.py, gateway/): on by default, so every request
    is authenticated per tenant, limited, metered and audited; off puts the model server itself behind Front
    Door with its static keys."""

    enabled: bool = True
    namespace: str = Field("gateway", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    image: ImageConfig = Field(default_factory=lambda: ImageConfig(repository="inferforge/gateway", tag="0.1.0"))
    entra: GatewayEntraConfig = Field(default_factory=GatewayEntraConfig)

    @model_validator(mode="after")
    def _replicas(self) -> GatewayConfig:
        if self.max_replicas < self.replicas:
            raise ValueError(f"maxReplicas must be >= replicas ({self.replicas}), got {self.max_replicas}")
        return self


class FirewallConfig(embed(EgressFirewallArgs, ("sku_tier", "threat_intel_mode"), base=_Section)):
    """`EgressFirewallArgs`' own fields (components/egress.py), plus the firewall's subnets and zones."""

    # Beside the default network subnets (10.20.0.0/16); unused when hub is set (the hub's firewall is used).
    subnet: Cidr | None = "10.20.7.0/26"
    management_subnet: Cidr | None = "10.20.7.64/26"
    zones: list[Literal["1", "2", "3"]] | None = None

    @field_validator("subnet", "management_subnet")
    @classmethod
    def _firewall_subnet(cls, value: str | None) -> str | None:
        if value is not None and _network(value).prefixlen > 26:
            raise ValueError(f"{shown(value)} is smaller than /26; allowed: /26 or larger (Azure Firewall subnets)")
        return value

    @model_validator(mode="after")
    def _tier_fits(self) -> FirewallConfig:
        problems = []
        if self.sku_tier == "Basic" and self.threat_intel_mode == "Deny":
            problems.append("threatIntelMode Deny is not available on skuTier Basic (alert only); allowed: Alert, "
                            "or skuTier Standard/Premium")
        if self.sku_tier == "Basic" and self.management_subnet is None:
            problems.append("managementSubnet is not set; skuTier Basic needs an AzureFirewallManagementSubnet "
                            "(/26); allowed: a /26 inside network.addressSpace")
        if problems:
            raise ValueError("\n".join(problems))
        return self


class EgressConfig(_Section):
    firewall: FirewallConfig = Field(default_factory=FirewallConfig)
    allowed_fqdns: list[str] = Field(default_factory=list, max_length=100)

    @field_validator("allowed_fqdns")
    @classmethod
    def _fqdns(cls, value: list[str]) -> list[str]:
        for fqdn in value:
            if not (isinstance(fqdn, str) and len(fqdn) <= 253 and _FQDN.match(fqdn)):
                raise ValueError(f"{shown(fqdn)} is not a host name; allowed: a lowercase FQDN such as "
                                 "'huggingface.co' or '*.example.com' (no scheme, path, port, IP or bare '*')")
        duplicates = sorted({f for f in value if value.count(f) > 1})
        if duplicates:
            raise ValueError(f"entries repeat ({', '.join(duplicates)}); allowed: unique FQDNs")
        return value


class HubConfig(_Section):
    firewall_private_ip: str
    vnet_id: str = Field(pattern=_ARM_ID.pattern)
    firewall_public_ip: str | None = None
    dns_servers: list[str] = Field(default_factory=list)
    private_dns_zone_ids: dict[Literal["keyVault", "redis", "postgres", "blob"], str] = Field(default_factory=dict)

    @field_validator("firewall_private_ip", "firewall_public_ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"{shown(value)} is not an IPv4 address; allowed: an address such as 10.0.1.4") from None
        return value

    @field_validator("dns_servers")
    @classmethod
    def _dns_ips(cls, value: list[str]) -> list[str]:
        for item in value:
            cls._ip(item)
        return value

    @field_validator("private_dns_zone_ids")
    @classmethod
    def _zone_ids(cls, value: dict[str, str]) -> dict[str, str]:
        expected = {"keyVault": "privatelink.vaultcore.azure.net", "redis": "privatelink.redis.azure.net",
                    "blob": "privatelink.blob.core.windows.net"}
        problems = []
        for key, zone_id in value.items():
            zone = zone_id.rsplit("/", 1)[-1].lower()
            if not _ARM_ID.match(zone_id) or "/providers/microsoft.network/privatednszones/" not in zone_id.lower():
                problems.append(f"{key}\t{shown(zone_id)} is not a private DNS zone id; allowed: /subscriptions/<id>/"
                                "resourceGroups/<rg>/providers/Microsoft.Network/privateDnsZones/<zone>")
            elif key in expected and zone != expected[key]:
                problems.append(f"{key}\tzone {shown(zone)} is not {expected[key]}; allowed: the {key} zone")
            elif key == "postgres" and not zone.endswith(".postgres.database.azure.com"):
                problems.append(f"{key}\tzone {shown(zone)} does not end in .postgres.database.azure.com; "
                                "allowed: a PostgreSQL flexible server private zone")
        if problems:
            raise ValueError("\n".join(problems))
        return value


class AlertsConfig(_Section):
    email_receivers: list[str] = Field(default_factory=list, max_length=20)
    gpu_pool_at_max_minutes: Literal[15, 30, 45, 60, 120, 180, 360, 720, 1440] = 30
    error_rate_percent: float = Field(5, gt=0, le=100)
    queue_depth_threshold: int = Field(16, ge=1, le=100000)
    prometheus_workspace_id: str | None = Field(None, pattern=_ARM_ID.pattern)

    @field_validator("email_receivers")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for address in value:
            if not (isinstance(address, str) and len(address) <= 254 and _EMAIL.match(address)):
                raise ValueError(f"{shown(address)} is not an email address; allowed: name@example.com")
        return value


class ObservabilityConfig(embed(ObservabilityArgs, ("retention_days", "daily_quota_gb"), base=_Section)):
    """`ObservabilityArgs`' own fields (components/observability.py), plus the audit settings."""

    activity_log_export: bool = True
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)


class PlatformConfig(_Section):
    """Every `inferforge:` key of a stack."""

    environment: Literal["dev", "test", "prod"]
    location: str = Field(pattern=r"^[a-z][a-z0-9]{2,30}$")
    workload: str = Field("inferforge", pattern=r"^[a-z][a-z0-9]{1,13}$")
    owner: str = Field(min_length=1, max_length=256)
    cost_center: str = Field(min_length=1, max_length=256)
    extra_tags: dict[str, str] = Field(default_factory=dict)
    resource_locks: bool = False
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    key_vault: KeyVaultConfig = Field(default_factory=KeyVaultConfig)
    postgres: PostgresConfig = Field(default_factory=PostgresConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    front_door: FrontDoorConfig = Field(default_factory=FrontDoorConfig)
    aks: AksConfig = Field(default_factory=AksConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    model_store: ModelStoreConfig = Field(default_factory=ModelStoreConfig)
    # A new stack starts in the first phase: its images exist only once the registry it creates does.
    deploy_workloads: bool = False
    egress: EgressConfig = Field(default_factory=EgressConfig)
    hub: HubConfig | None = None
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    # Several models behind the gateway: each its own InferenceService (GPU pool, TP size, replicas, its
    # own namespace). Omitted, the one `inference` section is the list.
    models: list[InferenceConfig] = Field(default_factory=list, max_length=16)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_baseline(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("environment") not in BASELINES:
            return data
        return _deep_merge(BASELINES[data["environment"]], data)

    @field_validator("extra_tags")
    @classmethod
    def _tags_azure_accepts(cls, value: dict[str, str]) -> dict[str, str]:
        problems = tag_problems(value)
        if problems:
            # One line per tag, each starting with the key it is about (see _describe).
            raise ValueError("\n".join(f"{shown(name, quoted=False)}\t{why}"
                                        for name, why in problems.items()))
        return value

    @property
    def names(self) -> PlatformNames:
        return PlatformNames(workload=self.workload, environment=self.environment, location=self.location)

    @property
    def model_store_account(self) -> str:
        """The model store's storage account name: `modelStore.accountName`, or the CAF default `st<workload><env>`."""
        return self.model_store.account_name or self.names.model_store_account

    @property
    def uses_model_store(self) -> bool:
        """Whether the stack creates the model store (some model's weights come from it)."""
        return any(model.model_source.kind == "modelStore" for _, model in self.served_models)

    @property
    def served_models(self) -> list[tuple[str, InferenceConfig]]:
        """(YAML key, section) of every model the stack serves: `models[i]`, else the one `inference` section."""
        if self.models:
            return [(f"models[{i}]", model) for i, model in enumerate(self.models)]
        return [("inference", self.inference)]

    @property
    def front_model(self) -> tuple[str, InferenceConfig]:
        """The first served model: its section sets what the platform has once (the private origin's address,
        the pgvector Job and its RAG table)."""
        return self.served_models[0]

    @property
    def registry_name(self) -> str:
        """The container registry's name: `registry.name`, or the CAF default `cr<workload><env>`."""
        return self.registry.name or self.names.container_registry

    def images(self) -> dict[str, ImageConfig]:
        """Every image the workloads run, by the YAML key that sets it."""
        key, front = self.front_model
        return {**{f"{k}.image": model.image for k, model in self.served_models},
                **{f"{k}.canary.image": model.canary.image for k, model in self.served_models if model.canary},
                f"{key}.pgvectorJob.azureCliImage": front.pgvector_job.azure_cli_image,
                f"{key}.pgvectorJob.postgresClientImage": front.pgvector_job.postgres_client_image,
                "aks.nvidiaDevicePluginImage": self.aks.nvidia_device_plugin_image,
                "aks.imageIntegrity.image": self.aks.image_integrity.image,
                "aks.imageIntegrity.crdImage": self.aks.image_integrity.crd_image,
                **({"gateway.image": self.gateway.image} if self.gateway.enabled else {})}

    def _image_problems(self) -> list[str]:
        # Only images that will run need a digest: the first `up` (deployWorkloads false) creates the
        # registry they are pushed to, and only then do the digests exist. Every environment runs pinned
        # images (dev differs from prod in size and redundancy, not in posture).
        if not self.deploy_workloads:
            return []
        return [f"{key}.digest is not set; allowed: only images pinned by digest (sha256:<64 hex>), tags "
                f"are mutable; push or import {image.repository}:{image.tag or '<tag>'} into registry "
                f"'{self.registry_name}' and set its digest (README: First deployment), or set "
                "deployWorkloads: false until then"
                for key, image in self.images().items() if not image.digest]

    @model_validator(mode="after")
    def _cross_checks(self) -> PlatformConfig:
        problems = []
        for rule_key, name in self.names.checks().items():
            problem = RULES[rule_key].violation(name)
            if problem:
                problems.append(f"workload '{self.workload}' gives an invalid name: {problem}")
        problems += self._served_models_problems()
        problems += self._canary_problems()
        pools = {p.name: p for p in self.aks.gpu_pools}
        for key, model in self.served_models:
            pool = pools.get(model.gpu_pool)
            if pool is None:
                problems.append(f"{key}.gpuPool '{model.gpu_pool}' is not a pool in aks.gpuPools; "
                                f"allowed: {', '.join(pools)}")
                continue
            allowed = allowed_tp_sizes(pool.vm_size)
            if model.tp_size not in allowed:
                problems.append(
                    f"{key}.tpSize {model.tp_size} does not fit {pool.vm_size} "
                    f"({GPU_VM_SIZES[pool.vm_size].gpus} GPUs per node, pool '{pool.name}'); "
                    f"allowed: {', '.join(map(str, allowed))}")
            else:
                problems.extend(self._gpu_memory_problems(pool, key, model))
        key, front = self.front_model
        try:
            ip = ipaddress.IPv4Address(front.internal_load_balancer_ip)
        except ValueError:
            problems.append(f"{key}.internalLoadBalancerIp '{front.internal_load_balancer_ip}' is not "
                            "an IPv4 address; allowed: a free address in network.aksSubnet")
        else:
            aks_subnet = _network(self.network.aks_subnet)
            usable = list(aks_subnet.hosts())[3:]  # Azure reserves the first hosts of each subnet
            if ip not in usable:
                problems.append(f"{key}.internalLoadBalancerIp {ip} is not a usable address of network.aksSubnet "
                                f"{aks_subnet}; allowed: {usable[0]}-{usable[-1]}")
        problems += self._image_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self


    def _served_models_problems(self) -> list[str]:
        """`models` replaces `inference`; each model has its own name and namespace; more than one needs the
        gateway (Front Door has one origin, and only the gateway routes on `model`)."""
        if not self.models:
            return []
        problems = []
        if "inference" in self.model_fields_set:
            problems.append("inference is set beside models; allowed: one of them (list the model under models)")
        for field, label in (("model_name", "modelName"), ("namespace", "namespace")):
            seen: dict[str, int] = {}
            for i, model in enumerate(self.models):
                value = getattr(model, field)
                if value in seen:
                    problems.append(f"models[{i}].{label} '{value}' is also models[{seen[value]}].{label}; "
                                    f"allowed: a {label} per model (each model runs in its own namespace)")
                seen.setdefault(value, i)
        if len(self.models) > 1 and not self.gateway.enabled:
            problems.append(f"models lists {len(self.models)} models but gateway.enabled is false; allowed: "
                            "gateway.enabled true (only the gateway routes requests on `model`), or one model")
        return problems

    def _canary_problems(self) -> list[str]:
        """A canary needs the gateway (only it splits a model's requests) and a namespace no other server uses."""
        problems = []
        namespaces = {model.namespace: key for key, model in self.served_models}
        for key, model in self.served_models:
            namespace = model.canary_namespace
            if namespace is None:
                continue
            if not self.gateway.enabled:
                problems.append(f"{key}.canary is set but gateway.enabled is false; allowed: gateway.enabled true "
                                "(the gateway splits the model's requests between the versions), or no canary")
            if len(namespace) > 63:
                problems.append(f"{key}.canary.namespace '{namespace}' is longer than 63 characters; allowed: a "
                                "shorter canary.namespace (default <namespace>-canary)")
            if namespace in namespaces:
                problems.append(f"{key}.canary.namespace '{namespace}' is also {namespaces[namespace]}.namespace; "
                                "allowed: a namespace of the canary's own")
            namespaces.setdefault(namespace, f"{key}.canary")
        return problems

    def gpu_memory_plans(self) -> list[tuple[str, InferenceConfig, GpuPoolConfig, GpuMemoryPlan | None]]:
        """(key, model, its GPU pool, the engine's KV plan on one of its GPUs or None for an unknown model) per
        served model whose pool exists (stacks/gpu_memory.py; `plan` prints these)."""
        pools = {p.name: p for p in self.aks.gpu_pools}
        return [(key, model, pools[model.gpu_pool], self._gpu_memory_plan(pools[model.gpu_pool], model))
                for key, model in self.served_models if model.gpu_pool in pools]

    @staticmethod
    def _gpu_memory_plan(pool: GpuPoolConfig, inference: InferenceConfig) -> GpuMemoryPlan | None:
        shape = (ModelShape(**inference.model_shape.model_dump()) if inference.model_shape is not None
                 else known_model(inference.model_name))
        if shape is None:
            return None
        return plan_gpu_memory(shape, tp_size=inference.tp_size, dtype=inference.dtype,
                               max_batch_size=inference.max_batch_size, max_model_len=inference.max_model_len,
                               gpu_bytes=GPU_VM_SIZES[pool.vm_size].memory_bytes,
                               kv_block_size=inference.kv_block_size,
                               gpu_memory_utilization=inference.gpu_memory_utilization,
                               kv_cache_memory_gib=inference.kv_cache_memory_gib)

    def _gpu_memory_problems(self, pool: GpuPoolConfig, key: str, inference: InferenceConfig) -> list[str]:
        """A full batch at full context must fit the KV pool the engine would size on one GPU of the pool (its own
        planner, inference/kv_plan.py, through stacks/gpu_memory.py)."""
        plan = self._gpu_memory_plan(pool, inference)
        if plan is None:
            return [f"{key}.modelName '{inference.model_name}' is not a known model, so whether it fits "
                    f"the GPU cannot be checked; allowed: one of {', '.join(KNOWN_MODELS)}, or set "
                    f"{key}.modelShape {{numLayers, numKvHeads, headDim, numParams}} from its config.json"]
        gpu = GPU_VM_SIZES[pool.vm_size]
        if plan.fits:
            return []
        where = f"{pool.vm_size} (pool '{pool.name}', {gib(plan.gpu_bytes)} per {gpu.gpu_model} GPU)"
        if plan.explicit_kv and plan.pool_blocks >= plan.needed_blocks:
            budget = (f"that pool plus {gib(plan.weight_bytes)} weights, {gib(plan.runtime_bytes)} CUDA runtime "
                      f"(estimated) and {gib(plan.reserve_bytes)} activation reserve come to {gib(plan.needed_bytes)}"
                      f", more than {where} holds")
        elif plan.explicit_kv:
            budget = f"a kvCacheMemoryGib {inference.kv_cache_memory_gib:g} pool of {plan.pool_blocks} blocks"
        else:
            budget = (f"{gib(max(0, plan.kv_budget_bytes))} for the KV pool: gpuMemoryUtilization "
                      f"{plan.gpu_memory_utilization:g} of {where}, less {gib(plan.weight_bytes)} weights, "
                      f"{gib(plan.runtime_bytes)} CUDA runtime (estimated) and {gib(plan.reserve_bytes)} "
                      "activation reserve")
        needs = (f"'{inference.model_name}' at tpSize {inference.tp_size} in {inference.dtype}: {ASSUMPTION} needs "
                 f"{plan.max_batch_size} x {plan.blocks_per_sequence} KV blocks of {plan.block_size} tokens x "
                 f"{plan.kv_bytes_per_token // 1024} KiB = {gib(plan.kv_bytes)} per GPU, and there is {budget}")
        fitting = plan.max_batch_size_that_fits()
        if fitting >= 1:
            allowed = (f"maxBatchSize <= {fitting} at maxModelLen {plan.max_model_len}, or maxModelLen <= "
                       f"{plan.max_model_len_at(inference.max_batch_size)} at maxBatchSize {inference.max_batch_size}, "
                       "or a larger tpSize / a GPU with more memory")
        else:
            allowed = "a larger tpSize or a GPU with more memory (the weights alone leave no room for the KV cache)"
        return [f"{key}.maxBatchSize {inference.max_batch_size} with maxModelLen {inference.max_model_len} does "
                f"not fit the GPU: {needs}; allowed: {allowed}"]

    # --- Region (issue 22): the name against Azure's list, zones only where the region has them. ---------------

    @field_validator("location")
    @classmethod
    def _azure_region(cls, value: str) -> str:
        problem = region_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _zones_exist_in_the_region(self) -> PlatformConfig:
        region = AZURE_REGIONS.get(self.location)
        if region is None:
            return self
        zonal = {} if region.zones else {
            "aks.systemZones": self.aks.system_zones, "egress.firewall.zones": self.egress.firewall.zones,
            **{f"aks.gpuPools[{i}].zones": p.zones for i, p in enumerate(self.aks.gpu_pools)}}
        problems = [f"{key} {zones} names availability zones, but location {self.location} has none; allowed: no "
                    f"{key.rsplit('.', 1)[-1]} (a regional deployment), or a region with zones"
                    for key, zones in zonal.items() if zones]
        if self.postgres.zone_redundant_ha and not region.zones:
            problems.append(f"postgres.zoneRedundantHa is true, but location {self.location} has no availability "
                            "zones; allowed: false, or a region with zones")
        for i, replica in enumerate(self.registry.replica_locations):
            problem = region_problem(replica)
            if problem:
                problems.append(f"registry.replicaLocations[{i}] {problem}")
            elif replica == self.location:
                problems.append(f"registry.replicaLocations[{i}] {replica!r} is the home region (location); allowed: "
                                "other Azure regions, each once")
        if len(set(self.registry.replica_locations)) != len(self.registry.replica_locations):
            problems.append("registry.replicaLocations repeats a region; allowed: each region once")
        if self.postgres.geo_redundant_backup and region.pair is None:
            problems.append(f"postgres.geoRedundantBackup is true, but location {self.location} has no paired region "
                            "(geo-backups go to the pair only); allowed: false with a cross-region replica")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _egress_fits_the_network(self) -> PlatformConfig:
        """The firewall subnets lie in the VNet beside the others; a hub replaces the stack's own firewall."""
        problems = []
        firewall = self.egress.firewall
        if self.network.bring_your_own:
            problems += self._existing_network_problems()
        elif self.hub is not None and self.hub.private_dns_zone_ids and not self.hub.dns_servers:
            problems.append("hub.dnsServers is empty while privateDnsZoneIds is set; allowed: the hub's DNS "
                            "servers (a firewall DNS proxy or Private Resolver that resolves the central zones)")
        if self.hub is not None:
            if not self.aks.private_cluster and self.hub.firewall_public_ip is None:
                problems.append("hub.firewallPublicIp is not set while aks.privateCluster is false; allowed: the hub "
                                "firewall's public IP (nodes reach a public API server from it, so it must be an "
                                "authorized range), or a private cluster")
            if self.egress.allowed_fqdns:
                problems.append(f"egress.allowedFqdns lists {len(self.egress.allowed_fqdns)} FQDNs while hub is set "
                                "(the hub firewall's rules are owned by the hub); allowed: an empty list, or no hub")
        elif firewall.subnet is None:
            problems.append("egress.firewall.subnet is not set; allowed: a /26 (or larger) inside network.addressSpace "
                            "for the AzureFirewallSubnet, or hub.firewallPrivateIp to use a central firewall")
        else:
            vnet = _network(self.network.address_space)
            taken = {to_camel(k): _network(getattr(self.network, k)) for k in
                     ("aks_subnet", "private_endpoint_subnet", "postgres_subnet", "private_link_subnet")}
            ours = {"egress.firewall.subnet": firewall.subnet, "egress.firewall.managementSubnet":
                    firewall.management_subnet if firewall.sku_tier == "Basic" else None}
            for key, cidr in ours.items():
                if cidr is None:
                    continue
                net = _network(cidr)
                if not net.subnet_of(vnet):
                    problems.append(f"{key} {net} lies outside network.addressSpace {vnet}; allowed: a subnet "
                                    f"inside {vnet}")
                for other, other_net in taken.items():
                    if net.overlaps(other_net):
                        problems.append(f"{key} {net} overlaps network.{other} {other_net}; allowed: disjoint subnets")
                taken[key] = net
        problems += self._model_source_reachable()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _existing_network_problems(self) -> list[str]:
        """A landing zone's spoke: its hub firewall, DNS and UDR are the platform team's, not this stack's.

        The stack does not write the existing subnets (a subnet has one route table, and the landing zone's
        deployment owns it), so it cannot route the node subnet itself: only hub mode fits, and AKS checks at
        creation that the subnet's 0.0.0.0/0 goes to an appliance (https://learn.microsoft.com/azure/aks/egress-udr).
        """
        problems = []
        if self.hub is None:
            problems.append("network.existingVnetId is set while hub is not; allowed: hub (firewallPrivateIp, "
                            "vnetId, ...) describing the landing zone's hub, whose firewall the existing spoke's "
                            "route table already sends 0.0.0.0/0 to, or no existingVnetId (the stack creates the "
                            "VNet, its route table and its own firewall)")
        elif self.hub.dns_servers:
            problems.append("hub.dnsServers is set while network.existingVnetId is; allowed: an empty list (the "
                            "existing VNet's DNS servers are the landing zone's, set by the platform team)")
        return problems

    def _model_source_reachable(self) -> list[str]:
        """A dynamically provisioned Azure storage class needs its public endpoint allowed by the egress firewall.

        The CSI driver creates that account (public endpoint, node resource group) and blobfuse on the node
        reaches `<account>.blob.core.windows.net` through the node subnet's default route, i.e. the firewall,
        which denies every FQDN it does not allow (components/egress.py).
        """
        return [problem for key, model in self.served_models
                for problem in self._model_source_problems(key, model.model_source)]

    def _model_source_problems(self, key: str, source: ModelSourceConfig) -> list[str]:
        fqdn = source.dynamic_storage_fqdn()
        if fqdn is None:
            return []
        fix = (f"allowed: {key}.modelSource.kind modelStore (the default: the platform's private model store), "
               "or an existingClaim bound to a static PV on a storage account reachable from the nodes")
        if self.hub is not None:
            return [f"{key}.modelSource.storageClass '{source.storage_class}' provisions a storage account with "
                    f"a public endpoint ({fqdn}) that the hub's egress firewall must allow, which this stack "
                    f"cannot check (hub is set); {fix}"]
        if fqdn not in self.egress.allowed_fqdns:
            return [f"{key}.modelSource.storageClass '{source.storage_class}' provisions a storage account with "
                    f"a public endpoint that the nodes reach through the egress firewall, but egress.allowedFqdns "
                    f"does not allow {fqdn}, so the volume can never mount; {fix}, or add '{fqdn}' to "
                    "egress.allowedFqdns (every node may then reach every public storage account)"]
        return []


# Environment baselines: defaults per environment, overridden key by key by the stack YAML.
BASELINES: dict[str, dict[str, Any]] = {
    "dev": {
        "resourceLocks": False,
        "keyVault": {"sku": "standard"},
        "postgres": {"skuName": "Standard_B1ms", "tier": "Burstable", "storageSizeGb": 32,
                     "backupRetentionDays": 7, "geoRedundantBackup": False, "zoneRedundantHa": False,
                     "passwordAuth": False},
        "redis": {"skuName": "Balanced_B0", "highAvailability": False},
        "frontDoor": {"wafMode": "Prevention", "rateLimitPerMinute": 600},
        "aks": {"skuTier": "Free", "privateCluster": False, "systemMinCount": 1, "systemMaxCount": 2,
                "systemVmSize": "Standard_D4ds_v5", "upgradeChannel": "patch"},
        "observability": {"retentionDays": 30, "dailyQuotaGb": 5},
        # Same allow-list as prod; Basic is the cheapest tier that runs it (alert-only threat intelligence).
        "egress": {"firewall": {"skuTier": "Basic", "threatIntelMode": "Alert"}},
    },
    # test: prod's posture (private API server, zone-redundant data services, locks, strict firewall) on
    # smaller SKUs, in its own subscription: a release is proven here on the same topology before prod.
    "test": {
        "resourceLocks": True,
        "keyVault": {"sku": "premium"},
        "postgres": {"skuName": "Standard_D2ds_v5", "tier": "GeneralPurpose", "storageSizeGb": 64,
                     "backupRetentionDays": 14, "geoRedundantBackup": True, "zoneRedundantHa": True,
                     "passwordAuth": False},
        "redis": {"skuName": "Balanced_B1", "highAvailability": True},
        "frontDoor": {"wafMode": "Prevention", "rateLimitPerMinute": 600},
        "aks": {"skuTier": "Standard", "privateCluster": True, "systemMinCount": 3, "systemMaxCount": 3,
                "systemZones": ["1", "2", "3"], "systemVmSize": "Standard_D4ds_v5", "upgradeChannel": "stable"},
        "observability": {"retentionDays": 60, "dailyQuotaGb": 10},
        "egress": {"firewall": {"skuTier": "Standard", "threatIntelMode": "Deny", "zones": ["1", "2", "3"]}},
        "modelStore": {"skuName": "Premium_ZRS"},
    },
    "prod": {
        "resourceLocks": True,
        "keyVault": {"sku": "premium"},
        "postgres": {"skuName": "Standard_D4ds_v5", "tier": "GeneralPurpose", "storageSizeGb": 128,
                     "backupRetentionDays": 35, "geoRedundantBackup": True, "zoneRedundantHa": True,
                     "passwordAuth": False},
        "redis": {"skuName": "Balanced_B5", "highAvailability": True},
        "frontDoor": {"wafMode": "Prevention", "rateLimitPerMinute": 1200},
        "aks": {"skuTier": "Standard", "privateCluster": True, "systemMinCount": 3, "systemMaxCount": 5,
                "systemZones": ["1", "2", "3"], "systemVmSize": "Standard_D8ds_v5", "upgradeChannel": "stable"},
        "observability": {"retentionDays": 90, "dailyQuotaGb": -1},
        "egress": {"firewall": {"skuTier": "Standard", "threatIntelMode": "Deny", "zones": ["1", "2", "3"]}},
        # Zone-redundant premium block blobs: a zone outage must not stop new pods from loading the weights.
        "modelStore": {"skuName": "Premium_ZRS"},
    },
}


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _yaml_key(loc: tuple[int | str, ...]) -> str:
    parts = [part if isinstance(part, int) else shown(part, quoted=False) for part in loc]
    key = f"{NAMESPACE}:{parts[0]}" if parts else NAMESPACE
    for part in parts[1:]:
        key += f"[{part}]" if isinstance(part, int) else f".{part}"
    return key


def _section_model(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that a location's parent points into, to list its allowed keys."""
    model: Any = PlatformConfig
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        field = fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
            for inner in getattr(candidate, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
                    break
        else:
            return None
    return model


def _allowed_keys(model: type[BaseModel]) -> str:
    return ", ".join(f.alias or n for n, f in model.model_fields.items())


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = _yaml_key(loc)
    if error["type"] == "extra_forbidden":
        parent = _section_model(loc[:-1]) if len(loc) > 1 else PlatformConfig
        allowed = _allowed_keys(parent) if parent else "see the config reference in README.md"
        return f"{key}: unknown key; allowed keys here: {allowed}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and "\t" in message:
        # A check over a mapping: each line is "<entry>\t<why>", "" for the mapping as a whole.
        lines = []
        for line in message.splitlines():
            entry, _, text = line.partition("\t")
            lines.append(f"{key}{'.' + entry if entry else ''}: {text}")
        return "\n".join(lines)
    if error["type"] == "value_error" and _section_model(loc) is not None:
        # A section's own cross-field check: each line starts with the key it is about.
        lines = []
        for line in message.splitlines():
            relative, _, text = line.partition(" ")
            lines.append(f"{key + '.' if loc else NAMESPACE + ':'}{relative}: {text}")
        return "\n".join(lines)
    value = error.get("input")
    echo = "" if isinstance(value, dict) or error["type"] == "value_error" else f" (got {shown(value)})"
    return f"{key}: {message}{echo}"


# A key that is a path into a section (`inferforge:aks.gpuPools[0].vmSize`), the notation of the config
# reference and of the errors. `pulumi new` stores a template prompt's answer under its key as one flat name,
# never as a path (ParseConfigKey(..., path=false), then `ps.Config[k] = v` in
# https://github.com/pulumi/pulumi/blob/master/pkg/cmd/pulumi/newcmd/config.go), so the template's prompts for
# nested settings arrive this way; `pulumi config set --path` writes the same setting into the section instead.
_PATH_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*|\[\d{1,3}\])+$")
_PATH_PART = re.compile(r"\.?([A-Za-z][A-Za-z0-9]*)|\[(\d+)\]")


def path_parts(key: str) -> list[str | int]:
    return [name or int(index) for name, index in _PATH_PART.findall(key)]


def _set_path(data: dict[str, Any], key: str, value: Any) -> str | None:
    """Set `value` at path `key` inside `data`, creating sections and list entries; a problem line, or None."""
    node: Any = data
    parts = path_parts(key)
    for part, following in zip(parts, [*parts[1:], None], strict=True):
        expected = dict if isinstance(part, str) else list
        if not isinstance(node, expected):
            return (f"{NAMESPACE}:{key}: the path runs through a value that is not a "
                    f"{'mapping' if expected is dict else 'list'}; allowed: a path along the sections of the config "
                    "reference (README.md)")
        if isinstance(part, int) and part > len(node):
            return (f"{NAMESPACE}:{key}: index {part} skips entries (the list has {len(node)}); allowed: an index "
                    f"from 0 to {len(node)}")
        fresh: Any = value if following is None else ([] if isinstance(following, int) else {})
        if isinstance(part, int) and part == len(node):
            node.append(fresh)
        elif following is None or isinstance(part, str) and part not in node:
            node[part] = fresh
        node = node[part]
    return None


def parse_stack_config(raw: Mapping[str, Any]) -> PlatformConfig:
    """Validate a stack's `inferforge:` config (keys with or without the namespace prefix).

    Values may be JSON strings, as the Pulumi engine passes structured config. A key may be a path into a
    section (`aks.authorizedIpRanges`); it is applied on top of that section. Raises ConfigError.
    """
    data: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    problems = []
    for full_key, value in raw.items():
        namespace, _, key = full_key.rpartition(":")
        if namespace and namespace != NAMESPACE:
            if difflib.get_close_matches(namespace, [NAMESPACE], n=1, cutoff=0.75):
                # A misspelt namespace would be dropped silently, with the setting the user believes made.
                problems.append(f"{full_key}: namespace {namespace!r} is not {NAMESPACE!r} (a typo?); nothing "
                                f"reads it, so the setting would be ignored; allowed: {NAMESPACE}:{key}")
            continue  # other providers' config (azure-native:location, ...)
        if isinstance(value, str):
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = value
            # Keep plain scalars as the user wrote them ("16" stays a string for version fields).
            value = decoded if isinstance(decoded, dict | list) else value
        (paths if _PATH_KEY.match(key) else data)[key] = value
    if paths:
        data = copy.deepcopy(data)
        # Outer paths before inner ones, list entries in index order: the result does not depend on key order.
        for key in sorted(paths, key=lambda k: [(0, p, "") if isinstance(p, int) else (1, 0, p)
                                                for p in path_parts(k)]):
            problem = _set_path(data, key, copy.deepcopy(paths[key]))
            if problem:
                problems.append(problem)
    if problems:
        raise ConfigError(problems)
    try:
        return PlatformConfig.model_validate(data)
    except ValidationError as exc:
        problems = [line for e in exc.errors() for line in _describe(e).splitlines()]
        raise ConfigError(problems) from None
