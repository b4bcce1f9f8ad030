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
        if not self.min_len <= len(name) <= self.max_len:
            return (f"{self.service} name '{name}' is {len(name)} characters; allowed: "
                    f"{self.min_len}-{self.max_len} characters")
        if not re.fullmatch(self.pattern, name):
            return f"{self.service} name '{name}' is invalid; allowed: {self.allowed}"
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
    def container_registry(self) -> str:
        """Default registry name (`cr` + workload + environment, alphanumerics only); config may override it."""
        return "cr" + re.sub(r"[^a-z0-9]", "", f"{self.workload}{self.environment}".lower())

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
        }
