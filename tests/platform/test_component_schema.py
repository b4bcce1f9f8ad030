"""Every component is usable from any Pulumi language: the schema Pulumi's component provider host infers.

`pulumi package add` runs provider/__main__.py, which hands the components to
`pulumi.provider.experimental.component_provider_host`; that builds a `ComponentProvider`, whose `Analyzer`
reads the runtime type annotations (args class -> inputs, annotated `pulumi.Output[...]` attributes ->
outputs, docstrings -> descriptions) and whose schema every consumer SDK is generated from. These tests build
that very provider object (no engine needed) and read its schema.
"""

import asyncio
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pulumi
import pytest
import yaml
from inferforge.components import package, reference
from inferforge.stacks.mocks import AzureMocks, RecordingMonitor
from inferforge.stacks.render import ensure_main_thread_event_loop
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.provider.experimental.util import camel_case
from pulumi.provider.server import ComponentInitError
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

COMPONENTS = reference.discover()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema() -> dict:
    provider = ComponentProvider(package.components(), package.PACKAGE, version="0.0.0")
    return json.loads(provider.schema)


def _resource(schema: dict, component: type) -> dict:
    return schema["resources"][f"{package.PACKAGE}:index:{component.__name__}"]


def _resolve(schema: dict, prop: dict) -> dict | None:
    """The package's own type a property refers to (None for primitives and external refs)."""
    ref = prop.get("$ref", "") or prop.get("items", {}).get("$ref", "") \
        or prop.get("additionalProperties", {}).get("$ref", "")
    prefix = f"#/types/{package.PACKAGE}:index:"
    return schema["types"][ref.removeprefix("#/types/")] if ref.startswith(prefix) else None


def _problems(where: str, prop: dict) -> list[str]:
    found = []
    if not (prop.get("type") or prop.get("$ref")):
        found.append(f"{where}: no type")
    if "pulumi.json#/Any" in json.dumps(prop):
        found.append(f"{where}: typed as Any")
    if not (prop.get("description") or "").strip():
        found.append(f"{where}: no description")
    return found


