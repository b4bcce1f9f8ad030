"""Run the real program for a stack under Pulumi's mock runtime and collect what it registers.

No CLI, no credentials, nothing created: the program, components and policies run for real, only
the cloud answers from stacks/mocks.py. `plan`, the tests (whole stacks and single components) and the
offline policy check use this, and no other mock harness.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import NAMESPACE, ConfigError, PlatformConfig, parse_stack_config

PROJECT = "inferforge"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RenderedResource:
    """One registered resource: its inputs exactly as the engine (and CrossGuard's `props`) sees them."""

    type: str
    name: str
    urn: str
    parent_urn: str | None
    inputs: dict[str, Any]
    custom: bool
    id: str | None = None
    dependencies: list[str] = field(default_factory=list)
    """URNs this resource waits for (explicit depends_on and the resources its inputs come from)."""
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    """Per input: the URNs it was computed from, as the engine records them."""
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    """create/update/delete timeouts as registered (Go durations such as '45m0s')."""
    provider: str | None = None
    """Provider reference (``<provider urn>::<id>``) the resource was registered with; None: the default one."""


class StackFileError(Exception):
    """The stack's YAML file is missing or unreadable."""


def stack_file(stack: str, root: Path = REPO_ROOT) -> Path:
    return root / f"Pulumi.{stack}.yaml"


def available_stacks(root: Path = REPO_ROOT) -> list[str]:
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in root.glob("Pulumi.*.yaml"))


def load_stack_yaml(stack: str, root: Path = REPO_ROOT) -> dict[str, Any]:
    """The stack file's `config:` map, as `pulumi config` would hand it to the program."""
    path = stack_file(stack, root)
    if not path.is_file():
        raise StackFileError(f"no stack file {path.name}; allowed stacks: {', '.join(available_stacks(root))}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise StackFileError(f"{path.name} is not UTF-8: byte 0x{data[exc.start]:02x} on line {line}; allowed: "
                             "a UTF-8 text file (re-save it as UTF-8)") from None
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise StackFileError(f"{path.name} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise StackFileError(f"{path.name}: the document is a {type(document).__name__}; allowed: a mapping with "
                             "a 'config' key, as `pulumi config set` writes it")
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise StackFileError(f"{path.name}: 'config' must be a mapping of keys to values")
    return config


def engine_config(config: Mapping[str, Any]) -> dict[str, str]:
    """Encode config as the Pulumi engine passes it to a program: strings, objects as JSON."""
    encoded = {}
    for key, value in config.items():
        full = key if ":" in key else f"{NAMESPACE}:{key}"
        encoded[full] = value if isinstance(value, str) else json.dumps(value)
    return encoded


def stack_config(stack: str, overrides: Mapping[str, Any] | None = None, root: Path = REPO_ROOT
                 ) -> dict[str, Any]:
    """The stack YAML's config with `overrides` (keys with or without `inferforge:`) deep-merged on top."""
    config = dict(load_stack_yaml(stack, root))
    for key, value in (overrides or {}).items():
        full = key if ":" in key else f"{NAMESPACE}:{key}"
        current = config.get(full)
        config[full] = _merge(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
    return config


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(merged.get(key), dict) and isinstance(value, dict) \
            else value
    return merged


def validate_stack(stack: str, overrides: Mapping[str, Any] | None = None, root: Path = REPO_ROOT
                   ) -> PlatformConfig:
    """Parse and validate a stack's config (raises ConfigError / StackFileError)."""
    return parse_stack_config(engine_config(stack_config(stack, overrides, root)))


def ensure_main_thread_event_loop() -> None:
    """Give this thread a usable current event loop if it has none.

    Pulumi's mock runtime drives its futures with the thread's current event loop; after an
    `asyncio.run()` elsewhere in the process there is none ("no current event loop in thread").
    """
    policy = asyncio.get_event_loop_policy()
    try:
        closed = policy.get_event_loop().is_closed()
    except RuntimeError:
        closed = True
    if closed:
        policy.set_event_loop(policy.new_event_loop())


def render_stack(stack: str, config_overrides: Mapping[str, Any] | None = None, root: Path = REPO_ROOT
                 ) -> list[RenderedResource]:
    """Run the program for `stack` under mocks and return every resource it registered, sorted by URN.

    Bad config raises ConfigError before any resource is registered.
    """
    config = engine_config(stack_config(stack, config_overrides, root))
    cfg = parse_stack_config(config)  # validated before the runtime exists: nothing is half-registered

    def run() -> None:
        import pulumi

        from . import program

        for key, value in program.build_platform(cfg).items():
            pulumi.export(key, value)

    return render_program(run, stack=stack, config=config, location=cfg.location)


def render_program(build: Callable[[], object], *, stack: str = "test", config: Mapping[str, str] | None = None,
                   location: str = "westeurope") -> list[RenderedResource]:
    """Run ``build`` as a Pulumi program under the Azure mocks (stacks/mocks.py); every registration, sorted by URN.

    The one mock harness: `plan` renders whole stacks through it, and tests render single components
    (``build`` creates them) through it, so both see the same Azure-shaped outputs and record the same
    fields. ``config`` is the engine-encoded config (see :func:`engine_config`); an exception raised by
    ``build`` propagates.
    """
    from . import sdk_loading

    sdk_loading.install()  # before the program imports the SDK packages it uses

    import pulumi
    from pulumi.runtime import mocks as pulumi_mocks
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    from .mocks import AzureMocks, RecordingMonitor

    ensure_main_thread_event_loop()
    mocks = AzureMocks(location=location)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_all_config(dict(config or {}))
    pulumi_mocks.set_mocks(mocks, project=PROJECT, stack=stack, preview=True, monitor=monitor)
    try:
        _sync_await(run_pulumi_func(build))
    finally:
        pulumi.runtime.set_all_config({})
    # Sorted by URN: registration order depends on async timing, and plans are diffed in PRs.
    return [RenderedResource(type=r.type, name=r.name, urn=r.urn, parent_urn=r.parent_urn,
                             inputs=_plain(r.inputs), custom=r.custom, id=r.id, dependencies=r.dependencies,
                             property_dependencies=r.property_dependencies, custom_timeouts=r.custom_timeouts,
                             provider=r.provider)
            for r in sorted(monitor.registrations, key=lambda r: r.urn)]


_SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc's special signature key
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


class SecretValue(str):
    """A secret input: policies see its value (as CrossGuard does); plan output redacts it."""


def _mark_secret(value: Any) -> Any:
    if isinstance(value, str):
        return SecretValue(value)
    if isinstance(value, dict):
        return {k: _mark_secret(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_secret(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """Inputs as policies see them: secrets unwrapped (marked SecretValue), everything JSON-able."""
    if isinstance(value, dict):
        if value.get(_SECRET_SIG_KEY) == _SECRET_SIG:
            # Pulumi pushes a nested secret's secretness up to the top-level property: all of it is secret.
            return _mark_secret(_plain(value.get("value")))
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


__all__ = ["ConfigError", "RenderedResource", "SecretValue", "StackFileError", "available_stacks", "render_program",
           "render_stack", "stack_config", "validate_stack"]
