"""`python -m stacks canary check`: promote, hold or roll back a model's canary on the servers' own metrics.

    python -m stacks canary check --stack prod --prometheus-url https://<prometheus> [--window 10m] [--apply]

For the model section with a `canary` (stacks/config.py; `--model models[1]` when several have one) it queries
Prometheus's HTTP API (`GET /api/v1/query`, instant vectors) over the window, for each version:

* requests and errors as the model server counts them: `vllm:request_success_total` plus
  `inferforge:requests_rejected_total`, of which `reason` internal_error|engine_unavailable are errors;
* requests and 5xx answers as the gateway counts them per version (`inferforge_gateway_upstream_requests_total`;
  this also sees a server that cannot answer at all);
* the p95 of the server's `vllm:e2e_request_latency_seconds`.

Servers are told apart by the `namespace` label the scraper adds (the canary runs in its own namespace). The
error rate of a version is the worse of the server's and the gateway's. Decision (the thresholds are flags):

* hold: the canary served fewer than --min-requests requests in the window (not enough evidence either way);
* rollback: canary error rate > max(--max-error-ratio x stable's, --error-rate-floor), or canary p95 latency >
  --max-latency-ratio x stable's;
* promote: otherwise.

With --apply the stack file is rewritten keeping its comments: promote makes the canary's image the model's image
and removes the canary; rollback removes the canary; hold changes nothing. Then `pulumi up` (README: Canary
releases). Exit status 0 for promote and hold, 1 for rollback (a pipeline can stop on it), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, InferenceConfig, PlatformConfig, path_parts
from .render import REPO_ROOT, StackFileError, stack_file, validate_stack

Query = Callable[[str], dict[str, Any]]
SERVER_ERROR_REASONS = "internal_error|engine_unavailable"


@dataclass(frozen=True)
class Thresholds:
    max_error_ratio: float = 2.0
    """Canary error rate may be at most this many times the stable one's ..."""
    error_rate_floor: float = 0.01
    """... or this absolute rate, whichever is higher (a stable version without errors must not make one fatal)."""
    max_latency_ratio: float = 1.25
    """Canary p95 end-to-end latency may be at most this many times the stable one's."""
    min_requests: int = 100
    """Fewer canary requests in the window than this: hold."""


@dataclass(frozen=True)
class VersionNumbers:
    requests: float
    errors: float
    p95_s: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Verdict:
    decision: str  # promote | hold | rollback
    reasons: list[str]
    stable: VersionNumbers
    canary: VersionNumbers


def scalar(response: dict[str, Any]) -> float | None:
    """The value of a Prometheus instant query answer (`{"status": "success", "data": {"resultType": "vector",
    "result": [{"metric": {...}, "value": [<unix time>, "<value>"]}]}}`); None when empty or NaN."""
    if response.get("status") != "success":
        raise RuntimeError(f"Prometheus answered {response.get('errorType', 'an error')}: "
                           f"{str(response.get('error', ''))[:200]}")
    data = response.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar":
        result = [{"value": result}]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


def queries(model: str, namespace: str, version: str, window: str) -> dict[str, str]:
    """The PromQL of one version's numbers."""
    ns = f'namespace="{namespace}"'
    gw = f'model="{model}",version="{version}"'
    return {
        "server_ok": f"sum(increase(vllm:request_success_total{{{ns}}}[{window}]))",
        "server_rejected": f"sum(increase(inferforge:requests_rejected_total{{{ns}}}[{window}]))",
        "server_errors": f'sum(increase(inferforge:requests_rejected_total{{{ns},reason=~"{SERVER_ERROR_REASONS}"}}'
                         f"[{window}]))",
        "gateway_requests": f"sum(increase(inferforge_gateway_upstream_requests_total{{{gw}}}[{window}]))",
        "gateway_errors": f'sum(increase(inferforge_gateway_upstream_requests_total{{{gw},status=~"5.."}}[{window}]))',
        "p95": f"histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket{{{ns}}}"
               f"[{window}])))",
    }


def measure(query: Query, model: str, namespace: str, version: str, window: str) -> VersionNumbers:
    values = {name: scalar(query(promql)) for name, promql in queries(model, namespace, version, window).items()}
    got = {name: value or 0.0 for name, value in values.items()}
    server_requests = got["server_ok"] + got["server_rejected"]
    server_rate = got["server_errors"] / server_requests if server_requests else 0.0
    gateway_rate = got["gateway_errors"] / got["gateway_requests"] if got["gateway_requests"] else 0.0
    requests = max(server_requests, got["gateway_requests"])
    return VersionNumbers(requests, max(server_rate, gateway_rate) * requests, values["p95"])


