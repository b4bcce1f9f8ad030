"""checkov (pinned, requirements-checkov.txt) on the rendered stacks: ARM and Kubernetes frameworks.

`stacks/export.py` writes what the program registers as an ARM template and Kubernetes manifests; checkov
scans them. The test fails on any failed check that is not in SUPPRESSIONS, and on any suppression that no
longer fails (so the list cannot rot into blanket exceptions). Measured: one scan of both frameworks takes
about 5 s per stack on this machine (checkov 3.3.30), so every check runs, unscoped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from inferforge.stacks.export import write_scan_inputs
from inferforge.stacks.render import REPO_ROOT, render_stack

from tests.stack_overrides import WITH_WORKLOADS

# check id -> (stacks where it fails, why that is accepted). The only place checkov findings are suppressed.
SUPPRESSIONS: dict[str, tuple[frozenset[str], str]] = {
    "CKV_AZURE_8": (frozenset({"dev", "prod"}),
                    "kube-dashboard add-on: AKS removed it for Kubernetes >= 1.19 (we pin 1.33), so there is no add-on "
                    "to disable (https://learn.microsoft.com/azure/aks/kubernetes-dashboard)."),
    "CKV_AZURE_172": (frozenset({"dev", "prod"}),
                      "Secret rotation IS on: AKS add-on config is a string map, so enableSecretRotation is the string "
                      "'true'; checkov compares with the boolean True (asserted below in "
                      "test_suppressed_aks_settings_are_what_checkov_cannot_read)."),
    "CKV_AZURE_6": (frozenset({"prod"}),
                    "prod's API server is private (no public endpoint); authorized IP ranges cannot be used with "
                    "private clusters (https://learn.microsoft.com/azure/aks/api-server-authorized-ip-ranges)."),
    "CKV_AZURE_216": (frozenset({"dev", "prod"}),
                      "Threat intelligence is set on the attached Firewall Policy (Deny in prod, asserted below), "
                      "which governs a firewall with a policy; checkov reads only the firewall's own "
                      "threatIntelMode. dev runs Basic, which supports Alert only (components/egress.py)."),
}

# check id -> (the one resource it may fail on, why). For findings that are right in general but wrong for a
# workload whose upstream design needs the exception; any other resource failing the check is reported.
DEVICE_PLUGIN = "DaemonSet.gpu-device-plugin.nvidia-device-plugin"
SCOPED_SUPPRESSIONS: dict[str, tuple[str, str]] = {
    "CKV_K8S_23": (DEVICE_PLUGIN, "NVIDIA device plugin runs as root, as upstream ships it: it creates its socket "
                                  "in the kubelet's root-owned /var/lib/kubelet/device-plugins (hostPath)."),
    "CKV_K8S_40": (DEVICE_PLUGIN, "Follows from CKV_K8S_23: the device plugin's UID is root, not a high UID."),
    "CKV_K8S_22": (DEVICE_PLUGIN, "Device plugin root filesystem stays writable as upstream ships it; a read-only "
                                  "root has not been tried on a GPU node, and a plugin that fails hides every GPU."),
    "CKV_K8S_8": (DEVICE_PLUGIN, "Device plugin has no liveness endpoint (upstream defines no probes); the kubelet "
                                 "re-registers it when its socket goes away."),
    "CKV_K8S_9": (DEVICE_PLUGIN, "Device plugin has no readiness endpoint (upstream defines no probes); the policy "
                                 "pack exempts exactly this workload from k8s-readiness-probe too."),
    "CKV_AZURE_206": ("Microsoft.Storage/storageAccounts.",
                      "Model store replication: Premium block blob accounts (low-latency reads for blobfuse2) offer "
                      "LRS and ZRS only; prod runs Premium_ZRS (survives a zone outage), dev LRS. Geo-redundancy "
                      "would need a Standard account; the weights are a copy of a published model, re-uploadable."),
    "CKV_AZURE_36": ("Microsoft.Storage/storageAccounts.",
                     "Model store: no 'Trusted Microsoft Services' bypass on purpose. Public network access is "
                     "disabled and only the nodes read it, through the private endpoint with the kubelet identity; "
                     "no Azure service needs to reach it (its diagnostics are sent by the platform, not pulled)."),
    "CKV_AZURE_41": ("Microsoft.KeyVault/vaults/secrets.gateway-key-pepper",
                     "The gateway's API-key pepper is the HMAC key of every stored key hash, not a credential: an "
                     "expiry date would make Key Vault refuse to return it (Forbidden, SecretExpired) and lock "
                     "every tenant out at once; rotating it means re-issuing all keys, a planned operation."),
    "CKV_AZURE_166": ("Microsoft.ContainerRegistry/registries.",
                      "ACR quarantine holds every pushed image until a scanner releases it; without a scanning "
                      "pipeline attached it would block all pulls. Images run only by digest, set by the operator "
                      "after pushing (README: First deployment)."),
}


def _scoped(check: str, resources: set[str]) -> bool:
    scope = SCOPED_SUPPRESSIONS.get(check)
    return scope is not None and all(r.startswith(scope[0]) for r in resources)


def checkov_executable() -> str:
    """The pinned checkov: $CHECKOV, the repo's tool venv (.venv-checkov), or `checkov` on PATH."""
    for candidate in (os.environ.get("CHECKOV"), str(REPO_ROOT / ".venv-checkov" / "bin" / "checkov"),
                      shutil.which("checkov")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("checkov is not installed: python -m venv .venv-checkov && "
                ".venv-checkov/bin/pip install -r requirements-checkov.txt (or set CHECKOV)")


def scan(resources: list[Any], directory: Path) -> dict[str, set[str]]:
    """checkov on the exported stack: failed check id -> resources, for both frameworks."""
    write_scan_inputs(resources, directory)
    result = subprocess.run(
        [checkov_executable(), "-d", str(directory), "--framework", "arm", "kubernetes", "--compact",
         "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert result.returncode in (0, 1), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"arm", "kubernetes"}, "a framework found nothing to scan"
    failed: dict[str, set[str]] = {}
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["check_type"]
        assert report["summary"]["passed"] > 20, f"{report['check_type']}: suspiciously few checks ran"
        for check in report["results"]["failed_checks"]:
            failed.setdefault(check["check_id"], set()).add(check["resource"])
    return failed


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Any]]:
    """Both stacks in their second phase (images pushed, digests set): the platform plus every workload."""
    return {stack: render_stack(stack, WITH_WORKLOADS) for stack in ("dev", "prod")}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_checkov_finds_nothing_beyond_the_justified_suppressions(stack, rendered, tmp_path) -> None:
    failed = scan(rendered[stack], tmp_path)

    unexpected = {check: sorted(res) for check, res in failed.items()
                  if stack not in SUPPRESSIONS.get(check, (frozenset(), ""))[0] and not _scoped(check, res)}
    stale = sorted(c for c, (stacks, _) in SUPPRESSIONS.items() if stack in stacks and c not in failed)
    stale += sorted(c for c in SCOPED_SUPPRESSIONS if c not in failed)  # both stacks run every scoped resource
    assert unexpected == {}, f"checkov failures in {stack}: {unexpected}"
    assert stale == [], f"suppressions no longer needed in {stack}: {stale}"


def test_checkov_catches_encryption_at_host_turned_off(rendered, tmp_path) -> None:
    from dataclasses import replace

    broken = []
    for r in rendered["prod"]:
        if r.type == "azure-native:containerservice:ManagedCluster":
            pools = [dict(p, enableEncryptionAtHost=False) for p in r.inputs["agentPoolProfiles"]]
            r = replace(r, inputs={**r.inputs, "agentPoolProfiles": pools})
        broken.append(r)

    failed = scan(broken, tmp_path)

    assert "CKV_AZURE_227" in failed and "CKV_AZURE_227" not in SUPPRESSIONS


def test_suppressed_aks_settings_are_what_checkov_cannot_read(rendered) -> None:
    prod = rendered["prod"]
    cluster = next(r for r in prod if r.type == "azure-native:containerservice:ManagedCluster").inputs
    assert cluster["addonProfiles"]["azureKeyvaultSecretsProvider"]["config"]["enableSecretRotation"] == "true"
    assert cluster["apiServerAccessProfile"]["enablePrivateCluster"] is True
    # Numerically: as strings "1.2" >= "1.19" holds.
    assert tuple(int(part) for part in cluster["kubernetesVersion"].split(".")) >= (1, 19)
    policy = next(r for r in prod if r.type == "azure-native:network:FirewallPolicy").inputs
    assert policy["threatIntelMode"] == "Deny"


def test_every_suppression_says_why() -> None:
    assert all(stacks and len(why) > 40 for stacks, why in SUPPRESSIONS.values())
    assert all(scope and len(why) > 40 for scope, why in SCOPED_SUPPRESSIONS.values())


def test_scoped_suppressions_do_not_hide_the_same_finding_elsewhere() -> None:
    assert _scoped("CKV_K8S_23", {DEVICE_PLUGIN})
    assert not _scoped("CKV_K8S_23", {DEVICE_PLUGIN, "Deployment.inference.inference-server"})


def test_checkov_reads_the_model_store_network_rules_under_their_arm_name(rendered, tmp_path) -> None:
    from dataclasses import replace

    def allow_by_default(inputs: dict[str, Any]) -> dict[str, Any]:
        return {**inputs, "networkRuleSet": {**inputs["networkRuleSet"], "defaultAction": "Allow"}}

    opened = [replace(r, inputs=allow_by_default(r.inputs)) if r.type == "azure-native:storage:StorageAccount" else r
              for r in rendered["prod"]]

    failed = scan(opened, tmp_path)

    assert "CKV_AZURE_35" in failed and "CKV_AZURE_35" not in SUPPRESSIONS and "CKV_AZURE_35" not in SCOPED_SUPPRESSIONS
