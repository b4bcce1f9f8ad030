"""`python -m inference serve ...` / `python -m inference make-model ...` (see inference/serve.py)."""

import os
import sys

# Must be set before torch (OpenMP) loads: idle OpenMP workers sleep instead of spinning, so they do not
# steal the core that rank 0's HTTP/event-loop thread needs between forwards. An explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from inference.serve import main  # noqa: E402 - after the environment above

if __name__ == "__main__":
    sys.exit(main())
