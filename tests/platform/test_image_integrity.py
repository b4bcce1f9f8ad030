"""Admission of signed images: the configuration the stack renders for Ratify and Azure Policy."""

from __future__ import annotations

import base64

import pytest
from inferforge.components.image_integrity import RATIFY_SUBJECT, constraint_template_yaml
from inferforge.stacks.config import ConfigError
from inferforge.stacks.render import validate_stack

from tests.platform.conftest import one
from tests.stack_overrides import WITH_WORKLOADS


def test_the_cluster_runs_the_azure_policy_add_on(prod):
    cluster = one(prod, "azure-native:containerservice:ManagedCluster")
    assert cluster.inputs["addonProfiles"]["azurepolicy"] == {"enabled": True}


def test_ratify_verifies_notation_signatures_against_the_key_vault_certificate(prod):
    release = one(prod, "kubernetes:helm.sh/v3:Release")
    assert release.inputs["chart"] == "oci://crinferforgeprod.azurecr.io/helm/ratify"
    assert release.inputs["namespace"] == "gatekeeper-system"
    values = release.inputs["values"]
    assert values["azurekeyvault"]["enabled"] is True
    assert values["azurekeyvault"]["certificates"] == [{"name": "inferforge-image-signing"}]
    assert values["oras"]["authProviders"]["azureWorkloadIdentityEnabled"] is True
    (trust,) = values["notation"]["trustPolicies"]
    assert trust["registryScopes"] == ["crinferforgeprod.azurecr.io/*"]
    assert trust["trustStores"] == ["ca:azurekeyvault"] and trust["signatureVerification"] == {"level": "strict"}
    # Its own images come from the platform registry, pinned by digest.
    assert values["image"]["repository"] == "crinferforgeprod.azurecr.io/mirror/ratify"
    assert values["image"]["tag"].startswith("v1.4.0@sha256:")
    federation = one(prod, "azure-native:managedidentity:FederatedIdentityCredential",
                     "ratify-identity-federation-gatekeeper-system-ratify-admin")
    assert federation.inputs["subject"] == RATIFY_SUBJECT == "system:serviceaccount:gatekeeper-system:ratify-admin"


def test_the_policy_denies_pods_whose_images_ratify_does_not_verify(prod):
    definition = one(prod, "azure-native:authorization:PolicyDefinition")
    assert definition.inputs["mode"] == "Microsoft.Kubernetes.Data"
    details = definition.inputs["policyRule"]["then"]["details"]
    assert details["kinds"] == ["Pod"] and "gpu-device-plugin" not in details["excludedNamespaces"]
    template = base64.b64decode(details["templateInfo"]["content"]).decode()
    assert template == constraint_template_yaml() and '"provider": "ratify-provider"' in template
    assignment = one(prod, "azure-native:authorization:PolicyAssignment")
    assert assignment.inputs["parameters"] == {"effect": {"value": "Deny"}}
    assert assignment.inputs["scope"] == one(prod, "azure-native:containerservice:ManagedCluster").id


def test_workloads_wait_for_admission(prod):
    assignment = one(prod, "azure-native:authorization:PolicyAssignment")
    deployment = next(r for r in prod if r.name == "inference-deployment")
    # The inference service component depends on the assignment, so its Deployment is created after it.
    service = next(r for r in prod if r.type == "inferforge:index:InferenceService")
    assert assignment.urn in (service.dependencies or []) or assignment.urn in (deployment.dependencies or [])


def test_ratify_images_need_a_digest_once_workloads_run():
    overrides = {**WITH_WORKLOADS, "aks": {**WITH_WORKLOADS["aks"], "imageIntegrity": {}}}
    with pytest.raises(ConfigError) as caught:
        validate_stack("test", overrides)
    assert "inferforge:aks.imageIntegrity.image.digest: is not set" in str(caught.value)


def test_an_unknown_admission_effect_names_the_key():
    with pytest.raises(ConfigError) as caught:
        validate_stack("dev", {"aks": {"imageIntegrity": {"effect": "Warn"}}})
    assert "inferforge:aks.imageIntegrity.effect" in str(caught.value)
