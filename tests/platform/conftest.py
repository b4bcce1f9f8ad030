"""Shared fixtures: the dev and prod stacks rendered once per session under Pulumi mocks."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from inferforge.stacks.render import RenderedResource, render_stack

from tests.stack_overrides import WITH_WORKLOADS


@pytest.fixture(scope="session")
def dev() -> list[RenderedResource]:
    """Dev with its images in the registry (the second phase of a new environment)."""
    return render_stack("dev", WITH_WORKLOADS)


@pytest.fixture(scope="session")
def dev_platform() -> list[RenderedResource]:
    """Pulumi.dev.yaml as shipped: the first phase (deployWorkloads false)."""
    return render_stack("dev")


@pytest.fixture(scope="session")
def prod() -> list[RenderedResource]:
    """Prod with its images in the registry (the second phase of a new environment)."""
    return render_stack("prod", WITH_WORKLOADS)


@pytest.fixture(scope="session")
def prod_platform() -> list[RenderedResource]:
    """Pulumi.prod.yaml as shipped: the first phase (deployWorkloads false)."""
    return render_stack("prod")


def of_type(resources: Sequence[RenderedResource], type_: str) -> list[RenderedResource]:
    return [r for r in resources if r.type == type_]


def one(resources: Sequence[RenderedResource], type_: str, name: str | None = None) -> RenderedResource:
    """The single resource of a type (and logical name); fails loudly if absent or ambiguous."""
    found = [r for r in of_type(resources, type_) if name is None or r.name == name]
    assert len(found) == 1, f"expected one {type_} {name or ''}, found {[r.name for r in found]}"
    return found[0]


def assert_private_endpoint_in_zone(resources: Sequence[RenderedResource], target: RenderedResource,
                                    endpoint_name: str, group_id: str, zone_name: str) -> None:
    """`endpoint_name` connects to `target`'s `group_id` and registers in the private DNS zone `zone_name`."""
    endpoint = one(resources, "azure-native:network:PrivateEndpoint", endpoint_name)
    connection = endpoint.inputs["privateLinkServiceConnections"][0]
    assert connection["privateLinkServiceId"] == target.id and connection["groupIds"] == [group_id]
    zone = next(z for z in of_type(resources, "azure-native:privatedns:PrivateZone")
                if z.inputs["privateZoneName"] == zone_name)
    group = one(resources, "azure-native:network:PrivateDnsZoneGroup", f"{endpoint_name}-dns")
    assert group.inputs["privateDnsZoneConfigs"][0]["privateDnsZoneId"] == zone.id