def decide(stable: VersionNumbers, canary: VersionNumbers, limits: Thresholds) -> Verdict:
    if canary.requests < limits.min_requests:
        return Verdict("hold", [f"canary served {canary.requests:.0f} requests, fewer than --min-requests "
                                f"{limits.min_requests}"], stable, canary)
    reasons = []
    allowed = max(limits.max_error_ratio * stable.error_rate, limits.error_rate_floor)
    if canary.error_rate > allowed:
        reasons.append(f"canary error rate {canary.error_rate:.2%} > {allowed:.2%} (max of {limits.max_error_ratio}x "
                       f"stable {stable.error_rate:.2%} and floor {limits.error_rate_floor:.2%})")
    if canary.p95_s is not None and stable.p95_s:
        if canary.p95_s > limits.max_latency_ratio * stable.p95_s:
            reasons.append(f"canary p95 latency {canary.p95_s:.3f} s > {limits.max_latency_ratio}x stable "
                           f"{stable.p95_s:.3f} s")
    if reasons:
        return Verdict("rollback", reasons, stable, canary)
    return Verdict("promote", ["error rate and p95 latency within the thresholds"], stable, canary)


def prometheus(url: str, token: str | None = None, timeout_s: float = 30) -> Query:
    """A query function against Prometheus's HTTP API (a bearer token for e.g. an Azure Monitor workspace)."""
    def query(promql: str) -> dict[str, Any]:
        request = urllib.request.Request(f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - an operator's URL
            return json.loads(response.read())
    return query


# ---- the stack file rewrite (comments kept, as stacks/pin_images.py does) ------------------------------------

def _child(node: yaml.Node | None, part: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    """(key node, value node) of a mapping entry, or (item, item) of a list entry."""
    if isinstance(part, int):
        return (node.value[part], node.value[part]) if isinstance(node, yaml.SequenceNode) \
            and part < len(node.value) else None
    if not isinstance(node, yaml.MappingNode):
        return None
    return next(((k, v) for k, v in node.value if k.value == part), None)


def _entry(text: str, key: str) -> tuple[yaml.Node, yaml.Node]:
    parts = path_parts(key)
    found = _child(yaml.compose(text), "config")
    found = _child(found[1], f"inferforge:{parts[0]}") if found else None
    for part in parts[1:]:
        found = _child(found[1], part) if found else None
    if found is None:
        raise ValueError(f"inferforge:{key}: not in the stack file as a section; allowed: a model section written "
                         "out in the file (set it there, not with a path key)")
    return found


def _span(lines: list[str], key_node: yaml.Node, value_node: yaml.Node) -> tuple[int, int]:
    """The lines [first, last) an entry occupies (the value ends where the next token starts)."""
    end = value_node.end_mark
    last = end.line if end.line >= len(lines) or not lines[end.line][:end.column].strip() else end.line + 1
    return key_node.start_mark.line, max(last, key_node.start_mark.line + 1)


def remove_canary(text: str, model_key: str) -> str:
    lines = text.splitlines(keepends=True)
    first, last = _span(lines, *_entry(text, f"{model_key}.canary"))
    return "".join(lines[:first] + lines[last:])


def promote_canary(text: str, model_key: str, model: InferenceConfig) -> str:
    """The canary's image becomes the model's image; the canary section goes."""
    assert model.canary is not None
    image = model.canary.image
    fields = [("repository", image.repository), ("tag", image.tag), ("digest", image.digest)]
    text = remove_canary(text, model_key)
    lines = text.splitlines(keepends=True)
    key_node, value_node = _entry(text, f"{model_key}.image")
    if isinstance(value_node, yaml.MappingNode) and not value_node.flow_style:
        first, last = _span(lines, key_node, value_node)
        indent = " " * value_node.start_mark.column
        lines[first + 1:last] = [f'{indent}{name}: "{value}"\n' if name == "digest" else f"{indent}{name}: {value}\n"
                                 for name, value in fields if value]
        return "".join(lines)
    start, end = value_node.start_mark, value_node.end_mark
    if start.line != end.line:
        raise ValueError(f"inferforge:{model_key}.image spans lines in flow style; allowed: a block or one-line image")
    flow = "{" + ", ".join(f'{name}: "{value}"' if name == "digest" else f"{name}: {value}"
                           for name, value in fields if value) + "}"
    lines[start.line] = lines[start.line][:start.column] + flow + lines[start.line][end.column:]
    return "".join(lines)


# ---- the command ----------------------------------------------------------------------------------------------

def _model_with_canary(cfg: PlatformConfig, wanted: str | None) -> tuple[str, InferenceConfig]:
    with_canary = [(key, model) for key, model in cfg.served_models if model.canary is not None]
    if wanted is not None:
        match = [(key, model) for key, model in with_canary if key == wanted]
        if not match:
            raise ValueError(f"--model {wanted}: no canary there; allowed: "
                             f"{', '.join(k for k, _ in with_canary) or 'none (no model section has a canary)'}")
        return match[0]
    if len(with_canary) != 1:
        raise ValueError(f"{'no model section has' if not with_canary else 'several model sections have'} a canary; "
                         f"allowed: --model with one of {', '.join(k for k, _ in with_canary) or 'none'}")
    return with_canary[0]


def check(args: argparse.Namespace, query: Query | None = None, root: Path = REPO_ROOT) -> int:
    try:
        cfg = validate_stack(args.stack, root=root)
        key, model = _model_with_canary(cfg, args.model)
    except (ConfigError, StackFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    query = query or prometheus(args.prometheus_url, os.environ.get("PROMETHEUS_TOKEN"))
    limits = Thresholds(args.max_error_ratio, args.error_rate_floor, args.max_latency_ratio, args.min_requests)
    try:
        stable = measure(query, model.model_name, model.namespace, "stable", args.window)
        assert model.canary_namespace is not None
        canary = measure(query, model.model_name, model.canary_namespace, "canary", args.window)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        print(f"error: cannot read the metrics from {args.prometheus_url}: {str(exc)[:300]}", file=sys.stderr)
        return 2
    verdict = decide(stable, canary, limits)
    for name, numbers in (("stable", stable), ("canary", canary)):
        p95 = f"{numbers.p95_s:.3f} s" if numbers.p95_s is not None else "n/a"
        print(f"{name}: requests={numbers.requests:.0f} errors={numbers.errors:.0f} "
              f"error_rate={numbers.error_rate:.2%} p95={p95}")
    print(f"decision: {verdict.decision} ({'; '.join(verdict.reasons)})")
    if args.apply and verdict.decision != "hold":
        path = stack_file(args.stack, root)
        previous = path.read_text(encoding="utf-8")
        try:
            text = promote_canary(previous, key, model) if verdict.decision == "promote" \
                else remove_canary(previous, key)
            path.write_text(text, encoding="utf-8")
            validate_stack(args.stack, root=root)
        except (ValueError, ConfigError, StackFileError) as exc:
            path.write_text(previous, encoding="utf-8")  # never leave an invalid stack file behind
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{path.name}: {'canary promoted' if verdict.decision == 'promote' else 'canary removed'} "
              f"({key}); run `pulumi up --stack {args.stack}`")
    return 1 if verdict.decision == "rollback" else 0


_WINDOW = re.compile(r"^[1-9][0-9]{0,3}[smhd]$")


def _window(value: str) -> str:
    if not _WINDOW.match(value):
        raise argparse.ArgumentTypeError(f"expected a Prometheus duration such as 10m or 1h, got {value[:32]!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stacks canary", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("check", help="promote, hold or roll back the canary on its metrics")
    sub.add_argument("--stack", required=True)
    sub.add_argument("--prometheus-url", required=True,
                     help="Prometheus HTTP API base URL (bearer token from $PROMETHEUS_TOKEN, if set)")
    sub.add_argument("--window", type=_window, default="10m", help="how far back to compare (default 10m)")
    sub.add_argument("--model", help="the model section with the canary (inference, models[1], ...) when several")
    defaults = Thresholds()
    sub.add_argument("--max-error-ratio", type=float, default=defaults.max_error_ratio)
    sub.add_argument("--error-rate-floor", type=float, default=defaults.error_rate_floor)
    sub.add_argument("--max-latency-ratio", type=float, default=defaults.max_latency_ratio)
    sub.add_argument("--min-requests", type=int, default=defaults.min_requests)
    sub.add_argument("--apply", action="store_true", help="rewrite the stack file: promote or remove the canary")
    return parser


def run(argv: list[str], query: Query | None = None, root: Path = REPO_ROOT) -> int:
    return check(build_parser().parse_args(argv), query, root)
