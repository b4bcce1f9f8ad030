"""inferforge: a private AI platform on Azure (Pulumi components, stacks, CrossGuard policies) and an
OpenAI-compatible DeepSpeed server.

Installed (``pip install "inferforge[platform]"``), the five packages live under this one name:
``inferforge.components``, ``inferforge.stacks``, ``inferforge.policies``, ``inferforge.inference``,
``inferforge.gateway``,
so nothing generic such as ``components`` lands at the top of site-packages.

In a checkout they stay top-level folders (Pulumi.yaml, the image and ``python -m stacks`` use them
there); this package then also searches the checkout's root, so ``inferforge.components`` is the
``components/`` folder without an install. Inside each package imports are relative, so a package
works under either name.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

PACKAGES = ("components", "stacks", "policies", "inference", "gateway")

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "Pulumi.yaml").is_file() and all((_checkout / name / "__init__.py").is_file() for name in PACKAGES):
    __path__.append(str(_checkout))  # noqa: F821 - a package's module search path
