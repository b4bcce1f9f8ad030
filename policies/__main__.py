"""Entry point the Pulumi CLI runs: serve the pack's policies over gRPC.

    pulumi preview --stack prod --policy-pack policies --policy-pack-config policies/config/prod.json

The CLI runs this file with ``runpy.run_path("<pack dir>")`` from inside the pack directory, so it
executes as a top-level script: ``__package__`` is empty, relative imports fail, and the repository
root (which would make ``policies`` importable) is not on ``sys.path``. A published pack is unpacked
under a versioned directory name that is not even a valid module name. So the directory is registered
as a package under a fixed name and the registry is imported through it; inside the package every
module imports its siblings relatively, which works under that name and as ``policies`` alike.
Tests and the offline evaluator import ``policies.pack`` and never this file, because constructing
``PolicyPack`` starts a gRPC server and blocks.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from pulumi_policy import PolicyPack, StackValidationPolicy

_PACKAGE_ALIAS = "inferforge_policies"


def _load_registry() -> ModuleType:
    if __package__:  # run as `python -m policies` from the repository root
        return importlib.import_module(f"{__package__}.pack")
    pack_dir = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location(
        _PACKAGE_ALIAS, pack_dir / "__init__.py", submodule_search_locations=[str(pack_dir)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the policy package from {pack_dir}")
    package = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE_ALIAS] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{_PACKAGE_ALIAS}.pack")


USAGE = """usage: python -m policies [list [--json] | --help]

The inferforge CrossGuard policy pack. The Pulumi CLI runs this folder as a policy pack:

  pulumi preview --stack <dev|test|prod> --policy-pack policies --policy-pack-config policies/config/<stack>.json
  pulumi policy publish policies      (from a folder with PulumiPolicy.yaml; uses the pack's own venv)

Offline, without the CLI or credentials: python -m stacks plan --stack <dev|test|prod>

commands:
  list      the pack's policies: name, kind, severity and enforcement per shipped stack config
  --help    this text
"""


def _list_policies(registry: ModuleType, as_json: bool) -> str:
    import json

    config_dir = Path(__file__).resolve().parent / "config"
    levels = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(config_dir.glob("*.json"))}

    def level(config: dict, name: str) -> str:
        entry = config.get(name, config.get("all", registry.PACK_ENFORCEMENT_LEVEL.value))
        return entry.get("enforcementLevel", config.get("all", "mandatory")) if isinstance(entry, dict) else entry

    rows = [{"name": p.name, "kind": "stack" if isinstance(p, StackValidationPolicy) else "resource",
             "severity": p.severity.value,
             "enforcement": {stack: level(cfg, p.name) for stack, cfg in levels.items()}}
            for p in registry.ALL_POLICIES]
    if as_json:
        return json.dumps(rows, indent=2)
    width = max(len(r["name"]) for r in rows)
    stacks = list(levels)
    lines = [f"{'policy':<{width}}  kind      severity  " + "  ".join(f"{s:<10}" for s in stacks)]
    lines += [f"{r['name']:<{width}}  {r['kind']:<8}  {r['severity']:<8}  "
              + "  ".join(f"{r['enforcement'][s]:<10}" for s in stacks) for r in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`python -m policies ...` / `inferforge-policies ...` run by a person: print, never start the analyzer server."""
    registry = _load_registry()
    if argv in (["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    if argv and argv[0] == "list" and argv[1:] in ([], ["--json"]):
        print(_list_policies(registry, as_json=argv[1:] == ["--json"]))
        return 0
    problem = f"error: unknown arguments: {' '.join(argv)}\n" if argv else ""
    print(f"{problem}{USAGE}", end="", file=sys.stderr)
    return 2


def _serve_for_the_pulumi_cli() -> None:
    """Under `pulumi preview --policy-pack`: hand the pack to the analyzer server (blocks until killed)."""
    registry = _load_registry()
    readme = Path(__file__).resolve().parent / "README.md"
    PolicyPack(
        name=registry.PACK_NAME,
        description=registry.PACK_DESCRIPTION,
        readme=readme.read_text(encoding="utf-8") if readme.is_file() else None,
        enforcement_level=registry.PACK_ENFORCEMENT_LEVEL,
        policies=registry.ALL_POLICIES,
        provider="azure",
    )


if __package__:
    if __name__ == "__main__":  # `python -m policies` from the repository root: a person at a terminal
        sys.exit(main(sys.argv[1:]))
    # Imported (the installed `inferforge-policies` script calls main()): nothing runs at import.
else:
    _serve_for_the_pulumi_cli()  # runpy.run_path(<pack dir>) by the CLI's `python -m pulumi.policy`
