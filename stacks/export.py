"""Write a rendered stack in the shapes independent scanners read: Kubernetes YAML and an ARM template.

`python -m stacks.export --stack prod --out build/scan/prod` writes ``kubernetes/*.yaml`` (one manifest per
registered Kubernetes object) and ``arm/template.json`` (every azure-native resource as an ARM resource: type
and apiVersion from the SDK, ``properties`` from the program's inputs). Both come from the same mock-runtime
registrations `plan` and the policy pack evaluate, so a scanner sees exactly what `pulumi up` would send.

ARM shape: azure-native flattens a resource's ARM ``properties`` into top-level inputs; the ARM envelope keys
(location, tags, sku, identity, zones, kind) stay at the top and every other input goes under ``properties``,
except the inputs that only name the resource or its parents (they are part of the ARM id, not the body).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .mocks import NAME_INPUTS
from .render import RenderedResource, SecretValue, render_stack

ARM_SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
_ENVELOPE = ("location", "tags", "sku", "identity", "zones", "kind", "extendedLocation", "plan")
_API_VERSION = re.compile(r"Uses Azure REST API version (\d{4}-\d{2}-\d{2}(?:-preview)?)")
# Inputs azure-native names differently from the ARM property they set, by type: a scanner reads the ARM name.
# StorageAccountPropertiesCreateParameters: networkAcls, supportsHttpsTrafficOnly
# (https://learn.microsoft.com/azure/templates/microsoft.storage/storageaccounts).
_ARM_PROPERTY_NAMES: dict[str, dict[str, str]] = {
    "azure-native:storage:StorageAccount": {"networkRuleSet": "networkAcls",
                                            "enableHttpsTrafficOnly": "supportsHttpsTrafficOnly"},
}


def _plain(value: Any) -> Any:
    if isinstance(value, SecretValue):
        return "[secret]"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # numbers travel through protobuf as floats; manifests and templates say 48, not 48.0
    return value


def kubernetes_manifest(resource: RenderedResource) -> dict[str, Any]:
    """The object as `kubectl apply` would get it: apiVersion and kind from the type token, then the inputs."""
    group_version, kind = resource.type.removeprefix("kubernetes:").rsplit(":", 1)
    api_version = group_version.removeprefix("core/")
    inputs = {k: v for k, v in _plain(resource.inputs).items() if k not in ("apiVersion", "kind")}
    return {"apiVersion": inputs.pop("apiVersion", api_version), "kind": kind, **inputs}


def kubernetes_manifests(resources: Iterable[RenderedResource]) -> list[dict[str, Any]]:
    """Every Kubernetes object of the stack (providers excluded)."""
    return [kubernetes_manifest(r) for r in resources
            if r.custom and r.type.startswith("kubernetes:") and not r.type.startswith("kubernetes:helm")]


def arm_type(resource: RenderedResource) -> str:
    """`Microsoft.Cdn/profiles/originGroups` from the resource's ARM id."""
    if "/providers/" not in (resource.id or ""):
        return "Microsoft.Resources/resourceGroups"
    provider_path = (resource.id or "").split("/providers/")[-1].split("/")
    namespace, segments = provider_path[0], provider_path[1:]
    return "/".join([namespace, *segments[0::2]])


@functools.cache
def api_version(type_token: str) -> str:
    """The REST API version azure-native 3.x uses for a resource type (from the SDK class docstring)."""
    _, module, cls = type_token.split(":")
    sdk_class = getattr(importlib.import_module(f"pulumi_azure_native.{module}"), cls)
    match = _API_VERSION.search(Path(inspect.getfile(sdk_class)).read_text())
    return match.group(1) if match else "unknown"


def arm_resource(resource: RenderedResource) -> dict[str, Any]:
    """One ARM template resource: envelope keys at the top, the rest of the inputs under ``properties``."""
    inputs = _plain(resource.inputs)
    body: dict[str, Any] = {"type": arm_type(resource), "apiVersion": api_version(resource.type),
                            "name": (resource.id or resource.name).rstrip("/").rsplit("/", 1)[-1]}
    properties = dict(inputs.pop("properties", {}) or {})
    renamed = _ARM_PROPERTY_NAMES.get(resource.type, {})
    for key, value in inputs.items():
        if key in _ENVELOPE:
            body[key] = value
        elif key not in NAME_INPUTS:
            properties[renamed.get(key, key)] = value
    body["properties"] = properties
    return body


def arm_template(resources: Iterable[RenderedResource]) -> dict[str, Any]:
    """An ARM deployment template holding every azure-native resource of the stack."""
    return {"$schema": ARM_SCHEMA, "contentVersion": "1.0.0.0",
            "resources": [arm_resource(r) for r in resources if r.custom and r.type.startswith("azure-native:")]}


def write_scan_inputs(resources: Sequence[RenderedResource], out: Path) -> tuple[Path, Path]:
    """Write ``kubernetes/`` manifests and ``arm/template.json`` under ``out``; returns both directories."""
    kube_dir, arm_dir = out / "kubernetes", out / "arm"
    kube_dir.mkdir(parents=True, exist_ok=True)
    arm_dir.mkdir(parents=True, exist_ok=True)
    for index, manifest in enumerate(kubernetes_manifests(resources)):
        name = manifest.get("metadata", {}).get("name", f"object-{index}")
        (kube_dir / f"{index:03d}-{manifest['kind'].lower()}-{name}.yaml").write_text(
            yaml.safe_dump(manifest, sort_keys=False))
    (arm_dir / "template.json").write_text(json.dumps(arm_template(resources), indent=2))
    return kube_dir, arm_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacks.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    kube_dir, arm_dir = write_scan_inputs(render_stack(args.stack), args.out)
    print(f"wrote {kube_dir} and {arm_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
