"""`python -m stacks plan`: preview a stack offline and check it against the policy pack.

Runs the real program under Pulumi's mock runtime (no CLI, no credentials, nothing created), prints
a preview-like tree of every resource `pulumi up` would create, evaluates the CrossGuard pack with
the stack's enforcement config (policies/config/<stack>.json, else its environment's), and exits
non-zero when a mandatory policy is violated.

Exit codes: 0 clean (advisory findings allowed), 1 mandatory policy violations, 2 bad input
(unknown stack, invalid stack config, invalid policy config).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import cost
from .config import ConfigError, PlatformConfig
from .gpu_memory import ASSUMPTION, describe
from .render import (
    REPO_ROOT,
    RenderedResource,
    SecretValue,
    StackFileError,
    available_stacks,
    render_stack,
    validate_stack,
)

EXIT_OK, EXIT_MANDATORY, EXIT_BAD_INPUT = 0, 1, 2


def resource_tree(resources: Sequence[RenderedResource]) -> str:
    """A `pulumi preview`-like tree: each resource under its parent, with type and name."""
    children: dict[str | None, list[RenderedResource]] = {}
    urns = {r.urn for r in resources}
    for resource in resources:
        parent = resource.parent_urn if resource.parent_urn in urns else None
        children.setdefault(parent, []).append(resource)

    lines = ["     Type                                                   Name", " +   pulumi:pulumi:Stack"]

    def walk(parent: str | None, depth: int) -> None:
        for resource in children.get(parent, []):
            indent = "   " * depth
            lines.append(f" +   {indent}├─ {resource.type:<{max(1, 52 - len(indent))}} {resource.name}")
            walk(resource.urn, depth + 1)

    walk(None, 1)
    return "\n".join(lines)


def counts_summary(resources: Sequence[RenderedResource]) -> str:
    custom = [r for r in resources if r.custom]
    by_provider = Counter(r.type.split(":", 1)[0] for r in custom)
    parts = ", ".join(f"{n} {p}" for p, n in sorted(by_provider.items()))
    return (f"Resources:\n    + {len(custom)} to create ({parts})\n"
            f"    {len(resources) - len(custom)} components, {len(resources)} registrations in all")


def gpu_memory_summary(cfg: PlatformConfig) -> str:
    """Per served model, one GPU rank's memory as the engine's own planner sizes it, and the assumption checked."""
    lines = [f"GPU memory per rank (the engine's KV planner, inference/kv_plan.py; checked: {ASSUMPTION}):"]
    for key, model, pool, plan in cfg.gpu_memory_plans():
        head = f"  {key} '{model.model_name}' on {pool.vm_size}, tpSize {model.tp_size}, {model.dtype}: "
        lines.append(head + (describe(plan) if plan else "unknown model shape (not checked)"))
    return "\n".join(lines)


def recovery(resources: Sequence[RenderedResource]) -> Any:
    """The regional-outage RPO and RTO derived from the rendered resources (policies/recovery.py, issue 22)."""
    from inferforge.policies.recovery import Res, assess

    return assess(Res(r.type, r.name, r.urn, r.inputs) for r in resources)


def recovery_summary(resources: Sequence[RenderedResource]) -> str:
    """RPO and RTO of losing the primary region, each with the resource that sets the bound, then every path."""
    from inferforge.policies.recovery import fmt

    result = recovery(resources)
    if result.region is None:
        return "Recovery (regional outage): no regional resources rendered"
    rpo, rto = result.rpo_bound, result.rto_bound
    lines = [f"Recovery if {result.region} is lost (surviving regions: {', '.join(result.survivors) or 'none'}; "
             "derived from the rendered resources, policies/recovery.py):",
             f"  RPO {fmt(rpo.minutes) if rpo else 'n/a (no data store)'}"
             + (f" - {rpo.text()}" if rpo else ""),
             f"  RTO {fmt(rto.minutes) if rto else 'n/a'}" + (f" - {rto.text()}" if rto else "")]
    lines += [f"    rpo  {b.text()}" for b in result.rpo] + [f"    rto  {b.text()}" for b in result.rto]
    lines += [f"    lost {text}" for text in result.lost_state]
    return "\n".join(lines)


def redact(value: Any) -> Any:
    """Replace secret inputs by a marker so `--json` output never carries them."""
    if isinstance(value, SecretValue):
        return "[secret]"
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _json_document(stack: str, resources: Sequence[RenderedResource], violations: Sequence[Any] | None,
                   estimate: Any = None, cost_diff: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "stack": stack,
        "summary": {"create": sum(r.custom for r in resources), "components": sum(not r.custom for r in resources),
                    "byType": dict(sorted(Counter(r.type for r in resources if r.custom).items()))},
        "resources": [{"urn": r.urn, "type": r.type, "name": r.name, "parent": r.parent_urn, "custom": r.custom,
                       "id": r.id, "inputs": redact(r.inputs)} for r in resources],
        "violations": None if violations is None else [v.to_dict() for v in violations],
        "cost": None if estimate is None else {**estimate.to_dict(), "diff": cost_diff},
        "recovery": recovery(resources).to_dict(),
    }


def default_project_dir() -> Path:
    """This checkout when the package runs from one (`python -m stacks plan`); installed, the current
    directory, which is where a consumer's Pulumi.yaml and Pulumi.<stack>.yaml live (`inferforge-plan`)."""
    return REPO_ROOT if (REPO_ROOT / "Pulumi.yaml").is_file() else Path.cwd()


