"""The gateway's Prometheus metrics (prefix `inferforge_gateway_`).

Series carry the tenant as a label for the first TENANT_LABEL_LIMIT tenants a replica sees and
`other` past that, so a platform with thousands of tenants cannot blow up the metrics store.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TENANT_LABEL_LIMIT = 50
_seen_tenants: set[str] = set()


def tenant_label(tenant: str | None) -> str:
    if tenant is None:
        return "none"
    if tenant in _seen_tenants or len(_seen_tenants) < TENANT_LABEL_LIMIT:
        _seen_tenants.add(tenant)
        return tenant
    return "other"


REQUESTS = Counter("inferforge_gateway_requests_total", "Requests by tenant, model and HTTP status",
                   ["tenant", "model", "status"])
TOKENS = Counter("inferforge_gateway_tokens_total", "Tokens charged by tenant, model and kind (prompt|completion)",
                 ["tenant", "model", "kind"])
REFUSED = Counter("inferforge_gateway_refused_total",
                  "Requests refused by a limit (rpm|tpm|concurrency|budget|revoked) or a check", ["tenant", "reason"])
BUDGET_EXHAUSTED = Counter("inferforge_gateway_budget_exhausted_total",
                           "Requests refused or cut short because the monthly token budget is spent", ["tenant"])
CACHE = Counter("inferforge_gateway_cache_total", "Response cache lookups by result (hit|miss|store)", ["result"])
SAFETY = Counter("inferforge_gateway_content_blocked_total", "Content blocked by stage (prompt|output) and category",
                 ["stage", "category"])
REDIS_UP = Gauge("inferforge_gateway_redis_up", "1 while the last Redis call succeeded, 0 after a failure")
REDIS_ERRORS = Counter("inferforge_gateway_redis_errors_total", "Redis calls that failed")
FAILED_OPEN = Counter("inferforge_gateway_admitted_without_limits_total",
                      "Requests admitted unchecked while Redis was down (tenants configured fail-open)", ["tenant"])
QUEUED_ROWS = Gauge("inferforge_gateway_usage_queue_rows", "Usage and audit rows waiting to be written")
WRITE_ERRORS = Counter("inferforge_gateway_usage_write_errors_total", "Usage/audit batches that failed to write")
ROWS_DROPPED = Counter("inferforge_gateway_usage_rows_dropped_total", "Rows dropped because the queue was full")
OVERHEAD = Histogram("inferforge_gateway_overhead_seconds",
                     "Time the gateway adds before the upstream request is sent (auth, count, admit, checks)",
                     buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
UPSTREAM_ERRORS = Counter("inferforge_gateway_upstream_errors_total",
                          "Upstream calls that failed (unreachable, or a count it could not answer), by model and "
                          "server version", ["model", "version"])
# Per server version of a model (stable, canary): what `python -m stacks canary check` compares. Separate from
# requests_total, whose labels the dashboards and alerts already use.
UPSTREAM_REQUESTS = Counter("inferforge_gateway_upstream_requests_total",
                            "Requests routed to a model server version, by model, version and HTTP status",
                            ["model", "version", "status"])
UPSTREAM_LATENCY = Histogram("inferforge_gateway_upstream_latency_seconds",
                             "Whole-request latency (gateway in to last byte out) by model and server version",
                             ["model", "version"],
                             buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 600.0))
PROMPT_COUNTS = Counter("inferforge_gateway_prompt_counts_total",
                        "Prompts counted before admission, by how (local: in-process with the model's tokenizer; "
                        "upstream: the model server's /tokenize)", ["how"])
COUNTED_LOCALLY, COUNTED_UPSTREAM = PROMPT_COUNTS.labels("local"), PROMPT_COUNTS.labels("upstream")
