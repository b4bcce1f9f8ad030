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

from pulumi_policy import PolicyPack

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


registry = _load_registry()
_readme = Path(__file__).resolve().parent / "README.md"

PolicyPack(
    name=registry.PACK_NAME,
    description=registry.PACK_DESCRIPTION,
    readme=_readme.read_text(encoding="utf-8") if _readme.is_file() else None,
    enforcement_level=registry.PACK_ENFORCEMENT_LEVEL,
    policies=registry.ALL_POLICIES,
    provider="azure",
)
