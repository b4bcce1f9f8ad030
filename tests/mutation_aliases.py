"""A pytest plugin for mutation runs only (pyproject.toml [tool.mutmut] loads it with ``-p``).

mutmut names a mutant after its file (``policies/exposure.py`` -> ``policies.exposure``) and activates it only
in a module of that name, while the policy tests import the pack as ``inferforge.policies`` (the checkout's
folders under the distribution's name, inferforge/__init__.py). Here ``inferforge.<package>[.<module>]`` is the
very module object ``<package>[.<module>]``, so both names reach the same (mutated) functions.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType

PACKAGES = ("components", "stacks", "policies", "inference", "gateway")


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: object, target: object = None) -> ModuleSpec | None:
        if name.startswith("inferforge.") and name.split(".")[1] in PACKAGES:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        return importlib.import_module(spec.name.removeprefix("inferforge."))

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its own name


sys.meta_path.insert(0, _Alias())
