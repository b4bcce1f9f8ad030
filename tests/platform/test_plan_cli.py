"""`python -m stacks plan` as users and CI run it: a whole process, real program, mock cloud."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from inferforge.stacks.render import REPO_ROOT, stack_config

from tests.stack_overrides import WITH_WORKLOADS

COMPONENT_TYPES = ["inferforge:index:Network", "inferforge:index:KeyVault", "inferforge:index:PostgresPgvector",
                   "inferforge:index:ManagedRedis", "inferforge:index:FrontDoor", "inferforge:index:AksCluster",
                   "inferforge:index:Observability", "inferforge:index:WorkloadIdentity",
                   "inferforge:index:InferenceService", "inferforge:index:PgvectorExtension"]


def plan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stacks", "plan", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def write_stack(directory: Path, stack: str, overrides: dict) -> Path:
    """A user's stack file: the shipped one with `overrides` set, as `pulumi config set` would leave it."""
    import yaml

    (directory / f"Pulumi.{stack}.yaml").write_text(
        yaml.safe_dump({"config": stack_config(stack, overrides)}, sort_keys=False))
    return directory


@pytest.fixture(scope="module")
def dev_json_and_markdown(tmp_path_factory) -> tuple[dict, str]:
    """Dev's second phase (images pushed, digests set) with password auth turned on: a secret to redact."""
    directory = write_stack(tmp_path_factory.mktemp("plan"), "dev",
                            {**WITH_WORKLOADS, "postgres": {"passwordAuth": True}})
    summary = directory / "summary.md"
    result = plan("--stack", "dev", "--cwd", str(directory), "--json", "--markdown", str(summary))
    assert result.returncode == 1, result.stderr  # password auth is a mandatory violation in dev too
    return json.loads(result.stdout), summary.read_text()


def test_plan_prints_a_preview_tree_with_counts(tmp_path: Path):
    result = plan("--stack", "dev", "--cwd", str(write_stack(tmp_path, "dev", WITH_WORKLOADS)))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "pulumi:pulumi:Stack" in out
    for component in COMPONENT_TYPES:
        assert component in out
    assert "├─ azure-native:keyvault:Vault" in out
    assert "to create (" in out and "azure-native" in out and "kubernetes" in out
    assert "Policy pack 'inferforge' on stack 'dev'" in out


def test_plan_json_lists_every_resource_with_inputs_and_parent(dev_json_and_markdown):
    document, _ = dev_json_and_markdown
    resources = document["resources"]
    assert document["summary"]["create"] == sum(r["custom"] for r in resources)
    urns = {r["urn"] for r in resources}
    vault = next(r for r in resources if r["type"] == "azure-native:keyvault:Vault")
    assert vault["inputs"]["properties"]["enableRbacAuthorization"] is True
    assert vault["parent"] in urns and vault["id"].startswith("/subscriptions/")
    assert isinstance(document["violations"], list)


def test_plan_json_never_prints_secret_values(dev_json_and_markdown):
    document, _ = dev_json_and_markdown
    secrets = [r for r in document["resources"] if r["type"] == "azure-native:keyvault:Secret"]
    assert len(secrets) == 2  # the gateway's generated pepper and the PostgreSQL password of this fixture
    assert all(secret["inputs"]["properties"]["value"] == "[secret]" for secret in secrets)
    server = next(r for r in document["resources"] if r["type"] == "azure-native:dbforpostgresql:Server")
    assert server["inputs"]["administratorLoginPassword"] == "[secret]"


def test_plan_markdown_summary_is_written(dev_json_and_markdown):
    _, markdown = dev_json_and_markdown
    assert markdown.startswith("#") or "inferforge" in markdown
    assert "mandatory" in markdown.lower() and "postgres-password-auth-disabled" in markdown
    assert "to create" in markdown


def test_plan_outside_a_project_says_there_are_no_stack_files_and_how_to_point_at_one(tmp_path: Path):
    result = plan("--stack", "dev", "--cwd", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"no stack files (Pulumi.<stack>.yaml) in {tmp_path}" in result.stderr and "--cwd" in result.stderr

    missing = plan("--stack", "dev", "--cwd", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_plan_of_a_stack_without_a_shipped_policy_config_uses_its_environments(tmp_path: Path):
    # Pulumi.dev.yaml says environment: dev, so a stack named staging is checked with config/dev.json.
    (tmp_path / "Pulumi.staging.yaml").write_text((REPO_ROOT / "Pulumi.dev.yaml").read_text())
    result = plan("--stack", "staging", "--cwd", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "no violations" in result.stdout


def test_shipped_dev_stack_plans_clean_as_a_first_phase():
    result = plan("--stack", "dev")
    assert result.returncode == 0, result.stderr
    assert "no violations" in result.stdout
    assert "kubernetes" not in result.stdout.split("Resources:")[1]  # no workloads before the images exist


def test_weakened_prod_config_makes_plan_fail_naming_the_policy(tmp_path: Path):
    stack_yaml = (REPO_ROOT / "Pulumi.prod.yaml").read_text()
    stack_yaml += "  inferforge:keyVault:\n    publicNetworkAccess: Enabled\n"
    (tmp_path / "Pulumi.prod.yaml").write_text(stack_yaml)
    result = plan("--stack", "prod", "--cwd", str(tmp_path))
    assert result.returncode == 1
    assert "MANDATORY" in result.stdout and "keyvault-public-network-disabled" in result.stdout
    assert "Traceback" not in result.stderr


def test_on_demand_sdk_loading_renders_exactly_the_same_plan():
    fast = plan("--stack", "prod", "--json")
    full = plan("--stack", "prod", "--json", env={"INFERFORGE_FULL_SDK_IMPORT": "1"})
    assert fast.returncode == full.returncode == 0, fast.stderr + full.stderr
    assert fast.stdout == full.stdout


def test_plan_prints_the_recovery_of_a_regional_outage(dev_json_and_markdown, tmp_path: Path):
    # Issue 22: derived from the rendered resources; dev keeps no copy of its data outside its region.
    document, _ = dev_json_and_markdown
    recovery = document["recovery"]
    assert recovery["lostRegion"] == "westeurope" and recovery["survivingRegions"] == []
    assert recovery["rpo"]["minutes"] is None
    assert recovery["rpo"]["resource"] == "dbforpostgresql:Server 'postgres-server'"
    result = plan("--stack", "prod", "--no-policies", "--cwd", str(write_stack(tmp_path, "prod", {})))
    assert "Recovery if westeurope is lost (surviving regions: none" in result.stdout
    assert "  RPO 1 h (60 min) - PostgreSQL" in result.stdout and "  RTO unbounded" in result.stdout
