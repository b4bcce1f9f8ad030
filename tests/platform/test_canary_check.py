"""`python -m stacks canary check`: the decision on recorded Prometheus answers (the HTTP API's documented JSON
shape), and the stack file rewrite of promote and rollback, comments kept. No network."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from inferforge.stacks import canary
from inferforge.stacks.canary import Thresholds, VersionNumbers, decide, scalar
from inferforge.stacks.render import REPO_ROOT, validate_stack

DIGEST = "sha256:" + "c0ffee12" * 8
CANARY = f"""    canary:                       # the next server version, beside the stable one
      image:
        repository: inferforge/inference
        tag: "0.2.0"
        digest: "{DIGEST}"
      traffic:
        stable: 95
        canary: 5
"""


def vector(value: float | None) -> dict[str, Any]:
    """A recorded instant-query answer of Prometheus's /api/v1/query."""
    result = [] if value is None else [{"metric": {}, "value": [1767225600.0, str(value)]}]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def recorded(stable: dict[str, float | None], canary_: dict[str, float | None]) -> Any:
    """A query function answering each PromQL from the numbers of the version it names."""
    asked: list[str] = []

    def query(promql: str) -> dict[str, Any]:
        asked.append(promql)
        numbers = canary_ if 'namespace="inference-canary"' in promql or 'version="canary"' in promql else stable
        if "histogram_quantile" in promql:
            return vector(numbers["p95"])
        if "inferforge_gateway_upstream_requests_total" in promql:
            return vector(numbers["gw_5xx"] if 'status=~"5.."' in promql else numbers["gw"])
        if "requests_rejected_total" in promql:
            return vector(numbers["errors"] if "reason=~" in promql else numbers["rejected"])
        return vector(numbers["ok"])
    query.asked = asked  # type: ignore[attr-defined]
    return query


HEALTHY = {"ok": 9_500, "rejected": 10, "errors": 5, "gw": 9_510, "gw_5xx": 5, "p95": 2.0}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    shutil.copy(REPO_ROOT / "Pulumi.yaml", tmp_path)
    text = (REPO_ROOT / "Pulumi.dev.yaml").read_text()
    anchor = "    image:                        # in the platform registry"
    assert anchor in text
    (tmp_path / "Pulumi.dev.yaml").write_text(text.replace(anchor, CANARY + anchor, 1))
    return tmp_path


def test_prometheus_answers_are_read_as_documented() -> None:
    assert scalar(vector(12.5)) == 12.5 and scalar(vector(None)) is None
    assert scalar({"status": "success", "data": {"resultType": "vector",
                                                 "result": [{"metric": {}, "value": [1.0, "NaN"]}]}}) is None
    assert scalar({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}}) == 3.0
    with pytest.raises(RuntimeError, match="bad_data"):
        scalar({"status": "error", "errorType": "bad_data", "error": "parse error"})


@pytest.mark.parametrize(("canary_numbers", "decision"), [
    ({**HEALTHY, "ok": 500, "gw": 510}, "promote"),
    ({**HEALTHY, "ok": 40, "rejected": 0, "errors": 0, "gw": 40, "gw_5xx": 0}, "hold"),  # too few requests
    ({**HEALTHY, "ok": 500, "rejected": 30, "errors": 30, "gw": 530, "gw_5xx": 30}, "rollback"),  # 5.7% errors
    ({**HEALTHY, "ok": 500, "gw": 510, "gw_5xx": 40}, "rollback"),  # the gateway sees what the server cannot
    ({**HEALTHY, "ok": 500, "gw": 510, "p95": 2.6}, "rollback"),  # p95 1.3x stable's
])
def test_the_decision_follows_the_thresholds(canary_numbers, decision) -> None:
    query = recorded(HEALTHY, canary_numbers)
    stable = canary.measure(query, "m", "inference", "stable", "10m")
    canary_ = canary.measure(query, "m", "inference-canary", "canary", "10m")
    assert decide(stable, canary_, Thresholds()).decision == decision


def test_a_stable_version_without_errors_does_not_make_one_canary_error_fatal() -> None:
    stable, canary_ = VersionNumbers(1000, 0, 1.0), VersionNumbers(200, 1, 1.0)
    assert decide(stable, canary_, Thresholds()).decision == "promote"  # 0.5% < the 1% floor


def test_check_prints_the_numbers_and_rollback_with_apply_removes_the_canary_keeping_comments(root, capsys) -> None:
    query = recorded(HEALTHY, {**HEALTHY, "ok": 500, "gw": 510, "gw_5xx": 60})
    before = (root / "Pulumi.dev.yaml").read_text()
    status = canary.run(["check", "--stack", "dev", "--prometheus-url", "http://prom", "--apply"], query, root)
    out = capsys.readouterr().out
    assert status == 1 and "decision: rollback" in out and "canary: requests=510" in out
    assert 'namespace="inference-canary"' in " ".join(query.asked)
    after = (root / "Pulumi.dev.yaml").read_text()
    assert after == before.replace(CANARY, "")
    assert validate_stack("dev", root=root).inference.canary is None


def test_promote_with_apply_makes_the_canary_image_the_stable_one(root, capsys) -> None:
    query = recorded(HEALTHY, {**HEALTHY, "ok": 500, "gw": 510})
    status = canary.run(["check", "--stack", "dev", "--prometheus-url", "http://prom", "--apply"], query, root)
    assert status == 0 and "decision: promote" in capsys.readouterr().out
    text = (root / "Pulumi.dev.yaml").read_text()
    section = yaml.safe_load(text)["config"]["inferforge:inference"]
    assert "canary" not in section
    assert section["image"] == {"repository": "inferforge/inference", "tag": "0.2.0", "digest": DIGEST}
    assert "# GPU memory (checked by `plan`)" in text  # the section's comments stay
    assert validate_stack("dev", root=root).inference.image.digest == DIGEST


def test_hold_changes_nothing(root, capsys) -> None:
    before = (root / "Pulumi.dev.yaml").read_text()
    query = recorded(HEALTHY, {**HEALTHY, "ok": 3, "rejected": 0, "errors": 0, "gw": 3, "gw_5xx": 0})
    assert canary.run(["check", "--stack", "dev", "--prometheus-url", "http://prom", "--apply"], query, root) == 0
    assert "decision: hold" in capsys.readouterr().out
    assert (root / "Pulumi.dev.yaml").read_text() == before


def test_a_stack_without_a_canary_is_a_usage_error(capsys) -> None:
    assert canary.run(["check", "--stack", "dev", "--prometheus-url", "http://prom"], recorded(HEALTHY, HEALTHY)) == 2
    assert "no model section has a canary" in capsys.readouterr().err
