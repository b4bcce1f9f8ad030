"""`python -m inference serve ...` / `python -m inference make-model ...` (see inference/serve.py)."""

import sys

from .serve import main

if __name__ == "__main__":
    sys.exit(main())
