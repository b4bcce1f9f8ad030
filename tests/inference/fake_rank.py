"""Stand-in rank processes for supervisor tests: real processes, real signals, no model.

    python -m tests.inference.fake_rank supervise DIR FOLLOWER_MODE [RANK0_MODE]

runs `inference.supervisor.Supervisor` over two fake ranks (this module with RANK=0/1) and exits
with its status. Rank 0 records every signal it receives in DIR/rank0.signals, in order; it answers
SIGTERM like a draining server whose step is stuck (it records it and keeps running, or with
RANK0_MODE=drains, releases the follower and exits 0) and SIGUSR1 by exiting 1 (RANK0_MODE=hung:
it records it and keeps running). FOLLOWER_MODE: `dies` (SIGKILLs itself once DIR/die exists),
`released` (exits 0 once DIR/released exists).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.01)


def rank0(out: Path, mode: str) -> None:
    def on_signal(signum: int, frame: object) -> None:
        with (out / "rank0.signals").open("a") as f:
            f.write(signal.Signals(signum).name + "\n")
        if signum == signal.SIGUSR1 and mode != "hung":
            os._exit(1)
        if signum == signal.SIGTERM and mode == "drains":
            (out / "released").touch()
            os._exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)
    (out / "rank0.pid").write_text(str(os.getpid()))
    (out / "rank0.ready").touch()
    while True:
        signal.pause()


def follower(out: Path, mode: str) -> None:
    if mode == "dies":
        _wait_for(out / "die")
        os.kill(os.getpid(), signal.SIGKILL)
    _wait_for(out / "released")


def main(argv: list[str]) -> int:
    if argv[0] == "supervise":
        from inference.supervisor import Supervisor

        out, follower_mode = argv[1], argv[2]
        rank0_mode = argv[3] if len(argv) > 3 else "stuck"
        modes = [rank0_mode, follower_mode]
        commands = [[sys.executable, "-m", "tests.inference.fake_rank", "rank", out, modes[r]] for r in range(2)]
        envs = [dict(os.environ, RANK=str(r)) for r in range(2)]
        return Supervisor(commands, envs).run()
    out, mode = Path(argv[1]), argv[2]
    if os.environ["RANK"] == "0":
        rank0(out, mode)
    else:
        follower(out, mode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
