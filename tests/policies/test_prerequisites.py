"""Apply-time prerequisites: the compliant stacks pass, and each check reads what the engine records."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from inferforge.policies.offline import duration_seconds

from .conftest import break_property, of_type, run_policy, stack_entry

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
DAEMON_SET = "kubernetes:apps/v1:DaemonSet"
AKS = "azure-native:containerservice:ManagedCluster"


def test_the_device_plugin_is_exempt_from_non_root_and_readiness_only_where_the_config_says_so(
        dev_resources, tmp_path) -> None:
    plugin = [r for r in dev_resources if r.type == DAEMON_SET]
    for name in ("k8s-run-as-non-root", "k8s-readiness-probe"):
        assert run_policy(name, plugin, tmp_path, stack_entry("dev", name)) == []
        unexempted = run_policy(name, plugin, tmp_path)
        assert [v.resource_name for v in unexempted] == ["gpu-device-plugin-daemonset"]


def test_the_inference_deployment_is_never_exempt(prod_resources, tmp_path) -> None:
    root = break_property(prod_resources, lambda r: r.name == "inference-deployment", lambda i: i["spec"][
        "template"]["spec"]["containers"][0]["securityContext"].__setitem__("runAsUser", 0))
    violations = run_policy("k8s-run-as-non-root", root, tmp_path, stack_entry("prod", "k8s-run-as-non-root"))
    assert [v.resource_name for v in violations] == ["inference-deployment"]


def test_custom_timeouts_recorded_at_registration_reach_the_policy(prod_resources, tmp_path) -> None:
    deployment = next(r for r in prod_resources if r.name == "inference-deployment")
    assert duration_seconds(deployment.custom_timeouts["create"]) >= 1800 + 900

    def short_wait(resources: list[Any]) -> list[Any]:
        out = []
        for r in resources:
            if r.name == "inference-deployment":
                inputs = {**r.inputs, "metadata": {k: v for k, v in r.inputs["metadata"].items()
                                                   if k != "annotations"}}
                r = replace(r, inputs=inputs, custom_timeouts={"create": "20m0s"})
            out.append(r)
        return out

    assert run_policy("k8s-await-covers-model-startup", prod_resources, tmp_path) == []
    violations = run_policy("k8s-await-covers-model-startup", short_wait(prod_resources), tmp_path)
    assert len(violations) == 1 and "Pulumi waits 1200s" in violations[0].message


@pytest.mark.parametrize(("text", "seconds"), [("3300s", 3300), ("45m", 2700), ("1h30m0s", 5400), ("", 0)])
def test_go_durations_are_read_as_the_engine_sends_them(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


def test_a_keda_scaled_object_passes_with_the_add_on_and_a_trigger_authentication(prod_resources, tmp_path) -> None:
    from inferforge.components.inference_service import KedaAutoscaling
    from inferforge.stacks.render import RenderedResource

    from .conftest import render_inference_service

    scaled = [r for r in render_inference_service(autoscaling=KedaAutoscaling(
        prometheus_server_address="https://amw-x.westeurope.prometheus.monitor.azure.com",
        authentication_ref="keda-azure-monitor")) if r.type.endswith(":ScaledObject")]
    auth = RenderedResource(type="kubernetes:keda.sh/v1alpha1:TriggerAuthentication", name="keda-auth",
                            urn="urn:pulumi:test::inferforge::kubernetes:keda.sh/v1alpha1:TriggerAuthentication::keda-auth",
                            parent_urn=None, custom=True, id="keda-auth",
                            inputs={"metadata": {"name": "keda-azure-monitor"},
                                    "spec": {"podIdentity": {"provider": "azure-workload"}}})
    keda_on = break_property(prod_resources, of_type(AKS),
                             lambda i: i.__setitem__("workloadAutoScalerProfile", {"keda": {"enabled": True}}))

    assert run_policy("keda-addon-and-authentication", [*keda_on, *scaled, auth], tmp_path) == []
    assert run_policy("keda-addon-and-authentication", [*prod_resources, *scaled, auth], tmp_path)  # add-on off
    assert run_policy("keda-addon-and-authentication", [*keda_on, *scaled], tmp_path)  # no TriggerAuthentication


def test_first_phase_has_no_workloads_so_no_prerequisite_applies(prod_platform_resources, tmp_path) -> None:
    for name in ("aks-acr-pull-for-images", "aks-gpu-device-plugin", "aks-blob-csi-driver",
                 "aks-lb-subnet-network-contributor", "frontdoor-origin-after-pls-service"):
        assert run_policy(name, prod_platform_resources, tmp_path) == []


def test_a_download_model_source_needs_no_blob_driver(tmp_path) -> None:
    from inferforge.stacks.render import render_stack

    resources = render_stack("dev", {"inference": {"modelSource": {
        "kind": "download", "repoId": "Qwen/Qwen2.5-7B-Instruct", "revision": "a" * 40}}})
    cluster = next(r for r in resources if r.type == AKS)
    assert cluster.inputs["storageProfile"]["blobCSIDriver"]["enabled"] is False
    assert run_policy("aks-blob-csi-driver", resources, tmp_path) == []