def test_the_host_serves_every_component_under_the_package_name(schema):
    assert schema["name"] == "inferforge"
    assert {f"inferforge:index:{c.__name__}" for c in COMPONENTS} == set(schema["resources"])
    for component in COMPONENTS:
        resource = _resource(schema, component)
        assert resource["isComponent"] is True
        assert (resource.get("description") or "").strip(), component.__name__


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.__name__)
def test_every_input_is_present_typed_and_described(schema, component):
    args = reference.args_class(component)
    inputs = _resource(schema, component)["inputProperties"]
    exposed = [f for f in dataclasses.fields(args) if package.in_schema(f)]
    assert sorted(inputs) == sorted(camel_case(f.name) for f in exposed)
    problems = [p for name, prop in inputs.items() for p in _problems(f"{args.__name__}.{name}", prop)]
    assert problems == []


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.__name__)
def test_inputs_with_a_python_default_are_optional_and_the_rest_required(schema, component):
    args = reference.args_class(component)
    required = {camel_case(f.name) for f in dataclasses.fields(args) if package.in_schema(f)
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert set(_resource(schema, component).get("requiredInputs", [])) == required


def test_nested_input_types_are_typed_described_and_keep_their_defaults_optional(schema):
    for type_name, spec in schema["types"].items():
        for name, prop in spec.get("properties", {}).items():
            assert _problems(f"{type_name}.{name}", prop) == []
    nested = {cls for c in COMPONENTS for cls in reference.dataclass_fields(reference.args_class(c))[1]}
    assert {"GpuPoolArgs", "EntraAdmin", "KedaAutoscaling"} <= {cls.__name__ for cls in nested}
    python_only = {cls.__name__ for cls in nested if f"inferforge:index:{cls.__name__}" not in schema["types"]}
    assert python_only == {"ModelStoreSource", "PvcModelSource", "DownloadModelSource"}  # the model_source union
    for cls in (cls for cls in nested if cls.__name__ not in python_only):
        spec = schema["types"][f"inferforge:index:{cls.__name__}"]
        assert sorted(spec["properties"]) == sorted(camel_case(f.name) for f in dataclasses.fields(cls))
        required = {camel_case(f.name) for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        assert set(spec.get("required", [])) == required, cls.__name__


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.__name__)
def test_every_registered_output_is_a_typed_described_schema_output(schema, component):
    outputs = _resource(schema, component)["properties"]
    registered = {camel_case(name) for name, _ in reference._registered_outputs(component)}
    assert registered <= set(outputs), f"registered but not in the schema: {sorted(registered - set(outputs))}"
    problems = [p for name, prop in outputs.items() for p in _problems(f"{component.__name__}.{name}", prop)]
    assert problems == []


def test_choices_are_enums_other_languages_can_name(schema):
    sku = schema["resources"]["inferforge:index:KeyVault"]["inputProperties"]["sku"]
    enum = _resolve(schema, sku)
    assert enum is not None and [e["value"] for e in enum["enum"]] == ["standard", "premium"]


def test_every_component_uses_the_package_token():
    # The host routes `inferforge:index:<Class>` to the class of that name; the module must be `index`.
    for component in COMPONENTS:
        assert reference.document(component).type_token == f"inferforge:index:{component.__name__}"


def _run_under_mocks(program) -> tuple[RecordingMonitor, object]:
    """The shared harness's mocks and monitor (stacks/mocks.py), keeping what `program` returns."""
    ensure_main_thread_event_loop()
    mocks = AzureMocks()
    monitor = RecordingMonitor(mocks)
    pulumi_mocks.set_mocks(mocks, project="consumer", stack="dev", preview=False, monitor=monitor)
    result: list = []

    def run() -> None:
        result.append(program())

    _sync_await(run_pulumi_func(run))
    return monitor, result[0]


def _registered(monitor: RecordingMonitor, type_suffix: str):
    return next(r for r in monitor.registrations if r.type.endswith(type_suffix))


def _resolved(value):
    future = asyncio.ensure_future(value.future()) if isinstance(value, pulumi.Output) else None
    return _sync_await(future) if future else value


def test_the_host_constructs_a_component_from_what_another_language_sends():
    """`construct` as the engine calls it for a TypeScript/YAML program: camelCase inputs, enums as strings."""
    provider = ComponentProvider(package.components(), package.PACKAGE, version="0.0.0")
    inputs = {"resourceGroupName": "rg-x", "location": "westeurope", "workspaceName": "log-x-dev",
              "retentionDays": 60.0}  # numbers arrive as floats over the wire

    monitor, result = _run_under_mocks(lambda: provider.construct(
        "logs", "inferforge:index:Observability", inputs, pulumi.ResourceOptions()))

    workspace = _registered(monitor, ":operationalinsights:Workspace")
    assert workspace.inputs["retentionInDays"] == 60  # the dataclass default of 30 was overridden
    assert workspace.inputs["workspaceCapping"]["dailyQuotaGb"] == -1  # omitted: the Python default
    assert _resolved(result.state["workspaceId"]) == workspace.id
    assert _resolved(result.state["customerId"])  # an output the mocks compute, returned through the host


def test_the_host_turns_enum_strings_into_the_python_choices_and_enforces_declared_limits():
    provider = ComponentProvider(package.components(), package.PACKAGE, version="0.0.0")
    inputs = {"resourceGroupName": "rg-x", "location": "westeurope", "namePrefix": "kv-x-dev", "tenantId": "t",
              "privateEndpointSubnetId": "/s", "privateDnsZoneId": "/z", "logAnalyticsWorkspaceId": "/w",
              "sku": "premium"}

    monitor, _ = _run_under_mocks(lambda: provider.construct(
        "kv", "inferforge:index:KeyVault", inputs, pulumi.ResourceOptions()))

    vault = _registered(monitor, ":keyvault:Vault")
    assert vault.inputs["properties"]["sku"]["name"] == "premium"
    with pytest.raises(ComponentInitError, match=r"soft_delete_retention_days=3 is invalid: allowed: >= 7"):
        # 3.0 on the wire: the integer input arrives as an int, the message shows what the caller wrote
        _run_under_mocks(lambda: provider.construct(
            "kv2", "inferforge:index:KeyVault", {**inputs, "softDeleteRetentionDays": 3.0},
            pulumi.ResourceOptions()))


def test_state_under_the_old_token_is_adopted_not_replaced():
    """A stack deployed before the token change keeps its resources: the component carries an alias to its
    old type, so the engine moves state registered under it (children follow their parent's alias)."""
    observability = _component("Observability")
    args = reference.args_class(observability)(resource_group_name="rg", location="westeurope",
                                                workspace_name="log-x-dev")
    monitor, _ = _run_under_mocks(lambda: observability("logs", args))

    registered = _registered(monitor, ":Observability")
    assert registered.type == "inferforge:index:Observability"
    assert registered.aliases == ["inferforge:observability:Observability"]


def test_the_host_builds_nested_args_and_fills_python_defaults():
    """The host hands the constructor plain dicts (also for nested types); the component turns them into its
    Args dataclass, so omitted fields get the same defaults a Python caller gets."""
    args = package.from_inputs(reference.args_class(_component("AksCluster")), {
        "resource_group_name": "rg", "location": "westeurope", "cluster_name": "aks-x", "node_resource_group": "rg-n",
        "tenant_id": "t", "node_subnet_id": "/subnets/aks", "log_analytics_workspace_id": "/ws",
        "gpu_pools": [{"name": "gpu", "vm_size": "Standard_NC24ads_A100_v4", "min_count": 0, "max_count": 1}],
    })
    assert type(args.gpu_pools[0]).__name__ == "GpuPoolArgs"
    assert args.gpu_pools[0].os_disk_type == "Ephemeral"
    # Numbers arrive as floats; an int field gets an int (the host's own conversion is lost: see package.py).
    observability = package.from_inputs(reference.args_class(_component("Observability")), {
        "resource_group_name": "rg", "location": "westeurope", "workspace_name": "log-x", "retention_days": 60.0})
    assert observability.retention_days == 60 and isinstance(observability.retention_days, int)
    with pytest.raises(TypeError, match="unknown input.*colour.*allowed"):
        package.from_inputs(reference.args_class(_component("KeyVault")), {"colour": "red"})


def _component(name: str) -> type[pulumi.ComponentResource]:
    return next(c for c in COMPONENTS if c.__name__ == name)


def test_the_plugin_entry_point_serves_the_schema_over_grpc():
    """What `pulumi package add <repo>/provider` does first: launch provider/ as a plugin, ask for its schema."""
    plugin = REPO / "provider"
    assert yaml.safe_load((plugin / "PulumiPlugin.yaml").read_text()) == {"runtime": "python"}
    # The engine address is only dialled for Construct; GetSchema answers without an engine.
    process = subprocess.Popen([sys.executable, str(plugin), "127.0.0.1:1"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=plugin)
    try:
        port = process.stdout.readline().decode().strip()
        assert port.isdigit(), process.stderr.read().decode()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = provider_pb2_grpc.ResourceProviderStub(channel)
            reply = stub.GetSchema(provider_pb2.GetSchemaRequest(version=0), timeout=120)
    finally:
        process.terminate()
        process.wait(timeout=60)
    served = json.loads(reply.schema)
    assert served["name"] == "inferforge"
    assert set(served["resources"]) == {f"inferforge:index:{c.__name__}" for c in COMPONENTS}
