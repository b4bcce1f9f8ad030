"""`python -m gateway.bench`: the latency the gateway adds, measured side by side on one model server.

Sends the same small request alternately straight to the model server and through the gateway (one
at a time, so queueing does not blur the difference), after a warm-up, and prints the p50/p90/p99
of both, and of the per-pair difference (gateway minus direct, consecutive requests). A request is a
completion of `--max-tokens` tokens (default 1: the model's own time stays small and steady).

    python -m gateway.bench --direct http://127.0.0.1:8000 --direct-key KEY \\
        --gateway http://127.0.0.1:8080 --gateway-key ifg_... --model NAME --requests 400
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import httpx


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def timed(client: httpx.Client, url: str, key: str, body: dict) -> float:
    start = time.perf_counter()
    response = client.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise SystemExit(f"error: {url} answered {response.status_code}: {response.text[:200]}")
    return elapsed * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--direct", required=True, help="the model server's base URL")
    parser.add_argument("--direct-key", required=True, help="a key the model server accepts")
    parser.add_argument("--gateway", required=True, help="the gateway's base URL")
    parser.add_argument("--gateway-key", required=True, help="a gateway API key of a tenant that may use --model")
    parser.add_argument("--model", required=True)
    parser.add_argument("--requests", type=int, default=400, help="pairs to time (default 400)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.requests < 10 or args.warmup < 0 or args.max_tokens < 1:
        parser.error("--requests must be >= 10, --warmup >= 0, --max-tokens >= 1")
    body = {"model": args.model, "prompt": "The gateway adds", "max_tokens": args.max_tokens, "temperature": 0}
    direct, gateway = [], []
    with httpx.Client(timeout=60) as client:
        for _ in range(args.warmup):
            timed(client, args.direct, args.direct_key, body)
            timed(client, args.gateway, args.gateway_key, body)
        for i in range(args.requests):
            # Alternate which goes first, so neither side always follows the other's cache effects.
            if i % 2:
                gateway.append(timed(client, args.gateway, args.gateway_key, body))
                direct.append(timed(client, args.direct, args.direct_key, body))
            else:
                direct.append(timed(client, args.direct, args.direct_key, body))
                gateway.append(timed(client, args.gateway, args.gateway_key, body))
    added = [g - d for g, d in zip(gateway, direct, strict=True)]
    figures = {name: {f"p{q}": round(percentile(values, q), 3) for q in (50, 90, 99)}
               | {"mean": round(statistics.fmean(values), 3)}
               for name, values in (("direct_ms", direct), ("gateway_ms", gateway), ("added_ms", added))}
    figures["pairs"] = args.requests
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name in ("direct_ms", "gateway_ms", "added_ms"):
            row = figures[name]
            print(f"{name:>11}: p50 {row['p50']:8.3f}  p90 {row['p90']:8.3f}  p99 {row['p99']:8.3f}  "
                  f"mean {row['mean']:8.3f}")
        print(f"({args.requests} pairs, {args.max_tokens} output token(s) each, one request at a time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
