"""`python -m inference.bench ...`: see inference/bench/cli.py."""

import sys

from ..bench.cli import main

sys.exit(main())
