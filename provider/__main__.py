"""Serve inferforge's components to any Pulumi language: the entry point PulumiPlugin.yaml's host launches.

`pulumi package add` runs this (`python provider` in a fresh `venv` here, with the engine's address as the
argument); `component_provider_host` infers the package schema from the components' type annotations and answers
Construct for `inferforge:index:<Component>`. See components/package.py for what that requires of a component.
"""

import sys
from pathlib import Path

# The package lives in the checkout this folder is part of (inferforge/ resolves to the four top-level packages).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inferforge.components import package  # noqa: E402

import inferforge  # noqa: E402 - needs the path above

if __name__ == "__main__":
    from pulumi.provider.experimental import component_provider_host

    component_provider_host(package.components(), package.PACKAGE, version=inferforge.__version__)