def project_problem(project_dir: Path, prog: str) -> str | None:
    """Why `project_dir` holds nothing to plan (run outside a project), or None."""
    if not project_dir.is_dir():
        return f"project directory {project_dir} does not exist; pass --cwd <your Pulumi project's directory>"
    if not available_stacks(project_dir):
        return (f"no stack files (Pulumi.<stack>.yaml) in {project_dir.resolve()}: this is not a Pulumi project "
                f"directory; run {prog} from your project's directory or pass --cwd <project dir>")
    return None


def _parser(prog: str) -> argparse.ArgumentParser:
    project_dir = default_project_dir()
    summary = __doc__.split("\n\n")[0].split(": ", 1)[1]  # without the checkout command it opens with
    parser = argparse.ArgumentParser(prog=prog, description=f"{prog}: {summary}")
    stacks = ", ".join(available_stacks(project_dir)) or f"none found in {project_dir}"
    parser.add_argument("--stack", required=True, help=f"stack to plan (a Pulumi.<stack>.yaml); one of: {stacks}")
    parser.add_argument("--cwd", type=Path, default=project_dir,
                        help=f"project directory holding the Pulumi.<stack>.yaml files (default: {project_dir})")
    parser.add_argument("--json", action="store_true", help="print resources, inputs and violations as JSON")
    parser.add_argument("--markdown", metavar="FILE", type=Path,
                        help="also write a Markdown summary (PR comment / $GITHUB_STEP_SUMMARY); '-' for stdout")
    parser.add_argument("--no-policies", action="store_true", help="preview only; skip the policy pack")
    parser.add_argument("--policy-config", metavar="FILE", type=Path,
                        help="policy-pack config (default: policies/config/<stack>.json)")
    parser.add_argument("--usage", metavar="FILE", type=Path,
                        help="usage file for the cost estimate (default: usage.<stack>.yaml in the project directory; "
                             "missing: the documented defaults)")
    parser.add_argument("--base-plan", metavar="FILE", type=Path,
                        help="the base branch's `plan --json` output: its resources are priced with this table and "
                             "the cost change is reported (empty or missing file: no base)")
    parser.add_argument("--base-usage", metavar="FILE", type=Path,
                        help="usage file of the base branch (default: this stack's usage file)")
    parser.add_argument("--comment", metavar="FILE", type=Path,
                        help="also write this stack's section of the pull-request comment (findings + cost change)")
    return parser


def run(argv: Sequence[str] | None = None, prog: str = "python -m stacks plan") -> int:
    args = _parser(prog).parse_args(argv)
    problem = project_problem(args.cwd, prog)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    stacks = available_stacks(args.cwd)
    if args.stack not in stacks:
        print(f"error: unknown stack '{args.stack}'; allowed: {', '.join(stacks)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        resources = render_stack(args.stack, root=args.cwd)
    except (ConfigError, StackFileError) as exc:
        print(f"error: stack '{args.stack}': {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    usage_file = args.usage or cost.usage_path(args.stack, args.cwd)
    try:
        usage = cost.load_usage(usage_file)
        base_usage = cost.load_usage(args.base_usage) if args.base_usage else usage
    except ConfigError as exc:
        print(f"error: usage file: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    location = validate_stack(args.stack, root=args.cwd).location
    estimate = cost.estimate_stack(resources, usage, location)
    cost_diff = None
    if args.base_plan is not None:
        base_resources = cost.load_plan_json(args.base_plan)
        base = None if base_resources is None else cost.estimate_stack(base_resources, base_usage, location)
        cost_diff = cost.diff(base, estimate)

    violations = None
    if not args.no_policies:
        from inferforge.policies.offline import (
            PolicyConfigError,
            config_path_for,
            evaluate,
            format_markdown,
            format_text,
            has_mandatory,
        )

        config_path = args.policy_config or config_path_for(args.stack)
        if args.policy_config is None and not config_path.is_file():
            # A stack without its own enforcement file (one made by `pulumi new` from the template) is checked
            # with its environment's, as README's `pulumi up --policy-pack-config` line for it says.
            config_path = config_path_for(validate_stack(args.stack, root=args.cwd).environment)
        try:
            violations = evaluate(resources, config_path, args.stack)
        except (PolicyConfigError, OSError) as exc:
            print(f"error: policy config {config_path}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT

    if args.json:
        print(json.dumps(_json_document(args.stack, resources, violations, estimate, cost_diff), indent=2,
                         default=str))
    else:
        print(f"Previewing stack '{args.stack}' (offline: Pulumi mock runtime, nothing is created)\n")
        print(resource_tree(resources))
        print()
        print(counts_summary(resources))
        print()
        print(gpu_memory_summary(validate_stack(args.stack, root=args.cwd)))
        print()
        print(cost.format_text(estimate, args.stack))
        print()
        print(recovery_summary(resources))
        if cost_diff is not None:
            print("  " + cost.diff_line(cost_diff).replace("**", ""))
        if violations is not None:
            print()
            print(format_text(violations, args.stack))

    if args.markdown and violations is not None:
        summary = format_markdown(violations, args.stack)
        summary += "\n\n" + "\n".join(["<details><summary>Resources</summary>", "", "```",
                                       counts_summary(resources), "```", "</details>"])
        summary += "\n\n" + cost.format_markdown(estimate, args.stack, cost_diff)
        if str(args.markdown) == "-":
            print(summary)
        else:
            args.markdown.write_text(summary + "\n")

    if args.comment:
        findings = None
        if violations is not None:
            from inferforge.policies.offline import format_markdown as findings_markdown

            findings = findings_markdown(violations, args.stack)
        args.comment.write_text(cost.comment_markdown(estimate, args.stack, cost_diff or cost.diff(None, estimate),
                                                      findings) + "\n")

    if violations is not None and has_mandatory(violations):
        return EXIT_MANDATORY
    return EXIT_OK
