"""Decode-step time of this checkout against another one, in one process, steps interleaved.

    git worktree add /tmp/before <commit>
    python -m inference.bench.paired_decode --baseline /tmp/before --model /tmp/bench-model --context 64 512

Both checkouts' `inference` packages are loaded under different names (their imports are
relative), each builds a `ModelRunner` on the same model, prefills `batch` sequences of `context`
tokens, then times `ModelRunner.execute` of decode steps alternately (old, new, new, old, ...), so
load from other processes hits both alike. Prints one JSON line per context: median step times and
the median of the per-step ratios; the two runners' logits are checked to agree on every step.
Understands the slot-cache step format (before paging) and the block-table one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

HERE = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def private_numba_cache() -> Iterator[Path]:
    """Numba caches the kernels of packages imported meanwhile in a temporary directory.

    Numba's on-disk cache (next to the source, in `__pycache__`) pickles the name of the module it
    compiled for. A checkout imported here as `inference_baseline` would leave entries that its own
    server, importing it as `inference`, then fails to load (ModuleNotFoundError at model load).
    """
    from numba.core import config

    before = config.CACHE_DIR
    with tempfile.TemporaryDirectory(prefix="paired-decode-numba-") as directory:
        config.CACHE_DIR = directory
        try:
            yield Path(directory)
        finally:
            config.CACHE_DIR = before


def load_checkout(name: str, root: Path) -> tuple[ModuleType, ModuleType]:
    """`engine` and `distributed` of the `inference` package under `root`, imported as `name`."""
    spec = importlib.util.spec_from_file_location(
        name, root / "inference" / "__init__.py", submodule_search_locations=[str(root / "inference")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    # Since the engine's split (issue 26) the runner and the config have modules of their own; an older
    # checkout has both in `engine`.
    if (root / "inference" / "model_runner.py").is_file():
        engine = ModuleType(f"{name}.engine_parts")
        engine.ModelRunner = importlib.import_module(f"{name}.model_runner").ModelRunner
        engine.EngineConfig = importlib.import_module(f"{name}.engine_config").EngineConfig
        engine.__name__ = f"{name}.engine"
    else:
        engine = importlib.import_module(f"{name}.engine")
    return engine, importlib.import_module(f"{name}.distributed")


class Side:
    """One checkout's runner and how it spells a step."""

    def __init__(self, engine: ModuleType, distributed: ModuleType, model: Path, batch: int, max_len: int) -> None:
        cfg = engine.EngineConfig(model_dir=model, dtype="float32", max_batch_size=batch, max_model_len=max_len,
                                  max_num_batched_tokens=max(2048, batch * max_len))
        self.runner = engine.ModelRunner(cfg, distributed.LaunchEnv(), torch.device("cpu"))
        # Both checkouts register their attention under the same transformers name: each side
        # re-registers its own before it runs (`activate`).
        self.kv_cache = sys.modules[engine.__name__.rpartition(".")[0] + ".kv_cache"]
        self.wire = distributed.WireStep
        self.slots = "moves" in {f.name for f in dataclasses.fields(self.wire)}
        blocks = -(-max_len // 16)
        self.tables = [list(range(i * blocks, (i + 1) * blocks)) for i in range(batch)]

    def activate(self) -> None:
        from transformers import AttentionInterface

        AttentionInterface.register(self.kv_cache.ATTENTION_NAME, self.kv_cache.paged_attention)

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, batch: int, length: int) -> None:
        if self.slots:
            step = self.wire([], 0, [(i, 0, length, True) for i in range(batch)], ids, positions)
        else:
            step = self.wire(0, [(0, length, True)] * batch, self.tables, ids, positions)
        self.activate()
        self.runner.execute(step)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> object:
        n = tokens.numel()
        if self.slots:
            return self.wire([], n, [], tokens, positions)
        return self.wire(n, [], self.tables, tokens, positions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.bench.paired_decode",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, type=Path, help="the other checkout's root directory")
    parser.add_argument("--model", required=True, type=Path, help="model directory")
    parser.add_argument("--context", type=int, nargs="+", default=[64], help="cached tokens per sequence")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with private_numba_cache():
        _compare(args)
    return 0


def _compare(args: argparse.Namespace) -> None:
    old_modules = load_checkout("inference_baseline", args.baseline.resolve())
    new_modules = load_checkout("inference_checkout", HERE)
    for context in args.context:
        result: dict[str, object] = {"context": context}
        max_len = context + args.steps + 16
        for batch in args.batch:
            old, new = Side(*old_modules, args.model, batch, max_len), Side(*new_modules, args.model, batch, max_len)
            generator = torch.Generator().manual_seed(batch)
            vocab = old.runner.vocab_size
            ids = torch.randint(3, vocab, (batch * context,), generator=generator)
            positions = torch.arange(context).repeat(batch)
            old.prefill(ids, positions, batch, context)
            new.prefill(ids, positions, batch, context)
            times: dict[int, list[float]] = {id(old): [], id(new): []}
            for step in range(args.steps):
                tokens = torch.randint(3, vocab, (batch,), generator=generator)
                at = torch.full((batch,), context + step, dtype=torch.int64)
                logits = {}
                for side in (old, new) if step % 2 else (new, old):
                    wire = side.decode(tokens, at)
                    side.activate()
                    start = time.perf_counter()
                    logits[id(side)] = side.runner.execute(wire)
                    times[id(side)].append(time.perf_counter() - start)
                torch.testing.assert_close(logits[id(new)], logits[id(old)], atol=1e-3, rtol=1e-3)
            warm = 4
            t_old, t_new = times[id(old)][warm:], times[id(new)][warm:]
            result[f"batch_{batch}"] = {
                "baseline_ms": round(1000 * statistics.median(t_old), 2),
                "checkout_ms": round(1000 * statistics.median(t_new), 2),
                "median_ratio": round(statistics.median(n / o for n, o in zip(t_new, t_old, strict=True)), 3),
            }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
