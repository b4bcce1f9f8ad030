"""Benchmark `python -m stacks plan` as users run it: a whole process per run, median of several.

    python -m stacks.bench_plan --stack prod --runs 5 [--cwd DIR]

Prints each run's wall and CPU time (user+sys of the child), then median/min/max. Exit 1 if any run
fails (a plan that exits non-zero is not a valid timing).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

from .render import REPO_ROOT


def time_plan(stack: str, extra: list[str]) -> tuple[float, float, int]:
    """One `plan` process: (wall seconds, CPU seconds, exit code)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "stacks", "plan", "--stack", stack, *extra], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
    return wall, cpu, result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacks.bench_plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="prod")
    parser.add_argument("--runs", type=int, default=5, choices=range(1, 51), metavar="N (1-50)")
    parser.add_argument("--no-policies", action="store_true", help="time the preview alone")
    parser.add_argument("--cwd", metavar="DIR", help="project directory holding Pulumi.<stack>.yaml (plan's --cwd)")
    args = parser.parse_args(argv)
    extra = ["--no-policies"] if args.no_policies else []
    extra += ["--cwd", args.cwd] if args.cwd else []
    walls, cpus = [], []
    for run in range(1, args.runs + 1):
        wall, cpu, code = time_plan(args.stack, extra)
        print(f"run {run}: wall {wall:.2f} s, cpu {cpu:.2f} s, exit {code}")
        if code != 0:
            return 1
        walls.append(wall)
        cpus.append(cpu)
    label = f"plan --stack {args.stack}{' --no-policies' if args.no_policies else ''}"
    print(f"{label}: median wall {statistics.median(walls):.2f} s (min {min(walls):.2f}, max {max(walls):.2f}); "
          f"median cpu {statistics.median(cpus):.2f} s over {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
