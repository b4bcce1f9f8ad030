"""Console scripts of the installed distribution (pyproject.toml ``[project.scripts]``).

Each runs the very command of its ``python -m`` form in a checkout:

- ``inferforge-plan``     = ``python -m stacks plan``    (needs the ``platform`` extra)
- ``inferforge-policies`` = ``python -m policies``       (needs the ``platform`` extra)
- ``inferforge-serve``    = ``python -m inference serve`` (needs the ``serve`` extra)
- ``inferforge-gateway``  = ``python -m gateway``        (needs the ``gateway`` extra)

The distribution has no base dependencies, so a script can be installed without the extra it needs;
it then names the extra and the missing distributions instead of failing with an import traceback.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from importlib import metadata

DISTRIBUTION = "inferforge"
EXIT_MISSING_EXTRA = 2

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


def extra_requirements(extra: str) -> list[str]:
    """Distribution names the installed metadata lists for `extra`; empty when not installed (a checkout)."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:  # run from a checkout: its requirement files, not extras, apply
        return []
    names = []
    for requirement in requires:
        _, _, marker = requirement.partition(";")
        match, name = _EXTRA_MARKER.search(marker), _NAME.match(requirement)
        if match and match.group(1) == extra and name:
            names.append(name.group(1))
    return names


def missing_distributions(extra: str) -> list[str]:
    """The distributions of `extra` that are not installed in this environment."""
    missing = []
    for name in extra_requirements(extra):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def _run(script: str, extra: str, command: Callable[[list[str]], int]) -> int:
    missing = missing_distributions(extra)
    if missing:
        print(f"error: {script} needs the '{extra}' extra; not installed: {', '.join(missing)}\n"
              f"install it with: pip install \"{DISTRIBUTION}[{extra}]\"", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    try:
        return command(sys.argv[1:])
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def plan() -> int:
    """``inferforge-plan --stack <name> [--cwd <project>]``: preview a stack offline and check the policy pack."""

    def command(argv: list[str]) -> int:
        from .stacks import cli

        return cli.main(["plan", *argv], plan_prog="inferforge-plan")

    return _run("inferforge-plan", "platform", command)


def policies() -> int:
    """``inferforge-policies [list [--json] | --help]``: the CrossGuard pack's policies."""

    def command(argv: list[str]) -> int:
        from .policies.__main__ import main

        return main(argv)

    return _run("inferforge-policies", "platform", command)


def serve() -> int:
    """``inferforge-serve --model-dir <dir> ...``: the OpenAI-compatible server (ranks re-launch as
    ``python -m inferforge.inference``)."""

    def command(argv: list[str]) -> int:
        # The package's __main__ sets the OpenMP environment before torch loads; importing it runs nothing else.
        from .inference.__main__ import main

        return main(["serve", *argv])

    return _run("inferforge-serve", "serve", command)


def gateway() -> int:
    """``inferforge-gateway {migrate,serve,tenants,keys,usage} ...``: the AI gateway and its administration."""

    def command(argv: list[str]) -> int:
        from .gateway.cli import main

        return main(argv)

    return _run("inferforge-gateway", "gateway", command)
