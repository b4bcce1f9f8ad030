"""Offline evaluation of the pack: the same policy objects, no Pulumi CLI, no cloud credentials.

``evaluate`` does what the CLI and the pulumi_policy analyzer server do for a preview, in process:

1. Read the policy-pack config file the CLI takes with ``--policy-pack-config`` and reconcile it the
   way the engine does (``ReconcilePolicyPackConfig``): start from each policy's schema defaults and
   enforcement level, apply ``"all"``, then each policy's entry; validate every policy's properties
   against its ``PolicyConfigSchema``. Unlike the CLI, which ignores them, unknown policy names and
   unknown property keys are errors here, so a typo cannot silently turn a rule off.
2. Convert each rendered resource's inputs, and each policy's config, through a protobuf ``Struct``
   exactly as the analyzer server does (so numbers arrive as floats and values sit behind the SDK's
   unknown-checking proxies), and call each ``ResourceValidationPolicy`` per resource with a real
   ``ResourceValidationArgs`` and each ``StackValidationPolicy`` once with ``StackValidationArgs``
   over ``PolicyResource`` objects.
3. Stack policies link resources through ``dependencies`` and ``property_dependencies`` (the engine
   records which resources each input was computed from, plus explicit ``depends_on``). Resources
   rendered by ``stacks.render`` carry the lists the SDK sent at registration; for resources that do
   not (test fixtures), and in addition, links are rebuilt from the mocked outputs: an input whose
   value contains another resource's id, or the Azure name at the end of that id, depends on it.
   Custom timeouts reach ``opts.custom_timeouts`` as the engine passes them (seconds).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from inspect import isawaitable
from pathlib import Path
from typing import Any, Protocol

import jsonschema
from google.protobuf import json_format, struct_pb2
from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

from .pack import ALL_POLICIES, PACK_ENFORCEMENT_LEVEL, PACK_NAME

CONFIG_DIR = Path(__file__).resolve().parent / "config"
_LEVELS = {level.value: level for level in EnforcementLevel}
# Report order: what blocks first.
LEVEL_ORDER = ["mandatory", "advisory"]


class RenderedResourceLike(Protocol):
    """What ``stacks.render.RenderedResource`` provides (kept structural to avoid an import cycle)."""

    type: str
    name: str
    urn: str
    parent_urn: str | None
    inputs: Mapping[str, Any]
    custom: bool
    id: str | None


class PolicyConfigError(ValueError):
    """The policy-pack config file is unreadable or does not fit the pack's policies."""


@dataclass(frozen=True)
class Violation:
    """One reported policy violation."""

    policy_name: str
    enforcement_level: str
    severity: str
    resource_urn: str | None
    resource_type: str | None
    resource_name: str | None
    message: str
    remediation: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``plan --json``)."""
        return asdict(self)


@dataclass(frozen=True)
class PolicySettings:
    """One policy's reconciled enforcement level and config properties."""

    enforcement_level: EnforcementLevel
    properties: dict[str, Any]


# --- configuration ------------------------------------------------------------------------------


def _schema_of(policy: Policy) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    if policy.config_schema is not None:
        schema["properties"] = policy.config_schema.properties
        if policy.config_schema.required:
            schema["required"] = policy.config_schema.required
    return schema


def _parse_level(value: Any, where: str) -> EnforcementLevel:
    if not isinstance(value, str) or value not in _LEVELS:
        raise PolicyConfigError(
            f"{where}: {value!r} is not an enforcement level; use one of {', '.join(sorted(_LEVELS))}"
        )
    return _LEVELS[value]


