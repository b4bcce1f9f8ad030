"""Content safety before and after generation, behind one interface with two providers.

A provider returns a severity (0-7, Azure AI Content Safety's scale) per harm category; the gateway
blocks when any category reaches the tenant's threshold. `AzureContentSafety` calls the service's
REST API (`text:analyze`) with the gateway's managed identity (an Entra token for Cognitive
Services, no key); `LocalRules` matches regular expressions from a JSON file, for air-gapped
platforms. What happens when a provider fails (fail closed: 503, or open: let it through and count
it) is a tenant setting.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

AZURE_API_VERSION = "2024-09-01"
AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
AZURE_MAX_TEXT = 10_000  # characters per text:analyze call (the service's documented input limit)
CATEGORIES = ("Hate", "SelfHarm", "Sexual", "Violence")


class SafetyUnavailable(Exception):
    """The provider could not give a verdict."""


class SafetyConfigError(ValueError):
    """The rules file or provider settings are invalid."""


@dataclass(frozen=True)
class Verdict:
    severities: dict[str, int]

    def blocked_category(self, threshold: int) -> str | None:
        """The most severe category at or above the threshold, if any."""
        hits = [(sev, cat) for cat, sev in self.severities.items() if sev >= threshold]
        return max(hits)[1] if hits else None


class SafetyProvider(Protocol):
    async def analyze(self, text: str) -> Verdict: ...


@dataclass(frozen=True)
class Rule:
    category: str
    pattern: re.Pattern[str]
    severity: int


class LocalRules:
    """Regular-expression rules: `{"rules": [{"category", "pattern", "severity"}]}` (severity 0-7)."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @classmethod
    def from_file(cls, path: str | Path) -> LocalRules:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SafetyConfigError(f"cannot read safety rules {path}: {exc}") from exc
        rules = []
        items = data.get("rules") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            raise SafetyConfigError(f"safety rules {path}: expected {{\"rules\": [...]}} with at least one rule")
        for i, item in enumerate(items):
            where = f"safety rules {path}: rules[{i}]"
            if not isinstance(item, dict) or set(item) != {"category", "pattern", "severity"}:
                raise SafetyConfigError(f"{where} must have exactly category, pattern and severity")
            if not isinstance(item["severity"], int) or not 0 <= item["severity"] <= 7:
                raise SafetyConfigError(f"{where}.severity must be an integer 0-7, got {item['severity']!r}")
            try:
                pattern = re.compile(str(item["pattern"]), re.IGNORECASE)
            except re.error as exc:
                raise SafetyConfigError(f"{where}.pattern is not a valid regular expression: {exc}") from exc
            rules.append(Rule(str(item["category"]), pattern, item["severity"]))
        return cls(rules)

    async def analyze(self, text: str) -> Verdict:
        severities: dict[str, int] = {}
        for rule in self.rules:
            if rule.pattern.search(text):
                severities[rule.category] = max(severities.get(rule.category, 0), rule.severity)
        return Verdict(severities)


TokenProvider = Callable[[], Awaitable[str]]


def managed_identity_token() -> TokenProvider:
    """Entra tokens for Cognitive Services from the workload identity (cached, gateway/azure_auth.py)."""
    from .azure_auth import entra_token_source

    return entra_token_source(AZURE_SCOPE)


class AzureContentSafety:
    """Azure AI Content Safety `text:analyze` over REST; long text is analysed in 10K-character parts."""

    def __init__(self, endpoint: str, token: TokenProvider, client: httpx.AsyncClient | None = None,
                 timeout_s: float = 5.0) -> None:
        self.url = f"{endpoint.rstrip('/')}/contentsafety/text:analyze?api-version={AZURE_API_VERSION}"
        self.token = token
        self.client = client or httpx.AsyncClient(timeout=timeout_s)

    async def _analyze_part(self, text: str, bearer: str) -> dict[str, int]:
        body = {"text": text, "categories": list(CATEGORIES), "outputType": "FourSeverityLevels"}
        try:
            response = await self.client.post(self.url, json=body, headers={"Authorization": f"Bearer {bearer}"})
        except httpx.HTTPError as exc:
            raise SafetyUnavailable(f"content safety unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise SafetyUnavailable(f"content safety answered {response.status_code}")
        try:
            return {item["category"]: int(item.get("severity") or 0)
                    for item in response.json()["categoriesAnalysis"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise SafetyUnavailable("content safety answered an unexpected body") from exc

    async def analyze(self, text: str) -> Verdict:
        if not text:
            return Verdict({})
        bearer = await self.token()
        parts = [text[i:i + AZURE_MAX_TEXT] for i in range(0, len(text), AZURE_MAX_TEXT)]
        results = await asyncio.gather(*(self._analyze_part(part, bearer) for part in parts))
        severities: dict[str, int] = {}
        for result in results:
            for category, severity in result.items():
                severities[category] = max(severities.get(category, 0), severity)
        return Verdict(severities)
