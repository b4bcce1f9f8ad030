"""Egress destinations the platform needs, as plain data (no SDK import, so Kubernetes components can use it).

Sources:
* https://learn.microsoft.com/azure/aks/outbound-rules-control-egress: AKS's required FQDNs (covered by the
  Azure Firewall FQDN tag ``AzureKubernetesService``), the GPU driver hosts and the Azure Monitor endpoints.
* https://learn.microsoft.com/microsoft-365/enterprise/urls-and-ip-address-ranges, ID 56: the IPv4 ranges of
  ``login.microsoftonline.com``, the Entra ID token endpoint that workload identity calls.
"""

from __future__ import annotations

# A NetworkPolicy cannot name an FQDN, so pods get TCP 443 to these ranges only; the firewall's FQDN rule for
# login.microsoftonline.com is the authoritative gate (a pod cannot reach anything else there on 443 either).
ENTRA_ID_IPV4_RANGES: tuple[str, ...] = ("20.190.128.0/18", "40.126.0.0/18")

AKS_FQDN_TAG = "AzureKubernetesService"
GPU_DRIVER_FQDNS: tuple[str, ...] = ("nvidia.github.io", "us.download.nvidia.com", "download.docker.com")
ENTRA_FQDNS: tuple[str, ...] = ("login.microsoftonline.com",)


def azure_monitor_fqdns(region: str) -> tuple[str, ...]:
    """Container Insights / Azure Monitor endpoints ("Azure Monitor for containers" in the AKS egress rules)."""
    return ("dc.services.visualstudio.com", "*.ods.opinsights.azure.com", "*.oms.opinsights.azure.com",
            "*.monitoring.azure.com", f"{region}.ingest.monitor.azure.com",
            f"{region}.handler.control.monitor.azure.com", "global.handler.control.monitor.azure.com")
