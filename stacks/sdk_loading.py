"""Import only the Pulumi SDK modules the program uses, for the offline `plan`.

`from pulumi_azure_native import network` then `network.VirtualNetwork` runs the package's
`__init__`, which imports every one of its ~300 resource modules; with pulumi_kubernetes'
`core.v1` and friends that is most of `plan`'s start-up time. Here those packages become modules
that load a member's own file on first use (`VirtualNetwork` -> `virtual_network.py`, the shared
`_inputs`/`_enums`/`outputs` as needed). The classes are the SDK's own, unchanged; only when to
load them changes. A name this loader cannot place makes the package run its real `__init__`, so
the worst case is the normal import. `plan` output is identical either way (tested); set
INFERFORGE_FULL_SDK_IMPORT=1 to turn the loader off. `pulumi up` (stacks/__main__.py under the
engine) does not use it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import types
from typing import Any

AZURE_PACKAGES = ("network", "containerservice", "containerregistry", "cdn", "monitor", "authorization", "keyvault",
                  "dbforpostgresql", "frontdoor", "redisenterprise", "managedidentity", "operationalinsights",
                  "privatedns", "resources")
KUBERNETES_PACKAGES = ("core.v1", "apps.v1", "batch.v1", "networking.v1", "policy.v1", "meta.v1")
SHARED_MODULES = ("_inputs", "_enums", "outputs")


def _snake(name: str) -> str:
    # AFDOriginGroup -> afd_origin_group, get_client_config_output -> get_client_config
    name = name.removesuffix("_output")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class OnDemandPackage(types.ModuleType):
    """A package module that imports a member's defining submodule when the member is first read.

    Made from the SDK's own not-yet-loaded lazy module object (by changing its class), so every
    reference already handed out, `sys.modules` included, sees the same object.
    """

    _camel_case_files: bool = False
    _fully_loaded: bool = False

    @classmethod
    def adopt(cls, module: types.ModuleType, camel_case_files: bool) -> None:
        module.__class__ = cls
        module._camel_case_files = camel_case_files
        module._fully_loaded = False

    def _candidates(self, attr: str) -> list[str]:
        own = attr if self._camel_case_files else _snake(attr)
        if attr in SHARED_MODULES:
            return [attr]
        if attr.endswith(("Args", "ArgsDict")):
            return ["_inputs"]
        return [own, "_enums", "_inputs", "outputs"]

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr in ("_camel_case_files", "_fully_loaded"):
            raise AttributeError(attr)
        if not self._fully_loaded:
            for candidate in self._candidates(attr):
                if importlib.util.find_spec(f"{self.__name__}.{candidate}") is None:
                    continue
                module = importlib.import_module(f"{self.__name__}.{candidate}")
                if attr in SHARED_MODULES:
                    setattr(self, attr, module)
                    return module
                if attr in vars(module):
                    value = vars(module)[attr]
                    setattr(self, attr, value)
                    return value
            self._load_fully()
            if attr in vars(self):
                return vars(self)[attr]
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")

    def _load_fully(self) -> None:
        self._fully_loaded = True
        self.__spec__.loader.exec_module(self)  # the package's real __init__, into this module


def _install(full_name: str, camel_case_files: bool) -> None:
    module = sys.modules.get(full_name)
    # Only the SDK's lazy placeholder (created on import of the parent, never loaded) is adopted; a
    # package somebody already loaded stays as it is.
    if module is not None and type(module).__name__ == "_LazyModule":
        OnDemandPackage.adopt(module, camel_case_files)


def install() -> bool:
    """Make the SDK packages the program uses load on demand; returns whether the loader is active."""
    if os.environ.get("INFERFORGE_FULL_SDK_IMPORT") == "1":
        return False
    import pulumi_azure_native  # noqa: F401 - creates the subpackages' lazy placeholders
    import pulumi_kubernetes  # noqa: F401

    for package in AZURE_PACKAGES:
        _install(f"pulumi_azure_native.{package}", camel_case_files=False)
    for package in KUBERNETES_PACKAGES:
        group = package.split(".")[0]
        # Importing the group package creates the version's lazy placeholder without loading it.
        types.ModuleType.__getattribute__(importlib.import_module(f"pulumi_kubernetes.{group}"), "__name__")
        _install(f"pulumi_kubernetes.{package}", camel_case_files=True)
    return True