def load_pack_config(
    path: str | Path, policies: Sequence[Policy] = ALL_POLICIES
) -> dict[str, PolicySettings]:
    """Read and reconcile a policy-pack config file; raise PolicyConfigError naming what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyConfigError(f"cannot read policy pack config {path}: {exc.strerror}") from exc
    try:
        raw = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise PolicyConfigError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    if not isinstance(raw, dict):
        raise PolicyConfigError(f"{path}: the top level must be an object of policy names")

    by_name = {policy.name: policy for policy in policies}
    unknown = sorted(set(raw) - set(by_name) - {"all"})
    if unknown:
        raise PolicyConfigError(
            f"{path}: unknown policy name(s) {', '.join(unknown)}; the pack's policies are "
            f"{', '.join(sorted(by_name))} (or 'all')"
        )

    # Defaults first, as the engine's createConfigWithDefaults does.
    result: dict[str, PolicySettings] = {}
    for policy in policies:
        defaults = {}
        if policy.config_schema is not None:
            defaults = {
                key: spec["default"]
                for key, spec in policy.config_schema.properties.items()
                if "default" in spec
            }
        level = policy.enforcement_level or PACK_ENFORCEMENT_LEVEL
        result[policy.name] = PolicySettings(level, defaults)

    if "all" in raw:
        entry = raw["all"]
        level_value = entry.get("enforcementLevel") if isinstance(entry, dict) else entry
        level = _parse_level(level_value, f'{path}: "all"')
        result = {name: PolicySettings(level, s.properties) for name, s in result.items()}

    for name, entry in raw.items():
        if name == "all":
            continue
        current = result[name]
        if isinstance(entry, str):
            result[name] = PolicySettings(_parse_level(entry, f'{path}: "{name}"'), current.properties)
            continue
        if not isinstance(entry, dict):
            raise PolicyConfigError(
                f'{path}: "{name}" must be an enforcement level string or an object, not {entry!r}'
            )
        entry = dict(entry)
        level = current.enforcement_level
        if "enforcementLevel" in entry:
            level = _parse_level(entry.pop("enforcementLevel"), f'{path}: "{name}.enforcementLevel"')
        known = set(by_name[name].config_schema.properties) if by_name[name].config_schema else set()
        extra = sorted(set(entry) - known)
        if extra:
            allowed = ", ".join(sorted(known)) or "none (only enforcementLevel)"
            raise PolicyConfigError(
                f'{path}: "{name}" has unknown config key(s) {", ".join(extra)}; allowed: {allowed}'
            )
        result[name] = PolicySettings(level, {**current.properties, **entry})

    for name, settings in result.items():
        validator = jsonschema.Draft7Validator(_schema_of(by_name[name]))
        errors = sorted(validator.iter_errors(settings.properties), key=lambda e: list(e.path))
        if errors:
            error = errors[0]
            key = ".".join(str(p) for p in error.path) or "(config)"
            raise PolicyConfigError(f'{path}: "{name}.{key}": {error.message}')
    return result


def config_path_for(stack_name: str) -> Path:
    """policies/config/<stack>.json."""
    return CONFIG_DIR / f"{stack_name}.json"


# --- the SDK's view of resources ----------------------------------------------------------------


def _through_struct(values: Mapping[str, Any]) -> dict[str, Any]:
    # The analyzer server receives inputs and config as protobuf Structs and converts them back with
    # MessageToDict; doing the same here gives policies identical values (ints become floats).
    struct = struct_pb2.Struct()
    struct.update(dict(values))
    return json_format.MessageToDict(struct)


def _props(resource: RenderedResourceLike) -> Any:
    return unknown_checking_proxy(deserialize_properties(_through_struct(resource.inputs)))


_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration_seconds(text: str | None) -> float:
    """A Go duration string ('45m', '1h30m0s', '90s') in seconds; 0 when absent, as the engine sends it."""
    if not text:
        return 0.0
    parts = _GO_DURATION_PART.findall(text)
    if "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _options(resource: RenderedResourceLike) -> PolicyResourceOptions:
    timeouts = getattr(resource, "custom_timeouts", None) or {}
    return PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(*(duration_seconds(timeouts.get(op))
                                               for op in ("create", "update", "delete"))),
        additional_secret_outputs=[],
        parent=resource.parent_urn,
    )


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, Sequence) and not isinstance(value, bytes):
        for item in value:
            yield from _strings(item)


def _property_dependencies(
    resources: Sequence[RenderedResourceLike],
) -> dict[str, dict[str, list[str]]]:
    """Per resource URN, per input: the URNs of resources whose id (or id's name) the input holds."""
    by_id: dict[str, list[str]] = {}
    by_name: dict[str, list[str]] = {}
    for r in resources:
        if r.custom and r.id and r.id.startswith("/"):
            by_id.setdefault(r.id.lower(), []).append(r.urn)
            by_name.setdefault(r.id.rstrip("/").rsplit("/", 1)[-1].lower(), []).append(r.urn)
    deps: dict[str, dict[str, list[str]]] = {}
    for r in resources:
        per_prop: dict[str, list[str]] = {}
        for prop, value in r.inputs.items():
            found: list[str] = []
            for text in _strings(value):
                key = text.lower()
                for urn in by_id.get(key, []) + by_name.get(key, []):
                    if urn != r.urn and urn not in found:
                        found.append(urn)
            if found:
                per_prop[prop] = found
        deps[r.urn] = per_prop
    return deps


def _policy_resources(
    resources: Sequence[RenderedResourceLike], props: dict[str, Any]
) -> list[PolicyResource]:
    deps = _property_dependencies(resources)
    # Dependencies the mock monitor recorded from the program (an Output of another resource's output, such as
    # a firewall's public IP in authorized ranges, holds no id to match by value).
    known = {r.urn for r in resources}
    for r in resources:
        for prop, urns in (getattr(r, "property_dependencies", None) or {}).items():
            if prop not in r.inputs:  # an input removed after rendering (a test's mutation) has no dependencies
                continue
            found = deps[r.urn].setdefault(prop, [])
            found.extend(u for u in urns if u in known and u != r.urn and u not in found)
    objects = {
        r.urn: PolicyResource(r.type, props[r.urn], r.urn, r.name, _options(r), None, None, [], {})
        for r in resources
    }
    for r in resources:
        obj = objects[r.urn]
        if r.parent_urn in objects:
            obj.parent = objects[r.parent_urn]
        recorded = getattr(r, "property_dependencies", None) or {}
        for prop in set(deps[r.urn]) | set(recorded):
            urns = list(dict.fromkeys([*recorded.get(prop, []), *deps[r.urn].get(prop, [])]))
            targets = [objects[u] for u in urns if u in objects]
            obj.property_dependencies[prop] = targets
            obj.dependencies.extend(t for t in targets if t not in obj.dependencies)
        for urn in getattr(r, "dependencies", None) or []:
            if urn in objects and objects[urn] not in obj.dependencies:
                obj.dependencies.append(objects[urn])
    return list(objects.values())


# --- evaluation ---------------------------------------------------------------------------------


def _run(policy: Policy, args: Any, report: Any) -> None:
    result = policy.validate(args, report)
    if isawaitable(result):  # async validators, as the analyzer server supports them
        import asyncio

        asyncio.run(result)  # type: ignore[arg-type]


def evaluate(
    resources: Sequence[RenderedResourceLike],
    pack_config_path: str | Path,
    stack_name: str,
    policies: Sequence[Policy] = ALL_POLICIES,
) -> list[Violation]:
    """Run every policy of the pack over a rendered stack with that stack's enforcement config.

    Returns the violations, mandatory first. Raises PolicyConfigError for a bad config file.
    ``stack_name`` is only used in messages: the config file decides enforcement.
    """
    settings = load_pack_config(pack_config_path, policies)
    props = {r.urn: _props(r) for r in resources}
    by_urn = {r.urn: r for r in resources}
    violations: list[Violation] = []
    stack_resources: list[PolicyResource] | None = None

    def reporter(policy: Policy, level: EnforcementLevel, default_urn: str | None) -> Any:
        def report_violation(message: str, urn: str | None = None) -> None:
            target = by_urn.get(urn or default_urn or "")
            violations.append(
                Violation(
                    policy_name=policy.name,
                    enforcement_level=level.value,
                    severity=policy.severity.value if policy.severity else "unspecified",
                    resource_urn=target.urn if target else urn,
                    resource_type=target.type if target else None,
                    resource_name=target.name if target else None,
                    message=message or policy.description,
                    remediation=policy.remediation_steps or "",
                )
            )

        return report_violation

    def cannot_run(policy: Policy, urn: str | None, error: UnknownValueError) -> None:
        # The analyzer server turns unknown values into an advisory note; so does this.
        reporter(policy, EnforcementLevel.ADVISORY, urn)(
            f"can't run policy '{policy.name}' on stack '{stack_name}': {error.message}"
        )

    for policy in policies:
        policy_settings = settings[policy.name]
        level = policy_settings.enforcement_level
        if level == EnforcementLevel.DISABLED:
            continue
        if level == EnforcementLevel.REMEDIATE:
            level = EnforcementLevel.MANDATORY  # as the analyzer server reports it
        config = _through_struct(policy_settings.properties)
        if isinstance(policy, ResourceValidationPolicy):
            for r in resources:
                args = ResourceValidationArgs(
                    r.type, props[r.urn], r.urn, r.name, _options(r), None, config, {}
                )
                try:
                    _run(policy, args, reporter(policy, level, r.urn))
                except UnknownValueError as error:
                    cannot_run(policy, r.urn, error)
        elif isinstance(policy, StackValidationPolicy):
            if stack_resources is None:
                stack_resources = _policy_resources(resources, props)
            stack_args = StackValidationArgs(stack_resources, config, {})
            try:
                _run(policy, stack_args, reporter(policy, level, None))
            except UnknownValueError as error:
                cannot_run(policy, None, error)

    order = {name: i for i, name in enumerate(LEVEL_ORDER)}
    return sorted(violations, key=lambda v: order.get(v.enforcement_level, len(order)))


def has_mandatory(violations: Iterable[Violation]) -> bool:
    """Whether any violation blocks (``plan`` exits non-zero)."""
    return any(v.enforcement_level == EnforcementLevel.MANDATORY.value for v in violations)


# --- reporting ----------------------------------------------------------------------------------


def _grouped(violations: Sequence[Violation]) -> list[tuple[str, list[Violation]]]:
    levels = LEVEL_ORDER + sorted({v.enforcement_level for v in violations} - set(LEVEL_ORDER))
    return [(lvl, [v for v in violations if v.enforcement_level == lvl]) for lvl in levels]


def _where(v: Violation) -> str:
    if v.resource_type is None:
        return f"stack-wide ({v.resource_urn})" if v.resource_urn else "stack-wide"
    return f"{v.resource_type} '{v.resource_name}'"


def format_text(violations: Sequence[Violation], stack_name: str) -> str:
    """Violations grouped by enforcement level, for a terminal."""
    if not violations:
        return f"Policy pack '{PACK_NAME}' on stack '{stack_name}': no violations."
    lines = [f"Policy pack '{PACK_NAME}' on stack '{stack_name}': {_summary(violations)}"]
    for level, items in _grouped(violations):
        if not items:
            continue
        lines.append("")
        lines.append(f"{level.upper()} ({len(items)})")
        for v in items:
            lines.append(f"  [{v.severity}] {v.policy_name}: {_where(v)}")
            lines.append(f"      {v.message}")
            lines.append(f"      fix: {v.remediation}")
    return "\n".join(lines)


def _summary(violations: Sequence[Violation]) -> str:
    counts = [f"{len(items)} {level}" for level, items in _grouped(violations) if items]
    return ", ".join(counts)


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def format_markdown(violations: Sequence[Violation], stack_name: str) -> str:
    """Violations grouped by enforcement level as Markdown (PR comment / CI job summary)."""
    blocked = has_mandatory(violations)
    status = "❌ blocked" if blocked else "✅ passed"
    lines = [f"### Policy pack `{PACK_NAME}` on stack `{stack_name}`: {status}", ""]
    if not violations:
        lines.append("No violations.")
        return "\n".join(lines) + "\n"
    lines.append(f"{_summary(violations)}.")
    for level, items in _grouped(violations):
        if not items:
            continue
        lines += ["", f"#### {level.capitalize()} ({len(items)})", ""]
        lines.append("| Severity | Policy | Resource | Violation | Remediation |")
        lines.append("| --- | --- | --- | --- | --- |")
        for v in items:
            resource = f"`{_cell(v.resource_type)}` {_cell(v.resource_name)}" if v.resource_type else "stack"
            lines.append(
                f"| {v.severity} | `{v.policy_name}` | {resource} | {_cell(v.message)} | {_cell(v.remediation)} |"
            )
    return "\n".join(lines) + "\n"
