"""Cloud Adoption Framework names and each service's length/charset rules, enforced up front."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class NameRule:
    """One Azure naming rule: length bounds and an anchored charset pattern, as the service states it."""

    service: str
    min_len: int
    max_len: int
    pattern: str
    allowed: str  # human wording of the charset, for error messages

    def violation(self, name: str) -> str | None:
        """A message naming what is wrong with `name`, or None when it is valid."""
        shown = name if len(name) <= 60 else f"{name[:60]}..."  # never echo a huge value whole
        if not self.min_len <= len(name) <= self.max_len:
            return (f"{self.service} name '{shown}' is {len(name)} characters; allowed: "
                    f"{self.min_len}-{self.max_len} characters")
        if not re.fullmatch(self.pattern, name):
            return f"{self.service} name '{shown}' is invalid; allowed: {self.allowed}"
        return None


# Suffix length of the stable random suffix added where Azure needs global uniqueness.
UNIQUE_SUFFIX_LEN = 5

RULES: dict[str, NameRule] = {
    "resource_group": NameRule("resource group", 1, 90, r"[A-Za-z0-9._()-]*[A-Za-z0-9_()-]",
                               "letters, digits, '.', '_', '-', '(' and ')', not ending in '.'"),
    "vnet": NameRule("virtual network", 2, 64, r"[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9_]",
                     "letters, digits, '.', '_', '-'; start alphanumeric, end alphanumeric or '_'"),
    "key_vault": NameRule("Key Vault", 3, 24, r"[a-zA-Z](?!.*--)[a-zA-Z0-9-]*[a-zA-Z0-9]",
                          "letters, digits and single hyphens; start with a letter, end alphanumeric"),
    "postgres": NameRule("PostgreSQL flexible server", 3, 63, r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?",
                         "lowercase letters, digits and hyphens; not starting or ending with a hyphen"),
    "redis": NameRule("Azure Managed Redis", 1, 60, r"[A-Za-z0-9](?!.*--)(?:[A-Za-z0-9-]*[A-Za-z0-9])?",
                      "letters, digits and single hyphens; start and end alphanumeric"),
    "aks": NameRule("AKS cluster", 1, 63, r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?",
                    "letters, digits, '_' and '-'; start and end alphanumeric"),
    "aks_dns_prefix": NameRule("AKS DNS prefix", 1, 54, r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?",
                               "letters, digits and hyphens; start and end alphanumeric"),
    "linux_node_pool": NameRule("AKS Linux node pool", 1, 12, r"[a-z][a-z0-9]*",
                                "lowercase letters and digits, starting with a letter"),
    "front_door": NameRule("Front Door profile", 1, 90, r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?",
                           "letters, digits and hyphens; start and end alphanumeric"),
    "front_door_endpoint": NameRule("Front Door endpoint", 2, 46, r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?",
                                    "letters, digits and hyphens; start and end alphanumeric"),
    "waf_policy": NameRule("Front Door WAF policy", 1, 128, r"[A-Za-z][A-Za-z0-9]*",
                           "letters and digits, starting with a letter (no hyphens)"),
    "log_analytics": NameRule("Log Analytics workspace", 4, 63, r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?",
                              "letters, digits and hyphens; start and end alphanumeric"),
    "identity": NameRule("managed identity", 3, 128, r"[A-Za-z0-9][A-Za-z0-9_-]*",
                         "letters, digits, '_' and '-', starting alphanumeric"),
    # https://learn.microsoft.com/azure/azure-resource-manager/management/resource-name-rules#microsoftcontainerregistry
    "container_registry": NameRule("container registry", 5, 50, r"[a-zA-Z0-9]+",
                                   "letters and digits only (globally unique; the login server is "
                                   "<name>.azurecr.io)"),
    # https://learn.microsoft.com/azure/azure-resource-manager/management/resource-name-rules#microsoftstorage
    "storage_account": NameRule("storage account", 3, 24, r"[a-z0-9]+",
                                "lowercase letters and digits only (globally unique; the blob endpoint is "
                                "<name>.blob.core.windows.net)"),
    "private_link_service": NameRule("Private Link Service", 1, 80, r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?",
                                     "letters, digits, '.', '_' and '-'; start alphanumeric"),
}


@dataclass(frozen=True)
class PlatformNames:
    """Every top-level resource name of one stack, derived from workload and environment (CAF style)."""

    workload: str
    environment: str
    location: str

    @property
    def base(self) -> str:
        return f"{self.workload}-{self.environment}"

    def _unique(self, prefix: str) -> str:
        # The "-" + random suffix is appended at deploy time; checks() validates the full length.
        return f"{prefix}-{self.base}"

    @property
    def resource_group(self) -> str:
        return f"rg-{self.base}-{self.location}"

    @property
    def node_resource_group(self) -> str:
        return f"rg-{self.base}-{self.location}-aks-nodes"

    @property
    def vnet(self) -> str:
        return f"vnet-{self.base}-{self.location}"

    @property
    def key_vault_prefix(self) -> str:
        return self._unique("kv")

    @property
    def postgres_prefix(self) -> str:
        return self._unique("psql")

    @property
    def redis_prefix(self) -> str:
        return self._unique("redis")

    @property
    def aks(self) -> str:
        return f"aks-{self.base}"

    @property
    def front_door(self) -> str:
        return f"afd-{self.base}"

    @property
    def front_door_endpoint(self) -> str:
        return f"fde-{self.base}"

    @property
    def waf_policy(self) -> str:
        return "waf" + re.sub(r"[^A-Za-z0-9]", "", self.base)

    @property
    def log_analytics(self) -> str:
        return f"log-{self.base}"

    @property
    def identity(self) -> str:
        return f"id-{self.base}-inference"

    @property
    def schema_identity(self) -> str:
        # Same charset as `identity` and shorter, so the `identity` check in checks() covers it.
        return f"id-{self.base}-pgschema"

    @property
    def gateway_identity(self) -> str:
        # Same charset as `identity` and no longer, so the `identity` check in checks() covers it.
        return f"id-{self.base}-gateway"

    @property
    def container_registry(self) -> str:
        """Default registry name (`cr` + workload + environment, alphanumerics only); config may override it."""
        return "cr" + re.sub(r"[^a-z0-9]", "", f"{self.workload}{self.environment}".lower())

    @property
    def model_store_account(self) -> str:
        """Default model store account name (`st` + workload + environment, alphanumerics); config may override it."""
        return "st" + re.sub(r"[^a-z0-9]", "", f"{self.workload}{self.environment}".lower())

    @property
    def private_link_service(self) -> str:
        return f"pls-{self.base}-inference"

    def checks(self) -> dict[str, str]:
        """Rule key -> the name (or the longest possible form of it) that must satisfy the rule."""
        suffix = "x" * UNIQUE_SUFFIX_LEN
        return {
            "resource_group": self.resource_group,
            "vnet": self.vnet,
            "key_vault": f"{self.key_vault_prefix}-{suffix}",
            "postgres": f"{self.postgres_prefix}-{suffix}",
            "redis": f"{self.redis_prefix}-{suffix}",
            "aks": self.aks,
            "aks_dns_prefix": self.aks,
            "front_door": self.front_door,
            "front_door_endpoint": self.front_door_endpoint,
            "waf_policy": self.waf_policy,
            "log_analytics": self.log_analytics,
            "identity": self.identity,
            "private_link_service": self.private_link_service,
            "container_registry": self.container_registry,
            "storage_account": self.model_store_account,
        }


# Kubernetes label syntax (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set):
# an optional DNS-subdomain prefix of at most 253 characters and "/", then a name of at most 63 alphanumerics,
# '-', '_', '.' starting and ending alphanumeric; values likewise (may be empty). AKS owns some prefixes on
# its nodes (https://learn.microsoft.com/azure/aks/use-labels#reserved-system-labels).
_LABEL_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_DNS_SUBDOMAIN = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
RESERVED_NODE_LABEL_PREFIXES = ("kubernetes.azure.com", "kubernetes.io", "k8s.io")
DNS_1123_SUBDOMAIN = NameRule("Kubernetes object", 1, 253, _DNS_SUBDOMAIN,
                              "lowercase letters, digits, '-' and '.', starting and ending alphanumeric")


def node_label_problems(labels: dict[str, str]) -> dict[str, str]:
    """Why each node label (by key) would be rejected by Kubernetes or AKS; empty when all are valid."""
    problems: dict[str, str] = {}
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if "/" in prefix or not re.fullmatch(_LABEL_NAME, name) or (
                prefix and (len(prefix) > 253 or not re.fullmatch(_DNS_SUBDOMAIN, prefix))):
            problems[key] = (f"label key {key[:80]!r} is invalid; allowed: [prefix/]name, the prefix a DNS "
                             "subdomain, the name 1-63 letters, digits, '-', '_', '.' starting and ending "
                             "alphanumeric")
        elif prefix and any(prefix == p or prefix.endswith("." + p) for p in RESERVED_NODE_LABEL_PREFIXES):
            problems[key] = (f"label key {key!r} uses a prefix reserved for AKS and Kubernetes; allowed: a prefix "
                             f"other than {', '.join(RESERVED_NODE_LABEL_PREFIXES)} (or none)")
        elif value and not re.fullmatch(_LABEL_NAME, value):
            problems[key] = (f"label value {value[:80]!r} is invalid; allowed: empty or 1-63 letters, digits, '-', "
                             "'_', '.' starting and ending alphanumeric")
    return problems
