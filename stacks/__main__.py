"""Two entry points in one place, because Pulumi.yaml's `main: stacks/` runs this file.

- Under the Pulumi engine (`pulumi up/preview`): the program (stacks/program.py).
- From a shell (`python -m stacks plan --stack dev`): the offline command line.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _under_pulumi_engine() -> bool:
    from pulumi.runtime.settings import SETTINGS

    return SETTINGS.monitor is not None


if _under_pulumi_engine():
    # The engine runs this file by path: make `components` and `stacks` importable from the project root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from inferforge.stacks.program import main

    main()
else:
    import os

    from inferforge.stacks.cli import main as cli_main

    try:
        sys.exit(cli_main(sys.argv[1:]))
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
