"""Command line: `python -m inference.bench {serve,compare,roofline} ...`."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import defaults
from ..bench.errors import BenchmarkError

PROMPT_FORMATS = ("ids", "text")
DTYPES = ("bfloat16", "float16", "float32")


# ---- argument types: each names what was wrong and what is allowed -------------------------------


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def request_rate(text: str) -> float:
    """Requests per second > 0, or 'inf' for all at once."""
    if text.strip().lower() in ("inf", "infinity"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected requests/s > 0 or 'inf', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected requests/s > 0 or 'inf', got {text!r}")
    return value


def percentile_list(text: str) -> list[float]:
    """Comma-separated percentiles within [0, 100], e.g. '50,90,99'."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like '50,90,99', got {text!r}") from None
    if not values or any(not 0 <= v <= 100 for v in values):
        raise argparse.ArgumentTypeError(f"percentiles must lie within [0, 100], got {text!r}")
    return values


def http_url(text: str) -> str:
    """An http(s) base URL without a trailing slash."""
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


def existing_dir(text: str) -> Path:
    """A directory that exists."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"directory {text!r} does not exist")
    return path


# ---- parser ---------------------------------------------------------------------------------------


def _add_workload_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-len", type=positive_int, default=32, help="prompt tokens (default 32)")
    parser.add_argument("--output-len", type=positive_int, default=64, help="generated tokens (default 64)")
    parser.add_argument("--random-prefix-len", type=non_negative_int, default=0,
                        help="a prefix of this many random tokens shared by every prompt, before its own "
                             "--input-len tokens (as vLLM's flag; default 0)")
    parser.add_argument("--num-prompts", type=positive_int, default=64, help="measured requests (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed for prompts and arrivals (default 0)")
    parser.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default="ids",
        help="send token ids (exact length; default) or their decoded text",
    )


def _add_http_args(parser: argparse.ArgumentParser, *, rate_and_concurrency: bool = True) -> None:
    parser.add_argument("--base-url", type=http_url, default="http://127.0.0.1:8000", help="server root URL")
    parser.add_argument("--model", default=None, help="model name to send (default: first of /v1/models)")
    parser.add_argument("--api-key", default=None, help="bearer key (default: none)")
    if rate_and_concurrency:
        parser.add_argument(
            "--request-rate",
            type=request_rate,
            default=math.inf,
            help="Poisson arrivals at this many requests/s (default inf: all at once)",
        )
        parser.add_argument(
            "--max-concurrency", type=positive_int, default=None, help="at most this many requests in flight"
        )
    parser.add_argument(
        "--burstiness", type=positive_float, default=1.0, help="gamma shape of arrival gaps; 1 = Poisson"
    )
    parser.add_argument("--warmup", type=non_negative_int, default=4, help="warm-up requests (default 4)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    parser.add_argument("--ready-timeout", type=positive_float, default=300.0, help="seconds to wait for readiness")
    parser.add_argument("--request-timeout", type=positive_float, default=300.0, help="seconds per request")
    parser.add_argument("--run-timeout", type=positive_float, default=1800.0, help="seconds for the measured run")
    parser.add_argument("--percentiles", type=percentile_list, default=[50.0, 90.0, 99.0], help="default '50,90,99'")


def build_parser() -> argparse.ArgumentParser:
    """The full CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m inference.bench",
        description="Serving benchmarks like `vllm bench serve`, HF baselines and a decode roofline.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,compare,roofline}")

    serve = sub.add_parser("serve", help="benchmark an OpenAI-compatible server over HTTP")
    _add_http_args(serve)
    _add_workload_args(serve)
    serve.add_argument("--tokenizer", type=existing_dir, required=True, help="tokenizer dir (for the vocabulary)")
    serve.add_argument("--out", type=Path, default=None, help="write the JSON result here")

    compare = sub.add_parser("compare", help="HF generate baselines and our server on the same prompts")
    _add_http_args(compare, rate_and_concurrency=False)
    _add_workload_args(compare)
    compare.add_argument("--model-dir", type=existing_dir, required=True, help="HF model + tokenizer dir")
    compare.add_argument(
        "--max-concurrency",
        type=positive_int,
        nargs="+",
        default=[64],
        help="one server run per value, e.g. '64 1' (default 64)",
    )
    compare.add_argument(
        "--launch-server",
        default=None,
        help="command that starts the server (quoted), stopped afterwards; omit to use a running --base-url",
    )
    compare.add_argument("--server-log", type=Path, default=None, help="server output (default: next to --out)")
    compare.add_argument(
        "--dtype",
        choices=DTYPES,
        default=defaults.DTYPE,  # the server's own default: the baseline computes in the same dtype
        help="HF baseline dtype; match the server's --dtype (default %(default)s)",
    )
    compare.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads for HF and OMP_NUM_THREADS for a launched server (default: all cores)",
    )
    compare.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="alternate HF baselines and server runs this many times; medians and paired ratios (default 1)",
    )
    compare.add_argument("--skip-hf-serial", action="store_true", help="skip HF one-at-a-time (the slowest baseline)")
    compare.add_argument("--out", type=Path, default=None, help="write the JSON result here")

    roof = sub.add_parser("roofline", help="batch-1 decode tokens/s against memory bandwidth / bytes per token")
    roof.add_argument(
        "--model-dir",
        type=existing_dir,
        required=True,
        help="HF model dir of a few hundred MB (python -m inference.model_factory --preset roofline)",
    )
    roof.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="weights dtype (default bfloat16)")
    roof.add_argument("--input-len", type=positive_int, default=32, help="prompt tokens (default 32)")
    roof.add_argument("--output-len", type=positive_int, default=64, help="decode steps timed (default 64)")
    roof.add_argument("--repeats", type=positive_int, default=3, help="timed decode runs; median reported")
    roof.add_argument("--bandwidth-mib", type=positive_int, default=1024, help="bandwidth buffer size (MiB)")
    roof.add_argument("--bandwidth-repeats", type=positive_int, default=7, help="bandwidth samples; median")
    roof.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    roof.add_argument("--seed", type=int, default=0)
    roof.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    return parser


# ---- dispatch -------------------------------------------------------------------------------------


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    # Imported lazily: `serve` must not pay for importing transformers' model code or torch kernels.
    if name == "serve":
        from ..bench.serve_cmd import run_serve

        return run_serve
    if name == "compare":
        from ..bench.compare import run_compare

        return run_compare
    from ..bench.roofline import run_roofline

    return run_roofline


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn expected failures into one clear line and a non-zero exit."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _command(args.command)(args)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run_async(coro: Any) -> Any:
    """Run a coroutine from a synchronous command."""
    return asyncio.run(coro)
