"""Workload policies against the InferenceService component's Kubernetes objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from inferforge.policies.workloads import DEFAULT_TP_SIZE, runs_inference_server, tp_size

from .conftest import break_property, of_type, render_inference_service, run_policy

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
DIGEST = "sha256:" + "b" * 64

WORKLOAD_POLICIES = [
    "k8s-no-privileged",
    "k8s-no-host-namespaces",
    "k8s-run-as-non-root",
    "k8s-resources-required",
    "k8s-readiness-probe",
    "k8s-allowed-registry",
    "k8s-image-digest-pinned",
    "k8s-gpu-limit-matches-tp",
    "k8s-inference-max-replicas",
    "k8s-await-covers-model-startup",
]


def pod(inputs: dict[str, Any]) -> dict[str, Any]:
    return inputs["spec"]["template"]["spec"]


def server(inputs: dict[str, Any]) -> dict[str, Any]:
    return pod(inputs)["containers"][0]


def _set(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Callable[[dict], None]:
    def mutate(inputs: dict[str, Any]) -> None:
        getter(inputs)[key] = value

    return mutate


def _security(key: str, value: Any) -> Callable[[dict], None]:
    return lambda inputs: server(inputs).setdefault("securityContext", {}).__setitem__(key, value)


def _command(transform: Callable[[list[str]], list[str]]) -> Callable[[dict], None]:
    def mutate(inputs: dict[str, Any]) -> None:
        container = server(inputs)
        container["command"] = transform(list(container["command"]))

    return mutate


def _tp(value: str) -> Callable[[list[str]], list[str]]:
    def transform(command: list[str]) -> list[str]:
        index = command.index("--tp-size")
        return [*command[:index], f"--tp-size={value}", *command[index + 2 :]]

    return transform


# case -> (policy, mutation of a Deployment's inputs); test_whole_pack.py applies them to the prod stack's
# inference Deployment and runs the whole pack.
BROKEN = {
    "privileged container": ("k8s-no-privileged", _security("privileged", True)),
    "privilege escalation": ("k8s-no-privileged", _security("allowPrivilegeEscalation", True)),
    "host network": ("k8s-no-host-namespaces", _set(pod, "hostNetwork", True)),
    "host PID": ("k8s-no-host-namespaces", _set(pod, "hostPID", True)),
    "runAsNonRoot false": ("k8s-run-as-non-root", _security("runAsNonRoot", False)),
    "runs as uid 0": ("k8s-run-as-non-root", _security("runAsUser", 0)),
    "no limits": ("k8s-resources-required", lambda i: server(i)["resources"].pop("limits")),
    "no memory request": (
        "k8s-resources-required",
        lambda i: server(i)["resources"]["requests"].pop("memory"),
    ),
    "no readiness probe": ("k8s-readiness-probe", lambda i: server(i).pop("readinessProbe")),
    "Docker Hub image": ("k8s-allowed-registry", _set(server, "image", f"python@{DIGEST}")),
    "foreign registry": ("k8s-allowed-registry", _set(server, "image", f"ghcr.io/x/server@{DIGEST}")),
    "tagged image": ("k8s-image-digest-pinned", _set(server, "image", "crinferforgeprod.azurecr.io/s:1.0")),
    "GPU limit below TP": (
        "k8s-gpu-limit-matches-tp",
        lambda i: server(i)["resources"]["limits"].__setitem__("nvidia.com/gpu", "1"),
    ),
    "GPU request above TP": (
        "k8s-gpu-limit-matches-tp",
        lambda i: server(i)["resources"]["requests"].__setitem__("nvidia.com/gpu", "4"),
    ),
    "--tp-size=4 on 2 GPUs": ("k8s-gpu-limit-matches-tp", _command(_tp("4"))),
    "no GPU limit at all": (
        "k8s-gpu-limit-matches-tp",
        lambda i: server(i)["resources"]["limits"].pop("nvidia.com/gpu"),
    ),
    "replicas above the cap": ("k8s-inference-max-replicas", lambda i: i["spec"].__setitem__("replicas", 9)),
    "await shorter than the model load": (
        "k8s-await-covers-model-startup",
        lambda i: i["metadata"]["annotations"].__setitem__("pulumi.com/timeoutSeconds", "600"),
    ),
    "no await setting at all (10 min default)": (
        "k8s-await-covers-model-startup",
        lambda i: i["metadata"].pop("annotations"),
    ),
    "progress deadline shorter than the model load": (
        "k8s-await-covers-model-startup",
        lambda i: i["spec"].__setitem__("progressDeadlineSeconds", 600),
    ),
}


# The component sets Pulumi's await twice: CustomTimeouts (which win) and the annotation the provider reads
# otherwise. These cases break the annotation on a Deployment registered without custom timeouts.
WITHOUT_CUSTOM_TIMEOUTS = {"await shorter than the model load", "no await setting at all (10 min default)"}


@pytest.mark.parametrize("name", WORKLOAD_POLICIES)
def test_inference_service_output_is_compliant(name: str, inference_service_resources, tmp_path) -> None:
    assert run_policy(name, inference_service_resources, tmp_path) == []


def test_a_pod_level_non_root_setting_covers_containers_without_their_own(
    inference_service_resources, tmp_path
) -> None:
    def move_to_pod(inputs: dict[str, Any]) -> None:
        server(inputs)["securityContext"].pop("runAsNonRoot")
        pod(inputs).setdefault("securityContext", {})["runAsNonRoot"] = True

    moved = break_property(inference_service_resources, of_type(DEPLOYMENT), move_to_pod)

    assert run_policy("k8s-run-as-non-root", moved, tmp_path) == []


def test_keda_max_replicas_above_the_cap_is_caught(tmp_path) -> None:
    from inferforge.components.inference_service import KedaAutoscaling

    resources = render_inference_service(
        autoscaling=KedaAutoscaling(
            prometheus_server_address="http://prometheus.monitoring:9090", max_replicas=6
        )
    )

    assert run_policy("k8s-inference-max-replicas", resources, tmp_path, {"maxReplicas": 6}) == []
    violations = run_policy("k8s-inference-max-replicas", resources, tmp_path, {"maxReplicas": 4})
    assert [v.resource_type for v in violations] == ["kubernetes:keda.sh/v1alpha1:ScaledObject"]
    assert "allows 6 replicas" in violations[0].message


def test_workload_policies_ignore_non_inference_gpu_free_jobs(tmp_path) -> None:
    from inferforge.stacks.render import RenderedResource

    job = RenderedResource(
        type="kubernetes:batch/v1:Job",
        name="pgvector",
        urn="urn:pulumi:test::inferforge::kubernetes:batch/v1:Job::pgvector",
        parent_urn=None,
        inputs={"spec": {"template": {"spec": {"containers": [{"name": "psql", "command": ["psql"]}]}}}},
        custom=True,
        id="pgvector",
    )

    assert run_policy("k8s-gpu-limit-matches-tp", [job], tmp_path) == []
    assert run_policy("k8s-readiness-probe", [job], tmp_path) == []  # Jobs run to completion
    assert {v.policy_name for v in run_policy("k8s-run-as-non-root", [job], tmp_path)} == {
        "k8s-run-as-non-root"
    }


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["python", "-m", "inference", "serve", "--tp-size", "4"], 4),
        (["python", "-m", "inference", "serve", "--tp-size=8"], 8),
        (["python", "-m", "inference", "serve"], DEFAULT_TP_SIZE),
        (["python", "-m", "inference", "serve", "--tp-size", "two"], None),
        (["python", "-m", "inference", "serve", "--tp-size", "0"], None),
        (["python", "-m", "inference", "serve", "--tp-size"], None),
    ],
)
def test_tp_size_is_read_from_the_command_line(command: list[str], expected: int | None) -> None:
    assert runs_inference_server(command)
    assert tp_size(command) == expected


def test_other_commands_are_not_the_inference_server() -> None:
    assert not runs_inference_server(["python", "-m", "http.server"])
    assert not runs_inference_server(["hf", "download", "inference", "serve"])
    assert runs_inference_server(["deepspeed", "--num_gpus", "2", "-m", "inference", "serve"])
