"""What the gateway knows of a caller: its tenant (with limits and options) and its principal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TENANT_COLUMNS = ("id", "name", "models", "rpm", "tpm", "max_concurrent", "monthly_tokens", "cache_enabled",
                  "fail_open", "safety_threshold", "safety_fail_open", "entra_app_ids")


@dataclass(frozen=True)
class Tenant:
    """A team that calls models; 0 in a limit means no limit."""

    id: int
    name: str
    models: tuple[str, ...]
    rpm: int = 0
    tpm: int = 0
    max_concurrent: int = 0
    monthly_tokens: int = 0
    cache_enabled: bool = False
    fail_open: bool = False
    safety_threshold: int = 4
    safety_fail_open: bool = False
    entra_app_ids: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Tenant:
        values = {name: row[name] for name in TENANT_COLUMNS}
        values["models"] = tuple(values["models"] or ())
        values["entra_app_ids"] = tuple(values["entra_app_ids"] or ())
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in TENANT_COLUMNS}


@dataclass(frozen=True)
class Caller:
    """An authenticated request's identity: who (principal), for whom (tenant), with which key."""

    tenant: Tenant
    principal: str
    key_id: str | None = None
    key_limits: dict[str, int] = field(default_factory=dict)
