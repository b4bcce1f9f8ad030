"""Fixtures for the policy tests: component output rendered under Pulumi mocks, and ways to break it.

Every policy test starts from resources our own components register (the real program through
``stacks.render.render_stack``, or one component rendered here under mocks), then changes one
property and expects exactly the policies guarding it to fire: ``assert_only`` runs the whole pack with the stack's
shipped config (``run_policy`` runs one policy and says nothing about the others).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pulumi
import pytest
from inferforge.policies.offline import Violation, evaluate
from inferforge.policies.pack import ALL_POLICIES
from inferforge.stacks.render import RenderedResource, render_program

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "policies" / "config"


def policy(name: str) -> Any:
    """The pack's policy object with this name."""
    matches = [p for p in ALL_POLICIES if p.name == name]
    assert matches, f"no policy named {name}"
    return matches[0]


def run_policy(
    name: str, resources: Sequence[Any], tmp_path: Path, config: dict[str, Any] | None = None
) -> list[Violation]:
    """Evaluate one policy, mandatory, with optional config properties.

    It says nothing about the other policies: a test that a break is caught by exactly the policies guarding it
    uses ``run_pack`` and ``assert_only``."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({name: {"enforcementLevel": "mandatory", **(config or {})}}))
    return evaluate(resources, path, "test", policies=[policy(name)])


def run_pack(resources: Sequence[Any], stack: str) -> list[Violation]:
    """Evaluate the whole pack with the stack's shipped config (policies/config/<stack>.json), as the plan does."""
    return evaluate(resources, CONFIG_DIR / f"{stack}.json", stack)


def fired(violations: Sequence[Violation]) -> set[str]:
    """The names of the policies that reported something."""
    return {v.policy_name for v in violations}


def assert_only(resources: Sequence[Any], stack: str, expected: set[str] | frozenset[str], case: str = "") -> list[
        Violation]:
    """The whole pack on ``resources`` raises exactly the ``expected`` policies, each at least once, and no other.

    Every rendered stack the breaks start from passes the whole pack with no violation at all (tested in
    test_stacks.py), so any policy that fires here fires because of the break."""
    violations = run_pack(resources, stack)
    assert fired(violations) == set(expected), (
        f"{case}: expected exactly {sorted(expected)}, the pack raised {sorted(fired(violations))}: "
        + "; ".join(f"{v.policy_name}: {v.message}" for v in violations))
    return violations


def break_property(
    resources: Sequence[Any], match: Callable[[Any], bool], mutate: Callable[[dict[str, Any]], None]
) -> list[Any]:
    """A copy of ``resources`` where the inputs of every resource ``match`` selects are mutated."""
    out = []
    hits = 0
    for r in resources:
        if match(r):
            inputs = copy.deepcopy(dict(r.inputs))
            mutate(inputs)
            r = replace(r, inputs=inputs)
            hits += 1
        out.append(r)
    assert hits, "break_property matched no resource"
    return out


def of_type(type_token: str) -> Callable[[Any], bool]:
    """Matcher for break_property."""
    return lambda r: r.type == type_token


def set_path(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Mutator for break_property: set a dotted input path (creating mappings on the way)."""

    def mutate(inputs: dict[str, Any]) -> None:
        keys = path.split(".")
        node = inputs
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return mutate


def render_component(build: Callable[[], Any], stack: str = "test") -> list[RenderedResource]:
    """Run ``build`` (which creates one component) under the stacks' mocks; return what it registered."""
    return render_program(build, stack=stack)


def render_inference_service(**overrides: Any) -> list[RenderedResource]:
    """The InferenceService component's resources with production-shaped arguments."""
    import pulumi_kubernetes as k8s
    from inferforge.components.inference_service import InferenceService, InferenceServiceArgs, ServingSettings

    def build() -> None:
        provider = k8s.Provider("aks", kubeconfig="{}")
        InferenceService(
            "inference",
            InferenceServiceArgs(
                model_name="llama-3-8b",
                image_registry="crinferforgeprod.azurecr.io",
                image_repository="inferforge/server",
                image_digest="sha256:" + "a" * 64,
                workload_identity_client_id="00000000-0000-0000-0000-000000000001",
                keyvault_url="https://kv-inferforge-prod.vault.azure.net/",
                pls_name="pls-inference",
                pls_subnet_name="snet-pls",
                pls_subnet_cidr="10.20.6.0/24",
                node_cidr="10.20.0.0/22",
                private_endpoint_subnet_cidr="10.20.4.0/24",
                gpu_node_labels={"sku": "gpu"},
                **{"serving": ServingSettings(tp_size=2), **overrides},
            ),
            opts=pulumi.ResourceOptions(provider=provider),
        )

    return render_component(build)


@pytest.fixture(scope="session")
def inference_service_resources() -> list[RenderedResource]:
    """InferenceService output (tensor-parallel size 2, image pinned by digest), rendered once."""
    return render_inference_service()


@pytest.fixture(scope="session")
def prod_resources() -> list[Any]:
    """The prod stack with its images in the registry, rendered by the real program under mocks (once)."""
    from inferforge.stacks.render import render_stack

    from tests.stack_overrides import WITH_WORKLOADS

    return render_stack("prod", WITH_WORKLOADS)


@pytest.fixture(scope="session")
def prod_platform_resources() -> list[Any]:
    """Pulumi.prod.yaml as shipped: the first phase of a new environment (no workloads yet)."""
    from inferforge.stacks.render import render_stack

    return render_stack("prod")


@pytest.fixture(scope="session")
def dev_resources() -> list[Any]:
    """The dev stack with its images in the registry, rendered by the real program under mocks (once)."""
    from inferforge.stacks.render import render_stack

    from tests.stack_overrides import WITH_WORKLOADS

    return render_stack("dev", WITH_WORKLOADS)


@pytest.fixture(scope="session")
def dev_platform_resources() -> list[Any]:
    """Pulumi.dev.yaml as shipped: the first phase of a new environment (no workloads yet)."""
    from inferforge.stacks.render import render_stack

    return render_stack("dev")


@pytest.fixture(scope="session")
def test_resources() -> list[Any]:
    """The test stack with its images in the registry, rendered by the real program under mocks (once)."""
    from inferforge.stacks.render import render_stack

    from tests.stack_overrides import WITH_WORKLOADS

    return render_stack("test", WITH_WORKLOADS)


@pytest.fixture(scope="session")
def test_platform_resources() -> list[Any]:
    """Pulumi.test.yaml as shipped: the first phase of a new environment (no workloads yet)."""
    from inferforge.stacks.render import render_stack

    return render_stack("test")


def stack_entry(stack: str, name: str) -> dict[str, Any]:
    """A policy's config properties from policies/config/<stack>.json (enforcement level dropped)."""
    entry = json.loads((CONFIG_DIR / f"{stack}.json").read_text()).get(name, {})
    return {k: v for k, v in entry.items() if k != "enforcementLevel"} if isinstance(entry, dict) else {}
