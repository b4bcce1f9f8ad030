"""Command line of the stacks package: `python -m stacks <command>`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

COMMANDS = {"plan": "preview a stack offline and check it against the policy pack"}


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = "\n".join(f"  {name:<6} {text}" for name, text in COMMANDS.items())
        stream = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        problem = "" if not argv or argv[0] in ("-h", "--help") else f"error: unknown command '{argv[0]}'\n"
        print(f"{problem}usage: python -m stacks <command> [options]\n\ncommands:\n{usage}", file=stream)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from stacks import plan

    return plan.run(argv[1:])
