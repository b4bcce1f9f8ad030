"""`python -m inference.bench ...`: see inference/bench/cli.py."""

import sys

from inference.bench.cli import main

sys.exit(main())
