"""Content safety providers: Azure AI Content Safety's REST call (against a local stand-in that
checks the request as the service documents it) and the local rules file."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from gateway.safety import AZURE_API_VERSION, AzureContentSafety, LocalRules, SafetyConfigError, SafetyUnavailable


def azure_stub(severities: dict[str, int], seen: list[dict[str, Any]], status: int = 200) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append({"url": str(request.url), "auth": request.headers.get("authorization"),
                     "body": json.loads(request.content)})
        if status != 200:
            return httpx.Response(status, json={"error": {"code": "x"}})
        return httpx.Response(200, json={"blocklistsMatch": [], "categoriesAnalysis": [
            {"category": c, "severity": severities.get(c, 0)} for c in ("Hate", "SelfHarm", "Sexual", "Violence")]})
    return httpx.MockTransport(handle)


async def token() -> str:
    return "entra-token"


def test_azure_provider_calls_text_analyze_with_an_entra_token_and_reads_severities() -> None:
    seen: list[dict[str, Any]] = []
    provider = AzureContentSafety("https://cs.example.cognitiveservices.azure.com/", token,
                                  httpx.AsyncClient(transport=azure_stub({"Violence": 4}, seen)))
    verdict = asyncio.run(provider.analyze("some text"))
    assert verdict.severities == {"Hate": 0, "SelfHarm": 0, "Sexual": 0, "Violence": 4}
    assert verdict.blocked_category(4) == "Violence" and verdict.blocked_category(6) is None
    (call,) = seen
    assert call["url"] == ("https://cs.example.cognitiveservices.azure.com/contentsafety/text:analyze"
                           f"?api-version={AZURE_API_VERSION}")
    assert call["auth"] == "Bearer entra-token"
    assert call["body"] == {"text": "some text", "categories": ["Hate", "SelfHarm", "Sexual", "Violence"],
                            "outputType": "FourSeverityLevels"}


def test_azure_provider_splits_long_text_at_the_service_limit_and_keeps_the_worst_severity() -> None:
    seen: list[dict[str, Any]] = []
    provider = AzureContentSafety("https://cs", token, httpx.AsyncClient(transport=azure_stub({"Hate": 2}, seen)))
    verdict = asyncio.run(provider.analyze("x" * 25_000))
    assert sorted(len(c["body"]["text"]) for c in seen) == [5_000, 10_000, 10_000]
    assert verdict.severities["Hate"] == 2


@pytest.mark.parametrize("status", [401, 429, 500])
def test_azure_provider_errors_are_unavailable_not_a_pass(status: int) -> None:
    provider = AzureContentSafety("https://cs", token, httpx.AsyncClient(transport=azure_stub({}, [], status)))
    with pytest.raises(SafetyUnavailable):
        asyncio.run(provider.analyze("text"))


def test_local_rules_take_the_highest_severity_per_category(tmp_path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"category": "Violence", "pattern": "attack", "severity": 4},
                                          {"category": "Violence", "pattern": "kill", "severity": 6},
                                          {"category": "Hate", "pattern": "slur", "severity": 6}]}))
    rules = LocalRules.from_file(path)
    verdict = asyncio.run(rules.analyze("ATTACK and kill"))
    assert verdict.severities == {"Violence": 6}
    assert asyncio.run(rules.analyze("fine")).severities == {}


@pytest.mark.parametrize(("content", "message"), [
    ("{", "cannot read"),
    (json.dumps({"rules": []}), "at least one rule"),
    (json.dumps({"rules": [{"category": "Hate", "pattern": "x"}]}), "exactly category, pattern and severity"),
    (json.dumps({"rules": [{"category": "Hate", "pattern": "x", "severity": 8}]}), "integer 0-7"),
    (json.dumps({"rules": [{"category": "Hate", "pattern": "[", "severity": 2}]}), "not a valid regular"),
])
def test_bad_rules_files_name_the_problem(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "rules.json"
    path.write_text(content)
    with pytest.raises(SafetyConfigError, match=message.replace("[", r"\[")):
        LocalRules.from_file(path)
