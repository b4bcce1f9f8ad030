"""`python -m inference serve ...` / `python -m inference make-model ...` (see inference/serve.py)."""

import os
import sys

# Must be set before torch (OpenMP) loads. GNU OpenMP's default lets idle workers spin for a long time
# (~300,000 rounds), which steals the core that rank 0's HTTP/event-loop thread (and, on a small box,
# the client) needs: measured 38 tok/s at batch 1 with spinning workers against 57-59 with
# OMP_WAIT_POLICY=PASSIVE. PASSIVE in turn pays a futex wake-up for every parallel op of a step (a
# 13.2 ms decode step became 16 ms). A short spin (3,000 rounds, tens of microseconds) covers the gaps
# between the ops of one step and sleeps between steps: 13.7 ms per step. An explicit value wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "3000"

from .serve import main  # noqa: E402 - after the environment above

if __name__ == "__main__":
    sys.exit(main())
