"""Building blocks shared by every policy module: policy constructors and property access.

Property values reach a policy exactly as the pulumi_policy SDK hands them over: nested mappings
and lists wrapped in read-only proxies (so ``isinstance(x, dict)`` is False; test against
``Mapping``/``Sequence``), numbers as floats (they travel through a protobuf ``Struct``), and
values that are unknown during a preview raising ``UnknownValueError`` when read. The helpers here
respect all three.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from pulumi_policy import (
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

AZURE_PREFIX = "azure-native:"

ResourceCheck = Callable[[ResourceValidationArgs, ReportViolation], None]
StackCheck = Callable[[StackValidationArgs, ReportViolation], None]

_MISSING = object()


def _describe(description: str, severity: Severity) -> str:
    # pulumi_policy carries severity as a field, but the CLI only prints the description, so the
    # severity is repeated there for whoever reads the preview output.
    return f"{description} [severity: {severity.value}]"


def resource_policy(
    *,
    name: str,
    description: str,
    severity: Severity,
    remediation: str,
    resource_types: Iterable[str] | None,
    check: ResourceCheck,
    config_schema: PolicyConfigSchema | None = None,
) -> ResourceValidationPolicy:
    """A ResourceValidationPolicy that runs ``check`` only on the given Pulumi type tokens.

    ``resource_types=None`` means every resource (the check filters for itself).
    """
    types = frozenset(resource_types) if resource_types is not None else None

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if types is not None and args.resource_type not in types:
            return
        check(args, report_violation)

    return ResourceValidationPolicy(
        name=name,
        description=_describe(description, severity),
        validate=validate,
        config_schema=config_schema,
        severity=severity,
        remediation_steps=remediation,
    )


def stack_policy(
    *,
    name: str,
    description: str,
    severity: Severity,
    remediation: str,
    check: StackCheck,
    config_schema: PolicyConfigSchema | None = None,
) -> StackValidationPolicy:
    """A StackValidationPolicy with the pack's metadata conventions."""
    return StackValidationPolicy(
        name=name,
        description=_describe(description, severity),
        validate=check,
        config_schema=config_schema,
        severity=severity,
        remediation_steps=remediation,
    )


def lookup(obj: Any, path: str, default: Any = None) -> Any:
    """Value at a dotted path of nested mappings (``"properties.networkAcls.defaultAction"``)."""
    current = obj
    for key in path.split("."):
        if not isinstance(current, Mapping) or key not in current:
            return default
        current = current[key]
    return current


def require_value(path: str, expected: str, why: str = "") -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    """A resource check: the input at dotted ``path`` must equal ``expected`` (Azure enums, any case)."""

    def check(args: ResourceValidationArgs, report: ReportViolation) -> None:
        value = lookup(args.props, path)
        if not same(value, expected):
            report(f"{path} is {value!r}; it must be {expected!r}{f' ({why})' if why else ''}.")

    return check


def require_true(path: str, why: str = "") -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    """A resource check: the input at dotted ``path`` must be the boolean true (missing is not true)."""

    def check(args: ResourceValidationArgs, report: ReportViolation) -> None:
        value = lookup(args.props, path)
        if not is_true(value):
            report(f"{path} is {value!r}; it must be true{f' ({why})' if why else ''}.")

    return check


def has(obj: Any, path: str) -> bool:
    """Whether a dotted path is present (even when its value is falsy)."""
    return lookup(obj, path, _MISSING) is not _MISSING


def same(value: Any, expected: str) -> bool:
    """Case-insensitive equality for Azure enum strings (ARM treats them case-insensitively)."""
    return isinstance(value, str) and value.lower() == expected.lower()


def is_true(value: Any) -> bool:
    """Strictly the boolean True (a missing value is not True)."""
    return value is True


def as_list(value: Any) -> list[Any]:
    """A proxied or plain sequence as a list; anything else (None, a scalar) as an empty list."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return []


def as_number(value: Any) -> float | None:
    """A numeric value (ints arrive as floats through protobuf); None when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def walk(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, Any]]:
    """Every (parent path, key, value) in a nested structure of mappings and sequences."""
    if isinstance(obj, Mapping):
        for key in obj:
            value = obj[key]
            yield path, key, value
            yield from walk(value, (*path, key))
    elif isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        for index, item in enumerate(obj):
            yield from walk(item, (*path, str(index)))


def short_type(resource_type: str) -> str:
    """``azure-native:keyvault:Vault`` -> ``keyvault:Vault`` for messages."""
    return resource_type.removeprefix(AZURE_PREFIX)


def config_list(config: Mapping[str, Any], key: str) -> list[Any]:
    """A list-valued policy config property (defaults are filled in from the schema)."""
    return as_list(config.get(key))


def config_int(config: Mapping[str, Any], key: str) -> int:
    """An integer policy config property; protobuf delivers it as a float, so convert back."""
    return int(config[key])


def references(source: PolicyResource, prop: str, target: PolicyResource) -> bool:
    """Whether ``source``'s top-level input ``prop`` was computed from ``target``'s outputs.

    The engine records this as the property's dependencies (e.g. a diagnostic setting's
    ``resourceUri`` built from ``vault.id`` depends on the vault), which is known even during a
    preview, when the id itself is not.
    """
    return any(dep.urn == target.urn for dep in source.property_dependencies.get(prop, []))


def links(source: PolicyResource, prop: str, target: PolicyResource, target_name_key: str) -> bool:
    """Whether ``source.props[prop]`` names ``target``: by dependency, or by an equal literal name.

    A component may pass a plain string name instead of ``target``'s output; then there is no
    recorded dependency and the names are compared (``target_name_key`` is the target's own name
    input, e.g. ``profileName`` for a Front Door profile).
    """
    if references(source, prop, target):
        return True
    name = source.props.get(prop)
    return isinstance(name, str) and same(target.props.get(target_name_key), name)


def resources_of(resources: Iterable[PolicyResource], *types: str) -> list[PolicyResource]:
    """The resources whose Pulumi type token is one of ``types``."""
    wanted = set(types)
    return [r for r in resources if r.resource_type in wanted]
