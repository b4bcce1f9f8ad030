"""Tagging: every taggable Azure resource carries the required tags.

"Taggable" is decided by the installed azure-native SDK itself: a resource type is taggable when
its arguments class accepts a ``tags`` input. The SDK source is scanned instead of imported because
importing a large azure-native module (network) costs over a second, and the answer is cached per
type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from pulumi_policy import PolicyConfigSchema, ReportViolation, ResourceValidationArgs, Severity

from .common import AZURE_PREFIX, config_list, resource_policy

DEFAULT_REQUIRED_TAGS = ["owner", "cost-center", "environment"]

_TAGS_INPUT = re.compile(r"^\s+tags: pulumi\.Input\[", re.MULTILINE)


def _snake(name: str) -> str:
    # azure-native file names: "AFDEndpoint" -> "afd_endpoint", "VirtualNetwork" -> "virtual_network".
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).lower()


@cache
def _sdk_root() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pulumi_azure_native")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


@cache
def accepts_tags(resource_type: str) -> bool:
    """Whether an azure-native resource type takes a ``tags`` input (per the installed SDK)."""
    parts = resource_type.split(":")
    root = _sdk_root()
    if len(parts) != 3 or parts[0] != "azure-native" or root is None:
        return False
    module, name = parts[1].split("/")[0], parts[2]
    source = root / module / f"{_snake(name)}.py"
    if not source.is_file():
        return False
    return _TAGS_INPUT.search(source.read_text(encoding="utf-8")) is not None


def _required_tags(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not args.resource_type.startswith(AZURE_PREFIX) or not accepts_tags(args.resource_type):
        return
    required = [t for t in config_list(args.get_config(), "requiredTags") if isinstance(t, str)]
    tags = args.props.get("tags")
    tags = tags if isinstance(tags, Mapping) else {}
    missing = [t for t in required if not isinstance(tags.get(t), str) or not tags.get(t).strip()]
    if missing:
        report(f"missing or empty tags: {', '.join(missing)} (required: {', '.join(required)}).")


azure_required_tags = resource_policy(
    name="azure-required-tags",
    description="Every Azure resource that accepts tags carries the required tags (by default owner, "
    "cost-center and environment) with non-empty values.",
    severity=Severity.LOW,
    remediation="Pass the stack's common tags to the resource (the components' shared tags argument); "
    "add any missing key to the stack config's tags.",
    resource_types=None,
    check=_required_tags,
    config_schema=PolicyConfigSchema(
        properties={
            "requiredTags": {
                "type": "array",
                "items": {"type": "string"},
                "default": DEFAULT_REQUIRED_TAGS,
                "description": "Tag keys every taggable Azure resource must carry.",
            }
        }
    ),
)

POLICIES = [azure_required_tags]
