"""`pulumi new` from this repository (issue 14.2): the template's answers alone make a stack that plans clean.

`apply_template` does what the CLI does with a template directory, as read in github.com/pulumi/pulumi:
- sdk/go/common/workspace/templates.go (CopyTemplateFiles, walkFiles, transform): copy every file of the
  template directory (a git clone of the repository: its tracked files) except `.git`; in every file that is
  not binary (no NUL byte in its first 8000 bytes) replace `${PROJECT}` and `${DESCRIPTION}`, and `${PROJECT}`
  in file names;
- pkg/cmd/pulumi/newcmd/new.go (runNew): rewrite Pulumi.yaml with the chosen name and description, the
  `template:` section removed and the `pulumi:template` stack tag set to the template URL;
- pkg/cmd/pulumi/newcmd/config.go (promptForConfig, SaveConfig): ask each `template.config` key, the default
  taken when the answer is empty, and store each non-empty answer as a string under its key, never as a path
  (ParseConfigKey(..., path=false)), into the new stack's Pulumi.<stack>.yaml, on top of that file when the
  template shipped one of that name.
The Pulumi CLI itself is not available here; https://www.pulumi.com/docs/iac/guides/building-extending/creating-templates/
documents the same behaviour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from inferforge.stacks.config import ConfigError, parse_stack_config
from inferforge.stacks.render import PROJECT, REPO_ROOT
from inferforge.stacks.template_reference import BEGIN, END, template_config, template_prompts_markdown

TEMPLATE_URL = "https://github.com/example-org/inferforge"
# What sdk/go/common/workspace/project.json allows in `template:` and in each of its config entries
# (additionalProperties false: anything else makes every command on the project fail to load it).
TEMPLATE_KEYS = {"description", "quickstart", "important", "config"}
TEMPLATE_CONFIG_KEYS = {"description", "default", "secret"}


def tracked_files(root: Path) -> list[str]:
    """The files a clone of the repository holds, i.e. what `pulumi new <url>` copies."""
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return [name for name in listing.decode().split("\0") if name and (root / name).is_file()]


def _transform(text: str, project: str, description: str) -> str:
    return text.replace("${PROJECT}", project).replace("${DESCRIPTION}", description)


def apply_template(destination: Path, stack: str, answers: dict[str, str | None] | None = None, *,
                   project: str = "acme-ai", description: str = "Acme's private LLM platform") -> dict[str, str]:
    """`pulumi new <repo> --dir destination --stack stack`, answering the prompts; returns the config it stored.

    `answers` maps a template key to what the user types: absent means pressing Enter (the default), None or
    "" an empty answer to a prompt without default.
    """
    for name in tracked_files(REPO_ROOT):
        data = (REPO_ROOT / name).read_bytes()
        if b"\0" not in data[:8000]:
            data = _transform(data.decode(), project, description).encode()
        target = destination / _transform(name, project, "")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    project_file = destination / "Pulumi.yaml"
    manifest = yaml.safe_load(project_file.read_text())
    prompts = manifest.pop("template")["config"]
    manifest.update(name=project, description=description)
    tags = manifest.setdefault("config", {}).setdefault("pulumi:tags", {"value": {}})["value"]
    tags["pulumi:template"] = TEMPLATE_URL
    project_file.write_text(yaml.safe_dump(manifest, sort_keys=False))

    stored: dict[str, str] = {}
    for key, prompt in prompts.items():
        answer = (answers or {})[key] if key in (answers or {}) else prompt.get("default", "")
        if answer:  # the CLI stores no empty answer
            stored[key] = str(answer)
    stack_file = destination / f"Pulumi.{stack}.yaml"
    document = yaml.safe_load(stack_file.read_text()) if stack_file.is_file() else {}
    document.setdefault("config", {}).update(stored)
    stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
    return stored


def plan(project_dir: Path, stack: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The new project's own `python -m stacks plan`, run from that project as its users would."""
    return subprocess.run([sys.executable, "-m", "stacks", "plan", "--stack", stack, "--cwd", str(project_dir),
                           *args], cwd=project_dir, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def resources_of(document: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [r for r in document["resources"] if r["type"] == type_]


def test_template_section_holds_only_what_the_cli_reads():
    manifest = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    assert set(manifest["template"]) <= TEMPLATE_KEYS
    # The repository's own stacks keep this project file: its name stays a real project name, not ${PROJECT}.
    assert manifest["name"] == PROJECT and manifest["main"] == "stacks/"
    prompts = template_config()
    assert prompts, "the template asks for nothing"
    for key, prompt in prompts.items():
        assert set(prompt) <= TEMPLATE_CONFIG_KEYS, key
        assert key.startswith("inferforge:") and prompt.get("description"), key
        assert isinstance(prompt.get("default", ""), str), f"{key}: the CLI reads a default as a string"


def test_template_asks_for_what_the_issue_names():
    keys = set(template_config())
    for key in ("inferforge:owner", "inferforge:costCenter", "inferforge:location", "inferforge:environment",
                "inferforge:aks.authorizedIpRanges", "inferforge:registry.name", "inferforge:aks.gpuPools[0].vmSize"):
        assert key in keys


def test_every_template_key_is_a_config_key_and_its_default_is_valid():
    defaults = {key: prompt["default"] for key, prompt in template_config().items() if prompt.get("default")}
    cfg = parse_stack_config(defaults)  # an unknown key would be rejected by name
    assert cfg.environment == "dev" and cfg.owner == defaults["inferforge:owner"]
    assert cfg.aks.gpu_pools[0].vm_size == defaults["inferforge:aks.gpuPools[0].vmSize"]
    assert cfg.aks.authorized_ip_ranges == [defaults["inferforge:aks.authorizedIpRanges"]]
    assert cfg.deploy_workloads is False  # the first phase, like the shipped stacks


def test_readme_prompts_table_is_generated_from_pulumi_yaml():
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme[readme.index(BEGIN): readme.index(END) + len(END)]
    assert block == template_prompts_markdown(), "run: python -m stacks.template_reference --write"
    assert "pulumi new https://github.com/<org>/inferforge" in readme


def test_applied_template_is_a_project_without_the_template_section(tmp_path: Path):
    stored = apply_template(tmp_path, "staging")
    manifest = yaml.safe_load((tmp_path / "Pulumi.yaml").read_text())
    assert "template" not in manifest and manifest["name"] == "acme-ai"
    assert manifest["config"]["pulumi:tags"]["value"]["pulumi:template"] == TEMPLATE_URL
    config = yaml.safe_load((tmp_path / "Pulumi.staging.yaml").read_text())["config"]
    assert config == stored and all(isinstance(v, str) for v in config.values())
    assert "inferforge:registry.name" not in config  # no default, no answer: nothing stored
    assert (tmp_path / "stacks" / "program.py").is_file() and not (tmp_path / ".venv").exists()


def test_new_stack_from_the_default_answers_plans_clean_as_a_first_phase(tmp_path: Path):
    apply_template(tmp_path, "staging")
    assert not (tmp_path / "policies" / "config" / "staging.json").exists()  # checked with dev.json
    result = plan(tmp_path, "staging")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "Policy pack 'inferforge' on stack 'staging': no violations" in result.stdout
    assert "kubernetes" not in result.stdout.split("Resources:")[1]  # no workloads before the images exist


def test_new_stack_from_other_answers_plans_clean_with_those_answers(tmp_path: Path):
    answers = {"inferforge:location": "swedencentral", "inferforge:owner": "ml-platform",
               "inferforge:costCenter": "cc-4242", "inferforge:workload": "acmeai",
               "inferforge:registry.name": "cracmeai4242",
               # Both inside the ranges policies/config/dev.json allows.
               "inferforge:aks.authorizedIpRanges": "198.51.100.0/24, 203.0.113.64/26",
               "inferforge:aks.gpuPools[0].vmSize": "Standard_NC48ads_A100_v4"}
    apply_template(tmp_path, "acme", answers)
    result = plan(tmp_path, "acme", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert not [v for v in document["violations"] if v["enforcement_level"] == "mandatory"]
    cluster = resources_of(document, "azure-native:containerservice:ManagedCluster")[0]["inputs"]
    assert cluster["location"] == "swedencentral"
    assert {"198.51.100.0/24", "203.0.113.64/26"} <= set(cluster["apiServerAccessProfile"]["authorizedIPRanges"])
    assert cluster["tags"]["owner"] == "ml-platform" and cluster["tags"]["cost-center"] == "cc-4242"
    pools = resources_of(document, "azure-native:containerservice:AgentPool")
    assert [p["inputs"]["vmSize"] for p in pools if p["inputs"]["vmSize"].startswith("Standard_NC")] == \
        ["Standard_NC48ads_A100_v4"]
    registry = resources_of(document, "azure-native:containerregistry:Registry")[0]["inputs"]
    assert registry["registryName"] == "cracmeai4242"
    account = resources_of(document, "azure-native:storage:StorageAccount")[0]["inputs"]
    assert account["accountName"] == "stacmeaidev"  # derived from the workload answer


def test_answers_override_a_stack_file_the_template_ships(tmp_path: Path):
    # Stack name `dev` (the CLI's default): the copied Pulumi.dev.yaml is loaded and the answers set on top.
    apply_template(tmp_path, "dev", {"inferforge:owner": "ml-platform",
                                     "inferforge:aks.gpuPools[0].vmSize": "Standard_NC48ads_A100_v4"})
    result = plan(tmp_path, "dev", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    pool = next(p for p in resources_of(document, "azure-native:containerservice:AgentPool")
                if p["inputs"]["agentPoolName"] == "gpua100")  # the shipped pool, its size answered
    assert pool["inputs"]["vmSize"] == "Standard_NC48ads_A100_v4"
    cluster = resources_of(document, "azure-native:containerservice:ManagedCluster")[0]["inputs"]
    assert cluster["tags"]["owner"] == "ml-platform"


def test_prod_environment_answer_plans_clean_under_the_prod_policies(tmp_path: Path):
    apply_template(tmp_path, "production", {"inferforge:environment": "prod"})
    result = plan(tmp_path, "production", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    cluster = resources_of(document, "azure-native:containerservice:ManagedCluster")[0]["inputs"]
    assert cluster["apiServerAccessProfile"]["enablePrivateCluster"] is True


def test_ranges_the_environment_policy_does_not_allow_fail_naming_the_policy(tmp_path: Path):
    # The environment's policy config applies to a new stack: an answer outside its allow-list is caught.
    apply_template(tmp_path, "staging", {"inferforge:aks.authorizedIpRanges": "192.0.2.0/24"})
    result = plan(tmp_path, "staging")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    assert "MANDATORY" in result.stdout and "aks-api-server-restricted" in result.stdout


@pytest.mark.parametrize(("key", "answer", "named"), [
    ("inferforge:aks.authorizedIpRanges", "203.0.113.7/24", "inferforge:aks.authorizedIpRanges"),
    ("inferforge:aks.authorizedIpRanges", "203.0.113.0/24, office", "inferforge:aks.authorizedIpRanges"),
    ("inferforge:aks.gpuPools[0].vmSize", "Standard_NC24ads_A100", "inferforge:aks.gpuPools[0].vmSize"),
    ("inferforge:environment", "staging", "inferforge:environment"),
    ("inferforge:registry.name", "cr-acme", "inferforge:registry.name"),
])
def test_bad_answer_fails_naming_the_key(tmp_path: Path, key: str, answer: str, named: str):
    apply_template(tmp_path, "staging", {key: answer})
    result = plan(tmp_path, "staging")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr
    assert f"{named}:" in result.stderr
    assert "Traceback" not in result.stderr


def test_path_keys_apply_on_top_of_their_section():
    base = {"environment": "dev", "location": "westeurope", "owner": "a", "costCenter": "b",
            "aks": json.dumps({"authorizedIpRanges": ["203.0.113.0/24"],
                               "gpuPools": [{"name": "gpua100", "vmSize": "Standard_NC24ads_A100_v4", "maxCount": 2}]}),
            "inference": {"gpuPool": "gpua100"}}
    cfg = parse_stack_config({**base, "aks.gpuPools[0].vmSize": "Standard_NC48ads_A100_v4",
                              "aks.gpuPools[1].name": "gpuh100", "aks.gpuPools[1].vmSize": "Standard_NC40ads_H100_v5"})
    assert [(p.name, p.vm_size, p.max_count) for p in cfg.aks.gpu_pools] == [
        ("gpua100", "Standard_NC48ads_A100_v4", 2), ("gpuh100", "Standard_NC40ads_H100_v5", 1)]
    assert cfg.aks.authorized_ip_ranges == ["203.0.113.0/24"]
    with pytest.raises(ConfigError) as caught:
        parse_stack_config({**base, "aks.gpuPools[3].vmSize": "Standard_NC48ads_A100_v4"})
    assert caught.value.problems == ["inferforge:aks.gpuPools[3].vmSize: index 3 skips entries (the list has 1); "
                                     "allowed: an index from 0 to 1"]
